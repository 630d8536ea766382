//! Drive a KVM VM's memory slots through [`memslots`].
//!
//! - [`probe_limits`]: the [`memslots::Limits`] of a VM, from its capabilities
//!   (`KVM_CAP_NR_MEMSLOTS`, `KVM_CAP_MULTI_ADDRESS_SPACE`, `KVM_CAP_READONLY_MEM`) and, for the
//!   two rules no capability reports (the user address bound and x86's largest gfn), from probes
//!   of a scratch VM.
//! - [`KvmVm`]: a VM fd whose slots change only through [`memslots::Memslots`]: every accepted
//!   change reaches KVM in an order that never overlaps slots, a KVM refusal rolls both sides
//!   back, a slot's memory ([`KvmMemory`]) outlives KVM's use of it, and dirty logs merge KVM's
//!   bitmap (guest writes) with memslots' (device writes through the byte API).
//! - [`ioctl`]: the memslot and dirty-log ioctls, each `unsafe` block with the argument that makes
//!   it sound; `KVM_CLEAR_DIRTY_LOG`, which `kvm-ioctls` lacks, included.
//!
//! The core crate stays `forbid(unsafe_code)`; the only `unsafe` of the workspace is here.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod ioctl;
mod limits;
mod vm;

pub use limits::probe_limits;
pub use vm::{Error, KvmMemory, KvmTransaction, KvmVm};
