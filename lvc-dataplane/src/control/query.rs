//! Answers that read the running state: listings, status, connections,
//! the configuration as a file (`save`), rates.

use super::{Control, err};
use crate::stats::{Drop, WorkerStats};
use lvc_proto::config::{ConfigFile, Fullnat, ServerConfig, ServiceConfig, Timeouts};
use lvc_proto::{
    ConnFilter, ConnInfo, ConnListing, ErrorCode, InterfaceStatus, Listing, Protocol, RealSpec,
    Request, Response, ServerInfo, ServiceInfo, Status,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

impl Control {
    /// The running configuration as a config file.
    pub fn save(&self) -> ConfigFile {
        // Lock order everywhere: shape_config before config.
        let shape = self
            .shape_config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (filters, sets) = self.filter_saved();
        let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let local = self.pool_addrs();
        ConfigFile {
            filters,
            sets,
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
                        from: key.from.prefixes().to_vec(),
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
                                check: Some(r.check.clone()).filter(|c| !c.is_empty()),
                                max_conns: Some(r.limits.max).filter(|&v| v != 0),
                                min_conns: Some(r.limits.min).filter(|&v| v != 0),
                                proxy_protocol: r.proxy,
                            })
                            .collect(),
                        check: Some(s.check.clone()).filter(|c| !c.is_empty()),
                        alert: s.alert.clone(),
                        sorry: s.sorry.as_ref().map(|so| so.sorry),
                        sloppy: s.sloppy,
                        allow: s.policy.allow.clone(),
                        deny: s.policy.deny.clone(),
                        conn_rate: s.policy.conn_rate,
                        conn_burst: s.policy.conn_burst,
                    }
                })
                .collect(),
        }
    }

    /// Connections matching `f`.
    pub fn conns(&self, f: &ConnFilter) -> ConnListing {
        let limit = f.limit.unwrap_or(100_000);
        let now = self.epoch.elapsed().as_secs() as u32;
        let sa = |a: crate::addr::Addr, p: u16| SocketAddr::new(a.ip(), p);
        let mut out = ConnListing::default();
        // A service's connections are its servers' (which tells the client
        // classes of one VIP and port apart): by its counters' identity.
        let of_service = f.service.and_then(|k| {
            let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
            cfg.get(&k).map(|s| s.stats.clone())
        });
        self.conntrack.walk(|c| {
            let proto = if c.proto == 6 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let (client, vip, real) = (
                sa(c.client.0, c.client.1),
                sa(c.vip().0, c.vip().1),
                sa(c.real().0, c.real().1),
            );
            if f.service.is_some_and(|s| {
                s.proto != proto || s.vip != vip.ip() || !s.ports.contains(vip.port())
            }) || of_service
                .as_ref()
                .is_some_and(|st| !Arc::ptr_eq(st, &c.server.service))
                || f.server.is_some_and(|r| {
                    r.addr != real.ip() || r.port.is_some_and(|p| p != real.port())
                })
                || f.client.is_some_and(|a| a != client.ip())
            {
                return true;
            }
            if out.conns.len() >= limit {
                // (One more than asked for: the list is cut short.)
                out.truncated = true;
                return false;
            }
            out.conns.push(ConnInfo {
                proto,
                client,
                vip,
                real,
                method: c.method(),
                state: c.state().name().to_owned(),
                expires_in: c.expires_in(now, &self.conntrack.timeouts),
                offloaded: c.offloaded(),
            });
            true
        });
        out.conns.sort_by_key(|c| (c.vip, c.client));
        out
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
                            health: r.health.info(),
                            limits: r.limits,
                            overloaded: r.limits.max != 0 && r.stats.overloaded(),
                            proxy_protocol: r.proxy,
                        })
                        .collect(),
                    check: s.check.clone(),
                    alert: s.alert.clone(),
                    sorry: s.sorry.as_ref().map(|so| ServerInfo {
                        addr: so.sorry.addr,
                        method: so.sorry.method,
                        // In use while no real server takes connections.
                        weight: u32::from(!s.servers.iter().any(|r| r.weight > 0 && r.health.up())),
                        active_conns: so.stats.active(),
                        inactive_conns: so.stats.inactive(),
                        stats: so.stats.snapshot(),
                        rates: so.stats.rates(),
                        health: None,
                        limits: Default::default(),
                        overloaded: false,
                        proxy_protocol: Default::default(),
                    }),
                    sloppy: s.sloppy,
                    policy: s.policy.clone(),
                    filtered: self.service_filtered(key, &s.stats),
                })
                .collect(),
            conn_capacity: self.conntrack.capacity() as u64,
        }
    }

    /// Connections evicted from a full table.
    pub fn conntrack_evicted(&self) -> u64 {
        self.conntrack.evicted()
    }

    /// TCP segments outside the tracked window (lvc's; XDP counts its own).
    pub fn tcp_out_of_window(&self) -> u64 {
        self.conntrack.out_of_window()
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
        counters.push(("worker_waits".into(), sum(&|w| w.waits.load(Relaxed))));
        counters.push(("worker_naps".into(), sum(&|w| w.naps.load(Relaxed))));
        counters.push((
            "xsk_rx_dropped".into(),
            sum(&|w| w.xsk_rx_dropped.load(Relaxed)),
        ));
        counters.push((
            "xsk_rx_ring_full".into(),
            sum(&|w| w.xsk_rx_ring_full.load(Relaxed)),
        ));
        counters.push((
            "xsk_fill_ring_empty".into(),
            sum(&|w| w.xsk_fill_ring_empty.load(Relaxed)),
        ));
        counters.push(("icmp_sent".into(), sum(&|w| w.icmp_sent.load(Relaxed))));
        counters.push((
            "fragments_made".into(),
            sum(&|w| w.fragments_made.load(Relaxed)),
        ));
        counters.push(("conntrack_evicted".into(), self.conntrack.evicted()));
        counters.push(("tcp_out_of_window".into(), self.conntrack.out_of_window()));
        let (wheel, replies) = self.conntrack.backlog();
        counters.push(("conntrack_wheel_entries".into(), wheel as u64));
        counters.push(("released_replies_pending".into(), replies as u64));
        {
            let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
            let persist = cfg.values().filter_map(|s| s.persistence.as_ref());
            let (n, full) = persist.fold((0, 0), |(n, f), p| {
                (n + p.templates.len() as u64, f + p.full.load(Relaxed))
            });
            counters.push(("persistence_templates".into(), n));
            counters.push(("persistence_templates_full".into(), full));
        }
        let o = &self.offload;
        counters.push(("offload_connections".into(), o.connections.load(Relaxed)));
        counters.push(("offload_flows".into(), o.flows.load(Relaxed)));
        counters.push(("offload_installed".into(), o.installed.load(Relaxed)));
        counters.push(("offload_retired".into(), o.retired.load(Relaxed)));
        counters.push(("offload_failed".into(), o.failed.load(Relaxed)));
        counters.push(("offload_in_slots".into(), o.in_slots.load(Relaxed)));
        if let Some(y) = &self.sync {
            counters.push(("sync_sent".into(), y.sent.load(Relaxed)));
            counters.push(("sync_received".into(), y.received.load(Relaxed)));
            counters.push(("sync_applied".into(), y.applied.load(Relaxed)));
            counters.push(("sync_refused".into(), y.refused.load(Relaxed)));
            counters.push(("sync_dropped".into(), y.dropped.load(Relaxed)));
        }
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
                    zero_copy: i.zero_copy,
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
            announced: self.announced(),
            draining: self.draining(),
            counters,
        }
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

    /// Refreshes the shaping classes' current rates.
    pub fn sample_shaping(&self, secs: f64) {
        self.shaping.load().sample(secs);
    }
}

impl Control {
    /// Answers a request of kind `Query`.
    pub(super) fn query(&self, req: Request) -> Response {
        match req {
            Request::List {} => Response::Listing(self.listing()),
            Request::Status {} => Response::Status(self.status()),
            Request::Save {} => Response::Config(self.save().render()),
            Request::Conns { filter } => Response::Conns(self.conns(&filter)),
            Request::ShapeList {} => Response::Shaping(self.shaping.load().listing()),
            Request::FilterList {} => Response::Filter(self.filter_listing()),
            other => Response::Error(err(
                ErrorCode::Internal,
                format!("{:?} is not a query", other.kind()),
            )),
        }
    }
}
