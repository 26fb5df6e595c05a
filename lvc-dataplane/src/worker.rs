//! The worker loop: one thread per rx queue index, serving that queue on
//! every interface (one AF_XDP socket per interface, one shared UMEM, so a
//! frame received on the client side leaves on the server side without a
//! copy).
//!
//! Per iteration: read the clock once, load the service and route snapshots
//! once, then for each socket take a batch through
//! parse → conntrack → schedule → rewrite and queue it on its egress socket;
//! finally kick TX, reap completions and refill the fill rings.

use crate::addr::Addr;
use crate::io::flowslots::FlowSlots;
use crate::io::steer::Replies;
use crate::io::xsk::{Frame, WorkerIo};
use crate::net::route::{NeighRequest, NextHop, RouteTable};
use crate::pipeline::conntrack::Conntrack;
use crate::pipeline::conntrack::Dir;
use crate::pipeline::services::ServiceTable;
use crate::pipeline::translate::{Flow, OffloadMsg};
use crate::pipeline::{self, Decision, Effects, Tables, icmp, rewrite, translate};
use crate::shape::classify::{self, FlowMeta};
use crate::shape::{Enqueued, MAX_HELD, PortShaper, ShapeTable};
use crate::stats::{Drop, WorkerStats, bump};
use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Frames taken from one RX ring per iteration.
pub const BATCH: usize = 64;
/// Frames a worker holds while their next hop's MAC is being resolved.
const PARK_MAX: usize = 256;
/// How long a parked frame waits for its neighbour: as long as the kernel
/// queues a packet while it resolves (3 probes, 1 s apart, for ARP and
/// neighbour discovery alike).
const PARK_TIMEOUT: Duration = Duration::from_secs(3);

/// A frame waiting for its next hop's MAC address.
struct Parked {
    frame: Frame,
    next: Addr,
    since: Instant,
    /// When resolution was last requested for it.
    asked: Instant,
}

/// Everything a worker shares with the rest of the daemon.
#[derive(Clone)]
pub struct Shared {
    pub services: Arc<ArcSwap<ServiceTable>>,
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub conntrack: Arc<Conntrack>,
    pub neigh_requests: Sender<NeighRequest>,
    pub shaping: Arc<ArcSwap<ShapeTable>>,
    /// The offload thread's queue, with `--offload on`.
    pub offload: Option<Sender<OffloadMsg>>,
    /// The flow table shared with XDP, with `--offload on`: a worker
    /// installs the connections it offloads there itself.
    pub flow_slots: Option<Arc<FlowSlots>>,
    pub shutdown: Arc<AtomicBool>,
    /// The daemon's start: `now` is whole seconds since then.
    pub epoch: Instant,
}

/// Frames sent per shaped interface per iteration, at most.
const SHAPE_BUDGET: usize = 4 * BATCH;

/// One worker's shaping queues, one per shaped port, for the shaping
/// table they were built from.
struct Shapers {
    /// This worker's number among the workers (for fair shares).
    worker: usize,
    /// Frames freed by reconfigurations, not yet counted.
    dropped: u64,
    table: Arc<ShapeTable>,
    ports: Vec<Option<PortShaper>>,
}

impl Shapers {
    /// Rebuilds the queues for a new table, carrying queued frames over.
    fn sync(&mut self, table: Arc<ShapeTable>, port_ifindex: &[u32], now: u64, io: &mut WorkerIo) {
        let mut dropped = Vec::new();
        let seed = now ^ (self as *const Self as u64);
        let mut next: Vec<Option<PortShaper>> = port_ifindex
            .iter()
            .map(|&ifx| {
                table
                    .dev(ifx)
                    .map(|d| PortShaper::new(d.clone(), self.worker, seed))
            })
            .collect();
        for (old, new) in self.ports.drain(..).zip(next.iter_mut()) {
            match (old, new) {
                (Some(old), Some(new)) => new.adopt(old, now, &mut dropped),
                (Some(mut old), None) => dropped.extend(old.drain()),
                _ => {}
            }
        }
        let n = dropped.len() as u64;
        for f in dropped {
            io.release(f);
        }
        self.dropped += n;
        self.ports = next;
        self.table = table;
    }

    fn held(&self) -> usize {
        self.ports.iter().flatten().map(|p| p.held).sum()
    }
}

pub struct Worker {
    pub io: WorkerIo,
    /// A split packet's later fragments, on their way to TX (reused).
    pub pieces: Vec<Frame>,
    /// The reply table shared with XDP (and its overflow map).
    pub replies: Replies,
    /// ifindex of each of `io`'s ports, in port order.
    pub port_ifindex: Vec<u32>,
    pub shared: Shared,
    pub stats: Arc<WorkerStats>,
    /// The ICMP errors this worker may still send now (see [`IcmpLimit`]).
    pub icmp_limit: IcmpLimit,
    /// When the worker naps instead of waiting for frames (see
    /// [`Coalesce`]).
    pub coalesce: Coalesce,
}

/// Interrupt moderation for a worker, as a NIC's adaptive `rx-usecs`:
/// while frames reach the worker's sockets at least every `period` (its
/// last wait for one lasted less than that), the worker handles what came,
/// then sleeps `period` before looking again, instead of being woken by
/// the next frame. Each wakeup (a context switch away from the NAPI
/// thread and back, two with the sleep) then serves every frame that came
/// in the period, not one or two. A frame waits at most `period` longer;
/// at lower rates nothing changes. Under overload, a worker sharing its
/// CPU with the NAPI thread that fills its sockets runs out of frames now
/// and then (NAPI cannot run while it does): it naps then too, and NAPI
/// fills the sockets meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub struct Coalesce {
    period: Duration,
    /// The last wait for frames ended within `period`.
    busy: bool,
    /// Frames were handled since the worker last waited or napped.
    worked: bool,
}

impl Coalesce {
    /// Naps of `period` (zero: never nap).
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            ..Self::default()
        }
    }

    /// Notes that `n` frames were handled.
    pub fn handled(&mut self, n: usize) {
        self.worked |= n > 0;
    }

    /// With nothing left to do: how long to nap before looking at the
    /// sockets again, or `None` to wait for the next frame.
    pub fn nap(&mut self) -> Option<Duration> {
        let worked = std::mem::take(&mut self.worked);
        (worked && self.busy && !self.period.is_zero()).then_some(self.period)
    }

    /// Notes that a wait for frames lasted `waited`.
    pub fn waited(&mut self, waited: Duration) {
        self.busy = waited < self.period;
        self.worked = false;
    }
}

/// A token bucket for the ICMP errors lvc originates, as the kernel's
/// `icmp_msgs_per_sec` (1000) and `icmp_msgs_burst` (50), per worker: a
/// flood of expiring or oversized packets must not make the director a
/// reflector.
#[derive(Debug)]
pub struct IcmpLimit {
    tokens: f64,
    last_ns: u64,
}

impl Default for IcmpLimit {
    fn default() -> Self {
        Self {
            tokens: ICMP_BURST,
            last_ns: 0,
        }
    }
}

/// Errors per second and burst, per worker.
const ICMP_RATE: f64 = 1000.0;
const ICMP_BURST: f64 = 50.0;

impl IcmpLimit {
    /// Takes a token at `now_ns`; false if none is left.
    pub fn take(&mut self, now_ns: u64) -> bool {
        let dt = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = now_ns;
        self.tokens = (self.tokens + dt * ICMP_RATE).min(ICMP_BURST);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl Worker {
    /// Copies the kernel's drop counts of this worker's sockets into its
    /// stats (one `getsockopt` per socket).
    fn read_socket_stats(&self) {
        let (mut dropped, mut ring_full, mut fill_empty) = (0, 0, 0);
        for port in 0..self.io.ports() {
            if let Some((d, r, f, _)) = self.io.kernel_stats(port) {
                dropped += d;
                ring_full += r;
                fill_empty += f;
            }
        }
        self.stats.xsk_rx_dropped.store(dropped, Relaxed);
        self.stats.xsk_rx_ring_full.store(ring_full, Relaxed);
        self.stats.xsk_fill_ring_empty.store(fill_empty, Relaxed);
    }

    pub fn run(mut self) {
        let nports = self.io.ports();
        let mut rx: Vec<Frame> = Vec::with_capacity(BATCH);
        let mut out: Vec<Vec<Frame>> = (0..nports)
            .map(|_| Vec::with_capacity(BATCH * nports))
            .collect();
        let mut parked: Vec<Parked> = Vec::new();
        static WORKERS: AtomicUsize = AtomicUsize::new(0);
        let mut shapers = Shapers {
            worker: WORKERS.fetch_add(1, Relaxed) % 64,
            dropped: 0,
            table: Arc::new(ShapeTable::default()),
            ports: (0..nports).map(|_| None).collect(),
        };
        // (Owned here, so that the tables an iteration reads do not borrow
        // the worker the frames are handled by.)
        let (conntrack, ports) = (self.shared.conntrack.clone(), self.port_ifindex.clone());
        let mut socket_stats_read = u64::MAX;
        while !self.shared.shutdown.load(Relaxed) {
            let elapsed = self.shared.epoch.elapsed();
            if elapsed.as_secs() != socket_stats_read {
                socket_stats_read = elapsed.as_secs();
                self.read_socket_stats();
            }
            let now_ns = elapsed.as_nanos() as u64;
            let services = self.shared.services.load();
            let routes = self.shared.routes.load();
            let shaping = self.shared.shaping.load();
            if !Arc::ptr_eq(&shaping, &shapers.table) {
                shapers.sync(
                    Arc::clone(&shaping),
                    &self.port_ifindex,
                    now_ns,
                    &mut self.io,
                );
                bump(
                    &self.stats.drops[Drop::ShapeQueue as usize],
                    std::mem::take(&mut shapers.dropped),
                );
            }
            let tables = Tables {
                now: elapsed.as_secs() as u32,
                now_ns,
                services: &services,
                routes: &routes,
                shaping: &shaping,
                conntrack: &conntrack,
                ports: &ports,
                offload: self.shared.offload.is_some(),
            };
            if !parked.is_empty() {
                self.unpark(&mut parked, &routes, &mut out);
            }
            let mut received = 0;
            for port in 0..nports {
                received += self.io.recv(port, BATCH, &mut rx);
                for frame in rx.drain(..) {
                    self.handle(port, frame, &tables, &mut shapers, &mut parked, &mut out);
                }
            }
            let mut shaped_wait: Option<u64> = None;
            for (port, sh) in shapers.ports.iter_mut().enumerate() {
                // Shaped frames wait in their queues, not in a full TX ring.
                let room = self.io.tx_room(port).saturating_sub(out[port].len());
                if let Some(sh) = sh
                    && let Some(w) = sh.dequeue(now_ns, SHAPE_BUDGET.min(room), &mut out[port])
                {
                    shaped_wait = Some(shaped_wait.map_or(w, |x| x.min(w)));
                }
            }
            for (port, frames) in out.iter_mut().enumerate() {
                let n = frames.len();
                if n == 0 {
                    continue;
                }
                let (sent, bytes) = self.io.send(port, frames);
                bump(&self.stats.tx_packets, sent as u64);
                bump(&self.stats.tx_bytes, bytes as u64);
                if sent < n {
                    bump(&self.stats.drops[Drop::TxFull as usize], (n - sent) as u64);
                }
            }
            let (kicks, completed) = self.io.service();
            bump(&self.stats.tx_kicks, kicks);
            self.coalesce.handled(received);
            if received == 0 && completed == 0 && shaped_wait != Some(0) {
                // However the worker sleeps, a shaped queue waiting for
                // tokens wakes it in time.
                let cap = |d: Duration| match shaped_wait {
                    Some(ns) => d.min(Duration::from_nanos(ns.max(2_000))),
                    None => d,
                };
                if let Some(nap) = self.coalesce.nap() {
                    // Frames come often: let them gather (see `Coalesce`).
                    bump(&self.stats.naps, 1);
                    std::thread::sleep(cap(nap));
                    continue;
                }
                // No progress: sleep in epoll until a frame arrives. The
                // timeout bounds how long a shutdown request, a parked frame,
                // a shaped queue waiting for tokens or a stuck TX ring (link
                // down) waits — never a busy spin.
                let nap = cap(if self.io.tx_pending() {
                    Duration::from_millis(1)
                } else if parked.is_empty() {
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis(5)
                });
                let before = Instant::now();
                self.io.wait(nap);
                self.coalesce.waited(before.elapsed());
                bump(&self.stats.waits, 1);
            }
        }
        for p in parked {
            self.io.release(p.frame);
        }
        for sh in shapers.ports.iter_mut().flatten() {
            for f in sh.drain() {
                self.io.release(f);
            }
        }
    }

    /// Hands a routed frame to its egress port: straight to TX, or through
    /// the port's shaper. Returns why it was dropped, if it was.
    fn offer(
        &mut self,
        shapers: &mut Shapers,
        port: usize,
        mut frame: Frame,
        meta: &FlowMeta,
        now: u64,
        out: &mut [Vec<Frame>],
    ) -> Option<Drop> {
        // (Counting the frames held only for shaped ports.)
        let room = shapers.ports[port].is_some() && shapers.held() < MAX_HELD;
        let Some(sh) = shapers.ports[port].as_mut() else {
            out[port].push(frame);
            return None;
        };
        let bytes = self.io.bytes_mut(&mut frame);
        let class =
            classify::header(bytes).and_then(|h| Some((sh.dev.classify(bytes, &h, meta)?, h)));
        let Some((leaf, h)) = class else {
            sh.dev.direct.fetch_add(1, Relaxed);
            out[port].push(frame);
            return None;
        };
        match sh.enqueue(frame, leaf, &h, now, room) {
            Enqueued::Queued => None,
            Enqueued::Direct(f) => {
                out[port].push(f);
                None
            }
            Enqueued::Dropped(f) => {
                self.io.release(f);
                Some(Drop::ShapeQueue)
            }
            Enqueued::Policed(f) => {
                self.io.release(f);
                Some(Drop::Policed)
            }
        }
    }

    /// Takes one received frame through the pipeline and does what it
    /// decides: queue it for TX (through the shaper), split it, park it,
    /// or drop it with a counted reason.
    fn handle(
        &mut self,
        port: usize,
        mut frame: Frame,
        t: &Tables,
        shapers: &mut Shapers,
        parked: &mut Vec<Parked>,
        out: &mut [Vec<Frame>],
    ) {
        bump(&self.stats.rx_packets, 1);
        bump(&self.stats.rx_bytes, frame.len() as u64);
        let mut meta = FlowMeta {
            ingress: t.ports.get(port).copied().unwrap_or(0),
            ..FlowMeta::default()
        };
        let mut fx = Effects::default();
        let mut decision = pipeline::forward(self.io.bytes_mut(&mut frame), t, &mut meta, &mut fx);
        if let Some(msg) = fx.offload {
            self.offload(msg, t.now);
        }
        if let Some(conn) = fx.steer_replies {
            // Before the connection's first packet leaves: its replies
            // must come back to lvc.
            match self.replies.add(translate::flow_key(&conn, Dir::Reply)) {
                Ok(()) => conn.replies_steered(),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot steer a nat connection's replies");
                    decision = Err(Drop::ReplySteering);
                }
            }
        }
        if let Some(ins) = fx.proxy_insert
            && matches!(
                decision,
                Ok(Decision::Send(_) | Decision::Fragment(..) | Decision::Park(..))
            )
        {
            // A PROXY protocol header goes in front of the client's first
            // byte: the frame grows by it.
            let len = frame.len();
            if self.io.set_len(&mut frame, len + ins.len) {
                let n = pipeline::proxy::insert(self.io.bytes_mut(&mut frame), &ins);
                self.io.set_len(&mut frame, n);
            } else {
                decision = Err(Drop::TooBig);
            }
        }
        let decision = match decision {
            Ok(Decision::Icmp(what)) => match (self.originate(&mut frame, what, t), fx.refused) {
                // Refused by its route: counted as such once, whether or
                // not the ICMP error could be sent.
                (Err(_), Some(why)) => Err(why),
                (d, Some(why)) => {
                    self.stats.count_drop(why);
                    d
                }
                (d, None) => d,
            },
            Ok(Decision::Tunnel(rip)) => self.encapsulate(&mut frame, rip, t),
            d => d,
        };
        let egress = match decision {
            Ok(Decision::Send(egress)) => Ok(egress),
            Ok(Decision::Fragment(egress, mtu)) => self.fragment(&mut frame, mtu).map(|()| egress),
            Ok(Decision::Park(next, ask)) if parked.len() < PARK_MAX => {
                let _ = self.shared.neigh_requests.try_send(ask);
                let now = Instant::now();
                parked.push(Parked {
                    frame,
                    next,
                    since: now,
                    asked: now,
                });
                return;
            }
            Ok(Decision::Park(..)) => Err(Drop::NeighPending),
            Ok(Decision::Icmp(_) | Decision::Tunnel(_)) => {
                unreachable!("originate and encapsulate only send, split or park")
            }
            Err(why) => Err(why),
        };
        match egress {
            Ok(egress) => {
                let mut pieces = std::mem::take(&mut self.pieces);
                for f in std::iter::once(frame).chain(pieces.drain(..)) {
                    if let Some(why) = self.offer(shapers, egress, f, &meta, t.now_ns, out) {
                        self.stats.count_drop(why);
                    }
                }
                self.pieces = pieces;
            }
            Err(why) => {
                self.stats.count_drop(why);
                self.io.release(frame);
            }
        }
    }

    /// Offloads a connection (or retires it): its flows go into the flow
    /// table shared with XDP at once, and the offload thread is told (it
    /// reads their counters and takes them out again). Flows that find no
    /// free slot are left to the offload thread's map syscalls if the
    /// connection has shown it is worth them. Never waits: if the queue is
    /// full the connection stays with lvc and is offered again later.
    fn offload(&self, mut msg: OffloadMsg, now: u32) {
        let Some(tx) = &self.shared.offload else {
            return;
        };
        if let (OffloadMsg::Install(o), Some(slots)) = (&mut msg, &self.shared.flow_slots) {
            let placed = o.flows.iter_mut().all(|f| {
                f.slot = slots.insert(&f.key, &f.value, now);
                f.slot.is_some()
            });
            if !placed {
                unplace(slots, &mut o.flows, now);
                if !o.conn.offload_worth_syscalls() {
                    o.conn.release_offload();
                    o.conn.decline_offload(now);
                    return;
                }
            }
        }
        if let Err(e) = tx.try_send(msg)
            && let OffloadMsg::Install(mut o) = e.into_inner()
        {
            if let Some(slots) = &self.shared.flow_slots {
                unplace(slots, &mut o.flows, now);
            }
            o.conn.release_offload();
            o.conn.decline_offload(now);
        }
    }

    /// Turns `frame` into the ICMP error `what` back to its source (the
    /// frame made big enough first) and routes it.
    fn originate(
        &mut self,
        frame: &mut Frame,
        what: icmp::Originate,
        t: &Tables,
    ) -> Result<Decision, Drop> {
        if !self.icmp_limit.take(t.now_ns) {
            return Err(Drop::IcmpRateLimited);
        }
        let need = icmp::error_len(self.io.bytes_mut(frame));
        let len = frame.len();
        if !self.io.set_len(frame, need.max(len)) {
            return Err(Drop::TooBig);
        }
        let (decision, n) = pipeline::icmp_reply(self.io.bytes_mut(frame), what, t)?;
        self.io.set_len(frame, n);
        bump(&self.stats.icmp_sent, 1);
        Ok(decision)
    }

    /// Grows the frame by an IPIP header and has the pipeline wrap it to
    /// `rip` (LVS-TUN).
    fn encapsulate(&self, frame: &mut Frame, rip: Addr, t: &Tables) -> Result<Decision, Drop> {
        let len = frame.len();
        if !self.io.set_len(frame, len + rewrite::IPIP_HLEN) {
            return Err(Drop::TooBig);
        }
        pipeline::tunnel(self.io.bytes_mut(frame), len, rip, t)
    }

    /// Splits the frame's IPv4 packet into fragments that fit `mtu`: the
    /// frame becomes the first, the others are new frames, in
    /// `self.pieces` (kept from call to call: nothing is allocated).
    fn fragment(&mut self, frame: &mut Frame, mtu: u32) -> Result<(), Drop> {
        let split =
            rewrite::Split::of(self.io.bytes_mut(frame), mtu as usize).ok_or(Drop::TooBig)?;
        for (at, n, len) in split.later() {
            let piece = self
                .io
                .alloc_from(frame, len, |src, out| split.write_later(src, at, n, out));
            match piece {
                Some(f) => self.pieces.push(f),
                None => {
                    for f in self.pieces.drain(..) {
                        self.io.release(f);
                    }
                    return Err(Drop::TxFull);
                }
            }
        }
        let first = split.cut_first(self.io.bytes_mut(frame));
        self.io.set_len(frame, first);
        bump(&self.stats.fragments_made, self.pieces.len() as u64 + 1);
        Ok(())
    }

    /// Sends parked frames whose neighbour got resolved; drops those that
    /// waited too long or lost their route.
    fn unpark(&mut self, parked: &mut Vec<Parked>, routes: &RouteTable, out: &mut [Vec<Frame>]) {
        let mut i = 0;
        while i < parked.len() {
            let verdict = match routes.next_hop(parked[i].next) {
                NextHop::Ready(l2) => match self.port_ifindex.iter().position(|&x| x == l2.ifindex)
                {
                    Some(port) => {
                        let mut p = parked.remove(i);
                        let f = self.io.bytes_mut(&mut p.frame);
                        rewrite::set_macs(f, l2.src_mac, l2.dst_mac);
                        // Too big for the link now known (DF was checked,
                        // or it is a tunnel's or a fragment's): split it.
                        if rewrite::ip_len(f) > l2.mtu as usize {
                            let split = if rewrite::may_fragment(f) {
                                self.fragment(&mut p.frame, l2.mtu)
                            } else {
                                Err(Drop::TooBig)
                            };
                            match split {
                                Ok(()) => {
                                    out[port].push(p.frame);
                                    out[port].append(&mut self.pieces);
                                }
                                Err(why) => {
                                    self.stats.count_drop(why);
                                    self.io.release(p.frame);
                                }
                            }
                            continue;
                        }
                        out[port].push(p.frame);
                        continue;
                    }
                    None => Some(Drop::EgressNotServed),
                },
                NextHop::None => Some(Drop::NoRoute),
                // (A reject route appeared while it waited: dropped
                // without an ICMP error.)
                NextHop::Reject(kind) => Some(pipeline::refused(kind)),
                NextHop::Unresolved(_) if parked[i].since.elapsed() > PARK_TIMEOUT => {
                    Some(Drop::NeighPending)
                }
                NextHop::Unresolved(req) => {
                    // Ask again now and then: an earlier request may have
                    // been merged into one made just before the kernel
                    // forgot the neighbour.
                    if parked[i].asked.elapsed() >= Duration::from_millis(200) {
                        parked[i].asked = Instant::now();
                        let _ = self.shared.neigh_requests.try_send(req);
                    }
                    None
                }
            };
            match verdict {
                Some(why) => {
                    let p = parked.remove(i);
                    self.stats.count_drop(why);
                    self.io.release(p.frame);
                }
                None => i += 1,
            }
        }
    }
}

/// Takes flows a worker placed in the shared table out again (their
/// connection is not offloaded after all).
fn unplace(slots: &FlowSlots, flows: &mut [Flow], now: u32) {
    for f in flows {
        if let Some(at) = f.slot.take() {
            slots.remove(at, &f.key, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Coalesce, IcmpLimit};
    use std::time::Duration;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn a_worker_naps_only_while_frames_come_often() {
        let mut c = Coalesce::new(100 * US);
        // Idle so far: the first frame is handled at once and the worker
        // waits for the next one.
        c.handled(1);
        assert_eq!(c.nap(), None);
        // The next frame came 30 µs later: frames come often, so after
        // handling it the worker naps instead of waiting.
        c.waited(30 * US);
        c.handled(2);
        assert_eq!(c.nap(), Some(100 * US));
        // Frames came during the nap: another nap.
        c.handled(5);
        assert_eq!(c.nap(), Some(100 * US));
        // A nap found nothing: the worker waits for the next frame.
        c.handled(0);
        assert_eq!(c.nap(), None);
        // It came after 2 ms: a low rate, no nap after it.
        c.waited(2000 * US);
        c.handled(1);
        assert_eq!(c.nap(), None);
    }

    #[test]
    fn a_zero_period_never_naps() {
        let mut c = Coalesce::new(Duration::ZERO);
        c.waited(Duration::ZERO);
        c.handled(64);
        assert_eq!(c.nap(), None);
    }

    #[test]
    fn icmp_errors_are_rate_limited_with_a_burst() {
        let mut l = IcmpLimit::default();
        let t0 = 1_000_000_000;
        let burst = (0..200).filter(|_| l.take(t0)).count();
        assert_eq!(burst, 50, "the burst, at once");
        // 10 ms later: 10 more (1000 per second).
        let more = (0..200).filter(|_| l.take(t0 + 10_000_000)).count();
        assert_eq!(more, 10);
        // After a long pause, the burst again, not more.
        assert_eq!((0..200).filter(|_| l.take(t0 + 60_000_000_000)).count(), 50);
    }
}
