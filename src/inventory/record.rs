//! What the inventory keeps per machine: the record, its history and wake, the short form the
//! API lists, and the operator's one-shot next boot.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::boot_state::{BootState, DhcpClient, Status};
use crate::mac::MacAddr;
use crate::time_fmt::Stamp;

/// What an operator chose for a machine's next boot (one shot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "boot", rename_all = "lowercase", deny_unknown_fields)]
pub enum NextBoot {
    /// Its own profile's netboot, even if it was provisioned (`reinstall`).
    Install,
    /// Its local disk.
    Local,
    /// Another profile's netboot.
    Profile {
        /// The profile's name.
        profile: String,
    },
}

/// How a wake went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeOutcome {
    /// Sent; no DHCP from the machine yet, still within the limit.
    Pending,
    /// Its DHCP DISCOVER arrived within the limit.
    Answered,
    /// It arrived, but after the limit.
    Late,
    /// Nothing arrived within the limit.
    Unanswered,
}

/// The last magic packet sent to a machine and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wake {
    /// When it was sent.
    pub sent_at: Stamp,
    /// The limit for its DHCP DISCOVER (`[inventory.stall_after] waking`).
    pub within_s: f64,
    /// How it went.
    pub outcome: WakeOutcome,
    /// Seconds from the packet to its first DHCP message.
    pub answered_after_s: Option<f64>,
    /// Seconds from the packet to `provisioned`.
    pub provisioned_after_s: Option<f64>,
}

/// One entry of a machine's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When (the latest occurrence, for repeats).
    pub at: Stamp,
    /// Which service saw it: `dhcp`, `tftp`, `http`, `wol`, `report`, `api`, `timeout`.
    pub source: String,
    /// What happened, e.g. `ack 10.0.0.5` or `served ipxe (profile worker)`.
    pub event: String,
    /// The state before, when this event changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<BootState>,
    /// The state after.
    pub state: BootState,
    /// How many times in a row it happened (retransmissions are folded).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Everything Kindling knows about one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The machine's MAC.
    pub mac: MacAddr,
    /// Its profile: from its `[[machine]]` entry, else the one it was last served.
    pub profile: Option<String>,
    /// Whether a profile declares it in a `[[machine]]` entry.
    #[serde(default)]
    pub declared: bool,
    /// Its hostname: the profile's, else what it reported or sent in DHCP option 12.
    pub hostname: Option<String>,
    /// The address DHCP gave it (or it fetched from).
    pub ip: Option<Ipv4Addr>,
    /// Labels from its `[[machine]]` entry (for waking groups).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// SMBIOS UUID (iPXE).
    pub uuid: Option<String>,
    /// iPXE build architecture.
    pub arch: Option<String>,
    /// Firmware platform (`efi`, `pcbios`).
    pub platform: Option<String>,
    /// Hardware facts iPXE reported: serial, manufacturer, product, memory.
    #[serde(default)]
    pub hardware: BTreeMap<String, String>,
    /// DHCP option 60.
    pub vendor_class: Option<String>,
    /// DHCP option 97 (client GUID), hex.
    pub guid: Option<String>,
    /// DHCP option 93 architecture code.
    pub arch_code: Option<u16>,
    /// Its boot state.
    pub state: BootState,
    /// For `stalled`: the phase it stalled in.
    pub stalled_in: Option<BootState>,
    /// When it entered its current state.
    pub state_since: Stamp,
    /// When it last entered each state.
    #[serde(default)]
    pub entered: BTreeMap<BootState, Stamp>,
    /// Whether it has ever reported `provisioned` (its profile's `after_provision` applies).
    #[serde(default)]
    pub provisioned: bool,
    /// When it last reported `provisioned`.
    pub provisioned_at: Option<Stamp>,
    /// The last state its OS reported (free text: `provisioned`, `booting`, ...).
    pub reported: Option<String>,
    /// When it last reported.
    pub reported_at: Option<Stamp>,
    /// The last magic packet and what came of it.
    pub wake: Option<Wake>,
    /// The operator's one-shot choice for its next boot.
    pub next_boot: Option<NextBoot>,
    /// The profile its last `/ipxe` came from when that was not its selected one (next boot
    /// or `after_provision`): its configs come from there too.
    pub booting_profile: Option<String>,
    /// What it was last served (`ipxe`, `ignition`, `tftp:ipxe.efi`, ...).
    pub last_served: Option<String>,
    /// The last DHCP event (`discover`, `offer`, `ack`, `nak`, `decline`, `release`, ...).
    pub dhcp_event: Option<String>,
    /// Who sent the last DHCP message: the firmware, iPXE or an OS.
    #[serde(default)]
    pub dhcp_client: Option<DhcpClient>,
    /// When Kindling first heard of it.
    pub first_seen: Stamp,
    /// When it was last seen.
    pub last_seen: Stamp,
    /// Bumped on every write to the store (by any instance): of two versions of a record with
    /// the same `last_seen` (two writes within a millisecond, or a change that is not a
    /// sighting, such as a wake), the higher is the later.
    #[serde(default)]
    pub version: u64,
    /// The latest events, oldest first.
    #[serde(default)]
    pub history: VecDeque<HistoryEntry>,
    /// The address Kindling's DHCP gave it or saw it use (never one an HTTP request claimed):
    /// requests from there are the machine's own.
    #[serde(default)]
    pub dhcp_ip: Option<Ipv4Addr>,
    /// The secret of its current boot (stored, so it survives a restart; never shown by the
    /// API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<BootSecret>,
}

/// A machine's per-boot secret: minted when its boot script is served to it, rendered into
/// the URLs it is handed, and required (or the machine's own address) for its configs and
/// its report until the next boot or [`BootSecret::TTL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSecret {
    /// 128 random bits, hex.
    pub token: String,
    /// When it was minted.
    pub minted: Stamp,
    /// The address the boot script went to (what binds the machine when Kindling's DHCP does
    /// not know it).
    pub source: Option<Ipv4Addr>,
}

impl BootSecret {
    /// How long a boot's secret lasts at most.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

    /// Whether it still counts at `now`.
    pub fn live(&self, now: SystemTime) -> bool {
        now.duration_since(self.minted.0)
            .is_ok_and(|age| age < Self::TTL)
    }
}

impl Record {
    /// Whether its firmware or iPXE runs now, not an OS: it is in `dhcp`, `firmware` or
    /// `discovered` (or stalled in one of the first two), and its last DHCP message came from
    /// its firmware or iPXE. A machine that fetched its kernel, or was served its script, may
    /// run its OS at any moment; so may one whose OS asked for an address.
    pub fn in_firmware(&self) -> bool {
        let phase = match self.state {
            BootState::Stalled => self.stalled_in.unwrap_or(BootState::Stalled),
            state => state,
        };
        matches!(
            self.dhcp_client,
            Some(DhcpClient::Firmware | DhcpClient::Ipxe)
        ) && matches!(
            phase,
            BootState::Dhcp | BootState::Firmware | BootState::Discovered
        )
    }

    pub(super) fn new(mac: MacAddr, now: SystemTime) -> Record {
        Record {
            mac,
            profile: None,
            declared: false,
            hostname: None,
            ip: None,
            labels: BTreeMap::new(),
            uuid: None,
            arch: None,
            platform: None,
            hardware: BTreeMap::new(),
            vendor_class: None,
            guid: None,
            arch_code: None,
            state: BootState::Unknown,
            stalled_in: None,
            state_since: Stamp(now),
            entered: BTreeMap::new(),
            provisioned: false,
            provisioned_at: None,
            reported: None,
            reported_at: None,
            wake: None,
            next_boot: None,
            booting_profile: None,
            last_served: None,
            dhcp_event: None,
            dhcp_client: None,
            first_seen: Stamp(now),
            last_seen: Stamp(now),
            version: 0,
            history: VecDeque::new(),
            dhcp_ip: None,
            secret: None,
        }
    }

    pub(super) fn status(&self) -> Status {
        Status {
            state: self.state,
            stalled_in: self.stalled_in,
            provisioned_before: self.provisioned,
        }
    }

    /// The short form listed by `GET /api/v1/machines`.
    pub fn summary(&self) -> Summary {
        Summary {
            mac: self.mac,
            hostname: self.hostname.clone(),
            profile: self.profile.clone(),
            ip: self.ip,
            state: self.state,
            stalled_in: self.stalled_in,
            state_since: self.state_since,
            provisioned: self.provisioned,
            next_boot: self.next_boot.clone(),
            labels: self.labels.clone(),
            last_seen: self.last_seen,
            arch: self.arch.clone(),
            platform: self.platform.clone(),
            hardware: self.hardware.clone(),
            entered: self.entered.clone(),
            provisioned_at: self.provisioned_at,
            wake: self.wake.clone(),
            power: None,
            bmc: false,
        }
    }
}

/// A machine in a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Its MAC.
    pub mac: MacAddr,
    /// Its hostname.
    pub hostname: Option<String>,
    /// Its profile.
    pub profile: Option<String>,
    /// Its address.
    pub ip: Option<Ipv4Addr>,
    /// Its boot state.
    pub state: BootState,
    /// For `stalled`: the phase.
    pub stalled_in: Option<BootState>,
    /// When it entered the state.
    pub state_since: Stamp,
    /// Whether it has been provisioned.
    pub provisioned: bool,
    /// The one-shot next boot, if set.
    pub next_boot: Option<NextBoot>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When it was last seen.
    pub last_seen: Stamp,
    /// Its CPU architecture, as iPXE reported it.
    #[serde(default)]
    pub arch: Option<String>,
    /// Its firmware (`pcbios`, `efi`), as iPXE reported it.
    #[serde(default)]
    pub platform: Option<String>,
    /// Hardware facts it reported (manufacturer, product, serial, memory).
    #[serde(default)]
    pub hardware: BTreeMap<String, String>,
    /// When it last entered each state (the dashboard's timeline and wake→provisioned times).
    #[serde(default)]
    pub entered: BTreeMap<BootState, Stamp>,
    /// When it was last provisioned.
    #[serde(default)]
    pub provisioned_at: Option<Stamp>,
    /// The last magic packet sent to it and what came of it.
    #[serde(default)]
    pub wake: Option<Wake>,
    /// What its BMC last said about its power (machines with a BMC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerReading>,
    /// Whether it has a BMC setting (its wake and power go through the BMC); filled by the
    /// API from the profiles.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bmc: bool,
}

pub use crate::events::PowerReading;

/// What a DHCP exchange tells the inventory.
#[derive(Debug, Clone)]
pub struct DhcpSeen {
    /// `discover`, `offer`, `ack`, `nak`, `decline`, `release`, `inform`, `proxy_offer`, ...
    pub event: &'static str,
    /// Which kind of client sent it.
    pub client: DhcpClient,
    /// Its profile; `None` when no profile matches it.
    pub profile: Option<String>,
    /// The address given (or declined/released).
    pub ip: Option<Ipv4Addr>,
    /// Option 60.
    pub vendor_class: Option<String>,
    /// Option 97, hex.
    pub guid: Option<String>,
    /// Option 93.
    pub arch_code: Option<u16>,
    /// Option 12 or the profile's hostname.
    pub hostname: Option<String>,
    /// Kindling's DHCP leased `ip` to the machine (a full-mode ACK): its record is made even
    /// beyond the discovery budget, since the pool bounds how many such machines there are.
    /// Else a storm of new machines would leave some unrecorded at their ACK, and their boot
    /// script, not from "the machine's address", would be refused.
    pub leased: bool,
}

/// Filters of [`Inventory::list`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only machines in this state.
    pub state: Option<BootState>,
    /// Only machines of this profile.
    pub profile: Option<String>,
}

/// Append to a bounded history, folding an exact repeat of the last entry into it.
pub(super) fn push_history(history: &mut VecDeque<HistoryEntry>, max: usize, entry: HistoryEntry) {
    if let Some(last) = history.back_mut()
        && entry.from.is_none()
        && last.from.is_none()
        && last.source == entry.source
        && last.event == entry.event
        && last.state == entry.state
    {
        last.at = entry.at;
        last.count = last.count.saturating_add(1);
        return;
    }
    history.push_back(entry);
    while history.len() > max.max(1) {
        history.pop_front();
    }
}

/// Whether a file name is an iPXE (or other network boot program) binary.
pub fn is_ipxe_binary(file: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file).to_ascii_lowercase();
    name.ends_with(".efi")
        || name.ends_with(".kpxe")
        || name.ends_with(".pxe")
        || name.ends_with(".lkrn")
        || name.ends_with(".0")
}

/// A newly reported value replaces the stored one; a missing one is filled from it.
/// Returns whether the stored value changed.
pub(super) fn merge(stored: &mut Option<String>, reported: &mut Option<String>) -> bool {
    match reported {
        Some(v) if stored.as_ref() != Some(v) => {
            *stored = Some(v.clone());
            true
        }
        Some(_) => false,
        None => {
            reported.clone_from(stored);
            false
        }
    }
}
