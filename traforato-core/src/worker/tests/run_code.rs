//! Worker tests: run code: waiting, syntax errors, background runs, validation.

use super::*;
use crate::api::FrameKind;
use crate::backend::fake::{FakeCode, FakeExec};

#[tokio::test(start_paused = true)]
async fn run_code_waits_for_the_result() {
    let h = Harness::new();
    h.fake.set_script_code(
        "console.log('hello-node')",
        FakeCode::Runs(FakeExec::new().stdout("hello-node\n")),
    );
    h.fake.set_script_code(
        "print('hello-python')",
        FakeCode::Runs(FakeExec::new().stdout("hello-python\n")),
    );
    h.fake.set_script_code(
        "throw new Error('boom')",
        FakeCode::Runs(
            FakeExec::new()
                .stderr("Error: boom\n    at [eval]:1:7\n")
                .exit_code(1),
        ),
    );
    let sid = h.sandbox().await;
    let Ok(RunCodeOutcome::Finished(r)) =
        code(&h, &sid, "node", "console.log('hello-node')", None).await
    else {
        panic!("node run")
    };
    assert_eq!(
        (
            r.runtime.as_str(),
            r.status.as_str(),
            r.stdout.as_str(),
            r.exit_code
        ),
        ("node", "exited", "hello-node\n", 0)
    );
    assert_eq!(r.output, "hello-node\n");
    let Ok(RunCodeOutcome::Finished(r)) =
        code(&h, &sid, " Python ", "print('hello-python')", Some(true)).await
    else {
        panic!("python run")
    };
    assert_eq!(
        (r.runtime.as_str(), r.stdout.as_str(), r.exit_code),
        ("python", "hello-python\n", 0)
    );
    let Ok(RunCodeOutcome::Finished(r)) =
        code(&h, &sid, "node", "throw new Error('boom')", None).await
    else {
        panic!("node throw")
    };
    assert_eq!(r.exit_code, 1);
    assert_eq!(r.stderr, "Error: boom\n    at [eval]:1:7\n");
    assert_eq!(r.stdout, "");
    // The exec record matches.
    let exec_id = ExecId::parse(&r.exec_id).unwrap();
    let record = h.worker.get_exec(&dev(), &sid, &exec_id).unwrap();
    assert_eq!(record.runtime, "node");
    assert_eq!(record.exit_code, Some(r.exit_code));
}

#[tokio::test(start_paused = true)]
async fn run_code_syntax_error_is_reported() {
    const UNCLOSED: &str = "SyntaxError: '(' was never closed";
    let h = Harness::new();
    h.fake
        .set_script_code("print('oops'", FakeCode::SyntaxError(UNCLOSED.into()));
    h.fake
        .set_script_code("print(", FakeCode::SyntaxError(UNCLOSED.into()));
    let sid = h.sandbox().await;
    let Ok(RunCodeOutcome::SyntaxError(body)) =
        code(&h, &sid, "python", "print('oops'", None).await
    else {
        panic!("syntax error expected")
    };
    assert_eq!(body.error, "syntax_error");
    assert_eq!(body.stderr, UNCLOSED);
    assert_eq!(body.status, "exited");
    assert_eq!(body.exit_code, 1);
    let exec_id = ExecId::parse(&body.exec_id).unwrap();
    let frames = all_frames(&h, &dev(), &sid, &exec_id).await;
    assert_eq!(
        frames.iter().map(|f| f.kind).collect::<Vec<_>>(),
        vec![FrameKind::Stderr, FrameKind::Exit]
    );

    // Asynchronously, a syntax error just ends the exec.
    let Ok(RunCodeOutcome::Accepted(a)) = code(&h, &sid, "python", "print(", Some(false)).await
    else {
        panic!("accepted expected")
    };
    let frames = all_frames(&h, &dev(), &sid, &a).await;
    assert_eq!(frames.last().unwrap().data, "1");
}

#[tokio::test(start_paused = true)]
async fn run_code_in_background() {
    let h = Harness::new();
    let source = "import time\ntime.sleep(0.05)\nprint('later')";
    h.fake.set_script_code(
        source,
        FakeCode::Runs(
            FakeExec::new()
                .sleep(Duration::from_millis(50))
                .stdout("later\n"),
        ),
    );
    let sid = h.sandbox().await;
    let Ok(RunCodeOutcome::Accepted(a)) = code(&h, &sid, "python", source, Some(false)).await
    else {
        panic!("accepted expected")
    };
    let record = h.worker.get_exec(&dev(), &sid, &a).unwrap();
    assert_eq!(record.exec_id, a.to_string());
    assert_eq!(record.status, "running");
    eventually("exited", || {
        h.worker.get_exec(&dev(), &sid, &a).unwrap().status == "exited"
    })
    .await;
    assert_eq!(
        h.worker.get_exec(&dev(), &sid, &a).unwrap().stdout,
        "later\n"
    );
}

#[tokio::test]
async fn run_code_validation() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    assert!(matches!(
        code(&h, &sid, "ruby", "puts 1", None).await,
        Err(WorkerError::InvalidRuntime)
    ));
    assert!(matches!(
        code(&h, &sid, "python", "", None).await,
        Err(WorkerError::CodeRequired)
    ));
    let big = "#".repeat(1_048_577);
    assert!(matches!(
        code(&h, &sid, "python", &big, None).await,
        Err(WorkerError::CodeTooLarge)
    ));
}

#[tokio::test]
async fn code_for_a_missing_interpreter_is_refused_naming_it() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    h.fake
        .set_script_code("print('hi')", FakeCode::RuntimeMissing);
    match code(&h, &sid, "python", "print('hi')", None).await {
        Err(WorkerError::RunRefused(message)) => {
            assert_eq!(
                message,
                "python is not available in this sandbox's image (no python3 on its PATH)"
            )
        }
        other => panic!("expected RunRefused, got {other:?}"),
    }
    // In the background, the record says it.
    let Ok(RunCodeOutcome::Accepted(exec_id)) =
        code(&h, &sid, "node", "print('hi')", Some(false)).await
    else {
        panic!("a background run is accepted");
    };
    all_frames(&h, &dev(), &sid, &exec_id).await;
    let record = h.worker.get_exec(&dev(), &sid, &exec_id).unwrap();
    assert_eq!(record.exit_code, Some(127));
    assert!(
        record.stderr.contains("no node on its PATH"),
        "{}",
        record.stderr
    );
}
