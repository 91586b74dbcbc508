//! The sandbox init of the `container` backend: the worker re-executes this program once per
//! sandbox; it enters the new namespaces, builds the root and serves the worker as pid 1.
//!
//! Server binaries need not ship this file: they call
//! `traforato_core::backend::container::init_main_if_requested()` first thing in `main` and
//! point the backend's `init_program` at `/proc/self/exe` (the default).

#[cfg(target_os = "linux")]
fn main() {
    traforato_core::backend::container::init_main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("traforato-sandbox-init: the container backend runs on Linux only");
    std::process::exit(2);
}
