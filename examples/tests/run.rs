//! Runs the in-process examples (`embed`, `custom_scheduler`, `custom_backend`) so that CI
//! checks they still work. `custom_*` are compiled here as modules and their `main` is called;
//! `embed` runs as its own program (cargo builds the examples before the tests), since the
//! container backend re-executes it as each sandbox's init.

use std::path::PathBuf;
use std::process::Command;

#[path = "../examples/custom_backend.rs"]
mod custom_backend;
#[path = "../examples/custom_scheduler.rs"]
mod custom_scheduler;

/// The built example `name`: `target/<profile>/examples/<name>`, beside this test's
/// `deps/` directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    profile_dir.join("examples").join(name)
}

/// Runs the example `name` with `args`; fails the test with its output when it fails.
fn run_example(name: &str, args: &[&str]) -> String {
    let path = example(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests through cargo, which builds the examples",
        path.display()
    );
    let out = Command::new(&path)
        .args(args)
        .output()
        .expect("the example starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn embed_example_runs_on_the_fake_backend() {
    let out = run_example("embed", &["--fake"]);
    assert!(
        out.contains("(warm)"),
        "the create claims the warm sandbox:\n{out}"
    );
    // What the fake was scripted to answer, relayed by the worker.
    assert!(out.contains("exec: hello from fake-sandbox\n"), "{out}");
    assert!(out.contains("python: 42\n"), "{out}");
    assert!(out.contains("\"numbers.txt\""), "{out}");
    assert!(out.contains("deleted; live sandboxes: 0"), "{out}");
}

#[test]
fn embed_example_runs_real_container_sandboxes() {
    use std::os::unix::fs::MetadataExt;
    // `/proc/self` belongs to the process's effective uid.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        eprintln!("skipped: the container backend needs root (CI runs this test as root)");
        return;
    }
    let out = run_example("embed", &[]);
    assert!(
        out.contains("(warm)"),
        "the create claims the warm sandbox:\n{out}"
    );
    assert!(out.contains("python: 42"), "{out}");
    assert!(out.contains("\"numbers.txt\""), "{out}");
    assert!(out.contains("deleted; live sandboxes: 0"), "{out}");
    // Nothing left: the worker's shutdown destroyed the warm sandbox too.
    let left = std::fs::read_dir("/run/traforato-embed")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name() != "images" && e.file_name() != "cgroup-parents")
                .count()
        })
        .unwrap_or(0);
    assert_eq!(left, 0, "sandbox directories left in /run/traforato-embed");
}

#[test]
fn custom_scheduler_example_runs() {
    custom_scheduler::main().expect("the custom_scheduler example failed");
}

#[test]
fn custom_backend_example_runs() {
    custom_backend::main().expect("the custom_backend example failed");
}
