//! The connection table's index: flow key → connection, shared by every
//! worker.
//!
//! A connection is reachable under the key of each direction the director
//! sees (client → VIP always, real server → client for `nat` and
//! `fullnat`). The index does not store keys: an entry is the connection
//! and which of its keys it stands for, with the bits of the key's hash
//! the table uses (16 bytes); the key is read from the connection when a
//! probe needs it — the connection is what a lookup
//! wants anyway. (A map of `FlowKey → Arc<Conn>` holds 48-byte entries, two
//! per `nat` connection.) 64 shards, each a `hashbrown` table behind its
//! own lock, keep workers from contending.

use super::conntrack::{Conn, Dir};
use super::parse::FlowKey;
use hashbrown::HashTable;
use std::sync::{Arc, RwLock};

const SHARDS: usize = 64;

/// One key of a connection, and the key's hash (kept in what would be
/// padding, so growing a table never reads the connections).
struct Entry {
    conn: Arc<Conn>,
    hash_lo: u32,
    hash_top: u8,
    dir: Dir,
}

/// The bits of a key's hash the tables use: the low 32 (bucket index) and
/// the top 7 (control bytes). Lookups and rehashing both use exactly these,
/// so an entry's stored bits rebuild its hash.
const TABLE_BITS: u64 = 0xfe00_0000_ffff_ffff;

impl Entry {
    fn new(conn: &Arc<Conn>, dir: Dir, h: u64) -> Self {
        Entry {
            conn: conn.clone(),
            hash_lo: h as u32,
            hash_top: (h >> 57) as u8,
            dir,
        }
    }

    fn hash(&self) -> u64 {
        (u64::from(self.hash_top) << 57) | u64::from(self.hash_lo)
    }

    fn key(&self) -> FlowKey {
        match self.dir {
            Dir::Original => self.conn.original_key(),
            Dir::Reply => self.conn.reply_key(),
        }
    }
}

pub struct ConnTable {
    shards: Box<[RwLock<HashTable<Entry>>]>,
    hasher: ahash::RandomState,
}

/// What [`ConnTable::insert_new`] found.
pub enum Inserted {
    /// The key was free: the connection is in the table under it.
    New,
    /// Another connection holds the key already.
    Exists(Arc<Conn>),
}

impl ConnTable {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// A key's shard, and its hash within the shard's table.
    #[inline]
    fn locate(&self, key: &FlowKey) -> (&RwLock<HashTable<Entry>>, u64) {
        let h = self.hasher.hash_one(key);
        // (The shard from bits the tables do not use.)
        (&self.shards[(h >> 32) as usize % SHARDS], h & TABLE_BITS)
    }

    /// The connection under `key`, and the direction `key` stands for.
    #[inline]
    pub fn get(&self, key: &FlowKey) -> Option<(Arc<Conn>, Dir)> {
        let (shard, h) = self.locate(key);
        let shard = shard.read().unwrap_or_else(|p| p.into_inner());
        shard
            .find(h, |e| e.key() == *key)
            .map(|e| (e.conn.clone(), e.dir))
    }

    pub fn contains(&self, key: &FlowKey) -> bool {
        self.get(key).is_some()
    }

    /// Files `conn` under its `dir` key unless that key is taken.
    pub fn insert_new(&self, conn: &Arc<Conn>, dir: Dir) -> Inserted {
        self.file(conn, dir, false)
    }

    /// Files `conn` under its `dir` key, replacing whatever held it.
    pub fn insert(&self, conn: &Arc<Conn>, dir: Dir) {
        self.file(conn, dir, true);
    }

    fn file(&self, conn: &Arc<Conn>, dir: Dir, replace: bool) -> Inserted {
        let key = match dir {
            Dir::Original => conn.original_key(),
            Dir::Reply => conn.reply_key(),
        };
        let (shard, h) = self.locate(&key);
        let e = Entry::new(conn, dir, h);
        let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
        match shard.find_mut(h, |x| x.key() == key) {
            Some(old) if replace => *old = e,
            Some(old) => return Inserted::Exists(old.conn.clone()),
            None => {
                shard.insert_unique(h, e, Entry::hash);
            }
        }
        Inserted::New
    }

    /// Removes the entry under `key` if it is `conn`'s and `cond` holds;
    /// true if it did.
    pub fn remove_if(&self, key: &FlowKey, conn: &Arc<Conn>, cond: impl FnOnce() -> bool) -> bool {
        let (shard, h) = self.locate(key);
        let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
        match shard.find_entry(h, |x| x.key() == *key) {
            Ok(e) if Arc::ptr_eq(&e.get().conn, conn) && cond() => {
                e.remove();
                true
            }
            _ => false,
        }
    }

    /// Every connection once (under its client → VIP key).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Conn>)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            for e in shard.iter().filter(|e| e.dir == Dir::Original) {
                f(&e.conn);
            }
        }
    }
}

impl Default for ConnTable {
    fn default() -> Self {
        Self::new()
    }
}
