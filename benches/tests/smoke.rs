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
    let out = Command::new(env!("CARGO_BIN_EXE_startup"))
        .args(["--smoke", "--no-logs"])
        .output()
        .expect("run the benchmark");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for phase in 1..=8 {
        assert!(
            stdout.contains(&format!("[{phase}/8]")),
            "phase {phase} did not run:\n{stdout}"
        );
    }
    assert!(stdout.contains("smoke run: every phase ran"), "{stdout}");
    assert!(
        !stdout.contains("| NOT"),
        "a smoke run judges no target:\n{stdout}"
    );
}
