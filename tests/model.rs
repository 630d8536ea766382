//! Differential tests: generated request runs applied to the trees and to the array baseline
//! must give the same result, the same layout and the same answers to every query after every
//! step, and the trees' invariants must hold throughout; the same runs cut into transactions
//! must give the same per-request results and final layout as the baseline one request at a
//! time. The generator is `support/requests.rs` and the checks `support/differential.rs`, shared
//! with the fuzz target.
//!
//! The baseline shares the validation code (`src/change.rs`) and the publication protocol with
//! the trees: these tests check storage, copying, publication and queries, not the kernel's
//! rules, which `tests/semantics.rs` and `src/change.rs`'s unit tests check.
//!
//! Shapes: runs of [`Scale::Many`] hold a couple of hundred slots in one address space, so the
//! set's trees have three levels (five and more when built with `--cfg memslots_small_nodes`,
//! node width 4, as `.ci/run` does), and their deletes merge nodes; with 4-wide nodes the few
//! slots of a [`Scale::Few`] run already split into two levels and merge back.
//! [`generated_runs_reach_deep_trees_and_shrink_them`] shows it.

#[path = "support/differential.rs"]
#[allow(dead_code)] // each includer uses its own part
mod differential;

use differential::requests::{self, Run, Scale, Step, STEP_BYTES};
use memslots::tree::{Tree, DEFAULT_B};
use memslots::{ChangeKind, Limits, Memslots, UserspaceMemoryRegion};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

/// Runs of `scale` decoded from proptest's bytes, one chunk per step so that a failing run
/// shrinks by dropping steps; `steps` does not count the prefill.
fn runs(many: bool, steps: std::ops::Range<usize>) -> impl Strategy<Value = Run> {
    let header = any::<[u8; 2]>()
        .prop_map(move |[s, prefill]| [if many { s | 0x80 } else { s & 0x7f }, prefill]);
    let chunks = vec(vec(any::<u8>(), STEP_BYTES), steps);
    (header, chunks).prop_map(|(header, chunks)| requests::decode_chunks(header, &chunks))
}

fn cases(debug: u32, release: u32) -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(debug_assertions) {
            debug
        } else {
            release
        },
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(256, 4096))]

    #[test]
    fn trees_match_the_array_design(run in runs(false, 1..120)) {
        differential::one_by_one(&run);
    }

    #[test]
    fn transactions_match_the_array_design_one_request_at_a_time(run in runs(false, 1..120)) {
        differential::in_transactions(&run);
    }
}

proptest! {
    #![proptest_config(cases(8, 64))]

    #[test]
    fn trees_of_hundreds_of_slots_match_the_array_design(run in runs(true, 1..80)) {
        differential::one_by_one(&run);
    }

    #[test]
    fn transactions_on_hundreds_of_slots_match_the_array_design(run in runs(true, 1..200)) {
        differential::in_transactions(&run);
    }
}

#[test]
fn cases_proptest_once_shrank_to() {
    // A delete with a host address on an empty VM (refused by neither, published by neither).
    let steps = vec![Step::Raw(UserspaceMemoryRegion {
        userspace_addr: 1 << 20,
        ..UserspaceMemoryRegion::delete(0)
    })];
    let run = Run {
        limits: Limits::default(),
        scale: Scale::Few,
        steps,
    };
    differential::one_by_one(&run);
    differential::in_transactions(&run);
}

/// `n` runs drawn from `runs` with a fixed seed.
fn sample(strategy: impl Strategy<Value = Run>, n: usize) -> Vec<Run> {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("a run").current())
        .collect()
}

/// Applies a run's requests one by one (no checks), calling `seen` with each result.
fn replay_run(
    run: &Run,
    mut seen: impl FnMut(&UserspaceMemoryRegion, &Result<ChangeKind, memslots::Error>),
) {
    let vm = Memslots::new(run.limits);
    let page = run.limits.page_size();
    for step in &run.steps {
        if let Some(req) = requests::request(&vm.layout().regions, page, step) {
            seen(&req, &vm.set_user_memory_region(req));
        }
    }
}

#[test]
fn every_change_kind_appears_in_generated_runs() {
    // Guards the generator: a model test that never moves a slot would prove little.
    let mut seen = std::collections::HashSet::new();
    for run in sample(runs(false, 100..101), 20) {
        replay_run(&run, |_, result| {
            seen.insert(match result {
                Ok(kind) => format!("{kind:?}"),
                Err(e) => format!("errno {}", e.errno()),
            });
        });
    }
    for want in [
        "Create",
        "Delete",
        "Move",
        "FlagsOnly",
        "Unchanged",
        "errno 22",
        "errno 17",
    ] {
        assert!(seen.contains(want), "{want} never happened: {seen:?}");
    }
}

/// What a set of runs did to the shape of the set's trees.
#[derive(Debug, Default)]
struct Shapes {
    runs: usize,
    /// Runs whose trees reached three levels or more.
    deep_runs: usize,
    deepest: usize,
    most_slots: usize,
    /// Accepted changes made to a tree of three levels or more.
    changes_at_depth_3: usize,
    /// Deletes that left a tree with fewer nodes, not empty: merges.
    merging_deletes: usize,
    /// Deletes that left a tree with fewer levels, not empty.
    shrinking_deletes: usize,
}

/// The shapes a run's id trees go through. The set's id tree gets an insert for every created
/// slot and a remove for every deleted one (moves and flag changes replace a value under its
/// key); a [`Tree`] of the same width given the same inserts and removes has the same shape,
/// so this measures the set's trees without opening them.
fn shapes(runs: &[Run]) -> Shapes {
    let mut out = Shapes::default();
    for run in runs {
        let mut shadows = vec![Tree::<u16, ()>::new(); usize::from(run.limits.address_spaces())];
        let mut deepest = 0;
        replay_run(run, |req, result| {
            let Ok(kind) = result else { return };
            let slot = req.slot_id();
            let tree = &mut shadows[usize::from(slot.as_id)];
            let (depth, nodes) = (tree.depth(), tree.node_count());
            if depth >= 3 && *kind != ChangeKind::Unchanged {
                out.changes_at_depth_3 += 1;
            }
            match kind {
                ChangeKind::Create => {
                    tree.insert(slot.id, ());
                }
                ChangeKind::Delete => {
                    tree.remove(&slot.id);
                    if !tree.is_empty() {
                        out.merging_deletes += usize::from(tree.node_count() < nodes);
                        out.shrinking_deletes += usize::from(tree.depth() < depth);
                    }
                }
                _ => {}
            }
            deepest = deepest.max(tree.depth());
            out.most_slots = out.most_slots.max(tree.len());
        });
        out.runs += 1;
        out.deep_runs += usize::from(deepest >= 3);
        out.deepest = out.deepest.max(deepest);
    }
    out
}

#[test]
fn generated_runs_reach_deep_trees_and_shrink_them() {
    // Guards the generator's reach: with one-leaf trees the differential checks would never see
    // a split, a merge or a search through internal nodes.
    let many = shapes(&sample(runs(true, 200..201), 6));
    let few = shapes(&sample(runs(false, 120..121), 60));
    eprintln!("node width {DEFAULT_B}\n  hundreds of slots: {many:?}\n  up to 16 ids: {few:?}");
    // A tree of d levels holds at most B^d entries, so this many slots need three levels.
    assert!(many.most_slots > DEFAULT_B * DEFAULT_B, "{many:?}");
    // Runs with small slot limits stay shallow; the others all go deep.
    assert!(many.deep_runs * 2 > many.runs, "{many:?}");
    assert!(many.changes_at_depth_3 > 100, "{many:?}");
    assert!(many.merging_deletes >= 5, "{many:?}");
    if DEFAULT_B == 4 {
        assert!(many.deepest >= 5, "{many:?}");
        assert!(few.deepest >= 2, "{few:?}");
        assert!(
            few.merging_deletes > 0 && few.shrinking_deletes > 0,
            "{few:?}"
        );
    }
}

#[test]
fn generated_transactions_mix_changes_refusals_and_invalidations() {
    // Guards the transaction check: batches of one change, or without a delete or move of a
    // published slot, would leave most of `Transaction::commit` unchecked.
    let (mut batches, mut several, mut refused, mut invalidating) = (0, 0, 0, 0);
    for run in sample(runs(false, 120..121), 40) {
        let vm = Memslots::new(run.limits);
        let page = run.limits.page_size();
        for batch in run.steps.split(|s| matches!(s, Step::Anchor)) {
            let published = vm.layout();
            let (mut accepted, mut errors, mut invalidates) = (0, 0, false);
            for step in batch {
                let req = requests::request(&vm.layout().regions, page, step).expect("a request");
                match vm.set_user_memory_region(req) {
                    Ok(ChangeKind::Unchanged) => {}
                    Ok(kind) => {
                        accepted += 1;
                        invalidates |= matches!(kind, ChangeKind::Delete | ChangeKind::Move)
                            && published.regions.iter().any(|r| r.slot == req.slot);
                    }
                    Err(_) => errors += 1,
                }
            }
            batches += 1;
            several += usize::from(accepted >= 2);
            refused += usize::from(accepted >= 1 && errors >= 1);
            invalidating += usize::from(invalidates);
        }
    }
    eprintln!(
        "{batches} batches: {several} with several changes, {refused} with a refusal among \
         changes, {invalidating} deleting or moving a published slot"
    );
    assert!(several * 4 > batches && refused * 4 > batches && invalidating * 4 > batches);
}
