//! The crate's one error type, with KVM's errno for each failure.

use core::fmt;

use crate::types::{LimitsError, SlotId};

/// Linux errno values that [`Error::errno`] returns (positive, as `errno` is).
pub mod errno {
    /// No such file or directory: a dirty-log call names a missing slot or one without logging.
    pub const ENOENT: i32 = 2;
    /// I/O error: KVM's answer to broken internal accounting.
    pub const EIO: i32 = 5;
    /// Out of memory.
    pub const ENOMEM: i32 = 12;
    /// Bad address: a buffer too short for the call.
    pub const EFAULT: i32 = 14;
    /// File exists: the new slot's gfn range overlaps another slot.
    pub const EEXIST: i32 = 17;
    /// Invalid argument: every malformed request.
    pub const EINVAL: i32 = 22;
}

/// Which immutable property of an existing slot a request tried to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotField {
    /// `userspace_addr`.
    UserspaceAddr,
    /// `memory_size` (the page count).
    Size,
    /// The `READONLY` flag.
    ReadOnly,
}

impl core::fmt::Display for SlotField {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::UserspaceAddr => "userspace_addr",
            Self::Size => "memory_size",
            Self::ReadOnly => "the READONLY flag",
        })
    }
}

/// A hook's refusal: the errno to return and a message. It reaches the caller as
/// [`Error::Hook`](crate::Error::Hook).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HookError {
    /// The positive errno the request fails with (KVM passes the arch hook's on unchanged).
    pub errno: i32,
    /// What went wrong.
    pub message: String,
}

impl HookError {
    /// A refusal with `errno` and `message`.
    #[must_use]
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
        }
    }
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

impl std::error::Error for HookError {}

/// Why a request or call was refused.
///
/// Every failure leaves every published version as it was. [`errno`](Self::errno) gives the
/// errno KVM returns for the same failure, so a VMM can pass it on unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request carries flags outside `LOG_DIRTY_PAGES | READONLY`, or `READONLY` where it
    /// is not supported, or an internal slot was given any flag (EINVAL).
    #[error("invalid flags {flags:#x}")]
    InvalidFlags {
        /// The request's flags.
        flags: u32,
    },
    /// `memory_size` is not a multiple of the page size (EINVAL).
    #[error("memory_size {size:#x} is not page-aligned")]
    UnalignedSize {
        /// The request's size.
        size: u64,
    },
    /// `guest_phys_addr` is not page-aligned (EINVAL).
    #[error("guest_phys_addr {gpa:#x} is not page-aligned")]
    UnalignedGpa {
        /// The request's guest physical address.
        gpa: u64,
    },
    /// `userspace_addr` is not page-aligned (EINVAL).
    #[error("userspace_addr {hva:#x} is not page-aligned")]
    UnalignedHva {
        /// The request's host virtual address.
        hva: u64,
    },
    /// `userspace_addr + memory_size` wraps around (EINVAL; the kernel's `access_ok` check).
    #[error("userspace_addr {hva:#x} + memory_size {size:#x} wraps around")]
    HvaOverflow {
        /// The request's host virtual address.
        hva: u64,
        /// The request's size.
        size: u64,
    },
    /// `userspace_addr + memory_size` is above the task's user address limit (EINVAL; the
    /// kernel's `access_ok` check, modelled when
    /// [`Limits::with_user_address_limit`](crate::Limits::with_user_address_limit) is on).
    #[error(
        "userspace_addr {hva:#x} + memory_size {size:#x} passes the user address limit {limit:#x}"
    )]
    UserAddressLimit {
        /// The request's host virtual address.
        hva: u64,
        /// The request's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A Create or Move would reach a gfn above the largest the MMU maps (EINVAL; x86's
    /// `kvm_arch_prepare_memory_region`, modelled when
    /// [`Limits::with_max_gfn`](crate::Limits::with_max_gfn) is on).
    #[error("slot {slot}: last gfn {last_gfn:#x} is above the largest gfn {max_gfn:#x}")]
    GfnBeyondMax {
        /// The slot asked for.
        slot: SlotId,
        /// The slot's last gfn.
        last_gfn: u64,
        /// The limit.
        max_gfn: u64,
    },
    /// The address space does not exist (EINVAL).
    #[error("address space {as_id} does not exist (there are {address_spaces})")]
    InvalidAddressSpace {
        /// The address space asked for.
        as_id: u16,
        /// How many there are.
        address_spaces: u16,
    },
    /// The slot id is not below the limit for this call: the user-slot limit for
    /// `set_user_memory_region` and the dirty-log calls, the total for internal slots (EINVAL).
    #[error("slot id {slot} is not below {limit}")]
    InvalidSlotId {
        /// The slot asked for.
        slot: SlotId,
        /// The limit it broke.
        limit: u16,
    },
    /// An internal-slot call named a user slot id (EINVAL).
    #[error(
        "slot id {slot} is a user slot, not an internal one (user slots are below {user_slots})"
    )]
    NotInternalSlot {
        /// The slot asked for.
        slot: SlotId,
        /// The user-slot limit.
        user_slots: u16,
    },
    /// `guest_phys_addr + memory_size` wraps around (EINVAL).
    #[error("guest_phys_addr {gpa:#x} + memory_size {size:#x} wraps around")]
    GpaOverflow {
        /// The request's guest physical address.
        gpa: u64,
        /// The request's size.
        size: u64,
    },
    /// The slot would have more pages than a slot may have (EINVAL).
    #[error("{npages} pages is more than the {max} a slot may have")]
    TooManyPages {
        /// Pages asked for.
        npages: u64,
        /// The limit.
        max: u64,
    },
    /// A delete named a slot that does not exist (EINVAL, as the kernel answers it).
    #[error("cannot delete slot {slot}: it does not exist")]
    NoSuchSlot {
        /// The slot asked for.
        slot: SlotId,
    },
    /// The VM's total page count would overflow (EINVAL).
    #[error("adding {npages} pages overflows the VM's page count")]
    PageCountOverflow {
        /// Pages asked for.
        npages: u64,
    },
    /// The request changes a property that is fixed once a slot exists (EINVAL): delete the slot
    /// and create it again instead.
    #[error("slot {slot}: {field} cannot change on an existing slot")]
    ImmutableField {
        /// The slot asked for.
        slot: SlotId,
        /// What it tried to change.
        field: SlotField,
    },
    /// The slot's gfn range overlaps another slot of the same address space (EEXIST).
    #[error("slot {slot} overlaps slot {existing} in guest physical memory")]
    Overlap {
        /// The slot asked for.
        slot: SlotId,
        /// The slot it would overlap.
        existing: SlotId,
    },
    /// A dirty-log call named a slot that does not exist (ENOENT).
    #[error("no dirty log for slot {slot}: it does not exist")]
    SlotNotFound {
        /// The slot asked for.
        slot: SlotId,
    },
    /// A dirty-log call named a slot that does not log dirty pages (ENOENT).
    #[error("slot {slot} does not log dirty pages")]
    DirtyLogDisabled {
        /// The slot asked for.
        slot: SlotId,
    },
    /// `KVM_CLEAR_DIRTY_LOG`'s `first_page` is not a multiple of 64 (EINVAL).
    #[error("first_page {first_page} is not a multiple of 64")]
    UnalignedDirtyRange {
        /// The call's first page.
        first_page: u64,
    },
    /// `KVM_CLEAR_DIRTY_LOG`'s range does not fit the slot, or ends in a partial word before the
    /// slot's end (EINVAL).
    #[error("pages {first_page}..+{num_pages} do not fit a slot of {npages} pages")]
    DirtyRangeOutOfSlot {
        /// The call's first page.
        first_page: u64,
        /// The call's page count.
        num_pages: u64,
        /// The slot's page count.
        npages: u64,
    },
    /// The mask passed to `clear_dirty_log` is shorter than the range it covers (EFAULT, as a
    /// short user buffer is in the kernel).
    #[error("mask of {words} words is shorter than the {needed} the range needs")]
    MaskTooShort {
        /// Words given.
        words: usize,
        /// Words needed.
        needed: u64,
    },
    /// An [`ArchHooks::prepare`](crate::ArchHooks::prepare) call refused the change; its errno is
    /// passed on.
    #[error("refused by the architecture hook: {0}")]
    Hook(HookError),
    /// [`Limits`](crate::Limits) were given a value the kernel could not have (EINVAL).
    #[error("invalid limits: {0}")]
    InvalidLimits(#[from] LimitsError),
    /// A request would create a slot, but no backing was given for it: on a VM whose slots carry
    /// backings, slots are created with `create_memory_region` (EINVAL).
    #[error("slot {slot} would be created without a backing: use create_memory_region")]
    BackingRequired {
        /// The slot the request would create.
        slot: SlotId,
    },
    /// `create_memory_region` named a slot that already exists (EEXIST): move, re-flag or delete
    /// it with `set_user_memory_region`.
    #[error("slot {slot} already exists")]
    SlotExists {
        /// The slot asked for.
        slot: SlotId,
    },
    /// A byte access reached a guest physical address that no slot holds (EFAULT, as
    /// `kvm_read_guest` and `kvm_write_guest` answer it).
    #[error("no slot holds guest physical address {gpa:#x}")]
    Unmapped {
        /// The first address no slot holds.
        gpa: u64,
    },
    /// A byte access reached a slot that is being deleted or moved (`INVALID`): its memory may
    /// not be used any more (EFAULT).
    #[error("guest physical address {gpa:#x} is in slot {slot}, which is being deleted or moved")]
    SlotInvalid {
        /// The first address in the slot.
        gpa: u64,
        /// The slot.
        slot: SlotId,
    },
    /// A write reached a `READONLY` slot (EFAULT, as `kvm_write_guest` answers it).
    #[error("guest physical address {gpa:#x} is in read-only slot {slot}")]
    ReadOnlyWrite {
        /// The first address in the slot.
        gpa: u64,
        /// The slot.
        slot: SlotId,
    },
    /// A byte access reached past the end of its slot's backing, which is shorter than the slot
    /// (EFAULT).
    #[error(
        "guest physical address {gpa:#x} is past the {backing_len}-byte backing of slot {slot}"
    )]
    BackingTooShort {
        /// The first address of the part that does not fit.
        gpa: u64,
        /// The slot.
        slot: SlotId,
        /// The backing's length in bytes.
        backing_len: usize,
    },
    /// A byte access of `len` bytes at `gpa` runs past the end of the guest physical address
    /// space (EFAULT).
    #[error(
        "{len} bytes at guest physical address {gpa:#x} run past the end of the address space"
    )]
    AccessWraps {
        /// The access's first address.
        gpa: u64,
        /// Its length.
        len: usize,
    },
    /// A [`Layout`](crate::Layout) lists the same address space and slot id twice (EINVAL, as
    /// for any malformed argument).
    #[error("slot {slot} is listed twice in the layout")]
    DuplicateSlot {
        /// The slot listed twice.
        slot: SlotId,
    },
    /// A [`Layout`](crate::Layout) lists a region with `memory_size` 0 (EINVAL). A layout lists
    /// slots, and a slot has at least one page; as a request it would delete a slot that a
    /// layout being rebuilt from nothing cannot have, which KVM answers with EINVAL.
    #[error("slot {slot} has memory_size 0 in the layout")]
    EmptySlot {
        /// The slot with no pages.
        slot: SlotId,
    },
}

impl Error {
    /// The positive errno KVM returns for the same failure (see [`errno`]).
    ///
    /// ```
    /// use memslots::{errno, Limits, Memslots, UserspaceMemoryRegion};
    /// let vm = Memslots::new(Limits::default());
    /// let err = vm.set_user_memory_region(UserspaceMemoryRegion::delete(7)).unwrap_err();
    /// assert_eq!(err.errno(), errno::EINVAL);
    /// ```
    #[must_use]
    pub fn errno(&self) -> i32 {
        match self {
            Self::Overlap { .. } | Self::SlotExists { .. } => errno::EEXIST,
            Self::SlotNotFound { .. } | Self::DirtyLogDisabled { .. } => errno::ENOENT,
            Self::MaskTooShort { .. }
            | Self::Unmapped { .. }
            | Self::SlotInvalid { .. }
            | Self::ReadOnlyWrite { .. }
            | Self::BackingTooShort { .. }
            | Self::AccessWraps { .. } => errno::EFAULT,
            Self::Hook(hook) => hook.errno,
            Self::UnalignedDirtyRange { .. } | Self::DirtyRangeOutOfSlot { .. } => errno::EINVAL,
            Self::InvalidFlags { .. }
            | Self::UnalignedSize { .. }
            | Self::UnalignedGpa { .. }
            | Self::UnalignedHva { .. }
            | Self::HvaOverflow { .. }
            | Self::UserAddressLimit { .. }
            | Self::GfnBeyondMax { .. }
            | Self::InvalidAddressSpace { .. }
            | Self::InvalidSlotId { .. }
            | Self::NotInternalSlot { .. }
            | Self::GpaOverflow { .. }
            | Self::TooManyPages { .. }
            | Self::NoSuchSlot { .. }
            | Self::PageCountOverflow { .. }
            | Self::ImmutableField { .. }
            | Self::InvalidLimits(_) => errno::EINVAL,
            Self::DuplicateSlot { .. } | Self::EmptySlot { .. } | Self::BackingRequired { .. } => {
                errno::EINVAL
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_offending_value() {
        let e = Error::UnalignedGpa { gpa: 0x1234 };
        assert_eq!(e.to_string(), "guest_phys_addr 0x1234 is not page-aligned");
        let e = Error::Overlap {
            slot: SlotId::new(0, 3),
            existing: SlotId::new(0, 1),
        };
        assert_eq!(e.errno(), errno::EEXIST);
        assert!(e.to_string().contains("0:3") && e.to_string().contains("0:1"));
    }
}
