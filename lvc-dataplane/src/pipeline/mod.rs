//! The pipeline: what happens to one frame, with no I/O.
//!
//! ```text
//! parse → conntrack (lookup) → [policer] → schedule (new flows) →
//!   rewrite (by method and direction, TTL, checksums) → next hop
//! ```
//!
//! [`forward`] takes a received frame's bytes and the tables (services,
//! routes, connections, shaping policers) and returns a [`Decision`]: send
//! on a port, split into fragments, park while the next hop's MAC is
//! resolved, answer with an ICMP error, or wrap in IPIP; or a [`Drop`]
//! reason. The worker (`crate::worker`) owns the frames and does the I/O
//! each decision implies; the stages here touch only bytes and tables.

pub mod checksum;
pub mod conntable;
pub mod conntrack;
pub mod filter;
pub mod icmp;
pub mod parse;
pub mod proxy;
pub mod rewrite;
pub mod schedule;
pub mod services;
pub mod snat;
pub mod translate;

use crate::addr::Addr;
use crate::net::route::{NeighRequest, NextHop, RejectKind, RouteTable};
use crate::shape::ShapeTable;
use crate::shape::classify::FlowMeta;
use crate::stats::Drop;
use crate::wire::{
    self, ETH_HLEN, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_HOST_UNREACH, ICMP_PKT_FILTERED,
    ICMP_TIME_EXCEEDED, ICMP6_ADM_PROHIBITED, ICMP6_DEST_UNREACH, ICMP6_NOROUTE,
    ICMP6_PACKET_TOO_BIG, ICMP6_TIME_EXCEEDED, TCP_ACK, TCP_FIN, TCP_RST,
};
use conntrack::{Conn, Conntrack, Dir, opens_connection};
use lvc_proto::Method;
use parse::{Packet, parse};
use services::{Persistence, Server, Service, ServiceTable, Template};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use translate::OffloadMsg;

/// What the pipeline decided for a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send on this port (the frame is rewritten, MACs set).
    Send(usize),
    /// Routed to `.0`, whose MAC is being resolved: hold the frame, and
    /// ask the route thread to resolve `.1`.
    Park(Addr, NeighRequest),
    /// Answer the frame's source with this ICMP error instead
    /// ([`icmp_reply`], once the frame has room for it).
    Icmp(icmp::Originate),
    /// Encapsulate in IPIP to this real server (tun; [`tunnel`], once the
    /// frame has grown by the outer header).
    Tunnel(Addr),
    /// Send on this port, split into IPv4 fragments that fit this MTU
    /// (DF clear, too big for the next link: a router fragments it).
    Fragment(usize, u32),
}

/// What one worker iteration reads once: the clock and the tables.
pub struct Tables<'a> {
    /// Whole seconds since the daemon's epoch (connection ageing).
    pub now: u32,
    /// Nanoseconds since the epoch (token buckets).
    pub now_ns: u64,
    pub services: &'a ServiceTable,
    pub routes: &'a RouteTable,
    pub shaping: &'a ShapeTable,
    pub conntrack: &'a Conntrack,
    /// The ifindex of each of the worker's ports, in port order.
    pub ports: &'a [u32],
    /// Whether established flows are offloaded to XDP (`--offload`).
    pub offload: bool,
}

/// Turns the frame (already grown to [`icmp::error_len`] of the packet
/// it holds) into the ICMP error `what`, from the director's address on
/// the way back, and routes it. Returns the decision and the frame's new
/// length.
pub fn icmp_reply(
    f: &mut [u8],
    what: icmp::Originate,
    t: &Tables,
) -> Result<(Decision, usize), Drop> {
    let source = icmp::source_of(f);
    let from = t.routes.source_for(source).ok_or(Drop::NoRoute)?;
    let (n, to) = icmp::build(f, what, from);
    let d = send_to(f, t.routes.next_hop(to), to, t.ports)?;
    Ok((d, n))
}

/// Wraps the IP packet of a frame of `len` bytes (the frame already grown
/// by [`wire::IPIP_HLEN`]) in an IPIP header to `rip` (LVS-TUN) and routes
/// it. A packet too big for the link once wrapped reaches here only with
/// DF clear (else the client got "fragmentation needed"): the outer
/// packet is fragmented, as IPVS's tunnel lets the kernel do.
pub fn tunnel(f: &mut [u8], len: usize, rip: Addr, t: &Tables) -> Result<Decision, Drop> {
    let from = t.routes.source_for(rip).ok_or(Drop::NoRoute)?;
    rewrite::encap_ipip(f, len, from, rip);
    let hop = t.routes.next_hop(rip);
    let outer = len - ETH_HLEN + wire::IPIP_HLEN;
    send_split(f, hop, rip, outer, t.ports)
}

/// Sends an already-rewritten packet of `ip_len` bytes towards `next`,
/// split into fragments if it is too big for the link (DF clear; with DF
/// set it is dropped: the sender was told by the packet's first piece or
/// before it was wrapped). A parked frame is checked when it leaves.
#[inline]
fn send_split(
    f: &mut [u8],
    hop: NextHop,
    next: Addr,
    ip_len: usize,
    ports: &[u32],
) -> Result<Decision, Drop> {
    let split = match hop {
        NextHop::Ready(l2) if ip_len as u32 > l2.mtu => {
            if !rewrite::may_fragment(f) {
                return Err(Drop::TooBig);
            }
            Some(l2.mtu)
        }
        _ => None,
    };
    fragmenting(send_to(f, hop, next, ports), split)
}

/// What the worker must do besides the frame's decision.
#[derive(Debug, Default)]
pub struct Effects {
    /// Tell the offload thread: an established flow to put in the XDP
    /// map, or an offloaded one closing.
    pub offload: Option<OffloadMsg>,
    /// Put this `nat` connection's reply key into the XDP program's
    /// `replies` map before the frame is sent (else drop the frame: its
    /// reply would reach the client untranslated).
    pub steer_replies: Option<Arc<Conn>>,
    /// The packet's route refuses it (unreachable, prohibit) and the
    /// decision is the ICMP error that answers it: count this reason.
    pub refused: Option<Drop>,
    /// A PROXY protocol header to insert before the frame goes on (the
    /// frame must grow first: [`proxy::insert`]).
    pub proxy_insert: Option<proxy::Insert>,
}

/// Takes one frame through the pipeline.
///
/// `meta` receives the connection's service and real server (for the
/// shaping classifier); `fx` what the worker must do besides the decision.
#[inline]
pub fn forward(
    f: &mut [u8],
    t: &Tables,
    meta: &mut FlowMeta,
    fx: &mut Effects,
) -> Result<Decision, Drop> {
    let (now, services, routes) = (t.now, t.services, t.routes);
    let pkt = parse(f)?;
    if let Some(fr) = pkt.frag
        && !fr.first
    {
        return later_fragment(f, &pkt, fr.id, t);
    }
    let found = t.conntrack.lookup(&pkt.key);
    // A policed service's client packets are policed before they cost
    // anything (a connection entry, a fullnat port).
    if !t.shaping.services.is_empty() && pkt.icmp.is_none() {
        let to = match &found {
            Some((c, Dir::Original)) => Some((c.proto, c.vip(), c.server.class)),
            Some(_) => None,
            None => {
                let k = &pkt.key;
                let class = services
                    .lookup_for(k.proto, k.dst, k.dport, k.src)
                    .map_or(0, |s| s.class);
                Some((k.proto, (k.dst, k.dport), class))
            }
        };
        if let Some((proto, vip, class)) = to
            && let Some(p) = t.shaping.service_policer(proto, vip, class)
            && !p.admit(f.len() as u32, t.now_ns)
        {
            return Err(Drop::Policed);
        }
    }
    let fresh = found.is_none();
    let (conn, dir) = match found {
        // Its server failed its health check with `--on-fail remove`.
        Some((c, _)) if c.server.health.evicting() => {
            t.conntrack.remove(&c, now);
            return Err(Drop::ServerDown);
        }
        Some(found) => found,
        // ICMP errors never open connections.
        None if pkt.icmp.is_some() => return Err(Drop::NoFlow),
        // Out of hops before it is routed: answered without any state (a
        // flood of them must not fill the connection table).
        None if rewrite::hops(f) <= 1 && only_routed(services, &pkt) => {
            return Ok(time_exceeded(pkt.v6));
        }
        None => (
            new_conn(
                &pkt,
                now,
                t.now_ns,
                f.len() as u32,
                meta.ingress,
                services,
                t.conntrack,
            )?,
            Dir::Original,
        ),
    };
    *meta = FlowMeta {
        proto: conn.proto,
        vip: Some(conn.vip()),
        real: Some(conn.real()),
        class: conn.server.class,
        ingress: meta.ingress,
    };
    if conn.needs_reply_steering() {
        fx.steer_replies = Some(conn.clone());
    }
    conn.count(dir, f.len());
    if let Some(e) = &pkt.icmp {
        // An error about the flow: translated like the packet it quotes.
        match conn.method() {
            Method::Dr => {
                return send_to(
                    f,
                    routes.next_hop_onlink(conn.real().0),
                    conn.real().0,
                    t.ports,
                );
            }
            // The real server answered from the VIP itself: the error is
            // for it as it is, through the tunnel.
            Method::Tun => return Ok(Decision::Tunnel(conn.real().0)),
            _ => {}
        }
        let next = icmp::translate(f, &pkt, e, &conn, dir);
        rewrite::decrement_ttl(f)?;
        return send_to(f, routes.next_hop(next), next, t.ports);
    }
    t.conntrack.touch(&conn, now, dir, pkt.tcp_flags, pkt.seg);
    if t.offload {
        if conn.offloaded() {
            // XDP sends a connection's FIN and RST here: lvc follows the
            // close itself.
            if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                fx.offload = Some(OffloadMsg::Retire(conn.clone()));
            }
        } else if pkt.frag.is_none() && conn.offload_ready() && conn.offload_due(now) {
            match translate::offer(&conn, t) {
                Some(o) if conn.claim_offload() => fx.offload = Some(OffloadMsg::Install(o)),
                Some(_) => {}
                // (Shaped, policed or unresolved: asked again next second.)
                None => conn.decline_offload(now),
            }
        }
    }
    if let Some(fr) = pkt.frag {
        t.conntrack
            .remember_fragment(&pkt.key, fr.id, &conn, dir, now);
    }
    let (next, hop) = translate::next_hop(&conn, dir, routes);
    if let NextHop::Reject(kind) = hop {
        return refuse(kind, pkt.v6, fx);
    }
    // As a router would, before touching the packet (errors quote it as
    // its sender sent it): too big for the next link, or out of hops.
    let overhead = if conn.method() == Method::Tun && dir == Dir::Original {
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
        let dont_fragment = pkt.v6 || wire::Ip::of(&*f, ETH_HLEN).dont_fragment();
        if dont_fragment && fresh {
            // A new flow's first packet refused: no state stays behind (a
            // flood of too-big packets must not fill the table).
            t.conntrack.remove(&conn, now);
            fx.steer_replies = None;
        }
        // IPv6 is never fragmented by routers: always "packet too big".
        if pkt.v6 {
            return Ok(Decision::Icmp(icmp::Originate {
                kind: ICMP6_PACKET_TOO_BIG,
                code: 0,
                mtu: (mtu - overhead).min(u32::from(u16::MAX)) as u16,
            }));
        }
        if dont_fragment {
            return Ok(Decision::Icmp(icmp::Originate {
                kind: ICMP_DEST_UNREACH,
                code: ICMP_FRAG_NEEDED,
                mtu: (mtu - overhead).min(u32::from(u16::MAX)) as u16,
            }));
        }
        // DF clear: forwarded in fragments (tun: the outer packet).
        split = Some(mtu);
    }
    if conn.method() == Method::Tun && dir == Dir::Original {
        // The inner packet travels as the client sent it.
        return Ok(Decision::Tunnel(conn.real().0));
    }
    if conn.method() == Method::Dr {
        // Direct routing: the frame goes on unchanged but for its MACs.
        return fragmenting(send_to(f, hop, next, t.ports), split);
    }
    if rewrite::hops(f) <= 1 {
        if fresh {
            t.conntrack.remove(&conn, now);
            fx.steer_replies = None;
        }
        return Ok(time_exceeded(pkt.v6));
    }
    match dir {
        Dir::Original => {
            rewrite::set_dst(f, &pkt, conn.real().0, conn.real().1);
            if conn.fullnat() {
                // fullnat: the real server sees a director address.
                rewrite::set_src(f, &pkt, conn.local().0, conn.local().1);
            }
            if conn.proxied() {
                fx.proxy_insert = proxy::to_server(f, pkt.l4_off, &conn, conn.server.proxy);
            }
        }
        Dir::Reply => {
            let (vip, vport) = conn.vip();
            rewrite::set_src(f, &pkt, vip, vport);
            if conn.fullnat() {
                rewrite::set_dst(f, &pkt, conn.client.0, conn.client.1);
            }
            if conn.proxied() {
                proxy::to_client(f, pkt.l4_off, &conn, conn.server.proxy);
            }
        }
    }
    rewrite::decrement_ttl(f)?;
    fragmenting(send_to(f, hop, next, t.ports), split)
}

/// A `Send` that must be split to fit `mtu` becomes a `Fragment` (a
/// parked frame is split when its neighbour resolves).
#[inline]
fn fragmenting(verdict: Result<Decision, Drop>, mtu: Option<u32>) -> Result<Decision, Drop> {
    match (verdict, mtu) {
        (Ok(Decision::Send(port)), Some(mtu)) => Ok(Decision::Fragment(port, mtu)),
        (v, _) => v,
    }
}

/// A fragment after the first: it goes where its datagram's first
/// fragment went, with only the IP addresses translated.
fn later_fragment(f: &mut [u8], pkt: &Packet, id: u32, t: &Tables) -> Result<Decision, Drop> {
    // Unknown: not ours, or it overtook its first fragment (counted).
    let (conn, dir) = t.conntrack.fragment(&pkt.key, id).ok_or(Drop::Fragment)?;
    conn.count(dir, f.len());
    let fullnat = conn.fullnat();
    match dir {
        // Direct routing: unchanged but for its MACs (no TTL decrement).
        Dir::Original if conn.method() == Method::Dr => {}
        Dir::Original if conn.method() == Method::Tun => {
            return Ok(Decision::Tunnel(conn.real().0));
        }
        Dir::Original => {
            rewrite::set_dst_addr(f, conn.real().0);
            if fullnat {
                rewrite::set_src_addr(f, conn.local().0);
            }
            rewrite::decrement_ttl(f)?;
        }
        Dir::Reply => {
            rewrite::set_src_addr(f, conn.vip().0);
            if fullnat {
                rewrite::set_dst_addr(f, conn.client.0);
            }
            rewrite::decrement_ttl(f)?;
        }
    }
    let (next, hop) = translate::next_hop(&conn, dir, t.routes);
    // Too big for the next link: split again (IPv6 fragments are never
    // split by routers: the sender learns the MTU from the first one's
    // "packet too big").
    send_split(f, hop, next, pkt.ip_len, t.ports)
}

/// Addresses the frame to `hop` and picks its egress port, or parks it
/// while the neighbour resolves.
#[inline]
fn send_to(f: &mut [u8], hop: NextHop, next: Addr, ports: &[u32]) -> Result<Decision, Drop> {
    match hop {
        NextHop::Ready(l2) => {
            let port = ports
                .iter()
                .position(|&i| i == l2.ifindex)
                .ok_or(Drop::EgressNotServed)?;
            rewrite::set_macs(f, l2.src_mac, l2.dst_mac);
            Ok(Decision::Send(port))
        }
        // The route thread asks the kernel to resolve it; the frame
        // waits (bounded) instead of being lost.
        NextHop::Unresolved(ask) => Ok(Decision::Park(next, ask)),
        NextHop::Reject(kind) => Err(refused(kind)),
        NextHop::None => Err(Drop::NoRoute),
    }
}

/// The drop reason of a packet a reject route refuses.
pub fn refused(kind: RejectKind) -> Drop {
    match kind {
        RejectKind::Blackhole => Drop::RouteBlackhole,
        RejectKind::Unreachable => Drop::RouteUnreachable,
        RejectKind::Prohibit => Drop::RouteProhibit,
    }
}

/// A packet whose longest route is a reject route, treated as the kernel
/// does (`ip_error`, `ip6_pkt_drop`): a blackhole drops it silently;
/// unreachable answers "host unreachable" (ICMPv6 "no route"), prohibit
/// "communication administratively prohibited" (ICMPv6 "administratively
/// prohibited"), each through the worker's rate-limited ICMP path. Only
/// packets that are not ICMP errors come here (those are dropped).
fn refuse(kind: RejectKind, v6: bool, fx: &mut Effects) -> Result<Decision, Drop> {
    let code = match (kind, v6) {
        (RejectKind::Blackhole, _) => return Err(Drop::RouteBlackhole),
        (RejectKind::Unreachable, false) => ICMP_HOST_UNREACH,
        (RejectKind::Unreachable, true) => ICMP6_NOROUTE,
        (RejectKind::Prohibit, false) => ICMP_PKT_FILTERED,
        (RejectKind::Prohibit, true) => ICMP6_ADM_PROHIBITED,
    };
    fx.refused = Some(refused(kind));
    Ok(Decision::Icmp(icmp::Originate {
        kind: if v6 {
            ICMP6_DEST_UNREACH
        } else {
            ICMP_DEST_UNREACH
        },
        code,
        mtu: 0,
    }))
}

/// "Time exceeded in transit" for a packet out of hops.
fn time_exceeded(v6: bool) -> Decision {
    Decision::Icmp(icmp::Originate {
        kind: if v6 {
            ICMP6_TIME_EXCEEDED
        } else {
            ICMP_TIME_EXCEEDED
        },
        code: 0,
        mtu: 0,
    })
}

/// Whether every server of the packet's service (its sorry server too)
/// routes packets — decrements their TTL — rather than passing them on
/// unchanged (dr, tun).
fn only_routed(services: &ServiceTable, pkt: &Packet) -> bool {
    let k = &pkt.key;
    services
        .lookup_for(k.proto, k.dst, k.dport, k.src)
        .is_some_and(|svc| {
            svc.servers
                .iter()
                .chain(&svc.sorry)
                .all(|s| !matches!(s.method, Method::Dr | Method::Tun))
        })
}

/// Schedules a new connection for a packet with no tracked flow.
#[inline]
fn new_conn(
    pkt: &Packet,
    now: u32,
    now_ns: u64,
    len: u32,
    ingress: u32,
    services: &ServiceTable,
    ct: &Conntrack,
) -> Result<Arc<Conn>, Drop> {
    let k = &pkt.key;
    let svc = services
        .lookup_for(k.proto, k.dst, k.dport, k.src)
        .ok_or(Drop::NoService)?;
    // A TCP packet without SYN belongs to a connection made elsewhere: a
    // sloppy service picks it up mid-flow (another director of an ECMP
    // group made it), a RST excepted.
    let mid_flow = !opens_connection(k.proto, pkt.tcp_flags);
    if mid_flow && !(svc.sloppy && pkt.tcp_flags & (TCP_ACK | TCP_RST) == TCP_ACK) {
        return Err(Drop::NoFlow);
    }
    // Policy before any state (a template, a port, an entry) is made.
    let refuse = |why: Drop| {
        svc.stats.filtered.fetch_add(1, Relaxed);
        svc.stats.filtered_bytes.fetch_add(u64::from(len), Relaxed);
        Err(why)
    };
    if svc.lists.as_ref().is_some_and(|l| !l.admits(k.src)) {
        return refuse(Drop::Filtered);
    }
    if svc.conn_rate.as_ref().is_some_and(|r| !r.take(now_ns)) {
        return refuse(Drop::ConnRate);
    }
    let picked = match &svc.persistence {
        None => svc.pick(k.src).ok_or(Drop::NoServer).map(|s| (s, None)),
        Some(p) => persistent_pick(svc, p, k.src, now),
    };
    // No real server takes new connections: the sorry server does.
    let (server, template) = match (picked, &svc.sorry) {
        (Err(Drop::NoServer), Some(sorry)) => (sorry, None),
        (r, _) => r?,
    };
    // A port-0 service keeps the client's destination port.
    let real_port = if server.port == 0 {
        k.dport
    } else {
        server.port
    };
    if let Some(f) = services.filter() {
        let c = filter::Candidate {
            proto: k.proto,
            src: k.src,
            dst: k.dst,
            dport: k.dport,
            server_addr: server.addr,
            real_port,
            len,
            ingress,
        };
        if !f.admits(&c) {
            return refuse(Drop::Filtered);
        }
    }
    let conn = Conn::new(
        k.proto,
        (k.src, k.sport),
        (k.dst, k.dport),
        server.clone(),
        real_port,
        now,
    );
    let conn = match template {
        Some(t) => conn.with_template(t),
        None => conn,
    };
    let conn = if mid_flow {
        conn.restored(conntrack::State::Established)
    } else if server.proxy != lvc_proto::ProxyProtocol::Off && k.proto == wire::PROTO_TCP {
        // The client's first byte comes after its SYN's sequence number.
        conn.with_proxy(pkt.seg.seq.wrapping_add(1))
    } else {
        conn
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
    let snat = conn.snat.as_ref().map(|s| (s.pool.clone(), s.local));
    ct.insert(conn).inspect_err(|_| {
        if let Some((pool, (addr, port))) = snat {
            pool.free(k.proto, addr, port, server.addr);
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
    if !p.has_room() {
        p.full.fetch_add(1, Relaxed);
        return Ok((server, None));
    }
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
                    vip: Addr::v4_bytes([10, 9, 0, 10]),
                    port: 80,
                    weight: w,
                    method: Method::Nat,
                    stats: Arc::new(TrafficStats::default()),
                    service: Arc::default(),
                    health: Arc::default(),
                    limits: Default::default(),
                    proxy: Default::default(),
                    class: 0,
                })
            })
            .collect();
        Service {
            key: "tcp:10.9.0.10:80".parse().unwrap(),
            sched: SchedState::build(Scheduler::Rr, &servers, Arc::default()),
            servers,
            stats: Arc::new(TrafficStats::default()),
            persistence: Some(persistence),
            sorry: None,
            sloppy: false,
            lists: None,
            conn_rate: None,
            class: 0,
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
    fn templates_stop_at_their_limit() {
        let mut p = Persistence::new(360, 32);
        p.limit = 3;
        let svc = service(&[1, 1], p.clone());
        for client in 0..10 {
            let (_, t) = persistent_pick(&svc, &p, Addr::v4(client), 0).unwrap();
            assert_eq!(t.is_some(), client < 3, "client {client}");
        }
        assert_eq!(p.templates.len(), 3);
        assert_eq!(p.full.load(Relaxed), 7);
        // Known networks keep theirs.
        assert!(
            persistent_pick(&svc, &p, Addr::v4(1), 0)
                .unwrap()
                .1
                .is_some()
        );
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
                proto: crate::wire::PROTO_TCP,
            },
            l4_off: 34,
            ip_len: 40,
            tcp_flags: crate::wire::TCP_SYN,
            seg: Default::default(),
            icmp: None,
            frag: None,
            v6: false,
        };
        let c = new_conn(&pkt, 0, 0, 60, 0, &table, &ct).unwrap();
        assert_eq!(c.template.as_ref().unwrap().conns.load(Relaxed), 1);
        // Past the persistence timeout, but the handshake lives (60 s).
        assert_eq!(p.sweep(50), 1);
        assert_eq!(ct.sweep(60), 1);
        assert_eq!(p.sweep(65), 1, "kept for 10 s after its last connection");
        assert_eq!(p.sweep(70), 0);
    }
}

/// The pipeline's decisions over method × direction × {fits, too big
/// with and without DF, TTL ≤ 1, unresolved neighbour, fragments} for
/// both families — with no socket, no thread, no kernel.
#[cfg(test)]
mod decisions {
    use super::*;
    use crate::net::route::{Link, Route};
    use crate::pipeline::checksum::checksum;
    use crate::pipeline::icmp::Originate;
    use crate::pipeline::parse::fixtures::{a, checksums_ok, frame, frame6, l4_checksum6, split6};
    use crate::pipeline::schedule::SchedState;
    use crate::pipeline::snat::SnatPool;
    use crate::stats::TrafficStats;
    use crate::wire::{Ip, TCP_ACK, TCP_SYN, ipv4};
    use lvc_proto::Scheduler;
    use std::collections::HashMap;

    const CLIENT_IF: u32 = 10;
    const SERVER_IF: u32 = 20;
    const CLIENT_MAC: [u8; 6] = [0xc1; 6];
    const SERVER_MAC: [u8; 6] = [0x51; 6];

    /// Addresses of one family: client, VIP, resolved real server,
    /// unresolved real server, the director on each side.
    struct Family {
        client: Addr,
        vip: Addr,
        rip: Addr,
        unresolved: Addr,
        dir_client: Addr,
        dir_server: Addr,
    }

    fn family(v6: bool) -> Family {
        if v6 {
            Family {
                client: a("fd00:1::2"),
                vip: a("fd00:9::10"),
                rip: a("fd00:2::11"),
                unresolved: a("fd00:2::12"),
                dir_client: a("fd00:1::1"),
                dir_server: a("fd00:2::1"),
            }
        } else {
            Family {
                client: a("10.1.0.2"),
                vip: a("10.9.0.10"),
                rip: a("10.2.0.11"),
                unresolved: a("10.2.0.12"),
                dir_client: a("10.1.0.1"),
                dir_server: a("10.2.0.1"),
            }
        }
    }

    /// A two-armed director: port 0 = client side, port 1 = server side.
    struct Lab {
        fam: Family,
        services: ServiceTable,
        routes: RouteTable,
        shaping: ShapeTable,
        ct: Conntrack,
        ports: [u32; 2],
    }

    impl Lab {
        fn new(method: Method, v6: bool, server_mtu: u32, rip: fn(&Family) -> Addr) -> Self {
            let fam = family(v6);
            let server = Arc::new(Server {
                addr: rip(&fam),
                vip: fam.vip.ip().into(),
                port: 80,
                weight: 1,
                method,
                stats: Arc::default(),
                service: Arc::default(),
                health: Arc::default(),
                limits: Default::default(),
                proxy: Default::default(),
                class: 0,
            });
            let svc = |proto: &str| {
                let servers = vec![server.clone()];
                Arc::new(Service {
                    key: format!("{proto}:{}", std::net::SocketAddr::new(fam.vip.ip(), 80))
                        .parse()
                        .unwrap(),
                    sched: SchedState::build(Scheduler::Rr, &servers, Arc::default()),
                    servers,
                    stats: Arc::new(TrafficStats::default()),
                    persistence: None,
                    sorry: None,
                    sloppy: false,
                    lists: None,
                    conn_rate: None,
                    class: 0,
                })
            };
            let pool = SnatPool::new(&[fam.dir_server.ip()]);
            let services =
                ServiceTable::new([svc("tcp"), svc("udp")]).with_snat(Some(Arc::new(pool)));
            let on_link = |dst: &str, prefix, oif| Route {
                dst: a(dst),
                prefix,
                gateway: None,
                oif,
                metric: 0,
                reject: None,
            };
            let routes = vec![
                on_link("10.1.0.0", 96 + 24, CLIENT_IF),
                on_link("10.2.0.0", 96 + 24, SERVER_IF),
                on_link("fd00:1::", 64, CLIENT_IF),
                on_link("fd00:2::", 64, SERVER_IF),
            ];
            let mut neigh = HashMap::new();
            neigh.insert((CLIENT_IF, fam.client), CLIENT_MAC);
            neigh.insert((SERVER_IF, fam.rip), SERVER_MAC);
            let link = |ifindex, mac, mtu| Link {
                ifindex,
                name: format!("if{ifindex}"),
                mac,
                mtu,
            };
            let links = vec![
                link(CLIENT_IF, [0xd0; 6], 1500),
                link(SERVER_IF, [0xd1; 6], server_mtu),
            ];
            let routes = RouteTable::new(routes, neigh, links, Vec::new())
                .with_if_addr(CLIENT_IF, fam.dir_client)
                .with_if_addr(SERVER_IF, fam.dir_server);
            Self {
                fam,
                services,
                routes,
                shaping: ShapeTable::default(),
                ct: Conntrack::new(64),
                ports: [CLIENT_IF, SERVER_IF],
            }
        }

        fn tables(&self) -> Tables<'_> {
            Tables {
                now: 1,
                now_ns: 1_000_000_000,
                services: &self.services,
                routes: &self.routes,
                shaping: &self.shaping,
                conntrack: &self.ct,
                ports: &self.ports,
                offload: false,
            }
        }

        fn run(&self, f: &mut [u8]) -> Result<Decision, Drop> {
            forward(
                f,
                &self.tables(),
                &mut FlowMeta::default(),
                &mut Effects::default(),
            )
        }

        /// What the worker would send for `f`: the pipeline's decision
        /// carried out (a tunnelled frame wrapped).
        fn sent(&self, f: &[u8]) -> (Result<Decision, Drop>, Vec<u8>) {
            let mut out = f.to_vec();
            let d = match self.run(&mut out) {
                Ok(Decision::Tunnel(rip)) => {
                    let len = out.len();
                    out.resize(len + wire::IPIP_HLEN, 0);
                    tunnel(&mut out, len, rip, &self.tables())
                }
                d => d,
            };
            (d, out)
        }

        /// A client packet to the VIP.
        fn request(&self, proto: u8, flags: u8, payload: usize) -> Vec<u8> {
            packet(
                proto,
                self.fam.client,
                self.fam.vip,
                40000,
                80,
                flags,
                payload,
            )
        }
    }

    fn packet(proto: u8, src: Addr, dst: Addr, sp: u16, dp: u16, flags: u8, n: usize) -> Vec<u8> {
        let payload = vec![0x5a; n];
        match (src.v4_octets(), dst.v4_octets()) {
            (Some(s), Some(d)) => frame(proto, s, d, sp, dp, flags, &payload),
            _ => {
                let mut f = frame6(proto, src, dst, sp, dp, &payload);
                if proto == PROTO_TCP_NUM {
                    f[67] = flags;
                    let c = l4_checksum6(&f);
                    f[70..72].copy_from_slice(&c.to_be_bytes());
                }
                f
            }
        }
    }
    const PROTO_TCP_NUM: u8 = 6;

    /// Rewrites the IPv4 header's byte at `at` and fixes its checksum.
    fn set_v4(f: &mut [u8], at: usize, v: u8) {
        f[ETH_HLEN + at] = v;
        f[ETH_HLEN + ipv4::CSUM..ETH_HLEN + ipv4::CSUM + 2].fill(0);
        let c = checksum(&f[ETH_HLEN..ETH_HLEN + 20]);
        f[ETH_HLEN + ipv4::CSUM..ETH_HLEN + ipv4::CSUM + 2].copy_from_slice(&c.to_be_bytes());
    }

    fn set_hops(f: &mut [u8], v6: bool, hops: u8) {
        if v6 {
            f[ETH_HLEN + 7] = hops;
        } else {
            set_v4(f, ipv4::TTL, hops);
        }
    }

    /// Splits an IPv4 UDP frame into two fragments (`first` bytes of its
    /// L4 segment, a multiple of 8, in the first), checksums fixed.
    fn split4(f: &[u8], first: usize, id: u16) -> (Vec<u8>, Vec<u8>) {
        let l4 = ETH_HLEN + 20;
        let frag = |part: &[u8], off: usize, more: bool| {
            let mut g = f[..l4].to_vec();
            g.extend_from_slice(part);
            let len = (20 + part.len()) as u16;
            g[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&len.to_be_bytes());
            g[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&id.to_be_bytes());
            let flags = (off / 8) as u16 | if more { 0x2000 } else { 0 };
            g[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&flags.to_be_bytes());
            set_v4(&mut g, ipv4::TTL, 64);
            g
        };
        (
            frag(&f[l4..l4 + first], 0, true),
            frag(&f[l4 + first..], first, false),
        )
    }

    /// What a frame that left says about itself: (src, sport, dst, dport).
    fn endpoints(f: &[u8]) -> (Addr, u16, Addr, u16) {
        let p = parse(f).expect("a valid frame leaves");
        (p.key.src, p.key.sport, p.key.dst, p.key.dport)
    }

    fn l4_ok(f: &[u8], v6: bool) -> bool {
        if v6 {
            let at = ETH_HLEN + 40 + if f[20] == 6 { 16 } else { 6 };
            u16::from_be_bytes([f[at], f[at + 1]]) == l4_checksum6(f)
        } else {
            checksums_ok(f)
        }
    }

    const METHODS: [Method; 5] = [
        Method::Nat,
        Method::Dnat,
        Method::Dr,
        Method::Tun,
        Method::Fullnat,
    ];

    /// Every method and family that lvc serves (IPIP is IPv4 only).
    fn each(mut check: impl FnMut(Method, bool)) {
        for v6 in [false, true] {
            for m in METHODS {
                if !(m == Method::Tun && v6) {
                    check(m, v6);
                }
            }
        }
    }

    fn rip(f: &Family) -> Addr {
        f.rip
    }

    #[test]
    fn a_packet_that_fits_is_rewritten_for_its_method() {
        each(|m, v6| {
            let lab = Lab::new(m, v6, 1500, rip);
            let fam = &lab.fam;
            let mut f = lab.request(6, TCP_SYN, 100);
            let before = f.clone();
            let d = lab.run(&mut f);
            let case = format!("{m:?} v6={v6}");
            if m == Method::Tun {
                // Wrapped by the worker once the frame has grown.
                assert_eq!(d, Ok(Decision::Tunnel(fam.rip)), "{case}");
                assert_eq!(f, before, "{case}: the inner packet travels as sent");
                let len = f.len();
                f.resize(len + wire::IPIP_HLEN, 0);
                let t = Tables {
                    now: 1,
                    now_ns: 0,
                    services: &lab.services,
                    routes: &lab.routes,
                    shaping: &lab.shaping,
                    conntrack: &lab.ct,
                    ports: &lab.ports,
                    offload: false,
                };
                assert_eq!(tunnel(&mut f, len, fam.rip, &t), Ok(Decision::Send(1)));
                assert_eq!(f[ETH_HLEN + ipv4::PROTO], wire::PROTO_IPIP);
                assert_eq!(f[..6], SERVER_MAC, "{case}");
                assert_eq!(
                    f[ETH_HLEN + 20..],
                    before[ETH_HLEN..],
                    "{case}: inner intact"
                );
                return;
            }
            assert_eq!(d, Ok(Decision::Send(1)), "{case}");
            assert_eq!(f[..6], SERVER_MAC, "{case}: next hop's MAC");
            assert_eq!(f[6..12], [0xd1; 6], "{case}: the server side's MAC");
            let (src, sport, dst, dport) = endpoints(&f);
            let hops = Ip::of(&f[..], ETH_HLEN).hops();
            match m {
                Method::Dr => {
                    assert_eq!((src, dst), (fam.client, fam.vip), "{case}");
                    assert_eq!(f[12..], before[12..], "{case}: only MACs change");
                    assert_eq!(hops, 64, "{case}: DR keeps the TTL");
                }
                Method::Nat | Method::Dnat => {
                    assert_eq!((src, sport), (fam.client, 40000), "{case}");
                    assert_eq!((dst, dport), (fam.rip, 80), "{case}");
                    assert_eq!(hops, 63, "{case}");
                }
                Method::Fullnat => {
                    assert_eq!(src, fam.dir_server, "{case}: a pool address");
                    assert_eq!((dst, dport), (fam.rip, 80), "{case}");
                    assert_eq!(hops, 63, "{case}");
                }
                Method::Tun => unreachable!(),
            }
            assert!(l4_ok(&f, v6), "{case}: checksums valid");
        });
    }

    #[test]
    fn replies_are_translated_back_only_where_the_method_sees_them() {
        each(|m, v6| {
            let lab = Lab::new(m, v6, 1500, rip);
            let fam = &lab.fam;
            let case = format!("{m:?} v6={v6}");
            let mut f = lab.request(6, TCP_SYN, 0);
            lab.run(&mut f).unwrap();
            // The reply as the real server sends it: to whoever the
            // request reached it from.
            let (src, sport, _, _) = endpoints(&f);
            let (to, to_port) = if m == Method::Fullnat {
                (src, sport)
            } else {
                (fam.client, 40000)
            };
            let mut r = packet(6, fam.rip, to, 80, to_port, TCP_SYN | TCP_ACK, 10);
            let d = lab.run(&mut r);
            match m {
                Method::Nat | Method::Fullnat => {
                    assert_eq!(d, Ok(Decision::Send(0)), "{case}");
                    assert_eq!(r[..6], CLIENT_MAC, "{case}");
                    assert_eq!(
                        endpoints(&r),
                        (fam.vip, 80, fam.client, 40000),
                        "{case}: from the VIP to the client"
                    );
                    assert!(l4_ok(&r, v6), "{case}");
                }
                // Replies bypass the director: one that came here anyway
                // belongs to no flow and no service.
                _ => assert_eq!(d, Err(Drop::NoService), "{case}"),
            }
        });
    }

    #[test]
    fn too_big_for_the_next_link() {
        each(|m, v6| {
            let lab = Lab::new(m, v6, 1400, rip);
            let case = format!("{m:?} v6={v6}");
            // 1500-byte IP packets (DF set: the fixture's default).
            let payload = 1500 - if v6 { 40 } else { 20 } - 8;
            let mut f = lab.request(17, 0, payload);
            let overhead = if m == Method::Tun { 20 } else { 0 };
            let expect = Originate {
                kind: if v6 {
                    ICMP6_PACKET_TOO_BIG
                } else {
                    ICMP_DEST_UNREACH
                },
                code: if v6 { 0 } else { ICMP_FRAG_NEEDED },
                mtu: 1400 - overhead,
            };
            assert_eq!(lab.run(&mut f), Ok(Decision::Icmp(expect)), "{case}");
            assert!(
                lab.ct.is_empty(),
                "{case}: a refused first packet leaves no state"
            );
            if v6 {
                return;
            }
            // DF clear: forwarded in fragments (tun: the outer packet,
            // split once wrapped).
            let mut f = lab.request(17, 0, payload);
            set_v4(&mut f, ipv4::FRAG, 0);
            let d = lab.run(&mut f);
            if m == Method::Tun {
                assert_eq!(d, Ok(Decision::Tunnel(lab.fam.rip)), "{case}");
            } else {
                assert_eq!(d, Ok(Decision::Fragment(1, 1400)), "{case}");
            }
        });
    }

    #[test]
    fn out_of_hops_is_time_exceeded_where_the_method_routes() {
        each(|m, v6| {
            let lab = Lab::new(m, v6, 1500, rip);
            let case = format!("{m:?} v6={v6}");
            let mut f = lab.request(6, TCP_SYN, 0);
            set_hops(&mut f, v6, 1);
            let d = lab.run(&mut f);
            match m {
                // DR forwards without decrementing; tun wraps the packet
                // as it came.
                Method::Dr => assert_eq!(d, Ok(Decision::Send(1)), "{case}"),
                Method::Tun => assert_eq!(d, Ok(Decision::Tunnel(lab.fam.rip)), "{case}"),
                _ => {
                    let kind = if v6 {
                        ICMP6_TIME_EXCEEDED
                    } else {
                        ICMP_TIME_EXCEEDED
                    };
                    let expect = Originate {
                        kind,
                        code: 0,
                        mtu: 0,
                    };
                    assert_eq!(d, Ok(Decision::Icmp(expect)), "{case}");
                    // Answered before any state: a flood of them does not
                    // fill the table.
                    assert_eq!(lab.ct.len(), 0, "{case}");
                }
            }
        });
    }

    /// A real server behind a blackhole route: dropped and counted; behind
    /// an unreachable or prohibit route: answered with the ICMP error the
    /// kernel sends, and counted too.
    #[test]
    fn reject_routes_drop_or_answer_like_the_kernel() {
        for kind in [
            RejectKind::Blackhole,
            RejectKind::Unreachable,
            RejectKind::Prohibit,
        ] {
            each(|m, v6| {
                let mut lab = Lab::new(m, v6, 1500, rip);
                let case = format!("{kind:?} {m:?} v6={v6}");
                lab.routes = lab.routes.clone().with_route(crate::net::route::Route {
                    dst: lab.fam.rip,
                    prefix: 128,
                    gateway: None,
                    oif: 0,
                    metric: 0,
                    reject: Some(kind),
                });
                let mut f = lab.request(6, TCP_SYN, 0);
                let mut fx = Effects::default();
                let d = forward(&mut f, &lab.tables(), &mut FlowMeta::default(), &mut fx);
                let unreach = if v6 {
                    ICMP6_DEST_UNREACH
                } else {
                    ICMP_DEST_UNREACH
                };
                let icmp = |code| {
                    Ok(Decision::Icmp(Originate {
                        kind: unreach,
                        code,
                        mtu: 0,
                    }))
                };
                match (kind, v6) {
                    (RejectKind::Blackhole, _) => {
                        assert_eq!(d, Err(Drop::RouteBlackhole), "{case}");
                        assert_eq!(fx.refused, None, "{case}");
                    }
                    (RejectKind::Unreachable, false) => {
                        assert_eq!(d, icmp(ICMP_HOST_UNREACH), "{case}")
                    }
                    (RejectKind::Unreachable, true) => assert_eq!(d, icmp(ICMP6_NOROUTE), "{case}"),
                    (RejectKind::Prohibit, false) => {
                        assert_eq!(d, icmp(ICMP_PKT_FILTERED), "{case}")
                    }
                    (RejectKind::Prohibit, true) => {
                        assert_eq!(d, icmp(ICMP6_ADM_PROHIBITED), "{case}")
                    }
                }
                if kind != RejectKind::Blackhole {
                    assert_eq!(fx.refused, Some(refused(kind)), "{case}");
                }
                // The client itself is still reachable: its replies and
                // errors about it are unaffected.
                assert!(matches!(
                    lab.routes.next_hop(lab.fam.client),
                    NextHop::Ready(_)
                ));
            });
        }
    }

    #[test]
    fn an_unresolved_next_hop_parks_the_frame_and_asks_for_it() {
        each(|m, v6| {
            let lab = Lab::new(m, v6, 1500, |f| f.unresolved);
            let case = format!("{m:?} v6={v6}");
            let mut f = lab.request(6, TCP_SYN, 0);
            let d = lab.run(&mut f);
            let rip = lab.fam.unresolved;
            if m == Method::Tun {
                assert_eq!(d, Ok(Decision::Tunnel(rip)), "{case}");
                return;
            }
            let ask = NeighRequest {
                ifindex: SERVER_IF,
                ip: rip,
            };
            assert_eq!(d, Ok(Decision::Park(rip, ask)), "{case}");
        });
    }

    #[test]
    fn later_fragments_follow_their_first() {
        each(|m, v6| {
            let lab = Lab::new(m, v6, 1500, rip);
            let case = format!("{m:?} v6={v6}");
            let whole = lab.request(17, 0, 200);
            let (mut first, mut later) = if v6 {
                split6(&whole, 64, 7)
            } else {
                split4(&whole, 64, 7)
            };
            // A later fragment that overtakes its first is not ours yet.
            assert_eq!(lab.run(&mut later.clone()), Err(Drop::Fragment), "{case}");
            let d1 = lab.run(&mut first);
            let d2 = lab.run(&mut later);
            if m == Method::Tun {
                assert_eq!((d1, d2), (Ok(Decision::Tunnel(lab.fam.rip)), d1), "{case}");
                return;
            }
            assert_eq!(
                (d1, d2),
                (Ok(Decision::Send(1)), Ok(Decision::Send(1))),
                "{case}"
            );
            let dst = |f: &[u8]| Ip::of(f, ETH_HLEN).dst();
            let src = |f: &[u8]| Ip::of(f, ETH_HLEN).src();
            assert_eq!(dst(&later), dst(&first), "{case}: same destination");
            assert_eq!(src(&later), src(&first), "{case}: same source");
            let expect_dst = if m == Method::Dr {
                lab.fam.vip
            } else {
                lab.fam.rip
            };
            assert_eq!(dst(&later), expect_dst, "{case}");
        });
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
    }

    /// The XDP program's fast path and this pipeline turn an offloaded
    /// flow's packets into the same bytes, for every method and family,
    /// both directions lvc sees — the Translation is one value for both —
    /// with the flows in the shared slots (as workers install them) and in
    /// the `flows` hash map (the offload thread's).
    /// Privileged (loads the program; BPF_PROG_TEST_RUN, no traffic).
    #[test]
    fn xdp_forwards_offloaded_flows_as_the_pipeline_does() {
        if !is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "this test needs root (BPF) and CI runs as root"
            );
            eprintln!("skipped: needs root");
            return;
        }
        const XDP_REDIRECT: u32 = 4;
        let mut st = crate::io::steer::Steering::load().expect("the XDP program loads");
        // Test runs arrive on lo; any device takes the redirects.
        st.set_egress(0, 1).unwrap();
        st.set_egress(1, 1).unwrap();
        let mut flows = st.take_flows().unwrap();
        let slots = st.flow_slots();
        let xdp = |st: &mut crate::io::steer::Steering, f: &[u8]| {
            let mut out = vec![0u8; f.len() + 64];
            let (action, n) = st.test_run_out(f, 0, 0, Some(&mut out)).unwrap();
            out.truncate(n);
            (action, out)
        };
        const XDP_PASS: u32 = 2;
        const PSH_ACK: u8 = 0x18;
        each(|m, v6| {
            for (proto, in_slots) in [(17u8, false), (6, false), (17, true), (6, true)] {
                let case = format!("{m:?} v6={v6} proto={proto} in slots: {in_slots}");
                let lab = Lab::new(m, v6, 1500, rip);
                if proto == 17 {
                    // A UDP flow qualifies after a few packets.
                    for _ in 0..conntrack::OFFLOAD_AFTER {
                        lab.run(&mut lab.request(17, 0, 100)).unwrap();
                    }
                } else {
                    // The handshake (the server's part where lvc sees it).
                    let mut syn = lab.request(6, TCP_SYN, 0);
                    lab.run(&mut syn).unwrap();
                    let (src, sport, _, _) = endpoints(&syn);
                    if m == Method::Nat || m == Method::Fullnat {
                        let (to, port) = if m == Method::Fullnat {
                            (src, sport)
                        } else {
                            (lab.fam.client, 40000)
                        };
                        let mut sa = packet(6, lab.fam.rip, to, 80, port, TCP_SYN | TCP_ACK, 0);
                        lab.run(&mut sa).unwrap();
                    }
                    lab.run(&mut lab.request(6, TCP_ACK, 0)).unwrap();
                    // ... and a few packets more.
                    for _ in 0..conntrack::OFFLOAD_AFTER {
                        lab.run(&mut lab.request(6, PSH_ACK, 100)).unwrap();
                    }
                }
                let flags = if proto == 6 { PSH_ACK } else { 0 };
                let key = parse(&lab.request(proto, flags, 100)).unwrap().key;
                let (conn, _) = lab.ct.lookup(&key).expect("tracked");
                assert!(conn.offload_ready(), "{case}: {:?}", conn.state());
                let offer = translate::offer(&conn, &lab.tables()).expect("offloadable");
                let dirs = if conn.two_way() { 2 } else { 1 };
                assert_eq!(offer.flows.len(), dirs, "{case}");
                let mut at = Vec::new();
                for f in &offer.flows {
                    if in_slots {
                        at.push(slots.insert(&f.key, &f.value, 0).expect("a free slot"));
                    } else {
                        flows.insert(f.key, f.value).unwrap();
                    }
                }
                let mut packets =
                    vec![lab.request(proto, flags, 100), lab.request(proto, flags, 1)];
                if conn.two_way() {
                    let (to, port) = conn.local();
                    packets.push(packet(proto, lab.fam.rip, to, 80, port, flags, 77));
                }
                if proto == 17 {
                    // A zero UDP checksum ("none") stays zero on both paths.
                    let mut z = lab.request(17, 0, 33);
                    let at = ETH_HLEN + if v6 { 40 } else { 20 } + 6;
                    z[at..at + 2].fill(0);
                    packets.push(z);
                }
                for p in &packets {
                    let (d, user) = lab.sent(p);
                    assert!(matches!(d, Ok(Decision::Send(_))), "{case}: {d:?}");
                    let (action, fast) = xdp(&mut st, p);
                    assert_eq!(action, XDP_REDIRECT, "{case}");
                    assert_eq!(fast, user, "{case}: XDP and the pipeline differ");
                }
                let forwarded: u64 = if in_slots {
                    at.iter().map(|&i| slots.read(i).packets).sum()
                } else {
                    offer
                        .flows
                        .iter()
                        .map(|f| flows.get(&f.key).unwrap().packets)
                        .sum()
                };
                assert_eq!(forwarded, packets.len() as u64, "{case}: XDP counts each");
                // What lvc must see still goes the usual way (here: to
                // the kernel, as no socket is bound).
                let l4 = if proto == 6 { 20 } else { 8 };
                let big = lab.request(proto, flags, 1501 - if v6 { 40 } else { 20 } - l4);
                let mut to_lvc = vec![big];
                if m != Method::Tun && m != Method::Dr {
                    let mut ttl1 = lab.request(proto, flags, 10);
                    set_hops(&mut ttl1, v6, 1);
                    to_lvc.push(ttl1);
                }
                if proto == 6 {
                    to_lvc.push(lab.request(6, TCP_ACK | 0x01, 0));
                    to_lvc.push(lab.request(6, 0x04, 0));
                }
                if !v6 {
                    // IPv4 options (a 4-byte NOP word: IHL 6).
                    let f = lab.request(proto, flags, 40);
                    let mut o = f[..ETH_HLEN + 20].to_vec();
                    o.extend_from_slice(&[1, 1, 1, 0]);
                    o.extend_from_slice(&f[ETH_HLEN + 20..]);
                    o[ETH_HLEN] = 0x46;
                    let len = (f.len() - ETH_HLEN + 4) as u16;
                    o[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&len.to_be_bytes());
                    set_v4(&mut o, ipv4::TTL, 64);
                    to_lvc.push(o);
                    // A first fragment (MF set).
                    let mut frag = lab.request(proto, flags, 40);
                    set_v4(&mut frag, ipv4::FRAG, ipv4::DF | ipv4::MF);
                    to_lvc.push(frag);
                    if m == Method::Tun {
                        // DF clear: the outer header would need a fresh id.
                        let mut df0 = lab.request(proto, flags, 40);
                        set_v4(&mut df0, ipv4::FRAG, 0);
                        to_lvc.push(df0);
                    }
                }
                for p in &to_lvc {
                    let (action, _) = xdp(&mut st, p);
                    assert_eq!(action, XDP_PASS, "{case}");
                }
                for (i, f) in offer.flows.iter().enumerate() {
                    if in_slots {
                        slots.remove(at[i], &f.key, 0);
                    } else {
                        flows.remove(&f.key).unwrap();
                    }
                }
                // Gone from XDP: lvc's again.
                let (action, _) = xdp(&mut st, &packets[0]);
                assert_eq!(action, XDP_PASS, "{case}: removed");
            }
        });
    }

    #[test]
    fn packets_that_open_nothing_are_dropped_with_a_reason() {
        each(|m, v6| {
            let lab = Lab::new(m, v6, 1500, rip);
            let case = format!("{m:?} v6={v6}");
            // A bare ACK opens no TCP connection.
            assert_eq!(
                lab.run(&mut lab.request(6, TCP_ACK, 0)),
                Err(Drop::NoFlow),
                "{case}"
            );
            // Another port: no service.
            let mut f = packet(6, lab.fam.client, lab.fam.vip, 40000, 81, TCP_SYN, 0);
            assert_eq!(lab.run(&mut f), Err(Drop::NoService), "{case}");
            // Truncated, and not IP at all.
            let mut cut = lab.request(6, TCP_SYN, 0);
            cut.truncate(ETH_HLEN + 10);
            assert_eq!(lab.run(&mut cut), Err(Drop::Malformed), "{case}");
            assert_eq!(lab.run(&mut [0u8; 20]), Err(Drop::NotIp), "{case}");
        });
    }

    /// Packet torture: each frame ends in a counted drop (an `Err` the
    /// worker counts by reason) or a forward of a frame lvc can read again,
    /// never a panic; and nothing about an unrelated flow changes its
    /// connection.
    #[test]
    fn torture() {
        for v6 in [false, true] {
            let lab = Lab::new(Method::Nat, v6, 1500, rip);
            let fam = &lab.fam;
            // A live flow, and its state.
            let mut f = lab.request(6, TCP_SYN, 0);
            assert!(matches!(lab.run(&mut f), Ok(Decision::Send(1))));
            let live = lab
                .ct
                .lookup(&parse(&lab.request(6, TCP_SYN, 0)).unwrap().key);
            let (conn, _) = live.expect("the live flow");
            let state = conn.state();
            let ok_or_counted = |what: &str, f: &[u8]| {
                let mut out = f.to_vec();
                // (Anything else is a counted drop or an ICMP answer.)
                if let Ok(Decision::Send(_)) = lab.run(&mut out) {
                    assert!(
                        parse(&out).is_ok(),
                        "v6={v6} {what}: sent an unreadable frame"
                    );
                }
            };
            let base = lab.request(17, 0, 12);
            // Truncated at every byte.
            for n in 0..base.len() {
                let mut t = base[..n].to_vec();
                assert!(lab.run(&mut t).is_err(), "v6={v6}: truncated to {n} bytes");
            }
            // Every TCP flag combination, on a new flow and on the live one.
            for flags in 0..=255u8 {
                let mut n = packet(
                    6,
                    fam.client,
                    fam.vip,
                    41000 + u16::from(flags),
                    80,
                    flags,
                    4,
                );
                let d = lab.run(&mut n);
                if flags & (TCP_SYN | TCP_ACK | crate::wire::TCP_RST) == TCP_SYN {
                    assert!(
                        d.is_ok(),
                        "v6={v6}: a SYN ({flags:#x}) opens a connection: {d:?}"
                    );
                } else {
                    assert!(d.is_err(), "v6={v6}: {flags:#x} opens nothing: {d:?}");
                }
                ok_or_counted(
                    "flags on the live flow",
                    &lab.request(6, flags & !crate::wire::TCP_RST, 4),
                );
            }
            // Zero-length UDP; UDP checksum 0.
            let mut z = lab.request(17, 0, 0);
            assert!(
                matches!(lab.run(&mut z), Ok(Decision::Send(1))),
                "v6={v6}: empty UDP"
            );
            let udp_csum = if v6 {
                ETH_HLEN + 40 + 6
            } else {
                ETH_HLEN + 20 + 6
            };
            let mut zc = lab.request(17, 0, 5);
            zc[udp_csum..udp_csum + 2].fill(0);
            let mut out = zc.clone();
            assert!(
                matches!(lab.run(&mut out), Ok(Decision::Send(1))),
                "v6={v6}"
            );
            if !v6 {
                assert_eq!(
                    &out[udp_csum..udp_csum + 2],
                    &[0, 0],
                    "no checksum stays none"
                );
            }
            // Lying lengths: a UDP length beyond the packet or under its
            // header, an IP length beyond the frame.
            for udp_len in [7u16, 9 + 5 + 100] {
                let mut l = lab.request(17, 0, 5);
                l[udp_csum - 2..udp_csum].copy_from_slice(&udp_len.to_be_bytes());
                assert_eq!(
                    lab.run(&mut l),
                    Err(Drop::Malformed),
                    "v6={v6}: UDP length {udp_len}"
                );
            }
            let mut long = lab.request(17, 0, 5);
            let ip_len_at = if v6 { ETH_HLEN + 4 } else { ETH_HLEN + 2 };
            long[ip_len_at..ip_len_at + 2].copy_from_slice(&1400u16.to_be_bytes());
            assert_eq!(
                lab.run(&mut long),
                Err(Drop::Malformed),
                "v6={v6}: IP length past the frame"
            );
            // TCP data offset under 5 words or past the segment.
            for doff in [0u8, 4, 15] {
                let mut d = lab.request(6, TCP_ACK, 4);
                let at = if v6 {
                    ETH_HLEN + 40 + 12
                } else {
                    ETH_HLEN + 20 + 12
                };
                d[at] = doff << 4;
                assert_eq!(
                    lab.run(&mut d),
                    Err(Drop::Malformed),
                    "v6={v6}: data offset {doff}"
                );
            }
            // VLAN and QinQ tags: not lvc's (the XDP program passes them).
            for tpid in [[0x81, 0x00], [0x88, 0xa8]] {
                let mut t = lab.request(17, 0, 5);
                t[12..14].copy_from_slice(&tpid);
                assert!(lab.run(&mut t).is_err(), "v6={v6}: tag {tpid:02x?}");
            }
            // An ICMP error quoting a flow lvc does not have (the live one's
            // addresses, other ports; or a quote cut short): dropped, and
            // the live connection is untouched.
            let forged = packet(6, fam.vip, fam.client, 80, 40001, TCP_ACK, 0);
            let quoted = &forged[ETH_HLEN..];
            for cut in [quoted.len(), (if v6 { 40 } else { 20 }) + 4] {
                let mut e = icmp_error_about(fam, &quoted[..cut], v6);
                assert!(
                    lab.run(&mut e).is_err(),
                    "v6={v6}: forged ICMP error ({cut} bytes quoted)"
                );
            }
            assert_eq!(conn.state(), state, "v6={v6}: the live flow's state");
            let mut again = lab.request(6, TCP_ACK, 4);
            assert!(
                matches!(lab.run(&mut again), Ok(Decision::Send(1))),
                "v6={v6}: still forwarded"
            );
            if v6 {
                // Extension headers lvc does not walk (hop-by-hop options).
                let mut h = lab.request(17, 0, 5);
                h[ETH_HLEN + 6] = 0;
                assert_eq!(lab.run(&mut h), Err(Drop::Protocol), "hop-by-hop");
                continue;
            }
            // IPv4: bad IHL, options, TTL 0 and 1, tiny, overlapping and
            // out-of-order fragments.
            for ihl in [0u8, 4, 15] {
                let mut b = lab.request(17, 0, 5);
                set_v4(&mut b, 0, 0x40 | ihl);
                assert!(lab.run(&mut b).is_err(), "IHL {ihl}");
            }
            let mut opts = lab.request(6, TCP_ACK, 4);
            opts.splice(ETH_HLEN + 20..ETH_HLEN + 20, [1u8, 1, 1, 0]);
            let len = u16::from_be_bytes([opts[ETH_HLEN + 2], opts[ETH_HLEN + 3]]) + 4;
            opts[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&len.to_be_bytes());
            set_v4(&mut opts, 0, 0x46);
            ok_or_counted("IP options", &opts);
            for ttl in [0u8, 1] {
                let mut t = lab.request(6, TCP_ACK, 4);
                set_v4(&mut t, ipv4::TTL, ttl);
                assert!(
                    matches!(lab.run(&mut t), Ok(Decision::Icmp(_)) | Err(_)),
                    "TTL {ttl}"
                );
            }
            let big = lab.request(17, 0, 64);
            let (first, later) = split4(&big, 16, 0x4242);
            let mut l = later.clone();
            assert_eq!(
                lab.run(&mut l),
                Err(Drop::Fragment),
                "a later fragment first"
            );
            ok_or_counted("first fragment", &first);
            ok_or_counted("later fragment", &later);
            // Overlapping: the later one again, from offset 8.
            let mut overlap = later.clone();
            overlap[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&(0x2000u16 | 1).to_be_bytes());
            ok_or_counted("overlapping fragment", &overlap);
            // Tiny: a first fragment too short for the UDP header.
            let (tiny, _) = split4(&big, 0, 0x4343);
            let mut t = tiny;
            assert!(lab.run(&mut t).is_err(), "tiny first fragment");
        }
    }

    /// An ICMP destination unreachable (ICMPv6 for IPv6) from the client
    /// side quoting `quoted` (an IP packet, maybe cut short).
    fn icmp_error_about(fam: &Family, quoted: &[u8], v6: bool) -> Vec<u8> {
        let mut body = vec![
            if v6 { 1 } else { 3 },
            if v6 { 4 } else { 3 },
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        body.extend_from_slice(quoted);
        let mut f = packet(17, fam.client, fam.vip, 1, 1, 0, body.len() - 8);
        let l4 = if v6 { ETH_HLEN + 40 } else { ETH_HLEN + 20 };
        f[l4..].copy_from_slice(&body);
        if v6 {
            f[ETH_HLEN + 6] = 58;
        } else {
            set_v4(&mut f, ipv4::PROTO, 1);
        }
        f
    }
}
