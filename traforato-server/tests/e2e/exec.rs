//! Exec with long-polled frames, and run-code statuses.

use std::time::Duration;

use serde_json::{json, Value};
use traforato_core::backend::fake::{FakeBackend, FakeCode, FakeExec};

use crate::harness::*;

#[tokio::test]
async fn exec_and_frames() {
    let fake = FakeBackend::new();
    let stack = Stack::dev_on(fake.clone()).await;
    let id = stack.create_id().await;
    fake.set_script("echo hi", FakeExec::new().stdout("hi\n"));
    fake.set_script("echo again", FakeExec::new().stdout("again\n"));
    let mut exec_ids = Vec::new();
    for command in ["echo hi", "echo again"] {
        let resp = follow()
            .post(stack.sandbox(&id, "/exec"))
            .json(&json!({ "command": command }))
            .expect_status(202)
            .await;
        let accepted = body_json(resp).await;
        let exec_id = accepted["exec_id"].as_str().unwrap().to_string();
        assert!(exec_id.starts_with("exec_"));
        exec_ids.push(exec_id);
    }
    assert_eq!(
        stack
            .worker
            .worker
            .metrics()
            .worker
            .first_exec_tti
            .total_count(),
        1
    );
    let metrics = metrics_text(stack.worker.at("/metrics")).await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("traforato_worker_sandbox_first_exec_tti_seconds_count")
            && l.ends_with(" 1")),
        "{metrics}"
    );

    // Long-poll the frames until the exit frame.
    let exec_id = &exec_ids[0];
    let mut cursor = 0;
    let mut stdout = String::new();
    let mut exit = None;
    for _ in 0..100 {
        let resp = follow()
            .get(stack.sandbox(
                &id,
                &format!("/exec/{exec_id}/frames?cursor={cursor}&wait=5s"),
            ))
            .expect_status(200)
            .await;
        let page = body_json(resp).await;
        assert!(page["frames"].is_array());
        assert_eq!(page["wait_applied"], true);
        for frame in page["frames"].as_array().unwrap() {
            match frame["type"].as_str().unwrap() {
                "stdout" => stdout.push_str(frame["data"].as_str().unwrap()),
                "exit" => exit = Some(frame["data"].as_str().unwrap_or("").to_string()),
                _ => {}
            }
        }
        cursor = page["next_cursor"].as_u64().unwrap();
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(stdout, "hi\n");
    assert_eq!(exit.as_deref(), Some("0"));

    let record = body_json(
        follow()
            .get(stack.sandbox(&id, &format!("/exec/{exec_id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(record["status"], "exited");
    assert_eq!(record["exit_code"], 0);
    assert_eq!(record["sandbox_id"], id.as_str());
    follow()
        .get(stack.sandbox(&id, "/exec/exec_01HZY3J5K6M7N8P9Q0R1S2T3V4"))
        .expect_error(404, "exec not found")
        .await;
    follow()
        .post(stack.sandbox(&id, "/exec"))
        .body("")
        .expect_error(400, "invalid request body")
        .await;
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn run_code_statuses() {
    // The fake interprets nothing: each code's run (the same in either runtime) is scripted.
    let fake = FakeBackend::new()
        .script_code(
            "print('hello-python')",
            FakeCode::Runs(FakeExec::new().stdout("hello-python\n")),
        )
        .script_code(
            "console.log('hello-node')",
            FakeCode::Runs(FakeExec::new().stdout("hello-node\n")),
        )
        .script_code(
            "throw new Error('boom')",
            FakeCode::Runs(FakeExec::new().stderr("Error: boom\n").exit_code(1)),
        )
        .script_code(
            "print('oops'",
            FakeCode::SyntaxError("SyntaxError: '(' was never closed\n".into()),
        )
        .script_code(
            "print('dev')",
            FakeCode::Runs(FakeExec::new().stdout("dev\n")),
        )
        .script_code(
            "print('later')",
            FakeCode::Runs(
                FakeExec::new()
                    .sleep(Duration::from_millis(200))
                    .stdout("later\n"),
            ),
        );
    let stack = Stack::dev_on(fake).await;
    let id = stack.create_id().await;
    let run = |body: Value| {
        follow()
            .post(stack.sandbox(&id, "/exec/code"))
            .json(&body)
            .send()
    };

    let resp = run(json!({"runtime": "python", "code": "print('hello-python')"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let done = body_json(resp).await;
    assert_eq!(done["runtime"], "python");
    assert_eq!(done["status"], "exited");
    assert_eq!(done["stdout"], "hello-python\n");
    assert_eq!(done["exit_code"], 0);

    let done = body_json(
        run(json!({"runtime": "node", "code": "console.log('hello-node')", "wait": true}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(done["runtime"], "node");
    assert_eq!(done["stdout"], "hello-node\n");
    assert_eq!(done["exit_code"], 0);

    let resp = run(json!({"runtime": "node", "code": "throw new Error('boom')"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(body_json(resp).await["exit_code"], 0);

    let resp = run(json!({"runtime": "python", "code": "print('oops'"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let failed = body_json(resp).await;
    assert_eq!(failed["error"], "syntax_error");
    assert!(failed["exec_id"].as_str().unwrap().starts_with("exec_"));
    assert_ne!(failed["exit_code"], 0);
    assert_eq!(failed["stderr"], "SyntaxError: '(' was never closed\n");

    let resp = run(json!({"runtime": "python", "code": "print('dev')"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("dev"));

    let resp = run(json!({"runtime": "python", "code": "print('later')", "wait": false}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let accepted = body_json(resp).await;
    assert_eq!(accepted["status"], "running");
    let exec_id = accepted["exec_id"].as_str().unwrap();
    let poll_url = accepted["poll_url"].as_str().unwrap();
    assert_eq!(poll_url, format!("/sandboxes/{id}/exec/{exec_id}"));
    assert_eq!(
        accepted["frames_url"].as_str().unwrap(),
        format!("/sandboxes/{id}/exec/{exec_id}/frames")
    );
    let poll = stack.broker.at(poll_url);
    wait_until("the async run-code to exit", || {
        let poll = poll.clone();
        async move {
            let record = body_json(follow().get(poll).send().await.unwrap()).await;
            record["status"] == "exited"
        }
    })
    .await;

    expect_error(
        run(json!({"runtime": "ruby", "code": "puts 1"}))
            .await
            .unwrap(),
        400,
        "runtime must be one of: node, python",
    )
    .await;
    expect_error(
        run(json!({"runtime": "python", "code": ""})).await.unwrap(),
        400,
        "code is required",
    )
    .await;
    stack.stop().await.unwrap();
}
