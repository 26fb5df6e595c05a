//! Real-server health checks (the paper's `mon`, keepalived's checkers).
//!
//! A [`CheckSpec`] is what an operator writes, on a service (the default
//! for its servers) or on a server (overriding the service's fields one by
//! one); every field is optional. [`CheckSpec::resolve`] fills the rest
//! with [`defaults`](Check) and gives the [`Check`] the daemon runs.
//!
//! Text forms (`--check`, `type = "…"` in the config file): `none`, `tcp`,
//! `http`, `http:/PATH`, `udp`, `udp:HEX`, `exec:CMD`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CheckKind {
    /// Not checked: always healthy.
    None,
    /// A TCP connect.
    Tcp,
    /// An HTTP/1.0 GET of `path`; the status must be in range and the body
    /// may have to contain a text.
    Http { path: String },
    /// A datagram with `payload`; any reply is healthy, an ICMP port
    /// unreachable or silence is not.
    Udp { payload: Vec<u8> },
    /// `sh -c CMD` with the server in its environment; exit 0 = healthy.
    Exec { cmd: String },
}

impl CheckKind {
    /// Whether the probe needs a port to talk to.
    pub fn needs_port(&self) -> bool {
        matches!(self, Self::Tcp | Self::Http { .. } | Self::Udp { .. })
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Tcp => f.write_str("tcp"),
            Self::Http { path } => write!(f, "http:{path}"),
            Self::Udp { payload } if payload.is_empty() => f.write_str("udp"),
            Self::Udp { payload } => {
                f.write_str("udp:")?;
                payload.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            Self::Exec { cmd } => write!(f, "exec:{cmd}"),
        }
    }
}

impl FromStr for CheckKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        match (kind, arg) {
            ("none", None) => Ok(Self::None),
            ("tcp", None) => Ok(Self::Tcp),
            ("http", None) => Ok(Self::Http { path: "/".into() }),
            ("http", Some(p)) if p.starts_with('/') && !p.chars().any(char::is_whitespace) => {
                Ok(Self::Http { path: p.into() })
            }
            ("http", Some(p)) => Err(format!(
                "check http:{p}: the path must start with / and have no spaces (http:/health)"
            )),
            ("udp", None) => Ok(Self::Udp {
                payload: Vec::new(),
            }),
            ("udp", Some(hex)) => parse_hex(hex)
                .map(|payload| Self::Udp { payload })
                .ok_or_else(|| {
                    format!("check udp:{hex}: the payload must be hex digits in pairs (udp:0a0b)")
                }),
            ("exec", Some(cmd)) if !cmd.trim().is_empty() => Ok(Self::Exec { cmd: cmd.into() }),
            ("exec", _) => Err("check exec: give a command (exec:/usr/lib/lvc/check-db)".into()),
            _ => Err(format!(
                "unknown check `{s}`: tcp, http[:/PATH], udp[:HEX], exec:CMD or none"
            )),
        }
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * MAX_UDP_PAYLOAD {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Longest UDP probe payload, bytes.
pub const MAX_UDP_PAYLOAD: usize = 1024;

impl TryFrom<String> for CheckKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<CheckKind> for String {
    fn from(k: CheckKind) -> String {
        k.to_string()
    }
}

/// A duration given in seconds, fractions allowed (`0.5`), kept in
/// milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Secs(u32);

impl Secs {
    pub const fn from_millis(ms: u32) -> Self {
        Self(ms)
    }

    pub fn millis(self) -> u32 {
        self.0
    }

    pub fn duration(self) -> Duration {
        Duration::from_millis(u64::from(self.0))
    }
}

impl TryFrom<f64> for Secs {
    type Error = String;
    fn try_from(s: f64) -> Result<Self, String> {
        if !(0.001..=86_400.0).contains(&s) {
            return Err(format!("{s} s is not a duration of 0.001 to 86400 seconds"));
        }
        Ok(Self((s * 1000.0).round() as u32))
    }
}

impl From<Secs> for f64 {
    fn from(s: Secs) -> f64 {
        f64::from(s.0) / 1000.0
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", f64::from(*self))
    }
}

impl FromStr for Secs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: f64 = s
            .trim_end_matches('s')
            .parse()
            .map_err(|_| format!("`{s}` is not a number of seconds (2, 0.5)"))?;
        Self::try_from(v)
    }
}

/// HTTP statuses that count as healthy, `LO-HI` (default 200-399).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StatusRange {
    pub lo: u16,
    pub hi: u16,
}

impl Default for StatusRange {
    fn default() -> Self {
        Self { lo: 200, hi: 399 }
    }
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for StatusRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an HTTP status or range (200, 200-399)");
        let (lo, hi) = s.split_once('-').unwrap_or((s, s));
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
            return Err(bad());
        }
        Ok(Self { lo, hi })
    }
}

impl TryFrom<String> for StatusRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<StatusRange> for String {
    fn from(r: StatusRange) -> String {
        r.to_string()
    }
}

/// What happens to a server that fails its check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFail {
    /// No new connections; established ones continue (keepalived's
    /// `inhibit_on_failure`, IPVS weight 0).
    #[default]
    Quiesce,
    /// No new connections, and its tracked connections are dropped.
    Remove,
}

impl fmt::Display for OnFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Quiesce => "quiesce",
            Self::Remove => "remove",
        })
    }
}

impl FromStr for OnFail {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "quiesce" => Ok(Self::Quiesce),
            "remove" => Ok(Self::Remove),
            _ => Err(format!("`{s}`: --on-fail is quiesce or remove")),
        }
    }
}

/// A health check as written: every field optional (a server's fields
/// override its service's, which override the defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<CheckKind>,
    /// Port probed (default: the server's; needed for port-0 servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Secs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Secs>,
    /// Consecutive successes that bring a failed server back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    /// Consecutive failures that take a server out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    /// http: a text the response body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// http: the statuses that count as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusRange>,
    /// http: the Host header (default: the server's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_fail: Option<OnFail>,
}

/// Defaults (HAProxy's: every 2 s, 3 failures out, 2 successes back).
pub const DEFAULT_INTERVAL: Secs = Secs::from_millis(2000);
pub const DEFAULT_TIMEOUT: Secs = Secs::from_millis(1000);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
/// Most consecutive results `rise`/`fall` may ask for.
pub const MAX_RISE_FALL: u32 = 100;

impl CheckSpec {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// This spec's fields, or `base`'s where this one has none.
    pub fn over(&self, base: &CheckSpec) -> CheckSpec {
        fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
            a.clone().or_else(|| b.clone())
        }
        CheckSpec {
            kind: pick(&self.kind, &base.kind),
            port: pick(&self.port, &base.port),
            interval: pick(&self.interval, &base.interval),
            timeout: pick(&self.timeout, &base.timeout),
            rise: pick(&self.rise, &base.rise),
            fall: pick(&self.fall, &base.fall),
            expect: pick(&self.expect, &base.expect),
            status: pick(&self.status, &base.status),
            host: pick(&self.host, &base.host),
            on_fail: pick(&self.on_fail, &base.on_fail),
        }
    }

    /// Checks the fields that can be wrong on their own.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [("rise", self.rise), ("fall", self.fall)] {
            if let Some(v) = v
                && !(1..=MAX_RISE_FALL).contains(&v)
            {
                return Err(format!("--{name} must be 1..={MAX_RISE_FALL}, got {v}"));
            }
        }
        if let Some(h) = &self.host
            && (h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!("--check-host `{h}`: a host name without spaces"));
        }
        if let Some(e) = &self.expect
            && (e.is_empty() || e.len() > 1024)
        {
            return Err("--check-expect: 1 to 1024 bytes of text".into());
        }
        if self.port == Some(0) {
            return Err("--check-port must be 1..=65535".into());
        }
        let resolved = self.resolve();
        if resolved.timeout > resolved.interval {
            return Err(format!(
                "--check-timeout {} s is longer than --check-interval {} s",
                resolved.timeout, resolved.interval
            ));
        }
        Ok(())
    }

    /// The check to run, defaults filled in.
    pub fn resolve(&self) -> Check {
        Check {
            kind: self.kind.clone().unwrap_or(CheckKind::None),
            port: self.port,
            interval: self.interval.unwrap_or(DEFAULT_INTERVAL),
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            rise: self.rise.unwrap_or(DEFAULT_RISE),
            fall: self.fall.unwrap_or(DEFAULT_FALL),
            expect: self.expect.clone(),
            status: self.status.unwrap_or_default(),
            host: self.host.clone(),
            on_fail: self.on_fail.unwrap_or_default(),
        }
    }

    /// One line for listings and the config file: `http:/health every 1 s,
    /// timeout 0.5 s, rise 2, fall 3`.
    pub fn summary(&self) -> String {
        let c = self.resolve();
        format!(
            "{} every {} s, timeout {} s, rise {}, fall {}",
            c.kind, c.interval, c.timeout, c.rise, c.fall
        )
    }
}

/// A health check with every field decided.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Check {
    pub kind: CheckKind,
    pub port: Option<u16>,
    pub interval: Secs,
    pub timeout: Secs,
    pub rise: u32,
    pub fall: u32,
    pub expect: Option<String>,
    pub status: StatusRange,
    pub host: Option<String>,
    pub on_fail: OnFail,
}

/// A server's health as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthInfo {
    /// Takes new connections (as far as its check is concerned).
    pub up: bool,
    /// The check run (`http:/health`).
    pub check: String,
    /// The last result: `ok` or why it failed.
    pub last: String,
    /// Seconds since the last change of state (or since checks began).
    pub since_secs: u64,
    pub checks: u64,
    pub failures: u64,
    /// Changes of state (up → down and back).
    pub transitions: u64,
}

/// Where a service's new connections go while none of its servers takes
/// any (keepalived's `sorry_server`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sorry {
    pub addr: std::net::SocketAddr,
    #[serde(default)]
    pub method: crate::Method,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_kinds_round_trip_as_text() {
        for s in [
            "none",
            "tcp",
            "http:/",
            "http:/health?full=1",
            "udp",
            "udp:0a0bff",
            "exec:/bin/true --x",
        ] {
            let k: CheckKind = s.parse().unwrap();
            assert_eq!(k.to_string(), s);
        }
        assert_eq!(
            "http".parse::<CheckKind>().unwrap(),
            CheckKind::Http { path: "/".into() }
        );
        for bad in [
            "http:health",
            "http:/a b",
            "udp:abc",
            "udp:zz",
            "exec:",
            "exec",
            "ping",
            "tcp:80",
        ] {
            assert!(bad.parse::<CheckKind>().is_err(), "{bad}");
        }
    }

    #[test]
    fn server_fields_override_service_fields_one_by_one() {
        let svc = CheckSpec {
            kind: Some(CheckKind::Tcp),
            interval: Some("0.5".parse().unwrap()),
            fall: Some(2),
            ..Default::default()
        };
        let srv = CheckSpec {
            kind: Some("http:/h".parse().unwrap()),
            ..Default::default()
        };
        let c = srv.over(&svc).resolve();
        assert_eq!(c.kind, CheckKind::Http { path: "/h".into() });
        assert_eq!(c.interval.millis(), 500);
        assert_eq!((c.fall, c.rise), (2, DEFAULT_RISE));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(CheckSpec::default().resolve().kind, CheckKind::None);
    }

    #[test]
    fn bad_specs_are_refused() {
        let spec = |f: fn(&mut CheckSpec)| {
            let mut s = CheckSpec::default();
            f(&mut s);
            s.validate()
        };
        assert!(spec(|s| s.rise = Some(0)).is_err());
        assert!(spec(|s| s.fall = Some(1000)).is_err());
        assert!(spec(|s| s.port = Some(0)).is_err());
        assert!(spec(|s| s.host = Some("a b".into())).is_err());
        assert!(
            spec(|s| {
                s.interval = Some(Secs::from_millis(500));
                s.timeout = Some(Secs::from_millis(800));
            })
            .is_err()
        );
        assert!(spec(|s| s.timeout = Some(Secs::from_millis(500))).is_ok());
        assert!("0".parse::<Secs>().is_err());
        assert!("-1".parse::<Secs>().is_err());
        assert_eq!("0.25".parse::<Secs>().unwrap().millis(), 250);
        assert!("600-200".parse::<StatusRange>().is_err());
        assert_eq!(
            "200-299".parse::<StatusRange>().unwrap(),
            StatusRange { lo: 200, hi: 299 }
        );
    }

    #[test]
    fn specs_serialise_as_the_config_file_writes_them() {
        let s = CheckSpec {
            kind: Some("http:/ok".parse().unwrap()),
            interval: Some(Secs::from_millis(500)),
            rise: Some(1),
            on_fail: Some(OnFail::Remove),
            ..Default::default()
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(
            j,
            r#"{"type":"http:/ok","interval":0.5,"rise":1,"on_fail":"remove"}"#
        );
        assert_eq!(serde_json::from_str::<CheckSpec>(&j).unwrap(), s);
        let t: CheckSpec = toml::from_str("type = \"tcp\"\ninterval = 2\n").unwrap();
        assert_eq!(t.interval, Some(Secs::from_millis(2000)));
    }
}
