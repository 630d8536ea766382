//! A vCPU's lookup latency, percentiles, with and without a writer publishing continuously.
//!
//! One reader thread times each lookup (a read-side section, `gfn_to_memslot`, the hva) with
//! `Instant` and stores the nanoseconds in a preallocated buffer, in batches; a writer thread, when
//! on, toggles dirty logging on a slot the reader never touches, so every publication invalidates
//! the reader's cached root and last-used slot without changing what it finds. The timer's own
//! cost, measured the same way around an empty body, is printed as a floor.
//!
//! `cargo run --release --features baseline --example read_latency [-- SLOTS [LOOKUPS]]` (default 509 slots, 2^20
//! lookups per scenario).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use memslots::baseline::ArrayMemslots;
use memslots::{Gfn, Limits, MemFlags, Memslots, Reader, UserspaceMemoryRegion, Version, Vm};

#[path = "../tests/support/rng.rs"]
mod rng;
use rng::XorShift;

const PAGES: u64 = 512;
const BASE_GFN: u64 = 0x10000;
const BATCH: usize = 4096;

fn region(id: u64, flags: MemFlags) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(
        id as u32,
        flags,
        (BASE_GFN + id * PAGES) << 12,
        PAGES << 12,
        0x7f00_0000_0000 + ((id * PAGES) << 12),
    )
}

/// One lookup as a vCPU makes it: a read-side section, gfn -> slot through the last-used slot,
/// slot -> hva.
#[inline]
fn lookup<S: Version>(reader: &Reader<S>, gfn: Gfn) -> Option<u64> {
    let mut guard = reader.read();
    let slot = guard.gfn_to_memslot(0, gfn)?;
    slot.gfn_to_hva(gfn).map(|hva| hva.0)
}

/// Times `lookups` single lookups of `gfns` (cycled) on a reader thread; returns sorted ns.
fn reader_times<S: Version>(
    vm: &Vm<S>,
    gfns: Arc<Vec<u64>>,
    lookups: usize,
    writer: bool,
) -> (Vec<u32>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let publishes = Arc::new(AtomicU64::new(0));
    let writer = writer.then(|| {
        let (vm, stop, publishes) = (vm.clone(), Arc::clone(&stop), Arc::clone(&publishes));
        // Slot 0 is never looked up: the reader's gfns start in slot 1.
        thread::spawn(move || {
            let mut on = false;
            while !stop.load(Ordering::Relaxed) {
                on = !on;
                let flags = if on {
                    MemFlags::LOG_DIRTY_PAGES
                } else {
                    MemFlags::empty()
                };
                vm.set_user_memory_region(region(0, flags))
                    .expect("flags only");
                publishes.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    let handle = vm.reader();
    let reader = thread::spawn(move || {
        let mut times = Vec::with_capacity(lookups);
        let mut i = 0;
        while times.len() < lookups {
            for _ in 0..BATCH.min(lookups - times.len()) {
                let gfn = Gfn(gfns[i % gfns.len()]);
                i += 1;
                let start = Instant::now();
                black_box(lookup(&handle, black_box(gfn)));
                times.push(start.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
            }
        }
        times
    });
    let mut times = reader.join().expect("reader");
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = writer {
        w.join().expect("writer");
    }
    times.sort_unstable();
    (times, publishes.load(Ordering::Relaxed))
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() - 1) as f64 * p / 100.0).round() as usize]
}

fn row(label: &str, t: &[u32], publishes: Option<u64>) {
    println!(
        "{label:<34} {:>6} {:>6} {:>7} {:>8}   {}",
        pct(t, 50.0),
        pct(t, 99.0),
        pct(t, 99.9),
        t[t.len() - 1],
        publishes.map_or(String::new(), |p| format!("{p} publishes"))
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let slots: u64 = args.next().map_or(509, |a| a.parse().expect("slot count"));
    let lookups: usize = args.next().map_or(1 << 20, |a| a.parse().expect("lookups"));
    assert!(
        slots >= 2,
        "slot 0 is the writer's; the reader needs another"
    );

    let trees = Arc::new(Memslots::new(Limits::default()));
    let array = Arc::new(ArrayMemslots::new(Limits::default()));
    for id in 0..slots {
        trees
            .set_user_memory_region(region(id, MemFlags::empty()))
            .expect("valid");
        array
            .set_user_memory_region(region(id, MemFlags::empty()))
            .expect("valid");
    }
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let random: Vec<u64> = (0..1 << 16)
        .map(|_| BASE_GFN + PAGES + rng.below((slots - 1) * PAGES))
        .collect();
    let same_slot: Vec<u64> = (0..PAGES).map(|p| BASE_GFN + PAGES + p).collect();
    let (random, same_slot) = (Arc::new(random), Arc::new(same_slot));

    // The timer floor: the same loop around nothing.
    let mut floor = Vec::with_capacity(lookups);
    for _ in 0..lookups {
        let start = Instant::now();
        black_box(());
        floor.push(start.elapsed().as_nanos() as u32);
    }
    floor.sort_unstable();

    println!("{slots} slots, {lookups} timed lookups per line, ns per lookup (timer included)");
    println!(
        "{:<34} {:>6} {:>6} {:>7} {:>8}",
        "", "p50", "p99", "p99.9", "max"
    );
    row("timer alone", &floor, None);
    for (pattern, gfns) in [("same slot", &same_slot), ("random gfn", &random)] {
        for writer in [false, true] {
            let w = if writer { "writer on" } else { "writer idle" };
            let (t, p) = reader_times(&trees, Arc::clone(gfns), lookups, writer);
            row(&format!("trees, {pattern}, {w}"), &t, writer.then_some(p));
            let (t, p) = reader_times(&array, Arc::clone(gfns), lookups, writer);
            row(&format!("array, {pattern}, {w}"), &t, writer.then_some(p));
        }
    }
}
