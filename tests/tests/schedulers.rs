//! Schedulers, live edits, weight-0 draining and persistence, with real
//! clients through the VIP.

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, Topo, VIP, server_ip};
use std::collections::BTreeMap;
use std::time::Duration;

fn lab(tag: &str) -> Topo {
    let mut t = Topo::build(tag, Arms::Two, 2, 2);
    t.start_servers();
    t.start_lvc();
    t
}

/// `n` sequential HTTP requests; how many each server answered.
fn split(t: &Topo, port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in 0..n {
        let body = t
            .curl(&format!("http://{VIP}:{port}/"))
            .unwrap_or_else(|| panic!("request {i} failed:\n{}", t.lab.log("lvc")));
        *m.entry(body.trim().to_owned()).or_default() += 1;
    }
    m
}

fn count(m: &BTreeMap<String, usize>, server: &str) -> usize {
    m.get(server).copied().unwrap_or(0)
}

#[test]
fn scheduler_splits_and_live_changes() {
    if !privileged("scheduler_splits_and_live_changes") {
        return;
    }
    let t = lab("sched");
    let svc = format!("{VIP}:80");
    t.ctl_ok(&["add-service", "--tcp", &svc, "--scheduler", "wrr"]);
    t.ctl_ok(&[
        "add-server",
        "--tcp",
        &svc,
        "--real",
        &server_ip(0),
        "--weight",
        "3",
    ]);
    t.ctl_ok(&[
        "add-server",
        "--tcp",
        &svc,
        "--real",
        &server_ip(1),
        "--weight",
        "1",
    ]);
    // wrr 3:1 over whole cycles: exactly 75/25.
    let m = split(&t, 80, 40);
    assert_eq!((count(&m, "rs1"), count(&m, "rs2")), (30, 10), "{m:?}");

    // Live weight change: 1:1.
    t.ctl_ok(&[
        "edit-server",
        "--tcp",
        &svc,
        "--real",
        &server_ip(0),
        "--weight",
        "1",
    ]);
    let m = split(&t, 80, 20);
    assert_eq!((count(&m, "rs1"), count(&m, "rs2")), (10, 10), "{m:?}");

    // Live scheduler change to wlc with weights 1:3. Finished connections
    // linger as inactive (FIN_WAIT), so wlc sees each server's load; start
    // from an empty table (FIN_WAIT lasts 1 s here).
    t.ctl_ok(&["set-timeouts", "--tcpfin", "1"]);
    let empty = t.lab.wait_until(Duration::from_secs(15), || {
        let v: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["status", "--json"])).unwrap();
        v["flows"] == 0
    });
    assert!(empty, "connections did not expire");
    t.ctl_ok(&[
        "edit-server",
        "--tcp",
        &svc,
        "--real",
        &server_ip(1),
        "--weight",
        "3",
    ]);
    t.ctl_ok(&["edit-service", "--tcp", &svc, "--scheduler", "wlc"]);
    let m = split(&t, 80, 40);
    let rs2 = count(&m, "rs2");
    assert!((27..=33).contains(&rs2), "wlc 1:3 over 40: {m:?}");
    assert!(t.ctl_ok(&["list"]).contains("wlc"));

    // Maglev: one client address always lands on one server.
    t.ctl_ok(&["edit-service", "--tcp", &svc, "--scheduler", "mh"]);
    let m = split(&t, 80, 10);
    assert_eq!(m.len(), 1, "mh hashes the client: {m:?}");
}

#[test]
fn weight_zero_drains_and_persistence_sticks() {
    if !privileged("weight_zero_drains_and_persistence_sticks") {
        return;
    }
    let t = lab("drain0");
    t.add_service("tcp", 7, "nat");
    // A long-lived connection to whichever server rr picks first (rs1).
    let mut session = t.echo_session(7);
    let mut echo = |msg: &str| assert_eq!(session.echo(msg), msg);
    echo("hello\n");
    let conns: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["conns", "--json"])).unwrap();
    let busy = conns["conns"][0]["real"]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    t.ctl_ok(&[
        "edit-server",
        "--tcp",
        &format!("{VIP}:7"),
        "--real",
        &busy,
        "--weight",
        "0",
    ]);
    // The existing connection continues…
    echo("still here\n");
    // …and new ones all go elsewhere.
    t.add_service("tcp", 80, "nat");
    for srv in 0..2 {
        if server_ip(srv) == busy {
            t.ctl_ok(&[
                "edit-server",
                "--tcp",
                &format!("{VIP}:80"),
                "--real",
                &busy,
                "--weight",
                "0",
            ]);
        }
    }
    let m = split(&t, 80, 6);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(t.ctl_ok(&["list"]).contains(" 0      "), "weight 0 listed");
    drop(session);

    // Persistence: one client sticks to one server; after the template
    // expires (2 s after its last connection, which lingers 1 s in
    // FIN_WAIT here) the next choice moves on.
    t.ctl_ok(&["set-timeouts", "--tcpfin", "1"]);
    let svc = format!("{VIP}:8080");
    t.ctl_ok(&["add-service", "--tcp", &svc, "--persistent", "2"]);
    for i in 0..2 {
        t.ctl_ok(&[
            "add-server",
            "--tcp",
            &svc,
            "--real",
            &format!("{}:80", server_ip(i)),
        ]);
    }
    assert!(t.ctl_ok(&["list"]).contains("persistent 2"));
    let first = split(&t, 8080, 8);
    assert_eq!(first.len(), 1, "persistent: {first:?}");
    std::thread::sleep(Duration::from_secs(5));
    let second = split(&t, 8080, 8);
    assert_eq!(second.len(), 1, "persistent again: {second:?}");
    assert_ne!(
        first.keys().next(),
        second.keys().next(),
        "after expiry the next server is chosen"
    );
    let saved = t.ctl_ok(&["save"]);
    assert!(saved.contains("persistent = 2"), "{saved}");
}

/// The paper's TC2: per-service direction — port 80 to one real server,
/// ports 21 and 22 to the other.
#[test]
fn tc2_per_service_direction() {
    if !privileged("tc2_per_service_direction") {
        return;
    }
    let mut t = lab("tc2");
    let srv = lvc_tests::bin("lvc-testsrv").to_string_lossy().into_owned();
    t.lab.spawn(
        "rs2",
        "rs2-ftp-ssh",
        &[&srv, "rs2", "--http", "21", "--http", "22"],
    );
    t.ctl_ok(&["add-service", "--tcp", &format!("{VIP}:80")]);
    t.ctl_ok(&[
        "add-server",
        "--tcp",
        &format!("{VIP}:80"),
        "--real",
        &server_ip(0),
    ]);
    for port in [21, 22] {
        let svc = format!("{VIP}:{port}");
        t.ctl_ok(&["add-service", "--tcp", &svc]);
        t.ctl_ok(&["add-server", "--tcp", &svc, "--real", &server_ip(1)]);
    }
    assert!(t.lab.wait_until(Duration::from_secs(5), || {
        t.curl(&format!("http://{VIP}:22/")).is_some()
    }));
    for _ in 0..3 {
        assert_eq!(split(&t, 80, 2).keys().collect::<Vec<_>>(), ["rs1"]);
        assert_eq!(split(&t, 21, 2).keys().collect::<Vec<_>>(), ["rs2"]);
        assert_eq!(split(&t, 22, 2).keys().collect::<Vec<_>>(), ["rs2"]);
    }
}

/// FTP through a persistent every-port (port 0) service with direct
/// routing: the passive data connection, to another port of the VIP, lands
/// on the same real server as the control connection.
#[test]
fn ftp_through_a_persistent_port_zero_service() {
    ftp_through_port_zero("ftp", "dr");
}

/// The paper's FTP through the director-as-gateway (figure 5): a
/// persistent port-0 `nat` service; files arrive intact and the data
/// connection lands on the control connection's server.
#[test]
fn ftp_through_a_persistent_port_zero_nat_service() {
    ftp_through_port_zero("ftpnat", "nat");
}

fn ftp_through_port_zero(tag: &str, method: &str) {
    if !privileged(tag) {
        return;
    }
    let mut t = Topo::build(tag, Arms::Two, 2, 2);
    if method == "dr" {
        t.dr_at_servers();
    }
    // A file big enough to take many round trips (and, with offload, to
    // move to XDP mid-transfer).
    let big: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for i in 0..2 {
        let ns = format!("rs{}", i + 1);
        let root = t.lab.log_path(&format!("ftp-{ns}"));
        let empty = root.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(root.join("who"), format!("{ns}\n")).unwrap();
        std::fs::write(root.join("big"), &big).unwrap();
        let conf = t.lab.log_path(&format!("vsftpd-{ns}.conf"));
        // Behind nat the server announces the VIP for passive data
        // connections (as an LVS-NAT FTP server is set up).
        let pasv_address = if method == "nat" {
            format!("pasv_address={VIP}\npasv_addr_resolve=NO\n")
        } else {
            String::new()
        };
        std::fs::write(
            &conf,
            format!(
                "listen=YES\nlisten_ipv6=NO\nbackground=NO\nanonymous_enable=YES\nno_anon_password=YES\n\
                 local_enable=NO\nwrite_enable=NO\nanon_root={}\nsecure_chroot_dir={}\npasv_enable=YES\n\
                 pasv_min_port=30000\npasv_max_port=30100\nseccomp_sandbox=NO\nisolate=NO\n\
                 isolate_network=NO\nftp_username=ftp\nuse_localtime=NO\n{pasv_address}",
                root.display(),
                empty.display()
            ),
        )
        .unwrap();
        t.lab.spawn(
            &ns,
            &format!("vsftpd-{ns}"),
            &["vsftpd", &conf.to_string_lossy()],
        );
    }
    t.start_lvc();
    let svc = format!("{VIP}:0");
    t.ctl_ok(&["add-service", "--tcp", &svc, "--persistent", "60"]);
    for i in 0..2 {
        t.ctl_ok(&[
            "add-server",
            "--tcp",
            &svc,
            "--real",
            &server_ip(i),
            "--method",
            method,
        ]);
    }
    let fetch = || {
        let out = t.lab.exec(
            "client",
            &[
                "curl",
                "-s",
                "-m",
                "10",
                "--ftp-pasv",
                &format!("ftp://{VIP}/who"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(
        t.lab
            .wait_until(Duration::from_secs(10), || !fetch().is_empty()),
        "no FTP answer through the VIP: {}\n{}\n{}",
        t.lab.log("vsftpd-rs1"),
        String::from_utf8_lossy(
            &t.lab
                .exec(
                    "client",
                    &[
                        "curl",
                        "-v",
                        "-m",
                        "5",
                        "--ftp-pasv",
                        &format!("ftp://{VIP}/who")
                    ]
                )
                .stderr
        ),
        t.ctl_ok(&["status"])
    );
    let answers: Vec<String> = (0..4).map(|_| fetch()).collect();
    assert!(
        answers
            .iter()
            .all(|a| a == &answers[0] && a.starts_with("rs")),
        "{answers:?}"
    );
    // Control and data connections both went to that one server.
    let conns: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["conns", "--json"])).unwrap();
    let reals: std::collections::BTreeSet<String> = conns["conns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["real"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(reals.len(), 1, "{conns}");
    // A bigger file arrives byte for byte.
    let out = t.lab.exec(
        "client",
        &[
            "curl",
            "-s",
            "-m",
            "20",
            "--ftp-pasv",
            &format!("ftp://{VIP}/big"),
        ],
    );
    assert!(
        out.stdout == big,
        "{method}: the 400 kB file came back as {} bytes (intact: false)\n{}",
        out.stdout.len(),
        t.ctl_ok(&["status"])
    );
}

/// Services over a port list and a port range: one scheduler and one
/// persistence table for the whole group (like IPVS firewall-mark
/// services), overlaps refused, and the listing/save forms.
#[test]
fn port_list_and_range_services() {
    if !privileged("port_list_and_range_services") {
        return;
    }
    let mut t = lab("ports");
    let srv = lvc_tests::bin("lvc-testsrv").to_string_lossy().into_owned();
    for i in 0..2 {
        let ns = format!("rs{}", i + 1);
        t.lab.spawn(
            &ns,
            &format!("{ns}-extra"),
            &[
                &srv, &ns, "--http", "21", "--http", "22", "--http", "8000", "--http", "8050",
            ],
        );
    }
    // `21,22`: one rr cycle across both ports.
    let list = format!("{VIP}:22,21");
    t.ctl_ok(&["add-service", "--tcp", &list]);
    for i in 0..2 {
        t.ctl_ok(&["add-server", "--tcp", &list, "--real", &server_ip(i)]);
    }
    assert!(t.lab.wait_until(Duration::from_secs(5), || {
        t.curl(&format!("http://{VIP}:22/")).is_some()
            && t.curl(&format!("http://{VIP}:21/")).is_some()
    }));
    let mut seq = Vec::new();
    for port in [21, 22, 21, 22, 21, 22] {
        let body = t.curl(&format!("http://{VIP}:{port}/")).expect("request");
        seq.push(body.trim().to_owned());
    }
    assert!(
        seq.windows(2).all(|w| w[0] != w[1]),
        "one rr scheduler alternates across the ports: {seq:?}"
    );
    // A port of the list cannot be a service of its own.
    let out = t.ctl(&["add-service", "--tcp", &format!("{VIP}:22")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("overlaps service tcp 10.9.0.10:21,22"),
        "{out:?}"
    );

    // `8000-8099`, persistent: every port of the range sticks to one server
    // (nat, whose replies XDP steers by connection: any port works).
    let range = format!("{VIP}:8000-8099");
    t.ctl_ok(&["add-service", "--tcp", &range, "--persistent", "60"]);
    for i in 0..2 {
        t.ctl_ok(&[
            "add-server",
            "--tcp",
            &range,
            "--real",
            &server_ip(i),
            "--method",
            "nat",
        ]);
    }
    let mut seen = BTreeMap::new();
    for port in [8000, 8050, 8000, 8050, 8050, 8000] {
        let body = t
            .curl(&format!("http://{VIP}:{port}/"))
            .unwrap_or_else(|| panic!("request to {port} failed:\n{}", t.lab.log("lvc")));
        *seen.entry(body.trim().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        1,
        "one persistence table for the range: {seen:?}"
    );
    // A port outside the range is no service.
    assert!(t.curl(&format!("http://{VIP}:8100/")).is_none());

    let list_out = t.ctl_ok(&["list"]);
    assert!(list_out.contains("TCP  10.9.0.10:21,22 rr"), "{list_out}");
    assert!(
        list_out.contains("TCP  10.9.0.10:8000-8099 rr persistent 60"),
        "{list_out}"
    );
    let saved = t.ctl_ok(&["save"]);
    assert!(saved.contains("tcp = \"10.9.0.10:8000-8099\""), "{saved}");
    // The saved form restores to the same configuration.
    t.ctl_ok(&["clear"]);
    let path = std::env::temp_dir().join(format!("lvc-ports-{}.toml", std::process::id()));
    std::fs::write(&path, &saved).unwrap();
    t.ctl_ok(&["restore", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(t.ctl_ok(&["save"]), saved);
    assert!(t.curl(&format!("http://{VIP}:8050/")).is_some());
}
