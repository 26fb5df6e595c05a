//! The virtual-service table the workers read.
//!
//! The control thread owns the authoritative configuration and publishes an
//! immutable [`ServiceTable`] snapshot through an `ArcSwap`; workers load the
//! snapshot once per batch. Changes therefore reach the workers without a
//! lock and without pausing forwarding.

use crate::addr::Addr;
use crate::pipeline::schedule::SchedState;
use crate::pipeline::snat::SnatPool;
use crate::stats::TrafficStats;
use dashmap::DashMap;
use lvc_proto::ServiceKey;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

pub use crate::pipeline::schedule::Server;

impl std::fmt::Debug for TrafficStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.snapshot())
    }
}

/// A virtual service as the workers see it.
#[derive(Debug)]
pub struct Service {
    pub key: ServiceKey,
    pub sched: SchedState,
    pub servers: Vec<Arc<Server>>,
    pub stats: Arc<TrafficStats>,
    /// Client affinity (`--persistent`), if configured.
    pub persistence: Option<Persistence>,
    /// Takes new connections while no real server does (all down or
    /// quiesced): keepalived's `sorry_server`.
    pub sorry: Option<Arc<Server>>,
    /// Picks up TCP connections mid-flow (IPVS's sloppy_tcp).
    pub sloppy: bool,
    /// Its allow/deny lists, if any.
    pub lists: Option<crate::pipeline::filter::Lists>,
    /// Its new-connection rate limit, if any.
    pub conn_rate: Option<Arc<crate::pipeline::filter::ConnRate>>,
    /// Its client class's tag (`key.from.tag()`; 0: none).
    pub class: u64,
}

impl Service {
    /// Its scheduler's choice for a new connection from `client`.
    #[inline]
    pub fn pick(&self, client: Addr) -> Option<&Arc<Server>> {
        crate::pipeline::schedule::pick(&self.sched, &self.servers, client)
    }
}

/// Persistence ("persistent port connections"): every connection from the
/// same client network goes to the same real server while its template
/// lives.
#[derive(Debug, Clone)]
pub struct Persistence {
    /// Seconds a template outlives its last connection.
    pub timeout: u32,
    /// Prefix length of a client's network (from `--netmask`), in bits of
    /// the service's family: 32 or 128 (the default) keeps every client
    /// address apart.
    pub netmask: u8,
    /// Client network → template; shared by all workers and kept across
    /// configuration changes.
    pub templates: Arc<DashMap<Addr, Arc<Template>, ahash::RandomState>>,
    /// Most templates kept (the connection table's capacity): a flood of
    /// spoofed sources must not grow them without bound. At the limit a
    /// new client network's connection is scheduled without a template
    /// (counted in `full`).
    pub limit: usize,
    /// New client networks that got no template (the limit was reached).
    pub full: Arc<std::sync::atomic::AtomicU64>,
}

/// Which server a client network sticks to.
#[derive(Debug)]
pub struct Template {
    /// The server's address and port (servers are re-created on every
    /// configuration change; this survives them).
    pub server: (Addr, u16),
    /// When a connection last used the template (seconds since start).
    pub last_used: AtomicU32,
    /// Connections it controls that are still tracked.
    pub conns: AtomicU32,
}

impl Persistence {
    pub fn new(timeout: u32, netmask: u8) -> Self {
        Self {
            timeout,
            netmask,
            templates: Arc::new(DashMap::with_hasher(ahash::RandomState::new())),
            limit: usize::MAX,
            full: Arc::default(),
        }
    }

    /// Whether a new template may be made.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.templates.len() < self.limit
    }

    /// The network a client belongs to (IPv4 or IPv6, as the service).
    #[inline]
    pub fn network(&self, client: Addr) -> Addr {
        client.masked(self.netmask)
    }

    /// Drops templates without connections idle for `timeout`; returns how
    /// many are left.
    pub fn sweep(&self, now: u32) -> usize {
        self.templates.retain(|_, t| {
            t.conns.load(Relaxed) > 0
                || now.saturating_sub(t.last_used.load(Relaxed)) < self.timeout
        });
        self.templates.len()
    }
}

/// Lookup key: (protocol, VIP, port).
pub type VipKey = (u8, Addr, u16);

/// An inclusive port range of a service.
type PortRange = (u16, u16, Arc<Service>);

/// Immutable snapshot of every service.
#[derive(Debug, Default)]
pub struct ServiceTable {
    /// Services by each single port they list (port 0: every port).
    /// (ahash: looked up for every new connection.)
    services: HashMap<VipKey, Arc<Service>, ahash::RandomState>,
    /// Services that list port ranges, by (protocol, VIP): consulted only
    /// when no single port matches (and only if any exist).
    ranges: HashMap<(u8, Addr), Vec<PortRange>, ahash::RandomState>,
    /// Client classes (`--from`): services that share their VIP and ports
    /// with others, by each single port and by (protocol, VIP) for ranges.
    /// Consulted first, only when there are any.
    classes: HashMap<VipKey, Vec<Arc<Service>>, ahash::RandomState>,
    class_ranges: HashMap<(u8, Addr), Vec<PortRange>, ahash::RandomState>,
    /// The fullnat local address pool, if one is configured.
    snat: Option<Arc<SnatPool>>,
    /// The global filter, when a rule names a real server.
    filter: Option<Arc<crate::pipeline::filter::UserFilter>>,
}

impl ServiceTable {
    pub fn new(services: impl IntoIterator<Item = Arc<Service>>) -> Self {
        let mut t = Self::default();
        for s in services {
            let (proto, vip) = (s.key.proto.number(), Addr::from(s.key.vip));
            let class = !s.key.from.is_empty();
            for &(lo, hi) in s.key.ports.ranges() {
                match (lo == hi, class) {
                    (true, false) => {
                        t.services.insert((proto, vip, lo), s.clone());
                    }
                    (true, true) => t
                        .classes
                        .entry((proto, vip, lo))
                        .or_default()
                        .push(s.clone()),
                    (false, false) => {
                        t.ranges
                            .entry((proto, vip))
                            .or_default()
                            .push((lo, hi, s.clone()))
                    }
                    (false, true) => {
                        t.class_ranges
                            .entry((proto, vip))
                            .or_default()
                            .push((lo, hi, s.clone()))
                    }
                }
            }
        }
        t
    }

    /// The same table with the global filter's `--real` rules.
    pub fn with_filter(mut self, f: Option<Arc<crate::pipeline::filter::UserFilter>>) -> Self {
        self.filter = f;
        self
    }

    pub fn filter(&self) -> Option<&crate::pipeline::filter::UserFilter> {
        self.filter.as_deref()
    }

    /// The same table with a fullnat pool.
    pub fn with_snat(mut self, pool: Option<Arc<SnatPool>>) -> Self {
        self.snat = pool;
        self
    }

    #[inline]
    pub fn snat(&self) -> Option<&Arc<SnatPool>> {
        self.snat.as_ref()
    }

    /// The service for a packet from `client` to `vip:port`: the client
    /// class whose prefixes hold the client most specifically, else the
    /// service without a class ([`lookup`](Self::lookup)).
    #[inline]
    pub fn lookup_for(
        &self,
        proto: u8,
        vip: Addr,
        port: u16,
        client: Addr,
    ) -> Option<&Arc<Service>> {
        if !self.classes.is_empty() || !self.class_ranges.is_empty() {
            let ip = client.ip();
            let singles = [(proto, vip, port), (proto, vip, 0)]
                .into_iter()
                .flat_map(|k| self.classes.get(&k).into_iter().flatten());
            let ranges = self
                .class_ranges
                .get(&(proto, vip))
                .into_iter()
                .flatten()
                .filter(|(lo, hi, _)| (*lo..=*hi).contains(&port))
                .map(|(_, _, s)| s);
            let best = singles
                .chain(ranges)
                .filter_map(|s| s.key.from.best(ip).map(|l| (l, s)))
                .max_by_key(|(l, _)| *l);
            if let Some((_, s)) = best {
                return Some(s);
            }
        }
        self.lookup(proto, vip, port)
    }

    /// The service without a client class for a packet to `vip:port`: an
    /// exact port first, then a port range, then the VIP's port-0 ("every
    /// port") service.
    #[inline]
    pub fn lookup(&self, proto: u8, vip: Addr, port: u16) -> Option<&Arc<Service>> {
        if let Some(s) = self.services.get(&(proto, vip, port)) {
            return Some(s);
        }
        if !self.ranges.is_empty()
            && let Some(rs) = self.ranges.get(&(proto, vip))
            && let Some((_, _, s)) = rs.iter().find(|(lo, hi, _)| (*lo..=*hi).contains(&port))
        {
            return Some(s);
        }
        self.services.get(&(proto, vip, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Addr {
        Addr::from(s.parse::<std::net::IpAddr>().unwrap())
    }

    #[test]
    fn ipv6_clients_grouped_by_prefix() {
        let p = Persistence::new(60, 64);
        let net = p.network(addr("2001:db8:1:2::1"));
        assert_eq!(net, addr("2001:db8:1:2::"));
        assert_eq!(p.network(addr("2001:db8:1:2:ffff:ffff:ffff:ffff")), net);
        assert_eq!(p.network(addr("2001:db8:1:2:abcd::7")), net);
        assert_ne!(p.network(addr("2001:db8:1:3::1")), net);
        assert_ne!(p.network(addr("2001:db9:1:2::1")), net);
        // Odd prefixes cut inside a group of 16 bits.
        let p = Persistence::new(60, 56);
        assert_eq!(
            p.network(addr("2001:db8:1:2ff::1")),
            p.network(addr("2001:db8:1:200::1"))
        );
        assert_ne!(
            p.network(addr("2001:db8:1:2ff::1")),
            p.network(addr("2001:db8:1:1ff::1"))
        );
    }

    #[test]
    fn default_keeps_every_address_apart() {
        let p = Persistence::new(60, 128);
        let a = addr("2001:db8::1");
        assert_eq!(p.network(a), a);
        assert_ne!(p.network(a), p.network(addr("2001:db8::2")));
        let p = Persistence::new(60, 32);
        let a = addr("10.1.2.3");
        assert_eq!(p.network(a), a);
        assert_ne!(p.network(a), p.network(addr("10.1.2.4")));
    }

    #[test]
    fn ipv4_clients_grouped_by_mask() {
        let p = Persistence::new(60, 24);
        let net = p.network(addr("10.1.2.3"));
        assert_eq!(net, addr("10.1.2.0"));
        assert!(net.is_v4());
        assert_eq!(p.network(addr("10.1.2.250")), net);
        assert_ne!(p.network(addr("10.1.3.3")), net);
    }
}
