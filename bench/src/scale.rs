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
    ScaleResult {
        flows,
        bytes_per_flow: bytes as f64 / flows as f64,
        insert_mps: flows as f64 / insert / 1e6,
        lookup_ns: lookup / lookups as f64 * 1e9,
    }
}
