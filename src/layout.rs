//! [`Layout`]: a whole VM's slots as plain data, to save, restore and compare.
//!
//! `Memslots::layout` and `Memslots::from_layout` live here, beside `Layout`: they are the
//! conversions between a VM and its plain-data description, and `vm.rs` stays the update
//! protocol's façade.

use std::collections::HashSet;

use crate::diff::Diff;
use crate::error::Error;
use crate::slot::Memslot;
use crate::types::{Limits, MemFlags, UserspaceMemoryRegion};
use crate::vm::Memslots;

/// A plain description of a VM's slots in every address space: one
/// [`UserspaceMemoryRegion`] per slot, the request that would create it.
///
/// [`Memslots::layout`] lists the slots in a deterministic order, by address space then guest
/// physical address; [`Memslots::from_layout`] rebuilds a VM from a layout in any order, checking
/// every region as [`set_user_memory_region`](Memslots::set_user_memory_region) does. A layout
/// describes where memory is, not what is in it: dirty bitmaps and generations are not part of
/// it.
///
/// With the `serde` feature, `Layout` and [`UserspaceMemoryRegion`] implement `Serialize` and
/// `Deserialize`, with the field names of KVM's `struct kvm_userspace_memory_region`; unknown
/// fields are refused. In JSON:
///
/// ```json
/// {"regions": [{"slot": 0, "flags": 1, "guest_phys_addr": 0, "memory_size": 1073741824,
///               "userspace_addr": 139637976727552}]}
/// ```
///
/// | operation | cost |
/// |---|---|
/// | [`Memslots::layout`] | O(n) for n slots in all address spaces |
/// | [`Memslots::from_layout`] | O(n log n) |
/// | [`diff`](Self::diff) | O((n + m) log(n + m)) |
/// | [`Clone`], [`PartialEq`] | O(n) |
///
/// ```
/// use memslots::{Layout, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
/// let vm = Memslots::new(Limits::default());
/// vm.set_user_memory_region(UserspaceMemoryRegion::new(1, MemFlags::empty(), 1 << 32, 1 << 20, 0x7e00_0000_0000))?;
/// vm.set_user_memory_region(UserspaceMemoryRegion::new(0, MemFlags::LOG_DIRTY_PAGES, 0, 1 << 20, 0x7f00_0000_0000))?;
///
/// let layout = vm.layout();
/// assert_eq!(layout.regions.iter().map(|r| r.slot).collect::<Vec<_>>(), [0, 1], "gfn order");
///
/// let copy = Memslots::from_layout(Limits::default(), &layout)?;
/// assert_eq!(copy.layout(), layout);
///
/// // A layout that lists a slot twice is refused.
/// let twice = Layout { regions: vec![layout.regions[0]; 2] };
/// assert_eq!(Memslots::from_layout(Limits::default(), &twice).unwrap_err().errno(), memslots::errno::EINVAL);
/// # Ok::<(), memslots::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct Layout {
    /// One region per slot.
    pub regions: Vec<UserspaceMemoryRegion>,
}

impl Layout {
    /// The regions that differ between this layout (old) and `new`, keyed by the `slot` field
    /// (address space and id), in ascending order of it. A region whose fields all match is not
    /// a difference. Regions listed twice under one `slot` (which no layout of
    /// [`Memslots::layout`] has) are paired up in the order they are listed.
    ///
    /// This compares whole VMs, saved or live; to compare two versions of one address space
    /// without walking every slot, use [`MemslotSet::diff`](crate::MemslotSet::diff).
    ///
    /// Time: O((n + m) log(n + m)) for layouts of n and m regions.
    ///
    /// ```
    /// use memslots::{Diff, Layout, MemFlags, UserspaceMemoryRegion};
    /// let ram = UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 1 << 20, 0x7f00_0000_0000);
    /// let smm = UserspaceMemoryRegion::new(1 << 16, MemFlags::empty(), 0, 1 << 20, 0x7f00_0000_0000);
    /// let old = Layout { regions: vec![ram, smm] };
    /// let logged = UserspaceMemoryRegion { flags: 1, ..ram };
    /// let new = Layout { regions: vec![logged] };
    /// assert_eq!(old.diff(&new), [Diff::Changed { old: &ram, new: &logged }, Diff::Removed(&smm)]);
    /// ```
    #[must_use]
    pub fn diff<'a>(&'a self, new: &'a Layout) -> Vec<Diff<'a, UserspaceMemoryRegion>> {
        fn by_slot(layout: &Layout) -> Vec<&UserspaceMemoryRegion> {
            let mut sorted: Vec<_> = layout.regions.iter().collect();
            // Stable: regions under one slot keep their listed order.
            sorted.sort_by_key(|r| r.slot);
            sorted
        }
        let (old, new) = (by_slot(self), by_slot(new));
        let (mut i, mut j) = (0, 0);
        let mut changes = Vec::new();
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) if o.slot == n.slot => {
                    if o != n {
                        changes.push(Diff::Changed { old: *o, new: *n });
                    }
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) if o.slot < n.slot => {
                    changes.push(Diff::Removed(*o));
                    i += 1;
                }
                (Some(o), None) => {
                    changes.push(Diff::Removed(*o));
                    i += 1;
                }
                (_, Some(n)) => {
                    changes.push(Diff::Added(*n));
                    j += 1;
                }
                (None, None) => break,
            }
        }
        changes
    }
}

impl<B> From<&Memslot<B>> for UserspaceMemoryRegion {
    /// The request that creates `slot` as it is. A slot caught in the middle of a delete or move
    /// (`INVALID`) is described as it was before: the internal flag is left out.
    ///
    /// Time: O(1).
    ///
    /// ```
    /// use memslots::{ChangeKind, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
    /// let vm = Memslots::new(Limits::default());
    /// let ram = UserspaceMemoryRegion::new(2, MemFlags::READONLY, 0x10_0000, 0x4000, 0x7000_0000);
    /// vm.set_user_memory_region(ram)?;
    /// let slots = vm.snapshot(0);
    /// let described = UserspaceMemoryRegion::from(slots.get(2).expect("created"));
    /// assert_eq!(described, ram);
    /// assert_eq!(vm.set_user_memory_region(described)?, ChangeKind::Unchanged);
    /// # Ok::<(), memslots::Error>(())
    /// ```
    fn from(slot: &Memslot<B>) -> Self {
        // npages >= 1, so this is the page size; the product fits, as validation ensured.
        let page_size = slot.size() / slot.npages();
        UserspaceMemoryRegion {
            slot: u32::from(slot.slot_id()),
            flags: slot.flags().difference(MemFlags::INVALID).bits(),
            guest_phys_addr: slot.base_gfn().0 * page_size,
            memory_size: slot.size(),
            userspace_addr: slot.userspace_addr().0,
        }
    }
}

impl<B: Send + Sync + 'static> Memslots<B> {
    /// Every slot of every address space as a [`Layout`], ordered by address space, then guest
    /// physical address.
    ///
    /// All address spaces are read from one published root, so the layout is one consistent
    /// moment even while a writer runs (a transaction is either wholly in it or not at all); a
    /// slot caught in the middle of a delete or move is described as it was before. Internal
    /// slots are listed too, and [`from_layout`](Self::from_layout) restores them.
    ///
    /// Time: O(n) for n slots in all address spaces.
    ///
    /// ```
    /// use memslots::{Limits, Memslots, MemFlags, UserspaceMemoryRegion};
    /// let vm = Memslots::new(Limits::default());
    /// let smm = UserspaceMemoryRegion::new(1 << 16, MemFlags::empty(), 0, 4096, 0x1000);
    /// vm.set_user_memory_region(smm)?;
    /// assert_eq!(vm.layout().regions, [smm]);
    /// # Ok::<(), memslots::Error>(())
    /// ```
    #[must_use]
    pub fn layout(&self) -> Layout {
        let regions = self
            .versions()
            .iter()
            .flat_map(|version| version.iter().map(UserspaceMemoryRegion::from))
            .collect();
        Layout { regions }
    }
}

impl Memslots {
    /// A VM holding exactly the slots `layout` lists, in any order.
    ///
    /// Each region goes through the same checks, with the same errors, as
    /// [`set_user_memory_region`](Self::set_user_memory_region) creating the slot; and since a
    /// layout lists slots rather than requests, a region with `memory_size` 0 (a delete) and a
    /// second region for the same address space and id are refused too. Regions with ids at or
    /// above [`Limits::user_slots`] are internal slots and go through
    /// [`set_internal_memory_region`](Self::set_internal_memory_region)'s checks. The whole
    /// layout is one transaction: on any error nothing is returned but the error, and on success
    /// each address space holding slots has been published once. Dirty bitmaps start clear.
    ///
    /// Time: O(n log n) for n regions.
    ///
    /// # Errors
    /// For the first region, in the layout's order, that is refused:
    /// - [`Error::EmptySlot`] (`EINVAL`) for `memory_size` 0;
    /// - [`Error::DuplicateSlot`] (`EINVAL`) for an address space and id listed before;
    /// - otherwise what [`set_user_memory_region`](Self::set_user_memory_region) returns for it,
    ///   such as [`Error::Overlap`] (`EEXIST`) for a gfn range that overlaps a region listed
    ///   before in the same address space, or `EINVAL` for bad flags (`INVALID` among them), a
    ///   misaligned field, an id or address space out of range or too many pages.
    ///
    /// ```
    /// use memslots::{errno, Error, Layout, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
    /// let a = UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 0x4000, 0x10000);
    /// let b = UserspaceMemoryRegion::new(1, MemFlags::empty(), 0x2000, 0x4000, 0x20000);
    /// let clash = Layout { regions: vec![a, b] };
    /// let err = Memslots::from_layout(Limits::default(), &clash).unwrap_err();
    /// assert_eq!(err.errno(), errno::EEXIST);
    ///
    /// let empty = Layout { regions: vec![UserspaceMemoryRegion::delete(3)] };
    /// let err = Memslots::from_layout(Limits::default(), &empty).unwrap_err();
    /// assert!(matches!(err, Error::EmptySlot { .. }));
    /// ```
    pub fn from_layout(limits: Limits, layout: &Layout) -> Result<Memslots, Error> {
        let vm = Memslots::new(limits);
        let mut tx = vm.transaction();
        let mut listed = HashSet::with_capacity(layout.regions.len());
        for region in &layout.regions {
            let slot = region.slot_id();
            if region.memory_size == 0 {
                return Err(Error::EmptySlot { slot });
            }
            if !listed.insert(slot) {
                return Err(Error::DuplicateSlot { slot });
            }
            if slot.id >= limits.user_slots() {
                tx.set_internal_memory_region(*region)?;
            } else {
                tx.set_user_memory_region(*region)?;
            }
        }
        tx.commit()?;
        Ok(vm)
    }
}
