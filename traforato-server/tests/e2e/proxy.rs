//! Port URLs and the proxy to servers in a sandbox: HTTP without the client's token, and
//! WebSocket upgrades.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

#[tokio::test]
async fn port_urls() {
    let stack = Stack::dev().await;
    let id = stack.create_id().await;
    let resp = follow()
        .get(
            stack
                .worker
                .at(&format!("/sandboxes/{id}/ports/3000/url?protocol=https")),
        )
        .header("host", "broker.example.com")
        .expect_status(200)
        .await;
    let url = body_json(resp).await;
    assert_eq!(
        url["url"],
        format!("https://broker.example.com/sandboxes/{id}/proxy/3000").as_str()
    );
    assert_eq!(url["port"], 3000);
    assert_eq!(url["protocol"], "https");

    let resp = follow()
        .get(stack.sandbox(&id, "/ports/3000/url?protocol=http"))
        .header("x-forwarded-host", "public.example.com")
        .expect_status(200)
        .await;
    assert_eq!(
        body_json(resp).await["url"],
        format!("http://public.example.com/sandboxes/{id}/proxy/3000").as_str()
    );
    follow()
        .get(stack.sandbox(&id, "/ports/3000/url?protocol=ftp"))
        .expect_error(400, "protocol must be one of: http, https, ws, wss")
        .await;
    follow()
        .get(stack.sandbox(&id, "/ports/0/url"))
        .expect_error(400, "invalid port")
        .await;
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn proxy_forwards_http_without_the_client_token() {
    let stack = Stack::dev().await;
    let id = stack.create_id().await;
    let upstream = start_upstream().await;
    let port = upstream.port();

    // Directly at the worker: reqwest itself drops Authorization on cross-port redirects.
    let resp = follow()
        .post(
            stack
                .worker
                .at(&format!("/sandboxes/{id}/proxy/{port}/hello/world?x=1")),
        )
        .header("authorization", "Bearer client-secret")
        .header("x-custom", "kept")
        .body("ping")
        .expect_status(200)
        .await;
    assert_eq!(resp.headers()["x-traforato-sandbox-id"], id.as_str());
    let seen = body_json(resp).await;
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/hello/world");
    assert_eq!(seen["query"], "x=1");
    assert_eq!(seen["body"], "ping");
    assert_eq!(seen["sandbox_id"], id.as_str());
    assert!(seen["authorization"].is_null(), "{seen}");
    assert_eq!(seen["custom"], "kept");
    assert_eq!(seen["host"], format!("localhost:{port}").as_str());
    assert_eq!(seen["forwarded_proto"], "http");
    assert_eq!(seen["forwarded_for"], "127.0.0.1");

    // Through the broker, trailing slash kept.
    let resp = follow()
        .get(stack.sandbox(&id, &format!("/proxy/{port}/app/?x=2")))
        .expect_status(200)
        .await;
    let seen = body_json(resp).await;
    assert_eq!(seen["path"], "/app/");
    assert_eq!(seen["query"], "x=2");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    follow()
        .get(stack.worker.at(&format!("/sandboxes/{id}/proxy/{closed}/")))
        .expect_error(502, "upstream not reachable")
        .await;
    follow()
        .get(stack.worker.at(&format!("/sandboxes/{id}/proxy/abc")))
        .expect_error(400, "invalid port")
        .await;
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn proxy_tunnels_websocket_upgrades() {
    let stack = Stack::dev().await;
    let id = stack.create_id().await;
    let upstream = start_upstream().await;

    let worker_addr = stack.worker.url.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&worker_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::builder()
        .uri(format!("/sandboxes/{id}/proxy/{}/ws", upstream.port()))
        .header("host", &worker_addr)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    assert_eq!(resp.headers()["sec-websocket-accept"], "test-accept");
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"hello through the tunnel").await.unwrap();
    let mut buf = vec![0u8; 24];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello through the tunnel");
    drop(io);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn prod_proxy_strips_the_client_token() {
    let stack = Stack::prod().await;
    let id = stack.create_as("client-a").await;
    let port = start_upstream().await.port();
    let resp = follow()
        .post(
            stack
                .worker
                .at(&format!("/sandboxes/{id}/proxy/{port}/hello?x=1")),
        )
        .header("authorization", bearer("client-a"))
        .header("proxy-authorization", "Basic c2VjcmV0")
        .body("ping")
        .expect_status(200)
        .await;
    let seen = body_json(resp).await;
    assert_eq!(seen["path"], "/hello");
    assert_eq!(seen["body"], "ping");
    assert_eq!(seen["sandbox_id"], id.as_str());
    assert!(seen["authorization"].is_null(), "{seen}");
    assert!(!seen.to_string().contains("Bearer"), "{seen}");
    stack.stop().await.unwrap();
}
