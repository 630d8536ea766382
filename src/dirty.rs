//! The dirty-log calls, `KVM_GET_DIRTY_LOG` and `KVM_CLEAR_DIRTY_LOG`, with the kernel's checks
//! in the kernel's order (`kvm_get_dirty_log_protect`, `kvm_clear_dirty_log_protect`), in the mode
//! [`DirtyLogMode`] sets.
//!
//! They are methods of the publication core, kept here rather than in `publish.rs` because they
//! are their own ioctls with their own checks (as `kvm_main.c` keeps them apart from the memslot
//! update): they only read the published versions, under the writer lock so as not to race an
//! update.

use crate::change::check_slot_in_range;
use crate::error::Error;
use crate::log_mode::DirtyLogMode;
use crate::publish::Core;
use crate::slot::Memslot;
use crate::types::SlotId;
use crate::view::{BackingOf, Version};

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
