//! Arbitrary bytes fed to the JSON layout loader, and the checks made on what it accepts. One
//! piece of code for the `layout_json` fuzz target and the stable test suite
//! (`tests/fuzz_decoder.rs`), which include this file by path.

use memslots::{Layout, Limits, Memslots};

/// Parses `data` as a JSON [`Layout`] and loads it into a VM. Panics unless anything parsed
/// serializes and parses back to itself, and anything loaded lists exactly the regions it was
/// given (in the VM's order), saves and loads again to the same VM. Returns whether the bytes
/// were accepted as a VM.
pub(crate) fn check(data: &[u8]) -> bool {
    let Ok(layout) = serde_json::from_slice::<Layout>(data) else {
        return false;
    };
    let text = serde_json::to_vec(&layout).expect("a layout serializes");
    let again: Layout = serde_json::from_slice(&text).expect("its own JSON parses");
    assert_eq!(again, layout, "JSON round trip");

    let limits = Limits::default();
    let Ok(vm) = Memslots::from_layout(limits, &layout) else {
        return false;
    };
    let mut given = layout.regions.clone();
    given.sort_by_key(|r| (r.slot >> 16, r.guest_phys_addr));
    let saved = vm.layout();
    assert_eq!(
        saved.regions, given,
        "the VM lists other regions than it was given"
    );
    for a in 0..limits.address_spaces() {
        vm.snapshot(a).check_invariants().expect("tree invariants");
    }
    let text = serde_json::to_vec(&saved).expect("a layout serializes");
    let parsed: Layout = serde_json::from_slice(&text).expect("its own JSON parses");
    let restored = Memslots::from_layout(limits, &parsed).expect("a VM's own layout loads");
    assert_eq!(
        restored.layout(),
        saved,
        "save and restore changed the layout"
    );
    true
}
