//! The connection journal: what a dataplane that starts again — after
//! `kill -9`, a crash, an upgrade or `systemctl restart` — needs to take
//! over the connections of the one before it.
//!
//! It is a file on tmpfs (by default next to the control socket,
//! `/run/lvc/lvc.conns`), mapped shared: what was written survives the
//! process, however it ends. It holds one 96-byte record per connection
//! worth keeping — UDP flows from their third packet (IPVS's sync
//! threshold), TCP connections once established (a SYN flood never
//! reaches it) — in an open-addressing table keyed by
//! the connection's original flow. Only the housekeeping thread writes it,
//! every 200 ms, from two queues the connection table fills (no write on
//! the packet path but a queue push); the record's tag word is written
//! last, so a record cut short by a crash is never read as whole.
//!
//! A connection made less than 200 ms before the end may be missing, as
//! with IPVS's sync daemon; one that closed in that time may be taken over
//! and then expire.
//!
//! At start, [`Journal::open`] reads what the previous process left and
//! starts a fresh table; [`restore`] makes each record a connection again
//! if its service and real server are still configured (same method), with
//! its fullnat port claimed, its persistence template and its nat reply
//! steering, and journals it anew.

use crate::addr::Addr;
use crate::io::replymap::flow_hash;
use crate::io::steer::Replies;
use crate::io::sys::SharedWords;
use crate::pipeline::conntrack::{Conn, Conntrack, Dir, State};
use crate::pipeline::parse::FlowKey;
use crate::pipeline::services::{ServiceTable, Template};
use crate::pipeline::translate;
use lvc_proto::Method;
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const MAGIC: u64 = u64::from_be_bytes(*b"LVCJRNL1");
/// Header: magic, number of slots, then reserved words.
const HEADER_WORDS: usize = 8;
const RECORD_WORDS: usize = 12;
/// Slots a record may take, from its hash's index on.
const PROBES: usize = 32;
const EMPTY: u64 = 0;
const DELETED: u64 = 1;

/// One journaled connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub proto: u8,
    pub state: State,
    pub method: Method,
    pub client: (Addr, u16),
    pub vip: (Addr, u16),
    pub real: (Addr, u16),
    /// fullnat: the local address and port the real server sees.
    pub local: Option<(Addr, u16)>,
}

impl Record {
    pub fn of(c: &Conn) -> Self {
        Self {
            proto: c.proto,
            state: c.state(),
            method: c.method(),
            client: c.client,
            vip: c.vip(),
            real: c.real(),
            local: c.snat.as_ref().map(|s| s.local),
        }
    }

    fn key(&self) -> FlowKey {
        FlowKey {
            src: self.client.0,
            dst: self.vip.0,
            sport: self.client.1,
            dport: self.vip.1,
            proto: self.proto,
        }
    }

    pub(crate) fn encode(&self) -> [u64; RECORD_WORDS - 1] {
        let addr = |a: Addr| {
            let (hi, lo) = a.0.split_at(8);
            [
                u64::from_le_bytes(hi.try_into().expect("8 bytes")),
                u64::from_le_bytes(lo.try_into().expect("8 bytes")),
            ]
        };
        let local = self.local.unwrap_or((Addr([0; 16]), 0));
        let [c0, c1] = addr(self.client.0);
        let [v0, v1] = addr(self.vip.0);
        let [r0, r1] = addr(self.real.0);
        let [l0, l1] = addr(local.0);
        [
            u64::from(self.proto)
                | u64::from(self.state as u8) << 8
                | u64::from(method_code(self.method)) << 16
                | u64::from(self.local.is_some()) << 24
                | u64::from(self.client.1) << 32
                | u64::from(self.vip.1) << 48,
            u64::from(self.real.1) | u64::from(local.1) << 16,
            c0,
            c1,
            v0,
            v1,
            r0,
            r1,
            l0,
            l1,
            0,
        ]
    }

    pub(crate) fn decode(w: &[u64]) -> Option<Self> {
        if w.len() < RECORD_WORDS - 1 {
            return None;
        }
        let addr = |hi: u64, lo: u64| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&hi.to_le_bytes());
            b[8..].copy_from_slice(&lo.to_le_bytes());
            Addr(b)
        };
        let head = w[0];
        let state = State::from_u8((head >> 8) as u8);
        let proto = head as u8;
        if state == State::Removed
            || !matches!(proto, crate::wire::PROTO_TCP | crate::wire::PROTO_UDP)
        {
            return None;
        }
        Some(Self {
            proto,
            state,
            method: method_of((head >> 16) as u8)?,
            client: (addr(w[2], w[3]), (head >> 32) as u16),
            vip: (addr(w[4], w[5]), (head >> 48) as u16),
            real: (addr(w[6], w[7]), w[1] as u16),
            local: (head >> 24 & 1 == 1).then(|| (addr(w[8], w[9]), (w[1] >> 16) as u16)),
        })
    }
}

fn method_code(m: Method) -> u8 {
    match m {
        Method::Nat => 0,
        Method::Dnat => 1,
        Method::Dr => 2,
        Method::Tun => 3,
        Method::Fullnat => 4,
    }
}

fn method_of(c: u8) -> Option<Method> {
    Some(match c {
        0 => Method::Nat,
        1 => Method::Dnat,
        2 => Method::Dr,
        3 => Method::Tun,
        4 => Method::Fullnat,
        _ => return None,
    })
}

/// The journal file, mapped.
pub struct Journal {
    mem: SharedWords,
    slots: usize,
    path: PathBuf,
    /// Records that found no slot in their window (table full).
    pub full: u64,
    _file: File,
}

impl Journal {
    /// Opens the journal at `path` with room for `capacity` connections:
    /// returns it (empty) and the records the previous process left.
    pub fn open(path: &Path, capacity: usize) -> std::io::Result<(Self, Vec<Record>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let left = read_records(&file).unwrap_or_default();
        let slots = capacity.max(1024).next_power_of_two();
        let words = HEADER_WORDS + slots * RECORD_WORDS;
        // A fresh table: zeroed by truncation (tmpfs pages are allocated as
        // records are written).
        file.set_len(0)?;
        file.set_len(words as u64 * 8)?;
        let mem = SharedWords::map(file.as_fd(), words)?;
        let w = mem.words();
        w[1].store(slots as u64, Ordering::Relaxed);
        w[0].store(MAGIC, Ordering::Release);
        Ok((
            Self {
                mem,
                slots,
                path: path.to_owned(),
                full: 0,
                _file: file,
            },
            left,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&self, slot: usize) -> &[AtomicU64] {
        let at = HEADER_WORDS + slot * RECORD_WORDS;
        &self.mem.words()[at..at + RECORD_WORDS]
    }

    /// The slots `key` may take, and its tag.
    fn window(&self, key: &FlowKey) -> (impl Iterator<Item = usize> + use<>, u64) {
        let h = flow_hash(&translate::bpf_key(key));
        let mask = self.slots - 1;
        let first = h as usize;
        ((0..PROBES).map(move |i| (first + i) & mask), h | 2)
    }

    /// The slot holding `key`'s record, if any.
    fn find(&self, key: &FlowKey) -> Option<usize> {
        let (window, tag) = self.window(key);
        for i in window {
            let r = self.record(i);
            match r[0].load(Ordering::Acquire) {
                EMPTY => return None,
                t if t == tag && Record::decode(&load(r)).is_some_and(|rec| rec.key() == *key) => {
                    return Some(i);
                }
                _ => {}
            }
        }
        None
    }

    /// Writes (or rewrites) `c`'s record; false if its window is full.
    pub fn put(&mut self, c: &Conn) -> bool {
        let rec = Record::of(c);
        let key = rec.key();
        let (window, tag) = self.window(&key);
        let slot = self.find(&key).or_else(|| {
            window
                .into_iter()
                .find(|&i| self.record(i)[0].load(Ordering::Acquire) <= DELETED)
        });
        let Some(i) = slot else {
            self.full += 1;
            return false;
        };
        let r = self.record(i);
        // Tag last: a record is whole before it is one.
        r[0].store(DELETED, Ordering::Release);
        for (w, v) in r[1..].iter().zip(rec.encode()) {
            w.store(v, Ordering::Relaxed);
        }
        r[0].store(tag, Ordering::Release);
        true
    }

    /// Forgets `key`'s record.
    pub fn remove(&mut self, key: &FlowKey) {
        if let Some(i) = self.find(key) {
            self.record(i)[0].store(DELETED, Ordering::Release);
        }
    }

    /// Applies what the connection table queued (`Conntrack::take_journal`).
    pub fn apply(&mut self, new: &[Arc<Conn>], gone: &[FlowKey]) {
        for k in gone {
            self.remove(k);
        }
        for c in new {
            c.mark_journaled();
            self.put(c);
            // Removed meanwhile (its release saw the flag, or did not):
            // either way no record may outlive it.
            if c.state() == State::Removed {
                self.remove(&c.original_key());
            }
        }
    }
}

/// A record's words after its tag.
fn load(r: &[AtomicU64]) -> [u64; RECORD_WORDS - 1] {
    std::array::from_fn(|i| r[i + 1].load(Ordering::Relaxed))
}

/// The records of a journal file, if it is one.
fn read_records(file: &File) -> Option<Vec<Record>> {
    let len = file.metadata().ok()?.len() as usize / 8;
    if len < HEADER_WORDS {
        return None;
    }
    let mem = SharedWords::map(file.as_fd(), len).ok()?;
    let w = mem.words();
    if w[0].load(Ordering::Acquire) != MAGIC {
        return None;
    }
    let slots = w[1].load(Ordering::Relaxed) as usize;
    if HEADER_WORDS + slots.checked_mul(RECORD_WORDS)? > len {
        return None;
    }
    let mut out = Vec::new();
    for i in 0..slots {
        let at = HEADER_WORDS + i * RECORD_WORDS;
        let r = &w[at..at + RECORD_WORDS];
        if r[0].load(Ordering::Acquire) <= DELETED {
            continue;
        }
        out.extend(Record::decode(&load(r)));
    }
    Some(out)
}

/// What [`restore`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Connections taken over.
    pub conns: usize,
    /// Records whose service, server or method is gone or changed, or
    /// whose fullnat port is taken.
    pub dropped: usize,
}

/// The `nat` reply keys of `records`: steered to lvc before XDP is
/// attached, so that no reply of a connection being taken over reaches the
/// kernel (and the client) untranslated.
pub fn reply_keys(records: &[Record]) -> Vec<lvc_ebpf::FlowKey> {
    records
        .iter()
        .filter(|r| r.method == Method::Nat)
        .map(|r| {
            translate::bpf_key(&FlowKey {
                src: r.real.0,
                dst: r.client.0,
                sport: r.real.1,
                dport: r.client.1,
                proto: r.proto,
            })
        })
        .collect()
}

/// Makes `records` connections of `ct` again, as `services` (the
/// configuration now running) allows, and journals them in `journal`.
pub fn restore(
    records: Vec<Record>,
    services: &ServiceTable,
    ct: &Conntrack,
    replies: &Replies,
    journal: Option<&mut Journal>,
    now: u32,
) -> Restored {
    let mut done = Restored::default();
    let mut taken = Vec::new();
    for r in records {
        let Some(c) = take_over(&r, services, ct, now, false) else {
            done.dropped += 1;
            if r.method == Method::Nat {
                replies.remove(&reply_keys(std::slice::from_ref(&r))[0]);
            }
            continue;
        };
        if c.method() == Method::Nat && replies.add(translate::flow_key(&c, Dir::Reply)).is_ok() {
            c.replies_steered();
        }
        done.conns += 1;
        taken.push(c);
    }
    if let Some(j) = journal {
        for c in &taken {
            c.mark_journaled();
            j.put(c);
        }
    }
    done
}

/// Makes record `r` a connection of `ct` if `services` still has its
/// service and real server (same method): restored at a start, or made
/// from a peer director's word (`synced`).
pub(crate) fn take_over(
    r: &Record,
    services: &ServiceTable,
    ct: &Conntrack,
    now: u32,
    synced: bool,
) -> Option<Arc<Conn>> {
    let svc = services.lookup_for(r.proto, r.vip.0, r.vip.1, r.client.0)?;
    let server = svc.servers.iter().chain(&svc.sorry).find(|s| {
        s.addr == r.real.0 && (s.port == r.real.1 || s.port == 0) && s.method == r.method
    })?;
    // A PROXY protocol connection's shift is not in the record: taken
    // over without it, its stream would be off by the header's length.
    if server.proxy != lvc_proto::ProxyProtocol::Off && r.proto == crate::wire::PROTO_TCP {
        return None;
    }
    let conn = Conn::new(r.proto, r.client, r.vip, server.clone(), r.real.1, now);
    let conn = if synced {
        conn.from_peer(r.state)
    } else {
        conn.restored(r.state)
    };
    let conn = match r.local {
        Some((addr, port)) => {
            let pool = services.snat()?;
            if !pool.claim(r.proto, addr, port, r.real.0) {
                return None;
            }
            conn.with_local((addr, port), pool.clone())
        }
        None if r.method == Method::Fullnat => return None,
        None => conn,
    };
    let conn = match &svc.persistence {
        Some(p) => {
            let t = p
                .templates
                .entry(p.network(r.client.0))
                .or_insert_with(|| {
                    Arc::new(Template {
                        server: (server.addr, server.port),
                        last_used: AtomicU32::new(now),
                        conns: AtomicU32::new(0),
                    })
                })
                .clone();
            conn.with_template(t)
        }
        None => conn,
    };
    let snat = conn.snat.as_ref().map(|s| (s.pool.clone(), s.local));
    ct.insert(conn)
        .inspect_err(|_| {
            if let Some((pool, (a, p))) = &snat {
                pool.free(r.proto, *a, *p, r.real.0);
            }
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u8, local: bool) -> Record {
        Record {
            proto: 6,
            state: State::Established,
            method: if local { Method::Fullnat } else { Method::Nat },
            client: (Addr::v4_bytes([10, 1, 0, i]), 40000 + u16::from(i)),
            vip: (Addr::v4_bytes([10, 9, 0, 10]), 80),
            real: (
                "fd00:2::11".parse::<std::net::IpAddr>().unwrap().into(),
                8080,
            ),
            local: local.then(|| (Addr::v4_bytes([10, 2, 0, 100]), 2000 + u16::from(i))),
        }
    }

    #[test]
    fn records_encode_and_decode() {
        for local in [false, true] {
            let r = rec(7, local);
            let mut w = vec![0];
            w.extend(r.encode());
            assert_eq!(Record::decode(&w[1..]), Some(r));
        }
    }

    #[test]
    fn a_journal_outlives_its_process() {
        let path =
            std::env::temp_dir().join(format!("lvc-journal-test-{}.conns", std::process::id()));
        let (mut j, left) = Journal::open(&path, 1024).unwrap();
        assert!(left.is_empty());
        // Written by hand (put() takes a Conn): the record, then its tag.
        let keep: Vec<Record> = (0..50).map(|i| rec(i, i % 2 == 0)).collect();
        for r in &keep {
            let key = r.key();
            let (window, tag) = j.window(&key);
            let i = window
                .into_iter()
                .find(|&i| j.record(i)[0].load(Ordering::Relaxed) <= DELETED)
                .unwrap();
            for (w, v) in j.record(i)[1..].iter().zip(r.encode()) {
                w.store(v, Ordering::Relaxed);
            }
            j.record(i)[0].store(tag, Ordering::Release);
        }
        for r in &keep[..10] {
            j.remove(&r.key());
        }
        // The process "dies" (nothing is flushed), and a new one opens it.
        drop(j);
        let (j2, mut left) = Journal::open(&path, 4096).unwrap();
        left.sort_by_key(|r| r.client.1);
        assert_eq!(left, keep[10..]);
        drop(j2);
        let (_, again) = Journal::open(&path, 4096).unwrap();
        assert!(again.is_empty(), "a new table starts empty");
        let _ = std::fs::remove_file(&path);
        // Not a journal: nothing is read, and it becomes one.
        std::fs::write(&path, b"something else entirely, 40 bytes long!!").unwrap();
        let (_, left) = Journal::open(&path, 1024).unwrap();
        assert!(left.is_empty());
        let _ = std::fs::remove_file(&path);
    }
}
