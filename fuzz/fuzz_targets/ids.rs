//! Fuzz target: the id parsers (sandbox, exec, local VM, component ids). Parsing never
//! panics, and what parses prints back to the same text and parses to the same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traforato_core::id::{ComponentId, ExecId, LocalVmId, SandboxId};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SandboxId::parse(text) {
        assert_eq!(id.to_string(), text, "sandbox ids are canonical");
        assert_eq!(SandboxId::parse(&id.to_string()).unwrap(), id);
    }
    if let Ok(id) = ExecId::parse(text) {
        assert_eq!(ExecId::parse(&id.to_string()).unwrap(), id);
    }
    if let Ok(id) = LocalVmId::parse(text) {
        assert_eq!(id.to_string(), text, "local VM ids are canonical");
    }
    if let Ok(id) = ComponentId::parse(text) {
        // Trimmed, as configuration values are (the contract).
        assert_eq!(id.as_str(), text.trim());
        assert!(id
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }
});
