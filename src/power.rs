//! Machines' power through their BMCs: one Redfish client per BMC, kept between calls (its
//! connection and its session), every call counted in the metrics, what each BMC says
//! recorded in the inventory (the power state and when it was read, or the error), and a
//! poller that reads every BMC at `[bmc] poll_interval`.
//!
//! The API and the wake path call [`Power::status`] and [`Power::act`]; `app` runs
//! [`Power::run_poller`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::bmc::{Auth, Bmc, BmcError, Endpoint, PowerAction, PowerState, System};
use crate::config::BmcConfig;
use crate::inventory::Inventory;
use crate::mac::MacAddr;
use crate::metrics::Metrics;
use crate::profiles::watch::Live;

/// The `bmc` of a power reading whose BMC setting cannot be used.
const UNUSABLE: &str = "(setting unusable)";

/// Why a power call could not be made or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The machine has no usable BMC setting (none, or one that is incomplete: a password
    /// file that cannot be read, a URL template that does not render).
    #[error("{0}")]
    NoBmc(String),
    /// The BMC refused, failed or did not answer.
    #[error(transparent)]
    Bmc(#[from] BmcError),
    /// The daemon is stopping: its BMC sessions are ended, and no new one is opened.
    #[error("the daemon is stopping")]
    Stopping,
}

/// The wait before the first read after an action; each next one waits twice as long, within
/// `[bmc] follow_up` in all (by default reads 2, 6, 14 and 30 s after the action).
const FOLLOW_UP_FIRST: Duration = Duration::from_secs(2);

/// What to do with a machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Power on (nothing when it is on).
    On,
    /// Force off.
    Off,
    /// Ask the OS to shut down.
    GracefulOff,
    /// Restart when on, power on when off.
    Cycle,
    /// Boot from the network once, at the next boot (power unchanged).
    PxeOnce,
    /// Boot from the network once, now: the one-time override, then power on, or a restart
    /// when it is on (what `wake` and `reinstall --power-cycle` do).
    PxeBoot,
}

impl Act {
    /// From the API's and the CLI's word for it.
    pub fn parse(word: &str) -> Option<Act> {
        Some(match word {
            "on" => Act::On,
            "off" => Act::Off,
            "graceful-off" => Act::GracefulOff,
            "cycle" => Act::Cycle,
            "pxe-once" => Act::PxeOnce,
            "pxe-boot" => Act::PxeBoot,
            _ => return None,
        })
    }

    /// The reset it sends to a system in power state `now` (`None`: no reset).
    fn reset(self, now: &PowerState) -> Option<PowerAction> {
        let on = matches!(now, PowerState::On | PowerState::PoweringOn);
        match self {
            Act::On => (!on).then_some(PowerAction::On),
            Act::Off => Some(PowerAction::ForceOff),
            Act::GracefulOff => Some(PowerAction::GracefulShutdown),
            Act::Cycle | Act::PxeBoot if on => Some(PowerAction::ForceRestart),
            Act::Cycle | Act::PxeBoot => Some(PowerAction::On),
            Act::PxeOnce => None,
        }
    }
}

/// What an action did.
#[derive(Debug, Clone)]
pub struct Acted {
    /// The BMC's URL.
    pub bmc: String,
    /// The `ResetType` sent, if any.
    pub reset: Option<String>,
    /// The system as read after the action.
    pub after: System,
}

/// Everything that identifies a client: a changed password, CA or URL makes a new one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    url: String,
    user: String,
    password: String,
    ca_pem: Option<Vec<u8>>,
    insecure_tls: bool,
    auth: Auth,
}

impl Key {
    fn of(e: &Endpoint) -> Key {
        Key {
            url: e.url.clone(),
            user: e.user.clone(),
            password: e.password.clone(),
            ca_pem: e.ca_pem.clone(),
            insecure_tls: e.insecure_tls,
            auth: e.auth,
        }
    }
}

/// Power control of every machine with a BMC.
pub struct Power {
    settings: BmcConfig,
    profiles: Arc<Live>,
    inventory: Arc<Inventory>,
    metrics: Arc<Metrics>,
    /// One client per BMC setting, kept for its connection and session.
    clients: Mutex<HashMap<Key, Bmc>>,
    /// Set when the daemon stops, before the sessions are ended: a call still under way (a
    /// read after an action, an API call) opens no session that nobody would end.
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Power {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Power")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Power {
    /// Power control with `[bmc]` `settings`, BMCs from `profiles`, readings into `inventory`.
    pub fn new(
        settings: BmcConfig,
        profiles: Arc<Live>,
        inventory: Arc<Inventory>,
        metrics: Arc<Metrics>,
    ) -> Power {
        Power {
            settings,
            profiles,
            inventory,
            metrics,
            clients: Mutex::new(HashMap::new()),
            stopping: Default::default(),
        }
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Bmc>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `mac` has a BMC setting (usable or not): its wake goes through the BMC.
    pub fn has_bmc(&self, mac: MacAddr) -> bool {
        self.profiles.current().has_bmc(mac)
    }

    /// The client for `mac`'s BMC.
    fn client(&self, mac: MacAddr) -> Result<Bmc, PowerError> {
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err(PowerError::Stopping);
        }
        let endpoint = match self.profiles.current().bmc(mac, self.settings.timeout) {
            None => {
                return Err(PowerError::NoBmc(format!(
                    "{mac} has no BMC: give its [[machine]] entry (or its profile) bmc = {{ redfish = \"https://…\", user = \"…\", password_file = \"…\" }}"
                )));
            }
            Some(Err(e)) => {
                self.failed(mac, UNUSABLE, &e);
                return Err(PowerError::NoBmc(e));
            }
            Some(Ok(ep)) => ep,
        };
        let key = Key::of(&endpoint);
        if let Some(c) = self.clients().get(&key) {
            return Ok(c.clone());
        }
        if endpoint.insecure_tls {
            tracing::warn!(%mac, bmc = %endpoint.url, "insecure_tls: the BMC's certificate is not checked");
        }
        let url = endpoint.url.clone();
        let client = match Bmc::new(endpoint) {
            Ok(c) => c.with_metrics(self.metrics.clone()),
            Err(e) => {
                self.failed(mac, &url, &e);
                return Err(e.into());
            }
        };
        Ok(self.clients().entry(key).or_insert(client).clone())
    }

    /// Record `got` (a read of `mac`'s system, or a failure) in the inventory.
    fn record<T>(
        &self,
        mac: MacAddr,
        bmc: &Bmc,
        got: Result<T, BmcError>,
        state: impl FnOnce(&T) -> Option<&PowerState>,
    ) -> Result<T, PowerError> {
        match got {
            Ok(v) => {
                if let Some(s) = state(&v)
                    && self.inventory.power_read(mac, bmc.url(), s.as_str())
                {
                    tracing::info!(%mac, bmc = %bmc.url(), power = %s.as_str(), "BMC answers again");
                }
                Ok(v)
            }
            Err(e) => {
                self.failed(mac, bmc.url(), &e);
                Err(e.into())
            }
        }
    }

    /// Record a failed call on `mac`; logged when it is news (not every poll of a BMC that
    /// stays down).
    fn failed(&self, mac: MacAddr, bmc: &str, e: &dyn std::fmt::Display) {
        let e = e.to_string();
        if self.inventory.power_failed(mac, bmc, e.clone()) {
            tracing::warn!(%mac, %bmc, error = %e, "BMC call failed (recorded on the machine; logged again when it changes)");
        }
    }

    /// Read `mac`'s system from its BMC (and record its power state, or the error).
    pub async fn status(&self, mac: MacAddr) -> Result<(Bmc, System), PowerError> {
        let bmc = self.client(mac)?;
        let got = bmc.system().await;
        let system = self.record(mac, &bmc, got, |s| Some(&s.power))?;
        Ok((bmc, system))
    }

    /// Do `act` to `mac` through its BMC, then read the system again and record it. BMCs
    /// apply a power change seconds later: until the system is in the state the action
    /// leads to, it is read again, [`FOLLOW_UP_FIRST`] later and then twice as long apart
    /// each time, within `[bmc] follow_up` (so the reading, and the event stream, follow
    /// within seconds rather than at the next poll).
    pub async fn act(self: &Arc<Self>, mac: MacAddr, act: Act) -> Result<Acted, PowerError> {
        let (bmc, system) = self.status(mac).await?;
        if matches!(act, Act::PxeOnce | Act::PxeBoot) {
            let got = bmc.pxe_once(&system).await;
            self.record(mac, &bmc, got, |_| None)?;
        }
        let action = act.reset(&system.power);
        let reset = match action {
            Some(a) => {
                let got = bmc.power(&system, a).await;
                Some(self.record(mac, &bmc, got, |_| None)?)
            }
            None => None,
        };
        let (_, after) = self.status(mac).await?;
        let want = match action {
            Some(PowerAction::On | PowerAction::ForceRestart) => Some(PowerState::On),
            Some(PowerAction::ForceOff | PowerAction::GracefulShutdown) => Some(PowerState::Off),
            None => None,
        };
        let within = self.settings.follow_up;
        if let Some(want) = want.filter(|w| *w != after.power && !within.is_zero()) {
            let me = self.clone();
            tokio::spawn(async move {
                let (mut wait, mut spent) = (FOLLOW_UP_FIRST, Duration::ZERO);
                while spent + wait <= within {
                    tokio::time::sleep(wait).await;
                    spent += wait;
                    wait *= 2;
                    match me.status(mac).await {
                        Ok((_, s)) if s.power == want => break,
                        Err(PowerError::Stopping) => break,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(%mac, error = %e, "power: reading after an action failed")
                        }
                    }
                }
            });
        }
        Ok(Acted {
            bmc: bmc.url().to_string(),
            reset,
            after,
        })
    }

    /// Read every BMC at `[bmc] poll_interval` (at most `poll_concurrency` at once) until
    /// cancelled; clients of BMC settings gone from the profiles are logged out and dropped.
    pub async fn run_poller(self: Arc<Self>, cancel: CancellationToken) {
        let interval = self.settings.poll_interval;
        if interval.is_zero() {
            cancel.cancelled().await;
            return self.stop().await;
        }
        loop {
            let set = self.profiles.current();
            let mut keys = HashSet::new();
            let mut macs = Vec::new();
            let mut unusable = HashSet::new();
            for mac in set.machines.keys() {
                match set.bmc(*mac, self.settings.timeout) {
                    Some(Ok(ep)) => {
                        keys.insert(Key::of(&ep));
                        macs.push(*mac);
                    }
                    // A setting that cannot be used (its password file is gone, its URL does
                    // not render): the machine shows why.
                    Some(Err(e)) => {
                        self.failed(*mac, UNUSABLE, &e);
                        unusable.insert(*mac);
                    }
                    None => {}
                }
            }
            drop(set);
            unusable.extend(macs.iter().copied());
            self.inventory.power_retain(&unusable);
            let round = futures_util::stream::iter(macs).for_each_concurrent(
                self.settings.poll_concurrency,
                |mac| {
                    let me = &self;
                    async move {
                        if let Err(e) = me.status(mac).await {
                            tracing::debug!(%mac, error = %e, "power poll failed");
                        }
                    }
                },
            );
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = round => {}
            }
            self.log_out(|k| !keys.contains(k)).await;
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        self.stop().await;
    }

    /// End every BMC session for good: no client is handed out (or made) from now on.
    async fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.log_out(|_| true).await;
    }

    /// End the sessions of the clients `drop` picks, and forget those clients.
    async fn log_out(&self, drop: impl Fn(&Key) -> bool) {
        let gone: Vec<Bmc> = {
            let mut clients = self.clients();
            let keys: Vec<Key> = clients.keys().filter(|k| drop(k)).cloned().collect();
            keys.iter().filter_map(|k| clients.remove(k)).collect()
        };
        let all = gone.iter().map(|c| c.logout());
        let _ =
            tokio::time::timeout(self.settings.timeout, futures_util::future::join_all(all)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once stopped (its sessions ended), no call reaches a BMC: none would open a session
    /// that nobody ends.
    #[tokio::test]
    async fn a_stopped_power_opens_no_session() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        std::fs::write(dir.path().join("p/secret"), "pw\n").unwrap();
        std::fs::write(
            dir.path().join("p/n.toml"),
            "[boot]\nkernel = \"k\"\n[[machine]]\nmac = \"52:54:00:00:00:01\"\n\
             bmc = { redfish = \"http://127.0.0.1:9\", user = \"u\", password_file = \"secret\" }\n",
        )
        .unwrap();
        let sources = crate::profiles::Sources {
            profiles: dir.path().join("p"),
            scripts: dir.path().join("none"),
        };
        let set = crate::profiles::ProfileSet::load(&sources, "http://x").unwrap();
        let live = Arc::new(Live::new(
            sources,
            "http://x".into(),
            set,
            crate::events::Bus::new(),
        ));
        let power = Power::new(
            BmcConfig::default(),
            live,
            Arc::new(Inventory::default()),
            Metrics::new(),
        );
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        // Before: a client is made (the call fails, nothing listens there).
        assert!(matches!(power.status(mac).await, Err(PowerError::Bmc(_))));
        assert_eq!(power.clients().len(), 1);
        power.stop().await;
        assert!(matches!(power.status(mac).await, Err(PowerError::Stopping)));
        assert!(power.clients().is_empty());
    }
}
