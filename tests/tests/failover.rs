//! Director failover with keepalived (the paper's heartbeat): two
//! directors run lvc with the same configuration and connection sync;
//! keepalived's VRRP moves the floating addresses (the clients' gateway to
//! the VIP, the nat servers' gateway). Long `nat` and `dr` streams survive
//! the active director's death (links down, processes killed) and its
//! return (failback), and so do streams made while it was away.
//!
//! ```text
//!  client ── brc ──┬── a0 director A a1 ──┬── brs ── rs1, rs2
//!  10.1.0.2        └── b0 director B b1 ──┘          10.2.0.11, .12
//!   gateway 10.1.0.1 (VRRP)   A: 10.1.0.3 / 10.2.0.3     gateway 10.2.0.1
//!                             B: 10.1.0.4 / 10.2.0.4     (VRRP), VIP on lo
//! ```

use lvc_tests::topo::{EchoSession, VIP, server_ip};
use lvc_tests::{Lab, bin, privileged};
use std::path::PathBuf;
use std::time::Duration;

const SYNC_PORT: u16 = 8848;

struct Failover {
    lab: Lab,
    dir: PathBuf,
}

/// Director `d` ("a" or "b"): its addresses' last byte and VRRP priority.
fn director(d: &str) -> (u8, u32) {
    if d == "a" { (3, 150) } else { (4, 100) }
}

impl Failover {
    fn build() -> Self {
        let mut lab = Lab::new("failover");
        for ns in ["client", "sw", "a", "b", "rs1", "rs2"] {
            lab.add_ns(ns);
        }
        lab.bridge("sw", "brc");
        lab.bridge("sw", "brs");
        // VRRP adverts are multicast: no snooping in the way.
        for br in ["brc", "brs"] {
            lab.exec_ok(
                "sw",
                &[
                    "sh",
                    "-c",
                    &format!("echo 0 > /sys/class/net/{br}/bridge/multicast_snooping"),
                ],
            );
        }
        lab.veth(("client", "c0"), ("sw", "pc"), 1);
        lab.attach("sw", "pc", "brc");
        lab.ip("client", &["addr", "add", "10.1.0.2/24", "dev", "c0"]);
        lab.ip("client", &["route", "add", "default", "via", "10.1.0.1"]);
        for d in ["a", "b"] {
            let (n, _) = director(d);
            for (side, br, net) in [("0", "brc", "10.1.0"), ("1", "brs", "10.2.0")] {
                let (dev, port) = (format!("{d}{side}"), format!("p{d}{side}"));
                lab.veth((d, &dev), ("sw", &port), 1);
                lab.attach("sw", &port, br);
                // Offloaded flows leave the directors by XDP.
                lab.xdp_pass("sw", &port);
                lab.ip(d, &["addr", "add", &format!("{net}.{n}/24"), "dev", &dev]);
            }
            for kv in [
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ] {
                lab.sysctl(d, kv);
            }
            lab.exec_ok(
                d,
                &[
                    "nft",
                    &format!(
                        "table inet lvc_notrack {{ chain pre {{ type filter hook prerouting priority raw; ip saddr {VIP} notrack; }}; }}"
                    ),
                ],
            );
        }
        let srv = bin("lvc-testsrv").to_string_lossy().into_owned();
        for i in 0..2 {
            let ns = format!("rs{}", i + 1);
            let port = format!("p{}", i + 1);
            lab.veth((&ns, "e0"), ("sw", &port), 1);
            lab.attach("sw", &port, "brs");
            lab.ip(
                &ns,
                &["addr", "add", &format!("{}/24", server_ip(i)), "dev", "e0"],
            );
            lab.ip(&ns, &["route", "add", "default", "via", "10.2.0.1"]);
            // dr: the VIP on lo, never announced.
            lab.ip(&ns, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
            for kv in [
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
            ] {
                lab.sysctl(&ns, kv);
            }
            lab.spawn(&ns, &format!("srv-{ns}"), &[&srv, &ns, "--tcp-echo", "7"]);
        }
        let dir = std::env::temp_dir().join(lab.ns("files"));
        std::fs::create_dir_all(&dir).unwrap();
        // The same configuration on both: nat on VIP:2007 (to port 7), dr
        // on VIP:7.
        let mut cfg = format!("[[service]]\ntcp = \"{VIP}:2007\"\n");
        for i in 0..2 {
            cfg.push_str(&format!(
                "\n[[service.server]]\nreal = \"{}:7\"\nmethod = \"nat\"\n",
                server_ip(i)
            ));
        }
        cfg.push_str(&format!("\n[[service]]\ntcp = \"{VIP}:7\"\n"));
        for i in 0..2 {
            cfg.push_str(&format!(
                "\n[[service.server]]\nreal = \"{}\"\nmethod = \"dr\"\n",
                server_ip(i)
            ));
        }
        std::fs::write(dir.join("lvc.toml"), cfg).unwrap();
        for d in ["a", "b"] {
            std::fs::write(dir.join(format!("keepalived-{d}.conf")), keepalived_conf(d)).unwrap();
        }
        Self { lab, dir }
    }

    fn socket(&self, d: &str) -> String {
        self.dir
            .join(format!("{d}.sock"))
            .to_string_lossy()
            .into_owned()
    }

    fn start_lvc(&mut self, d: &str) {
        let (n, _) = director(d);
        let peer = if d == "a" { 4 } else { 3 };
        let dp = bin("lvc-dataplane").to_string_lossy().into_owned();
        let (sock, cfg) = (
            self.socket(d),
            self.dir.join("lvc.toml").to_string_lossy().into_owned(),
        );
        let (i0, i1) = (format!("{d}0"), format!("{d}1"));
        let (listen, peer) = (
            format!("10.2.0.{n}:{SYNC_PORT}"),
            format!("10.2.0.{peer}:{SYNC_PORT}"),
        );
        let offload = lvc_tests::topo::offload_mode();
        self.lab.spawn(
            d,
            &format!("lvc-{d}"),
            &[
                &dp,
                "--socket",
                &sock,
                "--iface",
                &i0,
                "--iface",
                &i1,
                "--queues",
                "1",
                "--config",
                &cfg,
                "--sync-listen",
                &listen,
                "--sync-peer",
                &peer,
                "--offload",
                offload,
            ],
        );
        let ok = self
            .lab
            .wait_until(Duration::from_secs(20), || self.ctl(d, &["list"]).is_some());
        assert!(
            ok,
            "lvc on {d} did not start:\n{}",
            self.lab.log(&format!("lvc-{d}"))
        );
    }

    fn start_keepalived(&mut self, d: &str) {
        let conf = self.dir.join(format!("keepalived-{d}.conf"));
        let pid = |what: &str| {
            self.dir
                .join(format!("{d}-{what}.pid"))
                .to_string_lossy()
                .into_owned()
        };
        let (p, v, c) = (pid("keepalived"), pid("vrrp"), pid("checkers"));
        // (A killed keepalived leaves its pid files.)
        for f in [&p, &v, &c] {
            let _ = std::fs::remove_file(f);
        }
        self.lab.spawn(
            d,
            &format!("keepalived-{d}"),
            &[
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--vrrp",
                "-f",
                conf.to_str().unwrap(),
                "-p",
                &p,
                "-r",
                &v,
                "-c",
                &c,
            ],
        );
    }

    fn ctl(&self, d: &str, args: &[&str]) -> Option<String> {
        let ctl = bin("lvc-ctl").to_string_lossy().into_owned();
        let sock = self.socket(d);
        let mut cmd = vec![ctl.as_str(), "--socket", &sock];
        cmd.extend_from_slice(args);
        let out = self.lab.exec(d, &cmd);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether director `d` holds the floating client-side address.
    fn is_master(&self, d: &str) -> bool {
        let out = self
            .lab
            .exec(d, &["ip", "-4", "addr", "show", "dev", &format!("{d}0")]);
        String::from_utf8_lossy(&out.stdout).contains("10.1.0.1/")
    }

    fn wait_master(&self, d: &str) {
        let ok = self
            .lab
            .wait_until(Duration::from_secs(30), || self.is_master(d));
        assert!(
            ok,
            "{d} never became master:\n{}\n{}",
            self.lab.log(&format!("keepalived-{d}")),
            String::from_utf8_lossy(&self.lab.exec(d, &["ip", "addr"]).stdout)
        );
    }

    fn conns(&self, d: &str) -> usize {
        let v: serde_json::Value =
            serde_json::from_str(&self.ctl(d, &["conns", "--json"]).unwrap_or_default())
                .unwrap_or_default();
        v["conns"].as_array().map_or(0, Vec::len)
    }

    fn stream(&self, port: u16) -> EchoSession {
        EchoSession::open(&self.lab, "client", VIP, port)
    }
}

impl Drop for Failover {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// keepalived for director `d`: one sync group with the client-side and
/// the server-side floating addresses (dist/keepalived.conf, with this
/// lab's interfaces and a fast advert).
fn keepalived_conf(d: &str) -> String {
    let (_, prio) = director(d);
    let text = include_str!("../../dist/keepalived.conf");
    text.replace("eth0", &format!("{d}0"))
        .replace("eth1", &format!("{d}1"))
        .replace("priority 150", &format!("priority {prio}"))
        .replace("192.0.2.1/24", "10.1.0.1/24")
}

fn line(stream: usize, round: usize) -> String {
    let mut s: String = (0..400)
        .map(|i| char::from(b'a' + ((i * 11 + stream * 7 + round * 3) % 26) as u8))
        .collect();
    s.push('\n');
    s
}

/// Echoes a round on every stream; the streams that answered right.
fn round(streams: &mut [EchoSession], r: usize) -> usize {
    let mut ok = 0;
    for (i, s) in streams.iter_mut().enumerate() {
        let l = line(i, r);
        if s.echo(&l) == l {
            ok += 1;
        }
    }
    ok
}

#[test]
fn streams_survive_failover_and_failback() {
    if !privileged("streams_survive_failover_and_failback") {
        return;
    }
    let mut f = Failover::build();
    for d in ["a", "b"] {
        f.start_lvc(d);
    }
    for d in ["a", "b"] {
        f.start_keepalived(d);
    }
    f.wait_master("a");
    assert!(!f.is_master("b"));
    // 10 nat and 10 dr streams through A.
    let mut streams: Vec<EchoSession> = (0..10)
        .map(|_| f.stream(2007))
        .chain((0..10).map(|_| f.stream(7)))
        .collect();
    assert_eq!(round(&mut streams, 0), 20);
    // They reach B by sync.
    let synced = f
        .lab
        .wait_until(Duration::from_secs(10), || f.conns("b") >= 20);
    assert!(
        synced,
        "B has {} connections:\n{}",
        f.conns("b"),
        f.ctl("b", &["status"]).unwrap_or_default()
    );

    // A dies: processes killed, links down.
    f.lab.stop("keepalived-a", 9);
    f.lab.stop("lvc-a", 9);
    for dev in ["a0", "a1"] {
        f.lab.ip("a", &["link", "set", dev, "down"]);
    }
    f.wait_master("b");
    let survived = round(&mut streams, 1);
    eprintln!("failover: {survived} of 20 streams survived");
    assert_eq!(survived, 20, "failover");
    // Streams made while A is away.
    let mut more: Vec<EchoSession> = (0..2)
        .map(|_| f.stream(2007))
        .chain((0..2).map(|_| f.stream(7)))
        .collect();
    assert_eq!(round(&mut more, 0), 4);

    // A comes back (lvc first: it asks B for everything), takes the
    // addresses back (higher priority), and every stream goes on.
    for dev in ["a0", "a1"] {
        f.lab.ip("a", &["link", "set", dev, "up"]);
    }
    f.start_lvc("a");
    let back = f
        .lab
        .wait_until(Duration::from_secs(10), || f.conns("a") >= 24);
    assert!(back, "A has {} connections after it asked B", f.conns("a"));
    f.start_keepalived("a");
    f.wait_master("a");
    let ok = f
        .lab
        .wait_until(Duration::from_secs(10), || !f.is_master("b"));
    assert!(ok, "B kept the addresses");
    streams.append(&mut more);
    let survived = round(&mut streams, 2);
    eprintln!("failback: {survived} of 24 streams survived");
    assert_eq!(survived, 24, "failback");
}
