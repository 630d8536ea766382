//! Address newtypes, slot ids, flags, limits and the region request.
//!
//! These are the words of KVM's memslot uAPI (`include/uapi/linux/kvm.h`) in Rust form: a request
//! ([`UserspaceMemoryRegion`]) is laid out exactly as `struct kvm_userspace_memory_region`, its
//! `slot` field splits into a [`SlotId`], and its `flags` field into [`MemFlags`].

use core::fmt;

macro_rules! address_newtype {
    ($(#[$doc:meta])* $name:ident, $fmt:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($fmt, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl From<u64> for $name {
            fn from(value: u64) -> Self {
                Self(value)
            }
        }

        impl From<$name> for u64 {
            fn from(value: $name) -> u64 {
                value.0
            }
        }
    };
}

address_newtype!(
    /// A guest frame number: a guest physical address shifted right by the page shift.
    Gfn,
    "Gfn"
);
address_newtype!(
    /// A guest physical address, in bytes.
    Gpa,
    "Gpa"
);
address_newtype!(
    /// A host virtual address: where the VMM mapped the guest's memory in its own address space.
    Hva,
    "Hva"
);

impl Gpa {
    /// The frame that holds this address, for pages of `1 << page_shift` bytes.
    #[must_use]
    pub const fn to_gfn(self, page_shift: u32) -> Gfn {
        Gfn(self.0 >> page_shift)
    }
}

impl Gfn {
    /// The first address of this frame, for pages of `1 << page_shift` bytes; `None` if it does not
    /// fit in 64 bits.
    #[must_use]
    pub const fn to_gpa(self, page_shift: u32) -> Option<Gpa> {
        if page_shift >= 64 || self.0 > (u64::MAX >> page_shift) {
            None
        } else {
            Some(Gpa(self.0 << page_shift))
        }
    }
}

/// A slot's identity: its address space and its id within it.
///
/// KVM packs both into the request's 32-bit `slot` field: the address space in the high 16 bits and
/// the id in the low 16 (`as_id = slot >> 16`, `id = (u16)slot`).
///
/// ```
/// use memslots::SlotId;
/// let s = SlotId::from(0x0001_0005);
/// assert_eq!((s.as_id, s.id), (1, 5));
/// assert_eq!(u32::from(s), 0x0001_0005);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId {
    /// The address space (0 for normal memory; 1 is x86's SMM address space).
    pub as_id: u16,
    /// The slot id within the address space.
    pub id: u16,
}

impl SlotId {
    /// A slot id from its parts.
    #[must_use]
    pub const fn new(as_id: u16, id: u16) -> Self {
        Self { as_id, id }
    }
}

impl From<u32> for SlotId {
    fn from(slot: u32) -> Self {
        Self {
            as_id: (slot >> 16) as u16,
            id: slot as u16,
        }
    }
}

impl From<SlotId> for u32 {
    fn from(s: SlotId) -> u32 {
        (u32::from(s.as_id) << 16) | u32::from(s.id)
    }
}

impl fmt::Debug for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotId({}:{})", self.as_id, self.id)
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.as_id, self.id)
    }
}

bitflags::bitflags! {
    /// A slot's flags, as the kernel keeps them.
    ///
    /// Bits 0 to 15 are uAPI flags; bits 16 to 31 are the kernel's own. A request may carry only
    /// [`LOG_DIRTY_PAGES`](Self::LOG_DIRTY_PAGES) and [`READONLY`](Self::READONLY);
    /// [`INVALID`](Self::INVALID) marks the temporary copy of a slot that is being deleted or
    /// moved, and a request that sets it is refused.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct MemFlags: u32 {
        /// `KVM_MEM_LOG_DIRTY_PAGES`: keep a dirty bitmap for the slot.
        const LOG_DIRTY_PAGES = 1 << 0;
        /// `KVM_MEM_READONLY`: guest writes to the slot are refused (they exit to the VMM as MMIO).
        const READONLY = 1 << 1;
        /// `KVM_MEMSLOT_INVALID` (kernel-internal): the slot is being deleted or moved; lookups
        /// still find it, translations through it fail.
        const INVALID = 1 << 16;
    }
}

impl MemFlags {
    /// The flags a `KVM_SET_USER_MEMORY_REGION` request may carry.
    pub const USER: Self = Self::LOG_DIRTY_PAGES.union(Self::READONLY);
}

/// The most address spaces [`Limits`] allows.
pub const MAX_ADDRESS_SPACES: usize = 16;

/// Which [`Limits`](crate::Limits) value was out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitsError {
    /// The page shift, outside 12..=30.
    PageShift(u32),
    /// The number of address spaces, outside 1..=16.
    AddressSpaces(u16),
    /// The slot counts, not `0 < user <= total <= 32767`.
    Slots {
        /// User slots asked for.
        user: u16,
        /// Total slots asked for.
        total: u16,
    },
    /// The largest page count per slot, 0.
    MaxPages(u64),
}

impl core::fmt::Display for LimitsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::PageShift(s) => write!(f, "page shift {s} is outside 12..=30"),
            Self::AddressSpaces(n) => write!(f, "{n} address spaces is outside 1..=16"),
            Self::Slots { user, total } => {
                write!(
                    f,
                    "{user} user slots of {total} is not 0 < user <= total <= 32767"
                )
            }
            Self::MaxPages(n) => write!(f, "at most {n} pages per slot"),
        }
    }
}

impl std::error::Error for LimitsError {}

/// The VM-wide limits that validation enforces.
///
/// The default is x86-64's: 4 KiB pages, 2 address spaces (normal and SMM), 32764 user slots and
/// 32767 slots in all per address space, at most 2^31 - 1 pages per slot, read-only slots
/// supported. Change them through the `with_*` methods, which refuse values the kernel could not
/// have.
///
/// Two of the kernel's rules depend on the host rather than on KVM, so they are off by default
/// and turned on with a value for the machine:
///
/// - [`with_user_address_limit`](Self::with_user_address_limit): `userspace_addr + memory_size`
///   must not pass the task's user address limit (the kernel's `access_ok`, checked for every
///   request, deletes included, right after the hva alignment check);
///   [`X86_64_USER_ADDRESS_LIMIT`](Self::X86_64_USER_ADDRESS_LIMIT) on x86-64 with 4-level
///   paging.
/// - [`with_max_gfn`](Self::with_max_gfn): a Create or Move whose last gfn is above it is refused
///   (x86's `kvm_arch_prepare_memory_region`, checked after the overlap check), the largest gfn the
///   MMU maps (`kvm_mmu_max_gfn()`: `2^(bits - 12) - 1` for the host's physical address width,
///   or 52 bits with shadow paging).
///
/// ```
/// use memslots::Limits;
/// let pre_2021 = Limits::default().with_slots(509, 512)?;
/// assert_eq!(pre_2021.user_slots(), 509);
/// # Ok::<(), memslots::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    page_shift: u32,
    address_spaces: u16,
    user_slots: u16,
    total_slots: u16,
    max_pages_per_slot: u64,
    readonly: bool,
    user_address_limit: Option<u64>,
    max_gfn: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            page_shift: 12,
            address_spaces: 2,
            user_slots: 32764,
            total_slots: 32767,
            max_pages_per_slot: (1 << 31) - 1,
            readonly: true,
            user_address_limit: None,
            max_gfn: None,
        }
    }
}

impl Limits {
    /// The largest number of slots an address space can hold: KVM's `SHRT_MAX`.
    pub const MAX_SLOTS: u16 = i16::MAX as u16;

    /// The user address limit of an x86-64 task with 4-level paging (`TASK_SIZE_MAX`, 2^47 minus
    /// one page): the value for [`with_user_address_limit`](Self::with_user_address_limit).
    pub const X86_64_USER_ADDRESS_LIMIT: u64 = 0x7fff_ffff_f000;

    /// The page size, as a shift (12 for 4 KiB pages).
    #[must_use]
    pub const fn page_shift(&self) -> u32 {
        self.page_shift
    }

    /// The page size in bytes.
    #[must_use]
    pub const fn page_size(&self) -> u64 {
        1 << self.page_shift
    }

    /// The number of address spaces (`KVM_MAX_NR_ADDRESS_SPACES`).
    #[must_use]
    pub const fn address_spaces(&self) -> u16 {
        self.address_spaces
    }

    /// Slot ids below this may be set by [`set_user_memory_region`](crate::Memslots::set_user_memory_region)
    /// (`KVM_USER_MEM_SLOTS`, what `KVM_CAP_NR_MEMSLOTS` reports).
    #[must_use]
    pub const fn user_slots(&self) -> u16 {
        self.user_slots
    }

    /// Slot ids below this exist at all (`KVM_MEM_SLOTS_NUM`); the ids from
    /// [`user_slots`](Self::user_slots) up are the VMM's internal slots.
    #[must_use]
    pub const fn total_slots(&self) -> u16 {
        self.total_slots
    }

    /// The largest page count of a user slot (`KVM_MEM_MAX_NR_PAGES`).
    #[must_use]
    pub const fn max_pages_per_slot(&self) -> u64 {
        self.max_pages_per_slot
    }

    /// Whether `READONLY` slots are supported (`kvm_arch_has_readonly_mem`).
    #[must_use]
    pub const fn readonly_supported(&self) -> bool {
        self.readonly
    }

    /// The bound `userspace_addr + memory_size` must not pass, if that rule is on.
    #[must_use]
    pub const fn user_address_limit(&self) -> Option<u64> {
        self.user_address_limit
    }

    /// The largest gfn a Create or Move may reach, if that rule is on.
    #[must_use]
    pub const fn max_gfn(&self) -> Option<Gfn> {
        match self.max_gfn {
            Some(gfn) => Some(Gfn(gfn)),
            None => None,
        }
    }

    /// The same limits with the user address bound on (`Some(limit)`) or off (`None`, the
    /// default): every request, deletes included, whose `userspace_addr + memory_size` is above
    /// `limit` is refused with [`Error::UserAddressLimit`](crate::Error::UserAddressLimit) (EINVAL), as the kernel's `access_ok`
    /// refuses it, right after the hva alignment check.
    ///
    /// ```
    /// use memslots::{errno, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
    /// let limits = Limits::default().with_user_address_limit(Some(Limits::X86_64_USER_ADDRESS_LIMIT));
    /// let vm = Memslots::new(limits);
    /// let top = UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 0x2000, 0x7fff_ffff_d000);
    /// assert!(vm.set_user_memory_region(top).is_ok(), "ends exactly at the limit");
    /// let past = UserspaceMemoryRegion::new(1, MemFlags::empty(), 0x2000, 0x2000, 0x7fff_ffff_e000);
    /// assert_eq!(vm.set_user_memory_region(past).unwrap_err().errno(), errno::EINVAL);
    /// ```
    #[must_use]
    pub const fn with_user_address_limit(mut self, limit: Option<u64>) -> Self {
        self.user_address_limit = limit;
        self
    }

    /// The same limits with the largest gfn on (`Some(gfn)`) or off (`None`, the default): a
    /// Create or Move whose last gfn is above it is refused with [`Error::GfnBeyondMax`](crate::Error::GfnBeyondMax) (EINVAL),
    /// after the overlap check, as x86's `kvm_arch_prepare_memory_region` refuses it.
    ///
    /// ```
    /// use memslots::{errno, Gfn, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
    /// // 52-bit guest physical addresses (shadow paging): gfns up to 2^40 - 1.
    /// let vm = Memslots::new(Limits::default().with_max_gfn(Some(Gfn((1 << 40) - 1))));
    /// let last = UserspaceMemoryRegion::new(0, MemFlags::empty(), (1 << 52) - 0x1000, 0x1000, 0x1000);
    /// assert!(vm.set_user_memory_region(last).is_ok());
    /// let beyond = UserspaceMemoryRegion::new(1, MemFlags::empty(), 1 << 52, 0x1000, 0x1000);
    /// assert_eq!(vm.set_user_memory_region(beyond).unwrap_err().errno(), errno::EINVAL);
    /// ```
    #[must_use]
    pub const fn with_max_gfn(mut self, max_gfn: Option<Gfn>) -> Self {
        self.max_gfn = match max_gfn {
            Some(gfn) => Some(gfn.0),
            None => None,
        };
        self
    }

    /// The same limits with another page size, given as a shift from 12 (4 KiB) to 30 (1 GiB).
    ///
    /// # Errors
    /// [`LimitsError`] for a shift outside 12..=30.
    pub const fn with_page_shift(mut self, page_shift: u32) -> Result<Self, LimitsError> {
        if page_shift < 12 || page_shift > 30 {
            return Err(LimitsError::PageShift(page_shift));
        }
        self.page_shift = page_shift;
        Ok(self)
    }

    /// The same limits with another number of address spaces, from 1 to
    /// [`MAX_ADDRESS_SPACES`].
    ///
    /// # Errors
    /// [`LimitsError`] for 0 or more than [`MAX_ADDRESS_SPACES`].
    pub const fn with_address_spaces(mut self, address_spaces: u16) -> Result<Self, LimitsError> {
        if address_spaces == 0 || address_spaces as usize > MAX_ADDRESS_SPACES {
            return Err(LimitsError::AddressSpaces(address_spaces));
        }
        self.address_spaces = address_spaces;
        Ok(self)
    }

    /// The same limits with other slot counts: `user` ids for user slots, `total` ids in all.
    ///
    /// # Errors
    /// [`LimitsError`] unless `0 < user <= total <= 32767`.
    pub const fn with_slots(mut self, user: u16, total: u16) -> Result<Self, LimitsError> {
        if user == 0 || user > total || total > Self::MAX_SLOTS {
            return Err(LimitsError::Slots { user, total });
        }
        self.user_slots = user;
        self.total_slots = total;
        Ok(self)
    }

    /// The same limits with another largest page count for a user slot.
    ///
    /// # Errors
    /// [`LimitsError`] for 0.
    pub const fn with_max_pages_per_slot(mut self, max: u64) -> Result<Self, LimitsError> {
        if max == 0 {
            return Err(LimitsError::MaxPages(max));
        }
        self.max_pages_per_slot = max;
        Ok(self)
    }

    /// The same limits with read-only slots supported or not.
    #[must_use]
    pub const fn with_readonly(mut self, supported: bool) -> Self {
        self.readonly = supported;
        self
    }
}

/// A `KVM_SET_USER_MEMORY_REGION` request, field for field `struct kvm_userspace_memory_region`.
///
/// A `memory_size` of 0 deletes the slot. `slot` packs the address space and the id (see
/// [`SlotId`]).
///
/// ```
/// use memslots::{MemFlags, UserspaceMemoryRegion};
/// let ram = UserspaceMemoryRegion::new(0, MemFlags::LOG_DIRTY_PAGES, 0x1000_0000, 1 << 30, 0x7f00_0000_0000);
/// assert_eq!(ram.flags, 1);
/// let delete = UserspaceMemoryRegion::delete(0);
/// assert_eq!(delete.memory_size, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(deny_unknown_fields)
)]
#[repr(C)]
pub struct UserspaceMemoryRegion {
    /// Address space in the high 16 bits, slot id in the low 16.
    pub slot: u32,
    /// `KVM_MEM_*` flags ([`MemFlags`] bits).
    pub flags: u32,
    /// Guest physical address of the first byte.
    pub guest_phys_addr: u64,
    /// Size in bytes; 0 deletes the slot.
    pub memory_size: u64,
    /// Host virtual address of the first byte.
    pub userspace_addr: u64,
}

impl UserspaceMemoryRegion {
    /// A request from its fields, with the flags as [`MemFlags`].
    #[must_use]
    pub const fn new(
        slot: u32,
        flags: MemFlags,
        guest_phys_addr: u64,
        memory_size: u64,
        userspace_addr: u64,
    ) -> Self {
        Self {
            slot,
            flags: flags.bits(),
            guest_phys_addr,
            memory_size,
            userspace_addr,
        }
    }

    /// A request that deletes `slot`.
    #[must_use]
    pub const fn delete(slot: u32) -> Self {
        Self {
            slot,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: 0,
            userspace_addr: 0,
        }
    }

    /// The slot id this request names.
    #[must_use]
    pub fn slot_id(&self) -> SlotId {
        SlotId::from(self.slot)
    }
}

/// What a request did, as the kernel classifies it (`enum kvm_mr_change`, plus the no-op case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A new slot (`KVM_MR_CREATE`).
    Create,
    /// The slot was removed (`KVM_MR_DELETE`).
    Delete,
    /// The slot's base gfn changed, and maybe its flags (`KVM_MR_MOVE`).
    Move,
    /// Only the flags changed (`KVM_MR_FLAGS_ONLY`).
    FlagsOnly,
    /// The request matched the slot as it was: nothing published, no generation step.
    Unchanged,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_id_round_trips_through_u32() {
        for raw in [0u32, 1, 0xffff, 0x1_0000, 0x1_7ffb, u32::MAX] {
            assert_eq!(u32::from(SlotId::from(raw)), raw);
        }
        assert_eq!(SlotId::from(0x0002_0003), SlotId::new(2, 3));
    }

    #[test]
    fn gfn_gpa_conversions() {
        assert_eq!(Gpa(0x1234_5678).to_gfn(12), Gfn(0x12345));
        assert_eq!(Gfn(0x12345).to_gpa(12), Some(Gpa(0x1234_5000)));
        assert_eq!(Gfn(u64::MAX).to_gpa(12), None);
    }

    #[test]
    fn limits_builders_refuse_nonsense() {
        let d = Limits::default();
        assert_eq!(d.page_size(), 4096);
        assert_eq!((d.user_slots(), d.total_slots()), (32764, 32767));
        assert!(d.with_page_shift(11).is_err());
        assert!(d.with_page_shift(31).is_err());
        assert_eq!(d.with_page_shift(16).unwrap().page_size(), 65536);
        assert!(d.with_address_spaces(0).is_err());
        assert!(d.with_slots(10, 9).is_err());
        assert!(d.with_slots(0, 9).is_err());
        assert!(d.with_slots(10, 32768).is_err());
        assert!(d.with_max_pages_per_slot(0).is_err());
        assert!(!d.with_readonly(false).readonly_supported());
    }

    #[test]
    fn host_rules_are_off_by_default() {
        let d = Limits::default();
        assert_eq!((d.user_address_limit(), d.max_gfn()), (None, None));
        let on = d
            .with_user_address_limit(Some(Limits::X86_64_USER_ADDRESS_LIMIT))
            .with_max_gfn(Some(Gfn(0xff_ffff_ffff)));
        assert_eq!(on.user_address_limit(), Some(0x7fff_ffff_f000));
        assert_eq!(on.max_gfn(), Some(Gfn(0xff_ffff_ffff)));
        assert_eq!(on.with_max_gfn(None).max_gfn(), None);
    }

    #[test]
    fn flag_bits_match_the_uapi() {
        assert_eq!(MemFlags::LOG_DIRTY_PAGES.bits(), 1);
        assert_eq!(MemFlags::READONLY.bits(), 2);
        assert_eq!(MemFlags::INVALID.bits(), 1 << 16);
        assert_eq!(MemFlags::USER.bits(), 3);
    }
}
