//! The update protocol, written once for both designs: validate, classify, build the new version
//! aside, publish it with one atomic root swap.
//!
//! [`Memslots`](crate::Memslots) runs it over [`MemslotSet`](crate::MemslotSet) (trees) and
//! [`ArrayMemslots`](crate::baseline::ArrayMemslots) over the array baseline, so the benchmark's
//! "Before" and "After" differ only in how a version is stored.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;

use crate::change::{self, Origin, SlotLookup};
use crate::error::Error;
use crate::slot::Memslot;
use crate::types::{ChangeKind, Limits, UserspaceMemoryRegion};
use crate::view::MemslotRead;

/// What the protocol needs of a version type.
pub(crate) trait Version: MemslotRead + SlotLookup + Send + Sync + Sized + 'static {
    /// An empty version of address space `as_id`.
    fn empty(as_id: u16, generation: u64, limits: &Limits) -> Self;
    /// A new version with slot `id` replaced by `new` (removed when `None`), at `generation`.
    fn replaced(&self, id: u16, new: Option<Memslot>, generation: u64) -> Self;
}

/// The published state: every address space's current version, swapped as one.
///
/// One root for all address spaces means a reader pays one atomic load however many it looks at.
#[derive(Debug)]
pub(crate) struct Root<S> {
    pub(crate) spaces: Box<[Arc<S>]>,
}

/// What only the writer touches, under the writer lock (KVM's `slots_lock`).
#[derive(Debug, Default)]
struct WriterState {
    /// Pages of every slot in every address space (`nr_memslot_pages`).
    vm_pages: u64,
}

/// A VM's published memslots and its writer side.
#[derive(Debug)]
pub(crate) struct Core<S> {
    limits: Limits,
    root: ArcSwap<Root<S>>,
    writer: Mutex<WriterState>,
}

impl<S: Version> Core<S> {
    pub(crate) fn new(limits: Limits) -> Self {
        let spaces = (0..limits.address_spaces())
            .map(|as_id| Arc::new(S::empty(as_id, u64::from(as_id), &limits)))
            .collect();
        Self {
            limits,
            root: ArcSwap::from_pointee(Root { spaces }),
            writer: Mutex::new(WriterState::default()),
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The current version of `as_id`.
    ///
    /// # Panics
    /// If `as_id` is not below the number of address spaces.
    pub(crate) fn snapshot(&self, as_id: u16) -> Arc<S> {
        let root = self.root.load();
        match root.spaces.get(usize::from(as_id)) {
            Some(space) => Arc::clone(space),
            None => panic!(
                "address space {as_id} does not exist (there are {})",
                root.spaces.len()
            ),
        }
    }

    /// The VM's page count over all address spaces.
    pub(crate) fn total_pages(&self) -> u64 {
        self.lock().vm_pages
    }

    fn lock(&self) -> MutexGuard<'_, WriterState> {
        // A panic while holding the lock leaves no half-made change behind (versions are built
        // aside and published whole), so a poisoned lock is still consistent.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One request, as `kvm_set_memory_region` handles it.
    pub(crate) fn update(
        &self,
        region: &UserspaceMemoryRegion,
        origin: Origin,
    ) -> Result<ChangeKind, Error> {
        let mut writer = self.lock();
        let checked = change::check(&self.limits, region, origin)?;
        let as_id = checked.slot.as_id;
        let current = self.snapshot(as_id);
        let plan = change::classify(&self.limits, checked, &*current, writer.vm_pages)?;
        let id = plan.slot.id;
        let step = u64::from(self.limits.address_spaces());
        let generation = current.generation();
        match plan.kind {
            ChangeKind::Unchanged => return Ok(ChangeKind::Unchanged),
            ChangeKind::Create | ChangeKind::FlagsOnly => {
                self.publish(as_id, current.replaced(id, plan.new, generation + step));
            }
            ChangeKind::Delete | ChangeKind::Move => {
                let old = current
                    .get(id)
                    .ok_or(Error::NoSuchSlot { slot: plan.slot })?;
                // Readers keep finding the slot while it is INVALID, but cannot translate
                // through it; only then does it go away or move.
                let invalid = current.replaced(id, Some(old.invalidated()), generation + step);
                let invalid = self.publish(as_id, invalid);
                self.publish(as_id, invalid.replaced(id, plan.new, generation + 2 * step));
            }
        }
        match plan.kind {
            ChangeKind::Create => writer.vm_pages += region.memory_size >> self.limits.page_shift(),
            ChangeKind::Delete => {
                writer.vm_pages -= current.get(id).map_or(0, Memslot::npages);
            }
            _ => {}
        }
        Ok(plan.kind)
    }

    /// Publishes `version` as address space `as_id`'s current one; returns it.
    fn publish(&self, as_id: u16, version: S) -> Arc<S> {
        let version = Arc::new(version);
        let mut spaces = self.root.load().spaces.to_vec();
        spaces[usize::from(as_id)] = Arc::clone(&version);
        self.root.store(Arc::new(Root {
            spaces: spaces.into_boxed_slice(),
        }));
        version
    }
}
