//! Durable leases behind the [`LeaseStore`] trait; the embedded implementation is a redb
//! database under the state directory.
//!
//! The server claims a lease with [`LeaseStore::claim`] and sends the DHCPACK only after it
//! returns: redb commits with `Durability::Immediate` (fsync), so a crash or `kill -9` after
//! the ACK left keeps the lease. A claim is a conditional write: it succeeds only where the
//! address is free or already the same client's, so a store shared by several instances can
//! never bind one address to two clients. One table, address → JSON lease (readable with any
//! redb tool; a few hundred bytes per machine). A record that no longer decodes is skipped
//! with a warning at start-up rather than refusing to start.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::leases::{Lease, Now};
use crate::mac::MacAddr;

const LEASES: TableDefinition<'_, u32, &[u8]> = TableDefinition::new("leases");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("lease store: {0}")]
    Db(#[from] redb::Error),
    /// The blocking task doing the I/O failed.
    #[error("lease store: {0}")]
    Task(String),
    /// etcd (`[cluster] store = "etcd"`) failed or did not answer.
    #[error("lease store: {0}")]
    Etcd(#[from] crate::cluster::ClusterError),
    /// Other instances kept changing the same keys: the write was given up after retries.
    #[error(
        "lease store: the shared store kept changing under this write; gave up after {0} tries"
    )]
    Contended(u32),
    /// The state directory could not be created.
    #[error("lease store: cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether only the etcd member the request went to was unreachable (another may do).
    pub fn unreachable_member(&self) -> bool {
        matches!(self, StoreError::Etcd(e) if e.unreachable_member())
    }
}

/// The outcome of claiming one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Committed: durable, and the address is this client's.
    Committed,
    /// Not written: the address is held by another client (another instance sharing the
    /// store gave it out first).
    Taken {
        /// The holder.
        holder: Option<MacAddr>,
    },
}

/// Where leases live.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Every stored lease.
    async fn load(&self) -> Result<Vec<Lease>, StoreError>;

    /// Write `leases` as one durable unit, each only if its address is free at `now` (no
    /// lease, or one that lapsed) or already its client's; the others are not written and come
    /// back as [`Claim::Taken`]. One result per lease, in order.
    async fn claim(&self, leases: Vec<Lease>, now: Now) -> Result<Vec<Claim>, StoreError>;

    /// Leases written by other instances sharing this store, as they happen; `None` for a
    /// store only this process writes.
    fn remote_changes(&self) -> Option<tokio::sync::mpsc::Receiver<Lease>> {
        None
    }

    /// [`claim`](Self::claim) on the calling thread, blocking it for the commit, for a store
    /// whose commit is a local file's; `None` for one that must be awaited (etcd).
    fn claim_here(&self, _leases: &[Lease], _now: Now) -> Option<Result<Vec<Claim>, StoreError>> {
        None
    }
}

/// The embedded lease database: `leases.redb` under the state directory.
#[derive(Clone)]
pub struct RedbLeaseStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbLeaseStore")
    }
}

/// Whether `new` may be written over `stored`: the address is free at `now` or already the
/// same client's (a decline's quarantine, with no client, is the server's own).
pub(super) fn may_write(
    stored: Option<&Lease>,
    new: &Lease,
    now: Now,
) -> Result<(), Option<MacAddr>> {
    let Some(stored) = stored else { return Ok(()) };
    match new.mac {
        None => Ok(()),
        Some(mac) if stored.mac == Some(mac) || stored.available_to(mac, now) => Ok(()),
        Some(_) => Err(stored.mac),
    }
}

impl RedbLeaseStore {
    /// Open (or create) `dir/leases.redb` (blocking).
    pub fn open(dir: &Path) -> Result<RedbLeaseStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let db = Database::create(dir.join("leases.redb")).map_err(redb::Error::from)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(LEASES).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(RedbLeaseStore { db: Arc::new(db) })
    }

    /// Claim `leases` in one transaction (see [`LeaseStore::claim`]); on return the committed
    /// ones are on disk (blocking).
    pub fn claim_blocking(&self, leases: &[Lease], now: Now) -> Result<Vec<Claim>, StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        let mut out = Vec::with_capacity(leases.len());
        {
            let mut table = txn.open_table(LEASES).map_err(redb::Error::from)?;
            for lease in leases {
                let key = u32::from(lease.ip);
                let stored = table
                    .get(key)
                    .map_err(redb::Error::from)?
                    .and_then(|v| serde_json::from_slice::<Lease>(v.value()).ok());
                if let Err(holder) = may_write(stored.as_ref(), lease, now) {
                    out.push(Claim::Taken { holder });
                    continue;
                }
                let bytes = serde_json::to_vec(lease).unwrap_or_default();
                table
                    .insert(key, bytes.as_slice())
                    .map_err(redb::Error::from)?;
                out.push(Claim::Committed);
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(out)
    }

    /// Write leases in one transaction, unconditionally; on return they are on disk
    /// (blocking).
    pub fn put_blocking(&self, leases: &[Lease]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut table = txn.open_table(LEASES).map_err(redb::Error::from)?;
            for lease in leases {
                let bytes = serde_json::to_vec(lease).unwrap_or_default();
                table
                    .insert(u32::from(lease.ip), bytes.as_slice())
                    .map_err(redb::Error::from)?;
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Every stored lease (blocking).
    pub fn load_blocking(&self) -> Result<Vec<Lease>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(LEASES).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(redb::Error::from)? {
            let (key, value) = entry.map_err(redb::Error::from)?;
            match serde_json::from_slice::<Lease>(value.value()) {
                Ok(lease) => out.push(lease),
                Err(e) => {
                    let ip = Ipv4Addr::from(key.value());
                    tracing::warn!(%ip, error = %e, "skipping an unreadable lease record");
                }
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl LeaseStore for RedbLeaseStore {
    async fn load(&self) -> Result<Vec<Lease>, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.load_blocking())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn claim_here(&self, leases: &[Lease], now: Now) -> Option<Result<Vec<Claim>, StoreError>> {
        Some(self.claim_blocking(leases, now))
    }

    async fn claim(&self, leases: Vec<Lease>, now: Now) -> Result<Vec<Claim>, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.claim_blocking(&leases, now))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use super::*;
    use crate::dhcp::leases::State;
    use crate::mac::MacAddr;

    fn lease(n: u32) -> Lease {
        let b = n.to_be_bytes();
        Lease {
            ip: Ipv4Addr::from(0x0a00_0000 + n),
            mac: Some(MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]])),
            state: State::Bound,
            expires: 1_800_000_000 + u64::from(n),
            hostname: Some(format!("node{n}")),
            client_id: None,
            bound_at: 0,
        }
    }

    #[test]
    fn a_claim_succeeds_only_where_the_address_is_free_or_already_the_clients() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbLeaseStore::open(dir.path()).unwrap();
        let now = 1_800_000_000;
        let mine = lease(1);
        let other_mac = Lease {
            mac: Some(MacAddr([2, 0, 0, 0, 0, 9])),
            ..lease(1)
        };
        assert_eq!(
            store
                .claim_blocking(std::slice::from_ref(&mine), now)
                .unwrap(),
            [Claim::Committed]
        );
        // Its own renewal is fine; another client's claim of the bound address is not.
        assert_eq!(
            store
                .claim_blocking(&[mine.clone(), other_mac.clone(), lease(2)], now)
                .unwrap(),
            [
                Claim::Committed,
                Claim::Taken { holder: mine.mac },
                Claim::Committed
            ]
        );
        let stored = store.load_blocking().unwrap();
        assert!(stored.contains(&mine) && !stored.contains(&other_mac));
        // Once the lease has lapsed, the address is free for anyone.
        assert_eq!(
            store
                .claim_blocking(std::slice::from_ref(&other_mac), mine.expires + 1)
                .unwrap(),
            [Claim::Committed]
        );
        // A decline's quarantine (no client) is the server's own.
        let quarantine = Lease {
            mac: None,
            state: State::Declined,
            ..lease(2)
        };
        assert_eq!(
            store.claim_blocking(&[quarantine], now).unwrap(),
            [Claim::Committed]
        );
    }

    #[test]
    fn leases_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbLeaseStore::open(dir.path()).unwrap();
            store.put_blocking(&[lease(1), lease(2)]).unwrap();
            store
                .put_blocking(&[Lease {
                    state: State::Released,
                    ..lease(1)
                }])
                .unwrap();
        }
        let store = RedbLeaseStore::open(dir.path()).unwrap();
        let mut got = store.load_blocking().unwrap();
        got.sort_by_key(|l| l.ip);
        assert_eq!(
            got,
            vec![
                Lease {
                    state: State::Released,
                    ..lease(1)
                },
                lease(2)
            ]
        );
    }

    /// Run as a child process by `kill_9_keeps_every_committed_lease`: commit leases one by
    /// one, printing each after its commit returned, until killed.
    #[test]
    #[ignore = "helper process for kill_9_keeps_every_committed_lease"]
    fn child_writer() {
        let Ok(dir) = std::env::var("KINDLING_STORE_CHILD_DIR") else {
            return;
        };
        let store = RedbLeaseStore::open(Path::new(&dir)).unwrap();
        for n in 1..=100_000 {
            store.put_blocking(&[lease(n)]).unwrap();
            println!("committed {n}");
        }
    }

    #[test]
    fn kill_9_keeps_every_committed_lease() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "dhcp::store::tests::child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KINDLING_STORE_CHILD_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut last = 0;
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines {
            if let Some(n) = line.unwrap().strip_prefix("committed ") {
                last = n.trim().parse().unwrap();
                if last >= 200 {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL, mid-write
        child.wait().unwrap();
        assert!(last >= 200, "child committed only {last}");
        let store = RedbLeaseStore::open(dir.path()).unwrap();
        let got = store.load_blocking().unwrap();
        assert!(
            got.len() >= last as usize,
            "acknowledged {last}, found {}",
            got.len()
        );
        for n in 1..=last {
            assert!(got.contains(&lease(n)), "lease {n} lost");
        }
    }
}

/// One suite for every [`LeaseStore`]: the embedded store and the etcd store (against a real
/// etcd, started by the test) must behave the same.
#[cfg(test)]
mod contract {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::Etcd;
    use crate::cluster::testing::EtcdProcess;
    use crate::dhcp::leases::State;
    use crate::dhcp::store_etcd::EtcdLeaseStore;

    fn lease(n: u32, mac: u8) -> Lease {
        Lease {
            ip: Ipv4Addr::from(0x0a00_0000 + n),
            mac: Some(MacAddr([0x52, 0x54, 0, 0, 0, mac])),
            state: State::Bound,
            expires: 1_800_000_000 + 600,
            hostname: Some(format!("node{n}")),
            client_id: None,
            bound_at: 1_800_000_000,
        }
    }

    /// What every lease store does.
    async fn suite(store: &dyn LeaseStore) {
        let now = 1_800_000_000;
        assert!(store.load().await.unwrap().is_empty());
        let mine = lease(1, 1);
        let theirs = lease(1, 2);
        assert_eq!(
            store.claim(vec![mine.clone()], now).await.unwrap(),
            [Claim::Committed]
        );
        // Its own renewal is fine; another client's claim of the bound address is not; a
        // batch decides each lease on its own.
        assert_eq!(
            store
                .claim(vec![mine.clone(), theirs.clone(), lease(2, 3)], now)
                .await
                .unwrap(),
            [
                Claim::Committed,
                Claim::Taken { holder: mine.mac },
                Claim::Committed
            ]
        );
        let mut got = store.load().await.unwrap();
        got.sort_by_key(|l| l.ip);
        assert_eq!(got, vec![mine.clone(), lease(2, 3)]);
        // Lapsed: free for anyone. Released: free at once.
        assert_eq!(
            store
                .claim(vec![theirs.clone()], mine.expires + 1)
                .await
                .unwrap(),
            [Claim::Committed]
        );
        let released = Lease {
            state: State::Released,
            ..lease(2, 3)
        };
        assert_eq!(
            store.claim(vec![released], now).await.unwrap(),
            [Claim::Committed]
        );
        assert_eq!(
            store.claim(vec![lease(2, 4)], now).await.unwrap(),
            [Claim::Committed]
        );
        // A decline's quarantine (no client) is the server's own.
        let quarantine = Lease {
            mac: None,
            state: State::Declined,
            ..lease(3, 5)
        };
        assert_eq!(
            store.claim(vec![quarantine], now).await.unwrap(),
            [Claim::Committed]
        );
        // A big batch, the same address twice in it (a retransmitted REQUEST).
        let many: Vec<Lease> = (10..400)
            .map(|n| lease(n, (n % 200) as u8))
            .chain([lease(10, 10)])
            .collect();
        let claims = store.claim(many, now).await.unwrap();
        assert_eq!(claims.len(), 391);
        assert!(claims.iter().all(|c| *c == Claim::Committed), "{claims:?}");
        assert_eq!(store.load().await.unwrap().len(), 3 + 390);
    }

    #[tokio::test]
    async fn the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbLeaseStore::open(dir.path()).unwrap();
        suite(&store).await;
    }

    #[tokio::test]
    async fn the_etcd_store() {
        let Some(etcd) = EtcdProcess::start("dhcp::store::contract::the_etcd_store") else {
            return;
        };
        let store = EtcdLeaseStore::new(Etcd::connect(&etcd.config("/t/")).await.unwrap());
        suite(&store).await;
        // Another cluster's prefix sees none of it.
        let other = EtcdLeaseStore::new(Etcd::connect(&etcd.config("/u/")).await.unwrap());
        assert!(other.load().await.unwrap().is_empty());
    }

    /// What one instance claims, the other's watch delivers (from after its load on).
    #[tokio::test]
    async fn leases_claimed_by_one_instance_reach_the_other() {
        let Some(etcd) = EtcdProcess::start(
            "dhcp::store::contract::leases_claimed_by_one_instance_reach_the_other",
        ) else {
            return;
        };
        let config = etcd.config("/l/");
        let a = EtcdLeaseStore::new(Etcd::connect(&config).await.unwrap());
        let b = EtcdLeaseStore::new(Etcd::connect(&config).await.unwrap());
        let now = 1_800_000_000;
        a.claim(vec![lease(1, 1)], now).await.unwrap();
        assert_eq!(b.load().await.unwrap(), vec![lease(1, 1)]);
        let mut rx = b.remote_changes().unwrap();
        a.claim(vec![lease(2, 2), lease(3, 3)], now).await.unwrap();
        for n in [2, 3] {
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("a lease within 5 s")
                .unwrap();
            assert_eq!(got, lease(n, n as u8));
        }
    }

    /// Two instances claim the same 50 addresses for different clients at once, many times
    /// over: each address ends up with exactly one client, the one whose claim committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_never_bind_one_address_twice() {
        let Some(etcd) =
            EtcdProcess::start("dhcp::store::contract::two_instances_never_bind_one_address_twice")
        else {
            return;
        };
        let config = etcd.config("/race/");
        let a = Arc::new(EtcdLeaseStore::new(Etcd::connect(&config).await.unwrap()));
        let b = Arc::new(EtcdLeaseStore::new(Etcd::connect(&config).await.unwrap()));
        let now = 1_800_000_000;
        let run = |store: Arc<EtcdLeaseStore>, mac: u8| {
            tokio::spawn(async move {
                let mut won = Vec::new();
                for n in 0..50 {
                    // Claims in small batches, as the writer makes them.
                    let batch: Vec<Lease> = (n..n + 3).map(|i| lease(i, mac)).collect();
                    let claims = store.claim(batch.clone(), now).await.unwrap();
                    for (l, c) in batch.into_iter().zip(claims) {
                        if c == Claim::Committed {
                            won.push(l.ip);
                        }
                    }
                }
                won
            })
        };
        let (wa, wb) = (run(a.clone(), 0xa), run(b.clone(), 0xb));
        let (wa, wb) = (wa.await.unwrap(), wb.await.unwrap());
        let stored = a.load().await.unwrap();
        assert_eq!(stored.len(), 52);
        for l in &stored {
            let holder = l.mac.unwrap().0[5];
            let (mine, other) = if holder == 0xa {
                (&wa, &wb)
            } else {
                (&wb, &wa)
            };
            assert!(
                mine.contains(&l.ip),
                "{} stored for a claim that lost",
                l.ip
            );
            assert!(!other.contains(&l.ip), "{} committed to both", l.ip);
        }
    }
}
