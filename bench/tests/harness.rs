//! The harness itself, end to end, in a small configuration: lab, lvc and
//! the afxdp-raw reference, the throughput search, paced latency, the
//! connection-table probe, and the three output files.

use std::process::Command;

#[test]
fn quick_run_measures_and_reports() {
    if !lvc_tests::privileged("quick_run_measures_and_reports") {
        return;
    }
    let out = std::env::temp_dir().join(format!("lvc-bench-test-{}", std::process::id()));
    let run = Command::new(lvc_tests::bin("lvc-bench"))
        .args([
            "run",
            "--kinds",
            "lvc-nat,afxdp-raw",
            "--scenarios",
            "udp64,latency",
            "--repeat",
            "1",
            "--seconds",
            "1",
            "--conntrack",
            "20000",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("lvc-bench runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "lvc-bench failed:\n{stderr}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json"))
            .expect("valid JSON");
    let cell = |scenario: &str, kind: &str| {
        json["cells"]
            .as_array()
            .expect("cells")
            .iter()
            .find(|c| c["scenario"] == scenario && c["kind"].to_string().contains(kind))
            .unwrap_or_else(|| panic!("no {kind} {scenario} cell:\n{stderr}"))
            .clone()
    };
    for kind in ["Nat", "AfxdpRaw"] {
        let c = cell("Udp64", kind);
        let s = &c["samples"][0];
        assert!(
            s["value"].as_f64().unwrap() > 0.0,
            "{kind} forwarded nothing:\n{stderr}"
        );
        // Round robin (lvc) and a flow hash (afxdp-raw) over 256 flows:
        // both real servers get a fair share.
        let split: Vec<f64> = s["split"]
            .as_array()
            .expect("split")
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(split.len(), 2, "{kind}: {split:?}");
        assert!(
            split.iter().all(|&f| (0.35..=0.65).contains(&f)),
            "{kind}: {split:?}"
        );
        let lat = &cell("Latency", kind)["samples"][0]["latency_us"];
        assert!(lat[2].as_f64().unwrap() > 0.0, "{kind}: no latency: {lat}");
    }
    let ct = &json["conntrack"][0];
    assert_eq!(ct["flows"], 20000);
    assert!(ct["bytes_per_flow"].as_f64().unwrap() > 50.0, "{ct}");
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("| lvc-nat ÷ afxdp-raw |"), "{md}");
    let svg = std::fs::read_to_string(out.join("results.svg")).expect("results.svg");
    assert!(
        svg.starts_with("<svg") && svg.contains("64-byte UDP delivered"),
        "{svg}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
