//! End-to-end with real sandboxes: the client against a loopback broker and worker running the
//! `container` backend. This test binary is also the sandbox init (`harness = false`: its
//! `main` hands over to the init first, as the worker binary does), so it needs no other file.
//! Needs root; without it the run says so and skips (it runs in CI as root).

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use traforato_client::{
    Client, Command, CreateSandbox, InteractiveCommand, OutputEvent, Runtime, Signal,
};
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
    runtime.block_on(client_drives_container_sandboxes());
    println!("test client_drives_container_sandboxes ... ok");
    println!("1 passed, 0 failed");
}

async fn client_drives_container_sandboxes() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let state_dir = std::env::temp_dir().join(format!("traforato-client-{}", &id[..8]));
    let backend = Arc::new(
        ContainerBackend::new(ContainerConfig {
            state_dir: state_dir.clone(),
            cgroup_parent: format!("traforato-client-{}", &id[..12]),
            init_program: std::env::current_exe().expect("own path"),
            ..ContainerConfig::default()
        })
        .expect("container backend as root"),
    );
    let backends: Vec<Arc<dyn VmBackend>> = vec![backend.clone()];
    let stack = LocalStack::start(&AuthConfig::default(), "container", backends)
        .await
        .expect("stack");
    let client = Client::new(&stack.broker.url).expect("client");

    let sandbox = client
        .create_sandbox(CreateSandbox::new("host"))
        .await
        .expect("create");
    let out = sandbox
        .run_code(
            Runtime::Python,
            "import os\nopen('/workspace/answer.txt', 'w').write(str(6 * 7))\nprint(os.getpid())",
        )
        .await
        .expect("run python");
    assert!(out.success(), "{out:?}");
    // A pid namespace of its own: small pids, not the host's.
    let pid: u32 = out.stdout.trim().parse().expect("a pid");
    assert!(pid < 1000, "pid {pid} looks like a host pid");
    assert_eq!(
        sandbox
            .files()
            .read_text("/workspace/answer.txt")
            .await
            .expect("read"),
        "42"
    );

    let syntax = sandbox
        .run_code(Runtime::Node, "console.log(")
        .await
        .expect("run node");
    assert!(syntax.syntax_error, "{syntax:?}");
    assert!(syntax.stderr.contains("SyntaxError"), "{}", syntax.stderr);

    sandbox
        .files()
        .write_text("/workspace/in.txt", "from the client\n")
        .await
        .expect("write");
    let exec = sandbox
        .exec("cat /workspace/in.txt; hostname; exit 3")
        .await
        .expect("exec");
    assert_eq!(exec.exit_code, 3);
    assert!(exec.stdout.starts_with("from the client\n"), "{exec:?}");

    interactive_execs(&sandbox).await;

    let vm_dir: PathBuf = {
        let parsed = traforato_core::id::SandboxId::parse(sandbox.id()).expect("id");
        state_dir.join(parsed.local_vm_id().to_string())
    };
    assert!(vm_dir.exists());
    sandbox.delete().await.expect("delete");
    assert!(
        !vm_dir.exists(),
        "{} is left after delete",
        vm_dir.display()
    );

    stack.stop().await.expect("stop");
    let left: Vec<String> = std::fs::read_dir(&state_dir)
        .expect("state dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "images" && name != "cgroup-parents")
        .collect();
    assert!(left.is_empty(), "left in the state dir: {left:?}");
    backend.remove_cgroup_parents().expect("cgroup parents");
    std::fs::remove_dir_all(&state_dir).expect("remove state dir");
}

/// `exec_interactive` through the broker's redirect: `cat` on pipes, and a terminal that
/// reports its size before and after a resize.
async fn interactive_execs(sandbox: &traforato_client::Sandbox) {
    let mut cat = sandbox
        .exec_interactive(InteractiveCommand::new("cat"))
        .await
        .expect("interactive cat");
    cat.send_stdin(b"hello ").await.expect("stdin");
    cat.send_stdin(b"over a websocket\n").await.expect("stdin");
    cat.close_stdin().await.expect("eof");
    let (out, code) = collect(cat).await;
    assert_eq!(code, 0);
    assert_eq!(out, "hello over a websocket\n");

    let mut tty = sandbox
        .exec_interactive(
            InteractiveCommand::new("stty size; read line; stty size; exit 7")
                .tty(33, 101)
                .env("GREETING", "hi")
                .cwd("/tmp"),
        )
        .await
        .expect("interactive tty");
    // The first size is the one asked for; wait for it before resizing.
    let mut seen = String::new();
    while !seen.contains("33 101") {
        match tty.next().await.expect("output").expect("event") {
            OutputEvent::Stdout(data) => seen.push_str(&String::from_utf8_lossy(&data)),
            other => panic!("unexpected {other:?} after {seen:?}"),
        }
    }
    tty.resize(40, 120).await.expect("resize");
    tty.send_stdin(b"go\n").await.expect("stdin");
    let (rest, code) = collect(tty).await;
    assert_eq!(code, 7);
    assert!(rest.contains("40 120"), "{rest:?}");

    // Input without a WebSocket: one-shot bytes, then more through the stdin route, then EOF.
    let cat = sandbox
        .exec_stream(Command::shell("cat").stdin(b"first ").interactive())
        .await
        .expect("cat");
    cat.send_stdin(&b"second\n"[..]).await.expect("stdin");
    cat.close_stdin().await.expect("eof");
    let out = cat.wait().await.expect("cat output");
    assert_eq!((out.stdout.as_str(), out.exit_code), ("first second\n", 0));
    let err = cat.send_stdin(&b"late"[..]).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");

    // A signal through the handle: the worker names the exec in its handshake.
    let sleeper = sandbox
        .exec_interactive(InteractiveCommand::new("sleep 30"))
        .await
        .expect("interactive sleep");
    let exec_id = sleeper.exec_id().expect("an exec id").to_string();
    assert_eq!(
        sandbox
            .execution(&exec_id)
            .record()
            .await
            .expect("record")
            .command,
        "sleep 30"
    );
    sleeper.signal(Signal::Term).await.expect("signal");
    assert_eq!(sleeper.wait().await.expect("exit"), 128 + 15);

    // A session: detach, reattach by name, the history of what was missed, then live output.
    let mut session = sandbox
        .exec_interactive(
            InteractiveCommand::new("echo first; read line; echo second:$line")
                .session("client-s1"),
        )
        .await
        .expect("session");
    assert_eq!(
        session.next().await.expect("output").expect("event"),
        OutputEvent::Stdout("first\n".into())
    );
    session.detach().await.expect("detach");
    let again = sandbox.attach_session("client-s1").await.expect("reattach");
    let (mut input, mut output) = again.split();
    input.history(0).await.expect("history");
    assert_eq!(
        output.next().await.expect("history").expect("event"),
        OutputEvent::Stdout("first\n".into())
    );
    assert_eq!(
        output.next().await.expect("end").expect("event"),
        OutputEvent::HistoryEnd(1)
    );
    assert_eq!(output.watermark(), 1);
    input.send_stdin(b"x\n").await.expect("stdin");
    assert_eq!(
        output.next().await.expect("live").expect("event"),
        OutputEvent::Stdout("second:x\n".into())
    );
    assert_eq!(output.wait().await.expect("exit"), 0);
    let missing = sandbox.attach_session("no-such").await.unwrap_err();
    assert_eq!(missing.status(), Some(404), "{missing}");

    // The browser URL (dev mode: no token) opens the exec it was made for.
    let url = sandbox
        .exec_ws_url(&InteractiveCommand::new("echo via url"))
        .await
        .expect("url");
    assert!(url.url.starts_with("ws://"), "{url:?}");
    assert_eq!(url.expires_at, None);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.url.as_str())
        .await
        .expect("socket");
    let mut text = String::new();
    while let Some(Ok(message)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = message {
            text.push_str(t.as_str());
        }
    }
    // "via url\n" in base64.
    assert!(text.contains("dmlhIHVybAo="), "{text}");
}

async fn collect(mut exec: traforato_client::InteractiveExec) -> (String, i32) {
    let mut out = String::new();
    while let Some(event) = exec.next().await {
        match event.expect("event") {
            OutputEvent::Stdout(data) | OutputEvent::Stderr(data) => {
                out.push_str(&String::from_utf8_lossy(&data))
            }
            OutputEvent::Exit(code) => return (out, code),
            OutputEvent::HistoryEnd(_) => {}
        }
    }
    panic!("no exit after {out:?}");
}
