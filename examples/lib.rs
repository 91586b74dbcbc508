//! Runnable examples of traforato, one file each under `examples/`:
//!
//! | example | what it shows | needs |
//! |---|---|---|
//! | `embed` | a `Broker` and a `Worker` in one process with no HTTP: warm placement, create, exec, run code, files, delete | nothing |
//! | `custom_scheduler` | a `Scheduler` of your own (bin-packing, warm where it packs) plugged into a `Broker` | nothing |
//! | `custom_backend` | a `VmBackend`/`Vm` of your own (an audit wrapper around any backend) plugged into a `Worker` | nothing |
//! | `client` | `traforato-client` against a running `traforato-dev` | a server at `TRAFORATO_URL` |
//! | `browser_terminal` | a web page running a command in a sandbox over the exec WebSocket, its server minting single-use URLs | a server at `TRAFORATO_URL`, a browser |
//!
//! Run one with `cargo run -p traforato-examples --example <name>`. The first three run in CI
//! through `tests/run.rs`.
