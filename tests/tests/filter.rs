//! Packet filtering against a live daemon: per-service allow/deny lists,
//! the global filter (header rules in XDP, `--real` rules at scheduling),
//! named sets, a filter added under load, the connection rate limit, and
//! the filter in save/restore. Two client addresses: 10.1.0.2 and .3
//! (fd00:1::2 and ::3).

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, Topo, VIP, VIP6, server_ip};
use std::time::{Duration, Instant};

const OTHER: &str = "10.1.0.3";
const OTHER6: &str = "fd00:1::3";

fn lab(tag: &str, servers: usize) -> Topo {
    let mut t = Topo::build(tag, Arms::Two, servers, 2);
    t.lab
        .ip("client", &["addr", "add", "10.1.0.3/24", "dev", "c0"]);
    t.lab.ip(
        "client",
        &["-6", "addr", "add", "fd00:1::3/64", "dev", "c0", "nodad"],
    );
    t.start_servers();
    t.start_lvc();
    t
}

/// One HTTP request to `url` from client address `from`: the body, or
/// None if nothing came back.
fn get(t: &Topo, from: &str, url: &str) -> Option<String> {
    let out = t.lab.exec(
        "client",
        &["curl", "-s", "-m", "3", "--interface", from, url],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn listing(t: &Topo) -> serde_json::Value {
    serde_json::from_str(&t.ctl_ok(&["list", "--json"])).expect("list --json")
}

/// Service `key` (`tcp:10.9.0.10:80`) in a listing.
fn service(l: &serde_json::Value, key: &str) -> serde_json::Value {
    l["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["service"] == key)
        .unwrap_or_else(|| panic!("no service {key} in {l}"))
        .clone()
}

/// The `filtered` packets of service `key`.
fn filtered(t: &Topo, key: &str) -> u64 {
    service(&listing(t), key)["filtered"]["packets"]
        .as_u64()
        .expect("filtered packets")
}

fn rule_packets(t: &Topo, prio: u64) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&t.ctl_ok(&["filter", "list", "--json"])).expect("filter list");
    v["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["rule"]["prio"] == prio)
        .and_then(|r| r["stats"]["packets"].as_u64())
        .expect("the rule's packets")
}

fn fails(t: &Topo, args: &[&str], msg: &str) {
    let out = t.ctl(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(err.contains(msg), "{args:?}: expected `{msg}` in: {err}");
}

#[test]
fn allow_and_deny_lists_pick_the_clients_of_a_service() {
    if !privileged("allow_and_deny_lists_pick_the_clients_of_a_service") {
        return;
    }
    let t = lab("acl", 2);
    let url = format!("http://{VIP}/");
    let url6 = format!("http://[{VIP6}]/");
    let svc = format!("{VIP}:80");
    let svc6 = format!("[{VIP6}]:80");
    t.ctl_ok(&["add-service", "--tcp", &svc, "--allow", "10.1.0.2/32"]);
    t.ctl_ok(&["add-service", "--tcp", &svc6, "--deny", "fd00:1::3"]);
    for (s, rip) in [(&svc, server_ip(0)), (&svc6, "fd00:2::11".to_owned())] {
        t.ctl_ok(&["add-server", "--tcp", s, "--real", &rip, "--method", "nat"]);
    }
    // Only 10.1.0.2 reaches the IPv4 service; everyone but ::3 the IPv6 one.
    assert_eq!(get(&t, "10.1.0.2", &url).as_deref(), Some("rs1\n"));
    assert_eq!(get(&t, OTHER, &url), None, "10.1.0.3 is not allowed");
    // (The first IPv6 request waits for neighbour discovery.)
    let warm = t.lab.wait_until(Duration::from_secs(10), || {
        get(&t, "fd00:1::2", &url6).as_deref() == Some("rs1\n")
    });
    assert!(warm, "IPv6 through the VIP");
    assert_eq!(get(&t, OTHER6, &url6), None, "fd00:1::3 is denied");
    assert!(
        filtered(&t, &format!("tcp:{svc}")) > 0,
        "the refused SYNs are counted"
    );
    assert!(filtered(&t, &format!("tcp:{svc6}")) > 0);
    // Edited: a deny hole in a wider allow list; the longest prefix wins.
    t.ctl_ok(&[
        "edit-service",
        "--tcp",
        &svc,
        "--allow",
        "10.1.0.0/24",
        "--deny",
        "10.1.0.2/32",
    ]);
    assert_eq!(get(&t, "10.1.0.2", &url), None);
    assert_eq!(get(&t, OTHER, &url).as_deref(), Some("rs1\n"));
    // Lists cleared: everyone again.
    t.ctl_ok(&["edit-service", "--tcp", &svc, "--no-allow", "--no-deny"]);
    assert_eq!(get(&t, "10.1.0.2", &url).as_deref(), Some("rs1\n"));
    // Bad lists change nothing.
    fails(
        &t,
        &["edit-service", "--tcp", &svc, "--allow", "fd00:1::/64"],
        "address family",
    );
    fails(
        &t,
        &["edit-service", "--tcp", &svc, "--allow", "10.1.0.2/16"],
        "host bits",
    );
    assert_eq!(get(&t, OTHER, &url).as_deref(), Some("rs1\n"));
    let saved = t.ctl_ok(&["save"]);
    assert!(
        saved.contains("deny = [\"fd00:1::3/128\"]"),
        "the lists are saved:\n{saved}"
    );
}

#[test]
fn filter_rules_drop_by_header_and_by_the_translated_destination() {
    if !privileged("filter_rules_drop_by_header_and_by_the_translated_destination") {
        return;
    }
    let t = lab("filt", 2);
    t.add_service("tcp", 80, "nat");
    t.add_service("udp", 7, "nat");
    let url = format!("http://{VIP}/");
    // A header rule: .3 may not use TCP port 80.
    t.ctl_ok(&[
        "filter", "add", "--prio", "10", "--action", "drop", "--src", "10.1.0.3", "--proto", "tcp",
        "--dport", "80",
    ]);
    fails(
        &t,
        &["filter", "add", "--prio", "10", "--action", "drop"],
        "already exists",
    );
    fails(
        &t,
        &[
            "filter", "add", "--prio", "11", "--action", "drop", "--src", "@nope",
        ],
        "does not exist",
    );
    fails(
        &t,
        &[
            "filter", "add", "--prio", "11", "--action", "drop", "--dport", "80",
        ],
        "--dport needs",
    );
    assert!(get(&t, "10.1.0.2", &url).is_some());
    assert_eq!(get(&t, OTHER, &url), None);
    assert!(rule_packets(&t, 10) > 0, "the rule counts what it drops");
    assert!(
        filtered(&t, &format!("tcp:{VIP}:80")) > 0,
        "and so does the service"
    );
    // UDP from .3 still works: the rule names TCP.
    let out = t.lab.exec(
        "client",
        &[
            "sh",
            "-c",
            &format!("echo ping | socat -t1 - UDP:{VIP}:7,bind=10.1.0.3"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ping\n");
    t.ctl_ok(&["filter", "del", "--prio", "10"]);
    assert!(get(&t, OTHER, &url).is_some(), "deleted: .3 gets through");

    // The paper's 3.2 example: the filter looks at the translated
    // destination. Clients in a set never reach rs2: their connections
    // that would go there are refused, the others go to rs1.
    t.ctl_ok(&[
        "filter",
        "set",
        "add",
        "guests",
        "10.1.0.3/32",
        "192.0.2.0/24",
    ]);
    t.ctl_ok(&[
        "filter",
        "add",
        "--prio",
        "20",
        "--action",
        "drop",
        "--src",
        "@guests",
        "--real",
        &format!("{}:80", server_ip(1)),
    ]);
    // (A refused SYN is sent again; the scheduler's next pick takes it.)
    let mut guest = std::collections::BTreeMap::new();
    let mut other = std::collections::BTreeMap::new();
    for _ in 0..6 {
        let g = get(&t, OTHER, &url).unwrap_or_else(|| "refused".into());
        *guest.entry(g).or_insert(0) += 1;
    }
    for _ in 0..6 {
        let o = get(&t, "10.1.0.2", &url).unwrap_or_else(|| "refused".into());
        *other.entry(o).or_insert(0) += 1;
    }
    assert_eq!(
        guest.keys().collect::<Vec<_>>(),
        ["rs1\n"],
        "a guest never reaches rs2"
    );
    assert_eq!(
        other.keys().collect::<Vec<_>>(),
        ["rs1\n", "rs2\n"],
        "other clients reach both"
    );
    assert!(rule_packets(&t, 20) > 0);
    fails(
        &t,
        &["filter", "set", "destroy", "guests"],
        "used by filter rule 20",
    );
    // Saved and restored as it is.
    let saved = t.ctl_ok(&["save"]);
    assert!(
        saved.contains("[[filter]]") && saved.contains("\"10.1.0.3/32\","),
        "{saved}"
    );
    t.ctl_ok(&["filter", "flush"]);
    t.ctl_ok(&["filter", "set", "destroy", "guests"]);
    let file = t.lab.log_path("saved.toml");
    std::fs::write(&file, &saved).unwrap();
    t.ctl_ok(&["restore", &file.to_string_lossy()]);
    assert_eq!(t.ctl_ok(&["save"]), saved, "restore gives back the filter");
    let before = rule_packets(&t, 20);
    for _ in 0..4 {
        assert_eq!(get(&t, OTHER, &url).as_deref(), Some("rs1\n"));
    }
    assert!(rule_packets(&t, 20) > before, "the restored rule works");
}

#[test]
fn a_filter_added_under_load_drops_only_what_it_matches() {
    if !privileged("a_filter_added_under_load_drops_only_what_it_matches") {
        return;
    }
    let t = lab("fload", 2);
    t.add_service("tcp", 7, "nat");
    t.add_service("tcp", 80, "nat");
    // Established streams from 10.1.0.2, one line a round.
    let mut sessions: Vec<_> = (0..4).map(|_| t.echo_session(7)).collect();
    for (i, s) in sessions.iter_mut().enumerate() {
        let line = format!("hello {i}\n");
        assert_eq!(s.echo(&line), line);
    }
    // A rule over .3, and a rule with --real over rs1 for .3 only.
    t.ctl_ok(&[
        "filter",
        "add",
        "--prio",
        "5",
        "--action",
        "drop",
        "--src",
        "10.1.0.3/32",
    ]);
    t.ctl_ok(&[
        "filter",
        "add",
        "--prio",
        "6",
        "--action",
        "drop",
        "--src",
        "10.1.0.3/32",
        "--real",
        &server_ip(0),
    ]);
    for round in 0..20 {
        for (i, s) in sessions.iter_mut().enumerate() {
            let line = format!("round {round} session {i} {}\n", "x".repeat(200));
            assert_eq!(s.echo(&line), line, "established streams keep every byte");
        }
    }
    let url = format!("http://{VIP}/");
    assert!(get(&t, "10.1.0.2", &url).is_some());
    assert_eq!(get(&t, OTHER, &url), None);
    // A drop rule naming the real server of established connections ends
    // them (ordinary clients this time).
    let echo = format!("tcp:{VIP}:7");
    let before = service(&listing(&t), &echo)["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["active_conns"].as_u64().unwrap())
        .sum::<u64>();
    assert!(before >= 4, "the sessions are active: {before}");
    t.ctl_ok(&[
        "filter",
        "add",
        "--prio",
        "7",
        "--action",
        "drop",
        "--proto",
        "tcp",
        "--dport",
        "7",
        "--real",
        &format!("{}:7", server_ip(0)),
    ]);
    let ok = t.lab.wait_until(Duration::from_secs(5), || {
        service(&listing(&t), &echo)["servers"][0]["active_conns"].as_u64() == Some(0)
    });
    assert!(ok, "rs1's connections on port 7 are gone: {}", listing(&t));
    // rs2's stay, and answer; rs1's do not (their clients wait in vain:
    // each session is read on its own thread). Offloaded flows of ended
    // connections leave XDP within a second.
    std::thread::sleep(Duration::from_millis(1500));
    let rs2 = service(&listing(&t), &echo)["servers"][1]["active_conns"]
        .as_u64()
        .unwrap();
    assert!(rs2 > 0 && rs2 < before, "{rs2} of {before} on rs2");
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, mut s) in sessions.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let line = format!("after {i}\n");
            s.send(&line);
            let _ = tx.send(s.receive() == line);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut answered = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(true) => answered += 1,
            Ok(false) => {}
            Err(_) => break,
        }
    }
    assert_eq!(answered, rs2, "exactly the sessions on rs2 still answer");
}

#[test]
fn conn_rate_holds_the_rate_of_new_connections() {
    if !privileged("conn_rate_holds_the_rate_of_new_connections") {
        return;
    }
    let t = lab("crate", 2);
    let svc = format!("{VIP}:7");
    t.ctl_ok(&[
        "add-service",
        "--udp",
        &svc,
        "--conn-rate",
        "200",
        "--conn-burst",
        "20",
    ]);
    for i in 0..2 {
        t.ctl_ok(&[
            "add-server",
            "--udp",
            &svc,
            "--real",
            &server_ip(i),
            "--method",
            "nat",
        ]);
    }
    // 1000 new flows a second (a new source port each) for 5 seconds
    // (at most 20 000 ports: the loop stops there).
    let script = format!(
        "import socket,time\n\
         end=time.time()+5\n\
         n=0\n\
         t0=time.time()\n\
         while time.time()<end and n<20000:\n\
         \x20   s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         \x20   s.bind(('10.1.0.2',20000+n))\n\
         \x20   s.sendto(b'x',('{VIP}',7))\n\
         \x20   s.close()\n\
         \x20   n+=1\n\
         \x20   time.sleep(max(0,t0+n/1000-time.time()))\n\
         print(n, time.time()-t0)\n"
    );
    let started = Instant::now();
    let out = t.lab.exec_ok("client", &["python3", "-c", &script]);
    let secs: f64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let sent: u64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    let l = service(&listing(&t), &format!("udp:{svc}"));
    let conns = l["stats"]["conns"].as_u64().unwrap();
    let refused = l["filtered"]["packets"].as_u64().unwrap();
    let want = 200.0 * secs + 20.0;
    eprintln!(
        "sent {sent} in {secs:.2} s: {conns} connections (want {want:.0}), {refused} refused"
    );
    assert!(
        (conns as f64 - want).abs() <= want * 0.05,
        "{conns} connections in {secs:.2} s at 200/s"
    );
    assert_eq!(conns + refused, sent, "every flow either made or counted");
    // Removed: everything goes.
    t.ctl_ok(&["edit-service", "--udp", &svc, "--conn-rate", "0"]);
    let out = t.lab.exec(
        "client",
        &["sh", "-c", &format!("echo ping | socat -t1 - UDP:{VIP}:7")],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ping\n");
}

#[test]
fn client_classes_send_each_client_to_its_own_pool() {
    if !privileged("client_classes_send_each_client_to_its_own_pool") {
        return;
    }
    let t = lab("class", 2);
    let (rs1, rs2) = (server_ip(0), server_ip(1));
    let (rs1v6, rs2v6) = ("fd00:2::11", "fd00:2::12");
    for (vip, class, r_default, r_class) in [
        (
            format!("{VIP}:80"),
            "10.1.0.3/32",
            rs1.as_str(),
            rs2.as_str(),
        ),
        (format!("[{VIP6}]:80"), "fd00:1::3", rs1v6, rs2v6),
    ] {
        t.ctl_ok(&["add-service", "--tcp", &vip, "--scheduler", "wlc"]);
        t.ctl_ok(&[
            "add-service",
            "--tcp",
            &vip,
            "--from",
            class,
            "--persistent",
            "60",
        ]);
        t.ctl_ok(&[
            "add-server",
            "--tcp",
            &vip,
            "--real",
            r_default,
            "--method",
            "nat",
        ]);
        t.ctl_ok(&[
            "add-server",
            "--tcp",
            &vip,
            "--from",
            class,
            "--real",
            r_class,
            "--method",
            "nat",
        ]);
    }
    let url = format!("http://{VIP}/");
    let url6 = format!("http://[{VIP6}]/");
    // (The first IPv6 request waits for neighbour discovery on both sides.)
    let warm = t.lab.wait_until(Duration::from_secs(10), || {
        get(&t, "fd00:1::2", &url6).is_some() && get(&t, OTHER6, &url6).is_some()
    });
    assert!(warm, "IPv6 through the VIP");
    for _ in 0..4 {
        assert_eq!(get(&t, "10.1.0.2", &url).as_deref(), Some("rs1\n"));
        assert_eq!(get(&t, OTHER, &url).as_deref(), Some("rs2\n"));
        assert_eq!(get(&t, "fd00:1::2", &url6).as_deref(), Some("rs1\n"));
        assert_eq!(get(&t, OTHER6, &url6).as_deref(), Some("rs2\n"));
    }
    // A policer on a class polices that class only.
    t.ctl_ok(&[
        "shape",
        "add-police",
        "--tcp",
        &format!("{VIP}:80"),
        "--from",
        "10.1.0.3/32",
        "--rate",
        "100mbit",
        "--burst",
        "64kb",
    ]);
    let policed = || {
        let v: serde_json::Value =
            serde_json::from_str(&t.ctl_ok(&["shape", "list", "--json"])).unwrap();
        v["police"][0]["passed_packets"].as_u64().unwrap()
    };
    assert_eq!(get(&t, "10.1.0.2", &url).as_deref(), Some("rs1\n"));
    assert_eq!(policed(), 0, "the default's packets are not the class's");
    assert_eq!(get(&t, OTHER, &url).as_deref(), Some("rs2\n"));
    assert!(policed() > 0, "the class's packets are policed");
    t.ctl_ok(&[
        "shape",
        "del-police",
        "--tcp",
        &format!("{VIP}:80"),
        "--from",
        "10.1.0.3/32",
    ]);
    // Each class keeps its own counters and settings.
    let l = listing(&t);
    let class = service(&l, &format!("tcp:{VIP}:80 from 10.1.0.3/32"));
    assert_eq!(class["persistent"], 60);
    assert!(class["stats"]["conns"].as_u64() >= Some(5), "{class}");
    assert_eq!(service(&l, &format!("tcp:{VIP}:80"))["scheduler"], "wlc");
    // A wider class with a deny hole: the longest prefix picks the class,
    // the class's list refuses .3 (lvc applies a class's lists itself).
    let vip = format!("{VIP}:80");
    fails(
        &t,
        &["add-service", "--tcp", &vip, "--from", "10.1.0.3/32"],
        "already exists",
    );
    fails(
        &t,
        &[
            "add-service",
            "--tcp",
            &format!("{VIP}:80,81"),
            "--from",
            "10.1.0.0/24",
        ],
        "same ports",
    );
    t.ctl_ok(&[
        "add-service",
        "--tcp",
        &vip,
        "--from",
        "10.1.0.0/24",
        "--deny",
        "10.1.0.2/32",
    ]);
    t.ctl_ok(&[
        "add-server",
        "--tcp",
        &vip,
        "--from",
        "10.1.0.0/24",
        "--real",
        &rs2,
        "--method",
        "nat",
    ]);
    assert_eq!(get(&t, "10.1.0.2", &url), None, "its class denies .2");
    assert_eq!(
        get(&t, OTHER, &url).as_deref(),
        Some("rs2\n"),
        "the /32 class wins"
    );
    // Saved with the classes; restored the same.
    let saved = t.ctl_ok(&["save"]);
    assert!(saved.contains("from = [\"10.1.0.3/32\"]"), "{saved}");
    let file = t.lab.log_path("classes.toml");
    std::fs::write(&file, &saved).unwrap();
    t.ctl_ok(&["clear"]);
    t.ctl_ok(&["restore", &file.to_string_lossy()]);
    assert_eq!(t.ctl_ok(&["save"]), saved);
    // Deleting a class leaves the others.
    t.ctl_ok(&["del-service", "--tcp", &vip, "--from", "10.1.0.0/24"]);
    t.ctl_ok(&["del-service", "--tcp", &vip, "--from", "10.1.0.3/32"]);
    assert_eq!(
        get(&t, OTHER, &url).as_deref(),
        Some("rs1\n"),
        "back to the default"
    );
    assert_eq!(get(&t, "10.1.0.2", &url).as_deref(), Some("rs1\n"));
}
