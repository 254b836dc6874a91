//! Starting each service on its bound sockets under the supervisor, and the adapters between
//! services (DNS names from DHCP leases or the inventory, the API's Wake-on-LAN).

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::bind::{dup_tcp, dup_udp};
use super::supervisor::{Lane, Supervisor};
use crate::cluster::Etcd;
use crate::config::DhcpMode;
use crate::ctx::Ctx;
use crate::dhcp::server::{self as dhcp_server, Expiry, LeaseWriter, Listener};
use crate::dhcp::service::Service as Dhcp;
use crate::dhcp::store::{LeaseStore, RedbLeaseStore};
use crate::dhcp::store_etcd::EtcdLeaseStore;
use crate::events::{LeaseChange, ProfilesEvent};
use crate::inventory::Inventory;
use crate::mac::MacAddr;

/// The segment's instances split its clients (see `cluster::buckets`): keep this instance a
/// member while it runs, and answer only its share. An instance without DHCP (`service`
/// `None`) joins too, in segment `no-dhcp` unless one is set: every member compares profile
/// digests with every other.
pub(super) fn join_segment(ctx: &Ctx, sup: &Supervisor, etcd: &Etcd, service: Option<&Arc<Dhcp>>) {
    let c = &ctx.config;
    let segment = c
        .cluster
        .segment
        .clone()
        .unwrap_or_else(|| match (service, c.dhcp.mode) {
            (None, _) => "no-dhcp".to_string(),
            (_, DhcpMode::Proxy) => "proxy".to_string(),
            _ => {
                let mut nets: Vec<String> = c
                    .dhcp
                    .subnets
                    .iter()
                    .map(|s| s.network.to_string().replace('/', "_"))
                    .collect();
                nets.sort();
                nets.join("+")
            }
        });
    tracing::info!(%segment, node = %etcd.node(), "cluster: joining the segment's members");
    // Nobody is answered until the members are known (normally milliseconds; after a restart
    // within member_ttl, until the last run's membership expired).
    if let Some(service) = service {
        service.use_share(crate::cluster::buckets::Share::none());
    }
    let (etcd, service, token) = (etcd.clone(), service.cloned(), ctx_token(sup));
    let live = ctx.profiles.clone();
    let (ttl, takeover) = (c.cluster.member_ttl, c.cluster.takeover_delay);
    sup.background("cluster membership", move || {
        let (service, live) = (service.clone(), live.clone());
        crate::cluster::members::run(
            etcd.clone(),
            segment.clone(),
            ttl,
            takeover,
            move |share| {
                if let Some(s) = &service {
                    s.use_share(share);
                }
            },
            move || live.status().digest,
            token.clone(),
        )
    });
}

/// Leases other instances commit to a shared store: this instance's pools take them (so it
/// offers none of their addresses and answers their clients' renewals), DNS names them and
/// expiry watches them. Nothing for a store only this instance writes.
fn follow_remote_leases(
    sup: &Supervisor,
    store: &Arc<dyn LeaseStore>,
    service: &Arc<Dhcp>,
    expiry: &Arc<Expiry>,
) {
    if store.remote_changes().is_none() {
        return;
    }
    let (store, service, expiry, token) = (
        store.clone(),
        service.clone(),
        expiry.clone(),
        ctx_token(sup),
    );
    sup.background("dhcp remote leases", move || {
        // A fresh stream on every (re)start: it replays from the load, merges are idempotent.
        let (changes, service, expiry, token) = (
            store.remote_changes(),
            service.clone(),
            expiry.clone(),
            token.clone(),
        );
        async move {
            let Some(mut changes) = changes else {
                return token.cancelled().await;
            };
            loop {
                let lease = tokio::select! {
                    _ = token.cancelled() => return,
                    got = changes.recv() => match got {
                        Some(l) => l,
                        None => return,
                    },
                };
                let (ip, expires) = (lease.ip, lease.expires);
                if matches!(
                    service.merge_remote(lease),
                    Some(LeaseChange::Granted | LeaseChange::Renewed)
                ) {
                    expiry.watch(expires, ip);
                }
            }
        }
    });
}

/// DHCP: the service, its lease store and writer (full mode), one receive loop per socket,
/// lease expiry and the profile follower. `stop_writers` ends the writer after the services.
pub(super) async fn start_dhcp(
    ctx: &Ctx,
    sup: &Supervisor,
    lane: &Lane,
    listeners: Vec<Listener>,
    responders: Vec<crate::dhcp::ndp::Responder>,
    stop_writers: &CancellationToken,
    etcd: Option<&Etcd>,
) -> anyhow::Result<(Option<Arc<Dhcp>>, Option<tokio::task::JoinHandle<()>>)> {
    if listeners.is_empty() {
        return Ok((None, None));
    }
    let config = &ctx.config;
    let service = Arc::new(Dhcp::new(
        config,
        ctx.profiles.current(),
        ctx.inventory.clone(),
        ctx.metrics.clone(),
        ctx.bus.clone(),
        ctx.base_url.to_string(),
    ));
    let mut writes = None;
    let mut writer_task = None;
    if config.dhcp.mode == DhcpMode::Full {
        let store: Arc<dyn LeaseStore> = match etcd {
            Some(etcd) => Arc::new(EtcdLeaseStore::new(etcd.clone())),
            None => {
                let state_dir = config.paths.state.clone();
                let store = tokio::task::spawn_blocking(move || RedbLeaseStore::open(&state_dir))
                    .await
                    .context("lease store task panicked")?
                    .context("cannot open the lease store")?;
                Arc::new(store)
            }
        };
        let leases = store.load().await.context("cannot restore DHCP leases")?;
        let count = leases.len();
        let restored = service.restore(leases);
        tracing::info!(
            subnets = config.dhcp.subnets.len(),
            leases = count,
            restored,
            "DHCP leases restored"
        );
        let expiry = Arc::new(Expiry::default());
        follow_remote_leases(sup, &store, &service, &expiry);
        if let Some(etcd) = etcd {
            join_segment(ctx, sup, etcd, Some(&service));
        }
        let (writer, tx) = LeaseWriter::new(store, service.clone(), expiry.clone());
        let writer = writer.with_health(ctx.health.clone());
        writes = Some(tx);
        let stop = stop_writers.clone();
        writer_task = Some(sup.critical(
            Some(lane),
            "the DHCP lease writer",
            stop.clone(),
            writer.run(stop),
        ));
        let (s, token) = (service.clone(), ctx_token(sup));
        sup.background("dhcp expiry", move || {
            dhcp_server::run_expiry(s.clone(), expiry.clone(), token.clone())
        });
    }
    if config.dhcp.mode == DhcpMode::Proxy
        && let Some(etcd) = etcd
    {
        // Proxy instances on one segment split its PXE clients too: one proxy offer each.
        join_segment(ctx, sup, etcd, Some(&service));
    }
    Dhcp::export_pools(&service, &ctx.metrics);
    let (s, live, token) = (service.clone(), ctx.profiles.clone(), ctx_token(sup));
    sup.background("dhcp profiles", move || {
        dhcp_server::run_profile_follower(s.clone(), live.clone(), token.clone())
    });
    for Listener { socket, ingress } in listeners {
        let i = &ingress;
        tracing::info!(iface = %i.iface, port = i.port, addrs = ?i.addrs, mode = ?config.dhcp.mode, "listening for DHCP on {}", i.iface);
        let name = format!("dhcp {}:{}", i.iface, i.port);
        let socket = LaneSocket::new(socket).context("DHCP socket")?;
        let (s, w, token) = (service.clone(), writes.clone(), ctx_token(sup));
        sup.service_in(lane, name, move || {
            let (s, w, token, ingress) = (s.clone(), w.clone(), token.clone(), ingress.clone());
            let dup = socket.dup();
            async move {
                let listener = Listener {
                    socket: attach(dup)?,
                    ingress,
                };
                dhcp_server::run(s, listener, w, token)
                    .await
                    .map_err(|e| e.to_string())
            }
        });
    }
    for responder in responders {
        tracing::info!(iface = %responder.iface, "answering IPv6 router solicitations of booting machines on {}", responder.iface);
        let name = format!("router solicitations {}", responder.iface);
        let (s, token) = (service.clone(), ctx_token(sup));
        sup.service(name, move || {
            let (s, token, dup) = (s.clone(), token.clone(), responder.dup());
            async move { crate::dhcp::ndp::run(s, dup?, token).await }
        });
    }
    Ok((Some(service), writer_task))
}

/// A bound UDP socket for a service on the [`Lane`]: off this runtime's reactor, so that only
/// the lane polls it; each run registers a `dup` of it there.
struct LaneSocket(std::net::UdpSocket);

impl LaneSocket {
    fn new(socket: Arc<UdpSocket>) -> std::io::Result<LaneSocket> {
        let socket =
            Arc::try_unwrap(socket).map_err(|_| std::io::Error::other("the socket is shared"))?;
        Ok(LaneSocket(socket.into_std()?))
    }

    /// A `dup` of the socket, for [`attach`] in a task on the lane.
    fn dup(&self) -> std::io::Result<std::net::UdpSocket> {
        self.0.try_clone()
    }
}

/// `dup` registered with the reactor of the runtime this runs on (the lane's).
fn attach(dup: std::io::Result<std::net::UdpSocket>) -> Result<Arc<UdpSocket>, String> {
    dup.and_then(UdpSocket::from_std)
        .map(Arc::new)
        .map_err(|e| format!("cannot reuse the socket: {e}"))
}

/// The shutdown token the services run under.
fn ctx_token(sup: &Supervisor) -> CancellationToken {
    sup.token().clone()
}

/// TFTP: iPXE binaries first, then assets.
pub(super) fn start_tftp(
    ctx: &Ctx,
    sup: &Supervisor,
    lane: &Lane,
    socket: UdpSocket,
    http: crate::http::HttpState,
) -> anyhow::Result<()> {
    let config = &ctx.config;
    let roots = vec![
        config.paths.ipxe_binaries.clone(),
        config.paths.assets.clone(),
    ];
    let addr = socket.local_addr().context("TFTP socket")?;
    let files = &config.dhcp.boot_files;
    let grub_cfg: crate::tftp::GrubCfg = Arc::new(move |mac, ip| {
        let http = http.clone();
        Box::pin(crate::http::grub_cfg(http, mac, ip))
    });
    let service = Arc::new(
        crate::tftp::Service::new(
            roots,
            config.tftp.clone(),
            ctx.inventory.clone(),
            ctx.metrics.clone(),
        )
        .with_file(&files.shim, config.paths.shim.clone())
        .with_file(&files.grub, config.paths.grub.clone())
        .with_grub_cfg(grub_cfg),
    );
    tracing::info!(ipxe_binaries = %config.paths.ipxe_binaries.display(), assets = %config.paths.assets.display(), "listening for TFTP on {addr}");
    let socket = LaneSocket::new(Arc::new(socket)).context("TFTP socket")?;
    let token = ctx_token(sup);
    sup.service_in(lane, "tftp", move || {
        let (service, token, dup) = (service.clone(), token.clone(), socket.dup());
        async move {
            let socket = attach(dup)?;
            service.run(socket, token).await.map_err(|e| e.to_string())
        }
    });
    Ok(())
}

/// DNS: zones from the profiles and the DHCP leases (full mode) or the inventory's addresses
/// (otherwise), rebuilt on events; answered by hickory (UDP with a cache in front).
pub(super) fn start_dns(
    ctx: &Ctx,
    sup: &Supervisor,
    (udp, tcp): (UdpSocket, TcpListener),
    dhcp: Option<&Arc<Dhcp>>,
) -> anyhow::Result<()> {
    let config = &ctx.config;
    let addr = udp.local_addr().context("DNS socket")?;
    let networks: Vec<ipnet::Ipv4Net> = config.dhcp.subnets.iter().map(|s| s.network).collect();
    let ns_ip = config.server.advertise_ip.or_else(|| {
        let ip = addr.ip();
        (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
    });
    let dns = Arc::new(
        crate::dns::Dns::new(&config.dns, &networks, ns_ip)?.with_metrics(ctx.metrics.clone()),
    );
    let (leases, inventory_names): (Arc<dyn crate::dns::LeaseSource>, bool) = match dhcp {
        Some(d) if d.keeps_leases() => (Arc::new(DhcpLeases(d.clone())), false),
        // No lease table here: the profiles' names at the addresses the inventory saw.
        _ => (
            Arc::new(ProfileNames {
                live: ctx.profiles.clone(),
                inventory: ctx.inventory.clone(),
            }),
            true,
        ),
    };
    dns.refresh(
        &ctx.profiles,
        Some(leases.as_ref()),
        crate::time_fmt::unix_now(),
    );
    tracing::info!(domain = %config.dns.domain.as_deref().unwrap_or("-"), upstreams = ?config.dns.upstreams, "listening for DNS on {addr}");
    let (d, live, token) = (dns.clone(), ctx.profiles.clone(), ctx_token(sup));
    sup.background("dns zones", move || {
        d.clone().run_refresher(
            live.clone(),
            Some(leases.clone()),
            inventory_names,
            token.clone(),
        )
    });
    let token = ctx_token(sup);
    sup.service("dns", move || {
        let (dns, token) = (dns.clone(), token.clone());
        let sockets = dup_udp(&udp).and_then(|u| Ok((u, dup_tcp(&tcp)?)));
        async move {
            let (u, t) = sockets.map_err(|e| format!("cannot reuse the DNS sockets: {e}"))?;
            dns.serve(u, t, token).await.map_err(|e| e.to_string())
        }
    });
    Ok(())
}

/// HTTP: the boot endpoints, assets and the API, with graceful shutdown.
/// What the HTTP handlers share (TFTP renders grub.cfg through them too).
pub(super) fn http_state(
    ctx: &Ctx,
    sup: &Supervisor,
    cluster: Option<&Etcd>,
) -> anyhow::Result<crate::http::HttpState> {
    let config = &ctx.config;
    let waker = crate::wol::Waker::new(&config.wol)?
        .map(|w| Arc::new(WolWaker(w)) as Arc<dyn crate::http::Waker>);
    let api_token = api_token(config)?;
    if config.http.config_access == crate::config::ConfigAccess::Open {
        tracing::warn!(
            "http.config_access = \"open\": anyone who names a MAC gets its configs and may report it installed"
        );
    }
    let power = Arc::new(crate::power::Power::new(
        config.bmc.clone(),
        ctx.profiles.clone(),
        ctx.inventory.clone(),
        ctx.metrics.clone(),
    ));
    let (p, t) = (power.clone(), ctx_token(sup));
    sup.background("bmc power poller", move || p.clone().run_poller(t.clone()));
    Ok(crate::http::HttpState::from(crate::http::HttpShared {
        power,
        config: ctx.config.clone(),
        base_url: ctx.base_url.clone(),
        profiles: ctx.profiles.clone(),
        inventory: ctx.inventory.clone(),
        metrics: ctx.metrics.clone(),
        waker,
        health: ctx.health.clone(),
        api_token,
        shutdown: ctx_token(sup),
        cluster: cluster.cloned(),
    }))
}

pub(super) fn start_http(
    ctx: &Ctx,
    sup: &Supervisor,
    listener: TcpListener,
    state: crate::http::HttpState,
    workers: crate::http::server::Workers,
) -> anyhow::Result<()> {
    let config = &ctx.config;
    let app = crate::http::router(state);
    let addr = listener.local_addr().context("HTTP socket")?;
    tracing::info!(base_url = %ctx.base_url, "listening for HTTP on {addr}");
    let limits = crate::http::server::Limits {
        header_timeout: config.http.header_timeout,
        send_timeout: config.http.send_timeout,
        max_connections: config.http.max_connections,
        max_per_client: config.http.max_connections_per_client,
    };
    let (metrics, token) = (ctx.metrics.clone(), ctx_token(sup));
    sup.service("http", move || {
        let (app, metrics, token) = (app.clone(), metrics.clone(), token.clone());
        let workers = workers.clone();
        let listener = dup_tcp(&listener);
        async move {
            let listener = listener.map_err(|e| format!("cannot reuse the HTTP socket: {e}"))?;
            crate::http::server::serve(listener, app, limits, metrics, token, workers)
                .await
                .map_err(|e| format!("HTTP server: {e}"))
        }
    });
    Ok(())
}

/// Profile reloads that failed, counted as they are announced.
pub(super) fn follow_reload_errors(ctx: &Ctx, sup: &Supervisor) {
    let (live, metrics, token) = (ctx.profiles.clone(), ctx.metrics.clone(), ctx_token(sup));
    sup.background("metrics", move || {
        let mut events = live.bus().subscribe::<Arc<ProfilesEvent>>();
        let (metrics, token) = (metrics.clone(), token.clone());
        async move {
            loop {
                let got = tokio::select! {
                    _ = token.cancelled() => return,
                    got = events.recv() => got,
                };
                match got {
                    Ok(ev) => {
                        if let ProfilesEvent::Failed { failed_reloads, .. } = *ev {
                            let counted = metrics.reload_errors.get();
                            if failed_reloads > counted {
                                metrics.reload_errors.inc_by(failed_reloads - counted);
                            }
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        }
    });
}

/// The API token: `api.token`, or the first line of `api.token_file`.
fn api_token(config: &crate::config::Config) -> anyhow::Result<Option<Arc<str>>> {
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

/// In full mode DNS names the DHCP leases.
struct DhcpLeases(Arc<Dhcp>);

impl crate::dns::LeaseSource for DhcpLeases {
    fn named_leases(&self) -> Vec<crate::dns::LeaseName> {
        self.0
            .bound_leases()
            .into_iter()
            .filter_map(|l| {
                Some(crate::dns::LeaseName {
                    hostname: l.hostname?,
                    ip: l.ip,
                    expires: l.expires,
                })
            })
            .collect()
    }

    fn networks(&self) -> Vec<ipnet::Ipv4Net> {
        self.0.networks()
    }
}

/// Without a DHCP lease table of its own (proxy mode, or DHCP off), DNS names the machines
/// the profiles give a hostname but no address, at the address Kindling saw them use (proxy
/// DHCP, their own HTTP requests). Names come from the profiles only: what a machine reports
/// (a `hostname=` query, DHCP option 12) never enters the zone.
struct ProfileNames {
    live: Arc<crate::profiles::watch::Live>,
    inventory: Arc<Inventory>,
}

impl crate::dns::LeaseSource for ProfileNames {
    fn named_leases(&self) -> Vec<crate::dns::LeaseName> {
        let set = self.live.current();
        let unaddressed = set
            .machines
            .values()
            .filter(|m| m.hostname.is_some() && m.ip.is_none())
            .map(|m| &m.mac);
        self.inventory
            .addresses(unaddressed)
            .into_iter()
            .filter_map(|(mac, ip)| {
                Some(crate::dns::LeaseName {
                    hostname: set.machines.get(&mac)?.hostname.clone()?,
                    ip,
                    expires: u64::MAX,
                })
            })
            .collect()
    }

    fn networks(&self) -> Vec<ipnet::Ipv4Net> {
        Vec::new()
    }
}

/// The API's Wake-on-LAN.
struct WolWaker(crate::wol::Waker);

#[async_trait::async_trait]
impl crate::http::Waker for WolWaker {
    async fn wake(&self, mac: MacAddr) -> std::io::Result<crate::http::Woken> {
        let sent = self.0.wake(mac).await?;
        Ok(crate::http::Woken {
            udp: sent.udp,
            raw: sent.raw,
            repeat: sent.repeat,
        })
    }
}
