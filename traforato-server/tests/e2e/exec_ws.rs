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
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
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

    let resp = follow()
        .delete(stack.sandbox(&id, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    stack.stop().await.unwrap();
    backend.remove_cgroup_parents().unwrap();
    std::fs::remove_dir_all(&state_dir).unwrap();
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
