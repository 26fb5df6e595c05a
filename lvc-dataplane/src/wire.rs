//! The wire: header lengths, field offsets, protocol numbers and the few
//! byte accessors that parse, rewrite, icmp, fragmentation and the shaping
//! classifier share — each defined once, here (beside `addr`, since both
//! `pipeline` and `shape` read headers).
//!
//! Offsets in [`ipv4`] and [`ipv6`] are relative to the start of the IP
//! header (so they serve an outer header at [`ETH_HLEN`] and a quoted one
//! inside an ICMP error alike). The views ([`Ip`]) read and write fields of
//! an IP header wherever it sits, with the family decided once.

use crate::addr::Addr;

/// Ethernet header (no VLAN tag).
pub const ETH_HLEN: usize = 14;
/// Offset of the EtherType.
pub const ETH_TYPE: usize = 12;

/// IPv4 header fields.
pub mod ipv4 {
    /// Minimum (option-less) header.
    pub const HLEN: usize = 20;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const ID: usize = 4;
    /// Flags (3 bits) and fragment offset (13 bits, in 8-byte units).
    pub const FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    /// "Don't fragment", in the byte at [`FRAG`].
    pub const DF: u8 = 0x40;
    /// "More fragments", in the byte at [`FRAG`].
    pub const MF: u8 = 0x20;
}

/// IPv6 header fields.
pub mod ipv6 {
    /// The fixed header.
    pub const HLEN: usize = 40;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT: usize = 6;
    pub const HOPS: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
    /// The fragment extension header.
    pub const FRAG_HLEN: usize = 8;
    /// The smallest MTU of an IPv6 link (RFC 8200).
    pub const MIN_MTU: usize = 1280;
}

/// IP protocol / next-header numbers.
pub const PROTO_ICMP: u8 = 1;
/// IP in IP (the `tun` method's encapsulation).
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// The IPv6 fragment header.
pub const IPV6_FRAGMENT: u8 = 44;
pub const PROTO_ICMPV6: u8 = 58;

/// TCP flags (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// Offset of the flags byte in the TCP header.
pub const TCP_FLAGS: usize = 13;

/// Offset of the checksum in a TCP or UDP header.
#[inline]
pub fn l4_csum_offset(proto: u8) -> usize {
    if proto == PROTO_UDP { 6 } else { 16 }
}

/// ICMP types and codes (RFC 792).
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;
/// Destination unreachable, code "fragmentation needed and DF set".
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// Destination unreachable codes: host unreachable, communication
/// administratively prohibited (RFC 1812).
pub const ICMP_HOST_UNREACH: u8 = 1;
pub const ICMP_PKT_FILTERED: u8 = 13;
/// ICMP header (type, code, checksum, 4 more bytes).
pub const ICMP_HLEN: usize = 8;

/// ICMPv6 error types (RFC 4443): destination unreachable, packet too big,
/// time exceeded, parameter problem.
pub const ICMP6_DEST_UNREACH: u8 = 1;
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_PARAM_PROBLEM: u8 = 4;
/// ICMPv6 destination unreachable codes: no route, administratively
/// prohibited.
pub const ICMP6_NOROUTE: u8 = 0;
pub const ICMP6_ADM_PROHIBITED: u8 = 1;

/// Length of the outer header the `tun` method adds.
pub const IPIP_HLEN: usize = ipv4::HLEN;

/// The big-endian u16 at `at`.
#[inline]
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian u32 at `at`.
#[inline]
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Writes `v` big-endian at `at`.
#[inline]
pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// True if the IP header starting at `ip` is IPv6 (by its version).
#[inline]
pub fn is_v6_at(b: &[u8], ip: usize) -> bool {
    b[ip] >> 4 == 6
}

/// True if the frame's IP packet is IPv6.
#[inline]
pub fn is_v6(frame: &[u8]) -> bool {
    is_v6_at(frame, ETH_HLEN)
}

/// Length of the frame's IP packet, from its header (IPv4 or IPv6).
#[inline]
pub fn ip_len(frame: &[u8]) -> usize {
    Ip::of(frame, ETH_HLEN).len()
}

/// A view of an IP header (either family) at offset `at` of a buffer: the
/// family is read once, fields are then read and written by name.
#[derive(Debug)]
pub struct Ip<T> {
    buf: T,
    at: usize,
    v6: bool,
}

impl<T: AsRef<[u8]>> Ip<T> {
    /// The IP header at `at` of `buf`. Callers have checked that the
    /// header is there (parse did, for the frames the pipeline holds).
    #[inline]
    pub fn of(buf: T, at: usize) -> Self {
        let v6 = is_v6_at(buf.as_ref(), at);
        Self { buf, at, v6 }
    }

    /// IPv6 (else IPv4).
    #[inline]
    pub fn v6(&self) -> bool {
        self.v6
    }

    /// Offset and width of the source address.
    #[inline]
    pub fn src_field(&self) -> (usize, usize) {
        if self.v6 {
            (self.at + ipv6::SRC, 16)
        } else {
            (self.at + ipv4::SRC, 4)
        }
    }

    /// Offset and width of the destination address.
    #[inline]
    pub fn dst_field(&self) -> (usize, usize) {
        if self.v6 {
            (self.at + ipv6::DST, 16)
        } else {
            (self.at + ipv4::DST, 4)
        }
    }

    fn addr_at(&self, (at, width): (usize, usize)) -> Addr {
        let b = self.buf.as_ref();
        if width == 4 {
            Addr::v4_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[at..at + 16]);
            Addr(a)
        }
    }

    #[inline]
    pub fn src(&self) -> Addr {
        self.addr_at(self.src_field())
    }

    #[inline]
    pub fn dst(&self) -> Addr {
        self.addr_at(self.dst_field())
    }

    /// Offset of the TTL (IPv4) or hop limit (IPv6).
    #[inline]
    pub fn hops_field(&self) -> usize {
        self.at + if self.v6 { ipv6::HOPS } else { ipv4::TTL }
    }

    /// The TTL or hop limit.
    #[inline]
    pub fn hops(&self) -> u8 {
        self.buf.as_ref()[self.hops_field()]
    }

    /// Length of the IPv4 header with its options (IPv6: the fixed
    /// header).
    #[inline]
    pub fn header_len(&self) -> usize {
        if self.v6 {
            ipv6::HLEN
        } else {
            usize::from(self.buf.as_ref()[self.at] & 0x0f) * 4
        }
    }

    /// The packet's length from its header (header + payload).
    #[inline]
    pub fn len(&self) -> usize {
        let b = self.buf.as_ref();
        if self.v6 {
            ipv6::HLEN + usize::from(be16(b, self.at + ipv6::PAYLOAD_LEN))
        } else {
            usize::from(be16(b, self.at + ipv4::TOTAL_LEN))
        }
    }

    /// True if the header says the packet is empty (never for a parsed
    /// packet).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// IPv4 with DF set. (IPv6 packets are never fragmented on the way:
    /// false, see [`Ip::may_fragment`].)
    #[inline]
    pub fn dont_fragment(&self) -> bool {
        !self.v6 && self.buf.as_ref()[self.at + ipv4::FRAG] & ipv4::DF != 0
    }

    /// True for an IPv4 packet with DF clear: a router may fragment it.
    #[inline]
    pub fn may_fragment(&self) -> bool {
        !self.v6 && !self.dont_fragment()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ip<T> {
    /// Writes `addr` over the field `(at, width)`, returning what was
    /// there (as 16 bytes; an IPv4 address in the last four).
    #[inline]
    pub fn replace_addr(&mut self, (at, width): (usize, usize), addr: Addr) -> [u8; 16] {
        let b = self.buf.as_mut();
        let mut old = [0u8; 16];
        old[16 - width..].copy_from_slice(&b[at..at + width]);
        b[at..at + width].copy_from_slice(&addr.0[16 - width..]);
        old
    }

    /// Sets the TTL or hop limit (the IPv4 checksum is the caller's).
    #[inline]
    pub fn set_hops(&mut self, hops: u8) {
        let at = self.hops_field();
        self.buf.as_mut()[at] = hops;
    }
}

/// A TCP or UDP header at `at` of `buf` (smoltcp's `Packet<T>` style):
/// ports, checksum and TCP flags by name instead of offsets. Callers have
/// checked that the header is there (parse did).
pub struct L4<T> {
    buf: T,
    at: usize,
    proto: u8,
}

impl<T: AsRef<[u8]>> L4<T> {
    #[inline]
    pub fn of(buf: T, at: usize, proto: u8) -> Self {
        Self { buf, at, proto }
    }

    /// Offset of the source port.
    #[inline]
    pub fn src_port_field(&self) -> usize {
        self.at
    }

    /// Offset of the destination port.
    #[inline]
    pub fn dst_port_field(&self) -> usize {
        self.at + 2
    }

    /// Offset of the checksum (TCP or UDP).
    #[inline]
    pub fn checksum_field(&self) -> usize {
        self.at + l4_csum_offset(self.proto)
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), self.src_port_field())
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), self.dst_port_field())
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), self.checksum_field())
    }

    /// TCP flags; 0 for UDP.
    #[inline]
    pub fn tcp_flags(&self) -> u8 {
        if self.proto == PROTO_TCP {
            self.buf.as_ref()[self.at + TCP_FLAGS]
        } else {
            0
        }
    }

    /// TCP: the sequence number.
    #[inline]
    pub fn tcp_seq(&self) -> u32 {
        let b = self.buf.as_ref();
        u32::from_be_bytes([
            b[self.at + 4],
            b[self.at + 5],
            b[self.at + 6],
            b[self.at + 7],
        ])
    }

    /// TCP: the header's length (data offset), in bytes.
    #[inline]
    pub fn tcp_header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[self.at + 12] >> 4) * 4
    }

    /// UDP: the length field (header + data).
    #[inline]
    pub fn udp_len(&self) -> u16 {
        be16(self.buf.as_ref(), self.at + 4)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> L4<T> {
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        let at = self.src_port_field();
        put16(self.buf.as_mut(), at, port);
    }

    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        let at = self.dst_port_field();
        put16(self.buf.as_mut(), at, port);
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        let at = self.checksum_field();
        put16(self.buf.as_mut(), at, c);
    }
}

/// An ICMP or ICMPv6 header at `at` of `buf`: type, code, checksum and
/// the four bytes after it (the MTU of "fragmentation needed" and
/// "packet too big").
pub struct Icmp<T> {
    buf: T,
    at: usize,
}

impl<T: AsRef<[u8]>> Icmp<T> {
    #[inline]
    pub fn of(buf: T, at: usize) -> Self {
        Self { buf, at }
    }

    #[inline]
    pub fn kind(&self) -> u8 {
        self.buf.as_ref()[self.at]
    }

    #[inline]
    pub fn code(&self) -> u8 {
        self.buf.as_ref()[self.at + 1]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), self.at + 2)
    }

    /// Offset of the message the header starts (for checksumming it).
    #[inline]
    pub fn start(&self) -> usize {
        self.at
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmp<T> {
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        let at = self.at + 2;
        put16(self.buf.as_mut(), at, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_header(src: [u8; 4], dst: [u8; 4], len: u16, ttl: u8, df: bool) -> Vec<u8> {
        let mut h = vec![0u8; ETH_HLEN + 20];
        h[ETH_HLEN] = 0x45;
        put16(&mut h, ETH_HLEN + ipv4::TOTAL_LEN, len);
        h[ETH_HLEN + ipv4::FRAG] = if df { ipv4::DF } else { 0 };
        h[ETH_HLEN + ipv4::TTL] = ttl;
        h[ETH_HLEN + ipv4::SRC..ETH_HLEN + ipv4::SRC + 4].copy_from_slice(&src);
        h[ETH_HLEN + ipv4::DST..ETH_HLEN + ipv4::DST + 4].copy_from_slice(&dst);
        h
    }

    fn v6_header(src: Addr, dst: Addr, payload: u16, hops: u8) -> Vec<u8> {
        let mut h = vec![0u8; ETH_HLEN + 40];
        h[ETH_HLEN] = 0x60;
        put16(&mut h, ETH_HLEN + ipv6::PAYLOAD_LEN, payload);
        h[ETH_HLEN + ipv6::HOPS] = hops;
        h[ETH_HLEN + ipv6::SRC..ETH_HLEN + ipv6::SRC + 16].copy_from_slice(&src.0);
        h[ETH_HLEN + ipv6::DST..ETH_HLEN + ipv6::DST + 16].copy_from_slice(&dst.0);
        h
    }

    /// A small deterministic generator (no dev-dependency needed).
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *seed >> 16
    }

    #[test]
    fn views_read_what_builders_wrote_both_families() {
        let mut seed = 7;
        for _ in 0..2000 {
            let r = lcg(&mut seed);
            let (src, dst) = ((r as u32).to_be_bytes(), ((r >> 20) as u32).to_be_bytes());
            let (len, ttl, df) = ((r >> 8) as u16, (r >> 40) as u8, r & 1 == 1);
            let f = v4_header(src, dst, len, ttl, df);
            let ip = Ip::of(&f[..], ETH_HLEN);
            assert!(!ip.v6());
            assert_eq!(ip.src(), Addr::v4_bytes(src));
            assert_eq!(ip.dst(), Addr::v4_bytes(dst));
            assert_eq!((ip.len(), ip.hops()), (usize::from(len), ttl));
            assert_eq!((ip.dont_fragment(), ip.may_fragment()), (df, !df));
            assert_eq!(ip.header_len(), 20);
            assert_eq!(ip_len(&f), usize::from(len));

            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&r.to_be_bytes());
            a[8..].copy_from_slice(&lcg(&mut seed).to_be_bytes());
            let (s6, d6) = (Addr(a), Addr(a.map(|x| x ^ 0x5a)));
            let f = v6_header(s6, d6, len, ttl);
            let ip = Ip::of(&f[..], ETH_HLEN);
            assert!(ip.v6() && is_v6(&f));
            assert_eq!((ip.src(), ip.dst()), (s6, d6));
            assert_eq!(ip.len(), 40 + usize::from(len));
            assert_eq!(ip.hops(), ttl);
            assert!(!ip.may_fragment() && !ip.dont_fragment());
        }
    }

    #[test]
    fn replace_addr_returns_the_old_and_touches_nothing_else() {
        let mut seed = 11;
        for _ in 0..1000 {
            let r = lcg(&mut seed);
            let mut f = v4_header([10, 0, 0, 1], [10, 0, 0, 2], 60, 64, true);
            let before = f.clone();
            let new = Addr::v4(r as u32);
            let mut ip = Ip::of(&mut f[..], ETH_HLEN);
            let field = if r & 1 == 0 {
                ip.src_field()
            } else {
                ip.dst_field()
            };
            let old = ip.replace_addr(field, new);
            assert_eq!(old[12..], before[field.0..field.0 + 4]);
            let ip = Ip::of(&f[..], ETH_HLEN);
            let got = if r & 1 == 0 { ip.src() } else { ip.dst() };
            assert_eq!(got, new);
            for (i, (a, b)) in f.iter().zip(&before).enumerate() {
                if !(field.0..field.0 + 4).contains(&i) {
                    assert_eq!(a, b, "byte {i}");
                }
            }
            let mut f6 = v6_header(Addr::v4(1), Addr::v4(2), 8, 3);
            let mut ip = Ip::of(&mut f6[..], ETH_HLEN);
            let d = ip.dst_field();
            let old = ip.replace_addr(d, new);
            assert_eq!(Addr(old), Addr::v4(2));
            ip.set_hops(2);
            let ip = Ip::of(&f6[..], ETH_HLEN);
            assert_eq!((ip.dst(), ip.hops()), (new, 2));
        }
    }

    #[test]
    fn accessors_round_trip() {
        let mut b = [0u8; 8];
        put16(&mut b, 3, 0xbeef);
        assert_eq!(be16(&b, 3), 0xbeef);
        assert_eq!(be32(&[1, 2, 3, 4], 0), 0x0102_0304);
        assert_eq!(l4_csum_offset(PROTO_UDP), 6);
        assert_eq!(l4_csum_offset(PROTO_TCP), 16);
    }

    /// The L4 view reads and writes exactly the fields it names, for TCP
    /// and UDP at any offset, and nothing else.
    #[test]
    fn l4_view_fields() {
        let mut seed = 3;
        for _ in 0..2000 {
            let r = lcg(&mut seed);
            let at = (r % 60) as usize;
            let proto = if r & 0x100 == 0 { PROTO_TCP } else { PROTO_UDP };
            let mut f: Vec<u8> = (0..at + 24).map(|_| lcg(&mut seed) as u8).collect();
            let before = f.clone();
            let l4 = L4::of(&f[..], at, proto);
            assert_eq!(l4.src_port(), be16(&before, at));
            assert_eq!(l4.dst_port(), be16(&before, at + 2));
            let csum_at = at + if proto == PROTO_UDP { 6 } else { 16 };
            assert_eq!(l4.checksum(), be16(&before, csum_at));
            let flags = if proto == PROTO_TCP {
                before[at + 13]
            } else {
                0
            };
            assert_eq!(l4.tcp_flags(), flags);
            let (sp, dp, c) = ((r >> 16) as u16, (r >> 32) as u16, (r >> 48) as u16);
            let mut l4 = L4::of(&mut f[..], at, proto);
            l4.set_src_port(sp);
            l4.set_dst_port(dp);
            l4.set_checksum(c);
            let l4 = L4::of(&f[..], at, proto);
            assert_eq!((l4.src_port(), l4.dst_port(), l4.checksum()), (sp, dp, c));
            for (i, (a, b)) in f.iter().zip(&before).enumerate() {
                let touched = (at..at + 4).contains(&i) || (csum_at..csum_at + 2).contains(&i);
                if !touched {
                    assert_eq!(a, b, "byte {i}");
                }
            }
        }
    }

    #[test]
    fn icmp_view_fields() {
        let mut seed = 5;
        for _ in 0..1000 {
            let r = lcg(&mut seed);
            let at = (r % 60) as usize;
            let mut f: Vec<u8> = (0..at + 8).map(|_| lcg(&mut seed) as u8).collect();
            let before = f.clone();
            let m = Icmp::of(&f[..], at);
            assert_eq!((m.kind(), m.code()), (before[at], before[at + 1]));
            assert_eq!(m.checksum(), be16(&before, at + 2));
            Icmp::of(&mut f[..], at).set_checksum(r as u16);
            assert_eq!(Icmp::of(&f[..], at).checksum(), r as u16);
            assert_eq!(f[..at + 2], before[..at + 2]);
            assert_eq!(f[at + 4..], before[at + 4..]);
        }
    }
}
