//! Scenarios: one measurement of one director kind.

use crate::agent::{GenResult, GenSpec};
use crate::cpu;
use crate::kinds::{self, HTTP_PORT, IPERF_PORT, Kind};
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
    /// lvc kinds only: a flood of 64-byte UDP from a /8 a filter rule
    /// drops ([`DENIED`]; the generator flat out, every packet a new flow),
    /// with a second rule on a set of [`BLOCKLIST_PREFIXES`] /24s loaded,
    /// while an undenied stream (the client, 256 flows) is paced at
    /// [`UNDENIED_PPS`]: packets the filter dropped per second, director
    /// CPU per dropped packet, and what the undenied stream delivered.
    FilterFlood,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Udp64,
        Scenario::Udp1500,
        Scenario::NewFlows,
        Scenario::Latency,
        Scenario::TcpBulk,
        Scenario::HttpKeepalive,
        Scenario::HttpClose,
        Scenario::FilterFlood,
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
            Scenario::FilterFlood => "filter-flood",
        }
    }

    pub fn tcp(self) -> bool {
        matches!(
            self,
            Scenario::TcpBulk | Scenario::HttpKeepalive | Scenario::HttpClose
        )
    }

    /// Does this scenario apply to `kind`? (TCP needs a kind that carries
    /// it both ways; filter-flood measures lvc's packet filter.) The
    /// harness skips the others, and the report shows "–".
    pub fn applies(self, kind: Kind) -> bool {
        match self {
            s if s.tcp() => kind.does_tcp(),
            Scenario::FilterFlood => kind.is_lvc(),
            _ => true,
        }
    }

    /// Does the harness run it briefly, unmeasured, first? (UDP; not
    /// filter-flood, which warms its undenied stream itself once its
    /// rules are in.)
    pub fn warm_up(self) -> bool {
        !self.tcp() && self != Scenario::FilterFlood
    }

    /// The headline figure's unit.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Udp64 | Scenario::Udp1500 | Scenario::NewFlows => "Mpps",
            Scenario::FilterFlood => "Mpps dropped",
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
            Scenario::FilterFlood => "dropped packet",
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
    /// udp64: director CPU time per delivered packet with the generator
    /// flat out, in µs (busy, its per-packet costs amortised: what a flood
    /// costs per packet).
    #[serde(default)]
    pub overload_cpu_us: f64,
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
    /// filter-flood: the flood's counts (`offered_pps`/`delivered_pps` are
    /// the undenied stream's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood: Option<Flood>,
}

/// What filter-flood counted besides the [`Sample`]'s figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Flood {
    /// Flood packets the generator sent (transmitted on its veth: those
    /// the director's receive ring had no room for are lost before the
    /// director's XDP program, uncounted there).
    pub sent: u64,
    /// Seconds the flood lasted (the generator's).
    pub seconds: f64,
    /// The XDP `drop_filter` counter's increase over the flood: what the
    /// filter dropped (the sample's value is its rate).
    pub drop_filter: u64,
    /// Packets the /8's rule counted (`filter list`): `drop_filter`.
    pub rule_packets: u64,
    /// Packets the blocklist set's rule counted: 0 (the set does not
    /// cover the /8).
    pub set_rule_packets: u64,
    /// Seconds the set and the rules took to load.
    pub setup_s: f64,
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
        Scenario::FilterFlood => filter_flood(lab, kind, p),
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
    s.overload_cpu_us = full.cpu_us;
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
        overload_cpu_us: 0.0,
        cpu_us: if delivered > 0 {
            busy / delivered as f64 * 1e6
        } else {
            0.0
        },
        cpu_busy: busy / (secs + 0.1),
        latency_us,
        split,
        flood: None,
    })
}

/// filter-flood: the /8 the drop rule denies (no address of the lab is in
/// it; the generator writes frames with the director's MAC, so any source
/// reaches the director's XDP program).
pub const DENIED: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 0, 0, 0), 8);
/// filter-flood: the flood's first source address (every packet a new flow:
/// 65536 ports, then the next address, all inside [`DENIED`]).
pub const FLOOD_SRC: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// filter-flood: /24s in the named set of the second drop rule, so the
/// drop path looks up a big trie.
pub const BLOCKLIST_PREFIXES: u32 = 100_000;
/// filter-flood: the set's name.
pub const BLOCKLIST: &str = "blocklist";
/// filter-flood: pace of the undenied stream during the flood.
pub const UNDENIED_PPS: u64 = 100_000;
/// filter-flood: the flood starts this long before the undenied stream and
/// ends this long after it.
const FLOOD_LEAD_S: f64 = 0.5;
/// Prios of filter-flood's rules (the set's first: the flood matches the
/// second rule of the trie, not the first).
const SET_PRIO: u32 = 10;
const DENIED_PRIO: u32 = 20;

/// `n` distinct /24s (`a.b.c.0/24`) spread over 1.0.0.0–99.255.255.0,
/// none in the lab's 10.0.0.0/8 nor in [`DENIED`]: a blocklist's shape.
pub fn blocklist(n: u32) -> Vec<String> {
    // /24 number i of 1.0.0.0/8..99.0.0.0/8 is 0x010000 + i, i < 99 << 16;
    // multiplying by a prime that divides no factor of 99 << 16 (2, 3,
    // 11) modulo it is a bijection: distinct, and scattered.
    const SPAN: u64 = 99 << 16;
    const STEP: u64 = 1_000_003;
    (0..SPAN)
        .map(|i| 0x01_0000 + (i * STEP) % SPAN)
        .filter(|p| p >> 16 != 10)
        .take(n as usize)
        .map(|p| format!("{}.{}.{}.0/24", p >> 16, (p >> 8) & 0xff, p & 0xff))
        .collect()
}

/// filter-flood (lvc kinds): loads the rules and the set, floods, removes
/// them again whatever happened (later scenarios see no filter).
fn filter_flood(lab: &mut BenchLab, kind: Kind, p: &Params) -> Result<Sample> {
    if !Scenario::FilterFlood.applies(kind) {
        bail!("filter-flood does not apply to {kind}: it measures lvc's packet filter");
    }
    let file = std::env::temp_dir().join(format!("{}-{BLOCKLIST}.txt", lab.ns("dir")));
    std::fs::write(&file, blocklist(BLOCKLIST_PREFIXES).join("\n") + "\n")
        .with_context(|| format!("writing {}", file.display()))?;
    let t = std::time::Instant::now();
    let r = add_filter(lab, &file.to_string_lossy()).and_then(|()| {
        let setup_s = t.elapsed().as_secs_f64();
        flood(lab, kind, p, setup_s)
    });
    let _ = std::fs::remove_file(&file);
    // Both, even if the first fails.
    let flushed = kinds::ctl(lab, &["filter", "flush"]);
    let destroyed = kinds::ctl(lab, &["filter", "set", "destroy", BLOCKLIST]);
    let s = r?;
    flushed.context("removing filter-flood's rules")?;
    destroyed.context("removing filter-flood's set")?;
    Ok(s)
}

fn add_filter(lab: &BenchLab, file: &str) -> Result<()> {
    kinds::ctl(lab, &["filter", "set", "add", BLOCKLIST, "--file", file])?;
    let set = format!("@{BLOCKLIST}");
    let denied = format!("{}/{}", DENIED.0, DENIED.1);
    for (prio, src) in [(SET_PRIO, set.as_str()), (DENIED_PRIO, denied.as_str())] {
        kinds::ctl(
            lab,
            &[
                "filter",
                "add",
                "--prio",
                &prio.to_string(),
                "--action",
                "drop",
                "--src",
                src,
            ],
        )?;
    }
    Ok(())
}

/// The XDP `drop_filter` counter, and the packets of filter-flood's two
/// rules (the /8's, the set's).
fn drop_counts(lab: &BenchLab) -> Result<(u64, u64, u64)> {
    let status: serde_json::Value = serde_json::from_str(&kinds::ctl(lab, &["status", "--json"])?)
        .context("lvc-ctl status --json")?;
    let drop_filter = status["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| matches!(c[0].as_str(), Some("xdp_drop_filter" | "drop_filter")))
        .and_then(|c| c[1].as_u64())
        .ok_or_else(|| anyhow!("no drop_filter counter in `lvc-ctl status --json`"))?;
    let list: serde_json::Value =
        serde_json::from_str(&kinds::ctl(lab, &["filter", "list", "--json"])?)
            .context("lvc-ctl filter list --json")?;
    let rule = |prio: u32| {
        list["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["rule"]["prio"].as_u64() == Some(prio.into()))
            .and_then(|r| r["stats"]["packets"].as_u64())
            .unwrap_or(0)
    };
    Ok((drop_filter, rule(DENIED_PRIO), rule(SET_PRIO)))
}

/// The flood and the undenied stream at once, two generators on the load
/// CPU; the flood starts [`FLOOD_LEAD_S`] earlier and ends as much later,
/// so the undenied stream is measured inside it.
fn flood(lab: &mut BenchLab, kind: Kind, p: &Params, setup_s: f64) -> Result<Sample> {
    let flood = GenSpec {
        dev: GEN_DEV.into(),
        dst_mac: lab.dir_in_mac,
        saddr: FLOOD_SRC,
        daddr: kind.target(),
        daddr_count: 1,
        flows: 0,
        dport: UDP_PORT,
        frame_len: 60,
        rate_pps: 0,
        seconds: p.seconds + 2.0 * FLOOD_LEAD_S,
    };
    // Sharing the load CPU with the flood, this generator is preempted a
    // scheduler slice at a time and forgoes most of what fell due meanwhile
    // (no bursts): it offers less than its pace, and loss is counted
    // against what it offered.
    let undenied = GenSpec {
        saddr: CLIENT,
        flows: p.flows,
        rate_pps: UNDENIED_PPS,
        seconds: p.seconds,
        ..flood.clone()
    };
    // The undenied flows exist (and are offloaded) before the flood.
    generate(
        lab,
        &GenSpec {
            seconds: 0.5,
            ..undenied.clone()
        },
    )?;
    std::thread::sleep(Duration::from_millis(100));
    let (drop0, rule0, set0) = drop_counts(lab)?;
    lab.sink_reset()?;
    let dcpu = lab.placement.director_cpu;
    let busy0 = cpu::busy_seconds(dcpu);
    let shared: &BenchLab = lab;
    let (f, u) = std::thread::scope(|s| {
        let f = s.spawn(|| generate(shared, &flood));
        std::thread::sleep(Duration::from_secs_f64(FLOOD_LEAD_S));
        let u = generate(shared, &undenied);
        let f = f
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the flood's thread panicked")));
        (f, u)
    });
    let (f, u) = (f.context("the flood")?, u.context("the undenied stream")?);
    std::thread::sleep(Duration::from_millis(100));
    let busy = cpu::busy_seconds(dcpu) - busy0;
    let r = lab.sink_read()?;
    let (drop1, rule1, set1) = drop_counts(lab)?;
    if std::env::var_os("LVC_BENCH_DEBUG").is_some() {
        lab.debug_counters();
    }
    let fsecs = f.elapsed_ns as f64 / 1e9;
    let usecs = u.elapsed_ns as f64 / 1e9;
    let delivered = r.total_packets();
    if delivered > u.sent + u.sent / 20 {
        bail!(
            "the servers got {delivered} packets from an undenied stream of {}: the flood was not dropped",
            u.sent
        );
    }
    let dropped = drop1.saturating_sub(drop0);
    let flood = Flood {
        sent: f.sent,
        seconds: fsecs,
        drop_filter: dropped,
        rule_packets: rule1.saturating_sub(rule0),
        set_rule_packets: set1.saturating_sub(set0),
        setup_s,
    };
    if flood.rule_packets != dropped || flood.set_rule_packets != 0 {
        eprintln!(
            "    filter-flood: drop_filter counted {dropped}, the /{} rule {}, the set's rule {}",
            DENIED.1, flood.rule_packets, flood.set_rule_packets
        );
    }
    if std::env::var_os("LVC_BENCH_DEBUG").is_some() {
        eprintln!("      filter-flood: {flood:?}, busy {busy:.3} s, flood {fsecs:.3} s");
    }
    Ok(Sample {
        // What the filter dropped, not what was sent: flood frames the
        // director's veth ring had no room for never reached its XDP
        // program (the generator counts them as sent).
        value: dropped as f64 / fsecs / 1e6,
        offered_pps: u.sent as f64 / usecs,
        delivered_pps: delivered as f64 / usecs,
        overload_pps: 0.0,
        overload_cpu_us: 0.0,
        // Per packet the filter dropped (the undenied stream's 100 kpps
        // forwarded are in the busy time too).
        cpu_us: if dropped > 0 {
            busy / dropped as f64 * 1e6
        } else {
            0.0
        },
        cpu_busy: busy / (fsecs + 0.1),
        latency_us: None,
        split: Vec::new(),
        flood: Some(flood),
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
    fn blocklist_is_distinct_and_clear_of_the_lab() {
        let l = blocklist(BLOCKLIST_PREFIXES);
        assert_eq!(l.len(), BLOCKLIST_PREFIXES as usize);
        let set: std::collections::HashSet<&String> = l.iter().collect();
        assert_eq!(set.len(), l.len());
        for p in &l {
            let c: lvc_proto::filter::Cidr = p.parse().unwrap();
            let first: u8 = p.split('.').next().unwrap().parse().unwrap();
            assert!((1..100).contains(&first) && first != 10, "{p}");
            assert_eq!(c.len, 24);
        }
        assert_eq!(
            u32::from(FLOOD_SRC) >> (32 - DENIED.1),
            u32::from(DENIED.0) >> (32 - DENIED.1)
        );
    }

    #[test]
    fn filter_flood_is_for_lvc_only() {
        assert!(Scenario::FilterFlood.applies(Kind::Lvc(crate::kinds::LvcMethod::Dr)));
        assert!(Scenario::FilterFlood.applies(Kind::LvcNoOffload(crate::kinds::LvcMethod::Nat)));
        for k in [
            Kind::XdpRedirect,
            Kind::Iptables,
            Kind::AfxdpRaw,
            Kind::Direct,
        ] {
            assert!(!Scenario::FilterFlood.applies(k));
            assert!(Scenario::Udp64.applies(k));
        }
        assert!(!Scenario::FilterFlood.warm_up() && Scenario::Udp64.warm_up());
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
