//! The TOML forms of a profile file, as written: every value spanned, so a problem found
//! while resolving points at its line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) default: bool,
    #[serde(default)]
    pub(super) boot: RawBoot,
    pub(super) ignition: Option<Spanned<String>>,
    pub(super) after_provision: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) generic: BTreeMap<String, Spanned<String>>,
    pub(super) vars: Option<Spanned<toml::Table>>,
    #[serde(default)]
    pub(super) select: Vec<Spanned<RawSelector>>,
    #[serde(default, rename = "machine")]
    pub(super) machines: Vec<Spanned<RawMachine>>,
    pub(super) bmc: Option<Spanned<RawBmc>>,
}

/// `bmc = { redfish = "https://…", user = "…", password_file = "…" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBmc {
    pub(super) redfish: Spanned<String>,
    pub(super) user: Spanned<String>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) insecure_tls: bool,
    #[serde(default)]
    pub(super) auth: crate::bmc::Auth,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBoot {
    #[serde(default)]
    pub(super) local: bool,
    pub(super) kernel: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) initrd: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) args: Vec<Spanned<String>>,
    pub(super) script: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) files: BTreeMap<String, Spanned<String>>,
    pub(super) loader: Option<Spanned<String>>,
    pub(super) grub_script: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSelector {
    #[serde(default)]
    pub(super) mac: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) uuid: Vec<Spanned<String>>,
    pub(super) mac_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) arch: Vec<Spanned<String>>,
    pub(super) platform: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMachine {
    pub(super) mac: Spanned<String>,
    pub(super) hostname: Option<Spanned<String>>,
    pub(super) ip: Option<Spanned<String>>,
    pub(super) uuid: Option<Spanned<String>>,
    pub(super) vars: Option<Spanned<toml::Table>>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    pub(super) loader: Option<Spanned<String>>,
    pub(super) bmc: Option<Spanned<RawBmc>>,
}
