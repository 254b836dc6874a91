//! Membership: each instance keeps a key `<prefix>members/<node_name>` alive on an etcd lease
//! of `[cluster] member_ttl`, and watches the others'. A member that stops (crash, network)
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
    token: CancellationToken,
) {
    let mut view = Membership::new(etcd.node(), takeover);
    let mut last = None;
    let mut pause = RETRY_FIRST;
    loop {
        match session(
            &etcd, &segment, ttl, &mut view, &on_change, &mut last, &token,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(node = %etcd.node(), error = %e, retry_in = ?pause, "cluster membership interrupted");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
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
async fn session(
    etcd: &Etcd,
    segment: &str,
    ttl: Duration,
    view: &mut Membership,
    on_change: &impl Fn(Share),
    last: &mut Option<Share>,
    token: &CancellationToken,
) -> Result<(), ClusterError> {
    let me = etcd.node().to_string();
    let prefix = etcd.key(&format!("members/{segment}/"));
    let key = format!("{prefix}{me}");
    let mut c = etcd.client();
    let secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
    let lease = etcd.limit(c.lease_grant(secs, None)).await?.id();
    let value = serde_json::json!({ "node": me, "since": crate::time_fmt::unix_now() }).to_string();
    let register = Txn::new()
        .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.as_str(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    if !etcd.limit(c.txn(register)).await?.succeeded() {
        let _ = etcd.limit(c.lease_revoke(lease)).await;
        return Err(ClusterError::Membership(format!(
            "{key} exists: another instance runs as node_name {me:?}, or this one's last run has not expired yet (at most {ttl:?})"
        )));
    }
    let (mut keeper, mut alive) = etcd.limit(c.lease_keep_alive(lease)).await?;
    let members = etcd
        .limit(c.get(prefix.as_str(), Some(GetOptions::new().with_prefix())))
        .await?;
    let revision = members.header().map_or(0, |h| h.revision());
    for kv in members.kvs() {
        if let Some(node) = node_of(kv.key(), &prefix) {
            view.joined(&node);
        }
    }
    publish(view, Instant::now(), on_change, last);
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = etcd.limit(c.watch(prefix.as_str(), Some(options))).await?;
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
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
            }
            got = alive.message() => match got? {
                Some(r) if r.ttl() <= 0 => {
                    return Err(ClusterError::Membership("this instance's membership lease expired".into()));
                }
                Some(_) => {}
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
                    let Some(node) = event.kv().and_then(|kv| node_of(kv.key(), &prefix)) else {
                        continue;
                    };
                    match event.event_type() {
                        EventType::Put => view.joined(&node),
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
