//! AF_XDP sockets and UMEM frame ownership — the only module with `unsafe`.
//!
//! One [`WorkerIo`] belongs to one worker thread. It owns one UMEM shared by
//! that worker's sockets (one per served interface, all on the same rx queue
//! index), so a frame received on one interface can be transmitted on another
//! without a copy.
//!
//! The ownership rule of AF_XDP — a frame handed to the fill or TX ring must
//! not be touched until it comes back through the RX or completion ring — is
//! enforced by the type system here: the only way to obtain a [`Frame`] is to
//! receive one (or take a free one), `Frame` is neither `Copy` nor `Clone`,
//! and giving a frame to the kernel consumes it. Frame bytes are reachable
//! only through a `&mut Frame`, so the pipeline never sees `unsafe`.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// Most kick-and-reap rounds per port per loop iteration.
const MAX_TX_ROUNDS: u32 = 8;

/// Sizes of one worker's rings and UMEM.
#[derive(Clone, Copy, Debug)]
pub struct IoConfig {
    /// Frames per ring (fill, completion, rx, tx); a power of two.
    pub ring_size: u32,
    /// Bytes per frame (2048 or 4096).
    pub frame_size: u32,
    /// Use driver-mode XDP flags for the bind (informational for copy mode).
    pub skb_mode: bool,
    /// Frames beyond what the rings need: what shaping queues may hold.
    pub queue_frames: u32,
    /// Zero-copy binding: where the driver supports it (`Auto`), required
    /// (`On`: the bind fails elsewhere), or never (`Off`: copy mode).
    pub zero_copy: ZeroCopy,
}

/// `--zero-copy`: how the sockets bind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ZeroCopy {
    /// Zero-copy where the driver supports it, copy mode elsewhere (veth).
    #[default]
    Auto,
    /// Zero-copy or fail.
    On,
    /// Copy mode always.
    Off,
}

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            ring_size: 2048,
            frame_size: 4096,
            skb_mode: false,
            queue_frames: HELD_FRAMES as u32,
            zero_copy: ZeroCopy::Auto,
        }
    }
}

/// Frames a worker's UMEM has beyond what its rings need: what it may
/// hold past one iteration (shaping queues), all interfaces together.
pub const HELD_FRAMES: usize = 4096;

/// A UMEM frame owned by userspace. Not `Clone`: exactly one owner.
#[derive(Debug)]
pub struct Frame {
    desc: FrameDesc,
}

impl Frame {
    /// Length of the packet in the frame.
    #[inline]
    pub fn len(&self) -> usize {
        self.desc.lengths().data()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A frame of no UMEM, with no bytes (`len()` is 0), for unit tests
    /// of what holds frames (the shaping queues). Never given to a ring.
    #[cfg(test)]
    pub(crate) fn for_test() -> Self {
        Self {
            desc: FrameDesc::default(),
        }
    }
}

/// One AF_XDP socket: an (interface, queue) with its four rings.
struct Port {
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Frames in the TX ring or in flight, not yet completed.
    tx_outstanding: u32,
    /// Frames currently owned by the kernel through the fill ring.
    fill_level: u32,
}

/// All AF_XDP state of one worker.
pub struct WorkerIo {
    umem: Umem,
    ports: Vec<Port>,
    /// Frames owned by userspace and unused.
    free: Vec<FrameDesc>,
    /// Scratch for ring operations (no allocation per batch).
    scratch: Vec<FrameDesc>,
    /// Where RX and completion descriptors are read into: a ring's worth,
    /// sized once (not re-filled with defaults on every call).
    completions: Vec<FrameDesc>,
    ring_size: u32,
    mtu: usize,
    /// The epoll instance `wait` sleeps in, with every port's socket
    /// registered once (a `poll()` sets up and tears down a wait on each
    /// socket, and drives each one's TX, on every call).
    epoll: OwnedFd,
    /// Where `wait` reads ready sockets into (one per port, sized once).
    events: Vec<libc::epoll_event>,
    /// The kernel has `epoll_pwait2` (Linux 5.11+); cleared the first time
    /// it says ENOSYS, so an older kernel costs one syscall per wait too.
    pwait2: bool,
}

/// Why a socket could not be set up, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error(
        "cannot allocate the UMEM ({0}); AF_XDP needs CAP_NET_RAW and CAP_IPC_LOCK (run as root)"
    )]
    Umem(String),
    #[error("cannot create the worker's epoll instance: {0}")]
    Epoll(String),
    #[error("cannot bind an AF_XDP socket to {iface} queue {queue}: {reason}")]
    Bind {
        iface: String,
        queue: u32,
        reason: String,
    },
}

impl WorkerIo {
    /// Opens one socket per interface in `ifaces`, all on rx queue `queue`,
    /// sharing one UMEM. Retries EBUSY (a previous process's socket on the
    /// same queue may still be being torn down) with backoff.
    pub fn open(ifaces: &[String], queue: u32, cfg: IoConfig) -> Result<Self, XskError> {
        let ring = QueueSize::new(cfg.ring_size).map_err(|e| XskError::Umem(e.to_string()))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(cfg.frame_size).map_err(|e| XskError::Umem(e.to_string()))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| XskError::Umem(e.to_string()))?;
        // Per port: a full fill ring plus a full TX ring of frames; and
        // the shaping queues' frames.
        let count = cfg.ring_size * 2 * ifaces.len().max(1) as u32 + cfg.queue_frames;
        let (umem, free) = Umem::new(umem_cfg, NonZeroU32::new(count).expect("non-zero"), false)
            .map_err(|e| XskError::Umem(error_chain(&e)))?;
        let xdp_flags = if cfg.skb_mode {
            XdpFlags::XDP_FLAGS_SKB_MODE
        } else {
            XdpFlags::XDP_FLAGS_DRV_MODE
        };
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            // lvc loads and attaches its own program (aya) and inserts each
            // socket into its XSKMAP; libxdp must not load its dispatcher.
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .xdp_flags(xdp_flags)
            .bind_flags(
                BindFlags::XDP_USE_NEED_WAKEUP
                    | match cfg.zero_copy {
                        // (Neither flag: the kernel tries zero-copy first.)
                        ZeroCopy::Auto => BindFlags::empty(),
                        ZeroCopy::On => BindFlags::XDP_ZEROCOPY,
                        ZeroCopy::Off => BindFlags::XDP_COPY,
                    },
            )
            .build();
        let mut ports = Vec::with_capacity(ifaces.len());
        for name in ifaces {
            let iface: Interface = name.parse().map_err(|_| XskError::Bind {
                iface: name.clone(),
                queue,
                reason: "invalid interface name".into(),
            })?;
            let mut delay = Duration::from_millis(20);
            let mut attempt = 0;
            let (tx, rx, fq_cq) = loop {
                // SAFETY: every socket of this UMEM is bound to a distinct
                // (interface, queue) pair, each with its own fill/completion
                // rings, and INHIBIT_PROG_LOAD is set, as xsk-rs requires for
                // shared UMEMs.
                match unsafe { Socket::new(sock_cfg, &umem, &iface, queue) } {
                    Ok(s) => break s,
                    Err(e) => {
                        let errno = std::error::Error::source(&e)
                            .and_then(|s| s.downcast_ref::<io::Error>())
                            .and_then(io::Error::raw_os_error);
                        if errno == Some(libc::EAFNOSUPPORT) {
                            return Err(XskError::Bind {
                                iface: name.clone(),
                                queue,
                                reason:
                                    "AF_XDP is unavailable: this kernel lacks CONFIG_XDP_SOCKETS"
                                        .into(),
                            });
                        }
                        let busy = errno == Some(libc::EBUSY);
                        attempt += 1;
                        if busy && attempt < 8 {
                            std::thread::sleep(delay);
                            delay *= 2;
                            continue;
                        }
                        let mut reason = error_chain(&e);
                        if busy {
                            reason.push_str(" (queue busy: another AF_XDP program uses it)");
                        }
                        return Err(XskError::Bind {
                            iface: name.clone(),
                            queue,
                            reason,
                        });
                    }
                }
            };
            let (fill, comp) = fq_cq.ok_or_else(|| XskError::Bind {
                iface: name.clone(),
                queue,
                reason: "interface listed twice".into(),
            })?;
            ports.push(Port {
                rx,
                tx,
                fill,
                comp,
                tx_outstanding: 0,
                fill_level: 0,
            });
        }
        let mtu = umem_cfg.mtu() as usize;
        let epoll = epoll_of(ports.iter().map(|p| p.rx.fd().as_raw_fd()))
            .map_err(|e| XskError::Epoll(e.to_string()))?;
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; ports.len()];
        let mut io = Self {
            umem,
            ports,
            free,
            scratch: Vec::with_capacity(cfg.ring_size as usize),
            completions: vec![FrameDesc::default(); cfg.ring_size as usize],
            ring_size: cfg.ring_size,
            mtu,
            epoll,
            events,
            pwait2: true,
        };
        for p in 0..io.ports.len() {
            io.refill(p);
        }
        Ok(io)
    }

    /// Number of sockets (ports), in the order of `open`'s `ifaces`.
    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// Largest packet a frame can hold.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Whether a port's socket was bound in zero-copy mode (the kernel's
    /// answer: `XDP_OPTIONS`).
    pub fn zero_copy(&self, port: usize) -> bool {
        let mut opts = libc::xdp_options { flags: 0 };
        let mut len = std::mem::size_of::<libc::xdp_options>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `opts`, which
        // is that large, on a socket this worker owns.
        let r = unsafe {
            libc::getsockopt(
                self.socket_fd(port),
                libc::SOL_XDP,
                libc::XDP_OPTIONS,
                (&mut opts as *mut libc::xdp_options).cast(),
                &mut len,
            )
        };
        r == 0 && opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0
    }

    /// The raw fd of a port's socket, for the XSKMAP.
    pub fn socket_fd(&self, port: usize) -> i32 {
        self.ports[port].rx.fd().as_raw_fd()
    }

    /// Receives up to `max` frames from `port` into `out`.
    pub fn recv(&mut self, port: usize, max: usize, out: &mut Vec<Frame>) -> usize {
        let p = &mut self.ports[port];
        let max = max.min(self.completions.len());
        // SAFETY: the descriptors come back from the RX ring of a socket of
        // this UMEM; from now on userspace owns them (wrapped in `Frame`).
        let n = unsafe { p.rx.consume(&mut self.completions[..max]) };
        p.fill_level -= n as u32;
        out.extend(self.completions[..n].iter().map(|&desc| Frame { desc }));
        n
    }

    /// The packet bytes of a frame, for reading and in-place rewriting.
    #[inline]
    pub fn bytes_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        // SAFETY: a `Frame` exists only while userspace owns the frame (it is
        // created on receive/allocation and consumed when handed back to the
        // kernel), and `&mut Frame` makes this the only access to it.
        let mut data = unsafe { self.umem.data_mut(&mut frame.desc) };
        let bytes = data.contents_mut();
        let (ptr, len) = (bytes.as_mut_ptr(), bytes.len());
        // SAFETY: the bytes live in the UMEM mapping, which `self.umem` keeps
        // alive for 'a; the exclusive borrow of `frame` for 'a keeps every
        // other access to this frame out, as above.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    /// Sets the packet length of a frame (to grow or shrink it in place);
    /// false if `len` does not fit the frame.
    pub fn set_len(&self, frame: &mut Frame, len: usize) -> bool {
        if len > self.mtu {
            return false;
        }
        // SAFETY: as in `bytes_mut`: `&mut Frame` is the only access to a
        // frame userspace owns.
        let mut data = unsafe { self.umem.data_mut(&mut frame.desc) };
        data.cursor().set_pos(len);
        true
    }

    /// Takes a free frame of `len` bytes and has `fill` write it from the
    /// bytes of frame `src` (a packet split into fragments: each piece is
    /// copied once, straight from the packet, and nothing is zeroed).
    /// `None` when no frame is free or `len` is larger than a frame.
    pub fn alloc_from(
        &mut self,
        src: &mut Frame,
        len: usize,
        fill: impl FnOnce(&[u8], &mut [u8]),
    ) -> Option<Frame> {
        if len > self.mtu {
            return None;
        }
        let mut desc = self.free.pop()?;
        // SAFETY: `desc` came from the free list, so no ring holds it and
        // nothing else accesses it.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        data.cursor().set_pos(len);
        let out = data.contents_mut();
        let (out_ptr, out_len) = (out.as_mut_ptr(), out.len());
        let from = self.bytes_mut(src);
        // SAFETY: `desc` is a free frame and `src` a frame userspace owns
        // exclusively (`&mut Frame`): two distinct frames of the UMEM
        // mapping, which `self.umem` keeps alive for this call.
        let to = unsafe { std::slice::from_raw_parts_mut(out_ptr, out_len) };
        fill(from, to);
        Some(Frame { desc })
    }

    /// Gives a frame that will not be sent back to the free list.
    #[inline]
    pub fn release(&mut self, frame: Frame) {
        self.free.push(frame.desc);
    }

    /// Queues `frames` for transmission on `port`. Frames that do not fit the
    /// TX ring are released. Returns (frames queued, their bytes).
    pub fn send(&mut self, port: usize, frames: &mut Vec<Frame>) -> (usize, usize) {
        if frames.is_empty() {
            return (0, 0);
        }
        let p = &mut self.ports[port];
        let room = p.tx.nb_free(frames.len() as u32) as usize; // may exceed the ask
        let n = room.min(frames.len());
        self.scratch.clear();
        self.scratch.extend(frames.drain(..n).map(|f| f.desc));
        // SAFETY: the frames were owned by userspace (as `Frame`s, now
        // consumed) and belong to this UMEM; the ring had room for all `n`.
        let produced = unsafe { p.tx.produce(&self.scratch) };
        debug_assert_eq!(produced, n);
        p.tx_outstanding += n as u32;
        let bytes = self.scratch.iter().map(|d| d.lengths().data()).sum();
        self.free.extend(frames.drain(..).map(|f| f.desc));
        (n, bytes)
    }

    /// Kicks TX on every port with frames outstanding, reaps completions
    /// into the free list, and tops the fill rings up.
    /// Returns (`sendto` kicks made, frames completed).
    pub fn service(&mut self) -> (u64, u64) {
        let (mut kicks, mut completed) = (0, 0);
        let ring = self.ring_size;
        for i in 0..self.ports.len() {
            let p = &mut self.ports[i];
            // Copy mode transmits at most 32 frames per kick: kick and reap
            // until the ring drains, stops making progress, or the round
            // budget is spent (so RX keeps its turn). Only a ring still
            // holding frames the kernel has not taken is kicked: a frame it
            // took completes when its skb is freed (on veth, by the peer's
            // NAPI thread, later), and kicking for that would only cost a
            // syscall — half the `sendto`s of short connections did.
            let mut rounds = 0;
            while p.tx_outstanding > 0 && rounds < MAX_TX_ROUNDS {
                rounds += 1;
                if p.tx.needs_wakeup() && p.tx.nb_free(ring) < ring {
                    let _ = p.tx.wakeup();
                    kicks += 1;
                }
                // SAFETY: completion descriptors belong to this UMEM and are
                // handed back to userspace by the kernel.
                let done = unsafe { p.comp.consume(&mut self.completions) };
                p.tx_outstanding -= done as u32;
                completed += done as u64;
                self.free.extend_from_slice(&self.completions[..done]);
                if done == 0 {
                    break;
                }
            }
            self.refill(i);
            let p = &mut self.ports[i];
            // Zero-copy drivers that ran dry wait for a wakeup once the fill
            // ring has frames again.
            if p.fill.needs_wakeup() {
                let _ = p.fill.wakeup(p.rx.fd_mut(), 0);
            }
        }
        (kicks, completed)
    }

    /// TX ring slots `port` may still fill before completions come back.
    pub fn tx_room(&self, port: usize) -> usize {
        self.ring_size
            .saturating_sub(self.ports[port].tx_outstanding) as usize
    }

    /// True if any port has transmissions not yet completed.
    pub fn tx_pending(&self) -> bool {
        self.ports.iter().any(|p| p.tx_outstanding > 0)
    }

    /// Puts free frames on `port`'s fill ring, keeping a share for TX.
    fn refill(&mut self, port: usize) {
        let p = &mut self.ports[port];
        let want = self.ring_size - p.fill_level;
        // Leave frames for the other ports' fill rings.
        let share = (self.free.len() as u32).min(want);
        if share == 0 {
            return;
        }
        // nb_free may report more room than asked for: never more than `share`.
        let n = (p.fill.nb_free(share)).min(share) as usize;
        if n == 0 {
            return;
        }
        let start = self.free.len() - n;
        // SAFETY: these frames are on the free list, so userspace owns them
        // and no ring holds them; they leave the free list right after.
        let produced = unsafe { p.fill.produce(&self.free[start..]) };
        if produced == n {
            self.free.truncate(start);
            p.fill_level += n as u32;
        }
    }

    /// Waits until a port has received frames or `timeout` passes
    /// (nanosecond resolution: shaping wakes up for its next tokens).
    pub fn wait(&mut self, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        if self.pwait2 {
            // SAFETY: `events` is a valid array of `events.len()`
            // epoll_events the kernel may write and `ts` a valid timespec,
            // both outliving the call; a null sigmask leaves the signal mask
            // alone.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.epoll.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    self.events.len() as libc::c_int,
                    &ts as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
                return;
            }
            self.pwait2 = false;
        }
        // Before Linux 5.11: millisecond resolution, rounded up.
        let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `events` is a valid array of `events.len()` epoll_events
        // the kernel may write, outliving the call.
        unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                ms,
            )
        };
    }

    /// Kernel-side socket statistics per port: (rx_dropped, rx_ring_full,
    /// fill_ring_empty, tx_invalid).
    pub fn kernel_stats(&self, port: usize) -> Option<(u64, u64, u64, u64)> {
        let s = self.ports[port].rx.fd().xdp_statistics().ok()?;
        Some((
            s.rx_dropped(),
            s.rx_ring_full(),
            s.rx_fill_ring_empty_descs(),
            s.tx_invalid_descs(),
        ))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An epoll instance watching `fds` for input (level-triggered).
fn epoll_of(fds: impl Iterator<Item = RawFd>) -> io::Result<OwnedFd> {
    // SAFETY: no pointer arguments; the result is checked.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ep` is a new descriptor that nothing else owns.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    for fd in fds {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a valid epoll_event outliving the call.
        if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(ep)
}
