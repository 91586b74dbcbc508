//! Fuzz target: sandbox paths. Parsing never panics; a parsed path is absolute, clean (no
//! `.`, `..` or empty component, no NUL) and parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traforato_core::path::SandboxPath;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(path) = SandboxPath::parse(text) else {
        return;
    };
    let clean = path.as_str();
    assert!(clean.starts_with('/'), "{clean:?}");
    assert!(!clean.contains('\0'), "{clean:?}");
    if clean != "/" {
        assert!(!clean.ends_with('/'), "{clean:?}");
        for part in clean[1..].split('/') {
            assert!(!part.is_empty() && part != "." && part != "..", "{clean:?}");
        }
    }
    // Parsing a clean path gives it back, but for one quirk of the contract: the raw path is
    // trimmed, so a last component ending in whitespace loses it when parsed again.
    if clean.trim() == clean {
        assert_eq!(SandboxPath::parse(clean).unwrap().as_str(), clean);
    }
});
