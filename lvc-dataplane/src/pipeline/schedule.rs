//! Schedule: pick a real server for a new connection.
//!
//! Everything expensive (wrr sequences, source-hash and Maglev tables) is
//! built by the control thread when a configuration is published
//! ([`SchedState::build`]); a worker's [`pick`] is a lookup, an atomic
//! increment, or one pass over the servers' connection gauges.
//! Weight 0 means quiescent everywhere: no new connections.

use crate::addr::Addr;
use crate::stats::TrafficStats;
use lvc_proto::{ConnLimits, Method, Scheduler};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// A real server as the workers see it.
#[derive(Debug)]
pub struct Server {
    pub addr: Addr,
    /// Its service's VIP (the address of its connections' VIP).
    pub vip: Addr,
    pub port: u16,
    pub weight: u32,
    pub method: Method,
    pub stats: Arc<TrafficStats>,
    /// Its service's counters (a connection counts for both).
    pub service: Arc<TrafficStats>,
    /// Its health (kept across configuration changes): a down server is
    /// published with weight 0; one that failed with `--on-fail remove`
    /// loses its connections too.
    pub health: Arc<crate::health::Health>,
    /// Connection thresholds (ipvsadm -x/-y).
    pub limits: ConnLimits,
    /// The PROXY protocol header its connections start with.
    pub proxy: lvc_proto::ProxyProtocol,
    /// Its service's client class ([`lvc_proto::Clients::tag`], 0: none).
    pub class: u64,
}

impl Server {
    /// Whether it takes a new connection: a weight above 0 and, with an
    /// upper threshold, not overloaded. A server reaching the threshold
    /// is overloaded until its connections fall under the lower one
    /// (IPVS's hysteresis; the flag is shared by all workers).
    #[inline]
    pub fn admits(&self) -> bool {
        if self.weight == 0 {
            return false;
        }
        if self.limits.max == 0 {
            return true;
        }
        let total = self.stats.active() + self.stats.inactive();
        let flag = &self.stats.overloaded;
        if flag.load(Relaxed) {
            if total < self.limits.resume_below() {
                flag.store(false, Relaxed);
                return true;
            }
            false
        } else if total >= u64::from(self.limits.max) {
            flag.store(true, Relaxed);
            false
        } else {
            true
        }
    }
}

/// Maglev lookup table size (a prime, as in Katran).
pub const MAGLEV_SIZE: usize = 65537;
/// Source-hash table size.
const SH_SIZE: usize = 4096;
/// Longest wrr cycle kept; larger weight sums are scaled down to this.
const WRR_MAX_CYCLE: u64 = 1 << 16;

/// A service's scheduler with its precomputed tables.
#[derive(Debug)]
pub struct SchedState {
    pub kind: Scheduler,
    /// rr/wrr position, shared by all workers and kept across
    /// configuration changes.
    cursor: Arc<AtomicUsize>,
    /// wrr: the smooth cycle; sh/mh: bucket → server. Server indexes.
    table: Vec<u16>,
}

impl SchedState {
    /// Builds the scheduler for `servers` (in configuration order).
    pub fn build(kind: Scheduler, servers: &[Arc<Server>], cursor: Arc<AtomicUsize>) -> Self {
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        let table = match kind {
            Scheduler::Wrr => smooth_wrr_cycle(&weights),
            Scheduler::Sh => source_hash_table(&weights),
            Scheduler::Mh => {
                let ids: Vec<String> = servers
                    .iter()
                    .map(|s| format!("{}:{}", s.addr, s.port))
                    .collect();
                maglev_table(&ids, &weights, MAGLEV_SIZE)
            }
            _ => Vec::new(),
        };
        Self {
            kind,
            cursor,
            table,
        }
    }
}

/// Chooses the real server for a new connection from `client` among a
/// service's `servers` (scheduled by `st`, built for them), or `None` if
/// no server takes new connections.
#[inline]
pub fn pick<'a>(
    st: &SchedState,
    servers: &'a [Arc<Server>],
    client: Addr,
) -> Option<&'a Arc<Server>> {
    match st.kind {
        Scheduler::Rr => {
            let n = servers.len();
            if n == 0 {
                return None;
            }
            let start = st.cursor.fetch_add(1, Relaxed);
            next_admitted(servers, start)
        }
        Scheduler::Wrr => {
            if st.table.is_empty() {
                return None;
            }
            let i = st.cursor.fetch_add(1, Relaxed) % st.table.len();
            or_next(servers, usize::from(st.table[i]))
        }
        Scheduler::Sh | Scheduler::Mh => {
            if st.table.is_empty() {
                return None;
            }
            let b = (mix_addr(client) % st.table.len() as u64) as usize;
            or_next(servers, usize::from(st.table[b]))
        }
        Scheduler::Lc => least(servers, |s| (overhead(s), 1)),
        Scheduler::Wlc => least(servers, |s| (overhead(s), u64::from(s.weight))),
        Scheduler::Sed => least(servers, |s| (s.stats.active() + 1, u64::from(s.weight))),
        Scheduler::Nq => servers
            .iter()
            .find(|s| s.stats.active() == 0 && s.admits())
            .or_else(|| least(servers, |s| (s.stats.active() + 1, u64::from(s.weight)))),
    }
}

/// The first server from index `start` on (round the list) that admits a
/// new connection.
#[inline]
fn next_admitted(servers: &[Arc<Server>], start: usize) -> Option<&Arc<Server>> {
    let n = servers.len();
    (0..n)
        .map(|i| &servers[start.wrapping_add(i) % n])
        .find(|s| s.admits())
}

/// Server `i` of a table scheduler, or, when it is at its connection
/// threshold, the next one that admits connections (IPVS's sh/mh
/// fallback; wrr skips overloaded servers too). Table schedulers only hold
/// servers of weight > 0, so without thresholds this is server `i`.
#[inline]
fn or_next(servers: &[Arc<Server>], i: usize) -> Option<&Arc<Server>> {
    let s = servers.get(i)?;
    if s.limits.max == 0 || s.admits() {
        Some(s)
    } else {
        next_admitted(servers, i + 1)
    }
}

/// IPVS's connection overhead: active connections weigh 256 times more.
#[inline]
fn overhead(s: &Server) -> u64 {
    s.stats.active() * 256 + s.stats.inactive()
}

/// The server with weight > 0 minimising `cost = num / den` (compared by
/// cross-multiplication, first in configuration order on ties).
#[inline]
fn least(servers: &[Arc<Server>], cost: impl Fn(&Server) -> (u64, u64)) -> Option<&Arc<Server>> {
    let mut best: Option<(&Arc<Server>, u64, u64)> = None;
    for s in servers.iter().filter(|s| s.weight > 0) {
        if s.limits.max != 0 && !s.admits() {
            continue;
        }
        let (n, d) = cost(s);
        match best {
            Some((_, bn, bd))
                if u128::from(n) * u128::from(bd) >= u128::from(bn) * u128::from(d) => {}
            _ => best = Some((s, n, d)),
        }
    }
    best.map(|(s, _, _)| s)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Weights divided by their gcd and, if their sum exceeds `max_sum`,
/// scaled down proportionally (each non-zero weight stays ≥ 1).
fn reduce(weights: &[u32], max_sum: u64) -> Vec<u64> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
    if g == 0 {
        return vec![0; weights.len()];
    }
    let w: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
    let sum: u64 = w.iter().sum();
    if sum <= max_sum {
        return w;
    }
    w.iter()
        .map(|&x| {
            if x == 0 {
                0
            } else {
                (x * max_sum / sum).max(1)
            }
        })
        .collect()
}

/// One full cycle of smooth weighted round robin (nginx's algorithm): every
/// step each server gains its weight, the richest is chosen and pays the
/// total. Weights 3:1 give a, a, b, a — never a burst to the heaviest.
pub fn smooth_wrr_cycle(weights: &[u32]) -> Vec<u16> {
    let w = reduce(weights, WRR_MAX_CYCLE);
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] || w[best] == 0 {
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(best as u16);
    }
    cycle
}

/// Source-hash buckets, each server holding a share proportional to its
/// weight, interleaved.
fn source_hash_table(weights: &[u32]) -> Vec<u16> {
    let cycle = smooth_wrr_cycle(weights);
    if cycle.is_empty() {
        return cycle;
    }
    (0..SH_SIZE).map(|b| cycle[b % cycle.len()]).collect()
}

/// FNV-1a, 64 bit: stable across releases and machines, so every director
/// with the same configuration builds the same Maglev table.
fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A stable 64-bit mix of a client address: the same on every director
/// and after every restart.
#[inline]
fn mix_addr(a: Addr) -> u64 {
    match a.v4_octets() {
        Some(o) => mix64(u64::from(u32::from_be_bytes(o))),
        None => {
            let x = u128::from_be_bytes(a.0);
            mix64(mix64(x as u64) ^ (x >> 64) as u64)
        }
    }
}

/// splitmix64's finaliser.
#[inline]
fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The Maglev lookup table (Eisenbud et al., NSDI 2016) with weights: each
/// server walks its own permutation of the `m` slots (offset and skip from
/// two hashes of its identity) and, per round, claims as many free slots
/// as its (reduced) weight. Removing one of N servers moves about 1/N of
/// the slots.
pub fn maglev_table(ids: &[String], weights: &[u32], m: usize) -> Vec<u16> {
    let w = reduce(weights, m as u64 / 4);
    if w.iter().all(|&x| x == 0) {
        return Vec::new();
    }
    let m64 = m as u64;
    let perm: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let offset = fnv1a(id.as_bytes(), 0x5bd1_e995) % m64;
            let skip = fnv1a(id.as_bytes(), 0x1b87_3593) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; ids.len()];
    let mut table = vec![u16::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for i in 0..ids.len() {
            for _ in 0..w[i] {
                let (offset, skip) = perm[i];
                let mut slot = ((offset + next[i] * skip) % m64) as usize;
                while table[slot] != u16::MAX {
                    next[i] += 1;
                    slot = ((offset + next[i] * skip) % m64) as usize;
                }
                table[slot] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service's servers and scheduler.
    struct Service {
        sched: SchedState,
        servers: Vec<Arc<Server>>,
    }

    fn pick(s: &Service, client: Addr) -> Option<&Arc<Server>> {
        super::pick(&s.sched, &s.servers, client)
    }

    fn server(i: usize, w: u32) -> Arc<Server> {
        Arc::new(Server {
            addr: Addr::v4_bytes([10, 0, 1, i as u8 + 1]),
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
    }

    fn svc(kind: Scheduler, weights: &[u32]) -> Service {
        let servers: Vec<Arc<Server>> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| server(i, w))
            .collect();
        Service {
            sched: SchedState::build(kind, &servers, Arc::default()),
            servers,
        }
    }

    fn picks(s: &Service, n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|c| pick(s, Addr::v4(c)).unwrap().addr.0[15])
            .collect()
    }

    /// A service whose first server has connection thresholds.
    fn limited(kind: Scheduler, weights: &[u32], max: u32, min: u32) -> Service {
        let mut servers: Vec<Arc<Server>> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| server(i, w))
            .collect();
        let mut first = server(0, weights[0]);
        Arc::get_mut(&mut first).unwrap().limits = ConnLimits { max, min };
        servers[0] = first;
        Service {
            sched: SchedState::build(kind, &servers, Arc::default()),
            servers,
        }
    }

    /// ipvsadm -x/-y: a server at its upper threshold gets no new
    /// connection, whatever the scheduler, until it is back under the
    /// lower one (¾ of the upper by default).
    #[test]
    fn thresholds_hold_a_server_between_upper_and_lower() {
        for kind in Scheduler::ALL {
            let s = limited(kind, &[1, 1], 4, 0);
            let first = &s.servers[0].stats;
            let takes_first = |s: &Service| picks(s, 64).contains(&1);
            assert!(takes_first(&s), "{kind}: under the threshold");
            first.active.store(3, Relaxed);
            first.inactive.store(1, Relaxed);
            assert!(!takes_first(&s), "{kind}: at 4 of 4");
            // Hysteresis: 3 is not under ¾ × 4 = 3.
            first.inactive.store(0, Relaxed);
            assert!(!takes_first(&s), "{kind}: 3 of 4 is still overloaded");
            // Back under (and the other server busier, for the least-
            // connection family): it takes connections again.
            first.active.store(2, Relaxed);
            s.servers[1].stats.active.store(100, Relaxed);
            assert!(takes_first(&s), "{kind}: 2 < 3");
            assert!(!first.overloaded(), "{kind}");
            // Every server overloaded: no server.
            let s = limited(kind, &[1], 1, 0);
            s.servers[0].stats.active.store(1, Relaxed);
            assert!(pick(&s, Addr::v4(0)).is_none(), "{kind}");
        }
        // An explicit lower threshold.
        let s = limited(Scheduler::Rr, &[1, 1], 10, 2);
        s.servers[0].stats.active.store(10, Relaxed);
        assert!(!picks(&s, 4).contains(&1));
        s.servers[0].stats.active.store(2, Relaxed);
        assert!(!picks(&s, 4).contains(&1), "2 is not under 2");
        s.servers[0].stats.active.store(1, Relaxed);
        assert!(picks(&s, 4).contains(&1));
    }

    #[test]
    fn rr_alternates() {
        assert_eq!(
            picks(&svc(Scheduler::Rr, &[1, 1, 1]), 6),
            [1, 2, 3, 1, 2, 3]
        );
    }

    #[test]
    fn weight_zero_is_quiescent_everywhere() {
        for kind in Scheduler::ALL {
            let s = svc(kind, &[1, 0, 1]);
            for c in 0..200u32 {
                assert_ne!(
                    pick(&s, Addr::v4(c.wrapping_mul(2_654_435_761)))
                        .unwrap()
                        .addr
                        .0[15],
                    2,
                    "{kind:?}"
                );
            }
            assert!(pick(&svc(kind, &[0, 0]), Addr::v4(1)).is_none(), "{kind:?}");
            assert!(pick(&svc(kind, &[]), Addr::v4(1)).is_none(), "{kind:?}");
        }
    }

    #[test]
    fn wrr_is_smooth_and_exact() {
        assert_eq!(smooth_wrr_cycle(&[3, 1]), [0, 0, 1, 0]);
        assert_eq!(smooth_wrr_cycle(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        // 3:1 gives exactly 75/25 over a whole cycle, and over many cycles.
        let s = svc(Scheduler::Wrr, &[30, 10]);
        let p = picks(&s, 400);
        assert_eq!(p.iter().filter(|&&x| x == 1).count(), 300);
        // Never more than 3 in a row for the heavy one.
        assert!(p.windows(4).all(|w| w.contains(&2)), "{p:?}");
    }

    #[test]
    fn least_connection_family() {
        let s = svc(Scheduler::Wlc, &[1, 3]);
        // Equal overhead: first server; then by overhead / weight.
        s.servers[0].stats.active.store(1, Relaxed);
        s.servers[1].stats.active.store(2, Relaxed);
        // 256/1 vs 512/3: the second wins.
        assert_eq!(pick(&s, Addr::v4(0)).unwrap().addr.0[15], 2);
        s.servers[1].stats.active.store(4, Relaxed);
        // 256/1 vs 1024/3 = 341: the first wins.
        assert_eq!(pick(&s, Addr::v4(0)).unwrap().addr.0[15], 1);

        let s = svc(Scheduler::Lc, &[1, 100]);
        s.servers[1].stats.inactive.store(3, Relaxed);
        assert_eq!(
            pick(&s, Addr::v4(0)).unwrap().addr.0[15],
            1,
            "lc ignores weights"
        );

        let s = svc(Scheduler::Sed, &[1, 2]);
        s.servers[0].stats.active.store(0, Relaxed);
        s.servers[1].stats.active.store(1, Relaxed);
        // (0+1)/1 vs (1+1)/2: tie → first.
        assert_eq!(pick(&s, Addr::v4(0)).unwrap().addr.0[15], 1);

        let s = svc(Scheduler::Nq, &[1, 10]);
        s.servers[1].stats.active.store(1, Relaxed);
        assert_eq!(
            pick(&s, Addr::v4(0)).unwrap().addr.0[15],
            1,
            "nq takes the idle server"
        );
    }

    #[test]
    fn source_hash_is_sticky_and_weighted() {
        let s = svc(Scheduler::Sh, &[1, 3]);
        for c in 0..100u32 {
            assert_eq!(
                pick(&s, Addr::v4(c)).map(|x| x.addr),
                pick(&s, Addr::v4(c)).map(|x| x.addr)
            );
        }
        let heavy = (0..40_000u32)
            .filter(|&c| pick(&s, Addr::v4(c * 7919)).unwrap().addr.0[15] == 2)
            .count();
        assert!((28_000..32_000).contains(&heavy), "{heavy}");
    }

    #[test]
    fn maglev_weights_consistency_and_disruption() {
        let ids: Vec<String> = (0..10).map(|i| format!("10.0.1.{i}:80")).collect();
        let t = maglev_table(&ids, &[1; 10], MAGLEV_SIZE);
        assert_eq!(t.len(), MAGLEV_SIZE);
        // Same input, same table (every director, every restart).
        assert_eq!(t, maglev_table(&ids, &[1; 10], MAGLEV_SIZE));
        let share =
            |t: &[u16], i: u16| t.iter().filter(|&&x| x == i).count() as f64 / t.len() as f64;
        for i in 0..10 {
            assert!(
                (share(&t, i) - 0.1).abs() < 0.01,
                "server {i}: {}",
                share(&t, i)
            );
        }
        // Remove server 3: only its slots move (plus a little).
        let mut ids9 = ids.clone();
        ids9.remove(3);
        let t9 = maglev_table(&ids9, &[1; 9], MAGLEV_SIZE);
        let moved = t
            .iter()
            .zip(&t9)
            .filter(|&(&a, &b)| a != 3 && ids[usize::from(a)] != ids9[usize::from(b)])
            .count() as f64
            / MAGLEV_SIZE as f64;
        assert!(
            moved < 0.03,
            "disruption beyond the removed server's 1/N: {moved}"
        );
        // Weights: 1:3.
        let w = maglev_table(&ids[..2], &[1, 3], MAGLEV_SIZE);
        assert!((share(&w, 1) - 0.75).abs() < 0.01, "{}", share(&w, 1));
    }
}
