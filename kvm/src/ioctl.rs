//! The memslot and dirty-log ioctls of a VM fd.
//!
//! `KVM_SET_USER_MEMORY_REGION` and the dirty-log calls make the kernel read or write memory the
//! caller describes by address and size; what makes each call sound is the caller's to
//! guarantee, and each function says what.

use std::os::fd::AsRawFd;

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_dirty_log,
    kvm_dirty_log__bindgen_ty_1, kvm_enable_cap, kvm_userspace_memory_region,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
};
use kvm_ioctls::VmFd;
use memslots::DirtyLogMode;

/// `_IOC(dir, 0xAE, nr, size)`, as `<asm-generic/ioctl.h>` builds KVM's request numbers.
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
/// `KVM_GET_DIRTY_LOG`: `_IOW(KVMIO, 0x42, struct kvm_dirty_log)`.
const KVM_GET_DIRTY_LOG: u64 = kvm_ioc(IOC_WRITE, 0x42, size_of::<kvm_dirty_log>());
/// `KVM_CLEAR_DIRTY_LOG`: `_IOWR(KVMIO, 0xc0, struct kvm_clear_dirty_log)`.
const KVM_CLEAR_DIRTY_LOG: u64 =
    kvm_ioc(IOC_WRITE | IOC_READ, 0xc0, size_of::<kvm_clear_dirty_log>());

/// The positive errno of a failed call.
pub type Errno = i32;

fn last_errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `KVM_SET_USER_MEMORY_REGION`.
///
/// # Errors
/// The kernel's errno.
///
/// # Safety
/// From the moment the call succeeds until the slot is deleted or replaced in KVM (or the VM is
/// gone), every byte of `[userspace_addr, userspace_addr + memory_size)` of a created slot must
/// be memory of this process that KVM may read and, unless `READONLY`, write on the guest's
/// behalf, and nothing may rely on it not changing behind its back. A delete, a move and a flags
/// change keep KVM on the range it already had.
pub unsafe fn set_user_memory_region(
    vm: &VmFd,
    region: kvm_userspace_memory_region,
) -> Result<(), Errno> {
    // SAFETY: the caller guarantees the range, as this function's contract says.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| e.errno())
}

/// `KVM_GET_DIRTY_LOG` for `slot` (address space in the high 16 bits), whose bitmap is
/// `words` `u64`s.
///
/// # Errors
/// The kernel's errno: EINVAL for a bad address space or id, ENOENT for a missing slot or one
/// that does not log.
///
/// # Safety
/// KVM writes the slot's whole bitmap, `ALIGN(npages, 64) / 8` bytes: if KVM holds `slot` with
/// logging on, it must have at most `64 * words` pages.
pub unsafe fn get_dirty_log(vm: &VmFd, slot: u32, words: usize) -> Result<Vec<u64>, Errno> {
    let mut bitmap = vec![0u64; words];
    let log = kvm_dirty_log {
        slot,
        padding1: 0,
        __bindgen_anon_1: kvm_dirty_log__bindgen_ty_1 {
            dirty_bitmap: bitmap.as_mut_ptr().cast(),
        },
    };
    // SAFETY: `log` is a valid `kvm_dirty_log` for the duration of the call; the kernel writes
    // at most the slot's bitmap into `bitmap`, which the caller guarantees is large enough.
    let ret = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_GET_DIRTY_LOG as _, &log) };
    if ret == 0 {
        Ok(bitmap)
    } else {
        Err(last_errno())
    }
}

/// `KVM_CLEAR_DIRTY_LOG`: clears the bits of `mask` in pages `first_page..first_page +
/// num_pages` of `slot`; `mask[0]` covers the 64 pages from `first_page`.
///
/// # Errors
/// The kernel's errno; EFAULT, without a call, when `mask` is shorter than the range (the
/// kernel would read past it).
pub fn clear_dirty_log(
    vm: &VmFd,
    slot: u32,
    first_page: u64,
    num_pages: u32,
    mask: &[u64],
) -> Result<(), Errno> {
    if (mask.len() as u64) < u64::from(num_pages).div_ceil(64) {
        return Err(libc::EFAULT);
    }
    let clear = kvm_clear_dirty_log {
        slot,
        num_pages,
        first_page,
        __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
            dirty_bitmap: mask.as_ptr().cast_mut().cast(),
        },
    };
    // SAFETY: `clear` is valid for the call; the kernel reads `ALIGN(num_pages, 64) / 8` bytes
    // of the mask (checked above to be inside `mask`) and never writes it.
    let ret = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_CLEAR_DIRTY_LOG as _, &clear) };
    if ret == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// `KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)` with `mode`'s arguments (0 turns manual
/// protection off).
///
/// # Errors
/// The kernel's errno (EINVAL where the capability or the mode is not supported).
pub fn set_dirty_log_mode(vm: &VmFd, mode: DirtyLogMode) -> Result<(), Errno> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        ..Default::default()
    };
    cap.args[0] = mode.cap_args();
    vm.enable_cap(&cap).map_err(|e| e.errno())
}
