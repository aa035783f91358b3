//! The soak scenario (`soak` binary) for a short while: mixed load, control operations,
//! hostile connections and SIGKILLs of the server, then lost, duplicated and reordered
//! records must all be 0. BENCHMARKS.md records a 30-minute run.

#[test]
fn a_short_soak_with_kills_loses_duplicates_and_reorders_nothing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_soak"))
        .args(["--duration", "15", "--kill-every", "2-4", "--seed", "7"])
        .output()
        .expect("soak runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON line");
    for check in [
        "lost",
        "duplicated",
        "reordered",
        "seen_by_consumers_but_gone",
    ] {
        assert_eq!(report[check], 0, "{check}: {report}");
    }
    assert!(report["kills"].as_u64().unwrap() >= 2, "{report}");
    assert!(report["records_acked"].as_u64().unwrap() > 1000, "{report}");
    assert!(report["control_ops"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["hostile_connections"].as_u64().unwrap() > 0,
        "{report}"
    );
}
