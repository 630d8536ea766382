//! Driving a consumer of the slot layout from version to version: [`MemoryListener`] and
//! [`replay`].
//!
//! A vhost-user backend, a VFIO container or a hypervisor's own slot table each keep a copy of
//! the layout and must be told when it changes. [`replay`] tells them, built on
//! [`MemslotSet::diff`], in the order QEMU's memory listeners are told
//! (`address_space_update_topology_pass`): every removal first, then every addition. A consumer
//! that cannot hold two overlapping regions at once (a slot table, an IOMMU) never has to, even
//! when one step moves a slot onto the range another slot just left.

use crate::diff::Diff;
use crate::set::MemslotSet;
use crate::slot::Memslot;
use crate::types::MemFlags;

/// A consumer of the slot layout, told what changes between two versions by [`replay`].
///
/// Modelled on QEMU's `MemoryListener`: [`region_del`](Self::region_del) for every slot that
/// goes away or changes, then [`region_add`](Self::region_add) for every slot that appears or
/// changes, bracketed by [`begin`](Self::begin) and [`commit`](Self::commit). A slot whose only
/// change is its `LOG_DIRTY_PAGES` flag is reported by [`log_start`](Self::log_start) or
/// [`log_stop`](Self::log_stop) instead of a removal and an addition, as QEMU does; their default
/// is that removal and addition, so a listener that ignores dirty logging still ends up with an
/// exact copy of the new version.
///
/// | callback | when | cost to [`replay`] |
/// |---|---|---|
/// | [`begin`](Self::begin) | once, before the first other callback, if anything changed | O(1) |
/// | [`region_del`](Self::region_del) | per removed slot, and per changed slot with its old fields | O(log n) per call |
/// | [`region_add`](Self::region_add) | per added slot, and per changed slot with its new fields | O(log n) per call |
/// | [`log_start`](Self::log_start), [`log_stop`](Self::log_stop) | per slot whose only change is `LOG_DIRTY_PAGES` | O(log n) per call |
/// | [`commit`](Self::commit) | once, after the last other callback, if anything changed | O(1) |
///
/// ```
/// use memslots::{replay, Limits, Memslot, MemoryListener, Memslots, MemFlags, UserspaceMemoryRegion};
///
/// /// A consumer that mirrors the slots it is told about.
/// #[derive(Default)]
/// struct Mirror(Vec<Memslot>);
///
/// impl MemoryListener for Mirror {
///     fn region_del(&mut self, slot: &Memslot) {
///         self.0.retain(|s| s.slot_id() != slot.slot_id());
///     }
///     fn region_add(&mut self, slot: &Memslot) {
///         self.0.push(slot.clone());
///     }
/// }
///
/// let vm = Memslots::new(Limits::default());
/// let mut mirror = Mirror::default();
/// let mut seen = vm.snapshot(0);
/// vm.set_user_memory_region(UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 1 << 20, 0x7f00_0000_0000))?;
/// vm.set_user_memory_region(UserspaceMemoryRegion::new(1, MemFlags::empty(), 1 << 20, 1 << 20, 0x7e00_0000_0000))?;
///
/// let now = vm.snapshot(0);
/// replay(&seen, &now, &mut mirror);
/// seen = now;
/// assert_eq!(mirror.0.len(), 2);
/// assert!(mirror.0.iter().all(|s| seen.get(s.id()) == Some(s)));
/// # Ok::<(), memslots::Error>(())
/// ```
pub trait MemoryListener<B = ()> {
    /// A replay with at least one change starts.
    fn begin(&mut self) {}

    /// `slot` is no longer in the layout as it was: it was removed, or it changed and
    /// [`region_add`](Self::region_add) will bring its new form in the second pass.
    fn region_del(&mut self, slot: &Memslot<B>);

    /// `slot` is in the layout now: it was added, or it is the new form of a changed slot. Every
    /// removal of the replay has been reported before the first addition.
    fn region_add(&mut self, slot: &Memslot<B>);

    /// Dirty logging was turned on for a slot that changed nothing else: same range, same host
    /// address, same other flags. `new` has the bitmap. Called in the addition pass.
    ///
    /// The default reports the change as [`region_del`](Self::region_del) of `old` then
    /// [`region_add`](Self::region_add) of `new`; a consumer that can toggle logging in place (as
    /// KVM does with a flags-only `KVM_SET_USER_MEMORY_REGION`) should override it rather than
    /// unmap and map the memory again.
    fn log_start(&mut self, old: &Memslot<B>, new: &Memslot<B>) {
        self.region_del(old);
        self.region_add(new);
    }

    /// Dirty logging was turned off for a slot that changed nothing else. Called in the addition
    /// pass. The default is as for [`log_start`](Self::log_start).
    fn log_stop(&mut self, old: &Memslot<B>, new: &Memslot<B>) {
        self.region_del(old);
        self.region_add(new);
    }

    /// The replay that [`begin`](Self::begin) started has reported everything: a consumer that
    /// batches (one `SET_MEM_TABLE`, one IOMMU flush) applies the batch here.
    fn commit(&mut self) {}
}

/// Whether a change is only dirty logging turned on (`Some(true)`) or off (`Some(false)`).
fn log_toggle<B>(old: &Memslot<B>, new: &Memslot<B>) -> Option<bool> {
    let same_place = old.slot_id() == new.slot_id()
        && old.base_gfn() == new.base_gfn()
        && old.npages() == new.npages()
        && old.userspace_addr() == new.userspace_addr();
    (same_place && old.flags() ^ new.flags() == MemFlags::LOG_DIRTY_PAGES)
        .then(|| new.flags().contains(MemFlags::LOG_DIRTY_PAGES))
}

/// Tells `listener` how to get from version `old` to version `new`: all removals, then all
/// additions (see [`MemoryListener`] for the callbacks and their order).
///
/// A listener that held exactly `old`'s slots holds exactly `new`'s at the end, and at no point
/// in between holds two slots whose gfn ranges overlap (provided `old` and `new` have none, as no
/// version of [`Memslots`](crate::Memslots) does): after the removal pass it holds only slots
/// that `new` keeps unchanged (or changes only in dirty logging), and the addition pass adds
/// only `new`'s slots. Within a pass, slots come in ascending slot id order.
///
/// Nothing is called if the versions do not differ.
///
/// Time: O((k + 1) log n) for versions of one [`Memslots`](crate::Memslots) that differ in k
/// slots (the diff is walked twice, so that nothing is allocated), O(1) for a version and
/// itself.
///
/// ```
/// use memslots::{replay, Limits, Memslot, MemoryListener, Memslots, MemFlags, UserspaceMemoryRegion};
///
/// #[derive(Default)]
/// struct Log(Vec<String>);
///
/// impl MemoryListener for Log {
///     fn region_del(&mut self, slot: &Memslot) {
///         self.0.push(format!("del {} at {:?}", slot.id(), slot.base_gfn()));
///     }
///     fn region_add(&mut self, slot: &Memslot) {
///         self.0.push(format!("add {} at {:?}", slot.id(), slot.base_gfn()));
///     }
///     fn log_start(&mut self, _old: &Memslot, new: &Memslot) {
///         self.0.push(format!("log_start {}", new.id()));
///     }
/// }
///
/// let vm = Memslots::new(Limits::default());
/// let low = UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 0x10000, 0x7000_0000);
/// let high = UserspaceMemoryRegion::new(1, MemFlags::empty(), 0x10000, 0x10000, 0x7100_0000);
/// vm.set_user_memory_region(low)?;
/// vm.set_user_memory_region(high)?;
/// let before = vm.snapshot(0);
///
/// // Unplug the low slot, move the high one down into its place, log the moved one.
/// vm.set_user_memory_region(UserspaceMemoryRegion::delete(0))?;
/// vm.set_user_memory_region(UserspaceMemoryRegion { guest_phys_addr: 0, ..high })?;
/// let mut log = Log::default();
/// replay(&before, &vm.snapshot(0), &mut log);
/// assert_eq!(log.0, ["del 0 at Gfn(0x0)", "del 1 at Gfn(0x10)", "add 1 at Gfn(0x0)"]);
///
/// let before = vm.snapshot(0);
/// vm.set_user_memory_region(UserspaceMemoryRegion { guest_phys_addr: 0, flags: 1, ..high })?;
/// let mut log = Log::default();
/// replay(&before, &vm.snapshot(0), &mut log);
/// assert_eq!(log.0, ["log_start 1"]);
/// # Ok::<(), memslots::Error>(())
/// ```
pub fn replay<B: 'static, L: MemoryListener<B> + ?Sized>(
    old: &MemslotSet<B>,
    new: &MemslotSet<B>,
    listener: &mut L,
) {
    let mut changed = false;
    for change in old.diff(new) {
        if !changed {
            changed = true;
            listener.begin();
        }
        match change {
            Diff::Removed(old) => listener.region_del(old),
            Diff::Changed { old, new } if log_toggle(old, new).is_none() => {
                listener.region_del(old);
            }
            Diff::Changed { .. } | Diff::Added(_) => {}
        }
    }
    if !changed {
        return;
    }
    for change in old.diff(new) {
        match change {
            Diff::Added(new) => listener.region_add(new),
            Diff::Changed { old, new } => match log_toggle(old, new) {
                Some(true) => listener.log_start(old, new),
                Some(false) => listener.log_stop(old, new),
                None => listener.region_add(new),
            },
            Diff::Removed(_) => {}
        }
    }
    listener.commit();
}
