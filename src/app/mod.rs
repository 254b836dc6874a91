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

use crate::cluster::Etcd;
use crate::config::Config;
use crate::config::StoreKind;
use crate::ctx::Ctx;
use crate::diag::Diagnostics;
use crate::events::Bus;
use crate::inventory::Inventory;
use crate::inventory::store::{MachineStore, RedbMachineStore};
use crate::inventory::store_etcd::EtcdMachineStore;
use crate::profiles::watch::{self, Live};
use crate::profiles::{ProfileSet, Sources};

/// How long requests in flight may take to finish after shutdown begins.
const GRACE: Duration = Duration::from_secs(10);
/// How long `serve` waits at start for etcd to answer before giving up with an error.
const ETCD_START_WAIT: Duration = Duration::from_secs(30);

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
    let base_url = config.base_url(bound.http_addr());
    // Watch before loading: an edit made while loading then causes a reload, not a miss.
    let watcher = watch::watch(&sources(&config));
    let (ctx, machines, etcd) = load(config, base_url).await?;
    let sup = Supervisor::new(ctx.clone(), token.clone());
    // DHCP and the writers on a thread of their own (dropped last, after the writers' last
    // ACKs), TFTP on another: thousands of TFTP transfers at once must not hold up DHCP (a
    // 10,000-machine storm with 16,384 TFTP slots on one thread left 3,467 machines without
    // a lease after all their DHCP retries).
    let lane = supervisor::Lane::start("kindling-dhcp")
        .map_err(|e| AppError::Runtime(anyhow::anyhow!("cannot start the DHCP thread: {e}")))?;
    let tftp_lane = supervisor::Lane::start("kindling-tftp")
        .map_err(|e| AppError::Runtime(anyhow::anyhow!("cannot start the TFTP thread: {e}")))?;
    // HTTP connections on threads of their own, one per core (see http::server): dropped
    // after the services, when their connections have finished.
    let http_lanes = (0..http_workers())
        .map(|i| supervisor::Lane::start(&format!("kindling-http-{i}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AppError::Runtime(anyhow::anyhow!("cannot start the HTTP threads: {e}")))?;
    // Each with a bulk lane that sends its connections' asset files (see http::zero_copy),
    // a little behind the other threads (BULK_NICE).
    let bulk_lanes = (0..http_lanes.len())
        .map(|i| supervisor::Lane::start_niced(&format!("kindling-bulk-{i}"), BULK_NICE))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AppError::Runtime(anyhow::anyhow!("cannot start the HTTP threads: {e}")))?;
    let workers =
        crate::http::server::Workers::new(http_lanes.iter().map(|l| l.handle()).collect())
            .with_bulk_lanes(bulk_lanes.iter().map(|l| l.handle()).collect());
    // The writers outlive the services: they stop after them, with a last commit.
    let stop_writers = CancellationToken::new();
    let mut writers = vec![start_inventory(&ctx, &sup, &lane, machines, &stop_writers)];
    start::follow_reload_errors(&ctx, &sup);
    let (dhcp, lease_writer) = start::start_dhcp(
        &ctx,
        &sup,
        &lane,
        std::mem::take(&mut bound.dhcp),
        std::mem::take(&mut bound.ndp),
        &stop_writers,
        etcd.as_ref(),
    )
    .await?;
    writers.extend(lease_writer);
    if dhcp.is_none()
        && let Some(etcd) = &etcd
    {
        // Without DHCP there is nothing to split, but profile digests are still compared.
        start::join_segment(&ctx, &sup, etcd, None);
    }
    let http = start::http_state(&ctx, &sup, etcd.as_ref())?;
    if let Some(socket) = bound.tftp.take() {
        start::start_tftp(&ctx, &sup, &tftp_lane, socket, http.clone())?;
    }
    if let Some(sockets) = bound.dns.take() {
        start::start_dns(&ctx, &sup, sockets, dhcp.as_ref())?;
    }
    start_watcher(&ctx, &sup, watcher);
    start::start_http(&ctx, &sup, bound.http, http, workers)?;
    sup.tracker().close();

    token.cancelled().await;
    tracing::info!("shutting down");
    if tokio::time::timeout(GRACE, sup.tracker().wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {GRACE:?}; stopping anyway");
    }
    stop_writers.cancel();
    for writer in writers {
        if tokio::time::timeout(GRACE, writer).await.is_err() {
            tracing::warn!("a writer did not finish its last commit in time");
        }
    }
    match sup.fatal() {
        Some(why) => Err(AppError::Runtime(anyhow::anyhow!(why))),
        None => Ok(()),
    }
}

/// How much lower the bulk lanes' scheduling priority is than the other threads' (`nice`
/// +5: a quarter of the core against one other busy thread). Downloads are bulk: a TFTP window
/// or a DHCP answer that waits behind one is a retransmit timer. In a 1,000-machine storm on
/// one core (4 alternating pairs) the TFTP phase's p99 was 82–573 ms with it against
/// 214–2,987 ms without, and the time to provision all 16.2–20.8 s against 14.5–20.6 s. In a
/// container the cgroup shares the CPU with other containers; this orders Kindling's own
/// threads only.
const BULK_NICE: i32 = 5;

/// HTTP worker threads: one per core the process may use (cgroup quotas count), at most 16.
fn http_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(16))
}

/// Load the profiles and the inventory: the shared state every service is given, the
/// inventory's store, and the etcd connection with `[cluster] store = "etcd"`.
async fn load(
    config: Config,
    base_url: String,
) -> Result<(Ctx, Arc<dyn MachineStore>, Option<Etcd>), AppError> {
    let src = sources(&config);
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
    let etcd = match config.cluster.store {
        StoreKind::Local => None,
        StoreKind::Etcd => Some(connect_etcd(&config.cluster).await?),
    };
    let machines = open_machine_store(&config, etcd.as_ref()).await?;
    let deadline = tokio::time::Instant::now() + ETCD_START_WAIT;
    let records = loop {
        match machines.load().await {
            Err(e) if etcd.is_some() && tokio::time::Instant::now() < deadline => {
                // etcd members still starting, or no quorum yet.
                tracing::warn!(error = %e, "cannot read the inventory from etcd yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => break other.context("cannot read the inventory store")?,
        }
    };
    match &etcd {
        Some(e) => {
            tracing::info!(machines = records.len(), prefix = %e.key(""), "inventory restored from etcd")
        }
        None => {
            tracing::info!(machines = records.len(), path = %config.paths.state.join("inventory.redb").display(), "inventory restored")
        }
    }
    inventory.restore(records);
    inventory.sync_profiles(&live.current());
    export_inventory(&metrics, &inventory);
    let ctx = Ctx {
        config: Arc::new(config),
        base_url: base_url.into(),
        profiles: live,
        inventory,
        metrics,
        bus,
        health: Default::default(),
    };
    Ok((ctx, machines, etcd))
}

/// Connect to etcd and wait (at most [`ETCD_START_WAIT`]) until a member answers; log which
/// cluster it is.
async fn connect_etcd(config: &crate::config::ClusterConfig) -> Result<Etcd, AppError> {
    let endpoints = config.endpoints.join(",");
    let etcd = Etcd::connect(config)
        .await
        .with_context(|| format!("cannot connect to etcd at {endpoints}"))?;
    let deadline = tokio::time::Instant::now() + ETCD_START_WAIT;
    loop {
        match etcd.status().await {
            Ok(r) => {
                tracing::info!(
                    store = "etcd",
                    %endpoints,
                    cluster_id = %format!("{:x}", r.cluster_id),
                    member = %format!("{:x}", r.member_id),
                    version = %r.version,
                    leader = %format!("{:x}", r.leader),
                    node = %etcd.node(),
                    prefix = %etcd.key(""),
                    "cluster store: etcd reached"
                );
                return Ok(etcd);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(AppError::Runtime(anyhow::anyhow!(
                    "etcd at {endpoints} did not answer within {ETCD_START_WAIT:?}: {e}"
                )));
            }
            Err(e) => {
                tracing::warn!(%endpoints, error = %e, "etcd does not answer yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The inventory's tasks: its writer (stopped by `stop_writers`, after the services), the
/// records other instances write (a shared store), the stall sweeper and the profile follower.
fn start_inventory(
    ctx: &Ctx,
    sup: &Supervisor,
    lane: &supervisor::Lane,
    machines: Arc<dyn MachineStore>,
    stop_writers: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let inventory = &ctx.inventory;
    inventory.share_next_boot(machines.clone());
    let token = sup.token();
    // On the lane: reports wait for its commits, and must not queue behind HTTP downloads.
    let writer = sup.critical(
        Some(lane),
        "the inventory writer",
        stop_writers.clone(),
        inventory
            .clone()
            .run_writer(machines.clone(), stop_writers.clone()),
    );
    let (inv, t, live) = (inventory.clone(), token.clone(), ctx.profiles.clone());
    sup.background("inventory remote changes", move || {
        let (inv, t, live, store) = (inv.clone(), t.clone(), live.clone(), machines.clone());
        async move {
            // Machines adopted through other instances while this one was away, then what
            // they write from now on (a shared store gives a fresh stream on every start).
            match store.adoptions().await {
                Ok(adoptions) => {
                    for adoption in adoptions {
                        adopt_here(live.clone(), adoption).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the machines adopted on other instances")
                }
            }
            match store.remote_changes() {
                Some(changes) => {
                    let adopted = move |adoption| {
                        tokio::spawn(adopt_here(live.clone(), adoption));
                    };
                    inv.run_remote_changes(changes, adopted, t).await;
                }
                None => t.cancelled().await,
            }
        }
    });
    let (inv, t) = (inventory.clone(), token.clone());
    sup.background("inventory sweeper", move || {
        inv.clone().run_sweeper(t.clone())
    });
    let (inv, l, t) = (inventory.clone(), ctx.profiles.clone(), token.clone());
    sup.background("inventory profiles", move || {
        inv.clone().run_profile_sync(l.clone(), t.clone())
    });
    writer
}

/// A machine adopted through another instance: the same entry goes into this instance's copy
/// of the profile file (unless it declares the machine already), so both serve it alike.
async fn adopt_here(live: Arc<Live>, adoption: crate::inventory::store::Adoption) {
    let (mac, profile, by) = (adoption.mac, adoption.profile.clone(), adoption.by.clone());
    let applied = tokio::task::spawn_blocking(move || {
        crate::profiles::adopt::apply_shared(
            &live,
            adoption.mac,
            &adoption.profile,
            &adoption.entry,
        )
        .map_err(|e| (e, adoption.entry))
    })
    .await;
    match applied {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(_))) => {
            tracing::info!(%mac, %profile, by = %by, "machine adopted on another instance: added to this instance's profile file too");
        }
        Ok(Err((e, entry))) => {
            tracing::warn!(%mac, %profile, by = %by, error = ?e, "machine adopted on another instance could not be added here; add this entry to the profile by hand:\n{entry}");
        }
        Err(e) => tracing::error!(%mac, error = %e, "adoption task failed"),
    }
}

/// Hot reload: the watch made before the profiles were loaded, then a new one on each
/// restart. Without one, profile changes need a restart (logged).
fn start_watcher(ctx: &Ctx, sup: &Supervisor, first: Result<watch::Watcher, watch::WatchError>) {
    let (live, token) = (ctx.profiles.clone(), sup.token().clone());
    let mut first = Some(first);
    sup.background("profile watcher", move || {
        let watcher = first.take().unwrap_or_else(|| watch::watch(&live.sources));
        let (live, token) = (live.clone(), token.clone());
        async move {
            match watcher {
                Ok(w) => watch::run(w, live, token).await,
                Err(e) => {
                    tracing::error!(error = %e, "hot reload disabled: profile changes need a restart");
                    token.cancelled().await;
                }
            }
        }
    });
}

/// The inventory's store: etcd when configured, else `inventory.redb` under the state
/// directory.
async fn open_machine_store(
    config: &Config,
    etcd: Option<&Etcd>,
) -> anyhow::Result<Arc<dyn MachineStore>> {
    if let Some(etcd) = etcd {
        return Ok(Arc::new(EtcdMachineStore::new(etcd.clone())));
    }
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
            m.inventory_pending
                .set(i64::try_from(inv.pending()).unwrap_or(i64::MAX));
        }
    });
}

fn warn_missing_dir(what: &str, path: &Path) {
    if !path.is_dir() {
        tracing::warn!(path = %path.display(), "{what} directory does not exist; /{what}/ will answer 404");
    }
}
