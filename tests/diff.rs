//! `MemslotSet::diff`: what it reports, and that it skips what two versions share.

#[path = "support/rng.rs"]
mod rng;

use memslots::{
    ChangeKind, Diff, Gfn, Limits, MemFlags, Memslot, Memslots, Snapshot, UserspaceMemoryRegion,
};

use rng::XorShift;

const PAGE: u64 = 4096;

fn region(id: u16, gfn: u64, pages: u64, flags: MemFlags) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(
        u32::from(id),
        flags,
        gfn * PAGE,
        pages * PAGE,
        0x7000_0000_0000 + u64::from(id) * 0x1000_0000,
    )
}

/// Every user slot of address space 0 in use, one page each with a hole after it.
fn full_vm() -> Memslots {
    let limits = Limits::default();
    let vm = Memslots::new(limits);
    for id in 0..limits.user_slots() {
        let created =
            vm.set_user_memory_region(region(id, 2 * u64::from(id), 1, MemFlags::empty()));
        assert_eq!(created, Ok(ChangeKind::Create));
    }
    vm
}

/// Slot `id` of `vm` moved into the hole after the last slot.
fn move_one(vm: &Memslots, id: u16) -> UserspaceMemoryRegion {
    let to = region(
        id,
        2 * u64::from(Limits::default().user_slots()) + 1,
        1,
        MemFlags::empty(),
    );
    assert_eq!(vm.set_user_memory_region(to), Ok(ChangeKind::Move));
    to
}

#[test]
fn one_change_among_32764_slots_visits_few_nodes() {
    let vm = full_vm();
    let before = vm.snapshot(0);
    move_one(&vm, 12345);
    let after = vm.snapshot(0);

    let mut changes = before.diff(&after);
    let listed: Vec<Diff<'_>> = changes.by_ref().collect();
    let [Diff::Changed { old, new }] = listed[..] else {
        panic!("expected one change, got {listed:?}");
    };
    assert_eq!((old.id(), new.id()), (12345, 12345));
    assert_eq!(old.base_gfn(), Gfn(2 * 12345));
    assert_eq!(new.base_gfn(), Gfn(2 * 32764 + 1));
    let shared_walk = changes.nodes_visited();
    assert!(
        shared_walk < 100,
        "a one-slot diff opened {shared_walk} nodes"
    );

    // The same two layouts, one of them built by another VM: nothing is shared, every node of
    // both trees is opened, and the answer is the same.
    let elsewhere = full_vm().snapshot(0);
    let mut full = elsewhere.diff(&after);
    assert_eq!(full.by_ref().collect::<Vec<_>>(), listed);
    let full_walk = full.nodes_visited();
    assert!(
        full_walk > 2000,
        "a full walk opened only {full_walk} nodes"
    );
    assert!(full_walk > 40 * shared_walk);
}

#[test]
fn a_version_against_itself_is_empty_without_a_walk() {
    let vm = full_vm();
    let now = vm.snapshot(0);
    let mut same = now.diff(&now);
    assert_eq!(same.next(), None);
    assert_eq!(same.nodes_visited(), 0);
    // Two snapshots of one published version are the same version.
    let again = vm.snapshot(0);
    let mut same = now.diff(&again);
    assert_eq!(same.next(), None);
    assert_eq!(same.nodes_visited(), 0);
}

#[test]
fn additions_removals_and_changes_in_slot_id_order() {
    let vm = Memslots::new(Limits::default());
    for id in [0, 3, 5, 9] {
        vm.set_user_memory_region(region(id, 16 * u64::from(id), 4, MemFlags::empty()))
            .unwrap();
    }
    let before = vm.snapshot(0);
    vm.set_user_memory_region(UserspaceMemoryRegion::delete(3))
        .unwrap();
    vm.set_user_memory_region(region(7, 200, 1, MemFlags::empty()))
        .unwrap();
    vm.set_user_memory_region(region(9, 300, 4, MemFlags::empty()))
        .unwrap();
    vm.set_user_memory_region(region(0, 0, 4, MemFlags::LOG_DIRTY_PAGES))
        .unwrap();
    vm.set_user_memory_region(region(1, 400, 2, MemFlags::READONLY))
        .unwrap();
    let after = vm.snapshot(0);

    let summary: Vec<String> = before
        .diff(&after)
        .map(|d| match d {
            Diff::Added(s) => format!("+{}", s.id()),
            Diff::Removed(s) => format!("-{}", s.id()),
            Diff::Changed { old, new } => {
                assert_eq!(old.id(), new.id());
                format!("~{}", new.id())
            }
        })
        .collect();
    assert_eq!(summary, ["~0", "+1", "-3", "+7", "~9"]);

    // Backwards, additions and removals swap and changes swap sides.
    let forth: Vec<_> = before.diff(&after).collect();
    let back: Vec<_> = after.diff(&before).collect();
    assert_eq!(forth.len(), back.len());
    for (f, b) in forth.iter().zip(&back) {
        assert_eq!(f.before(), b.after());
        assert_eq!(f.after(), b.before());
    }
    // The diff hands out the very slots the versions hold, not copies.
    let changed_0 = forth[0].after().unwrap();
    assert!(std::ptr::eq(changed_0, after.get(0).unwrap()));
}

#[test]
fn a_slot_rebuilt_equal_is_not_a_change() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(region(1, 0, 4, MemFlags::LOG_DIRTY_PAGES))
        .unwrap();
    vm.set_user_memory_region(region(2, 8, 4, MemFlags::empty()))
        .unwrap();
    let before = vm.snapshot(0);
    // Logging off and on again: a new slot (and a new, clear bitmap) with the same layout.
    vm.set_user_memory_region(region(1, 0, 4, MemFlags::empty()))
        .unwrap();
    vm.set_user_memory_region(region(1, 0, 4, MemFlags::LOG_DIRTY_PAGES))
        .unwrap();
    // A move away and back.
    vm.set_user_memory_region(region(2, 100, 4, MemFlags::empty()))
        .unwrap();
    vm.set_user_memory_region(region(2, 8, 4, MemFlags::empty()))
        .unwrap();
    let after = vm.snapshot(0);
    assert!(!std::ptr::eq(before.get(1).unwrap(), after.get(1).unwrap()));
    let mut changes = before.diff(&after);
    assert_eq!(changes.next(), None);
    assert!(
        changes.nodes_visited() > 0,
        "the versions differ in pointers"
    );
}

#[test]
fn versions_of_one_run_diff_as_their_layouts_do() {
    // Each step's diff against every kept version agrees with a comparison of full listings.
    let vm = Memslots::new(Limits::default());
    let mut kept: Vec<Snapshot> = vec![vm.snapshot(0)];
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for _ in 0..400 {
        let x = rng.next_u64();
        let id = (x % 24) as u16;
        let req = if x % 5 == 0 {
            UserspaceMemoryRegion::delete(u32::from(id))
        } else {
            let flags = MemFlags::from_bits_truncate((x >> 8) as u32 & 1);
            region(id, (x >> 16) % 200, 1 + u64::from(id % 3), flags)
        };
        let _ = vm.set_user_memory_region(req);
        kept.push(vm.snapshot(0));
    }
    let listing = |s: &Snapshot| -> Vec<Memslot> {
        let mut v: Vec<Memslot> = s.iter().cloned().collect();
        v.sort_by_key(Memslot::id);
        v
    };
    let now = vm.snapshot(0);
    let now_listing = listing(&now);
    for old in kept.iter().step_by(7) {
        let mut rebuilt = listing(old);
        for change in old.diff(&now) {
            match change {
                Diff::Added(s) => rebuilt.push(s.clone()),
                Diff::Removed(s) => rebuilt.retain(|r| r.id() != s.id()),
                Diff::Changed { old, new } => {
                    assert!(old != new);
                    let at = rebuilt.iter().position(|r| r.id() == old.id()).unwrap();
                    assert_eq!(&rebuilt[at], old);
                    rebuilt[at] = new.clone();
                }
            }
        }
        rebuilt.sort_by_key(Memslot::id);
        assert_eq!(rebuilt, now_listing);
    }
}
