//! Differential tests: random request sequences applied to the trees and to the array baseline
//! must give the same result and the same visible layout after every step, and the trees'
//! invariants must hold throughout.

use memslots::baseline::ArrayMemslots;
use memslots::{
    ChangeKind, Error, Gfn, Hva, Limits, MemFlags, Memslot, MemslotRead, Memslots,
    UserspaceMemoryRegion,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const PAGE: u64 = 4096;

/// One step of a run. The `*Existing` steps pick a slot that exists (by index into the current
/// layout) so that moves and flag changes, which need the slot's own hva and size, are common.
#[derive(Clone, Debug)]
enum Op {
    Raw(UserspaceMemoryRegion),
    MoveExisting {
        pick: usize,
        gpa_page: u64,
        flags: u32,
    },
    ReflagExisting {
        pick: usize,
        flags: u32,
    },
    DeleteExisting {
        pick: usize,
    },
}

fn slot_field() -> impl Strategy<Value = u32> {
    let id = prop_oneof![
        8 => 0u32..6,
        1 => 32760u32..32768,
        1 => Just(0xffff),
    ];
    let as_id = prop_oneof![6 => Just(0u32), 3 => Just(1u32), 1 => 2u32..4];
    (as_id, id).prop_map(|(a, i)| (a << 16) | i)
}

fn flags() -> impl Strategy<Value = u32> {
    prop_oneof![
        12 => 0u32..4,
        1 => Just(4u32),
        1 => Just(MemFlags::INVALID.bits()),
    ]
}

fn aligned(pages: std::ops::Range<u64>) -> impl Strategy<Value = u64> {
    prop_oneof![
        20 => pages.prop_map(|p| p * PAGE),
        1 => any::<u64>(),
        1 => 1u64..PAGE,
        1 => Just(!(PAGE - 1)),
    ]
}

fn region() -> impl Strategy<Value = UserspaceMemoryRegion> {
    let size = prop_oneof![
        3 => Just(0u64),
        20 => (1u64..12).prop_map(|p| p * PAGE),
        1 => Just(PAGE << 31),
        1 => 1u64..PAGE,
    ];
    (
        slot_field(),
        flags(),
        aligned(0..48),
        size,
        aligned(0x100..0x110),
    )
        .prop_map(|(slot, flags, gpa, size, hva)| UserspaceMemoryRegion {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: hva,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => region().prop_map(Op::Raw),
        3 => (any::<usize>(), 0u64..48, flags())
            .prop_map(|(pick, gpa_page, flags)| Op::MoveExisting { pick, gpa_page, flags }),
        2 => (any::<usize>(), flags()).prop_map(|(pick, flags)| Op::ReflagExisting { pick, flags }),
        1 => any::<usize>().prop_map(|pick| Op::DeleteExisting { pick }),
    ]
}

/// Turns a step into a request, reading the current layout for the `*Existing` steps.
fn resolve(vm: &Memslots, op: &Op) -> UserspaceMemoryRegion {
    let existing = |pick: usize| -> Option<Memslot> {
        let all: Vec<Memslot> = (0..2)
            .flat_map(|a| vm.snapshot(a).iter().cloned().collect::<Vec<_>>())
            .collect();
        (!all.is_empty()).then(|| all[pick % all.len()].clone())
    };
    let as_request = |s: &Memslot, gpa: u64, flags: u32| UserspaceMemoryRegion {
        slot: u32::from(s.slot_id()),
        flags,
        guest_phys_addr: gpa,
        memory_size: s.npages() * PAGE,
        userspace_addr: s.userspace_addr().0,
    };
    match *op {
        Op::Raw(r) => r,
        Op::MoveExisting {
            pick,
            gpa_page,
            flags,
        } => existing(pick).map_or(UserspaceMemoryRegion::delete(0), |s| {
            let ro = s.flags().bits() & MemFlags::READONLY.bits();
            as_request(&s, gpa_page * PAGE, (flags & !2) | ro)
        }),
        Op::ReflagExisting { pick, flags } => existing(pick)
            .map_or(UserspaceMemoryRegion::delete(0), |s| {
                as_request(&s, s.base_gfn().0 * PAGE, flags)
            }),
        Op::DeleteExisting { pick } => existing(pick)
            .map_or(UserspaceMemoryRegion::delete(0), |s| {
                UserspaceMemoryRegion::delete(u32::from(s.slot_id()))
            }),
    }
}

/// The same layout, generation and answers from both versions of one address space.
fn assert_same<A, B>(tree: &A, array: &B, probes: &[u64])
where
    A: MemslotRead<Backing = ()>,
    B: MemslotRead<Backing = ()>,
{
    assert_eq!(tree.generation(), array.generation());
    assert_eq!(tree.len(), array.len());
    assert_eq!(tree.total_pages(), array.total_pages());
    assert!(tree.iter().eq(array.iter()), "layouts differ");
    for &p in probes {
        let g = Gfn(p);
        assert_eq!(tree.find(g), array.find(g), "find({p:#x})");
        assert_eq!(
            tree.find_approx(g),
            array.find_approx(g),
            "find_approx({p:#x})"
        );
        assert!(
            tree.gfn_range(g, Gfn(p.saturating_add(5)))
                .eq(array.gfn_range(g, Gfn(p.saturating_add(5)))),
            "gfn_range({p:#x})"
        );
        let hva = Hva(0x100 * PAGE + (p % 24) * PAGE / 2);
        let end = Hva(hva.0 + (p % 5) * PAGE);
        let in_tree_order: Vec<_> = tree.hva_range(hva, end).map(|(s, r)| (s.id(), r)).collect();
        let key = |id: u16| (tree.get(id).unwrap().userspace_addr(), id);
        assert!(
            in_tree_order.windows(2).all(|w| key(w[0].0) < key(w[1].0)),
            "tree hva_range out of order"
        );
        let mut a = in_tree_order;
        let mut b: Vec<_> = array
            .hva_range(hva, end)
            .map(|(s, r)| (s.id(), r))
            .collect();
        a.sort_by_key(|(id, _)| *id);
        b.sort_by_key(|(id, _)| *id);
        assert_eq!(a, b, "hva_range({hva:?}, {end:?})");
    }
    for id in (0..8).chain(32760..32768) {
        assert_eq!(tree.get(id), array.get(id));
    }
}

fn run(ops: &[Op]) {
    let limits = Limits::default();
    let tree = Memslots::new(limits);
    let array = ArrayMemslots::new(limits);
    let probes: Vec<u64> = (0..64).chain([u64::MAX, 1 << 52]).collect();
    for op in ops {
        let req = resolve(&tree, op);
        let before: Vec<_> = (0..2).map(|a| tree.snapshot(a)).collect();
        let got: Result<ChangeKind, Error> = tree.set_user_memory_region(req);
        let want = array.set_user_memory_region(req);
        assert_eq!(got, want, "request {req:?}");
        if got.is_err() || got == Ok(ChangeKind::Unchanged) {
            for (a, snap) in before.iter().enumerate() {
                assert!(
                    snap.ptr_eq(&tree.snapshot(a as u16)),
                    "a refused or no-op request published a version"
                );
            }
        }
        for a in 0..2 {
            let t = tree.snapshot(a);
            t.check_invariants().unwrap();
            assert_same(&*t, &*array.snapshot(a), &probes);
        }
        let pages: u64 = (0..2).map(|a| tree.snapshot(a).total_pages()).sum();
        assert_eq!(tree.total_pages(), pages);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(debug_assertions) { 256 } else { 4096 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn trees_match_the_array_design(ops in prop::collection::vec(op(), 1..120)) {
        run(&ops);
    }
}

#[test]
fn every_change_kind_appears_in_generated_runs() {
    // Guards the generator: a model test that never moves a slot would prove little.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let ops = prop::collection::vec(op(), 100)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let vm = Memslots::new(Limits::default());
        for op in &ops {
            match vm.set_user_memory_region(resolve(&vm, op)) {
                Ok(kind) => seen.insert(format!("{kind:?}")),
                Err(e) => seen.insert(format!("errno {}", e.errno())),
            };
        }
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
