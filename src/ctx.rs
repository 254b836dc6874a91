//! What every service is given: one cheap-to-clone handle on the shared state, built once by
//! `app` and passed to each service's `start` with its sockets and the shutdown token.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::Config;
use crate::events::Bus;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::profiles::watch::Live;

/// The shared state of a running daemon.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The configuration, validated.
    pub config: Arc<Config>,
    /// The URL machines use to reach the HTTP service.
    pub base_url: Arc<str>,
    /// The profile set being served, swapped whole on reload.
    pub profiles: Arc<Live>,
    /// Every machine and its boot state.
    pub inventory: Arc<Inventory>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Typed events between the parts.
    pub bus: Arc<Bus>,
    /// Which services are down, for `/healthz`.
    pub health: Arc<Health>,
}

/// A service that failed and has not run cleanly since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failing {
    /// Failures in a row.
    pub failures: u32,
    /// The last error.
    pub error: String,
}

/// The services that are failing right now (the supervisor keeps it; `/healthz` shows it).
#[derive(Debug, Default)]
pub struct Health {
    /// A std mutex: held for one map update or copy.
    failing: Mutex<BTreeMap<String, Failing>>,
}

impl Health {
    /// `service` failed with `error` (`failures` in a row).
    pub fn failed(&self, service: &str, failures: u32, error: &str) {
        self.lock().insert(
            service.to_string(),
            Failing {
                failures,
                error: error.to_string(),
            },
        );
    }

    /// `service` runs again (it has run a while without failing).
    pub fn recovered(&self, service: &str) {
        self.lock().remove(service);
    }

    /// Every failing service.
    pub fn failing(&self) -> BTreeMap<String, Failing> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Failing>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }
}
