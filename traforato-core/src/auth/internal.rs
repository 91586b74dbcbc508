//! Internal (worker -> broker) tokens: the worker signs each call with a fresh short-lived
//! token for `aud=traforato-internal`, `sub=<worker_id>`; the broker verifies it per route.
//! Both use the internal key ([`AuthConfig`] derives it; never the client key).

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::EncodingKey;

use super::claims::{
    fresh_jti, lifetime_exceeds, non_blank, sign, Hs256Decoder, MintClaims, TokenDefect,
};
use super::replay::ReplayCache;
use super::{AuthConfig, INTERNAL_AUDIENCE};
use crate::clock::Clock;

/// The lifetime of an internal token.
pub const INTERNAL_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(45);

/// How far in the future `iat` may be.
const IAT_SKEW: chrono::Duration = chrono::Duration::seconds(5);

/// Why an internal call was refused. Callers answer 401 with their route's own message
/// (`unauthorized registration`, ...), never with this text, and may log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InternalAuthError {
    /// No `Authorization` header, or a blank one.
    #[error("missing authorization")]
    MissingAuthorization,
    /// The header does not start with `Bearer `.
    #[error("invalid authorization")]
    InvalidAuthorization,
    /// `Bearer ` followed by nothing. Kept for parity with the prototype's check order; as the
    /// whole header is trimmed first, a blank token reports `InvalidAuthorization` instead.
    #[error("empty bearer token")]
    EmptyBearerToken,
    /// Bad shape, algorithm or signature, or `nbf` in the future.
    #[error("invalid internal token: {0}")]
    InvalidToken(#[from] TokenDefect),
    /// `aud` does not contain `traforato-internal`.
    #[error("invalid internal token: audience")]
    InvalidAudience,
    /// `exp` absent.
    #[error("invalid internal token: missing exp claim")]
    MissingExpiry,
    /// `exp` at or before now.
    #[error("invalid internal token: expired")]
    Expired,
    /// An issuer is configured and `iss` differs from it (or is absent).
    #[error("invalid internal token: issuer")]
    InvalidIssuer,
    /// The trimmed `sub` is not the worker id of the route.
    #[error("internal token subject does not match the worker")]
    SubjectMismatch,
    /// `jti` absent or blank.
    #[error("internal token has no jti")]
    MissingTokenId,
    /// `iat` absent.
    #[error("internal token has no iat")]
    MissingIssuedAt,
    /// `iat` more than 5 s after now.
    #[error("internal token issued in the future")]
    InvalidIssuedAt,
    /// `exp - iat` is longer than the configured maximum token lifetime.
    #[error("internal token lifetime exceeds the maximum")]
    LifetimeTooLong,
    /// The broker already accepted this `jti`.
    #[error("internal token replayed")]
    Replay,
}

/// Mints the worker's internal tokens. Disabled (no header sent) when no secret is set.
pub struct InternalTokenSigner {
    enabled: bool,
    key: EncodingKey,
    issuer: String,
    clock: Arc<dyn Clock>,
}

impl InternalTokenSigner {
    /// A signer for `config`, with time from `clock`.
    pub fn new(config: &AuthConfig, clock: Arc<dyn Clock>) -> Self {
        let key = config.internal_key();
        Self {
            enabled: !key.is_empty(),
            key: EncodingKey::from_secret(&key),
            issuer: config.issuer().to_string(),
            clock,
        }
    }

    /// False when the secret is empty: internal calls then carry no token.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// A fresh token for one call by `worker_id`: HS256, `sub` = worker id, `iss` = the
    /// issuer (left out when empty), `aud` = `traforato-internal`, `iat` = now,
    /// `exp` = now + 45 s (whole seconds), `jti` = a new ULID.
    pub fn mint(&self, worker_id: &str) -> String {
        let now = self.clock.now();
        let issued_at = now.timestamp();
        let claims = MintClaims {
            client_id: None,
            sub: Some(worker_id),
            iss: Some(self.issuer.as_str()).filter(|iss| !iss.is_empty()),
            aud: Some(INTERNAL_AUDIENCE),
            iat: issued_at,
            exp: issued_at + INTERNAL_TOKEN_TTL.as_secs() as i64,
            jti: fresh_jti(now),
        };
        sign(&self.key, &claims)
    }

    /// The `Authorization` header value for one call (`Bearer <token>`), or `None` when
    /// internal auth is disabled.
    pub fn authorization_header(&self, worker_id: &str) -> Option<String> {
        self.enabled
            .then(|| format!("Bearer {}", self.mint(worker_id)))
    }
}

impl fmt::Debug for InternalTokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InternalTokenSigner")
            .field("enabled", &self.enabled)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Verifies internal tokens at the broker. One instance (and so one replay cache) serves
/// every internal route. Disabled, accepting everything, when no secret is set.
pub struct InternalVerifier {
    enabled: bool,
    issuer: String,
    max_lifetime: std::time::Duration,
    decoder: Hs256Decoder,
    replay: ReplayCache,
    clock: Arc<dyn Clock>,
}

impl InternalVerifier {
    /// A verifier for `config`, with time from `clock`.
    pub fn new(config: &AuthConfig, clock: Arc<dyn Clock>) -> Self {
        let key = config.internal_key();
        Self {
            enabled: !key.is_empty(),
            issuer: config.issuer().to_string(),
            max_lifetime: config.max_token_lifetime,
            decoder: Hs256Decoder::new(&key),
            replay: ReplayCache::new(),
            clock,
        }
    }

    /// False when the secret is empty: [`InternalVerifier::verify`] then accepts every call.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Checks the `Authorization` header of a call on `/internal/workers/{path_worker_id}/...`.
    ///
    /// Order: header present (after trimming), `Bearer ` prefix, non-empty token; HS256 shape
    /// and signature and `nbf`; `aud` contains `traforato-internal`; `exp` present and after
    /// now; `iss` equal to the configured issuer when there is one; trimmed `sub` equal to
    /// the path's worker id; `jti` present; `iat` present and at most 5 s ahead; `exp - iat`
    /// at most the configured maximum lifetime; and last the
    /// replay guard, so a token refused for any other reason does not use up its `jti`.
    pub fn verify(
        &self,
        authorization_header: Option<&str>,
        path_worker_id: &str,
    ) -> Result<(), InternalAuthError> {
        if !self.enabled {
            return Ok(());
        }
        let header = authorization_header.unwrap_or_default().trim();
        if header.is_empty() {
            return Err(InternalAuthError::MissingAuthorization);
        }
        let token = header
            .strip_prefix("Bearer ")
            .ok_or(InternalAuthError::InvalidAuthorization)?
            .trim();
        if token.is_empty() {
            return Err(InternalAuthError::EmptyBearerToken);
        }

        let now = self.clock.now();
        let claims = self.decoder.decode(token, now)?;
        if !claims.aud.iter().any(|aud| aud == INTERNAL_AUDIENCE) {
            return Err(InternalAuthError::InvalidAudience);
        }
        let expires_at = claims.exp.ok_or(InternalAuthError::MissingExpiry)?;
        if expires_at <= now {
            return Err(InternalAuthError::Expired);
        }
        if !self.issuer.is_empty() && claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(InternalAuthError::InvalidIssuer);
        }

        let subject = claims.sub.as_deref().unwrap_or_default().trim();
        if subject.is_empty() || subject != path_worker_id {
            return Err(InternalAuthError::SubjectMismatch);
        }
        let jti = non_blank(&claims.jti).ok_or(InternalAuthError::MissingTokenId)?;
        let issued_at = claims.iat.ok_or(InternalAuthError::MissingIssuedAt)?;
        if issued_at > now + IAT_SKEW {
            return Err(InternalAuthError::InvalidIssuedAt);
        }
        if lifetime_exceeds(issued_at, expires_at, self.max_lifetime) {
            return Err(InternalAuthError::LifetimeTooLong);
        }
        if !self.replay.check_and_record(jti, expires_at, now) {
            return Err(InternalAuthError::Replay);
        }
        Ok(())
    }
}

impl fmt::Debug for InternalVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InternalVerifier")
            .field("enabled", &self.enabled)
            .field("issuer", &self.issuer)
            .field("replay_cache_entries", &self.replay.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use serde_json::{json, Value};

    use super::super::claims::test_tokens::{hs256, hs256_key, raw};
    use super::*;
    use crate::clock::ManualClock;

    const SECRET: &str = "secret";

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("time")
    }

    fn setup() -> (Arc<ManualClock>, InternalTokenSigner, InternalVerifier) {
        let clock = Arc::new(ManualClock::new(start()));
        let config = AuthConfig::with_secret(SECRET);
        let signer = InternalTokenSigner::new(&config, clock.clone());
        let verifier = InternalVerifier::new(&config, clock.clone());
        (clock, signer, verifier)
    }

    /// The internal claims of §11's tests.
    fn claims(jti: &str) -> Value {
        let now = start().timestamp();
        json!({
            "aud": ["traforato-internal"],
            "iss": "traforato",
            "sub": "worker_a",
            "exp": now + 45,
            "iat": now,
            "jti": jti,
        })
    }

    /// The internal key of `SECRET`.
    fn internal_key() -> Vec<u8> {
        AuthConfig::with_secret(SECRET).internal_key()
    }

    /// A token signed with the internal key, as a worker's would be.
    fn internal_token(claims: &Value) -> String {
        hs256_key(&internal_key(), claims)
    }

    fn header_for(claims: &Value) -> String {
        format!("Bearer {}", internal_token(claims))
    }

    fn verify(verifier: &InternalVerifier, claims: &Value) -> Result<(), InternalAuthError> {
        verifier.verify(Some(&header_for(claims)), "worker_a")
    }

    #[test]
    fn signed_tokens_verify_for_their_worker_once() {
        let (_, signer, verifier) = setup();
        assert!(signer.is_enabled() && verifier.is_enabled());
        let header = signer.authorization_header("worker_a").expect("enabled");
        assert!(header.starts_with("Bearer "));
        assert_eq!(verifier.verify(Some(&header), "worker_a"), Ok(()));
        assert_eq!(
            verifier.verify(Some(&header), "worker_a"),
            Err(InternalAuthError::Replay)
        );
        let next = signer.authorization_header("worker_a").expect("enabled");
        assert_ne!(next, header);
        assert_eq!(verifier.verify(Some(&next), "worker_a"), Ok(()));
    }

    #[test]
    fn minted_token_has_the_documented_claims() {
        let (clock, signer, _) = setup();
        clock.advance(Duration::from_millis(700));
        let token = signer.mint("worker_a");
        let decoded = Hs256Decoder::new(&internal_key())
            .decode(&token, clock.now())
            .expect("valid");
        assert_eq!(decoded.sub.as_deref(), Some("worker_a"));
        assert_eq!(decoded.iss.as_deref(), Some("traforato"));
        assert_eq!(decoded.aud, vec![INTERNAL_AUDIENCE.to_string()]);
        assert_eq!(decoded.iat, Some(start()));
        assert_eq!(decoded.exp, Some(start() + chrono::Duration::seconds(45)));
        let jti = decoded.jti.expect("jti");
        assert!(jti.parse::<ulid::Ulid>().is_ok(), "{jti}");
        assert!(decoded.client_id.is_none());
        // `aud` is a single string on the wire.
        let payload = token.split('.').nth(1).expect("payload");
        let payload =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .expect("base64");
        let payload: Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(payload["aud"], json!("traforato-internal"));
    }

    #[test]
    fn empty_issuer_is_left_out_and_not_checked() {
        let clock = Arc::new(ManualClock::new(start()));
        let config = AuthConfig {
            secret: SECRET.to_string(),
            issuer: String::new(),
            audience: String::new(),
            ..AuthConfig::default()
        };
        let signer = InternalTokenSigner::new(&config, clock.clone());
        let verifier = InternalVerifier::new(&config, clock.clone());
        let token = signer.mint("worker_a");
        let decoded = Hs256Decoder::new(&internal_key())
            .decode(&token, clock.now())
            .expect("valid");
        assert!(decoded.iss.is_none());
        assert_eq!(
            verifier.verify(Some(&format!("Bearer {token}")), "worker_a"),
            Ok(())
        );
    }

    #[test]
    fn a_token_signed_with_the_client_secret_is_not_an_internal_token() {
        // Whoever can mint client tokens holds the client secret: an internal-looking token
        // signed with it must not pass, or they could register a fake worker.
        let (_, signer, verifier) = setup();
        let forged = format!("Bearer {}", hs256(SECRET, &claims("client-key")));
        assert_eq!(
            verifier.verify(Some(&forged), "worker_a"),
            Err(InternalAuthError::InvalidToken(
                TokenDefect::InvalidSignature
            ))
        );
        // The worker's own tokens do not verify with the client key either.
        let minted = signer.mint("worker_a");
        assert_eq!(
            Hs256Decoder::new(SECRET.as_bytes())
                .decode(&minted, start())
                .unwrap_err(),
            TokenDefect::InvalidSignature
        );
    }

    #[test]
    fn a_separate_internal_secret_gives_its_own_key() {
        let clock = Arc::new(ManualClock::new(start()));
        let separate = AuthConfig {
            internal_secret: "internal-only".to_string(),
            ..AuthConfig::with_secret(SECRET)
        };
        let signer = InternalTokenSigner::new(&separate, clock.clone());
        let verifier = InternalVerifier::new(&separate, clock.clone());
        let header = signer.authorization_header("worker_a").expect("enabled");
        assert_eq!(verifier.verify(Some(&header), "worker_a"), Ok(()));
        // A broker keyed from the client secret alone refuses it, and the other way round.
        let (_, derived_signer, derived_verifier) = setup();
        let header = signer.authorization_header("worker_a").expect("enabled");
        assert!(matches!(
            derived_verifier.verify(Some(&header), "worker_a"),
            Err(InternalAuthError::InvalidToken(_))
        ));
        let header = derived_signer
            .authorization_header("worker_a")
            .expect("enabled");
        assert!(matches!(
            verifier.verify(Some(&header), "worker_a"),
            Err(InternalAuthError::InvalidToken(_))
        ));
        // An internal secret alone turns internal auth on (the client side stays dev).
        let internal_only = AuthConfig {
            internal_secret: "internal-only".to_string(),
            ..AuthConfig::default()
        };
        assert!(InternalVerifier::new(&internal_only, clock.clone()).is_enabled());
        assert!(!InternalVerifier::new(&AuthConfig::default(), clock).is_enabled());
    }

    #[test]
    fn long_lived_internal_tokens_are_rejected() {
        let (_, _, verifier) = setup();
        let mut long = claims("long");
        long["exp"] = json!(start().timestamp() + 10 * 365 * 86_400);
        assert_eq!(
            verify(&verifier, &long),
            Err(InternalAuthError::LifetimeTooLong)
        );
        assert_eq!(verifier.replay.len(), 0);
        let mut edge = claims("edge");
        edge["exp"] = json!(start().timestamp() + 3600);
        assert_eq!(verify(&verifier, &edge), Ok(()));
    }

    #[test]
    fn header_shape_errors() {
        let (_, _, verifier) = setup();
        let token = internal_token(&claims("h"));
        let cases = [
            (None, InternalAuthError::MissingAuthorization),
            (
                Some("   ".to_string()),
                InternalAuthError::MissingAuthorization,
            ),
            (Some(token.clone()), InternalAuthError::InvalidAuthorization),
            (
                Some(format!("bearer {token}")),
                InternalAuthError::InvalidAuthorization,
            ),
            // Trimmed to "Bearer", which lacks the prefix "Bearer ".
            (
                Some("Bearer  ".to_string()),
                InternalAuthError::InvalidAuthorization,
            ),
            (
                Some("Bearer \t ".to_string()),
                InternalAuthError::InvalidAuthorization,
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(
                verifier.verify(header.as_deref(), "worker_a"),
                Err(expected),
                "{header:?}"
            );
        }
        assert_eq!(
            verifier.verify(Some(" Bearer \u{3000}\u{3000}x"), "worker_a"),
            Err(InternalAuthError::InvalidToken(TokenDefect::Malformed))
        );
    }

    #[test]
    fn wrong_subject_is_rejected() {
        let (_, signer, verifier) = setup();
        let mut wrong = claims("s");
        wrong["sub"] = json!("worker_b");
        assert_eq!(
            verify(&verifier, &wrong),
            Err(InternalAuthError::SubjectMismatch)
        );
        let header = signer.authorization_header("worker_b").expect("enabled");
        assert_eq!(
            verifier.verify(Some(&header), "worker_a"),
            Err(InternalAuthError::SubjectMismatch)
        );
        let mut padded = claims("padded");
        padded["sub"] = json!(" worker_a ");
        assert_eq!(verify(&verifier, &padded), Ok(()));
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let (_, _, verifier) = setup();
        let mut api = claims("a");
        api["aud"] = json!("traforato-api");
        assert_eq!(
            verify(&verifier, &api),
            Err(InternalAuthError::InvalidAudience)
        );
        let mut none = claims("a2");
        none.as_object_mut().expect("object").remove("aud");
        assert_eq!(
            verify(&verifier, &none),
            Err(InternalAuthError::InvalidAudience)
        );
        let mut list = claims("a3");
        list["aud"] = json!(["x", "traforato-internal"]);
        assert_eq!(verify(&verifier, &list), Ok(()));
    }

    #[test]
    fn library_level_failures() {
        let (clock, _, verifier) = setup();
        let forged = format!("Bearer {}", hs256("other", &claims("f")));
        assert_eq!(
            verifier.verify(Some(&forged), "worker_a"),
            Err(InternalAuthError::InvalidToken(
                TokenDefect::InvalidSignature
            ))
        );
        let none = format!("Bearer {}", raw(r#"{"alg":"none"}"#, &claims("n"), b""));
        assert_eq!(
            verifier.verify(Some(&none), "worker_a"),
            Err(InternalAuthError::InvalidToken(
                TokenDefect::AlgorithmNotAllowed
            ))
        );
        let mut no_exp = claims("e");
        no_exp.as_object_mut().expect("object").remove("exp");
        assert_eq!(
            verify(&verifier, &no_exp),
            Err(InternalAuthError::MissingExpiry)
        );
        let mut wrong_iss = claims("i");
        wrong_iss["iss"] = json!("elsewhere");
        assert_eq!(
            verify(&verifier, &wrong_iss),
            Err(InternalAuthError::InvalidIssuer)
        );
        let mut no_iss = claims("i2");
        no_iss.as_object_mut().expect("object").remove("iss");
        assert_eq!(
            verify(&verifier, &no_iss),
            Err(InternalAuthError::InvalidIssuer)
        );
        let mut nbf = claims("nbf");
        nbf["nbf"] = json!(start().timestamp() + 10);
        assert_eq!(
            verify(&verifier, &nbf),
            Err(InternalAuthError::InvalidToken(TokenDefect::NotYetValid))
        );

        let header = header_for(&claims("late"));
        clock.advance(Duration::from_secs(45));
        assert_eq!(
            verifier.verify(Some(&header), "worker_a"),
            Err(InternalAuthError::Expired)
        );
    }

    #[test]
    fn missing_jti_and_iat() {
        let (_, _, verifier) = setup();
        let mut no_jti = claims("");
        assert_eq!(
            verify(&verifier, &no_jti),
            Err(InternalAuthError::MissingTokenId)
        );
        no_jti.as_object_mut().expect("object").remove("jti");
        assert_eq!(
            verify(&verifier, &no_jti),
            Err(InternalAuthError::MissingTokenId)
        );
        let mut no_iat = claims("x");
        no_iat.as_object_mut().expect("object").remove("iat");
        assert_eq!(
            verify(&verifier, &no_iat),
            Err(InternalAuthError::MissingIssuedAt)
        );
    }

    #[test]
    fn future_issued_at_does_not_consume_the_jti() {
        let (_, _, verifier) = setup();
        let mut future = claims("fut");
        future["iat"] = json!(start().timestamp() + 6);
        assert_eq!(
            verify(&verifier, &future),
            Err(InternalAuthError::InvalidIssuedAt)
        );
        assert_eq!(
            verify(&verifier, &future),
            Err(InternalAuthError::InvalidIssuedAt)
        );
        // The same jti in a well-formed token is still accepted, once.
        assert_eq!(verify(&verifier, &claims("fut")), Ok(()));
        assert_eq!(
            verify(&verifier, &claims("fut")),
            Err(InternalAuthError::Replay)
        );
        let mut edge = claims("edge");
        edge["iat"] = json!(start().timestamp() + 5);
        assert_eq!(verify(&verifier, &edge), Ok(()));
    }

    #[test]
    fn replay_cache_is_freed_after_expiry() {
        let (clock, signer, verifier) = setup();
        for _ in 0..4 {
            let header = signer.authorization_header("worker_a").expect("enabled");
            assert_eq!(verifier.verify(Some(&header), "worker_a"), Ok(()));
        }
        assert_eq!(verifier.replay.len(), 4);
        clock.advance(INTERNAL_TOKEN_TTL);
        let header = signer.authorization_header("worker_a").expect("enabled");
        assert_eq!(verifier.verify(Some(&header), "worker_a"), Ok(()));
        assert_eq!(
            verifier.replay.len(),
            1,
            "the four expired entries were dropped"
        );
    }

    #[test]
    fn disabled_when_the_secret_is_empty() {
        let clock = Arc::new(ManualClock::new(start()));
        let config = AuthConfig::with_secret(" \n");
        let signer = InternalTokenSigner::new(&config, clock.clone());
        let verifier = InternalVerifier::new(&config, clock);
        assert!(!signer.is_enabled() && !verifier.is_enabled());
        assert_eq!(signer.authorization_header("worker_a"), None);
        assert_eq!(verifier.verify(None, "worker_a"), Ok(()));
        assert_eq!(verifier.verify(Some("garbage"), "worker_b"), Ok(()));
    }

    #[test]
    fn trimmed_secret_is_the_same_key_on_both_sides() {
        let clock = Arc::new(ManualClock::new(start()));
        let signer = InternalTokenSigner::new(&AuthConfig::with_secret("secret\n"), clock.clone());
        let verifier = InternalVerifier::new(&AuthConfig::with_secret("  secret"), clock);
        let header = signer.authorization_header("worker_a").expect("enabled");
        assert_eq!(verifier.verify(Some(&header), "worker_a"), Ok(()));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let clock = Arc::new(ManualClock::new(start()));
        let config = AuthConfig::with_secret("hunter2-top");
        let shown = format!(
            "{:?} {:?}",
            InternalTokenSigner::new(&config, clock.clone()),
            InternalVerifier::new(&config, clock)
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[cfg(test)]
mod properties {
    //! Property tests: minted internal tokens presented in random order, by random workers,
    //! as the clock moves.

    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    use super::*;
    use crate::clock::ManualClock;

    const WORKERS: [&str; 2] = ["worker_a", "worker_b"];

    #[derive(Debug, Clone)]
    enum Op {
        Mint(usize),
        /// Present the n-th minted token (modulo how many there are) on a worker's route.
        Present(usize, usize),
        AdvanceMs(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0..WORKERS.len()).prop_map(Op::Mint),
            5 => (0..64usize, 0..WORKERS.len()).prop_map(|(n, w)| Op::Present(n, w)),
            2 => (0u64..20_000).prop_map(Op::AdvanceMs),
        ]
    }

    /// A minted token: its header, its worker, its expiry, and whether the broker took it.
    struct Minted {
        header: String,
        worker: usize,
        expires_at: DateTime<Utc>,
        used: bool,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A token is accepted once, on its worker's routes, until it expires; a second use is
        /// a replay; a refusal for another reason does not use it up.
        #[test]
        fn internal_tokens_verify_once_within_their_lifetime(
            ops in prop::collection::vec(op(), 1..50),
        ) {
            let start = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
            let clock = Arc::new(ManualClock::new(start));
            let config = AuthConfig::with_secret("secret");
            let signer = InternalTokenSigner::new(&config, clock.clone());
            let verifier = InternalVerifier::new(&config, clock.clone());
            let ttl = chrono::Duration::from_std(INTERNAL_TOKEN_TTL).expect("ttl");
            let mut minted: Vec<Minted> = Vec::new();
            for op in ops {
                match op {
                    Op::Mint(worker) => {
                        let header = signer.authorization_header(WORKERS[worker]).expect("enabled");
                        // Whole seconds: `iat` is the current second.
                        let issued = DateTime::from_timestamp(clock.now().timestamp(), 0)
                            .expect("time");
                        minted.push(Minted {
                            header,
                            worker,
                            expires_at: issued + ttl,
                            used: false,
                        });
                    }
                    Op::Present(n, worker) => {
                        if minted.is_empty() {
                            continue;
                        }
                        let token = {
                            let len = minted.len();
                            &mut minted[n % len]
                        };
                        let expected = if token.expires_at <= clock.now() {
                            Err(InternalAuthError::Expired)
                        } else if token.worker != worker {
                            Err(InternalAuthError::SubjectMismatch)
                        } else if token.used {
                            Err(InternalAuthError::Replay)
                        } else {
                            Ok(())
                        };
                        let verified = verifier.verify(Some(&token.header), WORKERS[worker]);
                        prop_assert_eq!(verified, expected);
                        token.used |= expected.is_ok();
                    }
                    Op::AdvanceMs(ms) => clock.advance(Duration::from_millis(ms)),
                }
                // Only tokens still within their lifetime are remembered.
                let live = minted.iter().filter(|m| m.used && m.expires_at > clock.now()).count();
                prop_assert!(verifier.replay.len() >= live);
                prop_assert!(verifier.replay.len() <= minted.iter().filter(|m| m.used).count());
            }
        }
    }
}
