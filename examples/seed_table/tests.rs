//! The six tests, written once for any [`Design`], and the time-bounded measurement loop.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use memslots::{Gfn, Hva, UserspaceMemoryRegion, Vm};

use crate::layout::{fault, Design, Layout, HOST_BASE, MEM_GPA, PAGE};

/// How long one measurement (one test, one design, one slot count) may run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Stop once this much time has passed and `min_iters` iterations ran.
    pub(crate) time: Duration,
    /// Never start an iteration that would end past this, except the first: a single iteration
    /// longer than the budget (the array's Slot setup at 32764 slots) is still measured once.
    pub(crate) cap: Duration,
    pub(crate) min_iters: usize,
    pub(crate) max_iters: usize,
}

/// One design's times for one row. The figure the table shows is the fastest iteration of all
/// rounds: on a shared machine, noise only ever adds time. An iteration that waits for a
/// preempted thread (a grace period waiting on the vCPU thread, a timer tick) takes
/// milliseconds instead of microseconds, and in some runs most Move iterations do, so that the
/// median, and even the first quartile, measure the scheduler rather than the design. The
/// quartile and the median are kept for the JSON; on a quiet machine all three differ by a few
/// percent.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// The fastest iteration, in seconds.
    pub(crate) time: f64,
    pub(crate) quartile: f64,
    pub(crate) median: f64,
    pub(crate) iters: usize,
    /// The fastest iteration of each round on its own, in round order.
    pub(crate) rounds: Vec<f64>,
}

/// The fastest, the first quartile and the median of `times`, which must not be empty.
fn order_statistics(times: &mut [f64]) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    (times[0], times[n / 4], median)
}

impl Sample {
    /// The sample of iteration times gathered round by round (no round empty).
    pub(crate) fn of(mut rounds: Vec<Vec<f64>>) -> Self {
        assert!(
            rounds.iter().all(|r| !r.is_empty()),
            "at least one iteration"
        );
        let mut all: Vec<f64> = rounds.iter().flatten().copied().collect();
        let (time, quartile, median) = order_statistics(&mut all);
        Sample {
            time,
            quartile,
            median,
            iters: all.len(),
            rounds: rounds.iter_mut().map(|r| order_statistics(r).0).collect(),
        }
    }
}

/// Lowest and highest ratio `before / after` among the rounds both designs ran.
pub(crate) fn ratio_spread(before: &Sample, after: &Sample) -> (f64, f64) {
    before
        .rounds
        .iter()
        .zip(&after.rounds)
        .map(|(b, a)| b / a)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(r), hi.max(r))
        })
}

/// Runs `one` (which returns the time of the part it measures) until the budget is spent, and
/// returns every iteration's time in seconds.
pub(crate) fn measure(budget: &Budget, mut one: impl FnMut() -> Duration) -> Vec<f64> {
    let start = Instant::now();
    let mut times = Vec::new();
    loop {
        let took = one();
        times.push(took.as_secs_f64());
        let elapsed = start.elapsed();
        let n = times.len();
        if n >= budget.max_iters
            || (n >= budget.min_iters && elapsed >= budget.time)
            || elapsed + took > budget.cap
        {
            break;
        }
    }
    times
}

/// How a measurement is split into rounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rounds {
    /// Rounds per measurement; each gets an equal share of the budget.
    pub(crate) count: u32,
    /// Rounds every design runs, however long its iterations; after these, a design whose
    /// rounds together took longer than the budget's cap runs no more.
    pub(crate) min: u32,
}

/// Measures the designs in alternating rounds, so that all see the same machine: on a shared
/// machine, load from other work comes and goes, and a measurement taken all at once can land
/// in a quiet or a busy spell. Each `run(i, budget)` measures design `i` for one round (an empty
/// result: not measured).
pub(crate) fn interleaved<const N: usize>(
    budget: &Budget,
    rounds: Rounds,
    mut run: impl FnMut(usize, &Budget) -> Vec<f64>,
) -> [Option<Sample>; N] {
    let round = Budget {
        time: budget.time / rounds.count,
        cap: budget.cap,
        min_iters: budget.min_iters.div_ceil(rounds.count as usize),
        max_iters: budget.max_iters.div_ceil(rounds.count as usize),
    };
    let mut times: [Vec<Vec<f64>>; N] = std::array::from_fn(|_| Vec::new());
    let mut spent = [Duration::ZERO; N];
    for r in 0..rounds.count {
        for i in 0..N {
            if r >= rounds.min && spent[i] >= budget.cap {
                continue;
            }
            let start = Instant::now();
            let got = run(i, &round);
            spent[i] += start.elapsed();
            if !got.is_empty() {
                times[i].push(got);
            }
        }
    }
    times.map(|t| (!t.is_empty()).then(|| Sample::of(t)))
}

/// Map: every page of the area, in gfn order, one fault each (section, cached gfn -> slot, hva,
/// dirty bit). The slots log dirty pages.
pub(crate) fn map<D: Design>(vm: &Vm<D>, layout: &Layout, budget: &Budget) -> Vec<f64> {
    let handle = vm.reader();
    map_pass(layout, budget, |gfn| {
        fault(&handle, Gfn(gfn), true).is_some()
    })
}

/// Times passes over every page of the Map area in gfn order; `fault` maps one page and says
/// whether it was mapped (every page must be).
pub(crate) fn map_pass(
    layout: &Layout,
    budget: &Budget,
    mut fault: impl FnMut(u64) -> bool,
) -> Vec<f64> {
    let first = layout.first_gfn();
    let gfns = first..first + layout.area_pages;
    measure(budget, || {
        let start = Instant::now();
        let mut mapped = 0u64;
        for gfn in gfns.clone() {
            mapped += u64::from(fault(gfn));
        }
        let took = start.elapsed();
        assert_eq!(black_box(mapped), layout.area_pages, "every page is mapped");
        took
    })
}

/// The hva chunks of an Unmap iteration: the first half of the host area, in hva order, cut into
/// `chunk_pages` pieces counted from the area's start and split at slot boundaries, as
/// `test_memslot_do_unmap` splits its madvise calls.
pub(crate) fn unmap_chunks(layout: &Layout, chunk_pages: u64) -> Vec<(u64, u64)> {
    let half = HOST_BASE + layout.area_pages / 2 * PAGE;
    let mut chunks = Vec::new();
    let mut slot = 0;
    let mut at = HOST_BASE;
    while at < half {
        let end = (at + chunk_pages * PAGE).min(half);
        let mut piece = at;
        while piece < end {
            while layout.by_hva[slot].1 <= piece {
                slot += 1;
            }
            let stop = end.min(layout.by_hva[slot].1);
            chunks.push((piece, stop));
            piece = stop;
        }
        at = end;
    }
    chunks
}

/// Unmap and Unmap 2M: one hva-range query per chunk on the current version, consuming every
/// (slot, gfn range) it yields.
pub(crate) fn unmap<D: Design>(vm: &Vm<D>, chunks: &[(u64, u64)], budget: &Budget) -> Vec<f64> {
    let pages: u64 = chunks.iter().map(|(s, e)| (e - s) / PAGE).sum();
    measure(budget, || {
        let start = Instant::now();
        let version = vm.snapshot(0);
        let mut found = 0u64;
        for &(s, e) in chunks {
            for (_slot, gfns) in version.hva_range(Hva(s), Hva(e)) {
                found += gfns.end.0 - gfns.start.0;
            }
        }
        let took = start.elapsed();
        assert_eq!(black_box(found), pages, "every chunk maps back to its gfns");
        took
    })
}

/// The pages the vCPU thread touches during the Move tests: 50 pages straddling the last slot's
/// start (active) or the first 50 pages of the area, far below it (inactive).
pub(crate) fn move_window(layout: &Layout, active: bool) -> Vec<u64> {
    if active {
        let boundary = layout.last().guest_phys_addr / PAGE;
        (boundary - 25..boundary + 25).collect()
    } else {
        let first = layout.first_gfn();
        (first..first + 50).collect()
    }
}

/// Move active / Move inactive: one iteration moves the last slot past the end of the area and
/// back (two `set_user_memory_region` calls, as the kernel's loop does), while a vCPU thread
/// faults on the window in a loop. Returns the sample and the faults the vCPU took.
pub(crate) fn moves<D: Design>(
    vm: &Vm<D>,
    layout: &Layout,
    active: bool,
    budget: &Budget,
) -> Vec<f64> {
    let home = layout.last();
    let away = UserspaceMemoryRegion {
        guest_phys_addr: MEM_GPA + layout.area_pages * PAGE,
        ..home
    };
    let window = move_window(layout, active);
    let stop = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(AtomicU64::new(0));
    let vcpu = {
        let handle = vm.reader();
        let (stop, faults) = (Arc::clone(&stop), Arc::clone(&faults));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for &gfn in &window {
                    black_box(fault(&handle, Gfn(gfn), false));
                }
                faults.fetch_add(window.len() as u64, Ordering::Relaxed);
            }
        })
    };
    while faults.load(Ordering::Relaxed) == 0 {
        thread::yield_now();
    }
    let times = measure(budget, || {
        let start = Instant::now();
        vm.set_user_memory_region(away).expect("move away");
        vm.set_user_memory_region(home).expect("move back");
        start.elapsed()
    });
    stop.store(true, Ordering::Relaxed);
    vcpu.join().expect("vCPU thread");
    times
}

/// Slot setup: every slot created from empty, one request (one published version) each. Leaves
/// the last VM built in `last`, for the Move tests, which use the same layout.
pub(crate) fn setup<D: Design>(
    layout: &Layout,
    budget: &Budget,
    last: &mut Option<Vm<D>>,
) -> Vec<f64> {
    measure(budget, || {
        let vm = D::new_vm();
        let start = Instant::now();
        layout.build(&vm);
        let took = start.elapsed();
        *last = Some(vm); // the previous VM is freed here, outside the timed part
        took
    })
}
