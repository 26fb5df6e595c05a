//! Filters: which class a packet leaving an interface belongs to. A
//! filter's matches are ANDed; filters are tried by priority, the first
//! match wins.
//!
//! Header fields are read from the frame as it leaves (after rewrite);
//! `real` and `service` come from the connection the packet belongs to,
//! so they match both directions.

use crate::addr::Addr;
use crate::wire::{
    ETH_HLEN, IPV6_FRAGMENT, L4, PROTO_IPIP, PROTO_TCP, PROTO_UDP, be16, ipv4, ipv6,
};
use lvc_proto::Ports;
use lvc_proto::shape::Match;
use std::net::IpAddr;

/// What the connection table knew about the packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowMeta {
    /// IP protocol of the connection (6, 17), 0 if none.
    pub proto: u8,
    pub vip: Option<(Addr, u16)>,
    pub real: Option<(Addr, u16)>,
    /// The connection's client class ([`lvc_proto::Clients::tag`]; 0:
    /// the service without one).
    pub class: u64,
    /// The ifindex the frame came in on (set by the worker before the
    /// pipeline runs; 0: unknown).
    pub ingress: u32,
}

/// The header fields filters look at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub tos: u8,
    pub proto: u8,
    pub src: u128,
    pub dst: u128,
    pub sport: u16,
    pub dport: u16,
    pub ip_off: usize,
    /// A hash of the (innermost) 5-tuple, for sfq.
    pub flow: u32,
}

fn addr(b: &[u8]) -> u128 {
    let mut a = [0u8; 16];
    if b.len() == 4 {
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(b);
    } else {
        a.copy_from_slice(b);
    }
    u128::from_be_bytes(a)
}

/// Reads the IP header of an Ethernet frame (IPv4 or IPv6, no VLAN).
/// None if it is neither or truncated.
pub fn header(f: &[u8]) -> Option<Header> {
    let ip = f.get(ETH_HLEN..)?;
    let mut h = Header {
        ip_off: ETH_HLEN,
        ..Header::default()
    };
    let l4 = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ihl < ipv4::HLEN || ip.len() < ihl {
                return None;
            }
            h.tos = ip[ipv4::TOS];
            h.proto = ip[ipv4::PROTO];
            h.src = addr(&ip[ipv4::SRC..ipv4::SRC + 4]);
            h.dst = addr(&ip[ipv4::DST..ipv4::DST + 4]);
            // Only a first fragment has ports.
            let frag_off = be16(ip, ipv4::FRAG) & 0x1fff;
            (frag_off == 0).then_some(ihl)
        }
        6 if ip.len() >= ipv6::HLEN => {
            h.tos = (ip[0] << 4) | (ip[1] >> 4);
            h.proto = ip[ipv6::NEXT];
            h.src = addr(&ip[ipv6::SRC..ipv6::SRC + 16]);
            h.dst = addr(&ip[ipv6::DST..ipv6::DST + 16]);
            let frag_end = ipv6::HLEN + ipv6::FRAG_HLEN;
            match ip.get(ipv6::HLEN..frag_end) {
                // A fragment header: the protocol is behind it, and only
                // a first fragment has ports.
                Some(fh) if h.proto == IPV6_FRAGMENT => {
                    h.proto = fh[0];
                    (be16(fh, 2) & 0xfff8 == 0).then_some(frag_end)
                }
                _ => Some(ipv6::HLEN),
            }
        }
        _ => return None,
    };
    let (mut fsrc, mut fdst, mut fproto) = (h.src, h.dst, h.proto);
    if let Some(l4) = l4 {
        let mut ports_at = Some(l4);
        // IPIP (lvc-tun): the flow is the inner packet's.
        if h.proto == PROTO_IPIP
            && let Some(inner) = ip.get(l4..l4 + ipv4::HLEN)
            && inner[0] >> 4 == 4
        {
            let ihl = usize::from(inner[0] & 0x0f) * 4;
            fsrc = addr(&inner[ipv4::SRC..ipv4::SRC + 4]);
            fdst = addr(&inner[ipv4::DST..ipv4::DST + 4]);
            fproto = inner[ipv4::PROTO];
            ports_at = Some(l4 + ihl);
        }
        if let Some(at) = ports_at
            && matches!(fproto, PROTO_TCP | PROTO_UDP)
            && let Some(p) = ip.get(at..at + 4)
        {
            let l4 = L4::of(p, 0, fproto);
            let (sp, dp) = (l4.src_port(), l4.dst_port());
            if fproto == h.proto {
                (h.sport, h.dport) = (sp, dp);
            }
            h.flow = flow_hash(fsrc, fdst, fproto, sp, dp);
            return Some(h);
        }
    }
    h.flow = flow_hash(fsrc, fdst, fproto, 0, 0);
    Some(h)
}

fn flow_hash(src: u128, dst: u128, proto: u8, sport: u16, dport: u16) -> u32 {
    let mut x = (src ^ dst.rotate_left(64)) as u64 ^ ((src ^ dst) >> 64) as u64;
    x ^= (u64::from(sport) << 32) | (u64::from(dport) << 16) | u64::from(proto);
    // splitmix64's finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) as u32
}

/// A match in the form the packet path tests.
#[derive(Clone, Debug)]
enum Test {
    Src(u128, u128),
    Dst(u128, u128),
    Tos(u8, u8),
    Proto(u8),
    Sport(u16, u16),
    Dport(u16, u16),
    Real(Addr, Option<u16>),
    Service(u8, Addr, Ports, u64),
    U32 {
        value: u32,
        mask: u32,
        offset: usize,
    },
}

fn prefix(a: IpAddr, len: u8) -> (u128, u128) {
    let bits = if a.is_ipv4() {
        96 + u32::from(len)
    } else {
        u32::from(len)
    };
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    (u128::from_be_bytes(Addr::from(a).0) & mask, mask)
}

impl Test {
    fn new(m: &Match) -> Self {
        match *m {
            Match::Src(a, l) => {
                let (n, m) = prefix(a, l);
                Test::Src(n, m)
            }
            Match::Dst(a, l) => {
                let (n, m) = prefix(a, l);
                Test::Dst(n, m)
            }
            Match::Tos { value, mask } => Test::Tos(value & mask, mask),
            Match::Protocol(p) => Test::Proto(p),
            Match::Sport { port, mask } => Test::Sport(port & mask, mask),
            Match::Dport { port, mask } => Test::Dport(port & mask, mask),
            Match::Real(r) => Test::Real(r.addr.into(), r.port),
            Match::Service(s) => {
                Test::Service(s.proto.number(), s.vip.into(), s.ports, s.from.tag())
            }
            Match::U32 {
                value,
                mask,
                offset,
            } => Test::U32 {
                value: value & mask,
                mask,
                offset: usize::from(offset),
            },
        }
    }

    #[inline]
    fn test(&self, f: &[u8], h: &Header, meta: &FlowMeta) -> bool {
        let ports = matches!(h.proto, 6 | 17);
        match *self {
            Test::Src(n, m) => h.src & m == n,
            Test::Dst(n, m) => h.dst & m == n,
            Test::Tos(v, m) => h.tos & m == v,
            Test::Proto(p) => h.proto == p,
            Test::Sport(p, m) => ports && h.sport & m == p,
            Test::Dport(p, m) => ports && h.dport & m == p,
            Test::Real(a, port) => meta
                .real
                .is_some_and(|(ra, rp)| ra == a && port.is_none_or(|p| p == rp)),
            Test::Service(proto, vip, ports, class) => {
                meta.proto == proto
                    && meta.class == class
                    && meta
                        .vip
                        .is_some_and(|(va, vp)| va == vip && ports.contains(vp))
            }
            Test::U32 {
                value,
                mask,
                offset,
            } => {
                let at = h.ip_off + offset;
                f.get(at..at + 4)
                    .is_some_and(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]) & mask == value)
            }
        }
    }
}

/// One interface's filters, by priority.
#[derive(Clone, Debug, Default)]
pub struct Classifier {
    /// (tests, node index of the class), in priority order.
    filters: Vec<(Vec<Test>, usize)>,
}

impl Classifier {
    /// `filters`: (prio, matches, node index).
    pub fn new(mut filters: Vec<(u32, &[Match], usize)>) -> Self {
        filters.sort_by_key(|f| f.0);
        Self {
            filters: filters
                .into_iter()
                .map(|(_, ms, node)| (ms.iter().map(Test::new).collect(), node))
                .collect(),
        }
    }

    /// The first matching filter: (its position, its class's node).
    #[inline]
    pub fn classify(&self, f: &[u8], h: &Header, meta: &FlowMeta) -> Option<(usize, usize)> {
        self.filters
            .iter()
            .position(|(tests, _)| tests.iter().all(|t| t.test(f, h, meta)))
            .map(|i| (i, self.filters[i].1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_v4(tos: u8, proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12] = 0x08;
        f[14] = 0x45;
        f[15] = tos;
        f[23] = proto;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    fn classifier(filters: &[(u32, &[&str], usize)]) -> Classifier {
        let parsed: Vec<(u32, Vec<Match>, usize)> = filters
            .iter()
            .map(|(p, ms, n)| (*p, ms.iter().map(|m| m.parse().unwrap()).collect(), *n))
            .collect();
        Classifier::new(
            parsed
                .iter()
                .map(|(p, m, n)| (*p, m.as_slice(), *n))
                .collect(),
        )
    }

    #[test]
    fn first_match_by_priority_all_matches_anded() {
        let c = classifier(&[
            (20, &["ip protocol tcp"], 2),
            (10, &["ip tos 0x30 0xff", "ip dport 80"], 1),
            (30, &["ip src 10.1.0.0/16"], 3),
        ]);
        let meta = FlowMeta::default();
        let f = frame_v4(0x30, 6, [10, 1, 0, 2], [10, 2, 0, 11], 40000, 80);
        let h = header(&f).unwrap();
        assert_eq!(c.classify(&f, &h, &meta), Some((0, 1)));
        let f = frame_v4(0x30, 6, [10, 1, 0, 2], [10, 2, 0, 11], 40000, 81);
        assert_eq!(c.classify(&f, &header(&f).unwrap(), &meta), Some((1, 2)));
        let f = frame_v4(0, 17, [10, 1, 0, 2], [10, 2, 0, 11], 1, 2);
        assert_eq!(c.classify(&f, &header(&f).unwrap(), &meta), Some((2, 3)));
        let f = frame_v4(0, 17, [10, 3, 0, 2], [10, 2, 0, 11], 1, 2);
        assert_eq!(c.classify(&f, &header(&f).unwrap(), &meta), None);
    }

    #[test]
    fn real_and_service_match_from_the_connection() {
        let c = classifier(&[
            (1, &["real 10.2.0.11"], 1),
            (2, &["service tcp:10.9.0.10:80"], 2),
        ]);
        let vip = (Addr::v4_bytes([10, 9, 0, 10]), 80);
        let rs1 = (Addr::v4_bytes([10, 2, 0, 11]), 80);
        let rs2 = (Addr::v4_bytes([10, 2, 0, 12]), 80);
        // A reply from rs1 on its way to the client: its header names the
        // VIP, the connection names the real server.
        let f = frame_v4(0, 6, [10, 9, 0, 10], [10, 1, 0, 2], 80, 40000);
        let h = header(&f).unwrap();
        let meta = |real| FlowMeta {
            proto: 6,
            vip: Some(vip),
            real: Some(real),
            class: 0,
            ingress: 0,
        };
        assert_eq!(c.classify(&f, &h, &meta(rs1)), Some((0, 1)));
        assert_eq!(c.classify(&f, &h, &meta(rs2)), Some((1, 2)));
        assert_eq!(c.classify(&f, &h, &FlowMeta::default()), None);
    }

    #[test]
    fn u32_reads_relative_to_the_ip_header() {
        // protocol byte (offset 9) of the word at 8: TTL, proto, checksum
        let c = classifier(&[(1, &["u32 0x00110000 0x00ff0000 at 8"], 1)]);
        let meta = FlowMeta::default();
        let f = frame_v4(0, 17, [1, 1, 1, 1], [2, 2, 2, 2], 1, 2);
        assert_eq!(c.classify(&f, &header(&f).unwrap(), &meta), Some((0, 1)));
        let f = frame_v4(0, 6, [1, 1, 1, 1], [2, 2, 2, 2], 1, 2);
        assert_eq!(c.classify(&f, &header(&f).unwrap(), &meta), None);
        // beyond the frame: no match, no panic
        let c = classifier(&[(1, &["u32 0 0 at 1500"], 1)]);
        assert_eq!(c.classify(&f, &header(&f).unwrap(), &meta), None);
    }

    #[test]
    fn header_survives_garbage_and_hashes_flows() {
        for len in 0..80 {
            let f = vec![0x45u8; len];
            let _ = header(&f);
            let f = vec![0x6fu8; len];
            let _ = header(&f);
        }
        let a = frame_v4(0, 6, [10, 1, 0, 2], [10, 2, 0, 11], 40000, 80);
        let b = frame_v4(0, 6, [10, 1, 0, 2], [10, 2, 0, 11], 40001, 80);
        assert_ne!(header(&a).unwrap().flow, header(&b).unwrap().flow);
        let mut v6 = vec![0u8; 14 + 40 + 8];
        v6[14] = 0x6b; // traffic class 0xb8 (EF)
        v6[15] = 0x80;
        v6[20] = 17;
        let h = header(&v6).unwrap();
        assert_eq!((h.tos, h.proto), (0xb8, 17));
    }
}
