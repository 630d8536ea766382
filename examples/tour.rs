//! A tour of the crate: build a VM's memory map, look guest addresses up, see KVM's errors, keep
//! snapshots, and time slot setup (against the array design KVM replaced, with the `baseline`
//! feature).
//!
//! `cargo run --release --example tour [-- SLOTS]` (default 4096 slots for the timing); add
//! `--features baseline` for the comparison.

use std::time::Instant;

use memslots::{
    ChangeKind, Gfn, Hva, Limits, MemFlags, Memslots, UserspaceMemoryRegion, Version, Vm,
};

const MIB: u64 = 1 << 20;

fn main() -> Result<(), memslots::Error> {
    let vm = Memslots::new(Limits::default());

    println!("== a small VM ==");
    let low_ram =
        UserspaceMemoryRegion::new(0, MemFlags::LOG_DIRTY_PAGES, 0, 768 * MIB, 0x7f00_0000_0000);
    let high_ram = UserspaceMemoryRegion::new(
        1,
        MemFlags::empty(),
        4096 * MIB,
        1024 * MIB,
        0x7f00_4000_0000,
    );
    let rom = UserspaceMemoryRegion::new(
        2,
        MemFlags::READONLY,
        0xfffc_0000,
        256 << 10,
        0x7f10_0000_0000,
    );
    for region in [low_ram, high_ram, rom] {
        let kind = vm.set_user_memory_region(region)?;
        println!("slot {} -> {kind:?}", region.slot);
    }
    let slots = vm.snapshot(0);
    for slot in &*slots {
        println!("  {slot:?}");
    }

    println!("\n== lookups ==");
    for gfn in [Gfn(0x100), Gfn(0x10_0042), Gfn(0xfffc1), Gfn(0x40000)] {
        match slots.find(gfn) {
            Some(slot) => println!(
                "{gfn:?} -> slot {} at {:?} (write: {:?})",
                slot.id(),
                slot.gfn_to_hva(gfn),
                slot.gfn_to_hva_prot(gfn, true)
            ),
            None => println!("{gfn:?} -> no slot (an MMIO exit in a real VMM)"),
        }
    }
    let page = Hva(0x7f00_4000_5000);
    for (slot, gfns) in slots.hva_range(page, Hva(page.0 + 4096)) {
        println!(
            "host page {page:?} backs slot {} frames {gfns:?}",
            slot.id()
        );
    }

    println!("\n== requests KVM refuses, refused the same way ==");
    let bad = [
        (
            "overlapping RAM",
            UserspaceMemoryRegion::new(3, MemFlags::empty(), 512 * MIB, MIB, 0x7f20_0000_0000),
        ),
        (
            "misaligned gpa",
            UserspaceMemoryRegion::new(3, MemFlags::empty(), 0x1234, MIB, 0x7f20_0000_0000),
        ),
        (
            "resizing a slot",
            UserspaceMemoryRegion {
                memory_size: 512 * MIB,
                ..low_ram
            },
        ),
        ("deleting nothing", UserspaceMemoryRegion::delete(9)),
    ];
    for (what, region) in bad {
        let err = vm.set_user_memory_region(region).unwrap_err();
        println!("{what}: errno {} ({err})", err.errno());
    }

    println!("\n== snapshots are versions ==");
    let before = vm.snapshot(0);
    let moved = UserspaceMemoryRegion {
        guest_phys_addr: 8192 * MIB,
        ..high_ram
    };
    assert_eq!(vm.set_user_memory_region(moved)?, ChangeKind::Move);
    let after = vm.snapshot(0);
    println!(
        "slot 1 starts at {:?} in generation {} and at {:?} in generation {}",
        before.get(1).map(|s| s.base_gfn()),
        before.generation(),
        after.get(1).map(|s| s.base_gfn()),
        after.generation()
    );

    let n: u16 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4096)
        .min(Limits::default().user_slots());
    println!("\n== slot setup: {n} slots, one published version each ==");
    let trees = time_setup(&Memslots::new(Limits::default()), n);
    println!("trees (this crate):  {trees:.4} s");
    #[cfg(feature = "baseline")]
    {
        let array = time_setup(
            &memslots::baseline::ArrayMemslots::new(Limits::default()),
            n,
        );
        println!(
            "array (before 2021): {array:.4} s  (the trees are {:.1}x faster)",
            array / trees
        );
    }
    #[cfg(not(feature = "baseline"))]
    println!("(run with --features baseline to time the array design KVM replaced)");
    Ok(())
}

/// Creates `n` one-page slots from empty; returns the seconds it took.
fn time_setup<S: Version>(vm: &Vm<S>, n: u16) -> f64 {
    let start = Instant::now();
    for id in 0..n {
        let region = UserspaceMemoryRegion::new(
            u32::from(id),
            MemFlags::empty(),
            u64::from(id) << 12,
            4096,
            0x7000_0000_0000 + (u64::from(id) << 12),
        );
        vm.set_user_memory_region(region).expect("valid layout");
    }
    start.elapsed().as_secs_f64()
}
