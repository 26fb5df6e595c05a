//! Traffic shaping: the configuration model shared by `lvc-ctl`, the
//! config file and the daemon.
//!
//! Per egress interface a root (the link rate, an optional default class)
//! and a tree of HTB/CBQ-like classes; leaf classes own a queue discipline;
//! filters pick a class; policers drop what exceeds a rate. Rates and sizes
//! read and print in tc's units. Everything here is plain data plus
//! validation: the daemon compiles it into its per-packet form.

use crate::{RealSpec, ServiceKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Highest rate accepted: 1 Tbit/s.
pub const MAX_RATE: u64 = 1_000_000_000_000;
/// Largest burst or queue size in bytes: 256 MiB.
pub const MAX_SIZE: u64 = 256 << 20;
/// Largest queue limit in packets (the frames stay in the UMEM).
pub const MAX_LIMIT_PACKETS: u32 = 65_536;
/// Class priorities: lower first. HTB's are 0..=7; CBQ's go to 8, its
/// lowest, which the paper's TC3/TC4 datafill gives its default class
/// (`prio 8`): accepted as written, below 7.
pub const MAX_PRIO: u8 = 8;
/// Depth of a class tree below the root.
pub const MAX_DEPTH: usize = 8;

/// A rate in bits per second. Text: tc's units — `bit` (or a bare number),
/// `kbit`, `mbit`, `gbit`, `tbit`, `bps` (bytes/s), `kbps`, `mbps`,
/// `gbps`, and the IEC forms `kibit`, `mibit`, `gibit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(pub u64);

impl Rate {
    pub fn bits(self) -> u64 {
        self.0
    }
    /// Bytes per second.
    pub fn bytes(self) -> u64 {
        self.0 / 8
    }
}

fn split_unit(s: &str) -> (&str, String) {
    let i = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..i], s[i..].trim().to_ascii_lowercase())
}

/// `12`, `1.5` → a value scaled by `mult`, rounded, checked.
fn scaled(num: &str, mult: f64, what: &str, s: &str) -> Result<u64, String> {
    if num.is_empty() || num.matches('.').count() > 1 || num.starts_with('.') {
        return Err(format!("{what} `{s}`: expected a number with a unit"));
    }
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{what} `{s}`: bad number"))?;
    let v = (v * mult).round();
    if !(0.0..=1e18).contains(&v) {
        return Err(format!("{what} `{s}` is out of range"));
    }
    Ok(v as u64)
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (num, unit) = split_unit(s.trim());
        let mult: f64 = match unit.as_str() {
            "" | "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "tbit" => 1e12,
            "kibit" => 1024.0,
            "mibit" => 1024.0 * 1024.0,
            "gibit" => 1024.0 * 1024.0 * 1024.0,
            "bps" => 8.0,
            "kbps" => 8e3,
            "mbps" => 8e6,
            "gbps" => 8e9,
            other => {
                return Err(format!(
                    "rate `{s}`: unknown unit `{other}` (use bit, kbit, mbit, gbit, tbit, bps, kbps, mbps or gbps)"
                ));
            }
        };
        let v = scaled(num, mult, "rate", s)?;
        if v == 0 || v > MAX_RATE {
            return Err(format!("rate `{s}` must be between 1bit and 1tbit"));
        }
        Ok(Rate(v))
    }
}

impl fmt::Display for Rate {
    /// The largest of gbit/mbit/kbit that shows the rate exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        for (div, unit) in [
            (1_000_000_000, "gbit"),
            (1_000_000, "mbit"),
            (1_000, "kbit"),
        ] {
            if v.is_multiple_of(div) {
                return write!(f, "{}{unit}", v / div);
            }
        }
        write!(f, "{v}bit")
    }
}

/// A size in bytes. Text: tc's units — `b` (or a bare number), `kb`/`k`,
/// `mb`/`m`, `gb`/`g` (powers of 1024), `kbit`, `mbit`, `gbit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (num, unit) = split_unit(s.trim());
        let mult: f64 = match unit.as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1024.0,
            "m" | "mb" => 1024.0 * 1024.0,
            "g" | "gb" => 1024.0 * 1024.0 * 1024.0,
            "kbit" => 1024.0 / 8.0,
            "mbit" => 1024.0 * 1024.0 / 8.0,
            "gbit" => 1024.0 * 1024.0 * 1024.0 / 8.0,
            other => {
                return Err(format!(
                    "size `{s}`: unknown unit `{other}` (use b, kb, mb, gb, kbit, mbit or gbit)"
                ));
            }
        };
        let v = scaled(num, mult, "size", s)?;
        if v > MAX_SIZE {
            return Err(format!("size `{s}` is larger than 256mb"));
        }
        Ok(Size(v))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v != 0 && v.is_multiple_of(1 << 20) {
            write!(f, "{}mb", v >> 20)
        } else if v != 0 && v.is_multiple_of(1024) {
            write!(f, "{}kb", v >> 10)
        } else {
            write!(f, "{v}b")
        }
    }
}

/// A duration in microseconds (tbf's `latency`). Text: `s`, `ms`, `us`
/// (a bare number is microseconds, as in tc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub u64);

impl FromStr for Micros {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (num, unit) = split_unit(s.trim());
        let mult = match unit.as_str() {
            "" | "us" | "usec" => 1.0,
            "ms" | "msec" => 1e3,
            "s" | "sec" | "secs" => 1e6,
            other => {
                return Err(format!(
                    "time `{s}`: unknown unit `{other}` (use s, ms or us)"
                ));
            }
        };
        let v = scaled(num, mult, "time", s)?;
        if v > 60_000_000 {
            return Err(format!("time `{s}` is longer than 60s"));
        }
        Ok(Micros(v))
    }
}

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}ms", self.0 / 1000)
        } else {
            write!(f, "{}us", self.0)
        }
    }
}

/// A class handle `MAJOR:MINOR`, hexadecimal as in tc (`1:10` is minor
/// 0x10). Minor 0 names the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassId {
    pub major: u16,
    pub minor: u16,
}

impl ClassId {
    pub fn is_root(self) -> bool {
        self.minor == 0
    }
}

impl FromStr for ClassId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("class id `{s}`: expected MAJOR:MINOR in hex, e.g. 1:10");
        let (a, b) = s.trim().split_once(':').ok_or_else(bad)?;
        let hex = |x: &str| {
            if x.is_empty() {
                Ok(0)
            } else {
                u16::from_str_radix(x, 16).map_err(|_| bad())
            }
        };
        let major = hex(a)?;
        if major == 0 {
            return Err(format!("class id `{s}`: the major number must not be 0"));
        }
        Ok(ClassId {
            major,
            minor: hex(b)?,
        })
    }
}

impl fmt::Display for ClassId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.minor == 0 {
            write!(f, "{:x}:", self.major)
        } else {
            write!(f, "{:x}:{:x}", self.major, self.minor)
        }
    }
}

macro_rules! text_serde {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Either {
                    Text(String),
                    Number(u64),
                }
                match Either::deserialize(d)? {
                    Either::Text(s) => s.parse().map_err(serde::de::Error::custom),
                    Either::Number(n) => n.to_string().parse().map_err(serde::de::Error::custom),
                }
            }
        }
    )*};
}
text_serde!(Rate, Size, Micros, ClassId);

/// A leaf class's queue discipline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Qdisc {
    /// Stochastic fair queueing: per-flow queues served round robin.
    Sfq {
        /// Bytes a flow may send per round (default: 1514).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantum: Option<Size>,
        /// Seconds between hash perturbations (default 0: never).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        perturb: Option<u32>,
        /// Flows that may be queued at once (default 128).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flows: Option<u32>,
        /// Packets queued in all (default 127).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// One FIFO (pfifo).
    Fifo {
        /// Packets (default 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// pfifo_fast's three bands, chosen by the TOS byte.
    Prio3 {
        /// Packets per band (default 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Random early detection.
    Red {
        /// Average queue below which nothing is dropped.
        min: Size,
        /// Average queue above which everything is dropped.
        max: Size,
        /// Drop probability at `max` (0 < p ≤ 1).
        probability: f64,
        /// Hard limit in bytes (default 4 × max).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<Size>,
    },
    /// Token bucket filter: a rate of its own.
    Tbf {
        rate: Rate,
        burst: Size,
        /// Queue bytes; give this or `latency` (default: latency 50ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<Size>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency: Option<Micros>,
    },
}

impl Default for Qdisc {
    fn default() -> Self {
        Qdisc::Fifo { limit: None }
    }
}

impl Qdisc {
    pub fn name(&self) -> &'static str {
        match self {
            Qdisc::Sfq { .. } => "sfq",
            Qdisc::Fifo { .. } => "fifo",
            Qdisc::Prio3 { .. } => "prio3",
            Qdisc::Red { .. } => "red",
            Qdisc::Tbf { .. } => "tbf",
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let limit = |l: Option<u32>| match l {
            Some(0) => Err("limit must be at least 1 packet".to_owned()),
            Some(l) if l > MAX_LIMIT_PACKETS => {
                Err(format!("limit {l} is above {MAX_LIMIT_PACKETS} packets"))
            }
            _ => Ok(()),
        };
        match self {
            Qdisc::Sfq {
                quantum,
                flows,
                limit: l,
                perturb,
            } => {
                limit(*l)?;
                if let Some(q) = quantum
                    && !(64..=65_536).contains(&q.0)
                {
                    return Err(format!("sfq quantum {q} must be 64b..64kb"));
                }
                if let Some(f) = flows
                    && !(1..=65_536).contains(f)
                {
                    return Err(format!("sfq flows {f} must be 1..=65536"));
                }
                if let Some(p) = perturb
                    && *p > 86_400
                {
                    return Err(format!("sfq perturb {p} is longer than a day"));
                }
                Ok(())
            }
            Qdisc::Fifo { limit: l } | Qdisc::Prio3 { limit: l } => limit(*l),
            Qdisc::Red {
                min,
                max,
                probability,
                limit,
            } => {
                if min.0 == 0 || min >= max {
                    return Err(format!("red needs 0 < min < max, got min {min} max {max}"));
                }
                if !(*probability > 0.0 && *probability <= 1.0) {
                    return Err(format!(
                        "red probability must be in (0, 1], got {probability}"
                    ));
                }
                if let Some(l) = limit
                    && l < max
                {
                    return Err(format!("red limit {l} is below max {max}"));
                }
                Ok(())
            }
            Qdisc::Tbf {
                burst,
                limit,
                latency,
                ..
            } => {
                if burst.0 < 1600 {
                    return Err(format!(
                        "tbf burst {burst} is smaller than one packet (at least 1600b)"
                    ));
                }
                if limit.is_some() && latency.is_some() {
                    return Err("tbf takes limit or latency, not both".into());
                }
                Ok(())
            }
        }
    }
}

/// One class of a shaping tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    pub classid: ClassId,
    /// None or a root id (`1:`): a child of the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ClassId>,
    /// Guaranteed rate.
    pub rate: Rate,
    /// Up to where it may borrow (default: `rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceil: Option<Rate>,
    /// Bytes it may send at once above `rate` (default: 5 ms at `rate`
    /// plus one packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Size>,
    /// Lower is served first when borrowing (0..=8, default 0, as HTB; 8
    /// is CBQ's lowest).
    #[serde(default)]
    pub prio: u8,
    /// Never borrows (ceil = rate).
    #[serde(default, skip_serializing_if = "is_false")]
    pub bounded: bool,
    /// Never lends its unused rate to its siblings: its parent lends only
    /// what is left of its rate after its isolated children's guarantees.
    /// (Ancestors further up lend the parent's unused rate as usual.)
    #[serde(default, skip_serializing_if = "is_false")]
    pub isolated: bool,
    /// The queue discipline if it is a leaf (default: fifo).
    #[serde(default)]
    pub qdisc: Qdisc,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ClassSpec {
    /// The ceiling in force: `rate` when bounded or not given.
    pub fn ceil(&self) -> Rate {
        if self.bounded {
            self.rate
        } else {
            self.ceil.unwrap_or(self.rate)
        }
    }

    /// The burst in force, bytes.
    pub fn burst(&self) -> u64 {
        self.burst.map_or_else(|| default_burst(self.rate), |b| b.0)
    }

    /// The ceiling's burst, bytes.
    pub fn cburst(&self) -> u64 {
        self.burst
            .map_or_else(|| default_burst(self.ceil()), |b| b.0)
    }
}

/// 5 ms at `rate` plus a full-size frame (tc's rate/HZ + mtu, for a
/// dataplane that wakes up on its own timer).
pub fn default_burst(rate: Rate) -> u64 {
    rate.bytes() / 200 + 1600
}

/// One match of a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Match {
    /// `ip src CIDR`
    Src(IpAddr, u8),
    /// `ip dst CIDR`
    Dst(IpAddr, u8),
    /// `ip tos VALUE MASK` (`ip dsfield`, `ip dscp N` = N<<2 0xfc)
    Tos { value: u8, mask: u8 },
    /// `ip protocol N|tcp|udp|icmp`
    Protocol(u8),
    /// `ip sport PORT [MASK]`
    Sport { port: u16, mask: u16 },
    /// `ip dport PORT [MASK]`
    Dport { port: u16, mask: u16 },
    /// `real ADDR[:PORT]`: to or from that real server.
    Real(RealSpec),
    /// `service tcp|udp:VIP:PORT`: a service's traffic, both directions.
    Service(ServiceKey),
    /// `u32 VALUE MASK at OFFSET`: the 32-bit big-endian word at OFFSET
    /// bytes from the IP header, masked.
    U32 { value: u32, mask: u32, offset: u16 },
}

fn number<T: TryFrom<u64>>(s: &str, what: &str) -> Result<T, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse::<u64>(),
    }
    .map_err(|_| format!("{what}: `{s}` is not a number (decimal or 0x hex)"))?;
    T::try_from(v).map_err(|_| format!("{what}: {s} is out of range"))
}

fn cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("`{s}` is not an address or CIDR (e.g. 10.0.0.0/8)"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        None => max,
    };
    Ok((addr, len))
}

impl FromStr for Match {
    type Err = String;

    /// Parses one match expression; errors quote the expression and say
    /// what was expected.
    fn from_str(s: &str) -> Result<Self, String> {
        let w: Vec<&str> = s.split_whitespace().collect();
        let ctx = |m: String| format!("match `{}`: {m}", s.trim());
        let want = |n: usize, form: &str| {
            if w.len() == n {
                Ok(())
            } else {
                Err(ctx(format!("expected `{form}`")))
            }
        };
        match w.as_slice() {
            ["ip", "src", ..] => {
                want(3, "ip src CIDR")?;
                let (a, l) = cidr(w[2]).map_err(ctx)?;
                Ok(Match::Src(a, l))
            }
            ["ip", "dst", ..] => {
                want(3, "ip dst CIDR")?;
                let (a, l) = cidr(w[2]).map_err(ctx)?;
                Ok(Match::Dst(a, l))
            }
            ["ip", "tos" | "dsfield", ..] => {
                want(4, "ip tos VALUE MASK")?;
                Ok(Match::Tos {
                    value: number(w[2], "tos value").map_err(ctx)?,
                    mask: number(w[3], "tos mask").map_err(ctx)?,
                })
            }
            ["ip", "dscp", ..] => {
                want(3, "ip dscp N (0..=63)")?;
                let d: u8 = number(w[2], "dscp").map_err(ctx)?;
                if d > 63 {
                    return Err(ctx("dscp must be 0..=63".into()));
                }
                Ok(Match::Tos {
                    value: d << 2,
                    mask: 0xfc,
                })
            }
            ["ip", "protocol", ..] => {
                want(3, "ip protocol N|tcp|udp|icmp")?;
                Ok(Match::Protocol(match w[2] {
                    "tcp" => 6,
                    "udp" => 17,
                    "icmp" => 1,
                    "icmpv6" => 58,
                    n => number(n, "protocol").map_err(ctx)?,
                }))
            }
            ["ip", dir @ ("sport" | "dport"), ..] => {
                if !(3..=4).contains(&w.len()) {
                    return Err(ctx(format!("expected `ip {dir} PORT [MASK]`")));
                }
                let port = number(w[2], "port").map_err(ctx)?;
                let mask = match w.get(3) {
                    Some(m) => number(m, "port mask").map_err(ctx)?,
                    None => 0xffff,
                };
                Ok(if *dir == "sport" {
                    Match::Sport { port, mask }
                } else {
                    Match::Dport { port, mask }
                })
            }
            ["ip", other, ..] => Err(ctx(format!(
                "unknown field `{other}` (src, dst, tos, dsfield, dscp, protocol, sport, dport)"
            ))),
            ["real", ..] => {
                want(2, "real ADDR[:PORT]")?;
                Ok(Match::Real(w[1].parse().map_err(ctx)?))
            }
            ["service", ..] => {
                if w.len() != 2 && !(w.len() == 4 && w[2] == "from") {
                    return Err(ctx(
                        "expected `service tcp|udp:VIP:PORT [from CIDR[,CIDR…]]`".into(),
                    ));
                }
                Ok(Match::Service(w[1..].join(" ").parse().map_err(ctx)?))
            }
            ["u32", ..] => {
                if w.len() != 5 || w[3] != "at" {
                    return Err(ctx("expected `u32 VALUE MASK at OFFSET`".into()));
                }
                let offset: u16 = number(w[4], "offset").map_err(ctx)?;
                if offset > 1500 {
                    return Err(ctx("offset must be 0..=1500".into()));
                }
                Ok(Match::U32 {
                    value: number(w[1], "value").map_err(ctx)?,
                    mask: number(w[2], "mask").map_err(ctx)?,
                    offset,
                })
            }
            [] => Err("empty match expression".into()),
            [other, ..] => Err(ctx(format!(
                "unknown selector `{other}` (ip, real, service, u32)"
            ))),
        }
    }
}

impl fmt::Display for Match {
    /// The canonical text, which parses back to the same match.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Src(a, l) => write!(f, "ip src {a}/{l}"),
            Match::Dst(a, l) => write!(f, "ip dst {a}/{l}"),
            Match::Tos { value, mask } => write!(f, "ip tos {value:#04x} {mask:#04x}"),
            Match::Protocol(p) => write!(f, "ip protocol {p}"),
            Match::Sport { port, mask } => write!(f, "ip sport {port} {mask:#06x}"),
            Match::Dport { port, mask } => write!(f, "ip dport {port} {mask:#06x}"),
            Match::Real(r) => write!(f, "real {r}"),
            Match::Service(s) => write!(
                f,
                "service {}:{}{}",
                s.proto,
                s.endpoint(),
                s.class_suffix()
            ),
            Match::U32 {
                value,
                mask,
                offset,
            } => write!(f, "u32 {value:#010x} {mask:#010x} at {offset}"),
        }
    }
}

impl Serialize for Match {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Match {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A filter: all of its matches (ANDed) → a class. Identified on its
/// interface by its priority; lower priorities are tried first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub prio: u32,
    #[serde(rename = "match")]
    pub matches: Vec<Match>,
    pub flowid: ClassId,
}

/// What a policer watches.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum PoliceTarget {
    /// Traffic classified into this class on `dev`.
    Class { dev: String, classid: ClassId },
    /// Traffic from clients to this service, as it arrives.
    Service(ServiceKey),
}

impl fmt::Display for PoliceTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoliceTarget::Class { dev, classid } => write!(f, "class {classid} on {dev}"),
            PoliceTarget::Service(s) => write!(f, "service {s}"),
        }
    }
}

/// Drop what exceeds `rate` plus `burst`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliceSpec {
    pub target: PoliceTarget,
    pub rate: Rate,
    pub burst: Size,
}

/// Shaping on one egress interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevShape {
    pub dev: String,
    /// The link's rate: the root class.
    pub rate: Rate,
    /// Where unclassified traffic goes; none (or a class not added yet):
    /// it is sent unshaped (as HTB's direct queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ClassId>,
    #[serde(default, rename = "class", skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassSpec>,
    #[serde(default, rename = "filter", skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterSpec>,
}

/// All shaping: per-interface trees and the policers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeConfig {
    #[serde(default, rename = "dev", skip_serializing_if = "Vec::is_empty")]
    pub devs: Vec<DevShape>,
    #[serde(default, rename = "police", skip_serializing_if = "Vec::is_empty")]
    pub police: Vec<PoliceSpec>,
}

impl ShapeConfig {
    pub fn is_empty(&self) -> bool {
        self.devs.is_empty() && self.police.is_empty()
    }

    pub fn dev(&self, name: &str) -> Option<&DevShape> {
        self.devs.iter().find(|d| d.dev == name)
    }

    /// Checks the whole configuration; the message names the interface
    /// and class or filter at fault.
    pub fn validate(&self) -> Result<(), String> {
        let mut devs = HashSet::new();
        for d in &self.devs {
            if !devs.insert(d.dev.as_str()) {
                return Err(format!("interface {} is shaped twice", d.dev));
            }
            d.validate()?;
        }
        let mut targets = HashSet::new();
        for p in &self.police {
            if !targets.insert(&p.target) {
                return Err(format!("{} has two policers", p.target));
            }

            if p.burst.0 < 64 {
                return Err(format!(
                    "policer for {}: burst {} is smaller than a packet",
                    p.target, p.burst
                ));
            }
            if let PoliceTarget::Class { dev, classid } = &p.target {
                let d = self
                    .dev(dev)
                    .ok_or_else(|| format!("policer: interface {dev} is not shaped"))?;
                if !d.classes.iter().any(|c| c.classid == *classid) {
                    return Err(format!("policer: {dev} has no class {classid}"));
                }
            }
        }
        Ok(())
    }
}

impl DevShape {
    pub fn new(dev: &str, rate: Rate) -> Self {
        Self {
            dev: dev.to_owned(),
            rate,
            default: None,
            classes: Vec::new(),
            filters: Vec::new(),
        }
    }

    pub fn class(&self, id: ClassId) -> Option<&ClassSpec> {
        self.classes.iter().find(|c| c.classid == id)
    }

    /// The class's parent, with the root as None.
    pub fn parent_of(&self, c: &ClassSpec) -> Option<ClassId> {
        c.parent.filter(|p| !p.is_root())
    }

    pub fn is_leaf(&self, id: ClassId) -> bool {
        !self.classes.iter().any(|c| self.parent_of(c) == Some(id))
    }

    /// The tree's rules: one major number, known parents in order, no
    /// cycles, rate ≤ ceil ≤ the parent's ceil, isolated children's rates
    /// fit their parent's, filters and the default point at leaves.
    pub fn validate(&self) -> Result<(), String> {
        let dev = &self.dev;
        if dev.is_empty() || dev.len() > 15 {
            return Err(format!("`{dev}` is not an interface name"));
        }
        let major = self.classes.first().map(|c| c.classid.major);
        let mut ids: HashMap<ClassId, &ClassSpec> = HashMap::new();
        for c in &self.classes {
            let id = c.classid;
            let at = |m: String| format!("{dev} class {id}: {m}");
            if id.is_root() {
                return Err(at("minor 0 is the root; classes need a minor number".into()));
            }
            if Some(id.major) != major {
                return Err(at(format!(
                    "every class on an interface has the same major number ({:x}:)",
                    major.unwrap_or(1)
                )));
            }
            if ids.contains_key(&id) {
                return Err(at("defined twice".into()));
            }
            if let Some(p) = c.parent
                && p.major != id.major
            {
                return Err(at(format!("parent {p} has another major number")));
            }
            let (parent_ceil, depth) = match self.parent_of(c) {
                None => (self.rate, 1),
                Some(p) => {
                    let pc = ids
                        .get(&p)
                        .ok_or_else(|| at(format!("unknown parent class {p}")))?;
                    let mut depth = 2;
                    let mut up = self.parent_of(pc);
                    while let Some(q) = up {
                        depth += 1;
                        up = ids.get(&q).and_then(|x| self.parent_of(x));
                    }
                    (pc.ceil(), depth)
                }
            };
            if depth > MAX_DEPTH {
                return Err(at(format!("deeper than {MAX_DEPTH} levels")));
            }
            if c.prio > MAX_PRIO {
                return Err(at(format!("prio must be 0..={MAX_PRIO}")));
            }
            if let Some(ceil) = c.ceil
                && ceil < c.rate
            {
                return Err(at(format!("ceil {ceil} is below rate {}", c.rate)));
            }
            if c.rate > parent_ceil || c.ceil() > parent_ceil {
                return Err(at(format!(
                    "rate/ceil above the parent's ceil {parent_ceil}"
                )));
            }
            if let Some(b) = c.burst
                && b.0 < 1600
            {
                return Err(at(format!(
                    "burst {b} is smaller than one packet (at least 1600b)"
                )));
            }
            c.qdisc.validate().map_err(at)?;
            ids.insert(id, c);
        }
        // Isolated children's guarantees must fit in what the parent has.
        let mut reserved: HashMap<Option<ClassId>, u64> = HashMap::new();
        for c in self.classes.iter().filter(|c| c.isolated) {
            *reserved.entry(self.parent_of(c)).or_default() += c.rate.0;
        }
        for (p, sum) in reserved {
            let rate = p.and_then(|p| ids.get(&p)).map_or(self.rate, |c| c.rate);
            if sum > rate.0 {
                let name = p.map_or_else(|| "the root".to_owned(), |p| p.to_string());
                return Err(format!(
                    "{dev}: isolated classes under {name} are guaranteed {} in all, more than its rate {rate}",
                    Rate(sum)
                ));
            }
        }
        let leaf = |id: ClassId, what: &str| -> Result<(), String> {
            if !ids.contains_key(&id) {
                return Err(format!("{dev}: {what} names unknown class {id}"));
            }
            if !self.is_leaf(id) {
                return Err(format!(
                    "{dev}: {what} names class {id}, which has children (only leaves queue)"
                ));
            }
            Ok(())
        };
        // As with tc's `htb default N`, the default may name a class yet
        // to be added (until then unclassified traffic goes unshaped); one
        // that exists must be a leaf.
        if let Some(d) = self.default.filter(|d| ids.contains_key(d)) {
            leaf(d, "the default")?;
        }
        let mut prios = HashSet::new();
        for f in &self.filters {
            if !prios.insert(f.prio) {
                return Err(format!("{dev}: two filters with prio {}", f.prio));
            }
            if f.matches.is_empty() {
                return Err(format!("{dev}: filter prio {} has no match", f.prio));
            }
            leaf(f.flowid, &format!("filter prio {}", f.prio))?;
        }
        Ok(())
    }
}

/// Per-class counters, summed over the workers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    pub bytes: u64,
    pub packets: u64,
    /// Dropped: queue full, RED, policer.
    pub drops: u64,
    /// Times a packet had to wait for tokens.
    pub overlimits: u64,
    pub backlog_packets: u64,
    pub backlog_bytes: u64,
    /// Sent rate over the last sampling period, bit/s.
    pub rate_bps: u64,
    /// Packets and bytes sent on borrowed tokens.
    pub borrowed_packets: u64,
    pub borrowed_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassInfo {
    pub spec: ClassSpec,
    pub leaf: bool,
    pub stats: ClassStats,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilterInfo {
    pub spec: FilterSpec,
    /// Packets it classified.
    pub hits: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DevInfo {
    pub dev: String,
    pub rate: Rate,
    pub default: Option<ClassId>,
    /// Root counters: everything sent through the tree.
    pub stats: ClassStats,
    /// Unclassified packets sent unshaped (no default class).
    pub direct_packets: u64,
    pub classes: Vec<ClassInfo>,
    pub filters: Vec<FilterInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoliceInfo {
    pub spec: PoliceSpec,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

/// Answer to `shape list`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShapeListing {
    pub devs: Vec<DevInfo>,
    pub police: Vec<PoliceInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_like_tc() {
        assert_eq!("100mbit".parse::<Rate>().unwrap(), Rate(100_000_000));
        assert_eq!("1.5gbit".parse::<Rate>().unwrap(), Rate(1_500_000_000));
        assert_eq!("1000".parse::<Rate>().unwrap(), Rate(1000));
        assert_eq!("10kbps".parse::<Rate>().unwrap(), Rate(80_000));
        assert_eq!("125bps".parse::<Rate>().unwrap(), Rate(1000));
        assert!("10 furlongs".parse::<Rate>().is_err());
        assert!("0mbit".parse::<Rate>().is_err());
        assert!("mbit".parse::<Rate>().is_err());
        assert_eq!("10kb".parse::<Size>().unwrap(), Size(10_240));
        assert_eq!("1mb".parse::<Size>().unwrap(), Size(1 << 20));
        assert_eq!("1514".parse::<Size>().unwrap(), Size(1514));
        assert_eq!("8kbit".parse::<Size>().unwrap(), Size(1024));
        assert_eq!("50ms".parse::<Micros>().unwrap(), Micros(50_000));
        for r in ["70mbit", "1gbit", "1500kbit", "12345bit"] {
            assert_eq!(r.parse::<Rate>().unwrap().to_string(), r);
        }
        for s in ["10kb", "2mb", "1600b"] {
            assert_eq!(s.parse::<Size>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn class_ids_are_hex() {
        let c: ClassId = "1:10".parse().unwrap();
        assert_eq!((c.major, c.minor), (1, 0x10));
        assert_eq!(c.to_string(), "1:10");
        assert!("1:".parse::<ClassId>().unwrap().is_root());
        assert!("0:1".parse::<ClassId>().is_err());
        assert!("1:g".parse::<ClassId>().is_err());
        assert!("110".parse::<ClassId>().is_err());
    }

    #[test]
    fn matches_parse_and_print_back() {
        for text in [
            "ip src 10.0.0.0/8",
            "ip dst 2001:db8::/32",
            "ip tos 0x30 0xff",
            "ip dscp 46",
            "ip protocol udp",
            "ip sport 80",
            "ip dport 1024 0xfc00",
            "real 10.2.0.11",
            "real 10.2.0.11:8080",
            "service tcp:10.9.0.10:80",
            "u32 0x00060000 0x00ff0000 at 8",
        ] {
            let m: Match = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            let again: Match = m.to_string().parse().unwrap();
            assert_eq!(again, m, "{text} → {m}");
        }
        assert_eq!(
            "ip dscp 12".parse::<Match>().unwrap(),
            Match::Tos {
                value: 0x30,
                mask: 0xfc
            }
        );
    }

    #[test]
    fn bad_matches_say_what_was_expected() {
        for (text, want) in [
            ("ip tos 0x30", "expected `ip tos VALUE MASK`"),
            ("ip tos 0x300 0xff", "out of range"),
            ("ip src 10.0.0.0/33", "prefix length"),
            ("ip colour red", "unknown field `colour`"),
            ("real nowhere", "match `real nowhere`"),
            ("service tcp:10.9.0.10", "VIP:PORT"),
            ("u32 1 2 3 4", "at OFFSET"),
            ("frobnicate", "unknown selector"),
            ("", "empty"),
        ] {
            let e = text.parse::<Match>().unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    /// Every prefix, every byte mutation and random token soup: an error
    /// or a match, never a panic.
    #[test]
    fn parser_survives_fuzzing() {
        let seeds = [
            "ip src 10.0.0.0/8",
            "ip tos 0x30 0xff",
            "ip dport 1024 0xfc00",
            "u32 0x00060000 0x00ff0000 at 8",
            "service udp:[2001:db8::1]:53",
            "real [2001:db8::2]:80",
            "ip dscp 63",
        ];
        let words = [
            "ip",
            "src",
            "dst",
            "tos",
            "dscp",
            "dsfield",
            "protocol",
            "sport",
            "dport",
            "real",
            "service",
            "u32",
            "at",
            "0x",
            "0xffffffffffffffffff",
            "-1",
            "/",
            ":",
            "[",
            "]",
            "::",
            "10.0.0.1/",
            "1e9",
            "tcp:",
            "udp:1:2",
            "٣",
            "\u{0}",
            "99999999999999999999",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for s in seeds {
            for i in 0..=s.len() {
                if s.is_char_boundary(i) {
                    let _ = s[..i].parse::<Match>();
                }
            }
            let b = s.as_bytes();
            for _ in 0..2000 {
                let mut m = b.to_vec();
                let i = (rnd() as usize) % m.len();
                m[i] = rnd() as u8;
                if rnd() % 3 == 0 {
                    m.insert((rnd() as usize) % m.len(), rnd() as u8);
                }
                let _ = String::from_utf8_lossy(&m).parse::<Match>();
            }
        }
        for _ in 0..20_000 {
            let n = (rnd() % 7) as usize;
            let s: Vec<&str> = (0..n)
                .map(|_| words[(rnd() as usize) % words.len()])
                .collect();
            let _ = s.join(" ").parse::<Match>();
            let _ = s.concat().parse::<Rate>();
            let _ = s.concat().parse::<Size>();
            let _ = s.concat().parse::<ClassId>();
        }
    }

    fn class(id: &str, parent: Option<&str>, rate: &str) -> ClassSpec {
        ClassSpec {
            classid: id.parse().unwrap(),
            parent: parent.map(|p| p.parse().unwrap()),
            rate: rate.parse().unwrap(),
            ceil: None,
            burst: None,
            prio: 0,
            bounded: false,
            isolated: false,
            qdisc: Qdisc::default(),
        }
    }

    #[test]
    fn tree_rules() {
        let mut d = DevShape::new("d1", "100mbit".parse().unwrap());
        d.classes.push(class("1:1", None, "100mbit"));
        d.classes.push(class("1:10", Some("1:1"), "70mbit"));
        d.classes.push(class("1:20", Some("1:1"), "30mbit"));
        d.default = Some("1:20".parse().unwrap());
        d.validate().unwrap();
        let mut bad = d.clone();
        bad.classes.push(class("1:30", Some("1:99"), "1mbit"));
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("unknown parent class 1:99")
        );
        let mut bad = d.clone();
        bad.classes[1].ceil = Some("200mbit".parse().unwrap());
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("above the parent's ceil")
        );
        let mut bad = d.clone();
        bad.default = Some("1:1".parse().unwrap());
        assert!(bad.validate().unwrap_err().contains("has children"));
        let mut bad = d.clone();
        bad.classes[1].isolated = true;
        bad.classes[2].isolated = true;
        bad.classes[2].rate = "31mbit".parse().unwrap();
        assert!(bad.validate().unwrap_err().contains("isolated"));
        let mut bad = d.clone();
        bad.classes.push(class("2:5", None, "1mbit"));
        assert!(bad.validate().unwrap_err().contains("same major"));
        // The paper's TC3/TC4 datafill: `prio 8` (CBQ's lowest) as written.
        let mut cbq = d.clone();
        cbq.classes[0].prio = 8;
        cbq.validate().unwrap();
        cbq.classes[0].prio = 9;
        assert!(cbq.validate().unwrap_err().contains("prio must be 0..=8"));
    }
}
