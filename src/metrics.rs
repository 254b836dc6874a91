//! Prometheus metrics at `/metrics` (OpenMetrics text), with prometheus-client.
//!
//! Counters are updated where things happen. Values that are cheaper to compute than to keep
//! up to date (pool usage) are filled in at scrape time by the refreshers services register
//! with [`Metrics::on_scrape`].

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `kindling_dhcp_messages_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DhcpLabels {
    /// The request's message type (`discover`, `request`, ...; `malformed` when undecodable).
    pub r#type: &'static str,
    /// What Kindling did: `offer`, `ack`, `nak`, `inform`, `release`, `decline`,
    /// `proxy_offer`, `proxy_ack`, `ignored`, `rate_limited`, `dropped`.
    pub outcome: &'static str,
}

/// Labels of `kindling_tftp_transfers_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TftpLabels {
    /// `completed`, `aborted` (by the client, e.g. after a tsize probe, or replaced by its
    /// new request), `timeout`, `error`, `refused`, `busy`, `malformed`.
    pub outcome: &'static str,
}

/// Labels of `kindling_dns_answers_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// Where the answer came from: `cache` (the bytes of an earlier answer, UDP), `zones`
    /// (Kindling's own zones), `forwarded` (a forwarder's upstreams answered, or failed to:
    /// `servfail`), `refused` (a name outside Kindling's zones from a client that may not
    /// recurse), `other` (an undecodable query, or a name no zone or forwarder serves).
    pub source: &'static str,
    /// The response code: `noerror`, `formerr`, `servfail`, `nxdomain`, `refused`, `other`.
    pub rcode: &'static str,
}

/// Labels of `kindling_dns_forward_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    /// The forwarder's zone: `.` for `dns.upstreams`, else a `[[dns.forward]]` zone.
    pub zone: String,
}

/// Labels of `kindling_router_solicitations_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SolicitationLabels {
    /// `answered` (a machine Kindling is booting, before its OS), `ignored` (anyone else, or
    /// answering is off), `rate_limited`, `dropped` (malformed, or not from the link).
    pub outcome: &'static str,
}

/// Labels of the per-pool gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The subnet, e.g. `10.0.0.0/24`.
    pub subnet: String,
}

/// Labels of `kindling_http_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route (`/ipxe`, `/assets`, `/api/v1/machines/{mac}`, ...; `other` for 404s), so a
    /// scan of made-up paths cannot grow the label set.
    pub endpoint: String,
    /// The status code.
    pub status: u16,
}

/// Labels of `kindling_machines`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The boot state.
    pub state: &'static str,
}

/// Labels of `kindling_store_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// `leases` or `inventory`.
    pub store: &'static str,
}

/// Labels of `kindling_bmc_calls_total` and `kindling_bmc_call_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BmcLabels {
    /// `GET`, `POST`, `PATCH`, `DELETE` (a session's login is a `POST`).
    pub method: &'static str,
    /// `ok`, `auth` (401/403), `status` (another error status), `unreachable` (no connection
    /// or no answer in time), `tls`, `invalid` (not Redfish JSON).
    pub outcome: &'static str,
}

/// Labels of `kindling_service_failures_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service (`dhcp vs0:67`, `tftp`, `dns`, `http`, ...).
    pub service: String,
}

type Refresher = Box<dyn Fn(&Metrics) + Send + Sync>;
type PoolSource = Box<dyn Fn() -> Vec<PoolUsage> + Send + Sync>;

/// A DHCP pool's size and use, for `/metrics` and the API's status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolUsage {
    /// The subnet, e.g. `10.0.0.0/24`.
    pub subnet: String,
    /// Addresses in its range.
    pub size: u32,
    /// Addresses leased.
    pub used: u32,
    /// Addresses free.
    pub free: u32,
}

/// Every metric Kindling exports.
pub struct Metrics {
    registry: Registry,
    refreshers: Mutex<Vec<Refresher>>,
    pool_sources: Mutex<Vec<PoolSource>>,
    /// DHCP requests by type and outcome.
    pub dhcp_messages: Family<DhcpLabels, Counter>,
    /// Addresses in each pool's range.
    pub dhcp_pool_size: Family<PoolLabels, Gauge>,
    /// Addresses in use (offered, bound, quarantined, or reserved).
    pub dhcp_pool_used: Family<PoolLabels, Gauge>,
    /// Addresses free to hand out.
    pub dhcp_pool_free: Family<PoolLabels, Gauge>,
    /// IPv6 router solicitations by outcome.
    pub router_solicitations: Family<SolicitationLabels, Counter>,
    /// TFTP requests by outcome.
    pub tftp_transfers: Family<TftpLabels, Counter>,
    /// `kindling_dns_answers_total`
    pub dns_answers: Family<DnsLabels, Counter>,
    /// `kindling_dns_forward_seconds`: how long forwarded questions took to answer.
    pub dns_forward_seconds: Family<ForwardLabels, Histogram>,
    /// Bytes sent by completed TFTP transfers.
    pub tftp_bytes: Counter,
    /// HTTP requests by endpoint and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP connections open now.
    pub http_connections: Gauge,
    /// Times every HTTP connection place was in use (new connections then wait).
    pub http_full: Counter,
    /// Machines in each boot state (filled at scrape time).
    pub machines: Family<StateLabels, Gauge>,
    /// Seconds from a magic packet to the machine's `provisioned`.
    pub wake_to_provisioned: Histogram,
    /// Profile reloads that failed (the last good set stayed in service).
    pub reload_errors: Counter,
    /// Failures of supervised services (each one restarted).
    pub service_failures: Family<ServiceLabels, Counter>,
    /// Writes the lease or inventory store refused or did not answer.
    pub store_errors: Family<StoreLabels, Counter>,
    /// Inventory records changed and not yet written (filled at scrape time).
    pub inventory_pending: Gauge,
    /// Calls to BMCs, by method and outcome.
    pub bmc_calls: Family<BmcLabels, Counter>,
    /// How long calls to BMCs took, by method and outcome.
    pub bmc_call_seconds: Family<BmcLabels, Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kindling");
        let dhcp_messages = Family::<DhcpLabels, Counter>::default();
        registry.register(
            "dhcp_messages",
            "DHCP requests received, by message type and outcome",
            dhcp_messages.clone(),
        );
        let dhcp_pool_size = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "dhcp_pool_size",
            "Addresses in the pool's range",
            dhcp_pool_size.clone(),
        );
        let dhcp_pool_used = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "dhcp_pool_used",
            "Addresses offered, bound, quarantined or reserved",
            dhcp_pool_used.clone(),
        );
        let dhcp_pool_free = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "dhcp_pool_free",
            "Addresses free to hand out",
            dhcp_pool_free.clone(),
        );
        let router_solicitations = Family::<SolicitationLabels, Counter>::default();
        registry.register(
            "router_solicitations",
            "IPv6 router solicitations received on the DHCP interfaces, by outcome",
            router_solicitations.clone(),
        );
        let dns_answers = Family::<DnsLabels, Counter>::default();
        registry.register(
            "dns_answers",
            "DNS answers sent, by where they came from and their response code",
            dns_answers.clone(),
        );
        // 1 ms to about 4 s: an upstream on the LAN answers in milliseconds, one far away or
        // failing over in seconds (the resolver gives up after 2 tries of 2 s).
        let dns_forward_seconds = Family::<ForwardLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.0, 13))) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "dns_forward",
            "Time a forwarded DNS question took to answer, by the forwarder's zone",
            Unit::Seconds,
            dns_forward_seconds.clone(),
        );
        let tftp_transfers = Family::<TftpLabels, Counter>::default();
        registry.register(
            "tftp_transfers",
            "TFTP requests, by outcome",
            tftp_transfers.clone(),
        );
        let tftp_bytes = Counter::default();
        registry.register(
            "tftp_sent_bytes",
            "Bytes of completed TFTP transfers",
            tftp_bytes.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests, by endpoint and status",
            http_requests.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "HTTP connections open",
            http_connections.clone(),
        );
        let http_full = Counter::default();
        registry.register(
            "http_connections_full",
            "Times every HTTP connection place (http.max_connections) was in use; new connections then waited in the listen backlog",
            http_full.clone(),
        );
        let machines = Family::<StateLabels, Gauge>::default();
        registry.register("machines", "Machines in each boot state", machines.clone());
        // 30 s to about 4 h: a PXE install takes minutes, a slow one an hour or more.
        let wake_to_provisioned = Histogram::new(exponential_buckets(30.0, 2.0, 10));
        registry.register_with_unit(
            "wake_to_provisioned",
            "Time from the Wake-on-LAN packet to the machine reporting provisioned",
            Unit::Seconds,
            wake_to_provisioned.clone(),
        );
        let reload_errors = Counter::default();
        registry.register(
            "profile_reload_errors",
            "Profile reloads that failed; the last good set stays in service",
            reload_errors.clone(),
        );
        let service_failures = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "service_failures",
            "Failures of supervised services; each failed service is restarted with backoff",
            service_failures.clone(),
        );
        let store_errors = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Writes to the lease or inventory store that failed (etcd unreachable, no quorum, a disk error)",
            store_errors.clone(),
        );
        let inventory_pending = Gauge::default();
        registry.register(
            "inventory_pending",
            "Inventory records changed and not yet written to the store",
            inventory_pending.clone(),
        );
        let bmc_calls = Family::<BmcLabels, Counter>::default();
        registry.register(
            "bmc_calls",
            "Redfish calls to BMCs, by method and outcome",
            bmc_calls.clone(),
        );
        // 5 ms to about 20 s: a BMC answers in tens of milliseconds to seconds.
        let bmc_call_seconds = Family::<BmcLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.005, 2.0, 12))) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "bmc_call",
            "Time a Redfish call to a BMC took (connecting included), by method and outcome",
            Unit::Seconds,
            bmc_call_seconds.clone(),
        );
        Metrics {
            registry,
            bmc_calls,
            bmc_call_seconds,
            service_failures,
            store_errors,
            inventory_pending,
            http_requests,
            http_connections,
            http_full,
            machines,
            wake_to_provisioned,
            reload_errors,
            tftp_transfers,
            dns_answers,
            dns_forward_seconds,
            tftp_bytes,
            router_solicitations,
            refreshers: Mutex::new(Vec::new()),
            pool_sources: Mutex::new(Vec::new()),
            dhcp_messages,
            dhcp_pool_size,
            dhcp_pool_used,
            dhcp_pool_free,
        }
    }
}

impl Metrics {
    /// A shared, empty set of metrics.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Count one call to a BMC and how long it took.
    pub fn bmc_call(&self, method: &'static str, outcome: &'static str, took: std::time::Duration) {
        let labels = BmcLabels { method, outcome };
        self.bmc_calls.get_or_create(&labels).inc();
        self.bmc_call_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Count one DHCP request.
    pub fn dhcp(&self, r#type: &'static str, outcome: &'static str) {
        self.dhcp_messages
            .get_or_create(&DhcpLabels { r#type, outcome })
            .inc();
    }

    /// Count one IPv6 router solicitation's outcome.
    pub fn router_solicitation(&self, outcome: &'static str) {
        self.router_solicitations
            .get_or_create(&SolicitationLabels { outcome })
            .inc();
    }

    /// Count one HTTP request.
    pub fn http(&self, endpoint: &str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
    }

    /// Count one TFTP request's outcome.
    pub fn tftp(&self, outcome: &'static str) {
        self.tftp_transfers
            .get_or_create(&TftpLabels { outcome })
            .inc();
    }

    /// Count one DNS answer: where it came from and its response code (the low four bits).
    pub fn dns(&self, source: &'static str, rcode: u8) {
        let rcode = match rcode & 0x0f {
            0 => "noerror",
            1 => "formerr",
            2 => "servfail",
            3 => "nxdomain",
            5 => "refused",
            _ => "other",
        };
        self.dns_answers
            .get_or_create(&DnsLabels { source, rcode })
            .inc();
    }

    /// Time one forwarded question took, through the forwarder of `zone`.
    pub fn dns_forward(&self, zone: &str, took: std::time::Duration) {
        self.dns_forward_seconds
            .get_or_create(&ForwardLabels {
                zone: zone.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Count one failure of a supervised service.
    pub fn service_failed(&self, service: &str) {
        self.service_failures
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
            })
            .inc();
    }

    /// Run `f` before every scrape to fill in computed values.
    pub fn on_scrape(&self, f: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.refreshers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// Ask `f` for pool usage at every scrape and [`Metrics::pools`] call.
    pub fn on_pools(&self, f: impl Fn() -> Vec<PoolUsage> + Send + Sync + 'static) {
        self.pool_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// Every DHCP pool's size and use, now.
    pub fn pools(&self) -> Vec<PoolUsage> {
        self.pool_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|f| f())
            .collect()
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        for pool in self.pools() {
            let labels = PoolLabels {
                subnet: pool.subnet,
            };
            self.dhcp_pool_size
                .get_or_create(&labels)
                .set(i64::from(pool.size));
            self.dhcp_pool_used
                .get_or_create(&labels)
                .set(i64::from(pool.used));
            self.dhcp_pool_free
                .get_or_create(&labels)
                .set(i64::from(pool.free));
        }
        for f in self
            .refreshers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            f(self);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_scrape_time_gauges_are_encoded() {
        let m = Metrics::new();
        m.dhcp("discover", "offer");
        m.dhcp("discover", "offer");
        m.dhcp("request", "nak");
        m.on_scrape(|m| {
            let l = PoolLabels {
                subnet: "10.0.0.0/24".into(),
            };
            m.dhcp_pool_size.get_or_create(&l).set(10);
            m.dhcp_pool_used.get_or_create(&l).set(9);
            m.dhcp_pool_free.get_or_create(&l).set(1);
        });
        let text = m.encode();
        assert!(
            text.contains("kindling_dhcp_messages_total{type=\"discover\",outcome=\"offer\"} 2"),
            "{text}"
        );
        assert!(text.contains("kindling_dhcp_messages_total{type=\"request\",outcome=\"nak\"} 1"));
        assert!(
            text.contains("kindling_dhcp_pool_free{subnet=\"10.0.0.0/24\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
