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

    /// The policer of the service (client class `class`, 0: none) a client
    /// packet is for, if any.
    #[inline]
    pub fn service_policer(&self, proto: u8, vip: (Addr, u16), class: u64) -> Option<&Policer> {
        self.services
            .iter()
            .find(|(k, _)| {
                k.proto.number() == proto
                    && Addr::from(k.vip) == vip.0
                    && k.ports.contains(vip.1)
                    && (class == 0) == k.from.is_empty()
                    && (class == 0 || k.from.tag() == class)
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

#[cfg(test)]
mod tests {
    //! [`PortShaper`] over simulated time (the clock is passed in, ns).
    //! A test frame has no UMEM and so no bytes: where bytes matter
    //! (rates, waits) frames are queued with [`hold`], which gives the
    //! length `queue` would read from the frame.

    use super::*;
    use lvc_proto::shape::{ClassSpec, Rate, Size};

    /// The shaped interface the tests use, and one shaped without classes.
    const DEV: &str = "eth0";
    const BARE: &str = "eth1";
    const MS: u64 = 1_000_000;

    fn id(s: &str) -> ClassId {
        s.parse().unwrap()
    }

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    /// A fifo class of `r` under the root, ceil = rate.
    fn class(classid: &str, r: &str) -> ClassSpec {
        ClassSpec {
            classid: id(classid),
            parent: None,
            rate: rate(r),
            ceil: None,
            burst: None,
            prio: 0,
            bounded: false,
            isolated: false,
            qdisc: Qdisc::default(),
        }
    }

    fn under(parent: &str, c: ClassSpec) -> ClassSpec {
        ClassSpec {
            parent: Some(id(parent)),
            ..c
        }
    }

    fn ceil(r: &str, c: ClassSpec) -> ClassSpec {
        ClassSpec {
            ceil: Some(rate(r)),
            ..c
        }
    }

    fn fifo(limit: u32, c: ClassSpec) -> ClassSpec {
        ClassSpec {
            qdisc: Qdisc::Fifo { limit: Some(limit) },
            ..c
        }
    }

    /// `DEV` at 100mbit with these classes.
    fn dev(classes: Vec<ClassSpec>) -> DevShape {
        DevShape {
            classes,
            ..DevShape::new(DEV, rate("100mbit"))
        }
    }

    /// Compiled as the daemon does (counters carried over from `old`).
    fn build(devs: Vec<DevShape>, police: Vec<PoliceSpec>, old: &ShapeTable) -> ShapeTable {
        let cfg = ShapeConfig { devs, police };
        let ifindex = |d: &str| {
            [DEV, BARE]
                .iter()
                .position(|x| *x == d)
                .map(|i| i as u32 + 2)
        };
        ShapeTable::build(&cfg, ifindex, old, 0).expect("a valid configuration")
    }

    /// Worker 0's queues for interface `name`.
    fn shaper(t: &ShapeTable, name: &str) -> PortShaper {
        let d = t.devs.iter().find(|d| d.spec.dev == name).expect("shaped");
        PortShaper::new(Arc::clone(d), 0, 1)
    }

    /// The node of `classid` (`1:` is the root).
    fn node(ps: &PortShaper, classid: &str) -> usize {
        let want = id(classid);
        ps.dev
            .ids
            .iter()
            .position(|c| *c == want)
            .unwrap_or_else(|| panic!("no class {classid}"))
    }

    /// Frames queued in `classid` (none if it has no queue).
    fn queued(ps: &PortShaper, classid: &str) -> usize {
        ps.leaves[node(ps, classid)]
            .as_ref()
            .map_or(0, Leaf::packets)
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Outcome {
        Direct,
        Queued,
        Policed,
        Dropped,
    }

    /// Offers a (bytes-less) frame classified into `classid`.
    fn offer(ps: &mut PortShaper, classid: &str, now: u64, room: bool) -> Outcome {
        let leaf = node(ps, classid);
        match ps.enqueue(Frame::for_test(), leaf, &Header::default(), now, room) {
            Enqueued::Direct(_) => Outcome::Direct,
            Enqueued::Queued => Outcome::Queued,
            Enqueued::Policed(_) => Outcome::Policed,
            Enqueued::Dropped(_) => Outcome::Dropped,
        }
    }

    /// Queues a `len`-byte frame into `classid` as `queue` does.
    fn hold(ps: &mut PortShaper, classid: &str, len: u32, now: u64) {
        let leaf = node(ps, classid);
        let q = ps.leaves[leaf].as_mut().expect("a leaf");
        if q.is_empty() {
            ps.vtime[leaf] = ps.vtime[leaf].max(ps.vclock);
        }
        let item = Queued {
            frame: Frame::for_test(),
            len,
            flow: 0,
            tos: 0,
        };
        assert!(q.enqueue(item, now).is_none(), "{classid} has room");
        let c = &ps.dev.counters[leaf];
        c.backlog_packets.fetch_add(1, Relaxed);
        c.backlog_bytes.fetch_add(i64::from(len), Relaxed);
        ps.held += 1;
    }

    fn counters<'a>(ps: &'a PortShaper, classid: &str) -> &'a ClassCounters {
        &ps.dev.counters[node(ps, classid)]
    }

    /// Fails listing every message in `wrong`.
    fn report(wrong: &[String], of: usize) {
        assert!(
            wrong.is_empty(),
            "{} wrong (of {of} cases):\n  {}",
            wrong.len(),
            wrong.join("\n  ")
        );
    }

    /// A frame offered to a class: queued, sent direct, policed or
    /// dropped, as `enqueue` says.
    struct Offer {
        name: &'static str,
        dev: &'static str,
        class: &'static str,
        /// Frames queued there first.
        before: usize,
        room: bool,
        /// Bytes the class's policer is overdrawn by at time 0 (a test
        /// frame has no bytes: it cannot overdraw it itself).
        overdrawn: u32,
        /// When the frame is offered (ns).
        at: u64,
        expect: Outcome,
        /// Frames queued in the class afterwards, and its drops.
        queued: usize,
        drops: u64,
    }

    fn offers() -> Vec<Offer> {
        let o = |name, class, expect, queued, drops| Offer {
            name,
            dev: DEV,
            class,
            before: 0,
            room: true,
            overdrawn: 0,
            at: 0,
            expect,
            queued,
            drops,
        };
        use Outcome::*;
        vec![
            o("a leaf with room queues", "1:10", Queued, 1, 0),
            Offer {
                room: false,
                ..o("no room in the worker: dropped", "1:10", Dropped, 0, 1)
            },
            Offer {
                before: 2,
                ..o("a full fifo drops the newcomer", "1:10", Dropped, 2, 1)
            },
            o("an inner class has no queue: direct", "1:1", Direct, 0, 0),
            o(
                "the root of a tree has no queue: direct",
                "1:",
                Direct,
                0,
                0,
            ),
            Offer {
                dev: BARE,
                ..o(
                    "an interface without classes queues at its root",
                    "1:",
                    Queued,
                    1,
                    0,
                )
            },
            o("within the policer's rate: queued", "1:20", Queued, 1, 0),
            Offer {
                overdrawn: 1500,
                at: MS,
                ..o("above the policer's rate: policed", "1:20", Policed, 0, 1)
            },
            Offer {
                overdrawn: 1500,
                at: MS,
                room: false,
                ..o("policed before room is looked at", "1:20", Policed, 0, 1)
            },
            // 8mbit: 1500 bytes of debt are paid back in 1.5 ms.
            Offer {
                overdrawn: 1500,
                at: 3 * MS / 2,
                ..o("the policer refilled: queued", "1:20", Queued, 1, 0)
            },
            Offer {
                room: false,
                ..o(
                    "within the policer, no room: dropped",
                    "1:20",
                    Dropped,
                    0,
                    1,
                )
            },
        ]
    }

    #[test]
    fn enqueue_queues_sends_direct_polices_or_drops() {
        let devs = vec![
            dev(vec![
                class("1:1", "100mbit"),
                fifo(2, under("1:1", class("1:10", "10mbit"))),
                under("1:1", class("1:20", "10mbit")),
            ]),
            DevShape::new(BARE, rate("100mbit")),
        ];
        let police = vec![PoliceSpec {
            target: PoliceTarget::Class {
                dev: DEV.into(),
                classid: id("1:20"),
            },
            rate: rate("8mbit"),
            burst: Size(1600),
        }];
        let cases = offers();
        let mut wrong = Vec::new();
        for c in &cases {
            let t = build(devs.clone(), police.clone(), &ShapeTable::default());
            let mut ps = shaper(&t, c.dev);
            for _ in 0..c.before {
                assert_eq!(offer(&mut ps, c.class, 0, true), Outcome::Queued);
            }
            let policer = ps.dev.police[node(&ps, c.class)].clone();
            if let Some(p) = &policer
                && c.overdrawn > 0
            {
                let mut b = p.bucket.lock().unwrap();
                let full = b.balance_bytes() as u32;
                b.charge(full + c.overdrawn);
            }
            let got = offer(&mut ps, c.class, c.at, c.room);
            let k = counters(&ps, c.class);
            let found = (
                got,
                queued(&ps, c.class),
                ps.held,
                k.backlog_packets.load(Relaxed),
                k.drops.load(Relaxed),
            );
            let want = (c.expect, c.queued, c.queued, c.queued as i64, c.drops);
            if found != want {
                wrong.push(format!(
                    "{}: (outcome, queued, held, backlog, drops) {found:?}, expected {want:?}",
                    c.name
                ));
            }
            if let Some(p) = &policer {
                let pc = &p.counters;
                let policed = u64::from(c.expect == Outcome::Policed);
                let found = (
                    pc.passed_packets.load(Relaxed),
                    pc.dropped_packets.load(Relaxed),
                );
                if found != (1 - policed, policed) {
                    wrong.push(format!(
                        "{}: policer (passed, dropped) {found:?}, expected {:?}",
                        c.name,
                        (1 - policed, policed)
                    ));
                }
            }
        }
        report(&wrong, cases.len());
    }

    /// Runs `secs` of simulated time in 100 µs rounds, the `busy` classes
    /// always backlogged with 1500-byte frames; mbit/s each class sent.
    fn send_rates(t: &ShapeTable, busy: &[&str], secs: u64) -> Vec<f64> {
        let mut ps = shaper(t, DEV);
        let mut out = Vec::new();
        let mut now = 0;
        while now < secs * 1_000 * MS {
            now += MS / 10;
            for c in busy {
                while queued(&ps, c) < 4 {
                    hold(&mut ps, c, 1500, now);
                }
            }
            ps.dequeue(now, 64, &mut out);
            out.clear();
        }
        busy.iter()
            .map(|c| counters(&ps, c).bytes.load(Relaxed) as f64 * 8.0 / secs as f64 / 1e6)
            .collect()
    }

    #[test]
    fn dequeue_keeps_class_rates_over_time() {
        let tbf = Qdisc::Tbf {
            rate: rate("7mbit"),
            burst: Size(5000),
            limit: None,
            latency: None,
        };
        let bounded = |c: ClassSpec| ClassSpec { bounded: true, ..c };
        let prio = |p: u8, c: ClassSpec| ClassSpec { prio: p, ..c };
        let split = || {
            vec![
                ceil("100mbit", class("1:10", "70mbit")),
                ceil("100mbit", class("1:20", "30mbit")),
            ]
        };
        // (name, classes, busy classes, mbit/s each sends)
        type Case = (
            &'static str,
            Vec<ClassSpec>,
            &'static [&'static str],
            &'static [f64],
        );
        let cases: Vec<Case> = vec![
            (
                "a bounded class sends at its rate",
                vec![bounded(ceil("100mbit", class("1:10", "10mbit")))],
                &["1:10"],
                &[10.0],
            ),
            (
                "a class borrows up to its ceil",
                vec![ceil("60mbit", class("1:10", "10mbit"))],
                &["1:10"],
                &[60.0],
            ),
            (
                "guarantees split the link",
                split(),
                &["1:10", "1:20"],
                &[70.0, 30.0],
            ),
            ("an idle class's rate is lent", split(), &["1:20"], &[100.0]),
            (
                "the spare goes to the lower prio first",
                vec![
                    prio(1, ceil("60mbit", class("1:10", "10mbit"))),
                    prio(5, ceil("100mbit", class("1:20", "10mbit"))),
                ],
                &["1:10", "1:20"],
                &[60.0, 40.0],
            ),
            (
                "a bounded parent caps its children",
                vec![
                    bounded(class("1:1", "50mbit")),
                    ceil("50mbit", under("1:1", class("1:10", "10mbit"))),
                ],
                &["1:10"],
                &[50.0],
            ),
            (
                "a tbf leaf keeps its own rate",
                vec![ClassSpec {
                    qdisc: tbf,
                    ..class("1:10", "100mbit")
                }],
                &["1:10"],
                &[7.0],
            ),
        ];
        let mut wrong = Vec::new();
        for (name, classes, busy, expect) in &cases {
            let t = build(vec![dev(classes.clone())], vec![], &ShapeTable::default());
            let got = send_rates(&t, busy, 2);
            // Within 2 % (the first bursts are a fraction of that).
            let ok = got
                .iter()
                .zip(*expect)
                .all(|(g, e)| (g - e).abs() <= e * 0.02);
            if !ok {
                wrong.push(format!("{name}: {got:.2?} mbit/s, expected {expect:?}"));
            }
        }
        report(&wrong, cases.len());
    }

    /// What one dequeue round sends and returns, from a 1mbit bounded
    /// class with a 1600-byte burst holding 1500-byte frames.
    #[test]
    fn dequeue_says_when_to_come_back() {
        // (name, frames held, budget, frames sent, returned)
        let cases: [(&str, usize, usize, usize, Option<u64>); 5] = [
            ("nothing held: no wait", 0, 8, 0, None),
            ("all sent: no wait", 2, 8, 2, None),
            ("stopped by the budget: at once", 2, 1, 1, Some(0)),
            (
                "the TX ring is full (budget 0): a kick",
                2,
                0,
                0,
                Some(20_000),
            ),
            // Two fit the burst (the second overdraws it by 1400 bytes,
            // 11.2 ms at 1mbit); the third waits for those.
            (
                "out of tokens: until green again",
                3,
                8,
                2,
                Some(11_200 * 1_000),
            ),
        ];
        let c = ClassSpec {
            bounded: true,
            burst: Some(Size(1600)),
            ..class("1:10", "1mbit")
        };
        let mut wrong = Vec::new();
        for (name, held, budget, sent, wait) in cases {
            let t = build(vec![dev(vec![c.clone()])], vec![], &ShapeTable::default());
            let mut ps = shaper(&t, DEV);
            for _ in 0..held {
                hold(&mut ps, "1:10", 1500, 0);
            }
            let mut out = Vec::new();
            let got = ps.dequeue(0, budget, &mut out);
            let found = (out.len(), got, ps.held);
            if found != (sent, wait, held - sent) {
                wrong.push(format!(
                    "{name}: (sent, returned, held) {found:?}, expected {:?}",
                    (sent, wait, held - sent)
                ));
            }
        }
        report(&wrong, cases.len());
        // The wait is exact: a nanosecond early is too early.
        let t = build(vec![dev(vec![c])], vec![], &ShapeTable::default());
        let mut ps = shaper(&t, DEV);
        for _ in 0..3 {
            hold(&mut ps, "1:10", 1500, 0);
        }
        let mut out = Vec::new();
        let wait = ps.dequeue(0, 8, &mut out).expect("a frame left");
        assert_eq!(ps.dequeue(wait - 1, 8, &mut out), Some(1_000));
        assert_eq!((out.len(), ps.held), (2, 1));
        assert!(counters(&ps, "1:10").overlimits.load(Relaxed) >= 2);
        assert_eq!(ps.dequeue(wait, 8, &mut out), None);
        assert_eq!((out.len(), ps.held), (3, 0));
        assert_eq!(counters(&ps, "1:10").packets.load(Relaxed), 3);
    }

    #[test]
    fn adopt_carries_frames_into_the_same_class() {
        // (what became of the class, class, frames it held, frames carried
        // into the new shaper, frames dropped)
        let cases = [
            ("unchanged: all carried", "1:10", 2, 2, 0),
            ("gone: all dropped", "1:20", 1, 0, 1),
            ("now has a child (no queue): all dropped", "1:30", 3, 0, 3),
            ("its new fifo holds one: one carried", "1:40", 2, 1, 1),
        ];
        let old_t = build(
            vec![dev(vec![
                class("1:10", "10mbit"),
                class("1:20", "10mbit"),
                class("1:30", "10mbit"),
                class("1:40", "10mbit"),
            ])],
            vec![],
            &ShapeTable::default(),
        );
        let new_t = build(
            vec![dev(vec![
                class("1:10", "10mbit"),
                class("1:30", "10mbit"),
                under("1:30", class("1:31", "10mbit")),
                fifo(1, class("1:40", "10mbit")),
                class("1:50", "10mbit"),
            ])],
            vec![],
            &old_t,
        );
        let mut old = shaper(&old_t, DEV);
        for (_, class, held, ..) in cases {
            for _ in 0..held {
                assert_eq!(offer(&mut old, class, 0, true), Outcome::Queued);
            }
        }
        assert_eq!(old.held, 8);
        let old_dev = Arc::clone(&old.dev);
        let mut new = shaper(&new_t, DEV);
        let mut dropped = Vec::new();
        new.adopt(old, MS, &mut dropped);
        let mut wrong = Vec::new();
        for (name, class, _, carried, lost) in cases {
            let at = old_dev.ids.iter().position(|c| *c == id(class)).unwrap();
            // (A class that stays keeps its counters: its backlog is then
            // the new queue's.)
            let oc = &old_dev.counters[at];
            let now_queued = if new.dev.ids.contains(&id(class)) {
                queued(&new, class)
            } else {
                0
            };
            let found = (
                now_queued,
                oc.backlog_packets.load(Relaxed),
                oc.drops.load(Relaxed),
            );
            let want = (carried, carried as i64, lost);
            if found != want {
                wrong.push(format!(
                    "{class} {name}: (queued in the new shaper, backlog, drops) {found:?}, expected {want:?}"
                ));
            }
        }
        report(&wrong, cases.len());
        assert_eq!((new.held, dropped.len()), (3, 5));
        assert_eq!(queued(&new, "1:31") + queued(&new, "1:50"), 0);
        // And the new shaper sends them.
        let mut out = Vec::new();
        assert_eq!(new.dequeue(MS, 64, &mut out), None);
        assert_eq!((out.len(), new.held), (3, 0));
    }

    #[test]
    fn drain_returns_every_frame_as_dropped() {
        let t = build(
            vec![dev(vec![
                class("1:10", "10mbit"),
                ClassSpec {
                    qdisc: Qdisc::Sfq {
                        quantum: None,
                        perturb: None,
                        flows: None,
                        limit: None,
                    },
                    ..class("1:20", "10mbit")
                },
            ])],
            vec![],
            &ShapeTable::default(),
        );
        let mut ps = shaper(&t, DEV);
        for (class, n) in [("1:10", 3), ("1:20", 2)] {
            for _ in 0..n {
                assert_eq!(offer(&mut ps, class, 0, true), Outcome::Queued);
            }
        }
        assert_eq!(ps.held, 5);
        assert_eq!(ps.drain().len(), 5);
        assert_eq!(ps.held, 0);
        for (class, n) in [("1:10", 3), ("1:20", 2)] {
            let k = counters(&ps, class);
            assert_eq!(queued(&ps, class), 0, "{class}");
            assert_eq!(k.backlog_packets.load(Relaxed), 0, "{class}");
            assert_eq!(k.drops.load(Relaxed), n, "{class}");
        }
        assert!(ps.drain().is_empty());
        assert_eq!(ps.dequeue(MS, 64, &mut Vec::new()), None);
    }

    /// `held` counts the frames the shaper holds through every path.
    #[test]
    fn held_counts_the_frames_held() {
        enum Step {
            Enqueue(&'static str, bool),
            Send(usize),
            Drain,
        }
        use Step::*;
        // (step, frames held after it)
        let steps = [
            (Enqueue("1:10", true), 1),
            (Enqueue("1:20", true), 2),
            (Enqueue("1:10", true), 3),
            (Enqueue("1:10", false), 3),
            (Enqueue("1:10", true), 3), // the fifo holds two
            (Enqueue("1:1", true), 3),  // direct
            (Send(1), 2),
            (Enqueue("1:20", true), 3),
            (Send(0), 3),
            (Send(64), 0),
            (Enqueue("1:10", true), 1),
            (Enqueue("1:20", true), 2),
            (Drain, 0),
        ];
        let t = build(
            vec![dev(vec![
                class("1:1", "100mbit"),
                fifo(2, under("1:1", class("1:10", "10mbit"))),
                under("1:1", class("1:20", "10mbit")),
            ])],
            vec![],
            &ShapeTable::default(),
        );
        let mut ps = shaper(&t, DEV);
        let mut wrong = Vec::new();
        for (i, (step, held)) in steps.iter().enumerate() {
            let what = match step {
                Enqueue(class, room) => {
                    let got = offer(&mut ps, class, 0, *room);
                    format!("offer to {class} (room: {room}): {got:?}")
                }
                Send(budget) => {
                    let mut out = Vec::new();
                    ps.dequeue(0, *budget, &mut out);
                    format!("send {budget}: sent {}", out.len())
                }
                Drain => format!("drain: {}", ps.drain().len()),
            };
            let backlog: i64 = ps
                .dev
                .counters
                .iter()
                .map(|c| c.backlog_packets.load(Relaxed))
                .sum();
            if (ps.held, backlog) != (*held, *held as i64) {
                wrong.push(format!(
                    "step {i}, {what}: held {}, backlog {backlog}, expected {held}",
                    ps.held
                ));
            }
        }
        report(&wrong, steps.len());
    }
}
