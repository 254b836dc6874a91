//! Profiles: what each machine boots, loaded from `profiles/*.toml` and their templates.
//!
//! A profile file holds a boot section (kernel, initrds, kernel args), an Ignition template,
//! optional generic templates (cloud-init, kickstart, ...), variables, selectors and machine
//! entries (MAC → hostname, IP, variables). The whole directory loads into one immutable
//! [`ProfileSet`]: parsed, cross-checked (no MAC claimed twice, one default at most, no
//! ambiguous selectors), every template compiled and rendered once per known machine, so that
//! an undefined variable or an invalid Ignition config is a load error with file and line
//! rather than a 500 at 2 a.m. A set that fails to load is never served: the caller keeps the
//! last good one (see [`watch`]).
//!
//! Sandboxing: templates are read into memory at load time and compiled into a minijinja
//! environment without a loader, so `{% include %}` can reach only files of the profiles tree
//! (by relative name), and nothing touches the filesystem or network while rendering. A fuel
//! limit bounds every render.

pub mod adopt;
pub mod select;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Deserialize;
use toml::Spanned;

pub use crate::diag::Location;
use crate::diag::{self, Diagnostic, Diagnostics};
use crate::mac::{MacAddr, MacPrefix};
use crate::render;
pub use select::{Conditions, Facts, Specificity};

/// Built-in iPXE scripts, used when the configured script directory lacks a file.
const BUILTIN_SCRIPTS: &[(&str, &str)] = &[
    ("boot.ipxe.j2", include_str!("../../ipxe/boot.ipxe.j2")),
    (
        "profile.ipxe.j2",
        include_str!("../../ipxe/profile.ipxe.j2"),
    ),
];

/// Names templates may not use for variables: Kindling sets these itself.
pub const RESERVED_VARS: &[&str] = &[
    "mac",
    "ip",
    "hostname",
    "uuid",
    "arch",
    "platform",
    "profile",
    "base_url",
    "query",
    "kernel",
    "initrds",
    "initrd_names",
    "args",
    "local",
];

/// Keys of a profile file outside any table; written after `[boot]` they land inside it.
const TOP_LEVEL_KEYS: &[&str] = &["description", "default", "ignition", "after_provision"];

/// Largest template or profile file read, so a stray disk image in the tree cannot eat memory.
const MAX_FILE_BYTES: u64 = 4 << 20;
/// Template instructions per render; bounds runaway loops in operator templates.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// Where a [`ProfileSet`] is loaded from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The profiles directory.
    pub profiles: PathBuf,
    /// The iPXE scripts directory (`boot.ipxe.j2`, `profile.ipxe.j2`).
    pub scripts: PathBuf,
}

/// One profile, resolved.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The file stem: `profiles/controller.toml` is profile `controller`.
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    /// Free text for humans.
    pub description: Option<String>,
    /// Whether unknown machines get this profile.
    pub default: bool,
    /// Template names of the boot section (see [`Boot`]).
    pub boot: Boot,
    /// Template name of the Ignition config, if the profile has one.
    pub ignition: Option<String>,
    /// Generic templates by name (`/generic?name=...`).
    pub generic: BTreeMap<String, String>,
    /// The profile's variables.
    pub vars: BTreeMap<String, Value>,
    /// What its machines boot once they reported `provisioned` (`after_provision`): their
    /// local disk or another profile. `None`: this profile again (live systems).
    pub after_provision: Option<crate::inventory::AfterProvision>,
}

/// A profile's boot section; each string is the name of a compiled inline template.
#[derive(Debug, Clone, Default)]
pub struct Boot {
    /// Boot from local disk instead of the network (iPXE `exit`).
    pub local: bool,
    /// Kernel path or URL template.
    pub kernel: Option<String>,
    /// Initrd path or URL templates.
    pub initrds: Vec<String>,
    /// Kernel argument templates.
    pub args: Vec<String>,
    /// The iPXE script template: the profile's own or the built-in `ipxe/profile.ipxe.j2`.
    pub script: String,
    /// `[boot.files]`: iPXE binaries for this profile's machines, overriding `[dhcp.boot_files]`.
    pub files: BTreeMap<crate::pxe::Firmware, String>,
}

/// A machine entry from a profile (`[[machine]]`).
#[derive(Debug, Clone)]
pub struct Machine {
    /// Its MAC address.
    pub mac: MacAddr,
    /// Index of the profile that lists it.
    pub profile: usize,
    /// Assigned hostname.
    pub hostname: Option<String>,
    /// Assigned IP address (a DHCP reservation once DHCP runs).
    pub ip: Option<std::net::IpAddr>,
    /// SMBIOS UUID, if the operator pinned one.
    pub uuid: Option<String>,
    /// Per-machine variables, overriding the profile's.
    pub vars: BTreeMap<String, Value>,
    /// Labels for the operator (rack, role, ...): `kindling wake --label rack=a`.
    pub labels: BTreeMap<String, String>,
    /// Where it is declared.
    pub at: Location,
}

/// A selector, resolved.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Index of the profile it selects.
    pub profile: usize,
    /// Its conditions.
    pub conditions: Conditions,
    /// Where it is declared.
    pub at: Location,
    /// Whether it is the implicit exact-MAC selector of a `[[machine]]` entry.
    pub machine_entry: bool,
}

/// The outcome of choosing a profile for a machine.
#[derive(Debug, Clone)]
pub struct Match<'a> {
    /// The chosen profile.
    pub profile: &'a Profile,
    /// The machine's entry, if it has one (in whichever profile declares it).
    pub machine: Option<&'a Machine>,
    /// Why this profile: for logs and `kindling render`.
    pub reason: String,
}

/// Every profile and template, validated; swapped whole on reload.
pub struct ProfileSet {
    /// Profiles in file-name order.
    pub profiles: Vec<Profile>,
    /// Machine entries by MAC.
    pub machines: HashMap<MacAddr, Machine>,
    /// Selectors, most specific first.
    pub selectors: Vec<Selector>,
    /// Index of the default profile.
    pub default: Option<usize>,
    /// Compiled templates.
    pub(crate) env: Environment<'static>,
    /// Template name → the file (and first line) it came from, for error messages.
    pub(crate) origins: HashMap<String, Location>,
    /// When this set was loaded.
    pub loaded_at: SystemTime,
    /// Hashes of Ignition texts already validated, so identical renders skip re-parsing.
    pub(crate) validated: render::ValidatedCache,
}

impl std::fmt::Debug for ProfileSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileSet")
            .field("profiles", &self.profiles.len())
            .field("machines", &self.machines.len())
            .finish()
    }
}

// ---- the TOML forms -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    description: Option<String>,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    boot: RawBoot,
    ignition: Option<Spanned<String>>,
    after_provision: Option<Spanned<String>>,
    #[serde(default)]
    generic: BTreeMap<String, Spanned<String>>,
    vars: Option<Spanned<toml::Table>>,
    #[serde(default)]
    select: Vec<Spanned<RawSelector>>,
    #[serde(default, rename = "machine")]
    machines: Vec<Spanned<RawMachine>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBoot {
    #[serde(default)]
    local: bool,
    kernel: Option<Spanned<String>>,
    #[serde(default)]
    initrd: Vec<Spanned<String>>,
    #[serde(default)]
    args: Vec<Spanned<String>>,
    script: Option<Spanned<String>>,
    #[serde(default)]
    files: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    #[serde(default)]
    mac: Vec<Spanned<String>>,
    #[serde(default)]
    uuid: Vec<Spanned<String>>,
    mac_prefix: Option<Spanned<String>>,
    #[serde(default)]
    arch: Vec<Spanned<String>>,
    platform: Option<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    mac: Spanned<String>,
    hostname: Option<Spanned<String>>,
    ip: Option<Spanned<String>>,
    uuid: Option<Spanned<String>>,
    vars: Option<Spanned<toml::Table>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

// ---- loading --------------------------------------------------------------------------------

/// Accumulates everything found while loading, so one pass reports every problem.
struct Loader {
    errors: Vec<Diagnostic>,
    /// Relative name → absolute path of every file under the profiles tree.
    files: BTreeMap<String, PathBuf>,
    /// Template name → source, compiled at the end.
    templates: BTreeMap<String, String>,
    origins: HashMap<String, Location>,
}

impl Loader {
    fn err(&mut self, path: &Path, source: &str, offset: usize, msg: impl Into<String>) {
        self.errors
            .push(Diagnostic::at_offset(path, source, offset, msg));
    }

    /// Parse a spanned value, or report `invalid WHAT "value"` at its line.
    fn parse<T>(
        &mut self,
        path: &Path,
        source: &str,
        field: &Spanned<String>,
        what: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let parsed = parse(field.get_ref());
        if parsed.is_none() {
            self.err(
                path,
                source,
                field.span().start,
                format!("invalid {what} {:?}", field.get_ref()),
            );
        }
        parsed
    }

    /// Register the file template `rel` (relative to the profiles dir) if it exists.
    fn file_template(
        &mut self,
        rel: &Spanned<String>,
        path: &Path,
        source: &str,
    ) -> Option<String> {
        let name = rel.get_ref().trim().to_string();
        if let Err(msg) = check_relative(&name) {
            self.err(path, source, rel.span().start, msg);
            return None;
        }
        let name = normalize(&name);
        if self.templates.contains_key(&name) {
            return Some(name);
        }
        let Some(file) = self.files.get(&name).cloned() else {
            self.err(
                path,
                source,
                rel.span().start,
                format!("template {name:?} not found in the profiles directory"),
            );
            return None;
        };
        match read_limited(&file) {
            Ok(text) => {
                self.templates.insert(name.clone(), text);
                self.origins.insert(
                    name.clone(),
                    Location {
                        path: file,
                        line: 1,
                    },
                );
                Some(name)
            }
            Err(e) => {
                self.err(
                    path,
                    source,
                    rel.span().start,
                    format!("template {name:?}: {e}"),
                );
                None
            }
        }
    }

    /// Register an inline template (a boot string) under a synthetic name.
    fn inline_template(
        &mut self,
        name: String,
        text: &Spanned<String>,
        path: &Path,
        source: &str,
    ) -> String {
        let line = diag::line_of(source, text.span().start);
        self.templates.insert(name.clone(), text.get_ref().clone());
        self.origins.insert(
            name.clone(),
            Location {
                path: path.to_path_buf(),
                line,
            },
        );
        name
    }
}

/// Template names are relative paths inside the profiles tree; nothing may escape it.
fn check_relative(name: &str) -> Result<(), String> {
    let p = Path::new(name);
    if name.is_empty() {
        return Err("template path is empty".into());
    }
    if p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "template path {name:?} must be relative to the profiles directory, without '..'"
        ));
    }
    Ok(())
}

fn normalize(name: &str) -> String {
    Path::new(name)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn read_limited(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("file is larger than {} MiB", MAX_FILE_BYTES >> 20));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "file is not UTF-8 text".to_string())
}

/// Every regular file under `dir`, by relative path; hidden entries (editor swap files,
/// Kubernetes' `..data` ConfigMap directories) are skipped.
fn walk(
    dir: &Path,
    rel: &str,
    out: &mut BTreeMap<String, PathBuf>,
    depth: usize,
) -> std::io::Result<()> {
    if depth > 16 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let rel_name = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        // metadata() follows symlinks: ConfigMap mounts are symlinks into `..data`.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, &rel_name, out, depth + 1)?,
            Ok(m) if m.is_file() => {
                out.insert(rel_name, path);
            }
            _ => {}
        }
    }
    Ok(())
}

/// A `[vars]` table as template values; names Kindling sets itself are errors.
fn checked_vars(
    ld: &mut Loader,
    path: &Path,
    source: &str,
    vars: Option<&Spanned<toml::Table>>,
) -> BTreeMap<String, Value> {
    let Some(vars) = vars else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (key, value) in vars.get_ref() {
        if RESERVED_VARS.contains(&key.as_str()) {
            let off = key_offset(source, vars.span(), key);
            ld.err(
                path,
                source,
                off,
                format!("variable {key:?} is reserved: Kindling sets it itself"),
            );
        }
        out.insert(key.clone(), crate::render::to_value(value));
    }
    out
}

/// The offset of the line `key = ...` at or after `span.start`, for messages about one
/// variable of a table (toml gives spans of tables, not of their keys).
fn key_offset(source: &str, span: std::ops::Range<usize>, key: &str) -> usize {
    let start = span.start.min(source.len());
    let mut offset = start;
    for line in source[start..].split_inclusive('\n') {
        let t = line.trim_start();
        let rest = t
            .strip_prefix(key)
            .or_else(|| t.strip_prefix(&format!("\"{key}\"")));
        if rest.is_some_and(|r| r.trim_start().starts_with('=')) {
            return offset + (line.len() - t.len());
        }
        offset += line.len();
    }
    span.start
}

fn parse_uuid(s: &str) -> Option<String> {
    let lower = s.trim().to_ascii_lowercase();
    let hex: String = lower.chars().filter(|c| *c != '-').collect();
    (hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(lower)
}

impl ProfileSet {
    /// Load, cross-check, compile and test-render everything under `sources`.
    ///
    /// `base_url` is used only for the test renders. Every problem found is returned.
    pub fn load(sources: &Sources, base_url: &str) -> Result<ProfileSet, Diagnostics> {
        let mut ld = Loader {
            errors: Vec::new(),
            files: BTreeMap::new(),
            templates: BTreeMap::new(),
            origins: HashMap::new(),
        };
        if let Err(e) = walk(&sources.profiles, "", &mut ld.files, 0) {
            return Err(Diagnostics(vec![Diagnostic::new(
                &sources.profiles,
                None,
                format!("cannot read the profiles directory: {e}"),
            )]));
        }
        load_scripts(&sources.scripts, &mut ld);

        let profile_files: Vec<(String, PathBuf)> = ld
            .files
            .iter()
            .filter(|(rel, _)| !rel.contains('/') && rel.ends_with(".toml"))
            .map(|(rel, p)| (rel.trim_end_matches(".toml").to_string(), p.clone()))
            .collect();

        let mut profiles = Vec::new();
        let mut machines: HashMap<MacAddr, Machine> = HashMap::new();
        let mut selectors = Vec::new();
        let mut default: Option<usize> = None;
        // after_provision targets, checked once every profile is known.
        let mut after_refs = Vec::new();

        for (name, path) in profile_files {
            let source = match read_limited(&path) {
                Ok(s) => s,
                Err(e) => {
                    ld.errors.push(Diagnostic::new(&path, None, e));
                    continue;
                }
            };
            let raw: RawProfile = match toml::from_str(&source) {
                Ok(r) => r,
                Err(e) => {
                    let mut d = diag::from_toml(&path, &source, &e);
                    if TOP_LEVEL_KEYS
                        .iter()
                        .any(|k| d.message.starts_with(&format!("unknown field `{k}`")))
                    {
                        d.message.push_str(
                            " (a top-level key written after a [table] header belongs to that table: move it above the first [table])",
                        );
                    }
                    ld.errors.push(d);
                    continue;
                }
            };
            let index = profiles.len();
            if let Some(a) = &raw.after_provision {
                after_refs.push((
                    a.get_ref().trim().to_string(),
                    path.clone(),
                    diag::line_of(&source, a.span().start),
                    name.clone(),
                ));
            }
            let p = resolve_profile(
                &mut ld,
                &name,
                &path,
                &source,
                raw,
                index,
                &mut machines,
                &mut selectors,
            );
            if p.default {
                if let Some(first) = default {
                    let first: &Profile = &profiles[first];
                    let line = source
                        .lines()
                        .position(|l| l.trim_start().starts_with("default"))
                        .map(|i| i + 1);
                    ld.errors.push(Diagnostic::new(
                        &path,
                        line,
                        format!(
                            "a second default profile: {} is already the default; exactly one profile may set default = true",
                            first.path.display()
                        ),
                    ));
                } else {
                    default = Some(index);
                }
            }
            profiles.push(p);
        }

        check_ambiguity(&mut ld, &profiles, &selectors);
        for (target, path, line, name) in after_refs {
            let known = profiles.iter().any(|p: &Profile| p.name == target);
            let msg = if target == name {
                Some(format!(
                    "after_provision = {target:?} names this profile itself: that is the default; use \"local\" or another profile"
                ))
            } else if target != "local" && !known {
                Some(format!(
                    "after_provision = {target:?}: no such profile (use \"local\" or the name of a profile file)"
                ))
            } else {
                None
            };
            if let Some(msg) = msg {
                ld.errors.push(Diagnostic::new(&path, Some(line), msg));
            }
        }

        // Compile every referenced template and every *.j2 file (includes, syntax check).
        let extra: Vec<String> = ld
            .files
            .keys()
            .filter(|k| {
                (k.ends_with(".j2") || k.ends_with(".jinja")) && !ld.templates.contains_key(*k)
            })
            .cloned()
            .collect();
        for rel in extra {
            let file = ld.files[&rel].clone();
            match read_limited(&file) {
                Ok(text) => {
                    ld.templates.insert(rel.clone(), text);
                    ld.origins.insert(
                        rel,
                        Location {
                            path: file,
                            line: 1,
                        },
                    );
                }
                Err(e) => ld.errors.push(Diagnostic::new(&file, None, e)),
            }
        }
        let mut env = new_environment();
        for (name, text) in std::mem::take(&mut ld.templates) {
            if let Err(e) = env.add_template_owned(name.clone(), text) {
                ld.errors.push(render::diagnostic(&ld.origins, &e));
            }
        }

        let mut set = ProfileSet {
            profiles,
            machines,
            selectors,
            default,
            env,
            origins: ld.origins,
            loaded_at: SystemTime::now(),
            validated: render::ValidatedCache::default(),
        };
        set.selectors
            .sort_by_key(|s| std::cmp::Reverse(s.conditions.specificity()));
        if !ld.errors.is_empty() {
            // Sorted by file and line: the order an operator fixes them in.
            ld.errors
                .sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
            return Err(Diagnostics(ld.errors));
        }
        let render_errors = render::check_all(&set, base_url);
        if !render_errors.is_empty() {
            return Err(Diagnostics(render_errors));
        }
        Ok(set)
    }

    /// Choose the profile for a machine: its most specific matching selector, else the default.
    pub fn select(&self, facts: &Facts) -> Option<Match<'_>> {
        let machine = self.machines.get(&facts.mac);
        // Selectors are sorted most specific first, and equally specific overlapping selectors
        // of different profiles were rejected at load: the first match is the answer.
        if let Some(s) = self.selectors.iter().find(|s| s.conditions.matches(facts)) {
            return Some(Match {
                profile: &self.profiles[s.profile],
                machine,
                reason: if s.machine_entry {
                    format!("machine entry at {}", s.at)
                } else {
                    format!("selector {} at {}", s.conditions, s.at)
                },
            });
        }
        self.default.map(|d| Match {
            profile: &self.profiles[d],
            machine,
            reason: "default profile (no selector matched)".to_string(),
        })
    }

    /// What DHCP should do for a machine: netboot with its profile, boot from disk, or nothing.
    pub fn machine_boot(&self, facts: &Facts) -> (crate::pxe::MachineBoot, Option<Match<'_>>) {
        use crate::pxe::MachineBoot;
        match self.select(facts) {
            None => (MachineBoot::NoProfile, None),
            Some(m) if m.profile.boot.local => (
                MachineBoot::LocalDisk {
                    profile: m.profile.name.clone(),
                },
                Some(m),
            ),
            Some(m) => (
                MachineBoot::Netboot {
                    profile: m.profile.name.clone(),
                    files: m.profile.boot.files.clone(),
                },
                Some(m),
            ),
        }
    }

    /// A profile by name.
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }
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

fn load_scripts(dir: &Path, ld: &mut Loader) {
    for (file, builtin) in BUILTIN_SCRIPTS {
        let path = dir.join(file);
        let name = format!("ipxe/{file}");
        let text = match read_limited(&path) {
            Ok(text) => text,
            Err(_) if !path.exists() => {
                ld.origins.insert(
                    name.clone(),
                    Location {
                        path: PathBuf::from(format!("<built-in>/{name}")),
                        line: 1,
                    },
                );
                ld.templates.insert(name, builtin.to_string());
                continue;
            }
            Err(e) => {
                ld.errors.push(Diagnostic::new(&path, None, e));
                continue;
            }
        };
        ld.origins.insert(name.clone(), Location { path, line: 1 });
        ld.templates.insert(name, text);
    }
}

#[allow(clippy::too_many_arguments)]
fn resolve_profile(
    ld: &mut Loader,
    name: &str,
    path: &Path,
    source: &str,
    raw: RawProfile,
    index: usize,
    machines: &mut HashMap<MacAddr, Machine>,
    selectors: &mut Vec<Selector>,
) -> Profile {
    let at = |offset: usize| Location {
        path: path.to_path_buf(),
        line: diag::line_of(source, offset),
    };

    let vars = checked_vars(ld, path, source, raw.vars.as_ref());

    // Boot section: every string is a template, rendered per machine.
    let rb = raw.boot;
    let mut boot = Boot {
        local: rb.local,
        ..Default::default()
    };
    if let Some(k) = &rb.kernel {
        boot.kernel = Some(ld.inline_template(format!("{name}.toml#boot.kernel"), k, path, source));
    }
    for (i, s) in rb.initrd.iter().enumerate() {
        boot.initrds.push(ld.inline_template(
            format!("{name}.toml#boot.initrd[{i}]"),
            s,
            path,
            source,
        ));
    }
    for (i, s) in rb.args.iter().enumerate() {
        boot.args
            .push(ld.inline_template(format!("{name}.toml#boot.args[{i}]"), s, path, source));
    }
    boot.script = match &rb.script {
        Some(s) => ld.file_template(s, path, source).unwrap_or_default(),
        None => "ipxe/profile.ipxe.j2".to_string(),
    };
    if !boot.local && boot.kernel.is_none() && rb.script.is_none() {
        ld.errors.push(Diagnostic::new(
            path,
            source
                .lines()
                .position(|l| l.trim() == "[boot]")
                .map(|i| i + 1),
            "the profile boots nothing: set boot.kernel, boot.script, or boot.local = true",
        ));
    }
    if boot.local && boot.kernel.is_some() {
        let off = rb.kernel.as_ref().map_or(0, |k| k.span().start);
        ld.err(
            path,
            source,
            off,
            "boot.local = true and boot.kernel are contradictory: choose one",
        );
    }

    for (key, file) in &rb.files {
        let fw = crate::pxe::ARCH_TYPES
            .iter()
            .filter_map(|a| a.firmware)
            .find(|f| f.name() == key);
        let Some(fw) = fw else {
            let msg = format!(
                "boot.files.{key}: unknown firmware; expected one of bios, uefi_ia32, uefi_x64, uefi_arm32, uefi_arm64, uefi_riscv64, uefi_loong64"
            );
            ld.err(path, source, file.span().start, msg);
            continue;
        };
        match crate::pxe::check_boot_file(file.get_ref()) {
            Ok(()) => {
                boot.files.insert(fw, file.get_ref().clone());
            }
            Err(msg) => ld.err(
                path,
                source,
                file.span().start,
                format!("boot.files.{key}: {msg}"),
            ),
        }
    }

    let ignition = raw
        .ignition
        .as_ref()
        .and_then(|t| ld.file_template(t, path, source));
    let mut generic = BTreeMap::new();
    for (gname, t) in &raw.generic {
        if let Some(n) = ld.file_template(t, path, source) {
            generic.insert(gname.clone(), n);
        }
    }

    for sel in &raw.select {
        let r = sel.get_ref();
        let mut c = Conditions::default();
        for m in &r.mac {
            match m.get_ref().parse::<MacAddr>() {
                Ok(mac) => {
                    c.macs.insert(mac);
                }
                Err(e) => ld.err(path, source, m.span().start, e.to_string()),
            }
        }
        for u in &r.uuid {
            c.uuids
                .extend(ld.parse(path, source, u, "UUID", parse_uuid));
        }
        if let Some(p) = &r.mac_prefix {
            match p.get_ref().parse::<MacPrefix>() {
                Ok(prefix) => c.mac_prefix = Some(prefix),
                Err(_) => ld.err(
                    path,
                    source,
                    p.span().start,
                    format!(
                        "invalid mac_prefix {:?}: expected 1 to 5 hex bytes such as \"52:54:00\"",
                        p.get_ref()
                    ),
                ),
            }
        }
        for a in &r.arch {
            if select::ARCHES.contains(&a.get_ref().as_str()) {
                c.arches.insert(a.get_ref().clone());
            } else {
                ld.err(
                    path,
                    source,
                    a.span().start,
                    format!(
                        "unknown arch {:?}: expected one of {}",
                        a.get_ref(),
                        select::ARCHES.join(", ")
                    ),
                );
            }
        }
        if let Some(p) = &r.platform {
            if select::PLATFORMS.contains(&p.get_ref().as_str()) {
                c.platform = Some(p.get_ref().clone());
            } else {
                ld.err(
                    path,
                    source,
                    p.span().start,
                    format!("unknown platform {:?}: expected pcbios or efi", p.get_ref()),
                );
            }
        }
        c.labels = r.labels.clone();
        let raw_empty = r.mac.is_empty()
            && r.uuid.is_empty()
            && r.mac_prefix.is_none()
            && r.arch.is_empty()
            && r.platform.is_none()
            && r.labels.is_empty();
        if raw_empty {
            ld.err(
                path,
                source,
                sel.span().start,
                "empty selector matches every machine: use default = true for that",
            );
            continue;
        }
        if c == Conditions::default() {
            continue; // every condition was invalid and is reported above
        }
        selectors.push(Selector {
            profile: index,
            conditions: c,
            at: at(sel.span().start),
            machine_entry: false,
        });
    }

    for m in &raw.machines {
        let r = m.get_ref();
        let mac = match r.mac.get_ref().parse::<MacAddr>() {
            Ok(mac) => mac,
            Err(e) => {
                ld.err(path, source, r.mac.span().start, e.to_string());
                continue;
            }
        };
        let here = at(r.mac.span().start);
        let vars = checked_vars(ld, path, source, r.vars.as_ref());
        if let Some(h) = &r.hostname
            && !valid_hostname(h.get_ref())
        {
            let msg = format!("invalid hostname {:?}", h.get_ref());
            ld.err(path, source, h.span().start, msg);
        }
        let ip = r.ip.as_ref().and_then(|ip| {
            ld.parse(path, source, ip, "IP address", |s| {
                s.trim().parse::<std::net::IpAddr>().ok()
            })
        });
        let uuid = r
            .uuid
            .as_ref()
            .and_then(|u| ld.parse(path, source, u, "UUID", parse_uuid));
        if let Some(first) = machines.get(&mac) {
            let msg = format!("machine {mac} is already declared at {}", first.at);
            ld.err(path, source, r.mac.span().start, msg);
            continue;
        }
        // One address, one machine: DHCP reserves it, DNS names it.
        if let (Some(ip), Some(span)) = (ip, r.ip.as_ref().map(|s| s.span()))
            && let Some(other) = machines.values().find(|m| m.ip == Some(ip))
        {
            let msg = format!(
                "address {ip} is already assigned to machine {} at {}",
                other.mac, other.at
            );
            ld.err(path, source, span.start, msg);
        }
        machines.insert(
            mac,
            Machine {
                mac,
                profile: index,
                hostname: r.hostname.as_ref().map(|h| h.get_ref().clone()),
                ip,
                uuid,
                vars,
                labels: r.labels.clone(),
                at: here.clone(),
            },
        );
        // A machine entry is an exact-MAC claim on its profile.
        selectors.push(Selector {
            profile: index,
            conditions: Conditions {
                macs: [mac].into(),
                ..Default::default()
            },
            at: here,
            machine_entry: true,
        });
    }

    Profile {
        name: name.to_string(),
        path: path.to_path_buf(),
        description: raw.description,
        default: raw.default,
        boot,
        ignition,
        generic,
        vars,
        after_provision: raw
            .after_provision
            .as_ref()
            .map(|a| match a.get_ref().trim() {
                "local" => crate::inventory::AfterProvision::Local,
                other => crate::inventory::AfterProvision::Profile(other.to_string()),
            }),
    }
}

/// RFC 1123 host name or FQDN: labels of letters, digits and inner hyphens.
pub(crate) fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Two selectors of different profiles, equally specific, that one machine could satisfy:
/// which profile it gets would depend on file order. That is a load error.
fn check_ambiguity(ld: &mut Loader, profiles: &[Profile], selectors: &[Selector]) {
    // Exact-MAC selectors can only collide through a shared MAC: index them by MAC so that
    // thousands of machine entries cost a hash lookup each, not a comparison with every other.
    let mut by_mac: HashMap<MacAddr, Vec<usize>> = HashMap::new();
    let mut others = Vec::new();
    for (i, s) in selectors.iter().enumerate() {
        if s.conditions.macs.is_empty() {
            others.push(i);
        } else {
            for mac in &s.conditions.macs {
                by_mac.entry(*mac).or_default().push(i);
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for ids in by_mac.values() {
        for (n, &a) in ids.iter().enumerate() {
            pairs.extend(ids[n + 1..].iter().map(|&b| (a.min(b), a.max(b))));
        }
    }
    for (n, &a) in others.iter().enumerate() {
        pairs.extend(others[n + 1..].iter().map(|&b| (a, b)));
    }
    pairs.sort_unstable();
    pairs.dedup();
    for (a, b) in pairs {
        let (a, b) = (&selectors[a], &selectors[b]);
        if a.profile == b.profile
            || a.conditions.specificity() != b.conditions.specificity()
            || !a.conditions.could_overlap(&b.conditions)
        {
            continue;
        }
        let shared: Vec<String> = a
            .conditions
            .macs
            .intersection(&b.conditions.macs)
            .map(|m| m.to_string())
            .collect();
        let what = if shared.is_empty() {
            format!(
                "selector {} overlaps selector {} of profile {:?} at {}",
                b.conditions, a.conditions, profiles[a.profile].name, a.at
            )
        } else {
            format!(
                "machine {} is claimed by two profiles: {:?} here and {:?} at {}",
                shared.join(", "),
                profiles[b.profile].name,
                profiles[a.profile].name,
                a.at
            )
        };
        ld.errors.push(Diagnostic::new(
            &b.at.path,
            Some(b.at.line),
            format!("{what}; equally specific selectors may not overlap"),
        ));
    }
}

#[cfg(test)]
mod tests;
