//! ipvsadm's rules format: what `ipvsadm -S -n` writes and `ipvsadm -R`
//! reads (`-A -t VIP:PORT -s SCHED …` then `-a -t VIP:PORT -r RIP:PORT -m
//! -w N` per server). lvc-ctl reads every line with its own command-line
//! grammar, so a rule means here what the same command typed means.

use crate::{Cli, Show, request};
use clap::Parser;
use lvc_proto::config::{ConfigFile, ServiceConfig};
use lvc_proto::{Clients, Method, Netmask, Request, ServiceKey};
use std::fmt::Write;
use std::net::IpAddr;

/// Whether `text` holds ipvsadm rules rather than a config file: its
/// first line that is not blank or a comment is an option (`-A …`).
pub fn is_rules(text: &str) -> bool {
    meaningful(text)
        .next()
        .is_some_and(|(_, l)| l.starts_with('-'))
}

/// Lines that are not blank or comments, numbered from 1.
fn meaningful(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// A line cut into words at blanks; single or double quotes keep blanks
/// inside one word.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.get_or_insert_default().push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.get_or_insert_default();
            }
            (None, c) if c.is_whitespace() => out.extend(cur.take()),
            (None, c) => cur.get_or_insert_default().push(c),
        }
    }
    if quote.is_some() {
        return Err("a quote is not closed".into());
    }
    out.extend(cur);
    Ok(out)
}

/// The requests that `text`'s rules make, each with its line number; an
/// error names the line. Only changes can be restored: services, servers,
/// `-C` and `--set`.
pub fn parse_rules(text: &str) -> Result<Vec<(usize, Request)>, String> {
    let mut out = Vec::new();
    for (n, line) in meaningful(text) {
        let at = |e: String| format!("line {n}: `{line}`: {e}");
        let argv = words(line).map_err(at)?;
        let cli = Cli::try_parse_from(std::iter::once("lvc-ctl".to_owned()).chain(argv.clone()))
            .map_err(|e| {
                let first = e.to_string();
                let first = first
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ")
                    .to_owned();
                at(first)
            })?;
        let cmd = cli
            .cmd
            .ok_or_else(|| at("a rule must be a command (-A, -a, …)".into()))?;
        let (req, show) = request(cmd, crate::ipvsadm_style(&argv)).map_err(|(_, e)| at(e))?;
        let restorable = matches!(show, Show::Nothing)
            && matches!(
                req,
                Request::AddService { .. }
                    | Request::EditService { .. }
                    | Request::DelService { .. }
                    | Request::AddServer { .. }
                    | Request::EditServer { .. }
                    | Request::DelServer { .. }
                    | Request::Clear {}
                    | Request::SetTimeouts { .. }
            );
        if !restorable {
            return Err(at(
                "only services, servers, -C and --set can be restored".into()
            ));
        }
        out.push((n, req));
    }
    Ok(out)
}

/// ipvsadm's order of services (`-L`, `-S`): IPv4 before IPv6, TCP
/// before UDP, then address, port; services of one VIP and port by client
/// class, the one without `--from` first.
pub fn order(k: &ServiceKey) -> (bool, u8, IpAddr, u16, Clients) {
    (
        k.vip.is_ipv6(),
        k.proto.number(),
        k.vip,
        k.ports.ranges()[0].0,
        k.from,
    )
}

/// The configuration as ipvsadm-save rules, or, if anything in it would be
/// lost that way, an error listing what (client-class services, services'
/// client policies, servers' PROXY protocol headers and the global
/// filter's rules and sets among them). Timeouts, the fullnat
/// pool and shaping are not part of ipvsadm's rules (`ipvsadm -S` does not
/// write timeouts either) and are left out.
pub fn rules(cfg: &ConfigFile) -> Result<String, String> {
    let mut out = String::new();
    let mut lost = Vec::new();
    let mut services: Vec<(ServiceKey, &ServiceConfig)> = Vec::new();
    for svc in &cfg.services {
        services.push((svc.key()?, svc));
    }
    services.sort_by_key(|(k, _)| order(k));
    for (key, svc) in services {
        let flag = match key.proto {
            lvc_proto::Protocol::Tcp => "-t",
            lvc_proto::Protocol::Udp => "-u",
        };
        let name = format!("{flag} {}", key.endpoint());
        if !key.from.is_empty() {
            lost.push(format!(
                "service {key}: a client class (ipvsadm has no --from)"
            ));
        }
        if key.ports.single_port().is_none() {
            lost.push(format!(
                "service {key}: several ports (an ipvsadm service has one, or 0 for all)"
            ));
        }
        for (what, present) in [
            ("a health check", svc.check.is_some()),
            ("an alert command", svc.alert.is_some()),
            ("a sorry server", svc.sorry.is_some()),
            ("sloppy TCP", svc.sloppy),
            ("an allow list", !svc.allow.is_empty()),
            ("a deny list", !svc.deny.is_empty()),
            (
                "a connection rate limit",
                svc.conn_rate.is_some() || svc.conn_burst.is_some(),
            ),
        ] {
            if present {
                lost.push(format!("service {key}: {what}"));
            }
        }
        let _ = write!(out, "-A {name} -s {}", svc.scheduler);
        if let Some(p) = svc.persistent {
            let _ = write!(out, " -p {p}");
            match (svc.netmask, key.vip) {
                (Some(m), IpAddr::V4(_)) if m.bits() < 32 => {
                    let _ = write!(out, " -M {}", Netmask::dotted(m.bits()));
                }
                (Some(m), IpAddr::V6(_)) if m.bits() < 128 => {
                    let _ = write!(out, " -M {}", m.bits());
                }
                _ => {}
            }
        }
        out.push('\n');
        let mut servers: Vec<_> = svc
            .servers
            .iter()
            .map(|s| (s.real.resolve(&key), s))
            .collect();
        servers.sort_by_key(|(a, _)| (a.ip(), a.port()));
        for (addr, srv) in servers {
            let switch = match srv.method {
                Method::Nat => "-m",
                Method::Dr => "-g",
                Method::Tun => "-i",
                m @ (Method::Dnat | Method::Fullnat) => {
                    lost.push(format!("service {key}, server {addr}: the {m} method"));
                    "?"
                }
            };
            if srv.check.is_some() {
                lost.push(format!("service {key}, server {addr}: a health check"));
            }
            if !srv.proxy_protocol.is_off() {
                lost.push(format!(
                    "service {key}, server {addr}: a PROXY protocol {} header",
                    srv.proxy_protocol
                ));
            }
            let _ = write!(out, "-a {name} -r {addr} {switch} -w {}", srv.weight);
            let limits = srv.limits();
            if limits.max != 0 {
                let _ = write!(out, " -x {}", limits.max);
            }
            if limits.min != 0 {
                let _ = write!(out, " -y {}", limits.min);
            }
            out.push('\n');
        }
    }
    // ipvsadm has no packet filter: the global filter's rules and sets.
    let mut filters: Vec<_> = cfg.filters.iter().collect();
    filters.sort_by_key(|r| r.prio);
    for r in filters {
        lost.push(format!("filter rule {} ({})", r.prio, r.action));
    }
    for (name, prefixes) in &cfg.sets {
        let n = prefixes.len();
        lost.push(format!(
            "filter set {name} ({n} prefix{})",
            if n == 1 { "" } else { "es" }
        ));
    }
    if lost.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "ipvsadm rules cannot express:\n  {}\n(`lvc-ctl save` writes the whole configuration)",
            lost.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_at_blanks_and_keep_quoted_ones() {
        assert_eq!(
            words("-A  -t 10.0.0.10:80\t-s rr").unwrap(),
            ["-A", "-t", "10.0.0.10:80", "-s", "rr"]
        );
        assert_eq!(
            words(r#"-E -t 10.0.0.10:80 --alert "logger -t lvc" --x ''"#).unwrap(),
            [
                "-E",
                "-t",
                "10.0.0.10:80",
                "--alert",
                "logger -t lvc",
                "--x",
                ""
            ]
        );
        assert!(words("-A \"open").is_err());
    }

    #[test]
    fn rules_are_told_from_a_config_file() {
        assert!(is_rules("# saved\n\n-A -t 10.0.0.10:80 -s wlc\n"));
        assert!(!is_rules("# lvc configuration\n[[service]]\n"));
        assert!(!is_rules(""));
    }

    #[test]
    fn rules_are_written_as_ipvsadm_save_writes_them() {
        let cfg = ConfigFile::parse(
            r#"
[timeouts]
tcp = 900
tcpfin = 120
udp = 300

[[service]]
udp = "10.0.0.10:53"
scheduler = "rr"

[[service.server]]
real = "10.0.1.2"
method = "dr"

[[service]]
tcp = "[2001:db8::10]:443"
scheduler = "sh"
persistent = 60
netmask = 64

[[service.server]]
real = "[2001:db8:1::1]:443"
method = "nat"

[[service]]
tcp = "10.0.0.10:80"
scheduler = "wlc"
persistent = 360
netmask = 24

[[service.server]]
real = "10.0.1.2:80"
weight = 3
method = "tun"

[[service.server]]
real = "10.0.1.1:8080"
method = "nat"
max_conns = 100
min_conns = 60
"#,
        )
        .unwrap();
        assert_eq!(
            rules(&cfg).unwrap(),
            "-A -t 10.0.0.10:80 -s wlc -p 360 -M 255.255.255.0
-a -t 10.0.0.10:80 -r 10.0.1.1:8080 -m -w 1 -x 100 -y 60
-a -t 10.0.0.10:80 -r 10.0.1.2:80 -i -w 3
-A -u 10.0.0.10:53 -s rr
-a -u 10.0.0.10:53 -r 10.0.1.2:53 -g -w 1
-A -t [2001:db8::10]:443 -s sh -p 60 -M 64
-a -t [2001:db8::10]:443 -r [2001:db8:1::1]:443 -m -w 1
"
        );
    }

    /// A server with a PROXY protocol header is refused by name, even
    /// where everything else could be written.
    #[test]
    fn proxy_protocol_servers_are_refused() {
        let text = r#"
[[service]]
tcp = "10.0.0.10:80"
scheduler = "wlc"

[[service.server]]
real = "10.0.1.1"
method = "nat"
proxy_protocol = "v2"

[[service.server]]
real = "10.0.1.2"
method = "nat"
"#;
        let e = rules(&ConfigFile::parse(text).unwrap()).unwrap_err();
        assert_eq!(
            e,
            "ipvsadm rules cannot express:
  service tcp 10.0.0.10:80, server 10.0.1.1:80: a PROXY protocol v2 header
(`lvc-ctl save` writes the whole configuration)"
        );
        let plain = text.replace("proxy_protocol = \"v2\"\n", "");
        assert_eq!(
            rules(&ConfigFile::parse(&plain).unwrap()).unwrap(),
            "-A -t 10.0.0.10:80 -s wlc
-a -t 10.0.0.10:80 -r 10.0.1.1:80 -m -w 1
-a -t 10.0.0.10:80 -r 10.0.1.2:80 -m -w 1
"
        );
    }

    /// Client-class services are refused, each by name; the service
    /// without a class alone is written as before.
    #[test]
    fn client_class_services_are_refused() {
        let text = r#"
[[service]]
tcp = "10.0.0.10:80"
scheduler = "wlc"

[[service.server]]
real = "10.0.1.1"
method = "nat"

[[service]]
tcp = "10.0.0.10:80"
from = ["10.1.0.0/24", "192.0.2.0/24"]
scheduler = "rr"

[[service.server]]
real = "10.0.1.9"
method = "nat"
proxy_protocol = "v1"

[[service]]
udp = "[2001:db8::10]:53"
from = ["2001:db8:a::/48"]
scheduler = "rr"
"#;
        let e = rules(&ConfigFile::parse(text).unwrap()).unwrap_err();
        assert_eq!(
            e,
            "ipvsadm rules cannot express:
  service tcp 10.0.0.10:80 from 10.1.0.0/24,192.0.2.0/24: a client class (ipvsadm has no --from)
  service tcp 10.0.0.10:80 from 10.1.0.0/24,192.0.2.0/24, server 10.0.1.9:80: a PROXY protocol v1 header
  service udp [2001:db8::10]:53 from 2001:db8:a::/48: a client class (ipvsadm has no --from)
(`lvc-ctl save` writes the whole configuration)"
        );
        let cfg = ConfigFile::parse(text).unwrap();
        let plain = ConfigFile {
            services: cfg.services[..1].to_vec(),
            ..cfg
        };
        assert_eq!(
            rules(&plain).unwrap(),
            "-A -t 10.0.0.10:80 -s wlc
-a -t 10.0.0.10:80 -r 10.0.1.1:80 -m -w 1
"
        );
    }

    #[test]
    fn what_ipvsadm_cannot_express_is_refused_by_name() {
        let cfg = ConfigFile::parse(
            r#"
[fullnat]
local = ["10.0.9.1"]

[[service]]
tcp = "10.0.0.10:8000-8099"
sloppy = true
check = { type = "tcp" }

[[service.server]]
real = "10.0.1.1"
method = "dnat"

[[service.server]]
real = "10.0.1.2"
method = "fullnat"
proxy_protocol = "v2"

[[service.server]]
real = "10.0.1.3"
method = "nat"
proxy_protocol = "v1"

[[service]]
tcp = "10.0.0.11:443"
allow = ["10.0.0.0/8"]
deny = ["10.1.0.0/16"]
conn_rate = 100

[sets]
bad-guys = ["192.0.2.0/24", "198.51.100.7/32"]

[[filter]]
prio = 20
action = "accept"
src = "10.0.0.0/8"

[[filter]]
prio = 10
src = "@bad-guys"
"#,
        )
        .unwrap();
        let e = rules(&cfg).unwrap_err();
        for what in [
            "service tcp 10.0.0.11:443: an allow list",
            "service tcp 10.0.0.11:443: a deny list",
            "service tcp 10.0.0.11:443: a connection rate limit",
            "filter rule 10 (drop)\n  filter rule 20 (accept)",
            "filter set bad-guys (2 prefixes)",
            "service tcp 10.0.0.10:8000-8099: several ports",
            "service tcp 10.0.0.10:8000-8099: a health check",
            "service tcp 10.0.0.10:8000-8099: sloppy TCP",
            "server 10.0.1.1:0: the dnat method",
            "server 10.0.1.2:0: the fullnat method",
            "service tcp 10.0.0.10:8000-8099, server 10.0.1.2:0: a PROXY protocol v2 header",
            "service tcp 10.0.0.10:8000-8099, server 10.0.1.3:0: a PROXY protocol v1 header",
            "`lvc-ctl save` writes the whole configuration",
        ] {
            assert!(e.contains(what), "{what}: {e}");
        }
    }
}
