//! DNS for the provisioning network, on hickory-server.
//!
//! Kindling is authoritative for `dns.domain` and for the reverse zones of its networks (see
//! [`zone`]): profile machines, live DHCP leases and static records, rebuilt when the profiles
//! reload or a lease changes or expires, with the SOA serial bumped on every change. Names
//! outside those zones go to per-zone forwarders or `dns.upstreams` — but only for clients in
//! `dns.allow_recursion` (no open resolver); everyone else, and every query when no upstream
//! is configured, gets REFUSED. UDP and TCP on one port; hickory truncates UDP answers that
//! do not fit (TC set) and the client retries over TCP. Malformed packets are dropped by
//! hickory's decoder with a log line. Over UDP, a question asked before is answered from the
//! bytes of its last answer until the zones change ([`udp`]).
//!
//! Left out: DNSSEC, zone transfers (AXFR is refused), dynamic updates, IPv6 reverse zones.

mod udp;
pub mod zone;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{LowerName, Name, RecordSet, RrKey};
use hickory_server::resolver::config::{NameServerConfig, ResolveHosts, ResolverOpts};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType,
};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::config::DnsConfig;
use crate::events::{LeaseEvent, ProfilesEvent, Transition};
use crate::profiles::watch::Live;
use crate::time_fmt::unix_now;
pub use zone::{LeaseName, Zones};

/// Why the DNS service failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// A forwarder could not be set up.
    #[error("{0}")]
    Forwarder(String),
    /// The server stopped with an error.
    #[error("DNS server: {0}")]
    Server(String),
}

/// How long a burst of changes settles before the zones are rebuilt once.
const SETTLE: Duration = Duration::from_millis(100);

/// How long a TCP client may stay idle.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[dns]` problems `kindling check` reports.
pub fn check_config(config: &DnsConfig) -> Vec<crate::config::Issue> {
    zone::check(config)
}

/// A DNS server address that is neither `IP` nor `IP:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DNS server {0:?}: not IP or IP:port")]
pub struct BadServer(String);

/// `IP` or `IP:port` (port 53 by default).
pub fn server_addr(s: &str) -> Result<SocketAddr, BadServer> {
    let s = s.trim();
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| BadServer(s.to_string()))
}

/// Where live leases come from (the DHCP service in full mode).
pub trait LeaseSource: Send + Sync {
    /// Bound leases with a hostname.
    fn named_leases(&self) -> Vec<LeaseName>;
    /// The DHCP networks (for reverse zones).
    fn networks(&self) -> Vec<ipnet::Ipv4Net>;
}

/// What the request handler reads; swapped whole on every change.
struct Served {
    catalog: Catalog,
    /// Kindling's own zones: answered for everyone.
    authoritative: Vec<LowerName>,
}

impl Served {
    /// Whether `name` is in one of Kindling's own zones.
    fn owns(&self, name: &LowerName) -> bool {
        self.authoritative.iter().any(|z| z.zone_of(name))
    }
}

/// Where an answer came from: the `source` label of `kindling_dns_answers_total` (`cache` is
/// the UDP cache's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Kindling's own zones.
    Zones,
    /// A forwarder (its upstreams' answer, or SERVFAIL when they gave none).
    Forwarded,
    /// Refused: outside Kindling's zones, from a client that may not recurse.
    Refused,
    /// An undecodable query, or a name no zone or forwarder serves.
    Other,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Zones => "zones",
            Source::Forwarded => "forwarded",
            Source::Refused => "refused",
            Source::Other => "other",
        }
    }
}

/// What went out for one datagram, and where it came from.
struct Answered {
    bytes: Vec<u8>,
    source: Source,
}

/// The DNS service's shared state.
pub struct Dns {
    config: DnsConfig,
    served: ArcSwap<Served>,
    /// Clients that may use forwarding.
    recursion: Vec<IpNet>,
    /// Forwarders, built once, put into every new catalog.
    forwarders: Vec<(LowerName, Arc<dyn ZoneHandler>)>,
    /// The last zones built and their serial.
    state: std::sync::Mutex<(Zones, u32)>,
    ns_ip: Option<IpAddr>,
    /// Where answers are counted.
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").finish_non_exhaustive()
    }
}

fn resolver_opts() -> ResolverOpts {
    let mut o = ResolverOpts::default();
    o.use_hosts_file = ResolveHosts::Never;
    o.timeout = Duration::from_secs(2);
    o.attempts = 2;
    o
}

fn forwarder(origin: &Name, servers: &[String]) -> Result<Arc<dyn ZoneHandler>, DnsError> {
    let mut name_servers = Vec::new();
    for s in servers {
        let addr = server_addr(s).map_err(|e| DnsError::Forwarder(e.to_string()))?;
        let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
        for c in &mut ns.connections {
            c.port = addr.port();
        }
        name_servers.push(ns);
    }
    let handler = ForwardZoneHandler::builder_tokio(ForwardConfig {
        name_servers,
        options: Some(resolver_opts()),
    })
    .with_origin(origin.clone())
    .build()
    .map_err(|e| DnsError::Forwarder(format!("forwarder for {origin}: {e}")))?;
    Ok(Arc::new(handler))
}

impl Dns {
    /// Set up from `config`; `subnets` are the DHCP networks (default recursion clients).
    pub fn new(
        config: &DnsConfig,
        subnets: &[ipnet::Ipv4Net],
        ns_ip: Option<IpAddr>,
    ) -> Result<Dns, DnsError> {
        let mut forwarders = Vec::new();
        for f in &config.forward {
            let mut origin = Name::from_ascii(f.zone.trim_end_matches('.'))
                .map_err(|e| DnsError::Forwarder(format!("dns.forward {:?}: {e}", f.zone)))?;
            origin.set_fqdn(true);
            forwarders.push((LowerName::new(&origin), forwarder(&origin, &f.servers)?));
        }
        if !config.upstreams.is_empty() {
            forwarders.push((
                LowerName::new(&Name::root()),
                forwarder(&Name::root(), &config.upstreams)?,
            ));
        }
        let recursion = if config.allow_recursion.is_empty() {
            let mut r: Vec<IpNet> = vec![
                "127.0.0.0/8".parse().unwrap_or_default(),
                "::1/128".parse().unwrap_or_default(),
            ];
            r.extend(subnets.iter().map(|n| IpNet::V4(*n)));
            r
        } else {
            config.allow_recursion.clone()
        };
        let dns = Dns {
            config: config.clone(),
            served: ArcSwap::from_pointee(Served {
                catalog: Catalog::new(),
                authoritative: Vec::new(),
            }),
            recursion,
            forwarders,
            state: std::sync::Mutex::new((Zones::default(), 0)),
            ns_ip,
            metrics: crate::metrics::Metrics::new(),
        };
        Ok(dns)
    }

    /// Rebuild the zones from the profiles and leases; swap them in (with a new serial) if
    /// anything changed. Returns the serial served.
    pub fn refresh(&self, live: &Live, leases: Option<&dyn LeaseSource>, now: u64) -> u32 {
        let set = live.current();
        let (named, mut nets) = match leases {
            Some(l) => (l.named_leases(), l.networks()),
            None => (Vec::new(), Vec::new()),
        };
        nets.sort();
        let (zones, warnings) = zone::build(&self.config, &set, &named, &nets, self.ns_ip, now);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.1 != 0 && state.0 == zones {
            return state.1;
        }
        for w in &warnings {
            tracing::warn!("DNS: {w}");
        }
        // Serials never go backwards, also across restarts: at least the Unix time.
        let serial = (state.1.wrapping_add(1)).max(u32::try_from(now).unwrap_or(u32::MAX));
        let ttl = u32::try_from(self.config.ttl.as_secs()).unwrap_or(u32::MAX);
        let mut catalog = Catalog::new();
        let mut authoritative = Vec::new();
        for (origin, records) in zones.with_soa(serial, ttl) {
            let mut sets: std::collections::BTreeMap<RrKey, RecordSet> = Default::default();
            for r in records {
                let key = RrKey::new(LowerName::new(&r.name), r.record_type());
                sets.entry(key)
                    .or_insert_with(|| RecordSet::new(r.name.clone(), r.record_type(), serial))
                    .insert(r, serial);
            }
            match InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                origin.clone(),
                sets,
                ZoneType::Primary,
                AxfrPolicy::Deny,
            ) {
                Ok(h) => {
                    let lower = LowerName::new(&origin);
                    catalog.upsert(lower.clone(), vec![Arc::new(h)]);
                    authoritative.push(lower);
                }
                Err(e) => tracing::error!(zone = %origin, error = %e, "DNS zone not served"),
            }
        }
        for (origin, f) in &self.forwarders {
            if !catalog.contains(origin) {
                catalog.upsert(origin.clone(), vec![f.clone()]);
            }
        }
        tracing::info!(
            serial,
            zones = authoritative.len(),
            records = zones.len(),
            "DNS zones updated"
        );
        self.served.store(Arc::new(Served {
            catalog,
            authoritative,
        }));
        *state = (zones, serial);
        serial
    }

    /// Keep the zones current until cancelled: rebuilt after a profile reload, a lease
    /// change (granted, renewed, released, declined, expired: DHCP announces each) and, when
    /// the names come from the inventory (`inventory_names`), a boot-state transition. A burst
    /// of events is settled for [`SETTLE`] and costs one rebuild; a rebuild that changes
    /// nothing keeps the serial.
    pub async fn run_refresher(
        self: Arc<Self>,
        live: Arc<Live>,
        leases: Option<Arc<dyn LeaseSource>>,
        inventory_names: bool,
        cancel: CancellationToken,
    ) {
        let bus = live.bus().clone();
        let mut profiles = bus.subscribe::<Arc<ProfilesEvent>>();
        let mut lease_events = bus.subscribe::<LeaseEvent>();
        let mut transitions = bus.subscribe::<Transition>();
        loop {
            self.refresh(&live, leases.as_deref(), unix_now());
            let open = tokio::select! {
                _ = cancel.cancelled() => return,
                r = profiles.recv() => !matches!(r, Err(RecvError::Closed)),
                r = lease_events.recv() => !matches!(r, Err(RecvError::Closed)),
                r = transitions.recv(), if inventory_names => !matches!(r, Err(RecvError::Closed)),
            };
            if !open {
                return;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SETTLE) => {}
            }
            // Everything that arrived meanwhile is covered by the one rebuild.
            while !matches!(
                profiles.try_recv(),
                Err(TryRecvError::Empty | TryRecvError::Closed)
            ) {}
            while !matches!(
                lease_events.try_recv(),
                Err(TryRecvError::Empty | TryRecvError::Closed)
            ) {}
            while !matches!(
                transitions.try_recv(),
                Err(TryRecvError::Empty | TryRecvError::Closed)
            ) {}
        }
    }

    /// Answer one query datagram from `src` as the UDP server does when it asks hickory (for
    /// tests and fuzzing). `None` when nothing is sent back.
    pub async fn answer(self: &Arc<Self>, bytes: Vec<u8>, src: SocketAddr) -> Option<Vec<u8>> {
        let served = self.served.load_full();
        self.answer_from(&served, bytes, src).await.map(|a| a.bytes)
    }

    /// Answer one datagram from `src` out of `served`, as hickory's own UDP server does:
    /// fewer than 12 bytes, or a response, dropped; a header with an undecodable rest,
    /// FORMERR; anything else through the request handler.
    async fn answer_from(
        &self,
        served: &Served,
        bytes: Vec<u8>,
        src: SocketAddr,
    ) -> Option<Answered> {
        use futures_util::StreamExt as _;
        use hickory_server::net::BufDnsStreamHandle;
        use hickory_server::net::runtime::TokioTime;
        use hickory_server::net::xfer::Protocol;
        use hickory_server::proto::op::{Header, MessageType};
        use hickory_server::proto::serialize::binary::{BinDecodable as _, BinDecoder};
        use hickory_server::server::ResponseHandle;
        use hickory_server::zone_handler::Queries;
        use tracing::Instrument as _;
        let header = Header::read(&mut BinDecoder::new(&bytes)).ok()?;
        if header.metadata.message_type == MessageType::Response {
            return None;
        }
        let (handle, mut sent) = BufDnsStreamHandle::new(src);
        let mut response = ResponseHandle::new(src, handle, Protocol::Udp);
        let source = match Request::from_bytes(bytes, src, Protocol::Udp) {
            Ok(request) => {
                let span = tracing::debug_span!("dns", peer = %src);
                let (_, source) = respond::<_, TokioTime>(self, served, &request, response)
                    .instrument(span)
                    .await;
                source
            }
            Err(e) => {
                tracing::debug!(%src, error = %e, "DNS: undecodable query, FORMERR");
                let none = Queries::read(&mut BinDecoder::new(&[]), 0).ok()?;
                let formerr = MessageResponseBuilder::new(&none, None)
                    .error_msg(&header.metadata, ResponseCode::FormErr);
                if let Err(e) = response.send_response(formerr).await {
                    tracing::debug!(%src, error = %e, "DNS: cannot send FORMERR");
                }
                drop(response);
                Source::Other
            }
        };
        let bytes = sent.next().await?.into_parts().0;
        Some(Answered { bytes, source })
    }

    /// Count answers in `metrics` (`kindling_dns_answers_total`) rather than in a set of
    /// their own.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Dns {
        self.metrics = metrics;
        self
    }

    /// The zone of the forwarder that serves `name`, if one does (the most specific).
    fn forwarder_of(&self, name: &LowerName) -> Option<&LowerName> {
        self.forwarders
            .iter()
            .map(|(zone, _)| zone)
            .filter(|zone| zone.zone_of(name))
            .max_by_key(|zone| zone.num_labels())
    }

    /// Count one answer (its bytes' response code) from `source`.
    fn count(&self, source: &'static str, answer: &[u8]) {
        self.metrics
            .dns(source, answer.get(3).copied().unwrap_or(0));
    }

    fn may_recurse(&self, src: IpAddr) -> bool {
        let src = src.to_canonical();
        self.recursion.iter().any(|n| n.contains(&src))
    }

    /// Serve UDP (see [`udp`]) and TCP (hickory's server) until cancelled.
    pub async fn serve(
        self: Arc<Self>,
        udp: tokio::net::UdpSocket,
        tcp: tokio::net::TcpListener,
        cancel: CancellationToken,
    ) -> Result<(), DnsError> {
        let mut server = hickory_server::Server::new(Handler(self.clone()));
        server.register_listener(tcp, TCP_TIMEOUT, 64 * 1024);
        let udp = udp::serve(self, udp, cancel.clone()).await;
        let tcp = server
            .shutdown_gracefully()
            .await
            .map_err(|e| DnsError::Server(e.to_string()));
        udp.and(tcp)
    }
}

/// The request handler: Kindling's zones for everyone, forwarding only for allowed clients.
struct Handler(Arc<Dns>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        use tracing::Instrument as _;
        // One span per query, at debug: what is logged about it carries the client.
        let span = tracing::debug_span!("dns", peer = %request.src());
        let served = self.0.served.load_full();
        let (info, source) = respond::<R, T>(&self.0, &served, request, response_handle)
            .instrument(span)
            .await;
        // Over TCP (UDP counts its own): the low four bits of the response code.
        let code = (u16::from(info.response_code) & 0x0f) as u8;
        self.0.metrics.dns(source.label(), code);
        info
    }
}

/// Answer `request` out of `served`: Kindling's zones for everyone, forwarding only for
/// allowed clients. Also where the answer came from; a forwarded one is timed in the metrics.
async fn respond<R: ResponseHandler, T: Time>(
    dns: &Dns,
    served: &Served,
    request: &Request,
    mut response_handle: R,
) -> (ResponseInfo, Source) {
    let catalog = |handle| served.catalog.handle_request::<_, T>(request, handle);
    let Ok(info) = request.request_info() else {
        return (catalog(response_handle).await, Source::Other);
    };
    let name = info.query.name();
    if served.owns(name) {
        return (catalog(response_handle).await, Source::Zones);
    }
    if !dns.may_recurse(request.src().ip()) {
        tracing::debug!(src = %request.src(), %name, "DNS: recursion refused for this client");
        let response = MessageResponseBuilder::new(&request.queries, None)
            .error_msg(&request.metadata, ResponseCode::Refused);
        return match response_handle.send_response(response).await {
            Ok(sent) => (sent, Source::Refused),
            Err(e) => {
                tracing::debug!(error = %e, "DNS: cannot send REFUSED");
                (catalog(response_handle).await, Source::Other)
            }
        };
    }
    let Some(zone) = dns.forwarder_of(name) else {
        return (catalog(response_handle).await, Source::Other);
    };
    let started = std::time::Instant::now();
    let sent = catalog(response_handle).await;
    dns.metrics
        .dns_forward(&zone.to_string(), started.elapsed());
    (sent, Source::Forwarded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct FakeLeases(Mutex<Vec<LeaseName>>);

    impl LeaseSource for FakeLeases {
        fn named_leases(&self) -> Vec<LeaseName> {
            self.0.lock().unwrap().clone()
        }
        fn networks(&self) -> Vec<ipnet::Ipv4Net> {
            vec!["10.0.0.0/24".parse().unwrap()]
        }
    }

    /// A DNS service for `lab.example` with one machine, `box` at 10.0.0.7, an upstream that
    /// never answers, and its zones built; the directory holds its profiles.
    pub(super) fn lab_dns() -> (tempfile::TempDir, Live, Arc<Dns>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        std::fs::write(
            dir.path().join("p/n.toml"),
            "[boot]\nkernel = \"k\"\n[[machine]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"box\"\nip = \"10.0.0.7\"\n",
        )
        .unwrap();
        let sources = crate::profiles::Sources {
            profiles: dir.path().join("p"),
            scripts: dir.path().join("none"),
        };
        let set = crate::profiles::ProfileSet::load(&sources, "http://x").unwrap();
        let live = Live::new(sources, "http://x".into(), set, crate::events::Bus::new());
        let config = DnsConfig {
            enabled: true,
            domain: Some("lab.example".into()),
            upstreams: vec!["127.0.0.1:9".into()],
            ..DnsConfig::default()
        };
        let dns = Arc::new(Dns::new(&config, &[], None).unwrap());
        dns.refresh(&live, None, 1_900_000_000);
        (dir, live, dns)
    }

    /// The request path answers what the zones hold, refuses recursion to a stranger, and
    /// drops what is not a request.
    #[tokio::test]
    async fn answers_from_the_zones_and_refuses_recursion_to_strangers() {
        use hickory_server::proto::op::{Message, Query};
        use hickory_server::proto::rr::RecordType;
        use hickory_server::proto::serialize::binary::{BinDecodable, BinEncodable};
        let (_dir, _live, dns) = lab_dns();
        let ask = |name: &str| {
            let mut m = Message::query();
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            m.to_bytes().unwrap()
        };
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let a = Message::from_bytes(&dns.answer(ask("box.lab.example."), stranger).await.unwrap())
            .unwrap();
        assert_eq!(a.answers.len(), 1, "{a:?}");
        let r =
            Message::from_bytes(&dns.answer(ask("example.org."), stranger).await.unwrap()).unwrap();
        assert_eq!(r.response_code, ResponseCode::Refused);
        assert!(dns.answer(vec![1, 2, 3], local).await.is_none());
        // As hickory's own server: a header with nothing decodable after it is a FORMERR, a
        // response is not answered.
        let mut broken = ask("box.lab.example.");
        broken.truncate(14);
        let f = Message::from_bytes(&dns.answer(broken, local).await.unwrap()).unwrap();
        assert_eq!(f.response_code, ResponseCode::FormErr);
        let mut response = ask("box.lab.example.");
        response[2] |= 0x80;
        assert!(dns.answer(response, local).await.is_none());
    }

    /// A forwarded question is timed under the most specific forwarder's zone; without one
    /// (no upstreams) nothing forwards it.
    #[test]
    fn the_most_specific_forwarder_serves_a_name() {
        let name = |n: &str| LowerName::new(&Name::from_ascii(n).unwrap());
        let forward = vec![crate::config::ForwardZone {
            zone: "corp.example".into(),
            servers: vec!["127.0.0.1:9".into()],
        }];
        let config = DnsConfig {
            enabled: true,
            upstreams: vec!["127.0.0.1:9".into()],
            forward: forward.clone(),
            ..DnsConfig::default()
        };
        let dns = Dns::new(&config, &[], None).unwrap();
        let zone = |n: &str| dns.forwarder_of(&name(n)).map(|z| z.to_string());
        assert_eq!(zone("www.corp.example.").as_deref(), Some("corp.example."));
        assert_eq!(zone("corp.example.").as_deref(), Some("corp.example."));
        assert_eq!(zone("example.org.").as_deref(), Some("."));
        assert_eq!(zone("notcorp.example.").as_deref(), Some("."));
        let only_corp = Dns::new(
            &DnsConfig {
                enabled: true,
                forward,
                ..DnsConfig::default()
            },
            &[],
            None,
        )
        .unwrap();
        assert!(only_corp.forwarder_of(&name("example.org.")).is_none());
        assert!(only_corp.forwarder_of(&name("a.corp.example.")).is_some());
    }

    #[test]
    fn the_serial_moves_only_when_the_zones_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        std::fs::write(dir.path().join("p/n.toml"), "[boot]\nkernel = \"k\"\n").unwrap();
        let sources = crate::profiles::Sources {
            profiles: dir.path().join("p"),
            scripts: dir.path().join("none"),
        };
        let set = crate::profiles::ProfileSet::load(&sources, "http://x").unwrap();
        let live = Live::new(sources, "http://x".into(), set, crate::events::Bus::new());
        let config = DnsConfig {
            enabled: true,
            domain: Some("lab.example".into()),
            ..DnsConfig::default()
        };
        let dns = Dns::new(&config, &[], None).unwrap();
        let leases = FakeLeases(Mutex::new(vec![LeaseName {
            hostname: "box".into(),
            ip: "10.0.0.7".parse().unwrap(),
            expires: 2_000_000_000,
        }]));
        let now = 1_900_000_000;
        let s1 = dns.refresh(&live, Some(&leases), now);
        assert_eq!(
            s1, 1_900_000_000,
            "starts at the Unix time: never behind a restart"
        );
        assert_eq!(
            dns.refresh(&live, Some(&leases), now + 5),
            s1,
            "nothing changed"
        );
        leases.0.lock().unwrap().push(LeaseName {
            hostname: "box2".into(),
            ip: "10.0.0.8".parse().unwrap(),
            expires: 2_000_000_000,
        });
        let s2 = dns.refresh(&live, Some(&leases), now + 6);
        assert!(s2 > s1);
        // Expiry is a change too.
        let s3 = dns.refresh(&live, Some(&leases), 2_000_000_001);
        assert!(s3 > s2);
        let served = dns.served.load();
        // The subnet's reverse zone stays (empty), so PTR queries never leak upstream.
        assert_eq!(served.authoritative.len(), 2);
        assert_eq!(dns.state.lock().unwrap().0.len(), 2, "NS records only");
    }
}
