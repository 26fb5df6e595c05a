//! End-to-end: real clients (curl, socat) through lvc's VIP to real servers
//! in namespaces, for both forwarding methods, one- and two-armed.

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, CLIENT, DIRECTOR_CLIENT_SIDE, Topo, VIP, server_ip};
use std::time::Duration;

/// Random-looking bytes (deterministic, no crate needed).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn lab(tag: &str, arms: Arms, method: &str) -> Topo {
    let mut t = Topo::build(tag, arms, 2, 2);
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
    t.add_service("tcp", 80, method);
    t.add_service("tcp", 7, method);
    t.add_service("udp", 7, method);
    t
}

/// The paper's TC1: under round robin, consecutive requests alternate
/// between the two real servers.
fn tc1_round_robin(t: &Topo) {
    let answers: Vec<String> = (0..8)
        .map(|i| {
            t.curl(&format!("http://{VIP}/"))
                .unwrap_or_else(|| {
                    panic!("request {i} through the VIP failed:\n{}", t.lab.log("lvc"))
                })
                .trim()
                .to_owned()
        })
        .collect();
    for pair in answers.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin must alternate: {answers:?}");
    }
    assert_eq!(
        answers.iter().filter(|a| *a == "rs1").count(),
        4,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| *a == "rs2").count(),
        4,
        "{answers:?}"
    );
}

/// 1 MiB of random bytes through the VIP to a TCP echo and back, intact.
fn tcp_bytes_intact(t: &Topo) {
    let data = noise(1 << 20, 7);
    let out = t.lab.exec_input(
        "client",
        &[
            "socat",
            "-t",
            "10",
            "-T",
            "20",
            "-",
            &format!("TCP:{VIP}:7"),
        ],
        &data,
    );
    assert!(
        out.status.success(),
        "socat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), data.len(), "echoed byte count");
    assert!(out.stdout == data, "echoed bytes differ");
}

/// UDP datagrams round-trip through the VIP (each from a new port, so both
/// servers answer).
fn udp_round_trips(t: &Topo) {
    for i in 0..4 {
        let msg = format!("datagram {i} {}", "x".repeat(100 * i));
        let out = t.lab.exec_input(
            "client",
            &["socat", "-T", "3", "-", &format!("UDP:{VIP}:7")],
            msg.as_bytes(),
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            msg,
            "UDP echo {i} (stderr: {})\n{}",
            String::from_utf8_lossy(&out.stderr),
            t.lab.log("lvc")
        );
    }
}

/// Per-server counters: both servers got connections and packets both ways
/// (nat) or one way (dnat).
fn counters_move(t: &Topo, method: &str) {
    let json = t.ctl_ok(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("list --json is JSON");
    let svc = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == format!("tcp:{VIP}:80"))
        .expect("service listed");
    assert_eq!(svc["stats"]["conns"], 8, "{svc}");
    for srv in svc["servers"].as_array().unwrap() {
        assert_eq!(srv["stats"]["conns"], 4, "{srv}");
        assert!(
            srv["stats"]["packets_in"].as_u64().unwrap() >= 4 * 3,
            "{srv}"
        );
        let out = srv["stats"]["packets_out"].as_u64().unwrap();
        if method == "nat" || method == "fullnat" {
            assert!(out >= 4 * 2, "{method} replies pass the director: {srv}");
        } else {
            assert_eq!(out, 0, "{method} replies bypass lvc: {srv}");
        }
    }
    let text = t.ctl_ok(&["list", "--stats"]);
    assert!(text.contains(&format!("TCP  {VIP}:80")), "{text}");
}

fn full_path(tag: &str, arms: Arms, method: &str) {
    if !privileged(tag) {
        return;
    }
    let t = lab(tag, arms, method);
    tc1_round_robin(&t);
    tcp_bytes_intact(&t);
    udp_round_trips(&t);
    counters_move(&t, method);
}

#[test]
fn nat_two_armed() {
    full_path("nat2", Arms::Two, "nat");
}

#[test]
fn dnat_two_armed() {
    full_path("dnat2", Arms::Two, "dnat");
}

#[test]
fn dr_two_armed() {
    full_path("dr2", Arms::Two, "dr");
}

#[test]
fn dr_one_armed() {
    full_path("dr1", Arms::One, "dr");
}

#[test]
fn fullnat_two_armed() {
    full_path("fnat2", Arms::Two, "fullnat");
}

#[test]
fn fullnat_one_armed() {
    full_path("fnat1", Arms::One, "fullnat");
}

#[test]
fn nat_one_armed() {
    full_path("nat1", Arms::One, "nat");
}

#[test]
fn dnat_one_armed() {
    full_path("dnat1", Arms::One, "dnat");
}

/// Traffic that is not for a VIP reaches the director's own kernel: a
/// client talking to a server on the director, and the director talking
/// to a real server directly (whose replies look like nat replies).
#[test]
fn director_own_traffic_reaches_its_kernel() {
    if !privileged("director_own_traffic") {
        return;
    }
    let mut t = lab("own", Arms::Two, "nat");
    let srv = lvc_tests::bin("lvc-testsrv").to_string_lossy().into_owned();
    t.lab
        .spawn("dir", "dirsrv", &[&srv, "director", "--http", "8000"]);
    let url = format!("http://{DIRECTOR_CLIENT_SIDE}:8000/");
    assert!(
        t.lab
            .wait_until(Duration::from_secs(10), || t.curl(&url).is_some())
    );
    assert_eq!(t.curl(&url).unwrap().trim(), "director");
    let direct = t.lab.exec_ok(
        "dir",
        &[
            "curl",
            "-s",
            "-m",
            "5",
            &format!("http://{}/", server_ip(0)),
        ],
    );
    assert_eq!(direct.trim(), "rs1");
    // And VIP traffic still flows.
    assert!(t.curl(&format!("http://{VIP}/")).is_some());
}

/// Stopping the daemon, gracefully or not, leaves no XDP program attached.
#[test]
fn stopping_leaves_no_xdp_program() {
    if !privileged("stopping_leaves_no_xdp_program") {
        return;
    }
    let mut t = lab("stop", Arms::Two, "nat");
    let attached = |t: &Topo| {
        ["d0", "d1"].iter().any(|d| {
            let out = t.lab.exec_ok("dir", &["ip", "link", "show", "dev", d]);
            out.contains("xdp")
        })
    };
    assert!(attached(&t), "running lvc attaches XDP");
    let st = t.lab.stop("lvc", libc_sigterm()).expect("lvc was running");
    assert!(
        st.success(),
        "SIGTERM exits cleanly: {st:?}\n{}",
        t.lab.log("lvc")
    );
    assert!(!attached(&t), "XDP left attached after SIGTERM");
    assert!(!t.socket.exists(), "control socket removed");
    // With lvc gone, the kernel has the VIP's traffic (no black hole in XDP).
    t.start_lvc();
    assert!(attached(&t));
    t.lab.stop("lvc", 9);
    assert!(
        t.lab.wait_until(Duration::from_secs(5), || !attached(&t)),
        "XDP left attached after SIGKILL"
    );
}

fn libc_sigterm() -> i32 {
    15
}

/// Control errors are specific, have distinct exit codes, and change
/// nothing; garbage on the socket gets an error and forwarding goes on.
#[test]
fn control_errors_change_nothing() {
    if !privileged("control_errors_change_nothing") {
        return;
    }
    let t = lab("ctl", Arms::Two, "nat");
    let before = t.ctl_ok(&["list"]);
    let fail = |args: &[&str], code: i32, msg: &str| {
        let out = t.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    };
    fail(
        &["del-service", "--tcp", "10.9.0.99:80"],
        68,
        "service tcp 10.9.0.99:80 does not exist",
    );
    fail(
        &["add-service", "--tcp", &format!("{VIP}:80")],
        67,
        "already exists",
    );
    fail(
        &[
            "add-server",
            "--tcp",
            &format!("{VIP}:80"),
            "--real",
            "10.2.0.99",
            "--weight",
            "70000",
        ],
        66,
        "weight must be 0..=65535",
    );
    fail(
        &[
            "del-server",
            "--tcp",
            &format!("{VIP}:80"),
            "--real",
            "10.2.0.99",
        ],
        68,
        "does not exist",
    );
    assert_eq!(
        t.ctl_ok(&["list"]),
        before,
        "failed requests changed the configuration"
    );

    // Raw garbage on the socket.
    let sock = t.socket.to_string_lossy().into_owned();
    for garbage in [
        "hello\n",
        "{\"version\":1,\"request\":{\"verb\":\"explode\"}}\n",
        "{\"version\":99,\"request\":{\"verb\":\"list\"}}\n",
        "{\"version\":1,\"request\":{\"verb\":\"add-service\"\n",
    ] {
        let out = t.lab.exec_input(
            "dir",
            &["socat", "-t", "2", "-", &format!("UNIX-CONNECT:{sock}")],
            garbage.as_bytes(),
        );
        let reply = String::from_utf8_lossy(&out.stdout);
        assert!(reply.contains("\"error\""), "{garbage:?} → {reply}");
    }
    assert_eq!(t.ctl_ok(&["list"]), before);
    assert!(
        t.curl(&format!("http://{VIP}/")).is_some(),
        "forwarding continues"
    );

    // No daemon: a clear hint.
    let out = t.lab.exec(
        "dir",
        &[
            &lvc_tests::bin("lvc-ctl").to_string_lossy(),
            "--socket",
            "/nonexistent/lvc.sock",
            "list",
        ],
    );
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is lvc-dataplane running?"));
}

/// Deleting a `nat` real server does not cut its live connections off:
/// its replies keep going through lvc until the connection ends.
#[test]
fn deleted_nat_server_keeps_its_connections() {
    if !privileged("deleted_nat_server_keeps_its_connections") {
        return;
    }
    let t = lab("drain", Arms::Two, "nat");
    let mut session = t.echo_session(7);
    assert_eq!(session.echo("before\n"), "before\n");
    for i in 0..2 {
        t.ctl_ok(&[
            "del-server",
            "--tcp",
            &format!("{VIP}:7"),
            "--real",
            &server_ip(i),
        ]);
    }
    assert_eq!(
        session.echo("after\n"),
        "after\n",
        "the connection survives its server's removal"
    );
}

/// Deleting a service (or restoring a configuration without it) lets its
/// established connections finish, as IPVS does: its ports stay steered to
/// lvc while they last, no new connection is made, and the steering ends
/// with the last connection.
#[test]
fn deleted_service_lets_its_connections_finish() {
    if !privileged("deleted_service_lets_its_connections_finish") {
        return;
    }
    let t = lab("delsvc", Arms::Two, "nat");
    let svc = format!("{VIP}:7");
    let mut streams: Vec<_> = (0..4).map(|_| t.echo_session(7)).collect();
    for (i, s) in streams.iter_mut().enumerate() {
        assert_eq!(s.echo(&format!("before {i}\n")), format!("before {i}\n"));
    }
    t.ctl_ok(&["del-service", "--tcp", &svc]);
    let st: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["status", "--json"])).unwrap();
    assert_eq!(st["draining"][0], format!("tcp:{svc}"), "{st}");
    // Long after the deletion (offloaded flows included).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    for (i, s) in streams.iter_mut().enumerate() {
        for round in 0..20 {
            let l = format!("after {i} {round}\n");
            assert_eq!(s.echo(&l), l, "stream {i} after its service's deletion");
        }
    }
    // No new connection.
    let out = t.lab.exec(
        "client",
        &[
            "socat",
            "-T",
            "2",
            "-",
            &format!("TCP:{svc},connect-timeout=2"),
        ],
    );
    assert!(
        !out.status.success(),
        "a new connection to a deleted service"
    );
    // The last connection ends: the steering with it.
    t.ctl_ok(&["set-timeouts", "--tcpfin", "1", "--tcp", "2"]);
    drop(streams);
    let done = t.lab.wait_until(std::time::Duration::from_secs(20), || {
        let st: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["status", "--json"])).unwrap();
        st["draining"].as_array().is_some_and(Vec::is_empty)
    });
    assert!(done, "{}", t.ctl_ok(&["status"]));
}

/// A UDP datagram larger than the MTU crosses the director as fragments:
/// the later ones follow the first one's server and the datagram arrives
/// whole (and so does the echo, fragmented on its way back).
fn fragmented_datagrams(tag: &str, method: &str) {
    if !privileged(tag) {
        return;
    }
    let t = lab(tag, Arms::Two, method);
    for i in 0..4 {
        let msg = noise(3000 + 500 * i, i as u64 + 11);
        let out = t.lab.exec_input(
            "client",
            &["socat", "-T", "3", "-", &format!("UDP:{VIP}:7")],
            &msg,
        );
        assert!(
            out.stdout == msg,
            "datagram {i} ({} bytes) came back as {} bytes\n{}",
            msg.len(),
            out.stdout.len(),
            t.ctl_ok(&["status"])
        );
    }
}

#[test]
fn fragmented_udp_dnat() {
    fragmented_datagrams("fragdnat", "dnat");
}

#[test]
fn fragmented_udp_fullnat() {
    fragmented_datagrams("fragfnat", "fullnat");
}

/// 3000-byte (and bigger) datagrams through a `nat` VIP: the real
/// server's fragmented echo comes back whole and from the VIP.
#[test]
fn fragmented_udp_nat() {
    fragmented_datagrams("fragnat", "nat");
}

/// A `nat` real server serving the VIP on UDP port 53 resolves names
/// itself from port 53 (a resolver on the client side answers): lvc takes
/// only the replies of its own connections, the director's kernel routes
/// the rest — nothing is black-holed.
#[test]
fn nat_server_resolves_names_from_its_service_port() {
    if !privileged("nat_server_resolves_names_from_its_service_port") {
        return;
    }
    let mut t = Topo::build("natdns", Arms::Two, 1, 2);
    let srv = lvc_tests::bin("lvc-testsrv").to_string_lossy().into_owned();
    // The "resolver": a UDP echo on the client side, port 53.
    t.lab.spawn(
        "client",
        "resolver",
        &[&srv, "resolver", "--udp-echo", "53"],
    );
    t.start_lvc();
    t.add_service("udp", 53, "nat");
    // The real server: one socket on port 53 that answers what it gets
    // (the VIP's queries) and sends its own queries to the resolver.
    let script = format!(
        r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
s.settimeout(0.05)
print("ready", flush=True)
resolved = served = 0
end = time.time() + 20
while time.time() < end and (resolved < 10 or served < 10):
    if resolved < 10:
        s.sendto(b"query from rs1", ("{CLIENT}", 53))
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    if peer == ("{CLIENT}", 53) and data == b"query from rs1":
        resolved += 1
    else:
        s.sendto(b"answer to " + data, peer)
        served += 1
print("resolved", resolved, "served", served, flush=True)
"#
    );
    t.lab
        .spawn("rs1", "dns-rs1", &["/usr/bin/python3", "-c", &script]);
    // Waits until the script's output says `word`.
    let says = |word: &str, secs| {
        t.lab.wait_until(Duration::from_secs(secs), || {
            t.lab.log("dns-rs1").contains(word)
        })
    };
    assert!(
        says("ready", 10),
        "the real server's script did not start: {}",
        t.lab.log("dns-rs1")
    );
    let mut answers = 0;
    for i in 0..10 {
        let q = format!("name {i}");
        let out = t.lab.exec_input(
            "client",
            &["socat", "-t", "0.5", "-", &format!("UDP:{VIP}:53")],
            q.as_bytes(),
        );
        if out.stdout == format!("answer to {q}").as_bytes() {
            answers += 1;
        }
    }
    assert!(
        says("resolved", 25),
        "the real server's script did not finish: {}",
        t.lab.log("dns-rs1")
    );
    let log = t.lab.log("dns-rs1");
    let resolved: u32 = log
        .split_whitespace()
        .skip_while(|w| *w != "resolved")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        answers == 10 && resolved >= 10,
        "VIP queries answered: {answers} of 10; the server's own queries resolved: {resolved} ({log})\n{}",
        t.ctl_ok(&["status"])
    );
}
