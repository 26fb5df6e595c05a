//! `lvc-bench health-checks`: what checking many real servers costs the
//! director.
//!
//! ```text
//!  dir ─── lvhd0 ══ lvhs0 ─── srv
//!  10.2.0.1/16                10.2.0.2/16 + one address per real server
//!                             (10.2.1.0, 10.2.1.1, …); lvc-testsrv answers
//!                             HTTP on port 80 of all of them
//! ```
//! lvc-dataplane runs on the director with one service of N servers, first
//! with no check (the baseline), then with the check asked for. For each
//! run: probes done per second (from `lvc-ctl list --json`), and the CPU
//! time the daemon and its health thread used (from /proc), per second and
//! per probe.

use anyhow::{Context, Result, bail};
use lvc_tests::{Lab, bin};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const DIR_DEV: &str = "lvhd0";
const SRV_DEV: &str = "lvhs0";

/// Real server `i`: 10.2.1.0 onwards.
fn rip(i: usize) -> Ipv4Addr {
    let n = 0x0a02_0100u32 + i as u32;
    Ipv4Addr::from(n)
}

#[derive(Debug, Serialize)]
pub struct HealthRun {
    /// `none` for the baseline, else the check.
    pub check: String,
    pub servers: usize,
    pub interval_s: f64,
    pub seconds: f64,
    /// Probes done per second (all servers).
    pub checks_per_s: f64,
    /// Probes that failed (should be 0: every server answers).
    pub failures: u64,
    /// CPU of the whole daemon, % of one core.
    pub daemon_cpu_pct: f64,
    /// CPU of its health-check threads, % of one core.
    pub health_cpu_pct: f64,
    /// Health-thread CPU per probe, µs.
    pub cpu_us_per_check: f64,
}

/// Measures `check` (and a baseline without checks) on `servers` servers.
pub fn measure(servers: usize, interval: f64, seconds: f64, check: &str) -> Result<Vec<HealthRun>> {
    if servers == 0 || servers > 60_000 {
        bail!("--servers must be 1..=60000");
    }
    let mut lab = Lab::new("hcbench");
    lab.add_ns("dir");
    lab.add_ns("srv");
    lab.veth(("dir", DIR_DEV), ("srv", SRV_DEV), 1);
    lab.ip("dir", &["addr", "add", "10.2.0.1/16", "dev", DIR_DEV]);
    lab.ip("srv", &["addr", "add", "10.2.0.2/16", "dev", SRV_DEV]);
    // Thousands of addresses: one `ip -batch` instead of a process each.
    let batch: String = (0..servers)
        .map(|i| format!("addr add {}/16 dev {SRV_DEV}\n", rip(i)))
        .collect();
    let out = lab.exec_input("srv", &["ip", "-batch", "-"], batch.as_bytes());
    if !out.status.success() {
        bail!(
            "cannot add the servers' addresses: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    lab.sysctl("srv", "net.core.somaxconn=4096");
    // Permanent neighbour entries for the servers: the director's table
    // would otherwise overflow past 1024 resolved entries (gc_thresh3 is
    // not per namespace), and permanent entries do not count.
    let mac = lab.exec_ok(
        "srv",
        &["cat", &format!("/sys/class/net/{SRV_DEV}/address")],
    );
    let batch: String = (0..servers)
        .map(|i| {
            format!(
                "neigh replace {} lladdr {} dev {DIR_DEV} nud permanent\n",
                rip(i),
                mac.trim()
            )
        })
        .collect();
    let out = lab.exec_input("dir", &["ip", "-batch", "-"], batch.as_bytes());
    if !out.status.success() {
        bail!(
            "cannot add the servers' neighbours: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let srv = bin("lvc-testsrv").to_string_lossy().into_owned();
    lab.spawn("srv", "testsrv", &[&srv, "srv", "--http", "80"]);
    let mut runs = Vec::new();
    for kind in ["none", check] {
        runs.push(one_run(&mut lab, servers, interval, seconds, kind)?);
        if check == "none" {
            break;
        }
    }
    Ok(runs)
}

fn one_run(
    lab: &mut Lab,
    servers: usize,
    interval: f64,
    seconds: f64,
    check: &str,
) -> Result<HealthRun> {
    let sock = std::env::temp_dir().join(format!("{}.sock", lab.ns("hc")));
    let cfg_path = std::env::temp_dir().join(format!("{}.toml", lab.ns("hc")));
    let mut cfg = format!(
        "[[service]]\ntcp = \"10.9.0.10:80\"\ncheck = {{ type = \"{check}\", interval = {interval}, timeout = {} }}\n",
        (interval / 2.0).min(1.0)
    );
    for i in 0..servers {
        cfg.push_str(&format!("\n[[service.server]]\nreal = \"{}:80\"\n", rip(i)));
    }
    std::fs::write(&cfg_path, cfg)?;
    let dp = bin("lvc-dataplane").to_string_lossy().into_owned();
    let (s, c) = (
        sock.to_string_lossy().into_owned(),
        cfg_path.to_string_lossy().into_owned(),
    );
    let label = format!("lvc-{}", check.replace([':', '/'], "_"));
    let pid = lab.spawn(
        "dir",
        &label,
        &[
            &dp, "--socket", &s, "--iface", DIR_DEV, "--queues", "1", "--config", &c,
        ],
    );
    let ctl = bin("lvc-ctl").to_string_lossy().into_owned();
    let list = |lab: &Lab| -> Option<(u64, u64)> {
        let out = lab.exec("dir", &[&ctl, "--socket", &s, "list", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let srvs = v["services"][0]["servers"].as_array()?.clone();
        Some(srvs.iter().fold((0, 0), |(n, f), s| {
            (
                n + s["health"]["checks"].as_u64().unwrap_or(0),
                f + s["health"]["failures"].as_u64().unwrap_or(0),
            )
        }))
    };
    if !lab.wait_until(Duration::from_secs(30), || list(lab).is_some()) {
        bail!("lvc-dataplane did not start:\n{}", lab.log(&label));
    }
    // Let every server get its first probes (they are spread over one
    // interval) before measuring.
    std::thread::sleep(Duration::from_secs_f64(2.0 * interval + 1.0));
    let (n0, f0) = list(lab).context("list")?;
    let (d0, h0, t0) = (
        cpu_ticks(pid, None)?,
        cpu_ticks(pid, Some("lvc-health"))?,
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (d1, h1, el) = (
        cpu_ticks(pid, None)?,
        cpu_ticks(pid, Some("lvc-health"))?,
        t0.elapsed().as_secs_f64(),
    );
    let (n1, f1) = list(lab).context("list")?;
    lab.stop(&label, 15);
    let _ = std::fs::remove_file(&cfg_path);
    let hz = 100.0; // USER_HZ
    let checks = (n1 - n0) as f64;
    let health_s = (h1 - h0) as f64 / hz;
    Ok(HealthRun {
        check: check.to_owned(),
        servers,
        interval_s: interval,
        seconds: el,
        checks_per_s: checks / el,
        failures: f1 - f0,
        daemon_cpu_pct: 100.0 * (d1 - d0) as f64 / hz / el,
        health_cpu_pct: 100.0 * health_s / el,
        cpu_us_per_check: if checks > 0.0 {
            1e6 * health_s / checks
        } else {
            0.0
        },
    })
}

/// utime + stime of process `pid` (or of its threads whose name starts
/// with `thread`), in clock ticks.
fn cpu_ticks(pid: u32, thread: Option<&str>) -> Result<u64> {
    let ticks = |stat: &str| -> u64 {
        // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    match thread {
        None => Ok(ticks(&std::fs::read_to_string(format!(
            "/proc/{pid}/stat"
        ))?)),
        Some(name) => {
            let mut sum = 0;
            for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
                let dir = t?.path();
                let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                if comm.trim().starts_with(name) {
                    sum += ticks(&std::fs::read_to_string(dir.join("stat")).unwrap_or_default());
                }
            }
            Ok(sum)
        }
    }
}
