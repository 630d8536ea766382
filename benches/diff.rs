//! What a diff costs: two versions of a full address space (32764 slots) that differ by one
//! moved slot, compared three ways.
//!
//! - `shared`: the versions come from one `Memslots`, so they share every tree node the move did
//!   not copy, and the diff steps over them: O(log n).
//! - `independent`: the same two layouts built by two separate `Memslots`, so nothing is shared
//!   and the diff opens every node: O(n).
//! - `iterate_all`: walking every slot of one version, the floor of any diff that looks at each
//!   slot.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use memslots::{Limits, MemFlags, MemslotSet, Memslots, Snapshot, UserspaceMemoryRegion};

const PAGE: u64 = 4096;
const SLOTS: u16 = 32764;

fn region(id: u16, gfn: u64) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(
        u32::from(id),
        MemFlags::empty(),
        gfn * PAGE,
        PAGE,
        0x7000_0000_0000 + u64::from(id) * PAGE,
    )
}

/// A VM with every user slot in use, one page each with a hole after it; the version before and
/// after moving slot `SLOTS / 2` into a hole at the top.
fn versions() -> (Snapshot, Snapshot) {
    let vm = Memslots::new(Limits::default());
    for id in 0..SLOTS {
        vm.set_user_memory_region(region(id, 2 * u64::from(id)))
            .expect("fits");
    }
    let before = vm.snapshot(0);
    vm.set_user_memory_region(region(SLOTS / 2, 2 * u64::from(SLOTS) + 1))
        .expect("moves");
    (before, vm.snapshot(0))
}

fn count_changes(old: &MemslotSet, new: &MemslotSet) -> usize {
    old.diff(new).count()
}

fn diff(c: &mut Criterion) {
    let (old, new) = versions();
    // The same "before" layout, built by another VM: it shares nothing with `new`.
    let (old_elsewhere, _) = versions();
    assert_eq!(count_changes(&old, &new), 1);
    assert_eq!(count_changes(&old_elsewhere, &new), 1);

    let mut group = c.benchmark_group("diff_32764_slots_one_moved");
    group.bench_function("shared", |b| {
        b.iter(|| count_changes(black_box(&old), black_box(&new)))
    });
    group.bench_function("independent", |b| {
        b.iter(|| count_changes(black_box(&old_elsewhere), black_box(&new)))
    });
    group.bench_function("iterate_all", |b| {
        b.iter(|| black_box(&new).iter().map(|s| s.npages()).sum::<u64>())
    });
    group.finish();
}

criterion_group!(benches, diff);
criterion_main!(benches);
