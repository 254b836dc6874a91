//! Leases in etcd (`[cluster] store = "etcd"`), shared by every instance: key
//! `<prefix>leases/<IPv4>`, value the lease as JSON.
//!
//! A claim reads the addresses' current leases and revisions in one transaction, decides as
//! the embedded store does (free, lapsed, or already this client's), then writes every
//! permitted lease in a second transaction that holds only if none of those keys changed
//! since the read. If another instance wrote one of them in between, the whole batch is read
//! and decided again (bounded tries): an address is never bound to two clients, and a claim
//! returns only once etcd committed it (etcd's own fsync, on a quorum of members). Batches are
//! split so that one transaction touches each key once and stays within etcd's default limit
//! of 128 operations.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use tokio::sync::mpsc;

use super::leases::{Lease, Now};
use super::store::{Claim, LeaseStore, StoreError, may_write};
use crate::cluster::{Etcd, Table, on_live_member};

/// Keys per transaction (etcd's `--max-txn-ops` defaults to 128).
const KEYS_PER_TXN: usize = 100;
/// Reads and decisions again when other instances wrote the same addresses meanwhile.
const TRIES: u32 = 8;

/// Leases other instances wrote, waiting for this instance's DHCP service to take them.
const REMOTE_QUEUE: usize = 4096;

/// The etcd lease store.
#[derive(Debug, Clone)]
pub struct EtcdLeaseStore {
    /// The values under the prefix, loaded and followed.
    table: Table,
}

impl EtcdLeaseStore {
    /// Leases under `etcd`'s prefix.
    pub fn new(etcd: Etcd) -> EtcdLeaseStore {
        EtcdLeaseStore {
            table: Table::new(etcd, "leases/"),
        }
    }

    fn key(&self, ip: Ipv4Addr) -> String {
        self.table.etcd().key(&format!("leases/{ip}"))
    }

    /// Claim `leases` (each key once) in one read and one conditional write, retried while
    /// others change the same keys.
    async fn claim_chunk(&self, leases: &[Lease], now: Now) -> Result<Vec<Claim>, StoreError> {
        let keys: Vec<String> = leases.iter().map(|l| self.key(l.ip)).collect();
        for _ in 0..TRIES {
            let read = Txn::new().and_then(
                keys.iter()
                    .map(|k| TxnOp::get(k.as_str(), None))
                    .collect::<Vec<_>>(),
            );
            let mut c = self.table.etcd().client();
            let resp = self.table.etcd().limit(c.txn(read)).await?;
            let mut stored = Vec::with_capacity(keys.len());
            for op in resp.op_responses() {
                let TxnOpResponse::Get(get) = op else {
                    continue;
                };
                stored.push(get.kvs().first().map(|kv| {
                    let lease = serde_json::from_slice::<Lease>(kv.value()).ok();
                    (lease, kv.mod_revision())
                }));
            }
            if stored.len() != keys.len() {
                return Err(StoreError::Task(format!(
                    "etcd answered {} of {} reads",
                    stored.len(),
                    keys.len()
                )));
            }
            let mut out = Vec::with_capacity(leases.len());
            let (mut compares, mut puts) = (Vec::new(), Vec::new());
            for ((lease, key), current) in leases.iter().zip(&keys).zip(&stored) {
                let (old, revision) = match current {
                    Some((old, rev)) => (old.as_ref(), *rev),
                    None => (None, 0),
                };
                if let Err(holder) = may_write(old, lease, now) {
                    out.push(Claim::Taken { holder });
                    continue;
                }
                compares.push(Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                ));
                let bytes = serde_json::to_vec(lease).unwrap_or_default();
                puts.push(TxnOp::put(key.as_str(), bytes, None));
                out.push(Claim::Committed);
            }
            if puts.is_empty() {
                return Ok(out);
            }
            let write = Txn::new().when(compares).and_then(puts);
            let resp = self.table.etcd().limit(c.txn(write)).await?;
            if resp.succeeded() {
                return Ok(out);
            }
            tracing::debug!(
                leases = leases.len(),
                "lease claim raced another instance: reading again"
            );
        }
        Err(StoreError::Contended(TRIES))
    }
}

#[async_trait::async_trait]
impl LeaseStore for EtcdLeaseStore {
    async fn load(&self) -> Result<Vec<Lease>, StoreError> {
        on_live_member(|| self.load_once(), StoreError::unreachable_member).await
    }

    async fn claim(&self, leases: Vec<Lease>, now: Now) -> Result<Vec<Claim>, StoreError> {
        self.claim_all(leases, now).await
    }

    fn remote_changes(&self) -> Option<mpsc::Receiver<Lease>> {
        Some(self.table.follow(REMOTE_QUEUE))
    }
}

impl EtcdLeaseStore {
    async fn load_once(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self.table.load().await?)
    }

    async fn claim_all(&self, leases: Vec<Lease>, now: Now) -> Result<Vec<Claim>, StoreError> {
        let mut out = Vec::with_capacity(leases.len());
        let mut start = 0;
        while start < leases.len() {
            // A chunk ends before a key it already has (one transaction may not put a key
            // twice) or at the size limit.
            let mut seen = HashSet::new();
            let mut end = start;
            while end < leases.len() && end - start < KEYS_PER_TXN && seen.insert(leases[end].ip) {
                end += 1;
            }
            let chunk = &leases[start..end];
            out.extend(
                on_live_member(
                    || self.claim_chunk(chunk, now),
                    StoreError::unreachable_member,
                )
                .await?,
            );
            start = end;
        }
        Ok(out)
    }
}
