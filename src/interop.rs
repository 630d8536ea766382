//! Interoperation with rust-vmm's `vm-memory` (feature `vm-memory`): a [`Layout`] from a
//! [`GuestMemoryBackend`] such as `GuestMemoryMmap`, and a version's slots as vm-memory's
//! `(GuestAddress, length, host address)` triples.

use core::fmt;
use core::iter::FusedIterator;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestUsize};

use crate::layout::Layout;
use crate::set::{Iter, MemslotSet};
use crate::types::{Hva, MemFlags, UserspaceMemoryRegion};

/// Why [`Layout::from_guest_memory`] could not describe a guest memory.
///
/// | operation | cost |
/// |---|---|
/// | [`Clone`], [`PartialEq`], `Display` | O(1) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FromGuestMemoryError {
    /// The region is not mapped in this process (`get_host_address` fails), so it has no host
    /// virtual address to give a slot.
    #[error("the region at guest address {guest_addr:#x} has no host address")]
    NoHostAddress {
        /// The region's first guest physical address.
        guest_addr: u64,
    },
    /// More regions than an address space has slot ids (65536).
    #[error("{count} regions is more than the 65536 slot ids of an address space")]
    TooManyRegions {
        /// The number of regions.
        count: usize,
    },
}

impl Layout {
    /// The slots that describe `memory`: each region becomes a slot of address space 0, with ids
    /// 0, 1, ... in ascending guest address order, its guest address as `guest_phys_addr`, its
    /// length as `memory_size`, its host mapping (`get_host_address`) as `userspace_addr`, and no
    /// flags.
    ///
    /// The layout is not checked here; [`Memslots::from_layout`](crate::Memslots::from_layout)
    /// checks it as KVM would, refusing for example a region whose length is not a multiple of
    /// the page size, or more regions than the limits' user slots.
    ///
    /// Time: O(r log r) for r regions.
    ///
    /// # Errors
    /// [`FromGuestMemoryError::NoHostAddress`] for a region not mapped in this process,
    /// [`FromGuestMemoryError::TooManyRegions`] for more than 65536 regions.
    ///
    /// ```
    /// use memslots::{Gfn, Hva, Layout, Limits, Memslots};
    /// use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
    ///
    /// let memory = GuestMemoryMmap::<()>::from_ranges(&[
    ///     (GuestAddress(0), 0x10_0000),
    ///     (GuestAddress(0x1000_0000), 0x20_0000),
    /// ])
    /// .expect("anonymous memory");
    /// let vm = Memslots::from_layout(Limits::default(), &Layout::from_guest_memory(&memory)?)?;
    ///
    /// let slots = vm.snapshot(0);
    /// assert_eq!(slots.len(), 2);
    /// let host = memory.get_host_address(GuestAddress(0x1000_3000)).expect("mapped");
    /// let slot = slots.find(Gfn(0x1_0003)).expect("a slot");
    /// assert_eq!((slot.id(), slot.gfn_to_hva(Gfn(0x1_0003))), (1, Some(Hva(host.addr() as u64))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_guest_memory<M>(memory: &M) -> Result<Layout, FromGuestMemoryError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        let mut ranges = memory
            .iter()
            .map(|region| {
                let guest_addr = region.start_addr().0;
                let host = region
                    .get_host_address(vm_memory::MemoryRegionAddress(0))
                    .map_err(|_| FromGuestMemoryError::NoHostAddress { guest_addr })?;
                Ok((guest_addr, region.len(), host.addr() as u64))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ranges.len() > 1 << 16 {
            return Err(FromGuestMemoryError::TooManyRegions {
                count: ranges.len(),
            });
        }
        ranges.sort_unstable_by_key(|&(guest_addr, ..)| guest_addr);
        let regions = (0u32..)
            .zip(ranges)
            .map(|(id, (guest_addr, len, host))| {
                UserspaceMemoryRegion::new(id, MemFlags::empty(), guest_addr, len, host)
            })
            .collect();
        Ok(Layout { regions })
    }
}

impl MemslotSet {
    /// Every slot as vm-memory sees a region: its first guest address, its length in bytes, and
    /// the host address it is mapped at; in ascending guest address order. Slots being deleted
    /// or moved (`INVALID`) are included, as [`iter`](Self::iter) includes them.
    ///
    /// `GuestMemoryMmap::from_ranges` takes the first two to allocate fresh memory of the same
    /// shape; the host addresses say where the VMM mapped the memory the slots point at.
    ///
    /// Time: O(n) for the whole walk, O(1) amortized per slot; no allocation.
    ///
    /// ```
    /// use memslots::{Hva, Limits, Memslots, MemFlags, UserspaceMemoryRegion};
    /// use vm_memory::GuestAddress;
    /// let vm = Memslots::new(Limits::default());
    /// vm.set_user_memory_region(UserspaceMemoryRegion::new(0, MemFlags::empty(), 0x10_0000, 0x4000, 0x7000_0000))?;
    /// let regions: Vec<_> = vm.snapshot(0).guest_regions().collect();
    /// assert_eq!(regions, [(GuestAddress(0x10_0000), 0x4000, Hva(0x7000_0000))]);
    /// # Ok::<(), memslots::Error>(())
    /// ```
    #[must_use]
    pub fn guest_regions(&self) -> GuestRegions<'_> {
        GuestRegions { slots: self.iter() }
    }
}

/// A version's slots as vm-memory regions: `(first guest address, length in bytes, host
/// address)`, in ascending guest address order.
///
/// This `struct` is created by [`MemslotSet::guest_regions`].
///
/// | operation | cost |
/// |---|---|
/// | the whole walk | O(n) |
/// | [`next`](Iterator::next) | O(1) amortized; no allocation |
#[derive(Clone)]
pub struct GuestRegions<'a> {
    slots: Iter<'a>,
}

impl Iterator for GuestRegions<'_> {
    type Item = (GuestAddress, GuestUsize, Hva);

    fn next(&mut self) -> Option<Self::Item> {
        self.slots.next().map(|slot| {
            let region = UserspaceMemoryRegion::from(slot);
            (
                GuestAddress(region.guest_phys_addr),
                region.memory_size,
                slot.userspace_addr(),
            )
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.slots.size_hint()
    }
}

impl ExactSizeIterator for GuestRegions<'_> {}
impl FusedIterator for GuestRegions<'_> {}

impl fmt::Debug for GuestRegions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRegions")
            .field("remaining", &self.slots.len())
            .finish()
    }
}
