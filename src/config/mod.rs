//! `kindling.toml`: one file configures the whole daemon.
//!
//! Every section has a default, so an empty file is a valid config that serves HTTP on
//! `127.0.0.1:8080` and runs no DHCP, TFTP or DNS. Unknown keys are errors (a typo must not
//! silently leave a default in place), reported as `file:line: message`. Relative paths are
//! relative to the directory of the config file, so a config and its profiles can move together.

pub use std::net::IpAddr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

mod load;
mod spans;

pub use load::Issue;
pub use spans::{Source, Spans};

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
    pub inventory: InventoryConfig,
    /// Zero-touch discovery of machines no profile knows.
    pub discovery: DiscoveryConfig,
    /// Calls to BMCs, and how often their power state is read.
    pub bmc: BmcConfig,
    /// Where leases and machine records live: this instance's files, or etcd shared with
    /// other instances.
    pub cluster: ClusterConfig,
    /// Where the config came from: its file and where each key is in it (for messages).
    #[serde(skip)]
    pub source: Source,
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
    /// iPXE script templates (`boot.ipxe.j2`, `profile.ipxe.j2`, `grub.cfg.j2`).
    pub ipxe_scripts: PathBuf,
    /// The signed shim served to machines of `loader = "grub"` profiles (Debian's
    /// `shim-signed`).
    pub shim: PathBuf,
    /// The signed network GRUB shim loads (Debian's `grub-efi-amd64-signed`).
    pub grub: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            profiles: "profiles".into(),
            assets: "assets".into(),
            state: "state".into(),
            ipxe_binaries: "/usr/lib/ipxe".into(),
            ipxe_scripts: "ipxe".into(),
            shim: "/usr/lib/shim/shimx64.efi.signed".into(),
            grub: "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed".into(),
        }
    }
}

/// `[http]`: the profile service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// A request's headers must arrive within this; also how long a kept-alive connection
    /// may idle.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A client that takes no byte of an answer (a download, the event stream) for this long
    /// is closed, as nginx's `send_timeout`.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Connections at once; one beyond is closed at once.
    pub max_connections: usize,
    /// Connections at once from one client address.
    pub max_connections_per_client: usize,
    /// Who may read a machine's configs and report for it (see [`ConfigAccess`]).
    pub config_access: ConfigAccess,
}

/// Who may fetch a machine's configs (`/ignition`, `/metadata`, `/generic`) and report it
/// installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigAccess {
    /// A request carrying the machine's per-boot secret, or from the machine's own address.
    #[default]
    TokenOrSource,
    /// Only a request carrying the per-boot secret.
    Token,
    /// Anyone who names the MAC (Matchbox's behaviour; logged as a warning at start).
    Open,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_client: 32,
            config_access: ConfigAccess::TokenOrSource,
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
    /// Where relay agents send from. Empty: any sender may relay (a relayed request is
    /// matched to a served subnet by its giaddr); set it so that nobody else on the LAN can
    /// pose as a relay.
    pub relays: Vec<ipnet::Ipv4Net>,
    /// Answer the IPv6 router solicitations of machines in their firmware or iPXE (on the
    /// DHCP interfaces) with "no IPv6 router here", so that iPXE does not wait about 16 s for
    /// one. Turn off on a LAN whose IPv6 router must be the only one that answers.
    pub answer_router_solicitations: bool,
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
            relays: Vec::new(),
            answer_router_solicitations: true,
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
    /// Transfers served at once; requests beyond wait in turn for a slot (up to 30 s).
    pub max_transfers: usize,
    /// Transfers served at once to one client address (a PXE ROM needs one or two).
    pub max_transfers_per_client: usize,
    /// The longest one transfer may take; a client that trickles is cut off after it.
    #[serde(with = "humantime_serde")]
    pub max_transfer_time: Duration,
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
            max_transfers_per_client: 8,
            max_transfer_time: Duration::from_secs(600),
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

/// Inventory settings (`[inventory]` in `kindling.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// How long each phase may last before the machine counts as `stalled`.
    pub stall_after: crate::boot_state::Timeouts,
    /// History entries kept per machine.
    pub history: usize,
    /// Records kept at most; beyond, the least recently seen machine no profile declares is
    /// forgotten (declared machines never are).
    pub max_machines: usize,
    /// New records of machines no profile declares, per source (an HTTP client's address;
    /// all of DHCP counts as one source): at most this many at once...
    pub discovery_burst: u32,
    /// ...and this many a second after that. A machine beyond it is still served; it is just
    /// not recorded (it is, when it asks again later).
    pub discovery_per_second: u32,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            stall_after: crate::boot_state::Timeouts::default(),
            history: 64,
            max_machines: 65_536,
            discovery_burst: 256,
            discovery_per_second: 32,
        }
    }
}

/// `[discovery]`: what a PXE client no profile knows gets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Off (the default): such a machine gets no boot file and its firmware moves on to the
    /// next boot device. On: it gets iPXE, reports its facts through `/boot.ipxe`, shows as
    /// `discovered`, and asks again every `retry` until an operator adopts it into a profile
    /// (no OS is booted meanwhile).
    pub enabled: bool,
    /// How long a discovered machine waits between two asks.
    #[serde(with = "humantime_serde")]
    pub retry: std::time::Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            enabled: false,
            retry: std::time::Duration::from_secs(10),
        }
    }
}

/// `[bmc]`: how Kindling talks to the BMCs that machines' `bmc = {…}` settings name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BmcConfig {
    /// The longest one Redfish call may take, connecting included.
    #[serde(with = "humantime_serde")]
    pub timeout: std::time::Duration,
    /// How often each BMC's power state is read into the inventory (`0s`: only after an
    /// action).
    #[serde(with = "humantime_serde")]
    pub poll_interval: std::time::Duration,
    /// BMCs read at once by one round of polling.
    pub poll_concurrency: usize,
    /// How long a machine is read again after a power action, until it is in the state the
    /// action leads to (`0s`: once, right after the action).
    #[serde(with = "humantime_serde")]
    pub follow_up: std::time::Duration,
}

impl Default for BmcConfig {
    fn default() -> Self {
        BmcConfig {
            timeout: std::time::Duration::from_secs(10),
            poll_interval: std::time::Duration::from_secs(60),
            poll_concurrency: 8,
            follow_up: std::time::Duration::from_secs(30),
        }
    }
}

/// `[cluster] store`: where leases and machine records live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// redb files under `paths.state`: one instance.
    #[default]
    Local,
    /// An etcd v3 cluster shared by every instance.
    Etcd,
}

/// `[cluster]`: several instances sharing leases and inventory through etcd.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `"local"` (default) or `"etcd"`.
    pub store: StoreKind,
    /// etcd client URLs, e.g. `["http://10.0.0.5:2379"]` (`https://` with `ca_file`).
    pub endpoints: Vec<String>,
    /// The key prefix every key of this cluster starts with.
    pub prefix: String,
    /// This instance's name among the members (default: the host name).
    pub node_name: Option<String>,
    /// The DHCP segment this instance serves: instances with the same segment answer the same
    /// clients and split them between them. Default: in full mode the subnets served (so
    /// instances serving the same subnets pair up, and ones per rack do not); in proxy mode
    /// `"proxy"` (set it when proxy instances serve different segments).
    pub segment: Option<String>,
    /// The CA that signed the etcd servers' certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for etcd's client-cert authentication.
    pub cert_file: Option<PathBuf>,
    /// The key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// etcd user name (with `password` or `password_file`).
    pub user: Option<String>,
    /// etcd password.
    pub password: Option<String>,
    /// A file holding the etcd password (first line), instead of `password`.
    pub password_file: Option<PathBuf>,
    /// How long a member that stopped renewing its membership still counts as live.
    #[serde(with = "humantime_serde")]
    pub member_ttl: Duration,
    /// How long after a member is gone the others take over its share of the clients.
    #[serde(with = "humantime_serde")]
    pub takeover_delay: Duration,
    /// How long to wait for etcd on each request before counting it unreachable.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            store: StoreKind::Local,
            endpoints: Vec::new(),
            prefix: "/kindling/".to_string(),
            node_name: None,
            segment: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password: None,
            password_file: None,
            member_ttl: Duration::from_secs(10),
            takeover_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
        }
    }
}
