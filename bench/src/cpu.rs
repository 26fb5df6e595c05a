//! CPU placement and accounting: pinning threads, finding NAPI threads,
//! and the busy time of one CPU from `/proc/stat`.

use anyhow::{Context, Result, bail};
use std::process::Command;

/// Thread ids of the threaded-NAPI kernel threads of interface `dev`
/// (named `napi/DEV-ID`; interface names are unique to the harness).
pub fn napi_threads(dev: &str) -> Vec<u32> {
    let prefix = format!("napi/{dev}-");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            out.push(pid);
        }
    }
    out
}

/// Pins thread (or process) `tid` to `cpu`.
pub fn pin(tid: u32, cpu: u32) -> Result<()> {
    command("taskset", &["-pc", &cpu.to_string(), &tid.to_string()])
}

/// Makes thread `tid` SCHED_FIFO (priority 50): it runs as soon as it has
/// work, ahead of every normal thread of its CPU.
pub fn realtime(tid: u32) -> Result<()> {
    command("chrt", &["-f", "-p", "50", &tid.to_string()])
}

fn command(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Busy time of `cpu` so far, in seconds (everything but idle and iowait).
pub fn busy_seconds(cpu: u32) -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_busy(&stat, cpu).unwrap_or(0.0)
}

/// CPUs online.
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn parse_busy(stat: &str, cpu: u32) -> Option<f64> {
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user).
    let busy: u64 = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
    Some(busy as f64 / clock_ticks())
}

/// USER_HZ: 100 on every Linux architecture lvc targets.
fn clock_ticks() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_excludes_idle_and_iowait() {
        let stat = "cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 10 0 10 500 5 0 0 0 0 0\ncpu1 100 0 50 300 7 10 40 0 0 0\n";
        assert_eq!(parse_busy(stat, 1), Some(2.0));
        assert_eq!(parse_busy(stat, 0), Some(0.2));
        assert_eq!(parse_busy(stat, 2), None);
    }
}
