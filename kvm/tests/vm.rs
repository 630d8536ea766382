//! `KvmVm` against /dev/kvm: changes reach KVM, refusals roll both sides back, layouts restore,
//! dirty logs merge guest and device writes. Skips with one line where no VM can be made.
#![cfg(target_arch = "x86_64")] // the probe guest is x86 code

#[path = "support/guest.rs"]
mod guest;

use guest::{kvm_or_skip, Access, Guest};
use kvm_ioctls::Kvm;
use memslots::{
    errno, Backing, ChangeKind, DirtyLogMode, Gpa, Limits, MemFlags, UserspaceMemoryRegion,
};
use memslots_kvm::{KvmMemory, KvmVm};
use vm_memory::MmapRegion;

const PAGE: u64 = 4096;
const CODE_GPA: u32 = 0xffff_f000;

/// `pages` of anonymous memory, each 4-byte word holding `tag << 24 | offset`.
fn memory(pages: u64, tag: u32) -> MmapRegion {
    let m = MmapRegion::new((pages * PAGE) as usize).expect("mmap");
    for offset in (0..pages * PAGE).step_by(4) {
        m.write_at(offset as usize, &(tag << 24 | offset as u32).to_le_bytes());
    }
    m
}

fn region(slot: u32, flags: MemFlags, gpa: u64, m: &MmapRegion) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(slot, flags, gpa, m.len() as u64, m.host_addr())
}

/// A VM with the probe program in slot 100, and its vCPU.
fn vm_with_guest(kvm: &Kvm, limits: Option<Limits>) -> (KvmVm<MmapRegion>, Guest) {
    let fd = kvm.create_vm().expect("KVM_CREATE_VM");
    let vm = match limits {
        Some(limits) => KvmVm::with_limits(fd, limits),
        None => KvmVm::new(kvm, fd).expect("limits"),
    };
    let code = MmapRegion::new(PAGE as usize).expect("mmap");
    code.write_at(0, guest::CODE);
    vm.create_memory_region(region(100, MemFlags::empty(), CODE_GPA.into(), &code), code)
        .unwrap();
    let guest = Guest::new(vm.vm_fd(), CODE_GPA);
    (vm, guest)
}

fn word(tag: u32, offset: u32) -> Access {
    Access::Loaded(tag << 24 | offset)
}

#[test]
fn changes_reach_kvm() {
    let Some(kvm) = kvm_or_skip("KvmVm tests") else {
        return;
    };
    let (vm, mut guest) = vm_with_guest(&kvm, None);
    let a = memory(4, 0xa);
    let ra = region(0, MemFlags::empty(), 0x10_0000, &a);
    vm.create_memory_region(ra, a).unwrap();
    assert_eq!(guest.load(0x10_2008), word(0xa, 0x2008));

    let moved = UserspaceMemoryRegion {
        guest_phys_addr: 0x20_0000,
        ..ra
    };
    assert_eq!(vm.set_user_memory_region(moved).unwrap(), ChangeKind::Move);
    assert_eq!(guest.load(0x10_2008), Access::Mmio(0x10_2008));
    assert_eq!(guest.load(0x20_2008), word(0xa, 0x2008));

    // A guest store is seen through the byte API, a device write by the guest.
    assert_eq!(guest.store(0x20_0010, 0x1234_5678), Access::Stored);
    let slots = vm.snapshot(0);
    assert_eq!(
        slots.read_guest_obj::<u32>(Gpa(0x20_0010)).unwrap(),
        0x1234_5678
    );
    slots
        .write_guest_obj(Gpa(0x20_0020), 0xfeed_beefu32)
        .unwrap();
    assert_eq!(guest.load(0x20_0020), Access::Loaded(0xfeed_beef));
    drop(slots);

    let ro = UserspaceMemoryRegion {
        flags: MemFlags::READONLY.bits(),
        ..moved
    };
    // READONLY is immutable: KVM and memslots both refuse, nothing changes.
    let e = vm.set_user_memory_region(ro).unwrap_err();
    assert_eq!(e.errno(), errno::EINVAL);
    vm.set_user_memory_region(UserspaceMemoryRegion::delete(0))
        .unwrap();
    assert_eq!(guest.load(0x20_2008), Access::Mmio(0x20_2008));
    assert_eq!(vm.layout().regions.len(), 1, "only the code slot is left");
}

#[test]
fn creating_over_memory_that_is_not_the_slots_is_refused() {
    let Some(kvm) = kvm_or_skip("KvmVm tests") else {
        return;
    };
    let (vm, _guest) = vm_with_guest(&kvm, None);
    let a = memory(2, 1);
    let elsewhere = UserspaceMemoryRegion {
        userspace_addr: a.host_addr() + PAGE,
        ..region(0, MemFlags::empty(), 0, &a)
    };
    assert_eq!(
        vm.create_memory_region(elsewhere, a).unwrap_err().errno(),
        errno::EINVAL
    );
    let b = memory(2, 1);
    let bigger = UserspaceMemoryRegion {
        memory_size: 3 * PAGE,
        ..region(0, MemFlags::empty(), 0, &b)
    };
    assert_eq!(
        vm.create_memory_region(bigger, b).unwrap_err().errno(),
        errno::EINVAL
    );
    assert_eq!(vm.layout().regions.len(), 1);
}

#[test]
fn a_kvm_refusal_rolls_both_sides_back() {
    let Some(kvm) = kvm_or_skip("KvmVm tests") else {
        return;
    };
    // memslots without the max-gfn rule accepts what KVM refuses.
    let probed = memslots_kvm::probe_limits(&kvm, &kvm.create_vm().unwrap()).unwrap();
    let max_gfn = probed.max_gfn().expect("x86 has a largest gfn").0;
    let (vm, mut guest) = vm_with_guest(&kvm, Some(probed.with_max_gfn(None)));
    let a = memory(4, 0xa);
    let ra = region(0, MemFlags::LOG_DIRTY_PAGES, 0x10_0000, &a);
    vm.create_memory_region(ra, a).unwrap();
    assert_eq!(guest.store(0x10_1000, 7), Access::Stored);
    let before = vm.layout();

    // Delete A, put B where it was, move nothing else, then a slot KVM refuses.
    let b = memory(8, 0xb);
    let c = memory(1, 0xc);
    let mut tx = vm.transaction().unwrap();
    tx.set_user_memory_region(UserspaceMemoryRegion::delete(0))
        .unwrap();
    tx.create_memory_region(region(1, MemFlags::empty(), 0x10_0000, &b), b)
        .unwrap();
    tx.create_memory_region(region(2, MemFlags::empty(), (max_gfn + 1) << 12, &c), c)
        .unwrap();
    let e = tx.commit().unwrap_err();
    assert_eq!(e.errno(), errno::EINVAL);

    // memslots is as it was, and so is KVM: A is back at its place, B is gone.
    assert_eq!(vm.layout(), before);
    assert_eq!(guest.load(0x10_1000), Access::Loaded(7));
    assert_eq!(guest.load(0x10_3ffc), word(0xa, 0x3ffc));
    assert_eq!(
        guest.load(0x10_4000),
        Access::Mmio(0x10_4000),
        "B's pages are gone"
    );
    // The guest's dirty page survived KVM's delete and re-create; KVM's slot logs again.
    assert_eq!(guest.store(0x10_2000, 8), Access::Stored);
    assert_eq!(vm.get_dirty_log(0).unwrap(), [0b0100 | 0b0010]);

    // The VM goes on working.
    let d = memory(1, 0xd);
    vm.create_memory_region(region(3, MemFlags::empty(), 0x30_0000, &d), d)
        .unwrap();
    assert_eq!(guest.load(0x30_0000), word(0xd, 0));
}

#[test]
fn dirty_logs_merge_guest_and_device_writes_in_both_modes() {
    let Some(kvm) = kvm_or_skip("KvmVm tests") else {
        return;
    };
    for mode in [
        DirtyLogMode::FetchAndClear,
        DirtyLogMode::ManualProtect {
            initially_set: false,
        },
    ] {
        let (vm, mut guest) = vm_with_guest(&kvm, None);
        vm.set_dirty_log_mode(mode).unwrap();
        let a = memory(130, 1);
        vm.create_memory_region(region(0, MemFlags::LOG_DIRTY_PAGES, 0, &a), a)
            .unwrap();
        assert_eq!(guest.store(0x1000, 1), Access::Stored); // page 1, by the guest
        vm.snapshot(0).write_guest(Gpa(0x81_000), &[1]).unwrap(); // page 129, by a device
        let expected = vec![0b10, 0, 0b10];
        assert_eq!(vm.get_dirty_log(0).unwrap(), expected, "{mode:?}");
        if mode.manual_protect() {
            assert_eq!(
                vm.get_dirty_log(0).unwrap(),
                expected,
                "a get does not clear"
            );
            vm.clear_dirty_log(0, 0, 130, &[u64::MAX; 3]).unwrap();
        }
        assert_eq!(vm.get_dirty_log(0).unwrap(), [0, 0, 0]);
        assert_eq!(guest.store(0x1000, 2), Access::Stored);
        assert_eq!(vm.get_dirty_log(0).unwrap(), [0b10, 0, 0], "re-armed");
        assert_eq!(vm.get_dirty_log(7).unwrap_err().errno(), errno::ENOENT);
    }
}

#[test]
fn a_layout_restores_through_kvm_and_a_dropped_vm_leaves_holes() {
    let Some(kvm) = kvm_or_skip("KvmVm tests") else {
        return;
    };
    let (vm, _guest) = vm_with_guest(&kvm, None);
    let a = memory(2, 0xa);
    vm.create_memory_region(region(0, MemFlags::READONLY, 0x10_0000, &a), a)
        .unwrap();
    let layout = vm.layout();
    drop(vm);

    let (copy, mut guest) = vm_with_guest(&kvm, None);
    let code = layout.regions.iter().position(|r| r.slot == 100).unwrap();
    let mut rest = layout.clone();
    rest.regions.remove(code);
    copy.restore(&rest, |r| memory(r.memory_size / PAGE, 0xe))
        .unwrap();
    assert_eq!(guest.load(0x10_1000), word(0xe, 0x1000));
    assert_eq!(
        guest.store(0x10_1000, 5),
        Access::Mmio(0x10_1000),
        "READONLY"
    );
    let restored = copy.layout();
    assert_eq!(restored.regions.len(), 2);
    assert!(restored.regions.iter().zip(&layout.regions).all(|(r, l)| {
        (r.slot, r.flags, r.guest_phys_addr, r.memory_size)
            == (l.slot, l.flags, l.guest_phys_addr, l.memory_size)
    }));

    // A restore that KVM refuses in part creates nothing.
    let (other, _g) = vm_with_guest(&kvm, None);
    let mut clash = rest.clone();
    clash.regions.push(UserspaceMemoryRegion {
        slot: 5,
        ..rest.regions[0]
    });
    assert_eq!(
        other
            .restore(&clash, |r| memory(r.memory_size / PAGE, 0xf))
            .unwrap_err()
            .errno(),
        errno::EEXIST
    );
    assert_eq!(other.layout().regions.len(), 1);

    // The vCPU outlives the VM object: KVM has dropped every slot, the code's too.
    drop(copy);
    assert!(!matches!(guest.load(0x10_1000), Access::Loaded(_)));
}

#[test]
fn the_vm_is_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<KvmVm<MmapRegion>>();
    send_sync::<memslots_kvm::Error>();
}
