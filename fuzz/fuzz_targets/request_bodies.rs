//! Fuzz target: every JSON request body the services decode, and the checks the shell runs
//! on them (file writes, exec input, signals, mkdir paths). Nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traforato_core::api::{
    CreateSandboxRequest, ExecRequest, ExecResizeRequest, ExecSignalRequest, MkdirRequest,
    NetworkPolicy, PullImage, RegistrationRequest, RunCodeRequest, VmEventRequest, WriteFileJson,
};
use traforato_server::decode;
use traforato_server::http::decode_json;

fuzz_target!(|data: &[u8]| {
    let _ = decode_json::<CreateSandboxRequest>(data);
    let _ = decode_json::<RunCodeRequest>(data);
    let _ = decode_json::<NetworkPolicy>(data);
    let _ = decode_json::<ExecResizeRequest>(data);
    let _ = decode_json::<PullImage>(data);
    let _ = decode_json::<RegistrationRequest>(data);
    let _ = decode_json::<VmEventRequest>(data);
    if let Ok(exec) = decode_json::<ExecRequest>(data) {
        if let Some(stdin) = &exec.stdin {
            let _ = decode::exec_input(stdin, &exec.stdin_encoding);
        }
    }
    if let Ok(write) = decode_json::<WriteFileJson>(data) {
        let _ = decode::write_json(&write);
    }
    if let Ok(signal) = decode_json::<ExecSignalRequest>(data) {
        let _ = decode::signal(&signal);
    }
    if let Ok(mkdir) = decode_json::<MkdirRequest>(data) {
        let _ = decode::path(Some(&mkdir.path));
    }
});
