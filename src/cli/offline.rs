//! The commands that read the config and profiles without starting anything: `check`,
//! `render`, `explain`.

use std::path::Path;
use std::process::ExitCode;

use super::EXIT_CONFIG;
use crate::app;
use crate::config::Config;
use crate::mac::MacAddr;
use crate::profiles::{Facts, ProfileSet, What};

pub(super) fn load_config(path: &Path) -> Result<Config, ExitCode> {
    app::load_config(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// The config, the base URL machines would use, and the profiles: what `render` and `explain`
/// need without starting anything.
fn load_offline(path: &Path) -> Result<(Config, String, ProfileSet), ExitCode> {
    let config = load_config(path)?;
    let base_url = app::offline_base_url(&config);
    let set = ProfileSet::load(&app::sources(&config), &base_url).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    Ok((config, base_url, set))
}

pub(super) fn check(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match ProfileSet::load(&app::sources(&config), &app::offline_base_url(&config)) {
        Ok(set) => {
            // The Secure Boot chain needs its signed binaries.
            let grub: Vec<&str> = set
                .profiles
                .iter()
                .filter(|p| {
                    p.boot.loader == crate::pxe::Loader::Grub
                        || set.machines.values().any(|m| {
                            m.loader == Some(crate::pxe::Loader::Grub)
                                && std::ptr::eq(&set.profiles[m.profile], *p)
                        })
                })
                .map(|p| p.name.as_str())
                .collect();
            let mut missing = Vec::new();
            for (key, file) in [("shim", &config.paths.shim), ("grub", &config.paths.grub)] {
                if !grub.is_empty() && !file.is_file() {
                    missing.push(format!(
                        "paths.{key}: {} does not exist, and profile(s) {} use loader = \"grub\" (Debian: shim-signed, grub-efi-amd64-signed)",
                        file.display(),
                        grub.join(", ")
                    ));
                }
            }
            // Every machine's BMC: its URL renders, its password and CA file are there.
            let mut macs: Vec<_> = set.machines.keys().copied().collect();
            macs.sort();
            let mut insecure = 0;
            for mac in macs {
                match set.bmc(mac, std::time::Duration::from_secs(10)) {
                    Some(Ok(ep)) => {
                        if ep.insecure_tls {
                            insecure += 1;
                        }
                        if let Err(e) = crate::bmc::Bmc::new(ep) {
                            missing.push(format!("{mac}: {e}"));
                        }
                    }
                    Some(Err(e)) => missing.push(e),
                    None => {}
                }
            }
            if insecure > 0 {
                eprintln!(
                    "warning: {insecure} machine(s) have insecure_tls = true: their BMCs' certificates are not checked"
                );
            }
            if !missing.is_empty() {
                for m in &missing {
                    eprintln!("{}: {m}", path.display());
                }
                eprintln!("{} error(s)", missing.len());
                return ExitCode::from(EXIT_CONFIG);
            }
            let default = set
                .default
                .map(|d| set.profiles[d].name.as_str())
                .unwrap_or("none");
            println!(
                "ok: {} profiles, {} machines, {} selectors, default profile: {default}",
                set.profiles.len(),
                set.machines.len(),
                set.selectors.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s)", errors.0.len());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

pub(super) fn render(path: &Path, facts: Facts, what: What) -> ExitCode {
    let (_, base_url, set) = match load_offline(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let Some(m) = set.select(&facts) else {
        eprintln!(
            "kindling: no profile for machine {} and no default profile",
            facts.mac
        );
        return ExitCode::FAILURE;
    };
    eprintln!("# profile {:?}: {}", m.profile.name, m.reason);
    match set.render(m.profile, m.machine, &facts, &base_url, &what) {
        Ok(doc) => {
            print!("{}", doc.body);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kindling: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn explain(
    path: &Path,
    mac: MacAddr,
    arch: Option<u16>,
    user_class: Option<String>,
    vendor_class: Option<String>,
) -> ExitCode {
    use crate::pxe::{self, BootFile, ClientInfo};
    let (config, base_url, set) = match load_offline(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let arch_type = arch.and_then(pxe::arch_type);
    let vendor_class = vendor_class.unwrap_or_else(|| {
        let kind = if arch_type.is_some_and(|a| a.http) {
            "HTTPClient"
        } else {
            "PXEClient"
        };
        match arch {
            Some(a) => format!("{kind}:Arch:{a:05}"),
            None => kind.to_string(),
        }
    });
    let client = ClientInfo {
        arch,
        vendor_class: Some(vendor_class),
        user_class: user_class.map(String::into_bytes),
        ipxe_options: false,
    };
    // What DHCP knows of the machine: its MAC, and the arch/platform that option 93 implies.
    let mut facts = Facts::from_mac(mac);
    if let Some(fw) = arch_type.and_then(|a| a.firmware) {
        facts.arch = Some(fw.ipxe_arch().to_string());
        facts.platform = Some(fw.platform().to_string());
    }
    let (machine, chosen) = set.machine_boot(&facts);
    let machine = machine.or_discover(config.discovery.enabled);
    let (decision, why) = pxe::explain(&client, &machine, &config.dhcp.boot_files, &base_url);
    println!("machine:    {mac}");
    match &chosen {
        Some(m) => println!("profile:    {} ({})", m.profile.name, m.reason),
        None if config.discovery.enabled => println!(
            "profile:    none (no selector matches, no default profile): discovered, waiting to be adopted"
        ),
        None => println!("profile:    none (no selector matches and there is no default profile)"),
    }
    match &decision.boot_file {
        Some(BootFile::Tftp(f)) => println!(
            "boot file:  {f} (TFTP from {})",
            config.paths.ipxe_binaries.display()
        ),
        Some(BootFile::Http(u)) => println!("boot file:  {u} (HTTP)"),
        None => println!("boot file:  none"),
    }
    match decision.vendor_class {
        Some(vc @ "HTTPClient") => println!("option 60:  {vc}"),
        Some(vc) => println!("option 60:  {vc} (proxy mode only)"),
        None => {}
    }
    println!("why:");
    for step in &why {
        println!("  - {step}");
    }
    if config.dhcp.mode == crate::config::DhcpMode::Proxy
        && matches!(&decision.boot_file, Some(BootFile::Tftp(f)) if *f == config.dhcp.boot_files.shim)
    {
        println!(
            "  - proxy mode: GRUB asks the server named in the address server's answer for grub/grub.cfg, not the proxy: \
             that server must name this one as next-server (dnsmasq dhcp-boot=,,<this server's address>; dhcpd/Kea next-server)"
        );
    }
    ExitCode::SUCCESS
}
