//! lvc's benchmarks: the load-test harness (`lvc-bench`, see `main.rs`
//! and README "Performance") and helpers for the Criterion micro-benchmarks
//! (frames and tables shaped like real traffic).

pub mod afxdp;
pub mod agent;
pub mod chart;
pub mod cpu;
pub mod health;
pub mod kinds;
pub mod lab;
pub mod report;
pub mod routes;
pub mod scale;
pub mod scenario;
pub mod soak;

use lvc_dataplane::addr::Addr;
use lvc_dataplane::pipeline::conntrack::{Conn, Conntrack};
use lvc_dataplane::pipeline::parse::FlowKey;
use lvc_dataplane::pipeline::services::Server;
use lvc_dataplane::stats::TrafficStats;
use lvc_proto::Method;
use std::sync::Arc;

/// An Ethernet/IPv4/TCP (proto 6) or UDP (17) frame of `len` bytes
/// (at least 54), headers valid, checksums not computed.
pub fn frame(proto: u8, src: u32, dst: u32, sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(54)];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (f.len() - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = proto;
    f[26..30].copy_from_slice(&src.to_be_bytes());
    f[30..34].copy_from_slice(&dst.to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        f[46] = 5 << 4;
        f[47] = 0x10;
    } else {
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    }
    f
}

/// `aa:bb:…` form of a MAC address.
pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A real server for table entries.
pub fn server(method: Method) -> Arc<Server> {
    Arc::new(Server {
        addr: Addr::v4_bytes([10, 2, 0, 11]),
        vip: Addr::v4(0x0a09_000a),
        port: 80,
        weight: 1,
        method,
        stats: Arc::new(TrafficStats::default()),
        service: Arc::default(),
        health: Arc::default(),
        limits: Default::default(),
        proxy: Default::default(),
        class: 0,
    })
}

/// The client-side key of connection `i` of [`table`].
pub fn flow_key(i: u32) -> FlowKey {
    FlowKey {
        src: Addr::v4(0x0a00_0000 | (i >> 8)),
        dst: Addr::v4(0x0a09_000a),
        sport: 1024 + (i & 0xff) as u16,
        dport: 80,
        proto: 6,
    }
}

/// A connection table holding `n` nat connections from distinct clients
/// (10.x.y.z:port → 10.9.0.10:80; keys by [`flow_key`]).
pub fn table(n: usize) -> Conntrack {
    let ct = Conntrack::new(n + 1);
    let s = server(Method::Nat);
    for i in 0..n as u32 {
        ct.insert(conn(i, &s)).expect("capacity");
    }
    ct
}

/// Connection `i` of [`table`] (keys by [`flow_key`]), to server `s`.
pub fn conn(i: u32, s: &Arc<Server>) -> Conn {
    let k = flow_key(i);
    Conn::new(
        6,
        (k.src, k.sport),
        (Addr::v4(0x0a09_000a), 80),
        s.clone(),
        80,
        0,
    )
}
