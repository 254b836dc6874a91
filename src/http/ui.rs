//! The dashboard at `/ui`: one page, its script and its style sheet, embedded in the binary
//! (`ui/` at the top of the repository), so it works on a provisioning LAN with no internet
//! and no other web server. Everything it shows comes from the API; it holds the operator's
//! token in `sessionStorage` only.
//!
//! Safe by construction: the script sets every value from machines as text, and the
//! Content-Security-Policy allows no inline script, no inline style sheet and no other origin.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::{HttpError, HttpState, Outcome};

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// What the page may load and do: its own script, style sheet and API, nothing else.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/", get(root))
        .route(
            "/ui",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route(
            "/ui/app.js",
            get(|| async { page(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
}

/// `/`: a browser is sent to the dashboard; anything else gets the usual 404.
async fn root(headers: HeaderMap) -> Response {
    let html = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"));
    if html {
        Redirect::to("/ui").into_response()
    } else {
        HttpError::new(
            StatusCode::NOT_FOUND,
            "no such endpoint: the dashboard is at /ui, the API at /api/v1",
        )
        .into_response()
    }
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change only with the binary; revalidation is cheap and never serves a stale
    // script after an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp.extensions_mut().insert(Outcome {
        served: "ui".into(),
        ..Default::default()
    });
    resp
}
