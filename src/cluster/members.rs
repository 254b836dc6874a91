//! Membership: each instance keeps a key `<prefix>members/<segment>/<node_name>` alive on an
//! etcd lease of `[cluster] member_ttl`, and watches the others' (its segment's for the split,
//! every segment's for the profile digests). A member that stops (crash, network)
//! loses its key when its lease runs out; the rest take over its buckets after
//! `takeover_delay` (see [`super::buckets`]). Every change of this instance's share is handed
//! to `on_change` (the DHCP service answers only its buckets).

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::buckets::{BUCKETS, Membership, Share};
use super::{ClusterError, Etcd};

/// The first pause before trying again after etcd trouble, doubling up to 10 s.
const RETRY_FIRST: Duration = Duration::from_millis(500);

/// Keep this instance a member until `token` is cancelled (then its key is removed), telling
/// `on_change` this instance's share whenever it changes.
pub async fn run(
    etcd: Etcd,
    segment: String,
    ttl: Duration,
    takeover: Duration,
    on_change: impl Fn(Share) + Send + 'static,
    profiles: impl Fn() -> String + Send + 'static,
    token: CancellationToken,
) {
    let mut view = Membership::new(etcd.node(), takeover);
    let mut last = None;
    let mut pause = RETRY_FIRST;
    let mut peers = Peers::new(ttl * 2 / 3);
    let mut lease = Lease::default();
    loop {
        let hooks = Hooks {
            on_change: &on_change,
            profiles: &profiles,
        };
        match session(
            &etcd, &segment, ttl, &mut view, &hooks, &mut last, &mut peers, &mut lease, &token,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(node = %etcd.node(), error = %e, retry_in = ?pause, "cluster membership interrupted");
            }
        }
        // Once this instance's key has expired in etcd, the others answer its clients: stop
        // answering them too, or they would hear from two instances.
        let expired = lease.alive_at.map(|at| at + ttl);
        let until = Instant::now() + pause;
        loop {
            let gone = expired.filter(|at| {
                *at <= Instant::now() && last.as_ref().is_some_and(|s: &Share| s.count() > 0)
            });
            if gone.is_some() {
                tracing::warn!(node = %etcd.node(), "cluster: cut off from etcd for longer than member_ttl; the other members have taken this instance's clients, and it answers none of them until it is a member again");
                let none = Share::none();
                last = Some(none.clone());
                on_change(none);
            }
            let wake = match expired.filter(|at| *at > Instant::now()) {
                Some(at) => at.min(until),
                None => until,
            };
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
            if Instant::now() >= until {
                break;
            }
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// This instance's last membership lease: its id, and when etcd last confirmed it.
#[derive(Default)]
struct Lease {
    id: Option<i64>,
    alive_at: Option<Instant>,
}

/// What a session reports to and asks of the rest of the instance.
struct Hooks<'a, C, P> {
    on_change: &'a C,
    profiles: &'a P,
}

/// The profile digests the other members announced, and which mismatches were told. A
/// mismatch is told once it outlasted `grace` (two keep-alive ticks): two instances reloading
/// the same new files announce them a tick apart.
struct Peers {
    digests: std::collections::BTreeMap<String, String>,
    seen: std::collections::BTreeMap<(String, String, String), Instant>,
    warned: std::collections::BTreeSet<(String, String, String)>,
    grace: Duration,
}

impl Peers {
    fn new(grace: Duration) -> Peers {
        Peers {
            digests: Default::default(),
            seen: Default::default(),
            warned: Default::default(),
            grace,
        }
    }

    /// Remember `node`'s digest (from its membership value) and check it against ours.
    fn saw(&mut self, node: &str, value: &[u8], mine: &str) {
        let Some(theirs) = serde_json::from_slice::<serde_json::Value>(value)
            .ok()
            .and_then(|v| v.get("profiles")?.as_str().map(str::to_string))
        else {
            return;
        };
        self.digests.insert(node.to_string(), theirs);
        self.check(mine, Instant::now());
    }

    /// Warn once per pair of different digests that lasted `grace`.
    fn check(&mut self, mine: &str, now: Instant) {
        let mut current = std::collections::BTreeSet::new();
        for (node, theirs) in &self.digests {
            if theirs == mine {
                continue;
            }
            let pair = (node.clone(), theirs.clone(), mine.to_string());
            let since = *self.seen.entry(pair.clone()).or_insert(now);
            current.insert(pair.clone());
            if now.duration_since(since) >= self.grace && self.warned.insert(pair) {
                tracing::warn!(%node, theirs = %theirs, ours = %mine, "cluster members serve different profile sets: deploy the same profiles to every instance");
            }
        }
        self.seen.retain(|pair, _| current.contains(pair));
    }
}

/// A member of the cluster, as its membership key says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Its segment.
    pub segment: String,
    /// Its `node_name`.
    pub node: String,
    /// The digest of the profile files it serves.
    pub profiles: Option<String>,
    /// When it joined (Unix seconds).
    pub since: Option<u64>,
}

/// Every live member of every segment.
pub async fn list(etcd: &Etcd) -> Result<Vec<Member>, ClusterError> {
    let all = etcd.key("members/");
    let mut c = etcd.client();
    let resp = etcd
        .limit(c.get(all.as_str(), Some(GetOptions::new().with_prefix())))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = node_of(kv.key(), &all)?;
            let (segment, node) = name.split_once('/')?;
            let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap_or_default();
            Some(Member {
                segment: segment.to_string(),
                node: node.to_string(),
                profiles: v["profiles"].as_str().map(str::to_string),
                since: v["since"].as_u64(),
            })
        })
        .collect())
}

/// This instance's membership value.
fn member_value(me: &str, digest: &str) -> String {
    serde_json::json!({ "node": me, "since": crate::time_fmt::unix_now(), "profiles": digest })
        .to_string()
}

/// The node name in a membership key.
fn node_of(key: &[u8], prefix: &str) -> Option<String> {
    let key = std::str::from_utf8(key).ok()?;
    Some(key.strip_prefix(prefix)?.to_string()).filter(|n| !n.is_empty())
}

/// Hand a changed share to `on_change`, with a log line.
fn publish(view: &Membership, now: Instant, on_change: &impl Fn(Share), last: &mut Option<Share>) {
    let share = view.share(now.into_std());
    if last.as_ref() == Some(&share) {
        return;
    }
    tracing::info!(
        buckets = share.count(),
        of = BUCKETS,
        members = %view.owners(now.into_std()).join(","),
        "cluster: this instance answers its share of the clients"
    );
    *last = Some(share.clone());
    on_change(share);
}

/// One membership: register, follow the others, keep the lease alive; `Ok` when cancelled,
/// `Err` when etcd failed or the membership was lost.
#[allow(clippy::too_many_arguments)]
async fn session(
    etcd: &Etcd,
    segment: &str,
    ttl: Duration,
    view: &mut Membership,
    hooks: &Hooks<'_, impl Fn(Share), impl Fn() -> String>,
    last: &mut Option<Share>,
    peers: &mut Peers,
    previous: &mut Lease,
    token: &CancellationToken,
) -> Result<(), ClusterError> {
    let on_change = hooks.on_change;
    let mut digest = (hooks.profiles)();
    let me = etcd.node().to_string();
    let prefix = etcd.key(&format!("members/{segment}/"));
    let key = format!("{prefix}{me}");
    let mut c = etcd.client();
    let secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
    let lease = etcd.limit(c.lease_grant(secs, None)).await?.id();
    let value = member_value(&me, &digest);
    let register = Txn::new()
        .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.as_str(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let mut registered = etcd.limit(c.txn(register.clone())).await?.succeeded();
    if !registered && let Some(old) = previous.id {
        // The key may still be this process's own, from before etcd trouble: end that lease
        // (the key goes with it) and register afresh.
        let held = etcd.limit(c.get(key.as_str(), None)).await?;
        if held.kvs().first().is_some_and(|kv| kv.lease() == old) {
            let _ = etcd.limit(c.lease_revoke(old)).await;
            registered = etcd.limit(c.txn(register)).await?.succeeded();
        }
    }
    if !registered {
        let _ = etcd.limit(c.lease_revoke(lease)).await;
        return Err(ClusterError::Membership(format!(
            "{key} exists: another instance runs as node_name {me:?}, or this one's last run has not expired yet (at most {ttl:?})"
        )));
    }
    *previous = Lease {
        id: Some(lease),
        alive_at: Some(Instant::now()),
    };
    let (mut keeper, mut alive) = etcd.limit(c.lease_keep_alive(lease)).await?;
    // Every segment's members: this segment's split the clients; all of them compare
    // profile digests (instances per rack should serve the same files too).
    let all = etcd.key("members/");
    let members = etcd
        .limit(c.get(all.as_str(), Some(GetOptions::new().with_prefix())))
        .await?;
    let revision = members.header().map_or(0, |h| h.revision());
    let mut present = std::collections::BTreeSet::new();
    for kv in members.kvs() {
        if let Some(node) = node_of(kv.key(), &prefix) {
            if node != me {
                peers.saw(&node, kv.value(), &digest);
            }
            present.insert(node);
        } else if let Some(elsewhere) = node_of(kv.key(), &all) {
            peers.saw(&elsewhere, kv.value(), &digest);
        }
    }
    // After a gap (a failed session) departures may have been missed: the list is the truth.
    view.reset_to(&present, Instant::now().into_std());
    publish(view, Instant::now(), on_change, last);
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = etcd.limit(c.watch(all.as_str(), Some(options))).await?;
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        // A takeover whose moment passed while another branch below was being handled (a
        // keep-alive in flight) is applied here: the next wake-up below only looks ahead.
        publish(view, Instant::now(), on_change, last);
        let takeover = view.next_takeover(Instant::now().into_std()).map_or_else(
            || Instant::now() + Duration::from_secs(3600),
            Instant::from_std,
        );
        tokio::select! {
            _ = token.cancelled() => {
                // Leave at once: the others take over after their takeover delay.
                let _ = tokio::time::timeout(etcd.timeout(), c.lease_revoke(lease)).await;
                return Ok(());
            }
            _ = tick.tick() => {
                etcd.limit(keeper.keep_alive()).await?;
                let now_digest = (hooks.profiles)();
                if now_digest != digest {
                    // The profiles were reloaded: tell the others.
                    digest = now_digest;
                    let put = PutOptions::new().with_lease(lease);
                    etcd.limit(c.put(key.as_str(), member_value(&me, &digest), Some(put))).await?;
                }
                peers.check(&digest, Instant::now());
            }
            got = alive.message() => match got? {
                Some(r) if r.ttl() <= 0 => {
                    return Err(ClusterError::Membership("this instance's membership lease expired".into()));
                }
                Some(_) => previous.alive_at = Some(Instant::now()),
                None => return Err(ClusterError::Membership("the keep-alive stream ended".into())),
            },
            got = watch.message() => {
                let Some(resp) = got? else {
                    return Err(ClusterError::Membership("the members watch ended".into()));
                };
                if resp.canceled() {
                    return Err(ClusterError::Membership(format!("the members watch was cancelled: {}", resp.cancel_reason())));
                }
                let now = Instant::now();
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Some(node) = node_of(kv.key(), &prefix) else {
                        // A member of another segment: its digest only.
                        if event.event_type() == EventType::Put
                            && let Some(elsewhere) = node_of(kv.key(), &all)
                        {
                            peers.saw(&elsewhere, kv.value(), &digest);
                        }
                        continue;
                    };
                    match event.event_type() {
                        EventType::Put => {
                            view.joined(&node);
                            if node != me {
                                peers.saw(&node, kv.value(), &digest);
                            }
                        }
                        EventType::Delete if node == me => {
                            return Err(ClusterError::Membership("this instance's membership key was deleted".into()));
                        }
                        EventType::Delete => {
                            tracing::warn!(%node, after = ?view.takeover(), "cluster member left: its clients move here after the takeover delay");
                            view.left(&node, now.into_std());
                        }
                    }
                }
                publish(view, now, on_change, last);
            }
            _ = tokio::time::sleep_until(takeover) => {
                publish(view, Instant::now(), on_change, last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(digest: &str) -> Vec<u8> {
        member_value("other", digest).into_bytes()
    }

    /// A mismatch is told only once it outlasted the grace, once per pair; one that goes away
    /// within it (two instances reloading the same files a tick apart) is never told.
    #[test]
    fn a_profile_mismatch_is_told_once_it_lasts() {
        let grace = Duration::from_secs(6);
        let mut peers = Peers::new(grace);
        let t0 = Instant::now();
        peers.saw("b", &value("new"), "old");
        peers.check("new", t0 + Duration::from_secs(3));
        peers.check("new", t0 + Duration::from_secs(20));
        assert!(peers.warned.is_empty(), "settled within the grace");
        peers.saw("b", &value("other"), "new");
        let t1 = Instant::now();
        peers.check("new", t1 + Duration::from_secs(1));
        assert!(peers.warned.is_empty());
        peers.check("new", t1 + grace);
        assert_eq!(peers.warned.len(), 1);
        peers.check("new", t1 + grace * 3);
        assert_eq!(peers.warned.len(), 1, "told once");
    }
}
