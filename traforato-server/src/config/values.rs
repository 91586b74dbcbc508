//! Typed values of the configuration, each parsed once by one function whether it comes from
//! a flag, a variable or the worker YAML: Go durations, byte sizes, "0 means automatic"
//! counts, log levels.

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tracing_subscriber::filter::LevelFilter;
use traforato_core::duration::{parse_duration, DurationError};

/// A Go-style duration (`30s`, `1h2m`, `1.5h`): a flag value or a YAML string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(GoDuration)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a count or size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a whole number `>= 0`.
    #[error("{0:?} is not a whole number >= 0 (0 means automatic)")]
    Count(String),
    /// Not a size (`100 MB`, `512KiB`, `1048576`).
    #[error("invalid size {0:?} (a number of bytes with an optional unit: K, M, G, T)")]
    Size(String),
    /// Not a log level.
    #[error("invalid log level {0:?} (debug, info, warn or error)")]
    LogLevel(String),
    /// Not a share of memory.
    #[error("invalid memory share {0:?} (a percentage in (0, 100] such as 90%, or a size)")]
    Share(String),
}

macro_rules! auto_count {
    ($(#[$meta:meta])* $name:ident($nonzero:ty, $int:ty)) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name(pub Option<$nonzero>);

        impl $name {
            /// The configured value, or `auto()` when it is automatic.
            pub fn or_else(self, auto: impl FnOnce() -> $int) -> $int {
                self.0.map(|n| n.get()).unwrap_or_else(auto)
            }
        }

        impl FromStr for $name {
            type Err = ValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let n: $int = s.trim().parse().map_err(|_| ValueError::Count(s.to_string()))?;
                Ok(Self(<$nonzero>::new(n)))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let n = i128::deserialize(d)?;
                <$int>::try_from(n)
                    .map(|n| Self(<$nonzero>::new(n)))
                    .map_err(|_| serde::de::Error::custom(ValueError::Count(n.to_string())))
            }
        }
    };
}

auto_count!(
    /// A count where 0 means "work it out" (cores: the CPUs; sandboxes: the cores, × cpu-overcommit with containers).
    AutoCount(NonZeroU32, u32)
);
auto_count!(
    /// An amount in MiB where 0 means "work it out" (memory: 1024 per core).
    AutoMib(NonZeroU64, u64)
);

/// A size in bytes: a whole number with an optional binary unit, case-insensitive and with
/// spaces ignored (`100 MB` = `100MiB` = 104857600; `K`, `M`, `G`, `T`, each also as `KB`,
/// `KiB`...). A bare number is bytes. YAML may give a string or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Whole MiB, rounded up.
    pub fn mib_ceil(self) -> u64 {
        self.0.div_ceil(1 << 20)
    }
}

/// Parses a [`ByteSize`].
pub fn parse_size(raw: &str) -> Result<ByteSize, ValueError> {
    let invalid = || ValueError::Size(raw.to_string());
    let text: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(invalid());
    }
    let number: u64 = text[..digits].parse().map_err(|_| invalid())?;
    let multiplier: u64 = match &text[digits..] {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(multiplier)
        .map(ByteSize)
        .ok_or_else(invalid)
}

impl FromStr for ByteSize {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => parse_size(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// A memory amount given as a share of the host's memory (`90%`) or as a size (`20 GiB`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryShare {
    /// Percent of the host's memory, in (0, 100].
    Percent(f64),
    /// An absolute size.
    Size(ByteSize),
}

impl MemoryShare {
    /// The amount in MiB for a host with `host_mib` of memory.
    pub fn mib(self, host_mib: u64) -> u64 {
        match self {
            MemoryShare::Percent(p) => (host_mib as f64 * p / 100.0) as u64,
            MemoryShare::Size(size) => size.0 >> 20,
        }
    }
}

impl FromStr for MemoryShare {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().strip_suffix('%') {
            Some(number) => match number.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(MemoryShare::Percent(p)),
                _ => Err(ValueError::Share(s.to_string())),
            },
            None => parse_size(s).map(MemoryShare::Size),
        }
    }
}

impl<'de> Deserialize<'de> for MemoryShare {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A log level as the worker YAML names it (§6.4): `trace`/`debug` → debug, empty/`info` →
/// info, `warn`/`warning` → warn, `error`/`fatal`/`panic` → error; case-insensitive.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LogLevel(pub LevelFilter);

impl fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogLevel({})", self.0)
    }
}

/// Parses a [`LogLevel`].
pub fn parse_log_level(raw: &str) -> Result<LevelFilter, ValueError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "trace" | "debug" => Ok(LevelFilter::DEBUG),
        "" | "info" => Ok(LevelFilter::INFO),
        "warn" | "warning" => Ok(LevelFilter::WARN),
        "error" | "fatal" | "panic" => Ok(LevelFilter::ERROR),
        _ => Err(ValueError::LogLevel(raw.to_string())),
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_log_level(&text)
            .map(LogLevel)
            .map_err(serde::de::Error::custom)
    }
}

/// A network egress mode in the YAML: `none`, `all` or `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressValue(pub traforato_core::network::Egress);

impl<'de> Deserialize<'de> for EgressValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse()
            .map(EgressValue)
            .map_err(serde::de::Error::custom)
    }
}
