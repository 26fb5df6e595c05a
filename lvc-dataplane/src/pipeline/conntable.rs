//! The connection table's index: flow key → connection, shared by every
//! worker.
//!
//! A connection is reachable under the key of each direction the director
//! sees: client → VIP always, real server → client for `nat` and
//! `fullnat`. The index has one half per direction, and an entry is just
//! the connection (8 bytes): the key is read from the connection when a
//! probe needs it — the connection is what a lookup wants anyway. Each half
//! is 1024 lock-sharded `hashbrown` tables sized for the table's capacity up
//! front, so they do not grow as the table fills (growing reads every
//! connection of a shard to rehash it). A packet's key is looked up in the client half, then in the
//! server half.

use super::conntrack::{Conn, Dir};
use super::parse::FlowKey;
use hashbrown::HashTable;
use std::sync::{Arc, RwLock};

/// Shards per half: with 10 M connections a shard holds about 10 000, so
/// a walk over the table (a listing, a sync dump) holds one shard's lock
/// for well under a millisecond at a time, and a worker inserting into it
/// waits at most that long.
const SHARDS: usize = 1024;

/// The key `conn` is filed under in the half of `dir`.
#[inline]
fn key_of(conn: &Conn, dir: Dir) -> FlowKey {
    match dir {
        Dir::Original => conn.original_key(),
        Dir::Reply => conn.reply_key(),
    }
}

/// One direction's keys.
struct Half {
    dir: Dir,
    shards: Box<[RwLock<HashTable<Arc<Conn>>>]>,
    /// The connections a shard is sized for (its share of the capacity).
    per_shard: usize,
    /// What a shard sized so holds before it must grow or rehash.
    fresh_capacity: usize,
}

impl Half {
    fn new(dir: Dir, capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        let shards: Box<[_]> = (0..SHARDS)
            .map(|_| RwLock::new(HashTable::with_capacity(per_shard)))
            .collect();
        let fresh_capacity = shards[0].read().map_or(per_shard, |t| t.capacity());
        Self {
            dir,
            shards,
            per_shard,
            fresh_capacity,
        }
    }

    /// Whether `shard`, out of room for one more key, is so only because
    /// removed keys left tombstones: it then holds no more than 3/4 of what
    /// a fresh shard takes.
    ///
    /// hashbrown clears tombstones in place only in a table at most half
    /// full and otherwise doubles it; a shard sized for its share is more
    /// than half full at capacity, so the churn of a full table (a flood of
    /// new flows, every UDP flow expiring) would double every shard, one
    /// after the other, and the index's memory with them (+35 MiB in use
    /// at 1M connections, in steps, for nothing). [`ConnTable::file`]
    /// rebuilds such a shard at its size instead. A rebuild reads every
    /// connection of the shard (as hashbrown's own rehash does) and comes
    /// at most every quarter of a fresh shard's capacity in new keys; a
    /// shard fuller than 3/4 is over its share and grows as before.
    fn worn(&self, shard: &HashTable<Arc<Conn>>) -> bool {
        shard.len() == shard.capacity() && shard.len() < self.fresh_capacity * 3 / 4
    }

    /// The shard of a hash: bits the tables' bucket index (low bits) and
    /// control bytes (top 7 bits) do not use.
    #[inline]
    fn shard(&self, h: u64) -> &RwLock<HashTable<Arc<Conn>>> {
        &self.shards[(h >> 32) as usize % SHARDS]
    }
}

pub struct ConnTable {
    client: Half,
    server: Half,
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
    /// An index with room for `capacity` connections in each half.
    pub fn new(capacity: usize) -> Self {
        Self {
            client: Half::new(Dir::Original, capacity),
            server: Half::new(Dir::Reply, capacity),
            hasher: ahash::RandomState::new(),
        }
    }

    #[inline]
    fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    fn half(&self, dir: Dir) -> &Half {
        match dir {
            Dir::Original => &self.client,
            Dir::Reply => &self.server,
        }
    }

    /// The connection under `key`, and the direction `key` stands for.
    #[inline]
    pub fn get(&self, key: &FlowKey) -> Option<(Arc<Conn>, Dir)> {
        let h = self.hash(key);
        [&self.client, &self.server].into_iter().find_map(|half| {
            let shard = half.shard(h).read().unwrap_or_else(|p| p.into_inner());
            shard
                .find(h, |c| key_of(c, half.dir) == *key)
                .map(|c| (c.clone(), half.dir))
        })
    }

    /// Whether a connection is filed under `key` as its `dir` key.
    pub fn holds(&self, key: &FlowKey, dir: Dir) -> bool {
        let h = self.hash(key);
        let half = self.half(dir);
        let shard = half.shard(h).read().unwrap_or_else(|p| p.into_inner());
        shard.find(h, |c| key_of(c, dir) == *key).is_some()
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
        let key = key_of(conn, dir);
        let h = self.hash(&key);
        let half = self.half(dir);
        let mut shard = half.shard(h).write().unwrap_or_else(|p| p.into_inner());
        match shard.find_mut(h, |c| key_of(c, dir) == key) {
            Some(old) if replace => *old = conn.clone(),
            Some(old) => return Inserted::Exists(old.clone()),
            None => {
                // (Sized for the table's capacity, a shard grows only when
                // much fuller than its share, and is rebuilt at its size
                // now and then to clear removed slots: both read its
                // connections.)
                let rehash = |c: &Arc<Conn>| self.hash(&key_of(c, dir));
                if half.worn(&shard) {
                    let mut fresh = HashTable::with_capacity(half.per_shard);
                    for c in shard.drain() {
                        fresh.insert_unique(rehash(&c), c, rehash);
                    }
                    *shard = fresh;
                }
                shard.insert_unique(h, conn.clone(), rehash);
            }
        }
        Inserted::New
    }

    /// Removes `conn`'s `dir` key if it is still `conn`'s and `cond`
    /// holds; true if it did.
    pub fn remove_if(&self, conn: &Arc<Conn>, dir: Dir, cond: impl FnOnce() -> bool) -> bool {
        let key = key_of(conn, dir);
        let h = self.hash(&key);
        let half = self.half(dir);
        let mut shard = half.shard(h).write().unwrap_or_else(|p| p.into_inner());
        match shard.find_entry(h, |c| key_of(c, dir) == key) {
            Ok(e) if Arc::ptr_eq(e.get(), conn) && cond() => {
                e.remove();
                true
            }
            _ => false,
        }
    }

    /// Keys both halves hold before any shard must grow or rehash.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        [&self.client, &self.server]
            .iter()
            .flat_map(|h| h.shards.iter())
            .map(|s| s.read().map_or(0, |t| t.capacity()))
            .sum()
    }

    /// Every connection once.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Conn>)) {
        self.walk(|c| {
            f(c);
            true
        });
    }

    /// Every connection once, until `f` says stop. A shard's connections
    /// are copied out under its lock and `f` runs without it: however slow
    /// `f` is, a worker waits for a shard at most as long as the copy.
    pub fn walk(&self, mut f: impl FnMut(&Arc<Conn>) -> bool) {
        let mut batch = Vec::new();
        for shard in self.client.shards.iter() {
            batch.clear();
            batch.extend(
                shard
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned(),
            );
            for c in &batch {
                if !f(c) {
                    return;
                }
            }
        }
    }
}
