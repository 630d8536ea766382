//! Kernel-differential tests: the same random requests go to a real KVM VM and to memslots, and
//! every result, errno, guest-visible layout and dirty bitmap must agree.
//!
//! Per request the result (accepted, or the errno) is compared. After accepted requests a tiny
//! guest ([`support::guest`]) loads and stores at chosen gpas: pool pages are filled with markers
//! that say which host page and offset they are, so a load shows which host page served the gpa,
//! a hole or a write to a `READONLY` slot exits as MMIO. Dirty logs are fetched and cleared on
//! both sides after guest writes, in every dirty-log mode.
//!
//! `bounded` runs about a minute (`MEMSLOTS_KVM_SECONDS` changes it, `MEMSLOTS_KVM_SEED` fixes
//! the seed); `long` (ignored) runs ten minutes. A divergence panics with a short list of
//! operations that reproduces it, to paste into `replays` below.
#![cfg(target_arch = "x86_64")] // the probe guest is x86 code

#[path = "support/guest.rs"]
mod guest;

use std::time::{Duration, Instant};

use guest::{kvm_or_skip, Access, Guest};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use memslots::{DirtyLogMode, Gfn, Limits, MemFlags, Memslots, Reader, UserspaceMemoryRegion};
use memslots_kvm::ioctl;

const PAGE: u64 = 4096;
/// Host pages every probed slot maps into, each word a marker of its own offset.
const POOL_PAGES: u64 = 4096;
/// Logged slots are at most this big, so a dirty bitmap always fits the buffer given to KVM.
const MAX_LOGGED_PAGES: u64 = 4096;
const BITMAP_WORDS: usize = (MAX_LOGGED_PAGES / 64) as usize;
/// Slots bigger than this are only requested where a check must refuse them: with shadow paging
/// the kernel allocates 8 bytes of rmap per page at creation.
const SAFE_PAGES: u64 = 1 << 18;
/// The probe program's slot, kept out of the random requests.
const CODE_ID: u32 = 100;
const CODE_GPA: u32 = 0xffff_f000;
/// gfns below this are where most requests and probes go.
const GFN_SPAN: u64 = 0x8000;
const MARK: u32 = 0x5a00_0000;

fn marker(pool_offset: u64) -> u32 {
    MARK ^ pool_offset as u32
}

/// One step of a run, as printed for a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Set(UserspaceMemoryRegion),
    Load(u32),
    Store(u32, u32),
    GetLog(u32),
    ClearLog {
        slot: u32,
        first_page: u64,
        num_pages: u32,
        mask: Vec<u64>,
    },
    Mode(DirtyLogMode),
}

/// Where KVM and memslots parted.
#[derive(Debug)]
struct Divergence {
    op: Op,
    kernel: String,
    memslots: String,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    requests: u64,
    accepted: u64,
    loads: u64,
    stores: u64,
    mmio: u64,
    dirty_gets: u64,
    dirty_clears: u64,
    mode_changes: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.accepted += o.accepted;
        self.loads += o.loads;
        self.stores += o.stores;
        self.mmio += o.mmio;
        self.dirty_gets += o.dirty_gets;
        self.dirty_clears += o.dirty_clears;
        self.mode_changes += o.mode_changes;
    }
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Self {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap");
        Self {
            addr: addr.cast(),
            len,
        }
    }

    fn base(&self) -> u64 {
        self.addr as u64
    }

    fn contains(&self, hva: u64, len: u64) -> bool {
        hva >= self.base() && hva + len <= self.base() + self.len as u64
    }

    fn read_u32(&self, hva: u64) -> u32 {
        assert!(self.contains(hva, 4));
        // SAFETY: inside the mapping, 4-aligned; the guest may write the word concurrently only
        // while its vCPU runs, and it runs on this thread.
        unsafe { std::ptr::read_volatile((hva as *const u32).cast_mut()) }
    }

    fn write_u32(&self, hva: u64, value: u32) {
        assert!(self.contains(hva, 4));
        // SAFETY: as in `read_u32`.
        unsafe { std::ptr::write_volatile(hva as *mut u32, value) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the VM that may reach it is dropped first (field
        // order of `Harness`).
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// A KVM VM and memslots side by side, with the probe guest.
struct Harness {
    guest: Guest,
    vm: VmFd,
    slots: Memslots,
    reader: Reader,
    pool: Mapping,
    _code: Mapping,
    counts: Counts,
}

fn show<T>(r: &Result<T, i32>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(errno) => format!("errno {errno}"),
    }
}

impl Harness {
    fn new(kvm: &Kvm) -> Self {
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let limits = memslots_kvm::probe_limits(kvm, &vm).expect("limits");
        let slots = Memslots::new(limits);
        let pool = Mapping::new((POOL_PAGES * PAGE) as usize);
        for word in (0..POOL_PAGES * PAGE).step_by(4) {
            pool.write_u32(pool.base() + word, marker(word));
        }
        let code = Mapping::new(PAGE as usize);
        // SAFETY: the code page is mapped and written before any vCPU runs.
        unsafe {
            std::ptr::copy_nonoverlapping(guest::CODE.as_ptr(), code.addr, guest::CODE.len());
        }
        let code_slot = UserspaceMemoryRegion::new(
            CODE_ID,
            MemFlags::empty(),
            CODE_GPA.into(),
            PAGE,
            code.base(),
        );
        slots.set_user_memory_region(code_slot).expect("code slot");
        // SAFETY: the code page stays mapped while the VM lives (dropped after `vm`).
        unsafe { ioctl::set_user_memory_region(&vm, code_slot.into()) }.expect("code slot");
        let guest = Guest::new(&vm, CODE_GPA);
        let reader = slots.reader();
        Self {
            guest,
            vm,
            slots,
            reader,
            pool,
            _code: code,
            counts: Counts::default(),
        }
    }

    fn limits(&self) -> Limits {
        *self.slots.limits()
    }

    /// Applies `op` to both sides; `Ok(true)` if it changed state on both (worth keeping in a
    /// replay).
    fn apply(&mut self, op: &Op) -> Result<bool, Divergence> {
        let diverged = |kernel: String, memslots: String| Divergence {
            op: op.clone(),
            kernel,
            memslots,
        };
        match op {
            Op::Set(region) => {
                self.counts.requests += 1;
                let ours = self
                    .slots
                    .set_user_memory_region(*region)
                    .map_err(|e| e.errno());
                let raw: kvm_userspace_memory_region = (*region).into();
                // SAFETY: the guest only touches gpas the harness picks (see `probe`); every hva
                // it can reach that way is in the pool, which outlives the VM. A store is made
                // only where a load just found the pool marker memslots predicted.
                let theirs = unsafe { ioctl::set_user_memory_region(&self.vm, raw) };
                if ours.is_ok() != theirs.is_ok() || ours.as_ref().err() != theirs.as_ref().err() {
                    return Err(diverged(show(&theirs), show(&ours)));
                }
                self.counts.accepted += u64::from(ours.is_ok());
                Ok(ours.is_ok())
            }
            Op::Load(gpa) | Op::Store(gpa, _) => {
                let store = match op {
                    Op::Store(_, value) => Some(*value),
                    _ => None,
                };
                self.probe(*gpa, store).map_err(|(k, m)| diverged(k, m))
            }
            Op::GetLog(slot) => {
                self.counts.dirty_gets += 1;
                let ours = self.slots.get_dirty_log(*slot).map_err(|e| e.errno());
                // SAFETY: every slot KVM logs has at most MAX_LOGGED_PAGES pages: requests that
                // would log a bigger one are stripped of the flag before they are sent.
                let theirs = unsafe { ioctl::get_dirty_log(&self.vm, *slot, BITMAP_WORDS) };
                let same = match (&ours, &theirs) {
                    (Ok(a), Ok(b)) => b[..a.len()] == a[..] && b[a.len()..].iter().all(|&w| w == 0),
                    (Err(a), Err(b)) => a == b,
                    _ => false,
                };
                if !same {
                    let trim = |r: &Result<Vec<u64>, i32>| match r {
                        Ok(words) => {
                            let n = words.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
                            format!("{:x?}", &words[..n])
                        }
                        Err(e) => format!("errno {e}"),
                    };
                    return Err(diverged(trim(&theirs), trim(&ours)));
                }
                Ok(ours.is_ok())
            }
            Op::ClearLog {
                slot,
                first_page,
                num_pages,
                mask,
            } => {
                self.counts.dirty_clears += 1;
                let ours = self
                    .slots
                    .clear_dirty_log(*slot, *first_page, (*num_pages).into(), mask)
                    .map_err(|e| e.errno());
                let theirs = ioctl::clear_dirty_log(&self.vm, *slot, *first_page, *num_pages, mask);
                if ours != theirs {
                    return Err(diverged(show(&theirs), show(&ours)));
                }
                Ok(ours.is_ok())
            }
            Op::Mode(mode) => {
                self.counts.mode_changes += 1;
                ioctl::set_dirty_log_mode(&self.vm, *mode).expect("KVM_ENABLE_CAP");
                self.slots.set_dirty_log_mode(*mode);
                Ok(true)
            }
        }
    }

    /// One guest access, checked against what memslots says is at `gpa`.
    fn probe(&mut self, gpa: u32, store: Option<u32>) -> Result<bool, (String, String)> {
        let gfn = Gfn(u64::from(gpa) >> 12);
        let set = self.slots.snapshot(0);
        let slot = set.find(gfn);
        let hva = slot
            .and_then(|s| s.gfn_to_hva(gfn))
            .map(|h| h.0 + u64::from(gpa & 0xfff));
        let (load, stored) = match (slot, hva) {
            (None, _) => (Access::Mmio(gpa.into()), Access::Mmio(gpa.into())),
            (Some(s), Some(hva)) if self.pool.contains(hva, 4) => (
                Access::Loaded(marker(hva - self.pool.base())),
                if s.flags().contains(MemFlags::READONLY) {
                    Access::Mmio(gpa.into())
                } else {
                    Access::Stored
                },
            ),
            // Not backed by the pool: the harness never sends the guest there.
            _ => return Ok(false),
        };
        drop(set);
        // Every store comes after a load that found what memslots predicts: then KVM maps the
        // gpa to that pool word (or to nothing), and the store cannot reach other memory.
        self.counts.loads += 1;
        let seen = self.guest.load(gpa);
        self.counts.mmio += u64::from(matches!(seen, Access::Mmio(_)));
        if seen != load {
            return Err((format!("load {seen:?}"), format!("load {load:?}")));
        }
        let Some(value) = store else {
            return Ok(false);
        };
        self.counts.stores += 1;
        let seen = self.guest.store(gpa, value);
        self.counts.mmio += u64::from(matches!(seen, Access::Mmio(_)));
        if seen != stored {
            return Err((format!("store {seen:?}"), format!("store {stored:?}")));
        }
        let (Access::Stored, Some(hva)) = (seen, hva) else {
            return Ok(false);
        };
        let word = self.pool.read_u32(hva);
        self.pool.write_u32(hva, marker(hva - self.pool.base()));
        if word != value {
            return Err((
                format!("host word {word:#x}"),
                format!("{value:#x} at hva {hva:#x}"),
            ));
        }
        // What KVM's mark_page_dirty does for the guest's write.
        self.reader.read().mark_page_dirty(0, gfn);
        Ok(true)
    }
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Random operations over the current layout.
struct Generator {
    rng: Rng,
    limits: Limits,
    pool_base: u64,
}

impl Generator {
    fn id(&mut self) -> u32 {
        let user = u32::from(self.limits.user_slots());
        let total = u32::from(self.limits.total_slots());
        let small = self.rng.below(10) as u32;
        let id = match self.rng.below(100) {
            0..70 => small,
            70..82 => self
                .rng
                .pick(&[user - 1, user, user + 1, total - 1, total, 0xffff]),
            82..94 => (self.rng.pick(&[1u32, 2, 0xffff]) << 16) | small,
            _ => self.rng.next() as u32,
        };
        if id & 0xffff == CODE_ID {
            small
        } else {
            id
        }
    }

    fn flags(&mut self) -> u32 {
        if self.rng.pct(85) {
            self.rng.below(4) as u32
        } else {
            {
                let any = self.rng.next() as u32;
                self.rng.pick(&[4, 8, 1 | 4, 1 << 16, 1 << 31, any])
            }
        }
    }

    fn gpa(&mut self) -> u64 {
        let max = self.limits.max_gfn().map_or(u64::MAX >> 12, |g| g.0);
        match self.rng.below(100) {
            0..80 => self.rng.below(GFN_SPAN) << 12,
            80..85 => u64::from(CODE_GPA) - self.rng.below(4) * PAGE,
            85..90 => (max - 3 + self.rng.below(6)) << 12,
            90..95 => ((u64::MAX >> 12) - self.rng.below(4)) << 12,
            _ => {
                let (low, any) = (self.rng.below(GFN_SPAN) << 12 | 0x800, self.rng.next());
                self.rng.pick(&[low, any])
            }
        }
    }

    fn pages(&mut self) -> u64 {
        let max = self.limits.max_pages_per_slot();
        match self.rng.below(100) {
            0..82 => 1 + self.rng.below(64),
            82..87 => 65 + self.rng.below(SAFE_PAGES - 64),
            87..92 => self.rng.pick(&[max + 1, max + 2, 1 << 40, u64::MAX >> 12]),
            _ => 0,
        }
    }

    fn size(&mut self) -> u64 {
        if self.rng.pct(4) {
            (1 + self.rng.below(64)) * PAGE - self.rng.pick(&[1, 0x800])
        } else {
            self.pages().wrapping_mul(PAGE)
        }
    }

    fn hva(&mut self) -> u64 {
        let limit = self.limits.user_address_limit().unwrap_or(0);
        match self.rng.below(100) {
            0..82 => self.pool_base + self.rng.below(POOL_PAGES) * PAGE,
            82..88 => limit
                .wrapping_add(self.rng.below(8) * PAGE)
                .wrapping_sub(4 * PAGE),
            88..92 => !(PAGE - 1) - self.rng.below(4) * PAGE,
            92..96 => self.pool_base + 8 + self.rng.below(POOL_PAGES) * PAGE,
            _ => {
                let any = self.rng.next();
                self.rng.pick(&[0, any & !(PAGE - 1), any])
            }
        }
    }

    /// A request: random, or built from an existing slot so that it deletes, moves, re-flags,
    /// repeats or tries to change an immutable field.
    fn request(&mut self, existing: &[UserspaceMemoryRegion]) -> UserspaceMemoryRegion {
        let mut r = UserspaceMemoryRegion {
            slot: self.id(),
            flags: self.flags(),
            guest_phys_addr: self.gpa(),
            memory_size: self.size(),
            userspace_addr: self.hva(),
        };
        let user: Vec<_> = existing.iter().filter(|e| e.slot != CODE_ID).collect();
        if !user.is_empty() && self.rng.pct(60) {
            let old = *user[self.rng.below(user.len() as u64) as usize];
            r = match self.rng.below(100) {
                0..30 => UserspaceMemoryRegion {
                    memory_size: 0,
                    flags: if self.rng.pct(85) { 0 } else { r.flags },
                    guest_phys_addr: if self.rng.pct(80) {
                        0
                    } else {
                        r.guest_phys_addr
                    },
                    userspace_addr: if self.rng.pct(75) {
                        0
                    } else {
                        r.userspace_addr
                    },
                    ..old
                },
                30..55 => UserspaceMemoryRegion {
                    guest_phys_addr: r.guest_phys_addr,
                    flags: old.flags ^ if self.rng.pct(30) { 1 } else { 0 },
                    ..old
                },
                55..80 => UserspaceMemoryRegion {
                    flags: old.flags ^ self.rng.pick(&[1, 1, 1, 2, 4]),
                    ..old
                },
                80..88 => old,
                _ => UserspaceMemoryRegion {
                    userspace_addr: old.userspace_addr + if self.rng.pct(50) { PAGE } else { 0 },
                    memory_size: old.memory_size + self.rng.pick(&[0, PAGE]),
                    ..old
                },
            };
        }
        if r.memory_size > MAX_LOGGED_PAGES * PAGE {
            r.flags &= !MemFlags::LOG_DIRTY_PAGES.bits();
        }
        r
    }

    /// A guest access: mostly inside a slot, or next to one, or anywhere low.
    fn access(&mut self, existing: &[UserspaceMemoryRegion]) -> Op {
        let candidates: Vec<_> = existing
            .iter()
            .filter(|e| e.slot != CODE_ID && e.guest_phys_addr < 1 << 32)
            .collect();
        let gfn = match (candidates.is_empty(), self.rng.below(100)) {
            (false, 0..70) => {
                let s = candidates[self.rng.below(candidates.len() as u64) as usize];
                (s.guest_phys_addr >> 12) + self.rng.below(s.memory_size >> 12)
            }
            (false, 70..85) => {
                let s = candidates[self.rng.below(candidates.len() as u64) as usize];
                let edge = (s.guest_phys_addr + s.memory_size) >> 12;
                if self.rng.pct(50) {
                    edge
                } else {
                    (s.guest_phys_addr >> 12).wrapping_sub(1)
                }
            }
            _ => self.rng.below(GFN_SPAN),
        };
        if gfn >= u64::from(CODE_GPA >> 12) {
            return Op::Load(0);
        }
        let gpa = ((gfn << 12) | (self.rng.below(1024) * 4)) as u32;
        if self.rng.pct(55) {
            Op::Store(gpa, self.rng.next() as u32)
        } else {
            Op::Load(gpa)
        }
    }

    /// A dirty-log call, mostly on a logged slot.
    fn dirty(&mut self, existing: &[UserspaceMemoryRegion]) -> Op {
        let logged: Vec<_> = existing.iter().filter(|e| e.flags & 1 != 0).collect();
        let (slot, npages) = match (logged.is_empty(), self.rng.below(100)) {
            (false, 0..80) => {
                let s = logged[self.rng.below(logged.len() as u64) as usize];
                (s.slot, s.memory_size >> 12)
            }
            (_, 80..90) if !existing.is_empty() => {
                let s = existing[self.rng.below(existing.len() as u64) as usize];
                (s.slot, s.memory_size >> 12)
            }
            _ => (self.id(), 1 + self.rng.below(128)),
        };
        if self.rng.pct(60) {
            return Op::GetLog(slot);
        }
        let first_page = match self.rng.below(10) {
            0..6 => 0,
            6..9 => 64 * self.rng.below(npages / 64 + 2),
            _ => 1 + self.rng.below(100),
        };
        let num_pages = match self.rng.below(10) {
            0..6 => npages.saturating_sub(first_page),
            6..9 => 64 * self.rng.below(npages / 64 + 2),
            _ => self.rng.below(2 * npages + 2),
        } as u32;
        let words = u64::from(num_pages).div_ceil(64) as usize;
        let mask = (0..words)
            .map(|_| {
                if self.rng.pct(50) {
                    u64::MAX
                } else {
                    self.rng.next()
                }
            })
            .collect();
        Op::ClearLog {
            slot,
            first_page,
            num_pages,
            mask,
        }
    }

    fn mode(&mut self) -> Op {
        Op::Mode(self.rng.pick(&[
            DirtyLogMode::FetchAndClear,
            DirtyLogMode::ManualProtect {
                initially_set: false,
            },
            DirtyLogMode::ManualProtect {
                initially_set: true,
            },
        ]))
    }

    fn op(&mut self, slots: &Memslots) -> Op {
        let existing = slots.layout().regions;
        match self.rng.below(1000) {
            0..450 => Op::Set(self.request(&existing)),
            450..800 => self.access(&existing),
            800..998 => self.dirty(&existing),
            _ => self.mode(),
        }
    }
}

/// Runs `ops` on a fresh pair; the first divergence, if any.
fn replay(kvm: &Kvm, ops: &[Op]) -> Option<(usize, Divergence)> {
    let mut h = Harness::new(kvm);
    ops.iter()
        .enumerate()
        .find_map(|(i, op)| h.apply(op).err().map(|d| (i, d)))
}

/// Drops operations from `ops` (which diverges at its last one) while the divergence stays,
/// within a time budget: the list a failure prints.
fn shrink(kvm: &Kvm, mut ops: Vec<Op>, budget: Duration) -> Vec<Op> {
    let start = Instant::now();
    let mut chunk = ops.len() / 2;
    while chunk > 0 && start.elapsed() < budget {
        let mut i = 0;
        while i + 1 < ops.len() && start.elapsed() < budget {
            let end = (i + chunk).min(ops.len() - 1);
            let mut candidate = ops[..i].to_vec();
            candidate.extend_from_slice(&ops[end..]);
            if replay(kvm, &candidate).is_some_and(|(at, _)| at == candidate.len() - 1) {
                ops = candidate;
            } else {
                i = end;
            }
        }
        chunk /= 2;
    }
    ops
}

/// A random run of about `seconds`, one fresh VM pair per dirty-log mode in turn.
fn run(seconds: u64) {
    let Some(kvm) = kvm_or_skip("kernel-differential tests") else {
        return;
    };
    let seed = std::env::var("MEMSLOTS_KVM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("kernel-differential run: seed {seed}, {seconds} s");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut total = Counts::default();
    let mut rounds = 0u64;
    while Instant::now() < deadline {
        let mut h = Harness::new(&kvm);
        let mut generator = Generator {
            rng: Rng(seed ^ rounds.wrapping_mul(0x2545_f491_4f6c_dd1d)),
            limits: h.limits(),
            pool_base: h.pool.base(),
        };
        // Each VM starts in its own mode, and the mode changes now and then.
        let start_mode = match rounds % 3 {
            0 => DirtyLogMode::FetchAndClear,
            1 => DirtyLogMode::ManualProtect {
                initially_set: false,
            },
            _ => DirtyLogMode::ManualProtect {
                initially_set: true,
            },
        };
        let mut kept = vec![Op::Mode(start_mode)];
        h.apply(&kept[0]).expect("mode");
        for _ in 0..20_000 {
            let op = generator.op(&h.slots);
            match h.apply(&op) {
                Ok(true) => kept.push(op),
                Ok(false) => {}
                Err(d) => {
                    kept.push(op);
                    let short = shrink(&kvm, kept, Duration::from_secs(60));
                    let d = replay(&kvm, &short).map_or(d, |(_, shrunk)| shrunk);
                    let listing: Vec<String> =
                        short.iter().map(|o| format!("    {o:?},")).collect();
                    panic!(
                        "divergence (seed {seed}, round {rounds}) at {:?}: kernel {}, memslots {}\n\
                         replay (paste into `replays`):\n{}",
                        d.op,
                        d.kernel,
                        d.memslots,
                        listing.join("\n")
                    );
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        total.add(&h.counts);
        rounds += 1;
    }
    println!(
        "kernel-differential: 0 divergences over {} VMs: {} requests ({} accepted), {} guest \
         probes ({} loads, {} stores, {} MMIO exits), {} dirty-log calls ({} gets, {} clears), \
         {} mode changes",
        rounds,
        total.requests,
        total.accepted,
        total.loads + total.stores,
        total.loads,
        total.stores,
        total.mmio,
        total.dirty_gets + total.dirty_clears,
        total.dirty_gets,
        total.dirty_clears,
        total.mode_changes
    );
    assert!(total.requests > 0 && total.accepted > 0 && total.stores > 0 && total.dirty_gets > 0);
}

fn seconds(default: u64) -> u64 {
    std::env::var("MEMSLOTS_KVM_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn bounded() {
    run(seconds(60));
}

#[test]
#[ignore = "ten minutes against /dev/kvm"]
fn long() {
    run(seconds(600));
}

/// Sequences that once diverged, or pin a rule, replayed on every run.
fn replays() -> Vec<Vec<Op>> {
    #[allow(unused_imports)] // what a pasted failure listing names
    use {DirtyLogMode::*, Op::*};
    let limit = Limits::X86_64_USER_ADDRESS_LIMIT;
    let region = UserspaceMemoryRegion::new;
    vec![
        // The user address bound applies to deletes too, exactly at the limit.
        vec![
            Op::Set(region(1, MemFlags::empty(), 0, 2 * PAGE, limit - 2 * PAGE)),
            Op::Set(region(1, MemFlags::empty(), 0, 0, limit + PAGE)),
            Op::Set(region(1, MemFlags::empty(), 0, 0, limit)),
        ],
        // The largest gfn: an overlap is reported before it, a move past it is refused.
        vec![
            Op::Set(region(1, MemFlags::empty(), ((1 << 40) - 1) << 12, PAGE, 0)),
            Op::Set(region(
                2,
                MemFlags::empty(),
                ((1 << 40) - 2) << 12,
                3 * PAGE,
                0,
            )),
            Op::Set(region(1, MemFlags::empty(), 1 << 52, PAGE, 0)),
        ],
    ]
}

#[test]
fn known_sequences_agree() {
    let Some(kvm) = kvm_or_skip("kernel-differential tests") else {
        return;
    };
    for ops in replays() {
        if let Some((at, d)) = replay(&kvm, &ops) {
            panic!("replay diverged at op {at}: {d:?}");
        }
    }
}
