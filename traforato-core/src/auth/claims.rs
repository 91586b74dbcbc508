//! Shared HS256 token plumbing: signature and shape checks through `jsonwebtoken`, claim
//! parsing (numeric dates, `aud` as a string or a list) and signing.
//!
//! The library checks only the algorithm, the shape and the signature here; every time-based
//! check uses the injected clock instead of the library's system clock.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

/// Why a token failed the signature-level checks. Messages never quote the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenDefect {
    /// Not three base64url parts, or a header or payload that is not the expected JSON.
    #[error("token is malformed")]
    Malformed,
    /// The header names an algorithm other than HS256 (`none`, RS256, HS384, ...).
    #[error("token signing algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// The HMAC does not match.
    #[error("token signature is invalid")]
    InvalidSignature,
    /// `nbf` is after now.
    #[error("token is not valid yet")]
    NotYetValid,
}

/// The claims either kind of token may carry. Absent and `null` claims are `None`; a claim
/// of the wrong JSON type makes the whole token [`TokenDefect::Malformed`].
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Claims {
    pub client_id: Option<String>,
    pub sub: Option<String>,
    pub iss: Option<String>,
    #[serde(default, deserialize_with = "audience")]
    pub aud: Vec<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub nbf: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub iat: Option<DateTime<Utc>>,
    pub jti: Option<String>,
}

/// `Some(text)` when the claim is present and not blank.
pub(crate) fn non_blank(claim: &Option<String>) -> Option<&str> {
    claim.as_deref().filter(|value| !value.trim().is_empty())
}

/// `aud` is either one string or a list of strings (RFC 7519 §4.1.3).
fn audience<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(aud)) => vec![aud],
        Some(OneOrMany::Many(aud)) => aud,
    })
}

/// A JSON number of seconds since the epoch, truncated to whole seconds as the prototype did.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let Some(seconds) = Option::<f64>::deserialize(d)? else {
        return Ok(None);
    };
    // Anything beyond chrono's range (about +-262,000 years) is not a date.
    const LIMIT: f64 = 8.0e12;
    if !seconds.is_finite() || seconds.abs() > LIMIT {
        return Err(serde::de::Error::custom("numeric date out of range"));
    }
    DateTime::from_timestamp(seconds.floor() as i64, 0)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("numeric date out of range"))
}

/// Checks HS256 tokens signed with one key.
pub(crate) struct Hs256Decoder {
    key: DecodingKey,
    validation: Validation,
}

impl Hs256Decoder {
    /// A decoder for `key` (the trimmed secret).
    pub fn new(key: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // The library would check exp and nbf against the system clock and knows nothing of
        // our claim rules: it verifies the algorithm and the signature only.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Self {
            key: DecodingKey::from_secret(key),
            validation,
        }
    }

    /// Verifies algorithm, shape and signature, parses the claims, and rejects a token whose
    /// `nbf` is after `now`. Every other claim rule is the caller's.
    pub fn decode(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenDefect> {
        require_hs256_header(token)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidSignature => TokenDefect::InvalidSignature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::MissingAlgorithm => TokenDefect::AlgorithmNotAllowed,
                _ => TokenDefect::Malformed,
            })?
            .claims;
        if claims.nbf.is_some_and(|nbf| nbf > now) {
            return Err(TokenDefect::NotYetValid);
        }
        Ok(claims)
    }
}

impl fmt::Debug for Hs256Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hs256Decoder { key: <redacted> }")
    }
}

/// Rejects any `alg` but HS256 before the library sees the token, so that `none` (which the
/// library cannot even parse) reports the algorithm rather than a malformed header.
fn require_hs256_header(token: &str) -> Result<(), TokenDefect> {
    let encoded = token.split('.').next().unwrap_or_default();
    let header = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| TokenDefect::Malformed)?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| TokenDefect::Malformed)?;
    match header.get("alg").and_then(serde_json::Value::as_str) {
        Some("HS256") => Ok(()),
        Some(_) => Err(TokenDefect::AlgorithmNotAllowed),
        None => Err(TokenDefect::Malformed),
    }
}

/// The claims this crate mints. Times are whole seconds since the epoch.
#[derive(Debug, Serialize)]
pub(crate) struct MintClaims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<&'a str>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// Signs `claims` with HS256.
pub(crate) fn sign(key: &EncodingKey, claims: &MintClaims<'_>) -> String {
    // Serialising a struct of strings and integers and computing an HMAC cannot fail.
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key)
        .expect("HS256 signing of plain claims cannot fail")
}

/// True when a token issued at `issued_at` and expiring at `expires_at` lives longer than
/// `max` (an `exp` before `iat` is a lifetime of zero; the expiry check refuses it).
pub(crate) fn lifetime_exceeds(
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    max: std::time::Duration,
) -> bool {
    let lifetime = (expires_at - issued_at).to_std().unwrap_or_default();
    lifetime > max
}

/// A fresh ULID for `jti`, its time part taken from the (possibly injected) `now`.
pub(crate) fn fresh_jti(now: DateTime<Utc>) -> String {
    ulid::Ulid::from_datetime(now.into()).to_string()
}

#[cfg(test)]
pub(crate) mod test_tokens {
    //! Hand-built tokens for the tests of both token kinds.

    use super::*;

    /// A token with any header and payload, HS256-signed with `secret`.
    pub fn hs256(secret: &str, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    /// A token with any payload, HS256-signed with raw key bytes (e.g. the internal key).
    pub fn hs256_key(key: &[u8], claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(key),
        )
        .expect("sign")
    }

    /// A token with a raw header JSON, the payload, and an arbitrary signature part.
    pub fn raw(header: &str, claims: &serde_json::Value, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::test_tokens::*;
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("time")
    }

    #[test]
    fn decodes_a_valid_token_with_fractional_dates_and_list_audience() {
        let token = hs256(
            "k",
            &json!({"client_id": "a", "aud": ["x", "y"], "exp": 1_700_000_100.9, "iat": 1_700_000_000}),
        );
        let claims = Hs256Decoder::new(b"k")
            .decode(&token, now())
            .expect("valid");
        assert_eq!(claims.client_id.as_deref(), Some("a"));
        assert_eq!(claims.aud, vec!["x".to_string(), "y".to_string()]);
        assert_eq!(claims.exp.map(|t| t.timestamp()), Some(1_700_000_100));
        assert!(claims.jti.is_none() && claims.iss.is_none() && claims.nbf.is_none());
    }

    #[test]
    fn rejects_wrong_key_algorithms_and_garbage() {
        let decoder = Hs256Decoder::new(b"k");
        let claims = json!({"client_id": "a"});
        let wrong_key = hs256("other", &claims);
        assert_eq!(
            decoder.decode(&wrong_key, now()).unwrap_err(),
            TokenDefect::InvalidSignature
        );
        let none = raw(r#"{"alg":"none","typ":"JWT"}"#, &claims, b"");
        assert_eq!(
            decoder.decode(&none, now()).unwrap_err(),
            TokenDefect::AlgorithmNotAllowed
        );
        let rs256 = raw(r#"{"alg":"RS256","typ":"JWT"}"#, &claims, &[7u8; 256]);
        assert_eq!(
            decoder.decode(&rs256, now()).unwrap_err(),
            TokenDefect::AlgorithmNotAllowed
        );
        for garbage in ["", "a.b", "not-a-jwt", "a.b.c", "...."] {
            assert_eq!(
                decoder.decode(garbage, now()).unwrap_err(),
                TokenDefect::Malformed,
                "{garbage}"
            );
        }
    }

    #[test]
    fn rejects_claims_of_the_wrong_type() {
        let decoder = Hs256Decoder::new(b"k");
        for claims in [
            json!({"client_id": 5}),
            json!({"exp": "tomorrow"}),
            json!({"aud": [1, 2]}),
            json!({"iat": 1e300}),
        ] {
            let token = hs256("k", &claims);
            assert_eq!(
                decoder.decode(&token, now()).unwrap_err(),
                TokenDefect::Malformed,
                "{claims}"
            );
        }
    }

    #[test]
    fn nbf_is_checked_against_the_given_time() {
        let decoder = Hs256Decoder::new(b"k");
        let token = hs256("k", &json!({"nbf": 1_700_000_001}));
        assert_eq!(
            decoder.decode(&token, now()).unwrap_err(),
            TokenDefect::NotYetValid
        );
        let later = now() + chrono::Duration::seconds(1);
        assert!(decoder.decode(&token, later).is_ok());
    }
}
