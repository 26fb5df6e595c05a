//! The configuration file (TOML), loaded by `lvc-dataplane --config FILE`.
//!
//! ```toml
//! [timeouts]                 # optional; IPVS defaults
//! tcp = 900
//! tcpfin = 120
//! udp = 300
//!
//! [[service]]
//! tcp = "10.0.0.10:80"       # or udp = "…"
//! scheduler = "rr"
//! persistent = 360           # optional: client affinity, seconds
//! netmask = "255.255.255.0"  # optional: per client network; or a prefix
//!                            # length, 24 (IPv6 services: 1..128, e.g. 64)
//!
//! [[service.server]]
//! real = "10.0.1.1:80"       # RIP[:PORT], port defaults to the service's
//! weight = 1
//! method = "nat"             # nat | dnat | dr | tun | fullnat
//! max_conns = 1000           # optional: no new connections at 1000 …
//! min_conns = 800            # … until back under 800 (default: ¾)
//! ```
//!
//! Health checks (see [`crate::health`]): `check = { type = "http:/health",
//! interval = 1, timeout = 0.5, rise = 2, fall = 3 }` on a service (the
//! default for its servers) or on a server (its own fields win);
//! `alert = "CMD"` and `sorry = { addr = "IP:PORT", method = "nat" }` on a
//! service.

use crate::health::{CheckSpec, Sorry};
use crate::shape::ShapeConfig;
use crate::{MAX_WEIGHT, Method, Protocol, RealSpec, Request, Scheduler, ServiceKey};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    /// The fullnat local address pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fullnat: Option<Fullnat>,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// Traffic shaping: `[[shape.dev]]` trees and `[[shape.police]]`.
    #[serde(default, skip_serializing_if = "ShapeConfig::is_empty")]
    pub shape: ShapeConfig,
    /// The global filter: `[[filter]]` rules over VIP traffic.
    #[serde(default, rename = "filter", skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<crate::filter::FilterRule>,
    /// Named prefix sets rules refer to as `@name`: `[sets] name = [...]`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sets: std::collections::BTreeMap<String, Vec<crate::filter::Cidr>>,
}

/// `[fullnat]`: the director's addresses fullnat connections come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fullnat {
    pub local: Vec<std::net::IpAddr>,
}

impl ConfigFile {
    /// The fullnat pool this file asks for (empty if none).
    pub fn local_pool(&self) -> &[std::net::IpAddr] {
        self.fullnat.as_ref().map_or(&[], |f| &f.local)
    }
}

/// Connection idle timeouts, seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Established TCP connections.
    pub tcp: u32,
    /// TCP connections after a FIN.
    pub tcpfin: u32,
    /// UDP "connections".
    pub udp: u32,
}

impl Default for Timeouts {
    /// IPVS's defaults.
    fn default() -> Self {
        Self {
            tcp: 900,
            tcpfin: 120,
            udp: 300,
        }
    }
}

/// Longest timeout accepted (one week), to catch unit mistakes.
pub const MAX_TIMEOUT: u32 = 7 * 24 * 3600;

impl Timeouts {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("tcp", self.tcp),
            ("tcpfin", self.tcpfin),
            ("udp", self.udp),
        ] {
            if v == 0 || v > MAX_TIMEOUT {
                return Err(format!(
                    "timeout {name} must be 1..={MAX_TIMEOUT} seconds, got {v}"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<String>,
    /// A client class: the clients this service is for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<crate::filter::Cidr>,
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Persistence timeout, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<u32>,
    /// Persistence granularity: `"255.255.255.0"` or a prefix length
    /// (`24`; IPv6 services: 1..=128 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<crate::Netmask>,
    /// The health check of its servers (each may override fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
    /// Run (`sh -c`) on every change of one of its servers' health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    /// Takes new connections while no real server does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry: Option<Sorry>,
    /// Picks up TCP connections mid-flow (directors behind ECMP).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sloppy: bool,
    /// Only these clients reach the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<crate::filter::Cidr>,
    /// These clients never reach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<crate::filter::Cidr>,
    /// New connections per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_burst: Option<u32>,
    #[serde(default, rename = "server")]
    pub servers: Vec<ServerConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub real: RealSpec,
    #[serde(default = "crate::default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub method: Method,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
    /// Upper connection threshold (ipvsadm -x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_conns: Option<u32>,
    /// Lower connection threshold (ipvsadm -y; default ¾ of max_conns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_conns: Option<u32>,
    /// `"v1"` or `"v2"`: a PROXY protocol header in front of each
    /// connection.
    #[serde(default, skip_serializing_if = "crate::ProxyProtocol::is_off")]
    pub proxy_protocol: crate::ProxyProtocol,
}

impl ServerConfig {
    /// Its connection thresholds.
    pub fn limits(&self) -> crate::ConnLimits {
        crate::ConnLimits {
            max: self.max_conns.unwrap_or(0),
            min: self.min_conns.unwrap_or(0),
        }
    }
}

impl ConfigFile {
    /// Parses and validates a file; errors name the line and the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: ConfigFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_owned(),
            }
        })?;
        cfg.requests_at().map_err(|p| p.in_text(text))?;
        Ok(cfg)
    }

    /// The canonical text of this configuration (what `lvc-ctl save`
    /// prints): parsing it gives back the same configuration, and rendering
    /// that gives back the same bytes.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::from("# lvc configuration\n");
        if let Some(t) = &self.timeouts {
            let _ = write!(
                s,
                "\n[timeouts]\ntcp = {}\ntcpfin = {}\nudp = {}\n",
                t.tcp, t.tcpfin, t.udp
            );
        }
        if let Some(f) = self.fullnat.as_ref().filter(|f| !f.local.is_empty()) {
            let list: Vec<String> = f.local.iter().map(|a| format!("\"{a}\"")).collect();
            let _ = write!(s, "\n[fullnat]\nlocal = [{}]\n", list.join(", "));
        }
        for svc in &self.services {
            s.push_str("\n[[service]]\n");
            if let Some(a) = &svc.tcp {
                let _ = writeln!(s, "tcp = {}", quote(a));
            }
            if let Some(a) = &svc.udp {
                let _ = writeln!(s, "udp = {}", quote(a));
            }
            if !svc.from.is_empty() {
                let l: Vec<String> = svc.from.iter().map(|c| format!("\"{c}\"")).collect();
                let _ = writeln!(s, "from = [{}]", l.join(", "));
            }
            let _ = writeln!(s, "scheduler = \"{}\"", svc.scheduler);
            if let Some(p) = svc.persistent {
                let _ = writeln!(s, "persistent = {p}");
            }
            match svc.netmask {
                Some(m @ crate::Netmask::Dotted(_)) => {
                    let _ = writeln!(s, "netmask = \"{m}\"");
                }
                Some(m @ crate::Netmask::Prefix(_)) => {
                    let _ = writeln!(s, "netmask = {m}");
                }
                None => {}
            }
            if let Some(c) = &svc.check {
                let _ = writeln!(s, "check = {}", inline_check(c));
            }
            if let Some(a) = &svc.alert {
                let _ = writeln!(s, "alert = {}", quote(a));
            }
            if svc.sloppy {
                s.push_str("sloppy = true\n");
            }
            for (name, list) in [("allow", &svc.allow), ("deny", &svc.deny)] {
                if !list.is_empty() {
                    let l: Vec<String> = list.iter().map(|c| format!("\"{c}\"")).collect();
                    let _ = writeln!(s, "{name} = [{}]", l.join(", "));
                }
            }
            if let Some(r) = svc.conn_rate {
                let _ = writeln!(s, "conn_rate = {r}");
            }
            if let Some(b) = svc.conn_burst {
                let _ = writeln!(s, "conn_burst = {b}");
            }
            if let Some(so) = &svc.sorry {
                let _ = writeln!(
                    s,
                    "sorry = {{ addr = \"{}\", method = \"{}\" }}",
                    so.addr, so.method
                );
            }
            for srv in &svc.servers {
                let _ = write!(
                    s,
                    "\n[[service.server]]\nreal = \"{}\"\nweight = {}\nmethod = \"{}\"\n",
                    srv.real, srv.weight, srv.method
                );
                if let Some(c) = &srv.check {
                    let _ = writeln!(s, "check = {}", inline_check(c));
                }
                let limits = srv.limits();
                if limits.max != 0 {
                    let _ = writeln!(s, "max_conns = {}", limits.max);
                }
                if limits.min != 0 {
                    let _ = writeln!(s, "min_conns = {}", limits.min);
                }
                if !srv.proxy_protocol.is_off() {
                    let _ = writeln!(s, "proxy_protocol = \"{}\"", srv.proxy_protocol);
                }
            }
        }
        if !self.sets.is_empty() {
            s.push_str("\n[sets]\n");
            for (name, list) in &self.sets {
                let _ = writeln!(s, "{} = [", quote(name));
                for c in list {
                    let _ = writeln!(s, "  \"{c}\",");
                }
                s.push_str("]\n");
            }
        }
        for r in &self.filters {
            let _ = write!(
                s,
                "\n[[filter]]\nprio = {}\naction = \"{}\"\n",
                r.prio, r.action
            );
            for (name, m) in [("src", &r.src), ("dst", &r.dst)] {
                if let Some(m) = m {
                    let _ = writeln!(s, "{name} = \"{m}\"");
                }
            }
            if let Some(p) = r.proto {
                let _ = writeln!(s, "proto = \"{}\"", crate::filter::proto_name(p));
            }
            if let Some(p) = r.dport {
                let _ = writeln!(s, "dport = \"{p}\"");
            }
            if let Some(i) = &r.iface {
                let _ = writeln!(s, "iface = {}", quote(i));
            }
            if let Some(x) = &r.real {
                let _ = writeln!(s, "real = \"{x}\"");
            }
        }
        if !self.shape.is_empty() {
            #[derive(Serialize)]
            struct Shape<'a> {
                shape: &'a ShapeConfig,
            }
            match toml::to_string(&Shape { shape: &self.shape }) {
                Ok(t) => {
                    s.push('\n');
                    s.push_str(&t);
                }
                Err(e) => {
                    let _ = writeln!(s, "# shaping could not be written: {e}");
                }
            }
        }
        s
    }

    /// The file as the control requests that build it, validated.
    pub fn requests(&self) -> Result<Vec<Request>, String> {
        self.requests_at().map_err(|e| e.message)
    }

    /// Like [`requests`](Self::requests), saying where a problem is.
    fn requests_at(&self) -> Result<Vec<Request>, Problem> {
        if let Some(t) = &self.timeouts {
            t.validate().map_err(|message| Problem {
                at: Place::Timeouts,
                message,
            })?;
        }
        crate::check_local_pool(self.local_pool()).map_err(|message| Problem {
            at: Place::Fullnat,
            message,
        })?;
        self.shape.validate().map_err(|message| Problem {
            at: Place::Shape,
            message,
        })?;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (i, svc) in self.services.iter().enumerate() {
            let at = |server: Option<usize>, message: String| Problem {
                at: Place::Service { index: i, server },
                message,
            };
            let key = svc
                .key()
                .map_err(|e| at(None, format!("service #{}: {e}", i + 1)))?;
            if !seen.insert(key) {
                return Err(at(None, format!("service {key} is defined twice")));
            }
            crate::check_persistence(key.vip, svc.persistent, svc.netmask)
                .map_err(|e| at(None, format!("service {key}: {e}")))?;
            let check = svc.check.clone().unwrap_or_default();
            check
                .validate()
                .map_err(|e| at(None, format!("service {key}: check: {e}")))?;
            let policy = svc.policy();
            policy
                .validate(key.vip.is_ipv4())
                .map_err(|e| at(None, format!("service {key}: {e}")))?;
            out.push(Request::AddService {
                service: key,
                scheduler: svc.scheduler,
                persistent: svc.persistent,
                netmask: svc.netmask,
                check,
                alert: svc.alert.clone(),
                sorry: svc.sorry,
                sloppy: svc.sloppy,
                policy,
            });
            let mut reals = HashSet::new();
            for (j, srv) in svc.servers.iter().enumerate() {
                if srv.weight > MAX_WEIGHT {
                    return Err(at(
                        Some(j),
                        format!(
                            "service {key}, server {}: weight must be 0..={MAX_WEIGHT}",
                            srv.real
                        ),
                    ));
                }
                if srv.method == crate::Method::Fullnat && self.local_pool().is_empty() {
                    return Err(at(
                        Some(j),
                        format!(
                            "service {key}, server {}: the fullnat method needs a local address pool ([fullnat] local = [...])",
                            srv.real
                        ),
                    ));
                }
                if !reals.insert(srv.real.resolve(&key)) {
                    return Err(at(
                        Some(j),
                        format!("service {key}: server {} is listed twice", srv.real),
                    ));
                }
                let check = srv.check.clone().unwrap_or_default();
                check.validate().map_err(|e| {
                    at(
                        Some(j),
                        format!("service {key}, server {}: check: {e}", srv.real),
                    )
                })?;
                srv.limits()
                    .validate()
                    .map_err(|e| at(Some(j), format!("service {key}, server {}: {e}", srv.real)))?;
                out.push(Request::AddServer {
                    service: key,
                    real: srv.real,
                    weight: srv.weight,
                    method: srv.method,
                    check,
                    limits: srv.limits(),
                    proxy_protocol: srv.proxy_protocol,
                });
            }
        }
        for (name, prefixes) in &self.sets {
            crate::filter::check_set_name(name).map_err(|message| Problem {
                at: Place::Sets,
                message,
            })?;
            out.push(Request::SetAdd {
                name: name.clone(),
                prefixes: prefixes.clone(),
            });
        }
        let mut prios = HashSet::new();
        for (i, rule) in self.filters.iter().enumerate() {
            let at = |message: String| Problem {
                at: Place::Filter(i),
                message,
            };
            rule.validate().map_err(at)?;
            if !prios.insert(rule.prio) {
                return Err(at(format!("filter rule prio {} is used twice", rule.prio)));
            }
            for m in [&rule.src, &rule.dst].into_iter().flatten() {
                if let crate::filter::AddrMatch::Set(n) = m
                    && !self.sets.contains_key(n)
                {
                    return Err(at(format!(
                        "filter rule {}: set @{n} is not defined in [sets]",
                        rule.prio
                    )));
                }
            }
            out.push(Request::FilterAdd { rule: rule.clone() });
        }
        if self.filters.len() > crate::filter::MAX_FILTER_RULES {
            return Err(Problem {
                at: Place::Filter(crate::filter::MAX_FILTER_RULES),
                message: format!("at most {} filter rules", crate::filter::MAX_FILTER_RULES),
            });
        }
        Ok(out)
    }
}

impl ServiceConfig {
    /// Its allow/deny lists and rate limit.
    pub fn policy(&self) -> crate::filter::Policy {
        crate::filter::Policy {
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            conn_rate: self.conn_rate,
            conn_burst: self.conn_burst,
        }
    }
}

/// Where in a file a semantic problem is.
enum Place {
    Timeouts,
    Fullnat,
    Shape,
    Service { index: usize, server: Option<usize> },
    Sets,
    Filter(usize),
}

struct Problem {
    at: Place,
    message: String,
}

impl Problem {
    /// `line N: message`, the line found by counting table headers (when
    /// the file uses `[[service]]` / `[[service.server]]` headers).
    fn in_text(&self, text: &str) -> String {
        let header = |l: &str| l.split('#').next().unwrap_or("").trim().replace(' ', "");
        let mut line = None;
        let (mut svc, mut srv) = (None::<usize>, None::<usize>);
        let mut nfilter = 0;
        for (n, l) in text.lines().enumerate() {
            let h = header(l);
            let found = match (&self.at, h.as_str()) {
                (Place::Timeouts, "[timeouts]") | (Place::Fullnat, "[fullnat]") => true,
                (Place::Shape, h) => h.starts_with("[[shape.") || h.starts_with("[shape"),
                (Place::Service { .. }, "[[service]]") => {
                    svc = Some(svc.map_or(0, |s| s + 1));
                    srv = None;
                    matches!(self.at, Place::Service { index, server: None } if Some(index) == svc)
                }
                (
                    Place::Service {
                        index,
                        server: Some(j),
                    },
                    "[[service.server]]",
                ) => {
                    srv = Some(srv.map_or(0, |s| s + 1));
                    svc == Some(*index) && srv == Some(*j)
                }
                (Place::Sets, "[sets]") => true,
                (Place::Filter(i), "[[filter]]") => {
                    nfilter += 1;
                    nfilter == i + 1
                }
                _ => false,
            };
            if found {
                line = Some(n + 1);
                break;
            }
        }
        match line {
            Some(l) => format!("line {l}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A health check as an inline table, its fields in a fixed order.
fn inline_check(c: &CheckSpec) -> String {
    let mut f: Vec<String> = Vec::new();
    if let Some(k) = &c.kind {
        f.push(format!("type = {}", quote(&k.to_string())));
    }
    if let Some(p) = c.port {
        f.push(format!("port = {p}"));
    }
    if let Some(v) = c.interval {
        f.push(format!("interval = {v}"));
    }
    if let Some(v) = c.timeout {
        f.push(format!("timeout = {v}"));
    }
    if let Some(v) = c.rise {
        f.push(format!("rise = {v}"));
    }
    if let Some(v) = c.fall {
        f.push(format!("fall = {v}"));
    }
    if let Some(v) = &c.expect {
        f.push(format!("expect = {}", quote(v)));
    }
    if let Some(v) = c.status {
        f.push(format!("status = \"{v}\""));
    }
    if let Some(v) = &c.host {
        f.push(format!("host = {}", quote(v)));
    }
    if let Some(v) = c.on_fail {
        f.push(format!("on_fail = \"{v}\""));
    }
    format!("{{ {} }}", f.join(", "))
}

impl ServiceConfig {
    pub fn key(&self) -> Result<ServiceKey, String> {
        let key = match (&self.tcp, &self.udp) {
            (Some(a), None) => ServiceKey::parse(Protocol::Tcp, a),
            (None, Some(a)) => ServiceKey::parse(Protocol::Udp, a),
            _ => Err("exactly one of `tcp` or `udp` must be given".into()),
        }?;
        key.with_from(&self.from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_example() {
        let cfg = ConfigFile::parse(
            r#"
[[service]]
tcp = "10.0.0.10:80"

[[service.server]]
real = "10.0.1.1"

[[service.server]]
real = "10.0.1.2:8080"
weight = 2
method = "dnat"
"#,
        )
        .unwrap();
        let reqs = cfg.requests().unwrap();
        assert_eq!(reqs.len(), 3);
    }

    #[test]
    fn shipped_example_is_valid() {
        let cfg = ConfigFile::parse(include_str!("../../dist/lvc.toml")).unwrap();
        assert_eq!(cfg.services.len(), 2);
        assert_eq!(cfg.requests().unwrap().len(), 6);
        // Its commented shaping example is valid once uncommented.
        let text = include_str!("../../dist/lvc.toml");
        let start = text.find("# [[shape.dev]]").expect("shaping example");
        let shaping: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = ConfigFile::parse(&format!("{}\n{shaping}", &text[..start]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.shape.devs[0].classes.len(), 2);
        assert_eq!(cfg.shape.police.len(), 1);
    }

    #[test]
    fn render_round_trips_byte_for_byte() {
        let text = r#"
[timeouts]
tcp = 60
tcpfin = 10
udp = 30

[fullnat]
local = ["10.0.1.100", "10.0.1.101"]

[[service]]
udp = "10.0.0.10:53"

[[service.server]]
real = "10.0.1.9"
method = "fullnat"

[[service.server]]
real = "10.0.1.1"
method = "dnat"

[[service]]
tcp = "10.0.0.10:80"
scheduler = "wrr"
persistent = 600
netmask = "255.255.255.0"

[[service.server]]
real = "10.0.1.2:8080"
weight = 0
"#;
        let cfg = ConfigFile::parse(text).unwrap();
        let out = cfg.render();
        let again = ConfigFile::parse(&out).unwrap();
        assert_eq!(again, cfg);
        assert_eq!(again.render(), out);
        assert!(out.contains("weight = 1\nmethod = \"dnat\""), "{out}");
        assert!(ConfigFile::parse("[timeouts]\ntcp = 0\ntcpfin = 1\nudp = 1\n").is_err());
    }

    #[test]
    fn health_checks_round_trip() {
        let text = r#"
[[service]]
tcp = "10.0.0.10:80"
scheduler = "rr"
check = { type = "http:/health", interval = 0.5, timeout = 0.25, fall = 2, expect = 'ok "yes"', status = "200-299", host = "www.example.com", on_fail = "remove" }
alert = 'logger -t lvc "$LVC_SERVER $LVC_STATE"'
sorry = { addr = "10.0.2.9:8080", method = "dr" }

[[service.server]]
real = "10.0.1.1:80"
weight = 1
method = "nat"
check = { type = "tcp", port = 81, rise = 5 }

[[service.server]]
real = "10.0.1.2:80"
weight = 1
method = "nat"
"#;
        let cfg = ConfigFile::parse(text).unwrap();
        let out = cfg.render();
        assert_eq!(out, format!("# lvc configuration\n{text}"));
        assert_eq!(ConfigFile::parse(&out).unwrap(), cfg);
        let reqs = cfg.requests().unwrap();
        let Request::AddService {
            check,
            alert,
            sorry,
            ..
        } = &reqs[0]
        else {
            panic!("{reqs:?}")
        };
        assert_eq!(check.resolve().interval.millis(), 500);
        assert!(alert.as_deref().unwrap().starts_with("logger"));
        assert_eq!(sorry.unwrap().method, Method::Dr);
        let Request::AddServer { check, .. } = &reqs[1] else {
            panic!("{reqs:?}")
        };
        assert_eq!(check.port, Some(81));
        // A bad check names its line.
        let bad = text.replace("rise = 5", "rise = 0");
        let e = ConfigFile::parse(&bad).unwrap_err();
        assert!(
            e.starts_with("line 9: service tcp 10.0.0.10:80, server 10.0.1.1:80: check: --rise"),
            "{e}"
        );
        let bad = text.replace("type = \"tcp\"", "type = \"ping\"");
        assert!(
            ConfigFile::parse(&bad)
                .unwrap_err()
                .contains("unknown check `ping`")
        );
    }

    #[test]
    fn netmasks_round_trip_in_their_form() {
        let text = r#"
[[service]]
tcp = "10.0.0.10:80"
scheduler = "rr"
persistent = 600
netmask = "255.255.255.0"

[[service]]
tcp = "10.0.0.10:81"
scheduler = "rr"
persistent = 600
netmask = 24

[[service]]
tcp = "[2001:db8::10]:80"
scheduler = "rr"
persistent = 60
netmask = 64
"#;
        let cfg = ConfigFile::parse(text).unwrap();
        let out = cfg.render();
        assert_eq!(out, format!("# lvc configuration\n{text}"));
        assert_eq!(ConfigFile::parse(&out).unwrap(), cfg);
        let masks: Vec<Option<crate::Netmask>> = cfg
            .requests()
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Request::AddService { netmask, .. } => netmask,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            masks,
            [
                Some(crate::Netmask::Dotted("255.255.255.0".parse().unwrap())),
                Some(crate::Netmask::Prefix(24)),
                Some(crate::Netmask::Prefix(64)),
            ]
        );
        // A string prefix is read too, and written back as a number.
        let cfg = ConfigFile::parse(&text.replace("netmask = 64", "netmask = \"/64\"")).unwrap();
        assert_eq!(cfg.render(), out);
    }

    #[test]
    fn netmask_errors_name_the_line() {
        let v6 = |m: &str| {
            ConfigFile::parse(&format!(
                "[[service]]\ntcp = \"10.0.0.10:80\"\n\n[[service]]\ntcp = \"[2001:db8::10]:80\"\npersistent = 60\nnetmask = {m}\n"
            ))
        };
        assert!(v6("64").is_ok());
        let err = v6("\"255.255.255.0\"").unwrap_err();
        assert!(
            err.starts_with("line 4: service tcp [2001:db8::10]:80: an IPv6 service's --netmask is a prefix length"),
            "{err}"
        );
        for bad in ["0", "129", "-3", "\"wide\"", "true"] {
            let err = v6(bad).unwrap_err();
            assert!(err.starts_with("line 7"), "{bad}: {err}");
        }
        let err = ConfigFile::parse(
            "[[service]]\ntcp = \"10.0.0.10:80\"\npersistent = 60\nnetmask = 33\n",
        )
        .unwrap_err();
        assert!(err.contains("prefix length 1..32, not 33"), "{err}");
        let err = ConfigFile::parse("[[service]]\ntcp = \"[2001:db8::10]:80\"\nnetmask = 64\n")
            .unwrap_err();
        assert!(err.contains("give --persistent"), "{err}");
    }

    #[test]
    fn shaping_round_trips() {
        let text = r#"
[[shape.dev]]
dev = "d1"
rate = "100mbit"
default = "1:20"

[[shape.dev.class]]
classid = "1:10"
rate = "70mbit"
ceil = "100mbit"
prio = 2
qdisc = { kind = "sfq", perturb = 10 }

[[shape.dev.class]]
classid = "1:20"
rate = "30mbit"
prio = 4
bounded = true
qdisc = { kind = "tbf", rate = "20mbit", burst = "10kb", latency = "50ms" }

[[shape.dev.filter]]
prio = 1
match = ["real 10.2.0.11", "ip tos 0x30 0xff"]
flowid = "1:10"

[[shape.police]]
target = { service = "udp:10.9.0.10:53" }
rate = "10mbit"
burst = "10kb"
"#;
        let cfg = ConfigFile::parse(text).unwrap();
        assert_eq!(cfg.shape.devs[0].classes.len(), 2);
        let out = cfg.render();
        let again = ConfigFile::parse(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(again, cfg);
        assert_eq!(again.render(), out);
        let err =
            ConfigFile::parse(&text.replace("flowid = \"1:10\"", "flowid = \"1:99\"")).unwrap_err();
        assert!(err.contains("unknown class 1:99"), "{err}");
        assert!(err.starts_with("line 2:"), "{err}");
    }

    #[test]
    fn errors_name_the_line() {
        let err =
            ConfigFile::parse("[[service]]\ntcp = \"10.0.0.10:80\"\nbogus = 1\n").unwrap_err();
        assert!(err.starts_with("line 3"), "{err}");
        let err = ConfigFile::parse("[[service]]\ntcp = \"10.0.0.10\"\n").unwrap_err();
        assert!(err.contains("VIP:PORT"), "{err}");
        let err = ConfigFile::parse(
            "[[service]]\nudp = \"10.0.0.10:53\"\n[[service.server]]\nreal = \"10.0.1.1\"\nweight = 70000\n",
        )
        .unwrap_err();
        assert!(err.contains("weight must be"), "{err}");
        assert!(err.starts_with("line 3:"), "{err}");
        let err = ConfigFile::parse(
            "[timeouts]\ntcp = 1\ntcpfin = 1\nudp = 1\n\n[[service]] # web\ntcp = \"10.0.0.10:80\"\n\n[[service]]\ntcp = \"10.0.0.10:80\"\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("line 9: service tcp 10.0.0.10:80 is defined twice"),
            "{err}"
        );
        let err = ConfigFile::parse("[timeouts]\ntcp = 0\ntcpfin = 1\nudp = 1\n").unwrap_err();
        assert!(err.starts_with("line 1: timeout tcp"), "{err}");
    }
}
