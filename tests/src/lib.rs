//! A namespace lab for lvc's tests.
//!
//! Every [`Lab`] creates uniquely named network namespaces (so tests run in
//! parallel), wires them with veth pairs and bridges, starts processes in
//! them, and removes everything on drop — also when the test fails.
//! Traffic only ever flows between these namespaces.
//!
//! Privileged tests call [`privileged`] first: without root (or without
//! `ip netns`) they skip with a message, except under `CI=true`, where a test
//! that cannot run fails.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod netns;
pub mod topo;

/// Prefix of every namespace a lab creates (`xtask` removes leftovers).
pub const NS_PREFIX: &str = "lvct";

/// True if privileged tests can run here. Skips (false) with a message, or
/// panics under `CI=true`.
pub fn privileged(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false);
    let why = if !root {
        Some("needs root (network namespaces, XDP, AF_XDP)")
    } else if Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        Some("needs iproute2 with `ip netns`")
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("privileged test `{test}` cannot run under CI=true: {why}")
        }
        Some(why) => {
            eprintln!("SKIP {test}: {why}");
            false
        }
    }
}

/// Path of a workspace binary (built by `cargo build --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests run from target/<profile>/deps/, xtask from target/<profile>/.
    let dir = exe.parent().expect("exe dir");
    let candidates = [
        dir.join(name),
        dir.parent().map(|d| d.join(name)).unwrap_or_default(),
    ];
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!(
            "{name} not found next to {}: build the workspace first (`cargo build --workspace`, or `cargo xtask test`)",
            exe.display()
        )
    })
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces and processes, torn down on drop.
pub struct Lab {
    id: String,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
}

impl Lab {
    /// A new, empty lab. `tag` only makes names readable.
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        Self {
            id: format!("{NS_PREFIX}{}x{n}{tag}", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
        }
    }

    /// The full name of namespace `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.id)
    }

    /// Creates namespace `short` with `lo` up.
    pub fn add_ns(&mut self, short: &str) -> String {
        let name = self.ns(short);
        run(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        self.ip(short, &["link", "set", "lo", "up"]);
        name
    }

    /// `ip -n NS …`, panicking with the command's stderr on failure.
    pub fn ip(&self, short: &str, args: &[&str]) {
        let ns = self.ns(short);
        let mut v = vec!["ip", "-n", &ns];
        v.extend_from_slice(args);
        run(&v);
    }

    /// Runs a command in namespace `short` and returns its output.
    pub fn exec(&self, short: &str, cmd: &[&str]) -> Output {
        let ns = self.ns(short);
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// Runs a command in namespace `short`; panics if it fails.
    pub fn exec_ok(&self, short: &str, cmd: &[&str]) -> String {
        let out = self.exec(short, cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in {short} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command with `stdin` as input in namespace `short`.
    pub fn exec_input(&self, short: &str, cmd: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        let ns = self.ns(short);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait");
        let _ = writer.join();
        out
    }

    /// Starts a long-running process in namespace `short`; it is killed when
    /// the lab drops. Its output goes to a log file returned by `log`.
    pub fn spawn(&mut self, short: &str, label: &str, cmd: &[&str]) -> u32 {
        let ns = self.ns(short);
        let log = self.log_path(label);
        let f = std::fs::File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = child.id();
        self.children.push((label.to_owned(), child));
        pid
    }

    /// Where a spawned process's output goes.
    pub fn log_path(&self, label: &str) -> PathBuf {
        std::env::temp_dir().join(format!("{}-{label}.log", self.id))
    }

    /// The output a spawned process wrote so far.
    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.log_path(label)).unwrap_or_default()
    }

    /// Sends `signal` to spawned process `label` and waits (up to 10 s) for
    /// it to exit; returns its exit status.
    pub fn stop(&mut self, label: &str, signal: i32) -> Option<std::process::ExitStatus> {
        let i = self.children.iter().position(|(l, _)| l == label)?;
        let (_, mut child) = self.children.remove(i);
        // `ip netns exec` execs the command, so the pid is the command's.
        let _ = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Is process `label` still running?
    pub fn running(&mut self, label: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(l, _)| l == label)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// A veth pair between two namespaces, `queues` rx and tx queues on both
    /// ends (native XDP on veth needs rx queues ≥ the peer's tx queues), tx
    /// checksum offload off on both so frames carry full checksums as on a
    /// wire, and both ends up.
    pub fn veth(&self, a: (&str, &str), b: (&str, &str), queues: u32) {
        let q = queues.to_string();
        let (na, nb) = (self.ns(a.0), self.ns(b.0));
        run(&[
            "ip",
            "link",
            "add",
            a.1,
            "netns",
            &na,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            b.1,
            "netns",
            &nb,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
        ]);
        for (ns, dev) in [a, b] {
            self.exec_ok(ns, &["ethtool", "-K", dev, "tx", "off"]);
            self.ip(ns, &["link", "set", dev, "up"]);
        }
    }

    /// Attaches an XDP program that passes everything to `dev` in namespace
    /// `short`: frames that the director's XDP program redirects or
    /// transmits into a veth arrive at its peer only if the peer has one.
    pub fn xdp_pass(&self, short: &str, dev: &str) {
        static OBJECT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        let obj = OBJECT.get_or_init(|| {
            let p =
                std::env::temp_dir().join(format!("lvc-tests-xdp-pass-{}.o", std::process::id()));
            std::fs::write(&p, lvc_ebpf::PASS_OBJECT).expect("write the XDP_PASS object");
            p
        });
        let obj = obj.to_string_lossy().into_owned();
        self.ip(
            short,
            &[
                "link", "set", "dev", dev, "xdpdrv", "obj", &obj, "sec", "xdp",
            ],
        );
    }

    /// A bridge `name` in namespace `short`.
    /// (Multicast snooping off: until the bridge has heard a host's MLD
    /// report it may not pass it IPv6 neighbour solicitations, which makes
    /// first contacts take seconds.)
    pub fn bridge(&self, short: &str, name: &str) {
        self.ip(
            short,
            &["link", "add", name, "type", "bridge", "mcast_snooping", "0"],
        );
        self.ip(short, &["link", "set", name, "up"]);
    }

    /// Enslaves `dev` to bridge `br` in namespace `short`.
    pub fn attach(&self, short: &str, dev: &str, br: &str) {
        self.ip(short, &["link", "set", dev, "master", br]);
    }

    /// Sets a sysctl in namespace `short`.
    pub fn sysctl(&self, short: &str, kv: &str) {
        self.exec_ok(short, &["sysctl", "-qw", kv]);
    }

    /// Captures one packet matching the tcpdump `filter` on `dev` in
    /// namespace `short`, calling `send` every half second until it comes
    /// (8 s at most: tcpdump takes a moment to start capturing); returns
    /// tcpdump's verbose decoding of it (empty if none came).
    pub fn capture(&self, short: &str, dev: &str, filter: &str, send: impl Fn()) -> String {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(short),
                "timeout",
                "8",
                "tcpdump",
                "-l",
                "-v",
                "-n",
                "-c",
                "1",
                "-i",
                dev,
                filter,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        let deadline = Instant::now() + Duration::from_secs(8);
        std::thread::sleep(Duration::from_millis(300));
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            send();
            std::thread::sleep(Duration::from_millis(500));
        }
        let out = child.wait_with_output().expect("tcpdump output");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `f` is true, polling, for at most `timeout`.
    pub fn wait_until(&self, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        f()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            delete_namespace(ns);
        }
        for entry in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(&self.id)
                && !std::thread::panicking()
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Runs a command, panicking with its stderr if it fails.
pub fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes namespaces left behind by killed test runs.
pub fn remove_stale_namespaces() {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(NS_PREFIX) {
            delete_namespace(name);
        }
    }
}

/// Kills whatever still runs in namespace `ns`, then deletes it. A process
/// left there (nginx's workers outlive their killed master) would keep the
/// namespace, and its interfaces, alive after `netns del`.
fn delete_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
    {
        let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !pids.is_empty() {
            let _ = Command::new("kill")
                .arg("-9")
                .args(&pids)
                .stderr(Stdio::null())
                .status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}
