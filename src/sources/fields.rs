//! [`FieldMap`]: which source fields become a record's id, prompt and category, and which are kept.

use serde_json::{Map, Value};

use super::readers::{RawRow, kind};
use super::{Record, SourceError, derive_id};

/// Maps source fields (JSON keys, CSV/Parquet columns) to [`Record`] fields.
///
/// Defaults: prompt from `prompt` (required), id from `id` (optional; derived from the prompt when
/// absent, null or empty), category from `category` (optional), every other top-level field kept
/// in `extra`. Paths may be nested with dots: `conversation.0.content` (array indices are numbers);
/// a key that itself contains dots is matched first. The top-level field a mapped path starts in is
/// not copied into `extra`.
#[derive(Clone, Debug)]
pub struct FieldMap {
    pub(crate) prompt: String,
    id: Option<String>,
    id_explicit: bool,
    category: Option<String>,
    category_explicit: bool,
    require_category: bool,
    extra: Extra,
}

#[derive(Clone, Debug)]
enum Extra {
    All,
    Only(Vec<String>),
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            prompt: "prompt".into(),
            id: Some("id".into()),
            id_explicit: false,
            category: Some("category".into()),
            category_explicit: false,
            require_category: false,
            extra: Extra::All,
        }
    }
}

impl FieldMap {
    /// The defaults described on the type.
    pub fn new() -> Self {
        Self::default()
    }

    /// Field holding the prompt (required in every row).
    pub fn prompt(mut self, path: impl Into<String>) -> Self {
        self.prompt = path.into();
        self
    }

    /// Field holding the id. Setting it explicitly makes the column required in schema'd formats
    /// (CSV, Parquet); per row a missing/empty id still falls back to a derived one.
    pub fn id(mut self, path: impl Into<String>) -> Self {
        self.id = Some(path.into());
        self.id_explicit = true;
        self
    }

    /// Always derive ids from the prompt, ignoring any `id` field.
    pub fn derive_ids(mut self) -> Self {
        self.id = None;
        self
    }

    /// Field holding the category (explicitly set: required column in schema'd formats).
    pub fn category(mut self, path: impl Into<String>) -> Self {
        self.category = Some(path.into());
        self.category_explicit = true;
        self
    }

    /// No category, even if a `category` field exists (it then stays in `extra`).
    pub fn no_category(mut self) -> Self {
        self.category = None;
        self
    }

    /// Every row must have a non-empty category.
    pub fn require_category(mut self, yes: bool) -> Self {
        self.require_category = yes;
        self
    }

    /// Keep only these fields (paths allowed) in `extra`.
    pub fn extra_only<S: Into<String>>(mut self, fields: impl IntoIterator<Item = S>) -> Self {
        self.extra = Extra::Only(fields.into_iter().map(Into::into).collect());
        self
    }

    /// Keep nothing in `extra`.
    pub fn no_extra(self) -> Self {
        self.extra_only(Vec::<String>::new())
    }

    /// Top-level columns that must exist in a schema'd file.
    pub(crate) fn required_columns(&self) -> Vec<&str> {
        let mut out = vec![top(&self.prompt)];
        if self.id_explicit
            && let Some(id) = &self.id
        {
            out.push(top(id));
        }
        if (self.category_explicit || self.require_category)
            && let Some(c) = &self.category
        {
            out.push(top(c));
        }
        out
    }

    /// Top-level columns needed, when that is a strict subset (extras restricted); for projection.
    pub(crate) fn projection(&self) -> Option<Vec<String>> {
        let Extra::Only(extra) = &self.extra else {
            return None;
        };
        let mut cols: Vec<String> = [Some(&self.prompt), self.id.as_ref(), self.category.as_ref()]
            .into_iter()
            .flatten()
            .chain(extra.iter())
            .map(|p| top(p).to_owned())
            .collect();
        cols.sort();
        cols.dedup();
        Some(cols)
    }

    /// Builds a record from a raw row.
    pub(crate) fn to_record(&self, row: RawRow, source: &str) -> Result<Record, SourceError> {
        let RawRow {
            path,
            location,
            value,
        } = row;
        let bad = |field: &str, message: String| SourceError::BadField {
            path: path.to_path_buf(),
            location,
            field: field.to_owned(),
            message,
        };
        let prompt = match lookup(&value, &self.prompt) {
            Err(available) => {
                return Err(SourceError::MissingField {
                    path: path.to_path_buf(),
                    location,
                    field: self.prompt.clone(),
                    available,
                });
            }
            Ok(Value::String(s)) if s.trim().is_empty() => {
                return Err(bad(&self.prompt, "is empty".into()));
            }
            Ok(Value::String(s)) => s.clone(),
            Ok(other) => {
                return Err(bad(
                    &self.prompt,
                    format!("expected a string, found {}", kind(other)),
                ));
            }
        };
        let id = match &self.id {
            None => None,
            Some(f) => match lookup(&value, f) {
                Err(_) | Ok(Value::Null) => None,
                Ok(Value::String(s)) if s.trim().is_empty() => None,
                Ok(Value::String(s)) => Some(s.clone()),
                Ok(Value::Number(n)) => Some(n.to_string()),
                Ok(other) => {
                    return Err(bad(
                        f,
                        format!("expected a string or number, found {}", kind(other)),
                    ));
                }
            },
        };
        let category = match &self.category {
            None => None,
            Some(f) => match lookup(&value, f) {
                Err(_) | Ok(Value::Null) => None,
                Ok(Value::String(s)) if s.trim().is_empty() => None,
                Ok(Value::String(s)) => Some(s.trim().to_owned()),
                Ok(other) => {
                    return Err(bad(f, format!("expected a string, found {}", kind(other))));
                }
            },
        };
        if self.require_category && category.is_none() {
            let field = self.category.clone().unwrap_or_else(|| "category".into());
            return Err(bad(&field, "is required (missing or empty)".into()));
        }
        let extra = match &self.extra {
            Extra::All => {
                let used: Vec<&str> =
                    [Some(&self.prompt), self.id.as_ref(), self.category.as_ref()]
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            if value.contains_key(p.as_str()) {
                                p.as_str()
                            } else {
                                top(p)
                            }
                        })
                        .collect();
                let mut value = value;
                value.retain(|k, _| !used.contains(&k.as_str()));
                value
            }
            Extra::Only(fields) => {
                let mut out = Map::new();
                for f in fields {
                    if let Ok(v) = lookup(&value, f) {
                        out.insert(f.clone(), v.clone());
                    }
                }
                out
            }
        };
        let id = id.unwrap_or_else(|| derive_id(source, &prompt));
        Ok(Record {
            id,
            prompt,
            source: source.to_owned(),
            category,
            extra,
        })
    }
}

fn top(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

/// Looks up a dotted path; on failure returns the keys available where the lookup stopped.
pub(crate) fn lookup<'a>(
    root: &'a Map<String, Value>,
    path: &str,
) -> Result<&'a Value, Vec<String>> {
    if let Some(v) = root.get(path) {
        return Ok(v);
    }
    let keys = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    let mut segments = path.split('.');
    let first = segments.next().unwrap_or(path);
    let mut cur = root.get(first).ok_or_else(|| keys(root))?;
    for seg in segments {
        cur = match cur {
            Value::Object(m) => m.get(seg).ok_or_else(|| keys(m))?,
            Value::Array(a) => {
                let available = || vec![format!("indices 0..{}", a.len())];
                let i: usize = seg.parse().map_err(|_| available())?;
                a.get(i).ok_or_else(available)?
            }
            other => {
                return Err(vec![format!(
                    "(`{}` is {}, not a container)",
                    first,
                    kind(other)
                )]);
            }
        };
    }
    Ok(cur)
}
