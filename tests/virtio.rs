//! A virtio device (virtio-queue 0.18, driven by its `MockSplitQueue`) on memslots as its
//! `GuestAddressSpace`, while the VMM hot-plugs, moves and unplugs other slots.
#![cfg(feature = "vm-memory-mmap")]

#[path = "support/rng.rs"]
mod rng;
#[path = "support/virtio_device.rs"]
mod virtio_device;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use memslots::{Error, Gpa, Limits, MemFlags, Memslots, UserspaceMemoryRegion};
use rng::XorShift;
use virtio_device::{serve, Driver, Header, Request};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryError, MmapRegion,
};

const MIB: u64 = 1 << 20;
/// The device's slots: the queue's rings, and two adjacent slots for request buffers, so some
/// responses cross a slot boundary.
const RINGS: (u32, u64) = (0, 0);
const BUFFERS: [(u32, u64); 2] = [(1, MIB), (2, 2 * MIB)];
const QUEUE_SIZE: u16 = 256;
/// Requests per round: three descriptors each, all in the table at once.
const ROUND: usize = 64;
/// The response bytes a request may ask for: two writable descriptors of this many bytes.
const PART: u32 = 1000;

/// The slots the churn thread plays with: ids from `CHURN_IDS`, 64 KiB each, placed at one of
/// `PLACES` 1 MiB-aligned addresses from 1 GiB up (so never overlapping each other or the
/// device's).
const CHURN_IDS: core::ops::Range<u32> = 8..24;
const PLACES: u64 = 64;
const CHURN_SIZE: u64 = 64 << 10;

fn place(p: u64) -> u64 {
    (1 << 30) + p * MIB
}

fn mmap(len: u64) -> MmapRegion {
    MmapRegion::new(len as usize).expect("anonymous memory")
}

fn create(vm: &Memslots<MmapRegion>, id: u32, gpa: u64, len: u64) -> UserspaceMemoryRegion {
    let ram = mmap(len);
    let region = UserspaceMemoryRegion::new(id, MemFlags::empty(), gpa, len, ram.as_ptr() as u64);
    vm.create_memory_region(region, ram).expect("a free range");
    region
}

/// What the churn thread did, and the layout it left.
#[derive(Debug, Default)]
struct Churn {
    creates: usize,
    moves: usize,
    deletes: usize,
    slots: BTreeMap<u32, UserspaceMemoryRegion>,
}

/// Creates, moves and deletes the churn slots at random until `stop`, checking after each move
/// that the slot kept its backing (the marker written at its creation reads back at the new
/// address).
fn churn(vm: &Memslots<MmapRegion>, stop: &AtomicBool) -> Churn {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut done = Churn::default();
    let mut places: BTreeMap<u64, u32> = BTreeMap::new();
    let marker = |id: u32, creates: usize| (u64::from(id) << 32) | creates as u64;
    let mut markers = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let id = CHURN_IDS.start + rng.below(u64::from(CHURN_IDS.len() as u32)) as u32;
        // A place to create at or move to, if it is free.
        let to = Some(rng.below(PLACES)).filter(|p| !places.contains_key(p));
        match done.slots.get(&id).copied() {
            None => {
                let Some(to) = to else {
                    continue;
                };
                let region = create(vm, id, place(to), CHURN_SIZE);
                let mark = marker(id, done.creates);
                vm.snapshot(0)
                    .write_guest_obj(Gpa(place(to)), mark)
                    .expect("a new slot is writable");
                markers.insert(id, mark);
                places.insert(to, id);
                done.slots.insert(id, region);
                done.creates += 1;
            }
            Some(region) if rng.below(2) == 0 => {
                let Some(to) = to else {
                    continue;
                };
                let moved = UserspaceMemoryRegion {
                    guest_phys_addr: place(to),
                    ..region
                };
                vm.set_user_memory_region(moved).expect("a free range");
                places.retain(|_, &mut held| held != id);
                places.insert(to, id);
                done.slots.insert(id, moved);
                done.moves += 1;
                let seen: u64 = vm
                    .snapshot(0)
                    .read_guest_obj(Gpa(place(to)))
                    .expect("the moved slot");
                assert_eq!(seen, markers[&id], "a move keeps the slot's backing");
            }
            Some(region) => {
                let gone = UserspaceMemoryRegion {
                    memory_size: 0,
                    ..region
                };
                vm.set_user_memory_region(gone).expect("an existing slot");
                places.retain(|_, &mut held| held != id);
                done.slots.remove(&id);
                done.deletes += 1;
            }
        }
    }
    done
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Round `round`'s requests: headers in the first buffer slot, responses in two writable parts,
/// the first of request 0 straddling the boundary between the two buffer slots.
fn requests(round: usize, rng: &mut XorShift) -> Vec<Request> {
    let (lo, hi) = (BUFFERS[0].1, BUFFERS[1].1);
    (0..ROUND)
        .map(|k| {
            let k64 = k as u64;
            let header = Header {
                id: (round * ROUND + k) as u64,
                fill: (round + 3 * k) as u8,
                len: 1 + rng.below(u64::from(2 * PART)) as u32,
            };
            let first = if k == 0 {
                hi - u64::from(PART) / 2
            } else {
                lo + 0x1000 + k64 * 0x400
            };
            Request {
                header_at: GuestAddress(lo + k64 * 0x20),
                header,
                response: vec![
                    (GuestAddress(first), PART),
                    (GuestAddress(hi + 0x1000 + k64 * 0x400), PART),
                ],
            }
        })
        .collect()
}

#[test]
fn a_device_serves_chains_while_other_slots_come_and_go() {
    let vm: Memslots<MmapRegion> = Memslots::backed(Limits::default());
    let mut device_slots = vec![create(&vm, RINGS.0, RINGS.1, MIB)];
    device_slots.extend(BUFFERS.iter().map(|&(id, gpa)| create(&vm, id, gpa, MIB)));

    // The driver writes through a version of its own; the device asks for `memory()` per chain.
    let driver_mem = vm.memory();
    let driver = Driver::new(&*driver_mem, GuestAddress(RINGS.1), QUEUE_SIZE);
    let mut queue = driver.queue();
    let mut scratch = vec![0; 2 * PART as usize];
    let mut rng = XorShift(7);
    let stop = AtomicBool::new(false);
    let started = Barrier::new(2);

    let (rounds, generations, churned) = thread::scope(|s| {
        let churner = s.spawn(|| {
            started.wait();
            churn(&vm, &stop)
        });
        // Stops the churn thread however the device loop ends, a failed check included.
        let stopper = StopOnDrop(&stop);
        started.wait();
        let start = Instant::now();
        let mut generations = std::collections::BTreeSet::new();
        let mut rounds = 0;
        while rounds < 20 || start.elapsed() < Duration::from_millis(300) {
            let offered = requests(rounds, &mut rng);
            driver.offer(&offered);
            let mut served = Vec::new();
            loop {
                let mem = vm.memory();
                generations.insert(mem.generation());
                match serve(&mut queue, &*mem, &mut scratch) {
                    Some(done) => served.push(done),
                    None => break,
                }
            }
            check_round(&vm, &driver, rounds, &offered, &served);
            rounds += 1;
        }
        drop(stopper);
        (
            rounds,
            generations,
            churner.join().expect("the churn thread"),
        )
    });

    assert!(
        churned.creates > 0 && churned.moves > 0 && churned.deletes > 0,
        "{churned:?}"
    );
    assert!(
        generations.len() > 1,
        "the device saw the layout change under it ({rounds} rounds, {churned:?})"
    );
    // The final layout is the device's slots plus what the churn thread left.
    let mut expected: Vec<_> = device_slots
        .into_iter()
        .chain(churned.slots.into_values())
        .collect();
    expected.sort_by_key(|r| r.guest_phys_addr);
    assert_eq!(vm.layout().regions, expected);
}

/// Every request of the round came back once, in order, with the used entry the device added and
/// the response bytes where its descriptors point (read through the crate's own byte access).
fn check_round(
    vm: &Memslots<MmapRegion>,
    driver: &Driver<'_, memslots::MemslotSet<MmapRegion>>,
    round: usize,
    offered: &[Request],
    served: &[virtio_device::Served],
) {
    assert_eq!(served.len(), offered.len(), "round {round}");
    let mem = vm.snapshot(0);
    let used = driver.used_addr().0;
    for (n, (request, done)) in offered.iter().zip(served).enumerate() {
        assert_eq!(done.header, request.header, "round {round}, request {n}");
        let written = request.header.len.min(2 * PART);
        assert_eq!(done.written, written);

        // The used entry for the n-th chain of round r is entry (r * ROUND + n) mod size.
        let slot = ((round * ROUND + n) % usize::from(QUEUE_SIZE)) as u64;
        let entry: [u32; 2] = mem
            .read_guest_obj(Gpa(used + 4 + 8 * slot))
            .expect("the used ring is mapped");
        assert_eq!(entry, [u32::from(done.head), written]);

        let mut expected = vec![0; written as usize];
        request.header.response_into(&mut expected);
        let mut landed = Vec::new();
        for &(addr, len) in &request.response {
            let take = len.min(written - landed.len() as u32) as usize;
            let mut part = vec![0; take];
            mem.read_guest(Gpa(addr.0), &mut part).expect("mapped");
            landed.extend(part);
        }
        assert_eq!(landed, expected, "round {round}, request {n}");
    }
    let index: u16 = mem.read_guest_obj(Gpa(used + 2)).expect("mapped");
    assert_eq!(usize::from(index), ((round + 1) * ROUND) % (1 << 16));
}

#[test]
fn a_held_version_keeps_reading_a_deleted_slot() {
    let vm: Memslots<MmapRegion> = Memslots::backed(Limits::default());
    create(&vm, RINGS.0, RINGS.1, MIB);
    let hotplugged = create(&vm, 5, 1 << 32, MIB);
    let header_at = GuestAddress(hotplugged.guest_phys_addr + 0x800);
    let response_at = GuestAddress(RINGS.1 + 0x8_0000);

    let driver_mem = vm.memory();
    let driver = Driver::new(&*driver_mem, GuestAddress(RINGS.1), QUEUE_SIZE);
    let header = Header {
        id: 0x1122_3344_5566_7788,
        fill: 0x5a,
        len: 100,
    };
    driver.offer(&[Request {
        header_at,
        header,
        response: vec![(response_at, 100)],
    }]);
    let mut queue = driver.queue();

    // The device takes its memory, then the VMM unplugs the slot holding the request. More
    // handles than a thread has arc-swap debt slots, and a clone, hold it all the same.
    let held = vm.memory();
    let more: Vec<_> = (0..20).map(|_| vm.memory()).collect();
    let cloned = held.clone();
    vm.set_user_memory_region(UserspaceMemoryRegion {
        memory_size: 0,
        ..hotplugged
    })
    .expect("an existing slot");
    drop(driver_mem);

    // The held version still has the slot, and its mmap: the device serves the request.
    let mut scratch = [0; 100];
    let done = serve(&mut queue, &*held, &mut scratch).expect("a chain");
    assert_eq!((done.header, done.written), (header, 100));
    let mut response = [0; 100];
    vm.snapshot(0)
        .read_guest(Gpa(response_at.0), &mut response)
        .expect("the rings' slot");
    let mut expected = [0; 100];
    header.response_into(&mut expected);
    assert_eq!(response, expected);

    // A fresh version no longer has it.
    let fresh = vm.memory();
    assert!(fresh.find_region(header_at).is_none());
    let mut raw = [0; Header::SIZE];
    assert!(matches!(
        fresh.read_slice(&mut raw, header_at),
        Err(GuestMemoryError::InvalidGuestAddress(GuestAddress(a))) if a == header_at.0
    ));
    assert_eq!(
        fresh.read_guest(Gpa(header_at.0), &mut raw),
        Err(Error::Unmapped { gpa: header_at.0 })
    );
    for mem in more.iter().chain([&cloned, &held]) {
        mem.read_slice(&mut raw, header_at).expect("still held");
        assert_eq!(Header::decode(&raw), header);
    }
    // Sent to another thread, or kept as a snapshot, it is the same version.
    let kept = thread::spawn(move || held.into_snapshot())
        .join()
        .expect("a thread");
    assert!(kept.ptr_eq(&cloned.into_snapshot()));
    assert_eq!(kept.read_guest(Gpa(header_at.0), &mut raw), Ok(()));
}
