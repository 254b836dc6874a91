//! Reading `kindling.toml`: parse, resolve relative paths, check ranges.
//!
//! Only what the config itself can judge is checked here (a value's range, a URL's form, a
//! mode that needs interfaces). What a section *means* to its service (subnets that fit
//! together, DNS records, a Wake-on-LAN password) is that service's `check_config`, and
//! `app::validate` runs them all for `check` and `serve`. Each finding is an [`Issue`] named
//! by its key, so it can be shown at the key's line.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{Config, DhcpMode, PathsConfig, Source, StoreKind};
use crate::diag::{self, Diagnostic, Diagnostics};

/// A problem with one key of the config, e.g. `dhcp.subnet[1].network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The dotted key it is about (its line is looked up in [`Source`]).
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl Issue {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Issue {
        Issue {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Read `path` and check its ranges. Relative paths inside are resolved against its
    /// directory. Services' own checks are `app::validate`.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic::new(
                path,
                None,
                format!("cannot read config: {e}"),
            )])
        })?;
        Config::parse(path, &source)
    }

    /// Parse `text` (the contents of `path`) and check its ranges.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Diagnostics> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| Diagnostics(vec![diag::from_toml(path, text, &e)]))?;
        config.source = Source::new(path, text);
        let base = path.parent().unwrap_or(Path::new("."));
        config.paths.resolve(base);
        let c = &mut config.cluster;
        for file in [
            &mut config.api.token_file,
            &mut c.ca_file,
            &mut c.cert_file,
            &mut c.key_file,
            &mut c.password_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        let issues = config.range_issues();
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(config.diagnostics(&issues))
        }
    }

    /// `issues` as diagnostics at their keys' lines.
    pub fn diagnostics(&self, issues: &[Issue]) -> Diagnostics {
        Diagnostics(
            issues
                .iter()
                .map(|i| self.source.diagnostic(&i.key, i.message.clone()))
                .collect(),
        )
    }

    /// Values out of range and settings that contradict each other.
    fn range_issues(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        if let Some(url) = &self.server.base_url {
            if let Err(e) = check_base_url(url) {
                issues.push(Issue::new("server.base_url", e.to_string()));
            }
        } else if self.http.listen.ip().is_unspecified() {
            issues.push(Issue::new(
                "http.listen",
                "http.listen is a wildcard address: set server.base_url to the URL machines use",
            ));
        }
        if self.dhcp.mode != DhcpMode::Off && self.dhcp.interfaces.is_empty() {
            issues.push(Issue::new(
                "dhcp.mode",
                "dhcp.mode is not \"off\" but dhcp.interfaces is empty: name the interfaces to serve",
            ));
        }
        let h = &self.http;
        if h.header_timeout.is_zero()
            || h.send_timeout.is_zero()
            || h.max_connections == 0
            || h.max_connections_per_client == 0
        {
            issues.push(Issue::new(
                "http",
                "http.header_timeout, send_timeout, max_connections and max_connections_per_client must be above zero",
            ));
        }
        let t = &self.tftp;
        if !(8..=65464).contains(&t.max_block_size) {
            issues.push(Issue::new(
                "tftp.max_block_size",
                format!(
                    "tftp.max_block_size = {}: must be 8 to 65464 (RFC 2348)",
                    t.max_block_size
                ),
            ));
        }
        if t.max_window_size == 0 {
            issues.push(Issue::new(
                "tftp.max_window_size",
                "tftp.max_window_size must be at least 1 (RFC 7440)",
            ));
        }
        if t.max_transfers == 0 || t.timeout.is_zero() {
            let key = if t.max_transfers == 0 {
                "tftp.max_transfers"
            } else {
                "tftp.timeout"
            };
            issues.push(Issue::new(
                key,
                "tftp.max_transfers and tftp.timeout must be above zero",
            ));
        }
        if t.max_transfers_per_client == 0 || t.max_transfer_time.is_zero() {
            let key = if t.max_transfers_per_client == 0 {
                "tftp.max_transfers_per_client"
            } else {
                "tftp.max_transfer_time"
            };
            issues.push(Issue::new(
                key,
                "tftp.max_transfers_per_client and tftp.max_transfer_time must be above zero",
            ));
        }
        let retry = self.discovery.retry;
        if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600))
            .contains(&retry)
        {
            issues.push(Issue::new(
                "discovery.retry",
                format!(
                    "discovery.retry = {}: must be 1s to 1h (how long a discovered machine waits before asking again)",
                    humantime::format_duration(retry)
                ),
            ));
        }
        let b = &self.bmc;
        if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(120))
            .contains(&b.timeout)
        {
            issues.push(Issue::new(
                "bmc.timeout",
                format!(
                    "bmc.timeout = {}: must be 1s to 2m (the longest one Redfish call may take)",
                    humantime::format_duration(b.timeout)
                ),
            ));
        }
        if !b.poll_interval.is_zero() && b.poll_interval < std::time::Duration::from_secs(5) {
            issues.push(Issue::new(
                "bmc.poll_interval",
                format!(
                    "bmc.poll_interval = {}: must be 0s (no polling) or at least 5s (BMCs are slow and count their logins)",
                    humantime::format_duration(b.poll_interval)
                ),
            ));
        }
        if b.follow_up > std::time::Duration::from_secs(600) {
            issues.push(Issue::new(
                "bmc.follow_up",
                format!(
                    "bmc.follow_up = {}: must be 0s (one read right after an action) to 10m",
                    humantime::format_duration(b.follow_up)
                ),
            ));
        }
        if !(1..=64).contains(&b.poll_concurrency) {
            issues.push(Issue::new(
                "bmc.poll_concurrency",
                format!(
                    "bmc.poll_concurrency = {}: must be 1 to 64",
                    b.poll_concurrency
                ),
            ));
        }
        issues.extend(self.cluster_issues());
        issues
    }

    /// `[cluster]`: an etcd store needs endpoints it can parse, a prefix, a TLS setup that
    /// is whole, and times that make sense.
    fn cluster_issues(&self) -> Vec<Issue> {
        let c = &self.cluster;
        let mut issues = Vec::new();
        if c.store != StoreKind::Etcd {
            return issues;
        }
        if c.endpoints.is_empty() {
            issues.push(Issue::new(
                "cluster.endpoints",
                "cluster.store = \"etcd\" needs cluster.endpoints, e.g. [\"http://10.0.0.5:2379\"]",
            ));
        }
        for e in &c.endpoints {
            let ok = ["http://", "https://"]
                .iter()
                .find_map(|s| e.strip_prefix(s))
                .is_some_and(|rest| {
                    let hostport = rest.trim_end_matches('/');
                    hostport.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                    })
                });
            if !ok {
                issues.push(Issue::new(
                    "cluster.endpoints",
                    format!(
                        "cluster.endpoints: {e:?} is not http://HOST:PORT or https://HOST:PORT"
                    ),
                ));
            }
        }
        let tls = c.endpoints.iter().any(|e| e.starts_with("https://"));
        if tls && c.endpoints.iter().any(|e| e.starts_with("http://")) {
            issues.push(Issue::new(
                "cluster.endpoints",
                "cluster.endpoints mixes http:// and https://: use one",
            ));
        }
        if (c.ca_file.is_some() || c.cert_file.is_some()) && !tls {
            issues.push(Issue::new(
                "cluster.ca_file",
                "cluster.ca_file / cert_file are set but the endpoints are http://: use https://",
            ));
        }
        if c.cert_file.is_some() != c.key_file.is_some() {
            issues.push(Issue::new(
                "cluster.cert_file",
                "cluster.cert_file and cluster.key_file go together",
            ));
        }
        if c.password.is_some() && c.password_file.is_some() {
            issues.push(Issue::new(
                "cluster.password",
                "cluster.password and cluster.password_file: set one",
            ));
        }
        if (c.password.is_some() || c.password_file.is_some()) != c.user.is_some() {
            issues.push(Issue::new(
                "cluster.user",
                "cluster.user needs a password (password or password_file), and a password a user",
            ));
        }
        if !c.prefix.starts_with('/') || !c.prefix.ends_with('/') || c.prefix.len() < 2 {
            issues.push(Issue::new(
                "cluster.prefix",
                format!(
                    "cluster.prefix = {:?}: must start and end with '/', e.g. \"/kindling/\"",
                    c.prefix
                ),
            ));
        }
        // Both end up in etcd keys: one path segment each.
        for (key, value) in [("node_name", &c.node_name), ("segment", &c.segment)] {
            if let Some(v) = value
                && (v.is_empty()
                    || v.len() > 63
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
            {
                issues.push(Issue::new(
                    format!("cluster.{key}"),
                    format!("cluster.{key} = {v:?}: 1 to 63 letters, digits, '-', '_' or '.'"),
                ));
            }
        }
        if c.member_ttl < Duration::from_secs(2) || c.timeout.is_zero() {
            issues.push(Issue::new(
                "cluster.member_ttl",
                "cluster.member_ttl must be at least 2s and cluster.timeout above zero",
            ));
        }
        issues
    }

    /// The base URL machines use, given the address the HTTP service actually bound.
    pub fn base_url(&self, bound: SocketAddr) -> String {
        match &self.server.base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{bound}"),
        }
    }
}

impl PathsConfig {
    fn resolve(&mut self, base: &Path) {
        for p in [
            &mut self.profiles,
            &mut self.assets,
            &mut self.state,
            &mut self.ipxe_binaries,
            &mut self.ipxe_scripts,
            &mut self.shim,
            &mut self.grub,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// Why a base URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BaseUrlError {
    #[error("server.base_url {0:?} must start with http:// (iPXE has no HTTPS)")]
    NotHttp(String),
    #[error("server.base_url {0:?} is not a plain http://host[:port][/path] URL")]
    NotPlain(String),
}

/// iPXE (Debian's 2019 build) speaks plain HTTP only; a base URL must be `http://host[:port]`.
fn check_base_url(url: &str) -> Result<(), BaseUrlError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| BaseUrlError::NotHttp(url.to_string()))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(BaseUrlError::NotPlain(url.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DhcpMode;
    use crate::diag::Diagnostics;

    fn parse(s: &str) -> Result<Config, Diagnostics> {
        Config::parse(Path::new("/etc/kindling/kindling.toml"), s)
    }

    #[test]
    fn empty_config_is_valid_and_safe() {
        let c = parse("").unwrap();
        assert_eq!(c.dhcp.mode, DhcpMode::Off);
        assert!(!c.tftp.enabled && !c.dns.enabled);
        assert_eq!(c.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.paths.profiles, Path::new("/etc/kindling/profiles"));
        assert_eq!(c.paths.ipxe_binaries, Path::new("/usr/lib/ipxe"));
        assert_eq!(
            c.base_url("127.0.0.1:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_line() {
        let err = parse("[http]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/kindling/kindling.toml:3: unknown field `listen_port`"),
            "{text}"
        );
        let err = parse("[htp]\n").unwrap_err().to_string();
        assert!(err.contains(":1: unknown field `htp`"), "{err}");
    }

    #[test]
    fn bad_values_are_errors() {
        let err = parse("[http]\nlisten = \"nonsense\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2:"), "{err}");
        let err = parse("[server]\nbase_url = \"https://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":2: server.base_url") && err.contains("no HTTPS"),
            "{err}"
        );
        let err = parse("[http]\nlisten = \"0.0.0.0:80\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2: http.listen is a wildcard"), "{err}");
        let err = parse("[dhcp]\nmode = \"full\"\n").unwrap_err().to_string();
        assert!(err.contains(":2: dhcp.mode"), "{err}");
        let err = parse("[dhcp]\nmode = \"on\"\n").unwrap_err().to_string();
        assert!(err.contains(":2:"), "{err}");
        let err = parse("[discovery]\nenabled = true\nretry = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":3: discovery.retry = 0s: must be 1s to 1h"),
            "{err}"
        );
        let err = parse("[bmc]\npoll_interval = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":2: bmc.poll_interval = 1s: must be 0s (no polling) or at least 5s"),
            "{err}"
        );
        let err = parse("[bmc]\ntimeout = \"0s\"\npoll_concurrency = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bmc.timeout = 0s: must be 1s to 2m"), "{err}");
        assert!(
            err.contains("bmc.poll_concurrency = 0: must be 1 to 64"),
            "{err}"
        );
        assert!(parse("[bmc]\npoll_interval = \"0s\"\n").is_ok());
        let err = parse("[bmc]\nfollow_up = \"1h\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                ":2: bmc.follow_up = 1h: must be 0s (one read right after an action) to 10m"
            ),
            "{err}"
        );
        assert!(parse("[bmc]\nfollow_up = \"0s\"\n").is_ok());
        let ok = parse("[discovery]\nenabled = true\nretry = \"5s\"\n").unwrap();
        assert!(ok.discovery.enabled);
    }

    #[test]
    fn absolute_paths_stay() {
        let c = parse("[paths]\nassets = \"/srv/assets\"\n").unwrap();
        assert_eq!(c.paths.assets, Path::new("/srv/assets"));
        let c = parse("[server]\nbase_url = \"http://10.0.0.2:8080/\"\n").unwrap();
        assert_eq!(
            c.base_url("0.0.0.0:1".parse().unwrap()),
            "http://10.0.0.2:8080"
        );
    }
}
