//! The harness's topology, built fresh for every run and torn down on drop
//! (namespaces from [`lvc_tests::Lab`]).
//!
//! ```text
//!  gen ─── lvbg0 ══ lvbd0 ─── dir ─── lvbd1 ══ lvbs0 ─── srv
//!  10.1.0.2/16      10.1.0.1/16       10.2.0.1/24        10.2.0.2/24 + the real
//!  generator, client                  director            servers 10.2.0.11, .12, …
//! ```
//! The real servers are addresses of one namespace: one veth into it, so
//! every director kind forwards to the same receive path, and the sink
//! (XDP on `lvbs0`) tells them apart by destination address.
//!
//! Every veth has an XDP program (so each has a NAPI instance), and every
//! NAPI instance is a kernel thread pinned like the processes: the
//! director's interfaces and processes on the director CPU, the client's
//! and servers' on the load CPU. See [`Placement`].

use crate::agent::{self, SinkReading};
use anyhow::{Context, Result, anyhow, bail};
use lvc_tests::Lab;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 10);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
pub const SERVER_HOST: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
/// fullnat's local address pool (on the director's server side).
pub const LOCAL_POOL: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 100);
/// The UDP port of the generated traffic (discard).
pub const UDP_PORT: u16 = 9;

pub const GEN_DEV: &str = "lvbg0";
pub const DIR_IN: &str = "lvbd0";
pub const DIR_OUT: &str = "lvbd1";
pub const SRV_DEV: &str = "lvbs0";

/// Real server `i` (0-based).
pub fn rip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 2, 0, 11 + i as u8)
}

/// Which CPU does what (2 cores: load on one, director on the other).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Placement {
    /// Generator, client and server endpoints, their NAPI threads.
    pub load_cpu: u32,
    /// The director: its processes and its interfaces' NAPI threads.
    pub director_cpu: u32,
}

/// A long-running agent with a line protocol on stdin/stdout.
pub struct Agent {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Agent {
    fn start(ns: &str, cpu: u32, args: &[&str]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new("taskset")
            .args(["-c", &cpu.to_string(), "ip", "netns", "exec", ns])
            .arg(exe)
            .arg("agent")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting agent {args:?}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut a = Self {
            child,
            stdin,
            stdout,
        };
        let line = a.line()?;
        if line != "ready" {
            bail!("agent {args:?} did not start: {line}");
        }
        Ok(a)
    }

    fn line(&mut self) -> Result<String> {
        let mut s = String::new();
        self.stdout.read_line(&mut s)?;
        if s.is_empty() {
            let st = self.child.wait()?;
            return Err(anyhow!("agent exited ({st}); its error is above"));
        }
        Ok(s.trim().to_owned())
    }

    fn ask(&mut self, cmd: &str) -> Result<String> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.line()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The built topology with its permanent agents (sink, XDP_PASS on the
/// endpoints' interfaces).
pub struct BenchLab {
    pub lab: Lab,
    pub servers: usize,
    pub placement: Placement,
    sink: Agent,
    _pass: Agent,
    /// MAC of the director's client-side interface (generator's next hop).
    pub dir_in_mac: [u8; 6],
    /// MAC of the servers' interface.
    pub srv_mac: [u8; 6],
}

impl BenchLab {
    pub fn build(servers: usize, placement: Placement) -> Result<Self> {
        let mut lab = Lab::new("bench");
        for ns in ["gen", "dir", "srv"] {
            lab.add_ns(ns);
        }
        lab.veth(("gen", GEN_DEV), ("dir", DIR_IN), 1);
        lab.veth(("dir", DIR_OUT), ("srv", SRV_DEV), 1);
        lab.ip(
            "gen",
            &["addr", "add", &format!("{CLIENT}/16"), "dev", GEN_DEV],
        );
        lab.ip("gen", &["route", "add", "default", "via", "10.1.0.1"]);
        lab.ip("dir", &["addr", "add", "10.1.0.1/16", "dev", DIR_IN]);
        lab.ip("dir", &["addr", "add", "10.2.0.1/24", "dev", DIR_OUT]);
        lab.ip(
            "srv",
            &["addr", "add", &format!("{SERVER_HOST}/24"), "dev", SRV_DEV],
        );
        for i in 0..servers {
            lab.ip(
                "srv",
                &["addr", "add", &format!("{}/24", rip(i)), "dev", SRV_DEV],
            );
        }
        lab.ip("srv", &["route", "add", "default", "via", "10.2.0.1"]);
        // lvc-dr: the VIP on the servers' loopback (replies come from it);
        // lvc-fullnat: the local pool on the director's server side.
        lab.ip("srv", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        lab.ip(
            "dir",
            &["addr", "add", &format!("{LOCAL_POOL}/32"), "dev", DIR_OUT],
        );
        for kv in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            lab.sysctl("dir", kv);
        }
        for kv in [
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ] {
            lab.sysctl("gen", kv);
        }
        for ns in ["gen", "dir", "srv"] {
            lab.sysctl(ns, "net.core.somaxconn=4096");
        }
        let sink = Agent::start(
            &lab.ns("srv"),
            placement.load_cpu,
            &["sink", SRV_DEV, &UDP_PORT.to_string(), &rip(0).to_string()],
        )?;
        let pass = Agent::start(&lab.ns("gen"), placement.load_cpu, &["pass", GEN_DEV])?;
        for (ns, dev) in [
            ("gen", GEN_DEV),
            ("dir", DIR_IN),
            ("dir", DIR_OUT),
            ("srv", SRV_DEV),
        ] {
            // GRO on gives a veth its NAPI instance for good (not only
            // while an XDP program is attached), as a NIC has; threaded
            // makes that NAPI a kernel thread that can be pinned.
            lab.exec_ok(ns, &["ethtool", "-K", dev, "gro", "on"]);
            lab.exec_ok(
                ns,
                &[
                    "sh",
                    "-c",
                    &format!("echo 1 > /sys/class/net/{dev}/threaded"),
                ],
            );
        }
        // Static neighbours: the first packets of a run must not wait for
        // ARP, whatever the kind.
        let mac_of = |ns: &str, dev: &str| {
            lab.exec_ok(ns, &["cat", &format!("/sys/class/net/{dev}/address")])
                .trim()
                .to_owned()
        };
        let (gen_mac, in_mac, out_mac, srv) = (
            mac_of("gen", GEN_DEV),
            mac_of("dir", DIR_IN),
            mac_of("dir", DIR_OUT),
            mac_of("srv", SRV_DEV),
        );
        let (dir_in_mac, srv_mac) = (agent::parse_mac(&in_mac)?, agent::parse_mac(&srv)?);
        let neigh = |ns: &str, addr: String, mac: &str, dev: &str| {
            lab.ip(
                ns,
                &[
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ],
            );
        };
        neigh("gen", "10.1.0.1".into(), &in_mac, GEN_DEV);
        neigh("dir", CLIENT.to_string(), &gen_mac, DIR_IN);
        neigh("srv", "10.2.0.1".into(), &out_mac, SRV_DEV);
        neigh("srv", LOCAL_POOL.to_string(), &out_mac, SRV_DEV);
        for i in 0..servers {
            neigh("dir", rip(i).to_string(), &srv, DIR_OUT);
        }
        neigh("dir", SERVER_HOST.to_string(), &srv, DIR_OUT);
        let mut me = Self {
            lab,
            servers,
            placement,
            sink,
            _pass: pass,
            dir_in_mac,
            srv_mac,
        };
        me.pin()?;
        Ok(me)
    }

    pub fn ns(&self, short: &str) -> String {
        self.lab.ns(short)
    }

    /// Starts a long-running agent in namespace `short` on the director CPU.
    pub fn director_agent(&self, args: &[&str]) -> Result<Agent> {
        Agent::start(&self.lab.ns("dir"), self.placement.director_cpu, args)
    }

    /// Pins every NAPI thread of the lab's interfaces (they are created
    /// anew whenever an XDP program is attached, so after every kind's
    /// setup).
    pub fn pin(&mut self) -> Result<()> {
        for (dev, cpu) in [
            (GEN_DEV, self.placement.load_cpu),
            (SRV_DEV, self.placement.load_cpu),
            (DIR_IN, self.placement.director_cpu),
            (DIR_OUT, self.placement.director_cpu),
        ] {
            let tids = crate::cpu::napi_threads(dev);
            if tids.is_empty() {
                bail!("no NAPI thread for {dev}: is an XDP program attached and threaded NAPI on?");
            }
            for tid in tids {
                crate::cpu::pin(tid, cpu)?;
                if dev == SRV_DEV {
                    crate::cpu::realtime(tid)?;
                }
            }
        }
        Ok(())
    }

    pub fn sink_reset(&mut self) -> Result<()> {
        let r = self.sink.ask("reset")?;
        if r != "ok" {
            bail!("sink: {r}");
        }
        Ok(())
    }

    pub fn sink_read(&mut self) -> Result<SinkReading> {
        let r = self.sink.ask("read")?;
        serde_json::from_str(&r).with_context(|| format!("sink said {r}"))
    }

    /// Runs a command in namespace `short` pinned to the load CPU; its
    /// stdout (error with stderr if it fails).
    pub fn load_cmd(&self, short: &str, cmd: &[&str]) -> Result<String> {
        let cpu = self.placement.load_cpu.to_string();
        let out = Command::new("taskset")
            .args(["-c", &cpu, "ip", "netns", "exec", &self.lab.ns(short)])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An interface counter (`/sys/class/net/DEV/statistics/NAME`).
    pub fn counter(&self, short: &str, dev: &str, name: &str) -> u64 {
        self.lab
            .exec_ok(
                short,
                &["cat", &format!("/sys/class/net/{dev}/statistics/{name}")],
            )
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Prints every interface's non-zero counters (LVC_BENCH_DEBUG).
    pub fn debug_counters(&self) {
        for (ns, dev) in [
            ("gen", GEN_DEV),
            ("dir", DIR_IN),
            ("dir", DIR_OUT),
            ("srv", SRV_DEV),
        ] {
            let out = self.lab.exec(ns, &["ethtool", "-S", dev]);
            let s = String::from_utf8_lossy(&out.stdout);
            let nz: Vec<&str> = s
                .lines()
                .filter(|l| !l.trim_end().ends_with(": 0") && l.contains(':'))
                .map(str::trim)
                .collect();
            eprintln!("      {dev}: {}", nz.join(", "));
        }
    }

    /// Packets the endpoints sent into the director, both directions.
    pub fn packets_into_director(&self) -> u64 {
        self.counter("gen", GEN_DEV, "tx_packets") + self.counter("srv", SRV_DEV, "tx_packets")
    }
}
