//! Worker tests: stdin, signals and terminals of running execs, exec listings and frame
//! streams, over the fake backend (which records controls rather than acting on them).

use super::*;
use crate::api::{EncodingError, FrameKind};
use crate::backend::fake::FakeExec;
use crate::backend::{ExecControl, ExecSignal, TerminalSize};

/// Execs of the harness's fake run for 100 s unless told otherwise.
fn long_running(h: &Harness) {
    h.fake.set_exec_handler(Arc::new(|spec, _| {
        let line = match &spec.program {
            crate::backend::Program::Shell(line) => line.as_str(),
            crate::backend::Program::Argv(_) => "",
        };
        (line == "long").then(|| FakeExec::new().sleep(Duration::from_secs(100)))
    }));
}

fn controls_of(h: &Harness, sid: &SandboxId) -> Vec<(ExecId, ExecControl)> {
    h.fake.vm(&vm_of(sid)).unwrap().exec_controls()
}

async fn start(h: &Harness, sid: &SandboxId, request: ExecRequest) -> ExecId {
    h.worker.start_exec(&dev(), sid, request).await.unwrap()
}

/// The id of an exec record.
fn id_of(record: &ExecRecord) -> ExecId {
    ExecId::parse(&record.exec_id).expect("an exec id")
}

fn long(interactive: bool) -> ExecRequest {
    ExecRequest {
        command: "long".into(),
        interactive,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn stdin_reaches_an_interactive_exec_until_eof() {
    let h = Harness::new();
    long_running(&h);
    let sid = h.sandbox().await;
    let eid = start(&h, &sid, long(true)).await;
    let w = &h.worker;
    w.write_exec_stdin(&dev(), &sid, &eid, "hello\n".into())
        .await
        .unwrap();
    w.write_exec_stdin(&dev(), &sid, &eid, bytes::Bytes::new())
        .await
        .unwrap();
    let after_eof = w.write_exec_stdin(&dev(), &sid, &eid, "more".into()).await;
    assert!(
        matches!(after_eof, Err(WorkerError::StdinClosed)),
        "{after_eof:?}"
    );
    assert_eq!(
        controls_of(&h, &sid),
        vec![
            (eid, ExecControl::Stdin("hello\n".into())),
            (eid, ExecControl::CloseStdin),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn stdin_of_a_plain_exec_is_closed_and_of_an_exited_one_conflicts() {
    let h = Harness::new();
    long_running(&h);
    let sid = h.sandbox().await;
    let eid = start(&h, &sid, long(false)).await;
    let r = h
        .worker
        .write_exec_stdin(&dev(), &sid, &eid, "x".into())
        .await;
    assert!(matches!(r, Err(WorkerError::StdinClosed)), "{r:?}");

    let done = id_of(&exec(&h, &sid, "echo done").await);
    let r = h
        .worker
        .write_exec_stdin(&dev(), &sid, &done, "x".into())
        .await;
    assert!(matches!(r, Err(WorkerError::ExecExited)), "{r:?}");
    let r = h
        .worker
        .signal_exec(&dev(), &sid, &done, ExecSignal::Kill)
        .await;
    assert!(matches!(r, Err(WorkerError::ExecExited)), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn one_shot_stdin_is_decoded_and_handed_to_the_backend() {
    let h = Harness::new();
    // `cat` echoes the stdin the backend was handed.
    h.fake.set_script("cat", FakeExec::new().echo_stdin());
    let sid = h.sandbox().await;
    for (data, encoding) in [("hi\n", ""), ("hi\n", "UTF-8"), ("aGkK", "base64")] {
        let eid = start(
            &h,
            &sid,
            ExecRequest {
                command: "cat".into(),
                stdin: Some(data.into()),
                stdin_encoding: encoding.into(),
                ..Default::default()
            },
        )
        .await;
        all_frames(&h, &dev(), &sid, &eid).await;
        let record = h.worker.get_exec(&dev(), &sid, &eid).unwrap();
        assert_eq!(record.stdout, "hi\n", "{encoding}");
    }
    for (encoding, want, kind) in [
        ("latin1", "encoding", EncodingError::Unknown),
        ("base64", "base64", EncodingError::InvalidBase64),
    ] {
        let r = h
            .worker
            .start_exec(
                &dev(),
                &sid,
                ExecRequest {
                    stdin: Some("!!!".into()),
                    stdin_encoding: encoding.into(),
                    ..Default::default()
                },
            )
            .await;
        let err = r.unwrap_err();
        assert!(
            matches!(err, WorkerError::Encoding(e) if e == kind),
            "{err:?}"
        );
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn signals_are_delivered() {
    let h = Harness::new();
    long_running(&h);
    let sid = h.sandbox().await;
    let eid = start(&h, &sid, long(false)).await;
    for signal in [
        ExecSignal::Term,
        ExecSignal::Int,
        ExecSignal::Hup,
        ExecSignal::Kill,
    ] {
        h.worker
            .signal_exec(&dev(), &sid, &eid, signal)
            .await
            .unwrap();
    }
    let signals: Vec<ExecControl> = controls_of(&h, &sid).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        signals,
        [
            ExecSignal::Term,
            ExecSignal::Int,
            ExecSignal::Hup,
            ExecSignal::Kill
        ]
        .map(ExecControl::Signal)
        .to_vec()
    );
}

#[tokio::test(start_paused = true)]
async fn terminals_take_a_size_and_resizes() {
    let h = Harness::new();
    let seen = Arc::new(Mutex::new(None));
    let spy = seen.clone();
    h.fake.set_exec_handler(Arc::new(move |spec, _| {
        *spy.lock().unwrap() = Some((spec.tty, spec.interactive, spec.env.get("TERM").cloned()));
        Some(FakeExec::new().sleep(Duration::from_secs(100)))
    }));
    let sid = h.sandbox().await;
    let eid = start(
        &h,
        &sid,
        ExecRequest {
            tty: true,
            rows: Some(40),
            ..Default::default()
        },
    )
    .await;
    tokio::task::yield_now().await;
    assert_eq!(
        seen.lock().unwrap().clone(),
        Some((
            Some(TerminalSize { rows: 40, cols: 80 }),
            true,
            Some("xterm-256color".to_string())
        ))
    );
    assert!(h.worker.get_exec(&dev(), &sid, &eid).unwrap().tty);
    let size = TerminalSize { rows: 10, cols: 20 };
    h.worker
        .resize_exec(&dev(), &sid, &eid, size)
        .await
        .unwrap();
    assert_eq!(
        controls_of(&h, &sid),
        vec![(
            eid,
            ExecControl::Resize(TerminalSize { rows: 10, cols: 20 })
        )]
    );

    // A resize must be positive and needs a terminal; sizes need tty and must be positive.
    for size in [
        TerminalSize { rows: 0, cols: 20 },
        TerminalSize { rows: 10, cols: 0 },
    ] {
        let r = h.worker.resize_exec(&dev(), &sid, &eid, size).await;
        assert!(matches!(r, Err(WorkerError::InvalidExec(_))), "{r:?}");
    }
    let plain = start(&h, &sid, ExecRequest::default()).await;
    let size = TerminalSize { rows: 10, cols: 20 };
    let r = h.worker.resize_exec(&dev(), &sid, &plain, size).await;
    assert!(matches!(r, Err(WorkerError::NotATerminal)), "{r:?}");
    for request in [
        ExecRequest {
            rows: Some(5),
            ..Default::default()
        },
        ExecRequest {
            tty: true,
            cols: Some(0),
            ..Default::default()
        },
    ] {
        let r = h.worker.start_exec(&dev(), &sid, request).await;
        assert!(matches!(r, Err(WorkerError::InvalidExec(_))), "{r:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn run_code_execs_take_no_controls() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let accepted = match code(&h, &sid, "python", "print(1)", Some(false))
        .await
        .unwrap()
    {
        RunCodeOutcome::Accepted(a) => a,
        other => panic!("{other:?}"),
    };
    let r = h
        .worker
        .write_exec_stdin(&dev(), &sid, &accepted, "x".into())
        .await;
    assert!(matches!(r, Err(WorkerError::ExecNotControllable)), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn listing_puts_running_execs_first_then_newest() {
    let h = Harness::new();
    long_running(&h);
    let sid = h.sandbox().await;
    let first = exec(&h, &sid, "echo 1").await.exec_id;
    h.clock.advance(Duration::from_secs(1));
    let running = start(&h, &sid, long(false)).await;
    h.clock.advance(Duration::from_secs(1));
    let second = exec(&h, &sid, "echo 2").await.exec_id;
    let list = h.worker.list_execs(&dev(), &sid, None).unwrap();
    let ids: Vec<&str> = list.execs.iter().map(|r| r.exec_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            running.to_string().as_str(),
            second.as_str(),
            first.as_str()
        ]
    );
    assert_eq!(list.execs[0].status, "running");
    let list = h.worker.list_execs(&dev(), &sid, Some(2)).unwrap();
    assert_eq!(list.execs.len(), 2);
    let r = h.worker.list_execs(&dev(), &sid, Some(0));
    assert!(matches!(r, Err(WorkerError::InvalidLimit)), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn frame_stream_follows_output_until_exit_from_a_cursor() {
    let h = Harness::new();
    h.fake.set_exec_handler(Arc::new(|_, _| {
        Some(
            FakeExec::new()
                .stdout("a")
                .sleep(Duration::from_secs(5))
                .stderr("b")
                .exit_code(3),
        )
    }));
    let sid = h.sandbox().await;
    let eid = start(&h, &sid, ExecRequest::default()).await;
    let mut stream = h.worker.exec_frame_stream(&dev(), &sid, &eid, 0).unwrap();
    let mut seen = Vec::new();
    while let Some((frame, cursor)) = stream.next().await {
        seen.push((frame.kind, frame.data, cursor));
    }
    assert_eq!(
        seen,
        vec![
            (FrameKind::Stdout, "a".to_string(), 1),
            (FrameKind::Stderr, "b".to_string(), 2),
            (FrameKind::Exit, "3".to_string(), 3),
        ]
    );
    let mut stream = h.worker.exec_frame_stream(&dev(), &sid, &eid, 2).unwrap();
    assert_eq!(stream.next().await.unwrap().1, 3);
    assert!(stream.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn frame_stream_ends_when_the_sandbox_goes() {
    let h = Harness::new();
    long_running(&h);
    let sid = h.sandbox().await;
    let eid = start(&h, &sid, long(false)).await;
    let mut stream = h.worker.exec_frame_stream(&dev(), &sid, &eid, 0).unwrap();
    let drained = tokio::spawn(async move {
        let mut frames = 0;
        while stream.next().await.is_some() {
            frames += 1;
        }
        frames
    });
    h.worker.delete_sandbox(&dev(), &sid).await.unwrap();
    // At most what the exec wrote about its end; then the stream ends.
    assert!(drained.await.unwrap() <= 2);
}

#[tokio::test(start_paused = true)]
async fn sessions_attach_by_name_and_idle_ones_are_reaped() {
    let h = Harness::new();
    // The fake runs on the manual clock, which jumps past the idle timeouts below: the
    // command and its timeout are longer than all of them.
    h.fake.set_exec_handler(Arc::new(|_, _| {
        Some(FakeExec::new().sleep(Duration::from_secs(10 * 86_400)))
    }));
    let long = |interactive| ExecRequest {
        timeout_ms: 5 * 86_400_000,
        ..long(interactive)
    };
    let sid = h.sandbox().await;
    let w = &h.worker;
    // Lives through the idle timeouts below.
    w.renew_lease(&dev(), &sid, Duration::from_secs(86_400))
        .unwrap();
    let first = w
        .open_exec_session(&dev(), &sid, "s1", Some(long(true)))
        .unwrap();
    assert!(first.created);
    // By name alone, or with the same process: the same exec; other options conflict.
    let again = w.open_exec_session(&dev(), &sid, "s1", None).unwrap();
    assert_eq!((again.exec_id, again.created), (first.exec_id, false));
    let same = w
        .open_exec_session(&dev(), &sid, "s1", Some(long(true)))
        .unwrap();
    assert_eq!(same.exec_id, first.exec_id);
    assert!(matches!(
        w.open_exec_session(&dev(), &sid, "s1", Some(long(false))),
        Err(WorkerError::SessionConflict(name)) if name == "s1"
    ));
    assert!(matches!(
        w.open_exec_session(&dev(), &sid, "nope", None),
        Err(WorkerError::SessionNotFound(_))
    ));
    assert!(matches!(
        w.open_exec_session(&dev(), &sid, "a b", None),
        Err(WorkerError::InvalidSession)
    ));

    // Let the command start in the backend.
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Three connections attached; idle only once all three left, then reaped after the
    // idle timeout (not before).
    for _ in 0..2 {
        w.leave_exec_session(&dev(), &sid, "s1").unwrap();
    }
    h.clock.advance(SESSION_IDLE_TIMEOUT * 2);
    assert_eq!(w.reap_expired().await, 0);
    assert!(controls_of(&h, &sid).is_empty(), "still attached");
    w.leave_exec_session(&dev(), &sid, "s1").unwrap();
    h.clock
        .advance(SESSION_IDLE_TIMEOUT - Duration::from_secs(1));
    w.reap_expired().await;
    assert!(controls_of(&h, &sid).is_empty(), "not idle long enough");
    h.clock.advance(Duration::from_secs(1));
    w.reap_expired().await;
    assert_eq!(
        controls_of(&h, &sid),
        vec![(first.exec_id, ExecControl::Signal(ExecSignal::Kill))]
    );
    assert!(matches!(
        w.open_exec_session(&dev(), &sid, "s1", None),
        Err(WorkerError::SessionNotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn closing_a_session_kills_it_and_forgets_the_name() {
    let h = Harness::new();
    long_running(&h);
    let sid = h.sandbox().await;
    let w = &h.worker;
    let opened = w
        .open_exec_session(&dev(), &sid, "s2", Some(long(false)))
        .unwrap();
    w.close_exec_session(&dev(), &sid, "s2").await.unwrap();
    assert_eq!(
        controls_of(&h, &sid),
        vec![(opened.exec_id, ExecControl::Signal(ExecSignal::Kill))]
    );
    assert!(matches!(
        w.open_exec_session(&dev(), &sid, "s2", None),
        Err(WorkerError::SessionNotFound(_))
    ));
    // Closing an unknown name is fine.
    w.close_exec_session(&dev(), &sid, "s2").await.unwrap();
}
