//! [`Vm`] and its alias [`Memslots`]: a VM's memslots, published for lock-free readers, updated by one
//! writer at a time; [`Snapshot`], a version kept.

use core::fmt;
use core::ops::Deref;
use std::sync::Arc;

use crate::change::Origin;
use crate::error::Error;
use crate::hooks::ArchHooks;
use crate::log_mode::DirtyLogMode;
use crate::publish::{Core, Transaction};
use crate::reader::{GracePeriod, ReadFlavour, Reader};
use crate::set::MemslotSet;
use crate::types::{ChangeKind, Limits, UserspaceMemoryRegion};
use crate::view::{BackingOf, Version};

/// A VM's memory slots, generic over how a version is stored: per address space one published
/// version of type `S`, replaced as a whole by each update. Used through its aliases:
/// [`Memslots<B>`](Memslots) (the trees, [`MemslotSet<B>`]) and, with the `baseline` feature,
/// `baseline::ArrayMemslots` (the array design KVM replaced), which run the same update protocol
/// and differ only in how a version is stored and copied. Code written once for both (the
/// benchmarks, the differential tests) is generic over `S: Version`.
///
/// Writers are serialized by an internal lock (KVM's `slots_lock`); readers never take it. An
/// update validates the request exactly as `KVM_SET_USER_MEMORY_REGION` does, builds the new version
/// aside by copying only what it changes, and publishes it with one atomic swap. A delete or move
/// first publishes the slot marked `INVALID`, then the final version, as the kernel does, so
/// generations step the same way.
///
/// `Vm` is `Send + Sync`, and a handle: a clone is another handle on the same VM (an `Arc` clone,
/// as vm-memory's `GuestMemoryAtomic`), to hand to the VMM thread, the vCPUs and devices.
///
/// | operation | cost (trees) |
/// |---|---|
/// | [`set_user_memory_region`](Self::set_user_memory_region) | O(log n) time and new memory |
/// | [`snapshot`](Self::snapshot), [`Clone`] | O(1): an `Arc` clone, no copy |
/// | [`reader`](Self::reader) | O(readers) |
/// | constructors | O(address spaces) |
pub struct Vm<S: Version = MemslotSet> {
    core: Arc<Core<S>>,
}

/// A VM whose versions are the trees, [`MemslotSet<B>`]: the crate's VM type.
///
/// The type parameter `B` is what each slot carries: `()` (the default) for the layout alone, or
/// a backing (the slot's memory, see [`Backing`](crate::Backing) and [`GuestRam`](crate::GuestRam),
/// or any per-slot data), held by the slot and released by ownership: see [`Memslot::backing`](crate::Memslot::backing).
///
/// The constructors are below; every other method is [`Vm`]'s:
///
/// | method | what | cost |
/// |---|---|---|
/// | [`new`](Vm::new), [`with_hooks`](Vm::with_hooks), [`backed`](Vm::backed), [`from_layout`](Vm::from_layout) | an empty VM, or one holding a [`Layout`](crate::Layout) | O(address spaces), O(n log n) |
/// | [`set_user_memory_region`](Vm::set_user_memory_region), [`create_memory_region`](Vm::create_memory_region), [`set_internal_memory_region`](Vm::set_internal_memory_region) | the ioctl: create, delete, move, re-flag, waiting for readers as the kernel does | O(log n) plus grace periods |
/// | [`publish_user_memory_region`](Vm::publish_user_memory_region), [`poll_synchronize`](Vm::poll_synchronize) | the same without waiting, and its grace period polled | O(log n) |
/// | [`transaction`](Vm::transaction) | several requests published as one version, all or nothing | O(k log n) |
/// | [`reader`](Vm::reader), [`synchronize`](Vm::synchronize) | a vCPU's read-side handle; a grace period | O(readers) |
/// | [`snapshot`](Vm::snapshot), [`layout`](Vm::layout) | a version to keep; the slots as plain requests | O(1), O(n) |
/// | [`get_dirty_log`](Vm::get_dirty_log), [`clear_dirty_log`](Vm::clear_dirty_log), [`set_dirty_log_mode`](Vm::set_dirty_log_mode) | the dirty-log ioctls | O(pages / 64) |
///
/// ```
/// use memslots::{ChangeKind, Gfn, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
/// let vm = Memslots::new(Limits::default());
/// let ram = UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 1 << 20, 0x7f00_0000_0000);
/// assert_eq!(vm.set_user_memory_region(ram)?, ChangeKind::Create);
/// let before = vm.snapshot(0);
///
/// // Move the slot: the old snapshot still sees the old layout.
/// let moved = UserspaceMemoryRegion { guest_phys_addr: 1 << 32, ..ram };
/// assert_eq!(vm.set_user_memory_region(moved)?, ChangeKind::Move);
/// assert_eq!(before.find(Gfn(0)).map(|s| s.id()), Some(0));
/// assert!(vm.snapshot(0).find(Gfn(0)).is_none());
/// // Generations: address space 0 starts at 0 and steps by 2 (the number of address spaces) per
/// // published version; the move published two (INVALID, then final).
/// assert_eq!((before.generation(), vm.snapshot(0).generation()), (2, 6));
/// # Ok::<(), memslots::Error>(())
/// ```
pub type Memslots<B = ()> = Vm<MemslotSet<B>>;

impl<S: Version> Clone for Vm<S> {
    /// Another handle on the same VM (an `Arc` clone): updates through either are seen by both.
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
        }
    }
}

impl<S: Version> Vm<S> {
    /// A handle on a VM made of `core`: what every constructor ends with.
    pub(crate) fn from_core(core: Core<S>) -> Self {
        Self {
            core: Arc::new(core),
        }
    }
}

impl Memslots {
    /// An empty VM whose slots carry no backing: every address space empty, address space `i` at
    /// generation `i`, no hooks.
    ///
    /// Time: O(address spaces).
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self::from_core(Core::new(limits, Some(Arc::new(()))))
    }

    /// An empty VM whose updates call `hooks` at the kernel's `kvm_arch_*` points.
    ///
    /// Time: O(address spaces).
    #[must_use]
    pub fn with_hooks(limits: Limits, hooks: impl ArchHooks + 'static) -> Self {
        Self::from_core(Core::with_hooks(
            limits,
            Box::new(hooks),
            Some(Arc::new(())),
        ))
    }

    /// Loom only: a VM whose grace periods lack their fences, to show the model checker catches
    /// the broken protocol.
    #[cfg(loom)]
    #[doc(hidden)]
    #[must_use]
    pub fn weakened_for_loom(limits: Limits) -> Self {
        Self::from_core(Core::weakened(limits, Some(Arc::new(()))))
    }
}

impl<B: Send + Sync + 'static> Memslots<B> {
    /// An empty VM whose slots each carry a backing of type `B`: the memory behind the slot (a
    /// [`GuestRam`](crate::GuestRam), an mmap), or any per-slot data the VMM keeps with it.
    ///
    /// Slots are created with [`create_memory_region`](Self::create_memory_region), which takes
    /// the backing; moves, flag changes and deletes go through
    /// [`set_user_memory_region`](Self::set_user_memory_region) as usual. A backing is dropped
    /// once no version, snapshot or reader can reach its slot any more (see
    /// [`Memslot::backing`](crate::Memslot::backing)).
    ///
    /// Time: O(address spaces).
    ///
    /// ```
    /// use memslots::{Gpa, GuestRam, Limits, MemFlags, Memslots, UserspaceMemoryRegion};
    /// let vm: Memslots<GuestRam> = Memslots::backed(Limits::default());
    /// let ram = GuestRam::new(0x10000);
    /// vm.create_memory_region(UserspaceMemoryRegion::new(0, MemFlags::empty(), 0x10_0000, 0x10000, 0x7000_0000), ram)?;
    /// let slots = vm.snapshot(0);
    /// slots.write_guest_obj(Gpa(0x10_0ff8), 0x1122_3344_5566_7788u64)?;
    /// assert_eq!(slots.read_guest_obj::<u64>(Gpa(0x10_0ff8))?, 0x1122_3344_5566_7788);
    /// # Ok::<(), memslots::Error>(())
    /// ```
    #[must_use]
    pub fn backed(limits: Limits) -> Self {
        Self::from_core(Core::new(limits, None))
    }

    /// As [`backed`](Self::backed), with `hooks` called at the kernel's `kvm_arch_*` points.
    ///
    /// Time: O(address spaces).
    #[must_use]
    pub fn backed_with_hooks(limits: Limits, hooks: impl ArchHooks<B> + 'static) -> Self {
        Self::from_core(Core::with_hooks(limits, Box::new(hooks), None))
    }
}

impl<S: Version> Vm<S> {
    /// The limits requests are checked against.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        self.core.limits()
    }

    /// Applies one `KVM_SET_USER_MEMORY_REGION` request: creates, deletes, moves or re-flags a
    /// user slot, or does nothing when the request matches the slot as it is.
    ///
    /// Time: O(log n) in the address space's slot count.
    ///
    /// # Errors
    /// The kernel's failure for the request, checked in the kernel's order: bad flags, a slot id
    /// at or above the user-slot limit, a misaligned size, gpa or hva, an hva or gpa range that
    /// wraps, a missing address space, too many pages, deleting a missing slot, changing an
    /// existing slot's hva, size or `READONLY` flag (all `EINVAL`), or a gfn range that overlaps
    /// another slot of the address space (`EEXIST`). On a VM made by [`backed`](Self::backed), a
    /// request that would create a slot is then refused with [`Error::BackingRequired`]
    /// (`EINVAL`): create it with [`create_memory_region`](Self::create_memory_region). A failed
    /// request leaves every published version, counter and generation as it was.
    ///
    /// The update follows the kernel's protocol: a Delete or Move first publishes the slot marked
    /// `INVALID` and waits a grace period; every publication is followed by a grace period; the
    /// [`ArchHooks`] run where the kernel calls its architecture code (see
    /// [`Transaction::commit`]). In that form, when this returns, no reader is still inside a
    /// section that saw the version from before the change.
    ///
    /// **Which form.** On a VM whose slots own no memory ([`new`](Self::new): the host range is
    /// the caller's own mapping) and on every VM with hooks, this is the kernel-exact waiting form
    /// described above: a caller may unmap or reuse the old host range as soon as this returns,
    /// and hooks expect the kernel's points. On a [`backed`](Self::backed) VM without hooks it
    /// publishes without waiting (as
    /// [`publish_user_memory_region`](Self::publish_user_memory_region), dropping the grace
    /// period), because waiting would protect nothing there: a backing lives as long as any
    /// version, snapshot or reader can reach its slot, so no memory can go away under a vCPU, and
    /// a vCPU preempted inside a section would otherwise stall the update for a scheduler time
    /// slice. Such a VM that needs "no vCPU still sees the old layout" (before telling the guest
    /// an unplug is done, say) calls [`synchronize`](Self::synchronize) after, or commits a
    /// [`transaction`](Self::transaction), which always waits. Generations step the same in both
    /// forms. In the non-waiting form the versions an update replaced, and a deleted slot's
    /// backing, are freed at the writer's next [`poll_synchronize`](Self::poll_synchronize),
    /// [`synchronize`](Self::synchronize) or waiting update once no reader holds them, not
    /// inside the update.
    ///
    /// # Panics
    /// In debug builds, if called from inside a read-side section of this VM on the same thread
    /// (it would wait for itself forever).
    pub fn set_user_memory_region(
        &self,
        region: UserspaceMemoryRegion,
    ) -> Result<ChangeKind, Error> {
        self.core.update(&region, Origin::User)
    }

    /// Creates user slot `region.slot` carrying `backing`: `KVM_SET_USER_MEMORY_REGION` for a
    /// new slot, with the same checks, errors and publication as
    /// [`set_user_memory_region`](Self::set_user_memory_region).
    ///
    /// The backing should cover the slot's `memory_size` bytes: byte access past the backing's
    /// end fails with [`Error::BackingTooShort`]. Nothing here checks `userspace_addr` against the
    /// backing: it is the address the slot reports (for hva queries and for KVM), which for memory
    /// the VMM mapped is where the backing is mapped.
    ///
    /// Time: O(log n).
    ///
    /// # Errors
    /// [`Error::SlotExists`] (EEXIST) if the slot already exists (move, re-flag or delete it with
    /// `set_user_memory_region`), otherwise the kernel's failure for the request as
    /// [`set_user_memory_region`](Self::set_user_memory_region) gives it. On an error the VM is
    /// unchanged and `backing` is dropped.
    ///
    /// # Panics
    /// In debug builds, if called from inside a read-side section of this VM on the same thread.
    pub fn create_memory_region(
        &self,
        region: UserspaceMemoryRegion,
        backing: BackingOf<S>,
    ) -> Result<(), Error> {
        self.core.create(&region, backing)
    }

    /// Creates, deletes, moves or re-flags an internal slot, as the kernel's
    /// `kvm_set_internal_memslot`: the slot id must be at or above [`Limits::user_slots`] (the
    /// packed `slot` field compared as a whole, as the kernel does) and the flags must be 0;
    /// internal slots have no page limit. They live in the same address spaces as user slots.
    ///
    /// Time: O(log n).
    ///
    /// # Errors
    /// [`Error::NotInternalSlot`] for a user slot id, [`Error::InvalidFlags`] for any flag, then
    /// as [`set_user_memory_region`](Self::set_user_memory_region).
    pub fn set_internal_memory_region(
        &self,
        region: UserspaceMemoryRegion,
    ) -> Result<ChangeKind, Error> {
        self.core.update(&region, Origin::Internal)
    }

    /// As [`set_user_memory_region`](Self::set_user_memory_region), but returns as soon as the
    /// new version is published, without waiting for readers: with vCPUs preempted inside their
    /// sections, the waiting form waits for the scheduler to run them again (milliseconds), this
    /// one never. The returned [`GracePeriod`] ends once every section that could still see the
    /// old version has ended; poll it ([`poll_synchronize`](Self::poll_synchronize)) or wait for
    /// it before unmapping or reusing what the old layout pointed to. Old versions (and backings
    /// only they reach) are freed by the next [`poll_synchronize`](Self::poll_synchronize),
    /// [`synchronize`](Self::synchronize) or waiting update once the last reader has let go of
    /// them, so that the update itself never pays for unmapping memory. See [`Transaction::publish`] for the steps (no `INVALID`
    /// version without hooks; generations step as in the waiting form).
    ///
    /// Time: O(log n) plus O(readers) to start the grace period; no wait without hooks.
    ///
    /// # Errors
    /// As [`set_user_memory_region`](Self::set_user_memory_region); a refused request publishes
    /// nothing.
    ///
    /// ```
    /// use memslots::{ChangeKind, Gfn, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
    /// let vm = Memslots::new(Limits::default());
    /// let ram = UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 1 << 20, 0x7f00_0000_0000);
    /// vm.set_user_memory_region(ram)?;
    /// let reader = vm.reader();
    /// let section = reader.read(); // a vCPU inside a section, using the old layout
    /// let (kind, grace) = vm.publish_user_memory_region(UserspaceMemoryRegion::delete(0))?;
    /// assert_eq!(kind, ChangeKind::Delete);
    /// assert!(section.slots(0).find(Gfn(0)).is_some()); // still sees the slot
    /// assert!(!vm.poll_synchronize(&grace));
    /// drop(section);
    /// assert!(vm.poll_synchronize(&grace)); // now no reader can see the old version
    /// assert!(reader.read().slots(0).find(Gfn(0)).is_none());
    /// # Ok::<(), memslots::Error>(())
    /// ```
    pub fn publish_user_memory_region(
        &self,
        region: UserspaceMemoryRegion,
    ) -> Result<(ChangeKind, GracePeriod), Error> {
        self.core.publish_update(&region, Origin::User)
    }

    /// As [`publish_user_memory_region`](Self::publish_user_memory_region), for an internal slot
    /// (see [`set_internal_memory_region`](Self::set_internal_memory_region)).
    ///
    /// # Errors
    /// As [`set_internal_memory_region`](Self::set_internal_memory_region).
    pub fn publish_internal_memory_region(
        &self,
        region: UserspaceMemoryRegion,
    ) -> Result<(ChangeKind, GracePeriod), Error> {
        self.core.publish_update(&region, Origin::Internal)
    }

    /// Starts a grace period without waiting for it (the kernel's
    /// `start_poll_synchronize_srcu`): it ends once every section open now has ended.
    ///
    /// Time: O(readers), plus a `membarrier` call if a reader uses that flavour.
    pub fn start_grace_period(&self) -> GracePeriod {
        self.core.start_grace_period()
    }

    /// Whether `grace` has ended (the kernel's `poll_state_synchronize_srcu`); also frees the
    /// replaced versions that no reader holds any more, so that what they own is released
    /// without waiting for the next update.
    ///
    /// Time: O(k) for the k sections `grace` waits for, plus O(retained versions).
    pub fn poll_synchronize(&self, grace: &GracePeriod) -> bool {
        self.core.poll_synchronize(grace)
    }

    /// Starts a transaction: several requests validated in order and published as one version
    /// per address space. It holds the writer lock until committed or dropped.
    ///
    /// Time: O(1).
    ///
    /// # Panics
    /// In debug builds, committing it from inside a read-side section of this VM on the same
    /// thread panics (it would wait for itself forever), and so does starting it while this
    /// thread holds the writer lock (another transaction open, or from a hook).
    #[must_use]
    pub fn transaction(&self) -> Transaction<'_, S> {
        self.core.transaction()
    }

    /// A reader handle for one vCPU thread: lock-free, wait-free read-side sections, of the
    /// VM's [`read_flavour`](Self::read_flavour).
    ///
    /// Time: O(readers): registering takes the registry lock once.
    #[must_use]
    pub fn reader(&self) -> Reader<S> {
        self.core.reader()
    }

    /// A reader handle of `flavour`; [`ReadFlavour::Membarrier`] gives the fence flavour where
    /// the kernel does not offer `membarrier` (see [`Reader::flavour`]).
    ///
    /// Time: O(readers).
    #[must_use]
    pub fn reader_with_flavour(&self, flavour: ReadFlavour) -> Reader<S> {
        self.core.reader_with_flavour(flavour)
    }

    /// The flavour [`reader`](Self::reader) gives: [`ReadFlavour::best`], chosen when the VM
    /// was created.
    ///
    /// Time: O(1).
    #[must_use]
    pub fn read_flavour(&self) -> ReadFlavour {
        self.core.read_flavour()
    }

    /// Waits until every read-side section that was open when it was called has ended (a grace
    /// period, as `synchronize_srcu`). Snapshots do not count: they hold memory, not readers.
    ///
    /// Time: O(readers) plus the wait.
    ///
    /// # Panics
    /// In debug builds, if called from inside a read-side section of this VM on the same thread.
    pub fn synchronize(&self) {
        self.core.synchronize();
    }

    /// How the dirty-log calls treat bitmaps (KVM's `manual_dirty_log_protect`).
    ///
    /// Time: O(1); takes the writer lock.
    #[must_use]
    pub fn dirty_log_mode(&self) -> DirtyLogMode {
        self.core.dirty_log_mode()
    }

    /// Sets how the dirty-log calls treat bitmaps, as
    /// `KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)` does: in
    /// [`DirtyLogMode::ManualProtect`], [`get_dirty_log`](Self::get_dirty_log) does not clear and
    /// [`clear_dirty_log`](Self::clear_dirty_log) re-arms pages; with `initially_set`, bitmaps
    /// made from then on start all set. Like the capability, it may be changed at any time.
    ///
    /// Time: O(1); takes the writer lock.
    pub fn set_dirty_log_mode(&self, mode: DirtyLogMode) {
        self.core.set_dirty_log_mode(mode);
    }

    /// `KVM_GET_DIRTY_LOG`: the slot's dirty bitmap, one `u64` per 64 pages (bit `i` of word
    /// `w` is page `64 * w + i` of the slot), each word cleared as it is read; in
    /// [`DirtyLogMode::ManualProtect`] the bitmap is copied and left as it is.
    ///
    /// `slot` packs the address space and the id, as the ioctl's field does.
    ///
    /// Time: O(npages / 64).
    ///
    /// # Errors
    /// [`Error::InvalidAddressSpace`] or [`Error::InvalidSlotId`] (EINVAL) for an address space
    /// or id out of range, [`Error::SlotNotFound`] or [`Error::DirtyLogDisabled`] (ENOENT) for a
    /// missing slot or one that does not log.
    ///
    /// # Panics
    /// In debug builds, if this thread holds the writer lock: from an [`ArchHooks`] callback, or
    /// with a [`Transaction`] open (it takes the writer lock, and would wait for itself forever).
    pub fn get_dirty_log(&self, slot: u32) -> Result<Vec<u64>, Error> {
        self.core.get_dirty_log(slot)
    }

    /// `KVM_CLEAR_DIRTY_LOG`: clears the bits of `mask` in the slot's pages
    /// `first_page..first_page + num_pages`; `mask[0]` covers the 64 pages from `first_page`.
    ///
    /// Time: O(num_pages / 64).
    ///
    /// # Errors
    /// In the kernel's order: an address space or id out of range (EINVAL), `first_page` not a
    /// multiple of 64 (EINVAL), a missing slot or one that does not log (ENOENT), a range outside
    /// the slot or ending mid-word before the slot's end (EINVAL), a `mask` shorter than the
    /// range (EFAULT).
    ///
    /// # Panics
    /// As [`get_dirty_log`](Self::get_dirty_log).
    pub fn clear_dirty_log(
        &self,
        slot: u32,
        first_page: u64,
        num_pages: u64,
        mask: &[u64],
    ) -> Result<(), Error> {
        self.core.clear_dirty_log(slot, first_page, num_pages, mask)
    }

    /// The current version of address space `as_id`, as a handle that can be kept as long as
    /// needed: later updates never change it.
    ///
    /// Time: O(1).
    ///
    /// # Panics
    /// If `as_id` is not below [`Limits::address_spaces`].
    #[must_use]
    pub fn snapshot(&self, as_id: u16) -> Snapshot<S> {
        Snapshot(self.core.snapshot(as_id))
    }

    /// Every address space's current version, as a guard on the published root.
    #[cfg(feature = "vm-memory")]
    pub(crate) fn root_guard(&self) -> crate::sync::RootGuard<crate::reader::Root<S>> {
        self.core.root_guard()
    }

    /// Every address space's current version, read from one published root.
    pub(crate) fn versions(&self) -> crate::reader::Spaces<Arc<S>> {
        self.core.versions()
    }

    /// The pages of every slot in every address space (KVM's `nr_memslot_pages`), as of the last
    /// update that finished.
    ///
    /// Time: O(1); no lock.
    #[must_use]
    pub fn total_pages(&self) -> u64 {
        self.core.total_pages()
    }
}

impl<S: Version + fmt::Debug> fmt::Debug for Vm<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spaces: Vec<_> = (0..self.limits().address_spaces())
            .map(|as_id| self.snapshot(as_id))
            .collect();
        f.debug_struct("Vm")
            .field("limits", self.limits())
            .field("spaces", &spaces)
            .finish()
    }
}

/// A long-lived handle on one published version; derefs to it ([`MemslotSet`] by default).
///
/// Holding a snapshot keeps its version's memory alive but holds up nothing else: writers go on
/// publishing. Cloning it is an `Arc` clone.
///
/// | operation | cost |
/// |---|---|
/// | [`Clone`], [`Deref`], [`ptr_eq`](Self::ptr_eq) | O(1) |
#[derive(Clone)]
pub struct Snapshot<S = MemslotSet>(Arc<S>);

impl<S> Snapshot<S> {
    #[cfg(any(feature = "baseline", feature = "vm-memory"))]
    pub(crate) fn from_arc(version: Arc<S>) -> Self {
        Self(version)
    }

    /// Whether two snapshots are of the very same version.
    #[must_use]
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The version as a plain `Arc`.
    #[must_use]
    pub fn into_arc(self) -> Arc<S> {
        self.0
    }
}

impl<S> Deref for Snapshot<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.0
    }
}

impl<S> AsRef<S> for Snapshot<S> {
    fn as_ref(&self) -> &S {
        &self.0
    }
}

impl<S: fmt::Debug> fmt::Debug for Snapshot<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_cross_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Reader>();
        assert_send_sync::<Memslots>();
        assert_send_sync::<Snapshot>();
        assert_send_sync::<MemslotSet>();
    }
}
