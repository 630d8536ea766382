//! The one place that picks `std` or `loom` synchronization primitives.
//!
//! Everything that takes part in publication and grace periods (the root, the publication counter,
//! the reader registry, the writer lock) imports its primitives from here, so that
//! `RUSTFLAGS="--cfg loom"` model-checks the very code that runs. The dirty bitmaps and the
//! baseline's `lru_slot` are plain data updated with independent atomics, outside the protocol, and
//! use `std` directly.

use std::sync::Arc;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

/// The reader's half of the asymmetric barrier (the membarrier flavour): no instruction, only a
/// stop for the compiler, which may then not move the section's entry store past its counter load.
/// The hardware half is the writer's [`membarrier`]; the argument is in `docs/protocol.md`.
#[inline]
pub(crate) fn compiler_barrier() {
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Whether this process can use `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: asked of the
/// kernel once per process (the command must be supported, and registering for it must succeed;
/// a seccomp filter or an old kernel refuses), then remembered. Never under loom, which cannot
/// model a barrier run on other threads' behalf.
pub(crate) fn membarrier_available() -> bool {
    #[cfg(all(not(loom), any(target_os = "linux", target_os = "android")))]
    {
        use rustix::thread::{membarrier_query, MembarrierCommand};
        static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *REGISTERED.get_or_init(|| {
            let query = membarrier_query();
            query.contains_command(MembarrierCommand::PrivateExpedited)
                && query.contains_command(MembarrierCommand::RegisterPrivateExpedited)
                && rustix::thread::membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok()
        })
    }
    #[cfg(not(all(not(loom), any(target_os = "linux", target_os = "android"))))]
    false
}

/// The writer's half of the asymmetric barrier: every CPU currently running a thread of this
/// process executes a full memory barrier before this returns (threads not running pass one when
/// they are switched in). Costs a system call and an interrupt per such CPU: microseconds.
///
/// # Panics
/// If the kernel refuses the command after [`membarrier_available`] said yes (it cannot: the
/// only refusal is for a process that did not register, and registration is never undone). No
/// fallback is possible there, since readers of this flavour rely on it for their ordering.
pub(crate) fn membarrier() {
    #[cfg(all(not(loom), any(target_os = "linux", target_os = "android")))]
    if let Err(error) =
        rustix::thread::membarrier(rustix::thread::MembarrierCommand::PrivateExpedited)
    {
        panic!("membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after registering: {error}");
    }
    #[cfg(not(all(not(loom), any(target_os = "linux", target_os = "android"))))]
    unreachable!("no reader uses the membarrier flavour where membarrier is unavailable");
}

/// Locks `mutex`, ignoring poisoning: every structure behind our locks is replaced whole, never
/// left half-changed, so a panic while holding one leaves it consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One round of waiting for another thread: spin briefly, then yield, then sleep, so a writer
/// waiting out a long read-side section does not burn a core.
pub(crate) fn backoff(round: u32) {
    #[cfg(not(loom))]
    {
        if round < 64 {
            std::hint::spin_loop();
        } else if round < 128 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }
    #[cfg(loom)]
    {
        let _ = round;
        loom::thread::yield_now();
    }
}

/// The atomically replaceable root: `arc-swap` normally (lock-free loads), a mutex under loom
/// (arc-swap is not instrumented for loom). Readers load it only when the publication counter says it
/// changed, so its cost is off the read-side fast path either way.
#[derive(Debug)]
pub(crate) struct RootCell<T> {
    #[cfg(not(loom))]
    cell: arc_swap::ArcSwap<T>,
    #[cfg(loom)]
    cell: Mutex<Arc<T>>,
}

impl<T> RootCell<T> {
    pub(crate) fn new(value: Arc<T>) -> Self {
        Self {
            #[cfg(not(loom))]
            cell: arc_swap::ArcSwap::new(value),
            #[cfg(loom)]
            cell: Mutex::new(value),
        }
    }

    /// The current value without touching its reference count in the common case (arc-swap's
    /// debt slots); an `Arc` clone under loom.
    pub(crate) fn load(&self) -> RootGuard<T> {
        RootGuard {
            #[cfg(not(loom))]
            inner: self.cell.load(),
            #[cfg(loom)]
            inner: self.load_full(),
        }
    }

    pub(crate) fn load_full(&self) -> Arc<T> {
        #[cfg(not(loom))]
        return self.cell.load_full();
        #[cfg(loom)]
        return Arc::clone(&lock(&self.cell));
    }

    /// Replaces the value; returns the one it replaced.
    pub(crate) fn swap(&self, value: Arc<T>) -> Arc<T> {
        #[cfg(not(loom))]
        return self.cell.swap(value);
        #[cfg(loom)]
        return core::mem::replace(&mut *lock(&self.cell), value);
    }
}

/// A value loaded from a [`RootCell`]: keeps it alive as an `Arc` would, but taking and dropping
/// it usually writes only to the loading thread's own arc-swap debt slot, not to the value's
/// shared reference count. A thread has a few such slots; guards beyond them, or a guard
/// cloned, hold a real count.
pub(crate) struct RootGuard<T> {
    #[cfg(not(loom))]
    inner: arc_swap::Guard<Arc<T>>,
    #[cfg(loom)]
    inner: Arc<T>,
}

impl<T> Clone for RootGuard<T> {
    fn clone(&self) -> Self {
        let arc: &Arc<T> = &self.inner;
        Self {
            #[cfg(not(loom))]
            inner: arc_swap::Guard::from_inner(Arc::clone(arc)),
            #[cfg(loom)]
            inner: Arc::clone(arc),
        }
    }
}

impl<T> core::ops::Deref for RootGuard<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

/// Debug builds only: a per-thread list of the VMs a thread is inside of in some sense (a
/// read-side section, the writer lock), so that a call that would wait for the thread itself
/// panics with an explanation instead of hanging.
#[cfg(all(debug_assertions, not(loom)))]
pub(crate) struct ThreadMarks(
    pub(crate) &'static std::thread::LocalKey<std::cell::RefCell<Vec<usize>>>,
);

#[cfg(all(debug_assertions, not(loom)))]
impl ThreadMarks {
    pub(crate) fn add(&self, vm: usize) {
        self.0.with(|marks| marks.borrow_mut().push(vm));
    }

    /// Removes one mark of `vm`, if this thread has one.
    pub(crate) fn remove(&self, vm: usize) {
        self.0.with(|marks| {
            let mut marks = marks.borrow_mut();
            if let Some(i) = marks.iter().rposition(|&v| v == vm) {
                marks.swap_remove(i);
            }
        });
    }

    pub(crate) fn contains(&self, vm: usize) -> bool {
        self.0.with(|marks| marks.borrow().contains(&vm))
    }
}
