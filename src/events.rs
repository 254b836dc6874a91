//! The event bus: typed events from the one place that makes each change, to everyone who
//! follows it.
//!
//! | event | published by | followed by |
//! | --- | --- | --- |
//! | [`Transition`] (a machine's boot state changed) | the inventory | the SSE stream, DNS (without a lease table) |
//! | [`LeaseEvent`] (granted, renewed, released, declined, expired) | DHCP, once the change is durable | DNS |
//! | [`ProfilesEvent`] (reloaded, with what changed; or a reload failed) | the profile watcher, after the swap | the inventory, DHCP reservations, DNS, metrics |
//! | [`Adopted`] (a discovered machine got a `[[machine]]` entry) | the API | the log, the inventory |
//! | [`PowerChanged`] (a BMC's power reading changed, or its calls started or stopped failing) | the inventory | the SSE stream |
//! | [`ServiceFailed`] | the supervisor in `app` | metrics, `/healthz` |
//!
//! One broadcast channel per event type, so a flood of one kind (leases in a boot storm)
//! cannot push another (boot-state transitions) out of a slow subscriber's buffer. Publishing
//! never blocks and never fails: with nobody listening an event is simply dropped. A
//! subscriber that falls behind gets `RecvError::Lagged` and resyncs from the publisher's
//! current state (every event here is a hint about state that can be read again).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::boot_state::BootState;
use crate::mac::MacAddr;
use crate::time_fmt::Stamp;

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

/// What a machine's BMC last said about its power: read at `[bmc] poll_interval` and after
/// every action. Kept in memory only (it is read again on every poll; writing it to the store
/// would turn every poll into a write), so it starts empty after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerReading {
    /// The BMC's URL.
    pub bmc: String,
    /// `on`, `off`, `powering_on`, `powering_off` (or what else the BMC said), as last read;
    /// `None` until a read succeeds.
    pub state: Option<String>,
    /// When `state` was read.
    pub read_at: Option<Stamp>,
    /// Why the last call to the BMC failed; `None` once one succeeds again.
    pub error: Option<String>,
    /// When it failed.
    pub error_at: Option<Stamp>,
}

/// A machine's power reading changed (its state, or whether its BMC fails), as streamed by
/// `GET /api/v1/events` (`event: power`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerChanged {
    /// The machine.
    pub mac: MacAddr,
    /// Its reading now.
    pub power: PowerReading,
}

/// What happened to a DHCP lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseChange {
    /// An address was bound to a client that did not hold it.
    Granted,
    /// A client extended the address it holds.
    Renewed,
    /// The client gave it back (DHCPRELEASE).
    Released,
    /// The client found it in use (DHCPDECLINE): quarantined.
    Declined,
    /// Its time ran out without a renewal.
    Expired,
}

/// A lease change, published once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEvent {
    /// What happened.
    pub change: LeaseChange,
    /// The address.
    pub ip: Ipv4Addr,
    /// The client (none for a declined address).
    pub mac: Option<MacAddr>,
    /// The hostname the lease carries (profile or option 12).
    pub hostname: Option<String>,
    /// When it ends (Unix seconds).
    pub expires: u64,
}

/// What a profile reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfilesEvent {
    /// A new set is being served.
    Reloaded(Reload),
    /// A reload failed; the last good set is still served.
    Failed {
        /// Failed reloads since start-up.
        failed_reloads: u64,
        /// Every error, as `file:line: message`.
        errors: Vec<String>,
    },
}

/// What changed between the set served before a reload and the one served after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reload {
    /// The new set's generation (1 at start-up).
    pub generation: u64,
    /// Machines declared now and not before.
    pub added: Vec<MacAddr>,
    /// Machines declared before and not now.
    pub removed: Vec<MacAddr>,
    /// Machines whose entry changed (profile, hostname, address, labels).
    pub changed: Vec<MacAddr>,
    /// Profiles that appeared, disappeared or whose file changed.
    pub profiles: Vec<String>,
}

impl Reload {
    /// Whether any declared machine changed (what DHCP reservations and DNS names follow).
    pub fn machines_changed(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }
}

/// A discovered machine was adopted into a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The machine.
    pub mac: MacAddr,
    /// The profile it joined.
    pub profile: String,
    /// The file its entry was appended to.
    pub file: PathBuf,
}

/// A supervised service failed (it is restarted; see `app`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFailed {
    /// The service, e.g. `dhcp vs0:67`, `tftp`, `dns`, `http`.
    pub service: String,
    /// Why.
    pub error: String,
    /// Consecutive failures so far.
    pub failures: u32,
}

/// Events buffered per subscriber before it lags and must resync.
pub(crate) const TRANSITIONS: usize = 4096;
const LEASES: usize = 4096;
/// A rack powered on at once changes every reading within one poll.
const POWER: usize = 1024;
const RARE: usize = 64;

/// One channel per event type.
#[derive(Debug)]
pub struct Bus {
    transitions: broadcast::Sender<Transition>,
    leases: broadcast::Sender<LeaseEvent>,
    profiles: broadcast::Sender<Arc<ProfilesEvent>>,
    adoptions: broadcast::Sender<Adopted>,
    power: broadcast::Sender<PowerChanged>,
    failures: broadcast::Sender<ServiceFailed>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            transitions: broadcast::Sender::new(TRANSITIONS),
            leases: broadcast::Sender::new(LEASES),
            profiles: broadcast::Sender::new(RARE),
            adoptions: broadcast::Sender::new(RARE),
            power: broadcast::Sender::new(POWER),
            failures: broadcast::Sender::new(RARE),
        }
    }
}

/// An event type and its channel on the [`Bus`].
pub trait Event: Clone + Send + 'static {
    /// The channel that carries this type.
    fn channel(bus: &Bus) -> &broadcast::Sender<Self>;
}

macro_rules! event {
    ($t:ty, $field:ident) => {
        impl Event for $t {
            fn channel(bus: &Bus) -> &broadcast::Sender<Self> {
                &bus.$field
            }
        }
    };
}
event!(Transition, transitions);
event!(LeaseEvent, leases);
event!(Arc<ProfilesEvent>, profiles);
event!(Adopted, adoptions);
event!(PowerChanged, power);
event!(ServiceFailed, failures);

impl Bus {
    /// A bus nobody listens to yet.
    pub fn new() -> Arc<Bus> {
        Arc::new(Bus::default())
    }

    /// Send `event` to every current subscriber of its type (none: dropped).
    pub fn publish<E: Event>(&self, event: E) {
        let _ = E::channel(self).send(event);
    }

    /// Every event of type `E` from now on.
    pub fn subscribe<E: Event>(&self) -> broadcast::Receiver<E> {
        E::channel(self).subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_type_has_its_own_channel_and_order() {
        let bus = Bus::new();
        let mut leases = bus.subscribe::<LeaseEvent>();
        let mut profiles = bus.subscribe::<Arc<ProfilesEvent>>();
        for n in 1..=3u8 {
            bus.publish(LeaseEvent {
                change: LeaseChange::Granted,
                ip: Ipv4Addr::new(10, 0, 0, n),
                mac: Some(MacAddr([0x52, 0x54, 0, 0, 0, n])),
                hostname: None,
                expires: 0,
            });
        }
        bus.publish(Arc::new(ProfilesEvent::Reloaded(Reload {
            generation: 2,
            ..Reload::default()
        })));
        for n in 1..=3u8 {
            assert_eq!(leases.recv().await.unwrap().ip, Ipv4Addr::new(10, 0, 0, n));
        }
        assert!(matches!(
            &*profiles.recv().await.unwrap(),
            ProfilesEvent::Reloaded(r) if r.generation == 2 && !r.machines_changed()
        ));
        // Nobody listens to failures: publishing is still fine.
        bus.publish(ServiceFailed {
            service: "tftp".into(),
            error: "x".into(),
            failures: 1,
        });
    }

    #[tokio::test]
    async fn a_flood_of_leases_does_not_lag_transition_subscribers() {
        let bus = Bus::new();
        let mut transitions = bus.subscribe::<Transition>();
        let mut leases = bus.subscribe::<LeaseEvent>();
        for n in 0..(LEASES as u32 * 2) {
            bus.publish(LeaseEvent {
                change: LeaseChange::Renewed,
                ip: Ipv4Addr::from(n),
                mac: None,
                hostname: None,
                expires: 0,
            });
        }
        bus.publish(Transition {
            mac: MacAddr([0; 6]),
            from: BootState::Unknown,
            to: BootState::Dhcp,
            stalled_in: None,
            at: Stamp(std::time::SystemTime::UNIX_EPOCH),
            source: "dhcp".into(),
            event: "offer".into(),
            hostname: None,
            profile: None,
        });
        assert_eq!(transitions.recv().await.unwrap().to, BootState::Dhcp);
        assert!(matches!(
            leases.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
