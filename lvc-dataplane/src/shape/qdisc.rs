//! Leaf queue disciplines: fifo, sfq, prio3 (pfifo_fast's bands), red and
//! tbf. Generic over the queued item so they are tested without frames;
//! in the worker an item owns its UMEM frame. Every queue is bounded and
//! hands back what it drops — the caller frees the frames and counts them.

use lvc_proto::shape::Qdisc as Spec;
use std::collections::VecDeque;

/// What a queue needs to know about a packet.
pub trait Item {
    /// Frame length, bytes.
    fn bytes(&self) -> u32;
    /// The flow's hash (5-tuple), for sfq.
    fn flow(&self) -> u32;
    /// The IP TOS / traffic class byte, for prio3.
    fn tos(&self) -> u8;
}

/// A leaf's queue.
pub enum Leaf<T> {
    Fifo(Fifo<T>),
    Sfq(Sfq<T>),
    Prio3(Prio3<T>),
    Red(Red<T>),
    /// tbf's queue; its bucket is shared by the workers (in the tree).
    Tbf(Fifo<T>),
}

impl<T: Item> Leaf<T> {
    /// The queue `spec` describes; `seed` varies sfq's hash per queue.
    pub fn new(spec: &Spec, seed: u64) -> Self {
        match spec {
            Spec::Fifo { limit } => Leaf::Fifo(Fifo::new(limit.unwrap_or(1000))),
            Spec::Sfq {
                quantum,
                perturb,
                flows,
                limit,
            } => Leaf::Sfq(Sfq::new(
                quantum.map_or(1514, |q| q.0 as u32),
                perturb.unwrap_or(0),
                flows.unwrap_or(128),
                limit.unwrap_or(127),
                seed,
            )),
            Spec::Prio3 { limit } => Leaf::Prio3(Prio3::new(limit.unwrap_or(1000))),
            Spec::Red {
                min,
                max,
                probability,
                limit,
            } => Leaf::Red(Red::new(
                min.0,
                max.0,
                *probability,
                limit.map_or(max.0 * 4, |l| l.0),
                seed,
            )),
            Spec::Tbf {
                rate,
                burst,
                limit,
                latency,
            } => {
                let limit = match (limit, latency) {
                    (Some(l), _) => l.0,
                    (None, l) => {
                        let us = l.map_or(50_000, |l| l.0);
                        rate.bytes() * us / 1_000_000 + burst.0
                    }
                };
                Leaf::Tbf(Fifo::bytes(limit))
            }
        }
    }

    /// Queues `item`; returns what had to be dropped (it or another).
    pub fn enqueue(&mut self, item: T, now: u64) -> Option<T> {
        match self {
            Leaf::Fifo(q) => q.enqueue(item),
            Leaf::Sfq(q) => q.enqueue(item, now),
            Leaf::Prio3(q) => q.enqueue(item),
            Leaf::Red(q) => q.enqueue(item, now),
            Leaf::Tbf(q) => q.enqueue(item),
        }
    }

    /// The length of the packet `dequeue` would return.
    pub fn peek_len(&mut self) -> Option<u32> {
        match self {
            Leaf::Fifo(q) => q.q.front().map(Item::bytes),
            Leaf::Sfq(q) => q.peek_len(),
            Leaf::Prio3(q) => q.bands.iter().find_map(|b| b.q.front()).map(Item::bytes),
            Leaf::Red(q) => q.fifo.q.front().map(Item::bytes),
            Leaf::Tbf(q) => q.q.front().map(Item::bytes),
        }
    }

    pub fn dequeue(&mut self) -> Option<T> {
        match self {
            Leaf::Fifo(q) => q.dequeue(),
            Leaf::Sfq(q) => q.dequeue(),
            Leaf::Prio3(q) => q.bands.iter_mut().find_map(Fifo::dequeue),
            Leaf::Red(q) => q.fifo.dequeue(),
            Leaf::Tbf(q) => q.dequeue(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.packets() == 0
    }

    /// Flows with packets queued (sfq), else 1: a worker's weight when
    /// workers share the class.
    pub fn flows(&self) -> u32 {
        match self {
            Leaf::Sfq(q) => q.active.len() as u32,
            _ => 1,
        }
    }

    pub fn packets(&self) -> usize {
        match self {
            Leaf::Fifo(q) => q.q.len(),
            Leaf::Sfq(q) => q.packets,
            Leaf::Prio3(q) => q.bands.iter().map(|b| b.q.len()).sum(),
            Leaf::Red(q) => q.fifo.q.len(),
            Leaf::Tbf(q) => q.q.len(),
        }
    }

    /// Everything queued, for a reconfiguration.
    pub fn drain(&mut self) -> Vec<T> {
        std::iter::from_fn(|| self.dequeue()).collect()
    }
}

/// A drop-tail FIFO bounded in packets or in bytes.
pub struct Fifo<T> {
    q: VecDeque<T>,
    limit: u64,
    in_bytes: bool,
    bytes: u64,
}

impl<T: Item> Fifo<T> {
    pub fn new(packets: u32) -> Self {
        Self {
            q: VecDeque::new(),
            limit: u64::from(packets),
            in_bytes: false,
            bytes: 0,
        }
    }

    pub fn bytes(limit: u64) -> Self {
        Self {
            in_bytes: true,
            ..Self::new(0)
        }
        .with_limit(limit)
    }

    fn with_limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    fn enqueue(&mut self, item: T) -> Option<T> {
        let used = if self.in_bytes {
            self.bytes + u64::from(item.bytes())
        } else {
            self.q.len() as u64 + 1
        };
        if used > self.limit {
            return Some(item);
        }
        self.bytes += u64::from(item.bytes());
        self.q.push_back(item);
        None
    }

    fn dequeue(&mut self) -> Option<T> {
        let item = self.q.pop_front()?;
        self.bytes -= u64::from(item.bytes());
        Some(item)
    }
}

/// pfifo_fast: three bands, band 0 first, the band from the TOS byte by
/// Linux's default priomap.
pub struct Prio3<T> {
    bands: [Fifo<T>; 3],
}

/// TOS → band as Linux does it: the TOS bits give a priority
/// (`rt_tos2priority`), pfifo_fast's default priomap gives the band.
pub fn tos_band(tos: u8) -> usize {
    // ip_tos2prio: BESTEFFORT 0, FILLER 1, BULK 2, INTERACTIVE_BULK 4,
    // INTERACTIVE 6.
    const TOS2PRIO: [u8; 16] = [0, 1, 0, 0, 2, 2, 2, 2, 6, 6, 6, 6, 4, 4, 4, 4];
    const PRIO2BAND: [u8; 16] = [1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
    PRIO2BAND[usize::from(TOS2PRIO[usize::from((tos & 0x1e) >> 1)])] as usize
}

impl<T: Item> Prio3<T> {
    fn new(limit: u32) -> Self {
        Self {
            bands: [Fifo::new(limit), Fifo::new(limit), Fifo::new(limit)],
        }
    }

    fn enqueue(&mut self, item: T) -> Option<T> {
        self.bands[tos_band(item.tos())].enqueue(item)
    }
}

/// Stochastic fairness queueing: flows hashed into buckets, each active
/// bucket a FIFO, served deficit round robin `quantum` bytes at a time.
/// When full, the longest flow loses its newest packet.
pub struct Sfq<T> {
    buckets: Vec<VecDeque<T>>,
    /// Active buckets in service order, with their deficits.
    active: VecDeque<(u32, i32)>,
    quantum: u32,
    perturb_ns: u64,
    next_perturb: u64,
    flows: u32,
    limit: u32,
    packets: usize,
    seed: u32,
    rng: u64,
}

/// Hash buckets (tc's default divisor).
const SFQ_DIVISOR: u32 = 1024;

impl<T: Item> Sfq<T> {
    pub fn new(quantum: u32, perturb_s: u32, flows: u32, limit: u32, seed: u64) -> Self {
        Self {
            buckets: (0..SFQ_DIVISOR).map(|_| VecDeque::new()).collect(),
            active: VecDeque::new(),
            quantum,
            perturb_ns: u64::from(perturb_s) * 1_000_000_000,
            next_perturb: 0,
            flows,
            limit,
            packets: 0,
            seed: seed as u32,
            rng: seed | 1,
        }
    }

    fn bucket(&self, flow: u32) -> u32 {
        // A multiplicative mix of the flow hash and the seed.
        let h = (flow ^ self.seed).wrapping_mul(0x9e37_79b1);
        (h ^ (h >> 15)) % SFQ_DIVISOR
    }

    fn enqueue(&mut self, item: T, now: u64) -> Option<T> {
        if self.perturb_ns != 0 && now >= self.next_perturb {
            if self.next_perturb != 0 {
                self.perturb();
            }
            self.next_perturb = now + self.perturb_ns;
        }
        let b = self.bucket(item.flow());
        if self.buckets[b as usize].is_empty() {
            if self.active.len() as u32 >= self.flows {
                return Some(item); // no free flow slot
            }
            self.active.push_back((b, self.quantum as i32));
        }
        self.buckets[b as usize].push_back(item);
        self.packets += 1;
        if self.packets as u32 > self.limit {
            // Drop from the longest flow's tail (it may be this one).
            let (longest, _) = self
                .active
                .iter()
                .map(|&(b, _)| (b, self.buckets[b as usize].len()))
                .max_by_key(|&(_, n)| n)?;
            let dropped = self.buckets[longest as usize].pop_back();
            self.packets -= 1;
            if self.buckets[longest as usize].is_empty() {
                self.active.retain(|&(b, _)| b != longest);
            }
            return dropped;
        }
        None
    }

    /// A new hash seed; queued packets move to their new buckets, each
    /// flow keeping its order.
    fn perturb(&mut self) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let queued: Vec<T> = std::iter::from_fn(|| self.dequeue_any()).collect();
        self.seed = self.rng as u32;
        self.active.clear();
        self.packets = 0;
        for item in queued {
            let b = self.bucket(item.flow());
            if self.buckets[b as usize].is_empty() {
                self.active.push_back((b, self.quantum as i32));
            }
            self.buckets[b as usize].push_back(item);
            self.packets += 1;
        }
    }

    /// Any packet, bucket by bucket in order (for perturbation).
    fn dequeue_any(&mut self) -> Option<T> {
        let &(b, _) = self.active.front()?;
        let item = self.buckets[b as usize].pop_front();
        if self.buckets[b as usize].is_empty() {
            self.active.pop_front();
        }
        item
    }

    /// Moves the round robin to a bucket with deficit left.
    fn settle(&mut self) -> Option<u32> {
        loop {
            let &mut (b, deficit) = self.active.front_mut()?;
            if deficit > 0 {
                return Some(b);
            }
            let mut e = self.active.pop_front()?;
            e.1 += self.quantum as i32;
            self.active.push_back(e);
        }
    }

    fn peek_len(&mut self) -> Option<u32> {
        let b = self.settle()?;
        self.buckets[b as usize].front().map(Item::bytes)
    }

    fn dequeue(&mut self) -> Option<T> {
        let b = self.settle()?;
        let item = self.buckets[b as usize].pop_front()?;
        self.packets -= 1;
        let front = self.active.front_mut()?;
        front.1 -= item.bytes() as i32;
        if self.buckets[b as usize].is_empty() {
            self.active.pop_front();
        }
        Some(item)
    }
}

/// Random early detection (Floyd & Jacobson): the average queue (EWMA,
/// weight 1/512) decides; between `min` and `max` a packet is dropped
/// with a probability rising linearly to `max_p`, spread out by the count
/// since the last drop; above `max` every packet is dropped.
pub struct Red<T> {
    fifo: Fifo<T>,
    min: u64,
    max: u64,
    max_p: f64,
    /// Average queue in bytes, ×512 (fixed point).
    avg: u64,
    count: u32,
    rng: u64,
    /// When a packet last arrived (ns).
    last: u64,
}

impl<T: Item> Red<T> {
    pub fn new(min: u64, max: u64, max_p: f64, limit: u64, seed: u64) -> Self {
        Self {
            fifo: Fifo::bytes(limit),
            min,
            max,
            max_p,
            avg: 0,
            count: 0,
            rng: seed | 1,
            last: 0,
        }
    }

    /// The average queue in bytes.
    pub fn average(&self) -> u64 {
        self.avg >> 9
    }

    /// The drop probability for an average queue of `avg` bytes, before
    /// the count correction.
    pub fn base_probability(&self, avg: u64) -> f64 {
        if avg < self.min {
            0.0
        } else if avg >= self.max {
            1.0
        } else {
            self.max_p * (avg - self.min) as f64 / (self.max - self.min) as f64
        }
    }

    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn enqueue(&mut self, item: T, now: u64) -> Option<T> {
        if self.fifo.q.is_empty() {
            // The queue sat idle: the average decays as if empty packets
            // had arrived — halved per idle millisecond.
            let idle_ms = now.saturating_sub(self.last) / 1_000_000;
            self.avg = self.avg.checked_shr(idle_ms.min(63) as u32).unwrap_or(0);
        }
        self.last = now;
        // avg += (q − avg) / 512, in units of 1/512 byte.
        self.avg = self.avg - (self.avg >> 9) + self.fifo.bytes;
        let pb = self.base_probability(self.average());
        let drop = if pb >= 1.0 {
            true
        } else if pb <= 0.0 {
            self.count = 0;
            false
        } else {
            self.count = self.count.saturating_add(1);
            let pa = pb / (1.0 - (f64::from(self.count) * pb).min(0.99));
            self.random() < pa
        };
        if drop {
            self.count = 0;
            return Some(item);
        }
        self.fifo.enqueue(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct P {
        len: u32,
        flow: u32,
        tos: u8,
        seq: u32,
    }

    impl Item for P {
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

    fn p(flow: u32, len: u32, seq: u32) -> P {
        P {
            len,
            flow,
            tos: 0,
            seq,
        }
    }

    #[test]
    fn fifo_drops_tail_at_its_limit() {
        let mut q: Leaf<P> = Leaf::new(&Spec::Fifo { limit: Some(2) }, 1);
        assert!(q.enqueue(p(1, 100, 0), 0).is_none());
        assert!(q.enqueue(p(1, 100, 1), 0).is_none());
        assert_eq!(q.enqueue(p(1, 100, 2), 0).unwrap().seq, 2);
        assert_eq!(q.dequeue().unwrap().seq, 0);
    }

    /// Flows with different packet sizes get equal bytes, and one flow
    /// never sees its packets reordered.
    #[test]
    fn sfq_round_robin_is_fair_in_bytes() {
        let mut q: Sfq<P> = Sfq::new(1514, 0, 128, 10_000, 7);
        let mut seq = 0;
        for _ in 0..600 {
            for (flow, len) in [(1, 1500), (2, 500), (3, 100)] {
                q.enqueue(p(flow, len, seq), 0);
                seq += 1;
            }
        }
        let mut bytes = [0u64; 4];
        let mut last = [None::<u32>; 4];
        for _ in 0..300 {
            let x = q.dequeue().unwrap();
            bytes[x.flow as usize] += u64::from(x.len);
            assert!(last[x.flow as usize] < Some(x.seq), "reordered");
            last[x.flow as usize] = Some(x.seq);
        }
        let (a, b, c) = (bytes[1] as f64, bytes[2] as f64, bytes[3] as f64);
        for (x, y) in [(a, b), (b, c), (a, c)] {
            assert!((x / y - 1.0).abs() < 0.1, "{bytes:?}");
        }
    }

    #[test]
    fn sfq_drops_from_the_longest_flow() {
        let mut q: Sfq<P> = Sfq::new(1514, 0, 128, 10, 7);
        for i in 0..9 {
            assert!(q.enqueue(p(1, 1000, i), 0).is_none());
        }
        assert!(q.enqueue(p(2, 1000, 100), 0).is_none());
        let d = q.enqueue(p(2, 1000, 101), 0).unwrap();
        assert_eq!((d.flow, d.seq), (1, 8), "the hog's newest packet");
        // a flow limit: with 2 flow slots, a third flow is refused
        let mut q: Sfq<P> = Sfq::new(1514, 0, 2, 100, 7);
        q.enqueue(p(1, 100, 0), 0);
        q.enqueue(p(2, 100, 0), 0);
        assert!(q.enqueue(p(3, 100, 0), 0).is_some());
    }

    #[test]
    fn sfq_perturbation_keeps_every_packet_and_flow_order() {
        let mut q: Sfq<P> = Sfq::new(1514, 1, 128, 10_000, 7);
        for i in 0..100 {
            q.enqueue(p(i % 10, 200, i), u64::from(i) * 100_000_000);
        }
        assert_eq!(q.packets, 100);
        let mut last = [None::<u32>; 10];
        for _ in 0..100 {
            let x = q.dequeue().unwrap();
            assert!(last[x.flow as usize] < Some(x.seq));
            last[x.flow as usize] = Some(x.seq);
        }
        assert!(q.dequeue().is_none());
    }

    #[test]
    fn prio3_serves_low_delay_first() {
        assert_eq!(tos_band(0x10), 0); // IPTOS_LOWDELAY
        assert_eq!(tos_band(0x00), 1);
        assert_eq!(tos_band(0x08), 2); // IPTOS_THROUGHPUT
        let mut q: Leaf<P> = Leaf::new(&Spec::Prio3 { limit: None }, 1);
        q.enqueue(
            P {
                tos: 0x08,
                ..p(1, 100, 0)
            },
            0,
        );
        q.enqueue(
            P {
                tos: 0x00,
                ..p(1, 100, 1)
            },
            0,
        );
        q.enqueue(
            P {
                tos: 0x10,
                ..p(1, 100, 2)
            },
            0,
        );
        let order: Vec<u32> = std::iter::from_fn(|| q.dequeue()).map(|x| x.seq).collect();
        assert_eq!(order, [2, 1, 0]);
    }

    /// The drop curve: nothing below min, linear to max_p at max, all
    /// above; and measured drop rates follow it.
    #[test]
    fn red_drop_curve() {
        let r: Red<P> = Red::new(10_000, 30_000, 0.1, 1 << 20, 3);
        assert_eq!(r.base_probability(9_999), 0.0);
        assert!((r.base_probability(20_000) - 0.05).abs() < 1e-9);
        assert_eq!(r.base_probability(30_000), 1.0);
        // Hold the queue at a fixed depth and measure.
        for (depth, lo, hi) in [
            (5_000u64, 0.0, 0.0),
            (20_000, 0.04, 0.12),
            (40_000, 1.0, 1.0),
        ] {
            let mut r: Red<P> = Red::new(10_000, 30_000, 0.1, 1 << 20, 3);
            while r.fifo.bytes < depth {
                r.fifo.enqueue(p(1, 1000, 0));
            }
            r.avg = depth << 9;
            let (mut dropped, n) = (0, 20_000);
            for i in 0..n {
                match r.enqueue(p(1, 1000, i), 0) {
                    Some(_) => dropped += 1,
                    None => {
                        r.fifo.dequeue();
                    }
                }
            }
            let rate = f64::from(dropped) / f64::from(n);
            assert!((lo..=hi).contains(&rate), "depth {depth}: drop rate {rate}");
        }
    }

    #[test]
    fn tbf_limit_from_latency() {
        let spec = Spec::Tbf {
            rate: "8mbit".parse().unwrap(),
            burst: "10kb".parse().unwrap(),
            limit: None,
            latency: Some("50ms".parse().unwrap()),
        };
        let Leaf::<P>::Tbf(t) = Leaf::new(&spec, 1) else {
            panic!()
        };
        assert_eq!(t.limit, 1_000_000 / 20 + 10_240);
    }
}
