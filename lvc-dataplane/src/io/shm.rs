//! Shared memory as a slice of `AtomicU64`s: a `MAP_SHARED` mapping of a
//! file descriptor (a `BPF_F_MMAPABLE` map's, or a file's on tmpfs). The
//! reply table (`replymap`) and the connection journal (`journal`) are
//! built on it; this is the only place that maps or unmaps.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// `len` 64-bit words of `MAP_SHARED` memory, unmapped on drop.
pub struct SharedWords {
    ptr: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through
// `AtomicU64`s (which are Sync); nothing in it is tied to a thread.
unsafe impl Send for SharedWords {}
// SAFETY: as above: `&SharedWords` only hands out `&[AtomicU64]`.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Maps the first `len` words of `fd` (which must be at least that
    /// long: a BPF array's size is checked by the kernel, a file's by the
    /// caller).
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> std::io::Result<Self> {
        assert!(len > 0);
        // SAFETY: a fresh shared mapping of `len * 8` bytes of `fd`; the
        // kernel checks the fd and the length against the object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self { ptr, len })
    }

    /// The words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` is a live, page-aligned mapping of `len` u64s until
        // `drop`, and AtomicU64 has the layout of u64.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no slice of it
        // outlives `self` (`words` borrows `self`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len * 8);
        }
    }
}
