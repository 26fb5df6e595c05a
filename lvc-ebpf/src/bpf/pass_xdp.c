// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// An XDP program that passes every frame. Frames that XDP redirects or
// transmits (XDP_TX) into a veth reach the other end only if that end has
// an XDP program; the test labs attach this one to the director's peers
// (a real NIC needs nothing).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
