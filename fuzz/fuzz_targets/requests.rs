//! Bytes as a run of `KVM_SET_USER_MEMORY_REGION` requests, applied to the trees and to the
//! array baseline; see `tests/support/requests.rs` for the decoding and every check made.
#![no_main]

#[path = "../../tests/support/requests.rs"]
#[allow(dead_code)]
mod requests;

libfuzzer_sys::fuzz_target!(|data: &[u8]| requests::run(data));
