//! The PXE client classifier: which boot file a DHCP client gets, and why.
//!
//! Table-driven on RFC 4578 option 93 (client system architecture, IANA "Processor
//! Architecture Types"), option 60 (vendor class `PXEClient` / `HTTPClient`) and iPXE's marks
//! (option 77 user class `iPXE`, option 175 iPXE encapsulated options):
//!
//! | client | gets |
//! | --- | --- |
//! | iPXE (any firmware) | `http://<server>/boot.ipxe`: iPXE already runs, so chaining the iPXE binary again would loop forever |
//! | BIOS PXE ROM (93 = 0) | TFTP `undionly.kpxe` |
//! | UEFI x64 PXE (93 = 7 or 9) | TFTP `ipxe.efi` (or `snponly.efi` by config) |
//! | UEFI ia32 / arm32 / arm64 / riscv64 PXE | TFTP the iPXE EFI binary for that arch |
//! | UEFI HTTP boot (`HTTPClient`, 93 = 15/16/18/19/…) | the http:// URL of that iPXE EFI binary, with option 60 `HTTPClient` echoed |
//! | a machine whose profile boots from disk, or with no profile and no default | nothing: the firmware moves on to the next boot device |
//! | no profile, `[discovery] enabled` | iPXE as above (`[dhcp.boot_files]`): it reports its facts and waits to be adopted |
//! | not a PXE client (no option 60 `PXEClient`/`HTTPClient`, not iPXE) | nothing (an address only, in full mode) |
//!
//! File names come from `[dhcp.boot_files]` and a profile may override them per firmware
//! (`[boot.files]`). Nothing here does I/O: `kindling explain` and the DHCP server share it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// What a DHCP request says about the client's boot environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// Option 93, first architecture type listed.
    pub arch: Option<u16>,
    /// Option 60 vendor class identifier, e.g. `PXEClient:Arch:00007:UNDI:003016`.
    pub vendor_class: Option<String>,
    /// Option 77 user class (raw, or the RFC 3004 list), e.g. `iPXE`.
    pub user_class: Option<Vec<u8>>,
    /// Whether option 175 (iPXE encapsulated options) is present.
    pub ipxe_options: bool,
}

/// A firmware family: the key boot files are configured by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// x86 BIOS (legacy PXE ROM).
    Bios,
    /// 32-bit x86 UEFI.
    UefiIa32,
    /// 64-bit x86 UEFI.
    UefiX64,
    /// 32-bit ARM UEFI.
    UefiArm32,
    /// 64-bit ARM UEFI.
    UefiArm64,
    /// 64-bit RISC-V UEFI.
    UefiRiscv64,
    /// 64-bit LoongArch UEFI.
    UefiLoong64,
}

impl Firmware {
    /// The name used in config and logs.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::UefiIa32 => "uefi_ia32",
            Firmware::UefiX64 => "uefi_x64",
            Firmware::UefiArm32 => "uefi_arm32",
            Firmware::UefiArm64 => "uefi_arm64",
            Firmware::UefiRiscv64 => "uefi_riscv64",
            Firmware::UefiLoong64 => "uefi_loong64",
        }
    }

    /// iPXE's `${buildarch}` for this firmware: what profiles select on.
    pub fn ipxe_arch(self) -> &'static str {
        match self {
            Firmware::Bios | Firmware::UefiIa32 => "i386",
            Firmware::UefiX64 => "x86_64",
            Firmware::UefiArm32 => "arm32",
            Firmware::UefiArm64 => "arm64",
            Firmware::UefiRiscv64 => "riscv64",
            Firmware::UefiLoong64 => "loong64",
        }
    }

    /// iPXE's `${platform}` for this firmware.
    pub fn platform(self) -> &'static str {
        if self == Firmware::Bios {
            "pcbios"
        } else {
            "efi"
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The loader a profile's UEFI machines start: iPXE (the default) or, for Secure Boot, the
/// signed chain shim → GRUB → Kindling's grub.cfg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Loader {
    /// iPXE (unsigned: a Secure Boot firmware refuses it).
    #[default]
    Ipxe,
    /// shim (signed by Microsoft) → GRUB (signed by the distribution) → grub.cfg.
    Grub,
}

impl Loader {
    /// The name used in profiles and logs.
    pub fn name(self) -> &'static str {
        match self {
            Loader::Ipxe => "ipxe",
            Loader::Grub => "grub",
        }
    }

    /// `loader = "…"` of a profile.
    pub fn parse(s: &str) -> Option<Loader> {
        match s {
            "ipxe" => Some(Loader::Ipxe),
            "grub" => Some(Loader::Grub),
            _ => None,
        }
    }
}

/// One row of the architecture table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchType {
    /// The option 93 code.
    pub code: u16,
    /// The IANA name.
    pub name: &'static str,
    /// The firmware family, if Kindling can boot it.
    pub firmware: Option<Firmware>,
    /// Whether this is a UEFI HTTP boot client (boot file is a URL).
    pub http: bool,
}

/// Option 93 codes (IANA "Processor Architecture Types"). 7 is "EFI BC" in RFC 4578 but every
/// x64 UEFI firmware in the field sends 7 or 9 for x64.
pub const ARCH_TYPES: &[ArchType] = &[
    ArchType {
        code: 0,
        name: "x86 BIOS",
        firmware: Some(Firmware::Bios),
        http: false,
    },
    ArchType {
        code: 1,
        name: "NEC/PC98",
        firmware: None,
        http: false,
    },
    ArchType {
        code: 2,
        name: "EFI Itanium",
        firmware: None,
        http: false,
    },
    ArchType {
        code: 3,
        name: "DEC Alpha",
        firmware: None,
        http: false,
    },
    ArchType {
        code: 4,
        name: "Arc x86",
        firmware: None,
        http: false,
    },
    ArchType {
        code: 5,
        name: "Intel Lean Client",
        firmware: None,
        http: false,
    },
    ArchType {
        code: 6,
        name: "x86 UEFI",
        firmware: Some(Firmware::UefiIa32),
        http: false,
    },
    ArchType {
        code: 7,
        name: "x64 UEFI (EFI BC)",
        firmware: Some(Firmware::UefiX64),
        http: false,
    },
    ArchType {
        code: 8,
        name: "EFI Xscale",
        firmware: None,
        http: false,
    },
    ArchType {
        code: 9,
        name: "x64 UEFI",
        firmware: Some(Firmware::UefiX64),
        http: false,
    },
    ArchType {
        code: 10,
        name: "ARM 32-bit UEFI",
        firmware: Some(Firmware::UefiArm32),
        http: false,
    },
    ArchType {
        code: 11,
        name: "ARM 64-bit UEFI",
        firmware: Some(Firmware::UefiArm64),
        http: false,
    },
    ArchType {
        code: 15,
        name: "x86 UEFI HTTP",
        firmware: Some(Firmware::UefiIa32),
        http: true,
    },
    ArchType {
        code: 16,
        name: "x64 UEFI HTTP",
        firmware: Some(Firmware::UefiX64),
        http: true,
    },
    ArchType {
        code: 18,
        name: "ARM 32-bit UEFI HTTP",
        firmware: Some(Firmware::UefiArm32),
        http: true,
    },
    ArchType {
        code: 19,
        name: "ARM 64-bit UEFI HTTP",
        firmware: Some(Firmware::UefiArm64),
        http: true,
    },
    ArchType {
        code: 20,
        name: "PC/AT BIOS HTTP",
        firmware: None,
        http: true,
    },
    ArchType {
        code: 27,
        name: "RISC-V 64-bit UEFI",
        firmware: Some(Firmware::UefiRiscv64),
        http: false,
    },
    ArchType {
        code: 28,
        name: "RISC-V 64-bit UEFI HTTP",
        firmware: Some(Firmware::UefiRiscv64),
        http: true,
    },
    ArchType {
        code: 39,
        name: "LoongArch 64-bit UEFI",
        firmware: Some(Firmware::UefiLoong64),
        http: false,
    },
    ArchType {
        code: 40,
        name: "LoongArch 64-bit UEFI HTTP",
        firmware: Some(Firmware::UefiLoong64),
        http: true,
    },
];

/// The table row for an option 93 code.
pub fn arch_type(code: u16) -> Option<&'static ArchType> {
    ARCH_TYPES.iter().find(|a| a.code == code)
}

/// Architectures iPXE reports in `${buildarch}` (and DHCP maps option 93 to).
pub const ARCHES: &[&str] = &[
    "i386", "x86_64", "arm32", "arm64", "riscv32", "riscv64", "loong64",
];
/// Firmware platforms iPXE reports in `${platform}`.
pub const PLATFORMS: &[&str] = &["pcbios", "efi"];

/// `[dhcp.boot_files]`: the iPXE binary each firmware family gets, relative to
/// `paths.ipxe_binaries` (TFTP) or `/boot/` on the HTTP service (UEFI HTTP boot).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootFiles {
    /// BIOS PXE ROMs: iPXE's UNDI loader, which keeps using the ROM's network driver.
    pub bios: String,
    /// 32-bit x86 UEFI.
    pub uefi_ia32: String,
    /// 64-bit x86 UEFI: `ipxe.efi` (iPXE's own drivers) or `snponly.efi` (the firmware's).
    pub uefi_x64: String,
    /// 32-bit ARM UEFI.
    pub uefi_arm32: String,
    /// 64-bit ARM UEFI (not in Debian's amd64 `ipxe` package: put it in `ipxe_binaries`).
    pub uefi_arm64: String,
    /// 64-bit RISC-V UEFI.
    pub uefi_riscv64: String,
    /// 64-bit LoongArch UEFI.
    pub uefi_loong64: String,
    /// The name the shim (`paths.shim`) is served as, to UEFI x64 machines of `loader = "grub"`
    /// profiles.
    pub shim: String,
    /// The name GRUB (`paths.grub`) is served as: shim fetches `grubx64.efi` from the directory
    /// it came from.
    pub grub: String,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".into(),
            uefi_ia32: "ipxe-i386.efi".into(),
            uefi_x64: "ipxe.efi".into(),
            uefi_arm32: "snp-arm32.efi".into(),
            uefi_arm64: "snp-arm64.efi".into(),
            uefi_riscv64: "snp-riscv64.efi".into(),
            uefi_loong64: "snp-loong64.efi".into(),
            shim: "shimx64.efi".into(),
            grub: "grubx64.efi".into(),
        }
    }
}

impl BootFiles {
    /// The file for a firmware family.
    pub fn get(&self, fw: Firmware) -> &str {
        match fw {
            Firmware::Bios => &self.bios,
            Firmware::UefiIa32 => &self.uefi_ia32,
            Firmware::UefiX64 => &self.uefi_x64,
            Firmware::UefiArm32 => &self.uefi_arm32,
            Firmware::UefiArm64 => &self.uefi_arm64,
            Firmware::UefiRiscv64 => &self.uefi_riscv64,
            Firmware::UefiLoong64 => &self.uefi_loong64,
        }
    }

    /// Every (firmware, file) pair, for validation.
    pub fn all(&self) -> [(Firmware, &str); 7] {
        [
            Firmware::Bios,
            Firmware::UefiIa32,
            Firmware::UefiX64,
            Firmware::UefiArm32,
            Firmware::UefiArm64,
            Firmware::UefiRiscv64,
            Firmware::UefiLoong64,
        ]
        .map(|f| (f, self.get(f)))
    }
}

/// The BOOTP `file` field holds 128 bytes including the terminating NUL (and dhcproto panics
/// on longer names): config loading rejects longer boot file names.
pub const MAX_BOOT_FILE_LEN: usize = 127;

/// Why a boot file name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootFileError {
    /// No name.
    #[error("boot file name is empty")]
    Empty,
    /// Longer than the BOOTP `file` field.
    #[error("boot file name is {0} bytes; at most {MAX_BOOT_FILE_LEN} fit the DHCP file field")]
    TooLong(usize),
    /// Absolute, or reaching out of the binaries directory.
    #[error("boot file {0:?} must be a relative path without '..'")]
    Escapes(String),
}

/// A boot file name must fit the BOOTP `file` field and stay inside the binaries directory.
pub fn check_boot_file(file: &str) -> Result<(), BootFileError> {
    if file.is_empty() {
        return Err(BootFileError::Empty);
    }
    if file.len() > MAX_BOOT_FILE_LEN {
        return Err(BootFileError::TooLong(file.len()));
    }
    if file.starts_with('/') || file.split('/').any(|c| c == "..") || file.contains(['\\', '\0']) {
        return Err(BootFileError::Escapes(file.to_string()));
    }
    Ok(())
}

/// What the machine's profile says about booting, as far as DHCP is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineBoot {
    /// Netboot with this profile; optional per-firmware boot file overrides.
    Netboot {
        /// The profile name.
        profile: String,
        /// `[boot.files]` of the profile.
        files: BTreeMap<Firmware, String>,
        /// The profile's loader.
        loader: Loader,
    },
    /// The profile boots from local disk.
    LocalDisk {
        /// The profile name.
        profile: String,
    },
    /// No profile matches and there is no default.
    NoProfile,
    /// No profile matches, and `[discovery] enabled`: iPXE, so that the machine reports its
    /// facts through `/boot.ipxe` and waits there to be adopted.
    Discover,
}

impl MachineBoot {
    /// [`MachineBoot::Discover`] instead of [`MachineBoot::NoProfile`] when `[discovery]` is on.
    pub fn or_discover(self, discovery: bool) -> MachineBoot {
        match self {
            MachineBoot::NoProfile if discovery => MachineBoot::Discover,
            other => other,
        }
    }
}

/// Where the boot file is fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFile {
    /// A file name on Kindling's TFTP service.
    Tftp(String),
    /// An http:// URL (UEFI HTTP boot, or iPXE's boot script).
    Http(String),
}

/// The classifier's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The boot file, or `None` for no boot information at all.
    pub boot_file: Option<BootFile>,
    /// The client's firmware family, when known.
    pub firmware: Option<Firmware>,
    /// Whether the client is iPXE (answer with the script; never chainload iPXE again).
    pub ipxe: bool,
    /// Option 60 to put in the reply: `PXEClient` or `HTTPClient` (UEFI HTTP boot requires the
    /// echo to accept the offer); `None` for non-PXE clients.
    pub vendor_class: Option<&'static str>,
}

/// Where the steps of a decision go: nowhere on the DHCP hot path, into a list for
/// `kindling explain` and debug logs. The text of a step is only built when it is kept.
pub trait Trace {
    /// Note one step.
    fn note(&mut self, step: impl FnOnce() -> String);
}

/// No trace: what each packet uses.
impl Trace for () {
    fn note(&mut self, _: impl FnOnce() -> String) {}
}

/// Every step, in order.
impl Trace for Vec<String> {
    fn note(&mut self, step: impl FnOnce() -> String) {
        self.push(step());
    }
}

/// Whether option 77 says iPXE: raw `iPXE` (what iPXE sends) or an RFC 3004 list holding it.
fn user_class_is_ipxe(uc: &[u8]) -> bool {
    if uc == b"iPXE" {
        return true;
    }
    let mut rest = uc;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || len > tail.len() {
            return false;
        }
        if &tail[..len] == b"iPXE" {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// Decide what a client gets. `base_url` is the HTTP service's URL as machines see it.
pub fn decide(
    client: &ClientInfo,
    machine: &MachineBoot,
    files: &BootFiles,
    base_url: &str,
) -> Decision {
    classify(client, machine, files, base_url, &mut ())
}

/// [`decide`], with each step of why (`kindling explain`).
pub fn explain(
    client: &ClientInfo,
    machine: &MachineBoot,
    files: &BootFiles,
    base_url: &str,
) -> (Decision, Vec<String>) {
    let mut why = Vec::new();
    let d = classify(client, machine, files, base_url, &mut why);
    (d, why)
}

fn classify(
    client: &ClientInfo,
    machine: &MachineBoot,
    files: &BootFiles,
    base_url: &str,
    why: &mut impl Trace,
) -> Decision {
    let vc = client.vendor_class.as_deref().unwrap_or("");
    let is_pxe = vc.starts_with("PXEClient");
    let is_http = vc.starts_with("HTTPClient");
    let ipxe = client.user_class.as_deref().is_some_and(user_class_is_ipxe) || client.ipxe_options;
    let arch = client.arch.map(|code| (code, arch_type(code)));
    match arch {
        Some((code, Some(a))) => why.note(|| format!("option 93 = {code} ({})", a.name)),
        Some((code, None)) => {
            why.note(|| format!("option 93 = {code} (not in the IANA table Kindling knows)"))
        }
        None => why.note(|| {
            "no option 93 (architecture): assuming x86 BIOS if this is a PXE client".into()
        }),
    }
    if !vc.is_empty() {
        why.note(|| format!("option 60 = {vc:?}"));
    }
    let firmware = match arch {
        Some((_, Some(a))) => a.firmware,
        Some((_, None)) => None,
        None => Some(Firmware::Bios),
    };
    let http_arch = arch.and_then(|(_, a)| a).is_some_and(|a| a.http);
    let vendor_class = if is_http || (http_arch && !is_pxe) {
        Some("HTTPClient")
    } else if is_pxe || ipxe {
        Some("PXEClient")
    } else {
        None
    };
    let mut decision = Decision {
        boot_file: None,
        firmware,
        ipxe,
        vendor_class,
    };

    if !is_pxe && !is_http && !ipxe {
        why.note(|| {
            "not a network-boot client (no PXEClient/HTTPClient class, not iPXE): address only"
                .into()
        });
        decision.vendor_class = None;
        return decision;
    }
    // The stand-in "profile" of a machine being discovered: the default files.
    static NO_FILES: BTreeMap<Firmware, String> = BTreeMap::new();
    let profile = match machine {
        MachineBoot::NoProfile => {
            why.note(|| {
                "no profile matches this machine and there is no default profile: no boot file"
                    .into()
            });
            return decision;
        }
        MachineBoot::LocalDisk { profile } => {
            why.note(|| format!("profile {profile:?} boots from local disk: no boot file"));
            return decision;
        }
        MachineBoot::Netboot {
            profile,
            files,
            loader,
        } => (profile.as_str(), files, *loader),
        MachineBoot::Discover => {
            why.note(|| {
                "no profile matches this machine; [discovery] is on: iPXE, to report its facts and wait to be adopted"
                    .into()
            });
            ("(discovery)", &NO_FILES, Loader::Ipxe)
        }
    };
    why.note(|| format!("profile {:?}", profile.0));
    if ipxe {
        let url = format!("{base_url}/boot.ipxe");
        why.note(|| format!(
            "user class iPXE: iPXE is already running, so it gets the boot script {url} (sending the iPXE binary again would loop)"
        ));
        decision.boot_file = Some(BootFile::Http(url));
        return decision;
    }
    let Some(fw) = firmware else {
        why.note(|| "no iPXE binary for this architecture: no boot file".into());
        return decision;
    };
    if profile.2 == Loader::Grub {
        if fw == Firmware::UefiX64 {
            let chain = format!(
                "shim {} (signed by Microsoft) → GRUB {} (signed by the distribution) → grub/grub.cfg rendered for this machine → kernel",
                files.shim, files.grub
            );
            if decision.vendor_class == Some("HTTPClient") {
                let url = format!("{base_url}/boot/{}", files.shim);
                why.note(|| format!("profile {:?} loader = \"grub\" (Secure Boot), UEFI HTTP boot client: {chain}, over HTTP: {url}", profile.0));
                decision.boot_file = Some(BootFile::Http(url));
            } else {
                why.note(|| format!("profile {:?} loader = \"grub\" (Secure Boot), UEFI x64 PXE ROM: {chain}, over TFTP: {}", profile.0, files.shim));
                decision.boot_file = Some(BootFile::Tftp(files.shim.clone()));
            }
            return decision;
        }
        why.note(|| {
            format!(
                "profile {:?} loader = \"grub\", but the shim and GRUB chain is for UEFI x64 only: {} gets iPXE",
                profile.0,
                fw.name()
            )
        });
    }
    if fw != Firmware::Bios && profile.2 == Loader::Ipxe {
        why.note(|| {
            format!(
                "iPXE is not signed: a machine with UEFI Secure Boot on refuses it (and stalls in firmware); give profile {:?} loader = \"grub\" for the signed shim → GRUB chain",
                profile.0
            )
        });
    }
    let (file, source) = match profile.1.get(&fw) {
        Some(f) => (
            f.clone(),
            format!("profile {:?} [boot.files] {}", profile.0, fw.name()),
        ),
        None => (
            files.get(fw).to_string(),
            format!("[dhcp.boot_files] {}", fw.name()),
        ),
    };
    if decision.vendor_class == Some("HTTPClient") {
        let url = format!("{base_url}/boot/{file}");
        why.note(|| {
            format!(
                "UEFI HTTP boot client ({}): iPXE binary over HTTP from {source}: {url}",
                fw.name()
            )
        });
        decision.boot_file = Some(BootFile::Http(url));
    } else {
        why.note(|| {
            format!(
                "{} PXE ROM: iPXE binary over TFTP from {source}: {file}",
                fw.name()
            )
        });
        decision.boot_file = Some(BootFile::Tftp(file));
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://10.0.0.2:8080";

    fn netboot() -> MachineBoot {
        MachineBoot::Netboot {
            profile: "worker".into(),
            files: BTreeMap::new(),
            loader: Loader::Ipxe,
        }
    }

    fn client(arch: Option<u16>, vc: &str, uc: Option<&[u8]>) -> ClientInfo {
        ClientInfo {
            arch,
            vendor_class: (!vc.is_empty()).then(|| vc.to_string()),
            user_class: uc.map(<[u8]>::to_vec),
            ipxe_options: false,
        }
    }

    /// (option 93, option 60, option 77) → boot file, firmware, option 60 echo.
    type Case = (
        Option<u16>,
        &'static str,
        Option<&'static [u8]>,
        Option<BootFile>,
        Option<Firmware>,
        Option<&'static str>,
    );

    /// The classifier table.
    #[test]
    fn table() {
        let tftp = |f: &str| Some(BootFile::Tftp(f.into()));
        let http = |u: &str| Some(BootFile::Http(format!("{BASE}{u}")));
        let cases: &[Case] = &[
            (
                Some(0),
                "PXEClient:Arch:00000:UNDI:002001",
                None,
                tftp("undionly.kpxe"),
                Some(Firmware::Bios),
                Some("PXEClient"),
            ),
            (
                None,
                "PXEClient",
                None,
                tftp("undionly.kpxe"),
                Some(Firmware::Bios),
                Some("PXEClient"),
            ),
            (
                Some(7),
                "PXEClient:Arch:00007:UNDI:003016",
                None,
                tftp("ipxe.efi"),
                Some(Firmware::UefiX64),
                Some("PXEClient"),
            ),
            (
                Some(9),
                "PXEClient:Arch:00009:UNDI:003016",
                None,
                tftp("ipxe.efi"),
                Some(Firmware::UefiX64),
                Some("PXEClient"),
            ),
            (
                Some(6),
                "PXEClient:Arch:00006:UNDI:003016",
                None,
                tftp("ipxe-i386.efi"),
                Some(Firmware::UefiIa32),
                Some("PXEClient"),
            ),
            (
                Some(11),
                "PXEClient:Arch:00011:UNDI:003000",
                None,
                tftp("snp-arm64.efi"),
                Some(Firmware::UefiArm64),
                Some("PXEClient"),
            ),
            (
                Some(10),
                "PXEClient",
                None,
                tftp("snp-arm32.efi"),
                Some(Firmware::UefiArm32),
                Some("PXEClient"),
            ),
            (
                Some(27),
                "PXEClient",
                None,
                tftp("snp-riscv64.efi"),
                Some(Firmware::UefiRiscv64),
                Some("PXEClient"),
            ),
            (
                Some(16),
                "HTTPClient:Arch:00016:UNDI:003001",
                None,
                http("/boot/ipxe.efi"),
                Some(Firmware::UefiX64),
                Some("HTTPClient"),
            ),
            (
                Some(19),
                "HTTPClient:Arch:00019:UNDI:003001",
                None,
                http("/boot/snp-arm64.efi"),
                Some(Firmware::UefiArm64),
                Some("HTTPClient"),
            ),
            (Some(16), "", None, None, Some(Firmware::UefiX64), None),
            (
                Some(0),
                "PXEClient",
                Some(b"iPXE"),
                http("/boot.ipxe"),
                Some(Firmware::Bios),
                Some("PXEClient"),
            ),
            (
                Some(7),
                "PXEClient",
                Some(b"iPXE"),
                http("/boot.ipxe"),
                Some(Firmware::UefiX64),
                Some("PXEClient"),
            ),
            (
                Some(7),
                "",
                Some(b"\x04iPXE"),
                http("/boot.ipxe"),
                Some(Firmware::UefiX64),
                Some("PXEClient"),
            ),
            (None, "", None, None, Some(Firmware::Bios), None),
            (None, "MSFT 5.0", None, None, Some(Firmware::Bios), None),
            (Some(2), "PXEClient", None, None, None, Some("PXEClient")),
            (Some(999), "PXEClient", None, None, None, Some("PXEClient")),
        ];
        for (arch, vc, uc, file, fw, echo) in cases {
            let (d, why) = explain(
                &client(*arch, vc, *uc),
                &netboot(),
                &BootFiles::default(),
                BASE,
            );
            let ctx = format!("arch {arch:?} vc {vc:?} uc {uc:?}: {why:#?}");
            assert_eq!(&d.boot_file, file, "{ctx}");
            assert_eq!(&d.firmware, fw, "{ctx}");
            assert_eq!(d.vendor_class, *echo, "{ctx}");
        }
    }

    /// `loader = "grub"`: UEFI x64 PXE ROMs get the shim over TFTP, UEFI HTTP boot clients
    /// its URL; other firmware and iPXE itself go on with iPXE; `explain` names the chain.
    #[test]
    fn the_grub_loader_sends_uefi_x64_to_the_shim() {
        let files = BootFiles::default();
        let m = MachineBoot::Netboot {
            profile: "secure".into(),
            files: BTreeMap::new(),
            loader: Loader::Grub,
        };
        let (d, why) = explain(
            &client(Some(7), "PXEClient:Arch:00007", None),
            &m,
            &files,
            BASE,
        );
        assert_eq!(d.boot_file, Some(BootFile::Tftp("shimx64.efi".into())));
        assert!(
            why.iter().any(|w| w.contains("shim shimx64.efi")
                && w.contains("GRUB grubx64.efi")
                && w.contains("grub/grub.cfg")),
            "{why:?}"
        );
        let d = decide(
            &client(Some(16), "HTTPClient:Arch:00016", None),
            &m,
            &files,
            BASE,
        );
        assert_eq!(
            d.boot_file,
            Some(BootFile::Http(format!("{BASE}/boot/shimx64.efi")))
        );
        assert_eq!(d.vendor_class, Some("HTTPClient"));
        let (d, why) = explain(
            &client(Some(0), "PXEClient:Arch:00000", None),
            &m,
            &files,
            BASE,
        );
        assert_eq!(d.boot_file, Some(BootFile::Tftp("undionly.kpxe".into())));
        assert!(why.iter().any(|w| w.contains("UEFI x64 only")), "{why:?}");
        let d = decide(
            &client(Some(7), "PXEClient", Some(b"iPXE")),
            &m,
            &files,
            BASE,
        );
        assert_eq!(
            d.boot_file,
            Some(BootFile::Http(format!("{BASE}/boot.ipxe")))
        );
        // An iPXE profile's UEFI machines: explain warns that Secure Boot refuses iPXE.
        let (_, why) = explain(
            &client(Some(7), "PXEClient", None),
            &netboot(),
            &files,
            BASE,
        );
        assert!(
            why.iter().any(|w| w.contains("iPXE is not signed")),
            "{why:?}"
        );
        let (_, why) = explain(
            &client(Some(0), "PXEClient", None),
            &netboot(),
            &files,
            BASE,
        );
        assert!(
            !why.iter().any(|w| w.contains("not signed")),
            "BIOS: {why:?}"
        );
        assert_eq!(Loader::parse("grub"), Some(Loader::Grub));
        assert_eq!(Loader::parse("shim"), None);
    }

    /// With `[discovery]` on, a machine no profile knows gets iPXE (the default files, never
    /// a profile's), then the boot script; without it, nothing.
    #[test]
    fn discovery_gives_unknown_machines_ipxe() {
        assert_eq!(
            MachineBoot::NoProfile.or_discover(false),
            MachineBoot::NoProfile
        );
        assert_eq!(
            MachineBoot::NoProfile.or_discover(true),
            MachineBoot::Discover
        );
        let local = MachineBoot::LocalDisk {
            profile: "installed".into(),
        };
        assert_eq!(
            local.clone().or_discover(true),
            local,
            "a profile's choice stays"
        );
        let files = BootFiles::default();
        let tftp = |f: &str| Some(BootFile::Tftp(f.into()));
        for (arch, uc, want) in [
            (Some(7), None, tftp(&files.uefi_x64)),
            (Some(0), None, tftp(&files.bios)),
            (
                Some(7),
                Some(&b"iPXE"[..]),
                Some(BootFile::Http(format!("{BASE}/boot.ipxe"))),
            ),
        ] {
            let (d, why) = explain(
                &client(arch, "PXEClient", uc),
                &MachineBoot::Discover,
                &files,
                BASE,
            );
            assert_eq!(d.boot_file, want, "{why:?}");
            assert!(
                why.iter().any(|w| w.contains("[discovery] is on")),
                "{why:?}"
            );
        }
        // Not a PXE client: an address only, as for everyone.
        let d = decide(
            &client(Some(7), "", None),
            &MachineBoot::Discover,
            &files,
            BASE,
        );
        assert_eq!(d.boot_file, None);
    }

    #[test]
    fn option_175_marks_ipxe() {
        let mut c = client(Some(7), "PXEClient", None);
        c.ipxe_options = true;
        let d = decide(&c, &netboot(), &BootFiles::default(), BASE);
        assert_eq!(
            d.boot_file,
            Some(BootFile::Http(format!("{BASE}/boot.ipxe")))
        );
        assert!(d.ipxe);
    }

    #[test]
    fn local_disk_and_unknown_machines_get_nothing() {
        for m in [
            MachineBoot::LocalDisk {
                profile: "installed".into(),
            },
            MachineBoot::NoProfile,
        ] {
            for uc in [None, Some(&b"iPXE"[..])] {
                let (d, why) = explain(
                    &client(Some(7), "PXEClient", uc),
                    &m,
                    &BootFiles::default(),
                    BASE,
                );
                assert_eq!(d.boot_file, None, "{m:?} {why:?}");
                assert!(why.last().unwrap().contains("no boot file"), "{why:?}");
            }
        }
    }

    #[test]
    fn overrides_by_config_and_profile() {
        let files = BootFiles {
            uefi_x64: "snponly.efi".into(),
            ..Default::default()
        };
        let d = decide(
            &client(Some(7), "PXEClient", None),
            &netboot(),
            &files,
            BASE,
        );
        assert_eq!(d.boot_file, Some(BootFile::Tftp("snponly.efi".into())));
        let m = MachineBoot::Netboot {
            profile: "special".into(),
            files: [(Firmware::UefiX64, "custom/ipxe.efi".to_string())].into(),
            loader: Loader::Ipxe,
        };
        let (d, why) = explain(&client(Some(9), "PXEClient", None), &m, &files, BASE);
        assert_eq!(d.boot_file, Some(BootFile::Tftp("custom/ipxe.efi".into())));
        assert!(
            why.iter()
                .any(|w| w.contains("profile \"special\" [boot.files] uefi_x64")),
            "{why:?}"
        );
        // BIOS is not overridden by the profile's x64 entry.
        let d = decide(&client(Some(0), "PXEClient", None), &m, &files, BASE);
        assert_eq!(d.boot_file, Some(BootFile::Tftp("undionly.kpxe".into())));
    }

    #[test]
    fn rfc3004_user_class_parsing_is_bounded() {
        assert!(user_class_is_ipxe(b"iPXE"));
        assert!(user_class_is_ipxe(b"\x03abc\x04iPXE"));
        assert!(!user_class_is_ipxe(b"\x09iPXE"), "length beyond the data");
        assert!(!user_class_is_ipxe(b"\x00"));
        assert!(!user_class_is_ipxe(b""));
        assert!(!user_class_is_ipxe(b"ipxe"));
    }

    #[test]
    fn table_codes_are_unique_and_ipxe_arches_are_selectable() {
        let mut codes: Vec<u16> = ARCH_TYPES.iter().map(|a| a.code).collect();
        codes.dedup();
        assert_eq!(codes.len(), ARCH_TYPES.len());
        for a in ARCH_TYPES.iter().filter_map(|a| a.firmware) {
            assert!(ARCHES.contains(&a.ipxe_arch()), "{a}");
        }
    }
}
