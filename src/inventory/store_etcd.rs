//! Machine records in etcd (`[cluster] store = "etcd"`), shared by every instance: key
//! `<prefix>machines/<MAC>`, value the record as JSON.
//!
//! The operator's one-shot next boot has a key of its own, `<prefix>next-boot/<MAC>`, the
//! one truth about it: records are written last-writer-wins, and an instance that had not yet
//! seen the next boot used up elsewhere could otherwise write it back. Using it up is a
//! transaction that succeeds only while the key still holds that choice, so of two instances
//! serving the same machine at once exactly one gets it.
//!
//! A batch of changes is one transaction (split at etcd's operation limit); it returns once
//! etcd committed it. Every instance keeps its whole inventory in memory, loaded at start and
//! then fed by a watch on the prefix ([`MachineStore::remote_changes`]): a record another
//! instance wrote replaces the local one when it is newer, and this instance's own writes
//! come back as no-ops. A watch that breaks is opened again from the last revision seen, with
//! a growing pause.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::store::{Adoption, Change, Claim, MachineStore, Remote, StoreError};
use super::{NextBoot, Record};
use crate::cluster::{ClusterError, Etcd, Table, on_live_member};
use crate::mac::MacAddr;

/// Operations per transaction (etcd's `--max-txn-ops` defaults to 128).
const OPS_PER_TXN: usize = 100;
/// Records from other instances waiting for the inventory to take them.
const REMOTE_QUEUE: usize = 1024;

/// The value under `next-boot/<MAC>`: the MAC too, as a watch hands on values only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NextBootValue {
    mac: MacAddr,
    /// The choice; `None` when cleared or used up.
    next: Option<NextBoot>,
    /// The instance that used it up (so a transaction retried after a lost answer knows it
    /// was its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    taken_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    taken: Option<NextBoot>,
}

impl NextBootValue {
    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The etcd machine store.
#[derive(Debug, Clone)]
pub struct EtcdMachineStore {
    /// The records under the prefix, loaded and followed.
    table: Table,
    /// The one-shot next boots.
    next_boots: Table,
    /// Machines adopted through any instance.
    adopted: Table,
}

impl EtcdMachineStore {
    /// Records under `etcd`'s prefix.
    pub fn new(etcd: Etcd) -> EtcdMachineStore {
        EtcdMachineStore {
            next_boots: Table::new(etcd.clone(), "next-boot/"),
            adopted: Table::new(etcd.clone(), "adopted/"),
            table: Table::new(etcd, "machines/"),
        }
    }

    fn etcd(&self) -> &Etcd {
        self.table.etcd()
    }

    fn next_key(&self, mac: MacAddr) -> String {
        self.etcd().key(&format!("next-boot/{mac}"))
    }
}

impl EtcdMachineStore {
    /// The records, each with the next boot its own key holds.
    async fn load_once(&self) -> Result<Vec<Record>, StoreError> {
        let next: std::collections::HashMap<MacAddr, Option<NextBoot>> = self
            .next_boots
            .load::<NextBootValue>()
            .await?
            .into_iter()
            .map(|v| (v.mac, v.next))
            .collect();
        let mut records: Vec<Record> = self.table.load().await?;
        for rec in &mut records {
            if let Some(n) = next.get(&rec.mac) {
                rec.next_boot.clone_from(n);
            }
        }
        Ok(records)
    }

    async fn put_next_once(&self, value: &NextBootValue) -> Result<(), StoreError> {
        let mut c = self.etcd().client();
        let key = self.next_key(value.mac);
        self.etcd().limit(c.put(key, value.json(), None)).await?;
        Ok(())
    }

    async fn take_next_once(&self, mac: MacAddr, next: &NextBoot) -> Result<Claim, StoreError> {
        let key = self.next_key(mac);
        let expect = NextBootValue {
            mac,
            next: Some(next.clone()),
            taken_by: None,
            taken: None,
        };
        let taken = NextBootValue {
            mac,
            next: None,
            taken_by: Some(self.etcd().node().to_string()),
            taken: Some(next.clone()),
        };
        let txn = Txn::new()
            .when([Compare::value(
                key.as_str(),
                CompareOp::Equal,
                expect.json(),
            )])
            .and_then([TxnOp::put(key.as_str(), taken.json(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let mut c = self.etcd().client();
        let resp = self.etcd().limit(c.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(Claim::Taken);
        }
        let now = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .map(|bytes| serde_json::from_slice::<NextBootValue>(&bytes))
            .transpose()
            .map_err(|e| StoreError::Etcd(ClusterError::Decode(e.to_string())))?;
        Ok(match now {
            // This instance's own take, answered after a retry.
            Some(v)
                if v.taken_by.as_deref() == Some(self.etcd().node())
                    && v.taken.as_ref() == Some(next) =>
            {
                Claim::Taken
            }
            Some(v) => Claim::Now(v.next),
            None => Claim::Now(None),
        })
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

    fn remote_changes(&self) -> Option<mpsc::Receiver<Remote>> {
        let (tx, rx) = mpsc::channel(REMOTE_QUEUE);
        let records = self.table.follow::<Record>(REMOTE_QUEUE);
        tokio::spawn(forward(records, tx.clone(), |r| {
            Remote::Record(Box::new(r))
        }));
        let next = self.next_boots.follow::<NextBootValue>(REMOTE_QUEUE);
        tokio::spawn(forward(next, tx.clone(), |v| {
            Remote::NextBoot(v.mac, v.next)
        }));
        let adopted = self.adopted.follow::<Adoption>(REMOTE_QUEUE);
        tokio::spawn(forward(adopted, tx, Remote::Adopted));
        Some(rx)
    }

    fn shares_next_boot(&self) -> bool {
        true
    }

    async fn put_adoption(&self, adoption: &Adoption) -> Result<(), StoreError> {
        let key = self.etcd().key(&format!("adopted/{}", adoption.mac));
        let value = serde_json::to_vec(adoption).unwrap_or_default();
        on_live_member(
            || async {
                let mut c = self.etcd().client();
                self.etcd()
                    .limit(c.put(key.as_str(), value.clone(), None))
                    .await?;
                Ok(())
            },
            StoreError::unreachable_member,
        )
        .await
    }

    async fn adoptions(&self) -> Result<Vec<Adoption>, StoreError> {
        on_live_member(
            || async { Ok(self.adopted.load::<Adoption>().await?) },
            StoreError::unreachable_member,
        )
        .await
    }

    async fn put_next_boot(&self, mac: MacAddr, next: Option<&NextBoot>) -> Result<(), StoreError> {
        let value = NextBootValue {
            mac,
            next: next.cloned(),
            taken_by: None,
            taken: None,
        };
        on_live_member(
            || self.put_next_once(&value),
            StoreError::unreachable_member,
        )
        .await
    }

    async fn take_next_boot(&self, mac: MacAddr, next: &NextBoot) -> Result<Claim, StoreError> {
        on_live_member(
            || self.take_next_once(mac, next),
            StoreError::unreachable_member,
        )
        .await
    }
}

/// Hand what `from` receives on to `to` as `wrap` makes it, until either closes.
async fn forward<T>(
    mut from: mpsc::Receiver<T>,
    to: mpsc::Sender<Remote>,
    wrap: impl Fn(T) -> Remote,
) {
    loop {
        let got = tokio::select! {
            got = from.recv() => got,
            _ = to.closed() => return,
        };
        let Some(v) = got else { return };
        if to.send(wrap(v)).await.is_err() {
            return;
        }
    }
}
