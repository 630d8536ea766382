//! What changed between two versions of an address space: [`MemslotSet::diff`].
//!
//! The walk runs over the two versions' id trees side by side and steps over every subtree the
//! two share (the same `Arc`), so versions that differ in k slots cost O(k log n) however many
//! slots they hold, and a version compared with itself costs O(1).
//!
//! `MemslotSet::diff` lives here rather than in `set.rs`, beside the `Diff` and `Changes` types it
//! returns: one module for comparing versions.

use core::fmt;
use core::iter::FusedIterator;
use std::sync::Arc;

use crate::set::MemslotSet;
use crate::slot::Memslot;
use crate::tree;

/// One difference between two versions, keyed by slot id.
///
/// "Old" is the version [`MemslotSet::diff`] was called on, "new" its argument. `T` is what is
/// compared: [`Memslot`]s for [`MemslotSet::diff`], [`UserspaceMemoryRegion`]s for
/// [`Layout::diff`](crate::Layout::diff).
///
/// | operation | cost |
/// |---|---|
/// | [`before`](Self::before), [`after`](Self::after), [`Clone`] | O(1) |
/// | [`PartialEq`] | O(1): compares the slots' fields |
///
/// ```
/// use memslots::{Diff, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
/// let vm = Memslots::new(Limits::default());
/// let old = vm.snapshot(0);
/// vm.set_user_memory_region(UserspaceMemoryRegion::new(4, MemFlags::empty(), 0, 4096, 0x1000))?;
/// let new = vm.snapshot(0);
/// let change = old.diff(&new).next().expect("one slot added");
/// assert!(matches!(change, Diff::Added(_)));
/// assert_eq!(change.before(), None);
/// assert_eq!(change.after().map(|s| s.id()), Some(4));
/// # Ok::<(), memslots::Error>(())
/// ```
///
/// [`UserspaceMemoryRegion`]: crate::UserspaceMemoryRegion
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diff<'a, T = Memslot> {
    /// The slot is only in the new version.
    Added(&'a T),
    /// The slot is only in the old version.
    Removed(&'a T),
    /// The slot is in both versions and differs: it moved, or its flags changed (in a diff
    /// between arbitrary versions, any field may differ).
    Changed {
        /// The slot in the old version.
        old: &'a T,
        /// The slot in the new version.
        new: &'a T,
    },
}

impl<'a, T> Diff<'a, T> {
    /// The slot as it was in the old version, if it was there.
    ///
    /// Time: O(1).
    #[must_use]
    pub fn before(&self) -> Option<&'a T> {
        match *self {
            Self::Removed(old) | Self::Changed { old, .. } => Some(old),
            Self::Added(_) => None,
        }
    }

    /// The slot as it is in the new version, if it is there.
    ///
    /// Time: O(1).
    #[must_use]
    pub fn after(&self) -> Option<&'a T> {
        match *self {
            Self::Added(new) | Self::Changed { new, .. } => Some(new),
            Self::Removed(_) => None,
        }
    }
}

impl<B: 'static> MemslotSet<B> {
    /// The slots that differ between this version (old) and `other` (new), in ascending slot id
    /// order: [`Added`](Diff::Added), [`Removed`](Diff::Removed) and [`Changed`](Diff::Changed).
    ///
    /// Slots are compared by layout (the [`PartialEq`] of [`Memslot`]): a slot rebuilt with the same
    /// fields (flags turned off and on again, a move and a move back) is not a change. Dirty
    /// bitmap contents are not compared. The intermediate `INVALID` copy that a delete or move
    /// publishes differs from the slot in its flags, so a snapshot caught in that step shows the
    /// slot as changed.
    ///
    /// The two versions need not be related, nor of the same address space; but only versions
    /// that share structure, as each version [`Memslots`](crate::Memslots) publishes does with the
    /// one before, are compared without walking every slot.
    ///
    /// Time: O((k + 1) log n) for versions of one [`Memslots`](crate::Memslots) that differ in k
    /// slots (subtrees both share are skipped), O(1) for a version and itself, O(n) at worst.
    /// No allocation.
    ///
    /// ```
    /// use memslots::{Diff, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
    /// let vm = Memslots::new(Limits::default());
    /// let ram = UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 1 << 20, 0x7f00_0000_0000);
    /// vm.set_user_memory_region(ram)?;
    /// let before = vm.snapshot(0);
    ///
    /// // Hot-plug a slot and move the first one.
    /// let plug = UserspaceMemoryRegion::new(1, MemFlags::empty(), 1 << 32, 1 << 20, 0x7e00_0000_0000);
    /// vm.set_user_memory_region(plug)?;
    /// vm.set_user_memory_region(UserspaceMemoryRegion { guest_phys_addr: 1 << 30, ..ram })?;
    /// let after = vm.snapshot(0);
    ///
    /// let changes: Vec<_> = before.diff(&after).collect();
    /// assert_eq!(changes.len(), 2);
    /// assert!(matches!(changes[0], Diff::Changed { old, new } if old.id() == 0 && new.base_gfn().0 == 1 << 18));
    /// assert!(matches!(changes[1], Diff::Added(slot) if slot.id() == 1));
    /// assert_eq!(after.diff(&after).count(), 0);
    /// # Ok::<(), memslots::Error>(())
    /// ```
    #[must_use]
    pub fn diff<'a>(&'a self, other: &'a MemslotSet<B>) -> Changes<'a, B> {
        // Slots are shared between versions by `Arc`: the same pointer is the same slot.
        let same_arc: SameSlot<B> = Arc::ptr_eq;
        Changes {
            inner: self.by_id().diff_by(other.by_id(), same_arc),
        }
    }
}

/// Whether two tree entries are the very same slot.
type SameSlot<B> = fn(&Arc<Memslot<B>>, &Arc<Memslot<B>>) -> bool;

/// The differences between two [`MemslotSet`]s, in ascending slot id order.
///
/// This `struct` is created by [`MemslotSet::diff`].
///
/// | operation | cost |
/// |---|---|
/// | the whole walk | O((k + 1) log n) for k differences between related versions, O(n) at worst |
/// | [`next`](Iterator::next) | O(log n) amortized over related versions; no allocation |
/// | [`nodes_visited`](Self::nodes_visited) | O(1) |
pub struct Changes<'a, B = ()> {
    inner: tree::Changes<'a, u16, Arc<Memslot<B>>, (), { tree::DEFAULT_B }>,
}

impl<B> Changes<'_, B> {
    /// Tree nodes opened so far in both versions together: the work the walk has done. Two
    /// versions that differ in one slot open a few nodes per tree level; two unrelated versions
    /// with the same slots open every node of both.
    ///
    /// Time: O(1).
    ///
    /// ```
    /// use memslots::{Limits, Memslots, MemFlags, UserspaceMemoryRegion};
    /// let vm = Memslots::new(Limits::default());
    /// vm.set_user_memory_region(UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 4096, 0))?;
    /// let now = vm.snapshot(0);
    /// let mut same = now.diff(&now);
    /// assert_eq!(same.next(), None);
    /// assert_eq!(same.nodes_visited(), 0);
    /// # Ok::<(), memslots::Error>(())
    /// ```
    #[must_use]
    pub fn nodes_visited(&self) -> usize {
        self.inner.nodes_visited()
    }
}

impl<'a, B: 'static> Iterator for Changes<'a, B> {
    type Item = Diff<'a, Memslot<B>>;

    fn next(&mut self) -> Option<Diff<'a, Memslot<B>>> {
        loop {
            return Some(match self.inner.next()? {
                tree::Diff::Add(_, new) => Diff::Added(new),
                tree::Diff::Remove(_, old) => Diff::Removed(old),
                // Different `Arc`s may hold equal slots: a flag turned off and on again.
                tree::Diff::Update { old, new, .. } if old == new => continue,
                tree::Diff::Update { old, new, .. } => Diff::Changed { old, new },
            });
        }
    }
}

impl<B: 'static> FusedIterator for Changes<'_, B> {}

impl<B> fmt::Debug for Changes<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Changes")
            .field("nodes_visited", &self.nodes_visited())
            .finish_non_exhaustive()
    }
}
