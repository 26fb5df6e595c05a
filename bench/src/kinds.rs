//! Director kinds: what runs in the director namespace, set up and torn
//! down on the same topology, one after another, in the same run.

use crate::agent::FwdSpec;
use crate::lab::{Agent, BenchLab, DIR_IN, DIR_OUT, LOCAL_POOL, UDP_PORT, VIP, rip};
use anyhow::{Result, bail};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// TCP ports of the TCP scenarios (iperf3, HTTP).
pub const IPERF_PORT: u16 = 5201;
pub const HTTP_PORT: u16 = 80;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// lvc with one forwarding method (XDP offload on, the default).
    Lvc(LvcMethod),
    /// lvc with `--offload off`: every packet through the AF_XDP workers.
    LvcNoOffload(LvcMethod),
    /// lvc-nat with traffic shaping configured on the director's
    /// server-side interface that never limits (`shape_not_limiting`):
    /// what the shaping stage costs when it only classifies and queues.
    LvcNatShaped,
    /// The paper's recipe: iptables DNAT to a range of real servers.
    Iptables,
    /// nftables DNAT with numgen round robin.
    Nftables,
    /// A minimal kernel XDP load balancer (devmap redirect).
    XdpRedirect,
    /// A minimal AF_XDP forwarder on lvc's own socket code.
    AfxdpRaw,
    /// No director logic: the kernel routes packets addressed to the
    /// real servers themselves.
    Direct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum LvcMethod {
    Nat,
    Dnat,
    Dr,
    Tun,
    Fullnat,
}

impl LvcMethod {
    fn name(self) -> &'static str {
        match self {
            LvcMethod::Nat => "nat",
            LvcMethod::Dnat => "dnat",
            LvcMethod::Dr => "dr",
            LvcMethod::Tun => "tun",
            LvcMethod::Fullnat => "fullnat",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Lvc(m) => write!(f, "lvc-{}", m.name()),
            Kind::LvcNoOffload(m) => write!(f, "lvc-{}-no-offload", m.name()),
            Kind::LvcNatShaped => f.write_str("lvc-nat-shaped"),
            Kind::Iptables => f.write_str("iptables"),
            Kind::Nftables => f.write_str("nftables"),
            Kind::XdpRedirect => f.write_str("xdp-redirect"),
            Kind::AfxdpRaw => f.write_str("afxdp-raw"),
            Kind::Direct => f.write_str("direct"),
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| {
                let names: Vec<String> = Kind::ALL.iter().map(Kind::to_string).collect();
                format!("unknown director kind `{s}` (one of: {})", names.join(", "))
            })
    }
}

impl Kind {
    pub const ALL: [Kind; 16] = [
        Kind::Lvc(LvcMethod::Nat),
        Kind::LvcNatShaped,
        Kind::Lvc(LvcMethod::Dnat),
        Kind::Lvc(LvcMethod::Dr),
        Kind::Lvc(LvcMethod::Tun),
        Kind::Lvc(LvcMethod::Fullnat),
        Kind::LvcNoOffload(LvcMethod::Nat),
        Kind::LvcNoOffload(LvcMethod::Dnat),
        Kind::LvcNoOffload(LvcMethod::Dr),
        Kind::LvcNoOffload(LvcMethod::Tun),
        Kind::LvcNoOffload(LvcMethod::Fullnat),
        Kind::Iptables,
        Kind::Nftables,
        Kind::XdpRedirect,
        Kind::AfxdpRaw,
        Kind::Direct,
    ];

    /// Can this kind carry TCP connections in both directions here?
    /// (`xdp-redirect` and `afxdp-raw` are one-way UDP forwarders — the
    /// packet-rate ceilings; `dnat` needs the servers to rewrite replies and
    /// `tun` needs them to decapsulate, which the packet sink does for UDP
    /// but the lab's TCP servers do not.)
    pub fn does_tcp(self) -> bool {
        match self.lvc_method() {
            Some(m) => matches!(m, LvcMethod::Nat | LvcMethod::Dr | LvcMethod::Fullnat),
            None => matches!(self, Kind::Iptables | Kind::Nftables | Kind::Direct),
        }
    }

    /// The forwarding method of the kinds that run lvc (`lvc-nat-shaped`
    /// is lvc-nat plus shaping), None for the others.
    pub fn lvc_method(self) -> Option<LvcMethod> {
        match self {
            Kind::Lvc(m) | Kind::LvcNoOffload(m) => Some(m),
            Kind::LvcNatShaped => Some(LvcMethod::Nat),
            _ => None,
        }
    }

    /// Does this kind run lvc-dataplane?
    pub fn is_lvc(self) -> bool {
        self.lvc_method().is_some()
    }

    /// Where clients send: the VIP, or (direct) the first real server.
    pub fn target(self) -> std::net::Ipv4Addr {
        if self == Kind::Direct { rip(0) } else { VIP }
    }
}

/// A kind while it runs; [`Running::stop`] tears it down (and the lab's
/// drop, if a run fails half-way).
pub struct Running {
    kind: Kind,
    agent: Option<Agent>,
}

/// The control socket of the lab's lvc.
pub fn lvc_socket(lab: &BenchLab) -> PathBuf {
    std::env::temp_dir().join(format!("{}-lvc.sock", lab.ns("dir")))
}

/// `lvc-ctl …` against the bench's lvc; its stdout.
pub fn ctl(lab: &BenchLab, args: &[&str]) -> Result<String> {
    let ctl = lvc_tests::bin("lvc-ctl").to_string_lossy().into_owned();
    let sock = lvc_socket(lab).to_string_lossy().into_owned();
    let mut cmd = vec![ctl.as_str(), "--socket", &sock];
    cmd.extend_from_slice(args);
    let out = lab.lab.exec("dir", &cmd);
    if !out.status.success() {
        bail!("lvc-ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sets up `kind` in the director namespace and pins its threads.
pub fn start(lab: &mut BenchLab, kind: Kind) -> Result<Running> {
    let servers = lab.servers;
    let rips: Vec<String> = (0..servers).map(|i| rip(i).to_string()).collect();
    let mut agent = None;
    match kind {
        Kind::Lvc(m) | Kind::LvcNoOffload(m) => start_lvc(lab, kind, m, &rips)?,
        Kind::LvcNatShaped => {
            start_lvc(lab, kind, LvcMethod::Nat, &rips)?;
            shape_not_limiting(lab, &rips[0])?;
        }
        Kind::Iptables => {
            agent = Some(pass(lab)?);
            let range = format!("{}-{}", rips[0], rips[servers - 1]);
            for (proto, port) in [("udp", UDP_PORT), ("tcp", IPERF_PORT), ("tcp", HTTP_PORT)] {
                lab.lab.exec_ok(
                    "dir",
                    &[
                        "iptables",
                        "-t",
                        "nat",
                        "-A",
                        "PREROUTING",
                        "-d",
                        &VIP.to_string(),
                        "-p",
                        proto,
                        "--dport",
                        &port.to_string(),
                        "-j",
                        "DNAT",
                        "--to-destination",
                        &range,
                    ],
                );
            }
        }
        Kind::Nftables => {
            agent = Some(pass(lab)?);
            let map: Vec<String> = rips
                .iter()
                .enumerate()
                .map(|(i, r)| format!("{i} : {r}"))
                .collect();
            let rule = |proto: &str, port: u16| {
                format!(
                    "ip daddr {VIP} {proto} dport {port} dnat to numgen inc mod {servers} map {{ {} }};",
                    map.join(", ")
                )
            };
            let table = format!(
                "table ip lvcbench {{ chain pre {{ type nat hook prerouting priority dstnat; {} {} {} }}; }}",
                rule("udp", UDP_PORT),
                rule("tcp", IPERF_PORT),
                rule("tcp", HTTP_PORT)
            );
            lab.lab.exec_ok("dir", &["nft", &table]);
        }
        Kind::XdpRedirect => {
            let spec = FwdSpec {
                in_dev: DIR_IN.into(),
                out_dev: DIR_OUT.into(),
                vip: VIP,
                dport: UDP_PORT,
                rips: (0..servers).map(rip).collect(),
                rip_mac: lab.srv_mac,
            };
            agent = Some(lab.director_agent(&["fwd", &serde_json::to_string(&spec)?])?);
        }
        Kind::AfxdpRaw => {
            let mac = crate::fmt_mac(lab.srv_mac);
            let mut args = vec!["afxdp-raw", DIR_IN, DIR_OUT, mac.as_str()];
            args.extend(rips.iter().map(String::as_str));
            agent = Some(lab.director_agent(&args)?);
        }
        Kind::Direct => agent = Some(pass(lab)?),
    }
    lab.pin()?;
    Ok(Running { kind, agent })
}

/// Starts lvc-dataplane on the director's two interfaces and adds the
/// services (UDP, and the TCP ones if `kind` carries TCP), every real
/// server behind each with method `m`.
fn start_lvc(lab: &mut BenchLab, kind: Kind, m: LvcMethod, rips: &[String]) -> Result<()> {
    let dp = lvc_tests::bin("lvc-dataplane")
        .to_string_lossy()
        .into_owned();
    let sock = lvc_socket(lab).to_string_lossy().into_owned();
    let cpu = lab.placement.director_cpu.to_string();
    let _ = std::fs::remove_file(&sock);
    let offload = if matches!(kind, Kind::LvcNoOffload(_)) {
        "off"
    } else {
        "on"
    };
    lab.lab.spawn(
        "dir",
        "lvc",
        &[
            "taskset",
            "-c",
            &cpu,
            &dp,
            "--socket",
            &sock,
            "--queues",
            "1",
            "--iface",
            DIR_IN,
            "--iface",
            DIR_OUT,
            "--offload",
            offload,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while ctl(lab, &["list"]).is_err() {
        if Instant::now() > deadline {
            bail!("lvc-dataplane did not come up:\n{}", lab.lab.log("lvc"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if m == LvcMethod::Fullnat {
        ctl(lab, &["set-local-pool", &LOCAL_POOL.to_string()])?;
    }
    let mut services = vec![("udp", UDP_PORT)];
    if kind.does_tcp() {
        services.extend([("tcp", IPERF_PORT), ("tcp", HTTP_PORT)]);
    }
    for (proto, port) in services {
        let svc = format!("{VIP}:{port}");
        let flag = format!("--{proto}");
        ctl(lab, &["add-service", &flag, &svc, "--scheduler", "rr"])?;
        for r in rips {
            ctl(
                lab,
                &["add-server", &flag, &svc, "--real", r, "--method", m.name()],
            )?;
        }
    }
    Ok(())
}

/// Shaping on the server-side interface (where forwarded packets leave)
/// that never limits: a 100gbit root, two leaves of 50gbit that may borrow
/// up to 100gbit — an sfq one (1:10) and a fifo default (1:20) — and two
/// filters, so packets walk the classifier, are queued in a leaf and are
/// dequeued through the token tree, without ever waiting for tokens.
fn shape_not_limiting(lab: &BenchLab, first_rip: &str) -> Result<()> {
    let shape = |args: &[&str]| -> Result<()> {
        let mut a = vec!["shape"];
        a.extend_from_slice(args);
        ctl(lab, &a).map(drop)
    };
    // The default must name an existing leaf: the root first, the classes,
    // then the root again with its default (set-root keeps the classes).
    shape(&["set-root", "--dev", DIR_OUT, "--rate", "100gbit"])?;
    for (classid, prio, qdisc) in [("1:10", "1", "sfq"), ("1:20", "2", "fifo")] {
        shape(&[
            "add-class",
            "--dev",
            DIR_OUT,
            "--classid",
            classid,
            "--rate",
            "50gbit",
            "--ceil",
            "100gbit",
            "--prio",
            prio,
            "--qdisc",
            qdisc,
            "--limit",
            "4096",
        ])?;
    }
    shape(&[
        "set-root",
        "--dev",
        DIR_OUT,
        "--rate",
        "100gbit",
        "--default",
        "1:20",
    ])?;
    let real = format!("real {first_rip}");
    for (prio, expr) in [("1", "ip tos 0x10 0xff"), ("2", real.as_str())] {
        shape(&[
            "add-filter",
            "--dev",
            DIR_OUT,
            "--prio",
            prio,
            "--match",
            expr,
            "--flowid",
            "1:10",
        ])?;
    }
    Ok(())
}

/// XDP_PASS on the director's interfaces (kinds that forward in the kernel).
fn pass(lab: &BenchLab) -> Result<Agent> {
    lab.director_agent(&["pass", DIR_IN, DIR_OUT])
}

impl Running {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// lvc's own counters, for the run log (empty for other kinds).
    pub fn lvc_stats(&self, lab: &BenchLab) -> String {
        if !self.kind.is_lvc() {
            return String::new();
        }
        let mut s = ctl(lab, &["list", "--stats"]).unwrap_or_default()
            + &ctl(lab, &["status"]).unwrap_or_default();
        if self.kind == Kind::LvcNatShaped {
            s += &ctl(lab, &["shape", "list", "--stats"]).unwrap_or_default();
        }
        s
    }

    /// Tears the kind down; connections it tracked are forgotten, so they
    /// cannot help the next kind.
    pub fn stop(mut self, lab: &mut BenchLab) -> Result<()> {
        self.agent.take();
        match self.kind {
            k if k.is_lvc() => {
                lab.lab.stop("lvc", 15);
            }
            Kind::Iptables => {
                lab.lab
                    .exec_ok("dir", &["iptables", "-t", "nat", "-F", "PREROUTING"]);
            }
            Kind::Nftables => {
                lab.lab
                    .exec_ok("dir", &["nft", "delete", "table", "ip", "lvcbench"]);
            }
            _ => {}
        }
        let out = lab.lab.exec("dir", &["conntrack", "-F"]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            // An empty table is not an error worth stopping for.
            if !err.contains("0 flow entries") {
                bail!("conntrack -F: {err} (install the `conntrack` package)");
            }
        }
        Ok(())
    }
}
