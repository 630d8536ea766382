//! vCPU threads load and store guest memory while a management thread hot-plugs, moves,
//! re-flags and unplugs backed DIMMs and harvests the dirty log, as a simulator or a VMM in live
//! migration would. Prints memory accesses per second per vCPU and the latency of each kind of
//! update, and checks what the vCPUs read. Updates come in two forms, alternating round by round:
//! waiting (a committed transaction, the kernel-exact steps: a delete or move waits for every
//! vCPU section that was open when it published) and non-waiting (what `set_user_memory_region`
//! and `create_memory_region` do on a backed VM; the grace periods are polled once per round, and
//! how long they took to end is printed too).
//!
//! `cargo run --release --example vcpu_sim [-- VCPUS SECONDS [FORM] [fence]]` (defaults: 2 vCPUs,
//! 2 seconds, both forms, the VM's read-side flavour). FORM is `both`, `waiting` or
//! `non-waiting`; `fence` makes the vCPUs use the fence flavour.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use memslots::{
    Backing, ChangeKind, Error, Gpa, GracePeriod, GuestRam, Limits, MemFlags, Memslots,
    ReadFlavour, Reader, UserspaceMemoryRegion,
};

#[path = "../tests/support/rng.rs"]
mod rng;
use rng::XorShift;

const PAGE: u64 = 4096;
/// Boot RAM: 256 MiB at guest physical 0, logging dirty pages (as during live migration).
const RAM_PAGES: u64 = 65536;
/// Hot-pluggable DIMMs: 16 MiB each, above 4 GiB.
const DIMM_PAGES: u64 = 4096;
const DIMM_BASE: u64 = 1 << 32;
const DIMMS: u32 = 8;

type Vm = Memslots<GuestRam>;

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

    let vm: Vm = Memslots::backed(Limits::default());
    vm.create_memory_region(
        UserspaceMemoryRegion::new(
            0,
            MemFlags::LOG_DIRTY_PAGES,
            0,
            RAM_PAGES * PAGE,
            0x7f00_0000_0000,
        ),
        GuestRam::new((RAM_PAGES * PAGE) as usize),
    )
    .expect("boot RAM");

    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicUsize::new(0));
    let vcpu_threads: Vec<_> = (0..vcpus)
        .map(|n| {
            let reader = if fence {
                vm.reader_with_flavour(ReadFlavour::Fence)
            } else {
                vm.reader()
            };
            let (stop, running) = (Arc::clone(&stop), Arc::clone(&running));
            thread::spawn(move || run_vcpu(n as u64, &reader, &stop, &running))
        })
        .collect();
    // Let every vCPU start writing before the first harvest, so that it sees their work.
    while running.load(Ordering::Acquire) < vcpus {
        thread::yield_now();
    }
    thread::sleep(Duration::from_millis(10));

    // The management thread: plug, move, re-flag and unplug DIMMs in a cycle.
    let mut latencies: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut pending: Vec<(Instant, GracePeriod)> = Vec::new();
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let waiting = waiting_round(round);
        let form = if waiting { "waiting" } else { "non-waiting" };
        let dimm = (round % u64::from(DIMMS)) as u32 + 1;
        let plugged = DIMM_BASE + u64::from(dimm) * DIMM_PAGES * PAGE * 2;
        let region = |gpa: u64, flags: MemFlags| {
            UserspaceMemoryRegion::new(
                dimm,
                flags,
                gpa,
                DIMM_PAGES * PAGE,
                0x7e00_0000_0000 + u64::from(dimm) * (DIMM_PAGES * PAGE),
            )
        };
        // A DIMM arrives with its id in the first word of every page, for the vCPUs to check.
        let memory = GuestRam::new((DIMM_PAGES * PAGE) as usize);
        for page in 0..DIMM_PAGES {
            memory.write_at((page * PAGE) as usize, &u64::from(dimm).to_le_bytes());
        }
        let t = Instant::now();
        let plug = region(plugged, MemFlags::empty());
        if waiting {
            let mut tx = vm.transaction();
            tx.create_memory_region(plug, memory).expect("a free range");
            tx.commit().expect("no hooks");
        } else {
            vm.create_memory_region(plug, memory).expect("a free range");
        }
        latencies
            .entry(format!("plug (create), {form}"))
            .or_default()
            .push(t.elapsed());
        let steps = [
            (
                "start logging (flags)",
                region(plugged, MemFlags::LOG_DIRTY_PAGES),
            ),
            (
                "move",
                region(plugged + DIMM_PAGES * PAGE, MemFlags::LOG_DIRTY_PAGES),
            ),
            ("unplug (delete)", UserspaceMemoryRegion::delete(dimm)),
        ];
        for (what, request) in steps {
            let t = Instant::now();
            let kind = if waiting {
                let mut tx = vm.transaction();
                let kind = tx.set_user_memory_region(request).expect("a valid plan");
                tx.commit().expect("no hooks");
                kind
            } else {
                let (kind, grace) = vm
                    .publish_user_memory_region(request)
                    .expect("a valid plan");
                pending.push((t, grace));
                kind
            };
            latencies
                .entry(format!("{what}, {form}"))
                .or_default()
                .push(t.elapsed());
            debug_assert_ne!(kind, ChangeKind::Unchanged);
        }
        let t = Instant::now();
        let mut ended = Vec::new();
        pending.retain(|(published, grace)| {
            let done = vm.poll_synchronize(grace);
            if done {
                ended.push(published.elapsed());
            }
            !done
        });
        if !waiting {
            // Polling is where the versions readers let go of, and their DIMMs, are freed.
            latencies
                .entry("poll_synchronize, all pending".to_owned())
                .or_default()
                .push(t.elapsed());
        }
        if !ended.is_empty() {
            latencies
                .entry("(non-waiting grace period ended)".to_owned())
                .or_default()
                .extend(ended);
        }
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

    let flavour = if fence {
        ReadFlavour::Fence
    } else {
        vm.read_flavour()
    };
    println!("\n{vcpus} vCPUs ({flavour:?} flavour), {elapsed:.1} s, {round} management rounds");
    for (n, handle) in vcpu_threads.into_iter().enumerate() {
        let stats = handle.join().expect("vCPU thread");
        println!(
            "vCPU {n}: {:.1} M accesses/s ({} RAM read-modify-writes, {} DIMM reads checked, {} MMIO exits, {} retries on an INVALID slot)",
            stats.accesses as f64 / elapsed / 1e6,
            stats.ram,
            stats.dimm,
            stats.mmio,
            stats.retries
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
    accesses: u64,
    ram: u64,
    dimm: u64,
    mmio: u64,
    retries: u64,
}

/// A vCPU: short read-side sections, each a burst of loads and stores (mostly to its own part of
/// RAM, sometimes to a DIMM that may or may not be plugged, where a miss is an MMIO exit).
fn run_vcpu(
    seed: u64,
    reader: &Reader<memslots::MemslotSet<GuestRam>>,
    stop: &AtomicBool,
    running: &AtomicUsize,
) -> VcpuStats {
    let mut stats = VcpuStats::default();
    let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    // Each vCPU owns a 1024-page stretch of RAM, so it can check what it reads back.
    let own = seed % 64 * 1024 * PAGE;
    let mut started = false;
    while !stop.load(Ordering::Relaxed) {
        let mut section = reader.read();
        for _ in 0..64 {
            let x = rng.next_u64();
            stats.accesses += 1;
            if x % 8 == 0 {
                let span = u64::from(DIMMS + 2) * DIMM_PAGES * 2;
                let gpa = Gpa(DIMM_BASE + x % span * PAGE);
                match section.read_guest_obj::<u64>(0, gpa) {
                    Ok(id) => {
                        let slot = section
                            .gfn_to_memslot(0, gpa.to_gfn(12))
                            .expect("just read");
                        assert_eq!(id, u64::from(slot.id()), "a DIMM page holds its DIMM's id");
                        stats.dimm += 1;
                    }
                    Err(Error::Unmapped { .. }) => stats.mmio += 1,
                    // Caught in the middle of a move or unplug: the kernel retries the fault.
                    Err(Error::SlotInvalid { .. }) => stats.retries += 1,
                    Err(e) => panic!("unexpected {e}"),
                }
            } else {
                let gpa = Gpa(own + (x % (1024 * PAGE / 8)) * 8);
                let value = section.read_guest_obj::<u64>(0, gpa).expect("RAM");
                section
                    .write_guest_obj(0, gpa, value.wrapping_add(1))
                    .expect("RAM");
                let back = section.read_guest_obj::<u64>(0, gpa).expect("RAM");
                assert_eq!(back, value.wrapping_add(1), "RAM keeps what was written");
                stats.ram += 1;
            }
        }
        drop(section);
        if !started {
            started = true;
            running.fetch_add(1, Ordering::Release);
        }
    }
    stats
}
