//! The exec WebSocket (`GET …/exec/ws`, Orchard's protocol) end to end through the real
//! shells and the container backend (needs root; runs in CI as root), driven with a
//! tokio-tungstenite client connected to the worker (tungstenite does not follow redirects).

use std::sync::Arc;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use traforato_core::backend::fake::{FakeBackend, FakeExec};
use traforato_core::backend::VmBackend;
use traforato_core::broker::BrokerConfig;

use crate::container::container_backend;
use crate::harness::*;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `…/exec/ws?{query}` on the worker.
async fn connect(stack: &Stack, id: &str, query: &str) -> Ws {
    let url = stack
        .worker
        .at(&format!("/sandboxes/{id}/exec/ws?{query}"))
        .replacen("http://", "ws://", 1);
    let (ws, resp) = connect_async(url.as_str()).await.expect("a websocket");
    assert_eq!(resp.status(), 101);
    ws
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

fn stdin(data: &str) -> Value {
    json!({"type": "stdin", "data": base64::engine::general_purpose::STANDARD.encode(data)})
}

/// Every frame to the end of the session, and the close frame.
async fn to_end(ws: &mut Ws) -> (Vec<Value>, Option<CloseFrame>) {
    let mut frames = Vec::new();
    while let Some(message) = ws.next().await {
        match message.unwrap() {
            Message::Text(text) => frames.push(serde_json::from_str(&text).unwrap()),
            Message::Close(close) => return (frames, close),
            _ => {}
        }
    }
    (frames, None)
}

/// The decoded `data` of the frames of `kind`, concatenated.
fn output(frames: &[Value], kind: &str) -> String {
    frames
        .iter()
        .filter(|f| f["type"] == kind)
        .map(|f| {
            let data = f["data"].as_str().unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            String::from_utf8(bytes).unwrap()
        })
        .collect()
}

fn exit_code(frames: &[Value]) -> i64 {
    let last = frames.last().expect("an exit frame");
    assert_eq!(last["type"], "exit", "{frames:?}");
    last["exit"]["code"].as_i64().unwrap()
}

fn assert_normal(close: Option<CloseFrame>) {
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Normal));
}

/// The sandbox's exec running `command` (the protocol does not name its exec).
async fn exec_of(stack: &Stack, id: &str, command: &str) -> Value {
    let resp = follow()
        .get(stack.sandbox(id, "/exec"))
        .send()
        .await
        .unwrap();
    let list = body_json(resp).await;
    list["execs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["command"] == command)
        .cloned()
        .unwrap_or_else(|| panic!("no exec {command:?} in {list}"))
}

async fn wait_exited(stack: &Stack, id: &str, command: &str) {
    wait_until(&format!("{command:?} to exit"), || async {
        exec_of(stack, id, command).await["status"] == "exited"
    })
    .await;
}

#[tokio::test]
async fn exec_websocket_in_a_container() {
    let Some((backend, state_dir)) = container_backend("exec-ws") else {
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

    // The broker sends the URL to the worker, path and query kept.
    let resp = no_follow()
        .get(stack.sandbox(&id, "/exec/ws?command=cat&interactive=true"))
        .expect_status(307)
        .await;
    assert_eq!(
        resp.headers()["location"].to_str().unwrap(),
        stack.worker.at(&format!(
            "/sandboxes/{id}/exec/ws?command=cat&interactive=true"
        ))
    );

    // Interactive `cat`: its stdin comes back; it exits 0 at EOF, then a normal closure.
    let mut ws = connect(
        &stack,
        &id,
        "command=cat&interactive=true&env%5BGREETING%5D=hi",
    )
    .await;
    send(&mut ws, stdin("hello\n")).await;
    send(&mut ws, stdin("again\n")).await;
    send(&mut ws, json!({"type": "stdin"})).await;
    let (frames, close) = to_end(&mut ws).await;
    assert_eq!(output(&frames, "stdout"), "hello\nagain\n");
    assert_eq!(exit_code(&frames), 0);
    assert_normal(close);

    // Environment, working directory and stderr frames.
    let mut ws = connect(
        &stack,
        &id,
        "command=echo+$GREETING;+pwd;+echo+x+%3E%262&env%5BGREETING%5D=hi&workdir=/tmp",
    )
    .await;
    let (frames, close) = to_end(&mut ws).await;
    assert_eq!(output(&frames, "stdout"), "hi\n/tmp\n");
    assert_eq!(output(&frames, "stderr"), "x\n");
    assert_eq!(exit_code(&frames), 0);
    assert_normal(close);

    // Output that is not UTF-8 arrives byte for byte (the JSON frames show it decoded).
    let mut ws = connect(
        &stack,
        &id,
        "command=printf+%27%5C377%5C376ok%5C342%5C202%27",
    )
    .await;
    let (frames, close) = to_end(&mut ws).await;
    let bytes: Vec<u8> = frames
        .iter()
        .filter(|f| f["type"] == "stdout")
        .flat_map(|f| {
            base64::engine::general_purpose::STANDARD
                .decode(f["data"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(bytes, b"\xff\xfeok\xe2\x82");
    assert_normal(close);

    // A terminal of the size asked for.
    let mut ws = connect(&stack, &id, "command=stty+size&tty=true&rows=30&cols=100").await;
    let (frames, close) = to_end(&mut ws).await;
    assert!(output(&frames, "stdout").contains("30 100"), "{frames:?}");
    assert_eq!(exit_code(&frames), 0);
    assert_normal(close);

    // A resize frame reaches the terminal before the input that follows it.
    let mut ws = connect(
        &stack,
        &id,
        "command=read+line;+stty+size&tty=true&rows=30&cols=100",
    )
    .await;
    send(
        &mut ws,
        json!({"type": "resize", "terminal": {"rows": 40, "cols": 120}}),
    )
    .await;
    send(&mut ws, stdin("go\n")).await;
    let (frames, close) = to_end(&mut ws).await;
    assert!(output(&frames, "stdout").contains("40 120"), "{frames:?}");
    assert_eq!(exit_code(&frames), 0);
    assert_normal(close);

    // A frame of an unknown type: an error frame, a close, and the command is killed.
    let mut ws = connect(&stack, &id, "command=sleep+101&interactive=true").await;
    send(&mut ws, json!({"type": "bogus"})).await;
    let (frames, close) = to_end(&mut ws).await;
    assert_eq!(
        frames,
        vec![json!({"type": "error", "error": "unknown frame type: bogus"})]
    );
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Policy));
    wait_exited(&stack, &id, "sleep 101").await;

    // Binary messages are ignored; non-JSON text is an error.
    let mut ws = connect(&stack, &id, "command=sleep+102").await;
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    ws.send(Message::text("not json")).await.unwrap();
    let (frames, _) = to_end(&mut ws).await;
    assert_eq!(
        frames,
        vec![json!({"type": "error", "error": "invalid frame"})]
    );
    wait_exited(&stack, &id, "sleep 102").await;

    // A message over 1 MiB: an error frame and a close.
    let mut ws = connect(&stack, &id, "command=sleep+103&interactive=true").await;
    let big = "x".repeat(1024 * 1024 + 1);
    ws.send(Message::text(format!(
        r#"{{"type":"stdin","data":"{big}"}}"#
    )))
    .await
    .unwrap();
    let (frames, close) = to_end(&mut ws).await;
    assert_eq!(
        frames,
        vec![json!({"type": "error", "error": "frame exceeds max size"})]
    );
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Size));
    wait_exited(&stack, &id, "sleep 103").await;

    // Closing the socket before the command ends kills it.
    let mut ws = connect(&stack, &id, "command=sleep+100").await;
    assert_eq!(exec_of(&stack, &id, "sleep 100").await["status"], "running");
    ws.close(None).await.unwrap();
    wait_exited(&stack, &id, "sleep 100").await;
    assert_eq!(
        exec_of(&stack, &id, "sleep 100").await["exit_code"],
        128 + 9
    );

    independent_python_client(&stack, &id).await;
    reconnectable_sessions(&stack, &id).await;
    browser_url_in_dev(&stack, &id).await;

    follow()
        .delete(stack.sandbox(&id, ""))
        .expect_status(204)
        .await;
    stack.stop().await.unwrap();
    backend.remove_cgroup_parents().unwrap();
    std::fs::remove_dir_all(&state_dir).unwrap();
}

/// The next text frame.
async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await.expect("a frame").unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(close) => panic!("closed early: {close:?}"),
            _ => {}
        }
    }
}

/// The status of an `exec/ws` open refused before the upgrade, and its error message.
async fn refused(stack: &Stack, id: &str, query: &str) -> (u16, String) {
    let url = stack
        .worker
        .at(&format!("/sandboxes/{id}/exec/ws?{query}"))
        .replacen("http://", "ws://", 1);
    match connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}"))
                .unwrap_or(Value::Null);
            (
                resp.status().as_u16(),
                body["error"].as_str().unwrap_or("").to_string(),
            )
        }
        other => panic!(
            "{query}: expected a refusal, got {:?}",
            other.map(|(_, r)| r)
        ),
    }
}

/// Reconnectable sessions: detach and reattach with history, acks, a reattach after the end,
/// conflicts and unknown names, `close`, and a dropped socket that leaves the process running.
async fn reconnectable_sessions(stack: &Stack, id: &str) {
    let command = "echo+one;+read+x;+echo+two:$x";
    let mut ws = connect(
        stack,
        id,
        &format!("session=s1&interactive=true&command={command}"),
    )
    .await;
    assert_eq!(
        next_frame(&mut ws).await,
        json!({"type": "stdout", "data": "b25lCg==", "watermark": 1})
    );
    send(&mut ws, json!({"type": "detach"})).await;
    let (frames, close) = to_end(&mut ws).await;
    assert_eq!(frames, Vec::<Value>::new());
    assert_normal(close);
    assert_eq!(
        exec_of(stack, id, "echo one; read x; echo two:$x").await["status"],
        "running"
    );

    // Another open with other options is a conflict; an unknown name without a command is
    // not found; a bad name is refused.
    assert_eq!(
        refused(stack, id, "session=s1&command=ls").await,
        (
            409,
            "exec session \"s1\" is already running with different options".to_string()
        )
    );
    assert_eq!(
        refused(stack, id, "session=nope").await,
        (404, "exec session \"nope\" does not exist".to_string())
    );
    assert_eq!(refused(stack, id, "session=a%20b&command=ls").await.0, 400);

    // Reattached (by name alone, or with the same options): the history, then live output.
    let mut ws = connect(stack, id, "session=s1").await;
    send(&mut ws, json!({"type": "history", "watermark": 0})).await;
    assert_eq!(next_frame(&mut ws).await["watermark"], 1);
    assert_eq!(
        next_frame(&mut ws).await,
        json!({"type": "no_more_history", "watermark": 1})
    );
    send(&mut ws, stdin("x\n")).await;
    let (frames, close) = to_end(&mut ws).await;
    assert_eq!(output(&frames, "stdout"), "two:x\n");
    assert_eq!(frames.last().unwrap()["watermark"], 3);
    assert_eq!(exit_code(&frames), 0);
    assert_normal(close);

    // After the end: nothing live; the history (after an ack, only what follows it), then a
    // normal closure.
    let mut ws = connect(
        stack,
        id,
        &format!("session=s1&interactive=true&command={command}"),
    )
    .await;
    send(&mut ws, json!({"type": "ack", "watermark": 2})).await;
    send(&mut ws, json!({"type": "history", "watermark": 0})).await;
    let (frames, close) = to_end(&mut ws).await;
    assert_eq!(
        frames,
        vec![
            json!({"type": "exit", "exit": {"code": 0}, "watermark": 3}),
            json!({"type": "no_more_history", "watermark": 3}),
        ]
    );
    assert_normal(close);

    // A dropped socket leaves a session's process running; `close` kills it.
    let mut ws = connect(stack, id, "session=s2&command=sleep+104").await;
    ws.close(None).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(exec_of(stack, id, "sleep 104").await["status"], "running");
    let mut ws = connect(stack, id, "session=s2").await;
    send(&mut ws, json!({"type": "close"})).await;
    let (_, close) = to_end(&mut ws).await;
    assert_normal(close);
    wait_exited(stack, id, "sleep 104").await;
    assert_eq!(exec_of(stack, id, "sleep 104").await["exit_code"], 128 + 9);
    assert_eq!(refused(stack, id, "session=s2").await.0, 404, "closed");

    // Session frames on a plain exec are protocol errors.
    let mut ws = connect(stack, id, "command=sleep+106").await;
    send(&mut ws, json!({"type": "history"})).await;
    let (frames, _) = to_end(&mut ws).await;
    assert_eq!(
        frames,
        vec![json!({"type": "error", "error": "unknown frame type: history"})]
    );
    wait_exited(stack, id, "sleep 106").await;
}

/// The browser route in dev mode: the worker's own WebSocket URL, no token, and it works.
async fn browser_url_in_dev(stack: &Stack, id: &str) {
    let resp = follow()
        .get(stack.sandbox(id, "/exec/ws/url?command=echo+from+url&env%5BA%5D=1"))
        .expect_status(200)
        .await;
    let body = body_json(resp).await;
    let url = body["url"].as_str().unwrap();
    let worker = stack.worker.at("").replacen("http://", "ws://", 1);
    assert_eq!(
        url,
        format!("{worker}/sandboxes/{id}/exec/ws?command=echo+from+url&env%5BA%5D=1")
    );
    assert_eq!(body["sandbox_id"], id);
    assert!(body.get("expires_at").is_none(), "{body}");
    let (mut ws, _) = connect_async(url).await.unwrap();
    let (frames, close) = to_end(&mut ws).await;
    assert_eq!(output(&frames, "stdout"), "from url\n");
    assert_normal(close);
    // Its query is checked like the socket's.
    let resp = follow()
        .get(stack.sandbox(id, "/exec/ws/url?tty=maybe&command=x"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "invalid tty value").await;
}

/// An independent client, Python's `websockets` (Debian's `python3-websockets`, which
/// scripts/test installs): `cat` on pipes echoes its input and ends at EOF with exit 0 and a
/// normal closure; stderr and the exit code of a script; the Python REPL on a terminal shows
/// its prompt and answers.
async fn independent_python_client(stack: &Stack, id: &str) {
    const SCRIPT: &str = r#"
import asyncio, base64, json, sys
import websockets

async def run(url, send, until=None):
    out = {"stdout": b"", "stderr": b""}
    async with websockets.connect(url) as ws:
        for data in send:
            await ws.send(json.dumps({"type": "stdin", "data": base64.b64encode(data).decode()}))
            if until:
                while until not in out["stdout"]:
                    frame = json.loads(await ws.recv())
                    out[frame["type"]] += base64.b64decode(frame.get("data", ""))
        async for message in ws:
            frame = json.loads(message)
            if frame["type"] == "exit":
                code = frame["exit"]["code"]
            else:
                out[frame["type"]] += base64.b64decode(frame.get("data", ""))
        assert ws.close_code == 1000, ws.close_code
    return out, code

base = sys.argv[1]
out, code = asyncio.run(run(base + "?command=cat&interactive=true", [b"from ", b"python\n", b""]))
assert (out["stdout"], code) == (b"from python\n", 0), (out, code)
out, code = asyncio.run(run(base + "?command=echo+oops+%3E%262%3B+exit+6", []))
assert (out["stderr"], code) == (b"oops\n", 6), (out, code)
out, code = asyncio.run(run(base + "?command=python3+-q&tty=true&rows=24&cols=80",
                            [b"print(6 * 7 - 1)\n", b"exit()\n"], until=b">>>"))
assert b"41" in out["stdout"] and code == 0, (out, code)
print("independent client ok")
"#;
    let url = stack
        .worker
        .at(&format!("/sandboxes/{id}/exec/ws"))
        .replacen("http://", "ws://", 1);
    let out = tokio::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&url)
        .output()
        .await
        .expect("/usr/bin/python3 (scripts/test installs python3-websockets)");
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("independent client ok"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The browser route in prod mode (fake backend): the URL carries a single-use access token
/// that opens that exec of that sandbox once, without `Authorization`; another client gets
/// no URL for the sandbox.
#[tokio::test]
async fn browser_url_in_prod() {
    let fake = FakeBackend::new();
    let stack = Stack::prod_on(fake.clone()).await;
    let id = stack.create_as("client-a").await;
    fake.set_script("echo hi", FakeExec::new().stdout("hi\n"));
    let url_of = |query: &str| {
        stack
            .worker
            .at(&format!("/sandboxes/{id}/exec/ws/url?{query}"))
    };

    let resp = follow()
        .get(url_of("command=echo+hi"))
        .header("authorization", bearer("client-a"))
        .expect_status(200)
        .await;
    let body = body_json(resp).await;
    let url = body["url"].as_str().unwrap().to_string();
    let prefix = stack
        .worker
        .at(&format!(
            "/sandboxes/{id}/exec/ws?command=echo+hi&access_token="
        ))
        .replacen("http://", "ws://", 1);
    assert!(url.starts_with(&prefix), "{url}");
    let expires_at: chrono::DateTime<chrono::Utc> =
        body["expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = expires_at - chrono::Utc::now();
    assert!(lifetime <= chrono::Duration::seconds(60), "{lifetime}");
    assert!(lifetime > chrono::Duration::seconds(50), "{lifetime}");

    // The exec with the options asked for, the wrong ones with the same token, a replay.
    let token = url.rsplit_once("access_token=").unwrap().1.to_string();
    let status_of = |err: tokio_tungstenite::tungstenite::Error| match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => resp.status().as_u16(),
        other => panic!("{other}"),
    };
    let (mut ws, _) = connect_async(url.as_str()).await.unwrap();
    let (frames, close) = to_end(&mut ws).await;
    assert_eq!(output(&frames, "stdout"), "hi\n");
    assert_normal(close);
    let replay = connect_async(url.as_str()).await.unwrap_err();
    assert_eq!(status_of(replay), 401);

    let resp = follow()
        .get(url_of("command=echo+hi"))
        .header("authorization", bearer("client-a"))
        .send()
        .await
        .unwrap();
    let url = body_json(resp).await["url"].as_str().unwrap().to_string();
    let token2 = url.rsplit_once("access_token=").unwrap().1.to_string();
    assert_ne!(token, token2);
    let other_command = url.replace("command=echo+hi", "command=cat+%2Fetc%2Fshadow");
    assert_eq!(
        status_of(connect_async(other_command).await.unwrap_err()),
        401
    );
    // A wrong use consumed it.
    assert_eq!(status_of(connect_async(url).await.unwrap_err()), 401);

    // Without token or ticket: 401; another client may not get a URL for the sandbox.
    let bare = stack
        .worker
        .at(&format!("/sandboxes/{id}/exec/ws?command=echo+hi"))
        .replacen("http://", "ws://", 1);
    assert_eq!(status_of(connect_async(bare).await.unwrap_err()), 401);
    let resp = follow()
        .get(url_of("command=echo+hi"))
        .header("authorization", bearer("client-b"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 403, "sandbox ownership mismatch").await;
    follow()
        .get(url_of("command=echo+hi"))
        .expect_status(401)
        .await;

    // The refusals were counted as auth failures of the access-token kind.
    let metrics = metrics_text(stack.worker.at("/metrics")).await;
    assert!(metrics.contains(r#"reason="access_token""#), "{metrics}");
    stack.stop().await.unwrap();
}
