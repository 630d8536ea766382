//! The read side allocates nothing, and edits copy only what they must: counted with
//! `stats_alloc`'s instrumented system allocator. One test function, because the counts are
//! process-wide and tests in one binary run in parallel.

use std::alloc::System;
use std::hint::black_box;
use std::sync::Arc;

use memslots::tree::{Summary, Tree, Visit};
use memslots::{Gfn, Hva, Limits, MemFlags, Memslots, UserspaceMemoryRegion};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn allocations_in(f: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    f();
    region.change().allocations
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct MaxEnd(u64);

impl Summary<u64, u64> for MaxEnd {
    fn of_entry(_: &u64, end: &u64) -> Self {
        MaxEnd(*end)
    }
    fn combine(self, o: Self) -> Self {
        MaxEnd(self.0.max(o.0))
    }
}

fn tree_reads() {
    let t: Tree<u64, u64, MaxEnd, 4> = (0..20_000u64).map(|i| (i * 8, i * 8 + 4)).collect();
    let v2 = t.update(12_345, 12_350).without(&800);
    let n = allocations_in(|| {
        for g in (0..160_000u64).step_by(97) {
            black_box(t.floor(&g));
            black_box(t.ceil(&g));
            black_box(t.get(&g));
        }
        black_box(t.first());
        black_box(t.last());
        black_box(t.summary());
        black_box(t.iter().count());
        black_box(t.iter().rev().count());
        black_box(t.range(1000..90_000).rev().count());
        let mut s = t.search(|k, s| match (*k >= 50_000, s.0 > 40_000) {
            (true, _) => Visit::Stop,
            (false, true) => Visit::Enter,
            (false, false) => Visit::Skip,
        });
        black_box(s.by_ref().count());
        black_box(t.diff(&v2).count());
        black_box(t == v2);
    });
    assert_eq!(n, 0, "tree reads allocated");
}

fn tree_edits_copy_only_shared_nodes() {
    let mut t: Tree<u64, Arc<u64>> = (0..10_000u64).map(|i| (i * 2, Arc::new(i))).collect();
    let v = Arc::new(0);
    let n = allocations_in(|| {
        for k in (0..20_000u64).step_by(2) {
            black_box(t.insert(k, v.clone()));
        }
    });
    assert_eq!(n, 0, "an unshared tree is edited in place");
    let snapshot = t.clone();
    let n = allocations_in(|| {
        t.insert(0, v.clone());
    });
    assert_eq!(n, t.depth(), "a shared tree copies one node per level");
    assert!(!snapshot.ptr_eq(&t));
}

fn vm_read_side() {
    let vm = Memslots::new(Limits::default());
    for id in 0..4096u32 {
        let region = UserspaceMemoryRegion::new(
            id,
            MemFlags::LOG_DIRTY_PAGES,
            u64::from(id) * 8 * 4096,
            4 * 4096,
            0x7000_0000_0000 + u64::from(4096 - id) * 4 * 4096,
        );
        vm.set_user_memory_region(region).unwrap();
    }
    let snapshot = vm.snapshot(0);
    let reader = vm.reader();
    // The first section after creation loads nothing new; warm the last-used slot too.
    drop(reader.read());
    let n = allocations_in(|| {
        for gfn in (0..4096 * 8).step_by(3) {
            let g = Gfn(gfn);
            black_box(snapshot.find(g));
            black_box(snapshot.find_approx(g));
            black_box(snapshot.gfn_range(g, Gfn(gfn + 64)).count());
            let hva = Hva(0x7000_0000_0000 + gfn * 4096);
            black_box(snapshot.hva_range(hva, Hva(hva.0 + 3 * 4096)).count());
            let mut guard = reader.read();
            black_box(guard.gfn_to_memslot(0, g).map(|s| s.gfn_to_hva(g)));
            guard.mark_page_dirty(0, g);
        }
        black_box(snapshot.iter().count());
        black_box(snapshot.get(77));
    });
    // A cache miss clones the found slot into the reader (an `Arc` count, not an allocation).
    assert_eq!(n, 0, "the read side allocated");

    // After a publish the reader's next section reloads the root and lets go of the old one; the
    // old version is freed by the writer later, never by the reader.
    let toggle = |flags| {
        UserspaceMemoryRegion::new(
            7,
            flags,
            7 * 8 * 4096,
            4 * 4096,
            0x7000_0000_0000 + (4096 - 7) * 4 * 4096,
        )
    };
    for flags in [MemFlags::empty(), MemFlags::LOG_DIRTY_PAGES] {
        vm.set_user_memory_region(toggle(flags)).unwrap();
        let region = Region::new(GLOBAL);
        let mut guard = reader.read();
        black_box(guard.gfn_to_memslot(0, Gfn(7 * 8)));
        drop(guard);
        let change = region.change();
        assert_eq!(
            (change.allocations, change.deallocations),
            (0, 0),
            "a reader allocated or freed memory"
        );
    }
}

/// A device's accesses through `GuestAddressSpace::memory()`: taking the handle, vm-memory's
/// `Bytes` through it, and turning it into a snapshot allocate nothing.
#[cfg(feature = "vm-memory-mmap")]
fn device_accesses() {
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, MmapRegion};
    let vm: Memslots<MmapRegion> = Memslots::backed(Limits::default());
    for id in 0..64u32 {
        let ram = MmapRegion::new(0x10000).unwrap();
        let hva = ram.as_ptr() as u64;
        let region =
            UserspaceMemoryRegion::new(id, MemFlags::empty(), u64::from(id) << 20, 0x10000, hva);
        vm.create_memory_region(region, ram).unwrap();
    }
    // The thread's first load registers its arc-swap debt slots.
    drop(vm.memory());
    let packet = [0x5a_u8; 1500];
    let n = allocations_in(|| {
        for id in 0..64u64 {
            let mem = vm.memory();
            let at = GuestAddress((id << 20) + 0x100);
            mem.write_slice(&packet, at).unwrap();
            black_box(mem.read_obj::<u64>(at).unwrap());
            black_box(mem.clone().into_snapshot());
        }
    });
    assert_eq!(n, 0, "a device access allocated");
}

#[test]
fn reads_never_allocate_and_edits_copy_only_shared_nodes() {
    #[cfg(feature = "vm-memory-mmap")]
    device_accesses();
    tree_reads();
    tree_edits_copy_only_shared_nodes();
    vm_read_side();
}
