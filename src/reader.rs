//! Read-side sections and grace periods: [`Reader`], [`ReadGuard`], and the registry a writer
//! scans to wait for readers.
//!
//! # The protocol
//!
//! Each [`Reader`] owns a registry entry holding a sequence number, odd while the reader is inside
//! a section. The VM keeps the published root and a version counter that the writer bumps after
//! each root store.
//!
//! - **Reader, entering:** store `seq + 1` (odd) in its entry; `fence(SeqCst)`; load the version.
//!   If it differs from the version of its cached root, load the root afresh. Leaving: store
//!   `seq + 2` (even) with `Release`.
//! - **Writer, publishing:** store the new root; store the bumped version; and for a grace
//!   period, `fence(SeqCst)`, then read every entry, and wait on each odd one until it changes.
//!
//! # Why it is enough
//!
//! The two fences order the reader's "I am inside" before its version load, and the writer's
//! version store before its registry scan. By the fence rule of the C++/Rust memory model, for any
//! reader section and any publish, either the reader's version load sees the writer's new version
//! (then it loads the new root, or a newer one, and never touches the old one in this section), or
//! the writer's scan sees the reader's odd entry (then the writer waits until that section ends).
//! There is no third case: a reader cannot use the old root unseen. The `Release` on leaving pairs
//! with the writer's `Acquire` reads of the entry, so everything the reader did in the section
//! happens before whatever the writer does after the grace period (flushing, unmapping).
//!
//! `Release`/`Acquire` alone is not enough: without the fences the reader's entry store may be
//! delayed past its version load and the writer's scan may read the entry before its own version
//! store is visible, so both miss each other (a store-buffering outcome) and `synchronize` returns
//! while a reader is still using the old version. The loom tests include that broken variant and
//! show it is caught.
//!
//! # Costs
//!
//! Entering a section: a `RefCell` flag, a store to the reader's own cache line, one fence, one
//! load of a counter that changes only on publish. No lock, no allocation, no read-modify-write on
//! a shared line, so readers on many cores do not contend. The root itself is loaded only when
//! the version changed.
//!
//! A [`Snapshot`](crate::Snapshot) is not a section: it holds its version's memory alive, but
//! never holds up a grace period.
//!
//! # Reclamation
//!
//! Versions are reference-counted, and the writer keeps every root it replaced until it holds the
//! last reference. So a reader letting go of an old root (when it reloads) only decrements a
//! count: freeing a version's nodes, which can take microseconds and the allocator's locks, is
//! always the writer's work, as in RCU.

use core::borrow::Borrow;
use core::cell::{RefCell, RefMut};
use core::fmt;
use core::ops::Deref;
use std::sync::Arc;

use crate::publish::{BackingOf, Root, Version};
use crate::slot::Memslot;
use crate::sync::{backoff, fence, lock, AtomicU64, Mutex, Ordering, RootCell};
use crate::types::Gfn;

/// What readers share with the writer: the root, its version, and the registry.
pub(crate) struct Published<S> {
    root: RootCell<Root<S>>,
    version: AtomicU64,
    readers: Mutex<Vec<Arc<ReaderEntry>>>,
    /// Replaced roots that readers may still hold (writer only).
    retired: Mutex<Vec<Arc<Root<S>>>>,
    /// Loom only: drop the fences, to show the model checker catches the broken protocol.
    #[cfg(loom)]
    pub(crate) weak_ordering: bool,
}

/// One reader's registry entry: its section sequence number, odd while inside.
///
/// Aligned to its own cache lines (128 bytes covers adjacent-line prefetch): the reader stores to
/// it on every section, and nothing else, not even the `Arc` counts the writer touches while it
/// scans, may share the line.
#[derive(Debug)]
#[repr(align(128))]
struct ReaderEntry {
    seq: AtomicU64,
}

impl<S> Published<S> {
    pub(crate) fn new(root: Root<S>) -> Self {
        let version = root.version;
        Self {
            root: RootCell::new(Arc::new(root)),
            version: AtomicU64::new(version),
            readers: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            #[cfg(loom)]
            weak_ordering: false,
        }
    }

    /// The current root, for the writer and for snapshots.
    pub(crate) fn root(&self) -> Arc<Root<S>> {
        self.root.load_full()
    }

    /// Publishes `root`; readers entering from now on see it (or a later one). Its `version`
    /// must be greater than the current one. Only the writer calls this.
    pub(crate) fn publish(&self, root: Root<S>) {
        let version = root.version;
        let old = self.root.swap(Arc::new(root));
        self.version.store(version, Ordering::Release);
        self.retire(old);
    }

    /// Keeps a replaced root until no reader holds it, so that freeing a version's memory is
    /// the writer's work, never a reader's: a reader only drops its reference when it reloads.
    /// A root is handed out only while current, so once retired its count can only fall; when
    /// the list's reference is the last one, nobody else can reach it and dropping it here frees
    /// it. The list holds at most one root per reader plus the ones freed at the next publish.
    fn retire(&self, old: Arc<Root<S>>) {
        lock(&self.retired).push(old);
        self.reclaim();
    }

    /// Frees the retired roots no reader holds any more (and with them every slot, and so every
    /// backing, that only they reached). Only the writer calls this: after each publication and
    /// at the end of each grace period.
    pub(crate) fn reclaim(&self) {
        let mut retired = lock(&self.retired);
        let mut i = 0;
        while i < retired.len() {
            if Arc::strong_count(&retired[i]) == 1 {
                drop(retired.swap_remove(i));
            } else {
                i += 1;
            }
        }
    }

    /// Waits until every read-side section that was running when this was called has ended.
    pub(crate) fn synchronize(&self) {
        #[cfg(all(debug_assertions, not(loom)))]
        section_tracking::assert_not_inside(self.identity());
        self.fence();
        let inside: Vec<(Arc<ReaderEntry>, u64)> = lock(&self.readers)
            .iter()
            .filter_map(|entry| {
                let seq = entry.seq.load(Ordering::Acquire);
                (seq % 2 == 1).then(|| (Arc::clone(entry), seq))
            })
            .collect();
        for (entry, seq) in inside {
            let mut round = 0;
            while entry.seq.load(Ordering::Acquire) == seq {
                backoff(round);
                round = round.saturating_add(1);
            }
        }
        self.reclaim();
    }

    #[inline]
    fn fence(&self) {
        #[cfg(loom)]
        if self.weak_ordering {
            return;
        }
        fence(Ordering::SeqCst);
    }

    fn register(&self) -> Arc<ReaderEntry> {
        let entry = Arc::new(ReaderEntry {
            seq: AtomicU64::new(0),
        });
        lock(&self.readers).push(Arc::clone(&entry));
        entry
    }

    fn unregister(&self, entry: &Arc<ReaderEntry>) {
        lock(&self.readers).retain(|e| !Arc::ptr_eq(e, entry));
    }

    #[cfg(all(debug_assertions, not(loom)))]
    fn identity(&self) -> usize {
        self as *const Self as usize
    }
}

impl<S> fmt::Debug for Published<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Published")
            .field("version", &self.version.load(Ordering::Relaxed))
            .field("readers", &lock(&self.readers).len())
            .finish()
    }
}

/// A vCPU's handle for lock-free reads: one per thread that looks up guest addresses.
///
/// [`read`](Self::read) enters a read-side section and returns a [`ReadGuard`] that sees every
/// address space's current version until it is dropped; a writer's grace period waits for it. The
/// handle keeps the last root it saw and, like KVM's `vcpu->last_used_slot`, the last slot a
/// lookup hit, validated by generation; so a run of lookups in the same slot costs about a range
/// check each.
///
/// A `Reader` is `Send` (move it to its vCPU thread) but not `Sync`; it holds one section at a
/// time. Dropping it removes it from the registry.
///
/// | operation | cost |
/// |---|---|
/// | [`read`](Self::read), dropping the guard | O(1): no lock, no allocation, one fence |
/// | [`ReadGuard::gfn_to_memslot`] | O(1) on a cache hit, O(log n) otherwise |
/// | [`mark_page_dirty`](Self::mark_page_dirty) | as a section plus a lookup, plus one atomic OR |
/// | creating or dropping a `Reader` | O(readers): takes the registry lock |
///
/// Calling a writer method of the same VM (an update, [`synchronize`](crate::Memslots::synchronize))
/// while this thread holds a [`ReadGuard`] would wait for itself forever, as it would in the
/// kernel; debug builds detect it and panic instead.
///
/// ```
/// use memslots::{Gfn, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
/// use std::sync::Arc;
///
/// let vm = Arc::new(Memslots::new(Limits::default()));
/// vm.set_user_memory_region(UserspaceMemoryRegion::new(0, MemFlags::LOG_DIRTY_PAGES, 0, 1 << 20, 0x7000_0000))?;
/// let reader = vm.reader();
/// let vcpu = std::thread::spawn(move || {
///     let mut guard = reader.read();
///     let hva = guard.gfn_to_memslot(0, Gfn(0x42)).and_then(|s| s.gfn_to_hva(Gfn(0x42)));
///     guard.mark_page_dirty(0, Gfn(0x42));
///     hva
/// });
/// assert_eq!(vcpu.join().unwrap().map(|h| h.0), Some(0x7004_2000));
/// assert_eq!(vm.get_dirty_log(0)?[1], 1 << 2); // page 0x42 = word 1, bit 2
/// # Ok::<(), memslots::Error>(())
/// ```
///
/// Sharing one `Reader` between threads does not compile (`Reader` is not `Sync`):
///
/// ```compile_fail,E0277
/// use memslots::{Limits, Memslots};
/// let vm = Memslots::new(Limits::default());
/// let reader = vm.reader();
/// std::thread::scope(|s| {
///     s.spawn(|| drop(reader.read()));
/// });
/// ```
pub struct Reader<S: Version = crate::MemslotSet> {
    published: Arc<Published<S>>,
    entry: Arc<ReaderEntry>,
    cache: RefCell<ReaderCache<S>>,
}

/// What a reader keeps between sections.
struct ReaderCache<S: Version> {
    root: Arc<Root<S>>,
    /// The last slot a cached lookup found in `root`. Cleared whenever `root` is replaced, so it
    /// always belongs to the versions this reader sees: the kernel checks the set's generation
    /// instead, which comes to the same, but costs a load chain on every hit.
    last_used: Option<S::Slot>,
}

impl<S: Version> Reader<S> {
    pub(crate) fn new(published: Arc<Published<S>>) -> Self {
        let entry = published.register();
        let root = published.root();
        Self {
            published,
            entry,
            cache: RefCell::new(ReaderCache {
                root,
                last_used: None,
            }),
        }
    }

    /// Enters a read-side section: the guard sees each address space's current version, which
    /// stays valid and unchanged until the guard is dropped.
    ///
    /// Time: O(1), wait-free: no lock, no allocation, no system call.
    ///
    /// # Panics
    /// If this reader is already inside a section (a `Reader` holds one at a time; use a second
    /// `Reader` for nested sections).
    #[inline]
    pub fn read(&self) -> ReadGuard<'_, S> {
        let Ok(mut cache) = self.cache.try_borrow_mut() else {
            panic!("Reader::read called while this reader is already inside a section");
        };
        let seq = self.entry.seq.load(Ordering::Relaxed) + 1;
        self.entry.seq.store(seq, Ordering::Relaxed);
        self.published.fence();
        let version = self.published.version.load(Ordering::Acquire);
        if version != cache.root.version {
            cache.root = self.published.root();
            cache.last_used = None;
        }
        #[cfg(all(debug_assertions, not(loom)))]
        section_tracking::enter(self.published.identity());
        ReadGuard {
            cache,
            reader: self,
            seq,
        }
    }

    /// Marks `gfn` of address space `as_id` dirty in its slot's bitmap, in a section of its own.
    /// A gfn in no slot, in a slot that does not log, or an address space that does not exist is
    /// ignored, as `mark_page_dirty` does in the kernel.
    ///
    /// Time: as [`read`](Self::read) plus [`ReadGuard::gfn_to_memslot`].
    ///
    /// # Panics
    /// If this reader is already inside a section; use [`ReadGuard::mark_page_dirty`] there.
    pub fn mark_page_dirty(&self, as_id: u16, gfn: Gfn) {
        self.read().mark_page_dirty(as_id, gfn);
    }
}

impl<S: Version> Drop for Reader<S> {
    fn drop(&mut self) {
        self.published.unregister(&self.entry);
    }
}

impl<S: Version> fmt::Debug for Reader<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("seq", &self.entry.seq.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A read-side section: while it lives, the versions it sees stay published-or-retired but never
/// reclaimed, and a writer's grace period waits for it to end. Created by [`Reader::read`].
///
/// Keep sections short (a vCPU's lookup, an exit's handling): a writer deleting or moving a slot
/// waits for every section that was open when it published.
///
/// | operation | cost |
/// |---|---|
/// | [`slots`](Self::slots) | O(1) |
/// | [`gfn_to_memslot`](Self::gfn_to_memslot) | O(1) on a cache hit, O(log n) otherwise |
/// | [`mark_page_dirty`](Self::mark_page_dirty) | as `gfn_to_memslot`, plus one atomic OR |
/// | [`read_guest`](Self::read_guest), [`write_guest`](Self::write_guest) and the `_obj` forms | O(1) plus the copy inside the last-used slot, else as [`MemslotSet::read_guest`](crate::MemslotSet::read_guest) |
/// | dropping it | O(1): one store |
///
/// A section ends on the thread that began it: sending a guard to another thread does not
/// compile (`ReadGuard` is not `Send`):
///
/// ```compile_fail,E0277
/// use memslots::{Limits, Memslots};
/// let vm = Memslots::new(Limits::default());
/// let reader = vm.reader();
/// let guard = reader.read();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard));
/// });
/// ```
pub struct ReadGuard<'r, S: Version = crate::MemslotSet> {
    cache: RefMut<'r, ReaderCache<S>>,
    reader: &'r Reader<S>,
    seq: u64,
}

impl<S: Version> ReadGuard<'_, S> {
    /// Address space `as_id`'s version as this section sees it.
    ///
    /// Time: O(1).
    ///
    /// # Panics
    /// If `as_id` is not below the number of address spaces; see [`get_slots`](Self::get_slots).
    #[must_use]
    #[inline]
    pub fn slots(&self, as_id: u16) -> &S {
        match self.get_slots(as_id) {
            Some(set) => set,
            None => panic!("address space {as_id} does not exist"),
        }
    }

    /// The number of address spaces this section sees.
    ///
    /// Time: O(1).
    #[must_use]
    pub fn address_spaces(&self) -> u16 {
        self.cache.root.spaces.len() as u16
    }

    /// Address space `as_id`'s version, or `None` if there is no such address space.
    ///
    /// Time: O(1).
    #[must_use]
    #[inline]
    pub fn get_slots(&self, as_id: u16) -> Option<&S> {
        self.cache
            .root
            .spaces
            .get(usize::from(as_id))
            .map(Deref::deref)
    }

    /// The slot holding `gfn` in address space `as_id`, through the reader's last-used slot
    /// (KVM's `kvm_vcpu_gfn_to_memslot`): the slot the previous lookup found is tried first, as
    /// long as no new version has been published since; a miss searches the version and caches
    /// the result.
    ///
    /// Time: O(1) on a hit (an address-space compare and a range check), O(log n) on a miss; no
    /// allocation.
    #[inline]
    pub fn gfn_to_memslot(&mut self, as_id: u16, gfn: Gfn) -> Option<&Memslot<BackingOf<S>>> {
        let cache = &mut *self.cache;
        if cache
            .last_used
            .as_ref()
            .map(Borrow::borrow)
            .is_some_and(|s: &Memslot<_>| s.as_id() == as_id && s.contains(gfn))
        {
            return cache.last_used.as_ref().map(Borrow::borrow);
        }
        Self::miss(cache, as_id, gfn)
    }

    /// The search behind a cache miss, kept out of line so that the hit path stays small and
    /// the same for every version type.
    #[cold]
    #[inline(never)]
    fn miss(cache: &mut ReaderCache<S>, as_id: u16, gfn: Gfn) -> Option<&Memslot<BackingOf<S>>> {
        let found = cache
            .root
            .spaces
            .get(usize::from(as_id))?
            .find_slot(gfn)?
            .clone();
        Some(Borrow::borrow(&*cache.last_used.insert(found)))
    }

    /// Address space `as_id`'s version and the reader's last-used slot after a cached lookup of
    /// `gfn` (the slot holding `gfn` if any does): where a byte access starts.
    pub(crate) fn lookup_from(
        &mut self,
        as_id: u16,
        gfn: Gfn,
    ) -> Option<(&S, Option<&Memslot<BackingOf<S>>>)> {
        self.gfn_to_memslot(as_id, gfn);
        let cache = &*self.cache;
        let set = cache.root.spaces.get(usize::from(as_id))?;
        // The last-used slot may belong to another address space when `gfn` is in a hole.
        let last = cache.last_used.as_ref().map(Borrow::borrow);
        Some((set, last.filter(|s: &&Memslot<_>| s.as_id() == as_id)))
    }

    /// Marks `gfn` dirty in its slot's bitmap (KVM's `mark_page_dirty`); ignored when no slot
    /// holds `gfn`, the slot does not log, or the address space does not exist.
    ///
    /// Time: as [`gfn_to_memslot`](Self::gfn_to_memslot), plus one atomic OR.
    #[inline]
    pub fn mark_page_dirty(&mut self, as_id: u16, gfn: Gfn) {
        if let Some(slot) = self.gfn_to_memslot(as_id, gfn) {
            if let Some(bitmap) = slot.dirty_bitmap() {
                bitmap.set(gfn.0 - slot.base_gfn().0);
            }
        }
    }
}

impl<S: Version> Drop for ReadGuard<'_, S> {
    #[inline]
    fn drop(&mut self) {
        #[cfg(all(debug_assertions, not(loom)))]
        section_tracking::leave(self.reader.published.identity());
        self.reader.entry.seq.store(self.seq + 1, Ordering::Release);
    }
}

impl<S: Version> fmt::Debug for ReadGuard<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadGuard")
            .field("version", &self.cache.root.version)
            .finish_non_exhaustive()
    }
}

/// Debug builds only: which VMs this thread is inside a section of, so that a writer call from
/// inside one panics with an explanation instead of waiting for itself forever.
#[cfg(all(debug_assertions, not(loom)))]
mod section_tracking {
    use std::cell::RefCell;

    thread_local! {
        static INSIDE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn enter(vm: usize) {
        INSIDE.with(|inside| inside.borrow_mut().push(vm));
    }

    pub(super) fn leave(vm: usize) {
        INSIDE.with(|inside| {
            let mut inside = inside.borrow_mut();
            if let Some(i) = inside.iter().rposition(|&v| v == vm) {
                inside.swap_remove(i);
            }
        });
    }

    pub(super) fn assert_not_inside(vm: usize) {
        let inside = INSIDE.with(|inside| inside.borrow().contains(&vm));
        assert!(
            !inside,
            "a Memslots writer call (update, transaction commit or synchronize) was made from \
             inside a read-side section of the same VM on the same thread: it would wait for \
             that section forever; drop the ReadGuard first"
        );
    }
}
