//! Durable leases: a redb database under the state directory.
//!
//! The server writes a lease with [`LeaseStore::put`] and sends the DHCPACK only after it
//! returns: redb commits with `Durability::Immediate` (fsync), so a crash or `kill -9` after
//! the ACK left keeps the lease. One table, address → JSON lease (readable with any redb
//! tool; a few hundred bytes per machine). A record that no longer decodes is skipped with a
//! warning at start-up rather than refusing to start.

use std::net::Ipv4Addr;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::leases::Lease;

const LEASES: TableDefinition<'_, u32, &[u8]> = TableDefinition::new("leases");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("lease store: {0}")]
    Db(#[from] redb::Error),
    /// The state directory could not be created.
    #[error("lease store: cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The lease database.
pub struct LeaseStore {
    db: Database,
}

impl std::fmt::Debug for LeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseStore")
    }
}

impl LeaseStore {
    /// Open (or create) `dir/leases.redb`.
    pub fn open(dir: &Path) -> Result<LeaseStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let db = Database::create(dir.join("leases.redb")).map_err(redb::Error::from)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(LEASES).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(LeaseStore { db })
    }

    /// Write leases in one transaction; on return they are on disk.
    pub fn put(&self, leases: &[Lease]) -> Result<(), StoreError> {
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

    /// Every stored lease.
    pub fn load(&self) -> Result<Vec<Lease>, StoreError> {
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
        }
    }

    #[test]
    fn leases_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LeaseStore::open(dir.path()).unwrap();
            store.put(&[lease(1), lease(2)]).unwrap();
            store
                .put(&[Lease {
                    state: State::Released,
                    ..lease(1)
                }])
                .unwrap();
        }
        let store = LeaseStore::open(dir.path()).unwrap();
        let mut got = store.load().unwrap();
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
        let store = LeaseStore::open(Path::new(&dir)).unwrap();
        for n in 1..=100_000 {
            store.put(&[lease(n)]).unwrap();
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
        let store = LeaseStore::open(dir.path()).unwrap();
        let got = store.load().unwrap();
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
