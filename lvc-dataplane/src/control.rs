//! Control: the authoritative configuration and the `lvc-ctl` socket.
//!
//! Requests arrive on a Unix socket (one thread per client connection) and
//! are applied under one mutex by [`Control::apply`], which validates the
//! whole change first, then publishes a new [`ServiceTable`] snapshot and
//! brings the XDP maps in line. If any step fails the previous
//! configuration is restored: nothing is ever half-applied. Workers never
//! wait for any of this.

use crate::conntrack::Conntrack;
use crate::route::{NeighRequest, NextHop, RouteTable};
use crate::schedule::SchedState;
use crate::services::{Persistence, Server, Service, ServiceTable};
use crate::shape::ShapeTable;
use crate::snat::SnatPool;
use crate::stats::{Drop, TrafficStats, WorkerStats};
use crate::steer::{AttachMode, Steering};
use arc_swap::ArcSwap;
use lvc_ebpf::{AddrKey, EndpointKey, PortRanges};
use lvc_proto::config::{ConfigFile, Fullnat, ServerConfig, ServiceConfig, Timeouts};
use lvc_proto::shape::ShapeConfig;
use lvc_proto::{
    ConnFilter, ConnInfo, ConnListing, ErrorCode, ErrorReply, InterfaceStatus, Listing,
    MAX_REQUEST_BYTES, MAX_WEIGHT, Method, Netmask, Protocol, RealSpec, Request, RequestEnvelope,
    Response, ResponseEnvelope, Scheduler, ServerInfo, ServiceInfo, ServiceKey, Status, VERSION,
    check_local_pool, check_persistence,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A real server in the configuration.
#[derive(Clone, Debug)]
struct ServerConf {
    addr: SocketAddr,
    weight: u32,
    method: Method,
    stats: Arc<TrafficStats>,
}

/// A virtual service in the configuration.
#[derive(Clone, Debug)]
struct ServiceConf {
    scheduler: Scheduler,
    servers: Vec<ServerConf>,
    stats: Arc<TrafficStats>,
    rr: Arc<AtomicUsize>,
    /// Persistence (timeout, netmask) with its live templates.
    persistence: Option<Persistence>,
}

impl ServiceConf {
    fn new(scheduler: Scheduler, persistence: Option<Persistence>) -> Self {
        Self {
            scheduler,
            servers: Vec::new(),
            stats: Arc::default(),
            rr: Arc::default(),
            persistence,
        }
    }

    fn persistent(&self) -> Option<u32> {
        self.persistence.as_ref().map(|p| p.timeout)
    }

    /// The netmask of service `key`, when persistent and coarser than one
    /// address, in ipvsadm's form: dotted for IPv4, a prefix length for
    /// IPv6.
    fn netmask(&self, key: &ServiceKey) -> Option<Netmask> {
        self.persistence
            .as_ref()
            .filter(|p| p.netmask != address_bits(key))
            .map(|p| match key.vip {
                IpAddr::V4(_) => Netmask::dotted(p.netmask),
                IpAddr::V6(_) => Netmask::Prefix(p.netmask),
            })
    }
}

type Config = BTreeMap<ServiceKey, ServiceConf>;

/// One served interface, for `status`.
#[derive(Clone, Debug)]
pub struct ServedInterface {
    pub name: String,
    pub ifindex: u32,
    pub queues: u32,
    pub mode: AttachMode,
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
    /// Removed `nat` endpoints that still have connections.
    retired: Mutex<Vec<(EndpointKey, Arc<TrafficStats>)>>,
    /// The fullnat local pool, and replaced pools whose ports are still in
    /// use (their addresses stay steered to lvc until drained).
    pool: Mutex<Pools>,
}

#[derive(Default)]
struct Pools {
    current: Option<Arc<SnatPool>>,
    retired: Vec<Arc<SnatPool>>,
}

impl Pools {
    fn addrs(&self) -> Vec<IpAddr> {
        self.current
            .as_ref()
            .map(|p| p.addresses())
            .unwrap_or_default()
    }

    /// Makes `addrs` the pool; the old one retires if ports are in use.
    fn set(&mut self, addrs: &[IpAddr]) {
        if self.addrs() == addrs {
            return;
        }
        if let Some(old) = self.current.take().filter(|p| p.in_use() > 0) {
            self.retired.push(old);
        }
        self.current = (!addrs.is_empty()).then(|| Arc::new(SnatPool::new(addrs)));
    }

    /// Every address XDP must steer to lvc.
    fn steered(&self) -> Vec<IpAddr> {
        self.current
            .iter()
            .chain(self.retired.iter().filter(|p| p.in_use() > 0))
            .flat_map(|p| p.addresses())
            .collect()
    }
}

/// The width of a service's addresses: 32 or 128 bits.
fn address_bits(key: &ServiceKey) -> u8 {
    if key.vip.is_ipv4() { 32 } else { 128 }
}

/// Persistence for service `key` (netmask checked before): clients grouped
/// by the mask's prefix, or each address alone without one.
fn persistence(key: &ServiceKey, timeout: u32, netmask: Option<Netmask>) -> Persistence {
    Persistence::new(timeout, netmask.map_or(address_bits(key), Netmask::bits))
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
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, msg)
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
            retired: Mutex::new(Vec::new()),
            pool: Mutex::new(Pools::default()),
        }
    }

    /// Answers one request.
    pub fn handle(&self, req: Request) -> Response {
        let done = |r: Result<(), ErrorReply>| match r {
            Ok(()) => Response::Ok,
            Err(e) => Response::Error(e),
        };
        match req {
            Request::List {} => Response::Listing(self.listing()),
            Request::Status {} => Response::Status(self.status()),
            Request::Save {} => Response::Config(self.save().render()),
            Request::Conns { filter } => Response::Conns(self.conns(&filter)),
            Request::Restore { config } => match ConfigFile::parse(&config) {
                Ok(file) => done(self.replace(&file)),
                Err(e) => Response::Error(err(
                    ErrorCode::InvalidArgument,
                    format!("configuration rejected: {e}"),
                )),
            },
            Request::SetTimeouts { tcp, tcpfin, udp } => done(self.set_timeouts(tcp, tcpfin, udp)),
            Request::Zero { service } => done(self.zero(service.as_ref())),
            Request::SetLocalPool { addrs } => done(self.set_pool(&addrs)),
            Request::ShapeList {} => Response::Shaping(self.shaping.load().listing()),
            shape @ (Request::ShapeSetRoot { .. }
            | Request::ShapeDelRoot { .. }
            | Request::ShapeAddClass { .. }
            | Request::ShapeChangeClass { .. }
            | Request::ShapeDelClass { .. }
            | Request::ShapeAddFilter { .. }
            | Request::ShapeDelFilter { .. }
            | Request::ShapeAddPolice { .. }
            | Request::ShapeDelPolice { .. }) => done(self.shape(&shape)),
            change => done(self.apply(std::slice::from_ref(&change))),
        }
    }

    /// Applies one shaping change: to a copy, validated and compiled as a
    /// whole, then published; on any error the running shaping stays.
    fn shape(&self, req: &Request) -> Result<(), ErrorReply> {
        let mut cfg = self.shape_config.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = cfg.clone();
        crate::shape::edit::edit(&mut next, req)?;
        self.publish_shaping(&next)?;
        *cfg = next;
        Ok(())
    }

    /// Compiles `cfg` for the served interfaces and hands it to the
    /// workers (counters of classes that stay carry over).
    fn publish_shaping(&self, cfg: &ShapeConfig) -> Result<(), ErrorReply> {
        let table = self.build_shaping(cfg)?;
        self.shaping.store(Arc::new(table));
        Ok(())
    }

    fn build_shaping(&self, cfg: &ShapeConfig) -> Result<ShapeTable, ErrorReply> {
        let served = |dev: &str| {
            self.interfaces
                .iter()
                .find(|i| i.name == dev)
                .map(|i| i.ifindex)
        };
        let names: Vec<&str> = self.interfaces.iter().map(|i| i.name.as_str()).collect();
        ShapeTable::build(
            cfg,
            served,
            &self.shaping.load(),
            self.epoch.elapsed().as_nanos() as u64,
        )
        .map_err(|e| {
            let e = if e.contains("not one lvc serves") {
                format!("{e} (lvc serves {})", names.join(", "))
            } else {
                e
            };
            err(ErrorCode::InvalidArgument, e)
        })
    }

    /// Refreshes the shaping classes' current rates.
    pub fn sample_shaping(&self, secs: f64) {
        self.shaping.load().sample(secs);
    }

    /// The running timeouts.
    pub fn timeouts(&self) -> Timeouts {
        let t = &self.conntrack.timeouts;
        Timeouts {
            tcp: t.tcp.load(Relaxed),
            tcpfin: t.tcpfin.load(Relaxed),
            udp: t.udp.load(Relaxed),
        }
    }

    fn set_timeouts(
        &self,
        tcp: Option<u32>,
        tcpfin: Option<u32>,
        udp: Option<u32>,
    ) -> Result<(), ErrorReply> {
        let cur = self.timeouts();
        let pick = |v: Option<u32>, old: u32| v.filter(|&v| v != 0).unwrap_or(old);
        let next = Timeouts {
            tcp: pick(tcp, cur.tcp),
            tcpfin: pick(tcpfin, cur.tcpfin),
            udp: pick(udp, cur.udp),
        };
        next.validate()
            .map_err(|e| err(ErrorCode::InvalidArgument, e))?;
        self.store_timeouts(&next);
        Ok(())
    }

    fn store_timeouts(&self, t: &Timeouts) {
        let old = self.timeouts();
        let ct = &self.conntrack.timeouts;
        ct.tcp.store(t.tcp, Relaxed);
        ct.tcpfin.store(t.tcpfin, Relaxed);
        ct.udp.store(t.udp, Relaxed);
        // Connections are filed by expiry: a shorter timeout must move
        // them forward now.
        if t.tcp < old.tcp || t.tcpfin < old.tcpfin || t.udp < old.udp {
            self.conntrack.refile_all();
        }
    }

    fn zero(&self, service: Option<&ServiceKey>) -> Result<(), ErrorReply> {
        let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let selected: Vec<&ServiceConf> = match service {
            Some(k) => vec![cfg.get(k).ok_or_else(|| no_service(k))?],
            None => cfg.values().collect(),
        };
        for s in selected {
            s.stats.zero();
            for r in &s.servers {
                r.stats.zero();
            }
        }
        Ok(())
    }

    /// Refreshes every service's and server's rates (housekeeping calls
    /// this every `secs` seconds).
    pub fn sample_rates(&self, secs: f64) {
        let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        for s in cfg.values() {
            s.stats.sample(secs);
            for r in &s.servers {
                r.stats.sample(secs);
            }
        }
    }

    /// Sets the fullnat local pool (all or nothing).
    fn set_pool(&self, addrs: &[IpAddr]) -> Result<(), ErrorReply> {
        check_local_pool(addrs).map_err(|e| err(ErrorCode::InvalidArgument, e))?;
        let mut cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, _)) = cfg.iter().find(|(k, s)| {
            s.servers.iter().any(|r| r.method == Method::Fullnat)
                && !addrs.iter().any(|a| a.is_ipv4() == k.vip.is_ipv4())
        }) {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "service {key} has fullnat servers: the local pool must keep an address of \
                     its family"
                ),
            ));
        }
        let before = self.pool_addrs();
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(addrs);
        let next = cfg.clone();
        self.commit(&mut cfg, next).inspect_err(|_| {
            self.pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set(&before);
        })
    }

    fn pool_addrs(&self) -> Vec<IpAddr> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).addrs()
    }

    /// The running configuration as a config file.
    pub fn save(&self) -> ConfigFile {
        // Lock order everywhere: shape_config before config.
        let shape = self
            .shape_config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let local = self.pool_addrs();
        ConfigFile {
            timeouts: Some(self.timeouts()),
            fullnat: (!local.is_empty()).then_some(Fullnat { local }),
            shape,
            services: cfg
                .iter()
                .map(|(key, s)| {
                    let addr = Some(key.endpoint());
                    ServiceConfig {
                        tcp: addr.clone().filter(|_| key.proto == Protocol::Tcp),
                        udp: addr.filter(|_| key.proto == Protocol::Udp),
                        scheduler: s.scheduler,
                        persistent: s.persistent(),
                        netmask: s.netmask(key),
                        servers: s
                            .servers
                            .iter()
                            .map(|r| ServerConfig {
                                real: RealSpec {
                                    addr: r.addr.ip(),
                                    // Servers of multi-port services keep
                                    // the client's port: written bare.
                                    port: Some(r.addr.port()).filter(|&p| p != 0),
                                },
                                weight: r.weight,
                                method: r.method,
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    /// Makes the running configuration exactly `file` (restore, SIGHUP,
    /// `--config` at start), all or nothing. Services and servers present
    /// before and after keep their counters; connections are never touched.
    pub fn replace(&self, file: &ConfigFile) -> Result<(), ErrorReply> {
        let changes = file
            .requests()
            .map_err(|e| err(ErrorCode::InvalidArgument, e))?;
        // Shaping first: compiled (and so checked against the served
        // interfaces) before anything changes, published after services.
        let mut shape_cfg = self.shape_config.lock().unwrap_or_else(|p| p.into_inner());
        // Unchanged shaping keeps running as it is (tokens, queues).
        let shaping = if *shape_cfg == file.shape {
            None
        } else {
            Some(self.build_shaping(&file.shape)?)
        };
        let mut cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Config::new();
        let pool = file.local_pool();
        for c in &changes {
            edit(&mut next, c, pool)?;
        }
        // Carry counters (and the rr cursor) over for what is unchanged.
        for (key, svc) in next.iter_mut() {
            if let Some(old) = cfg.get(key) {
                svc.stats = old.stats.clone();
                svc.rr = old.rr.clone();
                if let (Some(new), Some(was)) = (&mut svc.persistence, &old.persistence)
                    && (new.timeout, new.netmask) == (was.timeout, was.netmask)
                {
                    new.templates = was.templates.clone();
                }
                for r in svc.servers.iter_mut() {
                    if let Some(o) = old.servers.iter().find(|o| o.addr == r.addr) {
                        r.stats = o.stats.clone();
                    }
                }
            }
        }
        let before = self.pool_addrs();
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(pool);
        self.commit(&mut cfg, next).inspect_err(|_| {
            self.pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set(&before);
        })?;
        if let Some(t) = &file.timeouts {
            self.store_timeouts(t);
        }
        if let Some(s) = shaping {
            self.shaping.store(Arc::new(s));
            *shape_cfg = file.shape.clone();
        }
        Ok(())
    }

    /// Connections matching `f`.
    pub fn conns(&self, f: &ConnFilter) -> ConnListing {
        let limit = f.limit.unwrap_or(100_000);
        let now = self.epoch.elapsed().as_secs() as u32;
        let sa = |a: crate::addr::Addr, p: u16| SocketAddr::new(a.ip(), p);
        let mut out = ConnListing::default();
        self.conntrack.for_each(|c| {
            let proto = if c.proto == 6 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let (client, vip, real) = (
                sa(c.client.0, c.client.1),
                sa(c.vip.0, c.vip.1),
                sa(c.real.0, c.real.1),
            );
            if f.service.is_some_and(|s| {
                s.proto != proto || s.vip != vip.ip() || !s.ports.contains(vip.port())
            }) || f
                .server
                .is_some_and(|r| r.addr != real.ip() || r.port.is_some_and(|p| p != real.port()))
                || f.client.is_some_and(|a| a != client.ip())
            {
                return;
            }
            if out.conns.len() >= limit {
                out.truncated = true;
                return;
            }
            out.conns.push(ConnInfo {
                proto,
                client,
                vip,
                real,
                method: c.method,
                state: c.state().name().to_owned(),
                expires_in: c.expires_in(now, &self.conntrack.timeouts),
            });
        });
        out.conns.sort_by_key(|c| (c.vip, c.client));
        out
    }

    /// Applies a list of changes atomically: all of them or none.
    pub fn apply(&self, changes: &[Request]) -> Result<(), ErrorReply> {
        let mut cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = cfg.clone();
        let pool = self.pool_addrs();
        for c in changes {
            edit(&mut next, c, &pool)?;
        }
        self.commit(&mut cfg, next)
    }

    /// Publishes `next` and makes it the configuration, or puts `cfg` back
    /// in place everywhere if that fails.
    fn commit(&self, cfg: &mut Config, next: Config) -> Result<(), ErrorReply> {
        // nat endpoints leaving the configuration keep steering their
        // replies to lvc while they have connections.
        let staying: HashSet<EndpointKey> = nat_endpoints(&next).map(|(k, _)| k).collect();
        let leaving: Vec<(EndpointKey, Arc<TrafficStats>)> = nat_endpoints(cfg)
            .filter(|(k, st)| !staying.contains(k) && has_conns(st))
            .map(|(k, st)| (k, st.clone()))
            .collect();
        let mark = {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            let mark = retired.len();
            retired.extend(leaving);
            mark
        };
        self.publish(&next).inspect_err(|e| {
            self.retired.lock().unwrap_or_else(|p| p.into_inner()).truncate(mark);
            if let Err(again) = self.publish(cfg) {
                tracing::error!(error = %e.message, rollback = %again.message, "configuration rollback failed");
            }
        })?;
        *cfg = next;
        self.resolve_servers(cfg);
        Ok(())
    }

    /// Asks for the real servers' MACs now, so the first connection to a
    /// new server does not wait for ARP.
    fn resolve_servers(&self, cfg: &Config) {
        let routes = self.routes.load();
        for r in cfg.values().flat_map(|s| &s.servers) {
            if let NextHop::Unresolved(req) = routes.next_hop(r.addr.ip().into()) {
                let _ = self.neigh_requests.try_send(req);
            }
        }
    }

    /// Makes `cfg` the running configuration: service table, then maps.
    fn publish(&self, cfg: &Config) -> Result<(), ErrorReply> {
        let table = ServiceTable::new(cfg.iter().map(|(key, s)| {
            let servers: Vec<Arc<Server>> = s
                .servers
                .iter()
                .map(|r| {
                    Arc::new(Server {
                        addr: r.addr.ip().into(),
                        port: r.addr.port(),
                        weight: r.weight,
                        method: r.method,
                        stats: r.stats.clone(),
                    })
                })
                .collect();
            Arc::new(Service {
                key: *key,
                sched: SchedState::build(s.scheduler, &servers, s.rr.clone()),
                servers,
                stats: s.stats.clone(),
                persistence: s.persistence.clone(),
            })
        }));
        let (vips, vipranges) = vip_steering(cfg)?;
        let fragvips: HashSet<AddrKey> = cfg
            .keys()
            .map(|k| AddrKey::with_proto(k.vip, k.proto.number()))
            .collect();
        let reals = self.reals(cfg);
        let (table, steered) = {
            let pools = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            (table.with_snat(pools.current.clone()), pools.steered())
        };
        // Workers learn about new services before the XDP program sends
        // them traffic, and forget removed ones only after it stops.
        let mut steering = self.steering.lock().unwrap_or_else(|p| p.into_inner());
        self.services.store(Arc::new(table));
        steering
            .sync_vips(&vips)
            .and_then(|_| steering.sync_vipranges(&vipranges))
            .and_then(|_| steering.sync_reals(&reals))
            .and_then(|_| steering.sync_snat(&steered))
            .and_then(|_| steering.sync_fragvips(&fragvips))
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))
    }

    /// `nat` endpoints whose replies XDP must hand to lvc: those configured,
    /// plus removed ones that still have connections (so deleting a server
    /// does not cut its live connections off).
    fn reals(&self, cfg: &Config) -> HashSet<EndpointKey> {
        let mut reals: HashSet<EndpointKey> = nat_endpoints(cfg).map(|(k, _)| k).collect();
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        reals.extend(
            retired
                .iter()
                .filter(|(_, st)| has_conns(st))
                .map(|(k, _)| *k),
        );
        reals
    }

    /// Expires persistence templates (housekeeping, every second).
    pub fn sweep_templates(&self, now: u32) {
        let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        for p in cfg.values().filter_map(|s| s.persistence.as_ref()) {
            p.sweep(now);
        }
    }

    /// Forgets removed `nat` endpoints whose last connection is gone
    /// (housekeeping calls this every second).
    pub fn drain_retired(&self) {
        let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let drained_pool = {
            let mut pools = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            let before = pools.retired.len();
            pools.retired.retain(|p| p.in_use() > 0);
            (pools.retired.len() != before).then(|| pools.steered())
        };
        if let Some(addrs) = drained_pool {
            let mut steering = self.steering.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = steering.sync_snat(&addrs) {
                tracing::warn!(error = %e, "cannot update the XDP snat map");
            }
        }
        {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            let before = retired.len();
            retired.retain(|(_, st)| has_conns(st));
            if retired.len() == before {
                return;
            }
        }
        let reals = self.reals(&cfg);
        let mut steering = self.steering.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = steering.sync_reals(&reals) {
            tracing::warn!(error = %e, "cannot update the XDP reals map");
        }
    }

    pub fn listing(&self) -> Listing {
        let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        Listing {
            services: cfg
                .iter()
                .map(|(key, s)| ServiceInfo {
                    service: *key,
                    scheduler: s.scheduler,
                    persistent: s.persistent(),
                    netmask: s.netmask(key),
                    stats: s.stats.snapshot(),
                    rates: s.stats.rates(),
                    servers: s
                        .servers
                        .iter()
                        .map(|r| ServerInfo {
                            addr: r.addr,
                            method: r.method,
                            weight: r.weight,
                            active_conns: r.stats.active(),
                            inactive_conns: r.stats.inactive(),
                            stats: r.stats.snapshot(),
                            rates: r.stats.rates(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Connections evicted from a full table.
    pub fn conntrack_evicted(&self) -> u64 {
        self.conntrack.evicted()
    }

    /// Each worker's counters, in queue order.
    pub fn worker_stats(&self) -> &[Arc<WorkerStats>] {
        &self.workers
    }

    /// The XDP program's counters.
    pub fn xdp_counters(&self) -> Vec<(lvc_ebpf::Stat, u64)> {
        self.steering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counters()
    }

    pub fn status(&self) -> Status {
        let mut counters: Vec<(String, u64)> = Vec::new();
        {
            let steering = self.steering.lock().unwrap_or_else(|p| p.into_inner());
            for (s, v) in steering.counters() {
                counters.push((format!("xdp_{}", s.name()), v));
            }
        }
        let sum = |f: &dyn Fn(&WorkerStats) -> u64| self.workers.iter().map(|w| f(w)).sum::<u64>();
        counters.push(("rx_packets".into(), sum(&|w| w.rx_packets.load(Relaxed))));
        counters.push(("rx_bytes".into(), sum(&|w| w.rx_bytes.load(Relaxed))));
        counters.push(("tx_packets".into(), sum(&|w| w.tx_packets.load(Relaxed))));
        counters.push(("tx_bytes".into(), sum(&|w| w.tx_bytes.load(Relaxed))));
        counters.push(("tx_kicks".into(), sum(&|w| w.tx_kicks.load(Relaxed))));
        counters.push(("icmp_sent".into(), sum(&|w| w.icmp_sent.load(Relaxed))));
        counters.push((
            "fragments_made".into(),
            sum(&|w| w.fragments_made.load(Relaxed)),
        ));
        counters.push(("conntrack_evicted".into(), self.conntrack.evicted()));
        for d in Drop::ALL {
            counters.push((format!("drop_{}", d.name()), sum(&|w| w.drops(d))));
        }
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            interfaces: self
                .interfaces
                .iter()
                .map(|i| InterfaceStatus {
                    name: i.name.clone(),
                    ifindex: i.ifindex,
                    queues: i.queues,
                    xdp_mode: i.mode.name().into(),
                })
                .collect(),
            workers: self.workers.len() as u32,
            flows: self.conntrack.len() as u64,
            flow_capacity: self.conntrack.capacity() as u64,
            timeouts: self.timeouts(),
            local_pool: self.pool_addrs(),
            local_ports_in_use: self
                .pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .current
                .as_ref()
                .map_or(0, |p| p.in_use() as u64),
            counters,
        }
    }
}

/// Applies one change to a configuration, validating it.
fn edit(cfg: &mut Config, req: &Request, pool: &[IpAddr]) -> Result<(), ErrorReply> {
    let needs_pool = |service: &ServiceKey, method: Method| {
        if method == Method::Fullnat && !pool.iter().any(|a| a.is_ipv4() == service.vip.is_ipv4()) {
            let family = if service.vip.is_ipv4() {
                "IPv4"
            } else {
                "IPv6"
            };
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "service {service}: the fullnat method needs an {family} address in the local \
                     address pool (lvc-ctl set-local-pool ADDR…, or [fullnat] local = [...] in \
                     the config)"
                ),
            ));
        }
        Ok(())
    };
    match req {
        Request::AddService {
            service,
            scheduler,
            persistent,
            netmask,
        } => {
            check_service(service)?;
            if cfg.contains_key(service) {
                return Err(err(
                    ErrorCode::Exists,
                    format!("service {service} already exists"),
                ));
            }
            if let Some(other) = cfg.keys().find(|k| {
                k.proto == service.proto && k.vip == service.vip && k.ports.overlaps(&service.ports)
            }) {
                return Err(err(
                    ErrorCode::Exists,
                    format!(
                        "service {service} overlaps service {other}: a port belongs to one service"
                    ),
                ));
            }
            check_persistence(service.vip, *persistent, *netmask).map_err(|e| {
                err(
                    ErrorCode::InvalidArgument,
                    format!("service {service}: {e}"),
                )
            })?;
            cfg.insert(
                *service,
                ServiceConf::new(
                    *scheduler,
                    persistent.map(|t| persistence(service, t, *netmask)),
                ),
            );
        }
        Request::DelService { service } => {
            cfg.remove(service).ok_or_else(|| no_service(service))?;
        }
        Request::AddServer {
            service,
            real,
            weight,
            method,
        } => {
            let svc = cfg.get_mut(service).ok_or_else(|| no_service(service))?;
            check_weight(*weight)?;
            if real.addr.is_ipv4() != service.vip.is_ipv4() {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!(
                        "real server {real} and service {service} must be the same address family"
                    ),
                ));
            }
            if service.ports.single_port().is_none_or(|p| p == 0)
                && real.port.is_some_and(|p| p != 0)
            {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!(
                        "service {service} covers several ports: give the real server without a \
                         port (connections keep the port the client asked for)"
                    ),
                ));
            }
            let addr = real.resolve(service);
            check_method(service, *method, addr.port())?;
            needs_pool(service, *method)?;
            if svc.servers.iter().any(|r| r.addr == addr) {
                return Err(err(
                    ErrorCode::Exists,
                    format!("real server {addr} already exists in service {service}"),
                ));
            }
            svc.servers.push(ServerConf {
                addr,
                weight: *weight,
                method: *method,
                stats: Arc::default(),
            });
        }
        Request::DelServer { service, real } => {
            let svc = cfg.get_mut(service).ok_or_else(|| no_service(service))?;
            let addr = real.resolve(service);
            let before = svc.servers.len();
            svc.servers.retain(|r| r.addr != addr);
            if svc.servers.len() == before {
                return Err(err(
                    ErrorCode::NotFound,
                    format!("real server {addr} does not exist in service {service}"),
                ));
            }
        }
        Request::EditService {
            service,
            scheduler,
            persistent,
            netmask,
        } => {
            let svc = cfg.get_mut(service).ok_or_else(|| no_service(service))?;
            if let Some(s) = scheduler {
                svc.scheduler = *s;
            }
            if persistent.is_some() || netmask.is_some() {
                // 0 turns persistence off; otherwise keep what is not given.
                let timeout = match persistent {
                    Some(0) => None,
                    Some(t) => Some(*t),
                    None => svc.persistent(),
                };
                let mask = netmask
                    .or(svc.netmask(service))
                    .filter(|_| timeout.is_some());
                check_persistence(service.vip, timeout, mask).map_err(|e| {
                    err(
                        ErrorCode::InvalidArgument,
                        format!("service {service}: {e}"),
                    )
                })?;
                let next = timeout.map(|t| persistence(service, t, mask));
                // Unchanged persistence keeps its templates.
                let same = |p: Option<&Persistence>| p.map(|p| (p.timeout, p.netmask));
                if same(next.as_ref()) != same(svc.persistence.as_ref()) {
                    svc.persistence = next;
                }
            }
        }
        Request::EditServer {
            service,
            real,
            weight,
            method,
        } => {
            let svc = cfg.get_mut(service).ok_or_else(|| no_service(service))?;
            let addr = real.resolve(service);
            let srv = svc
                .servers
                .iter_mut()
                .find(|r| r.addr == addr)
                .ok_or_else(|| {
                    err(
                        ErrorCode::NotFound,
                        format!("real server {addr} does not exist in service {service}"),
                    )
                })?;
            if let Some(w) = weight {
                check_weight(*w)?;
                srv.weight = *w;
            }
            if let Some(m) = method {
                check_method(service, *m, addr.port())?;
                needs_pool(service, *m)?;
                srv.method = *m;
            }
        }
        Request::Clear {} => cfg.clear(),
        Request::List {}
        | Request::Status {}
        | Request::Save {}
        | Request::Restore { .. }
        | Request::Conns { .. }
        | Request::Zero { .. }
        | Request::SetLocalPool { .. }
        | Request::ShapeSetRoot { .. }
        | Request::ShapeDelRoot { .. }
        | Request::ShapeAddClass { .. }
        | Request::ShapeChangeClass { .. }
        | Request::ShapeDelClass { .. }
        | Request::ShapeAddFilter { .. }
        | Request::ShapeDelFilter { .. }
        | Request::ShapeAddPolice { .. }
        | Request::ShapeDelPolice { .. }
        | Request::ShapeList {}
        | Request::SetTimeouts { .. } => {
            return Err(err(ErrorCode::BadRequest, "not a configuration change"));
        }
    }
    Ok(())
}

/// `nat` on an every-port service would make the XDP program take every
/// packet the real server sends (its DNS, updates, …) and lvc would drop
/// what belongs to no connection: refused until replies are steered per
/// flow.
fn check_method(service: &ServiceKey, method: Method, real_port: u16) -> Result<(), ErrorReply> {
    if method == Method::Tun && service.vip.is_ipv6() {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "service {service}: the tun method is IPv4 only (IPIP); use dr, nat, dnat or \
                 fullnat for IPv6"
            ),
        ));
    }
    if matches!(method, Method::Dr | Method::Tun) && real_port != service.ports.default_real_port()
    {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "service {service}: the {method} method cannot remap ports (the packet reaches the \
                 real server unchanged): give the real server without a port, or use nat/dnat"
            ),
        ));
    }
    if method == Method::Nat
        && service
            .ports
            .ranges()
            .iter()
            .any(|&(lo, hi)| lo == 0 || lo != hi)
    {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "service {service} covers every port or a port range: the nat method cannot be \
                 used there yet (it would capture the real server's own traffic from those \
                 ports); use --method dnat, fullnat or dr, or list single ports"
            ),
        ));
    }
    Ok(())
}

fn check_weight(w: u32) -> Result<(), ErrorReply> {
    if w > MAX_WEIGHT {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("weight must be 0..={MAX_WEIGHT}, got {w}"),
        ));
    }
    Ok(())
}

/// Every `nat` server endpoint of a configuration, with its counters.
fn nat_endpoints(cfg: &Config) -> impl Iterator<Item = (EndpointKey, &Arc<TrafficStats>)> {
    cfg.iter().flat_map(|(key, s)| {
        s.servers
            .iter()
            .filter(|r| r.method == Method::Nat)
            .flat_map(move |r| {
                // A server without a port answers from each listed port.
                let ports: Vec<u16> = match r.addr.port() {
                    0 => key.ports.ranges().iter().map(|&(p, _)| p).collect(),
                    p => vec![p],
                };
                ports.into_iter().map(move |p| {
                    (
                        EndpointKey::new(r.addr.ip(), key.proto.number(), p),
                        &r.stats,
                    )
                })
            })
    })
}

fn has_conns(st: &TrafficStats) -> bool {
    st.active() + st.inactive() > 0
}

fn no_service(s: &ServiceKey) -> ErrorReply {
    err(ErrorCode::NotFound, format!("service {s} does not exist"))
}

/// What the XDP program needs to recognise every service's packets: the
/// single ports (`vips`) and, per VIP and protocol, the port ranges.
fn vip_steering(
    cfg: &Config,
) -> Result<(HashSet<EndpointKey>, HashMap<AddrKey, PortRanges>), ErrorReply> {
    let mut vips = HashSet::new();
    let mut ranges: HashMap<AddrKey, Vec<(u16, u16)>> = HashMap::new();
    for k in cfg.keys() {
        for &(lo, hi) in k.ports.ranges() {
            if lo == hi {
                vips.insert(EndpointKey::new(k.vip, k.proto.number(), lo));
            } else {
                ranges
                    .entry(AddrKey::with_proto(k.vip, k.proto.number()))
                    .or_default()
                    .push((lo, hi));
            }
        }
    }
    let ranges = ranges
        .into_iter()
        .map(|(key, r)| {
            let v = PortRanges::new(&r).ok_or_else(|| {
                err(
                    ErrorCode::InvalidArgument,
                    format!(
                        "the services of one VIP and protocol may cover at most {} port ranges",
                        lvc_ebpf::MAX_RANGES
                    ),
                )
            })?;
            Ok((key, v))
        })
        .collect::<Result<_, ErrorReply>>()?;
    Ok((vips, ranges))
}

fn check_service(s: &ServiceKey) -> Result<(), ErrorReply> {
    let a = s.vip;
    let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
    if a.is_unspecified() || broadcast || a.is_multicast() || a.is_loopback() {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("service {s}: {a} cannot be a virtual IP"),
        ));
    }
    Ok(())
}

/// Decodes one request line and answers it.
pub fn answer(control: &Control, line: &[u8]) -> ResponseEnvelope {
    let result = match serde_json::from_slice::<serde_json::Value>(line) {
        Err(e) => Response::Error(err(
            ErrorCode::BadRequest,
            format!("request is not JSON: {e}"),
        )),
        Ok(v) => match v.get("version").and_then(|v| v.as_u64()) {
            None => Response::Error(err(
                ErrorCode::BadRequest,
                "request has no protocol `version`",
            )),
            Some(ver) if ver != u64::from(VERSION) => Response::Error(err(
                ErrorCode::VersionMismatch,
                format!(
                    "protocol version {ver} is not supported: this lvc-dataplane speaks version {VERSION}; use the lvc-ctl of the same release"
                ),
            )),
            Some(_) => match serde_json::from_value::<RequestEnvelope>(v) {
                Ok(env) => control.handle(env.request),
                Err(e) => {
                    Response::Error(err(ErrorCode::BadRequest, format!("invalid request: {e}")))
                }
            },
        },
    };
    ResponseEnvelope::new(result)
}

/// Per-connection idle timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most client connections served at once.
const MAX_CLIENTS: usize = 64;

/// The listening control socket; removes its file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Creates the socket (mode 0660, parent directory made if missing). A
    /// stale socket file left by a dead daemon is replaced; a live one is
    /// an error.
    pub fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<Self> {
        use anyhow::Context;
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "{} is in use: is another lvc-dataplane running?",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
        // Owner root, group root or `group`, mode 0660: everyone else gets
        // EACCES from connect().
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
        }
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves clients until `shutdown`.
    pub fn serve(self, control: Arc<Control>, shutdown: Arc<AtomicBool>) {
        self.listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let clients = Arc::new(AtomicUsize::new(0));
        while !shutdown.load(Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if clients.load(Relaxed) >= MAX_CLIENTS {
                        let _ = reply(&stream, &busy());
                        continue;
                    }
                    // The slot is given back when the guard drops: after the
                    // client is served, if its thread panics, or if the
                    // thread cannot be started at all.
                    let slot = ClientSlot::take(&clients);
                    let control = control.clone();
                    let _ = std::thread::Builder::new()
                        .name("lvc-ctl-client".into())
                        .spawn(move || {
                            let _slot = slot;
                            serve_client(stream, &control);
                        });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl std::ops::Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One of the `MAX_CLIENTS` client slots, released on drop.
struct ClientSlot(Arc<AtomicUsize>);

impl ClientSlot {
    fn take(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Relaxed);
        Self(count.clone())
    }
}

impl std::ops::Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

fn busy() -> ResponseEnvelope {
    ResponseEnvelope::new(Response::Error(err(
        ErrorCode::Internal,
        "too many control clients; try again",
    )))
}

fn reply(mut stream: &UnixStream, resp: &ResponseEnvelope) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).expect("responses serialize");
    line.push(b'\n');
    stream.write_all(&line)
}

/// Answers one client's requests, one line each, until it hangs up, goes
/// quiet for too long, or sends a line over the size limit.
fn serve_client(stream: UnixStream, control: &Control) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half.take(0));
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bound each line: one byte over the limit means "too long".
        reader.get_mut().set_limit(MAX_REQUEST_BYTES as u64 + 1);
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        if line.len() > MAX_REQUEST_BYTES {
            // Discard the rest of the line (bounded), so the client is
            // reading, not writing, when the answer comes.
            if line.last() != Some(&b'\n') {
                reader.get_mut().set_limit(64 << 20);
                let _ = reader.read_until(b'\n', &mut Vec::new());
            }
            let _ = reply(
                &stream,
                &ResponseEnvelope::new(Response::Error(err(
                    ErrorCode::BadRequest,
                    format!("request longer than {MAX_REQUEST_BYTES} bytes"),
                ))),
            );
            return;
        }
        if line.last() != Some(&b'\n') {
            // EOF in the middle of a request: nothing to answer.
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if reply(&stream, &answer(control, &line)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Request {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    /// Applies `json` to `cfg` as `apply` does (on a copy, kept on success).
    fn run(cfg: &mut Config, json: &str) -> Result<(), String> {
        let mut next = cfg.clone();
        edit(&mut next, &request(json), &[]).map_err(|e| e.message)?;
        *cfg = next;
        Ok(())
    }

    fn bits(cfg: &Config, key: &str) -> Option<u8> {
        let key: ServiceKey = key.parse().unwrap();
        cfg[&key].persistence.as_ref().map(|p| p.netmask)
    }

    fn shown(cfg: &Config, key: &str) -> Option<String> {
        let key: ServiceKey = key.parse().unwrap();
        cfg[&key].netmask(&key).map(|m| m.to_string())
    }

    const V6: &str = "tcp:[2001:db8::10]:80";
    const V4: &str = "tcp:10.0.0.10:80";

    #[test]
    fn ipv6_netmask_is_a_prefix_length() {
        let mut cfg = Config::new();
        run(
            &mut cfg,
            &format!(r#"{{"verb":"add-service","service":"{V6}","persistent":60,"netmask":64}}"#),
        )
        .unwrap();
        assert_eq!(bits(&cfg, V6), Some(64));
        assert_eq!(shown(&cfg, V6).as_deref(), Some("64"));
        // Persistent without a netmask: one address per template.
        run(
            &mut cfg,
            r#"{"verb":"add-service","service":"udp:[2001:db8::10]:53","persistent":60}"#,
        )
        .unwrap();
        assert_eq!(bits(&cfg, "udp:[2001:db8::10]:53"), Some(128));
        assert_eq!(shown(&cfg, "udp:[2001:db8::10]:53"), None);

        // A dotted mask, or a prefix past 128, changes nothing.
        let before = format!("{cfg:?}");
        let e = run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","netmask":"255.255.255.0"}}"#),
        )
        .unwrap_err();
        assert!(
            e.contains("prefix length 1..128 (ipvsadm's form), not 255.255.255.0"),
            "{e}"
        );
        let e = run(&mut cfg, r#"{"verb":"add-service","service":"tcp:[2001:db8::10]:81","persistent":60,"netmask":"255.255.0.0"}"#).unwrap_err();
        assert!(
            e.contains("service tcp [2001:db8::10]:81: an IPv6 service's --netmask"),
            "{e}"
        );
        assert_eq!(format!("{cfg:?}"), before);

        // Edits: a new prefix; the same one keeps the templates.
        let templates = |cfg: &Config| {
            let key: ServiceKey = V6.parse().unwrap();
            Arc::as_ptr(&cfg[&key].persistence.as_ref().unwrap().templates)
        };
        let t = templates(&cfg);
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","netmask":"/64"}}"#),
        )
        .unwrap();
        assert_eq!(templates(&cfg), t);
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","persistent":120}}"#),
        )
        .unwrap();
        assert_eq!(bits(&cfg, V6), Some(64), "the mask stays");
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","netmask":48}}"#),
        )
        .unwrap();
        assert_eq!(bits(&cfg, V6), Some(48));
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","netmask":128}}"#),
        )
        .unwrap();
        assert_eq!((bits(&cfg, V6), shown(&cfg, V6)), (Some(128), None));
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","persistent":0}}"#),
        )
        .unwrap();
        assert_eq!(bits(&cfg, V6), None);
    }

    #[test]
    fn ipv4_netmask_either_form_shown_dotted() {
        let mut cfg = Config::new();
        run(&mut cfg, &format!(r#"{{"verb":"add-service","service":"{V4}","persistent":60,"netmask":"255.255.255.0"}}"#)).unwrap();
        assert_eq!(bits(&cfg, V4), Some(24));
        assert_eq!(shown(&cfg, V4).as_deref(), Some("255.255.255.0"));
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V4}","netmask":16}}"#),
        )
        .unwrap();
        assert_eq!(shown(&cfg, V4).as_deref(), Some("255.255.0.0"));
        for bad in [r#""255.0.255.0""#, "33"] {
            let e = run(
                &mut cfg,
                &format!(r#"{{"verb":"edit-service","service":"{V4}","netmask":{bad}}}"#),
            )
            .unwrap_err();
            assert!(e.starts_with("service tcp 10.0.0.10:80: "), "{e}");
        }
        assert_eq!(bits(&cfg, V4), Some(16));
        let e = run(
            &mut cfg,
            r#"{"verb":"add-service","service":"tcp:10.0.0.10:81","netmask":24}"#,
        )
        .unwrap_err();
        assert!(e.contains("give --persistent"), "{e}");
    }
}
