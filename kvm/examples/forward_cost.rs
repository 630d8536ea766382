//! The cost of one forwarded update: memslots alone, the bare KVM ioctl, and `KvmVm` (memslots
//! plus the ioctl), for a flags change (logging on/off) and for a move, interleaved round by
//! round on one slot among `--slots` others.
//!
//! `cargo run --release -p memslots-kvm --example forward_cost -- [--rounds 15] [--ops 200] [--slots 64]`
//!
//! Prints per design the median (and min-max over rounds) of the per-round mean time per update.

use std::time::Instant;

use kvm_ioctls::{Kvm, VmFd};
use memslots::{MemFlags, Memslots, UserspaceMemoryRegion};
use memslots_kvm::{ioctl, KvmMemory, KvmVm};
use vm_memory::MmapRegion;

const PAGE: u64 = 4096;
const PAGES: u64 = 16;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The request a round alternates: step `i` of a flags change or a move of slot 0.
fn step(base: UserspaceMemoryRegion, moving: bool, i: usize) -> UserspaceMemoryRegion {
    if moving {
        UserspaceMemoryRegion {
            guest_phys_addr: base.guest_phys_addr + (i as u64 % 2) * (1 << 32),
            ..base
        }
    } else {
        UserspaceMemoryRegion {
            flags: (i % 2) as u32,
            ..base
        }
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let (rounds, ops, others) = (arg("--rounds", 15), arg("--ops", 200), arg("--slots", 64));
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => return println!("no usable /dev/kvm: {e}"),
    };
    let limits = memslots_kvm::probe_limits(&kvm, &kvm.create_vm().expect("VM")).expect("limits");
    let memory: Vec<MmapRegion> = (0..=others)
        .map(|_| MmapRegion::new((PAGES * PAGE) as usize).expect("mmap"))
        .collect();
    let region = |i: usize| {
        UserspaceMemoryRegion::new(
            i as u32,
            MemFlags::empty(),
            i as u64 * PAGES * PAGE,
            PAGES * PAGE,
            memory[i].host_addr(),
        )
    };

    // The same layout three times: memslots alone, a bare VM fd, and a KvmVm.
    let alone = Memslots::new(limits);
    let bare: VmFd = kvm.create_vm().expect("VM");
    let forwarded: KvmVm<MmapRegion> = KvmVm::with_limits(kvm.create_vm().expect("VM"), limits);
    for (i, m) in memory.iter().enumerate() {
        alone.set_user_memory_region(region(i)).unwrap();
        // SAFETY: `memory` outlives `bare` (declared before it, dropped after) and no vCPU runs.
        unsafe { ioctl::set_user_memory_region(&bare, region(i).into()) }.unwrap();
        let own = MmapRegion::new(m.size()).expect("mmap");
        let r = UserspaceMemoryRegion {
            userspace_addr: own.host_addr(),
            ..region(i)
        };
        forwarded.create_memory_region(r, own).unwrap();
    }
    let forwarded_base = forwarded.layout().regions[0];

    for (name, moving) in [("flags change", false), ("move", true)] {
        let mut times: [Vec<f64>; 3] = Default::default();
        for _ in 0..rounds {
            let t = Instant::now();
            for i in 1..=ops {
                alone
                    .set_user_memory_region(step(region(0), moving, i))
                    .unwrap();
            }
            times[0].push(t.elapsed().as_secs_f64() / ops as f64);
            let t = Instant::now();
            for i in 1..=ops {
                let r = step(region(0), moving, i);
                // SAFETY: as above.
                unsafe { ioctl::set_user_memory_region(&bare, r.into()) }.unwrap();
            }
            times[1].push(t.elapsed().as_secs_f64() / ops as f64);
            let t = Instant::now();
            for i in 1..=ops {
                forwarded
                    .set_user_memory_region(step(forwarded_base, moving, i))
                    .unwrap();
            }
            times[2].push(t.elapsed().as_secs_f64() / ops as f64);
        }
        println!(
            "{name}, slot 0 of {} ({rounds} rounds x {ops} updates):",
            others + 1
        );
        let mut medians = [0.0; 3];
        for (k, label) in [
            "memslots alone",
            "KVM ioctl alone",
            "KvmVm (memslots + ioctl)",
        ]
        .iter()
        .enumerate()
        {
            let (med, lo, hi) = median(times[k].clone());
            medians[k] = med;
            println!(
                "  {label:<26} median {:>9.2} us  (min {:.2}, max {:.2})",
                med * 1e6,
                lo * 1e6,
                hi * 1e6
            );
        }
        println!(
            "  KvmVm / (memslots + ioctl) = {:.2}",
            medians[2] / (medians[0] + medians[1])
        );
    }
}
