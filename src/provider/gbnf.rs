//! JSON schema → GBNF: the grammar that constrains the local model's sampling to JSON documents a request's `json_schema` accepts (pure code, in every build).
//!
//! [`json_schema_to_gbnf`] compiles a schema into a llama.cpp grammar whose `root` rule matches
//! the JSON serialisations the schema allows; the local provider (`llama_cpp`, feature
//! `local-model`) hands it to llama.cpp's grammar sampler. Anything the compiler does not
//! understand is a [`SchemaError`] naming the problem, never a grammar that allows more than the
//! schema.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde_json::Value;

/// Why a JSON schema cannot be turned into a grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// Subschemas nested more than 64 levels deep.
    #[error("schema nested more than 64 levels")]
    TooDeep,
    /// A `false` schema: no document satisfies it.
    #[error("`false` schema matches nothing")]
    FalseSchema,
    /// A schema (or subschema) that is neither an object nor a boolean.
    #[error("a schema must be an object, got {0}")]
    NotASchema(String),
    /// `enum`, `anyOf` or `oneOf` that is not an array.
    #[error("{0} must be an array")]
    NotAnArray(&'static str),
    /// `enum`, `anyOf` or `oneOf` without alternatives.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// `allOf` that is not an array of exactly one schema.
    #[error("allOf with more than one schema is not supported")]
    AllOfSeveral,
    /// A `type` that is neither a string nor a list of strings (or a list member that is not a
    /// string).
    #[error("bad type {0}")]
    BadType(String),
    /// `type: []`.
    #[error("empty type list")]
    EmptyTypeList,
    /// A type name JSON schema does not have.
    #[error("unsupported type {0:?}")]
    UnsupportedType(String),
    /// A `$ref` that is not a string.
    #[error("$ref must be a string")]
    RefNotString,
    /// A `$ref` that does not start with `#` (another document or a URL); holds the reference.
    #[error("only local $refs are supported, got {0}")]
    NonLocalRef(String),
    /// A local `$ref` whose JSON pointer names nothing in the root schema; holds the reference.
    #[error("$ref {0} does not resolve")]
    UnresolvedRef(String),
    /// `minLength`, `maxLength`, `minItems` or `maxItems` that is not a count.
    #[error("{keyword} must be a non-negative integer, got {value}")]
    NotACount {
        /// The keyword, e.g. `maxLength`.
        keyword: &'static str,
        /// Its value, as JSON.
        value: String,
    },
    /// `maxLength < minLength` or `maxItems < minItems`.
    #[error("{max} < {min}")]
    MaxBelowMin {
        /// The lower bound's keyword (`minLength` or `minItems`).
        min: &'static str,
        /// The upper bound's keyword (`maxLength` or `maxItems`).
        max: &'static str,
    },
    /// `properties` that is not an object.
    #[error("properties must be an object")]
    PropertiesNotAnObject,
    /// A name in `required` that `properties` does not define; holds the name.
    #[error("required property {0:?} is not in properties")]
    RequiredNotInProperties(String),
}

/// Convert a JSON schema to a llama.cpp GBNF grammar whose `root` rule matches JSON documents
/// satisfying it.
///
/// Supported: `type` (object, array, string, integer, number, boolean, null, or a list of
/// those), `properties` with `required` (emitted in the map's order: the declared order when
/// serde_json's `preserve_order` feature is on, alphabetical otherwise), `items` with
/// `minItems`/`maxItems`, `minLength`/`maxLength`, `enum`, `const`, `anyOf`/`oneOf`,
/// `nullable`, local `$ref`s (`#/$defs/…`, `#/definitions/…`) and schemas without a type (any
/// JSON value). Ignored: `additionalProperties` (extra properties are never generated),
/// `pattern`, `format`, numeric bounds. Anything else unknown is rejected rather than silently
/// producing a grammar that allows more than the schema.
pub fn json_schema_to_gbnf(schema: &Value) -> Result<String, SchemaError> {
    let mut g = Gbnf {
        root: schema,
        rules: Vec::new(),
        names: HashSet::new(),
        refs: HashMap::new(),
        depth: 0,
    };
    g.names.insert("root".into());
    let body = g.visit(schema, "root")?;
    let mut out = String::new();
    let _ = writeln!(out, "root ::= {body}");
    for (name, rule) in &g.rules {
        let _ = writeln!(out, "{name} ::= {rule}");
    }
    out.push_str(PRIMITIVES);
    Ok(out)
}

const PRIMITIVES: &str = r#"space ::= | " " | "\n" [ \t]{0,20}
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
string ::= "\"" char* "\"" space
boolean ::= ("true" | "false") space
null ::= "null" space
integral-part ::= [0] | [1-9] [0-9]{0,15}
integer ::= ("-"? integral-part) space
number ::= ("-"? integral-part) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})? space
value ::= object | array | string | number | boolean | null
object ::= "{" space ( string ":" space value ("," space string ":" space value)* )? "}" space
array ::= "[" space ( value ("," space value)* )? "]" space
"#;

struct Gbnf<'a> {
    root: &'a Value,
    rules: Vec<(String, String)>,
    names: HashSet<String>,
    refs: HashMap<String, String>,
    depth: usize,
}

/// A GBNF string literal matching exactly `s`.
fn gbnf_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The GBNF for the JSON serialisation of `v` followed by optional space.
fn json_literal(v: &Value) -> String {
    format!("{} space", gbnf_literal(&v.to_string()))
}

fn as_count(v: Option<&Value>, keyword: &'static str) -> Result<Option<u64>, SchemaError> {
    match v {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| SchemaError::NotACount {
            keyword,
            value: v.to_string(),
        }),
    }
}

/// `item{min,max}` joined by `sep`, as GBNF (possibly empty when `min` is 0).
fn repeat_sep(item: &str, sep: &str, min: u64, max: Option<u64>) -> String {
    if max == Some(0) {
        return String::new();
    }
    let rest = match max {
        Some(max) => format!("({sep} {item}){{{},{}}}", min.saturating_sub(1), max - 1),
        None => format!("({sep} {item}){{{},}}", min.saturating_sub(1)),
    };
    let seq = format!("{item} {rest}");
    if min == 0 { format!("({seq})?") } else { seq }
}

impl<'a> Gbnf<'a> {
    fn fresh(&mut self, hint: &str) -> String {
        let mut base: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        base = base.trim_matches('-').to_owned();
        if base.is_empty() {
            base = "r".into();
        }
        if !self.names.contains(&base) && !is_primitive(&base) {
            self.names.insert(base.clone());
            return base;
        }
        for i in 1.. {
            let name = format!("{base}-{i}");
            if !self.names.contains(&name) {
                self.names.insert(name.clone());
                return name;
            }
        }
        unreachable!()
    }

    /// Put `body` in a named rule and return the name.
    fn rule(&mut self, hint: &str, body: String) -> String {
        let name = self.fresh(hint);
        self.rules.push((name.clone(), body));
        name
    }

    /// A GBNF expression matching `schema`.
    fn visit(&mut self, schema: &'a Value, hint: &str) -> Result<String, SchemaError> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(SchemaError::TooDeep);
        }
        let r = self.visit_inner(schema, hint);
        self.depth -= 1;
        r
    }

    fn visit_inner(&mut self, schema: &'a Value, hint: &str) -> Result<String, SchemaError> {
        let obj = match schema {
            Value::Bool(true) => return Ok("value".into()),
            Value::Bool(false) => {
                return Err(SchemaError::FalseSchema);
            }
            Value::Object(o) => o,
            other => {
                return Err(SchemaError::NotASchema(other.to_string()));
            }
        };
        let e = self.visit_object_schema(obj, hint)?;
        if obj.get("nullable").and_then(Value::as_bool) == Some(true) {
            return Ok(format!("({e} | null)"));
        }
        Ok(e)
    }

    fn visit_object_schema(
        &mut self,
        obj: &'a serde_json::Map<String, Value>,
        hint: &str,
    ) -> Result<String, SchemaError> {
        if let Some(r) = obj.get("$ref") {
            return self.visit_ref(r);
        }
        if let Some(c) = obj.get("const") {
            return Ok(json_literal(c));
        }
        if let Some(e) = obj.get("enum") {
            let values = e.as_array().ok_or(SchemaError::NotAnArray("enum"))?;
            if values.is_empty() {
                return Err(SchemaError::Empty("enum"));
            }
            let alts: Vec<String> = values.iter().map(json_literal).collect();
            return Ok(format!("({})", alts.join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = obj.get(key) {
                let alts = alts.as_array().ok_or(SchemaError::NotAnArray(key))?;
                if alts.is_empty() {
                    return Err(SchemaError::Empty(key));
                }
                let mut exprs = Vec::new();
                for (i, alt) in alts.iter().enumerate() {
                    exprs.push(self.visit(alt, &format!("{hint}-{i}"))?);
                }
                return Ok(format!("({})", exprs.join(" | ")));
            }
        }
        if let Some(all) = obj.get("allOf") {
            match all.as_array().map(Vec::as_slice) {
                Some([single]) => return self.visit(single, hint),
                _ => {
                    return Err(SchemaError::AllOfSeveral);
                }
            }
        }
        match obj.get("type") {
            None => {
                if obj.contains_key("properties") {
                    self.visit_typed(obj, "object", hint)
                } else if obj.contains_key("items") {
                    self.visit_typed(obj, "array", hint)
                } else {
                    Ok("value".into())
                }
            }
            Some(Value::String(t)) => self.visit_typed(obj, t, hint),
            Some(Value::Array(types)) => {
                let mut exprs = Vec::new();
                for t in types {
                    let t = t
                        .as_str()
                        .ok_or_else(|| SchemaError::BadType(t.to_string()))?;
                    exprs.push(self.visit_typed(obj, t, hint)?);
                }
                if exprs.is_empty() {
                    return Err(SchemaError::EmptyTypeList);
                }
                Ok(format!("({})", exprs.join(" | ")))
            }
            Some(other) => Err(SchemaError::BadType(other.to_string())),
        }
    }

    fn visit_ref(&mut self, r: &Value) -> Result<String, SchemaError> {
        let r = r.as_str().ok_or(SchemaError::RefNotString)?;
        if let Some(name) = self.refs.get(r) {
            return Ok(name.clone());
        }
        let pointer = r
            .strip_prefix('#')
            .ok_or_else(|| SchemaError::NonLocalRef(r.to_owned()))?;
        let target = self
            .root
            .pointer(pointer)
            .ok_or_else(|| SchemaError::UnresolvedRef(r.to_owned()))?;
        let hint = pointer.rsplit('/').next().unwrap_or("ref").to_owned();
        let name = self.fresh(&format!("ref-{hint}"));
        self.refs.insert(r.to_owned(), name.clone());
        let body = self.visit(target, &hint)?;
        self.rules.push((name.clone(), body));
        Ok(name)
    }

    fn visit_typed(
        &mut self,
        obj: &'a serde_json::Map<String, Value>,
        ty: &str,
        hint: &str,
    ) -> Result<String, SchemaError> {
        match ty {
            "string" => {
                let min = as_count(obj.get("minLength"), "minLength")?.unwrap_or(0);
                let max = as_count(obj.get("maxLength"), "maxLength")?;
                Ok(match (min, max) {
                    (0, None) => "string".into(),
                    (min, None) => format!("\"\\\"\" char{{{min},}} \"\\\"\" space"),
                    (min, Some(max)) if max >= min => {
                        format!("\"\\\"\" char{{{min},{max}}} \"\\\"\" space")
                    }
                    _ => {
                        return Err(SchemaError::MaxBelowMin {
                            min: "minLength",
                            max: "maxLength",
                        });
                    }
                })
            }
            "integer" => Ok("integer".into()),
            "number" => Ok("number".into()),
            "boolean" => Ok("boolean".into()),
            "null" => Ok("null".into()),
            "array" => {
                let item = match obj.get("items") {
                    None => "value".to_owned(),
                    Some(items) => {
                        let e = self.visit(items, &format!("{hint}-item"))?;
                        if is_simple(&e) {
                            e
                        } else {
                            self.rule(&format!("{hint}-item"), e)
                        }
                    }
                };
                let min = as_count(obj.get("minItems"), "minItems")?.unwrap_or(0);
                let max = as_count(obj.get("maxItems"), "maxItems")?;
                if max.is_some_and(|max| max < min) {
                    return Err(SchemaError::MaxBelowMin {
                        min: "minItems",
                        max: "maxItems",
                    });
                }
                let body = repeat_sep(&item, "\",\" space", min, max);
                Ok(self.rule(hint, format!("\"[\" space {body} \"]\" space")))
            }
            "object" => {
                let Some(props) = obj.get("properties") else {
                    return Ok("object".into());
                };
                let props = props
                    .as_object()
                    .ok_or(SchemaError::PropertiesNotAnObject)?;
                let required: HashSet<&str> = obj
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for r in &required {
                    if !props.contains_key(*r) {
                        return Err(SchemaError::RequiredNotInProperties((*r).to_owned()));
                    }
                }
                if props.is_empty() {
                    return Ok(self.rule(hint, "\"{\" space \"}\" space".into()));
                }
                // One `"key": value` expression per property, in declared order.
                let mut kvs = Vec::new();
                for (key, sub) in props {
                    let value = self.visit(sub, &format!("{hint}-{key}"))?;
                    let kv = format!(
                        "{} space \":\" space {value}",
                        gbnf_literal(&Value::String(key.clone()).to_string())
                    );
                    let name = self.rule(&format!("{hint}-{key}-kv"), kv);
                    kvs.push((name, required.contains(key.as_str())));
                }
                // rest[i]: properties i.. after at least one was written (each prefixed by a comma).
                // first[i]: properties i.. with at least one written, none before.
                let n = kvs.len();
                let mut rest = vec![String::new(); n + 1];
                for i in (0..n).rev() {
                    let (kv, req) = &kvs[i];
                    let part = if *req {
                        format!("\",\" space {kv}")
                    } else {
                        format!("(\",\" space {kv})?")
                    };
                    rest[i] = format!("{part} {}", rest[i + 1]).trim().to_owned();
                }
                let mut first: Vec<Option<String>> = vec![None; n + 1];
                for i in (0..n).rev() {
                    let (kv, req) = &kvs[i];
                    let this = format!("{kv} {}", rest[i + 1]).trim().to_owned();
                    first[i] = Some(match (*req, &first[i + 1]) {
                        (true, _) | (false, None) => this,
                        (false, Some(later)) => format!("({this}) | ({later})"),
                    });
                }
                let body = first[0].clone().expect("n > 0");
                let body = if required.is_empty() {
                    format!("({body})?")
                } else {
                    format!("({body})")
                };
                Ok(self.rule(hint, format!("\"{{\" space {body} \"}}\" space")))
            }
            other => Err(SchemaError::UnsupportedType(other.to_owned())),
        }
    }
}

fn is_primitive(name: &str) -> bool {
    matches!(
        name,
        "space"
            | "char"
            | "string"
            | "boolean"
            | "null"
            | "integral-part"
            | "integer"
            | "number"
            | "value"
            | "object"
            | "array"
    )
}

fn is_simple(expr: &str) -> bool {
    expr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What a row's schema must compile to.
    enum Expect {
        /// The whole grammar up to the shared primitives.
        Grammar(&'static str),
        /// Lines the grammar must contain (for schemas whose full grammar is long).
        Lines(&'static [&'static str]),
        /// The typed error.
        Error(SchemaError),
    }

    use Expect::{Error, Grammar, Lines};

    /// (what the row covers, schema, expectation). Properties are declared alphabetically, so
    /// the expected order holds with and without serde_json's `preserve_order`.
    fn table() -> Vec<(&'static str, Value, Expect)> {
        vec![
            // Scalars.
            (
                "string",
                json!({"type": "string"}),
                Grammar("root ::= string\n"),
            ),
            (
                "string with length bounds",
                json!({"type": "string", "minLength": 2, "maxLength": 5}),
                Grammar("root ::= \"\\\"\" char{2,5} \"\\\"\" space\n"),
            ),
            (
                "string with a minimum length only",
                json!({"type": "string", "minLength": 1}),
                Grammar("root ::= \"\\\"\" char{1,} \"\\\"\" space\n"),
            ),
            (
                "integer",
                json!({"type": "integer"}),
                Grammar("root ::= integer\n"),
            ),
            (
                "number",
                json!({"type": "number"}),
                Grammar("root ::= number\n"),
            ),
            (
                "numeric bounds are ignored",
                json!({"type": "number", "minimum": 0, "maximum": 1}),
                Grammar("root ::= number\n"),
            ),
            (
                "boolean",
                json!({"type": "boolean"}),
                Grammar("root ::= boolean\n"),
            ),
            ("null", json!({"type": "null"}), Grammar("root ::= null\n")),
            (
                "type list",
                json!({"type": ["integer", "null"]}),
                Grammar("root ::= (integer | null)\n"),
            ),
            (
                "nullable",
                json!({"type": "string", "nullable": true}),
                Grammar("root ::= (string | null)\n"),
            ),
            ("no type: any value", json!({}), Grammar("root ::= value\n")),
            (
                "`true`: any value",
                json!(true),
                Grammar("root ::= value\n"),
            ),
            // Enums and constants: the JSON serialisation, escaped for GBNF.
            (
                "enum of mixed values",
                json!({"enum": ["a", 1, null, true]}),
                Grammar(
                    "root ::= (\"\\\"a\\\"\" space | \"1\" space | \"null\" space | \"true\" space)\n",
                ),
            ),
            (
                "const with a control character",
                json!({"const": "tab\there"}),
                Grammar("root ::= \"\\\"tab\\\\there\\\"\" space\n"),
            ),
            (
                "anyOf",
                json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
                Grammar("root ::= (string | integer)\n"),
            ),
            (
                "allOf with one schema",
                json!({"allOf": [{"type": "boolean"}]}),
                Grammar("root ::= boolean\n"),
            ),
            // Objects.
            (
                "object without properties: any object",
                json!({"type": "object"}),
                Grammar("root ::= object\n"),
            ),
            (
                "object with no properties: only {}",
                json!({"type": "object", "properties": {}}),
                Grammar("root ::= root-1\nroot-1 ::= \"{\" space \"}\" space\n"),
            ),
            (
                "object with a required and an optional property",
                json!({
                    "type": "object",
                    "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                    "required": ["a"]
                }),
                Grammar(concat!(
                    "root ::= root-1\n",
                    "root-a-kv ::= \"\\\"a\\\"\" space \":\" space string\n",
                    "root-b-kv ::= \"\\\"b\\\"\" space \":\" space integer\n",
                    "root-1 ::= \"{\" space (root-a-kv (\",\" space root-b-kv)?) \"}\" space\n",
                )),
            ),
            (
                "object with every property required",
                json!({
                    "type": "object",
                    "properties": {"a": {"type": "boolean"}, "b": {"type": "number"}},
                    "required": ["a", "b"]
                }),
                Lines(&["root-1 ::= \"{\" space (root-a-kv \",\" space root-b-kv) \"}\" space"]),
            ),
            (
                "object with only optional properties: any subset in order, or none",
                json!({
                    "type": "object",
                    "properties": {"a": {"type": "string"}, "b": {"type": "string"}}
                }),
                Lines(&[
                    "root-1 ::= \"{\" space ((root-a-kv (\",\" space root-b-kv)?) | (root-b-kv))? \"}\" space",
                ]),
            ),
            (
                "nested object",
                json!({
                    "type": "object",
                    "properties": {
                        "inner": {
                            "type": "object",
                            "properties": {"x": {"type": "boolean"}},
                            "required": ["x"]
                        }
                    },
                    "required": ["inner"]
                }),
                Grammar(concat!(
                    "root ::= root-1\n",
                    "root-inner-x-kv ::= \"\\\"x\\\"\" space \":\" space boolean\n",
                    "root-inner ::= \"{\" space (root-inner-x-kv) \"}\" space\n",
                    "root-inner-kv ::= \"\\\"inner\\\"\" space \":\" space root-inner\n",
                    "root-1 ::= \"{\" space (root-inner-kv) \"}\" space\n",
                )),
            ),
            (
                "property names are escaped",
                json!({"type": "object", "properties": {"say \"hi\"\n": {"type": "null"}}}),
                Lines(&[
                    "root-say--hi---kv ::= \"\\\"say \\\\\\\"hi\\\\\\\"\\\\n\\\"\" space \":\" space null",
                ]),
            ),
            // Arrays.
            (
                "array without items",
                json!({"type": "array"}),
                Lines(&["root-1 ::= \"[\" space (value (\",\" space value){0,})? \"]\" space"]),
            ),
            (
                "array with item bounds",
                json!({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3}),
                Grammar(concat!(
                    "root ::= root-1\n",
                    "root-1 ::= \"[\" space integer (\",\" space integer){0,2} \"]\" space\n",
                )),
            ),
            (
                "array of at least two",
                json!({"type": "array", "items": {"type": "number"}, "minItems": 2}),
                Lines(&["root-1 ::= \"[\" space number (\",\" space number){1,} \"]\" space"]),
            ),
            (
                "empty array only",
                json!({"type": "array", "items": {"type": "number"}, "maxItems": 0}),
                Lines(&["root-1 ::= \"[\" space  \"]\" space"]),
            ),
            (
                "array of objects: the item gets a rule",
                json!({
                    "type": "array",
                    "items": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
                }),
                Lines(&[
                    "root-item ::= \"{\" space (root-item-n-kv) \"}\" space",
                    "root-1 ::= \"[\" space (root-item (\",\" space root-item){0,})? \"]\" space",
                ]),
            ),
            // References.
            (
                "recursive local $ref",
                json!({
                    "$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
                    "$ref": "#/$defs/node"
                }),
                Lines(&[
                    "root ::= ref-node",
                    "node-kids ::= \"[\" space (ref-node (\",\" space ref-node){0,})? \"]\" space",
                ]),
            ),
            // Unsupported or invalid schemas: a typed error naming the problem.
            (
                "unknown type",
                json!({"type": "frobnicate"}),
                Error(SchemaError::UnsupportedType("frobnicate".into())),
            ),
            (
                "unknown type inside a property",
                json!({"type": "object", "properties": {"a": {"type": "date"}}}),
                Error(SchemaError::UnsupportedType("date".into())),
            ),
            (
                "type that is not a name",
                json!({"type": 5}),
                Error(SchemaError::BadType("5".into())),
            ),
            (
                "type list with a non-name",
                json!({"type": ["string", 1]}),
                Error(SchemaError::BadType("1".into())),
            ),
            (
                "empty type list",
                json!({"type": []}),
                Error(SchemaError::EmptyTypeList),
            ),
            ("`false`", json!(false), Error(SchemaError::FalseSchema)),
            (
                "a number as a schema",
                json!(42),
                Error(SchemaError::NotASchema("42".into())),
            ),
            (
                "enum not an array",
                json!({"enum": "a"}),
                Error(SchemaError::NotAnArray("enum")),
            ),
            (
                "empty enum",
                json!({"enum": []}),
                Error(SchemaError::Empty("enum")),
            ),
            (
                "oneOf not an array",
                json!({"oneOf": {}}),
                Error(SchemaError::NotAnArray("oneOf")),
            ),
            (
                "empty anyOf",
                json!({"anyOf": []}),
                Error(SchemaError::Empty("anyOf")),
            ),
            (
                "allOf of two",
                json!({"allOf": [{}, {}]}),
                Error(SchemaError::AllOfSeveral),
            ),
            (
                "remote $ref",
                json!({"$ref": "http://example.com/x"}),
                Error(SchemaError::NonLocalRef("http://example.com/x".into())),
            ),
            (
                "dangling $ref",
                json!({"$ref": "#/$defs/missing"}),
                Error(SchemaError::UnresolvedRef("#/$defs/missing".into())),
            ),
            (
                "$ref not a string",
                json!({"$ref": 1}),
                Error(SchemaError::RefNotString),
            ),
            (
                "negative minLength",
                json!({"type": "string", "minLength": -1}),
                Error(SchemaError::NotACount {
                    keyword: "minLength",
                    value: "-1".into(),
                }),
            ),
            (
                "fractional maxItems",
                json!({"type": "array", "maxItems": 1.5}),
                Error(SchemaError::NotACount {
                    keyword: "maxItems",
                    value: "1.5".into(),
                }),
            ),
            (
                "maxLength below minLength",
                json!({"type": "string", "minLength": 3, "maxLength": 1}),
                Error(SchemaError::MaxBelowMin {
                    min: "minLength",
                    max: "maxLength",
                }),
            ),
            (
                "maxItems below minItems",
                json!({"type": "array", "minItems": 3, "maxItems": 1}),
                Error(SchemaError::MaxBelowMin {
                    min: "minItems",
                    max: "maxItems",
                }),
            ),
            (
                "properties not an object",
                json!({"type": "object", "properties": ["a"]}),
                Error(SchemaError::PropertiesNotAnObject),
            ),
            (
                "required property missing from properties",
                json!({"type": "object", "properties": {"a": {}}, "required": ["a", "b"]}),
                Error(SchemaError::RequiredNotInProperties("b".into())),
            ),
            (
                "nested too deep",
                nested_arrays(65),
                Error(SchemaError::TooDeep),
            ),
        ]
    }

    /// `depth` schemas nested through `items`.
    fn nested_arrays(depth: usize) -> Value {
        (1..depth).fold(
            json!({"type": "integer"}),
            |inner, _| json!({"type": "array", "items": inner}),
        )
    }

    /// The rule names a grammar's bodies use (outside literals, character classes and counts).
    fn rule_references(body: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' | '[' => {
                    let close = if c == '"' { '"' } else { ']' };
                    while let Some(d) = chars.next() {
                        match d {
                            '\\' => {
                                chars.next();
                            }
                            d if d == close => break,
                            _ => {}
                        }
                    }
                }
                '{' => for _ in chars.by_ref().take_while(|&d| d != '}') {},
                c if c.is_ascii_alphabetic() => {
                    let mut name = c.to_string();
                    while let Some(&d) = chars.peek() {
                        if !(d.is_ascii_alphanumeric() || d == '-') {
                            break;
                        }
                        name.push(d);
                        chars.next();
                    }
                    names.push(name);
                }
                _ => {}
            }
        }
        names
    }

    #[test]
    fn the_table() {
        let mut failures = Vec::new();
        for (what, schema, expect) in table() {
            let got = json_schema_to_gbnf(&schema);
            let problem = match (&expect, &got) {
                (Error(want), Err(e)) if e == want => None,
                (Error(want), _) => Some(format!("expected error {want:?}, got {got:?}")),
                (_, Err(e)) => Some(format!("expected a grammar, got error {e:?}")),
                (Grammar(want), Ok(g)) => (g.strip_suffix(PRIMITIVES) != Some(*want))
                    .then(|| format!("expected\n{want}got\n{g}")),
                (Lines(want), Ok(g)) => {
                    let missing: Vec<_> = want
                        .iter()
                        .filter(|l| !g.lines().any(|x| x == **l))
                        .collect();
                    (!missing.is_empty()).then(|| format!("missing lines {missing:#?} in\n{g}"))
                }
            };
            if let Some(problem) = problem {
                failures.push(format!("{what}: {schema}\n{problem}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn every_grammar_defines_root_once_and_every_rule_it_uses() {
        for (what, schema, expect) in table() {
            if matches!(expect, Error(_)) {
                continue;
            }
            let g = json_schema_to_gbnf(&schema).unwrap();
            assert!(
                g.starts_with("root ::= ") && g.ends_with(PRIMITIVES),
                "{what}: {g}"
            );
            let rules: Vec<(&str, &str)> = g
                .lines()
                .map(|l| {
                    l.split_once(" ::= ")
                        .unwrap_or_else(|| panic!("{what}: bad line {l:?}"))
                })
                .collect();
            let defined: HashSet<&str> = rules.iter().map(|(name, _)| *name).collect();
            assert_eq!(
                defined.len(),
                rules.len(),
                "{what}: a rule defined twice\n{g}"
            );
            for (name, body) in &rules {
                for used in rule_references(body) {
                    assert!(
                        defined.contains(used.as_str()),
                        "{what}: {name} uses undefined {used}\n{g}"
                    );
                }
            }
        }
    }

    #[test]
    fn properties_come_in_the_map_order() {
        let g = json_schema_to_gbnf(&json!({
            "type": "object",
            "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}, "opt": {"type": "boolean"}},
            "required": ["zeta", "alpha"]
        }))
        .unwrap();
        // Declared order is the order of the parsed map: insertion order with serde_json's
        // `preserve_order` feature, alphabetical without it.
        let schema_keys: Vec<String> = json!({"zeta": 1, "alpha": 2, "opt": 3})
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let pos: Vec<usize> = schema_keys
            .iter()
            .map(|k| g.rfind(&format!("\\\"{k}\\\"")).unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{g}");
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            (
                SchemaError::UnsupportedType("frobnicate".into()),
                "unsupported type \"frobnicate\"",
            ),
            (
                SchemaError::MaxBelowMin {
                    min: "minItems",
                    max: "maxItems",
                },
                "maxItems < minItems",
            ),
            (
                SchemaError::NotACount {
                    keyword: "minLength",
                    value: "-1".into(),
                },
                "minLength must be a non-negative integer, got -1",
            ),
            (
                SchemaError::NonLocalRef("http://x".into()),
                "only local $refs are supported, got http://x",
            ),
            (
                SchemaError::RequiredNotInProperties("b".into()),
                "required property \"b\" is not in properties",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
