//! Conversions to and from kvm-bindings' uAPI structs (feature `kvm-bindings`), so a request
//! passes between memslots and `kvm-ioctls` field for field.

use kvm_bindings::kvm_userspace_memory_region;

use crate::types::UserspaceMemoryRegion;

impl From<UserspaceMemoryRegion> for kvm_userspace_memory_region {
    /// The same request as kvm-bindings' struct.
    ///
    /// ```
    /// use kvm_bindings::kvm_userspace_memory_region;
    /// use memslots::{MemFlags, UserspaceMemoryRegion};
    /// let ram = UserspaceMemoryRegion::new(1, MemFlags::READONLY, 0x10_0000, 0x4000, 0x7000_0000);
    /// let raw = kvm_userspace_memory_region::from(ram);
    /// assert_eq!((raw.slot, raw.flags, raw.memory_size), (1, 2, 0x4000));
    /// assert_eq!(UserspaceMemoryRegion::from(raw), ram);
    /// ```
    fn from(r: UserspaceMemoryRegion) -> Self {
        Self {
            slot: r.slot,
            flags: r.flags,
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
        }
    }
}

impl From<kvm_userspace_memory_region> for UserspaceMemoryRegion {
    /// The same request as memslots' struct.
    fn from(r: kvm_userspace_memory_region) -> Self {
        Self {
            slot: r.slot,
            flags: r.flags,
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
        }
    }
}
