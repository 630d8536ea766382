//! A tiny guest for probing a VM's memory layout: flat 32-bit protected mode, no paging, one
//! load or store per run at a gpa the host chooses, reported through port I/O. A hole or a write
//! to a `READONLY` slot exits as MMIO on the way.
#![allow(dead_code)] // each test and example uses part of it

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// The probe program, at any gpa below 4 GiB. On entry `ebx` holds the gpa, `ecx` 0 for a load
/// (reported with `out 0x10, eax`) or 1 for a store of `edx` (then `out 0x11`).
pub const CODE: &[u8] = &[
    0x83, 0xf9, 0x00, // cmp ecx, 0
    0x75, 0x05, //       jne store
    0x8b, 0x03, //       mov eax, [ebx]
    0xe7, 0x10, //       out 0x10, eax
    0xf4, //             hlt
    0x89, 0x13, // store: mov [ebx], edx
    0xe7, 0x11, //       out 0x11, eax
    0xf4, //             hlt
];
const LOADED: u16 = 0x10;
const STORED: u16 = 0x11;

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// The load returned this value from memory.
    Loaded(u32),
    /// The store went to memory.
    Stored,
    /// The access exited as MMIO at this gpa (a hole, or a write to a read-only slot).
    Mmio(u64),
    /// `KVM_RUN` failed with this errno.
    Failed(i32),
    /// The vCPU stopped some other way (it could not fetch its code, say).
    Stopped(String),
}

/// One vCPU running [`CODE`].
pub struct Guest {
    vcpu: VcpuFd,
    code_gpa: u32,
}

impl Guest {
    /// vCPU 0 of `vm`, in flat protected mode, to run [`CODE`] placed at `code_gpa`.
    pub fn new(vm: &VmFd, code_gpa: u32) -> Self {
        Self {
            vcpu: flat_vcpu(vm, 0),
            code_gpa,
        }
    }

    /// A 4-byte load at `gpa` (4-aligned).
    pub fn load(&mut self, gpa: u32) -> Access {
        self.run(gpa, None)
    }

    /// A 4-byte store of `value` at `gpa` (4-aligned).
    pub fn store(&mut self, gpa: u32, value: u32) -> Access {
        self.run(gpa, Some(value))
    }

    fn run(&mut self, gpa: u32, store: Option<u32>) -> Access {
        let mut regs = self.vcpu.get_regs().expect("KVM_GET_REGS");
        regs.rip = u64::from(self.code_gpa);
        regs.rflags = 2;
        regs.rbx = u64::from(gpa);
        regs.rcx = u64::from(store.is_some());
        regs.rdx = u64::from(store.unwrap_or(0));
        self.vcpu.set_regs(&regs).expect("KVM_SET_REGS");
        let mut mmio = None;
        // An MMIO exit is completed by running on; the program then reports through its port.
        loop {
            match self.vcpu.run() {
                Ok(VcpuExit::IoOut(LOADED, data)) => {
                    let value = u32::from_le_bytes(data.try_into().expect("4-byte out"));
                    return mmio.map_or(Access::Loaded(value), Access::Mmio);
                }
                Ok(VcpuExit::IoOut(STORED, _)) => {
                    return mmio.map_or(Access::Stored, Access::Mmio);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    data.fill(0);
                    mmio = Some(addr);
                }
                Ok(VcpuExit::MmioWrite(addr, _)) => mmio = Some(addr),
                Ok(other) => return Access::Stopped(format!("{other:?}")),
                Err(e) => return Access::Failed(e.errno()),
            }
        }
    }
}

/// vCPU `id` of `vm` in flat 32-bit protected mode (every segment base 0, limit 4 GiB), paging
/// off: gpas below 4 GiB are its linear addresses.
pub fn flat_vcpu(vm: &VmFd, id: u64) -> VcpuFd {
    let vcpu = vm.create_vcpu(id).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    for seg in [
        &mut sregs.cs,
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.ss,
        &mut sregs.fs,
        &mut sregs.gs,
    ] {
        seg.base = 0;
        seg.limit = 0xffff_ffff;
        seg.g = 1;
        seg.db = 1;
        seg.present = 1;
        seg.s = 1;
        seg.dpl = 0;
        seg.type_ = 3; // read/write data, accessed
        seg.selector = 0x10;
    }
    sregs.cs.type_ = 11; // execute/read code, accessed
    sregs.cs.selector = 0x8;
    sregs.cr0 |= 1; // protected mode, paging off
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    vcpu
}

/// `/dev/kvm`, if it can create a VM; otherwise says in one line that `what` is skipped.
pub fn kvm_or_skip(what: &str) -> Option<Kvm> {
    match Kvm::new().and_then(|kvm| kvm.create_vm().map(|_| kvm)) {
        Ok(kvm) => Some(kvm),
        Err(e) => {
            println!("{what} skipped: /dev/kvm cannot create a VM ({e})");
            None
        }
    }
}
