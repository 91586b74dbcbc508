//! Fuzz target: client token validation, the Authorization header as sent. Nothing panics,
//! and no input is accepted: a valid token needs the secret's HMAC.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use traforato_core::auth::{AuthConfig, ClientAuthenticator};
use traforato_core::clock::SystemClock;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let auth = ClientAuthenticator::new(
        &AuthConfig::with_secret("fuzzing-secret"),
        Arc::new(SystemClock),
    );
    assert!(
        auth.authenticate(Some(header)).is_err(),
        "{header:?} accepted"
    );
});
