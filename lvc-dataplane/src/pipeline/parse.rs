//! Parse: a received frame → a small `Copy` [`Packet`] summary.
//!
//! Everything after this stage works on the summary (flow key, offsets,
//! TCP flags), never re-parses. Frames come from reused UMEM buffers, so every
//! length is checked against the frame actually received, not trusted from a
//! header (etherparse's slices do the header-level checks).

pub use crate::addr::Addr;
use crate::stats::Drop;
use crate::wire::{
    ETH_HLEN, ICMP_DEST_UNREACH, ICMP_HLEN, ICMP_PARAM_PROBLEM, ICMP_TIME_EXCEEDED,
    ICMP6_DEST_UNREACH, ICMP6_PARAM_PROBLEM, IPV6_FRAGMENT, L4, PROTO_ICMPV6, TCP_FIN, TCP_SYN,
    be16, ipv6,
};
use etherparse::{EtherType, Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice, Ipv6HeaderSlice};

/// The flow 5-tuple of one direction; ports in host order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl FlowKey {
    /// The same flow seen from the other side.
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

/// What later stages need to know about a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The flow the frame belongs to. For an ICMP error, the flow of the
    /// packet it quotes, reversed: the direction the error travels in.
    pub key: FlowKey,
    /// Offset of the L4 header in the frame.
    pub l4_off: usize,
    /// Length of the IP datagram (header + payload), from the IP header.
    pub ip_len: usize,
    /// TCP flags, 0 for UDP.
    pub tcp_flags: u8,
    /// TCP: the sequence numbers the segment covers (0s for UDP).
    pub seg: Seg,
    /// Set for ICMP errors about a TCP/UDP flow.
    pub icmp: Option<IcmpError>,
    /// Set for fragments (IPv4, or IPv6 with a fragment header).
    pub frag: Option<Fragment>,
    /// IPv6 (else IPv4).
    pub v6: bool,
}

/// A TCP segment's place in its stream: its first sequence number and the
/// one after it (SYN and FIN count one each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seg {
    pub seq: u32,
    pub end: u32,
}

/// A fragment: its datagram's id (16 bits in IPv4, 32 in IPv6), and
/// whether it is the first one (the one with the L4 header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub id: u32,
    pub first: bool,
}

/// An ICMP error (destination unreachable, time exceeded, parameter
/// problem; for ICMPv6 also packet too big) and where its quoted packet is.
/// `kind` is the ICMP or ICMPv6 type (the packet's `v6` says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError {
    pub kind: u8,
    pub code: u8,
    /// Offset of the quoted IP header.
    pub inner_ip: usize,
    /// Offset of the quoted L4 header.
    pub inner_l4: usize,
    /// Quoted bytes of L4 header available (≥ 8).
    pub inner_l4_len: usize,
}

/// Parses an Ethernet/IPv4-or-IPv6/TCP-or-UDP frame.
pub fn parse(frame: &[u8]) -> Result<Packet, Drop> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Drop::Malformed)?;
    if eth.ether_type() == EtherType::IPV6 {
        return parse_v6(frame);
    }
    if eth.ether_type() != EtherType::IPV4 {
        return Err(Drop::NotIp);
    }
    let l3 = &frame[ETH_HLEN..];
    let ip = Ipv4HeaderSlice::from_slice(l3).map_err(|_| Drop::Malformed)?;
    let ip_len = usize::from(ip.total_len());
    let ihl = ip.slice().len();
    if ip_len > l3.len() || ip_len < ihl {
        return Err(Drop::Malformed);
    }
    let proto = ip.protocol();
    let frag = ip.is_fragmenting_payload().then(|| Fragment {
        id: u32::from(ip.identification()),
        first: ip.fragments_offset().value() == 0,
    });
    if let Some(fr) = frag {
        if !(proto == IpNumber::TCP || proto == IpNumber::UDP) {
            return Err(Drop::Fragment);
        }
        if !fr.first {
            let (src, dst) = (ip.source(), ip.destination());
            let key = (Addr::v4_bytes(src), Addr::v4_bytes(dst), proto.0);
            return Ok(later_fragment(key, ETH_HLEN + ihl, ip_len, fr, false));
        }
    }
    let l4 = &l3[ihl..ip_len];
    if proto == IpNumber::ICMP {
        return parse_icmp_error(frame, false, ETH_HLEN + ihl, ip_len);
    }
    let (sport, dport, tcp_flags, seg) = l4_ports(l4, proto, frag.is_some())?;
    Ok(Packet {
        key: FlowKey {
            src: Addr::v4_bytes(ip.source()),
            dst: Addr::v4_bytes(ip.destination()),
            sport,
            dport,
            proto: proto.0,
        },
        l4_off: ETH_HLEN + ihl,
        ip_len,
        tcp_flags,
        seg,
        icmp: None,
        frag,
        v6: false,
    })
}

/// An IPv6 frame whose next header is TCP or UDP, a fragment header
/// followed by TCP or UDP, or an ICMPv6 error. Other extension headers and
/// the rest of ICMPv6 (neighbour discovery) are not lvc's: the XDP program
/// leaves them to the kernel, and here they are counted as `protocol`.
fn parse_v6(frame: &[u8]) -> Result<Packet, Drop> {
    let l3 = &frame[ETH_HLEN..];
    let ip = Ipv6HeaderSlice::from_slice(l3).map_err(|_| Drop::Malformed)?;
    let ip_len = ipv6::HLEN + usize::from(ip.payload_length());
    if ip_len > l3.len() {
        return Err(Drop::Malformed);
    }
    let (src, dst) = (ip.source(), ip.destination());
    if Addr::is_mapped(&src) || Addr::is_mapped(&dst) {
        return Err(Drop::Malformed);
    }
    let mut proto = ip.next_header();
    let mut l4_off = ETH_HLEN + ipv6::HLEN;
    let mut frag = None;
    if proto.0 == PROTO_ICMPV6 {
        return parse_icmp_error(frame, true, ETH_HLEN + ipv6::HLEN, ip_len);
    }
    if proto.0 == IPV6_FRAGMENT {
        let h = l3
            .get(ipv6::HLEN..ipv6::HLEN + ipv6::FRAG_HLEN)
            .filter(|_| ip_len >= ipv6::HLEN + ipv6::FRAG_HLEN)
            .ok_or(Drop::Malformed)?;
        proto = IpNumber(h[0]);
        let off_flags = be16(h, 2);
        let first = off_flags & 0xfff8 == 0;
        // An atomic fragment (offset 0, no more: RFC 6946) is the whole
        // datagram: nothing to remember for later fragments.
        if off_flags & 0xfff9 != 0 {
            frag = Some(Fragment {
                id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                first,
            });
        }
        l4_off += ipv6::FRAG_HLEN;
        if !(proto == IpNumber::TCP || proto == IpNumber::UDP) {
            return Err(Drop::Protocol);
        }
        if let Some(fr) = frag.filter(|f| !f.first) {
            let key = (Addr(src), Addr(dst), proto.0);
            return Ok(later_fragment(key, l4_off, ip_len, fr, true));
        }
    }
    if !(proto == IpNumber::TCP || proto == IpNumber::UDP) {
        return Err(Drop::Protocol);
    }
    let l4 = &frame[l4_off..ETH_HLEN + ip_len];
    let (sport, dport, tcp_flags, seg) = l4_ports(l4, proto, frag.is_some())?;
    Ok(Packet {
        key: FlowKey {
            src: Addr(src),
            dst: Addr(dst),
            sport,
            dport,
            proto: proto.0,
        },
        l4_off,
        ip_len,
        tcp_flags,
        seg,
        icmp: None,
        frag,
        v6: true,
    })
}

/// A fragment after the first: no L4 header, so no ports — the datagram's
/// first fragment decided where the rest goes. `key` is (src, dst, proto).
fn later_fragment(
    (src, dst, proto): (Addr, Addr, u8),
    l4_off: usize,
    ip_len: usize,
    frag: Fragment,
    v6: bool,
) -> Packet {
    Packet {
        key: FlowKey {
            src,
            dst,
            sport: 0,
            dport: 0,
            proto,
        },
        l4_off,
        ip_len,
        tcp_flags: 0,
        seg: Seg::default(),
        icmp: None,
        frag: Some(frag),
        v6,
    }
}

/// An ICMP or ICMPv6 error (`v6`) at `l4_off` quoting a TCP or UDP packet:
/// the quoted IP header (IPv6: its fixed header directly followed by the
/// L4 header) and at least 8 bytes of its L4 header. The same rules for
/// both families: a type that is not an error, or a quoted packet that is
/// not TCP/UDP, is `Protocol`; anything truncated is `Malformed`.
fn parse_icmp_error(frame: &[u8], v6: bool, l4_off: usize, ip_len: usize) -> Result<Packet, Drop> {
    let end = ETH_HLEN + ip_len;
    let icmp = &frame[l4_off..end];
    if icmp.len() < ICMP_HLEN {
        return Err(Drop::Malformed);
    }
    let (kind, code) = (icmp[0], icmp[1]);
    let error = if v6 {
        (ICMP6_DEST_UNREACH..=ICMP6_PARAM_PROBLEM).contains(&kind)
    } else {
        matches!(
            kind,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
        )
    };
    if !error {
        return Err(Drop::Protocol);
    }
    let inner_ip = l4_off + ICMP_HLEN;
    let quoted = &frame[inner_ip..end];
    let (src, dst, proto, inner_l4) = if v6 {
        let h = Ipv6HeaderSlice::from_slice(quoted).map_err(|_| Drop::Malformed)?;
        let (src, dst) = (Addr(h.source()), Addr(h.destination()));
        (src, dst, h.next_header(), inner_ip + ipv6::HLEN)
    } else {
        let h = Ipv4HeaderSlice::from_slice(quoted).map_err(|_| Drop::Malformed)?;
        let (src, dst) = (Addr::v4_bytes(h.source()), Addr::v4_bytes(h.destination()));
        (src, dst, h.protocol(), inner_ip + h.slice().len())
    };
    if !(proto == IpNumber::TCP || proto == IpNumber::UDP) {
        return Err(Drop::Protocol);
    }
    let inner_l4_len = end.saturating_sub(inner_l4);
    if inner_l4_len < 8 {
        return Err(Drop::Malformed);
    }
    let q = &frame[inner_l4..];
    // The quoted packet went the other way: reverse it.
    Ok(Packet {
        key: FlowKey {
            src: dst,
            dst: src,
            sport: be16(q, 2),
            dport: be16(q, 0),
            proto: proto.0,
        },
        l4_off,
        ip_len,
        tcp_flags: 0,
        seg: Seg::default(),
        frag: None,
        v6,
        icmp: Some(IcmpError {
            kind,
            code,
            inner_ip,
            inner_l4,
            inner_l4_len,
        }),
    })
}

/// Ports, TCP flags and TCP segment of a TCP or UDP header (`l4`: the IP
/// payload), its lengths checked.
#[inline]
fn l4_ports(l4: &[u8], proto: IpNumber, fragment: bool) -> Result<(u16, u16, u8, Seg), Drop> {
    let h = L4::of(l4, 0, proto.0);
    let mut seg = Seg::default();
    match proto {
        IpNumber::TCP => {
            if l4.len() < 20 {
                return Err(Drop::Malformed);
            }
            let data_off = h.tcp_header_len();
            if data_off < 20 || data_off > l4.len() {
                return Err(Drop::Malformed);
            }
            let flags = h.tcp_flags();
            let len = (l4.len() - data_off) as u32
                + u32::from(flags & TCP_SYN != 0)
                + u32::from(flags & TCP_FIN != 0);
            seg.seq = h.tcp_seq();
            seg.end = seg.seq.wrapping_add(len);
        }
        IpNumber::UDP => {
            // A first fragment carries only part of the datagram its UDP
            // length describes.
            if l4.len() < 8 || h.udp_len() < 8 {
                return Err(Drop::Malformed);
            }
            if !fragment && usize::from(h.udp_len()) > l4.len() {
                return Err(Drop::Malformed);
            }
        }
        _ => return Err(Drop::Protocol),
    }
    Ok((h.src_port(), h.dst_port(), h.tcp_flags(), seg))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Frame builders shared by the pipeline's unit tests.
    use crate::pipeline::checksum::checksum;

    /// Builds an Ethernet/IPv4/TCP or UDP frame with valid checksums.
    pub fn frame(
        proto: u8,
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let l4_len = if proto == 6 { 20 } else { 8 };
        let ip_len = 20 + l4_len + payload.len();
        let mut f = vec![0u8; 14 + ip_len];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let l4 = &mut f[34..];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        if proto == 6 {
            l4[12] = 5 << 4;
            l4[13] = flags;
            l4[14..16].copy_from_slice(&1024u16.to_be_bytes());
        } else {
            l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        l4[l4_len..].copy_from_slice(payload);
        let c = l4_checksum(&f);
        let at = 34 + if proto == 6 { 16 } else { 6 };
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The L4 checksum a receiver computes over pseudo-header + segment
    /// (with the checksum field zeroed).
    pub fn l4_checksum(f: &[u8]) -> u16 {
        let ip = &f[14..34];
        let ip_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let proto = ip[9];
        let mut seg = f[34..14 + ip_len].to_vec();
        let at = if proto == 6 { 16 } else { 6 };
        seg[at] = 0;
        seg[at + 1] = 0;
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&((ip_len - 20) as u16).to_be_bytes());
        pseudo.extend_from_slice(&seg);
        let c = checksum(&pseudo);
        if proto == 17 && c == 0 { 0xffff } else { c }
    }

    /// An Ethernet/IPv4/ICMP error quoting `quoted` (an IP header + 8 bytes).
    pub fn icmp_error(kind: u8, code: u8, src: [u8; 4], dst: [u8; 4], quoted: &[u8]) -> Vec<u8> {
        let ip_len = 20 + 8 + quoted.len();
        let mut f = vec![0u8; 14 + ip_len];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f[34] = kind;
        f[35] = code;
        f[42..].copy_from_slice(quoted);
        let c = checksum(&f[34..]);
        f[36..38].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// An address from its text form.
    pub fn a(s: &str) -> crate::addr::Addr {
        s.parse::<std::net::IpAddr>().unwrap().into()
    }

    /// An Ethernet/IPv6/TCP-or-UDP frame with a valid L4 checksum.
    pub fn frame6(
        proto: u8,
        src: crate::addr::Addr,
        dst: crate::addr::Addr,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let l4 = if proto == 6 { 20 } else { 8 };
        let mut f = vec![0u8; 14 + 40 + l4 + payload.len()];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[18..20].copy_from_slice(&((l4 + payload.len()) as u16).to_be_bytes());
        f[20] = proto;
        f[21] = 64;
        f[22..38].copy_from_slice(&src.0);
        f[38..54].copy_from_slice(&dst.0);
        f[54..56].copy_from_slice(&sport.to_be_bytes());
        f[56..58].copy_from_slice(&dport.to_be_bytes());
        if proto == 6 {
            f[66] = 5 << 4;
            f[67] = crate::wire::TCP_SYN;
        } else {
            f[58..60].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        f[54 + l4..].copy_from_slice(payload);
        let c = l4_checksum6(&f);
        let at = 54 + if proto == 6 { 16 } else { 6 };
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The L4 checksum of an unfragmented IPv6 frame (field zeroed).
    pub fn l4_checksum6(f: &[u8]) -> u16 {
        let proto = f[20];
        let mut seg = f[54..].to_vec();
        let at = if proto == 6 { 16 } else { 6 };
        seg[at] = 0;
        seg[at + 1] = 0;
        let mut pseudo = f[22..54].to_vec();
        pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
        pseudo.extend_from_slice(&seg);
        let c = checksum(&pseudo);
        if proto == 17 && c == 0 { 0xffff } else { c }
    }

    /// Splits an unfragmented IPv6 frame into two fragments, the first
    /// carrying `first` bytes (a multiple of 8) of the L4 segment.
    pub fn split6(f: &[u8], first: usize, id: u32) -> (Vec<u8>, Vec<u8>) {
        let seg = &f[54..];
        let frag = |part: &[u8], off: usize, more: bool| {
            let mut g = f[..54].to_vec();
            g[18..20].copy_from_slice(&((8 + part.len()) as u16).to_be_bytes());
            g[20] = 44;
            g.extend_from_slice(&[f[20], 0]);
            g.extend_from_slice(&((off as u16) | u16::from(more)).to_be_bytes());
            g.extend_from_slice(&id.to_be_bytes());
            g.extend_from_slice(part);
            g
        };
        (
            frag(&seg[..first], 0, true),
            frag(&seg[first..], first, false),
        )
    }

    /// Puts two fragments from [`split6`] back together.
    pub fn reassemble6(first: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut f = first[..54].to_vec();
        f[20] = first[54];
        f.extend_from_slice(&first[62..]);
        f.extend_from_slice(&rest[62..]);
        let n = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&n.to_be_bytes());
        f
    }

    /// True if IP and L4 checksums of `f` are valid.
    pub fn checksums_ok(f: &[u8]) -> bool {
        let ip_ok = checksum(&f[14..34]) == 0;
        let at = 34 + if f[23] == 6 { 16 } else { 6 };
        let stored = u16::from_be_bytes([f[at], f[at + 1]]);
        ip_ok && stored == l4_checksum(f)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::frame;
    use super::*;

    #[test]
    fn parses_tcp_and_udp() {
        let f = frame(6, [10, 0, 0, 1], [10, 0, 0, 10], 40000, 80, TCP_SYN, b"");
        let p = parse(&f).unwrap();
        assert_eq!(p.key.sport, 40000);
        assert_eq!(p.key.dport, 80);
        assert_eq!(p.key.dst, Addr::v4(0x0a00_000a));
        assert_eq!(p.tcp_flags, TCP_SYN);
        assert_eq!(p.l4_off, 34);
        let f = frame(17, [10, 0, 0, 1], [10, 0, 0, 10], 5353, 53, 0, b"hello");
        let p = parse(&f).unwrap();
        assert_eq!((p.key.proto, p.ip_len), (17, 33));
    }

    #[test]
    fn every_truncation_is_rejected_without_panic() {
        for proto in [6, 17] {
            let f = frame(proto, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2, 0, b"xyz");
            for n in 0..f.len() {
                assert!(parse(&f[..n]).is_err(), "proto {proto} len {n}");
            }
            assert!(parse(&f).is_ok());
        }
    }

    #[test]
    fn rejects_lies_and_others() {
        let mut f = frame(17, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2, 0, b"xyz");
        f[14 + 2..14 + 4].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(parse(&f), Err(Drop::Malformed));
        for short in [0u16, 8, 19, 20, 27] {
            let mut f = frame(17, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2, 0, b"xyz");
            f[14 + 2..14 + 4].copy_from_slice(&short.to_be_bytes());
            assert_eq!(parse(&f), Err(Drop::Malformed), "total length {short}");
        }
        let mut f = frame(17, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2, 0, b"xyz");
        f[12] = 0x88;
        f[13] = 0x06;
        assert_eq!(parse(&f), Err(Drop::NotIp));
        let mut f = frame(17, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2, 0, b"xyz");
        f[14 + 6] = 0x20; // MF, offset 0: a first fragment
        f[14 + 4..14 + 6].copy_from_slice(&77u16.to_be_bytes());
        f[34 + 4..34 + 6].copy_from_slice(&3000u16.to_be_bytes());
        let p = parse(&f).unwrap();
        assert_eq!(
            p.frag,
            Some(Fragment {
                id: 77,
                first: true
            })
        );
        assert_eq!((p.key.sport, p.key.dport), (1, 2));
        f[14 + 7] = 0x10; // a later fragment: no ports
        let p = parse(&f).unwrap();
        assert_eq!(
            p.frag,
            Some(Fragment {
                id: 77,
                first: false
            })
        );
        assert_eq!(
            (p.key.sport, p.key.dport, p.key.dst),
            (0, 0, Addr::v4(0x0506_0708))
        );
        let mut f = frame(17, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2, 0, b"xyz");
        f[14 + 9] = 2;
        assert_eq!(parse(&f), Err(Drop::Protocol));
    }

    #[test]
    fn icmp_errors_name_the_quoted_flow_reversed() {
        let quoted = frame(6, [10, 2, 0, 11], [10, 1, 0, 2], 80, 40000, TCP_SYN, b"");
        let err = fixtures::icmp_error(3, 3, [10, 2, 0, 11], [10, 1, 0, 2], &quoted[14..14 + 28]);
        let p = parse(&err).unwrap();
        let e = p.icmp.unwrap();
        assert_eq!((e.kind, e.code, e.inner_ip, e.inner_l4), (3, 3, 42, 62));
        assert_eq!(
            p.key,
            FlowKey {
                src: Addr::v4(0x0a01_0002),
                dst: Addr::v4(0x0a02_000b),
                sport: 40000,
                dport: 80,
                proto: 6
            }
        );
        // Echo requests and truncated quotes are not errors about a flow.
        let mut echo = err.clone();
        echo[34] = 8;
        assert_eq!(parse(&echo), Err(Drop::Protocol));
        for n in 14..err.len() {
            let mut t = err[..n].to_vec();
            let ip_len = (n - 14) as u16;
            if n >= 18 {
                t[16..18].copy_from_slice(&ip_len.to_be_bytes());
            }
            let _ = parse(&t);
        }
        let mut short = err.clone();
        short.truncate(err.len() - 1);
        let n = (short.len() - 14) as u16;
        short[16..18].copy_from_slice(&n.to_be_bytes());
        assert_eq!(parse(&short), Err(Drop::Malformed));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300 {
            let mut buf = vec![0u8; len];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if len > 14 {
                buf[12] = 8;
                buf[13] = 0;
                buf[14] = 0x45;
            }
            let _ = parse(&buf);
        }
    }

    #[test]
    fn ipv6_tcp_udp_parse_and_the_rest_is_refused() {
        let mut f = vec![0u8; 14 + 40 + 20];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[18..20].copy_from_slice(&20u16.to_be_bytes());
        f[20] = 6;
        f[21] = 64;
        f[22..38].copy_from_slice(&"fd00:1::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        f[38..54].copy_from_slice(&"fd00:9::10".parse::<std::net::Ipv6Addr>().unwrap().octets());
        f[54..56].copy_from_slice(&40000u16.to_be_bytes());
        f[56..58].copy_from_slice(&80u16.to_be_bytes());
        f[66] = 5 << 4;
        f[67] = TCP_SYN;
        let p = parse(&f).unwrap();
        assert!(p.v6);
        assert_eq!(
            (p.key.sport, p.key.dport, p.tcp_flags),
            (40000, 80, TCP_SYN)
        );
        assert_eq!((p.l4_off, p.ip_len), (54, 60));
        assert_eq!(p.key.dst.to_string(), "fd00:9::10");
        for n in 0..f.len() {
            assert!(parse(&f[..n]).is_err(), "truncated to {n}");
        }
        // Other extension headers and ICMPv6 but errors are the kernel's
        // (here the TCP header's first byte reads as ICMPv6 type 156); a
        // fragment of neither TCP nor UDP is counted as a fragment.
        for next in [0u8, 43, 58, 60] {
            let mut g = f.clone();
            g[20] = next;
            assert_eq!(parse(&g), Err(Drop::Protocol), "next header {next}");
        }
        let mut g = f.clone();
        g[20] = 44;
        assert_eq!(parse(&g), Err(Drop::Protocol));
        // A payload length beyond the frame, or a mapped IPv4 address.
        let mut g = f.clone();
        g[18..20].copy_from_slice(&21u16.to_be_bytes());
        assert_eq!(parse(&g), Err(Drop::Malformed));
        let mut g = f.clone();
        g[22..38].copy_from_slice(&Addr::v4(0x0a00_0001).0);
        assert_eq!(parse(&g), Err(Drop::Malformed));
    }

    #[test]
    fn ipv6_fragments_parse_first_and_later() {
        use fixtures::{a, frame6, split6};
        let whole = frame6(17, a("fd00:1::2"), a("fd00:9::10"), 5000, 53, &[7u8; 2000]);
        let (first, rest) = split6(&whole, 1232, 0x0102_0304);
        let p = parse(&first).unwrap();
        assert!(p.v6);
        assert_eq!(
            p.frag,
            Some(Fragment {
                id: 0x0102_0304,
                first: true
            })
        );
        assert_eq!((p.key.sport, p.key.dport, p.key.proto), (5000, 53, 17));
        assert_eq!((p.l4_off, p.ip_len), (62, 40 + 8 + 1232));
        let q = parse(&rest).unwrap();
        assert_eq!(
            q.frag,
            Some(Fragment {
                id: 0x0102_0304,
                first: false
            })
        );
        assert_eq!((q.key.sport, q.key.dport, q.key.proto), (0, 0, 17));
        assert_eq!(q.key.dst, a("fd00:9::10"));
        // Truncated anywhere: an error, never a panic.
        for g in [&first, &rest] {
            for n in 0..g.len() {
                let mut t = g[..n].to_vec();
                if n >= 20 {
                    let pl = n.saturating_sub(54) as u16;
                    t[18..20].copy_from_slice(&pl.to_be_bytes());
                }
                let _ = parse(&t);
            }
        }
        let mut t = first[..58].to_vec();
        t[18..20].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(parse(&t), Err(Drop::Malformed), "half a fragment header");
        // An atomic fragment (offset 0, M clear) is a whole datagram.
        let (mut atomic, _) = split6(&whole, 0, 9);
        atomic.truncate(62);
        atomic.extend_from_slice(&whole[54..]);
        let pl = (atomic.len() - 54) as u16;
        atomic[18..20].copy_from_slice(&pl.to_be_bytes());
        atomic[56..58].copy_from_slice(&0u16.to_be_bytes());
        let p = parse(&atomic).unwrap();
        assert_eq!((p.frag, p.l4_off, p.key.dport), (None, 62, 53));
    }

    #[test]
    fn icmpv6_errors_name_the_quoted_flow_reversed() {
        use fixtures::{a, frame6};
        // A reply VIP6:80 → client, quoted in a "packet too big" by a router.
        let quoted = frame6(6, a("fd00:9::10"), a("fd00:1::2"), 80, 40000, &[1u8; 100]);
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[18..20].copy_from_slice(&((8 + quoted.len() - 14) as u16).to_be_bytes());
        f[20] = PROTO_ICMPV6;
        f[21] = 64;
        f[22..38].copy_from_slice(&a("fd00:1::fe").0);
        f[38..54].copy_from_slice(&a("fd00:9::10").0);
        f[54] = 2;
        f.extend_from_slice(&quoted[14..]);
        let p = parse(&f).unwrap();
        let e = p.icmp.unwrap();
        assert!(p.v6);
        assert_eq!((e.kind, e.inner_ip, e.inner_l4), (2, 62, 102));
        assert_eq!(
            p.key,
            FlowKey {
                src: a("fd00:1::2"),
                dst: a("fd00:9::10"),
                sport: 40000,
                dport: 80,
                proto: 6
            }
        );
        // Neighbour discovery, echo and MLD are not errors about a flow.
        for kind in [128u8, 129, 133, 134, 135, 136, 137, 143, 0, 5] {
            let mut g = f.clone();
            g[54] = kind;
            assert_eq!(parse(&g), Err(Drop::Protocol), "type {kind}");
        }
        for n in 14..f.len() {
            let mut t = f[..n].to_vec();
            if n >= 20 {
                let pl = n.saturating_sub(54) as u16;
                t[18..20].copy_from_slice(&pl.to_be_bytes());
            }
            let _ = parse(&t);
        }
        // The quote cut inside its ports.
        let mut t = f[..102 + 4].to_vec();
        t[18..20].copy_from_slice(&52u16.to_be_bytes());
        assert_eq!(parse(&t), Err(Drop::Malformed));
    }
}
