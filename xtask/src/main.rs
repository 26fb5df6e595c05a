//! `cargo xtask …`: everything a developer or CI runs.
//!
//! - `deps`  installs the Debian packages lvc needs (apt-get), if missing
//! - `test`  deps, `cargo fmt --check`, clippy `-D warnings`, build, unit and
//!   privileged integration tests with XDP offload on, then the namespace
//!   suites again with it off (under `CI=true` a privileged test that
//!   cannot run fails)
//! - `demo`  deps, build, a namespace lab with a client, the director and
//!   real servers, real HTTP requests through lvc, `lvc-ctl list --stats`,
//!   teardown
//! - `bench` deps, a release build, then `lvc-bench run ARGS` (the load-test
//!   harness; `cargo xtask bench --quick` for a two-minute sanity check)
//! - `fuzz [--seconds N] [TARGET…]` coverage-guided fuzzing (libFuzzer) of
//!   the pipeline, the control protocol, the config loader and the shaping
//!   filter parser; `test` ends with a short smoke run of each

mod fuzz;

use lvc_tests::topo::{Arms, Topo, VIP};
use std::collections::BTreeMap;
use std::process::{Command, ExitCode};

/// Debian packages: the BPF compiler and xsk-rs's vendored libxdp/libbpf
/// build, then the tools the lab and the tests drive.
const PACKAGES: &[&str] = &[
    "clang-19",
    "llvm-19",
    "libbpf-dev",
    "libelf-dev",
    "zlib1g-dev",
    "pkg-config",
    "m4",
    "make",
    "gcc",
    "libc6-dev",
    "iproute2",
    "ethtool",
    "nftables",
    "procps",
    "curl",
    "socat",
    "tcpdump",
    "vsftpd",
    // Director failover tests: VRRP for the floating addresses; scale-out
    // tests: BGP between the directors and the upstream router.
    "keepalived",
    "bird2",
    // lvc-bench: the director kinds it compares and the load it drives.
    "iptables",
    "conntrack",
    "iperf3",
    "wrk",
    "nginx-light",
    // cargo xtask fuzz: libFuzzer is C++.
    "g++",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("deps") => deps(),
        Some("test") => test(&args[1..]),
        Some("demo") => demo(),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => deps().and_then(|()| fuzz::fuzz(&args[1..])),
        _ => {
            eprintln!(
                "usage: cargo xtask deps | test [-- CARGO TEST ARGS] | demo | bench [LVC-BENCH RUN ARGS] | fuzz [--seconds N] [TARGET…]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result = std::result::Result<(), String>;

fn sh(cmd: &mut Command) -> Result {
    eprintln!("+ {cmd:?}");
    let st = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({st})"))
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env("CLANG", "clang-19").env("LLC", "llc-19");
    // A CI build starts from a clean clone and is never rebuilt in place:
    // incremental caches would only double the disk it needs.
    if std::env::var_os("CI").is_some() {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

/// Says how much disk the build has before it starts: a full disk fails a
/// build with an error far from its cause.
fn report_disk() {
    let free = Command::new("df")
        .args(["--output=avail", "-B1G", "."])
        .output()
        .ok()
        .and_then(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.lines()
                .nth(1)?
                .trim()
                .trim_end_matches('G')
                .parse::<u64>()
                .ok()
        });
    match free {
        Some(g) if g < DISK_NEEDED_GIB => eprintln!(
            "xtask: WARNING: {g} GiB free here; a full test run builds about \
             {DISK_NEEDED_GIB} GiB of artefacts and may fail with ENOSPC"
        ),
        Some(g) => eprintln!("xtask: {g} GiB free"),
        None => eprintln!("xtask: cannot tell the free disk space (df failed)"),
    }
}

/// What `cargo xtask test` writes under target/ and fuzz/target/ from a clean
/// clone, with CARGO_INCREMENTAL=0 (4.4 GiB measured: 3.3 + 1.1), with room
/// to spare.
const DISK_NEEDED_GIB: u64 = 8;

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs missing Debian packages.
fn deps() -> Result {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("xtask: all Debian packages present");
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        sh(&mut c)
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install).map_err(|e| format!("{e}: installing packages needs root"))
}

fn test(extra: &[String]) -> Result {
    report_disk();
    deps()?;
    lvc_tests::remove_stale_namespaces();
    sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    sh(cargo()
        .args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")))?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    deny()?;
    sh(cargo().args(["build", "--workspace", "--bins"]))?;
    // Two test threads: the privileged tests each build a namespace lab and
    // run a dataplane; more at once only contend for this machine's 2 cores.
    // Everything with XDP offload on (the default), then the namespace
    // suites again with it off: both paths must do what users expect.
    let mut total = Counts::default();
    let mut ok = true;
    for (offload, scope) in [
        ("on", &["--workspace"][..]),
        ("off", &["-p", "lvc-tests", "--tests"][..]),
    ] {
        eprintln!("xtask: tests with LVC_TEST_OFFLOAD={offload}");
        let mut c = cargo();
        c.env("LVC_TEST_OFFLOAD", offload).arg("test").args(scope);
        c.args(["--", "--test-threads", "2"]);
        c.args(extra.iter().filter(|a| *a != "--"));
        let (counts, passed) = run_tests(&mut c)?;
        total.add(&counts);
        ok &= passed;
    }
    println!(
        "\ntests: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.ignored
    );
    if !ok {
        return Err("cargo test failed".into());
    }
    // A smoke run of every fuzz target (`cargo xtask fuzz` for longer).
    fuzz::fuzz(&["--seconds".into(), "15".into()])
}

/// The cargo-deny release `deny` installs when it is missing.
const CARGO_DENY: &str = "0.20.2";

/// `cargo deny` (deny.toml): licences, bans and sources always; advisories
/// against RustSec's database when it can be fetched (it lives on GitHub:
/// a machine that cannot reach it says so, loudly, and goes on).
fn deny() -> Result {
    let have = cargo()
        .args(["deny", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        sh(cargo().args(["install", "cargo-deny", "--locked", "--version", CARGO_DENY]))?;
    }
    sh(cargo().args(["deny", "check", "licenses", "bans", "sources"]))?;
    if sh(cargo().args(["deny", "fetch"])).is_ok() {
        // (Fetched just now: checked without going to the network again.)
        sh(cargo().args(["deny", "--offline", "check", "advisories"]))
    } else {
        eprintln!(
            "xtask: WARNING: cargo deny could not fetch the RustSec advisory database \
             (github.com/rustsec/advisory-db): advisories NOT checked on this machine"
        );
        Ok(())
    }
}

/// Test counts summed over test binaries.
#[derive(Default)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
    }
}

/// Runs `cargo test`, echoing its output; returns the counts over every
/// test binary and whether it succeeded.
fn run_tests(cmd: &mut Command) -> std::result::Result<(Counts, bool), String> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let mut n = Counts::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(k)) = (words.next(), words.next()) else {
                    continue;
                };
                let k: u64 = k.parse().unwrap_or(0);
                match what {
                    "passed" => n.passed += k,
                    "failed" => n.failed += k,
                    "ignored" => n.ignored += k,
                    _ => {}
                }
            }
        }
    }
    let st = child.wait().map_err(|e| e.to_string())?;
    Ok((n, st.success()))
}

/// Builds everything in release mode and runs the load-test harness.
fn bench(args: &[String]) -> Result {
    deps()?;
    sh(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    lvc_tests::remove_stale_namespaces();
    let exe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/lvc-bench");
    sh(Command::new(exe).arg("run").args(args))
}

fn demo() -> Result {
    deps()?;
    sh(cargo().args(["build", "--workspace", "--bins"]))?;
    lvc_tests::remove_stale_namespaces();
    if !lvc_tests::privileged("demo") {
        return Err("the demo needs root (namespaces, XDP, AF_XDP)".into());
    }
    println!("\n== building a lab: client ── director (lvc, two-armed) ── 3 real servers");
    let mut t = Topo::build("demo", Arms::Two, 3, 2);
    t.start_servers();
    t.start_lvc();
    println!("== lvc-ctl add-service --tcp {VIP}:80; add-server --real 10.2.0.11/12/13 (nat, rr)");
    t.add_service("tcp", 80, "nat");
    print!("{}", t.ctl_ok(&["list"]));
    let n = 30;
    println!("\n== {n} HTTP requests from the client to http://{VIP}/");
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match t.curl(&format!("http://{VIP}/")) {
            Some(body) => *answered.entry(body.trim().to_owned()).or_default() += 1,
            None => failed += 1,
        }
    }
    for (server, count) in &answered {
        println!("  {server}: {count} answers");
    }
    if failed > 0 {
        println!("  failed: {failed}");
    }
    println!("\n== lvc-ctl list --stats");
    print!("{}", t.ctl_ok(&["list", "--stats"]));
    println!("\n== lvc-ctl status");
    print!("{}", t.ctl_ok(&["status"]));
    println!("\n== tearing the lab down");
    drop(t);
    if failed > 0 || answered.len() < 2 {
        return Err(format!(
            "requests not balanced: {answered:?}, {failed} failed"
        ));
    }
    Ok(())
}
