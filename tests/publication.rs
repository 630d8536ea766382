//! The update protocol seen by readers and hooks: grace periods, the INVALID step, hook order and
//! failure, transactions, dirty logging and internal slots.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use memslots::{
    errno, ArchHooks, ChangeKind, Error, Gfn, HookError, Limits, MemFlags, Memslot, Memslots,
    UserspaceMemoryRegion,
};

const PAGE: u64 = 4096;

fn ram(slot: u32, gpa_page: u64, pages: u64, flags: MemFlags) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(
        slot,
        flags,
        gpa_page * PAGE,
        pages * PAGE,
        0x7000_0000_0000 + u64::from(slot) * (1 << 32),
    )
}

#[test]
fn synchronize_waits_for_a_section_opened_before_it() {
    let vm = Arc::new(Memslots::new(Limits::default()));
    let reader = vm.reader();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let left = Arc::new(AtomicBool::new(false));
    let vcpu = {
        let left = Arc::clone(&left);
        thread::spawn(move || {
            let guard = reader.read();
            entered_tx.send(()).unwrap();
            thread::sleep(Duration::from_millis(100));
            left.store(true, Ordering::SeqCst);
            drop(guard);
        })
    };
    entered_rx.recv().unwrap();
    vm.synchronize();
    assert!(
        left.load(Ordering::SeqCst),
        "synchronize returned while a section was open"
    );
    vcpu.join().unwrap();
}

#[test]
fn snapshots_and_idle_readers_do_not_hold_up_grace_periods() {
    let vm = Memslots::new(Limits::default());
    let _snapshot = vm.snapshot(0);
    let idle = vm.reader();
    drop(idle.read());
    vm.set_user_memory_region(ram(0, 0, 4, MemFlags::empty()))
        .unwrap();
    vm.set_user_memory_region(UserspaceMemoryRegion::delete(0))
        .unwrap();
    vm.synchronize();
}

/// Records hook calls; can be told to refuse `prepare`; looks at the published version from
/// inside `flush_shadow` (reading is allowed there, writing is not).
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    refuse: AtomicBool,
    vm: OnceLock<std::sync::Weak<Memslots>>,
    seen_invalid: AtomicU32,
}

impl ArchHooks for Recorder {
    fn prepare(
        &self,
        old: Option<&Memslot>,
        new: Option<&Memslot>,
        change: ChangeKind,
    ) -> Result<(), HookError> {
        self.calls.lock().unwrap().push(format!(
            "prepare {change:?} {:?}->{:?}",
            old.map(|s| s.base_gfn().0),
            new.map(|s| s.base_gfn().0)
        ));
        if self.refuse.load(Ordering::SeqCst) {
            return Err(HookError::new(errno::ENOMEM, "no room in the shadow MMU"));
        }
        Ok(())
    }

    fn commit(&self, _: Option<&Memslot>, _: Option<&Memslot>, change: ChangeKind) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("commit {change:?}"));
    }

    fn flush_shadow(&self, slot: &Memslot) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("flush {}", slot.id()));
        // The version readers see now has the slot INVALID: found, but not translatable.
        if let Some(vm) = self.vm.get().and_then(std::sync::Weak::upgrade) {
            let snap = vm.snapshot(slot.as_id());
            let published = snap.get(slot.id()).expect("still there while INVALID");
            assert!(published.is_invalid());
            assert_eq!(published.gfn_to_hva(published.base_gfn()), None);
            assert_eq!(
                snap.find(published.base_gfn()).map(Memslot::id),
                Some(slot.id())
            );
            self.seen_invalid.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn recorded_vm() -> (Arc<Memslots>, Arc<Recorder>) {
    struct Shared(Arc<Recorder>);
    impl ArchHooks for Shared {
        fn prepare(
            &self,
            o: Option<&Memslot>,
            n: Option<&Memslot>,
            c: ChangeKind,
        ) -> Result<(), HookError> {
            self.0.prepare(o, n, c)
        }
        fn commit(&self, o: Option<&Memslot>, n: Option<&Memslot>, c: ChangeKind) {
            self.0.commit(o, n, c);
        }
        fn flush_shadow(&self, slot: &Memslot) {
            self.0.flush_shadow(slot);
        }
    }
    let recorder = Arc::new(Recorder::default());
    let vm = Arc::new(Memslots::with_hooks(
        Limits::default(),
        Shared(Arc::clone(&recorder)),
    ));
    recorder.vm.set(Arc::downgrade(&vm)).unwrap();
    (vm, recorder)
}

fn take_calls(r: &Recorder) -> Vec<String> {
    std::mem::take(&mut *r.calls.lock().unwrap())
}

#[test]
fn hooks_run_at_the_kernels_points_in_order() {
    let (vm, rec) = recorded_vm();
    vm.set_user_memory_region(ram(1, 16, 4, MemFlags::empty()))
        .unwrap();
    assert_eq!(
        take_calls(&rec),
        ["prepare Create None->Some(16)", "commit Create"]
    );
    vm.set_user_memory_region(ram(1, 64, 4, MemFlags::empty()))
        .unwrap();
    assert_eq!(
        take_calls(&rec),
        ["flush 1", "prepare Move Some(16)->Some(64)", "commit Move"]
    );
    vm.set_user_memory_region(ram(1, 64, 4, MemFlags::LOG_DIRTY_PAGES))
        .unwrap();
    assert_eq!(
        take_calls(&rec),
        ["prepare FlagsOnly Some(64)->Some(64)", "commit FlagsOnly"]
    );
    vm.set_user_memory_region(UserspaceMemoryRegion::delete(1))
        .unwrap();
    assert_eq!(
        take_calls(&rec),
        ["flush 1", "prepare Delete Some(64)->None", "commit Delete"]
    );
    assert_eq!(rec.seen_invalid.load(Ordering::SeqCst), 2);
    // 0, then +2 (create), +4 (move), +2 (flags), +4 (delete).
    assert_eq!(vm.snapshot(0).generation(), 12);
}

#[test]
fn a_refused_prepare_changes_nothing() {
    let (vm, rec) = recorded_vm();
    vm.set_user_memory_region(ram(1, 16, 4, MemFlags::LOG_DIRTY_PAGES))
        .unwrap();
    let before = vm.snapshot(0);
    take_calls(&rec);
    rec.refuse.store(true, Ordering::SeqCst);

    // Create: refused before anything is published.
    let err = vm
        .set_user_memory_region(ram(2, 64, 4, MemFlags::empty()))
        .unwrap_err();
    assert_eq!(err.errno(), errno::ENOMEM);
    assert!(matches!(err, Error::Hook(_)));
    assert!(vm.snapshot(0).ptr_eq(&before));

    // Move and delete: the INVALID step was published, so the old slot is published again,
    // two generation steps later, as the kernel does.
    for request in [
        ram(1, 128, 4, MemFlags::LOG_DIRTY_PAGES),
        UserspaceMemoryRegion::delete(1),
    ] {
        let generation = vm.snapshot(0).generation();
        assert_eq!(
            vm.set_user_memory_region(request).unwrap_err().errno(),
            errno::ENOMEM
        );
        let after = vm.snapshot(0);
        assert_eq!(after.generation(), generation + 4);
        assert!(after.iter().eq(before.iter()), "the old layout is back");
        assert!(!after.get(1).unwrap().is_invalid());
        after.check_invariants().unwrap();
    }
    assert_eq!(vm.total_pages(), 4);
    assert_eq!(
        take_calls(&rec),
        [
            "prepare Create None->Some(64)",
            "flush 1",
            "prepare Move Some(16)->Some(128)",
            "flush 1",
            "prepare Delete Some(16)->None"
        ]
    );
    // The bitmap survived the rollbacks: it is the same one.
    vm.reader().mark_page_dirty(0, Gfn(17));
    assert_eq!(vm.get_dirty_log(1).unwrap(), [0b10]);
}

#[test]
fn transactions_validate_against_their_own_state_and_publish_once() {
    let (vm, rec) = recorded_vm();
    vm.set_user_memory_region(ram(1, 0, 16, MemFlags::empty()))
        .unwrap();
    vm.set_user_memory_region(ram(2, 16, 16, MemFlags::empty()))
        .unwrap();
    take_calls(&rec);
    let before = vm.snapshot(0);

    let mut tx = vm.transaction();
    // Slot 1 cannot move onto slot 2's range yet...
    assert_eq!(
        tx.set_user_memory_region(ram(1, 16, 16, MemFlags::empty()))
            .unwrap_err()
            .errno(),
        errno::EEXIST
    );
    // ...but can once slot 2 is gone, within the same transaction.
    assert_eq!(
        tx.set_user_memory_region(UserspaceMemoryRegion::delete(2)),
        Ok(ChangeKind::Delete)
    );
    assert_eq!(
        tx.set_user_memory_region(ram(1, 16, 16, MemFlags::empty())),
        Ok(ChangeKind::Move)
    );
    assert_eq!(
        tx.set_user_memory_region(ram(1 << 16, 0, 8, MemFlags::empty())),
        Ok(ChangeKind::Create)
    );
    assert_eq!(tx.len(), 3);
    // Nothing is visible before the commit.
    assert!(vm.snapshot(0).ptr_eq(&before));
    tx.commit().unwrap();

    let after = vm.snapshot(0);
    assert!(after.get(2).is_none());
    assert_eq!(after.get(1).unwrap().base_gfn(), Gfn(16));
    assert_eq!(vm.snapshot(1).len(), 1);
    // One INVALID step and one final version for the whole batch.
    assert_eq!(after.generation(), before.generation() + 4);
    assert_eq!(vm.snapshot(1).generation(), 1 + 2);
    assert_eq!(vm.total_pages(), 16 + 8);
    let calls = take_calls(&rec);
    assert_eq!(&calls[..2], ["flush 2", "flush 1"]);
    assert_eq!(calls.len(), 2 + 3 + 3);

    // Dropping a transaction publishes nothing.
    let mut tx = vm.transaction();
    tx.set_user_memory_region(UserspaceMemoryRegion::delete(1))
        .unwrap();
    drop(tx);
    assert!(vm.snapshot(0).ptr_eq(&after));
    assert!(take_calls(&rec).is_empty());
}

#[test]
fn a_transaction_publishes_only_the_address_spaces_it_changes() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(ram(1 << 16, 0, 16, MemFlags::empty()))
        .unwrap();
    let untouched = vm.snapshot(1);
    let mut tx = vm.transaction();
    tx.set_user_memory_region(ram(0, 0, 16, MemFlags::empty()))
        .unwrap();
    // Refused (overlap) and unchanged requests in address space 1 change nothing there.
    let overlapping = ram((1 << 16) | 1, 8, 1, MemFlags::empty());
    assert_eq!(
        tx.set_user_memory_region(overlapping).unwrap_err().errno(),
        errno::EEXIST
    );
    let same = ram(1 << 16, 0, 16, MemFlags::empty());
    assert_eq!(tx.set_user_memory_region(same), Ok(ChangeKind::Unchanged));
    tx.commit().unwrap();
    assert_eq!(vm.snapshot(0).len(), 1);
    assert!(
        vm.snapshot(1).ptr_eq(&untouched),
        "address space 1 published again"
    );
}

#[test]
fn readers_never_see_half_a_transaction() {
    let vm = Arc::new(Memslots::new(Limits::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let reader = vm.reader();
            let (stop, checks) = (Arc::clone(&stop), Arc::clone(&checks));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let guard = reader.read();
                    let (a, b) = (guard.slots(0), guard.slots(1));
                    // Slots 5 (address space 0) and 6 (address space 1) come and go together.
                    assert_eq!(a.get(5).is_some(), b.get(6).is_some(), "half a transaction");
                    checks.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut round = 0;
    while round < 300 || checks.load(Ordering::Relaxed) < 20_000 {
        round += 1;
        let mut tx = vm.transaction();
        if round % 2 == 1 {
            tx.set_user_memory_region(ram(5, 0, 4, MemFlags::empty()))
                .unwrap();
            tx.set_user_memory_region(ram((1 << 16) | 6, 0, 4, MemFlags::empty()))
                .unwrap();
        } else {
            tx.set_user_memory_region(UserspaceMemoryRegion::delete(5))
                .unwrap();
            tx.set_user_memory_region(UserspaceMemoryRegion::delete((1 << 16) | 6))
                .unwrap();
        }
        tx.commit().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn the_cached_lookup_follows_moves() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(ram(1, 0, 4, MemFlags::empty()))
        .unwrap();
    let reader = vm.reader();
    {
        let mut guard = reader.read();
        assert_eq!(guard.gfn_to_memslot(0, Gfn(2)).map(Memslot::id), Some(1));
        assert_eq!(guard.gfn_to_memslot(0, Gfn(3)).map(Memslot::id), Some(1));
        assert!(guard.gfn_to_memslot(0, Gfn(4)).is_none());
        assert!(
            guard.gfn_to_memslot(7, Gfn(2)).is_none(),
            "no such address space"
        );
    }
    vm.set_user_memory_region(ram(1, 100, 4, MemFlags::empty()))
        .unwrap();
    let mut guard = reader.read();
    assert!(
        guard.gfn_to_memslot(0, Gfn(2)).is_none(),
        "the cache went stale"
    );
    assert_eq!(guard.gfn_to_memslot(0, Gfn(101)).map(Memslot::id), Some(1));
}

#[test]
#[should_panic(expected = "already inside a section")]
fn a_reader_holds_one_section_at_a_time() {
    let vm = Memslots::new(Limits::default());
    let reader = vm.reader();
    let _outer = reader.read();
    let _inner = reader.read();
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "inside a read-side section of the same VM")]
fn a_writer_call_inside_a_section_is_caught_in_debug_builds() {
    let vm = Memslots::new(Limits::default());
    let reader = vm.reader();
    let _guard = reader.read();
    let _ = vm.set_user_memory_region(ram(1, 0, 4, MemFlags::empty()));
}

#[test]
fn dirty_log_follows_the_flag_and_the_kernels_checks() {
    let vm = Memslots::new(Limits::default());
    let logged = ram(1, 0, 130, MemFlags::LOG_DIRTY_PAGES);
    vm.set_user_memory_region(logged).unwrap();
    vm.set_user_memory_region(ram(2, 1000, 4, MemFlags::empty()))
        .unwrap();
    let reader = vm.reader();
    for gfn in [0, 63, 64, 129, 1001, 5000] {
        reader.mark_page_dirty(0, Gfn(gfn));
    }
    reader.mark_page_dirty(9, Gfn(0)); // no such address space: ignored
    assert_eq!(
        vm.get_dirty_log(1).unwrap(),
        [1 | 1 << 63, 1, 1 << 1],
        "fetch..."
    );
    assert_eq!(vm.get_dirty_log(1).unwrap(), [0, 0, 0], "...and clear");

    let errno_of = |r: Result<Vec<u64>, Error>| r.unwrap_err().errno();
    assert_eq!(errno_of(vm.get_dirty_log(2)), errno::ENOENT, "not logging");
    assert_eq!(errno_of(vm.get_dirty_log(3)), errno::ENOENT, "no slot");
    assert_eq!(
        errno_of(vm.get_dirty_log(2 << 16)),
        errno::EINVAL,
        "no such space"
    );
    assert_eq!(
        errno_of(vm.get_dirty_log(32764)),
        errno::EINVAL,
        "internal id"
    );

    // The bitmap survives a move and a flags-only change that keeps logging...
    reader.mark_page_dirty(0, Gfn(5));
    vm.set_user_memory_region(ram(1, 4096, 130, MemFlags::LOG_DIRTY_PAGES))
        .unwrap();
    reader.mark_page_dirty(0, Gfn(4096 + 6));
    assert_eq!(vm.get_dirty_log(1).unwrap()[0], 1 << 5 | 1 << 6);
    // ...and goes when logging stops.
    vm.set_user_memory_region(ram(1, 4096, 130, MemFlags::empty()))
        .unwrap();
    assert_eq!(errno_of(vm.get_dirty_log(1)), errno::ENOENT);
    vm.set_user_memory_region(ram(1, 4096, 130, MemFlags::LOG_DIRTY_PAGES))
        .unwrap();
    assert_eq!(vm.get_dirty_log(1).unwrap(), [0, 0, 0], "a fresh bitmap");
}

#[test]
fn clear_dirty_log_checks() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(ram(1, 0, 130, MemFlags::LOG_DIRTY_PAGES))
        .unwrap();
    let reader = vm.reader();
    for gfn in 0..130 {
        reader.mark_page_dirty(0, Gfn(gfn));
    }
    let clear = |first: u64, num: u64, mask: &[u64]| {
        vm.clear_dirty_log(1, first, num, mask)
            .map_err(|e| e.errno())
    };
    assert_eq!(
        clear(1, 64, &[u64::MAX]),
        Err(errno::EINVAL),
        "unaligned first page"
    );
    assert_eq!(clear(192, 0, &[]), Err(errno::EINVAL), "past the slot");
    assert_eq!(clear(64, 67, &[0, 0]), Err(errno::EINVAL), "past the end");
    assert_eq!(
        clear(0, 65, &[0, 0]),
        Err(errno::EINVAL),
        "partial word mid-slot"
    );
    assert_eq!(clear(0, 128, &[0]), Err(errno::EFAULT), "mask too short");
    assert_eq!(
        vm.clear_dirty_log(2, 0, 64, &[0]).unwrap_err().errno(),
        errno::ENOENT
    );
    // Clear pages 0 and 64..=127 and, in the partial last word, page 129.
    assert_eq!(clear(0, 64, &[1]), Ok(()));
    assert_eq!(clear(64, 66, &[u64::MAX, 1 << 1]), Ok(()));
    assert_eq!(vm.get_dirty_log(1).unwrap(), [!1, 0, 1]);
}

#[test]
fn internal_slots() {
    let vm = Memslots::new(Limits::default());
    let apic = UserspaceMemoryRegion::new(32764, MemFlags::empty(), 0xfee0_0000, PAGE, 0x1000);
    assert_eq!(vm.set_internal_memory_region(apic), Ok(ChangeKind::Create));
    assert_eq!(vm.snapshot(0).get(32764).unwrap().npages(), 1);
    // User calls cannot touch it; internal calls cannot touch user slots or set flags.
    assert_eq!(
        vm.set_user_memory_region(UserspaceMemoryRegion::delete(32764))
            .unwrap_err()
            .errno(),
        errno::EINVAL
    );
    assert!(matches!(
        vm.set_internal_memory_region(ram(3, 0, 1, MemFlags::empty())),
        Err(Error::NotInternalSlot { .. })
    ));
    assert!(matches!(
        vm.set_internal_memory_region(UserspaceMemoryRegion { flags: 1, ..apic }),
        Err(Error::InvalidFlags { .. })
    ));
    // Internal slots have no page limit, and overlap user slots like any other.
    let huge = UserspaceMemoryRegion::new(32765, MemFlags::empty(), 1 << 44, PAGE << 32, 0);
    assert_eq!(vm.set_internal_memory_region(huge), Ok(ChangeKind::Create));
    assert_eq!(
        vm.set_user_memory_region(UserspaceMemoryRegion::new(
            0,
            MemFlags::empty(),
            0xfee0_0000,
            PAGE,
            0
        ))
        .unwrap_err()
        .errno(),
        errno::EEXIST
    );
    assert_eq!(
        vm.set_internal_memory_region(UserspaceMemoryRegion::delete(32764)),
        Ok(ChangeKind::Delete)
    );
}

/// Calls that take the writer lock, made where this thread already holds it, panic in debug
/// builds instead of waiting forever; `total_pages` takes no lock and works anywhere.
#[cfg(debug_assertions)]
mod writer_lock_reentry {
    use super::*;

    struct DirtyLogFromFlush(Mutex<Option<Memslots>>, AtomicU32);

    impl ArchHooks for DirtyLogFromFlush {
        fn flush_shadow(&self, _: &Memslot) {
            let vm = self.0.lock().unwrap().clone().expect("set");
            self.1.store(vm.total_pages() as u32, Ordering::SeqCst);
            let _ = vm.get_dirty_log(0);
        }
    }

    #[test]
    fn get_dirty_log_from_a_hook_panics() {
        let hooks = Arc::new(DirtyLogFromFlush(Mutex::new(None), AtomicU32::new(0)));
        let vm = Memslots::with_hooks(Limits::default(), Arc::clone(&hooks));
        *hooks.0.lock().unwrap() = Some(vm.clone());
        vm.set_user_memory_region(ram(0, 0, 4, MemFlags::LOG_DIRTY_PAGES))
            .unwrap();
        let deleting = {
            let vm = vm.clone();
            thread::spawn(move || vm.set_user_memory_region(UserspaceMemoryRegion::delete(0)))
        };
        let panic = deleting.join().unwrap_err();
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .expect("a message");
        assert!(message.contains("already holds it"), "{message}");
        assert_eq!(
            hooks.1.load(Ordering::SeqCst),
            4,
            "total_pages answered from the hook"
        );
        hooks.0.lock().unwrap().take();
    }

    #[test]
    #[should_panic(expected = "already holds it")]
    fn get_dirty_log_with_a_transaction_open_panics() {
        let vm = Memslots::new(Limits::default());
        vm.set_user_memory_region(ram(0, 0, 4, MemFlags::LOG_DIRTY_PAGES))
            .unwrap();
        let _tx = vm.transaction();
        let _ = vm.get_dirty_log(0);
    }

    #[test]
    fn the_lock_is_free_again_after_a_transaction() {
        let vm = Memslots::new(Limits::default());
        vm.set_user_memory_region(ram(0, 0, 4, MemFlags::LOG_DIRTY_PAGES))
            .unwrap();
        drop(vm.transaction());
        let mut tx = vm.transaction();
        tx.set_user_memory_region(UserspaceMemoryRegion::delete(0))
            .unwrap();
        tx.commit().unwrap();
        assert_eq!(vm.total_pages(), 0);
        assert!(vm.get_dirty_log(0).is_err());
    }
}

/// Refuses the `prepare` of slot 9 and records every `prepare` and `abort`.
#[derive(Default)]
struct RefusesSlotNine(Arc<Mutex<Vec<String>>>);

impl ArchHooks for RefusesSlotNine {
    fn prepare(
        &self,
        old: Option<&Memslot>,
        new: Option<&Memslot>,
        change: ChangeKind,
    ) -> Result<(), HookError> {
        let id = new.or(old).map(Memslot::id).unwrap();
        self.0
            .lock()
            .unwrap()
            .push(format!("prepare {change:?} {id}"));
        if id == 9 {
            return Err(HookError::new(errno::ENOMEM, "no room"));
        }
        Ok(())
    }

    fn abort(&self, old: Option<&Memslot>, new: Option<&Memslot>, change: ChangeKind) {
        let id = new.or(old).map(Memslot::id).unwrap();
        self.0
            .lock()
            .unwrap()
            .push(format!("abort {change:?} {id}"));
    }
}

#[test]
fn a_refused_prepare_aborts_the_prepared_changes_newest_first() {
    let hooks = RefusesSlotNine::default();
    let calls = Arc::clone(&hooks.0);
    // Through an `Arc`, which passes every call on.
    let vm = Memslots::with_hooks(Limits::default(), Arc::new(hooks));
    vm.set_user_memory_region(ram(1, 0, 4, MemFlags::empty()))
        .unwrap();
    let before = vm.snapshot(0);
    calls.lock().unwrap().clear();

    let mut tx = vm.transaction();
    tx.set_user_memory_region(UserspaceMemoryRegion::delete(1))
        .unwrap();
    tx.set_user_memory_region(ram(2, 0, 8, MemFlags::empty()))
        .unwrap();
    tx.set_user_memory_region(ram(9, 64, 1, MemFlags::empty()))
        .unwrap();
    tx.set_user_memory_region(ram(3, 128, 1, MemFlags::empty()))
        .unwrap();
    assert_eq!(tx.commit().unwrap_err().errno(), errno::ENOMEM);
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "prepare Delete 1",
            "prepare Create 2",
            "prepare Create 9",
            "abort Create 2",
            "abort Delete 1"
        ]
    );
    assert!(vm.snapshot(0).iter().eq(before.iter()), "rolled back");

    // A single refused request has nothing to abort.
    calls.lock().unwrap().clear();
    assert!(vm
        .set_user_memory_region(ram(9, 64, 1, MemFlags::empty()))
        .is_err());
    assert_eq!(*calls.lock().unwrap(), ["prepare Create 9"]);
}
