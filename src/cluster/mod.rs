//! The connection to etcd (`[cluster] store = "etcd"`): several Kindling instances share
//! leases and machine records there. This module connects (TLS, user and password, time
//! limits), names keys under the cluster's prefix and checks that etcd answers; the stores
//! behind `dhcp::store::LeaseStore` and `inventory::store::MachineStore` build on it.
//!
//! Keys: `<prefix>leases/<IPv4>` → a lease as JSON, `<prefix>machines/<MAC>` → a machine
//! record as JSON. Every value is JSON, readable with `etcdctl get --prefix /kindling/`.

pub mod buckets;
pub mod members;

use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
};
use tokio::sync::mpsc;

use crate::config::ClusterConfig;

/// Why etcd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file of the TLS or password setup could not be read.
    #[error("cluster: cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// etcd did not answer, refused, or failed a request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// This instance's membership could not be kept.
    #[error("cluster membership: {0}")]
    Membership(String),
    /// A request took longer than `[cluster] timeout`.
    #[error("etcd: no answer within {0:?}")]
    Timeout(Duration),
    /// A value in etcd is not what Kindling writes there.
    #[error("etcd: unreadable value: {0}")]
    Decode(String),
}

impl ClusterError {
    /// Whether the request failed only because the member it went to could not be reached
    /// (down, restarting): another try may reach a live one.
    pub fn unreachable_member(&self) -> bool {
        match self {
            ClusterError::Etcd(etcd_client::Error::TransportError(_)) => true,
            ClusterError::Etcd(etcd_client::Error::GRpcStatus(s)) => {
                // 14: UNAVAILABLE (connection refused or reset).
                i32::from(s.code()) == 14
            }
            _ => false,
        }
    }
}

/// Run `op` again (at most [`MEMBER_TRIES`] times in all, briefly apart) while it fails only
/// because the member it reached was down: with several endpoints the client moves on to a
/// live one. Other errors, and the last one, are returned.
pub async fn on_live_member<T, E, F, Fut>(
    mut op: F,
    unreachable: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries = 1;
    loop {
        match op().await {
            Err(e) if tries < MEMBER_TRIES && unreachable(&e) => {
                tokio::time::sleep(Duration::from_millis(100) * tries).await;
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Tries of one request across members (see [`on_live_member`]).
pub const MEMBER_TRIES: u32 = 4;

/// A connected etcd client with this cluster's prefix and this instance's name.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    node: String,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// What [`Etcd::status`] found: for the start-up log line and `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    /// The etcd cluster's id.
    pub cluster_id: u64,
    /// The member that answered.
    pub member_id: u64,
    /// Its version, e.g. `3.4.23`.
    pub version: String,
    /// The current leader's member id (0: none, no quorum).
    pub leader: u64,
}

/// This instance's name: `[cluster] node_name`, else the host name.
pub fn node_name(config: &ClusterConfig) -> String {
    config.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "kindling".to_string())
    })
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClusterError> {
    std::fs::read(path).map_err(|source| ClusterError::File {
        path: path.display().to_string(),
        source,
    })
}

impl Etcd {
    /// Connect to the endpoints of `config` (it need not answer yet: the client reconnects
    /// on its own; [`Etcd::status`] tells whether it does).
    pub async fn connect(config: &ClusterConfig) -> Result<Etcd, ClusterError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            .with_timeout(config.timeout)
            .with_keep_alive(Duration::from_secs(5), config.timeout)
            .with_keep_alive_while_idle(true);
        let tls = config.endpoints.iter().any(|e| e.starts_with("https://"));
        if tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &config.ca_file {
                t = t.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
                t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(t);
        }
        if let Some(user) = &config.user {
            let password = match (&config.password, &config.password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(file)) => String::from_utf8_lossy(&read(file)?)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                (None, None) => String::new(),
            };
            options = options.with_user(user.clone(), password);
        }
        let endpoints: Vec<&str> = config.endpoints.iter().map(String::as_str).collect();
        let client = tokio::time::timeout(
            config.timeout * 2,
            Client::connect(endpoints, Some(options)),
        )
        .await
        .map_err(|_| ClusterError::Timeout(config.timeout * 2))??;
        Ok(Etcd {
            client,
            prefix: config.prefix.clone(),
            node: node_name(config),
            timeout: config.timeout,
        })
    }

    /// This instance's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The full key of `rest` under the prefix, e.g. `key("leases/10.0.0.5")`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The per-request limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A client handle (cheap: it shares the connection).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Every value under `<prefix><rest>`, decoded (one that does not decode is logged and
    /// skipped), and the revision they were read at (a watch continues after it).
    pub async fn load<T: serde::de::DeserializeOwned>(
        &self,
        rest: &str,
    ) -> Result<(Vec<T>, i64), ClusterError> {
        let mut c = self.client.clone();
        let resp = self
            .limit(c.get(self.key(rest), Some(GetOptions::new().with_prefix())))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            match serde_json::from_slice::<T>(kv.value()) {
                Ok(v) => out.push(v),
                Err(e) => {
                    let key = String::from_utf8_lossy(kv.key());
                    tracing::warn!(%key, error = %e, "skipping an unreadable value in etcd");
                }
            }
        }
        Ok((out, revision))
    }

    /// Ask the member this client talks to for its status.
    pub async fn status(&self) -> Result<Reached, ClusterError> {
        let mut c = self.client.clone();
        let s = self.limit(c.status()).await?;
        let header = s.header();
        Ok(Reached {
            cluster_id: header.map_or(0, |h| h.cluster_id()),
            member_id: header.map_or(0, |h| h.member_id()),
            version: s.version().to_string(),
            leader: s.leader(),
        })
    }

    /// `fut` within the per-request limit.
    pub async fn limit<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClusterError::Timeout(self.timeout)),
        }
    }
}

impl Etcd {
    /// Send what is put under `<prefix><rest>` from after `revision` on (decoded by `decode`;
    /// what does not decode is logged and skipped) to `tx`, until `tx` closes. A watch that
    /// breaks is opened again from the last revision seen, with a growing pause; one that etcd
    /// cancelled after a compaction resumes from the compaction.
    pub async fn follow<T: Send + 'static>(
        self,
        rest: &'static str,
        mut revision: i64,
        decode: impl Fn(&[u8]) -> Result<T, serde_json::Error> + Send + 'static,
        tx: mpsc::Sender<T>,
    ) {
        let prefix = self.key(rest);
        let mut pause = FOLLOW_PAUSE_FIRST;
        loop {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut c = self.client.clone();
            let opened = tokio::select! {
                s = self.limit(c.watch(prefix.as_str(), Some(options))) => s,
                _ = tx.closed() => return,
            };
            match opened {
                Err(e) => {
                    tracing::warn!(%prefix, error = %e, retry_in = ?pause, "cannot watch etcd");
                }
                Ok(mut stream) => loop {
                    let message = tokio::select! {
                        m = stream.message() => m,
                        _ = tx.closed() => return,
                    };
                    let resp = match message {
                        Ok(Some(resp)) => resp,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(%prefix, error = %e, "the etcd watch broke: opening it again");
                            break;
                        }
                    };
                    pause = FOLLOW_PAUSE_FIRST;
                    if resp.canceled() {
                        tracing::warn!(%prefix, reason = %resp.cancel_reason(), "etcd cancelled the watch: opening it again");
                        revision = revision.max(resp.compact_revision() - 1);
                        break;
                    }
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        revision = revision.max(kv.mod_revision());
                        if event.event_type() != EventType::Put {
                            continue;
                        }
                        match decode(kv.value()) {
                            Ok(v) => {
                                if tx.send(v).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let key = String::from_utf8_lossy(kv.key());
                                tracing::warn!(%key, error = %e, "skipping an unreadable value from etcd");
                            }
                        }
                    }
                },
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tx.closed() => return,
            }
            pause = (pause * 2).min(FOLLOW_PAUSE_MAX);
        }
    }
}

/// One kind of JSON value under `<prefix><rest>` (leases, machine records): loaded whole at
/// start, then followed from the revision the load saw, so nothing written in between is
/// missed.
#[derive(Debug, Clone)]
pub struct Table {
    etcd: Etcd,
    rest: &'static str,
    loaded_at: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Table {
    /// The values under `<prefix><rest>` (e.g. `"leases/"`).
    pub fn new(etcd: Etcd, rest: &'static str) -> Table {
        Table {
            etcd,
            rest,
            loaded_at: Default::default(),
        }
    }

    /// The connection.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// Every value, decoded (see [`Etcd::load`]); a later [`Table::follow`] starts after it.
    pub async fn load<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, ClusterError> {
        let (out, revision) = self.etcd.load(self.rest).await?;
        self.loaded_at
            .store(revision, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// What is put from after the last load on, as it happens (at most `queue` waiting).
    pub fn follow<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        queue: usize,
    ) -> mpsc::Receiver<T> {
        let (tx, rx) = mpsc::channel(queue);
        let from = self.loaded_at.load(std::sync::atomic::Ordering::Relaxed);
        let decode = |b: &[u8]| serde_json::from_slice::<T>(b);
        tokio::spawn(self.etcd.clone().follow(self.rest, from, decode, tx));
        rx
    }
}

/// The first pause before opening a broken watch again, doubling up to [`FOLLOW_PAUSE_MAX`].
const FOLLOW_PAUSE_FIRST: Duration = Duration::from_millis(250);
const FOLLOW_PAUSE_MAX: Duration = Duration::from_secs(10);

#[cfg(test)]
pub(crate) mod testing {
    /// A real etcd member for tests (Debian's `etcd-server`): on free loopback ports with a
    /// temporary data directory, killed (by PID) and removed on drop. `None`, with the reason
    /// printed, where `/usr/bin/etcd` is missing.
    pub(crate) struct EtcdProcess {
        child: std::process::Child,
        /// The client URL, e.g. `http://127.0.0.1:40123`.
        pub(crate) url: String,
        _dir: tempfile::TempDir,
    }

    impl EtcdProcess {
        pub(crate) fn start(test: &str) -> Option<EtcdProcess> {
            let bin = std::path::Path::new("/usr/bin/etcd");
            if !bin.exists() {
                eprintln!("SKIP {test}: /usr/bin/etcd is not installed (scripts/setup.sh test)");
                return None;
            }
            let port = || {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            };
            let (client, peer) = (port(), port());
            let dir = tempfile::tempdir().unwrap();
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = std::process::Command::new(bin)
                .arg("--name=t")
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=t={peer_url}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
                .spawn()
                .expect("start etcd");
            let etcd = EtcdProcess {
                child,
                url,
                _dir: dir,
            };
            // Ready when it answers on its client port.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "etcd did not start: {}",
                    std::fs::read_to_string(etcd._dir.path().join("etcd.log")).unwrap_or_default()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Some(etcd)
        }

        /// A `[cluster]` section for this member with key prefix `prefix`.
        pub(crate) fn config(&self, prefix: &str) -> crate::config::ClusterConfig {
            crate::config::ClusterConfig {
                store: crate::config::StoreKind::Etcd,
                endpoints: vec![self.url.clone()],
                prefix: prefix.to_string(),
                node_name: Some("test".into()),
                ..Default::default()
            }
        }
    }

    impl Drop for EtcdProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
