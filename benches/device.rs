//! The device path: a virtio device serving requests (pop a chain, read its 16-byte header, write
//! 1500 bytes, add the used entry), taking guest memory per chain through
//! `GuestAddressSpace::memory()`, from 1 or 2 threads (each on its own queue, one address
//! space), with 8 or 4096 slots: memslots (`Memslots<MmapRegion>`) against vm-memory's
//! `GuestMemoryAtomic<GuestMemoryMmap>`. Each row's two designs run back to back.
//!
//! Also the two parts that differ between the designs: taking and dropping `memory()` (and, for
//! memslots, a `Snapshot`), and `find_region` at each request buffer.
//!
//! `cargo bench --features vm-memory-mmap --bench device [-- FILTER]`
//!
//! The layout: slot 0 (at gpa 0) holds the queues' rings; each request's header and response sit
//! in pages of other slots picked at random, so lookups spread over the slots.

#[path = "../tests/support/rng.rs"]
mod rng;
#[path = "../tests/support/virtio_device.rs"]
mod virtio_device;

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use memslots::{Limits, MemFlags, Memslots, UserspaceMemoryRegion};
use rng::XorShift;
use virtio_device::{recycle, serve, Driver, Header, Request};
use virtio_queue::Queue;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
    GuestRegionMmap, MmapRegion,
};

const SLOTS: [usize; 2] = [8, 4096];
const THREADS: [usize; 2] = [1, 2];
/// Every slot's size; slots sit at multiples of twice this, so holes separate them.
const SLOT: u64 = 512 << 10;
const PAGE: u64 = 4096;
const QUEUE_SIZE: u16 = 256;
/// Chains per queue: two descriptors each fill the table.
const CHAINS: usize = 128;
const RESPONSE: u32 = 1500;
/// Where thread `t`'s queue is in slot 0.
const QUEUE_STRIDE: u64 = 0x8000;

/// A fixed shuffle of `0..n` (Fisher-Yates), so runs are comparable.
fn shuffled(n: usize) -> Vec<usize> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut v: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut v);
    v
}

/// Page `l` of the request buffers: slot `1 + l % (n - 1)`, page `l / (n - 1)` in it.
fn buffer(n: usize, l: usize) -> GuestAddress {
    let data = n - 1;
    let slot = 1 + (l % data) as u64;
    let page = (l / data) as u64;
    assert!(page * PAGE < SLOT, "the buffers fit the slots");
    GuestAddress(slot * 2 * SLOT + page * PAGE)
}

/// Thread `t`'s requests: header and response each in a page picked at random.
fn requests(n: usize, t: usize) -> Vec<Request> {
    let pages = shuffled(2 * CHAINS * THREADS.len());
    (0..CHAINS)
        .map(|k| {
            let j = 2 * (t * CHAINS + k);
            Request {
                header_at: buffer(n, pages[j]),
                header: Header {
                    id: j as u64,
                    fill: k as u8,
                    len: RESPONSE,
                },
                response: vec![(buffer(n, pages[j + 1]), RESPONSE)],
            }
        })
        .collect()
}

fn memslots(n: usize) -> Memslots<MmapRegion> {
    let vm = Memslots::backed(Limits::default());
    let mut tx = vm.transaction();
    for i in 0..n {
        let ram = MmapRegion::new(SLOT as usize).expect("anonymous memory");
        let hva = ram.as_ptr() as u64;
        let gpa = i as u64 * 2 * SLOT;
        let region = UserspaceMemoryRegion::new(i as u32, MemFlags::empty(), gpa, SLOT, hva);
        tx.create_memory_region(region, ram).expect("a valid slot");
    }
    tx.commit().expect("no hooks");
    vm
}

fn vm_memory(n: usize) -> GuestMemoryAtomic<GuestMemoryMmap> {
    let regions = (0..n)
        .map(|i| {
            let ram = MmapRegion::new(SLOT as usize).expect("anonymous memory");
            GuestRegionMmap::new(ram, GuestAddress(i as u64 * 2 * SLOT)).expect("a valid region")
        })
        .collect();
    GuestMemoryAtomic::new(GuestMemoryMmap::from_regions(regions).expect("sorted, disjoint"))
}

/// One device thread's state, kept across measurements.
struct Device {
    queue: Queue,
    scratch: Vec<u8>,
}

/// Sets up thread `t`'s queue with its chains twice over, so the whole available ring is full.
fn device<AS: GuestAddressSpace>(space: &AS, n: usize, t: usize) -> Device {
    let mem = space.memory();
    let driver = Driver::new(&*mem, GuestAddress(t as u64 * QUEUE_STRIDE), QUEUE_SIZE);
    let requests = requests(n, t);
    driver.offer(&requests);
    driver.offer(&requests);
    Device {
        queue: driver.queue(),
        scratch: vec![0; RESPONSE as usize],
    }
}

/// The measured loop: `iters` chains, each with a fresh `memory()`.
fn run<AS: GuestAddressSpace>(space: &AS, device: &mut Device, iters: u64) {
    for _ in 0..iters {
        let mem = space.memory();
        let served = match serve(&mut device.queue, &*mem, &mut device.scratch) {
            Some(served) => served,
            None => {
                recycle(&*mem, &device.queue);
                serve(&mut device.queue, &*mem, &mut device.scratch).expect("a recycled chain")
            }
        };
        black_box(served);
    }
}

/// `iters` chains on each of the devices' threads at once; the slowest thread's time.
fn measure<AS>(space: &AS, devices: &mut [Device], iters: u64) -> Duration
where
    AS: GuestAddressSpace + Sync,
{
    if let [device] = devices {
        let start = Instant::now();
        run(space, device, iters);
        return start.elapsed();
    }
    let barrier = Barrier::new(devices.len());
    thread::scope(|s| {
        let threads: Vec<_> = devices
            .iter_mut()
            .map(|device| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    run(space, device, iters);
                    start.elapsed()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a device thread"))
            .max()
            .expect("two threads")
    })
}

fn device_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("device");
    for n in SLOTS {
        let ours = memslots(n);
        let theirs = vm_memory(n);
        for threads in THREADS {
            let mut ours_devices: Vec<_> = (0..threads).map(|t| device(&ours, n, t)).collect();
            let mut theirs_devices: Vec<_> = (0..threads).map(|t| device(&theirs, n, t)).collect();
            let id = format!("{n}slots/{threads}threads");
            g.bench_function(BenchmarkId::new("memslots", &id), |b| {
                b.iter_custom(|iters| measure(&ours, &mut ours_devices, iters));
            });
            g.bench_function(BenchmarkId::new("vm_memory", &id), |b| {
                b.iter_custom(|iters| measure(&theirs, &mut theirs_devices, iters));
            });
        }
    }
    g.finish();
}

/// `find_region` over one version, at the request buffers of both threads in chain order.
fn find_all<M: GuestMemoryBackend>(mem: &M, at: &[GuestAddress]) -> usize {
    at.iter()
        .map(|&addr| mem.find_region(addr).is_some() as usize)
        .sum()
}

fn parts(c: &mut Criterion) {
    let mut g = c.benchmark_group("device_parts");
    for n in SLOTS {
        let ours = memslots(n);
        let theirs = vm_memory(n);
        let at: Vec<GuestAddress> = (0..THREADS.len())
            .flat_map(|t| requests(n, t))
            .flat_map(|r| [r.header_at, r.response[0].0])
            .collect();
        g.bench_function(BenchmarkId::new("memslots_memory", n), |b| {
            b.iter(|| drop(black_box(ours.memory())));
        });
        g.bench_function(BenchmarkId::new("memslots_snapshot", n), |b| {
            b.iter(|| drop(black_box(ours.snapshot(0))));
        });
        g.bench_function(BenchmarkId::new("vm_memory_memory", n), |b| {
            b.iter(|| drop(black_box(theirs.memory())));
        });
        let (ours_mem, theirs_mem) = (ours.memory(), theirs.memory());
        g.bench_function(BenchmarkId::new("memslots_find_region", n), |b| {
            b.iter(|| find_all(&*ours_mem, black_box(&at)));
        });
        g.bench_function(BenchmarkId::new("vm_memory_find_region", n), |b| {
            b.iter(|| find_all(&*theirs_mem, black_box(&at)));
        });
        assert_eq!(find_all(&*ours_mem, &at), at.len());
        assert_eq!(find_all(&*theirs_mem, &at), at.len());
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = device_path, parts
}
criterion_main!(benches);
