//! Durations as people write them in config files: `250ms`, `10s`, `5m`, `1h`, `1h30m`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};

/// A duration read from config. A bare number is refused: `10` could mean seconds or
/// milliseconds, and a wrong guess makes a check fire 1000 times too often.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

/// The longest duration Vigia accepts anywhere (config, scripts, the command line, the
/// mock): ten years. Longer is refused with this sentence instead of overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86400);

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a duration: {why} (write it like 250ms, 10s, 5m, 1h or 1h30m)")]
pub struct DurError {
    text: String,
    why: &'static str,
}

impl FromStr for Dur {
    type Err = DurError;

    fn from_str(text: &str) -> Result<Dur, DurError> {
        let err = |why| DurError {
            text: text.to_string(),
            why,
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(err("a number must come before each unit"));
            }
            let number: f64 = rest[..digits].parse().map_err(|_| err("bad number"))?;
            rest = rest[digits..].trim_start();
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = rest[unit_len..].trim_start();
            let scale = match unit {
                "ms" => 0.001,
                "s" | "sec" | "secs" => 1.0,
                "m" | "min" | "mins" => 60.0,
                "h" | "hour" | "hours" => 3600.0,
                "d" | "day" | "days" => 86400.0,
                "" => return Err(err("it has no unit")),
                _ => return Err(err("unknown unit")),
            };
            let secs = number * scale;
            if !secs.is_finite() || secs > MAX_DURATION.as_secs_f64() {
                return Err(err(
                    "it is longer than the longest duration Vigia takes, 3650d",
                ));
            }
            total = total
                .checked_add(Duration::from_secs_f64(secs))
                .filter(|t| *t <= MAX_DURATION)
                .ok_or_else(|| err("it is longer than the longest duration Vigia takes, 3650d"))?;
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    /// The shortest exact form: `250ms`, `10s`, `5m`, `1h30m`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if !ms.is_multiple_of(1000) {
            return if ms > 1000 {
                write!(f, "{:.1}s", self.0.as_secs_f64())
            } else {
                write!(f, "{ms}ms")
            };
        }
        let mut s = self.0.as_secs();
        for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
            if s >= len {
                write!(f, "{}{unit}", s / len)?;
                s %= len;
            }
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like 250ms, 10s, 5m or 1h")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "`{n}` has no unit: write {n}s for seconds or {n}ms for milliseconds"
                )))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Dur, E> {
                self.visit_i64(n as i64)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "`{n}` has no unit: write {n}s for seconds"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        for (text, ms) in [
            ("250ms", 250),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("1.5s", 1_500),
            ("2d", 172_800_000),
        ] {
            assert_eq!(text.parse::<Dur>().unwrap(), Dur::millis(ms), "{text}");
        }
    }

    #[test]
    fn refuses_what_would_overflow_instead_of_panicking() {
        for text in [
            "99999999999999999h",
            "1000000000000000000000000000d",
            "3651d",
            "3650d1s",
            "2000d2000d",
        ] {
            let e = text.parse::<Dur>().unwrap_err().to_string();
            assert!(
                e.contains("longest duration Vigia takes, 3650d"),
                "{text}: {e}"
            );
        }
        assert_eq!("3650d".parse::<Dur>().unwrap().get(), MAX_DURATION);
    }

    #[test]
    fn refuses_what_is_ambiguous() {
        assert_eq!(
            "10".parse::<Dur>().unwrap_err().to_string(),
            "`10` is not a duration: it has no unit (write it like 250ms, 10s, 5m, 1h or 1h30m)"
        );
        assert!("10x".parse::<Dur>().is_err());
        assert!("s".parse::<Dur>().is_err());
        assert!("".parse::<Dur>().is_err());
    }

    #[test]
    fn displays_the_shortest_exact_form() {
        for (ms, text) in [
            (250, "250ms"),
            (10_000, "10s"),
            (5_400_000, "1h30m"),
            (1_500, "1.5s"),
        ] {
            assert_eq!(Dur::millis(ms).to_string(), text);
        }
    }
}
