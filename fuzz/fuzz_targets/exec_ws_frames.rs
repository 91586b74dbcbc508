//! Fuzz target: the frames a client sends on an exec WebSocket (Orchard's protocol). Each
//! decodes to a frame or an error; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traforato_server::exec_ws::decode_client_frame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = decode_client_frame(text);
});
