//! The public names other code is written against, used once each, so that renaming one breaks
//! this test first.

use memslots::{
    ChangeKind, Diff, DirtyLogMode, Error, Gfn, Gpa, GracePeriod, Hva, Layout, Limits, MemFlags,
    Memslot, MemslotSet, Memslots, ReadFlavour, SlotId, Snapshot, UserspaceMemoryRegion,
};

#[test]
fn the_public_contract_is_whole() {
    let vm = Memslots::new(Limits::default());
    let ram = UserspaceMemoryRegion {
        slot: u32::from(SlotId::new(0, 1)),
        flags: MemFlags::LOG_DIRTY_PAGES.bits(),
        guest_phys_addr: Gpa(0x10_0000).0,
        memory_size: 0x4000,
        userspace_addr: 0x7000_0000,
    };
    let kind: Result<ChangeKind, Error> = vm.set_user_memory_region(ram);
    assert_eq!(kind, Ok(ChangeKind::Create));
    for kind in [
        ChangeKind::Create,
        ChangeKind::Delete,
        ChangeKind::Move,
        ChangeKind::FlagsOnly,
        ChangeKind::Unchanged,
    ] {
        assert!(!format!("{kind:?}").is_empty());
    }

    // Issue 2: versions and slots.
    let snapshot: Snapshot = vm.snapshot(0);
    let set: &MemslotSet = &snapshot;
    let slot: &Memslot = set.get(1).unwrap();
    assert_eq!(set.find(Gfn(0x101)).map(Memslot::id), Some(1));
    assert!(set.find_approx(Gfn(0)).is_some());
    assert_eq!(set.iter().count(), 1);
    assert_eq!(set.gfn_range(Gfn(0), Gfn(u64::MAX)).count(), 1);
    assert_eq!(set.hva_range(Hva(0x7000_0000), Hva(0x7000_1000)).count(), 1);
    assert_eq!(
        (set.len(), set.is_empty(), set.total_pages()),
        (1, false, 4)
    );
    assert_eq!(set.generation(), 2);
    assert_eq!((slot.id(), slot.as_id(), slot.npages()), (1, 0, 4));
    assert_eq!(slot.base_gfn(), Gfn(0x100));
    assert_eq!(slot.userspace_addr(), Hva(0x7000_0000));
    assert_eq!(slot.flags(), MemFlags::LOG_DIRTY_PAGES);
    assert_eq!(slot.gfn_to_hva(Gfn(0x101)), Some(Hva(0x7000_1000)));
    assert_eq!(slot.hva_to_gfn(Hva(0x7000_1000)), Some(Gfn(0x101)));
    assert!(slot.contains(Gfn(0x103)));
    assert_eq!(
        vm.set_user_memory_region(UserspaceMemoryRegion::delete(9))
            .unwrap_err()
            .errno(),
        22
    );

    // Issue 3: readers, grace periods, transactions, dirty logs.
    let reader = vm.reader();
    {
        let guard = reader.read();
        assert_eq!(guard.slots(0).len(), 1);
    }
    reader.mark_page_dirty(0, Gfn(0x101));
    vm.synchronize();
    assert_eq!(vm.get_dirty_log(1).unwrap(), [0b10]);
    vm.clear_dirty_log(1, 0, 4, &[u64::MAX]).unwrap();
    let mut tx = vm.transaction();
    let moved = UserspaceMemoryRegion {
        guest_phys_addr: 0x20_0000,
        ..ram
    };
    assert_eq!(tx.set_user_memory_region(moved), Ok(ChangeKind::Move));
    tx.commit().unwrap();

    // Issue 5: diffs and layouts.
    let after = vm.snapshot(0);
    let changes: Vec<Diff<'_>> = snapshot.diff(&after).collect();
    assert!(matches!(changes[..], [Diff::Changed { old: _, new: _ }]));
    assert!(matches!(
        after.diff(&vm.snapshot(0)).next(),
        None | Some(Diff::Added(_) | Diff::Removed(_))
    ));
    let layout: Layout = vm.layout();
    assert_eq!(layout.regions.len(), 1);
    let restored = Memslots::from_layout(Limits::default(), &layout).unwrap();
    assert_eq!(restored.layout(), layout);

    // Issue 10: read-side flavours, grace-period cookies, non-waiting publication.
    let flavour: ReadFlavour = vm.read_flavour();
    assert_eq!(flavour, ReadFlavour::best());
    assert_eq!(
        ReadFlavour::best() == ReadFlavour::Membarrier,
        ReadFlavour::membarrier_available()
    );
    let fenced = vm.reader_with_flavour(ReadFlavour::Fence);
    assert_eq!(fenced.flavour(), ReadFlavour::Fence);
    fenced.quiesce();
    let grace: GracePeriod = vm.start_grace_period();
    assert!(grace.is_done() && vm.poll_synchronize(&grace) && grace.sections() == 0);
    grace.wait();
    let (kind, grace) = vm
        .publish_user_memory_region(UserspaceMemoryRegion::delete(1))
        .unwrap();
    assert_eq!(kind, ChangeKind::Delete);
    assert!(grace.is_done());
    let internal = UserspaceMemoryRegion::new(
        u32::from(vm.limits().user_slots()),
        MemFlags::empty(),
        0,
        0x1000,
        0x7100_0000,
    );
    assert_eq!(
        vm.publish_internal_memory_region(internal).unwrap().0,
        ChangeKind::Create
    );
    let mut tx = vm.transaction();
    tx.set_user_memory_region(ram).unwrap();
    assert!(tx.publish().unwrap().is_done());

    // Issue 9: the host's rules and the dirty-log modes.
    let host = Limits::default()
        .with_user_address_limit(Some(Limits::X86_64_USER_ADDRESS_LIMIT))
        .with_max_gfn(Some(Gfn((1 << 40) - 1)));
    assert_eq!(host.user_address_limit(), Some(0x7fff_ffff_f000));
    assert_eq!(host.max_gfn(), Some(Gfn((1 << 40) - 1)));
    let strict = Memslots::new(host);
    let high = UserspaceMemoryRegion::delete(0);
    let high = UserspaceMemoryRegion {
        userspace_addr: 0x8000_0000_0000,
        ..high
    };
    assert!(matches!(
        strict.set_user_memory_region(high),
        Err(Error::UserAddressLimit { .. })
    ));
    let far = UserspaceMemoryRegion {
        guest_phys_addr: 1 << 52,
        ..ram
    };
    assert!(matches!(
        strict.set_user_memory_region(far),
        Err(Error::GfnBeyondMax { .. })
    ));
    let mode: DirtyLogMode = DirtyLogMode::ManualProtect {
        initially_set: true,
    };
    vm.set_dirty_log_mode(mode);
    assert_eq!(vm.dirty_log_mode(), mode);
    assert_eq!(DirtyLogMode::from_cap_args(mode.cap_args()), Some(mode));
}

/// Issue 8: slots that own their backing, byte access, and rust-vmm's traits.
#[test]
fn the_backing_contract_is_whole() {
    use memslots::{Backing, Gpa, GuestRam, ReadGuard, Reader};

    // `()` is the default: no type parameter to name.
    let plain: Memslots<()> = Memslots::new(Limits::default());
    let region = UserspaceMemoryRegion::new(0, MemFlags::LOG_DIRTY_PAGES, 0, 0x2000, 0x7000_0000);
    plain.set_user_memory_region(region).unwrap();
    assert_eq!(*plain.snapshot(0).get(0).unwrap().backing(), ());

    let vm: Memslots<GuestRam> = Memslots::backed(Limits::default());
    assert!(matches!(
        vm.set_user_memory_region(region),
        Err(Error::BackingRequired { .. })
    ));
    vm.create_memory_region(region, GuestRam::new(0x2000))
        .unwrap();
    let set: &MemslotSet<GuestRam> = &vm.snapshot(0);
    let slot: &Memslot<GuestRam> = set.get(0).unwrap();
    assert_eq!(slot.backing().len(), 0x2000);
    assert!(std::sync::Arc::ptr_eq(
        slot.backing_arc(),
        vm.snapshot(0).get(0).unwrap().backing_arc()
    ));
    set.write_guest(Gpa(0xffe), &[1, 2, 3, 4]).unwrap();
    set.write_guest_obj(Gpa(0x10), 7u32).unwrap();
    let mut buf = [0; 4];
    set.read_guest(Gpa(0xffe), &mut buf).unwrap();
    assert_eq!(
        (buf, set.read_guest_obj::<u32>(Gpa(0x10)).unwrap()),
        ([1, 2, 3, 4], 7)
    );
    let reader: Reader<MemslotSet<GuestRam>> = vm.reader();
    let mut section: ReadGuard<'_, MemslotSet<GuestRam>> = reader.read();
    assert_eq!(section.read_guest_obj::<u32>(0, Gpa(0x10)).unwrap(), 7);
    section.write_guest(0, Gpa(0), &[9]).unwrap();
    assert!(matches!(
        section.read_guest(0, Gpa(0x2000), &mut buf),
        Err(Error::Unmapped { gpa: 0x2000 })
    ));
    drop(section);
    assert_eq!(vm.get_dirty_log(0).unwrap(), [0b11]);
}

/// Issue 8: `Memslots<B>` is a vm-memory `GuestAddressSpace` for a backing made from a
/// `vm_memory::MmapRegion` (the backing type is `MmapRegion` itself).
#[cfg(feature = "vm-memory-mmap")]
#[test]
fn memslots_is_a_guest_address_space() {
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, MmapRegion};

    fn device<A: GuestAddressSpace>(space: &A) -> u64 {
        let mem = space.memory();
        mem.write_obj(0x1234_u64, GuestAddress(0x10_0000)).unwrap();
        mem.read_obj(GuestAddress(0x10_0000)).unwrap()
    }
    let vm: Memslots<MmapRegion> = Memslots::backed(Limits::default());
    let ram = MmapRegion::new(0x1000).unwrap();
    let hva = ram.as_ptr() as u64;
    vm.create_memory_region(
        UserspaceMemoryRegion::new(0, MemFlags::empty(), 0x10_0000, 0x1000, hva),
        ram,
    )
    .unwrap();
    assert_eq!(device(&vm), 0x1234);
    assert!(vm.memory().find_region(GuestAddress(0x10_0fff)).is_some());
}
