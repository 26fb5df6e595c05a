//! Per-packet pipeline stages, one at a time, on a 1M-connection table.
//!
//! `cargo bench -p lvc-bench --bench pipeline` (add
//! `-- --warm-up-time 1 --measurement-time 2` for a short run).

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use lvc_bench::{flow_key, frame, server, table};
use lvc_dataplane::pipeline::checksum;
use lvc_dataplane::pipeline::parse::{Addr, FlowKey, parse};
use lvc_dataplane::pipeline::rewrite;
use lvc_dataplane::pipeline::schedule::SchedState;
use lvc_dataplane::pipeline::services::Service;
use lvc_dataplane::stats::TrafficStats;
use lvc_proto::{Method, Scheduler};
use std::sync::Arc;

const FLOWS: usize = 1 << 20;

fn stages(c: &mut Criterion) {
    let f = frame(6, 0x0a00_0001, 0x0a09_000a, 1024, 80, 64);
    c.bench_function("parse/tcp64", |b| b.iter(|| parse(black_box(&f))));

    let ct = table(FLOWS);
    let hit = flow_key(12345);
    assert!(ct.lookup(&hit).is_some());
    let miss = FlowKey { dport: 81, ..hit };
    c.bench_function("conntrack/hit_1M", |b| {
        b.iter(|| ct.lookup(black_box(&hit)))
    });
    c.bench_function("conntrack/miss_1M", |b| {
        b.iter(|| ct.lookup(black_box(&miss)))
    });

    // Every scheduler's pick over 8 servers (tables built up front, as the
    // control thread does).
    for kind in Scheduler::ALL {
        let servers: Vec<_> = (0..8).map(|_| server(Method::Nat)).collect();
        let svc = Service {
            key: "tcp:10.9.0.10:80".parse().unwrap(),
            sched: SchedState::build(kind, &servers, Arc::default()),
            servers,
            stats: Arc::new(TrafficStats::default()),
            persistence: None,
            sorry: None,
            sloppy: false,
            lists: None,
            conn_rate: None,
            class: 0,
        };
        let mut client = 0u32;
        c.bench_function(&format!("schedule/{}_8", kind.name()), |b| {
            b.iter(|| {
                client = client.wrapping_add(0x9e37_79b9);
                black_box(&svc).pick(Addr::v4(client)).is_some()
            })
        });
    }

    let mut g = frame(6, 0x0a00_0001, 0x0a09_000a, 1024, 80, 64);
    let pkt = parse(&g).unwrap();
    c.bench_function("rewrite/dnat_ttl_macs", |b| {
        b.iter(|| {
            rewrite::set_dst(black_box(&mut g), &pkt, Addr::v4(0x0a02_000b), 80);
            g[22] = 64;
            let _ = rewrite::decrement_ttl(&mut g);
            rewrite::set_macs(&mut g, [2; 6], [4; 6]);
        })
    });
    c.bench_function("checksum/update32", |b| {
        b.iter(|| {
            checksum::update32(
                black_box(0x1234),
                black_box(0x0a09_000a),
                black_box(0x0a02_000b),
            )
        })
    });
}

criterion_group!(benches, stages);
criterion_main!(benches);
