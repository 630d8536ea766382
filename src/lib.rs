//! KVM-style guest memory slots, kept as immutable persistent trees so that vCPU threads look up
//! guest addresses without locks while a writer creates, deletes, moves and re-flags slots in
//! O(log n) and publishes each new version with one atomic swap.
//!
//! This is the user-space counterpart of Linux KVM's "scalable memslots" (2021), which replaced a
//! gfn-sorted array, copied whole on every update and scanned linearly for host-address lookups,
//! with a gfn tree, an hva interval tree and an id index sharing one copy of each slot:
//!
//! - [`MemslotSet`]: one address space's version. Three persistent B+trees (by gfn, by host
//!   address with each subtree's largest end cached, by id) share `Arc`'d [`Memslot`]s; an update
//!   copies only the paths it changes, and every version stays valid as long as it is held.
//! - [`Memslots`]: the VM. [`set_user_memory_region`](Memslots::set_user_memory_region) checks a
//!   [`UserspaceMemoryRegion`] exactly as `KVM_SET_USER_MEMORY_REGION` does (same order, same
//!   errno, same [`ChangeKind`]s, the `INVALID` step for delete and move, the same generations)
//!   and publishes the result; [`snapshot`](Memslots::snapshot) hands out a version.
//! - [`baseline`]: the array design the kernel replaced, behind the same traits
//!   ([`MemslotRead`], [`MemslotStore`]): the oracle for tests and the "Before" of the benchmarks.
//! - [`tree`]: the persistent B+tree with per-subtree summaries underneath.
//! - [`MemslotSet::diff`]: what changed between two versions, in O(k log n) for k changed slots,
//!   since subtrees the versions share are skipped; [`replay`] drives a [`MemoryListener`] (a
//!   device backend, an IOMMU, a hypervisor's slot table) from one version to another, every
//!   removal before any addition.
//! - [`Layout`]: a whole VM's slots as plain data, to save and restore
//!   ([`Memslots::layout`], [`Memslots::from_layout`]) and compare.
//!
//! ```
//! use memslots::{ChangeKind, Gfn, Hva, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
//!
//! let vm = Memslots::new(Limits::default());
//! // 1 GiB of RAM at guest physical 0, mapped at some host address, with dirty logging.
//! let ram = UserspaceMemoryRegion::new(0, MemFlags::LOG_DIRTY_PAGES, 0, 1 << 30, 0x7f00_0000_0000);
//! assert_eq!(vm.set_user_memory_region(ram)?, ChangeKind::Create);
//!
//! // A vCPU translates a guest frame to a host address.
//! let slots = vm.snapshot(0);
//! let slot = slots.find(Gfn(0x1234)).expect("in RAM");
//! assert_eq!(slot.gfn_to_hva(Gfn(0x1234)), Some(Hva(0x7f00_0123_4000)));
//!
//! // Overlapping guest ranges are refused with KVM's errno, and nothing changes.
//! let clash = UserspaceMemoryRegion::new(1, MemFlags::empty(), 1 << 29, 1 << 20, 0x7e00_0000_0000);
//! assert_eq!(vm.set_user_memory_region(clash).unwrap_err().errno(), memslots::errno::EEXIST);
//!
//! // The snapshot taken before a delete still sees the slot.
//! vm.set_user_memory_region(UserspaceMemoryRegion::delete(0))?;
//! assert!(vm.snapshot(0).is_empty());
//! assert_eq!(slots.len(), 1);
//! # Ok::<(), memslots::Error>(())
//! ```
//!
//! # Cargo features
//!
//! - `serde`: [`Layout`] and [`UserspaceMemoryRegion`] implement `Serialize` and `Deserialize`.
//! - `vm-memory`: `Layout::from_guest_memory` builds a layout from a rust-vmm
//!   `GuestMemoryMmap` (or any `GuestMemoryBackend`), and `MemslotSet::guest_regions` lists a
//!   version as vm-memory regions.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![doc(test(attr(deny(warnings))))]

pub mod baseline;
mod change;
mod diff;
mod dirty;
mod error;
mod hooks;
#[cfg(feature = "vm-memory")]
mod interop;
mod layout;
mod listener;
mod publish;
mod reader;
mod set;
mod slot;
mod sync;
pub mod tree;
mod types;
mod view;
mod vm;

pub use diff::{Changes, Diff};
pub use error::{errno, Error, LimitsError, SlotField};
pub use hooks::{ArchHooks, HookError, NoHooks};
#[cfg(feature = "vm-memory")]
pub use interop::{FromGuestMemoryError, GuestRegions};
pub use layout::Layout;
pub use listener::{replay, MemoryListener};
pub use publish::Transaction;
pub use reader::{ReadGuard, Reader};
pub use set::{GfnRange, HvaRange, Iter, MemslotSet};
pub use slot::{DirtyBitmap, HvaError, Memslot};
pub use types::{
    ChangeKind, Gfn, Gpa, Hva, Limits, MemFlags, SlotId, UserspaceMemoryRegion, MAX_ADDRESS_SPACES,
};
pub use view::{MemslotRead, MemslotStore};
pub use vm::{Memslots, Snapshot};
