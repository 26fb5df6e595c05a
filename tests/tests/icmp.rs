//! ICMP through the director: errors about tracked flows reach the right
//! party translated, and lvc sends time-exceeded and fragmentation-needed
//! like a router (PMTU discovery through the director).

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, Topo, VIP, VIP6, server_ip, server_ip6};
use std::time::Duration;

fn lab(tag: &str) -> Topo {
    let mut t = Topo::build(tag, Arms::Two, 1, 2);
    t.start_servers();
    t.start_lvc();
    t
}

/// A UDP request to a closed port of a nat real server: its "port
/// unreachable" comes back as from the VIP, so the client's socket sees
/// "connection refused" (untranslated, the kernel would not match it).
#[test]
fn port_unreachable_from_a_real_server_reaches_the_client() {
    if !privileged("port_unreachable_from_a_real_server_reaches_the_client") {
        return;
    }
    let t = lab("unreach");
    t.add_service("udp", 9, "nat");
    let out = t.lab.exec_input(
        "client",
        &["socat", "-T", "3", "-", &format!("UDP:{VIP}:9")],
        b"anyone there?\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Connection refused"),
        "expected ECONNREFUSED, got: {err}"
    );
    let st: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["status", "--json"])).unwrap();
    let redirected_real = st["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "xdp_redirect_real")
        .unwrap()[1]
        .as_u64()
        .unwrap();
    assert!(redirected_real >= 1, "the ICMP error went through lvc");
}

/// Sends a 1500-byte UDP datagram with DF to VIP:7 from the client and
/// waits for the client's kernel to learn path MTU `mtu` for the VIP.
fn client_learns_path_mtu(t: &Topo, mtu: u32) -> Result<(), String> {
    let big = vec![b'x'; 1472];
    let target = format!("UDP:{VIP}:7,mtudiscover=2");
    let _ = t
        .lab
        .exec_input("client", &["socat", "-T", "1", "-", &target], &big);
    let route = || t.lab.exec_ok("client", &["ip", "route", "get", VIP]);
    if t.lab.wait_until(Duration::from_secs(3), || {
        route().contains(&format!("mtu {mtu}"))
    }) {
        Ok(())
    } else {
        Err(format!(
            "no path MTU {mtu} learned: {}\n{}",
            route(),
            t.ctl_ok(&["status"])
        ))
    }
}

/// A packet through the VIP with TTL 1: lvc answers "time exceeded" from
/// its own address, as a router does.
#[test]
fn ttl_expiring_at_the_director_gets_time_exceeded() {
    if !privileged("ttl_expiring_at_the_director_gets_time_exceeded") {
        return;
    }
    let t = lab("ttl");
    t.add_service("udp", 7, "nat");
    let seen = t.lab.capture("client", "c0", "icmp and icmp[0] == 11", || {
        let _ = t.lab.exec_input(
            "client",
            &["socat", "-T", "1", "-", &format!("UDP:{VIP}:7,ttl=1")],
            b"short-lived\n",
        );
    });
    assert!(
        seen.contains("10.1.0.1 > 10.1.0.2") && seen.contains("time exceeded"),
        "no time exceeded from the director: {seen:?}\n{}",
        t.ctl_ok(&["status"])
    );
}

/// A flood of expiring packets gets a bounded number of time-exceeded
/// errors (the kernel's 1000 per second and burst of 50, per worker): the
/// director is no reflector.
#[test]
fn icmp_errors_are_rate_limited() {
    if !privileged("icmp_errors_are_rate_limited") {
        return;
    }
    let t = lab("icmprl");
    t.add_service("udp", 7, "nat");
    // 2000 datagrams with TTL 1 as fast as Python sends them, then count
    // the time-exceeded errors that come back within a second.
    let script = format!(
        r#"
import socket, time
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
r.settimeout(0.2)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
t0 = time.time()
for i in range(2000):
    s.sendto(b"x", ("{VIP}", 7))
sent = time.time() - t0
n = 0
end = time.time() + 1.0
while time.time() < end:
    try:
        d = r.recv(2048)
    except socket.timeout:
        continue
    if d[20] == 11:
        n += 1
print(n, sent)
"#
    );
    let out = t.lab.exec_ok("client", &["python3", "-c", &script]);
    let mut it = out.split_whitespace();
    let n: u64 = it.next().unwrap().parse().unwrap();
    let sent: f64 = it.next().unwrap().parse().unwrap();
    // The burst, plus what 1000 per second refills while sending, per
    // worker (the lab has two), with room for timing.
    let most = (2.0 * (50.0 + 1000.0 * sent)) as u64 + 20;
    assert!(
        n >= 40 && n <= most,
        "{n} time-exceeded for 2000 packets in {sent:.3} s"
    );
    let st: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["status", "--json"])).unwrap();
    let limited = st["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "drop_icmp_rate_limited")
        .and_then(|c| c[1].as_u64())
        .unwrap();
    assert!(limited > 0, "{st}");
    eprintln!("{n} time-exceeded for 2000 packets sent in {sent:.3} s; {limited} limited");
}

/// A datagram too big for the server-side link, sent with DF: lvc answers
/// "fragmentation needed" with the link's MTU and the client's kernel
/// learns the path MTU to the VIP.
#[test]
fn pmtu_discovery_through_the_director() {
    if !privileged("pmtu_discovery_through_the_director") {
        return;
    }
    // The server side gets a 1400-byte MTU before lvc starts, so its view
    // of the links has it from the first packet (a change made later is
    // picked up from netlink notifications within milliseconds).
    let mut t = Topo::build("pmtu", Arms::Two, 1, 2);
    t.set_server_side_mtu(1400);
    t.start_servers();
    t.start_lvc();
    t.add_service("udp", 7, "nat");
    client_learns_path_mtu(&t, 1400).unwrap();
    // And a datagram that fits goes through and comes back.
    let fits = vec![b'y'; 1300];
    let out = t.lab.exec_input(
        "client",
        &["socat", "-T", "3", "-", &format!("UDP:{VIP}:7")],
        &fits,
    );
    assert!(
        out.stdout == fits,
        "{} bytes back\n{}\n{}",
        out.stdout.len(),
        t.ctl_ok(&["status"]),
        t.lab.exec_ok("dir", &["ip", "neigh"])
    );
}

/// LVS-TUN: requests reach the real server wrapped in IPIP from the
/// director, inner packet as the client sent it (this kernel cannot
/// decapsulate IPIP, so the test reads the packet on the wire); a DF
/// packet that no longer fits once wrapped gets "fragmentation needed"
/// with the tunnel's MTU.
#[test]
fn tun_encapsulates_in_ipip() {
    if !privileged("tun_encapsulates_in_ipip") {
        return;
    }
    let t = lab("tun");
    t.ctl_ok(&["add-service", "--udp", &format!("{VIP}:7")]);
    t.ctl_ok(&[
        "add-server",
        "--udp",
        &format!("{VIP}:7"),
        "--real",
        "10.2.0.11",
        "--method",
        "tun",
    ]);
    assert!(t.ctl_ok(&["list"]).contains("Tunnel"));
    let seen = t.lab.capture("rs1", "e0", "ip proto 4", || {
        let _ = t.lab.exec_input(
            "client",
            &["socat", "-T", "1", "-", &format!("UDP:{VIP}:7")],
            b"through the tunnel\n",
        );
    });
    assert!(
        seen.contains("10.2.0.1 > 10.2.0.11"),
        "outer header: {seen}"
    );
    assert!(
        seen.contains("10.1.0.2.") && seen.contains("> 10.9.0.10.7: UDP"),
        "inner packet: {seen}"
    );
    assert!(
        !seen.contains("bad cksum") && !seen.contains("incorrect"),
        "checksums: {seen}"
    );

    client_learns_path_mtu(&t, 1480).unwrap();

    // Without DF (IP_PMTUDISC_OMIT: the interface's MTU, DF clear — the
    // learned path MTU is ignored): the wrapped packet is 1520 bytes, so
    // the outer packet leaves in fragments, as IPVS's tunnel does.
    let big = vec![b'z'; 1472];
    let seen = t
        .lab
        .capture("rs1", "e0", "ip proto 4 and ip[6:2] & 0x2000 != 0", || {
            let _ = t.lab.exec_input(
                "client",
                &[
                    "socat",
                    "-T",
                    "1",
                    "-",
                    &format!("UDP:{VIP}:7,mtudiscover=5"),
                ],
                &big,
            );
        });
    assert!(
        seen.contains("10.2.0.1 > 10.2.0.11") && seen.contains("flags [+]"),
        "the outer packet's first fragment: {seen}\n{}",
        t.ctl_ok(&["status"])
    );
}

/// A datagram too big for the server-side link with DF clear is split
/// into fragments by lvc, as a router would, and arrives whole (fullnat:
/// the server's fragmented echo comes back through lvc too).
#[test]
fn oversize_datagrams_without_df_are_fragmented() {
    if !privileged("oversize_datagrams_without_df_are_fragmented") {
        return;
    }
    let mut t = Topo::build("fragout", Arms::Two, 1, 2);
    t.set_server_side_mtu(1400);
    t.start_servers();
    t.start_lvc();
    t.fullnat_pool();
    t.add_service("udp", 7, "fullnat");
    // A small datagram first (while the server's MAC resolves, lvc holds
    // frames; -t 4 waits for the echo), then three that need splitting.
    for n in [100usize, 1472, 1401, 3000] {
        let msg: Vec<u8> = (0..n).map(|i| (i * 31 + n) as u8).collect();
        let out = t.lab.exec_input(
            "client",
            &[
                "socat",
                "-t",
                "4",
                "-T",
                "4",
                "-",
                &format!("UDP:{VIP}:7,mtudiscover=0"),
            ],
            &msg,
        );
        assert!(
            out.stdout == msg,
            "{n} bytes sent, {} came back\n{}",
            out.stdout.len(),
            t.ctl_ok(&["status"])
        );
    }
    let st: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["status", "--json"])).unwrap();
    let made = st["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "fragments_made")
        .unwrap()[1]
        .as_u64()
        .unwrap();
    assert!(made >= 4, "lvc split the oversize datagrams: {made} pieces");
}

/// PMTU discovery for replies, through a router on the client side: a
/// client ("far") sits behind a router whose link to it has a 1400-byte
/// MTU. A real server's full-sized replies reach the router, which answers
/// the VIP (their source) with "fragmentation needed" / "packet too big";
/// lvc translates the error back to the real server (outer destination
/// and quoted packet), the server lowers its path MTU, and the download
/// completes. Untranslated, the error would never reach the server and the
/// download would stall.
fn pmtu_behind_a_router(tag: &str, v6: bool) {
    if !privileged(tag) {
        return;
    }
    let mut t = Topo::build(tag, Arms::Two, 1, 2);
    t.lab.add_ns("far");
    t.lab.veth(("far", "f0"), ("client", "c1"), 1);
    t.lab.ip("client", &["link", "set", "c1", "mtu", "1400"]);
    t.lab
        .ip("client", &["addr", "add", "10.3.0.1/24", "dev", "c1"]);
    t.lab.ip(
        "client",
        &["-6", "addr", "add", "fd00:3::1/64", "dev", "c1", "nodad"],
    );
    t.lab.sysctl("client", "net.ipv4.ip_forward=1");
    t.lab.sysctl("client", "net.ipv6.conf.all.forwarding=1");
    t.lab
        .ip("far", &["addr", "add", "10.3.0.2/24", "dev", "f0"]);
    t.lab
        .ip("far", &["route", "add", "default", "via", "10.3.0.1"]);
    t.lab.ip(
        "far",
        &["-6", "addr", "add", "fd00:3::2/64", "dev", "f0", "nodad"],
    );
    t.lab.ip(
        "far",
        &["-6", "route", "add", "default", "via", "fd00:3::1"],
    );
    t.lab
        .ip("dir", &["route", "add", "10.3.0.0/24", "via", "10.1.0.2"]);
    t.lab.ip(
        "dir",
        &["-6", "route", "add", "fd00:3::/64", "via", "fd00:1::2"],
    );
    // A bulk sender on the real server: 400 000 bytes per connection.
    t.lab.spawn(
        "rs1",
        "bulk",
        &[
            "socat",
            "TCP6-LISTEN:8000,reuseaddr,fork,ipv6only=0",
            "SYSTEM:head -c 400000 /dev/zero",
        ],
    );
    t.start_lvc();
    let (svc, real, far, target) = if v6 {
        (
            format!("[{VIP6}]:8000"),
            format!("[{}]", server_ip6(0)),
            "fd00:3::2",
            format!("TCP6:[{VIP6}]:8000"),
        )
    } else {
        (
            format!("{VIP}:8000"),
            server_ip(0),
            "10.3.0.2",
            format!("TCP4:{VIP}:8000"),
        )
    };
    t.ctl_ok(&["add-service", "--tcp", &svc]);
    t.ctl_ok(&["add-server", "--tcp", &svc, "--real", &real]);
    let mut got = 0;
    let done = t.lab.wait_until(Duration::from_secs(20), || {
        let out = t.lab.exec("far", &["socat", "-T", "8", "-u", &target, "-"]);
        got = out.stdout.len();
        got == 400_000
    });
    let family = if v6 { "-6" } else { "-4" };
    let route = t.lab.exec_ok("rs1", &["ip", family, "route", "get", far]);
    assert!(
        done,
        "download through a 1400-byte hop: {got} of 400000 bytes; server's route: {route}\n{}",
        t.ctl_ok(&["status"])
    );
    assert!(
        route.contains("mtu 1400"),
        "the real server learned the path MTU: {route}"
    );
}

#[test]
fn pmtu_discovery_for_replies_behind_a_router() {
    pmtu_behind_a_router("pmturtr", false);
}

#[test]
fn ipv6_pmtu_discovery_for_replies_behind_a_router() {
    pmtu_behind_a_router("pmturtr6", true);
}
