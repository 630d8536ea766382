//! Drive a KVM VM's memory slots through [`memslots`].
//!
//! - [`probe_limits`]: the [`memslots::Limits`] of a VM, from its capabilities
//!   (`KVM_CAP_NR_MEMSLOTS`, `KVM_CAP_MULTI_ADDRESS_SPACE`, `KVM_CAP_READONLY_MEM`) and, for the
//!   two rules no capability reports (the user address bound and x86's largest gfn), from probes
//!   of a scratch VM.
//! - [`ioctl`]: the memslot and dirty-log ioctls, each `unsafe` block with the argument that makes
//!   it sound; `KVM_CLEAR_DIRTY_LOG`, which `kvm-ioctls` lacks, included.
//!
//! The core crate stays `forbid(unsafe_code)`; the only `unsafe` of the workspace is here.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod ioctl;
mod limits;

pub use limits::probe_limits;
