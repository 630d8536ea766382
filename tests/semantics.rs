//! KVM rules seen from the public API: what a VMM porting from the ioctl observes.

use memslots::{errno, ChangeKind, Gfn, Hva, Limits, MemFlags, Memslots, UserspaceMemoryRegion};

const PAGE: u64 = 4096;

fn region(slot: u32, flags: MemFlags, gpa: u64, size: u64, hva: u64) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(slot, flags, gpa, size, hva)
}

#[test]
fn address_spaces_are_independent() {
    let vm = Memslots::new(Limits::default());
    let smm = 1 << 16;
    vm.set_user_memory_region(region(0, MemFlags::empty(), 0, 16 * PAGE, 0x10_0000))
        .unwrap();
    // The same gfn range and the same id in address space 1: no overlap, no clash.
    assert_eq!(
        vm.set_user_memory_region(region(smm, MemFlags::empty(), 0, 16 * PAGE, 0x20_0000)),
        Ok(ChangeKind::Create)
    );
    assert_eq!(
        vm.snapshot(0).get(0).unwrap().userspace_addr(),
        Hva(0x10_0000)
    );
    assert_eq!(
        vm.snapshot(1).get(0).unwrap().userspace_addr(),
        Hva(0x20_0000)
    );
    // Generations: address space 1 started at 1 and stepped by 2 once.
    assert_eq!(vm.snapshot(0).generation(), 2);
    assert_eq!(vm.snapshot(1).generation(), 3);
    assert_eq!(vm.total_pages(), 32);
}

#[test]
fn failed_and_unchanged_requests_publish_nothing() {
    let vm = Memslots::new(Limits::default());
    let ram = region(0, MemFlags::empty(), 0, 16 * PAGE, 0x10_0000);
    vm.set_user_memory_region(ram).unwrap();
    let before = vm.snapshot(0);
    assert_eq!(vm.set_user_memory_region(ram), Ok(ChangeKind::Unchanged));
    let clash = region(1, MemFlags::empty(), 8 * PAGE, PAGE, 0);
    assert_eq!(
        vm.set_user_memory_region(clash).unwrap_err().errno(),
        errno::EEXIST
    );
    let resize = UserspaceMemoryRegion {
        memory_size: 8 * PAGE,
        ..ram
    };
    assert_eq!(
        vm.set_user_memory_region(resize).unwrap_err().errno(),
        errno::EINVAL
    );
    assert!(before.ptr_eq(&vm.snapshot(0)));
    assert_eq!(vm.snapshot(0).generation(), 2);
    assert_eq!(vm.total_pages(), 16);
}

#[test]
fn delete_still_checks_the_fields_before_it() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(region(0, MemFlags::empty(), 0, PAGE, 0))
        .unwrap();
    // memory_size 0 deletes, but a misaligned gpa is refused first, as in the kernel.
    let sloppy = UserspaceMemoryRegion {
        guest_phys_addr: 1,
        ..UserspaceMemoryRegion::delete(0)
    };
    assert_eq!(
        vm.set_user_memory_region(sloppy).unwrap_err().errno(),
        errno::EINVAL
    );
    assert_eq!(vm.snapshot(0).len(), 1);
    assert_eq!(
        vm.set_user_memory_region(UserspaceMemoryRegion::delete(0)),
        Ok(ChangeKind::Delete)
    );
    // Delete publishes twice (INVALID, then final): 2 + 2 * 2.
    assert_eq!(vm.snapshot(0).generation(), 6);
}

#[test]
fn flags_only_keeps_the_place_and_the_dirty_log_follows_the_flag() {
    let vm = Memslots::new(Limits::default());
    let ram = region(3, MemFlags::empty(), 64 * PAGE, 128 * PAGE, 0x40_0000);
    vm.set_user_memory_region(ram).unwrap();
    assert!(!vm.snapshot(0).get(3).unwrap().dirty_logging());
    let logged = UserspaceMemoryRegion {
        flags: MemFlags::LOG_DIRTY_PAGES.bits(),
        ..ram
    };
    assert_eq!(vm.set_user_memory_region(logged), Ok(ChangeKind::FlagsOnly));
    let snap = vm.snapshot(0);
    let slot = snap.find(Gfn(100)).unwrap();
    assert!(slot.dirty_logging());
    assert_eq!(slot.dirty_bitmap().unwrap().npages(), 128);
    assert_eq!(vm.set_user_memory_region(ram), Ok(ChangeKind::FlagsOnly));
    assert!(!vm.snapshot(0).get(3).unwrap().dirty_logging());
}

#[test]
fn smaller_limits_are_enforced() {
    let limits = Limits::default()
        .with_slots(509, 512)
        .unwrap()
        .with_address_spaces(1)
        .unwrap()
        .with_readonly(false);
    let vm = Memslots::new(limits);
    for bad in [
        region(509, MemFlags::empty(), 0, PAGE, 0),
        region(1 << 16, MemFlags::empty(), 0, PAGE, 0),
        region(0, MemFlags::READONLY, 0, PAGE, 0),
    ] {
        assert_eq!(
            vm.set_user_memory_region(bad).unwrap_err().errno(),
            errno::EINVAL,
            "{bad:?}"
        );
    }
    assert_eq!(vm.snapshot(0).generation(), 0);
}

#[test]
fn invalid_slots_are_found_but_do_not_translate() {
    // The INVALID window is only visible to readers during a delete or move; the slot type's
    // behaviour in it is what matters here.
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(region(0, MemFlags::READONLY, 0, 4 * PAGE, 0x1000))
        .unwrap();
    let snap = vm.snapshot(0);
    let slot = snap.find(Gfn(1)).unwrap();
    assert_eq!(slot.gfn_to_hva(Gfn(1)), Some(Hva(0x2000)));
    assert_eq!(
        slot.gfn_to_hva_prot(Gfn(1), true),
        Err(memslots::HvaError::ReadOnly)
    );
}
