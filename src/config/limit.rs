//! The allowed range of every numeric setting, declared once beside the setting and read
//! by the config file's validation, the admin API and the OpenAPI document; and the one
//! conversion from seconds given from the outside to a [`Duration`].
//!
//! A number that reaches a `Duration`, an allocation, a sleep or a counter is checked
//! against its [`Limit`] where it enters, so nothing past that point can overflow or
//! panic (`Duration::from_secs_f64(1e300)` does). [`duration`] saturates as a second
//! line of defence.

use std::time::Duration;

use serde_json::Value;
use utoipa::openapi::schema::Object;

/// The longest duration any setting may name: one year. Far beyond any sensible
/// timeout, and far below where `Instant + Duration` overflows.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// One day, the ceiling of most waits and periods.
pub const DAY_SECONDS: f64 = 24.0 * 3600.0;

/// Seconds as a [`Duration`], saturating: NaN and negatives are zero, anything above
/// [`MAX_SECONDS`] is `MAX_SECONDS`. Never panics (`Duration::from_secs_f64` does on
/// NaN, negatives and values past `u64::MAX` seconds). Settings are range-checked
/// before they get here; this is the one conversion every outside duration takes.
pub fn duration(seconds: f64) -> Duration {
    if seconds.is_nan() || seconds <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(seconds.min(MAX_SECONDS))
}

/// Milliseconds as a [`Duration`], saturating as [`duration`].
pub fn millis(ms: f64) -> Duration {
    duration(ms / 1e3)
}

/// The range of one numeric setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Smallest allowed value (itself allowed unless `exclusive_min`).
    pub min: f64,
    /// Largest allowed value.
    pub max: f64,
    /// Whether `min` itself is outside (a duration that must be positive).
    pub exclusive_min: bool,
    /// Whether only whole numbers are allowed.
    pub integer: bool,
    /// What the number counts, for messages (`ms`, `seconds`, `bytes`, ...).
    pub unit: &'static str,
}

/// Why a JSON value does not fit a [`Limit`]: the wrong type (a 400) or out of range
/// (a 422). The message names the field and the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// Not a number, or not a whole number for an integer setting.
    Type(String),
    /// A number outside the range.
    Range(String),
}

impl LimitError {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            LimitError::Type(m) | LimitError::Range(m) => m,
        }
    }
}

impl Limit {
    /// Whole numbers from `min` to `max` inclusive.
    pub const fn int(min: u64, max: u64, unit: &'static str) -> Limit {
        Limit {
            min: min as f64,
            max: max as f64,
            exclusive_min: false,
            integer: true,
            unit,
        }
    }

    /// A positive number of seconds, at most `max`.
    pub const fn seconds(max: f64) -> Limit {
        Limit {
            min: 0.0,
            max,
            exclusive_min: true,
            integer: false,
            unit: "seconds",
        }
    }

    /// Any number from `min` to `max` inclusive.
    pub const fn number(min: f64, max: f64, unit: &'static str) -> Limit {
        Limit {
            min,
            max,
            exclusive_min: false,
            integer: false,
            unit,
        }
    }

    /// The same range with another ceiling (a pool's `max_concurrency`).
    pub const fn up_to(self, max: u64) -> Limit {
        Limit {
            max: max as f64,
            ..self
        }
    }

    /// Whether `v` lies in the range (NaN never does).
    pub fn contains(&self, v: f64) -> bool {
        let above = if self.exclusive_min {
            v > self.min
        } else {
            v >= self.min
        };
        above && v <= self.max && (!self.integer || v.fract() == 0.0)
    }

    /// The range in words: `an integer from 1 to 4096`, `a number of seconds > 0 and
    /// <= 86400`.
    pub fn describe(&self) -> String {
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.unit)
        };
        let kind = if self.integer {
            "an integer"
        } else {
            "a number"
        };
        if self.exclusive_min {
            format!("{kind} > {} and <= {}{unit}", self.min, self.max)
        } else {
            format!("{kind} from {} to {}{unit}", self.min, self.max)
        }
    }

    /// Checks a value read from the config file; the message says what is allowed.
    pub fn check(&self, v: f64) -> Result<(), String> {
        if self.contains(v) {
            Ok(())
        } else {
            Err(format!("must be {}, got {v}", self.describe()))
        }
    }

    /// Checks a JSON value given for `field` (a request body's field): its type, then
    /// its range.
    pub fn check_json(&self, field: &str, v: &Value) -> Result<(), LimitError> {
        let wanted = || format!("`{field}` must be {}, got {v}", self.describe());
        let n = if self.integer {
            // A whole number past u64 (2^64) arrives as a float: out of range, not a
            // type error, when it is a whole, non-negative number.
            match (v.as_u64(), v.as_f64()) {
                (Some(n), _) => n as f64,
                (None, Some(f)) if f.fract() == 0.0 && f >= 0.0 => {
                    return Err(LimitError::Range(wanted()));
                }
                _ => return Err(LimitError::Type(wanted())),
            }
        } else {
            v.as_f64().ok_or_else(|| LimitError::Type(wanted()))?
        };
        if self.contains(n) {
            Ok(())
        } else {
            Err(LimitError::Range(wanted()))
        }
    }

    /// Writes the range into an OpenAPI schema: `minimum` (or `exclusiveMinimum`) and
    /// `maximum`.
    pub fn apply(&self, o: &mut Object) {
        let num = |v: f64| -> utoipa::Number {
            if self.integer {
                utoipa::Number::UInt(v as usize)
            } else {
                utoipa::Number::Float(v)
            }
        };
        if self.exclusive_min {
            o.exclusive_minimum = Some(num(self.min));
            o.minimum = None;
        } else {
            o.minimum = Some(num(self.min));
            o.exclusive_minimum = None;
        }
        o.maximum = Some(num(self.max));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_saturate_instead_of_panicking() {
        assert_eq!(duration(f64::NAN), Duration::ZERO);
        assert_eq!(duration(-1.0), Duration::ZERO);
        assert_eq!(duration(1e300), Duration::from_secs_f64(MAX_SECONDS));
        assert_eq!(
            duration(f64::INFINITY),
            Duration::from_secs_f64(MAX_SECONDS)
        );
        assert_eq!(duration(1.5), Duration::from_millis(1500));
        assert_eq!(millis(250.0), Duration::from_millis(250));
        // Far from overflowing an Instant.
        let _ = std::time::Instant::now() + duration(1e300);
    }

    #[test]
    fn ranges_name_the_field_and_tell_type_from_range() {
        let ms = Limit::int(1, 1000, "ms");
        assert_eq!(ms.check_json("x", &json!(5)), Ok(()));
        assert!(matches!(
            ms.check_json("x", &json!(0)),
            Err(LimitError::Range(_))
        ));
        assert!(matches!(
            ms.check_json("x", &json!(1001)),
            Err(LimitError::Range(_))
        ));
        let huge: Value = serde_json::from_str("18446744073709551616").unwrap();
        assert!(matches!(
            ms.check_json("x", &huge),
            Err(LimitError::Range(_))
        ));
        for bad in [
            json!(-1),
            json!(2.5),
            json!("NaN"),
            json!(null),
            json!(1e300),
        ] {
            let e = ms.check_json("x", &bad).unwrap_err();
            assert!(
                e.message()
                    .contains("`x` must be an integer from 1 to 1000"),
                "{e:?}"
            );
        }
        let s = Limit::seconds(DAY_SECONDS);
        assert_eq!(s.check_json("y", &json!(0.5)), Ok(()));
        for bad in [json!(0), json!(-1), json!(1e300), json!(86400.5)] {
            assert!(
                matches!(s.check_json("y", &bad), Err(LimitError::Range(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            s.check_json("y", &json!("1")),
            Err(LimitError::Type(_))
        ));
        assert!(s.check(f64::NAN).is_err());
        assert!(s.check(f64::INFINITY).is_err());
        assert!(s.check(DAY_SECONDS).is_ok());
    }

    #[test]
    fn schema_carries_the_range() {
        let mut o = Object::new();
        Limit::seconds(10.0).apply(&mut o);
        assert!(o.exclusive_minimum == Some(utoipa::Number::Float(0.0)));
        assert!(o.maximum == Some(utoipa::Number::Float(10.0)));
        Limit::int(1, 7, "").apply(&mut o);
        assert!(o.minimum == Some(utoipa::Number::UInt(1)));
        assert!(o.exclusive_minimum.is_none());
    }
}
