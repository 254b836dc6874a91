//! A request to the HTTP service, unauthenticated as a stranger on the LAN would send it: the
//! boot endpoints (query checks, access rules, rendering), assets, the API (JSON bodies, the
//! report form), the fallback.
#![no_main]

#[path = "common.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use kindling::config::Config;
use kindling::events::Bus;
use kindling::http::{HttpShared, HttpState, router};
use kindling::inventory::Inventory;
use kindling::metrics::Metrics;
use kindling::profiles::watch::Live;
use tower::ServiceExt;

struct Setup {
    runtime: tokio::runtime::Runtime,
    app: Router,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let (sources, set) = common::profiles();
        let assets = common::scratch("assets");
        std::fs::create_dir_all(assets.join("os")).unwrap();
        std::fs::write(assets.join("os/vmlinuz"), vec![7u8; 4096]).unwrap();
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[paths]\nassets = \"{}\"\nipxe_binaries = \"{}\"\n",
            assets.display(),
            assets.display()
        );
        let config = Config::parse(Path::new("/k.toml"), &text).unwrap();
        let bus = Bus::new();
        let live = Arc::new(Live::new(
            sources,
            "http://10.0.0.2:8080".into(),
            set,
            bus.clone(),
        ));
        let inventory = Arc::new(Inventory::with_bus(Default::default(), None, bus));
        inventory.sync_profiles(&live.current());
        let metrics = Metrics::new();
        // No profile names a BMC here: power calls answer 409 without a network call.
        let power = Arc::new(kindling::power::Power::new(
            config.bmc.clone(),
            live.clone(),
            inventory.clone(),
            metrics.clone(),
        ));
        let state = HttpState::from(HttpShared {
            power,
            config: Arc::new(config),
            base_url: "http://10.0.0.2:8080".into(),
            profiles: live,
            inventory,
            metrics,
            waker: None,
            health: Default::default(),
            // No token: every mutating call is refused, as for anyone without one.
            api_token: None,
            shutdown: tokio_util::sync::CancellationToken::new(),
            cluster: None,
        });
        Setup {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            app: router(state),
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // method byte, then the request target up to the first newline, then the body.
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let method = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"][usize::from(m % 6)];
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let Ok(mut req) = Request::builder()
        .method(method)
        .uri(target)
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let peer: SocketAddr = if m & 0x80 == 0 {
        "10.0.0.9:40000".parse().unwrap()
    } else {
        "10.0.0.50:40000".parse().unwrap()
    };
    req.extensions_mut().insert(ConnectInfo(peer));
    let s = setup();
    s.runtime.block_on(async {
        let resp = s.app.clone().oneshot(req).await.unwrap();
        let _ = axum::body::to_bytes(resp.into_body(), 1 << 20).await;
    });
});
