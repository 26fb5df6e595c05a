// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// lvc XDP steering program.
//
// Decides, for every frame received on an interface lvc serves, whether the
// frame belongs to lvc (then it goes to the AF_XDP socket bound to the frame's
// rx queue) or to the kernel (everything else, untouched).
//
// A frame belongs to lvc when it is IPv4 or IPv6 TCP/UDP (IPv6: right after
// the fixed header or after one fragment header) and
//   * its destination (address, port, protocol) is a virtual service
//     (`vips` for the exact port first, then the VIP's port ranges in
//     `vipranges`, then port 0 = "every port of this VIP" in `vips`), or
//   * its destination is a fullnat local pool address (`snat`), or
//   * it is the reply of a `nat` connection lvc tracks (`replies`, keyed by
//     the reply's 5-tuple: the worker that schedules a connection puts its
//     reply key there before it sends the first packet on), so a real
//     server's other traffic from the same port — its own DNS queries from
//     port 53, the director's own connections to it — stays the kernel's,
// or a fragment of a datagram to a VIP or pool address or of such a reply,
// or an ICMP/ICMPv6 error about such a flow (see icmp_steer).
//
// Before any of that, a TCP/UDP packet of an established flow that the
// dataplane offloaded (`flows`, keyed by the packet's 5-tuple) is rewritten
// here from the flow's translation — addresses, ports, TTL, MACs, IPIP for
// `tun` — and sent on (XDP_TX, or a redirect through `egress` to another
// served interface), never reaching userspace. Anything unusual goes the
// usual way to lvc: TCP SYN/FIN/RST (lvc sees a connection's start and
// end), TTL/hop limit ≤ 1, too big for the egress MTU, IPv4 options,
// fragments, a tunnelled packet with DF clear (its outer header needs a
// fresh IP id).
//
// If no socket is bound on the rx queue the frame is passed, never dropped:
// a dataplane that is starting or stopping must not black-hole VIP traffic.
//
// The key layouts are mirrored in ../lib.rs (`EndpointKey`, `AddrKey`,
// `ServiceValue`) and leave room for IPv6 (16-byte addresses + family).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// Defined here instead of <linux/tcp.h>/<linux/udp.h>-style includes that
// can pull in libc headers; only the port fields are read.
struct l4_ports {
	__be16 source;
	__be16 dest;
};

#define LVC_AF_INET 4
#define LVC_AF_INET6 6

#define LVC_MAX_IFACES 16
#define LVC_MAX_QUEUES 64

#define TCP_MIN_HLEN 20
#define UDP_HLEN 8

#define IP_MF 0x2000
#define IPPROTO_ICMPV6_HDR 58
#define IP_OFFSET 0x1fff

// Keep in sync with `Stat` in lib.rs.
enum lvc_stat {
	STAT_RX = 0,            // every frame seen
	STAT_PASS_NOT_IP,       // ARP, VLAN, other ethertypes
	STAT_PASS_MALFORMED,    // truncated or impossible headers
	STAT_PASS_FRAGMENT,     // fragments not to a VIP or pool address
	STAT_PASS_OTHER_PROTO,  // neither TCP nor UDP nor an ICMP error (IPv6:
	                        // also extension headers other than one fragment
	                        // header, and ICMPv6 but errors — NDP included)
	STAT_PASS_NO_MATCH,     // TCP/UDP not for a VIP and no tracked reply
	STAT_PASS_NO_SOCKET,    // matched, but no AF_XDP socket on this queue
	STAT_REDIRECT_VIP,      // matched a VIP, redirected
	STAT_REDIRECT_REAL,     // a nat reply or to a pool address, redirected
	STAT_FLOW_FORWARDED,    // an offloaded flow's packet, sent on by XDP
	STAT_FLOW_TO_LVC,       // an offloaded flow's packet that lvc must see
	STAT_DROP_NO_DATAPLANE, // for a served queue whose socket is gone: the
	                        // dataplane died and is expected back
	STAT_FLOW_OUT_OF_WINDOW, // an offloaded flow's RST or FIN far from its
	                         // stream (a blind guess): forwarded, not shown
	                         // to lvc (dropped if XDP cannot forward it)
	STAT_DROP_FILTER,       // dropped by a global filter rule
	STAT_DROP_SERVICE_ACL,  // dropped by a service's allow/deny lists
	STAT_MAX,
};

struct endpoint_key {
	__u8 family; // LVC_AF_INET or LVC_AF_INET6
	__u8 proto;  // IPPROTO_TCP / IPPROTO_UDP
	__be16 port; // network order; 0 = every port (VIPs only)
	__u32 addr[4]; // IPv4 in addr[0] (network order), rest zero
};

struct addr_key {
	__u8 family;
	__u8 pad[3];
	__u32 addr[4];
};

#define SVC_ACL 1       // the service has allow or deny prefixes
#define SVC_ALLOWLIST 2 // ... and an allow list: only those clients

struct service_value {
	__u32 id;    // the service's number (scope of its prefixes in `acl`)
	__u32 flags; // SVC_*
};

#define LVC_MAX_RANGES 16

// Port ranges of the services of one VIP address and protocol, host order,
// inclusive; the first `n` are valid.
struct port_ranges {
	__u32 n;
	struct {
		__u16 lo;
		__u16 hi;
	} r[LVC_MAX_RANGES];
	struct service_value v[LVC_MAX_RANGES]; // the service of each range
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct endpoint_key);
	__type(value, struct service_value);
} vips SEC(".maps");


// Services that cover port ranges (`VIP:1024-65535`), by VIP address and
// protocol (addr_key with pad[0] = protocol).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct addr_key);
	__type(value, struct port_ranges);
} vipranges SEC(".maps");

// VIP addresses by protocol (addr_key with pad[0] = protocol): fragments
// of datagrams to a VIP go to lvc, which remembers where each datagram's
// first fragment went and sends the rest after it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct addr_key);
	__type(value, __u32);
} fragvips SEC(".maps");

// Packet filtering (mirrored in ../lib.rs and io/steer.rs).
//
// Prefixes live in one LPM trie, `acl`, keyed by a 32-bit scope and a
// 16-byte address (IPv4 as ::ffff:a.b.c.d, so families never mix):
//   * scope ACL_SCOPE_SRC / ACL_SCOPE_DST: the global filter's source and
//     destination prefixes; the value is the set of rule slots (a bit per
//     rule, 64 at most) whose prefix list holds the key's prefix or a
//     shorter one containing it, so the longest match alone answers "which
//     rules' address lists hold this address";
//   * scope ACL_SCOPE_SERVICE + service id: a service's allow (ACL_ALLOW)
//     and deny (ACL_DENY) prefixes; the longest match decides.
struct acl_key {
	__u32 prefixlen; // 32 (the scope) + address bits
	__u32 scope;
	__u32 addr[4];
};

#define ACL_SCOPE_SRC 0
#define ACL_SCOPE_DST 1
#define ACL_SCOPE_SERVICE 2
#define ACL_ALLOW 1
#define ACL_DENY 2

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 22);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct acl_key);
	__type(value, __u64);
} acl SEC(".maps");

#define LVC_MAX_RULES 64

#define FR_DROP 0
#define FR_ACCEPT 1
#define FR_USERSPACE 2 // a `--real` rule: decided when a connection is made

#define FR_PROTO 1 // match `proto`
#define FR_DPORT 2 // match dport_lo..=dport_hi (TCP/UDP only)
#define FR_IFACE 4 // match the ingress interface

// One rule of the global filter, at its slot (stable while it lives).
struct filter_rule {
	__u8 action; // FR_DROP, FR_ACCEPT, FR_USERSPACE
	__u8 proto;
	__u8 flags; // FR_*
	__u8 pad;
	__u16 dport_lo; // host order
	__u16 dport_hi;
	__u32 ifindex;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LVC_MAX_RULES);
	__type(key, __u32);
	__type(value, struct filter_rule);
} frules SEC(".maps");

// The rules in the order they are looked at (slots, prio order), and the
// rules that match every source / destination of a family (no list, or a
// /0). Two copies: the dataplane writes the one not in use and then flips
// `fconf.active`, so a packet never sees half an order.
struct filter_order {
	__u32 n;
	__u8 slot[LVC_MAX_RULES];
	__u32 pad;
	__u64 src_any4;
	__u64 src_any6;
	__u64 dst_any4;
	__u64 dst_any6;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct filter_order);
} forder SEC(".maps");

struct filter_conf {
	__u32 active;       // 0: no rules; else 1 + the `forder` copy in use
	__u32 acl_services; // services with allow/deny prefixes
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct filter_conf);
} fconf SEC(".maps");

struct filter_count {
	__u64 packets;
	__u64 bytes;
};

// What each rule slot matched (drop and accept rules).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LVC_MAX_RULES);
	__type(key, __u32);
	__type(value, struct filter_count);
} fstats SEC(".maps");

// What each service lost to the filter or its own lists, by service id.
#define LVC_MAX_SERVICE_IDS 65536
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LVC_MAX_SERVICE_IDS);
	__type(key, __u32);
	__type(value, struct filter_count);
} svcdrops SEC(".maps");

// An offloaded flow: the 5-tuple of one direction as it arrives.
struct flow_key {
	__u8 family;
	__u8 proto;
	__be16 sport;
	__be16 dport;
	__u16 pad;
	__u32 saddr[4];
	__u32 daddr[4];
};

#define FLOW_DEC_TTL 1 // routed: TTL / hop limit decremented
#define FLOW_SNAT 2    // source becomes (saddr, sport)
#define FLOW_DNAT 4    // destination becomes (daddr, dport)
#define FLOW_TUN 8     // wrapped in IPIP from saddr[0] to daddr[0]

// What XDP does with an offloaded flow's packets (mirrored by `FlowValue`
// in ../lib.rs), and the counters it keeps for the dataplane.
struct flow_value {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 smac[6];
	__u8 dmac[6];
	__u32 egress;         // slot of the egress interface in `egress`
	__u32 egress_ifindex; // the same interface (XDP_TX when it is the ingress)
	__u16 mtu;            // the egress link's MTU
	__u8 flags;
	__u8 pad;
	__u32 seq_next; // TCP: after the last byte seen of this direction (0: unknown)
	__u64 packets;
	__u64 bytes;
	__u64 last_seen; // bpf_ktime_get_ns() of the last packet
};

// Sized by the dataplane at load time (2 x its connection table); entries
// are allocated as flows are offloaded, not preallocated: the map costs
// memory in proportion to the flows it holds.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

// Offloaded flows the workers installed themselves, without a syscall:
// an open-addressing table in memory the daemon maps (`io::flowslots`),
// each slot a tag, the key and the value, probed linearly for at most
// FLOW_PROBES slots from the key's flow_hash. A tag is 0 (empty: a lookup
// stops), a fingerprint with bit 1 set (the key's flow_hash | 2: a live
// flow), or anything else with bit 1 clear (deleted, or being written: a
// lookup goes on). A worker claims a free slot with a compare-and-swap,
// writes key and value, then the fingerprint; a deleted slot is reused only
// seconds later, long after any packet that read it is gone. Flows that
// find no slot go to `flows` by syscall (the offload thread), looked up
// after a miss here.
#define FLOW_PROBES 8

struct flow_slot {
	__u64 tag;
	struct flow_key key;
	struct flow_value value;
};

// Slots in `flowslots` - 1 (a power of two - 1), set by the loader.
const volatile __u32 flow_mask = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct flow_slot);
} flowslots SEC(".maps");

// One byte per slot of `flowslots`, in lines of FLOW_HINT_LINE, that says
// whether the slot is worth reading: 0 the slot is empty (a lookup stops),
// 1 it holds no live flow (a lookup goes on), else 0x80 | the top 7 bits of
// the live flow's flow_hash. A packet of a flow XDP does not forward (every
// new flow's first packet, every packet of a flow lvc keeps) reads 1 cache
// line of this dense array instead of a 136-byte slot of a table of up to
// 34 MiB: a TLB miss as well as a cache miss per packet, which under
// overload the program paid for every packet it then dropped. The writers
// of a slot's tag write its hint after it (`io::flowslots`); a stale hint
// only sends a packet to lvc or makes a lookup read a slot, since the tag is
// what decides.
#define FLOW_HINT_LINE 64

struct flow_hint_line {
	__u8 hint[FLOW_HINT_LINE];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, (1 << 18) / FLOW_HINT_LINE);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct flow_hint_line);
} flowhints SEC(".maps");

// Flows in `flows` (0 or not; the offload thread sets it before the first
// goes in and clears it once the last is out): a lookup there is skipped
// while the map is empty, which it is unless `flowslots` overflowed.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} flowsused SEC(".maps");

// Replies of the `nat` connections lvc tracks, by their 5-tuple as they
// arrive from the real server. Workers write new connections' reply keys
// straight into `replyslots`, memory they share with this program (no
// syscall per connection): an open-addressing table of 64-bit fingerprints
// of the key (flow_hash), probed linearly for at most REPLY_PROBES slots
// from the fingerprint's index. 0 is an empty slot, 1 a deleted one. A key
// that finds no free slot in its window goes to `replies`, a hash map
// written by syscall (rare: the table has twice the slots of the
// connection table). Mirrored by `io::replymap` in the dataplane.
#define REPLY_PROBES 8
#define REPLY_EMPTY 0
#define REPLY_DELETED 1

// Slots in `replyslots` - 1 (a power of two - 1), set by the loader.
const volatile __u32 reply_mask = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 21);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} replyslots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, __u32);
} replies SEC(".maps");

// A fragmented datagram: source, destination, protocol and IP id (IPv6:
// the fragment header's id).
struct frag_key {
	__u8 family;
	__u8 proto;
	__u16 pad;
	__u32 id;
	__u32 saddr[4];
	__u32 daddr[4];
};

// Fragmented `nat` replies whose first fragment matched `replies`: their
// later fragments (which carry no ports) follow it to lvc. Least recently
// used entries make room (a datagram's fragments arrive within moments).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct frag_key);
	__type(value, __u32);
} fragreplies SEC(".maps");

// Interface slot -> ifindex, for redirects between served interfaces.
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, LVC_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} egress SEC(".maps");

// The fullnat local address pool: replies to these addresses are lvc's
// (the addresses are dedicated to lvc; the kernel still answers ARP).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct addr_key);
	__type(value, __u32);
} snat SEC(".maps");

// ifindex -> slot of that interface in `xsks` (0..LVC_MAX_IFACES).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LVC_MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
} ifslots SEC(".maps");

// AF_XDP sockets at slot * LVC_MAX_QUEUES + rx queue: one XSKMAP serves
// every interface the program is attached to.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, LVC_MAX_IFACES * LVC_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// Queues a dataplane serves (marked with their socket, same index as
// `xsks`). A served queue without a socket means the dataplane died while
// its link stayed pinned (it is expected back, and takes its connections
// over): that traffic is dropped, not passed to the kernel, which would
// forward nat replies untranslated; TCP sends it again.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LVC_MAX_IFACES * LVC_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} held SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline int pass(__u32 reason)
{
	count(reason);
	return XDP_PASS;
}

static __always_inline int to_socket(struct xdp_md *ctx, __u32 reason)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *slot = bpf_map_lookup_elem(&ifslots, &ifindex);
	if (!slot || ctx->rx_queue_index >= LVC_MAX_QUEUES)
		return pass(STAT_PASS_NO_SOCKET);
	__u32 q = *slot * LVC_MAX_QUEUES + ctx->rx_queue_index;
	if (!bpf_map_lookup_elem(&xsks, &q)) {
		__u32 *h = bpf_map_lookup_elem(&held, &q);
		if (h && *h) {
			count(STAT_DROP_NO_DATAPLANE);
			return XDP_DROP;
		}
		return pass(STAT_PASS_NO_SOCKET);
	}
	count(reason);
	// XDP_PASS as the fallback action: should the socket go away between
	// the lookup and the redirect, the kernel gets the frame.
	return bpf_redirect_map(&xsks, q, XDP_PASS);
}

// The virtual service of (proto, addr, port) — port in network order, addr
// as in keys: exact port, then a port range of the VIP, then port 0. 1 with
// the service in *out, or 0.
static __always_inline int find_service(__u8 family, __u8 proto, const __u32 *addr, __be16 port,
					struct service_value *out)
{
	struct endpoint_key key = {};
	key.family = family;
	key.proto = proto;
	key.port = port;
	__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	struct service_value *sv = bpf_map_lookup_elem(&vips, &key);
	if (sv) {
		*out = *sv;
		return 1;
	}
	struct addr_key vip = {};
	vip.family = family;
	vip.pad[0] = proto;
	__builtin_memcpy(vip.addr, addr, sizeof(vip.addr));
	struct port_ranges *pr = bpf_map_lookup_elem(&vipranges, &vip);
	if (pr) {
		__u16 p = bpf_ntohs(port);
		for (int i = 0; i < LVC_MAX_RANGES; i++) {
			if (i >= pr->n)
				break;
			if (p >= pr->r[i].lo && p <= pr->r[i].hi) {
				*out = pr->v[i];
				return 1;
			}
		}
	}
	key.port = 0;
	sv = bpf_map_lookup_elem(&vips, &key);
	if (sv) {
		*out = *sv;
		return 1;
	}
	return 0;
}

static __always_inline int is_vip(__u8 family, __u8 proto, const __u32 *addr, __be16 port)
{
	struct service_value sv;
	return find_service(family, proto, addr, port, &sv);
}

// Whether any filtering is configured (rules or a service's lists).
static __always_inline struct filter_conf *filtering(void)
{
	__u32 zero = 0;
	struct filter_conf *fc = bpf_map_lookup_elem(&fconf, &zero);
	if (fc && (fc->active || fc->acl_services))
		return fc;
	return NULL;
}

// IPv6 prefixes live in the scope with this bit set: an IPv6 prefix such
// as ::/8 must never hold an IPv4 (mapped) address, nor the reverse.
#define ACL_SCOPE_V6 0x80000000u

// The longest `acl` prefix of `scope` holding addr (as in keys), or NULL.
static __always_inline __u64 *acl_match(__u32 scope, __u8 family, const __u32 *addr)
{
	struct acl_key k = {};
	k.prefixlen = 32 + 128;
	k.scope = family == LVC_AF_INET6 ? scope | ACL_SCOPE_V6 : scope;
	if (family == LVC_AF_INET) {
		k.addr[2] = bpf_htonl(0xffff);
		k.addr[3] = addr[0];
	} else {
		__builtin_memcpy(k.addr, addr, sizeof(k.addr));
	}
	return bpf_map_lookup_elem(&acl, &k);
}

// The filter's verdict on a packet to a VIP address: 1 to drop it. `dport`
// in host order (has_port 0: none, as in a later fragment, which a port
// rule is taken to match: its datagram's first fragment decided, and lvc
// forwards a later fragment only after a first one it forwarded); `svc`:
// its service, NULL if none is known (ICMP, a later fragment); `icmp`: an
// ICMP/ICMPv6 packet, which only rules naming its protocol look at (a
// plain source rule must not break neighbour discovery or path MTU
// errors). The global rules go first, in order, the first that matches
// deciding (a `--real` rule ends the walk here: lvc decides when it
// schedules the connection); then the service's allow/deny lists. Drops
// are counted per rule and per service.
static __always_inline int filter_drop(struct xdp_md *ctx, struct filter_conf *fc, __u8 family,
				       __u8 proto, const __u32 *saddr, const __u32 *daddr,
				       __u16 dport, int has_port, int icmp,
				       const struct service_value *svc)
{
	__u64 len = (__u64)(ctx->data_end - ctx->data);
	int drop = 0;
	__u32 copy = fc->active - 1;
	struct filter_order *o = fc->active ? bpf_map_lookup_elem(&forder, &copy) : NULL;
	if (o && o->n) {
		__u64 m = family == LVC_AF_INET ? o->src_any4 : o->src_any6;
		__u64 *v = acl_match(ACL_SCOPE_SRC, family, saddr);
		if (v)
			m |= *v;
		if (m) {
			__u64 d = family == LVC_AF_INET ? o->dst_any4 : o->dst_any6;
			v = acl_match(ACL_SCOPE_DST, family, daddr);
			if (v)
				d |= *v;
			m &= d;
		}
		for (__u32 i = 0; i < LVC_MAX_RULES && m; i++) {
			if (i >= o->n)
				break;
			__u32 slot = o->slot[i] & (LVC_MAX_RULES - 1);
			if (!(m & (1ULL << slot)))
				continue;
			struct filter_rule *r = bpf_map_lookup_elem(&frules, &slot);
			if (!r)
				continue;
			if ((r->flags & FR_PROTO) ? r->proto != proto : icmp)
				continue;
			if ((r->flags & FR_DPORT) && has_port &&
			    (dport < r->dport_lo || dport > r->dport_hi))
				continue;
			if ((r->flags & FR_IFACE) && r->ifindex != ctx->ingress_ifindex)
				continue;
			if (r->action == FR_USERSPACE)
				break;
			struct filter_count *c = bpf_map_lookup_elem(&fstats, &slot);
			if (c) {
				c->packets += 1;
				c->bytes += len;
			}
			if (r->action == FR_DROP) {
				count(STAT_DROP_FILTER);
				drop = 1;
			}
			break;
		}
	}
	if (!drop && svc && (svc->flags & SVC_ACL)) {
		__u64 *v = acl_match(ACL_SCOPE_SERVICE + svc->id, family, saddr);
		if (v ? *v == ACL_DENY : (svc->flags & SVC_ALLOWLIST) != 0) {
			count(STAT_DROP_SERVICE_ACL);
			drop = 1;
		}
	}
	if (drop && svc) {
		__u32 id = svc->id;
		struct filter_count *n = bpf_map_lookup_elem(&svcdrops, &id);
		if (n) {
			n->packets += 1;
			n->bytes += len;
		}
	}
	return drop;
}

// The filter for a TCP/UDP packet (first fragment or whole) to a VIP
// service: 1 to drop. Addresses as in keys, port in network order. `*vip`
// learns whether the destination is a service (1 or 0) when the filter
// had to find out; it stays -1 (unknown) when nothing is filtered.
static __always_inline int filter_l4(struct xdp_md *ctx, __u8 family, __u8 proto,
				     const __u32 *saddr, const __u32 *daddr, __be16 dport,
				     int *vip)
{
	struct filter_conf *fc = filtering();
	if (!fc)
		return 0;
	struct service_value sv;
	*vip = find_service(family, proto, daddr, dport, &sv);
	if (!*vip)
		return 0;
	return filter_drop(ctx, fc, family, proto, saddr, daddr, bpf_ntohs(dport), 1, 0, &sv);
}

// The filter for a packet to a VIP address without a service or ports
// (ICMP, a later fragment): the global rules only.
static __always_inline int filter_addr(struct xdp_md *ctx, __u8 family, __u8 proto,
				       const __u32 *saddr, const __u32 *daddr)
{
	struct filter_conf *fc = filtering();
	if (!fc || !fc->active)
		return 0;
	struct addr_key vip = {};
	vip.family = family;
	vip.pad[0] = IPPROTO_TCP;
	__builtin_memcpy(vip.addr, daddr, sizeof(vip.addr));
	if (!bpf_map_lookup_elem(&fragvips, &vip)) {
		vip.pad[0] = IPPROTO_UDP;
		if (!bpf_map_lookup_elem(&fragvips, &vip))
			return 0;
	}
	int icmp = proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6_HDR;
	return filter_drop(ctx, fc, family, proto, saddr, daddr, 0, 0, icmp, NULL);
}

// The 64-bit hash of a flow key, over its ten 32-bit words as they lie in
// memory (word-wise FNV-1a, then murmur3's finaliser); the dataplane
// computes the same (`replymap::flow_hash`).
static __always_inline __u64 flow_hash(const struct flow_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u64 h = 0xcbf29ce484222325ULL;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*k) / 4); i++) {
		h ^= w[i];
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

// The offloaded flow of key `k`: in `flowslots`, else in `flows`; NULL if
// neither holds it.
static __always_inline struct flow_value *flow_find(const struct flow_key *k)
{
	__u64 h = flow_hash(k);
	__u64 fp = h | 2;
	__u8 hfp = 0x80 | (__u8)(h >> 57);
	const __u32 *kw = (const __u32 *)k;
	for (__u32 i = 0; i < FLOW_PROBES; i++) {
		__u32 idx = ((__u32)h + i) & flow_mask;
		__u32 line = idx / FLOW_HINT_LINE;
		struct flow_hint_line *hl = bpf_map_lookup_elem(&flowhints, &line);
		if (!hl)
			break;
		__u8 hint = *(volatile __u8 *)&hl->hint[idx % FLOW_HINT_LINE];
		if (hint == 0)
			break;
		if (hint != hfp)
			continue;
		struct flow_slot *s = bpf_map_lookup_elem(&flowslots, &idx);
		if (!s)
			break;
		__u64 tag = *(volatile __u64 *)&s->tag;
		if (tag == fp) {
			// (Key and value were written before the tag: read after it.)
			asm volatile("" ::: "memory");
			const __u32 *sw = (const __u32 *)&s->key;
			__u32 diff = 0;
#pragma unroll
			for (int j = 0; j < (int)(sizeof(*k) / 4); j++)
				diff |= sw[j] ^ kw[j];
			if (!diff)
				return &s->value;
		}
		if (tag == 0)
			break;
	}
	__u32 zero = 0;
	__u64 *used = bpf_map_lookup_elem(&flowsused, &zero);
	if (!used || !*(volatile __u64 *)used)
		return NULL;
	return bpf_map_lookup_elem(&flows, k);
}

// Whether (saddr, sport) -> (daddr, dport) is the reply of a tracked `nat`
// connection. Addresses as in keys, ports in network order.
static __always_inline int is_reply(__u8 family, __u8 proto, const __u32 *saddr, __be16 sport,
				    const __u32 *daddr, __be16 dport)
{
	struct flow_key k = {};
	k.family = family;
	k.proto = proto;
	k.sport = sport;
	k.dport = dport;
	__builtin_memcpy(k.saddr, saddr, sizeof(k.saddr));
	__builtin_memcpy(k.daddr, daddr, sizeof(k.daddr));
	__u64 h = flow_hash(&k);
	// Never 0 or 1 (empty, deleted).
	__u64 fp = h | 2;
	for (__u32 i = 0; i < REPLY_PROBES; i++) {
		__u32 idx = ((__u32)h + i) & reply_mask;
		__u64 *slot = bpf_map_lookup_elem(&replyslots, &idx);
		if (!slot)
			break;
		__u64 v = *(volatile __u64 *)slot;
		if (v == fp)
			return 1;
		if (v == REPLY_EMPTY)
			break;
	}
	return bpf_map_lookup_elem(&replies, &k) != NULL;
}

// Type and code of an ICMP header; the rest is not read here.
struct icmp_head {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 rest;
};

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

// ICMP errors about a flow lvc tracks go to lvc, which translates them:
// errors about replies that left from a VIP (the quoted source is a VIP
// endpoint), errors from nat real servers about requests (the quoted
// packet, turned round, is a tracked reply), and errors to a fullnat pool
// address. Addresses as in keys; `daddr` is the error's destination.
static __always_inline int icmp_steer(struct xdp_md *ctx, __u8 family, __u8 proto,
				      const __u32 *daddr, const __u32 *inner_saddr,
				      const __u32 *inner_daddr, const struct l4_ports *ports)
{
	struct addr_key dst = {};
	dst.family = family;
	__builtin_memcpy(dst.addr, daddr, sizeof(dst.addr));
	if (bpf_map_lookup_elem(&snat, &dst))
		return to_socket(ctx, STAT_REDIRECT_REAL);

	if (is_vip(family, proto, inner_saddr, ports->source))
		return to_socket(ctx, STAT_REDIRECT_VIP);

	if (is_reply(family, proto, inner_daddr, ports->dest, inner_saddr, ports->source))
		return to_socket(ctx, STAT_REDIRECT_REAL);
	return pass(STAT_PASS_NO_MATCH);
}

// IPv4 ICMP: destination unreachable, time exceeded and parameter problem
// quoting TCP/UDP go through icmp_steer. Everything else ICMP — echo
// requests to a VIP included — is the kernel's.
static __always_inline int icmp_error(struct xdp_md *ctx, struct iphdr *ip, __u32 ihl, void *data_end)
{
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return pass(STAT_PASS_FRAGMENT);
	struct icmp_head *icmp = (void *)ip + ihl;
	if ((void *)(icmp + 1) > data_end)
		return pass(STAT_PASS_MALFORMED);
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED &&
	    icmp->type != ICMP_PARAMETERPROB)
		return pass(STAT_PASS_OTHER_PROTO);
	struct iphdr *inner = (void *)(icmp + 1);
	if ((void *)(inner + 1) > data_end)
		return pass(STAT_PASS_MALFORMED);
	if (inner->ihl < 5)
		return pass(STAT_PASS_MALFORMED);
	__u32 inner_ihl = inner->ihl * 4;
	struct l4_ports *ports = (void *)inner + inner_ihl;
	if ((void *)(ports + 1) > data_end)
		return pass(STAT_PASS_MALFORMED);
	if (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP)
		return pass(STAT_PASS_OTHER_PROTO);

	__u32 daddr[4] = {ip->daddr, 0, 0, 0};
	__u32 inner_src[4] = {inner->saddr, 0, 0, 0};
	__u32 inner_dst[4] = {inner->daddr, 0, 0, 0};
	return icmp_steer(ctx, LVC_AF_INET, inner->protocol, daddr, inner_src, inner_dst, ports);
}

#define IPPROTO_FRAGMENT_HDR 44
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4

// The IPv6 fragment header (RFC 8200 §4.5).
struct frag6_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; // offset in 8-byte units << 3, M flag in bit 0
	__be32 id;
};

// ICMPv6 errors (destination unreachable, packet too big, time exceeded,
// parameter problem) quoting TCP/UDP right after the quoted fixed header
// go through icmp_steer; the rest of ICMPv6 — neighbour discovery, echo,
// MLD — is the kernel's.
static __always_inline int icmp6_error(struct xdp_md *ctx, struct ipv6hdr *ip6, void *data_end)
{
	struct icmp_head *icmp = (void *)(ip6 + 1);
	if ((void *)(icmp + 1) > data_end)
		return pass(STAT_PASS_MALFORMED);
	if (icmp->type < ICMPV6_DEST_UNREACH || icmp->type > ICMPV6_PARAMPROB)
		return pass(STAT_PASS_OTHER_PROTO);
	struct ipv6hdr *inner = (void *)(icmp + 1);
	if ((void *)(inner + 1) > data_end)
		return pass(STAT_PASS_MALFORMED);
	if (inner->nexthdr != IPPROTO_TCP && inner->nexthdr != IPPROTO_UDP)
		return pass(STAT_PASS_OTHER_PROTO);
	struct l4_ports *ports = (void *)(inner + 1);
	if ((void *)(ports + 1) > data_end)
		return pass(STAT_PASS_MALFORMED);
	__u32 daddr[4], inner_src[4], inner_dst[4];
	__builtin_memcpy(daddr, &ip6->daddr, sizeof(daddr));
	__builtin_memcpy(inner_src, &inner->saddr, sizeof(inner_src));
	__builtin_memcpy(inner_dst, &inner->daddr, sizeof(inner_dst));
	return icmp_steer(ctx, LVC_AF_INET6, inner->nexthdr, daddr, inner_src, inner_dst, ports);
}

// A fragment of a datagram to a VIP address (any port, this protocol) or
// to a fullnat pool address is lvc's; lvc remembers where each datagram's
// first fragment went and sends the rest after it. So is a fragmented nat
// reply: its first fragment (offset 0, which carries the ports, `ports`
// non-NULL) matches `replies`, and its datagram is remembered in
// `fragreplies` for the later ones. Every other fragment is the kernel's
// (a later fragment that overtakes its first too: the kernel forwards it
// untranslated and the client cannot reassemble the datagram — as when any
// fragment is lost). Addresses as in keys.
static __always_inline int steer_fragment(struct xdp_md *ctx, __u8 family, __u8 proto,
					  const __u32 *saddr, const __u32 *daddr, __u32 id,
					  const struct l4_ports *ports)
{
	struct addr_key vip = {};
	vip.family = family;
	vip.pad[0] = proto;
	__builtin_memcpy(vip.addr, daddr, sizeof(vip.addr));
	if (bpf_map_lookup_elem(&fragvips, &vip)) {
		int vip = -1;
		if (ports ? filter_l4(ctx, family, proto, saddr, daddr, ports->dest, &vip)
			  : filter_addr(ctx, family, proto, saddr, daddr))
			return XDP_DROP;
		return to_socket(ctx, STAT_REDIRECT_VIP);
	}
	vip.pad[0] = 0;
	if (bpf_map_lookup_elem(&snat, &vip))
		return to_socket(ctx, STAT_REDIRECT_REAL);
	struct frag_key fk = {};
	fk.family = family;
	fk.proto = proto;
	fk.id = id;
	__builtin_memcpy(fk.saddr, saddr, sizeof(fk.saddr));
	__builtin_memcpy(fk.daddr, daddr, sizeof(fk.daddr));
	if (ports) {
		if (!is_reply(family, proto, saddr, ports->source, daddr, ports->dest))
			return pass(STAT_PASS_FRAGMENT);
		__u32 one = 1;
		bpf_map_update_elem(&fragreplies, &fk, &one, BPF_ANY);
		return to_socket(ctx, STAT_REDIRECT_REAL);
	}
	if (bpf_map_lookup_elem(&fragreplies, &fk))
		return to_socket(ctx, STAT_REDIRECT_REAL);
	return pass(STAT_PASS_FRAGMENT);
}

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define IP_DF 0x4000

// One's-complement helpers for incremental checksum updates (RFC 1624,
// eqn. 3: HC' = ~(~HC + ~m + m')). Words are summed as they lie in memory,
// which is what the checksum field holds too, so byte order cancels out.
static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline __u32 csum_diff32(__u32 s, __u32 from, __u32 to)
{
	s += (~from & 0xffff) + (~from >> 16);
	s += (to & 0xffff) + (to >> 16);
	return s;
}

static __always_inline __u32 csum_diff16(__u32 s, __u16 from, __u16 to)
{
	return s + (__u16)~from + to;
}

static __always_inline __u16 csum_apply(__u16 check, __u32 diff)
{
	return ~csum_fold((__u16)~check + diff);
}

// Sends a rewritten frame on: back out of the interface it came in on, or
// to another served interface.
static __always_inline int flow_send(struct xdp_md *ctx, struct flow_value *v, __u64 len)
{
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);
	v->last_seen = bpf_ktime_get_ns();
	count(STAT_FLOW_FORWARDED);
	if (v->egress_ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect_map(&egress, v->egress, 0);
}

static __always_inline void set_macs(struct ethhdr *eth, struct flow_value *v)
{
	__builtin_memcpy(eth->h_dest, v->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, v->smac, ETH_ALEN);
}

// TCP window tracking of offloaded flows, as the dataplane's `in_window`
// (conntrack.rs): a RST or FIN ends a connection only near where its
// sender's stream is, so a blind attacker's guessed one cannot.
#define WINDOW_AHEAD (1u << 20)
#define WINDOW_BEHIND (1u << 16)

static __always_inline int seq_in_window(__u32 next, __u32 seq)
{
	if (!next)
		return 1;
	__u32 d = seq - next;
	return d <= WINDOW_AHEAD || 0u - d <= WINDOW_BEHIND;
}

// Where a TCP segment starts and ends in its stream (SYN and FIN count
// one); `l4_len`: the IP payload's length. 0 if the header is cut short.
static __always_inline int tcp_seg(const struct l4_ports *ports, void *data_end, __u32 l4_len,
				   __u32 *seq, __u32 *end)
{
	const __u8 *tcp = (const __u8 *)ports;
	if ((void *)(tcp + TCP_MIN_HLEN) > data_end)
		return 0;
	__u32 s = bpf_ntohl(*(const __u32 *)(tcp + 4));
	__u32 doff = (__u32)(tcp[12] >> 4) * 4;
	__u8 flags = tcp[13];
	__u32 len = l4_len > doff ? l4_len - doff : 0;
	*seq = s;
	*end = s + len + !!(flags & TCP_FLAG_SYN) + !!(flags & TCP_FLAG_FIN);
	return 1;
}

// The window check and tracking of an offloaded flow's packet. Returns 1
// for a RST or FIN too far from the stream (`*ctl` cleared: it is
// forwarded like data); learns where the stream is from segments near it.
static __always_inline int seq_track(struct flow_value *v, __u8 proto,
				     const struct l4_ports *ports, void *data_end, __u32 l4_len,
				     int *ctl)
{
	__u32 seq, end;
	if (proto != IPPROTO_TCP || !tcp_seg(ports, data_end, l4_len, &seq, &end))
		return 0;
	if (*ctl & TCP_FLAG_SYN)
		return 0;
	if (!seq_in_window(v->seq_next, seq)) {
		if (!*ctl)
			return 0;
		count(STAT_FLOW_OUT_OF_WINDOW);
		*ctl = 0;
		return 1;
	}
	if (!*ctl && (!v->seq_next || (__s32)(end - v->seq_next) > 0))
		v->seq_next = end;
	return 0;
}

// TCP flags that make lvc see the packet (a connection's start or end).
static __always_inline int tcp_control(__u8 proto, const struct l4_ports *ports, void *data_end)
{
	if (proto != IPPROTO_TCP)
		return 0;
	const __u8 *tcp = (const __u8 *)ports;
	if ((void *)(tcp + 14) > data_end)
		return 1;
	__u8 flags = tcp[13];
	return flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST);
}

// The TCP or UDP checksum field, or NULL if the frame ends before it.
static __always_inline __u16 *l4_checksum(__u8 proto, struct l4_ports *ports, void *data_end)
{
	__u16 *l4sum = (void *)ports + (proto == IPPROTO_TCP ? 16 : 6);
	if ((void *)(l4sum + 1) > data_end)
		return NULL;
	return l4sum;
}

// Applies the L4 checksum difference `l4d`. As lvc does for both families,
// a zero UDP checksum means "none" and stays zero (RFC 6935 tunnels send
// them), and a computed zero is sent as 0xffff.
static __always_inline void l4_checksum_apply(__u8 proto, __u16 *l4sum, __u32 l4d)
{
	if (proto == IPPROTO_TCP || *l4sum != 0) {
		__u16 c = csum_apply(*l4sum, l4d);
		if (proto == IPPROTO_UDP && c == 0)
			c = 0xffff;
		*l4sum = c;
	}
}

// Replaces an IPv6 address (four words) and its port, returning the L4
// checksum difference `l4d` grown by the change.
static __always_inline __u32 set_endpoint6(__u32 *a, __be16 *port, const __u32 *to, __be16 to_port,
					   __u32 l4d)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		l4d = csum_diff32(l4d, a[i], to[i]);
		a[i] = to[i];
	}
	l4d = csum_diff16(l4d, *port, to_port);
	*port = to_port;
	return l4d;
}

// The IPv4 fast path: returns 1 with the XDP action in *act if it handled
// the frame, 0 to steer it as usual. The caller checked the IP header,
// that this is no fragment, and that the L4 header's first `l4_min` bytes
// are there.
static __always_inline int flow_v4(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
				   struct l4_ports *ports, void *data_end, int *act)
{
	struct flow_key k = {};
	k.family = LVC_AF_INET;
	k.proto = ip->protocol;
	k.sport = ports->source;
	k.dport = ports->dest;
	k.saddr[0] = ip->saddr;
	k.daddr[0] = ip->daddr;
	struct flow_value *v = flow_find(&k);
	if (!v)
		return 0;
	__u64 len = (__u64)(data_end - (void *)eth);
	__u32 ip_len = bpf_ntohs(ip->tot_len);
	int tun = v->flags & FLOW_TUN;
	int ctl = tcp_control(ip->protocol, ports, data_end);
	int blind = seq_track(v, ip->protocol, ports, data_end, ip_len - ip->ihl * 4, &ctl);
	if (ctl || ip->ihl != 5 || ip_len + (tun ? sizeof(struct iphdr) : 0) > v->mtu ||
	    ((v->flags & FLOW_DEC_TTL) && ip->ttl <= 1) ||
	    (tun && !(ip->frag_off & bpf_htons(IP_DF)))) {
		if (blind) {
			// (lvc would take it for the connection's end.)
			*act = XDP_DROP;
			return 1;
		}
		count(STAT_FLOW_TO_LVC);
		return 0;
	}
	if (tun) {
		// The inner packet travels as the client sent it.
		__u8 tos = ip->tos;
		__u32 saddr = v->saddr[0], daddr = v->daddr[0];
		// (Packet pointers are void after this call, whatever its result:
		// from here on the frame is handled here.)
		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr))) {
			*act = XDP_DROP;
			return 1;
		}
		void *data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		struct ethhdr *e = data;
		struct iphdr *outer = (void *)(e + 1);
		if ((void *)(outer + 1) > data_end) {
			*act = XDP_DROP;
			return 1;
		}
		e->h_proto = bpf_htons(ETH_P_IP);
		set_macs(e, v);
		outer->version = 4;
		outer->ihl = 5;
		outer->tos = tos;
		outer->tot_len = bpf_htons(ip_len + sizeof(struct iphdr));
		outer->id = 0;
		outer->frag_off = bpf_htons(IP_DF);
		outer->ttl = 64;
		outer->protocol = IPPROTO_IPIP;
		outer->check = 0;
		outer->saddr = saddr;
		outer->daddr = daddr;
		__u32 sum = 0;
		__u16 *w = (__u16 *)outer;
#pragma unroll
		for (int i = 0; i < 10; i++)
			sum += w[i];
		outer->check = ~csum_fold(sum);
		// (Counted as received, as lvc counts a packet it tunnels.)
		*act = flow_send(ctx, v, len);
		return 1;
	}
	__u16 *l4sum = l4_checksum(ip->protocol, ports, data_end);
	if (!l4sum)
		return 0;
	__u32 ipd = 0, l4d = 0;
	if (v->flags & FLOW_SNAT) {
		ipd = csum_diff32(ipd, ip->saddr, v->saddr[0]);
		l4d = csum_diff32(l4d, ip->saddr, v->saddr[0]);
		l4d = csum_diff16(l4d, ports->source, v->sport);
		ip->saddr = v->saddr[0];
		ports->source = v->sport;
	}
	if (v->flags & FLOW_DNAT) {
		ipd = csum_diff32(ipd, ip->daddr, v->daddr[0]);
		l4d = csum_diff32(l4d, ip->daddr, v->daddr[0]);
		l4d = csum_diff16(l4d, ports->dest, v->dport);
		ip->daddr = v->daddr[0];
		ports->dest = v->dport;
	}
	if (v->flags & FLOW_DEC_TTL) {
		// TTL and protocol share a 16-bit word of the header.
		__u16 *word = (__u16 *)&ip->ttl;
		__u16 old = *word;
		ip->ttl--;
		ipd = csum_diff16(ipd, old, *word);
	}
	ip->check = csum_apply(ip->check, ipd);
	l4_checksum_apply(ip->protocol, l4sum, l4d);
	set_macs(eth, v);
	*act = flow_send(ctx, v, len);
	return 1;
}

// The IPv6 fast path (no tunnels: IPIP is IPv4 only); as flow_v4.
static __always_inline int flow_v6(struct xdp_md *ctx, struct ethhdr *eth, struct ipv6hdr *ip6,
				   struct l4_ports *ports, void *data_end, int *act)
{
	struct flow_key k = {};
	k.family = LVC_AF_INET6;
	k.proto = ip6->nexthdr;
	k.sport = ports->source;
	k.dport = ports->dest;
	__builtin_memcpy(k.saddr, &ip6->saddr, sizeof(k.saddr));
	__builtin_memcpy(k.daddr, &ip6->daddr, sizeof(k.daddr));
	struct flow_value *v = flow_find(&k);
	if (!v)
		return 0;
	__u64 len = (__u64)(data_end - (void *)eth);
	__u32 ip_len = sizeof(struct ipv6hdr) + bpf_ntohs(ip6->payload_len);
	int ctl = tcp_control(ip6->nexthdr, ports, data_end);
	int blind = seq_track(v, ip6->nexthdr, ports, data_end, bpf_ntohs(ip6->payload_len), &ctl);
	if (ctl || (v->flags & FLOW_TUN) || ip_len > v->mtu ||
	    ((v->flags & FLOW_DEC_TTL) && ip6->hop_limit <= 1)) {
		if (blind) {
			*act = XDP_DROP;
			return 1;
		}
		count(STAT_FLOW_TO_LVC);
		return 0;
	}
	__u16 *l4sum = l4_checksum(ip6->nexthdr, ports, data_end);
	if (!l4sum)
		return 0;
	__u32 l4d = 0;
	if (v->flags & FLOW_SNAT)
		l4d = set_endpoint6((__u32 *)&ip6->saddr, &ports->source, v->saddr, v->sport, l4d);
	if (v->flags & FLOW_DNAT)
		l4d = set_endpoint6((__u32 *)&ip6->daddr, &ports->dest, v->daddr, v->dport, l4d);
	if (v->flags & FLOW_DEC_TTL)
		ip6->hop_limit--;
	l4_checksum_apply(ip6->nexthdr, l4sum, l4d);
	set_macs(eth, v);
	*act = flow_send(ctx, v, len);
	return 1;
}

// The decision for a TCP/UDP packet of either family (addresses as in
// keys): a VIP, a fullnat pool address, or the reply of a tracked nat
// connection goes to lvc. `vip`: whether the destination is a service,
// if the filter found out already (-1: not known yet).
static __always_inline int steer_l4(struct xdp_md *ctx, __u8 family, __u8 proto,
				    const __u32 *saddr, const __u32 *daddr,
				    const struct l4_ports *ports, int vip)
{
	if (vip < 0)
		vip = is_vip(family, proto, daddr, ports->dest);
	if (vip)
		return to_socket(ctx, STAT_REDIRECT_VIP);

	struct addr_key dst = {};
	dst.family = family;
	__builtin_memcpy(dst.addr, daddr, sizeof(dst.addr));
	if (bpf_map_lookup_elem(&snat, &dst))
		return to_socket(ctx, STAT_REDIRECT_REAL);

	if (is_reply(family, proto, saddr, ports->source, daddr, ports->dest))
		return to_socket(ctx, STAT_REDIRECT_REAL);
	return pass(STAT_PASS_NO_MATCH);
}

// The IPv6 part: TCP or UDP right after the fixed header, fragments (one
// fragment header, then TCP or UDP) and ICMPv6 errors. Other extension
// headers, the rest of ICMPv6 (neighbour discovery!) and everything else
// stay with the kernel.
static __always_inline int try_ipv6(struct xdp_md *ctx, struct ethhdr *eth, struct ipv6hdr *ip6,
				    void *data_end)
{
	if ((void *)(ip6 + 1) > data_end)
		return pass(STAT_PASS_MALFORMED);
	if (ip6->version != 6)
		return pass(STAT_PASS_MALFORMED);
	__u32 daddr[4], saddr[4];
	__builtin_memcpy(daddr, &ip6->daddr, sizeof(daddr));
	__builtin_memcpy(saddr, &ip6->saddr, sizeof(saddr));
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP &&
	    ip6->nexthdr != IPPROTO_FRAGMENT_HDR &&
	    filter_addr(ctx, LVC_AF_INET6, ip6->nexthdr, saddr, daddr))
		return XDP_DROP;
	if (ip6->nexthdr == IPPROTO_ICMPV6_HDR)
		return icmp6_error(ctx, ip6, data_end);
	if (ip6->nexthdr == IPPROTO_FRAGMENT_HDR) {
		struct frag6_hdr *fh = (void *)(ip6 + 1);
		if ((void *)(fh + 1) > data_end)
			return pass(STAT_PASS_MALFORMED);
		if (fh->nexthdr != IPPROTO_TCP && fh->nexthdr != IPPROTO_UDP)
			return pass(STAT_PASS_OTHER_PROTO);
		struct l4_ports *ports = NULL;
		// Offset 0: the first fragment, with the ports.
		if (!(fh->frag_off & bpf_htons(0xfff8))) {
			ports = (void *)(fh + 1);
			if ((void *)(ports + 1) > data_end)
				return pass(STAT_PASS_MALFORMED);
		}
		return steer_fragment(ctx, LVC_AF_INET6, fh->nexthdr, saddr, daddr, fh->id, ports);
	}
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
		return pass(STAT_PASS_OTHER_PROTO);
	__u32 l4_min = ip6->nexthdr == IPPROTO_TCP ? TCP_MIN_HLEN : UDP_HLEN;
	struct l4_ports *ports = (void *)(ip6 + 1);
	if ((void *)ports + l4_min > data_end)
		return pass(STAT_PASS_MALFORMED);
	if (bpf_ntohs(ip6->payload_len) < l4_min)
		return pass(STAT_PASS_MALFORMED);

	int vip = -1;
	if (filter_l4(ctx, LVC_AF_INET6, ip6->nexthdr, saddr, daddr, ports->dest, &vip))
		return XDP_DROP;
	int act;
	if (flow_v6(ctx, eth, ip6, ports, data_end, &act))
		return act;
	return steer_l4(ctx, LVC_AF_INET6, ip6->nexthdr, saddr, daddr, ports, vip);
}

static __always_inline int try_lvc_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	count(STAT_RX);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return pass(STAT_PASS_MALFORMED);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return try_ipv6(ctx, eth, (void *)(eth + 1), data_end);
	// VLAN-tagged frames, ARP and the rest: the kernel's.
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return pass(STAT_PASS_NOT_IP);

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return pass(STAT_PASS_MALFORMED);
	if (ip->version != 4 || ip->ihl < 5)
		return pass(STAT_PASS_MALFORMED);
	__u32 ihl = ip->ihl * 4;
	if ((void *)ip + ihl > data_end)
		return pass(STAT_PASS_MALFORMED);
	__u32 saddr[4] = {ip->saddr, 0, 0, 0};
	__u32 daddr[4] = {ip->daddr, 0, 0, 0};
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP) {
		if (filter_addr(ctx, LVC_AF_INET, ip->protocol, saddr, daddr))
			return XDP_DROP;
		if (ip->protocol == IPPROTO_ICMP)
			return icmp_error(ctx, ip, ihl, data_end);
		return pass(STAT_PASS_OTHER_PROTO);
	}
	// Fragments: all of a datagram's fragments go the same way, or it is
	// lost.
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		struct l4_ports *ports = NULL;
		if (!(ip->frag_off & bpf_htons(IP_OFFSET))) {
			ports = (void *)ip + ihl;
			if ((void *)(ports + 1) > data_end)
				return pass(STAT_PASS_MALFORMED);
		}
		return steer_fragment(ctx, LVC_AF_INET, ip->protocol, saddr, daddr, ip->id, ports);
	}

	__u32 l4_min = ip->protocol == IPPROTO_TCP ? TCP_MIN_HLEN : UDP_HLEN;
	struct l4_ports *ports = (void *)ip + ihl;
	if ((void *)ports + l4_min > data_end)
		return pass(STAT_PASS_MALFORMED);
	// The IP header must not claim less than the headers we parsed.
	if (bpf_ntohs(ip->tot_len) < ihl + l4_min)
		return pass(STAT_PASS_MALFORMED);

	int vip = -1;
	if (filter_l4(ctx, LVC_AF_INET, ip->protocol, saddr, daddr, ports->dest, &vip))
		return XDP_DROP;
	int act;
	if (flow_v4(ctx, eth, ip, ports, data_end, &act))
		return act;
	return steer_l4(ctx, LVC_AF_INET, ip->protocol, saddr, daddr, ports, vip);
}

SEC("xdp")
int lvc_xdp(struct xdp_md *ctx)
{
	return try_lvc_xdp(ctx);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
