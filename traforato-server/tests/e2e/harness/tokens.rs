//! Tokens for the prod-mode tests: client tokens, internal worker tokens, and tokens with one
//! defect each.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use traforato_core::auth::{mint_client_token, AuthConfig, InternalTokenSigner};
use traforato_core::clock::SystemClock;

/// The prod secret of §11's tests.
pub const SECRET: &str = "secret";

/// Prod authentication with [`SECRET`], default issuer and audience.
pub fn prod_auth() -> AuthConfig {
    AuthConfig::with_secret(SECRET)
}

/// Now, in seconds since the epoch.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A fresh client token for `client_id`, valid for 10 minutes.
pub fn token(client_id: &str) -> String {
    token_with(SECRET, client_id)
}

/// A fresh client token for `client_id` signed with `secret`, valid for 10 minutes.
pub fn token_with(secret: &str, client_id: &str) -> String {
    mint_client_token(
        secret,
        client_id,
        "traforato",
        "traforato-api",
        Duration::from_secs(600),
        chrono::Utc::now(),
    )
}

/// `Bearer <fresh token>`.
pub fn bearer(client_id: &str) -> String {
    format!("Bearer {}", token(client_id))
}

/// An internal token header for calls by `worker_id`, as a worker with [`SECRET`] signs them.
pub fn internal_bearer(worker_id: &str) -> String {
    InternalTokenSigner::new(&prod_auth(), Arc::new(SystemClock))
        .authorization_header(worker_id)
        .unwrap()
}

/// An HS256 token with exactly `claims`, signed with `secret`.
pub fn signed(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An HS256 token with exactly `claims`, signed with the internal key of [`SECRET`] (as a
/// worker's tokens are).
pub fn signed_internal(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(&prod_auth().internal_key()),
    )
    .unwrap()
}

/// A token with header `{"alg": alg}` and an arbitrary signature (`none`, RS256, ...).
pub fn with_algorithm(alg: &str, claims: &Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = if alg == "none" {
        String::new()
    } else {
        URL_SAFE_NO_PAD.encode([7u8; 256])
    };
    format!("{header}.{payload}.{signature}")
}

/// Client claims as §11's prod tests have them: exp = now + 10 min, iat = now - 1 min.
pub fn client_claims(client_id: &str) -> Value {
    let now = now_secs();
    json!({
        "client_id": client_id,
        "iss": "traforato",
        "aud": "traforato-api",
        "exp": now + 600,
        "iat": now - 60,
        "jti": ulid::Ulid::new().to_string(),
    })
}

/// [`client_claims`] with `key` set to `value` (`Value::Null` removes it).
pub fn client_claims_with(key: &str, value: Value) -> Value {
    let mut claims = client_claims("client-a");
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

/// Internal claims as §11 has them: aud list, iss, sub, exp = now + 45 s, iat = now.
pub fn internal_claims(sub: &str) -> Value {
    let now = now_secs();
    json!({
        "sub": sub,
        "iss": "traforato",
        "aud": ["traforato-internal"],
        "exp": now + 45,
        "iat": now,
        "jti": ulid::Ulid::new().to_string(),
    })
}
