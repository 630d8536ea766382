//! What a slot's memory is: the [`Backing`] trait, and [`GuestRam`], a plain owned buffer.
//!
//! A slot of a [`Memslots<B>`](crate::Memslots) holds its backing `B` behind an `Arc` that every
//! copy of the slot shares (its moves, flag changes and the `INVALID` step of a delete or move),
//! so the backing lives exactly as long as something can still reach the slot: a published
//! version, a [`Snapshot`](crate::Snapshot), a reader's section or its cached last-used slot.
//! That is what makes byte access safe: memory a slot points at cannot be released while a
//! translation through the slot can still happen.

use core::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Memory that guest physical addresses can be translated into: what a slot must offer for the
/// byte access of [`MemslotSet::read_guest`](crate::MemslotSet::read_guest) and its kin.
///
/// Implementations reach their bytes through their own safe API (atomics, a volatile slice of an
/// mmap), since several vCPU and device threads may read and write the same memory at once, as
/// they do real RAM: each call must be safe against concurrent calls on overlapping ranges, and
/// a racing reader may see any mix of old and new bytes.
///
/// The crate calls [`read_at`](Self::read_at) and [`write_at`](Self::write_at) only with ranges
/// inside `0..len()`; an implementation may panic on any other.
///
/// | operation | cost |
/// |---|---|
/// | [`len`](Self::len) | O(1) expected |
/// | [`read_at`](Self::read_at), [`write_at`](Self::write_at) | O(bytes) expected |
///
/// ```
/// use std::sync::Mutex;
/// use memslots::Backing;
///
/// /// A backing kept behind a lock: simple, slower than `GuestRam`'s atomics.
/// struct Locked(Mutex<Vec<u8>>);
///
/// impl Backing for Locked {
///     fn len(&self) -> usize {
///         self.0.lock().unwrap().len()
///     }
///     fn read_at(&self, offset: usize, buf: &mut [u8]) {
///         buf.copy_from_slice(&self.0.lock().unwrap()[offset..offset + buf.len()]);
///     }
///     fn write_at(&self, offset: usize, data: &[u8]) {
///         self.0.lock().unwrap()[offset..offset + data.len()].copy_from_slice(data);
///     }
/// }
///
/// let ram = Locked(Mutex::new(vec![0; 16]));
/// ram.write_at(4, b"guest");
/// let mut out = [0; 5];
/// ram.read_at(4, &mut out);
/// assert_eq!(&out, b"guest");
/// ```
pub trait Backing: Send + Sync + 'static {
    /// The number of bytes.
    fn len(&self) -> usize;

    /// Whether the backing has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the `buf.len()` bytes from `offset` into `buf`.
    fn read_at(&self, offset: usize, buf: &mut [u8]);

    /// Copies `data` to the bytes from `offset`.
    fn write_at(&self, offset: usize, data: &[u8]);
}

/// A shared backing: the same memory behind several slots (KVM allows two slots to map the same
/// host range), or kept by the VMM beyond its slot.
impl<T: Backing + ?Sized> Backing for std::sync::Arc<T> {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) {
        (**self).read_at(offset, buf);
    }

    fn write_at(&self, offset: usize, data: &[u8]) {
        (**self).write_at(offset, data);
    }
}

/// A plain owned buffer of guest RAM, as a simulator keeps it: zeroed on creation, shared safely
/// between threads (each aligned 8-byte word is an atomic; accesses use relaxed ordering, as
/// plain loads and stores to RAM do).
///
/// Whole words are copied with one atomic load or store each; the partial words at either end of
/// a range are updated with a compare-and-swap, so bytes next to a write are never disturbed.
///
/// | operation | cost |
/// |---|---|
/// | [`new`](Self::new) | O(len): zeroed memory |
/// | [`read_at`](Backing::read_at), [`write_at`](Backing::write_at) | O(bytes / 8) |
///
/// ```
/// use memslots::{Backing, GuestRam};
/// let ram = GuestRam::new(4096);
/// ram.write_at(4093, &[1, 2, 3]);
/// let mut out = [0; 4];
/// ram.read_at(4092, &mut out);
/// assert_eq!(out, [0, 1, 2, 3]);
/// ```
pub struct GuestRam {
    words: Box<[AtomicU64]>,
    len: usize,
}

const WORD: usize = 8;

impl GuestRam {
    /// `len` zeroed bytes.
    #[must_use]
    pub fn new(len: usize) -> Self {
        Self {
            words: (0..len.div_ceil(WORD)).map(|_| AtomicU64::new(0)).collect(),
            len,
        }
    }

    /// Runs `f` on each word the byte range `[offset, offset + len)` touches, with the range's
    /// part of that word (`first..end` bytes within it) and where that part starts in the range.
    fn for_each_word(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(&AtomicU64, core::ops::Range<usize>, usize),
    ) {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let word = at / WORD;
            let first = at % WORD;
            let stop = (end - word * WORD).min(WORD);
            f(&self.words[word], first..stop, at - offset);
            at = word * WORD + stop;
        }
    }
}

impl Backing for GuestRam {
    fn len(&self) -> usize {
        self.len
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) {
        assert!(offset + buf.len() <= self.len, "read past the end");
        self.for_each_word(offset, buf.len(), |word, part, at| {
            let bytes = word.load(Ordering::Relaxed).to_le_bytes();
            buf[at..at + part.len()].copy_from_slice(&bytes[part]);
        });
    }

    fn write_at(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.len, "write past the end");
        self.for_each_word(offset, data.len(), |word, part, at| {
            let src = &data[at..at + part.len()];
            if part.len() == WORD {
                let whole: [u8; WORD] = src.try_into().expect("a whole word");
                word.store(u64::from_le_bytes(whole), Ordering::Relaxed);
                return;
            }
            // A partial word: keep the neighbouring bytes, whoever writes them meanwhile.
            let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let mut bytes = old.to_le_bytes();
                bytes[part.clone()].copy_from_slice(src);
                Some(u64::from_le_bytes(bytes))
            });
        });
    }
}

impl fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRam").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_ranges_round_trip_and_spare_their_neighbours() {
        let ram = GuestRam::new(37);
        ram.write_at(0, &[0xff; 37]);
        let data: Vec<u8> = (1..=20).collect();
        ram.write_at(3, &data);
        let mut all = [0u8; 37];
        ram.read_at(0, &mut all);
        assert_eq!(&all[..3], &[0xff; 3]);
        assert_eq!(&all[3..23], &data[..]);
        assert_eq!(&all[23..], &[0xff; 14]);
        let mut tail = [0u8; 2];
        ram.read_at(35, &mut tail);
        assert_eq!(tail, [0xff, 0xff]);
    }

    #[test]
    fn empty_ranges_do_nothing() {
        let ram = GuestRam::new(8);
        ram.write_at(8, &[]);
        ram.read_at(8, &mut []);
        assert_eq!(ram.len(), 8);
        assert!(GuestRam::new(0).is_empty());
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn out_of_range_is_a_caller_bug() {
        GuestRam::new(8).write_at(7, &[0, 0]);
    }
}
