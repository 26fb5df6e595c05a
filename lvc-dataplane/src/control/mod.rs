//! Control: the authoritative configuration and the `lvc-ctl` socket.
//! Never on the packet path: workers read what this publishes.
//!
//! - `config`: the configuration as the control plane holds it, and one
//!   request applied to a copy of it, validated (no I/O);
//! - `publish`: changes made live all or nothing — the service table
//!   snapshot, the XDP maps, the fullnat pool, shaping, timeouts;
//! - `filter`: the global filter and its sets, compiled for XDP and the
//!   scheduler;
//! - `query`: listings, status, connections, `save`;
//! - `socket`: the Unix socket server (one thread per client);
//! - `metrics`: the Prometheus endpoint;
//! - `health`: what the health checker probes, and what a server's change
//!   of health does;
//! - `housekeeping`: once a second, ageing and rates.
//!
//! Requests are applied under one mutex by [`Control::apply`], which
//! validates the whole change first, then publishes a new [`ServiceTable`]
//! snapshot and brings the XDP maps in line. If any step fails the previous
//! configuration is restored: nothing is ever half-applied. Workers never
//! wait for any of this.

mod config;
mod filter;
mod health;
pub mod housekeeping;
pub mod metrics;
mod publish;
mod query;
mod socket;

pub use socket::{ControlSocket, answer};

use crate::io::steer::{AttachMode, Steering};
use crate::net::route::{NeighRequest, RouteTable};
use crate::offload::OffloadStats;
use crate::pipeline::conntrack::Conntrack;
use crate::pipeline::services::ServiceTable;
use crate::shape::ShapeTable;
use crate::stats::WorkerStats;
use arc_swap::ArcSwap;
use config::Config;
use lvc_proto::shape::ShapeConfig;
use lvc_proto::{ErrorCode, ErrorReply, Request, RequestKind, Response};
use publish::Pools;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One served interface, for `status`.
#[derive(Clone, Debug)]
pub struct ServedInterface {
    pub name: String,
    pub ifindex: u32,
    pub queues: u32,
    pub mode: AttachMode,
    /// Its sockets are bound in zero-copy mode.
    pub zero_copy: bool,
}

/// The control plane's state.
pub struct Control {
    config: Mutex<Config>,
    steering: Arc<Mutex<Steering>>,
    services: Arc<ArcSwap<ServiceTable>>,
    /// The shaping configuration (under its own lock) and what the
    /// workers run from it.
    shape_config: Mutex<ShapeConfig>,
    shaping: Arc<ArcSwap<ShapeTable>>,
    conntrack: Arc<Conntrack>,
    workers: Vec<Arc<WorkerStats>>,
    interfaces: Vec<ServedInterface>,
    started: Instant,
    routes: Arc<ArcSwap<RouteTable>>,
    neigh_requests: crossbeam_channel::Sender<NeighRequest>,
    epoch: Instant,
    /// The fullnat local pool, and replaced pools whose ports are still in
    /// use (their addresses stay steered to lvc until drained).
    pool: Mutex<Pools>,
    offload: Arc<OffloadStats>,
    /// The health-check thread, once started.
    checker: std::sync::OnceLock<crate::health::Checker>,
    /// A change of health waits to be published.
    health_pending: std::sync::atomic::AtomicBool,
    /// Connection sync's counters, when directors sync.
    sync: Option<Arc<crate::sync::SyncStats>>,
    /// VIP announcement (`--announce-dev`).
    announcer: Option<Mutex<crate::net::announce::Announcer>>,
    /// Deleted services whose connections still drain.
    draining: Mutex<Vec<publish::Draining>>,
    /// The global filter and its sets (lock order: filter, then config).
    filter: Mutex<filter::FilterState>,
    /// What the scheduler evaluates of it (`--real` rules), for `publish`.
    user_filter: Mutex<Option<Arc<crate::pipeline::filter::UserFilter>>>,
    /// Each steered service's number in the XDP maps (its allow/deny
    /// prefixes' scope, its drop counter).
    service_ids: Mutex<std::collections::HashMap<lvc_proto::ServiceKey, u32>>,
}

/// What the control plane needs from the rest of the daemon.
pub struct ControlDeps {
    pub steering: Arc<Mutex<Steering>>,
    pub services: Arc<ArcSwap<ServiceTable>>,
    pub shaping: Arc<ArcSwap<ShapeTable>>,
    pub conntrack: Arc<Conntrack>,
    pub workers: Vec<Arc<WorkerStats>>,
    pub interfaces: Vec<ServedInterface>,
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub neigh_requests: crossbeam_channel::Sender<NeighRequest>,
    /// The workers' clock origin (connection times are seconds since it).
    pub epoch: Instant,
    /// The offload thread's counters.
    pub offload: Arc<OffloadStats>,
    /// Connection sync's counters, when directors sync.
    pub sync: Option<Arc<crate::sync::SyncStats>>,
    /// VIP announcement (`--announce-dev`).
    pub announcer: Option<crate::net::announce::Announcer>,
}

impl Control {
    pub fn new(d: ControlDeps) -> Self {
        Self {
            config: Mutex::new(Config::new()),
            steering: d.steering,
            services: d.services,
            shape_config: Mutex::new(ShapeConfig::default()),
            shaping: d.shaping,
            conntrack: d.conntrack,
            workers: d.workers,
            interfaces: d.interfaces,
            started: Instant::now(),
            routes: d.routes,
            neigh_requests: d.neigh_requests,
            epoch: d.epoch,
            offload: d.offload,
            pool: Mutex::new(Pools::default()),
            checker: std::sync::OnceLock::new(),
            health_pending: Default::default(),
            sync: d.sync,
            announcer: d.announcer.map(Mutex::new),
            draining: Mutex::default(),
            filter: Mutex::default(),
            user_filter: Mutex::default(),
            service_ids: Mutex::default(),
        }
    }

    /// Answers one request.
    pub fn handle(&self, req: Request) -> Response {
        let done = |r: Result<(), ErrorReply>| match r {
            Ok(()) => Response::Ok,
            Err(e) => Response::Error(e),
        };
        match req.kind() {
            RequestKind::ConfigEdit => done(self.apply(std::slice::from_ref(&req))),
            RequestKind::ShapeEdit => done(self.shape(&req)),
            RequestKind::FilterEdit => done(self.filter_edit(&req)),
            RequestKind::Setting => done(self.setting(req)),
            RequestKind::Query => self.query(req),
        }
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, msg)
}
