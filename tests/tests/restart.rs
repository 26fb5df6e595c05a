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
    // The journal is written once a second.
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
    let _ = t.lab.exec_input(
        "client",
        &[
            "socat",
            "-T",
            "1",
            "-",
            &format!("UDP:{VIP}:9,sourceport=5353"),
        ],
        b"into the tunnel\n",
    );
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
