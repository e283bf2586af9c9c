//! The payload arena: shared memory for large task inputs.
//!
//! A task input at least [`SHARED_ABOVE`] bytes long is not written into the
//! worker's socket. The submitting thread encodes it straight into a block of one
//! memory file (`memfd`) that the pool maps read-write and every worker process
//! maps read-only; the *shared task* frame names the block by offset and length,
//! and the worker decodes the input from its mapping. Through a socket a 1 MiB
//! input is copied four times (encode, frame buffer, kernel, worker's buffer); here
//! it is copied twice (encode into the block, decode out of it).
//!
//! # The rules that make sharing safe
//!
//! - **The pool writes a block once**, before any frame names it, and never while
//!   a worker may read it: a block is freed only when its task's *done* has
//!   arrived (the worker decoded the input before running it), when the task is
//!   resolved without ever having been sent, or when the process that held it has
//!   been reaped. A block stays with its task across a crash, so the task can be
//!   sent again without a copy.
//! - **Workers cannot write.** The memory file is sealed (`F_SEAL_FUTURE_WRITE`)
//!   after the pool maps it, so a worker can map it read-only only: a wild write
//!   by a worker's native code faults in that worker instead of corrupting
//!   another task's input. The size is sealed too, so a worker cannot shrink the
//!   file under the pool's mapping.
//! - **A worker checks every block against its mapping** before reading it; a
//!   block outside it is a protocol error.
//!
//! # Allocation
//!
//! First fit from the lowest offset, blocks aligned to pages. Low offsets are
//! reused first, so the memory the arena touches stays close to the largest
//! amount of input in flight at once, not the total sent. When the arena empties,
//! pages above [`RETAIN`] are given back to the system (`fallocate` punching a
//! hole). The mapping is [`CAPACITY`] bytes of address space, reserved, not
//! committed: memory is used only where blocks have been written. An input that
//! does not fit goes through the socket as usual.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use nix::fcntl::{fallocate, fcntl, FallocateFlags, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::unistd::ftruncate;

use crate::sync::lock;

/// Inputs this long or longer go through the arena.
pub(crate) const SHARED_ABOVE: usize = 64 * 1024;
/// The arena's size: address space only, until blocks are written.
pub(crate) const CAPACITY: usize = 1 << 30;
/// Bytes kept (not given back) when the arena empties.
const RETAIN: usize = 16 << 20;
/// Block alignment: a page, so no two blocks share one.
const ALIGN: usize = 4096;

/// The pool's side of the arena.
pub(crate) struct Arena {
    file: OwnedFd,
    base: NonNull<u8>,
    blocks: Mutex<Blocks>,
}

// SAFETY: `base` points to a shared mapping owned by the arena for its whole
// life; the bytes of a block are written only by the holder of its `Block`
// (unique), and the bookkeeping is behind a mutex.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

#[derive(Default)]
struct Blocks {
    /// Live blocks: offset → length (rounded up to `ALIGN`).
    live: BTreeMap<usize, usize>,
    /// The highest end any block has had since the last give-back.
    high_water: usize,
}

impl Arena {
    /// Creates the memory file, maps it, and seals it against workers' writes.
    pub(crate) fn new() -> std::io::Result<Arc<Arena>> {
        let file = memfd_create(
            "crew-payloads",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        ftruncate(&file, CAPACITY as i64)?;
        // SAFETY: a fresh shared mapping of a file this function owns; nothing
        // else refers to the address range.
        let base = unsafe {
            mmap(
                None,
                std::num::NonZeroUsize::new(CAPACITY).expect("non-zero"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE,
                &file,
                0,
            )?
        };
        // Sealed after the pool's own writable mapping exists: from now on only
        // read-only mappings can be made, and the size is fixed.
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_FUTURE_WRITE
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        Ok(Arc::new(Arena {
            file,
            base: base.cast(),
            blocks: Mutex::new(Blocks::default()),
        }))
    }

    /// The memory file, for a worker process to inherit.
    pub(crate) fn file(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// A block of `len` bytes, or `None` if the arena has no room for it.
    pub(crate) fn alloc(self: &Arc<Self>, len: usize) -> Option<Block> {
        let size = len.checked_next_multiple_of(ALIGN)?.max(ALIGN);
        let mut blocks = lock(&self.blocks);
        let mut at = 0;
        for (&offset, &taken) in &blocks.live {
            if offset - at >= size {
                break;
            }
            at = offset + taken;
        }
        if at + size > CAPACITY {
            return None;
        }
        blocks.live.insert(at, size);
        blocks.high_water = blocks.high_water.max(at + size);
        Some(Block {
            arena: Arc::clone(self),
            offset: at,
            len,
        })
    }

    fn free(&self, offset: usize) {
        let mut blocks = lock(&self.blocks);
        blocks.live.remove(&offset);
        if blocks.live.is_empty() && blocks.high_water > RETAIN {
            // Give the pages back. Failure only means they stay committed.
            let _ = fallocate(
                &self.file,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                RETAIN as i64,
                (blocks.high_water - RETAIN) as i64,
            );
            blocks.high_water = RETAIN;
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length, and no `Block`
        // outlives the arena (each holds an `Arc` to it).
        let _ = unsafe { munmap(self.base.cast(), CAPACITY) };
    }
}

/// One task input's bytes in the arena; freed when dropped.
pub(crate) struct Block {
    arena: Arc<Arena>,
    offset: usize,
    len: usize,
}

impl Block {
    /// Where the block starts in the memory file.
    pub(crate) fn offset(&self) -> u64 {
        self.offset as u64
    }

    /// The input's length.
    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }

    /// The block's bytes, to encode the input into. Only before a frame names
    /// the block: `&mut self` proves no one else holds it.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the range lies inside the mapping (checked in `alloc`), no
        // other block overlaps it, and this `Block` is its only handle.
        unsafe {
            std::slice::from_raw_parts_mut(self.arena.base.as_ptr().add(self.offset), self.len)
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.arena.free(self.offset);
    }
}

/// A worker's read-only view of the pool's arena.
pub(crate) struct ArenaView {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a read-only mapping, never unmapped while the worker runs.
unsafe impl Send for ArenaView {}
// SAFETY: as above.
unsafe impl Sync for ArenaView {}

impl ArenaView {
    /// Maps the memory file the pool passed, read-only, whole.
    pub(crate) fn map(file: OwnedFd) -> std::io::Result<ArenaView> {
        let len = nix::sys::stat::fstat(&file)?.st_size as usize;
        let Some(size) = std::num::NonZeroUsize::new(len) else {
            return Err(std::io::Error::other("the payload arena is empty"));
        };
        // SAFETY: a fresh read-only shared mapping; the descriptor can be closed
        // afterwards (the mapping keeps the file).
        let base = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )?
        };
        Ok(ArenaView {
            base: base.cast(),
            len,
        })
    }

    /// The bytes of a block the pool named, if it lies inside the arena.
    pub(crate) fn block(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: inside the mapping (checked above). The pool does not write a
        // block between sending its frame and receiving its *done*, which is
        // after this worker stops reading it (the module's rules).
        Some(unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(offset as usize), len as usize)
        })
    }
}
