//! lvc's XDP steering program and the Rust mirror of its map types.
//!
//! The program itself is C (`src/bpf/lvc_xdp.c`), compiled by `build.rs` with
//! `clang -target bpf` and embedded here as [`XDP_OBJECT`]. Loading and
//! attaching it is the dataplane's job (`lvc_dataplane::io::steer`); this crate
//! only owns the object and the `#[repr(C)]` key/value layouts, so the two
//! sides of every map are defined exactly once each.

use std::net::IpAddr;

pub mod bench;

/// The compiled BPF object (ELF), aligned for aya's loader.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lvc_xdp.o"));

/// Name of the XDP program inside [`XDP_OBJECT`].
pub const PROGRAM_NAME: &str = "lvc_xdp";

/// A program that passes every frame (section `xdp`): what a veth peer
/// needs before frames redirected into its veth by XDP arrive (test labs).
pub static PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pass_xdp.o"));

/// Map names inside [`XDP_OBJECT`].
pub mod maps {
    /// Virtual services: [`EndpointKey`](super::EndpointKey) → [`ServiceValue`](super::ServiceValue).
    pub const VIPS: &str = "vips";
    /// The fullnat local address pool: traffic to these is lvc's.
    pub const SNAT: &str = "snat";
    /// Port ranges of the services of a VIP: [`AddrKey::with_proto`] →
    /// [`PortRanges`].
    pub const VIPRANGES: &str = "vipranges";
    /// VIP addresses by protocol: fragments to these are lvc's.
    pub const FRAGVIPS: &str = "fragvips";
    /// Interface slots: ifindex → slot in `xsks`.
    pub const IFSLOTS: &str = "ifslots";
    /// AF_XDP sockets, at `slot * MAX_QUEUES + rx queue`.
    pub const XSKS: &str = "xsks";
    /// Queues a dataplane serves (dropped, not passed, while their socket
    /// is gone).
    pub const HELD: &str = "held";
    /// Per-CPU counters, indexed by [`Stat`](super::Stat).
    pub const STATS: &str = "stats";
    /// Offloaded flows: [`FlowKey`](super::FlowKey) → [`FlowValue`](super::FlowValue).
    pub const FLOWS: &str = "flows";
    /// Offloaded flows the workers write themselves: an mmapped array of
    /// [`FLOW_SLOT_WORDS`](super::FLOW_SLOT_WORDS)-word slots (tag, key,
    /// value).
    pub const FLOWSLOTS: &str = "flowslots";
    /// The program's global holding `flowslots`' size - 1.
    pub const FLOW_MASK: &str = "flow_mask";
    /// One byte per `flowslots` slot saying whether it is worth reading,
    /// in lines of [`FLOW_HINT_LINE`](super::FLOW_HINT_LINE) bytes: an
    /// mmapped array the workers and the offload thread write.
    pub const FLOWHINTS: &str = "flowhints";
    /// Whether `flows` holds any flow (`u64`, 0 or not): XDP skips the
    /// hash map while it is empty.
    pub const FLOWSUSED: &str = "flowsused";
    /// Interface slot → ifindex, for redirects between served interfaces.
    pub const EGRESS: &str = "egress";
    /// Replies of tracked `nat` connections: fingerprints of their
    /// [`FlowKey`](super::FlowKey)s, an mmapped array the workers write.
    pub const REPLYSLOTS: &str = "replyslots";
    /// Replies of tracked `nat` connections that found no slot in
    /// `replyslots`: [`FlowKey`](super::FlowKey) → `u32` (unused).
    pub const REPLIES: &str = "replies";
    /// The program's global holding `replyslots`' size - 1.
    pub const REPLY_MASK: &str = "reply_mask";
    /// Fragmented `nat` replies whose later fragments follow their first.
    pub const FRAGREPLIES: &str = "fragreplies";
    /// Filter prefixes: an LPM trie of [`AclData`](super::AclData) → `u64`.
    pub const ACL: &str = "acl";
    /// Global filter rules by slot: [`FilterRuleValue`](super::FilterRuleValue).
    pub const FRULES: &str = "frules";
    /// The rules' order, two copies: [`FilterOrder`](super::FilterOrder).
    pub const FORDER: &str = "forder";
    /// [`FilterConf`](super::FilterConf) at index 0.
    pub const FCONF: &str = "fconf";
    /// Per-CPU [`FilterCount`](super::FilterCount) by rule slot.
    pub const FSTATS: &str = "fstats";
    /// Per-CPU [`FilterCount`](super::FilterCount) each service lost to
    /// filtering, by service id.
    pub const SVCDROPS: &str = "svcdrops";
}

/// Address family tags used in keys (not the libc `AF_*` numbers).
pub const FAMILY_INET: u8 = 4;
/// IPv6 family tag; the key layout already has room for it.
pub const FAMILY_INET6: u8 = 6;

/// Most interfaces one dataplane serves (`LVC_MAX_IFACES`).
pub const MAX_IFACES: u32 = 16;
/// Most rx queues per interface (`LVC_MAX_QUEUES`).
pub const MAX_QUEUES: u32 = 64;

/// Index in the `xsks` map of the socket for (interface slot, rx queue).
pub fn xsk_index(slot: u32, queue: u32) -> u32 {
    slot * MAX_QUEUES + queue
}

/// Key of the `vips` map: (family, protocol, port, address).
///
/// `port` and `addr` are in network byte order, as they appear on the wire.
/// Port 0 means "every port of this address".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub family: u8,
    pub proto: u8,
    pub port_be: u16,
    pub addr: [u32; 4],
}

impl EndpointKey {
    /// Builds a key from host-order port and a Rust address.
    pub fn new(addr: IpAddr, proto: u8, port: u16) -> Self {
        let (family, addr) = addr_words(addr);
        Self {
            family,
            proto,
            port_be: port.to_be(),
            addr,
        }
    }
}

/// Key of the address maps (`snat`, `fragvips`, `vipranges`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u32; 4],
}

impl AddrKey {
    pub fn new(addr: IpAddr) -> Self {
        let (family, addr) = addr_words(addr);
        Self {
            family,
            pad: [0; 3],
            addr,
        }
    }

    /// The key of the `fragvips` map: an address and a protocol.
    pub fn with_proto(addr: IpAddr, proto: u8) -> Self {
        let mut k = Self::new(addr);
        k.pad[0] = proto;
        k
    }
}

/// An offloaded flow's key (and a `nat` reply's, in `replies`): one direction's 5-tuple as it arrives
/// (`struct flow_key`; ports in network order, addresses as in
/// [`EndpointKey`]).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    zerocopy::IntoBytes,
    zerocopy::FromBytes,
    zerocopy::Immutable,
)]
pub struct FlowKey {
    pub family: u8,
    pub proto: u8,
    pub sport_be: u16,
    pub dport_be: u16,
    pub pad: u16,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

impl FlowKey {
    pub fn new(proto: u8, (src, sport): (IpAddr, u16), (dst, dport): (IpAddr, u16)) -> Self {
        let (family, saddr) = addr_words(src);
        Self {
            family,
            proto,
            sport_be: sport.to_be(),
            dport_be: dport.to_be(),
            pad: 0,
            saddr,
            daddr: addr_words(dst).1,
        }
    }
}

/// `flow_value.flags`: TTL / hop limit decremented (routed).
pub const FLOW_DEC_TTL: u8 = 1;
/// The source becomes (`saddr`, `sport`).
pub const FLOW_SNAT: u8 = 2;
/// The destination becomes (`daddr`, `dport`).
pub const FLOW_DNAT: u8 = 4;
/// Wrapped in IPIP from `saddr` to `daddr` (IPv4).
pub const FLOW_TUN: u8 = 8;

/// What XDP does with an offloaded flow's packets (`struct flow_value`),
/// and the counters it keeps: `packets`, `bytes`, `last_seen`
/// (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    zerocopy::IntoBytes,
    zerocopy::FromBytes,
    zerocopy::Immutable,
)]
pub struct FlowValue {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// Slot of the egress interface (its index in the `egress` devmap).
    pub egress: u32,
    pub egress_ifindex: u32,
    pub mtu: u16,
    pub flags: u8,
    pub pad: u8,
    /// TCP: the sequence number after the last byte seen of this
    /// direction (0: unknown); XDP keeps it up to date and checks a RST's
    /// or FIN's against it.
    pub seq_next: u32,
    pub packets: u64,
    pub bytes: u64,
    pub last_seen: u64,
}

/// 64-bit words of a `flowslots` slot (`struct flow_slot`): the tag, then
/// the [`FlowKey`], then the [`FlowValue`].
pub const FLOW_SLOT_WORDS: usize = 1 + (size_of::<FlowKey>() + size_of::<FlowValue>()) / 8;
const _: () =
    assert!(size_of::<FlowKey>().is_multiple_of(8) && size_of::<FlowValue>().is_multiple_of(8));
const _: () = assert!(FLOW_SLOT_WORDS == 17);

/// Bytes per element of `flowhints` (`FLOW_HINT_LINE`): a cache line of
/// slot hints.
pub const FLOW_HINT_LINE: usize = 64;

/// An address as the maps hold it: (family, four words in wire order).
pub fn addr_key_words(addr: IpAddr) -> (u8, [u32; 4]) {
    addr_words(addr)
}

/// Value of the `vips` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub id: u32,
    pub flags: u32,
}

/// Most port ranges per VIP address and protocol (`LVC_MAX_RANGES`).
pub const MAX_RANGES: usize = 16;

/// Value of the `vipranges` map: inclusive host-order port ranges, the
/// first `n` valid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRanges {
    pub n: u32,
    pub r: [(u16, u16); MAX_RANGES],
    /// The service of each range.
    pub v: [ServiceValue; MAX_RANGES],
}

impl PortRanges {
    /// `None` when there are more than [`MAX_RANGES`].
    pub fn new(ranges: &[((u16, u16), ServiceValue)]) -> Option<Self> {
        let mut v = Self {
            n: ranges.len() as u32,
            ..Self::default()
        };
        for (i, &(r, s)) in ranges.iter().enumerate() {
            *v.r.get_mut(i)? = r;
            v.v[i] = s;
        }
        Some(v)
    }
}

/// [`ServiceValue::flags`]: the service has allow or deny prefixes.
pub const SVC_ACL: u32 = 1;
/// [`ServiceValue::flags`]: ... and an allow list (only those clients).
pub const SVC_ALLOWLIST: u32 = 2;

/// Scopes of the `acl` trie: the global filter's source prefixes.
pub const ACL_SCOPE_SRC: u32 = 0;
/// The global filter's destination prefixes.
pub const ACL_SCOPE_DST: u32 = 1;
/// A service's allow/deny prefixes: this + its id.
pub const ACL_SCOPE_SERVICE: u32 = 2;
/// The bit of an `acl` scope that holds IPv6 prefixes (IPv4 ones, mapped,
/// in the scope without it: the families never mix).
pub const ACL_SCOPE_V6: u32 = 0x8000_0000;
/// `acl` values in a service's scope.
pub const ACL_ALLOW: u64 = 1;
pub const ACL_DENY: u64 = 2;

/// Most rules in the global filter (`LVC_MAX_RULES`).
pub const MAX_RULES: usize = 64;
/// Service ids the per-service drop counters have room for.
pub const MAX_SERVICE_IDS: u32 = 65_536;

/// The data of an `acl` key (after its prefix length): a scope and an
/// address, IPv4 as `::ffff:a.b.c.d`, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AclData {
    pub scope: u32,
    pub addr: [u8; 16],
}

impl AclData {
    /// The key data and the trie prefix length of prefix `addr/len` in
    /// `scope`.
    pub fn prefix(scope: u32, addr: IpAddr, len: u8) -> (Self, u32) {
        let (addr, bits, scope) = match addr {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), 96 + u32::from(len), scope),
            IpAddr::V6(a) => (a.octets(), u32::from(len), scope | ACL_SCOPE_V6),
        };
        (Self { scope, addr }, 32 + bits)
    }
}

/// `frules` actions.
pub const FR_DROP: u8 = 0;
pub const FR_ACCEPT: u8 = 1;
/// A `--real` rule: decided in userspace when a connection is made.
pub const FR_USERSPACE: u8 = 2;
/// `frules` flags: match the protocol, the destination port range, the
/// ingress interface.
pub const FR_PROTO: u8 = 1;
pub const FR_DPORT: u8 = 2;
pub const FR_IFACE: u8 = 4;

/// One global filter rule at its slot (`struct filter_rule`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterRuleValue {
    pub action: u8,
    pub proto: u8,
    pub flags: u8,
    pub pad: u8,
    pub dport_lo: u16,
    pub dport_hi: u16,
    pub ifindex: u32,
}

/// The rules' order and the match-everything masks (`struct filter_order`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterOrder {
    pub n: u32,
    pub slot: [u8; MAX_RULES],
    pub pad: u32,
    pub src_any4: u64,
    pub src_any6: u64,
    pub dst_any4: u64,
    pub dst_any6: u64,
}

impl Default for FilterOrder {
    fn default() -> Self {
        Self {
            n: 0,
            slot: [0; MAX_RULES],
            pad: 0,
            src_any4: 0,
            src_any6: 0,
            dst_any4: 0,
            dst_any6: 0,
        }
    }
}

/// `struct filter_conf`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterConf {
    /// 0: no rules; else 1 + the `forder` copy in use.
    pub active: u32,
    /// Services with allow/deny prefixes.
    pub acl_services: u32,
}

/// `struct filter_count`: what a rule matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterCount {
    pub packets: u64,
    pub bytes: u64,
}

fn addr_words(addr: IpAddr) -> (u8, [u32; 4]) {
    match addr {
        // Network order in memory: the octets as they are on the wire.
        IpAddr::V4(a) => (FAMILY_INET, [u32::from_ne_bytes(a.octets()), 0, 0, 0]),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            (FAMILY_INET6, [w(0), w(4), w(8), w(12)])
        }
    }
}

// SAFETY: plain `#[repr(C)]` structs of integers with no padding bytes
// (checked by the size assertions below), valid for every bit pattern.
unsafe impl aya::Pod for EndpointKey {}
// SAFETY: as above.
unsafe impl aya::Pod for AddrKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ServiceValue {}
// SAFETY: as above (a u32 then u16 pairs: no padding).
unsafe impl aya::Pod for PortRanges {}
// SAFETY: as above (field sizes add up to the struct's, asserted below).
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for AclData {}
// SAFETY: as above.
unsafe impl aya::Pod for FilterRuleValue {}
// SAFETY: as above (4 + 64 + 4 bytes, then u64s at offset 72).
unsafe impl aya::Pod for FilterOrder {}
// SAFETY: as above.
unsafe impl aya::Pod for FilterConf {}
// SAFETY: as above.
unsafe impl aya::Pod for FilterCount {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowValue {}

const _: () = assert!(size_of::<EndpointKey>() == 20);
const _: () = assert!(size_of::<AddrKey>() == 20);
const _: () = assert!(size_of::<ServiceValue>() == 8);
const _: () = assert!(size_of::<PortRanges>() == 4 + 4 * MAX_RANGES + 8 * MAX_RANGES);
const _: () = assert!(size_of::<AclData>() == 20);
const _: () = assert!(size_of::<FilterRuleValue>() == 12);
const _: () = assert!(size_of::<FilterOrder>() == 4 + MAX_RULES + 4 + 32);
const _: () = assert!(size_of::<FilterConf>() == 8);
const _: () = assert!(size_of::<FilterCount>() == 16);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<FlowValue>() == 16 + 16 + 4 + 12 + 8 + 2 + 1 + 5 + 24);

/// Indexes of the program's per-CPU counters (`enum lvc_stat` in the C source).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    Rx = 0,
    PassNotIp,
    PassMalformed,
    PassFragment,
    PassOtherProto,
    PassNoMatch,
    PassNoSocket,
    RedirectVip,
    RedirectReal,
    FlowForwarded,
    FlowToLvc,
    DropNoDataplane,
    FlowOutOfWindow,
    DropFilter,
    DropServiceAcl,
}

impl Stat {
    /// Every counter, in index order.
    pub const ALL: [Stat; 15] = [
        Stat::Rx,
        Stat::PassNotIp,
        Stat::PassMalformed,
        Stat::PassFragment,
        Stat::PassOtherProto,
        Stat::PassNoMatch,
        Stat::PassNoSocket,
        Stat::RedirectVip,
        Stat::RedirectReal,
        Stat::FlowForwarded,
        Stat::FlowToLvc,
        Stat::DropNoDataplane,
        Stat::FlowOutOfWindow,
        Stat::DropFilter,
        Stat::DropServiceAcl,
    ];

    /// A stable snake_case name for listings and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Stat::Rx => "rx",
            Stat::PassNotIp => "pass_not_ip",
            Stat::PassMalformed => "pass_malformed",
            Stat::PassFragment => "pass_fragment",
            Stat::PassOtherProto => "pass_other_proto",
            Stat::PassNoMatch => "pass_no_match",
            Stat::PassNoSocket => "pass_no_socket",
            Stat::RedirectVip => "redirect_vip",
            Stat::RedirectReal => "redirect_real",
            Stat::FlowForwarded => "flow_forwarded",
            Stat::FlowToLvc => "flow_to_lvc",
            Stat::DropNoDataplane => "drop_no_dataplane",
            Stat::FlowOutOfWindow => "flow_out_of_window",
            Stat::DropFilter => "drop_filter",
            Stat::DropServiceAcl => "drop_service_acl",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn key_bytes_are_wire_order() {
        let k = EndpointKey::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 6, 80);
        assert_eq!((k.family, k.proto), (FAMILY_INET, 6));
        assert_eq!(k.port_be.to_ne_bytes(), [0, 80]);
        assert_eq!(k.addr[0].to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(&k.addr[1..], &[0, 0, 0]);
    }

    #[test]
    fn object_is_a_bpf_elf() {
        assert_eq!(&XDP_OBJECT[..4], b"\x7fELF");
        // e_machine == EM_BPF (247)
        assert_eq!(u16::from_le_bytes([XDP_OBJECT[18], XDP_OBJECT[19]]), 247);
    }
}
