//! [`MemslotSet`]: one address space's immutable version, kept in three persistent trees.

use core::fmt;
use core::iter::FusedIterator;
use core::ops::Range;
use std::sync::Arc;

use crate::change::SlotLookup;
use crate::slot::Memslot;
use crate::tree::{self, Summary, Tree, Visit, Visitor};
use crate::types::{Gfn, Hva, Limits};
use crate::view::MemslotRead;

/// Key of the hva tree: ordered by host start address, then slot id, since host ranges may
/// coincide. It also carries the slot's host end, so that searching never has to open a slot
/// to learn where it ends (the end is fixed by the id within a version, so it takes no part in
/// the order).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HvaKey {
    start: u64,
    id: u16,
    end: u64,
}

impl HvaKey {
    fn of<B>(slot: &Memslot<B>) -> Self {
        Self {
            start: slot.userspace_addr().0,
            id: slot.id(),
            end: slot.end_hva().0,
        }
    }
}

impl PartialEq for HvaKey {
    fn eq(&self, other: &Self) -> bool {
        (self.start, self.id) == (other.start, other.id)
    }
}

impl Eq for HvaKey {}

impl PartialOrd for HvaKey {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HvaKey {
    #[inline]
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        (self.start, self.id).cmp(&(other.start, other.id))
    }
}

/// The hva tree's augmentation: the largest host end address in a subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MaxEnd(u64);

impl<B: 'static> Summary<HvaKey, Arc<Memslot<B>>> for MaxEnd {
    #[inline]
    fn of_entry(key: &HvaKey, _: &Arc<Memslot<B>>) -> Self {
        MaxEnd(key.end)
    }
    #[inline]
    fn combine(self, other: Self) -> Self {
        MaxEnd(self.0.max(other.0))
    }
}

#[cfg(any(test, feature = "invariants"))]
#[cfg_attr(docsrs, doc(cfg(feature = "invariants")))]
/// A broken invariant of a [`MemslotSet`], found by [`MemslotSet::check_invariants`].
///
/// | operation | cost |
/// |---|---|
/// | [`Clone`], [`PartialEq`], `Display` | O(1) |
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SetViolation {
    /// One of the three trees breaks its own invariants.
    #[error("{tree} tree: {violation}")]
    Tree {
        /// Which tree: `"gfn"`, `"hva"` or `"id"`.
        tree: &'static str,
        /// What is broken in it.
        violation: tree::Violation,
    },
    /// The trees hold different numbers of slots.
    #[error("sizes differ: id {id}, gfn {gfn}, hva {hva}")]
    SizesDiffer {
        /// Slots in the id tree.
        id: usize,
        /// Slots in the gfn tree.
        gfn: usize,
        /// Slots in the hva tree.
        hva: usize,
    },
    /// A slot is filed under a gfn key that is not its base, or in the wrong address space.
    #[error("slot {slot} filed under gfn {key:#x}")]
    Misfiled {
        /// The slot.
        slot: crate::types::SlotId,
        /// The key it is filed under.
        key: u64,
    },
    /// A slot overlaps the one before it in gfn order.
    #[error("slot {slot} overlaps its predecessor")]
    Overlap {
        /// The later slot.
        slot: crate::types::SlotId,
    },
    /// The trees do not hold the very same `Arc` of a slot.
    #[error("slot {slot} is not the same slot in every tree")]
    NotShared {
        /// The slot.
        slot: crate::types::SlotId,
    },
    /// The recorded page count differs from the slots' pages.
    #[error("total_pages {recorded} but the slots hold {counted}")]
    TotalPages {
        /// What the version records.
        recorded: u64,
        /// What its slots add up to.
        counted: u64,
    },
}

/// One address space's memslots at one moment: an immutable, structurally shared version.
///
/// Three persistent trees index the same `Arc<Memslot>`s: by base gfn (exact and approximate
/// lookups, gfn-range walks), by host address with each subtree's largest end cached (hva-range
/// queries), and by id. A new version shares every node it does not change with the version it was
/// made from, so an update costs O(log n) time and memory however many slots there are, and a
/// version stays valid, unchanged, for as long as anyone holds it.
///
/// | operation | cost |
/// |---|---|
/// | [`get`](Self::get), [`find`](Self::find), [`find_approx`](Self::find_approx) | O(log n), no allocation |
/// | [`iter`](Self::iter) | O(n) for all, O(1) per step amortized |
/// | [`gfn_range`](Self::gfn_range) | O(log n + k) for k slots |
/// | [`hva_range`](Self::hva_range) | O(log n + k) nodes for k overlapping slots |
/// | [`len`](Self::len), [`generation`](Self::generation), [`total_pages`](Self::total_pages) | O(1) |
/// | [`Clone`] | O(1) |
/// | [`read_guest`](Self::read_guest), [`write_guest`](Self::write_guest) and the `_obj` forms (`B:` [`Backing`](crate::Backing)) | O(log n) per slot the range spans, plus the copy |
/// | an update (by [`Memslots`](crate::Memslots)) | O(log n) time, O(log n) new nodes |
///
/// ```
/// use memslots::{Gfn, Hva, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
/// let vm = Memslots::new(Limits::default());
/// // Two slots backed by the same host memory: allowed, as in KVM.
/// vm.set_user_memory_region(UserspaceMemoryRegion::new(0, MemFlags::empty(), 0x0, 0x10000, 0x7000_0000))?;
/// vm.set_user_memory_region(UserspaceMemoryRegion::new(1, MemFlags::empty(), 0x100000, 0x10000, 0x7000_0000))?;
/// let slots = vm.snapshot(0);
/// assert_eq!(slots.len(), 2);
/// assert_eq!(slots.find(Gfn(0x105)).map(|s| s.id()), Some(1));
/// assert!(slots.find(Gfn(0x10)).is_none());
/// // Which guest frames does invalidating this host page touch?
/// let hits: Vec<_> = slots.hva_range(Hva(0x7000_3000), Hva(0x7000_4000)).map(|(s, g)| (s.id(), g)).collect();
/// assert_eq!(hits, [(0, Gfn(0x3)..Gfn(0x4)), (1, Gfn(0x103)..Gfn(0x104))]);
/// # Ok::<(), memslots::Error>(())
/// ```
pub struct MemslotSet<B = ()> {
    by_gfn: Tree<u64, Arc<Memslot<B>>>,
    by_hva: Tree<HvaKey, Arc<Memslot<B>>, MaxEnd>,
    by_id: Tree<u16, Arc<Memslot<B>>>,
    generation: u64,
    total_pages: u64,
    as_id: u16,
    /// The page size as a shift, to turn guest physical addresses into frames.
    page_shift: u8,
}

impl<B> Clone for MemslotSet<B> {
    /// O(1): the trees are shared, not copied.
    fn clone(&self) -> Self {
        Self {
            by_gfn: self.by_gfn.clone(),
            by_hva: self.by_hva.clone(),
            by_id: self.by_id.clone(),
            ..*self
        }
    }
}

impl<B: 'static> MemslotSet<B> {
    /// An empty version of address space `as_id` at `generation`.
    pub(crate) fn empty(as_id: u16, generation: u64, page_shift: u32) -> Self {
        Self {
            by_gfn: Tree::new(),
            by_hva: Tree::new(),
            by_id: Tree::new(),
            generation,
            total_pages: 0,
            as_id,
            page_shift: page_shift as u8,
        }
    }

    /// The page size as a shift (12 for 4 KiB pages).
    pub(crate) fn page_shift(&self) -> u32 {
        u32::from(self.page_shift)
    }

    /// Replaces slot `id` by `new` (removes it when `new` is `None`, adds `new` when there was no
    /// slot `id`): the kernel's `kvm_replace_memslot`. Copies only the changed tree paths when the
    /// trees are shared with another version.
    pub(crate) fn replace(&mut self, id: u16, new: Option<Arc<Memslot<B>>>) {
        let Some(new) = new else {
            if let Some(old) = self.by_id.remove(&id) {
                self.by_hva.remove(&HvaKey::of(&old));
                self.by_gfn.remove(&old.base_gfn().0);
                self.total_pages -= old.npages();
            }
            return;
        };
        // An insert under an existing key replaces the value in one walk; a slot keeps its id
        // and host range for life, so only a move needs a remove as well (in the gfn tree).
        if let Some(old) = self.by_id.insert(id, Arc::clone(&new)) {
            self.total_pages -= old.npages();
            let (old_key, new_key) = (HvaKey::of(&old), HvaKey::of(&new));
            if old_key != new_key || old_key.end != new_key.end {
                self.by_hva.remove(&old_key);
            }
            if old.base_gfn() != new.base_gfn() {
                self.by_gfn.remove(&old.base_gfn().0);
            }
        }
        self.total_pages += new.npages();
        self.by_hva.insert(HvaKey::of(&new), Arc::clone(&new));
        self.by_gfn.insert(new.base_gfn().0, new);
    }

    /// The address space this version belongs to.
    ///
    /// Time: O(1).
    #[must_use]
    pub fn as_id(&self) -> u16 {
        self.as_id
    }

    /// The generation: address space `i` starts at `i` and each published version adds the number
    /// of address spaces, as in KVM. A cache keyed by generation is valid for exactly one version.
    ///
    /// Time: O(1).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The number of slots.
    ///
    /// Time: O(1).
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no slots.
    ///
    /// Time: O(1).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The pages of all slots together.
    ///
    /// Time: O(1).
    #[must_use]
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// The slot with id `id`.
    ///
    /// Time: O(log n).
    #[must_use]
    pub fn get(&self, id: u16) -> Option<&Memslot<B>> {
        self.by_id.get(&id).map(|s| &**s)
    }

    /// The slot whose gfn range `[base, base + npages)` holds `gfn` (KVM's `search_memslots`).
    ///
    /// Time: O(log n); no allocation, no lock.
    #[must_use]
    #[inline]
    pub fn find(&self, gfn: Gfn) -> Option<&Memslot<B>> {
        self.find_shared(gfn).map(|s| &**s)
    }

    /// As [`find`](Self::find), the slot as the trees share it: what a reader's last-used slot
    /// keeps, at the cost of one reference count.
    #[inline]
    pub(crate) fn find_shared(&self, gfn: Gfn) -> Option<&Arc<Memslot<B>>> {
        match self.by_gfn.floor(&gfn.0) {
            Some((_, slot)) if slot.contains(gfn) => Some(slot),
            _ => None,
        }
    }

    /// The slot holding `gfn` or, when none does, a slot bordering the hole: the one with the
    /// greatest base below `gfn`, or failing that the lowest slot (the array-era
    /// `search_memslots(.., approx = true)` rule). `None` only when the version is empty.
    ///
    /// Time: O(log n).
    #[must_use]
    pub fn find_approx(&self, gfn: Gfn) -> Option<&Memslot<B>> {
        self.by_gfn
            .floor(&gfn.0)
            .or_else(|| self.by_gfn.first())
            .map(|(_, s)| &**s)
    }

    /// Every slot, in ascending gfn order.
    ///
    /// Time: O(n) for the whole walk; no allocation.
    #[must_use]
    pub fn iter(&self) -> Iter<'_, B> {
        Iter {
            inner: self.by_gfn.iter(),
        }
    }

    /// The slots intersecting `[start, end)`, in ascending gfn order (KVM's
    /// `kvm_for_each_memslot_in_gfn_range`); none when `start >= end`.
    ///
    /// Time: O(log n + k) for k slots; no allocation.
    #[must_use]
    pub fn gfn_range(&self, start: Gfn, end: Gfn) -> GfnRange<'_, B> {
        let end = end.0.max(start.0);
        let from = match self.by_gfn.floor(&start.0) {
            Some((base, slot)) if slot.end_gfn() > start => *base,
            _ => start.0,
        };
        GfnRange {
            inner: self.by_gfn.range(from..end),
        }
    }

    /// Every slot whose host range intersects `[start, end)`, with the guest frames that the
    /// clamped host range covers, partial pages counting as whole ones (KVM's
    /// `__kvm_handle_hva_range`). In ascending order of host start address, then slot id. Slots
    /// being deleted or moved (`INVALID`) are included, as in the kernel.
    ///
    /// Time: O(log n + k) visited nodes for k matches; no allocation.
    #[must_use]
    #[inline]
    pub fn hva_range(&self, start: Hva, end: Hva) -> HvaRange<'_, B> {
        // An empty query stops at once: every key is at or past an end of 0.
        let (q_start, q_end) = if start < end {
            (start.0, end.0)
        } else {
            (0, 0)
        };
        HvaRange {
            inner: self.by_hva.search_by(Overlaps {
                start: q_start,
                end: q_end,
            }),
            start,
            end,
        }
    }

    /// Checks the three trees and the counters against each other: the same slots in each, keyed
    /// by their own fields, no two overlapping in gfn, counters right, each tree's own invariants.
    /// Tests and fuzzing call it after every step.
    ///
    /// Time: O(n log n).
    ///
    /// # Errors
    /// The first broken invariant, as a [`SetViolation`].
    #[cfg(any(test, feature = "invariants"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "invariants")))]
    pub fn check_invariants(&self) -> Result<(), SetViolation> {
        let tree = |tree: &'static str| move |violation| SetViolation::Tree { tree, violation };
        self.by_gfn.check_invariants().map_err(tree("gfn"))?;
        self.by_hva.check_invariants().map_err(tree("hva"))?;
        self.by_id.check_invariants().map_err(tree("id"))?;
        let n = self.by_id.len();
        if self.by_gfn.len() != n || self.by_hva.len() != n {
            return Err(SetViolation::SizesDiffer {
                id: n,
                gfn: self.by_gfn.len(),
                hva: self.by_hva.len(),
            });
        }
        let mut pages = 0u64;
        let mut prev_end = None;
        for (base, slot) in self.by_gfn.iter() {
            let id = slot.slot_id();
            if *base != slot.base_gfn().0 || slot.as_id() != self.as_id {
                return Err(SetViolation::Misfiled {
                    slot: id,
                    key: *base,
                });
            }
            if prev_end.is_some_and(|end| end > *base) {
                return Err(SetViolation::Overlap { slot: id });
            }
            prev_end = Some(slot.end_gfn().0);
            let same = |s: Option<&Arc<Memslot<B>>>| s.is_some_and(|s| Arc::ptr_eq(s, slot));
            if !same(self.by_id.get(&slot.id())) || !same(self.by_hva.get(&HvaKey::of(slot))) {
                return Err(SetViolation::NotShared { slot: id });
            }
            pages += slot.npages();
        }
        if pages != self.total_pages {
            return Err(SetViolation::TotalPages {
                recorded: self.total_pages,
                counted: pages,
            });
        }
        Ok(())
    }

    /// The id tree, which [`diff`](Self::diff) walks.
    pub(crate) fn by_id(&self) -> &Tree<u16, Arc<Memslot<B>>> {
        &self.by_id
    }
}

impl<B: 'static> fmt::Debug for MemslotSet<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemslotSet")
            .field("as_id", &self.as_id)
            .field("generation", &self.generation)
            .field("total_pages", &self.total_pages)
            .field("slots", &DebugSlots(self))
            .finish()
    }
}

struct DebugSlots<'a, B>(&'a MemslotSet<B>);

impl<B: 'static> fmt::Debug for DebugSlots<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl<'a, B: 'static> IntoIterator for &'a MemslotSet<B> {
    type Item = &'a Memslot<B>;
    type IntoIter = Iter<'a, B>;
    fn into_iter(self) -> Iter<'a, B> {
        self.iter()
    }
}

impl<B: 'static> SlotLookup for MemslotSet<B> {
    type Backing = B;

    fn slot(&self, id: u16) -> Option<&Memslot<B>> {
        self.get(id)
    }

    fn overlapping(&self, id: u16, start: Gfn, end: Gfn) -> Option<&Memslot<B>> {
        // The walk stops at the first slot that is not the one being moved: at most two steps.
        self.gfn_range(start, end).find(|s| s.id() != id)
    }
}

impl<B: Send + Sync + 'static> crate::view::sealed::VersionOps for MemslotSet<B> {
    type Slot = Arc<Memslot<B>>;

    fn empty(as_id: u16, generation: u64, limits: &Limits) -> Self {
        Self::empty(as_id, generation, limits.page_shift())
    }

    fn replace(&mut self, id: u16, new: Option<Memslot<B>>) {
        self.replace(id, new.map(Arc::new));
    }

    fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    #[inline]
    fn find_slot(&self, gfn: Gfn) -> Option<&Arc<Memslot<B>>> {
        self.find_shared(gfn)
    }
}

/// The inherent methods of the same names: they are the API (no trait import needed), the trait
/// lets tests and benchmarks be written once over both designs.
impl<B: 'static> MemslotRead for MemslotSet<B> {
    type Backing = B;

    fn as_id(&self) -> u16 {
        self.as_id
    }
    fn generation(&self) -> u64 {
        self.generation
    }
    fn len(&self) -> usize {
        self.len()
    }
    fn total_pages(&self) -> u64 {
        self.total_pages
    }
    fn get(&self, id: u16) -> Option<&Memslot<B>> {
        self.get(id)
    }
    #[inline]
    fn find(&self, gfn: Gfn) -> Option<&Memslot<B>> {
        self.find(gfn)
    }
    fn find_approx(&self, gfn: Gfn) -> Option<&Memslot<B>> {
        self.find_approx(gfn)
    }
    fn iter(&self) -> impl Iterator<Item = &Memslot<B>> + '_ {
        self.iter()
    }
    fn gfn_range(&self, start: Gfn, end: Gfn) -> impl Iterator<Item = &Memslot<B>> + '_ {
        self.gfn_range(start, end)
    }
    #[inline]
    fn hva_range(
        &self,
        start: Hva,
        end: Hva,
    ) -> impl Iterator<Item = (&Memslot<B>, Range<Gfn>)> + '_ {
        self.hva_range(start, end)
    }
}

/// Every slot of a [`MemslotSet`] in ascending gfn order.
///
/// This `struct` is created by [`MemslotSet::iter`].
pub struct Iter<'a, B = ()> {
    inner: tree::Iter<'a, u64, Arc<Memslot<B>>, (), { tree::DEFAULT_B }>,
}

impl<B> Clone for Iter<'_, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<'a, B> Iterator for Iter<'a, B> {
    type Item = &'a Memslot<B>;
    #[inline]
    fn next(&mut self) -> Option<&'a Memslot<B>> {
        self.inner.next().map(|(_, s)| &**s)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<B> ExactSizeIterator for Iter<'_, B> {}
impl<B> FusedIterator for Iter<'_, B> {}

/// The slots of a [`MemslotSet`] that intersect a gfn range, in ascending gfn order.
///
/// This `struct` is created by [`MemslotSet::gfn_range`].
pub struct GfnRange<'a, B = ()> {
    inner: tree::Range<'a, u64, Arc<Memslot<B>>, (), { tree::DEFAULT_B }>,
}

impl<B> Clone for GfnRange<'_, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<'a, B: 'static> Iterator for GfnRange<'a, B> {
    type Item = &'a Memslot<B>;
    #[inline]
    fn next(&mut self) -> Option<&'a Memslot<B>> {
        self.inner.next().map(|(_, s)| &**s)
    }
}

impl<B: 'static> FusedIterator for GfnRange<'_, B> {}

/// Prunes the hva tree to the subtrees that may hold a slot overlapping `[start, end)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Overlaps {
    start: u64,
    end: u64,
}

impl Visitor<HvaKey, MaxEnd> for Overlaps {
    #[inline]
    fn visit(&mut self, min_key: &HvaKey, summary: &MaxEnd) -> Visit {
        if min_key.start >= self.end {
            // Keys ascend: this subtree and every later one start at or past the end.
            Visit::Stop
        } else if summary.0 <= self.start {
            Visit::Skip
        } else {
            Visit::Enter
        }
    }
}

/// The slots of a [`MemslotSet`] whose host range intersects an hva range, each with the gfn
/// range it covers.
///
/// This `struct` is created by [`MemslotSet::hva_range`].
pub struct HvaRange<'a, B = ()> {
    inner: tree::Search<'a, HvaKey, Arc<Memslot<B>>, MaxEnd, Overlaps, { tree::DEFAULT_B }>,
    start: Hva,
    end: Hva,
}

impl<'a, B: 'static> Iterator for HvaRange<'a, B> {
    type Item = (&'a Memslot<B>, Range<Gfn>);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.inner
            .next()
            .map(|(_, slot)| (&**slot, slot.clamp_hva_range(self.start, self.end)))
    }
}

impl<B: 'static> FusedIterator for HvaRange<'_, B> {}

macro_rules! opaque_debug {
    ($($name:ident),*) => {$(
        impl<B> fmt::Debug for $name<'_, B> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }
    )*};
}

opaque_debug!(Iter, GfnRange, HvaRange);
