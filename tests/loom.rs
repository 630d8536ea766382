//! Model checks of the publish / grace-period protocol: every interleaving (up to the preemption
//! bound) of a writer and a reader. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use memslots::{Limits, MemFlags, Memslots, UserspaceMemoryRegion};

fn limits() -> Limits {
    Limits::default().with_address_spaces(1).unwrap()
}

fn slot(id: u32, gfn: u64) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(id, MemFlags::empty(), gfn << 12, 4096, 0x10_0000)
}

/// A reader that may have seen the version before a publish; the writer "reclaims" that version
/// right after the update returns (a VMM would unmap memory there). The reader must never see
/// the reclaim while still inside a section that uses the old version.
fn reclaim_after_update(vm: Memslots) {
    let vm = Arc::new(vm);
    let reclaimed = Arc::new(AtomicBool::new(false));
    let reader = vm.reader();
    let vcpu = {
        let reclaimed = Arc::clone(&reclaimed);
        thread::spawn(move || {
            let guard = reader.read();
            if guard.slots(0).get(1).is_none() {
                // The old version: it must still be alive.
                assert!(
                    !reclaimed.load(Ordering::Acquire),
                    "the old version was reclaimed while a section still used it"
                );
            }
            drop(guard);
        })
    };
    vm.set_user_memory_region(slot(1, 0)).unwrap();
    reclaimed.store(true, Ordering::Release);
    vcpu.join().unwrap();
}

#[test]
fn a_section_that_saw_the_old_version_holds_up_the_writer() {
    loom::model(|| reclaim_after_update(Memslots::new(limits())));
}

#[test]
#[should_panic(expected = "reclaimed while a section still used it")]
fn the_model_catches_the_protocol_without_its_fences() {
    loom::model(|| reclaim_after_update(Memslots::weakened_for_loom(limits())));
}

#[test]
fn sections_see_generations_in_order_and_the_writer_always_finishes() {
    loom::model(|| {
        let vm = Arc::new(Memslots::new(limits()));
        let reader = vm.reader();
        let vcpu = thread::spawn(move || {
            let mut last = 0;
            for _ in 0..2 {
                let guard = reader.read();
                let generation = guard.slots(0).generation();
                assert!(generation >= last);
                last = generation;
            }
        });
        // A create then a move: three publications, each followed by a grace period that must
        // end however the reader's sections fall (no lost wake-up, no wait on a reader outside).
        vm.set_user_memory_region(slot(1, 0)).unwrap();
        vm.set_user_memory_region(slot(1, 8)).unwrap();
        vcpu.join().unwrap();
        assert_eq!(vm.snapshot(0).generation(), 3);
    });
}
