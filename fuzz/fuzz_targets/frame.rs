//! One director's pipeline, frame after frame: the first byte of the input
//! picks a configuration (method, scheduler, persistence, the service's
//! family and ports, offload), the rest is a sequence of frames (two bytes
//! of length, then the frame), arriving from the client or the server side
//! and sharing one connection table. Whatever they hold, the worker never
//! panics, and a frame it sends on is one it can parse again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lvc_dataplane::addr::Addr;
use lvc_dataplane::net::route::{Link, Route, RouteTable};
use lvc_dataplane::pipeline::conntrack::Conntrack;
use lvc_dataplane::pipeline::filter::{ConnRate, Lists};
use lvc_dataplane::pipeline::parse::parse;
use lvc_dataplane::pipeline::schedule::{SchedState, Server};
use lvc_dataplane::pipeline::services::{Persistence, Service, ServiceTable};
use lvc_dataplane::pipeline::snat::SnatPool;
use lvc_dataplane::pipeline::{
    Decision, Effects, Tables, forward, icmp, icmp_reply, proxy, rewrite, tunnel,
};
use lvc_dataplane::shape::ShapeTable;
use lvc_dataplane::shape::classify::FlowMeta;
use lvc_proto::filter::{Policy, cidr_list};
use lvc_proto::{Method, ProxyProtocol, Scheduler};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

const CLIENT_IF: u32 = 2;
const SERVER_IF: u32 = 3;

fn a(s: &str) -> Addr {
    s.parse::<IpAddr>().expect("address").into()
}

struct Lab {
    services: ServiceTable,
    routes: RouteTable,
    shaping: ShapeTable,
    ct: Conntrack,
    offload: bool,
}

impl Lab {
    fn new(pick: u8) -> Self {
        let methods = [
            Method::Nat,
            Method::Dnat,
            Method::Dr,
            Method::Tun,
            Method::Fullnat,
        ];
        let v6 = pick & 0x08 != 0;
        // (tun is IPv4 only.)
        let method = match methods[usize::from(pick) % methods.len()] {
            Method::Tun if v6 => Method::Dr,
            m => m,
        };
        let scheduler = Scheduler::ALL[usize::from(pick >> 4) % Scheduler::ALL.len()];
        let persistent = pick & 0x40 != 0;
        // A PROXY protocol header for nat/fullnat servers, a rate limit and
        // allow/deny lists, by the configuration byte.
        let proxy = if pick & 0x80 != 0 && matches!(method, Method::Nat | Method::Fullnat) {
            if pick & 0x01 != 0 {
                ProxyProtocol::V1
            } else {
                ProxyProtocol::V2
            }
        } else {
            ProxyProtocol::Off
        };
        let policy = Policy {
            allow: cidr_list(if v6 { "fd00:1::/64" } else { "10.1.0.0/24" }).expect("prefixes"),
            deny: cidr_list(if v6 { "fd00:1::9/128" } else { "10.1.0.9/32" }).expect("prefixes"),
            ..Policy::default()
        };
        let every_port = pick & 0x80 != 0;
        let (vip, rips, pool) = if v6 {
            ("fd00:9::10", ["fd00:2::11", "fd00:2::12"], "fd00:2::1")
        } else {
            ("10.9.0.10", ["10.2.0.11", "10.2.0.12"], "10.2.0.1")
        };
        let port = if every_port { 0 } else { 80 };
        let servers: Vec<Arc<Server>> = rips
            .iter()
            .map(|r| {
                Arc::new(Server {
                    addr: a(r),
                    vip: a(vip),
                    port: if method == Method::Nat && !every_port {
                        8080
                    } else {
                        port
                    },
                    weight: 1,
                    method,
                    stats: Arc::default(),
                    service: Arc::default(),
                    health: Arc::default(),
                    limits: Default::default(),
                    proxy,
                    class: 0,
                })
            })
            .collect();
        let svc = |proto: &str| {
            let key = match a(vip).ip() {
                IpAddr::V6(v) => format!("{proto}:[{v}]:{port}"),
                IpAddr::V4(v) => format!("{proto}:{v}:{port}"),
            };
            Arc::new(Service {
                key: key.parse().expect("service key"),
                sched: SchedState::build(scheduler, &servers, Arc::default()),
                servers: servers.clone(),
                stats: Arc::default(),
                persistence: persistent.then(|| Persistence::new(60, if v6 { 64 } else { 24 })),
                sorry: None,
                sloppy: pick & 0x20 != 0,
                lists: (pick & 0x02 != 0).then(|| Lists::new(&policy)).flatten(),
                conn_rate: (pick & 0x04 != 0).then(|| Arc::new(ConnRate::new(50, 5))),
                class: 0,
            })
        };
        let services = ServiceTable::new([svc("tcp"), svc("udp")])
            .with_snat(Some(Arc::new(SnatPool::new(&[a(pool).ip()]))));
        let on_link = |dst: &str, prefix, oif| Route {
            dst: a(dst),
            prefix,
            gateway: None,
            oif,
            metric: 0,
            reject: None,
        };
        let routes = vec![
            on_link("10.1.0.0", 96 + 24, CLIENT_IF),
            on_link("10.2.0.0", 96 + 24, SERVER_IF),
            on_link("fd00:1::", 64, CLIENT_IF),
            on_link("fd00:2::", 64, SERVER_IF),
            // The second server's neighbour network is a blackhole for a
            // while (by the configuration byte): reject routes too.
            Route {
                reject: (pick & 0x20 != 0)
                    .then_some(lvc_dataplane::net::route::RejectKind::Unreachable),
                ..on_link("10.2.0.12", 128, 0)
            },
        ];
        // The client and the first server are resolved; the second is not.
        let mut neigh = HashMap::new();
        neigh.insert((CLIENT_IF, a("10.1.0.2")), [0xc0; 6]);
        neigh.insert((CLIENT_IF, a("fd00:1::2")), [0xc0; 6]);
        neigh.insert((SERVER_IF, a(rips[0])), [0x51; 6]);
        let link = |ifindex, mac, mtu| Link {
            ifindex,
            name: format!("if{ifindex}"),
            mac,
            mtu,
        };
        let links = vec![
            link(CLIENT_IF, [0xd0; 6], 1500),
            link(SERVER_IF, [0xd1; 6], 1400),
        ];
        let routes = RouteTable::new(routes, neigh, links, Vec::new())
            .with_if_addr(CLIENT_IF, a(if v6 { "fd00:1::1" } else { "10.1.0.1" }))
            .with_if_addr(SERVER_IF, a(if v6 { "fd00:2::1" } else { "10.2.0.1" }));
        Self {
            services,
            routes,
            shaping: ShapeTable::default(),
            ct: Conntrack::new(64),
            offload: pick & 0x10 != 0,
        }
    }

    fn tables<'a>(&'a self, ports: &'a [u32], now: u32) -> Tables<'a> {
        Tables {
            now,
            now_ns: u64::from(now) * 1_000_000_000,
            services: &self.services,
            routes: &self.routes,
            shaping: &self.shaping,
            conntrack: &self.ct,
            ports,
            offload: self.offload,
        }
    }
}

/// A frame the worker sends must be one it can read.
fn sent(f: &[u8], what: &str) {
    if let Err(e) = parse(f) {
        panic!("{what}: sent a frame lvc cannot parse ({e:?}): {f:02x?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let lab = Lab::new(pick);
    let ports = [CLIENT_IF, SERVER_IF];
    let mut now = 1;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])) % 2048;
        rest = &rest[2..];
        let n = n.min(rest.len());
        let (bytes, tail) = rest.split_at(n);
        rest = tail;
        // (Time moves on now and then: expiry and the wheel get their turn.)
        if bytes.first().is_some_and(|b| b & 0x0f == 0) {
            now += 7;
            lab.ct.sweep(now);
        }
        let t = lab.tables(&ports, now);
        let mut f = bytes.to_vec();
        let mut fx = Effects::default();
        let d = forward(&mut f, &t, &mut FlowMeta::default(), &mut fx);
        // A PROXY protocol header goes in as the worker puts it.
        if let (Some(ins), Ok(Decision::Send(_) | Decision::Fragment(..))) = (fx.proxy_insert, &d) {
            let len = f.len();
            f.resize(len + ins.len, 0);
            let n = proxy::insert(&mut f, &ins);
            f.truncate(n);
        }
        match d {
            Ok(Decision::Send(_)) => sent(&f, "forward"),
            Ok(Decision::Icmp(what)) => {
                let need = icmp::error_len(&f).max(f.len());
                f.resize(need, 0);
                if let Ok((_, len)) = icmp_reply(&mut f, what, &t) {
                    assert!(len <= f.len());
                }
            }
            Ok(Decision::Tunnel(rip)) => {
                let len = f.len();
                f.resize(len + rewrite::IPIP_HLEN, 0);
                if let Ok(Decision::Send(_)) = tunnel(&mut f, len, rip, &t) {
                    // (lvc never reads IPIP itself: the packet inside.)
                    let inner: Vec<u8> = f[..14]
                        .iter()
                        .chain(&f[14 + rewrite::IPIP_HLEN..])
                        .copied()
                        .collect();
                    sent(&inner, "tunnel");
                }
            }
            Ok(Decision::Fragment(_, mtu)) => {
                if let Some(split) = rewrite::Split::of(&f, mtu as usize) {
                    for (at, k, len) in split.later() {
                        let mut piece = vec![0u8; len];
                        split.write_later(&f, at, k, &mut piece);
                        sent(&piece, "a later fragment");
                    }
                    let first = split.cut_first(&mut f);
                    sent(&f[..first], "a first fragment");
                }
            }
            Ok(Decision::Park(..)) | Err(_) => {}
        }
    }
});
