//! IPv6 end to end: an IPv6 VIP and IPv6 real servers for every method that
//! supports them (nat, dnat, dr, fullnat), with curl -6 and socat through
//! the VIP — the same checks as the IPv4 suite.

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, Topo, VIP6, server_ip6};

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
        String::from_utf8_lossy(&out.stderr).contains("IPv6 clients persist per address"),
        "{out:?}"
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
    for (ns, dev) in [
        ("dir", "d1"),
        ("sw", "p0"),
        ("sw", "br0"),
        ("sw", "p1"),
        ("rs1", "e0"),
    ] {
        t.lab.ip(ns, &["link", "set", dev, "mtu", "1400"]);
    }
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
    // A datagram that fits goes through and comes back (waiting up to 4 s:
    // in a lab this fresh the first neighbour solicitation to the server
    // goes unanswered and the kernel's second one comes 1 s later; lvc
    // holds the frame meanwhile).
    let fits = vec![b'y'; 1300];
    let out = t.lab.exec_input(
        "client",
        &[
            "socat",
            "-t",
            "4",
            "-T",
            "4",
            "-",
            &format!("UDP6:[{VIP6}]:7"),
        ],
        &fits,
    );
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
