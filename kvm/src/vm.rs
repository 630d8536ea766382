//! [`KvmVm`]: a KVM VM fd whose memory slots are kept by, and changed only through,
//! [`memslots::Memslots`].

use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kvm_ioctls::{Kvm, VmFd};
use memslots::{
    ArchHooks, Backing, ChangeKind, DirtyLogMode, HookError, Layout, Limits, MemFlags, Memslot,
    MemslotSet, Memslots, Reader, Snapshot, Transaction, UserspaceMemoryRegion,
};

use crate::ioctl;

/// Memory KVM may map for a guest: a [`Backing`] that is also a fixed range of this process's
/// address space.
///
/// # Safety
/// For as long as the value lives, `host_addr()..host_addr() + len()` must be mapped memory of
/// this process at that unchanging address, not unmapped or replaced by another mapping, and
/// [`Backing::read_at`] / [`Backing::write_at`] at offset `o` must access the byte at
/// `host_addr() + o`. ([`KvmVm`] hands exactly that range to KVM and takes it back before the
/// value can be dropped.)
pub unsafe trait KvmMemory: Backing {
    /// Where the memory starts in this process.
    fn host_addr(&self) -> u64;
}

// SAFETY: an `MmapRegion` owns its mapping (or, built with the unsafe `build_raw`, was promised
// one that outlives it) at `as_ptr()` for `size()` bytes until it is dropped, and its `Backing`
// implementation reads and writes that mapping at the given offset.
unsafe impl<BM> KvmMemory for vm_memory::MmapRegion<BM>
where
    BM: vm_memory::bitmap::Bitmap + Send + Sync + 'static,
{
    fn host_addr(&self) -> u64 {
        self.as_ptr() as u64
    }
}

/// Why a [`KvmVm`] call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// memslots refused the request, or KVM refused a change memslots had accepted
    /// ([`memslots::Error::Hook`], with KVM's errno); both sides are as they were.
    #[error(transparent)]
    Memslots(#[from] memslots::Error),
    /// A dirty-log ioctl failed after memslots' checks had passed.
    #[error("{ioctl} failed with errno {errno}")]
    Kvm {
        /// The ioctl.
        ioctl: &'static str,
        /// Its errno.
        errno: i32,
    },
    /// An earlier rollback could not be completed in KVM, so KVM's slots may differ from
    /// memslots'; the VM refuses every further change and dirty-log call (EIO).
    #[error("KVM's slots may differ from memslots' after a failed rollback")]
    OutOfStep,
}

impl Error {
    /// The positive errno KVM would return.
    #[must_use]
    pub fn errno(&self) -> i32 {
        match self {
            Self::Memslots(e) => e.errno(),
            Self::Kvm { errno, .. } => *errno,
            Self::OutOfStep => libc::EIO,
        }
    }
}

/// The request that makes KVM do `change`, from the slots memslots validated. A delete names
/// only the slot (every other field 0 passes KVM's checks).
fn request<B>(
    old: Option<&Memslot<B>>,
    new: Option<&Memslot<B>>,
    change: ChangeKind,
) -> UserspaceMemoryRegion {
    match (change, new, old) {
        (ChangeKind::Delete, _, Some(old)) => UserspaceMemoryRegion::delete(old.slot_id().into()),
        (_, Some(new), _) => UserspaceMemoryRegion::from(new),
        _ => unreachable!("every change but a delete has a new slot"),
    }
}

/// The hooks that forward every change memslots accepts to the VM fd.
struct Forward {
    vm: Arc<VmFd>,
    out_of_step: Arc<AtomicBool>,
}

impl Forward {
    fn set(&self, region: UserspaceMemoryRegion) -> Result<(), i32> {
        // SAFETY: every slot KVM is given is a slot memslots holds, with the same userspace_addr
        // and size. A created slot's range is its backing's own (checked in `prepare` before the
        // call), and the backing is an `Arc` that memslots keeps for as long as any version,
        // snapshot, reader or this transaction reaches the slot; KVM drops the range in the
        // delete that precedes memslots letting go of the slot (`prepare` of a Delete, `abort`
        // of a Create, or `KvmVm`'s drop). Moves and flag changes keep the range and the Arc.
        unsafe { ioctl::set_user_memory_region(&self.vm, region.into()) }
    }
}

impl Forward {
    /// Copies KVM's bitmap of `slot` into memslots' before KVM drops it (a delete, or logging
    /// turned off): if the transaction is rolled back, memslots' bitmap, which survives the
    /// rollback, still has the guest's pages, while KVM's recreated one starts empty.
    fn keep_guest_dirty_pages<B>(&self, slot: &Memslot<B>) {
        let Some(ours) = slot.dirty_bitmap() else {
            return;
        };
        let words = slot.npages().div_ceil(64) as usize;
        // SAFETY: KVM holds `slot` as memslots does, with its page count (see `set`).
        let Ok(guest) = (unsafe { ioctl::get_dirty_log(&self.vm, slot.slot_id().into(), words) })
        else {
            return;
        };
        for (w, bits) in guest.iter().enumerate() {
            let mut bits = *bits;
            while bits != 0 {
                ours.set(64 * w as u64 + u64::from(bits.trailing_zeros()));
                bits &= bits - 1;
            }
        }
    }
}

impl<B: KvmMemory> ArchHooks<B> for Forward {
    fn prepare(
        &self,
        old: Option<&Memslot<B>>,
        new: Option<&Memslot<B>>,
        change: ChangeKind,
    ) -> Result<(), HookError> {
        if self.out_of_step.load(Ordering::Acquire) {
            return Err(HookError::new(
                libc::EIO,
                "KVM is out of step with memslots",
            ));
        }
        if let (ChangeKind::Create, Some(slot)) = (change, new) {
            let memory = slot.backing();
            if slot.userspace_addr().0 != memory.host_addr() || slot.size() > memory.len() as u64 {
                return Err(HookError::new(
                    libc::EINVAL,
                    format!(
                        "slot {} at hva {} + {:#x} is not its backing's {:#x} + {:#x}",
                        slot.slot_id(),
                        slot.userspace_addr(),
                        slot.size(),
                        memory.host_addr(),
                        memory.len()
                    ),
                ));
            }
        }
        let drops_bitmap = match (old, new) {
            (Some(old), new) => old.dirty_logging() && !new.is_some_and(Memslot::dirty_logging),
            (None, _) => false,
        };
        if let (true, Some(old)) = (drops_bitmap, old) {
            self.keep_guest_dirty_pages(old);
        }
        self.set(request(old, new, change))
            .map_err(|errno| HookError::new(errno, format!("KVM refused a {change:?}")))
    }

    fn abort(&self, old: Option<&Memslot<B>>, new: Option<&Memslot<B>>, change: ChangeKind) {
        let undo = match (change, new, old) {
            (ChangeKind::Create, Some(new), _) => {
                UserspaceMemoryRegion::delete(new.slot_id().into())
            }
            (_, _, Some(old)) => UserspaceMemoryRegion::from(old),
            _ => unreachable!("every change but a create has an old slot"),
        };
        if self.set(undo).is_err() {
            self.out_of_step.store(true, Ordering::Release);
            if let (ChangeKind::Create, Some(new)) = (change, new) {
                // KVM keeps the slot memslots is about to forget: its memory must never go.
                mem::forget(Arc::clone(new.backing_arc()));
            }
        }
    }
}

/// A KVM VM whose memory slots are changed only through [`memslots`]: every accepted change
/// reaches the VM fd, a refusal by KVM rolls both sides back, device threads read and write guest
/// memory through memslots' byte API, and dirty logs merge KVM's bitmap (guest writes) with
/// memslots' (device writes).
///
/// **Order.** A transaction's changes reach KVM from [`ArchHooks::prepare`], in the order they
/// were validated. memslots checked each one against the state the earlier ones left, so each
/// state KVM passes through is a layout memslots accepted: KVM never holds two overlapping slots
/// (a delete or a move away comes before whatever takes its place). If KVM refuses one, the ones
/// already applied are undone newest first ([`ArchHooks::abort`]), each undo restoring an
/// earlier valid state, and memslots publishes nothing. memslots marks deleted and moved slots
/// `INVALID` (device threads stop translating through them) before KVM sees the change.
///
/// **Soundness.** KVM is only ever given a slot's own backing ([`KvmMemory`]), and memslots keeps
/// that backing alive for as long as the slot is in any version, snapshot or reader's section,
/// which covers the time from KVM's create to KVM's delete. Dropping the `KvmVm` deletes every
/// slot in KVM first, so vCPU fds that outlive it see holes, not freed memory.
///
/// | operation | cost |
/// |---|---|
/// | [`set_user_memory_region`](Self::set_user_memory_region), [`create_memory_region`](Self::create_memory_region) | memslots' O(log n) plus one ioctl |
/// | [`get_dirty_log`](Self::get_dirty_log), [`clear_dirty_log`](Self::clear_dirty_log) | O(npages / 64) plus one ioctl |
/// | [`restore`](Self::restore) | O(n log n) plus n ioctls |
///
/// ```
/// use memslots::{Backing, ChangeKind, Gpa, MemFlags, UserspaceMemoryRegion};
/// use memslots_kvm::{KvmMemory, KvmVm};
/// use vm_memory::MmapRegion;
///
/// // Where /dev/kvm cannot make a VM, there is nothing to show.
/// let Ok(kvm) = kvm_ioctls::Kvm::new() else { return Ok(()) };
/// let Ok(fd) = kvm.create_vm() else { return Ok(()) };
/// let vm: KvmVm<MmapRegion> = KvmVm::new(&kvm, fd)?;
/// let ram = MmapRegion::new(0x10000)?;
/// let region = UserspaceMemoryRegion::new(0, MemFlags::LOG_DIRTY_PAGES, 0x10_0000, 0x10000, ram.host_addr());
/// vm.create_memory_region(region, ram)?; // in memslots and in KVM
///
/// // A device writes through memslots; the merged dirty log has the page.
/// vm.snapshot(0).write_guest(Gpa(0x10_3000), b"virtio")?;
/// assert_eq!(vm.get_dirty_log(0)?, [1 << 3]);
///
/// // Moves reach KVM too; an overlap is refused by memslots before KVM is asked.
/// let moved = UserspaceMemoryRegion { guest_phys_addr: 0x20_0000, ..region };
/// assert_eq!(vm.set_user_memory_region(moved)?, ChangeKind::Move);
/// let other = MmapRegion::new(0x1000)?;
/// let clash = UserspaceMemoryRegion::new(1, MemFlags::empty(), 0x20_0000, 0x1000, other.host_addr());
/// assert_eq!(vm.create_memory_region(clash, other).unwrap_err().errno(), memslots::errno::EEXIST);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct KvmVm<B: KvmMemory> {
    slots: Memslots<B>,
    vm: Arc<VmFd>,
    out_of_step: Arc<AtomicBool>,
    /// Serializes changes with the dirty-log calls, so KVM's slot sizes are memslots' while a
    /// bitmap is fetched.
    lock: Mutex<()>,
}

impl<B: KvmMemory> KvmVm<B> {
    /// Takes over `vm`, which must have no memory slots yet, with its limits probed from `kvm`
    /// ([`probe_limits`](crate::probe_limits)).
    ///
    /// # Errors
    /// Creating the scratch VM for the probes failed.
    pub fn new(kvm: &Kvm, vm: VmFd) -> Result<Self, kvm_ioctls::Error> {
        let limits = crate::probe_limits(kvm, &vm)?;
        Ok(Self::with_limits(vm, limits))
    }

    /// Takes over `vm`, which must have no memory slots yet, checking requests against `limits`.
    #[must_use]
    pub fn with_limits(vm: VmFd, limits: Limits) -> Self {
        let vm = Arc::new(vm);
        let out_of_step = Arc::new(AtomicBool::new(false));
        let hooks = Forward {
            vm: Arc::clone(&vm),
            out_of_step: Arc::clone(&out_of_step),
        };
        Self {
            slots: Memslots::backed_with_hooks(limits, hooks),
            vm,
            out_of_step,
            lock: Mutex::new(()),
        }
    }

    /// The VM fd, for creating vCPUs and everything but memory slots.
    #[must_use]
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// The limits requests are checked against.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        self.slots.limits()
    }

    fn lock(&self) -> Result<MutexGuard<'_, ()>, Error> {
        if self.out_of_step.load(Ordering::Acquire) {
            return Err(Error::OutOfStep);
        }
        Ok(self.lock.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Creates slot `region.slot` over `memory`, in memslots and in KVM: `userspace_addr` must be
    /// `memory`'s address and `memory_size` at most its length.
    ///
    /// # Errors
    /// memslots' errno for a request it refuses; EINVAL when the region is not `memory`'s;
    /// KVM's errno if it refuses. On any error both sides are unchanged and `memory` is dropped.
    pub fn create_memory_region(
        &self,
        region: UserspaceMemoryRegion,
        memory: B,
    ) -> Result<(), Error> {
        let _serial = self.lock()?;
        Ok(self.slots.create_memory_region(region, memory)?)
    }

    /// Deletes, moves or re-flags a slot (`KVM_SET_USER_MEMORY_REGION`), in memslots and in KVM.
    ///
    /// # Errors
    /// As [`memslots::Memslots::set_user_memory_region`] (a create needs
    /// [`create_memory_region`](Self::create_memory_region)), or KVM's errno if it refuses.
    pub fn set_user_memory_region(
        &self,
        region: UserspaceMemoryRegion,
    ) -> Result<ChangeKind, Error> {
        let _serial = self.lock()?;
        Ok(self.slots.set_user_memory_region(region)?)
    }

    /// Several changes published together in memslots and applied to KVM in order, all or
    /// nothing (see the type's docs).
    ///
    /// # Errors
    /// [`Error::OutOfStep`] after a failed rollback.
    pub fn transaction(&self) -> Result<KvmTransaction<'_, B>, Error> {
        let serial = self.lock()?;
        Ok(KvmTransaction {
            tx: self.slots.transaction(),
            _serial: serial,
        })
    }

    /// Creates every slot of `layout` in one transaction, each over the memory `memory_for`
    /// gives for its region (a restored VM maps its memory afresh, so each region's
    /// `userspace_addr` is replaced by its memory's address).
    ///
    /// # Errors
    /// The first region refused, by memslots or by KVM; then nothing is created.
    pub fn restore(
        &self,
        layout: &Layout,
        mut memory_for: impl FnMut(&UserspaceMemoryRegion) -> B,
    ) -> Result<(), Error> {
        let mut tx = self.transaction()?;
        for region in &layout.regions {
            let memory = memory_for(region);
            let region = UserspaceMemoryRegion {
                userspace_addr: memory.host_addr(),
                ..*region
            };
            tx.create_memory_region(region, memory)?;
        }
        tx.commit()
    }

    /// Every slot, as plain data.
    #[must_use]
    pub fn layout(&self) -> Layout {
        self.slots.layout()
    }

    /// A reader for a device or vCPU thread: lock-free lookups and byte access.
    #[must_use]
    pub fn reader(&self) -> Reader<MemslotSet<B>> {
        self.slots.reader()
    }

    /// The current version of address space `as_id`, with byte access.
    ///
    /// # Panics
    /// If `as_id` is not below [`Limits::address_spaces`].
    #[must_use]
    pub fn snapshot(&self, as_id: u16) -> Snapshot<MemslotSet<B>> {
        self.slots.snapshot(as_id)
    }

    /// Sets the dirty-log mode in KVM (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`) and in memslots.
    ///
    /// # Errors
    /// KVM's errno if it refuses the mode; then neither side changes.
    pub fn set_dirty_log_mode(&self, mode: DirtyLogMode) -> Result<(), Error> {
        let _serial = self.lock()?;
        ioctl::set_dirty_log_mode(&self.vm, mode).map_err(|errno| Error::Kvm {
            ioctl: "KVM_ENABLE_CAP",
            errno,
        })?;
        self.slots.set_dirty_log_mode(mode);
        Ok(())
    }

    /// The pages written since the last call (or clear): KVM's bitmap (guest writes) OR-ed with
    /// memslots' (writes through the byte API). In [`DirtyLogMode::FetchAndClear`] both are
    /// cleared as they are read; in [`DirtyLogMode::ManualProtect`] neither is, and
    /// [`clear_dirty_log`](Self::clear_dirty_log) re-arms pages on both sides.
    ///
    /// # Errors
    /// memslots' (= KVM's) errno for a bad or missing slot or one that does not log; KVM's errno
    /// if its call fails anyway (then nothing is cleared on either side).
    pub fn get_dirty_log(&self, slot: u32) -> Result<Vec<u64>, Error> {
        let _serial = self.lock()?;
        let id = memslots::SlotId::from(slot);
        let logged = (id.as_id < self.limits().address_spaces())
            .then(|| self.slots.snapshot(id.as_id))
            .and_then(|set| {
                set.get(id.id)
                    .filter(|s| s.flags().contains(MemFlags::LOG_DIRTY_PAGES))
                    .map(Memslot::npages)
            });
        let Some(npages) = logged else {
            // memslots' error is KVM's: fetch it without touching KVM.
            return Ok(self.slots.get_dirty_log(slot)?);
        };
        let words = npages.div_ceil(64) as usize;
        // SAFETY: KVM holds this slot with memslots' page count: every change to it went through
        // both under `self.lock`, held here, and the VM is not out of step.
        let guest =
            unsafe { ioctl::get_dirty_log(&self.vm, slot, words) }.map_err(|errno| Error::Kvm {
                ioctl: "KVM_GET_DIRTY_LOG",
                errno,
            })?;
        let mut merged = self.slots.get_dirty_log(slot)?;
        for (word, guest) in merged.iter_mut().zip(guest) {
            *word |= guest;
        }
        Ok(merged)
    }

    /// Clears (re-arms) the pages of `mask` from `first_page` in KVM's bitmap and memslots'
    /// (`KVM_CLEAR_DIRTY_LOG`, for [`DirtyLogMode::ManualProtect`]).
    ///
    /// # Errors
    /// memslots' (= KVM's) errno for a bad slot or range, or KVM's if its call fails anyway.
    pub fn clear_dirty_log(
        &self,
        slot: u32,
        first_page: u64,
        num_pages: u32,
        mask: &[u64],
    ) -> Result<(), Error> {
        let _serial = self.lock()?;
        self.slots
            .clear_dirty_log(slot, first_page, num_pages.into(), mask)?;
        ioctl::clear_dirty_log(&self.vm, slot, first_page, num_pages, mask).map_err(|errno| {
            Error::Kvm {
                ioctl: "KVM_CLEAR_DIRTY_LOG",
                errno,
            }
        })
    }
}

impl<B: KvmMemory> Drop for KvmVm<B> {
    fn drop(&mut self) {
        // KVM lets go of every slot before memslots can release their memory: vCPU fds may
        // keep the VM alive past this point.
        for as_id in 0..self.limits().address_spaces() {
            for slot in self.slots.snapshot(as_id).iter() {
                let delete = UserspaceMemoryRegion::delete(slot.slot_id().into());
                // SAFETY: a delete gives KVM no memory.
                if unsafe { ioctl::set_user_memory_region(&self.vm, delete.into()) }.is_err() {
                    mem::forget(Arc::clone(slot.backing_arc()));
                }
            }
        }
    }
}

impl<B: KvmMemory> std::fmt::Debug for KvmVm<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVm")
            .field("layout", &self.layout())
            .field("out_of_step", &self.out_of_step.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Several changes to a [`KvmVm`], applied together: see [`KvmVm::transaction`]. Dropping it
/// without committing changes nothing on either side.
pub struct KvmTransaction<'a, B: KvmMemory> {
    tx: Transaction<'a, MemslotSet<B>>,
    _serial: MutexGuard<'a, ()>,
}

impl<B: KvmMemory> KvmTransaction<'_, B> {
    /// Adds a delete, move or flags change, validated against the transaction's state.
    ///
    /// # Errors
    /// As [`memslots::Transaction::set_user_memory_region`].
    pub fn set_user_memory_region(
        &mut self,
        region: UserspaceMemoryRegion,
    ) -> Result<ChangeKind, Error> {
        Ok(self.tx.set_user_memory_region(region)?)
    }

    /// Adds a create over `memory` (see [`KvmVm::create_memory_region`]).
    ///
    /// # Errors
    /// As [`memslots::Transaction::create_memory_region`].
    pub fn create_memory_region(
        &mut self,
        region: UserspaceMemoryRegion,
        memory: B,
    ) -> Result<(), Error> {
        Ok(self.tx.create_memory_region(region, memory)?)
    }

    /// Applies every change to KVM, in order, and publishes them in memslots; if KVM refuses
    /// one, undoes the ones it applied and publishes nothing.
    ///
    /// # Errors
    /// KVM's refusal, as [`memslots::Error::Hook`] with its errno.
    pub fn commit(self) -> Result<(), Error> {
        Ok(self.tx.commit()?)
    }
}

impl<B: KvmMemory> std::fmt::Debug for KvmTransaction<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmTransaction")
            .field("changes", &self.tx.len())
            .finish()
    }
}
