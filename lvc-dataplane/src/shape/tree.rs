//! The class tree's tokens and HTB's rules: who may send now, who may
//! borrow from whom, and what a sent packet is charged to.
//!
//! Every class has a rate bucket (its guarantee) and a ceil bucket (how
//! far it may go by borrowing); node 0 is the root (the link: rate =
//! ceil). A leaf whose rate bucket is not in debt sends on its own
//! ("green"). Otherwise, if its ceil allows and it is not `bounded`, it
//! borrows from the nearest ancestor that is green — every class between
//! having ceil left and none of them bounded. A sent packet is charged to
//! the ceil buckets of the leaf and of every ancestor, and to the rate
//! buckets of the class that paid for it (the leaf if green, else the
//! lender) and of every class above that one — as Linux's HTB does — so
//! a parent's balance is what its children left unused, and borrowing
//! never eats the borrower's own guarantee.
//!
//! `isolated`: a parent's lendable bucket fills at its rate minus its
//! isolated children's guarantees, and an isolated child's traffic within
//! its own guarantee is not charged there — so what an isolated class
//! does not use is never lent to its siblings, and what it does use never
//! eats into theirs. (It works at the parent: a grandparent lends what
//! the parent as a whole leaves unused, as usual.)
//!
//! The tree's state is shared by all workers (one lock per interface,
//! taken once per dequeue round), so rates hold for the interface, not
//! per queue.
//!
//! Each worker queues its own frames, so a class's backlog is spread over
//! the workers. To share a class fairly between them, every worker has a
//! virtual finish time per class — bytes it sent divided by its weight
//! (its active sfq flows, else 1) — and may send only while it is not
//! ahead of the other backlogged workers by more than a little. So N
//! flows in one sfq class get N equal shares whichever workers they land
//! on. A worker that stops coming back (asleep, descheduled) is ignored
//! after a few packet times, so a class never waits for an idle worker.

use super::bucket::TokenBucket;

/// A class's place and rules in the tree.
#[derive(Clone, Debug)]
pub struct Node {
    pub parent: Option<usize>,
    pub prio: u8,
    pub bounded: bool,
    pub isolated: bool,
    pub leaf: bool,
    /// Guaranteed rate, bit/s.
    pub rate: u64,
    /// The rate its lendable bucket fills at (rate − isolated children).
    pub lend_rate: u64,
    pub ceil: u64,
    pub burst: u64,
    pub cburst: u64,
    /// A tbf leaf's own rate and burst.
    pub tbf: Option<(u64, u64)>,
}

/// The tokens of every class.
#[derive(Clone, Debug)]
pub struct TreeState {
    rate: Vec<TokenBucket>,
    ceil: Vec<TokenBucket>,
    tbf: Vec<Option<TokenBucket>>,
    /// Per node, per worker: its share of the class.
    shares: Vec<Vec<Share>>,
    /// Per node: how long a silent worker still counts (ns).
    stale: Vec<u64>,
}

/// One worker's use of one class.
#[derive(Clone, Debug, Default)]
struct Share {
    /// Virtual finish time: bytes × 1024 / weight, summed.
    vf: u64,
    weight: u32,
    active: bool,
    /// When it last asked to send.
    seen: u64,
}

/// How far (in virtual bytes × 1024) a worker may run ahead of the
/// slowest backlogged one: two full-size packets.
const SLACK: u64 = 2 * 1514 * 1024;

/// How a leaf may send its next packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// On its own guarantee.
    Green,
    /// On tokens borrowed from this ancestor.
    Borrow(usize),
}

impl TreeState {
    pub fn new(nodes: &[Node], now: u64) -> Self {
        Self {
            rate: nodes
                .iter()
                .map(|n| TokenBucket::new(n.lend_rate, n.burst, now))
                .collect(),
            ceil: nodes
                .iter()
                .map(|n| TokenBucket::new(n.ceil, n.cburst, now))
                .collect(),
            tbf: nodes
                .iter()
                .map(|n| n.tbf.map(|(r, b)| TokenBucket::new(r, b, now)))
                .collect(),
            shares: vec![Vec::new(); nodes.len()],
            // Three full-size packets at the class's rate, at least 2 ms.
            stale: nodes
                .iter()
                .map(|n| (3 * 1514 * 8_000_000_000 / n.rate.max(1)).max(2_000_000))
                .collect(),
        }
    }

    /// Whether `worker` (with `weight` active flows in `leaf`) may send
    /// from `leaf` now without getting ahead of the other workers.
    pub fn fair(&mut self, leaf: usize, worker: usize, weight: u32, now: u64) -> bool {
        let stale = self.stale[leaf];
        let shares = &mut self.shares[leaf];
        if shares.len() <= worker {
            shares.resize(worker + 1, Share::default());
        }
        let others = shares
            .iter()
            .enumerate()
            .filter(|&(i, s)| i != worker && s.active && now.saturating_sub(s.seen) < stale)
            .map(|(_, s)| s.vf)
            .min();
        let me = &mut shares[worker];
        if !me.active {
            // Back from idle: start level with the others, not behind.
            me.active = true;
            me.vf = me.vf.max(others.unwrap_or(0));
        }
        me.weight = weight.max(1);
        me.seen = now;
        others.is_none_or(|m| me.vf <= m + SLACK)
    }

    /// Records what `worker` sent from `leaf`; `empty`: its queue ran dry.
    pub fn served(&mut self, leaf: usize, worker: usize, len: u32, empty: bool) {
        if let Some(me) = self.shares[leaf].get_mut(worker) {
            me.vf += u64::from(len) * 1024 / u64::from(me.weight.max(1));
            me.active &= !empty;
        }
    }

    pub fn refill(&mut self, now: u64) {
        for b in self.rate.iter_mut().chain(self.ceil.iter_mut()) {
            b.refill(now);
        }
        for b in self.tbf.iter_mut().flatten() {
            b.refill(now);
        }
    }

    /// Whether `leaf` may send a `len`-byte packet now, and how.
    pub fn mode(&self, nodes: &[Node], leaf: usize, len: u32) -> Option<Mode> {
        if let Some(t) = &self.tbf[leaf]
            && !t.covers(len)
        {
            return None;
        }
        if !self.ceil[leaf].ready() {
            return None;
        }
        if self.rate[leaf].ready() {
            return Some(Mode::Green);
        }
        let mut at = leaf;
        loop {
            if nodes[at].bounded {
                return None;
            }
            let up = nodes[at].parent?;
            if !self.ceil[up].ready() {
                return None;
            }
            if self.rate[up].ready() {
                return Some(Mode::Borrow(up));
            }
            at = up;
        }
    }

    /// Charges a sent packet (see the module's rules).
    pub fn charge(&mut self, nodes: &[Node], leaf: usize, len: u32, mode: Mode) {
        let payer = match mode {
            Mode::Green => leaf,
            Mode::Borrow(a) => a,
        };
        if let Some(t) = &mut self.tbf[leaf] {
            t.charge(len);
        }
        // Rate tokens are paid by the lender and the classes above it, as
        // in Linux's HTB (htb_charge_class); a class that borrowed pays
        // only ceil, or its borrowing would eat its own guarantee.
        if payer == leaf {
            self.rate[leaf].charge(len);
        }
        self.ceil[leaf].charge(len);
        let mut passed_payer = payer == leaf;
        let mut child = leaf;
        while let Some(up) = nodes[child].parent {
            if up == payer || (passed_payer && !nodes[child].isolated) {
                self.rate[up].charge(len);
            }
            self.ceil[up].charge(len);
            passed_payer |= up == payer;
            child = up;
        }
    }

    /// A lower bound on the time until `leaf` may send `len` bytes.
    pub fn wait_ns(&self, nodes: &[Node], leaf: usize, len: u32) -> u64 {
        let tbf = self.tbf[leaf].as_ref().map_or(0, |t| t.wait_ns(len));
        // Green again, or some ancestor green with ceil left everywhere.
        let mut best = self.rate[leaf].wait_ns(0);
        let mut ceil = self.ceil[leaf].wait_ns(0);
        let mut at = leaf;
        while let (false, Some(up)) = (nodes[at].bounded, nodes[at].parent) {
            ceil = ceil.max(self.ceil[up].wait_ns(0));
            best = best.min(ceil.max(self.rate[up].wait_ns(0)));
            at = up;
        }
        best.max(self.ceil[leaf].wait_ns(0)).max(tbf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: u64 = 1_000_000;

    fn node(parent: Option<usize>, rate: u64, ceil: u64, prio: u8) -> Node {
        Node {
            parent,
            prio,
            bounded: false,
            isolated: false,
            leaf: true,
            rate,
            lend_rate: rate,
            ceil,
            burst: 3000,
            cburst: 3000,
            tbf: None,
        }
    }

    /// Runs `secs` of simulated time with the given leaves always
    /// backlogged (1500-byte packets), the scheduler picking green before
    /// borrowing, then prio, then the least-served leaf. Bytes per node.
    fn simulate(nodes: &[Node], busy: &[usize], secs: u64) -> Vec<u64> {
        let mut st = TreeState::new(nodes, 0);
        let mut sent = vec![0u64; nodes.len()];
        let mut now = 0;
        while now < secs * 1_000_000_000 {
            now += 100_000; // 100 µs rounds
            st.refill(now);
            loop {
                let pick = busy
                    .iter()
                    .filter_map(|&l| st.mode(nodes, l, 1500).map(|m| (l, m)))
                    .min_by_key(|&(l, m)| (m != Mode::Green, nodes[l].prio, sent[l]));
                let Some((l, m)) = pick else { break };
                st.charge(nodes, l, 1500, m);
                sent[l] += 1500;
            }
        }
        sent
    }

    fn mbit(bytes: u64, secs: u64) -> f64 {
        bytes as f64 * 8.0 / secs as f64 / MBIT as f64
    }

    fn tc3(bounded: bool) -> Vec<Node> {
        let root = Node {
            leaf: false,
            ..node(None, 100 * MBIT, 100 * MBIT, 0)
        };
        let mut a = node(Some(0), 70 * MBIT, 100 * MBIT, 2);
        let b = node(Some(0), 30 * MBIT, 100 * MBIT, 4);
        if bounded {
            a.bounded = true;
            a.ceil = a.rate;
        }
        vec![root, a, b]
    }

    #[test]
    fn guarantees_split_the_link() {
        let s = simulate(&tc3(false), &[1, 2], 10);
        let (a, b) = (mbit(s[1], 10), mbit(s[2], 10));
        assert!(
            (69.0..71.0).contains(&a) && (29.0..31.0).contains(&b),
            "{a} {b}"
        );
    }

    #[test]
    fn an_idle_sibling_is_borrowed_from_up_to_ceil() {
        let s = simulate(&tc3(false), &[1], 10);
        let a = mbit(s[1], 10);
        assert!((99.0..101.0).contains(&a), "{a}");
    }

    #[test]
    fn bounded_never_borrows() {
        let s = simulate(&tc3(true), &[1], 10);
        let a = mbit(s[1], 10);
        assert!((69.0..71.0).contains(&a), "{a}");
    }

    #[test]
    fn borrowing_goes_by_prio() {
        // Two leaves of 10mbit each under a 100mbit root: the spare 80
        // goes to the lower prio number first (up to its ceil).
        let root = Node {
            leaf: false,
            ..node(None, 100 * MBIT, 100 * MBIT, 0)
        };
        let nodes = vec![
            root,
            node(Some(0), 10 * MBIT, 60 * MBIT, 1),
            node(Some(0), 10 * MBIT, 100 * MBIT, 5),
        ];
        let s = simulate(&nodes, &[1, 2], 10);
        let (a, b) = (mbit(s[1], 10), mbit(s[2], 10));
        assert!(
            (59.0..61.0).contains(&a) && (39.0..41.0).contains(&b),
            "{a} {b}"
        );
    }

    #[test]
    fn isolated_class_does_not_lend() {
        // root 100: a 40 (isolated, idle), b 20 ceil 100.
        let mut root = Node {
            leaf: false,
            ..node(None, 100 * MBIT, 100 * MBIT, 0)
        };
        root.lend_rate = 60 * MBIT;
        let mut a = node(Some(0), 40 * MBIT, 100 * MBIT, 0);
        a.isolated = true;
        let b = node(Some(0), 20 * MBIT, 100 * MBIT, 0);
        let nodes = vec![root, a, b];
        let s = simulate(&nodes, &[2], 10);
        let b_alone = mbit(s[2], 10);
        assert!((59.0..61.0).contains(&b_alone), "{b_alone}");
        // With a busy too, both get what they may and the link stays full:
        // a at least its 40, b at least its 20, and the root's spare 40
        // goes to whichever borrows (all of it to b, 60, if a borrows
        // nothing). What a borrows must not cost it its own guarantee:
        // a + b is the link, not less.
        let s = simulate(&nodes, &[1, 2], 10);
        let (a, b) = (mbit(s[1], 10), mbit(s[2], 10));
        assert!(
            a >= 39.0 && b >= 19.0 && (99.0..101.0).contains(&(a + b)),
            "a {a} + b {b} mbit/s should fill the 100mbit link"
        );
        // Not isolated: b takes everything a leaves.
        let mut open = nodes.clone();
        open[1].isolated = false;
        open[0].lend_rate = 100 * MBIT;
        let s = simulate(&open, &[2], 10);
        assert!(mbit(s[2], 10) > 99.0);
    }

    #[test]
    fn nested_borrowing_stops_at_a_bounded_parent() {
        // root 100 ─ p 50 bounded ─ leaf 10 ceil 50: leaf reaches 50, not 100.
        let root = Node {
            leaf: false,
            ..node(None, 100 * MBIT, 100 * MBIT, 0)
        };
        let mut p = node(Some(0), 50 * MBIT, 50 * MBIT, 0);
        p.leaf = false;
        p.bounded = true;
        let nodes = vec![root, p, node(Some(1), 10 * MBIT, 50 * MBIT, 0)];
        let s = simulate(&nodes, &[2], 10);
        let l = mbit(s[2], 10);
        assert!((49.0..51.0).contains(&l), "{l}");
    }

    #[test]
    fn tbf_leaf_keeps_its_own_rate() {
        let root = Node {
            leaf: false,
            ..node(None, 100 * MBIT, 100 * MBIT, 0)
        };
        let mut l = node(Some(0), 100 * MBIT, 100 * MBIT, 0);
        l.tbf = Some((7 * MBIT, 5000));
        let s = simulate(&[root, l], &[1], 10);
        let r = mbit(s[1], 10);
        assert!((6.95..7.05).contains(&r), "{r}");
    }

    /// One class, two workers: one holds 1 flow, the other 3. Taking turns
    /// at the shared tokens, every flow gets the same share.
    #[test]
    fn workers_share_a_class_by_their_flows() {
        let root = Node {
            leaf: false,
            ..node(None, 100 * MBIT, 100 * MBIT, 0)
        };
        let nodes = vec![root, node(Some(0), 40 * MBIT, 40 * MBIT, 0)];
        let mut st = TreeState::new(&nodes, 0);
        let mut sent = [0u64; 2];
        let mut now = 0;
        while now < 2_000_000_000 {
            now += 100_000;
            st.refill(now);
            // The workers run in turns, each sending what it may.
            for w in [
                (now / 100_000 % 2) as usize,
                1 - (now / 100_000 % 2) as usize,
            ] {
                let flows = [1, 3][w];
                while let Some(m) = st.mode(&nodes, 1, 1500) {
                    if !st.fair(1, w, flows, now) {
                        break;
                    }
                    st.charge(&nodes, 1, 1500, m);
                    st.served(1, w, 1500, false);
                    sent[w] += 1500;
                }
            }
        }
        let share = sent[0] as f64 / (sent[0] + sent[1]) as f64;
        assert!((0.23..0.27).contains(&share), "{sent:?}: {share}");
        // A worker that went quiet is not waited for.
        let later = now + 50_000_000;
        st.refill(later);
        assert!(st.fair(1, 0, 1, later));
    }

    #[test]
    fn wait_is_a_lower_bound() {
        let nodes = tc3(true);
        let mut st = TreeState::new(&nodes, 0);
        while let Some(m) = st.mode(&nodes, 1, 1500) {
            st.charge(&nodes, 1, 1500, m);
        }
        let w = st.wait_ns(&nodes, 1, 1500);
        assert!(w > 0);
        st.refill(w - 1);
        assert!(st.mode(&nodes, 1, 1500).is_none());
        st.refill(w);
        assert!(st.mode(&nodes, 1, 1500).is_some());
    }
}
