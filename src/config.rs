//! `kindling.toml`: one file configures the whole daemon.
//!
//! Every section has a default, so an empty file is a valid config that serves HTTP on
//! `127.0.0.1:8080` and runs no DHCP, TFTP or DNS. Unknown keys are errors (a typo must not
//! silently leave a default in place), reported as `file:line: message`. Relative paths are
//! relative to the directory of the config file, so a config and its profiles can move together.

pub use std::net::IpAddr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::diag::{self, Diagnostic, Diagnostics};

/// The whole configuration, as read from `kindling.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How machines reach Kindling.
    pub server: ServerConfig,
    /// Where profiles, assets, state and iPXE files live.
    pub paths: PathsConfig,
    /// The HTTP profile service.
    pub http: HttpConfig,
    /// Log output.
    pub log: LogConfig,
    /// DHCP / proxy-DHCP (off unless configured).
    pub dhcp: DhcpConfig,
    /// TFTP (off unless configured).
    pub tftp: TftpConfig,
    /// DNS (off unless configured).
    pub dns: DnsConfig,
    /// Wake-on-LAN.
    pub wol: WolConfig,
    /// The REST API.
    pub api: ApiConfig,
    /// Boot-state tracking: stall limits, history length.
    pub inventory: crate::inventory::Settings,
}

/// `[server]`: the addresses machines are told to use.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The URL machines use to reach the HTTP service, e.g. `http://10.0.0.2:8080`. Put into
    /// every iPXE script and Ignition URL. Default: `http://` + the HTTP listen address, which
    /// must then be a specific address (not 0.0.0.0).
    pub base_url: Option<String>,
    /// The IPv4 address advertised as next-server / server identifier in DHCP and used by TFTP.
    /// Default: the host of `base_url` when it is an IP address.
    pub advertise_ip: Option<IpAddr>,
}

/// `[paths]`: every file Kindling reads or writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Profile TOML files (`*.toml` at the top level) and their templates.
    pub profiles: PathBuf,
    /// Static files served under `/assets/` (kernels, initrds, images).
    pub assets: PathBuf,
    /// Durable state (leases, inventory).
    pub state: PathBuf,
    /// iPXE binaries served over TFTP and HTTP (Debian's `ipxe` package).
    pub ipxe_binaries: PathBuf,
    /// iPXE script templates (`boot.ipxe.j2`, `profile.ipxe.j2`).
    pub ipxe_scripts: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            profiles: "profiles".into(),
            assets: "assets".into(),
            state: "state".into(),
            ipxe_binaries: "/usr/lib/ipxe".into(),
            ipxe_scripts: "ipxe".into(),
        }
    }
}

/// `[http]`: the profile service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `kindling=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// DHCP operating mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// No DHCP at all (the safe default).
    #[default]
    Off,
    /// Kindling is the LAN's DHCP server.
    Full,
    /// Another server gives addresses; Kindling gives boot information only.
    Proxy,
}

/// `[dhcp]`: the DHCP service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhcpConfig {
    /// `off`, `full` or `proxy`.
    pub mode: DhcpMode,
    /// The interfaces DHCP answers on; never all interfaces.
    pub interfaces: Vec<String>,
    /// The iPXE binary each firmware family gets.
    pub boot_files: crate::pxe::BootFiles,
    /// Lease time of bound addresses (subnets may override).
    #[serde(with = "humantime_serde")]
    pub lease_time: Duration,
    /// How long an offered address is held for the client that was offered it.
    #[serde(with = "humantime_serde")]
    pub offer_time: Duration,
    /// `[[dhcp.subnet]]`: the subnets served in full mode.
    #[serde(rename = "subnet")]
    pub subnets: Vec<SubnetConfig>,
    /// `[[dhcp.reservation]]`: fixed addresses beyond the profiles' machine `ip`s.
    #[serde(rename = "reservation")]
    pub reservations: Vec<ReservationConfig>,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            mode: DhcpMode::Off,
            interfaces: Vec::new(),
            boot_files: Default::default(),
            lease_time: Duration::from_secs(3600),
            offer_time: Duration::from_secs(60),
            subnets: Vec::new(),
            reservations: Vec::new(),
        }
    }
}

/// `[[dhcp.subnet]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    /// The network, e.g. `10.10.0.0/24`.
    pub network: ipnet::Ipv4Net,
    /// First and last address handed out dynamically.
    pub range: [Ipv4Addr; 2],
    /// Kindling's address on this subnet (server identifier, next-server). Default:
    /// `server.advertise_ip`.
    pub server_ip: Option<Ipv4Addr>,
    /// Option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain: Option<String>,
    /// Overrides `dhcp.lease_time`.
    #[serde(default, with = "humantime_serde")]
    pub lease_time: Option<Duration>,
}

/// `[[dhcp.reservation]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationConfig {
    /// The machine.
    pub mac: crate::mac::MacAddr,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// `[tftp]`: the read-only TFTP service (iPXE binaries and assets).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TftpConfig {
    /// Whether to serve TFTP.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// Transfers served at once; requests beyond get a TFTP error and retry.
    pub max_transfers: usize,
    /// Retransmission timeout when the client asks for none.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retransmissions of one window before a silent client's transfer is dropped.
    pub retries: u32,
    /// Largest block size granted (it is also clamped to the path MTU).
    pub max_block_size: u16,
    /// Largest window size granted (RFC 7440).
    pub max_window_size: u16,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 69)),
            max_transfers: 1024,
            timeout: Duration::from_secs(1),
            retries: 5,
            max_block_size: 8192,
            max_window_size: 64,
        }
    }
}

/// `[dns]`: the DNS service (see [`crate::dns`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Whether to serve DNS.
    pub enabled: bool,
    /// Listen address (UDP and TCP on the same port).
    pub listen: SocketAddr,
    /// The zone Kindling is authoritative for, e.g. `lab.example`.
    pub domain: Option<String>,
    /// TTL of the records built from profiles and leases (and the SOA's negative TTL).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Where names outside Kindling's zones go: `IP` or `IP:port`. Empty: answer REFUSED.
    pub upstreams: Vec<String>,
    /// Per-zone forwarders (`corp.example` → `10.0.0.53`), more specific than `upstreams`.
    pub forward: Vec<ForwardZone>,
    /// Clients that may use forwarding. Empty: loopback and the `[[dhcp.subnet]]` networks.
    /// Kindling's own zones answer everyone who can reach the socket.
    pub allow_recursion: Vec<ipnet::IpNet>,
    /// Networks to serve reverse (`in-addr.arpa`) zones for, beyond the DHCP subnets.
    pub reverse_networks: Vec<ipnet::Ipv4Net>,
    /// Static records.
    pub record: Vec<StaticRecord>,
}

/// `[[dns.forward]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardZone {
    /// The zone, e.g. `corp.example`.
    pub zone: String,
    /// Its servers: `IP` or `IP:port`.
    pub servers: Vec<String>,
}

/// `[[dns.record]]`: a static record, or a wildcard/name over machines' addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRecord {
    /// Relative to `dns.domain` (`ingress`, `*.apps`, `@`), or absolute with a final dot.
    pub name: String,
    /// `A`, `AAAA`, `CNAME`, `TXT` or `SRV`.
    #[serde(rename = "type")]
    pub rtype: String,
    /// One value: an address, a name, a text, or `priority weight port target` for SRV.
    pub value: Option<String>,
    /// Several values.
    #[serde(default)]
    pub values: Vec<String>,
    /// A/AAAA only: the addresses of the declared machines with these labels.
    #[serde(default)]
    pub machines: std::collections::BTreeMap<String, String>,
    /// A/AAAA only: the addresses of the declared machines of this profile.
    pub profile: Option<String>,
    /// Its TTL; default `dns.ttl`.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 5353)),
            domain: None,
            ttl: Duration::from_secs(60),
            upstreams: Vec::new(),
            forward: Vec::new(),
            allow_recursion: Vec::new(),
            reverse_networks: Vec::new(),
            record: Vec::new(),
        }
    }
}

/// `[wol]`: Wake-on-LAN.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WolConfig {
    /// The interface magic packets leave from; Wake-on-LAN is off without one.
    pub interface: Option<String>,
    /// UDP ports (9 is discard, 7 echo; NICs accept either).
    pub ports: Vec<u16>,
    /// Subnet-directed broadcast addresses to send to as well (for routed segments).
    pub directed: Vec<Ipv4Addr>,
    /// Also send raw Ethernet frames (EtherType 0x0842).
    pub raw: bool,
    /// How many times each packet is sent.
    pub repeat: u32,
    /// SecureOn password: `aa:bb:cc:dd:ee:ff` or `1.2.3.4`.
    pub password: Option<String>,
}

impl Default for WolConfig {
    fn default() -> Self {
        WolConfig {
            interface: None,
            ports: vec![9],
            directed: Vec::new(),
            raw: true,
            repeat: 3,
            password: None,
        }
    }
}

/// `[api]`: the REST API under `/api/v1`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer token required by mutating calls.
    pub token: Option<String>,
    /// A file holding the token (first line), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// Whether reads need the token too.
    pub read_requires_token: bool,
}

impl Config {
    /// Read and validate `path`. Relative paths inside are resolved against its directory.
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

    /// Parse `source` (the text of `path`) and validate it.
    pub fn parse(path: &Path, source: &str) -> Result<Config, Diagnostics> {
        let mut config: Config = toml::from_str(source)
            .map_err(|e| Diagnostics(vec![diag::from_toml(path, source, &e)]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.paths.resolve(base);
        if let Some(file) = &mut config.api.token_file
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        let mut errors = Vec::new();
        let line_of_key = |key: &str| {
            source
                .lines()
                .position(|l| l.trim_start().starts_with(key))
                .map(|i| i + 1)
        };
        if let Some(url) = &config.server.base_url {
            if let Err(msg) = check_base_url(url) {
                errors.push(Diagnostic::new(path, line_of_key("base_url"), msg));
            }
        } else if config.http.listen.ip().is_unspecified() {
            errors.push(Diagnostic::new(
                path,
                line_of_key("listen"),
                "http.listen is a wildcard address: set server.base_url to the URL machines use",
            ));
        }
        if config.dhcp.mode != DhcpMode::Off && config.dhcp.interfaces.is_empty() {
            errors.push(Diagnostic::new(
                path,
                line_of_key("mode"),
                "dhcp.mode is not \"off\" but dhcp.interfaces is empty: name the interfaces to serve",
            ));
        }
        errors.extend(check_dhcp(path, source, &config));
        let t = &config.tftp;
        if !(8..=65464).contains(&t.max_block_size) {
            errors.push(Diagnostic::new(
                path,
                line_of_key("max_block_size"),
                format!(
                    "tftp.max_block_size = {}: must be 8 to 65464 (RFC 2348)",
                    t.max_block_size
                ),
            ));
        }
        if t.max_window_size == 0 {
            errors.push(Diagnostic::new(
                path,
                line_of_key("max_window_size"),
                "tftp.max_window_size must be at least 1 (RFC 7440)",
            ));
        }
        if t.max_transfers == 0 || t.timeout.is_zero() {
            errors.push(Diagnostic::new(
                path,
                line_of_key(if t.max_transfers == 0 {
                    "max_transfers"
                } else {
                    "timeout"
                }),
                "tftp.max_transfers and tftp.timeout must be above zero",
            ));
        }
        for msg in crate::dns::check_config(&config.dns) {
            errors.push(Diagnostic::new(path, line_of_key("[dns"), msg));
        }
        if let Some(pw) = &config.wol.password
            && let Err(msg) = crate::wol::parse_password(pw)
        {
            errors.push(Diagnostic::new(path, line_of_key("password"), msg));
        }
        for (fw, file) in config.dhcp.boot_files.all() {
            if let Err(msg) = crate::pxe::check_boot_file(file) {
                errors.push(Diagnostic::new(
                    path,
                    line_of_key(fw.name()),
                    format!("dhcp.boot_files.{fw}: {msg}"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(Diagnostics(errors))
        }
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
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// Subnets, ranges and reservations must be consistent before DHCP serves anything.
fn check_dhcp(path: &Path, source: &str, config: &Config) -> Vec<Diagnostic> {
    let d = &config.dhcp;
    let mut errors = Vec::new();
    // The line where a value is written, for messages about it (toml gives no spans here).
    let line_of = |needle: &str| {
        source
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
    };
    if d.mode == DhcpMode::Full && d.subnets.is_empty() {
        errors.push(Diagnostic::new(
            path,
            line_of("mode"),
            "dhcp.mode = \"full\" needs at least one [[dhcp.subnet]]",
        ));
    }
    let advertise = match config.server.advertise_ip {
        Some(IpAddr::V4(ip)) => Some(ip),
        _ => None,
    };
    for (i, s) in d.subnets.iter().enumerate() {
        let at = line_of(&s.network.to_string());
        let net = s.network.trunc();
        let [first, last] = s.range;
        if u32::from(first) > u32::from(last) {
            errors.push(Diagnostic::new(
                path,
                at,
                format!("subnet {net}: range starts at {first}, after its end {last}"),
            ));
        }
        for ip in [first, last] {
            if !net.contains(&ip) || ip == net.network() || ip == net.broadcast() {
                errors.push(Diagnostic::new(
                    path,
                    at,
                    format!("subnet {net}: range address {ip} is not a host address of the subnet"),
                ));
            }
        }
        match s.server_ip.or(advertise) {
            None => errors.push(Diagnostic::new(
                path,
                at,
                format!(
                    "subnet {net}: set server_ip (Kindling's address on it) or server.advertise_ip"
                ),
            )),
            Some(ip) if !net.contains(&ip) && d.subnets.len() == 1 && s.server_ip.is_some() => {
                errors.push(Diagnostic::new(
                    path,
                    at,
                    format!("subnet {net}: server_ip {ip} is not on the subnet"),
                ))
            }
            Some(_) => {}
        }
        for other in &d.subnets[i + 1..] {
            let o = other.network.trunc();
            if net.contains(&o.network()) || o.contains(&net.network()) {
                errors.push(Diagnostic::new(
                    path,
                    line_of(&other.network.to_string()),
                    format!("subnet {o} overlaps subnet {net}"),
                ));
            }
        }
    }
    let mut seen = std::collections::HashMap::new();
    for r in &d.reservations {
        let at = line_of(&r.ip.to_string());
        if let Some(prev) = seen.insert(r.ip, r.mac) {
            errors.push(Diagnostic::new(
                path,
                at,
                format!("address {} is reserved for both {prev} and {}", r.ip, r.mac),
            ));
        }
        if d.mode == DhcpMode::Full && !d.subnets.iter().any(|s| s.network.trunc().contains(&r.ip))
        {
            errors.push(Diagnostic::new(
                path,
                at,
                format!(
                    "reservation {} for {} is on no [[dhcp.subnet]]",
                    r.ip, r.mac
                ),
            ));
        }
    }
    errors
}

/// iPXE (Debian's 2019 build) speaks plain HTTP only; a base URL must be `http://host[:port]`.
fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("server.base_url {url:?} must start with http:// (iPXE has no HTTPS)")
    })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(format!(
            "server.base_url {url:?} is not a plain http://host[:port][/path] URL"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
