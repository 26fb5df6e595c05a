//! The offload thread: watches the flows XDP forwards, folds what XDP
//! forwarded back into the connections (counters, idle timers), and takes
//! flows out again when lvc must see their packets.
//!
//! A worker offloads a connection once it qualifies (`pipeline::translate`)
//! by writing its flows into the flow table it shares with XDP
//! (`io::flowslots`: no syscall, no waiting) and telling this thread over
//! a bounded queue. Flows that found no free slot come here to be put in
//! the `flows` hash map: every map write is a syscall made here, off the
//! packet path. Once a second the thread reads every offloaded flow's
//! counters and checks that the flow may stay in XDP:
//!
//! - the connection is still tracked (not swept) and, for TCP, still
//!   ESTABLISHED (XDP sends SYN/FIN/RST to lvc, which retires the flow at
//!   once when a connection closes);
//! - its next hop is unchanged (a MAC or route that changed takes the flow
//!   back to lvc, which offers it again with the new one);
//! - no shaping now covers its egress interface and no policer its
//!   service (shaped flows are lvc's).
//!
//! A flow that leaves the map is forwarded by lvc again: nothing is lost
//! between the two paths, since both translate the same way.

use crate::io::flowslots::{self, FlowSlots};
use crate::io::steer::FlowMap;
use crate::net::route::{NextHop, RouteTable};
use crate::pipeline::conntrack::{Conn, Conntrack, State};
use crate::pipeline::translate::{self, Flow, Offer, OffloadMsg};
use crate::shape::ShapeTable;
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, TryRecvError};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often offloaded flows are read and checked.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Flows whose counters are read (one syscall each) per second at most:
/// with more offloaded flows, each is read every few seconds — never less
/// often than a quarter of the shortest idle timeout, so no active flow
/// expires. (The next-hop and shaping checks cost no syscall and cover
/// every flow every second.)
const FOLD_BUDGET: usize = 50_000;

/// How often the workers' offers and retirements are taken.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// The offload thread's counters (for `status` and metrics).
#[derive(Debug, Default)]
pub struct OffloadStats {
    /// Connections whose flows are in the XDP map now.
    pub connections: AtomicU64,
    /// Flows (directions) in the XDP map now.
    pub flows: AtomicU64,
    /// Connections put into the map, ever.
    pub installed: AtomicU64,
    /// Connections taken out again (closed, expired, next hop changed,
    /// shaping or a policer now covering them).
    pub retired: AtomicU64,
    /// Offers the map refused (full).
    pub failed: AtomicU64,
    /// Connections installed by the workers in the shared flow table (the
    /// rest of `installed` went through the hash map).
    pub in_slots: AtomicU64,
}

/// One offloaded flow and what was last read of its counters.
struct Installed {
    flow: Flow,
    packets: u64,
    bytes: u64,
    last_seen: u64,
}

struct Entry {
    conn: Arc<Conn>,
    flows: Vec<Installed>,
    /// Spreads the counter reads over seconds (see [`FOLD_BUDGET`]).
    phase: u32,
}

pub struct Offloader {
    pub map: FlowMap,
    /// The flow table the workers install into.
    pub slots: Arc<FlowSlots>,
    /// Where the sweep that makes old deleted slots empty again
    /// (`FlowSlots::clean`) goes on: it moves down the table a piece per
    /// drain, until the second in `clean_until` (set by each deletion: a
    /// table nothing is deleted from is left alone).
    pub clean_at: usize,
    pub clean_until: u32,
    pub rx: Receiver<OffloadMsg>,
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub shaping: Arc<ArcSwap<ShapeTable>>,
    /// The workers' clock origin (connection times are seconds since it).
    pub epoch: Instant,
    pub stats: Arc<OffloadStats>,
    /// The connection table (for its idle timeouts).
    pub conntrack: Arc<Conntrack>,
    /// Entries installed, ever (their read phases).
    pub installs: u32,
    /// Syncs done (which phase is read now).
    pub syncs: u32,
}

impl Offloader {
    /// Runs until `shutdown`.
    pub fn run(mut self, shutdown: &AtomicBool) {
        let mut entries: HashMap<usize, Entry> = HashMap::new();
        let mut next_sync = Instant::now() + SYNC_EVERY;
        while !shutdown.load(Relaxed) {
            // Offers and retirements are taken in batches, DRAIN_EVERY
            // apart: none is urgent (lvc forwards the flow meanwhile), and a
            // thread woken per message spends more on waking than on work.
            std::thread::sleep(DRAIN_EVERY);
            loop {
                match self.rx.try_recv() {
                    Ok(OffloadMsg::Install(o)) => self.install(&mut entries, o),
                    Ok(OffloadMsg::Retire(conn)) => {
                        if let Some(e) = entries.remove(&key_of(&conn)) {
                            self.retire(e);
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if Instant::now() >= next_sync {
                next_sync = Instant::now() + SYNC_EVERY;
                self.sync(&mut entries);
            }
            if self.now() <= self.clean_until {
                // (Every slot about every 5 s.)
                let n = self.slots.slots();
                let piece = (n / 512).max(1);
                self.clean_at = (self.clean_at + n - piece) % n;
                self.slots.clean(self.clean_at, piece, self.now());
            }
        }
    }

    fn install(&mut self, entries: &mut HashMap<usize, Entry>, o: Offer) {
        let k = key_of(&o.conn);
        if entries.contains_key(&k) {
            // (Cannot happen: a connection is offered once until retired.)
            for f in &o.flows {
                if let Some(at) = f.slot {
                    self.slots.remove(at, &f.key, self.now());
                }
            }
            return;
        }
        let mut flows = Vec::with_capacity(o.flows.len());
        if o.flows.iter().all(|f| f.slot.is_some()) {
            self.stats.in_slots.fetch_add(1, Relaxed);
        }
        for flow in o.flows {
            // A key still held by another (closing) connection is not
            // taken over; this one is offered again a second later, once
            // the other is retired.
            if flow.slot.is_none()
                && let Err(e) = self.map.insert(flow.key, flow.value)
            {
                tracing::debug!(error = %e, "flow map refused an offload");
                self.stats.failed.fetch_add(1, Relaxed);
                for f in &flows {
                    self.remove(f);
                }
                o.conn.release_offload();
                o.conn.decline_offload(self.now());
                return;
            }
            flows.push(Installed {
                flow,
                packets: 0,
                bytes: 0,
                last_seen: 0,
            });
        }
        self.stats.installed.fetch_add(1, Relaxed);
        self.stats.connections.fetch_add(1, Relaxed);
        self.stats.flows.fetch_add(flows.len() as u64, Relaxed);
        self.installs = self.installs.wrapping_add(1);
        entries.insert(
            k,
            Entry {
                conn: o.conn,
                flows,
                phase: self.installs,
            },
        );
    }

    /// Takes a connection's flows out of the map, counting what XDP
    /// forwarded since the last read; lvc forwards it from now on.
    fn retire(&mut self, mut e: Entry) {
        let now = self.now();
        self.fold(&mut e, now);
        for f in &e.flows {
            self.remove(f);
        }
        self.stats.retired.fetch_add(1, Relaxed);
        self.stats.connections.fetch_sub(1, Relaxed);
        self.stats.flows.fetch_sub(e.flows.len() as u64, Relaxed);
        if e.conn.state() == State::Removed {
            // The table let it go while XDP still forwarded it: its
            // fullnat port was kept for it until now (see
            // Conntrack::release), so no new connection reused the tuple.
            if let Some(s) = &e.conn.snat {
                s.pool
                    .free(e.conn.proto, s.local.0, s.local.1, e.conn.server.addr);
            }
        }
        e.conn.release_offload();
    }

    fn remove(&mut self, f: &Installed) {
        match f.flow.slot {
            Some(at) => {
                let now = self.now();
                self.slots.remove(at, &f.flow.key, now);
                // (Cleanable CLEAN_AFTER seconds on; a pass takes 5.)
                self.clean_until = now + flowslots::CLEAN_AFTER + 6;
            }
            None => {
                let _ = self.map.remove(&f.flow.key);
            }
        }
    }

    fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// Adds what XDP forwarded since the last read to the connection's
    /// counters and refreshes its idle timer if anything went through.
    fn fold(&self, e: &mut Entry, now: u32) {
        for f in &mut e.flows {
            let v = match f.flow.slot {
                Some(at) => self.slots.read(at),
                None => match self.map.get(&f.flow.key) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            let (dp, db) = (
                v.packets.saturating_sub(f.packets),
                v.bytes.saturating_sub(f.bytes),
            );
            if dp > 0 {
                e.conn.count_many(f.flow.dir, dp, db);
            }
            if v.last_seen != f.last_seen {
                e.conn.saw(now);
            }
            // Where XDP saw the stream: lvc checks RSTs and FINs against
            // it once the flow is back (retired) with it.
            e.conn.saw_seq(f.flow.dir, v.seq_next);
            (f.packets, f.bytes, f.last_seen) = (v.packets, v.bytes, v.last_seen);
        }
    }

    /// Reads every offloaded flow and retires those that may not stay.
    fn sync(&mut self, entries: &mut HashMap<usize, Entry>) {
        let now = self.now();
        let routes = self.routes.load();
        let shaping = self.shaping.load();
        let t = &self.conntrack.timeouts;
        let shortest = t.tcp.load(Relaxed).min(t.udp.load(Relaxed));
        let period = (entries.len().div_ceil(FOLD_BUDGET) as u32)
            .min(shortest / 4)
            .max(1);
        self.syncs = self.syncs.wrapping_add(1);
        let mut leaving = Vec::new();
        for (k, e) in entries.iter_mut() {
            // (Reading a shared slot costs no syscall: every second.)
            let in_slots = e.flows.iter().all(|f| f.flow.slot.is_some());
            if in_slots || e.phase.wrapping_add(self.syncs).is_multiple_of(period) {
                self.fold(e, now);
            }
            if !may_stay(e, &routes, &shaping) {
                leaving.push(*k);
            }
        }
        for k in leaving {
            if let Some(e) = entries.remove(&k) {
                self.retire(e);
            }
        }
    }
}

/// Whether a connection's flows may stay in XDP (see the module's list).
fn may_stay(e: &Entry, routes: &RouteTable, shaping: &ShapeTable) -> bool {
    let c = &e.conn;
    let state = c.state();
    if state == State::Removed || (c.proto == crate::wire::PROTO_TCP && state != State::Established)
    {
        return false;
    }
    if shaping
        .service_policer(c.proto, c.vip(), c.server.class)
        .is_some()
    {
        return false;
    }
    e.flows.iter().all(|f| {
        let v = &f.flow.value;
        let (_, hop) = translate::next_hop(c, f.flow.dir, routes);
        matches!(hop, NextHop::Ready(l2)
            if l2.ifindex == v.egress_ifindex
                && l2.dst_mac == v.dmac
                && l2.src_mac == v.smac
                && l2.mtu.min(u32::from(u16::MAX)) as u16 == v.mtu
                // (A tunnel's outer source: the director's address there.)
                && (v.flags & lvc_ebpf::FLOW_TUN == 0
                    || lvc_ebpf::addr_key_words(l2.src_ip.ip()).1 == v.saddr))
            && shaping.dev(v.egress_ifindex).is_none()
    })
}

/// A connection's identity while it is offloaded.
fn key_of(c: &Arc<Conn>) -> usize {
    Arc::as_ptr(c) as usize
}
