//! Real-server health checks with real servers in namespaces: a failed
//! server leaves rotation within interval × fall and comes back after
//! rise; established connections continue (quiesce) or are dropped
//! (`--on-fail remove`); the sorry server answers while every server is
//! down; http, udp, tcp and exec checks judge servers; the alert runs.

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, Topo, VIP, server_ip};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A lab with `servers` real servers (HTTP on 80, echo on 7) and lvc.
fn lab(tag: &str, servers: usize) -> Topo {
    let mut t = Topo::build(tag, Arms::Two, servers, 1);
    t.start_servers();
    t.start_lvc();
    t
}

fn list(t: &Topo) -> Value {
    serde_json::from_str(&t.ctl_ok(&["list", "--json"])).unwrap()
}

/// Server `addr`'s health in service `svc` (index in the listing).
fn health(t: &Topo, svc: usize, addr: &str) -> Value {
    let l = list(t);
    l["services"][svc]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == addr)
        .unwrap_or_else(|| panic!("{addr} not listed: {l}"))["health"]
        .clone()
}

/// Waits until server `addr` is up (or down); returns how long it took.
fn wait_health(t: &Topo, svc: usize, addr: &str, up: bool) -> Duration {
    let start = Instant::now();
    let ok = t
        .lab
        .wait_until(Duration::from_secs(15), || health(t, svc, addr)["up"] == up);
    assert!(
        ok,
        "{addr} never became {}: {}\n{}",
        if up { "up" } else { "down" },
        list(t),
        t.lab.log("lvc")
    );
    start.elapsed()
}

/// The real servers of the tracked connections, one per connection.
fn conn_servers(t: &Topo) -> Vec<String> {
    let c: Value = serde_json::from_str(&t.ctl_ok(&["conns", "--json"])).unwrap();
    c["conns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["real"].as_str().unwrap().to_owned())
        .collect()
}

/// A scratch directory for the exec checks' marker files and the alerts.
struct Scratch(PathBuf);

impl Scratch {
    fn new(t: &Topo) -> Self {
        let d = std::env::temp_dir().join(t.lab.ns("health"));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    /// An exec check that fails while `DIR/ADDR` exists.
    fn check(&self) -> String {
        format!("exec:test ! -e {}/$LVC_SERVER_ADDR", self.0.display())
    }

    fn set_down(&self, addr: &str, down: bool) {
        let f = self.0.join(addr);
        if down {
            std::fs::write(f, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    fn alerts(&self) -> String {
        std::fs::read_to_string(self.0.join("alerts")).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn failed_server_is_quiesced_then_returns_and_the_sorry_server_covers_all_down() {
    if !privileged("failed_server_is_quiesced_then_returns_and_the_sorry_server_covers_all_down") {
        return;
    }
    let t = lab("hcquiesce", 3);
    let dir = Scratch::new(&t);
    let svc = format!("{VIP}:7");
    let alert = format!(
        "echo \"$LVC_SERVER $LVC_STATE $LVC_REASON\" >> {}/alerts",
        dir.0.display()
    );
    // Checks every 0.2 s: out after 2 failures, back after 2 successes.
    t.ctl_ok(&[
        "add-service",
        "--tcp",
        &svc,
        "--check",
        &dir.check(),
        "--check-interval",
        "0.2",
        "--check-timeout",
        "0.2",
        "--fall",
        "2",
        "--rise",
        "2",
        "--alert",
        &alert,
    ]);
    for i in 0..2 {
        t.ctl_ok(&["add-server", "--tcp", &svc, "--real", &server_ip(i)]);
    }
    let (rs1, rs2) = (format!("{}:7", server_ip(0)), format!("{}:7", server_ip(1)));
    wait_health(&t, 0, &rs1, true);
    wait_health(&t, 0, &rs2, true);

    // Two long streams, one on each server (rr).
    let mut a = t.echo_session(7);
    let mut b = t.echo_session(7);
    assert_eq!(a.echo("a1\n"), "a1\n");
    assert_eq!(b.echo("b1\n"), "b1\n");
    let mut on = conn_servers(&t);
    on.sort();
    assert_eq!(on, [rs1.clone(), rs2.clone()]);

    // rs2's service fails: out within interval × fall (0.4 s; a generous
    // bound for a loaded machine), no new connections; the established
    // stream goes on (quiesce).
    dir.set_down(&server_ip(1), true);
    let took = wait_health(&t, 0, &rs2, false);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let h = health(&t, 0, &rs2);
    assert_eq!(h["last"], "command exited with 1", "{h}");
    let text = t.ctl_ok(&["list"]);
    assert!(
        text.contains("DOWN (exec:") && text.contains("Health"),
        "{text}"
    );
    let news: Vec<_> = (0..4).map(|_| t.echo_session(7)).collect();
    let mut fresh = news;
    for (i, s) in fresh.iter_mut().enumerate() {
        assert_eq!(s.echo(&format!("n{i}\n")), format!("n{i}\n"));
    }
    let on = conn_servers(&t);
    assert_eq!(on.iter().filter(|s| **s == rs2).count(), 1, "{on:?}");
    assert_eq!(on.iter().filter(|s| **s == rs1).count(), 5, "{on:?}");
    assert_eq!(a.echo("a2\n"), "a2\n");
    assert_eq!(b.echo("b2\n"), "b2\n", "quiesced: its stream continues");
    drop(fresh);

    // Back after rise successes; new connections reach it again.
    dir.set_down(&server_ip(1), false);
    wait_health(&t, 0, &rs2, true);
    let before = conn_servers(&t).iter().filter(|s| **s == rs2).count();
    let mut more: Vec<_> = (0..4).map(|_| t.echo_session(7)).collect();
    for s in more.iter_mut() {
        assert_eq!(s.echo("x\n"), "x\n");
    }
    let after = conn_servers(&t).iter().filter(|s| **s == rs2).count();
    assert!(after >= before + 2, "rs2 got {before} → {after}");
    drop(more);

    // The alert ran for each change, with the facts.
    let ok = t
        .lab
        .wait_until(Duration::from_secs(5), || dir.alerts().lines().count() >= 2);
    let alerts = dir.alerts();
    assert!(ok, "alerts: {alerts:?}");
    assert!(
        alerts.contains(&format!("{rs2} down command exited with 1")),
        "{alerts}"
    );
    assert!(alerts.contains(&format!("{rs2} up ok")), "{alerts}");

    // Everything down: the sorry server (rs3, not in the service) takes new
    // connections; the first server back takes them again.
    let sorry = format!("{}:7", server_ip(2));
    t.ctl_ok(&["edit-service", "--tcp", &svc, "--sorry-server", &sorry]);
    dir.set_down(&server_ip(0), true);
    dir.set_down(&server_ip(1), true);
    wait_health(&t, 0, &rs1, false);
    wait_health(&t, 0, &rs2, false);
    let mut s = t.echo_session(7);
    assert_eq!(s.echo("sorry?\n"), "sorry?\n");
    assert!(conn_servers(&t).contains(&sorry), "{:?}", conn_servers(&t));
    let l = list(&t);
    assert_eq!(l["services"][0]["sorry"]["weight"], 1, "{l}");
    assert!(t.ctl_ok(&["list"]).contains("sorry server, in use"));
    dir.set_down(&server_ip(0), false);
    wait_health(&t, 0, &rs1, true);
    let n = conn_servers(&t).iter().filter(|s| **s == rs1).count();
    let mut s2 = t.echo_session(7);
    assert_eq!(s2.echo("back\n"), "back\n");
    assert_eq!(
        conn_servers(&t).iter().filter(|s| **s == rs1).count(),
        n + 1
    );
    assert_eq!(s.echo("still\n"), "still\n", "the sorry stream goes on");

    // The checks are in the saved configuration, and restore takes them.
    let saved = t.ctl_ok(&["save"]);
    assert!(
        saved.contains("check = { type = \"exec:test")
            && saved.contains("interval = 0.2")
            && saved.contains("alert = ")
            && saved.contains(&format!(
                "sorry = {{ addr = \"{sorry}\", method = \"nat\" }}"
            )),
        "{saved}"
    );
    let out = t.lab.exec_input(
        "dir",
        &[
            lvc_tests::bin("lvc-ctl").to_str().unwrap(),
            "--socket",
            t.socket.to_str().unwrap(),
            "restore",
        ],
        saved.as_bytes(),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(t.ctl_ok(&["save"]), saved);
    // (Health survives a restore of the same servers.)
    assert_eq!(health(&t, 0, &rs2)["up"], false);
}

#[test]
fn on_fail_remove_drops_the_servers_connections() {
    if !privileged("on_fail_remove_drops_the_servers_connections") {
        return;
    }
    let t = lab("hcremove", 2);
    let dir = Scratch::new(&t);
    let svc = format!("{VIP}:7");
    t.ctl_ok(&["add-service", "--tcp", &svc]);
    t.ctl_ok(&["add-server", "--tcp", &svc, "--real", &server_ip(0)]);
    t.ctl_ok(&[
        "add-server",
        "--tcp",
        &svc,
        "--real",
        &server_ip(1),
        "--check",
        &dir.check(),
        "--check-interval",
        "0.2",
        "--check-timeout",
        "0.2",
        "--fall",
        "1",
        "--on-fail",
        "remove",
    ]);
    let (rs1, rs2) = (format!("{}:7", server_ip(0)), format!("{}:7", server_ip(1)));
    wait_health(&t, 0, &rs2, true);
    // Stream a on rs1, stream b on rs2 (weights steer them).
    let weight = |i: usize, w: &str| {
        t.ctl_ok(&[
            "edit-server",
            "--tcp",
            &svc,
            "--real",
            &server_ip(i),
            "--weight",
            w,
        ])
    };
    weight(1, "0");
    let mut a = t.echo_session(7);
    assert_eq!(a.echo("a\n"), "a\n");
    weight(1, "1");
    weight(0, "0");
    let mut b = t.echo_session(7);
    assert_eq!(b.echo("b\n"), "b\n");
    weight(0, "1");
    let mut on = conn_servers(&t);
    on.sort();
    assert_eq!(on, [rs1.clone(), rs2.clone()]);
    dir.set_down(&server_ip(1), true);
    wait_health(&t, 0, &rs2, false);
    // Its connection is gone from the table at once; the other stays.
    let ok = t
        .lab
        .wait_until(Duration::from_secs(5), || conn_servers(&t) == [rs1.clone()]);
    assert!(ok, "{:?}", conn_servers(&t));
    let l = list(&t);
    let srv = &l["services"][0]["servers"][1];
    assert_eq!(
        (srv["active_conns"].as_u64(), srv["inactive_conns"].as_u64()),
        (Some(0), Some(0)),
        "{l}"
    );
    assert_eq!(a.echo("a2\n"), "a2\n");
    // Unchecked rs1 shows no health, checked rs2 does.
    assert!(health(&t, 0, &rs1).is_null());
}

#[test]
fn http_udp_and_tcp_checks_judge_servers() {
    if !privileged("http_udp_and_tcp_checks_judge_servers") {
        return;
    }
    let mut t = lab("hckinds", 2);
    let fast = ["--check-interval", "0.2", "--check-timeout", "0.2"];
    let (web, dns) = (format!("{VIP}:80"), format!("{VIP}:7"));
    let (rs1, rs2) = (server_ip(0), server_ip(1));
    let add = |proto: &str, svc: &str, real: &str, check: &[&str]| {
        let mut args = vec!["add-server", proto, svc, "--real", real];
        args.extend_from_slice(check);
        args.extend_from_slice(&fast);
        t.ctl_ok(&args);
    };
    // HTTP: the servers answer 200 with their name.
    t.ctl_ok(&["add-service", "--tcp", &web]);
    add(
        "--tcp",
        &web,
        &rs1,
        &["--check", "http:/", "--check-expect", "rs1"],
    );
    add(
        "--tcp",
        &web,
        &rs2,
        &["--check", "http:/", "--check-status", "500-599"],
    );
    // UDP: rs1 echoes on 7; nothing listens on rs2's port 9 (port
    // unreachable).
    t.ctl_ok(&["add-service", "--udp", &dns]);
    add("--udp", &dns, &rs1, &["--check", "udp:6c7663"]);
    add(
        "--udp",
        &dns,
        &rs2,
        &["--check", "udp:6c7663", "--check-port", "9"],
    );
    let a = |s: &str, p: u16| format!("{s}:{p}");
    wait_health(&t, 0, &a(&rs2, 80), false);
    let h = health(&t, 0, &a(&rs2, 80));
    assert_eq!(h["last"], "HTTP status 200, expected 500-599", "{h}");
    assert_eq!(health(&t, 0, &a(&rs1, 80))["up"], true);
    assert_eq!(health(&t, 0, &a(&rs1, 80))["last"], "ok");
    wait_health(&t, 1, &a(&rs2, 7), false);
    let h = health(&t, 1, &a(&rs2, 7));
    assert!(
        h["last"].as_str().unwrap().contains("refused"),
        "port unreachable: {h}"
    );
    assert_eq!(health(&t, 1, &a(&rs1, 7))["last"], "ok");
    // HTTP traffic goes to the healthy server only.
    for _ in 0..6 {
        assert_eq!(t.curl(&format!("http://{web}/")).unwrap().trim(), "rs1");
    }
    // A body that lacks the expected text fails too.
    t.ctl_ok(&[
        "edit-server",
        "--tcp",
        &web,
        "--real",
        &rs1,
        "--check-expect",
        "rs9",
    ]);
    wait_health(&t, 0, &a(&rs1, 80), false);
    // Every server down, no sorry server: new connections are refused
    // (dropped), none goes to a failed server.
    assert!(t.curl(&format!("http://{web}/")).is_none());

    // TCP: a killed server is refused and taken out; restarted, it is back.
    t.ctl_ok(&["edit-service", "--tcp", &web, "--check", "tcp"]);
    t.ctl_ok(&[
        "edit-server",
        "--tcp",
        &web,
        "--real",
        &rs2,
        "--check",
        "tcp",
    ]);
    t.ctl_ok(&[
        "edit-server",
        "--tcp",
        &web,
        "--real",
        &rs1,
        "--check",
        "tcp",
    ]);
    wait_health(&t, 0, &a(&rs1, 80), true);
    wait_health(&t, 0, &a(&rs2, 80), true);
    t.lab.stop("srv-rs2", 9);
    wait_health(&t, 0, &a(&rs2, 80), false);
    let h = health(&t, 0, &a(&rs2, 80));
    assert_eq!(h["last"], "connect: connection refused", "{h}");
    let text = t.ctl_ok(&["list"]);
    assert!(
        text.contains("DOWN (tcp: connect: connection refused)"),
        "{text}"
    );
}
