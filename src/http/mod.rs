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

mod query;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::HttpBody as _;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::services::ServeDir;

use crate::config::Config;
use crate::inventory::Inventory;
use crate::mac::MacAddr;
use crate::profiles::watch::Live;
use crate::render::{RenderError, What};

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
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
    /// Sends magic packets (`[wol] interface` set).
    pub waker: Option<Arc<crate::wol::Waker>>,
    /// The bearer token mutating API calls need; without one they are refused.
    pub api_token: Option<Arc<str>>,
}

/// What a request was answered with, attached to the response for the request log line.
#[derive(Debug, Clone, Default)]
struct Outcome {
    mac: Option<MacAddr>,
    profile: Option<String>,
    served: String,
}

/// An error answer: a status and a short plain-text reason, for curl users and iPXE's console.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    message: String,
    mac: Option<MacAddr>,
    profile: Option<String>,
}

impl HttpError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
            mac: None,
            profile: None,
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
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("kindling: {}\n", self.message),
        )
            .into_response();
        resp.extensions_mut().insert(Outcome {
            mac: self.mac,
            profile: self.profile,
            served: format!("error: {}", self.message),
        });
        resp
    }
}

/// The router with every endpoint; tests drive it with `oneshot`, `app` serves it.
pub fn router(state: HttpState) -> Router {
    let assets = ServeDir::new(&state.config.paths.assets)
        .append_index_html_on_directories(false)
        .redirect_to_trailing_slash(false);
    // iPXE binaries over HTTP, for UEFI HTTP boot clients (the DHCP classifier hands them
    // http://<server>/boot/<file>).
    let binaries = ServeDir::new(&state.config.paths.ipxe_binaries)
        .append_index_html_on_directories(false)
        .redirect_to_trailing_slash(false);
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/ipxe", get(|s, q| machine_doc(s, q, What::Ipxe)))
        .route("/ignition", get(|s, q| machine_doc(s, q, What::Ignition)))
        .route("/metadata", get(|s, q| machine_doc(s, q, What::Metadata)))
        .route(
            "/generic",
            get(|s, q| machine_doc(s, q, What::Generic(None))),
        )
        .route("/generic/{name}", get(generic_named))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/report", get(report).post(report))
        .route("/api/v1/machines/{mac}", get(machine))
        .route("/api/v1/machines/{mac}/wake", axum::routing::post(wake))
        .nest_service("/assets", assets)
        .nest_service("/boot", binaries)
        .fallback(|| async { HttpError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn(log_request))
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
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    machine_doc(State(st), RawQuery(q), What::Generic(Some(name))).await
}

/// `/ipxe`, `/ignition`, `/metadata`, `/generic`: choose the machine's profile and render.
async fn machine_doc(
    State(st): State<HttpState>,
    RawQuery(q): RawQuery,
    what: What,
) -> Result<Response, HttpError> {
    let facts = query::facts(q.as_deref().unwrap_or(""))
        .map_err(|msg| HttpError::new(StatusCode::BAD_REQUEST, msg))?;
    let mac = facts.mac;
    let facts = st.inventory.observe(facts, SystemTime::now());
    let set = st.profiles.current();
    let Some(m) = set.select(&facts) else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no profile for machine {mac} and no default profile: add it to a profile's [[machine]] list, \
                 a selector, or set default = true in one profile"
            ),
        )
        .for_machine(mac, None));
    };
    let profile = m.profile.name.as_str();
    match set.render(m.profile, m.machine, &facts, &st.base_url, &what) {
        Ok(doc) => {
            st.inventory.served(mac, profile, &what.label());
            tracing::debug!(%mac, profile, reason = %m.reason, "profile chosen");
            let mut resp = doc.body.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(doc.content_type),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp.extensions_mut().insert(Outcome {
                mac: Some(mac),
                profile: Some(profile.to_string()),
                served: what.label(),
            });
            Ok(resp)
        }
        Err(e @ RenderError::Missing { .. }) => {
            Err(HttpError::new(StatusCode::NOT_FOUND, e.to_string())
                .for_machine(mac, Some(profile)))
        }
        Err(e) => Err(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "cannot render {} for {mac} (profile {profile:?}): {e}",
                what.label()
            ),
        )
        .for_machine(mac, Some(profile))),
    }
}

/// The booted OS reports in: `POST /api/v1/report?mac=…` with `state` (default
/// `provisioned`) and `hostname` as form fields or query parameters; `GET` with the same query
/// for clients that cannot POST.
async fn report(
    State(st): State<HttpState>,
    RawQuery(q): RawQuery,
    body: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let mut fields: HashMap<String, String> =
        form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if body.len() > 4096 {
        return Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a report is a few form fields (mac, state, hostname)",
        ));
    }
    fields.extend(form_urlencoded::parse(&body).into_owned());
    let mac: MacAddr = fields
        .get("mac")
        .ok_or_else(|| HttpError::new(StatusCode::BAD_REQUEST, "missing mac"))?
        .parse()
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("mac: {e}")))?;
    let state = fields
        .get("state")
        .map_or("provisioned", String::as_str)
        .to_string();
    let token_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    };
    if !token_ok(&state) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "state: letters, digits, '-', '_' or '.', at most 63",
        )
        .for_machine(mac, None));
    }
    let hostname = fields.get("hostname").filter(|h| !h.is_empty()).cloned();
    if let Some(h) = &hostname
        && !token_ok(h)
    {
        return Err(
            HttpError::new(StatusCode::BAD_REQUEST, "hostname: not a host name")
                .for_machine(mac, None),
        );
    }
    st.inventory
        .report(mac, &state, hostname.clone(), SystemTime::now());
    tracing::info!(%mac, %state, hostname = %hostname.as_deref().unwrap_or("-"), "machine reported");
    let mut resp = Json(json!({ "mac": mac.to_string(), "state": state })).into_response();
    resp.extensions_mut().insert(Outcome {
        mac: Some(mac),
        served: format!("report: {state}"),
        ..Default::default()
    });
    Ok(resp)
}

/// A mutating API call must carry `Authorization: Bearer <api.token>`.
fn authorize(st: &HttpState, headers: &axum::http::HeaderMap) -> Result<(), HttpError> {
    let Some(token) = &st.api_token else {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "mutating API calls are off: set [api] token or token_file",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit on the first differing byte.
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <api.token>)",
        ))
    }
}

/// Wake one machine: magic packets through `[wol] interface`; its record says `waking`.
async fn wake(
    State(st): State<HttpState>,
    Path(mac): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, HttpError> {
    authorize(&st, &headers)?;
    let mac: MacAddr = mac
        .parse()
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("mac: {e}")))?;
    let Some(waker) = &st.waker else {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "Wake-on-LAN is off: set [wol] interface",
        )
        .for_machine(mac, None));
    };
    let sent = waker.wake(mac).await.map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot send the magic packet: {e}"),
        )
        .for_machine(mac, None)
    })?;
    st.inventory.woken(mac, SystemTime::now());
    tracing::info!(%mac, udp = ?sent.udp, raw = sent.raw, repeat = sent.repeat, "Wake-on-LAN sent");
    let mut resp = Json(json!({ "mac": mac.to_string(), "sent": sent })).into_response();
    resp.extensions_mut().insert(Outcome {
        mac: Some(mac),
        served: "wake".into(),
        ..Default::default()
    });
    Ok(resp)
}

/// One machine's record.
async fn machine(
    State(st): State<HttpState>,
    Path(mac): Path<String>,
) -> Result<Response, HttpError> {
    let mac: MacAddr = mac
        .parse()
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("mac: {e}")))?;
    match st.inventory.get(mac) {
        Some(rec) => Ok(Json(rec).into_response()),
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("no record of {mac}: it has not booted or reported since Kindling started"),
        )),
    }
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
    let state = if status.last_error.is_some() {
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
    }))
    .into_response();
    resp.extensions_mut().insert(Outcome {
        served: "healthz".into(),
        ..Default::default()
    });
    resp
}

/// One log line per request: method, path, status, MAC, profile, what was served, time taken.
async fn log_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let outcome = resp
        .extensions()
        .get::<Outcome>()
        .cloned()
        .unwrap_or_else(|| Outcome {
            served: if path.starts_with("/assets/") {
                "asset".into()
            } else if path.starts_with("/boot/") {
                "ipxe-binary".into()
            } else {
                String::new()
            },
            ..Default::default()
        });
    let mac = outcome
        .mac
        .map_or_else(|| "-".to_string(), |m| m.to_string());
    let profile = outcome.profile.as_deref().unwrap_or("-");
    let bytes = resp.body().size_hint().exact().or_else(|| {
        resp.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    });
    let bytes = bytes.map_or_else(|| "-".to_string(), |b| b.to_string());
    let ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    let served = outcome.served;
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

#[cfg(test)]
pub(crate) mod tests;
