//! The few system interfaces std does not wrap:
//!
//! - shared memory as a slice of `AtomicU64`s: a `MAP_SHARED` mapping of a
//!   file descriptor (a `BPF_F_MMAPABLE` map's, or a file's on tmpfs). The
//!   reply table (`replymap`) and the connection journal (`journal`) are
//!   built on it; this is the only place that maps or unmaps;
//! - a TUN device that lives as long as its file descriptor (VIP
//!   announcement: its routes vanish with the process, however it ends);
//! - a socket receive buffer past `net.core.rmem_max` (`SO_RCVBUFFORCE`);
//! - a thread's nice value (the workers' priority).

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU64};

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

    /// The same memory as bytes (for a mapping only ever used so).
    pub fn bytes(&self) -> &[AtomicU8] {
        // SAFETY: as in `words`: `len * 8` bytes live until `drop`, and
        // AtomicU8 has the layout of u8 (alignment 1).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU8>(), self.len * 8) }
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

/// A TUN device (no packet information), gone when dropped — or when the
/// process ends, however it ends: the kernel removes it with its routes.
pub struct Tun {
    _file: File,
    pub name: String,
}

impl Tun {
    /// Creates TUN device `name` (at most 15 bytes).
    pub fn create(name: &str) -> std::io::Result<Self> {
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        const IFF_TUN: libc::c_short = 0x0001;
        const IFF_NO_PI: libc::c_short = 0x1000;
        #[repr(C)]
        struct IfReq {
            name: [u8; libc::IFNAMSIZ],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("`{name}` is not an interface name (1 to 15 bytes)"),
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which
        // `IfReq` lays out (name, flags, padding to its 40 bytes); `req`
        // lives across the call and the fd is ours.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            _file: file,
            name: name.to_owned(),
        })
    }
}

/// Sets a socket's receive buffer to `bytes` past `net.core.rmem_max`
/// (`SO_RCVBUFFORCE`: needs CAP_NET_ADMIN). The route thread's
/// notification socket uses it so a burst of route changes is not lost.
pub fn force_rcvbuf(sock: &impl AsRawFd, bytes: usize) -> std::io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: SO_RCVBUFFORCE reads one `c_int` from the pointer, which
    // points at `v` for the call; a bad fd only makes it fail.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's nice value (on Linux each thread has its own).
pub fn thread_nice() -> i32 {
    // SAFETY: getpriority on the calling thread's id; -1 is a valid nice
    // value, so errno (this thread's) is cleared first and read after.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t);
        if n == -1 && *libc::__errno_location() != 0 {
            return 0;
        }
        n
    }
}

/// Puts the calling thread in the real-time class `SCHED_RR` at
/// `priority` (1 to 99: takes CAP_SYS_NICE), or back in `SCHED_OTHER` at
/// its nice value with 0 (no privilege needed).
pub fn set_thread_realtime(priority: i32) -> std::io::Result<()> {
    let policy = if priority > 0 {
        libc::SCHED_RR
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: sched_setscheduler(2) on the calling thread (pid 0) reads
    // one `sched_param`, which lives across the call.
    let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the calling thread's nice value (lowering it takes CAP_SYS_NICE).
pub fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: a plain syscall on the calling thread's id; nothing is
    // borrowed.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
