//! A sandbox in the browser: a small web app whose server holds the traforato credentials and
//! hands its page a single-use exec WebSocket URL (`GET …/exec/ws/url`); the page then talks to
//! the sandbox's worker directly (see `browser_terminal.html`).
//!
//! **Needs a server.** Start one first, e.g. `traforato-dev` (the `container` backend needs
//! root), then:
//!
//! ```text
//! cargo run -p traforato-examples --example browser_terminal
//! ```
//!
//! and open <http://127.0.0.1:3000>. Environment: `TRAFORATO_URL` (default
//! `http://localhost:8080`), `TRAFORATO_JWT_SECRET` and `TRAFORATO_CLIENT_ID` for a server in
//! prod mode (the example mints a token per request; every URL the page gets then carries an
//! access token good for one connection within a minute), `TRAFORATO_IMAGE` (default `host`),
//! `BROWSER_TERMINAL_ADDR` (default `127.0.0.1:3000`). The sandbox is deleted on Ctrl-C.
//!
//! The browser never sees the traforato token: it could not send it anyway (browsers set no
//! `Authorization` on a WebSocket, nor follow the broker's redirect for one).

use std::error::Error;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use traforato_client::{CreateSandbox, InteractiveCommand, Sandbox};
use traforato_examples::{client_from_env, env_or};

type BoxError = Box<dyn Error + Send + Sync>;

const PAGE: &str = include_str!("browser_terminal.html");

#[tokio::main]
pub async fn main() -> Result<(), BoxError> {
    let client = client_from_env()?;
    let spec = CreateSandbox {
        ttl: Some(Duration::from_secs(3600)),
        ..CreateSandbox::new(env_or("TRAFORATO_IMAGE", "host"))
    };
    let sandbox = client.create_sandbox(spec).await?;
    let addr = env_or("BROWSER_TERMINAL_ADDR", "127.0.0.1:3000");
    let listener = TcpListener::bind(&addr).await?;
    println!("sandbox {}; open http://{addr} (Ctrl-C ends)", sandbox.id());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (conn, _) = accepted?;
                let sandbox = sandbox.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve(conn, &sandbox).await {
                        eprintln!("request failed: {error}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    sandbox.delete().await?;
    println!("deleted {}", sandbox.id());
    Ok(())
}

/// Answers one request: `GET /` is the page, `GET /session?command=…` a fresh exec URL.
async fn serve(mut conn: TcpStream, sandbox: &Sandbox) -> Result<(), BoxError> {
    let mut head = vec![0u8; 8192];
    let n = conn.read(&mut head).await?;
    let head = String::from_utf8_lossy(&head[..n]);
    let target = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("");
    let (status, content_type, body) = match target.split_once('?') {
        _ if target == "/" => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        Some(("/session", query)) => session(sandbox, query).await,
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    Ok(())
}

/// A single-use exec URL for the command in `query` (`command=…`).
async fn session(sandbox: &Sandbox, query: &str) -> (&'static str, &'static str, String) {
    let command = url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "command")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let json = "application/json";
    if command.trim().is_empty() {
        let error = serde_json::json!({"error": "command is required"});
        return ("400 Bad Request", json, error.to_string());
    }
    match sandbox.exec_ws_url(&InteractiveCommand::new(command)).await {
        Ok(url) => ("200 OK", json, serde_json::json!(url).to_string()),
        Err(error) => {
            let error = serde_json::json!({"error": error.to_string()});
            ("502 Bad Gateway", json, error.to_string())
        }
    }
}
