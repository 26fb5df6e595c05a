//! Agents: the harness's small processes that live inside a namespace of
//! the lab (`lvc-bench agent …`, started with `ip netns exec`), because XDP
//! attachments, interface indexes and BPF_PROG_TEST_RUN's transmit device
//! are all per network namespace.
//!
//! - `gen`: the traffic generator (one run, prints a JSON result line).
//! - `sink`: counts and times what reaches the real servers; answers
//!   `reset` / `read` on stdin.
//! - `fwd`: the `xdp-redirect` director kind.
//! - `afxdp-raw`: the `afxdp-raw` director kind (see [`crate::afxdp`]).
//! - `pass`: XDP_PASS on interfaces (a NAPI instance to pin, and a receiver
//!   for XDP_TX'd frames).
//!
//! Long-running agents print `ready` once attached and run until SIGTERM or
//! SIGKILL; their XDP links go with the process.

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, DevMap, MapData, PerCpuArray, XskMap};
use aya::programs::{TestRunAttrs, Xdp, XdpMode};
use aya::{Ebpf, util::nr_cpus};
use aya::{TestRun, TestRunOptions};
use lvc_ebpf::bench::{self as b, FwdCfg, GenCfg, GenState, SinkCfg, SinkCount};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the generator should send, for `lvc-bench agent gen`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenSpec {
    pub dev: String,
    pub dst_mac: [u8; 6],
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub daddr_count: u32,
    /// Distinct flows; 0 = every packet a new flow.
    pub flows: u32,
    pub dport: u16,
    /// Frame length without the Ethernet FCS (60 = a 64-byte frame).
    pub frame_len: usize,
    /// Packets per second; 0 = as fast as possible.
    pub rate_pps: u64,
    pub seconds: f64,
}

/// What one generator run did.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct GenResult {
    pub sent: u64,
    pub elapsed_ns: u64,
}

/// Reads a sysfs attribute of interface `dev` (in this namespace).
pub fn sysfs(dev: &str, attr: &str) -> Result<String> {
    let p = format!("/sys/class/net/{dev}/{attr}");
    Ok(std::fs::read_to_string(&p)
        .with_context(|| p.clone())?
        .trim()
        .to_owned())
}

pub fn ifindex(dev: &str) -> Result<u32> {
    Ok(sysfs(dev, "ifindex")?.parse()?)
}

pub fn mac(dev: &str) -> Result<[u8; 6]> {
    parse_mac(&sysfs(dev, "address")?)
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let s = s.trim();
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("not a MAC address: {s}");
    }
    for (o, p) in m.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).with_context(|| format!("not a MAC address: {s}"))?;
    }
    Ok(m)
}

fn load() -> Result<Ebpf> {
    Ebpf::load(b::OBJECT).context("loading the harness BPF object (run as root)")
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let p: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("no program {name}"))?
        .try_into()?;
    if p.fd().is_err() {
        p.load()?;
    }
    Ok(p)
}

fn attach(ebpf: &mut Ebpf, name: &str, dev: &str) -> Result<()> {
    program(ebpf, name)?
        .attach(dev, XdpMode::Driver)
        .with_context(|| format!("attaching {name} to {dev} (driver mode)"))?;
    Ok(())
}

/// Runs until SIGTERM/SIGINT.
fn park() -> Result<()> {
    let stop = stop_flag()?;
    ready();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
}

/// `agent pass DEV…`
pub fn pass(devs: &[String]) -> Result<()> {
    let mut ebpf = load()?;
    for d in devs {
        attach(&mut ebpf, b::programs::PASS, d)?;
    }
    park()
}

/// `agent gen SPEC-JSON`: runs the live-frames generator on `spec.dev`'s
/// transmit path for `spec.seconds`, in calls of a bounded number of
/// iterations (each call ends with an RCU grace period: few, long calls).
pub fn gen_run(spec: &GenSpec) -> Result<GenResult> {
    let mut ebpf = load()?;
    let ifx = ifindex(&spec.dev)?;
    let cfg = GenCfg {
        dst_mac: spec.dst_mac,
        src_mac: mac(&spec.dev)?,
        saddr: u32::from(spec.saddr),
        daddr: u32::from(spec.daddr),
        daddr_count: spec.daddr_count.max(1),
        flows: spec.flows,
        sport_base: 10_000,
        dport: spec.dport,
        interval_ns: 1_000_000_000u64
            .checked_div(spec.rate_pps)
            .map_or(0, |i| i.max(1)),
        burst: 32,
    };
    let mut cfg_map: Array<MapData, GenCfg> =
        Array::try_from(ebpf.take_map("gen_cfg").context("gen_cfg")?)?;
    cfg_map.set(0, cfg, 0)?;
    let state: Array<MapData, GenState> =
        Array::try_from(ebpf.take_map("gen_state").context("gen_state")?)?;
    let prog = program(&mut ebpf, b::programs::GEN)?;
    let frame = vec![0u8; spec.frame_len.max(60)];
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifx.to_ne_bytes());
    // Calls of ~0.25 s: each call ends with an RCU grace period during
    // which nothing is sent, so few long calls, sized from the last one
    // (iterations ahead of a paced schedule are cheap, so paced calls need
    // many more of them).
    let mut chunk: u64 = 200_000;
    let start = Instant::now();
    let limit = Duration::from_secs_f64(spec.seconds);
    while start.elapsed() < limit {
        let left = (limit - start.elapsed()).as_secs_f64();
        let t = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: chunk as u32,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        })
        .map_err(|e| anyhow!("BPF_PROG_TEST_RUN (live frames) on {}: {e}", spec.dev))?;
        let per_sec = chunk as f64 / t.elapsed().as_secs_f64().max(1e-6);
        chunk = (per_sec * 0.25_f64.min(left.max(0.01))).clamp(10_000.0, 2e9) as u64;
    }
    let elapsed_ns = start.elapsed().as_nanos() as u64;
    let s = state.get(&0, 0)?;
    Ok(GenResult {
        sent: s.sent,
        elapsed_ns,
    })
}

/// `agent sink DEV DPORT BASE`: attaches the sink and serves `reset` and
/// `read` lines on stdin until EOF.
pub fn sink(dev: &str, dport: u16, base: Ipv4Addr) -> Result<()> {
    let mut ebpf = load()?;
    let mut cfg: Array<MapData, SinkCfg> =
        Array::try_from(ebpf.take_map("sink_cfg").context("sink_cfg")?)?;
    cfg.set(
        0,
        SinkCfg {
            base: u32::from(base),
            dport,
            pad: 0,
        },
        0,
    )?;
    let mut counts: PerCpuArray<MapData, SinkCount> =
        PerCpuArray::try_from(ebpf.take_map("sink_counts").context("sink_counts")?)?;
    let mut hist: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(ebpf.take_map("sink_hist").context("sink_hist")?)?;
    attach(&mut ebpf, b::programs::SINK, dev)?;
    ready();
    let cpus = nr_cpus().map_err(|(_, e)| e)?;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "reset" => {
                for i in 0..b::SINK_SLOTS {
                    counts.set(
                        i,
                        aya::maps::PerCpuValues::try_from(vec![SinkCount::default(); cpus])?,
                        0,
                    )?;
                }
                for i in 0..b::HIST_BUCKETS {
                    hist.set(i, aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
                }
                println!("ok");
            }
            "read" => {
                let mut r = SinkReading::default();
                for i in 0..b::SINK_SLOTS {
                    let v = counts.get(&i, 0)?;
                    r.packets.push(v.iter().map(|c| c.packets).sum());
                    r.bytes.push(v.iter().map(|c| c.bytes).sum());
                }
                for i in 0..b::HIST_BUCKETS {
                    let n: u64 = hist.get(&i, 0)?.iter().sum();
                    if n > 0 {
                        r.hist.push((i, n));
                    }
                }
                println!("{}", serde_json::to_string(&r)?);
            }
            other => println!("error: unknown command {other:?}"),
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// What the sink saw since the last reset.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SinkReading {
    /// Per destination slot (real server i at slot i; last = other).
    pub packets: Vec<u64>,
    pub bytes: Vec<u64>,
    /// Non-empty latency buckets: (bucket, count).
    pub hist: Vec<(u32, u64)>,
}

impl SinkReading {
    pub fn total_packets(&self) -> u64 {
        self.packets.iter().sum()
    }

    /// The latency histogram (ns) as an hdrhistogram, bucket midpoints.
    pub fn latency(&self) -> hdrhistogram::Histogram<u64> {
        let mut h = hdrhistogram::Histogram::new(3).expect("sigfig 3");
        for &(bucket, n) in &self.hist {
            let _ = h.record_n(b::hist_value(bucket), n);
        }
        h
    }
}

/// The `xdp-redirect` kind's service.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FwdSpec {
    pub in_dev: String,
    pub out_dev: String,
    pub vip: Ipv4Addr,
    pub dport: u16,
    pub rips: Vec<Ipv4Addr>,
    /// The real servers' MAC (next hop on `out_dev`).
    pub rip_mac: [u8; 6],
}

/// `agent fwd SPEC-JSON`.
pub fn fwd(spec: &FwdSpec) -> Result<()> {
    if spec.rips.is_empty() || spec.rips.len() > b::FWD_MAX_RIPS {
        bail!("xdp-redirect takes 1..={} real servers", b::FWD_MAX_RIPS);
    }
    let mut ebpf = load()?;
    let mut rips = [0u32; b::FWD_MAX_RIPS];
    for (r, a) in rips.iter_mut().zip(&spec.rips) {
        *r = u32::from(*a);
    }
    let cfg = FwdCfg {
        vip: u32::from(spec.vip),
        dport: spec.dport,
        nrips: spec.rips.len() as u16,
        rips,
        dst_mac: spec.rip_mac,
        src_mac: mac(&spec.out_dev)?,
    };
    let mut m: Array<MapData, FwdCfg> =
        Array::try_from(ebpf.take_map("fwd_cfg").context("fwd_cfg")?)?;
    m.set(0, cfg, 0)?;
    let mut dev: DevMap<MapData> = DevMap::try_from(ebpf.take_map("fwd_dev").context("fwd_dev")?)?;
    dev.set(0, ifindex(&spec.out_dev)?, None, 0)?;
    attach(&mut ebpf, b::programs::FWD, &spec.in_dev)?;
    attach(&mut ebpf, b::programs::PASS, &spec.out_dev)?;
    park()
}

/// Loads the `afxdp-raw` steering program on `in_dev` (and XDP_PASS on
/// `out_dev`); the caller inserts its sockets into the returned map.
pub fn xsk_steering(in_dev: &str, out_dev: &str) -> Result<(Ebpf, XskMap<MapData>)> {
    let mut ebpf = load()?;
    let map = XskMap::try_from(ebpf.take_map("bench_xsks").context("bench_xsks")?)?;
    attach(&mut ebpf, b::programs::XSK, in_dev)?;
    attach(&mut ebpf, b::programs::PASS, out_dev)?;
    Ok((ebpf, map))
}

/// Signals the afxdp-raw loop to stop.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}
