//! Route: where a packet goes next, from the kernel's own tables.
//!
//! A dedicated thread mirrors the kernel's links, addresses, IPv4 and IPv6
//! main-table routes and neighbours over rtnetlink into an immutable [`RouteTable`]
//! that workers read through an `ArcSwap` (one load per batch). It re-reads
//! the tables whenever the kernel announces a change (and every few seconds
//! regardless), so MAC addresses never appear in lvc's configuration and
//! stay current.
//!
//! When a worker finds no usable neighbour entry for a next hop it sends a
//! [`NeighRequest`]; this thread asks the kernel to resolve it (RTM_NEWNEIGH
//! with `NTF_USE`, which makes the kernel send ARP or a neighbour
//! solicitation as if it had a packet to deliver). The resolved entry arrives as a change notification.

use crate::addr::Addr;
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rt};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Everything needed to put a frame on the wire towards a next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2 {
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The egress link's MTU.
    pub mtu: u32,
    /// An address of the director on the egress interface, of the
    /// destination's family (unspecified if none): the source of packets
    /// lvc originates that way (ICMP errors, tunnels).
    pub src_ip: Addr,
}

/// A request to resolve `ip`'s MAC on interface `ifindex`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NeighRequest {
    pub ifindex: u32,
    pub ip: Addr,
}

/// Result of a next-hop lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    Ready(L2),
    /// Routed, but the next hop's MAC is not known yet.
    Unresolved(NeighRequest),
    /// No route (or the destination is one of the director's addresses).
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Addr,
    /// Prefix length over the 128-bit [`Addr`] (an IPv4 /24 is 120 here).
    pub prefix: u8,
    pub gateway: Option<Addr>,
    pub oif: u32,
    pub metric: u32,
}

impl Route {
    #[cfg(test)]
    fn covers(&self, ip: Addr) -> bool {
        let mask = prefix_mask(self.prefix);
        // (An IPv6 default route must not cover IPv4 destinations.)
        ip.is_v4() == self.dst.is_v4()
            && u128::from_be_bytes(ip.0) & mask == u128::from_be_bytes(self.dst.0) & mask
    }
}

/// Routes of one family and prefix length, by their masked destination
/// (the lowest metric of each destination).
#[derive(Clone, Debug)]
struct Level {
    mask: u128,
    routes: HashMap<u128, Route, ahash::RandomState>,
}

/// Longest-prefix match: one hash lookup per prefix length in use
/// (a handful on a director; a few dozen with a full BGP table), instead
/// of a scan over every route.
#[derive(Clone, Debug, Default)]
struct Lpm {
    /// IPv4 and IPv6 levels, longest prefix first.
    v4: Vec<Level>,
    v6: Vec<Level>,
}

impl Lpm {
    /// `routes` sorted longest prefix first, then lowest metric.
    fn new(routes: &[Route]) -> Self {
        let mut lpm = Lpm::default();
        for r in routes {
            let levels = if r.dst.is_v4() {
                &mut lpm.v4
            } else {
                &mut lpm.v6
            };
            let mask = prefix_mask(r.prefix);
            if levels.last().is_none_or(|l| l.mask != mask) {
                levels.push(Level {
                    mask,
                    routes: HashMap::with_hasher(ahash::RandomState::new()),
                });
            }
            let level = levels.last_mut().expect("pushed");
            level
                .routes
                .entry(u128::from_be_bytes(r.dst.0) & mask)
                .or_insert(*r);
        }
        lpm
    }

    #[inline]
    fn lookup(&self, ip: Addr) -> Option<&Route> {
        let levels = if ip.is_v4() { &self.v4 } else { &self.v6 };
        let bits = u128::from_be_bytes(ip.0);
        levels.iter().find_map(|l| l.routes.get(&(bits & l.mask)))
    }
}

/// The mask of a prefix length over the 128-bit [`Addr`].
fn prefix_mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// A snapshot of the kernel's tables, as the workers use it.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Longest prefix first, then lowest metric (the tests' reference).
    #[cfg(test)]
    routes: Vec<Route>,
    lpm: Lpm,
    // (ahash: these are read per packet; SipHash showed in profiles.)
    neighbours: HashMap<(u32, Addr), [u8; 6], ahash::RandomState>,
    links: HashMap<u32, Link, ahash::RandomState>,
    locals: Vec<IpAddr>,
    /// First address of each family of each interface: (ifindex, is IPv4).
    if_addrs: HashMap<(u32, bool), Addr, ahash::RandomState>,
    /// Neighbours the kernel holds as STALE. lvc's own transmissions never
    /// confirm them (the kernel does not see them), so they are re-probed.
    stale: Vec<NeighRequest>,
}

impl RouteTable {
    pub fn new(
        mut routes: Vec<Route>,
        neighbours: HashMap<(u32, Addr), [u8; 6]>,
        links: Vec<Link>,
        locals: Vec<IpAddr>,
    ) -> Self {
        routes.sort_by(|a, b| b.prefix.cmp(&a.prefix).then(a.metric.cmp(&b.metric)));
        Self {
            lpm: Lpm::new(&routes),
            #[cfg(test)]
            routes,
            neighbours: neighbours.into_iter().collect(),
            links: links.into_iter().map(|l| (l.ifindex, l)).collect(),
            locals,
            if_addrs: HashMap::default(),
            stale: Vec::new(),
        }
    }

    /// The same table with `addr` as the director's address on `ifindex`
    /// (for tests and tools; the route thread reads them from the kernel).
    pub fn with_if_addr(mut self, ifindex: u32, addr: Addr) -> Self {
        self.if_addrs.insert((ifindex, addr.is_v4()), addr);
        self
    }

    /// Where a packet to `dst` goes next.
    #[inline]
    pub fn next_hop(&self, dst: Addr) -> NextHop {
        match self.route(dst) {
            Some(r) => self.via(r, dst),
            None => NextHop::None,
        }
    }

    /// Like [`next_hop`](Self::next_hop), for a destination that must be
    /// on a directly connected network (direct routing: the frame keeps
    /// the VIP as destination, so a gateway would route it straight back).
    #[inline]
    pub fn next_hop_onlink(&self, dst: Addr) -> NextHop {
        match self.route(dst) {
            Some(r) if r.gateway.is_none() => self.via(r, dst),
            _ => NextHop::None,
        }
    }

    /// The longest-prefix route to `dst` (the lowest metric among equals).
    #[inline]
    fn route(&self, dst: Addr) -> Option<&Route> {
        self.lpm.lookup(dst)
    }

    /// The next hop to `dst` along `route`.
    #[inline]
    fn via(&self, route: &Route, dst: Addr) -> NextHop {
        let hop = route.gateway.unwrap_or(dst);
        let Some(link) = self.links.get(&route.oif) else {
            return NextHop::None;
        };
        match self.neighbours.get(&(route.oif, hop)) {
            Some(&mac) => NextHop::Ready(L2 {
                ifindex: route.oif,
                src_mac: link.mac,
                dst_mac: mac,
                mtu: link.mtu,
                src_ip: self.if_addr(route.oif, dst).unwrap_or_default(),
            }),
            None if self.is_local(dst.ip()) => NextHop::None,
            None => NextHop::Unresolved(NeighRequest {
                ifindex: route.oif,
                ip: hop,
            }),
        }
    }

    /// The MTU of the link a packet to `dst` leaves on (whether or not the
    /// next hop's MAC is known yet).
    #[inline]
    pub fn mtu_towards(&self, dst: Addr) -> Option<u32> {
        let route = self.route(dst)?;
        self.links.get(&route.oif).map(|l| l.mtu)
    }

    /// The director's address on the interface towards `dst` (for packets
    /// lvc originates, such as ICMP errors).
    pub fn source_for(&self, dst: Addr) -> Option<Addr> {
        let route = self.route(dst)?;
        self.if_addr(route.oif, dst)
    }

    /// The director's first address on `ifindex` of `like`'s family.
    fn if_addr(&self, ifindex: u32, like: Addr) -> Option<Addr> {
        self.if_addrs.get(&(ifindex, like.is_v4())).copied()
    }

    /// The director's own addresses.
    pub fn locals(&self) -> &[IpAddr] {
        &self.locals
    }

    pub fn is_local(&self, ip: IpAddr) -> bool {
        self.locals.contains(&ip)
    }

    pub fn link(&self, ifindex: u32) -> Option<&Link> {
        self.links.get(&ifindex)
    }

    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.links.values().find(|l| l.name == name)
    }
}

/// A synchronous rtnetlink socket.
pub(crate) struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    pub(crate) fn new() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            sock,
            seq: 0,
            buf: Vec::with_capacity(1 << 16),
        })
    }

    fn send(&mut self, msg: Rt, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        hdr.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0)?;
        Ok(self.seq)
    }

    /// One datagram, undecoded; its length.
    fn recv_raw(&mut self, flags: i32) -> io::Result<usize> {
        self.buf.clear();
        self.sock.recv(&mut self.buf, flags)
    }

    /// One datagram, split into messages (undecodable ones skipped).
    fn recv_batch(&mut self, flags: i32) -> io::Result<Vec<NetlinkMessage<Rt>>> {
        self.buf.clear();
        let n = self.sock.recv(&mut self.buf, flags)?;
        let mut out = Vec::new();
        let mut off = 0;
        while off + 16 <= n {
            let len =
                u32::from_ne_bytes(self.buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            if len < 16 || off + len > n {
                break;
            }
            if let Ok(m) = NetlinkMessage::<Rt>::deserialize(&self.buf[off..off + len]) {
                out.push(m);
            }
            off += (len + 3) & !3;
        }
        Ok(out)
    }

    /// Sends a request, collects replies until DONE or ACK.
    fn request(&mut self, msg: Rt, flags: u16) -> io::Result<Vec<Rt>> {
        let seq = self.send(msg, flags)?;
        let mut res = Vec::new();
        loop {
            for m in self.recv_batch(0)? {
                if m.header.sequence_number != seq {
                    continue;
                }
                if m.header.flags & NLM_F_DUMP_INTR != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "netlink dump interrupted",
                    ));
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => res.push(inner),
                    NetlinkPayload::Done(d) if d.code < 0 => {
                        return Err(io::Error::from_raw_os_error(-d.code));
                    }
                    NetlinkPayload::Done(_) => return Ok(res),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(res),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    _ => {}
                }
            }
        }
    }

    fn dump(&mut self, msg: Rt) -> io::Result<Vec<Rt>> {
        // A dump interrupted by a concurrent change is simply retried.
        for _ in 0..5 {
            match self.request(msg.clone(), NLM_F_DUMP) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
        self.request(msg, NLM_F_DUMP)
    }

    /// Reads all four tables into a snapshot.
    fn snapshot(&mut self) -> io::Result<RouteTable> {
        let mut links = Vec::new();
        for m in self.dump(Rt::GetLink(LinkMessage::default()))? {
            if let Rt::NewLink(l) = m {
                links.push(parse_link(&l));
            }
        }
        let mut locals = Vec::new();
        let mut if_addrs = HashMap::new();
        for m in self.dump(Rt::GetAddress(AddressMessage::default()))? {
            if let Rt::NewAddress(a) = m
                && let Some(ip) = parse_addr(&a)
            {
                let addr = Addr::from(ip);
                // Link-local IPv6 addresses cannot source routed packets.
                let usable = match ip {
                    IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                    IpAddr::V4(_) => true,
                };
                if usable {
                    if_addrs
                        .entry((a.header.index, addr.is_v4()))
                        .or_insert(addr);
                }
                locals.push(ip);
            }
        }
        let mut routes = Vec::new();
        let mut neighbours = HashMap::new();
        let mut stale = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut rm = RouteMessage::default();
            rm.header.address_family = family;
            for m in self.dump(Rt::GetRoute(rm))? {
                if let Rt::NewRoute(r) = m {
                    routes.extend(parse_route(&r));
                }
            }
            let mut nm = NeighbourMessage::default();
            nm.header.family = family;
            for m in self.dump(Rt::GetNeighbour(nm))? {
                if let Rt::NewNeighbour(n) = m
                    && let Some((ifindex, ip, mac)) = parse_neigh(&n)
                {
                    neighbours.insert((ifindex, ip), mac);
                    if n.header.state == NeighbourState::Stale {
                        stale.push(NeighRequest { ifindex, ip });
                    }
                }
            }
        }
        let mut t = RouteTable::new(routes, neighbours, links, locals);
        t.stale = stale;
        t.if_addrs = if_addrs.into_iter().collect();
        Ok(t)
    }

    /// The index of link `name`.
    pub(crate) fn link_index(&mut self, name: &str) -> io::Result<u32> {
        self.dump(Rt::GetLink(LinkMessage::default()))?
            .into_iter()
            .find_map(|m| match m {
                Rt::NewLink(l) => (parse_link(&l).name == name).then_some(l.header.index),
                _ => None,
            })
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link `{name}`")))
    }

    /// Sets link `ifindex` up.
    pub(crate) fn link_up(&mut self, ifindex: u32) -> io::Result<()> {
        use netlink_packet_route::link::LinkFlags;
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(Rt::SetLink(m), NLM_F_ACK).map(|_| ())
    }

    /// Adds (or removes) the host route to `dst` through link `ifindex`,
    /// in the main table, with protocol `proto`.
    pub(crate) fn host_route(
        &mut self,
        add: bool,
        dst: IpAddr,
        ifindex: u32,
        proto: u8,
    ) -> io::Result<()> {
        use netlink_packet_route::route::{RouteProtocol, RouteScope};
        let mut m = RouteMessage::default();
        let (family, len, addr) = match dst {
            IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
        };
        m.header.address_family = family;
        m.header.destination_prefix_length = len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::from(proto);
        m.header.scope = RouteScope::Link;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Destination(addr));
        m.attributes.push(RouteAttribute::Oif(ifindex));
        if add {
            self.request(Rt::NewRoute(m), NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK)
        } else {
            self.request(Rt::DelRoute(m), NLM_F_ACK)
        }
        .map(|_| ())
    }

    /// Asks the kernel to resolve `req` (it sends ARP or a neighbour
    /// solicitation as for its own packet).
    fn resolve(&mut self, req: NeighRequest) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        let (family, dst) = match req.ip.ip() {
            IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
        };
        m.header.family = family;
        m.header.ifindex = req.ifindex;
        m.header.state = NeighbourState::None;
        m.header.flags = NeighbourFlags::Use;
        m.header.kind = RouteType::Unspec;
        m.attributes.push(NeighbourAttribute::Destination(dst));
        self.request(
            Rt::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
        )
        .map(|_| ())
    }
}

fn parse_link(l: &LinkMessage) -> Link {
    let mut link = Link {
        ifindex: l.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 1500,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(s) => link.name = s.clone(),
            LinkAttribute::Address(b) if b.len() == 6 => link.mac.copy_from_slice(b),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            _ => {}
        }
    }
    link
}

fn parse_addr(a: &AddressMessage) -> Option<IpAddr> {
    let mut ip = None;
    for at in &a.attributes {
        match at {
            AddressAttribute::Local(x) => ip = Some(*x),
            AddressAttribute::Address(x) if ip.is_none() => ip = Some(*x),
            _ => {}
        }
    }
    ip
}

fn addr(a: &RouteAddress) -> Option<Addr> {
    match a {
        RouteAddress::Inet(v) => Some((*v).into()),
        RouteAddress::Inet6(v) => Some((*v).into()),
        _ => None,
    }
}

/// Unicast IPv4 and IPv6 routes of the main table. A multipath route
/// contributes its first live next hop.
fn parse_route(r: &RouteMessage) -> Option<Route> {
    let h = &r.header;
    let mut table = u32::from(h.table);
    let v4 = h.address_family == AddressFamily::Inet;
    let mut route = Route {
        // A default route has no destination attribute.
        dst: if v4 { Addr::v4(0) } else { Addr::default() },
        prefix: h.destination_prefix_length + if v4 { 96 } else { 0 },
        gateway: None,
        oif: 0,
        metric: 0,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => route.dst = addr(d)?,
            RouteAttribute::Gateway(g) => route.gateway = addr(g),
            RouteAttribute::Oif(i) => route.oif = *i,
            RouteAttribute::Priority(p) => route.metric = *p,
            RouteAttribute::MultiPath(hops) if route.oif == 0 => {
                if let Some(nh) = hops.first() {
                    route.oif = nh.interface_index;
                    for na in &nh.attributes {
                        if let RouteAttribute::Gateway(g) = na {
                            route.gateway = addr(g);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)
        && h.kind == RouteType::Unicast
        && route.oif != 0)
        .then_some(route)
}

/// A usable neighbour: (ifindex, ip, mac).
fn parse_neigh(n: &NeighbourMessage) -> Option<(u32, Addr, [u8; 6])> {
    use NeighbourState as S;
    if !matches!(
        n.header.state,
        S::Reachable | S::Stale | S::Delay | S::Probe | S::Permanent
    ) {
        return None;
    }
    let (mut ip, mut mac) = (None, None);
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some((*v).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => ip = Some((*v).into()),
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                let mut m = [0; 6];
                m.copy_from_slice(b);
                mac = Some(m);
            }
            _ => {}
        }
    }
    Some((n.header.ifindex, ip?, mac?))
}

/// The netlink side of [`RouteTable`]: reads the initial snapshot, then
/// keeps it current on a thread of its own.
pub struct RouteMonitor {
    pub table: Arc<ArcSwap<RouteTable>>,
}

/// How often the tables are re-read even without notifications.
const REFRESH: Duration = Duration::from_secs(5);
/// How often STALE neighbours are re-probed.
const REPROBE: Duration = Duration::from_secs(30);
/// How long a resolution request suppresses repeats for the same neighbour.
const RESOLVE_HOLDOFF: Duration = Duration::from_millis(500);

impl RouteMonitor {
    /// Reads the kernel's tables once (errors here are fatal at start-up).
    pub fn start() -> io::Result<(Self, RouteSync)> {
        // Subscribe before the first read, so no change slips between.
        let events = Netlink::new()?;
        for g in [
            libc::RTNLGRP_LINK,
            libc::RTNLGRP_NEIGH,
            libc::RTNLGRP_IPV4_IFADDR,
            libc::RTNLGRP_IPV4_ROUTE,
            libc::RTNLGRP_IPV6_IFADDR,
            libc::RTNLGRP_IPV6_ROUTE,
        ] {
            events.sock.add_membership(g)?;
        }
        events.sock.set_non_blocking(true)?;
        let _ = events.sock.set_rx_buf_sz(4 << 20);
        let mut nl = Netlink::new()?;
        let table = Arc::new(ArcSwap::from_pointee(nl.snapshot()?));
        Ok((
            Self {
                table: table.clone(),
            },
            RouteSync {
                nl,
                events,
                table,
                recent: HashMap::new(),
                last_log: None,
                failures: 0,
            },
        ))
    }
}

/// The thread body that keeps a [`RouteTable`] current.
pub struct RouteSync {
    nl: Netlink,
    events: Netlink,
    table: Arc<ArcSwap<RouteTable>>,
    recent: HashMap<NeighRequest, Instant>,
    last_log: Option<Instant>,
    failures: u64,
}

impl RouteSync {
    /// Runs until `shutdown`.
    pub fn run(mut self, requests: Receiver<NeighRequest>, shutdown: Arc<AtomicBool>) {
        let mut last_refresh = Instant::now();
        let mut last_reprobe = Instant::now();
        let mut dirty = false;
        while !shutdown.load(Relaxed) {
            match requests.recv_timeout(Duration::from_millis(50)) {
                Ok(req) => self.resolve(req),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
            }
            for req in requests.try_iter().take(1024).collect::<Vec<_>>() {
                self.resolve(req);
            }
            loop {
                // Any notification means a re-read (even one this netlink
                // crate version cannot decode, as some IPv6 ones).
                match self.events.recv_raw(libc::MSG_DONTWAIT) {
                    Ok(0) => break,
                    Ok(_) => dirty = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // ENOBUFS: notifications were lost; a re-read covers them.
                    Err(_) => {
                        dirty = true;
                        break;
                    }
                }
            }
            if last_reprobe.elapsed() >= REPROBE {
                // A real server's MAC may change without a gratuitous ARP:
                // have the kernel re-confirm what went stale.
                last_reprobe = Instant::now();
                let stale = self.table.load().stale.clone();
                for req in stale {
                    self.resolve(req);
                }
            }
            if dirty || last_refresh.elapsed() >= REFRESH {
                match self.nl.snapshot() {
                    Ok(t) => {
                        self.table.store(Arc::new(t));
                        dirty = false;
                        last_refresh = Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "re-reading routes and neighbours failed; retrying")
                    }
                }
            }
        }
    }

    fn resolve(&mut self, req: NeighRequest) {
        let now = Instant::now();
        if self
            .recent
            .get(&req)
            .is_some_and(|t| now.duration_since(*t) < RESOLVE_HOLDOFF)
        {
            return;
        }
        if self.recent.len() > 65536 {
            self.recent
                .retain(|_, t| now.duration_since(*t) < RESOLVE_HOLDOFF);
        }
        self.recent.insert(req, now);
        if let Err(e) = self.nl.resolve(req) {
            // Packets trigger these requests: log at most once per 10 s.
            self.failures += 1;
            if self
                .last_log
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
            {
                tracing::warn!(
                    ip = %req.ip,
                    ifindex = req.ifindex,
                    error = %e,
                    failures = self.failures,
                    "neighbour resolution requests failing (at most one log per 10 s)"
                );
                self.last_log = Some(now);
                self.failures = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Addr {
        s.parse::<IpAddr>().unwrap().into()
    }

    fn table() -> RouteTable {
        let routes = vec![
            Route {
                dst: ip("0.0.0.0"),
                prefix: 96,
                gateway: Some(ip("10.0.0.1")),
                oif: 2,
                metric: 0,
            },
            Route {
                dst: ip("10.0.0.0"),
                prefix: 96 + 24,
                gateway: None,
                oif: 2,
                metric: 0,
            },
            Route {
                dst: ip("10.1.0.0"),
                prefix: 96 + 16,
                gateway: None,
                oif: 3,
                metric: 100,
            },
            Route {
                dst: ip("10.1.0.0"),
                prefix: 96 + 16,
                gateway: None,
                oif: 2,
                metric: 10,
            },
            Route {
                dst: ip("fd00:2::"),
                prefix: 64,
                gateway: None,
                oif: 3,
                metric: 256,
            },
            Route {
                dst: ip("::"),
                prefix: 0,
                gateway: Some(ip("fe80::1")),
                oif: 2,
                metric: 1024,
            },
        ];
        let mut neigh = HashMap::new();
        neigh.insert((2, ip("10.0.0.1")), [1; 6]);
        neigh.insert((2, ip("10.0.0.7")), [7; 6]);
        neigh.insert((3, ip("fd00:2::11")), [0x11; 6]);
        let links = vec![
            Link {
                ifindex: 2,
                name: "a".into(),
                mac: [0xa; 6],
                mtu: 1500,
            },
            Link {
                ifindex: 3,
                name: "b".into(),
                mac: [0xb; 6],
                mtu: 1500,
            },
        ];
        RouteTable::new(routes, neigh, links, vec!["10.0.0.2".parse().unwrap()])
    }

    #[test]
    fn longest_prefix_then_metric() {
        let t = table();
        assert_eq!(
            t.next_hop(ip("10.0.0.7")),
            NextHop::Ready(L2 {
                ifindex: 2,
                src_mac: [0xa; 6],
                dst_mac: [7; 6],
                mtu: 1500,
                src_ip: Addr::default(),
            })
        );
        // Default route: via the gateway's MAC.
        assert_eq!(
            t.next_hop(ip("192.0.2.1")),
            NextHop::Ready(L2 {
                ifindex: 2,
                src_mac: [0xa; 6],
                dst_mac: [1; 6],
                mtu: 1500,
                src_ip: Addr::default(),
            })
        );
        // Lower metric wins among equal prefixes; unresolved → a request.
        assert_eq!(
            t.next_hop(ip("10.1.2.3")),
            NextHop::Unresolved(NeighRequest {
                ifindex: 2,
                ip: ip("10.1.2.3")
            })
        );
        assert_eq!(t.next_hop(ip("10.0.0.2")), NextHop::None);
    }

    #[test]
    fn ipv6_routes_and_neighbours() {
        let t = table();
        assert_eq!(
            t.next_hop(ip("fd00:2::11")),
            NextHop::Ready(L2 {
                ifindex: 3,
                src_mac: [0xb; 6],
                dst_mac: [0x11; 6],
                mtu: 1500,
                src_ip: Addr::default(),
            })
        );
        // The IPv6 default route, via a link-local gateway to resolve.
        assert_eq!(
            t.next_hop(ip("2001:db8::1")),
            NextHop::Unresolved(NeighRequest {
                ifindex: 2,
                ip: ip("fe80::1")
            })
        );
        // It covers no IPv4 destination, and the IPv4 one no IPv6.
        let only6 = RouteTable::new(t.routes[4..].to_vec(), HashMap::new(), vec![], vec![]);
        assert_eq!(only6.next_hop(ip("192.0.2.1")), NextHop::None);
        let only4 = RouteTable::new(
            t.routes.iter().filter(|r| r.dst.is_v4()).copied().collect(),
            HashMap::new(),
            vec![],
            vec![],
        );
        assert_eq!(only4.next_hop(ip("2001:db8::1")), NextHop::None);
    }

    /// The longest-prefix match agrees with a scan of the sorted routes
    /// (the first that covers the address) over many routes and addresses.
    #[test]
    fn lpm_agrees_with_a_scan() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut routes = Vec::new();
        for i in 0..2000 {
            let v4 = i % 3 != 0;
            let (dst, prefix) = if v4 {
                let a = std::net::Ipv4Addr::from((next() as u32) & 0x0aff_ffff);
                (Addr::from(IpAddr::V4(a)), 96 + (next() % 33) as u8)
            } else {
                let a = std::net::Ipv6Addr::from(u128::from(next()) << 64);
                (Addr::from(IpAddr::V6(a)), (next() % 65) as u8)
            };
            let mask = prefix_mask(prefix);
            routes.push(Route {
                dst: Addr(
                    (u128::from_be_bytes(dst.0) & mask | if v4 { 0xffff << 32 } else { 0 })
                        .to_be_bytes(),
                ),
                prefix,
                gateway: None,
                oif: i,
                metric: (next() % 4) as u32,
            });
        }
        let t = RouteTable::new(routes, HashMap::new(), vec![], vec![]);
        for _ in 0..20_000 {
            let v4 = next() % 2 == 0;
            let ip = if v4 {
                Addr::from(IpAddr::V4(((next() as u32) & 0x0aff_ffff).into()))
            } else {
                Addr::from(IpAddr::V6(
                    (u128::from(next()) << 64 | u128::from(next())).into(),
                ))
            };
            let scan = t.routes.iter().find(|r| r.covers(ip));
            assert_eq!(t.route(ip), scan, "{ip:?}");
        }
    }
}
