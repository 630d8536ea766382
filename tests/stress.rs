//! Readers check every version they see for internal consistency while a writer creates, moves,
//! re-flags and deletes slots, alone and in transactions. Short by default; the long run is
//! `cargo test --release --test stress -- --ignored`.

#[path = "support/rng.rs"]
mod rng;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use memslots::{Gfn, Limits, MemFlags, MemslotSet, Memslots, UserspaceMemoryRegion};
use rng::XorShift;

const PAGE: u64 = 4096;
const IDS: u32 = 48;
const MIN_UPDATES: u64 = 200;

/// One random request over a small id and gfn space: every change kind happens often.
fn request(rng: &mut XorShift) -> UserspaceMemoryRegion {
    let id = rng.below(u64::from(IDS)) as u32;
    let as_id = rng.below(2) as u32;
    if rng.below(5) == 0 {
        return UserspaceMemoryRegion::delete((as_id << 16) | id);
    }
    UserspaceMemoryRegion::new(
        (as_id << 16) | id,
        MemFlags::from_bits_truncate(rng.below(2) as u32),
        rng.below(512) * PAGE,
        (1 + u64::from(id % 4)) * PAGE,
        0x7000_0000_0000 + u64::from(id) * 16 * PAGE,
    )
}

/// What every published version must satisfy, checked from the reader's side.
fn check_version(set: &MemslotSet) {
    set.check_invariants().expect("a consistent version");
    for slot in set {
        assert_eq!(set.find(slot.base_gfn()).map(|s| s.id()), Some(slot.id()));
        assert_eq!(
            set.find(Gfn(slot.end_gfn().0 - 1)).map(|s| s.id()),
            Some(slot.id())
        );
        let hits = set
            .hva_range(slot.userspace_addr(), slot.end_hva())
            .filter(|(s, _)| s.id() == slot.id())
            .count();
        assert_eq!(hits, 1, "slot {} missing from the hva tree", slot.id());
    }
}

fn churn(duration: Duration, readers: usize) {
    let vm = Arc::new(Memslots::new(Limits::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let versions_seen = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..readers)
        .map(|_| {
            let reader = vm.reader();
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&versions_seen));
            thread::spawn(move || {
                let mut last = [0u64, 1];
                while !stop.load(Ordering::Relaxed) {
                    let mut guard = reader.read();
                    for as_id in 0..2u16 {
                        let set = guard.slots(as_id);
                        let generation = set.generation();
                        assert!(
                            generation >= last[usize::from(as_id)],
                            "generation went back"
                        );
                        assert_eq!(generation % 2, u64::from(as_id), "generation parity");
                        if generation != last[usize::from(as_id)] {
                            check_version(set);
                            last[usize::from(as_id)] = generation;
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // The cached lookup must agree with a plain search of the same version.
                    for gfn in [0, 100, 300, 511] {
                        let plain = guard.slots(0).find(Gfn(gfn)).map(|s| s.id());
                        let cached = guard.gfn_to_memslot(0, Gfn(gfn)).map(|s| s.id());
                        assert_eq!(plain, cached);
                        guard.mark_page_dirty(0, Gfn(gfn));
                    }
                }
            })
        })
        .collect();

    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let started = Instant::now();
    let mut published = 0u64;
    // At least `MIN_UPDATES` however slow a loaded machine makes them, so the run never proves
    // too little.
    while started.elapsed() < duration || published < MIN_UPDATES {
        if rng.below(8) == 0 {
            let mut tx = vm.transaction();
            for _ in 0..1 + rng.below(6) {
                let _ = tx.set_user_memory_region(request(&mut rng));
            }
            tx.commit().expect("no hooks to refuse");
        } else {
            let _ = vm.set_user_memory_region(request(&mut rng));
        }
        published += 1;
        if published % 64 == 0 {
            for id in 0..IDS {
                let _ = vm.get_dirty_log(id);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("a reader found an inconsistent version");
    }
    assert!(versions_seen.load(Ordering::Relaxed) > 0);
    for as_id in 0..2 {
        check_version(&vm.snapshot(as_id));
    }
}

#[test]
fn readers_see_only_consistent_versions_small() {
    churn(Duration::from_millis(1500), 2);
}

#[test]
#[ignore = "long: run with --release -- --ignored"]
fn readers_see_only_consistent_versions_large() {
    churn(Duration::from_secs(120), 4);
}
