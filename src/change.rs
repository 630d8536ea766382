//! Request validation and change classification, in the kernel's order with the kernel's errno.
//!
//! Both the tree implementation and the array baseline run every request through here, so the
//! two cannot disagree on a rule. The steps follow `kvm_vm_ioctl_set_memory_region` and
//! `kvm_set_memory_region` (`virt/kvm/kvm_main.c`): first the checks that need no state
//! ([`check`]), then the ones against the address space's current version ([`classify`]).

use std::sync::Arc;

use crate::error::{Error, SlotField};
use crate::slot::Memslot;
use crate::types::{ChangeKind, Gfn, Hva, Limits, MemFlags, SlotId, UserspaceMemoryRegion};

/// Who is asking: the ioctl (`KVM_SET_USER_MEMORY_REGION`) or the VMM for an internal slot
/// (`kvm_set_internal_memslot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    User,
    Internal,
}

/// A request that passed the stateless checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checked {
    pub(crate) slot: SlotId,
    pub(crate) flags: MemFlags,
    pub(crate) base_gfn: Gfn,
    pub(crate) npages: u64,
    pub(crate) userspace_addr: Hva,
}

/// What validation needs to see of one address space's current version. Sealed with
/// [`Version`](crate::Version), whose hidden part it bounds: never nameable outside the crate.
#[allow(unnameable_types)]
pub trait SlotLookup {
    /// What the slots carry.
    type Backing;
    /// The slot with this id.
    fn slot(&self, id: u16) -> Option<&Memslot<Self::Backing>>;
    /// A slot other than `id` whose gfn range intersects `[start, end)`.
    fn overlapping(&self, id: u16, start: Gfn, end: Gfn) -> Option<&Memslot<Self::Backing>>;
}

/// A validated request: what kind of change it is and the slot it installs (none for Delete and
/// Unchanged).
#[derive(Debug)]
pub(crate) struct Plan<B> {
    pub(crate) slot: SlotId,
    pub(crate) kind: ChangeKind,
    pub(crate) new: Option<Memslot<B>>,
}

/// The checks that need no state: ioctl entry (steps 0c, 0d) and `kvm_set_memory_region` steps
/// 1 to 8.
pub(crate) fn check(
    limits: &Limits,
    req: &UserspaceMemoryRegion,
    origin: Origin,
) -> Result<Checked, Error> {
    let slot = req.slot_id();
    match origin {
        Origin::User => {
            if req.flags & !MemFlags::USER.bits() != 0 {
                return Err(Error::InvalidFlags { flags: req.flags });
            }
            if slot.id >= limits.user_slots() {
                return Err(Error::InvalidSlotId {
                    slot,
                    limit: limits.user_slots(),
                });
            }
        }
        Origin::Internal => {
            // The kernel compares the whole packed field, so any address space above 0 passes
            // here and is judged by the address-space check below.
            if req.slot < u32::from(limits.user_slots()) {
                return Err(Error::NotInternalSlot {
                    slot,
                    user_slots: limits.user_slots(),
                });
            }
            if req.flags != 0 {
                return Err(Error::InvalidFlags { flags: req.flags });
            }
        }
    }

    let mut valid = MemFlags::LOG_DIRTY_PAGES;
    if limits.readonly_supported() {
        valid |= MemFlags::READONLY;
    }
    if req.flags & !valid.bits() != 0 {
        return Err(Error::InvalidFlags { flags: req.flags });
    }
    let page_mask = limits.page_size() - 1;
    if req.memory_size & page_mask != 0 {
        return Err(Error::UnalignedSize {
            size: req.memory_size,
        });
    }
    if req.guest_phys_addr & page_mask != 0 {
        return Err(Error::UnalignedGpa {
            gpa: req.guest_phys_addr,
        });
    }
    if req.userspace_addr & page_mask != 0 {
        return Err(Error::UnalignedHva {
            hva: req.userspace_addr,
        });
    }
    if req.userspace_addr.checked_add(req.memory_size).is_none() {
        return Err(Error::HvaOverflow {
            hva: req.userspace_addr,
            size: req.memory_size,
        });
    }
    if let Some(limit) = limits.user_address_limit() {
        if req.userspace_addr + req.memory_size > limit {
            return Err(Error::UserAddressLimit {
                hva: req.userspace_addr,
                size: req.memory_size,
                limit,
            });
        }
    }
    check_slot_in_range(limits, slot, limits.total_slots())?;
    if req.guest_phys_addr.checked_add(req.memory_size).is_none() {
        return Err(Error::GpaOverflow {
            gpa: req.guest_phys_addr,
            size: req.memory_size,
        });
    }
    let npages = req.memory_size >> limits.page_shift();
    if slot.id < limits.user_slots() && npages > limits.max_pages_per_slot() {
        return Err(Error::TooManyPages {
            npages,
            max: limits.max_pages_per_slot(),
        });
    }
    Ok(Checked {
        slot,
        flags: MemFlags::from_bits_retain(req.flags),
        base_gfn: Gfn(req.guest_phys_addr >> limits.page_shift()),
        npages,
        userspace_addr: Hva(req.userspace_addr),
    })
}

/// The address space must exist and the id be below `id_limit` (EINVAL): step 6 of
/// `kvm_set_memory_region`, and the first check of the dirty-log calls.
pub(crate) fn check_slot_in_range(
    limits: &Limits,
    slot: SlotId,
    id_limit: u16,
) -> Result<(), Error> {
    if slot.as_id >= limits.address_spaces() {
        return Err(Error::InvalidAddressSpace {
            as_id: slot.as_id,
            address_spaces: limits.address_spaces(),
        });
    }
    if slot.id >= id_limit {
        return Err(Error::InvalidSlotId {
            slot,
            limit: id_limit,
        });
    }
    Ok(())
}

/// The checks against the address space's current version (`kvm_set_memory_region` steps 9 to
/// 13): decides the change kind and builds the new slot. `vm_pages` is the VM's page count over
/// all address spaces (`nr_memslot_pages`). `backing` is what a created slot carries; a Create
/// without one is refused after every kernel check has passed, so the errno of a request KVM
/// would refuse is KVM's.
pub(crate) fn classify<S: SlotLookup + ?Sized>(
    limits: &Limits,
    req: Checked,
    space: &S,
    vm_pages: u64,
    backing: Option<Arc<S::Backing>>,
) -> Result<Plan<S::Backing>, Error> {
    let Checked {
        slot,
        flags,
        base_gfn,
        npages,
        userspace_addr,
    } = req;
    let old = space.slot(slot.id);
    if npages == 0 {
        return match old {
            None => Err(Error::NoSuchSlot { slot }),
            Some(_) => Ok(Plan {
                slot,
                kind: ChangeKind::Delete,
                new: None,
            }),
        };
    }
    let kind = match old {
        None => {
            if vm_pages.checked_add(npages).is_none() {
                return Err(Error::PageCountOverflow { npages });
            }
            ChangeKind::Create
        }
        Some(old) => {
            let field = if userspace_addr != old.userspace_addr() {
                Some(SlotField::UserspaceAddr)
            } else if npages != old.npages() {
                Some(SlotField::Size)
            } else if (flags ^ old.flags()).contains(MemFlags::READONLY) {
                Some(SlotField::ReadOnly)
            } else {
                None
            };
            if let Some(field) = field {
                return Err(Error::ImmutableField { slot, field });
            }
            if base_gfn != old.base_gfn() {
                ChangeKind::Move
            } else if flags != old.flags().difference(MemFlags::INVALID) {
                ChangeKind::FlagsOnly
            } else {
                ChangeKind::Unchanged
            }
        }
    };
    if matches!(kind, ChangeKind::Create | ChangeKind::Move) {
        let end = Gfn(base_gfn.0 + npages);
        if let Some(other) = space.overlapping(slot.id, base_gfn, end) {
            return Err(Error::Overlap {
                slot,
                existing: other.slot_id(),
            });
        }
        // x86's kvm_arch_prepare_memory_region, which runs after the overlap check.
        let last_gfn = end.0 - 1;
        if let Some(max) = limits.max_gfn().filter(|max| last_gfn > max.0) {
            return Err(Error::GfnBeyondMax {
                slot,
                last_gfn,
                max_gfn: max.0,
            });
        }
    }
    let new = match (kind, old) {
        (ChangeKind::Unchanged, _) => None,
        (_, Some(old)) => Some(old.changed(base_gfn, flags)),
        (_, None) => {
            let backing = backing.ok_or(Error::BackingRequired { slot })?;
            let slot = Memslot::new(
                slot,
                base_gfn,
                npages,
                userspace_addr,
                MemFlags::empty(),
                limits.page_shift(),
                backing,
            );
            Some(slot.changed(base_gfn, flags))
        }
    };
    Ok(Plan { slot, kind, new })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::errno;

    const PAGE: u64 = 4096;

    struct Space(Vec<Memslot>);

    impl SlotLookup for Space {
        type Backing = ();
        fn slot(&self, id: u16) -> Option<&Memslot> {
            self.0.iter().find(|s| s.id() == id)
        }
        fn overlapping(&self, id: u16, start: Gfn, end: Gfn) -> Option<&Memslot> {
            self.0
                .iter()
                .find(|s| s.id() != id && s.base_gfn() < end && start < s.end_gfn())
        }
    }

    fn req(slot: u32, flags: u32, gpa: u64, size: u64, hva: u64) -> UserspaceMemoryRegion {
        UserspaceMemoryRegion {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: hva,
        }
    }

    fn run(space: &Space, r: UserspaceMemoryRegion) -> Result<ChangeKind, Error> {
        let limits = Limits::default();
        let checked = check(&limits, &r, Origin::User)?;
        classify(&limits, checked, space, 0, Some(Arc::new(()))).map(|p| p.kind)
    }

    fn existing() -> Space {
        let l = Limits::default();
        let c = check(&l, &req(1, 0, 0x10000, 4 * PAGE, 0x100000), Origin::User).unwrap();
        let p = classify(&l, c, &Space(vec![]), 0, Some(Arc::new(()))).unwrap();
        Space(vec![p.new.unwrap()])
    }

    #[test]
    fn checks_run_in_the_kernels_order() {
        let s = Space(vec![]);
        // Every field wrong at once: the flags are reported first, then each in turn.
        let mut r = req(0x0002_7fff, 4, 1, 1, 1);
        let expect = |r: UserspaceMemoryRegion| run(&s, r).unwrap_err();
        assert!(matches!(expect(r), Error::InvalidFlags { flags: 4 }));
        r.flags = 0;
        assert!(matches!(
            expect(r),
            Error::InvalidSlotId { limit: 32764, .. }
        ));
        r.slot = 0x0002_0001;
        assert!(matches!(expect(r), Error::UnalignedSize { .. }));
        r.memory_size = PAGE;
        assert!(matches!(expect(r), Error::UnalignedGpa { .. }));
        r.guest_phys_addr = !(PAGE - 1);
        assert!(matches!(expect(r), Error::UnalignedHva { .. }));
        r.userspace_addr = !(PAGE - 1);
        assert!(matches!(expect(r), Error::HvaOverflow { .. }));
        r.userspace_addr = 0;
        assert!(matches!(
            expect(r),
            Error::InvalidAddressSpace { as_id: 2, .. }
        ));
        r.slot = 1;
        assert!(matches!(expect(r), Error::GpaOverflow { .. }));
        r.guest_phys_addr = 0;
        r.memory_size = PAGE << 31;
        assert!(matches!(expect(r), Error::TooManyPages { .. }));
        r.memory_size = 0;
        assert!(matches!(expect(r), Error::NoSuchSlot { .. }));
        for e in [expect(req(1, 0, 0, 0, 0)), expect(req(0x7fff, 0, 0, 0, 0))] {
            assert_eq!(e.errno(), errno::EINVAL);
        }
    }

    #[test]
    fn user_address_limit_follows_the_hva_checks_and_covers_deletes() {
        const LIMIT: u64 = Limits::X86_64_USER_ADDRESS_LIMIT;
        let limits = Limits::default().with_user_address_limit(Some(LIMIT));
        let on = |r: UserspaceMemoryRegion| {
            check(&limits, &r, Origin::User)
                .and_then(|c| classify(&limits, c, &existing(), 0, Some(Arc::new(()))))
        };
        // Ending exactly at the limit is fine; one page further is not, for creates and deletes.
        assert!(on(req(2, 0, 0, 2 * PAGE, LIMIT - 2 * PAGE)).is_ok());
        assert!(matches!(
            on(req(2, 0, 0, 2 * PAGE, LIMIT - PAGE)),
            Err(Error::UserAddressLimit { limit: LIMIT, .. })
        ));
        assert!(on(req(1, 0, 0, 0, LIMIT)).is_ok(), "a delete at the limit");
        let e = on(req(1, 0, 0, 0, LIMIT + PAGE)).unwrap_err();
        assert!(matches!(e, Error::UserAddressLimit { .. }));
        assert_eq!(e.errno(), errno::EINVAL);
        // After the alignment and wrap checks, before the address-space check.
        assert!(matches!(
            on(req(0x5_0000, 0, 0, PAGE, LIMIT + 1)),
            Err(Error::UnalignedHva { .. })
        ));
        assert!(matches!(
            on(req(0x5_0000, 0, 0, 2 * PAGE, !(PAGE - 1))),
            Err(Error::HvaOverflow { .. })
        ));
        assert!(matches!(
            on(req(0x5_0000, 0, 0, PAGE, LIMIT)),
            Err(Error::UserAddressLimit { .. })
        ));
        // Off by default.
        assert!(run(&Space(vec![]), req(2, 0, 0, PAGE, LIMIT)).is_ok());
    }

    #[test]
    fn max_gfn_refuses_creates_and_moves_after_the_overlap_check() {
        let max = Gfn((1 << 40) - 1);
        let limits = Limits::default().with_max_gfn(Some(max));
        let s = existing();
        let on = |r: UserspaceMemoryRegion| {
            check(&limits, &r, Origin::User)
                .and_then(|c| classify(&limits, c, &s, 0, Some(Arc::new(()))))
        };
        let top = max.0 << 12;
        assert_eq!(
            on(req(2, 0, top, PAGE, 0)).map(|p| p.kind).ok(),
            Some(ChangeKind::Create)
        );
        let e = on(req(2, 0, top, 2 * PAGE, 0)).unwrap_err();
        assert!(matches!(e, Error::GfnBeyondMax { last_gfn, .. } if last_gfn == max.0 + 1));
        assert_eq!(e.errno(), errno::EINVAL);
        assert!(matches!(
            on(req(1, 0, top, 4 * PAGE, 0x100000)),
            Err(Error::GfnBeyondMax { .. })
        ));
        // A slot past the limit (made before the rule was on) may still change flags or go.
        let past = max.0 + 5;
        let slots = Space(vec![Memslot::new(
            SlotId::new(0, 3),
            Gfn(past),
            1,
            Hva(0),
            MemFlags::empty(),
            12,
            Arc::new(()),
        )]);
        let kind = |r| {
            let c = check(&limits, &r, Origin::User)?;
            classify(&limits, c, &slots, 1, Some(Arc::new(()))).map(|p| p.kind)
        };
        assert_eq!(
            kind(req(3, 1, past << 12, PAGE, 0)),
            Ok(ChangeKind::FlagsOnly)
        );
        assert_eq!(kind(req(3, 0, 0, 0, 0)), Ok(ChangeKind::Delete));
        // An overlap is reported before the gfn limit.
        assert!(matches!(
            kind(req(2, 0, (past - 1) << 12, 2 * PAGE, 0)),
            Err(Error::Overlap { .. })
        ));
    }

    #[test]
    fn readonly_is_refused_where_unsupported() {
        let limits = Limits::default().with_readonly(false);
        let r = req(0, MemFlags::READONLY.bits(), 0, PAGE, 0);
        assert!(matches!(
            check(&limits, &r, Origin::User),
            Err(Error::InvalidFlags { flags: 2 })
        ));
    }

    #[test]
    fn invalid_flag_is_never_accepted() {
        let r = req(0, MemFlags::INVALID.bits(), 0, PAGE, 0);
        assert!(matches!(
            check(&Limits::default(), &r, Origin::User),
            Err(Error::InvalidFlags { .. })
        ));
    }

    #[test]
    fn change_kinds() {
        let s = existing();
        let same = req(1, 0, 0x10000, 4 * PAGE, 0x100000);
        assert_eq!(run(&s, same), Ok(ChangeKind::Unchanged));
        assert_eq!(
            run(&s, req(1, 1, 0x10000, 4 * PAGE, 0x100000)),
            Ok(ChangeKind::FlagsOnly)
        );
        // A move may overlap the slot's own old position, and change flags too.
        assert_eq!(
            run(&s, req(1, 1, 0x12000, 4 * PAGE, 0x100000)),
            Ok(ChangeKind::Move)
        );
        assert_eq!(run(&s, req(1, 0, 0, 0, 0)), Ok(ChangeKind::Delete));
        assert_eq!(
            run(&s, req(2, 0, 0x20000, PAGE, 0x100000)),
            Ok(ChangeKind::Create),
            "host ranges may overlap"
        );
    }

    #[test]
    fn immutable_fields_and_overlaps() {
        let s = existing();
        let e = run(&s, req(1, 0, 0x10000, 4 * PAGE, 0x200000)).unwrap_err();
        assert!(matches!(
            e,
            Error::ImmutableField {
                field: SlotField::UserspaceAddr,
                ..
            }
        ));
        let e = run(&s, req(1, 0, 0x10000, 2 * PAGE, 0x100000)).unwrap_err();
        assert!(matches!(
            e,
            Error::ImmutableField {
                field: SlotField::Size,
                ..
            }
        ));
        let e = run(&s, req(1, 2, 0x10000, 4 * PAGE, 0x100000)).unwrap_err();
        assert!(matches!(
            e,
            Error::ImmutableField {
                field: SlotField::ReadOnly,
                ..
            }
        ));
        // Half-open: touching at either end is fine, one page in is not.
        assert!(run(&s, req(2, 0, 0xc000, 4 * PAGE, 0)).is_ok());
        assert!(run(&s, req(2, 0, 0x14000, PAGE, 0)).is_ok());
        let e = run(&s, req(2, 0, 0x13000, PAGE, 0)).unwrap_err();
        assert_eq!(e.errno(), errno::EEXIST);
    }

    #[test]
    fn internal_slots() {
        let l = Limits::default();
        let ok = req(32764, 0, 0, PAGE << 32, 0);
        assert!(check(&l, &ok, Origin::Internal).is_ok(), "no page limit");
        assert!(matches!(
            check(&l, &req(5, 0, 0, PAGE, 0), Origin::Internal),
            Err(Error::NotInternalSlot { .. })
        ));
        assert!(matches!(
            check(&l, &req(32764, 1, 0, PAGE, 0), Origin::Internal),
            Err(Error::InvalidFlags { .. })
        ));
        assert!(matches!(
            check(&l, &req(32767, 0, 0, PAGE, 0), Origin::Internal),
            Err(Error::InvalidSlotId { limit: 32767, .. })
        ));
    }
}
