//! `kindling serve`: logging from the config, the runtime, the daemon, the signals.

use std::path::Path;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::EXIT_CONFIG;
use crate::app::{self, AppError, Bound};
use crate::config::{Config, LogFormat};

/// hickory-server logs every DNS query at `info`: quiet unless the level names hickory.
const QUIET: &str = "hickory_server=warn,hickory_proto=warn,hickory_resolver=warn";

/// `[log] level`, with hickory's per-query lines off unless the level asks for them.
fn filter_directives(level: &str) -> String {
    if level.contains("hickory") {
        level.to_string()
    } else {
        format!("{level},{QUIET}")
    }
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter_directives(&config.log.level)))
        .unwrap_or_else(|_| EnvFilter::new(filter_directives("info")));
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

/// Raise the open-file limit to its hard maximum: every HTTP connection, TFTP transfer and
/// DHCP socket is a file descriptor, and the common default of 1,024 is a boot storm's worth.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "open-file limit raised"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

pub(super) fn serve(path: &Path) -> ExitCode {
    let config = match super::offline::load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_tracing(&config);
    raise_open_files();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hickory_is_quiet_unless_asked_for() {
        assert_eq!(
            filter_directives("info"),
            "info,hickory_server=warn,hickory_proto=warn,hickory_resolver=warn"
        );
        assert_eq!(
            filter_directives("debug,hickory_server=info"),
            "debug,hickory_server=info"
        );
        for level in ["info", "kindling=debug,warn"] {
            assert!(
                tracing_subscriber::EnvFilter::try_new(filter_directives(level)).is_ok(),
                "{level}"
            );
        }
    }
}
