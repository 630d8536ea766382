//! Heap bytes the memslots hold: an empty VM, each slot, each old version kept alive, and a check
//! that lookups allocate nothing. Counted with `stats_alloc`'s instrumented system allocator
//! (bytes allocated and not yet freed), so no `unsafe` is needed here.
//!
//! `cargo run --release --features baseline --example memory [-- N,N,...]` (default 10,509,4096,32764 slots).

use std::alloc::System;
use std::hint::black_box;

use memslots::baseline::ArrayMemslots;
use memslots::{DirtyBitmap, UserspaceMemoryRegion};
use memslots::{Gfn, GuestRam, Hva, Limits, MemFlags, Memslots, Version, Vm};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const PAGES: u64 = 16;

/// Heap bytes allocated and still live since `region` began (reallocations already count their
/// growth as allocated and their shrinking as freed).
fn live(region: &Region<'_, System>) -> i64 {
    let s = region.change();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

/// Slot `id` of a layout with host addresses in a different order from guest addresses.
fn region(id: u64, n: u64) -> UserspaceMemoryRegion {
    let hva_pos = (id * 7919) % n; // 7919 is prime and divides none of the counts used
    UserspaceMemoryRegion::new(
        id as u32,
        MemFlags::empty(),
        (0x10000 + id * PAGES) << 12,
        PAGES << 12,
        0x7f00_0000_0000 + ((hva_pos * PAGES) << 12),
    )
}

/// Empty VM bytes, bytes per slot after `n` single updates, bytes kept by one old version.
fn measure<S: Version>(new: impl Fn() -> Vm<S>, n: u64) -> (i64, f64, i64) {
    let region0 = Region::new(GLOBAL);
    let vm = new();
    let empty = live(&region0);
    for id in 0..n {
        vm.set_user_memory_region(region(id, n)).expect("valid");
    }
    let per_slot = (live(&region0) - empty) as f64 / n as f64;
    // One old version held while a slot in the middle changes flags.
    let kept = vm.snapshot(0);
    let dirty_bitmap = {
        let before = live(&region0);
        let bitmap = std::sync::Arc::new(DirtyBitmap::new(PAGES));
        let bytes = live(&region0) - before;
        drop(bitmap);
        bytes
    };
    let before = live(&region0);
    let mid = region(n / 2, n);
    vm.set_user_memory_region(UserspaceMemoryRegion { flags: 1, ..mid })
        .expect("flags only");
    let per_version = live(&region0) - before - dirty_bitmap;
    drop(kept);
    drop(vm);
    (empty, per_slot, per_version)
}

/// Heap bytes per slot of a VM whose slots carry a backing: each slot's `Arc` of its backing
/// comes on top of the layout. The backings are empty `GuestRam`s, so what is counted is the
/// bookkeeping, not guest memory.
fn backed_per_slot(n: u64) -> f64 {
    let region0 = Region::new(GLOBAL);
    let vm: Memslots<GuestRam> = Memslots::backed(Limits::default());
    let empty = live(&region0);
    for id in 0..n {
        vm.create_memory_region(region(id, n), GuestRam::new(0))
            .expect("valid");
    }
    // A backed VM's updates do not wait, and leave the versions they replaced for the writer's
    // next grace period to free: count what stays once they are freed.
    vm.synchronize();
    (live(&region0) - empty) as f64 / n as f64
}

fn main() {
    let counts: Vec<u64> = std::env::args()
        .nth(1)
        .map(|a| {
            a.split(',')
                .map(|n| n.parse().expect("slot count"))
                .collect()
        })
        .unwrap_or_else(|| vec![10, 509, 4096, 32764]);

    let r = Region::new(GLOBAL);
    let vm = Memslots::new(Limits::default());
    println!(
        "empty Memslots::new(Limits::default()): {} heap bytes (+ {} bytes for the value itself)",
        live(&r),
        std::mem::size_of::<Memslots>()
    );
    let before = live(&r);
    let reader = vm.reader();
    println!("  one Reader: {} bytes", live(&r) - before);
    drop(reader);
    drop(vm);
    let r = Region::new(GLOBAL);
    let array = ArrayMemslots::new(Limits::default());
    println!(
        "empty ArrayMemslots::new(Limits::default()): {} bytes",
        live(&r)
    );
    drop(array);

    println!(
        "\n{:>6}  {:>16} {:>18} {:>16}  {:>22} {:>22}",
        "slots",
        "trees B/slot",
        "backed B/slot",
        "array B/slot",
        "trees B/old version",
        "array B/old version"
    );
    for &n in &counts {
        let (_, t_slot, t_version) = measure(|| Memslots::new(Limits::default()), n);
        let backed = backed_per_slot(n);
        let (_, a_slot, a_version) = measure(|| ArrayMemslots::new(Limits::default()), n);
        println!(
            "{n:>6}  {t_slot:>16.1} {backed:>18.1} {a_slot:>16.1}  {t_version:>22} {a_version:>22}"
        );
    }
    println!(
        "(B/slot: live heap bytes after creating the slots one update at a time, less the empty VM, \
         divided by the slots; no dirty logging. Backed: Memslots<GuestRam> with empty GuestRams, \
         so the slot's bookkeeping and its backing's Arc, not guest memory.\n B/old version: bytes \
         that stay live when a snapshot is held across one flags-only update, the new slot's dirty \
         bitmap excluded.)"
    );

    // The read path allocates nothing: count allocations over many lookups.
    let n = *counts.iter().max().unwrap_or(&509);
    let vm = Memslots::new(Limits::default());
    let mut tx = vm.transaction();
    for id in 0..n {
        tx.set_user_memory_region(region(id, n)).expect("valid");
    }
    tx.commit().expect("no hooks");
    let reader = vm.reader();
    let snapshot = vm.snapshot(0);
    let r = Region::new(GLOBAL);
    let mut found = 0u64;
    for i in 0..100_000u64 {
        let gfn = Gfn(0x10000 + (i * 2_654_435_761) % (n * PAGES));
        found += u64::from(snapshot.find(gfn).is_some());
        let mut guard = reader.read();
        found += u64::from(guard.gfn_to_memslot(0, gfn).is_some());
        let hva = 0x7f00_0000_0000 + ((i % (n * PAGES)) << 12);
        found += snapshot.hva_range(Hva(hva), Hva(hva + 4096)).count() as u64;
    }
    black_box(found);
    println!(
        "\n100000 x (find + reader section with gfn_to_memslot + hva_range) at {n} slots: {} allocations",
        r.change().allocations
    );
}
