//! Ready-made director topologies on top of [`Lab`].
//!
//! ```text
//! two-armed:  client c0 ── d0 director d1 ── br0 ── rs1, rs2, …
//!             10.1.0.2      10.1.0.1  10.2.0.1       10.2.0.11, .12, …
//!
//! one-armed:  client c0 ── br0 ── d0 director (10.1.0.1 + 10.2.0.1)
//!                           └──── rs1, rs2, … (10.2.0.11, .12, …)
//! ```
//! The VIP (10.9.0.10) is not an address of any host: clients route it via
//! the director. Real servers' default gateway is the director.
//!
//! Every lab is dual-stack: the same layout in IPv6 with fd00:1::/64 on
//! the client side (client ::2, director ::1), fd00:2::/64 on the server
//! side (director ::1, servers ::11, ::12, …) and VIP6 fd00:9::10.

use crate::{Lab, bin};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

pub const VIP: &str = "10.9.0.10";
pub const CLIENT: &str = "10.1.0.2";
pub const DIRECTOR_CLIENT_SIDE: &str = "10.1.0.1";
pub const DIRECTOR_SERVER_SIDE: &str = "10.2.0.1";
pub const SERVER_NET: &str = "10.2.0.0/24";
pub const VIP6: &str = "fd00:9::10";
pub const CLIENT6: &str = "fd00:1::2";
pub const DIRECTOR_CLIENT_SIDE6: &str = "fd00:1::1";
pub const DIRECTOR_SERVER_SIDE6: &str = "fd00:2::1";
pub const SERVER_NET6: &str = "fd00:2::/64";

/// IPv6 address of real server `i` (0-based).
pub fn server_ip6(i: usize) -> String {
    format!("fd00:2::{}", 11 + i)
}

/// Address of real server `i` (0-based).
pub fn server_ip(i: usize) -> String {
    format!("10.2.0.{}", 11 + i)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arms {
    One,
    Two,
}

/// `--offload` for the daemons the labs start: `LVC_TEST_OFFLOAD` (on or
/// off), on by default.
pub fn offload_mode() -> &'static str {
    match std::env::var("LVC_TEST_OFFLOAD").as_deref() {
        Ok("off") => "off",
        _ => "on",
    }
}

/// A director lab: client, director, real servers.
pub struct Topo {
    pub lab: Lab,
    pub arms: Arms,
    pub servers: usize,
    pub queues: u32,
    pub socket: PathBuf,
}

impl Topo {
    /// Builds the namespaces and links (nothing started yet).
    pub fn build(tag: &str, arms: Arms, servers: usize, queues: u32) -> Self {
        let mut lab = Lab::new(tag);
        for ns in ["client", "dir", "sw"] {
            lab.add_ns(ns);
        }
        lab.bridge("sw", "br0");
        match arms {
            Arms::Two => {
                lab.veth(("client", "c0"), ("dir", "d0"), queues);
                lab.veth(("dir", "d1"), ("sw", "p0"), queues);
                lab.attach("sw", "p0", "br0");
                // Offloaded flows leave the director by XDP.
                lab.xdp_pass("client", "c0");
                lab.xdp_pass("sw", "p0");
                lab.ip("dir", &["addr", "add", "10.1.0.1/24", "dev", "d0"]);
                lab.ip("dir", &["addr", "add", "10.2.0.1/24", "dev", "d1"]);
                lab.ip(
                    "dir",
                    &["-6", "addr", "add", "fd00:1::1/64", "dev", "d0", "nodad"],
                );
                lab.ip(
                    "dir",
                    &["-6", "addr", "add", "fd00:2::1/64", "dev", "d1", "nodad"],
                );
            }
            Arms::One => {
                lab.veth(("client", "c0"), ("sw", "pc"), queues);
                lab.veth(("dir", "d0"), ("sw", "p0"), queues);
                lab.attach("sw", "pc", "br0");
                lab.attach("sw", "p0", "br0");
                lab.xdp_pass("sw", "p0");
                lab.ip("dir", &["addr", "add", "10.1.0.1/24", "dev", "d0"]);
                lab.ip("dir", &["addr", "add", "10.2.0.1/24", "dev", "d0"]);
                lab.ip(
                    "dir",
                    &["-6", "addr", "add", "fd00:1::1/64", "dev", "d0", "nodad"],
                );
                lab.ip(
                    "dir",
                    &["-6", "addr", "add", "fd00:2::1/64", "dev", "d0", "nodad"],
                );
            }
        }
        lab.ip("client", &["addr", "add", "10.1.0.2/24", "dev", "c0"]);
        lab.ip(
            "client",
            &["route", "add", "default", "via", DIRECTOR_CLIENT_SIDE],
        );
        lab.ip(
            "client",
            &["-6", "addr", "add", "fd00:1::2/64", "dev", "c0", "nodad"],
        );
        lab.ip(
            "client",
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                DIRECTOR_CLIENT_SIDE6,
            ],
        );
        for i in 0..servers {
            let ns = format!("rs{}", i + 1);
            lab.add_ns(&ns);
            let port = format!("p{}", i + 1);
            lab.veth((&ns, "e0"), ("sw", &port), queues);
            lab.attach("sw", &port, "br0");
            lab.ip(
                &ns,
                &["addr", "add", &format!("{}/24", server_ip(i)), "dev", "e0"],
            );
            lab.ip(
                &ns,
                &["route", "add", "default", "via", DIRECTOR_SERVER_SIDE],
            );
            let a6 = format!("{}/64", server_ip6(i));
            lab.ip(&ns, &["-6", "addr", "add", &a6, "dev", "e0", "nodad"]);
            lab.ip(
                &ns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    DIRECTOR_SERVER_SIDE6,
                ],
            );
        }
        // The director's kernel forwards what lvc does not take (dnat
        // replies, its own traffic); replies sourced from the VIP must not
        // be dropped by reverse-path filtering or by its connection tracking.
        lab.sysctl("dir", "net.ipv4.ip_forward=1");
        lab.sysctl("dir", "net.ipv6.conf.all.forwarding=1");
        lab.sysctl("dir", "net.ipv4.conf.all.rp_filter=0");
        lab.sysctl("dir", "net.ipv4.conf.default.rp_filter=0");
        let notrack = format!(
            "table inet lvc_notrack {{ chain pre {{ type filter hook prerouting priority raw; ip saddr {VIP} notrack; ip6 saddr {VIP6} notrack; }}; }}"
        );
        lab.exec_ok("dir", &["nft", &notrack]);
        let socket = std::env::temp_dir().join(format!("{}.sock", lab.ns("ctl")));
        Topo {
            lab,
            arms,
            servers,
            queues,
            socket,
        }
    }

    /// The director's interfaces lvc serves.
    pub fn director_ifaces(&self) -> Vec<&'static str> {
        match self.arms {
            Arms::One => vec!["d0"],
            Arms::Two => vec!["d0", "d1"],
        }
    }

    /// Starts `lvc-testsrv` on every real server: HTTP on 80 answering its
    /// name (`rs1`, …), TCP and UDP echo on 7.
    pub fn start_servers(&mut self) {
        let srv = bin_testsrv();
        for i in 0..self.servers {
            let ns = format!("rs{}", i + 1);
            self.lab.spawn(
                &ns,
                &format!("srv-{ns}"),
                &[
                    &srv,
                    &ns,
                    "--http",
                    "80",
                    "--tcp-echo",
                    "7",
                    "--udp-echo",
                    "7",
                ],
            );
        }
        // Wait until every server accepts connections.
        for i in 0..self.servers {
            let ns = format!("rs{}", i + 1);
            let ok = self.lab.wait_until(Duration::from_secs(10), || {
                self.lab
                    .exec(&ns, &["curl", "-s", "-m", "1", "http://127.0.0.1/"])
                    .status
                    .success()
            });
            assert!(
                ok,
                "server {ns} did not start: {}",
                self.lab.log(&format!("srv-{ns}"))
            );
        }
    }

    /// Makes real servers rewrite the source of their replies to the VIP
    /// (the paper's "SNAT at real servers", for the `dnat` method). A
    /// stateless nftables rewrite: the nat table's SNAT would only see a
    /// connection's first packet.
    pub fn snat_at_servers(&self) {
        for i in 0..self.servers {
            let ns = format!("rs{}", i + 1);
            let rule = format!(
                "table inet lvc {{ chain post {{ type filter hook postrouting priority 0; ip saddr {} ip daddr != {SERVER_NET} ip saddr set {VIP}; ip6 saddr {} ip6 daddr != {SERVER_NET6} ip6 saddr set {VIP6}; }}; }}",
                server_ip(i),
                server_ip6(i)
            );
            self.lab.exec_ok(&ns, &["nft", &rule]);
        }
    }

    /// Prepares real servers for direct routing (LVS-DR): the VIP on `lo`,
    /// no ARP answers or announcements for it, and a UDP echo bound to the
    /// VIP (a UDP server bound to 0.0.0.0 would answer from its own
    /// address, which the client does not expect).
    pub fn dr_at_servers(&mut self) {
        let srv = bin_testsrv();
        for i in 0..self.servers {
            let ns = format!("rs{}", i + 1);
            self.lab
                .ip(&ns, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
            self.lab.ip(
                &ns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{VIP6}/128"),
                    "dev",
                    "lo",
                    "nodad",
                ],
            );
            self.lab.spawn(
                &ns,
                &format!("udp-vip-{ns}"),
                &[
                    &srv,
                    &ns,
                    "--udp-echo-at",
                    &format!("{VIP}:7"),
                    "--udp-echo-at",
                    &format!("[{VIP6}]:7"),
                ],
            );
            for kv in [
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.e0.arp_ignore=1",
                "net.ipv4.conf.e0.arp_announce=2",
            ] {
                self.lab.sysctl(&ns, kv);
            }
        }
    }

    /// The fullnat local pool addresses used by the labs.
    pub const LOCAL_POOL: &'static str = "10.2.0.100";
    pub const LOCAL_POOL6: &'static str = "fd00:2::100";

    /// Prepares a fullnat lab: the pool address on the director's
    /// server-side interface (so the kernel answers ARP for it), lvc told
    /// about it, and real servers left without any route to clients — only
    /// fullnat can work.
    pub fn fullnat_pool(&self) {
        let dev = if self.arms == Arms::Two { "d1" } else { "d0" };
        self.lab.ip(
            "dir",
            &[
                "addr",
                "add",
                &format!("{}/32", Self::LOCAL_POOL),
                "dev",
                dev,
            ],
        );
        self.lab.ip(
            "dir",
            &[
                "-6",
                "addr",
                "add",
                &format!("{}/128", Self::LOCAL_POOL6),
                "dev",
                dev,
                "nodad",
            ],
        );
        self.ctl_ok(&["set-local-pool", Self::LOCAL_POOL, Self::LOCAL_POOL6]);
        for i in 0..self.servers {
            let ns = format!("rs{}", i + 1);
            self.lab.ip(&ns, &["route", "del", "default"]);
            self.lab.ip(&ns, &["-6", "route", "del", "default"]);
        }
    }

    /// Sets the MTU of every link on the server side (two-armed: the
    /// director's d1, the switch and the real servers), before lvc starts
    /// so its view of the links has it from the first packet.
    pub fn set_server_side_mtu(&self, mtu: u32) {
        let mtu = mtu.to_string();
        let mut links = vec![
            ("dir", "d1".to_owned()),
            ("sw", "p0".into()),
            ("sw", "br0".into()),
        ];
        for i in 0..self.servers {
            links.push(("sw", format!("p{}", i + 1)));
        }
        for (ns, dev) in &links {
            self.lab.ip(ns, &["link", "set", dev, "mtu", &mtu]);
        }
        for i in 0..self.servers {
            self.lab
                .ip(&format!("rs{}", i + 1), &["link", "set", "e0", "mtu", &mtu]);
        }
    }

    /// Starts lvc-dataplane on the director and waits until it answers.
    pub fn start_lvc(&mut self) {
        self.start_lvc_with(&[]);
    }

    /// Same, with extra daemon options.
    pub fn start_lvc_with(&mut self, extra: &[&str]) {
        let dp = bin("lvc-dataplane").to_string_lossy().into_owned();
        let sock = self.socket.to_string_lossy().into_owned();
        let q = self.queues.to_string();
        let mut cmd = vec![dp.as_str(), "--socket", &sock, "--queues", &q];
        for i in self.director_ifaces() {
            cmd.extend(["--iface", i]);
        }
        // The suite runs with XDP offload on and off (LVC_TEST_OFFLOAD).
        let offload = offload_mode();
        if !extra.contains(&"--offload") {
            cmd.extend(["--offload", offload]);
        }
        cmd.extend_from_slice(extra);
        self.lab.spawn("dir", "lvc", &cmd);
        let ok = self.lab.wait_until(Duration::from_secs(20), || {
            self.ctl(&["list"]).status.success()
        });
        assert!(
            ok,
            "lvc-dataplane did not come up:\n{}",
            self.lab.log("lvc")
        );
    }

    /// Runs `lvc-ctl --socket … ARGS` (from the director namespace).
    pub fn ctl(&self, args: &[&str]) -> Output {
        let ctl = bin("lvc-ctl").to_string_lossy().into_owned();
        let sock = self.socket.to_string_lossy().into_owned();
        let mut cmd = vec![ctl.as_str(), "--socket", &sock];
        cmd.extend_from_slice(args);
        self.lab.exec("dir", &cmd)
    }

    /// Runs `lvc-ctl --socket … ARGS` with `stdin` as its standard input.
    pub fn ctl_input(&self, args: &[&str], stdin: &str) -> Output {
        let ctl = bin("lvc-ctl").to_string_lossy().into_owned();
        let sock = self.socket.to_string_lossy().into_owned();
        let mut cmd = vec![ctl.as_str(), "--socket", &sock];
        cmd.extend_from_slice(args);
        self.lab.exec_input("dir", &cmd, stdin.as_bytes())
    }

    /// A named counter of `lvc-ctl status --json` (0 if it has none).
    pub fn counter(&self, name: &str) -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&self.ctl_ok(&["status", "--json"])).expect("status is JSON");
        v["counters"]
            .as_array()
            .expect("counters")
            .iter()
            .find(|c| c[0] == name)
            .and_then(|c| c[1].as_u64())
            .unwrap_or(0)
    }

    /// The process id of the lab's lvc-dataplane.
    pub fn dataplane_pid(&self) -> String {
        let out = Command::new("pgrep")
            .args([
                "-f",
                &format!("lvc-dataplane --socket {}", self.socket.display()),
            ])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("lvc-dataplane's pid")
            .to_owned()
    }

    /// `lvc-ctl …`, panicking if it fails; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "lvc-ctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds `proto` service VIP:port with every real server on `port`.
    pub fn add_service(&self, proto: &str, port: u16, method: &str) {
        let svc = format!("{VIP}:{port}");
        self.ctl_ok(&["add-service", &format!("--{proto}"), &svc]);
        for i in 0..self.servers {
            self.ctl_ok(&[
                "add-server",
                &format!("--{proto}"),
                &svc,
                "--real",
                &server_ip(i),
                "--method",
                method,
            ]);
        }
    }

    /// One HTTP request from the client to `url`; the body, or None.
    pub fn curl(&self, url: &str) -> Option<String> {
        let out = self
            .lab
            .exec("client", &["curl", "-s", "-m", "5", "--retry", "0", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A long-lived TCP connection from the client through the VIP to a TCP
/// echo (socat), one line at a time.
pub struct EchoSession {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl EchoSession {
    /// Sends `line` (with its newline) and returns the line that comes back.
    pub fn echo(&mut self, line: &str) -> String {
        self.send(line);
        self.receive()
    }

    /// Sends `line` without waiting for anything.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        self.input.write_all(line.as_bytes()).expect("send");
    }

    /// The next line that comes back (waits for it).
    pub fn receive(&mut self) -> String {
        use std::io::BufRead;
        let mut back = String::new();
        self.output.read_line(&mut back).expect("receive");
        back
    }
}

impl Drop for EchoSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EchoSession {
    /// Opens a session from namespace `ns` of `lab` to `addr`:`port`.
    pub fn open(lab: &crate::Lab, ns: &str, addr: &str, port: u16) -> Self {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.ns(ns), "socat", "-T", "30", "-"])
            .arg(format!("TCP:{addr}:{port}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("socat");
        let input = child.stdin.take().expect("stdin");
        let output = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        EchoSession {
            child,
            input,
            output,
        }
    }
}

impl Topo {
    /// Opens an [`EchoSession`] to VIP:`port`.
    pub fn echo_session(&self, port: u16) -> EchoSession {
        EchoSession::open(&self.lab, "client", VIP, port)
    }
}

fn bin_testsrv() -> String {
    bin("lvc-testsrv").to_string_lossy().into_owned()
}
