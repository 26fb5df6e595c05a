//! VIP announcement for scale-out behind an upstream router: a host route
//! to each VIP that this director serves, through a TUN device of its own
//! (`--announce-dev lvc-vips`). A routing daemon (bird2 or FRR) exports
//! the routes of that device by BGP; the router spreads the VIPs' flows
//! over the directors that announce them (ECMP).
//!
//! The device lives as long as the process's file descriptor: when the
//! dataplane stops — cleanly, killed or crashed — the kernel removes the
//! device and its routes, and the routing daemon withdraws them. While it
//! runs, a VIP is announced only while every service on it can take new
//! connections (a real server up with a weight, or a sorry server): a
//! director that cannot serve one of a VIP's services does not attract
//! its traffic.

use crate::io::sys::Tun;
use crate::net::route::Netlink;
use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

/// The routes' protocol number (`ip route show proto 252`).
pub const RTPROT_LVC: u8 = 252;

/// The TUN device and the VIPs routed through it.
pub struct Announcer {
    tun: Tun,
    ifindex: u32,
    nl: Netlink,
    current: BTreeSet<IpAddr>,
}

impl Announcer {
    /// Creates device `name` and sets it up, with no route yet.
    pub fn new(name: &str) -> io::Result<Self> {
        let tun = Tun::create(name)?;
        let mut nl = Netlink::new()?;
        let ifindex = nl.link_index(name)?;
        nl.link_up(ifindex)?;
        Ok(Self {
            tun,
            ifindex,
            nl,
            current: BTreeSet::new(),
        })
    }

    pub fn device(&self) -> &str {
        &self.tun.name
    }

    /// The VIPs announced now.
    pub fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.current
    }

    /// Announces exactly `want`.
    pub fn sync(&mut self, want: &BTreeSet<IpAddr>) -> io::Result<()> {
        for gone in self.current.difference(want).copied().collect::<Vec<_>>() {
            match self.nl.host_route(false, gone, self.ifindex, RTPROT_LVC) {
                Ok(()) => {
                    self.current.remove(&gone);
                    tracing::info!(vip = %gone, "VIP withdrawn");
                }
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    self.current.remove(&gone);
                }
                Err(e) => return Err(e),
            }
        }
        for new in want.difference(&self.current).copied().collect::<Vec<_>>() {
            self.nl.host_route(true, new, self.ifindex, RTPROT_LVC)?;
            self.current.insert(new);
            tracing::info!(vip = %new, "VIP announced");
        }
        Ok(())
    }
}
