//! The request generator of the differential tests: bytes as a run of
//! `KVM_SET_USER_MEMORY_REGION` requests. `tests/model.rs` feeds it proptest's bytes one chunk
//! per step (so that a failing case shrinks step by step); the `requests` fuzz target and
//! `tests/fuzz_decoder.rs` feed it whole byte strings. The checks made on a run are in
//! `differential.rs`.
//!
//! A run's first byte picks its limits and its [`Scale`]: with [`Scale::Few`] 16 ids per
//! address space crowd a small guest range, so overlaps, limits and every refusal are common;
//! with [`Scale::Many`] the run first creates a couple of hundred slots in address space 0, so
//! that its trees have several levels and the later steps split, merge and search them.

use memslots::{Limits, MemFlags, UserspaceMemoryRegion};

/// Reads the input front to back; `None` once it runs out.
pub(crate) struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }

    fn u64(&mut self) -> Option<u64> {
        let mut word = [0u8; 8];
        for b in &mut word {
            *b = self.byte()?;
        }
        Some(u64::from_le_bytes(word))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(self.u64()? as u32)
    }

    /// A number below `n`, from one byte when that covers it and from two otherwise.
    fn below(&mut self, n: u64) -> Option<u64> {
        let x = if n <= 256 {
            u64::from(self.byte()?)
        } else {
            u64::from(self.u16()?)
        };
        Some(x % n)
    }
}

/// How many slots a run works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scale {
    /// Ids below 16 in 96 guest pages.
    Few,
    /// `prefill` slots created first (ids `0..prefill`, one every four guest pages), then ids up
    /// to 16 past them in eight times as many pages, half of them empty so that moves succeed.
    Many {
        /// How many slots the run creates before its own steps.
        prefill: u16,
    },
}

impl Scale {
    fn ids(self) -> u64 {
        match self {
            Scale::Few => 16,
            Scale::Many { prefill } => u64::from(prefill) + 16,
        }
    }

    fn gpa_pages(self) -> u64 {
        match self {
            Scale::Few => 96,
            Scale::Many { prefill } => 8 * u64::from(prefill),
        }
    }

    /// Host pages new slots are placed in, from page `HVA_BASE_PAGE`.
    fn hva_pages(self) -> u64 {
        match self {
            Scale::Few => 16,
            Scale::Many { prefill } => 4 * u64::from(prefill),
        }
    }
}

/// First host page of the slots a run creates.
pub(crate) const HVA_BASE_PAGE: u64 = 0x100;

/// One step of a run. The `*Existing` steps name a slot that exists, by its index in the current
/// layout, so that moves and flag changes (which must repeat the slot's host address and size)
/// are common.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    /// A request as decoded.
    Raw(UserspaceMemoryRegion),
    /// Move an existing slot to another guest page, maybe with other flags.
    MoveExisting {
        /// Index into the current layout, modulo its length.
        pick: u16,
        /// The guest page to move to.
        gpa_page: u64,
        /// The new flags; READONLY is kept as the slot has it.
        flags: u32,
    },
    /// Set an existing slot's flags.
    ReflagExisting {
        /// Index into the current layout, modulo its length.
        pick: u16,
        /// The new flags.
        flags: u32,
    },
    /// Delete an existing slot.
    DeleteExisting {
        /// Index into the current layout, modulo its length.
        pick: u16,
    },
    /// A checkpoint: the one-by-one checks take the current versions as the anchor that later
    /// diffs and replays start from; the transaction checks commit there.
    Anchor,
}

/// A decoded run: its limits, its scale and its steps (the prefill first).
#[derive(Clone, Debug)]
pub(crate) struct Run {
    /// The limits both designs are built with.
    pub(crate) limits: Limits,
    /// How many slots the run works with.
    pub(crate) scale: Scale,
    /// The steps, in order.
    pub(crate) steps: Vec<Step>,
}

impl Run {
    /// The run a header selects, with its prefill and no other step yet: the first byte picks
    /// the limits (low bits) and the scale (top bit), the second the prefill of a
    /// [`Scale::Many`] run.
    pub(crate) fn start(header: &mut Bytes<'_>) -> Run {
        let selector = header.byte().unwrap_or(0);
        let limits = limits(selector & 0x7f);
        let scale = if selector & 0x80 == 0 {
            Scale::Few
        } else {
            let wanted = 160 + u16::from(header.byte().unwrap_or(0));
            Scale::Many {
                prefill: wanted.min(limits.user_slots()),
            }
        };
        let mut run = Run {
            limits,
            scale,
            steps: Vec::new(),
        };
        if let Scale::Many { prefill } = scale {
            let page = limits.page_size();
            // In descending id order: each full node then splits in halves and the trees are
            // left with nodes at their minimum fill, which the first deletes merge. (In id order,
            // as a VMM creates slots, the trees' nodes end up full, and a run's deletes seldom
            // empty one far enough to merge it; the trees' own tests cover that shape.)
            run.steps.extend((0..u64::from(prefill)).rev().map(|i| {
                let flags = if i % 4 == 1 {
                    MemFlags::LOG_DIRTY_PAGES
                } else {
                    MemFlags::empty()
                };
                Step::Raw(UserspaceMemoryRegion::new(
                    i as u32,
                    flags,
                    4 * i * page,
                    (1 + i % 3) * page,
                    (HVA_BASE_PAGE + 4 * i) * page,
                ))
            }));
        }
        run
    }

    /// Decodes one step from `b` and appends it; `false` once `b` is too short for one.
    pub(crate) fn push(&mut self, b: &mut Bytes<'_>) -> bool {
        match step(b, &self.limits, self.scale) {
            Some(step) => {
                self.steps.push(step);
                true
            }
            None => false,
        }
    }
}

/// The run that `data` encodes: a header, then steps to the end (trailing bytes too few for a
/// step are ignored).
pub(crate) fn decode(data: &[u8]) -> Run {
    let mut b = Bytes(data);
    let mut run = Run::start(&mut b);
    while run.push(&mut b) {}
    run
}

/// The run of a header and one chunk per step (a chunk too short for a step adds none).
pub(crate) fn decode_chunks(header: [u8; 2], chunks: &[Vec<u8>]) -> Run {
    let mut run = Run::start(&mut Bytes(&header));
    for chunk in chunks {
        run.push(&mut Bytes(chunk));
    }
    run
}

/// Bytes enough for any one step.
pub(crate) const STEP_BYTES: usize = 48;

/// The limits a run uses: the default, and small ones that reach the limits quickly.
fn limits(selector: u8) -> Limits {
    let default = Limits::default();
    let chosen = match selector % 6 {
        0 => Ok(default),
        1 => default.with_slots(8, 10),
        2 => default.with_page_shift(16),
        3 => default
            .with_address_spaces(1)
            .map(|l| l.with_readonly(false)),
        4 => default.with_max_pages_per_slot(6),
        _ => default
            .with_slots(32, 40)
            .and_then(|l| l.with_address_spaces(3)),
    };
    chosen.expect("valid limits")
}

fn slot_field(b: &mut Bytes<'_>, limits: &Limits, scale: Scale) -> Option<u32> {
    let x = b.byte()?;
    let as_id = match scale {
        // Mostly 0 and 1, now and then address spaces that may not exist.
        Scale::Few => [0, 0, 0, 0, 1, 1, 2, 3][usize::from(x >> 5)],
        // Mostly the prefilled address space 0.
        Scale::Many { .. } => u32::from(x >> 6 == 3),
    };
    let id = if x & 0x1c == 0x1c {
        // Around the user-slot and total-slot limits, and the largest id.
        match x % 4 {
            0 => u32::from(limits.user_slots()) - 1,
            1 => u32::from(limits.user_slots()),
            2 => u32::from(limits.total_slots()),
            _ => 0xffff,
        }
    } else {
        b.below(scale.ids())? as u32
    };
    Some((as_id << 16) | id)
}

fn flags(b: &mut Bytes<'_>) -> Option<u32> {
    let x = b.byte()?;
    Some(match x {
        0..=239 => u32::from(x % 4),
        240..=247 => 4,
        248..=251 => MemFlags::INVALID.bits(),
        _ => b.u32()?,
    })
}

/// A page-aligned address in `pages` pages from `base_page` most of the time, anything now and
/// then.
fn address(b: &mut Bytes<'_>, page: u64, base_page: u64, pages: u64) -> Option<u64> {
    let x = b.byte()?;
    Some(match x {
        0..=239 => (base_page + b.below(pages)?) * page,
        240..=243 => b.u64()?,
        244..=247 => u64::from(x) & (page - 1),
        _ => !(page - 1),
    })
}

fn size(b: &mut Bytes<'_>, limits: &Limits) -> Option<u64> {
    let page = limits.page_size();
    let x = b.byte()?;
    Some(match x {
        0..=31 => 0,
        32..=239 => (1 + u64::from(x) % 8) * page,
        240..=243 => (limits.max_pages_per_slot() + 1) * page,
        244..=247 => b.u64()?,
        _ => u64::from(x),
    })
}

fn step(b: &mut Bytes<'_>, limits: &Limits, scale: Scale) -> Option<Step> {
    let page = limits.page_size();
    let kind = match (b.byte()? % 16, scale) {
        // Among many slots, deletes instead of some moves and flag changes (a quarter of the
        // steps), so that the big trees also merge.
        (8 | 9 | 11, Scale::Many { .. }) => 12,
        (kind, _) => kind,
    };
    Some(match kind {
        0..=5 => Step::Raw(UserspaceMemoryRegion {
            slot: slot_field(b, limits, scale)?,
            flags: flags(b)?,
            guest_phys_addr: address(b, page, 0, scale.gpa_pages())?,
            memory_size: size(b, limits)?,
            userspace_addr: address(b, page, HVA_BASE_PAGE, scale.hva_pages())?,
        }),
        6..=9 => Step::MoveExisting {
            pick: b.u16()?,
            gpa_page: b.below(scale.gpa_pages())?,
            flags: flags(b)?,
        },
        10 | 11 => Step::ReflagExisting {
            pick: b.u16()?,
            flags: flags(b)?,
        },
        12 => Step::DeleteExisting { pick: b.u16()? },
        13 => Step::Raw(UserspaceMemoryRegion {
            slot: b.u32()?,
            flags: b.u32()?,
            guest_phys_addr: b.u64()?,
            memory_size: b.u64()?,
            userspace_addr: b.u64()?,
        }),
        _ => Step::Anchor,
    })
}

/// The request a step makes against a VM whose layout is `regions` (as
/// [`Memslots::layout`](memslots::Memslots::layout) lists it) and whose page size is `page`;
/// `None` for [`Step::Anchor`].
pub(crate) fn request(
    regions: &[UserspaceMemoryRegion],
    page: u64,
    step: &Step,
) -> Option<UserspaceMemoryRegion> {
    let existing =
        |pick: u16| (!regions.is_empty()).then(|| regions[usize::from(pick) % regions.len()]);
    Some(match *step {
        Step::Raw(region) => region,
        Step::MoveExisting {
            pick,
            gpa_page,
            flags,
        } => existing(pick).map_or(UserspaceMemoryRegion::delete(0), |r| {
            UserspaceMemoryRegion {
                guest_phys_addr: gpa_page * page,
                // Keep READONLY as it is, or the request is refused before it can move.
                flags: (flags & !MemFlags::READONLY.bits()) | (r.flags & MemFlags::READONLY.bits()),
                ..r
            }
        }),
        Step::ReflagExisting { pick, flags } => existing(pick)
            .map_or(UserspaceMemoryRegion::delete(0), |r| {
                UserspaceMemoryRegion { flags, ..r }
            }),
        Step::DeleteExisting { pick } => existing(pick)
            .map_or(UserspaceMemoryRegion::delete(0), |r| {
                UserspaceMemoryRegion::delete(r.slot)
            }),
        Step::Anchor => return None,
    })
}
