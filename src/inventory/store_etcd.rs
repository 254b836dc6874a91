//! Machine records in etcd (`[cluster] store = "etcd"`), shared by every instance: key
//! `<prefix>machines/<MAC>`, value the record as JSON.
//!
//! A batch of changes is one transaction (split at etcd's operation limit); it returns once
//! etcd committed it. Every instance keeps its whole inventory in memory, loaded at start and
//! then fed by a watch on the prefix ([`MachineStore::remote_changes`]): a record another
//! instance wrote replaces the local one when it is newer, and this instance's own writes
//! come back as no-ops. A watch that breaks is opened again from the last revision seen, with
//! a growing pause.

use etcd_client::{Txn, TxnOp};
use tokio::sync::mpsc;

use super::Record;
use super::store::{Change, MachineStore, StoreError};
use crate::cluster::{Etcd, Table, on_live_member};

/// Operations per transaction (etcd's `--max-txn-ops` defaults to 128).
const OPS_PER_TXN: usize = 100;
/// Records from other instances waiting for the inventory to take them.
const REMOTE_QUEUE: usize = 1024;

/// The etcd machine store.
#[derive(Debug, Clone)]
pub struct EtcdMachineStore {
    /// The values under the prefix, loaded and followed.
    table: Table,
}

impl EtcdMachineStore {
    /// Records under `etcd`'s prefix.
    pub fn new(etcd: Etcd) -> EtcdMachineStore {
        EtcdMachineStore {
            table: Table::new(etcd, "machines/"),
        }
    }
}

impl EtcdMachineStore {
    async fn load_once(&self) -> Result<Vec<Record>, StoreError> {
        Ok(self.table.load().await?)
    }

    /// One transaction: a MAC's last change wins (a transaction may name a key once).
    async fn write_chunk(&self, chunk: &[Change]) -> Result<(), StoreError> {
        let mut ops: Vec<(String, TxnOp)> = Vec::with_capacity(chunk.len());
        for (mac, bytes) in chunk {
            let key = self.table.etcd().key(&format!("machines/{mac}"));
            ops.retain(|(k, _)| *k != key);
            let op = match bytes {
                Some(b) => TxnOp::put(key.as_str(), b.clone(), None),
                None => TxnOp::delete(key.as_str(), None),
            };
            ops.push((key, op));
        }
        let txn = Txn::new().and_then(ops.into_iter().map(|(_, op)| op).collect::<Vec<_>>());
        let mut c = self.table.etcd().client();
        self.table.etcd().limit(c.txn(txn)).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl MachineStore for EtcdMachineStore {
    async fn load(&self) -> Result<Vec<Record>, StoreError> {
        on_live_member(|| self.load_once(), StoreError::unreachable_member).await
    }

    async fn write(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        for chunk in changes.chunks(OPS_PER_TXN) {
            on_live_member(|| self.write_chunk(chunk), StoreError::unreachable_member).await?;
        }
        Ok(())
    }

    fn remote_changes(&self) -> Option<mpsc::Receiver<Record>> {
        Some(self.table.follow(REMOTE_QUEUE))
    }
}
