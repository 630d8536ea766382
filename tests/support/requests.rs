//! Arbitrary bytes as a run of `KVM_SET_USER_MEMORY_REGION` requests, and the checks made after
//! every request. One piece of code for the `requests` fuzz target and the stable test suite
//! (`tests/fuzz_decoder.rs`), which include this file by path.
//!
//! [`run`] applies each request to [`Memslots`] and to the array baseline and panics unless:
//! both give the same result; a refused or no-op request publishes nothing; every version passes
//! `check_invariants`; both VMs list the same layout, and rebuilding a VM from it gives it back;
//! the diff from the previous version (and from an older kept one) is exactly what changed, and
//! the layouts' diff says the same; and a listener driven by [`replay`] follows along without
//! ever holding two overlapping slots.

use std::collections::BTreeMap;

use memslots::baseline::ArrayMemslots;
use memslots::{
    replay, ChangeKind, Diff, Layout, Limits, MemFlags, MemoryListener, Memslot, MemslotRead,
    MemslotSet, Memslots, SlotId, Snapshot, UserspaceMemoryRegion,
};

/// Reads the input front to back; `None` once it runs out.
pub struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
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
}

/// One step of a run. The `*Existing` steps name a slot that exists, by its index in the current
/// layout, so that moves and flag changes (which must repeat the slot's host address and size)
/// are common.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// A request as decoded.
    Raw(UserspaceMemoryRegion),
    /// Move an existing slot to another guest page, maybe with other flags.
    MoveExisting { pick: u8, gpa_page: u64, flags: u32 },
    /// Set an existing slot's flags.
    ReflagExisting { pick: u8, flags: u32 },
    /// Delete an existing slot.
    DeleteExisting { pick: u8 },
    /// Keep the current versions as the anchor that later diffs and replays start from.
    Anchor,
}

/// The limits a run uses, from its first byte: the default, and small ones that reach the
/// limits quickly.
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

fn slot_field(b: &mut Bytes<'_>, limits: &Limits) -> Option<u32> {
    let x = b.byte()?;
    let as_id = u32::from(x >> 6);
    let low = u32::from(x & 0x1f);
    let id = if x & 0x20 == 0 {
        low % 12
    } else {
        // Around the user-slot and total-slot limits, and the largest id.
        match low % 4 {
            0 => u32::from(limits.user_slots()) - 1,
            1 => u32::from(limits.user_slots()),
            2 => u32::from(limits.total_slots()),
            _ => 0xffff,
        }
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

/// A page-aligned address most of the time, anything now and then.
fn address(b: &mut Bytes<'_>, page: u64, base_page: u64, pages: u64) -> Option<u64> {
    let x = b.byte()?;
    Some(match x {
        0..=239 => (base_page + u64::from(x) % pages) * page,
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

/// The limits and steps that `data` encodes; trailing bytes too few for a step are ignored.
pub fn decode(data: &[u8]) -> (Limits, Vec<Step>) {
    let mut b = Bytes(data);
    let limits = limits(b.byte().unwrap_or(0));
    let page = limits.page_size();
    let mut steps = Vec::new();
    while let Some(step) = step(&mut b, &limits, page) {
        steps.push(step);
    }
    (limits, steps)
}

fn step(b: &mut Bytes<'_>, limits: &Limits, page: u64) -> Option<Step> {
    Some(match b.byte()? % 16 {
        0..=5 => Step::Raw(UserspaceMemoryRegion {
            slot: slot_field(b, limits)?,
            flags: flags(b)?,
            guest_phys_addr: address(b, page, 0, 48)?,
            memory_size: size(b, limits)?,
            userspace_addr: address(b, page, 0x100, 16)?,
        }),
        6..=9 => Step::MoveExisting {
            pick: b.byte()?,
            gpa_page: u64::from(b.byte()? % 48),
            flags: flags(b)?,
        },
        10 | 11 => Step::ReflagExisting {
            pick: b.byte()?,
            flags: flags(b)?,
        },
        12 => Step::DeleteExisting { pick: b.byte()? },
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

/// The request a step makes against the VM as it is now; `None` for [`Step::Anchor`].
pub fn request(vm: &Memslots, step: &Step) -> Option<UserspaceMemoryRegion> {
    let existing = |pick: u8| {
        let regions = vm.layout().regions;
        (!regions.is_empty()).then(|| regions[usize::from(pick) % regions.len()])
    };
    let page = vm.limits().page_size();
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

/// A listener that mirrors the slots it is told about and panics on anything a consumer that
/// cannot hold overlapping regions would trip over: an addition overlapping a held slot, a
/// removal of a slot it does not hold, a removal after an addition in one replay, a callback
/// outside `begin`/`commit`.
#[derive(Clone, Debug, Default)]
pub struct Mirror {
    held: BTreeMap<SlotId, Memslot>,
    in_replay: bool,
    added: bool,
    /// Callbacks received other than `begin` and `commit`.
    pub events: usize,
}

impl Mirror {
    /// A mirror that holds `set`'s slots, as if it had been told about them.
    pub fn of(set: &MemslotSet) -> Self {
        Mirror {
            held: set.iter().map(|s| (s.slot_id(), s.clone())).collect(),
            ..Mirror::default()
        }
    }

    /// Panics unless the mirror holds exactly `set`'s slots.
    pub fn assert_holds(&self, set: &MemslotSet) {
        let want: Vec<&Memslot> = set.iter().collect();
        let mut have: Vec<&Memslot> = self
            .held
            .values()
            .filter(|s| s.as_id() == set.as_id())
            .collect();
        have.sort_by_key(|s| s.base_gfn());
        assert_eq!(have, want, "the listener's copy differs from the version");
    }

    fn event(&mut self) {
        assert!(self.in_replay, "a callback outside begin/commit");
        self.events += 1;
    }
}

impl MemoryListener for Mirror {
    fn begin(&mut self) {
        assert!(!self.in_replay, "begin twice");
        self.in_replay = true;
        self.added = false;
    }

    fn region_del(&mut self, slot: &Memslot) {
        self.event();
        assert!(!self.added, "a removal after an addition: {slot:?}");
        let held = self.held.remove(&slot.slot_id());
        assert_eq!(held.as_ref(), Some(slot), "removed a slot it does not hold");
    }

    fn region_add(&mut self, slot: &Memslot) {
        self.event();
        self.added = true;
        for other in self.held.values() {
            assert!(
                other.as_id() != slot.as_id()
                    || other.end_gfn() <= slot.base_gfn()
                    || slot.end_gfn() <= other.base_gfn(),
                "would hold {other:?} and {slot:?} at once, and they overlap"
            );
        }
        let before = self.held.insert(slot.slot_id(), slot.clone());
        assert!(before.is_none(), "added a slot it already holds: {slot:?}");
    }

    fn log_start(&mut self, old: &Memslot, new: &Memslot) {
        self.toggle_log(old, new, true);
    }

    fn log_stop(&mut self, old: &Memslot, new: &Memslot) {
        self.toggle_log(old, new, false);
    }

    fn commit(&mut self) {
        assert!(self.in_replay, "commit without begin");
        self.in_replay = false;
    }
}

impl Mirror {
    fn toggle_log(&mut self, old: &Memslot, new: &Memslot, on: bool) {
        self.event();
        self.added = true;
        assert_eq!(new.dirty_logging(), on);
        assert_eq!(old.flags() ^ new.flags(), MemFlags::LOG_DIRTY_PAGES);
        assert_eq!(
            (old.base_gfn(), old.npages(), old.userspace_addr()),
            (new.base_gfn(), new.npages(), new.userspace_addr())
        );
        let held = self.held.insert(new.slot_id(), new.clone());
        assert_eq!(
            held.as_ref(),
            Some(old),
            "toggled logging on a slot it does not hold"
        );
    }
}

/// The diff worked out the slow way, from two full listings.
fn naive_diff<'a>(old: &'a MemslotSet, new: &'a MemslotSet) -> Vec<Diff<'a>> {
    let by_id = |s: &'a MemslotSet| -> BTreeMap<u16, &'a Memslot> {
        s.iter().map(|slot| (slot.id(), slot)).collect()
    };
    let (old, new) = (by_id(old), by_id(new));
    let mut ids: Vec<u16> = old.keys().chain(new.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| match (old.get(&id), new.get(&id)) {
            (Some(&o), Some(&n)) if o.same_layout(n) => None,
            (Some(&o), Some(&n)) => Some(Diff::Changed { old: o, new: n }),
            (Some(&o), None) => Some(Diff::Removed(o)),
            (None, Some(&n)) => Some(Diff::Added(n)),
            (None, None) => None,
        })
        .collect()
}

/// The layout of the array baseline, listed as [`Memslots::layout`] lists it.
fn array_layout(vm: &ArrayMemslots, limits: &Limits) -> Layout {
    Layout {
        regions: (0..limits.address_spaces())
            .flat_map(|a| {
                vm.snapshot(a)
                    .iter()
                    .map(UserspaceMemoryRegion::from)
                    .collect::<Vec<_>>()
            })
            .collect(),
    }
}

/// Decodes `data` and runs it, checking everything after every step. Panics on any
/// disagreement.
pub fn run(data: &[u8]) {
    let (limits, steps) = decode(data);
    run_steps(limits, &steps);
}

/// Runs decoded steps; see [`run`].
pub fn run_steps(limits: Limits, steps: &[Step]) {
    let spaces = limits.address_spaces();
    let tree = Memslots::new(limits);
    let array = ArrayMemslots::new(limits);
    let current =
        |vm: &Memslots| -> Vec<Snapshot> { (0..spaces).map(|a| vm.snapshot(a)).collect() };
    let mut anchor = current(&tree);
    let mut anchor_layout = tree.layout();
    let mut mirrors: Vec<Mirror> = anchor.iter().map(|s| Mirror::of(s)).collect();
    for step in steps {
        let Some(req) = request(&tree, step) else {
            anchor = current(&tree);
            anchor_layout = tree.layout();
            continue;
        };
        let before = current(&tree);
        let got = tree.set_user_memory_region(req);
        assert_eq!(got, array.set_user_memory_region(req), "request {req:?}");
        let now = current(&tree);
        let target = req.slot_id().as_id;
        for (a, (old, new)) in before.iter().zip(&now).enumerate() {
            new.check_invariants().expect("tree invariants");
            let mut changes = old.diff(new);
            let listed: Vec<Diff<'_>> = changes.by_ref().collect();
            assert_eq!(listed, naive_diff(old, new), "diff of address space {a}");
            let touched = matches!(got, Ok(kind) if kind != ChangeKind::Unchanged)
                && a == usize::from(target);
            if !touched {
                assert!(old.ptr_eq(new), "a version was published for nothing");
                assert_eq!(changes.nodes_visited(), 0, "a diff with itself walked");
                continue;
            }
            let one = match (&got, &listed[..]) {
                (Ok(ChangeKind::Create), [Diff::Added(s)]) => s.slot_id() == req.slot_id(),
                (Ok(ChangeKind::Delete), [Diff::Removed(s)]) => s.slot_id() == req.slot_id(),
                (Ok(ChangeKind::Move | ChangeKind::FlagsOnly), [Diff::Changed { old, new }]) => {
                    old.slot_id() == req.slot_id() && new.slot_id() == req.slot_id()
                }
                _ => false,
            };
            assert!(one, "{got:?} for {req:?} but the diff is {listed:?}");
            replay(old, new, &mut mirrors[a]);
            mirrors[a].assert_holds(new);
        }
        // From the anchor, many steps back, in one replay; and the whole VM's layout diff is the
        // address spaces' diffs one after the other.
        let mut per_space = Vec::new();
        for (old, new) in anchor.iter().zip(&now) {
            let mut mirror = Mirror::of(old);
            replay(old, new, &mut mirror);
            mirror.assert_holds(new);
            per_space.extend(old.diff(new).map(|d| {
                (
                    d.before().map(UserspaceMemoryRegion::from),
                    d.after().map(UserspaceMemoryRegion::from),
                )
            }));
        }
        let layout = tree.layout();
        let whole: Vec<_> = anchor_layout
            .diff(&layout)
            .iter()
            .map(|d| (d.before().copied(), d.after().copied()))
            .collect();
        assert_eq!(whole, per_space, "layout diff");
        assert_eq!(layout, array_layout(&array, &limits), "layouts differ");
        let rebuilt = Memslots::from_layout(limits, &layout).expect("a VM's own layout loads");
        assert_eq!(rebuilt.layout(), layout);
        assert_eq!(rebuilt.total_pages(), tree.total_pages());
    }
}
