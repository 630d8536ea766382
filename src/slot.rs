//! One memory slot: where a range of guest frames lives in the VMM's address space.

use core::fmt;
use std::sync::Arc;

use crate::types::{Gfn, Hva, MemFlags, SlotId};
use std::sync::atomic::{AtomicU64, Ordering};

/// A memory slot (`struct kvm_memory_slot`): `npages` guest frames from `base_gfn`, mapped at
/// `userspace_addr` in the VMM.
///
/// A slot is immutable once built; only its dirty bitmap, a shared array of atomics, changes. The
/// versions of a [`MemslotSet`](crate::MemslotSet) share slots through `Arc`, so an update copies
/// only the slot it changes.
///
/// `B` is what the slot carries: `()` for the layout alone, or its backing (see
/// [`backing`](Self::backing), which also says exactly when a backing is dropped).
///
/// | operation | cost |
/// |---|---|
/// | accessors, [`contains`](Self::contains), translations | O(1) |
/// | [`Clone`] | O(1) (the dirty bitmap and the backing are shared, not copied) |
///
/// ```
/// use memslots::{Gfn, Hva, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
/// let vm = Memslots::new(Limits::default());
/// vm.set_user_memory_region(UserspaceMemoryRegion::new(0, MemFlags::empty(), 0x10000, 0x4000, 0x7000_0000))?;
/// let slots = vm.snapshot(0);
/// let slot = slots.find(Gfn(0x12)).unwrap();
/// assert_eq!((slot.base_gfn(), slot.npages()), (Gfn(0x10), 4));
/// assert_eq!(slot.gfn_to_hva(Gfn(0x12)), Some(Hva(0x7000_2000)));
/// assert_eq!(slot.hva_to_gfn(Hva(0x7000_3fff)), Some(Gfn(0x13)));
/// # Ok::<(), memslots::Error>(())
/// ```
pub struct Memslot<B = ()> {
    base_gfn: Gfn,
    npages: u64,
    userspace_addr: Hva,
    flags: MemFlags,
    id: u16,
    /// Below [`MAX_ADDRESS_SPACES`](crate::MAX_ADDRESS_SPACES) (16), so one byte: with the page
    /// shift beside it, a slot with its backing's pointer is 48 bytes, as it was without one.
    as_id: u8,
    page_shift: u8,
    dirty: Option<Arc<DirtyBitmap>>,
    /// What the slot's memory is: shared by every copy of the slot (its moves, flag changes and
    /// `INVALID` step), dropped with the last one.
    backing: Arc<B>,
}

impl<B> Clone for Memslot<B> {
    /// The same slot: the dirty bitmap and the backing are shared, not copied.
    fn clone(&self) -> Self {
        Self {
            dirty: self.dirty.clone(),
            backing: Arc::clone(&self.backing),
            ..*self
        }
    }
}

/// Why a translation through a slot failed: KVM's `KVM_HVA_ERR_BAD` and `KVM_HVA_ERR_RO_BAD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HvaError {
    /// The gfn is outside the slot, or the slot is being deleted or moved (`INVALID`).
    Bad,
    /// A write through a `READONLY` slot.
    ReadOnly,
}

impl<B> Memslot<B> {
    /// A slot; `npages` must be at least 1 and the hva range must not wrap (validation ensures
    /// both before any slot is built).
    pub(crate) fn new(
        slot: SlotId,
        base_gfn: Gfn,
        npages: u64,
        userspace_addr: Hva,
        flags: MemFlags,
        page_shift: u32,
        backing: Arc<B>,
    ) -> Self {
        debug_assert!(npages > 0);
        debug_assert!(usize::from(slot.as_id) < crate::MAX_ADDRESS_SPACES);
        Self {
            base_gfn,
            npages,
            userspace_addr,
            flags,
            id: slot.id,
            as_id: slot.as_id as u8,
            page_shift: page_shift as u8,
            dirty: None,
            backing,
        }
    }

    /// The same slot with other flags and base, keeping the dirty bitmap while logging stays on
    /// and allocating one when it is turned on (KVM's `kvm_prepare_memory_region`).
    pub(crate) fn changed(&self, base_gfn: Gfn, flags: MemFlags) -> Self {
        let mut new = Self {
            base_gfn,
            flags,
            dirty: None,
            backing: Arc::clone(&self.backing),
            ..*self
        };
        if flags.contains(MemFlags::LOG_DIRTY_PAGES) {
            new.dirty = Some(match &self.dirty {
                Some(bitmap) => Arc::clone(bitmap),
                None => Arc::new(DirtyBitmap::new(self.npages)),
            });
        }
        new
    }

    /// A copy marked `INVALID`, for the first step of a delete or move.
    pub(crate) fn invalidated(&self) -> Self {
        let mut invalid = self.clone();
        invalid.flags |= MemFlags::INVALID;
        invalid
    }

    /// The slot's backing: what the VMM attached when it created the slot (`()` for none). Moves
    /// and flag changes keep the very same object.
    ///
    /// # When a backing is dropped
    ///
    /// Every copy of a slot (the one in each version that has it, its `INVALID` copy, the copies
    /// hooks and transactions see) shares one `Arc` of the backing, and the backing is dropped
    /// with the last of them. After a delete, that is when all of these have let go:
    ///
    /// - every [`Snapshot`](crate::Snapshot) of a version that has the slot (dropping the last one
    ///   drops the backing, in the dropping thread);
    /// - every [`Reader`](crate::Reader) that saw such a version: a reader inside a section when
    ///   the delete was published lets go as that section ends; a reader idle since before it
    ///   keeps the versions of its last section (and its last-used slot) until its next section,
    ///   [`Reader::quiesce`](crate::Reader::quiesce), or its drop;
    /// - the writer, which keeps every replaced version until no reader holds it and frees it at
    ///   its next grace period ([`Memslots::synchronize`](crate::Memslots::synchronize),
    ///   [`Memslots::poll_synchronize`](crate::Memslots::poll_synchronize)) or waiting
    ///   publication after that, so that readers never pay for freeing (the
    ///   [reclamation rule](crate::docs::protocol)).
    ///
    /// So memory a slot points at is never released while anything can still translate through
    /// the slot, and an idle reader that never quiesces holds it until it next reads.
    ///
    /// Time: O(1).
    #[must_use]
    #[inline]
    pub fn backing(&self) -> &B {
        &self.backing
    }

    /// The slot's backing as the shared `Arc` every copy of the slot holds: clone it to keep the
    /// backing alive past the slot, or compare it with [`Arc::ptr_eq`].
    ///
    /// Time: O(1).
    #[must_use]
    pub fn backing_arc(&self) -> &Arc<B> {
        &self.backing
    }

    /// The slot's id within its address space.
    #[must_use]
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The slot's address space.
    #[must_use]
    pub fn as_id(&self) -> u16 {
        u16::from(self.as_id)
    }

    /// Address space and id together.
    #[must_use]
    pub fn slot_id(&self) -> SlotId {
        SlotId::new(self.as_id(), self.id)
    }

    /// The first guest frame.
    #[must_use]
    pub fn base_gfn(&self) -> Gfn {
        self.base_gfn
    }

    /// The number of pages (at least 1).
    #[must_use]
    pub fn npages(&self) -> u64 {
        self.npages
    }

    /// One past the last guest frame.
    #[must_use]
    pub fn end_gfn(&self) -> Gfn {
        Gfn(self.base_gfn.0 + self.npages)
    }

    /// The host virtual address of the first page.
    #[must_use]
    pub fn userspace_addr(&self) -> Hva {
        self.userspace_addr
    }

    /// The size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.npages << self.page_shift
    }

    /// One past the last host virtual address.
    #[must_use]
    pub fn end_hva(&self) -> Hva {
        Hva(self.userspace_addr.0 + self.size())
    }

    /// The slot's flags, including the internal `INVALID` bit.
    #[must_use]
    pub fn flags(&self) -> MemFlags {
        self.flags
    }

    /// Whether the slot is the temporary copy of a slot being deleted or moved.
    #[must_use]
    pub fn is_invalid(&self) -> bool {
        self.flags.contains(MemFlags::INVALID)
    }

    /// Whether the slot logs dirty pages (it then has a bitmap).
    #[must_use]
    pub fn dirty_logging(&self) -> bool {
        self.dirty.is_some()
    }

    /// The dirty bitmap, while logging is on.
    #[must_use]
    pub fn dirty_bitmap(&self) -> Option<&DirtyBitmap> {
        self.dirty.as_deref()
    }

    /// Whether `gfn` is in `[base_gfn, base_gfn + npages)`.
    #[must_use]
    #[inline]
    pub fn contains(&self, gfn: Gfn) -> bool {
        gfn.0.wrapping_sub(self.base_gfn.0) < self.npages
    }

    /// The host address of `gfn`'s first byte, or `None` if `gfn` is outside the slot or the
    /// slot is `INVALID` (KVM's `__gfn_to_hva_many` for a read).
    #[must_use]
    #[inline]
    pub fn gfn_to_hva(&self, gfn: Gfn) -> Option<Hva> {
        self.gfn_to_hva_prot(gfn, false).ok()
    }

    /// The host address of `gfn` for a read or a write, with KVM's error cases: outside the slot
    /// or `INVALID` is [`HvaError::Bad`], a write to a `READONLY` slot [`HvaError::ReadOnly`].
    ///
    /// # Errors
    /// As above.
    #[inline]
    pub fn gfn_to_hva_prot(&self, gfn: Gfn, write: bool) -> Result<Hva, HvaError> {
        if !self.contains(gfn) || self.is_invalid() {
            return Err(HvaError::Bad);
        }
        if write && self.flags.contains(MemFlags::READONLY) {
            return Err(HvaError::ReadOnly);
        }
        Ok(Hva(
            self.userspace_addr.0 + ((gfn.0 - self.base_gfn.0) << self.page_shift)
        ))
    }

    /// Where guest physical address `gpa` lies in the slot, as a byte offset from its start;
    /// `None` outside the slot.
    #[inline]
    pub(crate) fn gpa_offset(&self, gpa: u64) -> Option<u64> {
        let offset = gpa.wrapping_sub(self.base_gfn.0 << self.page_shift);
        (offset < self.size()).then_some(offset)
    }

    /// The page shift the slot was built with.
    #[inline]
    pub(crate) fn page_shift(&self) -> u32 {
        u32::from(self.page_shift)
    }

    /// The guest frame that `hva` falls in, or `None` if `hva` is outside the slot's host range.
    #[must_use]
    pub fn hva_to_gfn(&self, hva: Hva) -> Option<Gfn> {
        let offset = hva.0.checked_sub(self.userspace_addr.0)?;
        (offset < self.size()).then(|| Gfn(self.base_gfn.0 + (offset >> self.page_shift)))
    }

    /// The gfn range covering `[start, end)`, clamped to the slot, partial pages counting as whole
    /// ones (KVM's `__kvm_handle_hva_range` conversion). `start < end` and an overlap with the
    /// slot are the caller's to ensure.
    #[inline]
    pub(crate) fn clamp_hva_range(&self, start: Hva, end: Hva) -> core::ops::Range<Gfn> {
        let first = start.0.max(self.userspace_addr.0) - self.userspace_addr.0;
        let last = end.0.min(self.end_hva().0) - self.userspace_addr.0;
        let mask = (1u64 << self.page_shift) - 1;
        let first_gfn = self.base_gfn.0 + (first >> self.page_shift);
        let end_gfn = self.base_gfn.0 + (last >> self.page_shift) + u64::from(last & mask != 0);
        Gfn(first_gfn)..Gfn(end_gfn)
    }
}

/// Slots are equal when they describe the same memory the same way: every field but the backing
/// and the dirty bitmap's contents (bitmaps compare by whether logging is on), so slots with
/// different backing types compare too.
impl<B, C> PartialEq<Memslot<C>> for Memslot<B> {
    fn eq(&self, other: &Memslot<C>) -> bool {
        self.base_gfn == other.base_gfn
            && self.npages == other.npages
            && self.userspace_addr == other.userspace_addr
            && self.flags == other.flags
            && self.id == other.id
            && self.as_id == other.as_id
            && self.dirty.is_some() == other.dirty.is_some()
    }
}

impl<B> Eq for Memslot<B> {}

impl<B> fmt::Debug for Memslot<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memslot")
            .field("slot", &self.slot_id())
            .field("base_gfn", &self.base_gfn)
            .field("npages", &self.npages)
            .field("userspace_addr", &self.userspace_addr)
            .field("flags", &self.flags)
            .field("dirty_logging", &self.dirty.is_some())
            .finish()
    }
}

/// A slot's dirty bitmap: one bit per page, set by vCPUs without locks, fetched and cleared by
/// the VMM (`KVM_GET_DIRTY_LOG`, `KVM_CLEAR_DIRTY_LOG`).
///
/// Bit `i` of word `i / 64` is page `base_gfn + i`, as the kernel lays it out.
///
/// | operation | cost |
/// |---|---|
/// | [`set`](Self::set), [`is_set`](Self::is_set) | O(1), one atomic operation |
/// | [`take`](Self::take), [`copy_words`](Self::copy_words) | O(npages / 64) |
/// | [`clear`](Self::clear) | O(mask words) |
pub struct DirtyBitmap {
    words: Box<[AtomicU64]>,
    npages: u64,
}

impl DirtyBitmap {
    /// An all-clear bitmap for `npages` pages.
    #[must_use]
    pub fn new(npages: u64) -> Self {
        let words = npages.div_ceil(64) as usize;
        Self {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            npages,
        }
    }

    /// The number of pages it covers.
    #[must_use]
    pub fn npages(&self) -> u64 {
        self.npages
    }

    /// Marks page `page` (counted from the slot's base) dirty; pages past the end are ignored.
    #[inline]
    pub fn set(&self, page: u64) {
        if page < self.npages {
            self.words[(page / 64) as usize].fetch_or(1 << (page % 64), Ordering::Relaxed);
        }
    }

    /// Marks pages `first..=last` (counted from the slot's base) dirty: one atomic OR per word
    /// they span. Pages past the end are ignored.
    pub fn set_range(&self, first: u64, last: u64) {
        let last = last.min(self.npages.saturating_sub(1));
        let mut page = first;
        while page <= last && page < self.npages {
            let word_end = (page | 63).min(last);
            let bits = (u64::MAX >> (63 - (word_end - page))) << (page % 64);
            self.words[(page / 64) as usize].fetch_or(bits, Ordering::Relaxed);
            page = word_end + 1;
        }
    }

    /// Marks every page dirty (`KVM_DIRTY_LOG_INITIALLY_SET`); bits past the last page stay clear.
    pub(crate) fn set_all(&self) {
        for (i, word) in self.words.iter().enumerate() {
            let pages = self.npages - 64 * i as u64;
            word.store(
                if pages >= 64 {
                    u64::MAX
                } else {
                    (1 << pages) - 1
                },
                Ordering::Relaxed,
            );
        }
    }

    /// Whether page `page` is marked dirty.
    #[must_use]
    pub fn is_set(&self, page: u64) -> bool {
        page < self.npages
            && self.words[(page / 64) as usize].load(Ordering::Relaxed) & (1 << (page % 64)) != 0
    }

    /// The bitmap's words, leaving it as it is.
    #[must_use]
    pub fn copy_words(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect()
    }

    /// The bitmap's words, clearing each one as it is read (an atomic exchange per non-zero word).
    #[must_use]
    pub fn take(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| {
                if w.load(Ordering::Relaxed) == 0 {
                    0
                } else {
                    w.swap(0, Ordering::Relaxed)
                }
            })
            .collect()
    }

    /// Clears the bits of `mask` from word `first_word` on; returns how many were set.
    pub fn clear(&self, first_word: usize, mask: &[u64]) -> u64 {
        let mut cleared = 0;
        for (word, m) in self.words.iter().skip(first_word).zip(mask) {
            if *m != 0 {
                cleared += u64::from((word.fetch_and(!m, Ordering::Relaxed) & m).count_ones());
            }
        }
        cleared
    }
}

impl fmt::Debug for DirtyBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dirty: u64 = self
            .words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum();
        f.debug_struct("DirtyBitmap")
            .field("npages", &self.npages)
            .field("dirty", &dirty)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(base: u64, npages: u64, hva: u64, flags: MemFlags) -> Memslot {
        let unit = Arc::new(());
        Memslot::new(
            SlotId::new(0, 1),
            Gfn(base),
            npages,
            Hva(hva),
            flags,
            12,
            unit,
        )
    }

    #[test]
    fn a_slot_with_its_backing_pointer_is_48_bytes() {
        assert_eq!(core::mem::size_of::<Memslot>(), 48);
    }

    #[test]
    fn contains_is_half_open() {
        let s = slot(0x10, 4, 0x10000, MemFlags::empty());
        assert!(!s.contains(Gfn(0xf)));
        assert!(s.contains(Gfn(0x10)));
        assert!(s.contains(Gfn(0x13)));
        assert!(!s.contains(Gfn(0x14)));
    }

    #[test]
    fn translations_fail_as_the_kernel_does() {
        let ro = slot(0, 2, 0x10000, MemFlags::READONLY);
        assert_eq!(ro.gfn_to_hva_prot(Gfn(1), false), Ok(Hva(0x11000)));
        assert_eq!(ro.gfn_to_hva_prot(Gfn(1), true), Err(HvaError::ReadOnly));
        assert_eq!(ro.gfn_to_hva_prot(Gfn(2), false), Err(HvaError::Bad));
        let invalid = ro.invalidated();
        assert_eq!(invalid.gfn_to_hva(Gfn(0)), None);
        assert_eq!(invalid.hva_to_gfn(Hva(0x10000)), Some(Gfn(0)));
        assert_eq!(ro.hva_to_gfn(Hva(0xffff)), None);
        assert_eq!(ro.hva_to_gfn(Hva(0x12000)), None);
    }

    #[test]
    fn hva_clamping_counts_partial_pages() {
        let s = slot(100, 4, 0x10000, MemFlags::empty());
        assert_eq!(s.clamp_hva_range(Hva(0), Hva(u64::MAX)), Gfn(100)..Gfn(104));
        assert_eq!(
            s.clamp_hva_range(Hva(0x11001), Hva(0x11002)),
            Gfn(101)..Gfn(102)
        );
        assert_eq!(
            s.clamp_hva_range(Hva(0x11fff), Hva(0x12001)),
            Gfn(101)..Gfn(103)
        );
    }

    #[test]
    fn bitmap_follows_logging() {
        let s = slot(0, 100, 0, MemFlags::empty());
        assert!(!s.dirty_logging());
        let logged = s.changed(Gfn(0), MemFlags::LOG_DIRTY_PAGES);
        logged.dirty_bitmap().unwrap().set(99);
        let moved = logged.changed(Gfn(500), MemFlags::LOG_DIRTY_PAGES);
        assert!(
            moved.dirty_bitmap().unwrap().is_set(99),
            "kept across a move"
        );
        assert!(!moved.changed(Gfn(500), MemFlags::empty()).dirty_logging());
        assert!(
            Arc::ptr_eq(moved.backing_arc(), s.backing_arc()),
            "same backing"
        );
    }

    #[test]
    fn bitmap_take_and_clear() {
        let b = DirtyBitmap::new(130);
        for p in [0, 63, 64, 129, 130] {
            b.set(p);
        }
        assert_eq!(b.copy_words(), vec![1 | 1 << 63, 1, 1 << 1]);
        assert_eq!(b.clear(0, &[1 << 63, u64::MAX]), 2);
        assert_eq!(b.take(), vec![1, 0, 1 << 1]);
        assert_eq!(b.take(), vec![0, 0, 0]);
    }

    #[test]
    fn bitmap_ranges_set_exactly_their_pages() {
        let b = DirtyBitmap::new(200);
        b.set_range(60, 130);
        b.set_range(199, 500);
        b.set_range(5, 5);
        let words = b.take();
        assert_eq!(words[0], 1 << 5 | 0xf << 60);
        assert_eq!(words[1], u64::MAX);
        assert_eq!(words[2], 0b111);
        assert_eq!(words[3], 1 << (199 - 192));
        b.set_range(0, u64::MAX);
        assert_eq!(b.take().iter().map(|w| w.count_ones()).sum::<u32>(), 200);
    }
}
