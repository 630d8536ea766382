//! The dirty-log calls, `KVM_GET_DIRTY_LOG` and `KVM_CLEAR_DIRTY_LOG`, with the kernel's checks
//! in the kernel's order (`kvm_get_dirty_log_protect`, `kvm_clear_dirty_log_protect`).

use crate::change::check_slot_in_range;
use crate::error::Error;
use crate::publish::{BackingOf, Core, Version};
use crate::slot::Memslot;
use crate::types::SlotId;

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

    pub(crate) fn get_dirty_log(&self, slot: u32) -> Result<Vec<u64>, Error> {
        let slot = self.dirty_log_slot(slot)?;
        let _writer = self.lock_writer();
        let set = self.snapshot(slot.as_id);
        let found = Self::logging_slot(&set, slot)?;
        Ok(found.dirty_bitmap().map_or_else(Vec::new, |b| b.take()))
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
