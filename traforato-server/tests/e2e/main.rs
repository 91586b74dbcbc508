//! End-to-end tests: real broker and worker shells on `127.0.0.1:0` (the fake backend, or the
//! container backend as root), the worker linked to the broker over HTTP, driven with reqwest
//! the way `curl -L` would; and the server binaries as processes. One test binary, one module
//! per concern, one [`harness`].

mod harness;

mod auth;
// The binaries serve the `fake` virtualization only when built with it (CI: --all-features).
#[cfg(feature = "fake")]
mod binaries;
mod bodies;
mod broker;
mod container;
mod exec;
mod exec_ws;
mod files;
mod fleet;
mod interactive;
mod internal;
mod proxy;
mod sandboxes;
mod warm;

#[cfg(not(feature = "fake"))]
#[test]
fn binaries_need_the_fake_feature() {
    eprintln!(
        "skipped: the server binaries' tests run them with `--default-virtualization fake`, \
         which needs `cargo test --features fake` (CI runs --all-features)"
    );
}
