//! What the services tell the inventory: each method is one event of one machine, applied
//! under the inventory's lock (record, state machine, history, transition), plus the sweeper
//! that marks stalls and the follower that keeps declared machines in step with the profiles.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::plan::{Plan, plan};
use super::store::{Claim, Remote, StoreError};
use super::{
    AfterProvision, BootState, DhcpClient, DhcpSeen, HistoryEntry, Inventory, NextBoot, Origin,
    Record, Step, Wake, WakeOutcome, is_ipxe_binary, push_history, state,
};
use crate::events::ProfilesEvent;
use crate::mac::MacAddr;
use crate::profiles::watch::Live;
use crate::profiles::{Facts, ProfileSet};
use crate::time_fmt::Stamp;

impl Inventory {
    /// Merge what a request reports into the machine's record, and return the facts with
    /// gaps filled from what the machine reported before.
    pub fn observe(&self, facts: Facts) -> Facts {
        self.observe_from(facts, None)
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
        let origin = if seen.leased {
            Origin::Leased
        } else {
            Origin::Network(None)
        };
        self.apply_from(mac, origin, "dhcp", event, step, |rec, now| {
            rec.dhcp_event = Some(seen.event.to_string());
            rec.dhcp_client = Some(seen.client);
            if let Some(ip) = seen.ip
                && !matches!(seen.event, "release" | "decline" | "nak")
            {
                rec.ip = Some(ip);
                rec.dhcp_ip = Some(ip);
            }
            if matches!(seen.event, "release" | "decline") {
                rec.dhcp_ip = None;
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
        // A loader (iPXE, shim, GRUB) is the firmware's step; grub.cfg is the boot script
        // (noted when it was rendered); anything else is what GRUB boots (kernel, initrd).
        let step = if is_ipxe_binary(file) {
            Some(Step::Firmware)
        } else if file.trim_start_matches('/') == "grub/grub.cfg" {
            None
        } else {
            Some(Step::Kernel)
        };
        self.apply_known(mac, "tftp", format!("fetched {file}"), step, |rec, _| {
            rec.last_served = Some(format!("tftp:{file}"));
        });
    }

    /// `mac` fetched an iPXE binary over HTTP (`/boot/...`).
    pub fn http_firmware(&self, mac: MacAddr, path: &str) {
        self.apply_known(
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
        self.apply_known(
            mac,
            "http",
            format!("fetched {path}"),
            Some(Step::Kernel),
            |rec, _| {
                rec.last_served = Some(format!("http:{path}"));
            },
        );
    }

    /// `mac` asked for a profile and none matches: it is `discovered`.
    pub fn no_profile(&self, mac: MacAddr, what: &str) {
        self.apply_known(
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
        self.apply_known(
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
        self.apply_from(
            mac,
            Origin::Operator,
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

    /// Set (or clear, with `None`) the one-shot next boot of `mac`: first in the shared store
    /// (when instances share one, so every instance sees it), then here.
    pub async fn choose_next_boot(
        &self,
        mac: MacAddr,
        next: Option<NextBoot>,
        by: &str,
    ) -> Result<Record, StoreError> {
        if let Some(store) = self.shared.get() {
            store.put_next_boot(mac, next.as_ref()).await?;
        }
        Ok(self.set_next_boot(mac, next, by))
    }

    /// Use up `next`, which [`Inventory::plan_boot`] took off the record of `mac`, in the
    /// shared store: `true` when this instance got it (always without one). When another
    /// instance got it first, or the operator changed it meanwhile, the record takes what the
    /// store holds now and the answer is `false`: plan again.
    pub async fn claim_next_boot(&self, mac: MacAddr, next: &NextBoot) -> Result<bool, StoreError> {
        let Some(store) = self.shared.get() else {
            return Ok(true);
        };
        match store.take_next_boot(mac, next).await? {
            Claim::Taken => Ok(true),
            Claim::Now(now) => {
                self.remote_next_boot(mac, now);
                Ok(false)
            }
        }
    }

    /// Tell the other instances sharing the store that `adoption` happened here: `Ok(false)`
    /// when no other instance shares it.
    pub async fn share_adoption(
        &self,
        adoption: &super::store::Adoption,
    ) -> Result<bool, StoreError> {
        match self.shared.get() {
            Some(store) => store.put_adoption(adoption).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// The next boot of `mac` as another instance (or the shared store) says it is now.
    pub fn remote_next_boot(&self, mac: MacAddr, next: Option<NextBoot>) {
        let mut inner = self.lock();
        if let Some(rec) = inner.machines.get_mut(&mac) {
            rec.next_boot = next;
        }
    }

    /// Set (or clear, with `None`) the one-shot next boot of `mac` here (see
    /// [`Inventory::choose_next_boot`]).
    pub fn set_next_boot(&self, mac: MacAddr, next: Option<NextBoot>, by: &str) -> Record {
        let event = match &next {
            Some(NextBoot::Install) => format!("next boot: install (reinstall, by {by})"),
            Some(NextBoot::Local) => format!("next boot: local disk (by {by})"),
            Some(NextBoot::Profile { profile }) => {
                format!("next boot: profile {profile} (by {by})")
            }
            None => format!("next boot cleared (by {by})"),
        };
        self.apply_from(mac, Origin::Operator, "api", event, None, |rec, _| {
            rec.next_boot = next;
        });
        self.get(mac)
            .unwrap_or_else(|| Record::new(mac, self.now()))
    }

    /// What `/ipxe` should serve `mac`, given its profile's after-provision rule, and whether
    /// that is the operator's one-shot choice (a look only: [`Inventory::plan_boot`] uses it).
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

    /// [`Inventory::plan`], using up the one-shot next boot when the plan is it: one step, so
    /// two requests racing for it cannot both get it.
    pub fn take_plan(&self, mac: MacAddr, after: Option<&AfterProvision>) -> (Plan, bool) {
        self.plan_boot(
            mac,
            |view| {
                let uses = view.next_boot.is_some();
                (plan(view.next_boot.as_ref(), view.provisioned, after), uses)
            },
            |(_, uses)| *uses,
        )
    }

    /// Serving what [`Inventory::plan_boot`] decided failed: put the one-shot `next` back
    /// (in the shared store too, when it was claimed there), unless the operator chose
    /// something else meanwhile.
    pub async fn give_back(&self, mac: MacAddr, next: NextBoot, claimed: bool) {
        if claimed
            && let Some(store) = self.shared.get()
            && let Err(e) = store.put_next_boot(mac, Some(&next)).await
        {
            tracing::warn!(%mac, error = %e, "the next boot was used up but could not be served, and the shared store did not take it back: set it again");
        }
        self.give_back_here(mac, next);
    }

    fn give_back_here(&self, mac: MacAddr, next: NextBoot) {
        let mut inner = self.lock();
        if let Some(rec) = inner.machines.get_mut(&mac)
            && rec.next_boot.is_none()
        {
            rec.next_boot = Some(next);
            inner.dirty.insert(mac);
            inner.generation += 1;
            drop(inner);
            self.changed.notify_one();
        }
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
            let Some(rec) = self.entry(&mut inner, m.mac, now, Origin::Declared) else {
                continue;
            };
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
        // Machines no longer declared keep their record (and history), undeclared (and so
        // may be evicted again).
        {
            let inner = &mut *inner;
            for rec in inner.machines.values_mut() {
                if rec.declared && !set.machines.contains_key(&rec.mac) {
                    rec.declared = false;
                    inner.undeclared.insert((rec.last_seen, rec.mac));
                    changed.push(rec.mac);
                }
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
    /// Keep the declared machines in step with the profiles: sync now, then after every
    /// reload announced on the bus (a subscriber that lagged syncs from the current set, which
    /// is all it needs), until cancelled.
    pub async fn run_profile_sync(self: Arc<Self>, live: Arc<Live>, cancel: CancellationToken) {
        let mut events = live.bus().subscribe::<Arc<ProfilesEvent>>();
        loop {
            let generation = live.status().generation;
            self.sync_profiles(&live.current());
            self.synced.send_replace(generation);
            loop {
                let got = tokio::select! {
                    _ = cancel.cancelled() => return,
                    got = events.recv() => got,
                };
                match got {
                    Ok(ev) if matches!(*ev, ProfilesEvent::Failed { .. }) => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                }
            }
        }
    }

    /// Wait (at most 5 s) until the declared machines are synced from profile generation
    /// `generation` or a later one: an adoption answers only once its machine is listed.
    pub async fn synced_to(&self, generation: u64) {
        let mut rx = self.synced.subscribe();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|g| *g >= generation)).await;
    }

    /// Take records that other instances sharing the store wrote, until the store's stream
    /// ends or `cancel`: each replaces the local record when it is newer (by `last_seen`, then
    /// by `version`), and
    /// a changed boot state (or a machine new here) is announced like a local one.
    pub async fn run_remote_changes(
        self: Arc<Self>,
        mut changes: tokio::sync::mpsc::Receiver<Remote>,
        adopted: impl Fn(super::store::Adoption),
        cancel: CancellationToken,
    ) {
        loop {
            let change = tokio::select! {
                _ = cancel.cancelled() => return,
                got = changes.recv() => match got {
                    Some(change) => change,
                    None => return,
                },
            };
            match change {
                Remote::Record(rec) => self.merge_remote(*rec),
                Remote::NextBoot(mac, next) => self.remote_next_boot(mac, next),
                Remote::Adopted(adoption) => adopted(adoption),
            }
        }
    }

    /// One record written elsewhere (see [`Inventory::run_remote_changes`]).
    pub fn merge_remote(&self, mut rec: Record) {
        let mut inner = self.lock();
        let from = match inner.machines.get(&rec.mac) {
            Some(local) if (local.last_seen, local.version) >= (rec.last_seen, rec.version) => {
                return;
            }
            Some(local) => {
                // Where the store decides the next boot, its own key (followed apart) is the
                // truth, not the copy in a record written a moment before it was used up.
                if self.shared.get().is_some() {
                    rec.next_boot.clone_from(&local.next_boot);
                }
                Some(local.state)
            }
            None => None,
        };
        if let Some(ip) = rec.ip {
            inner.by_ip.insert(ip, rec.mac);
        }
        // A machine new to this instance is announced too (from `unknown`): DNS names and
        // event streams here learn of it.
        let changed_state = from.unwrap_or(BootState::Unknown) != rec.state;
        if changed_state && let Some(last) = rec.history.back() {
            let (event, source) = (last.event.clone(), last.source.clone());
            self.announce(
                &rec,
                from.unwrap_or(BootState::Unknown),
                rec.state,
                &source,
                &event,
            );
        }
        // Already durable in the shared store: not marked for this instance's writer.
        inner.machines.insert(rec.mac, rec);
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
}
