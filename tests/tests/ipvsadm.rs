//! ipvsadm as a drop-in: an IPVS operator's commands, typed as in
//! ipvsadm's man page and runbooks, drive a live daemon, each checked by
//! the listing that follows; saved rules written by hand in ipvsadm-save's
//! format round-trip byte for byte; connection thresholds (-x/-y) hold a
//! server and release it.

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, CLIENT, Topo, VIP};
use std::time::Duration;

fn lab(tag: &str) -> Topo {
    let mut t = Topo::build(tag, Arms::Two, 2, 2);
    t.start_servers();
    t.start_lvc();
    t
}

/// `lvc-ctl LINE` (words split at blanks), as an operator types it.
fn run(t: &Topo, line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    t.ctl_ok(&args)
}

/// Lines joined with newlines, each ending in one (trailing blanks kept:
/// ipvsadm pads its last column).
fn lines(l: &[&str]) -> String {
    l.iter().map(|l| format!("{l}\n")).collect()
}

const TITLE: [&str; 2] = [
    "Prot LocalAddress:Port Scheduler Flags",
    "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
];

/// `-L -n` after its banner line (checked), which names the table size.
fn listed(t: &Topo, line: &str) -> String {
    let out = run(t, line);
    let (banner, rest) = out.split_once('\n').expect("a banner line");
    assert!(
        banner.starts_with("IP Virtual Server version 1.2.1 (size=") && banner.ends_with(')'),
        "{banner}"
    );
    rest.to_owned()
}

#[test]
fn ipvsadm_commands_drive_a_live_daemon() {
    if !privileged("ipvsadm_commands_drive_a_live_daemon") {
        return;
    }
    let t = lab("ipvsadm");
    assert_eq!(listed(&t, "-L -n"), lines(&TITLE), "an empty table");
    // (command, the -L -n listing after it)
    let steps: &[(&str, &[&str])] = &[
        ("-A -t 10.9.0.10:80 -s rr", &["TCP  10.9.0.10:80 rr"]),
        (
            "-a -t 10.9.0.10:80 -r 10.2.0.12:80 -m -w 2",
            &[
                "TCP  10.9.0.10:80 rr",
                "  -> 10.2.0.12:80                 Masq    2      0          0         ",
            ],
        ),
        (
            "--add-server --tcp-service 10.9.0.10:80 --real-server 10.2.0.11:80 --masquerading --weight 1",
            &[
                "TCP  10.9.0.10:80 rr",
                "  -> 10.2.0.11:80                 Masq    1      0          0         ",
                "  -> 10.2.0.12:80                 Masq    2      0          0         ",
            ],
        ),
        (
            // ipvsadm's defaults: wlc; the udp service is listed after tcp.
            "-A -u 10.9.0.10:53 -p 600 -M 255.255.255.0",
            &[
                "TCP  10.9.0.10:80 rr",
                "  -> 10.2.0.11:80                 Masq    1      0          0         ",
                "  -> 10.2.0.12:80                 Masq    2      0          0         ",
                "UDP  10.9.0.10:53 wlc persistent 600 mask 255.255.255.0",
            ],
        ),
        (
            // ... and gatewaying, with the service's port.
            "-a -u 10.9.0.10:53 -r 10.2.0.11:5353",
            &[
                "TCP  10.9.0.10:80 rr",
                "  -> 10.2.0.11:80                 Masq    1      0          0         ",
                "  -> 10.2.0.12:80                 Masq    2      0          0         ",
                "UDP  10.9.0.10:53 wlc persistent 600 mask 255.255.255.0",
                "  -> 10.2.0.11:53                 Route   1      0          0         ",
            ],
        ),
        (
            "-e -t 10.9.0.10:80 -r 10.2.0.12:80 -m -w 0",
            &[
                "TCP  10.9.0.10:80 rr",
                "  -> 10.2.0.11:80                 Masq    1      0          0         ",
                "  -> 10.2.0.12:80                 Masq    0      0          0         ",
                "UDP  10.9.0.10:53 wlc persistent 600 mask 255.255.255.0",
                "  -> 10.2.0.11:53                 Route   1      0          0         ",
            ],
        ),
        (
            "-E -u 10.9.0.10:53 -s sh",
            &[
                "TCP  10.9.0.10:80 rr",
                "  -> 10.2.0.11:80                 Masq    1      0          0         ",
                "  -> 10.2.0.12:80                 Masq    0      0          0         ",
                "UDP  10.9.0.10:53 sh persistent 600 mask 255.255.255.0",
                "  -> 10.2.0.11:53                 Route   1      0          0         ",
            ],
        ),
        (
            "-d -u 10.9.0.10:53 -r 10.2.0.11",
            &[
                "TCP  10.9.0.10:80 rr",
                "  -> 10.2.0.11:80                 Masq    1      0          0         ",
                "  -> 10.2.0.12:80                 Masq    0      0          0         ",
                "UDP  10.9.0.10:53 sh persistent 600 mask 255.255.255.0",
            ],
        ),
        (
            "-D -u 10.9.0.10:53",
            &[
                "TCP  10.9.0.10:80 rr",
                "  -> 10.2.0.11:80                 Masq    1      0          0         ",
                "  -> 10.2.0.12:80                 Masq    0      0          0         ",
            ],
        ),
    ];
    for (cmd, want) in steps {
        run(&t, cmd);
        let want: Vec<&str> = TITLE.iter().chain(want.iter()).copied().collect();
        for list in ["-L -n", "-Ln", "-l", "--list --numeric"] {
            assert_eq!(listed(&t, list), lines(&want), "after `{cmd}`, `{list}`");
        }
    }

    // Traffic through what ipvsadm's commands built: weight 0 is
    // quiescent, so rs1 answers every request.
    for _ in 0..4 {
        assert_eq!(t.curl(&format!("http://{VIP}/")).as_deref(), Some("rs1\n"));
    }
    let conns = run(&t, "-L -c -n");
    let mut rows = conns.lines();
    assert_eq!(rows.next(), Some("IPVS connection entries"));
    assert_eq!(
        rows.next(),
        Some("pro expire state       source             virtual            destination")
    );
    let rows: Vec<&str> = rows.collect();
    assert!(!rows.is_empty(), "{conns}");
    for r in &rows {
        // pro expire state source virtual destination, at ipvsadm's columns.
        assert!(r.starts_with("TCP "), "{r}");
        assert!(r[4..6].chars().all(|c| c.is_ascii_digit()), "{r}");
        assert_eq!(&r[6..7], ":", "{r}");
        assert_eq!(&r[23..23 + CLIENT.len() + 1], format!("{CLIENT}:"), "{r}");
        assert_eq!(&r[42..61], "10.9.0.10:80       ", "{r}");
        assert_eq!(&r[61..], "10.2.0.11:80", "{r}");
    }
    let stats = run(&t, "-L -n --stats --exact");
    assert!(
        stats.contains(&format!("\nTCP  10.9.0.10:80{:>25}", "4")),
        "4 connections counted: {stats}"
    );
    let rate = run(&t, "-L -n --rate");
    assert!(
        rate.lines()
            .nth(1)
            .unwrap()
            .contains("CPS    InPPS   OutPPS    InBPS   OutBPS"),
        "{rate}"
    );
    run(&t, "-Z");
    assert!(
        run(&t, "-L -n --stats").contains(&format!("\nTCP  10.9.0.10:80{:>25}", "0")),
        "-Z zeroes"
    );

    // Timeouts: ipvsadm's positional --set, and --timeout to read them.
    run(&t, "--set 600 60 30");
    assert_eq!(
        run(&t, "-L --timeout"),
        "Timeout (tcp tcpfin udp): 600 60 30\n"
    );
    run(&t, "--set 0 0 40");
    assert_eq!(
        run(&t, "-L --timeout"),
        "Timeout (tcp tcpfin udp): 600 60 40\n"
    );

    // Thresholds.
    run(
        &t,
        "-e -t 10.9.0.10:80 -r 10.2.0.11:80 -m -w 1 -x 100 -y 60",
    );
    let th = run(&t, "-L -n --thresholds -t 10.9.0.10:80");
    let th: Vec<&str> = th.lines().collect();
    assert_eq!(
        th[..3],
        [
            "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn ",
            "  -> RemoteAddress:Port",
            "TCP  10.9.0.10:80 rr",
        ],
        "{th:#?}"
    );
    // (The requests' connections are inactive until they expire.)
    assert!(
        th[3].starts_with("  -> 10.2.0.11:80                 100        60         0          "),
        "{th:#?}"
    );
    assert_eq!(
        th[4],
        "  -> 10.2.0.12:80                 0          0          0          0         "
    );

    // ipvsadm-save's rules, and back.
    let saved = run(&t, "-S -n");
    assert_eq!(
        saved,
        lines(&[
            "-A -t 10.9.0.10:80 -s rr",
            "-a -t 10.9.0.10:80 -r 10.2.0.11:80 -m -w 1 -x 100 -y 60",
            "-a -t 10.9.0.10:80 -r 10.2.0.12:80 -m -w 0",
        ])
    );
    assert_eq!(run(&t, "save --format ipvsadm"), saved);
    run(&t, "-C");
    assert_eq!(listed(&t, "-L -n"), lines(&TITLE), "-C clears");
    let out = t.ctl_input(&["-R"], &saved);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run(&t, "-S -n"), saved, "-S → -C → -R → -S");
    assert_eq!(t.curl(&format!("http://{VIP}/")).as_deref(), Some("rs1\n"));

    // Unknown to ipvsadm: refused in its format, by name.
    run(&t, "add-service --tcp 10.9.0.10:8000-8099");
    let out = t.ctl(&["-S", "-n"]);
    assert_eq!(out.status.code(), Some(66));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("service tcp 10.9.0.10:8000-8099: several ports"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run(&t, "-S --format toml").contains("tcp = \"10.9.0.10:8000-8099\""));
    run(&t, "-D -t 10.9.0.10:8000-8099");
}

/// Rules written by hand in ipvsadm-save's documented format (IPVS is not
/// available here to capture `ipvsadm -S -n`): restored, listed and saved
/// back identical; a bad rule anywhere restores nothing and names its line.
#[test]
fn hand_written_ipvsadm_rules_round_trip() {
    if !privileged("hand_written_ipvsadm_rules_round_trip") {
        return;
    }
    let t = lab("ipvsrules");
    let rules = lines(&[
        "-A -t 10.9.0.10:80 -s wlc -p 360 -M 255.255.255.0",
        "-a -t 10.9.0.10:80 -r 10.2.0.11:80 -m -w 3",
        "-a -t 10.9.0.10:80 -r 10.2.0.12:80 -m -w 1 -x 500",
        "-A -t 10.9.0.10:443 -s sh",
        "-a -t 10.9.0.10:443 -r 10.2.0.11:443 -g -w 1",
        "-A -u 10.9.0.10:53 -s rr",
        "-a -u 10.9.0.10:53 -r 10.2.0.11:53 -i -w 1",
        "-a -u 10.9.0.10:53 -r 10.2.0.12:53 -i -w 1",
        "-A -t [fd00:9::10]:80 -s lc -p 120 -M 64",
        "-a -t [fd00:9::10]:80 -r [fd00:2::11]:8080 -m -w 1",
    ]);
    let out = t.ctl_input(
        &["-R"],
        &format!("# ipvsadm -S -n, {}\n\n{rules}", "by hand"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run(&t, "-S -n"), rules, "rules → -R → -S: identical");
    assert_eq!(
        listed(&t, "-L -n"),
        lines(&[
            TITLE[0],
            TITLE[1],
            "TCP  10.9.0.10:80 wlc persistent 360 mask 255.255.255.0",
            "  -> 10.2.0.11:80                 Masq    3      0          0         ",
            "  -> 10.2.0.12:80                 Masq    1      0          0         ",
            "TCP  10.9.0.10:443 sh",
            "  -> 10.2.0.11:443                Route   1      0          0         ",
            "UDP  10.9.0.10:53 rr",
            "  -> 10.2.0.11:53                 Tunnel  1      0          0         ",
            "  -> 10.2.0.12:53                 Tunnel  1      0          0         ",
            "TCP  [fd00:9::10]:80 lc persistent 120 mask 64",
            "  -> [fd00:2::11]:8080            Masq    1      0          0         ",
        ])
    );
    assert_eq!(
        t.curl(&format!("http://{VIP}/")).as_deref(),
        Some("rs1\n"),
        "wlc 3:1, first to the heavier"
    );

    // Appended as ipvsadm -R does; an error on line 3 restores nothing.
    let before = run(&t, "-S -n");
    let bad = lines(&[
        "-A -t 10.9.0.10:8080 -s rr",
        "-a -t 10.9.0.10:8080 -r 10.2.0.11:8080 -m -w 1",
        "-a -t 10.9.0.10:8080 -r 10.2.0.11:8080 -m -w 1",
    ]);
    let out = t.ctl_input(&["-R"], &bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(67), "{err}");
    assert!(
        err.contains("line 3: real server 10.2.0.11:8080 already exists in service tcp 10.9.0.10:8080; nothing was restored"),
        "{err}"
    );
    let bad = "-A -t 10.9.0.10:8080 -s rr\n-A -t 10.9.0.10:8081 -s fastest\n";
    let out = t.ctl_input(&["-R"], bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("line 2: `-A -t 10.9.0.10:8081 -s fastest`"),
        "{err}"
    );
    assert_eq!(run(&t, "-S -n"), before, "nothing changed");
    // A -C line first replaces the table.
    let out = t.ctl_input(&["-R"], "-C\n-A -t 10.9.0.10:80 -s rr\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run(&t, "-S -n"), "-A -t 10.9.0.10:80 -s rr\n");
}

/// `-x`/`--max-conns`: a server at its upper threshold gets no new
/// connection until its connections fall under the lower one.
#[test]
fn connection_thresholds_cap_a_server_and_release_it() {
    if !privileged("connection_thresholds_cap_a_server_and_release_it") {
        return;
    }
    let t = lab("maxconns");
    run(&t, "--set 900 1 300");
    run(&t, "add-service --tcp 10.9.0.10:7");
    run(
        &t,
        "add-server --tcp 10.9.0.10:7 --real 10.2.0.11 --max-conns 2",
    );
    let attempt = || {
        let out = t.lab.exec_input(
            "client",
            &["socat", "-T", "2", "-", "TCP:10.9.0.10:7,connect-timeout=2"],
            b"ping\n",
        );
        String::from_utf8_lossy(&out.stdout) == "ping\n"
    };
    let mut a = t.echo_session(7);
    assert_eq!(a.echo("one\n"), "one\n");
    let mut b = t.echo_session(7);
    assert_eq!(b.echo("two\n"), "two\n");
    assert!(!attempt(), "a third connection is refused at --max-conns 2");
    let json: serde_json::Value = serde_json::from_str(&run(&t, "list --json")).unwrap();
    let srv = &json["services"][0]["servers"][0];
    assert_eq!(srv["overloaded"], true, "{srv}");
    assert_eq!(srv["limits"]["max"], 2, "{srv}");
    assert!(run(&t, "list").contains("(at max-conns)"));
    // The connections already there go on.
    assert_eq!(a.echo("still\n"), "still\n");
    // One closes and expires (tcpfin 1 s): 1 < ¾ × 2, so it takes
    // connections again.
    drop(a);
    let back = t.lab.wait_until(Duration::from_secs(10), attempt);
    assert!(back, "released under the lower threshold");
    assert_eq!(b.echo("three\n"), "three\n");
    // Raised, the limit lets more through; 0 removes it.
    run(
        &t,
        "edit-server --tcp 10.9.0.10:7 --real 10.2.0.11 --max-conns 0",
    );
    let json: serde_json::Value = serde_json::from_str(&run(&t, "list --json")).unwrap();
    assert!(json["services"][0]["servers"][0].get("limits").is_none());
    let _c = t.echo_session(7);
    let _d = t.echo_session(7);
    assert!(attempt());
}
