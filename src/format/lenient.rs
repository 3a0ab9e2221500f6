//! Lenient field readers for the line types: what a line from elsewhere (or an older version) may hold where ours holds something stricter.
//!
//! Each function is a serde `deserialize_with` (or `with`) helper; none changes how a field is
//! written.

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use time::OffsetDateTime;

use super::line::Params;

/// The text of a JSON value: a string as is, `null` as `""`, anything else as JSON.
pub(super) fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A text field: a non-string is kept as its JSON text, `null` reads as `""`.
pub(super) fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(value_text(&Value::deserialize(deserializer)?))
}

/// An optional text field: `null` is `None`, a non-string is kept as its JSON text.
pub(super) fn opt_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Null => None,
        other => Some(value_text(&other)),
    })
}

/// A field whose `null` means the same as its absence: the type's default.
pub(super) fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A field that is `Some` whenever it is present, `null` included (`Some(Value::Null)`), so a
/// line that wrote `null` is written back with it; absent (with `#[serde(default)]`) is `None`.
pub(super) fn present<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// A sample's id: a string, or a number kept as its digits; anything else is an error.
pub(super) fn id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "\"id\" must be a string, got {other}"
        ))),
    }
}

/// A step's parameters: keys this version does not know are ignored (a line of another
/// version or tool may carry more), `null` is the default. [`Params`] itself refuses unknown
/// keys, for `models.toml`, where one is a typo.
pub(super) fn params<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Params, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(Params::default()),
        Value::Object(mut map) => {
            map.retain(|key, _| Params::FIELDS.contains(&key.as_str()));
            Params::deserialize(Value::Object(map)).map_err(serde::de::Error::custom)
        }
        other => Err(serde::de::Error::custom(format!(
            "\"params\" must be an object, got {other}"
        ))),
    }
}

/// An optional RFC 3339 time: written as `time` writes it; read from a string in that form,
/// while anything else (`null`, a number, another format) reads as unknown (`None`).
pub(super) mod rfc3339 {
    use super::*;
    use serde::Serializer;

    /// `time` in RFC 3339 (`None` as `null`).
    pub(crate) fn serialize<S: Serializer>(
        time: &Option<OffsetDateTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::option::serialize(time, serializer)
    }

    /// An RFC 3339 string as its time; any other value as `None`.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        Ok(match Value::deserialize(deserializer)? {
            Value::String(text) => {
                OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339).ok()
            }
            _ => None,
        })
    }
}
