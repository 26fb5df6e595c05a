//! Conntrack: the connection table shared by every worker.
//!
//! A connection ([`Conn`]) is reachable under the flow key of each direction
//! the director sees: the client → VIP key always, and for `nat` and
//! `fullnat` also the real server → client key of its replies (which may
//! arrive on any queue, hence one table for all workers; the index is
//! `conntable`). The [`Conn`] itself is small (≤ 72 bytes, checked at
//! compile time): addresses, ports, state and last-seen time, and its real
//! server, which holds the rest (address, method, counters).
//!
//! Time is passed in (`now`, seconds since the daemon started, read once per
//! batch); nothing here reads a clock.

use super::conntable::{ConnTable, Inserted};
use crate::pipeline::parse::{Addr, FlowKey, Seg};
use crate::pipeline::services::{Server, Template};
use crate::pipeline::snat::SnatPool;
use crate::stats::Drop;
#[cfg(test)]
use crate::stats::TrafficStats;
use crate::wire::{PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crossbeam_queue::{ArrayQueue, SegQueue};
use dashmap::DashMap;
use lvc_proto::Method;
use std::sync::atomic::{
    AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed,
};
use std::sync::{Arc, Weak};

/// Connection states, as IPVS names and moves them (its `tcp_states`
/// table, without LISTEN/SYNACK/LAST_ACK, which its table never enters from
/// another state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    SynRecv = 0,
    Established = 1,
    FinWait = 2,
    Close = 3,
    /// UDP "connections".
    Udp = 4,
    /// Taken out of the table; its gauge was released.
    Removed = 5,
    SynSent = 6,
    TimeWait = 7,
    CloseWait = 8,
}

impl State {
    pub fn from_u8(v: u8) -> State {
        match v {
            0 => State::SynRecv,
            1 => State::Established,
            2 => State::FinWait,
            3 => State::Close,
            4 => State::Udp,
            6 => State::SynSent,
            7 => State::TimeWait,
            8 => State::CloseWait,
            _ => State::Removed,
        }
    }

    /// Counted as ActiveConn (else InActConn), as IPVS does.
    pub fn is_active(self) -> bool {
        self == State::Established
    }

    pub fn name(self) -> &'static str {
        match self {
            State::SynRecv => "SYN_RECV",
            State::SynSent => "SYN_SENT",
            State::Established => "ESTABLISHED",
            State::FinWait => "FIN_WAIT",
            State::TimeWait => "TIME_WAIT",
            State::CloseWait => "CLOSE_WAIT",
            State::Close => "CLOSE",
            State::Udp => "UDP",
            State::Removed => "REMOVED",
        }
    }
}

/// Idle timeouts in seconds (IPVS defaults). `tcpfin` applies to both
/// states a closing connection lingers in, FIN_WAIT and TIME_WAIT (IPVS's
/// `--set tcpfin` moves only FIN_WAIT; TIME_WAIT is also 120 s there).
#[derive(Debug)]
pub struct Timeouts {
    pub tcp: AtomicU32,
    pub tcpfin: AtomicU32,
    pub udp: AtomicU32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp: AtomicU32::new(900),
            tcpfin: AtomicU32::new(120),
            udp: AtomicU32::new(300),
        }
    }
}

impl Timeouts {
    /// Idle timeout of a connection in state `s`.
    pub fn of(&self, s: State) -> u32 {
        match s {
            State::SynRecv | State::CloseWait => 60,
            State::SynSent => 120,
            State::Established => self.tcp.load(Relaxed),
            State::FinWait | State::TimeWait => self.tcpfin.load(Relaxed),
            State::Close | State::Removed => 10,
            State::Udp => self.udp.load(Relaxed),
        }
    }
}

/// Which way a packet travels within its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → VIP.
    Original,
    /// Real server → client.
    Reply,
}

/// One tracked connection.
#[derive(Debug)]
pub struct Conn {
    pub proto: u8,
    pub client: (Addr, u16),
    /// The port the client asked for (the VIP's address is its server's:
    /// see [`Conn::vip`]).
    vip_port: u16,
    /// The real server's port (its address is `server.addr`: see
    /// [`Conn::real`]).
    real_port: u16,
    state: AtomicU8,
    last_seen: AtomicU32,
    /// [`OFFLOADED`] (offered to, or forwarded by, the XDP program's flow
    /// map) and [`STEERED`] (its replies are steered to lvc by XDP: `nat`,
    /// the reply key is in the program's reply table).
    flags: AtomicU8,
    /// When (seconds, modulo 2^16) an offer was last found impossible
    /// (shaped egress, policed service, unresolved next hop): tried again a
    /// second later, not on every packet.
    declined: AtomicU16,
    /// Packets lvc saw, counted up to [`OFFLOAD_AFTER`]: a UDP flow
    /// qualifies for offload with that many, and only a flow that carries
    /// more than a handful of packets is worth the map syscalls of an
    /// offload that finds no free shared slot. Starts over when a new
    /// handshake reuses a closed connection's addresses.
    seen: AtomicU8,
    /// TCP, per direction ([`Dir`] as index): the sequence number after
    /// the last byte its sender sent that lvc (or, offloaded, XDP) saw; 0
    /// while unknown. A RST or FIN changes state only near it.
    seq: [AtomicU32; 2],
    /// The second its pending expiry-wheel entry is due (`u32::MAX`: none):
    /// a connection is filed again only to be looked at earlier, so the
    /// wheel holds about one entry per connection whatever its packets do.
    filed: AtomicU32,
    /// With [`PROXY`]: the sequence number of the client's first byte
    /// (where the PROXY protocol header goes).
    first_byte: AtomicU32,
    /// The real server (its address, method, and its and its service's
    /// counters).
    pub server: Arc<Server>,
    /// The persistence template that chose the server, if any.
    pub template: Option<Arc<Template>>,
    /// fullnat's source address, boxed apart: most connections have none,
    /// and 24 bytes less per connection keep `Conn` in a smaller
    /// allocation size.
    pub snat: Option<Box<Snat>>,
}

// An `Arc<Conn>` (16 bytes of counts + the Conn) must fit a 96-byte
// allocation: the connection table's memory per flow depends on it.
const _: () = assert!(size_of::<Conn>() <= 72);

/// Packets after which a UDP flow is worth a journal record and a sync
/// message (IPVS's default `sync_threshold`: 3).
pub const JOURNAL_UDP_AFTER: u8 = 3;
const _: () = assert!(JOURNAL_UDP_AFTER <= OFFLOAD_AFTER);

/// [`Conn`] flags.
const OFFLOADED: u8 = 1;
const STEERED: u8 = 2;
/// In the connection journal (a restarted dataplane takes it over).
const JOURNALED: u8 = 4;
/// Made from a peer director's sync message.
const SYNCED: u8 = 8;
/// Its server gets a PROXY protocol header (the connection was made from
/// the client's SYN, so its first byte is known).
const PROXY: u8 = 16;

/// The source address a fullnat connection shows the real server.
#[derive(Debug)]
pub struct Snat {
    /// A local pool address and port.
    pub local: (Addr, u16),
    /// The pool it came from, to give it back.
    pub pool: Arc<SnatPool>,
}

impl Conn {
    pub fn new(
        proto: u8,
        client: (Addr, u16),
        vip: (Addr, u16),
        server: Arc<Server>,
        real_port: u16,
        now: u32,
    ) -> Self {
        let state = if proto == PROTO_TCP {
            State::SynRecv
        } else {
            State::Udp
        };
        debug_assert_eq!(
            vip.0, server.vip,
            "a connection's VIP is its server's service's"
        );
        Self {
            proto,
            client,
            vip_port: vip.1,
            real_port,
            state: AtomicU8::new(state as u8),
            last_seen: AtomicU32::new(now),
            flags: AtomicU8::new(0),
            declined: AtomicU16::new(u16::MAX),
            seen: AtomicU8::new(0),
            seq: [AtomicU32::new(0), AtomicU32::new(0)],
            filed: AtomicU32::new(u32::MAX),
            first_byte: AtomicU32::new(0),
            server,
            template: None,
            snat: None,
        }
    }

    /// Gives the server a PROXY protocol header in front of the client's
    /// first byte, `first`.
    pub fn with_proxy(mut self, first: u32) -> Self {
        *self.first_byte.get_mut() = first;
        *self.flags.get_mut() |= PROXY;
        self
    }

    /// A new handshake on the connection's addresses (a closed one's
    /// reused): the client's first byte is after this SYN's.
    pub fn restart_proxy(&self, first: u32) {
        self.first_byte.store(first, Relaxed);
    }

    /// Whether its server gets a PROXY protocol header.
    #[inline]
    pub fn proxied(&self) -> bool {
        self.flags.load(Relaxed) & PROXY != 0
    }

    /// The sequence number of the client's first byte (PROXY connections).
    pub fn first_byte(&self) -> u32 {
        self.first_byte.load(Relaxed)
    }

    /// Source-NATs the connection to `local`, taken from `pool` (fullnat).
    pub fn with_local(mut self, local: (Addr, u16), pool: Arc<SnatPool>) -> Self {
        self.snat = Some(Box::new(Snat { local, pool }));
        self
    }

    /// The forwarding method (the real server's).
    #[inline]
    pub fn method(&self) -> Method {
        self.server.method
    }

    /// The VIP and the port the client asked for. (The address is read
    /// from the shared `Server`, as the real server's is.)
    #[inline]
    pub fn vip(&self) -> (Addr, u16) {
        (self.server.vip, self.vip_port)
    }

    /// The real server's address and port. (The address is read from the
    /// shared `Server`, hot in cache, rather than kept in every `Conn`.)
    #[inline]
    pub fn real(&self) -> (Addr, u16) {
        (self.server.addr, self.real_port)
    }

    /// The source the real server sees: the client's, or for fullnat a
    /// local pool address and port.
    #[inline]
    pub fn local(&self) -> (Addr, u16) {
        self.snat.as_ref().map_or(self.client, |s| s.local)
    }

    /// fullnat: the real server sees a director address.
    #[inline]
    pub fn fullnat(&self) -> bool {
        self.snat.is_some()
    }

    /// Counts a packet of `len` bytes for the service and the server.
    #[inline]
    pub fn count(&self, dir: Dir, len: usize) {
        match dir {
            Dir::Original => {
                self.server.service.count_in(len);
                self.server.stats.count_in(len);
            }
            Dir::Reply => {
                self.server.service.count_out(len);
                self.server.stats.count_out(len);
            }
        }
    }

    /// Counts `packets` packets of `bytes` bytes in all (forwarded by XDP).
    pub fn count_many(&self, dir: Dir, packets: u64, bytes: u64) {
        for st in [&self.server.service, &self.server.stats] {
            match dir {
                Dir::Original => st.add_in(packets, bytes),
                Dir::Reply => st.add_out(packets, bytes),
            }
        }
    }

    /// Refreshes the idle timer for packets lvc did not see itself (XDP
    /// forwarded them); the expiry wheel finds the new time when the old
    /// one comes due.
    pub fn saw(&self, now: u32) {
        self.last_seen.fetch_max(now, Relaxed);
    }

    /// True if the XDP program forwards this connection (or was asked to).
    pub fn offloaded(&self) -> bool {
        self.flags.load(Relaxed) & OFFLOADED != 0
    }

    /// Marks the connection offloaded; false if it already was.
    pub fn claim_offload(&self) -> bool {
        self.flags.fetch_or(OFFLOADED, Relaxed) & OFFLOADED == 0
    }

    /// Back to lvc alone (the flow left the XDP map, or never got in).
    pub fn release_offload(&self) {
        self.flags.fetch_and(!OFFLOADED, Relaxed);
    }

    /// Whether XDP hands this connection's replies to lvc: a `nat`
    /// connection whose reply key is not in the `replies` map yet must not
    /// send a packet on (its replies would reach the client untranslated).
    pub fn needs_reply_steering(&self) -> bool {
        self.method() == Method::Nat && self.flags.load(Relaxed) & STEERED == 0
    }

    /// Notes that the reply key is in the `replies` map.
    pub fn replies_steered(&self) {
        self.flags.fetch_or(STEERED, Relaxed);
    }

    /// Marks the connection as written to the journal; true the first
    /// time.
    pub fn mark_journaled(&self) -> bool {
        self.flags.fetch_or(JOURNALED, Relaxed) & JOURNALED == 0
    }

    /// A connection taken over from a dataplane that stopped: in `state`,
    /// and offered to XDP at its next packet (it has shown it carries
    /// traffic).
    pub fn restored(self, state: State) -> Self {
        self.state.store(state as u8, Relaxed);
        self.seen.store(OFFLOAD_AFTER, Relaxed);
        self
    }

    /// A connection a peer director made (sync), in `state`: not sent on,
    /// and removed by the peer's word while it carries no packet here.
    pub fn from_peer(self, state: State) -> Self {
        self.state.store(state as u8, Relaxed);
        self.flags.fetch_or(SYNCED, Relaxed);
        self
    }

    /// Made from a peer director's sync message.
    pub fn synced(&self) -> bool {
        self.flags.load(Relaxed) & SYNCED != 0
    }

    /// Whether this director has seen a packet of it.
    pub fn carried(&self) -> bool {
        self.seen.load(Relaxed) > 0
    }

    /// Notes that the connection could not be offloaded at `now`.
    pub fn decline_offload(&self, now: u32) {
        self.declined.store(now as u16, Relaxed);
    }

    /// Whether an offer may be tried at `now` (never declined, or not in
    /// this second).
    pub fn offload_due(&self, now: u32) -> bool {
        self.declined.load(Relaxed) != now as u16
    }

    /// Whether the connection qualifies for offload: TCP once
    /// ESTABLISHED (a worker installs it in the shared flow slots without a
    /// syscall, so the packets after the handshake go through XDP), UDP
    /// after [`OFFLOAD_AFTER`] packets (a query and its answer are over
    /// before an offload pays).
    pub fn offload_ready(&self) -> bool {
        // (XDP's rewrite knows nothing of a PROXY header's shift.)
        !self.proxied()
            && if self.proto == PROTO_TCP {
                self.state() == State::Established
            } else {
                self.seen.load(Relaxed) >= OFFLOAD_AFTER
            }
    }

    /// Whether the connection has carried enough to be worth the map
    /// syscalls of an offload (its flows found no free shared slot).
    pub fn offload_worth_syscalls(&self) -> bool {
        self.seen.load(Relaxed) >= OFFLOAD_AFTER
    }

    /// Marks the connection as controlled by a persistence template.
    pub fn with_template(mut self, t: Arc<Template>) -> Self {
        self.template = Some(t);
        self
    }

    /// Key of client → VIP packets.
    pub fn original_key(&self) -> FlowKey {
        FlowKey {
            src: self.client.0,
            dst: self.server.vip,
            sport: self.client.1,
            dport: self.vip_port,
            proto: self.proto,
        }
    }

    /// Key of real server → client packets.
    pub fn reply_key(&self) -> FlowKey {
        FlowKey {
            src: self.server.addr,
            dst: self.local().0,
            sport: self.real_port,
            dport: self.local().1,
            proto: self.proto,
        }
    }

    /// True if replies come back through the director (nat, fullnat).
    pub fn two_way(&self) -> bool {
        matches!(self.method(), Method::Nat | Method::Fullnat)
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Relaxed))
    }

    pub fn last_seen(&self) -> u32 {
        self.last_seen.load(Relaxed)
    }

    /// Records a packet: refreshes the idle timer and advances TCP state.
    /// Returns the new state if the packet moved it, or `Err` for a TCP
    /// segment outside the window lvc tracks (it changes nothing). (Workers
    /// go through [`Conntrack::touch`], which also re-files the expiry.)
    #[inline]
    fn touch(&self, now: u32, dir: Dir, tcp_flags: u8, seg: Seg) -> Result<Option<State>, ()> {
        if self.last_seen.load(Relaxed) != now {
            self.last_seen.store(now, Relaxed);
        }
        // (Written only until the flow qualifies for offload.)
        let s = self.seen.load(Relaxed);
        if s < OFFLOAD_AFTER {
            self.seen.store(s + 1, Relaxed);
        }
        if self.proto != PROTO_TCP {
            return Ok(None);
        }
        self.track(dir, tcp_flags, seg)?;
        let mut cur = self.state.load(Relaxed);
        loop {
            if cur == State::Removed as u8 {
                // Swept while this packet was in flight: its gauge is gone.
                return Ok(None);
            }
            let next = next_state(State::from_u8(cur), tcp_flags, dir, self.two_way());
            if next as u8 == cur {
                return Ok(None);
            }
            // Only the thread whose CAS wins moves the gauges: each
            // transition is counted exactly once.
            match self
                .state
                .compare_exchange_weak(cur, next as u8, Relaxed, Relaxed)
            {
                Ok(_) => {
                    let old = State::from_u8(cur);
                    if old.is_active() != next.is_active() {
                        let st = &self.server.stats;
                        if next.is_active() {
                            st.active.fetch_add(1, Relaxed);
                            st.inactive.fetch_sub(1, Relaxed);
                        } else {
                            st.active.fetch_sub(1, Relaxed);
                            st.inactive.fetch_add(1, Relaxed);
                        }
                    }
                    return Ok(Some(next));
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// TCP window tracking (netfilter's, simplified): follows where each
    /// sender's stream is and refuses a segment too far from it, so that a
    /// blind attacker who knows a connection's addresses and ports cannot
    /// end it with a RST or FIN of a guessed sequence number. A SYN that
    /// starts a handshake (a new connection, or a closed one's addresses
    /// reused) starts the stream over. While XDP forwards the connection
    /// (offloaded), XDP checks the RSTs and FINs it hands to lvc itself
    /// (lvc's own view is behind); the offload thread brings lvc's view up
    /// to date when it reads XDP's counters.
    #[inline]
    fn track(&self, dir: Dir, tcp_flags: u8, seg: Seg) -> Result<(), ()> {
        let side = &self.seq[dir as usize];
        let next = side.load(Relaxed);
        let state = self.state();
        // (A connection whose replies bypass lvc ends in FIN_WAIT: the
        // client's FIN is all lvc sees of the close. A new handshake on its
        // addresses is a new stream there too, as IPVS takes it.)
        let closed = matches!(state, State::TimeWait | State::Close)
            || (state == State::FinWait && !self.two_way());
        if tcp_flags & TCP_SYN != 0 && (closed || matches!(state, State::SynRecv | State::SynSent))
        {
            if closed {
                // A closed connection's addresses reused: a new stream,
                // which must show again that it is worth the map syscalls
                // of an offload that finds no free shared slot (a short
                // connection reusing a busy one's ports would otherwise be
                // put into the `flows` map, and taken out again, for
                // nothing).
                self.seen.store(1, Relaxed);
            }
            side.store(seg.end, Relaxed);
            return Ok(());
        }
        if !in_window(next, seg.seq) && !self.offloaded() {
            return Err(());
        }
        if next == 0 || (seg.end.wrapping_sub(next) as i32) > 0 {
            side.store(seg.end, Relaxed);
        }
        Ok(())
    }

    /// XDP's view of where direction `dir`'s stream is (the offload thread
    /// reads it from the flow map; 0: XDP does not know).
    pub fn saw_seq(&self, dir: Dir, next: u32) {
        let side = &self.seq[dir as usize];
        let cur = side.load(Relaxed);
        if next != 0 && (cur == 0 || (next.wrapping_sub(cur) as i32) > 0) {
            side.store(next, Relaxed);
        }
    }

    /// Where direction `dir`'s stream is, as lvc saw it (0: unknown): what
    /// an offloaded flow's XDP entry starts from.
    pub fn seq_next(&self, dir: Dir) -> u32 {
        self.seq[dir as usize].load(Relaxed)
    }

    fn expired(&self, now: u32, t: &Timeouts) -> bool {
        now >= self.expiry(t)
    }

    /// When it expires if it stays idle.
    fn expiry(&self, t: &Timeouts) -> u32 {
        self.last_seen().saturating_add(t.of(self.state()))
    }

    /// Seconds until this connection expires if it stays idle.
    pub fn expires_in(&self, now: u32, t: &Timeouts) -> u32 {
        (self.last_seen() + t.of(self.state())).saturating_sub(now)
    }
}

/// The TCP state machine: IPVS's `tcp_states` tables. `two_way`
/// connections (nat, fullnat) see both directions (INPUT = client → server,
/// OUTPUT = server → client); the others (dnat, dr, tun) see only the
/// client's packets (IPVS's INPUT-ONLY table). The flag that decides is, in
/// order: RST, SYN, FIN, ACK.
fn next_state(cur: State, flags: u8, dir: Dir, two_way: bool) -> State {
    use State::*;
    let col = match cur {
        Established => 0,
        SynSent => 1,
        SynRecv => 2,
        FinWait => 3,
        TimeWait => 4,
        Close => 5,
        CloseWait => 6,
        Udp | Removed => return cur,
    };
    let row = if flags & TCP_RST != 0 {
        3
    } else if flags & TCP_SYN != 0 {
        0
    } else if flags & TCP_FIN != 0 {
        1
    } else if flags & TCP_ACK != 0 {
        2
    } else {
        return cur;
    };
    //            ES           SS       SR           FW        TW        CL     CW
    const INPUT: [[State; 7]; 4] = [
        [
            Established,
            Established,
            SynRecv,
            SynRecv,
            SynRecv,
            SynRecv,
            SynRecv,
        ], // syn
        [
            CloseWait, SynSent, TimeWait, TimeWait, TimeWait, Close, CloseWait,
        ], // fin
        [
            Established,
            SynSent,
            Established,
            FinWait,
            TimeWait,
            Close,
            CloseWait,
        ], // ack
        [Close, Close, SynRecv, Close, Close, Close, Close], // rst
    ];
    const OUTPUT: [[State; 7]; 4] = [
        [
            Established,
            SynSent,
            SynRecv,
            SynSent,
            SynSent,
            SynSent,
            SynSent,
        ], // syn
        [
            FinWait, SynSent, TimeWait, FinWait, TimeWait, Close, TimeWait,
        ], // fin
        [
            Established,
            SynSent,
            Established,
            FinWait,
            TimeWait,
            Close,
            CloseWait,
        ], // ack
        [Close, SynSent, Close, Close, TimeWait, Close, Close], // rst
    ];
    const INPUT_ONLY: [[State; 7]; 4] = [
        [
            Established,
            Established,
            SynRecv,
            SynRecv,
            SynRecv,
            SynRecv,
            SynRecv,
        ], // syn
        [
            FinWait, SynSent, TimeWait, FinWait, TimeWait, Close, CloseWait,
        ], // fin
        [
            Established,
            SynSent,
            Established,
            FinWait,
            TimeWait,
            Close,
            CloseWait,
        ], // ack
        [Close, Close, SynRecv, Close, Close, Close, Close], // rst
    ];
    let table = match (two_way, dir) {
        (true, Dir::Original) => &INPUT,
        (true, Dir::Reply) => &OUTPUT,
        (false, _) => &INPUT_ONLY,
    };
    table[row][col]
}

/// How far ahead of the last byte lvc saw from a sender a RST or FIN (or
/// any segment) may start and still count: in-flight data the director
/// has not seen yet, reordering. A blind attacker guessing sequence numbers
/// hits this window about once in 4 000 tries per connection (netfilter
/// accepts the receiver's whole window, often larger).
pub const WINDOW_AHEAD: u32 = 1 << 20;
/// How far behind it (retransmissions, a RST quoting an older
/// acknowledgement).
pub const WINDOW_BEHIND: u32 = 1 << 16;

/// Whether `seq` lies in the window around `next`, a sender's next byte as
/// lvc saw it (0: not known yet, anything goes). Mirrored in the XDP
/// program (`seq_in_window`).
#[inline]
pub fn in_window(next: u32, seq: u32) -> bool {
    if next == 0 {
        return true;
    }
    let d = seq.wrapping_sub(next);
    d <= WINDOW_AHEAD || d.wrapping_neg() <= WINDOW_BEHIND
}

/// Packets lvc sees of a UDP flow before it is offloaded to XDP, and of
/// any connection before it is offloaded through the `flows` hash map
/// (when its flows find no free shared slot). That costs the offload
/// thread about five map syscalls (two inserts, and at the end two reads
/// and two deletes); a short connection is over before they pay off.
pub const OFFLOAD_AFTER: u8 = 12;

/// True if a packet with these flags may open a new connection.
#[inline]
pub fn opens_connection(proto: u8, tcp_flags: u8) -> bool {
    proto != PROTO_TCP || tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
}

type Hasher = ahash::RandomState;

/// How long a fragmented datagram's later fragments are expected (as the
/// kernel's ipfrag_time).
const FRAGMENT_TIMEOUT: u32 = 30;
/// Most fragmented datagrams tracked at once.
const MAX_FRAGMENTED_DATAGRAMS: usize = 65536;

/// Where a fragmented datagram's first fragment went.
/// A fragmented datagram: (source, destination, protocol, IP id).
type FragKey = (Addr, Addr, u8, u32);

#[derive(Debug)]
struct FragEntry {
    conn: Arc<Conn>,
    dir: Dir,
    seen: u32,
}

/// Eviction candidates remembered: the newest connections. (A queue as
/// long as the table would cost 16 bytes per tracked flow; a flood's
/// embryonic connections are the newest anyway.)
const EVICTION_CANDIDATES: usize = 1 << 16;

/// Seconds the expiry wheel spans; later expiries go round it again.
const WHEEL_SLOTS: u32 = 1024;

/// Connections by the second they may expire in: the sweep looks only at
/// the connections due now, never at the whole table, so aging costs the
/// same with 10 M connections as with 10. A connection that was used since
/// it was filed is filed again at its new expiry; one whose state change
/// shortens its timeout (FIN, RST) is filed again at once.
///
/// An entry holds its connection's memory (a `Weak`) until the sweep comes
/// to it, also after the connection left the table: under a flood that
/// evicts embryonic connections that would be memory in proportion to the
/// packet rate. So an eviction looks at a few entries of the slot where the
/// evicted connection was filed — the oldest entries of the slot where the
/// connections evicted before it were filed too — and drops those of
/// connections gone; and past twice the table's capacity the sweep
/// compacts every slot. The wheel's memory is bounded by the table's, at a
/// small constant cost per eviction and no pause on the packet path.
struct Wheel {
    slots: Box<[SegQueue<Weak<Conn>>]>,
    /// The next second the sweep will process.
    cursor: AtomicU32,
    /// Entries in the slots.
    entries: AtomicUsize,
    /// Entries past which the sweep compacts every slot.
    limit: usize,
}

impl Wheel {
    fn new(capacity: usize) -> Self {
        Self {
            slots: (0..WHEEL_SLOTS).map(|_| SegQueue::new()).collect(),
            cursor: AtomicU32::new(0),
            entries: AtomicUsize::new(0),
            limit: capacity.saturating_mul(2).max(4096),
        }
    }

    /// Looks at up to `n` of slot `i`'s oldest entries, dropping those of
    /// connections that are gone (no longer in the table nor in flight);
    /// the others go back, to its end.
    fn compact(&self, i: usize, n: usize) {
        for _ in 0..n.min(self.slots[i].len()) {
            let Some(w) = self.pop(i) else { break };
            if w.strong_count() > 0 {
                self.slots[i].push(w);
                self.entries.fetch_add(1, Relaxed);
            }
        }
    }

    fn pop(&self, slot: usize) -> Option<Weak<Conn>> {
        let w = self.slots[slot].pop()?;
        self.entries.fetch_sub(1, Relaxed);
        Some(w)
    }

    /// Files `c` to be looked at in second `due`, unless it already is
    /// to be looked at sooner (the sweep files it again then if it is
    /// still alive).
    fn file(&self, c: &Arc<Conn>, due: u32) {
        // Never behind the sweep, or it would wait a whole turn.
        let due = due.max(self.cursor.load(Relaxed));
        if c.filed.fetch_min(due, Relaxed) > due {
            self.slots[(due % WHEEL_SLOTS) as usize].push(Arc::downgrade(c));
            self.entries.fetch_add(1, Relaxed);
        }
    }
}

/// The connection table.
pub struct Conntrack {
    map: ConnTable,
    conns: AtomicUsize,
    capacity: usize,
    /// The newest connections (at most [`EVICTION_CANDIDATES`]), oldest
    /// first: eviction candidates when the table is full.
    embryonic: ArrayQueue<Weak<Conn>>,
    evicted: AtomicU64,
    /// TCP segments outside the tracked window (they changed nothing).
    out_of_window: AtomicU64,
    /// Fragmented datagrams in flight: (src, dst, proto, IP id) of the
    /// first fragment → its connection, so later fragments follow it.
    frags: DashMap<FragKey, FragEntry, Hasher>,
    /// The datagrams in `frags`, oldest first (with when they were
    /// remembered): when the table is full the oldest goes, so a flood of
    /// spoofed first fragments cannot stop fragment forwarding.
    frag_order: ArrayQueue<(FragKey, u32)>,
    /// Reply keys of removed connections whose replies XDP still steers
    /// to lvc: the housekeeping thread takes them out of the `replies`
    /// map ([`Conntrack::take_released_replies`]).
    released_replies: SegQueue<FlowKey>,
    /// With a journal: connections to write to it (UDP at its third packet, TCP once
    /// established) and original keys of journaled ones removed; the
    /// housekeeping thread takes both ([`Conntrack::take_journal`]).
    journaling: bool,
    journal_new: SegQueue<Weak<Conn>>,
    journal_gone: SegQueue<FlowKey>,
    wheel: Wheel,
    pub timeouts: Timeouts,
}

impl Conntrack {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: ConnTable::new(capacity),
            conns: AtomicUsize::new(0),
            capacity,
            embryonic: ArrayQueue::new(capacity.clamp(1, EVICTION_CANDIDATES)),
            evicted: AtomicU64::new(0),
            out_of_window: AtomicU64::new(0),
            frags: DashMap::with_hasher(Hasher::new()),
            frag_order: ArrayQueue::new(MAX_FRAGMENTED_DATAGRAMS),
            released_replies: SegQueue::new(),
            journaling: false,
            journal_new: SegQueue::new(),
            journal_gone: SegQueue::new(),
            wheel: Wheel::new(capacity),
            timeouts: Timeouts::default(),
        }
    }

    /// Keeps the connection journal's queues filled from now on.
    pub fn with_journal(mut self) -> Self {
        self.journaling = true;
        self
    }

    /// What the journal must learn: connections to write, and original
    /// keys of journaled connections gone (but for keys a live connection
    /// holds again: it has or will get its own record).
    pub fn take_journal(&self) -> (Vec<Arc<Conn>>, Vec<FlowKey>) {
        let mut gone = Vec::with_capacity(self.journal_gone.len());
        while let Some(k) = self.journal_gone.pop() {
            if !self.map.holds(&k, Dir::Original) {
                gone.push(k);
            }
        }
        let mut new = Vec::with_capacity(self.journal_new.len());
        while let Some(w) = self.journal_new.pop() {
            if let Some(c) = w.upgrade()
                && c.state() != State::Removed
            {
                new.push(c);
            }
        }
        (new, gone)
    }

    /// The connection a packet with `key` belongs to, and its direction.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<(Arc<Conn>, Dir)> {
        self.map.get(key)
    }

    /// Inserts a new connection under its key(s). If another worker inserted
    /// the same flow first, that connection is returned instead.
    pub fn insert(&self, conn: Conn) -> Result<Arc<Conn>, Drop> {
        if self.conns.load(Relaxed) >= self.capacity && !self.evict_one(conn.last_seen()) {
            return Err(Drop::TableFull);
        }
        let conn = Arc::new(conn);
        if let Inserted::Exists(other) = self.map.insert_new(&conn, Dir::Original) {
            // Another worker made the same flow first: the fullnat port
            // this one took goes back.
            if let Some(s) = &conn.snat {
                s.pool
                    .free(conn.proto, s.local.0, s.local.1, conn.server.addr);
            }
            return Ok(other);
        }
        if conn.two_way() {
            match self.map.insert_new(&conn, Dir::Reply) {
                Inserted::New => {}
                // A closing connection gives its replies' key up.
                Inserted::Exists(holder)
                    if matches!(
                        holder.state(),
                        State::FinWait
                            | State::TimeWait
                            | State::Close
                            | State::CloseWait
                            | State::Removed
                    ) =>
                {
                    self.map.insert(&conn, Dir::Reply);
                }
                // Another live connection's replies come from the same real
                // server endpoint to the same client endpoint (two VIPs on
                // one server, or a spoofer): they could not be told apart.
                // The first keeps its replies; this one is refused.
                Inserted::Exists(_) => {
                    self.map.remove_if(&conn, Dir::Original, || true);
                    return Err(Drop::ReplyCollision);
                }
            }
        }
        self.conns.fetch_add(1, Relaxed);
        if let Some(t) = &conn.template {
            t.conns.fetch_add(1, Relaxed);
        }
        if conn.state().is_active() {
            // (A restored connection.)
            conn.server.stats.active.fetch_add(1, Relaxed);
        } else {
            conn.server.stats.inactive.fetch_add(1, Relaxed);
        }
        conn.server.stats.conns.fetch_add(1, Relaxed);
        conn.server.service.conns.fetch_add(1, Relaxed);
        // Remember it as an eviction candidate, oldest first; when the
        // queue is full the oldest candidate is forgotten.
        self.embryonic.force_push(Arc::downgrade(&conn));
        self.wheel.file(&conn, conn.expiry(&self.timeouts));
        // (A TCP connection made established: taken over, or picked up
        // mid-flow.)
        if self.journaling && conn.state() == State::Established {
            self.journal_new.push(Arc::downgrade(&conn));
        }
        Ok(conn)
    }

    /// Records a packet of `c`: refreshes its idle timer and advances its
    /// TCP state; a state with a shorter timeout re-files its expiry.
    #[inline]
    pub fn touch(&self, c: &Arc<Conn>, now: u32, dir: Dir, tcp_flags: u8, seg: Seg) {
        // A UDP flow is journaled (and synced) at its JOURNAL_UDP_AFTER-th
        // packet: one-packet flows never cost a record.
        if self.journaling && c.proto != PROTO_TCP && c.seen.load(Relaxed) == JOURNAL_UDP_AFTER - 1
        {
            self.journal_new.push(Arc::downgrade(c));
        }
        match c.touch(now, dir, tcp_flags, seg) {
            Ok(Some(next)) => {
                self.wheel.file(c, c.expiry(&self.timeouts));
                if self.journaling && next == State::Established {
                    self.journal_new.push(Arc::downgrade(c));
                }
            }
            Ok(None) => {}
            Err(()) => {
                self.out_of_window.fetch_add(1, Relaxed);
            }
        }
    }

    /// Makes room in a full table by removing the oldest connection that
    /// never got established (a TCP handshake still in SYN_RECV, or UDP):
    /// a SYN flood must not evict established connections.
    fn evict_one(&self, now: u32) -> bool {
        // Bounded work per new connection.
        for _ in 0..64 {
            let Some(weak) = self.embryonic.pop() else {
                return false;
            };
            let Some(c) = weak.upgrade() else { continue };
            if matches!(c.state(), State::SynRecv | State::Udp)
                && self.map.remove_if(&c, Dir::Original, || true)
            {
                self.release(&c, now);
                self.evicted.fetch_add(1, Relaxed);
                let due = c.filed.load(Relaxed);
                drop(c);
                if due != u32::MAX {
                    self.wheel.compact((due % WHEEL_SLOTS) as usize, 8);
                }
                return true;
            }
        }
        false
    }

    /// Remembers where the first fragment of datagram `id` from `key.src`
    /// to `key.dst` went.
    pub fn remember_fragment(&self, key: &FlowKey, id: u32, conn: &Arc<Conn>, dir: Dir, now: u32) {
        let k = (key.src, key.dst, key.proto, id);
        // Full: the oldest datagram is forgotten (unless its key was
        // remembered again since).
        if let Some((old, when)) = self.frag_order.force_push((k, now)) {
            self.frags.remove_if(&old, |_, e| e.seen == when);
        }
        self.frags.insert(
            k,
            FragEntry {
                conn: conn.clone(),
                dir,
                seen: now,
            },
        );
    }

    /// The connection a later fragment belongs to, if its first fragment
    /// came through (out-of-order fragments that beat it are not known).
    pub fn fragment(&self, key: &FlowKey, id: u32) -> Option<(Arc<Conn>, Dir)> {
        self.frags
            .get(&(key.src, key.dst, key.proto, id))
            .map(|e| (e.conn.clone(), e.dir))
    }

    /// Connections evicted to make room.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Relaxed)
    }

    /// Entries in the expiry wheel (about one per connection, plus those
    /// of connections gone that the sweep or a compaction has not dropped
    /// yet), and reply keys waiting to be taken out of XDP.
    pub fn backlog(&self) -> (usize, usize) {
        (
            self.wheel.entries.load(Relaxed),
            self.released_replies.len(),
        )
    }

    /// TCP segments that fell outside the window lvc tracks (a blind RST
    /// or FIN among them) and changed nothing.
    pub fn out_of_window(&self) -> u64 {
        self.out_of_window.load(Relaxed)
    }

    /// The reply keys of connections removed since the last call that
    /// XDP still steers to lvc, but for keys a new connection holds again
    /// (its worker keeps the key in the map).
    pub fn take_released_replies(&self) -> Vec<FlowKey> {
        let mut out = Vec::with_capacity(self.released_replies.len());
        while let Some(k) = self.released_replies.pop() {
            if !self.map.holds(&k, Dir::Reply) {
                out.push(k);
            }
        }
        out
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.conns.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Removes connections idle past their state's timeout; returns how many.
    /// Each connection's keys and gauge are released exactly once. Looks
    /// only at the connections filed for the seconds since the last sweep.
    pub fn sweep(&self, now: u32) -> usize {
        self.frags
            .retain(|_, e| now.saturating_sub(e.seen) < FRAGMENT_TIMEOUT);
        if self.wheel.entries.load(Relaxed) > self.wheel.limit {
            for i in 0..WHEEL_SLOTS as usize {
                self.wheel.compact(i, usize::MAX);
            }
        }
        let from = self.wheel.cursor.load(Relaxed);
        if now < from {
            return 0;
        }
        // After a long pause every slot is due once.
        let from = from.max(now.saturating_sub(WHEEL_SLOTS - 1));
        self.wheel.cursor.store(now + 1, Relaxed);
        let mut removed = 0;
        for t in from..=now {
            let i = (t % WHEEL_SLOTS) as usize;
            // Only what is there now: re-filed entries wait for their turn.
            for _ in 0..self.wheel.slots[i].len() {
                let Some(c) = self.wheel.pop(i).and_then(|w| w.upgrade()) else {
                    continue;
                };
                // Only its pending entry counts (in this slot: due now,
                // overdue after a pause, or due turns later); entries filed
                // before it was filed sooner are dropped.
                let due = c.filed.load(Relaxed);
                if due == u32::MAX || due % WHEEL_SLOTS != t % WHEEL_SLOTS {
                    continue;
                }
                c.filed.store(u32::MAX, Relaxed);
                if c.state() == State::Removed {
                    continue;
                }
                if !c.expired(now, &self.timeouts) {
                    self.wheel.file(&c, c.expiry(&self.timeouts));
                    continue;
                }
                let gone = self
                    .map
                    .remove_if(&c, Dir::Original, || c.expired(now, &self.timeouts));
                if gone {
                    self.release(&c, now);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Files every connection again at its current expiry: after the
    /// timeouts changed (a shorter one must take effect now). Walks the
    /// whole table once; an operator action, not per-packet work.
    pub fn refile_all(&self) {
        self.map
            .for_each(|c| self.wheel.file(c, c.expiry(&self.timeouts)));
    }

    /// Everything but the original-direction key of a connection that was
    /// just taken out of the map: its reply key, gauges, template, count.
    /// Called exactly once per connection (by whoever removed its key).
    fn release(&self, c: &Arc<Conn>, now: u32) {
        if c.two_way() {
            self.map.remove_if(c, Dir::Reply, || true);
        }
        let flags = c.flags.load(Relaxed);
        if flags & STEERED != 0 {
            self.released_replies.push(c.reply_key());
        }
        if flags & JOURNALED != 0 {
            self.journal_gone.push(c.original_key());
        }
        // An offloaded connection's port is freed by the offload thread
        // when it takes the flow out of XDP (which forwards it until then).
        if let Some(s) = &c.snat
            && !c.offloaded()
        {
            s.pool.free(c.proto, s.local.0, s.local.1, c.server.addr);
        }
        // Take the final state atomically: a worker still holding the
        // connection can no longer move the gauges after this.
        let last = State::from_u8(c.state.swap(State::Removed as u8, Relaxed));
        let st = &c.server.stats;
        if last.is_active() {
            st.active.fetch_sub(1, Relaxed);
        } else {
            st.inactive.fetch_sub(1, Relaxed);
        }
        if let Some(t) = &c.template {
            t.conns.fetch_sub(1, Relaxed);
            t.last_used.store(now, Relaxed);
        }
        self.conns.fetch_sub(1, Relaxed);
    }

    /// Removes connection `c` now (its server was taken out with its
    /// connections); false if it was already gone.
    pub fn remove(&self, c: &Arc<Conn>, now: u32) -> bool {
        let gone = self.map.remove_if(c, Dir::Original, || true);
        if gone {
            self.release(c, now);
        }
        gone
    }

    /// Removes every connection `pick` chooses; returns how many. Walks
    /// the whole table: an operator's (or a health check's) action.
    pub fn remove_where(&self, now: u32, mut pick: impl FnMut(&Conn) -> bool) -> usize {
        let mut doomed = Vec::new();
        self.map.for_each(|c| {
            if pick(c) {
                doomed.push(c.clone());
            }
        });
        doomed.into_iter().filter(|c| self.remove(c, now)).count()
    }

    /// Every connection once (for listings).
    pub fn for_each(&self, mut f: impl FnMut(&Conn)) {
        self.map.for_each(|c| f(c));
    }

    /// Every connection once, until `f` says stop (a listing that has
    /// what it wants).
    pub fn walk(&self, mut f: impl FnMut(&Conn) -> bool) {
        self.map.walk(|c| f(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(method: Method) -> Arc<Server> {
        Arc::new(Server {
            addr: Addr::v4(0x0a00_0101),
            vip: Addr::v4(0x0a00_000a),
            port: 8080,
            weight: 1,
            method,
            stats: Arc::new(TrafficStats::default()),
            service: Arc::default(),
            health: Arc::default(),
            limits: Default::default(),
            proxy: Default::default(),
            class: 0,
        })
    }

    fn conn(proto: u8, s: &Arc<Server>, now: u32) -> Conn {
        Conn::new(
            proto,
            (Addr::v4(0x0a00_0002), 40000),
            (Addr::v4(0x0a00_000a), 80),
            s.clone(),
            s.port,
            now,
        )
    }

    /// A nat connection whose replies XDP steers hands its reply key to
    /// housekeeping when the table lets it go — unless a new connection
    /// holds the same tuple by then (its worker keeps the key). One that was
    /// never steered hands nothing.
    #[test]
    fn released_reply_keys_go_back_unless_taken_again() {
        let ct = Conntrack::new(16);
        let s = server(Method::Nat);
        let steered = ct.insert(conn(17, &s, 0)).unwrap();
        steered.replies_steered();
        let mut other = conn(17, &s, 0);
        other.client.1 = 40001;
        ct.insert(other).unwrap();
        assert_eq!(ct.sweep(1000), 2);
        assert_eq!(ct.take_released_replies(), vec![steered.reply_key()]);
        assert!(ct.take_released_replies().is_empty(), "handed over once");

        // Released, then the same tuple comes back before housekeeping runs.
        let again = ct.insert(conn(17, &s, 1000)).unwrap();
        again.replies_steered();
        assert_eq!(ct.sweep(3000), 1);
        let newer = ct.insert(conn(17, &s, 3000)).unwrap();
        assert_eq!(newer.reply_key(), again.reply_key());
        assert!(
            ct.take_released_replies().is_empty(),
            "a live connection holds the key: it stays steered"
        );
    }

    /// A nat connection is found under both keys, each with its direction,
    /// listed once; a second connection with the same client key finds the
    /// first; removal under the reply key leaves no trace.
    /// A flow made twice (two workers racing): the second's fullnat port
    /// goes back to the pool.
    #[test]
    fn a_duplicate_flow_gives_its_fullnat_port_back() {
        let ct = Conntrack::new(16);
        let s = server(Method::Fullnat);
        let pool = Arc::new(crate::pipeline::snat::SnatPool::new(&["10.2.0.100"
            .parse()
            .unwrap()]));
        let make = || {
            let local = pool.alloc(PROTO_TCP, s.addr).unwrap();
            conn(PROTO_TCP, &s, 0).with_local(local, pool.clone())
        };
        let first = ct.insert(make()).unwrap();
        assert_eq!(pool.in_use(), 1);
        let again = ct.insert(make()).unwrap();
        assert!(Arc::ptr_eq(&again, &first));
        assert_eq!(pool.in_use(), 1, "the second port was freed");
    }

    /// Two VIPs on one nat server: a second connection whose replies
    /// would be the first's is refused; the first keeps its reply path,
    /// and once it closes the key is free again.
    #[test]
    fn a_reply_key_is_not_taken_from_a_live_connection() {
        let ct = Conntrack::new(16);
        let s = server(Method::Nat);
        // The same real server in a service of another VIP.
        let mut s2 = server(Method::Nat);
        Arc::get_mut(&mut s2).unwrap().vip = Addr::v4(0x0a00_000b);
        let other_vip = |now| {
            Conn::new(
                PROTO_TCP,
                (Addr::v4(0x0a00_0002), 40000),
                (Addr::v4(0x0a00_000b), 80),
                s2.clone(),
                s2.port,
                now,
            )
        };
        let first = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
        assert!(matches!(ct.insert(other_vip(0)), Err(Drop::ReplyCollision)));
        let (r, _) = ct.lookup(&first.reply_key()).unwrap();
        assert!(Arc::ptr_eq(&r, &first), "the first keeps its replies");
        assert_eq!(ct.len(), 1);
        let probe = other_vip(0);
        assert!(
            ct.lookup(&probe.original_key()).is_none(),
            "nothing left behind"
        );
        // The first closes: the key may go to a new connection.
        ct.touch(&first, 1, Dir::Original, TCP_FIN, Seg::default());
        let second = ct.insert(other_vip(1)).unwrap();
        let (r, _) = ct.lookup(&second.reply_key()).unwrap();
        assert!(Arc::ptr_eq(&r, &second));
    }

    #[test]
    fn both_keys_one_connection() {
        let ct = Conntrack::new(16);
        let s = server(Method::Nat);
        let c = ct.insert(conn(17, &s, 0)).unwrap();
        let (o, dir) = ct.lookup(&c.original_key()).unwrap();
        assert!(Arc::ptr_eq(&o, &c) && dir == Dir::Original);
        let (r, dir) = ct.lookup(&c.reply_key()).unwrap();
        assert!(Arc::ptr_eq(&r, &c) && dir == Dir::Reply);
        let again = ct.insert(conn(17, &s, 0)).unwrap();
        assert!(
            Arc::ptr_eq(&again, &c),
            "the same flow: the first connection"
        );
        assert_eq!(ct.len(), 1);
        let mut n = 0;
        ct.for_each(|_| n += 1);
        assert_eq!(n, 1, "listed once");
        // A dr connection has no reply key.
        let d = ct
            .insert(Conn::new(
                6,
                (Addr::v4(0x0a00_0003), 40000),
                (Addr::v4(0x0a00_000a), 80),
                server(Method::Dr),
                8080,
                0,
            ))
            .unwrap();
        assert!(ct.lookup(&d.reply_key()).is_none());
        assert_eq!(ct.sweep(1000), 2, "both expire");
        assert!(ct.lookup(&c.original_key()).is_none());
        assert!(ct.lookup(&c.reply_key()).is_none());
        assert!(ct.is_empty());
    }

    #[test]
    fn nat_conn_is_found_from_both_directions() {
        let ct = Conntrack::new(10);
        let s = server(Method::Nat);
        let c = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
        let (_, d) = ct.lookup(&c.original_key()).unwrap();
        assert_eq!(d, Dir::Original);
        let (_, d) = ct.lookup(&c.reply_key()).unwrap();
        assert_eq!(d, Dir::Reply);
        assert_eq!(c.reply_key().src, Addr::v4(0x0a00_0101));
        assert_eq!(c.reply_key().sport, 8080);
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn dnat_conn_has_one_key() {
        let ct = Conntrack::new(10);
        let s = server(Method::Dnat);
        let c = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
        assert!(ct.lookup(&c.reply_key()).is_none());
    }

    #[test]
    fn one_direction_handshake_and_gauges() {
        let ct = Conntrack::new(10);
        let s = server(Method::Dnat);
        let c = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
        assert_eq!((s.stats.active(), s.stats.inactive()), (0, 1));
        ct.touch(&c, 1, Dir::Original, TCP_ACK, Seg::default());
        assert_eq!(c.state(), State::Established);
        assert_eq!((s.stats.active(), s.stats.inactive()), (1, 0));
        ct.touch(&c, 2, Dir::Original, TCP_ACK, Seg::default());
        assert_eq!((s.stats.active(), s.stats.inactive()), (1, 0));
        ct.touch(&c, 3, Dir::Original, TCP_FIN | TCP_ACK, Seg::default());
        assert_eq!(c.state(), State::FinWait);
        assert_eq!((s.stats.active(), s.stats.inactive()), (0, 1));
        ct.touch(&c, 3, Dir::Original, TCP_RST, Seg::default());
        assert_eq!(c.state(), State::Close);
        // Close expires after 10 s, releasing the gauge exactly once.
        assert_eq!(ct.sweep(12), 0);
        assert_eq!(ct.sweep(13), 1);
        assert_eq!(ct.sweep(100), 0);
        assert_eq!((s.stats.active(), s.stats.inactive(), ct.len()), (0, 0, 0));
        assert_eq!(s.stats.conns.load(Relaxed), 1);
    }

    #[test]
    fn a_full_table_evicts_handshakes_not_established_connections() {
        let ct = Conntrack::new(4);
        let s = server(Method::Nat);
        let mk = |port: u16| {
            let mut c = conn(PROTO_TCP, &s, 0);
            c.client.1 = port;
            c
        };
        // Two established connections, then a "SYN flood".
        for p in [1, 2] {
            {
                let c = ct.insert(mk(p)).unwrap();
                ct.touch(&c, 0, Dir::Original, TCP_ACK, Seg::default());
            }
        }
        for p in 100..1000 {
            ct.insert(mk(p)).unwrap();
            assert_eq!(ct.len(), (p as usize - 97).min(4));
        }
        let alive = |p: u16| {
            let mut c = mk(p);
            c.client.1 = p;
            ct.lookup(&c.original_key()).is_some()
        };
        assert!(
            alive(1) && alive(2),
            "established connections survive the flood"
        );
        assert!(alive(999) && alive(998) && !alive(100));
        assert_eq!(ct.evicted(), 900 - 2);
        // Gauges: 2 active, 2 inactive, nothing leaked.
        assert_eq!((s.stats.active(), s.stats.inactive()), (2, 2));
        // Only established connections left and full: a new one is refused.
        let ct = Conntrack::new(1);
        let c = ct.insert(mk(1)).unwrap();
        ct.touch(&c, 0, Dir::Original, TCP_ACK, Seg::default());
        assert_eq!(ct.insert(mk(2)).unwrap_err(), Drop::TableFull);
    }

    #[test]
    fn later_fragments_follow_the_first_until_they_time_out() {
        let ct = Conntrack::new(4);
        let s = server(Method::Dnat);
        let c = ct.insert(conn(PROTO_UDP_FOR_TEST, &s, 0)).unwrap();
        let key = c.original_key();
        let later = FlowKey {
            sport: 0,
            dport: 0,
            ..key
        };
        assert!(
            ct.fragment(&later, 7).is_none(),
            "before the first fragment: unknown"
        );
        ct.remember_fragment(&key, 7, &c, Dir::Original, 0);
        let (found, dir) = ct.fragment(&later, 7).unwrap();
        assert!(Arc::ptr_eq(&found, &c) && dir == Dir::Original);
        assert!(ct.fragment(&later, 8).is_none(), "another datagram");
        ct.sweep(29);
        assert!(ct.fragment(&later, 7).is_some());
        ct.sweep(30);
        assert!(ct.fragment(&later, 7).is_none());
    }

    #[test]
    fn a_flood_of_first_fragments_pushes_out_the_oldest() {
        let ct = Conntrack::new(4);
        let s = server(Method::Dnat);
        let c = ct.insert(conn(PROTO_UDP_FOR_TEST, &s, 0)).unwrap();
        let key = c.original_key();
        let later = FlowKey {
            sport: 0,
            dport: 0,
            ..key
        };
        // A flood fills the table...
        for id in 0..MAX_FRAGMENTED_DATAGRAMS as u32 + 100 {
            ct.remember_fragment(&key, 1_000_000 + id, &c, Dir::Original, 1);
        }
        assert_eq!(ct.frags.len(), MAX_FRAGMENTED_DATAGRAMS);
        // ...and a legitimate datagram's fragments are still followed.
        ct.remember_fragment(&key, 7, &c, Dir::Original, 2);
        assert!(ct.fragment(&later, 7).is_some());
        assert!(ct.fragment(&later, 1_000_000).is_none(), "the oldest went");
        assert_eq!(ct.frags.len(), MAX_FRAGMENTED_DATAGRAMS);
    }

    /// The segment of `len` bytes at `seq` (SYN and FIN count one).
    fn seg(seq: u32, len: u32, flags: u8) -> Seg {
        let extra = u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        Seg {
            seq,
            end: seq.wrapping_add(len + extra),
        }
    }

    /// A blind attacker who knows a connection's addresses and ports but
    /// guesses its sequence numbers cannot end it: a RST or FIN changes
    /// its state only near where its sender's stream is. Both ways for
    /// nat, the client's way for the one-way methods.
    #[test]
    fn blind_rst_and_fin_change_nothing() {
        for method in [Method::Nat, Method::Dnat, Method::Dr] {
            let ct = Conntrack::new(16);
            let s = server(method);
            let c = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
            let isn = 0xffff_f000u32; // (the stream wraps round 2^32)
            let touch = |dir, flags, sg| ct.touch(&c, 1, dir, flags, sg);
            touch(Dir::Original, TCP_SYN, seg(isn, 0, TCP_SYN));
            if method == Method::Nat {
                touch(Dir::Reply, TCP_SYN | TCP_ACK, seg(7_000, 0, TCP_SYN));
            }
            touch(Dir::Original, TCP_ACK, seg(isn.wrapping_add(1), 0, 0));
            touch(Dir::Original, TCP_ACK, seg(isn.wrapping_add(1), 5000, 0));
            assert_eq!(c.state(), State::Established, "{method}");
            let data_end = isn.wrapping_add(5001);
            for (dir, flags, at) in [
                (
                    Dir::Original,
                    TCP_RST,
                    data_end.wrapping_add(WINDOW_AHEAD + 1),
                ),
                (
                    Dir::Original,
                    TCP_RST,
                    data_end.wrapping_sub(WINDOW_BEHIND + 1),
                ),
                (
                    Dir::Original,
                    TCP_FIN | TCP_ACK,
                    data_end.wrapping_add(0x8000_0000),
                ),
                (Dir::Original, TCP_RST | TCP_ACK, 0x4000_0000),
            ] {
                touch(dir, flags, seg(at, 0, flags));
                assert_eq!(
                    c.state(),
                    State::Established,
                    "{method}: {flags:#x} at {at}"
                );
            }
            if method == Method::Nat {
                touch(Dir::Reply, TCP_RST, seg(7_001 + (3 << 20), 0, TCP_RST));
                assert_eq!(c.state(), State::Established, "{method}: the server's side");
            }
            assert_eq!(ct.out_of_window(), 4 + u64::from(method == Method::Nat));
            // Out-of-window data teaches nothing: the real RST still counts.
            touch(
                Dir::Original,
                TCP_ACK,
                seg(data_end.wrapping_add(WINDOW_AHEAD * 3), 100, 0),
            );
            touch(Dir::Original, TCP_RST, seg(data_end, 0, TCP_RST));
            assert_eq!(c.state(), State::Close, "{method}: an in-window RST closes");
            // The addresses reused by a new handshake: a new stream.
            touch(Dir::Original, TCP_SYN, seg(42, 0, TCP_SYN));
            assert_eq!(c.state(), State::SynRecv, "{method}");
            assert_eq!(c.seq_next(Dir::Original), 43);
        }
    }

    #[test]
    fn the_window_follows_the_stream_and_xdp() {
        let ct = Conntrack::new(16);
        let s = server(Method::Nat);
        let c = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
        // Unknown (a connection taken over from a peer): anything goes,
        // and the first segment sets where the stream is.
        ct.touch(&c, 1, Dir::Reply, TCP_ACK, seg(900, 100, 0));
        assert_eq!(c.seq_next(Dir::Reply), 1000);
        // Retransmissions do not move it back.
        ct.touch(&c, 1, Dir::Reply, TCP_ACK, seg(900, 100, 0));
        assert_eq!(c.seq_next(Dir::Reply), 1000);
        // Offloaded: XDP checks, lvc takes what XDP saw.
        assert!(c.claim_offload());
        ct.touch(&c, 1, Dir::Reply, TCP_ACK, seg(1000 + (8 << 20), 10, 0));
        assert_eq!(ct.out_of_window(), 0);
        c.release_offload();
        c.saw_seq(Dir::Reply, 50_000_000);
        c.saw_seq(Dir::Reply, 0);
        assert_eq!(c.seq_next(Dir::Reply), 50_000_000);
        ct.touch(
            &c,
            1,
            Dir::Reply,
            TCP_FIN | TCP_ACK,
            seg(50_000_000, 0, TCP_FIN),
        );
        assert_eq!(c.state(), State::FinWait);
        assert!(in_window(0, 5) && in_window(u32::MAX, 3) && !in_window(1, 1 << 31));
    }

    /// A flood into a full table evicts embryonic connections; the wheel
    /// entries (and memory) they leave are compacted away, so the wheel
    /// stays bounded by the table, not by the packet rate.
    #[test]
    fn a_flood_leaves_the_wheel_bounded() {
        let ct = Conntrack::new(100);
        let s = server(Method::Nat);
        for i in 0..50_000u32 {
            let mut c = conn(PROTO_TCP, &s, 0);
            c.client = (Addr::v4(0x0b00_0000 | i), 40000);
            // (No sweep: the evictions alone keep the wheel small.)
            let _ = ct.insert(c);
        }
        assert!(ct.evicted() > 49_000);
        let entries = ct.wheel.entries.load(Relaxed);
        assert!(entries <= ct.wheel.limit + 1000, "{entries} wheel entries");
        let counted: usize = ct.wheel.slots.iter().map(|s| s.len()).sum();
        assert_eq!(counted, entries);
    }

    /// The churn of a full table (a flood of new flows evicting) leaves
    /// the index its size: hashbrown would double each more-than-half-full
    /// shard to clear the tombstones removals leave (the soak's RSS grew by
    /// a third after its first expiry wave).
    #[test]
    fn churn_leaves_the_index_its_size() {
        let ct = Conntrack::new(1 << 16);
        let s = server(Method::Nat);
        let before = ct.map.capacity();
        // New flows at 1000 a second into a table of 65 536: it fills, and
        // from then on every new flow evicts one — the churn of removals
        // and inserts an expiry wave brings too.
        let mut i = 0u32;
        for now in 0..700 {
            for _ in 0..1000 {
                let mut c = conn(PROTO_UDP_FOR_TEST, &s, now);
                c.client = (Addr::v4(0x0b00_0000 | i), 40000);
                i += 1;
                let _ = ct.insert(c);
            }
            ct.sweep(now);
        }
        assert!(ct.evicted() > 200_000);
        let after = ct.map.capacity();
        assert!(after <= before + before / 20, "{before} -> {after}");
        // And the rebuilt shards lost nothing: every connection is found
        // under both of its keys.
        let mut live = 0;
        ct.for_each(|c| {
            live += 1;
            for k in [c.original_key(), c.reply_key()] {
                let found = ct.lookup(&k).map(|(f, _)| f);
                assert!(found.is_some_and(|f| std::ptr::eq(&*f, c)), "{k:?}");
            }
        });
        assert_eq!(live, ct.len());
    }

    /// However many times a connection changes state, the expiry wheel
    /// holds about one entry for it (it grew by one per change before).
    #[test]
    fn the_wheel_holds_one_entry_per_connection() {
        let ct = Conntrack::new(64);
        let s = server(Method::Nat);
        let conns: Vec<_> = (0..10u16)
            .map(|i| {
                let mut c = conn(PROTO_TCP, &s, 0);
                c.client.1 = 1000 + i;
                ct.insert(c).unwrap()
            })
            .collect();
        for round in 0..500u32 {
            for c in &conns {
                // SYN, handshake, RST, SYN again…: a client cycling states.
                let flags = [TCP_SYN, TCP_ACK, TCP_RST][(round % 3) as usize];
                ct.touch(c, round / 100, Dir::Original, flags, Seg::default());
            }
            ct.sweep(round / 100);
        }
        let entries: usize = ct.wheel.slots.iter().map(|s| s.len()).sum();
        assert!(entries <= 2 * conns.len(), "{entries} wheel entries");
        // And they still expire.
        assert_eq!(ct.sweep(10_000), conns.len());
    }

    #[test]
    fn touch_after_sweep_leaves_gauges_alone() {
        let ct = Conntrack::new(10);
        let s = server(Method::Dnat);
        let c = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
        ct.touch(&c, 0, Dir::Original, TCP_ACK, Seg::default());
        assert_eq!(ct.sweep(10_000), 1);
        ct.touch(&c, 10_000, Dir::Original, TCP_FIN, Seg::default());
        assert_eq!(s.stats.active.load(Relaxed), 0);
        assert_eq!(s.stats.inactive.load(Relaxed), 0);
    }

    #[test]
    fn established_survives_until_timeout_and_refreshes() {
        let ct = Conntrack::new(10);
        let s = server(Method::Nat);
        let c = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
        ct.touch(&c, 0, Dir::Original, TCP_ACK, Seg::default());
        ct.touch(&c, 800, Dir::Reply, TCP_ACK, Seg::default());
        assert_eq!(ct.sweep(1699), 0);
        assert_eq!(ct.sweep(1700), 1);
        assert!(ct.lookup(&c.reply_key()).is_none());
        assert!(ct.is_empty());
    }

    #[test]
    fn capacity_bounds_the_table() {
        // UDP "connections" are never established: the oldest makes room.
        let ct = Conntrack::new(1);
        let s = server(Method::Nat);
        let first = ct.insert(conn(PROTO_UDP_FOR_TEST, &s, 0)).unwrap();
        let mut other = conn(PROTO_UDP_FOR_TEST, &s, 0);
        other.client.1 = 1;
        ct.insert(other).unwrap();
        assert_eq!(ct.len(), 1);
        assert!(ct.lookup(&first.original_key()).is_none());
        assert!(
            ct.lookup(&first.reply_key()).is_none(),
            "evicted nat reply key too"
        );
        assert_eq!(s.stats.inactive(), 1);
    }

    #[test]
    fn ipvs_state_machine_both_directions() {
        let ct = Conntrack::new(10);
        let s = server(Method::Nat);
        let c = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
        let step = |dir, flags, want: State| {
            ct.touch(&c, 1, dir, flags, Seg::default());
            assert_eq!(c.state(), want, "{dir:?} {flags:#x}");
        };
        step(Dir::Reply, TCP_SYN | TCP_ACK, State::SynRecv);
        step(Dir::Original, TCP_ACK, State::Established);
        step(Dir::Original, TCP_FIN | TCP_ACK, State::CloseWait);
        step(Dir::Reply, TCP_FIN | TCP_ACK, State::TimeWait);
        step(Dir::Original, TCP_ACK, State::TimeWait);
        // A new SYN on the same ports starts over.
        step(Dir::Original, TCP_SYN, State::SynRecv);
        step(Dir::Original, TCP_ACK, State::Established);
        // The server closes first.
        step(Dir::Reply, TCP_FIN | TCP_ACK, State::FinWait);
        step(Dir::Reply, TCP_SYN, State::SynSent);
        step(Dir::Original, TCP_RST, State::Close);
        assert_eq!((s.stats.active(), s.stats.inactive()), (0, 1));
        let names: Vec<_> = [
            State::SynSent,
            State::SynRecv,
            State::Established,
            State::FinWait,
            State::CloseWait,
            State::TimeWait,
            State::Close,
        ]
        .iter()
        .map(|s| s.name())
        .collect();
        assert_eq!(
            names.join(" "),
            "SYN_SENT SYN_RECV ESTABLISHED FIN_WAIT CLOSE_WAIT TIME_WAIT CLOSE"
        );
    }

    /// A client that closed a connection through a method whose replies
    /// bypass lvc (dr, tun, dnat: lvc sees its FIN, never the server's, so
    /// the connection stays FIN_WAIT) and opens a new one from the same
    /// port minutes later, its initial sequence number far from the old
    /// stream, is let through: the new handshake starts a new stream, as
    /// IPVS reuses the entry. (Before, the window check refused the SYN
    /// until the FIN_WAIT entry expired.) For nat, which sees both FINs,
    /// the same close ends in TIME_WAIT, which always took a new SYN.
    #[test]
    fn a_new_handshake_reuses_a_closed_one_way_connection() {
        for method in [Method::Dr, Method::Dnat, Method::Tun] {
            let ct = Conntrack::new(16);
            let s = server(method);
            let c = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
            let touch = |flags, sg| ct.touch(&c, 1, Dir::Original, flags, sg);
            touch(TCP_SYN, seg(1_000, 0, TCP_SYN));
            touch(TCP_ACK, seg(1_001, 0, 0));
            touch(TCP_ACK, seg(1_001, 300, 0));
            touch(TCP_FIN | TCP_ACK, seg(1_301, 0, TCP_FIN));
            touch(TCP_ACK, seg(1_302, 0, 0));
            assert_eq!(c.state(), State::FinWait, "{method}");
            let isn = 1_000u32.wrapping_add(3 * WINDOW_AHEAD);
            touch(TCP_SYN, seg(isn, 0, TCP_SYN));
            assert_eq!(c.state(), State::SynRecv, "{method}: the SYN is taken");
            touch(TCP_ACK, seg(isn + 1, 0, 0));
            touch(TCP_ACK, seg(isn + 1, 100, 0));
            assert_eq!(c.state(), State::Established, "{method}");
            assert_eq!(c.seq_next(Dir::Original), isn + 101);
            assert_eq!(ct.out_of_window(), 0, "{method}");
        }
    }

    /// A short connection that reuses the ports of one that carried many
    /// packets must earn its offload itself.
    #[test]
    fn a_reused_tuple_starts_its_offload_count_over() {
        let ct = Conntrack::new(10);
        let s = server(Method::Nat);
        let c = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
        ct.touch(&c, 1, Dir::Original, TCP_SYN, Seg::default());
        ct.touch(&c, 1, Dir::Reply, TCP_SYN | TCP_ACK, Seg::default());
        for _ in 0..OFFLOAD_AFTER {
            ct.touch(&c, 1, Dir::Original, TCP_ACK, Seg::default());
        }
        assert!(c.offload_ready() && c.offload_worth_syscalls());
        ct.touch(&c, 1, Dir::Original, TCP_FIN | TCP_ACK, Seg::default());
        ct.touch(&c, 1, Dir::Reply, TCP_FIN | TCP_ACK, Seg::default());
        ct.touch(&c, 1, Dir::Original, TCP_ACK, Seg::default());
        assert_eq!(c.state(), State::TimeWait);
        ct.touch(&c, 2, Dir::Original, TCP_SYN, Seg::default());
        ct.touch(&c, 2, Dir::Reply, TCP_SYN | TCP_ACK, Seg::default());
        ct.touch(&c, 2, Dir::Original, TCP_ACK, Seg::default());
        assert_eq!(c.state(), State::Established);
        assert!(c.offload_ready(), "established: into a shared slot");
        assert!(!c.offload_worth_syscalls(), "3 packets of a new stream");
        for _ in 3..OFFLOAD_AFTER {
            ct.touch(&c, 2, Dir::Original, TCP_ACK, Seg::default());
        }
        assert!(c.offload_worth_syscalls());
    }

    /// The expiry wheel against a naive model: random connections, random
    /// traffic, a sweep every second; the table always holds exactly the
    /// connections the model says are alive, and each goes exactly once.
    #[test]
    fn wheel_sweep_matches_a_full_scan() {
        let ct = Conntrack::new(100_000);
        ct.timeouts.udp.store(7, Relaxed);
        ct.timeouts.tcpfin.store(3, Relaxed);
        let s = server(Method::Nat);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut live: Vec<Arc<Conn>> = Vec::new();
        let mut port = 0u16;
        let mut removed = 0;
        for now in 0..3000u32 {
            for _ in 0..(next() % 20) {
                port = port.wrapping_add(1);
                let proto = if next() % 2 == 0 {
                    PROTO_TCP
                } else {
                    PROTO_UDP_FOR_TEST
                };
                let mut c = conn(proto, &s, now);
                c.client.1 = port;
                live.push(ct.insert(c).unwrap());
            }
            for c in &live {
                match next() % 50 {
                    0 => ct.touch(c, now, Dir::Original, TCP_ACK, Seg::default()),
                    1 => ct.touch(c, now, Dir::Original, TCP_FIN, Seg::default()),
                    2 if now % 100 == 0 => ct.touch(c, now, Dir::Reply, TCP_RST, Seg::default()),
                    _ => {}
                }
            }
            // (Decided before the sweep: a removed connection's state no
            // longer tells its timeout.)
            live.retain(|c| !c.expired(now, &ct.timeouts));
            removed += ct.sweep(now);
            assert_eq!(ct.len(), live.len(), "second {now}");
            for c in &live {
                assert!(ct.lookup(&c.original_key()).is_some());
            }
        }
        assert_eq!(
            removed as u64 + live.len() as u64,
            s.stats.conns.load(Relaxed)
        );
        // A pause longer than the wheel: everything idle goes at once.
        assert_eq!(ct.sweep(100_000), live.len());
        assert!(ct.is_empty());
        assert_eq!((s.stats.active(), s.stats.inactive()), (0, 0));
    }

    #[test]
    fn shorter_timeouts_apply_to_connections_already_filed() {
        let ct = Conntrack::new(10);
        let s = server(Method::Nat);
        let c = ct.insert(conn(PROTO_TCP, &s, 0)).unwrap();
        ct.touch(&c, 0, Dir::Original, TCP_ACK, Seg::default());
        assert_eq!(ct.sweep(100), 0);
        ct.timeouts.tcp.store(50, Relaxed);
        ct.refile_all();
        assert_eq!(ct.sweep(101), 1, "expired under the new timeout");
    }

    const PROTO_UDP_FOR_TEST: u8 = crate::wire::PROTO_UDP;

    #[test]
    fn only_a_bare_syn_opens_tcp() {
        assert!(opens_connection(PROTO_TCP, TCP_SYN));
        assert!(!opens_connection(PROTO_TCP, TCP_SYN | TCP_ACK));
        assert!(!opens_connection(PROTO_TCP, TCP_ACK));
        assert!(opens_connection(PROTO_UDP_FOR_TEST, 0));
    }
}
