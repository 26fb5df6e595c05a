//! Rewrite: address/port translation, TTL/hop limit and MACs, in place in
//! the frame, for IPv4 and IPv6.
//!
//! Checksums are updated incrementally (RFC 1624): the receivers verify
//! them, so every change to an address or port updates the IPv4 header
//! checksum (IPv6 has none) and the TCP/UDP checksum (whose pseudo-header
//! covers addresses).

use crate::pipeline::checksum::{update_words, update16, update32};
use crate::pipeline::parse::{Addr, Packet};
use crate::stats::Drop;
use crate::wire::{ETH_HLEN, Ip, L4, PROTO_UDP, be16, ipv4, put16};

pub use crate::wire::{IPIP_HLEN, ip_len};

/// The IPv4 header checksum, in a frame.
const IP_CSUM: usize = ETH_HLEN + ipv4::CSUM;

/// Which address of the IP header.
#[derive(Clone, Copy)]
enum Field {
    Src,
    Dst,
}

/// Replaces an address and its port (source or destination), fixing the
/// IP and L4 checksums.
#[inline]
fn translate(f: &mut [u8], pkt: &Packet, which: Field, new_addr: Addr, new_port: u16) {
    let old_addr = set_addr(f, which, new_addr);
    let mut l4 = L4::of(&mut *f, pkt.l4_off, pkt.key.proto);
    let old_port = match which {
        Field::Src => l4.src_port(),
        Field::Dst => l4.dst_port(),
    };
    match which {
        Field::Src => l4.set_src_port(new_port),
        Field::Dst => l4.set_dst_port(new_port),
    }
    let old = l4.checksum();
    // A zero UDP checksum means "none": leave it so.
    if pkt.key.proto == PROTO_UDP && old == 0 {
        return;
    }
    let with_addr = match old_addr {
        Old::V4(o) => update32(old, o, v4_of(&new_addr)),
        Old::V6(o) => update_words(old, &o, &new_addr.0),
    };
    let mut c = update16(with_addr, old_port, new_port);
    if pkt.key.proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    l4.set_checksum(c);
}

/// Destination becomes `addr:port` (DNAT towards a real server; for
/// fullnat replies, back to the client).
#[inline]
pub fn set_dst(f: &mut [u8], pkt: &Packet, addr: Addr, port: u16) {
    translate(f, pkt, Field::Dst, addr, port);
}

/// Source becomes `addr:port` (the VIP on replies; for fullnat requests,
/// a local pool address).
#[inline]
pub fn set_src(f: &mut [u8], pkt: &Packet, addr: Addr, port: u16) {
    translate(f, pkt, Field::Src, addr, port);
}

/// Replaces only the IP destination (later fragments: no L4 header; the
/// first fragment's L4 checksum update covers the whole datagram).
#[inline]
pub fn set_dst_addr(f: &mut [u8], addr: Addr) {
    set_addr(f, Field::Dst, addr);
}

/// Replaces only the IP source (see [`set_dst_addr`]).
#[inline]
pub fn set_src_addr(f: &mut [u8], addr: Addr) {
    set_addr(f, Field::Src, addr);
}

/// An address a rewrite replaced, as the checksum update needs it.
enum Old {
    V4(u32),
    V6([u8; 16]),
}

/// The IPv4 address in an `Addr` known to be IPv4, as a number.
#[inline]
fn v4_of(a: &Addr) -> u32 {
    u32::from_be_bytes([a.0[12], a.0[13], a.0[14], a.0[15]])
}

/// Replaces an IP address (of the frame's family: the connection's
/// addresses are) and fixes the IPv4 header checksum; returns the old
/// address (for the L4 checksum's pseudo-header, where there is one).
#[inline]
fn set_addr(f: &mut [u8], which: Field, addr: Addr) -> Old {
    let ip = Ip::of(&*f, ETH_HLEN);
    let (at, n) = match which {
        Field::Src => ip.src_field(),
        Field::Dst => ip.dst_field(),
    };
    if n == 4 {
        debug_assert!(addr.is_v4(), "address family of the packet");
        let old = u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
        let new = v4_of(&addr);
        f[at..at + 4].copy_from_slice(&new.to_be_bytes());
        put16(f, IP_CSUM, update32(be16(f, IP_CSUM), old, new));
        Old::V4(old)
    } else {
        debug_assert!(!addr.is_v4(), "address family of the packet");
        let mut old = [0u8; 16];
        old.copy_from_slice(&f[at..at + 16]);
        f[at..at + 16].copy_from_slice(&addr.0);
        Old::V6(old)
    }
}

/// The TTL (IPv4) or hop limit (IPv6) of the frame.
#[inline]
pub fn hops(f: &[u8]) -> u8 {
    Ip::of(f, ETH_HLEN).hops()
}

/// Decrements the TTL or hop limit as a router must; a packet that runs
/// out is dropped.
#[inline]
pub fn decrement_ttl(f: &mut [u8]) -> Result<(), Drop> {
    let mut ip = Ip::of(&mut *f, ETH_HLEN);
    let hops = ip.hops();
    if hops <= 1 {
        return Err(Drop::TtlExceeded);
    }
    ip.set_hops(hops - 1);
    if !ip.v6() {
        // The TTL shares a checksummed 16-bit word with the protocol.
        let at = ETH_HLEN + ipv4::TTL;
        let new = be16(f, at);
        let old = new + 0x100;
        put16(f, IP_CSUM, update16(be16(f, IP_CSUM), old, new));
    }
    Ok(())
}

/// IP ids of outer IPIP headers that may be fragmented (DF clear): every
/// such packet from this director to a real server needs its own id, or
/// the server's reassembly mixes fragments of different packets (RFC 6864).
static IPIP_ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// Encapsulates the IP packet of a frame of `len` bytes (the frame already
/// grown by [`IPIP_HLEN`]) in an IPIP header from `src` to `dst`. The outer
/// header copies the inner DF bit and TOS, as IPVS's tunnel does; with DF
/// clear it gets a fresh IP id.
pub fn encap_ipip(f: &mut [u8], len: usize, src: Addr, dst: Addr) {
    f.copy_within(ETH_HLEN..len, ETH_HLEN + IPIP_HLEN);
    let inner = ETH_HLEN + IPIP_HLEN;
    let (tos, df) = (f[inner + ipv4::TOS], f[inner + ipv4::FRAG] & ipv4::DF);
    let total = (len - ETH_HLEN + IPIP_HLEN) as u16;
    let h = &mut f[ETH_HLEN..inner];
    h.copy_from_slice(&[
        0x45, tos, 0, 0, 0, 0, df, 0, 64, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    if df == 0 {
        let id = IPIP_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        h[4..6].copy_from_slice(&id.to_be_bytes());
    }
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[12..16].copy_from_slice(src.wire());
    h[16..20].copy_from_slice(dst.wire());
    let c = crate::pipeline::checksum::checksum(h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// True for an IPv4 packet with DF clear: a router may fragment it.
#[inline]
pub fn may_fragment(f: &[u8]) -> bool {
    Ip::of(f, ETH_HLEN).may_fragment()
}

/// The options of an IPv4 header that every fragment repeats (those with
/// the copy flag: source routes, security), padded to whole words, into
/// `out`; returns their length. A malformed option list ends the copy.
fn copied_options(opts: &[u8], out: &mut [u8; 40]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = opts.get(i + 1).map_or(0, |&l| usize::from(l));
                if len < 2 || i + len > opts.len() {
                    break;
                }
                if kind & 0x80 != 0 {
                    out[n..n + len].copy_from_slice(&opts[i..i + len]);
                    n += len;
                }
                i += len;
            }
        }
    }
    let padded = n.next_multiple_of(4);
    out[n..padded].fill(0);
    padded
}

/// How an IPv4 packet (longer than the MTU, DF clear) splits into
/// fragments of at most `mtu` bytes, as a router does (RFC 791): the
/// frame keeps the first fragment ([`Split::cut_first`]); each later one
/// ([`Split::later`]) is written into a frame of its own
/// ([`Split::write_later`]) with the Ethernet header, the IP header and
/// only the options with the copy flag. A packet that is itself a fragment
/// is split at its own offset, keeping its last piece's more-fragments
/// flag. Nothing is allocated.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    ihl: usize,
    opts: [u8; 40],
    later_hlen: usize,
    /// Payload bytes in the first fragment, then in each later one.
    first: usize,
    step: usize,
    payload: usize,
    /// The packet's own fragment offset (bytes) and MF flag.
    base: usize,
    more_after: bool,
}

impl Split {
    /// The split of frame `f`'s packet for `mtu`; None if it fits, if the
    /// MTU cannot carry 8 bytes of payload per fragment or the offsets
    /// would overflow.
    pub fn of(f: &[u8], mtu: usize) -> Option<Split> {
        let ip = ETH_HLEN;
        let ihl = usize::from(f[ip] & 0x0f) * 4;
        let ip_len = usize::from(be16(f, ip + ipv4::TOTAL_LEN));
        if ip_len <= mtu || ihl < 20 || ip_len < ihl || ip_len > f.len() - ip {
            return None;
        }
        let mut opts = [0u8; 40];
        let later_hlen = 20 + copied_options(&f[ip + 20..ip + ihl], &mut opts);
        let flags = be16(f, ip + ipv4::FRAG);
        let (base, more_after) = (usize::from(flags & 0x1fff) * 8, flags & 0x2000 != 0);
        let payload = ip_len - ihl;
        if mtu < ihl.max(later_hlen) + 8 || base + payload > 0xffff {
            return None;
        }
        Some(Split {
            ihl,
            opts,
            later_hlen,
            first: (mtu - ihl) & !7,
            step: (mtu - later_hlen) & !7,
            payload,
            base,
            more_after,
        })
    }

    /// The later fragments: (payload offset, payload bytes, frame length).
    pub fn later(&self) -> impl Iterator<Item = (usize, usize, usize)> + use<> {
        let (step, payload, hlen) = (self.step, self.payload, self.later_hlen);
        (self.first..payload).step_by(step).map(move |at| {
            let n = step.min(payload - at);
            (at, n, ETH_HLEN + hlen + n)
        })
    }

    /// Writes the later fragment at payload offset `at` of `n` bytes of
    /// packet `src` (the whole frame, before [`cut_first`](Self::cut_first))
    /// into `out`, a frame of the length [`later`](Self::later) gave.
    pub fn write_later(&self, src: &[u8], at: usize, n: usize, out: &mut [u8]) {
        let ip = ETH_HLEN;
        let h = self.later_hlen;
        out[..ETH_HLEN].copy_from_slice(&src[..ETH_HLEN]);
        out[ip..ip + 20].copy_from_slice(&src[ip..ip + 20]);
        out[ip + 20..ip + h].copy_from_slice(&self.opts[..h - 20]);
        out[ip] = 0x40 | (h / 4) as u8;
        let start = ip + self.ihl + at;
        out[ip + h..ip + h + n].copy_from_slice(&src[start..start + n]);
        let more = at + n < self.payload || self.more_after;
        fragment_header(out, h + n, self.base + at, more);
    }

    /// Turns `f` into the first fragment; returns its frame length.
    pub fn cut_first(&self, f: &mut [u8]) -> usize {
        fragment_header(f, self.ihl + self.first, self.base, true);
        ETH_HLEN + self.ihl + self.first
    }
}

/// Splits the packet of frame `f` as [`Split`] says, the later fragments
/// as new buffers (for tests; the worker writes them into frames).
#[cfg(test)]
pub fn fragment_v4(f: &mut [u8], mtu: usize) -> Option<(usize, Vec<Vec<u8>>)> {
    let split = Split::of(f, mtu)?;
    let rest = split
        .later()
        .map(|(at, n, len)| {
            let mut g = vec![0u8; len];
            split.write_later(f, at, n, &mut g);
            g
        })
        .collect();
    Some((split.cut_first(f), rest))
}

/// Sets a fragment's total length, offset and MF flag (DF clear) and its
/// header checksum.
fn fragment_header(f: &mut [u8], ip_len: usize, offset: usize, more: bool) {
    let ip = ETH_HLEN;
    let ihl = usize::from(f[ip] & 0x0f) * 4;
    put16(f, ip + ipv4::TOTAL_LEN, ip_len as u16);
    put16(
        f,
        ip + ipv4::FRAG,
        (offset / 8) as u16 | if more { 0x2000 } else { 0 },
    );
    put16(f, IP_CSUM, 0);
    let c = crate::pipeline::checksum::checksum(&f[ip..ip + ihl]);
    put16(f, IP_CSUM, c);
}

/// Sets the Ethernet addresses for the next hop.
#[inline]
pub fn set_macs(f: &mut [u8], src: [u8; 6], dst: [u8; 6]) {
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse::fixtures::{
        a, checksums_ok, frame, frame6, l4_checksum6, reassemble6, split6,
    };
    use crate::pipeline::parse::parse;
    use crate::wire::TCP_SYN;

    #[test]
    fn dnat_and_snat_keep_checksums_valid() {
        for proto in [6u8, 17] {
            for payload in [&b""[..], b"a", b"hello world, odd length!"] {
                let mut f = frame(
                    proto,
                    [192, 168, 7, 2],
                    [10, 0, 0, 10],
                    40000,
                    80,
                    TCP_SYN,
                    payload,
                );
                let p = parse(&f).unwrap();
                set_dst(&mut f, &p, Addr::v4(0x0a00_0102), 8080);
                assert!(checksums_ok(&f), "dnat proto {proto}");
                let p = parse(&f).unwrap();
                assert_eq!((p.key.dst, p.key.dport), (Addr::v4(0x0a00_0102), 8080));
                decrement_ttl(&mut f).unwrap();
                assert!(checksums_ok(&f));
                assert_eq!(f[ETH_HLEN + ipv4::TTL], 63);
                // And the reply path.
                let mut r = frame(
                    proto,
                    [10, 0, 1, 2],
                    [192, 168, 7, 2],
                    8080,
                    40000,
                    0,
                    payload,
                );
                let p = parse(&r).unwrap();
                set_src(&mut r, &p, Addr::v4(0x0a00_000a), 80);
                assert!(checksums_ok(&r), "snat proto {proto}");
                let p = parse(&r).unwrap();
                assert_eq!((p.key.src, p.key.sport), (Addr::v4(0x0a00_000a), 80));
            }
        }
    }

    #[test]
    fn fullnat_both_addresses_keep_checksums_valid() {
        for proto in [6u8, 17] {
            let mut f = frame(
                proto,
                [192, 168, 7, 2],
                [10, 0, 0, 10],
                40000,
                80,
                TCP_SYN,
                b"full nat",
            );
            let p = parse(&f).unwrap();
            set_src(&mut f, &p, Addr::v4(0x0a02_0064), 1024);
            set_dst(&mut f, &p, Addr::v4(0x0a02_000b), 8080);
            assert!(checksums_ok(&f), "proto {proto}");
            let p = parse(&f).unwrap();
            assert_eq!(
                (p.key.src, p.key.sport, p.key.dst, p.key.dport),
                (Addr::v4(0x0a02_0064), 1024, Addr::v4(0x0a02_000b), 8080)
            );
        }
    }

    #[test]
    fn ipip_wraps_the_packet_untouched() {
        let orig = frame(
            17,
            [10, 1, 0, 2],
            [10, 9, 0, 10],
            40000,
            53,
            0,
            b"tunnel me",
        );
        let mut f = orig.clone();
        f.resize(orig.len() + IPIP_HLEN, 0);
        encap_ipip(
            &mut f,
            orig.len(),
            Addr::v4(0x0a02_0001),
            Addr::v4(0x0a02_000b),
        );
        assert_eq!(&f[34..], &orig[14..], "inner packet unchanged");
        assert_eq!(
            crate::pipeline::checksum::checksum(&f[14..34]),
            0,
            "outer checksum"
        );
        assert_eq!(f[14 + 9], 4, "IPIP");
        assert_eq!(f[14 + 6] & 0x40, 0x40, "DF copied");
        assert_eq!(be16(&f, 16) as usize, orig.len() - 14 + 20);
        assert_eq!(&f[26..34], &[10, 2, 0, 1, 10, 2, 0, 11]);
    }

    #[test]
    fn zero_udp_checksum_stays_zero() {
        let mut f = frame(17, [1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 0, b"x");
        f[34 + 6] = 0;
        f[34 + 7] = 0;
        let p = parse(&f).unwrap();
        set_dst(&mut f, &p, Addr::v4(0x0303_0303), 3);
        assert_eq!(&f[40..42], &[0, 0]);
        assert_eq!(crate::pipeline::checksum::checksum(&f[14..34]), 0);
    }

    #[test]
    fn ttl_runs_out() {
        let mut f = frame(17, [1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 0, b"x");
        f[ETH_HLEN + ipv4::TTL] = 1;
        assert_eq!(decrement_ttl(&mut f), Err(Drop::TtlExceeded));
    }

    #[test]
    fn ipv6_translation_keeps_checksums_valid() {
        for proto in [6u8, 17] {
            for payload in [&b""[..], b"x", b"an odd-length ipv6 payload"] {
                let mut f = frame6(proto, a("fd00:1::2"), a("fd00:9::10"), 40000, 80, payload);
                let p = parse(&f).unwrap();
                assert!(p.v6);
                // fullnat: both addresses and ports.
                set_dst(&mut f, &p, a("fd00:2::11"), 8080);
                set_src(&mut f, &p, a("fd00:2::100"), 1024);
                let at = 54 + if proto == 6 { 16 } else { 6 };
                assert_eq!(be16(&f, at), l4_checksum6(&f), "proto {proto}");
                let p = parse(&f).unwrap();
                assert_eq!(
                    (p.key.src, p.key.sport, p.key.dst, p.key.dport),
                    (a("fd00:2::100"), 1024, a("fd00:2::11"), 8080)
                );
                decrement_ttl(&mut f).unwrap();
                assert_eq!(hops(&f), 63);
            }
        }
        let mut f = frame6(17, a("fd00:1::2"), a("fd00:9::10"), 40000, 80, b"");
        f[21] = 1;
        assert_eq!(decrement_ttl(&mut f), Err(Drop::TtlExceeded));
    }

    /// A fragmented IPv6 datagram through fullnat: the first fragment's
    /// incremental update covers the whole datagram, later fragments get
    /// only their addresses — the reassembled datagram verifies.
    #[test]
    fn ipv6_fragments_translate_to_a_valid_datagram() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
        for proto in [6u8, 17] {
            let whole = frame6(proto, a("fd00:1::2"), a("fd00:9::10"), 40000, 80, &payload);
            let (mut first, mut rest) = split6(&whole, 1448, 0xdead_beef);
            let p = parse(&first).unwrap();
            assert_eq!(p.frag.map(|f| (f.id, f.first)), Some((0xdead_beef, true)));
            assert_eq!((p.key.sport, p.key.dport, p.l4_off), (40000, 80, 62));
            set_dst(&mut first, &p, a("fd00:2::11"), 8080);
            set_src(&mut first, &p, a("fd00:2::100"), 1024);
            let q = parse(&rest).unwrap();
            assert_eq!(q.frag.map(|f| (f.id, f.first)), Some((0xdead_beef, false)));
            set_dst_addr(&mut rest, a("fd00:2::11"));
            set_src_addr(&mut rest, a("fd00:2::100"));
            let back = reassemble6(&first, &rest);
            let at = 54 + if proto == 6 { 16 } else { 6 };
            assert_eq!(be16(&back, at), l4_checksum6(&back), "proto {proto}");
            assert_eq!(&back[54 + if proto == 6 { 20 } else { 8 }..], &payload[..]);
        }
    }

    /// Fragmenting then reassembling gives back the packet; every
    /// fragment fits the MTU, has a valid header and the right flags.
    #[test]
    fn ipv4_fragmentation_reassembles_to_the_original() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 13 + 1) as u8).collect();
        for mtu in [576usize, 1000, 1400, 1480, 1499] {
            let orig = frame(17, [10, 1, 0, 2], [10, 2, 0, 11], 5000, 7, 0, &payload);
            let mut f = orig.clone();
            f[ETH_HLEN + 6] = 0; // DF clear (frame() sets it)
            let ip_len = f.len() - ETH_HLEN;
            let (n, rest) = fragment_v4(&mut f, mtu).unwrap();
            f.truncate(n);
            let mut pieces = vec![f];
            pieces.extend(rest);
            let mut data = vec![0u8; ip_len - 20];
            let mut covered = 0;
            for (i, g) in pieces.iter().enumerate() {
                let len = usize::from(be16(g, ETH_HLEN + 2));
                assert_eq!(len, g.len() - ETH_HLEN);
                assert!(len <= mtu, "mtu {mtu}: piece {i} is {len}");
                assert_eq!(
                    crate::pipeline::checksum::checksum(&g[ETH_HLEN..ETH_HLEN + 20]),
                    0
                );
                let fl = be16(g, ETH_HLEN + 6);
                let off = usize::from(fl & 0x1fff) * 8;
                assert_eq!(fl & 0x2000 != 0, i + 1 < pieces.len(), "MF of piece {i}");
                assert_eq!(fl & 0x4000, 0, "DF clear");
                assert_eq!(&g[..12], &orig[..12]);
                data[off..off + len - 20].copy_from_slice(&g[ETH_HLEN + 20..]);
                covered += len - 20;
            }
            assert_eq!(covered, ip_len - 20);
            assert_eq!(&data[..], &orig[ETH_HLEN + 20..], "mtu {mtu}");
        }
        // A fragment that is split again keeps its offset and its MF.
        let mut f = frame(17, [1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 0, &payload[..2000]);
        put16(&mut f, ETH_HLEN + 6, 0x2000 | 100);
        let (n, rest) = fragment_v4(&mut f, 1000).unwrap();
        assert_eq!(be16(&f, ETH_HLEN + 6), 0x2000 | 100);
        assert_eq!(n, ETH_HLEN + 20 + 976);
        let last = rest.last().unwrap();
        assert_eq!(be16(last, ETH_HLEN + 6) & 0x2000, 0x2000);
        assert_eq!(
            usize::from(be16(&rest[0], ETH_HLEN + 6) & 0x1fff),
            100 + 976 / 8
        );
        // Options: the first fragment keeps them all, the later ones only
        // those with the copy flag (here a loose source route, 0x83, but
        // not record route, 0x07), padded to 4 bytes.
        let mut g = frame(17, [1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 0, &payload[..1500]);
        let opts = [0x07u8, 3, 4, 0x83, 7, 4, 9, 9, 9, 9, 1, 0];
        g.splice(ETH_HLEN + 20..ETH_HLEN + 20, opts);
        g[ETH_HLEN] = 0x48;
        g[ETH_HLEN + 6] = 0;
        let len = (g.len() - ETH_HLEN) as u16;
        put16(&mut g, ETH_HLEN + 2, len);
        let (n, rest) = fragment_v4(&mut g, 1000).unwrap();
        assert_eq!(n, ETH_HLEN + 32 + ((1000 - 32) & !7));
        assert_eq!(&g[ETH_HLEN + 20..ETH_HLEN + 32], &opts);
        let r = &rest[0];
        assert_eq!(r[ETH_HLEN], 0x47, "20 + 8 bytes of header");
        assert_eq!(
            &r[ETH_HLEN + 20..ETH_HLEN + 28],
            &[0x83, 7, 4, 9, 9, 9, 9, 0]
        );
        assert_eq!(
            crate::pipeline::checksum::checksum(&r[ETH_HLEN..ETH_HLEN + 28]),
            0
        );
        let data: Vec<u8> = std::iter::once(&g[ETH_HLEN + 32..n])
            .chain(rest.iter().map(|r| &r[ETH_HLEN + 28..]))
            .flatten()
            .copied()
            .collect();
        assert_eq!(&data[8..], &payload[..1500], "UDP header + payload");
        // An offset that would overflow 16 bits is refused.
        let mut h = frame(17, [1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 0, &payload[..1500]);
        put16(&mut h, ETH_HLEN + 6, 8100);
        assert!(fragment_v4(&mut h, 1000).is_none());
        // Fits, or an MTU too small to carry anything: nothing to do.
        let mut small = frame(17, [1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 0, b"x");
        assert!(fragment_v4(&mut small, 1500).is_none());
        assert!(fragment_v4(&mut f, 27).is_none());
    }
}
