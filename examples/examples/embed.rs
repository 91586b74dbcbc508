//! Embeds a traforato worker in your own program, with no HTTP: real sandboxes on Linux
//! namespaces (the `container` backend, as root), one kept warm so that a create is a claim.
//!
//! ```text
//! sudo cargo run -p traforato-examples --example embed           # container sandboxes
//! cargo run -p traforato-examples --example embed -- --fake      # the fake backend, no root
//! ```
//!
//! The `container` backend runs each sandbox's init by re-executing this program, so `main`
//! first calls `init_main_if_requested`. `--fake` swaps in the in-memory test double for
//! machines without root: it runs nothing, so it is scripted (see [`fake_backend`]) to answer
//! this program's command and code as a real sandbox would.

use std::error::Error;
use std::time::{Duration, Instant};

use traforato_core::api::{CreateSandbox, Runtime};
use traforato_core::backend::container::{init_main_if_requested, ContainerConfig};
use traforato_core::backend::fake::{FakeBackend, FakeCode, FakeExec};
use traforato_core::worker::Worker;

type BoxError = Box<dyn Error + Send + Sync>;

/// The command this program runs in its sandbox.
const COMMAND: &str = "echo hello from $(hostname)";

/// The Python this program runs in its sandbox: it multiplies the numbers it wrote to a file.
const CODE: &str = "a, b = open('/workspace/numbers.txt').read().split()\nprint(int(a) * int(b))";

/// The fake backend for `--fake`, scripted with the answers a real sandbox gives to
/// [`COMMAND`] and [`CODE`]: the fake runs no shell and no interpreter.
fn fake_backend() -> FakeBackend {
    FakeBackend::new()
        .script(COMMAND, FakeExec::new().stdout("hello from fake-sandbox\n"))
        .script_code(CODE, FakeCode::Runs(FakeExec::new().stdout("42\n")))
}

pub fn main() -> Result<(), BoxError> {
    // When this process is a sandbox's init, this runs it and never returns.
    init_main_if_requested();
    let fake = std::env::args().any(|arg| arg == "--fake");
    tokio::runtime::Runtime::new()?.block_on(run(fake))
}

async fn run(fake: bool) -> Result<(), BoxError> {
    let (builder, image) = if fake {
        (Worker::builder().backend(fake_backend()), "demo")
    } else {
        // A state dir and cgroup of its own, beside any traforato-worker on this host.
        let config = ContainerConfig {
            state_dir: "/run/traforato-embed".into(),
            cgroup_parent: "traforato-embed".into(),
            ..ContainerConfig::default()
        };
        (Worker::builder().container(config), "host")
    };
    let virtualization = if fake { "fake" } else { "container" };
    let worker = builder.warm(virtualization, image, 1, 1).build()?;

    // The worker's background work: warm pool, TTL reaper; on shutdown it destroys the rest.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.clone().run(async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.ready_counts().values().sum::<usize>() == 0 {
        if Instant::now() > deadline {
            return Err("no warm sandbox after 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    let sandbox = worker.create(CreateSandbox::new(image)).await?;
    let start_type = sandbox.created_info().map_or("", |c| c.start_type.as_str());
    println!(
        "created {} ({start_type}) in {:?}",
        sandbox.id(),
        started.elapsed()
    );

    let out = sandbox.exec(COMMAND).await?;
    print!("exec: {}", out.stdout);

    sandbox
        .files()
        .write("/workspace/numbers.txt", "6 7\n")
        .await?;
    let out = sandbox.run_code(Runtime::Python, CODE).await?;
    print!("python: {}", out.stdout);
    if out.stdout != "42\n" {
        return Err(format!("python printed {:?}", out.stdout).into());
    }

    let listed = sandbox.files().list("/workspace").await?;
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    println!("/workspace: {names:?}");

    sandbox.delete().await?;
    println!("deleted; live sandboxes: {}", worker.live_sandboxes());
    let _ = stop.send(());
    running.await?;
    Ok(())
}
