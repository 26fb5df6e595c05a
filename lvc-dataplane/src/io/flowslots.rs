//! Offloaded flows the workers install themselves: the XDP program's
//! `flowslots` array, mapped into the daemon's memory (see `flow_find` in
//! `lvc_xdp.c`). A worker that offloads a connection writes its flows here
//! with a compare-and-swap and a few stores — no syscall, no wait for the
//! offload thread — so even a short connection is forwarded by XDP from
//! the packet after its handshake. The offload thread reads the counters
//! XDP keeps in the slots and deletes flows; flows that find no slot go to
//! the `flows` hash map by syscall as before.
//!
//! A slot is [`FLOW_SLOT_WORDS`] 64-bit words: a tag, the [`FlowKey`], the
//! [`FlowValue`]. An open-addressing table, probed linearly over
//! [`PROBES`] slots from the key's [`flow_hash`]. Tags:
//!
//! - [`EMPTY`]: never used, or cleaned; a lookup stops here;
//! - a fingerprint (`flow_hash | 2`, bit 1 set): a live flow;
//! - [`BUSY`]: claimed by a worker that is writing key and value;
//! - `deleted(t)` (`t << 2 | 1`): deleted at second `t`. A lookup goes on
//!   past it; an insert reuses it only [`QUARANTINE`] seconds later, when
//!   no packet that found the old flow can still be in the program.
//!
//! Writers publish the tag last (release), XDP reads it first. Each slot
//! also has a hint byte in `flowhints` ([`hint_of`] its tag), which XDP
//! reads before the slot: a miss then costs a dense 1-byte-per-slot array
//! rather than a 136-byte slot of a 34 MiB table (a TLB miss besides the
//! cache miss). Whoever changes a tag sets the hint after it
//! ([`set_hint`]). A stale hint is harmless: one saying "empty" stops a
//! lookup early (lvc forwards the flow meanwhile), any other makes XDP read
//! the slot, whose tag decides.
//!
//! An insert
//! never skips a free slot (a lost compare-and-swap is retried on the same
//! slot), so the slots from a live key's home index to it are non-empty.
//! That lets [`FlowSlots::clean`] turn an old deleted slot followed by an
//! empty one back into an empty one (the offload thread sweeps the table a
//! piece at a time, right to left, so runs of them empty in one pass), and
//! misses keep ending early after churn. (Were a worker stalled for
//! seconds in an insert, its flow could end up behind a cleaned slot: XDP
//! would not find it and lvc would forward its packets — slower, not
//! wrong.)

use super::replymap::flow_hash;
use super::sys::SharedWords;
use lvc_ebpf::{FLOW_SLOT_WORDS, FlowKey, FlowValue};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use zerocopy::{FromBytes, IntoBytes};

/// Slots a key may occupy, from its home index on (`FLOW_PROBES`).
pub const PROBES: usize = 8;
/// A slot never used (or cleaned): a lookup stops here.
pub const EMPTY: u64 = 0;
/// A slot a worker is writing.
pub const BUSY: u64 = 4;
/// Seconds a deleted slot waits before it is reused.
pub const QUARANTINE: u32 = 2;
/// Seconds more before a deleted slot may be made empty again (by then
/// no worker can have passed it over as not yet reusable).
pub const CLEAN_AFTER: u32 = QUARANTINE + 2;

const KEY_WORDS: usize = size_of::<FlowKey>() / 8;

fn deleted(t: u32) -> u64 {
    u64::from(t) << 2 | 1
}

/// `Some(t)` if `tag` marks a slot deleted at second `t`.
fn deleted_at(tag: u64) -> Option<u32> {
    (tag & 3 == 1).then_some((tag >> 2) as u32)
}

fn fingerprint(key: &FlowKey) -> (usize, u64) {
    let h = flow_hash(key);
    (h as u32 as usize, h | 2)
}

fn as_words<T: IntoBytes + zerocopy::Immutable>(v: &T) -> impl Iterator<Item = u64> + '_ {
    v.as_bytes()
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
}

/// What the hint byte of a slot tagged `tag` says: 0 empty, 1 no live
/// flow (deleted, or being written), else `0x80 |` the fingerprint's top 7
/// bits (as `flow_find` in the XDP program computes it).
pub fn hint_of(tag: u64) -> u8 {
    match tag {
        EMPTY => 0,
        t if t & 2 != 0 => 0x80 | (t >> 57) as u8,
        _ => 1,
    }
}

/// The slots and their hints.
#[derive(Clone, Copy)]
struct Table<'a> {
    words: &'a [AtomicU64],
    hints: &'a [AtomicU8],
}

/// `flowslots` and `flowhints`, mapped. Shared by the workers and the
/// offload thread (`Arc`); every access is an atomic operation on one word
/// or byte.
pub struct FlowSlots {
    mem: SharedWords,
    hints: SharedWords,
}

impl FlowSlots {
    /// Maps the `flowslots` array behind `fd`, of `len` slots (a power of
    /// two, at least a hint line: the program's `flow_mask` is `len - 1`),
    /// with `hints`, the `flowhints` array mapped (a byte per slot).
    pub fn map(fd: BorrowedFd<'_>, hints: SharedWords, len: usize) -> std::io::Result<Self> {
        assert!(len.is_power_of_two() && len >= lvc_ebpf::FLOW_HINT_LINE);
        assert!(hints.bytes().len() >= len);
        Ok(Self {
            mem: SharedWords::map(fd, len * FLOW_SLOT_WORDS)?,
            hints,
        })
    }

    fn table(&self) -> Table<'_> {
        let words = self.mem.words();
        Table {
            words,
            hints: &self.hints.bytes()[..words.len() / FLOW_SLOT_WORDS],
        }
    }

    /// Installs `value` for `key` at second `now`: the slot's index, or
    /// `None` if the key's window is full or holds the key already (a
    /// closing connection's flow: the caller tries again later).
    pub fn insert(&self, key: &FlowKey, value: &FlowValue, now: u32) -> Option<u32> {
        insert(self.table(), key, value, now)
    }

    /// What slot `at` holds now (XDP's counters and stream position).
    pub fn read(&self, at: u32) -> FlowValue {
        read(self.mem.words(), at)
    }

    /// Deletes `key`'s flow at slot `at` at second `now` (XDP stops
    /// forwarding it).
    pub fn remove(&self, at: u32, key: &FlowKey, now: u32) {
        remove(self.table(), at, key, now);
    }

    /// Makes the slots `from .. from + count` empty again that were
    /// deleted long enough before `now` and are followed by an empty one,
    /// from the last down (so a run of them goes at once). Returns how
    /// many were made empty.
    pub fn clean(&self, from: usize, count: usize, now: u32) -> usize {
        clean(self.table(), from, count, now)
    }

    /// Slots in the table.
    pub fn slots(&self) -> usize {
        self.mem.words().len() / FLOW_SLOT_WORDS
    }
}

fn slot(words: &[AtomicU64], i: usize) -> &[AtomicU64] {
    let n = words.len() / FLOW_SLOT_WORDS;
    let i = i & (n - 1);
    &words[i * FLOW_SLOT_WORDS..(i + 1) * FLOW_SLOT_WORDS]
}

fn holds(s: &[AtomicU64], key: &FlowKey) -> bool {
    as_words(key)
        .zip(&s[1..=KEY_WORDS])
        .all(|(k, w)| w.load(Ordering::Relaxed) == k)
}

/// Makes slot `i`'s hint say what its tag says now; called by whoever
/// changed the tag, after. Of callers racing on one slot, one that sees the
/// tag change under its store writes again, so the last store is the last
/// tag's hint.
fn set_hint(t: Table, i: usize) {
    let i = i & (t.hints.len() - 1);
    let tag = &slot(t.words, i)[0];
    let mut seen = tag.load(Ordering::SeqCst);
    loop {
        t.hints[i].store(hint_of(seen), Ordering::SeqCst);
        let now = tag.load(Ordering::SeqCst);
        if now == seen {
            return;
        }
        seen = now;
    }
}

fn insert(t: Table, key: &FlowKey, value: &FlowValue, now: u32) -> Option<u32> {
    let words = t.words;
    let n = words.len() / FLOW_SLOT_WORDS;
    let (home, fp) = fingerprint(key);
    // A key still held (by a closing connection) is not taken over, as
    // the hash map's BPF_NOEXIST.
    for i in 0..PROBES {
        let s = slot(words, home + i);
        match s[0].load(Ordering::Acquire) {
            EMPTY => break,
            t if t == fp && holds(s, key) => return None,
            _ => {}
        }
    }
    for i in 0..PROBES {
        let s = slot(words, home + i);
        let mut tag = s[0].load(Ordering::Acquire);
        loop {
            let free = tag == EMPTY || deleted_at(tag).is_some_and(|t| now >= t + QUARANTINE);
            if !free {
                break;
            }
            match s[0].compare_exchange(tag, BUSY, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    for (w, v) in s[1..].iter().zip(as_words(key).chain(as_words(value))) {
                        w.store(v, Ordering::Relaxed);
                    }
                    s[0].store(fp, Ordering::Release);
                    set_hint(t, home + i);
                    return Some(((home + i) & (n - 1)) as u32);
                }
                // (Taken, or cleaned meanwhile: look at it again, never
                // past it — see the module's notes.)
                Err(now_tag) => tag = now_tag,
            }
        }
    }
    None
}

fn read(words: &[AtomicU64], at: u32) -> FlowValue {
    let s = slot(words, at as usize);
    let mut bytes = [0u8; size_of::<FlowValue>()];
    for (b, w) in bytes.chunks_exact_mut(8).zip(&s[1 + KEY_WORDS..]) {
        b.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
    }
    FlowValue::read_from_bytes(&bytes).expect("the value's size")
}

fn remove(t: Table, at: u32, key: &FlowKey, now: u32) {
    let (_, fp) = fingerprint(key);
    let s = slot(t.words, at as usize);
    if s[0]
        .compare_exchange(fp, deleted(now), Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        set_hint(t, at as usize);
    }
}

fn clean(t: Table, from: usize, count: usize, now: u32) -> usize {
    let words = t.words;
    let mut next_empty = slot(words, from + count)[0].load(Ordering::Acquire) == EMPTY;
    let mut cleaned = 0;
    for i in (from..from + count).rev() {
        let s = slot(words, i);
        let tag = s[0].load(Ordering::Acquire);
        if tag == EMPTY {
            next_empty = true;
            continue;
        }
        next_empty = next_empty
            && deleted_at(tag).is_some_and(|t| now >= t + CLEAN_AFTER)
            && s[0]
                .compare_exchange(tag, EMPTY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if next_empty {
            set_hint(t, i);
            cleaned += 1;
        }
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn key(i: u32) -> FlowKey {
        FlowKey::new(
            6,
            ("10.2.0.11".parse().unwrap(), 80),
            (IpAddr::from((0x0a01_0000 + i).to_be_bytes()), 4000),
        )
    }

    fn value(i: u32) -> FlowValue {
        FlowValue {
            egress_ifindex: i,
            mtu: 1500,
            packets: u64::from(i) * 3,
            ..FlowValue::default()
        }
    }

    struct Owned(Vec<AtomicU64>, Vec<AtomicU8>);

    impl Owned {
        fn t(&self) -> Table<'_> {
            Table {
                words: &self.0,
                hints: &self.1,
            }
        }

        /// Whether every hint says what its slot's tag says.
        fn hints_agree(&self) -> bool {
            (0..self.1.len()).all(|i| {
                self.1[i].load(Ordering::Relaxed)
                    == hint_of(slot(&self.0, i)[0].load(Ordering::Relaxed))
            })
        }
    }

    fn table(slots: usize) -> Owned {
        Owned(
            (0..slots * FLOW_SLOT_WORDS)
                .map(|_| AtomicU64::new(EMPTY))
                .collect(),
            (0..slots).map(|_| AtomicU8::new(0)).collect(),
        )
    }

    /// What XDP's `flow_find` does: the slot of `key`, if live, reading a
    /// slot only where its hint matches.
    fn find(t: &Owned, k: &FlowKey) -> Option<u32> {
        let n = t.1.len();
        let (home, fp) = fingerprint(k);
        for i in 0..PROBES {
            let at = (home + i) & (n - 1);
            match t.1[at].load(Ordering::Acquire) {
                0 => return None,
                h if h != hint_of(fp) => continue,
                _ => {}
            }
            let s = slot(&t.0, at);
            match s[0].load(Ordering::Acquire) {
                EMPTY => return None,
                tag if tag == fp && holds(s, k) => return Some(at as u32),
                _ => {}
            }
        }
        None
    }

    #[test]
    fn flows_in_read_and_out() {
        let t = table(1024);
        let at: Vec<u32> = (0..400)
            .map(|i| insert(t.t(), &key(i), &value(i), 10).expect("fits at 40% load"))
            .collect();
        for i in 0..400 {
            assert_eq!(find(&t, &key(i)), Some(at[i as usize]), "key {i}");
            assert_eq!(read(&t.0, at[i as usize]), value(i));
        }
        assert_eq!(find(&t, &key(400)), None);
        assert_eq!(insert(t.t(), &key(7), &value(7), 10), None, "held already");
        for i in (0..400).step_by(2) {
            remove(t.t(), at[i as usize], &key(i), 11);
        }
        for i in 0..400 {
            assert_eq!(find(&t, &key(i)).is_some(), i % 2 == 1, "key {i}");
        }
        // A deleted key may come back (another connection) at once, in
        // another slot: its old one is in quarantine.
        let again = insert(t.t(), &key(0), &value(9), 11).unwrap();
        assert_ne!(again, at[0]);
        assert_eq!(read(&t.0, find(&t, &key(0)).unwrap()), value(9));
        assert!(t.hints_agree());
    }

    #[test]
    fn deleted_slots_wait_before_reuse() {
        let t = table(8);
        let at: Vec<u32> = (0..8)
            .map(|i| insert(t.t(), &key(i), &value(i), 100).unwrap())
            .collect();
        assert_eq!(insert(t.t(), &key(8), &value(8), 100), None, "full");
        remove(t.t(), at[3], &key(3), 100);
        assert_eq!(
            insert(t.t(), &key(8), &value(8), 101),
            None,
            "in quarantine"
        );
        assert_eq!(
            insert(t.t(), &key(8), &value(8), 100 + QUARANTINE),
            Some(at[3])
        );
        assert_eq!(find(&t, &key(8)), Some(at[3]));
        assert_eq!(find(&t, &key(3)), None);
    }

    #[test]
    fn churn_is_cleaned_so_misses_stay_short() {
        // Connections come and go for a while; every slot has been used.
        let t = table(256);
        let mut live: Vec<(u32, u32)> = Vec::new();
        let mut next = 0;
        for now in 0..400u32 {
            for _ in 0..10 {
                if let Some(at) = insert(t.t(), &key(next), &value(next), now) {
                    live.push((next, at));
                }
                next += 1;
            }
            // Each second the older half goes, and old deletions are
            // cleaned (as the offload thread does).
            let gone: Vec<_> = live.drain(..live.len() / 2).collect();
            for (k, at) in &gone {
                remove(t.t(), *at, &key(*k), now);
            }
            // A quarter of the table a second, wrapping round.
            let from = (256 - (now as usize % 4 + 1) * 64) % 256;
            clean(t.t(), from, 64, now);
            for (k, at) in &live {
                assert_eq!(find(&t, &key(*k)), Some(*at), "live key {k} at {now}");
            }
            for (k, _) in &gone {
                assert_eq!(find(&t, &key(*k)), None, "gone key {k}");
            }
            assert!(t.hints_agree(), "at {now}");
        }
        assert_eq!(next, 4000);
        let empty = (0..256)
            .filter(|&i| slot(&t.0, i)[0].load(Ordering::Relaxed) == EMPTY)
            .count();
        // About 10 live and 40 deleted in the last CLEAN_AFTER seconds:
        // without cleaning none would be empty after this much churn.
        assert!(empty > 150, "{empty} of 256 slots empty");
        assert!(t.hints_agree());
    }

    #[test]
    fn hints_agree_after_concurrent_use() {
        // Workers installing and the offload thread deleting and cleaning
        // the same few slots at once. (The interleaving `set_hint`'s loop
        // is for — a writer preempted between its tag and its hint while
        // another takes the slot — is too rare to force here.)
        let t = table(16);
        std::thread::scope(|sc| {
            for w in 0..3u32 {
                let t = &t;
                sc.spawn(move || {
                    for round in 0..2_000u32 {
                        let k = key(w * 100_000 + round);
                        if let Some(at) = insert(t.t(), &k, &value(1), round) {
                            remove(t.t(), at, &k, round);
                        }
                        clean(t.t(), (round % 16) as usize, 4, round + CLEAN_AFTER);
                    }
                });
            }
        });
        assert!(t.hints_agree());
    }
}
