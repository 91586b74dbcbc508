//! Embeds a traforato broker and worker in one process, with no HTTP at all.
//!
//! The worker talks to the broker through an [`InProcessBrokerLink`] and boots sandboxes with
//! the in-memory [`FakeBackend`] (a test double: its "shell" and "python" are simulations, see
//! its docs). The example keeps one sandbox warm, asks the broker where a create should go,
//! follows that placement by hand (the HTTP shells answer it with a `307` instead), then
//! execs a command, runs code, writes and reads a file, and deletes the sandbox.
//!
//! Run it with `cargo run -p traforato-examples --example embed`.

use std::error::Error;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use traforato_core::api::{CreateSandboxRequest, ExecRequest, FrameKind, RunCodeRequest};
use traforato_core::auth::Principal;
use traforato_core::backend::fake::FakeBackend;
use traforato_core::backend::VmBackend;
use traforato_core::broker::{Broker, BrokerConfig};
use traforato_core::clock::SystemClock;
use traforato_core::id::ComponentId;
use traforato_core::scheduler::LeastLoaded;
use traforato_core::telemetry::Metrics;
use traforato_core::tuple::SandboxTuple;
use traforato_core::worker::{
    BrokerLink, CreateOutcome, CreateQuery, InProcessBrokerLink, PrePullTarget, RunCodeOutcome,
    Worker, WorkerConfig,
};

/// The image of the sandboxes (the fake backend accepts any name).
const IMAGE: &str = "demo";

type BoxError = Box<dyn Error + Send + Sync>;

/// A worker configuration for one small host that keeps one `fake/demo/1` sandbox warm.
fn worker_config(broker_id: &ComponentId) -> Result<WorkerConfig, BoxError> {
    Ok(WorkerConfig {
        broker_id: broker_id.clone(),
        worker_id: ComponentId::parse("worker_a")?,
        // Where clients would reach the worker over HTTP; here it only appears in placements.
        advertise_url: "http://worker-a.example:8081".to_string(),
        hardware_sku: "general".to_string(),
        total_cores: 4,
        total_memory_mib: 4096,
        max_live_sandboxes: 4,
        default_ttl: Duration::from_secs(600),
        max_ttl: Duration::from_secs(3600),
        registration_heartbeat: Duration::from_secs(30),
        pre_pull: vec![PrePullTarget {
            tuple: SandboxTuple::normalize("fake", IMAGE, 1, "fake"),
            target_count: 1,
            warmup_script: String::new(),
            warmup_timeout: Duration::from_secs(10),
        }],
        // The rest (dev mode, `fake` virtualization, ...) from the test-util defaults; a real
        // deployment sets every field (see `WorkerConfig`).
        ..WorkerConfig::for_tests()
    })
}

/// Waits (polling) until `ready` holds, or fails after a few seconds.
async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::main]
pub async fn main() -> Result<(), BoxError> {
    let clock = Arc::new(SystemClock);

    // 1. The broker: placement policy, registry of workers, ready hints.
    let broker = Arc::new(Broker::new(
        BrokerConfig {
            default_virtualization: "fake".to_string(),
            ..BrokerConfig::default()
        },
        clock.clone(),
        Arc::new(LeastLoaded),
        Arc::new(Metrics::new(false)),
    ));
    let broker_id = broker.config().broker_id.clone();
    println!("broker {broker_id} up (instance {})", broker.instance_id());

    // 2. The worker, linked to the broker in-process, with the fake backend.
    let link: Arc<dyn BrokerLink> = Arc::new(InProcessBrokerLink::new(broker.clone()));
    let backend = FakeBackend::new();
    let worker = Worker::new(
        worker_config(&broker_id)?,
        vec![Arc::new(backend.clone()) as Arc<dyn VmBackend>],
        clock,
        Arc::new(Metrics::new(false)),
        Some(link),
    );

    // `run` registers with the broker, fills the warm pool and reaps expired sandboxes until
    // the shutdown future completes; then it deregisters and destroys everything it owns.
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.clone().run(async {
        let _ = stopped.await;
    }));

    wait_until("the worker to register", || {
        broker.is_worker_active("worker_a")
    })
    .await?;
    println!("worker_a registered with the broker");
    let tuple = SandboxTuple::normalize("fake", IMAGE, 1, "fake");
    wait_until("a warm sandbox", || {
        worker.ready_counts().get(&tuple).copied().unwrap_or(0) >= 1
    })
    .await?;
    // The ready event travels to the broker on its own task; wait until it shows up there.
    wait_until("the broker to learn of the warm sandbox", || {
        broker
            .availability_text()
            .lines()
            .any(|line| line.starts_with(&format!("fake\t{IMAGE}\t")))
    })
    .await?;
    println!(
        "broker availability:\n{}",
        broker.availability_text().trim_end()
    );

    // 3. Place a create through the broker. Over HTTP this is `POST /sandboxes` answered
    //    with a 307 to `placement.location`; embedded, we follow it by hand.
    let request = CreateSandboxRequest {
        image: IMAGE.to_string(),
        cpu: 1,
        virtualization: "fake".to_string(),
        ..CreateSandboxRequest::default()
    };
    let placement = broker.place_create(&request, None)?;
    println!(
        "broker placed the create on {} (warm hint: {:?}) -> {}",
        placement.worker_id, placement.local_vm_id, placement.location
    );

    let principal = Principal::dev();
    let hint = placement.local_vm_id.map(|id| id.to_string());
    let retry = placement.placement_retry.to_string();
    let started = Instant::now();
    let outcome = worker
        .create_sandbox(
            &principal,
            request,
            CreateQuery {
                local_vm_id: hint.as_deref(),
                placement_retry: Some(&retry),
            },
        )
        .await?;
    let created = match outcome {
        CreateOutcome::Created(created) => created,
        CreateOutcome::RetryPlacement { location } => {
            return Err(format!("worker sent the create back to the broker: {location}").into())
        }
    };
    let id = created.sandbox_id.clone();
    println!(
        "created {id} ({} start, {:?}, expires {})",
        created.start_type,
        started.elapsed(),
        created.expires_at
    );

    // 4. Exec: starts at once, output arrives as frames (long-polled with `wait`).
    let accepted = worker
        .start_exec(
            &principal,
            &id,
            ExecRequest {
                command: "echo hello from the sandbox".to_string(),
                ..ExecRequest::default()
            },
        )
        .await?;
    let mut cursor = 0u64;
    let mut exit_code = None;
    loop {
        let cursor_text = cursor.to_string();
        let page = worker
            .exec_frames(
                &principal,
                &id,
                &accepted.exec_id,
                Some(&cursor_text),
                Some("5s"),
            )
            .await?;
        for frame in &page.frames {
            match frame.kind {
                FrameKind::Stdout => print!("exec stdout: {}", frame.data),
                FrameKind::Stderr => print!("exec stderr: {}", frame.data),
                FrameKind::Exit => exit_code = Some(frame.data.clone()),
            }
        }
        cursor = page.next_cursor;
        if !page.has_more {
            break;
        }
    }
    println!("exec {} exited with {exit_code:?}", accepted.exec_id);
    if exit_code.as_deref() != Some("0") {
        return Err("exec did not exit 0".into());
    }

    // 5. Run code, waiting for the result.
    let outcome = worker
        .run_code(
            &principal,
            &id,
            RunCodeRequest {
                code: "print(\"hi from python\")".to_string(),
                runtime: "python".to_string(),
                wait: Some(true),
                ..RunCodeRequest::default()
            },
        )
        .await?;
    match outcome {
        RunCodeOutcome::Finished(done) => {
            print!("run-code stdout: {}", done.stdout);
            if done.exit_code != 0 {
                return Err(format!("run-code exited with {}", done.exit_code).into());
            }
        }
        other => return Err(format!("unexpected run-code outcome: {other:?}").into()),
    }

    // 6. Files: write, then read back.
    let text = "the answer is 42\n";
    let written = worker
        .write_file(
            &principal,
            &id,
            Some("/workspace/answer.txt"),
            Box::new(Cursor::new(text.as_bytes().to_vec())),
            false,
        )
        .await?;
    println!("wrote {} bytes to {}", written.bytes_written, written.path);
    let read = worker
        .read_file(&principal, &id, Some("/workspace/answer.txt"), Some("utf8"))
        .await?;
    print!("read back: {}", read.content);
    if read.content != text {
        return Err("read a different content than written".into());
    }

    // 7. Delete, then stop the worker (it deregisters and destroys what is left).
    worker.delete_sandbox(&principal, &id).await?;
    println!("deleted {id}; live sandboxes: {}", worker.live_sandboxes());
    let _ = stop.send(());
    running.await?;
    println!(
        "worker stopped; broker sees worker_a active: {}; fake VMs left: {}",
        broker.is_worker_active("worker_a"),
        backend.live_count()
    );
    if backend.live_count() != 0 {
        return Err("the worker left VMs behind".into());
    }
    Ok(())
}
