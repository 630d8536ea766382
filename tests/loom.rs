//! Model checks of the publish / grace-period protocol: every interleaving (up to the preemption
//! bound) of a writer and one or two readers. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom`.
//!
//! Loom checks the fence flavour only: it cannot model `membarrier(2)` (a barrier executed on other
//! threads' behalf), and under `cfg(loom)` every reader is of the fence flavour. The membarrier
//! flavour's argument, in `src/docs/protocol.md`, reduces to this model.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use memslots::{ArchHooks, Limits, MemFlags, Memslot, Memslots, UserspaceMemoryRegion};

fn limits() -> Limits {
    Limits::default().with_address_spaces(1).unwrap()
}

fn slot(id: u32, gfn: u64) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(id, MemFlags::empty(), gfn << 12, 4096, 0x10_0000)
}

/// A reader that may have seen the version before a publish; the writer "reclaims" that version
/// once the grace period has ended (a VMM would unmap memory there): right after the waiting
/// update returns, or once the non-waiting one's grace period polls done. The reader must never
/// see the reclaim while still inside a section that uses the old version. It runs two sections,
/// so that the reload on leaving after a publication is covered too.
fn reclaim_after_grace_period(vm: Memslots, waiting: bool) {
    let vm = Arc::new(vm);
    let reclaimed = Arc::new(AtomicBool::new(false));
    let reader = vm.reader();
    let vcpu = {
        let reclaimed = Arc::clone(&reclaimed);
        thread::spawn(move || {
            for _ in 0..2 {
                let guard = reader.read();
                if guard.slots(0).get(1).is_none() {
                    // The old version: it must still be alive.
                    assert!(
                        !reclaimed.load(Ordering::Acquire),
                        "the old version was reclaimed while a section still used it"
                    );
                }
                drop(guard);
            }
        })
    };
    if waiting {
        vm.set_user_memory_region(slot(1, 0)).unwrap();
    } else {
        let (_, grace) = vm.publish_user_memory_region(slot(1, 0)).unwrap();
        while !vm.poll_synchronize(&grace) {
            thread::yield_now();
        }
    }
    reclaimed.store(true, Ordering::Release);
    vcpu.join().unwrap();
}

#[test]
fn a_section_that_saw_the_old_version_holds_up_the_writer() {
    loom::model(|| reclaim_after_grace_period(Memslots::new(limits()), true));
}

#[test]
#[should_panic(expected = "reclaimed while a section still used it")]
fn the_model_catches_the_protocol_without_its_fences() {
    loom::model(|| reclaim_after_grace_period(Memslots::weakened_for_loom(limits()), true));
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

#[test]
fn a_polled_grace_period_ends_only_after_the_sections_that_saw_the_old_version() {
    loom::model(|| reclaim_after_grace_period(Memslots::new(limits()), false));
}

#[test]
#[should_panic(expected = "reclaimed while a section still used it")]
fn the_model_catches_polling_without_the_fences() {
    loom::model(|| reclaim_after_grace_period(Memslots::weakened_for_loom(limits()), false));
}

/// A section that begins after the grace period started never holds it up: the writer waits for
/// the grace period while the reader sits inside a section it entered after the publication.
#[test]
fn a_grace_period_does_not_wait_for_sections_that_began_after_it() {
    loom::model(|| {
        let vm = Arc::new(Memslots::new(limits()));
        let reader = vm.reader();
        let started = Arc::new(AtomicBool::new(false));
        let inside = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let vcpu = {
            let (started, inside, release) = (
                Arc::clone(&started),
                Arc::clone(&inside),
                Arc::clone(&release),
            );
            thread::spawn(move || {
                while !started.load(Ordering::Acquire) {
                    thread::yield_now();
                }
                let guard = reader.read();
                // Entered after the publication: it sees the new slot.
                assert!(guard.slots(0).get(1).is_some());
                inside.store(true, Ordering::Release);
                while !release.load(Ordering::Acquire) {
                    thread::yield_now();
                }
                drop(guard);
            })
        };
        let (_, grace) = vm.publish_user_memory_region(slot(1, 0)).unwrap();
        started.store(true, Ordering::Release);
        while !inside.load(Ordering::Acquire) {
            thread::yield_now();
        }
        grace.wait(); // would spin forever if it waited for the later section
        assert!(grace.is_done());
        release.store(true, Ordering::Release);
        vcpu.join().unwrap();
    });
}

#[test]
fn two_readers_each_hold_up_the_writer() {
    // The writer must wait for both sections, whichever order they begin and end in.
    loom::model(|| {
        let vm = Arc::new(Memslots::new(limits()));
        let reclaimed = Arc::new(AtomicBool::new(false));
        let vcpus: Vec<_> = (0..2)
            .map(|_| {
                let reader = vm.reader();
                let reclaimed = Arc::clone(&reclaimed);
                thread::spawn(move || {
                    let guard = reader.read();
                    let old = guard.slots(0).get(1).is_none();
                    // Checked as the section ends: all through it the old version was alive.
                    assert!(
                        !(old && reclaimed.load(Ordering::Acquire)),
                        "the old version was reclaimed while a section still used it"
                    );
                    drop(guard);
                })
            })
            .collect();
        vm.set_user_memory_region(slot(1, 0)).unwrap();
        reclaimed.store(true, Ordering::Release);
        for vcpu in vcpus {
            vcpu.join().unwrap();
        }
    });
}

/// Records that `flush_shadow` ran (a VMM zaps the slot's shadow page tables there).
struct FlushFlag(Arc<AtomicBool>);

impl ArchHooks for FlushFlag {
    fn flush_shadow(&self, _slot: &Memslot) {
        self.0.store(true, Ordering::Release);
    }
}

#[test]
fn flush_shadow_runs_only_after_every_section_that_saw_the_valid_slot() {
    // A delete publishes the slot INVALID, waits a grace period, then flushes. A section that
    // found the slot still valid may translate through it (and fill shadow page tables) until
    // it ends, so it must never observe the flush.
    loom::model(|| {
        let flushed = Arc::new(AtomicBool::new(false));
        let vm = Arc::new(Memslots::with_hooks(
            limits(),
            FlushFlag(Arc::clone(&flushed)),
        ));
        vm.set_user_memory_region(slot(1, 0)).unwrap();
        let reader = vm.reader();
        let vcpu = {
            let flushed = Arc::clone(&flushed);
            thread::spawn(move || {
                let guard = reader.read();
                let valid = guard.slots(0).get(1).is_some_and(|s| !s.is_invalid());
                assert!(
                    !(valid && flushed.load(Ordering::Acquire)),
                    "flush_shadow ran while a section could still use the valid slot"
                );
                drop(guard);
            })
        };
        vm.set_user_memory_region(UserspaceMemoryRegion::delete(1))
            .unwrap();
        assert!(flushed.load(Ordering::Acquire), "a delete flushes");
        vcpu.join().unwrap();
    });
}
