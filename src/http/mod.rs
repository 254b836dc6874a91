//! The HTTP profile service: Matchbox-compatible boot endpoints and static assets.
//!
//! | path | serves |
//! | --- | --- |
//! | `/boot.ipxe` | the chain script: sends every fact iPXE knows to `/ipxe` |
//! | `/ipxe?mac=..` | the machine's iPXE script |
//! | `/ignition?mac=..` | its Ignition config, validated |
//! | `/metadata?mac=..` | `KEY=value` lines |
//! | `/generic?mac=..`, `/generic/{name}?mac=..` | a generic template (cloud-init, kickstart, ...) |
//! | `/assets/...` | static files: Range, HEAD, ETag, Last-Modified; no traversal |
//! | `/boot/...` | the iPXE binaries (`paths.ipxe_binaries`), for UEFI HTTP boot clients |
//! | `/healthz` | liveness and the state of the last profile reload |
//!
//! MACs are accepted as `aa:bb:..` and `aa-bb-..` in any case. Every request is logged on one
//! line with the machine's MAC, its profile and what it was served.

mod api;
mod query;
pub mod server;
mod ui;
mod zero_copy;

use std::sync::Arc;
use std::time::Instant;

use axum::body::HttpBody as _;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::services::ServeDir;

use crate::config::{Config, ConfigAccess};
use crate::inventory::{
    Ask, Asked, BootView, Decided, Inventory, NextBoot, Serve, ServeError, Served, mint_secret,
    plan,
};
use crate::mac::MacAddr;
use crate::profiles::watch::Live;
use crate::profiles::{DocumentError, GrubVia, Match, ProfileSet, What};

/// What the HTTP handlers share: one pointer, cloned by every extractor and middleware of
/// every request.
#[derive(Clone)]
pub struct HttpState(Arc<HttpShared>);

impl From<HttpShared> for HttpState {
    fn from(shared: HttpShared) -> Self {
        HttpState(Arc::new(shared))
    }
}

impl std::ops::Deref for HttpState {
    type Target = HttpShared;

    fn deref(&self) -> &HttpShared {
        &self.0
    }
}

impl std::ops::DerefMut for HttpState {
    /// Copy on write: for setting up (tests), not for requests.
    fn deref_mut(&mut self) -> &mut HttpShared {
        Arc::make_mut(&mut self.0)
    }
}

/// The parts of [`HttpState`].
#[derive(Clone)]
pub struct HttpShared {
    /// The configuration.
    pub config: Arc<Config>,
    /// The URL machines use to reach this service.
    pub base_url: Arc<str>,
    /// The profile set being served.
    pub profiles: Arc<Live>,
    /// What machines have reported.
    pub inventory: Arc<Inventory>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Power through machines' BMCs.
    pub power: Arc<crate::power::Power>,
    /// Sends magic packets (`[wol] interface` set).
    pub waker: Option<Arc<dyn Waker>>,
    /// Which services are failing (`/healthz`).
    pub health: Arc<crate::ctx::Health>,
    /// The bearer token mutating API calls need; without one they are refused.
    pub api_token: Option<Arc<str>>,
    /// Cancelled at shutdown: ends event streams so the server can drain.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// etcd, when instances share it (`/api/v1/cluster` lists the members).
    pub cluster: Option<crate::cluster::Etcd>,
}

/// Sends Wake-on-LAN magic packets for the API (`app` plugs the Wake-on-LAN service in).
#[async_trait::async_trait]
pub trait Waker: Send + Sync {
    /// Send `mac` its magic packets.
    async fn wake(&self, mac: MacAddr) -> std::io::Result<Woken>;
}

/// What one wake sent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Woken {
    /// UDP destinations.
    pub udp: Vec<String>,
    /// Whether raw frames went out.
    pub raw: bool,
    /// How many times each was sent.
    pub repeat: u32,
}

/// What a request was answered with, attached to the response for the request log line.
#[derive(Debug, Clone, Default)]
struct Outcome {
    mac: Option<MacAddr>,
    profile: Option<String>,
    served: String,
}

/// An error answer: a status and a short reason, as plain text for curl users and iPXE's
/// console, or as JSON (`{"error": ..., "status": ...}`) under `/api/`.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    message: String,
    mac: Option<MacAddr>,
    profile: Option<String>,
    json: bool,
}

impl HttpError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
            mac: None,
            profile: None,
            json: false,
        }
    }

    /// An API error: JSON.
    fn api(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError {
            json: true,
            ..HttpError::new(status, message)
        }
    }

    fn for_machine(mut self, mac: MacAddr, profile: Option<&str>) -> Self {
        self.mac = Some(mac);
        self.profile = profile.map(str::to_string);
        self
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut resp = if self.json {
            (
                self.status,
                Json(json!({ "error": self.message, "status": self.status.as_u16() })),
            )
                .into_response()
        } else {
            (
                self.status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("kindling: {}\n", self.message),
            )
                .into_response()
        };
        resp.extensions_mut().insert(Outcome {
            mac: self.mac,
            profile: self.profile,
            served: format!("error: {}", self.message),
        });
        resp
    }
}

/// Bytes per read of a file served from `assets/`.
const ASSET_CHUNK: usize = 256 << 10;

/// The router with every endpoint; tests drive it with `oneshot`, `app` serves it.
pub fn router(state: HttpState) -> Router {
    // Where a body is read here (files under 64 KiB, multipart ranges, requests outside a
    // served connection), 256 KiB at a time (tower-http's default is 64 KiB).
    let assets = ServeDir::new(&state.config.paths.assets)
        .append_index_html_on_directories(false)
        .redirect_to_trailing_slash(false)
        .with_buf_chunk_size(ASSET_CHUNK);
    // Whole files and single ranges of them go out with sendfile (see zero_copy).
    let assets = zero_copy::ServeZeroCopy::new(assets, &state.config.paths.assets);
    // iPXE binaries over HTTP, for UEFI HTTP boot clients (the DHCP classifier hands them
    // http://<server>/boot/<file>).
    let binaries = ServeDir::new(&state.config.paths.ipxe_binaries)
        .append_index_html_on_directories(false)
        .redirect_to_trailing_slash(false);
    // The Secure Boot chain's signed shim and GRUB, under their boot file names.
    let files = &state.config.dhcp.boot_files;
    let shim = format!("/boot/{}", files.shim);
    let grub = format!("/boot/{}", files.grub);
    let signed = Router::new()
        .route_service(
            &shim,
            tower_http::services::ServeFile::new(&state.config.paths.shim),
        )
        .route_service(
            &grub,
            tower_http::services::ServeFile::new(&state.config.paths.grub),
        );
    // The files machines fetch: each fetch is noted on the machine that made it (and only
    // these requests pass through that).
    let fetched = Router::new()
        .merge(signed)
        .nest_service("/assets", assets)
        .nest_service("/boot", binaries)
        .layer(middleware::from_fn_with_state(state.clone(), track_fetches));
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route(
            "/ipxe",
            get(|s, p, m, q| machine_doc(s, p, m, q, What::Ipxe)),
        )
        .route(
            "/grub",
            get(|s, p, m, q| machine_doc(s, p, m, q, What::Grub(GrubVia::Http))),
        )
        .route("/grub/grub.cfg", get(grub_cfg_by_address))
        .route(
            "/ignition",
            get(|s, p, m, q| machine_doc(s, p, m, q, What::Ignition)),
        )
        .route(
            "/metadata",
            get(|s, p, m, q| machine_doc(s, p, m, q, What::Metadata)),
        )
        .route(
            "/generic",
            get(|s, p, m, q| machine_doc(s, p, m, q, What::Generic(None))),
        )
        .route("/generic/{name}", get(generic_named))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(api::routes())
        .merge(ui::routes())
        .merge(fetched)
        .fallback(|req: Request| async move {
            if req.uri().path().starts_with("/api/") {
                HttpError::api(
                    StatusCode::NOT_FOUND,
                    "no such endpoint: see /api/v1/openapi.json",
                )
            } else {
                HttpError::new(StatusCode::NOT_FOUND, "no such endpoint")
            }
        })
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

async fn boot_ipxe(State(st): State<HttpState>) -> Result<Response, HttpError> {
    let set = st.profiles.current();
    let body = set
        .render_boot_script(&st.base_url)
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut resp = ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
    resp.extensions_mut().insert(Outcome {
        served: "boot.ipxe".into(),
        ..Default::default()
    });
    Ok(resp)
}

async fn generic_named(
    State(st): State<HttpState>,
    peer: PeerIp,
    method: Method,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    machine_doc(
        State(st),
        peer,
        method,
        RawQuery(q),
        What::Generic(Some(name)),
    )
    .await
}

/// The client's address, when the server was started with connect info (not in `oneshot`
/// tests unless they add it).
#[derive(Debug, Clone, Copy)]
pub struct PeerIp(pub Option<std::net::Ipv4Addr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(PeerIp(peer_ipv4(&parts.extensions)))
    }
}

fn peer_ipv4(ext: &axum::http::Extensions) -> Option<std::net::Ipv4Addr> {
    let ConnectInfo(addr) = ext.get::<ConnectInfo<SocketAddr>>()?;
    match addr.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}

/// `GET /grub/grub.cfg`: GRUB's own request after UEFI HTTP boot (its prefix is
/// `(http,<server>:<port>)/grub`); the machine is the one at the client's address.
async fn grub_cfg_by_address(
    State(st): State<HttpState>,
    PeerIp(peer): PeerIp,
    method: Method,
) -> Result<Response, HttpError> {
    let Some(ip) = peer else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "grub/grub.cfg: the client's address is unknown",
        ));
    };
    let Some(mac) = st.inventory.mac_by_ip(ip) else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("grub/grub.cfg: no machine is known at {ip} (its DHCP exchange names it)"),
        ));
    };
    let q = RawQuery(Some(format!("mac={mac}")));
    let what = What::Grub(GrubVia::Http);
    machine_doc(State(st), PeerIp(Some(ip)), method, q, what).await
}

/// The grub.cfg of `mac` as its GRUB asks over TFTP from `peer`: what `/grub?mac=` from that
/// address answers (same access rules, next boot and boot states), or why not.
pub async fn grub_cfg(
    st: HttpState,
    mac: MacAddr,
    peer: std::net::Ipv4Addr,
) -> Result<Vec<u8>, String> {
    let q = RawQuery(Some(format!("mac={mac}")));
    let what = What::Grub(GrubVia::Tftp);
    match machine_doc(State(st), PeerIp(Some(peer)), Method::GET, q, what).await {
        Ok(resp) => axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.message),
    }
}

/// Claims of the one-shot next boot in a shared store before `/ipxe` serves without it (each
/// failed claim means another instance or the operator changed it just then).
const CLAIM_TRIES: u32 = 3;

/// `/ipxe`, `/ignition`, `/metadata`, `/generic`: choose the machine's profile and render.
///
/// What is served is [`plan::serve`] (the operator's one-shot next boot, the profile's
/// `after_provision`, the profile `/ipxe` came from), decided and the one-shot used up in one
/// inventory step; it is given back if the render then fails.
///
/// A HEAD of a boot script (GRUB's HTTP client sends one before its GET) changes nothing: it
/// answers with the length the GET will have, next boot included, and begins no boot.
async fn machine_doc(
    State(st): State<HttpState>,
    PeerIp(peer): PeerIp,
    method: Method,
    RawQuery(q): RawQuery,
    what: What,
) -> Result<Response, HttpError> {
    let mut facts = query::facts(q.as_deref().unwrap_or(""))
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let mac = facts.mac;
    // The secret is a credential, not a label.
    let token = facts.labels.remove("token");
    let open = st.config.http.config_access == ConfigAccess::Open;
    let look_only = method == Method::HEAD && what.is_boot_script();
    let set = st.profiles.current();
    let ask = Ask {
        peer,
        token: token.as_deref(),
        dhcp: st.config.dhcp.mode,
        boot_script: what.is_boot_script(),
    };
    // One look at the record: may it ask, is it the machine's own request (only those change
    // its record; with open access every request counts as the machine's, as in Matchbox),
    // its facts filled in, its profile, and what to serve it.
    let asked = st.inventory.boot_request(
        ask,
        facts,
        |access| {
            let allowed = match (st.config.http.config_access, &what) {
                (ConfigAccess::Open, _) => true,
                // The boot script (and the secret in it) goes only to the machine itself.
                (_, What::Ipxe | What::Grub(_)) => access.from_machine,
                (ConfigAccess::TokenOrSource, _) => access.token_ok || access.from_machine,
                (ConfigAccess::Token, _) => access.token_ok,
            };
            allowed.then_some((open || access.from_machine || access.token_ok) && !look_only)
        },
        |access, facts, view| {
            let m = set.select(facts)?;
            // The one-shot next boot is used up only by the machine's own boot script
            // request; with instances sharing a store, only by the one whose claim there
            // succeeds.
            let may_use = (open || access.from_machine) && !look_only;
            let decision = plan::serve(&set, m.profile, view, &what);
            Some((m, decision, view.next_boot.clone(), may_use))
        },
        |d| {
            d.as_ref().is_some_and(|(_, d, _, may_use)| {
                *may_use && d.as_ref().is_ok_and(|s| s.uses_next_boot)
            })
        },
    );
    let Decided {
        access,
        mut facts,
        own,
        recorded,
        decision,
    } = match asked {
        Asked::Decided(d) => d,
        Asked::Refused(_) => {
            tracing::warn!(%mac, peer = ?peer, served = %what.label(), "refused: not from the machine's address and without its boot secret");
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} of {mac}: only for the machine itself (its address, or its boot secret)",
                    what.label()
                ),
            )
            .for_machine(mac, None));
        }
    };
    let Some((m, decision, taken, may_use)) = decision else {
        if own {
            st.inventory.no_profile(mac, &what.label());
        }
        if st.config.discovery.enabled && what == What::Ipxe {
            return Ok(discovered(&st, mac));
        }
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no profile for machine {mac} and no default profile: add it to a profile's [[machine]] list, \
                 a selector, or set default = true in one profile (or adopt it: POST /api/v1/machines/{mac}/adopt)"
            ),
        )
        .for_machine(mac, None));
    };
    let (decision, taken) = if may_use && decision.as_ref().is_ok_and(|s| s.uses_next_boot) {
        use_next_boot(&st, mac, &set, &m, &what, decision, taken).await
    } else {
        (decision, taken)
    };
    let serve = decision.map_err(|e| {
        HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{mac} {e}"))
            .for_machine(mac, Some(&m.profile.name))
    })?;
    // A new boot: a new secret, in every URL its script hands on; kept with what was served,
    // once the script rendered.
    let begins = what.is_boot_script() && access.from_machine && !serve.local;
    let secret = (begins && recorded && !look_only).then(mint_secret);
    facts.secret = if begins && look_only {
        // As long as the secret the GET will mint.
        Some("0".repeat(32))
    } else if secret.is_some() {
        secret.clone()
    } else {
        access.secret.clone()
    };
    let name = serve.profile.name.as_str();
    let rendered = if serve.local {
        set.render_local(serve.profile, m.machine, &facts, &st.base_url, &what)
    } else {
        set.render(serve.profile, m.machine, &facts, &st.base_url, &what)
    };
    let doc = match rendered {
        Ok(doc) => doc,
        Err(e) => {
            if serve.uses_next_boot
                && may_use
                && let Some(next) = taken
            {
                Box::pin(st.inventory.give_back(mac, next, true)).await;
            }
            return Err(match e {
                e @ DocumentError::Missing { .. } => {
                    HttpError::new(StatusCode::NOT_FOUND, e.to_string())
                }
                e => HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "cannot render {} for {mac} (profile {name:?}): {e}",
                        what.label()
                    ),
                ),
            }
            .for_machine(mac, Some(name)));
        }
    };
    if !look_only {
        st.inventory.served_boot(
            mac,
            secret.map(|s| (s, peer)),
            Served {
                profile: name,
                what: &serve.served,
                step: serve.step,
                booting_profile: serve.redirected.clone(),
                source: what.transport(),
            },
        );
    }
    tracing::debug!(%mac, profile = name, reason = %m.reason, "profile chosen");
    let mut resp = doc.body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(doc.content_type),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.extensions_mut().insert(Outcome {
        mac: Some(mac),
        profile: Some(name.to_string()),
        served: serve.served,
    });
    Ok(resp)
}

/// Use up the one-shot next boot that `decision` took off the record of `m`'s machine, in
/// the shared store (when instances share one): plan again when another instance got it
/// first or the operator changed it, and serve without it after [`CLAIM_TRIES`] or when the
/// store fails (it then stays set).
async fn use_next_boot<'a>(
    st: &HttpState,
    mac: MacAddr,
    set: &'a ProfileSet,
    m: &Match<'a>,
    what: &What,
    mut decision: Result<Serve<'a>, ServeError>,
    mut taken: Option<NextBoot>,
) -> (Result<Serve<'a>, ServeError>, Option<NextBoot>) {
    let mut tries = 0;
    loop {
        let used = decision.as_ref().is_ok_and(|s| s.uses_next_boot);
        let Some(next) = taken.as_ref().filter(|_| used) else {
            return (decision, taken);
        };
        tries += 1;
        // Boxed: the shared store's claim is a large future, and rare.
        let skip_next = match Box::pin(st.inventory.claim_next_boot(mac, next)).await {
            Ok(true) => return (decision, taken),
            Ok(false) => tries >= CLAIM_TRIES,
            Err(e) => {
                tracing::warn!(%mac, error = %e, "the next boot cannot be used up in the shared store: served without it; it stays set");
                Box::pin(st.inventory.give_back(mac, next.clone(), false)).await;
                true
            }
        };
        (decision, taken) = st.inventory.plan_boot(
            mac,
            |view| {
                let without = BootView {
                    next_boot: None,
                    ..view.clone()
                };
                let view = if skip_next { &without } else { view };
                (
                    plan::serve(set, m.profile, view, what),
                    view.next_boot.clone(),
                )
            },
            |(d, _)| d.as_ref().is_ok_and(|s| s.uses_next_boot),
        );
    }
}

/// `/ipxe` of a machine no profile knows, with `[discovery]` on: it waits, shown as
/// `discovered` with the facts its request reported, and asks again until it is adopted.
fn discovered(st: &HttpState, mac: MacAddr) -> Response {
    let retry = st.config.discovery.retry.as_secs().max(1);
    let base = &st.base_url;
    let body = format!(
        "#!ipxe\n\
         echo Kindling: ${{mac}} is discovered: no profile knows it yet.\n\
         echo Adopt it into a profile at {base}/ui (or POST /api/v1/machines/{mac}/adopt); asking again in {retry} s\n\
         sleep {retry}\n\
         chain --autofree {base}/boot.ipxe\n"
    );
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.extensions_mut().insert(Outcome {
        mac: Some(mac),
        profile: None,
        served: "ipxe: discovered, waiting to be adopted".into(),
    });
    resp
}

/// After a successful `GET` of an iPXE binary (`/boot/`) or a boot asset (`/assets/`), note
/// it on the machine that fetched it: these requests carry no MAC, so the client's address
/// is mapped to the machine DHCP (or its own `/ipxe` request) last tied it to.
async fn track_fetches(State(st): State<HttpState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let tracked = req.method() == axum::http::Method::GET
        && (path.starts_with("/assets/") || path.starts_with("/boot/"));
    let peer = tracked.then(|| peer_ipv4(req.extensions())).flatten();
    // A UEFI HTTP boot loader URL names its machine (`?mac=`, see DHCP): the fallback when
    // the address is not known to be the machine's (proxy mode).
    let named = req
        .uri()
        .query()
        .filter(|_| path.starts_with("/boot/"))
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "mac")
                .and_then(|(_, v)| v.parse::<MacAddr>().ok())
        });
    let mut resp = next.run(req).await;
    if path.starts_with("/boot/") && !resp.status().is_success() {
        // shim asks for optional files (revocations_sbat.efi, …) and, told 404 on a
        // connection left open, waits for the idle timeout (10 s each) before going on.
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    if let Some(ip) = peer
        && resp.status().is_success()
        && let Some(mac) = st.inventory.mac_by_ip(ip).or(named)
    {
        if path.starts_with("/boot/") {
            st.inventory.http_firmware(mac, &path);
        } else {
            st.inventory.asset(mac, &path);
        }
    }
    resp
}

async fn metrics(State(st): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(st): State<HttpState>) -> Response {
    let status = st.profiles.status();
    let failing = st.health.failing();
    let store_trouble = st.inventory.store_trouble();
    let state = if status.last_error.is_some() || !failing.is_empty() || store_trouble.is_some() {
        "degraded"
    } else {
        "ok"
    };
    let mut resp = Json(json!({
        "status": state,
        "version": env!("CARGO_PKG_VERSION"),
        "base_url": &*st.base_url,
        "machines_seen": st.inventory.len(),
        "profiles": status,
        "failing_services": failing,
        "inventory_store": match &store_trouble {
            Some(e) => json!({ "state": "unavailable", "error": e, "pending": st.inventory.pending() }),
            None => json!({ "state": "ok", "pending": st.inventory.pending() }),
        },
    }))
    .into_response();
    resp.extensions_mut().insert(Outcome {
        served: "healthz".into(),
        ..Default::default()
    });
    resp
}

/// One log line per request: method, path, status, MAC, profile, what was served, time taken;
/// and the request counted by route and status.
async fn log_request(State(st): State<HttpState>, req: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let start = Instant::now();
    let method = req.method().clone();
    // Cheap to keep (shared bytes): the path is formatted only into log lines that are on.
    let uri = req.uri().clone();
    let path = uri.path();
    // Routes, not raw paths, so a scan of made-up paths cannot grow the label set.
    let endpoint = req.extensions().get::<MatchedPath>().cloned();
    let peer = peer_ipv4(req.extensions());
    // One span per request: what the handlers log carries the path and the client.
    let span = tracing::info_span!("http", %method, %path, peer = ?peer);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let _in_request = span.enter();
    let status = resp.status().as_u16();
    let endpoint = match &endpoint {
        Some(e) => e.as_str(),
        None if path.starts_with("/assets/") => "/assets",
        None if path.starts_with("/boot/") => "/boot",
        None => "other",
    };
    st.metrics.http(endpoint, status);
    let outcome = resp.extensions_mut().remove::<Outcome>();
    let (mac, profile, served) = match &outcome {
        Some(o) => (o.mac, o.profile.as_deref(), o.served.as_str()),
        None if path.starts_with("/assets/") => (None, None, "asset"),
        None if path.starts_with("/boot/") => (None, None, "ipxe-binary"),
        None => (None, None, ""),
    };
    let mac = Dash(mac);
    let profile = profile.unwrap_or("-");
    let bytes = Dash(resp.body().size_hint().exact().or_else(|| {
        resp.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    }));
    let ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    match status {
        500.. => {
            tracing::error!(%method, %path, status, %mac, %profile, %served, %bytes, ms, "http request")
        }
        400..=499 => {
            tracing::warn!(%method, %path, status, %mac, %profile, %served, %bytes, ms, "http request")
        }
        _ => {
            tracing::info!(%method, %path, status, %mac, %profile, %served, %bytes, ms, "http request")
        }
    }
    resp
}

/// A value for a log field, or `-` without one (formatted only when the line is written).
struct Dash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Dash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
