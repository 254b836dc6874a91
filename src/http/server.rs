//! The HTTP server loop: accept, limit, serve each connection with hyper, shut down gracefully.
//!
//! `axum::serve` has no header-read timeout and no connection limit, so a few hundred
//! connections that never finish their headers would hold file descriptors until the process
//! runs out (and TFTP with it). Here:
//!
//! - **Header-read timeout** (`http.header_timeout`): a request's headers must arrive within
//!   it. hyper starts the timer whenever it waits for a request head, so it is also the idle
//!   timeout of a kept-alive connection.
//! - **Send timeout** (`http.send_timeout`): a client that takes no byte of an answer for
//!   this long is closed (nginx's `send_timeout`), whether the answer is a file on a bulk lane
//!   or anything else; a client that keeps its TCP window shut would otherwise hold its place
//!   for ever.
//! - **Connection caps**: at most `http.max_connections` at once. While all are in use, no
//!   connection is accepted: new ones wait in the listen backlog (up to [`LISTEN_BACKLOG`]) and
//!   are served in turn as places free, as a TFTP request waits for a slot. A booting machine
//!   whose connection were closed would count a failed download and give up its boot. A
//!   connection beyond `http.max_connections_per_client` from one address is closed at once
//!   (and counted): one client cannot take everyone's places.
//! - **Accept errors** (out of file descriptors) back off instead of spinning.
//! - **Shutdown**: no new connections; the open ones finish their request in flight (the
//!   event stream ends on the same token).
//! - **Workers**: each accepted connection is served, for its whole life, on one of the
//!   worker threads it is handed (a single-threaded runtime each; the one with the fewest
//!   open connections), as nginx's worker processes each serve their own connections. On
//!   tokio's shared multi-threaded runtime the workers woke each other for every request
//!   (futex, context switches: 10% of the time of `/ipxe`), and one thread served as many
//!   requests a second as two. Each worker has a *bulk lane*, a thread that sends the
//!   asset files' bytes of its connections (`zero_copy`): the worker itself only reads
//!   requests and writes answers, so a short request is not queued behind the downloads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::zero_copy::{Outbox, ZeroCopyStream};
use crate::metrics::Metrics;
use crate::net::Backoff;

/// How often "every place is in use" is logged while it lasts.
const FULL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The limits of the HTTP service (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this (and a kept-alive connection may idle this
    /// long).
    pub header_timeout: Duration,
    /// A client that takes no byte of an answer for this long is closed.
    pub send_timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one client address.
    pub max_per_client: usize,
}

/// Connections the kernel holds for Kindling, handshake done, while every place is in use
/// (the kernel caps it at `net.core.somaxconn`, 4096 by default). tokio's own `bind` asks
/// for 1,024; a boot storm's machines would then wait for their SYN to be sent again.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with a [`LISTEN_BACKLOG`] backlog (and `SO_REUSEADDR`, as
/// tokio's `bind`).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Open connections per client address; a std mutex held for one map update.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// The open connections and the accept loop's wake-up when a place frees.
#[derive(Debug, Default)]
struct Places {
    open: Mutex<Open>,
    freed: Notify,
    /// `kindling_http_connections`.
    gauge: Gauge,
}

impl Places {
    fn total(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One admitted connection's place, given back when it closes.
struct Place {
    places: Arc<Places>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.places.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_client.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_client.remove(&self.ip);
            }
        }
        drop(open);
        self.places.gauge.dec();
        // A permit is kept if the accept loop is not waiting yet: no wake-up is lost.
        self.places.freed.notify_one();
    }
}

/// The threads connections are served on (see the module's description), and how many
/// connections each has open.
#[derive(Debug, Clone, Default)]
pub struct Workers {
    handles: Vec<Handle>,
    /// The bulk lanes file bodies are sent on: worker `i`'s is `bulk[i % len]`.
    bulk: Vec<Handle>,
    open: Arc<Vec<AtomicUsize>>,
}

/// The worker a connection is served on.
struct Picked {
    handle: Handle,
    bulk: Option<Handle>,
    load: WorkerLoad,
}

impl Workers {
    /// Serve on the runtimes of `handles` (none: on the runtime that accepts).
    pub fn new(handles: Vec<Handle>) -> Workers {
        let open = Arc::new(handles.iter().map(|_| AtomicUsize::new(0)).collect());
        Workers {
            handles,
            bulk: Vec::new(),
            open,
        }
    }

    /// Send the workers' file bodies on the runtimes of `bulk` (none: on the workers).
    pub fn with_bulk_lanes(mut self, bulk: Vec<Handle>) -> Workers {
        self.bulk = bulk;
        self
    }

    /// The worker with the fewest open connections (the first of equals), counted as having
    /// one more until its `load` drops.
    fn pick(&self) -> Option<Picked> {
        let (i, _) = self
            .open
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| n.load(Ordering::Relaxed))?;
        self.open[i].fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            handle: self.handles[i].clone(),
            bulk: (!self.bulk.is_empty()).then(|| self.bulk[i % self.bulk.len()].clone()),
            load: WorkerLoad {
                open: self.open.clone(),
                index: i,
            },
        })
    }
}

/// One connection on a worker, given back when it closes.
struct WorkerLoad {
    open: Arc<Vec<AtomicUsize>>,
    index: usize,
}

impl Drop for WorkerLoad {
    fn drop(&mut self) {
        self.open[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve `app` on `listener` until `token` is cancelled, then let the open connections finish.
/// Connections are served on `workers` (on this runtime without any).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    token: CancellationToken,
    workers: Workers,
) -> std::io::Result<()> {
    let places = Arc::new(Places {
        gauge: metrics.http_connections.clone(),
        ..Places::default()
    });
    let graceful = GracefulShutdown::new();
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut full_logged: Option<Instant> = None;
    loop {
        if places.total() >= limits.max_connections {
            // Leave new connections in the listen backlog until one closes.
            if full_logged.is_none_or(|t| t.elapsed() >= FULL_LOG_EVERY) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "every HTTP connection place is in use: new connections wait in the listen backlog"
                );
                full_logged = Some(Instant::now());
            }
            metrics.http_full.inc();
            tokio::select! {
                _ = token.cancelled() => break,
                _ = places.freed.notified() => continue,
            }
        }
        let accepted = tokio::select! {
            _ = token.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff.reset();
                x
            }
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to be closed.
                let pause = backoff.failed();
                tracing::warn!(error = %e, retry_in = ?pause, "HTTP accept failed");
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let Some(place) = admit(&places, peer.ip(), &limits) else {
            tracing::debug!(%peer, "HTTP connection refused: too many open from its address");
            metrics.http("refused", 503);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let watcher = graceful.watcher();
        let Some(worker) = workers.pick() else {
            tokio::spawn(serve_connection(
                stream, peer, app, limits, watcher, place, None,
            ));
            continue;
        };
        let (bulk, load) = (worker.bulk, worker.load);
        // Off this runtime's reactor, onto the worker's (registered there, by its task).
        match stream.into_std() {
            Ok(stream) => {
                worker.handle.spawn(async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => {
                            serve_connection(stream, peer, app, limits, watcher, place, bulk).await;
                        }
                        Err(e) => tracing::warn!(%peer, error = %e, "HTTP connection lost"),
                    }
                    drop(load);
                });
            }
            Err(e) => tracing::warn!(%peer, error = %e, "HTTP connection lost"),
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Serve one connection until it closes (or, after shutdown began, its request in flight is
/// answered); its `place` is given back then. Its file bodies are sent on `bulk` (`None`:
/// by its own task).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    app: Router,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
    place: Place,
    bulk: Option<Handle>,
) {
    // Asset bodies go out with sendfile through the connection's outbox.
    let outbox = Outbox::default();
    let stream = ZeroCopyStream::new(stream, outbox.clone(), bulk, limits.send_timeout);
    // Handlers and middleware read the client's address from `ConnectInfo`.
    let service = tower::ServiceExt::map_request(
        app,
        move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(outbox.clone());
            merge_slashes(&mut req);
            req
        },
    );
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        // `Content-Length:`, not `content-length:`: GRUB's HTTP client (and other
        // firmware) compares header names case-sensitively, as nginx writes them.
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
    drop(place);
}

/// `/boot//grubx64.efi` → `/boot/grubx64.efi`: shim builds its second stage's URL as its own
/// directory (with the slash) + `/` + the file name, as nginx and Apache would merge them.
fn merge_slashes<B>(req: &mut hyper::Request<B>) {
    let path = req.uri().path();
    if !path.contains("//") {
        return;
    }
    let mut merged = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    if let Some(q) = req.uri().query() {
        merged.push('?');
        merged.push_str(q);
    }
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = merged.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// A place for a connection from `ip`, within the caps.
fn admit(places: &Arc<Places>, ip: IpAddr, limits: &Limits) -> Option<Place> {
    let mut o = places.open.lock().unwrap_or_else(|e| e.into_inner());
    let mine = o.per_client.get(&ip).copied().unwrap_or(0);
    if o.total >= limits.max_connections || mine >= limits.max_per_client {
        return None;
    }
    o.total += 1;
    *o.per_client.entry(ip).or_default() += 1;
    places.gauge.inc();
    Some(Place {
        places: places.clone(),
        ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `app` served on an ephemeral loopback port with these caps (30 s header timeout): its
    /// address, the token that stops it, and the server's task.
    fn start(
        app: Router,
        max_connections: usize,
        max_per_client: usize,
        metrics: Arc<Metrics>,
        workers: Workers,
    ) -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let limits = Limits {
            header_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            max_connections,
            max_per_client,
        };
        start_with(app, limits, metrics, workers)
    }

    fn start_with(
        app: Router,
        limits: Limits,
        metrics: Arc<Metrics>,
        workers: Workers,
    ) -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            app,
            limits,
            metrics,
            token.clone(),
            workers,
        ));
        (addr, token, server)
    }

    #[tokio::test]
    async fn beyond_max_connections_a_connection_waits_and_is_served_when_a_place_frees() {
        let metrics = Metrics::new();
        let app = Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let (addr, token, server) = start(app, 1, 10, metrics.clone(), Workers::default());

        // The first connection takes the only place and idles.
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first.write_all(b"GET / HT").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(metrics.http_connections.get(), 1);

        // The second is neither served nor closed while it is taken.
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        second
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
        assert!(
            early.is_err(),
            "neither answered nor closed while every place is in use: {early:?}"
        );
        assert!(metrics.http_full.get() >= 1);

        // Once the first closes, the second is accepted and answered.
        drop(first);
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut out))
            .await
            .expect("answered within 5 s")
            .unwrap();
        let answer = String::from_utf8_lossy(&out);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(answer.ends_with("hello"), "{answer:?}");

        token.cancel();
        server.await.unwrap().unwrap();
    }

    /// A single-threaded runtime on a thread named `test-http-<i>`, until dropped.
    struct TestLane {
        handle: Handle,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl TestLane {
        fn start(i: usize) -> TestLane {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (tx, rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("test-http-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    tx.send(rt.handle().clone()).unwrap();
                    let _ = rt.block_on(stopped);
                })
                .unwrap();
            TestLane {
                handle: rx.recv().unwrap(),
                stop: Some(stop),
                thread: Some(thread),
            }
        }
    }

    impl Drop for TestLane {
        fn drop(&mut self) {
            let _ = self.stop.take().map(|s| s.send(()));
            let _ = self.thread.take().map(|t| t.join());
        }
    }

    #[tokio::test]
    async fn connections_are_served_on_the_worker_with_the_fewest_open() {
        // Two worker threads, as the daemon starts one per core.
        let lanes: Vec<TestLane> = (0..2).map(TestLane::start).collect();
        let workers = Workers::new(lanes.iter().map(|l| l.handle.clone()).collect());
        // Each answer names the thread that served it.
        let app = Router::new().route(
            "/",
            axum::routing::get(|| async {
                std::thread::current().name().unwrap_or("?").to_string()
            }),
        );
        let (addr, token, server) = start(app, 100, 100, Metrics::new(), workers.clone());

        // Four kept-alive connections, opened one after another: two on each worker, and
        // every request of a connection on its worker.
        let mut conns = Vec::new();
        let mut served = Vec::new();
        for _ in 0..4 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut names = Vec::new();
            for _ in 0..3 {
                c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = vec![0u8; 1024];
                let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                    .await
                    .expect("answered")
                    .unwrap();
                let answer = String::from_utf8_lossy(&buf[..n]).to_string();
                names.push(answer.rsplit("\r\n").next().unwrap().to_string());
            }
            assert!(
                names
                    .iter()
                    .all(|n| n == &names[0] && n.starts_with("test-http-")),
                "{names:?}"
            );
            served.push(names[0].clone());
            conns.push(c);
        }
        served.sort();
        assert_eq!(
            served,
            ["test-http-0", "test-http-0", "test-http-1", "test-http-1"]
        );
        let open: Vec<usize> = workers
            .open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        assert_eq!(open, [2, 2]);

        // Closed connections are counted off their worker.
        drop(conns);
        let deadline = Instant::now() + Duration::from_secs(5);
        while workers.open.iter().any(|n| n.load(Ordering::Relaxed) > 0) {
            assert!(Instant::now() < deadline, "connections still counted open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        token.cancel();
        server.await.unwrap().unwrap();
    }

    /// Read from `c` until the end of an answer's head; the head and what came after it.
    async fn read_head(c: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_string();
                return (head, got[end + 4..].to_vec());
            }
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                .await
                .expect("a head within 5 s")
                .unwrap();
            assert!(n > 0, "closed before the head's end");
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn file_bodies_go_out_on_the_bulk_lane_and_short_requests_do_not_wait_for_them() {
        // A 1 MiB asset, its bytes all different from the placeholders' zeros.
        let dir = tempfile::tempdir().unwrap();
        let file: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251 + 1) as u8).collect();
        std::fs::write(dir.path().join("big"), &file).unwrap();
        let assets = super::super::zero_copy::ServeZeroCopy::new(
            tower_http::services::ServeDir::new(dir.path()),
            dir.path(),
        );
        let app = Router::new()
            .route("/small", axum::routing::get(|| async { "hello" }))
            .nest_service("/assets", assets);
        let (worker, bulk) = (TestLane::start(0), TestLane::start(1));
        let workers =
            Workers::new(vec![worker.handle.clone()]).with_bulk_lanes(vec![bulk.handle.clone()]);
        let metrics = Metrics::new();
        let (addr, token, server) = start(app, 100, 100, metrics.clone(), workers);

        // The bulk lane's thread is held until `release`.
        let (release, held) = std::sync::mpsc::channel::<()>();
        bulk.handle.spawn(async move {
            let _ = held.recv();
        });

        // A download gets its head from the worker; its body waits for the lane.
        let mut download = tokio::net::TcpStream::connect(addr).await.unwrap();
        download
            .write_all(b"GET /assets/big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, mut body) = read_head(&mut download).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("Content-Length: 1048576"), "{head}");
        let mut buf = vec![0u8; 64 << 10];
        let early = tokio::time::timeout(Duration::from_millis(300), download.read(&mut buf)).await;
        assert!(
            body.is_empty() && early.is_err(),
            "no body byte before the lane runs: {} then {early:?}",
            body.len()
        );

        // Meanwhile a short request on the same worker is answered.
        let mut short = tokio::net::TcpStream::connect(addr).await.unwrap();
        short
            .write_all(b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), short.read_to_end(&mut answer))
            .await
            .expect("the short request answered while the download waits")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
            "{answer}"
        );

        // Once the lane runs, the body is the file's bytes, and the connection goes on.
        release.send(()).unwrap();
        while body.len() < file.len() {
            let n = tokio::time::timeout(Duration::from_secs(5), download.read(&mut buf))
                .await
                .expect("the body within 5 s")
                .unwrap();
            assert!(n > 0, "closed after {} body bytes", body.len());
            body.extend_from_slice(&buf[..n]);
        }
        assert!(body == file, "the body is the file's bytes");
        download
            .write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, rest) = read_head(&mut download).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut rest = rest;
        while rest.len() < 5 {
            let n = download.read(&mut buf).await.unwrap();
            assert!(n > 0);
            rest.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&rest[..], b"hello");

        // A client that goes away in the middle of a body frees its place (the lane's send
        // fails and the connection ends).
        let mut gone = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket2::SockRef::from(&gone)
            .set_recv_buffer_size(4096)
            .unwrap();
        gone.write_all(b"GET /assets/big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let _ = read_head(&mut gone).await;
        socket2::SockRef::from(&gone)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(gone);
        drop(download);
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.http_connections.get() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} connections still open",
                metrics.http_connections.get()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        token.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_client_that_takes_no_byte_for_the_send_timeout_is_closed_and_a_slow_one_is_not() {
        // 32 MiB: more than the socket buffers of both ends hold.
        const SIZE: usize = 32 << 20;
        let dir = tempfile::tempdir().unwrap();
        let file: Vec<u8> = (0..SIZE).map(|i| (i % 251 + 1) as u8).collect();
        std::fs::write(dir.path().join("big"), &file).unwrap();
        let assets = super::super::zero_copy::ServeZeroCopy::new(
            tower_http::services::ServeDir::new(dir.path()),
            dir.path(),
        );
        let in_memory = axum::body::Bytes::from(file.clone());
        let app = Router::new()
            .route(
                "/bytes",
                axum::routing::get(move || {
                    let b = in_memory.clone();
                    async move { b }
                }),
            )
            .nest_service("/assets", assets);
        let limits = Limits {
            header_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(2),
            max_connections: 100,
            max_per_client: 100,
        };
        // A file on a bulk lane, a file sent by the connection's own task, an answer from
        // memory (what the event stream and the API write).
        for (path, lanes) in [
            ("/assets/big", true),
            ("/assets/big", false),
            ("/bytes", true),
        ] {
            let (worker, bulk) = (TestLane::start(0), TestLane::start(1));
            let mut workers = Workers::new(vec![worker.handle.clone()]);
            if lanes {
                workers = workers.with_bulk_lanes(vec![bulk.handle.clone()]);
            }
            let metrics = Metrics::new();
            let (addr, token, server) = start_with(app.clone(), limits, metrics.clone(), workers);
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");

            // One that pauses (shorter than the timeout) gets it all.
            let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
            slow.write_all(request.as_bytes()).await.unwrap();
            let (head, mut body) = read_head(&mut slow).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
            let mut buf = vec![0u8; 256 << 10];
            let mut pauses = 0;
            while body.len() < SIZE {
                if body.len() > (pauses + 1) * SIZE / 4 {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    pauses += 1;
                }
                let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
                    .await
                    .expect("the body goes on")
                    .unwrap();
                assert!(n > 0, "{path}: closed after {} of {SIZE} bytes", body.len());
                body.extend_from_slice(&buf[..n]);
            }
            assert!(body == file, "{path}: the body is the file's bytes");
            assert_eq!(pauses, 3);
            drop(slow);

            // One that stops reading (its receive buffer, set small, and the server's send
            // buffer hold a part of the body) is closed once the timeout has passed, and its
            // place is free again.
            let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
            socket2::SockRef::from(&stuck)
                .set_recv_buffer_size(256 << 10)
                .unwrap();
            stuck.write_all(request.as_bytes()).await.unwrap();
            let (head, taken) = read_head(&mut stuck).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
            let stopped = Instant::now();
            let deadline = stopped + Duration::from_secs(10);
            while metrics.http_connections.get() > 0 {
                assert!(
                    Instant::now() < deadline,
                    "{path} (bulk lane: {lanes}): the stuck client is still connected"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                stopped.elapsed() >= Duration::from_millis(1500),
                "{path}: closed after {:?}, before the timeout",
                stopped.elapsed()
            );
            // What it then reads ends short of the body.
            let mut got = taken.len();
            loop {
                match tokio::time::timeout(Duration::from_secs(5), stuck.read(&mut buf))
                    .await
                    .expect("the end of the stream")
                {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            assert!(got < SIZE, "{path}: {got} bytes, the whole body");
            token.cancel();
            server.await.unwrap().unwrap();
        }
    }

    #[test]
    fn caps_per_client_and_in_all_and_places_are_given_back() {
        let places = Arc::new(Places::default());
        let limits = Limits {
            header_timeout: Duration::from_secs(1),
            send_timeout: Duration::from_secs(1),
            max_connections: 3,
            max_per_client: 2,
        };
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let p1 = admit(&places, a, &limits).unwrap();
        let _p2 = admit(&places, a, &limits).unwrap();
        assert!(admit(&places, a, &limits).is_none(), "two per client");
        let _p3 = admit(&places, b, &limits).unwrap();
        assert!(admit(&places, b, &limits).is_none(), "three in all");
        assert_eq!(places.gauge.get(), 3);
        drop(p1);
        assert_eq!(places.gauge.get(), 2);
        assert!(
            admit(&places, a, &limits).is_some(),
            "a closed connection frees its place"
        );
    }
}
