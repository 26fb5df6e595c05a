//! Restart without loss: `kill -9` of lvc-dataplane and a start with the
//! same configuration; established TCP streams through the VIP continue
//! with their bytes intact (the new process takes the connections over
//! from the journal).

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, EchoSession, Topo, VIP, server_ip};
use serde_json::Value;
use std::time::Duration;

/// A line of `n` bytes that differs per stream and round.
fn line(stream: usize, round: usize, n: usize) -> String {
    let mut s: String = (0..n)
        .map(|i| char::from(b'a' + ((i * 7 + stream * 13 + round * 31) % 26) as u8))
        .collect();
    s.push('\n');
    s
}

fn conns(t: &Topo) -> Vec<Value> {
    let v: Value = serde_json::from_str(&t.ctl_ok(&["conns", "--json"])).unwrap();
    v["conns"].as_array().unwrap().clone()
}

/// Opens `n` streams to VIP:7, kills lvc with SIGKILL, starts it again
/// with the configuration it had, and checks every stream still echoes.
fn streams_survive(t: &mut Topo, n: usize) {
    let mut streams: Vec<EchoSession> = (0..n).map(|_| t.echo_session(7)).collect();
    for (i, s) in streams.iter_mut().enumerate() {
        let l = line(i, 0, 200);
        assert_eq!(s.echo(&l), l, "stream {i} before the restart");
    }
    let before = conns(t).len();
    assert!(before >= n, "{before} connections listed");
    // The journal is written every 200 ms.
    std::thread::sleep(Duration::from_millis(2500));
    let saved = t.ctl_ok(&["save"]);
    let cfg = std::env::temp_dir().join(format!("{}.toml", t.lab.ns("restart")));
    std::fs::write(&cfg, &saved).unwrap();
    t.lab.stop("lvc", 9);
    t.start_lvc_with(&["--config", cfg.to_str().unwrap()]);
    let _ = std::fs::remove_file(&cfg);
    let log = t.lab.log("lvc");
    assert!(
        log.contains("took over the connections of the previous process"),
        "{log}"
    );
    assert!(conns(t).len() >= n, "after: {:?}\n{log}", conns(t).len());
    for (i, s) in streams.iter_mut().enumerate() {
        for round in 1..3 {
            let l = line(i, round, 1000);
            assert_eq!(
                s.echo(&l),
                l,
                "stream {i} after the restart\n{}\n{}",
                t.ctl_ok(&["status"]),
                t.lab.log("lvc")
            );
        }
    }
}

fn lab(tag: &str, method: &str) -> Topo {
    let mut t = Topo::build(tag, Arms::Two, 2, 1);
    t.start_servers();
    match method {
        "dnat" => t.snat_at_servers(),
        "dr" => t.dr_at_servers(),
        _ => {}
    }
    t.start_lvc();
    if method == "fullnat" {
        t.fullnat_pool();
    }
    t.add_service("tcp", 7, method);
    t
}

#[test]
fn nat_streams_survive_kill_9() {
    if !privileged("nat_streams_survive_kill_9") {
        return;
    }
    let mut t = lab("rsnat", "nat");
    // tun cannot carry a stream here (this kernel does not decapsulate
    // IPIP): its connection is checked in the table.
    let tun = format!("{VIP}:9");
    t.ctl_ok(&["add-service", "--udp", &tun]);
    t.ctl_ok(&[
        "add-server",
        "--udp",
        &tun,
        "--real",
        &server_ip(0),
        "--method",
        "tun",
    ]);
    // (A UDP flow is journaled from its third packet.)
    for _ in 0..3 {
        let _ = t.lab.exec_input(
            "client",
            &[
                "socat",
                "-T",
                "0.2",
                "-",
                &format!("UDP:{VIP}:9,sourceport=5353"),
            ],
            b"into the tunnel\n",
        );
    }
    streams_survive(&mut t, 10);
    let tun_conn = conns(&t)
        .into_iter()
        .find(|c| c["method"] == "tun")
        .unwrap_or_else(|| panic!("the tun connection was not taken over: {:?}", conns(&t)));
    assert_eq!(tun_conn["client"], "10.1.0.2:5353");
}

#[test]
fn dr_streams_survive_kill_9() {
    if !privileged("dr_streams_survive_kill_9") {
        return;
    }
    let mut t = lab("rsdr", "dr");
    streams_survive(&mut t, 10);
}

#[test]
fn dnat_streams_survive_kill_9() {
    if !privileged("dnat_streams_survive_kill_9") {
        return;
    }
    let mut t = lab("rsdnat", "dnat");
    streams_survive(&mut t, 4);
}

#[test]
fn fullnat_streams_survive_kill_9() {
    if !privileged("fullnat_streams_survive_kill_9") {
        return;
    }
    let mut t = lab("rsfnat", "fullnat");
    streams_survive(&mut t, 4);
    // The ports the connections hold were claimed again, not handed out
    // twice.
    let st: Value = serde_json::from_str(&t.ctl_ok(&["status", "--json"])).unwrap();
    assert!(st["local_ports_in_use"].as_u64().unwrap() >= 4, "{st}");
}

/// A bpffs of the test's own (the daemons run under `ip netns exec`, which
/// hides /sys/fs/bpf), unmounted when dropped.
struct Bpffs(std::path::PathBuf);

impl Bpffs {
    fn mount(t: &Topo) -> Self {
        let dir = std::env::temp_dir().join(t.lab.ns("bpf"));
        std::fs::create_dir_all(&dir).unwrap();
        lvc_tests::run(&["mount", "-t", "bpf", "bpf", dir.to_str().unwrap()]);
        Self(dir)
    }

    /// The links pinned there (bpffs shows its own `*.debug` files too).
    fn pins(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".debug"))
            .collect();
        v.sort();
        v
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// With the XDP link pinned, a killed dataplane leaves its program
/// attached: offloaded streams go on while no dataplane runs; the others'
/// packets wait dropped (TCP sends them again) — no nat reply reaches the
/// client untranslated — and flow again once the next process has taken
/// the link and the connections over.
#[test]
fn streams_keep_flowing_while_no_dataplane_runs() {
    if !privileged("streams_keep_flowing_while_no_dataplane_runs") {
        return;
    }
    let mut t = Topo::build("rsheld", Arms::Two, 2, 1);
    t.start_servers();
    let fs = Bpffs::mount(&t);
    let dir = fs.0.to_str().unwrap().to_owned();
    t.start_lvc_with(&["--bpf-dir", &dir]);
    t.add_service("tcp", 7, "nat");
    let offload = lvc_tests::topo::offload_mode() == "on";
    let mut streams: Vec<EchoSession> = (0..6).map(|_| t.echo_session(7)).collect();
    // Enough packets for the flows to be offloaded (with offload on).
    for round in 0..10 {
        for (i, s) in streams.iter_mut().enumerate() {
            let l = line(i, round, 100);
            assert_eq!(
                s.echo(&l),
                l,
                "stream {i} round {round}\n{}",
                t.lab.log("lvc")
            );
        }
    }
    std::thread::sleep(Duration::from_millis(2500));
    let st: Value = serde_json::from_str(&t.ctl_ok(&["status", "--json"])).unwrap();
    let counter = |st: &Value, name: &str| {
        st["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c[0] == name)
            .and_then(|c| c[1].as_u64())
            .unwrap_or(0)
    };
    if offload {
        assert!(counter(&st, "offload_connections") >= 6, "{st}");
    }
    let cfg = std::env::temp_dir().join(format!("{}.toml", t.lab.ns("held")));
    std::fs::write(&cfg, t.ctl_ok(&["save"])).unwrap();
    t.lab.stop("lvc", 9);
    assert_eq!(
        fs.pins(),
        ["d0-driver", "d1-driver"],
        "the links stay pinned"
    );

    // No dataplane: offloaded streams are forwarded by XDP alone; the
    // others' packets wait.
    let sent: Vec<String> = (0..streams.len()).map(|i| line(i, 100, 300)).collect();
    for (s, l) in streams.iter_mut().zip(&sent) {
        s.send(l);
    }
    if offload {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let back: Vec<String> = streams.iter_mut().map(|s| s.receive()).collect();
            let _ = tx.send((streams, back));
        });
        let (back_streams, back) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("offloaded streams answer while no dataplane runs");
        assert_eq!(back, sent);
        streams = back_streams;
    } else {
        std::thread::sleep(Duration::from_secs(1));
    }
    t.start_lvc_with(&["--bpf-dir", &dir, "--config", cfg.to_str().unwrap()]);
    let _ = std::fs::remove_file(&cfg);
    let log = t.lab.log("lvc");
    assert!(
        log.contains("took over the pinned XDP link of the previous process")
            && log.contains("took over the connections of the previous process"),
        "{log}"
    );
    for (i, s) in streams.iter_mut().enumerate() {
        if !offload {
            assert_eq!(
                s.receive(),
                sent[i],
                "stream {i}: the line sent while no dataplane ran"
            );
        }
        for round in 200..203 {
            let l = line(i, round, 1000);
            assert_eq!(
                s.echo(&l),
                l,
                "stream {i} after the restart\n{}",
                t.lab.log("lvc")
            );
        }
    }
    // SIGQUIT: a stop for a restart (systemctl restart) — the pins stay,
    // the journal is complete, the next process takes over again.
    let cfg = std::env::temp_dir().join(format!("{}.toml", t.lab.ns("quit")));
    std::fs::write(&cfg, t.ctl_ok(&["save"])).unwrap();
    t.lab.stop("lvc", 3);
    assert_eq!(
        fs.pins(),
        ["d0-driver", "d1-driver"],
        "SIGQUIT keeps the links"
    );
    t.start_lvc_with(&["--bpf-dir", &dir, "--config", cfg.to_str().unwrap()]);
    let _ = std::fs::remove_file(&cfg);
    for (i, s) in streams.iter_mut().enumerate() {
        let l = line(i, 300, 500);
        assert_eq!(s.echo(&l), l, "stream {i} after SIGQUIT and a start");
    }
    // A clean stop takes the pins away and detaches the program.
    t.lab.stop("lvc", 15);
    assert!(fs.pins().is_empty(), "pins left after a clean stop");
    let link = t.lab.exec_ok("dir", &["ip", "link", "show", "d0"]);
    assert!(!link.contains("xdp"), "{link}");
}
