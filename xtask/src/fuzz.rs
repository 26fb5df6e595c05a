//! `cargo xtask fuzz [--seconds N] [TARGET…]`: coverage-guided fuzzing of
//! the `fuzz/` targets with libFuzzer, built on stable Rust with the
//! sanitizer-coverage flags cargo-fuzz uses (no nightly, no cargo-fuzz
//! needed). Each target starts from seeds written here (real frames of a
//! connection's life, configuration files, control requests, shaping
//! matches) plus what earlier runs found (`fuzz/corpus/`, not committed);
//! a crash leaves its input in `fuzz/artifacts/TARGET/` and fails the run.

use crate::{Result, cargo, sh};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGETS: [&str; 4] = ["frame", "control", "config", "shape_match"];

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

pub fn fuzz(args: &[String]) -> Result {
    let mut seconds = 60u64;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds takes a number")?;
            }
            t if TARGETS.contains(&t) => targets.push(t),
            other => {
                return Err(format!(
                    "unknown fuzz argument `{other}` (targets: {})",
                    TARGETS.join(", ")
                ));
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    let fuzz = dir();
    write_seeds(&fuzz).map_err(|e| format!("cannot write the seed corpora: {e}"))?;
    sh(cargo()
        .env("RUSTFLAGS", RUSTFLAGS)
        .args([
            "build",
            "--release",
            "--bins",
            "--target",
            TRIPLE,
            "--manifest-path",
        ])
        .arg(fuzz.join("Cargo.toml"))
        // (There whatever CARGO_TARGET_DIR says: the binaries run below.)
        .arg("--target-dir")
        .arg(fuzz.join("target")))?;
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    for t in targets {
        let corpus = fuzz.join("corpus").join(t);
        let artifacts = fuzz.join("artifacts").join(t);
        for d in [&corpus, &artifacts] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let exe = fuzz.join("target").join(TRIPLE).join("release").join(t);
        let mut cmd = Command::new(&exe);
        cmd.arg(&corpus)
            .arg(fuzz.join("seeds").join(t))
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .arg("-max_len=4096")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()));
        eprintln!("+ {cmd:?}");
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let stat = |name: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| "?".into())
        };
        let line = format!(
            "{t}: {} executions in {seconds} s, corpus {} inputs, peak RSS {} MB",
            stat("number_of_executed_units"),
            std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0),
            stat("peak_rss_mb"),
        );
        eprintln!("xtask: {line}");
        summary.push(line);
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            failed.push(format!("{t} (input saved in {})", artifacts.display()));
        }
    }
    println!("\nfuzzing:\n  {}", summary.join("\n  "));
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzz targets failed: {}", failed.join(", ")))
    }
}

/// Writes each target's seeds (deterministic; rewritten every run).
fn write_seeds(fuzz: &Path) -> std::io::Result<()> {
    let put = |target: &str, name: String, bytes: &[u8]| -> std::io::Result<()> {
        let d = fuzz.join("seeds").join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)
    };
    for (pick, v6) in [
        (0x00u8, false), // nat, rr
        (0x01, false),   // dnat
        (0x02, false),   // dr
        (0x03, false),   // tun
        (0x04, false),   // fullnat
        (0x08, true),    // nat, IPv6
        (0x0a, true),    // dr, IPv6
        (0x40, false),   // persistent nat
        (0x90, false),   // every port, offload
    ] {
        put(
            "frame",
            format!("conversation-{pick:02x}"),
            &conversation(pick, v6),
        )?;
    }
    for (i, cfg) in CONFIGS.iter().enumerate() {
        put("config", format!("config-{i}"), cfg.as_bytes())?;
    }
    for (i, req) in REQUESTS.iter().enumerate() {
        put("control", format!("request-{i}"), req.as_bytes())?;
    }
    for (i, m) in MATCHES.iter().enumerate() {
        put("shape_match", format!("match-{i}"), m.as_bytes())?;
    }
    Ok(())
}

const CONFIGS: [&str; 2] = [
    r#"[timeouts]
tcp = 900
tcpfin = 120
udp = 300

[fullnat]
local = ["10.2.0.100"]

[[service]]
tcp = "10.9.0.10:80"
scheduler = "wlc"
persistent = 360
netmask = "255.255.255.0"
check = { type = "http:/health", interval = 1.5, timeout = 0.5, rise = 2, fall = 3 }
alert = "logger lvc"
sorry = { addr = "10.2.0.99:80", method = "nat" }

[[service.server]]
real = "10.2.0.11:8080"
weight = 3
method = "nat"
max_conns = 100
min_conns = 60

[[service.server]]
real = "10.2.0.12"
method = "fullnat"
"#,
    r#"[[service]]
udp = "[2001:db8::10]:53,5353,6000-6010"
scheduler = "mh"
sloppy = true

[[service.server]]
real = "[2001:db8::11]"
method = "dr"

[[shape.dev]]
dev = "eth1"
rate = "100mbit"
default = "1:20"

[[shape.dev.class]]
classid = "1:10"
rate = "70mbit"
ceil = "100mbit"
prio = 1
qdisc = { kind = "sfq", perturb = 10 }
"#,
];

const REQUESTS: [&str; 4] = [
    r#"{"version":1,"request":{"verb":"add-service","service":"tcp:10.9.0.10:80","scheduler":"rr","persistent":360}}"#,
    r#"{"version":1,"request":{"verb":"add-server","service":"tcp:10.9.0.10:80","real":"10.2.0.11:8080","weight":2,"method":"nat","limits":{"max":10}}}"#,
    r#"{"version":1,"request":{"verb":"batch","requests":[{"verb":"clear"},{"verb":"set-timeouts","tcp":900}]}}"#,
    r#"{"version":1,"request":{"verb":"shape-add-filter","dev":"eth1","filter":{"prio":1,"matches":["ip src 10.0.0.0/8"],"flowid":"1:10"}}}"#,
];

const MATCHES: [&str; 8] = [
    "ip src 10.0.0.0/8",
    "ip dst 2001:db8::/32",
    "ip tos 0x10 0xff",
    "ip dscp 46",
    "ip protocol udp",
    "ip dport 80 0xffff",
    "real 10.2.0.11:80",
    "u32 0x1 0xff at 9",
];

/// A connection's life as the frame target reads it (configuration byte,
/// then length-prefixed frames): the client's handshake, data, the
/// server's answers (from where a nat server answers), a UDP datagram, an
/// ICMP error about the flow, a fragmented datagram, a close.
fn conversation(pick: u8, v6: bool) -> Vec<u8> {
    let (client, vip, rip) = if v6 {
        ("fd00:1::2", "fd00:9::10", "fd00:2::11")
    } else {
        ("10.1.0.2", "10.9.0.10", "10.2.0.11")
    };
    let c = |s: &str| s.parse::<std::net::IpAddr>().expect("address");
    let (client, vip, rip) = (c(client), c(vip), c(rip));
    let mut frames = vec![
        packet(6, client, vip, 40000, 80, 0x02, 1000, b""),
        packet(6, rip, client, 8080, 40000, 0x12, 5000, b""),
        packet(6, client, vip, 40000, 80, 0x10, 1001, b""),
        packet(
            6,
            client,
            vip,
            40000,
            80,
            0x18,
            1001,
            b"GET / HTTP/1.0\r\n\r\n",
        ),
        packet(
            6,
            rip,
            client,
            8080,
            40000,
            0x18,
            5001,
            b"HTTP/1.0 200 OK\r\n\r\nrs1\n",
        ),
        packet(17, client, vip, 40001, 80, 0, 0, b"a datagram"),
        packet(6, client, vip, 40000, 80, 0x04, 1019, b""),
        packet(6, client, vip, 40000, 80, 0x11, 1019, b""),
    ];
    let quoted = packet(6, rip, client, 8080, 40000, 0x10, 5024, b"");
    frames.push(icmp_error(rip, client, &quoted[14..]));
    let big = packet(17, client, vip, 40002, 80, 0, 0, &[0x55; 1600]);
    if !v6 {
        frames.extend(fragments(&big));
    }
    let mut out = vec![pick];
    for f in frames {
        out.extend((f.len() as u16).to_be_bytes());
        out.extend(f);
    }
    out
}

/// Ethernet + IPv4/IPv6 + TCP/UDP, checksums left zero (the pipeline
/// updates them incrementally; it does not judge them).
#[allow(clippy::too_many_arguments)]
fn packet(
    proto: u8,
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(sport.to_be_bytes());
    l4.extend(dport.to_be_bytes());
    if proto == 6 {
        l4.extend(seq.to_be_bytes());
        l4.extend(0u32.to_be_bytes());
        l4.extend([5 << 4, flags]);
        l4.extend(65535u16.to_be_bytes());
        l4.extend([0, 0, 0, 0]);
    } else {
        l4.extend((8 + payload.len() as u16).to_be_bytes());
        l4.extend([0, 0]);
    }
    l4.extend(payload);
    ip(proto, src, dst, &l4)
}

fn ip(proto: u8, src: std::net::IpAddr, dst: std::net::IpAddr, l4: &[u8]) -> Vec<u8> {
    use std::net::IpAddr::{V4, V6};
    let mut f = vec![0xd0; 6];
    f.extend([0xc0; 6]);
    match (src, dst) {
        (V4(s), V4(d)) => {
            f.extend([0x08, 0x00, 0x45, 0]);
            f.extend((20 + l4.len() as u16).to_be_bytes());
            f.extend([0, 1, 0x40, 0, 64, proto, 0, 0]);
            f.extend(s.octets());
            f.extend(d.octets());
        }
        (V6(s), V6(d)) => {
            f.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend((l4.len() as u16).to_be_bytes());
            f.extend([if proto == 1 { 58 } else { proto }, 64]);
            f.extend(s.octets());
            f.extend(d.octets());
        }
        _ => unreachable!("one family"),
    }
    f.extend(l4);
    f
}

/// An ICMP destination unreachable (ICMPv6 for IPv6) quoting `quoted`.
fn icmp_error(src: std::net::IpAddr, dst: std::net::IpAddr, quoted: &[u8]) -> Vec<u8> {
    let kind = if src.is_ipv4() { 3 } else { 1 };
    let mut l4 = vec![kind, 3, 0, 0, 0, 0, 0, 0];
    l4.extend(&quoted[..quoted.len().min(64)]);
    ip(1, src, dst, &l4)
}

/// An IPv4 frame's packet in two fragments.
fn fragments(f: &[u8]) -> Vec<Vec<u8>> {
    let payload = &f[34..];
    let cut = 1000;
    let piece = |data: &[u8], offset: usize, more: bool| {
        let mut p = f[..34].to_vec();
        p[16..18].copy_from_slice(&(20 + data.len() as u16).to_be_bytes());
        let fo = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        p[20..22].copy_from_slice(&fo.to_be_bytes());
        p.extend(data);
        p
    };
    vec![
        piece(&payload[..cut], 0, true),
        piece(&payload[cut..], cut, false),
    ]
}
