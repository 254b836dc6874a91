//! Composition: validate, bind every socket, load profiles and state, start each service under
//! the supervisor, shut down cleanly.
//!
//! Binding happens here and only here ([`Bound`]), before anything is served, so a port
//! conflict is a start-up error and tests can ask for port 0 and read the bound address from
//! the `listening for HTTP on ADDR` log line. Each service is started by one `start_*`
//! function with its sockets and the shared [`Ctx`]; the [`Supervisor`] restarts a service
//! that fails (see its policy). Everything stops when the shared `CancellationToken` is
//! cancelled (SIGINT/SIGTERM): the services first, with a grace period for requests in
//! flight, then the writers with a last commit. An idle daemon stops at once.
//!
//! Adapters between services live here too: DNS names from DHCP leases or from the
//! inventory, the API's Wake-on-LAN.

mod bind;
mod start;
mod supervisor;

pub use bind::Bound;
pub use supervisor::Supervisor;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ctx::Ctx;
use crate::diag::Diagnostics;
use crate::events::Bus;
use crate::inventory::Inventory;
use crate::inventory::store::{MachineStore, RedbMachineStore};
use crate::profiles::watch::{self, Live};
use crate::profiles::{ProfileSet, Sources};

/// How long requests in flight may take to finish after shutdown begins.
const GRACE: Duration = Duration::from_secs(10);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration or profiles are invalid (exit code 64).
    #[error("{0}")]
    Config(Diagnostics),
    /// Anything else (exit code 1).
    #[error(transparent)]
    Runtime(#[from] anyhow::Error),
}

/// Each service's check of its own config section, after the config's own range checks:
/// what `kindling check` reports and what stops `serve` from starting.
pub fn validate(config: &Config) -> Result<(), Diagnostics> {
    let mut issues = crate::dhcp::check::check_config(config);
    issues.extend(crate::dns::check_config(&config.dns));
    issues.extend(crate::wol::check_config(&config.wol));
    if issues.is_empty() {
        Ok(())
    } else {
        Err(config.diagnostics(&issues))
    }
}

/// Read `path` and validate it: [`Config::load`], then [`validate`].
pub fn load_config(path: &Path) -> Result<Config, Diagnostics> {
    let config = Config::load(path)?;
    validate(&config)?;
    Ok(config)
}

/// Where profiles come from, per the config.
pub fn sources(config: &Config) -> Sources {
    Sources {
        profiles: config.paths.profiles.clone(),
        scripts: config.paths.ipxe_scripts.clone(),
    }
}

/// The base URL when nothing is bound yet (`check`, `render`): the configured one or the
/// listen address.
pub fn offline_base_url(config: &Config) -> String {
    config.base_url(config.http.listen)
}

/// Run every configured service on `bound` until `token` is cancelled.
pub async fn run(
    config: Config,
    mut bound: Bound,
    token: CancellationToken,
) -> Result<(), AppError> {
    let http_addr = bound.http_addr();
    let base_url = config.base_url(http_addr);
    let src = sources(&config);
    // Watch before loading: an edit made while loading then causes a reload, not a miss.
    let watcher = match watch::watch(&src) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "hot reload disabled: profile changes need a restart");
            None
        }
    };
    let set = {
        let (src, url) = (src.clone(), base_url.clone());
        tokio::task::spawn_blocking(move || ProfileSet::load(&src, &url))
            .await
            .context("profile loader panicked")?
            .map_err(AppError::Config)?
    };
    tracing::info!(
        profiles = set.profiles.len(),
        machines = set.machines.len(),
        default = set.default.map(|d| set.profiles[d].name.as_str()).unwrap_or("-"),
        path = %src.profiles.display(),
        "profiles loaded"
    );
    warn_missing_dir("assets", &config.paths.assets);
    let bus = Bus::new();
    let live = Arc::new(Live::new(src, base_url.clone(), set, bus.clone()));
    let metrics = crate::metrics::Metrics::new();
    let inventory = Arc::new(Inventory::with_bus(
        config.inventory.clone(),
        Some(metrics.clone()),
        bus.clone(),
    ));
    let machines = open_machine_store(&config).await?;
    let records = machines
        .load()
        .await
        .context("cannot read the inventory store")?;
    tracing::info!(machines = records.len(), path = %config.paths.state.join("inventory.redb").display(), "inventory restored");
    inventory.restore(records);
    inventory.sync_profiles(&live.current());
    export_inventory(&metrics, &inventory);
    let ctx = Ctx {
        config: Arc::new(config),
        base_url: base_url.clone().into(),
        profiles: live.clone(),
        inventory: inventory.clone(),
        metrics: metrics.clone(),
        bus,
        health: Default::default(),
    };
    let sup = Supervisor::new(ctx.clone(), token.clone());

    // The writers outlive the services: they stop after them, with a last commit.
    let stop_writers = CancellationToken::new();
    let inventory_writer = sup.critical(
        "the inventory writer",
        stop_writers.clone(),
        inventory
            .clone()
            .run_writer(machines.clone(), stop_writers.clone()),
    );
    if let Some(changes) = machines.remote_changes() {
        let (inv, token) = (inventory.clone(), token.clone());
        let mut changes = Some(changes);
        sup.background("inventory remote changes", move || {
            let (inv, token, changes) = (inv.clone(), token.clone(), changes.take());
            async move {
                if let Some(changes) = changes {
                    inv.run_remote_changes(changes, token).await;
                } else {
                    token.cancelled().await;
                }
            }
        });
    }
    let (inv, t) = (inventory.clone(), token.clone());
    sup.background("inventory sweeper", move || {
        inv.clone().run_sweeper(t.clone())
    });
    let (inv, l, t) = (inventory.clone(), live.clone(), token.clone());
    sup.background("inventory profiles", move || {
        inv.clone().run_profile_sync(l.clone(), t.clone())
    });
    start::follow_reload_errors(&ctx, &sup);

    let (dhcp, lease_writer) =
        start::start_dhcp(&ctx, &sup, std::mem::take(&mut bound.dhcp), &stop_writers).await?;
    if let Some(socket) = bound.tftp.take() {
        start::start_tftp(&ctx, &sup, socket)?;
    }
    if let Some(sockets) = bound.dns.take() {
        start::start_dns(&ctx, &sup, sockets, dhcp.as_ref())?;
    }
    if let Some(watcher) = watcher {
        let (l, t) = (live.clone(), token.clone());
        let mut first = Some(watcher);
        sup.background("profile watcher", move || {
            let watcher = first.take().map_or_else(|| watch::watch(&l.sources), Ok);
            let (l, t) = (l.clone(), t.clone());
            async move {
                match watcher {
                    Ok(w) => watch::run(w, l, t).await,
                    Err(e) => {
                        tracing::error!(error = %e, "hot reload disabled: profile changes need a restart");
                        t.cancelled().await;
                    }
                }
            }
        });
    }
    start::start_http(&ctx, &sup, bound.http)?;
    sup.tracker().close();

    token.cancelled().await;
    tracing::info!("shutting down");
    let drained = tokio::time::timeout(GRACE, sup.tracker().wait())
        .await
        .is_ok();
    if !drained {
        tracing::warn!("requests still in flight after {GRACE:?}; stopping anyway");
    }
    stop_writers.cancel();
    for writer in [Some(inventory_writer), lease_writer].into_iter().flatten() {
        if tokio::time::timeout(GRACE, writer).await.is_err() {
            tracing::warn!("a writer did not finish its last commit in time");
        }
    }
    match sup.fatal() {
        Some(why) => Err(AppError::Runtime(anyhow::anyhow!(why))),
        None => Ok(()),
    }
}

/// The inventory's store: `inventory.redb` under the state directory.
async fn open_machine_store(config: &Config) -> anyhow::Result<Arc<dyn MachineStore>> {
    let state_dir = config.paths.state.clone();
    let store = tokio::task::spawn_blocking(move || RedbMachineStore::open(&state_dir))
        .await
        .context("inventory store task panicked")?
        .context("cannot open the inventory store")?;
    Ok(Arc::new(store))
}

/// Machines per boot state, computed at scrape time.
fn export_inventory(metrics: &crate::metrics::Metrics, inventory: &Arc<Inventory>) {
    let inv = Arc::downgrade(inventory);
    metrics.on_scrape(move |m| {
        if let Some(inv) = inv.upgrade() {
            for (state, n) in inv.counts() {
                m.machines
                    .get_or_create(&crate::metrics::StateLabels {
                        state: state.as_str(),
                    })
                    .set(n as i64);
            }
        }
    });
}

fn warn_missing_dir(what: &str, path: &Path) {
    if !path.is_dir() {
        tracing::warn!(path = %path.display(), "{what} directory does not exist; /{what}/ will answer 404");
    }
}
