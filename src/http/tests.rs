//! The router driven with `oneshot`: no socket, real handlers.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

use super::*;
use crate::profiles::{ProfileSet, Sources};
use crate::testkit::Rng;
use serde_json::json;

struct Fixture {
    dir: tempfile::TempDir,
    state: HttpState,
}

fn fixture() -> Fixture {
    // Matchbox's open access: these tests are about what each endpoint answers; the secure
    // defaults have tests of their own (secure_fixture).
    fixture_with("[http]\nconfig_access = \"open\"\n", "")
}

/// The fixture with `config` before its `[paths]` and `boot_args` in the node profile's boot
/// section.
fn fixture_with(config: &str, boot_args: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "profiles/node.toml",
        &format!(
            "ignition = \"n.ign.j2\"\nafter_provision = \"local\"\n[generic]\nuser-data = \"ud.j2\"\n[boot]\nkernel = \"os/vmlinuz\"\n\
             {boot_args}\n[[machine]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"n1\"\n"
        ),
    );
    write(
        "profiles/n.ign.j2",
        "{\"ignition\": {\"version\": \"3.4.0\"}}",
    );
    write(
        "profiles/ud.j2",
        "#cloud-config\nhostname: {{ hostname }}\n",
    );
    // Valid at load time (no machine asks for os=broken then), invalid when one does.
    write(
        "profiles/broken.toml",
        "ignition = \"b.ign.j2\"\n[boot]\nkernel = \"k\"\n[[select]]\nmac_prefix = \"52:54:99\"\n",
    );
    write(
        "profiles/b.ign.j2",
        "{\"ignition\": {\"version\": \"{{ '2.2.0' if query.os is defined and query.os == 'old' else '3.4.0' }}\"}}",
    );
    write("assets/os/vmlinuz", &"0123456789".repeat(100));
    write("secret.txt", "do not serve");
    write("ipxe-bin/ipxe.efi", "MZ fake efi");
    let config = crate::config::Config::parse(
        &root.join("kindling.toml"),
        &format!("{config}[paths]\nipxe_binaries = \"ipxe-bin\"\n"),
    )
    .unwrap();
    let sources = Sources {
        profiles: root.join("profiles"),
        scripts: Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe"),
    };
    let base = "http://10.0.0.2:8080".to_string();
    let set = ProfileSet::load(&sources, &base).unwrap_or_else(|e| panic!("{e}"));
    let bus = crate::events::Bus::new();
    let live = Arc::new(Live::new(sources, base.clone(), set, bus.clone()));
    let inventory = Arc::new(Inventory::with_bus(Default::default(), None, bus));
    // As in the daemon: the inventory follows the profiles (declared machines, adoptions).
    let shutdown = tokio_util::sync::CancellationToken::new();
    inventory.sync_profiles(&live.current());
    tokio::spawn(
        inventory
            .clone()
            .run_profile_sync(live.clone(), shutdown.clone()),
    );
    let metrics = crate::metrics::Metrics::new();
    let power = Arc::new(crate::power::Power::new(
        config.bmc.clone(),
        live.clone(),
        inventory.clone(),
        metrics.clone(),
    ));
    let state = HttpState::from(crate::http::HttpShared {
        power,
        config: Arc::new(config),
        base_url: base.clone().into(),
        profiles: live,
        inventory,
        metrics,
        waker: None,
        health: Default::default(),
        api_token: Some("s3cret".into()),
        shutdown,
        cluster: None,
    });
    Fixture { dir, state }
}

async fn get(f: &Fixture, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    request(f, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn request(f: &Fixture, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = router(f.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn boot_ipxe_chains_to_ipxe_with_every_fact() {
    let f = fixture();
    let (status, _, body) = get(&f, "/boot.ipxe").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("#!ipxe\n"), "{body}");
    for fact in [
        "mac=${mac:hexhyp}",
        "uuid=${uuid}",
        "arch=${buildarch}",
        "platform=${platform}",
        "hostname=",
        "serial=",
        "manufacturer=",
        "product=",
        "memory=",
    ] {
        assert!(body.contains(fact), "missing {fact} in {body}");
    }
    assert!(
        body.contains("chain --autofree http://10.0.0.2:8080/ipxe?"),
        "{body}"
    );
}

#[tokio::test]
async fn ipxe_script_per_mac_in_any_spelling() {
    let f = fixture();
    for mac in [
        "52:54:00:00:00:01",
        "52-54-00-00-00-01",
        "52-54-00-00-00-01".to_uppercase().as_str(),
    ] {
        let (status, headers, body) = get(&f, &format!("/ipxe?mac={mac}&arch=x86_64")).await;
        assert_eq!(status, StatusCode::OK, "{mac}: {body}");
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert!(
            body.contains("kernel http://10.0.0.2:8080/assets/os/vmlinuz"),
            "{body}"
        );
        assert!(body.contains("(n1)"), "{body}");
    }
    let rec = f
        .state
        .inventory
        .get("52:54:00:00:00:01".parse().unwrap())
        .unwrap();
    assert_eq!(rec.arch.as_deref(), Some("x86_64"));
    assert_eq!(rec.last_served.as_deref(), Some("ipxe"));
}

#[tokio::test]
async fn ignition_metadata_generic() {
    let f = fixture();
    let (status, headers, body) = get(&f, "/ignition?mac=52:54:00:00:00:01").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/vnd.coreos.ignition+json"
    );
    serde_json::from_str::<serde_json::Value>(&body).unwrap();
    let (status, _, body) = get(&f, "/metadata?mac=52:54:00:00:00:01").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("HOSTNAME=n1\n") && body.contains("PROFILE=node\n"),
        "{body}"
    );
    let (status, _, body) = get(&f, "/generic?mac=52:54:00:00:00:01").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "#cloud-config\nhostname: n1")
    );
    let (status, _, body) = get(&f, "/generic/user-data?mac=52:54:00:00:00:01").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "#cloud-config\nhostname: n1")
    );
    let (status, _, body) = get(&f, "/generic/nope?mac=52:54:00:00:00:01").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn unknown_machine_and_malformed_queries() {
    let f = fixture();
    let (status, _, body) = get(&f, "/ipxe?mac=52:54:00:00:00:02").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body.contains("no profile for machine 52:54:00:00:00:02 and no default profile"),
        "{body}"
    );
    for bad in [
        "/ipxe",
        "/ipxe?mac=",
        "/ipxe?mac=zz:zz",
        "/ignition?uuid=1",
        "/metadata?mac=52:54:00:00:00",
        "/ipxe?mac=%FF%FE",
    ] {
        let (status, _, body) = get(&f, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body.starts_with("kindling: "), "{body}");
    }
    let (status, _, _) = get(&f, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let req = Request::post("/ipxe?mac=52:54:00:00:00:01")
        .body(Body::empty())
        .unwrap();
    assert_eq!(request(&f, req).await.0, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn invalid_ignition_at_request_time_is_a_500_not_a_broken_config() {
    let f = fixture();
    let (status, _, body) = get(&f, "/ignition?mac=52:54:99:00:00:01").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, headers, body) = get(&f, "/ignition?mac=52:54:99:00:00:01&os=old").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert!(
        body.contains("rendered Ignition config is invalid") && body.contains("2.2.0"),
        "{body}"
    );
    assert!(
        !body.contains("\"ignition\""),
        "no config in the error: {body}"
    );
}

#[tokio::test]
async fn assets_range_head_etag_and_no_traversal() {
    let f = fixture();
    let req = Request::get("/assets/os/vmlinuz")
        .header(header::RANGE, "bytes=10-19")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = request(&f, req).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, "0123456789");
    assert_eq!(headers[header::CONTENT_RANGE], "bytes 10-19/1000");
    let req = Request::head("/assets/os/vmlinuz")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = request(&f, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_LENGTH], "1000");
    assert!(body.is_empty());
    let etag = headers[header::ETAG].clone();
    assert!(headers.contains_key(header::LAST_MODIFIED));
    let req = Request::get("/assets/os/vmlinuz")
        .header(header::IF_NONE_MATCH, etag)
        .body(Body::empty())
        .unwrap();
    assert_eq!(request(&f, req).await.0, StatusCode::NOT_MODIFIED);
    for bad in [
        "/assets/../secret.txt",
        "/assets/%2e%2e/secret.txt",
        "/assets/os/../../secret.txt",
        "/assets/..%2fsecret.txt",
        "/assets//etc/passwd",
    ] {
        let (status, _, body) = get(&f, bad).await;
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
            "{bad}: {status}"
        );
        assert!(!body.contains("do not serve"), "{bad} escaped");
    }
}

#[tokio::test]
async fn ipxe_binaries_over_http_for_uefi_http_boot() {
    let f = fixture();
    let (status, _, body) = get(&f, "/boot/ipxe.efi").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "MZ fake efi"));
    let (status, _, body) = get(&f, "/boot/../secret.txt").await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
        "{status}"
    );
    assert!(!body.contains("do not serve"));
}

#[tokio::test]
async fn healthz_reports_reload_state() {
    let f = fixture();
    let (status, _, body) = get(&f, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["profiles"]["profiles"], 2);
    assert_eq!(v["profiles"]["last_error"], serde_json::Value::Null);
}

#[tokio::test]
async fn the_booted_os_reports_in_and_the_record_says_provisioned() {
    let f = fixture();
    let req = Request::post("/api/v1/report?mac=52-54-00-00-00-01")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("state=provisioned&hostname=node-1"))
        .unwrap();
    let (status, _, body) = request(&f, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = get(&f, "/api/v1/machines/52:54:00:00:00:01").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "provisioned");
    // The profile's hostname wins over what the OS says it is.
    assert_eq!(v["hostname"], "n1");
    assert_eq!(v["reported"], "provisioned");
    assert!(v["provisioned_at"].as_str().unwrap().ends_with('Z'), "{v}");
    // Fields as query parameters; POST only (a page's <img> cannot report); bad input is a
    // 400, unknown machines a 404.
    let (status, _, _) = post(&f, "/api/v1/report?mac=52:54:00:00:00:02&state=installing").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&f, "/api/v1/report?mac=52:54:00:00:00:02&state=installing").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    for bad in [
        "/api/v1/report",
        "/api/v1/report?mac=zz",
        "/api/v1/report?mac=52:54:00:00:00:02&state=a%20b",
        "/api/v1/report?mac=52:54:00:00:00:02&hostname=%2Fetc",
    ] {
        assert_eq!(post(&f, bad).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        get(&f, "/api/v1/machines/52:54:00:00:00:99").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn wake_needs_the_bearer_token_and_a_configured_interface() {
    let f = fixture();
    let post = |auth: Option<&str>| {
        let mut r = Request::post("/api/v1/machines/52:54:00:00:00:01/wake");
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        r.body(Body::empty()).unwrap()
    };
    assert_eq!(request(&f, post(None)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        request(&f, post(Some("Bearer wrong"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        request(&f, post(Some("s3cret"))).await.0,
        StatusCode::UNAUTHORIZED,
        "the Bearer scheme is required"
    );
    let (status, _, body) = request(&f, post(Some("Bearer s3cret"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "no [wol] interface: {body}");
    // Without a configured token, mutating calls are off altogether.
    let mut f = f;
    f.state.api_token = None;
    assert_eq!(
        request(&f, post(Some("Bearer s3cret"))).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn metrics_are_openmetrics_text() {
    let f = fixture();
    f.state.metrics.dhcp("discover", "offer");
    let (status, headers, body) = get(&f, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], crate::metrics::CONTENT_TYPE);
    assert!(
        body.contains("kindling_dhcp_messages_total{type=\"discover\",outcome=\"offer\"} 1"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));
}

/// A tiny deterministic PRNG (xorshift64*), so the random tests replay exactly.

#[tokio::test]
async fn random_paths_and_queries_never_panic_or_500() {
    let f = fixture();
    let app = router(f.state.clone());
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let pieces = [
        "mac=",
        "52:54:00:00:00:01",
        "52-54-00-00-00-01",
        "&",
        "=",
        "%",
        "%00",
        "%ff",
        "%2e%2e",
        "/",
        "..",
        "uuid=",
        "arch=",
        "x86_64",
        "os=old",
        "?",
        "#",
        "+",
        ";",
        "\u{e9}",
        "zz",
        "mac=52:54:99:00:00:01",
        "name=",
        "generic",
    ];
    let paths = [
        "/ipxe",
        "/ignition",
        "/metadata",
        "/generic",
        "/generic/user-data",
        "/boot.ipxe",
        "/assets/",
        "/healthz",
        "/",
        "/api/v1/machines",
        "/api/v1/machines/52:54:00:00:00:01",
        "/api/v1/report",
        "/api/v1/nope",
    ];
    for _ in 0..3000 {
        let mut q = String::new();
        for _ in 0..rng.below(8) {
            q.push_str(pieces[rng.below(pieces.len())]);
        }
        let uri = format!("{}?{}", paths[rng.below(paths.len())], q);
        // Anything the URI parser rejects never reaches the router.
        let Ok(req) = Request::get(uri.as_str()).body(Body::empty()) else {
            continue;
        };
        let resp = app.clone().oneshot(req).await.unwrap();
        let s = resp.status();
        // The only 500 the fixture can produce is the deliberate os=old invalid Ignition.
        assert!(
            s.is_success() || s.is_client_error() || s.is_redirection() || uri.contains("os=old"),
            "{uri}: {s}"
        );
    }
    // Odd bodies to every mutating API call, with the token: JSON errors, never a 500.
    let bodies = [
        "",
        "{",
        "[]",
        "null",
        "{\"boot\": 1}",
        "{\"profile\": \"node\", \"ip\": \"::1\"}",
        "{\"macs\": [\"zz\"]}",
        "{\"profile\": \"node\", \"hostname\": \"a b\"}",
        "\u{0}\u{ff}",
    ];
    let calls = [
        ("PUT", "/api/v1/machines/52:54:00:00:00:01/next-boot"),
        ("POST", "/api/v1/machines/52:54:00:00:00:09/adopt"),
        ("POST", "/api/v1/wake"),
        ("POST", "/api/v1/machines/zz/reinstall"),
    ];
    for (method, uri) in calls {
        for b in bodies {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .header(header::AUTHORIZATION, "Bearer s3cret")
                .body(Body::from(b))
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let s = resp.status();
            assert!(s.is_client_error(), "{method} {uri} {b:?}: {s}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        }
    }
}

// ---- the REST API ---------------------------------------------------------------------------

const N1: &str = "52:54:00:00:00:01";

/// A request from a machine at `ip` (what `into_make_service_with_connect_info` adds).
fn from_ip(mut req: Request<Body>, ip: [u8; 4]) -> Request<Body> {
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((ip, 40_000))));
    req
}

/// A form POST with no body.
async fn post(f: &Fixture, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    request(f, Request::post(uri).body(Body::empty()).unwrap()).await
}

async fn post_from(f: &Fixture, uri: &str, ip: [u8; 4]) -> (StatusCode, String) {
    let (status, _, body) = request(
        f,
        from_ip(Request::post(uri).body(Body::empty()).unwrap(), ip),
    )
    .await;
    (status, body)
}

async fn get_from(f: &Fixture, uri: &str, ip: [u8; 4]) -> (StatusCode, String) {
    let (status, _, body) = request(
        f,
        from_ip(Request::get(uri).body(Body::empty()).unwrap(), ip),
    )
    .await;
    (status, body)
}

async fn api(
    f: &Fixture,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut r = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            r = r.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let (status, headers, text) = request(f, r.body(body).unwrap()).await;
    if !text.is_empty() {
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "application/json",
            "{uri}: {text}"
        );
    }
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, v)
}

async fn state_of(f: &Fixture, mac: &str) -> String {
    let (status, v) = api(f, "GET", &format!("/api/v1/machines/{mac}"), None, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["state"].as_str().unwrap().to_string()
}

/// iPXE script, kernel, Ignition, report: what a machine at 10.0.0.50 does to install.
async fn walk_boot_path(f: &Fixture, mac: &str) -> Vec<String> {
    let ip = [10, 0, 0, 50];
    let mut states = vec![state_of(f, mac).await];
    let (status, body) = get_from(f, &format!("/ipxe?mac={mac}&arch=x86_64"), ip).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("kernel http://"), "{body}");
    states.push(state_of(f, mac).await);
    // The kernel fetch carries no MAC: the client's address says who it is.
    let (status, _) = get_from(f, "/assets/os/vmlinuz", ip).await;
    assert_eq!(status, StatusCode::OK);
    states.push(state_of(f, mac).await);
    let (status, _) = get_from(f, &format!("/ignition?mac={mac}"), ip).await;
    assert_eq!(status, StatusCode::OK);
    states.push(state_of(f, mac).await);
    let (status, _) = post_from(f, &format!("/api/v1/report?mac={mac}"), ip).await;
    assert_eq!(status, StatusCode::OK);
    states.push(state_of(f, mac).await);
    states
}

#[tokio::test]
async fn the_api_follows_a_machine_along_the_http_boot_path() {
    let f = fixture();
    let (status, v) = api(&f, "GET", "/api/v1/machines", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v["count"], 1,
        "the declared machine is listed before it boots: {v}"
    );
    assert_eq!(v["machines"][0]["hostname"], "n1");
    assert_eq!(
        walk_boot_path(&f, N1).await,
        ["unknown", "ipxe", "kernel", "config", "provisioned"]
    );
    let (_, v) = api(
        &f,
        "GET",
        "/api/v1/machines?state=provisioned&profile=node",
        None,
        None,
    )
    .await;
    assert_eq!(v["count"], 1);
    let (_, v) = api(&f, "GET", "/api/v1/machines?state=kernel", None, None).await;
    assert_eq!(v["count"], 0);
    let (_, m) = api(&f, "GET", &format!("/api/v1/machines/{N1}"), None, None).await;
    assert_eq!(m["ip"], "10.0.0.50");
    let transitions: Vec<&str> = m["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h.get("from").is_some())
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(transitions, ["ipxe", "kernel", "config", "provisioned"]);
    for s in ["ipxe", "kernel", "config", "provisioned"] {
        assert!(m["entered"][s].is_string(), "{m}");
    }
    // Errors are JSON with a message.
    let (status, v) = api(&f, "GET", "/api/v1/machines?state=booting", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("provisioned"), "{v}");
    let (status, v) = api(&f, "GET", "/api/v1/machines?colour=red", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = api(&f, "GET", "/api/v1/nope", None, None).await;
    assert_eq!(
        (status, v["status"].as_u64()),
        (StatusCode::NOT_FOUND, Some(404))
    );
    let (status, v) = api(&f, "GET", "/api/v1/machines/zz", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    // Requests are counted by route.
    let (_, _, metrics) = get(&f, "/metrics").await;
    assert!(
        metrics.contains("kindling_http_requests_total{endpoint=\"/ipxe\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kindling_http_requests_total{endpoint=\"/assets\",status=\"200\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn reinstall_serves_the_install_once_then_local_boot() {
    let f = fixture();
    walk_boot_path(&f, N1).await;
    let ipxe = format!("/ipxe?mac={N1}");
    // Provisioned, with after_provision = "local": no install loop.
    let (_, body) = get_from(&f, &ipxe, [10, 0, 0, 50]).await;
    assert!(body.contains("\nexit"), "{body}");
    assert_eq!(state_of(&f, N1).await, "provisioned");
    let uri = format!("/api/v1/machines/{N1}/reinstall");
    let (status, v) = api(&f, "POST", &uri, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"].as_str().unwrap().contains("bearer"), "{v}");
    let (status, _) = api(&f, "POST", &uri, Some("wrong"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, v) = api(&f, "POST", &uri, Some("s3cret"), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["next_boot"]["boot"], "install");
    let (_, body) = get_from(&f, &ipxe, [10, 0, 0, 50]).await;
    assert!(
        body.contains("kernel http://10.0.0.2:8080/assets/os/vmlinuz"),
        "{body}"
    );
    assert_eq!(state_of(&f, N1).await, "ipxe");
    let (_, body) = get_from(&f, &ipxe, [10, 0, 0, 50]).await;
    assert!(body.contains("\nexit"), "once, then local again: {body}");
    let (_, m) = api(&f, "GET", &format!("/api/v1/machines/{N1}"), None, None).await;
    assert!(m["next_boot"].is_null(), "{m}");

    // A one-shot local boot for a machine that is not provisioned, then set and cleared.
    let nb = format!("/api/v1/machines/{N1}/next-boot");
    let bad = [
        json!({"boot": "profile", "profile": "nope"}),
        json!({"boot": "floppy"}),
        json!({"boot": "local", "extra": 1}),
    ];
    for b in bad {
        let (status, v) = api(&f, "PUT", &nb, Some("s3cret"), Some(b.clone())).await;
        assert!(status.is_client_error(), "{b}: {status} {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let (status, _) = api(&f, "PUT", &nb, None, Some(json!({"boot": "local"}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, v) = api(
        &f,
        "PUT",
        &nb,
        Some("s3cret"),
        Some(json!({"boot": "profile", "profile": "broken"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // Another profile once: its script, then its config too (not the selected profile's:
    // with os=old only `broken` renders an invalid config).
    let (_, body) = get_from(&f, &ipxe, [10, 0, 0, 50]).await;
    assert!(body.contains("profile broken"), "{body}");
    assert!(
        body.contains("kernel http://10.0.0.2:8080/assets/k"),
        "{body}"
    );
    let (status, _, ign) = get(&f, &format!("/ignition?mac={N1}&os=old")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{ign}");
    assert!(ign.contains("profile \"broken\""), "{ign}");
    let (_, m) = api(&f, "GET", &format!("/api/v1/machines/{N1}"), None, None).await;
    assert_eq!(m["booting_profile"], "broken", "{m}");
    assert!(m["next_boot"].is_null(), "used up: {m}");
    let (status, v) = api(
        &f,
        "PUT",
        &nb,
        Some("s3cret"),
        Some(json!({"boot": "local"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = api(&f, "DELETE", &nb, Some("s3cret"), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["next_boot"].is_null());
}

/// Many `/ipxe` requests of one machine at once, right after a reinstall: exactly one gets the
/// install, the others its disk; the reinstall is used up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_one_shot_next_boot_is_served_exactly_once_when_requests_race() {
    let f = fixture();
    walk_boot_path(&f, N1).await;
    let ipxe = format!("/ipxe?mac={N1}");
    for round in 0..20 {
        let uri = format!("/api/v1/machines/{N1}/reinstall");
        let (status, v) = api(&f, "POST", &uri, Some("s3cret"), None).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let racing: Vec<_> = (0..8)
            .map(|_| {
                let (app, uri) = (router(f.state.clone()), ipxe.clone());
                tokio::spawn(async move {
                    let req = from_ip(
                        Request::get(uri.as_str()).body(Body::empty()).unwrap(),
                        [10, 0, 0, 50],
                    );
                    let resp = app.oneshot(req).await.unwrap();
                    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                        .await
                        .unwrap();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
            })
            .collect();
        let mut installs = 0;
        for r in racing {
            let body = r.await.unwrap();
            if body.contains("kernel http://10.0.0.2:8080/assets/os/vmlinuz") {
                installs += 1;
            } else {
                assert!(body.contains("\nexit"), "{body}");
            }
        }
        assert_eq!(
            installs, 1,
            "round {round}: the install was served {installs} times"
        );
        let (_, m) = api(&f, "GET", &format!("/api/v1/machines/{N1}"), None, None).await;
        assert!(m["next_boot"].is_null(), "{m}");
        // The OS of the one that installed reports in again.
        let (status, _, _) = post(&f, &format!("/api/v1/report?mac={N1}")).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_discovered_machine_is_adopted_into_a_profile_file() {
    let f = fixture();
    let m7 = "52:54:00:00:00:77";
    let (status, body) = get_from(
        &f,
        &format!("/ipxe?mac={m7}&uuid=8a0d4f4e-0000-4000-8000-000000000077"),
        [10, 0, 0, 77],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("adopt"), "{body}");
    let (_, v) = api(&f, "GET", "/api/v1/machines?state=discovered", None, None).await;
    assert_eq!(v["count"], 1, "{v}");
    let uri = format!("/api/v1/machines/{m7}/adopt");
    let adoption =
        json!({"profile": "node", "hostname": "n7", "ip": "10.0.0.7", "labels": {"rack": "r2"}});
    let (status, _) = api(&f, "POST", &uri, None, Some(adoption.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, v) = api(&f, "POST", &uri, Some("s3cret"), Some(adoption.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let file = f.dir.path().join("profiles/node.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("ignition = "),
        "the operator's text stays first"
    );
    assert!(text.contains("# adopted through the API on "), "{text}");
    assert!(text.contains("[[machine]]\nmac = \"52:54:00:00:00:77\"\nhostname = \"n7\"\nip = \"10.0.0.7\"\n[machine.labels]\nrack = \"r2\"\n"), "{text}");
    // Served at once, and the record now belongs to the profile.
    let (status, body) = get_from(&f, &format!("/ipxe?mac={m7}"), [10, 0, 0, 77]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("(n7)"), "{body}");
    let (_, m) = api(&f, "GET", &format!("/api/v1/machines/{m7}"), None, None).await;
    assert_eq!(
        (m["profile"].as_str(), m["declared"].as_bool()),
        (Some("node"), Some(true)),
        "{m}"
    );
    assert_eq!(m["labels"]["rack"], "r2");
    // Twice is a conflict; an entry that breaks the profiles leaves the file as it was.
    let (status, _) = api(&f, "POST", &uri, Some("s3cret"), Some(adoption)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let clash = json!({"profile": "node", "ip": "10.0.0.7"});
    let (status, v) = api(
        &f,
        "POST",
        "/api/v1/machines/52:54:00:00:00:78/adopt",
        Some("s3cret"),
        Some(clash),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .contains("already assigned"),
        "{v}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    assert!(
        f.state.profiles.status().last_error.is_none(),
        "the good set was reloaded"
    );
    let (status, _) = api(
        &f,
        "POST",
        "/api/v1/machines/52:54:00:00:00:78/adopt",
        Some("s3cret"),
        Some(json!({"profile": "ghost"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn reads_can_require_the_token() {
    let mut f = fixture();
    let mut config = (*f.state.config).clone();
    config.api.read_requires_token = true;
    f.state.config = Arc::new(config);
    for uri in [
        "/api/v1/machines",
        "/api/v1/machines/52:54:00:00:00:01",
        "/api/v1/events",
    ] {
        let (status, _) = api(&f, "GET", uri, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let (status, _) = api(&f, "GET", "/api/v1/machines", Some("s3cret"), None).await;
    assert_eq!(status, StatusCode::OK);
    // The machine's own report and the description stay open.
    assert_eq!(
        post(&f, "/api/v1/report?mac=52:54:00:00:00:01&state=booting")
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(get(&f, "/api/v1/openapi.json").await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_openapi_description_matches_the_routes() {
    let f = fixture();
    let (status, headers, body) = get(&f, "/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let spec: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let documented: std::collections::BTreeSet<&str> = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let routed: std::collections::BTreeSet<&str> = api::PATHS.iter().copied().collect();
    assert_eq!(documented, routed);
    // Every documented operation answers something other than 404/405 on its route.
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let uri = path.replace("{mac}", N1);
            if uri.ends_with("/events") {
                // A stream that does not end; events_stream_transitions_in_order covers it.
                continue;
            }
            let (status, _, body) = request(
                &f,
                Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&uri)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED
                    && !(status == StatusCode::NOT_FOUND && body.contains("no such endpoint")),
                "{method} {uri}: {status}"
            );
        }
    }
}

#[tokio::test]
async fn events_stream_transitions_in_order() {
    use futures_util::StreamExt as _;
    let f = fixture();
    let resp = router(f.state.clone())
        .oneshot(Request::get("/api/v1/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    let walker = {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
            state: f.state.clone(),
        };
        tokio::spawn(async move {
            walk_boot_path(&f, N1).await;
        })
    };
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while text.matches("event: transition").count() < 4 {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("transitions within 10 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    walker.await.unwrap();
    assert!(text.starts_with("event: ready\n"), "{text}");
    let tos: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| v.get("to").and_then(|t| t.as_str()).map(str::to_string))
        .collect();
    assert_eq!(tos, ["ipxe", "kernel", "config", "provisioned"], "{text}");
    // Shutdown ends the stream, so the server can drain.
    f.state.shutdown.cancel();
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the event stream outlived shutdown");
}

// ---- the boot secret and the machine's own address (issue 12) -----------------------------

const MACHINE: [u8; 4] = [10, 0, 0, 50];
const STRANGER: [u8; 4] = [10, 0, 0, 99];

/// `access` as `http.config_access`, proxy DHCP on, and the node profile handing its machine
/// `ignition_url` and `report_url`. DHCP saw N1 at 10.0.0.50.
fn secure_fixture(access: &str) -> Fixture {
    let f = fixture_with(
        &format!(
            "[http]\nconfig_access = \"{access}\"\n[dhcp]\nmode = \"proxy\"\ninterfaces = [\"x0\"]\n"
        ),
        "args = [\"ignition.config.url={{ ignition_url }}\", \"kindling.report={{ report_url }}\"]",
    );
    let n1: MacAddr = N1.parse().unwrap();
    f.state.inventory.dhcp(
        n1,
        crate::inventory::DhcpSeen {
            event: "proxy_ack",
            client: crate::inventory::DhcpClient::Ipxe,
            profile: Some("node".into()),
            ip: Some(MACHINE.into()),
            vendor_class: None,
            guid: None,
            arch_code: None,
            hostname: None,
            leased: false,
        },
    );
    f
}

/// The boot secret in a served script.
fn secret_in(script: &str) -> String {
    let at = script.find("token=").expect("a token in the script") + 6;
    script[at..at + 32].to_string()
}

#[tokio::test]
async fn the_boot_script_goes_to_the_machine_and_its_secret_opens_its_configs() {
    let f = secure_fixture("token-or-source");
    let ipxe = format!("/ipxe?mac={N1}&arch=x86_64");
    // A stranger gets no script, and changes nothing of the machine.
    let (status, body) = get_from(&f, &ipxe, STRANGER).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let n1: MacAddr = N1.parse().unwrap();
    assert_eq!(f.state.inventory.get(n1).unwrap().arch, None);
    // The machine gets its script, with its secret in every URL it hands on.
    let (status, script) = get_from(&f, &ipxe, MACHINE).await;
    assert_eq!(status, StatusCode::OK, "{script}");
    let token = secret_in(&script);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    assert!(
        script.contains(&format!(
            "ignition.config.url=http://10.0.0.2:8080/ignition?mac={N1}&token={token}"
        )),
        "{script}"
    );
    assert!(script.contains(&format!("/api/v1/report?mac={N1}&token={token}")));
    // Its configs: with the secret from anywhere, from its address without; else 403.
    let ign = format!("/ignition?mac={N1}");
    assert_eq!(get_from(&f, &ign, STRANGER).await.0, StatusCode::FORBIDDEN);
    let with = format!("{ign}&token={token}");
    assert_eq!(get_from(&f, &with, STRANGER).await.0, StatusCode::OK);
    assert_eq!(get_from(&f, &ign, MACHINE).await.0, StatusCode::OK);
    let wrong = format!("/metadata?mac={N1}&token={}", "0".repeat(32));
    assert_eq!(
        get_from(&f, &wrong, STRANGER).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, meta) = get_from(&f, &format!("/metadata?mac={N1}&token={token}"), STRANGER).await;
    assert!(!meta.contains(&token), "metadata lists no secret: {meta}");
    // Nobody else reports it installed.
    let report = format!("/api/v1/report?mac={N1}");
    assert_eq!(
        post_from(&f, &report, STRANGER).await.0,
        StatusCode::FORBIDDEN
    );
    assert_ne!(state_of(&f, N1).await, "provisioned");
    let (status, body) = post_from(&f, &format!("{report}&token={token}"), STRANGER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(state_of(&f, N1).await, "provisioned");
    // The API never shows the secret.
    let (_, m) = api(&f, "GET", &format!("/api/v1/machines/{N1}"), None, None).await;
    assert!(!m.to_string().contains(&token), "{m}");
    // The next boot has a new secret; the old one opens nothing.
    let (_, again) = get_from(&f, &format!("/ipxe?mac={N1}"), MACHINE).await;
    assert!(again.contains("\nexit"), "provisioned: local disk: {again}");
    let (_, m) = api(
        &f,
        "PUT",
        &format!("/api/v1/machines/{N1}/next-boot"),
        Some("s3cret"),
        Some(json!({"boot": "install"})),
    )
    .await;
    assert_eq!(m["next_boot"]["boot"], "install");
    let (_, third) = get_from(&f, &format!("/ipxe?mac={N1}"), MACHINE).await;
    let newer = secret_in(&third);
    assert_ne!(newer, token);
    assert_eq!(get_from(&f, &with, STRANGER).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_strangers_boot_script_request_uses_up_no_reinstall() {
    let f = secure_fixture("token-or-source");
    let (_, v) = api(
        &f,
        "POST",
        &format!("/api/v1/machines/{N1}/reinstall"),
        Some("s3cret"),
        None,
    )
    .await;
    assert_eq!(v["next_boot"]["boot"], "install");
    let (status, _) = get_from(
        &f,
        &format!("/ipxe?mac={N1}&uuid={}", "1".repeat(32)),
        STRANGER,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, m) = api(&f, "GET", &format!("/api/v1/machines/{N1}"), None, None).await;
    assert_eq!(m["next_boot"]["boot"], "install", "{m}");
    assert!(m["uuid"].is_null(), "{m}");
}

#[tokio::test]
async fn token_access_wants_the_secret_even_from_the_machine() {
    let f = secure_fixture("token");
    let (status, script) = get_from(&f, &format!("/ipxe?mac={N1}"), MACHINE).await;
    assert_eq!(status, StatusCode::OK, "{script}");
    let token = secret_in(&script);
    let ign = format!("/ignition?mac={N1}");
    assert_eq!(get_from(&f, &ign, MACHINE).await.0, StatusCode::FORBIDDEN);
    let with = format!("{ign}&token={token}");
    assert_eq!(get_from(&f, &with, MACHINE).await.0, StatusCode::OK);
}

/// Without Kindling's DHCP, the first address that asks for a boot script binds the boot; other
/// addresses get nothing until the boot ends.
#[tokio::test]
async fn without_dhcp_the_first_address_binds_the_boot() {
    let f = fixture_with("", "args = [\"ignition.config.url={{ ignition_url }}\"]");
    let ipxe = format!("/ipxe?mac={N1}");
    assert_eq!(get_from(&f, &ipxe, [10, 0, 0, 7]).await.0, StatusCode::OK);
    assert_eq!(
        get_from(&f, &ipxe, [10, 0, 0, 8]).await.0,
        StatusCode::FORBIDDEN
    );
    let ign = format!("/ignition?mac={N1}");
    assert_eq!(get_from(&f, &ign, [10, 0, 0, 7]).await.0, StatusCode::OK);
    assert_eq!(
        get_from(&f, &ign, [10, 0, 0, 8]).await.0,
        StatusCode::FORBIDDEN
    );
}

/// GRUB's HTTP client HEADs its grub.cfg before the GET: the HEAD changes nothing (the
/// one-shot next boot stays, no boot begins) and tells the length the GET then has.
#[tokio::test]
async fn a_head_of_a_boot_script_changes_nothing_and_tells_the_get_length() {
    let f = fixture();
    walk_boot_path(&f, N1).await;
    let ip = [10, 0, 0, 50];
    let uri = format!("/api/v1/machines/{N1}/reinstall");
    let (status, _) = api(&f, "POST", &uri, Some("s3cret"), None).await;
    assert_eq!(status, StatusCode::OK);
    let head = |path: &str| {
        let req = Request::head(path).body(Body::empty()).unwrap();
        request(&f, from_ip(req, ip))
    };
    let machine = || api(&f, "GET", "/api/v1/machines/52:54:00:00:00:01", None, None);
    for path in [format!("/ipxe?mac={N1}"), "/grub/grub.cfg".to_string()] {
        let (status, headers, body) = head(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(body.is_empty(), "{path}");
        let length: usize = headers[header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let (_, m) = machine().await;
        assert_eq!(
            m["state"], "provisioned",
            "{path}: HEAD moved the state: {m}"
        );
        assert_eq!(
            m["next_boot"]["boot"], "install",
            "{path}: HEAD used it up: {m}"
        );
        let (status, body) = get_from(&f, &path, ip).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body.len(),
            length,
            "{path}: GET and HEAD lengths differ:\n{body}"
        );
        assert!(
            body.contains("assets/os/vmlinuz"),
            "{path}: the install: {body}"
        );
        let (_, m) = machine().await;
        assert!(m["next_boot"].is_null(), "{path}: the GET used it up: {m}");
        assert_eq!(m["state"], "ipxe", "{m}");
        // The rest of the install, then a reinstall for the next round.
        get_from(&f, "/assets/os/vmlinuz", ip).await;
        get_from(&f, &format!("/ignition?mac={N1}"), ip).await;
        post_from(&f, &format!("/api/v1/report?mac={N1}"), ip).await;
        assert_eq!(state_of(&f, N1).await, "provisioned");
        let (status, _) = api(&f, "POST", &uri, Some("s3cret"), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    // GRUB over HTTP boot fetches its kernel over HTTP.
    let (_, body) = get_from(&f, "/grub/grub.cfg", ip).await;
    assert!(
        body.contains("linux (http,10.0.0.2:8080)/assets/os/vmlinuz"),
        "{body}"
    );
    // A client whose address no machine has gets a reason.
    let (status, body) = get_from(&f, "/grub/grub.cfg", [10, 0, 0, 99]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no machine is known at 10.0.0.99"), "{body}");
}

/// Every request's handler future is moved into a box and through the middleware: kept small
/// (the shared store's claim, a large future, is boxed apart; it was 8.8 KiB with it inline).
#[tokio::test]
async fn the_document_handler_future_stays_small() {
    let f = fixture();
    let fut = machine_doc(
        State(f.state.clone()),
        PeerIp(None),
        Method::GET,
        RawQuery(None),
        What::Ipxe,
    );
    let size = std::mem::size_of_val(&fut);
    assert!(size <= 2048, "machine_doc's future is {size} bytes");
}

#[tokio::test]
async fn the_dashboard_is_embedded_with_a_content_security_policy() {
    let f = fixture();
    let (status, headers, body) = get(&f, "/ui").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("<script src=\"/ui/app.js\" defer></script>"),
        "{body}"
    );
    // No inline script or style anywhere in the page: the policy would block it.
    assert_eq!(body.matches("<script").count(), 1, "{body}");
    assert!(
        !body.contains("style=") && !body.contains("<style"),
        "{body}"
    );
    let handlers = body.split(" on").skip(1).filter(|rest| {
        let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    assert_eq!(handlers.count(), 0, "inline event handlers: {body}");
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let (status, headers, body) = get(&f, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
        assert!(body.len() > 1000, "{path}");
    }
    // The script never parses what it shows as HTML.
    let (_, _, script) = get(&f, "/ui/app.js").await;
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!script.contains(sink), "app.js uses {sink}");
    }
    // `/`: a browser goes to the dashboard, anything else gets a 404.
    let req = Request::get("/")
        .header(header::ACCEPT, "text/html,application/xhtml+xml")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = request(&f, req).await;
    assert!(status.is_redirection(), "{status}");
    assert_eq!(headers[header::LOCATION], "/ui");
    let (status, _, body) = get(&f, "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn the_status_shows_states_pools_and_the_last_reload_error() {
    let f = fixture();
    f.state.metrics.on_pools(|| {
        vec![crate::metrics::PoolUsage {
            subnet: "10.0.0.0/24".into(),
            size: 100,
            used: 3,
            free: 97,
        }]
    });
    let (status, v) = api(&f, "GET", "/api/v1/status", None, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["states"]["unknown"], 1, "{v}");
    assert_eq!(v["states"]["provisioned"], 0, "{v}");
    assert_eq!(v["machines"], 1, "{v}");
    assert_eq!(v["pools"][0]["free"], 97, "{v}");
    assert_eq!(v["stall_limits"]["kernel"], 600.0, "{v}");
    assert!(v["profiles"]["last_error"].is_null(), "{v}");
    let names: Vec<&str> = v["profile_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names, ["broken", "node"]);
    // The same pools in /metrics.
    let (_, _, metrics) = get(&f, "/metrics").await;
    assert!(
        metrics.contains("kindling_dhcp_pool_free{subnet=\"10.0.0.0/24\"} 97"),
        "{metrics}"
    );
    // A reload that fails is shown with its place until a good one.
    std::fs::write(f.dir.path().join("profiles/node.toml"), "ignition = [\n").unwrap();
    assert!(f.state.profiles.reload().is_err());
    let (_, v) = api(&f, "GET", "/api/v1/status", None, None).await;
    let err = v["profiles"]["last_error"][0].as_str().unwrap_or_default();
    assert!(err.contains("node.toml:"), "{v}");
}

#[tokio::test]
async fn a_preview_renders_what_the_machine_gets_and_changes_nothing() {
    let f = fixture();
    let uri = format!("/api/v1/machines/{N1}/preview");
    let (status, v) = api(&f, "GET", &uri, None, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["profile"], "node");
    let body = v["body"].as_str().unwrap();
    assert!(body.starts_with("#!ipxe"), "{body}");
    let (_, v) = api(&f, "GET", &format!("{uri}?what=ignition"), None, None).await;
    assert!(v["body"].as_str().unwrap().contains("3.4.0"), "{v}");
    let (status, v) = api(&f, "GET", &format!("{uri}?what=floppy"), None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    // A provisioned machine with a reinstall pending: the preview shows the install and
    // leaves the reinstall set, with no state change and no boot secret minted.
    let ign = "ignition.config.url={{ ignition_url }}";
    let g = fixture_with(
        "[http]\nconfig_access = \"open\"\n",
        &format!("args = [\"{ign}\"]"),
    );
    let (_, v) = api(&g, "GET", &uri, None, None).await;
    let body = v["body"].as_str().unwrap();
    assert!(
        body.contains(&format!("token={}", "0".repeat(32))),
        "the secret's place shows zeros: {body}"
    );
    walk_boot_path(&f, N1).await;
    let (_, v) = api(&f, "GET", &uri, None, None).await;
    assert!(v["body"].as_str().unwrap().contains("\nexit"), "{v}");
    let reinstall = format!("/api/v1/machines/{N1}/reinstall");
    api(&f, "POST", &reinstall, Some("s3cret"), None).await;
    let before = api(&f, "GET", &format!("/api/v1/machines/{N1}"), None, None)
        .await
        .1;
    for _ in 0..3 {
        let (_, v) = api(&f, "GET", &uri, None, None).await;
        assert!(
            v["body"]
                .as_str()
                .unwrap()
                .contains("kernel http://10.0.0.2:8080/assets/os/vmlinuz"),
            "{v}"
        );
        assert_eq!(v["uses_next_boot"], true, "{v}");
    }
    let after = api(&f, "GET", &format!("/api/v1/machines/{N1}"), None, None)
        .await
        .1;
    assert_eq!(before, after);
    assert_eq!(after["next_boot"]["boot"], "install");
    // An unknown machine with no default profile: the reason, not a panic.
    let (status, v) = api(
        &f,
        "GET",
        "/api/v1/machines/52:54:00:00:00:99/preview",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("adopt"), "{v}");
}

/// `[discovery]` on: a machine no profile knows is told to wait and ask again, shows as
/// `discovered` with its facts, and once adopted its next ask boots its profile.
#[tokio::test]
async fn a_discovered_machine_waits_until_it_is_adopted() {
    let f = fixture_with(
        "[http]\nconfig_access = \"open\"\n[discovery]\nenabled = true\nretry = \"7s\"\n",
        "",
    );
    let m = "52:54:00:00:00:55";
    let ipxe = format!(
        "/ipxe?mac={m}&arch=x86_64&platform=efi&manufacturer=Acme&product=R1&serial=SN55&memory=65536"
    );
    let (status, body) = get_from(&f, &ipxe, [10, 0, 0, 55]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("#!ipxe\n"), "{body}");
    assert!(body.contains("\nsleep 7\n"), "{body}");
    assert!(
        body.contains("\nchain --autofree http://10.0.0.2:8080/boot.ipxe\n"),
        "{body}"
    );
    let (_, v) = api(&f, "GET", &format!("/api/v1/machines/{m}"), None, None).await;
    assert_eq!(v["state"], "discovered", "{v}");
    assert_eq!(v["hardware"]["manufacturer"], "Acme", "{v}");
    assert_eq!(v["hardware"]["serial"], "SN55", "{v}");
    assert_eq!(v["hardware"]["memory"], "65536", "{v}");
    assert_eq!(v["arch"], "x86_64", "{v}");
    // Other documents are still refused: there is nothing to configure yet.
    let (status, _) = get_from(&f, &format!("/ignition?mac={m}"), [10, 0, 0, 55]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Adopted (as the dashboard does it): the next ask gets the profile's script.
    let adopt = json!({"profile": "node", "hostname": "n55"});
    let (status, v) = api(
        &f,
        "POST",
        &format!("/api/v1/machines/{m}/adopt"),
        Some("s3cret"),
        Some(adopt),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, body) = get_from(&f, &ipxe, [10, 0, 0, 55]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("kernel http://10.0.0.2:8080/assets/os/vmlinuz"),
        "{body}"
    );
    assert_eq!(state_of(&f, m).await, "ipxe");

    // Without discovery: the 404 that sends iPXE to its own retry loop, as before.
    let g = fixture();
    let (status, _) = get_from(&g, &ipxe, [10, 0, 0, 55]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The next chunk of an event stream, within 5 s.
async fn next_chunk(
    body: &mut (impl futures_util::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
) -> String {
    use futures_util::StreamExt as _;
    let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
        .await
        .expect("a chunk within 5 s")
        .unwrap()
        .unwrap();
    String::from_utf8(chunk.to_vec()).unwrap()
}

/// Transitions close together go out in one write; a subscriber that falls more than the
/// channel's capacity behind gets `resync` with every machine instead of what it missed.
#[tokio::test]
async fn events_are_batched_and_a_lagging_subscriber_resyncs() {
    let f = fixture();
    let resp = router(f.state.clone())
        .oneshot(Request::get("/api/v1/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body().into_data_stream();
    let ready = next_chunk(&mut body).await;
    assert!(ready.starts_with("event: ready\n"), "{ready}");
    let bus = f.state.profiles.bus();
    let transition = |i: u32| crate::events::Transition {
        mac: N1.parse().unwrap(),
        from: crate::boot_state::BootState::Unknown,
        to: crate::boot_state::BootState::Dhcp,
        stalled_in: None,
        at: crate::time_fmt::Stamp(std::time::SystemTime::now()),
        source: "test".into(),
        event: format!("n{i}"),
        hostname: None,
        profile: None,
    };
    for i in 0..10 {
        bus.publish(transition(i));
    }
    let chunk = next_chunk(&mut body).await;
    assert_eq!(
        chunk.matches("event: transition\n").count(),
        10,
        "one write: {chunk}"
    );
    for i in 0..(crate::events::TRANSITIONS as u32 + 10) {
        bus.publish(transition(i));
    }
    let chunk = next_chunk(&mut body).await;
    assert!(chunk.starts_with("event: resync\n"), "{chunk}");
    assert!(!chunk.contains("event: transition"), "{chunk}");
    let v: serde_json::Value = serde_json::from_str(
        chunk
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert!(v["missed"].as_u64().unwrap() >= 10, "{v}");
    assert_eq!(v["machines"][0]["mac"], N1, "{v}");
}
