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
//!   what `/ipxe` serves (see [`plan`]); reading and using up the one-shot is one locked step
//!   ([`Inventory::plan_boot`]).
//!
//! The facts iPXE reports on `/ipxe` (arch, platform, UUID) are remembered too: the OS's later
//! `/ignition?mac=` request carries only the MAC, and the remembered facts make it reach the
//! same profile. Free-form labels are per request (Matchbox semantics, e.g. `os=installed`).

mod feed;
pub mod plan;
mod record;
mod request;
pub mod store;
pub mod store_etcd;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, broadcast, watch};

use crate::boot_state as state;
pub use crate::boot_state::{BootState, DhcpClient, Step, Timeouts};
use crate::events::Bus;
pub use crate::events::Transition;
use crate::mac::MacAddr;
use crate::metrics::Metrics;
pub use crate::profiles::AfterProvision;
use crate::time_fmt::Stamp;
pub use plan::{BootView, Plan, Serve, ServeError, plan};
use record::push_history;
pub use record::{
    BootSecret, DhcpSeen, Filter, HistoryEntry, NextBoot, PowerReading, Record, Summary, Wake,
    WakeOutcome, is_ipxe_binary,
};
pub use request::{Ask, Asked, Decided, Served, mint_secret};

/// Records kept at most by default (`[inventory] max_machines`); beyond, the least recently
/// seen machine that no profile declares is forgotten, so a flood of made-up MACs cannot grow
/// memory without bound.
pub const MAX_MACHINES: usize = 65_536;

/// Sources of new undeclared records remembered for their budgets; beyond, the budgets start
/// over (a flood from spoofed addresses cannot grow this table).
const BUDGET_SOURCES: usize = 4096;

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
    /// Undeclared records by the `last_seen` they had when indexed (it only grows, so an
    /// entry is at most stale): eviction takes the first, in O(log n).
    undeclared: BTreeSet<(Stamp, MacAddr)>,
    /// Tokens for new undeclared records, per source: (tokens, when last refilled).
    budgets: HashMap<Option<IpAddr>, (f64, SystemTime)>,
    /// What each machine's BMC last said about its power (not written to the store).
    power: HashMap<MacAddr, PowerReading>,
}

/// What a request may do for a machine ([`Inventory::access`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// It comes from the machine's own address.
    pub from_machine: bool,
    /// It carries the machine's current boot secret.
    pub token_ok: bool,
    /// The current boot secret, for a request that is the machine's (to render into the URLs
    /// it is handed).
    pub secret: Option<String>,
}

/// Who asks for a record to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A profile declares the machine: always.
    Declared,
    /// A request from the network: within the source's budget (`None`: DHCP).
    Network(Option<IpAddr>),
    /// A DHCP ACK of Kindling's own lease: beyond the budget (the pool bounds it), within
    /// `max_machines`.
    Leased,
    /// What follows a request that already had its chance to make a record (a boot script
    /// served, a file fetched, a report): never a new record.
    Known,
    /// The operator, through the API: always, as an undeclared record.
    Operator,
}

/// Every machine, its state and history; shared by all services.
pub struct Inventory {
    /// A std mutex: held for map operations only, never across `.await`.
    inner: Mutex<Inner>,
    /// Transitions go out here, published under the lock that made them: in order.
    bus: Arc<Bus>,
    clock: Clock,
    settings: Settings,
    metrics: Option<Arc<Metrics>>,
    /// Wakes the writer.
    changed: Notify,
    /// Someone waits for the next commit ([`Inventory::flushed`]): the writer stops gathering.
    waited_on: Notify,
    /// The generation the writer last committed.
    committed: watch::Sender<u64>,
    /// Why the last write to the store failed, while it keeps failing (`/healthz`).
    store_trouble: Mutex<Option<String>>,
    /// Whether a writer runs (without one, nothing waits for disk).
    persistent: std::sync::atomic::AtomicBool,
    /// The profile generation the declared machines were last synced from.
    synced: watch::Sender<u64>,
    /// The store that decides the one-shot next boot, when instances share it.
    shared: std::sync::OnceLock<Arc<dyn store::MachineStore>>,
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
    /// An empty inventory with a bus of its own.
    pub fn new(settings: Settings, metrics: Option<Arc<Metrics>>) -> Inventory {
        Inventory::with_bus(settings, metrics, Bus::new())
    }

    /// An empty inventory announcing its transitions on `bus`.
    pub fn with_bus(settings: Settings, metrics: Option<Arc<Metrics>>, bus: Arc<Bus>) -> Inventory {
        Inventory {
            inner: Mutex::new(Inner::default()),
            bus,
            clock: Clock::new(),
            settings,
            metrics,
            changed: Notify::new(),
            waited_on: Notify::new(),
            committed: watch::Sender::new(0),
            store_trouble: Mutex::new(None),
            persistent: std::sync::atomic::AtomicBool::new(false),
            synced: watch::Sender::new(0),
            shared: std::sync::OnceLock::new(),
        }
    }

    /// Let `store` decide the one-shot next boot when it is shared with other instances
    /// ([`store::MachineStore::shares_next_boot`]).
    pub fn share_next_boot(&self, store: Arc<dyn store::MachineStore>) {
        if store.shares_next_boot() {
            let _ = self.shared.set(store);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the store is failing, while it is (changes are kept and written when it is back).
    pub fn store_trouble(&self) -> Option<String> {
        self.store_trouble
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records changed and not yet written to the store.
    pub fn pending(&self) -> usize {
        self.lock().dirty.len()
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
            if !rec.declared {
                inner.undeclared.insert((rec.last_seen, rec.mac));
            }
            inner.machines.insert(rec.mac, rec);
        }
    }

    /// The record of `mac`, created if new: always for a declared machine, within its
    /// source's budget for one from the network (`None` beyond it). When full, the least
    /// recently seen undeclared record makes room.
    fn entry<'a>(
        &self,
        inner: &'a mut Inner,
        mac: MacAddr,
        now: SystemTime,
        origin: Origin,
    ) -> Option<&'a mut Record> {
        if !inner.machines.contains_key(&mac) {
            match origin {
                Origin::Known => return None,
                Origin::Network(source) if !self.take_budget(inner, source, now) => return None,
                _ => {}
            }
            if inner.machines.len() >= self.settings.max_machines
                && !Self::evict(inner)
                && let Origin::Network(_) | Origin::Leased = origin
            {
                return None;
            }
            if origin != Origin::Declared {
                inner.undeclared.insert((Stamp(now), mac));
            }
        }
        Some(
            inner
                .machines
                .entry(mac)
                .or_insert_with(|| Record::new(mac, now)),
        )
    }

    /// Forget the least recently seen undeclared record; whether there was one. Index entries
    /// that went stale (seen since, or declared now) are put right on the way.
    fn evict(inner: &mut Inner) -> bool {
        while let Some((indexed, mac)) = inner.undeclared.pop_first() {
            let Some(rec) = inner.machines.get(&mac) else {
                continue;
            };
            if rec.declared {
                continue;
            }
            if rec.last_seen > indexed {
                inner.undeclared.insert((rec.last_seen, mac));
                continue;
            }
            inner.machines.remove(&mac);
            inner.dirty.insert(mac);
            return true;
        }
        false
    }

    /// One token of `source`'s budget for a new undeclared record, if it has one.
    fn take_budget(&self, inner: &mut Inner, source: Option<IpAddr>, now: SystemTime) -> bool {
        let (burst, rate) = (
            f64::from(self.settings.discovery_burst),
            f64::from(self.settings.discovery_per_second),
        );
        if inner.budgets.len() >= BUDGET_SOURCES && !inner.budgets.contains_key(&source) {
            inner.budgets.clear();
        }
        let (tokens, at) = inner.budgets.entry(source).or_insert((burst, now));
        let elapsed = now.duration_since(*at).unwrap_or_default().as_secs_f64();
        *tokens = (*tokens + elapsed * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// [`Inventory::apply_from`] to a record that exists (nothing new is made).
    fn apply_known(
        &self,
        mac: MacAddr,
        source: &str,
        event: String,
        step: Option<Step>,
        update: impl FnOnce(&mut Record, SystemTime),
    ) {
        self.apply_from(mac, Origin::Known, source, event, step, update);
    }

    /// Apply one event to `mac`, for a request from `origin` (whose budget a new record takes):
    /// update its record, run the state machine, keep history, publish a transition and mark
    /// the record for the writer, all under one lock.
    fn apply_from(
        &self,
        mac: MacAddr,
        origin: Origin,
        source: &str,
        event: String,
        step: Option<Step>,
        update: impl FnOnce(&mut Record, SystemTime),
    ) {
        let now = self.now();
        let mut inner = self.lock();
        let Some(rec) = self.entry(&mut inner, mac, now, origin) else {
            tracing::debug!(%mac, %event, "not recorded: no record, and none may be made for it");
            return;
        };
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
        self.bus.publish(Transition {
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

    /// What `f` reads from one machine's record, without copying it.
    pub fn read<T>(&self, mac: MacAddr, f: impl FnOnce(&Record) -> T) -> Option<T> {
        self.lock().machines.get(&mac).map(f)
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
            .map(|r| Summary {
                power: inner.power.get(&r.mac).cloned(),
                ..r.summary()
            })
            .collect();
        drop(inner);
        out.sort_by(|a, b| (&a.hostname, a.mac).cmp(&(&b.hostname, b.mac)));
        out
    }

    /// The address each of `macs` was last seen with (DHCP, or its own HTTP requests), for
    /// those that have one: one lock for all.
    pub fn addresses<'a>(
        &self,
        macs: impl IntoIterator<Item = &'a MacAddr>,
    ) -> Vec<(MacAddr, Ipv4Addr)> {
        let inner = self.lock();
        macs.into_iter()
            .filter_map(|m| Some((*m, inner.machines.get(m)?.ip?)))
            .collect()
    }

    /// `mac`'s BMC (`bmc`) read its power state as `state` just now; whether the last call
    /// before had failed (it answers again).
    pub fn power_read(&self, mac: MacAddr, bmc: &str, state: &str) -> bool {
        self.power_update(mac, bmc, |r, now| {
            if r.state.as_deref() != Some(state) {
                r.state = Some(state.to_string());
            }
            r.read_at = Some(now);
            r.error_at = None;
            r.error.take().is_some()
        })
    }

    /// A call to `mac`'s BMC (`bmc`) failed with `error`: kept with the last good reading.
    /// Whether this is news (the last call before did not fail the same way).
    pub fn power_failed(&self, mac: MacAddr, bmc: &str, error: String) -> bool {
        self.power_update(mac, bmc, |r, now| {
            let news = r.error.as_deref() != Some(error.as_str());
            r.error = Some(error);
            r.error_at = Some(now);
            news
        })
    }

    /// `update` the power reading of `mac` (made for BMC `bmc` if it has none) at now.
    fn power_update<T>(
        &self,
        mac: MacAddr,
        bmc: &str,
        update: impl FnOnce(&mut PowerReading, Stamp) -> T,
    ) -> T {
        let now = Stamp(self.now());
        let mut inner = self.lock();
        let r = inner.power.entry(mac).or_insert_with(|| PowerReading {
            bmc: bmc.to_string(),
            state: None,
            read_at: None,
            error: None,
            error_at: None,
        });
        if r.bmc != bmc {
            r.bmc = bmc.to_string();
        }
        let before = (r.state.clone(), r.error.clone());
        let out = update(r, now);
        // Every poll moves `read_at`; only a new state or a new failure (or its end) is news.
        if (&r.state, &r.error) != (&before.0, &before.1) {
            self.bus.publish(crate::events::PowerChanged {
                mac,
                power: r.clone(),
            });
        }
        out
    }

    /// Every change of a power reading from now on.
    pub fn subscribe_power(&self) -> broadcast::Receiver<crate::events::PowerChanged> {
        self.bus.subscribe()
    }

    /// One machine as [`Inventory::list`] shows it.
    pub fn summary(&self, mac: MacAddr) -> Option<Summary> {
        let inner = self.lock();
        let rec = inner.machines.get(&mac)?;
        Some(Summary {
            power: inner.power.get(&mac).cloned(),
            ..rec.summary()
        })
    }

    /// What `mac`'s BMC last said about its power.
    pub fn power(&self, mac: MacAddr) -> Option<PowerReading> {
        self.lock().power.get(&mac).cloned()
    }

    /// Forget the power readings of machines not in `keep` (their BMC setting is gone).
    pub fn power_retain(&self, keep: &HashSet<MacAddr>) {
        self.lock().power.retain(|m, _| keep.contains(m));
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
        self.bus.subscribe()
    }
}

#[cfg(test)]
mod tests;
