//! End to end: a guest writes its memory while the VMM hot-plugs, moves and unplugs a slot through
//! `KvmVm`, device threads read and write the same memory through memslots' byte API, and a
//! migration-style loop copies the pages the merged dirty logs report to a "destination". Then
//! it checks what happened: the guest's last writes are where the layout says, and the
//! destination holds every logged page exactly as the source does (no guest or device write
//! was missed), in both dirty-log modes.
//!
//! `cargo run --release -p memslots-kvm --example hotplug -- [--cycles 20]`

#[path = "../tests/support/guest.rs"]
mod guest;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuExit};
use memslots::{Backing, DirtyLogMode, Gpa, MemFlags, UserspaceMemoryRegion};
use memslots_kvm::{KvmMemory, KvmVm};
use vm_memory::MmapRegion;

const PAGE: u64 = 4096;
const CODE_GPA: u64 = 0xffff_f000;
const RAM: u32 = 0; // slot 0: 1 MiB at 0, logged; pages 64.. are the devices'
const RAM_PAGES: u64 = 256;
const DEVICE_PAGES: std::ops::Range<u64> = 64..96;
const HOT: u32 = 1; // slot 1: 64 pages, plugged at A, moved to B, unplugged
const HOT_PAGES: u64 = 64;
const HOT_A: u64 = 0x1000_0000;
const HOT_B: u64 = 0x2000_0000;

/// Writes the round number (eax) to every gpa of the table at +0x100 (count at +0xfc), spins,
/// reports the round with `out 0x12, eax`, and starts the next.
const LOOP: &[u8] = &[
    0xbe, 0x00, 0xf1, 0xff, 0xff, // mov esi, 0xfffff100
    0x8b, 0x0d, 0xfc, 0xf0, 0xff, 0xff, // mov ecx, [0xfffff0fc]
    0x8b, 0x1e, // next: mov ebx, [esi]
    0x89, 0x03, // mov [ebx], eax
    0x83, 0xc6, 0x04, // add esi, 4
    0x49, // dec ecx
    0x75, 0xf6, // jnz next
    0xba, 0x00, 0x40, 0x00, 0x00, // mov edx, 0x4000
    0x4a, // spin: dec edx
    0x75, 0xfd, // jnz spin
    0xe7, 0x12, // out 0x12, eax
    0x40, // inc eax
    0xeb, 0xde, // jmp start
];

/// The gpas the guest writes: some of the RAM, and pages of the hot slot at both its places.
fn targets() -> Vec<u64> {
    let mut t: Vec<u64> = (0..8).map(|i| i * 8 * PAGE + 0x10).collect();
    for base in [HOT_A, HOT_B] {
        t.extend((0..HOT_PAGES).step_by(9).map(|p| base + p * PAGE + 0x20));
    }
    t
}

fn memory(pages: u64) -> MmapRegion {
    MmapRegion::new((pages * PAGE) as usize).expect("mmap")
}

fn region(slot: u32, flags: MemFlags, gpa: u64, m: &MmapRegion) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(slot, flags, gpa, m.len() as u64, m.host_addr())
}

#[derive(Default)]
struct Counts {
    rounds: AtomicU64,
    mmio: AtomicU64,
    device_writes: AtomicU64,
    device_refused: AtomicU64,
}

/// The migration side: a copy of every logged page, refreshed from the dirty logs.
#[derive(Default)]
struct Destination {
    pages: HashMap<(u32, u64), Vec<u8>>,
    harvests: u64,
    copied: u64,
}

impl Destination {
    /// One pass: for each logged slot, its dirty pages (re-armed in manual mode) copied over.
    fn harvest(&mut self, vm: &KvmVm<MmapRegion>, mode: DirtyLogMode) {
        self.harvests += 1;
        let set = vm.snapshot(0);
        for slot in set.iter().filter(|s| s.dirty_logging()) {
            let id = u32::from(slot.slot_id());
            let bitmap = vm.get_dirty_log(id).expect("a logged slot");
            if mode.manual_protect() {
                vm.clear_dirty_log(id, 0, slot.npages() as u32, &bitmap)
                    .expect("clear");
            }
            for page in (0..slot.npages()).filter(|p| bitmap[*p as usize / 64] >> (p % 64) & 1 != 0)
            {
                let mut bytes = vec![0; PAGE as usize];
                slot.backing().read_at((page * PAGE) as usize, &mut bytes);
                self.pages.insert((id, page), bytes);
                self.copied += 1;
            }
        }
    }

    fn forget(&mut self, slot: u32) {
        self.pages.retain(|(s, _), _| *s != slot);
    }
}

fn run(kvm: &Kvm, mode: DirtyLogMode, cycles: usize) {
    let vm = Arc::new(KvmVm::<MmapRegion>::new(kvm, kvm.create_vm().expect("VM")).expect("limits"));
    vm.set_dirty_log_mode(mode).expect("dirty-log mode");

    let code = memory(1);
    code.write_at(0, LOOP);
    let table = targets();
    code.write_at(0xfc, &(table.len() as u32).to_le_bytes());
    for (i, gpa) in table.iter().enumerate() {
        code.write_at(0x100 + 4 * i, &(*gpa as u32).to_le_bytes());
    }
    vm.create_memory_region(region(100, MemFlags::empty(), CODE_GPA, &code), code)
        .unwrap();
    let ram = memory(RAM_PAGES);
    vm.create_memory_region(region(RAM, MemFlags::LOG_DIRTY_PAGES, 0, &ram), ram)
        .unwrap();
    // Everything is dirty to begin with: the destination starts from a full copy.
    let mut dest = Destination::default();
    let snapshot = vm.snapshot(0);
    let first = snapshot.get(0).unwrap();
    for page in 0..RAM_PAGES {
        let mut bytes = vec![0; PAGE as usize];
        first.backing().read_at((page * PAGE) as usize, &mut bytes);
        dest.pages.insert((RAM, page), bytes);
    }
    drop(snapshot);
    dest.harvest(&vm, mode);

    let counts = Arc::new(Counts::default());
    let stop_guest = Arc::new(AtomicBool::new(false));
    let stop_devices = Arc::new(AtomicBool::new(false));

    let mut vcpu = guest::flat_vcpu(vm.vm_fd(), 0);
    let mut regs = vcpu.get_regs().unwrap();
    (regs.rip, regs.rflags, regs.rax) = (CODE_GPA, 2, 1);
    vcpu.set_regs(&regs).unwrap();
    let vcpu_thread = {
        let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop_guest));
        thread::spawn(move || loop {
            match vcpu.run().expect("KVM_RUN") {
                VcpuExit::IoOut(0x12, data) => {
                    let round = u32::from_le_bytes(data.try_into().unwrap());
                    counts.rounds.store(round.into(), Ordering::SeqCst);
                    if stop.load(Ordering::SeqCst) {
                        return round;
                    }
                }
                // A target in a hole (the hot slot elsewhere or unplugged).
                VcpuExit::MmioWrite(..) => {
                    counts.mmio.fetch_add(1, Ordering::Relaxed);
                }
                other => panic!("unexpected exit {other:?}"),
            }
        })
    };
    let devices: Vec<_> = (0..2u64)
        .map(|d| {
            let reader = vm.reader();
            let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop_devices));
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let page =
                        DEVICE_PAGES.start + (n * 7 + d) % (DEVICE_PAGES.end - DEVICE_PAGES.start);
                    let gpa = Gpa(page * PAGE + 8 * d);
                    let mut section = reader.read();
                    section
                        .write_guest_obj(0, gpa, n)
                        .expect("device RAM is always there");
                    assert_eq!(section.read_guest_obj::<u64>(0, gpa).unwrap(), n);
                    // And into the hot slot, which comes and goes.
                    let hot = Gpa(if n % 2 == 0 { HOT_A } else { HOT_B } + 0x800 + 8 * d);
                    match section.write_guest_obj(0, hot, n) {
                        Ok(()) => counts.device_writes.fetch_add(2, Ordering::Relaxed),
                        Err(_) => {
                            counts.device_refused.fetch_add(1, Ordering::Relaxed);
                            counts.device_writes.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    drop(section);
                    if n % 64 == 0 {
                        thread::sleep(Duration::from_micros(50));
                    }
                }
            })
        })
        .collect();

    // The VMM: plug, move, unplug, harvesting dirty pages all along.
    let started = Instant::now();
    let (mut plugs, mut moves, mut unplugs) = (0, 0, 0);
    let wait_rounds = |n: u64| {
        let until = counts.rounds.load(Ordering::SeqCst) + n;
        while counts.rounds.load(Ordering::SeqCst) < until {
            thread::sleep(Duration::from_micros(200));
        }
    };
    for cycle in 0..=cycles {
        let hot = memory(HOT_PAGES);
        vm.create_memory_region(region(HOT, MemFlags::LOG_DIRTY_PAGES, HOT_A, &hot), hot)
            .unwrap();
        plugs += 1;
        wait_rounds(2);
        dest.harvest(&vm, mode);
        let at_b = UserspaceMemoryRegion {
            guest_phys_addr: HOT_B,
            ..vm.layout()
                .regions
                .iter()
                .find(|r| r.slot == HOT)
                .copied()
                .unwrap()
        };
        vm.set_user_memory_region(at_b).unwrap();
        moves += 1;
        wait_rounds(2);
        dest.harvest(&vm, mode);
        if cycle == cycles {
            break; // the last one stays plugged, at B
        }
        vm.set_user_memory_region(UserspaceMemoryRegion::delete(HOT))
            .unwrap();
        dest.forget(HOT);
        unplugs += 1;
    }
    // Quiesce: devices first, then the guest after two full rounds on the final layout.
    stop_devices.store(true, Ordering::SeqCst);
    for d in devices {
        d.join().expect("a device thread failed");
    }
    wait_rounds(2);
    stop_guest.store(true, Ordering::SeqCst);
    let last = u64::from(vcpu_thread.join().expect("the vCPU thread failed"));
    dest.harvest(&vm, mode);
    let elapsed = started.elapsed();

    // The guest's last round is where the layout says: in RAM and in the hot slot at B, read
    // both through the byte API and straight from the slot's memory; nothing at A.
    let set = vm.snapshot(0);
    let mut checked = 0;
    for gpa in targets() {
        match set.find(memslots::Gfn(gpa >> 12)) {
            Some(slot) => {
                let through_api = set.read_guest_obj::<u32>(Gpa(gpa)).unwrap();
                let mut raw = [0; 4];
                let offset = gpa - (slot.base_gfn().0 << 12);
                slot.backing().read_at(offset as usize, &mut raw);
                assert_eq!(u64::from(through_api), last, "gpa {gpa:#x}");
                assert_eq!(u32::from_le_bytes(raw), through_api);
                checked += 1;
            }
            None => assert!((HOT_A..HOT_A + HOT_PAGES * PAGE).contains(&gpa)),
        }
    }
    // The destination has every logged page as the source has it.
    let mut pages = 0;
    for slot in set.iter().filter(|s| s.dirty_logging()) {
        let id = u32::from(slot.slot_id());
        for page in 0..slot.npages() {
            let mut now = vec![0; PAGE as usize];
            slot.backing().read_at((page * PAGE) as usize, &mut now);
            let copied = dest.pages.get(&(id, page));
            // A hot-slot page never written was never dirty: it is still zero.
            let expected_zero = copied.is_none() && now.iter().all(|&b| b == 0);
            assert!(
                expected_zero || copied == Some(&now),
                "slot {id} page {page} missed by the dirty log"
            );
            pages += 1;
        }
    }
    println!(
        "{mode:?}: {:.2} s, {last} guest rounds ({} targets each, {} MMIO exits in holes), \
         {plugs} plugs, {moves} moves, {unplugs} unplugs, {} device writes ({} refused: hot slot \
         away), {} harvests copying {} pages; checked {checked} targets and {pages} logged \
         pages: all as the layout and the dirty logs say",
        elapsed.as_secs_f64(),
        targets().len(),
        counts.mmio.load(Ordering::Relaxed),
        counts.device_writes.load(Ordering::Relaxed),
        counts.device_refused.load(Ordering::Relaxed),
        dest.harvests,
        dest.copied,
    );
    assert!(counts.mmio.load(Ordering::Relaxed) > 0 && dest.copied > 0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cycles = args
        .iter()
        .position(|a| a == "--cycles")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(20);
    let Some(kvm) = guest::kvm_or_skip("hotplug example") else {
        return;
    };
    for mode in [
        DirtyLogMode::FetchAndClear,
        DirtyLogMode::ManualProtect {
            initially_set: false,
        },
    ] {
        run(&kvm, mode, cycles);
    }
}
