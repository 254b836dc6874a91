//! Building the zones: a pure function from the profiles, the live leases and the static
//! records to every record Kindling serves, so it can be tested without a socket or a clock.
//!
//! - The forward zone `dns.domain`: SOA and NS (`ns.<domain>`), an A (or AAAA) record per
//!   profile machine with a hostname and an address, one per bound, unexpired lease whose
//!   hostname (the profile's, else DHCP option 12) is a valid label, and the static records.
//!   A profile's name wins over a lease's; of two leases claiming one name, the later expiry.
//! - Reverse zones: one per DHCP subnet and `dns.reverse_networks` (rounded down to an octet
//!   boundary, at most /24), plus a /24 for any other address named, with a PTR per machine
//!   and lease address.
//! - Wildcards (`*.apps`) are ordinary records: hickory answers them per RFC 4592.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record};
use ipnet::Ipv4Net;

use crate::config::{DnsConfig, Issue, StaticRecord};
use crate::profiles::ProfileSet;

/// Labels of the zone no lease may take.
pub const RESERVED_LABELS: &[&str] = &["ns", "wpad", "isatap", "localhost"];

/// A bound lease with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseName {
    /// Its hostname (profile or option 12).
    pub hostname: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// When it expires (Unix seconds).
    pub expires: u64,
}

/// Every zone's records, without the SOA (whose serial is the server's business).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zones {
    /// Origin → records.
    pub zones: BTreeMap<Name, Vec<Record>>,
}

impl Zones {
    /// How many records in all.
    pub fn len(&self) -> usize {
        self.zones.values().map(Vec::len).sum()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record with its SOA added (serial `serial`), zone by zone.
    pub fn with_soa(&self, serial: u32, ttl: u32) -> BTreeMap<Name, Vec<Record>> {
        self.zones
            .iter()
            .map(|(origin, records)| {
                let mut all = records.clone();
                all.push(soa(origin, self.ns_name(), serial, ttl));
                (origin.clone(), all)
            })
            .collect()
    }

    fn ns_name(&self) -> Name {
        // The NS record of the forward zone names the server; reverse zones reuse it.
        for records in self.zones.values() {
            for r in records {
                if let RData::NS(ns) = &r.data {
                    return ns.0.clone();
                }
            }
        }
        Name::root()
    }
}

fn soa(origin: &Name, ns: Name, serial: u32, ttl: u32) -> Record {
    let rname = Name::from_ascii("hostmaster")
        .ok()
        .and_then(|h| h.append_domain(&ns.base_name()).ok())
        .unwrap_or_else(Name::root);
    Record::from_rdata(
        origin.clone(),
        ttl,
        RData::SOA(SOA::new(ns, rname, serial, 3600, 600, 86_400, ttl)),
    )
}

/// Why a name or a record of the DNS configuration cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// DNS is on without a zone.
    #[error("dns.domain is required when DNS is enabled")]
    NoDomain,
    /// The zone is not a name.
    #[error("dns.domain {0:?}: {1}")]
    BadDomain(String, String),
    /// The zone is the root.
    #[error("dns.domain is the root: name a zone such as lab.example")]
    RootDomain,
    /// A name that is not one.
    #[error("invalid name {0:?}")]
    BadName(String),
    /// A name that is not one, and why.
    #[error("invalid name {0:?}: {1}")]
    BadNameBecause(String, String),
    /// A machine selector on a record type that holds no address.
    #[error("machines/profile select addresses: type must be A or AAAA")]
    NotAddressType,
    /// A record with nothing in it.
    #[error("needs value, values, machines or profile")]
    NoValue,
    /// An A value that is no IPv4 address.
    #[error("{0:?} is not an IPv4 address")]
    NotIpv4(String),
    /// An AAAA value that is no IPv6 address.
    #[error("{0:?} is not an IPv6 address")]
    NotIpv6(String),
    /// An SRV value of the wrong shape.
    #[error("SRV {0:?}: \"priority weight port target\"")]
    SrvShape(String),
    /// An SRV field that is no number.
    #[error("SRV {0:?}: {1:?} is not a number")]
    SrvNumber(String, String),
    /// A record type Kindling does not serve.
    #[error("type {0:?}: one of A, AAAA, CNAME, TXT, SRV")]
    UnknownType(String),
    /// A CNAME with several targets.
    #[error("a CNAME has one value")]
    CnameValues,
}

/// The configured domain as a name.
pub fn domain(config: &DnsConfig) -> Result<Name, ZoneError> {
    let d = config.domain.as_deref().ok_or(ZoneError::NoDomain)?;
    let mut name = Name::from_ascii(d.trim_end_matches('.'))
        .map_err(|e| ZoneError::BadDomain(d.to_string(), e.to_string()))?;
    name.set_fqdn(true);
    if name.num_labels() == 0 {
        return Err(ZoneError::RootDomain);
    }
    Ok(name)
}

/// `name` relative to `origin` (`@` is the origin, a final dot makes it absolute).
pub fn qualify(name: &str, origin: &Name) -> Result<Name, ZoneError> {
    let name = name.trim();
    if name == "@" {
        return Ok(origin.clone());
    }
    if name.is_empty() || name.len() > 253 {
        return Err(ZoneError::BadName(name.to_string()));
    }
    let because = |e: hickory_server::proto::ProtoError| {
        ZoneError::BadNameBecause(name.to_string(), e.to_string())
    };
    let n = Name::from_ascii(name).map_err(because)?;
    if name.ends_with('.') {
        return Ok(n);
    }
    n.append_domain(origin).map_err(because)
}

/// A hostname as one label of the zone: lower case, letters, digits and inner hyphens. An
/// FQDN inside the zone is accepted; anything else is not named.
fn host_label(hostname: &str, origin: &Name) -> Option<Name> {
    let h = hostname.trim().trim_end_matches('.').to_ascii_lowercase();
    let origin_text = origin.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let label = match h.strip_suffix(&format!(".{origin_text}")) {
        Some(l) => l.to_string(),
        None => h,
    };
    let ok = !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return None;
    }
    Name::from_ascii(&label).ok()?.append_domain(origin).ok()
}

/// The reverse zone origin for a network (octet boundary, at most /24).
pub fn reverse_origin(net: Ipv4Net) -> Name {
    let bits = (net.prefix_len() / 8 * 8).clamp(8, 24);
    let octets = net.network().octets();
    let mut labels: Vec<String> = octets[..usize::from(bits / 8)]
        .iter()
        .rev()
        .map(|o| o.to_string())
        .collect();
    labels.push("in-addr".into());
    labels.push("arpa".into());
    let mut n = Name::from_ascii(labels.join(".")).unwrap_or_else(|_| Name::root());
    n.set_fqdn(true);
    n
}

fn reverse_name(ip: Ipv4Addr) -> Name {
    let mut n = Name::from(ip);
    n.set_fqdn(true);
    n
}

/// Check the static configuration (at load, for `kindling check`): every problem found.
pub fn check(config: &DnsConfig) -> Vec<Issue> {
    let mut issues = Vec::new();
    if !config.enabled {
        return issues;
    }
    let origin = match domain(config) {
        Ok(o) => o,
        Err(e) => return vec![Issue::new("dns.domain", e.to_string())],
    };
    for (i, s) in config.upstreams.iter().enumerate() {
        if let Err(e) = crate::dns::server_addr(s) {
            issues.push(Issue::new(format!("dns.upstreams[{i}]"), e.to_string()));
        }
    }
    for (i, f) in config.forward.iter().enumerate() {
        let at = format!("dns.forward[{i}]");
        for s in &f.servers {
            if let Err(e) = crate::dns::server_addr(s) {
                issues.push(Issue::new(format!("{at}.servers"), e.to_string()));
            }
        }
        if let Err(e) = Name::from_ascii(f.zone.trim_end_matches('.')) {
            issues.push(Issue::new(
                format!("{at}.zone"),
                format!("dns.forward zone {:?}: {e}", f.zone),
            ));
        }
        if f.servers.is_empty() {
            issues.push(Issue::new(
                &at,
                format!("dns.forward zone {:?}: no servers", f.zone),
            ));
        }
    }
    for (i, r) in config.record.iter().enumerate() {
        if let Err(e) = static_records(r, &origin, config.ttl, &[]) {
            issues.push(Issue::new(
                format!("dns.record[{i}]"),
                format!("dns.record {:?}: {e}", r.name),
            ));
        }
    }
    issues
}

/// The records of one `[[dns.record]]`; `machine_ips` are the addresses its `machines`/`profile`
/// selector matched.
fn static_records(
    r: &StaticRecord,
    origin: &Name,
    default_ttl: Duration,
    machine_ips: &[IpAddr],
) -> Result<Vec<Record>, ZoneError> {
    let name = qualify(&r.name, origin)?;
    let ttl = u32::try_from(r.ttl.unwrap_or(default_ttl).as_secs()).unwrap_or(u32::MAX);
    let mut values: Vec<String> = r.values.clone();
    values.extend(r.value.clone());
    let by_machines = !r.machines.is_empty() || r.profile.is_some();
    let rtype = r.rtype.to_ascii_uppercase();
    if by_machines && !matches!(rtype.as_str(), "A" | "AAAA") {
        return Err(ZoneError::NotAddressType);
    }
    if values.is_empty() && !by_machines {
        return Err(ZoneError::NoValue);
    }
    let mut out = Vec::new();
    let rdata = |v: &str| -> Result<RData, ZoneError> {
        match rtype.as_str() {
            "A" => v
                .trim()
                .parse::<Ipv4Addr>()
                .map(|ip| RData::A(A(ip)))
                .map_err(|_| ZoneError::NotIpv4(v.to_string())),
            "AAAA" => v
                .trim()
                .parse::<std::net::Ipv6Addr>()
                .map(|ip| RData::AAAA(AAAA(ip)))
                .map_err(|_| ZoneError::NotIpv6(v.to_string())),
            "CNAME" => qualify(v, origin).map(|n| RData::CNAME(CNAME(n))),
            "TXT" => Ok(RData::TXT(TXT::new(txt_strings(v)))),
            "SRV" => {
                let parts: Vec<&str> = v.split_whitespace().collect();
                let [p, w, port, target] = parts[..] else {
                    return Err(ZoneError::SrvShape(v.to_string()));
                };
                let num = |s: &str| {
                    s.parse::<u16>()
                        .map_err(|_| ZoneError::SrvNumber(v.to_string(), s.to_string()))
                };
                Ok(RData::SRV(SRV::new(
                    num(p)?,
                    num(w)?,
                    num(port)?,
                    qualify(target, origin)?,
                )))
            }
            other => Err(ZoneError::UnknownType(other.to_string())),
        }
    };
    for v in &values {
        out.push(Record::from_rdata(name.clone(), ttl, rdata(v)?));
    }
    for ip in machine_ips {
        match (rtype.as_str(), ip) {
            ("A", IpAddr::V4(v4)) => {
                out.push(Record::from_rdata(name.clone(), ttl, RData::A(A(*v4))))
            }
            ("AAAA", IpAddr::V6(v6)) => {
                out.push(Record::from_rdata(
                    name.clone(),
                    ttl,
                    RData::AAAA(AAAA(*v6)),
                ));
            }
            _ => {}
        }
    }
    if rtype == "CNAME" && out.len() > 1 {
        return Err(ZoneError::CnameValues);
    }
    Ok(out)
}

/// A TXT value as character-strings of at most 255 bytes each (RFC 1035), cut at character
/// boundaries so that multi-byte UTF-8 survives.
fn txt_strings(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in v.chars() {
        if cur.len() + c.len_utf8() > 255 {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

/// Build every zone. `subnets` are the DHCP networks (for reverse zones); `now` in Unix
/// seconds decides which leases are live. Problems (a static record over no machine, a name
/// clash) are returned as warnings, never as a failure: DNS keeps serving.
pub fn build(
    config: &DnsConfig,
    profiles: &ProfileSet,
    leases: &[LeaseName],
    subnets: &[Ipv4Net],
    ns_ip: Option<IpAddr>,
    now: u64,
) -> (Zones, Vec<String>) {
    let mut warnings = Vec::new();
    let Ok(origin) = domain(config) else {
        return (Zones::default(), vec!["dns.domain is not set".into()]);
    };
    let ttl = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
    let mut forward: Vec<Record> = Vec::new();
    let ns = Name::from_ascii("ns")
        .ok()
        .and_then(|n| n.append_domain(&origin).ok())
        .unwrap_or_else(|| origin.clone());
    forward.push(Record::from_rdata(
        origin.clone(),
        ttl,
        RData::NS(NS(ns.clone())),
    ));
    match ns_ip {
        Some(IpAddr::V4(ip)) if !ip.is_unspecified() => {
            forward.push(Record::from_rdata(ns.clone(), ttl, RData::A(A(ip))));
        }
        Some(IpAddr::V6(ip)) if !ip.is_unspecified() => {
            forward.push(Record::from_rdata(ns.clone(), ttl, RData::AAAA(AAAA(ip))));
        }
        _ => {}
    }

    // name → address, profiles first.
    let mut names: BTreeMap<Name, IpAddr> = BTreeMap::new();
    let mut machines: Vec<_> = profiles.machines.values().collect();
    machines.sort_by_key(|m| m.mac);
    for m in &machines {
        let (Some(h), Some(ip)) = (&m.hostname, m.ip) else {
            continue;
        };
        match host_label(h, &origin) {
            Some(n) => {
                names.insert(n, ip);
            }
            None => warnings.push(format!(
                "machine {}: hostname {h:?} is not a name in {origin}",
                m.mac
            )),
        }
    }
    // Names a lease can never take: the server's own, the ones clients look up to find a
    // proxy or a tunnel (WPAD, ISATAP), and every static record's.
    let mut reserved: BTreeSet<Name> = RESERVED_LABELS
        .iter()
        .filter_map(|l| Name::from_ascii(l).ok()?.append_domain(&origin).ok())
        .collect();
    reserved.extend(
        config
            .record
            .iter()
            .filter_map(|r| qualify(&r.name, &origin).ok())
            .map(|n| n.to_lowercase()),
    );
    let mut live: Vec<&LeaseName> = leases.iter().filter(|l| l.expires > now).collect();
    // Of two leases with one name, the one expiring last wins.
    live.sort_by_key(|l| std::cmp::Reverse(l.expires));
    for l in live {
        let Some(n) = host_label(&l.hostname, &origin) else {
            continue;
        };
        if reserved.contains(&n) {
            warnings.push(format!(
                "lease {} asks for the name {n}, which is reserved: not named",
                l.ip
            ));
            continue;
        }
        names.entry(n).or_insert(IpAddr::V4(l.ip));
    }
    for (n, ip) in &names {
        forward.push(Record::from_rdata(
            n.clone(),
            ttl,
            match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            },
        ));
    }

    for r in &config.record {
        let ips: Vec<IpAddr> = if r.machines.is_empty() && r.profile.is_none() {
            Vec::new()
        } else {
            let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
            for m in &machines {
                let profile_ok = r
                    .profile
                    .as_ref()
                    .is_none_or(|p| profiles.profiles[m.profile].name == *p);
                let labels_ok = r.machines.iter().all(|(k, v)| m.labels.get(k) == Some(v));
                if profile_ok && labels_ok {
                    let ip = m.ip.or_else(|| {
                        m.hostname
                            .as_deref()
                            .and_then(|h| host_label(h, &origin))
                            .and_then(|n| names.get(&n).copied())
                    });
                    if let Some(ip) = ip {
                        ips.insert(ip);
                    }
                }
            }
            if ips.is_empty() {
                warnings.push(format!(
                    "dns.record {:?}: no machine with an address matches",
                    r.name
                ));
            }
            ips.into_iter().collect()
        };
        match static_records(r, &origin, config.ttl, &ips) {
            Ok(recs) => forward.extend(recs),
            Err(e) => warnings.push(format!("dns.record {:?}: {e}", r.name)),
        }
    }

    let mut zones = BTreeMap::new();
    // Reverse zones: configured networks, else a /24 per address.
    let mut nets: Vec<Ipv4Net> = subnets.to_vec();
    nets.extend(config.reverse_networks.iter().copied());
    let mut reverse: BTreeMap<Name, Vec<Record>> = BTreeMap::new();
    // The configured networks' reverse zones exist even when empty: a PTR query for a free
    // address gets NXDOMAIN here instead of leaking to the upstream servers.
    for net in &nets {
        let zone = reverse_origin(*net);
        reverse
            .entry(zone.clone())
            .or_insert_with(|| vec![Record::from_rdata(zone, ttl, RData::NS(NS(ns.clone())))]);
    }
    for (n, ip) in &names {
        let IpAddr::V4(v4) = ip else { continue };
        let net = nets
            .iter()
            .filter(|net| net.contains(v4))
            .max_by_key(|net| net.prefix_len())
            .copied()
            .unwrap_or_else(|| Ipv4Net::new(*v4, 24).map(|n| n.trunc()).unwrap_or_default());
        let zone = reverse_origin(net);
        let rec = Record::from_rdata(reverse_name(*v4), ttl, RData::PTR(PTR(n.clone())));
        let entry = reverse.entry(zone.clone()).or_default();
        if entry.is_empty() {
            entry.push(Record::from_rdata(zone, ttl, RData::NS(NS(ns.clone()))));
        }
        // One PTR per address: the first name (profiles before leases, then by name).
        if !entry.iter().any(|r| r.name == rec.name) {
            entry.push(rec);
        }
    }
    zones.insert(origin, forward);
    zones.extend(reverse);
    (Zones { zones }, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::{ProfileSet, Sources};

    fn profiles(text: &str) -> (tempfile::TempDir, ProfileSet) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        std::fs::write(dir.path().join("p/node.toml"), text).unwrap();
        let set = ProfileSet::load(
            &Sources {
                profiles: dir.path().join("p"),
                scripts: dir.path().join("none"),
            },
            "http://10.0.0.2:8080",
        )
        .unwrap();
        (dir, set)
    }

    fn config(extra: &str) -> DnsConfig {
        let text = format!("[dns]\nenabled = true\ndomain = \"lab.example\"\n{extra}");
        crate::config::Config::parse(std::path::Path::new("/k.toml"), &text)
            .unwrap()
            .dns
    }

    /// What `kindling check` says of a config's `[dns]` section.
    fn check_text(text: &str) -> String {
        match crate::config::Config::parse(std::path::Path::new("/k.toml"), text) {
            Ok(config) => config.diagnostics(&check(&config.dns)).to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn long_utf8_txt_values_are_cut_at_character_boundaries() {
        let v = "é".repeat(300);
        let parts = txt_strings(&v);
        assert!(
            parts.iter().all(|p| p.len() <= 255),
            "{:?}",
            parts.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(parts.concat(), v);
        assert_eq!(txt_strings(""), [""]);
        assert_eq!(txt_strings("v=spf1"), ["v=spf1"]);
    }

    fn names(z: &Zones) -> Vec<String> {
        let mut out: Vec<String> = z
            .zones
            .values()
            .flatten()
            .filter(|r| !matches!(r.data, RData::NS(_)))
            .map(|r| format!("{} {}", r.name, r.data))
            .collect();
        out.sort();
        out
    }

    const NODES: &str = "[boot]\nkernel = \"k\"\n\
        [[machine]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"node1\"\nip = \"10.0.0.11\"\n\
        [[machine]]\nmac = \"52:54:00:00:00:02\"\nhostname = \"node2.lab.example\"\nip = \"10.0.1.12\"\n";

    fn lease(h: &str, ip: [u8; 4], expires: u64) -> LeaseName {
        LeaseName {
            hostname: h.into(),
            ip: Ipv4Addr::from(ip),
            expires,
        }
    }

    /// `wpad`, `ns` and a static record's name cannot be taken by a lease (DHCP option 12).
    #[test]
    fn reserved_and_static_names_cannot_be_taken_by_a_lease() {
        let (_d, set) = profiles(NODES);
        let cfg =
            config("[[dns.record]]\nname = \"grafana\"\ntype = \"A\"\nvalue = \"10.0.0.5\"\n");
        let leases = [
            lease("wpad", [10, 0, 0, 66], 1_000),
            lease("NS", [10, 0, 0, 67], 1_000),
            lease("isatap", [10, 0, 0, 68], 1_000),
            lease("grafana", [10, 0, 0, 69], 1_000),
            lease("fine", [10, 0, 0, 70], 1_000),
        ];
        let (zones, warnings) = build(&cfg, &set, &leases, &[], Some([10, 0, 0, 2].into()), 800);
        let all = names(&zones);
        for (taken, ip) in [
            ("wpad", "10.0.0.66"),
            ("ns", "10.0.0.67"),
            ("isatap", "10.0.0.68"),
        ] {
            assert!(!all.iter().any(|r| r.contains(ip)), "{taken}: {all:?}");
        }
        assert!(
            !all.iter()
                .any(|r| r.starts_with("wpad.") || r.starts_with("isatap."))
        );
        assert!(
            all.contains(&"grafana.lab.example. 10.0.0.5".to_string()),
            "{all:?}"
        );
        assert!(!all.iter().any(|r| r.contains("10.0.0.69")), "{all:?}");
        assert!(
            all.contains(&"fine.lab.example. 10.0.0.70".to_string()),
            "{all:?}"
        );
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        // The server's own NS address is the only A record of ns.
        let ns: Vec<String> = zones
            .zones
            .values()
            .flatten()
            .filter(|r| r.name.to_string() == "ns.lab.example.")
            .map(|r| r.data.to_string())
            .collect();
        assert_eq!(ns, ["10.0.0.2"]);
    }

    #[test]
    fn lease_names_come_and_go_with_their_leases() {
        let (_d, set) = profiles(NODES);
        let cfg = config("");
        let leases = [
            lease("Box-7", [10, 0, 0, 107], 1_000),
            lease("node1", [10, 0, 0, 99], 1_000), // the profile's name wins
            lease("bad_name!", [10, 0, 0, 98], 1_000),
            lease("dup", [10, 0, 0, 50], 900),
            lease("dup", [10, 0, 0, 51], 950), // the later expiry wins
        ];
        let subnets = ["10.0.0.0/24".parse().unwrap()];
        let (live, warnings) = build(&cfg, &set, &leases, &subnets, None, 800);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            names(&live),
            [
                "107.0.0.10.in-addr.arpa. box-7.lab.example.",
                "11.0.0.10.in-addr.arpa. node1.lab.example.",
                "12.1.0.10.in-addr.arpa. node2.lab.example.",
                "51.0.0.10.in-addr.arpa. dup.lab.example.",
                "box-7.lab.example. 10.0.0.107",
                "dup.lab.example. 10.0.0.51",
                "node1.lab.example. 10.0.0.11",
                "node2.lab.example. 10.0.1.12",
            ]
        );
        // Reverse zones: the DHCP subnet, and a /24 for an address outside it.
        let origins: Vec<String> = live.zones.keys().map(ToString::to_string).collect();
        assert_eq!(
            origins,
            [
                "0.0.10.in-addr.arpa.",
                "1.0.10.in-addr.arpa.",
                "lab.example."
            ]
        );
        // Time passes: the leases expire, the profile names stay.
        let (expired, _) = build(&cfg, &set, &leases, &subnets, None, 1_000);
        assert_eq!(
            names(&expired),
            [
                "11.0.0.10.in-addr.arpa. node1.lab.example.",
                "12.1.0.10.in-addr.arpa. node2.lab.example.",
                "node1.lab.example. 10.0.0.11",
                "node2.lab.example. 10.0.1.12",
            ]
        );
        assert_ne!(live, expired);
    }

    #[test]
    fn reverse_origins_round_to_octets() {
        let o = |n: &str| reverse_origin(n.parse().unwrap()).to_string();
        assert_eq!(o("10.1.2.0/24"), "2.1.10.in-addr.arpa.");
        assert_eq!(o("10.1.0.0/20"), "1.10.in-addr.arpa.");
        assert_eq!(o("10.0.0.0/8"), "10.in-addr.arpa.");
        assert_eq!(o("10.1.2.128/25"), "2.1.10.in-addr.arpa.");
    }

    #[test]
    fn static_records_and_their_errors() {
        let (_d, set) = profiles(NODES);
        let cfg = config(
            "[[dns.record]]\nname = \"*.apps\"\ntype = \"A\"\nprofile = \"node\"\n\
             [[dns.record]]\nname = \"ext.\"\ntype = \"AAAA\"\nvalue = \"fd00::1\"\nttl = \"5m\"\n",
        );
        let (z, w) = build(&cfg, &set, &[], &[], Some("10.0.0.2".parse().unwrap()), 0);
        assert!(w.is_empty(), "{w:?}");
        let all = names(&z);
        assert!(
            all.contains(&"*.apps.lab.example. 10.0.0.11".to_string()),
            "{all:?}"
        );
        assert!(
            all.contains(&"*.apps.lab.example. 10.0.1.12".to_string()),
            "{all:?}"
        );
        assert!(all.contains(&"ext. fd00::1".to_string()), "{all:?}");
        assert!(
            all.contains(&"ns.lab.example. 10.0.0.2".to_string()),
            "{all:?}"
        );
        for (extra, want) in [
            (
                "[[dns.record]]\nname = \"a\"\ntype = \"A\"\nvalue = \"10.0.0.300\"\n",
                "is not an IPv4",
            ),
            (
                "[[dns.record]]\nname = \"a\"\ntype = \"MX\"\nvalue = \"x\"\n",
                "one of A, AAAA",
            ),
            (
                "[[dns.record]]\nname = \"a\"\ntype = \"SRV\"\nvalue = \"1 2 x\"\n",
                "priority weight port target",
            ),
            (
                "[[dns.record]]\nname = \"a\"\ntype = \"CNAME\"\nvalues = [\"b\", \"c\"]\n",
                "one value",
            ),
            (
                "[[dns.record]]\nname = \"a\"\ntype = \"TXT\"\nmachines = { r = \"x\" }\n",
                "must be A or AAAA",
            ),
            (
                "[[dns.record]]\nname = \"a\"\ntype = \"A\"\n",
                "needs value",
            ),
            ("upstreams = [\"1.2.3.4:x\"]\n", "not IP or IP:port"),
        ] {
            let text = format!("[dns]\nenabled = true\ndomain = \"lab.example\"\n{extra}");
            let err = check_text(&text);
            assert!(err.contains(want), "{extra}: {err}");
        }
        let err = check_text("[dns]\nenabled = true\n");
        assert!(err.contains("dns.domain is required"), "{err}");
    }
}
