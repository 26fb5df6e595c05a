//! Making a configuration live, all or nothing: the service table the
//! workers read, the XDP maps, the fullnat pool, shaping and timeouts. On
//! any failure the previous state is put back everywhere.

use super::config::{Config, ServiceConf, edit, no_service};
use super::{Control, err};
use crate::net::route::NextHop;
use crate::pipeline::schedule::SchedState;
use crate::pipeline::services::{Server, Service, ServiceTable};
use crate::pipeline::snat::SnatPool;
use crate::shape::ShapeTable;
use lvc_ebpf::{AddrKey, EndpointKey, PortRanges, ServiceValue};
use lvc_proto::config::{ConfigFile, Timeouts};
use lvc_proto::shape::ShapeConfig;
use lvc_proto::{
    ErrorCode, ErrorReply, Method, Ports, Protocol, Request, RequestKind, ServiceKey,
    check_local_pool,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// A deleted service whose connections are not over yet.
#[derive(Clone)]
pub(super) struct Draining {
    pub(super) key: ServiceKey,
    /// Its servers' counters (the connections hold the same ones).
    pub(super) servers: Vec<Arc<crate::stats::TrafficStats>>,
}

impl Draining {
    fn connections(&self) -> u64 {
        self.servers.iter().map(|s| s.active() + s.inactive()).sum()
    }
}

#[derive(Default)]
pub(super) struct Pools {
    pub(super) current: Option<Arc<SnatPool>>,
    pub(super) retired: Vec<Arc<SnatPool>>,
}

impl Pools {
    pub(super) fn addrs(&self) -> Vec<IpAddr> {
        self.current
            .as_ref()
            .map(|p| p.addresses())
            .unwrap_or_default()
    }

    /// Makes `addrs` the pool; the old one retires if ports are in use.
    pub(super) fn set(&mut self, addrs: &[IpAddr]) {
        if self.addrs() == addrs {
            return;
        }
        let old = self.current.take();
        // Ports held on addresses the new pool keeps stay held in it.
        self.current =
            (!addrs.is_empty()).then(|| Arc::new(SnatPool::reusing(addrs, old.as_deref())));
        if let Some(old) = old.filter(|p| p.in_use_besides(self.current.as_deref()) > 0) {
            self.retired.push(old);
        }
    }

    /// Every address XDP must steer to lvc.
    pub(super) fn steered(&self) -> Vec<IpAddr> {
        let current = self.current.as_deref();
        let mut out: Vec<IpAddr> = current.map(|p| p.addresses()).unwrap_or_default();
        for p in self
            .retired
            .iter()
            .filter(|p| p.in_use_besides(current) > 0)
        {
            for a in p.addresses() {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }
}

impl Control {
    /// Applies a list of changes atomically: all of them or none.
    pub fn apply(&self, changes: &[Request]) -> Result<(), ErrorReply> {
        // (A batch's error names the change; one request's needs not.)
        self.batch(changes)
            .map_err(|e| ErrorReply { index: None, ..e })
    }

    /// Publishes `next` and makes it the configuration, or puts `cfg` back
    /// in place everywhere if that fails. Services that `next` drops but
    /// that still have connections drain: their VIP ports stay steered to
    /// lvc (no new connection is made: no service takes it) until the last
    /// one ends, as IPVS lets a deleted service's connections finish.
    pub(super) fn commit(&self, cfg: &mut Config, next: Config) -> Result<(), ErrorReply> {
        let mut draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        let before = draining.clone();
        for (key, s) in cfg.iter().filter(|(k, _)| !next.contains_key(k)) {
            let d = Draining {
                key: *key,
                servers: s
                    .servers
                    .iter()
                    .map(|r| r.stats.clone())
                    .chain(s.sorry.as_ref().map(|so| so.stats.clone()))
                    .collect(),
            };
            if d.connections() > 0 {
                draining.push(d);
            }
        }
        // A service defined again (or one on the same ports) steers them
        // itself.
        draining.retain(|d| !next.keys().any(|k| k.overlaps(&d.key)));
        drop(draining);
        // (A removed nat server's connections keep their replies steered
        // to lvc: the keys are the connections', not the server's.)
        self.publish(&next).inspect_err(|e| {
            *self.draining.lock().unwrap_or_else(|p| p.into_inner()) = before;
            if let Err(again) = self.publish(cfg) {
                tracing::error!(error = %e.message, rollback = %again.message, "configuration rollback failed");
            }
        })?;
        *cfg = next;
        self.resolve_servers(cfg);
        self.sync_health(cfg);
        Ok(())
    }

    /// Makes the running configuration exactly `file` (restore, SIGHUP,
    /// `--config` at start), all or nothing. Services and servers present
    /// before and after keep their counters; connections are never touched.
    pub fn replace(&self, file: &ConfigFile) -> Result<(), ErrorReply> {
        let changes = file
            .requests()
            .map_err(|e| err(ErrorCode::InvalidArgument, e))?;
        // The filter is checked before anything changes, installed last.
        let filter = self.filter_prepare(&file.filters, &file.sets)?;
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
        // (The filter's requests are the filter's: prepared above.)
        for c in changes
            .iter()
            .filter(|c| c.kind() == lvc_proto::RequestKind::ConfigEdit)
        {
            edit(&mut next, c, pool)?;
        }
        // Carry counters (and the rr cursor) over for what is unchanged.
        for (key, svc) in next.iter_mut() {
            if let Some(old) = cfg.get(key) {
                svc.stats = old.stats.clone();
                svc.rr = old.rr.clone();
                if let (Some(_), Some(was)) = (&svc.conn_rate, &old.conn_rate)
                    && svc.policy.conn_rate == old.policy.conn_rate
                    && svc.policy.burst() == old.policy.burst()
                {
                    svc.conn_rate = Some(was.clone());
                }
                if let (Some(new), Some(was)) = (&mut svc.persistence, &old.persistence)
                    && (new.timeout, new.netmask) == (was.timeout, was.netmask)
                {
                    new.templates = was.templates.clone();
                }
                for r in svc.servers.iter_mut() {
                    if let Some(o) = old.servers.iter().find(|o| o.addr == r.addr) {
                        r.stats = o.stats.clone();
                        r.health = o.health.clone();
                    }
                }
                if let (Some(new), Some(was)) = (&mut svc.sorry, &old.sorry)
                    && new.sorry == was.sorry
                {
                    new.stats = was.stats.clone();
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
        drop(cfg);
        drop(shape_cfg);
        self.filter_install(filter)
    }

    /// Sets the fullnat local pool (all or nothing).
    pub(super) fn set_pool(&self, addrs: &[IpAddr]) -> Result<(), ErrorReply> {
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

    pub(super) fn pool_addrs(&self) -> Vec<IpAddr> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).addrs()
    }

    /// Asks for the real servers' MACs now, so the first connection to a
    /// new server does not wait for ARP.
    pub(super) fn resolve_servers(&self, cfg: &Config) {
        let routes = self.routes.load();
        for r in cfg.values().flat_map(|s| &s.servers) {
            if let NextHop::Unresolved(req) = routes.next_hop(r.addr.ip().into()) {
                let _ = self.neigh_requests.try_send(req);
            }
        }
    }

    /// Makes `cfg` the running configuration: service table, then maps.
    pub(super) fn publish(&self, cfg: &Config) -> Result<(), ErrorReply> {
        let table = ServiceTable::new(cfg.iter().map(|(key, s)| {
            let servers: Vec<Arc<Server>> = s
                .servers
                .iter()
                .map(|r| {
                    Arc::new(Server {
                        addr: r.addr.ip().into(),
                        vip: key.vip.into(),
                        port: r.addr.port(),
                        // A server that failed its health check takes no
                        // new connections (its configured weight stays).
                        weight: if r.health.up() { r.weight } else { 0 },
                        method: r.method,
                        stats: r.stats.clone(),
                        service: s.stats.clone(),
                        health: r.health.clone(),
                        limits: r.limits,
                        proxy: r.proxy,
                        class: key.from.tag(),
                    })
                })
                .collect();
            let sorry = s.sorry.as_ref().map(|so| {
                Arc::new(Server {
                    addr: so.sorry.addr.ip().into(),
                    vip: key.vip.into(),
                    port: so.sorry.addr.port(),
                    weight: 1,
                    method: so.sorry.method,
                    stats: so.stats.clone(),
                    service: s.stats.clone(),
                    health: so.health.clone(),
                    limits: Default::default(),
                    proxy: Default::default(),
                    class: key.from.tag(),
                })
            });
            Arc::new(Service {
                key: *key,
                sched: SchedState::build(s.scheduler, &servers, s.rr.clone()),
                servers,
                stats: s.stats.clone(),
                persistence: s.persistence.clone().map(|mut p| {
                    p.limit = self.conntrack.capacity();
                    p
                }),
                sorry,
                sloppy: s.sloppy,
                lists: crate::pipeline::filter::Lists::new(&s.policy),
                conn_rate: s.conn_rate.clone(),
                class: key.from.tag(),
            })
        }))
        .with_filter(
            self.user_filter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        );
        // Deleted services still steered while their connections drain.
        let draining: Vec<ServiceKey> = self
            .draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|d| d.key)
            .filter(|k| !cfg.contains_key(k))
            .collect();
        let mut steering = self.steering.lock().unwrap_or_else(|p| p.into_inner());
        let ids = self.service_ids(cfg.keys().chain(&draining), &mut steering)?;
        let value = |k: &ServiceKey| {
            let p = cfg.get(k).map(|s| &s.policy);
            let mut flags = 0;
            if p.is_some_and(|p| !p.allow.is_empty() || !p.deny.is_empty()) {
                flags |= lvc_ebpf::SVC_ACL;
            }
            if p.is_some_and(|p| !p.allow.is_empty()) {
                flags |= lvc_ebpf::SVC_ALLOWLIST;
            }
            ServiceValue { id: ids[k], flags }
        };
        let (vips, vipranges) = vip_steering(cfg.keys().chain(&draining), value)?;
        // Services' allow/deny prefixes, each service in its own scope.
        let mut acl = HashMap::new();
        let mut acl_services = 0;
        for (k, s) in cfg.iter() {
            let lists = [
                (&s.policy.allow, lvc_ebpf::ACL_ALLOW),
                (&s.policy.deny, lvc_ebpf::ACL_DENY),
            ];
            if lists.iter().all(|(l, _)| l.is_empty()) {
                continue;
            }
            acl_services += 1;
            let scope = lvc_ebpf::ACL_SCOPE_SERVICE + ids[k];
            for (list, v) in lists {
                for c in list {
                    let (d, plen) = lvc_ebpf::AclData::prefix(scope, c.addr, c.len);
                    acl.insert((d.scope, d.addr, plen), v);
                }
            }
        }
        let fragvips: HashSet<AddrKey> = cfg
            .keys()
            .chain(&draining)
            .map(|k| AddrKey::with_proto(k.vip, k.proto.number()))
            .collect();
        let (table, steered) = {
            let pools = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            (table.with_snat(pools.current.clone()), pools.steered())
        };
        // Workers learn about new services before the XDP program sends
        // them traffic, and forget removed ones only after it stops.
        self.services.store(Arc::new(table));
        // Prefixes before the flags that make XDP look at them; a removed
        // list's flag goes before its prefixes.
        let services_scope = |s: u32| s & !lvc_ebpf::ACL_SCOPE_V6 >= lvc_ebpf::ACL_SCOPE_SERVICE;
        let mut with_old = acl.clone();
        with_old.extend(
            steering
                .acl_service_entries()
                .into_iter()
                .filter(|(k, _)| !acl.contains_key(k)),
        );
        steering
            .sync_acl(services_scope, &with_old)
            .and_then(|_| steering.set_acl_services(acl_services))
            .and_then(|_| steering.sync_vips(&vips))
            .and_then(|_| steering.sync_vipranges(&vipranges))
            .and_then(|_| steering.sync_snat(&steered))
            .and_then(|_| steering.sync_fragvips(&fragvips))
            .and_then(|_| steering.sync_acl(services_scope, &acl))
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        drop(steering);
        self.announce(cfg);
        Ok(())
    }

    /// Routes (announces) the VIPs whose every service takes new
    /// connections now (see `net::announce`).
    fn announce(&self, cfg: &Config) {
        let Some(a) = &self.announcer else {
            return;
        };
        let mut ready: BTreeMap<IpAddr, bool> = BTreeMap::new();
        for (key, s) in cfg {
            let takes =
                s.sorry.is_some() || s.servers.iter().any(|r| r.weight > 0 && r.health.up());
            *ready.entry(key.vip).or_insert(true) &= takes;
        }
        let want = ready
            .into_iter()
            .filter(|(_, ok)| *ok)
            .map(|(v, _)| v)
            .collect();
        let mut a = a.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = a.sync(&want) {
            tracing::error!(error = %e, dev = a.device(), "cannot update the announced VIPs");
        }
    }

    /// The VIPs announced now.
    pub(super) fn announced(&self) -> Vec<IpAddr> {
        self.announcer.as_ref().map_or_else(Vec::new, |a| {
            let a = a.lock().unwrap_or_else(|p| p.into_inner());
            a.announced().iter().copied().collect()
        })
    }

    /// Stops steering deleted services whose last connection ended
    /// (housekeeping calls this every second).
    pub fn drain_services(&self) {
        let done = {
            let mut draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
            let before = draining.len();
            draining.retain(|d| d.connections() > 0);
            draining.len() != before
        };
        if done {
            let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = self.publish(&cfg) {
                tracing::warn!(error = %e.message, "cannot stop steering a drained service");
            }
        }
    }

    /// The services that drain now.
    pub(super) fn draining(&self) -> Vec<ServiceKey> {
        let draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        draining.iter().map(|d| d.key).collect()
    }

    /// Forgets replaced fullnat pools whose last port is free again
    /// (housekeeping calls this every second).
    pub fn drain_retired(&self) {
        let drained_pool = {
            let mut pools = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            let before = pools.retired.len();
            let current = pools.current.clone();
            pools
                .retired
                .retain(|p| p.in_use_besides(current.as_deref()) > 0);
            (pools.retired.len() != before).then(|| pools.steered())
        };
        if let Some(addrs) = drained_pool {
            let mut steering = self.steering.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = steering.sync_snat(&addrs) {
                tracing::warn!(error = %e, "cannot update the XDP snat map");
            }
        }
    }

    /// Expires persistence templates (housekeeping, every second).
    pub fn sweep_templates(&self, now: u32) {
        let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        for p in cfg.values().filter_map(|s| s.persistence.as_ref()) {
            p.sweep(now);
        }
    }

    /// Applies one shaping change: to a copy, validated and compiled as a
    /// whole, then published; on any error the running shaping stays.
    pub(super) fn shape(&self, req: &Request) -> Result<(), ErrorReply> {
        let mut cfg = self.shape_config.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = cfg.clone();
        crate::shape::edit::edit(&mut next, req)?;
        self.publish_shaping(&next)?;
        *cfg = next;
        Ok(())
    }

    /// Compiles `cfg` for the served interfaces and hands it to the
    /// workers (counters of classes that stay carry over).
    pub(super) fn publish_shaping(&self, cfg: &ShapeConfig) -> Result<(), ErrorReply> {
        let table = self.build_shaping(cfg)?;
        self.shaping.store(Arc::new(table));
        Ok(())
    }

    pub(super) fn build_shaping(&self, cfg: &ShapeConfig) -> Result<ShapeTable, ErrorReply> {
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

    pub(super) fn set_timeouts(
        &self,
        tcp: Option<u32>,
        tcpfin: Option<u32>,
        udp: Option<u32>,
    ) -> Result<(), ErrorReply> {
        let next = new_timeouts(self.timeouts(), tcp, tcpfin, udp)?;
        self.store_timeouts(&next);
        Ok(())
    }

    /// Applies configuration changes and timeouts (ipvsadm rules being
    /// restored) in order, all or nothing; an error says which failed.
    pub(super) fn batch(&self, requests: &[Request]) -> Result<(), ErrorReply> {
        let before = self.timeouts();
        let mut timeouts = before;
        let mut cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = cfg.clone();
        let pool = self.pool_addrs();
        for (i, r) in requests.iter().enumerate() {
            match r {
                Request::SetTimeouts { tcp, tcpfin, udp } => {
                    timeouts = new_timeouts(timeouts, *tcp, *tcpfin, *udp).map_err(|e| e.at(i))?;
                }
                r if r.kind() == RequestKind::ConfigEdit => {
                    edit(&mut next, r, &pool).map_err(|e| e.at(i))?;
                }
                _ => {
                    return Err(err(
                        ErrorCode::BadRequest,
                        "a batch holds only service, server and timeout changes",
                    )
                    .at(i));
                }
            }
        }
        self.commit(&mut cfg, next)?;
        if timeouts != before {
            self.store_timeouts(&timeouts);
        }
        Ok(())
    }

    pub(super) fn store_timeouts(&self, t: &Timeouts) {
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

    pub(super) fn zero(&self, service: Option<&ServiceKey>) -> Result<(), ErrorReply> {
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
}

/// `cur` with the timeouts given (0 or absent: unchanged), validated.
fn new_timeouts(
    cur: Timeouts,
    tcp: Option<u32>,
    tcpfin: Option<u32>,
    udp: Option<u32>,
) -> Result<Timeouts, ErrorReply> {
    let pick = |v: Option<u32>, old: u32| v.filter(|&v| v != 0).unwrap_or(old);
    let next = Timeouts {
        tcp: pick(tcp, cur.tcp),
        tcpfin: pick(tcpfin, cur.tcpfin),
        udp: pick(udp, cur.udp),
    };
    next.validate()
        .map_err(|e| err(ErrorCode::InvalidArgument, e))?;
    Ok(next)
}

/// Every `nat` server endpoint of a configuration, with its counters.
/// What the XDP program needs to recognise every service's packets: the
/// single ports (`vips`) and, per VIP and protocol, the port ranges.
#[allow(clippy::type_complexity)]
pub(super) fn vip_steering<'a>(
    keys: impl Iterator<Item = &'a ServiceKey>,
    value: impl Fn(&ServiceKey) -> ServiceValue,
) -> Result<
    (
        HashMap<EndpointKey, ServiceValue>,
        HashMap<AddrKey, PortRanges>,
    ),
    ErrorReply,
> {
    let mut vips: HashMap<EndpointKey, ServiceValue> = HashMap::new();
    let mut ranges: HashMap<AddrKey, Vec<((u16, u16), ServiceValue)>> = HashMap::new();
    // Client classes share their VIP's ports: the program cannot tell
    // them apart, so their ports get the service without a class (or any)
    // and no lists (lvc applies each class's lists to new connections).
    let mut shared: HashSet<(IpAddr, Protocol, Ports)> = HashSet::new();
    let mut seen: HashSet<(IpAddr, Protocol, Ports)> = HashSet::new();
    let keys: Vec<&ServiceKey> = keys.collect();
    for k in &keys {
        if !seen.insert((k.vip, k.proto, k.ports)) {
            shared.insert((k.vip, k.proto, k.ports));
        }
    }
    for k in keys {
        let mut v = value(k);
        let classes = shared.contains(&(k.vip, k.proto, k.ports));
        if classes {
            v.flags = 0;
        }
        for &(lo, hi) in k.ports.ranges() {
            if lo == hi {
                let e = EndpointKey::new(k.vip, k.proto.number(), lo);
                if k.from.is_empty() || !vips.contains_key(&e) {
                    vips.insert(e, v);
                }
            } else {
                let list = ranges
                    .entry(AddrKey::with_proto(k.vip, k.proto.number()))
                    .or_default();
                match list.iter_mut().find(|(r, _)| *r == (lo, hi)) {
                    Some(slot) if k.from.is_empty() => slot.1 = v,
                    Some(_) => {}
                    None => list.push(((lo, hi), v)),
                }
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

impl Control {
    /// The XDP maps' number of each service in `keys`: kept while a
    /// service lives, the lowest free one for a new service (its drop
    /// counter zeroed).
    fn service_ids<'a>(
        &self,
        keys: impl Iterator<Item = &'a ServiceKey>,
        steering: &mut crate::io::steer::Steering,
    ) -> Result<HashMap<ServiceKey, u32>, ErrorReply> {
        let mut ids = self.service_ids.lock().unwrap_or_else(|p| p.into_inner());
        let keys: HashSet<ServiceKey> = keys.copied().collect();
        // (Ids freed now are not given out now: their XDP entries and
        // prefixes go only at the end of this publish.)
        let mut used: HashSet<u32> = ids.values().copied().collect();
        ids.retain(|k, _| keys.contains(k));
        let mut next = 0u32;
        for k in keys {
            if ids.contains_key(&k) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            if next >= lvc_ebpf::MAX_SERVICE_IDS {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("at most {} services", lvc_ebpf::MAX_SERVICE_IDS),
                ));
            }
            steering
                .zero_service_drops(next)
                .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
            ids.insert(k, next);
            used.insert(next);
        }
        Ok(ids.clone())
    }

    /// What service `key` lost to filtering: in XDP and in userspace.
    pub(super) fn service_filtered(
        &self,
        key: &ServiceKey,
        stats: &crate::stats::TrafficStats,
    ) -> lvc_proto::filter::FilterCounters {
        let id = self
            .service_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied();
        let xdp = id.map_or_else(Default::default, |id| {
            self.steering
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .service_drops(id)
        });
        lvc_proto::filter::FilterCounters {
            packets: xdp.packets + stats.filtered.load(Relaxed),
            bytes: xdp.bytes + stats.filtered_bytes.load(Relaxed),
        }
    }

    /// Applies a request of kind `Setting`.
    pub(super) fn setting(&self, req: Request) -> Result<(), ErrorReply> {
        match req {
            Request::Restore { config } => {
                let file = ConfigFile::parse(&config).map_err(|e| {
                    err(
                        ErrorCode::InvalidArgument,
                        format!("configuration rejected: {e}"),
                    )
                })?;
                self.replace(&file)
            }
            Request::SetTimeouts { tcp, tcpfin, udp } => self.set_timeouts(tcp, tcpfin, udp),
            Request::Zero { service } => self.zero(service.as_ref()),
            Request::SetLocalPool { addrs } => self.set_pool(&addrs),
            Request::Batch { requests } => self.batch(&requests),
            other => Err(err(
                ErrorCode::Internal,
                format!("{:?} is not a setting", other.kind()),
            )),
        }
    }
}
