//! Counters: per-worker packet counters and drop reasons, per-service and
//! per-server traffic counters.
//!
//! Every counter has exactly one writer per worker (or is a relaxed atomic
//! shared by the workers) and is read by the control thread: no locks, no
//! formatted strings on the packet path.

use lvc_proto::{Counters, Rates};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Why a frame was not forwarded. Unit variants only: each is a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Drop {
    /// Truncated or inconsistent headers.
    Malformed,
    /// Neither IPv4 nor IPv6 (the XDP program passes those; counted if one
    /// slips in).
    NotIp,
    /// A later IPv4 fragment whose first fragment lvc has not seen (not
    /// a VIP's, or it arrived out of order), or a fragment of neither TCP
    /// nor UDP.
    Fragment,
    /// Neither TCP nor UDP.
    Protocol,
    /// To a VIP:port with no service (a service was just removed).
    NoService,
    /// The service has no real server that accepts new connections.
    NoServer,
    /// From a real server, but no tracked flow matches.
    NoFlow,
    /// The connection table is full.
    TableFull,
    /// No route to the destination.
    NoRoute,
    /// The next hop's MAC is not resolved yet (resolution was requested).
    NeighPending,
    /// The egress interface is not one lvc serves.
    EgressNotServed,
    /// The IP TTL ran out (an ICMP time exceeded could not be sent).
    TtlExceeded,
    /// Larger than the egress MTU and could be neither fragmented (DF set
    /// on a fragment or tunnel packet; IPv6 later fragments) nor answered
    /// with an ICMP error.
    TooBig,
    /// No free frame or TX ring slot to send it.
    TxFull,
    /// fullnat: no local pool, or every pool port is in use.
    SnatExhausted,
    /// Above a policer's rate and burst (a service's or a class's).
    Policed,
    /// A shaping queue was full (its limit, or the worker's frames for
    /// queues), or RED dropped it.
    ShapeQueue,
    /// A new `nat` connection's reply key could not be put into the XDP
    /// program's `replies` map (full): its packet waits for a retry.
    ReplySteering,
    /// Of a connection whose real server failed its health check with
    /// `--on-fail remove`: the connection is dropped too.
    ServerDown,
    /// An ICMP error lvc would have sent was over its rate limit (the
    /// packet it was about is dropped).
    IcmpRateLimited,
    /// A new nat/fullnat connection whose replies would be those of a live
    /// connection (same real server endpoint, same client endpoint): the
    /// first keeps them.
    ReplyCollision,
    /// The destination's longest route is a blackhole route.
    RouteBlackhole,
    /// The destination's longest route is an unreachable route (counted
    /// whether or not an ICMP error answered it).
    RouteUnreachable,
    /// The destination's longest route is a prohibit route (counted
    /// whether or not an ICMP error answered it).
    RouteProhibit,
    /// A new connection the global filter (a `--real` rule) or the
    /// service's allow/deny lists refuse.
    Filtered,
    /// A new connection over its service's `--conn-rate`.
    ConnRate,
}

impl Drop {
    pub const COUNT: usize = 26;
    pub const ALL: [Drop; Drop::COUNT] = [
        Drop::Malformed,
        Drop::NotIp,
        Drop::Fragment,
        Drop::Protocol,
        Drop::NoService,
        Drop::NoServer,
        Drop::NoFlow,
        Drop::TableFull,
        Drop::NoRoute,
        Drop::NeighPending,
        Drop::EgressNotServed,
        Drop::TtlExceeded,
        Drop::TooBig,
        Drop::TxFull,
        Drop::SnatExhausted,
        Drop::Policed,
        Drop::ShapeQueue,
        Drop::ReplySteering,
        Drop::ServerDown,
        Drop::IcmpRateLimited,
        Drop::ReplyCollision,
        Drop::RouteBlackhole,
        Drop::RouteUnreachable,
        Drop::RouteProhibit,
        Drop::Filtered,
        Drop::ConnRate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::NotIp => "not_ip",
            Drop::Fragment => "fragment",
            Drop::Protocol => "protocol",
            Drop::NoService => "no_service",
            Drop::NoServer => "no_server",
            Drop::NoFlow => "no_flow",
            Drop::TableFull => "table_full",
            Drop::NoRoute => "no_route",
            Drop::NeighPending => "neigh_unresolved",
            Drop::EgressNotServed => "egress_not_served",
            Drop::TtlExceeded => "ttl_exceeded",
            Drop::TooBig => "too_big",
            Drop::TxFull => "tx_full",
            Drop::SnatExhausted => "snat_exhausted",
            Drop::Policed => "policed",
            Drop::ShapeQueue => "shape_queue",
            Drop::ReplySteering => "reply_steering",
            Drop::ServerDown => "server_down",
            Drop::IcmpRateLimited => "icmp_rate_limited",
            Drop::ReplyCollision => "reply_collision",
            Drop::RouteBlackhole => "route_blackhole",
            Drop::RouteUnreachable => "route_unreachable",
            Drop::RouteProhibit => "route_prohibit",
            Drop::Filtered => "filtered",
            Drop::ConnRate => "conn_rate",
        }
    }
}

/// One worker's counters. Written only by that worker.
#[derive(Default)]
pub struct WorkerStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// `sendto` calls made to kick copy-mode TX.
    pub tx_kicks: AtomicU64,
    /// Times the worker, out of frames, slept until the next one came.
    pub waits: AtomicU64,
    /// Times the worker, out of frames that came often, napped for
    /// `--coalesce-usecs` instead (see `worker::Coalesce`).
    pub naps: AtomicU64,
    /// ICMP errors lvc originated (time exceeded, fragmentation needed).
    pub icmp_sent: AtomicU64,
    /// IPv4 fragments lvc made of packets too big for their next link
    /// (DF clear), counting every piece.
    pub fragments_made: AtomicU64,
    pub drops: [AtomicU64; Drop::COUNT],
    /// The kernel's counts for the worker's AF_XDP sockets (all its
    /// interfaces; read once a second). Frames XDP steered to lvc that
    /// never reached it are `xsk_rx_dropped` (no free frame on the fill
    /// ring) plus `xsk_rx_ring_full` (the RX ring full): under overload
    /// this is where the excess goes. `xsk_fill_ring_empty` counts the
    /// times the kernel found the fill ring empty.
    pub xsk_rx_dropped: AtomicU64,
    pub xsk_rx_ring_full: AtomicU64,
    pub xsk_fill_ring_empty: AtomicU64,
}

impl WorkerStats {
    #[inline]
    pub fn count_drop(&self, why: Drop) {
        bump(&self.drops[why as usize], 1);
    }

    pub fn drops(&self, why: Drop) -> u64 {
        self.drops[why as usize].load(Relaxed)
    }
}

/// Adds to a counter that has a single writer: a plain load+store is enough
/// and avoids a locked instruction per packet.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Slots of a [`TrafficStats`]'s packet and byte counters: each thread
/// adds to its own (one cache line each), so workers counting packets of
/// one service never write the same line; readers sum them.
const SHARDS: usize = 16;

/// One thread's share of a service's or server's packet/byte counters.
#[derive(Default)]
#[repr(align(64))]
struct Shard {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// This thread's slot.
fn shard() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SLOT.with(|s| *s)
}

/// Traffic counters of one service or one real server, shared by workers.
#[derive(Default)]
pub struct TrafficStats {
    pub conns: AtomicU64,
    shards: [Shard; SHARDS],
    /// Established TCP connections (servers only).
    pub active: AtomicI64,
    /// Other tracked connections (servers only).
    pub inactive: AtomicI64,
    /// At its upper connection threshold (servers only; IPVS's
    /// `IP_VS_DEST_F_OVERLOAD`): set and cleared by the schedulers.
    pub overloaded: std::sync::atomic::AtomicBool,
    /// Packets dropped in userspace by the filter, the service's lists or
    /// its connection rate limit (services only; XDP's drops are counted
    /// in its own map).
    pub filtered: AtomicU64,
    pub filtered_bytes: AtomicU64,
    /// Per-second rates, refreshed by [`TrafficStats::sample`].
    rates: Mutex<(Counters, Rates)>,
}

impl TrafficStats {
    /// Counts `packets` client → server packets of `bytes` bytes in all.
    #[inline]
    pub fn add_in(&self, packets: u64, bytes: u64) {
        let s = &self.shards[shard()];
        s.packets_in.fetch_add(packets, Relaxed);
        s.bytes_in.fetch_add(bytes, Relaxed);
    }

    /// Counts `packets` server → client packets of `bytes` bytes in all.
    #[inline]
    pub fn add_out(&self, packets: u64, bytes: u64) {
        let s = &self.shards[shard()];
        s.packets_out.fetch_add(packets, Relaxed);
        s.bytes_out.fetch_add(bytes, Relaxed);
    }

    #[inline]
    pub fn count_in(&self, bytes: usize) {
        self.add_in(1, bytes as u64);
    }

    #[inline]
    pub fn count_out(&self, bytes: usize) {
        self.add_out(1, bytes as u64);
    }

    pub fn snapshot(&self) -> Counters {
        let sum = |f: fn(&Shard) -> &AtomicU64| {
            self.shards
                .iter()
                .map(|s| f(s).load(Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        Counters {
            conns: self.conns.load(Relaxed),
            packets_in: sum(|s| &s.packets_in),
            packets_out: sum(|s| &s.packets_out),
            bytes_in: sum(|s| &s.bytes_in),
            bytes_out: sum(|s| &s.bytes_out),
        }
    }

    /// Zeroes the counters (not the connection gauges), as `ipvsadm -Z`.
    pub fn zero(&self) {
        self.conns.store(0, Relaxed);
        for s in &self.shards {
            for c in [&s.packets_in, &s.packets_out, &s.bytes_in, &s.bytes_out] {
                c.store(0, Relaxed);
            }
        }
        *self.rates.lock().unwrap_or_else(|p| p.into_inner()) = Default::default();
    }

    /// Updates the rates from the counters' growth over `secs` seconds
    /// (called every couple of seconds by housekeeping).
    pub fn sample(&self, secs: f64) {
        let now = self.snapshot();
        let mut g = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let per = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs).round() as u64;
        let prev = g.0;
        g.1 = Rates {
            conns: per(now.conns, prev.conns),
            packets_in: per(now.packets_in, prev.packets_in),
            packets_out: per(now.packets_out, prev.packets_out),
            bytes_in: per(now.bytes_in, prev.bytes_in),
            bytes_out: per(now.bytes_out, prev.bytes_out),
        };
        g.0 = now;
    }

    pub fn rates(&self) -> Rates {
        self.rates.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    pub fn active(&self) -> u64 {
        self.active.load(Relaxed).max(0) as u64
    }

    pub fn inactive(&self) -> u64 {
        self.inactive.load(Relaxed).max(0) as u64
    }

    pub fn overloaded(&self) -> bool {
        self.overloaded.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_count_into_their_own_slots_and_readers_sum_them() {
        let st = Arc::new(TrafficStats::default());
        // More threads than slots: some share one, nothing is lost.
        let threads: Vec<_> = (0..SHARDS + 5)
            .map(|i| {
                let st = st.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        st.count_in(100);
                        st.count_out(10 + i);
                    }
                    st.add_in(5, 50);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = (SHARDS + 5) as u64;
        let c = st.snapshot();
        assert_eq!(c.packets_in, n * 1005);
        assert_eq!(c.bytes_in, n * (100_000 + 50));
        assert_eq!(c.packets_out, n * 1000);
        let out: u64 = (0..n).map(|i| 1000 * (10 + i)).sum();
        assert_eq!(c.bytes_out, out);
        st.zero();
        let z = st.snapshot();
        assert_eq!(
            (z.packets_in, z.bytes_in, z.packets_out, z.bytes_out),
            (0, 0, 0, 0)
        );
    }
}
