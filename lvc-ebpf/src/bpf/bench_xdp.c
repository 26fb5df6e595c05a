// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// BPF programs of lvc-bench, the load-test harness (not used by lvc itself).
//
//   lvc_bench_gen   traffic generator, run with BPF_PROG_TEST_RUN in live-frames
//                   mode: writes a whole Ethernet/IPv4/UDP frame (the kernel
//                   recycles frames, so nothing of the last packet is trusted),
//                   stamps bpf_ktime_get_ns() and a sequence number into the
//                   payload, and transmits it with XDP_TX; paced by a rate in
//                   packets per second (frames ahead of schedule are dropped
//                   before they are built).
//   lvc_bench_sink  counts bench UDP arriving at the real servers per
//                   destination address, records one-way latency from the
//                   payload timestamp into a log-linear histogram, and drops
//                   it; everything else goes on to the kernel.
//   lvc_bench_fwd   the "xdp-redirect" director kind: a minimal kernel XDP
//                   load balancer (UDP to the VIP -> a real server chosen by
//                   flow hash, redirected through a devmap): the in-kernel
//                   ceiling.
//   lvc_bench_xsk   the "afxdp-raw" director kind's steering: every IPv4 UDP
//                   frame to the AF_XDP socket of its rx queue.
//   lvc_bench_pass  XDP_PASS: gives a veth its NAPI instance (so it can be a
//                   pinned thread) and lets it receive XDP_TX'd frames.
//
// Layouts are mirrored in ../bench.rs.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct udp_hdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__be16 check;
};

#define PAYLOAD_MIN 16 // timestamp + sequence number
#define SINK_SLOTS 17  // 16 destination addresses + "other"
#define HIST_BUCKETS 1024
#define FWD_MAX_RIPS 16
#define MAX_QUEUES 64

// The IPv4 header (without options) of an Ethernet frame, or NULL.
static __always_inline struct iphdr *ipv4_of(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return NULL;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl != 5)
		return NULL;
	return ip;
}

// ---------------------------------------------------------------- generator

struct gen_cfg {
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__u32 saddr;       // host order
	__u32 daddr;       // host order: first destination
	__u32 daddr_count; // destinations daddr .. daddr + count - 1
	__u32 flows;       // distinct flows cycled through; 0 = each packet new
	__u16 sport_base;  // host order
	__u16 dport;       // host order
	__u64 interval_ns; // pacing: ns between packets; 0 = flat out
	__u64 burst;       // pacing: most packets sent back to back to catch up
};

struct gen_state {
	__u64 sent;
	__u64 paced_out; // iterations skipped because ahead of schedule
	__u64 next_ns;   // pacing: when the next packet is due
	__u64 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_cfg);
} gen_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_state);
} gen_state SEC(".maps");

static __always_inline __u16 ip_csum(struct iphdr *ip)
{
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

SEC("xdp")
int lvc_bench_gen(struct xdp_md *ctx)
{
	__u32 k = 0;
	struct gen_cfg *c = bpf_map_lookup_elem(&gen_cfg, &k);
	struct gen_state *s = bpf_map_lookup_elem(&gen_state, &k);
	if (!c || !s)
		return XDP_ABORTED;
	__u64 now = bpf_ktime_get_ns();
	if (c->interval_ns) {
		// A token bucket of `burst` packets: after a pause (the test run
		// returning to userspace, a preemption) at most `burst` packets
		// go back to back; the rest of the deficit is forgone, never sent
		// as a burst that would measure the generator, not the director.
		if (now < s->next_ns) {
			s->paced_out++;
			return XDP_DROP;
		}
		__u64 floor = now - c->burst * c->interval_ns;
		__u64 next = s->next_ns > floor ? s->next_ns : floor;
		s->next_ns = next + c->interval_ns;
	}
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udp_hdr *udp = (void *)(ip + 1);
	__u64 *payload = (void *)(udp + 1);
	if ((void *)payload + PAYLOAD_MIN > end)
		return XDP_ABORTED;
	__u64 seq = s->sent++;
	__u32 saddr = c->saddr;
	__u16 sport;
	__u32 flow;
	if (c->flows == 0) {
		// Every packet a new flow: 16 bits of port x 16 bits of address.
		flow = (__u32)seq;
		sport = (__u16)(flow & 0xffff);
		if (sport < 1024)
			sport += 1024;
		saddr += (flow >> 16) & 0xffff;
	} else {
		flow = (__u32)(seq % c->flows);
		sport = c->sport_base + (__u16)(flow & 0x3fff);
		saddr += flow >> 14;
	}
	__u32 daddr = c->daddr;
	if (c->daddr_count > 1)
		daddr += flow % c->daddr_count;

	__builtin_memcpy(eth->h_dest, c->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, c->src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	__u16 ip_len = (__u16)(end - (void *)ip);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(ip_len);
	ip->id = bpf_htons((__u16)seq);
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = bpf_htonl(saddr);
	ip->daddr = bpf_htonl(daddr);
	ip->check = ip_csum(ip);
	udp->source = bpf_htons(sport);
	udp->dest = bpf_htons(c->dport);
	udp->len = bpf_htons(ip_len - sizeof(*ip));
	udp->check = 0; // "no checksum" (RFC 768); forwarders leave it alone
	payload[0] = bpf_ktime_get_ns();
	payload[1] = seq;
	return XDP_TX;
}

// --------------------------------------------------------------------- sink

struct sink_cfg {
	__u32 base; // host order: destination counted in slot 0
	__u16 dport;
	__u16 pad;
};

struct sink_count {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sink_cfg);
} sink_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SINK_SLOTS);
	__type(key, __u32);
	__type(value, struct sink_count);
} sink_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HIST_BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
} sink_hist SEC(".maps");

// Log-linear bucket of a latency in ns: exact below 64 ns, then 32 buckets
// per power of two (at most 1/32 = 3.1% wide). Mirrored in bench.rs.
static __always_inline __u32 hist_bucket(__u64 v)
{
	if (v < 64)
		return (__u32)v;
	__u32 msb = 0;
	__u64 x = v;
	if (x >> 32) {
		msb += 32;
		x >>= 32;
	}
	if (x >> 16) {
		msb += 16;
		x >>= 16;
	}
	if (x >> 8) {
		msb += 8;
		x >>= 8;
	}
	if (x >> 4) {
		msb += 4;
		x >>= 4;
	}
	if (x >> 2) {
		msb += 2;
		x >>= 2;
	}
	if (x >> 1)
		msb += 1;
	__u32 idx = 64 + (msb - 6) * 32 + (__u32)((v >> (msb - 5)) & 31);
	return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

SEC("xdp")
int lvc_bench_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = ipv4_of(ctx);
	if (!ip)
		return XDP_PASS;
	__u32 daddr = bpf_ntohl(ip->daddr);
	if (ip->protocol == IPPROTO_IPIP) { // LVS-TUN: count the inner packet
		ip = ip + 1;
		if ((void *)(ip + 1) > end || ip->ihl != 5)
			return XDP_PASS;
	}
	if (ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	struct udp_hdr *udp = (void *)(ip + 1);
	__u64 *payload = (void *)(udp + 1);
	if ((void *)payload + PAYLOAD_MIN > end)
		return XDP_PASS;
	__u32 k = 0;
	struct sink_cfg *c = bpf_map_lookup_elem(&sink_cfg, &k);
	if (!c || udp->dest != bpf_htons(c->dport))
		return XDP_PASS;
	__u32 slot = daddr - c->base;
	if (slot >= SINK_SLOTS - 1)
		slot = SINK_SLOTS - 1;
	struct sink_count *n = bpf_map_lookup_elem(&sink_counts, &slot);
	if (n) {
		n->packets++;
		n->bytes += (__u64)(end - data);
	}
	__u64 now = bpf_ktime_get_ns();
	__u64 sent = payload[0];
	if (sent && now >= sent) {
		__u32 b = hist_bucket(now - sent);
		__u64 *h = bpf_map_lookup_elem(&sink_hist, &b);
		if (h)
			(*h)++;
	}
	return XDP_DROP;
}

// ------------------------------------------------------ xdp-redirect kind

struct fwd_cfg {
	__u32 vip; // host order
	__u16 dport;
	__u16 nrips;
	__u32 rips[FWD_MAX_RIPS]; // host order
	__u8 dst_mac[6];          // the real servers' next hop
	__u8 src_mac[6];          // the egress interface
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fwd_cfg);
} fwd_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fwd_dev SEC(".maps");

SEC("xdp")
int lvc_bench_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = ipv4_of(ctx);
	if (!ip || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	struct udp_hdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return XDP_PASS;
	__u32 k = 0;
	struct fwd_cfg *c = bpf_map_lookup_elem(&fwd_cfg, &k);
	if (!c || c->nrips == 0 || ip->daddr != bpf_htonl(c->vip) ||
	    udp->dest != bpf_htons(c->dport) || ip->ttl <= 1)
		return XDP_PASS;
	__u32 h = (bpf_ntohl(ip->saddr) * 2654435761u) ^ bpf_ntohs(udp->source);
	__u32 i = (h * 2654435761u >> 16) % c->nrips;
	if (i >= FWD_MAX_RIPS)
		return XDP_PASS;
	ip->daddr = bpf_htonl(c->rips[i]);
	ip->ttl--;
	ip->check = 0;
	ip->check = ip_csum(ip);
	// The generator sends without a UDP checksum; a full forwarder would
	// update it here as lvc does.
	__builtin_memcpy(eth->h_dest, c->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, c->src_mac, ETH_ALEN);
	return bpf_redirect_map(&fwd_dev, 0, 0);
}

// -------------------------------------------------------- afxdp-raw kind

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} bench_xsks SEC(".maps");

SEC("xdp")
int lvc_bench_xsk(struct xdp_md *ctx)
{
	struct iphdr *ip = ipv4_of(ctx);
	if (!ip || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	return bpf_redirect_map(&bench_xsks, ctx->rx_queue_index, XDP_PASS);
}

SEC("xdp")
int lvc_bench_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual MIT/GPL";
