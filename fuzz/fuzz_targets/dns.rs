//! A query datagram through Kindling's DNS request path: hickory's decoder, the recursion
//! policy, the zones built from profiles, the encoder.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Arc, OnceLock};

use kindling::config::DnsConfig;
use kindling::dns::Dns;

struct Setup {
    runtime: tokio::runtime::Runtime,
    dns: Arc<Dns>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let (sources, set) = common::profiles();
        let live = kindling::profiles::watch::Live::new(
            sources,
            "http://x".into(),
            set,
            kindling::events::Bus::new(),
        );
        let config = DnsConfig {
            enabled: true,
            domain: Some("lab.example".into()),
            ..DnsConfig::default()
        };
        let dns = Arc::new(Dns::new(&config, &["10.0.0.0/24".parse().unwrap()], None).unwrap());
        dns.refresh(&live, None, 1_900_000_000);
        Setup {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            dns,
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = setup();
    let src = "10.0.0.9:5353".parse().unwrap();
    let _ = s.runtime.block_on(s.dns.answer(data.to_vec(), src));
});
