//! Interoperation with rust-vmm's vm-memory: a VM's slots from a `GuestMemoryMmap`, and back.
#![cfg(feature = "vm-memory")]

use memslots::{Gfn, Hva, Layout, Limits, MemFlags, Memslots, UserspaceMemoryRegion};
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestUsize,
};

const PAGE: u64 = 4096;

fn memory(ranges: &[(u64, usize)]) -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> =
        ranges.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("anonymous memory")
}

fn host(memory: &GuestMemoryMmap, addr: u64) -> Hva {
    let ptr = memory.get_host_address(GuestAddress(addr)).expect("mapped");
    Hva(ptr.addr() as u64)
}

#[test]
fn each_region_becomes_a_slot_in_address_order() {
    let mem = memory(&[(0, 0x10_0000), (0x20_0000, 0x8000), (0x1_0000_0000, 0x4000)]);
    let layout = Layout::from_guest_memory(&mem).unwrap();
    let expected: Vec<UserspaceMemoryRegion> = [0u64, 0x20_0000, 0x1_0000_0000]
        .iter()
        .zip(0u32..)
        .map(|(&gpa, id)| {
            let region = mem.find_region(GuestAddress(gpa)).unwrap();
            UserspaceMemoryRegion::new(id, MemFlags::empty(), gpa, region.len(), host(&mem, gpa).0)
        })
        .collect();
    assert_eq!(layout.regions, expected);
}

#[test]
fn slots_translate_as_vm_memory_does() {
    let mem = memory(&[(0, 0x10_0000), (0x20_0000, 0x8000), (0x1_0000_0000, 0x4000)]);
    let vm = Memslots::from_layout(Limits::default(), &Layout::from_guest_memory(&mem).unwrap())
        .unwrap();
    let slots = vm.snapshot(0);
    slots.check_invariants().unwrap();
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        for offset in (0..region.len()).step_by(0x1000) {
            let gpa = start + offset;
            let slot = slots
                .find(Gfn(gpa / PAGE))
                .expect("every page is in a slot");
            assert_eq!(slot.gfn_to_hva(Gfn(gpa / PAGE)), Some(host(&mem, gpa)));
            assert_eq!(slot.hva_to_gfn(host(&mem, gpa)), Some(Gfn(gpa / PAGE)));
        }
        // The holes between regions are holes in both.
        let past = region.last_addr().raw_value() + 1;
        assert_eq!(
            mem.find_region(GuestAddress(past)).is_none(),
            slots.find(Gfn(past / PAGE)).is_none()
        );
    }
}

#[test]
fn a_version_lists_as_vm_memory_regions() {
    let mem = memory(&[(0x4000, 0x2000), (0x10_0000, 0x1_0000)]);
    let vm = Memslots::from_layout(Limits::default(), &Layout::from_guest_memory(&mem).unwrap())
        .unwrap();
    let listed: Vec<(GuestAddress, GuestUsize, Hva)> = vm.snapshot(0).guest_regions().collect();
    let expected: Vec<(GuestAddress, GuestUsize, Hva)> = mem
        .iter()
        .map(|r| (r.start_addr(), r.len(), host(&mem, r.start_addr().0)))
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(vm.snapshot(0).guest_regions().len(), 2);

    // The first two of each triple build fresh memory of the same shape.
    let ranges: Vec<(GuestAddress, usize)> =
        listed.iter().map(|&(a, l, _)| (a, l as usize)).collect();
    let same_shape = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
    let shape = |m: &GuestMemoryMmap| -> Vec<(GuestAddress, GuestUsize)> {
        m.iter().map(|r| (r.start_addr(), r.len())).collect()
    };
    assert_eq!(shape(&same_shape), shape(&mem));
}

#[test]
fn memory_kvm_would_refuse_is_refused_when_loaded() {
    // vm-memory allows regions of any length; KVM needs whole pages.
    let mem = memory(&[(0, 0x1800)]);
    let layout = Layout::from_guest_memory(&mem).unwrap();
    let err = Memslots::from_layout(Limits::default(), &layout).unwrap_err();
    assert_eq!(err.errno(), memslots::errno::EINVAL);
    assert!(err.to_string().contains("not page-aligned"), "{err}");
    // And no more regions than the limits' user slots.
    let mem = memory(&[(0, 0x1000), (0x10_0000, 0x1000), (0x20_0000, 0x1000)]);
    let two_slots = Limits::default().with_slots(2, 2).unwrap();
    let err =
        Memslots::from_layout(two_slots, &Layout::from_guest_memory(&mem).unwrap()).unwrap_err();
    assert!(err.to_string().contains("not below 2"), "{err}");
}

#[test]
fn an_empty_guest_memory_is_an_empty_layout() {
    let mem = GuestMemoryMmap::<()>::new();
    let layout = Layout::from_guest_memory(&mem).unwrap();
    assert!(layout.regions.is_empty());
    let vm = Memslots::from_layout(Limits::default(), &layout).unwrap();
    assert_eq!(vm.snapshot(0).guest_regions().count(), 0);
}
