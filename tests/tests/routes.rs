//! The kernel's routes, followed live: a blackhole or unreachable route
//! added on the director takes effect for lvc's traffic without a
//! restart, and its removal too (the route thread applies notifications
//! one by one instead of re-reading the tables).

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, Topo, VIP, server_ip};
use std::time::Duration;

/// `drop_REASON` from `lvc-ctl status --json`.
fn drops(t: &Topo, reason: &str) -> u64 {
    let st: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["status", "--json"])).unwrap();
    st["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == format!("drop_{reason}"))
        .map_or(0, |c| c[1].as_u64().unwrap())
}

/// One short HTTP request to the VIP: (exit status, stderr).
fn get(t: &Topo) -> (bool, String) {
    let url = format!("http://{VIP}/");
    let out = t
        .lab
        .exec("client", &["curl", "-sS", "-m", "2", "--retry", "0", &url]);
    (
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("rs1"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn reject_routes_on_the_director_apply_without_a_restart() {
    if !privileged("reject_routes_on_the_director_apply_without_a_restart") {
        return;
    }
    let mut t = Topo::build("rtrej", Arms::Two, 1, 1);
    t.start_servers();
    t.start_lvc();
    t.add_service("tcp", 80, "nat");
    assert!(get(&t).0, "served before any reject route");
    let host = format!("{}/32", server_ip(0));

    // A blackhole route more specific than the connected /24: dropped,
    // counted, no answer.
    t.lab.ip("dir", &["route", "add", "blackhole", &host]);
    let dropped = t.lab.wait_until(Duration::from_secs(10), || {
        !get(&t).0 && drops(&t, "route_blackhole") > 0
    });
    assert!(
        dropped,
        "not dropped by the blackhole route: {}",
        t.ctl_ok(&["status"])
    );
    t.lab.ip("dir", &["route", "del", "blackhole", &host]);
    assert!(
        t.lab.wait_until(Duration::from_secs(5), || get(&t).0),
        "not served again after the blackhole route went"
    );

    // An unreachable route: the client is told (ICMP host unreachable,
    // so its connect fails at once with "No route to host").
    t.lab.ip("dir", &["route", "add", "unreachable", &host]);
    let connect = || {
        let to = format!("TCP:{VIP}:80,connect-timeout=2");
        let out = t
            .lab
            .exec_input("client", &["socat", "-T", "2", "-", &to], b"");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let refused = t.lab.wait_until(Duration::from_secs(10), || {
        connect().contains("No route to host")
    });
    assert!(
        refused,
        "no ICMP host unreachable: {}; {}",
        connect(),
        t.ctl_ok(&["status"])
    );
    assert!(drops(&t, "route_unreachable") > 0);
    t.lab.ip("dir", &["route", "del", "unreachable", &host]);
    assert!(
        t.lab.wait_until(Duration::from_secs(5), || get(&t).0),
        "not served again after the unreachable route went"
    );
    assert!(t.lab.running("lvc"), "the daemon ran throughout");
}
