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
pub mod documents;
mod load;
mod raw;
mod resolve;
pub mod select;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::SystemTime;

use minijinja::Value;

pub use crate::diag::Location;
use crate::mac::MacAddr;
use crate::render::Engine;
pub use documents::{DocumentError, GrubVia, Rendered, What};
pub use select::{Conditions, Facts, Specificity};

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
    "token",
    "ignition_url",
    "metadata_url",
    "generic_url",
    "report_url",
];

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
    pub after_provision: Option<AfterProvision>,
    /// The BMC of its machines that name none themselves (`redfish` usually a template
    /// over their variables).
    pub bmc: Option<BmcSettings>,
}

/// `bmc = { redfish, user, password_file | password_env, ca_file?, insecure_tls?, auth? }`: how to
/// reach a machine's BMC. The password is never in the profile file.
#[derive(Debug, Clone, PartialEq)]
pub struct BmcSettings {
    /// The Redfish URL (`https://10.0.5.21`, or a system's own URL), a template over the
    /// machine's variables, `mac`, `hostname` and `ip`.
    pub redfish: String,
    /// The user.
    pub user: String,
    /// Where the password is.
    pub password: BmcPassword,
    /// PEM CA certificates to trust for the BMC (resolved against the profile's directory).
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (lab BMCs): logged when on.
    pub insecure_tls: bool,
    /// `auto` (a Redfish session where the BMC offers one, else basic), `session` or `basic`.
    pub auth: crate::bmc::Auth,
    /// Where it is declared.
    pub at: Location,
}

/// Where a BMC's password is read from, at each use (so a rotated secret needs no reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BmcPassword {
    /// A file holding it (trailing newline ignored).
    File(PathBuf),
    /// An environment variable of the daemon.
    Env(String),
}

/// What a profile says a machine boots once it is provisioned (`after_provision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterProvision {
    /// Its local disk (iPXE `exit`), so an installer never runs twice by accident.
    Local,
    /// Another profile.
    Profile(String),
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
    /// `loader`: what its UEFI x64 machines start (iPXE, or shim → GRUB for Secure Boot).
    pub loader: crate::pxe::Loader,
    /// The grub.cfg template: the profile's own (`grub_script`) or the built-in
    /// `ipxe/grub.cfg.j2`.
    pub grub_script: String,
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
    /// Its own `loader`, overriding its profile's (one Secure Boot machine in a rack).
    pub loader: Option<crate::pxe::Loader>,
    /// Its BMC, over its profile's.
    pub bmc: Option<BmcSettings>,
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
    /// Why this profile: for logs and `kindling render` (formatted only when shown).
    pub reason: Reason<'a>,
}

/// Why [`ProfileSet::select`] chose a profile.
#[derive(Debug, Clone, Copy)]
pub enum Reason<'a> {
    /// The machine's own selector (its selector or its `[[machine]]` entry).
    Selector(&'a Selector),
    /// No selector matched: the default profile.
    Default,
}

impl std::fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Selector(s) if s.machine_entry => write!(f, "machine entry at {}", s.at),
            Reason::Selector(s) => write!(f, "selector {} at {}", s.conditions, s.at),
            Reason::Default => f.write_str("default profile (no selector matched)"),
        }
    }
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
    /// Every template, compiled.
    pub(crate) engine: Engine,
    /// When this set was loaded.
    pub loaded_at: SystemTime,
    /// A hash of every file it was loaded from (profiles, templates, iPXE scripts): instances
    /// serving the same files show the same digest.
    pub digest: String,
    /// Boot scripts rendered before, by everything they depend on but the boot secret.
    pub(crate) scripts: documents::ScriptCache,
}

impl std::fmt::Debug for ProfileSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileSet")
            .field("profiles", &self.profiles.len())
            .field("machines", &self.machines.len())
            .finish()
    }
}

impl ProfileSet {
    /// Choose the profile for a machine: its most specific matching selector, else the default.
    pub fn select(&self, facts: &Facts) -> Option<Match<'_>> {
        let machine = self.machines.get(&facts.mac);
        // Selectors are sorted most specific first, and equally specific overlapping selectors
        // of different profiles were rejected at load: the first match is the answer.
        if let Some(s) = self.selectors.iter().find(|s| s.conditions.matches(facts)) {
            return Some(Match {
                profile: &self.profiles[s.profile],
                machine,
                reason: Reason::Selector(s),
            });
        }
        self.default.map(|d| Match {
            profile: &self.profiles[d],
            machine,
            reason: Reason::Default,
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
                    loader: m
                        .machine
                        .and_then(|mm| mm.loader)
                        .unwrap_or(m.profile.boot.loader),
                },
                Some(m),
            ),
        }
    }

    /// How to reach `mac`'s BMC: its `[[machine]]` entry's `bmc`, else its profile's, with the
    /// URL rendered for the machine and the password read now. `None`: no BMC is configured
    /// (Wake-on-LAN it is); an error says what is missing.
    pub fn bmc(
        &self,
        mac: MacAddr,
        timeout: std::time::Duration,
    ) -> Option<Result<crate::bmc::Endpoint, String>> {
        let machine = self.machines.get(&mac)?;
        let profile = &self.profiles[machine.profile];
        let settings = machine.bmc.as_ref().or(profile.bmc.as_ref())?;
        Some(bmc_endpoint(settings, profile, machine, timeout))
    }

    /// Whether `mac` has a BMC setting (its own or its profile's), usable or not: no file is
    /// read.
    pub fn has_bmc(&self, mac: MacAddr) -> bool {
        self.machines
            .get(&mac)
            .is_some_and(|m| m.bmc.is_some() || self.profiles[m.profile].bmc.is_some())
    }

    /// A profile by name.
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }
}
fn bmc_endpoint(
    settings: &BmcSettings,
    profile: &Profile,
    machine: &Machine,
    timeout: std::time::Duration,
) -> Result<crate::bmc::Endpoint, String> {
    let mac = machine.mac;
    let mut ctx: BTreeMap<String, Value> = profile.vars.clone();
    ctx.extend(machine.vars.clone());
    ctx.insert("mac".into(), Value::from(mac.to_string()));
    if let Some(h) = &machine.hostname {
        ctx.insert("hostname".into(), Value::from(h.clone()));
    }
    if let Some(ip) = machine.ip {
        ctx.insert("ip".into(), Value::from(ip.to_string()));
    }
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let url = env
        .render_str(&settings.redfish, ctx)
        .map_err(|e| format!("{mac}: bmc.redfish at {}: {e}", settings.at))?;
    let url = url.trim().to_string();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!(
            "{mac}: bmc.redfish at {} is {url:?}: not an https:// URL",
            settings.at
        ));
    }
    let password = match &settings.password {
        BmcPassword::File(p) => std::fs::read_to_string(p)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| {
                format!(
                    "{mac}: bmc.password_file {} (at {}): {e}",
                    p.display(),
                    settings.at
                )
            })?,
        BmcPassword::Env(name) => std::env::var(name).map_err(|_| {
            format!(
                "{mac}: bmc.password_env {name} (at {}): the daemon has no such environment variable",
                settings.at
            )
        })?,
    };
    let ca_pem = match &settings.ca_file {
        Some(p) => Some(std::fs::read(p).map_err(|e| {
            format!(
                "{mac}: bmc.ca_file {} (at {}): {e}",
                p.display(),
                settings.at
            )
        })?),
        None => None,
    };
    Ok(crate::bmc::Endpoint {
        url,
        user: settings.user.clone(),
        password,
        ca_pem,
        insecure_tls: settings.insecure_tls,
        auth: settings.auth,
        timeout,
    })
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

#[cfg(test)]
mod tests;
