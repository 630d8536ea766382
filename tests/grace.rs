//! Non-waiting publication, grace-period cookies, read-side flavours, and how long an old version
//! can outlive its replacement when readers are busy, idle or quiesced.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::Duration;

use memslots::{
    ArchHooks, ChangeKind, Gfn, Limits, MemFlags, Memslot, MemslotSet, Memslots, ReadFlavour,
    UserspaceMemoryRegion,
};

fn ram(slot: u32, gpa_page: u64, pages: u64) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(
        slot,
        MemFlags::empty(),
        gpa_page << 12,
        pages << 12,
        0x7000_0000_0000 + (u64::from(slot) << 32),
    )
}

/// A handle on address space 0's current version that does not keep it alive.
fn watch(vm: &Memslots) -> Weak<MemslotSet> {
    Arc::downgrade(&vm.snapshot(0).into_arc())
}

#[test]
fn a_cookie_waits_for_open_sections_only() {
    let vm = Memslots::new(Limits::default());
    let (early, late) = (vm.reader(), vm.reader());
    let open = early.read();
    let grace = vm.start_grace_period();
    assert_eq!(grace.sections(), 1);
    let later = late.read(); // began after: does not count
    assert!(!grace.is_done());
    drop(open);
    assert!(grace.is_done() && vm.poll_synchronize(&grace));
    drop(later);
    grace.wait();
    assert_eq!(vm.start_grace_period().sections(), 0);
}

#[test]
fn a_non_waiting_update_returns_while_a_section_is_open_elsewhere() {
    let vm = Arc::new(Memslots::new(Limits::default()));
    vm.set_user_memory_region(ram(0, 0, 16)).unwrap();
    let reader = vm.reader();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (leave_tx, leave_rx) = std::sync::mpsc::channel::<()>();
    let vcpu = thread::spawn(move || {
        let guard = reader.read();
        entered_tx.send(()).unwrap();
        leave_rx.recv().unwrap();
        // The section keeps the version it entered with.
        guard.slots(0).find(Gfn(3)).map(Memslot::id)
    });
    entered_rx.recv().unwrap();
    let (kind, grace) = vm
        .publish_user_memory_region(UserspaceMemoryRegion::delete(0))
        .unwrap();
    assert_eq!(kind, ChangeKind::Delete);
    assert!(vm.snapshot(0).is_empty());
    thread::sleep(Duration::from_millis(20));
    assert!(!vm.poll_synchronize(&grace), "the vCPU is still inside");
    leave_tx.send(()).unwrap();
    assert_eq!(vcpu.join().unwrap(), Some(0));
    assert!(vm.poll_synchronize(&grace));
}

#[test]
fn both_forms_give_the_same_layouts_and_generations() {
    let waiting = Memslots::new(Limits::default());
    let non_waiting = Memslots::new(Limits::default());
    let requests = [
        ram(1, 16, 4),
        ram(2, 32, 4),
        ram(1, 64, 4), // move
        UserspaceMemoryRegion::new(
            2,
            MemFlags::LOG_DIRTY_PAGES,
            32 << 12,
            4 << 12,
            ram(2, 0, 0).userspace_addr,
        ),
        UserspaceMemoryRegion::delete(1),
        UserspaceMemoryRegion::delete(7), // refused by both
        ram(2, 32, 4),
    ];
    for request in requests {
        let a = waiting.set_user_memory_region(request);
        let b = non_waiting
            .publish_user_memory_region(request)
            .map(|(kind, grace)| {
                assert!(grace.is_done(), "no reader: nothing to wait for");
                kind
            });
        assert_eq!(a, b);
        assert_eq!(waiting.layout(), non_waiting.layout());
        for as_id in 0..2 {
            assert_eq!(
                waiting.snapshot(as_id).generation(),
                non_waiting.snapshot(as_id).generation()
            );
        }
    }
    let mut tx = non_waiting.transaction();
    tx.set_user_memory_region(ram(3, 128, 1)).unwrap();
    tx.set_user_memory_region(UserspaceMemoryRegion::delete(2))
        .unwrap();
    let grace = tx.publish().unwrap();
    assert!(grace.is_done());
    assert_eq!(
        non_waiting
            .snapshot(0)
            .iter()
            .map(Memslot::id)
            .collect::<Vec<_>>(),
        [3]
    );
}

#[test]
fn with_hooks_the_non_waiting_form_still_flushes_after_the_invalid_step() {
    #[derive(Default)]
    struct Calls(Mutex<Vec<String>>, AtomicU32);
    #[derive(Clone)]
    struct Shared(Arc<Calls>);
    impl ArchHooks for Shared {
        fn commit(&self, _: Option<&Memslot>, _: Option<&Memslot>, change: ChangeKind) {
            self.0 .0.lock().unwrap().push(format!("commit {change:?}"));
        }
        fn flush_shadow(&self, slot: &Memslot) {
            self.0 .1.fetch_add(1, Ordering::SeqCst);
            self.0
                 .0
                .lock()
                .unwrap()
                .push(format!("flush {}", slot.id()));
        }
    }
    let calls = Shared(Arc::new(Calls::default()));
    let vm = Memslots::with_hooks(Limits::default(), calls.clone());
    vm.set_user_memory_region(ram(1, 16, 4)).unwrap();
    let reader = vm.reader();
    drop(reader.read());
    let (kind, grace) = vm.publish_user_memory_region(ram(1, 64, 4)).unwrap();
    assert_eq!(kind, ChangeKind::Move);
    assert!(grace.is_done());
    assert_eq!(
        *calls.0 .0.lock().unwrap(),
        ["commit Create", "flush 1", "commit Move"]
    );
    // INVALID was published: +2 (create), +4 (move), as in the waiting form.
    assert_eq!(vm.snapshot(0).generation(), 6);
}

#[test]
fn flavours_are_chosen_and_can_be_mixed() {
    let vm = Arc::new(Memslots::new(Limits::default()));
    assert_eq!(vm.read_flavour(), ReadFlavour::best());
    let fence = vm.reader_with_flavour(ReadFlavour::Fence);
    let memb = vm.reader_with_flavour(ReadFlavour::Membarrier);
    assert_eq!(fence.flavour(), ReadFlavour::Fence);
    assert_eq!(
        memb.flavour() == ReadFlavour::Membarrier,
        ReadFlavour::membarrier_available()
    );
    // Readers of both flavours inside while the writer moves a slot back and forth: each
    // section sees one version throughout.
    vm.set_user_memory_region(ram(0, 0, 16)).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = [fence, memb]
        .into_iter()
        .map(|reader| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut sections = 0u64;
                while sections < 1000 || !stop.load(Ordering::Relaxed) {
                    let guard = reader.read();
                    let base = guard.slots(0).get(0).map(Memslot::base_gfn);
                    for _ in 0..16 {
                        assert_eq!(guard.slots(0).get(0).map(Memslot::base_gfn), base);
                    }
                    sections += 1;
                }
                sections
            })
        })
        .collect();
    // Keep moving until both readers have run a while (and at least 40 moves).
    let mut round = 0u64;
    while round < 40 || threads.iter().any(|t| !t.is_finished()) && round < 100_000 {
        vm.set_user_memory_region(ram(0, (round % 2) * 64, 16))
            .unwrap();
        round += 1;
        if round == 40 {
            stop.store(true, Ordering::Relaxed);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        assert!(t.join().unwrap() > 0);
    }
}

/// The bound on how long a replaced version lives: a reader inside a section when the update is
/// published lets go when that section ends.
#[test]
fn a_busy_reader_lets_go_of_the_old_version_when_its_section_ends() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(ram(0, 0, 16)).unwrap();
    let reader = vm.reader();
    let old = watch(&vm);
    let guard = reader.read();
    let (_, grace) = vm
        .publish_user_memory_region(UserspaceMemoryRegion::delete(0))
        .unwrap();
    assert!(!vm.poll_synchronize(&grace));
    assert!(old.upgrade().is_some(), "the open section holds it");
    drop(guard); // leaving after a publication: the reader takes the new root now
    assert!(vm.poll_synchronize(&grace));
    assert!(old.upgrade().is_none(), "freed once the section ended");
}

/// A reader idle since before the update (a halted vCPU) holds the version of its last section
/// until its next section or `quiesce`; the writer frees it at its next look.
#[test]
fn an_idle_reader_holds_one_old_version_until_it_runs_or_quiesces() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(ram(0, 0, 16)).unwrap();
    let (halted, quiesced, busy) = (vm.reader(), vm.reader(), vm.reader());
    for r in [&halted, &quiesced, &busy] {
        drop(r.read());
    }
    quiesced.quiesce();
    let old = watch(&vm);
    let (_, grace) = vm
        .publish_user_memory_region(UserspaceMemoryRegion::delete(0))
        .unwrap();
    assert!(vm.poll_synchronize(&grace), "no section was open");
    drop(busy.read()); // the next section of a reader lets go too
    assert!(old.upgrade().is_some(), "the halted reader still holds it");
    // More updates do not pile up versions behind the halted reader: it holds one.
    let newer = watch(&vm);
    for page in 0..8 {
        let _ = vm
            .publish_user_memory_region(ram(1, page * 32, 16))
            .unwrap();
    }
    drop(busy.read()); // `busy` held `newer` since its last section; now the newest
    assert!(vm.poll_synchronize(&vm.start_grace_period()));
    assert!(
        newer.upgrade().is_none(),
        "versions no reader holds are freed"
    );
    assert!(
        old.upgrade().is_some(),
        "the halted reader holds one version, still"
    );
    halted.quiesce();
    assert!(old.upgrade().is_some(), "until the writer looks again");
    assert!(vm.poll_synchronize(&vm.start_grace_period()));
    assert!(old.upgrade().is_none(), "freed once the last reader let go");
    // A quiesced reader's next section sees the current version.
    assert_eq!(
        halted.read().slots(0).get(1).map(|s| s.base_gfn()),
        Some(Gfn(7 * 32))
    );
}
