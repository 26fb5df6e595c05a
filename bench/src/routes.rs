//! The route table with a full internet table: memory, build time, lookup
//! time (hits and misses, cache-cold) and what one incremental change
//! costs with a million routes present (`lvc-bench routes`), in this
//! process (the resident size measured is the table's alone).
//!
//! The prefixes follow the shape of today's IPv4 default-free zone
//! (about 60 % /24, 20 % /22–/23, the rest /8–/21) and, optionally, the
//! IPv6 one (mostly /48, then /32–/44), at random addresses of the
//! unicast space; next hops are two gateways on two links, resolved.
//! Misses are addresses no route covers (240.0.0.0/4, 3fff::/16): each
//! probes every level, the worst case.

use arc_swap::ArcSwap;
use lvc_dataplane::addr::Addr;
use lvc_dataplane::net::route::{Link, NextHop, Route, RouteMirror};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoutesResult {
    /// IPv4 and IPv6 routes in the table (distinct prefixes).
    pub routes_v4: usize,
    pub routes_v6: usize,
    /// Resident memory growth while building, divided by routes.
    pub bytes_per_route: f64,
    /// Resident memory of the table, MiB.
    pub table_mib: f64,
    /// Building the table from a full dump (what a re-sync costs beyond
    /// reading netlink), seconds.
    pub build_s: f64,
    /// `next_hop` of an address some route covers (random routes, random
    /// hosts; neighbour lookup included), ns.
    pub hit_ns: f64,
    /// `next_hop` of an address no route covers, ns.
    pub miss_ns: f64,
    /// One route added, then the table published (`ArcSwap::store`, the
    /// previous table dropped), µs, mean and worst.
    pub add_publish_us: f64,
    pub add_publish_max_us: f64,
    /// One route deleted, then published, µs.
    pub del_publish_us: f64,
    /// A neighbour's MAC changed, then published, µs.
    pub neigh_publish_us: f64,
    /// 10 000 changes applied, then one publication, µs per change.
    pub batched_us: f64,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// An index by cumulative weights (percent).
    fn pick(&mut self, weights: &[(u8, u32)]) -> u8 {
        let total: u32 = weights.iter().map(|w| w.1).sum();
        let mut x = (self.next() % u64::from(total)) as u32;
        for &(v, w) in weights {
            if x < w {
                return v;
            }
            x -= w;
        }
        weights[0].0
    }
}

/// IPv4 prefix lengths of a default-free table, per mille.
const V4_SHAPE: &[(u8, u32)] = &[
    (24, 600),
    (23, 90),
    (22, 110),
    (21, 45),
    (20, 45),
    (19, 30),
    (18, 18),
    (17, 14),
    (16, 28),
    (15, 6),
    (14, 6),
    (13, 4),
    (12, 2),
    (11, 1),
    (10, 1),
    (9, 1),
    (8, 1),
];

/// IPv6 prefix lengths, per mille.
const V6_SHAPE: &[(u8, u32)] = &[
    (48, 520),
    (47, 20),
    (46, 40),
    (44, 90),
    (40, 60),
    (36, 40),
    (32, 160),
    (29, 40),
    (28, 20),
    (24, 10),
];

const GW: [[u8; 4]; 2] = [[192, 0, 2, 1], [198, 51, 100, 1]];

fn v4_route(rng: &mut Rng) -> Route {
    let len = rng.pick(V4_SHAPE);
    // 1.0.0.0 – 223.255.255.255 (never 240/4, where the misses are).
    let a = (1 + (rng.next() % 223) as u32) << 24 | (rng.next() as u32 & 0x00ff_ffff);
    let mask = u32::MAX << (32 - u32::from(len));
    let hop = (rng.next() % 2) as usize;
    Route {
        dst: Addr::v4(a & mask),
        prefix: 96 + len,
        gateway: Some(Addr::v4_bytes(GW[hop])),
        oif: 2 + hop as u32,
        metric: 0,
        reject: None,
    }
}

fn v6_route(rng: &mut Rng) -> Route {
    let len = rng.pick(V6_SHAPE);
    // 2000::/4 less 3fff::/16 (the misses).
    let hi = 0x2000u128 + u128::from(rng.next() % 0x1fff);
    let a = hi << 112 | (u128::from(rng.next()) << 48);
    let mask = u128::MAX << (128 - u32::from(len));
    let hop = (rng.next() % 2) as usize;
    Route {
        dst: Addr((a & mask).to_be_bytes()),
        prefix: len,
        gateway: Some(Addr::v4_bytes(GW[hop])),
        oif: 2 + hop as u32,
        metric: 0,
        reject: None,
    }
}

/// `n` distinct routes made by `make`.
fn distinct(n: usize, rng: &mut Rng, make: fn(&mut Rng) -> Route) -> Vec<Route> {
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = make(rng);
        if seen.insert((r.dst, r.prefix)) {
            out.push(r);
        }
    }
    out
}

/// An address inside `r`.
fn inside(r: &Route, rng: &mut Rng) -> Addr {
    let host = !u128::MAX
        .checked_shl(128 - u32::from(r.prefix))
        .unwrap_or(0);
    Addr((u128::from_be_bytes(r.dst.0) | (u128::from(rng.next()) & host)).to_be_bytes())
}

/// Mean ns of `next_hop` over `addrs`, checking every answer.
fn time_lookups(t: &lvc_dataplane::net::route::RouteTable, addrs: &[Addr], hit: bool) -> f64 {
    let start = Instant::now();
    let mut found = 0usize;
    for a in addrs {
        found += !matches!(t.next_hop(black_box(*a)), NextHop::None) as usize;
    }
    let ns = start.elapsed().as_secs_f64() * 1e9 / addrs.len() as f64;
    assert_eq!(found, if hit { addrs.len() } else { 0 }, "hit={hit}");
    ns
}

/// Builds `v4` IPv4 and `v6` IPv6 routes and measures them.
pub fn measure(v4: usize, v6: usize) -> RoutesResult {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut routes = distinct(v4, &mut rng, v4_route);
    routes.extend(distinct(v6, &mut rng, v6_route));
    let links: Vec<Link> = (2..4)
        .map(|i| Link {
            ifindex: i,
            name: format!("eth{i}"),
            mac: [i as u8; 6],
            mtu: 1500,
        })
        .collect();
    let lookups = 2_000_000usize;
    let hits: Vec<Addr> = (0..lookups)
        .map(|_| {
            let r = &routes[(rng.next() % routes.len() as u64) as usize];
            inside(r, &mut rng)
        })
        .collect();
    let misses: Vec<Addr> = (0..lookups)
        .map(|i| {
            if v6 > 0 && i % 2 == 1 {
                Addr(((0x3fffu128 << 112) | u128::from(rng.next())).to_be_bytes())
            } else {
                Addr::v4(0xf000_0000 | (rng.next() as u32 & 0x0fff_ffff))
            }
        })
        .collect();

    let before = rss_bytes();
    let start = Instant::now();
    let mut mirror = RouteMirror::new(routes.clone(), links);
    for (i, gw) in GW.iter().enumerate() {
        mirror.set_neighbour(2 + i as u32, Addr::v4_bytes(*gw), Some([0xee; 6]));
    }
    let build_s = start.elapsed().as_secs_f64();
    let table_bytes = rss_bytes().saturating_sub(before);
    let shared = Arc::new(ArcSwap::from_pointee(mirror.table()));

    let t = shared.load_full();
    let _ = time_lookups(&t, &hits[..lookups / 10], true); // warm-up
    let hit_ns = time_lookups(&t, &hits, true);
    let miss_ns = time_lookups(&t, &misses, false);
    drop(t);

    // Single changes, each published at once: the worst case (the route
    // thread publishes once per batch of notifications it drained).
    let rounds = 2000;
    let present: HashSet<(Addr, u8)> = routes.iter().map(|r| (r.dst, r.prefix)).collect();
    let mut fresh = Vec::with_capacity(rounds);
    let mut seen = HashSet::new();
    while fresh.len() < rounds {
        let mut r = v4_route(&mut rng);
        r.prefix = 96 + 24;
        r.dst = Addr::v4(u32::from_be_bytes(r.dst.0[12..].try_into().expect("4")) & !0xff);
        if !present.contains(&(r.dst, r.prefix)) && seen.insert(r.dst) {
            fresh.push(r);
        }
    }
    let mut worst = 0f64;
    let start = Instant::now();
    for r in &fresh {
        let one = Instant::now();
        mirror.add_route(*r);
        shared.store(Arc::new(mirror.table()));
        worst = worst.max(one.elapsed().as_secs_f64());
    }
    let add_publish_us = start.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    let start = Instant::now();
    for r in &fresh {
        mirror.del_route(*r);
        shared.store(Arc::new(mirror.table()));
    }
    let del_publish_us = start.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    let start = Instant::now();
    for i in 0..rounds {
        mirror.set_neighbour(2, Addr::v4_bytes(GW[0]), Some([i as u8; 6]));
        shared.store(Arc::new(mirror.table()));
    }
    let neigh_publish_us = start.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    let batch = 10_000;
    let start = Instant::now();
    for _ in 0..batch {
        let r = &routes[(rng.next() % routes.len() as u64) as usize];
        // A replacement: same prefix and metric, the other next hop.
        let other = if r.oif == 2 { 1 } else { 0 };
        mirror.add_route(Route {
            oif: 2 + other as u32,
            gateway: Some(Addr::v4_bytes(GW[other])),
            ..*r
        });
    }
    shared.store(Arc::new(mirror.table()));
    let batched_us = start.elapsed().as_secs_f64() * 1e6 / batch as f64;
    assert_eq!(shared.load().route_count(), routes.len());

    RoutesResult {
        routes_v4: v4,
        routes_v6: v6,
        bytes_per_route: table_bytes as f64 / routes.len() as f64,
        table_mib: table_bytes as f64 / (1 << 20) as f64,
        build_s,
        hit_ns,
        miss_ns,
        add_publish_us,
        add_publish_max_us: worst * 1e6,
        del_publish_us,
        neigh_publish_us,
        batched_us,
    }
}
