//! Keeping, comparing and saving versions of a VM's memory layout.
//!
//! Boots a VM from a layout, keeps a snapshot after each change as memory is hot-plugged, moved,
//! logged and unplugged, prints what changed between snapshots, drives a backend (a stand-in for
//! a vhost-user device) from version to version, and saves and restores the layout as JSON.
//!
//! Run with `cargo run --example snapshot_diff --features serde`.

use std::collections::BTreeMap;
use std::error::Error;

use memslots::{
    replay, Diff, Layout, Limits, MemFlags, MemoryListener, Memslot, Memslots, Snapshot,
    UserspaceMemoryRegion,
};

const GIB: u64 = 1 << 30;

fn describe(slot: &Memslot) -> String {
    format!(
        "slot {} gfn {:#x}..{:#x} at hva {:#x}{}",
        slot.slot_id(),
        slot.base_gfn().0,
        slot.end_gfn().0,
        slot.userspace_addr().0,
        if slot.dirty_logging() {
            " (logged)"
        } else {
            ""
        }
    )
}

/// A device backend's copy of guest memory: it must never hold two overlapping regions, so it
/// relies on `replay` sending every removal before any addition.
#[derive(Default)]
struct Backend {
    table: BTreeMap<u16, (u64, u64)>,
}

impl MemoryListener for Backend {
    fn begin(&mut self) {
        println!("    backend: begin");
    }
    fn region_del(&mut self, slot: &Memslot) {
        println!("    backend: unmap {}", describe(slot));
        self.table.remove(&slot.id());
    }
    fn region_add(&mut self, slot: &Memslot) {
        let (start, end) = (slot.base_gfn().0, slot.end_gfn().0);
        assert!(
            self.table.values().all(|&(s, e)| e <= start || end <= s),
            "the backend would hold overlapping regions"
        );
        println!("    backend: map {}", describe(slot));
        self.table.insert(slot.id(), (start, end));
    }
    fn log_start(&mut self, _old: &Memslot, new: &Memslot) {
        println!("    backend: start logging writes to {}", describe(new));
    }
    fn log_stop(&mut self, _old: &Memslot, new: &Memslot) {
        println!("    backend: stop logging writes to {}", describe(new));
    }
    fn commit(&mut self) {
        println!("    backend: commit, {} regions", self.table.len());
    }
}

fn print_diff(from: &Snapshot, to: &Snapshot) {
    let mut changes = from.diff(to);
    for change in changes.by_ref() {
        match change {
            Diff::Added(slot) => println!("    + {}", describe(slot)),
            Diff::Removed(slot) => println!("    - {}", describe(slot)),
            Diff::Changed { old, new } => {
                println!("    ~ {}\n      -> {}", describe(old), describe(new));
            }
        }
    }
    println!("    ({} tree nodes visited)", changes.nodes_visited());
}

fn main() -> Result<(), Box<dyn Error>> {
    let limits = Limits::default();
    // Host addresses are where a VMM would have mapped the memory; nothing is mapped here.
    let boot = Layout {
        regions: vec![
            UserspaceMemoryRegion::new(0, MemFlags::empty(), 0, 2 * GIB, 0x7f00_0000_0000),
            UserspaceMemoryRegion::new(3, MemFlags::empty(), 4 * GIB, 2 * GIB, 0x7f80_0000_0000),
        ],
    };
    let vm = Memslots::from_layout(limits, &boot)?;
    let mut backend = Backend::default();
    let empty = Memslots::new(limits).snapshot(0);
    println!("boot:");
    replay(&empty, &vm.snapshot(0), &mut backend);

    let dimm = UserspaceMemoryRegion::new(2, MemFlags::empty(), 8 * GIB, GIB, 0x7e00_0000_0000);
    let steps: [(&str, UserspaceMemoryRegion); 5] = [
        ("hot-plug a DIMM at 8 GiB", dimm),
        (
            "move the DIMM to 6 GiB",
            UserspaceMemoryRegion {
                guest_phys_addr: 6 * GIB,
                ..dimm
            },
        ),
        (
            "start dirty logging on low RAM (migration)",
            UserspaceMemoryRegion {
                flags: MemFlags::LOG_DIRTY_PAGES.bits(),
                ..boot.regions[0]
            },
        ),
        ("unplug high RAM", UserspaceMemoryRegion::delete(3)),
        (
            "move the DIMM into the range high RAM left",
            UserspaceMemoryRegion {
                guest_phys_addr: 4 * GIB,
                ..dimm
            },
        ),
    ];

    let mut kept = vec![vm.snapshot(0)];
    for (what, request) in steps {
        let kind = vm.set_user_memory_region(request)?;
        let now = vm.snapshot(0);
        let before = kept.last().expect("the boot snapshot");
        println!("\n{what}: {kind:?}, generation {}", now.generation());
        print_diff(before, &now);
        replay(before, &now, &mut backend);
        kept.push(now);
    }

    // The last two steps at once, as a backend that slept through them would see them: the
    // unplug of slot 3 is sent before slot 2 moves onto its range, although the diff lists
    // slot 2 first.
    println!("\nthe last two steps in one replay:");
    let mut late = Backend::default();
    replay(&empty, &kept[3], &mut late);
    replay(&kept[3], &kept[5], &mut late);

    println!("\nfrom boot to now:");
    print_diff(&kept[0], &kept[5]);
    println!(
        "kept {} snapshots; the boot one still has {} slots",
        kept.len(),
        kept[0].len()
    );

    let saved = serde_json::to_string_pretty(&vm.layout())?;
    println!("\nsaved layout:\n{saved}");
    let restored = Memslots::from_layout(limits, &serde_json::from_str(&saved)?)?;
    assert_eq!(restored.layout(), vm.layout());
    println!(
        "restored: the same {} regions",
        restored.layout().regions.len()
    );
    println!(
        "differences from the boot layout: {:?}",
        boot.diff(&restored.layout())
            .iter()
            .map(|d| match d {
                Diff::Added(r) => format!("added slot {}", r.slot_id()),
                Diff::Removed(r) => format!("removed slot {}", r.slot_id()),
                Diff::Changed { new, .. } => format!("changed slot {}", new.slot_id()),
            })
            .collect::<Vec<_>>()
    );

    let tampered = saved.replacen(
        "\"guest_phys_addr\": 0",
        "\"guest_phys_addr\": 4294967296",
        1,
    );
    let refused = Memslots::from_layout(limits, &serde_json::from_str(&tampered)?)
        .expect_err("low RAM moved onto the DIMM overlaps it");
    println!(
        "a tampered layout is refused: {refused} (errno {})",
        refused.errno()
    );
    Ok(())
}
