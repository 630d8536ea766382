//! The two dirty-log modes `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` chooses between, and what a new
//! bitmap starts as in each: plain data that the update protocol and the dirty-log calls both use.

use crate::slot::Memslot;

/// How the dirty-log calls treat a slot's bitmap: KVM's default, or the mode
/// `KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)` turns on. Set it with
/// [`Memslots::set_dirty_log_mode`](crate::Memslots::set_dirty_log_mode); like the capability,
/// it may change at any time and applies from the next call on.
///
/// | operation | cost |
/// |---|---|
/// | every method | O(1) |
///
/// ```
/// use memslots::{DirtyLogMode, Gfn, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
/// let vm = Memslots::new(Limits::default());
/// vm.set_dirty_log_mode(DirtyLogMode::ManualProtect { initially_set: false });
/// vm.set_user_memory_region(UserspaceMemoryRegion::new(0, MemFlags::LOG_DIRTY_PAGES, 0, 0x10000, 0x7000_0000))?;
/// vm.reader().read().mark_page_dirty(0, Gfn(3));
/// assert_eq!(vm.get_dirty_log(0)?, [1 << 3]);
/// assert_eq!(vm.get_dirty_log(0)?, [1 << 3], "a get does not clear");
/// vm.clear_dirty_log(0, 0, 16, &[1 << 3])?; // the clear re-arms the page
/// assert_eq!(vm.get_dirty_log(0)?, [0]);
/// # Ok::<(), memslots::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DirtyLogMode {
    /// `KVM_GET_DIRTY_LOG` fetches and clears each word; pages start clean when logging is
    /// turned on.
    #[default]
    FetchAndClear,
    /// `KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE`: `KVM_GET_DIRTY_LOG` copies the bitmap without
    /// clearing it; only `KVM_CLEAR_DIRTY_LOG` clears (and re-arms) pages.
    ManualProtect {
        /// `KVM_DIRTY_LOG_INITIALLY_SET`: a bitmap made when logging is turned on (a Create with
        /// logging, or a flags change that turns it on) starts with every page set.
        initially_set: bool,
    },
}

impl DirtyLogMode {
    const MANUAL_PROTECT_ENABLE: u64 = 1 << 0;
    const INITIALLY_SET: u64 = 1 << 1;

    /// Whether a get leaves the bitmap as it is.
    #[must_use]
    pub const fn manual_protect(self) -> bool {
        matches!(self, Self::ManualProtect { .. })
    }

    /// Whether a new bitmap starts with every page set.
    #[must_use]
    pub const fn initially_set(self) -> bool {
        matches!(
            self,
            Self::ManualProtect {
                initially_set: true
            }
        )
    }

    /// The capability's `args[0]` for this mode (`KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE` = 1,
    /// `KVM_DIRTY_LOG_INITIALLY_SET` = 2; 0 turns the mode off).
    #[must_use]
    pub const fn cap_args(self) -> u64 {
        match self {
            Self::FetchAndClear => 0,
            Self::ManualProtect { initially_set } => {
                Self::MANUAL_PROTECT_ENABLE
                    | if initially_set {
                        Self::INITIALLY_SET
                    } else {
                        0
                    }
            }
        }
    }

    /// The mode for a capability's `args[0]`, or `None` for a value the kernel refuses (EINVAL):
    /// an unknown bit, or `INITIALLY_SET` without `MANUAL_PROTECT_ENABLE`.
    #[must_use]
    pub const fn from_cap_args(args: u64) -> Option<Self> {
        match args {
            0 => Some(Self::FetchAndClear),
            1 | 3 => Some(Self::ManualProtect {
                initially_set: args & Self::INITIALLY_SET != 0,
            }),
            _ => None,
        }
    }
}

/// With `KVM_DIRTY_LOG_INITIALLY_SET`, a bitmap allocated for a change (logging turned on, so
/// `old` had none) starts all set, as `kvm_prepare_memory_region` does.
pub(crate) fn arm_new_bitmap<B>(
    mode: DirtyLogMode,
    old: Option<&Memslot<B>>,
    new: Option<&Memslot<B>>,
) {
    if !mode.initially_set() || old.and_then(Memslot::dirty_bitmap).is_some() {
        return;
    }
    if let Some(bitmap) = new.and_then(Memslot::dirty_bitmap) {
        bitmap.set_all();
    }
}
