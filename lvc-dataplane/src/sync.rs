//! Connection sync between directors (IPVS's sync daemon, both ways), so
//! that a backup that takes the floating addresses over (keepalived's
//! VRRP) forwards the established connections of the director that died —
//! `nat` included, whose replies need state — and a director that comes
//! back gets the connections made while it was away.
//!
//! UDP between the directors (`--sync-listen ADDR:PORT`, `--sync-peer
//! ADDR:PORT`, datagrams only from a peer's address are read):
//!
//! - `conns`: connections this director made (UDP from their third packet, TCP once
//!   established; the same queues as the journal, taken every 200 ms);
//! - `gone`: original keys of connections it let go;
//! - `dump`: "send me everything" — sent by a director as it starts, and
//!   answered with every connection tracked (the failback hole of IPVS,
//!   where a restarted master gets no state back, is closed this way).
//!
//! A peer's connection is made here as the journal's are at a restart
//! (service and real server still configured with the same method, fullnat
//! port claimed, template, nat replies steered) and marked synced: it is
//! not sent on, and a peer's `gone` removes it only while it has carried
//! no packet here (a connection this director forwards is its own).
//! As with IPVS, a connection younger than the sync period at a failover
//! is lost; the sync network must be trusted (no authentication).

use crate::io::steer::Replies;
use crate::journal::{Record, take_over};
use crate::pipeline::conntrack::{Conn, Conntrack, Dir};
use crate::pipeline::parse::FlowKey;
use crate::pipeline::services::ServiceTable;
use crate::pipeline::translate;
use arc_swap::ArcSwap;
use lvc_proto::Method;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"LVCSYNC1";
const HEADER: usize = 16;
const KIND_CONNS: u8 = 1;
const KIND_GONE: u8 = 2;
const KIND_DUMP: u8 = 3;
/// A connection's record: [`Record`]'s 11 words.
const CONN_BYTES: usize = 88;
/// An original key: protocol, client, VIP.
const KEY_BYTES: usize = 40;
/// Records per datagram (1336 bytes at most: below any LAN's MTU).
const CONNS_PER: usize = 15;
const KEYS_PER: usize = 33;
const _: () = assert!(HEADER + CONNS_PER * CONN_BYTES <= 1400);
const _: () = assert!(HEADER + KEYS_PER * KEY_BYTES <= 1400);

/// Sync counters (for `status` and metrics).
#[derive(Debug, Default)]
pub struct SyncStats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Peer connections made here.
    pub applied: AtomicU64,
    /// Peer connections not made (no such service or server, method
    /// changed, fullnat port taken, table full).
    pub refused: AtomicU64,
    /// Datagrams not from a peer, or malformed.
    pub dropped: AtomicU64,
}

/// The sending side (used by the housekeeping thread) and the socket.
pub struct ConnSync {
    socket: UdpSocket,
    peers: Vec<SocketAddr>,
    pub stats: Arc<SyncStats>,
}

impl ConnSync {
    pub fn bind(listen: SocketAddr, peers: Vec<SocketAddr>) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(listen)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Self {
            socket,
            peers,
            stats: Arc::default(),
        })
    }

    fn send(&self, kind: u8, items: &[Vec<u8>], per: usize, to: &[SocketAddr]) {
        for chunk in items.chunks(per) {
            let mut d = Vec::with_capacity(HEADER + chunk.iter().map(Vec::len).sum::<usize>());
            d.extend_from_slice(MAGIC);
            d.push(kind);
            d.push(chunk.len() as u8);
            d.resize(HEADER, 0);
            for it in chunk {
                d.extend_from_slice(it);
            }
            for p in to {
                if self.socket.send_to(&d, p).is_ok() {
                    self.stats.sent.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// Sends the connections this director made and the keys it let go
    /// (a peer's connections are not sent on).
    pub fn offer(&self, new: &[Arc<Conn>], gone: &[FlowKey]) {
        let conns: Vec<Vec<u8>> = new
            .iter()
            .filter(|c| !c.synced())
            .map(|c| encode_conn(&Record::of(c)))
            .collect();
        self.send(KIND_CONNS, &conns, CONNS_PER, &self.peers);
        let keys: Vec<Vec<u8>> = gone.iter().map(encode_key).collect();
        self.send(KIND_GONE, &keys, KEYS_PER, &self.peers);
    }

    /// Asks every peer for all its connections.
    pub fn ask_for_dump(&self) {
        self.send(KIND_DUMP, &[Vec::new()], 1, &self.peers);
    }

    /// A second handle on the socket, for the receiving thread.
    pub fn receiver(&self, r: ReceiverDeps) -> std::io::Result<Receiver> {
        Ok(Receiver {
            sync: ConnSync {
                socket: self.socket.try_clone()?,
                peers: self.peers.clone(),
                stats: self.stats.clone(),
            },
            deps: r,
        })
    }
}

/// What the receiving thread makes connections with.
pub struct ReceiverDeps {
    pub services: Arc<ArcSwap<ServiceTable>>,
    pub conntrack: Arc<Conntrack>,
    pub replies: Replies,
    pub epoch: Instant,
}

/// The receiving thread.
pub struct Receiver {
    sync: ConnSync,
    deps: ReceiverDeps,
}

impl Receiver {
    /// Runs until `shutdown`.
    pub fn run(self, shutdown: &AtomicBool) {
        let mut buf = vec![0u8; 2048];
        while !shutdown.load(Relaxed) {
            let Ok((n, from)) = self.sync.socket.recv_from(&mut buf) else {
                continue;
            };
            if !self.sync.peers.iter().any(|p| p.ip() == from.ip()) {
                self.sync.stats.dropped.fetch_add(1, Relaxed);
                continue;
            }
            self.sync.stats.received.fetch_add(1, Relaxed);
            if self.datagram(&buf[..n], from).is_none() {
                self.sync.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    fn datagram(&self, d: &[u8], from: SocketAddr) -> Option<()> {
        if d.len() < HEADER || &d[..8] != MAGIC {
            return None;
        }
        let (kind, count) = (d[8], usize::from(d[9]));
        let body = &d[HEADER..];
        let now = self.deps.epoch.elapsed().as_secs() as u32;
        let ct = &self.deps.conntrack;
        match kind {
            KIND_CONNS => {
                if body.len() != count * CONN_BYTES {
                    return None;
                }
                let services = self.deps.services.load();
                for b in body.chunks(CONN_BYTES) {
                    let r = decode_conn(b)?;
                    self.apply(&r, &services, now);
                }
            }
            KIND_GONE => {
                if body.len() != count * KEY_BYTES {
                    return None;
                }
                for b in body.chunks(KEY_BYTES) {
                    let k = decode_key(b)?;
                    if let Some((c, Dir::Original)) = ct.lookup(&k)
                        && c.synced()
                        && !c.carried()
                    {
                        ct.remove(&c, now);
                    }
                }
            }
            KIND_DUMP => {
                // Every connection, to the peer that asked (at its sync
                // address), paced so its socket keeps up.
                let to = self.sync.peers.iter().find(|p| p.ip() == from.ip())?;
                let mut all = Vec::new();
                ct.for_each(|c| all.push(encode_conn(&Record::of(c))));
                for (i, chunk) in all.chunks(CONNS_PER * 32).enumerate() {
                    if i > 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    self.sync
                        .send(KIND_CONNS, chunk, CONNS_PER, std::slice::from_ref(to));
                }
                tracing::info!(peer = %to, connections = all.len(), "sent every connection to a peer that asked");
            }
            _ => return None,
        }
        Some(())
    }

    fn apply(&self, r: &Record, services: &ServiceTable, now: u32) {
        let ct = &self.deps.conntrack;
        let key = FlowKey {
            src: r.client.0,
            dst: r.vip.0,
            sport: r.client.1,
            dport: r.vip.1,
            proto: r.proto,
        };
        if ct.lookup(&key).is_some() {
            return;
        }
        let Some(c) = take_over(r, services, ct, now, true) else {
            self.sync.stats.refused.fetch_add(1, Relaxed);
            return;
        };
        // Its replies come here as soon as the server-side gateway
        // address moves.
        if c.method() == Method::Nat
            && self
                .deps
                .replies
                .add(translate::flow_key(&c, Dir::Reply))
                .is_ok()
        {
            c.replies_steered();
        }
        self.sync.stats.applied.fetch_add(1, Relaxed);
    }
}

fn encode_conn(r: &Record) -> Vec<u8> {
    r.encode().iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn decode_conn(b: &[u8]) -> Option<Record> {
    let words: Vec<u64> = b
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Record::decode(&words)
}

fn encode_key(k: &FlowKey) -> Vec<u8> {
    let mut b = Vec::with_capacity(KEY_BYTES);
    b.push(k.proto);
    b.push(0);
    b.extend_from_slice(&k.sport.to_le_bytes());
    b.extend_from_slice(&k.dport.to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&k.src.0);
    b.extend_from_slice(&k.dst.0);
    b
}

fn decode_key(b: &[u8]) -> Option<FlowKey> {
    let addr = |s: &[u8]| crate::addr::Addr(s.try_into().expect("16 bytes"));
    let proto = b[0];
    if !matches!(proto, crate::wire::PROTO_TCP | crate::wire::PROTO_UDP) {
        return None;
    }
    Some(FlowKey {
        proto,
        sport: u16::from_le_bytes([b[2], b[3]]),
        dport: u16::from_le_bytes([b[4], b[5]]),
        src: addr(&b[8..24]),
        dst: addr(&b[24..40]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Addr;

    #[test]
    fn keys_and_records_cross_the_wire() {
        let k = FlowKey {
            src: Addr::v4_bytes([10, 1, 0, 2]),
            dst: "fd00:9::10".parse::<std::net::IpAddr>().unwrap().into(),
            sport: 40000,
            dport: 443,
            proto: 6,
        };
        let b = encode_key(&k);
        assert_eq!(b.len(), KEY_BYTES);
        assert_eq!(decode_key(&b), Some(k));
        let mut bad = b.clone();
        bad[0] = 1;
        assert_eq!(decode_key(&bad), None);
    }
}
