//! The `kindling` command: parse the command line, set up logging, run, map errors to exit
//! codes (64 for configuration and usage errors, 1 for runtime failures).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kindling::app::{self, AppError, Bound};
use kindling::config::{Config, LogFormat};
use kindling::mac::MacAddr;
use kindling::profiles::{Facts, ProfileSet};
use kindling::render::What;
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
    }
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(EXIT_CONFIG)
    })
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
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let base_url = app::offline_base_url(&config);
    let set = match ProfileSet::load(&app::sources(&config), &base_url) {
        Ok(set) => set,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
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
