//! Slots that own their backing: what a create carries, what moves keep, when a backing is
//! dropped; and byte access at guest physical addresses with KVM's rules (holes, READONLY,
//! INVALID, short backings, huge and empty ranges, dirty pages).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use memslots::{
    errno, ArchHooks, Backing, ChangeKind, Error, Gpa, GuestRam, Limits, MemFlags, Memslot,
    Memslots, UserspaceMemoryRegion,
};

const PAGE: u64 = 4096;

fn region(slot: u32, gpa: u64, size: u64, flags: MemFlags) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(
        slot,
        flags,
        gpa,
        size,
        0x7000_0000_0000 + u64::from(slot) * (1 << 32),
    )
}

/// RAM that counts its drops in a shared counter.
struct Recorded {
    ram: GuestRam,
    drops: Arc<AtomicUsize>,
}

impl Recorded {
    fn new(len: u64, drops: &Arc<AtomicUsize>) -> Self {
        Self {
            ram: GuestRam::new(len as usize),
            drops: Arc::clone(drops),
        }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

impl Backing for Recorded {
    fn len(&self) -> usize {
        self.ram.len()
    }
    fn read_at(&self, offset: usize, buf: &mut [u8]) {
        self.ram.read_at(offset, buf);
    }
    fn write_at(&self, offset: usize, data: &[u8]) {
        self.ram.write_at(offset, data);
    }
}

fn backed() -> Memslots<GuestRam> {
    Memslots::backed(Limits::default())
}

#[test]
fn moves_and_flag_changes_keep_the_same_backing() {
    let vm = backed();
    let r = region(0, 0, 4 * PAGE, MemFlags::empty());
    vm.create_memory_region(r, GuestRam::new(4 * PAGE as usize))
        .unwrap();
    let first = Arc::clone(vm.snapshot(0).get(0).unwrap().backing_arc());
    let moved = UserspaceMemoryRegion {
        guest_phys_addr: 1 << 30,
        ..r
    };
    assert_eq!(vm.set_user_memory_region(moved).unwrap(), ChangeKind::Move);
    let logged = UserspaceMemoryRegion {
        flags: MemFlags::LOG_DIRTY_PAGES.bits(),
        ..moved
    };
    assert_eq!(
        vm.set_user_memory_region(logged).unwrap(),
        ChangeKind::FlagsOnly
    );
    let now = vm.snapshot(0);
    assert!(Arc::ptr_eq(&first, now.get(0).unwrap().backing_arc()));
    // Bytes written before the move are where the slot now is.
    assert_eq!(
        Arc::strong_count(&first),
        2,
        "only the current slot and this test hold it"
    );
}

#[test]
fn creates_need_a_backing_and_a_new_id() {
    let vm = backed();
    let r = region(3, 0, PAGE, MemFlags::empty());
    let e = vm.set_user_memory_region(r).unwrap_err();
    assert!(matches!(e, Error::BackingRequired { .. }));
    assert_eq!(e.errno(), errno::EINVAL);
    // The kernel's own refusals come first, with its errno.
    let bad = UserspaceMemoryRegion { flags: 4, ..r };
    assert!(matches!(
        vm.set_user_memory_region(bad),
        Err(Error::InvalidFlags { .. })
    ));
    assert!(matches!(
        vm.create_memory_region(bad, GuestRam::new(4096)),
        Err(Error::InvalidFlags { .. })
    ));
    vm.create_memory_region(r, GuestRam::new(4096)).unwrap();
    let again = vm.create_memory_region(r, GuestRam::new(4096)).unwrap_err();
    assert!(matches!(again, Error::SlotExists { .. }));
    assert_eq!(again.errno(), errno::EEXIST);
    let overlap = vm
        .create_memory_region(region(4, 0, PAGE, MemFlags::empty()), GuestRam::new(4096))
        .unwrap_err();
    assert_eq!(overlap.errno(), errno::EEXIST);
    // Deletes, moves and no-ops go through the ioctl as usual.
    assert_eq!(vm.set_user_memory_region(r).unwrap(), ChangeKind::Unchanged);
    assert_eq!(
        vm.set_user_memory_region(UserspaceMemoryRegion::delete(3))
            .unwrap(),
        ChangeKind::Delete
    );
    // A transaction creates with backings too, all or nothing.
    let mut tx = vm.transaction();
    tx.create_memory_region(r, GuestRam::new(4096)).unwrap();
    assert!(matches!(
        tx.create_memory_region(r, GuestRam::new(4096)),
        Err(Error::SlotExists { .. })
    ));
    tx.commit().unwrap();
    assert_eq!(vm.snapshot(0).len(), 1);
}

#[test]
fn a_backing_lives_while_a_snapshot_reaches_its_slot() {
    let drops = Arc::new(AtomicUsize::new(0));
    let vm: Memslots<Recorded> = Memslots::backed(Limits::default());
    let r = region(0, 0, PAGE, MemFlags::empty());
    vm.create_memory_region(r, Recorded::new(PAGE, &drops))
        .unwrap();
    let kept = vm.snapshot(0);
    kept.write_guest(Gpa(8), b"kept").unwrap();
    vm.set_user_memory_region(UserspaceMemoryRegion::delete(0))
        .unwrap();
    vm.synchronize();
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "a snapshot still reaches it"
    );
    let mut buf = [0; 4];
    kept.read_guest(Gpa(8), &mut buf).unwrap();
    assert_eq!(&buf, b"kept", "the old version still reads the memory");
    assert!(vm.snapshot(0).read_guest(Gpa(8), &mut buf).is_err());
    drop(kept);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the last holder dropped it"
    );
}

#[test]
fn a_backing_lives_while_a_section_or_its_reader_reaches_it() {
    let drops = Arc::new(AtomicUsize::new(0));
    let vm: Memslots<Recorded> = Memslots::backed(Limits::default());
    vm.create_memory_region(
        region(0, 0, PAGE, MemFlags::empty()),
        Recorded::new(PAGE, &drops),
    )
    .unwrap();
    let reader = vm.reader();
    let (inside_tx, inside_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let vcpu = {
        let drops = Arc::clone(&drops);
        thread::spawn(move || {
            let mut section = reader.read();
            section.write_guest_obj(0, Gpa(0), 7u32).unwrap();
            inside_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            // The delete is waiting for this section: the memory is still there.
            assert_eq!(drops.load(Ordering::SeqCst), 0);
            assert_eq!(section.read_guest_obj::<u32>(0, Gpa(0)).unwrap(), 7);
            drop(section);
            reader
        })
    };
    inside_rx.recv().unwrap();
    let deleter = {
        let vm = vm.clone();
        thread::spawn(move || {
            vm.set_user_memory_region(UserspaceMemoryRegion::delete(0))
                .unwrap()
        })
    };
    thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "deleted but a section is open"
    );
    go_tx.send(()).unwrap();
    let reader = vcpu.join().unwrap();
    assert_eq!(deleter.join().unwrap(), ChangeKind::Delete);
    // The idle reader still caches the versions of its last section.
    vm.synchronize();
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    // Its next section moves to the current version; the writer frees the old one at its next
    // grace period.
    drop(reader.read());
    vm.synchronize();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    // A dropped reader lets go as well.
    vm.create_memory_region(
        region(1, 0, PAGE, MemFlags::empty()),
        Recorded::new(PAGE, &drops),
    )
    .unwrap();
    drop(reader.read());
    vm.set_user_memory_region(UserspaceMemoryRegion::delete(1))
        .unwrap();
    drop(reader);
    vm.synchronize();
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

#[test]
fn dropping_the_vm_drops_every_backing() {
    let drops = Arc::new(AtomicUsize::new(0));
    let vm: Memslots<Recorded> = Memslots::backed(Limits::default());
    for id in 0..3 {
        let r = region(id, u64::from(id) * PAGE, PAGE, MemFlags::empty());
        vm.create_memory_region(r, Recorded::new(PAGE, &drops))
            .unwrap();
    }
    let other = vm.clone();
    drop(vm);
    assert_eq!(drops.load(Ordering::SeqCst), 0, "a clone is the same VM");
    drop(other);
    assert_eq!(drops.load(Ordering::SeqCst), 3);
}

/// Two adjacent slots of 2 pages, a hole, a read-only slot, and a slot whose backing is a page
/// short.
fn layout() -> Memslots<GuestRam> {
    let vm = backed();
    let add = |id, gpa, pages: u64, flags, backing_pages: u64| {
        vm.create_memory_region(
            region(id, gpa, pages * PAGE, flags),
            GuestRam::new((backing_pages * PAGE) as usize),
        )
        .unwrap();
    };
    add(0, 0x10000, 2, MemFlags::LOG_DIRTY_PAGES, 2);
    add(1, 0x12000, 2, MemFlags::empty(), 2);
    add(2, 0x20000, 1, MemFlags::READONLY, 1);
    add(3, 0x30000, 2, MemFlags::empty(), 1);
    vm
}

#[test]
fn accesses_span_pages_and_slots() {
    let vm = layout();
    let slots = vm.snapshot(0);
    let data: Vec<u8> = (0..=255).cycle().take(3 * PAGE as usize).collect();
    // From the middle of slot 0 into slot 1: three pages over two slots.
    slots.write_guest(Gpa(0x10800), &data).unwrap();
    let mut back = vec![0; data.len()];
    slots.read_guest(Gpa(0x10800), &mut back).unwrap();
    assert_eq!(back, data);
    // Each slot's backing holds its part.
    let mut head = vec![0; 0x1800];
    slots.get(0).unwrap().backing().read_at(0x800, &mut head);
    assert_eq!(head, data[..0x1800]);
    // Plain values, unaligned and across the slot boundary.
    slots
        .write_guest_obj(Gpa(0x11ffd), 0x0102_0304_0506_0708u64)
        .unwrap();
    assert_eq!(
        slots.read_guest_obj::<u64>(Gpa(0x11ffd)).unwrap(),
        0x0102_0304_0506_0708
    );
    assert_eq!(
        slots.read_guest_obj::<[u8; 3]>(Gpa(0x11ffd)).unwrap(),
        [8, 7, 6]
    );
    // Reads of a read-only slot are fine.
    assert_eq!(slots.read_guest_obj::<u32>(Gpa(0x20ffc)).unwrap(), 0);
}

#[test]
fn bad_accesses_fail_whole_and_name_the_address() {
    let vm = layout();
    let slots = vm.snapshot(0);
    slots.write_guest(Gpa(0x13ff0), &[0xaa; 16]).unwrap();
    let efault = |r: Result<(), Error>| {
        let e = r.unwrap_err();
        assert_eq!(e.errno(), errno::EFAULT, "{e}");
        e
    };
    // Running off the end of slot 1 into the hole: nothing of it is written.
    let e = efault(slots.write_guest(Gpa(0x13ff0), &[0xbb; 32]));
    assert!(matches!(e, Error::Unmapped { gpa: 0x14000 }), "{e:?}");
    assert_eq!(
        slots.read_guest_obj::<[u8; 16]>(Gpa(0x13ff0)).unwrap(),
        [0xaa; 16]
    );
    // A hole at the start, in the middle, reads as well as writes.
    let mut buf = [0; 8];
    assert!(matches!(
        efault(slots.read_guest(Gpa(0x1fffc), &mut buf)),
        Error::Unmapped { gpa: 0x1fffc }
    ));
    // A write to a read-only slot, even one that starts in a writable slot elsewhere.
    assert!(matches!(
        efault(slots.write_guest(Gpa(0x20000), &[1])),
        Error::ReadOnlyWrite { gpa: 0x20000, .. }
    ));
    // The slot is 2 pages, its backing 1: the second page is refused, never reached.
    slots.write_guest(Gpa(0x30ff0), &[1; 16]).unwrap();
    assert!(matches!(
        efault(slots.write_guest(Gpa(0x30ff0), &[1; 17])),
        Error::BackingTooShort {
            gpa: 0x30ff0,
            backing_len: 4096,
            ..
        }
    ));
    // Huge lengths and ranges past the end of the address space.
    assert!(matches!(
        efault(slots.write_guest(Gpa(u64::MAX - 3), &[0; 8])),
        Error::AccessWraps { .. }
    ));
    let huge = vec![0u8; 64 << 20];
    assert!(matches!(
        efault(slots.write_guest(Gpa(0x10000), &huge)),
        Error::Unmapped { gpa: 0x14000 }
    ));
    // Zero-length accesses succeed anywhere, as in the kernel.
    slots.write_guest(Gpa(0xdead_0000), &[]).unwrap();
    slots.read_guest(Gpa(u64::MAX), &mut []).unwrap();
    slots.write_guest(Gpa(0x20000), &[]).unwrap();
}

#[test]
fn writes_mark_every_page_they_touch_in_logging_slots() {
    let vm = layout();
    let slots = vm.snapshot(0);
    // Slot 0 logs, slot 1 does not: a write across both marks slot 0's last page only.
    slots.write_guest(Gpa(0x11fff), &[1, 2]).unwrap();
    slots.read_guest(Gpa(0x10000), &mut [0; 64]).unwrap();
    assert_eq!(vm.get_dirty_log(0).unwrap(), [0b10]);
    slots.write_guest(Gpa(0x10000), &[0; 0x1001]).unwrap();
    assert_eq!(vm.get_dirty_log(0).unwrap(), [0b11]);
    assert_eq!(vm.get_dirty_log(0).unwrap(), [0]);
    // Through a section, too.
    let reader = vm.reader();
    reader.read().write_guest_obj(0, Gpa(0x11000), 1u8).unwrap();
    assert_eq!(vm.get_dirty_log(0).unwrap(), [0b10]);
}

#[test]
fn sections_access_through_their_last_used_slot() {
    let vm = layout();
    let reader = vm.reader();
    let mut section = reader.read();
    section.write_guest(0, Gpa(0x12000), b"abc").unwrap();
    let mut buf = [0; 3];
    section.read_guest(0, Gpa(0x12000), &mut buf).unwrap();
    assert_eq!(&buf, b"abc");
    // The access left slot 1 as the last-used slot, and a lookup there is a hit.
    assert_eq!(
        section.gfn_to_memslot(0, memslots::Gfn(0x13)).unwrap().id(),
        1
    );
    // Errors are the version's, plus a missing address space.
    assert!(matches!(
        section.read_guest(0, Gpa(0x40000), &mut buf),
        Err(Error::Unmapped { gpa: 0x40000 })
    ));
    let e = section.read_guest(9, Gpa(0x12000), &mut buf).unwrap_err();
    assert!(matches!(e, Error::InvalidAddressSpace { as_id: 9, .. }));
    assert_eq!(e.errno(), errno::EINVAL);
}

#[test]
fn a_section_never_reads_another_address_spaces_slot() {
    let vm = backed();
    // Address space 1 has a slot where address space 0 has a hole.
    let smm = UserspaceMemoryRegion {
        slot: 1 << 16,
        ..region(0, 0x8000, PAGE, MemFlags::empty())
    };
    vm.create_memory_region(smm, GuestRam::new(4096)).unwrap();
    vm.create_memory_region(region(1, 0, PAGE, MemFlags::empty()), GuestRam::new(4096))
        .unwrap();
    let reader = vm.reader();
    let mut section = reader.read();
    section.write_guest_obj(1, Gpa(0x8000), 1u32).unwrap();
    // The reader's last-used slot is now address space 1's; address space 0 has nothing there.
    assert!(matches!(
        section.read_guest_obj::<u32>(0, Gpa(0x8000)),
        Err(Error::Unmapped { gpa: 0x8000 })
    ));
    assert!(matches!(
        section.write_guest_obj(0, Gpa(0x8000), 2u32),
        Err(Error::Unmapped { gpa: 0x8000 })
    ));
    assert_eq!(section.read_guest_obj::<u32>(1, Gpa(0x8000)).unwrap(), 1);
}

/// Tries an access of the slot being deleted or moved from `flush_shadow`, when its `INVALID`
/// copy is published.
#[derive(Default)]
struct ProbeInvalid {
    vm: Mutex<Option<Memslots<GuestRam>>>,
    seen: Mutex<Vec<Result<(), Error>>>,
}

impl ArchHooks<GuestRam> for ProbeInvalid {
    fn flush_shadow(&self, slot: &Memslot<GuestRam>) {
        let vm = self.vm.lock().unwrap().clone().expect("set after creation");
        let gpa = (slot.base_gfn().0 << 12) - 8;
        // Starts in slot 0, which stays, and runs into the INVALID slot.
        let result = vm.snapshot(0).write_guest(Gpa(gpa), &[0; 16]);
        self.seen.lock().unwrap().push(result);
    }
}

#[test]
fn an_access_crossing_into_an_invalid_slot_fails() {
    let probe = Arc::new(ProbeInvalid::default());
    let vm = Memslots::backed_with_hooks(Limits::default(), Arc::clone(&probe));
    *probe.vm.lock().unwrap() = Some(vm.clone());
    vm.create_memory_region(region(0, 0, PAGE, MemFlags::empty()), GuestRam::new(4096))
        .unwrap();
    let moving = region(1, PAGE, PAGE, MemFlags::empty());
    vm.create_memory_region(moving, GuestRam::new(4096))
        .unwrap();
    vm.set_user_memory_region(UserspaceMemoryRegion {
        guest_phys_addr: 8 * PAGE,
        ..moving
    })
    .unwrap();
    let seen = probe.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let e = seen[0].clone().unwrap_err();
    assert!(matches!(e, Error::SlotInvalid { gpa: 0x1000, .. }), "{e:?}");
    assert_eq!(e.errno(), errno::EFAULT);
    // Nothing was written to slot 0 either.
    let slots = vm.snapshot(0);
    assert_eq!(
        slots.read_guest_obj::<[u8; 8]>(Gpa(PAGE - 8)).unwrap(),
        [0; 8]
    );
    // The hook's handle on the VM would keep both alive: let go of it.
    probe.vm.lock().unwrap().take();
}

#[test]
fn layout_only_vms_keep_their_api() {
    // `()` slots: no type parameter to name, creates through the ioctl as before.
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(region(0, 0, PAGE, MemFlags::empty()))
        .unwrap();
    let slots = vm.snapshot(0);
    let slot = slots.get(0).unwrap();
    assert_eq!(*slot.backing(), ());
    let layout = vm.layout();
    let restored = Memslots::from_layout(*vm.limits(), &layout).unwrap();
    assert_eq!(restored.layout(), layout);
}

mod model {
    //! Byte access against a byte-by-byte model: every access of a random layout gives the same
    //! bytes, or fails at the same first bad address, as a flat map of the slots' memory.

    use super::*;
    use proptest::prelude::*;

    /// A slot of the model: its first page, pages, read-only, and its memory.
    #[derive(Clone, Debug)]
    struct Slot {
        page: u64,
        pages: u64,
        readonly: bool,
        bytes: Vec<u8>,
    }

    fn slot_at(slots: &[Slot], addr: u64) -> Option<(usize, usize)> {
        slots.iter().enumerate().find_map(|(i, s)| {
            let off = addr.checked_sub(s.page * PAGE)?;
            (off < s.pages * PAGE).then_some((i, off as usize))
        })
    }

    /// The model's answer: the first address no slot holds (or, for a write, that is read-only).
    fn first_bad(slots: &[Slot], gpa: u64, len: usize, write: bool) -> Option<(u64, bool)> {
        (0..len as u64)
            .map(|i| gpa + i)
            .find_map(|a| match slot_at(slots, a) {
                None => Some((a, false)),
                Some((i, _)) if write && slots[i].readonly => Some((a, true)),
                Some(_) => None,
            })
    }

    #[derive(Clone, Debug)]
    enum Op {
        Read { gpa: u64, len: usize },
        Write { gpa: u64, data: Vec<u8> },
    }

    fn op() -> impl Strategy<Value = Op> {
        let gpa = 0u64..(40 * PAGE);
        prop_oneof![
            (gpa.clone(), 0usize..3 * PAGE as usize).prop_map(|(gpa, len)| Op::Read { gpa, len }),
            (
                gpa,
                prop::collection::vec(any::<u8>(), 0..3 * PAGE as usize)
            )
                .prop_map(|(gpa, data)| Op::Write { gpa, data }),
        ]
    }

    /// Up to 8 slots laid out left to right with gaps of 0 to 2 pages.
    fn layout() -> impl Strategy<Value = Vec<Slot>> {
        prop::collection::vec((0u64..3, 1u64..4, any::<bool>()), 1..8).prop_map(|specs| {
            let mut page = 0;
            specs
                .into_iter()
                .map(|(gap, pages, readonly)| {
                    page += gap;
                    let slot = Slot {
                        page,
                        pages,
                        readonly,
                        bytes: vec![0; (pages * PAGE) as usize],
                    };
                    page += pages;
                    slot
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn accesses_match_a_flat_model(mut slots in layout(), ops in prop::collection::vec(op(), 1..40)) {
            let vm = backed();
            for (id, s) in slots.iter().enumerate() {
                let flags = if s.readonly { MemFlags::READONLY } else { MemFlags::LOG_DIRTY_PAGES };
                let r = region(id as u32, s.page * PAGE, s.pages * PAGE, flags);
                vm.create_memory_region(r, GuestRam::new(s.bytes.len())).unwrap();
            }
            let reader = vm.reader();
            for (n, op) in ops.iter().enumerate() {
                let view = vm.snapshot(0);
                let mut section = reader.read();
                match op {
                    Op::Read { gpa, len } => {
                        let (mut a, mut b) = (vec![0; *len], vec![0; *len]);
                        let got = view.read_guest(Gpa(*gpa), &mut a);
                        let via_section = section.read_guest(0, Gpa(*gpa), &mut b);
                        prop_assert_eq!(&got, &via_section);
                        match first_bad(&slots, *gpa, *len, false) {
                            Some((bad, _)) => prop_assert_eq!(got, Err(Error::Unmapped { gpa: bad })),
                            None => {
                                prop_assert!(got.is_ok());
                                let want: Vec<u8> = (0..*len as u64)
                                    .map(|i| { let (s, o) = slot_at(&slots, gpa + i).unwrap(); slots[s].bytes[o] })
                                    .collect();
                                prop_assert_eq!(&a, &want);
                                prop_assert_eq!(&b, &want);
                            }
                        }
                    }
                    Op::Write { gpa, data } => {
                        // Alternate between the version and the section.
                        let got = if n % 2 == 0 {
                            view.write_guest(Gpa(*gpa), data)
                        } else {
                            section.write_guest(0, Gpa(*gpa), data)
                        };
                        match first_bad(&slots, *gpa, data.len(), true) {
                            Some((bad, false)) => prop_assert_eq!(got, Err(Error::Unmapped { gpa: bad })),
                            Some((bad, true)) => prop_assert!(
                                matches!(got, Err(Error::ReadOnlyWrite { gpa, .. }) if gpa == bad),
                                "{:?}", got
                            ),
                            None => {
                                prop_assert!(got.is_ok());
                                for (i, byte) in data.iter().enumerate() {
                                    let (s, o) = slot_at(&slots, gpa + i as u64).unwrap();
                                    slots[s].bytes[o] = *byte;
                                }
                                // Every page written is dirty in its (logging) slot, and only those.
                                for (id, s) in slots.iter().enumerate() {
                                    if s.readonly { continue; }
                                    let log = vm.get_dirty_log(id as u32).unwrap();
                                    for p in 0..s.pages {
                                        let first = (s.page + p) * PAGE;
                                        let touched = !data.is_empty()
                                            && *gpa < first + PAGE
                                            && first < gpa + data.len() as u64;
                                        prop_assert_eq!(log[0] >> p & 1 == 1, touched, "slot {} page {}", id, p);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
