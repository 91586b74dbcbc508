//! Fuzz target: the worker YAML. Any document decodes to settings or to an error naming a
//! key; nothing panics, whatever the nesting, aliases or values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traforato_server::config::parse_worker_yaml;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_worker_yaml(text);
});
