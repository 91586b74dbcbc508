//! Fuzz target: Go durations (flags, YAML, `wait=`) and sizes (YAML). Parsing never panics
//! (no overflow), and a duration prints back to one that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traforato_core::duration::parse_duration;
use traforato_server::config::parse_size;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(duration) = parse_duration(text) {
        let nanos = duration.as_nanos();
        let again = parse_duration(&format!("{nanos}ns"));
        if let Ok(again) = again {
            assert_eq!(again, duration, "{text:?}");
        }
    }
    let _ = parse_size(text);
});
