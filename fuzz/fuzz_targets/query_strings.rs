//! Fuzz target: query strings, as the worker and the broker read them: percent-decoding,
//! placement hints, listings, frames cursors and waits, ports, the exec WebSocket's options.
//! Nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traforato_server::decode;
use traforato_server::exec_ws;
use traforato_server::http::{percent_decode, segments, Query};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let query = Query::parse(Some(raw));
    let _ = decode::placement(&query);
    let _ = decode::lease_ttl(&query);
    let _ = decode::read_encoding(&query);
    let _ = decode::list_options(&query);
    let _ = decode::remove_options(&query);
    let _ = decode::exec_list_limit(&query);
    let _ = decode::protocol(&query);
    let _ = decode::frames_cursor(query.get("cursor"));
    let _ = decode::frames_wait(query.get("wait"));
    let _ = decode::path(query.get("path"));
    let _ = decode::port(raw);
    let _ = exec_ws::parse_query(&query);
    let _ = exec_ws::binding(&query);
    let _ = segments(&percent_decode(raw));
});
