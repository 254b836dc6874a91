//! The inventory: one record per machine, its boot state, and the events every service feeds
//! it.
//!
//! - **Records** hold what Kindling knows of a machine (MAC, profile, hostname, IP, firmware,
//!   GUID/UUID, the hardware facts iPXE reported), its boot state with the time it entered
//!   each one, and a bounded history of events. Machines declared in profiles have a record
//!   from the start (`unknown`); one that boots and matches no profile is `discovered`.
//! - **Steps** come from the services (DHCP, TFTP, HTTP, Wake-on-LAN, the OS's report) and go
//!   through the pure state machine in [`state`]. A change of state and the event that
//!   announces it happen under one lock, so subscribers see transitions in order.
//! - **Durability**: changed records are written to redb (see [`store`]) by one writer task in
//!   batches; [`Inventory::flushed`] waits until everything changed so far is on disk.
//! - **Timeouts**: a sweeper marks machines `stalled` when a phase outlasts its limit. Time
//!   comes from tokio's clock (anchored to the wall clock at start), so tests can pause it.
//! - **Next boot**: an operator's one-shot choice, and the profile's `after_provision`, decide
//!   what `/ipxe` serves (see [`plan`]).
//!
//! The facts iPXE reports on `/ipxe` (arch, platform, UUID) are remembered too: the OS's later
//! `/ignition?mac=` request carries only the MAC, and the remembered facts make it reach the
//! same profile. Free-form labels are per request (Matchbox semantics, e.g. `os=installed`).

pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::boot_state as state;
pub use crate::boot_state::{BootState, DhcpClient, Step, Timeouts};
use crate::mac::MacAddr;
use crate::metrics::Metrics;
pub use crate::profiles::AfterProvision;
use crate::profiles::{Facts, ProfileSet};
use crate::time_fmt::Stamp;
use store::InventoryStore;

/// Records kept at most; beyond this the least recently seen machine that no profile declares
/// is forgotten, so a flood of made-up MACs cannot grow memory without bound.
pub const MAX_MACHINES: usize = 65_536;

/// Keys of the `/ipxe` request that are hardware facts (kept in the record).
const HARDWARE_KEYS: &[&str] = &["serial", "manufacturer", "product", "memory"];

/// The writer's pause after a commit, so a burst of changes is written as one batch. Leases
/// are durable before their ACK on their own; the OS's report and API changes wait for the
/// commit (`flushed`).
const WRITE_GATHER: Duration = Duration::from_millis(100);

/// Transitions buffered for slow event subscribers; one that falls further behind resyncs.
const EVENT_BUFFER: usize = 4096;

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

/// What `/ipxe` serves a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The profile its selectors choose.
    Selected,
    /// Boot from its local disk.
    Local,
    /// This profile instead.
    Profile(String),
}

/// Decide what `/ipxe` serves: the operator's one-shot choice first, then the profile's
/// after-provision rule once the machine has been provisioned, else its selected profile.
pub fn plan(next: Option<&NextBoot>, provisioned: bool, after: Option<&AfterProvision>) -> Plan {
    match (next, provisioned, after) {
        (Some(NextBoot::Install), _, _) => Plan::Selected,
        (Some(NextBoot::Local), _, _) => Plan::Local,
        (Some(NextBoot::Profile { profile }), _, _) => Plan::Profile(profile.clone()),
        (None, true, Some(AfterProvision::Local)) => Plan::Local,
        (None, true, Some(AfterProvision::Profile(p))) => Plan::Profile(p.clone()),
        (None, _, _) => Plan::Selected,
    }
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
    /// When Kindling first heard of it.
    pub first_seen: Stamp,
    /// When it was last seen.
    pub last_seen: Stamp,
    /// The latest events, oldest first.
    #[serde(default)]
    pub history: VecDeque<HistoryEntry>,
}

impl Record {
    fn new(mac: MacAddr, now: SystemTime) -> Record {
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
            first_seen: Stamp(now),
            last_seen: Stamp(now),
            history: VecDeque::new(),
        }
    }

    fn status(&self) -> state::Status {
        state::Status {
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
}

/// A change of boot state, as streamed by `GET /api/v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The machine.
    pub mac: MacAddr,
    /// Its state before.
    pub from: BootState,
    /// Its state now.
    pub to: BootState,
    /// For `stalled`: the phase.
    pub stalled_in: Option<BootState>,
    /// When.
    pub at: Stamp,
    /// Which service saw the event.
    pub source: String,
    /// The event.
    pub event: String,
    /// Its hostname.
    pub hostname: Option<String>,
    /// Its profile.
    pub profile: Option<String>,
}

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

/// Inventory settings (`[inventory]` in `kindling.toml`).
pub type Settings = crate::config::InventoryConfig;

/// Wall-clock time that advances with tokio's clock, so paused-time tests drive timeouts.
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall: SystemTime,
    mono: tokio::time::Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            wall: SystemTime::now(),
            mono: tokio::time::Instant::now(),
        }
    }

    /// Now, to the millisecond: what the store keeps, so a record reads back equal.
    fn now(&self) -> SystemTime {
        let t = self.wall + self.mono.elapsed();
        let ms = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

#[derive(Debug, Default)]
struct Inner {
    machines: HashMap<MacAddr, Record>,
    /// The machine each address was last seen with (DHCP, or an HTTP request naming its MAC).
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    /// Changed since the writer last ran; a MAC without a record is a deletion.
    dirty: HashSet<MacAddr>,
    /// Bumped on every change to `dirty`.
    generation: u64,
    /// The profile set the declared machines were last synced from (its address and time).
    synced: Option<(usize, SystemTime)>,
}

/// Every machine, its state and history; shared by all services.
pub struct Inventory {
    /// A std mutex: held for map operations only, never across `.await`.
    inner: Mutex<Inner>,
    events: broadcast::Sender<Transition>,
    clock: Clock,
    settings: Settings,
    metrics: Option<Arc<Metrics>>,
    /// Wakes the writer.
    changed: Notify,
    /// The generation the writer last committed.
    committed: watch::Sender<u64>,
    /// Whether a writer runs (without one, nothing waits for disk).
    persistent: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("machines", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory::new(Settings::default(), None)
    }
}

impl Inventory {
    /// An empty inventory.
    pub fn new(settings: Settings, metrics: Option<Arc<Metrics>>) -> Inventory {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Inventory {
            inner: Mutex::new(Inner::default()),
            events,
            clock: Clock::new(),
            settings,
            metrics,
            changed: Notify::new(),
            committed: watch::Sender::new(0),
            persistent: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The inventory's idea of now.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Take over records read from the store.
    pub fn restore(&self, records: Vec<Record>) {
        let mut inner = self.lock();
        for rec in records {
            if let Some(ip) = rec.ip {
                inner.by_ip.insert(ip, rec.mac);
            }
            inner.machines.insert(rec.mac, rec);
        }
    }

    /// The record of `mac`, created if new (evicting the stalest undeclared one when full).
    fn entry(inner: &mut Inner, mac: MacAddr, now: SystemTime) -> &mut Record {
        if !inner.machines.contains_key(&mac) && inner.machines.len() >= MAX_MACHINES {
            let victim = inner
                .machines
                .values()
                .filter(|r| !r.declared)
                .min_by_key(|r| r.last_seen)
                .map(|r| r.mac);
            if let Some(victim) = victim {
                inner.machines.remove(&victim);
                inner.dirty.insert(victim);
            }
        }
        inner
            .machines
            .entry(mac)
            .or_insert_with(|| Record::new(mac, now))
    }

    /// Apply one event to `mac`: update its record, run the state machine, keep history,
    /// publish a transition and mark the record for the writer, all under one lock.
    fn apply(
        &self,
        mac: MacAddr,
        source: &str,
        event: String,
        step: Option<Step>,
        update: impl FnOnce(&mut Record, SystemTime),
    ) {
        let now = self.now();
        let mut inner = self.lock();
        let rec = Self::entry(&mut inner, mac, now);
        rec.last_seen = Stamp(now);
        update(rec, now);
        let from = rec.state;
        let to = step.and_then(|s| state::next(&rec.status(), s));
        if let Some(to) = to {
            self.enter(rec, to, None, now);
        }
        push_history(
            &mut rec.history,
            self.settings.history,
            HistoryEntry {
                at: Stamp(now),
                source: source.to_string(),
                event: event.clone(),
                from: to.map(|_| from),
                state: rec.state,
                count: 1,
            },
        );
        if let Some(to) = to {
            self.announce(rec, from, to, source, &event);
        }
        if let Some(ip) = rec.ip {
            inner.by_ip.insert(ip, mac);
        }
        inner.dirty.insert(mac);
        inner.generation += 1;
        drop(inner);
        self.changed.notify_one();
    }

    /// Move `rec` into `to` (and the bookkeeping that goes with particular states).
    fn enter(
        &self,
        rec: &mut Record,
        to: BootState,
        stalled_in: Option<BootState>,
        now: SystemTime,
    ) {
        rec.state = to;
        rec.stalled_in = stalled_in;
        rec.state_since = Stamp(now);
        rec.entered.insert(to, Stamp(now));
        if let Some(w) = &mut rec.wake {
            let after = now
                .duration_since(w.sent_at.0)
                .unwrap_or_default()
                .as_secs_f64();
            if matches!(to, BootState::Provisioned) && w.provisioned_after_s.is_none() {
                w.provisioned_after_s = Some(after);
                if let Some(m) = &self.metrics {
                    m.wake_to_provisioned.observe(after);
                }
            }
        }
    }

    fn announce(&self, rec: &Record, from: BootState, to: BootState, source: &str, event: &str) {
        match rec.stalled_in {
            Some(phase) => {
                tracing::warn!(mac = %rec.mac, hostname = %rec.hostname.as_deref().unwrap_or("-"), profile = %rec.profile.as_deref().unwrap_or("-"), %from, %to, %phase, %event, "boot state: stalled in {phase}")
            }
            None => {
                tracing::info!(mac = %rec.mac, hostname = %rec.hostname.as_deref().unwrap_or("-"), profile = %rec.profile.as_deref().unwrap_or("-"), %from, %to, %source, %event, "boot state: {from} -> {to}")
            }
        }
        // No subscribers is fine.
        let _ = self.events.send(Transition {
            mac: rec.mac,
            from,
            to,
            stalled_in: rec.stalled_in,
            at: rec.state_since,
            source: source.to_string(),
            event: event.to_string(),
            hostname: rec.hostname.clone(),
            profile: rec.profile.clone(),
        });
    }

    /// Merge what a request reports into the machine's record, and return the facts with
    /// gaps filled from what the machine reported before.
    pub fn observe(&self, mut facts: Facts) -> Facts {
        let now = self.now();
        let mut inner = self.lock();
        let rec = Self::entry(&mut inner, facts.mac, now);
        rec.last_seen = Stamp(now);
        merge(&mut rec.uuid, &mut facts.uuid);
        merge(&mut rec.arch, &mut facts.arch);
        merge(&mut rec.platform, &mut facts.platform);
        if rec.hostname.is_none() {
            rec.hostname.clone_from(&facts.hostname);
        }
        for key in HARDWARE_KEYS {
            if let Some(v) = facts.labels.get(*key) {
                rec.hardware.insert(key.to_string(), v.clone());
            }
        }
        let mac = facts.mac;
        inner.dirty.insert(mac);
        inner.generation += 1;
        drop(inner);
        self.changed.notify_one();
        facts
    }

    /// A DHCP message from `mac` (and what Kindling answered).
    pub fn dhcp(&self, mac: MacAddr, seen: DhcpSeen) {
        // A phone or printer on the LAN (proxy mode sees them all) is not a machine to adopt.
        if seen.profile.is_none() && seen.client == DhcpClient::Os && self.get(mac).is_none() {
            return;
        }
        let step = if seen.profile.is_none() && seen.client != DhcpClient::Os {
            Step::NoProfile
        } else if seen.profile.is_none() {
            return self.note_dhcp(mac, seen, None);
        } else {
            Step::Dhcp(seen.client)
        };
        self.note_dhcp(mac, seen, Some(step));
    }

    fn note_dhcp(&self, mac: MacAddr, seen: DhcpSeen, step: Option<Step>) {
        // A DISCOVER or REQUEST (named by what Kindling answered) moves the state; a RELEASE,
        // DECLINE or NAK does not.
        let step = step.filter(|_| {
            matches!(
                seen.event,
                "discover" | "offer" | "ack" | "inform" | "proxy_offer" | "proxy_ack"
            )
        });
        let event = match seen.ip {
            Some(ip) => format!("{} {ip}", seen.event),
            None => seen.event.to_string(),
        };
        let within = self.settings.stall_after.waking;
        self.apply(mac, "dhcp", event, step, |rec, now| {
            rec.dhcp_event = Some(seen.event.to_string());
            if let Some(ip) = seen.ip
                && !matches!(seen.event, "release" | "decline" | "nak")
            {
                rec.ip = Some(ip);
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
            if seen.hostname.is_some() && !rec.declared {
                rec.hostname = seen.hostname;
            }
            if seen.profile.is_some() && !rec.declared {
                rec.profile = seen.profile;
            }
            if let Some(w) = &mut rec.wake
                && w.answered_after_s.is_none()
            {
                let after = now.duration_since(w.sent_at.0).unwrap_or_default();
                w.answered_after_s = Some(after.as_secs_f64());
                w.outcome = if after <= within || within.is_zero() {
                    WakeOutcome::Answered
                } else {
                    WakeOutcome::Late
                };
            }
        });
    }

    /// `mac` fetched `file` over TFTP: an iPXE binary moves it to `firmware`.
    pub fn tftp_fetched(&self, mac: MacAddr, file: &str) {
        let step = is_ipxe_binary(file).then_some(Step::Firmware);
        self.apply(mac, "tftp", format!("fetched {file}"), step, |rec, _| {
            rec.last_served = Some(format!("tftp:{file}"));
        });
    }

    /// `mac` fetched an iPXE binary over HTTP (`/boot/...`).
    pub fn http_firmware(&self, mac: MacAddr, path: &str) {
        self.apply(
            mac,
            "http",
            format!("fetched {path}"),
            Some(Step::Firmware),
            |rec, _| {
                rec.last_served = Some(format!("http:{path}"));
            },
        );
    }

    /// `mac` fetched a boot asset (kernel, initrd, image) from `/assets/`.
    pub fn asset(&self, mac: MacAddr, path: &str) {
        self.apply(
            mac,
            "http",
            format!("fetched {path}"),
            Some(Step::Kernel),
            |rec, _| {
                rec.last_served = Some(format!("http:{path}"));
            },
        );
    }

    /// `mac` was served `what` from `profile`; `step` is what that means for its boot.
    pub fn served(
        &self,
        mac: MacAddr,
        profile: &str,
        what: &str,
        step: Option<Step>,
        booting_profile: Option<String>,
    ) {
        let event = format!("served {what} (profile {profile})");
        self.apply(mac, "http", event, step, |rec, _| {
            if !rec.declared || rec.profile.is_none() {
                rec.profile = Some(profile.to_string());
            }
            rec.last_served = Some(what.to_string());
            if step == Some(Step::Script) || step == Some(Step::LocalBoot) {
                rec.booting_profile = booting_profile;
            }
        });
    }

    /// `mac` asked for a profile and none matches: it is `discovered`.
    pub fn no_profile(&self, mac: MacAddr, what: &str) {
        self.apply(
            mac,
            "http",
            format!("asked for {what}: no profile matches"),
            Some(Step::NoProfile),
            |_, _| {},
        );
    }

    /// The OS reported `state` (and the hostname it runs as).
    pub fn report(&self, mac: MacAddr, state: &str, hostname: Option<String>) {
        let step = (state == "provisioned").then_some(Step::Provisioned);
        self.apply(
            mac,
            "report",
            format!("reported {state}"),
            step,
            |rec, now| {
                rec.reported = Some(state.to_string());
                rec.reported_at = Some(Stamp(now));
                if state == "provisioned" {
                    rec.provisioned = true;
                    rec.provisioned_at = Some(Stamp(now));
                }
                if hostname.is_some() && !rec.declared {
                    rec.hostname = hostname;
                }
            },
        );
    }

    /// Kindling sent `mac` a magic packet.
    pub fn woken(&self, mac: MacAddr, detail: &str) {
        let within = self.settings.stall_after.waking;
        self.apply(
            mac,
            "wol",
            format!("magic packet sent ({detail})"),
            Some(Step::Woken),
            |rec, now| {
                rec.wake = Some(Wake {
                    sent_at: Stamp(now),
                    within_s: within.as_secs_f64(),
                    outcome: WakeOutcome::Pending,
                    answered_after_s: None,
                    provisioned_after_s: None,
                });
            },
        );
    }

    /// Set (or clear, with `None`) the one-shot next boot of `mac`.
    pub fn set_next_boot(&self, mac: MacAddr, next: Option<NextBoot>, by: &str) -> Record {
        let event = match &next {
            Some(NextBoot::Install) => format!("next boot: install (reinstall, by {by})"),
            Some(NextBoot::Local) => format!("next boot: local disk (by {by})"),
            Some(NextBoot::Profile { profile }) => {
                format!("next boot: profile {profile} (by {by})")
            }
            None => format!("next boot cleared (by {by})"),
        };
        self.apply(mac, "api", event, None, |rec, _| rec.next_boot = next);
        self.get(mac)
            .unwrap_or_else(|| Record::new(mac, self.now()))
    }

    /// The one-shot next boot of `mac` was served: it is used up.
    pub fn consume_next_boot(&self, mac: MacAddr) {
        let mut inner = self.lock();
        if let Some(rec) = inner.machines.get_mut(&mac)
            && rec.next_boot.take().is_some()
        {
            inner.dirty.insert(mac);
            inner.generation += 1;
            drop(inner);
            self.changed.notify_one();
        }
    }

    /// What `/ipxe` should serve `mac`, given its profile's after-provision rule, and whether
    /// that is the operator's one-shot choice (to be used up once served).
    pub fn plan(&self, mac: MacAddr, after: Option<&AfterProvision>) -> (Plan, bool) {
        let inner = self.lock();
        match inner.machines.get(&mac) {
            Some(r) => (
                plan(r.next_boot.as_ref(), r.provisioned, after),
                r.next_boot.is_some(),
            ),
            None => (plan(None, false, after), false),
        }
    }

    /// The profile `mac` is booting when `/ipxe` redirected it away from its selected one.
    pub fn booting_profile(&self, mac: MacAddr) -> Option<String> {
        self.lock()
            .machines
            .get(&mac)
            .and_then(|r| r.booting_profile.clone())
    }

    /// Remember that `ip` belongs to `mac` (an HTTP request from `ip` named `mac`).
    pub fn learn_ip(&self, mac: MacAddr, ip: Ipv4Addr) {
        let mut inner = self.lock();
        if inner.by_ip.get(&ip) == Some(&mac) {
            return;
        }
        inner.by_ip.insert(ip, mac);
        if let Some(rec) = inner.machines.get_mut(&mac)
            && rec.ip.is_none()
        {
            rec.ip = Some(ip);
            inner.dirty.insert(mac);
            inner.generation += 1;
        }
    }

    /// The machine last seen with `ip` (TFTP and `/assets/` know only the client's address).
    pub fn mac_by_ip(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.lock().by_ip.get(&ip).copied()
    }

    /// Create or update the records of machines the profiles declare (state `unknown` for new
    /// ones). Cheap when `set` was synced already.
    pub fn sync_profiles(&self, set: &ProfileSet) {
        let id = (std::ptr::from_ref(set) as usize, set.loaded_at);
        let now = self.now();
        let mut inner = self.lock();
        if inner.synced == Some(id) {
            return;
        }
        inner.synced = Some(id);
        let mut changed = Vec::new();
        for m in set.machines.values() {
            let profile = &set.profiles[m.profile].name;
            let rec = Self::entry(&mut inner, m.mac, now);
            let before = rec.clone();
            rec.declared = true;
            rec.profile = Some(profile.clone());
            if m.hostname.is_some() {
                rec.hostname.clone_from(&m.hostname);
            }
            if let Some(std::net::IpAddr::V4(ip)) = m.ip
                && rec.ip.is_none()
            {
                rec.ip = Some(ip);
            }
            rec.labels.clone_from(&m.labels);
            if *rec != before {
                changed.push(m.mac);
            }
        }
        // Machines no longer declared keep their record (and history), undeclared.
        for rec in inner.machines.values_mut() {
            if rec.declared && !set.machines.contains_key(&rec.mac) {
                rec.declared = false;
                changed.push(rec.mac);
            }
        }
        if !changed.is_empty() {
            inner.dirty.extend(changed);
            inner.generation += 1;
            drop(inner);
            self.changed.notify_one();
        }
    }

    /// A copy of one machine's record.
    pub fn get(&self, mac: MacAddr) -> Option<Record> {
        self.lock().machines.get(&mac).cloned()
    }

    /// Every machine matching `filter`, by hostname then MAC.
    pub fn list(&self, filter: &Filter) -> Vec<Summary> {
        let inner = self.lock();
        let mut out: Vec<Summary> = inner
            .machines
            .values()
            .filter(|r| filter.state.is_none_or(|s| r.state == s))
            .filter(|r| {
                filter
                    .profile
                    .as_deref()
                    .is_none_or(|p| r.profile.as_deref() == Some(p))
            })
            .map(Record::summary)
            .collect();
        drop(inner);
        out.sort_by(|a, b| (&a.hostname, a.mac).cmp(&(&b.hostname, b.mac)));
        out
    }

    /// How many machines are in each state.
    pub fn counts(&self) -> BTreeMap<BootState, usize> {
        let inner = self.lock();
        let mut out: BTreeMap<BootState, usize> = BootState::ALL.iter().map(|s| (*s, 0)).collect();
        for r in inner.machines.values() {
            *out.entry(r.state).or_default() += 1;
        }
        out
    }

    /// How many machines are known.
    pub fn len(&self) -> usize {
        self.lock().machines.len()
    }

    /// Whether no machine is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every transition from now on. A receiver that lags gets `RecvError::Lagged` and should
    /// resync from [`Inventory::list`].
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.events.subscribe()
    }

    /// Mark machines whose phase outlasted its limit as `stalled`.
    pub fn sweep(&self) {
        let now = self.now();
        let limits = &self.settings.stall_after;
        let mut inner = self.lock();
        let mut stalled = Vec::new();
        for rec in inner.machines.values_mut() {
            let Some(phase) = state::stalled(&rec.status(), rec.state_since.0, now, limits) else {
                continue;
            };
            let from = rec.state;
            let waited = now.duration_since(rec.state_since.0).unwrap_or_default();
            let event = if phase == BootState::Waking {
                format!(
                    "no DHCP DISCOVER within {} of the magic packet",
                    humantime::format_duration(Duration::from_secs(waited.as_secs()))
                )
            } else {
                format!(
                    "no progress in {phase} for {}",
                    humantime::format_duration(Duration::from_secs(waited.as_secs()))
                )
            };
            if phase == BootState::Waking
                && let Some(w) = &mut rec.wake
            {
                w.outcome = WakeOutcome::Unanswered;
            }
            self.enter(rec, BootState::Stalled, Some(phase), now);
            push_history(
                &mut rec.history,
                self.settings.history,
                HistoryEntry {
                    at: Stamp(now),
                    source: "timeout".into(),
                    event: event.clone(),
                    from: Some(from),
                    state: BootState::Stalled,
                    count: 1,
                },
            );
            self.announce(rec, from, BootState::Stalled, "timeout", &event);
            stalled.push(rec.mac);
        }
        if !stalled.is_empty() {
            inner.dirty.extend(stalled);
            inner.generation += 1;
            drop(inner);
            self.changed.notify_one();
        }
    }

    /// Check for stalled machines every second until cancelled.
    pub async fn run_sweeper(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.sweep(),
            }
        }
    }

    /// Write changed records to `store` until cancelled, in batches: while one commit runs
    /// (and for [`WRITE_GATHER`] after it), later changes gather for the next. Ends with a
    /// last commit.
    pub async fn run_writer(
        self: Arc<Self>,
        store: Arc<InventoryStore>,
        cancel: CancellationToken,
    ) {
        self.persistent
            .store(true, std::sync::atomic::Ordering::SeqCst);
        loop {
            let stopping = tokio::select! {
                _ = cancel.cancelled() => true,
                _ = self.changed.notified() => false,
            };
            let (generation, changes) = {
                let mut inner = self.lock();
                let dirty: Vec<MacAddr> = inner.dirty.drain().collect();
                let changes: Vec<(MacAddr, Option<Vec<u8>>)> = dirty
                    .into_iter()
                    .map(|mac| {
                        let bytes = inner
                            .machines
                            .get(&mac)
                            .and_then(|r| serde_json::to_vec(r).ok());
                        (mac, bytes)
                    })
                    .collect();
                (inner.generation, changes)
            };
            if !changes.is_empty() {
                let store = store.clone();
                let n = changes.len();
                match tokio::task::spawn_blocking(move || store.write(&changes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, records = n, "cannot persist the inventory");
                    }
                    Err(e) => tracing::error!(error = %e, "inventory writer task failed"),
                }
            }
            self.committed.send_replace(generation);
            if stopping {
                return;
            }
            // Let changes gather: in a boot storm one record changes several times a second
            // (offer, ack, iPXE's exchange), and is then serialised and written once.
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(WRITE_GATHER) => {}
            }
        }
    }

    /// Wait (at most 5 s) until every change made before this call is on disk.
    pub async fn flushed(&self) {
        if !self.persistent.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let want = self.lock().generation;
        self.changed.notify_one();
        let mut rx = self.committed.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|g| *g >= want)).await;
    }
}

/// Without a DHCP lease table of its own (proxy mode, or DHCP off), DNS names the machines
/// the inventory knows an address for: the profile's hostname, and the address DHCP (proxy)
/// or the machine's own HTTP requests came from.
impl crate::dns::LeaseSource for Inventory {
    fn named_leases(&self) -> Vec<crate::dns::LeaseName> {
        self.lock()
            .machines
            .values()
            .filter_map(|r| {
                Some(crate::dns::LeaseName {
                    hostname: r.hostname.clone()?,
                    ip: r.ip?,
                    expires: u64::MAX,
                })
            })
            .collect()
    }

    fn networks(&self) -> Vec<ipnet::Ipv4Net> {
        Vec::new()
    }
}

/// Append to a bounded history, folding an exact repeat of the last entry into it.
fn push_history(history: &mut VecDeque<HistoryEntry>, max: usize, entry: HistoryEntry) {
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
fn merge(stored: &mut Option<String>, reported: &mut Option<String>) {
    match reported {
        Some(v) => *stored = Some(v.clone()),
        None => reported.clone_from(stored),
    }
}

#[cfg(test)]
mod tests;
