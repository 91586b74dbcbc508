//! Wire types shared by the server shells and the client: JSON request and response bodies.
//!
//! Field names are the HTTP contract. Everything here is plain data with serde derives; no
//! behaviour lives here but the `encoding` of bytes carried in JSON strings.

mod command;
mod exec;
mod files;
mod images;
mod internal;
mod network;
mod sandbox;
pub mod timestamp;

pub use command::*;
pub use exec::*;
pub use files::*;
pub use images::*;
pub use internal::*;
pub use network::*;
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
    /// The broker's: its instance id (a ULID chosen at start), by which workers notice a
    /// restarted broker within a probe and register again. Absent on workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

/// How the API carries bytes in a JSON string (`encoding` of file contents and exec input).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// The string is the text itself (bytes that are not UTF-8 read as U+FFFD).
    #[default]
    Utf8,
    /// Standard base64 with padding.
    Base64,
}

/// Why encoded content could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    /// An encoding other than `utf8`, `utf-8` or `base64`.
    #[error("encoding must be utf8 or base64")]
    Unknown,
    /// Content that is not base64.
    #[error("invalid base64 content")]
    InvalidBase64,
}

impl Encoding {
    /// The name in responses: `utf8` or `base64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Utf8 => "utf8",
            Self::Base64 => "base64",
        }
    }

    /// An encoding name, trimmed, in any case: `utf8` (or `utf-8`) or `base64`; `None` when
    /// blank (the field's default applies).
    pub fn parse(raw: &str) -> Result<Option<Self>, EncodingError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "utf8" | "utf-8" => Ok(Some(Self::Utf8)),
            "base64" => Ok(Some(Self::Base64)),
            _ => Err(EncodingError::Unknown),
        }
    }

    /// Decodes `data` carried in this encoding (base64: CR and LF are ignored).
    pub fn decode(self, data: &str) -> Result<Vec<u8>, EncodingError> {
        match self {
            Self::Utf8 => Ok(data.as_bytes().to_vec()),
            Self::Base64 => {
                use base64::Engine as _;
                let cleaned: Vec<u8> = data
                    .bytes()
                    .filter(|b| *b != b'\r' && *b != b'\n')
                    .collect();
                base64::engine::general_purpose::STANDARD
                    .decode(cleaned)
                    .map_err(|_| EncodingError::InvalidBase64)
            }
        }
    }

    /// Encodes `bytes` for a JSON string.
    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Self::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            Self::Base64 => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(bytes)
            }
        }
    }
}

/// Decodes `data` sent with the encoding named `encoding` (blank: `default`). The one decoder
/// of the API's `encoding` fields.
pub fn decode_encoded(
    data: &str,
    encoding: &str,
    default: Encoding,
) -> Result<Vec<u8>, EncodingError> {
    Encoding::parse(encoding)?.unwrap_or(default).decode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(Encoding::parse(" UTF-8 "), Ok(Some(Encoding::Utf8)));
        assert_eq!(Encoding::parse("Base64"), Ok(Some(Encoding::Base64)));
        assert_eq!(Encoding::parse(""), Ok(None));
        assert_eq!(Encoding::parse("latin1"), Err(EncodingError::Unknown));
        assert_eq!(
            decode_encoded("SGk=\r\n", "", Encoding::Base64).unwrap(),
            b"Hi".to_vec()
        );
        assert_eq!(
            decode_encoded("Hi", "utf8", Encoding::Base64).unwrap(),
            b"Hi"
        );
        assert_eq!(
            decode_encoded("!!!", "base64", Encoding::Utf8),
            Err(EncodingError::InvalidBase64)
        );
        assert_eq!(Encoding::Base64.encode(b"Hi"), "SGk=");
        assert_eq!(Encoding::Utf8.encode(b"a\xffb"), "a\u{fffd}b");
    }
}
