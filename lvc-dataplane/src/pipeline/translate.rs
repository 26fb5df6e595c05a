//! Translation: what `forward` does to the packets of one direction of a
//! connection, as one value — rewritten addresses and ports, TTL, MACs,
//! encapsulation, the egress interface and its MTU. It is what the XDP
//! program receives when a flow is offloaded (`lvc_ebpf::FlowValue`), so
//! the fast path in XDP and the pipeline here do the same thing by
//! construction (a test runs both on the same frames and compares bytes).

use super::Tables;
use super::conntrack::{Conn, Dir};
use crate::addr::Addr;
use crate::net::route::{L2, NextHop, RouteTable};
use lvc_ebpf::{FLOW_DEC_TTL, FLOW_DNAT, FLOW_SNAT, FLOW_TUN, FlowKey, FlowValue};
use lvc_proto::Method;
use std::sync::Arc;

/// A connection's flows, ready for the XDP map: one per direction lvc
/// sees (client → VIP always; replies for nat and fullnat).
#[derive(Debug)]
pub struct Offer {
    pub conn: Arc<Conn>,
    pub flows: Vec<Flow>,
}

/// One direction of an offloaded connection.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub dir: Dir,
    pub key: FlowKey,
    pub value: FlowValue,
    /// Its slot in the shared flow table, if the worker installed it
    /// there (`io::flowslots`); else the offload thread puts it in the
    /// `flows` hash map.
    pub slot: Option<u32>,
}

/// What the offload thread is asked.
#[derive(Debug)]
pub enum OffloadMsg {
    /// Put these flows in the XDP map (or watch them: those a worker put
    /// in the shared slots already).
    Install(Offer),
    /// Take the connection's flows out (it is closing: lvc tracks the rest).
    Retire(Arc<Conn>),
}

/// Where the packets of `dir` go: the next-hop address and the lookup
/// (direct routing: on a connected network only — the frame keeps the
/// VIP as destination, so a gateway would route it straight back).
/// The one rule for the pipeline, offers and the offload thread's checks.
pub fn next_hop(conn: &Conn, dir: Dir, routes: &RouteTable) -> (Addr, NextHop) {
    match dir {
        Dir::Original if conn.method() == Method::Dr => {
            (conn.real().0, routes.next_hop_onlink(conn.real().0))
        }
        Dir::Original => (conn.real().0, routes.next_hop(conn.real().0)),
        Dir::Reply => (conn.client.0, routes.next_hop(conn.client.0)),
    }
}

fn words(a: Addr) -> [u32; 4] {
    lvc_ebpf::addr_key_words(a.ip()).1
}

/// The key of `dir`'s packets as they arrive.
pub fn flow_key(conn: &Conn, dir: Dir) -> FlowKey {
    bpf_key(&match dir {
        Dir::Original => conn.original_key(),
        Dir::Reply => conn.reply_key(),
    })
}

/// A flow key as the XDP program's maps hold it.
pub fn bpf_key(k: &super::parse::FlowKey) -> FlowKey {
    FlowKey::new(k.proto, (k.src.ip(), k.sport), (k.dst.ip(), k.dport))
}

/// The translation of `dir`'s packets, sent through `l2` (port `slot`).
pub fn translation(conn: &Conn, dir: Dir, l2: &L2, slot: u32) -> FlowValue {
    let mut v = FlowValue {
        smac: l2.src_mac,
        dmac: l2.dst_mac,
        egress: slot,
        egress_ifindex: l2.ifindex,
        mtu: l2.mtu.min(u32::from(u16::MAX)) as u16,
        // (XDP checks a RST's or FIN's sequence number against it.)
        seq_next: conn.seq_next(dir),
        ..FlowValue::default()
    };
    let fullnat = conn.fullnat();
    let snat = |v: &mut FlowValue, (a, p): (Addr, u16)| {
        v.flags |= FLOW_SNAT;
        v.saddr = words(a);
        v.sport_be = p.to_be();
    };
    let dnat = |v: &mut FlowValue, (a, p): (Addr, u16)| {
        v.flags |= FLOW_DNAT;
        v.daddr = words(a);
        v.dport_be = p.to_be();
    };
    match (dir, conn.method()) {
        // Only the MACs change (LVS-DR).
        (Dir::Original, Method::Dr) => {}
        // The inner packet travels as sent, in IPIP from the director's
        // address on the way.
        (Dir::Original, Method::Tun) => {
            v.flags = FLOW_TUN;
            v.saddr = words(l2.src_ip);
            v.daddr = words(conn.real().0);
        }
        (Dir::Original, _) => {
            v.flags = FLOW_DEC_TTL;
            dnat(&mut v, conn.real());
            if fullnat {
                snat(&mut v, conn.local());
            }
        }
        (Dir::Reply, _) => {
            v.flags = FLOW_DEC_TTL;
            snat(&mut v, conn.vip());
            if fullnat {
                dnat(&mut v, conn.client);
            }
        }
    }
    v
}

/// The connection's flows, if every direction lvc sees can be forwarded
/// by XDP now: next hops resolved on served interfaces, no shaping on
/// them, no policer on the service.
pub fn offer(conn: &Arc<Conn>, t: &Tables) -> Option<Offer> {
    if t.shaping
        .service_policer(conn.proto, conn.vip(), conn.server.class)
        .is_some()
    {
        return None;
    }
    let dirs: &[Dir] = if conn.two_way() {
        &[Dir::Original, Dir::Reply]
    } else {
        &[Dir::Original]
    };
    let mut flows = Vec::with_capacity(dirs.len());
    for &dir in dirs {
        let (_, NextHop::Ready(l2)) = next_hop(conn, dir, t.routes) else {
            return None;
        };
        let slot = t.ports.iter().position(|&i| i == l2.ifindex)?;
        // A tunnel needs the director's address on the way (lvc drops the
        // packet without one: so does nobody in XDP).
        if conn.method() == Method::Tun && dir == Dir::Original && l2.src_ip.ip().is_unspecified() {
            return None;
        }
        if t.shaping.dev(l2.ifindex).is_some() {
            return None;
        }
        flows.push(Flow {
            dir,
            key: flow_key(conn, dir),
            value: translation(conn, dir, &l2, slot as u32),
            slot: None,
        });
    }
    Some(Offer {
        conn: conn.clone(),
        flows,
    })
}
