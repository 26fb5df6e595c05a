//! The reply table the workers share with the XDP program: which `nat`
//! replies are lvc's (see `is_reply` in `lvc_xdp.c`).
//!
//! The table is the BPF array `replyslots`, mapped into the daemon's
//! memory: a worker that makes a `nat` connection writes the fingerprint of
//! its reply key with one compare-and-swap — no syscall on the path of a
//! new connection. It is an open-addressing table of 64-bit fingerprints
//! (the key's [`flow_hash`] with bit 1 set), probed linearly over
//! [`PROBES`] slots from the fingerprint's index; [`EMPTY`] slots end a
//! lookup, [`DELETED`] ones do not and are reused. A key that finds its
//! window full goes to the `replies` hash map instead (by syscall; the
//! table has twice as many slots as the connection table, so that is
//! rare).
//!
//! Races with XDP are harmless: a slot being rewritten holds either its
//! old or its new fingerprint (aligned 64-bit stores), and a key is written
//! before the connection's first packet is sent, so no reply can look for
//! it earlier.

use super::sys::SharedWords;
use lvc_ebpf::FlowKey;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots a key may occupy, from its index on (`REPLY_PROBES`).
pub const PROBES: usize = 8;
/// A slot never used: a lookup stops here.
pub const EMPTY: u64 = 0;
/// A slot whose key was removed: a lookup goes on, an insert reuses it.
pub const DELETED: u64 = 1;

/// The 64-bit hash of a flow key over its ten 32-bit words as they lie in
/// memory (word-wise FNV-1a, then murmur3's finaliser), as `flow_hash` in
/// the XDP program computes it.
pub fn flow_hash(k: &FlowKey) -> u64 {
    let s = k.sport_be.to_ne_bytes();
    let d = k.dport_be.to_ne_bytes();
    let p = k.pad.to_ne_bytes();
    let head = [
        u32::from_ne_bytes([k.family, k.proto, s[0], s[1]]),
        u32::from_ne_bytes([d[0], d[1], p[0], p[1]]),
    ];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in head.iter().chain(&k.saddr).chain(&k.daddr) {
        h ^= u64::from(*w);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// `replyslots`, mapped. Shared by every worker and the housekeeping
/// thread (`Arc`); every access is an atomic operation on one slot.
pub struct ReplyMap {
    mem: SharedWords,
}

impl ReplyMap {
    /// Maps the `replyslots` array behind `fd`, of `len` slots (a power of
    /// two: the program's `reply_mask` is `len - 1`).
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> std::io::Result<Self> {
        assert!(len.is_power_of_two());
        Ok(Self {
            mem: SharedWords::map(fd, len)?,
        })
    }

    fn slots(&self) -> &[AtomicU64] {
        self.mem.words()
    }

    /// Steers `key`'s packets to lvc. False if its window is full (the
    /// caller uses the `replies` hash map then).
    pub fn insert(&self, key: &FlowKey) -> bool {
        insert(self.slots(), key)
    }

    /// Stops steering `key` to lvc; false if it was not in the table.
    pub fn remove(&self, key: &FlowKey) -> bool {
        remove(self.slots(), key)
    }
}

/// The slots `key` may occupy (by index), and its fingerprint.
fn window<'a>(slots: &'a [AtomicU64], key: &FlowKey) -> (impl Iterator<Item = &'a AtomicU64>, u64) {
    let h = flow_hash(key);
    let mask = slots.len() - 1;
    let first = h as u32 as usize;
    ((0..PROBES).map(move |i| &slots[(first + i) & mask]), h | 2)
}

fn insert(slots: &[AtomicU64], key: &FlowKey) -> bool {
    let (window, fp) = window(slots, key);
    if contains(slots, key) {
        return true;
    }
    for s in window {
        let v = s.load(Ordering::Acquire);
        if (v == EMPTY || v == DELETED)
            && s.compare_exchange(v, fp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return true;
        }
    }
    false
}

fn remove(slots: &[AtomicU64], key: &FlowKey) -> bool {
    let (window, fp) = window(slots, key);
    let mut found = false;
    // (Every copy: two workers may have added the same key at once.)
    for s in window {
        found |= s
            .compare_exchange(fp, DELETED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
    }
    found
}

fn contains(slots: &[AtomicU64], key: &FlowKey) -> bool {
    let (window, fp) = window(slots, key);
    for s in window {
        match s.load(Ordering::Acquire) {
            v if v == fp => return true,
            EMPTY => return false,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn key(i: u32) -> FlowKey {
        FlowKey::new(
            17,
            ("10.2.0.11".parse().unwrap(), 53),
            (IpAddr::from((0x0a01_0000 + i).to_be_bytes()), 4000),
        )
    }

    fn table(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(EMPTY)).collect()
    }

    #[test]
    fn keys_in_and_out() {
        let t = table(1024);
        for i in 0..400 {
            assert!(insert(&t, &key(i)), "key {i} fits at 40% load");
        }
        assert!((0..400).all(|i| contains(&t, &key(i))));
        assert!(!contains(&t, &key(400)));
        for i in (0..400).step_by(2) {
            assert!(remove(&t, &key(i)));
        }
        assert!(!remove(&t, &key(0)), "removed once");
        for i in 0..400 {
            assert_eq!(contains(&t, &key(i)), i % 2 == 1, "key {i}");
        }
        // Deleted slots are reused; inserting twice keeps one copy.
        for i in 1000..1200 {
            assert!(insert(&t, &key(i)));
            assert!(insert(&t, &key(i)));
        }
        assert!((1000..1200).all(|i| contains(&t, &key(i))));
        let used = t
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) > DELETED)
            .count();
        assert_eq!(used, 200 + 200);
    }

    #[test]
    fn a_full_window_refuses() {
        let t = table(8);
        let mut n = 0;
        while insert(&t, &key(n)) {
            n += 1;
        }
        assert_eq!(n, 8, "a table of 8 slots takes 8 keys");
        assert!(!contains(&t, &key(n)));
    }
}
