//! The `kindling` command line: parse it, run the command, map the outcome to an exit code
//! (0 ok, 64 for configuration and usage errors, 1 for runtime failures).
//!
//! - [`serve`](serve::serve): the daemon, with logging set up from the config.
//! - `check`, `render`, `explain` ([`offline`]): what the config and profiles say, without
//!   starting anything.
//! - `machines`, `watch`, `wake` ([`remote`]): a running daemon's API, through [`client`].

pub mod client;
mod offline;
mod remote;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::mac::MacAddr;
use crate::profiles::{Facts, What};

pub(crate) const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "kindling",
    version,
    about = "Bare-metal boot provisioning: DHCP, TFTP, DNS, HTTP profiles and Wake-on-LAN in one daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// The configuration file.
        #[arg(long, short, default_value = "kindling.toml", env = "KINDLING_CONFIG")]
        config: PathBuf,
    },
    /// Validate the config, every profile and every template; list every error as file:line.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = "kindling.toml", env = "KINDLING_CONFIG")]
        config: PathBuf,
    },
    /// Print exactly what a machine would be served.
    Render {
        /// The configuration file.
        #[arg(long, short, default_value = "kindling.toml", env = "KINDLING_CONFIG")]
        config: PathBuf,
        /// The machine's MAC address.
        #[arg(long)]
        mac: MacAddr,
        /// Its architecture as iPXE reports it (x86_64, arm64, ...).
        #[arg(long)]
        arch: Option<String>,
        /// Its firmware platform (pcbios, efi).
        #[arg(long)]
        platform: Option<String>,
        /// Its SMBIOS UUID.
        #[arg(long)]
        uuid: Option<String>,
        /// Extra request parameters (labels), as key=value; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// What to render.
        #[arg(long, value_enum, default_value = "ipxe")]
        what: WhatArg,
        /// The generic template's name, with --what generic.
        #[arg(long)]
        name: Option<String>,
    },
    /// Explain what a PXE client gets from DHCP (boot file, profile) and why.
    Explain {
        /// The configuration file.
        #[arg(long, short, default_value = "kindling.toml", env = "KINDLING_CONFIG")]
        config: PathBuf,
        /// The machine's MAC address.
        #[arg(long)]
        mac: MacAddr,
        /// Option 93 client architecture: 0 BIOS, 7/9 UEFI x64, 11 arm64, 16 x64 HTTP, 19 arm64 HTTP, ...
        #[arg(long)]
        arch: Option<u16>,
        /// Option 77 user class, e.g. iPXE.
        #[arg(long)]
        user_class: Option<String>,
        /// Option 60 vendor class; default PXEClient (HTTPClient for HTTP boot architectures).
        #[arg(long)]
        vendor_class: Option<String>,
    },
    /// List machines and their boot states (from a running daemon's API).
    Machines {
        #[command(flatten)]
        api: ApiArgs,
        /// Only machines in this state (unknown, discovered, waking, dhcp, ..., stalled).
        #[arg(long)]
        state: Option<String>,
        /// Only machines of this profile.
        #[arg(long)]
        profile: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follow boot-state transitions live, one line each, until interrupted.
    Watch {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this machine.
        #[arg(long)]
        mac: Option<MacAddr>,
        /// Print each transition as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send Wake-on-LAN to machines: by MAC, or every machine of a profile (and labels).
    Wake {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        group: GroupArgs,
    },
    /// Power machines through their BMCs (Redfish): on, off, graceful-off, cycle, status,
    /// pxe-once (a one-time network boot), pxe-boot (pxe-once, then on or a restart); by MAC,
    /// or every machine of a profile (and labels).
    Power {
        #[command(flatten)]
        api: ApiArgs,
        /// on | off | graceful-off | cycle | status | pxe-once | pxe-boot
        #[arg(value_parser = ["on", "off", "graceful-off", "cycle", "status", "pxe-once", "pxe-boot"])]
        action: String,
        #[command(flatten)]
        group: GroupArgs,
    },
    /// Install machines again: their next boot serves their profile's install once; with
    /// --power-cycle their BMCs boot them into it now.
    Reinstall {
        #[command(flatten)]
        api: ApiArgs,
        /// MAC addresses.
        #[arg(required = true)]
        macs: Vec<MacAddr>,
        /// Boot each into the install now through its BMC (one-time PXE, then a restart).
        #[arg(long)]
        power_cycle: bool,
    },
}

/// The machines a group command names, and its pace.
#[derive(clap::Args)]
pub(crate) struct GroupArgs {
    /// MAC addresses.
    pub(crate) macs: Vec<MacAddr>,
    /// Every machine of this profile.
    #[arg(long)]
    pub(crate) profile: Option<String>,
    /// Only machines with this label (key=value; repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub(crate) labels: Vec<(String, String)>,
    /// Pause between machines, in milliseconds (power-on inrush), at most 5000.
    #[arg(long, default_value_t = 0)]
    pub(crate) stagger_ms: u64,
    /// Machines handled at once at most (BMC calls take seconds); default 8.
    #[arg(long)]
    pub(crate) concurrency: Option<usize>,
}

/// Where the API is and the token for it.
#[derive(clap::Args)]
pub(crate) struct ApiArgs {
    /// The daemon's HTTP address.
    #[arg(long, env = "KINDLING_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// The API bearer token.
    #[arg(long, env = "KINDLING_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// A file holding the token (first line).
    #[arg(long, conflicts_with = "token")]
    pub(crate) token_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum WhatArg {
    Ipxe,
    Ignition,
    Metadata,
    Generic,
}

/// A `--label` that is not `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not key=value")]
struct NotKeyValue(String);

fn parse_label(s: &str) -> Result<(String, String), NotKeyValue> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| NotKeyValue(s.to_string()))
}

/// Run the command line of this process.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve { config } => serve::serve(&config),
        Command::Check { config } => offline::check(&config),
        Command::Render {
            config,
            mac,
            arch,
            platform,
            uuid,
            labels,
            what,
            name,
        } => {
            let mut facts = Facts::from_mac(mac);
            facts.arch = arch;
            facts.platform = platform;
            facts.uuid = uuid.map(|u| u.to_ascii_lowercase());
            facts.labels = labels.into_iter().collect();
            facts.labels.insert("mac".into(), mac.to_string());
            let what = match what {
                WhatArg::Ipxe => What::Ipxe,
                WhatArg::Ignition => What::Ignition,
                WhatArg::Metadata => What::Metadata,
                WhatArg::Generic => What::Generic(name),
            };
            offline::render(&config, facts, what)
        }
        Command::Explain {
            config,
            mac,
            arch,
            user_class,
            vendor_class,
        } => offline::explain(&config, mac, arch, user_class, vendor_class),
        Command::Machines {
            api,
            state,
            profile,
            json,
        } => remote::machines(&api, state, profile, json),
        Command::Watch { api, mac, json } => remote::watch(&api, mac, json),
        Command::Wake { api, group } => remote::wake(&api, group),
        Command::Power { api, action, group } => remote::power(&api, &action, group),
        Command::Reinstall {
            api,
            macs,
            power_cycle,
        } => remote::reinstall(&api, macs, power_cycle),
    }
}
