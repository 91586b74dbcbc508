//! Wire types shared by the server shells and the client: JSON request and response bodies.
//!
//! Field names are the HTTP contract. Everything here is plain data with serde derives; no
//! behaviour lives here except small parsing helpers for query values.

mod exec;
mod files;
mod internal;
mod sandbox;
pub mod timestamp;

pub use exec::*;
pub use files::*;
pub use internal::*;
pub use sandbox::*;

use serde::{Deserialize, Serialize};

/// The body of every error the services produce: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The message.
    pub error: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    /// Always `ok`.
    pub status: String,
}

/// Parses a boolean query value the way the prototype did (Go's `strconv.ParseBool`):
/// `1 t T TRUE true True 0 f F FALSE false False`; empty or absent is `false`.
pub fn parse_query_bool(raw: Option<&str>) -> Option<bool> {
    match raw.map(str::trim).unwrap_or("") {
        "" => Some(false),
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_bools() {
        assert_eq!(parse_query_bool(None), Some(false));
        assert_eq!(parse_query_bool(Some("True")), Some(true));
        assert_eq!(parse_query_bool(Some("0")), Some(false));
        assert_eq!(parse_query_bool(Some("yes")), None);
    }
}
