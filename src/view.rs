//! What a version offers, in both designs: [`MemslotRead`], the read side that tests and
//! benchmarks are written once against (the trees' [`MemslotSet`](crate::MemslotSet) and the
//! baseline's `ArraySet`), and [`Version`], the sealed bound of the generic handles
//! ([`Vm`](crate::Vm), readers, transactions, snapshots).

use core::ops::Range;

use crate::slot::Memslot;
use crate::types::{Gfn, Hva};

/// One address space's memslot version, read-only.
///
/// Every query is on an immutable version: nothing a writer does later changes what it answers.
pub trait MemslotRead {
    /// What each slot carries (`()` for the layout alone).
    type Backing;

    /// The address space this version belongs to.
    fn as_id(&self) -> u16;

    /// The generation: address space `i` starts at `i`, and each published version adds the
    /// number of address spaces.
    fn generation(&self) -> u64;

    /// The number of slots.
    fn len(&self) -> usize;

    /// Whether there are no slots.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pages of all slots together.
    fn total_pages(&self) -> u64;

    /// The slot with id `id`.
    fn get(&self, id: u16) -> Option<&Memslot<Self::Backing>>;

    /// The slot whose gfn range `[base, base + npages)` holds `gfn`.
    fn find(&self, gfn: Gfn) -> Option<&Memslot<Self::Backing>>;

    /// The slot holding `gfn` or, when none does, the one with the greatest base below `gfn`, or
    /// failing that the lowest slot: the array-era `search_memslots(.., approx = true)` rule. `None`
    /// only when the version is empty.
    fn find_approx(&self, gfn: Gfn) -> Option<&Memslot<Self::Backing>>;

    /// Every slot, in ascending gfn order.
    fn iter(&self) -> impl Iterator<Item = &Memslot<Self::Backing>> + '_;

    /// The slots intersecting `[start, end)`, in ascending gfn order (none when `start >= end`).
    fn gfn_range(&self, start: Gfn, end: Gfn)
        -> impl Iterator<Item = &Memslot<Self::Backing>> + '_;

    /// Every slot whose host range intersects `[start, end)`, with the gfn range that the clamped
    /// host range covers (partial pages count as whole ones); none when `start >= end`. The trees
    /// yield them in ascending order of host address then slot id, the array in its own order
    /// (descending gfn), as the 5.14 scan did: compare them as sets.
    fn hva_range(
        &self,
        start: Hva,
        end: Hva,
    ) -> impl Iterator<Item = (&Memslot<Self::Backing>, Range<Gfn>)> + '_;
}

/// A type that one address space's versions are stored as, and so the type parameter of
/// [`Vm`](crate::Vm), [`Reader`](crate::Reader), [`ReadGuard`](crate::ReadGuard),
/// [`Transaction`](crate::Transaction) and [`Snapshot`](crate::Snapshot):
/// [`MemslotSet<B>`](crate::MemslotSet) (the trees) or the baseline's `ArraySet` (feature
/// `baseline`). Code written once for both is generic over `S: Version`, and reads a version
/// through [`MemslotRead`], a supertrait.
///
/// Sealed: only this crate implements it. What the update protocol asks of a version (build one,
/// replace a slot, set its generation) sits in a supertrait that cannot be named outside the
/// crate; a `Version` bound makes those methods callable, but they are not API (hidden from the
/// docs, free to change) and only ever act on a version the caller owns, never on a published
/// one, which is shared behind an `Arc`.
///
/// | operation | cost |
/// |---|---|
/// | none public | the trait only bounds the generic handles |
pub trait Version: sealed::VersionOps {}

impl<T: sealed::VersionOps> Version for T {}

pub(crate) mod sealed {
    use core::borrow::Borrow;

    use super::{BackingOf, MemslotRead};
    use crate::change::SlotLookup;
    use crate::slot::Memslot;
    use crate::types::{Gfn, Limits};

    /// What the protocol needs of a version type. Sealed: reachable through [`Version`], never
    /// nameable outside the crate, so nobody else can implement it.
    #[allow(unnameable_types)]
    pub trait VersionOps:
        MemslotRead<Backing: Send + Sync + 'static>
        + SlotLookup<Backing = BackingOf<Self>>
        + Clone
        + Send
        + Sync
        + 'static
    {
        /// How the version holds a slot, and so what a reader's last-used slot keeps: a cheap
        /// handle for the trees (an `Arc`), the slot itself for the array.
        type Slot: Borrow<Memslot<BackingOf<Self>>> + Clone + Send + Sync;
        /// An empty version of address space `as_id`.
        fn empty(as_id: u16, generation: u64, limits: &Limits) -> Self;
        /// Replaces slot `id` by `new` (removes it when `None`, adds `new` when there was none).
        fn replace(&mut self, id: u16, new: Option<Memslot<BackingOf<Self>>>);
        /// Sets the generation the version will be published with.
        fn set_generation(&mut self, generation: u64);
        /// The slot holding `gfn`, as the version holds it.
        fn find_slot(&self, gfn: Gfn) -> Option<&Self::Slot>;
    }
}

/// What the slots of a version type carry.
pub(crate) type BackingOf<S> = <S as MemslotRead>::Backing;
