//! The connection table at scale: memory per flow and lookup rate with 1M
//! and 10M concurrent `nat` flows, in a fresh process each (so the resident
//! size measured is the table's alone).

use crate::{flow_key, table};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleResult {
    pub flows: usize,
    /// Resident memory growth divided by flows (both directions' keys, the
    /// connection, its expiry-wheel entry, the table's spare capacity).
    pub bytes_per_flow: f64,
    /// Inserts per second while filling, in millions (one thread).
    pub insert_mps: f64,
    /// Mean time of a lookup that hits, keys in random order (cache-cold,
    /// like traffic from many clients), in ns.
    pub lookup_ns: f64,
    /// While another thread walks the whole table (as a connection listing
    /// or a sync dump does), the longest a new connection's insert took, in
    /// µs: how long a worker can be held up by a listing.
    #[serde(default)]
    pub insert_during_walk_max_us: f64,
    /// Walks of the whole table done meanwhile, and how long one took (s).
    #[serde(default)]
    pub walk_secs: f64,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Fills a table with `flows` connections and measures it.
pub fn measure(flows: usize) -> ScaleResult {
    let before = rss_bytes();
    let t = Instant::now();
    let ct = table(flows);
    let insert = t.elapsed().as_secs_f64();
    let bytes = rss_bytes().saturating_sub(before);
    // xorshift: a reproducible random order over the table.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let lookups = 4_000_000usize;
    let keys: Vec<_> = (0..lookups)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            flow_key((x % flows as u64) as u32)
        })
        .collect();
    let t = Instant::now();
    let mut hits = 0usize;
    for k in &keys {
        hits += ct.lookup(black_box(k)).is_some() as usize;
    }
    let lookup = t.elapsed().as_secs_f64();
    assert_eq!(hits, lookups, "every key was inserted");
    let (stall, walk) = insert_during_walk(&ct, flows);
    ScaleResult {
        flows,
        bytes_per_flow: bytes as f64 / flows as f64,
        insert_mps: flows as f64 / insert / 1e6,
        lookup_ns: lookup / lookups as f64 * 1e9,
        insert_during_walk_max_us: stall,
        walk_secs: walk,
    }
}

/// Inserts and removes new connections on this thread while another walks
/// the table doing a listing's work; returns the longest insert (µs) and
/// how long the walk took (s).
fn insert_during_walk(
    ct: &lvc_dataplane::pipeline::conntrack::Conntrack,
    flows: usize,
) -> (f64, f64) {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let walker = s.spawn(|| {
            let t = Instant::now();
            let mut n = 0usize;
            ct.for_each(|c| {
                // (What a listing reads of each.)
                n += usize::from(black_box(c.state()) as u8 != 0) + usize::from(c.client.1 & 1);
            });
            done.store(true, Relaxed);
            black_box(n);
            t.elapsed().as_secs_f64()
        });
        let mut worst = 0f64;
        let mut i = flows as u32;
        let s = crate::server(lvc_proto::Method::Nat);
        while !done.load(Relaxed) {
            let t = Instant::now();
            let c = crate::conn(i, &s);
            if let Ok(c) = ct.insert(c) {
                worst = worst.max(t.elapsed().as_secs_f64() * 1e6);
                ct.remove(&c, 0);
            }
            i = i.wrapping_add(1);
        }
        (worst, walker.join().expect("walker"))
    })
}
