//! `lvc-bench soak`: lvc-nat at the generator's full rate for minutes,
//! every packet a new flow — the connection table fills, evicts and
//! expires without pause — with the director's resident memory read after
//! every round. Memory must level off: the run fails if the last third of
//! it rose more than 2 % (and 4 MiB) above the peak of the first two.

use crate::kinds::{self, Kind, LvcMethod};
use crate::lab::{BenchLab, Placement};
use crate::scenario::{self, Params, Scenario};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::time::Instant;

/// One round of the soak.
#[derive(Clone, Debug, Serialize)]
pub struct Round {
    /// Seconds since the soak started (at the round's end).
    pub at_secs: f64,
    /// Delivered packets per second (every one a new flow), millions.
    pub mpps: f64,
    /// The director's resident memory, MiB.
    pub rss_mib: f64,
}

/// The lab's lvc-dataplane's resident memory, MiB.
fn rss_mib(lab: &BenchLab) -> Result<f64> {
    let sock = kinds::lvc_socket(lab);
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("lvc-dataplane --socket {}", sock.display())])
        .output()
        .context("pgrep")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .split_whitespace()
        .next()
        .context("the lab's lvc-dataplane is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

/// Runs the soak; prints a line per round and returns them.
pub fn run(
    minutes: f64,
    servers: usize,
    placement: Placement,
    offload: bool,
) -> Result<Vec<Round>> {
    let mut lab = BenchLab::build(servers, placement)?;
    let kind = if offload {
        Kind::Lvc(LvcMethod::Nat)
    } else {
        Kind::LvcNoOffload(LvcMethod::Nat)
    };
    let running = kinds::start(&mut lab, kind)?;
    let p = Params {
        seconds: 10.0,
        flows: 0,
        latency_pps: 0,
    };
    let started = Instant::now();
    let mut rounds = Vec::new();
    let mut round = 0u32;
    while started.elapsed().as_secs_f64() < minutes * 60.0 {
        // (Each round's flows are new: sources never used before.)
        let s = scenario::measure(&mut lab, kind, Scenario::NewFlows, &p, round)?;
        round += 1;
        let r = Round {
            at_secs: started.elapsed().as_secs_f64(),
            mpps: s.delivered_pps / 1e6,
            rss_mib: rss_mib(&lab)?,
        };
        eprintln!(
            "soak: {:6.0} s  {:.3} Mpps new flows  RSS {:.1} MiB",
            r.at_secs, r.mpps, r.rss_mib
        );
        rounds.push(r);
    }
    running.stop(&mut lab)?;
    // Levelled off: the last third never goes above what the first two
    // thirds reached (a UDP flow lives 300 s, so the first expiry wave,
    // at 5 minutes, is in the first two thirds of a 10-minute soak).
    let cut = rounds.len() * 2 / 3;
    if rounds.len() >= 6 {
        let before = rounds[..cut].iter().map(|r| r.rss_mib).fold(0.0, f64::max);
        let after = rounds[cut..].iter().map(|r| r.rss_mib).fold(0.0, f64::max);
        let end = rounds[rounds.len() - 1].rss_mib;
        eprintln!(
            "soak: RSS peak {before:.1} MiB in the first two thirds, {after:.1} MiB in the last third, {end:.1} MiB at the end"
        );
        if after - before > 4.0 && after > 1.02 * before {
            bail!("RSS kept growing: {before:.1} → {after:.1} MiB in the last third");
        }
    }
    Ok(rounds)
}
