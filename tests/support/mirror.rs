//! A [`MemoryListener`] that holds a copy of the slots it is told about and panics on anything
//! a consumer that cannot hold overlapping regions would trip over. Used by the differential
//! checks and by `tests/listener.rs`.

use std::collections::BTreeMap;

use memslots::{MemFlags, MemoryListener, Memslot, MemslotSet, SlotId};

/// A listener that mirrors the slots it is told about and panics on anything a consumer that
/// cannot hold overlapping regions would trip over: an addition overlapping a held slot, a
/// removal of a slot it does not hold, a removal after an addition in one replay, a callback
/// outside `begin`/`commit`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Mirror {
    held: BTreeMap<SlotId, Memslot>,
    /// The held slots by address space and base gfn, for an O(log n) overlap check.
    by_start: BTreeMap<(u16, u64), SlotId>,
    in_replay: bool,
    added: bool,
    /// Callbacks received other than `begin` and `commit`.
    pub(crate) events: usize,
}

impl Mirror {
    /// A mirror that holds `set`'s slots, as if it had been told about them.
    pub(crate) fn of(set: &MemslotSet) -> Self {
        Mirror {
            held: set.iter().map(|s| (s.slot_id(), s.clone())).collect(),
            by_start: set.iter().map(|s| (start(s), s.slot_id())).collect(),
            ..Mirror::default()
        }
    }

    /// Panics unless the mirror holds exactly `set`'s slots.
    pub(crate) fn assert_holds(&self, set: &MemslotSet) {
        let want: Vec<&Memslot> = set.iter().collect();
        let mut have: Vec<&Memslot> = self
            .held
            .values()
            .filter(|s| s.as_id() == set.as_id())
            .collect();
        have.sort_by_key(|s| s.base_gfn());
        assert_eq!(have, want, "the listener's copy differs from the version");
    }

    fn event(&mut self) {
        assert!(self.in_replay, "a callback outside begin/commit");
        self.events += 1;
    }

    fn toggle_log(&mut self, old: &Memslot, new: &Memslot, on: bool) {
        self.event();
        self.added = true;
        assert_eq!(new.dirty_logging(), on);
        assert_eq!(old.flags() ^ new.flags(), MemFlags::LOG_DIRTY_PAGES);
        assert_eq!(
            (old.base_gfn(), old.npages(), old.userspace_addr()),
            (new.base_gfn(), new.npages(), new.userspace_addr())
        );
        let held = self.held.insert(new.slot_id(), new.clone());
        assert_eq!(
            held.as_ref(),
            Some(old),
            "toggled logging on a slot it does not hold"
        );
    }
}

impl MemoryListener for Mirror {
    fn begin(&mut self) {
        assert!(!self.in_replay, "begin twice");
        self.in_replay = true;
        self.added = false;
    }

    fn region_del(&mut self, slot: &Memslot) {
        self.event();
        assert!(!self.added, "a removal after an addition: {slot:?}");
        let held = self.held.remove(&slot.slot_id());
        assert_eq!(held.as_ref(), Some(slot), "removed a slot it does not hold");
        self.by_start.remove(&start(slot));
    }

    fn region_add(&mut self, slot: &Memslot) {
        self.event();
        self.added = true;
        // The held slots never overlap, so only the last one starting below the new slot's end
        // can reach into it.
        let below_end = (slot.as_id(), slot.end_gfn().0);
        if let Some((_, id)) = self.by_start.range(..below_end).next_back() {
            let other = &self.held[id];
            assert!(
                other.as_id() != slot.as_id() || other.end_gfn() <= slot.base_gfn(),
                "would hold {other:?} and {slot:?} at once, and they overlap"
            );
        }
        let before = self.held.insert(slot.slot_id(), slot.clone());
        assert!(before.is_none(), "added a slot it already holds: {slot:?}");
        self.by_start.insert(start(slot), slot.slot_id());
    }

    fn log_start(&mut self, old: &Memslot, new: &Memslot) {
        self.toggle_log(old, new, true);
    }

    fn log_stop(&mut self, old: &Memslot, new: &Memslot) {
        self.toggle_log(old, new, false);
    }

    fn commit(&mut self) {
        assert!(self.in_replay, "commit without begin");
        self.in_replay = false;
    }
}

/// Where a slot starts: its address space and base gfn.
fn start(slot: &Memslot) -> (u16, u64) {
    (slot.as_id(), slot.base_gfn().0)
}
