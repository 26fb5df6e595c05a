//! Scenarios: one measurement of one director kind.

use crate::agent::{GenResult, GenSpec};
use crate::cpu;
use crate::kinds::{HTTP_PORT, IPERF_PORT, Kind};
use crate::lab::{BenchLab, CLIENT, GEN_DEV, UDP_PORT};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scenario {
    /// 64-byte UDP frames (60 + FCS), 256 flows: the highest rate
    /// forwarded with at most 1% loss (searched, as RFC 2544's throughput),
    /// and what is delivered under overload (the generator flat out).
    Udp64,
    /// 1514-byte UDP frames (1500-byte IP packets), 256 flows.
    Udp1500,
    /// 64-byte UDP, every packet a new flow.
    NewFlows,
    /// 64-byte UDP, 256 flows, paced at half of iptables' peak rate (or
    /// lvc-nat's): one-way latency.
    Latency,
    /// One iperf3 TCP stream for the duration.
    TcpBulk,
    /// HTTP requests per second over 32 keep-alive connections (wrk).
    HttpKeepalive,
    /// HTTP connections per second (`Connection: close`, wrk).
    HttpClose,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Udp64,
        Scenario::Udp1500,
        Scenario::NewFlows,
        Scenario::Latency,
        Scenario::TcpBulk,
        Scenario::HttpKeepalive,
        Scenario::HttpClose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Udp64 => "udp64",
            Scenario::Udp1500 => "udp1500",
            Scenario::NewFlows => "new-flows",
            Scenario::Latency => "latency",
            Scenario::TcpBulk => "tcp-bulk",
            Scenario::HttpKeepalive => "http-keepalive",
            Scenario::HttpClose => "http-close",
        }
    }

    pub fn tcp(self) -> bool {
        matches!(
            self,
            Scenario::TcpBulk | Scenario::HttpKeepalive | Scenario::HttpClose
        )
    }

    /// The headline figure's unit.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Udp64 | Scenario::Udp1500 | Scenario::NewFlows => "Mpps",
            Scenario::Latency => "µs p99",
            Scenario::TcpBulk => "Gbit/s",
            Scenario::HttpKeepalive => "req/s",
            Scenario::HttpClose => "conn/s",
        }
    }

    /// What the director's CPU time is divided by.
    pub fn per(self) -> &'static str {
        match self {
            Scenario::HttpKeepalive => "request",
            Scenario::HttpClose => "connection",
            _ => "packet",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario `{s}` (one of: {})", names.join(", "))
            })
    }
}

/// One measurement.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// The headline figure, in the scenario's unit.
    pub value: f64,
    /// Offered load (packets per second sent by the generator), UDP only.
    pub offered_pps: f64,
    /// Delivered packets per second at the servers, UDP only.
    pub delivered_pps: f64,
    /// udp64: packets per second delivered with the generator flat out.
    pub overload_pps: f64,
    /// Director CPU time per packet / request / connection, in µs.
    pub cpu_us: f64,
    /// Director CPU busy share over the run (0..1).
    pub cpu_busy: f64,
    /// Latency percentiles in µs: p50, p90, p99, p99.9, max (UDP: one-way,
    /// from the payload timestamps; HTTP: wrk's, without p99.9 = 0).
    pub latency_us: Option<[f64; 5]>,
    /// Share of delivered packets per real server (UDP, when the
    /// destination tells them apart).
    pub split: Vec<f64>,
}

/// Run parameters shared by all scenarios.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Params {
    pub seconds: f64,
    pub flows: u32,
    /// Pace of the latency scenario (packets per second).
    pub latency_pps: u64,
}

/// Runs `scenario` once for `kind` (already started). `round` makes the
/// new-flow scenario's flows distinct from every earlier round's.
pub fn measure(
    lab: &mut BenchLab,
    kind: Kind,
    scenario: Scenario,
    p: &Params,
    round: u32,
) -> Result<Sample> {
    match scenario {
        Scenario::Udp64 => loss_free(lab, kind, p, round),
        Scenario::Udp1500 => udp(lab, kind, 1514, p.flows, 0, p.seconds, round),
        Scenario::NewFlows => udp(lab, kind, 60, 0, 0, p.seconds, round),
        Scenario::Latency => {
            let mut s = udp(lab, kind, 60, p.flows, p.latency_pps, p.seconds, round)?;
            s.value = s.latency_us.map_or(0.0, |l| l[2]);
            Ok(s)
        }
        Scenario::TcpBulk => tcp_bulk(lab, kind, p.seconds),
        Scenario::HttpKeepalive => http(lab, kind, p.seconds, false),
        Scenario::HttpClose => http(lab, kind, p.seconds, true),
    }
}

/// Most loss tolerated by the throughput search.
pub const LOSS_OK: f64 = 0.01;

fn loss(s: &Sample) -> f64 {
    (1.0 - s.delivered_pps / s.offered_pps.max(1.0)).max(0.0)
}

/// udp64: flat out first, then a binary search over paced rates for the
/// highest one delivered with at most [`LOSS_OK`] loss. (A director that
/// livelocks under overload — its receive path eating the CPU its
/// forwarding needs — delivers less flat out than it can forward.)
fn loss_free(lab: &mut BenchLab, kind: Kind, p: &Params, round: u32) -> Result<Sample> {
    let full = udp(lab, kind, 60, p.flows, 0, p.seconds, round)?;
    let probe = (p.seconds / 2.0).max(1.0);
    let (mut lo, mut hi) = (0.0f64, full.offered_pps);
    let mut rate = full.delivered_pps.min(hi);
    let mut best: Option<Sample> = None;
    for _ in 0..6 {
        if rate < 1000.0 {
            break;
        }
        let s = udp(lab, kind, 60, p.flows, rate as u64, probe, round)?;
        if loss(&s) <= LOSS_OK {
            lo = rate;
            best = Some(s);
        } else {
            hi = rate;
        }
        if hi - lo < 0.02 * hi {
            break;
        }
        rate = (lo + hi) / 2.0;
    }
    let mut s = best.unwrap_or_default();
    s.value = s.delivered_pps / 1e6;
    s.overload_pps = full.delivered_pps;
    if s.split.is_empty() {
        s.split = full.split;
    }
    Ok(s)
}

/// Runs the generator agent once.
fn generate(lab: &BenchLab, spec: &GenSpec) -> Result<GenResult> {
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let out = lab.load_cmd(
        "gen",
        &[&exe, "agent", "gen", &serde_json::to_string(spec)?],
    )?;
    serde_json::from_str(out.trim()).with_context(|| format!("generator said {out}"))
}

fn udp(
    lab: &mut BenchLab,
    kind: Kind,
    frame_len: usize,
    flows: u32,
    rate_pps: u64,
    seconds: f64,
    round: u32,
) -> Result<Sample> {
    let saddr = if flows == 0 {
        // 10.1.R.0 and up: never a flow an earlier round created.
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 1, 0)) + (round << 8))
    } else {
        CLIENT
    };
    let spec = GenSpec {
        dev: GEN_DEV.into(),
        dst_mac: lab.dir_in_mac,
        saddr,
        daddr: kind.target(),
        daddr_count: if kind == Kind::Direct {
            lab.servers as u32
        } else {
            1
        },
        flows,
        dport: UDP_PORT,
        frame_len,
        rate_pps,
        seconds,
    };
    lab.sink_reset()?;
    let dcpu = lab.placement.director_cpu;
    let busy0 = cpu::busy_seconds(dcpu);
    let g = generate(lab, &spec)?;
    // Let queues drain before counting.
    std::thread::sleep(Duration::from_millis(100));
    let busy = cpu::busy_seconds(dcpu) - busy0;
    let r = lab.sink_read()?;
    if std::env::var_os("LVC_BENCH_DEBUG").is_some() {
        lab.debug_counters();
    }
    let secs = g.elapsed_ns as f64 / 1e9;
    let delivered = r.total_packets();
    let h = r.latency();
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let latency_us = (!h.is_empty()).then(|| {
        [
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            h.max() as f64 / 1000.0,
        ]
    });
    let split = if delivered > 0 && r.packets[lab.servers..].iter().all(|&n| n == 0) {
        r.packets[..lab.servers]
            .iter()
            .map(|&n| n as f64 / delivered as f64)
            .collect()
    } else {
        Vec::new()
    };
    Ok(Sample {
        value: delivered as f64 / secs / 1e6,
        offered_pps: g.sent as f64 / secs,
        delivered_pps: delivered as f64 / secs,
        overload_pps: 0.0,
        cpu_us: if delivered > 0 {
            busy / delivered as f64 * 1e6
        } else {
            0.0
        },
        cpu_busy: busy / (secs + 0.1),
        latency_us,
        split,
    })
}

fn secs_arg(seconds: f64) -> String {
    format!("{}", seconds.round().max(1.0) as u64)
}

fn tcp_bulk(lab: &mut BenchLab, kind: Kind, seconds: f64) -> Result<Sample> {
    let target = kind.target().to_string();
    let dcpu = lab.placement.director_cpu;
    let pk0 = lab.packets_into_director();
    let busy0 = cpu::busy_seconds(dcpu);
    let out = lab.load_cmd(
        "gen",
        &[
            "iperf3",
            "-c",
            &target,
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &secs_arg(seconds),
            "-J",
        ],
    )?;
    let busy = cpu::busy_seconds(dcpu) - busy0;
    let packets = lab.packets_into_director() - pk0;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 gave no result: {}", v["error"]))?;
    Ok(Sample {
        value: bps / 1e9,
        cpu_us: if packets > 0 {
            busy / packets as f64 * 1e6
        } else {
            0.0
        },
        cpu_busy: busy / seconds,
        ..Sample::default()
    })
}

fn http(lab: &mut BenchLab, kind: Kind, seconds: f64, close: bool) -> Result<Sample> {
    let url = format!("http://{}:{HTTP_PORT}/", kind.target());
    let dcpu = lab.placement.director_cpu;
    let d = format!("{}s", secs_arg(seconds));
    let mut cmd = vec!["wrk", "-t1", "-c32", "-d", &d, "--latency"];
    if close {
        cmd.extend(["-H", "Connection: close"]);
    }
    cmd.push(&url);
    let busy0 = cpu::busy_seconds(dcpu);
    let out = lab.load_cmd("gen", &cmd)?;
    let busy = cpu::busy_seconds(dcpu) - busy0;
    let (rps, total, errors) = parse_wrk(&out)?;
    if total == 0 || errors * 100 > total {
        bail!("wrk through {kind}: {total} requests, {errors} errors:\n{out}");
    }
    Ok(Sample {
        value: rps,
        cpu_us: busy / total as f64 * 1e6,
        cpu_busy: busy / seconds,
        latency_us: parse_wrk_latency(&out),
        ..Sample::default()
    })
}

/// (requests/s, requests, errors) from wrk's report.
fn parse_wrk(out: &str) -> Result<(f64, u64, u64)> {
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk's output:\n{out}"))?;
    let total = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut errors = 0;
    for l in out.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok((rps, total, errors))
}

/// wrk's latency distribution (50/90/99%) and max, in µs.
fn parse_wrk_latency(out: &str) -> Option<[f64; 5]> {
    let dur = |s: &str| -> Option<f64> {
        let (num, mult) = if let Some(v) = s.strip_suffix("us") {
            (v, 1.0)
        } else if let Some(v) = s.strip_suffix("ms") {
            (v, 1e3)
        } else if let Some(v) = s.strip_suffix('s') {
            (v, 1e6)
        } else {
            return None;
        };
        num.parse::<f64>().ok().map(|n| n * mult)
    };
    let pct = |p: &str| {
        out.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == p).then(|| w.next().and_then(dur)).flatten()
        })
    };
    let max = out.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w.first() == Some(&"Latency"))
            .then(|| w.get(3).and_then(|m| dur(m)))
            .flatten()
    });
    Some([pct("50%")?, pct("90%")?, pct("99%")?, 0.0, max?])
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://10.9.0.10:80/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  300.00us   8.50ms   90.00%
    Req/Sec    10.00k     1.00k   12.00k    80.00%
  Latency Distribution
     50%    1.10ms
     75%    1.30ms
     90%    1.60ms
     99%    2.50ms
  20000 requests in 2.00s, 3.00MB read
  Socket errors: connect 0, read 12, write 0, timeout 3
Requests/sec:  10000.50
Transfer/sec:      1.50MB
";

    #[test]
    fn wrk_report_is_parsed() {
        let (rps, total, errors) = parse_wrk(WRK).unwrap();
        assert_eq!((rps, total, errors), (10000.5, 20000, 15));
        let l = parse_wrk_latency(WRK).unwrap();
        assert_eq!((l[0], l[1], l[2], l[4]), (1100.0, 1600.0, 2500.0, 8500.0));
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>().unwrap(), s);
        }
        for k in Kind::ALL {
            assert_eq!(k.to_string().parse::<Kind>().unwrap(), k);
        }
        assert!("lvc-foo".parse::<Kind>().is_err());
        // lvc-nat with shaping: lvc's nat, and right after lvc-nat.
        let shaped = "lvc-nat-shaped".parse::<Kind>().unwrap();
        assert_eq!(shaped, Kind::LvcNatShaped);
        assert_eq!(shaped.lvc_method(), Some(crate::kinds::LvcMethod::Nat));
        assert!(shaped.does_tcp() && shaped.is_lvc());
        assert_eq!(Kind::ALL[1], shaped);
        assert!(!Kind::AfxdpRaw.is_lvc());
    }
}
