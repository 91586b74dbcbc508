//! traforato-client: a typed async client for traforato sandboxes.
//!
//! Talk to the broker; the client follows the broker's `307` redirects to the worker that owns
//! a sandbox itself, re-sending the method, the body and a fresh `Authorization` header on
//! every hop, and follows placement-retry bounces up to a bound
//! ([`ClientBuilder::max_redirects`]). It caches no worker address.
//!
//! ```no_run
//! use traforato_client::{Client, CreateSandbox, Runtime};
//!
//! # async fn demo() -> Result<(), traforato_client::ClientError> {
//! let client = Client::builder("http://localhost:8080")
//!     .token(std::env::var("TRAFORATO_TOKEN").unwrap_or_default())
//!     .build()?;
//!
//! let sandbox = client.create_sandbox(CreateSandbox::new("ubuntu:24.04")).await?;
//!
//! let out = sandbox.exec("echo hello from $(hostname)").await?;
//! print!("{}", out.stdout);
//!
//! let result = sandbox
//!     .run_code(Runtime::Python, "open('/workspace/answer.txt', 'w').write(str(6 * 7))")
//!     .await?;
//! assert!(result.success());
//!
//! let answer = sandbox.files().read_text("/workspace/answer.txt").await?;
//! println!("answer: {answer}");
//!
//! sandbox.delete().await?;
//! # Ok(()) }
//! ```
//!
//! Map of the crate:
//! - [`Client`] / [`ClientBuilder`]: the broker URL, credentials (a static token or a
//!   [`TokenProvider`] called per request), timeouts and the redirect bound.
//! - [`Sandbox`]: one sandbox: [`Sandbox::exec`], [`Sandbox::exec_stream`],
//!   [`Sandbox::run_code`], [`Sandbox::files`], [`Sandbox::port_url`],
//!   [`Sandbox::proxy_request`], [`Sandbox::set_lease`], [`Sandbox::delete`].
//! - [`Execution`]: a running exec; [`Execution::frames`] is a [`futures::Stream`] of output
//!   frames using the server's long-poll, [`Execution::wait`] collects the result.
//! - [`InteractiveExec`]: a command over the worker's WebSocket
//!   ([`Sandbox::exec_interactive`]): stdin, terminal resizes and a stream of
//!   [`OutputEvent`]s.
//! - [`Files`]: read, write, append, stat, list (a paging stream), mkdir, remove, download.
//! - [`Client::images`], [`Client::pull_image`], [`Client::remove_image`]: a worker's
//!   images, for operators (with a worker's URL as the base URL).
//! - [`ClientError`]: every failure, matchable; API errors carry the HTTP status and the
//!   server's message, and timeouts and connection failures are their own variants.
//!
//! Wire types come from [`traforato_core::api`] and are re-exported as [`api`].

mod auth;
mod client;
mod error;
mod exec;
mod files;
mod images;
mod interactive;
mod sandbox;
#[cfg(test)]
mod testing;

pub use auth::{TokenFuture, TokenProvider};
pub use client::{
    Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LONG_POLL, DEFAULT_MAX_REDIRECTS,
    DEFAULT_TIMEOUT,
};
pub use error::{BoxError, ClientError};
pub use exec::{
    frame_exit_code, Command, ExecOutput, Execution, FrameStream, ParseRuntimeError, RunCode,
    RunCodeOutput, Runtime,
};
pub use files::{ByteStream, EntryStream, Files, ListOptions, RemoveOptions};
pub use interactive::{
    ExecInput, ExecOutputStream, InteractiveCommand, InteractiveExec, OutputEvent,
};
pub use sandbox::{
    CreateSandbox, ParseProtocolError, Protocol, ProxyRequest, ProxyResponse, Sandbox,
};
pub use traforato_core::api;
/// A signal for a running exec's process group (`TERM`, `KILL`, `INT`, `HUP`).
pub use traforato_core::api::ExecSignal as Signal;
pub use traforato_core::api::{Frame, FrameKind};

/// HTTP types used in [`ProxyRequest`] and [`ProxyResponse`].
pub use reqwest::{header, Method, StatusCode};
