//! The Redfish calls Kindling makes, typed: find the system, read its power state and boot
//! override, reset it, set a one-time PXE boot.
//!
//! Every call runs under the client's timeout (connect and whole request), so an unreachable
//! or hung BMC costs at most that; every failure is a [`BmcError`] naming the BMC, with its
//! HTTP status and the Redfish message when it sent one. Nothing here panics on what a BMC
//! sends: bodies are parsed into the few fields used, unknown fields ignored. HTTP is hyper's
//! client over rustls with ring.
//!
//! Authentication ([`Auth`]): a Redfish session where the BMC offers one (`auto`, the
//! default), else basic authentication. A session is one login (a BMC often takes a second
//! to check a password, and counts its logins) and then a token on every request; a client
//! kept between calls keeps its session, logs in again when the BMC has ended it (a 401 on
//! the token), and [`Bmc::logout`] ends it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{self as http, HeaderName, HeaderValue, Method, Request, Uri, header};
use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;
use serde_json::{Value, json};

/// How to reach and log in to one BMC.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://10.0.5.21` (or `http://` for an emulator); no path.
    pub url: String,
    /// The user for basic authentication.
    pub user: String,
    /// Its password.
    pub password: String,
    /// PEM certificates to trust for this BMC (its CA, or its self-signed certificate).
    pub ca_pem: Option<Vec<u8>>,
    /// Accept any certificate (lab BMCs): off by default, logged when on.
    pub insecure_tls: bool,
    /// The longest one call may take, connecting included.
    pub timeout: Duration,
    /// How to log in.
    pub auth: Auth,
}

/// `bmc.auth`: how Kindling logs in to a BMC.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// A session when the service root links a session collection, else basic.
    #[default]
    Auto,
    /// Basic authentication on every request.
    Basic,
    /// A session, or an error when the BMC offers none.
    Session,
}

/// How this client authenticates now.
#[derive(Debug, Clone, Default)]
enum Login {
    /// Not decided yet (no request made, or the session ended).
    #[default]
    Unknown,
    /// Basic authentication.
    Basic,
    /// A session: its token, and its URI to end it.
    Session {
        token: HeaderValue,
        location: Option<String>,
    },
}

/// A BMC's answer to what Kindling asked, or why there is none.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    /// No TCP connection or no answer within the timeout.
    #[error("BMC {bmc}: {what}")]
    Unreachable {
        /// The BMC's URL.
        bmc: String,
        /// What happened (timed out after N s, connection refused, ...).
        what: String,
    },
    /// The TLS handshake failed: the certificate is not trusted, or no TLS at all.
    #[error(
        "BMC {bmc}: TLS: {what}. Give its CA (or its own certificate) as bmc.ca_file, or for a lab BMC with a self-signed certificate set insecure_tls = true"
    )]
    Tls {
        /// The BMC's URL.
        bmc: String,
        /// The TLS error.
        what: String,
    },
    /// 401/403: wrong user or password, or a user without the privilege.
    #[error("BMC {bmc}: {method} {path}: HTTP {status}: the user or password is wrong, or the user may not do this{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Auth {
        /// The BMC's URL.
        bmc: String,
        /// The request.
        method: &'static str,
        /// Its path.
        path: String,
        /// 401 or 403.
        status: u16,
        /// The Redfish error message, if any.
        message: Option<String>,
    },
    /// Another error status.
    #[error("BMC {bmc}: {method} {path}: HTTP {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        /// The BMC's URL.
        bmc: String,
        /// The request.
        method: &'static str,
        /// Its path.
        path: String,
        /// The status.
        status: u16,
        /// The Redfish error message, if any.
        message: Option<String>,
    },
    /// A body that is not the JSON Redfish promises.
    #[error("BMC {bmc}: {path}: not a Redfish answer: {what}")]
    Invalid {
        /// The BMC's URL.
        bmc: String,
        /// The resource.
        path: String,
        /// What is wrong with it.
        what: String,
    },
    /// The BMC does not offer what was asked (no system, a reset type it does not allow).
    #[error("BMC {bmc}: {what}")]
    Unsupported {
        /// The BMC's URL.
        bmc: String,
        /// What it lacks.
        what: String,
    },
    /// The endpoint is unusable (bad URL, unreadable CA).
    #[error("BMC {bmc}: {what}")]
    Config {
        /// The BMC's URL.
        bmc: String,
        /// What is wrong.
        what: String,
    },
}

/// A system's power state as Redfish reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    /// `On`.
    On,
    /// `Off`.
    Off,
    /// `PoweringOn`.
    PoweringOn,
    /// `PoweringOff`.
    PoweringOff,
    /// Anything else (`Paused`, an OEM value), or none reported.
    Other(String),
}

impl PowerState {
    fn parse(s: Option<&str>) -> PowerState {
        match s {
            Some("On") => PowerState::On,
            Some("Off") => PowerState::Off,
            Some("PoweringOn") => PowerState::PoweringOn,
            Some("PoweringOff") => PowerState::PoweringOff,
            Some(other) => PowerState::Other(other.to_string()),
            None => PowerState::Other("unknown".into()),
        }
    }

    /// The name shown in the CLI and the API.
    pub fn as_str(&self) -> &str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::PoweringOn => "powering_on",
            PowerState::PoweringOff => "powering_off",
            PowerState::Other(s) => s,
        }
    }
}

/// What to do to a system's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Power on.
    On,
    /// Cut the power now.
    ForceOff,
    /// Ask the OS to shut down.
    GracefulShutdown,
    /// Reset now.
    ForceRestart,
}

impl PowerAction {
    /// The Redfish `ResetType`.
    pub fn reset_type(self) -> &'static str {
        match self {
            PowerAction::On => "On",
            PowerAction::ForceOff => "ForceOff",
            PowerAction::GracefulShutdown => "GracefulShutdown",
            PowerAction::ForceRestart => "ForceRestart",
        }
    }

    /// What else does the same where a BMC does not list this `ResetType` (older iLOs list
    /// `PushPowerButton` but not `On`; some list `ForceOn`; `PowerCycle` restarts).
    fn alternatives(self) -> &'static [&'static str] {
        match self {
            PowerAction::On => &["ForceOn", "PushPowerButton"],
            PowerAction::ForceOff => &[],
            PowerAction::GracefulShutdown => &[],
            PowerAction::ForceRestart => &["PowerCycle", "GracefulRestart"],
        }
    }
}

/// A system's one-time boot override.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct BootOverride {
    /// `BootSourceOverrideTarget` (`Pxe`, `Hdd`, `None`, ...).
    pub target: Option<String>,
    /// `BootSourceOverrideEnabled` (`Once`, `Continuous`, `Disabled`).
    pub enabled: Option<String>,
    /// `BootSourceOverrideMode` (`UEFI`, `Legacy`), when the system has one.
    pub mode: Option<String>,
    /// The targets the system allows, when it says.
    #[serde(skip)]
    pub allowed_targets: Vec<String>,
}

/// One `ComputerSystem`, the fields Kindling uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    /// Its `@odata.id`, e.g. `/redfish/v1/Systems/437XR1138R2`.
    pub path: String,
    /// Its power state.
    pub power: PowerState,
    /// Its boot override.
    pub boot: BootOverride,
    /// Where `ComputerSystem.Reset` is posted.
    pub reset_target: String,
    /// The `ResetType`s it allows (empty: it does not say).
    pub reset_types: Vec<String>,
    /// `Manufacturer`.
    pub manufacturer: Option<String>,
    /// `Model`.
    pub model: Option<String>,
    /// `SerialNumber`.
    pub serial: Option<String>,
}

#[derive(Deserialize)]
struct RawSystem {
    #[serde(rename = "@odata.id")]
    odata_id: Option<String>,
    #[serde(rename = "PowerState")]
    power_state: Option<String>,
    #[serde(rename = "Boot")]
    boot: Option<RawBoot>,
    #[serde(rename = "Actions")]
    actions: Option<RawActions>,
    #[serde(rename = "Manufacturer")]
    manufacturer: Option<String>,
    #[serde(rename = "Model")]
    model: Option<String>,
    #[serde(rename = "SerialNumber")]
    serial: Option<String>,
}

#[derive(Deserialize)]
struct RawBoot {
    #[serde(rename = "BootSourceOverrideTarget")]
    target: Option<String>,
    #[serde(rename = "BootSourceOverrideEnabled")]
    enabled: Option<String>,
    #[serde(rename = "BootSourceOverrideMode")]
    mode: Option<String>,
    #[serde(rename = "BootSourceOverrideTarget@Redfish.AllowableValues", default)]
    allowed: Vec<String>,
}

#[derive(Deserialize)]
struct RawActions {
    #[serde(rename = "#ComputerSystem.Reset")]
    reset: Option<RawReset>,
}

#[derive(Deserialize)]
struct RawReset {
    target: Option<String>,
    #[serde(rename = "ResetType@Redfish.AllowableValues", default)]
    allowed: Vec<String>,
}

#[derive(Deserialize)]
struct RawCollection {
    #[serde(rename = "Members", default)]
    members: Vec<RawLink>,
}

#[derive(Deserialize)]
struct RawLink {
    #[serde(rename = "@odata.id")]
    odata_id: String,
}

impl System {
    /// A `ComputerSystem` resource read from `path`.
    pub fn from_json(path: &str, body: &[u8]) -> Result<System, String> {
        let raw: RawSystem = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let path = raw
            .odata_id
            .unwrap_or_else(|| path.to_string())
            .trim_end_matches('/')
            .to_string();
        let (reset_target, reset_types) = match raw.actions.and_then(|a| a.reset) {
            Some(r) => (
                r.target
                    .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset")),
                r.allowed,
            ),
            None => (format!("{path}/Actions/ComputerSystem.Reset"), Vec::new()),
        };
        let boot = raw
            .boot
            .map_or_else(BootOverride::default, |b| BootOverride {
                target: b.target,
                enabled: b.enabled,
                mode: b.mode,
                allowed_targets: b.allowed,
            });
        Ok(System {
            path,
            power: PowerState::parse(raw.power_state.as_deref()),
            boot,
            reset_target,
            reset_types,
            manufacturer: raw.manufacturer,
            model: raw.model,
            serial: raw.serial,
        })
    }

    /// The `ResetType` to post for `action`: its own when the system allows it (or does not
    /// say), else an equivalent it allows.
    pub fn reset_type_for(&self, action: PowerAction) -> Option<&str> {
        let wanted = action.reset_type();
        if self.reset_types.is_empty() || self.reset_types.iter().any(|t| t == wanted) {
            return Some(wanted);
        }
        action
            .alternatives()
            .iter()
            .copied()
            .find(|alt| self.reset_types.iter().any(|t| t == alt))
    }

    /// The `PATCH` body that makes its next boot, once, from the network: UEFI mode where
    /// the system reports a mode (a BMC without one refuses the property).
    pub fn pxe_once_patch(&self) -> Value {
        let mut boot = json!({
            "BootSourceOverrideTarget": "Pxe",
            "BootSourceOverrideEnabled": "Once",
        });
        if self.boot.mode.is_some() {
            boot["BootSourceOverrideMode"] = json!("UEFI");
        }
        json!({ "Boot": boot })
    }
}

/// The system paths a `Systems` collection lists.
pub fn members(body: &[u8]) -> Result<Vec<String>, String> {
    let c: RawCollection = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(c.members.into_iter().map(|m| m.odata_id).collect())
}

/// The session collection a service root links (`Links.Sessions`), if any.
pub fn sessions_link(root: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(root).ok()?;
    v.pointer("/Links/Sessions/@odata.id")
        .and_then(Value::as_str)
        .filter(|p| p.starts_with('/'))
        .map(str::to_string)
}

/// The message of a Redfish error body (`error.message`, or its first extended info).
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let extended = e
        .get("@Message.ExtendedInfo")
        .and_then(|x| x.get(0))
        .and_then(|x| x.get("Message"))
        .and_then(Value::as_str);
    let message = e.get("message").and_then(Value::as_str);
    match (message, extended) {
        (Some(m), Some(x)) if m != x => Some(format!("{m} {x}")),
        (Some(m), _) => Some(m.to_string()),
        (None, Some(x)) => Some(x.to_string()),
        (None, None) => None,
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// How many times a read or a boot override the BMC failed with a 5xx is asked again.
const RETRIES: u32 = 2;
/// The wait before the first repetition; it doubles for each further one.
const RETRY_WAIT: Duration = Duration::from_millis(250);

/// A client of one BMC.
#[derive(Clone)]
pub struct Bmc {
    endpoint: Endpoint,
    /// `scheme://host:port` of the endpoint.
    base: String,
    /// `Basic …`, for basic authentication.
    basic: HeaderValue,
    /// The session or basic authentication in use (one login at a time).
    login: Arc<tokio::sync::Mutex<Login>>,
    http: Client<Https, Full<Bytes>>,
    /// Where each call's outcome and latency are counted.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl std::fmt::Debug for Bmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bmc")
            .field("url", &self.endpoint.url)
            .finish_non_exhaustive()
    }
}

impl Bmc {
    /// A client for `endpoint` (no request is made yet).
    pub fn new(endpoint: Endpoint) -> Result<Bmc, BmcError> {
        let bmc = endpoint.url.clone();
        let config = |what: String| BmcError::Config {
            bmc: bmc.clone(),
            what,
        };
        let uri: Uri = endpoint
            .url
            .parse()
            .map_err(|e| config(format!("not a URL: {e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(config(
                "not a URL: the URL must be https://host[:port]".into(),
            ));
        };
        if !matches!(scheme, "https" | "http") {
            return Err(config("the URL must be https://host[:port]".into()));
        }
        let base = format!("{scheme}://{authority}");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config(format!("TLS: {e}")))?;
        let tls = if endpoint.insecure_tls {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &endpoint.ca_pem {
                Some(pem) => {
                    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
                        .collect::<Result<_, _>>()
                        .map_err(|e| config(format!("ca_file: not PEM certificates: {e}")))?;
                    if certs.is_empty() {
                        return Err(config("ca_file: no certificate in it".into()));
                    }
                    for c in certs {
                        roots.add(c).map_err(|e| config(format!("ca_file: {e}")))?;
                    }
                }
                None => {
                    // The system's trusted CAs (a BMC with a certificate from the site's PKI).
                    for c in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(c);
                    }
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(endpoint.timeout));
        tcp.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        let secret = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", endpoint.user, endpoint.password));
        let mut basic = HeaderValue::from_str(&format!("Basic {secret}")).map_err(|_| {
            config("the user or password has characters a header cannot carry".into())
        })?;
        basic.set_sensitive(true);
        let login = match endpoint.auth {
            Auth::Basic => Login::Basic,
            Auth::Auto | Auth::Session => Login::Unknown,
        };
        Ok(Bmc {
            endpoint,
            base,
            basic,
            login: Arc::new(tokio::sync::Mutex::new(login)),
            http,
            metrics: None,
        })
    }

    /// Count every call's outcome and latency in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Bmc {
        self.metrics = Some(metrics);
        self
    }

    /// Whether a session is open now (else basic authentication, or not logged in yet).
    pub async fn has_session(&self) -> bool {
        matches!(*self.login.lock().await, Login::Session { .. })
    }

    /// End the session, if one is open (best effort: a BMC also ends idle sessions itself).
    pub async fn logout(&self) {
        let mut login = self.login.lock().await;
        if let Login::Session {
            token,
            location: Some(location),
        } = &*login
        {
            let path = self.path_of(location);
            let auth = (HeaderName::from_static("x-auth-token"), token.clone());
            if let Err(e) = self.call(Method::DELETE, &path, None, Some(auth)).await {
                tracing::debug!(bmc = %self.endpoint.url, error = %e, "ending the Redfish session failed");
            }
        }
        *login = match self.endpoint.auth {
            Auth::Basic => Login::Basic,
            Auth::Auto | Auth::Session => Login::Unknown,
        };
    }

    /// The path of `uri` on this BMC (a session's `Location` may be absolute).
    fn path_of(&self, uri: &str) -> String {
        match uri.strip_prefix(&self.base) {
            Some(rest) => rest.to_string(),
            None if uri.starts_with('/') => uri.to_string(),
            None => uri
                .parse::<Uri>()
                .ok()
                .map(|u| u.path().to_string())
                .unwrap_or_else(|| uri.to_string()),
        }
    }

    /// The header that authenticates a request now: the session's token (logging in first
    /// when none is open and the BMC offers sessions), else basic.
    async fn authorization(&self) -> Result<(HeaderName, HeaderValue), BmcError> {
        let mut login = self.login.lock().await;
        if let Login::Unknown = *login {
            *login = self.log_in().await?;
        }
        Ok(match &*login {
            Login::Session { token, .. } => {
                (HeaderName::from_static("x-auth-token"), token.clone())
            }
            _ => (header::AUTHORIZATION, self.basic.clone()),
        })
    }

    /// Open a session: the service root names the session collection (no authentication
    /// needed to read it); a `POST` of the user and password there answers the token.
    /// With `auth = "auto"`, a BMC without sessions (no link, or the login refused with
    /// 404/405/501) gets basic authentication instead.
    async fn log_in(&self) -> Result<Login, BmcError> {
        let auto = self.endpoint.auth == Auth::Auto;
        let root = match self.call(Method::GET, "/redfish/v1", None, None).await {
            Ok((_, body)) => body,
            Err(e @ (BmcError::Auth { .. } | BmcError::Status { .. })) if auto => {
                tracing::debug!(bmc = %self.endpoint.url, error = %e, "no readable service root: basic authentication");
                return Ok(Login::Basic);
            }
            Err(e) => return Err(e),
        };
        let sessions = sessions_link(&root);
        let Some(sessions) = sessions else {
            if auto {
                return Ok(Login::Basic);
            }
            return Err(BmcError::Unsupported {
                bmc: self.endpoint.url.clone(),
                what: "its service root links no session collection (Links.Sessions): set bmc.auth = \"basic\"".into(),
            });
        };
        let body = json!({ "UserName": self.endpoint.user, "Password": self.endpoint.password });
        match self
            .call(Method::POST, &sessions, Some(body.to_string()), None)
            .await
        {
            Ok((headers, _)) => {
                let Some(mut token) = headers.get("x-auth-token").cloned() else {
                    return Err(self.invalid(
                        &sessions,
                        "the login answered no X-Auth-Token header".into(),
                    ));
                };
                token.set_sensitive(true);
                let location = headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                tracing::debug!(bmc = %self.endpoint.url, "Redfish session opened");
                Ok(Login::Session { token, location })
            }
            Err(BmcError::Status { status, .. }) if auto && matches!(status, 404 | 405 | 501) => {
                Ok(Login::Basic)
            }
            Err(e) => Err(e),
        }
    }

    /// The BMC's URL, as configured.
    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    /// The system this BMC manages: the only member of `/redfish/v1/Systems` (a BMC that
    /// manages several is refused: say which one in the URL instead, e.g.
    /// `https://bmc/redfish/v1/Systems/2`).
    pub async fn system(&self) -> Result<System, BmcError> {
        let uri: Uri = self
            .endpoint
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| BmcError::Config {
                bmc: self.endpoint.url.clone(),
                what: e.to_string(),
            })?;
        let path = uri.path().trim_end_matches('/');
        let system_path = if path.starts_with("/redfish/v1/Systems/") {
            path.to_string()
        } else {
            let body = self.get("/redfish/v1/Systems").await?;
            let list = members(&body).map_err(|what| self.invalid("/redfish/v1/Systems", what))?;
            match list.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(BmcError::Unsupported {
                        bmc: self.endpoint.url.clone(),
                        what: "/redfish/v1/Systems lists no system".into(),
                    });
                }
                many => {
                    return Err(BmcError::Unsupported {
                        bmc: self.endpoint.url.clone(),
                        what: format!(
                            "it manages {} systems ({}): name one in the URL, e.g. {}{}",
                            many.len(),
                            many.join(", "),
                            self.base,
                            many[0]
                        ),
                    });
                }
            }
        };
        let body = self.get(&system_path).await?;
        System::from_json(&system_path, &body).map_err(|what| self.invalid(&system_path, what))
    }

    /// Power `system` with `action`; the `ResetType` it sent (an equivalent the system allows
    /// when it does not list `action`'s own).
    pub async fn power(&self, system: &System, action: PowerAction) -> Result<String, BmcError> {
        let Some(reset) = system.reset_type_for(action) else {
            return Err(BmcError::Unsupported {
                bmc: self.endpoint.url.clone(),
                what: format!(
                    "{} allows no {} reset (it allows {})",
                    system.path,
                    action.reset_type(),
                    system.reset_types.join(", ")
                ),
            });
        };
        self.send(
            Method::POST,
            &system.reset_target,
            &json!({ "ResetType": reset }),
        )
        .await?;
        Ok(reset.to_string())
    }

    /// Make `system`'s next boot, once, from the network.
    pub async fn pxe_once(&self, system: &System) -> Result<(), BmcError> {
        if !system.boot.allowed_targets.is_empty()
            && !system.boot.allowed_targets.iter().any(|t| t == "Pxe")
        {
            return Err(BmcError::Unsupported {
                bmc: self.endpoint.url.clone(),
                what: format!(
                    "{} cannot boot from Pxe (it allows {})",
                    system.path,
                    system.boot.allowed_targets.join(", ")
                ),
            });
        }
        self.send(Method::PATCH, &system.path, &system.pxe_once_patch())
            .await
    }

    fn invalid(&self, path: &str, what: String) -> BmcError {
        BmcError::Invalid {
            bmc: self.endpoint.url.clone(),
            path: path.to_string(),
            what,
        }
    }

    async fn get(&self, path: &str) -> Result<Vec<u8>, BmcError> {
        self.exchange(Method::GET, path, None).await
    }

    /// One request, asked again up to [`RETRIES`] times when the BMC answers that it is busy
    /// or failed inside (HTTP 500, 502, 503, 504: BMCs say so while they reboot or under
    /// load, and emulators when their state store is locked). Only reads and the boot
    /// override (a `PATCH` that sets values, so asking twice does what asking once does) are
    /// asked again; a reset is not, as a reset the BMC carried out before failing to answer
    /// would be done twice.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, BmcError> {
        let repeatable = method == Method::GET || method == Method::PATCH;
        let mut attempt = 0;
        loop {
            match self.exchange_once(method.clone(), path, body.clone()).await {
                Err(BmcError::Status { status, .. })
                    if repeatable
                        && attempt < RETRIES
                        && matches!(status, 500 | 502 | 503 | 504) =>
                {
                    attempt += 1;
                    let wait = RETRY_WAIT * 2u32.pow(attempt - 1);
                    tracing::debug!(bmc = %self.endpoint.url, path, status, attempt, "the BMC failed the request: asking again in {} ms", wait.as_millis());
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// One authenticated request: a session the BMC has ended (401 on its token) is opened
    /// again once and the request repeated.
    async fn exchange_once(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, BmcError> {
        let auth = self.authorization().await?;
        let with_token = auth.0 != header::AUTHORIZATION;
        match self
            .call(method.clone(), path, body.clone(), Some(auth.clone()))
            .await
        {
            Err(BmcError::Auth { status: 401, .. }) if with_token => {
                {
                    let mut login = self.login.lock().await;
                    // Another call may have logged in again meanwhile.
                    if matches!(&*login, Login::Session { token, .. } if *token == auth.1) {
                        *login = Login::Unknown;
                    }
                }
                tracing::debug!(bmc = %self.endpoint.url, "the Redfish session ended: logging in again");
                let auth = self.authorization().await?;
                self.call(method, path, body, Some(auth))
                    .await
                    .map(|(_, b)| b)
            }
            other => other.map(|(_, b)| b),
        }
    }

    async fn send(&self, method: Method, path: &str, body: &Value) -> Result<(), BmcError> {
        self.exchange(method, path, Some(body.to_string()))
            .await
            .map(|_| ())
    }

    /// One request (authenticated with `auth`, if given) and its whole answer, within the
    /// endpoint's timeout; counted in the metrics.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        auth: Option<(HeaderName, HeaderValue)>,
    ) -> Result<(http::HeaderMap, Vec<u8>), BmcError> {
        let started = std::time::Instant::now();
        let name = method_name(&method);
        let got = self.call_once(method, path, body, auth).await;
        if let Some(m) = &self.metrics {
            let outcome = match &got {
                Ok(_) => "ok",
                Err(BmcError::Auth { .. }) => "auth",
                Err(BmcError::Status { .. }) => "status",
                Err(BmcError::Tls { .. }) => "tls",
                Err(BmcError::Invalid { .. }) => "invalid",
                Err(BmcError::Unreachable { .. }) => "unreachable",
                Err(BmcError::Unsupported { .. } | BmcError::Config { .. }) => "refused",
            };
            m.bmc_call(name, outcome, started.elapsed());
        }
        got
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        auth: Option<(HeaderName, HeaderValue)>,
    ) -> Result<(http::HeaderMap, Vec<u8>), BmcError> {
        let bmc = self.endpoint.url.clone();
        let name = method_name(&method);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("kindling/", env!("CARGO_PKG_VERSION")),
            );
        if let Some((name, value)) = auth {
            req = req.header(name, value);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| BmcError::Config {
                bmc: bmc.clone(),
                what: format!("{path}: {e}"),
            })?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| self.transport(&e))?;
            let status = resp.status();
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| self.transport(&e))?
                .to_bytes();
            Ok::<_, BmcError>((status, parts.headers, body))
        };
        let (status, headers, body) = tokio::time::timeout(self.endpoint.timeout, exchange)
            .await
            .map_err(|_| BmcError::Unreachable {
                bmc: bmc.clone(),
                what: format!("no answer within {} s", self.endpoint.timeout.as_secs_f64()),
            })??;
        if status.is_success() {
            return Ok((headers, body.to_vec()));
        }
        let message = error_message(&body);
        let path = path.to_string();
        let status = status.as_u16();
        Err(if status == 401 || status == 403 {
            BmcError::Auth {
                bmc,
                method: name,
                path,
                status,
                message,
            }
        } else {
            BmcError::Status {
                bmc,
                method: name,
                path,
                status,
                message,
            }
        })
    }

    fn transport(&self, e: &(dyn std::error::Error + 'static)) -> BmcError {
        let bmc = self.endpoint.url.clone();
        // The whole chain: the outer errors say little ("client error (Connect)").
        let mut chain = Vec::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            chain.push(err.to_string());
            cur = err.source();
        }
        chain.dedup();
        let text = chain.join(": ");
        let lower = text.to_ascii_lowercase();
        if lower.contains("timed out") {
            return BmcError::Unreachable {
                bmc,
                what: format!("no answer within {} s", self.endpoint.timeout.as_secs_f64()),
            };
        }
        if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake")
            || lower.contains("invalidcontenttype")
            || lower.contains("corrupt message")
        {
            return BmcError::Tls { bmc, what: text };
        }
        BmcError::Unreachable { bmc, what: text }
    }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "request",
    }
}

/// `insecure_tls = true`: any certificate is accepted (signatures are still checked, so the
/// handshake is whole; only who signed the certificate is not).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
