//! Uses `traforato-client` against a running traforato: create a sandbox, run Python, write
//! and read a file, delete.
//!
//! **Needs a server.** Start one first, e.g. `traforato-dev` (broker and worker in one
//! process, on `http://localhost:8080` by default; the `container` backend needs root), then:
//!
//! ```text
//! cargo run -p traforato-examples --example client
//! ```
//!
//! Environment: `TRAFORATO_URL` (default `http://localhost:8080`), `TRAFORATO_JWT_SECRET` and
//! `TRAFORATO_CLIENT_ID` for a server in prod mode (a fresh token per request), `TRAFORATO_IMAGE` (default `host`, the
//! container backend's image of the host's system directories) and
//! `TRAFORATO_VIRTUALIZATION` (default: the deployment's default).

use std::error::Error;
use std::time::{Duration, Instant};

use traforato_client::{CreateSandbox, Runtime};
use traforato_examples::{client_from_env, env_or};

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
pub async fn main() -> Result<(), BoxError> {
    let url = env_or("TRAFORATO_URL", "http://localhost:8080");
    let client = client_from_env()?;
    if let Err(error) = client.health().await {
        return Err(format!(
            "no traforato at {url} ({error}); start one (e.g. traforato-dev) or set TRAFORATO_URL"
        )
        .into());
    }

    let spec = CreateSandbox {
        virtualization: env_or("TRAFORATO_VIRTUALIZATION", ""),
        ttl: Some(Duration::from_secs(300)),
        ..CreateSandbox::new(env_or("TRAFORATO_IMAGE", "host"))
    };
    let started = Instant::now();
    let sandbox = client.create_sandbox(spec).await?;
    let start_type = sandbox
        .created_info()
        .map(|c| c.start_type.clone())
        .unwrap_or_default();
    println!(
        "created {} ({start_type} start) in {:?}",
        sandbox.id(),
        started.elapsed()
    );

    // From here on a failure should not leak the sandbox: run the steps, then always delete.
    let steps = async {
        let started = Instant::now();
        let out = sandbox
            .run_code(
                Runtime::Python,
                "import sys\nprint('hello from python', sys.version.split()[0])",
            )
            .await?;
        print!("python ({:?}): {}", started.elapsed(), out.stdout);
        if !out.success() {
            return Err(format!("python failed ({}): {}", out.exit_code, out.stderr).into());
        }

        let files = sandbox.files();
        files
            .write_text("/workspace/hello.txt", "written through the client\n")
            .await?;
        let back = files.read_text("/workspace/hello.txt").await?;
        print!("read back: {back}");

        // What the files API wrote, a command in the sandbox sees.
        let out = sandbox.exec("wc -c /workspace/hello.txt").await?;
        print!("exec: {}", out.stdout);
        if !out.success() {
            return Err(format!("exec failed ({}): {}", out.exit_code, out.stderr).into());
        }
        Ok::<(), BoxError>(())
    }
    .await;

    sandbox.delete().await?;
    println!("deleted {}", sandbox.id());
    steps
}
