//! Interactive execs end to end through the real shells and the container backend (needs
//! root; runs in CI as root): stdin through its route, signals, frames as Server-Sent Events.

use std::sync::Arc;

use serde_json::{json, Value};
use traforato_core::backend::VmBackend;
use traforato_core::broker::BrokerConfig;

use crate::container::container_backend;
use crate::harness::*;

/// Starts an exec; returns its id.
async fn start(stack: &Stack, id: &str, body: Value) -> String {
    let resp = follow()
        .post(stack.sandbox(id, "/exec"))
        .json(&body)
        .expect_status(202)
        .await;
    body_json(resp).await["exec_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Reads the exec's frames as Server-Sent Events to their end: `(event, id, data)` each.
async fn events(stack: &Stack, id: &str, exec_id: &str) -> Vec<(String, String, Value)> {
    let resp = follow()
        .get(stack.sandbox(id, &format!("/exec/{exec_id}/frames")))
        .header("accept", "text/event-stream")
        .expect_status(200)
        .await;
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // The body ends after the exit event: reading it whole terminates.
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or_default()
                    .to_string()
            };
            let data = serde_json::from_str(&field("data")).unwrap();
            (field("event"), field("id"), data)
        })
        .collect()
}

fn stdin_of(stack: &Stack, id: &str, exec_id: &str) -> String {
    stack.sandbox(id, &format!("/exec/{exec_id}/stdin"))
}

fn stdout_of(events: &[(String, String, Value)]) -> String {
    events
        .iter()
        .filter(|(kind, _, _)| kind == "stdout")
        .map(|(_, _, data)| data["data"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn stdin_signals_and_event_streams_in_a_container() {
    let Some((backend, state_dir)) = container_backend("interactive") else {
        return;
    };
    let broker = TestBroker::dev(BrokerConfig {
        default_virtualization: "container".to_string(),
        ..BrokerConfig::default()
    })
    .await;
    let backends: Vec<Arc<dyn VmBackend>> = vec![backend.clone()];
    let worker = dev_worker(Some(&broker.url), backends, |c| {
        c.default_virtualization = "container".to_string();
        c.max_live_sandboxes = 2;
    })
    .await;
    let stack = Stack::registered(broker, worker).await.unwrap();
    let created = stack.create(json!({"image": "host"})).await;
    let id = created["sandbox_id"].as_str().unwrap().to_string();

    // One-shot stdin, base64: `cat` prints it and ends at its EOF.
    let exec_id = start(
        &stack,
        &id,
        json!({"command": "cat", "stdin": "b25lLXNob3QK", "stdin_encoding": "base64"}),
    )
    .await;
    let seen = events(&stack, &id, &exec_id).await;
    assert_eq!(stdout_of(&seen), "one-shot\n");

    // Interactive: `cat` gets its input back through the stdin route and exits at EOF.
    let exec_id = start(
        &stack,
        &id,
        json!({"command": "cat", "stdin": "first\n", "interactive": true}),
    )
    .await;
    let stdin = stack.sandbox(&id, &format!("/exec/{exec_id}/stdin"));
    follow().post(&stdin).body("raw\n").expect_status(204).await;
    follow()
        .post(&stdin)
        .json(&json!({"data": "anNvbgo=", "encoding": "base64"}))
        .expect_status(204)
        .await;
    let resp = follow().post(&stdin).send().await.unwrap();
    assert_eq!(resp.status(), 204, "EOF");
    let seen = events(&stack, &id, &exec_id).await;
    assert_eq!(stdout_of(&seen), "first\nraw\njson\n");
    let (kind, cursor, exit) = seen.last().unwrap();
    assert_eq!(kind, "exit");
    assert_eq!(exit["data"], "0");
    assert_eq!(cursor, &seen.len().to_string());
    // Exited: no more input.
    let resp = follow().post(&stdin).body("late").send().await.unwrap();
    expect_error(resp, 409, "exec has exited").await;
    // Resuming from a cursor gives only what follows it.
    let resp = follow()
        .get(stack.sandbox(&id, &format!("/exec/{exec_id}/frames")))
        .header("accept", "text/event-stream")
        .header("last-event-id", (seen.len() - 1).to_string())
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(
        text.starts_with(&format!("id: {}\nevent: exit\n", seen.len())),
        "{text}"
    );

    // A plain exec's stdin is closed.
    let sleeper = start(&stack, &id, json!({"command": "sleep 100"})).await;
    let resp = follow()
        .post(stack.sandbox(&id, &format!("/exec/{sleeper}/stdin")))
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(resp, 409, "exec stdin is closed").await;

    // The listing shows the running one first.
    let resp = follow()
        .get(stack.sandbox(&id, "/exec"))
        .expect_status(200)
        .await;
    let list = body_json(resp).await;
    let execs = list["execs"].as_array().unwrap();
    assert_eq!(execs.len(), 3);
    assert_eq!(execs[0]["exec_id"], sleeper.as_str());
    assert_eq!(execs[0]["status"], "running");

    // `sleep 100` is stopped by the signal route: 128 + SIGTERM.
    let signal = stack.sandbox(&id, &format!("/exec/{sleeper}/signal"));
    let resp = follow()
        .post(&signal)
        .json(&json!({"signal": "NOPE"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "signal must be one of: TERM, KILL, INT, HUP").await;
    follow()
        .post(&signal)
        .json(&json!({"signal": "TERM"}))
        .expect_status(204)
        .await;
    let seen = events(&stack, &id, &sleeper).await;
    let (kind, _, exit) = seen.last().unwrap();
    assert_eq!(kind, "exit");
    assert_eq!(exit["data"], (128 + 15).to_string());

    // A terminal: `tty` and `stty size` see it; a resize reaches it; input through the stdin
    // route (echoed by the terminal, as terminals do).
    let exec_id = start(
        &stack,
        &id,
        json!({"command": "tty; read line; stty size; echo got:$line", "tty": true, "rows": 30, "cols": 100}),
    )
    .await;
    let resize = stack.sandbox(&id, &format!("/exec/{exec_id}/resize"));
    follow()
        .post(&resize)
        .json(&json!({"rows": 40, "cols": 120}))
        .expect_status(204)
        .await;
    follow()
        .post(stdin_of(&stack, &id, &exec_id))
        .body("hi\n")
        .expect_status(204)
        .await;
    let seen = events(&stack, &id, &exec_id).await;
    let out = stdout_of(&seen);
    assert!(out.contains("/dev/pts/"), "{out}");
    // The first `stty size` may run before or after the resize (the initial size is checked
    // in the backend's tests); the one after `read` runs after it.
    assert!(out.contains("40 120\r\ngot:hi"), "{out}");
    assert!(out.contains("got:hi"), "{out}");
    assert!(seen.iter().all(|(kind, _, _)| kind != "stderr"), "{seen:?}");

    follow()
        .delete(stack.sandbox(&id, ""))
        .expect_status(204)
        .await;

    stack.stop().await.unwrap();
    backend.remove_cgroup_parents().unwrap();
    std::fs::remove_dir_all(&state_dir).unwrap();
}
