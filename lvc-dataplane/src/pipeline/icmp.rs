//! ICMP: errors about tracked flows are translated like the packets they
//! quote, so the party that sent the offending packet recognises it (PMTU
//! discovery through the director depends on this); errors lvc must send
//! itself — time exceeded, fragmentation needed — are built in the frame of
//! the packet that caused them.
//!
//! Both families: ICMP (destination unreachable, time exceeded, parameter
//! problem) and ICMPv6 (also packet too big, RFC 4443) are translated; lvc
//! originates "fragmentation needed"/"packet too big" and "time exceeded"
//! in either.

use crate::pipeline::checksum::{checksum, update_words, update16, update32};
use crate::pipeline::conntrack::{Conn, Dir};
use crate::pipeline::parse::{Addr, IcmpError, Packet};
use crate::wire::{
    ETH_HLEN, ICMP_HLEN, ICMP6_PACKET_TOO_BIG, Icmp, Ip, L4, PROTO_ICMPV6, PROTO_UDP, be16, be32,
    ipv4, ipv6, is_v6, put16,
};

/// Offsets of the source and destination address in an IP header of the
/// family, and the address width.
fn addr_offsets(v6: bool) -> (usize, usize, usize) {
    if v6 {
        (ipv6::SRC, ipv6::DST, 16)
    } else {
        (ipv4::SRC, ipv4::DST, 4)
    }
}

/// The address at `at` (width 4 or 16).
fn read_addr(f: &[u8], at: usize, width: usize) -> Addr {
    if width == 4 {
        Addr::v4_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&f[at..at + 16]);
        Addr(a)
    }
}

/// The host-order number of an IPv4 address (0 for IPv6: callers look
/// at the family first).
fn v4(a: Addr) -> u32 {
    u32::from_be_bytes(a.v4_octets().unwrap_or_default())
}

/// Which end of the quoted packet [`quoted_endpoint`] rewrites.
#[derive(Clone, Copy)]
enum End {
    Src,
    Dst,
}

/// Rewrites the quoted packet's source or destination address (at
/// `addr_at`, `width` bytes) and port, keeping its L4 checksum consistent
/// if quoted.
fn quoted_endpoint(
    f: &mut [u8],
    e: &IcmpError,
    proto: u8,
    (addr_at, width): (usize, usize),
    end: End,
    to: (Addr, u16),
) {
    let old_addr = read_addr(f, addr_at, width);
    let mut l4 = L4::of(&mut *f, e.inner_l4, proto);
    let old_port = match end {
        End::Src => l4.src_port(),
        End::Dst => l4.dst_port(),
    };
    if (old_addr, old_port) == to {
        return;
    }
    match end {
        End::Src => l4.set_src_port(to.1),
        End::Dst => l4.set_dst_port(to.1),
    }
    // Quoted far enough to hold the checksum?
    let present = e.inner_l4_len >= l4.checksum_field() - e.inner_l4 + 2;
    if present {
        let old = l4.checksum();
        if !(proto == PROTO_UDP && old == 0) {
            let c = if width == 4 {
                update32(old, v4(old_addr), v4(to.0))
            } else {
                update_words(old, &old_addr.0, &to.0.0)
            };
            l4.set_checksum(update16(c, old_port, to.1));
        }
    }
    f[addr_at..addr_at + width].copy_from_slice(to.0.wire());
}

/// Rewrites the outer header's address at `at` (its offset in the IP
/// header), fixing the IPv4 header checksum (IPv6 has none).
fn outer_addr(f: &mut [u8], at: usize, width: usize, to: Addr) {
    let at = ETH_HLEN + at;
    let old = read_addr(f, at, width);
    if old == to {
        return;
    }
    f[at..at + width].copy_from_slice(to.wire());
    if width == 4 {
        let c = update32(be16(f, ETH_HLEN + ipv4::CSUM), v4(old), v4(to));
        put16(f, ETH_HLEN + ipv4::CSUM, c);
    }
}

/// Translates an ICMP or ICMPv6 error about `conn` travelling in `dir`
/// (Original: towards the real server; Reply: towards the client). Returns
/// the address it must be routed to.
pub fn translate(f: &mut [u8], pkt: &Packet, e: &IcmpError, conn: &Conn, dir: Dir) -> Addr {
    let proto = conn.proto;
    let (src, dst, width) = addr_offsets(pkt.v6);
    let (src_at, dst_at) = ((e.inner_ip + src, width), (e.inner_ip + dst, width));
    let fullnat = conn.fullnat();
    let next = match dir {
        Dir::Original => {
            // The quoted packet is a reply as lvc sent it (from the VIP):
            // show it as the real server sent it.
            quoted_endpoint(f, e, proto, src_at, End::Src, conn.real());
            if fullnat {
                quoted_endpoint(f, e, proto, dst_at, End::Dst, conn.local());
            }
            outer_addr(f, dst, width, conn.real().0);
            conn.real().0
        }
        Dir::Reply => {
            // The quoted packet is a request as lvc sent it (to the real
            // server): show it as the client sent it.
            quoted_endpoint(f, e, proto, dst_at, End::Dst, conn.vip());
            if fullnat {
                quoted_endpoint(f, e, proto, src_at, End::Src, conn.client);
                outer_addr(f, dst, width, conn.client.0);
            }
            if read_addr(f, ETH_HLEN + src, width) == conn.real().0 {
                outer_addr(f, src, width, conn.vip().0);
            }
            conn.client.0
        }
    };
    let end = ETH_HLEN + pkt.ip_len;
    if pkt.v6 {
        // The message's checksum covers the (changed) outer addresses.
        Icmp::of(&mut *f, pkt.l4_off).set_checksum(0);
        let (from, to) = (
            read_addr(f, ETH_HLEN + ipv6::SRC, 16),
            read_addr(f, ETH_HLEN + ipv6::DST, 16),
        );
        let c = icmp6_checksum(&from, &to, &f[pkt.l4_off..end]);
        Icmp::of(&mut *f, pkt.l4_off).set_checksum(c);
        return next;
    }
    // The quoted IP header and the whole ICMP message get fresh checksums.
    let ihl = usize::from(f[e.inner_ip] & 0x0f) * 4;
    put16(f, e.inner_ip + ipv4::CSUM, 0);
    let c = checksum(&f[e.inner_ip..e.inner_ip + ihl]);
    put16(f, e.inner_ip + ipv4::CSUM, c);
    Icmp::of(&mut *f, pkt.l4_off).set_checksum(0);
    let c = checksum(&f[pkt.l4_off..end]);
    Icmp::of(&mut *f, pkt.l4_off).set_checksum(c);
    next
}

/// An ICMP error lvc originates about the frame it would forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Originate {
    pub kind: u8,
    pub code: u8,
    /// Next-hop MTU, for "fragmentation needed".
    pub mtu: u16,
}

/// IPv6 header + ICMPv6 header.
const ICMP6_OVERHEAD: usize = ipv6::HLEN + ICMP_HLEN;

/// Bytes of the offending packet an error quotes: for IPv4 its header and
/// 8 bytes, as RFC 792 asks and every stack matches on; for IPv6 as much
/// as fits in the minimum MTU.
fn quoted_len(f: &[u8]) -> usize {
    // (An ICMPv6 error must fit the IPv6 minimum MTU, RFC 4443 §2.4 (c).)
    let ip = Ip::of(f, ETH_HLEN);
    if ip.v6() {
        return ip
            .len()
            .min(ipv6::MIN_MTU - ICMP6_OVERHEAD)
            .min(f.len() - ETH_HLEN);
    }
    (ip.header_len() + 8).min(ip.len())
}

/// Frame length the error built from `f` will have.
pub fn error_len(f: &[u8]) -> usize {
    let headers = if is_v6(f) {
        ICMP6_OVERHEAD
    } else {
        ipv4::HLEN + ICMP_HLEN
    };
    ETH_HLEN + headers + quoted_len(f)
}

/// The source address of the packet in `f`.
pub fn source_of(f: &[u8]) -> Addr {
    Ip::of(f, ETH_HLEN).src()
}

/// Turns the frame `f` (already at least [`error_len`] long, original
/// packet at its start) into an ICMP error from `src` to the original
/// packet's source. Returns (new length, destination).
pub fn build(f: &mut [u8], what: Originate, src: Addr) -> (usize, Addr) {
    if is_v6(f) {
        return build6(f, what, src);
    }
    let src = v4(src);
    let q = quoted_len(f);
    let to = be32(f, ETH_HLEN + ipv4::SRC);
    f.copy_within(ETH_HLEN..ETH_HLEN + q, ETH_HLEN + 28);
    let ip_len = 28 + q;
    let ip = &mut f[ETH_HLEN..ETH_HLEN + 20];
    ip.copy_from_slice(&[
        0x45, 0xc0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[12..16].copy_from_slice(&src.to_be_bytes());
    ip[16..20].copy_from_slice(&to.to_be_bytes());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut f[ETH_HLEN + 20..ETH_HLEN + ip_len];
    icmp[..8].copy_from_slice(&[what.kind, what.code, 0, 0, 0, 0, 0, 0]);
    icmp[6..8].copy_from_slice(&what.mtu.to_be_bytes());
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    (ETH_HLEN + ip_len, Addr::v4(to))
}

/// The ICMPv6 form of [`build`]: `what.kind` is an ICMPv6 type; for
/// "packet too big" `what.mtu` is the MTU to report.
fn build6(f: &mut [u8], what: Originate, src: Addr) -> (usize, Addr) {
    let q = quoted_len(f);
    let to = source_of(f);
    f.copy_within(ETH_HLEN..ETH_HLEN + q, ETH_HLEN + ICMP6_OVERHEAD);
    let payload = 8 + q;
    let ip = &mut f[ETH_HLEN..ETH_HLEN + 40];
    ip.fill(0);
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    ip[ipv6::NEXT] = PROTO_ICMPV6;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.0);
    ip[24..40].copy_from_slice(&to.0);
    let at = ETH_HLEN + 40;
    f[at..at + 8].copy_from_slice(&[what.kind, what.code, 0, 0, 0, 0, 0, 0]);
    if what.kind == ICMP6_PACKET_TOO_BIG {
        f[at + 4..at + 8].copy_from_slice(&u32::from(what.mtu).to_be_bytes());
    }
    let c = icmp6_checksum(&src, &to, &f[at..at + payload]);
    f[at + 2..at + 4].copy_from_slice(&c.to_be_bytes());
    (ETH_HLEN + 40 + payload, to)
}

/// The ICMPv6 checksum: the message with the pseudo-header (RFC 4443 §2.3).
fn icmp6_checksum(src: &Addr, dst: &Addr, msg: &[u8]) -> u16 {
    let mut buf = Vec::with_capacity(40 + msg.len());
    buf.extend_from_slice(&src.0);
    buf.extend_from_slice(&dst.0);
    buf.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    buf.extend_from_slice(&[0, 0, 0, PROTO_ICMPV6]);
    buf.extend_from_slice(msg);
    checksum(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::conntrack::Conntrack;
    use crate::pipeline::parse::fixtures::{a, frame, frame6, icmp_error};
    use crate::pipeline::parse::parse;
    use crate::pipeline::services::Server;
    use crate::stats::TrafficStats;
    use crate::wire::{
        ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_TIME_EXCEEDED, ICMP6_TIME_EXCEEDED, TCP_SYN,
    };
    use lvc_proto::Method;
    use std::sync::Arc;

    const CLIENT: [u8; 4] = [10, 1, 0, 2];
    const VIP: [u8; 4] = [10, 9, 0, 10];
    const RIP: [u8; 4] = [10, 2, 0, 11];
    const ROUTER: [u8; 4] = [10, 1, 0, 254];

    fn conn(method: Method) -> Conn {
        let s = Arc::new(Server {
            addr: Addr::v4_bytes(RIP),
            vip: Addr::v4_bytes(VIP),
            port: 8080,
            weight: 1,
            method,
            stats: Arc::new(TrafficStats::default()),
            service: Arc::default(),
            health: Arc::default(),
            limits: Default::default(),
            proxy: Default::default(),
            class: 0,
        });
        Conn::new(
            17,
            (Addr::v4_bytes(CLIENT), 40000),
            (Addr::v4_bytes(VIP), 53),
            s,
            8080,
            0,
        )
    }

    fn icmp_ok(f: &[u8]) -> bool {
        let ip_len = usize::from(be16(f, 16));
        checksum(&f[14..34]) == 0 && checksum(&f[34..14 + ip_len]) == 0 && checksum(&f[42..62]) == 0
    }

    #[test]
    fn port_unreachable_from_a_nat_server_reaches_the_client_as_from_the_vip() {
        let ct = Conntrack::new(4);
        let c = ct.insert(conn(Method::Nat)).unwrap();
        // The request as lvc sent it to the real server.
        let req = frame(17, CLIENT, RIP, 40000, 8080, 0, b"q");
        let mut f = icmp_error(ICMP_DEST_UNREACH, 3, RIP, CLIENT, &req[14..14 + 28]);
        let pkt = parse(&f).unwrap();
        let (found, dir) = ct.lookup(&pkt.key).unwrap();
        assert!(Arc::ptr_eq(&found, &c));
        assert_eq!(dir, Dir::Reply);
        let next = translate(&mut f, &pkt, &pkt.icmp.unwrap(), &c, dir);
        assert_eq!(next, Addr::v4_bytes(CLIENT));
        assert_eq!(&f[26..30], &VIP, "outer source: the VIP");
        assert_eq!(&f[58..62], &VIP, "quoted destination: the VIP");
        assert_eq!(be16(&f, 64), 53, "quoted destination port: the service's");
        assert!(icmp_ok(&f));
    }

    #[test]
    fn frag_needed_about_a_reply_reaches_the_real_server() {
        let ct = Conntrack::new(4);
        for method in [Method::Nat, Method::Fullnat] {
            let mut c = conn(method);
            if method == Method::Fullnat {
                c = c.with_local(
                    (Addr::v4(0x0a02_0064), 1500),
                    Arc::new(crate::pipeline::snat::SnatPool::new(&[])),
                );
            }
            let c = Arc::new(c);
            // The reply as lvc sent it to the client, quoted by a router.
            let reply = frame(17, VIP, CLIENT, 53, 40000, 0, b"r");
            let mut f = icmp_error(
                ICMP_DEST_UNREACH,
                ICMP_FRAG_NEEDED,
                ROUTER,
                VIP,
                &reply[14..14 + 28],
            );
            let pkt = parse(&f).unwrap();
            assert_eq!(pkt.key, c.original_key());
            let next = translate(&mut f, &pkt, &pkt.icmp.unwrap(), &c, Dir::Original);
            assert_eq!(next, Addr::v4_bytes(RIP));
            assert_eq!(&f[30..34], &RIP, "outer destination: the real server");
            assert_eq!(&f[54..58], &RIP, "quoted source: the real server");
            assert_eq!(be16(&f, 62), 8080);
            if method == Method::Fullnat {
                assert_eq!(
                    &f[58..62],
                    &[10, 2, 0, 100],
                    "quoted destination: the pool address"
                );
            }
            assert!(icmp_ok(&f), "{method:?}");
        }
        drop(ct);
    }

    #[test]
    fn originated_errors_quote_the_offending_packet() {
        let orig = frame(6, CLIENT, VIP, 40000, 80, TCP_SYN, b"");
        let mut f = orig.clone();
        f.resize(error_len(&orig).max(orig.len()), 0);
        let what = Originate {
            kind: ICMP_TIME_EXCEEDED,
            code: 0,
            mtu: 0,
        };
        let (len, to) = build(&mut f, what, Addr::v4(0x0a01_0001));
        f.truncate(len);
        assert_eq!(to, Addr::v4_bytes(CLIENT));
        assert_eq!(len, 14 + 20 + 8 + 28);
        assert_eq!(&f[42..70], &orig[14..42]);
        let p = parse(&f).unwrap();
        assert_eq!(p.icmp.unwrap().kind, ICMP_TIME_EXCEEDED);
        assert!(icmp_ok(&f));
        let mut g = orig.clone();
        g.resize(error_len(&orig), 0);
        build(
            &mut g,
            Originate {
                kind: 3,
                code: 4,
                mtu: 1400,
            },
            Addr::v4(1),
        );
        assert_eq!(be16(&g, 40), 1400);
    }

    #[test]
    fn icmpv6_errors_quote_what_fits_and_verify() {
        // An IPv6/UDP packet of 1400 bytes, from a client to a VIP.
        let client: Addr = "fd00:1::2".parse::<std::net::IpAddr>().unwrap().into();
        let vip: Addr = "fd00:9::10".parse::<std::net::IpAddr>().unwrap().into();
        let director: Addr = "fd00:1::1".parse::<std::net::IpAddr>().unwrap().into();
        let mut orig = vec![0u8; 14 + 1400];
        orig[12..14].copy_from_slice(&[0x86, 0xdd]);
        orig[14] = 0x60;
        orig[18..20].copy_from_slice(&(1400u16 - 40).to_be_bytes());
        orig[20] = 17;
        orig[21] = 1;
        orig[22..38].copy_from_slice(&client.0);
        orig[38..54].copy_from_slice(&vip.0);
        for (i, b) in orig[54..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut f = orig.clone();
        let n = error_len(&f);
        assert_eq!(n, 14 + 1280, "quoted up to the minimum MTU");
        f.resize(n.max(f.len()), 0);
        let (len, to) = build(
            &mut f,
            Originate {
                kind: ICMP6_PACKET_TOO_BIG,
                code: 0,
                mtu: 1280,
            },
            director,
        );
        f.truncate(len);
        assert_eq!(to, client);
        assert_eq!(len, 14 + 1280);
        assert_eq!(&f[22..38], &director.0);
        assert_eq!(&f[38..54], &client.0);
        assert_eq!((f[20], f[21]), (58, 64));
        assert_eq!(be16(&f, 18) as usize, 1280 - 40);
        assert_eq!((f[54], f[55]), (ICMP6_PACKET_TOO_BIG, 0));
        assert_eq!(&f[58..62], &1280u32.to_be_bytes());
        assert_eq!(
            &f[62..],
            &orig[14..14 + 1232],
            "the offending packet, quoted"
        );
        // The receiver's check: checksum over pseudo-header + message is 0.
        assert_eq!(icmp6_checksum(&director, &client, &f[54..]), 0);
        // A small packet is quoted whole (time exceeded).
        let mut g = orig[..14 + 100].to_vec();
        g[18..20].copy_from_slice(&60u16.to_be_bytes());
        let n = error_len(&g);
        g.resize(n, 0);
        let (len, _) = build(
            &mut g,
            Originate {
                kind: ICMP6_TIME_EXCEEDED,
                code: 0,
                mtu: 0,
            },
            director,
        );
        assert_eq!(len, 14 + 48 + 100);
        assert_eq!(icmp6_checksum(&director, &client, &g[54..len]), 0);
    }

    /// An Ethernet/IPv6/ICMPv6 error from `src` to `dst` quoting `quoted`
    /// (an IPv6 packet), its checksum valid.
    fn icmp6_error(kind: u8, code: u8, src: Addr, dst: Addr, quoted: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[18..20].copy_from_slice(&((8 + quoted.len()) as u16).to_be_bytes());
        f[20] = 58;
        f[21] = 64;
        f[22..38].copy_from_slice(&src.0);
        f[38..54].copy_from_slice(&dst.0);
        f[54] = kind;
        f[55] = code;
        f.extend_from_slice(quoted);
        let c = icmp6_checksum(&src, &dst, &f[54..]);
        f[56..58].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The ICMPv6 checksum of `f` verifies and so does its quoted (whole)
    /// packet's L4 checksum.
    fn icmp6_ok(f: &[u8]) -> bool {
        let (src, dst) = (read_addr(f, 22, 16), read_addr(f, 38, 16));
        let mut inner = f[..14].to_vec();
        inner.extend_from_slice(&f[62..]);
        let at = 54 + if inner[20] == 6 { 16 } else { 6 };
        icmp6_checksum(&src, &dst, &f[54..]) == 0
            && be16(&inner, at) == crate::pipeline::parse::fixtures::l4_checksum6(&inner)
    }

    fn conn6(method: Method) -> Conn {
        let s = Arc::new(Server {
            addr: a("fd00:2::11"),
            vip: a("fd00:9::10"),
            port: 8080,
            weight: 1,
            method,
            stats: Arc::new(TrafficStats::default()),
            service: Arc::default(),
            health: Arc::default(),
            limits: Default::default(),
            proxy: Default::default(),
            class: 0,
        });
        let mut c = Conn::new(
            17,
            (a("fd00:1::2"), 40000),
            (a("fd00:9::10"), 53),
            s,
            8080,
            0,
        );
        if method == Method::Fullnat {
            c = c.with_local(
                (a("fd00:2::100"), 1500),
                Arc::new(crate::pipeline::snat::SnatPool::new(&[])),
            );
        }
        c
    }

    #[test]
    fn icmpv6_port_unreachable_from_a_nat_server_reaches_the_client() {
        let ct = Conntrack::new(4);
        let c = ct.insert(conn6(Method::Nat)).unwrap();
        // The request as lvc sent it to the real server.
        let req = frame6(17, a("fd00:1::2"), a("fd00:2::11"), 40000, 8080, b"q?");
        let mut f = icmp6_error(1, 4, a("fd00:2::11"), a("fd00:1::2"), &req[14..]);
        let pkt = parse(&f).unwrap();
        let (found, dir) = ct.lookup(&pkt.key).unwrap();
        assert!(Arc::ptr_eq(&found, &c));
        assert_eq!(dir, Dir::Reply);
        let next = translate(&mut f, &pkt, &pkt.icmp.unwrap(), &c, dir);
        assert_eq!(next, a("fd00:1::2"));
        assert_eq!(read_addr(&f, 22, 16), a("fd00:9::10"), "outer source: VIP");
        assert_eq!(read_addr(&f, 62 + 24, 16), a("fd00:9::10"), "quoted dst");
        assert_eq!(be16(&f, 102 + 2), 53, "quoted destination port");
        assert!(icmp6_ok(&f));
    }

    #[test]
    fn icmpv6_packet_too_big_about_a_reply_reaches_the_real_server() {
        for method in [Method::Nat, Method::Fullnat] {
            let c = conn6(method);
            // The reply as lvc sent it to the client, quoted by a router.
            let reply = frame6(17, a("fd00:9::10"), a("fd00:1::2"), 53, 40000, &[9; 1000]);
            let mut f = icmp6_error(2, 0, a("fd00:1::fe"), a("fd00:9::10"), &reply[14..]);
            f[58..62].copy_from_slice(&1400u32.to_be_bytes());
            let c6 = icmp6_checksum(&a("fd00:1::fe"), &a("fd00:9::10"), &{
                let mut m = f[54..].to_vec();
                m[2] = 0;
                m[3] = 0;
                m
            });
            f[56..58].copy_from_slice(&c6.to_be_bytes());
            let pkt = parse(&f).unwrap();
            assert_eq!(pkt.key, c.original_key());
            let next = translate(&mut f, &pkt, &pkt.icmp.unwrap(), &c, Dir::Original);
            assert_eq!(next, a("fd00:2::11"));
            assert_eq!(read_addr(&f, 38, 16), a("fd00:2::11"), "outer dst");
            assert_eq!(read_addr(&f, 62 + 8, 16), a("fd00:2::11"), "quoted src");
            assert_eq!(be16(&f, 102), 8080);
            assert_eq!(&f[58..62], &1400u32.to_be_bytes(), "the MTU stays");
            if method == Method::Fullnat {
                assert_eq!(read_addr(&f, 62 + 24, 16), a("fd00:2::100"));
                assert_eq!(be16(&f, 104), 1500);
            }
            assert!(icmp6_ok(&f), "{method:?}");
        }
    }
}
