//! "Which memory slot holds this guest frame": N contiguous slots of P pages,
//! slot i covering [i * P, (i + 1) * P), keyed by base gfn.

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use memslots::tree::Tree;

#[path = "../tests/support/rng.rs"]
mod rng;
use rng::XorShift;

const P: u64 = 512;
const SIZES: [usize; 3] = [10, 509, 32764];
/// Precomputed random gfns, cycled through so the RNG is not measured.
const SAMPLES: usize = 1 << 16;

#[derive(Debug)]
struct Slot {
    base: u64,
    npages: u64,
}

impl Slot {
    #[inline]
    fn contains(&self, gfn: u64) -> bool {
        gfn.wrapping_sub(self.base) < self.npages
    }
}

fn slots(n: usize) -> Vec<(u64, Arc<Slot>)> {
    (0..n as u64)
        .map(|i| {
            (
                i * P,
                Arc::new(Slot {
                    base: i * P,
                    npages: P,
                }),
            )
        })
        .collect()
}

fn gfns(n: usize) -> Vec<u64> {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    (0..SAMPLES).map(|_| rng.below(n as u64 * P)).collect()
}

/// Runs `f` on the next sample each iteration.
fn cycle<R>(b: &mut criterion::Bencher<'_>, gfns: &[u64], mut f: impl FnMut(u64) -> R) {
    let mut i = 0;
    b.iter(|| {
        i = (i + 1) & (SAMPLES - 1);
        f(gfns[i])
    });
}

fn shuffled_tree<const B: usize>(entries: &[(u64, Arc<Slot>)]) -> Tree<u64, Arc<Slot>, (), B> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    XorShift(7).shuffle(&mut order);
    let mut t = Tree::new();
    for i in order {
        t.insert(entries[i].0, entries[i].1.clone());
    }
    t
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for n in SIZES {
        let entries = slots(n);
        let gfns = gfns(n);
        let t16: Tree<u64, Arc<Slot>, (), 16> = entries.iter().cloned().collect();
        let t32: Tree<u64, Arc<Slot>, (), 32> = entries.iter().cloned().collect();
        let t16i = shuffled_tree::<16>(&entries);
        let t32i = shuffled_tree::<32>(&entries);
        let im: imbl::OrdMap<u64, Arc<Slot>> = entries.iter().cloned().collect();
        let bt: BTreeMap<u64, Arc<Slot>> = entries.iter().cloned().collect();
        let vec = entries.clone();

        g.bench_with_input(BenchmarkId::new("tree_b16", n), &gfns, |b, s| {
            cycle(b, s, |x| {
                t16.floor(&x).filter(|(_, v)| v.contains(x)).map(|(_, v)| v)
            })
        });
        g.bench_with_input(BenchmarkId::new("tree_b32", n), &gfns, |b, s| {
            cycle(b, s, |x| {
                t32.floor(&x).filter(|(_, v)| v.contains(x)).map(|(_, v)| v)
            })
        });
        g.bench_with_input(BenchmarkId::new("tree_b16_inserted", n), &gfns, |b, s| {
            cycle(b, s, |x| {
                t16i.floor(&x)
                    .filter(|(_, v)| v.contains(x))
                    .map(|(_, v)| v)
            })
        });
        g.bench_with_input(BenchmarkId::new("tree_b32_inserted", n), &gfns, |b, s| {
            cycle(b, s, |x| {
                t32i.floor(&x)
                    .filter(|(_, v)| v.contains(x))
                    .map(|(_, v)| v)
            })
        });
        g.bench_with_input(BenchmarkId::new("imbl_ordmap", n), &gfns, |b, s| {
            cycle(b, s, |x| {
                im.get_prev(&x)
                    .filter(|(_, v)| v.contains(x))
                    .map(|(_, v)| v)
            })
        });
        g.bench_with_input(BenchmarkId::new("std_btreemap", n), &gfns, |b, s| {
            cycle(b, s, |x| {
                bt.range(..=x)
                    .next_back()
                    .filter(|(_, v)| v.contains(x))
                    .map(|(_, v)| v)
            })
        });
        g.bench_with_input(BenchmarkId::new("sorted_vec", n), &gfns, |b, s| {
            cycle(b, s, |x| {
                let i = vec.partition_point(|(base, _)| *base <= x);
                i.checked_sub(1)
                    .map(|i| &vec[i].1)
                    .filter(|v| v.contains(x))
            })
        });
        if n == SIZES[SIZES.len() - 1] {
            eprintln!(
                "n={n}: depth/nodes b16 {}/{} b32 {}/{} b16_inserted {}/{} b32_inserted {}/{}",
                t16.depth(),
                t16.node_count(),
                t32.depth(),
                t32.node_count(),
                t16i.depth(),
                t16i.node_count(),
                t32i.depth(),
                t32i.node_count()
            );
        }
    }
    g.finish();
}

/// A new version with one extra slot, then without it: the persistent edit
/// path (two path copies and the frees of the dropped versions).
fn insert_remove(c: &mut Criterion) {
    let mut g = c.benchmark_group("insert_remove");
    for n in SIZES {
        let entries = slots(n);
        // Odd gfns are never slot bases (P is even): always a fresh key.
        let keys: Vec<u64> = gfns(n).into_iter().map(|x| x | 1).collect();
        let extra = Arc::new(Slot { base: 1, npages: 1 });
        let t16: Tree<u64, Arc<Slot>, (), 16> = entries.iter().cloned().collect();
        let t32: Tree<u64, Arc<Slot>, (), 32> = entries.iter().cloned().collect();
        let im: imbl::OrdMap<u64, Arc<Slot>> = entries.iter().cloned().collect();

        g.bench_with_input(BenchmarkId::new("tree_b16", n), &keys, |b, s| {
            cycle(b, s, |k| {
                let mut t = t16.clone();
                t.insert(k, extra.clone());
                t.remove(&k);
                t
            })
        });
        g.bench_with_input(BenchmarkId::new("tree_b32", n), &keys, |b, s| {
            cycle(b, s, |k| {
                let mut t = t32.clone();
                t.insert(k, extra.clone());
                t.remove(&k);
                t
            })
        });
        g.bench_with_input(BenchmarkId::new("imbl_ordmap", n), &keys, |b, s| {
            cycle(b, s, |k| im.update(k, extra.clone()).without(&k))
        });
    }
    g.finish();
}

criterion_group!(benches, lookup, insert_remove);
criterion_main!(benches);
