//! Runs the in-process examples (`embed`, `custom_scheduler`, `custom_backend`) so that CI
//! checks they still work. Each example file is compiled here as a module and its `main` is
//! called; an example that fails returns an error, which fails the test.

#[path = "../examples/custom_backend.rs"]
mod custom_backend;
#[path = "../examples/custom_scheduler.rs"]
mod custom_scheduler;
#[path = "../examples/embed.rs"]
mod embed;

#[test]
fn embed_example_runs() {
    embed::main().expect("the embed example failed");
}

#[test]
fn custom_scheduler_example_runs() {
    custom_scheduler::main().expect("the custom_scheduler example failed");
}

#[test]
fn custom_backend_example_runs() {
    custom_backend::main().expect("the custom_backend example failed");
}
