//! XDP offload end to end: established flows move from lvc's workers to
//! the XDP program and nothing a user sees changes — bytes arrive intact
//! through drains, reloads and a real server's MAC changing, and the
//! counters add both paths up exactly. (These tests start lvc with
//! `--offload on` whatever `LVC_TEST_OFFLOAD` says.)

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, Topo, VIP, server_ip};
use std::time::{Duration, Instant};

fn lab(tag: &str, method: &str) -> Topo {
    let mut t = Topo::build(tag, Arms::Two, 2, 2);
    t.start_servers();
    match method {
        "dnat" => t.snat_at_servers(),
        "dr" => t.dr_at_servers(),
        _ => {}
    }
    t.start_lvc_with(&["--offload", "on"]);
    if method == "fullnat" {
        t.fullnat_pool();
    }
    t.add_service("tcp", 7, method);
    t.add_service("udp", 7, method);
    t
}

/// Echoes numbered lines over one TCP connection for `secs` seconds,
/// calling `during` once halfway; every line must come back unchanged.
fn stream(t: &Topo, secs: u64, during: impl FnOnce()) -> usize {
    let mut s = t.echo_session(7);
    let start = Instant::now();
    let mut during = Some(during);
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        let line = format!("line {n} {}\n", "x".repeat(n % 700));
        assert_eq!(s.echo(&line), line, "line {n} came back changed");
        n += 1;
        if start.elapsed() > Duration::from_secs(secs / 2)
            && let Some(f) = during.take()
        {
            f();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    n
}

/// A long TCP stream crosses from lvc's workers to XDP (the offload thread
/// installs it within a second of its handshake) and every byte arrives.
fn stream_moves_to_xdp(tag: &str, method: &str) {
    if !privileged(tag) {
        return;
    }
    let t = lab(tag, method);
    let lines = stream(&t, 4, || {
        // While it streams, `conns` says where the connection lives.
        let conns = t.ctl_ok(&["conns"]);
        assert!(
            conns
                .lines()
                .any(|l| l.contains(":7 ") && l.ends_with("xdp")),
            "{method}: the stream is listed on the XDP path:\n{conns}"
        );
    });
    let forwarded = t.counter("xdp_flow_forwarded");
    eprintln!(
        "{method}: {lines} lines echoed, {forwarded} packets forwarded by XDP\n{}",
        t.ctl_ok(&["status"])
    );
    assert!(
        t.counter("offload_installed") >= 1 && forwarded > lines as u64 / 2,
        "{method}: the stream's packets should be XDP's ({forwarded} of {lines} lines' worth):\n{}",
        t.ctl_ok(&["status"])
    );
}

#[test]
fn offload_nat() {
    stream_moves_to_xdp("offnat", "nat");
}

#[test]
fn offload_fullnat() {
    stream_moves_to_xdp("offfnat", "fullnat");
}

#[test]
fn offload_dnat() {
    stream_moves_to_xdp("offdnat", "dnat");
}

#[test]
fn offload_dr() {
    stream_moves_to_xdp("offdr", "dr");
}

/// Opens `n` short connections to VIP:7 one after another, each sending
/// 6000 random bytes, closing its side and reading the echo to the end;
/// returns how many came back changed.
const SHORT: &str = r#"
import os, socket, sys
bad = 0
for i in range(int(sys.argv[2])):
    data = os.urandom(6000)
    s = socket.create_connection((sys.argv[1], 7), timeout=10)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    back = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        back += c
    s.close()
    bad += back != data
print(bad)
"#;

/// Short connections (a request, its answer, the close) go through XDP
/// from the packet after their handshake: the worker that sees the
/// handshake end installs the connection's flows in the table it shares
/// with XDP, with no syscall and no wait for the offload thread (which
/// would come too late for them). Every byte arrives, and every connection
/// leaves XDP again when it closes.
fn short_connections_move_to_xdp(tag: &str, method: &str) {
    if !privileged(tag) {
        return;
    }
    let t = lab(tag, method);
    let n = 30;
    let out = t.lab.exec_ok(
        "client",
        &["/usr/bin/python3", "-c", SHORT, VIP, &n.to_string()],
    );
    assert_eq!(out.trim(), "0", "{method}: every echo comes back intact");
    // The offload thread takes the workers' word every 10 ms: the last
    // connections' may still be queued (the two counters would be read
    // either side of it).
    t.lab.wait_until(Duration::from_secs(5), || {
        t.counter("offload_installed") >= n
    });
    let (in_slots, installed) = (
        t.counter("offload_in_slots"),
        t.counter("offload_installed"),
    );
    let forwarded = t.counter("xdp_flow_forwarded");
    eprintln!("{method}: {n} connections\n{}", t.ctl_ok(&["status"]));
    assert!(
        in_slots >= n && installed == in_slots,
        "{method}: each connection is installed by its worker ({in_slots} of {installed} installed, {n} made)"
    );
    // 6000 bytes are five segments or more, each way (nat).
    assert!(
        forwarded >= 4 * n,
        "{method}: {forwarded} packets forwarded by XDP for {n} connections"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.counter("offload_connections") > 0 {
        assert!(
            Instant::now() < deadline,
            "{method}: closed connections leave XDP:\n{}",
            t.ctl_ok(&["status"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn short_connections_nat() {
    short_connections_move_to_xdp("offshort", "nat");
}

#[test]
fn short_connections_dr() {
    short_connections_move_to_xdp("offshortdr", "dr");
}

/// Draining the stream's server (weight 0) and reloading the saved
/// configuration keep an offloaded connection going, byte for byte.
#[test]
fn offloaded_stream_survives_drain_and_reload() {
    if !privileged("offloaded_stream_survives_drain_and_reload") {
        return;
    }
    let t = lab("offdrain", "nat");
    let saved = t.ctl_ok(&["save"]);
    let svc = format!("{VIP}:7");
    stream(&t, 6, || {
        for i in 0..2 {
            t.ctl_ok(&[
                "edit-server",
                "--tcp",
                &svc,
                "--real",
                &server_ip(i),
                "--weight",
                "0",
            ]);
        }
        t.lab.exec_input(
            "dir",
            &[
                &lvc_tests::bin("lvc-ctl").to_string_lossy(),
                "--socket",
                &t.socket.to_string_lossy(),
                "restore",
            ],
            saved.as_bytes(),
        );
    });
    assert!(t.counter("xdp_flow_forwarded") > 0);
}

/// The real server's MAC changes under an offloaded stream: the director
/// learns it, the flow leaves XDP (its MAC is stale), lvc forwards it with
/// the new one and offers it again; no line is lost.
#[test]
fn offloaded_stream_follows_a_mac_change() {
    if !privileged("offloaded_stream_follows_a_mac_change") {
        return;
    }
    let t = lab("offmac", "nat");
    let mac = "02:00:00:00:aa:01";
    let retired = t.counter("offload_retired");
    stream(&t, 6, || {
        for i in 0..2 {
            let ns = format!("rs{}", i + 1);
            t.lab.ip(&ns, &["link", "set", "dev", "e0", "address", mac]);
            t.lab.ip(
                "dir",
                &[
                    "neigh",
                    "replace",
                    &server_ip(i),
                    "lladdr",
                    mac,
                    "dev",
                    "d1",
                ],
            );
        }
    });
    assert!(
        t.counter("offload_retired") > retired,
        "the flow with the old MAC left XDP:\n{}",
        t.ctl_ok(&["status"])
    );
}

/// UDP datagrams of one flow, most of them forwarded by XDP: the service's
/// packet counters count each one exactly once, whichever path took it.
#[test]
fn counters_add_both_paths_up() {
    if !privileged("counters_add_both_paths_up") {
        return;
    }
    let t = lab("offcount", "nat");
    let n = 80;
    let srv = lvc_tests::bin("lvc-testsrv").to_string_lossy().into_owned();
    let out = t.lab.exec(
        "client",
        &[&srv, "probe", &format!("{VIP}:7"), "0", &n.to_string()],
    );
    let answered = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("median"))
        .count();
    assert_eq!(answered, n, "every datagram is echoed");
    // The offload thread folds XDP's counters in once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let v: serde_json::Value =
        serde_json::from_str(&t.ctl_ok(&["list", "--stats", "--json"])).unwrap();
    let svc = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"].as_str().is_some_and(|k| k.starts_with("udp")))
        .expect("the udp service")
        .clone();
    let st = &svc["stats"];
    assert_eq!(
        (st["packets_in"].as_u64(), st["packets_out"].as_u64()),
        (Some(n as u64), Some(n as u64)),
        "{svc}"
    );
    assert!(
        t.counter("xdp_flow_forwarded") >= n as u64,
        "most went through XDP"
    );
}
