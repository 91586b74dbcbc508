//! The start-up benchmark's smoke mode, as CI runs it: every phase at a tiny size, so that the
//! benchmark cannot rot unnoticed. Its figures are not measurements (a debug build, a few
//! samples); the real run is `cargo run --release -p traforato-benches --bin startup`.

use std::process::Command;

#[test]
fn every_phase_of_the_startup_benchmark_runs() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: the benchmark's container backend needs root (runs in CI as root)");
        return;
    }
    let plot = std::env::temp_dir().join(format!("startup-smoke-{}.svg", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_startup"))
        .args(["--smoke", "--no-logs", "--json", "--plot"])
        .arg(&plot)
        .output()
        .expect("run the benchmark");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Under --json the human report is on stderr.
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{report}");
    for phase in 1..=10 {
        assert!(
            report.contains(&format!("[{phase}/10]")),
            "phase {phase} did not run:\n{report}"
        );
    }
    assert!(report.contains("smoke run: every phase ran"), "{report}");
    // stdout is the one JSON object, with a row per measure and its numbers.
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(json["smoke"], true);
    let rows = json["rows"].as_array().expect("rows");
    assert!(rows.len() >= 10, "{json}");
    assert!(rows.iter().all(|r| r["verdict"] == "smoke"), "{json}");
    let warm = rows
        .iter()
        .find(|r| r["measure"] == "warm create + first print (HTTP via broker)")
        .expect("the warm row");
    for key in ["p50_ms", "p90_ms", "p99_ms", "floor_p50_ms", "ratio"] {
        assert!(warm[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {warm}");
    }
    let burst = rows
        .iter()
        .find(|r| {
            r["measure"]
                .as_str()
                .is_some_and(|m| m.starts_with("burst of"))
        })
        .expect("the burst row");
    for key in ["warm_first", "warm_second", "pool_before", "pool_after"] {
        assert!(burst[key].as_f64().is_some(), "{key}: {burst}");
    }
    // The latency distributions, a line per series with its label.
    let svg = std::fs::read_to_string(&plot).expect("the plot");
    let _ = std::fs::remove_file(&plot);
    assert!(svg.starts_with("<svg"), "{svg:.200}");
    assert!(
        svg.contains("create, egress all"),
        "a series' label in the legend"
    );
}
