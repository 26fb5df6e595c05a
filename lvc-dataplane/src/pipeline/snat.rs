//! The `fullnat` local address pool: the director's own addresses and
//! ports that fullnat connections are source-NATed to.
//!
//! Every (local address, real server, protocol) has a 64 Ki-bit port
//! bitmap of atomics:
//! allocation scans from a rotating start and claims a bit with a CAS, so
//! workers never lock and a port is never handed out twice; releasing a
//! connection clears its bit. Ports below 1024 are never used.
//!
//! A new pool made from an edited address list keeps the bitmaps of the
//! addresses it shares with the old one ([`SnatPool::reusing`]): a port
//! that a live connection of the old pool holds is never handed out again.

use crate::addr::Addr;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

const WORDS: usize = 65536 / 64;
/// First port handed out.
pub const PORT_MIN: u16 = 1024;

struct PortMap {
    bits: Box<[AtomicU64]>,
    used: AtomicUsize,
}

impl PortMap {
    fn new() -> Self {
        let bits: Box<[AtomicU64]> = (0..WORDS).map(|_| AtomicU64::new(0)).collect();
        // Reserve the privileged ports.
        for w in 0..usize::from(PORT_MIN) / 64 {
            bits[w].store(u64::MAX, Relaxed);
        }
        Self {
            bits,
            used: AtomicUsize::new(0),
        }
    }

    fn alloc(&self, start: usize) -> Option<u16> {
        for i in 0..WORDS {
            let w = (start + i) % WORDS;
            let word = &self.bits[w];
            let mut cur = word.load(Relaxed);
            while cur != u64::MAX {
                let bit = (!cur).trailing_zeros();
                match word.compare_exchange_weak(cur, cur | (1 << bit), Relaxed, Relaxed) {
                    Ok(_) => {
                        self.used.fetch_add(1, Relaxed);
                        return Some((w * 64) as u16 + bit as u16);
                    }
                    Err(actual) => cur = actual,
                }
            }
        }
        None
    }

    /// Takes `port` if it is free.
    fn claim(&self, port: u16) -> bool {
        let (w, bit) = (usize::from(port) / 64, u32::from(port) % 64);
        let prev = self.bits[w].fetch_or(1 << bit, Relaxed);
        let took = prev & (1 << bit) == 0;
        if took {
            self.used.fetch_add(1, Relaxed);
        }
        took
    }

    fn free(&self, port: u16) {
        let (w, bit) = (usize::from(port) / 64, u32::from(port) % 64);
        let prev = self.bits[w].fetch_and(!(1 << bit), Relaxed);
        if prev & (1 << bit) != 0 {
            self.used.fetch_sub(1, Relaxed);
        }
    }
}

/// One local address's ports: a space per real server (and protocol), as
/// IPVS's FNAT and DPVS keep them. A connection's replies are told apart
/// by (real server, local address, local port), so the same local port
/// can serve every real server at once: one client cycling through source
/// ports exhausts one server's space on an address, not the address.
#[derive(Default)]
struct Local {
    by_real: dashmap::DashMap<Addr, Arc<[PortMap; 2]>, ahash::RandomState>,
}

impl Local {
    /// The port maps for `real` (made on first use: 16 KiB each).
    fn maps(&self, real: Addr) -> Arc<[PortMap; 2]> {
        if let Some(m) = self.by_real.get(&real) {
            return m.clone();
        }
        self.by_real
            .entry(real)
            .or_insert_with(|| Arc::new([PortMap::new(), PortMap::new()]))
            .clone()
    }

    fn used(&self) -> usize {
        self.by_real
            .iter()
            .flat_map(|m| {
                let m = m.value().clone();
                [m[0].used.load(Relaxed), m[1].used.load(Relaxed)]
            })
            .sum()
    }
}

/// The pool: addresses (either family), each with its port spaces.
pub struct SnatPool {
    addrs: Vec<Addr>,
    /// Per address (shared with a pool it replaced, for the addresses both
    /// have).
    locals: Vec<Arc<Local>>,
    cursor: AtomicUsize,
}

impl std::fmt::Debug for SnatPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnatPool")
            .field("addrs", &self.addresses())
            .finish()
    }
}

fn proto_index(proto: u8) -> usize {
    usize::from(proto != crate::wire::PROTO_TCP)
}

impl SnatPool {
    pub fn new(addrs: &[IpAddr]) -> Self {
        Self::reusing(addrs, None)
    }

    /// A pool of `addrs` that shares `old`'s port spaces for the addresses
    /// both have.
    pub fn reusing(addrs: &[IpAddr], old: Option<&SnatPool>) -> Self {
        Self {
            addrs: addrs.iter().map(|&a| Addr::from(a)).collect(),
            locals: addrs
                .iter()
                .map(|&a| {
                    let a = Addr::from(a);
                    old.and_then(|o| o.local(a).cloned()).unwrap_or_default()
                })
                .collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    fn local(&self, addr: Addr) -> Option<&Arc<Local>> {
        self.addrs
            .iter()
            .position(|&x| x == addr)
            .map(|i| &self.locals[i])
    }

    /// Ports in use on the addresses that are not in `current` (a
    /// replaced pool: what still keeps it, and its addresses, alive).
    pub fn in_use_besides(&self, current: Option<&SnatPool>) -> usize {
        self.addrs
            .iter()
            .zip(&self.locals)
            .filter(|(a, _)| current.is_none_or(|c| !c.addrs.contains(a)))
            .map(|(_, l)| l.used())
            .sum()
    }

    pub fn addresses(&self) -> Vec<IpAddr> {
        self.addrs.iter().map(|a| a.ip()).collect()
    }

    /// A free (address, port) for `proto` towards real server `real` (an
    /// address of its family), or `None` if the pool has no such address
    /// or every one's space for `real` is exhausted.
    pub fn alloc(&self, proto: u8, real: Addr) -> Option<(Addr, u16)> {
        let n = self.addrs.len();
        if n == 0 {
            return None;
        }
        let c = self.cursor.fetch_add(1, Relaxed);
        (0..n).find_map(|i| {
            let a = (c + i) % n;
            if self.addrs[a].is_v4() != real.is_v4() {
                return None;
            }
            // Spread starts over the bitmap so workers rarely contend.
            let start = c.wrapping_mul(0x9e37_79b9) % WORDS;
            self.locals[a].maps(real)[proto_index(proto)]
                .alloc(start)
                .map(|p| (self.addrs[a], p))
        })
    }

    /// Takes (address, port) for `proto` towards `real` if it is the
    /// pool's and free (a connection taken over from a dataplane that
    /// stopped, or from a peer director).
    pub fn claim(&self, proto: u8, addr: Addr, port: u16, real: Addr) -> bool {
        port >= PORT_MIN
            && self
                .local(addr)
                .is_some_and(|l| l.maps(real)[proto_index(proto)].claim(port))
    }

    /// Gives (address, port) towards `real` back.
    pub fn free(&self, proto: u8, addr: Addr, port: u16, real: Addr) {
        if let Some(l) = self.local(addr)
            && let Some(m) = l.by_real.get(&real)
        {
            m[proto_index(proto)].free(port);
        }
    }

    /// Ports in use, over all addresses, real servers and protocols.
    pub fn in_use(&self) -> usize {
        self.locals.iter().map(|l| l.used()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const V4: Addr = Addr::v4(0x0a02_000b);

    #[test]
    fn addresses_of_the_real_servers_family() {
        let pool = SnatPool::new(&["10.2.0.100".parse().unwrap(), "fd00::100".parse().unwrap()]);
        let v6: Addr = "fd00::11".parse::<IpAddr>().unwrap().into();
        for _ in 0..10 {
            assert_eq!(pool.alloc(6, V4).unwrap().0.to_string(), "10.2.0.100");
            assert_eq!(pool.alloc(6, v6).unwrap().0.to_string(), "fd00::100");
        }
        let only4 = SnatPool::new(&["10.2.0.100".parse().unwrap()]);
        assert_eq!(only4.alloc(6, v6), None, "no IPv6 address in the pool");
    }

    #[test]
    fn ports_are_unique_until_freed() {
        let pool = SnatPool::new(&["10.2.0.100".parse().unwrap(), "10.2.0.101".parse().unwrap()]);
        let mut seen = HashSet::new();
        for _ in 0..2 * (65536 - 1024) {
            let (a, p) = pool.alloc(6, V4).expect("room");
            assert!(p >= PORT_MIN);
            assert!(seen.insert((a, p)), "({a}, {p}) twice");
        }
        assert_eq!(pool.alloc(6, V4), None, "exhausted");
        assert!(pool.alloc(17, V4).is_some(), "udp ports are separate");
        let (a, p) = *seen.iter().next().unwrap();
        pool.free(6, a, p, V4);
        assert_eq!(pool.alloc(6, V4), Some((a, p)));
        assert_eq!(pool.in_use(), 2 * (65536 - 1024) + 1);
    }

    #[test]
    fn concurrent_allocation_never_collides() {
        let pool = std::sync::Arc::new(SnatPool::new(&["10.2.0.100".parse().unwrap()]));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    (0..10_000)
                        .map(|_| pool.alloc(6, V4).unwrap().1)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for p in h.join().unwrap() {
                assert!(all.insert(p));
            }
        }
        assert_eq!(all.len(), 40_000);
    }

    #[test]
    fn an_edited_pool_never_hands_out_a_live_port_again() {
        let a: IpAddr = "10.2.0.100".parse().unwrap();
        let b: IpAddr = "10.2.0.101".parse().unwrap();
        let old = SnatPool::new(&[a]);
        let held: HashSet<u16> = (0..1000).map(|_| old.alloc(6, V4).unwrap().1).collect();
        // The list is edited: a stays, b joins.
        let new = SnatPool::reusing(&[a, b], Some(&old));
        for _ in 0..2 * (65536 - 1024) - 1000 {
            let (addr, p) = new.alloc(6, V4).expect("room");
            assert!(
                !(addr == Addr::from(a) && held.contains(&p)),
                "port {p} handed out twice"
            );
        }
        assert_eq!(new.alloc(6, V4), None);
        // The old pool is kept only for what the new one does not have.
        assert_eq!(old.in_use_besides(Some(&new)), 0);
        let gone = SnatPool::reusing(&[b], Some(&new));
        assert!(new.in_use_besides(Some(&gone)) > 0, "a's ports keep it");
    }

    #[test]
    fn one_client_cycling_ports_exhausts_one_servers_space_only() {
        let pool = SnatPool::new(&["10.2.0.100".parse().unwrap()]);
        let other = Addr::v4(0x0a02_000c);
        for _ in 0..65536 - 1024 {
            pool.alloc(6, V4).expect("room");
        }
        assert_eq!(pool.alloc(6, V4), None, "this server's space is full");
        assert!(pool.alloc(6, other).is_some(), "another server's is not");
        // A port is claimed and freed in its server's space.
        assert!(pool.claim(17, Addr::v4(0x0a02_0064), 5000, other));
        assert!(!pool.claim(17, Addr::v4(0x0a02_0064), 5000, other));
        assert!(pool.claim(17, Addr::v4(0x0a02_0064), 5000, V4));
        pool.free(17, Addr::v4(0x0a02_0064), 5000, other);
        assert!(pool.claim(17, Addr::v4(0x0a02_0064), 5000, other));
    }

    #[test]
    fn empty_pool() {
        assert_eq!(SnatPool::new(&[]).alloc(6, V4), None);
    }
}
