//! RFC 3339 UTC timestamps as the contract writes them: `Z` suffix, fractional seconds only
//! when non-zero.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// Formats a timestamp, e.g. `2026-02-25T12:00:00Z`.
pub fn format(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Formats with whole seconds, e.g. for the availability text.
pub fn format_secs(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// serde `serialize_with` for `DateTime<Utc>`.
pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(ts))
}

/// serde `deserialize_with` for `DateTime<Utc>`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

/// The same for `Option<DateTime<Utc>>`.
pub mod option {
    use super::*;

    /// serde `serialize_with`.
    pub fn serialize<S: Serializer>(ts: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match ts {
            Some(t) => s.serialize_str(&super::format(t)),
            None => s.serialize_none(),
        }
    }

    /// serde `deserialize_with`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => DateTime::parse_from_rfc3339(&s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    #[test]
    fn formats() {
        let t = chrono::Utc.with_ymd_and_hms(2026, 2, 25, 12, 0, 0).unwrap();
        assert_eq!(super::format(&t), "2026-02-25T12:00:00Z");
        let t = t + chrono::Duration::milliseconds(10);
        assert_eq!(super::format(&t), "2026-02-25T12:00:00.010Z");
        assert_eq!(super::format_secs(&t), "2026-02-25T12:00:00Z");
    }
}
