//! Bytes fed to the JSON layout loader; see `tests/support/layout_json.rs` for the checks made
//! on whatever it accepts.
#![no_main]

#[path = "../../tests/support/layout_json.rs"]
mod layout_json;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    layout_json::check(data);
});
