//! The one pseudo-random generator (xorshift64) of the tests, benches and examples, so that a run
//! draws the same numbers on every machine and every time.

// Each test file that includes this uses what it needs of it.
#![allow(dead_code)]

/// Xorshift64 (shifts 13, 7, 17). The seed must not be 0.
pub(crate) struct XorShift(pub u64);

impl XorShift {
    /// The next number.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next number modulo `n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Shuffles `v` (Fisher-Yates): the same permutation for the same seed on every machine.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}
