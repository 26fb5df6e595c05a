//! Prometheus text exposition (`--metrics ADDR`, `GET /metrics`).
//!
//! A deliberately tiny HTTP responder: one short-lived thread per scrape,
//! at most [`MAX_SCRAPES`] at once (more are answered 503 at once), each
//! with a bounded request size and a total deadline. Counters are read from the same atomics
//! `lvc-ctl` reads; nothing here is on the packet path.

use crate::control::Control;
use crate::stats::{Drop, WorkerStats};
use lvc_ebpf::Stat;
use lvc_proto::{Listing, ServerInfo, ServiceInfo};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Scrapes served at once (a thread each).
pub const MAX_SCRAPES: usize = 8;

/// The longest one scrape may take, reading the request included.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);

/// Serves scrapes until `shutdown`.
pub fn serve(listener: TcpListener, control: Arc<Control>, shutdown: Arc<AtomicBool>) {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let active = Arc::new(AtomicUsize::new(0));
    while !shutdown.load(Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                if active.load(Relaxed) >= MAX_SCRAPES {
                    let _ = stream.set_nonblocking(true);
                    let _ = stream.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                let slot = super::socket::ClientSlot::take(&active);
                let control = control.clone();
                let _ = std::thread::Builder::new()
                    .name("lvc-metrics-scrape".into())
                    .spawn(move || {
                        let _slot = slot;
                        answer(stream, &control);
                    });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn answer(mut s: TcpStream, control: &Control) {
    let until = Instant::now() + SCRAPE_DEADLINE;
    let _ = s.set_nonblocking(false);
    let _ = s.set_write_timeout(Some(SCRAPE_DEADLINE));
    let mut buf = [0u8; 4096];
    let mut len = 0;
    // Read the request head (bounded in size and, however slowly it comes,
    // in time).
    while len < buf.len() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match s.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) =
        if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                render(control),
            )
        } else {
            (
                "404 Not Found",
                "text/plain",
                "lvc serves /metrics only\n".to_owned(),
            )
        };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// What one scrape reads from the dataplane: plain data, so the exposition
/// can be rendered (and tested) without a running [`Control`].
pub struct Scrape<'a> {
    pub uptime_secs: u64,
    pub listing: Listing,
    /// Each worker's counters, in queue order.
    pub workers: &'a [Arc<WorkerStats>],
    /// The XDP program's counters.
    pub xdp: Vec<(Stat, u64)>,
    pub flows: u64,
    pub flow_capacity: u64,
    pub evicted: u64,
    pub out_of_window: u64,
}

impl<'a> Scrape<'a> {
    /// Reads everything a scrape shows.
    pub fn of(control: &'a Control) -> Self {
        let listing = control.listing();
        let status = control.status();
        Self {
            uptime_secs: status.uptime_secs,
            listing,
            workers: control.worker_stats(),
            xdp: control.xdp_counters(),
            flows: status.flows,
            flow_capacity: status.flow_capacity,
            evicted: control.conntrack_evicted(),
            out_of_window: control.tcp_out_of_window(),
        }
    }
}

/// The whole exposition.
pub fn render(control: &Control) -> String {
    exposition(&Scrape::of(control))
}

/// One value of a family, and the label, if any, that tells it from the
/// other values of the same service, server or worker (`direction="in"`).
type Value = (Option<(&'static str, &'static str)>, u64);

/// What a family's values belong to, which gives their leading labels, and
/// how to read them from it.
enum Samples {
    /// The whole dataplane: no leading label.
    Global(fn(&Scrape) -> Vec<Value>),
    /// Each virtual service: `service`.
    Service(fn(&ServiceInfo) -> Vec<Value>),
    /// Each real server of each service: `service`, `server`.
    Server(fn(&ServerInfo) -> Vec<Value>),
    /// Each worker: `worker`.
    Worker(fn(&WorkerStats) -> Vec<Value>),
}

use Samples::{Global, Server, Service, Worker};

/// One metric family: a row of [`METRICS`].
struct Metric {
    name: &'static str,
    /// `counter` or `gauge`.
    kind: &'static str,
    help: &'static str,
    samples: Samples,
}

const fn counter(name: &'static str, help: &'static str, samples: Samples) -> Metric {
    Metric {
        name,
        kind: "counter",
        help,
        samples,
    }
}

const fn gauge(name: &'static str, help: &'static str, samples: Samples) -> Metric {
    Metric {
        name,
        kind: "gauge",
        help,
        samples,
    }
}

/// A single unlabelled value.
fn one(v: u64) -> Vec<Value> {
    vec![(None, v)]
}

/// Values told apart by `label`.
fn by(label: &'static str, values: impl IntoIterator<Item = (&'static str, u64)>) -> Vec<Value> {
    values
        .into_iter()
        .map(|(value, v)| (Some((label, value)), v))
        .collect()
}

/// Every family, in exposition order. Adding a metric is adding a row.
const METRICS: &[Metric] = &[
    gauge("lvc_up", "1 while lvc-dataplane runs.", Global(|_| one(1))),
    gauge(
        "lvc_uptime_seconds",
        "Seconds since lvc-dataplane started.",
        Global(|s| one(s.uptime_secs)),
    ),
    counter(
        "lvc_service_connections_total",
        "Connections scheduled to the virtual service.",
        Service(|s| one(s.stats.conns)),
    ),
    counter(
        "lvc_service_packets_total",
        "Packets of the virtual service, by direction (in: client to server).",
        Service(|s| {
            let c = &s.stats;
            by("direction", [("in", c.packets_in), ("out", c.packets_out)])
        }),
    ),
    counter(
        "lvc_service_bytes_total",
        "Bytes of the virtual service, by direction.",
        Service(|s| {
            let c = &s.stats;
            by("direction", [("in", c.bytes_in), ("out", c.bytes_out)])
        }),
    ),
    counter(
        "lvc_service_filtered_packets_total",
        "Packets to the virtual service dropped by the filter, its allow/deny lists or its connection rate limit.",
        Service(|s| one(s.filtered.packets)),
    ),
    counter(
        "lvc_server_connections_total",
        "Connections scheduled to the real server.",
        Server(|r| one(r.stats.conns)),
    ),
    counter(
        "lvc_server_packets_total",
        "Packets of the real server, by direction.",
        Server(|r| {
            let c = &r.stats;
            by("direction", [("in", c.packets_in), ("out", c.packets_out)])
        }),
    ),
    counter(
        "lvc_server_bytes_total",
        "Bytes of the real server, by direction.",
        Server(|r| {
            let c = &r.stats;
            by("direction", [("in", c.bytes_in), ("out", c.bytes_out)])
        }),
    ),
    gauge(
        "lvc_server_connections",
        "Tracked connections of the real server (active: established TCP).",
        Server(|r| {
            by(
                "state",
                [("active", r.active_conns), ("inactive", r.inactive_conns)],
            )
        }),
    ),
    gauge(
        "lvc_server_health_up",
        "1 while the real server passes its health check, 0 while it is out (checked servers only).",
        Server(|r| r.health.iter().map(|h| (None, u64::from(h.up))).collect()),
    ),
    gauge(
        "lvc_server_overloaded",
        "1 while the real server is at its upper connection threshold and takes no new connections (servers with --max-conns only).",
        Server(|r| {
            (r.limits.max != 0)
                .then(|| (None, u64::from(r.overloaded)))
                .into_iter()
                .collect()
        }),
    ),
    counter(
        "lvc_server_health_checks_total",
        "Health-check probes of the real server, by result.",
        Server(|r| {
            r.health
                .iter()
                .flat_map(|h| {
                    by(
                        "result",
                        [("ok", h.checks - h.failures), ("failed", h.failures)],
                    )
                })
                .collect()
        }),
    ),
    counter(
        "lvc_server_health_transitions_total",
        "Changes of the real server's health (up to down and back).",
        Server(|r| r.health.iter().map(|h| (None, h.transitions)).collect()),
    ),
    counter(
        "lvc_worker_icmp_sent_total",
        "ICMP errors originated (time exceeded, fragmentation needed).",
        Worker(|w| one(w.icmp_sent.load(Relaxed))),
    ),
    counter(
        "lvc_worker_fragments_made_total",
        "IPv4 fragments made of packets too big for their next link.",
        Worker(|w| one(w.fragments_made.load(Relaxed))),
    ),
    counter(
        "lvc_worker_rx_packets_total",
        "Frames received from AF_XDP.",
        Worker(|w| one(w.rx_packets.load(Relaxed))),
    ),
    counter(
        "lvc_worker_rx_bytes_total",
        "Bytes received from AF_XDP.",
        Worker(|w| one(w.rx_bytes.load(Relaxed))),
    ),
    counter(
        "lvc_worker_tx_packets_total",
        "Frames queued for transmission.",
        Worker(|w| one(w.tx_packets.load(Relaxed))),
    ),
    counter(
        "lvc_worker_tx_bytes_total",
        "Bytes queued for transmission.",
        Worker(|w| one(w.tx_bytes.load(Relaxed))),
    ),
    counter(
        "lvc_worker_tx_kicks_total",
        "sendto() calls made to kick copy-mode TX.",
        Worker(|w| one(w.tx_kicks.load(Relaxed))),
    ),
    counter(
        "lvc_worker_waits_total",
        "Times the worker, out of frames, slept until the next one came.",
        Worker(|w| one(w.waits.load(Relaxed))),
    ),
    counter(
        "lvc_worker_naps_total",
        "Times the worker, out of frames that came often, napped for --coalesce-usecs instead of waiting for the next one.",
        Worker(|w| one(w.naps.load(Relaxed))),
    ),
    counter(
        "lvc_worker_xsk_rx_dropped_total",
        "Frames XDP steered to the worker's AF_XDP sockets that the kernel dropped for want of a fill-ring frame.",
        Worker(|w| one(w.xsk_rx_dropped.load(Relaxed))),
    ),
    counter(
        "lvc_worker_xsk_rx_ring_full_total",
        "Frames the kernel dropped because a worker socket's RX ring was full.",
        Worker(|w| one(w.xsk_rx_ring_full.load(Relaxed))),
    ),
    counter(
        "lvc_worker_xsk_fill_ring_empty_total",
        "Times the kernel found a worker socket's fill ring empty.",
        Worker(|w| one(w.xsk_fill_ring_empty.load(Relaxed))),
    ),
    counter(
        "lvc_worker_drops_total",
        "Frames a worker dropped, by reason.",
        Worker(|w| by("reason", Drop::ALL.map(|d| (d.name(), w.drops(d))))),
    ),
    counter(
        "lvc_xdp_packets_total",
        "Frames seen by the XDP program, by decision.",
        Global(|s| by("decision", s.xdp.iter().map(|&(st, v)| (st.name(), v)))),
    ),
    gauge(
        "lvc_conntrack_entries",
        "Connections tracked.",
        Global(|s| one(s.flows)),
    ),
    counter(
        "lvc_conntrack_evicted_total",
        "Unestablished connections evicted from a full table.",
        Global(|s| one(s.evicted)),
    ),
    counter(
        "lvc_tcp_out_of_window_total",
        "TCP segments outside the window lvc tracks (blind RSTs and FINs among them): they changed no connection's state.",
        Global(|s| one(s.out_of_window)),
    ),
    gauge(
        "lvc_conntrack_capacity",
        "Most connections that can be tracked.",
        Global(|s| one(s.flow_capacity)),
    ),
];

/// One metric family being written: HELP, TYPE, then samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, m: &Metric) -> Self {
        let (name, kind, help) = (m.name, m.kind, m.help);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Self { out, name }
    }

    /// The values of one service, server or worker (`labels`, none for
    /// [`Global`]).
    fn values(&mut self, labels: &[(&str, &str)], values: Vec<Value>) {
        for (extra, v) in values {
            let mut all = labels.to_vec();
            all.extend(extra);
            self.sample(&all, v);
        }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition of one scrape: every row of [`METRICS`], in order.
pub fn exposition(scrape: &Scrape) -> String {
    let services = &scrape.listing.services;
    // (A client class's label names its class: `tcp:VIP:80 from 10.0.0.0/8`.)
    let svc_name = |s: &ServiceInfo| {
        format!(
            "{}:{}{}",
            s.service.proto,
            s.service.endpoint(),
            s.service.class_suffix()
        )
    };
    let mut out = String::new();
    for m in METRICS {
        let mut f = Family::new(&mut out, m);
        match m.samples {
            Global(read) => f.values(&[], read(scrape)),
            Service(read) => {
                for s in services {
                    f.values(&[("service", &svc_name(s))], read(s));
                }
            }
            Server(read) => {
                for s in services {
                    let svc = svc_name(s);
                    for r in &s.servers {
                        f.values(
                            &[("service", &svc), ("server", &r.addr.to_string())],
                            read(r),
                        );
                    }
                }
            }
            Worker(read) => {
                for (q, w) in scrape.workers.iter().enumerate() {
                    f.values(&[("worker", &q.to_string())], read(w));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lvc_proto::{Counters, Method, Rates, Scheduler};

    fn counters(base: u64) -> Counters {
        Counters {
            conns: base + 1,
            packets_in: base + 2,
            packets_out: base + 3,
            bytes_in: base + 4,
            bytes_out: base + 5,
        }
    }

    fn server(addr: &str, base: u64) -> ServerInfo {
        ServerInfo {
            addr: addr.parse().unwrap(),
            method: Method::Nat,
            weight: 1,
            active_conns: base + 6,
            inactive_conns: base + 7,
            stats: counters(base),
            rates: Rates::default(),
            // One server is health-checked.
            health: (base == 30).then(|| lvc_proto::health::HealthInfo {
                up: false,
                check: "tcp".into(),
                last: "connect: connection refused".into(),
                since_secs: 5,
                checks: base + 8,
                failures: 3,
                transitions: 1,
            }),
            // One server has connection thresholds, and is at them.
            limits: lvc_proto::ConnLimits {
                max: if base == 20 { 26 } else { 0 },
                min: 0,
            },
            overloaded: base == 20,
            proxy_protocol: Default::default(),
        }
    }

    fn service(key: &str, base: u64, servers: Vec<ServerInfo>) -> ServiceInfo {
        ServiceInfo {
            service: key.parse().unwrap(),
            scheduler: Scheduler::Rr,
            persistent: None,
            netmask: None,
            servers,
            stats: counters(base),
            rates: Rates::default(),
            check: Default::default(),
            alert: None,
            sorry: None,
            sloppy: false,
            policy: Default::default(),
            filtered: Default::default(),
        }
    }

    /// Two workers whose every counter differs.
    fn workers() -> Vec<Arc<WorkerStats>> {
        (0..2u64)
            .map(|q| {
                let w = WorkerStats::default();
                let base = 1000 * (q + 1);
                w.rx_packets.store(base + 1, Relaxed);
                w.rx_bytes.store(base + 2, Relaxed);
                w.tx_packets.store(base + 3, Relaxed);
                w.tx_bytes.store(base + 4, Relaxed);
                w.tx_kicks.store(base + 5, Relaxed);
                w.icmp_sent.store(base + 6, Relaxed);
                w.fragments_made.store(base + 7, Relaxed);
                w.xsk_rx_dropped.store(base + 8, Relaxed);
                w.xsk_rx_ring_full.store(base + 9, Relaxed);
                w.xsk_fill_ring_empty.store(base + 10, Relaxed);
                w.waits.store(base + 11, Relaxed);
                w.naps.store(base + 12, Relaxed);
                for (i, d) in w.drops.iter().enumerate() {
                    d.store(base + 100 + i as u64, Relaxed);
                }
                Arc::new(w)
            })
            .collect()
    }

    /// A representative scrape: an IPv4 multi-port service with two real
    /// servers, an IPv6 service with one, a service with none; every
    /// number distinct so a swapped field shows.
    fn scrape(workers: &[Arc<WorkerStats>]) -> Scrape<'_> {
        Scrape {
            uptime_secs: 42,
            listing: Listing {
                services: vec![
                    service(
                        "tcp:10.0.0.10:21,22",
                        10,
                        vec![server("192.168.1.1:21", 20), server("192.168.1.2:0", 30)],
                    ),
                    service(
                        "udp:[2001:db8::1]:53",
                        40,
                        vec![server("[2001:db8::2]:5353", 50)],
                    ),
                    service("tcp:10.0.0.11:80", 60, vec![]),
                ],
                conn_capacity: 1000,
            },
            workers,
            xdp: Stat::ALL
                .iter()
                .enumerate()
                .map(|(i, &s)| (s, 500 + i as u64))
                .collect(),
            flows: 7,
            flow_capacity: 1 << 20,
            evicted: 3,
            out_of_window: 4,
        }
    }

    /// The exposition as the hand-written renderer produced it for
    /// [`scrape`], before it was made table-driven: family order, sample
    /// order, labels and HELP/TYPE lines are pinned byte for byte.
    const EXPECTED: &str = r#"# HELP lvc_up 1 while lvc-dataplane runs.
# TYPE lvc_up gauge
lvc_up 1
# HELP lvc_uptime_seconds Seconds since lvc-dataplane started.
# TYPE lvc_uptime_seconds gauge
lvc_uptime_seconds 42
# HELP lvc_service_connections_total Connections scheduled to the virtual service.
# TYPE lvc_service_connections_total counter
lvc_service_connections_total{service="tcp:10.0.0.10:21,22"} 11
lvc_service_connections_total{service="udp:[2001:db8::1]:53"} 41
lvc_service_connections_total{service="tcp:10.0.0.11:80"} 61
# HELP lvc_service_packets_total Packets of the virtual service, by direction (in: client to server).
# TYPE lvc_service_packets_total counter
lvc_service_packets_total{service="tcp:10.0.0.10:21,22",direction="in"} 12
lvc_service_packets_total{service="tcp:10.0.0.10:21,22",direction="out"} 13
lvc_service_packets_total{service="udp:[2001:db8::1]:53",direction="in"} 42
lvc_service_packets_total{service="udp:[2001:db8::1]:53",direction="out"} 43
lvc_service_packets_total{service="tcp:10.0.0.11:80",direction="in"} 62
lvc_service_packets_total{service="tcp:10.0.0.11:80",direction="out"} 63
# HELP lvc_service_bytes_total Bytes of the virtual service, by direction.
# TYPE lvc_service_bytes_total counter
lvc_service_bytes_total{service="tcp:10.0.0.10:21,22",direction="in"} 14
lvc_service_bytes_total{service="tcp:10.0.0.10:21,22",direction="out"} 15
lvc_service_bytes_total{service="udp:[2001:db8::1]:53",direction="in"} 44
lvc_service_bytes_total{service="udp:[2001:db8::1]:53",direction="out"} 45
lvc_service_bytes_total{service="tcp:10.0.0.11:80",direction="in"} 64
lvc_service_bytes_total{service="tcp:10.0.0.11:80",direction="out"} 65
# HELP lvc_service_filtered_packets_total Packets to the virtual service dropped by the filter, its allow/deny lists or its connection rate limit.
# TYPE lvc_service_filtered_packets_total counter
lvc_service_filtered_packets_total{service="tcp:10.0.0.10:21,22"} 0
lvc_service_filtered_packets_total{service="udp:[2001:db8::1]:53"} 0
lvc_service_filtered_packets_total{service="tcp:10.0.0.11:80"} 0
# HELP lvc_server_connections_total Connections scheduled to the real server.
# TYPE lvc_server_connections_total counter
lvc_server_connections_total{service="tcp:10.0.0.10:21,22",server="192.168.1.1:21"} 21
lvc_server_connections_total{service="tcp:10.0.0.10:21,22",server="192.168.1.2:0"} 31
lvc_server_connections_total{service="udp:[2001:db8::1]:53",server="[2001:db8::2]:5353"} 51
# HELP lvc_server_packets_total Packets of the real server, by direction.
# TYPE lvc_server_packets_total counter
lvc_server_packets_total{service="tcp:10.0.0.10:21,22",server="192.168.1.1:21",direction="in"} 22
lvc_server_packets_total{service="tcp:10.0.0.10:21,22",server="192.168.1.1:21",direction="out"} 23
lvc_server_packets_total{service="tcp:10.0.0.10:21,22",server="192.168.1.2:0",direction="in"} 32
lvc_server_packets_total{service="tcp:10.0.0.10:21,22",server="192.168.1.2:0",direction="out"} 33
lvc_server_packets_total{service="udp:[2001:db8::1]:53",server="[2001:db8::2]:5353",direction="in"} 52
lvc_server_packets_total{service="udp:[2001:db8::1]:53",server="[2001:db8::2]:5353",direction="out"} 53
# HELP lvc_server_bytes_total Bytes of the real server, by direction.
# TYPE lvc_server_bytes_total counter
lvc_server_bytes_total{service="tcp:10.0.0.10:21,22",server="192.168.1.1:21",direction="in"} 24
lvc_server_bytes_total{service="tcp:10.0.0.10:21,22",server="192.168.1.1:21",direction="out"} 25
lvc_server_bytes_total{service="tcp:10.0.0.10:21,22",server="192.168.1.2:0",direction="in"} 34
lvc_server_bytes_total{service="tcp:10.0.0.10:21,22",server="192.168.1.2:0",direction="out"} 35
lvc_server_bytes_total{service="udp:[2001:db8::1]:53",server="[2001:db8::2]:5353",direction="in"} 54
lvc_server_bytes_total{service="udp:[2001:db8::1]:53",server="[2001:db8::2]:5353",direction="out"} 55
# HELP lvc_server_connections Tracked connections of the real server (active: established TCP).
# TYPE lvc_server_connections gauge
lvc_server_connections{service="tcp:10.0.0.10:21,22",server="192.168.1.1:21",state="active"} 26
lvc_server_connections{service="tcp:10.0.0.10:21,22",server="192.168.1.1:21",state="inactive"} 27
lvc_server_connections{service="tcp:10.0.0.10:21,22",server="192.168.1.2:0",state="active"} 36
lvc_server_connections{service="tcp:10.0.0.10:21,22",server="192.168.1.2:0",state="inactive"} 37
lvc_server_connections{service="udp:[2001:db8::1]:53",server="[2001:db8::2]:5353",state="active"} 56
lvc_server_connections{service="udp:[2001:db8::1]:53",server="[2001:db8::2]:5353",state="inactive"} 57
# HELP lvc_server_health_up 1 while the real server passes its health check, 0 while it is out (checked servers only).
# TYPE lvc_server_health_up gauge
lvc_server_health_up{service="tcp:10.0.0.10:21,22",server="192.168.1.2:0"} 0
# HELP lvc_server_overloaded 1 while the real server is at its upper connection threshold and takes no new connections (servers with --max-conns only).
# TYPE lvc_server_overloaded gauge
lvc_server_overloaded{service="tcp:10.0.0.10:21,22",server="192.168.1.1:21"} 1
# HELP lvc_server_health_checks_total Health-check probes of the real server, by result.
# TYPE lvc_server_health_checks_total counter
lvc_server_health_checks_total{service="tcp:10.0.0.10:21,22",server="192.168.1.2:0",result="ok"} 35
lvc_server_health_checks_total{service="tcp:10.0.0.10:21,22",server="192.168.1.2:0",result="failed"} 3
# HELP lvc_server_health_transitions_total Changes of the real server's health (up to down and back).
# TYPE lvc_server_health_transitions_total counter
lvc_server_health_transitions_total{service="tcp:10.0.0.10:21,22",server="192.168.1.2:0"} 1
# HELP lvc_worker_icmp_sent_total ICMP errors originated (time exceeded, fragmentation needed).
# TYPE lvc_worker_icmp_sent_total counter
lvc_worker_icmp_sent_total{worker="0"} 1006
lvc_worker_icmp_sent_total{worker="1"} 2006
# HELP lvc_worker_fragments_made_total IPv4 fragments made of packets too big for their next link.
# TYPE lvc_worker_fragments_made_total counter
lvc_worker_fragments_made_total{worker="0"} 1007
lvc_worker_fragments_made_total{worker="1"} 2007
# HELP lvc_worker_rx_packets_total Frames received from AF_XDP.
# TYPE lvc_worker_rx_packets_total counter
lvc_worker_rx_packets_total{worker="0"} 1001
lvc_worker_rx_packets_total{worker="1"} 2001
# HELP lvc_worker_rx_bytes_total Bytes received from AF_XDP.
# TYPE lvc_worker_rx_bytes_total counter
lvc_worker_rx_bytes_total{worker="0"} 1002
lvc_worker_rx_bytes_total{worker="1"} 2002
# HELP lvc_worker_tx_packets_total Frames queued for transmission.
# TYPE lvc_worker_tx_packets_total counter
lvc_worker_tx_packets_total{worker="0"} 1003
lvc_worker_tx_packets_total{worker="1"} 2003
# HELP lvc_worker_tx_bytes_total Bytes queued for transmission.
# TYPE lvc_worker_tx_bytes_total counter
lvc_worker_tx_bytes_total{worker="0"} 1004
lvc_worker_tx_bytes_total{worker="1"} 2004
# HELP lvc_worker_tx_kicks_total sendto() calls made to kick copy-mode TX.
# TYPE lvc_worker_tx_kicks_total counter
lvc_worker_tx_kicks_total{worker="0"} 1005
lvc_worker_tx_kicks_total{worker="1"} 2005
# HELP lvc_worker_waits_total Times the worker, out of frames, slept until the next one came.
# TYPE lvc_worker_waits_total counter
lvc_worker_waits_total{worker="0"} 1011
lvc_worker_waits_total{worker="1"} 2011
# HELP lvc_worker_naps_total Times the worker, out of frames that came often, napped for --coalesce-usecs instead of waiting for the next one.
# TYPE lvc_worker_naps_total counter
lvc_worker_naps_total{worker="0"} 1012
lvc_worker_naps_total{worker="1"} 2012
# HELP lvc_worker_xsk_rx_dropped_total Frames XDP steered to the worker's AF_XDP sockets that the kernel dropped for want of a fill-ring frame.
# TYPE lvc_worker_xsk_rx_dropped_total counter
lvc_worker_xsk_rx_dropped_total{worker="0"} 1008
lvc_worker_xsk_rx_dropped_total{worker="1"} 2008
# HELP lvc_worker_xsk_rx_ring_full_total Frames the kernel dropped because a worker socket's RX ring was full.
# TYPE lvc_worker_xsk_rx_ring_full_total counter
lvc_worker_xsk_rx_ring_full_total{worker="0"} 1009
lvc_worker_xsk_rx_ring_full_total{worker="1"} 2009
# HELP lvc_worker_xsk_fill_ring_empty_total Times the kernel found a worker socket's fill ring empty.
# TYPE lvc_worker_xsk_fill_ring_empty_total counter
lvc_worker_xsk_fill_ring_empty_total{worker="0"} 1010
lvc_worker_xsk_fill_ring_empty_total{worker="1"} 2010
# HELP lvc_worker_drops_total Frames a worker dropped, by reason.
# TYPE lvc_worker_drops_total counter
lvc_worker_drops_total{worker="0",reason="malformed"} 1100
lvc_worker_drops_total{worker="0",reason="not_ip"} 1101
lvc_worker_drops_total{worker="0",reason="fragment"} 1102
lvc_worker_drops_total{worker="0",reason="protocol"} 1103
lvc_worker_drops_total{worker="0",reason="no_service"} 1104
lvc_worker_drops_total{worker="0",reason="no_server"} 1105
lvc_worker_drops_total{worker="0",reason="no_flow"} 1106
lvc_worker_drops_total{worker="0",reason="table_full"} 1107
lvc_worker_drops_total{worker="0",reason="no_route"} 1108
lvc_worker_drops_total{worker="0",reason="neigh_unresolved"} 1109
lvc_worker_drops_total{worker="0",reason="egress_not_served"} 1110
lvc_worker_drops_total{worker="0",reason="ttl_exceeded"} 1111
lvc_worker_drops_total{worker="0",reason="too_big"} 1112
lvc_worker_drops_total{worker="0",reason="tx_full"} 1113
lvc_worker_drops_total{worker="0",reason="snat_exhausted"} 1114
lvc_worker_drops_total{worker="0",reason="policed"} 1115
lvc_worker_drops_total{worker="0",reason="shape_queue"} 1116
lvc_worker_drops_total{worker="0",reason="reply_steering"} 1117
lvc_worker_drops_total{worker="0",reason="server_down"} 1118
lvc_worker_drops_total{worker="0",reason="icmp_rate_limited"} 1119
lvc_worker_drops_total{worker="0",reason="reply_collision"} 1120
lvc_worker_drops_total{worker="0",reason="route_blackhole"} 1121
lvc_worker_drops_total{worker="0",reason="route_unreachable"} 1122
lvc_worker_drops_total{worker="0",reason="route_prohibit"} 1123
lvc_worker_drops_total{worker="0",reason="filtered"} 1124
lvc_worker_drops_total{worker="0",reason="conn_rate"} 1125
lvc_worker_drops_total{worker="1",reason="malformed"} 2100
lvc_worker_drops_total{worker="1",reason="not_ip"} 2101
lvc_worker_drops_total{worker="1",reason="fragment"} 2102
lvc_worker_drops_total{worker="1",reason="protocol"} 2103
lvc_worker_drops_total{worker="1",reason="no_service"} 2104
lvc_worker_drops_total{worker="1",reason="no_server"} 2105
lvc_worker_drops_total{worker="1",reason="no_flow"} 2106
lvc_worker_drops_total{worker="1",reason="table_full"} 2107
lvc_worker_drops_total{worker="1",reason="no_route"} 2108
lvc_worker_drops_total{worker="1",reason="neigh_unresolved"} 2109
lvc_worker_drops_total{worker="1",reason="egress_not_served"} 2110
lvc_worker_drops_total{worker="1",reason="ttl_exceeded"} 2111
lvc_worker_drops_total{worker="1",reason="too_big"} 2112
lvc_worker_drops_total{worker="1",reason="tx_full"} 2113
lvc_worker_drops_total{worker="1",reason="snat_exhausted"} 2114
lvc_worker_drops_total{worker="1",reason="policed"} 2115
lvc_worker_drops_total{worker="1",reason="shape_queue"} 2116
lvc_worker_drops_total{worker="1",reason="reply_steering"} 2117
lvc_worker_drops_total{worker="1",reason="server_down"} 2118
lvc_worker_drops_total{worker="1",reason="icmp_rate_limited"} 2119
lvc_worker_drops_total{worker="1",reason="reply_collision"} 2120
lvc_worker_drops_total{worker="1",reason="route_blackhole"} 2121
lvc_worker_drops_total{worker="1",reason="route_unreachable"} 2122
lvc_worker_drops_total{worker="1",reason="route_prohibit"} 2123
lvc_worker_drops_total{worker="1",reason="filtered"} 2124
lvc_worker_drops_total{worker="1",reason="conn_rate"} 2125
# HELP lvc_xdp_packets_total Frames seen by the XDP program, by decision.
# TYPE lvc_xdp_packets_total counter
lvc_xdp_packets_total{decision="rx"} 500
lvc_xdp_packets_total{decision="pass_not_ip"} 501
lvc_xdp_packets_total{decision="pass_malformed"} 502
lvc_xdp_packets_total{decision="pass_fragment"} 503
lvc_xdp_packets_total{decision="pass_other_proto"} 504
lvc_xdp_packets_total{decision="pass_no_match"} 505
lvc_xdp_packets_total{decision="pass_no_socket"} 506
lvc_xdp_packets_total{decision="redirect_vip"} 507
lvc_xdp_packets_total{decision="redirect_real"} 508
lvc_xdp_packets_total{decision="flow_forwarded"} 509
lvc_xdp_packets_total{decision="flow_to_lvc"} 510
lvc_xdp_packets_total{decision="drop_no_dataplane"} 511
lvc_xdp_packets_total{decision="flow_out_of_window"} 512
lvc_xdp_packets_total{decision="drop_filter"} 513
lvc_xdp_packets_total{decision="drop_service_acl"} 514
# HELP lvc_conntrack_entries Connections tracked.
# TYPE lvc_conntrack_entries gauge
lvc_conntrack_entries 7
# HELP lvc_conntrack_evicted_total Unestablished connections evicted from a full table.
# TYPE lvc_conntrack_evicted_total counter
lvc_conntrack_evicted_total 3
# HELP lvc_tcp_out_of_window_total TCP segments outside the window lvc tracks (blind RSTs and FINs among them): they changed no connection's state.
# TYPE lvc_tcp_out_of_window_total counter
lvc_tcp_out_of_window_total 4
# HELP lvc_conntrack_capacity Most connections that can be tracked.
# TYPE lvc_conntrack_capacity gauge
lvc_conntrack_capacity 1048576
"#;

    #[test]
    fn exposition_is_pinned() {
        let w = workers();
        let got = exposition(&scrape(&w));
        // Line by line first, so a difference names its line.
        for (i, (g, e)) in got.lines().zip(EXPECTED.lines()).enumerate() {
            assert_eq!(g, e, "line {}", i + 1);
        }
        assert_eq!(got, EXPECTED);
    }

    #[test]
    fn empty_scrape_has_every_family() {
        let got = exposition(&Scrape {
            uptime_secs: 0,
            listing: Listing::default(),
            workers: &[],
            xdp: Vec::new(),
            flows: 0,
            flow_capacity: 0,
            evicted: 0,
            out_of_window: 0,
        });
        let helps = got.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = got.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!((helps, types), (32, 32));
        let samples: Vec<&str> = got.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "lvc_up 1",
                "lvc_uptime_seconds 0",
                "lvc_conntrack_entries 0",
                "lvc_conntrack_evicted_total 0",
                "lvc_tcp_out_of_window_total 0",
                "lvc_conntrack_capacity 0",
            ]
        );
    }
}
