//! Reconfiguration under traffic: 1000 configuration changes (services and
//! servers added and deleted, weights, schedulers and persistence edited,
//! the fullnat pool edited, whole-configuration reloads) while ten streams
//! run through a service nobody touches: not one of their lines is lost or
//! changed, and the daemon ends with exactly the configuration it was
//! given last.

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, Topo, VIP, server_ip};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

#[test]
fn a_thousand_changes_under_traffic_lose_nothing() {
    if !privileged("a_thousand_changes_under_traffic_lose_nothing") {
        return;
    }
    let mut t = Topo::build("churn", Arms::Two, 2, 2);
    t.start_servers();
    t.start_lvc();
    t.add_service("tcp", 7, "nat");
    let streams: Vec<_> = (0..10).map(|_| t.echo_session(7)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let runners: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Relaxed) {
                    let line = format!("stream {i} line {n} {}\n", "y".repeat(n % 300));
                    let back = s.echo(&line);
                    assert_eq!(back, line, "stream {i}, line {n}");
                    n += 1;
                }
                n
            })
        })
        .collect();

    let ctl = |args: &[&str]| t.ctl_ok(args);
    let (rs1, rs2) = (server_ip(0), server_ip(1));
    let file = t.lab.log_path("churn.toml");
    let mut changes = 0;
    for round in 0..50 {
        let port = 8000 + round % 7;
        let svc = format!("{VIP}:{port}");
        let sched = ["rr", "wrr", "lc", "wlc", "sh", "mh"][round as usize % 6];
        let steps: Vec<Vec<String>> = vec![
            vec![
                "add-service".into(),
                "--tcp".into(),
                svc.clone(),
                "-s".into(),
                sched.into(),
            ],
            vec![
                "add-server".into(),
                "-t".into(),
                svc.clone(),
                "-r".into(),
                rs1.clone(),
            ],
            vec![
                "add-server".into(),
                "-t".into(),
                svc.clone(),
                "-r".into(),
                rs2.clone(),
                "--method".into(),
                "dnat".into(),
            ],
            vec![
                "edit-server".into(),
                "-t".into(),
                svc.clone(),
                "-r".into(),
                rs1.clone(),
                "-w".into(),
                format!("{}", round % 5),
            ],
            vec![
                "edit-service".into(),
                "-t".into(),
                svc.clone(),
                "-s".into(),
                "wlc".into(),
                "--persistent".into(),
                "60".into(),
            ],
            vec![
                "edit-service".into(),
                "-t".into(),
                svc.clone(),
                "--persistent".into(),
                "0".into(),
            ],
            vec![
                "edit-server".into(),
                "-t".into(),
                svc.clone(),
                "-r".into(),
                rs2.clone(),
                "-x".into(),
                "100".into(),
            ],
            vec!["add-service".into(), "--udp".into(), svc.clone()],
            vec![
                "add-server".into(),
                "-u".into(),
                svc.clone(),
                "-r".into(),
                rs2.clone(),
            ],
            vec![
                "set-local-pool".into(),
                format!("10.2.0.{}", 100 + round % 3),
            ],
            vec!["-Z".into()],
            vec![
                "del-server".into(),
                "-t".into(),
                svc.clone(),
                "-r".into(),
                rs1.clone(),
            ],
            vec!["del-service".into(), "-u".into(), svc.clone()],
            vec!["del-service".into(), "-t".into(), svc.clone()],
            vec![
                "set-timeouts".into(),
                "--udp".into(),
                format!("{}", 200 + round),
            ],
            vec![
                "-E".into(),
                "-t".into(),
                format!("{VIP}:7"),
                "-s".into(),
                "rr".into(),
            ],
            vec![
                "-e".into(),
                "-t".into(),
                format!("{VIP}:7"),
                "-r".into(),
                rs1.clone(),
                "-w".into(),
                "1".into(),
            ],
            vec![
                "add-service".into(),
                "--tcp".into(),
                format!("{VIP}:9{round:03}"),
            ],
            vec![
                "del-service".into(),
                "--tcp".into(),
                format!("{VIP}:9{round:03}"),
            ],
        ];
        for s in &steps {
            let args: Vec<&str> = s.iter().map(String::as_str).collect();
            ctl(&args);
            changes += 1;
        }
        // A reload: the whole configuration, the streams' service included.
        let saved = ctl(&["save"]);
        std::fs::write(&file, &saved).unwrap();
        ctl(&["restore", &file.to_string_lossy()]);
        changes += 1;
    }
    assert!(changes >= 1000, "{changes} changes");
    stop.store(true, Relaxed);
    let lines: usize = runners
        .into_iter()
        .map(|r| r.join().expect("a stream lost or changed a line"))
        .sum();
    eprintln!("{changes} configuration changes; {lines} lines echoed meanwhile, none lost");
    assert!(lines > 100, "the streams ran: {lines} lines");
    // The configuration is what the last changes made.
    let listing = ctl(&["-L", "-n"]);
    assert!(
        listing.contains(&format!("TCP  {VIP}:7 rr\n")) && !listing.contains(":80"),
        "{listing}"
    );
    assert_eq!(
        listing.matches("\nTCP ").count() + listing.matches("\nUDP ").count(),
        1,
        "{listing}"
    );
}
