//! Byte access at guest physical addresses: KVM's `kvm_read_guest` and `kvm_write_guest`, over a
//! version ([`MemslotSet`], and so a [`Snapshot`](crate::Snapshot)) or a read-side section
//! ([`ReadGuard`](crate::ReadGuard)).
//!
//! An access is split at slot boundaries (pages inside one slot are contiguous in its backing,
//! so they need no split), and the whole range is checked before any byte moves: a hole, a slot
//! being deleted or moved (`INVALID`), a write to a `READONLY` slot or a backing shorter than its
//! slot fails the access with nothing copied. (The kernel copies segment by segment and stops
//! at the first bad one; refusing up front gives callers all or nothing.) A write marks every page
//! it touched dirty in slots that log, as `kvm_write_guest` does through `mark_page_dirty_in_slot`.
//! A zero-length access succeeds anywhere, as in the kernel.
//!
//! The methods are named after the kernel's (`read_guest`, `write_guest`, and `_obj` for plain
//! values) rather than vm-memory's `Bytes` (`read_slice`, `read_obj`, ...): with the
//! `vm-memory` feature a version also implements `Bytes<GuestAddress>`, and an inherent method of
//! the same name would shadow it.
//!
//! The methods belong to [`MemslotSet`] and [`ReadGuard`] but live here: byte access is its own
//! job (splitting at slot boundaries, the backing's bounds, dirty marking), and keeping it apart
//! leaves `set.rs` about the trees and `reader.rs` about the protocol.

use bytemuck::Pod;

use crate::backing::Backing;
use crate::error::Error;
use crate::reader::ReadGuard;
use crate::set::MemslotSet;
use crate::slot::Memslot;
use crate::types::{Gfn, Gpa, MemFlags};

/// One slot's part of an access.
struct Segment<'a, B> {
    slot: &'a Memslot<B>,
    /// Where the part starts in the slot (and its backing).
    offset: usize,
    /// Its length in bytes.
    len: usize,
}

/// The part of `[gpa + done, gpa + total)` that the slot holding `gpa + done` covers, checked for
/// the access. `first` is a slot already looked up (a reader's last-used slot), tried before the
/// version is searched.
fn segment<'a, B: Backing>(
    set: &'a MemslotSet<B>,
    first: Option<&'a Memslot<B>>,
    gpa: u64,
    done: usize,
    total: usize,
    write: bool,
) -> Result<Segment<'a, B>, Error> {
    // `gpa + total` may reach 2^64 but not pass it; checked by the caller.
    let at = gpa + done as u64;
    let found = match first {
        Some(slot) if slot.gpa_offset(at).is_some() => Some(slot),
        _ => set.find(Gfn(at >> set.page_shift())),
    };
    let slot = found.ok_or(Error::Unmapped { gpa: at })?;
    if slot.is_invalid() {
        return Err(Error::SlotInvalid {
            gpa: at,
            slot: slot.slot_id(),
        });
    }
    if write && slot.flags().contains(MemFlags::READONLY) {
        return Err(Error::ReadOnlyWrite {
            gpa: at,
            slot: slot.slot_id(),
        });
    }
    let offset = slot.gpa_offset(at).expect("the slot holds the address");
    // At most the rest of the slot, which (a u64) may be larger than any usize.
    let len =
        usize::try_from(slot.size() - offset).map_or(total - done, |rest| rest.min(total - done));
    let backing_len = slot.backing().len();
    let end = offset.checked_add(len as u64);
    match (usize::try_from(offset), end) {
        (Ok(offset), Some(end)) if end <= backing_len as u64 => Ok(Segment { slot, offset, len }),
        _ => Err(Error::BackingTooShort {
            gpa: at,
            slot: slot.slot_id(),
            backing_len,
        }),
    }
}

/// Checks the whole of `[gpa, gpa + len)` for the access, then runs `copy` on each segment with
/// the segment and where it starts in the caller's buffer. Nothing is copied if any part fails.
fn access<'a, B: Backing>(
    set: &'a MemslotSet<B>,
    first: Option<&'a Memslot<B>>,
    gpa: Gpa,
    len: usize,
    write: bool,
    mut copy: impl FnMut(&Segment<'a, B>, usize),
) -> Result<(), Error> {
    if len == 0 {
        return Ok(());
    }
    if u128::from(gpa.0) + len as u128 > 1 << 64 {
        return Err(Error::AccessWraps { gpa: gpa.0, len });
    }
    let head = segment(set, first, gpa.0, 0, len, write)?;
    if head.len < len {
        // Several slots: check every one before touching any byte.
        let mut done = head.len;
        while done < len {
            done += segment(set, None, gpa.0, done, len, write)?.len;
        }
    }
    copy(&head, 0);
    let mut done = head.len;
    while done < len {
        let next = segment(set, None, gpa.0, done, len, write)?;
        copy(&next, done);
        done += next.len;
    }
    Ok(())
}

/// Marks the pages a written segment touched, if its slot logs dirty pages.
fn mark_written<B>(segment: &Segment<'_, B>) {
    if let Some(bitmap) = segment.slot.dirty_bitmap() {
        let shift = segment.slot.page_shift();
        let first = segment.offset as u64 >> shift;
        let last = (segment.offset + segment.len - 1) as u64 >> shift;
        bitmap.set_range(first, last);
    }
}

pub(crate) fn read_slice<'a, B: Backing>(
    set: &'a MemslotSet<B>,
    first: Option<&'a Memslot<B>>,
    gpa: Gpa,
    buf: &mut [u8],
) -> Result<(), Error> {
    access(set, first, gpa, buf.len(), false, |seg, at| {
        seg.slot
            .backing()
            .read_at(seg.offset, &mut buf[at..at + seg.len]);
    })
}

pub(crate) fn write_slice<'a, B: Backing>(
    set: &'a MemslotSet<B>,
    first: Option<&'a Memslot<B>>,
    gpa: Gpa,
    data: &[u8],
) -> Result<(), Error> {
    access(set, first, gpa, data.len(), true, |seg, at| {
        seg.slot
            .backing()
            .write_at(seg.offset, &data[at..at + seg.len]);
        mark_written(seg);
    })
}

pub(crate) fn read_obj<'a, T: Pod, B: Backing>(
    set: &'a MemslotSet<B>,
    first: Option<&'a Memslot<B>>,
    gpa: Gpa,
) -> Result<T, Error> {
    let mut value = T::zeroed();
    read_slice(set, first, gpa, bytemuck::bytes_of_mut(&mut value))?;
    Ok(value)
}

pub(crate) fn write_obj<'a, T: Pod, B: Backing>(
    set: &'a MemslotSet<B>,
    first: Option<&'a Memslot<B>>,
    gpa: Gpa,
    value: &T,
) -> Result<(), Error> {
    write_slice(set, first, gpa, bytemuck::bytes_of(value))
}

impl<B: Backing> MemslotSet<B> {
    /// Copies the guest memory at `[gpa, gpa + buf.len())` into `buf` (KVM's `kvm_read_guest`),
    /// across page and slot boundaries.
    ///
    /// Time: O(log n) per slot the range spans (the whole range is checked first), plus the copy;
    /// no allocation.
    ///
    /// # Errors
    /// Every one `EFAULT`, naming the first bad address; nothing is copied then:
    /// [`Error::Unmapped`] for an address no slot holds, [`Error::SlotInvalid`] for a slot being
    /// deleted or moved, [`Error::BackingTooShort`] for a slot whose backing ends before the slot,
    /// [`Error::AccessWraps`] for a range past the end of the address space. A zero-length read
    /// succeeds anywhere.
    ///
    /// ```
    /// use memslots::{Gpa, GuestRam, Limits, MemFlags, Memslots, UserspaceMemoryRegion};
    /// let vm = Memslots::backed(Limits::default());
    /// // Two adjacent 4 KiB slots: an access may span both.
    /// for (id, gpa) in [(0, 0x1000), (1, 0x2000)] {
    ///     let region = UserspaceMemoryRegion::new(id, MemFlags::empty(), gpa, 0x1000, 0x7000_0000 + gpa);
    ///     vm.create_memory_region(region, GuestRam::new(0x1000))?;
    /// }
    /// let slots = vm.snapshot(0);
    /// slots.write_guest(Gpa(0x1ffe), b"span")?;
    /// let mut buf = [0; 4];
    /// slots.read_guest(Gpa(0x1ffe), &mut buf)?;
    /// assert_eq!(&buf, b"span");
    /// let hole = slots.read_guest(Gpa(0x2ffe), &mut buf).unwrap_err();
    /// assert_eq!((hole.errno(), hole.to_string()), (memslots::errno::EFAULT, "no slot holds guest physical address 0x3000".into()));
    /// # Ok::<(), memslots::Error>(())
    /// ```
    pub fn read_guest(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), Error> {
        read_slice(self, None, gpa, buf)
    }

    /// Copies `data` to the guest memory at `[gpa, gpa + data.len())` (KVM's `kvm_write_guest`),
    /// marking every page it touches dirty in slots that log dirty pages.
    ///
    /// Time: O(log n) per slot the range spans, plus the copy; no allocation.
    ///
    /// # Errors
    /// As [`read_guest`](Self::read_guest), and [`Error::ReadOnlyWrite`] (`EFAULT`) for a
    /// `READONLY` slot; nothing is written then.
    pub fn write_guest(&self, gpa: Gpa, data: &[u8]) -> Result<(), Error> {
        write_slice(self, None, gpa, data)
    }

    /// Reads a plain value (any [`Pod`] type: integers, arrays, `#[repr(C)]` structs deriving
    /// `Pod`) at `gpa`, in the guest's byte order as it lies in memory; unaligned addresses are
    /// fine.
    ///
    /// Time: as [`read_guest`](Self::read_guest).
    ///
    /// # Errors
    /// As [`read_guest`](Self::read_guest).
    pub fn read_guest_obj<T: Pod>(&self, gpa: Gpa) -> Result<T, Error> {
        read_obj(self, None, gpa)
    }

    /// Writes a plain value at `gpa`, marking its pages dirty where the slot logs.
    ///
    /// Time: as [`write_guest`](Self::write_guest).
    ///
    /// # Errors
    /// As [`write_guest`](Self::write_guest).
    pub fn write_guest_obj<T: Pod>(&self, gpa: Gpa, value: T) -> Result<(), Error> {
        write_obj(self, None, gpa, &value)
    }
}

impl<B: Backing> ReadGuard<'_, MemslotSet<B>> {
    /// The version of `as_id` and the slot to try first for an access at `gpa`.
    fn start(
        &mut self,
        as_id: u16,
        gpa: Gpa,
    ) -> Result<(&MemslotSet<B>, Option<&Memslot<B>>), Error> {
        let shift = self.get_slots(as_id).map(MemslotSet::page_shift).ok_or(
            Error::InvalidAddressSpace {
                as_id,
                address_spaces: self.address_spaces(),
            },
        )?;
        Ok(self
            .lookup_from(as_id, Gfn(gpa.0 >> shift))
            .expect("the address space exists"))
    }

    /// [`MemslotSet::read_guest`] in address space `as_id`, starting from the reader's last-used
    /// slot (a vCPU reading the page it just faulted on does no search).
    ///
    /// Time: O(1) for an access inside the last-used slot, otherwise as
    /// [`MemslotSet::read_guest`].
    ///
    /// # Errors
    /// [`Error::InvalidAddressSpace`] (EINVAL) for an address space that does not exist, then as
    /// [`MemslotSet::read_guest`].
    ///
    /// ```
    /// use memslots::{Gpa, GuestRam, Limits, MemFlags, Memslots, UserspaceMemoryRegion};
    /// let vm = Memslots::backed(Limits::default());
    /// let region = UserspaceMemoryRegion::new(0, MemFlags::LOG_DIRTY_PAGES, 0, 0x4000, 0x7000_0000);
    /// vm.create_memory_region(region, GuestRam::new(0x4000))?;
    /// let reader = vm.reader();
    /// let mut vcpu = reader.read();
    /// vcpu.write_guest_obj(0, Gpa(0x2ffc), 0xdead_beef_u64)?; // two pages
    /// assert_eq!(vcpu.read_guest_obj::<u64>(0, Gpa(0x2ffc))?, 0xdead_beef);
    /// drop(vcpu);
    /// assert_eq!(vm.get_dirty_log(0)?, [0b1100]);
    /// # Ok::<(), memslots::Error>(())
    /// ```
    pub fn read_guest(&mut self, as_id: u16, gpa: Gpa, buf: &mut [u8]) -> Result<(), Error> {
        let (set, first) = self.start(as_id, gpa)?;
        read_slice(set, first, gpa, buf)
    }

    /// [`MemslotSet::write_guest`] in address space `as_id`, starting from the reader's last-used
    /// slot.
    ///
    /// Time: as [`read_guest`](Self::read_guest).
    ///
    /// # Errors
    /// [`Error::InvalidAddressSpace`] (EINVAL) for an address space that does not exist, then as
    /// [`MemslotSet::write_guest`].
    pub fn write_guest(&mut self, as_id: u16, gpa: Gpa, data: &[u8]) -> Result<(), Error> {
        let (set, first) = self.start(as_id, gpa)?;
        write_slice(set, first, gpa, data)
    }

    /// [`MemslotSet::read_guest_obj`] in address space `as_id`, starting from the last-used slot.
    ///
    /// Time: as [`read_guest`](Self::read_guest).
    ///
    /// # Errors
    /// As [`read_guest`](Self::read_guest).
    pub fn read_guest_obj<T: Pod>(&mut self, as_id: u16, gpa: Gpa) -> Result<T, Error> {
        let (set, first) = self.start(as_id, gpa)?;
        read_obj(set, first, gpa)
    }

    /// [`MemslotSet::write_guest_obj`] in address space `as_id`, starting from the last-used slot.
    ///
    /// Time: as [`write_guest`](Self::write_guest).
    ///
    /// # Errors
    /// As [`write_guest`](Self::write_guest).
    pub fn write_guest_obj<T: Pod>(&mut self, as_id: u16, gpa: Gpa, value: T) -> Result<(), Error> {
        let (set, first) = self.start(as_id, gpa)?;
        write_obj(set, first, gpa, &value)
    }
}
