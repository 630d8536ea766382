//! vCPU threads translate guest addresses and mark pages dirty while a management thread
//! hot-plugs, moves and unplugs memory. Prints lookups per second per vCPU and the latency of each
//! kind of update, in both forms, alternating round by round: the waiting form
//! (`set_user_memory_region`, grace periods included: a delete or move waits for every vCPU
//! section that was open when it published) and the non-waiting one
//! (`publish_user_memory_region`, whose grace periods are polled once per round; how long they
//! took to end is printed too).
//!
//! `cargo run --release --example vcpu_sim [-- VCPUS SECONDS [FORM] [fence]]` (defaults: 2 vCPUs,
//! 2 seconds, both forms, the VM's read-side flavour). FORM is `both`, `waiting` or
//! `non-waiting`; `fence` makes the vCPUs use the fence flavour.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use memslots::{
    ChangeKind, Gfn, GracePeriod, Limits, MemFlags, Memslots, ReadFlavour, UserspaceMemoryRegion,
};

const PAGE: u64 = 4096;
/// Boot RAM: 256 MiB at guest physical 0, logging dirty pages (as during live migration).
const RAM_PAGES: u64 = 65536;
/// Hot-pluggable DIMMs: 64 MiB each, above 4 GiB.
const DIMM_PAGES: u64 = 16384;
const DIMM_BASE_GFN: u64 = 1 << 20;
const DIMMS: u32 = 8;

fn main() {
    let mut args = std::env::args().skip(1);
    let vcpus: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let form = args.next().unwrap_or_else(|| "both".to_owned());
    let fence = args.next().is_some_and(|a| a == "fence");
    let waiting_round = |round: u64| match form.as_str() {
        "waiting" => true,
        "non-waiting" => false,
        _ => round % 2 == 0,
    };

    let vm = Arc::new(Memslots::new(Limits::default()));
    vm.set_user_memory_region(UserspaceMemoryRegion::new(
        0,
        MemFlags::LOG_DIRTY_PAGES,
        0,
        RAM_PAGES * PAGE,
        0x7f00_0000_0000,
    ))
    .expect("boot RAM");

    let stop = Arc::new(AtomicBool::new(false));
    let vcpu_threads: Vec<_> = (0..vcpus)
        .map(|n| {
            let reader = if fence {
                vm.reader_with_flavour(ReadFlavour::Fence)
            } else {
                vm.reader()
            };
            let stop = Arc::clone(&stop);
            thread::spawn(move || run_vcpu(n as u64, &reader, &stop))
        })
        .collect();

    // The management thread: plug, move, re-flag and unplug DIMMs in a cycle.
    let mut latencies: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut pending: Vec<(Instant, GracePeriod)> = Vec::new();
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let waiting = waiting_round(round);
        let dimm = (round % u64::from(DIMMS)) as u32 + 1;
        let plugged = DIMM_BASE_GFN + u64::from(dimm) * DIMM_PAGES * 2;
        let region = |gfn: u64, flags: MemFlags| {
            UserspaceMemoryRegion::new(
                dimm,
                flags,
                gfn * PAGE,
                DIMM_PAGES * PAGE,
                0x7e00_0000_0000 + u64::from(dimm) * (DIMM_PAGES * PAGE),
            )
        };
        let steps = [
            ("plug (create)", region(plugged, MemFlags::empty())),
            (
                "start logging (flags)",
                region(plugged, MemFlags::LOG_DIRTY_PAGES),
            ),
            (
                "move",
                region(plugged + DIMM_PAGES, MemFlags::LOG_DIRTY_PAGES),
            ),
            ("unplug (delete)", UserspaceMemoryRegion::delete(dimm)),
        ];
        for (what, request) in steps {
            let t = Instant::now();
            let kind = if waiting {
                vm.set_user_memory_region(request).expect("a valid plan")
            } else {
                let (kind, grace) = vm
                    .publish_user_memory_region(request)
                    .expect("a valid plan");
                pending.push((t, grace));
                kind
            };
            let form = if waiting { "waiting" } else { "non-waiting" };
            latencies
                .entry(format!("{what}, {form}"))
                .or_default()
                .push(t.elapsed());
            debug_assert_ne!(kind, ChangeKind::Unchanged);
        }
        pending.retain(|(published, grace)| {
            let done = vm.poll_synchronize(grace);
            if done {
                latencies
                    .entry("(non-waiting grace period ended)".to_owned())
                    .or_default()
                    .push(published.elapsed());
            }
            !done
        });
        // Harvest the dirty log as a migration thread would.
        let t = Instant::now();
        let dirty: u32 = vm
            .get_dirty_log(0)
            .expect("RAM logs")
            .iter()
            .map(|w| w.count_ones())
            .sum();
        latencies
            .entry("get_dirty_log (RAM)".to_owned())
            .or_default()
            .push(t.elapsed());
        if round == 0 {
            println!("first dirty-log harvest: {dirty} dirty pages of {RAM_PAGES}");
        }
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();

    println!(
        "\n{vcpus} vCPUs ({:?} flavour), {elapsed:.1} s, {round} management rounds",
        if fence {
            ReadFlavour::Fence
        } else {
            vm.read_flavour()
        }
    );
    for (n, handle) in vcpu_threads.into_iter().enumerate() {
        let stats = handle.join().expect("vCPU thread");
        println!(
            "vCPU {n}: {:.1} M lookups/s ({} translated, {} MMIO exits)",
            stats.lookups as f64 / elapsed / 1e6,
            stats.translated,
            stats.lookups - stats.translated
        );
    }
    println!("\nupdate latency (grace periods included):");
    println!(
        "{:<38} {:>7} {:>10} {:>10} {:>10}",
        "update", "count", "p50", "p99", "max"
    );
    for (what, mut times) in latencies {
        times.sort();
        let pick = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        println!(
            "{what:<38} {:>7} {:>10.1?} {:>10.1?} {:>10.1?}",
            times.len(),
            pick(0.5),
            pick(0.99),
            pick(1.0)
        );
    }
}

#[derive(Default)]
struct VcpuStats {
    lookups: u64,
    translated: u64,
}

/// A vCPU: short read-side sections, each translating a burst of guest frames (mostly in RAM,
/// sometimes in a DIMM that may or may not be plugged) and dirtying what it writes.
fn run_vcpu(seed: u64, reader: &memslots::Reader, stop: &AtomicBool) -> VcpuStats {
    let mut stats = VcpuStats::default();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while !stop.load(Ordering::Relaxed) {
        let mut guard = reader.read();
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let gfn = if x % 8 == 0 {
                Gfn(DIMM_BASE_GFN + x % (u64::from(DIMMS + 2) * DIMM_PAGES * 2))
            } else {
                Gfn(x % RAM_PAGES)
            };
            stats.lookups += 1;
            let translated = guard
                .gfn_to_memslot(0, gfn)
                .and_then(|slot| slot.gfn_to_hva_prot(gfn, true).ok())
                .is_some();
            if translated {
                stats.translated += 1;
                guard.mark_page_dirty(0, gfn);
            }
        }
    }
    stats
}
