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
//! - [`Reader`] / [`ReadGuard`]: per-vCPU handles. A read-side section is wait-free (no lock, no
//!   allocation, one fence, or in the [`ReadFlavour::Membarrier`] flavour none: the writer calls
//!   `membarrier(2)` instead), keeps a last-used slot like KVM's `vcpu->last_used_slot`, and is
//!   what grace periods ([`Memslots::synchronize`], the waiting updates) wait for.
//! - [`GracePeriod`]: a grace period started and not waited for, as the non-waiting publications
//!   ([`Memslots::publish_user_memory_region`], [`Transaction::publish`]) return it: polled with
//!   [`Memslots::poll_synchronize`] (the kernel's `poll_state_synchronize_srcu`) or waited for.
//! - [`Transaction`]: several requests published as one version, all or nothing; [`ArchHooks`]:
//!   the `kvm_arch_*` calls (`prepare`, `commit`, `flush_shadow`); dirty logging through
//!   [`Reader::mark_page_dirty`], [`Memslots::get_dirty_log`] and [`Memslots::clear_dirty_log`].
//! - [`Vm<S>`](Vm): the VM generic over how a version is stored; [`Memslots<B>`](Memslots) is
//!   `Vm<MemslotSet<B>>`, and `baseline::ArrayMemslots` (with the `baseline` feature) is the
//!   array design the kernel replaced, run through the same code: the oracle for tests and the
//!   "Before" of the benchmarks. [`MemslotRead`] reads a version of either design.
//! - [`tree`]: the persistent B+tree with per-subtree summaries underneath.
//! - [`MemslotSet::diff`]: what changed between two versions, in O(k log n) for k changed slots,
//!   since subtrees the versions share are skipped; [`replay`] drives a [`MemoryListener`] (a
//!   device backend, an IOMMU, a hypervisor's slot table) from one version to another, every
//!   removal before any addition.
//! - [`Layout`]: a whole VM's slots as plain data, to save and restore
//!   ([`Memslots::layout`], [`Memslots::from_layout`]) and compare.
//! - Slots that own their memory: [`Memslots<B>`](Memslots) keeps a backing `B` in each slot
//!   ([`Memslots::backed`], [`Memslots::create_memory_region`]), moved with the slot and dropped
//!   by ownership once no version, snapshot or reader can reach it; with `B:` [`Backing`]
//!   ([`GuestRam`], vm-memory's `MmapRegion`), versions and read-side sections read and write
//!   guest physical memory with KVM's rules ([`MemslotSet::read_guest`],
//!   [`MemslotSet::write_guest`], [`ReadGuard::write_guest_obj`]), and with the `vm-memory`
//!   feature they are rust-vmm guest memory that virtio devices run on unchanged.
//!
//! The read / write / snapshot cycle:
//!
//! ```
//! use std::sync::Arc;
//! use memslots::{ChangeKind, Diff, Gfn, Hva, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
//!
//! let vm = Arc::new(Memslots::new(Limits::default()));
//! // 1 GiB of RAM at guest physical 0, mapped at some host address, with dirty logging.
//! let ram = UserspaceMemoryRegion::new(0, MemFlags::LOG_DIRTY_PAGES, 0, 1 << 30, 0x7f00_0000_0000);
//! assert_eq!(vm.set_user_memory_region(ram)?, ChangeKind::Create);
//! let before = vm.snapshot(0); // a version to keep: O(1), never changes
//!
//! // Read: a vCPU thread translates a guest frame and dirties it, without taking a lock.
//! let reader = vm.reader();
//! let vcpu = std::thread::spawn(move || {
//!     let mut section = reader.read();
//!     let hva = section.gfn_to_memslot(0, Gfn(0x1234)).and_then(|s| s.gfn_to_hva(Gfn(0x1234)));
//!     section.mark_page_dirty(0, Gfn(0x1234));
//!     hva
//! });
//! assert_eq!(vcpu.join().unwrap(), Some(Hva(0x7f00_0123_4000)));
//!
//! // Write: KVM's rules and errno. An overlap is refused and changes nothing; a move returns once
//! // no vCPU can still be using the old position.
//! let clash = UserspaceMemoryRegion::new(1, MemFlags::empty(), 1 << 29, 1 << 20, 0x7e00_0000_0000);
//! assert_eq!(vm.set_user_memory_region(clash).unwrap_err().errno(), memslots::errno::EEXIST);
//! let moved = UserspaceMemoryRegion { guest_phys_addr: 1 << 32, ..ram };
//! assert_eq!(vm.set_user_memory_region(moved)?, ChangeKind::Move);
//!
//! // Snapshot: the old version still answers as it did; a diff says what changed.
//! assert_eq!(before.find(Gfn(0x1234)).map(|s| s.id()), Some(0));
//! let after = vm.snapshot(0);
//! assert!(after.find(Gfn(0x1234)).is_none());
//! assert!(matches!(before.diff(&after).collect::<Vec<_>>()[..], [Diff::Changed { .. }]));
//! assert_eq!(vm.get_dirty_log(0)?[0x1234 / 64], 1 << (0x1234 % 64)); // logging moved with the slot
//! # Ok::<(), memslots::Error>(())
//! ```
//!
//! Guest memory: slots that carry their backing, and byte access through them.
//!
//! ```
//! use memslots::{Gpa, GuestRam, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
//!
//! let vm: Memslots<GuestRam> = Memslots::backed(Limits::default());
//! let ram = UserspaceMemoryRegion::new(0, MemFlags::LOG_DIRTY_PAGES, 0, 1 << 20, 0x7f00_0000_0000);
//! vm.create_memory_region(ram, GuestRam::new(1 << 20))?;
//!
//! // A device thread writes a descriptor; the vCPU reads it back through its section.
//! let device = vm.snapshot(0);
//! device.write_guest_obj(Gpa(0x2000), [0xfeed_u32, 0xf00d])?;
//! let reader = vm.reader();
//! assert_eq!(reader.read().read_guest_obj::<[u32; 2]>(0, Gpa(0x2000))?, [0xfeed, 0xf00d]);
//! assert_eq!(vm.get_dirty_log(0)?[0], 1 << 2); // the device's write is in the dirty log
//!
//! // Moving the slot moves its memory: the bytes follow, nothing is copied.
//! vm.set_user_memory_region(UserspaceMemoryRegion { guest_phys_addr: 1 << 30, ..ram })?;
//! assert_eq!(vm.snapshot(0).read_guest_obj::<u32>(Gpa((1 << 30) + 0x2000))?, 0xfeed);
//! // A write past the slot, or into a hole, is KVM's EFAULT and names the address.
//! let err = vm.snapshot(0).write_guest(Gpa(0x2000), &[0]).unwrap_err();
//! assert_eq!((err.errno(), err.to_string()), (memslots::errno::EFAULT, "no slot holds guest physical address 0x2000".into()));
//! # Ok::<(), memslots::Error>(())
//! ```
//!
//! # Cargo features
//!
//! - `serde`: [`Layout`] and [`UserspaceMemoryRegion`] implement `Serialize` and `Deserialize`.
//! - `vm-memory`: rust-vmm's vm-memory 0.18 traits, nothing else of it: a version whose slots
//!   are backed by a `VolatileMemory` is a `GuestMemoryBackend` (so `GuestMemory` and
//!   `Bytes<GuestAddress>`), `Memslots` is a `GuestAddressSpace`, `Layout::from_guest_memory`
//!   builds a layout from any `GuestMemoryBackend`, and `MemslotSet::guest_regions` lists a
//!   version as vm-memory regions.
//! - `vm-memory-mmap`: `vm-memory` with its mmap backend: `MmapRegion` is a slot [`Backing`].
//! - `kvm-bindings`: `From` conversions between [`UserspaceMemoryRegion`] and kvm-bindings'
//!   `kvm_userspace_memory_region`, for passing requests to `kvm-ioctls` (the `memslots-kvm`
//!   crate of this workspace drives a KVM VM that way).
//! - `baseline`: the `baseline` module, the array design KVM replaced in 2021, for differential
//!   tests and comparisons; O(n) per update by design, not for production.
//! - `invariants`: the invariant checkers, `MemslotSet::check_invariants` (with its
//!   `SetViolation`) and the tree's `check_invariants`, `depth` and `node_count`, for tests and
//!   fuzzing of this crate or of code built on it.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod access;
mod backing;
#[cfg(feature = "baseline")]
#[cfg_attr(docsrs, doc(cfg(feature = "baseline")))]
pub mod baseline;
mod change;
mod diff;
mod dirty;
mod error;
mod hooks;
#[cfg(feature = "vm-memory")]
mod interop;
#[cfg(feature = "kvm-bindings")]
mod kvm_uapi;
mod layout;
mod listener;
mod log_mode;
mod publish;
mod reader;
mod set;
mod slot;
mod sync;
pub mod tree;
mod types;
mod view;
mod vm;

pub use backing::{Backing, GuestRam};
pub use diff::{Changes, Diff};
pub use error::{errno, Error, HookError, SlotField};
pub use hooks::{ArchHooks, NoHooks};
#[cfg(feature = "vm-memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
pub use interop::{FromGuestMemoryError, GuestRegions, MemoryGuard};
pub use layout::Layout;
pub use listener::{replay, MemoryListener};
pub use log_mode::DirtyLogMode;
pub use publish::Transaction;
pub use reader::{GracePeriod, ReadFlavour, ReadGuard, Reader};
#[cfg(any(test, feature = "invariants"))]
#[cfg_attr(docsrs, doc(cfg(feature = "invariants")))]
pub use set::SetViolation;
pub use set::{GfnRange, HvaRange, Iter, MemslotSet};
pub use slot::{DirtyBitmap, HvaError, Memslot};
pub use types::{
    ChangeKind, Gfn, Gpa, Hva, Limits, LimitsError, MemFlags, SlotId, UserspaceMemoryRegion,
    MAX_ADDRESS_SPACES,
};
pub use view::{MemslotRead, Version};
pub use vm::{Memslots, Snapshot, Vm};

/// Documentation with no type of its own to live on.
pub mod docs {
    #[doc = include_str!("docs/protocol.md")]
    pub mod protocol {}

    #[doc = include_str!("docs/kernel_differences.md")]
    pub mod kernel_differences {}
}

/// README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
