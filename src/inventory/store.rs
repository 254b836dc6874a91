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

use super::Record;
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

/// Where machine records live. The inventory keeps every record in memory and writes changes
/// in batches; a store makes a batch durable as one unit, gives everything back at start-up,
/// and (when several instances share it) tells about records changed elsewhere.
#[async_trait::async_trait]
pub trait MachineStore: Send + Sync + 'static {
    /// Every stored record.
    async fn load(&self) -> Result<Vec<Record>, StoreError>;

    /// Write `changes` as one durable unit: on `Ok` they survive a crash.
    async fn write(&self, changes: Vec<Change>) -> Result<(), StoreError>;

    /// Records written by other instances sharing this store, as they happen; `None` for a
    /// store only this process writes.
    fn remote_changes(&self) -> Option<tokio::sync::mpsc::Receiver<Record>> {
        None
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
            assert_eq!(got.mac, mac(2));
            assert_eq!(got.hostname.as_deref(), Some(format!("step{n}").as_str()));
        }
    }
}
