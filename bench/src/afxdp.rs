//! The `afxdp-raw` director kind: the ceiling of lvc's design.
//!
//! It moves frames exactly the way lvc's workers do — the same
//! [`WorkerIo`] (one UMEM shared by the ingress and egress sockets, batched
//! receive, TX kicked only while completions are outstanding, poll() when
//! idle) — but with no load-balancing logic: no parsing beyond fixed
//! offsets, no connection table, no scheduler. Each UDP frame gets a real
//! server by a hash of its source (as `xdp-redirect` does), new MAC
//! addresses, TTL−1 and a recomputed IP header checksum.
//! Whatever lvc loses against this is the price of its own logic.

use crate::agent;
use anyhow::{Context, Result};
use lvc_dataplane::io::xsk::{Frame, IoConfig, WorkerIo};
use lvc_dataplane::pipeline::checksum::checksum;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::Duration;

const BATCH: usize = 64;

/// Rewrites one Ethernet/IPv4/UDP frame toward a real server; false if the
/// frame is not one (dropped).
pub fn rewrite(f: &mut [u8], rips: &[u32], dst_mac: [u8; 6], src_mac: [u8; 6]) -> bool {
    if f.len() < 42 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 || f[23] != 17 || f[22] <= 1 {
        return false;
    }
    let saddr = u32::from_be_bytes([f[26], f[27], f[28], f[29]]);
    let sport = u16::from_be_bytes([f[34], f[35]]) as u32;
    let h = saddr.wrapping_mul(2_654_435_761) ^ sport;
    let i = (h.wrapping_mul(2_654_435_761) >> 16) as usize % rips.len();
    f[30..34].copy_from_slice(&rips[i].to_be_bytes());
    f[22] -= 1;
    f[24..26].copy_from_slice(&[0, 0]);
    let check = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&check.to_be_bytes());
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    true
}

/// `agent afxdp-raw IN OUT RIP-MAC RIP…`: forwards until SIGTERM.
pub fn run(in_dev: &str, out_dev: &str, rip_mac: [u8; 6], rips: &[Ipv4Addr]) -> Result<()> {
    anyhow::ensure!(!rips.is_empty(), "afxdp-raw needs at least one real server");
    let rips: Vec<u32> = rips.iter().map(|&a| u32::from(a)).collect();
    let src_mac = agent::mac(out_dev)?;
    let (_ebpf, mut xsks) = agent::xsk_steering(in_dev, out_dev)?;
    let mut io = WorkerIo::open(
        &[in_dev.to_owned(), out_dev.to_owned()],
        0,
        IoConfig::default(),
    )
    .context("opening the AF_XDP sockets")?;
    xsks.set(0, io.socket_fd(0), 0)
        .context("inserting the socket into the XSKMAP")?;
    let stop = agent::stop_flag()?;
    agent::ready();
    let mut rx: Vec<Frame> = Vec::with_capacity(BATCH);
    let mut out: Vec<Frame> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        let n = io.recv(0, BATCH, &mut rx);
        for mut frame in rx.drain(..) {
            if rewrite(io.bytes_mut(&mut frame), &rips, rip_mac, src_mac) {
                out.push(frame);
            } else {
                io.release(frame);
            }
        }
        io.send(1, &mut out);
        let (_, completed) = io.service();
        if n == 0 && completed == 0 {
            io.wait(Duration::from_millis(if io.tx_pending() { 1 } else { 100 }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_sets_a_valid_ip_header() {
        let mut f = crate::frame(17, 0x0a01_0002, 0x0a09_000a, 10_000, 9, 60);
        let rips = [0x0a02_000b, 0x0a02_000c];
        assert!(rewrite(&mut f, &rips, [2; 6], [4; 6]));
        let dst = u32::from_be_bytes([f[30], f[31], f[32], f[33]]);
        assert!(rips.contains(&dst));
        assert_eq!(f[22], 63);
        assert_eq!((&f[0..6], &f[6..12]), (&[2u8; 6][..], &[4u8; 6][..]));
        assert_eq!(checksum(&f[14..34]), 0);
        // Not IPv4 UDP: left alone.
        let mut tcp = crate::frame(6, 1, 2, 3, 4, 60);
        assert!(!rewrite(&mut tcp, &rips, [2; 6], [4; 6]));
    }
}
