//! Hot reload: the live profile set, swapped whole when the profiles or iPXE script
//! directories change.
//!
//! Watches the *directories*, recursively (editors save by writing a temporary file and
//! renaming it over the old one; Kubernetes ConfigMaps swap a `..data` symlink), debounces
//! bursts of events, re-loads everything, and swaps the new [`ProfileSet`] in atomically.
//! A set that fails to load is not served: the last good one stays, and the error is logged
//! and kept in [`ReloadStatus`] for `/healthz`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ProfileSet, Sources};
use crate::diag::Diagnostics;
use crate::events::{Bus, ProfilesEvent, Reload};

/// How long a burst of file events must be quiet before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The outcome of the last (re)load, for `/healthz` and the API.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// Successful loads so far (1 after start-up).
    pub generation: u64,
    /// When the set being served was loaded.
    #[serde(with = "crate::time_fmt")]
    pub loaded_at: SystemTime,
    /// Profiles in the set being served.
    pub profiles: usize,
    /// Machine entries in the set being served.
    pub machines: usize,
    /// The digest of the files the set being served was loaded from (the same on every
    /// instance that serves the same files).
    pub digest: String,
    /// The errors of the last failed reload, if it failed after the set being served loaded.
    pub last_error: Option<Vec<String>>,
    /// When that reload failed.
    #[serde(with = "crate::time_fmt::option")]
    pub last_error_at: Option<SystemTime>,
    /// Reloads that failed since start-up.
    pub failed_reloads: u64,
}

/// The profile set being served, and how it got there.
#[derive(Debug)]
pub struct Live {
    /// Where profiles are loaded from.
    pub sources: Sources,
    /// Base URL used for the test renders of a reload.
    pub base_url: String,
    /// Swapped whole on reload; readers take a cheap snapshot per request.
    current: ArcSwap<ProfileSet>,
    /// A std mutex: held for a copy or an update, never across `.await`.
    status: Mutex<ReloadStatus>,
    /// Held for a whole reload (and an adoption's write + reload + restore), so two reloads
    /// never interleave and an older set can never replace a newer one. Blocking: reloads run
    /// on blocking threads.
    reloading: Mutex<()>,
    /// Where reloads are announced.
    bus: Arc<Bus>,
}

impl Live {
    /// Serve `set`, loaded from `sources`; reloads are announced on `bus`.
    pub fn new(sources: Sources, base_url: String, set: ProfileSet, bus: Arc<Bus>) -> Live {
        let status = ReloadStatus {
            generation: 1,
            loaded_at: set.loaded_at,
            profiles: set.profiles.len(),
            machines: set.machines.len(),
            digest: set.digest.clone(),
            last_error: None,
            last_error_at: None,
            failed_reloads: 0,
        };
        Live {
            sources,
            base_url,
            current: ArcSwap::from_pointee(set),
            status: Mutex::new(status),
            reloading: Mutex::new(()),
            bus,
        }
    }

    /// The set to serve this request from.
    pub fn current(&self) -> Arc<ProfileSet> {
        self.current.load_full()
    }

    /// The bus reloads are announced on.
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// The outcome of the last reload.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Load everything again (blocking: file I/O and test renders). On success the new set is
    /// served and a [`ProfilesEvent::Reloaded`] says what changed; on failure the old one
    /// stays, and the errors are recorded, announced and returned. Returns the generation.
    pub fn reload(&self) -> Result<u64, Diagnostics> {
        self.serialized(|r| r.reload())
    }

    /// Run `f` with reloads held off for everyone else: an adoption writes a file, reloads, and
    /// puts the file back if the reload fails, with no reload in between.
    pub fn serialized<T>(&self, f: impl FnOnce(&Reloader<'_>) -> T) -> T {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        f(&Reloader { live: self })
    }
}

/// Reloads while [`Live::serialized`] holds the reload lock.
#[derive(Debug)]
pub struct Reloader<'a> {
    live: &'a Live,
}

impl Reloader<'_> {
    /// See [`Live::reload`].
    pub fn reload(&self) -> Result<u64, Diagnostics> {
        let live = self.live;
        let result = ProfileSet::load(&live.sources, &live.base_url);
        let mut status = live.status.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(set) => {
                status.generation += 1;
                status.loaded_at = set.loaded_at;
                status.profiles = set.profiles.len();
                status.machines = set.machines.len();
                status.digest.clone_from(&set.digest);
                status.last_error = None;
                status.last_error_at = None;
                let generation = status.generation;
                let old = live.current.swap(Arc::new(set));
                drop(status);
                let mut change = diff(&old, &live.current());
                change.generation = generation;
                live.bus.publish(Arc::new(ProfilesEvent::Reloaded(change)));
                Ok(generation)
            }
            Err(errors) => {
                let texts: Vec<String> = errors.0.iter().map(|d| d.to_string()).collect();
                status.last_error = Some(texts.clone());
                status.last_error_at = Some(SystemTime::now());
                status.failed_reloads += 1;
                let failed_reloads = status.failed_reloads;
                drop(status);
                live.bus.publish(Arc::new(ProfilesEvent::Failed {
                    failed_reloads,
                    errors: texts,
                }));
                Err(errors)
            }
        }
    }
}

/// What changed from `old` to `new`: machines by what DHCP, DNS and the inventory see of them,
/// profiles by their settings.
pub fn diff(old: &ProfileSet, new: &ProfileSet) -> Reload {
    let view = |set: &ProfileSet, m: &super::Machine| {
        (
            set.profiles[m.profile].name.clone(),
            m.hostname.clone(),
            m.ip,
            m.uuid.clone(),
            m.labels.clone(),
            format!("{:?}", m.vars),
        )
    };
    let mut change = Reload::default();
    for (mac, m) in &new.machines {
        match old.machines.get(mac) {
            None => change.added.push(*mac),
            Some(o) if view(old, o) != view(new, m) => change.changed.push(*mac),
            Some(_) => {}
        }
    }
    change.removed = old
        .machines
        .keys()
        .filter(|mac| !new.machines.contains_key(mac))
        .copied()
        .collect();
    let settings = |p: &super::Profile| {
        format!(
            "{:?}",
            (
                &p.description,
                p.default,
                &p.boot,
                &p.ignition,
                &p.generic,
                &p.vars,
                &p.after_provision
            )
        )
    };
    for p in &new.profiles {
        if old
            .profile(&p.name)
            .is_none_or(|o| settings(o) != settings(p))
        {
            change.profiles.push(p.name.clone());
        }
    }
    for p in &old.profiles {
        if new.profile(&p.name).is_none() {
            change.profiles.push(p.name.clone());
        }
    }
    for v in [&mut change.added, &mut change.removed, &mut change.changed] {
        v.sort();
    }
    change.profiles.sort();
    change
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    path: String,
    source: notify::Error,
}

/// Watches on the profile directories, registered before the first load so that no edit
/// made during start-up is missed (it costs one extra reload at most).
pub struct Watcher {
    /// Dropping it stops the notify thread.
    _debouncer: notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
    changes: mpsc::UnboundedReceiver<()>,
}

/// Start watching the directories of `sources` (synchronously: they are watched on return).
pub fn watch(sources: &Sources) -> Result<Watcher, WatchError> {
    let (tx, changes) = mpsc::unbounded_channel::<()>();
    let mut debouncer = notify_debouncer_full::new_debouncer(
        DEBOUNCE,
        None,
        move |res: notify_debouncer_full::DebounceEventResult| match res {
            Ok(events) => {
                // Reading the files ourselves produces access events: ignore them, or every
                // reload would trigger the next.
                if events
                    .iter()
                    .any(|e| !matches!(e.kind, EventKind::Access(_)))
                {
                    let _ = tx.send(());
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "profile watcher error");
                }
            }
        },
    )
    .map_err(|source| WatchError {
        path: "profiles".into(),
        source,
    })?;
    for dir in [&sources.profiles, &sources.scripts] {
        if !dir.exists() {
            continue;
        }
        debouncer
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|source| WatchError {
                path: dir.display().to_string(),
                source,
            })?;
        tracing::debug!(path = %dir.display(), "watching for profile changes");
    }
    Ok(Watcher {
        _debouncer: debouncer,
        changes,
    })
}

/// Reload `live` whenever the watched directories change, until `token` is cancelled.
pub async fn run(watcher: Watcher, live: Arc<Live>, token: CancellationToken) {
    let Watcher {
        _debouncer,
        mut changes,
    } = watcher;
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            got = changes.recv() => {
                if got.is_none() {
                    break;
                }
                // Coalesce anything that queued up while the last reload ran.
                while changes.try_recv().is_ok() {}
                let l = live.clone();
                match tokio::task::spawn_blocking(move || l.reload()).await {
                    Ok(Ok(_)) => {
                        let s = live.status();
                        tracing::info!(generation = s.generation, profiles = s.profiles, machines = s.machines, "profiles reloaded");
                    }
                    Ok(Err(errors)) => {
                        for d in &errors.0 {
                            tracing::error!(error = %d, "profile reload failed; still serving the last good profiles");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "profile reload task failed"),
                }
            }
        }
    }
}
