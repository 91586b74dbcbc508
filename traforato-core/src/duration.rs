//! Go-style durations (`30s`, `1h2m`, `1.5h`, `300ms`), the one parser of the services: the
//! worker YAML and flags, and the `wait` of a frames call, all read durations with it. (The
//! CLI's `--ttl` of `token mint` takes whole seconds, minutes, hours or days instead: `300`,
//! `5m`, `1d`.)

use std::time::Duration;

/// Why a Go-style duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration at all.
    #[error("invalid duration {0:?}")]
    Invalid(String),
    /// A number without a unit, e.g. `30` (write `30s`).
    #[error("missing unit in duration {0:?}")]
    MissingUnit(String),
    /// A unit other than `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`.
    #[error("unknown unit {unit:?} in duration {input:?}")]
    UnknownUnit {
        /// The unit.
        unit: String,
        /// The whole input.
        input: String,
    },
    /// A negative duration.
    #[error("negative duration {0:?}")]
    Negative(String),
    /// Too large.
    #[error("duration {0:?} is out of range")]
    Overflow(String),
}

/// Parses a Go duration string: a sequence of decimal numbers, each with an optional fraction
/// and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `30s`, `1h2m`, `1.5h`, `300ms`.
/// `0` is accepted; any other bare number is rejected; negative durations are rejected.
pub fn parse_duration(raw: &str) -> Result<Duration, DurationError> {
    let input = raw.trim();
    let invalid = || DurationError::Invalid(raw.to_string());
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let per_unit: u128 = match unit {
            "" => return Err(DurationError::MissingUnit(raw.to_string())),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_string(),
                    input: raw.to_string(),
                })
            }
        };
        let overflow = || DurationError::Overflow(raw.to_string());
        let whole: u128 = if int_part.is_empty() {
            0
        } else if int_part.len() > 30 {
            return Err(overflow());
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        // Digits past 18 cannot change the result by a whole nanosecond of any unit ≤ 1 h.
        let frac_digits = &frac_part[..frac_part.len().min(18)];
        let frac_nanos: u128 = if frac_digits.is_empty() {
            0
        } else {
            let value: u128 = frac_digits.parse().map_err(|_| invalid())?;
            value * per_unit / 10u128.pow(frac_digits.len() as u32)
        };
        total = whole
            .checked_mul(per_unit)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(overflow)?;
    }
    if negative && total != 0 {
        return Err(DurationError::Negative(raw.to_string()));
    }
    let nanos = u64::try_from(total).map_err(|_| DurationError::Overflow(raw.to_string()))?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("1h2m"), Duration::from_secs(3720));
        assert_eq!(d("300ms"), Duration::from_millis(300));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d(".5s"), Duration::from_millis(500));
        assert_eq!(d("2m3.25s"), Duration::from_millis(123_250));
        assert_eq!(d("10us"), Duration::from_micros(10));
        assert_eq!(d("10µs"), Duration::from_micros(10));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("-0s"), Duration::ZERO);
        assert_eq!(
            parse_duration("30"),
            Err(DurationError::MissingUnit("30".into()))
        );
        assert_eq!(
            parse_duration("1h30"),
            Err(DurationError::MissingUnit("1h30".into()))
        );
        assert!(matches!(
            parse_duration("5d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert_eq!(
            parse_duration("-1s"),
            Err(DurationError::Negative("-1s".into()))
        );
        assert!(matches!(parse_duration(""), Err(DurationError::Invalid(_))));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_duration("."),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }
}
