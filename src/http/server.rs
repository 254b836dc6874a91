//! The HTTP server loop: accept, limit, serve each connection with hyper, shut down gracefully.
//!
//! `axum::serve` has no header-read timeout and no connection limit, so a few hundred
//! connections that never finish their headers would hold file descriptors until the process
//! runs out (and TFTP with it). Here:
//!
//! - **Header-read timeout** (`http.header_timeout`): a request's headers must arrive within
//!   it. hyper starts the timer whenever it waits for a request head, so it is also the idle
//!   timeout of a kept-alive connection.
//! - **Connection caps**: at most `http.max_connections` at once, and
//!   `http.max_connections_per_client` from one address; a connection beyond either is closed
//!   at once (and counted).
//! - **Accept errors** (out of file descriptors) back off instead of spinning.
//! - **Shutdown**: no new connections; the open ones finish their request in flight (the
//!   event stream ends on the same token).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::zero_copy::{Outbox, ZeroCopyStream};
use crate::metrics::Metrics;
use crate::net::Backoff;

/// The limits of the HTTP service (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this (and a kept-alive connection may idle this
    /// long).
    pub header_timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one client address.
    pub max_per_client: usize,
}

/// Open connections per client address; a std mutex held for one map update.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// One admitted connection's place, given back when it closes.
struct Place {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_client.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_client.remove(&self.ip);
            }
        }
    }
}

/// Serve `app` on `listener` until `token` is cancelled, then let the open connections finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) -> std::io::Result<()> {
    let open = Arc::new(Mutex::new(Open::default()));
    let graceful = GracefulShutdown::new();
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
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
        let Some(place) = admit(&open, peer.ip(), &limits) else {
            tracing::debug!(%peer, "HTTP connection refused: too many open");
            metrics.http("refused", 503);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Asset bodies go out with sendfile through the connection's outbox.
        let outbox = Outbox::default();
        let stream = ZeroCopyStream::new(stream, outbox.clone());
        // Handlers and middleware read the client's address from `ConnectInfo`.
        let service = tower::ServiceExt::map_request(
            app.clone(),
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
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
            drop(place);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
fn admit(open: &Arc<Mutex<Open>>, ip: IpAddr, limits: &Limits) -> Option<Place> {
    let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
    let mine = o.per_client.get(&ip).copied().unwrap_or(0);
    if o.total >= limits.max_connections || mine >= limits.max_per_client {
        return None;
    }
    o.total += 1;
    *o.per_client.entry(ip).or_default() += 1;
    Some(Place {
        open: open.clone(),
        ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_client_and_in_all_and_places_are_given_back() {
        let open = Arc::new(Mutex::new(Open::default()));
        let limits = Limits {
            header_timeout: Duration::from_secs(1),
            max_connections: 3,
            max_per_client: 2,
        };
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let p1 = admit(&open, a, &limits).unwrap();
        let _p2 = admit(&open, a, &limits).unwrap();
        assert!(admit(&open, a, &limits).is_none(), "two per client");
        let _p3 = admit(&open, b, &limits).unwrap();
        assert!(admit(&open, b, &limits).is_none(), "three in all");
        drop(p1);
        assert!(
            admit(&open, a, &limits).is_some(),
            "a closed connection frees its place"
        );
    }
}
