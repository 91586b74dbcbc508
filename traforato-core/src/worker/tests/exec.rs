//! Worker tests: exec and its frames.

use super::*;
use crate::api::FrameKind;
use crate::backend::fake::FakeExec;
use crate::backend::Program;

#[tokio::test(start_paused = true)]
async fn exec_runs_and_records() {
    let h = Harness::new();
    // A command that fails is still an exec: accepted, recorded, exited with its code.
    h.fake.set_script(
        "echo hi; echo oops >&2; exit 2",
        FakeExec::new().stdout("hi\n").stderr("oops\n").exit_code(2),
    );
    h.fake
        .set_script("echo hello", FakeExec::new().stdout("hello\n"));
    // An argv reaches the backend as is, with its env (a shell would squeeze `a  b`).
    h.fake.set_exec_handler(Arc::new(|spec, _| {
        let argv = Program::Argv(vec!["echo".into(), "a  b".into()]);
        (spec.program == argv && spec.env.get("K").map(String::as_str) == Some("V"))
            .then(|| FakeExec::new().stdout("a  b\n"))
    }));
    let sid = h.sandbox().await;
    let accepted = h
        .worker
        .start_exec(
            &dev(),
            &sid,
            ExecRequest {
                command: "echo hi; echo oops >&2; exit 2".into(),
                ..Default::default()
            },
        )
        .await;
    let accepted = accepted.unwrap();
    let record = h.worker.get_exec(&dev(), &sid, &accepted).unwrap();
    assert_eq!(record.status, "running");
    assert_eq!(record.exec_id, accepted.to_string());
    assert_eq!(record.sandbox_id, sid.to_string());
    all_frames(&h, &dev(), &sid, &accepted).await;
    let record = h.worker.get_exec(&dev(), &sid, &accepted).unwrap();
    assert_eq!(record.status, "exited");
    assert_eq!(record.exit_code, Some(2));
    assert_eq!(
        (record.stdout.as_str(), record.stderr.as_str()),
        ("hi\n", "oops\n")
    );

    let record = exec(&h, &sid, "echo hello").await;
    assert_eq!(record.stdout, "hello\n");
    assert_eq!(record.output, "hello\n");
    assert_eq!(record.exit_code, Some(0));
    assert_eq!(record.command, "echo hello");
    assert!(record.duration_ms >= 1);
    assert!(record.completed_at.is_some());

    let record = exec(&h, &sid, "").await;
    assert_eq!(record.command, "true");
    assert_eq!(record.exit_code, Some(0));

    let accepted = h
        .worker
        .start_exec(
            &dev(),
            &sid,
            ExecRequest {
                args: Some(vec!["echo".into(), "a  b".into()]),
                env: [("K".to_string(), "V".to_string())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    all_frames(&h, &dev(), &sid, &accepted).await;
    let record = h.worker.get_exec(&dev(), &sid, &accepted).unwrap();
    assert_eq!(record.stdout, "a  b\n");
    assert_eq!(record.command, "echo a  b");

    assert!(matches!(
        h.worker
            .start_exec(
                &dev(),
                &sid,
                ExecRequest {
                    args: Some(vec![String::new()]),
                    ..Default::default()
                }
            )
            .await,
        Err(WorkerError::InvalidExec(_))
    ));
    assert!(matches!(
        h.worker
            .start_exec(
                &dev(),
                &sid,
                ExecRequest {
                    env: [("A=B".to_string(), "v".to_string())].into(),
                    ..Default::default()
                }
            )
            .await,
        Err(WorkerError::InvalidExec(_))
    ));
    assert!(matches!(
        h.worker.get_exec(&dev(), &sid, &ExecId::new()),
        Err(WorkerError::ExecNotFound)
    ));
    let other = h.sandbox().await;
    assert!(matches!(
        h.worker.get_exec(&dev(), &other, &accepted),
        Err(WorkerError::ExecNotFound)
    ));
}

#[tokio::test(start_paused = true)]
async fn first_exec_tti_is_observed_once() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    for _ in 0..2 {
        h.worker
            .start_exec(&dev(), &sid, ExecRequest::default())
            .await
            .unwrap();
    }
    let m = &h.worker.metrics().worker;
    assert_eq!(m.first_exec_tti.total_count(), 1);
    assert_eq!(m.exec_start_duration.total_count(), 2);
    eventually("both done", || m.exec_duration.total_count() == 2).await;
}

#[tokio::test(start_paused = true)]
async fn exec_timeout_and_backend_errors() {
    let h = Harness::new();
    h.fake
        .set_script("sleep 100", FakeExec::new().sleep(Duration::from_secs(100)));
    let sid = h.sandbox().await;
    let accepted = h
        .worker
        .start_exec(
            &dev(),
            &sid,
            ExecRequest {
                command: "sleep 100".into(),
                timeout_ms: 1500,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    all_frames(&h, &dev(), &sid, &accepted).await;
    let record = h.worker.get_exec(&dev(), &sid, &accepted).unwrap();
    assert_eq!(record.exit_code, Some(crate::backend::TIMEOUT_EXIT_CODE));
    assert!(record.timed_out);
    assert_eq!(record.duration_ms, 1500);

    let accepted = h
        .worker
        .start_exec(
            &dev(),
            &sid,
            ExecRequest {
                command: "pwd".into(),
                cwd: "/nope".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let frames = all_frames(&h, &dev(), &sid, &accepted).await;
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].kind, FrameKind::Stderr);
    assert!(frames[0].data.contains("working directory"));
    assert_eq!(frames[1].kind, FrameKind::Exit);
    assert_eq!(frames[1].data, "127");
}

#[tokio::test(start_paused = true)]
async fn frames_long_poll_returns_when_output_arrives() {
    let h = Harness::new();
    h.fake.set_exec_handler(Arc::new(|_, _| {
        Some(
            FakeExec::new()
                .sleep(Duration::from_secs(5))
                .stdout("late\n")
                .sleep(Duration::from_secs(100)),
        )
    }));
    let sid = h.sandbox().await;
    let eid = h
        .worker
        .start_exec(&dev(), &sid, ExecRequest::default())
        .await
        .unwrap();

    // Without wait: at once, empty, not null.
    let page = h
        .worker
        .exec_frames(&dev(), &sid, &eid, 0, None)
        .await
        .unwrap();
    assert!(page.frames.is_empty());
    assert!(page.has_more && !page.wait_applied);
    assert_eq!(page.next_cursor, 0);
    let json = serde_json::to_value(&page).unwrap();
    assert_eq!(json["frames"], serde_json::json!([]));

    let started = tokio::time::Instant::now();
    let page = h
        .worker
        .exec_frames(&dev(), &sid, &eid, 0, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(
        waited,
        Duration::from_secs(5),
        "woken by the output, not the timeout"
    );
    assert_eq!(page.frames.len(), 1);
    assert_eq!(page.frames[0].data, "late\n");
    assert_eq!(page.next_cursor, 1);
    assert!(page.has_more && page.wait_applied);

    // Nothing new: the wait runs out (2 s), frames empty, still more to come.
    let started = tokio::time::Instant::now();
    let page = h
        .worker
        .exec_frames(&dev(), &sid, &eid, 1, Some(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert!(page.frames.is_empty());
    assert!(page.has_more);
    assert_eq!(page.next_cursor, 1);
}

#[tokio::test(start_paused = true)]
async fn has_more_until_exit_frame_is_delivered() {
    let h = Harness::new();
    h.fake.set_script(
        "echo one; echo two",
        FakeExec::new().stdout("one\n").stdout("two\n"),
    );
    let sid = h.sandbox().await;
    let record = exec(&h, &sid, "echo one; echo two").await;
    let eid = ExecId::parse(&record.exec_id).unwrap();
    let page = h
        .worker
        .exec_frames(&dev(), &sid, &eid, 0, None)
        .await
        .unwrap();
    assert_eq!(
        page.frames.iter().map(|f| f.kind).collect::<Vec<_>>(),
        vec![FrameKind::Stdout, FrameKind::Stdout, FrameKind::Exit]
    );
    assert_eq!(page.frames[2].data, "0");
    assert_eq!(page.next_cursor, 3);
    assert!(!page.has_more);
    for (cursor, expect) in [(0, 3), (1, 2), (2, 1), (3, 0), (99, 0)] {
        let page = h
            .worker
            .exec_frames(&dev(), &sid, &eid, cursor, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(page.frames.len(), expect, "cursor {cursor}");
        assert_eq!(page.next_cursor, 3);
        assert!(!page.has_more);
        assert!(page.wait_applied);
    }
}

#[tokio::test(start_paused = true)]
async fn utf8_split_across_chunks_is_not_mangled() {
    let h = Harness::new();
    h.fake.set_exec_handler(Arc::new(|_, _| {
        Some(
            FakeExec::new()
                .stdout(&b"price: \xe2\x82"[..])
                .stderr(&b"\xf0\x9f"[..])
                .stdout(&b"\xac\n"[..])
                .stderr(&b"\x98\x80 \xff"[..]),
        )
    }));
    let sid = h.sandbox().await;
    let accepted = h
        .worker
        .start_exec(&dev(), &sid, ExecRequest::default())
        .await
        .unwrap();
    let frames = all_frames(&h, &dev(), &sid, &accepted).await;
    let record = h.worker.get_exec(&dev(), &sid, &accepted).unwrap();
    assert_eq!(record.stdout, "price: €\n");
    assert_eq!(record.stderr, "😀 \u{fffd}");
    let stdout: String = frames
        .iter()
        .filter(|f| f.kind == FrameKind::Stdout)
        .map(|f| f.data.as_str())
        .collect();
    assert_eq!(stdout, "price: €\n");
}

/// Hardening I: a sandbox runs at most 32 execs at once; the next is refused until one ends.
#[tokio::test(start_paused = true)]
async fn concurrent_execs_per_sandbox_are_capped() {
    let h = Harness::new();
    h.fake.set_exec_handler(Arc::new(|_, _| {
        Some(FakeExec::new().sleep(Duration::from_secs(60)))
    }));
    let sid = h.sandbox().await;
    let mut ids = Vec::new();
    for _ in 0..32 {
        let accepted = h
            .worker
            .start_exec(&dev(), &sid, ExecRequest::default())
            .await
            .unwrap();
        ids.push(accepted);
    }
    let err = h
        .worker
        .start_exec(&dev(), &sid, ExecRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::TooManyExecs(32)), "{err}");
    assert_eq!(
        err.to_string(),
        "too many running execs in this sandbox (at most 32); wait for one to finish"
    );
    // Another sandbox is not affected; once the execs end, this one runs again.
    let other = h.sandbox().await;
    assert!(h
        .worker
        .start_exec(&dev(), &other, ExecRequest::default())
        .await
        .is_ok());
    tokio::time::sleep(Duration::from_secs(61)).await;
    let last = *ids.last().unwrap();
    let record = h.worker.get_exec(&dev(), &sid, &last).unwrap();
    assert_eq!(record.status, "exited");
    assert!(h
        .worker
        .start_exec(&dev(), &sid, ExecRequest::default())
        .await
        .is_ok());
}
