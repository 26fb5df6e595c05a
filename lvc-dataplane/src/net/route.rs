//! Route: where a packet goes next, from the kernel's own tables.
//!
//! A dedicated thread mirrors the kernel's links, addresses, IPv4 and IPv6
//! main-table routes and neighbours over rtnetlink into an immutable
//! [`RouteTable`] that workers read through an `ArcSwap` (one load per
//! batch), so MAC addresses never appear in lvc's configuration and stay
//! current.
//!
//! # Keeping up with a full table
//!
//! The thread reads everything once at start-up, then applies the
//! kernel's change notifications one by one — RTM_NEWROUTE/DELROUTE,
//! NEWNEIGH/DELNEIGH, NEWADDR, NEWLINK — to its own copy ([`Model`]) and
//! publishes after each batch of notifications it drained (at most every
//! 50 ms). It falls back to re-reading everything (a *re-sync*) only when
//! its copy could be wrong: a notification it cannot decode, lost
//! notifications (ENOBUFS), a link going down or away or an address
//! removed (the kernel then drops IPv4 routes without telling), the
//! deletion of one path of a multipath route, and once a minute regardless.
//!
//! Publishing must not cost O(routes) with a million of them. The
//! longest-prefix match keeps one hash map per prefix length in use (a
//! lookup is a few hash probes, longest first), and each of these levels is
//! cut into shards of about [`SHARD_TARGET`] routes, each shard behind an
//! `Arc`, picked by a multiplicative hash of the masked destination. A
//! published table shares every shard with the thread's working copy; a
//! change copies the shard it touches (~4 096 routes, a memcpy) and the
//! level's array of shard pointers (~150 for the 600 000 /24s of an
//! internet table): ~15 µs with a million routes, against ~50 ms for a
//! rebuild; a publication copies only the levels' headers. Lookups pay
//! one more pointer hop per level probed than a single map per level
//! (measured: within 5–20 % of it with 1M routes, cache-cold). A
//! persistent trie (HAMT) would make updates cheaper still but lookups
//! several dependent loads longer; a DIR-24-8 array faster to look up
//! but 64 MiB+ for IPv4 alone and costly for short prefixes; an
//! open-addressing table of routes per shard (tried) was slower on
//! misses than hashbrown's control bytes, which stay in cache.
//! `lvc-bench routes` measures the table (README.md).
//!
//! blackhole, unreachable and prohibit routes are kept like unicast ones
//! and win or lose by prefix length and metric as in the kernel: a
//! destination whose longest match is one of them gets
//! [`NextHop::Reject`], never a shorter route.
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
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rt};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::collections::{HashMap, HashSet};
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

/// A route that refuses its packets, as the kernel's route types of the
/// same names (`ip route add blackhole|unreachable|prohibit PREFIX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// Dropped silently.
    Blackhole,
    /// Dropped with ICMP host unreachable (ICMPv6: no route).
    Unreachable,
    /// Dropped with ICMP communication administratively prohibited
    /// (ICMPv6: administratively prohibited).
    Prohibit,
}

/// Result of a next-hop lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    Ready(L2),
    /// Routed, but the next hop's MAC is not known yet.
    Unresolved(NeighRequest),
    /// The longest match is a blackhole, unreachable or prohibit route.
    Reject(RejectKind),
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
    /// The destination, masked to the prefix.
    pub dst: Addr,
    /// Prefix length over the 128-bit [`Addr`] (an IPv4 /24 is 120 here).
    pub prefix: u8,
    pub gateway: Option<Addr>,
    /// The egress link (0 for a reject route).
    pub oif: u32,
    pub metric: u32,
    /// `Some` for a blackhole, unreachable or prohibit route.
    pub reject: Option<RejectKind>,
}

impl Route {
    /// Whether the route's prefix holds `ip` (the tests' reference scan).
    pub fn covers(&self, ip: Addr) -> bool {
        let mask = prefix_mask(self.prefix);
        // (An IPv6 default route must not cover IPv4 destinations.)
        ip.is_v4() == self.dst.is_v4()
            && u128::from_be_bytes(ip.0) & mask == u128::from_be_bytes(self.dst.0) & mask
    }

    /// The route's masked destination, as the levels key it.
    fn key(&self) -> u128 {
        u128::from_be_bytes(self.dst.0) & prefix_mask(self.prefix)
    }
}

/// Routes per shard a level aims at: what one change copies (4096 × 64
/// bytes, ~10 µs; smaller shards made lookups slower: more shard headers
/// to miss in cache, and a bigger pointer array to copy per change).
pub const SHARD_TARGET: usize = 4096;
/// A level is cut anew once its shards hold 4× [`SHARD_TARGET`] on
/// average (amortised: the level doubled or more since it was cut).
const SHARD_MAX: usize = 4 * SHARD_TARGET;

type Shard = HashMap<u128, Route, ahash::RandomState>;

/// The shard of a masked destination: the top bits of a multiplicative
/// hash (every bit of the key moves them).
#[inline]
fn shard_of(key: u128, shard_mask: usize) -> usize {
    let h = (key as u64) ^ ((key >> 64) as u64);
    (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize & shard_mask
}

/// How many shards suit `len` routes (a power of two).
fn shards_for(len: usize) -> usize {
    (len / SHARD_TARGET).next_power_of_two().clamp(1, 1 << 16)
}

/// Routes of one family and prefix length, by their masked destination
/// (the lowest metric of each destination), in copy-on-write shards.
#[derive(Clone, Debug)]
struct Level {
    prefix: u8,
    mask: u128,
    /// The number of shards less one.
    shard_mask: usize,
    shards: Arc<[Arc<Shard>]>,
    len: usize,
}

impl Level {
    fn new(prefix: u8, expected: usize) -> Self {
        let n = shards_for(expected);
        Self {
            prefix,
            mask: prefix_mask(prefix),
            shard_mask: n - 1,
            shards: (0..n)
                .map(|_| Arc::new(Shard::with_hasher(ahash::RandomState::new())))
                .collect(),
            len: 0,
        }
    }

    #[inline]
    fn get(&self, key: u128) -> Option<&Route> {
        self.shards[shard_of(key, self.shard_mask)].get(&key)
    }

    /// The shard of `key`, made this copy's own (copied if shared).
    fn shard_mut(&mut self, key: u128) -> &mut Shard {
        let i = shard_of(key, self.shard_mask);
        if Arc::get_mut(&mut self.shards).is_none() {
            self.shards = self.shards.iter().cloned().collect();
        }
        let shards = Arc::get_mut(&mut self.shards).expect("just made unique");
        Arc::make_mut(&mut shards[i])
    }

    fn insert(&mut self, r: Route) -> Option<Route> {
        let key = r.key();
        let old = self.shard_mut(key).insert(key, r);
        if old.is_none() {
            self.len += 1;
            if self.len > (self.shard_mask + 1) * SHARD_MAX && self.shard_mask < (1 << 16) - 1 {
                self.reshard();
            }
        }
        old
    }

    fn remove(&mut self, key: u128) -> Option<Route> {
        self.get(key)?;
        let old = self.shard_mut(key).remove(&key);
        self.len -= 1;
        old
    }

    fn reshard(&mut self) {
        let mut fresh = Level::new(self.prefix, self.len * 2);
        for r in self.routes() {
            fresh.insert(*r);
        }
        *self = fresh;
    }

    fn routes(&self) -> impl Iterator<Item = &Route> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

/// Longest-prefix match: one hash lookup per prefix length in use (a
/// handful on a director; a few dozen with a full BGP table), instead of
/// a scan over every route.
#[derive(Clone, Debug, Default)]
struct Lpm {
    /// IPv4 and IPv6 levels, longest prefix first.
    v4: Vec<Level>,
    v6: Vec<Level>,
}

impl Lpm {
    #[inline]
    fn lookup(&self, ip: Addr) -> Option<&Route> {
        let levels = if ip.is_v4() { &self.v4 } else { &self.v6 };
        let bits = u128::from_be_bytes(ip.0);
        levels.iter().find_map(|l| l.get(bits & l.mask))
    }

    fn levels(&self, v4: bool) -> &Vec<Level> {
        if v4 { &self.v4 } else { &self.v6 }
    }

    /// The level of `prefix` (its position, or where it would go).
    fn level(&self, v4: bool, prefix: u8) -> Result<usize, usize> {
        // Longest first: a longer level sorts before.
        self.levels(v4).binary_search_by(|l| prefix.cmp(&l.prefix))
    }

    /// The route held for exactly `r`'s prefix.
    fn exact(&self, r: &Route) -> Option<&Route> {
        let v4 = r.dst.is_v4();
        let i = self.level(v4, r.prefix).ok()?;
        self.levels(v4)[i].get(r.key())
    }

    /// Puts `r` in its level, replacing the route of the same prefix;
    /// `expected` sizes a new level.
    fn insert(&mut self, r: Route, expected: usize) -> Option<Route> {
        let v4 = r.dst.is_v4();
        let i = match self.level(v4, r.prefix) {
            Ok(i) => i,
            Err(i) => {
                let levels = if v4 { &mut self.v4 } else { &mut self.v6 };
                levels.insert(i, Level::new(r.prefix, expected));
                i
            }
        };
        let levels = if v4 { &mut self.v4 } else { &mut self.v6 };
        levels[i].insert(r)
    }

    /// Takes out the route of exactly `r`'s prefix.
    fn remove(&mut self, r: &Route) -> Option<Route> {
        let v4 = r.dst.is_v4();
        let i = self.level(v4, r.prefix).ok()?;
        let levels = if v4 { &mut self.v4 } else { &mut self.v6 };
        let old = levels[i].remove(r.key());
        if levels[i].len == 0 {
            levels.remove(i);
        }
        old
    }

    /// Every route held (longest prefix first; in no order within one).
    #[cfg(test)]
    fn routes(&self) -> impl Iterator<Item = &Route> {
        self.v4.iter().chain(&self.v6).flat_map(Level::routes)
    }

    fn len(&self) -> usize {
        self.v4.iter().chain(&self.v6).map(|l| l.len).sum()
    }
}

/// The mask of a prefix length over the 128-bit [`Addr`].
fn prefix_mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// A snapshot of the kernel's tables, as the workers use it. Cloning it
/// is cheap (see the module's notes): every part is behind an `Arc`.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    lpm: Lpm,
    // (ahash: these are read per packet; SipHash showed in profiles.)
    neighbours: Arc<FastMap<(u32, Addr), [u8; 6]>>,
    links: Arc<FastMap<u32, Link>>,
    locals: Arc<[IpAddr]>,
    /// First address of each family of each interface: (ifindex, is IPv4).
    if_addrs: Arc<FastMap<(u32, bool), Addr>>,
}

impl RouteTable {
    pub fn new(
        routes: Vec<Route>,
        neighbours: HashMap<(u32, Addr), [u8; 6]>,
        links: Vec<Link>,
        locals: Vec<IpAddr>,
    ) -> Self {
        Self {
            lpm: build_lpm(routes).0,
            neighbours: Arc::new(neighbours.into_iter().collect()),
            links: Arc::new(links.into_iter().map(|l| (l.ifindex, l)).collect()),
            locals: locals.into(),
            if_addrs: Arc::default(),
        }
    }

    /// The same table with `addr` as the director's address on `ifindex`
    /// (for tests and tools; the route thread reads them from the kernel).
    pub fn with_if_addr(mut self, ifindex: u32, addr: Addr) -> Self {
        Arc::make_mut(&mut self.if_addrs).insert((ifindex, addr.is_v4()), addr);
        self
    }

    /// Where a packet to `dst` goes next.
    #[inline]
    pub fn next_hop(&self, dst: Addr) -> NextHop {
        match self.route(dst) {
            Some(Route {
                reject: Some(k), ..
            }) => NextHop::Reject(*k),
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
            Some(Route {
                reject: Some(k), ..
            }) => NextHop::Reject(*k),
            Some(r) if r.gateway.is_none() => self.via(r, dst),
            _ => NextHop::None,
        }
    }

    /// The longest-prefix route to `dst` (the lowest metric among equals).
    #[inline]
    pub fn route(&self, dst: Addr) -> Option<&Route> {
        self.lpm.lookup(dst)
    }

    /// The number of routes held (one per prefix: the lowest metric).
    pub fn route_count(&self) -> usize {
        self.lpm.len()
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

    /// The same table with `r` added (replacing the route of its prefix).
    #[cfg(test)]
    pub(crate) fn with_route(mut self, r: Route) -> Self {
        self.lpm.insert(r, 1);
        self
    }

    /// Every route held, sorted (tests compare tables with it).
    #[cfg(test)]
    fn sorted_routes(&self) -> Vec<Route> {
        let mut v: Vec<Route> = self.lpm.routes().copied().collect();
        v.sort_by_key(|r| (std::cmp::Reverse(r.prefix), r.dst, r.metric));
        v
    }
}

/// The best route of each prefix in an [`Lpm`], and the others (higher
/// metrics) by prefix.
fn build_lpm(mut routes: Vec<Route>) -> (Lpm, Extra) {
    routes.sort_by(|a, b| b.prefix.cmp(&a.prefix).then(a.metric.cmp(&b.metric)));
    let mut sizes: HashMap<(bool, u8), usize> = HashMap::new();
    for r in &routes {
        *sizes.entry((r.dst.is_v4(), r.prefix)).or_default() += 1;
    }
    let mut lpm = Lpm::default();
    let mut extra = Extra::default();
    for r in routes {
        if lpm.exact(&r).is_some() {
            extra.entry((r.prefix, r.key())).or_default().push(r);
        } else {
            lpm.insert(r, sizes[&(r.dst.is_v4(), r.prefix)]);
        }
    }
    (lpm, extra)
}

/// Routes that lose to another of the same prefix (a lower metric): kept
/// by the route thread, to take its place if it goes.
type Extra = HashMap<(u8, u128), Vec<Route>>;

/// What applying a notification did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// Nothing the workers see.
    Unchanged,
    /// The table changed: publish.
    Changed,
    /// The copy may be wrong: re-read everything.
    Resync,
}

impl Effect {
    fn max(self, other: Effect) -> Effect {
        use Effect::*;
        match (self, other) {
            (Resync, _) | (_, Resync) => Resync,
            (Changed, _) | (_, Changed) => Changed,
            _ => Unchanged,
        }
    }
}

/// A neighbour as a notification or a dump tells it: `mac` is `None` when
/// it is unusable (incomplete, failed) or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NeighEntry {
    ifindex: u32,
    ip: Addr,
    mac: Option<[u8; 6]>,
    stale: bool,
}

/// The route thread's copy of the kernel's state: the table it publishes
/// and what only updates need.
#[derive(Clone, Debug, Default)]
struct Model {
    table: RouteTable,
    extra: Extra,
    /// Multipath routes (prefix, key, metric): deleting one of their paths
    /// is not modelled (a re-sync).
    multipath: HashSet<(u8, u128, u32)>,
    /// Every address, in the kernel's order: (ifindex, address).
    addrs: Vec<(u32, IpAddr)>,
    /// Links known down.
    down: HashSet<u32>,
    /// Neighbours the kernel holds as STALE. lvc's own transmissions never
    /// confirm them (the kernel does not see them), so they are re-probed.
    stale: HashSet<NeighRequest>,
}

impl Model {
    fn build(
        links: Vec<(Link, bool)>,
        addrs: Vec<(u32, IpAddr)>,
        routes: Vec<(Route, bool)>,
        neighbours: Vec<NeighEntry>,
    ) -> Self {
        let multipath = routes
            .iter()
            .filter(|(_, mp)| *mp)
            .map(|(r, _)| (r.prefix, r.key(), r.metric))
            .collect();
        let (lpm, extra) = build_lpm(routes.into_iter().map(|(r, _)| r).collect());
        let mut m = Model {
            table: RouteTable {
                lpm,
                ..RouteTable::default()
            },
            extra,
            multipath,
            down: links
                .iter()
                .filter(|(_, up)| !up)
                .map(|(l, _)| l.ifindex)
                .collect(),
            ..Model::default()
        };
        m.table.links = Arc::new(links.into_iter().map(|(l, _)| (l.ifindex, l)).collect());
        let mut neigh = FastMap::default();
        for n in neighbours {
            if let Some(mac) = n.mac {
                neigh.insert((n.ifindex, n.ip), mac);
                if n.stale {
                    m.stale.insert(NeighRequest {
                        ifindex: n.ifindex,
                        ip: n.ip,
                    });
                }
            }
        }
        m.table.neighbours = Arc::new(neigh);
        m.addrs = addrs;
        m.derive_addrs();
        m
    }

    /// The table's locals and interface addresses from `addrs`.
    fn derive_addrs(&mut self) -> Effect {
        let locals: Vec<IpAddr> = self.addrs.iter().map(|&(_, ip)| ip).collect();
        let mut if_addrs = FastMap::default();
        for &(ifindex, ip) in &self.addrs {
            // Link-local IPv6 addresses cannot source routed packets.
            let usable = match ip {
                IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                IpAddr::V4(_) => true,
            };
            if usable {
                let addr = Addr::from(ip);
                if_addrs.entry((ifindex, addr.is_v4())).or_insert(addr);
            }
        }
        if *self.table.locals == *locals && *self.table.if_addrs == if_addrs {
            return Effect::Unchanged;
        }
        self.table.locals = locals.into();
        self.table.if_addrs = Arc::new(if_addrs);
        Effect::Changed
    }

    /// Applies one notification.
    fn apply(&mut self, m: &Rt) -> Effect {
        match m {
            Rt::NewRoute(r) => match parse_route(r) {
                Some((route, mp)) => self.route(route, mp, true),
                None => Effect::Unchanged,
            },
            Rt::DelRoute(r) => match parse_route(r) {
                Some((route, mp)) => self.route(route, mp, false),
                None => Effect::Unchanged,
            },
            Rt::NewNeighbour(n) => match parse_neigh(n) {
                Some(e) => self.neighbour(e),
                None => Effect::Unchanged,
            },
            Rt::DelNeighbour(n) => match parse_neigh(n) {
                Some(e) => self.neighbour(NeighEntry {
                    mac: None,
                    stale: false,
                    ..e
                }),
                None => Effect::Unchanged,
            },
            Rt::NewLink(l) => {
                let link = parse_link(l);
                let up = l.header.flags.contains(LinkFlags::Up);
                let ifindex = link.ifindex;
                let mut effect = Effect::Unchanged;
                if self.table.links.get(&ifindex) != Some(&link) {
                    Arc::make_mut(&mut self.table.links).insert(ifindex, link);
                    effect = Effect::Changed;
                }
                if up {
                    self.down.remove(&ifindex);
                } else if self.down.insert(ifindex) {
                    // Going down: the kernel drops its IPv4 routes
                    // without a word.
                    effect = Effect::Resync;
                }
                effect
            }
            Rt::DelLink(_) => Effect::Resync,
            Rt::NewAddress(a) => match parse_addr(a) {
                Some(ip) if !self.addrs.contains(&(a.header.index, ip)) => {
                    self.addrs.push((a.header.index, ip));
                    self.derive_addrs()
                }
                _ => Effect::Unchanged,
            },
            // Routes through it may go without notifications.
            Rt::DelAddress(_) => Effect::Resync,
            _ => Effect::Unchanged,
        }
    }

    /// A route added (replacing the one of the same prefix and metric) or
    /// deleted.
    fn route(&mut self, r: Route, multipath: bool, add: bool) -> Effect {
        let key = (r.prefix, r.key());
        let before = self.table.lpm.exact(&r).copied();
        let mut all: Vec<Route> = before
            .into_iter()
            .chain(self.extra.remove(&key).unwrap_or_default())
            .collect();
        let mut effect = Effect::Unchanged;
        let id = (r.prefix, r.key(), r.metric);
        match all.iter().position(|c| c.metric == r.metric) {
            Some(i) if add => all[i] = r,
            Some(i) => {
                let gone = all.remove(i);
                // One path of several, or not the one held: the kernel
                // may still have the route.
                if self.multipath.contains(&id)
                    || (gone.oif, gone.gateway, gone.reject) != (r.oif, r.gateway, r.reject)
                {
                    effect = Effect::Resync;
                }
            }
            None if add => all.push(r),
            None => {}
        }
        if add && multipath {
            self.multipath.insert(id);
        } else {
            self.multipath.remove(&id);
        }
        all.sort_by_key(|c| c.metric);
        let after = all.first().copied();
        if after != before {
            match after {
                Some(best) => {
                    self.table.lpm.insert(best, 1);
                }
                None => {
                    self.table.lpm.remove(&r);
                }
            }
            effect = effect.max(Effect::Changed);
        }
        if all.len() > 1 {
            self.extra.insert(key, all.split_off(1));
        }
        effect
    }

    fn neighbour(&mut self, n: NeighEntry) -> Effect {
        let req = NeighRequest {
            ifindex: n.ifindex,
            ip: n.ip,
        };
        if n.stale {
            self.stale.insert(req);
        } else {
            self.stale.remove(&req);
        }
        let k = (n.ifindex, n.ip);
        if self.table.neighbours.get(&k).copied() == n.mac {
            return Effect::Unchanged;
        }
        let neighbours = Arc::make_mut(&mut self.table.neighbours);
        match n.mac {
            Some(mac) => neighbours.insert(k, mac),
            None => neighbours.remove(&k),
        };
        Effect::Changed
    }
}

/// A synchronous rtnetlink socket.
pub(crate) struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Notifications read from the events socket.
#[derive(Debug, Default)]
struct Events {
    msgs: Vec<Rt>,
    /// One of interest could not be decoded, or some were lost: re-sync.
    lost: bool,
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

    /// One datagram, split into messages (undecodable ones as `Err`).
    fn recv_batch(
        &mut self,
        flags: i32,
    ) -> io::Result<Vec<Result<NetlinkMessage<Rt>, Undecodable>>> {
        self.buf.clear();
        let n = self.sock.recv(&mut self.buf, flags)?;
        Ok(split_datagram(&self.buf[..n]))
    }

    /// Reads every pending notification (without waiting).
    fn drain_events(&mut self, max: usize) -> Events {
        let mut ev = Events::default();
        while ev.msgs.len() < max {
            match self.recv_batch(libc::MSG_DONTWAIT) {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => {
                    for m in batch {
                        match m {
                            Ok(m) => {
                                if let NetlinkPayload::InnerMessage(inner) = m.payload {
                                    ev.msgs.push(inner);
                                }
                            }
                            Err(kind) => ev.lost |= of_interest(kind),
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ENOBUFS: notifications were lost; a re-read covers them.
                Err(_) => {
                    ev.lost = true;
                    break;
                }
            }
        }
        ev
    }

    /// Sends a request, hands each reply to `each` until DONE or ACK.
    fn request_each(&mut self, msg: Rt, flags: u16, each: &mut dyn FnMut(Rt)) -> io::Result<()> {
        let seq = self.send(msg, flags)?;
        loop {
            for m in self.recv_batch(0)? {
                // (Replies this crate cannot decode are skipped, as before.)
                let Ok(m) = m else { continue };
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
                    NetlinkPayload::InnerMessage(inner) => each(inner),
                    NetlinkPayload::Done(d) if d.code < 0 => {
                        return Err(io::Error::from_raw_os_error(-d.code));
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(()),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    _ => {}
                }
            }
        }
    }

    fn request(&mut self, msg: Rt, flags: u16) -> io::Result<Vec<Rt>> {
        let mut res = Vec::new();
        self.request_each(msg, flags, &mut |m| res.push(m))?;
        Ok(res)
    }

    /// Dumps, keeping what `keep` makes of each reply (a dump of a million
    /// routes is never held as messages).
    fn dump<T>(&mut self, msg: Rt, mut keep: impl FnMut(Rt) -> Option<T>) -> io::Result<Vec<T>> {
        // A dump interrupted by a concurrent change is simply retried.
        let mut tries = 0;
        loop {
            let mut out = Vec::new();
            match self.request_each(msg.clone(), NLM_F_DUMP, &mut |m| out.extend(keep(m))) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted && tries < 5 => tries += 1,
                r => return r.map(|()| out),
            }
        }
    }

    /// Reads all four tables.
    fn snapshot(&mut self) -> io::Result<Model> {
        let links = self.dump(Rt::GetLink(LinkMessage::default()), |m| match m {
            Rt::NewLink(l) => Some((parse_link(&l), l.header.flags.contains(LinkFlags::Up))),
            _ => None,
        })?;
        let addrs = self.dump(Rt::GetAddress(AddressMessage::default()), |m| match m {
            Rt::NewAddress(a) => parse_addr(&a).map(|ip| (a.header.index, ip)),
            _ => None,
        })?;
        let mut routes = Vec::new();
        let mut neighbours = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut rm = RouteMessage::default();
            rm.header.address_family = family;
            routes.extend(self.dump(Rt::GetRoute(rm), |m| match m {
                Rt::NewRoute(r) => parse_route(&r),
                _ => None,
            })?);
            let mut nm = NeighbourMessage::default();
            nm.header.family = family;
            neighbours.extend(self.dump(Rt::GetNeighbour(nm), |m| match m {
                Rt::NewNeighbour(n) => parse_neigh(&n),
                _ => None,
            })?);
        }
        Ok(Model::build(links, addrs, routes, neighbours))
    }

    /// The index of link `name`.
    pub(crate) fn link_index(&mut self, name: &str) -> io::Result<u32> {
        self.dump(Rt::GetLink(LinkMessage::default()), |m| match m {
            Rt::NewLink(l) => (parse_link(&l).name == name).then_some(l.header.index),
            _ => None,
        })?
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link `{name}`")))
    }

    /// Sets link `ifindex` up.
    pub(crate) fn link_up(&mut self, ifindex: u32) -> io::Result<()> {
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

/// Message types of rtnetlink this module follows.
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
/// `rtm_table` of a route in a table numbered above 255 (the number is
/// then in an attribute).
const RT_TABLE_COMPAT: u8 = 252;

/// A message this crate version could not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Undecodable {
    kind: u16,
    /// A route message's `rtm_table`.
    table: Option<u8>,
}

/// Splits a datagram into messages.
fn split_datagram(buf: &[u8]) -> Vec<Result<NetlinkMessage<Rt>, Undecodable>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let msg = &buf[off..off + len];
        out.push(
            NetlinkMessage::<Rt>::deserialize(msg).map_err(|_| Undecodable {
                kind: u16::from_ne_bytes([msg[4], msg[5]]),
                table: msg.get(16 + 4).copied(),
            }),
        );
        off += (len + 3) & !3;
    }
    out
}

/// Whether an undecodable notification could have changed the table.
fn of_interest(u: Undecodable) -> bool {
    match u.kind {
        RTM_NEWLINK | RTM_DELLINK | RTM_NEWADDR | RTM_DELADDR | RTM_NEWNEIGH | RTM_DELNEIGH => true,
        RTM_NEWROUTE | RTM_DELROUTE => {
            matches!(u.table, Some(t) if t == RouteHeader::RT_TABLE_MAIN || t == RT_TABLE_COMPAT)
        }
        _ => false,
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

/// Unicast, blackhole, unreachable and prohibit IPv4 and IPv6 routes of
/// the main table, and whether the route is multipath (it contributes its
/// first next hop).
fn parse_route(r: &RouteMessage) -> Option<(Route, bool)> {
    let h = &r.header;
    let v4 = match h.address_family {
        AddressFamily::Inet => true,
        AddressFamily::Inet6 => false,
        _ => return None,
    };
    let reject = match h.kind {
        RouteType::Unicast => None,
        RouteType::BlackHole => Some(RejectKind::Blackhole),
        RouteType::Unreachable => Some(RejectKind::Unreachable),
        RouteType::Prohibit => Some(RejectKind::Prohibit),
        _ => return None,
    };
    let mut table = u32::from(h.table);
    let mut multipath = false;
    let mut route = Route {
        // A default route has no destination attribute.
        dst: if v4 { Addr::v4(0) } else { Addr::default() },
        prefix: h.destination_prefix_length + if v4 { 96 } else { 0 },
        gateway: None,
        oif: 0,
        metric: 0,
        reject,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => route.dst = addr(d)?,
            RouteAttribute::Gateway(g) => route.gateway = addr(g),
            RouteAttribute::Oif(i) => route.oif = *i,
            RouteAttribute::Priority(p) => route.metric = *p,
            RouteAttribute::MultiPath(hops) => {
                multipath = true;
                if route.oif == 0
                    && let Some(nh) = hops.first()
                {
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
    // (An IPv6 route to mapped addresses would pass for IPv4: not kept.)
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || route.dst.is_v4() != v4
        || route.prefix > 128
        || (reject.is_none() && route.oif == 0)
    {
        return None;
    }
    if reject.is_some() {
        // (IPv6 reject routes name `lo`; they send nowhere.)
        route.oif = 0;
        route.gateway = None;
    }
    route.dst = Addr(route.key().to_be_bytes());
    Some((route, multipath))
}

/// A neighbour of IPv4 or IPv6 (usable: in a state with a MAC).
fn parse_neigh(n: &NeighbourMessage) -> Option<NeighEntry> {
    use NeighbourState as S;
    let usable = matches!(
        n.header.state,
        S::Reachable | S::Stale | S::Delay | S::Probe | S::Permanent
    );
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
    Some(NeighEntry {
        ifindex: n.header.ifindex,
        ip: ip?,
        mac: mac.filter(|_| usable),
        stale: usable && n.header.state == S::Stale,
    })
}

/// The route thread's model, for benchmarks and tools: the table of
/// `routes` kept current by single changes as notifications make them.
#[derive(Clone, Debug, Default)]
pub struct RouteMirror(Model);

impl RouteMirror {
    pub fn new(routes: Vec<Route>, links: Vec<Link>) -> Self {
        Self(Model::build(
            links.into_iter().map(|l| (l, true)).collect(),
            Vec::new(),
            routes.into_iter().map(|r| (r, false)).collect(),
            Vec::new(),
        ))
    }

    /// Adds `r` (replacing the route of the same prefix and metric), as
    /// RTM_NEWROUTE does; whether the table changed.
    pub fn add_route(&mut self, r: Route) -> bool {
        self.0.route(r, false, true) != Effect::Unchanged
    }

    /// Deletes `r`, as RTM_DELROUTE does; whether the table changed.
    pub fn del_route(&mut self, r: Route) -> bool {
        self.0.route(r, false, false) != Effect::Unchanged
    }

    /// Sets a neighbour's MAC (`None`: unusable or gone).
    pub fn set_neighbour(&mut self, ifindex: u32, ip: Addr, mac: Option<[u8; 6]>) -> bool {
        self.0.neighbour(NeighEntry {
            ifindex,
            ip,
            mac,
            stale: false,
        }) != Effect::Unchanged
    }

    /// The table as the workers would get it (a cheap copy).
    pub fn table(&self) -> RouteTable {
        self.0.table.clone()
    }
}

/// The netlink side of [`RouteTable`]: reads the initial snapshot, then
/// keeps it current on a thread of its own.
pub struct RouteMonitor {
    pub table: Arc<ArcSwap<RouteTable>>,
}

/// How often the tables are re-read even without notifications (a
/// fallback: notifications keep the table current; a re-read of a full
/// internet table costs seconds of this thread).
const REFRESH: Duration = Duration::from_secs(60);
/// How often STALE neighbours are re-probed.
const REPROBE: Duration = Duration::from_secs(30);
/// How long a resolution request suppresses repeats for the same neighbour.
const RESOLVE_HOLDOFF: Duration = Duration::from_millis(500);
/// Notifications applied before a publication at the most (a flood is
/// published in steps, not held back until it ends).
const BATCH: usize = 65_536;

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
        // A burst of route changes must not overflow the socket: as root,
        // past net.core.rmem_max.
        if crate::io::sys::force_rcvbuf(&events.sock, 32 << 20).is_err() {
            let _ = events.sock.set_rx_buf_sz(4 << 20);
        }
        let mut nl = Netlink::new()?;
        let model = nl.snapshot()?;
        let table = Arc::new(ArcSwap::from_pointee(model.table.clone()));
        Ok((
            Self {
                table: table.clone(),
            },
            RouteSync {
                nl,
                events,
                table,
                model,
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
    model: Model,
    recent: HashMap<NeighRequest, Instant>,
    last_log: Option<Instant>,
    failures: u64,
}

impl RouteSync {
    /// Runs until `shutdown`.
    pub fn run(mut self, requests: Receiver<NeighRequest>, shutdown: Arc<AtomicBool>) {
        let mut last_refresh = Instant::now();
        let mut last_reprobe = Instant::now();
        let mut resync = false;
        let (mut applied, mut resyncs) = (0u64, 0u64);
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
            let ev = self.events.drain_events(BATCH);
            resync |= ev.lost;
            let mut changed = false;
            if !resync {
                for m in &ev.msgs {
                    match self.model.apply(m) {
                        Effect::Unchanged => {}
                        Effect::Changed => changed = true,
                        Effect::Resync => {
                            resync = true;
                            break;
                        }
                    }
                }
                applied += ev.msgs.len() as u64;
            }
            if last_reprobe.elapsed() >= REPROBE {
                // A real server's MAC may change without a gratuitous ARP:
                // have the kernel re-confirm what went stale.
                last_reprobe = Instant::now();
                let stale: Vec<_> = self.model.stale.iter().copied().collect();
                for req in stale {
                    self.resolve(req);
                }
            }
            if resync || last_refresh.elapsed() >= REFRESH {
                let t = Instant::now();
                match self.nl.snapshot() {
                    Ok(m) => {
                        self.model = m;
                        self.table.store(Arc::new(self.model.table.clone()));
                        resyncs += 1;
                        tracing::debug!(
                            routes = self.model.table.route_count(),
                            ms = t.elapsed().as_millis() as u64,
                            forced = resync,
                            applied,
                            resyncs,
                            "routes and neighbours re-read"
                        );
                        resync = false;
                        last_refresh = Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "re-reading routes and neighbours failed; retrying")
                    }
                }
            } else if changed {
                self.table.store(Arc::new(self.model.table.clone()));
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
mod tests;
