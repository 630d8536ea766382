//! Model tests against `BTreeMap`, persistence, interval search and diff.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// Largest interval end in a subtree. As `Summary<u32, u32>` an entry
/// `start -> len` is `[start, start + len)`; as `Summary<(u32, u32), u32>` an
/// entry `(start, id) -> end` is `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MaxEnd(u64);

impl Summary<u32, u32> for MaxEnd {
    fn of_entry(start: &u32, len: &u32) -> Self {
        MaxEnd(u64::from(*start) + u64::from(*len))
    }
    fn combine(self, other: Self) -> Self {
        MaxEnd(self.0.max(other.0))
    }
}

impl Summary<(u32, u32), u32> for MaxEnd {
    fn of_entry(_: &(u32, u32), end: &u32) -> Self {
        MaxEnd(u64::from(*end))
    }
    fn combine(self, other: Self) -> Self {
        MaxEnd(self.0.max(other.0))
    }
}

/// Overlap query `[a, b)` through the pruned search.
fn overlap_query<K: Ord + Copy, V: Clone, const B: usize>(
    t: &Tree<K, V, MaxEnd, B>,
    start: impl Fn(&K) -> u64,
    a: u64,
    b: u64,
) -> (Vec<K>, usize)
where
    MaxEnd: Summary<K, V>,
{
    let mut search = t.search(|k, s| {
        if start(k) >= b {
            Visit::Stop
        } else if s.0 > a {
            Visit::Enter
        } else {
            Visit::Skip
        }
    });
    let keys = search.by_ref().map(|(k, _)| *k).collect();
    (keys, search.nodes_visited())
}

fn cases(release: u32, debug: u32) -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(debug_assertions) {
            debug
        } else {
            release
        },
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u32, u32),
    Remove(u32),
    /// Remove the `n % len`-th present key (hits even with sparse keys).
    RemoveNth(usize),
    Get(u32),
    Floor(u32),
    Ceil(u32),
    Range(Bound<u32>, Bound<u32>),
    Overlap(u32, u32),
    /// Insert `gap` past the largest key: ascending inserts, which split on
    /// the right edge.
    Append(u32, u32),
    /// Persistence runs only: continue from the `n % versions`-th version.
    Revert(usize),
}

fn bound(max: u32) -> impl Strategy<Value = Bound<u32>> {
    prop_oneof![
        Just(Bound::Unbounded),
        (0..max).prop_map(Bound::Included),
        (0..max).prop_map(Bound::Excluded),
    ]
}

fn op(max: u32) -> impl Strategy<Value = Op> {
    let max_len = (max / 16).max(4);
    prop_oneof![
        6 => (0..max, 1..max_len).prop_map(|(k, l)| Op::Insert(k, l)),
        3 => (1..4u32, 1..max_len).prop_map(|(g, l)| Op::Append(g, l)),
        3 => (0..max).prop_map(Op::Remove),
        2 => any::<usize>().prop_map(Op::RemoveNth),
        1 => (0..max).prop_map(Op::Get),
        1 => (0..max).prop_map(Op::Floor),
        1 => (0..max).prop_map(Op::Ceil),
        1 => (bound(max), bound(max)).prop_map(|(a, b)| Op::Range(a, b)),
        1 => (0..max, 0..max).prop_map(|(a, b)| Op::Overlap(a.min(b), a.max(b) + 1)),
    ]
}

type Model = BTreeMap<u32, u32>;

fn in_bounds(k: u32, lo: Bound<u32>, hi: Bound<u32>) -> bool {
    (match lo {
        Bound::Included(a) => k >= a,
        Bound::Excluded(a) => k > a,
        Bound::Unbounded => true,
    }) && (match hi {
        Bound::Included(b) => k <= b,
        Bound::Excluded(b) => k < b,
        Bound::Unbounded => true,
    })
}

/// Applies a mutation to both; returns `false` for queries.
fn mutate<const B: usize>(
    t: &mut Tree<u32, u32, MaxEnd, B>,
    m: &mut Model,
    op: &Op,
) -> Result<bool, TestCaseError> {
    match *op {
        Op::Insert(k, v) => prop_assert_eq!(t.insert(k, v), m.insert(k, v)),
        Op::Remove(k) => prop_assert_eq!(t.remove(&k), m.remove(&k)),
        Op::Append(gap, v) => {
            let k = m.last_key_value().map_or(0, |(k, _)| k.saturating_add(gap));
            prop_assert_eq!(t.insert(k, v), m.insert(k, v));
        }
        Op::RemoveNth(n) => {
            if let Some(&k) = m.keys().nth(n % m.len().max(1)) {
                prop_assert_eq!(t.remove(&k), m.remove(&k));
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn query<const B: usize>(
    t: &Tree<u32, u32, MaxEnd, B>,
    m: &Model,
    op: &Op,
) -> Result<(), TestCaseError> {
    match *op {
        Op::Get(k) => prop_assert_eq!(t.get(&k), m.get(&k)),
        Op::Floor(k) => prop_assert_eq!(t.floor(&k), m.range(..=k).next_back()),
        Op::Ceil(k) => prop_assert_eq!(t.ceil(&k), m.range(k..).next()),
        Op::Range(lo, hi) => {
            let want: Vec<_> = m.iter().filter(|(k, _)| in_bounds(**k, lo, hi)).collect();
            let got: Vec<_> = t.range((lo, hi)).collect();
            prop_assert_eq!(&got, &want);
            let mut rev: Vec<_> = t.range((lo, hi)).rev().collect();
            rev.reverse();
            prop_assert_eq!(&rev, &want);
            // Alternate ends so the cursors meet in the middle.
            let mut r = t.range((lo, hi));
            let (mut front, mut back) = (Vec::new(), Vec::new());
            loop {
                match (r.next(), r.next_back()) {
                    (Some(a), Some(b)) => {
                        front.push(a);
                        back.push(b);
                    }
                    (Some(a), None) => front.push(a),
                    (None, _) => break,
                }
            }
            prop_assert_eq!(r.next(), None);
            front.extend(back.into_iter().rev());
            prop_assert_eq!(&front, &want);
        }
        Op::Overlap(a, b) => {
            let (a, b) = (u64::from(a), u64::from(b));
            let want: Vec<u32> = m
                .iter()
                .filter(|(&s, &l)| u64::from(s) < b && u64::from(s) + u64::from(l) > a)
                .map(|(k, _)| *k)
                .collect();
            prop_assert_eq!(overlap_query(t, |k| u64::from(*k), a, b).0, want);
        }
        _ => {}
    }
    Ok(())
}

fn check_whole<const B: usize>(
    t: &Tree<u32, u32, MaxEnd, B>,
    m: &Model,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(t.check_invariants(), Ok(()));
    prop_assert_eq!(t.len(), m.len());
    prop_assert_eq!(t.is_empty(), m.is_empty());
    prop_assert_eq!(t.first(), m.first_key_value());
    prop_assert_eq!(t.last(), m.last_key_value());
    let sum = m
        .iter()
        .map(|(k, v)| MaxEnd::of_entry(k, v))
        .reduce(<MaxEnd as Summary<u32, u32>>::combine);
    prop_assert_eq!(t.summary(), sum);
    Ok(())
}

fn run_model<const B: usize>(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut t: Tree<u32, u32, MaxEnd, B> = Tree::new();
    let mut m = Model::new();
    for op in ops {
        if mutate(&mut t, &mut m, op)? {
            check_whole(&t, &m)?;
        } else {
            query(&t, &m, op)?;
        }
    }
    prop_assert!(t.iter().eq(m.iter()));
    prop_assert!(t.iter().rev().eq(m.iter().rev()));
    let mut it = t.iter();
    for remaining in (0..=m.len()).rev() {
        prop_assert_eq!(it.len(), remaining);
        it.next();
    }
    Ok(())
}

/// Keeps every version and branches from old ones; all must stay intact.
fn run_persistence<const B: usize>(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut t: Tree<u32, u32, MaxEnd, B> = Tree::new();
    let mut m = Model::new();
    let mut versions = vec![(t.clone(), m.clone())];
    for op in ops {
        if let Op::Revert(n) = *op {
            (t, m) = versions[n % versions.len()].clone();
        } else if mutate(&mut t, &mut m, op)? {
            prop_assert_eq!(t.check_invariants(), Ok(()));
            versions.push((t.clone(), m.clone()));
        }
    }
    for (t, m) in &versions {
        prop_assert_eq!(t.check_invariants(), Ok(()));
        prop_assert!(t.iter().eq(m.iter()));
    }
    Ok(())
}

/// Remove-heavy mix, to shrink a prefilled tree through internal-node
/// borrows and merges.
fn shrink_op(max: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..max, 1..16u32).prop_map(|(k, l)| Op::Insert(k, l)),
        2 => (0..max).prop_map(Op::Remove),
        5 => any::<usize>().prop_map(Op::RemoveNth),
        1 => op(max),
    ]
}

/// A prefill of inserts (deep trees), then `rest`.
fn grow_then(max: u32, n: usize, rest: Vec<Op>) -> Vec<Op> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ rest.len() as u64;
    let mut ops: Vec<Op> = (0..n)
        .map(|_| {
            let x = xorshift(&mut x);
            Op::Insert((x % u64::from(max)) as u32, (x >> 40) as u32 % 16 + 1)
        })
        .collect();
    ops.extend(rest);
    ops
}

fn persistence_op(max: u32) -> impl Strategy<Value = Op> {
    prop_oneof![10 => op(max), 1 => any::<usize>().prop_map(Op::Revert)]
}

proptest! {
    #![proptest_config(cases(3000, 300))]

    #[test]
    fn model_b4_dense(ops in vec(op(48), 1..400)) {
        run_model::<4>(&ops)?;
    }

    #[test]
    fn model_b4_sparse(ops in vec(op(1 << 30), 1..400)) {
        run_model::<4>(&ops)?;
    }

    #[test]
    fn model_b5_dense(ops in vec(op(64), 1..400)) {
        run_model::<5>(&ops)?;
    }

    #[test]
    fn model_b16_dense(ops in vec(op(300), 1..600)) {
        run_model::<16>(&ops)?;
    }

    #[test]
    fn model_b16_sparse(ops in vec(op(1 << 30), 1..600)) {
        run_model::<16>(&ops)?;
    }
}

proptest! {
    #![proptest_config(cases(600, 50))]

    #[test]
    fn model_b16_grow_shrink(n in 300..1200usize, ops in vec(shrink_op(3000), 1..1500)) {
        run_model::<16>(&grow_then(3000, n, ops))?;
    }

    #[test]
    fn model_b4_grow_shrink(n in 100..600usize, ops in vec(shrink_op(1000), 1..800)) {
        run_model::<4>(&grow_then(1000, n, ops))?;
    }

    #[test]
    fn persistence_b4(ops in vec(persistence_op(64), 1..300)) {
        run_persistence::<4>(&ops)?;
    }

    #[test]
    fn persistence_b16(ops in vec(persistence_op(400), 1..300)) {
        run_persistence::<16>(&ops)?;
    }
}

// ---- interval overlap ----

proptest! {
    #![proptest_config(cases(1500, 150))]

    #[test]
    fn interval_overlap(
        intervals in vec((0u32..200, 1u32..40), 0..300),
        queries in vec((0u32..260, 0u32..260), 1..30),
    ) {
        // Key (start, id): coinciding intervals get distinct keys.
        let t: Tree<(u32, u32), u32, MaxEnd, 4> = intervals
            .iter()
            .enumerate()
            .map(|(id, &(s, l))| ((s, id as u32), s + l))
            .collect();
        prop_assert_eq!(t.check_invariants(), Ok(()));
        for (a, b) in queries {
            let (a, b) = (u64::from(a.min(b)), u64::from(a.max(b)) + 1);
            let mut want: Vec<(u32, u32)> = intervals
                .iter()
                .enumerate()
                .filter(|(_, &(s, l))| u64::from(s) < b && u64::from(s + l) > a)
                .map(|(id, &(s, _))| (s, id as u32))
                .collect();
            want.sort();
            prop_assert_eq!(overlap_query(&t, |k| u64::from(k.0), a, b).0, want);
        }
    }
}

/// Disjoint intervals (memory slots): a query opens O(depth + k / B) nodes.
#[test]
fn interval_query_visits_few_nodes() {
    const P: u32 = 256;
    let n = 32768u32;
    let t: Tree<(u32, u32), u32, MaxEnd> = (0..n).map(|i| ((i * P, i), i * P + P / 2)).collect();
    let depth = t.depth();
    let total = t.node_count();
    for (first, k) in [
        (0u32, 1u32),
        (1000, 1),
        (5000, 10),
        (20000, 100),
        (32767, 1),
    ] {
        let a = u64::from(first * P + 1);
        let b = u64::from((first + k - 1) * P + 2);
        let (hits, visited) = overlap_query(&t, |key| u64::from(key.0), a, b);
        assert_eq!(hits.len(), k as usize);
        let bound = 2 * depth + 2 * (k as usize) / 8 + 2;
        assert!(
            visited <= bound,
            "visited {visited} > {bound} (k {k}, depth {depth})"
        );
        assert!(visited * 50 < total, "visited {visited} of {total}");
    }
}

// ---- diff ----

type DiffRow = (u32, Option<u32>, Option<u32>);

fn diff_rows<const B: usize>(
    a: &Tree<u32, u32, MaxEnd, B>,
    b: &Tree<u32, u32, MaxEnd, B>,
) -> Vec<DiffRow> {
    a.diff(b)
        .map(|d| match d {
            Diff::Add(k, v) => (*k, None, Some(*v)),
            Diff::Remove(k, v) => (*k, Some(*v), None),
            Diff::Update { key, old, new } => (*key, Some(*old), Some(*new)),
        })
        .collect()
}

fn naive_diff(a: &Model, b: &Model) -> Vec<DiffRow> {
    let keys: std::collections::BTreeSet<u32> = a.keys().chain(b.keys()).copied().collect();
    keys.into_iter()
        .map(|k| (k, a.get(&k).copied(), b.get(&k).copied()))
        .filter(|(_, x, y)| x != y)
        .collect()
}

fn run_diff<const B: usize>(base: &[Op], edits: &[Op]) -> Result<(), TestCaseError> {
    let (mut t1, mut m1) = (Tree::<u32, u32, MaxEnd, B>::new(), Model::new());
    for op in base {
        mutate(&mut t1, &mut m1, op)?;
    }
    let (mut t2, mut m2) = (t1.clone(), m1.clone());
    for op in edits {
        mutate(&mut t2, &mut m2, op)?;
    }
    prop_assert_eq!(diff_rows(&t1, &t2), naive_diff(&m1, &m2));
    prop_assert_eq!(diff_rows(&t2, &t1), naive_diff(&m2, &m1));
    let mut same = t1.diff(&t1);
    prop_assert_eq!(same.next(), None);
    prop_assert_eq!(same.nodes_visited(), 0);
    // Equal contents, no shared nodes: empty, the slow way.
    let rebuilt: Tree<u32, u32, MaxEnd, B> = m1.iter().map(|(k, v)| (*k, *v)).collect();
    prop_assert_eq!(diff_rows(&t1, &rebuilt), vec![]);
    prop_assert_eq!(&t1, &rebuilt);
    prop_assert_eq!(t1 == t2, m1 == m2);
    Ok(())
}

proptest! {
    #![proptest_config(cases(1500, 150))]

    #[test]
    fn diff_b4(base in vec(op(200), 0..300), edits in vec(op(200), 0..20)) {
        run_diff::<4>(&base, &edits)?;
    }

    #[test]
    fn diff_b16(base in vec(op(1000), 0..600), edits in vec(op(1000), 0..20)) {
        run_diff::<16>(&base, &edits)?;
    }
}

#[test]
fn diff_skips_shared_subtrees() {
    // Built by insertion so nodes are unevenly filled and edits split/merge.
    let mut v1: Tree<u64, u64> = Tree::new();
    for i in 0..32768u64 {
        v1.insert(i.wrapping_mul(0x9e37_79b9) % (1 << 20) * 2, i);
    }
    let v1_len = v1.len();
    let total = v1.node_count();
    assert!(total > 2000, "{total}");

    let cases: Vec<(Tree<u64, u64>, usize)> = vec![
        (v1.update(12345, 0), 1),
        (v1.update(u64::MAX, 0), 1),
        (v1.update(1, 0).update(3, 0).update(5, 0), 3),
        (v1.without(v1.first().unwrap().0), 1),
        (v1.without(v1.last().unwrap().0), 1),
    ];
    for (v2, k) in cases {
        let mut d = v1.diff(&v2);
        assert_eq!(d.by_ref().count(), k);
        assert!(d.nodes_visited() < 200, "visited {}", d.nodes_visited());
    }

    // An unshared copy with the same contents must be walked in full.
    let copy: Tree<u64, u64> = v1.iter().map(|(k, v)| (*k, *v)).collect();
    let mut d = v1.diff(&copy);
    assert_eq!(d.by_ref().count(), 0);
    assert!(
        d.nodes_visited() >= total,
        "{} < {total}",
        d.nodes_visited()
    );
    assert_eq!(v1.len(), v1_len);
}

#[test]
fn diff_by_compares_arcs_by_pointer() {
    let v1: Tree<u32, Arc<u32>> = (0..100).map(|i| (i, Arc::new(i))).collect();
    let v2 = v1.update(7, Arc::new(7));
    assert_eq!(v1.diff(&v2).count(), 0);
    let d: Vec<_> = v1.diff_by(&v2, Arc::ptr_eq).collect();
    assert!(matches!(d[..], [Diff::Update { key: &7, .. }]));
}

// ---- deterministic ----

/// Xorshift64 (13, 7, 17), as `tests/support/rng.rs` has it for the integration tests (this
/// module is packaged with the crate, that file is not): the next number of `state`.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `1..=n` in a reproducible shuffled order (Fisher-Yates).
fn shuffled(n: u32, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (1..=n).collect();
    let mut x = seed;
    for i in (1..v.len()).rev() {
        v.swap(i, (xorshift(&mut x) % (i as u64 + 1)) as usize);
    }
    v
}

fn fill_and_drain<const B: usize>() {
    let n = 2000;
    let orders = [
        (1..=n).collect::<Vec<u32>>(),
        (1..=n).rev().collect(),
        shuffled(n, 0x2545_f491_4f6c_dd1d),
    ];
    for fill in &orders {
        for drain in &orders {
            if std::ptr::eq(fill, drain) {
                continue;
            }
            let mut t: Tree<u32, u32, MaxEnd, B> = Tree::new();
            for (i, &k) in fill.iter().enumerate() {
                assert_eq!(t.insert(k, k % 7), None);
                t.check_invariants().unwrap();
                assert_eq!(t.len(), i + 1);
            }
            assert!(t.iter().map(|(k, _)| *k).eq(1..=n));
            let snapshot = t.clone();
            for &k in drain {
                assert_eq!(t.remove(&k), Some(k % 7));
                t.check_invariants().unwrap();
            }
            assert!(t.is_empty());
            assert_eq!(t.depth(), 0);
            assert_eq!(snapshot.len(), n as usize);
            snapshot.check_invariants().unwrap();
        }
    }
}

#[test]
fn fill_and_drain_b4() {
    fill_and_drain::<4>();
}

#[test]
fn fill_and_drain_b5() {
    fill_and_drain::<5>();
}

#[test]
fn fill_and_drain_b16() {
    fill_and_drain::<16>();
}

/// Every leaf but the last holds `B` entries and every internal node off the
/// right edge `B - 1` children: what ascending inserts leave behind.
fn assert_edge_packed<K, V, S, const B: usize>(node: &Node<K, V, S, B>, right_edge: bool) {
    match node {
        Node::Leaf(l) => assert!(right_edge || l.keys.len() == B, "leaf of {}", l.keys.len()),
        Node::Internal(n) => {
            assert!(right_edge || n.children.len() == B - 1);
            for (i, c) in n.children.iter().enumerate() {
                assert_edge_packed(c, right_edge && i + 1 == n.children.len());
            }
        }
    }
}

fn ascending_inserts_fill_nodes<const B: usize>(n: u32) -> Tree<u32, u32, MaxEnd, B> {
    let mut t: Tree<u32, u32, MaxEnd, B> = Tree::new();
    let mut kept = Vec::new();
    for k in 0..n {
        t.insert(k, 1);
        if k % 97 == 0 {
            kept.push(t.clone());
        }
    }
    t.check_invariants().unwrap();
    assert_edge_packed(t.root.as_deref().expect("not empty"), true);
    for (i, old) in kept.iter().enumerate() {
        old.check_invariants().unwrap();
        assert!(old.iter().map(|(k, _)| *k).eq(0..=(i as u32 * 97)));
    }
    // Removals from the thin right edge rebalance it like any other node.
    let mut drained = t.clone();
    for k in (0..n).rev().step_by(3) {
        assert_eq!(drained.remove(&k), Some(1));
        drained.check_invariants().unwrap();
    }
    t
}

#[test]
fn ascending_inserts_fill_nodes_b4() {
    ascending_inserts_fill_nodes::<4>(3000);
}

#[test]
fn ascending_inserts_fill_nodes_b5() {
    ascending_inserts_fill_nodes::<5>(3000);
}

#[test]
fn ascending_inserts_fill_nodes_b16() {
    // 32764 slots created in id order: 2048 full leaves under 137 + 10 + 1 internal nodes,
    // four levels, where halves would leave nodes of 9 and five levels.
    let t = ascending_inserts_fill_nodes::<16>(32764);
    assert_eq!((t.depth(), t.node_count()), (4, 2048 + 137 + 10 + 1));
}

#[test]
fn right_edge_may_be_thin_but_not_inner_nodes() {
    // An append to a full right-edge leaf keeps it full and starts a leaf of one.
    let t: Tree<u32, u32, (), 4> = Tree::new().update(0, 0).update(1, 0).update(2, 0);
    let t = t.update(3, 0).update(4, 0);
    assert_eq!((t.depth(), t.node_count()), (2, 3));
    t.check_invariants().unwrap();
    // A key inside the range splits in halves, as before.
    let u = t.update(5, 0).update(6, 0).update(7, 0).update(8, 0);
    u.check_invariants().unwrap();
    let v = Tree::<u32, u32, (), 4>::new()
        .update(10, 0)
        .update(20, 0)
        .update(30, 0)
        .update(40, 0)
        .update(25, 0);
    v.check_invariants().unwrap();
    assert_eq!(v.node_count(), 3);
    let leaves: Vec<usize> = match v.root.as_deref() {
        Some(Node::Internal(n)) => n.children.iter().map(|c| c.len()).collect(),
        _ => unreachable!("two levels"),
    };
    assert_eq!(leaves, [3, 2]);
}

#[test]
fn from_iter_packs_and_keeps_last_duplicate() {
    fn go<const B: usize>() {
        for n in 0..=300u32 {
            let t: Tree<u32, u32, (), B> = (0..n).chain(0..n / 2).map(|k| (k, k)).rev().collect();
            t.check_invariants().unwrap();
            assert!(t.iter().map(|(k, _)| *k).eq(0..n));
            // `rev` puts the second copy of each duplicated key first: the first
            // copy (value k) comes last and wins.
            assert!(t.iter().all(|(k, v)| k == v));
        }
        let t: Tree<u32, u32, (), B> = [(1, 1), (1, 2), (1, 3)].into_iter().collect();
        assert_eq!(t.get(&1), Some(&3));
    }
    go::<4>();
    go::<5>();
    go::<16>();
    go::<32>();
}

#[test]
fn miss_copies_nothing() {
    let a: Tree<u32, u32> = (0..1000).map(|i| (i * 2, i)).collect();
    let mut b = a.clone();
    assert_eq!(b.remove(&1), None);
    assert!(a.ptr_eq(&b));
    let c = a.without(&3);
    assert!(a.ptr_eq(&c));
}

#[test]
fn edits_leave_clones_alone() {
    let mut t: Tree<u32, u32, (), 4> = (0..100).map(|i| (i, i)).collect();
    let before = t.clone();
    for i in 0..100 {
        t.insert(i, i + 1);
        t.remove(&(i / 2));
    }
    t.check_invariants().unwrap();
    before.check_invariants().unwrap();
    assert!(before
        .iter()
        .map(|(k, v)| (*k, *v))
        .eq((0..100).map(|i| (i, i))));
}

#[test]
fn debug_eq_default_and_send_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tree<u64, Arc<String>>>();
    send_sync::<Tree<(u32, u32), u32, MaxEnd, 4>>();
    send_sync::<Iter<'static, u64, Arc<String>, (), 16>>();

    let t: Tree<u32, char> = [(2, 'b'), (1, 'a')].into_iter().collect();
    assert_eq!(format!("{t:?}"), "{1: 'a', 2: 'b'}");
    assert_eq!(Tree::<u32, char>::default(), Tree::new());
    assert_ne!(t, Tree::new());
    let mut e = Tree::<u32, char>::new();
    e.extend([(1, 'a'), (2, 'b')]);
    assert_eq!(e, t);
    assert_eq!((&t).into_iter().count(), 2);
}

#[test]
fn summary_needs_only_copy() {
    /// Entries in a subtree: `Copy`, and neither `Debug`, `PartialEq`,
    /// `Send`, `Sync` nor `'static`.
    #[derive(Clone, Copy)]
    struct Count<'a>(usize, std::marker::PhantomData<&'a std::cell::Cell<()>>);
    impl Summary<u32, u32> for Count<'_> {
        fn of_entry(_: &u32, _: &u32) -> Self {
            Count(1, std::marker::PhantomData)
        }
        fn combine(self, other: Self) -> Self {
            Count(self.0 + other.0, std::marker::PhantomData)
        }
    }

    let mut t: Tree<u32, u32, Count<'_>, 4> = (0..50).map(|i| (i, i)).collect();
    t.insert(50, 50);
    assert_eq!(t.remove(&0), Some(0));
    assert_eq!(t.summary().map(|c| c.0), Some(50));
    let entered = t.search(|_, c: &Count<'_>| match c.0 {
        0 => Visit::Skip,
        _ => Visit::Enter,
    });
    assert_eq!(entered.count(), 50);
    assert_eq!(t.floor(&100), Some((&50, &50)));
    // `Debug` for the tree does not ask it of the summary.
    assert!(format!("{t:?}").starts_with("{1: 1, 2: 2, "));
}

#[test]
fn empty_tree_queries() {
    let t: Tree<u32, u32> = Tree::new();
    assert_eq!(t.get(&0), None);
    assert_eq!(t.floor(&0), None);
    assert_eq!(t.ceil(&0), None);
    assert_eq!(t.first(), None);
    assert_eq!(t.summary(), None);
    assert_eq!(t.iter().next(), None);
    assert_eq!(t.iter().next_back(), None);
    assert_eq!(t.range(..).next(), None);
    assert_eq!(t.search(|_, _| Visit::Enter).next(), None);
    assert_eq!(t.node_count(), 0);
    assert_eq!(t.check_invariants(), Ok(()));
    // Inverted and empty ranges on a non-empty tree.
    let t: Tree<u32, u32> = (0..100).map(|i| (i, i)).collect();
    assert_eq!(t.range(50..50).count(), 0);
    assert_eq!(
        t.range((Bound::Excluded(50), Bound::Excluded(51))).count(),
        0
    );
    assert_eq!(
        t.range((Bound::Included(60), Bound::Included(40))).count(),
        0
    );
    assert_eq!(t.range(200..).count(), 0);
}

#[test]
fn violations_display() {
    let v = Violation::Underfull {
        depth: 2,
        len: 1,
        min: 8,
    };
    assert_eq!(v.to_string(), "node at depth 2 holds 1, fewer than 8");
    let v = Violation::WrongLen {
        cached: 3,
        actual: 2,
    };
    assert_eq!(v.to_string(), "len is 3 but the tree holds 2 entries");
}

#[test]
fn checker_catches_corruption() {
    let mut t: Tree<u32, u32, MaxEnd, 4> = (0..50).map(|i| (i, 1)).collect();
    t.len += 1;
    assert_eq!(
        t.check_invariants(),
        Err(Violation::WrongLen {
            cached: 51,
            actual: 50
        })
    );
    t.len -= 1;
    if let Some(Node::Internal(n)) = t.root.as_mut().map(Arc::make_mut) {
        n.sums[1] = MaxEnd(0);
    }
    assert_eq!(
        t.check_invariants(),
        Err(Violation::StaleSummary { depth: 0, index: 1 })
    );
    let mut t: Tree<u32, u32, MaxEnd, 4> = (0..50).map(|i| (i, 1)).collect();
    if let Some(Node::Internal(n)) = t.root.as_mut().map(Arc::make_mut) {
        n.keys[1] += 1;
    }
    assert_eq!(
        t.check_invariants(),
        Err(Violation::StaleKey { depth: 0, index: 1 })
    );
}
