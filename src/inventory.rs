//! The shared view of machines: what each one has reported and what it was last served.
//!
//! For now an in-memory record per MAC; the durable inventory with boot states comes later.
//! It already solves one real problem: iPXE's `/ipxe` request carries arch, platform and UUID,
//! but the OS's `/ignition?mac=...` fetch carries only the MAC. Remembering the facts lets a
//! selector on arch or UUID choose the same profile for both. Free-form labels are not
//! remembered: they are per request (Matchbox semantics, e.g. `os=installed`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::mac::MacAddr;
use crate::profiles::Facts;

/// Records kept at most; beyond this the least recently seen is forgotten, so a flood of
/// made-up MACs over HTTP cannot grow memory without bound.
const MAX_MACHINES: usize = 65_536;

/// What Kindling knows about one machine.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// The machine's MAC.
    pub mac: MacAddr,
    /// SMBIOS UUID.
    pub uuid: Option<String>,
    /// iPXE build architecture.
    pub arch: Option<String>,
    /// Firmware platform.
    pub platform: Option<String>,
    /// Hostname the machine reported.
    pub hostname: Option<String>,
    /// Hardware facts iPXE reported: serial, manufacturer, product, memory.
    pub hardware: HashMap<String, String>,
    /// The profile it was last served.
    pub profile: Option<String>,
    /// What it was last served (`ipxe`, `ignition`, ...).
    pub last_served: Option<String>,
    /// When it was last seen.
    #[serde(serialize_with = "crate::time_fmt::serialize")]
    pub last_seen: SystemTime,
    /// The address DHCP gave it.
    pub ip: Option<std::net::Ipv4Addr>,
    /// The last DHCP event (`discover`, `offer`, `ack`, `nak`, `decline`, `release`, ...).
    pub dhcp_event: Option<String>,
    /// Option 60 vendor class.
    pub vendor_class: Option<String>,
    /// Option 97 client GUID, hex.
    pub guid: Option<String>,
    /// Option 93 architecture code.
    pub arch_code: Option<u16>,
    /// What the machine last reported about itself (`provisioned`, ...).
    pub state: Option<String>,
    /// When it last reported.
    #[serde(with = "crate::time_fmt::option")]
    pub reported_at: Option<SystemTime>,
    /// When it first reported `provisioned`.
    #[serde(with = "crate::time_fmt::option")]
    pub provisioned_at: Option<SystemTime>,
    /// When Kindling last sent it a Wake-on-LAN packet.
    #[serde(with = "crate::time_fmt::option")]
    pub woken_at: Option<SystemTime>,
}

/// What a DHCP exchange tells the inventory.
#[derive(Debug, Clone, Default)]
pub struct DhcpSeen {
    /// The event: `discover`, `offer`, `ack`, `nak`, `decline`, `release`, `inform`.
    pub event: &'static str,
    /// The address given (or declined/released).
    pub ip: Option<std::net::Ipv4Addr>,
    /// Option 60.
    pub vendor_class: Option<String>,
    /// Option 97, hex.
    pub guid: Option<String>,
    /// Option 93.
    pub arch_code: Option<u16>,
    /// Option 12 or the profile's hostname.
    pub hostname: Option<String>,
}

/// Keys of the request that are hardware facts (kept in the record).
const HARDWARE_KEYS: &[&str] = &["serial", "manufacturer", "product", "memory"];

/// Every machine seen, by MAC.
#[derive(Debug, Default)]
pub struct Inventory {
    /// A std mutex: held only for map operations, never across `.await`.
    machines: Mutex<HashMap<MacAddr, Record>>,
}

impl Inventory {
    /// Merge what a request reports into the machine's record, and return the facts with
    /// gaps filled from what the machine reported before.
    pub fn observe(&self, mut facts: Facts, now: SystemTime) -> Facts {
        let mut map = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&facts.mac)
            && map.len() >= MAX_MACHINES
            && let Some(oldest) = map.values().min_by_key(|r| r.last_seen).map(|r| r.mac)
        {
            map.remove(&oldest);
        }
        let rec = map.entry(facts.mac).or_insert_with(|| Record {
            mac: facts.mac,
            uuid: None,
            arch: None,
            platform: None,
            hostname: None,
            hardware: HashMap::new(),
            profile: None,
            last_served: None,
            last_seen: now,
            ip: None,
            dhcp_event: None,
            vendor_class: None,
            guid: None,
            arch_code: None,
            state: None,
            reported_at: None,
            provisioned_at: None,
            woken_at: None,
        });
        rec.last_seen = now;
        merge(&mut rec.uuid, &mut facts.uuid);
        merge(&mut rec.arch, &mut facts.arch);
        merge(&mut rec.platform, &mut facts.platform);
        merge(&mut rec.hostname, &mut facts.hostname);
        for key in HARDWARE_KEYS {
            if let Some(v) = facts.labels.get(*key) {
                rec.hardware.insert(key.to_string(), v.clone());
            }
        }
        facts
    }

    /// Record a DHCP event for `mac` (creating its record).
    pub fn dhcp(&self, mac: MacAddr, seen: DhcpSeen, now: SystemTime) {
        self.observe(Facts::from_mac(mac), now);
        let mut map = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rec) = map.get_mut(&mac) {
            rec.dhcp_event = Some(seen.event.to_string());
            if seen.ip.is_some() {
                rec.ip = seen.ip;
            }
            if seen.vendor_class.is_some() {
                rec.vendor_class = seen.vendor_class;
            }
            if seen.guid.is_some() {
                rec.guid = seen.guid;
            }
            if seen.arch_code.is_some() {
                rec.arch_code = seen.arch_code;
            }
            if seen.hostname.is_some() {
                rec.hostname = seen.hostname;
            }
        }
    }

    /// Note what a machine was served.
    pub fn served(&self, mac: MacAddr, profile: &str, what: &str) {
        let mut map = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rec) = map.get_mut(&mac) {
            rec.profile = Some(profile.to_string());
            rec.last_served = Some(what.to_string());
        }
    }

    /// The machine DHCP last gave `ip` to (TFTP knows only the client's address).
    pub fn mac_by_ip(&self, ip: std::net::Ipv4Addr) -> Option<MacAddr> {
        let map = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|r| r.ip == Some(ip))
            .max_by_key(|r| r.last_seen)
            .map(|r| r.mac)
    }

    /// Record that `mac` fetched `what` (e.g. `tftp:ipxe.efi`).
    pub fn fetched(&self, mac: MacAddr, what: &str, now: SystemTime) {
        let mut map = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rec) = map.get_mut(&mac) {
            rec.last_served = Some(what.to_string());
            rec.last_seen = now;
        }
    }

    /// The machine reported `state` (and the hostname it runs as).
    pub fn report(&self, mac: MacAddr, state: &str, hostname: Option<String>, now: SystemTime) {
        self.observe(Facts::from_mac(mac), now);
        let mut map = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rec) = map.get_mut(&mac) {
            rec.state = Some(state.to_string());
            rec.reported_at = Some(now);
            if state == "provisioned" && rec.provisioned_at.is_none() {
                rec.provisioned_at = Some(now);
            }
            if hostname.is_some() {
                rec.hostname = hostname;
            }
        }
    }

    /// Kindling sent `mac` a magic packet: its state is `waking`.
    pub fn woken(&self, mac: MacAddr, now: SystemTime) {
        self.observe(Facts::from_mac(mac), now);
        let mut map = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rec) = map.get_mut(&mac) {
            rec.state = Some("waking".into());
            rec.woken_at = Some(now);
        }
    }

    /// A copy of one machine's record.
    pub fn get(&self, mac: MacAddr) -> Option<Record> {
        self.machines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&mac)
            .cloned()
    }

    /// How many machines are known.
    pub fn len(&self) -> usize {
        self.machines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether no machine is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A newly reported value replaces the stored one; a missing one is filled from it.
fn merge(stored: &mut Option<String>, reported: &mut Option<String>) {
    match reported {
        Some(v) => *stored = Some(v.clone()),
        None => reported.clone_from(stored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_requests_inherit_earlier_facts() {
        let inv = Inventory::default();
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let mut first = Facts::from_mac(mac);
        first.arch = Some("x86_64".into());
        first.uuid = Some("u1".into());
        first.labels.insert("serial".into(), "S1".into());
        inv.observe(first, SystemTime::now());
        let later = inv.observe(Facts::from_mac(mac), SystemTime::now());
        assert_eq!(later.arch.as_deref(), Some("x86_64"));
        assert_eq!(later.uuid.as_deref(), Some("u1"));
        assert!(later.labels.is_empty(), "labels are per request");
        let mut changed = Facts::from_mac(mac);
        changed.arch = Some("arm64".into());
        assert_eq!(
            inv.observe(changed, SystemTime::now()).arch.as_deref(),
            Some("arm64")
        );
        assert_eq!(inv.get(mac).unwrap().hardware["serial"], "S1");
    }

    #[test]
    fn bounded() {
        let inv = Inventory::default();
        let t0 = SystemTime::UNIX_EPOCH;
        for i in 0..(MAX_MACHINES as u32 + 10) {
            let b = i.to_be_bytes();
            let mac = MacAddr([2, 0, b[0], b[1], b[2], b[3]]);
            inv.observe(
                Facts::from_mac(mac),
                t0 + std::time::Duration::from_secs(u64::from(i)),
            );
        }
        assert_eq!(inv.len(), MAX_MACHINES);
        assert!(
            inv.get(MacAddr([2, 0, 0, 0, 0, 0])).is_none(),
            "oldest evicted"
        );
    }
}
