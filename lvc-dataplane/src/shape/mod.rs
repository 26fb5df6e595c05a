//! shape: the stage between rewrite and tx. A frame leaving through a
//! shaped interface is classified into a leaf class and queued (in its
//! own UMEM frame); each worker iteration then sends what the class
//! tree's tokens allow. Policers drop, never queue.
//!
//! Shared by all workers (so rates are the interface's, not a queue's):
//! the compiled configuration ([`ShapeTable`], published like the
//! service table), each interface's tokens (one lock, taken once per
//! dequeue round), counters (relaxed atomics). Per worker: the queues
//! ([`PortShaper`]) — a frame belongs to one worker's UMEM.

pub mod bucket;
pub mod classify;
pub mod edit;
pub mod qdisc;
pub mod tree;

use crate::addr::Addr;
use crate::io::xsk::Frame;
use bucket::TokenBucket;
use classify::{Classifier, FlowMeta, Header};
use lvc_proto::ServiceKey;
use lvc_proto::shape::{
    ClassId, ClassInfo, ClassStats, DevInfo, DevShape, FilterInfo, PoliceInfo, PoliceSpec,
    PoliceTarget, Qdisc, ShapeConfig, ShapeListing,
};
use qdisc::{Item, Leaf};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tree::{Mode, Node, TreeState};

/// Frames one worker may hold in shaping queues, all interfaces together:
/// what its UMEM has beyond what the rings need.
pub const MAX_HELD: usize = crate::io::xsk::HELD_FRAMES;

/// One class's counters (the root's too), summed over workers.
#[derive(Debug, Default)]
pub struct ClassCounters {
    pub bytes: AtomicU64,
    pub packets: AtomicU64,
    pub drops: AtomicU64,
    pub overlimits: AtomicU64,
    pub backlog_packets: AtomicI64,
    pub backlog_bytes: AtomicI64,
    pub borrowed_packets: AtomicU64,
    pub borrowed_bytes: AtomicU64,
    rate_bps: AtomicU64,
    last_bytes: AtomicU64,
}

impl ClassCounters {
    fn stats(&self) -> ClassStats {
        ClassStats {
            bytes: self.bytes.load(Relaxed),
            packets: self.packets.load(Relaxed),
            drops: self.drops.load(Relaxed),
            overlimits: self.overlimits.load(Relaxed),
            backlog_packets: self.backlog_packets.load(Relaxed).max(0) as u64,
            backlog_bytes: self.backlog_bytes.load(Relaxed).max(0) as u64,
            rate_bps: self.rate_bps.load(Relaxed),
            borrowed_packets: self.borrowed_packets.load(Relaxed),
            borrowed_bytes: self.borrowed_bytes.load(Relaxed),
        }
    }

    fn sample(&self, secs: f64) {
        let now = self.bytes.load(Relaxed);
        let was = self.last_bytes.swap(now, Relaxed);
        let bps = (now.saturating_sub(was)) as f64 * 8.0 / secs;
        self.rate_bps.store(bps as u64, Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct PoliceCounters {
    pub passed_packets: AtomicU64,
    pub passed_bytes: AtomicU64,
    pub dropped_packets: AtomicU64,
    pub dropped_bytes: AtomicU64,
}

/// A rate + burst: what exceeds it is dropped.
#[derive(Debug)]
pub struct Policer {
    pub spec: PoliceSpec,
    bucket: Mutex<TokenBucket>,
    pub counters: Arc<PoliceCounters>,
}

impl Policer {
    fn new(spec: PoliceSpec, counters: Arc<PoliceCounters>, now: u64) -> Self {
        Self {
            bucket: Mutex::new(TokenBucket::new(spec.rate.0, spec.burst.0, now)),
            spec,
            counters,
        }
    }

    /// Whether a `len`-byte packet conforms (and is paid for).
    #[inline]
    pub fn admit(&self, len: u32, now: u64) -> bool {
        let ok = self
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(len, now);
        let c = &self.counters;
        if ok {
            c.passed_packets.fetch_add(1, Relaxed);
            c.passed_bytes.fetch_add(u64::from(len), Relaxed);
        } else {
            c.dropped_packets.fetch_add(1, Relaxed);
            c.dropped_bytes.fetch_add(u64::from(len), Relaxed);
        }
        ok
    }
}

/// One shaped interface, compiled. Node 0 is the root.
#[derive(Debug)]
pub struct DevShaper {
    pub ifindex: u32,
    pub spec: DevShape,
    pub nodes: Vec<Node>,
    pub ids: Vec<ClassId>,
    /// Each node's queue discipline (leaves only).
    pub qdiscs: Vec<Option<Qdisc>>,
    pub state: Mutex<TreeState>,
    pub counters: Vec<Arc<ClassCounters>>,
    classifier: Classifier,
    /// Per filter in priority order: (prio, hits).
    filter_hits: Vec<(u32, Arc<AtomicU64>)>,
    pub default: Option<usize>,
    /// Unclassified packets sent unshaped.
    pub direct: Arc<AtomicU64>,
    pub police: Vec<Option<Arc<Policer>>>,
}

impl DevShaper {
    /// Which node a packet goes to: Some(leaf) or None (send directly).
    #[inline]
    pub fn classify(&self, f: &[u8], h: &Header, meta: &FlowMeta) -> Option<usize> {
        match self.classifier.classify(f, h, meta) {
            Some((i, node)) => {
                self.filter_hits[i].1.fetch_add(1, Relaxed);
                Some(node)
            }
            None => self.default,
        }
    }

    fn info(&self) -> DevInfo {
        let hits: HashMap<u32, u64> = self
            .filter_hits
            .iter()
            .map(|(p, h)| (*p, h.load(Relaxed)))
            .collect();
        DevInfo {
            dev: self.spec.dev.clone(),
            rate: self.spec.rate,
            default: self.spec.default,
            stats: self.counters[0].stats(),
            direct_packets: self.direct.load(Relaxed),
            classes: self
                .spec
                .classes
                .iter()
                .enumerate()
                .map(|(i, c)| ClassInfo {
                    spec: c.clone(),
                    leaf: self.nodes[i + 1].leaf,
                    stats: self.counters[i + 1].stats(),
                })
                .collect(),
            filters: self
                .spec
                .filters
                .iter()
                .map(|f| FilterInfo {
                    spec: f.clone(),
                    hits: hits.get(&f.prio).copied().unwrap_or(0),
                })
                .collect(),
        }
    }
}

/// All shaping, as the workers see it.
#[derive(Debug, Default)]
pub struct ShapeTable {
    pub config: ShapeConfig,
    pub devs: Vec<Arc<DevShaper>>,
    /// Policers of services (checked as client packets arrive).
    pub services: Vec<(ServiceKey, Arc<Policer>)>,
}

impl ShapeTable {
    /// Compiles `cfg` (already validated). `ifindex` names each shaped
    /// interface; counters of what stays are carried over from `old`.
    pub fn build(
        cfg: &ShapeConfig,
        ifindex: impl Fn(&str) -> Option<u32>,
        old: &ShapeTable,
        now: u64,
    ) -> Result<Self, String> {
        cfg.validate()?;
        let old_police: HashMap<&PoliceTarget, &Arc<PoliceCounters>> = old
            .devs
            .iter()
            .flat_map(|d| d.police.iter().flatten())
            .chain(old.services.iter().map(|(_, p)| p))
            .map(|p| (&p.spec.target, &p.counters))
            .collect();
        let policer = |spec: &PoliceSpec| {
            let counters = old_police
                .get(&spec.target)
                .map_or_else(Arc::default, |c| Arc::clone(c));
            Arc::new(Policer::new(spec.clone(), counters, now))
        };
        let mut devs = Vec::new();
        for d in &cfg.devs {
            let ifindex = ifindex(&d.dev)
                .ok_or_else(|| format!("interface {} is not one lvc serves", d.dev))?;
            let prev = old.devs.iter().find(|o| o.spec.dev == d.dev);
            devs.push(Arc::new(compile(d, ifindex, prev, cfg, &policer, now)));
        }
        let services = cfg
            .police
            .iter()
            .filter_map(|p| match &p.target {
                PoliceTarget::Service(s) => Some((*s, policer(p))),
                PoliceTarget::Class { .. } => None,
            })
            .collect();
        Ok(Self {
            config: cfg.clone(),
            devs,
            services,
        })
    }

    #[inline]
    pub fn dev(&self, ifindex: u32) -> Option<&Arc<DevShaper>> {
        self.devs.iter().find(|d| d.ifindex == ifindex)
    }

    /// The policer of the service a client packet is for, if any.
    #[inline]
    pub fn service_policer(&self, proto: u8, vip: (Addr, u16)) -> Option<&Policer> {
        self.services
            .iter()
            .find(|(k, _)| {
                k.proto.number() == proto && Addr::from(k.vip) == vip.0 && k.ports.contains(vip.1)
            })
            .map(|(_, p)| &**p)
    }

    pub fn listing(&self) -> ShapeListing {
        let info = |p: &Policer| PoliceInfo {
            spec: p.spec.clone(),
            passed_packets: p.counters.passed_packets.load(Relaxed),
            passed_bytes: p.counters.passed_bytes.load(Relaxed),
            dropped_packets: p.counters.dropped_packets.load(Relaxed),
            dropped_bytes: p.counters.dropped_bytes.load(Relaxed),
        };
        ShapeListing {
            devs: self.devs.iter().map(|d| d.info()).collect(),
            police: self
                .devs
                .iter()
                .flat_map(|d| d.police.iter().flatten())
                .chain(self.services.iter().map(|(_, p)| p))
                .map(|p| info(p))
                .collect(),
        }
    }

    /// Updates each class's current rate (called every `secs`).
    pub fn sample(&self, secs: f64) {
        for c in self.devs.iter().flat_map(|d| &d.counters) {
            c.sample(secs);
        }
    }
}

fn compile(
    d: &DevShape,
    ifindex: u32,
    prev: Option<&Arc<DevShaper>>,
    cfg: &ShapeConfig,
    policer: &impl Fn(&PoliceSpec) -> Arc<Policer>,
    now: u64,
) -> DevShaper {
    let major = d.classes.first().map_or(1, |c| c.classid.major);
    let mut ids = vec![ClassId { major, minor: 0 }];
    ids.extend(d.classes.iter().map(|c| c.classid));
    let index: HashMap<ClassId, usize> = ids.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    let link = d.rate.0;
    let root_burst = lvc_proto::shape::default_burst(d.rate);
    let mut nodes = vec![Node {
        parent: None,
        prio: 0,
        bounded: true,
        isolated: false,
        leaf: false,
        rate: link,
        lend_rate: link,
        ceil: link,
        burst: root_burst,
        cburst: root_burst,
        tbf: None,
    }];
    for c in &d.classes {
        let parent = d.parent_of(c).map_or(0, |p| index[&p]);
        nodes.push(Node {
            parent: Some(parent),
            prio: c.prio,
            bounded: c.bounded,
            isolated: c.isolated,
            leaf: d.is_leaf(c.classid),
            rate: c.rate.0,
            lend_rate: c.rate.0,
            ceil: c.ceil().0,
            burst: c.burst(),
            cburst: c.cburst(),
            tbf: match &c.qdisc {
                Qdisc::Tbf { rate, burst, .. } => Some((rate.0, burst.0)),
                _ => None,
            },
        });
    }
    nodes[0].leaf = d.classes.is_empty();
    for i in 1..nodes.len() {
        if nodes[i].isolated
            && let Some(p) = nodes[i].parent
        {
            nodes[p].lend_rate = nodes[p].lend_rate.saturating_sub(nodes[i].rate).max(1);
        }
    }
    let counters = ids
        .iter()
        .map(|id| {
            prev.and_then(|p| {
                let i = p.ids.iter().position(|x| x == id)?;
                Some(p.counters[i].clone())
            })
            .unwrap_or_default()
        })
        .collect();
    let mut filters: Vec<&lvc_proto::shape::FilterSpec> = d.filters.iter().collect();
    filters.sort_by_key(|f| f.prio);
    let filter_hits = filters
        .iter()
        .map(|f| {
            let hits = prev
                .and_then(|p| p.filter_hits.iter().find(|(prio, _)| *prio == f.prio))
                .map_or_else(Arc::default, |(_, h)| h.clone());
            (f.prio, hits)
        })
        .collect();
    let classifier = Classifier::new(
        filters
            .iter()
            .map(|f| (f.prio, f.matches.as_slice(), index[&f.flowid]))
            .collect(),
    );
    let police = ids
        .iter()
        .map(|id| {
            cfg.police
                .iter()
                .find(|p| {
                    matches!(&p.target, PoliceTarget::Class { dev, classid }
                        if *dev == d.dev && classid == id)
                })
                .map(policer)
        })
        .collect();
    let qdiscs = std::iter::once(None)
        .chain(d.classes.iter().map(|c| Some(c.qdisc.clone())))
        .collect();
    DevShaper {
        ifindex,
        spec: d.clone(),
        state: Mutex::new(TreeState::new(&nodes, now)),
        nodes,
        ids,
        qdiscs,
        counters,
        classifier,
        filter_hits,
        default: d.default.and_then(|c| index.get(&c).copied()),
        direct: prev.map_or_else(Arc::default, |p| p.direct.clone()),
        police,
    }
}

/// A queued frame.
pub struct Queued {
    pub frame: Frame,
    len: u32,
    flow: u32,
    tos: u8,
}

impl Item for Queued {
    fn bytes(&self) -> u32 {
        self.len
    }
    fn flow(&self) -> u32 {
        self.flow
    }
    fn tos(&self) -> u8 {
        self.tos
    }
}

/// What became of a frame offered to a shaped interface.
pub enum Enqueued {
    /// Unclassified and no default class: send it as it is.
    Direct(Frame),
    Queued,
    /// Above the class's policer.
    Policed(Frame),
    /// The queue was full: free this frame (it may be an
    /// older one than the one offered — sfq drops from the longest flow).
    Dropped(Frame),
}

/// One worker's queues for one shaped interface.
pub struct PortShaper {
    pub dev: Arc<DevShaper>,
    /// This worker's number (its share in each class).
    worker: usize,
    leaves: Vec<Option<Leaf<Queued>>>,
    /// Per leaf: bytes sent scaled by its rate (ties within a prio go to
    /// the least served relative to its guarantee).
    vtime: Vec<u64>,
    vclock: u64,
    /// Frames held here.
    pub held: usize,
}

impl PortShaper {
    pub fn new(dev: Arc<DevShaper>, worker: usize, seed: u64) -> Self {
        let leaves = dev
            .nodes
            .iter()
            .zip(&dev.qdiscs)
            .enumerate()
            .map(|(i, (n, q))| {
                n.leaf
                    .then(|| Leaf::new(q.as_ref().unwrap_or(&Qdisc::default()), seed ^ i as u64))
            })
            .collect();
        let n = dev.nodes.len();
        Self {
            dev,
            worker,
            leaves,
            vtime: vec![0; n],
            vclock: 0,
            held: 0,
        }
    }

    /// Queues a frame classified into `leaf` (see [`DevShaper::classify`]);
    /// `room`: whether the worker may hold another frame.
    pub fn enqueue(
        &mut self,
        frame: Frame,
        leaf: usize,
        h: &Header,
        now: u64,
        room: bool,
    ) -> Enqueued {
        let len = frame.len() as u32;
        if let Some(p) = &self.dev.police[leaf]
            && !p.admit(len, now)
        {
            self.dev.counters[leaf].drops.fetch_add(1, Relaxed);
            return Enqueued::Policed(frame);
        }
        self.queue(frame, leaf, h, now, room)
    }

    /// Queues without policing (the frame was policed when it came).
    fn queue(&mut self, frame: Frame, leaf: usize, h: &Header, now: u64, room: bool) -> Enqueued {
        let len = frame.len() as u32;
        let c = &self.dev.counters[leaf];
        // A tbf packet larger than its bucket could never leave (tc's
        // max_size): drop it rather than stall the class.
        if let Some((_, burst)) = self.dev.nodes[leaf].tbf
            && u64::from(len) > burst
        {
            c.drops.fetch_add(1, Relaxed);
            return Enqueued::Dropped(frame);
        }
        let Some(q) = self.leaves[leaf].as_mut() else {
            return Enqueued::Direct(frame);
        };
        if !room {
            c.drops.fetch_add(1, Relaxed);
            return Enqueued::Dropped(frame);
        }
        if q.is_empty() {
            self.vtime[leaf] = self.vtime[leaf].max(self.vclock);
        }
        let item = Queued {
            frame,
            len,
            flow: h.flow,
            tos: h.tos,
        };
        c.backlog_packets.fetch_add(1, Relaxed);
        c.backlog_bytes.fetch_add(i64::from(len), Relaxed);
        self.held += 1;
        match q.enqueue(item, now) {
            None => Enqueued::Queued,
            Some(dropped) => {
                self.held -= 1;
                c.drops.fetch_add(1, Relaxed);
                c.backlog_packets.fetch_sub(1, Relaxed);
                c.backlog_bytes.fetch_sub(i64::from(dropped.len), Relaxed);
                Enqueued::Dropped(dropped.frame)
            }
        }
    }

    /// Sends (into `out`) up to `budget` frames the tokens allow. Returns
    /// how long to wait before there may be more, if frames remain.
    pub fn dequeue(&mut self, now: u64, budget: usize, out: &mut Vec<Frame>) -> Option<u64> {
        if self.held == 0 {
            return None;
        }
        let dev = self.dev.clone();
        let nodes = &dev.nodes;
        let mut st = dev.state.lock().unwrap_or_else(|p| p.into_inner());
        st.refill(now);
        let mut sent = 0;
        // Leaves that had tokens but let another worker go first.
        let mut yielded: u64 = 0;
        while sent < budget && self.held > 0 {
            // (borrowing?, prio, vtime) ranks; then leaf, mode, length.
            type Pick = ((bool, u8, u64), usize, Mode, u32);
            let mut best: Option<Pick> = None;
            for (i, q) in self.leaves.iter_mut().enumerate() {
                let Some(q) = q.as_mut() else { continue };
                let Some(len) = q.peek_len() else {
                    continue;
                };
                if let Some(m) = st.mode(nodes, i, len) {
                    if !st.fair(i, self.worker, q.flows(), now) {
                        yielded |= 1 << (i % 64);
                        continue;
                    }
                    let key = (m != Mode::Green, nodes[i].prio, self.vtime[i]);
                    if best.as_ref().is_none_or(|b| key < b.0) {
                        best = Some((key, i, m, len));
                    }
                }
            }
            let Some((_, i, mode, len)) = best else {
                break;
            };
            let Some(q) = self.leaves[i].as_mut() else {
                break;
            };
            let Some(item) = q.dequeue() else { break };
            st.charge(nodes, i, len, mode);
            st.served(i, self.worker, len, q.is_empty());
            self.held -= 1;
            sent += 1;
            self.vtime[i] += u64::from(len) * 8_000_000_000 / nodes[i].rate.max(1);
            self.vclock = self.vtime[i];
            let c = &dev.counters[i];
            c.backlog_packets.fetch_sub(1, Relaxed);
            c.backlog_bytes.fetch_sub(i64::from(len), Relaxed);
            if let Mode::Borrow(_) = mode {
                c.borrowed_packets.fetch_add(1, Relaxed);
                c.borrowed_bytes.fetch_add(u64::from(len), Relaxed);
            }
            let mut at = Some(i);
            while let Some(n) = at {
                dev.counters[n].packets.fetch_add(1, Relaxed);
                dev.counters[n].bytes.fetch_add(u64::from(len), Relaxed);
                at = nodes[n].parent;
            }
            out.push(item.frame);
        }
        if self.held == 0 {
            return None;
        }
        if budget == 0 {
            // The TX ring is full: completions come back within a kick.
            return Some(20_000);
        }
        if sent == budget {
            return Some(0);
        }
        // Blocked: count it, and find when the first leaf may go again
        // (soon, if it only let another worker's flows go first).
        let mut wait = u64::MAX;
        for (i, q) in self.leaves.iter_mut().enumerate() {
            let Some(len) = q.as_mut().and_then(Leaf::peek_len) else {
                continue;
            };
            if yielded & (1 << (i % 64)) != 0 && st.mode(nodes, i, len).is_some() {
                wait = wait.min(50_000);
            } else {
                dev.counters[i].overlimits.fetch_add(1, Relaxed);
                wait = wait.min(st.wait_ns(nodes, i, len).max(1_000));
            }
        }
        Some(wait)
    }

    /// Takes over the frames `old` holds (the configuration changed):
    /// into the class of the same id if it still is a leaf, else into
    /// `dropped`.
    pub fn adopt(&mut self, mut old: PortShaper, now: u64, dropped: &mut Vec<Frame>) {
        for (i, q) in old.leaves.iter_mut().enumerate() {
            let Some(q) = q else { continue };
            let items = q.drain();
            let oc = &old.dev.counters[i];
            for item in items {
                oc.backlog_packets.fetch_sub(1, Relaxed);
                oc.backlog_bytes.fetch_sub(i64::from(item.len), Relaxed);
                let to = self
                    .dev
                    .ids
                    .iter()
                    .position(|id| *id == old.dev.ids[i])
                    .filter(|&j| self.leaves[j].is_some());
                let h = Header {
                    flow: item.flow,
                    tos: item.tos,
                    ..Header::default()
                };
                match to {
                    Some(j) => match self.queue(item.frame, j, &h, now, true) {
                        Enqueued::Queued => {}
                        Enqueued::Direct(f) | Enqueued::Dropped(f) | Enqueued::Policed(f) => {
                            dropped.push(f)
                        }
                    },
                    None => {
                        oc.drops.fetch_add(1, Relaxed);
                        dropped.push(item.frame);
                    }
                }
            }
        }
        old.held = 0;
    }

    /// Every frame still queued (the worker is stopping, or the interface
    /// is no longer shaped): counted as dropped.
    pub fn drain(&mut self) -> Vec<Frame> {
        self.held = 0;
        let mut out = Vec::new();
        for (i, q) in self.leaves.iter_mut().enumerate() {
            let Some(q) = q else { continue };
            let c = &self.dev.counters[i];
            for item in q.drain() {
                c.backlog_packets.fetch_sub(1, Relaxed);
                c.backlog_bytes.fetch_sub(i64::from(item.len), Relaxed);
                c.drops.fetch_add(1, Relaxed);
                out.push(item.frame);
            }
        }
        out
    }
}
