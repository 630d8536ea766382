//! The architecture hooks a VMM plugs into the update protocol: KVM's `kvm_arch_*` calls.

use crate::error::HookError;
use crate::slot::Memslot;
use crate::types::ChangeKind;

/// Calls the update protocol makes into the VMM, at the points where KVM calls into the
/// architecture code. Every method has a do-nothing default.
///
/// For each change, in order (see [`Memslots::set_user_memory_region`](crate::Memslots::set_user_memory_region)):
///
/// 1. Delete and Move only: the slot is published `INVALID`, a grace period passes, then
///    [`flush_shadow`](Self::flush_shadow) is called with the old slot
///    (`kvm_arch_flush_shadow_memslot`): no reader can reach it through a valid slot any more.
/// 2. [`prepare`](Self::prepare) (`kvm_arch_prepare_memory_region`) may refuse the change. Then
///    nothing is changed: in a [`Transaction`](crate::Transaction), [`abort`](Self::abort) is
///    called for every change of it whose `prepare` already succeeded, newest first, and for
///    Delete and Move the old slot is published again (two generation steps have passed, as in
///    the kernel).
/// 3. The new version is published and a grace period passes.
/// 4. [`commit`](Self::commit) (`kvm_arch_commit_memory_region`).
///
/// Hooks run with the writer lock held: they must not call writer methods of the same
/// [`Memslots`](crate::Memslots).
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use memslots::{ArchHooks, ChangeKind, HookError, Limits, Memslot, Memslots, MemFlags, UserspaceMemoryRegion};
///
/// /// Refuses slots over 1 GiB, counts flushes.
/// #[derive(Default)]
/// struct SmallSlotsOnly { flushes: AtomicUsize }
///
/// impl ArchHooks for SmallSlotsOnly {
///     fn prepare(&self, _old: Option<&Memslot>, new: Option<&Memslot>, _: ChangeKind) -> Result<(), HookError> {
///         match new {
///             Some(slot) if slot.size() > 1 << 30 => Err(HookError::new(12, "too big for the shadow MMU")),
///             _ => Ok(()),
///         }
///     }
///     fn flush_shadow(&self, _slot: &Memslot) {
///         self.flushes.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// let vm = Memslots::with_hooks(Limits::default(), SmallSlotsOnly::default());
/// let big = UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 2 << 30, 0x7000_0000_0000);
/// assert_eq!(vm.set_user_memory_region(big).unwrap_err().errno(), 12);
/// assert!(vm.snapshot(0).is_empty());
/// ```
pub trait ArchHooks<B = ()>: Send + Sync {
    /// Called before a change is published; an error refuses it.
    ///
    /// # Errors
    /// The refusal, passed to the caller as [`Error::Hook`](crate::Error::Hook).
    fn prepare(
        &self,
        old: Option<&Memslot<B>>,
        new: Option<&Memslot<B>>,
        change: ChangeKind,
    ) -> Result<(), HookError> {
        let _ = (old, new, change);
        Ok(())
    }

    /// Called when a later change of the same transaction was refused by
    /// [`prepare`](Self::prepare), for each change whose `prepare` succeeded, newest first, with
    /// the same arguments: undo whatever `prepare` did. A hook that forwards each change to
    /// another slot table (a KVM VM fd) restores it there step by step, since each earlier state
    /// was a valid layout. The kernel has no such call, as it prepares one change at a time; the
    /// name follows `kvm_arch_prepare_memory_region` / `kvm_arch_commit_memory_region`.
    fn abort(&self, old: Option<&Memslot<B>>, new: Option<&Memslot<B>>, change: ChangeKind) {
        let _ = (old, new, change);
    }

    /// Called after the change is published and a grace period has passed.
    fn commit(&self, old: Option<&Memslot<B>>, new: Option<&Memslot<B>>, change: ChangeKind) {
        let _ = (old, new, change);
    }

    /// Called for a slot being deleted or moved, once readers can no longer translate through
    /// it: drop every mapping derived from it.
    fn flush_shadow(&self, slot: &Memslot<B>) {
        let _ = slot;
    }
}

/// The hooks that do nothing: what [`Memslots::new`](crate::Memslots::new) uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl<B> ArchHooks<B> for NoHooks {}

/// Shared hooks: keep an `Arc` to look at their state while the VM runs them.
impl<B, H: ArchHooks<B> + ?Sized> ArchHooks<B> for std::sync::Arc<H> {
    fn prepare(
        &self,
        old: Option<&Memslot<B>>,
        new: Option<&Memslot<B>>,
        change: ChangeKind,
    ) -> Result<(), HookError> {
        (**self).prepare(old, new, change)
    }

    fn abort(&self, old: Option<&Memslot<B>>, new: Option<&Memslot<B>>, change: ChangeKind) {
        (**self).abort(old, new, change);
    }

    fn commit(&self, old: Option<&Memslot<B>>, new: Option<&Memslot<B>>, change: ChangeKind) {
        (**self).commit(old, new, change);
    }

    fn flush_shadow(&self, slot: &Memslot<B>) {
        (**self).flush_shadow(slot);
    }
}
