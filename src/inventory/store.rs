//! The durable inventory: a redb database (`inventory.redb`) under the state directory.
//!
//! One table, MAC → JSON record (state, transition times, history; readable with any redb
//! tool). Commits use redb's default `Durability::Immediate` (fsync), so what a commit
//! returned for survives `kill -9` and power loss; redb never leaves a half-written
//! transaction behind. The inventory batches changes (see [`super::Inventory::run_writer`]):
//! a boot storm costs one fsync per batch, not one per packet. A record that no longer decodes
//! is skipped with a warning rather than refusing to start.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{NextBoot, Record};
use crate::mac::MacAddr;

const MACHINES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("machines");

/// redb's page cache for this database.
const CACHE_BYTES: usize = 8 << 20;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("inventory store: {0}")]
    Db(#[from] redb::Error),
    /// The blocking task doing the I/O failed.
    #[error("inventory store: {0}")]
    Task(String),
    /// etcd (`[cluster] store = "etcd"`) failed or did not answer.
    #[error("inventory store: {0}")]
    Etcd(#[from] crate::cluster::ClusterError),
    /// Other instances kept changing the same keys: the write was given up after retries.
    #[error(
        "inventory store: the shared store kept changing under this write; gave up after {0} tries"
    )]
    Contended(u32),
    /// The state directory could not be created.
    #[error("inventory store: cannot create {path}: {source}")]
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

/// One record's change: its JSON, or `None` when it was forgotten.
pub type Change = (MacAddr, Option<Vec<u8>>);

/// What another instance sharing the store changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Remote {
    /// A machine record it wrote.
    Record(Box<Record>),
    /// The one-shot next boot of a machine, set, cleared or used up there.
    NextBoot(MacAddr, Option<NextBoot>),
    /// A machine adopted into a profile there.
    Adopted(Adoption),
}

/// A machine adopted into a profile through one instance's API: the `[[machine]]` entry it
/// appended to the profile's file, for every instance to append to its own copy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Adoption {
    /// The machine.
    pub mac: MacAddr,
    /// The profile's name.
    pub profile: String,
    /// The entry's TOML text (with its comment).
    pub entry: String,
    /// The instance that adopted it.
    pub by: String,
}

/// What using up a one-shot next boot in a shared store came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This instance has it: serve it.
    Taken,
    /// Another instance used it up or the operator changed it first: the store holds this now.
    Now(Option<NextBoot>),
}

/// Where machine records live. The inventory keeps every record in memory and writes changes
/// in batches; a store makes a batch durable as one unit, gives everything back at start-up,
/// and (when several instances share it) tells about records changed elsewhere.
#[async_trait::async_trait]
pub trait MachineStore: Send + Sync + 'static {
    /// Every stored record.
    async fn load(&self) -> Result<Vec<Record>, StoreError>;

    /// Write `changes` as one durable unit: on `Ok` they survive a crash.
    async fn write(&self, changes: Vec<Change>) -> Result<(), StoreError>;

    /// What other instances sharing this store write, as it happens; `None` for a store only
    /// this process writes.
    fn remote_changes(&self) -> Option<tokio::sync::mpsc::Receiver<Remote>> {
        None
    }

    /// Whether the one-shot next boot is decided in this store (instances share it): it is
    /// then set, cleared and used up here, one instance at a time. Otherwise the inventory's
    /// lock decides alone and the next boot is just part of the record.
    fn shares_next_boot(&self) -> bool {
        false
    }

    /// Set (`Some`) or clear the one-shot next boot of `mac` for every instance.
    async fn put_next_boot(
        &self,
        _mac: MacAddr,
        _next: Option<&NextBoot>,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Tell the other instances sharing this store of an adoption (nothing without them).
    async fn put_adoption(&self, _adoption: &Adoption) -> Result<(), StoreError> {
        Ok(())
    }

    /// Every adoption shared so far (for an instance that starts).
    async fn adoptions(&self) -> Result<Vec<Adoption>, StoreError> {
        Ok(Vec::new())
    }

    /// Use up `next` as the one-shot next boot of `mac`: atomically, only if the store still
    /// holds exactly that.
    async fn take_next_boot(&self, _mac: MacAddr, _next: &NextBoot) -> Result<Claim, StoreError> {
        Ok(Claim::Taken)
    }
}

/// The embedded store: `inventory.redb` under the state directory.
pub struct RedbMachineStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbMachineStore")
    }
}

fn key(mac: MacAddr) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&mac.0);
    u64::from_be_bytes(b)
}

fn mac_of(key: u64) -> MacAddr {
    let b = key.to_be_bytes();
    MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl RedbMachineStore {
    /// Open (or create) `dir/inventory.redb` (blocking).
    pub fn open(dir: &Path) -> Result<RedbMachineStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        // A small page cache: the inventory is read once at start and then only written
        // (redb's default cache would grow with every record written in a boot storm).
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("inventory.redb"))
            .map_err(redb::Error::from)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(MACHINES).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(RedbMachineStore { db: Arc::new(db) })
    }

    /// Write (`Some`) or delete (`None`) records in one transaction; on return it is on disk
    /// (blocking).
    pub fn write_blocking(&self, changes: &[Change]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut table = txn.open_table(MACHINES).map_err(redb::Error::from)?;
            for (mac, bytes) in changes {
                match bytes {
                    Some(b) => {
                        table
                            .insert(key(*mac), b.as_slice())
                            .map_err(redb::Error::from)?;
                    }
                    None => {
                        table.remove(key(*mac)).map_err(redb::Error::from)?;
                    }
                }
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Every stored record (blocking).
    pub fn load_blocking(&self) -> Result<Vec<Record>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(MACHINES).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(redb::Error::from)? {
            let (k, value) = entry.map_err(redb::Error::from)?;
            match serde_json::from_slice::<Record>(value.value()) {
                Ok(rec) => out.push(rec),
                Err(e) => {
                    let mac = mac_of(k.value());
                    tracing::warn!(%mac, error = %e, "skipping an unreadable inventory record");
                }
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl MachineStore for RedbMachineStore {
    async fn load(&self) -> Result<Vec<Record>, StoreError> {
        let this = RedbMachineStore {
            db: self.db.clone(),
        };
        tokio::task::spawn_blocking(move || this.load_blocking())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn write(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let this = RedbMachineStore {
            db: self.db.clone(),
        };
        tokio::task::spawn_blocking(move || this.write_blocking(&changes))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let mac = MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(mac_of(key(mac)), mac);
    }
}

/// One suite for every [`MachineStore`]: the embedded store and the etcd store (against a
/// real etcd, started by the test) must behave the same.
#[cfg(test)]
mod contract {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::cluster::Etcd;
    use crate::cluster::testing::EtcdProcess;
    use crate::inventory::store_etcd::EtcdMachineStore;

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]])
    }

    fn record(n: u32) -> Record {
        let mut rec = Record::new(
            mac(n),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        );
        rec.hostname = Some(format!("node{n}"));
        rec
    }

    fn change(rec: &Record) -> Change {
        (rec.mac, Some(serde_json::to_vec(rec).unwrap()))
    }

    async fn suite(store: &dyn MachineStore) {
        assert!(store.load().await.unwrap().is_empty());
        let (a, b) = (record(1), record(2));
        store.write(vec![change(&a), change(&b)]).await.unwrap();
        let mut got = store.load().await.unwrap();
        got.sort_by_key(|r| r.mac);
        assert_eq!(got, vec![a.clone(), b.clone()]);
        // A later change of the same record in one batch wins; a forgotten record goes.
        let mut a2 = a.clone();
        a2.hostname = Some("renamed".into());
        store
            .write(vec![change(&a), change(&a2), (b.mac, None)])
            .await
            .unwrap();
        assert_eq!(store.load().await.unwrap(), vec![a2]);
        // A batch bigger than one transaction.
        let many: Vec<Change> = (100..400).map(|n| change(&record(n))).collect();
        store.write(many).await.unwrap();
        assert_eq!(store.load().await.unwrap().len(), 301);
    }

    #[tokio::test]
    async fn the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbMachineStore::open(dir.path()).unwrap();
        suite(&store).await;
        assert!(store.remote_changes().is_none());
    }

    #[tokio::test]
    async fn the_etcd_store() {
        let Some(etcd) = EtcdProcess::start("inventory::store::contract::the_etcd_store") else {
            return;
        };
        let store = EtcdMachineStore::new(Etcd::connect(&etcd.config("/t/")).await.unwrap());
        suite(&store).await;
    }

    /// What one instance writes, another instance's watch delivers, in order.
    #[tokio::test]
    async fn records_written_by_one_instance_reach_the_other() {
        let Some(etcd) = EtcdProcess::start(
            "inventory::store::contract::records_written_by_one_instance_reach_the_other",
        ) else {
            return;
        };
        let config = etcd.config("/k/");
        let a = EtcdMachineStore::new(Etcd::connect(&config).await.unwrap());
        let b = EtcdMachineStore::new(Etcd::connect(&config).await.unwrap());
        a.write(vec![change(&record(1))]).await.unwrap();
        // b starts: loads what is there, then follows what comes after.
        assert_eq!(b.load().await.unwrap(), vec![record(1)]);
        let mut rx = b.remote_changes().unwrap();
        let mut r2 = record(2);
        for n in 0..3 {
            r2.hostname = Some(format!("step{n}"));
            a.write(vec![change(&r2)]).await.unwrap();
        }
        for n in 0..3 {
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a change within 5 s")
                .unwrap();
            let Remote::Record(got) = got else {
                panic!("a record, not {got:?}")
            };
            assert_eq!(got.mac, mac(2));
            assert_eq!(got.hostname.as_deref(), Some(format!("step{n}").as_str()));
        }
    }

    /// Two instances hold the same one-shot next boot and serve the machine at once: the
    /// shared store gives it to exactly one; the other learns it is gone. A next boot set on
    /// one instance reaches the other through the watch, and a restart loads it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_next_boot_is_used_up_by_exactly_one_instance() {
        use crate::inventory::{Inventory, NextBoot, Plan};
        let Some(etcd) = EtcdProcess::start(
            "inventory::store::contract::a_next_boot_is_used_up_by_exactly_one_instance",
        ) else {
            return;
        };
        let config = etcd.config("/k/");
        let store = |node: &'static str| {
            let mut config = config.clone();
            async move {
                config.node_name = Some(node.to_string());
                let s: Arc<dyn MachineStore> =
                    Arc::new(EtcdMachineStore::new(Etcd::connect(&config).await.unwrap()));
                s
            }
        };
        let (sa, sb) = (store("a").await, store("b").await);
        let (a, b) = (
            Arc::new(Inventory::default()),
            Arc::new(Inventory::default()),
        );
        a.share_next_boot(sa.clone());
        b.share_next_boot(sb.clone());
        let m = mac(7);
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn(b.clone().run_remote_changes(
            sb.remote_changes().unwrap(),
            |_| {},
            cancel.clone(),
        ));
        let mut wins = [0u32; 2];
        // B has a record of the machine (as a request would make) before the first choice.
        b.set_next_boot(m, None, "test");
        for round in 0..25 {
            a.choose_next_boot(m, Some(NextBoot::Install), "test")
                .await
                .unwrap();
            // B learns of the choice from the watch.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while b.get(m).unwrap().next_boot.is_none() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "B never saw the next boot"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Both plan the install from the choice they hold (before either claims: a claim
            // that reached the other first would rightly leave it nothing to plan)...
            for (name, inv) in [("a", &a), ("b", &b)] {
                assert_eq!(
                    inv.take_plan(m, None),
                    (Plan::Selected, true),
                    "round {round}: {name} has no next boot"
                );
            }
            // ... and claim it at once.
            let claim = |inv: Arc<Inventory>| async move {
                inv.claim_next_boot(m, &NextBoot::Install).await.unwrap()
            };
            let (ga, gb) = tokio::join!(
                tokio::spawn(claim(a.clone())),
                tokio::spawn(claim(b.clone()))
            );
            let (ga, gb) = (ga.unwrap(), gb.unwrap());
            assert!(ga ^ gb, "round {round}: a got it {ga}, b got it {gb}");
            wins[usize::from(gb)] += 1;
            // The loser's record shows what the store holds: nothing pending.
            for inv in [&a, &b] {
                assert_eq!(inv.get(m).unwrap().next_boot, None, "round {round}");
            }
            assert_eq!(b.take_plan(m, None), (Plan::Selected, false));
        }
        eprintln!("a got it {} times, b {} times", wins[0], wins[1]);
        // A choice set and not used: a restarted instance loads it with the record.
        a.choose_next_boot(m, Some(NextBoot::Local), "test")
            .await
            .unwrap();
        let mut stale = crate::inventory::Record::new(m, std::time::SystemTime::now());
        stale.next_boot = None;
        sa.write(vec![change(&stale)]).await.unwrap();
        let fresh = store("c").await.load().await.unwrap();
        assert_eq!(fresh[0].next_boot, Some(NextBoot::Local));
        cancel.cancel();
    }
}
