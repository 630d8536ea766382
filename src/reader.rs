//! Read-side sections and grace periods: [`Reader`], [`ReadGuard`], [`ReadFlavour`],
//! [`GracePeriod`], and the registry a writer scans to wait for readers.
//!
//! The protocol, the ordering arguments for both flavours and the reclamation rule are written
//! out in [`docs::protocol`](crate::docs::protocol), where the published documentation shows
//! them; this module implements exactly that.

use core::borrow::Borrow;
use core::cell::{RefCell, RefMut};
use core::fmt;
use core::ops::Deref;
use std::sync::Arc;

use crate::slot::Memslot;
use crate::sync::{
    backoff, compiler_barrier, fence, lock, membarrier, membarrier_available, AtomicU64, Mutex,
    Ordering, RootCell, RootGuard,
};
use crate::types::Gfn;
use crate::view::{BackingOf, Version};
use arrayvec::ArrayVec;

/// The published state: every address space's current version, swapped as one, so a reader pays
/// one load however many address spaces it looks at, and a transaction spanning address spaces
/// becomes visible all at once.
#[derive(Debug)]
pub(crate) struct Root<S> {
    pub(crate) spaces: Spaces<Arc<S>>,
    /// Which publication this root is (they are numbered from 0); readers compare the
    /// published counter with their cached root's.
    pub(crate) publication: u64,
}

/// One value per address space, inline: [`Limits`] allows at most
/// [`MAX_ADDRESS_SPACES`](crate::types::MAX_ADDRESS_SPACES), and an update should not pay an
/// allocation for a list of two.
pub(crate) type Spaces<T> = ArrayVec<T, { crate::types::MAX_ADDRESS_SPACES }>;

/// What readers share with the writer: the root, the publication counter, and the registry.
pub(crate) struct Published<S> {
    root: RootCell<Root<S>>,
    /// The current root's `publication`, stored after the root.
    publication: AtomicU64,
    readers: Mutex<Registry>,
    /// Replaced roots that readers may still hold (writer only).
    retired: Mutex<Vec<Arc<Root<S>>>>,
    /// What a quiesced reader holds instead of a version: no slot, and a publication number no
    /// publication reaches, so its next section loads the current root.
    idle_root: Arc<Root<S>>,
    /// The flavour [`Reader`]s get unless they ask: chosen once, when the VM is created.
    default_flavour: ReadFlavour,
    /// Loom only: drop the fences, to show the model checker catches the broken protocol.
    #[cfg(loom)]
    pub(crate) weak_ordering: bool,
}

/// How many replaced roots a run of non-waiting publications may leave unexamined before one of
/// them frees the unheld ones itself (see [`Published::publish`]).
const DEFERRED_ROOTS: usize = 32;

/// The registered readers, and how many of them need the writer's `membarrier`.
#[derive(Default)]
struct Registry {
    entries: Vec<Arc<ReaderEntry>>,
    membarrier_readers: usize,
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
    flavour: ReadFlavour,
}

/// How a [`Reader`] orders its section entry against the writer's grace periods.
///
/// Both give the same guarantee (the arguments are in this module's source documentation); they
/// differ in who pays for the ordering:
///
/// | flavour | section entry | grace period |
/// |---|---|---|
/// | [`Fence`](Self::Fence) | one `fence(SeqCst)` | one `fence(SeqCst)` and an O(readers) scan |
/// | [`Membarrier`](Self::Membarrier) | a compiler fence: no instruction | also one `membarrier(2)` call (microseconds) |
///
/// A VM picks [`best`](Self::best) when it is created (registering the process for
/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` then); [`Memslots::reader_with_flavour`](crate::Memslots::reader_with_flavour)
/// asks for one explicitly. Readers of both flavours may share a VM.
///
/// ```
/// use memslots::{Limits, Memslots, ReadFlavour};
/// let vm = Memslots::new(Limits::default());
/// assert_eq!(vm.reader().flavour(), ReadFlavour::best());
/// assert_eq!(vm.reader_with_flavour(ReadFlavour::Fence).flavour(), ReadFlavour::Fence);
/// // Asking for membarrier where the kernel refuses it gives the fence flavour.
/// let asked = vm.reader_with_flavour(ReadFlavour::Membarrier).flavour();
/// assert_eq!(asked == ReadFlavour::Membarrier, ReadFlavour::membarrier_available());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadFlavour {
    /// The reader executes `fence(SeqCst)` on entering a section; the writer one per grace period.
    Fence,
    /// The reader executes only a compiler fence; the writer makes every CPU running a thread of
    /// the process execute a full barrier with `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`
    /// (liburcu's "memb" flavour, the kernel's asymmetric barriers).
    Membarrier,
}

impl ReadFlavour {
    /// [`Membarrier`](Self::Membarrier) where the kernel offers and accepts it, else
    /// [`Fence`](Self::Fence). The first call registers the process with
    /// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`; the answer is then remembered.
    ///
    /// Time: one or two system calls the first time in a process, O(1) after.
    #[must_use]
    pub fn best() -> Self {
        if Self::membarrier_available() {
            Self::Membarrier
        } else {
            Self::Fence
        }
    }

    /// Whether this process can use `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (always false
    /// under loom and off Linux).
    ///
    /// Time: as [`best`](Self::best).
    #[must_use]
    pub fn membarrier_available() -> bool {
        membarrier_available()
    }

    /// `self`, or [`Fence`](Self::Fence) if `self` is [`Membarrier`](Self::Membarrier) and the
    /// kernel does not offer it.
    fn or_fallback(self) -> Self {
        match self {
            Self::Membarrier if !membarrier_available() => Self::Fence,
            flavour => flavour,
        }
    }
}

/// A grace period that has started: it ends once every read-side section that was open when it
/// started has ended (sections that began later do not count). The cookie of
/// [`Memslots::start_grace_period`](crate::Memslots::start_grace_period) and of the non-waiting
/// publications, like the kernel's `start_poll_synchronize_srcu`; poll it with
/// [`is_done`](Self::is_done) or wait for it with [`wait`](Self::wait). Dropping it waits for
/// nothing.
///
/// | operation | cost |
/// |---|---|
/// | [`is_done`](Self::is_done) | O(k) loads, for the k sections open at the start |
/// | [`wait`](Self::wait) | as `is_done`, plus the wait |
/// | holding it | k registry entries kept alive; no reader is held up |
///
/// ```
/// use memslots::{Limits, Memslots};
/// let vm = Memslots::new(Limits::default());
/// let reader = vm.reader();
/// let section = reader.read();
/// let grace = vm.start_grace_period();
/// assert!(!grace.is_done()); // the section was open when it started
/// drop(section);
/// assert!(grace.is_done());
/// let later = reader.read();
/// let second = vm.start_grace_period();
/// assert!(grace.is_done() && !second.is_done()); // `later` counts for the second one only
/// drop(later);
/// ```
#[must_use = "a grace period is only useful to poll or wait for"]
pub struct GracePeriod {
    /// The entries that were odd at the start, with the value each had.
    inside: Vec<(Arc<ReaderEntry>, u64)>,
    #[cfg(all(debug_assertions, not(loom)))]
    vm: usize,
}

impl GracePeriod {
    /// Whether every section that was open when this grace period started has ended. Once it
    /// returns true, everything those sections did happens before what the caller does next.
    ///
    /// Time: O(k) for the k sections open at the start; no lock, no allocation.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.inside
            .iter()
            .all(|(entry, seq)| entry.seq.load(Ordering::Acquire) != *seq)
    }

    /// Waits until [`is_done`](Self::is_done): spins briefly, then yields, then sleeps in short
    /// steps.
    ///
    /// Time: O(k) plus the wait.
    ///
    /// # Panics
    /// In debug builds, if this thread is inside a read-side section of the same VM (it could be
    /// waiting for itself).
    pub fn wait(&self) {
        #[cfg(all(debug_assertions, not(loom)))]
        section_tracking::assert_not_inside(self.vm);
        for (entry, seq) in &self.inside {
            let mut round = 0;
            while entry.seq.load(Ordering::Acquire) == *seq {
                backoff(round);
                round = round.saturating_add(1);
            }
        }
    }

    /// How many sections this grace period waits for (those open when it started, whether or
    /// not they have ended since).
    #[must_use]
    pub fn sections(&self) -> usize {
        self.inside.len()
    }
}

impl fmt::Debug for GracePeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracePeriod")
            .field("sections", &self.inside.len())
            .field("done", &self.is_done())
            .finish()
    }
}

impl<S> Published<S> {
    pub(crate) fn new(root: Root<S>) -> Self {
        let publication = root.publication;
        Self {
            root: RootCell::new(Arc::new(root)),
            publication: AtomicU64::new(publication),
            readers: Mutex::new(Registry::default()),
            retired: Mutex::new(Vec::new()),
            idle_root: Arc::new(Root {
                spaces: crate::reader::Spaces::new(),
                publication: u64::MAX,
            }),
            default_flavour: ReadFlavour::best(),
            #[cfg(loom)]
            weak_ordering: false,
        }
    }

    /// The current root, for the writer and for snapshots.
    pub(crate) fn root(&self) -> Arc<Root<S>> {
        self.root.load_full()
    }

    /// The current root as a guard, for short-lived handles that should not write to its
    /// reference count.
    pub(crate) fn root_guard(&self) -> RootGuard<Root<S>> {
        self.root.load()
    }

    /// Publishes `root`; readers entering from now on see it (or a later one). Its `publication`
    /// must be greater than the current one. Only the writer calls this.
    ///
    /// With `reclaim_now`, the roots no reader holds any more are freed here; without it (the
    /// non-waiting publications) that is left to the next [`reclaim`](Self::reclaim) (a poll, a
    /// grace period, a waiting publication), unless more than [`DEFERRED_ROOTS`] roots are
    /// waiting, so that freeing a deleted slot's backing (an `munmap`, milliseconds for a large
    /// one) happens when the caller polls, not inside the update.
    pub(crate) fn publish(&self, root: Root<S>, reclaim_now: bool) {
        let publication = root.publication;
        let old = self.root.swap(Arc::new(root));
        self.publication.store(publication, Ordering::Release);
        self.retire(old, reclaim_now);
    }

    /// Keeps a replaced root until no reader holds it, so that freeing a version's memory is
    /// the writer's work, never a reader's: a reader only drops its reference when it reloads.
    /// A root is handed out only while current, so once retired its count can only fall; when
    /// the list's reference is the last one, nobody else can reach it and dropping it here frees
    /// it. The list holds at most one root per reader plus the ones freed at the next publish.
    fn retire(&self, old: Arc<Root<S>>, reclaim_now: bool) {
        let mut retired = lock(&self.retired);
        retired.push(old);
        let waiting = retired.len();
        drop(retired);
        if reclaim_now || waiting > DEFERRED_ROOTS {
            self.reclaim();
        }
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
        self.start_grace_period().wait();
        self.reclaim();
    }

    /// Starts a grace period: notes every section open now. Everything published before this
    /// call is seen by any section that is not noted (see the module documentation).
    pub(crate) fn start_grace_period(&self) -> GracePeriod {
        self.fence();
        let registry = lock(&self.readers);
        if registry.membarrier_readers > 0 {
            membarrier();
        }
        let inside = registry
            .entries
            .iter()
            .filter_map(|entry| {
                let seq = entry.seq.load(Ordering::Acquire);
                (seq % 2 == 1).then(|| (Arc::clone(entry), seq))
            })
            .collect();
        GracePeriod {
            inside,
            #[cfg(all(debug_assertions, not(loom)))]
            vm: self.identity(),
        }
    }

    /// A grace period with nothing to wait for, for a publication that published nothing.
    pub(crate) fn no_grace_period(&self) -> GracePeriod {
        GracePeriod {
            inside: Vec::new(),
            #[cfg(all(debug_assertions, not(loom)))]
            vm: self.identity(),
        }
    }

    /// The flavour readers get unless they ask for one.
    pub(crate) fn default_flavour(&self) -> ReadFlavour {
        self.default_flavour
    }

    #[inline]
    fn fence(&self) {
        #[cfg(loom)]
        if self.weak_ordering {
            return;
        }
        fence(Ordering::SeqCst);
    }

    /// The barrier between a section's entry store and its counter load.
    #[inline]
    fn entry_barrier(&self, flavour: ReadFlavour) {
        match flavour {
            ReadFlavour::Fence => self.fence(),
            ReadFlavour::Membarrier => compiler_barrier(),
        }
    }

    fn register(&self, flavour: ReadFlavour) -> Arc<ReaderEntry> {
        let entry = Arc::new(ReaderEntry {
            seq: AtomicU64::new(0),
            flavour,
        });
        let mut registry = lock(&self.readers);
        registry.entries.push(Arc::clone(&entry));
        registry.membarrier_readers += usize::from(flavour == ReadFlavour::Membarrier);
        entry
    }

    fn unregister(&self, entry: &Arc<ReaderEntry>) {
        let mut registry = lock(&self.readers);
        registry.entries.retain(|e| !Arc::ptr_eq(e, entry));
        registry.membarrier_readers -= usize::from(entry.flavour == ReadFlavour::Membarrier);
    }

    #[cfg(all(debug_assertions, not(loom)))]
    fn identity(&self) -> usize {
        self as *const Self as usize
    }
}

impl<S> fmt::Debug for Published<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Published")
            .field("publication", &self.publication.load(Ordering::Relaxed))
            .field("readers", &lock(&self.readers).entries.len())
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
/// | [`read`](Self::read), dropping the guard | O(1): no lock, no allocation, one fence (none in the membarrier flavour) |
/// | [`quiesce`](Self::quiesce) | O(1) |
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
    flavour: ReadFlavour,
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
    /// A reader of `flavour`, or of the fence flavour where membarrier is not available.
    pub(crate) fn new(published: Arc<Published<S>>, flavour: ReadFlavour) -> Self {
        let flavour = flavour.or_fallback();
        let entry = published.register(flavour);
        let root = published.root();
        Self {
            published,
            entry,
            flavour,
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
        self.published.entry_barrier(self.flavour);
        let publication = self.published.publication.load(Ordering::Acquire);
        if publication != cache.root.publication {
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

    /// How this reader orders its sections (see [`ReadFlavour`]).
    #[must_use]
    pub fn flavour(&self) -> ReadFlavour {
        self.flavour
    }

    /// Lets go of the version this reader keeps between sections (and its last-used slot), so
    /// that an idle reader holds no version at all: call it before a vCPU blocks (a halt, a
    /// paused VM), as a liburcu QSBR thread goes offline. The next section loads the current
    /// version, as after a publication. Without it, an idle reader holds the version of its last
    /// section, and whatever that version's slots own, until its next section.
    ///
    /// Time: O(1).
    ///
    /// # Panics
    /// If this reader is inside a section.
    pub fn quiesce(&self) {
        let Ok(mut cache) = self.cache.try_borrow_mut() else {
            panic!("Reader::quiesce called inside a section");
        };
        cache.root = Arc::clone(&self.published.idle_root);
        cache.last_used = None;
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
/// | dropping it | O(1): one store and one load (and a root load if a publication came meanwhile) |
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

impl<S: Version> ReadGuard<'_, S> {
    /// The reload on leaving, out of line so that leaving stays one store, one load and a
    /// compare that the caller's loop can inline.
    #[cold]
    #[inline(never)]
    fn reload(published: &Published<S>, cache: &mut ReaderCache<S>) {
        cache.root = published.root();
        cache.last_used = None;
    }
}

impl<S: Version> Drop for ReadGuard<'_, S> {
    #[inline]
    fn drop(&mut self) {
        #[cfg(all(debug_assertions, not(loom)))]
        section_tracking::leave(self.reader.published.identity());
        let published = &*self.reader.published;
        self.reader.entry.seq.store(self.seq + 1, Ordering::Release);
        // A publication came while this section was open: take the new root now rather than at
        // the next entry, so that a reader going idle does not keep the old version alive. This
        // is outside the section; the next entry checks the counter as always.
        if published.publication.load(Ordering::Relaxed) != self.cache.root.publication {
            Self::reload(published, &mut self.cache);
        }
    }
}

impl<S: Version> fmt::Debug for ReadGuard<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadGuard")
            .field("publication", &self.cache.root.publication)
            .finish_non_exhaustive()
    }
}

/// Debug builds only: which VMs this thread is inside a section of, so that a writer call from
/// inside one panics with an explanation instead of waiting for itself forever.
#[cfg(all(debug_assertions, not(loom)))]
mod section_tracking {
    use std::cell::RefCell;

    use crate::sync::ThreadMarks;

    thread_local! {
        static INSIDE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn enter(vm: usize) {
        ThreadMarks(&INSIDE).add(vm);
    }

    pub(super) fn leave(vm: usize) {
        ThreadMarks(&INSIDE).remove(vm);
    }

    pub(super) fn assert_not_inside(vm: usize) {
        assert!(
            !ThreadMarks(&INSIDE).contains(vm),
            "a Memslots writer call (update, transaction commit or synchronize) was made from \
             inside a read-side section of the same VM on the same thread: it would wait for \
             that section forever; drop the ReadGuard first"
        );
    }
}
