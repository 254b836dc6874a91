//! Composition: bind every socket, load profiles, start each service, shut down cleanly.
//!
//! Binding happens here and only here, before anything is served, so a port conflict is a
//! start-up error and tests can ask for port 0 and read the bound address from the
//! `listening for HTTP on ADDR` log line. Every service runs as a task in one `TaskTracker`
//! and stops when the shared `CancellationToken` is cancelled (SIGINT/SIGTERM), with a grace
//! period for requests in flight.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DhcpMode, IpAddr};
use crate::diag::Diagnostics;
use crate::http::{self, HttpState};
use crate::inventory::Inventory;
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

/// Sockets bound before anything is served.
#[derive(Debug)]
pub struct Bound {
    /// The HTTP listener.
    pub http: TcpListener,
    /// DHCP sockets: per configured interface, port 67 (and 4011 in proxy mode).
    pub dhcp: Vec<crate::dhcp::server::Listener>,
    /// The TFTP socket, when enabled.
    pub tftp: Option<tokio::net::UdpSocket>,
    /// DNS: UDP and TCP on one port, when enabled.
    pub dns: Option<(tokio::net::UdpSocket, TcpListener)>,
}

impl Bound {
    /// Bind every socket the config asks for.
    pub async fn bind(config: &Config) -> anyhow::Result<Bound> {
        let http = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
        let mut dhcp = Vec::new();
        let ports: &[u16] = match config.dhcp.mode {
            DhcpMode::Off => &[],
            DhcpMode::Full => &[crate::dhcp::reply::SERVER_PORT],
            DhcpMode::Proxy => &[
                crate::dhcp::reply::SERVER_PORT,
                crate::dhcp::proxy::PXE_PORT,
            ],
        };
        for iface in &config.dhcp.interfaces {
            let addrs = crate::net::ipv4_addrs(iface)?;
            for &port in ports {
                let std_sock = crate::net::udp_on_interface(iface, port)
                    .with_context(|| format!("DHCP on interface {iface}"))?;
                dhcp.push(crate::dhcp::server::Listener {
                    iface: iface.clone(),
                    socket: Arc::new(tokio::net::UdpSocket::from_std(std_sock)?),
                    port,
                    addrs: addrs.clone(),
                });
            }
            if addrs.is_empty() {
                let advertised = matches!(config.server.advertise_ip, Some(IpAddr::V4(_)));
                if config.dhcp.mode == DhcpMode::Proxy && !advertised {
                    anyhow::bail!(
                        "proxy DHCP on {iface}: the interface has no IPv4 address to offer as the boot server; give it one or set server.advertise_ip"
                    );
                }
                tracing::warn!(iface = %iface, "interface has no IPv4 address: only relayed requests can be matched to a subnet");
            }
        }
        let tftp = if config.tftp.enabled {
            Some(
                tokio::net::UdpSocket::bind(config.tftp.listen)
                    .await
                    .with_context(|| format!("cannot listen for TFTP on {}", config.tftp.listen))?,
            )
        } else {
            None
        };
        let dns = if config.dns.enabled {
            let udp = tokio::net::UdpSocket::bind(config.dns.listen)
                .await
                .with_context(|| format!("cannot listen for DNS on {} (UDP)", config.dns.listen))?;
            // Port 0: TCP on the port UDP got.
            let addr = udp.local_addr()?;
            let tcp = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for DNS on {addr} (TCP)"))?;
            Some((udp, tcp))
        } else {
            None
        };
        Ok(Bound {
            http,
            dhcp,
            tftp,
            dns,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
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
    let bus = crate::events::Bus::new();
    let live = Arc::new(Live::new(src, base_url.clone(), set, bus.clone()));
    let metrics = crate::metrics::Metrics::new();
    let inventory = Arc::new(Inventory::with_bus(
        config.inventory.clone(),
        Some(metrics.clone()),
        bus.clone(),
    ));
    let inventory_store = {
        let state_dir = config.paths.state.clone();
        tokio::task::spawn_blocking(move || {
            crate::inventory::store::RedbMachineStore::open(&state_dir)
        })
        .await
        .context("inventory store task panicked")?
        .context("cannot open the inventory store")?
    };
    let inventory_store: Arc<dyn crate::inventory::store::MachineStore> = Arc::new(inventory_store);
    let records = inventory_store
        .load()
        .await
        .context("cannot read the inventory store")?;
    tracing::info!(machines = records.len(), path = %config.paths.state.join("inventory.redb").display(), "inventory restored");
    inventory.restore(records);
    inventory.sync_profiles(&live.current());
    export_inventory(&metrics, &inventory, &live);
    // The writer outlives the other tasks: it stops after them, with a last commit.
    let writer_token = CancellationToken::new();
    let writer = tokio::spawn(
        inventory
            .clone()
            .run_writer(inventory_store, writer_token.clone()),
    );
    let tracker = TaskTracker::new();
    tracker.spawn(inventory.clone().run_sweeper(token.clone()));
    tracker.spawn(
        inventory
            .clone()
            .run_profile_sync(live.clone(), token.clone()),
    );

    let mut dhcp_service = None;
    if !bound.dhcp.is_empty() {
        let store = if config.dhcp.mode == DhcpMode::Full {
            let state_dir = config.paths.state.clone();
            let store = tokio::task::spawn_blocking(move || {
                crate::dhcp::store::LeaseStore::open(&state_dir)
            })
            .await
            .context("lease store task panicked")?
            .context("cannot open the lease store")?;
            Some(Arc::new(store))
        } else {
            None
        };
        let (service, writer) = crate::dhcp::server::Service::new(
            &config,
            store,
            live.clone(),
            inventory.clone(),
            metrics.clone(),
            base_url.clone(),
        )
        .context("cannot restore DHCP leases")?;
        if let Some(writer) = writer {
            tracker.spawn(writer.run());
        }
        let service = Arc::new(service);
        crate::dhcp::server::Service::export_pools(&service, &metrics);
        dhcp_service = Some(service.clone());
        for listener in std::mem::take(&mut bound.dhcp) {
            tracing::info!(iface = %listener.iface, port = listener.port, addrs = ?listener.addrs, mode = ?config.dhcp.mode, "listening for DHCP on {}", listener.iface);
            tracker.spawn(service.clone().run(listener, token.clone()));
        }
    }

    if let Some(socket) = bound.tftp.take() {
        let roots = vec![
            config.paths.ipxe_binaries.clone(),
            config.paths.assets.clone(),
        ];
        let addr = socket.local_addr().context("TFTP socket")?;
        let service = Arc::new(crate::tftp::Service::new(
            roots,
            config.tftp.clone(),
            inventory.clone(),
            metrics.clone(),
        ));
        tracing::info!(ipxe_binaries = %config.paths.ipxe_binaries.display(), assets = %config.paths.assets.display(), "listening for TFTP on {addr}");
        tracker.spawn(service.run(socket, token.clone()));
    }

    if let Some((udp, tcp)) = bound.dns.take() {
        let addr = udp.local_addr().context("DNS socket")?;
        let networks: Vec<ipnet::Ipv4Net> = config.dhcp.subnets.iter().map(|s| s.network).collect();
        let ns_ip = config.server.advertise_ip.or_else(|| {
            let ip = addr.ip();
            (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
        });
        let dns = Arc::new(
            crate::dns::Dns::new(&config.dns, &networks, ns_ip).map_err(|e| anyhow::anyhow!(e))?,
        );
        let leases: Option<Arc<dyn crate::dns::LeaseSource>> = match &dhcp_service {
            Some(s) if config.dhcp.mode == DhcpMode::Full => {
                // Lease changes wake the DNS refresher.
                let (from, to) = (s.lease_changed.clone(), dns.changed.clone());
                let cancel = token.clone();
                tracker.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = from.notified() => to.notify_one(),
                        }
                    }
                });
                Some(s.clone() as Arc<dyn crate::dns::LeaseSource>)
            }
            // No lease table here: the inventory's addresses (proxy DHCP, HTTP requests);
            // its transitions wake the refresher.
            _ => {
                let mut events = inventory.subscribe();
                let (to, cancel) = (dns.changed.clone(), token.clone());
                tracker.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            r = events.recv() => match r {
                                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => to.notify_one(),
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                            },
                        }
                    }
                });
                Some(Arc::new(InventoryNames(inventory.clone())) as Arc<dyn crate::dns::LeaseSource>)
            }
        };
        dns.refresh(&live, leases.as_deref(), crate::time_fmt::unix_now());
        tracing::info!(domain = %config.dns.domain.as_deref().unwrap_or("-"), upstreams = ?config.dns.upstreams, "listening for DNS on {addr}");
        tracker.spawn(
            dns.clone()
                .run_refresher(live.clone(), leases, token.clone()),
        );
        tracker.spawn(dns.serve(udp, tcp, token.clone()));
    }

    let waker = crate::wol::Waker::new(&config.wol)
        .map_err(|e| anyhow::anyhow!(e))?
        .map(Arc::new);
    let api_token = api_token(&config)?;
    let state = HttpState {
        config: Arc::new(config),
        base_url: base_url.clone().into(),
        profiles: live.clone(),
        inventory,
        metrics,
        waker,
        api_token,
        shutdown: token.clone(),
    };

    if let Some(watcher) = watcher {
        tracker.spawn(watch::run(watcher, live.clone(), token.clone()));
    }
    let app = http::router(state);
    tracing::info!(base_url = %base_url, "listening for HTTP on {http_addr}");
    let server_token = token.clone();
    let server = tracker.spawn(async move {
        axum::serve(
            bound.http,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(server_token.cancelled_owned())
        .await
    });
    tracker.close();

    token.cancelled().await;
    tracing::info!("shutting down");
    let drained = tokio::time::timeout(GRACE, tracker.wait()).await.is_ok();
    writer_token.cancel();
    if tokio::time::timeout(GRACE, writer).await.is_err() {
        tracing::warn!("the inventory writer did not finish its last commit in time");
    }
    if !drained {
        tracing::warn!("requests still in flight after {GRACE:?}; stopping anyway");
        return Ok(());
    }
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AppError::Runtime(
            anyhow::Error::new(e).context("HTTP server failed"),
        )),
        Err(e) => Err(AppError::Runtime(
            anyhow::Error::new(e).context("HTTP server task failed"),
        )),
    }
}

/// The API token: `api.token`, or the first line of `api.token_file`.
fn api_token(config: &Config) -> anyhow::Result<Option<Arc<str>>> {
    if let Some(t) = &config.api.token {
        return Ok(Some(t.trim().into()));
    }
    let Some(path) = &config.api.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read api.token_file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    anyhow::ensure!(
        !token.is_empty(),
        "api.token_file {} is empty",
        path.display()
    );
    Ok(Some(token.into()))
}

/// Machines per boot state and failed reloads, computed at scrape time.
fn export_inventory(
    metrics: &crate::metrics::Metrics,
    inventory: &Arc<Inventory>,
    live: &Arc<Live>,
) {
    let (inv, live) = (Arc::downgrade(inventory), Arc::downgrade(live));
    metrics.on_scrape(move |m| {
        if let (Some(inv), Some(live)) = (inv.upgrade(), live.upgrade()) {
            for (state, n) in inv.counts() {
                m.machines
                    .get_or_create(&crate::metrics::StateLabels {
                        state: state.as_str(),
                    })
                    .set(n as i64);
            }
            let failed = live.status().failed_reloads;
            let counted = m.reload_errors.get();
            if failed > counted {
                m.reload_errors.inc_by(failed - counted);
            }
        }
    });
}

/// Without a DHCP lease table of its own (proxy mode, or DHCP off), DNS names the machines
/// the inventory knows an address for: the profile's hostname, and the address DHCP (proxy)
/// or the machine's own HTTP requests came from.
struct InventoryNames(Arc<Inventory>);

impl crate::dns::LeaseSource for InventoryNames {
    fn named_leases(&self) -> Vec<crate::dns::LeaseName> {
        self.0
            .named_addresses()
            .into_iter()
            .map(|(hostname, ip)| crate::dns::LeaseName {
                hostname,
                ip,
                expires: u64::MAX,
            })
            .collect()
    }

    fn networks(&self) -> Vec<ipnet::Ipv4Net> {
        Vec::new()
    }
}

fn warn_missing_dir(what: &str, path: &Path) {
    if !path.is_dir() {
        tracing::warn!(path = %path.display(), "{what} directory does not exist; /{what}/ will answer 404");
    }
}
