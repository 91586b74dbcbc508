//! Request bodies: size caps, strict JSON decoding, and answers that reach clients which send
//! the whole body first or ask for `100 Continue`.

use std::net::SocketAddr;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

#[tokio::test]
async fn body_caps_and_decoding() {
    let stack = Stack::dev().await;
    let big = vec![b' '; (1 << 20) + 1];
    follow()
        .post(stack.broker.at("/sandboxes"))
        .body(big.clone())
        .expect_error(400, "body exceeds max size")
        .await;
    follow()
        .put(stack.broker.at("/internal/workers/worker_x/registration"))
        .body(big.clone())
        .expect_error(400, "invalid request body")
        .await;
    // Hardening II: a top-level array is no record, even one whose items fit the fields in
    // order (derived decoding alone took `["ubuntu:24.04",2]` as image and cpu).
    for body in [
        "",
        "[1,2]",
        "[\"ubuntu:24.04\",2]",
        "[\"ubuntu:24.04\",1,\"fake\"]",
        "\"ubuntu:24.04\"",
        "42",
        "true",
        "{\"cpu\":\"2\"}",
        "{\"cpu\":1.5}",
    ] {
        follow()
            .post(stack.broker.at("/sandboxes"))
            .body(body)
            .expect_error(400, "invalid request body")
            .await;
    }
    for registration in [
        json!(["worker_x.local", "http://worker-x.local:8081"]),
        json!([]),
        json!("worker_x"),
    ] {
        follow()
            .put(stack.broker.at("/internal/workers/worker_x/registration"))
            .json(&registration)
            .expect_error(400, "invalid request body")
            .await;
    }
    assert!(!stack.broker.broker.is_worker_active("worker_x"));
    // The worker's own create route too.
    follow()
        .post(stack.worker.at("/sandboxes"))
        .body("[\"ubuntu:24.04\",1,\"fake\"]")
        .expect_error(400, "invalid request body")
        .await;
    // `null` means defaults; unknown fields are ignored; trailing bytes are ignored.
    no_follow()
        .post(stack.broker.at("/sandboxes"))
        .body("null")
        .expect_status(307)
        .await;
    follow()
        .post(stack.broker.at("/sandboxes"))
        .body(r#"{"image":"ubuntu:24.04","virtualization":"fake","colour":"red"} trailing"#)
        .expect_status(201)
        .await;

    let id = stack.create_id().await;
    expect_error(
        follow()
            .put(stack.sandbox(&id, "/files?path=/workspace/big.bin"))
            .body(vec![0u8; (10 << 20) + 1])
            .send()
            .await
            .unwrap(),
        400,
        "body exceeds max size",
    )
    .await;
    let ok = follow()
        .put(stack.sandbox(&id, "/files?path=/workspace/ok.bin"))
        .body(vec![0u8; 10 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    follow()
        .post(stack.sandbox(&id, "/exec"))
        .body(big.clone())
        .expect_error(400, "body exceeds max size")
        .await;
    expect_error(
        follow()
            .post(stack.sandbox(&id, "/exec/code"))
            .body(vec![b' '; (1 << 20) + 1025])
            .send()
            .await
            .unwrap(),
        400,
        "invalid request body",
    )
    .await;
    follow()
        .post(stack.sandbox(&id, "/files/mkdir"))
        .body(big)
        .expect_error(400, "invalid request body")
        .await;
    stack.stop().await.unwrap();
}

/// Sends `head` (a request line and headers, without the blank line) with `Content-Length`
/// and a body of `len` bytes, all of it before reading anything, as Python's `http.client`
/// and `requests` do; then reads the answer up to the end of its headers. A server that
/// answers and closes without reading the body makes this fail with a reset or broken pipe.
async fn send_whole_body_then_read(addr: SocketAddr, head: &str, len: usize) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nHost: {addr}\r\nContent-Length: {len}\r\n\r\n");
    let body = vec![b'x'; len];
    let sent = async {
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the answer",
                ));
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(WAIT, sent).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) => panic!("{head} with a {len}-byte body: {err}"),
        Err(_) => panic!("{head} with a {len}-byte body: no answer"),
    }
}

/// Hardening II: answers that do not need the body (the broker's redirects, refusals before
/// the body is read) still reach a client that sends the whole body first.
#[tokio::test]
async fn clients_that_send_the_whole_body_first_read_the_answer() {
    let stack = Stack::dev().await;
    let id = stack.create_id().await;
    let broker = stack.broker.addr;
    let worker: SocketAddr = stack
        .worker
        .at("")
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    for len in [512 << 10, 2 << 20, 10 << 20] {
        // A sandbox-scoped upload through the broker: 307 to the worker, body unread.
        let answer = send_whole_body_then_read(
            broker,
            &format!("PUT /sandboxes/{id}/files?path=/workspace/big.bin HTTP/1.1"),
            len,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 307"), "{len}: {answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nlocation: http://"),
            "{answer}"
        );
    }
    // A create over the 1 MiB cap: the broker stops reading at the cap and still answers.
    let answer = send_whole_body_then_read(broker, "POST /sandboxes HTTP/1.1", 2 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // An unknown route and a worker that refuses before reading (unknown sandbox).
    let answer = send_whole_body_then_read(broker, "POST /nowhere HTTP/1.1", 2 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let other = sandbox_id_on("worker_local");
    let answer = send_whole_body_then_read(
        worker,
        &format!("PUT /sandboxes/{other}/files?path=/workspace/big.bin HTTP/1.1"),
        2 << 20,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    stack.stop().await.unwrap();
}

/// A client that asks for `100 Continue` gets the redirect without sending its body to the
/// broker (which would only throw it away).
#[tokio::test]
async fn expect_continue_gets_the_redirect_without_sending_the_body() {
    let stack = Stack::dev().await;
    let id = stack.create_id().await;
    let mut stream = tokio::net::TcpStream::connect(stack.broker.addr)
        .await
        .unwrap();
    let head = format!(
        "PUT /sandboxes/{id}/files?path=/workspace/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("an answer without the body")
            .unwrap();
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 307"), "{answer}");
    stack.stop().await.unwrap();
}
