//! Interoperation with rust-vmm's `vm-memory` 0.18 (feature `vm-memory`).
//!
//! - A version whose slots are backed by vm-memory's [`VolatileMemory`] (an `MmapRegion`, with
//!   the `vm-memory-mmap` feature) is a [`GuestMemoryBackend`]: its regions are its slots,
//!   `find_region` is the gfn tree's O(log n) search, and vm-memory's blanket impls make it a
//!   `GuestMemory` with `Bytes<GuestAddress>`, so virtio-queue and every rust-vmm device read and
//!   write guest memory through it unchanged.
//! - [`Memslots`] is then a [`GuestAddressSpace`]: `memory()` is address space 0's current
//!   version as a [`MemoryGuard`], one consistent version that later updates never change.
//! - A [`Layout`] from any [`GuestMemoryBackend`] such as `GuestMemoryMmap`, and a version's
//!   slots as `(GuestAddress, length, host address)` triples.
//!
//! vm-memory's regions have no access rights: writes through its traits reach `READONLY` slots,
//! and dirty pages are tracked by the backing's own vm-memory bitmap (an `MmapRegion<B>`'s `B`),
//! not by the slot's dirty log. Slots being deleted or moved (`INVALID`) are not regions. The
//! crate's own byte access ([`MemslotSet::write_guest`] and its kin) applies KVM's rules.
//!
//! Everything vm-memory touches is here, methods on the crate's types included
//! (`Layout::from_guest_memory`, `MemslotSet::guest_regions`), so that the feature gates one
//! module.

use core::fmt;
use core::iter::FusedIterator;

use vm_memory::bitmap::BS;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
    GuestMemoryRegionBytes, GuestUsize, MemoryRegionAddress, VolatileMemory, VolatileSlice,
};

use crate::layout::Layout;
use crate::set::{Iter, MemslotSet};
use crate::slot::Memslot;
use crate::types::{Gfn, Gpa, Hva, MemFlags, UserspaceMemoryRegion};
use crate::vm::{Memslots, Snapshot};

/// Why [`Layout::from_guest_memory`] could not describe a guest memory.
///
/// | operation | cost |
/// |---|---|
/// | [`Clone`], [`PartialEq`], `Display` | O(1) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
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

#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
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
    /// # #[cfg(feature = "vm-memory-mmap")] {
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
    /// # }
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

#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
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
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
pub struct GuestRegions<'a> {
    slots: Iter<'a>,
}

#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
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

#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
impl ExactSizeIterator for GuestRegions<'_> {}
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
impl FusedIterator for GuestRegions<'_> {}

#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
impl fmt::Debug for GuestRegions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRegions")
            .field("remaining", &self.slots.len())
            .finish()
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
impl From<GuestAddress> for Gpa {
    fn from(addr: GuestAddress) -> Self {
        Gpa(addr.0)
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
impl From<Gpa> for GuestAddress {
    fn from(gpa: Gpa) -> Self {
        GuestAddress(gpa.0)
    }
}

/// A slot is a vm-memory region: `start_addr` its first guest physical address, `len` its size,
/// its bytes those of its backing (which should be at least as long: a range past the backing's
/// end is an error, never an access).
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
impl<B> GuestMemoryRegion for Memslot<B>
where
    B: VolatileMemory + Send + Sync + 'static,
{
    type B = <B as VolatileMemory>::B;

    fn len(&self) -> GuestUsize {
        self.size()
    }

    fn start_addr(&self) -> GuestAddress {
        GuestAddress(self.base_gfn().0 << self.page_shift())
    }

    fn bitmap(&self) -> BS<'_, Self::B> {
        self.backing().as_volatile_slice().bitmap().clone()
    }

    fn get_host_address(
        &self,
        addr: MemoryRegionAddress,
    ) -> vm_memory::guest_memory::Result<*mut u8> {
        Ok(self.get_slice(addr, 1)?.ptr_guard_mut().as_ptr())
    }

    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> vm_memory::guest_memory::Result<VolatileSlice<'_, BS<'_, Self::B>>> {
        let end = offset.0.checked_add(count as u64);
        if end.is_none_or(|end| end > self.size()) {
            return Err(GuestMemoryError::InvalidBackendAddress);
        }
        let start =
            usize::try_from(offset.0).map_err(|_| GuestMemoryError::InvalidBackendAddress)?;
        Ok(self.backing().get_slice(start, count)?)
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
impl<B> GuestMemoryRegionBytes for Memslot<B> where B: VolatileMemory + Send + Sync + 'static {}

/// A version is a vm-memory guest memory whose regions are its slots.
///
/// | operation | cost |
/// |---|---|
/// | [`find_region`](GuestMemoryBackend::find_region) | O(log n): the gfn tree, not vm-memory's linear default |
/// | [`iter`](GuestMemoryBackend::iter) | O(n) for all |
/// | `Bytes<GuestAddress>` accesses | O(log n) per region spanned, plus the copy |
///
/// ```
/// # #[cfg(feature = "vm-memory-mmap")] {
/// use memslots::{Limits, MemFlags, Memslots, UserspaceMemoryRegion};
/// use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, MmapRegion};
///
/// let vm: Memslots<MmapRegion> = Memslots::backed(Limits::default());
/// let ram = MmapRegion::new(0x10000).expect("anonymous memory");
/// let hva = ram.as_ptr() as u64;
/// vm.create_memory_region(UserspaceMemoryRegion::new(0, MemFlags::empty(), 0x10_0000, 0x10000, hva), ram)?;
///
/// // A rust-vmm device sees a GuestAddressSpace.
/// let mem = vm.memory();
/// mem.write_obj(0xabcd_u16, GuestAddress(0x10_0ffe)).expect("mapped");
/// assert_eq!(mem.read_obj::<u16>(GuestAddress(0x10_0ffe)).expect("mapped"), 0xabcd);
/// assert!(mem.read_obj::<u16>(GuestAddress(0x20_0000)).is_err());
/// # }
/// # Ok::<(), memslots::Error>(())
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
impl<B> GuestMemoryBackend for MemslotSet<B>
where
    B: VolatileMemory + Send + Sync + 'static,
{
    type R = Memslot<B>;

    fn find_region(&self, addr: GuestAddress) -> Option<&Memslot<B>> {
        self.find(Gfn(addr.0 >> self.page_shift()))
            .filter(|slot| !slot.is_invalid())
    }

    fn iter(&self) -> impl Iterator<Item = &Memslot<B>> {
        MemslotSet::iter(self).filter(|slot| !slot.is_invalid())
    }
}

/// A VM is a vm-memory address space: [`memory`](GuestAddressSpace::memory) is address space 0's
/// current version as a [`MemoryGuard`] (`O(1)`, no allocation, usually no shared write): a
/// consistent version that later updates never change, kept as long as the device holds it (it
/// holds memory, not readers: no grace period waits for it).
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
impl<B> GuestAddressSpace for Memslots<B>
where
    B: VolatileMemory + Send + Sync + 'static,
{
    type M = MemslotSet<B>;
    type T = MemoryGuard<MemslotSet<B>>;

    fn memory(&self) -> MemoryGuard<MemslotSet<B>> {
        MemoryGuard {
            root: self.root_guard(),
        }
    }
}

/// Address space 0's version as [`Memslots::memory`](GuestAddressSpace::memory) returns it: a
/// [`Snapshot`] for the length of a device's request, cheaper to take and drop.
///
/// A [`Snapshot`] takes a reference count on its version, a write to a cache line every thread
/// taking one shares. A guard instead, like vm-memory's `GuestMemoryLoadGuard`, uses one of the
/// few arc-swap debt slots of the thread that takes it; it keeps its version (and so every
/// slot's backing) alive all the same, and later updates never change it. Each thread has 8 such
/// slots: a guard taken while they are all held, or a clone, takes a count instead, so a guard
/// kept for long should become a snapshot ([`into_snapshot`](Self::into_snapshot)).
///
/// | operation | cost |
/// |---|---|
/// | taking one (`memory()`), dropping it, [`Deref`](core::ops::Deref) | O(1); no allocation, no lock |
/// | [`Clone`], [`into_snapshot`](Self::into_snapshot) | O(1): a reference count |
///
/// ```
/// # #[cfg(feature = "vm-memory-mmap")] {
/// use memslots::{Limits, MemFlags, Memslots, UserspaceMemoryRegion};
/// use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, MmapRegion};
///
/// let vm: Memslots<MmapRegion> = Memslots::backed(Limits::default());
/// let ram = MmapRegion::new(0x10000).expect("anonymous memory");
/// let hva = ram.as_ptr() as u64;
/// let region = UserspaceMemoryRegion::new(0, MemFlags::empty(), 0x10_0000, 0x10000, hva);
/// vm.create_memory_region(region, ram)?;
///
/// let mem = vm.memory();
/// mem.write_obj(7u32, GuestAddress(0x10_0000)).expect("mapped");
/// // Unplugging the slot leaves the guard's version, and the slot's mmap, as they were.
/// vm.set_user_memory_region(UserspaceMemoryRegion { memory_size: 0, ..region })?;
/// assert_eq!(mem.read_obj::<u32>(GuestAddress(0x10_0000)).expect("still held"), 7);
/// assert!(vm.memory().read_obj::<u32>(GuestAddress(0x10_0000)).is_err());
/// let kept = mem.into_snapshot();
/// assert_eq!(kept.len(), 1);
/// # }
/// # Ok::<(), memslots::Error>(())
/// ```
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
pub struct MemoryGuard<S = MemslotSet> {
    root: crate::sync::RootGuard<crate::reader::Root<S>>,
}

impl<S> MemoryGuard<S> {
    /// The same version as a [`Snapshot`], to keep for long.
    #[must_use]
    pub fn into_snapshot(self) -> Snapshot<S> {
        Snapshot::from_arc(std::sync::Arc::clone(&self.root.spaces[0]))
    }
}

impl<S> core::ops::Deref for MemoryGuard<S> {
    type Target = S;
    fn deref(&self) -> &S {
        // Every VM has address space 0.
        &self.root.spaces[0]
    }
}

impl<S: fmt::Debug> fmt::Debug for MemoryGuard<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// vm-memory's mmap regions are backings for the crate's own byte access too.
#[cfg(feature = "vm-memory-mmap")]
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory-mmap")))]
impl<BM> crate::backing::Backing for vm_memory::MmapRegion<BM>
where
    BM: vm_memory::bitmap::Bitmap + Send + Sync + 'static,
{
    fn len(&self) -> usize {
        self.size()
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) {
        use vm_memory::Bytes;
        self.as_volatile_slice()
            .read_slice(buf, offset)
            .expect("the crate reads only inside the backing");
    }

    fn write_at(&self, offset: usize, data: &[u8]) {
        use vm_memory::Bytes;
        self.as_volatile_slice()
            .write_slice(data, offset)
            .expect("the crate writes only inside the backing");
    }
}
