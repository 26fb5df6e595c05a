//! Prometheus text exposition (`--metrics ADDR`, `GET /metrics`).
//!
//! A deliberately tiny HTTP responder: one short-lived thread per scrape,
//! bounded request size and time. Counters are read from the same atomics
//! `lvc-ctl` reads; nothing here is on the packet path.

use crate::control::Control;
use crate::stats::Drop;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

/// Serves scrapes until `shutdown`.
pub fn serve(listener: TcpListener, control: Arc<Control>, shutdown: Arc<AtomicBool>) {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    while !shutdown.load(Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let control = control.clone();
                let _ = std::thread::Builder::new()
                    .name("lvc-metrics-scrape".into())
                    .spawn(move || answer(stream, &control));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn answer(mut s: TcpStream, control: &Control) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    let mut len = 0;
    // Read the request head (bounded).
    while len < buf.len() {
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

/// One metric family: HELP, TYPE, then samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Self { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
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

/// The whole exposition.
pub fn render(control: &Control) -> String {
    let mut out = String::new();
    let listing = control.listing();
    let status = control.status();

    let mut f = Family::new(&mut out, "lvc_up", "gauge", "1 while lvc-dataplane runs.");
    f.sample("lvc_up", &[], 1);
    let mut f = Family::new(
        &mut out,
        "lvc_uptime_seconds",
        "gauge",
        "Seconds since lvc-dataplane started.",
    );
    f.sample("lvc_uptime_seconds", &[], status.uptime_secs);

    let svc_name =
        |s: &lvc_proto::ServiceInfo| format!("{}:{}", s.service.proto, s.service.endpoint());
    {
        let n = "lvc_service_connections_total";
        let mut f = Family::new(
            &mut out,
            n,
            "counter",
            "Connections scheduled to the virtual service.",
        );
        for s in &listing.services {
            f.sample(n, &[("service", &svc_name(s))], s.stats.conns);
        }
    }
    {
        let n = "lvc_service_packets_total";
        let mut f = Family::new(
            &mut out,
            n,
            "counter",
            "Packets of the virtual service, by direction (in: client to server).",
        );
        for s in &listing.services {
            let svc = svc_name(s);
            f.sample(
                n,
                &[("service", &svc), ("direction", "in")],
                s.stats.packets_in,
            );
            f.sample(
                n,
                &[("service", &svc), ("direction", "out")],
                s.stats.packets_out,
            );
        }
    }
    {
        let n = "lvc_service_bytes_total";
        let mut f = Family::new(
            &mut out,
            n,
            "counter",
            "Bytes of the virtual service, by direction.",
        );
        for s in &listing.services {
            let svc = svc_name(s);
            f.sample(
                n,
                &[("service", &svc), ("direction", "in")],
                s.stats.bytes_in,
            );
            f.sample(
                n,
                &[("service", &svc), ("direction", "out")],
                s.stats.bytes_out,
            );
        }
    }
    {
        let n = "lvc_server_connections_total";
        let mut f = Family::new(
            &mut out,
            n,
            "counter",
            "Connections scheduled to the real server.",
        );
        for s in &listing.services {
            for r in &s.servers {
                f.sample(
                    n,
                    &[("service", &svc_name(s)), ("server", &r.addr.to_string())],
                    r.stats.conns,
                );
            }
        }
    }
    type Split = fn(&lvc_proto::ServerInfo) -> [(&'static str, u64); 2];
    let split: [(&str, &str, &str, &str, Split); 3] = [
        (
            "lvc_server_packets_total",
            "counter",
            "Packets of the real server, by direction.",
            "direction",
            |r| [("in", r.stats.packets_in), ("out", r.stats.packets_out)],
        ),
        (
            "lvc_server_bytes_total",
            "counter",
            "Bytes of the real server, by direction.",
            "direction",
            |r| [("in", r.stats.bytes_in), ("out", r.stats.bytes_out)],
        ),
        (
            "lvc_server_connections",
            "gauge",
            "Tracked connections of the real server (active: established TCP).",
            "state",
            |r| [("active", r.active_conns), ("inactive", r.inactive_conns)],
        ),
    ];
    for (n, kind, help, label, get) in split {
        let mut f = Family::new(&mut out, n, kind, help);
        for s in &listing.services {
            let svc = svc_name(s);
            for r in &s.servers {
                let srv = r.addr.to_string();
                for (value_label, v) in get(r) {
                    f.sample(
                        n,
                        &[("service", &svc), ("server", &srv), (label, value_label)],
                        v,
                    );
                }
            }
        }
    }

    let workers = control.worker_stats();
    type Get = fn(&crate::stats::WorkerStats) -> u64;
    let per_worker: [(&str, &str, Get); 7] = [
        (
            "lvc_worker_icmp_sent_total",
            "ICMP errors originated (time exceeded, fragmentation needed).",
            |w| w.icmp_sent.load(Relaxed),
        ),
        (
            "lvc_worker_fragments_made_total",
            "IPv4 fragments made of packets too big for their next link.",
            |w| w.fragments_made.load(Relaxed),
        ),
        (
            "lvc_worker_rx_packets_total",
            "Frames received from AF_XDP.",
            |w| w.rx_packets.load(Relaxed),
        ),
        (
            "lvc_worker_rx_bytes_total",
            "Bytes received from AF_XDP.",
            |w| w.rx_bytes.load(Relaxed),
        ),
        (
            "lvc_worker_tx_packets_total",
            "Frames queued for transmission.",
            |w| w.tx_packets.load(Relaxed),
        ),
        (
            "lvc_worker_tx_bytes_total",
            "Bytes queued for transmission.",
            |w| w.tx_bytes.load(Relaxed),
        ),
        (
            "lvc_worker_tx_kicks_total",
            "sendto() calls made to kick copy-mode TX.",
            |w| w.tx_kicks.load(Relaxed),
        ),
    ];
    for (n, help, get) in per_worker {
        let mut f = Family::new(&mut out, n, "counter", help);
        for (q, w) in workers.iter().enumerate() {
            f.sample(n, &[("worker", &q.to_string())], get(w));
        }
    }
    {
        let n = "lvc_worker_drops_total";
        let mut f = Family::new(
            &mut out,
            n,
            "counter",
            "Frames a worker dropped, by reason.",
        );
        for (q, w) in workers.iter().enumerate() {
            for d in Drop::ALL {
                f.sample(
                    n,
                    &[("worker", &q.to_string()), ("reason", d.name())],
                    w.drops(d),
                );
            }
        }
    }
    {
        let n = "lvc_xdp_packets_total";
        let mut f = Family::new(
            &mut out,
            n,
            "counter",
            "Frames seen by the XDP program, by decision.",
        );
        for (stat, v) in control.xdp_counters() {
            f.sample(n, &[("decision", stat.name())], v);
        }
    }
    let mut f = Family::new(
        &mut out,
        "lvc_conntrack_entries",
        "gauge",
        "Connections tracked.",
    );
    f.sample("lvc_conntrack_entries", &[], status.flows);
    let n = "lvc_conntrack_evicted_total";
    let mut f = Family::new(
        &mut out,
        n,
        "counter",
        "Unestablished connections evicted from a full table.",
    );
    f.sample(n, &[], control.conntrack_evicted());
    let mut f = Family::new(
        &mut out,
        "lvc_conntrack_capacity",
        "gauge",
        "Most connections that can be tracked.",
    );
    f.sample("lvc_conntrack_capacity", &[], status.flow_capacity);
    out
}
