//! The design KVM replaced in 2021, copied faithfully: the oracle for differential tests and the
//! "Before" column of the benchmark table.
//!
//! As in Linux 5.14 (`struct kvm_memslots`, `virt/kvm/kvm_main.c`):
//!
//! - the slots live by value in one array sorted by base gfn, **descending**;
//! - an `id_to_index` array sized to the *maximum* slot count maps ids to positions;
//! - a shared `lru_slot` index caches the last slot found by gfn;
//! - every update copies the whole version (array and `id_to_index`), then shifts entries to keep
//!   the order: O(n) per update, O(n^2) to set up n slots;
//! - a gfn lookup is the cache check, then a binary search;
//! - an hva-range query, and the overlap check, scan every slot.
//!
//! It runs through the same validation and publication code as [`Memslots`](crate::Memslots), so
//! the two can only differ in how a version is stored.

use core::fmt;
use core::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::change::SlotLookup;
use crate::publish::Core;
use crate::slot::Memslot;
use crate::types::{Gfn, Hva, Limits};
use crate::view::sealed::VersionOps;
use crate::view::MemslotRead;
use crate::vm::Vm;

/// One address space's version in the array design.
///
/// | operation | cost |
/// |---|---|
/// | [`get`](MemslotRead::get) | O(1) through `id_to_index` |
/// | [`find`](MemslotRead::find) | O(1) on an `lru_slot` hit, else O(log n) |
/// | [`gfn_range`](MemslotRead::gfn_range) | O(log n + k) |
/// | [`hva_range`](MemslotRead::hva_range) | O(n): a scan of every slot |
/// | an update | O(n + max slots): the whole version is copied |
/// | memory | O(max slots) even when empty |
pub struct ArraySet {
    /// Sorted by base gfn, descending.
    slots: Vec<Memslot>,
    /// Position of each id in `slots`, or -1; as long as the largest slot count.
    id_to_index: Box<[i16]>,
    /// The last slot found by gfn, shared by every reader of this version.
    lru_slot: AtomicUsize,
    generation: u64,
    total_pages: u64,
    as_id: u16,
}

impl ArraySet {
    fn index_of(&self, id: u16) -> Option<usize> {
        let i = *self.id_to_index.get(usize::from(id))?;
        usize::try_from(i).ok()
    }

    /// The first position whose base is at or below `gfn`: the binary search of
    /// `search_memslots`.
    fn search(&self, gfn: Gfn) -> usize {
        self.slots.partition_point(|s| s.base_gfn() > gfn)
    }
}

impl Clone for ArraySet {
    /// The whole version: the slot array and `id_to_index`, as `kvm_dup_memslots` copies them.
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
            id_to_index: self.id_to_index.clone(),
            lru_slot: AtomicUsize::new(self.lru_slot.load(Ordering::Relaxed)),
            generation: self.generation,
            total_pages: self.total_pages,
            as_id: self.as_id,
        }
    }
}

impl fmt::Debug for ArraySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArraySet")
            .field("as_id", &self.as_id)
            .field("generation", &self.generation)
            .field("slots", &self.slots)
            .finish()
    }
}

impl VersionOps for ArraySet {
    type Slot = Memslot;

    fn empty(as_id: u16, generation: u64, limits: &Limits) -> Self {
        Self {
            slots: Vec::new(),
            id_to_index: vec![-1; usize::from(limits.total_slots())].into_boxed_slice(),
            lru_slot: AtomicUsize::new(0),
            generation,
            total_pages: 0,
            as_id,
        }
    }

    fn replace(&mut self, id: u16, new: Option<Memslot>) {
        self.lru_slot.store(0, Ordering::Relaxed);
        if let Some(i) = self.index_of(id) {
            let old = self.slots.remove(i);
            self.total_pages -= old.npages();
            self.id_to_index[usize::from(id)] = -1;
        }
        if let Some(new) = new {
            self.total_pages += new.npages();
            let pos = self.search(new.base_gfn());
            self.slots.insert(pos, new);
        }
        // Every entry after the change point shifted: renumber them, as update_memslots does
        // while it moves them.
        for (i, slot) in self.slots.iter().enumerate() {
            self.id_to_index[usize::from(slot.id())] = i as i16;
        }
    }

    fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    #[inline]
    fn find_slot(&self, gfn: Gfn) -> Option<&Memslot> {
        self.find(gfn)
    }
}

impl SlotLookup for ArraySet {
    type Backing = ();

    fn slot(&self, id: u16) -> Option<&Memslot> {
        self.get(id)
    }

    fn overlapping(&self, id: u16, start: Gfn, end: Gfn) -> Option<&Memslot> {
        // The 5.14 check: a scan of every slot. Ascending gfn order, so that when a request
        // overlaps several slots both designs name the same one.
        self.slots
            .iter()
            .rev()
            .find(|s| s.id() != id && !(end <= s.base_gfn() || start >= s.end_gfn()))
    }
}

impl MemslotRead for ArraySet {
    type Backing = ();
    fn as_id(&self) -> u16 {
        self.as_id
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn total_pages(&self) -> u64 {
        self.total_pages
    }

    fn get(&self, id: u16) -> Option<&Memslot> {
        self.index_of(id).map(|i| &self.slots[i])
    }

    #[inline]
    fn find(&self, gfn: Gfn) -> Option<&Memslot> {
        let lru = self.lru_slot.load(Ordering::Relaxed);
        if let Some(slot) = self.slots.get(lru) {
            if slot.contains(gfn) {
                return Some(slot);
            }
        }
        let i = self.search(gfn);
        let slot = self.slots.get(i).filter(|s| s.contains(gfn))?;
        self.lru_slot.store(i, Ordering::Relaxed);
        Some(slot)
    }

    fn find_approx(&self, gfn: Gfn) -> Option<&Memslot> {
        let i = self.search(gfn);
        self.slots.get(i).or_else(|| self.slots.last())
    }

    fn iter(&self) -> impl Iterator<Item = &Memslot> + '_ {
        self.slots.iter().rev()
    }

    fn gfn_range(&self, start: Gfn, end: Gfn) -> impl Iterator<Item = &Memslot> + '_ {
        let below_end = self.slots.partition_point(|s| s.base_gfn() >= end);
        let past_start = self.slots.partition_point(|s| s.end_gfn() > start);
        self.slots[below_end..past_start.max(below_end)]
            .iter()
            .rev()
    }

    /// In array order (descending gfn), as the 5.14 scan visits them.
    fn hva_range(&self, start: Hva, end: Hva) -> impl Iterator<Item = (&Memslot, Range<Gfn>)> + '_ {
        self.slots
            .iter()
            .filter(move |s| start < end && s.userspace_addr() < end && start < s.end_hva())
            .map(move |s| (s, s.clamp_hva_range(start, end)))
    }
}

/// A VM's memslots in the array design: [`Vm`] over [`ArraySet`], with the same methods as
/// [`Memslots`](crate::Memslots) and the same update protocol.
///
/// | operation | cost |
/// |---|---|
/// | [`set_user_memory_region`](Vm::set_user_memory_region) | O(n + max slots) per published version |
/// | [`snapshot`](Vm::snapshot) | O(1) |
///
/// ```
/// use memslots::baseline::ArrayMemslots;
/// use memslots::{Gfn, Limits, MemFlags, MemslotRead, UserspaceMemoryRegion};
/// let vm = ArrayMemslots::new(Limits::default());
/// vm.set_user_memory_region(UserspaceMemoryRegion::new(3, MemFlags::empty(), 0x1000, 0x1000, 0))?;
/// assert_eq!(vm.snapshot(0).find(Gfn(1)).map(|s| s.id()), Some(3));
/// # Ok::<(), memslots::Error>(())
/// ```
pub type ArrayMemslots = Vm<ArraySet>;

impl ArrayMemslots {
    /// An empty VM.
    ///
    /// Time: O(address spaces × max slots): each empty version has its `id_to_index`.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Vm::from_core(Core::new(limits, Some(std::sync::Arc::new(()))))
    }
}
