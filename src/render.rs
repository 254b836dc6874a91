//! Rendering what a machine is served: its iPXE script, Ignition config, metadata and generic
//! templates, with minijinja in strict mode.
//!
//! Variables every template sees: `mac`, `hostname`, `profile`, `base_url`, `query` (every
//! request parameter), the profile's `[vars]` overridden by the machine's, and — only when
//! known — `ip`, `uuid`, `arch`, `platform`. Strict mode makes a missing variable an error, so
//! templates guard optional ones with `{% if ip is defined %}`. The iPXE script template also
//! sees the rendered boot section: `kernel`, `initrds`, `initrd_names`, `args`, `local`.
//!
//! Ignition output is validated before anyone gets it: JSON, `ignition.version` a 3.x spec
//! version the `ignition-config` crate knows (3.0–3.6), every key part of that spec. A broken
//! config is a load error when `check` or a reload can see it, and a 500 at request time
//! otherwise; it is never handed to a machine.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use minijinja::Value;

use crate::diag::Diagnostic;
use crate::profiles::{Facts, Location, Machine, Profile, ProfileSet};

/// What to render for a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// The iPXE script (`/ipxe`).
    Ipxe,
    /// The Ignition config (`/ignition`).
    Ignition,
    /// `KEY=value` lines (`/metadata`).
    Metadata,
    /// A generic template (`/generic`), by name; `None` picks the profile's only one.
    Generic(Option<String>),
}

impl What {
    /// The name used in logs and on the command line.
    pub fn label(&self) -> String {
        match self {
            What::Ipxe => "ipxe".into(),
            What::Ignition => "ignition".into(),
            What::Metadata => "metadata".into(),
            What::Generic(None) => "generic".into(),
            What::Generic(Some(n)) => format!("generic:{n}"),
        }
    }
}

/// A rendered document.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The text served.
    pub body: String,
    /// Its media type.
    pub content_type: &'static str,
}

/// Why a render failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenderError {
    /// The template failed (undefined variable, bad filter, out of fuel, ...).
    #[error("{0}")]
    Template(Diagnostic),
    /// The Ignition template rendered, but the result is not a valid Ignition config.
    #[error("{template}: rendered Ignition config is invalid: {message}")]
    InvalidIgnition {
        /// The template's file.
        template: String,
        /// What is wrong.
        message: String,
    },
    /// The profile has no template of that kind.
    #[error("profile {profile:?} has no {what} template")]
    Missing {
        /// The profile.
        profile: String,
        /// `ignition`, `generic`, or `generic "name"`.
        what: String,
    },
}

/// Any serializable value as a template value.
pub(crate) fn to_value<T: serde::Serialize>(v: T) -> Value {
    Value::from(minijinja::value::Serde(v))
}

/// Turn a minijinja error into a diagnostic at the template's file and line.
pub(crate) fn diagnostic(
    origins: &HashMap<String, Location>,
    err: &minijinja::Error,
) -> Diagnostic {
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

/// The hostname a machine gets: assigned, else reported, else derived from its MAC.
pub fn hostname(facts: &Facts, machine: Option<&Machine>) -> String {
    machine
        .and_then(|m| m.hostname.clone())
        .or_else(|| facts.hostname.clone())
        .unwrap_or_else(|| format!("node-{}", facts.mac.to_string().replace(':', "")))
}

/// The variables a template sees for this machine.
pub fn context(
    profile: &Profile,
    machine: Option<&Machine>,
    facts: &Facts,
    base_url: &str,
) -> BTreeMap<String, Value> {
    let mut ctx: BTreeMap<String, Value> = profile.vars.clone();
    if let Some(m) = machine {
        ctx.extend(m.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    ctx.insert("mac".into(), facts.mac.to_string().into());
    ctx.insert("hostname".into(), hostname(facts, machine).into());
    ctx.insert("profile".into(), profile.name.clone().into());
    ctx.insert("base_url".into(), base_url.into());
    ctx.insert("query".into(), crate::render::to_value(&facts.labels));
    if let Some(ip) = machine.and_then(|m| m.ip) {
        ctx.insert("ip".into(), ip.to_string().into());
    }
    if let Some(uuid) = facts
        .uuid
        .clone()
        .or_else(|| machine.and_then(|m| m.uuid.clone()))
    {
        ctx.insert("uuid".into(), uuid.into());
    }
    if let Some(arch) = &facts.arch {
        ctx.insert("arch".into(), arch.clone().into());
    }
    if let Some(platform) = &facts.platform {
        ctx.insert("platform".into(), platform.clone().into());
    }
    ctx
}

/// An asset reference as a URL: absolute URLs stay, `/path` is on this server, anything else
/// is under `/assets/`.
fn asset_url(base_url: &str, s: &str) -> String {
    if s.contains("://") {
        s.to_string()
    } else if s.starts_with('/') {
        format!("{base_url}{s}")
    } else {
        format!("{base_url}/assets/{s}")
    }
}

impl ProfileSet {
    fn render_named(
        &self,
        name: &str,
        ctx: &BTreeMap<String, Value>,
    ) -> Result<String, RenderError> {
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| RenderError::Template(diagnostic(&self.origins, &e)))?;
        tmpl.render(ctx)
            .map_err(|e| RenderError::Template(diagnostic(&self.origins, &e)))
    }

    /// The iPXE script of `profile` telling the machine to boot from its local disk (its
    /// `after_provision = "local"`, or the operator's next boot).
    pub fn render_local(
        &self,
        profile: &Profile,
        machine: Option<&Machine>,
        facts: &Facts,
        base_url: &str,
    ) -> Result<Rendered, RenderError> {
        let ctx = context(profile, machine, facts, base_url);
        self.render_ipxe(profile, ctx, base_url, true)
    }

    fn render_ipxe(
        &self,
        profile: &Profile,
        mut ctx: BTreeMap<String, Value>,
        base_url: &str,
        local: bool,
    ) -> Result<Rendered, RenderError> {
        let boot = &profile.boot;
        let kernel = match &boot.kernel {
            Some(k) => Some(asset_url(base_url, self.render_named(k, &ctx)?.trim())),
            None => None,
        };
        let mut initrds = Vec::new();
        for t in &boot.initrds {
            initrds.push(asset_url(base_url, self.render_named(t, &ctx)?.trim()));
        }
        let names: Vec<String> = initrds
            .iter()
            .map(|u| {
                let path = u.split(['?', '#']).next().unwrap_or(u);
                path.rsplit('/').next().unwrap_or(path).to_string()
            })
            .collect();
        let mut args = Vec::new();
        for t in &boot.args {
            let a = self.render_named(t, &ctx)?;
            if !a.trim().is_empty() {
                args.push(a.trim().to_string());
            }
        }
        ctx.insert("local".into(), local.into());
        ctx.insert("kernel".into(), crate::render::to_value(&kernel));
        ctx.insert("initrds".into(), crate::render::to_value(&initrds));
        ctx.insert("initrd_names".into(), crate::render::to_value(&names));
        ctx.insert("args".into(), crate::render::to_value(&args));
        let body = self.render_named(&boot.script, &ctx)?;
        Ok(Rendered {
            body,
            content_type: "text/plain; charset=utf-8",
        })
    }

    /// The chain script every iPXE client fetches first (`/boot.ipxe`).
    pub fn render_boot_script(&self, base_url: &str) -> Result<String, RenderError> {
        let mut ctx = BTreeMap::new();
        ctx.insert("base_url".to_string(), Value::from(base_url));
        self.render_named("ipxe/boot.ipxe.j2", &ctx)
    }

    /// Render `what` for a machine that got `profile`.
    pub fn render(
        &self,
        profile: &Profile,
        machine: Option<&Machine>,
        facts: &Facts,
        base_url: &str,
        what: &What,
    ) -> Result<Rendered, RenderError> {
        let ctx = context(profile, machine, facts, base_url);
        match what {
            What::Ipxe => self.render_ipxe(profile, ctx, base_url, profile.boot.local),
            What::Ignition => {
                let name = profile
                    .ignition
                    .as_ref()
                    .ok_or_else(|| RenderError::Missing {
                        profile: profile.name.clone(),
                        what: "ignition".into(),
                    })?;
                let body = self.render_named(name, &ctx)?;
                self.validated
                    .check(&body)
                    .map_err(|message| RenderError::InvalidIgnition {
                        template: self
                            .origins
                            .get(name)
                            .map_or(name.clone(), |l| l.path.display().to_string()),
                        message,
                    })?;
                Ok(Rendered {
                    body,
                    content_type: "application/vnd.coreos.ignition+json",
                })
            }
            What::Metadata => Ok(Rendered {
                body: metadata(&ctx),
                content_type: "text/plain; charset=utf-8",
            }),
            What::Generic(wanted) => {
                let name = match wanted {
                    Some(n) => profile.generic.get(n),
                    None if profile.generic.len() == 1 => profile.generic.values().next(),
                    None => profile.generic.get("default"),
                };
                let name = name.ok_or_else(|| RenderError::Missing {
                    profile: profile.name.clone(),
                    what: match wanted {
                        Some(n) => format!("generic {n:?}"),
                        None if profile.generic.is_empty() => "generic".into(),
                        None => format!(
                            "default generic (it has {}: pass name=...)",
                            profile
                                .generic
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    },
                })?;
                let body = self.render_named(name, &ctx)?;
                Ok(Rendered {
                    body,
                    content_type: "text/plain; charset=utf-8",
                })
            }
        }
    }
}

/// Matchbox-style metadata: `KEY=value` lines, keys upper-cased, nested keys joined by `_`.
fn metadata(ctx: &BTreeMap<String, Value>) -> String {
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
    pub(crate) fn check(&self, text: &str) -> Result<(), String> {
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

/// Check that `text` is an Ignition config of a 3.x spec version, with only keys of that spec.
pub fn validate_ignition(text: &str) -> Result<(), String> {
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("not JSON: {e} (line {} column {})", e.line(), e.column()))?;
    let version = json
        .get("ignition")
        .and_then(|i| i.get("version"))
        .ok_or("missing ignition.version")?
        .as_str()
        .ok_or("ignition.version is not a string")?;
    if !version.starts_with("3.") {
        return Err(format!(
            "ignition.version {version:?} is not a 3.x spec version"
        ));
    }
    let (_, warnings) = ignition_config::Config::parse_str(text).map_err(|e| e.to_string())?;
    if !warnings.is_empty() {
        let keys: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
        return Err(format!(
            "not part of Ignition spec {version}: {}",
            keys.join(", ")
        ));
    }
    Ok(())
}

/// Render everything each profile serves, for every machine it can be served to, and collect
/// the failures. Used at load time so that `check` and reloads catch template errors.
pub(crate) fn check_all(set: &ProfileSet, base_url: &str) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    if let Err(RenderError::Template(d)) = set.render_boot_script(base_url) {
        errors.push(d);
    }
    for (index, profile) in set.profiles.iter().enumerate() {
        let mut cases: Vec<(Facts, Option<&Machine>)> = Vec::new();
        let mut synthetic = profile.default;
        for s in set.selectors.iter().filter(|s| s.profile == index) {
            if s.conditions.macs.is_empty() {
                cases.push((synthetic_facts(s), None));
            } else {
                for mac in &s.conditions.macs {
                    let mut f = synthetic_facts(s);
                    f.mac = *mac;
                    cases.push((f, set.machines.get(mac)));
                }
            }
        }
        if cases.is_empty() {
            synthetic = true;
        }
        if synthetic {
            cases.push((Facts::from_mac(crate::mac::MacAddr([0; 6])), None));
        }
        let mut whats = vec![What::Ipxe];
        if profile.ignition.is_some() {
            whats.push(What::Ignition);
        }
        whats.extend(
            profile
                .generic
                .keys()
                .map(|k| What::Generic(Some(k.clone()))),
        );
        for (facts, machine) in &cases {
            for what in &whats {
                let err = match set.render(profile, *machine, facts, base_url, what) {
                    Ok(_) => continue,
                    Err(RenderError::Template(d)) => d,
                    Err(e @ RenderError::InvalidIgnition { .. }) => {
                        let path = profile.ignition.as_ref().and_then(|n| set.origins.get(n));
                        let path = path.map_or(profile.path.clone(), |l| l.path.clone());
                        Diagnostic::new(
                            path,
                            None,
                            e.to_string()
                                .split_once(": ")
                                .map_or(e.to_string(), |x| x.1.to_string()),
                        )
                    }
                    Err(e) => Diagnostic::new(&profile.path, None, e.to_string()),
                };
                // One report per distinct problem, naming the first machine that hit it.
                if seen.insert(err.to_string()) {
                    let who = match machine {
                        Some(m) => format!("machine {} ({})", m.mac, m.at),
                        None if facts.mac.0 == [0; 6] => "any machine".to_string(),
                        None => format!("machine {}", facts.mac),
                    };
                    errors.push(Diagnostic::new(
                        err.path,
                        err.line,
                        format!(
                            "{} [rendering {} of profile {:?} for {who}]",
                            err.message,
                            what.label(),
                            profile.name
                        ),
                    ));
                }
            }
        }
    }
    errors
}

/// Facts of a machine that a selector would match, for test renders.
fn synthetic_facts(s: &crate::profiles::Selector) -> Facts {
    let c = &s.conditions;
    let mut mac = [0u8; 6];
    if let Some(p) = &c.mac_prefix {
        mac[..p.bytes().len()].copy_from_slice(p.bytes());
    }
    let mut f = Facts::from_mac(crate::mac::MacAddr(mac));
    f.uuid = c.uuids.iter().next().cloned();
    f.arch = c.arches.iter().next().cloned();
    f.platform = c.platform.clone();
    f.labels = c.labels.clone();
    f
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
        let e = validate_ignition(r#"{"ignition":{"version":"3.4.0"},"sytemd":{}}"#).unwrap_err();
        assert!(e.contains("sytemd"), "{e}");
        let e = validate_ignition(r#"{"ignition":{"version":"2.2.0"}}"#).unwrap_err();
        assert!(e.contains("not a 3.x"), "{e}");
        let e = validate_ignition(r#"{"ignition":{}}"#).unwrap_err();
        assert!(e.contains("missing ignition.version"), "{e}");
        let e = validate_ignition("{\n\"ignition\": {\"version\": \"3.4.0\"},\n}").unwrap_err();
        assert!(e.contains("not JSON") && e.contains("line 3"), "{e}");
        let e = validate_ignition(r#"{"ignition":{"version":"3.99.0"}}"#).unwrap_err();
        assert!(e.contains("unsupported"), "{e}");
        let e = validate_ignition(
            r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":1}]}}"#,
        )
        .unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
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

    #[test]
    fn asset_urls() {
        let b = "http://10.0.0.2:8080";
        assert_eq!(
            asset_url(b, "fcos/kernel"),
            "http://10.0.0.2:8080/assets/fcos/kernel"
        );
        assert_eq!(asset_url(b, "/assets/k"), "http://10.0.0.2:8080/assets/k");
        assert_eq!(asset_url(b, "http://mirror/k"), "http://mirror/k");
    }
}
