//! Kubernetes-style duration strings (`"250ms"`, `"5s"`, `"1m30s"`), as Gateway API writes them.

use std::{borrow::Cow, fmt, time::Duration as StdDuration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the API server enforces; the parser below accepts exactly this language.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// A duration written as a string of `<number><unit>` parts, units `h`, `m`, `s`, `ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(StdDuration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {input:?}: write whole numbers followed by a unit (h, m, s or ms), e.g. \"250ms\", \"5s\" or \"1m30s\""
)]
pub struct ParseDurationError {
    pub input: String,
}

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(StdDuration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(StdDuration::from_secs(s))
    }

    pub fn as_std(&self) -> StdDuration {
        self.0
    }

    pub fn as_millis(&self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn parse(input: &str) -> Result<Self, ParseDurationError> {
        let err = || ParseDurationError {
            input: input.to_string(),
        };
        let bytes = input.as_bytes();
        if bytes.is_empty() {
            return Err(err());
        }
        let (mut i, mut total_ms, mut parts) = (0usize, 0u64, 0usize);
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == start || i - start > 5 {
                return Err(err());
            }
            let n: u64 = input[start..i].parse().map_err(|_| err())?;
            let unit_ms = match (bytes.get(i), bytes.get(i + 1)) {
                (Some(b'm'), Some(b's')) => {
                    i += 2;
                    1
                }
                (Some(b'h'), _) => {
                    i += 1;
                    3_600_000
                }
                (Some(b'm'), _) => {
                    i += 1;
                    60_000
                }
                (Some(b's'), _) => {
                    i += 1;
                    1_000
                }
                _ => return Err(err()),
            };
            parts += 1;
            if parts > 4 {
                return Err(err());
            }
            total_ms = total_ms.saturating_add(n.saturating_mul(unit_ms));
        }
        Ok(Self::from_millis(total_ms))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Duration {
    type Err = ParseDurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as \"250ms\", \"5s\" or \"1m30s\" (units h, m, s, ms)."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        for (s, ms) in [
            ("250ms", 250),
            ("5s", 5_000),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("1h1m1s1ms", 3_661_001),
            ("0s", 0),
        ] {
            assert_eq!(Duration::parse(s).unwrap().as_millis(), ms, "{s}");
        }
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for s in [
            "",
            "5",
            "s",
            "5 s",
            "-5s",
            "1.5s",
            "5sec",
            "5S",
            "1d",
            "123456s",
            "1s1s1s1s1s",
        ] {
            assert!(Duration::parse(s).is_err(), "{s} should be rejected");
            assert!(!re.is_match(s), "schema pattern should reject {s}");
        }
        for s in ["250ms", "5s", "1m30s", "1h1m1s1ms"] {
            assert!(re.is_match(s), "schema pattern should accept {s}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["250ms", "5s", "1m30s", "2h", "1h1m1s1ms", "0s"] {
            assert_eq!(Duration::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn error_says_what_to_fix() {
        let e = Duration::parse("5 seconds").unwrap_err().to_string();
        assert!(e.contains("\"5 seconds\"") && e.contains("e.g."), "{e}");
    }
}
