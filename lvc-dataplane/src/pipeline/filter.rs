//! Filtering decided when a connection is made: a service's allow/deny
//! lists (XDP applies them first; this is the same rule, for packets that
//! reach a worker anyway), its new-connection rate limit, and the global
//! filter's rules that name a real server (`--real`), which only the
//! scheduler can evaluate. Rules on header fields alone are the XDP
//! program's (`lvc_xdp.c`, `filter_drop`); they are evaluated here again
//! only when a `--real` rule comes first, so the first match still decides.

use crate::addr::Addr;
use lvc_proto::filter::{Cidr, FilterAction, Policy};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A prefix in [`Addr`]'s 128-bit form (IPv4 mapped): its first address
/// and its length in that form.
pub fn wide(c: &Cidr) -> (u128, u32) {
    let bits = u32::from(c.len) + if c.addr.is_ipv4() { 96 } else { 0 };
    (key(Addr::from(c.addr)), bits)
}

/// An address prefix as an inclusive range of the 128-bit form.
fn range(c: &Cidr) -> (u128, u128) {
    let (a, bits) = wide(c);
    let host = u128::MAX.checked_shr(bits).unwrap_or(0);
    (a & !host, a | host)
}

fn key(a: Addr) -> u128 {
    u128::from_be_bytes(a.0)
}

/// A set of prefixes, merged into sorted disjoint ranges per family: a
/// lookup is a binary search, whatever the number of prefixes (a
/// 1M-prefix set too). An IPv6 prefix never holds an IPv4 client (mapped
/// in the same 128-bit form), as in the XDP program.
#[derive(Clone, Debug, Default)]
pub struct Prefixes {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

fn merged(mut r: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    r.sort_unstable();
    let mut ranges: Vec<(u128, u128)> = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        match ranges.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => ranges.push((lo, hi)),
        }
    }
    ranges
}

impl Prefixes {
    pub fn new<'a>(cidrs: impl IntoIterator<Item = &'a Cidr>) -> Self {
        let (v4, v6): (Vec<&Cidr>, Vec<&Cidr>) = cidrs.into_iter().partition(|c| c.addr.is_ipv4());
        Self {
            v4: merged(v4.into_iter().map(range).collect()),
            v6: merged(v6.into_iter().map(range).collect()),
        }
    }

    pub fn contains(&self, a: Addr) -> bool {
        let ranges = if a.is_v4() { &self.v4 } else { &self.v6 };
        let k = key(a);
        let i = ranges.partition_point(|&(lo, _)| lo <= k);
        i > 0 && ranges[i - 1].1 >= k
    }
}

/// A service's allow/deny lists, as the XDP program applies them: the
/// longest matching prefix decides (a prefix is in one list only); with
/// an allow list, a client no prefix holds is refused. One hash lookup per
/// prefix length present, longest first.
#[derive(Debug, Default)]
pub struct Lists {
    /// (IPv6?, length in the 128-bit form, prefix → allow?), longest first.
    by_len: Vec<(bool, u32, std::collections::HashMap<u128, bool>)>,
    allowlist: bool,
}

impl Lists {
    pub fn new(p: &Policy) -> Option<Self> {
        if p.allow.is_empty() && p.deny.is_empty() {
            return None;
        }
        let mut by_len: Vec<(bool, u32, std::collections::HashMap<u128, bool>)> = Vec::new();
        for (c, allow) in
            (p.allow.iter().map(|c| (c, true))).chain(p.deny.iter().map(|c| (c, false)))
        {
            let v6 = c.addr.is_ipv6();
            let (lo, len) = wide(c);
            match by_len.iter_mut().find(|e| e.0 == v6 && e.1 == len) {
                Some(e) => {
                    // (Equal prefixes in both lists are refused; deny wins.)
                    let v = e.2.entry(lo).or_insert(allow);
                    *v &= allow;
                }
                None => by_len.push((v6, len, [(lo, allow)].into_iter().collect())),
            }
        }
        by_len.sort_unstable_by_key(|e| std::cmp::Reverse(e.1));
        Some(Self {
            by_len,
            allowlist: !p.allow.is_empty(),
        })
    }

    pub fn admits(&self, a: Addr) -> bool {
        let v6 = !a.is_v4();
        let k = key(a);
        for (fam, len, m) in &self.by_len {
            if *fam != v6 {
                continue;
            }
            let masked = k & !u128::MAX.checked_shr(*len).unwrap_or(0);
            if let Some(&allow) = m.get(&masked) {
                return allow;
            }
        }
        !self.allowlist
    }
}

/// A token bucket of new connections shared by every worker: one atomic
/// word holding the time (ns since the epoch) at which the bucket would be
/// empty; taking a token moves it on by one interval. (The GCRA form of a
/// token bucket: exact under contention, no lock.)
#[derive(Debug)]
pub struct ConnRate {
    /// Nanoseconds per connection.
    interval: u64,
    /// How far ahead of now the empty time may run: burst × interval.
    depth: u64,
    empty_at: AtomicU64,
}

impl ConnRate {
    pub fn new(rate: u32, burst: u32) -> Self {
        let interval = 1_000_000_000 / u64::from(rate.max(1));
        Self {
            interval,
            depth: interval * u64::from(burst.max(1)),
            empty_at: AtomicU64::new(0),
        }
    }

    /// Whether a new connection may be made at `now_ns`.
    pub fn take(&self, now_ns: u64) -> bool {
        let mut cur = self.empty_at.load(Relaxed);
        loop {
            let base = cur.max(now_ns);
            let next = base + self.interval;
            if next > now_ns + self.depth {
                return false;
            }
            match self
                .empty_at
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    /// The same limits (a republish keeps a bucket whose limits stay).
    pub fn same(&self, rate: u32, burst: u32) -> bool {
        let o = Self::new(rate, burst);
        (o.interval, o.depth) == (self.interval, self.depth)
    }
}

/// What a rule counts: packets (and bytes) it matched in userspace.
#[derive(Debug, Default)]
pub struct RuleCounter {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

/// One global rule as the scheduler evaluates it.
#[derive(Debug)]
pub struct Rule {
    pub action: FilterAction,
    pub src: Option<Prefixes>,
    pub dst: Option<Prefixes>,
    pub proto: Option<u8>,
    pub dport: Option<(u16, u16)>,
    /// The ingress interface's ifindex.
    pub iface: Option<u32>,
    /// (address, port; None = any port of it)
    pub real: Option<(Addr, Option<u16>)>,
    /// Its matches are counted here (a rule before every `--real` rule is
    /// counted by the XDP program, which evaluated it first).
    pub count: bool,
    pub counter: std::sync::Arc<RuleCounter>,
}

/// The global filter in prio order, kept by the service table when a rule
/// names a real server (else XDP decides everything).
#[derive(Debug, Default)]
pub struct UserFilter {
    pub rules: Vec<Rule>,
}

/// A new connection's fields the rules look at.
pub struct Candidate {
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    pub dport: u16,
    pub server_addr: Addr,
    /// The port the connection goes to on the server.
    pub real_port: u16,
    pub len: u32,
    /// The ifindex the packet came in on (0: unknown, as for a connection
    /// already made: interface rules then do not match).
    pub ingress: u32,
}

impl Rule {
    /// Whether the rule's header fields match (its real server aside).
    pub fn matches_header(&self, c: &Candidate) -> bool {
        self.src.as_ref().is_none_or(|p| p.contains(c.src))
            && self.dst.as_ref().is_none_or(|p| p.contains(c.dst))
            && self.proto.is_none_or(|p| p == c.proto)
            && self
                .dport
                .is_none_or(|(lo, hi)| lo <= c.dport && c.dport <= hi)
            && self.iface.is_none_or(|i| i == c.ingress)
    }

    pub fn matches_real(&self, addr: Addr, port: u16) -> bool {
        self.real
            .is_none_or(|(a, p)| a == addr && p.is_none_or(|p| p == port))
    }
}

impl UserFilter {
    /// The rule that decides for the connection, if any: the first that
    /// matches.
    pub fn decide(&self, c: &Candidate) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.matches_header(c) && r.matches_real(c.server_addr, c.real_port))
    }

    /// Whether the connection may be made; the deciding rule counts it.
    pub fn admits(&self, c: &Candidate) -> bool {
        match self.decide(c) {
            Some(r) => {
                if r.count {
                    r.counter.packets.fetch_add(1, Relaxed);
                    r.counter.bytes.fetch_add(u64::from(c.len), Relaxed);
                }
                r.action == FilterAction::Accept
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lvc_proto::filter::cidr_list;
    use std::net::IpAddr;

    fn a(s: &str) -> Addr {
        s.parse::<IpAddr>().unwrap().into()
    }

    #[test]
    fn prefixes_merge_and_find() {
        let c = cidr_list("10.0.0.0/9,10.128.0.0/9,192.0.2.0/24,2001:db8::/32").unwrap();
        let p = Prefixes::new(&c);
        assert_eq!(p.v4.len() + p.v6.len(), 3, "the two /9s merge");
        for (x, want) in [
            ("10.200.1.1", true),
            ("11.0.0.0", false),
            ("192.0.2.255", true),
            ("192.0.3.0", false),
            ("2001:db8::5", true),
            ("2001:db9::", false),
            ("::ffff:10.0.0.1", true),
        ] {
            assert_eq!(p.contains(a(x)), want, "{x}");
        }
        let all4 = Prefixes::new(&cidr_list("0.0.0.0/0").unwrap());
        assert!(all4.contains(a("203.0.113.9")));
        assert!(!all4.contains(a("2001:db8::1")));
        // An IPv6 prefix over the mapped range holds no IPv4 client.
        let v6 = Prefixes::new(&cidr_list("::/8,::ffff:0:0/96").unwrap());
        assert!(!v6.contains(a("10.1.2.3")));
        assert!(v6.contains(a("::1")));
    }

    #[test]
    fn lists_take_the_longest_prefix() {
        let p = Policy {
            allow: cidr_list("10.0.0.0/8,10.1.2.0/24").unwrap(),
            deny: cidr_list("10.1.0.0/16").unwrap(),
            ..Policy::default()
        };
        let l = Lists::new(&p).unwrap();
        for (x, want) in [
            ("10.9.0.1", true),
            ("10.1.9.9", false),
            ("10.1.2.3", true),
            ("11.0.0.1", false),
        ] {
            assert_eq!(l.admits(a(x)), want, "{x}");
            assert!(!l.admits(a("2001:db8::1")), "an allow list of IPv4 only");
            assert_eq!(p.admits(x.parse().unwrap()), want, "proto's rule: {x}");
        }
    }

    #[test]
    fn conn_rate_holds_its_rate_and_burst() {
        let r = ConnRate::new(100, 10);
        // The burst at once, then nothing.
        let first = (0..50).filter(|_| r.take(1_000_000_000)).count();
        assert_eq!(first, 10);
        // One second later: 100 more.
        let mut n = 0;
        for i in 0..10_000u64 {
            if r.take(1_000_000_000 + i * 100_000) {
                n += 1;
            }
        }
        assert!((99..=111).contains(&n), "{n} in one second at 100/s");
    }
}
