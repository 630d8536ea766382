//! A small virtio device and the driver side of its queue, over any vm-memory `GuestMemory`. One
//! piece of code for the device test (`tests/virtio.rs`) and the device-path bench
//! (`benches/device.rs`), which include this file by path.
//!
//! A request is a chain of one readable descriptor holding a [`Header`] and writable descriptors
//! for the response; the device answers with the request's id followed by its fill byte, as many
//! bytes as the header asks for (at most the writable space), and adds the chain to the used ring
//! with the number of bytes written.

#![allow(dead_code)] // Each includer uses its own part.

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

/// A request header, 16 bytes little endian: `id` (u64), `fill` (u8, then 3 bytes of padding),
/// `len` (u32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The driver's tag for the request; the response starts with it.
    pub(crate) id: u64,
    /// The byte the rest of the response is filled with.
    pub(crate) fill: u8,
    /// How many response bytes the driver asks for.
    pub(crate) len: u32,
}

impl Header {
    /// Its size in guest memory.
    pub(crate) const SIZE: usize = 16;

    pub(crate) fn encode(&self) -> [u8; Self::SIZE] {
        let mut bytes = [0; Self::SIZE];
        bytes[..8].copy_from_slice(&self.id.to_le_bytes());
        bytes[8] = self.fill;
        bytes[12..].copy_from_slice(&self.len.to_le_bytes());
        bytes
    }

    pub(crate) fn decode(bytes: &[u8; Self::SIZE]) -> Self {
        Self {
            id: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            fill: bytes[8],
            len: u32::from_le_bytes(bytes[12..].try_into().expect("4 bytes")),
        }
    }

    /// The response to this request, `n` bytes of it: the id's bytes, then the fill byte.
    pub(crate) fn response_into(&self, out: &mut [u8]) {
        out.fill(self.fill);
        let id = self.id.to_le_bytes();
        let n = out.len().min(id.len());
        out[..n].copy_from_slice(&id[..n]);
    }
}

/// What the device did with one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Served {
    /// The chain's head descriptor index.
    pub(crate) head: u16,
    /// The request it read.
    pub(crate) header: Header,
    /// The response bytes it wrote (the used entry's length).
    pub(crate) written: u32,
}

/// The device: pops one chain from `queue`, reads the header from its first descriptor, writes
/// the response into the writable descriptors after it (in `scratch`, at least as long as any
/// request asks for), and adds the chain to the used ring. `None` when the queue is empty.
///
/// # Panics
/// If the chain does not start with a readable descriptor or any of its memory is unmapped: the
/// drivers here never make such chains.
pub(crate) fn serve<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    scratch: &mut [u8],
) -> Option<Served> {
    let mut chain = queue.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    let first = chain.next().expect("a header descriptor");
    assert!(!first.is_write_only(), "the header is readable");
    let mut raw = [0; Header::SIZE];
    mem.read_slice(&mut raw, first.addr())
        .expect("the header is mapped");
    let header = Header::decode(&raw);
    let response = &mut scratch[..header.len as usize];
    header.response_into(response);
    let mut written = 0;
    for desc in chain.filter(Descriptor::is_write_only) {
        if written == response.len() {
            break;
        }
        let n = (desc.len() as usize).min(response.len() - written);
        mem.write_slice(&response[written..written + n], desc.addr())
            .expect("the response buffer is mapped");
        written += n;
    }
    let written = u32::try_from(written).expect("a response is shorter than 4 GiB");
    queue
        .add_used(mem, head, written)
        .expect("the used ring is mapped");
    Some(Served {
        head,
        header,
        written,
    })
}

/// One request as the driver lays it out: where its header goes, and its response buffers.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub(crate) header_at: GuestAddress,
    pub(crate) header: Header,
    pub(crate) response: Vec<(GuestAddress, u32)>,
}

/// The driver side of one split queue of `size` descriptors at `base`.
///
/// `MockSplitQueue` lays out the descriptor table and the available ring and writes the
/// descriptors; the used ring and the available ring's entries are placed and written here,
/// because virtio-queue 0.18's mock puts its used ring `size` bytes (not `2 * size`) after the
/// available ring's entries, inside them once `size` exceeds 2, and `add_desc_chains` does not
/// wrap around the ring.
pub(crate) struct Driver<'a, M: GuestMemory> {
    mem: &'a M,
    mock: MockSplitQueue<'a, M>,
    size: u16,
}

impl<'a, M: GuestMemory> Driver<'a, M> {
    pub(crate) fn new(mem: &'a M, base: GuestAddress, size: u16) -> Self {
        Self {
            mem,
            mock: MockSplitQueue::create(mem, base, size),
            size,
        }
    }

    /// Where the used ring is: after the available ring's flags, index, `size` entries and
    /// event, 4-aligned; 4 bytes of flags and index, then 8-byte entries (id, len).
    pub(crate) fn used_addr(&self) -> GuestAddress {
        let avail_end = self.mock.avail_addr().0 + 6 + 2 * u64::from(self.size);
        GuestAddress(avail_end.next_multiple_of(4))
    }

    /// The device's view of the queue, ready.
    pub(crate) fn queue(&self) -> Queue {
        let mut queue = Queue::new(self.size).expect("a valid size");
        queue.set_size(self.size);
        queue
            .try_set_desc_table_address(self.mock.desc_table_addr())
            .and_then(|()| queue.try_set_avail_ring_address(self.mock.avail_addr()))
            .and_then(|()| queue.try_set_used_ring_address(self.used_addr()))
            .expect("aligned rings");
        queue.set_ready(true);
        queue
    }

    /// Writes `requests` as chains from descriptor 0 on (headers into guest memory, descriptors
    /// into the table) and makes them available, in order. Their descriptors must fit the table.
    pub(crate) fn offer(&self, requests: &[Request]) {
        let mut index = 0;
        let avail = self.mock.avail();
        let first = avail.idx().load();
        for (n, request) in requests.iter().enumerate() {
            self.mem
                .write_slice(&request.header.encode(), request.header_at)
                .expect("the header buffer is mapped");
            let slot = (usize::from(first) + n) % usize::from(self.size);
            avail
                .ring()
                .ref_at(slot)
                .expect("in the ring")
                .store(u16::to_le(index));
            let parts = core::iter::once((request.header_at, Header::SIZE as u32, 0)).chain(
                request
                    .response
                    .iter()
                    .map(|&(addr, len)| (addr, len, VRING_DESC_F_WRITE as u16)),
            );
            let last = request.response.len();
            for (i, (addr, len, flags)) in parts.enumerate() {
                let (flags, next) = if i < last {
                    (flags | VRING_DESC_F_NEXT as u16, index + 1)
                } else {
                    (flags, 0)
                };
                let desc = Descriptor::new(addr.raw_value(), len, flags, next);
                assert!(index < self.size, "the chains fit the table");
                self.mock
                    .desc_table()
                    .store(index, RawDescriptor::from(desc))
                    .expect("in the table");
                index += 1;
            }
        }
        let offered = u16::try_from(requests.len()).expect("fewer than 2^16");
        avail.idx().store(u16::to_le(first.wrapping_add(offered)));
    }
}

/// The driver's side of a full available ring: makes all of it available again, as it was last
/// written, so the device's next `size` pops serve the same heads once more.
pub(crate) fn recycle<M: GuestMemory>(mem: &M, queue: &Queue) {
    let idx = GuestAddress(queue.avail_ring()).unchecked_add(2);
    let next: u16 = mem.read_obj(idx).expect("the ring is mapped");
    mem.write_obj(next.wrapping_add(queue.size()), idx)
        .expect("the ring is mapped");
}
