//! What `[dhcp]` means, checked before DHCP serves anything: subnets whose ranges fit them
//! and do not overlap, a server address on each, reservations on a subnet and for one MAC
//! each, and boot file names that fit the BOOTP `file` field.

use std::collections::HashMap;

use crate::config::{Config, DhcpMode, IpAddr, Issue};

/// Every problem of the `[dhcp]` section, by key.
pub fn check_config(config: &Config) -> Vec<Issue> {
    let d = &config.dhcp;
    let mut issues = Vec::new();
    if d.mode == DhcpMode::Full && d.subnets.is_empty() {
        issues.push(Issue::new(
            "dhcp.mode",
            "dhcp.mode = \"full\" needs at least one [[dhcp.subnet]]",
        ));
    }
    let advertise = match config.server.advertise_ip {
        Some(IpAddr::V4(ip)) => Some(ip),
        _ => None,
    };
    for (i, s) in d.subnets.iter().enumerate() {
        let at = format!("dhcp.subnet[{i}].network");
        let net = s.network.trunc();
        let [first, last] = s.range;
        if u32::from(first) > u32::from(last) {
            issues.push(Issue::new(
                &at,
                format!("subnet {net}: range starts at {first}, after its end {last}"),
            ));
        }
        for ip in [first, last] {
            if !net.contains(&ip) || ip == net.network() || ip == net.broadcast() {
                issues.push(Issue::new(
                    &at,
                    format!("subnet {net}: range address {ip} is not a host address of the subnet"),
                ));
            }
        }
        match s.server_ip.or(advertise) {
            None => issues.push(Issue::new(
                &at,
                format!(
                    "subnet {net}: set server_ip (Kindling's address on it) or server.advertise_ip"
                ),
            )),
            Some(ip) if !net.contains(&ip) && d.subnets.len() == 1 && s.server_ip.is_some() => {
                issues.push(Issue::new(
                    &at,
                    format!("subnet {net}: server_ip {ip} is not on the subnet"),
                ))
            }
            Some(_) => {}
        }
        for (j, other) in d.subnets.iter().enumerate().skip(i + 1) {
            let o = other.network.trunc();
            if net.contains(&o.network()) || o.contains(&net.network()) {
                issues.push(Issue::new(
                    format!("dhcp.subnet[{j}].network"),
                    format!("subnet {o} overlaps subnet {net}"),
                ));
            }
        }
    }
    let mut seen = HashMap::new();
    for (i, r) in d.reservations.iter().enumerate() {
        let at = format!("dhcp.reservation[{i}].ip");
        if let Some(prev) = seen.insert(r.ip, r.mac) {
            issues.push(Issue::new(
                &at,
                format!("address {} is reserved for both {prev} and {}", r.ip, r.mac),
            ));
        }
        if d.mode == DhcpMode::Full && !d.subnets.iter().any(|s| s.network.trunc().contains(&r.ip))
        {
            issues.push(Issue::new(
                &at,
                format!(
                    "reservation {} for {} is on no [[dhcp.subnet]]",
                    r.ip, r.mac
                ),
            ));
        }
    }
    for (fw, file) in d.boot_files.all() {
        if let Err(msg) = crate::pxe::check_boot_file(file) {
            issues.push(Issue::new(
                format!("dhcp.boot_files.{}", fw.name()),
                format!("dhcp.boot_files.{fw}: {msg}"),
            ));
        }
    }
    issues
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::diag::Diagnostics;

    /// The config as `check` and `serve` see it: parsed, then the DHCP section checked.
    fn parse(s: &str) -> Result<Config, Diagnostics> {
        let config = Config::parse(Path::new("/etc/kindling/kindling.toml"), s)?;
        let issues = check_config(&config);
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(config.diagnostics(&issues))
        }
    }

    #[test]
    fn dhcp_subnets_are_checked() {
        let ok = parse(
            "[dhcp]\nmode = \"full\"\ninterfaces = [\"veth0\"]\nlease_time = \"2h\"\n\
             [[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.100\", \"10.0.0.200\"]\n\
             server_ip = \"10.0.0.2\"\nrouter = \"10.0.0.1\"\ndns = [\"10.0.0.2\"]\nlease_time = \"10m\"\n\
             [[dhcp.reservation]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.0.0.10\"\n",
        )
        .unwrap();
        assert_eq!(ok.dhcp.lease_time, Duration::from_secs(7200));
        assert_eq!(
            ok.dhcp.subnets[0].lease_time,
            Some(Duration::from_secs(600))
        );
        assert_eq!(ok.dhcp.offer_time, Duration::from_secs(60));

        let err = |text: &str| parse(text).unwrap_err().to_string();
        let e = err("[dhcp]\nmode = \"full\"\ninterfaces = [\"veth0\"]\n");
        assert!(
            e.contains(":2: dhcp.mode = \"full\" needs at least one [[dhcp.subnet]]"),
            "{e}"
        );
        let subnet = |range: &str| {
            err(&format!(
                "[dhcp]\nmode = \"full\"\ninterfaces = [\"veth0\"]\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = {range}\nserver_ip = \"10.0.0.2\"\n"
            ))
        };
        let e = subnet("[\"10.0.0.200\", \"10.0.0.100\"]");
        assert!(
            e.contains(
                ":5: subnet 10.0.0.0/24: range starts at 10.0.0.200, after its end 10.0.0.100"
            ),
            "{e}"
        );
        let e = subnet("[\"10.0.0.10\", \"10.0.1.5\"]");
        assert!(
            e.contains(":5: subnet 10.0.0.0/24: range address 10.0.1.5 is not a host address"),
            "{e}"
        );
        let e = subnet("[\"10.0.0.0\", \"10.0.0.5\"]");
        assert!(
            e.contains("range address 10.0.0.0 is not a host address"),
            "network address: {e}"
        );
        let e = err(
            "[dhcp]\nmode = \"full\"\ninterfaces = [\"veth0\"]\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.10\", \"10.0.0.20\"]\n",
        );
        assert!(e.contains("set server_ip"), "{e}");
        let e = err(
            "[server]\nadvertise_ip = \"10.0.0.2\"\n[dhcp]\nmode = \"full\"\ninterfaces = [\"veth0\"]\n\
             [[dhcp.subnet]]\nnetwork = \"10.0.0.0/16\"\nrange = [\"10.0.0.10\", \"10.0.0.20\"]\n\
             [[dhcp.subnet]]\nnetwork = \"10.0.5.0/24\"\nrange = [\"10.0.5.10\", \"10.0.5.20\"]\n\
             [[dhcp.reservation]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.9.0.10\"\n\
             [[dhcp.reservation]]\nmac = \"52:54:00:00:00:02\"\nip = \"10.9.0.10\"\n",
        );
        assert!(
            e.contains(":10: subnet 10.0.5.0/24 overlaps subnet 10.0.0.0/16"),
            "{e}"
        );
        assert!(
            e.contains("reservation 10.9.0.10 for 52:54:00:00:00:01 is on no [[dhcp.subnet]]"),
            "{e}"
        );
        assert!(
            e.contains(
                "address 10.9.0.10 is reserved for both 52:54:00:00:00:01 and 52:54:00:00:00:02"
            ),
            "{e}"
        );
        let e = err("[dhcp]\nlease_time = \"forever\"\n");
        assert!(e.contains(":2:"), "{e}");
    }

    #[test]
    fn boot_files_are_checked() {
        let c = parse("[dhcp.boot_files]\nuefi_x64 = \"snponly.efi\"\n").unwrap();
        assert_eq!(c.dhcp.boot_files.uefi_x64, "snponly.efi");
        assert_eq!(c.dhcp.boot_files.bios, "undionly.kpxe");
        let long = "a".repeat(128);
        let err = parse(&format!("[dhcp.boot_files]\nbios = \"{long}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":2: dhcp.boot_files.bios: boot file name is 128 bytes"),
            "{err}"
        );
        let err = parse("[dhcp.boot_files]\n\nuefi_arm64 = \"../../etc/shadow\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":3: dhcp.boot_files.uefi_arm64"), "{err}");
        assert!(parse("[dhcp.boot_files]\nuefi_mips = \"x\"\n").is_err());
    }
}
