//! Value types of the protocol: services, servers, listings.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Transport protocol of a virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Most ports or port ranges one service may list (`21,22,1024-2048`).
pub const MAX_PORT_RANGES: usize = 8;

/// The ports a virtual service covers: one port, every port (`0`), or a
/// list of ports and ranges (`21,22`, `1024-65535`) that share one
/// scheduler and one persistence table, like an IPVS firewall-mark service.
///
/// Kept sorted and free of overlaps, so equal sets compare equal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ports {
    len: u8,
    ranges: [(u16, u16); MAX_PORT_RANGES],
}

impl Ports {
    /// Every port of the VIP (port 0).
    pub const ALL: Ports = Ports::single(0);

    pub const fn single(port: u16) -> Self {
        let mut ranges = [(0, 0); MAX_PORT_RANGES];
        ranges[0] = (port, port);
        Self { len: 1, ranges }
    }

    /// The inclusive ranges, sorted.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges[..self.len as usize]
    }

    /// True for the every-port (port 0) service.
    pub fn is_all(&self) -> bool {
        *self == Self::ALL
    }

    /// The port of a one-port service (0 for every port); `None` when the
    /// service covers several ports.
    pub fn single_port(&self) -> Option<u16> {
        match self.ranges() {
            [(lo, hi)] if lo == hi => Some(*lo),
            _ => None,
        }
    }

    /// The port a real server given without one listens on: the service's
    /// own port, or 0 ("the port the client asked for") when it covers
    /// several or all.
    pub fn default_real_port(&self) -> u16 {
        self.single_port().unwrap_or(0)
    }

    pub fn contains(&self, port: u16) -> bool {
        self.is_all()
            || self
                .ranges()
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    /// How many ports the set covers (65535 for every port).
    pub fn count(&self) -> u32 {
        if self.is_all() {
            return 65535;
        }
        self.ranges()
            .iter()
            .map(|&(lo, hi)| u32::from(hi - lo) + 1)
            .sum()
    }

    /// Whether two sets share a port (every-port services overlap nothing:
    /// they only take what no other service of the VIP does).
    pub fn overlaps(&self, other: &Ports) -> bool {
        if self.is_all() || other.is_all() {
            return self == other;
        }
        self.ranges()
            .iter()
            .any(|&(a, b)| other.ranges().iter().any(|&(c, d)| a <= d && c <= b))
    }
}

impl fmt::Debug for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ports({self})")
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for Ports {
    type Err = String;

    /// `80`, `0` (every port), `21,22`, `1024-65535`, `21,22,8000-8099`.
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |t: &str| {
            t.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{t}` is not a port number (0-65535)"))
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let r = match part.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => {
                    let p = port(part)?;
                    (p, p)
                }
            };
            if r.0 > r.1 {
                return Err(format!(
                    "port range `{part}` is empty (its end is below its start)"
                ));
            }
            ranges.push(r);
        }
        if ranges == [(0, 0)] {
            return Ok(Self::ALL);
        }
        if ranges.iter().any(|&(lo, _)| lo == 0) {
            return Err(format!(
                "ports `{s}`: port 0 means every port and cannot be part of a list or range"
            ));
        }
        if ranges.len() > MAX_PORT_RANGES {
            return Err(format!(
                "ports `{s}`: a service lists at most {MAX_PORT_RANGES} ports or ranges"
            ));
        }
        ranges.sort_unstable();
        if let Some(w) = ranges.windows(2).find(|w| w[1].0 <= w[0].1) {
            return Err(format!(
                "ports `{s}`: port {} is listed twice",
                w[1].0.max(w[0].0)
            ));
        }
        let mut out = Self {
            len: ranges.len() as u8,
            ranges: [(0, 0); MAX_PORT_RANGES],
        };
        out.ranges[..ranges.len()].copy_from_slice(&ranges);
        Ok(out)
    }
}

/// Most prefixes in one client class (`--from`).
pub const MAX_CLASS_PREFIXES: usize = 8;

/// A client class: the clients (prefixes) a service is for. Empty: every
/// client no other class of its VIP and ports takes. Kept sorted and free
/// of duplicates, so equal sets compare equal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Clients {
    len: u8,
    prefixes: [crate::filter::Cidr; MAX_CLASS_PREFIXES],
}

impl Default for Clients {
    fn default() -> Self {
        Self {
            len: 0,
            prefixes: [crate::filter::Cidr {
                addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                len: 0,
            }; MAX_CLASS_PREFIXES],
        }
    }
}

impl Clients {
    /// A class of these prefixes (at most [`MAX_CLASS_PREFIXES`]).
    pub fn new(list: &[crate::filter::Cidr]) -> Result<Self, String> {
        let mut v = list.to_vec();
        v.sort();
        v.dedup();
        if v.len() > MAX_CLASS_PREFIXES {
            return Err(format!(
                "a client class (--from) has at most {MAX_CLASS_PREFIXES} prefixes"
            ));
        }
        let mut c = Self::default();
        c.prefixes[..v.len()].copy_from_slice(&v);
        c.len = v.len() as u8;
        Ok(c)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn prefixes(&self) -> &[crate::filter::Cidr] {
        &self.prefixes[..usize::from(self.len)]
    }

    /// A 64-bit tag of the class (0: no class), for comparing classes on
    /// the packet path without comparing prefix lists.
    pub fn tag(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        if self.is_empty() {
            return 0;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish() | 1
    }

    /// The length of the longest of its prefixes holding `a`, if any.
    pub fn best(&self, a: IpAddr) -> Option<u8> {
        self.prefixes()
            .iter()
            .filter(|c| c.contains(a))
            .map(|c| c.len)
            .max()
    }
}

impl fmt::Display for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.prefixes().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clients({self})")
    }
}

/// A virtual service: protocol, VIP, the ports it covers and, for a
/// client class, the clients it is for.
///
/// Text form: `tcp:10.0.0.10:80`, `tcp:10.0.0.10:21,22`,
/// `tcp:10.0.0.10:1024-65535`, `udp:[2001:db8::1]:53`,
/// `tcp:10.0.0.10:80 from 10.0.0.0/8,192.0.2.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub proto: Protocol,
    pub vip: IpAddr,
    pub ports: Ports,
    /// Its client class (empty: the VIP's other clients).
    pub from: Clients,
}

impl ServiceKey {
    /// Whether `other` is on the same VIP and protocol with a port in
    /// common and the same clients (a port belongs to one service of each
    /// client class).
    pub fn overlaps(&self, other: &ServiceKey) -> bool {
        self.proto == other.proto
            && self.vip == other.vip
            && self.from == other.from
            && self.ports.overlaps(&other.ports)
    }

    /// Whether `other` shares a port with this service (whatever the
    /// clients).
    pub fn shares_ports(&self, other: &ServiceKey) -> bool {
        self.proto == other.proto && self.vip == other.vip && self.ports.overlaps(&other.ports)
    }

    /// A one-port service (port 0: every port).
    pub fn new(proto: Protocol, addr: SocketAddr) -> Self {
        Self {
            proto,
            vip: addr.ip(),
            ports: Ports::single(addr.port()),
            from: Clients::default(),
        }
    }

    /// A service from `VIP:PORTS` text.
    pub fn parse(proto: Protocol, s: &str) -> Result<Self, String> {
        let (vip, ports) = parse_vip(s)?;
        Ok(Self {
            proto,
            vip,
            ports,
            from: Clients::default(),
        })
    }

    /// The same service for client class `from` (prefixes of its family).
    pub fn with_from(mut self, from: &[crate::filter::Cidr]) -> Result<Self, String> {
        if let Some(c) = from.iter().find(|c| c.addr.is_ipv4() != self.vip.is_ipv4()) {
            return Err(format!(
                "--from {c}: not the family of VIP {}, it could never match",
                self.vip
            ));
        }
        self.from = Clients::new(from)?;
        Ok(self)
    }

    /// `VIP:PORTS` with IPv6 addresses in brackets.
    pub fn endpoint(&self) -> String {
        match self.vip {
            IpAddr::V4(a) => format!("{a}:{}", self.ports),
            IpAddr::V6(a) => format!("[{a}]:{}", self.ports),
        }
    }

    /// ` from CIDR,…` for a client class, else nothing.
    pub fn class_suffix(&self) -> String {
        if self.from.is_empty() {
            String::new()
        } else {
            format!(" from {}", self.from)
        }
    }
}

impl fmt::Display for ServiceKey {
    /// `tcp 10.0.0.10:80` (`… from 10.0.0.0/8` for a client class), the
    /// form used in messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}{}",
            self.proto,
            self.endpoint(),
            self.class_suffix()
        )
    }
}

impl FromStr for ServiceKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (s, from) = match s.split_once(" from ") {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let (proto, addr) = s
            .split_once(':')
            .ok_or_else(|| format!("service `{s}`: expected tcp:VIP:PORT or udp:VIP:PORT"))?;
        let proto = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(format!("service `{s}`: unknown protocol `{other}`")),
        };
        let key = Self::parse(proto, addr)?;
        match from {
            Some(f) => key.with_from(&crate::filter::cidr_list(f)?),
            None => Ok(key),
        }
    }
}

/// Parses `VIP:PORTS` (`10.0.0.10:80`, `10.0.0.10:21,22`,
/// `[2001:db8::1]:1024-65535`) with a clear message.
pub fn parse_vip(s: &str) -> Result<(IpAddr, Ports), String> {
    let bad = || {
        format!(
            "`{s}` is not VIP:PORT (e.g. 10.0.0.10:80, 10.0.0.10:21,22, 10.0.0.10:1024-65535 \
             or [2001:db8::1]:80)"
        )
    };
    let (addr, ports) = s.rsplit_once(':').ok_or_else(bad)?;
    let addr = match addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        Some(v6) => IpAddr::V6(v6.parse().map_err(|_| bad())?),
        None => IpAddr::V4(addr.parse().map_err(|_| bad())?),
    };
    let ports = ports.parse::<Ports>().map_err(|e| format!("`{s}`: {e}"))?;
    Ok((addr, ports))
}

impl Serialize for ServiceKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!(
            "{}:{}{}",
            self.proto,
            self.endpoint(),
            self.class_suffix()
        ))
    }
}

impl<'de> Deserialize<'de> for ServiceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A real server: address and optional port (none = the service's port).
///
/// Text form: `10.0.1.1`, `10.0.1.1:8080`, `[2001:db8::2]:80`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealSpec {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl RealSpec {
    /// The server's socket address within `service`.
    pub fn resolve(&self, service: &ServiceKey) -> SocketAddr {
        SocketAddr::new(
            self.addr,
            self.port.unwrap_or(service.ports.default_real_port()),
        )
    }
}

impl fmt::Display for RealSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}", SocketAddr::new(self.addr, p)),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl FromStr for RealSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self {
                addr: sa.ip(),
                port: Some(sa.port()),
            });
        }
        let bare = s.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>()
            .map(|addr| Self { addr, port: None })
            .map_err(|_| format!("`{s}` is not RIP[:PORT] (e.g. 10.0.1.1 or 10.0.1.1:8080)"))
    }
}

impl Serialize for RealSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RealSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How new connections are spread over a service's real servers (IPVS's
/// names and semantics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Round robin.
    #[default]
    Rr,
    /// Weighted round robin, smoothly interleaved (no bursts to the
    /// heaviest server).
    Wrr,
    /// Least connections (IPVS overhead: active × 256 + inactive).
    Lc,
    /// Weighted least connections: least overhead / weight.
    Wlc,
    /// Shortest expected delay: least (active + 1) / weight.
    Sed,
    /// Never queue: an idle server if there is one, else `sed`.
    Nq,
    /// Source hashing: the client address picks the server.
    Sh,
    /// Maglev consistent hashing of the client address: weights honoured,
    /// minimal disruption when servers change, the same choice on every
    /// director with the same configuration.
    Mh,
}

impl Scheduler {
    pub const ALL: [Scheduler; 8] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Sh,
        Scheduler::Mh,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Sh => "sh",
            Scheduler::Mh => "mh",
        }
    }
}

impl FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scheduler::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                format!("unknown scheduler `{s}` (known: rr, wrr, lc, wlc, sed, nq, sh, mh)")
            })
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How packets reach a real server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// LVS-NAT: the director is the real servers' gateway; requests are
    /// DNATed and replies get their source restored to VIP:PORT.
    #[default]
    Nat,
    /// The paper's "SNAT at real servers": the director DNATs requests only;
    /// real servers rewrite their replies' source to the VIP themselves.
    Dnat,
    /// LVS-DR, direct routing: only the destination MAC changes; real
    /// servers hold the VIP on `lo` and answer clients directly.
    Dr,
    /// LVS-TUN: the director encapsulates requests in IPIP to the real
    /// server, which decapsulates them (VIP on its tunnel device) and
    /// answers clients directly. IPv4 only.
    Tun,
    /// Full NAT: the director also rewrites the source to one of its own
    /// addresses (the local pool), so real servers need no special route
    /// and may sit on any subnet; replies come back by normal routing.
    Fullnat,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Nat => "nat",
            Method::Dnat => "dnat",
            Method::Dr => "dr",
            Method::Tun => "tun",
            Method::Fullnat => "fullnat",
        }
    }

    /// ipvsadm's "Forward" column.
    pub fn forward_label(self) -> &'static str {
        match self {
            Method::Nat => "Masq",
            Method::Dnat => "Dnat",
            Method::Dr => "Route",
            Method::Tun => "Tunnel",
            Method::Fullnat => "FullNat",
        }
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nat" => Ok(Method::Nat),
            "dnat" => Ok(Method::Dnat),
            "dr" => Ok(Method::Dr),
            "tun" => Ok(Method::Tun),
            "fullnat" => Ok(Method::Fullnat),
            other => Err(format!(
                "unknown method `{other}` (known: nat, dnat, dr, tun, fullnat)"
            )),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Largest accepted weight (as ipvsadm).
pub const MAX_WEIGHT: u32 = 65535;

/// Persistence timeout when `--persistent` has no value (the paper's).
pub const DEFAULT_PERSISTENCE: u32 = 360;
/// Longest persistence timeout accepted (one week).
pub const MAX_PERSISTENCE: u32 = 7 * 24 * 3600;

/// Checks a fullnat local pool: unicast addresses, no duplicates.
pub fn check_local_pool(addrs: &[IpAddr]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for a in addrs {
        let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
        if a.is_unspecified() || broadcast || a.is_multicast() || a.is_loopback() {
            return Err(format!("{a} cannot be a fullnat local address"));
        }
        if !seen.insert(a) {
            return Err(format!("fullnat local address {a} is listed twice"));
        }
    }
    Ok(())
}

/// Persistence granularity (`--netmask`): which clients count as one.
///
/// ipvsadm's two forms: a dotted IPv4 mask (`255.255.255.0`, any
/// contiguous one) or a prefix length (`24`, `/24`; IPv6 services take
/// only this form, 1..=128, and persist per address — 128 — without one).
/// Text and serde keep the form given: the dotted mask as a string, the
/// prefix length as a number (a string `"24"` or `"/24"` is read too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Netmask {
    /// A dotted IPv4 mask, `255.255.255.0`.
    Dotted(std::net::Ipv4Addr),
    /// A prefix length, `64`.
    Prefix(u8),
}

impl Netmask {
    /// The mask of an IPv4 prefix length, in ipvsadm's dotted form.
    pub fn dotted(bits: u8) -> Self {
        let m = u32::MAX
            .checked_shl(32 - u32::from(bits.min(32)))
            .unwrap_or(0);
        Netmask::Dotted(m.into())
    }

    /// The prefix length: the mask's leading one bits (a valid dotted mask
    /// is contiguous, see [`check`](Self::check)).
    pub fn bits(self) -> u8 {
        match self {
            Netmask::Dotted(m) => u32::from(m).leading_ones() as u8,
            Netmask::Prefix(p) => p,
        }
    }

    /// Checks the mask against the service's address family: IPv4 takes a
    /// contiguous dotted mask or a prefix 1..=32, IPv6 a prefix 1..=128.
    pub fn check(self, vip: IpAddr) -> Result<(), String> {
        match (self, vip) {
            (Netmask::Dotted(m), IpAddr::V4(_)) => {
                let bits = u32::from(m);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(format!(
                        "netmask {m} is not a contiguous mask (like 255.255.255.0)"
                    ));
                }
            }
            (Netmask::Dotted(m), IpAddr::V6(_)) => {
                return Err(format!(
                    "an IPv6 service's --netmask is a prefix length 1..128 (ipvsadm's form), \
                     not {m}"
                ));
            }
            (Netmask::Prefix(p), IpAddr::V4(_)) if !(1..=32).contains(&p) => {
                return Err(format!(
                    "an IPv4 service's --netmask is a dotted mask (like 255.255.255.0) or a \
                     prefix length 1..32, not {p}"
                ));
            }
            (Netmask::Prefix(p), IpAddr::V6(_)) if !(1..=128).contains(&p) => {
                return Err(format!(
                    "an IPv6 service's --netmask is a prefix length 1..128, not {p}"
                ));
            }
            (Netmask::Prefix(_), _) => {}
        }
        Ok(())
    }
}

impl fmt::Display for Netmask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netmask::Dotted(m) => m.fmt(f),
            Netmask::Prefix(p) => p.fmt(f),
        }
    }
}

impl FromStr for Netmask {
    type Err = String;

    /// `255.255.255.0`, `24` or `/24`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(m) = s.parse::<std::net::Ipv4Addr>() {
            return Ok(Netmask::Dotted(m));
        }
        let digits = s.strip_prefix('/').unwrap_or(s);
        match digits.parse::<u64>() {
            Ok(p) if digits.bytes().all(|b| b.is_ascii_digit()) => Netmask::from_prefix(p),
            _ => Err(format!(
                "netmask `{s}` is neither a dotted mask (255.255.255.0) nor a prefix length \
                 (24; 1..128 for IPv6)"
            )),
        }
    }
}

impl Netmask {
    /// A prefix length from a number, refusing what fits no family.
    fn from_prefix(p: u64) -> Result<Self, String> {
        match u8::try_from(p) {
            Ok(p @ 1..=128) => Ok(Netmask::Prefix(p)),
            _ => Err(format!(
                "netmask prefix length {p} is out of range (1..32 for IPv4, 1..128 for IPv6)"
            )),
        }
    }
}

impl Serialize for Netmask {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Netmask::Dotted(m) => s.collect_str(m),
            Netmask::Prefix(p) => s.serialize_u8(*p),
        }
    }
}

impl<'de> Deserialize<'de> for Netmask {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Netmask;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a netmask: \"255.255.255.0\" or a prefix length (24, \"/24\")")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Netmask, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, p: u64) -> Result<Netmask, E> {
                Netmask::from_prefix(p).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, p: i64) -> Result<Netmask, E> {
                let p = u64::try_from(p)
                    .map_err(|_| E::custom(format!("netmask prefix length {p} is out of range")))?;
                self.visit_u64(p)
            }
        }
        d.deserialize_any(V)
    }
}

/// Checks persistence settings: timeout range, and a netmask that suits
/// the service's family (see [`Netmask::check`]) and comes with persistence.
pub fn check_persistence(
    vip: IpAddr,
    persistent: Option<u32>,
    netmask: Option<Netmask>,
) -> Result<(), String> {
    if let Some(t) = persistent
        && !(1..=MAX_PERSISTENCE).contains(&t)
    {
        return Err(format!(
            "persistence timeout must be 1..={MAX_PERSISTENCE} seconds, got {t}"
        ));
    }
    if let Some(m) = netmask {
        m.check(vip)?;
        if persistent.is_none() {
            return Err("a netmask only applies to a persistent service: give --persistent".into());
        }
    }
    Ok(())
}

/// A real server's connection thresholds (ipvsadm's `-x`/`-y`,
/// keepalived's uthreshold/lthreshold). With `max` connections (active and
/// inactive, as IPVS counts them) the server takes no new ones until it is
/// back under `min`, or under three quarters of `max` when `min` is 0.
/// `max == 0`: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnLimits {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl ConnLimits {
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max == 0 && self.min != 0 {
            return Err(format!(
                "a lower connection threshold ({}) needs an upper one (--max-conns/-x)",
                self.min
            ));
        }
        if self.min > self.max {
            return Err(format!(
                "the lower connection threshold {} is above the upper one {}",
                self.min, self.max
            ));
        }
        if self.max > i32::MAX as u32 {
            return Err(format!(
                "connection threshold {} is above {}",
                self.max,
                i32::MAX
            ));
        }
        Ok(())
    }

    /// The connection count under which an overloaded server takes new
    /// connections again (IPVS: `l_threshold`, else `total * 4 < u * 3`).
    pub fn resume_below(&self) -> u64 {
        if self.min != 0 {
            u64::from(self.min)
        } else {
            (u64::from(self.max) * 3).div_ceil(4)
        }
    }
}

/// Traffic counters, as `ipvsadm --stats` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Connections scheduled.
    pub conns: u64,
    /// Packets client → server.
    pub packets_in: u64,
    /// Packets server → client (seen by the director).
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.conns += o.conns;
        self.packets_in += o.packets_in;
        self.packets_out += o.packets_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
    }
}

/// Per-second rates, estimated over the last two seconds (ipvsadm --rate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    pub conns: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Which connections `conns` lists (all given filters must match).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<RealSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<IpAddr>,
    /// Most connections returned (default 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One tracked connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    pub proto: Protocol,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub real: SocketAddr,
    pub method: Method,
    /// IPVS-style state name (ESTABLISHED, SYN_RECV, …).
    pub state: String,
    /// Seconds until the connection expires if idle.
    pub expires_in: u32,
    /// Forwarded by the XDP program (offloaded), not by lvc's workers.
    #[serde(default)]
    pub offloaded: bool,
}

/// Answer to `conns`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnListing {
    pub conns: Vec<ConnInfo>,
    /// True if `limit` cut the list short.
    pub truncated: bool,
}

/// One real server in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub addr: SocketAddr,
    pub method: Method,
    pub weight: u32,
    /// Established TCP connections.
    pub active_conns: u64,
    /// Other tracked connections (handshaking, closing, UDP).
    pub inactive_conns: u64,
    pub stats: Counters,
    pub rates: Rates,
    /// Its health check's view, if it is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::HealthInfo>,
    /// Its connection thresholds.
    #[serde(default, skip_serializing_if = "ConnLimits::is_none")]
    pub limits: ConnLimits,
    /// At its upper threshold: no new connections until it is back under
    /// the lower one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overloaded: bool,
    /// The PROXY protocol header it gets.
    #[serde(default, skip_serializing_if = "ProxyProtocol::is_off")]
    pub proxy_protocol: ProxyProtocol,
}

/// The PROXY protocol header lvc puts in front of each TCP connection to
/// a real server, so the server learns the client's address (haproxy's
/// `send-proxy` / `send-proxy-v2`; nginx `listen … proxy_protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    /// The text header: `PROXY TCP4 client vip cport vport\r\n`.
    V1,
    /// The binary header (16 bytes + the addresses).
    V2,
}

impl ProxyProtocol {
    pub fn is_off(&self) -> bool {
        *self == ProxyProtocol::Off
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        })
    }
}

impl FromStr for ProxyProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" | "none" => Ok(ProxyProtocol::Off),
            "v1" | "1" => Ok(ProxyProtocol::V1),
            "v2" | "2" => Ok(ProxyProtocol::V2),
            _ => Err(format!("PROXY protocol `{s}`: expected v1, v2 or off")),
        }
    }
}

/// One virtual service in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub service: ServiceKey,
    pub scheduler: Scheduler,
    /// Persistence timeout, seconds, if persistent.
    #[serde(default)]
    pub persistent: Option<u32>,
    /// Persistence granularity, when coarser than one address: a dotted
    /// mask for IPv4 services, a prefix length for IPv6 ones.
    #[serde(default)]
    pub netmask: Option<Netmask>,
    pub servers: Vec<ServerInfo>,
    pub stats: Counters,
    pub rates: Rates,
    /// The default health check of its servers.
    #[serde(default, skip_serializing_if = "crate::health::CheckSpec::is_empty")]
    pub check: crate::health::CheckSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    /// The sorry server, with its connections and counters; its `weight`
    /// is 1 while it takes the service's new connections, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry: Option<ServerInfo>,
    /// Picks up TCP connections mid-flow.
    #[serde(default)]
    pub sloppy: bool,
    /// Allow/deny lists and the new-connection rate limit.
    #[serde(default, skip_serializing_if = "crate::filter::Policy::is_empty")]
    pub policy: crate::filter::Policy,
    /// Packets of this service that the filter, its lists or its rate
    /// limit dropped.
    #[serde(default)]
    pub filtered: crate::filter::FilterCounters,
}

/// Answer to `list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub services: Vec<ServiceInfo>,
    /// The connection table's capacity (the `size` of ipvsadm's header).
    #[serde(default)]
    pub conn_capacity: u64,
}

/// One interface the dataplane serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub queues: u32,
    /// `driver` or `skb`.
    pub xdp_mode: String,
    /// Whether its AF_XDP sockets are bound in zero-copy mode (else copy).
    #[serde(default)]
    pub zero_copy: bool,
}

/// Answer to `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: u64,
    pub interfaces: Vec<InterfaceStatus>,
    pub workers: u32,
    pub flows: u64,
    pub flow_capacity: u64,
    /// Connection timeouts in force, seconds.
    pub timeouts: crate::config::Timeouts,
    /// The fullnat local address pool.
    #[serde(default)]
    pub local_pool: Vec<IpAddr>,
    /// fullnat (address, port) pairs in use.
    #[serde(default)]
    pub local_ports_in_use: u64,
    /// VIPs announced for ECMP (routed through `--announce-dev`).
    #[serde(default)]
    pub announced: Vec<IpAddr>,
    /// Deleted services whose connections are still finishing (their ports
    /// stay steered to lvc until the last one ends).
    #[serde(default)]
    pub draining: Vec<ServiceKey>,
    /// Dataplane counters: XDP program and workers, by name.
    pub counters: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_service_and_real() {
        let s: ServiceKey = "tcp:10.0.0.10:80".parse().unwrap();
        assert_eq!(s.to_string(), "tcp 10.0.0.10:80");
        let r: RealSpec = "10.0.1.1".parse().unwrap();
        assert_eq!(r.resolve(&s), "10.0.1.1:80".parse().unwrap());
        let r: RealSpec = "10.0.1.1:8080".parse().unwrap();
        assert_eq!(r.resolve(&s), "10.0.1.1:8080".parse().unwrap());
        let r: RealSpec = "[2001:db8::2]".parse().unwrap();
        assert_eq!(r.port, None);
        assert!("tcp:10.0.0.10".parse::<ServiceKey>().is_err());
        assert!("sctp:10.0.0.10:80".parse::<ServiceKey>().is_err());
        assert!("10.0.1".parse::<RealSpec>().is_err());
        assert!("10.0.0.1:99999".parse::<RealSpec>().is_err());
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;

    fn ports(s: &str) -> Ports {
        s.parse().unwrap()
    }

    #[test]
    fn port_sets_parse_normalised() {
        assert_eq!(ports("80"), Ports::single(80));
        assert!(ports("0").is_all());
        assert_eq!(ports("22,21").to_string(), "21,22");
        assert_eq!(ports("22,21"), ports("21,22"));
        assert_eq!(ports("1024-65535").to_string(), "1024-65535");
        assert_eq!(ports("21,22,8000-8099").count(), 102);
        assert_eq!(ports("80").single_port(), Some(80));
        assert_eq!(ports("21,22").single_port(), None);
        assert_eq!(ports("21,22").default_real_port(), 0);
        assert!(ports("21,1024-2048").contains(1500));
        assert!(!ports("21,1024-2048").contains(22));
        for bad in [
            "",
            "x",
            "21,",
            "0,21",
            "0-10",
            "10-5",
            "21,21",
            "20-30,25",
            "70000",
            "1,2,3,4,5,6,7,8,9",
        ] {
            assert!(bad.parse::<Ports>().is_err(), "{bad:?} parsed");
        }
        let e = "20-30,25".parse::<Ports>().unwrap_err();
        assert!(e.contains("25 is listed twice"), "{e}");
    }

    #[test]
    fn overlap() {
        assert!(ports("21,22").overlaps(&ports("22")));
        assert!(ports("1000-2000").overlaps(&ports("2000-3000")));
        assert!(!ports("1000-2000").overlaps(&ports("2001-3000")));
        // Every-port services only collide with each other.
        assert!(!ports("0").overlaps(&ports("80")));
        assert!(ports("0").overlaps(&ports("0")));
    }

    #[test]
    fn multi_port_services_text() {
        let s: ServiceKey = "tcp:10.0.0.10:22,21".parse().unwrap();
        assert_eq!(s.to_string(), "tcp 10.0.0.10:21,22");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            "\"tcp:10.0.0.10:21,22\""
        );
        let s: ServiceKey = "udp:[2001:db8::1]:1024-65535".parse().unwrap();
        assert_eq!(s.to_string(), "udp [2001:db8::1]:1024-65535");
        let r: RealSpec = "10.0.1.1".parse().unwrap();
        let s: ServiceKey = "tcp:10.0.0.10:21,22".parse().unwrap();
        assert_eq!(r.resolve(&s).port(), 0);
        assert!("tcp:2001:db8::1:80".parse::<ServiceKey>().is_err());
        assert!(
            "tcp:10.0.0.10:0,80"
                .parse::<ServiceKey>()
                .unwrap_err()
                .contains("port 0 means every port")
        );
    }
}

#[cfg(test)]
mod netmask_tests {
    use super::*;

    const V4: &str = "10.0.0.10";
    const V6: &str = "2001:db8::10";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn mask(s: &str) -> Netmask {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_both_forms() {
        assert_eq!(
            mask("255.255.255.0"),
            Netmask::Dotted("255.255.255.0".parse().unwrap())
        );
        assert_eq!(mask("24"), Netmask::Prefix(24));
        assert_eq!(mask("/24"), Netmask::Prefix(24));
        assert_eq!(mask("128"), Netmask::Prefix(128));
        assert_eq!(mask("255.255.255.0").bits(), 24);
        assert_eq!(mask("0.0.0.0").bits(), 0);
        assert_eq!(mask("/64").bits(), 64);
        assert_eq!(Netmask::dotted(24), mask("255.255.255.0"));
        assert_eq!(Netmask::dotted(32), mask("255.255.255.255"));
        assert_eq!(Netmask::dotted(0), mask("0.0.0.0"));
        assert_eq!(mask("255.255.255.0").to_string(), "255.255.255.0");
        assert_eq!(mask("/64").to_string(), "64");
        for bad in [
            "", "/", "0", "/0", "129", "300", "+24", "-1", "24/", "ffff::", "x", "1.2.3",
        ] {
            assert!(bad.parse::<Netmask>().is_err(), "{bad:?} parsed");
        }
        let e = "129".parse::<Netmask>().unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = "garbage".parse::<Netmask>().unwrap_err();
        assert!(e.contains("prefix length"), "{e}");
    }

    #[test]
    fn serde_keeps_the_form() {
        let j = |m: Netmask| serde_json::to_string(&m).unwrap();
        assert_eq!(j(mask("255.255.255.0")), "\"255.255.255.0\"");
        assert_eq!(j(mask("/64")), "64");
        let from = |s: &str| serde_json::from_str::<Netmask>(s);
        assert_eq!(from("64").unwrap(), Netmask::Prefix(64));
        assert_eq!(from("\"64\"").unwrap(), Netmask::Prefix(64));
        assert_eq!(from("\"/64\"").unwrap(), Netmask::Prefix(64));
        assert_eq!(from("\"255.255.0.0\"").unwrap(), mask("255.255.0.0"));
        for bad in ["0", "129", "-1", "\"x\"", "1.5", "[]", "null"] {
            assert!(from(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn requests_carry_either_form() {
        let req = |m: &str| {
            serde_json::from_str::<crate::Request>(&format!(
                r#"{{"verb":"add-service","service":"tcp:[{V6}]:80","persistent":60,"netmask":{m}}}"#
            ))
        };
        for m in ["64", "\"64\"", "\"/64\""] {
            match req(m).unwrap_or_else(|e| panic!("{m}: {e}")) {
                crate::Request::AddService { netmask, .. } => {
                    assert_eq!(netmask, Some(Netmask::Prefix(64)), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(req("\"nope\"").is_err());
        assert!(req("200").is_err());
        // Round trip through the wire form.
        let r = crate::Request::AddService {
            service: format!("tcp:[{V6}]:80").parse().unwrap(),
            scheduler: Scheduler::Rr,
            persistent: Some(60),
            netmask: Some(Netmask::Prefix(64)),
            check: Default::default(),
            alert: None,
            sorry: None,
            sloppy: false,
            policy: Default::default(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""netmask":64"#), "{text}");
        assert_eq!(serde_json::from_str::<crate::Request>(&text).unwrap(), r);
    }

    #[test]
    fn validated_against_the_family() {
        let ok = |vip: &str, m: &str| check_persistence(ip(vip), Some(60), Some(mask(m)));
        assert!(ok(V4, "255.255.255.0").is_ok());
        assert!(ok(V4, "255.255.255.255").is_ok());
        assert!(ok(V4, "0.0.0.0").is_ok());
        assert!(ok(V4, "24").is_ok());
        assert!(ok(V4, "/32").is_ok());
        assert!(ok(V4, "1").is_ok());
        assert!(ok(V6, "64").is_ok());
        assert!(ok(V6, "/48").is_ok());
        assert!(ok(V6, "128").is_ok());
        assert!(ok(V6, "1").is_ok());
        let e = ok(V4, "255.0.255.0").unwrap_err();
        assert!(e.contains("not a contiguous mask"), "{e}");
        let e = ok(V4, "33").unwrap_err();
        assert!(e.contains("prefix length 1..32, not 33"), "{e}");
        let e = ok(V6, "255.255.255.0").unwrap_err();
        assert_eq!(
            e,
            "an IPv6 service's --netmask is a prefix length 1..128 (ipvsadm's form), not \
             255.255.255.0"
        );
        // Built by hand, out of range: refused all the same.
        for (vip, p) in [(V4, 0), (V6, 0), (V6, 129)] {
            assert!(
                check_persistence(ip(vip), Some(60), Some(Netmask::Prefix(p))).is_err(),
                "{vip} /{p}"
            );
        }
        // Only with persistence, as before.
        for (vip, m) in [(V4, "255.255.255.0"), (V4, "24"), (V6, "64")] {
            let e = check_persistence(ip(vip), None, Some(mask(m))).unwrap_err();
            assert!(e.contains("give --persistent"), "{e}");
        }
        assert!(check_persistence(ip(V6), Some(60), None).is_ok());
        assert!(check_persistence(ip(V6), Some(0), None).is_err());
    }
}
