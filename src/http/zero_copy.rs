//! Zero-copy asset bodies: the kernel sends file bytes straight from the page cache to the
//! socket (`sendfile(2)`), as nginx does, instead of reading them into buffers here first.
//!
//! hyper owns the connection and writes every response, so the file cannot be handed to it.
//! Instead, [`ServeZeroCopy`] lets tower-http's `ServeDir` answer as always (path checks,
//! Range, HEAD, ETag, Last-Modified, preconditions), and for a `GET` it answered with a big
//! enough 200 or single-range 206 it swaps the body for a [`FileBody`] of the same length made
//! of *placeholder* chunks: slices of one static buffer of zeros, which hyper queues for a
//! vectored write without copying (it does so when the connection's I/O writes vectored, as
//! [`ZeroCopyStream`] does). The body puts its file span in the connection's [`Outbox`] when
//! hyper first polls it; [`ZeroCopyStream`] recognises placeholder slices by their address and
//! writes them with `sendfile` from the span at the front of the outbox, in order. Every
//! other byte (heads, other bodies) is written as usual.
//!
//! **Bulk lanes**: on the daemon's HTTP workers (`http::server`) each file span is sent on a
//! thread of its own, the worker's *bulk lane*: the connection's task hands the lane a
//! duplicate of the socket's descriptor and the span, the lane sends it all with `sendfile` as
//! the socket drains, and the task waits for the outcome, then hands hyper the placeholder
//! bytes as written. The worker is left with requests and headers, so a short request (the
//! operator's `/api/v1/status`, a machine's `/ipxe` or report) is not queued behind a thousand
//! downloads' turns on the worker: the kernel's scheduler shares the core between the worker,
//! which wakes briefly, and the lane, as it does between the DHCP and TFTP lanes. In a
//! 1,000-machine storm on one core the API's median answer went from about a second to
//! milliseconds (README, boot storm). Without a lane (tests, a bare `serve`) the task sends
//! itself.
//!
//! A file that shrinks while it is sent ends the connection with an error (the client sees a
//! short body and retries); it is never padded with zeros. A cold page cache makes `sendfile`
//! wait for the disk on the sending thread, as nginx's does without `aio`: boot assets are
//! read by every machine and stay cached.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use futures_util::future::BoxFuture;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::ServiceExt;
use tower_http::services::ServeDir;

/// Bodies smaller than this keep `ServeDir`'s own (one read is as cheap as the bookkeeping).
const MIN_ZERO_COPY: u64 = 64 << 10;

/// At most this much per `sendfile` call on a bulk lane (the kernel's own cap is just under
/// 2 GiB); a non-blocking socket takes what fits in its buffer anyway.
const LANE_SENDFILE_MAX: usize = 1 << 30;

/// The placeholder chunks' memory; never written to the wire.
static ZEROS: [u8; 2 << 20] = [0; 2 << 20];

fn is_placeholder(buf: &[u8]) -> bool {
    !buf.is_empty() && ZEROS.as_ptr_range().contains(&buf.as_ptr())
}

/// A part of a file still to be sent.
#[derive(Debug)]
struct FileSpan {
    file: std::fs::File,
    offset: i64,
    remaining: u64,
}

/// One connection's file spans, in the order their bodies were first polled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outbox(Arc<Mutex<VecDeque<FileSpan>>>);

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<FileSpan>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A response body of `remaining` placeholder bytes standing for a file span.
pub(crate) struct FileBody {
    span: Option<FileSpan>,
    outbox: Outbox,
    remaining: u64,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(span) = self.span.take() {
            self.outbox.lock().push_back(span);
        }
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(ZEROS.len() as u64);
        self.remaining -= n;
        let chunk = Bytes::from_static(&ZEROS[..n as usize]);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// A connection's stream: placeholder bytes go out with `sendfile`, all else as written.
pub(crate) struct ZeroCopyStream {
    stream: TcpStream,
    outbox: Outbox,
    /// The bulk lane file spans are sent on (see the module's description); `None`: here.
    lane: Option<Handle>,
    /// The span the lane is sending, or has sent while hyper still hands in its placeholders.
    on_lane: Option<LaneSend>,
    /// A client that takes no byte of an answer for this long is given up on.
    send_timeout: Duration,
    /// Runs while a write waits for the client (since the last byte it took).
    stalled: Option<Pin<Box<Sleep>>>,
}

/// A span handed to the bulk lane.
struct LaneSend {
    /// Its placeholder bytes hyper has not yet been told are written.
    unclaimed: u64,
    /// The lane's outcome; `None` once received.
    outcome: Option<oneshot::Receiver<io::Result<()>>>,
    /// Stops the lane's send when the connection goes first.
    _stop: DropGuard,
}

impl ZeroCopyStream {
    /// `stream`'s spans sent from `outbox` on `lane`, or by the connection's task without one;
    /// a write (here or on the lane) that waits `send_timeout` for the client fails.
    pub(crate) fn new(
        stream: TcpStream,
        outbox: Outbox,
        lane: Option<Handle>,
        send_timeout: Duration,
    ) -> ZeroCopyStream {
        ZeroCopyStream {
            stream,
            outbox,
            lane,
            on_lane: None,
            send_timeout,
            stalled: None,
        }
    }

    /// `polled`, a write to the socket, unless it has waited `send_timeout` since the client
    /// last took a byte: then an error, and hyper closes the connection (as nginx's
    /// `send_timeout`). Without it a client that stops reading would hold its place, and its
    /// file, until TCP gives up on it: never, while it keeps its window shut.
    fn unless_stalled<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.send_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(stalled(limit))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Send up to `max` bytes of the front span; the count sent.
    fn poll_send_file(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<usize>> {
        if let Some(lane) = self.lane.clone() {
            return self.poll_send_on_lane(&lane, cx, max);
        }
        loop {
            let writable = self.stream.poll_write_ready(cx);
            ready!(self.unless_stalled(cx, writable))?;
            let mut spans = self.outbox.lock();
            let Some(span) = spans.front_mut() else {
                return Poll::Ready(Err(io::Error::other(
                    "a zero-copy body without its file (not sent)",
                )));
            };
            let count = usize::try_from(span.remaining)
                .unwrap_or(usize::MAX)
                .min(max);
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile64(
                    &self.stream,
                    &span.file,
                    Some(&mut span.offset),
                    count,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was being sent",
                    )));
                }
                Ok(n) => {
                    span.remaining -= n as u64;
                    if span.remaining == 0 {
                        spans.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The front span sent whole on `lane` (handed over on the first call); then up to `max`
    /// of its bytes claimed as written per call.
    fn poll_send_on_lane(
        &mut self,
        lane: &Handle,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let send = match &mut self.on_lane {
            Some(send) => send,
            None => {
                let Some(span) = self.outbox.lock().pop_front() else {
                    return Poll::Ready(Err(io::Error::other(
                        "a zero-copy body without its file (not sent)",
                    )));
                };
                // The lane registers its own descriptor with its own reactor; both refer to
                // one socket, and this task writes nothing to it until the lane is done.
                let socket = self.stream.as_fd().try_clone_to_owned()?;
                let (done, outcome) = oneshot::channel();
                let stop = CancellationToken::new();
                let unclaimed = span.remaining;
                lane.spawn(send_on_lane(
                    socket,
                    span,
                    self.send_timeout,
                    done,
                    stop.clone(),
                ));
                self.on_lane.insert(LaneSend {
                    unclaimed,
                    outcome: Some(outcome),
                    _stop: stop.drop_guard(),
                })
            }
        };
        if let Some(outcome) = send.outcome.as_mut() {
            let sent = ready!(Pin::new(outcome).poll(cx)).unwrap_or_else(|_| {
                Err(io::Error::other(
                    "the bulk lane stopped before the file was sent",
                ))
            });
            send.outcome = None;
            if let Err(e) = sent {
                self.on_lane = None;
                return Poll::Ready(Err(e));
            }
        }
        let n = send.unclaimed.min(max as u64);
        send.unclaimed -= n;
        if send.unclaimed == 0 {
            self.on_lane = None;
        }
        Poll::Ready(Ok(n as usize))
    }
}

/// On a bulk lane: send `span` whole to `socket` (a duplicate of the connection's), then
/// report; nothing is reported when `stop` comes first (the connection has gone). Waiting
/// `send_timeout` for the client to take a byte fails the send.
async fn send_on_lane(
    socket: OwnedFd,
    mut span: FileSpan,
    send_timeout: Duration,
    done: oneshot::Sender<io::Result<()>>,
    stop: CancellationToken,
) {
    let sent = tokio::select! {
        sent = send_span(socket, &mut span, send_timeout) => sent,
        _ = stop.cancelled() => return,
    };
    let _ = done.send(sent);
}

async fn send_span(socket: OwnedFd, span: &mut FileSpan, send_timeout: Duration) -> io::Result<()> {
    // Registered with this lane's reactor.
    let socket = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    while span.remaining > 0 {
        tokio::time::timeout(send_timeout, socket.writable())
            .await
            .map_err(|_| stalled(send_timeout))??;
        let count = usize::try_from(span.remaining)
            .unwrap_or(usize::MAX)
            .min(LANE_SENDFILE_MAX);
        let sent = socket.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile64(&socket, &span.file, Some(&mut span.offset), count)
                .map_err(io::Error::from)
        });
        match sent {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was being sent",
                ));
            }
            Ok(n) => span.remaining -= n as u64,
            // Not writable after all: wait for the next edge.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The error of a write that waited `limit` for the client.
fn stalled(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the client took no byte of the answer for {} s (http.send_timeout)",
            limit.as_secs_f64()
        ),
    )
}

impl AsyncRead for ZeroCopyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if is_placeholder(buf) {
            return self.poll_send_file(cx, buf.len());
        }
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.unless_stalled(cx, written)
    }

    /// The leading run of ordinary slices in one `writev`, or the leading run of placeholder
    /// slices with `sendfile`: never both in one call.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let bufs: Vec<&io::IoSlice<'_>> = bufs.iter().filter(|b| !b.is_empty()).collect();
        let Some(first) = bufs.first() else {
            return Poll::Ready(Ok(0));
        };
        if is_placeholder(first) {
            let run: usize = bufs
                .iter()
                .take_while(|b| is_placeholder(b))
                .map(|b| b.len())
                .sum();
            return self.poll_send_file(cx, run);
        }
        let run: Vec<io::IoSlice<'_>> = bufs
            .iter()
            .take_while(|b| !is_placeholder(b))
            .map(|b| io::IoSlice::new(b))
            .collect();
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, &run);
        self.unless_stalled(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        // hyper queues body chunks (no copy) only for I/O that writes vectored.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// `ServeDir` for `root`, with zero-copy bodies on connections that have an [`Outbox`].
#[derive(Clone)]
pub(crate) struct ServeZeroCopy {
    dir: ServeDir,
    root: Arc<Path>,
}

impl ServeZeroCopy {
    pub(crate) fn new(dir: ServeDir, root: &Path) -> ServeZeroCopy {
        ServeZeroCopy {
            dir,
            root: root.into(),
        }
    }
}

impl tower::Service<Request> for ServeZeroCopy {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let outbox = (req.method() == Method::GET)
            .then(|| req.extensions().get::<Outbox>().cloned())
            .flatten();
        let path = req.uri().path().to_string();
        let (dir, root) = (self.dir.clone(), self.root.clone());
        Box::pin(async move {
            let resp = match dir.oneshot(req).await {
                Ok(r) => r.map(Body::new),
                Err(e) => match e {},
            };
            let Some(outbox) = outbox else {
                return Ok(resp);
            };
            let Some((offset, len, total)) = span_of(resp.status(), resp.headers()) else {
                return Ok(resp);
            };
            if len < MIN_ZERO_COPY {
                return Ok(resp);
            }
            let Some(file_path) = file_path(&root, &path) else {
                return Ok(resp);
            };
            let opened = tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(file_path)?;
                let meta = file.metadata()?;
                Ok::<_, io::Error>((file, meta))
            })
            .await;
            match opened {
                // The very file ServeDir measured (else its own body, which it has open).
                Ok(Ok((file, meta))) if meta.is_file() && meta.len() == total => {
                    let Ok(offset) = i64::try_from(offset) else {
                        return Ok(resp);
                    };
                    let (parts, _) = resp.into_parts();
                    let body = FileBody {
                        span: Some(FileSpan {
                            file,
                            offset,
                            remaining: len,
                        }),
                        outbox,
                        remaining: len,
                    };
                    Ok(Response::from_parts(parts, Body::new(body)))
                }
                _ => Ok(resp),
            }
        })
    }
}

/// (offset, length, file size) of what a response sends: a whole file (200) or one range
/// (206 with `Content-Range: bytes a-b/total`); `None` for anything else.
fn span_of(status: StatusCode, headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let len: u64 = headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    match status {
        StatusCode::OK => Some((0, len, len)),
        StatusCode::PARTIAL_CONTENT => {
            let range = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
            let (span, total) = range.strip_prefix("bytes ")?.split_once('/')?;
            let (first, last) = span.split_once('-')?;
            let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
            (last.checked_sub(first)? + 1 == len).then_some((first, len, total.parse().ok()?))
        }
        _ => None,
    }
}

/// The file under `root` for a request path, as `ServeDir` maps it: percent-decoded, `.`
/// skipped, anything but plain names (`..`, roots, prefixes) refused.
fn file_path(root: &Path, request_path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(request_path.trim_start_matches('/'))
        .decode_utf8()
        .ok()?;
    let mut path = root.to_path_buf();
    for component in Path::new(&*decoded).components() {
        match component {
            Component::Normal(name) => path.push(name),
            Component::CurDir => {}
            Component::Prefix(_) | Component::RootDir | Component::ParentDir => return None,
        }
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_of_whole_files_and_single_ranges_only() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "1000".parse().unwrap());
        assert_eq!(span_of(StatusCode::OK, &h), Some((0, 1000, 1000)));
        assert_eq!(span_of(StatusCode::NOT_MODIFIED, &h), None);
        // A range without Content-Range (multipart) is left to ServeDir.
        assert_eq!(span_of(StatusCode::PARTIAL_CONTENT, &h), None);
        h.insert(
            header::CONTENT_RANGE,
            "bytes 100-1099/5000".parse().unwrap(),
        );
        assert_eq!(
            span_of(StatusCode::PARTIAL_CONTENT, &h),
            Some((100, 1000, 5000))
        );
        h.insert(header::CONTENT_RANGE, "bytes 100-199/5000".parse().unwrap());
        assert_eq!(
            span_of(StatusCode::PARTIAL_CONTENT, &h),
            None,
            "length disagrees"
        );
    }

    #[test]
    fn request_paths_map_as_serve_dir_maps_them() {
        let root = Path::new("/srv/assets");
        assert_eq!(
            file_path(root, "/flatcar/vmlinuz"),
            Some(root.join("flatcar/vmlinuz"))
        );
        assert_eq!(file_path(root, "/a%20b/./c"), Some(root.join("a b/c")));
        assert_eq!(file_path(root, "/../etc/passwd"), None);
        assert_eq!(file_path(root, "/a/%2e%2e/%2e%2e/etc"), None);
    }

    #[test]
    fn placeholders_are_recognised_by_address_not_content() {
        assert!(is_placeholder(&ZEROS[..10]));
        assert!(is_placeholder(&ZEROS[ZEROS.len() - 1..]));
        assert!(!is_placeholder(&[0u8; 10]));
        assert!(!is_placeholder(&ZEROS[..0]));
    }
}
