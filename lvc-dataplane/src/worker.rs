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
use crate::io::xsk::{Frame, WorkerIo};
use crate::net::route::{NeighRequest, NextHop, RouteTable};
use crate::pipeline::conntrack::{Conn, Conntrack, Dir, opens_connection};
use crate::pipeline::icmp;
use crate::pipeline::parse::{
    ETH_HLEN, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_TIME_EXCEEDED, Packet, parse,
};
use crate::pipeline::rewrite;
use crate::pipeline::services::{Persistence, Server, Service, ServiceTable, Template};
use crate::shape::classify::{self, FlowMeta};
use crate::shape::{Enqueued, MAX_HELD, PortShaper, ShapeTable};
use crate::stats::{Drop, WorkerStats, bump};
use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use lvc_proto::Method;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
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

/// What the pipeline decided for a frame.
enum Verdict {
    /// Send on this port.
    Send(usize),
    /// Routed to `next`, whose MAC is being resolved: hold the frame.
    Park(Addr),
    /// Answer the frame's source with this ICMP error instead.
    Icmp(icmp::Originate),
    /// Encapsulate in IPIP to this real server (tun).
    Tunnel(Addr),
    /// Send on this port, split into IPv4 fragments that fit this MTU
    /// (DF clear, too big for the next link: a router fragments it).
    Fragment(usize, u32),
}

/// Everything a worker shares with the rest of the daemon.
#[derive(Clone)]
pub struct Shared {
    pub services: Arc<ArcSwap<ServiceTable>>,
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub conntrack: Arc<Conntrack>,
    pub neigh_requests: Sender<NeighRequest>,
    pub shaping: Arc<ArcSwap<ShapeTable>>,
    pub shutdown: Arc<AtomicBool>,
    /// The daemon's start: `now` is whole seconds since then.
    pub epoch: Instant,
}

/// What one iteration reads once: the clock and the snapshots.
pub struct Snap<'a> {
    /// Whole seconds since the epoch (connection ageing).
    pub now: u32,
    /// Nanoseconds since the epoch (token buckets).
    pub now_ns: u64,
    pub services: &'a ServiceTable,
    pub routes: &'a RouteTable,
    pub shaping: &'a ShapeTable,
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
    /// ifindex of each of `io`'s ports, in port order.
    pub port_ifindex: Vec<u32>,
    pub shared: Shared,
    pub stats: Arc<WorkerStats>,
}

impl Worker {
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
        while !self.shared.shutdown.load(Relaxed) {
            let elapsed = self.shared.epoch.elapsed();
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
            let snap = Snap {
                now: elapsed.as_secs() as u32,
                now_ns,
                services: &services,
                routes: &routes,
                shaping: &shaping,
            };
            if !parked.is_empty() {
                self.unpark(&mut parked, &routes, &mut out);
            }
            let mut received = 0;
            for port in 0..nports {
                let n = self.io.recv(port, BATCH, &mut rx);
                received += n;
                for mut frame in rx.drain(..) {
                    bump(&self.stats.rx_packets, 1);
                    bump(&self.stats.rx_bytes, frame.len() as u64);
                    let bytes = self.io.bytes_mut(&mut frame);
                    let mut meta = FlowMeta::default();
                    let verdict =
                        match forward(bytes, &snap, &self.shared, &self.port_ifindex, &mut meta) {
                            Ok(Verdict::Icmp(what)) => self.originate(&mut frame, what, &routes),
                            Ok(Verdict::Tunnel(rip)) => self.encapsulate(&mut frame, rip, &routes),
                            v => v,
                        };
                    match verdict {
                        Ok(Verdict::Send(egress)) => {
                            if let Some(why) =
                                self.offer(&mut shapers, egress, frame, &meta, now_ns, &mut out)
                            {
                                self.stats.count_drop(why);
                            }
                        }
                        Ok(Verdict::Fragment(egress, mtu)) => {
                            match self.fragment(&mut frame, mtu) {
                                Ok(rest) => {
                                    for f in std::iter::once(frame).chain(rest) {
                                        if let Some(why) = self.offer(
                                            &mut shapers,
                                            egress,
                                            f,
                                            &meta,
                                            now_ns,
                                            &mut out,
                                        ) {
                                            self.stats.count_drop(why);
                                        }
                                    }
                                }
                                Err(why) => {
                                    self.stats.count_drop(why);
                                    self.io.release(frame);
                                }
                            }
                        }
                        Ok(Verdict::Park(next)) if parked.len() < PARK_MAX => parked.push(Parked {
                            frame,
                            next,
                            since: Instant::now(),
                            asked: Instant::now(),
                        }),
                        Ok(Verdict::Park(_)) => {
                            self.stats.count_drop(Drop::NeighPending);
                            self.io.release(frame);
                        }
                        Ok(Verdict::Icmp(_) | Verdict::Tunnel(_)) => {
                            unreachable!("originate and encapsulate only send or park")
                        }
                        Err(why) => {
                            self.stats.count_drop(why);
                            self.io.release(frame);
                        }
                    }
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
            if received == 0 && completed == 0 && shaped_wait != Some(0) {
                // No progress: sleep in poll() until a frame arrives. The
                // timeout bounds how long a shutdown request, a parked frame,
                // a shaped queue waiting for tokens or a stuck TX ring (link
                // down) waits — never a busy spin.
                let nap = if self.io.tx_pending() {
                    Duration::from_millis(1)
                } else if parked.is_empty() {
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis(5)
                };
                let nap = match shaped_wait {
                    Some(ns) => nap.min(Duration::from_nanos(ns.max(2_000))),
                    None => nap,
                };
                self.io.wait(nap);
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

    /// Turns `frame` into the ICMP error `what` back to its source, from
    /// the director's address on the way there, and routes it.
    fn originate(
        &self,
        frame: &mut Frame,
        what: icmp::Originate,
        routes: &RouteTable,
    ) -> Result<Verdict, Drop> {
        let need = icmp::error_len(self.io.bytes_mut(frame));
        let len = frame.len();
        if !self.io.set_len(frame, need.max(len)) {
            return Err(Drop::TooBig);
        }
        let f = self.io.bytes_mut(frame);
        let source = icmp::source_of(f);
        let from = routes.source_for(source).ok_or(Drop::NoRoute)?;
        let (n, to) = icmp::build(f, what, from);
        let verdict = send_to(f, routes.next_hop(to), to, &self.shared, &self.port_ifindex);
        self.io.set_len(frame, n);
        if verdict.is_ok() {
            bump(&self.stats.icmp_sent, 1);
        }
        verdict
    }

    /// Splits the frame's IPv4 packet into fragments that fit `mtu`: the
    /// frame becomes the first, the others are new frames.
    fn fragment(&mut self, frame: &mut Frame, mtu: u32) -> Result<Vec<Frame>, Drop> {
        let bytes = self.io.bytes_mut(frame);
        let (first, rest) = rewrite::fragment_v4(bytes, mtu as usize).ok_or(Drop::TooBig)?;
        let mut frames = Vec::with_capacity(rest.len());
        for piece in &rest {
            match self.io.alloc(piece) {
                Some(f) => frames.push(f),
                None => {
                    for f in frames {
                        self.io.release(f);
                    }
                    return Err(Drop::TxFull);
                }
            }
        }
        self.io.set_len(frame, first);
        bump(&self.stats.fragments_made, frames.len() as u64 + 1);
        Ok(frames)
    }

    /// Wraps the frame's IP packet in an IPIP header to `rip` (LVS-TUN).
    /// A packet too big for the link once wrapped reaches here only with
    /// DF clear (else the client got "fragmentation needed"): the outer
    /// packet is fragmented, as IPVS's tunnel lets the kernel do.
    fn encapsulate(
        &self,
        frame: &mut Frame,
        rip: Addr,
        routes: &RouteTable,
    ) -> Result<Verdict, Drop> {
        let len = frame.len();
        let from = routes.source_for(rip).ok_or(Drop::NoRoute)?;
        if !self.io.set_len(frame, len + rewrite::IPIP_HLEN) {
            return Err(Drop::TooBig);
        }
        let f = self.io.bytes_mut(frame);
        rewrite::encap_ipip(f, len, from, rip);
        let hop = routes.next_hop(rip);
        let outer = len - ETH_HLEN + rewrite::IPIP_HLEN;
        let mtu = match hop {
            NextHop::Ready(l2) if outer as u32 > l2.mtu => {
                if !rewrite::may_fragment(f) {
                    return Err(Drop::TooBig);
                }
                Some(l2.mtu)
            }
            _ => None,
        };
        fragmenting(send_to(f, hop, rip, &self.shared, &self.port_ifindex), mtu)
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
                                Ok(rest) => {
                                    out[port].push(p.frame);
                                    out[port].extend(rest);
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

/// Takes one frame through the pipeline.
#[inline]
fn forward(
    f: &mut [u8],
    snap: &Snap,
    shared: &Shared,
    port_ifindex: &[u32],
    meta: &mut FlowMeta,
) -> Result<Verdict, Drop> {
    let (now, services, routes) = (snap.now, snap.services, snap.routes);
    let pkt = parse(f)?;
    if let Some(fr) = pkt.frag
        && !fr.first
    {
        return later_fragment(f, &pkt, fr.id, routes, shared, port_ifindex);
    }
    let found = shared.conntrack.lookup(&pkt.key);
    // A policed service's client packets are policed before they cost
    // anything (a connection entry, a fullnat port).
    if !snap.shaping.services.is_empty() && pkt.icmp.is_none() {
        let to = match &found {
            Some((c, Dir::Original)) => Some((c.proto, c.vip)),
            Some(_) => None,
            None => Some((pkt.key.proto, (pkt.key.dst, pkt.key.dport))),
        };
        if let Some((proto, vip)) = to
            && let Some(p) = snap.shaping.service_policer(proto, vip)
            && !p.admit(f.len() as u32, snap.now_ns)
        {
            return Err(Drop::Policed);
        }
    }
    let (conn, dir) = match found {
        Some(found) => found,
        // ICMP errors never open connections.
        None if pkt.icmp.is_some() => return Err(Drop::NoFlow),
        None => (
            new_conn(&pkt, now, services, &shared.conntrack)?,
            Dir::Original,
        ),
    };
    *meta = FlowMeta {
        proto: conn.proto,
        vip: Some(conn.vip),
        real: Some(conn.real),
    };
    conn.count(dir, f.len());
    if let Some(e) = &pkt.icmp {
        // An error about the flow: translated like the packet it quotes.
        match conn.method {
            Method::Dr => {
                return send_to(
                    f,
                    routes.next_hop_onlink(conn.real.0),
                    conn.real.0,
                    shared,
                    port_ifindex,
                );
            }
            // The real server answered from the VIP itself: the error is
            // for it as it is, through the tunnel.
            Method::Tun => return Ok(Verdict::Tunnel(conn.real.0)),
            _ => {}
        }
        let next = icmp::translate(f, &pkt, e, &conn, dir);
        rewrite::decrement_ttl(f)?;
        return send_to(f, routes.next_hop(next), next, shared, port_ifindex);
    }
    shared.conntrack.touch(&conn, now, dir, pkt.tcp_flags);
    if let Some(fr) = pkt.frag {
        shared
            .conntrack
            .remember_fragment(&pkt.key, fr.id, &conn, dir, now);
    }
    let (next, hop) = match dir {
        Dir::Original if conn.method == Method::Dr => {
            (conn.real.0, routes.next_hop_onlink(conn.real.0))
        }
        Dir::Original => (conn.real.0, routes.next_hop(conn.real.0)),
        Dir::Reply => (conn.client.0, routes.next_hop(conn.client.0)),
    };
    // As a router would, before touching the packet (errors quote it as
    // its sender sent it): too big for the next link, or out of hops.
    let overhead = if conn.method == Method::Tun && dir == Dir::Original {
        rewrite::IPIP_HLEN as u32
    } else {
        0
    };
    // The link's MTU, whatever the neighbour's state: a first packet whose
    // next hop is still being resolved is checked too (the route is only
    // looked up again in that rare case).
    let mtu = match hop {
        NextHop::Ready(l2) => Some(l2.mtu),
        _ => routes.mtu_towards(next),
    };
    let mut split = None;
    if let Some(mtu) = mtu
        && pkt.ip_len as u32 + overhead > mtu
    {
        // IPv6 is never fragmented by routers: always "packet too big".
        if pkt.v6 {
            return Ok(Verdict::Icmp(icmp::Originate {
                kind: icmp::ICMP6_PACKET_TOO_BIG,
                code: 0,
                mtu: (mtu - overhead).min(u32::from(u16::MAX)) as u16,
            }));
        }
        if f[ETH_HLEN + 6] & 0x40 != 0 {
            return Ok(Verdict::Icmp(icmp::Originate {
                kind: ICMP_DEST_UNREACH,
                code: ICMP_FRAG_NEEDED,
                mtu: (mtu - overhead).min(u32::from(u16::MAX)) as u16,
            }));
        }
        // DF clear: forwarded in fragments (tun: the outer packet).
        split = Some(mtu);
    }
    if conn.method == Method::Tun && dir == Dir::Original {
        // The inner packet travels as the client sent it.
        return Ok(Verdict::Tunnel(conn.real.0));
    }
    if conn.method == Method::Dr {
        // Direct routing: the frame goes on unchanged but for its MACs.
        return fragmenting(send_to(f, hop, next, shared, port_ifindex), split);
    }
    if rewrite::hops(f) <= 1 {
        return Ok(Verdict::Icmp(icmp::Originate {
            kind: if pkt.v6 {
                icmp::ICMP6_TIME_EXCEEDED
            } else {
                ICMP_TIME_EXCEEDED
            },
            code: 0,
            mtu: 0,
        }));
    }
    match dir {
        Dir::Original => {
            rewrite::set_dst(f, &pkt, conn.real.0, conn.real.1);
            if conn.local != conn.client {
                // fullnat: the real server sees a director address.
                rewrite::set_src(f, &pkt, conn.local.0, conn.local.1);
            }
        }
        Dir::Reply => {
            rewrite::set_src(f, &pkt, conn.vip.0, conn.vip.1);
            if conn.local != conn.client {
                rewrite::set_dst(f, &pkt, conn.client.0, conn.client.1);
            }
        }
    }
    rewrite::decrement_ttl(f)?;
    fragmenting(send_to(f, hop, next, shared, port_ifindex), split)
}

/// A `Send` that must be split to fit `mtu` becomes a `Fragment` (a
/// parked frame is split when its neighbour resolves).
#[inline]
fn fragmenting(verdict: Result<Verdict, Drop>, mtu: Option<u32>) -> Result<Verdict, Drop> {
    match (verdict, mtu) {
        (Ok(Verdict::Send(port)), Some(mtu)) => Ok(Verdict::Fragment(port, mtu)),
        (v, _) => v,
    }
}

/// A fragment after the first: it goes where its datagram's first
/// fragment went, with only the IP addresses translated.
fn later_fragment(
    f: &mut [u8],
    pkt: &Packet,
    id: u32,
    routes: &RouteTable,
    shared: &Shared,
    port_ifindex: &[u32],
) -> Result<Verdict, Drop> {
    // Unknown: not ours, or it overtook its first fragment (counted).
    let (conn, dir) = shared
        .conntrack
        .fragment(&pkt.key, id)
        .ok_or(Drop::Fragment)?;
    conn.count(dir, f.len());
    let fullnat = conn.local != conn.client;
    let (next, hop) = match dir {
        // Direct routing: unchanged but for its MACs (no TTL decrement).
        Dir::Original if conn.method == Method::Dr => {
            (conn.real.0, routes.next_hop_onlink(conn.real.0))
        }
        Dir::Original if conn.method == Method::Tun => return Ok(Verdict::Tunnel(conn.real.0)),
        Dir::Original => {
            rewrite::set_dst_addr(f, conn.real.0);
            if fullnat {
                rewrite::set_src_addr(f, conn.local.0);
            }
            rewrite::decrement_ttl(f)?;
            (conn.real.0, routes.next_hop(conn.real.0))
        }
        Dir::Reply => {
            rewrite::set_src_addr(f, conn.vip.0);
            if fullnat {
                rewrite::set_dst_addr(f, conn.client.0);
            }
            rewrite::decrement_ttl(f)?;
            (conn.client.0, routes.next_hop(conn.client.0))
        }
    };
    // Too big for the next link: split again (IPv6 fragments are never
    // split by routers: the sender learns the MTU from the first one's
    // "packet too big"; a parked frame is checked when it leaves).
    let split = match hop {
        NextHop::Ready(l2) if pkt.ip_len as u32 > l2.mtu => {
            if !rewrite::may_fragment(f) {
                return Err(Drop::TooBig);
            }
            Some(l2.mtu)
        }
        _ => None,
    };
    fragmenting(send_to(f, hop, next, shared, port_ifindex), split)
}

/// Addresses the frame to `hop` and picks its egress port, or parks it
/// while the neighbour resolves.
#[inline]
fn send_to(
    f: &mut [u8],
    hop: NextHop,
    next: Addr,
    shared: &Shared,
    port_ifindex: &[u32],
) -> Result<Verdict, Drop> {
    match hop {
        NextHop::Ready(l2) => {
            let port = port_ifindex
                .iter()
                .position(|&i| i == l2.ifindex)
                .ok_or(Drop::EgressNotServed)?;
            rewrite::set_macs(f, l2.src_mac, l2.dst_mac);
            Ok(Verdict::Send(port))
        }
        NextHop::Unresolved(req) => {
            // The route thread asks the kernel to resolve it; the frame
            // waits (bounded) instead of being lost.
            let _ = shared.neigh_requests.try_send(req);
            Ok(Verdict::Park(next))
        }
        NextHop::None => Err(Drop::NoRoute),
    }
}

/// Schedules a new connection for a packet with no tracked flow.
#[inline]
fn new_conn(
    pkt: &Packet,
    now: u32,
    services: &ServiceTable,
    ct: &Conntrack,
) -> Result<Arc<Conn>, Drop> {
    let k = &pkt.key;
    let svc = services
        .lookup(k.proto, k.dst, k.dport)
        .ok_or(Drop::NoService)?;
    if !opens_connection(k.proto, pkt.tcp_flags) {
        return Err(Drop::NoFlow);
    }
    let (server, template) = match &svc.persistence {
        None => (svc.pick(k.src).ok_or(Drop::NoServer)?, None),
        Some(p) => persistent_pick(svc, p, k.src, now)?,
    };
    // A port-0 service keeps the client's destination port.
    let real_port = if server.port == 0 {
        k.dport
    } else {
        server.port
    };
    let conn = Conn::new(
        k.proto,
        (k.src, k.sport),
        (k.dst, k.dport),
        server.clone(),
        real_port,
        svc.stats.clone(),
        now,
    );
    let conn = match template {
        Some(t) => conn.with_template(t),
        None => conn,
    };
    let conn = if server.method == Method::Fullnat {
        let pool = services.snat().ok_or(Drop::SnatExhausted)?;
        let local = pool
            .alloc(k.proto, server.addr)
            .ok_or(Drop::SnatExhausted)?;
        conn.with_local(local, pool.clone())
    } else {
        conn
    };
    // If the insert fails (table full), dropping `conn` is not enough to
    // give a fullnat port back: do it here.
    let snat = conn.snat.clone().map(|p| (p, conn.local));
    ct.insert(conn).inspect_err(|_| {
        if let Some((pool, (addr, port))) = snat {
            pool.free(k.proto, addr, port);
        }
    })
}

/// The server a client network's template names, if it is still in the
/// service and takes new connections; else a fresh pick, recorded.
#[inline]
fn persistent_pick<'a>(
    svc: &'a Service,
    p: &Persistence,
    client: Addr,
    now: u32,
) -> Result<(&'a Arc<Server>, Option<Arc<Template>>), Drop> {
    let net = p.network(client);
    let find = |t: &Template| {
        svc.servers
            .iter()
            .find(|s| (s.addr, s.port) == t.server && s.weight > 0)
    };
    if let Some(t) = p.templates.get(&net)
        && let Some(s) = find(&t)
    {
        t.last_used.store(now, Relaxed);
        return Ok((s, Some(t.clone())));
    }
    let server = svc.pick(client).ok_or(Drop::NoServer)?;
    let t = Arc::new(Template {
        server: (server.addr, server.port),
        last_used: AtomicU32::new(now),
        conns: AtomicU32::new(0),
    });
    // Two workers may race for the same client network: the first template
    // in wins, and both connections follow it.
    let t = p
        .templates
        .entry(net)
        .and_modify(|old| {
            if find(old).is_none() {
                *old = t.clone();
            }
        })
        .or_insert(t)
        .clone();
    let server = find(&t).unwrap_or(server);
    Ok((server, Some(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::schedule::SchedState;
    use crate::stats::TrafficStats;
    use lvc_proto::{Method, Scheduler};

    fn service(weights: &[u32], persistence: Persistence) -> Service {
        let servers: Vec<Arc<Server>> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Arc::new(Server {
                    addr: Addr::v4_bytes([10, 2, 0, 11 + i as u8]),
                    port: 80,
                    weight: w,
                    method: Method::Nat,
                    stats: Arc::new(TrafficStats::default()),
                })
            })
            .collect();
        Service {
            key: "tcp:10.9.0.10:80".parse().unwrap(),
            sched: SchedState::build(Scheduler::Rr, &servers, Arc::default()),
            servers,
            stats: Arc::new(TrafficStats::default()),
            persistence: Some(persistence),
        }
    }

    fn pick(svc: &Service, client: u32, now: u32) -> u8 {
        persistent_pick(
            svc,
            svc.persistence.as_ref().unwrap(),
            Addr::v4(client),
            now,
        )
        .unwrap()
        .0
        .addr
        .0[15]
    }

    #[test]
    fn persistence_sticks_per_client_network() {
        let svc = service(&[1, 1], Persistence::new(360, 24));
        let a = pick(&svc, 0x0a01_0002, 0);
        // Same /24: same server, many times; round robin would alternate.
        for host in 3..20 {
            assert_eq!(pick(&svc, 0x0a01_0000 | host, 1), a);
        }
        // Another network gets the other server (rr moved on once).
        assert_ne!(pick(&svc, 0x0a01_0102, 1), a);
    }

    #[test]
    fn template_expires_and_follows_removed_or_quiesced_servers() {
        let p = Persistence::new(10, 32);
        let svc = service(&[1, 1], p.clone());
        let first = pick(&svc, 7, 0);
        assert_eq!(pick(&svc, 7, 5), first);
        // No connections hold it: gone 10 s after its last use.
        assert_eq!(p.sweep(14), 1);
        assert_eq!(p.sweep(15), 0);
        // A template whose server went quiescent is replaced.
        let first = pick(&svc, 8, 20);
        let weights: Vec<u32> = [11u8, 12]
            .iter()
            .map(|&o| if o == first { 0 } else { 1 })
            .collect();
        let mut svc2 = service(&weights, p.clone());
        svc2.persistence = Some(p.clone());
        assert_ne!(pick(&svc2, 8, 21), first);
        assert_eq!(pick(&svc2, 8, 22), pick(&svc2, 8, 23));
    }

    #[test]
    fn templates_live_while_connections_do() {
        let ct = Conntrack::new(16);
        let svc = service(&[1, 1], Persistence::new(10, 32));
        let p = svc.persistence.clone().unwrap();
        let table = ServiceTable::new([Arc::new(svc)]);
        let pkt = Packet {
            key: crate::pipeline::parse::FlowKey {
                src: Addr::v4(7),
                dst: Addr::v4(0x0a09_000a),
                sport: 1000,
                dport: 80,
                proto: crate::pipeline::parse::PROTO_TCP,
            },
            l4_off: 34,
            ip_len: 40,
            tcp_flags: crate::pipeline::parse::TCP_SYN,
            icmp: None,
            frag: None,
            v6: false,
        };
        let c = new_conn(&pkt, 0, &table, &ct).unwrap();
        assert_eq!(c.template.as_ref().unwrap().conns.load(Relaxed), 1);
        // Past the persistence timeout, but the handshake lives (60 s).
        assert_eq!(p.sweep(50), 1);
        assert_eq!(ct.sweep(60), 1);
        assert_eq!(p.sweep(65), 1, "kept for 10 s after its last connection");
        assert_eq!(p.sweep(70), 0);
    }
}
