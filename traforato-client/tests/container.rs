//! End-to-end with real sandboxes: the client against a loopback broker and worker running the
//! `container` backend. This test binary is also the sandbox init (`harness = false`: its
//! `main` hands over to the init first, as the worker binary does), so it needs no other file.
//! Needs root; without it the run says so and skips (it runs in CI as root).

use std::path::PathBuf;
use std::sync::Arc;

use traforato_client::{Client, CreateSandbox, Runtime};
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
        .filter(|name| name != "images")
        .collect();
    assert!(left.is_empty(), "left in the state dir: {left:?}");
    backend.remove_cgroup_parents().expect("cgroup parents");
    std::fs::remove_dir_all(&state_dir).expect("remove state dir");
}
