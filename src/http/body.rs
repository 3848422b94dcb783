//! Request bodies (the task batch, OpenAI's and TEI's) read as JSON means them, where a
//! derived `Deserialize` reads them otherwise: JSON has one number type, so a whole
//! number may come as `7.0` (Python's `json.dumps(float)`, fuzzers); and a derived
//! struct also reads a JSON array as its fields in order, which no client means.

use bytes::Bytes;
use serde::de::{DeserializeOwned, Error};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value};

use crate::error::ApiError;

/// The largest whole number an `f64` holds exactly (2^53).
const EXACT: f64 = 9_007_199_254_740_992.0;

/// Parses a JSON body into `T`: malformed JSON is a 400 `invalid_json`, JSON of the
/// wrong shape a 400 `invalid_body`.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::InvalidBody(e.to_string())
        } else {
            ApiError::InvalidJson(e.to_string())
        }
    })
}

/// Parses a body that must be a JSON object into `T`; an array or any other value is a
/// 400 `invalid_body`, as a shape that does not fit.
pub fn parse_object<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => parse_json(body),
        // Not an object: invalid JSON stays `invalid_json`, anything else is refused.
        Some(_) => match parse_json::<Value>(body)? {
            Value::Object(_) => parse_json(body),
            other => Err(ApiError::InvalidBody(format!(
                "the body must be a JSON object, got {}",
                kind(&other)
            ))),
        },
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON number as a whole, non-negative number: `7` and `7.0` are 7; `7.5`, `-1`
/// and numbers past 2^53 written as floats are `None`.
pub fn whole(n: &Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=EXACT).contains(f))
            .map(|f| f as u64)
    })
}

/// A JSON value as a whole, non-negative number ([`whole`]).
pub fn whole_value(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => whole(n),
        _ => None,
    }
}

/// `deserialize_with` for an optional count (`Option<usize>`): absent or null is `None`,
/// a whole number is itself (`7.0` included), anything else is refused in words.
pub fn optional_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let Some(n) = Option::<Number>::deserialize(d)? else {
        return Ok(None);
    };
    whole(&n)
        .and_then(|n| usize::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("invalid value: {n}, expected a whole number")))
}

/// `deserialize_with` for an optional nested object: absent or null is `None`, an
/// object is read as `T`, anything else (an array included) is refused.
pub fn optional_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<Map<String, Value>>::deserialize(d)? {
        None => Ok(None),
        Some(map) => T::deserialize(Value::Object(map))
            .map(Some)
            .map_err(D::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        k: Option<u32>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default, deserialize_with = "optional_count")]
        n: Option<usize>,
        #[serde(default, deserialize_with = "optional_object")]
        inner: Option<Inner>,
    }

    fn parse(v: Value) -> Result<Body, ApiError> {
        parse_object(&Bytes::from(v.to_string()))
    }

    #[test]
    fn whole_numbers_come_as_integers_or_integral_floats() {
        assert_eq!(parse(json!({"n": 7})).unwrap().n, Some(7));
        assert_eq!(parse(json!({"n": 7797.0})).unwrap().n, Some(7797));
        assert_eq!(parse(json!({"n": null})).unwrap().n, None);
        assert_eq!(parse(json!({})).unwrap().n, None);
        for bad in [json!(7.5), json!(-1), json!(-1.0), json!("7"), json!(1e300)] {
            let e = parse(json!({ "n": bad })).unwrap_err();
            assert!(matches!(e, ApiError::InvalidBody(_)), "{bad}: {e:?}");
        }
        assert!(
            parse(json!({"n": 7.5}))
                .unwrap_err()
                .to_string()
                .contains("expected a whole number")
        );
        assert_eq!(whole_value(&json!(3.0)), Some(3));
        assert_eq!(whole_value(&json!("3")), None);
    }

    #[test]
    fn bodies_and_nested_objects_must_be_objects() {
        assert_eq!(
            parse(json!({"inner": {"k": 2}})).unwrap().inner.unwrap().k,
            Some(2)
        );
        for bad in [
            json!("softmax"),
            json!(["softmax"]),
            json!(3),
            json!({"x": 1}),
        ] {
            assert!(parse(json!({ "inner": bad })).is_err(), "{bad}");
        }
        // A derived struct would read [7, null] as its fields in order.
        let e = parse(json!([7, null])).unwrap_err();
        assert!(matches!(e, ApiError::InvalidBody(_)), "{e:?}");
        let e = parse_object::<Body>(&Bytes::from_static(b"[1, 2")).unwrap_err();
        assert!(matches!(e, ApiError::InvalidJson(_)), "{e:?}");
    }
}
