//! Results: medians with min/max over the repeats, ratios against
//! `afxdp-raw` and `iptables` (and `lvc-nat-shaped` against `lvc-nat`), the
//! issue's targets, as Markdown and JSON.

use crate::kinds::{Kind, LvcMethod};
use crate::lab::Placement;
use crate::scale::ScaleResult;
use crate::scenario::{self, Params, Sample, Scenario};
use serde::Serialize;
use std::fmt::Write;

/// All repeats of one (scenario, kind).
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub scenario: Scenario,
    pub kind: Kind,
    pub samples: Vec<Sample>,
    /// Why it has no samples, if it failed.
    pub error: Option<String>,
}

/// Median, min and max of a list.
pub fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((med, s[0], s[n - 1]))
}

impl Cell {
    pub fn value(&self) -> Option<(f64, f64, f64)> {
        stats(&self.samples.iter().map(|s| s.value).collect::<Vec<_>>())
    }

    pub fn cpu_us(&self) -> Option<f64> {
        stats(&self.samples.iter().map(|s| s.cpu_us).collect::<Vec<_>>()).map(|s| s.0)
    }

    /// The sample whose headline figure is the median (for latency and
    /// split, which are not averaged).
    pub fn median_sample(&self) -> Option<&Sample> {
        let (med, ..) = self.value()?;
        self.samples
            .iter()
            .min_by(|a, b| (a.value - med).abs().total_cmp(&(b.value - med).abs()))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub iptables: String,
}

impl Machine {
    pub fn probe() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let iptables = std::process::Command::new("iptables")
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Self {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpus: crate::cpu::count(),
            cpu_model,
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            iptables,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub machine: Machine,
    pub placement: Placement,
    pub params: Params,
    pub repeats: u32,
    pub servers: usize,
    pub cells: Vec<Cell>,
    pub conntrack: Vec<ScaleResult>,
}

/// filter-flood in one line: "filter flood: X Mpps dropped at Y µs CPU
/// per packet; undenied 100 kpps delivered Z kpps (W % loss)", and what
/// the generator sent (the XDP `drop_filter` counter against it).
pub fn flood_line(s: &Sample) -> String {
    let nominal = scenario::UNDENIED_PPS as f64;
    let offered = if (s.offered_pps - nominal).abs() > 0.02 * nominal {
        format!(" (offered {:.1})", s.offered_pps / 1e3)
    } else {
        String::new()
    };
    let mut line = format!(
        "filter flood: {:.3} Mpps dropped at {:.3} µs CPU per packet; undenied {:.0} kpps{offered} delivered {:.1} kpps ({:.1} % loss)",
        s.value,
        s.cpu_us,
        nominal / 1e3,
        s.delivered_pps / 1e3,
        (1.0 - s.delivered_pps / s.offered_pps.max(1.0)).max(0.0) * 100.0
    );
    if let Some(f) = &s.flood {
        let _ = write!(
            line,
            "; flood sent {:.3} Mpps, {:.1} % of it dropped by the filter (drop_filter {} of {})",
            f.sent as f64 / f.seconds.max(1e-9) / 1e6,
            f.drop_filter as f64 / f.sent.max(1) as f64 * 100.0,
            f.drop_filter,
            f.sent
        );
    }
    line
}

const LVC_NAT: Kind = Kind::Lvc(LvcMethod::Nat);
/// lvc-nat with every packet through the AF_XDP workers (what shaped
/// flows, which stay in userspace, are compared with).
const LVC_NAT_XSK: Kind = Kind::LvcNoOffload(LvcMethod::Nat);

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

impl Report {
    pub fn cell(&self, scenario: Scenario, kind: Kind) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.scenario == scenario && c.kind == kind)
    }

    fn median(&self, scenario: Scenario, kind: Kind) -> Option<f64> {
        self.cell(scenario, kind)?.value().map(|v| v.0)
    }

    /// `kind`'s median over `base`'s in `scenario`, with both medians.
    fn ratio(&self, scenario: Scenario, kind: Kind, base: Kind) -> Option<(f64, f64, f64)> {
        let a = self.median(scenario, kind)?;
        let b = self.median(scenario, base)?;
        (b > 0.0).then(|| (a / b, a, b))
    }

    /// A target on [`Report::ratio`]: `what: kind / base scenario ≥ min`,
    /// the ratio, both medians and the verdict; None unless both ran.
    fn ratio_target(
        &self,
        what: &str,
        scenario: Scenario,
        kind: Kind,
        base: Kind,
        min: f64,
    ) -> Option<String> {
        let (r, a, b) = self.ratio(scenario, kind, base)?;
        Some(format!(
            "{what}: {kind} / {base} {scenario} ≥ {min:.2}: {r:.2} ({a:.3} vs {b:.3} {}) — {}",
            scenario.unit(),
            verdict(r >= min)
        ))
    }

    /// Kinds in the report, in the canonical order.
    pub fn kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .iter()
            .copied()
            .filter(|k| self.cells.iter().any(|c| c.kind == *k))
            .collect()
    }

    fn scenarios(&self) -> Vec<Scenario> {
        Scenario::ALL
            .iter()
            .copied()
            .filter(|s| self.cells.iter().any(|c| c.scenario == *s))
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "## lvc-bench results\n");
        let _ = writeln!(
            md,
            "Machine: {} CPUs ({}), {} GiB, Linux {}; {}. Placement: load (generator, clients, servers and their NAPI threads) on CPU {}, director (its processes and its interfaces' NAPI threads) on CPU {}. {} real servers; {} s per run, {} runs each: median (min–max).\n",
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.kernel,
            m.iptables,
            self.placement.load_cpu,
            self.placement.director_cpu,
            self.servers,
            self.params.seconds,
            self.repeats
        );
        let _ = writeln!(md, "Command: `{}`\n", self.command);
        let scen: Vec<Scenario> = self
            .scenarios()
            .into_iter()
            .filter(|s| *s != Scenario::Latency)
            .collect();
        if !scen.is_empty() {
            let _ = writeln!(md, "### Throughput\n");
            let mut head = "| director |".to_owned();
            let mut rule = "|---|".to_owned();
            for s in &scen {
                let _ = write!(head, " {} ({}) |", s, s.unit());
                rule.push_str("---:|");
            }
            let flat = scen.contains(&Scenario::Udp64);
            if flat {
                head.push_str(" udp64 flat out (Mpps) |");
            }
            let _ = writeln!(md, "{head}\n{rule}{}", if flat { "---:|" } else { "" });
            for k in self.kinds() {
                let mut row = format!("| {k} |");
                for s in &scen {
                    let _ = write!(row, " {} |", self.figure(*s, k));
                }
                if flat {
                    let v: Vec<f64> = self
                        .cell(Scenario::Udp64, k)
                        .map(|c| c.samples.iter().map(|s| s.overload_pps / 1e6).collect())
                        .unwrap_or_default();
                    match stats(&v) {
                        Some((m, lo, hi)) if v.len() > 1 => {
                            let _ = write!(row, " {m:.3} ({lo:.3}–{hi:.3}) |");
                        }
                        Some((m, ..)) => {
                            let _ = write!(row, " {m:.3} |");
                        }
                        None => row.push_str(" – |"),
                    }
                }
                let _ = writeln!(md, "{row}");
            }
            let lvcs: Vec<Kind> = self.kinds().into_iter().filter(|k| k.is_lvc()).collect();
            let pairs = [Kind::AfxdpRaw, Kind::Iptables]
                .into_iter()
                .flat_map(|base| lvcs.iter().map(move |&k| (k, base)))
                .chain([
                    (Kind::LvcNatShaped, LVC_NAT_XSK),
                    (LVC_NAT, LVC_NAT_XSK),
                    (LVC_NAT, Kind::XdpRedirect),
                ]);
            for (k, base) in pairs {
                let mut row = format!("| {k} ÷ {base} |");
                let mut any = false;
                for s in &scen {
                    match self.ratio(*s, k, base) {
                        Some((r, ..)) => {
                            any = true;
                            let _ = write!(row, " {r:.2}× |");
                        }
                        None => row.push_str(" – |"),
                    }
                }
                if any {
                    let _ = writeln!(md, "{row}");
                }
            }
            let _ = writeln!(
                md,
                "\n### Director CPU time (µs per packet, request or connection; lower is better)\n"
            );
            let mut head = "| director |".to_owned();
            for s in &scen {
                let _ = write!(head, " {} (per {}) |", s, s.per());
            }
            let _ = writeln!(md, "{head}\n{rule}");
            for k in self.kinds() {
                let mut row = format!("| {k} |");
                for s in &scen {
                    match self.cell(*s, k).and_then(Cell::cpu_us) {
                        Some(v) => {
                            let _ = write!(row, " {v:.3} |");
                        }
                        None => row.push_str(" – |"),
                    }
                }
                let _ = writeln!(md, "{row}");
            }
        }
        if self.cells.iter().any(|c| c.scenario == Scenario::Latency) {
            let _ = writeln!(
                md,
                "\n### One-way latency at {:.0} kpps (half of iptables' 64-byte peak, or lvc-nat's without iptables), µs\n",
                self.params.latency_pps as f64 / 1e3
            );
            let _ = writeln!(
                md,
                "| director | delivered kpps | p50 | p90 | p99 | p99.9 | max | p99 ÷ afxdp-raw |\n|---|---:|---:|---:|---:|---:|---:|---:|"
            );
            let base = self
                .cell(Scenario::Latency, Kind::AfxdpRaw)
                .and_then(Cell::median_sample)
                .and_then(|s| s.latency_us)
                .map(|l| l[2]);
            for k in self.kinds() {
                let Some(c) = self.cell(Scenario::Latency, k) else {
                    continue;
                };
                match c.median_sample().and_then(|s| s.latency_us.map(|l| (s, l))) {
                    Some((s, l)) => {
                        let ratio = base.map_or("–".to_owned(), |b| format!("{:.2}×", l[2] / b));
                        let _ = writeln!(
                            md,
                            "| {k} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {ratio} |",
                            s.delivered_pps / 1e3,
                            l[0],
                            l[1],
                            l[2],
                            l[3],
                            l[4]
                        );
                    }
                    None => {
                        let _ = writeln!(
                            md,
                            "| {k} | {} |",
                            c.error.as_deref().unwrap_or("no packets")
                        );
                    }
                }
            }
        }
        let floods: Vec<(Kind, &Sample)> = self
            .kinds()
            .into_iter()
            .filter_map(|k| Some((k, self.cell(Scenario::FilterFlood, k)?.median_sample()?)))
            .collect();
        if !floods.is_empty() {
            let _ = writeln!(
                md,
                "\n### Filter flood\n\nThe generator flat out from {}/{} (every packet a new flow) to the VIP, dropped by a filter rule in XDP, a second rule holding a set of {} /24s; meanwhile an undenied stream (the client, {} flows) paced at {:.0} kpps by a second generator on the load CPU (loss is against what it offered). Dropped: the XDP drop_filter counter per second (flood frames the director's receive ring had no room for never reach XDP: sent minus dropped); CPU: the director's busy time per dropped packet (it forwards the undenied stream too).\n",
                scenario::DENIED.0,
                scenario::DENIED.1,
                scenario::BLOCKLIST_PREFIXES,
                self.params.flows,
                scenario::UNDENIED_PPS as f64 / 1e3
            );
            for (k, s) in floods {
                let _ = writeln!(md, "- {k}: {}", flood_line(s));
            }
            if let Some(c) = self.cell(Scenario::Udp64, Kind::XdpRedirect) {
                let flat = stats(
                    &c.samples
                        .iter()
                        .map(|s| s.overload_cpu_us)
                        .collect::<Vec<_>>(),
                );
                if let (Some((flat, ..)), Some(paced)) = (flat, c.cpu_us()) {
                    let _ = writeln!(
                        md,
                        "- xdp-redirect (udp64, for comparison): {flat:.3} µs CPU per forwarded packet flat out ({paced:.3} at its ≤1 %-loss rate)"
                    );
                }
            }
        }
        let splits: Vec<(Kind, Vec<f64>)> = self
            .kinds()
            .into_iter()
            .filter_map(|k| {
                let s = self.cell(Scenario::Udp64, k)?.median_sample()?;
                (!s.split.is_empty()).then(|| (k, s.split.clone()))
            })
            .collect();
        if !splits.is_empty() {
            let _ = writeln!(md, "\n### Split between real servers (udp64, 256 flows)\n");
            for (k, v) in splits {
                let parts: Vec<String> = v.iter().map(|f| format!("{:.1}%", f * 100.0)).collect();
                let _ = writeln!(md, "- {k}: {}", parts.join(" / "));
            }
        }
        if !self.conntrack.is_empty() {
            let _ = writeln!(
                md,
                "\n### Connection table at scale (in-process, one thread)\n"
            );
            let _ = writeln!(
                md,
                "| flows | bytes per flow | insert (Mflows/s) | lookup hit (ns) | lookups (M/s) |\n|---:|---:|---:|---:|---:|"
            );
            for r in &self.conntrack {
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {:.2} | {:.1} | {:.1} |",
                    r.flows,
                    r.bytes_per_flow,
                    r.insert_mps,
                    r.lookup_ns,
                    1e3 / r.lookup_ns
                );
            }
        }
        let errors: Vec<&Cell> = self.cells.iter().filter(|c| c.error.is_some()).collect();
        if !errors.is_empty() {
            let _ = writeln!(md, "\n### Failed runs\n");
            for c in errors {
                let _ = writeln!(
                    md,
                    "- {} {}: {}",
                    c.kind,
                    c.scenario,
                    c.error.as_deref().unwrap_or("")
                );
            }
        }
        let _ = writeln!(md, "\n### Targets\n");
        for line in self.targets() {
            let _ = writeln!(md, "- {line}");
        }
        md
    }

    fn figure(&self, s: Scenario, k: Kind) -> String {
        let Some(c) = self.cell(s, k) else {
            return "–".into();
        };
        match c.value() {
            None => "failed".into(),
            Some((med, lo, hi)) => {
                let f = |v: f64| match s.unit() {
                    "Mpps" | "Mpps dropped" => format!("{v:.3}"),
                    "Gbit/s" => format!("{v:.2}"),
                    _ => format!("{v:.0}"),
                };
                if c.samples.len() > 1 {
                    format!("{} ({}–{})", f(med), f(lo), f(hi))
                } else {
                    f(med)
                }
            }
        }
    }

    /// The targets, each with where lvc stands.
    pub fn targets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let m = |s, k| self.median(s, k);
        out.extend(self.ratio_target(
            "64-byte UDP, offload on, ≥ 2× iptables",
            Scenario::Udp64,
            LVC_NAT,
            Kind::Iptables,
            2.0,
        ));
        out.extend(self.ratio_target(
            "64-byte UDP, offload on, near the kernel's XDP forwarder",
            Scenario::Udp64,
            LVC_NAT,
            Kind::XdpRedirect,
            0.8,
        ));
        out.extend(self.ratio_target(
            "new flows ≥ 1.2× iptables",
            Scenario::NewFlows,
            LVC_NAT,
            Kind::Iptables,
            1.2,
        ));
        out.extend(self.ratio_target(
            "new flows not slower with offload on",
            Scenario::NewFlows,
            LVC_NAT,
            LVC_NAT_XSK,
            1.0,
        ));
        out.extend(self.ratio_target(
            "64-byte UDP, offload off, near the AF_XDP ceiling",
            Scenario::Udp64,
            LVC_NAT_XSK,
            Kind::AfxdpRaw,
            0.9,
        ));
        out.extend(self.ratio_target(
            "shaping configured, not limiting (shaped flows stay in userspace)",
            Scenario::Udp64,
            Kind::LvcNatShaped,
            LVC_NAT_XSK,
            0.9,
        ));
        for s in [Scenario::TcpBulk, Scenario::HttpClose] {
            if let (Some(l), Some(i)) = (m(s, LVC_NAT), m(s, Kind::Iptables)) {
                out.push(format!(
                    "{s}, lvc-nat ≥ iptables: {:.2} vs {:.2} {} — {}",
                    l,
                    i,
                    s.unit(),
                    verdict(l >= i)
                ));
            }
        }
        let cpu = |k| self.cell(Scenario::HttpClose, k).and_then(Cell::cpu_us);
        if let (Some(l), Some(i)) = (cpu(LVC_NAT), cpu(Kind::Iptables)) {
            out.push(format!(
                "director CPU per connection, lvc-nat ≤ iptables: {l:.1} vs {i:.1} µs — {}",
                verdict(l <= i)
            ));
        }
        let p99 = |k| {
            self.cell(Scenario::Latency, k)
                .and_then(Cell::median_sample)
                .and_then(|s| s.latency_us)
                .map(|l| l[2])
        };
        if let (Some(l), Some(a)) = (p99(LVC_NAT), p99(Kind::Iptables)) {
            out.push(format!(
                "p99 latency at the latency pace ≤ 1.2× iptables: {l:.1} vs {a:.1} µs ({:.2}×) — {}",
                l / a,
                verdict(l <= 1.2 * a)
            ));
        }
        if let Some(r) = self.conntrack.iter().max_by_key(|r| r.flows) {
            out.push(format!(
                "conntrack ≤ 150 bytes per flow at {} flows: {:.0} B — {}",
                r.flows,
                r.bytes_per_flow,
                verdict(r.bytes_per_flow <= 150.0)
            ));
        }
        out.push("pipeline ≤ 60 ns per packet on a conntrack hit: see `cargo bench -p lvc-bench` (Criterion), not measured by this run".into());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(stats(&[]), None);
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
    }

    fn report(udp64: &[(Kind, f64)]) -> Report {
        let cells = udp64
            .iter()
            .map(|&(kind, value)| Cell {
                scenario: Scenario::Udp64,
                kind,
                samples: vec![Sample {
                    value,
                    ..Sample::default()
                }],
                error: None,
            })
            .collect();
        Report {
            command: "lvc-bench run".into(),
            machine: Machine {
                kernel: "6.1".into(),
                cpus: 2,
                cpu_model: "test".into(),
                memory_gib: 1.0,
                iptables: String::new(),
            },
            placement: Placement {
                load_cpu: 0,
                director_cpu: 1,
            },
            params: Params {
                seconds: 1.0,
                flows: 256,
                latency_pps: 1000,
            },
            repeats: 1,
            servers: 2,
            cells,
            conntrack: Vec::new(),
        }
    }

    #[test]
    fn filter_flood_section_and_dash_for_other_kinds() {
        let mut r = report(&[(LVC_NAT, 1.5), (Kind::XdpRedirect, 2.0)]);
        r.cells[1].samples[0].cpu_us = 0.25;
        r.cells[1].samples[0].overload_cpu_us = 0.125;
        r.cells.push(Cell {
            scenario: Scenario::FilterFlood,
            kind: LVC_NAT,
            samples: vec![Sample {
                value: 3.2,
                cpu_us: 0.125,
                offered_pps: 100_000.0,
                delivered_pps: 99_000.0,
                flood: Some(crate::scenario::Flood {
                    sent: 1000,
                    seconds: 0.25,
                    drop_filter: 900,
                    rule_packets: 1000,
                    ..Default::default()
                }),
                ..Sample::default()
            }],
            error: None,
        });
        let md = r.markdown();
        assert!(
            md.contains("| director | udp64 (Mpps) | filter-flood (Mpps dropped) |"),
            "{md}"
        );
        assert!(md.contains("| xdp-redirect | 2.000 | – |"), "{md}");
        assert!(md.contains("| lvc-nat | 1.500 | 3.200 |"), "{md}");
        assert!(
            md.contains("- lvc-nat: filter flood: 3.200 Mpps dropped at 0.125 µs CPU per packet; undenied 100 kpps delivered 99.0 kpps (1.0 % loss); flood sent 0.004 Mpps, 90.0 % of it dropped by the filter (drop_filter 900 of 1000)"),
            "{md}"
        );
        assert!(
            md.contains(
                "- xdp-redirect (udp64, for comparison): 0.125 µs CPU per forwarded packet flat out (0.250 at its ≤1 %-loss rate)"
            ),
            "{md}"
        );
    }

    #[test]
    fn shaping_target_and_ratio_row() {
        let r = report(&[
            (LVC_NAT_XSK, 2.0),
            (Kind::LvcNatShaped, 1.9),
            (Kind::AfxdpRaw, 2.5),
        ]);
        let t = r.targets();
        assert!(
            t.contains(&"shaping configured, not limiting (shaped flows stay in userspace): lvc-nat-shaped / lvc-nat-no-offload udp64 ≥ 0.90: 0.95 (1.900 vs 2.000 Mpps) — met".to_owned()),
            "{t:#?}"
        );
        assert!(
            t.contains(&"64-byte UDP, offload off, near the AF_XDP ceiling: lvc-nat-no-offload / afxdp-raw udp64 ≥ 0.90: 0.80 (2.000 vs 2.500 Mpps) — NOT met".to_owned()),
            "{t:#?}"
        );
        let md = r.markdown();
        assert!(
            md.contains("| lvc-nat-shaped ÷ lvc-nat-no-offload | 0.95× |"),
            "{md}"
        );
        assert!(
            md.contains("| lvc-nat-shaped ÷ afxdp-raw | 0.76× |"),
            "{md}"
        );
        let slow = report(&[(LVC_NAT_XSK, 2.0), (Kind::LvcNatShaped, 1.7)]).targets();
        assert!(
            slow.iter()
                .any(|l| l.starts_with("shaping configured") && l.ends_with("— NOT met")),
            "{slow:#?}"
        );
        // Without lvc-nat there is nothing to compare with.
        let alone = report(&[(Kind::LvcNatShaped, 1.7)]).targets();
        assert!(
            !alone.iter().any(|l| l.starts_with("shaping")),
            "{alone:#?}"
        );
    }
}
