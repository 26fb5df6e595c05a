//! The control plane against a live daemon: save/restore, edits, zero,
//! timeouts, connections, SIGHUP reload, socket permissions, metrics, and
//! a table of malformed requests — with forwarding checked afterwards.

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, Topo, VIP, server_ip};
use std::time::Duration;

fn lab(tag: &str, servers: usize, extra: &[&str]) -> Topo {
    let mut t = Topo::build(tag, Arms::Two, servers, 2);
    t.start_servers();
    t.start_lvc_with(extra);
    t
}

fn fails(t: &Topo, args: &[&str], code: i32, msg: &str) {
    let out = t.ctl(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(msg), "{args:?}: expected `{msg}` in: {err}");
}

#[test]
fn save_clear_restore_save_is_byte_identical() {
    if !privileged("save_clear_restore_save_is_byte_identical") {
        return;
    }
    let t = lab("save", 2, &[]);
    t.add_service("tcp", 80, "nat");
    t.add_service("udp", 53, "dnat");
    let svc = format!("{VIP}:80");
    t.ctl_ok(&["-e", "-t", &svc, "-r", &server_ip(1), "-w", "3"]);
    t.ctl_ok(&["--set", "--tcp", "600", "--udp", "60"]);
    fails(
        &t,
        &[
            "add-server",
            "--tcp",
            &svc,
            "-r",
            "10.2.0.55",
            "--method",
            "fullnat",
        ],
        66,
        "address in the local address pool",
    );
    t.ctl_ok(&["set-local-pool", "10.2.0.100", "10.2.0.101"]);
    t.ctl_ok(&[
        "add-server",
        "-t",
        &svc,
        "-r",
        "10.2.0.55",
        "--method",
        "fullnat",
    ]);
    fails(&t, &["set-local-pool"], 66, "must keep an address of");
    let saved = t.ctl_ok(&["save"]);
    assert!(
        saved.contains("[fullnat]\nlocal = [\"10.2.0.100\", \"10.2.0.101\"]"),
        "{saved}"
    );
    assert!(saved.contains("weight = 3"), "{saved}");
    assert!(
        saved.contains("tcp = 600\ntcpfin = 120\nudp = 60"),
        "{saved}"
    );
    let file = t.lab.log_path("saved.toml");
    std::fs::write(&file, &saved).unwrap();

    t.ctl_ok(&["clear"]);
    assert!(
        !t.ctl_ok(&["list"]).contains("TCP"),
        "clear removes every service"
    );
    t.ctl_ok(&["restore", &file.to_string_lossy()]);
    assert_eq!(
        t.ctl_ok(&["save"]),
        saved,
        "save → clear → restore → save must be byte-identical"
    );
    assert!(
        t.curl(&format!("http://{VIP}/")).is_some(),
        "restored service forwards"
    );

    // A bad file is refused with its line, and nothing changes.
    let bad = t.lab.log_path("bad.toml");
    std::fs::write(&bad, "[[service]]\ntcp = \"10.9.0.11:80\"\n\n[[service.server]]\nreal = \"10.2.0.11\"\nweight = 70000\n").unwrap();
    fails(
        &t,
        &["restore", &bad.to_string_lossy()],
        66,
        "line 4: service tcp 10.9.0.11:80, server 10.2.0.11: weight must be 0..=65535",
    );
    std::fs::write(
        &bad,
        "[[service]]\ntcp = \"10.9.0.11:80\"\nschedular = \"rr\"\n",
    )
    .unwrap();
    fails(&t, &["restore", &bad.to_string_lossy()], 66, "line 3");
    assert_eq!(t.ctl_ok(&["save"]), saved);

    // Edits and their errors.
    fails(
        &t,
        &["edit-service", "--tcp", "10.9.0.99:80", "-s", "rr"],
        68,
        "service tcp 10.9.0.99:80 does not exist",
    );
    fails(
        &t,
        &["edit-server", "--tcp", &svc, "-r", "10.2.0.99", "-w", "1"],
        68,
        "does not exist",
    );
    fails(
        &t,
        &[
            "edit-server",
            "--tcp",
            &svc,
            "-r",
            &server_ip(0),
            "-w",
            "65536",
        ],
        66,
        "weight must be",
    );
    fails(
        &t,
        &["set-timeouts", "--tcp", "99999999"],
        66,
        "timeout tcp must be",
    );
    fails(&t, &["zero", "--tcp", "10.9.0.99:80"], 68, "does not exist");
    fails(
        &t,
        &[
            "add-server",
            "--tcp",
            &svc,
            "-r",
            &format!("{}:8080", server_ip(0)),
            "--method",
            "dr",
        ],
        66,
        "cannot remap ports",
    );
    fails(
        &t,
        &["set-local-pool", "224.0.0.1"],
        66,
        "cannot be a fullnat local address",
    );
    // Every method serves port-0 services, nat included (XDP steers its
    // replies by connection, not by the real server's port).
    t.ctl_ok(&["add-service", "--tcp", "10.9.0.12:0"]);
    t.ctl_ok(&["add-server", "--tcp", "10.9.0.12:0", "-r", &server_ip(0)]);
    t.ctl_ok(&[
        "add-server",
        "--tcp",
        "10.9.0.12:0",
        "-r",
        &server_ip(1),
        "--method",
        "dnat",
    ]);
    t.ctl_ok(&["del-service", "--tcp", "10.9.0.12:0"]);
    assert_eq!(
        t.ctl_ok(&["save"]),
        saved,
        "failed requests changed nothing"
    );
}

#[test]
fn counters_zero_rates_and_connections() {
    if !privileged("counters_zero_rates_and_connections") {
        return;
    }
    let t = lab("cnt", 2, &[]);
    t.add_service("tcp", 80, "nat");
    for _ in 0..6 {
        assert!(t.curl(&format!("http://{VIP}/")).is_some());
    }
    let v: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["list", "--json"])).unwrap();
    assert_eq!(v["services"][0]["stats"]["conns"], 6);

    // Connections: all six, filterable by server and client.
    let conns: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["conns", "--json"])).unwrap();
    assert_eq!(conns["conns"].as_array().unwrap().len(), 6, "{conns}");
    let to_rs1: serde_json::Value =
        serde_json::from_str(&t.ctl_ok(&["conns", "--server", &server_ip(0), "--json"])).unwrap();
    assert_eq!(to_rs1["conns"].as_array().unwrap().len(), 3, "{to_rs1}");
    let other: serde_json::Value =
        serde_json::from_str(&t.ctl_ok(&["conns", "--client", "10.1.0.99", "--json"])).unwrap();
    assert!(other["conns"].as_array().unwrap().is_empty());
    let text = t.ctl_ok(&["conns"]);
    assert!(
        text.lines().nth(1).unwrap_or("").starts_with("TCP "),
        "{text}"
    );

    // Rates move while traffic flows (sampled every 2 s).
    for _ in 0..15 {
        assert!(t.curl(&format!("http://{VIP}/")).is_some());
        std::thread::sleep(Duration::from_millis(200));
    }
    let v: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["list", "--json"])).unwrap();
    assert!(
        v["services"][0]["rates"]["packets_in"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert!(t.ctl_ok(&["list", "--rate"]).contains("CPS"));

    t.ctl_ok(&["-Z"]);
    let v: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["list", "--json"])).unwrap();
    assert_eq!(
        v["services"][0]["stats"]["conns"], 0,
        "zero clears counters"
    );
    assert_eq!(v["services"][0]["servers"][0]["stats"]["packets_in"], 0);

    let st: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["status", "--json"])).unwrap();
    assert_eq!(st["timeouts"]["tcp"], 900);
    assert_eq!(st["interfaces"].as_array().unwrap().len(), 2);
    assert_eq!(st["interfaces"][0]["xdp_mode"], "driver");
    // veth has no zero-copy AF_XDP: `--zero-copy auto` fell back to copy.
    assert_eq!(st["interfaces"][0]["zero_copy"], false);
    assert!(t.ctl_ok(&["status"]).contains("AF_XDP copy mode"));
}

/// SIGHUP during a request loop: the file grows a third server; no request
/// is lost and the unchanged servers keep their counters.
#[test]
fn sighup_reload_loses_no_request() {
    if !privileged("sighup_reload_loses_no_request") {
        return;
    }
    let mut t = Topo::build("hup", Arms::Two, 3, 2);
    t.start_servers();
    let file = t.lab.log_path("lvc.toml");
    let config = |n: usize| {
        let mut s = format!("[[service]]\ntcp = \"{VIP}:80\"\n");
        for i in 0..n {
            s += &format!("\n[[service.server]]\nreal = \"{}\"\n", server_ip(i));
        }
        s
    };
    std::fs::write(&file, config(2)).unwrap();
    let f = file.to_string_lossy().into_owned();
    t.start_lvc_with(&["--config", &f]);
    assert!(t.ctl_ok(&["list"]).contains(&server_ip(1)));

    let before: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["list", "--json"])).unwrap();
    let url = format!("http://{VIP}/");
    let client_ns = t.lab.ns("client");
    let loop_thread = std::thread::spawn(move || {
        let mut failures = 0;
        let mut answers = Vec::new();
        for _ in 0..120 {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &client_ns, "curl", "-s", "-m", "3", &url])
                .output()
                .unwrap();
            if out.status.success() {
                answers.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
            } else {
                failures += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (failures, answers)
    });
    std::thread::sleep(Duration::from_millis(600));
    std::fs::write(&file, config(3)).unwrap();
    let out = std::process::Command::new("pkill")
        .args([
            "-HUP",
            "-f",
            &format!("lvc-dataplane --socket {}", t.socket.display()),
        ])
        .status()
        .unwrap();
    assert!(out.success(), "SIGHUP sent");
    let (failures, answers) = loop_thread.join().unwrap();
    assert_eq!(failures, 0, "requests lost across the reload");
    assert!(
        answers.iter().any(|a| a == "rs3"),
        "the new server takes connections after the reload"
    );
    let after: serde_json::Value = serde_json::from_str(&t.ctl_ok(&["list", "--json"])).unwrap();
    let conns = |v: &serde_json::Value, i: usize| {
        v["services"][0]["servers"][i]["stats"]["conns"]
            .as_u64()
            .unwrap()
    };
    assert!(
        conns(&after, 0) > conns(&before, 0),
        "rs1 kept its counters and kept serving"
    );
    assert!(
        t.lab.log("lvc").contains("SIGHUP: configuration reloaded"),
        "{}",
        t.lab.log("lvc")
    );

    // A broken file on SIGHUP: rejected, the running configuration stays.
    std::fs::write(&file, "[[service]]\ntcp = 80\n").unwrap();
    let saved = t.ctl_ok(&["save"]);
    std::process::Command::new("pkill")
        .args([
            "-HUP",
            "-f",
            &format!("lvc-dataplane --socket {}", t.socket.display()),
        ])
        .status()
        .unwrap();
    assert!(t.lab.wait_until(Duration::from_secs(5), || {
        t.lab.log("lvc").contains("configuration rejected")
    }));
    assert_eq!(t.ctl_ok(&["save"]), saved);
}

/// Only root and the socket's group may talk to the daemon.
#[test]
fn socket_permissions() {
    if !privileged("socket_permissions") {
        return;
    }
    let t = lab("perm", 1, &["--socket-group", "nogroup"]);
    let ctl = lvc_tests::bin("lvc-ctl").to_string_lossy().into_owned();
    let sock = t.socket.to_string_lossy().into_owned();
    let as_user = |groups: &str| {
        t.lab.exec(
            "dir",
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65533",
                groups,
                &ctl,
                "--socket",
                &sock,
                "list",
            ],
        )
    };
    // Created with its final mode and group (bound in a private directory
    // and moved into place: nothing of that left behind).
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::metadata(&t.socket).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o660);
        assert_eq!(m.gid(), 65534);
        let dir = t.socket.parent().unwrap();
        let left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".lvc-sock-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // nobody, not in the socket's group: refused.
    let out = as_user("--clear-groups");
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied") && err.contains("group nogroup"),
        "{err}"
    );
    // nobody with supplementary group nogroup (65534): allowed.
    let out = as_user("--groups=65534");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prometheus exposition: well-formed, and counters move with traffic.
#[test]
fn metrics_endpoint() {
    if !privileged("metrics_endpoint") {
        return;
    }
    let t = lab("met", 2, &["--metrics", "127.0.0.1:9108"]);
    t.add_service("tcp", 80, "nat");
    let scrape = || {
        t.lab.exec_ok(
            "dir",
            &["curl", "-s", "-m", "5", "http://127.0.0.1:9108/metrics"],
        )
    };
    let first = scrape();
    validate_exposition(&first);
    for _ in 0..4 {
        assert!(t.curl(&format!("http://{VIP}/")).is_some());
    }
    let second = scrape();
    validate_exposition(&second);
    let value = |text: &str, prefix: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let svc = format!("lvc_service_connections_total{{service=\"tcp:{VIP}:80\"}}");
    assert_eq!(value(&first, &svc), 0);
    assert_eq!(value(&second, &svc), 4);
    assert!(value(&second, "lvc_xdp_packets_total{decision=\"redirect_vip\"}") >= 4 * 3);
    assert!(
        value(&second, "lvc_worker_rx_packets_total{worker=\"0\"}")
            + value(&second, "lvc_worker_rx_packets_total{worker=\"1\"}")
            > 0
    );
    assert!(value(&second, "lvc_conntrack_entries") >= 4);
    let out = t.lab.exec_ok(
        "dir",
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:9108/other",
        ],
    );
    assert_eq!(out, "404");
}

/// Checks the text exposition format: HELP/TYPE before samples, one TYPE
/// per family, valid names, quoted label values, numeric values, counters
/// named `_total`.
fn validate_exposition(text: &str) {
    use std::collections::HashMap;
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types: HashMap<String, String> = HashMap::new();
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (name, kind) = (p.next().unwrap(), p.next().unwrap());
            assert!(valid_name(name), "{line}");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter not named _total: {line}");
            }
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "{line}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "{line}");
        assert!(types.contains_key(name), "sample before its TYPE: {line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label: {line}"));
                assert!(valid_name(k), "{line}");
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
    }
}

/// Malformed requests each get an error reply, the configuration is
/// untouched, and forwarding goes on.
#[test]
fn malformed_requests_table() {
    if !privileged("malformed_requests_table") {
        return;
    }
    let mut t = lab("bad", 2, &[]);
    t.add_service("tcp", 80, "nat");
    let saved = t.ctl_ok(&["save"]);
    let sock = t.socket.to_string_lossy().into_owned();
    let send = |bytes: &[u8]| {
        let out = t.lab.exec_input(
            "dir",
            &["socat", "-t", "3", "-", &format!("UNIX-CONNECT:{sock}")],
            bytes,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let huge = format!(
        "{{\"version\":1,\"request\":{{\"verb\":\"list\",\"x\":\"{}\"}}}}\n",
        "a".repeat(2 << 20)
    );
    let table: &[(&str, &[u8], &str)] = &[
        ("garbage", b"\x00\xff garbage\n", "bad-request"),
        ("not an object", b"[1,2,3]\n", "bad-request"),
        ("unknown verb", b"{\"version\":1,\"request\":{\"verb\":\"explode\"}}\n", "bad-request"),
        ("wrong types", b"{\"version\":1,\"request\":{\"verb\":\"add-server\",\"service\":\"tcp:10.9.0.10:80\",\"real\":5}}\n", "bad-request"),
        ("wrong type for weight", b"{\"version\":1,\"request\":{\"verb\":\"add-server\",\"service\":\"tcp:10.9.0.10:80\",\"real\":\"10.2.0.99\",\"weight\":\"heavy\"}}\n", "bad-request"),
        ("truncated JSON", b"{\"version\":1,\"request\":{\"verb\":\"add-service\",\"service\":\"tcp:10.9.0.1\n", "bad-request"),
        ("wrong version", b"{\"version\":2,\"request\":{\"verb\":\"list\"}}\n", "version-mismatch"),
        ("no version", b"{\"request\":{\"verb\":\"list\"}}\n", "bad-request"),
        ("oversized", huge.as_bytes(), "longer than"),
    ];
    for (what, bytes, expect) in table {
        let reply = send(bytes);
        assert!(
            reply.contains("\"error\"") && reply.contains(expect),
            "{what}: {reply}"
        );
    }
    // Disconnect mid-request: no answer, nothing breaks.
    let _ = send(b"{\"version\":1,\"request\":{\"verb\":\"cle");
    assert_eq!(
        t.ctl_ok(&["save"]),
        saved,
        "malformed requests changed the configuration"
    );
    assert!(
        t.curl(&format!("http://{VIP}/")).is_some(),
        "forwarding continues"
    );
    assert!(t.lab.running("lvc"), "the daemon survives");
}

/// Hundreds of slow clients on the metrics port and the control socket
/// (a byte now and then, never a whole request): the daemon's threads stay
/// bounded, and once the clients' deadlines pass both answer again.
#[test]
fn slow_clients_leave_threads_bounded_and_both_answering() {
    if !privileged("slow_clients_leave_threads_bounded_and_both_answering") {
        return;
    }
    let mut t = lab("slowcli", 1, &["--metrics", "127.0.0.1:9108"]);
    let sock = t.socket.to_string_lossy().into_owned();
    let pid = t.dataplane_pid();
    let threads = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Threads:")
                    .map(|n| n.trim().parse::<u32>().unwrap())
            })
            .unwrap()
    };
    let before = threads();
    let script = format!(
        r#"
import socket, time
socks = []
for i in range(200):
    s = socket.socket(socket.AF_UNIX); s.connect("{sock}"); socks.append(s)
for i in range(300):
    s = socket.socket(); s.connect(("127.0.0.1", 9108)); socks.append(s)
print("connected", flush=True)
end = time.time() + 20
while time.time() < end:
    for s in socks:
        try:
            s.send(b"G")
        except OSError:
            pass
    time.sleep(1)
"#
    );
    t.lab.spawn("dir", "slowloris", &["python3", "-c", &script]);
    let connected = t.lab.wait_until(Duration::from_secs(30), || {
        t.lab.log("slowloris").contains("connected")
    });
    assert!(connected, "{}", t.lab.log("slowloris"));
    let during = threads();
    assert!(
        during <= before + 64 + 8 + 4,
        "{before} threads before, {during} with 500 slow clients"
    );
    // Past the deadlines (10 s control, 5 s metrics), while the slow
    // clients still trickle: both answer.
    std::thread::sleep(Duration::from_secs(11));
    let out = t.ctl(&["list"]);
    assert!(
        out.status.success(),
        "lvc-ctl after the flood: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = t.lab.exec(
        "dir",
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:9108/metrics",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&m.stdout), "200");
    eprintln!("threads: {before} before, {during} with 500 slow clients");
}
