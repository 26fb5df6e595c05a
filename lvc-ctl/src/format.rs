//! Human-readable output in ipvsadm's layout (and tc-like for shaping).

use lvc_proto::filter::{AddrMatch, Cidr, FilterListing, FilterRule, Policy, proto_name};
use lvc_proto::shape::{ClassStats, Qdisc, Rate, ShapeListing};
use lvc_proto::{ConnListing, Counters, Listing, Rates, ServerInfo, ServiceInfo, Status};
use std::fmt::Write;

/// How `list` (`-L`) shows the table. A client-class service's line ends
/// with its class, `from 10.1.0.0/24,…` (after the scheduler and flags, or
/// after the counters), in every view, ipvsadm's included: it is what
/// tells apart services of one VIP and ports.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListOpts {
    /// Traffic counters (`--stats`).
    pub stats: bool,
    /// Per-second rates (`--rate`).
    pub rate: bool,
    /// Connection thresholds (`--thresholds`).
    pub thresholds: bool,
    /// Numbers in full, not in K/M/G (`--exact`).
    pub exact: bool,
    /// ipvsadm's listing exactly (the `-L` spelling): its banner, services
    /// and servers sorted as ipvsadm sorts them, no lvc-only columns or
    /// flags, a sorry server only while it takes connections (as
    /// keepalived adds it).
    pub ipvsadm: bool,
    /// (ipvsadm) keep the configuration's order (`--nosort`).
    pub nosort: bool,
    /// Only this service (`-L -t VIP:PORT`): no banner.
    pub one: bool,
}

/// ipvsadm's banner: the IPVS interface version its listing follows, and
/// the connection table's size.
pub fn banner(l: &Listing) -> String {
    format!(
        "IP Virtual Server version 1.2.1 (size={})\n",
        l.conn_capacity
    )
}

/// The listing in `ipvsadm -L -n` layout (and its `--stats`, `--rate` and
/// `--thresholds` variants), column for column.
pub fn listing(l: &Listing, o: ListOpts) -> String {
    let mut s = String::new();
    if o.ipvsadm && !o.one {
        s.push_str(&banner(l));
    }
    let health = !o.ipvsadm
        && l.services
            .iter()
            .any(|v| v.sorry.is_some() || v.servers.iter().any(|r| r.health.is_some()));
    let title = "Prot LocalAddress:Port";
    if o.stats {
        let _ = writeln!(
            s,
            "{title:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
            "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"
        );
    } else if o.rate {
        let _ = writeln!(
            s,
            "{title:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
            "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"
        );
    } else if o.thresholds {
        let _ = writeln!(
            s,
            "{title:<33} {:<10} {:<10} {:<10} {:<10}\n  -> RemoteAddress:Port",
            "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"
        );
    } else {
        s.push_str("Prot LocalAddress:Port Scheduler Flags\n");
        s.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn");
        // ipvsadm's layout unless something is health-checked.
        s.push_str(if health { " Health\n" } else { "\n" });
    }
    let num = |v: u64| largenum(v, o.exact);
    let counters = |c: &Counters| {
        [
            c.conns,
            c.packets_in,
            c.packets_out,
            c.bytes_in,
            c.bytes_out,
        ]
    };
    let rates = |r: &Rates| {
        [
            r.conns,
            r.packets_in,
            r.packets_out,
            r.bytes_in,
            r.bytes_out,
        ]
    };
    let mut services: Vec<&ServiceInfo> = l.services.iter().collect();
    if o.ipvsadm && !o.nosort {
        services.sort_by_key(|v| crate::ipvsadm::order(&v.service));
    }
    for svc in services {
        // ipvsadm cuts an IPv4 service's name at 33 characters and a
        // server's at 28 (only port lists can be that long).
        let v4 = svc.service.vip.is_ipv4();
        let mut head = format!(
            "{}  {}",
            svc.service.proto.name().to_uppercase(),
            svc.service.endpoint()
        );
        if v4 {
            head.truncate(33);
        }
        if o.stats || o.rate {
            let v = if o.stats {
                counters(&svc.stats)
            } else {
                rates(&svc.rates)
            };
            // A client class ends the line, after ipvsadm's columns.
            let _ = writeln!(
                s,
                "{head:<33}{}{}",
                v.map(num).concat(),
                svc.service.class_suffix()
            );
            // What the filter, the service's lists or its rate limit
            // dropped: incoming packets and bytes, in their columns.
            let f = &svc.filtered;
            if o.stats && !o.ipvsadm && (f.packets > 0 || f.bytes > 0) {
                let blank = " ".repeat(9);
                let row = format!(
                    "  -> {:<28}{blank}{}{blank}{}",
                    "filtered",
                    num(f.packets),
                    num(f.bytes)
                );
                let _ = writeln!(s, "{row}");
            }
        } else {
            let mut flags = String::new();
            if let Some(p) = svc.persistent {
                let _ = write!(flags, " persistent {p}");
                if let Some(m) = svc.netmask {
                    let _ = write!(flags, " mask {m}");
                }
            }
            if svc.sloppy && !o.ipvsadm {
                flags.push_str(" sloppy");
            }
            // A client class ends the line, after ipvsadm's flags.
            let _ = writeln!(
                s,
                "{head} {}{flags}{}",
                svc.scheduler,
                svc.service.class_suffix()
            );
            if !o.ipvsadm && !svc.policy.is_empty() {
                let _ = writeln!(s, "  -> {}", policy(&svc.policy));
            }
        }
        let mut servers: Vec<(&ServerInfo, bool)> =
            svc.servers.iter().map(|r| (r, false)).collect();
        if o.ipvsadm && !o.nosort {
            servers.sort_by_key(|(r, _)| (r.addr.ip(), r.addr.port()));
        }
        // ipvsadm shows a sorry server as keepalived adds it: only while
        // it takes the connections.
        servers.extend(
            svc.sorry
                .iter()
                .filter(|r| !o.ipvsadm || r.weight > 0)
                .map(|r| (r, true)),
        );
        for (r, is_sorry) in servers {
            let mut name = r.addr.to_string();
            if v4 {
                name.truncate(28);
            }
            let head = format!("  -> {name:<28}");
            if o.stats {
                let _ = writeln!(s, "{head}{}", counters(&r.stats).map(num).concat());
            } else if o.rate {
                let v = rates(&r.rates);
                let _ = writeln!(
                    s,
                    "{head} {:>8} {:>8} {:>8}{}{}",
                    v[0],
                    v[1],
                    v[2],
                    num(v[3]),
                    num(v[4])
                );
            } else if o.thresholds {
                let _ = writeln!(
                    s,
                    "{head} {:<10} {:<10} {:<10} {:<10}",
                    r.limits.max, r.limits.min, r.active_conns, r.inactive_conns
                );
            } else {
                let cols = format!(
                    "{head} {:<7} {:<6} {:<10} {:<10}",
                    r.method.forward_label(),
                    r.weight,
                    r.active_conns,
                    r.inactive_conns
                );
                let state = health.then(|| match (&r.health, is_sorry) {
                    (_, true) if r.weight > 0 => "sorry server, in use".to_owned(),
                    (_, true) => "sorry server".to_owned(),
                    (Some(h), _) if h.up => format!("up ({})", h.check),
                    (Some(h), _) => format!("DOWN ({}: {})", h.check, h.last),
                    (None, _) => "-".to_owned(),
                });
                // lvc-only markers after the columns: how it is reached,
                // then its state.
                let mut marks = String::new();
                if !o.ipvsadm {
                    if !r.proxy_protocol.is_off() {
                        let _ = write!(marks, " (PROXY {})", r.proxy_protocol);
                    }
                    if r.overloaded {
                        marks.push_str(" (at max-conns)");
                    }
                }
                let _ = match state {
                    Some(state) => writeln!(s, "{cols}{state}{marks}"),
                    None => writeln!(s, "{cols}{}", marks.trim_start()),
                };
            }
        }
    }
    s
}

/// Prefixes a listing shows of one list before "(+N more)".
const SHOWN_PREFIXES: usize = 4;

/// `a,b,c,d (+N more)`: a list, shortened.
fn short_list(l: &[Cidr]) -> String {
    let shown: Vec<String> = l
        .iter()
        .take(SHOWN_PREFIXES)
        .map(|c| c.to_string())
        .collect();
    let mut out = shown.join(",");
    if l.len() > SHOWN_PREFIXES {
        let _ = write!(out, " (+{} more)", l.len() - SHOWN_PREFIXES);
    }
    out
}

/// A service's policy as `list` shows it: `allow 10.0.0.0/8 deny
/// 10.1.0.0/16 conn-rate 100/s burst 200` (the burst in effect).
fn policy(p: &Policy) -> String {
    let mut parts = Vec::new();
    if !p.allow.is_empty() {
        parts.push(format!("allow {}", short_list(&p.allow)));
    }
    if !p.deny.is_empty() {
        parts.push(format!("deny {}", short_list(&p.deny)));
    }
    if let (Some(r), Some(b)) = (p.conn_rate, p.burst()) {
        parts.push(format!("conn-rate {r}/s burst {b}"));
    }
    parts.join(" ")
}

/// What a filter rule matches, as `filter list` shows it: `src … dst …
/// proto tcp dport 80 iface eth0 real 10.2.0.11:80`, or `all`.
fn rule_matches(r: &FilterRule) -> String {
    let addrs = |m: &AddrMatch| match m {
        AddrMatch::Set(_) => m.to_string(),
        AddrMatch::Cidrs(l) => short_list(l),
    };
    let mut parts = Vec::new();
    if let Some(m) = &r.src {
        parts.push(format!("src {}", addrs(m)));
    }
    if let Some(m) = &r.dst {
        parts.push(format!("dst {}", addrs(m)));
    }
    if let Some(p) = r.proto {
        parts.push(format!("proto {}", proto_name(p)));
    }
    if let Some(p) = r.dport {
        parts.push(format!("dport {p}"));
    }
    if let Some(i) = &r.iface {
        parts.push(format!("iface {i}"));
    }
    if let Some(x) = &r.real {
        parts.push(format!("real {x}"));
    }
    if parts.is_empty() {
        "all".to_owned()
    } else {
        parts.join(" ")
    }
}

/// `filter list`: the rules in prio order (with `stats`, the packets and
/// bytes each matched, as `list --stats` prints counters), then the sets
/// and how many prefixes each holds.
pub fn filter_listing(l: &FilterListing, stats: bool, exact: bool) -> String {
    let mut s = String::new();
    let mut rules: Vec<_> = l.rules.iter().collect();
    rules.sort_by_key(|r| r.rule.prio);
    let w = rules
        .iter()
        .map(|r| r.rule.prio.to_string().len())
        .max()
        .unwrap_or(0)
        .max("Prio".len());
    if stats {
        let _ = writeln!(
            s,
            "{:<w$} {:<6} {:>8} {:>8} Match",
            "Prio", "Action", "Packets", "Bytes"
        );
    } else {
        let _ = writeln!(s, "{:<w$} {:<6} Match", "Prio", "Action");
    }
    for r in rules {
        let counters = if stats {
            largenum(r.stats.packets, exact) + &largenum(r.stats.bytes, exact)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{:<w$} {:<6}{counters} {}",
            r.rule.prio,
            r.rule.action.to_string(),
            rule_matches(&r.rule)
        );
    }
    if !l.sets.is_empty() {
        let w = l
            .sets
            .iter()
            .map(|x| x.name.len())
            .max()
            .unwrap_or(0)
            .max("Set".len());
        let _ = writeln!(s, "\n{:<w$} Prefixes", "Set");
        for x in &l.sets {
            let _ = writeln!(s, "{:<w$} {}", x.name, x.prefixes);
        }
    }
    s
}

/// `ipvsadm -L -c -n` layout, exactly.
pub fn ipvsadm_conns(c: &ConnListing) -> String {
    let mut s = String::from("IPVS connection entries\n");
    let _ = writeln!(
        s,
        "pro expire {:<11} {:<18} {:<18} destination",
        "state", "source", "virtual"
    );
    for e in &c.conns {
        let _ = writeln!(
            s,
            "{:<3} {:<6} {:<11} {:<18} {:<18} {}",
            e.proto.name().to_uppercase(),
            format!("{:02}:{:02}", e.expires_in / 60, e.expires_in % 60),
            e.state,
            e.client.to_string(),
            e.vip.to_string(),
            e.real
        );
    }
    s
}

/// `lvc-ctl conns` layout: ipvsadm's columns, wider, and where each
/// connection is forwarded.
pub fn conns(c: &ConnListing) -> String {
    let mut s = String::from(
        "pro expire state       source                 virtual                destination            path\n",
    );
    for e in &c.conns {
        let _ = writeln!(
            s,
            "{:<3} {:02}:{:02}  {:<11} {:<22} {:<22} {:<22} {}",
            e.proto.name().to_uppercase(),
            e.expires_in / 60,
            e.expires_in % 60,
            e.state,
            e.client.to_string(),
            e.vip.to_string(),
            e.real.to_string(),
            if e.offloaded { "xdp" } else { "lvc" }
        );
    }
    if c.truncated {
        s.push_str("(list truncated: use --limit or filters)\n");
    }
    s
}

/// A counter as ipvsadm prints it: 9 columns, right-aligned; from 100
/// million on in K, M, G or T (thousands, millions …), unless `exact`.
pub fn largenum(i: u64, exact: bool) -> String {
    if exact {
        let digits = i.to_string();
        let width = if digits.len() <= 8 {
            9
        } else {
            digits.len() + 1
        };
        return format!("{i:>width$}");
    }
    match i {
        0..100_000_000 => format!("{i:>9}"),
        100_000_000..1_000_000_000 => format!("{:>8}K", i / 1_000),
        1_000_000_000..100_000_000_000 => format!("{:>8}M", i / 1_000_000),
        100_000_000_000..100_000_000_000_000 => format!("{:>8}G", i / 1_000_000_000),
        _ => format!("{:>8}T", i / 1_000_000_000_000),
    }
}

/// `ipvsadm -L --timeout`.
pub fn timeouts(t: &lvc_proto::config::Timeouts) -> String {
    format!(
        "Timeout (tcp tcpfin udp): {} {} {}\n",
        t.tcp, t.tcpfin, t.udp
    )
}

pub fn status(st: &Status) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "lvc-dataplane {}, up {}s", st.version, st.uptime_secs);
    for i in &st.interfaces {
        let _ = writeln!(
            s,
            "interface {} (ifindex {}): {} queue(s), XDP {} mode, AF_XDP {}",
            i.name,
            i.ifindex,
            i.queues,
            i.xdp_mode,
            if i.zero_copy {
                "zero-copy"
            } else {
                "copy mode"
            }
        );
    }
    let _ = writeln!(
        s,
        "workers {}, connections {}/{}",
        st.workers, st.flows, st.flow_capacity
    );
    let t = &st.timeouts;
    let _ = writeln!(
        s,
        "timeouts tcp {} tcpfin {} udp {}",
        t.tcp, t.tcpfin, t.udp
    );
    if !st.local_pool.is_empty() {
        let pool: Vec<String> = st.local_pool.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "fullnat local pool {} ({} ports in use)",
            pool.join(", "),
            st.local_ports_in_use
        );
    }
    for d in &st.draining {
        let _ = writeln!(s, "draining {d} (deleted; its connections finish)");
    }
    if !st.announced.is_empty() {
        let vips: Vec<String> = st.announced.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(s, "announced {}", vips.join(", "));
    }
    for (name, v) in st.counters.iter().filter(|(_, v)| *v > 0) {
        let _ = writeln!(s, "  {name:<28} {v}");
    }
    s
}

/// `shape list`: per interface its root, classes and filters, then the
/// policers; with `stats`, each followed by its counters.
pub fn shaping(l: &ShapeListing, stats: bool) -> String {
    let mut s = String::new();
    for d in &l.devs {
        let _ = write!(s, "dev {} root {}", d.dev, d.rate);
        if let Some(def) = d.default {
            let _ = write!(s, " default {def}");
        }
        s.push('\n');
        if stats {
            let _ = writeln!(
                s,
                "  {}, direct {} pkts",
                class_stats(&d.stats),
                d.direct_packets
            );
        }
        for c in &d.classes {
            let spec = &c.spec;
            let parent = match spec.parent {
                Some(p) if !p.is_root() => p.to_string(),
                _ => "root".to_owned(),
            };
            let _ = write!(
                s,
                "  class {} parent {parent} rate {} ceil {}",
                spec.classid,
                spec.rate,
                spec.ceil()
            );
            if let Some(b) = spec.burst {
                let _ = write!(s, " burst {b}");
            }
            let _ = write!(s, " prio {}", spec.prio);
            if spec.bounded {
                s.push_str(" bounded");
            }
            if spec.isolated {
                s.push_str(" isolated");
            }
            if c.leaf {
                let _ = write!(s, " {}", qdisc(&spec.qdisc));
            }
            s.push('\n');
            if stats {
                let _ = writeln!(s, "    {}", class_stats(&c.stats));
            }
        }
        for f in &d.filters {
            let m: Vec<String> = f.spec.matches.iter().map(|m| m.to_string()).collect();
            let _ = writeln!(
                s,
                "  filter prio {} {} → {}",
                f.spec.prio,
                m.join(" and "),
                f.spec.flowid
            );
            if stats {
                let _ = writeln!(s, "    hits {} pkts", f.hits);
            }
        }
    }
    for p in &l.police {
        let _ = writeln!(
            s,
            "police {} rate {} burst {}",
            p.spec.target, p.spec.rate, p.spec.burst
        );
        if stats {
            let _ = writeln!(
                s,
                "  passed {} bytes {} pkts, dropped {} bytes {} pkts",
                p.passed_bytes, p.passed_packets, p.dropped_bytes, p.dropped_packets
            );
        }
    }
    s
}

/// `sfq(quantum 1514b perturb 10)`: the kind and the options given.
fn qdisc(q: &Qdisc) -> String {
    fn given<T: std::fmt::Display>(v: &Option<T>) -> Option<String> {
        v.as_ref().map(|v| v.to_string())
    }
    let opts: Vec<(&str, Option<String>)> = match q {
        Qdisc::Sfq {
            quantum,
            perturb,
            flows,
            limit,
        } => vec![
            ("quantum", given(quantum)),
            ("perturb", given(perturb)),
            ("flows", given(flows)),
            ("limit", given(limit)),
        ],
        Qdisc::Fifo { limit } | Qdisc::Prio3 { limit } => vec![("limit", given(limit))],
        Qdisc::Red {
            min,
            max,
            probability,
            limit,
        } => vec![
            ("min", Some(min.to_string())),
            ("max", Some(max.to_string())),
            ("probability", Some(probability.to_string())),
            ("limit", given(limit)),
        ],
        Qdisc::Tbf {
            rate,
            burst,
            limit,
            latency,
        } => vec![
            ("rate", Some(rate.to_string())),
            ("burst", Some(burst.to_string())),
            ("limit", given(limit)),
            ("latency", given(latency)),
        ],
    };
    let opts: Vec<String> = opts
        .into_iter()
        .filter_map(|(name, v)| Some(format!("{name} {}", v?)))
        .collect();
    if opts.is_empty() {
        q.name().to_owned()
    } else {
        format!("{}({})", q.name(), opts.join(" "))
    }
}

/// One line of a class's (or a root's) counters.
fn class_stats(c: &ClassStats) -> String {
    format!(
        "sent {} bytes {} pkts, dropped {}, overlimits {}, backlog {}b {}p, rate {}, borrowed {} bytes {} pkts",
        c.bytes,
        c.packets,
        c.drops,
        c.overlimits,
        c.backlog_bytes,
        c.backlog_packets,
        rate(c.rate_bps),
        c.borrowed_bytes,
        c.borrowed_packets
    )
}

/// A measured rate: exact in tc's units when it is round (`70mbit`),
/// else with one decimal in the largest unit it reaches (`69.8mbit`).
fn rate(bps: u64) -> String {
    if bps == 0 {
        return "0bit".to_owned();
    }
    for (div, unit) in [
        (1_000_000_000, "gbit"),
        (1_000_000, "mbit"),
        (1_000, "kbit"),
    ] {
        if bps >= div {
            return if bps.is_multiple_of(div) {
                Rate(bps).to_string()
            } else {
                format!("{:.1}{unit}", bps as f64 / div as f64)
            };
        }
    }
    format!("{bps}bit")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lvc_proto::{ConnInfo, Method, Protocol, Scheduler, ServerInfo, ServiceInfo};

    fn sample() -> Listing {
        Listing {
            services: vec![ServiceInfo {
                service: "tcp:10.0.0.10:80".parse().unwrap(),
                scheduler: Scheduler::Rr,
                persistent: None,
                netmask: None,
                stats: Counters {
                    conns: 3,
                    packets_in: 30,
                    packets_out: 20,
                    bytes_in: 2000,
                    bytes_out: 250_000,
                },
                rates: Rates {
                    conns: 1,
                    packets_in: 10,
                    packets_out: 7,
                    bytes_in: 700,
                    bytes_out: 125_000,
                },
                servers: vec![
                    ServerInfo {
                        addr: "10.0.1.1:80".parse().unwrap(),
                        method: Method::Nat,
                        weight: 1,
                        active_conns: 2,
                        inactive_conns: 1,
                        stats: Counters::default(),
                        rates: Rates::default(),
                        health: None,
                        limits: Default::default(),
                        overloaded: false,
                        proxy_protocol: Default::default(),
                    },
                    ServerInfo {
                        addr: "10.0.1.2:8080".parse().unwrap(),
                        method: Method::Dnat,
                        weight: 3,
                        active_conns: 0,
                        inactive_conns: 0,
                        stats: Counters::default(),
                        rates: Rates::default(),
                        health: None,
                        limits: Default::default(),
                        overloaded: false,
                        proxy_protocol: Default::default(),
                    },
                ],
                check: Default::default(),
                alert: None,
                sorry: None,
                sloppy: false,
                policy: Default::default(),
                filtered: Default::default(),
            }],
            conn_capacity: 1 << 20,
        }
    }

    fn opts() -> ListOpts {
        ListOpts::default()
    }

    #[test]
    fn golden_listing() {
        assert_eq!(
            listing(&sample(), opts()),
            "Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.10:80 rr
  -> 10.0.1.1:80                  Masq    1      2          1         
  -> 10.0.1.2:8080                Dnat    3      0          0         
"
        );
    }

    #[test]
    fn golden_listing_with_health() {
        let mut l = sample();
        l.services[0].servers[0].health = Some(lvc_proto::health::HealthInfo {
            up: true,
            check: "http:/health".into(),
            last: "ok".into(),
            since_secs: 3,
            checks: 9,
            failures: 0,
            transitions: 0,
        });
        l.services[0].servers[1].health = Some(lvc_proto::health::HealthInfo {
            up: false,
            check: "tcp".into(),
            last: "connect: connection refused".into(),
            since_secs: 3,
            checks: 9,
            failures: 3,
            transitions: 1,
        });
        let mut sorry = l.services[0].servers[0].clone();
        (sorry.addr, sorry.health, sorry.weight) = ("10.0.2.9:80".parse().unwrap(), None, 0);
        l.services[0].sorry = Some(sorry);
        assert_eq!(
            listing(&l, opts()),
            "Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn Health
TCP  10.0.0.10:80 rr
  -> 10.0.1.1:80                  Masq    1      2          1         up (http:/health)
  -> 10.0.1.2:8080                Dnat    3      0          0         DOWN (tcp: connect: connection refused)
  -> 10.0.2.9:80                  Masq    0      2          1         sorry server
"
        );
    }

    /// `list`: a server's PROXY protocol header and its overload after
    /// its columns (after its health if there is a Health column); none
    /// of it in ipvsadm's listing.
    #[test]
    fn golden_listing_with_proxy_protocol() {
        use lvc_proto::ProxyProtocol;
        let mut l = sample();
        l.services[0].servers[0].proxy_protocol = ProxyProtocol::V2;
        l.services[0].servers[1].proxy_protocol = ProxyProtocol::V1;
        l.services[0].servers[1].method = Method::Fullnat;
        l.services[0].servers[1].overloaded = true;
        assert_eq!(
            listing(&l, opts()),
            "Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.10:80 rr
  -> 10.0.1.1:80                  Masq    1      2          1         (PROXY v2)
  -> 10.0.1.2:8080                FullNat 3      0          0         (PROXY v1) (at max-conns)
"
        );
        let mut checked = l.clone();
        checked.services[0].servers[0].health = Some(lvc_proto::health::HealthInfo {
            up: true,
            check: "tcp".into(),
            last: "ok".into(),
            since_secs: 3,
            checks: 9,
            failures: 0,
            transitions: 0,
        });
        assert_eq!(
            listing(&checked, opts()),
            "Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn Health
TCP  10.0.0.10:80 rr
  -> 10.0.1.1:80                  Masq    1      2          1         up (tcp) (PROXY v2)
  -> 10.0.1.2:8080                FullNat 3      0          0         - (PROXY v1) (at max-conns)
"
        );
        // -L: byte for byte what it is without them; the other views never
        // show them.
        let mut plain = l.clone();
        for r in &mut plain.services[0].servers {
            r.proxy_protocol = ProxyProtocol::Off;
            r.overloaded = false;
        }
        for o in [
            ListOpts {
                ipvsadm: true,
                ..opts()
            },
            ListOpts {
                ipvsadm: true,
                stats: true,
                ..opts()
            },
            ListOpts {
                stats: true,
                ..opts()
            },
            ListOpts {
                rate: true,
                ..opts()
            },
            ListOpts {
                thresholds: true,
                ..opts()
            },
        ] {
            assert_eq!(listing(&l, o), listing(&plain, o), "{o:?}");
        }
    }

    #[test]
    fn persistence_masks_as_ipvsadm_shows_them() {
        let mut l = sample();
        l.services[0].persistent = Some(360);
        l.services[0].netmask = Some(lvc_proto::Netmask::dotted(24));
        let mut v6 = l.services[0].clone();
        v6.service = "tcp:[2001:db8::10]:80".parse().unwrap();
        v6.persistent = Some(60);
        v6.netmask = Some(lvc_proto::Netmask::Prefix(64));
        v6.servers.clear();
        l.services.push(v6);
        let out = listing(&l, opts());
        assert!(
            out.contains("\nTCP  10.0.0.10:80 rr persistent 360 mask 255.255.255.0\n"),
            "{out}"
        );
        assert!(
            out.contains("\nTCP  [2001:db8::10]:80 rr persistent 60 mask 64\n"),
            "{out}"
        );
    }

    #[test]
    fn golden_stats() {
        assert_eq!(
            listing(
                &sample(),
                ListOpts {
                    stats: true,
                    ..opts()
                }
            ),
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.0.0.10:80                        3       30       20     2000   250000
  -> 10.0.1.1:80                         0        0        0        0        0
  -> 10.0.1.2:8080                       0        0        0        0        0
"
        );
    }

    #[test]
    fn golden_rate() {
        assert_eq!(
            listing(
                &sample(),
                ListOpts {
                    rate: true,
                    ..opts()
                }
            ),
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS
  -> RemoteAddress:Port
TCP  10.0.0.10:80                        1       10        7      700   125000
  -> 10.0.1.1:80                         0        0        0        0        0
  -> 10.0.1.2:8080                       0        0        0        0        0
"
        );
    }

    /// `-L`: ipvsadm's banner, its order of services and servers, no
    /// lvc-only columns, a sorry server only while it is in use.
    #[test]
    fn golden_ipvsadm_listing() {
        let mut l = sample();
        let mut udp = l.services[0].clone();
        udp.service = "udp:10.0.0.10:53".parse().unwrap();
        udp.scheduler = Scheduler::Wlc;
        udp.persistent = Some(360);
        udp.netmask = Some(lvc_proto::Netmask::dotted(24));
        udp.sloppy = true;
        udp.servers.reverse();
        let mut v6 = l.services[0].clone();
        v6.service = "tcp:[2001:db8::10]:80".parse().unwrap();
        v6.servers.truncate(1);
        v6.servers[0].addr = "[2001:db8:1::1]:80".parse().unwrap();
        v6.servers[0].method = Method::Dr;
        let mut idle_sorry = l.services[0].servers[0].clone();
        idle_sorry.weight = 0;
        idle_sorry.addr = "10.0.2.9:80".parse().unwrap();
        l.services[0].sorry = Some(idle_sorry);
        l.services.insert(0, v6);
        l.services.insert(0, udp);
        let o = ListOpts {
            ipvsadm: true,
            ..opts()
        };
        assert_eq!(
            listing(&l, o),
            "IP Virtual Server version 1.2.1 (size=1048576)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.10:80 rr
  -> 10.0.1.1:80                  Masq    1      2          1         
  -> 10.0.1.2:8080                Dnat    3      0          0         
UDP  10.0.0.10:53 wlc persistent 360 mask 255.255.255.0
  -> 10.0.1.1:80                  Masq    1      2          1         
  -> 10.0.1.2:8080                Dnat    3      0          0         
TCP  [2001:db8::10]:80 rr
  -> [2001:db8:1::1]:80           Route   1      2          1         
"
        );
        // One service: no banner; --nosort keeps the configuration's order.
        let one = listing(
            &Listing {
                services: vec![l.services[0].clone()],
                conn_capacity: 0,
            },
            ListOpts { one: true, ..o },
        );
        assert!(
            one.starts_with("Prot LocalAddress:Port Scheduler Flags\n"),
            "{one}"
        );
        let unsorted = listing(&l, ListOpts { nosort: true, ..o });
        assert!(unsorted.find("UDP  10.0.0.10:53") < unsorted.find("TCP  10.0.0.10:80"));
        // The thresholds view.
        l.services[1].servers[0].limits = lvc_proto::ConnLimits { max: 100, min: 60 };
        assert_eq!(
            listing(
                &Listing {
                    services: vec![l.services[2].clone(), l.services[1].clone()],
                    conn_capacity: 4096,
                },
                ListOpts {
                    thresholds: true,
                    ..o
                }
            ),
            "IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn 
  -> RemoteAddress:Port
TCP  10.0.0.10:80 rr
  -> 10.0.1.1:80                  0          0          2          1         
  -> 10.0.1.2:8080                0          0          0          0         
TCP  [2001:db8::10]:80 rr
  -> [2001:db8:1::1]:80           100        60         2          1         
"
        );
    }

    /// A client-class service's line ends with its class, in every view;
    /// ipvsadm's sorts the classes of one VIP and port after the service
    /// without one.
    #[test]
    fn golden_listing_with_client_classes() {
        let mut l = sample();
        l.services[0].servers.truncate(1);
        let mut class = l.services[0].clone();
        class.service = "tcp:10.0.0.10:80 from 10.1.0.0/24,192.0.2.0/24"
            .parse()
            .unwrap();
        class.scheduler = Scheduler::Wrr;
        class.persistent = Some(360);
        class.sloppy = true;
        class.policy = Policy {
            deny: vec!["10.1.0.128/25".parse().unwrap()],
            ..Policy::default()
        };
        class.servers[0].addr = "10.0.1.9:80".parse().unwrap();
        let mut v6 = l.services[0].clone();
        v6.service = "tcp:[2001:db8::10]:80 from 2001:db8:a::/48"
            .parse()
            .unwrap();
        v6.servers.clear();
        l.services.insert(0, class);
        l.services.push(v6);
        assert_eq!(
            listing(&l, opts()),
            "Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.10:80 wrr persistent 360 sloppy from 10.1.0.0/24,192.0.2.0/24
  -> deny 10.1.0.128/25
  -> 10.0.1.9:80                  Masq    1      2          1         
TCP  10.0.0.10:80 rr
  -> 10.0.1.1:80                  Masq    1      2          1         
TCP  [2001:db8::10]:80 rr from 2001:db8:a::/48
"
        );
        let ipvsadm = ListOpts {
            ipvsadm: true,
            ..opts()
        };
        assert_eq!(
            listing(&l, ipvsadm),
            "IP Virtual Server version 1.2.1 (size=1048576)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.10:80 rr
  -> 10.0.1.1:80                  Masq    1      2          1         
TCP  10.0.0.10:80 wrr persistent 360 from 10.1.0.0/24,192.0.2.0/24
  -> 10.0.1.9:80                  Masq    1      2          1         
TCP  [2001:db8::10]:80 rr from 2001:db8:a::/48
"
        );
        assert_eq!(
            listing(
                &l,
                ListOpts {
                    stats: true,
                    ..ipvsadm
                }
            ),
            "IP Virtual Server version 1.2.1 (size=1048576)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.0.0.10:80                        3       30       20     2000   250000
  -> 10.0.1.1:80                         0        0        0        0        0
TCP  10.0.0.10:80                        3       30       20     2000   250000 from 10.1.0.0/24,192.0.2.0/24
  -> 10.0.1.9:80                         0        0        0        0        0
TCP  [2001:db8::10]:80                   3       30       20     2000   250000 from 2001:db8:a::/48
"
        );
        let rate = listing(
            &l,
            ListOpts {
                rate: true,
                ..opts()
            },
        );
        assert!(
            rate.contains(
                "\nTCP  10.0.0.10:80                        1       10        7      700   125000 \
                 from 10.1.0.0/24,192.0.2.0/24\n"
            ),
            "{rate}"
        );
        let thresholds = listing(
            &l,
            ListOpts {
                thresholds: true,
                ..opts()
            },
        );
        assert!(
            thresholds.contains("\nTCP  [2001:db8::10]:80 rr from 2001:db8:a::/48\n"),
            "{thresholds}"
        );
        // Without classes, -L is what it always was.
        let plain = Listing {
            services: vec![l.services[1].clone()],
            conn_capacity: 1 << 20,
        };
        assert_eq!(
            listing(&plain, ipvsadm),
            "IP Virtual Server version 1.2.1 (size=1048576)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.10:80 rr
  -> 10.0.1.1:80                  Masq    1      2          1         
"
        );
    }

    #[test]
    fn large_numbers_as_ipvsadm_prints_them() {
        for (n, short, exact) in [
            (0, "        0", "        0"),
            (99_999_999, " 99999999", " 99999999"),
            (100_000_000, "  100000K", " 100000000"),
            (999_999_999, "  999999K", " 999999999"),
            (1_000_000_000, "    1000M", " 1000000000"),
            (123_456_789_012, "     123G", " 123456789012"),
            (100_000_000_000_000, "     100T", " 100000000000000"),
        ] {
            assert_eq!(largenum(n, false), short, "{n}");
            assert_eq!(largenum(n, true), exact, "{n}");
        }
    }

    #[test]
    fn golden_ipvsadm_conns_and_timeouts() {
        let c = ConnListing {
            conns: vec![
                ConnInfo {
                    proto: Protocol::Tcp,
                    client: "10.1.0.2:40000".parse().unwrap(),
                    vip: "10.0.0.10:80".parse().unwrap(),
                    real: "10.0.1.1:80".parse().unwrap(),
                    method: Method::Nat,
                    state: "ESTABLISHED".into(),
                    expires_in: 899,
                    offloaded: true,
                },
                ConnInfo {
                    proto: Protocol::Udp,
                    client: "[2001:db8:9::2]:5353".parse().unwrap(),
                    vip: "[2001:db8::10]:53".parse().unwrap(),
                    real: "[2001:db8:1::1]:53".parse().unwrap(),
                    method: Method::Dr,
                    state: "UDP".into(),
                    expires_in: 65,
                    offloaded: false,
                },
            ],
            truncated: false,
        };
        assert_eq!(
            ipvsadm_conns(&c),
            "IPVS connection entries
pro expire state       source             virtual            destination
TCP 14:59  ESTABLISHED 10.1.0.2:40000     10.0.0.10:80       10.0.1.1:80
UDP 01:05  UDP         [2001:db8:9::2]:5353 [2001:db8::10]:53  [2001:db8:1::1]:53
"
        );
        let t = lvc_proto::config::Timeouts::default();
        assert_eq!(timeouts(&t), "Timeout (tcp tcpfin udp): 900 120 300\n");
    }

    #[test]
    fn golden_conns() {
        let c = ConnListing {
            conns: vec![ConnInfo {
                proto: Protocol::Tcp,
                client: "10.1.0.2:40000".parse().unwrap(),
                vip: "10.0.0.10:80".parse().unwrap(),
                real: "10.0.1.1:80".parse().unwrap(),
                method: Method::Nat,
                state: "ESTABLISHED".into(),
                expires_in: 899,
                offloaded: true,
            }],
            truncated: false,
        };
        assert_eq!(
            conns(&c),
            "pro expire state       source                 virtual                destination            path
TCP 14:59  ESTABLISHED 10.1.0.2:40000         10.0.0.10:80           10.0.1.1:80            xdp
"
        );
    }

    fn shape_sample() -> ShapeListing {
        use lvc_proto::shape::{
            ClassInfo, ClassSpec, DevInfo, FilterInfo, FilterSpec, PoliceInfo, PoliceSpec,
            PoliceTarget,
        };
        let class = |id: &str, parent: &str, rate: &str, prio, qdisc| ClassSpec {
            classid: id.parse().unwrap(),
            parent: Some(parent.parse().unwrap()),
            rate: rate.parse().unwrap(),
            ceil: None,
            burst: None,
            prio,
            bounded: false,
            isolated: false,
            qdisc,
        };
        let mut c10 = class(
            "1:10",
            "1:",
            "70mbit",
            2,
            Qdisc::Sfq {
                quantum: Some("1514".parse().unwrap()),
                perturb: Some(10),
                flows: None,
                limit: None,
            },
        );
        c10.ceil = Some("100mbit".parse().unwrap());
        c10.burst = Some("45kb".parse().unwrap());
        let mut c20 = class("1:20", "1:", "30mbit", 4, Qdisc::Fifo { limit: Some(1000) });
        c20.bounded = true;
        ShapeListing {
            devs: vec![DevInfo {
                dev: "d1".into(),
                rate: "100mbit".parse().unwrap(),
                default: Some("1:20".parse().unwrap()),
                stats: ClassStats {
                    bytes: 3_000_000,
                    packets: 2000,
                    rate_bps: 99_950_000,
                    ..ClassStats::default()
                },
                direct_packets: 3,
                classes: vec![
                    ClassInfo {
                        spec: c10,
                        leaf: true,
                        stats: ClassStats {
                            bytes: 1_500_000,
                            packets: 1000,
                            drops: 4,
                            overlimits: 17,
                            backlog_packets: 2,
                            backlog_bytes: 3028,
                            rate_bps: 69_812_345,
                            borrowed_packets: 100,
                            borrowed_bytes: 151_400,
                        },
                    },
                    ClassInfo {
                        spec: c20,
                        leaf: true,
                        stats: ClassStats {
                            rate_bps: 30_000_000,
                            ..ClassStats::default()
                        },
                    },
                ],
                filters: vec![FilterInfo {
                    spec: FilterSpec {
                        prio: 1,
                        matches: vec![
                            "real 10.2.0.11".parse().unwrap(),
                            "ip tos 0x30 0xff".parse().unwrap(),
                        ],
                        flowid: "1:10".parse().unwrap(),
                    },
                    hits: 1000,
                }],
            }],
            police: vec![PoliceInfo {
                spec: PoliceSpec {
                    target: PoliceTarget::Service("tcp:10.9.0.10:80".parse().unwrap()),
                    rate: "10mbit".parse().unwrap(),
                    burst: "10kb".parse().unwrap(),
                },
                passed_packets: 50,
                passed_bytes: 60_000,
                dropped_packets: 5,
                dropped_bytes: 7_500,
            }],
        }
    }

    #[test]
    fn golden_shaping() {
        assert_eq!(
            shaping(&shape_sample(), false),
            "dev d1 root 100mbit default 1:20
  class 1:10 parent root rate 70mbit ceil 100mbit burst 45kb prio 2 sfq(quantum 1514b perturb 10)
  class 1:20 parent root rate 30mbit ceil 30mbit prio 4 bounded fifo(limit 1000)
  filter prio 1 real 10.2.0.11 and ip tos 0x30 0xff → 1:10
police service tcp 10.9.0.10:80 rate 10mbit burst 10kb
"
        );
    }

    #[test]
    fn golden_shaping_stats() {
        assert_eq!(
            shaping(&shape_sample(), true),
            "dev d1 root 100mbit default 1:20
  sent 3000000 bytes 2000 pkts, dropped 0, overlimits 0, backlog 0b 0p, rate 100.0mbit, borrowed 0 bytes 0 pkts, direct 3 pkts
  class 1:10 parent root rate 70mbit ceil 100mbit burst 45kb prio 2 sfq(quantum 1514b perturb 10)
    sent 1500000 bytes 1000 pkts, dropped 4, overlimits 17, backlog 3028b 2p, rate 69.8mbit, borrowed 151400 bytes 100 pkts
  class 1:20 parent root rate 30mbit ceil 30mbit prio 4 bounded fifo(limit 1000)
    sent 0 bytes 0 pkts, dropped 0, overlimits 0, backlog 0b 0p, rate 30mbit, borrowed 0 bytes 0 pkts
  filter prio 1 real 10.2.0.11 and ip tos 0x30 0xff → 1:10
    hits 1000 pkts
police service tcp 10.9.0.10:80 rate 10mbit burst 10kb
  passed 60000 bytes 50 pkts, dropped 7500 bytes 5 pkts
"
        );
        assert_eq!(rate(0), "0bit");
        assert_eq!(rate(999), "999bit");
        assert_eq!(rate(1_500_000), "1.5mbit");
        assert_eq!(rate(2_000_000_000), "2gbit");
        // The tc-like tbf and red forms.
        assert_eq!(
            qdisc(&Qdisc::Tbf {
                rate: "5mbit".parse().unwrap(),
                burst: "10kb".parse().unwrap(),
                limit: None,
                latency: Some("50ms".parse().unwrap()),
            }),
            "tbf(rate 5mbit burst 10kb latency 50ms)"
        );
        assert_eq!(qdisc(&Qdisc::Prio3 { limit: None }), "prio3");
    }

    /// `list`: a service's policy on a line of its own under it, long lists
    /// shortened; with --stats what was filtered, in the In columns;
    /// nothing of either in ipvsadm's listing.
    #[test]
    fn golden_listing_with_policy() {
        use lvc_proto::filter::{FilterCounters, cidr_list};
        let mut l = sample();
        l.services[0].policy = Policy {
            allow: cidr_list("10.0.0.0/8,192.0.2.0/24").unwrap(),
            deny: cidr_list("10.1.0.0/16").unwrap(),
            conn_rate: Some(100),
            conn_burst: Some(200),
        };
        l.services[0].filtered = FilterCounters {
            packets: 12,
            bytes: 720,
        };
        let mut other = l.services[0].clone();
        other.service = "udp:10.0.0.10:53".parse().unwrap();
        other.servers.clear();
        other.policy = Policy {
            deny: (1..=6)
                .map(|i| format!("192.0.2.{i}").parse().unwrap())
                .collect(),
            conn_rate: Some(50),
            ..Policy::default()
        };
        other.filtered = FilterCounters::default();
        l.services.push(other);
        assert_eq!(
            listing(&l, opts()),
            "Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.10:80 rr
  -> allow 10.0.0.0/8,192.0.2.0/24 deny 10.1.0.0/16 conn-rate 100/s burst 200
  -> 10.0.1.1:80                  Masq    1      2          1         
  -> 10.0.1.2:8080                Dnat    3      0          0         
UDP  10.0.0.10:53 rr
  -> deny 192.0.2.1/32,192.0.2.2/32,192.0.2.3/32,192.0.2.4/32 (+2 more) conn-rate 50/s burst 50
"
        );
        assert_eq!(
            listing(
                &l,
                ListOpts {
                    stats: true,
                    ..opts()
                }
            ),
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.0.0.10:80                        3       30       20     2000   250000
  -> filtered                                    12               720
  -> 10.0.1.1:80                         0        0        0        0        0
  -> 10.0.1.2:8080                       0        0        0        0        0
UDP  10.0.0.10:53                        3       30       20     2000   250000
"
        );
        let ipvsadm = |o: ListOpts| {
            let mut plain = l.clone();
            for v in &mut plain.services {
                v.policy = Policy::default();
                v.filtered = FilterCounters::default();
            }
            assert_eq!(listing(&l, o), listing(&plain, o));
        };
        ipvsadm(ListOpts {
            ipvsadm: true,
            ..opts()
        });
        ipvsadm(ListOpts {
            ipvsadm: true,
            stats: true,
            ..opts()
        });
    }

    fn filter_sample() -> FilterListing {
        use lvc_proto::filter::{FilterCounters, FilterRuleInfo, SetInfo};
        let rule = |toml_text: &str, packets: u64, bytes: u64| FilterRuleInfo {
            rule: lvc_proto::config::ConfigFile::parse(&format!(
                "[sets]\nbad-guys = []\n[[filter]]\n{toml_text}"
            ))
            .unwrap()
            .filters
            .remove(0),
            stats: FilterCounters { packets, bytes },
        };
        FilterListing {
            rules: vec![
                rule(
                    "prio = 100\naction = \"drop\"\nproto = \"tcp\"\ndport = \"1024-2047\"\nreal = \"10.2.0.11:80\"\n",
                    0,
                    0,
                ),
                rule(
                    "prio = 5\naction = \"drop\"\nsrc = \"@bad-guys\"\niface = \"eth0\"\n",
                    123_456_789,
                    9_876_543_210,
                ),
                rule(
                    "prio = 10\naction = \"accept\"\nsrc = \"10.0.0.0/8,10.1.0.0/16,10.2.0.0/16,10.3.0.0/16,10.4.0.0/16,10.5.0.0/16\"\ndst = \"2001:db8::10\"\n",
                    7,
                    420,
                ),
                rule("prio = 65000\naction = \"drop\"\n", 1, 60),
            ],
            sets: vec![
                SetInfo {
                    name: "bad-guys".into(),
                    prefixes: 1_000_000,
                },
                SetInfo {
                    name: "office".into(),
                    prefixes: 3,
                },
            ],
        }
    }

    #[test]
    fn golden_filter_listing() {
        assert_eq!(
            filter_listing(&filter_sample(), false, false),
            "Prio  Action Match
5     drop   src @bad-guys iface eth0
10    accept src 10.0.0.0/8,10.1.0.0/16,10.2.0.0/16,10.3.0.0/16 (+2 more) dst 2001:db8::10/128
100   drop   proto tcp dport 1024-2047 real 10.2.0.11:80
65000 drop   all

Set      Prefixes
bad-guys 1000000
office   3
"
        );
        assert_eq!(
            filter_listing(&filter_sample(), true, false),
            "Prio  Action  Packets    Bytes Match
5     drop    123456K    9876M src @bad-guys iface eth0
10    accept        7      420 src 10.0.0.0/8,10.1.0.0/16,10.2.0.0/16,10.3.0.0/16 (+2 more) dst 2001:db8::10/128
100   drop          0        0 proto tcp dport 1024-2047 real 10.2.0.11:80
65000 drop          1       60 all

Set      Prefixes
bad-guys 1000000
office   3
"
        );
        let exact = filter_listing(&filter_sample(), true, true);
        assert!(
            exact.contains("\n5     drop   123456789 9876543210 src @bad-guys"),
            "{exact}"
        );
        assert_eq!(
            filter_listing(&FilterListing::default(), false, false),
            "Prio Action Match\n"
        );
    }
}
