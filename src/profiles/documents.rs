//! What a machine is served: its iPXE script, Ignition config, metadata and generic
//! templates, rendered from its profile with the template engine ([`crate::render`]).
//!
//! Variables every template sees: `mac`, `hostname`, `profile`, `base_url`, `query` (every
//! request parameter), the profile's `[vars]` overridden by the machine's, and — only when
//! known — `ip`, `uuid`, `arch`, `platform`. Strict mode makes a missing variable an error, so
//! templates guard optional ones with `{% if ip is defined %}`. The iPXE script template also
//! sees the rendered boot section: `kernel`, `initrds`, `initrd_names`, `args`, `local`.
//!
//! A broken config is a load error when `check` or a reload can see it ([`check_all`] renders
//! everything once per known machine), and a 500 at request time otherwise; it is never
//! handed to a machine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use minijinja::Value;

use super::{Facts, Machine, Profile, ProfileSet, Selector};
use crate::diag::Diagnostic;
use crate::mac::MacAddr;
use crate::render::{RenderError, metadata, to_value};

/// What to render for a machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum What {
    /// The iPXE script (`/ipxe`).
    Ipxe,
    /// The Ignition config (`/ignition`).
    Ignition,
    /// `KEY=value` lines (`/metadata`).
    Metadata,
    /// A generic template (`/generic`), by name; `None` picks the profile's only one.
    Generic(Option<String>),
    /// The GRUB config (`/grub`, `grub/grub.cfg` over TFTP or HTTP): the boot script of the
    /// shim → GRUB chain.
    Grub(GrubVia),
}

/// How GRUB fetched its grub.cfg, and so how it fetches kernel and initrds: a GRUB that came
/// over TFTP (Debian 12's GRUB 2.06 among them) reads assets over TFTP from the same server;
/// one that came over UEFI HTTP boot may have no TFTP server at all, so its assets come over
/// HTTP (`(http,host:port)/…`, GRUB 2.12 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrubVia {
    Tftp,
    Http,
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
            What::Grub(_) => "grub.cfg".into(),
        }
    }

    /// How it goes to the machine, as boot state history records it.
    pub fn transport(&self) -> &'static str {
        match self {
            What::Grub(GrubVia::Tftp) => "tftp",
            _ => "http",
        }
    }

    /// Whether this is the boot script of a boot (iPXE's or GRUB's): it decides the profile,
    /// uses up the one-shot next boot and begins a boot.
    pub fn is_boot_script(&self) -> bool {
        matches!(self, What::Ipxe | What::Grub(_))
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
/// Why a document could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DocumentError {
    /// Its template failed, or the Ignition config it rendered is invalid.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The profile has no template of that kind.
    #[error("profile {profile:?} has no {what} template")]
    Missing {
        /// The profile.
        profile: String,
        /// `ignition`, `generic`, or `generic "name"`.
        what: String,
    },
    /// A kernel or initrd GRUB cannot fetch: over TFTP only files under `assets/`, over HTTP
    /// only http:// URLs.
    #[error(
        "GRUB cannot fetch {0}: a GRUB that came over TFTP fetches kernels and initrds from Kindling's TFTP (files under assets/ only); one that came over HTTP fetches http:// URLs (no https)"
    )]
    NotForGrub(String),
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
    ctx.insert("query".into(), to_value(&facts.labels));
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
    // The URLs the machine fetches its configs from and reports to, with its per-boot secret
    // when it is being served itself (Kindling then serves those only with the secret, or to
    // the machine's own address).
    let token = facts.secret.as_deref().unwrap_or("");
    let with_token = |path: &str| {
        let mut url = format!("{base_url}{path}?mac={}", facts.mac);
        if !token.is_empty() {
            url.push_str("&token=");
            url.push_str(token);
        }
        url
    };
    ctx.insert("token".into(), token.into());
    ctx.insert("ignition_url".into(), with_token("/ignition").into());
    ctx.insert("metadata_url".into(), with_token("/metadata").into());
    ctx.insert("generic_url".into(), with_token("/generic").into());
    ctx.insert("report_url".into(), with_token("/api/v1/report").into());
    ctx
}

/// The template variables that carry the machine's per-boot secret.
const URL_VARS: &[&str] = &[
    "token",
    "ignition_url",
    "metadata_url",
    "generic_url",
    "report_url",
];

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

/// A kernel or initrd URL as GRUB fetches it. Over TFTP: files under `<base_url>/assets/`
/// come from the server GRUB booted from (`(tftp)/<path>`; Kindling's TFTP serves assets).
/// Over HTTP: any http:// URL, as `(http,host:port)/path` (GRUB speaks no TLS).
fn grub_path(base_url: &str, url: &str, via: GrubVia) -> Result<String, DocumentError> {
    let not_for_grub = || DocumentError::NotForGrub(url.to_string());
    let path = match via {
        GrubVia::Tftp => {
            let prefix = format!("{base_url}/assets/");
            match url.strip_prefix(&prefix) {
                Some(rest) if !rest.is_empty() && !rest.contains(['?', '#']) => {
                    format!("(tftp)/{rest}")
                }
                _ => return Err(not_for_grub()),
            }
        }
        GrubVia::Http => {
            let rest = url.strip_prefix("http://").ok_or_else(not_for_grub)?;
            let (host, path) = rest.split_once('/').ok_or_else(not_for_grub)?;
            let path = path.split('#').next().unwrap_or(path);
            if host.is_empty() || host.contains(['@', ',', ')', '(']) || path.is_empty() {
                return Err(not_for_grub());
            }
            format!("(http,{host})/{path}")
        }
    };
    // A word for GRUB's shell: quoted when it holds anything its parser would act on.
    let plain = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "()/,:._-+=~%@&?".contains(c));
    Ok(if plain { path } else { grub_quote(&path) })
}

/// One word for GRUB's shell: single-quoted, a `'` inside as `'\''` (GRUB quotes as sh does).
fn grub_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A profile's boot section, rendered for one machine.
struct BootParts {
    kernel: Option<String>,
    initrds: Vec<String>,
    args: Vec<String>,
}

/// What a document request renders, for whom, but the facts (which carry the boot secret the
/// script cache puts in): the cache key's inputs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Doc<'a> {
    pub(crate) profile: &'a Profile,
    pub(crate) machine: Option<&'a Machine>,
    pub(crate) base_url: &'a str,
    pub(crate) what: &'a What,
    /// The local-disk script.
    pub(crate) local: bool,
}

impl ProfileSet {
    fn render_named(&self, name: &str, ctx: &Value) -> Result<String, DocumentError> {
        Ok(self.engine.render(name, ctx)?)
    }

    /// The iPXE script of `profile` telling the machine to boot from its local disk (its
    /// `after_provision = "local"`, or the operator's next boot).
    pub fn render_local(
        &self,
        profile: &Profile,
        machine: Option<&Machine>,
        facts: &Facts,
        base_url: &str,
        what: &What,
    ) -> Result<Rendered, DocumentError> {
        let doc = Doc {
            profile,
            machine,
            base_url,
            what,
            local: true,
        };
        self.boot_script(doc, facts)
    }

    /// [`ProfileSet::boot_script`], rendered.
    pub(crate) fn boot_script_uncached(
        &self,
        doc: Doc<'_>,
        facts: &Facts,
    ) -> Result<String, DocumentError> {
        let Doc {
            profile,
            machine,
            base_url,
            what,
            local,
        } = doc;
        let ctx = Value::from(context(profile, machine, facts, base_url));
        let rendered = match what {
            What::Grub(via) => self.render_grub(profile, ctx, base_url, *via, local),
            _ => self.render_ipxe(profile, ctx, base_url, local || profile.boot.local),
        };
        rendered.map(|r| r.body)
    }

    /// A boot script (`what` is [`What::Ipxe`] or [`What::Grub`]); `local`: the local-disk one.
    ///
    /// Served from [`ScriptCache`] once the same inputs came a second time: everything but
    /// the boot secret is the same, and the secret is put into the cached text.
    fn boot_script(&self, doc: Doc<'_>, facts: &Facts) -> Result<Rendered, DocumentError> {
        self.cached(doc, facts, |f| self.boot_script_uncached(doc, f))
            .map(script)
    }

    /// `render(facts)`, from [`ScriptCache`] once the same inputs came a second time:
    /// everything but the boot secret is the same, and the secret is put into the cached text.
    fn cached(
        &self,
        doc: Doc<'_>,
        facts: &Facts,
        render: impl Fn(&Facts) -> Result<String, DocumentError>,
    ) -> Result<String, DocumentError> {
        let cache = &self.scripts;
        let (Some(secret), Some([one, two])) = (facts.secret.as_deref(), cache.sentinels.as_ref())
        else {
            return render(facts);
        };
        if secret.len() != one.len() {
            return render(facts);
        }
        let key = ScriptKey {
            profile: doc.profile.name.clone(),
            what: doc.what.clone(),
            local: doc.local,
            machine: doc.machine.is_some(),
            facts: Facts {
                secret: None,
                ..facts.clone()
            },
            base_url: doc.base_url.to_string(),
        };
        match cache.get(&key) {
            Some(Cached::Parts(parts)) => return Ok(parts.join(secret)),
            Some(Cached::Seen) => {}
            Some(Cached::Uncacheable) => return render(facts),
            None => {
                cache.put(key, Cached::Seen);
                return render(facts);
            }
        }
        // The second time: render with two stand-ins for the secret that differ in every
        // character. The text is kept only when it depends on the secret as plain text alone
        // (a template that cuts, cases or measures the secret is rendered every time).
        let with = |s: &str| {
            render(&Facts {
                secret: Some(s.to_string()),
                ..facts.clone()
            })
        };
        let (a, b) = (with(one)?, with(two)?);
        let parts: Vec<String> = a.split(one.as_str()).map(str::to_string).collect();
        if parts.join(two) == b {
            let body = parts.join(secret);
            cache.put(key, Cached::Parts(parts.into()));
            Ok(body)
        } else {
            cache.put(key, Cached::Uncacheable);
            render(facts)
        }
    }

    /// The boot section of `profile` rendered: kernel and initrd URLs, non-empty arguments.
    fn boot_parts(
        &self,
        profile: &Profile,
        ctx: &Value,
        base_url: &str,
    ) -> Result<BootParts, DocumentError> {
        let boot = &profile.boot;
        let kernel = match &boot.kernel {
            Some(k) => Some(asset_url(base_url, self.render_named(k, ctx)?.trim())),
            None => None,
        };
        let mut initrds = Vec::new();
        for t in &boot.initrds {
            initrds.push(asset_url(base_url, self.render_named(t, ctx)?.trim()));
        }
        let mut args = Vec::new();
        for t in &boot.args {
            let a = self.render_named(t, ctx)?;
            if !a.trim().is_empty() {
                args.push(a.trim().to_string());
            }
        }
        Ok(BootParts {
            kernel,
            initrds,
            args,
        })
    }

    /// The grub.cfg of `profile`: kernel and initrds as GRUB paths, arguments quoted.
    fn render_grub(
        &self,
        profile: &Profile,
        ctx: Value,
        base_url: &str,
        via: GrubVia,
        local: bool,
    ) -> Result<Rendered, DocumentError> {
        let parts = self.boot_parts(profile, &ctx, base_url)?;
        let kernel = match &parts.kernel {
            Some(k) => Some(grub_path(base_url, k, via)?),
            None => None,
        };
        let initrds = parts
            .initrds
            .iter()
            .map(|u| grub_path(base_url, u, via))
            .collect::<Result<Vec<_>, _>>()?;
        let args: Vec<String> = parts.args.iter().map(|a| grub_quote(a)).collect();
        let ctx = minijinja::context! {
            local => local || profile.boot.local,
            kernel => kernel,
            initrds => initrds,
            args => args,
            ..ctx
        };
        self.render_script(&profile.boot.grub_script, &ctx)
    }

    /// A boot script (iPXE's or GRUB's) from its template.
    fn render_script(&self, name: &str, ctx: &Value) -> Result<Rendered, DocumentError> {
        Ok(script(self.render_named(name, ctx)?))
    }

    fn render_ipxe(
        &self,
        profile: &Profile,
        ctx: Value,
        base_url: &str,
        local: bool,
    ) -> Result<Rendered, DocumentError> {
        let parts = self.boot_parts(profile, &ctx, base_url)?;
        let names: Vec<String> = parts
            .initrds
            .iter()
            .map(|u| {
                let path = u.split(['?', '#']).next().unwrap_or(u);
                path.rsplit('/').next().unwrap_or(path).to_string()
            })
            .collect();
        let ctx = minijinja::context! {
            local => local,
            kernel => parts.kernel,
            initrds => parts.initrds,
            initrd_names => names,
            args => parts.args,
            ..ctx
        };
        self.render_script(&profile.boot.script, &ctx)
    }

    /// The chain script every iPXE client fetches first (`/boot.ipxe`).
    pub fn render_boot_script(&self, base_url: &str) -> Result<String, DocumentError> {
        self.render_named(
            "ipxe/boot.ipxe.j2",
            &minijinja::context! { base_url => base_url },
        )
    }

    /// Render `what` for a machine that got `profile`.
    pub fn render(
        &self,
        profile: &Profile,
        machine: Option<&Machine>,
        facts: &Facts,
        base_url: &str,
        what: &What,
    ) -> Result<Rendered, DocumentError> {
        let ctx = || context(profile, machine, facts, base_url);
        let doc = Doc {
            profile,
            machine,
            base_url,
            what,
            local: false,
        };
        match what {
            What::Ipxe | What::Grub(_) => self.boot_script(doc, facts),
            What::Ignition => {
                let name = profile
                    .ignition
                    .as_ref()
                    .ok_or_else(|| DocumentError::Missing {
                        profile: profile.name.clone(),
                        what: "ignition".into(),
                    })?;
                // Cached as boot scripts are: the secret is hex in a JSON string, so a text
                // that validated with a stand-in secret validates with the real one.
                let body = self.cached(doc, facts, |f| {
                    let ctx = Value::from(context(profile, machine, f, base_url));
                    Ok(self.engine.render_ignition(name, &ctx)?)
                })?;
                Ok(Rendered {
                    body,
                    content_type: "application/vnd.coreos.ignition+json",
                })
            }
            What::Metadata => {
                // The machine's URLs and secret are not metadata (nor listed to anyone).
                let mut ctx = ctx();
                for k in URL_VARS {
                    ctx.remove(*k);
                }
                Ok(Rendered {
                    body: metadata(&ctx),
                    content_type: "text/plain; charset=utf-8",
                })
            }
            What::Generic(wanted) => {
                let name = match wanted {
                    Some(n) => profile.generic.get(n),
                    None if profile.generic.len() == 1 => profile.generic.values().next(),
                    None => profile.generic.get("default"),
                };
                let name = name.ok_or_else(|| DocumentError::Missing {
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
                let body = self.render_named(name, &Value::from(ctx()))?;
                Ok(Rendered {
                    body,
                    content_type: "text/plain; charset=utf-8",
                })
            }
        }
    }
}

/// A boot script's response.
fn script(body: String) -> Rendered {
    Rendered {
        body,
        content_type: "text/plain; charset=utf-8",
    }
}

/// Most distinct boot scripts a profile set keeps (it lives until the next reload).
const SCRIPT_CACHE_ENTRIES: usize = 8192;

/// Everything a boot script depends on but the boot secret.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ScriptKey {
    profile: String,
    what: What,
    local: bool,
    machine: bool,
    facts: Facts,
    base_url: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Cached {
    /// Asked for once: a second time is worth a check.
    Seen,
    /// The text around each place the secret goes.
    Parts(Arc<[String]>),
    /// Its template does more with the secret than print it.
    Uncacheable,
}

/// Boot scripts rendered before, so a machine that asks again (a retry loop, a reboot, a
/// benchmark) costs a lookup and a join instead of a render.
#[derive(Debug)]
pub(crate) struct ScriptCache {
    /// Two stand-ins for a secret, as long as one, differing in every character; none when
    /// the OS gave no randomness (then nothing is cached).
    pub(crate) sentinels: Option<[String; 2]>,
    pub(crate) entries: Mutex<HashMap<ScriptKey, Cached>>,
}

impl Default for ScriptCache {
    fn default() -> Self {
        let mut bytes = [0u8; 16];
        let sentinels = getrandom::fill(&mut bytes).ok().map(|()| {
            let one: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            // Each hex digit moved by 8: never the same digit in the same place.
            let two = one
                .chars()
                .map(|c| {
                    let d = c.to_digit(16).unwrap_or(0);
                    char::from_digit((d + 8) % 16, 16).unwrap_or('0')
                })
                .collect();
            [one, two]
        });
        ScriptCache {
            sentinels,
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl ScriptCache {
    fn get(&self, key: &ScriptKey) -> Option<Cached> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).cloned()
    }

    fn put(&self, key: ScriptKey, value: Cached) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= SCRIPT_CACHE_ENTRIES && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, value);
    }
}

/// Render everything each profile serves, for every machine it can be served to, and collect
/// the failures. Used at load time so that `check` and reloads catch template errors.
pub(crate) fn check_all(set: &ProfileSet, base_url: &str) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    if let Err(DocumentError::Render(RenderError::Template(d))) = set.render_boot_script(base_url) {
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
            cases.push((Facts::from_mac(MacAddr([0; 6])), None));
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
                    Err(DocumentError::Render(RenderError::Template(d))) => d,
                    Err(DocumentError::Render(e @ RenderError::InvalidIgnition { .. })) => {
                        let path = profile.ignition.as_ref().and_then(|n| set.engine.origin(n));
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
fn synthetic_facts(s: &Selector) -> Facts {
    let c = &s.conditions;
    let mut mac = [0u8; 6];
    if let Some(p) = &c.mac_prefix {
        mac[..p.bytes().len()].copy_from_slice(p.bytes());
    }
    let mut f = Facts::from_mac(MacAddr(mac));
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
    fn grub_paths_and_quoting() {
        let b = "http://10.0.0.2:8080";
        let tftp = |u| grub_path(b, u, GrubVia::Tftp);
        let http = |u| grub_path(b, u, GrubVia::Http);
        assert_eq!(
            tftp("http://10.0.0.2:8080/assets/fcos/kernel").unwrap(),
            "(tftp)/fcos/kernel"
        );
        assert!(tftp("http://mirror/k").is_err());
        assert!(tftp("http://10.0.0.2:8080/assets/k?x=1").is_err());
        assert_eq!(
            tftp("http://10.0.0.2:8080/assets/my kernel").unwrap(),
            "'(tftp)/my kernel'"
        );
        // Over HTTP: the server and port GRUB is to ask, any http:// URL, never https.
        assert_eq!(
            http("http://10.0.0.2:8080/assets/fcos/kernel").unwrap(),
            "(http,10.0.0.2:8080)/assets/fcos/kernel"
        );
        assert_eq!(
            http("http://mirror/os/k?v=2#x").unwrap(),
            "(http,mirror)/os/k?v=2"
        );
        assert_eq!(
            http("http://mirror/a'b$c").unwrap(),
            "'(http,mirror)/a'\\''b$c'"
        );
        for bad in [
            "https://mirror/k",
            "http://mirror",
            "http:///k",
            "http://a,b/k",
        ] {
            assert!(http(bad).is_err(), "{bad}");
        }
        assert_eq!(grub_quote("console=ttyS0"), "'console=ttyS0'");
        assert_eq!(grub_quote("a=it's $x; b"), "'a=it'\\''s $x; b'");
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
