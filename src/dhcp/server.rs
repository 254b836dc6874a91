//! The DHCP service's tasks: one receive loop per socket, the lease writer, the expiry timer
//! and the profile follower. Every decision is in [`super::service`].
//!
//! - **Receive loop** ([`run`]): a datagram at a time through [`Service::process`]. Receive
//!   errors back off ([`Receiver`]); one that lasts a minute ends the loop with an error for
//!   the supervisor.
//! - **Lease writer** ([`LeaseWriter`]): an ACK is not sent by the receive loop. It goes to the
//!   writer with its lease, which claims every lease waiting in one durable transaction and
//!   only then sends their ACKs (group commit: durable before the ACK leaves, without one
//!   fsync per client). A lone lease on a quiet LAN is committed on the writer's own
//!   thread (the receive loops' lane), anything more on a blocking thread. Once committed,
//!   each change is announced on the bus.
//! - **Expiry** ([`run_expiry`]): sleeps until the next bound lease ends and announces the ones
//!   that ended without a renewal (DNS drops their names).
//! - **Profiles** ([`run_profile_follower`]): after a reload, the new set and its reservations
//!   replace the old ones in one step.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::leases::{Lease, State as LeaseState};
use super::service::{Ingress, Out, Service, Write};
use super::store::{Claim, LeaseStore, StoreError};
use crate::ctx::Health;
use crate::events::{LeaseChange, ProfilesEvent};
use crate::metrics::StoreLabels;
use crate::net::{ReceiveError, Receiver};
use crate::profiles::watch::Live;
use crate::time_fmt::unix_now;

/// Lease writes waiting for the writer; beyond this the receive loops wait (backpressure).
const WRITE_QUEUE: usize = 4096;
/// Most leases committed in one transaction.
const WRITE_BATCH: usize = 1024;
/// How long after its last commit the writer takes a lone lease to come from a quiet LAN
/// and commits it on its own thread (see [`LeaseWriter::commit`]).
const QUIET: Duration = Duration::from_millis(100);

/// Why a DHCP task stopped.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The socket keeps failing.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// The lease writer is gone: ACKs cannot be made durable.
    #[error("the lease writer stopped: ACKs can no longer be made durable")]
    WriterGone,
}

/// One bound DHCP socket.
#[derive(Debug, Clone)]
pub struct Listener {
    /// The socket (`0.0.0.0:port`, `SO_BINDTODEVICE`).
    pub socket: Arc<UdpSocket>,
    /// What the packet path knows of it.
    pub ingress: Ingress,
}

/// Where the receive loops hand leases to the writer.
#[derive(Debug, Clone)]
pub struct Writes(mpsc::Sender<Queued>);

/// A lease change and the socket its ACK leaves from.
#[derive(Debug)]
pub struct Queued {
    write: Write,
    socket: Arc<UdpSocket>,
}

/// Serve one socket until `token` is cancelled.
pub async fn run(
    service: Arc<Service>,
    listener: Listener,
    writes: Option<Writes>,
    token: CancellationToken,
) -> Result<(), DhcpError> {
    let Listener { socket, ingress } = listener;
    let mut buf = vec![0u8; 1500];
    let what = format!("DHCP on {}:{}", ingress.iface, ingress.port);
    let mut receiver = Receiver::new(socket.clone(), what);
    loop {
        let Some((len, peer)) = receiver.recv(&mut buf, &token).await? else {
            return Ok(());
        };
        // A span per datagram only when debugging: at info one would cost every packet an
        // allocation and formatting (a few percent at 10,000 exchanges a second), and the
        // lines that are on at info name the interface themselves.
        let span = tracing::debug_span!("dhcp", iface = %ingress.iface, %peer);
        let out = span.in_scope(|| service.process(&buf[..len], peer, &ingress));
        match out {
            None => {}
            Some(Out::Send(bytes, to)) => {
                if let Err(e) = socket.send_to(&bytes, SocketAddr::V4(to)).await {
                    tracing::warn!(iface = %ingress.iface, %to, error = %e, "DHCP send failed");
                }
            }
            Some(Out::Write(write)) => {
                let Some(Writes(tx)) = &writes else {
                    continue;
                };
                // Durable before the ACK leaves: the writer sends it after the commit.
                let queued = Queued {
                    write,
                    socket: socket.clone(),
                };
                if tx.send(queued).await.is_err() {
                    return Err(DhcpError::WriterGone);
                }
            }
        }
    }
}

/// Commits lease changes in batches, then sends the ACKs that waited for them.
pub struct LeaseWriter {
    store: Arc<dyn LeaseStore>,
    service: Arc<Service>,
    expiry: Arc<Expiry>,
    rx: mpsc::Receiver<Queued>,
    health: Option<Arc<Health>>,
    /// Since when the store has been failing, and the ACKs refused meanwhile.
    trouble: Option<Trouble>,
    /// When the last commit ended.
    last_commit: Option<tokio::time::Instant>,
}

/// A stretch of store failures: logged when it starts, every [`TROUBLE_LOG_EVERY`], and
/// when it ends.
#[derive(Debug)]
struct Trouble {
    since: tokio::time::Instant,
    logged: tokio::time::Instant,
    refused: usize,
    failures: u32,
}

/// How often a failing lease store is logged again.
const TROUBLE_LOG_EVERY: Duration = Duration::from_secs(10);

impl std::fmt::Debug for LeaseWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseWriter").finish_non_exhaustive()
    }
}

impl LeaseWriter {
    /// A writer into `store`, and the handle the receive loops queue on.
    pub fn new(
        store: Arc<dyn LeaseStore>,
        service: Arc<Service>,
        expiry: Arc<Expiry>,
    ) -> (LeaseWriter, Writes) {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        (
            LeaseWriter {
                store,
                service,
                expiry,
                rx,
                health: None,
                trouble: None,
                last_commit: None,
            },
            Writes(tx),
        )
    }

    /// Report the store's trouble to `health` (`/healthz`) too.
    pub fn with_health(mut self, health: Arc<Health>) -> LeaseWriter {
        self.health = Some(health);
        self
    }

    /// Run until `token` is cancelled, then commit what is still queued and stop.
    pub async fn run(mut self, token: CancellationToken) {
        let mut batch = Vec::with_capacity(64);
        loop {
            let got = tokio::select! {
                n = self.rx.recv_many(&mut batch, WRITE_BATCH) => n,
                _ = token.cancelled() => {
                    while batch.len() < WRITE_BATCH && let Ok(q) = self.rx.try_recv() {
                        batch.push(q);
                    }
                    self.commit(&mut batch).await;
                    return;
                }
            };
            if got == 0 {
                return;
            }
            self.commit(&mut batch).await;
        }
    }

    /// Claim the leases of `batch` in one transaction; send the ACKs of those committed.
    async fn commit(&mut self, batch: &mut Vec<Queued>) {
        if batch.is_empty() {
            return;
        }
        let leases: Vec<Lease> = batch.iter().map(|q| q.write.lease.clone()).collect();
        let now = unix_now();
        // A lone lease after a quiet spell (one machine's REQUEST) commits right here, as
        // dnsmasq does: its ACK then needs no other thread. Handed to a blocking thread it
        // waited for that thread's turn on the CPU and then for the lane's again; beside four
        // emulated VMs on two cores one such wake-up took 4.4 ms (traced in the lab). Under
        // load (another commit within `QUIET`, or a batch) the commit runs on a blocking
        // thread, so that this lane reads and answers the next packets meanwhile: committing
        // small batches here at 1,000-10,000 exchanges a second lowered the peak rate.
        let quiet = self.last_commit.is_none_or(|t| t.elapsed() >= QUIET);
        let here = if batch.len() == 1 && quiet {
            // A panic in the store stays a failed commit, as it is on a blocking thread.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.store.claim_here(&leases, now)
            }))
            .unwrap_or_else(|_| Some(Err(StoreError::Task("the lease store panicked".into()))))
        } else {
            None
        };
        let claimed = match here {
            Some(claimed) => claimed,
            None => self.store.claim(leases, now).await,
        };
        self.last_commit = Some(tokio::time::Instant::now());
        let claims = match claimed {
            Ok(c) => c,
            Err(e) => {
                let acks = batch.iter().filter(|q| q.write.ack.is_some()).count();
                self.failed(&e.to_string(), acks);
                batch.clear();
                return;
            }
        };
        self.recovered();
        for (q, claim) in batch.drain(..).zip(claims) {
            let Write { lease, change, ack } = q.write;
            if let Claim::Taken { holder } = claim {
                tracing::warn!(ip = %lease.ip, mac = ?lease.mac, holder = ?holder, "lease not committed: another instance holds the address; no ACK");
                continue;
            }
            if let Some((bytes, to)) = ack
                && let Err(e) = q.socket.send_to(&bytes, SocketAddr::V4(to)).await
            {
                tracing::warn!(%to, error = %e, "DHCP send failed");
            }
            if lease.state == LeaseState::Bound {
                self.expiry.watch(lease.expires, lease.ip);
            }
            self.service.announce(&lease, change);
        }
    }
}

impl LeaseWriter {
    /// A batch could not be made durable: none of its `acks` is sent (no ACK without a
    /// committed lease). Logged at the start of a stretch of failures and then every
    /// [`TROUBLE_LOG_EVERY`], counted, and shown in `/healthz`.
    fn failed(&mut self, error: &str, acks: usize) {
        let now = tokio::time::Instant::now();
        self.service.count_not_committed(acks);
        self.service
            .metrics()
            .store_errors
            .get_or_create(&StoreLabels { store: "leases" })
            .inc();
        let t = self.trouble.get_or_insert(Trouble {
            since: now,
            logged: now - TROUBLE_LOG_EVERY,
            refused: 0,
            failures: 0,
        });
        t.refused += acks;
        t.failures += 1;
        if now >= t.logged + TROUBLE_LOG_EVERY {
            t.logged = now;
            tracing::error!(error = %error, refused_acks = t.refused, for_s = t.since.elapsed().as_secs(), "lease store unavailable: no lease is acknowledged until it is back (repeated every 10 s)");
        }
        if let Some(h) = &self.health {
            h.failed("lease store", t.failures, error);
        }
    }

    /// A batch committed: the end of a stretch of failures, if there was one.
    fn recovered(&mut self) {
        if let Some(t) = self.trouble.take() {
            tracing::info!(
                refused_acks = t.refused,
                after_s = t.since.elapsed().as_secs(),
                "lease store reachable again; acknowledging leases"
            );
            if let Some(h) = &self.health {
                h.recovered("lease store");
            }
        }
    }
}

/// Bound leases by the time they end, so expiry is a timer and not a poll. One entry per
/// address (a renewal moves it), so the index is never larger than the pools.
#[derive(Debug, Default)]
pub struct Expiry {
    /// A std mutex, held for one index update.
    due: Mutex<Due>,
    /// Woken when an entry earlier than the one slept for arrives.
    sooner: Notify,
}

#[derive(Debug, Default)]
struct Due {
    /// (expires, address), soonest first.
    by_time: BTreeSet<(u64, Ipv4Addr)>,
    /// The entry of each address.
    by_ip: HashMap<Ipv4Addr, u64>,
}

impl Expiry {
    /// Announce `ip` when it ends at `expires` (Unix seconds), unless renewed meanwhile.
    pub fn watch(&self, expires: u64, ip: Ipv4Addr) {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = due.by_ip.insert(ip, expires) {
            due.by_time.remove(&(old, ip));
        }
        let first = due.by_time.first().map(|(t, _)| *t);
        due.by_time.insert((expires, ip));
        if first.is_none_or(|t| expires < t) {
            self.sooner.notify_one();
        }
    }

    /// The entries due at `now`, taken off.
    fn take_due(&self, now: u64) -> Vec<Ipv4Addr> {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        while let Some(&(t, ip)) = due.by_time.first()
            && t <= now
        {
            due.by_time.pop_first();
            due.by_ip.remove(&ip);
            out.push(ip);
        }
        out
    }

    fn next(&self) -> Option<u64> {
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_time
            .first()
            .map(|(t, _)| *t)
    }

    /// How many addresses are watched.
    pub fn len(&self) -> usize {
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_ip
            .len()
    }

    /// Whether no address is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Announce leases that end without a renewal, until `token` is cancelled.
pub async fn run_expiry(service: Arc<Service>, expiry: Arc<Expiry>, token: CancellationToken) {
    for lease in service.bound_leases() {
        expiry.watch(lease.expires, lease.ip);
    }
    loop {
        let now = unix_now();
        for ip in expiry.take_due(now) {
            if let Some(lease) = service.lease(ip)
                && lease.state == LeaseState::Bound
                && lease.expires <= now
            {
                tracing::debug!(%ip, mac = ?lease.mac, "DHCP lease expired");
                service.announce(&lease, LeaseChange::Expired);
            }
        }
        let wait = expiry.next().map_or(Duration::from_secs(3600), |t| {
            // Lease times are whole seconds: wake just after the second it ends in.
            Duration::from_secs(t.saturating_sub(now)) + Duration::from_millis(50)
        });
        tokio::select! {
            _ = token.cancelled() => return,
            _ = expiry.sooner.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Follow profile reloads: the new set and its reservations replace the old ones in one step.
pub async fn run_profile_follower(
    service: Arc<Service>,
    live: Arc<Live>,
    token: CancellationToken,
) {
    let mut events = live.bus().subscribe::<Arc<ProfilesEvent>>();
    loop {
        let got = tokio::select! {
            _ = token.cancelled() => return,
            got = events.recv() => got,
        };
        match got {
            Ok(ev) if matches!(*ev, ProfilesEvent::Failed { .. }) => {}
            Ok(_) | Err(RecvError::Lagged(_)) => service.use_profiles(live.current()),
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::dhcp::leases::Now;
    use crate::mac::MacAddr;

    /// A local lease store that counts which way each batch was claimed, takes 20 ms per
    /// commit, and counts the leases committed so far.
    #[derive(Default)]
    struct Counting {
        here: AtomicUsize,
        awaited: AtomicUsize,
        committed: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl LeaseStore for Arc<Counting> {
        async fn load(&self) -> Result<Vec<Lease>, StoreError> {
            Ok(Vec::new())
        }
        async fn claim(&self, leases: Vec<Lease>, _now: Now) -> Result<Vec<Claim>, StoreError> {
            self.awaited.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.committed.fetch_add(leases.len(), Ordering::SeqCst);
            Ok(vec![Claim::Committed; leases.len()])
        }
        fn claim_here(
            &self,
            leases: &[Lease],
            _now: Now,
        ) -> Option<Result<Vec<Claim>, StoreError>> {
            self.here.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            self.committed.fetch_add(leases.len(), Ordering::SeqCst);
            Some(Ok(vec![Claim::Committed; leases.len()]))
        }
    }

    /// Lease `n`'s write, its ACK (the byte `n`) to `to` from `socket`.
    fn queued(n: u8, to: SocketAddrV4, socket: &Arc<UdpSocket>) -> Queued {
        Queued {
            write: Write {
                lease: Lease {
                    ip: Ipv4Addr::new(10, 0, 0, 100 + n),
                    mac: Some(MacAddr([0x52, 0x54, 0, 0, 0, n])),
                    state: LeaseState::Bound,
                    expires: unix_now() + 3600,
                    hostname: None,
                    client_id: None,
                    bound_at: unix_now(),
                },
                change: crate::events::LeaseChange::Granted,
                ack: Some((vec![n], to)),
            },
            socket: socket.clone(),
        }
    }

    /// A full-mode service with one default profile, for the writer's announcements.
    fn service() -> Arc<Service> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("node.toml"),
            "default = true\n[boot]\nkernel = \"k\"\n",
        )
        .unwrap();
        let sources = crate::profiles::Sources {
            profiles: dir.path().into(),
            scripts: Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe"),
        };
        let config = crate::config::Config::parse(
            Path::new("/k.toml"),
            "[server]\nbase_url = \"http://10.0.0.2:8080\"\n[dhcp]\nmode = \"full\"\n\
             interfaces = [\"vs0\"]\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\n\
             range = [\"10.0.0.100\", \"10.0.0.200\"]\nserver_ip = \"10.0.0.2\"\n",
        )
        .unwrap();
        Arc::new(Service::new(
            &config,
            Arc::new(crate::profiles::ProfileSet::load(&sources, "http://10.0.0.2:8080").unwrap()),
            Default::default(),
            crate::metrics::Metrics::new(),
            crate::events::Bus::new(),
            "http://10.0.0.2:8080".into(),
        ))
    }

    #[tokio::test]
    async fn a_lone_lease_on_a_quiet_lan_commits_on_the_writers_thread_others_on_another_and_acks_follow()
     {
        let service = service();
        let store = Arc::new(Counting::default());
        let (writer, Writes(tx)) =
            LeaseWriter::new(Arc::new(store.clone()), service, Default::default());
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(to) = client.local_addr().unwrap() else {
            unreachable!()
        };
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let queue = |n: u8| queued(n, to, &socket);
        // Ten waiting when the writer starts: one batch, committed on a blocking thread.
        for n in 0..10 {
            tx.send(queue(n)).await.unwrap();
        }
        let token = CancellationToken::new();
        let running = tokio::spawn(writer.run(token.clone()));
        let mut buf = [0u8; 8];
        for acked in 1..=10 {
            client.recv(&mut buf).await.unwrap();
            assert!(
                store.committed.load(Ordering::SeqCst) >= acked,
                "an ACK left before its lease was committed"
            );
        }
        assert_eq!(store.awaited.load(Ordering::SeqCst), 1);
        assert_eq!(store.here.load(Ordering::SeqCst), 0);
        // One alone right after: the LAN is busy, on a blocking thread too.
        tx.send(queue(10)).await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], [10]);
        assert_eq!(store.awaited.load(Ordering::SeqCst), 2);
        // One alone after a quiet spell: committed on the writer's own thread.
        tokio::time::sleep(QUIET + Duration::from_millis(50)).await;
        tx.send(queue(11)).await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], [11]);
        assert_eq!(store.committed.load(Ordering::SeqCst), 12);
        assert_eq!(store.here.load(Ordering::SeqCst), 1);
        assert_eq!(store.awaited.load(Ordering::SeqCst), 2);
        token.cancel();
        running.await.unwrap();
    }

    /// A store whose commit on the calling thread panics.
    struct Panicking;

    #[async_trait::async_trait]
    impl LeaseStore for Panicking {
        async fn load(&self) -> Result<Vec<Lease>, StoreError> {
            Ok(Vec::new())
        }
        async fn claim(&self, leases: Vec<Lease>, _now: Now) -> Result<Vec<Claim>, StoreError> {
            Ok(vec![Claim::Committed; leases.len()])
        }
        fn claim_here(&self, _: &[Lease], _: Now) -> Option<Result<Vec<Claim>, StoreError>> {
            panic!("the store broke")
        }
    }

    #[tokio::test]
    async fn a_store_that_panics_on_the_writers_thread_fails_that_commit_only() {
        let (writer, Writes(tx)) =
            LeaseWriter::new(Arc::new(Panicking), service(), Default::default());
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(to) = client.local_addr().unwrap() else {
            unreachable!()
        };
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let queue = |n: u8| queued(n, to, &socket);
        let token = CancellationToken::new();
        let running = tokio::spawn(writer.run(token.clone()));
        // The first lease (a quiet LAN) meets the panic: no ACK, and the writer goes on.
        tx.send(queue(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Right after, not quiet: committed the other way, and its ACK is the first to come.
        tx.send(queue(2)).await.unwrap();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("the writer still answers")
            .unwrap();
        assert_eq!(&buf[..n], [2]);
        token.cancel();
        running.await.expect("the writer did not panic");
    }

    #[test]
    fn expiry_keeps_one_entry_per_address_and_gives_the_due_ones() {
        let e = Expiry::default();
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        e.watch(100, a);
        e.watch(50, b);
        // Renewals move an address's entry; they do not add one.
        for t in 101..200 {
            e.watch(t, a);
        }
        assert_eq!(e.len(), 2);
        assert_eq!(e.next(), Some(50));
        assert_eq!(e.take_due(60), [b]);
        assert!(e.take_due(150).is_empty(), "a was renewed to 199");
        assert_eq!(e.take_due(199), [a]);
        assert!(e.is_empty());
    }
}
