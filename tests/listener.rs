//! `replay` and `MemoryListener`: removals before additions, so that a consumer that cannot hold
//! two overlapping regions never has to.

#[path = "support/mirror.rs"]
mod mirror;
#[path = "support/rng.rs"]
mod rng;

use std::panic::{catch_unwind, AssertUnwindSafe};

use memslots::{
    replay, Diff, Limits, MemFlags, MemoryListener, Memslot, MemslotSet, Memslots,
    UserspaceMemoryRegion,
};
use mirror::Mirror;
use rng::XorShift;

const PAGE: u64 = 4096;

fn region(id: u16, gfn: u64, pages: u64) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(
        u32::from(id),
        MemFlags::empty(),
        gfn * PAGE,
        pages * PAGE,
        0x7000_0000 + u64::from(id) * 0x100_0000,
    )
}

/// What a consumer that applies each difference as it comes (in slot id order) would do.
fn naive_replay(old: &MemslotSet, new: &MemslotSet, listener: &mut impl MemoryListener) {
    listener.begin();
    for change in old.diff(new) {
        if let Some(old) = change.before() {
            listener.region_del(old);
        }
        if let Some(new) = change.after() {
            listener.region_add(new);
        }
    }
    listener.commit();
}

#[test]
fn a_slot_moved_onto_a_range_another_slot_left_is_never_held_twice() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(region(0, 16, 16)).unwrap();
    vm.set_user_memory_region(region(1, 0, 16)).unwrap();
    let before = vm.snapshot(0);
    // In one step, as the consumer sees it: slot 1 goes, slot 0 takes its range.
    vm.set_user_memory_region(UserspaceMemoryRegion::delete(1))
        .unwrap();
    vm.set_user_memory_region(region(0, 0, 16)).unwrap();
    let after = vm.snapshot(0);

    let mut mirror = Mirror::of(&before);
    replay(&before, &after, &mut mirror);
    mirror.assert_holds(&after);
    assert_eq!(mirror.events, 3, "del 0, del 1, add 0");

    // The guard is real: taking the changes one by one in id order adds slot 0 on top of slot 1.
    let mut naive = Mirror::of(&before);
    let overlapped = catch_unwind(AssertUnwindSafe(|| {
        naive_replay(&before, &after, &mut naive);
    }));
    assert!(
        overlapped.is_err(),
        "the naive order should have overlapped"
    );
}

#[test]
fn two_slots_that_trade_places_are_never_held_overlapping() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(region(4, 0, 8)).unwrap();
    vm.set_user_memory_region(region(5, 8, 8)).unwrap();
    let before = vm.snapshot(0);
    vm.set_user_memory_region(region(4, 100, 8)).unwrap();
    vm.set_user_memory_region(region(5, 0, 8)).unwrap();
    vm.set_user_memory_region(region(4, 8, 8)).unwrap();
    let after = vm.snapshot(0);
    assert_eq!(before.diff(&after).count(), 2);

    let mut mirror = Mirror::of(&before);
    replay(&before, &after, &mut mirror);
    mirror.assert_holds(&after);
    // And back again.
    replay(&after, &before, &mut mirror);
    mirror.assert_holds(&before);
}

/// Records callbacks by name, keeping the default `log_start`/`log_stop`.
#[derive(Default)]
struct Recorder(Vec<String>);

impl MemoryListener for Recorder {
    fn begin(&mut self) {
        self.0.push("begin".into());
    }
    fn region_del(&mut self, slot: &Memslot) {
        self.0.push(format!("del {} {:?}", slot.id(), slot.flags()));
    }
    fn region_add(&mut self, slot: &Memslot) {
        self.0.push(format!("add {} {:?}", slot.id(), slot.flags()));
    }
    fn commit(&mut self) {
        self.0.push("commit".into());
    }
}

#[test]
fn dirty_logging_alone_is_log_start_and_log_stop() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(region(2, 0, 8)).unwrap();
    let off = vm.snapshot(0);
    let logged = UserspaceMemoryRegion {
        flags: MemFlags::LOG_DIRTY_PAGES.bits(),
        ..region(2, 0, 8)
    };
    vm.set_user_memory_region(logged).unwrap();
    let on = vm.snapshot(0);

    let mut mirror = Mirror::of(&off);
    replay(&off, &on, &mut mirror);
    mirror.assert_holds(&on);
    replay(&on, &off, &mut mirror);
    mirror.assert_holds(&off);
    assert_eq!(
        mirror.events, 2,
        "one log_start, one log_stop, nothing else"
    );

    // By default a listener sees the toggle as a removal and an addition of the same slot.
    let mut recorder = Recorder::default();
    replay(&off, &on, &mut recorder);
    assert_eq!(
        recorder.0,
        [
            "begin",
            "del 2 MemFlags(0x0)",
            "add 2 MemFlags(LOG_DIRTY_PAGES)",
            "commit"
        ]
    );

    // Logging turned on together with a move is a move: removal, then addition.
    let moved = UserspaceMemoryRegion {
        guest_phys_addr: 64 * PAGE,
        ..logged
    };
    vm.set_user_memory_region(UserspaceMemoryRegion::delete(2))
        .unwrap();
    vm.set_user_memory_region(region(2, 0, 8)).unwrap();
    let fresh = vm.snapshot(0);
    vm.set_user_memory_region(moved).unwrap();
    let mut recorder = Recorder::default();
    replay(&fresh, &vm.snapshot(0), &mut recorder);
    assert_eq!(
        recorder.0,
        [
            "begin",
            "del 2 MemFlags(0x0)",
            "add 2 MemFlags(LOG_DIRTY_PAGES)",
            "commit"
        ]
    );
}

#[test]
fn nothing_is_called_when_nothing_changed() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(region(0, 0, 8)).unwrap();
    let now = vm.snapshot(0);
    let mut recorder = Recorder::default();
    replay(&now, &now, &mut recorder);
    // A slot rebuilt equal (a move away and back) is no change either.
    vm.set_user_memory_region(region(0, 50, 8)).unwrap();
    vm.set_user_memory_region(region(0, 0, 8)).unwrap();
    replay(&now, &vm.snapshot(0), &mut recorder);
    assert!(recorder.0.is_empty(), "{:?}", recorder.0);
}

#[test]
fn a_listener_can_be_a_trait_object() {
    let vm = Memslots::new(Limits::default());
    let empty = vm.snapshot(0);
    vm.set_user_memory_region(region(0, 0, 8)).unwrap();
    let mut recorder = Recorder::default();
    let listener: &mut dyn MemoryListener = &mut recorder;
    replay(&empty, &vm.snapshot(0), listener);
    assert_eq!(recorder.0, ["begin", "add 0 MemFlags(0x0)", "commit"]);
}

#[test]
fn a_long_random_run_replayed_step_by_step_and_in_leaps() {
    let vm = Memslots::new(Limits::default());
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let start = vm.snapshot(0);
    let mut seen = start.clone();
    let mut follower = Mirror::of(&start);
    let mut leaps = Vec::new();
    let mut applied = 0;
    for step in 0..3000 {
        let x = rng.next_u64();
        let id = (x % 16) as u16;
        let req = match x % 7 {
            0 => UserspaceMemoryRegion::delete(u32::from(id)),
            1 => UserspaceMemoryRegion {
                flags: ((x >> 8) % 2) as u32,
                ..region(
                    id,
                    vm.snapshot(0).get(id).map_or(0, |s| s.base_gfn().0),
                    1 + u64::from(id % 4),
                )
            },
            _ => region(id, (x >> 16) % 80, 1 + u64::from(id % 4)),
        };
        if vm.set_user_memory_region(req).is_ok() {
            applied += 1;
        }
        let now = vm.snapshot(0);
        replay(&seen, &now, &mut follower);
        follower.assert_holds(&now);
        seen = now;
        if step % 250 == 0 {
            leaps.push(seen.clone());
        }
    }
    assert!(applied > 1000, "the run changed too little: {applied}");
    let end = vm.snapshot(0);
    for from in &leaps {
        let mut mirror = Mirror::of(from);
        replay(from, &end, &mut mirror);
        mirror.assert_holds(&end);
        assert!(mirror.events >= from.diff(&end).count());
    }
    // From the empty start, the whole end state is additions.
    assert!(start.diff(&end).all(|d| matches!(d, Diff::Added(_))));
    assert_eq!(start.diff(&end).count(), end.len());
}
