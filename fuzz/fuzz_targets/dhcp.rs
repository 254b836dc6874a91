//! A datagram on the DHCP ports: decode, rate-limit, classify against the profiles, decide (full
//! mode on 67, proxy mode on 67 and 4011, relayed or not), encode the reply. The same bytes as
//! an ICMPv6 message on the DHCP interfaces: a router solicitation, parsed and decided on.
#![no_main]

#[path = "common.rs"]
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use kindling::config::Config;
use kindling::dhcp::service::{Ingress, Service};
use kindling::events::Bus;
use kindling::inventory::Inventory;
use kindling::metrics::Metrics;

struct Setup {
    full: Service,
    proxy: Service,
}

fn service(mode: &str, set: Arc<kindling::profiles::ProfileSet>) -> Service {
    let text = format!(
        "[server]\nbase_url = \"http://10.0.0.2:8080\"\nadvertise_ip = \"10.0.0.2\"\n\
         [dhcp]\nmode = \"{mode}\"\ninterfaces = [\"vs0\"]\n\
         [[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.100\", \"10.0.0.200\"]\n"
    );
    let config = Config::parse(Path::new("/k.toml"), &text).unwrap();
    Service::new(
        &config,
        set,
        Arc::new(Inventory::default()),
        Metrics::new(),
        Bus::new(),
        "http://10.0.0.2:8080".into(),
    )
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let (_, set) = common::profiles();
        let set = Arc::new(set);
        Setup {
            full: service("full", set.clone()),
            proxy: service("proxy", set),
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = setup();
    let ingress = |port| Ingress {
        iface: "vs0".into(),
        port,
        addrs: vec![Ipv4Addr::new(10, 0, 0, 2)],
    };
    let client = SocketAddr::from(([0, 0, 0, 0], 68));
    let relay = SocketAddr::from(([10, 0, 0, 1], 67));
    let _ = s.full.process(data, client, &ingress(67));
    let _ = s.full.process(data, relay, &ingress(67));
    let _ = s.proxy.process(data, client, &ingress(67));
    let _ = s.proxy.process(
        data,
        SocketAddr::from(([10, 0, 0, 77], 4011)),
        &ingress(4011),
    );
    let link_local = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe00, 1);
    let rs = [&[kindling::dhcp::ndp::ROUTER_SOLICITATION][..], data].concat();
    for msg in [data, &rs[..]] {
        if let Ok(rs) = kindling::dhcp::ndp::parse(msg, link_local, Some(255))
            && let Some(mac) = rs.mac
        {
            let _ = s.full.solicited(mac);
        }
    }
});
