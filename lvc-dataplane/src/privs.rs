//! Privileges. Setting lvc up needs most of root: loading the XDP program
//! and creating its maps (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN for bpffs
//! pins and link takeover), attaching it and reading the kernel's tables
//! (CAP_NET_ADMIN), AF_XDP sockets (CAP_NET_RAW), locked UMEM memory
//! (CAP_IPC_LOCK, CAP_SYS_RESOURCE), the control socket's group
//! (CAP_CHOWN), low ports (CAP_NET_BIND_SERVICE). Running it needs little:
//! the maps, sockets and links are open file descriptors, which need no
//! capability to use. What it keeps:
//!
//! - CAP_NET_ADMIN: asking the kernel to resolve a neighbour (RTM_NEWNEIGH
//!   with NTF_USE), the VIP routes on the announcement device (`--announce-dev`);
//! - CAP_NET_RAW: for exec health checks (`ping`, `arping`), which run with
//!   the daemon's capabilities.
//!
//! [`drop_to_runtime`] runs on the main thread once setup is done and
//! before any other thread starts (capabilities are per thread; threads
//! inherit their creator's): everything else leaves the effective,
//! permitted and inheritable sets and the bounding set, so no thread — nor
//! a program a health check runs — can get it back.

use caps::{CapSet, Capability, CapsHashSet};

/// What lvc-dataplane keeps while it runs.
pub const KEPT: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW];

/// Drops every capability but [`KEPT`] from the calling thread (and so
/// from every thread it starts afterwards). Returns what was dropped.
pub fn drop_to_runtime() -> anyhow::Result<Vec<Capability>> {
    let keep: CapsHashSet = KEPT.into_iter().collect();
    let had = caps::read(None, CapSet::Permitted)?;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which
    // goes with the rest right after. (Without it — a service manager that
    // left it out — the effective and permitted sets are still dropped.)
    for c in caps::read(None, CapSet::Bounding)? {
        if !keep.contains(&c)
            && let Err(e) = caps::drop(None, CapSet::Bounding, c)
        {
            tracing::warn!(capability = %c, error = %e, "cannot drop from the bounding set");
            break;
        }
    }
    caps::clear(None, CapSet::Inheritable)?;
    let kept: CapsHashSet = had.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    let mut dropped: Vec<Capability> = had.difference(&keep).copied().collect();
    dropped.sort_by_key(|c| c.index());
    Ok(dropped)
}
