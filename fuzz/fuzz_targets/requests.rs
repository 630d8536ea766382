//! Bytes as a run of `KVM_SET_USER_MEMORY_REGION` requests, applied to the trees and to the
//! array baseline, one by one and in transactions; see `tests/support/requests.rs` for the
//! decoding and `tests/support/differential.rs` for every check made.
#![no_main]

#[path = "../../tests/support/differential.rs"]
#[allow(dead_code)]
mod differential;

libfuzzer_sys::fuzz_target!(|data: &[u8]| differential::run(data));
