//! The template engine: minijinja in strict mode, sandboxed and bounded, with errors that
//! point at the template's file and line, and Ignition validation.
//!
//! It knows nothing of profiles: it compiles named templates, renders one with a context, and
//! checks an Ignition config. What a machine is served (its context, its iPXE script, its
//! configs) is `profiles::documents`.
//!
//! - **Strict**: an undefined variable is an error, also inside `tojson`, `urlencode` and
//!   `join`, which minijinja would otherwise turn into `null` or "".
//! - **Sandboxed**: no loader, so `{% include %}` reaches only templates added here; nothing
//!   touches the filesystem or network while rendering. A fuel limit bounds every render.
//! - **Ignition** output is validated before anyone gets it: JSON, `ignition.version` a 3.x
//!   spec version the `ignition-config` crate knows (3.0–3.6), every key part of that spec.
//!   Texts that passed are remembered by hash, so 300 machines with the same config cost one
//!   parse.

use std::collections::{BTreeMap, HashMap};

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::diag::{Diagnostic, Location};

/// Template instructions per render; bounds runaway loops in operator templates.
const TEMPLATE_FUEL: u64 = 5_000_000;
/// The most a render may write: an Ignition config with embedded files stays well below;
/// a template that doubles a string in a loop is stopped here.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// Why a render failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenderError {
    /// The template failed (undefined variable, bad filter, out of fuel, ...).
    #[error("{0}")]
    Template(Diagnostic),
    /// The output grew beyond [`MAX_OUTPUT_BYTES`].
    #[error("{template}: the rendered output is larger than {} MiB", MAX_OUTPUT_BYTES >> 20)]
    TooLarge {
        /// The template's file.
        template: String,
    },
    /// The Ignition template rendered, but the result is not a valid Ignition config.
    #[error("{template}: rendered Ignition config is invalid: {message}")]
    InvalidIgnition {
        /// The template's file.
        template: String,
        /// What is wrong.
        message: IgnitionError,
    },
}

/// A render's output, refused beyond [`MAX_OUTPUT_BYTES`].
struct Limited(Vec<u8>);

impl std::io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT_BYTES {
            return Err(std::io::Error::other("template output too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compiled templates, where each came from, and the Ignition texts known to be valid.
pub struct Engine {
    env: Environment<'static>,
    /// Template name → the file (and first line) it came from, for error messages.
    origins: HashMap<String, Location>,
    /// Hashes of Ignition texts already validated, so identical renders skip re-parsing.
    validated: ValidatedCache,
    /// Templates without a tag (most kernel arguments): their output, known at load time.
    statics: HashMap<String, String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("templates", &self.origins.len())
            .finish_non_exhaustive()
    }
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl Engine {
    /// An engine with no templates.
    pub fn new() -> Engine {
        Engine {
            env: new_environment(),
            origins: HashMap::new(),
            validated: ValidatedCache::default(),
            statics: HashMap::new(),
        }
    }

    /// Compile `text` as template `name`, which came from `origin` (its first line there).
    pub fn add(&mut self, name: String, text: String, origin: Location) -> Result<(), Diagnostic> {
        self.origins.insert(name.clone(), origin);
        if !["{{", "{%", "{#"].iter().any(|tag| text.contains(tag)) {
            // What minijinja would render: the text, less one trailing newline.
            let out = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text);
            self.statics.insert(name.clone(), out.to_string());
        } else {
            self.statics.remove(&name);
        }
        self.env
            .add_template_owned(name, text)
            .map_err(|e| diagnostic(&self.origins, &e))
    }

    /// Where template `name` came from.
    pub fn origin(&self, name: &str) -> Option<&Location> {
        self.origins.get(name)
    }

    /// Render template `name` with `ctx` (a map: build it once per request, renders share it).
    pub fn render(&self, name: &str, ctx: &Value) -> Result<String, RenderError> {
        if let Some(text) = self.statics.get(name) {
            return Ok(text.clone());
        }
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| RenderError::Template(diagnostic(&self.origins, &e)))?;
        let mut out = Limited(Vec::new());
        match tmpl.render_captured_to(ctx.clone(), &mut out) {
            Ok(_) => String::from_utf8(out.0).map_err(|_| RenderError::TooLarge {
                template: name.to_string(),
            }),
            Err(e) if e.kind() == minijinja::ErrorKind::WriteFailure => {
                Err(RenderError::TooLarge {
                    template: self
                        .origins
                        .get(name)
                        .map_or(name.to_string(), |l| l.path.display().to_string()),
                })
            }
            Err(e) => Err(RenderError::Template(diagnostic(&self.origins, &e))),
        }
    }

    /// Render template `name` as an Ignition config and validate the result.
    pub fn render_ignition(&self, name: &str, ctx: &Value) -> Result<String, RenderError> {
        let body = self.render(name, ctx)?;
        self.validated
            .check(&body)
            .map_err(|message| RenderError::InvalidIgnition {
                template: self
                    .origins
                    .get(name)
                    .map_or(name.to_string(), |l| l.path.display().to_string()),
                message,
            })?;
        Ok(body)
    }
}

/// Any serializable value as a template value.
pub fn to_value<T: serde::Serialize>(v: T) -> Value {
    Value::from(minijinja::value::Serde(v))
}

/// Turn a minijinja error into a diagnostic at the template's file and line.
fn diagnostic(origins: &HashMap<String, Location>, err: &minijinja::Error) -> Diagnostic {
    let name = err.name().unwrap_or("<template>");
    let (path, line) = match origins.get(name) {
        Some(loc) => (loc.path.clone(), loc.line + err.line().unwrap_or(1) - 1),
        None => (name.into(), err.line().unwrap_or(1)),
    };
    let mut msg = err.kind().to_string();
    if let Some(detail) = err.detail() {
        msg = format!("{msg}: {detail}");
    }
    // Quote the template line: the error's own range is often just a filter name.
    if let (Some(src), Some(n)) = (err.template_source(), err.line())
        && let Some(text) = src.lines().nth(n.saturating_sub(1)).map(str::trim)
        && !text.is_empty()
    {
        let text: String = if text.chars().count() > 160 {
            text.chars().take(157).chain("...".chars()).collect()
        } else {
            text.to_string()
        };
        msg = format!("{msg} in `{text}`");
    }
    Diagnostic::new(path, Some(line), msg)
}

fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(TEMPLATE_FUEL));
    // Output is iPXE script, JSON or plain text: never HTML-escape.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    // Strict mode still lets these built-ins turn an undefined value into `null` or "" (a
    // typo'd variable in an Ignition template would become `"sshAuthorizedKeys": null`).
    // Wrap them so an undefined input is the error strict mode promises.
    env.add_filter("tojson", strict_tojson);
    env.add_filter("urlencode", strict_urlencode);
    env.add_filter("join", strict_join);
    env
}

/// An error if `v` is undefined or holds an undefined value anywhere inside.
fn require_defined(v: &Value, depth: usize) -> Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    if v.is_undefined() {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::UndefinedError,
            "a filter was given an undefined value",
        ));
    }
    if depth < 32 && matches!(v.kind(), ValueKind::Seq | ValueKind::Map) {
        for item in v.try_iter()? {
            let inner = if v.kind() == ValueKind::Map {
                v.get_item(&item)?
            } else {
                item
            };
            require_defined(&inner, depth + 1)?;
        }
    }
    Ok(())
}

fn strict_tojson(
    v: &Value,
    indent: Option<Value>,
    args: minijinja::value::Kwargs,
) -> Result<Value, minijinja::Error> {
    require_defined(v, 0)?;
    minijinja::filters::tojson(v, indent, args)
}

fn strict_urlencode(v: &Value) -> Result<String, minijinja::Error> {
    require_defined(v, 0)?;
    minijinja::filters::urlencode(v)
}

fn strict_join(
    state: &mut minijinja::State<'_, '_>,
    v: &Value,
    joiner: Option<minijinja::value::StringInput<'_>>,
    attribute: Option<&str>,
    args: minijinja::value::Kwargs,
) -> Result<Value, minijinja::Error> {
    require_defined(v, 0)?;
    minijinja::filters::join(state, v, joiner, attribute, args)
}

/// Matchbox-style metadata: `KEY=value` lines, keys upper-cased, nested keys joined by `_`.
pub fn metadata(ctx: &BTreeMap<String, Value>) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        if let Ok(json) = serde_json::to_value(v) {
            flatten(prefix, &json, out);
        }
    }
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    flatten(&format!("{prefix}_{}", k.to_ascii_uppercase()), v, out);
                }
            }
            serde_json::Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            serde_json::Value::Null => {}
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    for (k, v) in ctx {
        if k == "query" || k == "base_url" {
            continue;
        }
        walk(&k.to_ascii_uppercase(), v, &mut out);
    }
    out.into_iter()
        .map(|(k, v)| {
            format!(
                "{}={}\n",
                k.replace(['-', '.'], "_"),
                v.replace('\n', "\\n")
            )
        })
        .collect()
}

/// Remembers which Ignition texts passed validation. Validation depends on the text alone, so
/// a machine fetching the same config again (or 300 machines with identical configs) costs a
/// hash instead of two JSON parses. Keyed SipHash with a random key: request parameters that
/// reach the output cannot be used to forge a collision.
#[derive(Debug, Default)]
pub(crate) struct ValidatedCache {
    state: std::hash::RandomState,
    /// A std mutex around a set lookup or insert; never held across `.await`.
    seen: std::sync::Mutex<std::collections::HashSet<u64>>,
}

/// Entries kept before the cache starts over (bounds memory; a miss only costs a parse).
const VALIDATED_MAX: usize = 16_384;

impl ValidatedCache {
    /// Validate `text`, or recall that it was valid.
    pub(crate) fn check(&self, text: &str) -> Result<(), IgnitionError> {
        use std::hash::BuildHasher;
        let key = self.state.hash_one(text);
        if self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
        {
            return Ok(());
        }
        validate_ignition(text)?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= VALIDATED_MAX {
            seen.clear();
        }
        seen.insert(key);
        Ok(())
    }
}

/// Why a text is not an Ignition config Kindling hands out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgnitionError {
    /// Not JSON at all.
    #[error("not JSON: {message} (line {line} column {column})")]
    NotJson {
        /// The parser's message.
        message: String,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
    },
    /// No `ignition.version`.
    #[error("missing ignition.version")]
    NoVersion,
    /// `ignition.version` is not a string.
    #[error("ignition.version is not a string")]
    VersionNotString,
    /// A spec version other than 3.x.
    #[error("ignition.version {0:?} is not a 3.x spec version")]
    NotV3(String),
    /// The `ignition-config` crate refuses it (a type, an unsupported version).
    #[error("{0}")]
    Invalid(String),
    /// Keys that are not part of the spec (typos that Ignition would ignore).
    #[error("not part of Ignition spec {version}: {}", keys.join(", "))]
    UnknownKeys {
        /// The spec version.
        version: String,
        /// The keys.
        keys: Vec<String>,
    },
}

/// Check that `text` is an Ignition config of a 3.x spec version, with only keys of that spec.
pub fn validate_ignition(text: &str) -> Result<(), IgnitionError> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| IgnitionError::NotJson {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
    let version = json
        .get("ignition")
        .and_then(|i| i.get("version"))
        .ok_or(IgnitionError::NoVersion)?
        .as_str()
        .ok_or(IgnitionError::VersionNotString)?;
    if !version.starts_with("3.") {
        return Err(IgnitionError::NotV3(version.to_string()));
    }
    let (_, warnings) = ignition_config::Config::parse_str(text)
        .map_err(|e| IgnitionError::Invalid(e.to_string()))?;
    if !warnings.is_empty() {
        return Err(IgnitionError::UnknownKeys {
            version: version.to_string(),
            keys: warnings.iter().map(|w| w.to_string()).collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignition_validation() {
        assert!(validate_ignition(r#"{"ignition":{"version":"3.4.0"}}"#).is_ok());
        assert!(
            validate_ignition(r#"{"ignition":{"version":"3.0.0"},"systemd":{"units":[]}}"#).is_ok()
        );
        let e = validate_ignition(r#"{"ignition":{"version":"3.4.0"},"sytemd":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sytemd"), "{e}");
        let e = validate_ignition(r#"{"ignition":{"version":"2.2.0"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a 3.x"), "{e}");
        let e = validate_ignition(r#"{"ignition":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing ignition.version"), "{e}");
        let e = validate_ignition("{\n\"ignition\": {\"version\": \"3.4.0\"},\n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not JSON") && e.contains("line 3"), "{e}");
        let e = validate_ignition(r#"{"ignition":{"version":"3.99.0"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported"), "{e}");
        let e = validate_ignition(
            r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":1}]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn output_is_bounded_in_size_as_well_as_in_instructions() {
        let mut e = Engine::new();
        let origin = |n: &str| Location {
            path: format!("/p/{n}").into(),
            line: 1,
        };
        e.add(
            "big".into(),
            "{% for i in range(40) %}{{ s }}{% endfor %}".into(),
            origin("big.j2"),
        )
        .unwrap();
        let mut ctx = BTreeMap::new();
        ctx.insert("s".to_string(), Value::from("x".repeat(1 << 20)));
        let err = e
            .render("big", &Value::from(ctx.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/p/big.j2") && err.contains("larger than 16 MiB"),
            "{err}"
        );
        ctx.insert("s".to_string(), Value::from("x".repeat(1 << 10)));
        assert_eq!(e.render("big", &Value::from(ctx)).unwrap().len(), 40 << 10);
    }

    #[test]
    fn validated_cache_remembers_only_valid_texts() {
        let cache = ValidatedCache::default();
        let good = r#"{"ignition":{"version":"3.4.0"}}"#;
        let bad = r#"{"ignition":{"version":"2.0.0"}}"#;
        assert!(cache.check(good).is_ok());
        assert!(cache.check(good).is_ok());
        assert!(cache.check(bad).is_err());
        assert!(
            cache.check(bad).is_err(),
            "an invalid text is never cached as valid"
        );
        assert_eq!(cache.seen.lock().unwrap().len(), 1);
    }

    /// Templates without a tag are answered from load time, byte for byte what minijinja
    /// renders (one trailing newline dropped).
    #[test]
    fn templates_without_tags_render_as_minijinja_would() {
        let mut e = Engine::new();
        let reference = new_environment();
        let origin = Location {
            path: "/p/a".into(),
            line: 1,
        };
        let texts = [
            "console=ttyS0",
            "plain\n",
            "two\n\n",
            "crlf\r\n",
            "a{b} }} %}",
            "",
            "x={{ y }}",
        ];
        let ctx = Value::from(BTreeMap::from([("y".to_string(), Value::from(1))]));
        for (i, text) in texts.iter().enumerate() {
            let name = format!("t{i}");
            e.add(name.clone(), text.to_string(), origin.clone())
                .unwrap();
            let want = reference.render_str(text, ctx.clone()).unwrap();
            assert_eq!(e.render(&name, &ctx).unwrap(), want, "{text:?}");
        }
        assert_eq!(e.statics.len(), texts.len() - 1, "all but the tagged one");
        // Replaced by a tagged template, a name renders as a template again.
        e.add("t0".into(), "{{ y }}".into(), origin).unwrap();
        assert_eq!(e.render("t0", &ctx).unwrap(), "1");
    }

    #[test]
    fn metadata_is_flat_key_value() {
        let mut ctx = BTreeMap::new();
        ctx.insert("mac".to_string(), Value::from("52:54:00:00:00:01"));
        ctx.insert(
            "k8s".to_string(),
            crate::render::to_value(serde_json::json!({"version": "1.31", "ha": true})),
        );
        ctx.insert(
            "query".to_string(),
            crate::render::to_value(serde_json::json!({"x": "y"})),
        );
        assert_eq!(
            metadata(&ctx),
            "K8S_HA=true\nK8S_VERSION=1.31\nMAC=52:54:00:00:00:01\n"
        );
    }
}
