//! What a machine's own boot-document request (`/ipxe`, `/grub`, `/ignition`, …) does to the
//! inventory: who may ask ([`Access`]), what the request reports, what it is served, and the
//! boot secret it begins. On the request path this is two short holds of the lock: one look
//! that decides ([`Inventory::boot_request`]) and one that records what went out
//! ([`Inventory::served_boot`]); the writer is woken only when something changed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

use super::plan::BootView;
use super::record::merge;
use super::{Access, BootSecret, Inner, Inventory, Origin, Step};
use crate::config::DhcpMode;
use crate::mac::MacAddr;
use crate::profiles::Facts;
use crate::time_fmt::Stamp;

/// Keys of the `/ipxe` request that are hardware facts (kept in the record).
const HARDWARE_KEYS: &[&str] = &["serial", "manufacturer", "product", "memory"];

/// Who asks for a machine's boot document ([`Inventory::boot_request`]).
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The request's source address.
    pub peer: Option<Ipv4Addr>,
    /// The boot secret it carries (`?token=`).
    pub token: Option<&'a str>,
    /// How Kindling's DHCP runs (whether it knows the machines' addresses).
    pub dhcp: DhcpMode,
    /// A boot script request: the first one of a boot in proxy or no-DHCP mode binds the
    /// boot to its address.
    pub boot_script: bool,
}

/// What [`Inventory::boot_request`] found.
#[derive(Debug)]
pub enum Asked<T> {
    /// Not allowed: nothing changed.
    Refused(Access),
    /// Allowed, and decided.
    Decided(Decided<T>),
}

/// An allowed request's look at the record, and the decision taken on it.
#[derive(Debug)]
pub struct Decided<T> {
    pub access: Access,
    /// The reported facts, gaps filled from what the machine reported before.
    pub facts: Facts,
    /// Whether the request was the machine's own (its facts were recorded).
    pub own: bool,
    /// Whether the machine has a record (a boot secret can be kept for it).
    pub recorded: bool,
    pub decision: T,
}

/// What one request served a machine ([`Inventory::served_boot`]).
#[derive(Debug, Clone)]
pub struct Served<'a> {
    pub profile: &'a str,
    /// What went out, e.g. `ipxe` or `ignition (next boot: install)`.
    pub what: &'a str,
    /// What that means for its boot.
    pub step: Option<Step>,
    /// The profile it boots, when not its selected one (kept for the documents after).
    pub booting_profile: Option<String>,
    /// `http` or `tftp`.
    pub source: &'static str,
}

/// A new boot secret: 128 bits from a cryptographically secure generator (the thread's
/// ChaCha, seeded from the OS), as 32 hex digits. Drawn before rendering, kept by
/// [`Inventory::served_boot`] once the document rendered.
pub fn mint_secret() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes: [u8; 16] = rand::random();
    let mut token = String::with_capacity(32);
    for b in bytes {
        token.push(char::from(HEX[usize::from(b >> 4)]));
        token.push(char::from(HEX[usize::from(b & 15)]));
    }
    token
}

impl Inventory {
    /// A boot-document request for `facts.mac`, all under one lock: what it may do
    /// ([`Access`]); `admit` says whether it is allowed and whether it is the machine's own
    /// (`None`: refused; `Some(own)`); an own request's facts are recorded and its address
    /// remembered; `decide` chooses what to serve from the filled-in facts and the record's
    /// boot choices, and the one-shot next boot is taken off the record when
    /// `uses_next_boot` says the decision uses it (so two racing requests cannot both get it;
    /// [`Inventory::give_back`] returns it). The writer is woken only when something changed.
    pub fn boot_request<T>(
        &self,
        ask: Ask<'_>,
        mut facts: Facts,
        admit: impl FnOnce(&Access) -> Option<bool>,
        decide: impl FnOnce(&Access, &Facts, &BootView) -> T,
        uses_next_boot: impl FnOnce(&T) -> bool,
    ) -> Asked<T> {
        let now = self.now();
        let mac = facts.mac;
        let mut inner = self.lock();
        let access = access_in(&inner, mac, ask, now);
        let Some(own) = admit(&access) else {
            return Asked::Refused(access);
        };
        let mut changed = false;
        if own {
            changed |= self.observe_in(&mut inner, &mut facts, ask.peer, now);
        } else {
            recall_in(&inner, &mut facts);
        }
        let (decision, took) = plan_in(
            &mut inner,
            mac,
            |view| decide(&access, &facts, view),
            uses_next_boot,
        );
        changed |= took;
        let recorded = inner.machines.contains_key(&mac);
        if changed {
            self.mark(inner, mac);
        }
        Asked::Decided(Decided {
            access,
            facts,
            own,
            recorded,
            decision,
        })
    }

    /// `mac` was served `served`, and, when it began a boot, given `secret` (from
    /// [`mint_secret`]) at `peer`: the last secret stops counting. One lock, one wake of the
    /// writer.
    pub fn served_boot(
        &self,
        mac: MacAddr,
        secret: Option<(String, Option<Ipv4Addr>)>,
        served: Served<'_>,
    ) {
        let Served {
            profile,
            what,
            step,
            booting_profile,
            source,
        } = served;
        let event = format!("served {what} (profile {profile})");
        self.apply_known(mac, source, event, step, |rec, now| {
            if let Some((token, peer)) = secret {
                rec.secret = Some(BootSecret {
                    token,
                    minted: Stamp(now),
                    source: peer,
                });
            }
            if !rec.declared || rec.profile.is_none() {
                rec.profile = Some(profile.to_string());
            }
            rec.last_served = Some(what.to_string());
            if step == Some(Step::Script) || step == Some(Step::LocalBoot) {
                rec.booting_profile = booting_profile;
            }
        });
    }

    /// `mac` was served `what` from `profile`; `step` is what that means for its boot.
    pub fn served(
        &self,
        mac: MacAddr,
        profile: &str,
        what: &str,
        step: Option<Step>,
        booting_profile: Option<String>,
        source: &'static str,
    ) {
        self.served_boot(
            mac,
            None,
            Served {
                profile,
                what,
                step,
                booting_profile,
                source,
            },
        );
    }

    /// [`Inventory::observe`], and remember that `peer` (the request's source address)
    /// belongs to the machine: one lock for both. The record is marked for the writer only
    /// when a fact it keeps changed.
    pub fn observe_from(&self, mut facts: Facts, peer: Option<Ipv4Addr>) -> Facts {
        let now = self.now();
        let mut inner = self.lock();
        if self.observe_in(&mut inner, &mut facts, peer, now) {
            self.mark(inner, facts.mac);
        }
        facts
    }

    /// Merge what a request reports into the record of `facts.mac` (made within the source's
    /// budget) and fill the gaps in `facts` from it; whether a fact the record keeps changed.
    fn observe_in(
        &self,
        inner: &mut Inner,
        facts: &mut Facts,
        peer: Option<Ipv4Addr>,
        now: SystemTime,
    ) -> bool {
        let mac = facts.mac;
        let origin = Origin::Network(peer.map(IpAddr::V4));
        let Some(rec) = self.entry(inner, mac, now, origin) else {
            tracing::debug!(%mac, ?peer, "not recorded: too many new machines from this address");
            return false;
        };
        rec.last_seen = Stamp(now);
        let mut changed = merge(&mut rec.uuid, &mut facts.uuid);
        changed |= merge(&mut rec.arch, &mut facts.arch);
        changed |= merge(&mut rec.platform, &mut facts.platform);
        if rec.hostname.is_none() && facts.hostname.is_some() {
            rec.hostname.clone_from(&facts.hostname);
            changed = true;
        }
        for key in HARDWARE_KEYS {
            if let Some(v) = facts.labels.get(*key)
                && rec.hardware.get(*key) != Some(v)
            {
                rec.hardware.insert(key.to_string(), v.clone());
                changed = true;
            }
        }
        if let Some(ip) = peer
            && rec.ip.is_none()
        {
            rec.ip = Some(ip);
            changed = true;
        }
        if let Some(ip) = peer
            && inner.by_ip.get(&ip) != Some(&mac)
        {
            inner.by_ip.insert(ip, mac);
        }
        changed
    }

    /// Mark `mac` for the writer and wake it (after dropping the lock).
    fn mark(&self, mut inner: std::sync::MutexGuard<'_, Inner>, mac: MacAddr) {
        inner.dirty.insert(mac);
        inner.generation += 1;
        drop(inner);
        self.changed.notify_one();
    }

    /// Decide what `mac` is served with `decide` (a pure function of its record's boot
    /// choices, [`super::plan::serve`]) and, when the decision `uses_next_boot`, take the
    /// operator's one-shot choice off the record, all under one lock. [`Inventory::give_back`]
    /// returns it when serving then fails.
    pub fn plan_boot<T>(
        &self,
        mac: MacAddr,
        decide: impl FnOnce(&BootView) -> T,
        uses_next_boot: impl FnOnce(&T) -> bool,
    ) -> T {
        let mut inner = self.lock();
        let (decision, took) = plan_in(&mut inner, mac, decide, uses_next_boot);
        if took {
            self.mark(inner, mac);
        }
        decision
    }

    /// What a request from `peer`, carrying `token`, may do for `mac`. It is the machine's
    /// own when it comes from the address Kindling's DHCP gave the machine or saw it use.
    /// Where Kindling's DHCP knows no address of the machine (DHCP off; proxy mode before the
    /// machine talked to it from its address, as a UEFI HTTP boot client never does), from the
    /// address its current boot's script went to, and, when `may_bind` (a boot script request)
    /// and no boot is bound, from anywhere: the first such request binds the boot to its
    /// address.
    pub fn access(
        &self,
        mac: MacAddr,
        peer: Option<Ipv4Addr>,
        token: Option<&str>,
        dhcp: DhcpMode,
        may_bind: bool,
    ) -> Access {
        let now = self.now();
        let ask = Ask {
            peer,
            token,
            dhcp,
            boot_script: may_bind,
        };
        access_in(&self.lock(), mac, ask, now)
    }

    /// A new boot of `mac` is being served its script at `peer`: mint its secret (the last
    /// one stops counting) and return it (`None` without a record).
    pub fn begin_boot(&self, mac: MacAddr, peer: Option<Ipv4Addr>) -> Option<String> {
        let token = mint_secret();
        let now = self.now();
        let mut inner = self.lock();
        let rec = inner.machines.get_mut(&mac)?;
        rec.secret = Some(BootSecret {
            token: token.clone(),
            minted: Stamp(now),
            source: peer,
        });
        self.mark(inner, mac);
        Some(token)
    }

    /// `facts` with gaps filled from what the machine reported before, changing nothing: for
    /// a request that is not the machine's own.
    pub fn recall(&self, mut facts: Facts) -> Facts {
        recall_in(&self.lock(), &mut facts);
        facts
    }
}

fn access_in(inner: &Inner, mac: MacAddr, ask: Ask<'_>, now: SystemTime) -> Access {
    let rec = inner.machines.get(&mac);
    let dhcp_knows = match ask.dhcp {
        DhcpMode::Full => true,
        DhcpMode::Proxy => rec.is_some_and(|r| r.dhcp_ip.is_some()),
        DhcpMode::Off => false,
    };
    let secret = rec.and_then(|r| r.secret.as_ref()).filter(|s| s.live(now));
    let token_ok = match (ask.token, secret) {
        (Some(t), Some(s)) => same_secret(t, &s.token),
        _ => false,
    };
    let from_machine = match (ask.peer, rec) {
        (None, _) => false,
        (Some(p), Some(r)) if r.dhcp_ip == Some(p) => true,
        (Some(p), _) if !dhcp_knows => match secret.and_then(|s| s.source) {
            Some(bound) => bound == p,
            None => ask.boot_script,
        },
        _ => false,
    };
    let secret = (from_machine || token_ok)
        .then(|| secret.map(|s| s.token.clone()))
        .flatten();
    Access {
        from_machine,
        token_ok,
        secret,
    }
}

fn recall_in(inner: &Inner, facts: &mut Facts) {
    if let Some(rec) = inner.machines.get(&facts.mac) {
        for (reported, stored) in [
            (&mut facts.uuid, &rec.uuid),
            (&mut facts.arch, &rec.arch),
            (&mut facts.platform, &rec.platform),
        ] {
            if reported.is_none() {
                reported.clone_from(stored);
            }
        }
    }
}

/// The decision for `mac`, and whether the one-shot next boot was taken off its record.
fn plan_in<T>(
    inner: &mut Inner,
    mac: MacAddr,
    decide: impl FnOnce(&BootView) -> T,
    uses_next_boot: impl FnOnce(&T) -> bool,
) -> (T, bool) {
    let Some(rec) = inner.machines.get_mut(&mac) else {
        return (decide(&BootView::default()), false);
    };
    let view = BootView {
        next_boot: rec.next_boot.clone(),
        provisioned: rec.provisioned,
        booting_profile: rec.booting_profile.clone(),
    };
    let decision = decide(&view);
    let took = uses_next_boot(&decision) && rec.next_boot.take().is_some();
    (decision, took)
}

/// Whether `given` is `secret`, compared without an early exit on the first difference.
fn same_secret(given: &str, secret: &str) -> bool {
    given.len() == secret.len()
        && given
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
