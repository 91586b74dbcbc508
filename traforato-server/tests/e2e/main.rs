//! End-to-end tests: real broker and worker shells on `127.0.0.1:0` (the fake backend, or the
//! container backend as root), the worker linked to the broker over HTTP, driven with reqwest
//! the way `curl -L` would; and the server binaries as processes. One test binary, one module
//! per concern, one [`harness`].

mod harness;

mod auth;
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
