//! Versions are immutable: every snapshot taken during a run answers at the end exactly as it did
//! when it was taken. Readers rely on this, and so does every structural-sharing shortcut.

#[path = "support/rng.rs"]
mod rng;

use memslots::{
    ChangeKind, Gfn, Limits, MemFlags, Memslot, Memslots, Snapshot, UserspaceMemoryRegion,
};

use rng::XorShift;

const PAGE: u64 = 4096;

fn layout(s: &Snapshot) -> Vec<Memslot> {
    s.iter().cloned().collect()
}

#[test]
fn every_kept_version_is_unchanged_at_the_end() {
    let vm = Memslots::new(Limits::default());
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut kept: Vec<(Snapshot, Vec<Memslot>, u64)> = Vec::new();
    let mut changes = 0;
    for _ in 0..3000 {
        let id = rng.below(64) as u32;
        let req = match rng.below(4) {
            0 => UserspaceMemoryRegion::delete(id),
            _ => UserspaceMemoryRegion::new(
                id,
                MemFlags::from_bits_truncate(rng.below(2) as u32),
                rng.below(4096) * PAGE,
                (1 + rng.below(4)) * PAGE,
                // Fixed per id, so that re-sending an id moves or re-flags it.
                (0x1000 + u64::from(id) * 16) * PAGE,
            ),
        };
        if let Ok(kind) = vm.set_user_memory_region(req) {
            if kind != ChangeKind::Unchanged {
                changes += 1;
            }
        }
        let snap = vm.snapshot(0);
        let generation = snap.generation();
        kept.push((snap.clone(), layout(&snap), generation));
    }
    assert!(changes > 1000, "the run changed too little: {changes}");
    for (snap, then, generation) in &kept {
        assert_eq!(&layout(snap), then);
        assert_eq!(snap.generation(), *generation);
        snap.check_invariants().unwrap();
        for slot in then {
            assert_eq!(snap.find(slot.base_gfn()), Some(slot));
            assert_eq!(snap.get(slot.id()), Some(slot));
        }
    }
    // Generations never go backwards between kept versions.
    assert!(kept.windows(2).all(|w| w[0].2 <= w[1].2));
}

#[test]
fn all_user_slots_of_an_address_space_fill_and_empty() {
    let limits = Limits::default();
    let vm = Memslots::new(limits);
    let n = limits.user_slots();
    for id in 0..n {
        let req = UserspaceMemoryRegion::new(
            u32::from(id),
            MemFlags::empty(),
            u64::from(id) * 2 * PAGE,
            PAGE,
            0x7000_0000_0000 + u64::from(n - id) * PAGE,
        );
        assert_eq!(vm.set_user_memory_region(req), Ok(ChangeKind::Create));
    }
    let full = vm.snapshot(0);
    assert_eq!(full.len(), usize::from(n));
    assert_eq!(full.total_pages(), u64::from(n));
    full.check_invariants().unwrap();
    for id in 0..n {
        let gfn = Gfn(u64::from(id) * 2);
        assert_eq!(full.find(gfn).map(Memslot::id), Some(id));
        assert!(full.find(Gfn(gfn.0 + 1)).is_none(), "holes stay holes");
    }
    // No user slot is left to create.
    let over = UserspaceMemoryRegion::new(u32::from(n), MemFlags::empty(), 1 << 40, PAGE, 0);
    assert_eq!(vm.set_user_memory_region(over).unwrap_err().errno(), 22);
    // Generation: one published version per create, two per delete.
    assert_eq!(full.generation(), 2 * u64::from(n));
    for id in (0..n).rev() {
        let kind = vm.set_user_memory_region(UserspaceMemoryRegion::delete(u32::from(id)));
        assert_eq!(kind, Ok(ChangeKind::Delete));
    }
    assert!(vm.snapshot(0).is_empty());
    assert_eq!(vm.total_pages(), 0);
    assert_eq!(
        full.len(),
        usize::from(n),
        "the full version is still whole"
    );
    full.check_invariants().unwrap();
}
