//! Micro-benchmarks behind the seed table: gfn lookup by slot count (random and repeated gfn)
//! against the floors (a sorted `Vec` with `partition_point`, vm-memory's `find_region`), the
//! read-side section against plain `arc-swap`, `RwLock<Arc<_>>` and `crossbeam-epoch`, one update
//! on each design, and taking a snapshot.
//!
//! `cargo bench --features baseline --bench micro [-- FILTER]`; the slot layout is N contiguous slots of 512 pages.

use std::cell::Cell;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use memslots::baseline::ArrayMemslots;
use memslots::{Gfn, Limits, MemFlags, MemslotRead, Memslots, ReadFlavour, UserspaceMemoryRegion};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestRegionCollection};

#[path = "../tests/support/peer_region.rs"]
mod peer_region;
#[path = "../tests/support/rng.rs"]
mod rng;
use peer_region::PeerRegion;
use rng::XorShift;

const SIZES: [usize; 4] = [10, 509, 4096, 32764];
const PAGES: u64 = 512;
const BASE_GFN: u64 = 0x10000;
/// Random gfns are drawn ahead and cycled through, so the generator is not measured.
const SAMPLES: usize = 1 << 16;

fn region(id: usize, flags: MemFlags) -> UserspaceMemoryRegion {
    let i = id as u64;
    UserspaceMemoryRegion::new(
        id as u32,
        flags,
        (BASE_GFN + i * PAGES) << 12,
        PAGES << 12,
        0x7f00_0000_0000 + ((i * PAGES) << 12),
    )
}

fn trees(n: usize) -> &'static Memslots {
    static VMS: OnceLock<HashMap<usize, Memslots>> = OnceLock::new();
    &VMS.get_or_init(|| {
        SIZES
            .iter()
            .map(|&n| {
                let vm = Memslots::new(Limits::default());
                let mut tx = vm.transaction();
                for id in 0..n {
                    tx.set_user_memory_region(region(id, MemFlags::empty()))
                        .expect("valid");
                }
                tx.commit().expect("no hooks");
                (n, vm)
            })
            .collect()
    })[&n]
}

/// The array has no transaction: one update each, O(n^2) at 32764 slots (a few seconds, once).
fn array(n: usize) -> &'static ArrayMemslots {
    static VMS: OnceLock<HashMap<usize, ArrayMemslots>> = OnceLock::new();
    &VMS.get_or_init(|| {
        SIZES
            .iter()
            .map(|&n| {
                let vm = ArrayMemslots::new(Limits::default());
                for id in 0..n {
                    vm.set_user_memory_region(region(id, MemFlags::empty()))
                        .expect("valid");
                }
                (n, vm)
            })
            .collect()
    })[&n]
}

/// The floor: base and size in a sorted `Vec`, binary search, range check.
fn sorted_vec(n: usize) -> Vec<(u64, u64)> {
    (0..n as u64)
        .map(|i| (BASE_GFN + i * PAGES, PAGES))
        .collect()
}

#[inline]
fn vec_find(v: &[(u64, u64)], gfn: u64) -> Option<&(u64, u64)> {
    let i = v.partition_point(|&(base, _)| base <= gfn);
    i.checked_sub(1)
        .map(|i| &v[i])
        .filter(|(base, n)| gfn.wrapping_sub(*base) < *n)
}

fn vm_memory(n: usize) -> GuestRegionCollection<PeerRegion> {
    GuestRegionCollection::from_regions(
        (0..n as u64)
            .map(|i| PeerRegion {
                start: GuestAddress((BASE_GFN + i * PAGES) << 12),
                len: PAGES << 12,
                hva: 0,
            })
            .collect(),
    )
    .expect("sorted, disjoint")
}

fn random_gfns(n: usize) -> Vec<u64> {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    (0..SAMPLES)
        .map(|_| BASE_GFN + rng.below(n as u64 * PAGES))
        .collect()
}

/// Runs `f` on the next drawn gfn each iteration.
fn cycle<R>(b: &mut criterion::Bencher<'_>, gfns: &[u64], mut f: impl FnMut(u64) -> R) {
    let mut i = 0;
    b.iter(|| {
        i = (i + 1) & (SAMPLES - 1);
        f(gfns[i])
    });
}

fn lookup(c: &mut Criterion) {
    for (group, repeated) in [("lookup_random", false), ("lookup_repeated", true)] {
        let mut g = c.benchmark_group(group);
        for n in SIZES {
            let gfns = if repeated {
                vec![BASE_GFN + n as u64 / 2 * PAGES + 7; SAMPLES]
            } else {
                random_gfns(n)
            };
            let tree = trees(n).snapshot(0);
            let arr = array(n).snapshot(0);
            let vec = sorted_vec(n);
            let vmm = vm_memory(n);
            g.bench_with_input(BenchmarkId::new("tree_find", n), &gfns, |b, s| {
                cycle(b, s, |x| tree.find(Gfn(x)).map(|s| s.npages()))
            });
            g.bench_with_input(BenchmarkId::new("array_find", n), &gfns, |b, s| {
                cycle(b, s, |x| {
                    MemslotRead::find(&*arr, Gfn(x)).map(|s| s.npages())
                })
            });
            g.bench_with_input(BenchmarkId::new("sorted_vec", n), &gfns, |b, s| {
                cycle(b, s, |x| vec_find(&vec, x).map(|s| s.1))
            });
            g.bench_with_input(
                BenchmarkId::new("vm_memory_find_region", n),
                &gfns,
                |b, s| {
                    cycle(b, s, |x| {
                        vmm.find_region(GuestAddress(x << 12)).map(|r| r.len)
                    })
                },
            );
            // Inside one open section, through the reader's last-used slot (a hit when the gfn
            // repeats, a miss and a tree search otherwise).
            let reader = trees(n).reader();
            let mut guard = reader.read();
            g.bench_with_input(BenchmarkId::new("reader_cached", n), &gfns, |b, s| {
                cycle(b, s, |x| {
                    guard.gfn_to_memslot(0, Gfn(x)).map(|s| s.npages())
                })
            });
            drop(guard);
            if repeated {
                // The floor of a cache hit: an index kept in a Cell and one range check.
                let last = Cell::new(0usize);
                g.bench_with_input(BenchmarkId::new("bare_range_check", n), &gfns, |b, s| {
                    cycle(b, s, |x| {
                        let (base, len) = vec[last.get()];
                        if x.wrapping_sub(base) < len {
                            Some(len)
                        } else {
                            let i = vec.partition_point(|&(b, _)| b <= x).saturating_sub(1);
                            last.set(i);
                            Some(vec[i].1)
                        }
                    })
                });
            }
        }
        g.finish();
    }
}

/// Entering a read-side section and finding a cached slot, in both read-side flavours, against
/// one `fence(SeqCst)` plus a load (what the fence flavour's entry costs at least) and the
/// publication primitives alone doing the same range check on the slot they load.
fn read_side(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_side");
    let n = 509;
    let gfn = BASE_GFN + 100 * PAGES + 3;
    let vm = trees(n);
    for flavour in [ReadFlavour::Fence, ReadFlavour::Membarrier] {
        let reader = vm.reader_with_flavour(flavour);
        let name = format!("memslots_read_gfn_to_memslot_hit_{:?}", reader.flavour());
        g.bench_function(name.to_lowercase(), |b| {
            b.iter(|| {
                let mut guard = reader.read();
                guard
                    .gfn_to_memslot(0, Gfn(black_box(gfn)))
                    .map(|s| s.npages())
            })
        });
    }
    let counter = AtomicU64::new(7);
    g.bench_function("fence_seqcst_and_load", |b| {
        b.iter(|| {
            fence(Ordering::SeqCst);
            counter.load(Ordering::Acquire)
        })
    });
    let arr = array(n);
    let arr_reader = arr.reader();
    g.bench_function("array_read_gfn_to_memslot_hit", |b| {
        b.iter(|| {
            let mut guard = arr_reader.read();
            guard
                .gfn_to_memslot(0, Gfn(black_box(gfn)))
                .map(|s| s.npages())
        })
    });
    let slot = (BASE_GFN + 100 * PAGES, PAGES);
    let check = |s: &(u64, u64), x: u64| (x.wrapping_sub(s.0) < s.1).then_some(s.1);
    let swap = arc_swap::ArcSwap::from_pointee(slot);
    g.bench_function("arc_swap_load", |b| {
        b.iter(|| check(&swap.load(), black_box(gfn)))
    });
    let mut cache = arc_swap::Cache::new(&swap);
    g.bench_function("arc_swap_cache_load", |b| {
        b.iter(|| check(cache.load(), black_box(gfn)))
    });
    let lock = RwLock::new(Arc::new(slot));
    g.bench_function("rwlock_read_arc_clone", |b| {
        b.iter(|| {
            let s = Arc::clone(&lock.read().expect("not poisoned"));
            check(&s, black_box(gfn))
        })
    });
    // Reading through a `Shared` takes `unsafe` (`as_ref`, `deref`), which this crate forbids:
    // this measures the pin and the load only, a lower bound for a crossbeam-epoch root.
    let epoch = crossbeam_epoch::Atomic::new(slot);
    g.bench_function("crossbeam_epoch_pin_load", |b| {
        b.iter(|| {
            let guard = crossbeam_epoch::pin();
            let shared = epoch.load(std::sync::atomic::Ordering::Acquire, &guard);
            black_box(shared.as_raw());
        })
    });
    g.finish();
}

/// A grace period with one idle reader registered, of each flavour: one fence and a scan, or
/// also a `membarrier` call.
fn grace_period(c: &mut Criterion) {
    let mut g = c.benchmark_group("grace_period");
    for flavour in [ReadFlavour::Fence, ReadFlavour::Membarrier] {
        let vm = Memslots::new(Limits::default());
        let reader = vm.reader_with_flavour(flavour);
        drop(reader.read());
        let name = format!("synchronize_{:?}", reader.flavour()).to_lowercase();
        g.bench_function(name, |b| b.iter(|| vm.synchronize()));
    }
    g.finish();
}

/// One published update: the flags of slot 0 toggled (LOG_DIRTY_PAGES on, then off: a
/// FlagsOnly change, one publish and one grace period, no reader to wait for).
fn update(c: &mut Criterion) {
    let mut g = c.benchmark_group("update_flags_only");
    for n in SIZES {
        let plain = region(0, MemFlags::empty());
        let logging = region(0, MemFlags::LOG_DIRTY_PAGES);
        let on = Cell::new(false);
        let next = || {
            on.set(!on.get());
            if on.get() {
                logging
            } else {
                plain
            }
        };
        let tree = trees(n);
        g.bench_function(BenchmarkId::new("trees", n), |b| {
            b.iter(|| tree.set_user_memory_region(next()).expect("flags only"))
        });
        let arr = array(n);
        g.bench_function(BenchmarkId::new("array", n), |b| {
            b.iter(|| arr.set_user_memory_region(next()).expect("flags only"))
        });
        // Leave slot 0 as it was for the other groups.
        tree.set_user_memory_region(plain).expect("flags only");
        arr.set_user_memory_region(plain).expect("flags only");
    }
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    for n in [10, 32764] {
        let tree = trees(n);
        g.bench_function(BenchmarkId::new("trees", n), |b| {
            b.iter(|| tree.snapshot(0))
        });
        let arr = array(n);
        g.bench_function(BenchmarkId::new("array", n), |b| b.iter(|| arr.snapshot(0)));
    }
    g.finish();
}

fn config() -> Criterion {
    // Short: the machine is shared, and ratios within one run are what we compare.
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = lookup, read_side, grace_period, update, snapshot
}
criterion_main!(benches);
