//! Resolving one parsed profile file into a [`Profile`], its selectors and its machine
//! entries, and the cross-profile check that equally specific selectors do not overlap.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use minijinja::Value;
use toml::Spanned;

use super::load::Loader;
use super::raw::{RawBmc, RawBoot, RawMachine, RawProfile, RawSelector};
use super::{
    AfterProvision, BmcPassword, BmcSettings, Boot, Conditions, Location, Machine, Profile,
    RESERVED_VARS, Selector, select, valid_hostname,
};
use crate::diag::{self, Diagnostic};
use crate::mac::{MacAddr, MacPrefix};

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

/// One profile file being resolved: its name (the file stem), path, text and index.
pub(super) struct File<'a> {
    pub(super) name: &'a str,
    pub(super) path: &'a Path,
    pub(super) source: &'a str,
    pub(super) index: usize,
}

impl File<'_> {
    /// The location of byte `offset` of the file.
    fn at(&self, offset: usize) -> Location {
        Location {
            path: self.path.to_path_buf(),
            line: diag::line_of(self.source, offset),
        }
    }
}

/// Resolve a parsed profile file; its selectors and machine entries are added to the set's.
pub(super) fn resolve_profile(
    ld: &mut Loader,
    f: &File<'_>,
    raw: RawProfile,
    machines: &mut HashMap<MacAddr, Machine>,
    selectors: &mut Vec<Selector>,
) -> Profile {
    let (name, path, source) = (f.name, f.path, f.source);
    let vars = checked_vars(ld, path, source, raw.vars.as_ref());
    let boot = resolve_boot(ld, f, &raw.boot);
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

    resolve_selectors(ld, f, &raw.select, selectors);
    resolve_machines(ld, f, &raw.machines, machines, selectors);
    let bmc = raw.bmc.as_ref().and_then(|b| resolve_bmc(ld, f, b));
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
                "local" => AfterProvision::Local,
                other => AfterProvision::Profile(other.to_string()),
            }),
        bmc,
    }
}

/// `bmc = {...}`: exactly one password source, a URL (or a template of one) with a scheme
/// Redfish uses, files resolved against the profile's directory.
fn resolve_bmc(ld: &mut Loader, f: &File<'_>, raw: &Spanned<RawBmc>) -> Option<BmcSettings> {
    let (path, source) = (f.path, f.source);
    let r = raw.get_ref();
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut ok = true;
    let redfish = r.redfish.get_ref().trim().to_string();
    if let Err(e) = minijinja::Environment::new().template_from_str(&redfish) {
        ld.err(
            path,
            source,
            r.redfish.span().start,
            format!("bmc.redfish: {e}"),
        );
        ok = false;
    } else if !(redfish.contains("{{")
        || redfish.starts_with("https://")
        || redfish.starts_with("http://"))
    {
        ld.err(
            path,
            source,
            r.redfish.span().start,
            format!(
                "bmc.redfish = {redfish:?}: a URL, https://host[:port] (http:// for an emulator)"
            ),
        );
        ok = false;
    }
    let password = match (&r.password_file, &r.password_env) {
        (Some(file), None) => Some(BmcPassword::File(dir.join(file.get_ref()))),
        (None, Some(env)) => Some(BmcPassword::Env(env.get_ref().clone())),
        _ => {
            ld.err(
                path,
                source,
                raw.span().start,
                "bmc: give the password as password_file = \"…\" or password_env = \"VARIABLE\" (one of them; never in the profile itself)",
            );
            None
        }
    };
    let password = password.filter(|_| ok)?;
    Some(BmcSettings {
        redfish,
        user: r.user.get_ref().clone(),
        password,
        ca_file: r.ca_file.as_ref().map(|c| dir.join(c.get_ref())),
        insecure_tls: r.insecure_tls,
        auth: r.auth,
        at: f.at(raw.span().start),
    })
}

/// The boot section: every string is a template, rendered per machine.
fn resolve_boot(ld: &mut Loader, f: &File<'_>, rb: &RawBoot) -> Boot {
    let (name, path, source) = (f.name, f.path, f.source);
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
    boot.grub_script = match &rb.grub_script {
        Some(s) => ld.file_template(s, path, source).unwrap_or_default(),
        None => "ipxe/grub.cfg.j2".to_string(),
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

    if let Some(l) = &rb.loader {
        match crate::pxe::Loader::parse(l.get_ref()) {
            Some(loader) => boot.loader = loader,
            None => ld.err(
                path,
                source,
                l.span().start,
                format!(
                    "boot.loader = {:?}: one of \"ipxe\" (the default) or \"grub\" (shim and GRUB, for Secure Boot)",
                    l.get_ref()
                ),
            ),
        }
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

    boot
}

/// `[[select]]` entries: each condition parsed, an empty selector refused.
fn resolve_selectors(
    ld: &mut Loader,
    f: &File<'_>,
    raw: &[Spanned<RawSelector>],
    selectors: &mut Vec<Selector>,
) {
    let (path, source) = (f.path, f.source);
    for sel in raw {
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
            profile: f.index,
            conditions: c,
            at: f.at(sel.span().start),
            machine_entry: false,
        });
    }
}

/// `[[machine]]` entries: one per MAC across all profiles, one machine per address; each is
/// also an exact-MAC selector of its profile.
fn resolve_machines(
    ld: &mut Loader,
    f: &File<'_>,
    raw: &[Spanned<RawMachine>],
    machines: &mut HashMap<MacAddr, Machine>,
    selectors: &mut Vec<Selector>,
) {
    let (path, source) = (f.path, f.source);
    for m in raw {
        let r = m.get_ref();
        let mac = match r.mac.get_ref().parse::<MacAddr>() {
            Ok(mac) => mac,
            Err(e) => {
                ld.err(path, source, r.mac.span().start, e.to_string());
                continue;
            }
        };
        let here = f.at(r.mac.span().start);
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
        let loader = r.loader.as_ref().and_then(|l| {
            ld.parse(
                path,
                source,
                l,
                "loader (\"ipxe\" or \"grub\")",
                crate::pxe::Loader::parse,
            )
        });
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
                profile: f.index,
                hostname: r.hostname.as_ref().map(|h| h.get_ref().clone()),
                ip,
                uuid,
                vars,
                labels: r.labels.clone(),
                loader,
                bmc: r.bmc.as_ref().and_then(|b| resolve_bmc(ld, f, b)),
                at: here.clone(),
            },
        );
        // A machine entry is an exact-MAC claim on its profile.
        selectors.push(Selector {
            profile: f.index,
            conditions: Conditions {
                macs: [mac].into(),
                ..Default::default()
            },
            at: here,
            machine_entry: true,
        });
    }
}

/// Two selectors of different profiles, equally specific, that one machine could satisfy:
/// which profile it gets would depend on file order. That is a load error.
pub(super) fn check_ambiguity(ld: &mut Loader, profiles: &[Profile], selectors: &[Selector]) {
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
