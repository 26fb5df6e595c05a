//! Steer: load the XDP program, attach it, and keep its maps in step with
//! the configuration.
//!
//! The program is attached through a bpf_link (aya does that when the
//! kernel supports it). With a bpffs directory (`--bpf-dir`), the link is
//! pinned there while the daemon runs: if the process dies without a clean
//! exit (SIGKILL, a crash), the program stays attached with its maps —
//! offloaded flows go on being forwarded, the rest of the served traffic is
//! dropped (the `held` queues) rather than handed to the kernel — and the
//! next process takes the link over, replacing the program atomically
//! (`bpf_link_update`: no moment without one). A clean exit (SIGTERM,
//! SIGINT, an error, a panic) removes the pin and closes the link: the
//! program is detached and never black-holes VIP traffic. Without a bpffs
//! the link lives exactly as long as the process.

use super::flowslots::FlowSlots;
use super::replymap::ReplyMap;
use super::sys::SharedWords;
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{
    Array, DevMap, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuValues, XskMap,
};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{Ebpf, TestRun, TestRunOptions};
use lvc_ebpf::{
    AclData, AddrKey, EndpointKey, FilterConf, FilterCount, FilterOrder, FilterRuleValue, FlowKey,
    FlowValue, PortRanges, ServiceValue, Stat,
};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Driver,
    Skb,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Driver => "driver",
            AttachMode::Skb => "skb",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error(
        "cannot load the XDP program: {0} (lvc-dataplane must run as root, with CAP_BPF and CAP_NET_ADMIN)"
    )]
    Load(String),
    #[error("interface `{0}` does not exist")]
    NoInterface(String),
    #[error("cannot attach XDP to `{iface}`: {reason}")]
    Attach { iface: String, reason: String },
    #[error("XDP map `{map}`: {reason}")]
    Map { map: &'static str, reason: String },
}

/// Whether `dir` is on a bpf filesystem (where links can be pinned).
fn is_bpffs(dir: &Path) -> bool {
    use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
    statfs(dir).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> SteerError {
    move |e| SteerError::Map {
        map,
        reason: e.to_string(),
    }
}

/// Maps a `BPF_F_MMAPABLE` array (`map`, named `name`) into the daemon's
/// memory with `mmap` (the reply and flow tables).
fn mapped<T>(
    map: aya::maps::Map,
    name: &'static str,
    mmap: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<T>,
) -> Result<T, SteerError> {
    let aya::maps::Map::Array(data) = map else {
        return Err(SteerError::Map {
            map: name,
            reason: "not an array".into(),
        });
    };
    mmap(data.fd().as_fd()).map_err(|e| SteerError::Map {
        map: name,
        reason: format!("mmap: {e}"),
    })
}

/// The XDP program's offloaded flows that found no slot in `flowslots`
/// (`flows`), with the word (`flowsused`) that tells XDP whether to look
/// there at all: while the map is empty (as it is unless the slots
/// overflow) a packet of a flow XDP does not forward skips the lookup.
pub struct FlowMap {
    map: BpfHashMap<MapData, FlowKey, FlowValue>,
    used: Array<MapData, u64>,
    /// Flows in `map`.
    len: usize,
}

/// `bpf_map_update_elem` flag: only if the key is not there yet.
const BPF_NOEXIST: u64 = 1;

impl FlowMap {
    /// Puts `key`'s flow in the map, unless a flow holds the key already
    /// (BPF_NOEXIST) or the map is full.
    pub fn insert(&mut self, key: FlowKey, value: FlowValue) -> Result<(), MapError> {
        if self.len == 0 {
            // (Before the flow: XDP must look once it is there.)
            self.used.set(0, 1, 0)?;
        }
        let r = self.map.insert(key, value, BPF_NOEXIST);
        match r {
            Ok(()) => self.len += 1,
            Err(_) if self.len == 0 => {
                let _ = self.used.set(0, 0, 0);
            }
            Err(_) => {}
        }
        r
    }

    /// Takes `key`'s flow out of the map.
    pub fn remove(&mut self, key: &FlowKey) -> Result<(), MapError> {
        self.map.remove(key)?;
        self.len = self.len.saturating_sub(1);
        if self.len == 0 {
            self.used.set(0, 0, 0)?;
        }
        Ok(())
    }

    /// `key`'s flow as XDP keeps it (its counters, its stream position).
    pub fn get(&self, key: &FlowKey) -> Result<FlowValue, MapError> {
        self.map.get(key, 0)
    }
}

type RepliesMap = BpfHashMap<MapData, FlowKey, u32>;

/// The replies of tracked `nat` connections that XDP hands to lvc: a
/// worker adds a connection's reply key before it sends the connection's
/// first packet on; the key goes when the connection does. Keys live in
/// the shared table (`replymap`, no syscall) or, when their window there
/// is full (rare), in the `replies` hash map, shared behind a lock.
#[derive(Clone)]
pub struct Replies {
    table: Arc<ReplyMap>,
    overflow: Arc<Overflow>,
}

/// The `replies` hash map and how many keys it holds.
struct Overflow {
    map: Mutex<RepliesMap>,
    keys: AtomicU64,
}

impl Replies {
    /// Steers the replies `key` to lvc (a key that is there already stays).
    pub fn add(&self, key: FlowKey) -> Result<(), SteerError> {
        if self.table.insert(&key) {
            return Ok(());
        }
        let mut map = self.overflow.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, 0, 0)
            .map_err(map_err(lvc_ebpf::maps::REPLIES))?;
        self.overflow.keys.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Leaves replies `key` to the kernel again (a missing key is no error).
    pub fn remove(&self, key: &FlowKey) {
        if self.table.remove(key) || self.overflow.keys.load(Relaxed) == 0 {
            return;
        }
        let mut map = self.overflow.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.remove(key).is_ok() {
            self.overflow.keys.fetch_sub(1, Relaxed);
        }
    }
}

/// An `acl` trie entry: scope, address (as in [`AclData`]), trie prefix
/// length.
pub type AclEntry = (u32, [u8; 16], u32);

/// The filter's maps (see `lvc_xdp.c`: acl, frules, forder, fconf, fstats,
/// svcdrops) and what `acl` holds.
struct FilterMaps {
    acl: LpmTrie<MapData, AclData, u64>,
    frules: Array<MapData, FilterRuleValue>,
    forder: Array<MapData, FilterOrder>,
    fconf: Array<MapData, FilterConf>,
    fstats: PerCpuArray<MapData, FilterCount>,
    svcdrops: PerCpuArray<MapData, FilterCount>,
    current_acl: HashMap<AclEntry, u64>,
    conf: FilterConf,
}

/// The loaded program and its maps. Dropping it detaches the program.
pub struct Steering {
    ebpf: Ebpf,
    vips: BpfHashMap<MapData, EndpointKey, ServiceValue>,
    /// The shared reply table and its overflow, for the workers and
    /// housekeeping ([`Steering::replies`]).
    replies: Replies,
    snat: BpfHashMap<MapData, AddrKey, u32>,
    fragvips: BpfHashMap<MapData, AddrKey, u32>,
    vipranges: BpfHashMap<MapData, AddrKey, PortRanges>,
    ifslots: BpfHashMap<MapData, u32, u32>,
    xsks: XskMap<MapData>,
    held: Array<MapData, u32>,
    stats: PerCpuArray<MapData, u64>,
    egress: DevMap<MapData>,
    /// The offloaded flows, until the dataplane's offload thread takes them.
    flows: Option<FlowMap>,
    /// The offloaded flows workers install themselves (mapped).
    flow_slots: Arc<FlowSlots>,
    current_vips: HashMap<EndpointKey, ServiceValue>,
    /// The filter's maps.
    filter: FilterMaps,
    current_snat: HashSet<AddrKey>,
    current_fragvips: HashSet<AddrKey>,
    current_vipranges: HashMap<AddrKey, PortRanges>,
    /// Links pinned in bpffs (removed on a clean exit) and our handles on
    /// them.
    pins: Vec<(PathBuf, FdLink)>,
}

impl Drop for Steering {
    fn drop(&mut self) {
        // Every way out but SIGKILL and a crash: the pins go first, then
        // the handles (with the fields), and the program is detached.
        for (path, _) in &self.pins {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a pinned XDP link");
            }
        }
    }
}

/// Slots of the shared flow table for a connection table of `conns`:
/// a quarter as many (a two-way connection takes two), at least 1024, at
/// most 2^18 (136 bytes each: 34 MiB, which the kernel allocates whole).
/// Flows that find no slot go to the `flows` hash map, which grows with
/// what it holds.
pub fn flow_slots_for(conns: u32) -> u32 {
    (conns / 4).clamp(1024, 1 << 18).next_power_of_two()
}

impl Steering {
    /// Loads (but does not attach) the program, with room for 1M
    /// connections.
    pub fn load() -> Result<Self, SteerError> {
        Self::load_for(1 << 20)
    }

    /// Loads the program with room for the flows of `conns` connections:
    /// a `nat` reply key each (in a table of twice as many slots), and
    /// both directions offloaded (see [`flow_slots_for`] for the share
    /// workers install without a syscall).
    pub fn load_for(conns: u32) -> Result<Self, SteerError> {
        let slots = conns
            .max(1024)
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(1 << 31);
        let mask = slots - 1;
        let flow_slots = flow_slots_for(conns);
        let flow_mask = flow_slots - 1;
        let mut ebpf = aya::EbpfLoader::new()
            .map_max_entries(lvc_ebpf::maps::FLOWS, conns.saturating_mul(2))
            .map_max_entries(lvc_ebpf::maps::REPLYSLOTS, slots)
            .map_max_entries(lvc_ebpf::maps::REPLIES, (conns / 4).max(4096))
            .map_max_entries(lvc_ebpf::maps::FLOWSLOTS, flow_slots)
            .map_max_entries(
                lvc_ebpf::maps::FLOWHINTS,
                flow_slots / lvc_ebpf::FLOW_HINT_LINE as u32,
            )
            .override_global(lvc_ebpf::maps::REPLY_MASK, &mask, true)
            .override_global(lvc_ebpf::maps::FLOW_MASK, &flow_mask, true)
            .load(lvc_ebpf::XDP_OBJECT)
            .map_err(|e| SteerError::Load(e.to_string()))?;
        let prog: &mut Xdp = ebpf
            .program_mut(lvc_ebpf::PROGRAM_NAME)
            .ok_or_else(|| SteerError::Load("program missing from object".into()))?
            .try_into()
            .map_err(|e: ProgramError| SteerError::Load(e.to_string()))?;
        prog.load()
            .map_err(|e| SteerError::Load(program_error(&e)))?;
        use lvc_ebpf::maps;
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(SteerError::Map {
                map: name,
                reason: "missing from object".into(),
            })
        };
        let vips = BpfHashMap::try_from(take(maps::VIPS)?).map_err(map_err(maps::VIPS))?;
        let reply_table = mapped(take(maps::REPLYSLOTS)?, maps::REPLYSLOTS, |fd| {
            ReplyMap::map(fd, slots as usize)
        })?;
        let replies = Replies {
            table: Arc::new(reply_table),
            overflow: Arc::new(Overflow {
                map: Mutex::new(
                    BpfHashMap::try_from(take(maps::REPLIES)?).map_err(map_err(maps::REPLIES))?,
                ),
                keys: AtomicU64::new(0),
            }),
        };
        let snat = BpfHashMap::try_from(take(maps::SNAT)?).map_err(map_err(maps::SNAT))?;
        let fragvips =
            BpfHashMap::try_from(take(maps::FRAGVIPS)?).map_err(map_err(maps::FRAGVIPS))?;
        let vipranges =
            BpfHashMap::try_from(take(maps::VIPRANGES)?).map_err(map_err(maps::VIPRANGES))?;
        let ifslots = BpfHashMap::try_from(take(maps::IFSLOTS)?).map_err(map_err(maps::IFSLOTS))?;
        let xsks = XskMap::try_from(take(maps::XSKS)?).map_err(map_err(maps::XSKS))?;
        let held = Array::try_from(take(maps::HELD)?).map_err(map_err(maps::HELD))?;
        let stats = PerCpuArray::try_from(take(maps::STATS)?).map_err(map_err(maps::STATS))?;
        let egress = DevMap::try_from(take(maps::EGRESS)?).map_err(map_err(maps::EGRESS))?;
        let flows = FlowMap {
            map: BpfHashMap::try_from(take(maps::FLOWS)?).map_err(map_err(maps::FLOWS))?,
            used: Array::try_from(take(maps::FLOWSUSED)?).map_err(map_err(maps::FLOWSUSED))?,
            len: 0,
        };
        let hints = mapped(take(maps::FLOWHINTS)?, maps::FLOWHINTS, |fd| {
            SharedWords::map(fd, flow_slots as usize / 8)
        })?;
        let flow_slots = mapped(take(maps::FLOWSLOTS)?, maps::FLOWSLOTS, |fd| {
            FlowSlots::map(fd, hints, flow_slots as usize)
        })?;
        let filter = FilterMaps {
            acl: LpmTrie::try_from(take(maps::ACL)?).map_err(map_err(maps::ACL))?,
            frules: Array::try_from(take(maps::FRULES)?).map_err(map_err(maps::FRULES))?,
            forder: Array::try_from(take(maps::FORDER)?).map_err(map_err(maps::FORDER))?,
            fconf: Array::try_from(take(maps::FCONF)?).map_err(map_err(maps::FCONF))?,
            fstats: PerCpuArray::try_from(take(maps::FSTATS)?).map_err(map_err(maps::FSTATS))?,
            svcdrops: PerCpuArray::try_from(take(maps::SVCDROPS)?)
                .map_err(map_err(maps::SVCDROPS))?,
            current_acl: HashMap::new(),
            conf: FilterConf::default(),
        };
        Ok(Self {
            ebpf,
            vips,
            replies,
            snat,
            fragvips,
            vipranges,
            ifslots,
            xsks,
            held,
            stats,
            egress,
            flows: Some(flows),
            flow_slots: Arc::new(flow_slots),
            current_vips: HashMap::new(),
            filter,
            current_snat: HashSet::new(),
            current_fragvips: HashSet::new(),
            current_vipranges: HashMap::new(),
            pins: Vec::new(),
        })
    }

    fn prog(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(lvc_ebpf::PROGRAM_NAME)
            .expect("loaded in Steering::load")
            .try_into()
            .expect("an XDP program")
    }

    /// Attaches to `iface` in driver mode, falling back to skb (generic)
    /// mode with a warning. With `pins` (a bpffs directory), a link that a
    /// process before this one left pinned for `iface` is taken over (its
    /// program replaced atomically, its mode kept), and a new link is
    /// pinned there.
    pub fn attach(&mut self, iface: &str, pins: Option<&Path>) -> Result<AttachMode, SteerError> {
        // (bpffs refuses names with a dot.)
        let pin = |mode: AttachMode| pins.map(|d| d.join(format!("{iface}-{}", mode.name())));
        for mode in [AttachMode::Driver, AttachMode::Skb] {
            let Some(path) = pin(mode).filter(|p| p.exists()) else {
                continue;
            };
            match self.take_over(&path) {
                Ok(()) => {
                    tracing::info!(iface, path = %path.display(), "took over the pinned XDP link of the previous process");
                    return Ok(mode);
                }
                Err(e) => {
                    // A stale pin (another boot's, or not a link): dropped,
                    // which detaches what it held.
                    tracing::warn!(iface, path = %path.display(), error = %e, "cannot take the pinned XDP link over; removing it");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let prog = self.prog();
        let (mode, id) = match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (AttachMode::Driver, id),
            Err(ProgramError::UnknownInterface { .. }) => {
                return Err(SteerError::NoInterface(iface.to_owned()));
            }
            Err(e) => {
                tracing::warn!(
                    iface,
                    error = %program_error(&e),
                    "driver-mode XDP unavailable, falling back to skb (generic) mode: slower, and 64 KiB GSO frames reach XDP"
                );
                let id = prog
                    .attach(iface, XdpMode::Skb)
                    .map_err(|e| SteerError::Attach {
                        iface: iface.to_owned(),
                        reason: program_error(&e),
                    })?;
                (AttachMode::Skb, id)
            }
        };
        if let Some(path) = pin(mode)
            && let Err(e) = self.pin(id, &path)
        {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot pin the XDP link: if this process dies, its connections' packets reach the kernel until the next one starts"
            );
        }
        Ok(mode)
    }

    /// Leaves the pinned links pinned when this process ends (a restart:
    /// the next process takes them over).
    pub fn keep_pins(&mut self) {
        self.pins.clear();
    }

    /// Replaces the program of the link pinned at `path` with ours.
    fn take_over(&mut self, path: &Path) -> Result<(), String> {
        let link = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
        let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| e.to_string())?;
        let prog = self.prog();
        let id = prog.attach_to_link(link).map_err(|e| program_error(&e))?;
        let ours = prog.take_link(id).map_err(|e| program_error(&e))?;
        let fd = FdLink::try_from(ours).map_err(|e| e.to_string())?;
        self.pins.push((path.to_owned(), fd));
        Ok(())
    }

    /// Pins the link `id` at `path`, in a bpffs directory (made if
    /// missing). Checked first: a link that fails to pin is closed, which
    /// would detach the program.
    fn pin(&mut self, id: aya::programs::xdp::XdpLinkId, path: &Path) -> Result<(), String> {
        let dir = path.parent().ok_or("no directory")?;
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        if !is_bpffs(dir) {
            return Err(format!("{} is not on a bpf filesystem", dir.display()));
        }
        if path.exists() {
            return Err(format!("{} exists", path.display()));
        }
        let prog = self.prog();
        let link = prog.take_link(id).map_err(|e| program_error(&e))?;
        let fd = FdLink::try_from(link).map_err(|e| format!("not a bpf_link: {e}"))?;
        let pinned = fd
            .pin(path)
            .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
        self.pins.push((path.to_owned(), FdLink::from(pinned)));
        Ok(())
    }

    /// Gives interface `ifindex` its slot in the socket map.
    pub fn set_slot(&mut self, ifindex: u32, slot: u32) -> Result<(), SteerError> {
        assert!(slot < lvc_ebpf::MAX_IFACES);
        self.ifslots
            .insert(ifindex, slot, 0)
            .map_err(map_err(lvc_ebpf::maps::IFSLOTS))
    }

    /// Lets XDP redirect offloaded flows to interface `ifindex` by its slot.
    pub fn set_egress(&mut self, slot: u32, ifindex: u32) -> Result<(), SteerError> {
        self.egress
            .set(slot, ifindex, None, 0)
            .map_err(|e| SteerError::Map {
                map: lvc_ebpf::maps::EGRESS,
                reason: e.to_string(),
            })
    }

    /// The replies of tracked `nat` connections (a handle for a worker or
    /// the housekeeping thread).
    pub fn replies(&self) -> Replies {
        self.replies.clone()
    }

    /// The offloaded-flow map, handed over once (to the offload thread).
    pub fn take_flows(&mut self) -> Option<FlowMap> {
        self.flows.take()
    }

    /// The shared offloaded-flow table (for the workers and the offload
    /// thread).
    pub fn flow_slots(&self) -> Arc<FlowSlots> {
        self.flow_slots.clone()
    }

    /// Puts the AF_XDP socket of (interface slot, rx queue) into the
    /// XSKMAP, and marks the queue served.
    pub fn set_socket(&mut self, slot: u32, queue: u32, fd: i32) -> Result<(), SteerError> {
        let i = lvc_ebpf::xsk_index(slot, queue);
        self.xsks
            .set(i, fd, 0)
            .map_err(map_err(lvc_ebpf::maps::XSKS))?;
        self.held
            .set(i, 1, 0)
            .map_err(map_err(lvc_ebpf::maps::HELD))
    }

    /// Makes the `vips` map hold exactly `want`.
    pub fn sync_vips(
        &mut self,
        want: &HashMap<EndpointKey, ServiceValue>,
    ) -> Result<(), SteerError> {
        let name = lvc_ebpf::maps::VIPS;
        // Add and change before remove so a moving entry never leaves a gap.
        for (k, v) in want {
            if self.current_vips.get(k) != Some(v) {
                self.vips.insert(*k, *v, 0).map_err(map_err(name))?;
                self.current_vips.insert(*k, *v);
            }
        }
        let gone: Vec<EndpointKey> = self
            .current_vips
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            self.vips.remove(&k).map_err(map_err(name))?;
            self.current_vips.remove(&k);
        }
        Ok(())
    }

    /// Makes the `acl` trie's entries of the scopes `owns` picks hold
    /// exactly `want` (new and changed entries first, then the gone ones).
    pub fn sync_acl(
        &mut self,
        owns: impl Fn(u32) -> bool,
        want: &HashMap<AclEntry, u64>,
    ) -> Result<(), SteerError> {
        let f = &mut self.filter;
        let name = lvc_ebpf::maps::ACL;
        for (k, v) in want {
            if f.current_acl.get(k) != Some(v) {
                let key = LpmKey::new(
                    k.2,
                    AclData {
                        scope: k.0,
                        addr: k.1,
                    },
                );
                f.acl.insert(&key, *v, 0).map_err(map_err(name))?;
                f.current_acl.insert(*k, *v);
            }
        }
        let gone: Vec<AclEntry> = f
            .current_acl
            .keys()
            .filter(|k| owns(k.0) && !want.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            let key = LpmKey::new(
                k.2,
                AclData {
                    scope: k.0,
                    addr: k.1,
                },
            );
            f.acl.remove(&key).map_err(map_err(name))?;
            f.current_acl.remove(&k);
        }
        Ok(())
    }

    /// Adds `more` to the `acl` trie, or-ing values into entries already
    /// there (the filter's old and new rules, until the order flips).
    pub fn merge_acl(&mut self, more: &HashMap<AclEntry, u64>) -> Result<(), SteerError> {
        let f = &mut self.filter;
        let name = lvc_ebpf::maps::ACL;
        for (k, v) in more {
            let cur = f.current_acl.get(k).copied();
            let want = cur.unwrap_or(0) | v;
            if cur != Some(want) {
                let key = LpmKey::new(
                    k.2,
                    AclData {
                        scope: k.0,
                        addr: k.1,
                    },
                );
                f.acl.insert(&key, want, 0).map_err(map_err(name))?;
                f.current_acl.insert(*k, want);
            }
        }
        Ok(())
    }

    /// The `acl` entries of services' scopes.
    pub fn acl_service_entries(&self) -> Vec<(AclEntry, u64)> {
        self.filter
            .current_acl
            .iter()
            .filter(|(k, _)| k.0 & !lvc_ebpf::ACL_SCOPE_V6 >= lvc_ebpf::ACL_SCOPE_SERVICE)
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Entries in the `acl` trie.
    pub fn acl_entries(&self) -> usize {
        self.filter.current_acl.len()
    }

    /// Writes the rule at `slot` (before an order that uses it).
    pub fn set_rule(&mut self, slot: u32, v: FilterRuleValue) -> Result<(), SteerError> {
        self.filter
            .frules
            .set(slot, v, 0)
            .map_err(map_err(lvc_ebpf::maps::FRULES))
    }

    /// Zeroes a rule slot's counters (before a new rule takes it).
    pub fn zero_rule_stats(&mut self, slot: u32) -> Result<(), SteerError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| SteerError::Map {
            map: lvc_ebpf::maps::FSTATS,
            reason: e.to_string(),
        })?;
        let zero = PerCpuValues::try_from(vec![FilterCount::default(); cpus]).map_err(|e| {
            SteerError::Map {
                map: lvc_ebpf::maps::FSTATS,
                reason: e.to_string(),
            }
        })?;
        self.filter
            .fstats
            .set(slot, zero, 0)
            .map_err(map_err(lvc_ebpf::maps::FSTATS))
    }

    /// What the rule at `slot` matched in XDP, summed over CPUs.
    pub fn rule_stats(&self, slot: u32) -> FilterCount {
        self.filter
            .fstats
            .get(&slot, 0)
            .map(|v| sum_counts(v.iter()))
            .unwrap_or_default()
    }

    /// What service `id` lost to filtering in XDP, summed over CPUs.
    pub fn service_drops(&self, id: u32) -> FilterCount {
        self.filter
            .svcdrops
            .get(&id, 0)
            .map(|v| sum_counts(v.iter()))
            .unwrap_or_default()
    }

    /// Zeroes service `id`'s XDP drop counter (before a new service takes
    /// the id).
    pub fn zero_service_drops(&mut self, id: u32) -> Result<(), SteerError> {
        let name = lvc_ebpf::maps::SVCDROPS;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| SteerError::Map {
            map: name,
            reason: e.to_string(),
        })?;
        let zero = PerCpuValues::try_from(vec![FilterCount::default(); cpus]).map_err(|e| {
            SteerError::Map {
                map: name,
                reason: e.to_string(),
            }
        })?;
        self.filter.svcdrops.set(id, zero, 0).map_err(map_err(name))
    }

    /// Makes `order` the rules the program looks at: written into the copy
    /// not in use, which then becomes the one in use.
    pub fn set_order(&mut self, order: &FilterOrder) -> Result<(), SteerError> {
        let f = &mut self.filter;
        let next = if f.conf.active == 1 { 1 } else { 0 };
        f.forder
            .set(next, *order, 0)
            .map_err(map_err(lvc_ebpf::maps::FORDER))?;
        f.conf.active = if order.n == 0 { 0 } else { next + 1 };
        let conf = f.conf;
        f.fconf
            .set(0, conf, 0)
            .map_err(map_err(lvc_ebpf::maps::FCONF))
    }

    /// Tells the program how many services have allow/deny lists (0: it
    /// skips them altogether).
    pub fn set_acl_services(&mut self, n: u32) -> Result<(), SteerError> {
        let f = &mut self.filter;
        if f.conf.acl_services == n {
            return Ok(());
        }
        f.conf.acl_services = n;
        let conf = f.conf;
        f.fconf
            .set(0, conf, 0)
            .map_err(map_err(lvc_ebpf::maps::FCONF))
    }

    /// Makes the `fragvips` map hold exactly these (VIP, protocol) keys.
    pub fn sync_fragvips(&mut self, want: &HashSet<AddrKey>) -> Result<(), SteerError> {
        sync_keys(
            &mut self.fragvips,
            &mut self.current_fragvips,
            want,
            lvc_ebpf::maps::FRAGVIPS,
        )
    }

    /// Makes the `vipranges` map hold exactly `want`.
    pub fn sync_vipranges(
        &mut self,
        want: &HashMap<AddrKey, PortRanges>,
    ) -> Result<(), SteerError> {
        let name = lvc_ebpf::maps::VIPRANGES;
        for (k, v) in want {
            if self.current_vipranges.get(k) != Some(v) {
                self.vipranges.insert(*k, *v, 0).map_err(map_err(name))?;
                self.current_vipranges.insert(*k, *v);
            }
        }
        let gone: Vec<AddrKey> = self
            .current_vipranges
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            self.vipranges.remove(&k).map_err(map_err(name))?;
            self.current_vipranges.remove(&k);
        }
        Ok(())
    }

    /// Makes the `snat` map hold exactly the fullnat pool's addresses.
    pub fn sync_snat(&mut self, addrs: &[IpAddr]) -> Result<(), SteerError> {
        let want = addrs.iter().map(|&a| AddrKey::new(a)).collect();
        sync_keys(
            &mut self.snat,
            &mut self.current_snat,
            &want,
            lvc_ebpf::maps::SNAT,
        )
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Vec<(Stat, u64)> {
        Stat::ALL
            .iter()
            .map(|&s| {
                let v = self
                    .stats
                    .get(&(s as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (s, v)
            })
            .collect()
    }

    /// Runs the program on one frame with BPF_PROG_TEST_RUN, as if received
    /// on `ifindex` rx queue `queue`; returns the XDP action.
    pub fn test_run(&mut self, frame: &[u8], ifindex: u32, queue: u32) -> Result<u32, SteerError> {
        self.test_run_out(frame, ifindex, queue, None)
            .map(|(r, _)| r)
    }

    /// Like [`test_run`](Self::test_run), also returning the frame as the
    /// program left it (written to `out`; its length is returned).
    pub fn test_run_out(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        queue: u32,
        out: Option<&mut [u8]>,
    ) -> Result<(u32, usize), SteerError> {
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[16..20].copy_from_slice(&queue.to_ne_bytes());
        let ctx_in = if ifindex == 0 { None } else { Some(&ctx[..]) };
        let r = self
            .prog()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: out,
                ctx_in,
                ..Default::default()
            })
            .map_err(|e| SteerError::Load(program_error(&e)))?;
        Ok((r.return_value, r.data_size_out as usize))
    }
}

fn sum_counts<'a>(v: impl Iterator<Item = &'a FilterCount>) -> FilterCount {
    v.fold(FilterCount::default(), |a, c| FilterCount {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    })
}

fn sync_keys(
    map: &mut BpfHashMap<MapData, AddrKey, u32>,
    current: &mut HashSet<AddrKey>,
    want: &HashSet<AddrKey>,
    name: &'static str,
) -> Result<(), SteerError> {
    for k in want.difference(current).copied().collect::<Vec<_>>() {
        map.insert(k, 1u32, 0).map_err(map_err(name))?;
        current.insert(k);
    }
    for k in current.difference(want).copied().collect::<Vec<_>>() {
        map.remove(&k).map_err(map_err(name))?;
        current.remove(&k);
    }
    Ok(())
}

/// A ProgramError with its OS error and verifier log, if any.
fn program_error(e: &ProgramError) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    if let ProgramError::LoadError { verifier_log, .. } = e {
        s.push_str(&format!("\nverifier log:\n{verifier_log}"));
    }
    s
}
