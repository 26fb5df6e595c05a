//! IPv6 end to end: an IPv6 VIP and IPv6 real servers for every method that
//! supports them (nat, dnat, dr, fullnat), with curl -6 and socat through
//! the VIP — the same checks as the IPv4 suite.

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, CLIENT6, Topo, VIP6, server_ip6};

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
    for (proto, port) in [("tcp", 80), ("tcp", 7), ("udp", 7)] {
        let svc = format!("[{VIP6}]:{port}");
        t.ctl_ok(&["add-service", &format!("--{proto}"), &svc]);
        for i in 0..t.servers {
            t.ctl_ok(&[
                "add-server",
                &format!("--{proto}"),
                &svc,
                "--real",
                &format!("[{}]", server_ip6(i)),
                "--method",
                method,
            ]);
        }
    }
    t
}

fn curl6(t: &Topo, url: &str) -> Option<String> {
    let out = t.lab.exec(
        "client",
        &["curl", "-6", "-g", "-s", "-m", "5", "--retry", "0", url],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sends `msg` in one UDP datagram from the client to VIP6:`port` and
/// returns socat's output (what came back, errors). It waits up to 4 s: in
/// a lab this fresh the first neighbour solicitation to a server may go
/// unanswered and the kernel's second one comes 1 s later; lvc holds the
/// frame meanwhile.
fn udp6_exchange(t: &Topo, port: u16, msg: &[u8]) -> std::process::Output {
    t.lab.exec_input(
        "client",
        &[
            "socat",
            "-t",
            "4",
            "-T",
            "4",
            "-",
            &format!("UDP6:[{VIP6}]:{port}"),
        ],
        msg,
    )
}

fn check(t: &Topo, method: &str) {
    // Round robin alternates between the two IPv6 servers.
    let answers: Vec<String> = (0..6)
        .map(|i| {
            curl6(t, &format!("http://[{VIP6}]/")).unwrap_or_else(|| {
                panic!(
                    "{method}: request {i} to [{VIP6}] failed:\n{}",
                    t.lab.log("lvc")
                )
            })
        })
        .collect();
    for pair in answers.windows(2) {
        assert_ne!(pair[0], pair[1], "{method}: rr alternates: {answers:?}");
    }
    assert!(
        answers.iter().all(|a| a == "rs1" || a == "rs2"),
        "{answers:?}"
    );

    // 256 KiB of random bytes through a TCP echo, intact.
    let data = noise(256 << 10);
    let out = t.lab.exec_input(
        "client",
        &[
            "socat",
            "-t",
            "10",
            "-T",
            "20",
            "-",
            &format!("TCP6:[{VIP6}]:7"),
        ],
        &data,
    );
    assert!(
        out.status.success() && out.stdout == data,
        "{method}: TCP echo over IPv6 ({} of {} bytes back): {}",
        out.stdout.len(),
        data.len(),
        String::from_utf8_lossy(&out.stderr)
    );

    // UDP datagrams round-trip.
    for i in 0..3 {
        let msg = format!("v6 datagram {i} {}", "y".repeat(200 * i));
        let out = t.lab.exec_input(
            "client",
            &["socat", "-T", "3", "-", &format!("UDP6:[{VIP6}]:7")],
            msg.as_bytes(),
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            msg,
            "{method}: UDP echo {i} over IPv6\n{}",
            t.lab.log("lvc")
        );
    }

    // Listings and the connection table show IPv6 endpoints.
    let list = t.ctl_ok(&["list"]);
    assert!(list.contains(&format!("TCP  [{VIP6}]:80 rr")), "{list}");
    assert!(
        list.contains(&format!("-> [{}]:80", server_ip6(0))),
        "{list}"
    );
    let conns = t.ctl_ok(&["conns", "--json"]);
    assert!(conns.contains(&format!("[{VIP6}]:")), "{conns}");
}

#[test]
fn ipv6_nat_two_armed() {
    if !privileged("ipv6_nat_two_armed") {
        return;
    }
    let t = lab("v6nat", Arms::Two, "nat");
    check(&t, "nat");
}

#[test]
fn ipv6_dnat_one_armed() {
    if !privileged("ipv6_dnat_one_armed") {
        return;
    }
    let t = lab("v6dnat", Arms::One, "dnat");
    check(&t, "dnat");
}

#[test]
fn ipv6_dr_two_armed() {
    if !privileged("ipv6_dr_two_armed") {
        return;
    }
    let t = lab("v6dr", Arms::Two, "dr");
    check(&t, "dr");
}

#[test]
fn ipv6_fullnat_two_armed_and_refusals() {
    if !privileged("ipv6_fullnat_two_armed_and_refusals") {
        return;
    }
    let t = lab("v6full", Arms::Two, "fullnat");
    check(&t, "fullnat");
    // What IPv6 services refuse, with reasons.
    let svc = format!("[{VIP6}]:8080");
    t.ctl_ok(&["add-service", "--tcp", &svc]);
    let out = t.ctl(&[
        "add-server",
        "--tcp",
        &svc,
        "--real",
        &format!("[{}]", server_ip6(0)),
        "--method",
        "tun",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("IPv4 only"),
        "{out:?}"
    );
    let out = t.ctl(&["add-server", "--tcp", &svc, "--real", "10.2.0.11"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("same address family"),
        "{out:?}"
    );
    let out = t.ctl(&[
        "add-service",
        "--tcp",
        &format!("[{VIP6}]:8081"),
        "--persistent",
        "--netmask",
        "255.255.255.0",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("an IPv6 service's --netmask is a prefix length 1..128"),
        "{out:?}"
    );
}

/// curl -6 from the client's address `src`: the answering server's name.
fn curl6_from(t: &Topo, src: &str) -> String {
    let url = format!("http://[{VIP6}]/");
    let out = t.lab.exec(
        "client",
        &[
            "curl",
            "-6",
            "-g",
            "-s",
            "-m",
            "5",
            "--retry",
            "0",
            "--interface",
            src,
            &url,
        ],
    );
    assert!(
        out.status.success(),
        "curl from {src} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        t.lab.log("lvc")
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `--persistent 60 --netmask 64` (ipvsadm's prefix-length form): every
/// client address in one /64 sticks to one server; a client of another /64
/// gets its own template (and, rr being at its next server, the other one).
#[test]
fn ipv6_persistence_by_prefix() {
    if !privileged("ipv6_persistence_by_prefix") {
        return;
    }
    let mut t = Topo::build("v6pers", Arms::Two, 2, 1);
    // A second client address in fd00:1::/64, and one in fd00:1:0:1::/64
    // that the director routes through the client.
    const SAME64: &str = "fd00:1::3";
    const OTHER64: &str = "fd00:1:0:1::2";
    t.lab.ip(
        "client",
        &[
            "-6",
            "addr",
            "add",
            &format!("{SAME64}/64"),
            "dev",
            "c0",
            "nodad",
        ],
    );
    t.lab.ip(
        "client",
        &[
            "-6",
            "addr",
            "add",
            &format!("{OTHER64}/128"),
            "dev",
            "c0",
            "nodad",
        ],
    );
    t.lab.ip(
        "dir",
        &[
            "-6",
            "route",
            "add",
            "fd00:1:0:1::/64",
            "via",
            CLIENT6,
            "dev",
            "d0",
        ],
    );
    t.start_servers();
    t.start_lvc();
    let svc = format!("[{VIP6}]:80");
    t.ctl_ok(&[
        "add-service",
        "--tcp",
        &svc,
        "--persistent",
        "60",
        "--netmask",
        "64",
    ]);
    for i in 0..t.servers {
        t.ctl_ok(&[
            "add-server",
            "--tcp",
            &svc,
            "--real",
            &format!("[{}]", server_ip6(i)),
        ]);
    }

    let same: Vec<String> = (0..12)
        .map(|i| curl6_from(&t, if i % 2 == 0 { CLIENT6 } else { SAME64 }))
        .collect();
    assert!(
        same.iter().all(|a| a == &same[0]) && (same[0] == "rs1" || same[0] == "rs2"),
        "{CLIENT6} and {SAME64} share a /64, so a server: {same:?}"
    );
    let other: Vec<String> = (0..4).map(|_| curl6_from(&t, OTHER64)).collect();
    assert!(
        other.iter().all(|a| a == &other[0]) && other[0] != same[0],
        "{OTHER64} is another /64: its own template, on the next rr server \
         (the /64 of {CLIENT6} is on {}): {other:?}",
        same[0]
    );

    // Listing, JSON and saved configuration show the prefix length.
    let list = t.ctl_ok(&["list"]);
    assert!(
        list.contains(&format!("TCP  [{VIP6}]:80 rr persistent 60 mask 64\n")),
        "{list}"
    );
    let json: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["list", "--json"])).unwrap();
    assert_eq!(json["services"][0]["netmask"], 64, "{json}");
    let saved = t.ctl_ok(&["save"]);
    assert!(saved.contains("persistent = 60\nnetmask = 64\n"), "{saved}");

    // A dotted mask is refused and changes nothing; 128 is one address.
    let out = t.ctl(&["edit-service", "--tcp", &svc, "--netmask", "255.255.255.0"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("prefix length 1..128 (ipvsadm's form), not 255.255.255.0"),
        "{out:?}"
    );
    assert_eq!(t.ctl_ok(&["save"]), saved);
    t.ctl_ok(&["edit-service", "--tcp", &svc, "--netmask", "/128"]);
    let list = t.ctl_ok(&["list"]);
    assert!(
        list.contains(&format!("TCP  [{VIP6}]:80 rr persistent 60\n")),
        "{list}"
    );
}

/// IPv6 routers never fragment: a packet too big for the server-side link
/// gets "packet too big" from the director and the client learns the path
/// MTU; a packet whose hop limit runs out gets "time exceeded".
#[test]
fn ipv6_packet_too_big_and_hop_limit() {
    if !privileged("ipv6_packet_too_big_and_hop_limit") {
        return;
    }
    let mut t = Topo::build("v6pmtu", Arms::Two, 1, 2);
    t.set_server_side_mtu(1400);
    t.start_servers();
    t.start_lvc();
    let svc = format!("[{VIP6}]:7");
    t.ctl_ok(&["add-service", "--udp", &svc]);
    t.ctl_ok(&[
        "add-server",
        "--udp",
        &svc,
        "--real",
        &format!("[{}]", server_ip6(0)),
    ]);
    let route = || t.lab.exec_ok("client", &["ip", "-6", "route", "get", VIP6]);
    let learned = t.lab.wait_until(std::time::Duration::from_secs(5), || {
        let _ = t.lab.exec_input(
            "client",
            &["socat", "-T", "1", "-", &format!("UDP6:[{VIP6}]:7")],
            &[b'x'; 1452],
        );
        route().contains("mtu 1400")
    });
    assert!(
        learned,
        "no path MTU learned: {}\n{}",
        route(),
        t.ctl_ok(&["status"])
    );
    // A datagram that fits goes through and comes back.
    let fits = vec![b'y'; 1300];
    let out = udp6_exchange(&t, 7, &fits);
    assert!(
        out.stdout == fits,
        "a datagram within the path MTU: {} bytes back\n{}\n{}",
        out.stdout.len(),
        t.ctl_ok(&["status"]),
        t.lab.log("lvc")
    );

    let seen = t.lab.capture("client", "c0", "icmp6 and ip6[40] == 3", || {
        let _ = t.lab.exec_input(
            "client",
            &[
                "socat",
                "-T",
                "1",
                "-",
                &format!("UDP6:[{VIP6}]:7,ipv6-unicast-hops=1"),
            ],
            b"short-lived\n",
        );
    });
    assert!(
        seen.contains("fd00:1::1 > fd00:1::2") && seen.contains("time exceeded"),
        "no time exceeded from the director: {seen:?}\n{}",
        t.ctl_ok(&["status"])
    );
}

/// A UDP request to a closed port of an IPv6 nat real server: its ICMPv6
/// "port unreachable" is translated (quoted packet and outer source back
/// to the VIP), so the client's socket sees "connection refused".
#[test]
fn ipv6_port_unreachable_from_a_real_server_reaches_the_client() {
    if !privileged("ipv6_port_unreachable_from_a_real_server_reaches_the_client") {
        return;
    }
    let t = lab("v6unreach", Arms::Two, "nat");
    let svc = format!("[{VIP6}]:9");
    t.ctl_ok(&["add-service", "--udp", &svc]);
    t.ctl_ok(&[
        "add-server",
        "--udp",
        &svc,
        "--real",
        &format!("[{}]", server_ip6(0)),
    ]);
    let out = udp6_exchange(&t, 9, b"anyone there?\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Connection refused"),
        "expected ECONNREFUSED, got: {err}\n{}",
        t.ctl_ok(&["status"])
    );
}

/// UDP datagrams larger than the MTU cross the director as IPv6 fragments
/// (a fragment header after the fixed header): the later fragments follow
/// the first one's server and the datagram arrives whole, and so does the
/// echo, fragmented by the server on its way back.
fn fragmented_datagrams6(tag: &str, method: &str) {
    if !privileged(tag) {
        return;
    }
    let t = lab(tag, Arms::Two, method);
    for i in 0..4 {
        let msg = noise(3000 + 700 * i);
        let out = udp6_exchange(&t, 7, &msg);
        assert!(
            out.stdout == msg,
            "{method}: datagram {i} ({} bytes) came back as {} bytes\n{}",
            msg.len(),
            out.stdout.len(),
            t.ctl_ok(&["status"])
        );
    }
}

#[test]
fn ipv6_fragmented_udp_dnat() {
    fragmented_datagrams6("v6fragdnat", "dnat");
}

#[test]
fn ipv6_fragmented_udp_fullnat() {
    fragmented_datagrams6("v6fragfnat", "fullnat");
}
