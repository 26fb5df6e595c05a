//! Scale-out: three active directors behind an upstream router that
//! spreads the VIP's flows by ECMP (multipath route, L4 hash). Each
//! director announces the VIP by BGP (bird2, from lvc's announcement
//! device) and syncs its connections with the others; the service uses
//! Maglev and picks TCP up mid-flow. A director removed from the group and
//! added back moves flows between directors: they keep their real server.
//!
//! ```text
//!  client ── rt (upstream router, bird2, ECMP) ── lan ─┬── d1, d2, d3 (lvc + bird2)
//!  10.1.0.2   10.1.0.1 / 10.3.0.1                      │   10.3.0.11-13
//!                                                      └── rs1, rs2: 10.3.0.21-22
//!                                                          (dr: VIP on lo, gateway rt)
//! ```

use lvc_tests::topo::{EchoSession, VIP};
use lvc_tests::{Lab, bin, privileged};
use std::path::PathBuf;
use std::time::Duration;

const DIRECTORS: usize = 3;

struct Group {
    lab: Lab,
    dir: PathBuf,
}

fn dir_ip(i: usize) -> String {
    format!("10.3.0.{}", 11 + i)
}

fn rs_ip(i: usize) -> String {
    format!("10.3.0.{}", 21 + i)
}

impl Group {
    fn build() -> Self {
        let mut lab = Lab::new("ecmp");
        for ns in ["client", "rt", "sw"] {
            lab.add_ns(ns);
        }
        lab.bridge("sw", "lan");
        lab.veth(("client", "c0"), ("rt", "r1"), 1);
        lab.ip("client", &["addr", "add", "10.1.0.2/24", "dev", "c0"]);
        lab.ip("client", &["route", "add", "default", "via", "10.1.0.1"]);
        lab.ip("rt", &["addr", "add", "10.1.0.1/24", "dev", "r1"]);
        lab.veth(("rt", "r0"), ("sw", "prt"), 1);
        lab.attach("sw", "prt", "lan");
        lab.ip("rt", &["addr", "add", "10.3.0.1/24", "dev", "r0"]);
        for kv in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.fib_multipath_hash_policy=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            lab.sysctl("rt", kv);
        }
        for i in 0..DIRECTORS {
            let ns = format!("d{}", i + 1);
            lab.add_ns(&ns);
            let port = format!("pd{}", i + 1);
            lab.veth((&ns, "e0"), ("sw", &port), 1);
            lab.attach("sw", &port, "lan");
            lab.xdp_pass("sw", &port);
            lab.ip(
                &ns,
                &["addr", "add", &format!("{}/24", dir_ip(i)), "dev", "e0"],
            );
            lab.ip(&ns, &["route", "add", "default", "via", "10.3.0.1"]);
            for kv in [
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ] {
                lab.sysctl(&ns, kv);
            }
        }
        let srv = bin("lvc-testsrv").to_string_lossy().into_owned();
        for i in 0..2 {
            let ns = format!("rs{}", i + 1);
            lab.add_ns(&ns);
            let port = format!("pr{}", i + 1);
            lab.veth((&ns, "e0"), ("sw", &port), 1);
            lab.attach("sw", &port, "lan");
            lab.ip(
                &ns,
                &["addr", "add", &format!("{}/24", rs_ip(i)), "dev", "e0"],
            );
            lab.ip(&ns, &["route", "add", "default", "via", "10.3.0.1"]);
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
        let mut cfg =
            format!("[[service]]\ntcp = \"{VIP}:7\"\nscheduler = \"mh\"\nsloppy = true\n");
        for i in 0..2 {
            cfg.push_str(&format!(
                "\n[[service.server]]\nreal = \"{}\"\nmethod = \"dr\"\n",
                rs_ip(i)
            ));
        }
        std::fs::write(dir.join("lvc.toml"), cfg).unwrap();
        // bird2: dist/bird.conf on the directors, dist/bird-router.conf on
        // the router.
        for i in 0..DIRECTORS {
            let conf = include_str!("../../dist/bird.conf").replace("10.3.0.11", &dir_ip(i));
            std::fs::write(dir.join(format!("bird-d{}.conf", i + 1)), conf).unwrap();
        }
        std::fs::write(
            dir.join("bird-rt.conf"),
            include_str!("../../dist/bird-router.conf"),
        )
        .unwrap();
        let mut g = Self { lab, dir };
        g.start_bird("rt");
        for i in 0..DIRECTORS {
            g.start_bird(&format!("d{}", i + 1));
        }
        g
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn start_bird(&mut self, ns: &str) {
        let (conf, sock, pid) = (
            self.file(&format!("bird-{ns}.conf")),
            self.file(&format!("bird-{ns}.ctl")),
            self.file(&format!("bird-{ns}.pid")),
        );
        self.lab.spawn(
            ns,
            &format!("bird-{ns}"),
            &["bird", "-f", "-c", &conf, "-s", &sock, "-P", &pid],
        );
    }

    fn start_lvc(&mut self, i: usize) {
        let ns = format!("d{}", i + 1);
        let dp = bin("lvc-dataplane").to_string_lossy().into_owned();
        let (sock, cfg) = (self.file(&format!("{ns}.sock")), self.file("lvc.toml"));
        let listen = format!("{}:8848", dir_ip(i));
        let peers: Vec<String> = (0..DIRECTORS)
            .filter(|&j| j != i)
            .map(|j| format!("{}:8848", dir_ip(j)))
            .collect();
        let offload = lvc_tests::topo::offload_mode();
        let mut cmd = vec![
            dp.as_str(),
            "--socket",
            &sock,
            "--iface",
            "e0",
            "--queues",
            "1",
            "--config",
            &cfg,
            "--announce-dev",
            "lvc-vips",
            "--sync-listen",
            &listen,
            "--offload",
            offload,
        ];
        for p in &peers {
            cmd.extend(["--sync-peer", p.as_str()]);
        }
        self.lab.spawn(&ns, &format!("lvc-{ns}"), &cmd);
        let ok = self.lab.wait_until(Duration::from_secs(20), || {
            let ctl = bin("lvc-ctl").to_string_lossy().into_owned();
            self.lab
                .exec(&ns, &[&ctl, "--socket", &sock, "list"])
                .status
                .success()
        });
        assert!(
            ok,
            "lvc on {ns} did not start:\n{}",
            self.lab.log(&format!("lvc-{ns}"))
        );
    }

    /// The router's next hops for the VIP.
    fn next_hops(&self) -> usize {
        let out = self.lab.exec("rt", &["ip", "route", "show", VIP]);
        let text = String::from_utf8_lossy(&out.stdout);
        let multi = text.matches("nexthop via").count();
        if multi > 0 {
            multi
        } else {
            usize::from(text.contains(" via "))
        }
    }

    fn wait_next_hops(&self, n: usize) {
        let ok = self
            .lab
            .wait_until(Duration::from_secs(30), || self.next_hops() == n);
        assert!(
            ok,
            "the router never had {n} next hops for the VIP: {}\n{}",
            String::from_utf8_lossy(&self.lab.exec("rt", &["ip", "route"]).stdout),
            self.lab.log("bird-rt")
        );
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn line(stream: usize, round: usize) -> String {
    let mut s: String = (0..300)
        .map(|i| char::from(b'a' + ((i * 5 + stream * 3 + round * 17) % 26) as u8))
        .collect();
    s.push('\n');
    s
}

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

/// Packets each director forwarded to the service.
fn packets_in(g: &Group) -> Vec<u64> {
    (0..DIRECTORS)
        .map(|i| {
            let ns = format!("d{}", i + 1);
            let ctl = bin("lvc-ctl").to_string_lossy().into_owned();
            let out = g.lab.exec(
                &ns,
                &[
                    &ctl,
                    "--socket",
                    &g.file(&format!("{ns}.sock")),
                    "list",
                    "--json",
                ],
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["services"][0]["stats"]["packets_in"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect()
}

/// Connections each director tracks.
fn conns(g: &Group) -> Vec<usize> {
    (0..DIRECTORS)
        .map(|i| {
            let ns = format!("d{}", i + 1);
            let ctl = bin("lvc-ctl").to_string_lossy().into_owned();
            let out = g.lab.exec(
                &ns,
                &[
                    &ctl,
                    "--socket",
                    &g.file(&format!("{ns}.sock")),
                    "conns",
                    "--json",
                ],
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["conns"].as_array().map_or(0, Vec::len)
        })
        .collect()
}

#[test]
fn flows_keep_their_server_as_directors_leave_and_join() {
    if !privileged("flows_keep_their_server_as_directors_leave_and_join") {
        return;
    }
    let mut g = Group::build();
    for i in 0..DIRECTORS {
        g.start_lvc(i);
    }
    g.wait_next_hops(3);
    let mut streams: Vec<EchoSession> = (0..30)
        .map(|_| EchoSession::open(&g.lab, "client", VIP, 7))
        .collect();
    assert_eq!(round(&mut streams, 0), 30);
    // The router spread them: every director forwarded some.
    let spread = packets_in(&g);
    eprintln!("packets in per director: {spread:?}");
    assert!(spread.iter().all(|&n| n > 0), "{spread:?}");
    // Every director knows every connection (its own, and its peers').
    let ok = g.lab.wait_until(Duration::from_secs(10), || {
        conns(&g).iter().all(|&n| n >= 30)
    });
    assert!(ok, "connections per director: {:?}", conns(&g));

    // d3 leaves (a clean stop): its announcement goes, the router moves
    // its flows (and, hashing anew, some of the others').
    g.lab.stop("lvc-d3", 15);
    g.wait_next_hops(2);
    let survived = round(&mut streams, 1);
    eprintln!("director removed: {survived} of 30 streams survived");
    assert_eq!(survived, 30);

    // d3 joins again: it asks its peers for every connection, announces,
    // and takes flows back.
    g.start_lvc(2);
    g.wait_next_hops(3);
    let survived = round(&mut streams, 2);
    eprintln!("director added: {survived} of 30 streams survived");
    assert_eq!(survived, 30);

    // A VIP whose service has no server left is withdrawn by every
    // director.
    for i in 0..DIRECTORS {
        let ns = format!("d{}", i + 1);
        let ctl = bin("lvc-ctl").to_string_lossy().into_owned();
        let sock = g.file(&format!("{ns}.sock"));
        for s in 0..2 {
            g.lab.exec_ok(
                &ns,
                &[
                    &ctl,
                    "--socket",
                    &sock,
                    "edit-server",
                    "--tcp",
                    &format!("{VIP}:7"),
                    "--real",
                    &rs_ip(s),
                    "--weight",
                    "0",
                ],
            );
        }
    }
    g.wait_next_hops(0);
}
