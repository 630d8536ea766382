//! How read-side sections and grace periods scale with the number of registered readers, in both
//! read-side flavours.
//!
//! For 1, 16 and 256 registered readers (all but one idle: each has run one section and keeps its
//! cached root, as a halted vCPU does), prints the cost of one section plus a cached lookup on the
//! one busy reader (the fastest of 20 batches of 100000), and the cost of one grace period
//! (`synchronize`, the median of 2000) on the writer. Then, with a reader looping on every spare
//! core (the writer has a core) and on every core (the writer shares them), the CPU time per
//! section on each reader and the grace-period cost seen by the writer. Each figure is the median
//! of several rounds; the flavours are measured alternately in the same run.
//!
//! `cargo run --release --example reader_scale [-- ROUNDS]` (default 5 rounds).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use memslots::{Gfn, Limits, MemFlags, Memslots, ReadFlavour, Reader, UserspaceMemoryRegion};

/// Sections are timed in batches; the fastest batch is the cost (a shared machine's preemptions
/// only ever slow a batch down).
const BATCH: u64 = 100_000;
const BATCHES: usize = 20;
const GRACE_PERIODS: u32 = 2_000;
const GFN: u64 = 0x42;

fn vm() -> Arc<Memslots> {
    let vm = Arc::new(Memslots::new(Limits::default()));
    vm.set_user_memory_region(UserspaceMemoryRegion::new(
        0,
        MemFlags::empty(),
        0,
        1 << 20,
        0x7f00_0000_0000,
    ))
    .expect("valid");
    vm
}

/// Nanoseconds per run of `f`: the fastest of `BATCHES` batches of `BATCH`.
fn fastest_batch_ns(mut f: impl FnMut()) -> f64 {
    (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            start.elapsed().as_nanos() as f64 / BATCH as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Nanoseconds per section plus cached lookup.
fn section_ns(reader: &Reader) -> f64 {
    fastest_batch_ns(|| {
        let mut guard = reader.read();
        black_box(
            guard
                .gfn_to_memslot(0, Gfn(black_box(GFN)))
                .map(|s| s.npages()),
        );
    })
}

/// Nanoseconds per grace period: the median of `GRACE_PERIODS` timed calls.
fn grace_ns(vm: &Memslots) -> f64 {
    let mut times: Vec<u128> = (0..GRACE_PERIODS)
        .map(|_| {
            let start = Instant::now();
            vm.synchronize();
            start.elapsed().as_nanos()
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2] as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One busy reader and `registered - 1` idle ones, all of `flavour`.
fn idle_readers(registered: usize, flavour: ReadFlavour) -> (f64, f64) {
    let vm = vm();
    let idle: Vec<Reader> = (1..registered)
        .map(|_| vm.reader_with_flavour(flavour))
        .collect();
    for reader in &idle {
        drop(reader.read());
    }
    let busy = vm.reader_with_flavour(flavour);
    (section_ns(&busy), grace_ns(&vm))
}

/// This thread's CPU time in nanoseconds: a reader's cost per section, however often the
/// scheduler takes its core away.
fn thread_cpu_ns() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

/// `busy` readers, each in a loop of sections for `duration`; the writer meanwhile times grace
/// periods (one every 200 us). Returns CPU ns per section (median over the readers) and the
/// median grace period.
fn busy_readers(busy: usize, flavour: ReadFlavour, duration: Duration) -> (f64, f64) {
    let vm = vm();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(busy + 1));
    let threads: Vec<_> = (0..busy)
        .map(|_| {
            let reader = vm.reader_with_flavour(flavour);
            let (stop, start) = (Arc::clone(&stop), Arc::clone(&start));
            thread::spawn(move || {
                let mut count = 0u64;
                start.wait();
                let begun = thread_cpu_ns();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1024 {
                        let mut guard = reader.read();
                        black_box(
                            guard
                                .gfn_to_memslot(0, Gfn(black_box(GFN)))
                                .map(|s| s.npages()),
                        );
                    }
                    count += 1024;
                }
                (thread_cpu_ns() - begun) / count as f64
            })
        })
        .collect();
    start.wait();
    let begun = Instant::now();
    let mut graces = Vec::new();
    while begun.elapsed() < duration {
        let t = Instant::now();
        vm.synchronize();
        graces.push(t.elapsed().as_nanos() as f64);
        thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    let sections = threads
        .into_iter()
        .map(|t| t.join().expect("reader"))
        .collect();
    (median(sections), median(graces))
}

/// Runs `measure` for each flavour in turn, `rounds` times; the median of each of its two figures
/// per flavour.
fn per_flavour(
    rounds: usize,
    flavours: &[ReadFlavour],
    mut measure: impl FnMut(ReadFlavour) -> (f64, f64),
) -> Vec<(f64, f64)> {
    let mut results = vec![(Vec::new(), Vec::new()); flavours.len()];
    for _ in 0..rounds {
        for (i, &flavour) in flavours.iter().enumerate() {
            let (a, b) = measure(flavour);
            results[i].0.push(a);
            results[i].1.push(b);
        }
    }
    results
        .into_iter()
        .map(|(a, b)| (median(a), median(b)))
        .collect()
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(5, |a| a.parse().expect("rounds"));
    let cores = thread::available_parallelism().map_or(2, |n| n.get());
    let flavours = [ReadFlavour::Fence, ReadFlavour::Membarrier];
    println!(
        "membarrier available: {}; {cores} cores; medians of {rounds} rounds",
        ReadFlavour::membarrier_available()
    );

    // A fence plus a load, the reference the membarrier flavour's section is compared with.
    let counter = AtomicU64::new(7);
    let fence_ns = fastest_batch_ns(|| {
        std::sync::atomic::fence(Ordering::SeqCst);
        black_box(counter.load(Ordering::Acquire));
    });
    println!("fence(SeqCst) + load: {fence_ns:.2} ns\n");

    println!(
        "{:<12} {:>10} {:>14} {:>16}",
        "flavour", "readers", "section (ns)", "grace period (ns)"
    );
    for registered in [1, 16, 256] {
        let results = per_flavour(rounds, &flavours, |f| idle_readers(registered, f));
        for (flavour, (section, grace)) in flavours.iter().zip(results) {
            println!(
                "{:<12} {registered:>10} {section:>14.2} {grace:>16.0}",
                format!("{flavour:?}")
            );
        }
    }

    for (busy, what) in [(cores - 1, "one per spare core"), (cores, "one per core")] {
        println!("\n{busy} busy readers ({what}); a writer timing grace periods meanwhile:");
        println!(
            "{:<12} {:>18} {:>16}",
            "flavour", "section (CPU ns)", "grace period (ns)"
        );
        let results = per_flavour(rounds, &flavours, |f| {
            busy_readers(busy, f, Duration::from_millis(400))
        });
        for (flavour, (section, grace)) in flavours.iter().zip(results) {
            println!(
                "{:<12} {section:>18.2} {grace:>16.0}",
                format!("{flavour:?}")
            );
        }
    }
}
