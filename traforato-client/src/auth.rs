//! Credentials: none (dev mode), a static bearer token, or a provider asked for a fresh token
//! before every HTTP request, including every redirect hop.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::{BoxError, ClientError};

/// The future a [`TokenProvider`] returns.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send + 'a>>;

/// Produces a bearer token for one HTTP request.
///
/// Called once per request **and once per redirect hop**, because a traforato service in prod
/// mode keeps a replay cache of token ids: every request needs a token it has not seen.
///
/// Any `Fn() -> Result<String, BoxError>` closure is a provider. Implement the trait directly
/// for a provider that has to await something (a token service, a refresh):
///
/// ```
/// use traforato_client::{BoxError, TokenFuture, TokenProvider};
///
/// struct FromVault;
///
/// impl TokenProvider for FromVault {
///     fn token(&self) -> TokenFuture<'_> {
///         Box::pin(async { Ok::<_, BoxError>("token-from-somewhere".to_string()) })
///     }
/// }
/// ```
pub trait TokenProvider: Send + Sync + 'static {
    /// A token to put after `Bearer `.
    fn token(&self) -> TokenFuture<'_>;
}

impl<F> TokenProvider for F
where
    F: Fn() -> Result<String, BoxError> + Send + Sync + 'static,
{
    fn token(&self) -> TokenFuture<'_> {
        let result = self();
        Box::pin(async move { result })
    }
}

/// How the client authenticates.
#[derive(Clone, Default)]
pub(crate) enum Auth {
    /// No `Authorization` header: a dev-mode deployment.
    #[default]
    None,
    /// The same token on every request.
    Static(String),
    /// A fresh token per request.
    Provider(Arc<dyn TokenProvider>),
}

impl Auth {
    /// The bearer token for the next request, if any.
    pub(crate) async fn bearer(&self) -> Result<Option<String>, ClientError> {
        match self {
            Auth::None => Ok(None),
            Auth::Static(t) => Ok(Some(t.clone())),
            Auth::Provider(p) => p.token().await.map(Some).map_err(ClientError::Token),
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a token.
        match self {
            Auth::None => f.write_str("None"),
            Auth::Static(_) => f.write_str("Static(..)"),
            Auth::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn closures_are_providers_called_each_time() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let auth = Auth::Provider(Arc::new(move || -> Result<String, BoxError> {
            Ok(format!("t{}", n2.fetch_add(1, Ordering::SeqCst)))
        }));
        assert_eq!(auth.bearer().await.unwrap().as_deref(), Some("t0"));
        assert_eq!(auth.bearer().await.unwrap().as_deref(), Some("t1"));
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn provider_failure_is_a_token_error() {
        let auth = Auth::Provider(Arc::new(|| -> Result<String, BoxError> {
            Err("vault sealed".into())
        }));
        let err = auth.bearer().await.unwrap_err();
        assert!(matches!(err, ClientError::Token(ref e) if e.to_string() == "vault sealed"));
    }

    #[test]
    fn debug_hides_tokens() {
        let s = format!("{:?}", Auth::Static("secret".into()));
        assert!(!s.contains("secret"));
    }
}
