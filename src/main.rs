//! The `kindling` command: parse the command line, set up logging, run, map errors to exit
//! codes (64 for configuration and usage errors, 1 for runtime failures).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kindling::app::{self, AppError, Bound};
use kindling::config::{Config, LogFormat};
use kindling::mac::MacAddr;
use kindling::profiles::{Facts, ProfileSet, What};
use tokio_util::sync::CancellationToken;

const EXIT_CONFIG: u8 = 64;

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
        /// MAC addresses.
        macs: Vec<MacAddr>,
        /// Every machine of this profile.
        #[arg(long)]
        profile: Option<String>,
        /// Only machines with this label (key=value; repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Pause between machines, in milliseconds (power-on inrush), at most 5000.
        #[arg(long, default_value_t = 0)]
        stagger_ms: u64,
    },
}

/// Where the API is and the token for it.
#[derive(clap::Args)]
struct ApiArgs {
    /// The daemon's HTTP address.
    #[arg(long, env = "KINDLING_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The API bearer token.
    #[arg(long, env = "KINDLING_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token (first line).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum WhatArg {
    Ipxe,
    Ignition,
    Metadata,
    Generic,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

fn main() -> ExitCode {
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
        Command::Serve { config } => serve(&config),
        Command::Check { config } => check(&config),
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
            render(&config, facts, what)
        }
        Command::Explain {
            config,
            mac,
            arch,
            user_class,
            vendor_class,
        } => explain(&config, mac, arch, user_class, vendor_class),
        Command::Machines {
            api,
            state,
            profile,
            json,
        } => client_command(&api, |c| async move {
            let list = c.machines(state.as_deref(), profile.as_deref()).await?;
            if json {
                let text = serde_json::to_string_pretty(&list).unwrap_or_default();
                println!("{text}");
            } else {
                print!(
                    "{}",
                    kindling::client::table(&list, std::time::SystemTime::now())
                );
            }
            Ok(())
        }),
        Command::Watch { api, mac, json } => client_command(&api, |c| async move {
            let mac = mac.map(|m| m.to_string());
            c.watch(mac.as_deref(), json, &mut std::io::stdout().lock())
                .await
        }),
        Command::Wake {
            api,
            macs,
            profile,
            labels,
            stagger_ms,
        } => {
            if macs.is_empty() && profile.is_none() && labels.is_empty() {
                eprintln!("kindling wake: name MACs, --profile or --label");
                return ExitCode::from(EXIT_CONFIG);
            }
            client_command(&api, |c| async move {
                let macs: Vec<String> = macs.iter().map(ToString::to_string).collect();
                let labels = labels.into_iter().collect();
                let v = c
                    .wake(&macs, profile.as_deref(), &labels, stagger_ms)
                    .await?;
                for w in v["woken"].as_array().into_iter().flatten() {
                    println!("woken  {}", w["mac"].as_str().unwrap_or("?"));
                }
                let mut failed = false;
                for f in v["failed"].as_array().into_iter().flatten() {
                    failed = true;
                    println!(
                        "FAILED {}: {}",
                        f["mac"].as_str().unwrap_or("?"),
                        f["error"].as_str().unwrap_or("?")
                    );
                }
                if failed {
                    return Err(kindling::client::ClientError::Api {
                        status: 207,
                        message: "some machines were not woken".into(),
                    });
                }
                Ok(())
            })
        }
    }
}

/// Run one API client command; errors go to stderr with exit code 1.
fn client_command<F, Fut>(api: &ApiArgs, f: F) -> ExitCode
where
    F: FnOnce(kindling::client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), kindling::client::ClientError>>,
{
    let token = match (&api.token, &api.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.lines().next().unwrap_or("").trim().to_string()),
            Err(e) => {
                eprintln!("kindling: cannot read {}: {e}", path.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, None) => None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kindling: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = kindling::client::Client::new(&api.url, token);
    let result = runtime.block_on(async {
        tokio::select! {
            r = f(client) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kindling: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
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

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a terminal: log files and shippers get plain `key=value` fields.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_tracing(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let token = CancellationToken::new();
        tokio::spawn(shutdown_on_signal(token.clone()));
        let bound = Bound::bind(&config).await?;
        app::run(config, bound, token).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(AppError::Config(errors)) => {
            for d in &errors.0 {
                tracing::error!("{d}");
            }
            eprintln!(
                "kindling: not starting: {} error(s) in the profiles",
                errors.0.len()
            );
            ExitCode::from(EXIT_CONFIG)
        }
        Err(AppError::Runtime(e)) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    token.cancel();
}

fn check(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match ProfileSet::load(&app::sources(&config), &app::offline_base_url(&config)) {
        Ok(set) => {
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

fn render(path: &Path, facts: Facts, what: What) -> ExitCode {
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

fn explain(
    path: &Path,
    mac: MacAddr,
    arch: Option<u16>,
    user_class: Option<String>,
    vendor_class: Option<String>,
) -> ExitCode {
    use kindling::pxe::{self, BootFile, ClientInfo};
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
    let (decision, why) = pxe::explain(&client, &machine, &config.dhcp.boot_files, &base_url);
    println!("machine:    {mac}");
    match &chosen {
        Some(m) => println!("profile:    {} ({})", m.profile.name, m.reason),
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
    ExitCode::SUCCESS
}
