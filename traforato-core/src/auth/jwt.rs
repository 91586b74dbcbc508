//! Client (public) tokens: the prod-mode HS256 check of the `Authorization` header with a
//! per-service replay cache, and a minting helper for operators and tests.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::EncodingKey;

use super::claims::{
    fresh_jti, lifetime_exceeds, non_blank, sign, Hs256Decoder, MintClaims, TokenDefect,
};
use super::replay::ReplayCache;
use super::{AuthConfig, AuthMode, Principal};
use crate::clock::Clock;

/// How far in the future `iat` may be, to absorb clock skew between minter and service.
const IAT_SKEW: chrono::Duration = chrono::Duration::seconds(5);

/// Why a client token was refused. Every variant maps to HTTP 401 with this text as the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header, no `Bearer ` prefix, or an empty token.
    #[error("unauthorized: missing bearer token")]
    MissingBearerToken,
    /// Bad shape, algorithm or signature, or `nbf` in the future.
    #[error("unauthorized: {0}")]
    InvalidToken(#[from] TokenDefect),
    /// `client_id` absent or blank.
    #[error("unauthorized: missing client_id claim")]
    MissingClientId,
    /// `iss` absent or blank.
    #[error("unauthorized: missing iss claim")]
    MissingIssuer,
    /// `iss` differs from the configured issuer.
    #[error("unauthorized: invalid issuer")]
    InvalidIssuer,
    /// `aud` absent or without a non-blank entry.
    #[error("unauthorized: missing aud claim")]
    MissingAudience,
    /// No `aud` entry equals the configured audience.
    #[error("unauthorized: invalid audience")]
    InvalidAudience,
    /// `exp` absent.
    #[error("unauthorized: missing exp claim")]
    MissingExpiry,
    /// `exp` at or before now.
    #[error("unauthorized: expired token")]
    Expired,
    /// `iat` absent.
    #[error("unauthorized: missing iat claim")]
    MissingIssuedAt,
    /// `iat` more than 5 s after now.
    #[error("unauthorized: invalid issued-at")]
    InvalidIssuedAt,
    /// `exp - iat` is longer than the configured maximum token lifetime.
    #[error("unauthorized: token lifetime (exp - iat) exceeds the maximum of {max_seconds}s")]
    LifetimeTooLong {
        /// The configured maximum, in seconds.
        max_seconds: u64,
    },
    /// `jti` absent or blank.
    #[error("unauthorized: missing jti claim")]
    MissingTokenId,
    /// This service already accepted a token with this `jti`, and it has not expired yet.
    #[error("jwt replay detected: {0}")]
    Replay(String),
}

/// Checks client tokens for one service (a broker or a worker). Build one per service: each
/// owns its replay cache, so a token accepted by the broker can still be used once at a worker.
pub struct ClientAuthenticator {
    mode: AuthMode,
    issuer: String,
    audience: String,
    max_lifetime: Duration,
    decoder: Hs256Decoder,
    replay: ReplayCache,
    clock: Arc<dyn Clock>,
}

impl ClientAuthenticator {
    /// An authenticator for `config`, with time from `clock`.
    pub fn new(config: &AuthConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            mode: config.mode(),
            issuer: config.issuer().to_string(),
            audience: config.audience().to_string(),
            max_lifetime: config.max_token_lifetime,
            decoder: Hs256Decoder::new(config.key()),
            replay: ReplayCache::new(),
            clock,
        }
    }

    /// Dev (everyone is [`Principal::dev`]) or prod (tokens required).
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Authenticates a request from its `Authorization` header value.
    ///
    /// In dev mode this always succeeds with [`Principal::dev`]. In prod, the checks run in
    /// this order, the first failure winning:
    /// 1. strip the case-sensitive `Bearer ` prefix and trim; an empty result, or one equal
    ///    to the raw header, is [`AuthError::MissingBearerToken`];
    /// 2. HS256 signature and shape, `exp` (when present) after now, `nbf` (when present) not
    ///    after now;
    /// 3. `client_id`; 4. `iss` (equal to the configured issuer, if any); 5. `aud` (one entry
    ///    equal to the configured audience, if any); 6. `exp` present; 7. `iat` present and
    ///    at most 5 s in the future; 8. `exp - iat` at most the configured maximum lifetime;
    ///    9. `jti`;
    /// 10. the `jti` must not have been accepted before by this authenticator; it is then
    ///     remembered until `exp` (so at most the maximum lifetime).
    ///
    /// A successful prod authentication consumes the token: every request needs a fresh one.
    pub fn authenticate(&self, authorization_header: Option<&str>) -> Result<Principal, AuthError> {
        if self.mode == AuthMode::Dev {
            return Ok(Principal::dev());
        }
        let raw = authorization_header.unwrap_or_default();
        let token = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
        if token.is_empty() || token == raw {
            return Err(AuthError::MissingBearerToken);
        }

        let now = self.clock.now();
        let claims = self.decoder.decode(token, now)?;
        if claims.exp.is_some_and(|exp| exp <= now) {
            return Err(AuthError::Expired);
        }

        let client_id = non_blank(&claims.client_id).ok_or(AuthError::MissingClientId)?;

        let issuer = non_blank(&claims.iss).ok_or(AuthError::MissingIssuer)?;
        if !self.issuer.is_empty() && issuer != self.issuer {
            return Err(AuthError::InvalidIssuer);
        }

        if claims.aud.iter().all(|aud| aud.trim().is_empty()) {
            return Err(AuthError::MissingAudience);
        }
        if !self.audience.is_empty() && !claims.aud.contains(&self.audience) {
            return Err(AuthError::InvalidAudience);
        }

        let expires_at = claims.exp.ok_or(AuthError::MissingExpiry)?;

        let issued_at = claims.iat.ok_or(AuthError::MissingIssuedAt)?;
        if issued_at > now + IAT_SKEW {
            return Err(AuthError::InvalidIssuedAt);
        }
        if lifetime_exceeds(issued_at, expires_at, self.max_lifetime) {
            return Err(AuthError::LifetimeTooLong {
                max_seconds: self.max_lifetime.as_secs(),
            });
        }

        let jti = non_blank(&claims.jti).ok_or(AuthError::MissingTokenId)?;
        if !self.replay.check_and_record(jti, expires_at, now) {
            return Err(AuthError::Replay(jti.to_string()));
        }

        Ok(Principal {
            client_id: client_id.to_string(),
        })
    }
}

impl fmt::Debug for ClientAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuthenticator")
            .field("mode", &self.mode)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_lifetime", &self.max_lifetime)
            .field("replay_cache_entries", &self.replay.len())
            .finish_non_exhaustive()
    }
}

/// Mints a client token: HS256 with the trimmed `secret`, claims `client_id`, `iss` and `aud`
/// (each left out when empty), `iat` = `now` and `exp` = `now` + `ttl` in whole seconds
/// (`ttl` truncated), and a fresh ULID `jti`. Each token is good for one request per service.
pub fn mint_client_token(
    secret: &str,
    client_id: &str,
    issuer: &str,
    audience: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> String {
    let issued_at = now.timestamp();
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    fn present(value: &str) -> Option<&str> {
        Some(value.trim()).filter(|v| !v.is_empty())
    }
    let claims = MintClaims {
        client_id: present(client_id),
        sub: None,
        iss: present(issuer),
        aud: present(audience),
        iat: issued_at,
        exp: issued_at.saturating_add(ttl),
        jti: fresh_jti(now),
    };
    sign(&EncodingKey::from_secret(secret.trim().as_bytes()), &claims)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::claims::test_tokens::{hs256, raw};
    use super::*;
    use crate::clock::ManualClock;

    const SECRET: &str = "secret";

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("time")
    }

    fn prod() -> (Arc<ManualClock>, ClientAuthenticator) {
        let clock = Arc::new(ManualClock::new(start()));
        let config = AuthConfig::with_secret(SECRET);
        let auth = ClientAuthenticator::new(&config, clock.clone());
        (clock, auth)
    }

    /// The claims of §11's prod tests: exp = now + 10 min, iat = now - 1 min.
    fn good_claims(jti: &str) -> Value {
        let now = start().timestamp();
        json!({
            "client_id": "client-a",
            "iss": "traforato",
            "aud": "traforato-api",
            "exp": now + 600,
            "iat": now - 60,
            "jti": jti,
        })
    }

    fn with(jti: &str, key: &str, value: Value) -> Value {
        let mut claims = good_claims(jti);
        claims[key] = value;
        claims
    }

    fn without(jti: &str, key: &str) -> Value {
        let mut claims = good_claims(jti);
        claims.as_object_mut().expect("object").remove(key);
        claims
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn check(auth: &ClientAuthenticator, claims: &Value) -> Result<Principal, AuthError> {
        auth.authenticate(Some(&bearer(&hs256(SECRET, claims))))
    }

    #[test]
    fn valid_token_authenticates_then_its_replay_fails() {
        let (_, auth) = prod();
        assert_eq!(auth.mode(), AuthMode::Prod);
        let header = bearer(&hs256(SECRET, &good_claims("jti-1")));
        let principal = auth.authenticate(Some(&header)).expect("valid");
        assert_eq!(principal.client_id, "client-a");
        let err = auth.authenticate(Some(&header)).unwrap_err();
        assert_eq!(err, AuthError::Replay("jti-1".to_string()));
        assert_eq!(err.to_string(), "jwt replay detected: jti-1");
    }

    #[test]
    fn another_service_accepts_the_same_token_once() {
        let (clock, broker) = prod();
        let worker = ClientAuthenticator::new(&AuthConfig::with_secret(SECRET), clock);
        let header = bearer(&hs256(SECRET, &good_claims("shared")));
        assert!(broker.authenticate(Some(&header)).is_ok());
        assert!(matches!(
            broker.authenticate(Some(&header)),
            Err(AuthError::Replay(_))
        ));
        assert!(worker.authenticate(Some(&header)).is_ok());
        assert!(matches!(
            worker.authenticate(Some(&header)),
            Err(AuthError::Replay(_))
        ));
    }

    #[test]
    fn dev_mode_accepts_anything_as_dev_principal() {
        let clock = Arc::new(ManualClock::new(start()));
        let auth = ClientAuthenticator::new(&AuthConfig::with_secret("  "), clock);
        assert_eq!(auth.mode(), AuthMode::Dev);
        for header in [None, Some(""), Some("Bearer garbage"), Some("Basic x")] {
            assert_eq!(auth.authenticate(header), Ok(Principal::dev()));
        }
        assert_eq!(Principal::dev().client_id, "dev-mode");
    }

    #[test]
    fn missing_bearer_token_cases() {
        let (_, auth) = prod();
        let token = hs256(SECRET, &good_claims("x"));
        for header in [
            None,
            Some(String::new()),
            Some("Bearer ".to_string()),
            Some("Bearer    ".to_string()),
            Some(token.clone()),
            // The prefix is case-sensitive.
            Some(format!("bearer {token}")),
        ] {
            let err = auth.authenticate(header.as_deref()).unwrap_err();
            assert_eq!(err, AuthError::MissingBearerToken, "{header:?}");
            assert_eq!(err.to_string(), "unauthorized: missing bearer token");
        }
        // Without the prefix but with whitespace to trim, the header is parsed as a token.
        assert_eq!(
            auth.authenticate(Some("Basic abc ")).unwrap_err(),
            AuthError::InvalidToken(TokenDefect::Malformed)
        );
    }

    #[test]
    fn wrong_algorithms_are_rejected() {
        let (_, auth) = prod();
        let claims = good_claims("alg");
        let none = raw(r#"{"alg":"none","typ":"JWT"}"#, &claims, b"");
        let rs256 = raw(r#"{"alg":"RS256","typ":"JWT"}"#, &claims, &[1u8; 256]);
        let hs384 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign");
        for token in [none, rs256, hs384] {
            let err = auth.authenticate(Some(&bearer(&token))).unwrap_err();
            assert_eq!(
                err,
                AuthError::InvalidToken(TokenDefect::AlgorithmNotAllowed)
            );
            assert_eq!(
                err.to_string(),
                "unauthorized: token signing algorithm is not allowed"
            );
        }
        // None of them consumed the jti.
        assert!(check(&auth, &claims).is_ok());
    }

    #[test]
    fn bad_signature_and_malformed_tokens_are_rejected() {
        let (_, auth) = prod();
        let forged = hs256("not-the-secret", &good_claims("f"));
        assert_eq!(
            auth.authenticate(Some(&bearer(&forged))).unwrap_err(),
            AuthError::InvalidToken(TokenDefect::InvalidSignature)
        );
        let err = auth.authenticate(Some("Bearer abc.def")).unwrap_err();
        assert_eq!(err.to_string(), "unauthorized: token is malformed");
    }

    #[test]
    fn expired_token_is_rejected_by_the_injected_clock() {
        let (clock, auth) = prod();
        let exp = start().timestamp() + 600;
        let claims = with("e", "exp", json!(exp));
        let header = bearer(&hs256(SECRET, &claims));
        clock.set(DateTime::from_timestamp(exp, 0).expect("time"));
        let err = auth.authenticate(Some(&header)).unwrap_err();
        assert_eq!(err, AuthError::Expired);
        assert_eq!(err.to_string(), "unauthorized: expired token");
        clock.set(DateTime::from_timestamp(exp - 1, 0).expect("time"));
        assert!(auth.authenticate(Some(&header)).is_ok());
    }

    #[test]
    fn not_yet_valid_token_is_rejected() {
        let (_, auth) = prod();
        let claims = with("n", "nbf", json!(start().timestamp() + 1));
        assert_eq!(
            check(&auth, &claims).unwrap_err(),
            AuthError::InvalidToken(TokenDefect::NotYetValid)
        );
    }

    #[test]
    fn issued_at_more_than_five_seconds_ahead_is_rejected() {
        let (_, auth) = prod();
        let now = start().timestamp();
        assert!(check(&auth, &with("i5", "iat", json!(now + 5))).is_ok());
        let err = check(&auth, &with("i6", "iat", json!(now + 6))).unwrap_err();
        assert_eq!(err, AuthError::InvalidIssuedAt);
        assert_eq!(err.to_string(), "unauthorized: invalid issued-at");
        // The rejected token did not consume its jti.
        assert!(check(&auth, &good_claims("i6")).is_ok());
    }

    #[test]
    fn tokens_living_longer_than_the_maximum_are_rejected() {
        let (_, auth) = prod();
        let now = start().timestamp();
        // The review's token: valid for ten years.
        let ten_years = with("long", "exp", json!(now + 10 * 365 * 86_400));
        let err = check(&auth, &ten_years).unwrap_err();
        assert_eq!(err, AuthError::LifetimeTooLong { max_seconds: 3600 });
        assert_eq!(
            err.to_string(),
            "unauthorized: token lifetime (exp - iat) exceeds the maximum of 3600s"
        );
        // The limit is exp - iat, inclusive: iat = now - 60, so exp = now + 3540 is 1 h.
        assert!(check(&auth, &with("edge", "exp", json!(now + 3540))).is_ok());
        assert_eq!(
            check(&auth, &with("over", "exp", json!(now + 3541))).unwrap_err(),
            AuthError::LifetimeTooLong { max_seconds: 3600 }
        );
        // A refused token does not use up its jti, and nothing of it is cached.
        assert!(check(&auth, &good_claims("long")).is_ok());
        // The maximum is configurable.
        let clock = Arc::new(ManualClock::new(start()));
        let config = AuthConfig {
            max_token_lifetime: Duration::from_secs(24 * 3600),
            ..AuthConfig::with_secret(SECRET)
        };
        let relaxed = ClientAuthenticator::new(&config, clock);
        assert!(check(&relaxed, &with("day", "exp", json!(now + 20 * 3600))).is_ok());
        assert_eq!(
            check(&relaxed, &ten_years).unwrap_err(),
            AuthError::LifetimeTooLong {
                max_seconds: 86_400
            }
        );
    }

    #[test]
    fn each_missing_claim_has_its_message() {
        let (_, auth) = prod();
        let cases = [
            ("client_id", "unauthorized: missing client_id claim"),
            ("iss", "unauthorized: missing iss claim"),
            ("aud", "unauthorized: missing aud claim"),
            ("exp", "unauthorized: missing exp claim"),
            ("iat", "unauthorized: missing iat claim"),
            ("jti", "unauthorized: missing jti claim"),
        ];
        for (claim, message) in cases {
            let err = check(&auth, &without(&format!("m-{claim}"), claim)).unwrap_err();
            assert_eq!(err.to_string(), message, "{claim}");
            let blank = if claim == "exp" || claim == "iat" {
                Value::Null
            } else {
                json!(" ")
            };
            let err = check(&auth, &with(&format!("b-{claim}"), claim, blank)).unwrap_err();
            assert_eq!(err.to_string(), message, "blank {claim}");
        }
        let err = check(&auth, &with("empty-list", "aud", json!([]))).unwrap_err();
        assert_eq!(err, AuthError::MissingAudience);
        // §11 item 5: an empty client_id.
        let err = check(&auth, &with("empty-client", "client_id", json!(""))).unwrap_err();
        assert_eq!(err, AuthError::MissingClientId);
    }

    #[test]
    fn wrong_issuer_and_audience_are_rejected() {
        let (_, auth) = prod();
        let err = check(&auth, &with("wi", "iss", json!("someone-else"))).unwrap_err();
        assert_eq!(err.to_string(), "unauthorized: invalid issuer");
        let err = check(&auth, &with("wa", "aud", json!("traforato-internal"))).unwrap_err();
        assert_eq!(err.to_string(), "unauthorized: invalid audience");
        let err = check(&auth, &with("wl", "aud", json!(["a", "b"]))).unwrap_err();
        assert_eq!(err, AuthError::InvalidAudience);
    }

    #[test]
    fn audience_may_be_a_list() {
        let (_, auth) = prod();
        let claims = with("list", "aud", json!(["other", "traforato-api"]));
        assert_eq!(check(&auth, &claims).expect("valid").client_id, "client-a");
    }

    #[test]
    fn empty_configured_issuer_and_audience_check_presence_only() {
        let clock = Arc::new(ManualClock::new(start()));
        let config = AuthConfig {
            secret: SECRET.to_string(),
            issuer: String::new(),
            audience: " ".to_string(),
            ..AuthConfig::default()
        };
        let auth = ClientAuthenticator::new(&config, clock);
        let claims = with("p", "iss", json!("anyone"));
        let mut claims = claims;
        claims["aud"] = json!("anything");
        assert!(check(&auth, &claims).is_ok());
        assert_eq!(
            check(&auth, &without("p2", "iss")).unwrap_err(),
            AuthError::MissingIssuer
        );
    }

    #[test]
    fn the_secret_is_trimmed_for_the_key() {
        let clock = Arc::new(ManualClock::new(start()));
        let auth = ClientAuthenticator::new(&AuthConfig::with_secret("secret\n"), clock);
        assert!(check(&auth, &good_claims("t")).is_ok());
    }

    #[test]
    fn minted_tokens_authenticate_once() {
        let (clock, auth) = prod();
        let token = mint_client_token(
            " secret ",
            "client-z",
            "traforato",
            "traforato-api",
            Duration::from_secs(300),
            clock.now(),
        );
        let header = bearer(&token);
        assert_eq!(
            auth.authenticate(Some(&header)).expect("valid").client_id,
            "client-z"
        );
        assert!(matches!(
            auth.authenticate(Some(&header)),
            Err(AuthError::Replay(_))
        ));
        let second = mint_client_token(
            SECRET,
            "client-z",
            "traforato",
            "traforato-api",
            Duration::from_secs(300),
            clock.now(),
        );
        assert_ne!(second, token, "each token has a fresh jti");
        assert!(auth.authenticate(Some(&bearer(&second))).is_ok());

        // It expires after its ttl by the service clock.
        let third = mint_client_token(
            SECRET,
            "client-z",
            "traforato",
            "traforato-api",
            Duration::from_secs(300),
            clock.now(),
        );
        clock.advance(Duration::from_secs(300));
        assert_eq!(
            auth.authenticate(Some(&bearer(&third))).unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn replay_entries_are_freed_after_expiry() {
        let (clock, auth) = prod();
        for i in 0..3 {
            assert!(check(&auth, &good_claims(&format!("r{i}"))).is_ok());
        }
        assert_eq!(auth.replay.len(), 3);
        clock.advance(Duration::from_secs(600));
        auth.replay.purge_expired(clock.now());
        assert!(auth.replay.is_empty());
    }

    #[test]
    fn errors_and_debug_never_contain_the_token_or_secret() {
        let clock = Arc::new(ManualClock::new(start()));
        let shown = format!(
            "{:?}",
            ClientAuthenticator::new(&AuthConfig::with_secret("hunter2-top"), clock)
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        let (_, auth) = prod();
        let forged = hs256("other", &good_claims("leak"));
        let err = auth.authenticate(Some(&bearer(&forged))).unwrap_err();
        assert!(!err.to_string().contains(&forged));
    }
}
