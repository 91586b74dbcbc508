//! Fuzz target: one packet of the worker ↔ init agent protocol (JSON over a `SOCK_SEQPACKET`
//! socketpair), decoded as the worker decodes the init's events and as the init decodes the
//! worker's requests. Nothing panics, and whatever decodes is sent again and decodes to
//! itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    traforato_core::fuzzing::agent_packet(data);
});
