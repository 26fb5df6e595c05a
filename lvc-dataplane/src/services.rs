//! The virtual-service table the workers read.
//!
//! The control thread owns the authoritative configuration and publishes an
//! immutable [`ServiceTable`] snapshot through an `ArcSwap`; workers load the
//! snapshot once per batch. Changes therefore reach the workers without a
//! lock and without pausing forwarding.

use crate::stats::TrafficStats;
use lvc_proto::{Method, Scheduler, ServiceKey};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

/// A real server as the workers see it.
#[derive(Debug)]
pub struct Server {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub method: Method,
    pub stats: Arc<TrafficStats>,
}

impl std::fmt::Debug for TrafficStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.snapshot())
    }
}

/// A virtual service as the workers see it.
#[derive(Debug)]
pub struct Service {
    pub key: ServiceKey,
    pub scheduler: Scheduler,
    pub servers: Vec<Arc<Server>>,
    /// Round-robin cursor, shared by all workers.
    pub rr: Arc<AtomicUsize>,
    pub stats: Arc<TrafficStats>,
}

/// Lookup key: (protocol, VIP host order, port).
pub type VipKey = (u8, u32, u16);

/// Immutable snapshot of every service.
#[derive(Debug, Default)]
pub struct ServiceTable {
    services: HashMap<VipKey, Arc<Service>>,
}

impl ServiceTable {
    pub fn new(services: impl IntoIterator<Item = Arc<Service>>) -> Self {
        let services = services
            .into_iter()
            .filter_map(|s| Some((vip_key(&s.key)?, s)))
            .collect();
        Self { services }
    }

    /// The service for a packet to `vip:port`: exact port first, then the
    /// VIP's port-0 ("every port") service.
    #[inline]
    pub fn lookup(&self, proto: u8, vip: u32, port: u16) -> Option<&Arc<Service>> {
        self.services
            .get(&(proto, vip, port))
            .or_else(|| self.services.get(&(proto, vip, 0)))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }
}

/// The table key of an IPv4 service; `None` for IPv6.
pub fn vip_key(key: &ServiceKey) -> Option<VipKey> {
    match key.addr.ip() {
        IpAddr::V4(a) => Some((key.proto.number(), u32::from(a), key.addr.port())),
        IpAddr::V6(_) => None,
    }
}
