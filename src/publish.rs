//! The update protocol, written once for both designs and for single requests and transactions
//! alike: validate each request against a working copy, then publish in the kernel's steps
//! (`INVALID` copies, grace period, `flush_shadow`, `prepare`, final version, grace period,
//! `commit`).
//!
//! [`Memslots`](crate::Memslots) runs it over [`MemslotSet`](crate::MemslotSet) (trees) and
//! [`ArrayMemslots`](crate::baseline::ArrayMemslots) over the array baseline, so the benchmark's
//! "Before" and "After" differ only in how a version is stored and copied.

use core::fmt;
use std::sync::Arc;

use crate::change::{self, Origin};
use crate::error::Error;
use crate::hooks::{ArchHooks, NoHooks};
use crate::reader::{GracePeriod, Published, ReadFlavour, Reader, Root, Spaces};
use crate::slot::Memslot;
use crate::sync::{lock, Mutex, MutexGuard};
use crate::types::{ChangeKind, Limits, SlotId, UserspaceMemoryRegion};
use crate::view::{BackingOf, Version};

/// One empty entry per address space of `like`.
fn none_per_space<T, U>(like: &Spaces<U>) -> Spaces<Option<T>> {
    like.iter().map(|_| None).collect()
}

/// `base`'s versions with `replaced` put in: each `(as_id, version, steps)` published with the
/// generation `steps` publications after `base`'s, a publication stepping it by `step` (the number
/// of address spaces).
fn next_spaces<S: Version>(
    base: &Root<S>,
    step: u64,
    replaced: impl IntoIterator<Item = (usize, S, u64)>,
) -> Spaces<Arc<S>> {
    let mut spaces = base.spaces.clone();
    for (as_id, mut space, steps) in replaced {
        space.set_generation(base.spaces[as_id].generation() + steps * step);
        spaces[as_id] = Arc::new(space);
    }
    spaces
}

/// What only the writer touches, under the writer lock (KVM's `slots_lock`).
#[derive(Debug, Default)]
pub(crate) struct WriterState {
    /// Pages of every slot in every address space (`nr_memslot_pages`).
    vm_pages: u64,
    /// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`'s setting (`manual_dirty_log_protect`).
    pub(crate) dirty_log: crate::log_mode::DirtyLogMode,
}

/// The writer lock, held: by a transaction from its start to its commit, and by the dirty-log
/// calls. Debug builds record which VMs' locks this thread holds, so that taking one again (a
/// hook or an open transaction calling `get_dirty_log`) panics instead of waiting forever.
pub(crate) struct WriterLock<'a> {
    guard: MutexGuard<'a, WriterState>,
    #[cfg(all(debug_assertions, not(loom)))]
    vm: usize,
}

impl core::ops::Deref for WriterLock<'_> {
    type Target = WriterState;
    fn deref(&self) -> &WriterState {
        &self.guard
    }
}

impl core::ops::DerefMut for WriterLock<'_> {
    fn deref_mut(&mut self) -> &mut WriterState {
        &mut self.guard
    }
}

#[cfg(all(debug_assertions, not(loom)))]
impl Drop for WriterLock<'_> {
    fn drop(&mut self) {
        writer_tracking::release(self.vm);
    }
}

/// Debug builds only: the VMs whose writer lock this thread holds.
#[cfg(all(debug_assertions, not(loom)))]
mod writer_tracking {
    use std::cell::RefCell;

    use crate::sync::ThreadMarks;

    thread_local! {
        static HELD: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn acquire(vm: usize) {
        assert!(
            !ThreadMarks(&HELD).contains(vm),
            "a Memslots call that takes the writer lock (an update, a transaction, get_dirty_log \
             or clear_dirty_log) was made while this thread already holds it: from an ArchHooks \
             callback or with a Transaction open; it would wait for itself forever"
        );
        ThreadMarks(&HELD).add(vm);
    }

    pub(super) fn release(vm: usize) {
        ThreadMarks(&HELD).remove(vm);
    }
}

/// A VM's published memslots and its writer side.
pub(crate) struct Core<S: Version> {
    limits: Limits,
    published: Arc<Published<S>>,
    writer: Mutex<WriterState>,
    /// The VM's page count as of the last publication, for lock-free reads.
    total_pages: crate::sync::AtomicU64,
    hooks: Box<dyn ArchHooks<BackingOf<S>>>,
    /// The backing a slot created by a plain request gets: the one `()` every slot of a
    /// layout-only VM shares, or `None` where creates must bring their own.
    implicit_backing: Option<Arc<BackingOf<S>>>,
    /// Whether `hooks` came from the caller: a non-waiting publication still runs the `INVALID`
    /// step and its grace period for them (`flush_shadow` needs it).
    has_hooks: bool,
}

impl<S: Version> Core<S> {
    pub(crate) fn new(limits: Limits, implicit_backing: Option<Arc<BackingOf<S>>>) -> Self {
        let mut core = Self::with_hooks(limits, Box::new(NoHooks), implicit_backing);
        core.has_hooks = false;
        core
    }

    /// Whether a single update ([`update`](Self::update)) waits for its grace periods: the
    /// kernel-exact form where the caller manages the memory behind slots (a layout-only VM, whose
    /// creates get the implicit backing) or hooks expect the kernel's points, the non-waiting one
    /// where slots own their memory (see `Memslots::set_user_memory_region`).
    fn update_waits(&self) -> bool {
        self.has_hooks || self.implicit_backing.is_some()
    }

    pub(crate) fn with_hooks(
        limits: Limits,
        hooks: Box<dyn ArchHooks<BackingOf<S>>>,
        implicit_backing: Option<Arc<BackingOf<S>>>,
    ) -> Self {
        let spaces = (0..limits.address_spaces())
            .map(|as_id| Arc::new(S::empty(as_id, u64::from(as_id), &limits)))
            .collect();
        Self {
            limits,
            published: Arc::new(Published::new(Root {
                spaces,
                publication: 0,
            })),
            writer: Mutex::new(WriterState::default()),
            total_pages: crate::sync::AtomicU64::new(0),
            hooks,
            implicit_backing,
            has_hooks: true,
        }
    }

    /// Loom only: a VM whose grace periods lack the fences (the broken variant).
    #[cfg(loom)]
    pub(crate) fn weakened(limits: Limits, implicit_backing: Option<Arc<BackingOf<S>>>) -> Self {
        let mut core = Self::new(limits, implicit_backing);
        Arc::get_mut(&mut core.published)
            .expect("not shared yet")
            .weak_ordering = true;
        core
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The current version of `as_id`.
    ///
    /// # Panics
    /// If `as_id` is not below the number of address spaces.
    pub(crate) fn snapshot(&self, as_id: u16) -> Arc<S> {
        // A guard, not an `Arc` of the root: the one count taken is the version's.
        let root = self.published.root_guard();
        match root.spaces.get(usize::from(as_id)) {
            Some(space) => Arc::clone(space),
            None => panic!(
                "address space {as_id} does not exist (there are {})",
                root.spaces.len()
            ),
        }
    }

    /// The current root as a guard: every address space's version, no count taken in the
    /// common case.
    #[cfg(feature = "vm-memory")]
    pub(crate) fn root_guard(&self) -> crate::sync::RootGuard<Root<S>> {
        self.published.root_guard()
    }

    /// Every address space's current version, from one root.
    pub(crate) fn versions(&self) -> Spaces<Arc<S>> {
        self.published.root().spaces.clone()
    }

    pub(crate) fn reader(&self) -> Reader<S> {
        self.reader_with_flavour(self.published.default_flavour())
    }

    pub(crate) fn reader_with_flavour(&self, flavour: ReadFlavour) -> Reader<S> {
        Reader::new(Arc::clone(&self.published), flavour)
    }

    pub(crate) fn read_flavour(&self) -> ReadFlavour {
        self.published.default_flavour()
    }

    pub(crate) fn synchronize(&self) {
        self.published.synchronize();
    }

    pub(crate) fn start_grace_period(&self) -> GracePeriod {
        self.published.start_grace_period()
    }

    /// Whether `grace` has ended; frees the replaced versions no reader holds any more.
    pub(crate) fn poll_synchronize(&self, grace: &GracePeriod) -> bool {
        let done = grace.is_done();
        self.published.reclaim();
        done
    }

    /// One request, published without waiting for readers (see [`Transaction::publish`]).
    pub(crate) fn publish_update(
        &self,
        region: &UserspaceMemoryRegion,
        origin: Origin,
    ) -> Result<(ChangeKind, GracePeriod), Error> {
        let mut tx = self.transaction();
        let kind = tx.apply(region, origin)?;
        Ok((kind, tx.publish()?))
    }

    /// The VM's page count over all address spaces, as of the last publication; no lock.
    pub(crate) fn total_pages(&self) -> u64 {
        self.total_pages.load(crate::sync::Ordering::Acquire)
    }

    /// Takes the writer lock (for a transaction, and for reads that must not race an update:
    /// the dirty-log calls).
    ///
    /// # Panics
    /// In debug builds, if this thread already holds it.
    pub(crate) fn lock_writer(&self) -> WriterLock<'_> {
        #[cfg(all(debug_assertions, not(loom)))]
        let vm = {
            let vm = self as *const Self as usize;
            writer_tracking::acquire(vm);
            vm
        };
        WriterLock {
            guard: lock(&self.writer),
            #[cfg(all(debug_assertions, not(loom)))]
            vm,
        }
    }

    pub(crate) fn transaction(&self) -> Transaction<'_, S> {
        let writer = self.lock_writer();
        let base = self.published.root();
        Transaction {
            vm_pages: writer.vm_pages,
            spaces: none_per_space(&base.spaces),
            changes: Vec::new(),
            base,
            writer,
            core: self,
        }
    }

    /// One request, published on its own: a transaction of one.
    pub(crate) fn update(
        &self,
        region: &UserspaceMemoryRegion,
        origin: Origin,
    ) -> Result<ChangeKind, Error> {
        let mut tx = self.transaction();
        let kind = tx.apply(region, origin)?;
        let _grace = tx.finish(self.update_waits())?;
        Ok(kind)
    }

    /// One create carrying its backing, published on its own.
    pub(crate) fn create(
        &self,
        region: &UserspaceMemoryRegion,
        backing: BackingOf<S>,
    ) -> Result<(), Error> {
        let mut tx = self.transaction();
        tx.create_memory_region(*region, backing)?;
        tx.finish(self.update_waits()).map(drop)
    }

    /// Publishes a root; `reclaim_now` as in `Published::publish`.
    fn publish(&self, spaces: Spaces<Arc<S>>, publication: u64, reclaim_now: bool) {
        let root = Root {
            spaces,
            publication,
        };
        self.published.publish(root, reclaim_now);
    }
}

impl<S: Version> fmt::Debug for Core<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("limits", &self.limits)
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

/// One accepted change, kept for the hooks and the `INVALID` step.
struct Change<B> {
    slot: SlotId,
    kind: ChangeKind,
    old: Option<Memslot<B>>,
    new: Option<Memslot<B>>,
}

/// Several requests published as one version per address space, all or nothing.
///
/// Created by [`Memslots::transaction`](crate::Memslots::transaction); holds the writer lock until
/// it is committed or dropped. Each request is validated against the transaction's own
/// intermediate state, exactly as if the earlier ones had been published; a rejected request
/// changes nothing and the transaction goes on. [`commit`](Self::commit) publishes everything
/// accepted with one `INVALID` step and one grace period for the whole batch, so no reader ever
/// sees half of it: the atomic multi-slot update that KVM lacks (QEMU pauses every vCPU to fake
/// it). Dropping a transaction without committing publishes nothing.
///
/// | operation | cost |
/// |---|---|
/// | [`set_user_memory_region`](Self::set_user_memory_region) | O(log n); the first change to an address space also copies its version (O(1) for trees, O(n) for the array) |
/// | [`commit`](Self::commit) | O(k log n) for k changes, plus up to three grace periods |
///
/// ```
/// use memslots::{ChangeKind, Gfn, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
/// let vm = Memslots::new(Limits::default());
/// let low = UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 0x10000, 0x7000_0000);
/// vm.set_user_memory_region(low)?;
///
/// // Swap in a bigger slot at the same place: delete and create, seen by readers as one step.
/// let mut tx = vm.transaction();
/// assert_eq!(tx.set_user_memory_region(UserspaceMemoryRegion::delete(0))?, ChangeKind::Delete);
/// let big = UserspaceMemoryRegion::new(1, MemFlags::empty(), 0, 0x40000, 0x7100_0000);
/// assert_eq!(tx.set_user_memory_region(big)?, ChangeKind::Create);
/// tx.commit()?;
/// assert_eq!(vm.snapshot(0).find(Gfn(0x30)).map(|s| s.id()), Some(1));
/// # Ok::<(), memslots::Error>(())
/// ```
pub struct Transaction<'a, S: Version = crate::MemslotSet> {
    core: &'a Core<S>,
    writer: WriterLock<'a>,
    /// The root published when the transaction began (still current: the writer lock is held).
    base: Arc<Root<S>>,
    /// Working copies, made on the first change to an address space.
    spaces: Spaces<Option<S>>,
    changes: Vec<Change<BackingOf<S>>>,
    vm_pages: u64,
}

impl<S: Version> Transaction<'_, S> {
    /// Validates `region` against the transaction's current state and, if it is accepted, adds it
    /// to the transaction. Nothing is published until [`commit`](Self::commit).
    ///
    /// Time: O(log n).
    ///
    /// # Errors
    /// As [`Memslots::set_user_memory_region`](crate::Memslots::set_user_memory_region); a refused
    /// request leaves the transaction as it was.
    pub fn set_user_memory_region(
        &mut self,
        region: UserspaceMemoryRegion,
    ) -> Result<ChangeKind, Error> {
        self.apply(&region, Origin::User)
    }

    /// As [`set_user_memory_region`](Self::set_user_memory_region), for an internal slot (see
    /// [`Memslots::set_internal_memory_region`](crate::Memslots::set_internal_memory_region)).
    ///
    /// # Errors
    /// As [`Memslots::set_internal_memory_region`](crate::Memslots::set_internal_memory_region).
    pub fn set_internal_memory_region(
        &mut self,
        region: UserspaceMemoryRegion,
    ) -> Result<ChangeKind, Error> {
        self.apply(&region, Origin::Internal)
    }

    /// Validates `region` as a create of a new slot carrying `backing` and, if it is accepted, adds
    /// it to the transaction: the way slots are created on a VM whose slots carry backings. The
    /// backing is dropped once no version, snapshot or reader can reach the slot any more.
    ///
    /// Time: O(log n).
    ///
    /// # Errors
    /// [`Error::SlotExists`] (EEXIST) if the slot exists (in the transaction's state); otherwise
    /// as [`set_user_memory_region`](Self::set_user_memory_region) for a create. A refused request
    /// leaves the transaction as it was and drops `backing`.
    pub fn create_memory_region(
        &mut self,
        region: UserspaceMemoryRegion,
        backing: BackingOf<S>,
    ) -> Result<(), Error> {
        self.apply_with(&region, Origin::User, Creation::Only(Arc::new(backing)))
            .map(drop)
    }

    /// How many accepted changes the transaction holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether the transaction holds no change.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub(crate) fn apply(
        &mut self,
        region: &UserspaceMemoryRegion,
        origin: Origin,
    ) -> Result<ChangeKind, Error> {
        let creation = match &self.core.implicit_backing {
            Some(backing) => Creation::Allowed(Arc::clone(backing)),
            None => Creation::Refused,
        };
        self.apply_with(region, origin, creation)
    }

    fn apply_with(
        &mut self,
        region: &UserspaceMemoryRegion,
        origin: Origin,
        creation: Creation<BackingOf<S>>,
    ) -> Result<ChangeKind, Error> {
        let limits = self.core.limits;
        let checked = change::check(&limits, region, origin)?;
        let as_id = usize::from(checked.slot.as_id);
        let base = &self.base.spaces[as_id];
        let current = self.spaces[as_id].as_ref().unwrap_or(base);
        let backing = match creation {
            Creation::Only(_) if current.get(checked.slot.id).is_some() => {
                return Err(Error::SlotExists { slot: checked.slot });
            }
            Creation::Only(backing) | Creation::Allowed(backing) => Some(backing),
            Creation::Refused => None,
        };
        let plan = change::classify(&limits, checked, current, self.vm_pages, backing)?;
        if plan.kind == ChangeKind::Unchanged {
            return Ok(ChangeKind::Unchanged);
        }
        // Copied only now: an address space with no accepted change is not published again.
        let space = self.spaces[as_id].get_or_insert_with(|| S::clone(base));
        let id = plan.slot.id;
        let old = space.get(id).cloned();
        crate::log_mode::arm_new_bitmap(self.writer.dirty_log, old.as_ref(), plan.new.as_ref());
        space.replace(id, plan.new.clone());
        match plan.kind {
            ChangeKind::Create => self.vm_pages += checked.npages,
            ChangeKind::Delete => self.vm_pages -= old.as_ref().map_or(0, |s| s.npages()),
            _ => {}
        }
        self.changes.push(Change {
            slot: plan.slot,
            kind: plan.kind,
            old,
            new: plan.new,
        });
        Ok(plan.kind)
    }

    /// Publishes every accepted change, in the kernel's steps:
    ///
    /// 1. if any published slot is deleted or moved, a version with each such slot marked
    ///    `INVALID` (readers still find it but cannot translate through it), a grace period, and
    ///    [`ArchHooks::flush_shadow`] for each;
    /// 2. [`ArchHooks::prepare`] for each change, in order; if one refuses,
    ///    [`ArchHooks::abort`] for each change prepared before it, newest first;
    /// 3. the final versions, one per changed address space, all in one swap, and a grace period;
    /// 4. [`ArchHooks::commit`] for each change.
    ///
    /// When it returns, no reader is still inside a section that saw a version from before the
    /// transaction. Each publication steps the generation of the address spaces it changes by the
    /// number of address spaces.
    ///
    /// Time: O(k log n) for k changes, plus the grace periods.
    ///
    /// # Errors
    /// [`Error::Hook`] if a `prepare` hook refuses: nothing is changed (a published `INVALID` step
    /// is undone by publishing the old versions again, as the kernel does).
    pub fn commit(self) -> Result<(), Error> {
        self.finish(true).map(drop)
    }

    /// Publishes every accepted change and returns without waiting for readers: the grace
    /// period of the final version is returned instead, to poll or wait for later (the kernel's
    /// `start_poll_synchronize_srcu`). Readers that began a section before may still use the old
    /// versions; what those versions own is freed by the next
    /// [`poll_synchronize`](crate::Memslots::poll_synchronize) (or grace period, or waiting
    /// publication) after the last of them lets go (see
    /// [`Reader::quiesce`](crate::Reader::quiesce) for idle readers).
    ///
    /// Without [`ArchHooks`] there is no `INVALID` step (nothing would use its grace period), so
    /// this is one publication; the generations step as in [`commit`](Self::commit), so both
    /// forms give the same generations. With hooks, a Delete or Move still publishes `INVALID`,
    /// waits for its grace period and calls `flush_shadow`, as the kernel does; `prepare` runs as
    /// in `commit`, and `commit` runs right after the final publication, before its grace
    /// period has ended.
    ///
    /// Time: O(k log n) for k changes, O(readers) for starting the grace period, plus with hooks
    /// the `INVALID` step's grace period.
    ///
    /// # Errors
    /// As [`commit`](Self::commit).
    pub fn publish(self) -> Result<GracePeriod, Error> {
        self.finish(false)
    }

    /// The publication steps; `waiting` chooses the kernel-exact form.
    fn finish(self, waiting: bool) -> Result<GracePeriod, Error> {
        let Transaction {
            core,
            mut writer,
            base,
            spaces: mut working_spaces,
            changes,
            vm_pages,
        } = self;
        if changes.is_empty() {
            return Ok(core.published.no_grace_period());
        }
        let step = u64::from(core.limits.address_spaces());
        let mut publication = base.publication;
        let mut publish = |spaces, reclaim_now| {
            publication += 1;
            core.publish(spaces, publication, reclaim_now);
        };

        // Published slots that go away or move become INVALID first.
        let mut invalid: Spaces<Option<S>> = none_per_space(&base.spaces);
        let mut flushed = Vec::new();
        for change in &changes {
            if !matches!(change.kind, ChangeKind::Delete | ChangeKind::Move) {
                continue;
            }
            let as_id = usize::from(change.slot.as_id);
            let Some(old) = base.spaces[as_id].get(change.slot.id) else {
                continue; // created by this transaction: no reader has seen it
            };
            let space = invalid[as_id].get_or_insert_with(|| S::clone(&base.spaces[as_id]));
            if space.get(change.slot.id).is_some_and(|s| !s.is_invalid()) {
                space.replace(change.slot.id, Some(old.invalidated()));
                flushed.push(old.clone());
            }
        }
        let invalidated: Vec<usize> = (0..invalid.len())
            .filter(|&a| invalid[a].is_some())
            .collect();
        // The INVALID version is published only where its grace period serves: the kernel-exact
        // form, or hooks to flush. Its generation step is counted either way.
        let publish_invalid = !invalidated.is_empty() && (waiting || core.has_hooks);
        if publish_invalid {
            let invalid = invalid.iter_mut().enumerate();
            let invalid = invalid.filter_map(|(as_id, s)| Some((as_id, s.take()?, 1)));
            publish(next_spaces(&base, step, invalid), true);
            core.synchronize();
            for old in &flushed {
                core.hooks.flush_shadow(old);
            }
        }

        for (prepared, change) in changes.iter().enumerate() {
            if let Err(refusal) =
                core.hooks
                    .prepare(change.old.as_ref(), change.new.as_ref(), change.kind)
            {
                // Undo, newest first, the changes whose prepare succeeded.
                for done in changes[..prepared].iter().rev() {
                    core.hooks
                        .abort(done.old.as_ref(), done.new.as_ref(), done.kind);
                }
                if publish_invalid {
                    // Put the old slots back: the published versions again, one step later.
                    let restored = invalidated
                        .iter()
                        .map(|&as_id| (as_id, S::clone(&base.spaces[as_id]), 2));
                    publish(next_spaces(&base, step, restored), true);
                    core.synchronize();
                }
                return Err(Error::Hook(refusal));
            }
        }

        let working = working_spaces.iter_mut().enumerate();
        let finals = working.filter_map(|(as_id, s)| {
            let steps = 1 + u64::from(invalidated.contains(&as_id));
            Some((as_id, s.take()?, steps))
        });
        let spaces = next_spaces(&base, step, finals);
        // Let go of the old root before publishing, so that the publication can free it (and
        // the INVALID one) at once when no reader holds them.
        drop(base);
        publish(spaces, waiting);
        let grace = if waiting {
            core.synchronize();
            core.published.no_grace_period()
        } else {
            core.start_grace_period()
        };
        writer.vm_pages = vm_pages;
        core.total_pages
            .store(vm_pages, crate::sync::Ordering::Release);
        for change in &changes {
            core.hooks
                .commit(change.old.as_ref(), change.new.as_ref(), change.kind);
        }
        Ok(grace)
    }
}

/// Whether a request may create a slot, and with which backing.
enum Creation<B> {
    /// Any change; a create gets this backing.
    Allowed(Arc<B>),
    /// Only a create, with this backing.
    Only(Arc<B>),
    /// Any change but a create.
    Refused,
}

impl<B> fmt::Debug for Change<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Change")
            .field("slot", &self.slot)
            .field("kind", &self.kind)
            .field("old", &self.old)
            .field("new", &self.new)
            .finish()
    }
}

impl<S: Version> fmt::Debug for Transaction<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}
