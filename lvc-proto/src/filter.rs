//! Packet filtering: per-service allow/deny lists and new-connection rate
//! limits ([`Policy`]), the global filter's ordered rules ([`FilterRule`])
//! and the named prefix sets they may refer to (`@name`, like ipset).

use crate::RealSpec;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address prefix, host bits zero: `10.0.0.0/8`, `2001:db8::/32`; a
/// bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// The prefix's width in its family: 32 or 128.
    pub fn max_len(addr: IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    /// Whether `a` lies in this prefix (never across families).
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self.addr, a) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let m = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & m == u32::from(a) & m
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(p) & m == u128::from(a) & m
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR (e.g. 10.0.0.0/8)"))?;
        let max = Self::max_len(addr);
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
            None => max,
        };
        let c = Cidr { addr, len };
        let net = c.network();
        if net != addr {
            return Err(format!(
                "`{s}` has host bits set: the prefix is {}/{len}",
                net
            ));
        }
        Ok(c)
    }
}

impl Cidr {
    /// The prefix's first address (its address with the host bits cleared).
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let m = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & m).into())
            }
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `CIDR[,CIDR…]`.
pub fn cidr_list(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect()
}

/// A service's client policy: who may connect, and how fast new
/// connections may come.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// When not empty, only clients in these prefixes reach the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Cidr>,
    /// Clients in these prefixes never reach the service. Where an allow
    /// and a deny prefix both hold a client, the longer one decides (equal
    /// lengths: deny).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Cidr>,
    /// New connections per second the service takes (excess first packets
    /// are dropped before any state is made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_rate: Option<u32>,
    /// Burst of new connections above the rate (default: one second's
    /// worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_burst: Option<u32>,
}

/// The highest `--conn-rate` (new connections per second).
pub const MAX_CONN_RATE: u32 = 100_000_000;

/// Most prefixes in one service's allow and deny lists together.
pub const MAX_POLICY_PREFIXES: usize = 65_536;

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the lists and the rate; `family_v4`: the service's family
    /// (prefixes of the other family could never match).
    pub fn validate(&self, family_v4: bool) -> Result<(), String> {
        if self.allow.len() + self.deny.len() > MAX_POLICY_PREFIXES {
            return Err(format!(
                "at most {MAX_POLICY_PREFIXES} allow and deny prefixes per service"
            ));
        }
        for (what, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if let Some(c) = list.iter().find(|c| c.addr.is_ipv4() != family_v4) {
                return Err(format!(
                    "--{what} {c}: not the service's address family, it could never match"
                ));
            }
        }
        if let Some(c) = self.allow.iter().find(|c| self.deny.contains(c)) {
            return Err(format!("{c} is in both --allow and --deny"));
        }
        if self.conn_rate == Some(0) || self.conn_rate.is_some_and(|r| r > MAX_CONN_RATE) {
            return Err(format!(
                "--conn-rate must be 1..={MAX_CONN_RATE} connections per second"
            ));
        }
        if self.conn_burst.is_some() && self.conn_rate.is_none() {
            return Err("--conn-burst needs --conn-rate".into());
        }
        if self.conn_burst == Some(0) {
            return Err("--conn-burst must be at least 1".into());
        }
        Ok(())
    }

    /// Whether client `a` may reach the service (allow/deny only).
    pub fn admits(&self, a: IpAddr) -> bool {
        let best = |l: &[Cidr]| l.iter().filter(|c| c.contains(a)).map(|c| c.len).max();
        match (best(&self.allow), best(&self.deny)) {
            (_, None) => self.allow.is_empty() || best(&self.allow).is_some(),
            (None, Some(_)) => false,
            (Some(a), Some(d)) => a > d,
        }
    }

    /// The token bucket's depth: the burst, or one second's worth.
    pub fn burst(&self) -> Option<u32> {
        self.conn_rate.map(|r| self.conn_burst.unwrap_or(r))
    }
}

/// What a filter rule does with the packets it matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    #[default]
    Drop,
    /// Ends the filter for the packet: later rules are not looked at (the
    /// service's own allow/deny lists still are).
    Accept,
}

impl fmt::Display for FilterAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            FilterAction::Drop => "drop",
            FilterAction::Accept => "accept",
        })
    }
}

impl FromStr for FilterAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop" => Ok(Self::Drop),
            "accept" => Ok(Self::Accept),
            _ => Err(format!("action `{s}`: expected drop or accept")),
        }
    }
}

/// Addresses a rule matches: prefixes, or a named set (`@name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AddrMatch {
    Cidrs(Vec<Cidr>),
    Set(String),
}

impl fmt::Display for AddrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrMatch::Set(n) => write!(f, "@{n}"),
            AddrMatch::Cidrs(c) => {
                for (i, c) in c.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for AddrMatch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(n) = s.strip_prefix('@') {
            check_set_name(n)?;
            return Ok(Self::Set(n.to_owned()));
        }
        let c = cidr_list(s)?;
        if c.is_empty() {
            return Err("an empty address list matches nothing".into());
        }
        Ok(Self::Cidrs(c))
    }
}

impl Serialize for AddrMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AddrMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A set's name: letters, digits, `-`, `_`, `.`; 1..=64 characters.
pub fn check_set_name(n: &str) -> Result<(), String> {
    if n.is_empty()
        || n.len() > 64
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "set name `{n}`: 1 to 64 letters, digits, `-`, `_` or `.`"
        ));
    }
    Ok(())
}

/// An inclusive destination-port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let p = |x: &str| {
            x.trim()
                .parse::<u16>()
                .map_err(|_| format!("port `{x}` is not 0..=65535"))
        };
        let r = match s.split_once('-') {
            Some((a, b)) => PortRange {
                lo: p(a)?,
                hi: p(b)?,
            },
            None => {
                let v = p(s)?;
                PortRange { lo: v, hi: v }
            }
        };
        if r.lo > r.hi {
            return Err(format!(
                "port range `{s}` is empty (low end above high end)"
            ));
        }
        Ok(r)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A bare number in TOML (`dport = 80`) or a string (`"1024-2047"`).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u16),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(v) => Ok(PortRange { lo: v, hi: v }),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// An IP protocol by name (`tcp`, `udp`, `icmp`, `icmpv6`) or number.
pub fn parse_proto(s: &str) -> Result<u8, String> {
    match s {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "icmp" => Ok(1),
        "icmpv6" | "ipv6-icmp" => Ok(58),
        n => n
            .parse::<u8>()
            .map_err(|_| format!("protocol `{s}`: expected tcp, udp, icmp, icmpv6 or 0..=255")),
    }
}

/// The name of IP protocol `p` where it has one.
pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

mod proto_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Option<u8>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => s.serialize_str(&super::proto_name(*p)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u8),
            S(String),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::N(n)) => Ok(Some(n)),
            Some(Raw::S(s)) => super::parse_proto(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Most rules in the global filter (the XDP program keeps one bit per rule).
pub const MAX_FILTER_RULES: usize = 64;

/// One rule of the global filter over VIP traffic. Rules are looked at in
/// `prio` order (lowest first); the first that matches decides. A field
/// that is absent matches everything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRule {
    pub prio: u32,
    #[serde(default)]
    pub action: FilterAction,
    /// The client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<AddrMatch>,
    /// The VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<AddrMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "proto_serde")]
    pub proto: Option<u8>,
    /// The VIP port(s) (TCP/UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<PortRange>,
    /// The interface the packet arrived on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// The real server the connection is scheduled to (the translated
    /// destination): decided when a connection is made; adding a drop rule
    /// with it ends the established connections it matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real: Option<RealSpec>,
}

impl FilterRule {
    /// Checks what can be checked without the running configuration.
    pub fn validate(&self) -> Result<(), String> {
        if self.dport.is_some() && !matches!(self.proto, Some(6 | 17)) {
            return Err(format!(
                "rule {}: --dport needs --proto tcp or udp",
                self.prio
            ));
        }
        if self.real.is_some() && matches!(self.proto, Some(p) if p != 6 && p != 17) {
            return Err(format!(
                "rule {}: --real matches connections, which are TCP or UDP",
                self.prio
            ));
        }
        if let Some(i) = &self.iface
            && (i.is_empty() || i.len() > 15)
        {
            return Err(format!(
                "rule {}: interface name `{i}` must be 1..=15 characters",
                self.prio
            ));
        }
        Ok(())
    }
}

impl fmt::Display for FilterRule {
    /// As `lvc-ctl filter add` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--prio {} --action {}", self.prio, self.action)?;
        if let Some(s) = &self.src {
            write!(f, " --src {s}")?;
        }
        if let Some(d) = &self.dst {
            write!(f, " --dst {d}")?;
        }
        if let Some(p) = self.proto {
            write!(f, " --proto {}", proto_name(p))?;
        }
        if let Some(p) = self.dport {
            write!(f, " --dport {p}")?;
        }
        if let Some(i) = &self.iface {
            write!(f, " --iface {i}")?;
        }
        if let Some(r) = &self.real {
            write!(f, " --real {r}")?;
        }
        Ok(())
    }
}

/// Packets (and their bytes) a rule matched, or a service dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// One rule in `filter list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRuleInfo {
    pub rule: FilterRule,
    pub stats: FilterCounters,
}

/// One named set in `filter list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetInfo {
    pub name: String,
    pub prefixes: u64,
}

/// Answer to `filter-list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterListing {
    pub rules: Vec<FilterRuleInfo>,
    pub sets: Vec<SetInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("10.1.2.3".parse::<Cidr>().unwrap().len, 32);
        assert_eq!("2001:db8::/32".parse::<Cidr>().unwrap().len, 32);
        for (bad, says) in [
            ("10.1.2.3/8", "host bits set: the prefix is 10.0.0.0/8"),
            ("10.0.0.0/33", "0..=32"),
            ("2001:db8::/129", "0..=128"),
            ("ten", "not an address"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn longest_prefix_decides_between_allow_and_deny() {
        let p = |allow: &str, deny: &str| Policy {
            allow: cidr_list(allow).unwrap(),
            deny: cidr_list(deny).unwrap(),
            ..Policy::default()
        };
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let only = p("10.0.0.0/8", "");
        assert!(only.admits(a("10.9.9.9")));
        assert!(!only.admits(a("11.0.0.1")));
        let holes = p("10.0.0.0/8", "10.1.0.0/16");
        assert!(holes.admits(a("10.2.0.1")));
        assert!(!holes.admits(a("10.1.0.1")));
        let back = p("10.1.2.0/24", "10.0.0.0/8");
        assert!(back.admits(a("10.1.2.3")));
        assert!(!back.admits(a("10.1.3.3")));
        assert!(!back.admits(a("192.0.2.1")));
        let deny_only = p("", "192.0.2.0/24");
        assert!(deny_only.admits(a("10.0.0.1")));
        assert!(!deny_only.admits(a("192.0.2.9")));
        assert!(p("", "").admits(a("2001:db8::1")));
    }

    #[test]
    fn rules_read_and_print_the_same() {
        let r: FilterRule = toml::from_str(
            "prio = 10\naction = \"drop\"\nsrc = \"10.0.0.0/8,192.0.2.0/24\"\nproto = \"tcp\"\ndport = \"80-81\"\nreal = \"10.2.0.11:80\"\n",
        )
        .unwrap();
        assert_eq!(
            r.to_string(),
            "--prio 10 --action drop --src 10.0.0.0/8,192.0.2.0/24 --proto tcp --dport 80-81 --real 10.2.0.11:80"
        );
        let back: FilterRule = toml::from_str(&toml::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let set: AddrMatch = "@bad-guys".parse().unwrap();
        assert_eq!(set, AddrMatch::Set("bad-guys".into()));
        assert!("@".parse::<AddrMatch>().is_err());
        assert!("@a b".parse::<AddrMatch>().is_err());
        let n: FilterRule = toml::from_str("prio = 1\nproto = 47\ndport = 5\n").unwrap();
        assert!(n.validate().unwrap_err().contains("--dport needs"));
    }
}
