//! The REST API under `/api/v1`: machines and their boot state, next boot, adoption,
//! Wake-on-LAN, the event stream and the booted OS's report. JSON in and out; errors are
//! `{"error": "...", "status": N}`. Mutating calls need `Authorization: Bearer <api.token>`;
//! reads need it too with `api.read_requires_token`. The OpenAPI description is served at
//! `/api/v1/openapi.json` (`openapi.json` beside this file; a test keeps it in step with the
//! routes).
//!
//! `POST /api/v1/report` is open on purpose: the booted machine calls it, and it must not hold
//! the operator's token (Matchbox's model for its machine endpoints).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{HttpError, HttpState, Outcome};
use crate::inventory::{Filter, NextBoot};
use crate::mac::MacAddr;

/// The OpenAPI description served at `/api/v1/openapi.json`.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// Every API route, as written in the OpenAPI description.
pub(crate) const PATHS: &[&str] = &[
    "/api/v1/machines",
    "/api/v1/machines/{mac}",
    "/api/v1/machines/{mac}/next-boot",
    "/api/v1/machines/{mac}/reinstall",
    "/api/v1/machines/{mac}/adopt",
    "/api/v1/machines/{mac}/wake",
    "/api/v1/wake",
    "/api/v1/events",
    "/api/v1/report",
    "/api/v1/openapi.json",
    "/api/v1/cluster",
    "/api/v1/status",
    "/api/v1/machines/{mac}/preview",
    "/api/v1/machines/{mac}/power",
    "/api/v1/power",
];

/// Most machines one wake call may name, and the longest pause between two of them.
const MAX_WAKE: usize = 4096;
const MAX_STAGGER: Duration = Duration::from_secs(5);

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route(PATHS[0], get(machines))
        .route(PATHS[1], get(machine))
        .route(
            PATHS[2],
            axum::routing::put(set_next_boot).delete(clear_next_boot),
        )
        .route(PATHS[3], post(reinstall))
        .route(PATHS[4], post(adopt))
        .route(PATHS[5], post(wake_one))
        .route(PATHS[6], post(wake_many))
        .route(PATHS[7], get(events))
        .route(PATHS[8], post(report))
        .route(PATHS[9], get(openapi))
        .route(PATHS[10], get(cluster))
        .route(PATHS[11], get(status))
        .route(PATHS[12], get(preview))
        .route(PATHS[13], get(power_status).post(power))
        .route(PATHS[14], post(power_many))
}

fn power_error(e: crate::power::PowerError) -> HttpError {
    use crate::power::PowerError;
    match e {
        PowerError::NoBmc(m) => HttpError::api(StatusCode::CONFLICT, m),
        PowerError::Bmc(e) => HttpError::api(StatusCode::BAD_GATEWAY, e.to_string()),
        PowerError::Stopping => {
            HttpError::api(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping")
        }
    }
}

fn power_json(mac: MacAddr, bmc: &str, s: &crate::bmc::System) -> serde_json::Value {
    json!({
        "mac": mac,
        "bmc": bmc,
        "system": s.path,
        "power_state": s.power.as_str(),
        "boot_override": s.boot,
    })
}

/// `GET /api/v1/machines/{mac}/power`: the power state and boot override its BMC reports.
async fn power_status(
    State(st): State<HttpState>,
    _: Reader,
    MacPath(mac): MacPath,
) -> Result<Response, HttpError> {
    let (bmc, system) = st.power.status(mac).await.map_err(power_error)?;
    Ok(tagged(
        Json(power_json(mac, bmc.url(), &system)),
        Some(mac),
        "api: power status",
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerBody {
    action: String,
}

/// `POST /api/v1/machines/{mac}/power` with `{"action": "on" | "off" | "graceful-off" |
/// "cycle" | "pxe-once" | "pxe-boot"}`: through the machine's BMC (Redfish). `cycle`
/// restarts a machine that is on and powers on one that is off; `pxe-once` sets a one-time
/// network boot; `pxe-boot` does both.
async fn power(
    State(st): State<HttpState>,
    _: Operator,
    MacPath(mac): MacPath,
    bytes: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let req: PowerBody = body(&bytes)?;
    let Some(act) = crate::power::Act::parse(&req.action) else {
        return Err(bad(format!(
            "action: {:?} is not on, off, graceful-off, cycle, pxe-once or pxe-boot",
            req.action
        )));
    };
    let done = st.power.act(mac, act).await.map_err(power_error)?;
    tracing::info!(%mac, bmc = %done.bmc, action = %req.action, reset = ?done.reset, "power");
    let mut v = power_json(mac, &done.bmc, &done.after);
    v["action"] = json!(req.action);
    v["reset"] = json!(done.reset);
    Ok(tagged(Json(v), Some(mac), "api: power"))
}

/// `GET /api/v1/status`: what the dashboard shows on every page: the profiles' reload status
/// (the last error with file:line until a good reload), each DHCP pool's use, and the
/// machines per boot state.
async fn status(State(st): State<HttpState>, _: Reader) -> Result<Response, HttpError> {
    let mut states: BTreeMap<&'static str, usize> = crate::boot_state::BootState::ALL
        .iter()
        .map(|s| (s.as_str(), 0))
        .collect();
    let machines = st.inventory.list(&Filter::default());
    for m in &machines {
        *states.entry(m.state.as_str()).or_default() += 1;
    }
    Ok(tagged(
        Json(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "now": crate::time_fmt::Stamp(st.inventory.now()),
            "base_url": &*st.base_url,
            "profiles": st.profiles.status(),
            "profile_names": st.profiles.current().profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            "pools": st.metrics.pools(),
            "machines": machines.len(),
            "states": states,
            "stall_limits": stall_limits(&st),
            "wol": st.waker.is_some(),
        })),
        None,
        "api: status",
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewQuery {
    what: Option<String>,
}

/// `GET /api/v1/machines/{mac}/preview?what=ipxe|grub|ignition`: what the machine would be
/// served now, rendered through the same logic as its own request but changing nothing: its
/// one-shot next boot stays set and no boot secret is minted (the secret's place shows zeros).
async fn preview(
    State(st): State<HttpState>,
    _: Reader,
    MacPath(mac): MacPath,
    Query(q): Query<PreviewQuery>,
) -> Result<Response, HttpError> {
    use crate::profiles::{GrubVia, What};
    let what = match q.what.as_deref().unwrap_or("ipxe") {
        "ipxe" => What::Ipxe,
        "grub" => What::Grub(GrubVia::Http),
        "ignition" => What::Ignition,
        other => {
            return Err(bad(format!(
                "what: {other:?} is not ipxe, grub or ignition"
            )));
        }
    };
    let mut facts = st.inventory.recall(crate::profiles::Facts::from_mac(mac));
    let set = st.profiles.current();
    let unprocessable = |msg: String| HttpError::api(StatusCode::UNPROCESSABLE_ENTITY, msg);
    let Some(m) = set.select(&facts) else {
        return Err(unprocessable(format!(
            "no profile matches {mac} and there is no default profile: adopt it into one"
        )));
    };
    let serve = st
        .inventory
        .plan_boot(
            mac,
            |view| crate::inventory::plan::serve(&set, m.profile, view, &what),
            |_| false,
        )
        .map_err(|e| unprocessable(format!("{mac} {e}")))?;
    if what.is_boot_script() && !serve.local {
        facts.secret = Some("0".repeat(32));
    }
    let rendered = if serve.local {
        set.render_local(serve.profile, m.machine, &facts, &st.base_url, &what)
    } else {
        set.render(serve.profile, m.machine, &facts, &st.base_url, &what)
    };
    let doc = rendered.map_err(|e| unprocessable(e.to_string()))?;
    Ok(tagged(
        Json(json!({
            "mac": mac,
            "what": what.label(),
            "profile": serve.profile.name,
            "reason": m.reason.to_string(),
            "served": serve.served,
            "uses_next_boot": serve.uses_next_boot,
            "content_type": doc.content_type,
            "body": doc.body,
        })),
        Some(mac),
        "api: preview",
    ))
}

/// Each in-progress state's stall limit in seconds, for the dashboard's "stalled soon" hints.
fn stall_limits(st: &HttpState) -> BTreeMap<&'static str, f64> {
    let limits = &st.config.inventory.stall_after;
    crate::boot_state::BootState::ALL
        .iter()
        .filter_map(|&s| Some((s.as_str(), limits.limit(s)?.as_secs_f64())))
        .collect()
}

/// `GET /api/v1/cluster`: this instance (its store, node name and profile digest) and, with
/// `[cluster] store = "etcd"`, every live member of every segment with its profile digest.
async fn cluster(State(st): State<HttpState>, _: Reader) -> Result<Response, HttpError> {
    let c = &st.config.cluster;
    let digest = st.profiles.status().digest;
    let members = match &st.cluster {
        None => Vec::new(),
        Some(etcd) => crate::cluster::members::list(etcd).await.map_err(|e| {
            HttpError::api(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot list the cluster's members: {e}"),
            )
        })?,
    };
    let members: Vec<serde_json::Value> = members
        .into_iter()
        .map(|m| {
            let same = m.profiles.as_deref() == Some(digest.as_str());
            let mut v = serde_json::to_value(m).unwrap_or_default();
            v["same_profiles"] = json!(same);
            v
        })
        .collect();
    let store = match c.store {
        crate::config::StoreKind::Local => "local",
        crate::config::StoreKind::Etcd => "etcd",
    };
    Ok(tagged(
        Json(json!({
            "store": store,
            "node": crate::cluster::node_name(c),
            "profiles": digest,
            "members": members,
        })),
        None,
        "api: cluster",
    ))
}

fn bad(msg: impl Into<String>) -> HttpError {
    HttpError::api(StatusCode::BAD_REQUEST, msg)
}

fn parse_mac(s: &str) -> Result<MacAddr, HttpError> {
    s.parse().map_err(|e| bad(format!("mac: {e}")))
}

/// A JSON body, with a JSON error when it is not one.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    if bytes.len() > 64 * 1024 {
        return Err(HttpError::api(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than 64 KiB",
        ));
    }
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| bad(format!("request body: {e}")))
}

fn tagged(resp: impl IntoResponse, mac: Option<MacAddr>, served: &str) -> Response {
    let mut resp = resp.into_response();
    resp.extensions_mut().insert(Outcome {
        mac,
        served: served.to_string(),
        ..Default::default()
    });
    resp
}

/// Check `Authorization: Bearer <api.token>` for a mutating call.
fn authorize(st: &HttpState, headers: &HeaderMap) -> Result<(), HttpError> {
    let Some(token) = &st.api_token else {
        return Err(HttpError::api(
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
        Err(HttpError::api(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <api.token>)",
        ))
    }
}

/// Reads are open unless `api.read_requires_token`.
fn authorize_read(st: &HttpState, headers: &HeaderMap) -> Result<(), HttpError> {
    if st.config.api.read_requires_token {
        authorize(st, headers)
    } else {
        Ok(())
    }
}

/// The caller of a mutating call: extracting it checks the bearer token (401/403 first,
/// before anything else about the request).
struct Operator;

impl axum::extract::FromRequestParts<HttpState> for Operator {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &HttpState,
    ) -> Result<Self, HttpError> {
        authorize(st, &parts.headers).map(|()| Operator)
    }
}

/// The caller of a read: checks the token only with `api.read_requires_token`.
struct Reader;

impl axum::extract::FromRequestParts<HttpState> for Reader {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &HttpState,
    ) -> Result<Self, HttpError> {
        authorize_read(st, &parts.headers).map(|()| Reader)
    }
}

/// The `{mac}` of the path, parsed (a JSON 400 when it is not a MAC).
struct MacPath(MacAddr);

impl axum::extract::FromRequestParts<HttpState> for MacPath {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &HttpState,
    ) -> Result<Self, HttpError> {
        let Path(mac) = Path::<String>::from_request_parts(parts, st)
            .await
            .map_err(|e| bad(e.body_text()))?;
        parse_mac(&mac).map(MacPath)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    profile: Option<String>,
}

/// `GET /api/v1/machines?state=&profile=`: every machine, short form.
async fn machines(
    State(st): State<HttpState>,
    _: Reader,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    let q: ListQuery = serde_urlencoded(q.as_deref().unwrap_or(""))?;
    let filter = Filter {
        state: q
            .state
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| bad(format!("state: {e}")))?,
        profile: q.profile,
    };
    let list = listed(&st.inventory, &st.profiles, &filter);
    Ok(tagged(
        Json(json!({ "count": list.len(), "machines": list })),
        None,
        "api: machines",
    ))
}

/// The machines `filter` picks, each saying whether it has a BMC.
fn listed(
    inventory: &crate::inventory::Inventory,
    profiles: &crate::profiles::watch::Live,
    filter: &Filter,
) -> Vec<crate::inventory::Summary> {
    let mut list = inventory.list(filter);
    let set = profiles.current();
    for m in &mut list {
        m.bmc = set.has_bmc(m.mac);
    }
    list
}

/// Query strings without a new dependency: every key once, unknown keys refused.
fn serde_urlencoded<T: serde::de::DeserializeOwned>(q: &str) -> Result<T, HttpError> {
    let map: serde_json::Map<String, serde_json::Value> = form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
        .collect();
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| bad(format!("query: {e}")))
}

/// `GET /api/v1/machines/{mac}`: one machine with its history.
async fn machine(
    State(st): State<HttpState>,
    _: Reader,
    MacPath(mac): MacPath,
) -> Result<Response, HttpError> {
    match st.inventory.get(mac) {
        Some(mut rec) => {
            // The boot secret is the machine's credential: never shown.
            rec.secret = None;
            let mut v = serde_json::to_value(&rec).unwrap_or_default();
            if let Some(p) = st.inventory.power(mac) {
                v["power"] = json!(p);
            }
            v["bmc"] = json!(st.profiles.current().has_bmc(mac));
            Ok(tagged(Json(v), Some(mac), "api: machine"))
        }
        None => Err(HttpError::api(
            StatusCode::NOT_FOUND,
            format!("no record of {mac}: no profile declares it and it has not booted"),
        )),
    }
}

/// The body of `PUT .../next-boot` (serde's internally tagged enums cannot refuse unknown
/// fields, so it is read flat).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NextBootBody {
    boot: String,
    profile: Option<String>,
}

/// `PUT /api/v1/machines/{mac}/next-boot` with `{"boot": "install" | "local"}` or
/// `{"boot": "profile", "profile": "name"}`: what its next `/ipxe` serves, once.
async fn set_next_boot(
    State(st): State<HttpState>,
    _: Operator,
    MacPath(mac): MacPath,
    bytes: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let req: NextBootBody = body(&bytes)?;
    let next = match (req.boot.as_str(), req.profile) {
        ("install", None) => NextBoot::Install,
        ("local", None) => NextBoot::Local,
        ("profile", Some(profile)) => NextBoot::Profile { profile },
        ("profile", None) => return Err(bad("boot = \"profile\" needs \"profile\": the name")),
        ("install" | "local", Some(_)) => {
            return Err(bad("\"profile\" goes with boot = \"profile\" only"));
        }
        (other, _) => {
            return Err(bad(format!(
                "boot {other:?}: one of \"install\", \"local\", \"profile\""
            )));
        }
    };
    if let NextBoot::Profile { profile } = &next
        && st.profiles.current().profile(profile).is_none()
    {
        return Err(HttpError::api(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no profile named {profile:?}"),
        ));
    }
    next_boot(&st, mac, Some(next), "api: next-boot").await
}

/// Set (or clear) the next boot, wait until it is on disk, answer with the machine.
async fn next_boot(
    st: &HttpState,
    mac: MacAddr,
    next: Option<NextBoot>,
    served: &str,
) -> Result<Response, HttpError> {
    let rec = st
        .inventory
        .choose_next_boot(mac, next, "api")
        .await
        .map_err(|e| {
            HttpError::api(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("next boot of {mac} not set: {e}"),
            )
        })?;
    st.inventory.flushed().await;
    tracing::info!(%mac, next_boot = ?rec.next_boot, "next boot set");
    Ok(tagged(Json(rec.summary()), Some(mac), served))
}

/// `DELETE /api/v1/machines/{mac}/next-boot`: back to the profile's rules.
async fn clear_next_boot(
    State(st): State<HttpState>,
    _: Operator,
    MacPath(mac): MacPath,
) -> Result<Response, HttpError> {
    if st.inventory.get(mac).is_none() {
        return Err(HttpError::api(
            StatusCode::NOT_FOUND,
            format!("no record of {mac}"),
        ));
    }
    next_boot(&st, mac, None, "api: next-boot").await
}

/// Boot `mac` from the network now through its BMC (one-time PXE, then on or a restart),
/// and record it as a wake (`why` is added to the history's line).
async fn pxe_boot(
    st: &HttpState,
    mac: MacAddr,
    why: &str,
) -> Result<crate::power::Acted, HttpError> {
    let done = st
        .power
        .act(mac, crate::power::Act::PxeBoot)
        .await
        .map_err(power_error)?;
    let reset = done.reset.as_deref().unwrap_or("no reset");
    let detail = format!("BMC {}: PXE once, {reset}{why}", done.bmc);
    st.inventory.woken(mac, &detail);
    tracing::info!(%mac, bmc = %done.bmc, %reset, "booted from the network through the BMC{why}");
    Ok(done)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReinstallBody {
    /// Also boot it into the install now, through its BMC.
    #[serde(default)]
    power_cycle: bool,
}

/// `POST /api/v1/machines/{mac}/reinstall` (optionally `{"power_cycle": true}`): its next
/// `/ipxe` serves its own profile's install once, even though it is provisioned; after that,
/// its after-install boot again. With `power_cycle`, its BMC then boots it from the network
/// now (one-time PXE, then a restart, or on when off).
async fn reinstall(
    State(st): State<HttpState>,
    _: Operator,
    MacPath(mac): MacPath,
    bytes: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let req: ReinstallBody = body(&bytes)?;
    if req.power_cycle && !st.power.has_bmc(mac) {
        return Err(HttpError::api(
            StatusCode::CONFLICT,
            format!(
                "{mac} has no BMC, so it cannot be power-cycled: give it bmc = {{…}}, or reinstall without power_cycle and wake it"
            ),
        ));
    }
    let set = next_boot(&st, mac, Some(NextBoot::Install), "api: reinstall").await?;
    if !req.power_cycle {
        return Ok(set);
    }
    let done = pxe_boot(&st, mac, " (reinstall)").await.map_err(|e| {
        HttpError::api(
            e.status,
            format!(
                "{mac}: the next boot is set to install, but the power cycle failed: {}",
                e.message
            ),
        )
    })?;
    let summary = st.inventory.summary(mac);
    Ok(tagged(
        Json(json!({
            "machine": summary,
            "power": { "bmc": done.bmc, "reset": done.reset, "power_state": done.after.power.as_str() },
        })),
        Some(mac),
        "api: reinstall",
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdoptBody {
    profile: String,
    hostname: Option<String>,
    ip: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// `POST /api/v1/machines/{mac}/adopt` with `{"profile", "hostname"?, "ip"?, "labels"?}`:
/// append a `[[machine]]` entry to the profile's file, reload, and answer with the entry. A
/// reload that fails puts the file back as it was and answers 422 with the reasons.
async fn adopt(
    State(st): State<HttpState>,
    _: Operator,
    MacPath(mac): MacPath,
    bytes: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let req: AdoptBody = body(&bytes)?;
    let set = st.profiles.current();
    let Some(profile) = set.profile(&req.profile) else {
        return Err(HttpError::api(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no profile named {:?}", req.profile),
        ));
    };
    if let Some(m) = set.machines.get(&mac) {
        return Err(HttpError::api(
            StatusCode::CONFLICT,
            format!("{mac} is already declared at {}", m.at),
        ));
    }
    let rec = st.inventory.get(mac);
    let comment = match &rec {
        Some(r) => format!(
            "adopted through the API on {}; it was {} (arch {}, uuid {}, first seen {})",
            crate::time_fmt::rfc3339(st.inventory.now()),
            r.state,
            r.arch.as_deref().unwrap_or("?"),
            r.uuid.as_deref().unwrap_or("?"),
            crate::time_fmt::rfc3339(r.first_seen.0),
        ),
        None => format!(
            "adopted through the API on {}",
            crate::time_fmt::rfc3339(st.inventory.now())
        ),
    };
    let entry =
        crate::profiles::adopt::entry(mac, req.hostname.as_deref(), req.ip, &req.labels, &comment)
            .map_err(|e| HttpError::api(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let path = profile.path.clone();
    let live = st.profiles.clone();
    let text = entry.clone();
    let result = tokio::task::spawn_blocking(move || {
        crate::profiles::adopt::append_and_reload(&live, &path, &text)
    })
    .await
    .map_err(|e| HttpError::api(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let generation = match result {
        Ok(generation) => generation,
        Err(crate::profiles::adopt::AdoptError::Write(msg)) => {
            return Err(HttpError::api(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{msg}; add this entry by hand:\n{entry}"),
            ));
        }
        Err(crate::profiles::adopt::AdoptError::Invalid(errors)) => {
            let mut resp = (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "error": "the profiles do not load with this entry; the file is unchanged",
                    "status": 422,
                    "errors": errors,
                })),
            )
                .into_response();
            resp.extensions_mut().insert(Outcome {
                mac: Some(mac),
                served: "api: adopt refused".into(),
                ..Default::default()
            });
            return Ok(resp);
        }
    };
    // The inventory follows reloads on the bus: answer once it lists the machine as declared.
    st.inventory.synced_to(generation).await;
    st.inventory.flushed().await;
    st.profiles.bus().publish(crate::events::Adopted {
        mac,
        profile: req.profile.clone(),
        file: profile.path.clone(),
    });
    tracing::info!(%mac, profile = %req.profile, file = %profile.path.display(), "machine adopted");
    // Other instances sharing the store append the same entry to their copies.
    let adoption = crate::inventory::store::Adoption {
        mac,
        profile: req.profile.clone(),
        entry: entry.clone(),
        by: crate::cluster::node_name(&st.config.cluster),
    };
    let cluster = match st.inventory.share_adoption(&adoption).await {
        Ok(true) => json!("shared with the other instances"),
        Ok(false) => serde_json::Value::Null,
        Err(e) => {
            tracing::warn!(%mac, error = %e, "machine adopted here but the other instances were not told: add the entry to their profiles");
            json!(format!("not shared with the other instances: {e}"))
        }
    };
    Ok(tagged(
        (
            StatusCode::CREATED,
            Json(json!({
                "mac": mac,
                "profile": req.profile,
                "file": profile.path.display().to_string(),
                "entry": entry,
                "cluster": cluster,
            })),
        ),
        Some(mac),
        "api: adopt",
    ))
}

/// `POST /api/v1/machines/{mac}/wake`: magic packets through `[wol] interface`.
async fn wake_one(
    State(st): State<HttpState>,
    _: Operator,
    MacPath(mac): MacPath,
) -> Result<Response, HttpError> {
    let sent = wake(&st, mac).await?;
    Ok(tagged(
        Json(json!({ "mac": mac.to_string(), "sent": sent })),
        Some(mac),
        "wake",
    ))
}

/// Wake `mac`: through its BMC when it has one (a one-time PXE boot, then power on, or a
/// restart when it is on already), else with Wake-on-LAN. The record's history says which.
async fn wake(st: &HttpState, mac: MacAddr) -> Result<serde_json::Value, HttpError> {
    if st.power.has_bmc(mac) {
        let done = pxe_boot(st, mac, "").await?;
        return Ok(json!({ "method": "bmc", "bmc": done.bmc, "reset": done.reset }));
    }
    let Some(waker) = &st.waker else {
        return Err(HttpError::api(
            StatusCode::CONFLICT,
            format!(
                "{mac} has no BMC and Wake-on-LAN is off: set [wol] interface, or give it bmc = {{…}}"
            ),
        ));
    };
    let sent = waker.wake(mac).await.map_err(|e| {
        HttpError::api(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot send the magic packet to {mac}: {e}"),
        )
    })?;
    let detail = format!(
        "{} UDP, {} raw, x{}",
        sent.udp.len(),
        if sent.raw { "1" } else { "0" },
        sent.repeat
    );
    st.inventory.woken(mac, &detail);
    tracing::info!(%mac, udp = ?sent.udp, raw = sent.raw, repeat = sent.repeat, "Wake-on-LAN sent");
    let mut v = json!(sent);
    v["method"] = json!("wol");
    Ok(v)
}

/// Which machines a group call is for, and how to pace it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    /// For `POST /api/v1/power`: what to do.
    action: Option<String>,
    #[serde(default)]
    macs: Vec<String>,
    profile: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Pause between machines, so 300 power supplies do not start in the same second.
    #[serde(default)]
    stagger_ms: u64,
    /// Machines being handled at once at most (BMC calls take a while); default 8.
    concurrency: Option<usize>,
}

/// Machines handled at once by one group call, by default and at most.
const WAKE_CONCURRENCY: usize = 8;
const MAX_WAKE_CONCURRENCY: usize = 64;

impl GroupBody {
    /// The listed MACs plus every machine of the profile (and labels), each once.
    fn targets(&self, st: &HttpState) -> Result<Vec<MacAddr>, HttpError> {
        let mut targets = Vec::new();
        for m in &self.macs {
            targets.push(parse_mac(m)?);
        }
        if self.profile.is_some() || !self.labels.is_empty() {
            let set = st.profiles.current();
            if let Some(p) = &self.profile
                && set.profile(p).is_none()
            {
                return Err(HttpError::api(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("no profile named {p:?}"),
                ));
            }
            let filter = Filter {
                state: None,
                profile: self.profile.clone(),
            };
            for m in st.inventory.list(&filter) {
                if self.labels.iter().all(|(k, v)| m.labels.get(k) == Some(v)) {
                    targets.push(m.mac);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        targets.retain(|m| seen.insert(*m));
        if targets.is_empty() {
            return Err(HttpError::api(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no machine named: give macs, a profile or labels that match machines",
            ));
        }
        if targets.len() > MAX_WAKE {
            return Err(bad(format!("at most {MAX_WAKE} machines per call")));
        }
        Ok(targets)
    }

    /// `each` for every target: machine i starts no earlier than i staggers from now, and no
    /// more than the concurrency limit are being handled at any moment (a BMC call takes
    /// seconds; a magic packet none). What each gave, or its error, per machine.
    async fn run<F, Fut>(
        &self,
        targets: &[MacAddr],
        each: F,
    ) -> Vec<(MacAddr, Result<serde_json::Value, HttpError>)>
    where
        F: Fn(MacAddr) -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, HttpError>>,
    {
        let stagger = Duration::from_millis(self.stagger_ms).min(MAX_STAGGER);
        let limit = self
            .concurrency
            .unwrap_or(WAKE_CONCURRENCY)
            .clamp(1, MAX_WAKE_CONCURRENCY);
        let permits = tokio::sync::Semaphore::new(limit);
        let start = tokio::time::Instant::now();
        let each = &each;
        futures_util::future::join_all(targets.iter().enumerate().map(|(i, mac)| {
            let permits = &permits;
            async move {
                tokio::time::sleep_until(start + stagger * i as u32).await;
                let _permit = permits.acquire().await;
                (*mac, each(*mac).await)
            }
        }))
        .await
    }
}

/// The answer of a group call: `done` and `failed` machines, 207 when some failed.
fn group_answer(
    outcomes: Vec<(MacAddr, Result<serde_json::Value, HttpError>)>,
    done_key: &str,
    served: &str,
) -> Response {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (mac, outcome) in outcomes {
        match outcome {
            Ok(v) => done.push(v),
            Err(e) => failed.push(json!({ "mac": mac, "error": e.message })),
        }
    }
    let status = if failed.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    let served = format!("{served} x{}", done.len());
    tagged(
        (status, Json(json!({ done_key: done, "failed": failed }))),
        None,
        &served,
    )
}

/// `POST /api/v1/wake` with `{"macs": [...], "profile": "worker", "labels": {"rack": "a"},
/// "stagger_ms": 200, "concurrency": 8}`: wake the listed MACs plus every machine of the
/// profile (and labels).
async fn wake_many(
    State(st): State<HttpState>,
    _: Operator,
    bytes: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let req: GroupBody = body(&bytes)?;
    if req.action.is_some() {
        return Err(bad("request body: a wake takes no action"));
    }
    let targets = req.targets(&st)?;
    let outcomes = req
        .run(&targets, |mac| {
            let st = &st;
            async move {
                let sent = wake(st, mac).await?;
                Ok(json!({ "mac": mac, "sent": sent }))
            }
        })
        .await;
    Ok(group_answer(outcomes, "woken", "wake"))
}

/// `POST /api/v1/power` with `{"action": "status" | "on" | "off" | "graceful-off" | "cycle" |
/// "pxe-once" | "pxe-boot", "macs": [...], "profile"?, "labels"?, "stagger_ms"?,
/// "concurrency"?}`: a power action for a group of machines through their BMCs, paced like
/// a group wake.
async fn power_many(
    State(st): State<HttpState>,
    _: Operator,
    bytes: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let req: GroupBody = body(&bytes)?;
    let word = req.action.as_deref().unwrap_or_default();
    let act = match word {
        "status" => None,
        w => match crate::power::Act::parse(w) {
            Some(a) => Some(a),
            None => {
                return Err(bad(format!(
                    "action: {w:?} is not status, on, off, graceful-off, cycle, pxe-once or pxe-boot"
                )));
            }
        },
    };
    let targets = req.targets(&st)?;
    let outcomes = req
        .run(&targets, |mac| {
            let st = &st;
            async move {
                let Some(act) = act else {
                    let (bmc, system) = st.power.status(mac).await.map_err(power_error)?;
                    return Ok(power_json(mac, bmc.url(), &system));
                };
                let done = st.power.act(mac, act).await.map_err(power_error)?;
                tracing::info!(%mac, bmc = %done.bmc, action = %word, reset = ?done.reset, "power");
                let mut v = power_json(mac, &done.bmc, &done.after);
                v["action"] = json!(word);
                v["reset"] = json!(done.reset);
                Ok(v)
            }
        })
        .await;
    Ok(group_answer(outcomes, "done", "api: power"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    mac: Option<String>,
}

/// How long the event stream gathers transitions into one write: at a storm's rate every
/// subscriber would otherwise cost a write per event.
const EVENT_BATCH: Duration = Duration::from_millis(50);
/// A comment line this often keeps idle streams (and proxies in between) open.
const EVENT_KEEPALIVE: Duration = Duration::from_secs(15);

/// `GET /api/v1/events[?mac=]`: Server-Sent Events. `ready` first, then one `transition` per
/// change of boot state, in order, and one `power` per change of a power reading (a BMC's
/// state, or its calls starting or stopping to fail); `resync` (with every machine) if this
/// client fell behind. Events that arrive within [`EVENT_BATCH`] of each other go out in one
/// write.
async fn events(
    State(st): State<HttpState>,
    _: Reader,
    Query(q): Query<EventsQuery>,
) -> Result<Response, HttpError> {
    let only = q.mac.as_deref().map(parse_mac).transpose()?;
    let rx = st.inventory.subscribe();
    let power = st.inventory.subscribe_power();
    let ready = sse_event(
        "ready",
        &json!({ "machines": st.inventory.len(), "batch_ms": EVENT_BATCH.as_millis() }),
    );
    let shutdown = st.shutdown.clone();
    let inv = st.inventory.clone();
    let profiles = st.profiles.clone();
    let stream = futures_util::stream::unfold(
        (Some(ready), rx, power, inv, shutdown),
        move |(first, mut rx, mut power, inv, shutdown)| {
            let profiles = profiles.clone();
            async move {
                if let Some(ready) = first {
                    return Some((Ok::<_, Infallible>(ready), (None, rx, power, inv, shutdown)));
                }
                let mut out = String::new();
                let mut batch_ends = None;
                loop {
                    let wait = match batch_ends {
                        Some(end) => tokio::time::sleep_until(end),
                        None => tokio::time::sleep(EVENT_KEEPALIVE),
                    };
                    // Only the events this stream follows are written out.
                    let wanted = |mac: MacAddr| only.is_none_or(|m| m == mac);
                    let got = tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = wait => {
                            if out.is_empty() {
                                out.push_str(":\n\n");
                            }
                            break;
                        }
                        r = rx.recv() => r.map(|t| wanted(t.mac).then(|| sse_event("transition", &t))),
                        r = power.recv() => r.map(|p| wanted(p.mac).then(|| sse_event("power", &p))),
                    };
                    match got {
                        Ok(None) => {}
                        Ok(Some(event)) => {
                            out.push_str(&event);
                            batch_ends.get_or_insert(tokio::time::Instant::now() + EVENT_BATCH);
                        }
                        Err(RecvError::Lagged(missed)) => {
                            // What was gathered is older than the snapshot: send the snapshot
                            // (it carries the power readings too).
                            let machines = listed(&inv, &profiles, &Filter::default());
                            out = sse_event(
                                "resync",
                                &json!({ "missed": missed, "machines": machines }),
                            );
                            break;
                        }
                        Err(RecvError::Closed) if out.is_empty() => return None,
                        Err(RecvError::Closed) => break,
                    }
                }
                Some((Ok(out), (None, rx, power, inv, shutdown)))
            }
        },
    );
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    Ok(tagged(resp, only, "events"))
}

/// One Server-Sent Event: its name and its data as one line of JSON.
fn sse_event(name: &str, data: &impl serde::Serialize) -> String {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    format!("event: {name}\ndata: {json}\n\n")
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The booted OS reports in: `POST /api/v1/report?mac=…&token=…` with `state` (default
/// `provisioned`) and `hostname` as form fields or query parameters. POST only (a page's
/// `<img>` cannot do it), and only the machine itself: its boot secret, or its own address
/// (`http.config_access`). `provisioned` is on disk before the answer.
async fn report(
    State(st): State<HttpState>,
    super::PeerIp(peer): super::PeerIp,
    RawQuery(q): RawQuery,
    body: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let mut fields: HashMap<String, String> =
        form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if body.len() > 4096 {
        return Err(HttpError::api(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a report is a few form fields (mac, state, hostname)",
        ));
    }
    fields.extend(form_urlencoded::parse(&body).into_owned());
    let mac: MacAddr = fields
        .get("mac")
        .ok_or_else(|| bad("missing mac"))?
        .parse()
        .map_err(|e| bad(format!("mac: {e}")))?;
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
        return Err(
            bad("state: letters, digits, '-', '_' or '.', at most 63").for_machine(mac, None)
        );
    }
    let hostname = fields.get("hostname").filter(|h| !h.is_empty()).cloned();
    if let Some(h) = &hostname
        && !token_ok(h)
    {
        return Err(bad("hostname: not a host name").for_machine(mac, None));
    }
    let access = st.inventory.access(
        mac,
        peer,
        fields.get("token").map(String::as_str),
        st.config.dhcp.mode,
        false,
    );
    let allowed = match st.config.http.config_access {
        crate::config::ConfigAccess::Open => true,
        crate::config::ConfigAccess::TokenOrSource => access.token_ok || access.from_machine,
        crate::config::ConfigAccess::Token => access.token_ok,
    };
    if !allowed {
        tracing::warn!(%mac, peer = ?peer, %state, "report refused: not from the machine's address and without its boot secret");
        return Err(HttpError::api(
            StatusCode::FORBIDDEN,
            "only the machine itself may report: from its address, or with its boot secret",
        )
        .for_machine(mac, None));
    }
    st.inventory.report(mac, &state, hostname.clone());
    st.inventory.flushed().await;
    tracing::info!(%mac, %state, hostname = %hostname.as_deref().unwrap_or("-"), "machine reported");
    Ok(tagged(
        Json(json!({ "mac": mac.to_string(), "state": state })),
        Some(mac),
        &format!("report: {state}"),
    ))
}
