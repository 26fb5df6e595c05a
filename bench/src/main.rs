//! `lvc-bench`: lvc side by side with the kernel's load balancers, on one
//! machine, in a namespace lab it builds and removes itself.
//!
//! `lvc-bench run [--quick]` (or `cargo xtask bench`) measures every
//! selected director kind in every selected scenario, in rounds (each round
//! runs every kind once, so slow drifts of a noisy machine hit all kinds
//! alike), and writes `results.md`, `results.json` and `results.svg`.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use lvc_bench::agent::{self, FwdSpec, GenSpec};
use lvc_bench::kinds::{self, Kind, LvcMethod};
use lvc_bench::lab::{BenchLab, Placement};
use lvc_bench::report::{self, Cell, Machine, Report};
use lvc_bench::scale::{self, ScaleResult};
use lvc_bench::scenario::{self, Params, Scenario};
use lvc_bench::{afxdp, chart, cpu};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "lvc's load-test harness: lvc against iptables, nftables, an XDP and an AF_XDP forwarder, on one machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the lab, measure, write the report (needs root).
    Run(RunArgs),
    /// Measure the connection table with N flows (in this process).
    ConntrackScale {
        #[arg(long)]
        flows: usize,
    },
    /// Measure the route table with a full internet table (in this
    /// process): memory, build time, lookups, one incremental change.
    Routes {
        /// IPv4 routes (distinct prefixes, a default-free zone's shape).
        #[arg(long, default_value_t = 1_000_000)]
        routes: usize,
        /// IPv6 routes besides.
        #[arg(long, default_value_t = 0)]
        routes6: usize,
    },
    /// Measure what health-checking N real servers costs the director
    /// (needs root): probes per second and CPU, against a run without
    /// checks.
    HealthChecks {
        #[arg(long, default_value_t = 1000)]
        servers: usize,
        /// Seconds between probes of one server.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Seconds measured per run.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// The check: tcp, http:/PATH, …
        #[arg(long, default_value = "tcp")]
        check: String,
    },
    /// lvc-nat at full rate for MINUTES, every packet a new flow, the
    /// director's memory read every 10 s; fails if it kept growing once
    /// the tables were full (needs root).
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        #[arg(long, default_value_t = 4)]
        servers: usize,
        /// Every packet through the workers (no XDP offload).
        #[arg(long)]
        no_offload: bool,
        #[arg(long, default_value_t = 0)]
        load_cpu: u32,
        #[arg(long, default_value_t = 1)]
        director_cpu: u32,
    },
    /// Internal: the harness's helpers inside the lab's namespaces.
    #[command(hide = true, subcommand)]
    Agent(AgentCmd),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// A sanity check in a few minutes: lvc-nat (offload on and off),
    /// lvc-nat-shaped, iptables, xdp-redirect and afxdp-raw; udp64, latency,
    /// tcp-bulk, http-close; 1 run of 2 s;
    /// the connection table at 1M flows.
    #[arg(long)]
    quick: bool,
    /// Director kinds (comma-separated): lvc-nat, lvc-nat-shaped (lvc-nat
    /// with shaping configured but not limiting), lvc-dnat, lvc-dr, lvc-tun,
    /// lvc-fullnat, the same with `-no-offload` (every packet through the
    /// AF_XDP workers: lvc-nat-no-offload, …), iptables, nftables,
    /// xdp-redirect, afxdp-raw, direct.
    #[arg(long, value_delimiter = ',')]
    kinds: Option<Vec<Kind>>,
    /// Scenarios (comma-separated): udp64, udp1500, new-flows, latency,
    /// tcp-bulk, http-keepalive, http-close, filter-flood (lvc kinds only:
    /// a flood from a /8 a filter rule drops, next to an undenied stream
    /// paced at 100 kpps).
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<Scenario>>,
    /// Rounds (each measures every kind once); medians are over rounds.
    #[arg(long)]
    repeat: Option<u32>,
    /// Seconds per measurement.
    #[arg(long)]
    seconds: Option<f64>,
    /// Real servers behind the director.
    #[arg(long, default_value_t = 2)]
    servers: usize,
    /// Flows of the UDP scenarios (except new-flows).
    #[arg(long, default_value_t = 256)]
    flows: u32,
    /// Pace of the latency scenario; default: half of the first round's
    /// udp64 of iptables — a pace every kind here carries — or of lvc-nat
    /// if iptables is not measured (200 kpps if neither is). That kind
    /// runs first in each round.
    #[arg(long)]
    latency_pps: Option<u64>,
    /// Connection-table sizes to measure (0 to skip).
    #[arg(long, value_delimiter = ',')]
    conntrack: Option<Vec<usize>>,
    /// CPU for the generator, clients, servers and their NAPI threads.
    #[arg(long, default_value_t = 0)]
    load_cpu: u32,
    /// CPU for the director.
    #[arg(long, default_value_t = 1)]
    director_cpu: u32,
    /// Where to write results.md, results.json and results.svg.
    #[arg(long, default_value = "target/lvc-bench")]
    out: PathBuf,
}

#[derive(Subcommand, Debug)]
enum AgentCmd {
    Gen {
        spec: String,
    },
    Sink {
        dev: String,
        dport: u16,
        base: Ipv4Addr,
    },
    Fwd {
        spec: String,
    },
    AfxdpRaw {
        in_dev: String,
        out_dev: String,
        rip_mac: String,
        rips: Vec<Ipv4Addr>,
    },
    Pass {
        devs: Vec<String>,
    },
}

/// lvc-dataplane's allocator (see its main.rs), for `conntrack-scale`,
/// which measures the connection table in this process.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::ConntrackScale { flows } => {
            let r = scale::measure(flows);
            println!("{}", serde_json::to_string(&r).expect("json"));
            Ok(())
        }
        Cmd::Routes { routes, routes6 } => {
            let r = lvc_bench::routes::measure(routes, routes6);
            println!("{}", serde_json::to_string(&r).expect("json"));
            Ok(())
        }
        Cmd::HealthChecks {
            servers,
            interval,
            seconds,
            check,
        } => lvc_bench::health::measure(servers, interval, seconds, &check).map(|runs| {
            for r in runs {
                println!("{}", serde_json::to_string(&r).expect("json"));
            }
        }),
        Cmd::Soak {
            minutes,
            servers,
            no_offload,
            load_cpu,
            director_cpu,
        } => {
            let placement = Placement {
                load_cpu,
                director_cpu,
            };
            lvc_bench::soak::run(minutes, servers, placement, !no_offload).map(|rounds| {
                println!("{}", serde_json::to_string(&rounds).expect("json"));
            })
        }
        Cmd::Agent(a) => agent_main(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lvc-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn agent_main(a: AgentCmd) -> Result<()> {
    match a {
        AgentCmd::Gen { spec } => {
            let spec: GenSpec = serde_json::from_str(&spec)?;
            let r = agent::gen_run(&spec)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        AgentCmd::Sink { dev, dport, base } => agent::sink(&dev, dport, base),
        AgentCmd::Fwd { spec } => agent::fwd(&serde_json::from_str::<FwdSpec>(&spec)?),
        AgentCmd::AfxdpRaw {
            in_dev,
            out_dev,
            rip_mac,
            rips,
        } => afxdp::run(&in_dev, &out_dev, agent::parse_mac(&rip_mac)?, &rips),
        AgentCmd::Pass { devs } => agent::pass(&devs),
    }
}

/// Fails early, and clearly, when a tool a selected kind or scenario needs
/// is missing.
fn preflight(kinds: &[Kind], scenarios: &[Scenario], a: &RunArgs) -> Result<()> {
    if !lvc_tests::privileged("lvc-bench") {
        bail!("lvc-bench run needs root (namespaces, XDP, AF_XDP)");
    }
    let n = cpu::count() as u32;
    if a.load_cpu == a.director_cpu || a.load_cpu >= n || a.director_cpu >= n {
        bail!(
            "--load-cpu {} and --director-cpu {} must be two different CPUs of the {n} here",
            a.load_cpu,
            a.director_cpu
        );
    }
    if a.servers == 0 || a.servers > 16 {
        bail!("--servers takes 1..=16");
    }
    let mut tools = vec!["ip", "taskset", "ethtool", "conntrack"];
    if kinds.contains(&Kind::Iptables) {
        tools.push("iptables");
    }
    if kinds.contains(&Kind::Nftables) {
        tools.push("nft");
    }
    if scenarios.contains(&Scenario::TcpBulk) {
        tools.push("iperf3");
    }
    if scenarios
        .iter()
        .any(|s| matches!(s, Scenario::HttpKeepalive | Scenario::HttpClose))
    {
        tools.extend(["wrk", "nginx"]);
    }
    let missing: Vec<&str> = tools
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (`cargo xtask deps` installs them)",
            missing.join(", ")
        );
    }
    if kinds.iter().any(|k| k.is_lvc()) {
        // Fails with a clear message if the binaries are not built.
        let _ = std::panic::catch_unwind(|| lvc_tests::bin("lvc-dataplane")).map_err(|_| {
            anyhow::anyhow!(
                "lvc-dataplane is not built next to lvc-bench: `cargo build --release --workspace`"
            )
        })?;
    }
    Ok(())
}

fn run(a: RunArgs) -> Result<()> {
    let kinds = a.kinds.clone().unwrap_or_else(|| {
        if a.quick {
            vec![
                Kind::Lvc(LvcMethod::Nat),
                Kind::LvcNoOffload(LvcMethod::Nat),
                Kind::LvcNatShaped,
                Kind::Iptables,
                Kind::XdpRedirect,
                Kind::AfxdpRaw,
            ]
        } else {
            Kind::ALL.to_vec()
        }
    });
    // The kind whose udp64 sets the latency pace runs first.
    let pace_kind = [Kind::Iptables, Kind::Lvc(LvcMethod::Nat)]
        .into_iter()
        .find(|k| kinds.contains(k));
    let mut kinds = kinds;
    if let Some(p) = pace_kind {
        kinds.retain(|&k| k != p);
        kinds.insert(0, p);
    }
    let scenarios = a.scenarios.clone().unwrap_or_else(|| {
        if a.quick {
            vec![
                Scenario::Udp64,
                Scenario::Latency,
                Scenario::TcpBulk,
                Scenario::HttpClose,
            ]
        } else {
            Scenario::ALL.to_vec()
        }
    });
    let repeats = a.repeat.unwrap_or(if a.quick { 1 } else { 3 }).max(1);
    let seconds = a.seconds.unwrap_or(if a.quick { 2.0 } else { 5.0 });
    let sizes = a.conntrack.clone().unwrap_or_else(|| {
        if a.quick {
            vec![1_000_000]
        } else {
            vec![1_000_000, 10_000_000]
        }
    });
    preflight(&kinds, &scenarios, &a)?;
    let placement = Placement {
        load_cpu: a.load_cpu,
        director_cpu: a.director_cpu,
    };
    let started = Instant::now();
    let mut params = Params {
        seconds,
        flows: a.flows,
        latency_pps: a.latency_pps.unwrap_or(200_000),
    };
    let mut cells: Vec<Cell> = Vec::new();
    {
        eprintln!("lvc-bench: building the lab ({} real servers)…", a.servers);
        let mut lab = BenchLab::build(a.servers, placement)?;
        let scratch = if scenarios.iter().any(|s| s.tcp()) {
            start_endpoints(&mut lab, &scenarios)?
        } else {
            None
        };
        let total = repeats as usize * kinds.len();
        let mut step = 0;
        for round in 0..repeats {
            for &kind in &kinds {
                step += 1;
                eprintln!(
                    "[{step}/{total}] round {}/{repeats}: {kind} ({:.0} s elapsed)",
                    round + 1,
                    started.elapsed().as_secs_f64()
                );
                let running = match kinds::start(&mut lab, kind) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("    {kind}: cannot start: {e:#}");
                        for &s in scenarios.iter().filter(|s| s.applies(kind)) {
                            record(&mut cells, s, kind, Err(format!("cannot start: {e:#}")));
                        }
                        continue;
                    }
                };
                for &s in &scenarios {
                    if !s.applies(kind) {
                        continue;
                    }
                    // A short unmeasured run first: caches, neighbours and
                    // (for connection-tracking kinds) the flows settle.
                    if s.warm_up() {
                        let warm = Params {
                            seconds: 0.5,
                            ..params
                        };
                        let _ = scenario::measure(&mut lab, kind, s, &warm, 100 + round * 2);
                    }
                    let r = scenario::measure(&mut lab, kind, s, &params, round * 2 + 1);
                    match &r {
                        Ok(x) if s == Scenario::FilterFlood => {
                            eprintln!("    {s:<15} {}", report::flood_line(x));
                        }
                        Ok(x) => eprintln!(
                            "    {s:<15} {:>10.3} {:<7} cpu {:.2} µs/{}{}",
                            x.value,
                            s.unit(),
                            x.cpu_us,
                            s.per(),
                            if s.tcp() {
                                String::new()
                            } else {
                                format!(
                                    ", {}offered {:.3} Mpps, lost {:.1}%",
                                    if s == Scenario::Udp64 {
                                        format!(
                                            "flat out {:.3} Mpps at {:.2} µs/packet; at ≤1% loss: ",
                                            x.overload_pps / 1e6,
                                            x.overload_cpu_us
                                        )
                                    } else {
                                        String::new()
                                    },
                                    x.offered_pps / 1e6,
                                    (1.0 - x.delivered_pps / x.offered_pps.max(1.0)).max(0.0)
                                        * 100.0
                                )
                            }
                        ),
                        Err(e) => eprintln!("    {s:<15} failed: {e:#}"),
                    }
                    if round == 0
                        && s == Scenario::Udp64
                        && Some(kind) == pace_kind
                        && a.latency_pps.is_none()
                        && let Ok(x) = &r
                    {
                        params.latency_pps = (x.delivered_pps / 2.0) as u64;
                    }
                    record(&mut cells, s, kind, r.map_err(|e| format!("{e:#}")));
                }
                let stats = running.lvc_stats(&lab);
                if !stats.is_empty() {
                    std::fs::create_dir_all(&a.out)?;
                    let _ = std::fs::write(a.out.join(format!("{kind}-stats.txt")), stats);
                }
                running.stop(&mut lab)?;
            }
        }
        if let Some(dir) = scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let mut conntrack: Vec<ScaleResult> = Vec::new();
    for n in sizes.into_iter().filter(|&n| n > 0) {
        eprintln!("connection table with {n} flows…");
        match conntrack_scale(n) {
            Ok(r) => {
                eprintln!(
                    "    {:.0} bytes/flow, {:.2} M inserts/s, {:.1} ns per lookup",
                    r.bytes_per_flow, r.insert_mps, r.lookup_ns
                );
                conntrack.push(r);
            }
            Err(e) => eprintln!("    failed: {e:#}"),
        }
    }
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::probe(),
        placement,
        params,
        repeats,
        servers: a.servers,
        cells,
        conntrack,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let md = report.markdown();
    std::fs::write(a.out.join("results.md"), &md)?;
    std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    if let Err(e) = chart::draw(&report, &a.out.join("results.svg")) {
        eprintln!("lvc-bench: no chart: {e:#}");
    }
    println!("{md}");
    eprintln!(
        "lvc-bench: done in {:.0} s; results in {}",
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

fn record(
    cells: &mut Vec<Cell>,
    scenario: Scenario,
    kind: Kind,
    r: Result<scenario::Sample, String>,
) {
    let i = match cells
        .iter()
        .position(|c| c.scenario == scenario && c.kind == kind)
    {
        Some(i) => i,
        None => {
            cells.push(Cell {
                scenario,
                kind,
                samples: Vec::new(),
                error: None,
            });
            cells.len() - 1
        }
    };
    match r {
        Ok(s) => cells[i].samples.push(s),
        Err(e) => cells[i].error = Some(e),
    }
}

/// iperf3 and nginx on the servers, pinned to the load CPU; returns
/// nginx's scratch directory (to remove at the end).
fn start_endpoints(lab: &mut BenchLab, scenarios: &[Scenario]) -> Result<Option<PathBuf>> {
    let cpu = lab.placement.load_cpu.to_string();
    if scenarios.contains(&Scenario::TcpBulk) {
        let port = kinds::IPERF_PORT.to_string();
        lab.lab.spawn(
            "srv",
            "iperf3",
            &["taskset", "-c", &cpu, "iperf3", "-s", "-p", &port],
        );
    }
    let mut scratch = None;
    if scenarios
        .iter()
        .any(|s| matches!(s, Scenario::HttpKeepalive | Scenario::HttpClose))
    {
        let dir = std::env::temp_dir().join(format!("{}-nginx", lab.ns("srv")));
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             keepalive_requests 1000000;\n  \
             server {{ listen {} backlog=4096; location / {{ return 200 \"lvc-bench\\n\"; }} }}\n}}\n",
            kinds::HTTP_PORT
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let path = path.to_string_lossy().into_owned();
        lab.lab.spawn(
            "srv",
            "nginx",
            &["taskset", "-c", &cpu, "nginx", "-c", &path],
        );
        scratch = Some(dir);
    }
    // Wait until both answer on the first real server.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ok_http = !scenarios
            .iter()
            .any(|s| matches!(s, Scenario::HttpKeepalive | Scenario::HttpClose))
            || lab
                .lab
                .exec(
                    "srv",
                    &[
                        "curl",
                        "-s",
                        "-m",
                        "1",
                        &format!("http://{}/", lvc_bench::lab::rip(0)),
                    ],
                )
                .status
                .success();
        let ok_iperf = !scenarios.contains(&Scenario::TcpBulk)
            || lab
                .lab
                .exec(
                    "srv",
                    &[
                        "sh",
                        "-c",
                        &format!("ss -ltn | grep -q ':{} '", kinds::IPERF_PORT),
                    ],
                )
                .status
                .success();
        if ok_http && ok_iperf {
            return Ok(scratch);
        }
        if Instant::now() > deadline {
            bail!(
                "the servers' endpoints did not start: {}{}",
                lab.lab.log("nginx"),
                lab.lab.log("iperf3")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs `lvc-bench conntrack-scale` in a fresh process.
fn conntrack_scale(flows: usize) -> Result<ScaleResult> {
    let out = Command::new(std::env::current_exe()?)
        .args(["conntrack-scale", "--flows", &flows.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_str(
        String::from_utf8_lossy(&out.stdout).trim(),
    )?)
}
