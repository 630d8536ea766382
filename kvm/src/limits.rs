//! [`Limits`] as the running kernel has them.

use kvm_bindings::{
    kvm_userspace_memory_region, KVM_CAP_MULTI_ADDRESS_SPACE, KVM_CAP_NR_MEMSLOTS,
    KVM_CAP_READONLY_MEM,
};
use kvm_ioctls::{Kvm, VmFd};
use memslots::{Gfn, Limits};

use crate::ioctl;

/// Internal slots x86 keeps above the user ones (`KVM_INTERNAL_MEM_SLOTS`): the total is the
/// user count plus these, at most `SHRT_MAX`.
const X86_INTERNAL_SLOTS: u16 = 3;

/// The limits of `vm` as the kernel enforces them.
///
/// Read from `vm`'s capabilities: the user-slot count (`KVM_CAP_NR_MEMSLOTS`), the address spaces
/// (`KVM_CAP_MULTI_ADDRESS_SPACE`; 0, as kernels built without SMM answer, means one) and
/// read-only slots (`KVM_CAP_READONLY_MEM`). The user address bound and the largest gfn have no
/// capability; rather than recompute them (`TASK_SIZE_MAX` depends on the paging mode, and
/// `kvm_mmu_max_gfn()` on whether the MMU uses two-dimensional paging, which a nested or
/// para-virtualised host does not say), they are found by binary search with one-page creates on
/// a scratch VM of `kvm`: about 90 ioctls, each create followed by its delete.
///
/// # Errors
/// Creating the scratch VM failed.
pub fn probe_limits(kvm: &Kvm, vm: &VmFd) -> Result<Limits, kvm_ioctls::Error> {
    let user = u16::try_from(vm.check_extension_raw(KVM_CAP_NR_MEMSLOTS.into()))
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(Limits::default().user_slots());
    let total = user
        .saturating_add(X86_INTERNAL_SLOTS)
        .min(Limits::MAX_SLOTS);
    let spaces = vm
        .check_extension_raw(KVM_CAP_MULTI_ADDRESS_SPACE.into())
        .clamp(1, memslots::MAX_ADDRESS_SPACES as i32) as u16;
    let readonly = vm.check_extension_raw(KVM_CAP_READONLY_MEM.into()) > 0;
    let scratch = kvm.create_vm()?;
    let base = Limits::default()
        .with_slots(user, total)
        .and_then(|l| l.with_address_spaces(spaces))
        .expect("the kernel's counts are in range")
        .with_readonly(readonly);
    Ok(base
        .with_user_address_limit(probe_user_address_limit(&scratch))
        .with_max_gfn(probe_max_gfn(&scratch)))
}

const PAGE: u64 = 4096;

/// Whether a one-page create of slot 0 at `gpa`, `hva` succeeds on an empty VM (deleted again).
fn creates(vm: &VmFd, gpa: u64, hva: u64) -> bool {
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: PAGE,
        userspace_addr: hva,
    };
    // SAFETY: the scratch VM has no vCPU, so nothing ever accesses the slot's host range; it
    // is deleted at once.
    let created = unsafe { ioctl::set_user_memory_region(vm, region) };
    if created.is_err() {
        return false;
    }
    let delete = kvm_userspace_memory_region {
        memory_size: 0,
        userspace_addr: 0,
        ..region
    };
    // SAFETY: as above.
    unsafe { ioctl::set_user_memory_region(vm, delete) }.expect("deleting the probe slot");
    true
}

/// The largest `x` in `lo..=hi` (pages) with `ok(x)`, given `ok(lo)`; `ok` is monotone.
fn largest(mut lo: u64, mut hi: u64, ok: impl Fn(u64) -> bool) -> u64 {
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if ok(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// The bound `userspace_addr + memory_size` may reach, or `None` when every non-wrapping range
/// is accepted.
fn probe_user_address_limit(vm: &VmFd) -> Option<u64> {
    let top = u64::MAX / PAGE - 1; // the last page whose end does not wrap
    if creates(vm, 0, top * PAGE) {
        return None;
    }
    let page = largest(0, top, |p| creates(vm, 0, p * PAGE));
    Some((page + 1) * PAGE)
}

/// The largest gfn a slot may reach, or `None` when every non-wrapping gfn is accepted.
fn probe_max_gfn(vm: &VmFd) -> Option<Gfn> {
    let top = u64::MAX / PAGE;
    if creates(vm, top * PAGE, PAGE) {
        return None;
    }
    Some(Gfn(largest(0, top, |gfn| creates(vm, gfn * PAGE, PAGE))))
}
