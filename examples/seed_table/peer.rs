//! rust-vmm's `vm-memory` 0.18 as a third column: a `GuestRegionCollection` (a sorted
//! `Vec<Arc<R>>`) published through `GuestMemoryAtomic` (arc-swap plus a writer mutex), as
//! cloud-hypervisor keeps its guest memory.
//!
//! The regions are `PeerRegion`s (`tests/support/peer_region.rs`): a plain type implementing
//! `GuestMemoryRegion` (no mmap: the tests only look addresses up) that carries its host address.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestRegionCollection,
};

use crate::layout::{Layout, PAGE};
use crate::peer_region::PeerRegion;
use crate::tests::{map_pass, measure, Budget};

pub(crate) type Peer = GuestMemoryAtomic<GuestRegionCollection<PeerRegion>>;

fn regions(layout: &Layout) -> Vec<Arc<PeerRegion>> {
    layout
        .regions
        .iter()
        .map(|r| {
            Arc::new(PeerRegion {
                start: GuestAddress(r.guest_phys_addr),
                len: r.memory_size,
                hva: r.userspace_addr,
            })
        })
        .collect()
}

/// The layout in one step (`from_arc_regions` on the sorted regions), for the lookup tests.
pub(crate) fn build(layout: &Layout) -> Peer {
    let mut all = regions(layout);
    all.sort_by_key(|r| r.start);
    GuestMemoryAtomic::new(GuestRegionCollection::from_arc_regions(all).expect("valid layout"))
}

/// Slot setup: `insert_region` per region (clones the `Vec`, sorts, revalidates every pair),
/// each new collection published with `lock().replace()`.
pub(crate) fn setup(layout: &Layout, budget: &Budget) -> Vec<f64> {
    measure(budget, || {
        let regions = regions(layout);
        let peer: Peer = GuestMemoryAtomic::new(GuestRegionCollection::new());
        let start = Instant::now();
        for region in regions {
            let next = peer.memory().insert_region(region).expect("no overlap");
            peer.lock().expect("writer lock").replace(next);
        }
        start.elapsed()
    })
}

/// Map: per page, a `memory()` guard (its read-side section) and `find_region` (binary search),
/// then the host address. There is no per-vCPU cache and no dirty log to mark.
pub(crate) fn map(peer: &Peer, layout: &Layout, budget: &Budget) -> Vec<f64> {
    map_pass(layout, budget, |gfn| {
        let gpa = gfn * PAGE;
        let mem = peer.memory();
        mem.find_region(GuestAddress(gpa))
            .is_some_and(|r| black_box(r.hva + (gpa - r.start.0)) != 0)
    })
}

/// Unmap: vm-memory has no hva -> gpa lookup, so each chunk scans every region, as the array did
/// and as vhost-user backends' `vmm_va_to_gpa` does.
pub(crate) fn unmap(peer: &Peer, chunks: &[(u64, u64)], budget: &Budget) -> Vec<f64> {
    let pages: u64 = chunks.iter().map(|(s, e)| (e - s) / PAGE).sum();
    measure(budget, || {
        let start = Instant::now();
        let mem = peer.memory();
        let mut found = 0u64;
        for &(s, e) in chunks {
            for r in mem.iter() {
                let end = r.hva + r.len;
                if r.hva < e && s < end {
                    let first = (s.max(r.hva) - r.hva) / PAGE;
                    let last = (e.min(end) - r.hva).div_ceil(PAGE);
                    found += last - first;
                }
            }
        }
        let took = start.elapsed();
        assert_eq!(black_box(found), pages);
        took
    })
}
