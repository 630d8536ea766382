//! The dirty-log calls, `KVM_GET_DIRTY_LOG` and `KVM_CLEAR_DIRTY_LOG`, with the kernel's checks
//! in the kernel's order (`kvm_get_dirty_log_protect`, `kvm_clear_dirty_log_protect`), and the
//! two modes `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` chooses between.

use crate::change::check_slot_in_range;
use crate::error::Error;
use crate::publish::{BackingOf, Core, Version};
use crate::slot::Memslot;
use crate::types::SlotId;

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

impl<S: Version> Core<S> {
    /// The address space and id checks both calls start with (EINVAL).
    fn dirty_log_slot(&self, slot: u32) -> Result<SlotId, Error> {
        let slot = SlotId::from(slot);
        let limits = self.limits();
        check_slot_in_range(limits, slot, limits.user_slots())?;
        Ok(slot)
    }

    /// The slot and its bitmap, or ENOENT.
    fn logging_slot(set: &S, slot: SlotId) -> Result<&Memslot<BackingOf<S>>, Error> {
        let found = set.get(slot.id).ok_or(Error::SlotNotFound { slot })?;
        if found.dirty_bitmap().is_none() {
            return Err(Error::DirtyLogDisabled { slot });
        }
        Ok(found)
    }

    pub(crate) fn dirty_log_mode(&self) -> DirtyLogMode {
        self.lock_writer().dirty_log
    }

    pub(crate) fn set_dirty_log_mode(&self, mode: DirtyLogMode) {
        self.lock_writer().dirty_log = mode;
    }

    pub(crate) fn get_dirty_log(&self, slot: u32) -> Result<Vec<u64>, Error> {
        let slot = self.dirty_log_slot(slot)?;
        let writer = self.lock_writer();
        let set = self.snapshot(slot.as_id);
        let found = Self::logging_slot(&set, slot)?;
        let bitmap = found.dirty_bitmap().map(|b| {
            if writer.dirty_log.manual_protect() {
                b.copy_words()
            } else {
                b.take()
            }
        });
        Ok(bitmap.unwrap_or_default())
    }

    pub(crate) fn clear_dirty_log(
        &self,
        slot: u32,
        first_page: u64,
        num_pages: u64,
        mask: &[u64],
    ) -> Result<(), Error> {
        let slot = self.dirty_log_slot(slot)?;
        if first_page % 64 != 0 {
            return Err(Error::UnalignedDirtyRange { first_page });
        }
        let _writer = self.lock_writer();
        let set = self.snapshot(slot.as_id);
        let found = Self::logging_slot(&set, slot)?;
        let npages = found.npages();
        // Only a range that reaches the slot's end may stop in the middle of a word.
        if first_page > npages
            || num_pages > npages - first_page
            || (num_pages < npages - first_page && num_pages % 64 != 0)
        {
            return Err(Error::DirtyRangeOutOfSlot {
                first_page,
                num_pages,
                npages,
            });
        }
        let needed = num_pages.div_ceil(64);
        let words = usize::try_from(needed)
            .ok()
            .and_then(|n| mask.get(..n))
            .ok_or(Error::MaskTooShort {
                words: mask.len(),
                needed,
            })?;
        if let Some(bitmap) = found.dirty_bitmap() {
            bitmap.clear((first_page / 64) as usize, words);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Gfn, Limits, MemFlags, Memslots, UserspaceMemoryRegion};

    fn logged(slot: u32, gpa: u64, pages: u64) -> UserspaceMemoryRegion {
        UserspaceMemoryRegion::new(
            slot,
            MemFlags::LOG_DIRTY_PAGES,
            gpa,
            pages << 12,
            0x7000_0000,
        )
    }

    #[test]
    fn cap_args_round_trip_and_refuse_what_the_kernel_refuses() {
        for mode in [
            DirtyLogMode::FetchAndClear,
            DirtyLogMode::ManualProtect {
                initially_set: false,
            },
            DirtyLogMode::ManualProtect {
                initially_set: true,
            },
        ] {
            assert_eq!(DirtyLogMode::from_cap_args(mode.cap_args()), Some(mode));
        }
        assert_eq!(DirtyLogMode::from_cap_args(2), None, "INITIALLY_SET alone");
        assert_eq!(DirtyLogMode::from_cap_args(4), None);
    }

    #[test]
    fn fetch_and_clear_is_the_default() {
        let vm = Memslots::new(Limits::default());
        assert_eq!(vm.dirty_log_mode(), DirtyLogMode::FetchAndClear);
        vm.set_user_memory_region(logged(0, 0, 70)).unwrap();
        vm.reader().read().mark_page_dirty(0, Gfn(65));
        assert_eq!(vm.get_dirty_log(0).unwrap(), [0, 2]);
        assert_eq!(vm.get_dirty_log(0).unwrap(), [0, 0]);
    }

    #[test]
    fn manual_protect_gets_without_clearing_and_clears_re_arm() {
        let vm = Memslots::new(Limits::default());
        vm.set_dirty_log_mode(DirtyLogMode::ManualProtect {
            initially_set: false,
        });
        vm.set_user_memory_region(logged(0, 0, 70)).unwrap();
        assert_eq!(vm.get_dirty_log(0).unwrap(), [0, 0], "starts clean");
        let reader = vm.reader();
        reader.read().mark_page_dirty(0, Gfn(1));
        reader.read().mark_page_dirty(0, Gfn(69));
        assert_eq!(vm.get_dirty_log(0).unwrap(), [2, 1 << 5]);
        assert_eq!(vm.get_dirty_log(0).unwrap(), [2, 1 << 5]);
        vm.clear_dirty_log(0, 0, 70, &[2, 0]).unwrap();
        assert_eq!(vm.get_dirty_log(0).unwrap(), [0, 1 << 5]);
        reader.read().mark_page_dirty(0, Gfn(1));
        assert_eq!(vm.get_dirty_log(0).unwrap(), [2, 1 << 5], "re-armed");
        // Back to the default: the next get fetches and clears.
        vm.set_dirty_log_mode(DirtyLogMode::FetchAndClear);
        assert_eq!(vm.get_dirty_log(0).unwrap(), [2, 1 << 5]);
        assert_eq!(vm.get_dirty_log(0).unwrap(), [0, 0]);
    }

    #[test]
    fn initially_set_fills_new_bitmaps_only() {
        let vm = Memslots::new(Limits::default());
        vm.set_dirty_log_mode(DirtyLogMode::ManualProtect {
            initially_set: true,
        });
        vm.set_user_memory_region(logged(0, 0, 130)).unwrap();
        let all = [u64::MAX, u64::MAX, 0b11];
        assert_eq!(vm.get_dirty_log(0).unwrap(), all, "only the slot's pages");
        vm.clear_dirty_log(0, 0, 130, &[u64::MAX; 3]).unwrap();
        // A move and a flags change that keep logging keep the bitmap as it is.
        vm.set_user_memory_region(logged(0, 1 << 20, 130)).unwrap();
        assert_eq!(vm.get_dirty_log(0).unwrap(), [0, 0, 0]);
        // Logging off and on again: a new bitmap, all set.
        let unlogged = UserspaceMemoryRegion {
            flags: 0,
            ..logged(0, 1 << 20, 130)
        };
        vm.set_user_memory_region(unlogged).unwrap();
        vm.set_user_memory_region(logged(0, 1 << 20, 130)).unwrap();
        assert_eq!(vm.get_dirty_log(0).unwrap(), all);
        // In a transaction too, and not for a slot created without logging.
        let mut tx = vm.transaction();
        tx.set_user_memory_region(logged(1, 1 << 30, 1)).unwrap();
        tx.set_user_memory_region(UserspaceMemoryRegion {
            flags: 0,
            ..logged(2, 1 << 31, 1)
        })
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(vm.get_dirty_log(1).unwrap(), [1]);
        assert!(vm.get_dirty_log(2).is_err());
    }
}
