//! A plain vm-memory region for the comparisons with rust-vmm's `vm-memory` (no memory behind it:
//! they only look addresses up), carrying the host address that vm-memory's regions have no field
//! for outside the mmap backend.

// The micro bench only looks regions up by guest address; the seed table also reads `hva`.
#![allow(dead_code)]

use vm_memory::{GuestAddress, GuestMemoryRegion, GuestMemoryRegionBytes, GuestUsize};

/// One region: where it starts in the guest, how long it is, where it is mapped in the host.
#[derive(Debug)]
pub(crate) struct PeerRegion {
    pub(crate) start: GuestAddress,
    pub(crate) len: GuestUsize,
    pub(crate) hva: u64,
}

impl GuestMemoryRegion for PeerRegion {
    type B = ();
    fn len(&self) -> GuestUsize {
        self.len
    }
    fn start_addr(&self) -> GuestAddress {
        self.start
    }
    fn bitmap(&self) {}
}

impl GuestMemoryRegionBytes for PeerRegion {}
