//! The one place that picks `std` or `loom` synchronization primitives.
//!
//! Everything in the crate that takes part in publication or grace periods imports its atomics
//! from here, so that `RUSTFLAGS="--cfg loom"` model-checks the real code.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic;

#[cfg(loom)]
pub(crate) use loom::sync::atomic;
