//! The PROXY protocol (haproxy's spec, v1 text and v2 binary) for real
//! servers that want the client's address: lvc puts the header in front of
//! the first byte the client sends (its first data segment, or its FIN if
//! it sends none), and from then on the two ends count the stream
//! differently by the header's length. So:
//!
//! - client → server: a segment that starts at the first byte gets the
//!   header inserted (a retransmission of it gets the same header again);
//!   a later one's sequence number moves on by the header's length;
//! - server → client: acknowledgement numbers and SACK blocks past the
//!   first byte move back by it; the SYN-ACK's MSS option shrinks by it
//!   (the client sends at most what the server offers), so the first
//!   segment still fits once it carries the header.
//!
//! Such connections stay with lvc (never offloaded to XDP, whose rewrite
//! has no sequence numbers). The insertion itself needs a larger frame:
//! the pipeline hands an [`Insert`] to the worker, which grows the frame
//! and calls [`insert`].

use crate::addr::Addr;
use crate::pipeline::checksum;
use crate::pipeline::conntrack::{Conn, Dir};
use crate::wire::{self, ETH_HLEN, TCP_ACK, TCP_SYN};
use lvc_proto::ProxyProtocol;

/// The longest header: v1 with two IPv6 addresses ("PROXY TCP6 " + 2×39
/// + 2×5 + 4 separators + CRLF = 107; the spec's bound is 108).
pub const MAX_HEADER: usize = 108;

/// A header to insert at `at` (the payload's offset in the frame).
#[derive(Clone, Copy, Debug)]
pub struct Insert {
    pub at: usize,
    pub len: usize,
    pub bytes: [u8; MAX_HEADER],
}

/// v2's signature, then version 2 / command PROXY.
const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for connection `c` (client → VIP, as the client sees it).
pub fn header(c: &Conn, v: ProxyProtocol) -> Insert {
    let (vip, vport) = c.vip();
    let (client, cport) = c.client;
    let mut bytes = [0u8; MAX_HEADER];
    let len = match v {
        ProxyProtocol::V1 | ProxyProtocol::Off => {
            use std::io::Write;
            let fam = if client.is_v4() { "TCP4" } else { "TCP6" };
            // (Written in place: no allocation per packet.)
            let mut w = &mut bytes[..];
            let _ = write!(
                w,
                "PROXY {fam} {} {} {cport} {vport}\r\n",
                client.ip(),
                vip.ip()
            );
            MAX_HEADER - w.len()
        }
        ProxyProtocol::V2 => {
            bytes[..12].copy_from_slice(&V2_SIG);
            bytes[12] = 0x21; // version 2, PROXY
            let addrs = |b: &mut [u8], a: Addr, z: Addr| {
                let (w, x) = (a.wire(), z.wire());
                b[..w.len()].copy_from_slice(w);
                b[w.len()..w.len() * 2].copy_from_slice(x);
                w.len() * 2
            };
            let n = addrs(&mut bytes[16..], client, vip);
            bytes[13] = if client.is_v4() { 0x11 } else { 0x21 }; // TCP over IPv4 / IPv6
            bytes[16 + n..18 + n].copy_from_slice(&cport.to_be_bytes());
            bytes[18 + n..20 + n].copy_from_slice(&vport.to_be_bytes());
            bytes[14..16].copy_from_slice(&((n + 4) as u16).to_be_bytes());
            16 + n + 4
        }
    };
    Insert { at: 0, len, bytes }
}

/// The header's length for `c` (what the stream shifts by).
pub fn shift(c: &Conn, v: ProxyProtocol) -> u32 {
    header(c, v).len as u32
}

/// Where a sequence number lies relative to the first byte: after it.
fn after(x: u32, first: u32) -> bool {
    (x.wrapping_sub(first) as i32) > 0
}

/// Whether the client's stream is far past its first byte (a GiB on):
/// sequence numbers then no longer compare with the first byte (they wrap
/// at 4 GiB), and every segment and acknowledgement is past the header.
fn long(c: &Conn, first: u32) -> bool {
    let end = c.seq_next(Dir::Original);
    end != 0 && end.wrapping_sub(first) >= 1 << 30
}

/// The TCP header's offset, its length, and the payload's length.
fn tcp_at(f: &[u8], l4: usize) -> Option<(usize, usize)> {
    let ip = wire::Ip::of(f, ETH_HLEN);
    let thl = usize::from(*f.get(l4 + 12)? >> 4) * 4;
    let end = ETH_HLEN + ip.len();
    if thl < 20 || l4 + thl > end || end > f.len() {
        return None;
    }
    Some((thl, end - l4 - thl))
}

fn set32(f: &mut [u8], l4: usize, at: usize, v: u32) {
    let old = wire::be32(f, l4 + at);
    f[l4 + at..l4 + at + 4].copy_from_slice(&v.to_be_bytes());
    let c = wire::be16(f, l4 + 16);
    wire::put16(f, l4 + 16, checksum::update32(c, old, v));
}

fn set16(f: &mut [u8], l4: usize, at: usize, v: u16) {
    let old = wire::be16(f, l4 + at);
    wire::put16(f, l4 + at, v);
    let c = wire::be16(f, l4 + 16);
    wire::put16(f, l4 + 16, checksum::update16(c, old, v));
}

/// TCP options of the header at `l4`: (kind, offset of its data, length
/// of its data), until the end or a malformed one.
fn options(f: &[u8], l4: usize, thl: usize) -> impl Iterator<Item = (u8, usize, usize)> + '_ {
    let mut at = l4 + 20;
    let end = l4 + thl;
    std::iter::from_fn(move || {
        loop {
            if at >= end {
                return None;
            }
            match f[at] {
                0 => return None,
                1 => at += 1,
                kind => {
                    let len = usize::from(*f.get(at + 1)?);
                    if len < 2 || at + len > end {
                        return None;
                    }
                    let item = (kind, at + 2 - l4, len - 2);
                    at += len;
                    return Some(item);
                }
            }
        }
    })
}

/// A client → server segment of a PROXY connection, already translated:
/// a segment from the first byte gets the header (returned: the worker
/// inserts it), a later one moves on.
pub fn to_server(f: &mut [u8], l4: usize, c: &Conn, v: ProxyProtocol) -> Option<Insert> {
    let (thl, payload) = tcp_at(f, l4)?;
    let flags = f[l4 + 13];
    let seq = wire::be32(f, l4 + 4);
    if flags & TCP_SYN != 0 {
        if flags & TCP_ACK == 0 {
            // (A new handshake on a reused connection starts over.)
            c.restart_proxy(seq.wrapping_add(1));
        }
        return None;
    }
    let first = c.first_byte();
    let mut hdr = header(c, v);
    let d = hdr.len as u32;
    let long = long(c, first);
    if !long && seq == first && (payload > 0 || flags & wire::TCP_FIN != 0) {
        hdr.at = l4 + thl;
        return Some(hdr);
    }
    if long || after(seq, first) {
        set32(f, l4, 4, seq.wrapping_add(d));
    }
    None
}

/// A server → client segment of a PROXY connection: what it acknowledges
/// past the first byte moves back by the header (the header's own bytes
/// are the client's first byte), SACK blocks too.
pub fn to_client(f: &mut [u8], l4: usize, c: &Conn, v: ProxyProtocol) {
    let Some((thl, _)) = tcp_at(f, l4) else {
        return;
    };
    let first = c.first_byte();
    let d = shift(c, v);
    let long = long(c, first);
    if f[l4 + 13] & TCP_SYN != 0 {
        // The client sends at most the MSS the server offers: less by the
        // header, so the first segment still fits once it carries it.
        let mss = options(f, l4, thl).find(|&(k, _, n)| k == 2 && n == 2);
        if let Some((_, at, _)) = mss {
            let old = wire::be16(f, l4 + at);
            set16(f, l4, at, old.saturating_sub(d as u16).max(64));
        }
    }
    let back = |x: u32| {
        if long {
            x.wrapping_sub(d)
        } else if !after(x, first) {
            x
        } else if x.wrapping_sub(first) >= d {
            x.wrapping_sub(d)
        } else {
            first
        }
    };
    if f[l4 + 13] & TCP_ACK != 0 {
        let ack = wire::be32(f, l4 + 8);
        set32(f, l4, 8, back(ack));
    }
    // (Found first, changed after: at most four blocks.)
    let mut sacks = [(0usize, 0usize); 4];
    let mut k = 0;
    for (_, at, n) in options(f, l4, thl).filter(|&(kind, _, n)| kind == 5 && n % 8 == 0) {
        if k < sacks.len() {
            sacks[k] = (at, n);
            k += 1;
        }
    }
    for &(at, n) in &sacks[..k] {
        for e in (at..at + n).step_by(4) {
            let x = wire::be32(f, l4 + e);
            set32(f, l4, e, back(x));
        }
    }
}

/// Inserts `ins` into the frame (the frame already grown by `ins.len`):
/// the payload moves on, the IP length grows, and the IP and TCP checksums
/// are computed again. Returns the frame's new length (without the
/// Ethernet padding a short frame came with).
pub fn insert(f: &mut [u8], ins: &Insert) -> usize {
    let n = ins.len;
    // The packet ends where its IP header says (padding is no payload).
    let len = ETH_HLEN + wire::Ip::of(&*f, ETH_HLEN).len();
    f.copy_within(ins.at..len, ins.at + n);
    f[ins.at..ins.at + n].copy_from_slice(&ins.bytes[..n]);
    let v6 = wire::is_v6(f);
    let ip = ETH_HLEN;
    let l4 = {
        let view = wire::Ip::of(&*f, ip);
        ip + view.header_len()
    };
    if v6 {
        let pl = wire::be16(f, ip + 4) + n as u16;
        wire::put16(f, ip + 4, pl);
    } else {
        let tl = wire::be16(f, ip + 2) + n as u16;
        wire::put16(f, ip + 2, tl);
        wire::put16(f, ip + 10, 0);
        let ihl = l4 - ip;
        let c = checksum::checksum(&f[ip..ip + ihl]);
        wire::put16(f, ip + 10, c);
    }
    let end = len + n;
    let seg = end - l4;
    // The pseudo-header, then the segment with its checksum field zeroed.
    wire::put16(f, l4 + 16, 0);
    let mut pseudo = [0u8; 40];
    let p = if v6 {
        pseudo[..16].copy_from_slice(&f[ip + 8..ip + 24]);
        pseudo[16..32].copy_from_slice(&f[ip + 24..ip + 40]);
        pseudo[32..36].copy_from_slice(&(seg as u32).to_be_bytes());
        pseudo[39] = wire::PROTO_TCP;
        &pseudo[..40]
    } else {
        pseudo[..4].copy_from_slice(&f[ip + 12..ip + 16]);
        pseudo[4..8].copy_from_slice(&f[ip + 16..ip + 20]);
        pseudo[9] = wire::PROTO_TCP;
        pseudo[10..12].copy_from_slice(&(seg as u16).to_be_bytes());
        &pseudo[..12]
    };
    let c = checksum::combine(&[p, &f[l4..end]]);
    wire::put16(f, l4 + 16, c);
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::services::Server;
    use std::sync::Arc;

    fn a(s: &str) -> Addr {
        s.parse::<std::net::IpAddr>().unwrap().into()
    }

    fn conn(client: &str, vip: &str) -> Conn {
        let server = Arc::new(Server {
            addr: a("10.2.0.11"),
            vip: a(vip),
            port: 9000,
            weight: 1,
            method: lvc_proto::Method::Nat,
            stats: Arc::default(),
            service: Arc::default(),
            health: Arc::default(),
            limits: Default::default(),
            proxy: ProxyProtocol::V1,
            class: 0,
        });
        Conn::new(6, (a(client), 34720), (a(vip), 9000), server, 9000, 0).with_proxy(1000)
    }

    /// Ethernet + IPv4 + TCP (`opts` after the fixed header) + payload,
    /// checksums right.
    fn segment(flags: u8, seq: u32, ack: u32, opts: &[u8], payload: &[u8]) -> Vec<u8> {
        let thl = 20 + opts.len();
        let mut f = vec![0u8; 14 + 20 + thl];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 1, 0, 2]);
        f[30..34].copy_from_slice(&[10, 2, 0, 11]);
        let l4 = 34;
        f[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        f[l4 + 8..l4 + 12].copy_from_slice(&ack.to_be_bytes());
        f[l4 + 12] = ((thl / 4) as u8) << 4;
        f[l4 + 13] = flags;
        f[l4 + 20..l4 + thl].copy_from_slice(opts);
        f.extend_from_slice(payload);
        let total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        let c = checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let seg = f.len() - l4;
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&f[26..34]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&(seg as u16).to_be_bytes());
        let c = checksum::combine(&[&pseudo, &f[l4..]]);
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn tcp_ok(f: &[u8]) -> bool {
        let l4 = 34;
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&f[26..34]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&((f.len() - l4) as u16).to_be_bytes());
        checksum::combine(&[&pseudo, &f[l4..]]) == 0 && checksum::checksum(&f[14..34]) == 0
    }

    #[test]
    fn headers_are_the_specs() {
        let c = conn("10.1.0.2", "10.9.0.10");
        let h = header(&c, ProxyProtocol::V1);
        assert_eq!(
            &h.bytes[..h.len],
            b"PROXY TCP4 10.1.0.2 10.9.0.10 34720 9000\r\n"
        );
        let h = header(&c, ProxyProtocol::V2);
        assert_eq!(h.len, 28);
        assert_eq!(&h.bytes[..12], &V2_SIG);
        assert_eq!(
            &h.bytes[12..28],
            &[
                0x21, 0x11, 0, 12, 10, 1, 0, 2, 10, 9, 0, 10, 0x87, 0xa0, 0x23, 0x28
            ]
        );
        let c6 = conn("fd00:1::2", "fd00:9::10");
        let h = header(&c6, ProxyProtocol::V2);
        assert_eq!((h.len, h.bytes[13], h.bytes[15]), (52, 0x21, 36));
        let h = header(&c6, ProxyProtocol::V1);
        assert_eq!(
            &h.bytes[..h.len],
            b"PROXY TCP6 fd00:1::2 fd00:9::10 34720 9000\r\n"
        );
        // The longest v1 header fits.
        let long = conn(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        );
        assert!(header(&long, ProxyProtocol::V1).len <= MAX_HEADER);
    }

    #[test]
    fn the_first_byte_gets_the_header_and_the_rest_shifts() {
        let c = conn("10.1.0.2", "10.9.0.10");
        let d = shift(&c, ProxyProtocol::V1);
        // A pure ACK at the first byte: as it is.
        let mut f = segment(TCP_ACK, 1000, 77, &[], &[]);
        assert!(to_server(&mut f, 34, &c, ProxyProtocol::V1).is_none());
        assert_eq!(wire::be32(&f, 38), 1000);
        // The first data (and its retransmission): the header goes in.
        for _ in 0..2 {
            let mut f = segment(TCP_ACK, 1000, 77, &[], b"GET /");
            let ins = to_server(&mut f, 34, &c, ProxyProtocol::V1).expect("an insert");
            let len = f.len();
            f.resize(len + ins.len, 0);
            assert_eq!(insert(&mut f, &ins), len + ins.len);
            assert!(tcp_ok(&f), "checksums after the insert");
            assert_eq!(
                &f[54..],
                b"PROXY TCP4 10.1.0.2 10.9.0.10 34720 9000\r\nGET /"
            );
            assert_eq!(wire::be16(&f, 16) as usize, f.len() - 14);
        }
        // Later bytes move on.
        let mut f = segment(TCP_ACK | wire::TCP_FIN, 1005, 77, &[], b"x");
        assert!(to_server(&mut f, 34, &c, ProxyProtocol::V1).is_none());
        assert_eq!(wire::be32(&f, 38), 1005 + d);
        assert!(tcp_ok(&f));
        // Replies: acks and SACK blocks past the first byte move back; the
        // SYN-ACK's MSS shrinks.
        let mut sack = vec![1, 1, 5, 10];
        sack.extend_from_slice(&(1000 + d + 60).to_be_bytes());
        sack.extend_from_slice(&(1000 + d + 100).to_be_bytes());
        let mut f = segment(TCP_ACK, 77, 1000 + d + 5, &sack, &[]);
        to_client(&mut f, 34, &c, ProxyProtocol::V1);
        assert_eq!(wire::be32(&f, 42), 1005);
        assert_eq!(wire::be32(&f, 54 + 4), 1060);
        assert_eq!(wire::be32(&f, 54 + 8), 1100);
        assert!(tcp_ok(&f));
        let mut f = segment(TCP_ACK, 77, 1000 + 3, &[], &[]);
        to_client(&mut f, 34, &c, ProxyProtocol::V1);
        assert_eq!(
            wire::be32(&f, 42),
            1000,
            "part of the header acked: none of the client's"
        );
        let mut f = segment(TCP_SYN | TCP_ACK, 76, 1000, &[2, 4, 0x05, 0xb4], &[]);
        to_client(&mut f, 34, &c, ProxyProtocol::V1);
        assert_eq!(wire::be16(&f, 54 + 2), 1460 - d as u16);
        assert_eq!(wire::be32(&f, 42), 1000);
        assert!(tcp_ok(&f));
    }

    #[test]
    fn long_streams_short_frames_and_reused_connections() {
        let c = conn("10.1.0.2", "10.9.0.10");
        let d = shift(&c, ProxyProtocol::V1);
        // A FIN-only first segment in a frame padded to 60 bytes: the
        // header goes in, the padding stays out.
        let mut f = segment(TCP_ACK | wire::TCP_FIN, 1000, 77, &[], &[]);
        f.resize(60, 0);
        let ins = to_server(&mut f, 34, &c, ProxyProtocol::V1).expect("an insert");
        f.resize(60 + ins.len, 0);
        let n = insert(&mut f, &ins);
        assert_eq!(n, 54 + ins.len);
        f.truncate(n);
        assert!(tcp_ok(&f));
        // 3 GiB on, sequence numbers no longer compare with the first
        // byte; every segment is past the header all the same.
        let far = 1000u32.wrapping_add(3 << 30);
        c.saw_seq(Dir::Original, far);
        let mut f = segment(TCP_ACK, far, 77, &[], b"x");
        assert!(to_server(&mut f, 34, &c, ProxyProtocol::V1).is_none());
        assert_eq!(wire::be32(&f, 38), far.wrapping_add(d));
        let mut f = segment(TCP_ACK, 77, far.wrapping_add(d), &[], &[]);
        to_client(&mut f, 34, &c, ProxyProtocol::V1);
        assert_eq!(wire::be32(&f, 42), far);
        // A new handshake on the same addresses: its first byte counts.
        let c = conn("10.1.0.2", "10.9.0.10");
        let mut f = segment(TCP_SYN, 5000, 0, &[], &[]);
        assert!(to_server(&mut f, 34, &c, ProxyProtocol::V1).is_none());
        assert_eq!(c.first_byte(), 5001);
        let mut f = segment(TCP_ACK, 5001, 77, &[], b"hi");
        assert!(to_server(&mut f, 34, &c, ProxyProtocol::V1).is_some());
    }
}
