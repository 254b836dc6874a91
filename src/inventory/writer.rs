//! Durability: one writer task commits changed records to the [`MachineStore`] in batches;
//! [`Inventory::flushed`] waits until everything changed so far is on disk.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Inventory;
use super::store::{Change, MachineStore};
use crate::mac::MacAddr;

/// How long the writer lets changes gather before it commits them, so a burst of changes is
/// written as one batch. Leases are durable before their ACK on their own; the OS's report
/// and API changes wait for the commit (`flushed`), and end the pause: what gathered so far is
/// written at once.
pub(super) const WRITE_GATHER: Duration = Duration::from_millis(100);
/// The first pause before retrying a failed commit, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

impl Inventory {
    /// Write changed records to `store` until cancelled, in batches: a change waits
    /// [`WRITE_GATHER`] for others (less when a request waits for it), and while one commit
    /// runs later changes gather for the next. A commit that fails is retried (its records
    /// stay marked changed), so a store that is down for a while loses nothing; `flushed`
    /// callers wait meanwhile. Ends with a last commit.
    pub async fn run_writer(
        self: Arc<Self>,
        store: Arc<dyn MachineStore>,
        cancel: CancellationToken,
    ) {
        self.persistent
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut retry = RETRY_FIRST;
        loop {
            let mut stopping = tokio::select! {
                _ = cancel.cancelled() => true,
                _ = self.changed.notified() => false,
            };
            // Let changes gather: in a boot storm one record changes several times a second
            // (offer, ack, iPXE's exchange), and is then serialised and written once. And a
            // machine's DHCP exchange moves its record as its lease is committed: the two
            // fsyncs at once took twice as long, and the ACK waits for the lease's (2.4 against
            // 1.1 ms, traced). Unless a request waits for its change to be on disk (a report):
            // then at once, with everything gathered so far (and what comes meanwhile gathers
            // for the next).
            if !stopping {
                stopping = tokio::select! {
                    _ = cancel.cancelled() => true,
                    _ = tokio::time::sleep(WRITE_GATHER) => false,
                    _ = self.waited_on.notified() => false,
                };
            }
            let (generation, changes) = {
                let mut inner = self.lock();
                let dirty: Vec<MacAddr> = inner.dirty.drain().collect();
                let changes: Vec<Change> = dirty
                    .into_iter()
                    .map(|mac| {
                        let bytes = inner.machines.get_mut(&mac).and_then(|r| {
                            r.version += 1;
                            serde_json::to_vec(r).ok()
                        });
                        (mac, bytes)
                    })
                    .collect();
                (inner.generation, changes)
            };
            let mut failed = false;
            if !changes.is_empty() {
                let macs: Vec<MacAddr> = changes.iter().map(|(m, _)| *m).collect();
                if let Err(e) = store.write(changes).await {
                    if retry == RETRY_FIRST || retry == RETRY_MAX {
                        // The first failure of a stretch, then once per longest pause.
                        tracing::error!(error = %e, records = macs.len(), retry_in = ?retry, "cannot persist the inventory; changes are kept and written when the store is back");
                    }
                    if let Some(m) = &self.metrics {
                        m.store_errors
                            .get_or_create(&crate::metrics::StoreLabels { store: "inventory" })
                            .inc();
                    }
                    *self.store_trouble.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(e.to_string());
                    self.lock().dirty.extend(macs);
                    failed = true;
                } else if self
                    .store_trouble
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .is_some()
                {
                    tracing::info!("inventory store reachable again; queued changes written");
                }
            }
            if failed {
                if stopping {
                    tracing::error!("stopping with inventory changes that could not be written");
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
                self.changed.notify_one();
                continue;
            }
            retry = RETRY_FIRST;
            self.committed.send_replace(generation);
            if stopping {
                return;
            }
        }
    }

    /// Wait (at most 5 s) until every change made before this call is on disk.
    pub async fn flushed(&self) {
        if !self.persistent.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let want = self.lock().generation;
        self.changed.notify_one();
        self.waited_on.notify_one();
        let mut rx = self.committed.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|g| *g >= want)).await;
    }
}
