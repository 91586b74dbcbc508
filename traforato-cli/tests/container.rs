//! End-to-end tests of `traforato-cli exec -i` and `shell` against a loopback broker and worker running the
//! `container` backend (the fake backend cannot run interactive commands). This test binary is
//! also the sandbox init (`harness = false`), so it needs no other file. Needs root; without it
//! the run says so and skips (it runs in CI as root).

use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use traforato_core::auth::AuthConfig;
use traforato_core::backend::container::{
    init_main_if_requested, ContainerBackend, ContainerConfig,
};
use traforato_core::backend::VmBackend;
use traforato_server::testing::LocalStack;

fn main() {
    init_main_if_requested();
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: needs root (runs in CI as root)");
        println!("0 passed, 0 failed, 1 skipped");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(exec_interactive_and_shell());
    println!("test exec_interactive_and_shell ... ok");
    println!("1 passed, 0 failed");
}

async fn exec_interactive_and_shell() {
    let id = format!("{:08x}", std::process::id());
    let state_dir = std::env::temp_dir().join(format!("traforato-cli-{id}"));
    let backend = Arc::new(
        ContainerBackend::new(ContainerConfig {
            state_dir: state_dir.clone(),
            cgroup_parent: format!("traforato-cli-{id}"),
            init_program: std::env::current_exe().expect("own path"),
            ..ContainerConfig::default()
        })
        .expect("container backend as root"),
    );
    let backends: Vec<Arc<dyn VmBackend>> = vec![backend.clone()];
    let stack = LocalStack::start(&AuthConfig::default(), "container", backends)
        .await
        .expect("stack");
    let url = stack.broker.url.clone();

    let (code, sandbox, _) = cli(&url, &["sandbox", "create", "--image", "host"], b"").await;
    assert_eq!(code, 0, "create");
    let sandbox = sandbox.trim().to_string();

    // Several words: an argument vector, quoted for the sandbox's shell.
    let (code, out, err) = cli(
        &url,
        &["exec", "-i", &sandbox, "--", "tr", "a-z", "A-Z"],
        b"hello\nfrom stdin\n",
    )
    .await;
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "HELLO\nFROM STDIN\n");

    // One word: a script; its exit code and stderr come through.
    let (code, out, err) = cli(
        &url,
        &["exec", "-i", &sandbox, "--", "cat; echo oops >&2; exit 5"],
        b"piped",
    )
    .await;
    assert_eq!(code, 5, "stderr: {err}");
    assert_eq!(out, "piped");
    assert_eq!(err, "oops\n");

    // `shell` without a local terminal: no raw mode, the default 24x80 size, the remote
    // command still on a terminal (stdin is echoed there, so only `contains`).
    let (code, out, err) = cli(
        &url,
        &["shell", &sandbox],
        b"stty size; tty >/dev/null && echo on-a-$((1 + 1))-tty; exit 3\n",
    )
    .await;
    assert_eq!(code, 3, "stdout: {out} stderr: {err}");
    assert!(out.contains("24 80"), "{out:?}");
    assert!(out.contains("on-a-2-tty"), "{out:?}");

    shell_under_tmux(&url, &sandbox).await;

    let (code, _, _) = cli(&url, &["sandbox", "delete", &sandbox], b"").await;
    assert_eq!(code, 0, "delete");
    stack.stop().await.expect("stop");
    backend.remove_cgroup_parents().expect("cgroup parents");
    std::fs::remove_dir_all(&state_dir).expect("remove state dir");
}

/// `shell` on a real local terminal (a tmux pane): a command runs, the sandbox follows a
/// resize of the local window (`SIGWINCH`), Python's prompt works, the exit code comes back
/// and the local terminal settings are what they were before.
async fn shell_under_tmux(url: &str, sandbox: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = |name: &str| dir.path().join(name).display().to_string();
    let script = format!(
        "stty -a > '{before}'; '{cli}' --url '{url}' shell {sandbox}; echo $? > '{code}'; stty -a > '{after}'",
        before = file("before"),
        after = file("after"),
        code = file("code"),
        cli = env!("CARGO_BIN_EXE_traforato-cli"),
    );
    let tmux = Tmux(format!("traforato-cli-test-{}", std::process::id()));
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "100",
        "-y",
        "30",
        "sh",
        "-c",
        &script,
    ]);

    tmux.type_line("echo $((6 * 7))-ok");
    tmux.wait_for("42-ok").await;
    tmux.run(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    tmux.type_line("stty size");
    tmux.wait_for("40 120").await;
    tmux.type_line("python3 -q");
    tmux.wait_for(">>>").await;
    tmux.type_line("print('py-' + str(6 * 7 + 1))");
    tmux.wait_for("py-43").await;
    tmux.type_line("exit()");
    tmux.type_line("exit 4");

    let code_file = dir.path().join("code");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !code_file.exists() || std::fs::read_to_string(dir.path().join("after")).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shell did not exit; pane: {}",
            tmux.capture()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        std::fs::read_to_string(&code_file).expect("code").trim(),
        "4"
    );
    let before = std::fs::read_to_string(dir.path().join("before")).expect("before");
    let after = std::fs::read_to_string(dir.path().join("after")).expect("after");
    // The window size changed on purpose; every other setting must be back.
    let settings = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(settings(&before), settings(&after), "terminal not restored");
    assert!(
        !before.contains("-icanon"),
        "the pane starts in canonical mode: {before}"
    );
}

/// A private tmux server, killed when dropped.
struct Tmux(String);

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.0, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux (scripts/test installs it)");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn type_line(&self, line: &str) {
        self.run(&["send-keys", "-t", "t", "-l", line]);
        self.run(&["send-keys", "-t", "t", "Enter"]);
    }

    fn capture(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    async fn wait_for(&self, text: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let pane = self.capture();
            if pane.contains(text) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{text:?} never appeared; pane:\n{pane}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

/// Runs the CLI against `url` with `stdin` piped in: (exit code, stdout, stderr).
async fn cli(url: &str, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_traforato-cli"))
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("TRAFORATO_TOKEN")
        .env_remove("TRAFORATO_CLIENT_ID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the cli");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin).await.expect("write stdin");
    drop(pipe);
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the cli did not finish")
        .expect("cli output");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}
