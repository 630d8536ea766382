//! The memory layouts of the kernel's `memslot_perf_test.c`, and the designs under test.

use crate::rng::XorShift;
use memslots::baseline::{ArrayMemslots, ArraySet};
use memslots::{
    Gfn, Hva, Limits, MemFlags, MemslotSet, Reader, UserspaceMemoryRegion, Version, Vm,
};

pub(crate) const PAGE: u64 = 4096;
/// Where the test area starts in the guest: the 4 KiB version's `MEM_GPA`.
pub(crate) const MEM_GPA: u64 = 0x1000_0000;
/// Where the test area is mapped in the host; slot 0 lives elsewhere.
pub(crate) const HOST_BASE: u64 = 0x7f00_0000_0000;
const SLOT0_HVA: u64 = 0x7e00_0000_0000;
/// Slot 0 stands for the selftest VM's own memory (code, stacks), below the test area.
const SLOT0_SIZE: u64 = 1 << 20;

/// Map: 32 MiB + 4 KiB. At most one page per slot, hence at most 8194 slots with slot 0.
pub(crate) const MAP_SIZE: u64 = (32 << 20) + PAGE;
/// Unmap and Unmap 2M: 128 MiB + 4 KiB.
pub(crate) const UNMAP_SIZE: u64 = (128 << 20) + PAGE;
/// The default area (Move tests, Slot setup): 512 MiB + 4 KiB.
pub(crate) const DEFAULT_SIZE: u64 = (512 << 20) + PAGE;

/// N slots as `prepare_vm` makes them: slot 0 plus N - 1 slots splitting the area evenly from
/// `MEM_GPA`, the last taking the remainder. Host addresses follow a fixed shuffle of the slots, so
/// hva order differs from gfn order.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Requests indexed by slot id; `regions[0]` is slot 0.
    pub(crate) regions: Vec<UserspaceMemoryRegion>,
    pub(crate) area_pages: u64,
    /// Test slots (ids 1..) in host-address order: (hva start, hva end).
    pub(crate) by_hva: Vec<(u64, u64)>,
}

impl Layout {
    /// `None` when the area has fewer pages than test slots (the kernel refuses too).
    pub(crate) fn new(slots: usize, area_bytes: u64, flags: MemFlags) -> Option<Self> {
        let area_pages = area_bytes / PAGE;
        let test_slots = slots.checked_sub(1).filter(|&n| n > 0)? as u64;
        let per_slot = area_pages / test_slots;
        if per_slot == 0 {
            return None;
        }
        let pages = |i: u64| {
            if i + 1 == test_slots {
                per_slot + area_pages % test_slots
            } else {
                per_slot
            }
        };
        let mut hva_order: Vec<u64> = (0..test_slots).collect();
        XorShift(0x9e37_79b9_7f4a_7c15).shuffle(&mut hva_order);
        let mut hva = vec![0; test_slots as usize];
        let mut next = HOST_BASE;
        let mut by_hva = Vec::with_capacity(test_slots as usize);
        for &i in &hva_order {
            hva[i as usize] = next;
            by_hva.push((next, next + pages(i) * PAGE));
            next += pages(i) * PAGE;
        }
        let mut regions = vec![UserspaceMemoryRegion::new(
            0, flags, 0, SLOT0_SIZE, SLOT0_HVA,
        )];
        for i in 0..test_slots {
            regions.push(UserspaceMemoryRegion::new(
                (i + 1) as u32,
                flags,
                MEM_GPA + i * per_slot * PAGE,
                pages(i) * PAGE,
                hva[i as usize],
            ));
        }
        Some(Self {
            regions,
            area_pages,
            by_hva,
        })
    }

    pub(crate) fn first_gfn(&self) -> u64 {
        MEM_GPA / PAGE
    }

    /// The last slot, the one the Move tests move.
    pub(crate) fn last(&self) -> UserspaceMemoryRegion {
        self.regions[self.regions.len() - 1]
    }

    /// Builds the layout with one request each, in slot order.
    pub(crate) fn build<S: Version>(&self, vm: &Vm<S>) {
        for r in &self.regions {
            vm.set_user_memory_region(*r).expect("valid layout");
        }
    }
}

/// A design under test, named by its version type: what the tests need beyond [`Vm`]'s methods,
/// an empty VM to build on.
pub(crate) trait Design: Version {
    fn new_vm() -> Vm<Self>;
}

impl Design for ArraySet {
    fn new_vm() -> Vm<Self> {
        ArrayMemslots::new(Limits::default())
    }
}

impl Design for MemslotSet {
    fn new_vm() -> Vm<Self> {
        memslots::Memslots::new(Limits::default())
    }
}

/// One guest access as the fault path takes it: a read-side section, gfn -> slot through the
/// per-vCPU last-used slot, slot -> hva, and, when `dirty`, the page marked dirty.
#[inline]
pub(crate) fn fault<S: Version>(reader: &Reader<S>, gfn: Gfn, dirty: bool) -> Option<Hva> {
    let mut guard = reader.read();
    let hva = guard.gfn_to_memslot(0, gfn).and_then(|s| s.gfn_to_hva(gfn));
    if dirty {
        guard.mark_page_dirty(0, gfn);
    }
    hva
}
