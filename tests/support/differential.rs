//! The differential checks: a generated run (see `requests.rs`) applied to [`Memslots`] and to
//! the array baseline, compared after every step. One piece of code for `tests/model.rs`,
//! `tests/fuzz_decoder.rs` and the `requests` fuzz target, which include this file by path.
//!
//! [`one_by_one`] applies each request to both designs and panics unless: both give the same
//! result; a refused or no-op request publishes nothing; every version passes
//! `check_invariants`; both answer every query alike (lookups, approximate lookups, gfn and hva
//! ranges, ids) and list the same layout, and rebuilding a VM from it gives it back; the diff
//! from the previous version (and from an older kept one) is exactly what changed, and the
//! layouts' diff says the same; and a listener driven by [`replay`] follows along without ever
//! holding two overlapping slots.
//!
//! [`in_transactions`] applies the requests between two anchors as one [`Transaction`] on the
//! trees and one by one on the baseline, and panics unless: each request gets the same result;
//! nothing is published before the commit, nor by a transaction dropped instead; after it, both
//! designs list the same layout and answer alike, and each address space's generation has
//! stepped as `Transaction::commit` documents.
//!
//! What this shows, and what not: the baseline runs the same validation code (`src/change.rs`)
//! and the same publication protocol as the trees, so agreeing with it checks how versions are
//! stored, copied, published and queried, not whether the rules are the kernel's. The rules
//! themselves are checked against the kernel's, case by case, in `tests/semantics.rs` and the
//! unit tests of `src/change.rs`.

use std::collections::BTreeMap;

use memslots::baseline::ArrayMemslots;
use memslots::{
    replay, ChangeKind, Diff, Gfn, Hva, Layout, Memslot, MemslotRead, MemslotSet, Memslots,
    Snapshot, Transaction, UserspaceMemoryRegion,
};

#[path = "mirror.rs"]
pub(crate) mod mirror;
#[path = "requests.rs"]
pub(crate) mod requests;

use mirror::Mirror;
use requests::{Run, Step};

/// Decodes `data` and checks its run both ways. Panics on any disagreement.
pub(crate) fn run(data: &[u8]) {
    let run = requests::decode(data);
    one_by_one(&run);
    in_transactions(&run);
}

/// Every address space's current version.
fn current(vm: &Memslots) -> Vec<Snapshot> {
    (0..vm.limits().address_spaces())
        .map(|a| vm.snapshot(a))
        .collect()
}

/// Runs the steps one request at a time; see the module docs.
pub(crate) fn one_by_one(run: &Run) {
    let limits = run.limits;
    let page = limits.page_size();
    let tree = Memslots::new(limits);
    let array = ArrayMemslots::new(limits);
    let mut anchor = current(&tree);
    let mut anchor_layout = tree.layout();
    let mut layout = tree.layout();
    let mut mirrors: Vec<Mirror> = anchor.iter().map(|s| Mirror::of(s)).collect();
    for step in &run.steps {
        let Some(req) = requests::request(&layout.regions, page, step) else {
            anchor = current(&tree);
            anchor_layout = layout.clone();
            continue;
        };
        let before = current(&tree);
        let got = tree.set_user_memory_region(req);
        assert_eq!(got, array.set_user_memory_region(req), "request {req:?}");
        let now = current(&tree);
        let target = req.slot_id().as_id;
        for (a, (old, new)) in before.iter().zip(&now).enumerate() {
            new.check_invariants().expect("tree invariants");
            let kept = array.snapshot(a as u16);
            assert_eq!(new.generation(), kept.generation(), "generation");
            same_answers(&**new, &*kept, page);
            let mut changes = old.diff(new);
            let listed: Vec<Diff<'_>> = changes.by_ref().collect();
            assert_eq!(listed, naive_diff(old, new), "diff of address space {a}");
            let touched = matches!(got, Ok(kind) if kind != ChangeKind::Unchanged)
                && a == usize::from(target);
            if !touched {
                assert!(old.ptr_eq(new), "a version was published for nothing");
                assert_eq!(changes.nodes_visited(), 0, "a diff with itself walked");
                continue;
            }
            let one = match (&got, &listed[..]) {
                (Ok(ChangeKind::Create), [Diff::Added(s)]) => s.slot_id() == req.slot_id(),
                (Ok(ChangeKind::Delete), [Diff::Removed(s)]) => s.slot_id() == req.slot_id(),
                (Ok(ChangeKind::Move | ChangeKind::FlagsOnly), [Diff::Changed { old, new }]) => {
                    old.slot_id() == req.slot_id() && new.slot_id() == req.slot_id()
                }
                _ => false,
            };
            assert!(one, "{got:?} for {req:?} but the diff is {listed:?}");
            replay(old, new, &mut mirrors[a]);
            mirrors[a].assert_holds(new);
        }
        // From the anchor, many steps back, in one replay; and the whole VM's layout diff is the
        // address spaces' diffs one after the other.
        let mut per_space = Vec::new();
        for (old, new) in anchor.iter().zip(&now) {
            let mut mirror = Mirror::of(old);
            replay(old, new, &mut mirror);
            mirror.assert_holds(new);
            per_space.extend(old.diff(new).map(|d| {
                (
                    d.before().map(UserspaceMemoryRegion::from),
                    d.after().map(UserspaceMemoryRegion::from),
                )
            }));
        }
        layout = tree.layout();
        let whole: Vec<_> = anchor_layout
            .diff(&layout)
            .iter()
            .map(|d| (d.before().copied(), d.after().copied()))
            .collect();
        assert_eq!(whole, per_space, "layout diff");
        assert_eq!(layout, array_layout(&array), "layouts differ");
        let rebuilt = Memslots::from_layout(limits, &layout).expect("a VM's own layout loads");
        assert_eq!(rebuilt.layout(), layout);
        assert_eq!(rebuilt.total_pages(), tree.total_pages());
        let pages: u64 = now.iter().map(|s| s.total_pages()).sum();
        assert_eq!(tree.total_pages(), pages);
    }
}

/// Runs the steps between anchors as transactions; see the module docs.
pub(crate) fn in_transactions(run: &Run) {
    let limits = run.limits;
    let page = limits.page_size();
    let spaces = limits.address_spaces();
    let tree = Memslots::new(limits);
    let array = ArrayMemslots::new(limits);
    let batches = run.steps.split(|s| matches!(s, Step::Anchor));
    for (n, batch) in batches.filter(|b| !b.is_empty()).enumerate() {
        // The baseline one request at a time, each made against its layout of the moment: the
        // state the transaction validates the same request against.
        let done: Vec<_> = batch
            .iter()
            .map(|step| {
                let regions = array_layout(&array).regions;
                let req = requests::request(&regions, page, step).expect("not an anchor");
                (req, array.set_user_memory_region(req))
            })
            .collect();
        let before = current(&tree);
        let nothing_published = |tree: &Memslots| {
            for (old, new) in before.iter().zip(current(tree)) {
                assert!(old.ptr_eq(&new), "published before its commit");
            }
        };
        let apply = |tx: &mut Transaction<'_>| {
            for (req, want) in &done {
                assert_eq!(
                    &tx.set_user_memory_region(*req),
                    want,
                    "in a transaction: {req:?}"
                );
            }
            let accepted = done.iter().filter(|(_, r)| changed(r)).count();
            assert_eq!(tx.len(), accepted);
        };
        if n % 3 == 2 {
            let mut dropped = tree.transaction();
            apply(&mut dropped);
            drop(dropped);
            nothing_published(&tree);
        }
        let mut tx = tree.transaction();
        apply(&mut tx);
        nothing_published(&tree);
        tx.commit().expect("no hook to refuse");

        let now = current(&tree);
        for (a, (old, new)) in (0..spaces).zip(before.iter().zip(&now)) {
            let in_space = done.iter().filter(|(req, _)| req.slot_id().as_id == a);
            let changes = in_space.clone().filter(|(_, r)| changed(r)).count();
            // A deleted or moved slot that readers could see is first published INVALID: one
            // more publication.
            let invalidated = in_space.clone().any(|(req, r)| {
                matches!(r, Ok(ChangeKind::Delete | ChangeKind::Move))
                    && old.get(req.slot_id().id).is_some()
            });
            let publications = u64::from(changes > 0) + u64::from(invalidated);
            assert_eq!(
                new.generation(),
                old.generation() + publications * u64::from(spaces),
                "generation of address space {a}"
            );
            if changes == 0 {
                assert!(old.ptr_eq(new), "address space {a} published for nothing");
            }
            new.check_invariants().expect("tree invariants");
            same_answers(&**new, &*array.snapshot(a), page);
        }
        assert_eq!(tree.layout(), array_layout(&array), "layouts differ");
        let pages: u64 = now.iter().map(|s| s.total_pages()).sum();
        assert_eq!(tree.total_pages(), pages);
    }
}

/// Whether a request's result is an accepted change.
fn changed(result: &Result<ChangeKind, memslots::Error>) -> bool {
    matches!(result, Ok(kind) if *kind != ChangeKind::Unchanged)
}

/// Both versions of one address space list the same slots and answer every query alike, at
/// probes around (a sample of) the slots and at fixed ones. Generations are the caller's to
/// compare: they differ when one design published a batch as one version.
pub(crate) fn same_answers<A, B>(tree: &A, array: &B, page: u64)
where
    A: MemslotRead<Backing = ()>,
    B: MemslotRead<Backing = ()>,
{
    assert_eq!(tree.len(), array.len());
    assert_eq!(tree.total_pages(), array.total_pages());
    assert!(tree.iter().eq(array.iter()), "layouts differ");
    let sample: Vec<&Memslot> = tree.iter().step_by(tree.len() / 12 + 1).collect();
    let gfns = sample
        .iter()
        .flat_map(|s| {
            let (base, end) = (s.base_gfn().0, s.end_gfn().0);
            [base.saturating_sub(1), base, end - 1, end]
        })
        .chain(0..64)
        .chain([u64::MAX, 1 << 52]);
    for p in gfns {
        let g = Gfn(p);
        assert_eq!(tree.find(g), array.find(g), "find({p:#x})");
        let approx = (tree.find_approx(g), array.find_approx(g));
        assert_eq!(approx.0, approx.1, "find_approx({p:#x})");
        let end = Gfn(p.saturating_add(5));
        assert!(
            tree.gfn_range(g, end).eq(array.gfn_range(g, end)),
            "gfn_range({p:#x})"
        );
    }
    let hvas = sample
        .iter()
        .flat_map(|s| {
            let (start, end) = (s.userspace_addr().0, s.end_hva().0);
            [
                (start.saturating_sub(page / 2), start + page / 2),
                (end - 1, end + page),
            ]
        })
        .chain((0..12).map(|p| {
            let start = requests::HVA_BASE_PAGE * page + p * page / 2;
            (start, start + (p % 5) * page)
        }))
        .chain([(0, u64::MAX)]);
    for (start, end) in hvas {
        let (start, end) = (Hva(start), Hva(end));
        let in_tree_order: Vec<_> = tree
            .hva_range(start, end)
            .map(|(s, r)| (s.id(), r))
            .collect();
        let key = |id: u16| (tree.get(id).expect("listed").userspace_addr(), id);
        assert!(
            in_tree_order.windows(2).all(|w| key(w[0].0) < key(w[1].0)),
            "tree hva_range out of order"
        );
        let mut a = in_tree_order;
        let mut b: Vec<_> = array
            .hva_range(start, end)
            .map(|(s, r)| (s.id(), r))
            .collect();
        a.sort_by_key(|(id, _)| *id);
        b.sort_by_key(|(id, _)| *id);
        assert_eq!(a, b, "hva_range({start:?}, {end:?})");
    }
    let ids = sample
        .iter()
        .flat_map(|s| [s.id().saturating_sub(1), s.id(), s.id().saturating_add(1)]);
    for id in ids.chain(0..8).chain(32760..32768) {
        assert_eq!(tree.get(id), array.get(id), "get({id})");
    }
}

/// The diff worked out the slow way, from two full listings.
fn naive_diff<'a>(old: &'a MemslotSet, new: &'a MemslotSet) -> Vec<Diff<'a>> {
    let by_id = |s: &'a MemslotSet| -> BTreeMap<u16, &'a Memslot> {
        s.iter().map(|slot| (slot.id(), slot)).collect()
    };
    let (old, new) = (by_id(old), by_id(new));
    let mut ids: Vec<u16> = old.keys().chain(new.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| match (old.get(&id), new.get(&id)) {
            (Some(&o), Some(&n)) if o == n => None,
            (Some(&o), Some(&n)) => Some(Diff::Changed { old: o, new: n }),
            (Some(&o), None) => Some(Diff::Removed(o)),
            (None, Some(&n)) => Some(Diff::Added(n)),
            (None, None) => None,
        })
        .collect()
}

/// The layout of the array baseline, listed as [`Memslots::layout`] lists it.
pub(crate) fn array_layout(vm: &ArrayMemslots) -> Layout {
    let spaces = vm.limits().address_spaces();
    Layout {
        regions: (0..spaces)
            .flat_map(|a| {
                vm.snapshot(a)
                    .iter()
                    .map(UserspaceMemoryRegion::from)
                    .collect::<Vec<_>>()
            })
            .collect(),
    }
}
