//! `Layout`: listing a VM's slots, rebuilding a VM from a listing, and (with `serde`) loading
//! listings from JSON, including malformed and hostile ones.

use memslots::{
    errno, ChangeKind, Diff, Error, Layout, Limits, MemFlags, Memslots, SlotField, SlotId,
    UserspaceMemoryRegion,
};

const PAGE: u64 = 4096;

fn region(slot: u32, flags: MemFlags, gpa: u64, size: u64, hva: u64) -> UserspaceMemoryRegion {
    UserspaceMemoryRegion::new(slot, flags, gpa, size, hva)
}

/// A VM with slots in both address spaces, created out of gfn order, one of them moved and one
/// logged.
fn busy_vm() -> Memslots {
    let vm = Memslots::new(Limits::default());
    let smm = 1 << 16;
    for req in [
        region(3, MemFlags::empty(), 0x100_0000, 16 * PAGE, 0x7000_0000),
        region(1, MemFlags::LOG_DIRTY_PAGES, 0, 16 * PAGE, 0x7100_0000),
        region(smm | 2, MemFlags::READONLY, 0x3_0000, PAGE, 0x7200_0000),
        region(7, MemFlags::READONLY, 0x20_0000, 4 * PAGE, 0x7300_0000),
        region(smm, MemFlags::empty(), 0, 8 * PAGE, 0x7100_0000),
        // Move slot 3 below slot 7.
        region(3, MemFlags::empty(), 0x10_0000, 16 * PAGE, 0x7000_0000),
    ] {
        vm.set_user_memory_region(req).unwrap();
    }
    vm
}

fn load(regions: Vec<UserspaceMemoryRegion>) -> Result<Memslots, Error> {
    Memslots::from_layout(Limits::default(), &Layout { regions })
}

#[test]
fn a_layout_lists_address_space_then_gfn_order() {
    let layout = busy_vm().layout();
    let order: Vec<(u32, u64)> = layout
        .regions
        .iter()
        .map(|r| (r.slot, r.guest_phys_addr))
        .collect();
    assert_eq!(
        order,
        [
            (1, 0),
            (3, 0x10_0000),
            (7, 0x20_0000),
            (1 << 16, 0),
            ((1 << 16) | 2, 0x3_0000)
        ]
    );
    assert_eq!(layout.regions[0].flags, MemFlags::LOG_DIRTY_PAGES.bits());
    assert_eq!(layout.regions[0].memory_size, 16 * PAGE);
    assert_eq!(layout.regions[0].userspace_addr, 0x7100_0000);
}

#[test]
fn a_vm_rebuilt_from_its_layout_is_the_same() {
    let vm = busy_vm();
    let layout = vm.layout();
    let mut shuffled = layout.regions.clone();
    shuffled.reverse();
    let copy = load(shuffled).unwrap();
    assert_eq!(copy.layout(), layout);
    assert_eq!(copy.total_pages(), vm.total_pages());
    for a in 0..2 {
        let (old, new) = (vm.snapshot(a), copy.snapshot(a));
        new.check_invariants().unwrap();
        assert!(old.iter().eq(new.iter()), "address space {a}");
        assert_eq!(old.diff(&new).count(), 0);
    }
    assert!(copy.snapshot(0).get(1).unwrap().dirty_logging());
}

#[test]
fn the_empty_layout_is_an_empty_vm() {
    let vm = Memslots::from_layout(Limits::default(), &Layout::default()).unwrap();
    assert_eq!(vm.layout(), Layout::default());
    assert!(vm.snapshot(0).is_empty());
}

#[test]
fn each_region_is_checked_as_the_ioctl_checks_it() {
    let ok = region(0, MemFlags::empty(), 0, 4 * PAGE, 0x10_0000);
    let cases: Vec<(UserspaceMemoryRegion, i32)> = vec![
        (
            region(1, MemFlags::empty(), 2 * PAGE, PAGE, 0),
            errno::EEXIST,
        ),
        (
            region(1, MemFlags::empty(), PAGE + 1, PAGE, 0),
            errno::EINVAL,
        ),
        (
            region(1, MemFlags::empty(), 8 * PAGE, PAGE + 1, 0),
            errno::EINVAL,
        ),
        (
            region(1, MemFlags::empty(), 8 * PAGE, PAGE, 3),
            errno::EINVAL,
        ),
        (
            UserspaceMemoryRegion {
                flags: MemFlags::INVALID.bits(),
                ..region(1, MemFlags::empty(), 8 * PAGE, PAGE, 0)
            },
            errno::EINVAL,
        ),
        (
            region(2 << 16, MemFlags::empty(), 0, PAGE, 0),
            errno::EINVAL,
        ),
        (
            region(1, MemFlags::empty(), 0, PAGE << 31, 0),
            errno::EINVAL,
        ),
        (
            region(1, MemFlags::empty(), !(PAGE - 1), PAGE, 0),
            errno::EINVAL,
        ),
        (
            region(1, MemFlags::empty(), 8 * PAGE, PAGE, !(PAGE - 1)),
            errno::EINVAL,
        ),
    ];
    for (bad, want) in cases {
        let got = load(vec![ok, bad]).unwrap_err();
        assert_eq!(got.errno(), want, "{bad:?}: {got}");
        // The very error the ioctl gives for the same request on the same VM.
        let vm = Memslots::new(Limits::default());
        vm.set_user_memory_region(ok).unwrap();
        assert_eq!(vm.set_user_memory_region(bad), Err(got));
    }
}

#[test]
fn a_slot_listed_twice_is_refused() {
    let a = region(5, MemFlags::empty(), 0, PAGE, 0x1000);
    let elsewhere = region(5, MemFlags::empty(), 64 * PAGE, PAGE, 0x1000);
    for twice in [vec![a, a], vec![a, elsewhere]] {
        let err = load(twice).unwrap_err();
        assert_eq!(
            err,
            Error::DuplicateSlot {
                slot: SlotId::new(0, 5)
            }
        );
        assert_eq!(err.errno(), errno::EINVAL);
    }
    // The same id in another address space is another slot.
    let smm = region((1 << 16) | 5, MemFlags::empty(), 0, PAGE, 0x1000);
    assert!(load(vec![a, smm]).is_ok());
}

#[test]
fn a_region_without_pages_is_refused() {
    let err = load(vec![region(2, MemFlags::empty(), 0, 0, 0)]).unwrap_err();
    assert_eq!(
        err,
        Error::EmptySlot {
            slot: SlotId::new(0, 2)
        }
    );
    assert_eq!(err.errno(), errno::EINVAL);
    // Also after the slot it would delete.
    let a = region(2, MemFlags::empty(), 0, PAGE, 0);
    let err = load(vec![a, UserspaceMemoryRegion::delete(2)]).unwrap_err();
    assert!(matches!(err, Error::EmptySlot { .. }), "{err}");
}

#[test]
fn an_error_names_the_first_bad_region_in_listed_order() {
    let a = region(0, MemFlags::empty(), 0, 4 * PAGE, 0);
    let overlapping = region(1, MemFlags::empty(), PAGE, PAGE, 0);
    let unaligned = region(2, MemFlags::empty(), 100 * PAGE, 7, 0);
    let err = load(vec![a, unaligned, overlapping]).unwrap_err();
    assert_eq!(err, Error::UnalignedSize { size: 7 });
    let err = load(vec![overlapping, a, unaligned]).unwrap_err();
    assert_eq!(
        err,
        Error::Overlap {
            slot: SlotId::new(0, 0),
            existing: SlotId::new(0, 1)
        }
    );
}

#[test]
fn limits_are_those_given() {
    let layout = busy_vm().layout();
    let one_space = Limits::default().with_address_spaces(1).unwrap();
    let err = Memslots::from_layout(one_space, &layout).unwrap_err();
    assert!(
        matches!(err, Error::InvalidAddressSpace { as_id: 1, .. }),
        "{err}"
    );
    let no_readonly = Limits::default().with_readonly(false);
    let err = Memslots::from_layout(no_readonly, &layout).unwrap_err();
    assert!(matches!(err, Error::InvalidFlags { flags: 2 }), "{err}");
}

#[test]
fn internal_slots_round_trip_and_keep_their_rules() {
    let vm = Memslots::new(Limits::default());
    vm.set_user_memory_region(region(0, MemFlags::LOG_DIRTY_PAGES, 0, 4 * PAGE, 0x10_0000))
        .unwrap();
    let apic = region(32764, MemFlags::empty(), 0xfee0_0000, PAGE, 0x20_0000);
    vm.set_internal_memory_region(apic).unwrap();
    let layout = vm.layout();
    assert_eq!(layout.regions.len(), 2);
    let restored = Memslots::from_layout(Limits::default(), &layout).unwrap();
    assert_eq!(restored.layout(), layout);
    assert_eq!(restored.snapshot(0).get(32764).unwrap().npages(), 1);
    // One transaction: one published version for the address space.
    assert_eq!(restored.snapshot(0).generation(), 2);
    // An internal slot may not carry flags, and ids stop at the total.
    let flagged = region(32765, MemFlags::LOG_DIRTY_PAGES, 0x1_0000_0000, PAGE, 0);
    assert!(matches!(
        load(vec![flagged]).unwrap_err(),
        Error::InvalidFlags { .. }
    ));
    assert!(matches!(
        load(vec![region(32767, MemFlags::empty(), 0, PAGE, 0)]).unwrap_err(),
        Error::InvalidSlotId { limit: 32767, .. }
    ));
}

#[test]
fn a_hundred_thousand_regions_are_refused_not_a_panic() {
    // More ids than an address space has: user slots, then the three internal ones, then the
    // first id past the total stops the load.
    let regions: Vec<UserspaceMemoryRegion> = (0..100_000u32)
        .map(|i| region(i, MemFlags::empty(), u64::from(i) * PAGE, PAGE, 0x1000))
        .collect();
    let err = load(regions).unwrap_err();
    assert_eq!(
        err,
        Error::InvalidSlotId {
            slot: SlotId::new(0, 32767),
            limit: 32767
        }
    );
}

#[test]
fn layouts_diff_by_slot() {
    let vm = busy_vm();
    let before = vm.layout();
    vm.set_user_memory_region(UserspaceMemoryRegion::delete(7))
        .unwrap();
    vm.set_user_memory_region(region(9, MemFlags::empty(), 0x40_0000, PAGE, 0x7400_0000))
        .unwrap();
    let moved = region(
        1,
        MemFlags::LOG_DIRTY_PAGES,
        0x80_0000,
        16 * PAGE,
        0x7100_0000,
    );
    assert_eq!(vm.set_user_memory_region(moved), Ok(ChangeKind::Move));
    let after = vm.layout();

    let diff = before.diff(&after);
    let slots: Vec<(char, u32)> = diff
        .iter()
        .map(|d| match d {
            Diff::Added(r) => ('+', r.slot),
            Diff::Removed(r) => ('-', r.slot),
            Diff::Changed { old, new } => {
                assert_eq!(old.slot, new.slot);
                ('~', new.slot)
            }
        })
        .collect();
    assert_eq!(slots, [('~', 1), ('-', 7), ('+', 9)]);
    assert_eq!(
        diff[0],
        Diff::Changed {
            old: &before.regions[0],
            new: &moved
        }
    );
    assert!(after.diff(&after).is_empty());
    assert_eq!(
        Layout::default().diff(&after).len(),
        after.regions.len(),
        "everything is added to an empty layout"
    );
}

#[test]
fn a_slot_converts_to_the_request_that_creates_it() {
    let vm = busy_vm();
    let snapshot = vm.snapshot(1);
    let slot = snapshot.get(2).unwrap();
    let listed = UserspaceMemoryRegion::from(slot);
    assert_eq!(
        listed,
        region(
            (1 << 16) | 2,
            MemFlags::READONLY,
            0x3_0000,
            PAGE,
            0x7200_0000
        )
    );
    // Sent back as a request, it changes nothing; with another host address it is refused.
    assert_eq!(vm.set_user_memory_region(listed), Ok(ChangeKind::Unchanged));
    assert_eq!(
        vm.set_user_memory_region(UserspaceMemoryRegion {
            userspace_addr: 0,
            ..listed
        })
        .unwrap_err(),
        Error::ImmutableField {
            slot: SlotId::new(1, 2),
            field: SlotField::UserspaceAddr
        }
    );
}

#[cfg(feature = "serde")]
mod json {
    use super::*;

    fn parse_and_load(text: &str) -> Result<Memslots, String> {
        let layout: Layout = serde_json::from_str(text).map_err(|e| format!("parse: {e}"))?;
        Memslots::from_layout(Limits::default(), &layout).map_err(|e| format!("load: {e}"))
    }

    #[test]
    fn a_layout_round_trips_through_json() {
        let vm = busy_vm();
        let text = serde_json::to_string(&vm.layout()).unwrap();
        let restored = parse_and_load(&text).unwrap();
        assert_eq!(restored.layout(), vm.layout());
        assert_eq!(serde_json::to_string(&restored.layout()).unwrap(), text);
    }

    #[test]
    fn fields_are_named_as_in_the_uapi_struct() {
        let layout = Layout {
            regions: vec![region(1, MemFlags::READONLY, 0x1000, 0x2000, 0x3000)],
        };
        assert_eq!(
            serde_json::to_string(&layout).unwrap(),
            r#"{"regions":[{"slot":1,"flags":2,"guest_phys_addr":4096,"memory_size":8192,"userspace_addr":12288}]}"#
        );
    }

    fn entry(body: &str) -> String {
        format!(r#"{{"regions":[{body}]}}"#)
    }

    const GOOD: &str =
        r#"{"slot":0,"flags":0,"guest_phys_addr":0,"memory_size":4096,"userspace_addr":4096}"#;

    #[test]
    fn malformed_documents_are_errors() {
        let with = |field: &str, value: &str| {
            let mut fields: Vec<String> = [
                "slot",
                "flags",
                "guest_phys_addr",
                "memory_size",
                "userspace_addr",
            ]
            .iter()
            .map(|f| {
                format!(
                    r#""{f}":{}"#,
                    if *f == "memory_size" { "4096" } else { "0" }
                )
            })
            .collect();
            for f in &mut fields {
                if f.starts_with(&format!(r#""{field}":"#)) {
                    *f = format!(r#""{field}":{value}"#);
                }
            }
            entry(&format!("{{{}}}", fields.join(",")))
        };
        let mut docs: Vec<String> = vec![
            String::new(),
            "null".into(),
            "[]".into(),
            "{}".into(),
            r#"{"regions":null}"#.into(),
            r#"{"regions":"all of them"}"#.into(),
            r#"{"regions":{}}"#.into(),
            r#"{"regions":[1,2,3]}"#.into(),
            r#"{"regions":[],"extra":true}"#.into(),
            r#"{"regions":[],"regions":[]}"#.into(),
            entry(&GOOD.replace('}', r#","padding":0}"#)),
            entry(
                r#"{"slot":0,"slot":1,"flags":0,"guest_phys_addr":0,"memory_size":4096,"userspace_addr":0}"#,
            ),
            entry(&GOOD.replace(r#","userspace_addr":4096"#, "")),
            entry(&format!("{GOOD},")),
            entry(GOOD).replace("]}", "]"),
            format!("{} trailing", entry(GOOD)),
            entry(GOOD).replacen(':', "=", 1),
            "{\"regions\":[]}\u{0}".into(),
        ];
        for field in [
            "slot",
            "flags",
            "guest_phys_addr",
            "memory_size",
            "userspace_addr",
        ] {
            for value in [
                "-1",
                "-0.0",
                "1.5",
                "1e3",
                "1e400",
                "NaN",
                "18446744073709551616",
                "340282366920938463463374607431768211456",
                "99999999999999999999999999999999999999999999999999",
                r#""4096""#,
                "true",
                "null",
                "[4096]",
                r#"{"value":4096}"#,
            ] {
                docs.push(with(field, value));
            }
        }
        // The 32-bit fields refuse what does not fit in 32 bits.
        docs.push(with("slot", "4294967296"));
        docs.push(with("flags", "4294967296"));
        for doc in &docs {
            assert!(parse_and_load(doc).is_err(), "accepted {doc}");
        }
        assert!(
            parse_and_load(&entry(GOOD)).is_ok(),
            "the base document is good"
        );
    }

    #[test]
    fn well_formed_but_invalid_layouts_are_errors() {
        let doc = |regions: &[&str]| entry(&regions.join(","));
        let cases = [
            (doc(&[GOOD, GOOD]), "listed twice"),
            (
                doc(&[GOOD, &GOOD.replace(r#""slot":0"#, r#""slot":1"#)]),
                "overlaps",
            ),
            (
                doc(&[&GOOD.replace(r#""guest_phys_addr":0"#, r#""guest_phys_addr":1"#)]),
                "not page-aligned",
            ),
            (
                doc(&[&GOOD.replace(r#""flags":0"#, r#""flags":65536"#)]),
                "invalid flags",
            ),
            (
                doc(&[&GOOD.replace(r#""flags":0"#, r#""flags":4294967295"#)]),
                "invalid flags",
            ),
            (
                doc(&[&GOOD.replace(r#""memory_size":4096"#, r#""memory_size":0"#)]),
                "memory_size 0",
            ),
            (
                doc(&[&GOOD.replace(
                    r#""memory_size":4096"#,
                    r#""memory_size":18446744073709547520"#,
                )]),
                "wraps around",
            ),
            (
                doc(&[&GOOD.replace(r#""slot":0"#, r#""slot":32767"#)]),
                "not below",
            ),
            (
                doc(&[&GOOD.replace(r#""slot":0"#, r#""slot":4294967295"#)]),
                "address space 65535",
            ),
            (
                doc(&[&GOOD.replace(r#""slot":0"#, r#""slot":196608"#)]),
                "address space 3",
            ),
        ];
        for (text, want) in cases {
            let err = parse_and_load(&text).unwrap_err();
            assert!(
                err.starts_with("load: ") && err.contains(want),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn a_hundred_thousand_regions_in_json_are_an_error() {
        let regions: Vec<String> = (0..100_000u64)
            .map(|i| {
                format!(
                    r#"{{"slot":{i},"flags":0,"guest_phys_addr":{},"memory_size":4096,"userspace_addr":4096}}"#,
                    i * PAGE
                )
            })
            .collect();
        let err = parse_and_load(&entry(&regions.join(","))).unwrap_err();
        assert!(err.contains("not below 32767"), "{err}");
    }

    #[test]
    fn deeply_nested_junk_is_an_error_not_a_stack_overflow() {
        for depth in [200, 10_000, 1_000_000] {
            let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
            let inside = entry(&"[".repeat(depth));
            let as_field = entry(&GOOD.replace(r#""flags":0"#, &format!(r#""flags":{arrays}"#)));
            for doc in [arrays.clone(), objects, inside, as_field] {
                assert!(parse_and_load(&doc).is_err());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_are_an_error() {
        for bytes in [
            &[0xff, 0xfe, 0x00][..],
            b"{\"regions\":[\xc3\x28]}",
            b"\xef\xbb\xbf{\"regions\":[]}",
        ] {
            let parsed = serde_json::from_slice::<Layout>(bytes);
            assert!(parsed.is_err(), "{bytes:?}");
        }
    }
}
