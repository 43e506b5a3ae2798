//! The HTTP server loop the three services share: axum's router on hyper's
//! HTTP/1 connections, with the limits a public port needs.
//!
//! `axum::serve` sets no timer, so hyper's header read timeout never runs: a
//! client that opens connections and sends half a request (or nothing) keeps
//! each one open for good, until the process's file descriptors run out and
//! no one can connect. Here every connection gets [`HEADER_READ_TIMEOUT`] to send
//! a request's headers, counted from when the connection is ready for one, so
//! an idle keep-alive connection is closed after that long as well. (Bodies
//! are the handlers' business: ingest reads its body within a deadline.)
//!
//! Hyper answers a request it cannot parse (a malformed request line or
//! header, headers over its limits, a URI too long) itself, before any
//! handler, with an empty body. [`JsonErrors`] gives those answers the
//! contract's JSON error body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long a connection may take to send a request's headers, and how long
/// an idle keep-alive connection stays open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` until `shutdown` completes, then lets the requests in flight
/// finish (idle connections are closed at once). Connections run as tasks of
/// the caller's runtime. `app` answers 404 and 405 itself: the services'
/// routers have the contract's fallbacks from `http::with_service_layers`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, app, shutdown, None).await
}

/// [`serve`], but each connection is handed to one of `threads` (in turn),
/// each running its connections on a runtime of its own, one thread and
/// nothing else.
///
/// For a service whose requests are short and answered from memory (query's
/// stats hits). Under tokio's shared runtime one worker can run on end while
/// the other sleeps and a core idles, so requests queue behind one worker;
/// split by connection, every core serves (docs/benchmarks.md has the runs).
///
/// A handler that spawns a task spawns it on its connection's thread, and a
/// connection to MySQL or Redis first opened by a handler belongs to that
/// thread's runtime: so the caller drops `threads` only once it is done with
/// its pools, not when this returns.
pub async fn serve_on_threads(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    threads: &ConnectionThreads,
) -> io::Result<()> {
    serve_with(listener, app, shutdown, Some(threads)).await
}

async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    threads: Option<&ConnectionThreads>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: the listener itself is
                    // fine, so wait a moment rather than spin or give up.
                    if !is_connection_error(&err) {
                        tracing::error!(%err, "accept failed; trying again in 1 s");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, watcher) = (app.clone(), graceful.watcher());
        match threads {
            None => {
                tokio::spawn(connection(stream, remote, app, watcher));
            }
            Some(threads) => {
                // Taken off this runtime's reactor, put on the thread's.
                let Ok(stream) = stream.into_std() else {
                    continue;
                };
                threads.spawn(async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => connection(stream, remote, app, watcher).await,
                        Err(err) => tracing::debug!(%err, %remote, "connection not taken"),
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// One connection, request after request, until it closes or the shutdown.
async fn connection(
    stream: tokio::net::TcpStream,
    remote: std::net::SocketAddr,
    app: Router,
    watcher: Watcher,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // What `into_make_service_with_connect_info` gave the handlers.
        request.extensions_mut().insert(ConnectInfo(remote));
        app.clone().oneshot(request.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(JsonErrors::new(stream)), service);
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!(%err, %remote, "connection ended with an error");
    }
}

/// Threads that each run connections on a one-thread runtime of their own
/// (see [`serve_on_threads`]). Dropped, they stop, and the tasks still on
/// them are dropped.
pub struct ConnectionThreads {
    handles: Vec<tokio::runtime::Handle>,
    /// Dropped, each ends its thread's runtime.
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
    next: std::sync::atomic::AtomicUsize,
}

impl ConnectionThreads {
    /// `threads` threads (at least one), named `http-0` and on.
    pub fn start(threads: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        let mut handles = Vec::with_capacity(threads);
        let mut stops = Vec::with_capacity(threads);
        for i in 0..threads {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
        }
        Ok(Self {
            handles,
            _stops: stops,
            next: Default::default(),
        })
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let next = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.handles[next % self.handles.len()].spawn(task);
    }
}

/// Errors of one connection (the client hung up, say), not of the listener.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection whose hyper-made error answers get the contract's JSON body.
///
/// Hyper writes such an answer as a bare head: `HTTP/1.1 400 Bad Request`
/// (or 414, 431), `content-length: 0`, a date, and nothing after, then closes
/// the connection. The services never answer an error with an empty body,
/// so a write that is exactly such a head can only be hyper's: it is
/// replaced by the same head with a JSON content type and length, and the
/// body. Every other write passes through untouched.
pub struct JsonErrors<S> {
    inner: S,
    /// A replaced answer still to be written, and how much of it was.
    pending: Vec<u8>,
    written: usize,
}

impl<S> JsonErrors<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes what is pending of a replaced answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written when it is one of hyper's bare error heads,
    /// queueing the answer with its body in its place.
    fn take_error_head(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<io::Result<usize>> {
        let answer = with_json_body(buf)?;
        self.pending = answer;
        self.written = 0;
        // Start writing now; the rest goes out with the flush hyper makes next.
        match self.poll_pending(cx) {
            Poll::Ready(Err(err)) => Some(Err(err)),
            _ => Some(Ok(buf.len())),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(result) = self.take_error_head(cx, buf) {
            return Poll::Ready(result);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // A bare head is one slice (there is no body to go with it).
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next()) {
            if let Some(result) = self.take_error_head(cx, only) {
                return Poll::Ready(result);
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Hyper's bare answer for an unparsable request, with the contract's body;
/// `None` for any other bytes.
fn with_json_body(head: &[u8]) -> Option<Vec<u8>> {
    const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";
    // A head alone: short, one blank line, at the very end.
    if head.len() > 512 || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let (code, message) = match rest.get(..4)? {
        b"400 " => ("bad_request", "the request is not well-formed HTTP"),
        b"414 " => ("uri_too_long", "the request's URI is too long"),
        b"431 " => (
            "header_fields_too_large",
            "the request's header fields are too large or too many",
        ),
        _ => return None,
    };
    let at = head.windows(EMPTY.len()).position(|w| w == EMPTY)?;
    if head[..head.len() - 4].windows(4).any(|w| w == b"\r\n\r\n") {
        return None;
    }
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut answer = Vec::with_capacity(head.len() + body.len() + 64);
    answer.extend_from_slice(&head[..at]);
    answer.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    answer.extend_from_slice(body.len().to_string().as_bytes());
    answer.extend_from_slice(b"\r\n");
    answer.extend_from_slice(&head[at + EMPTY.len()..]);
    answer.extend_from_slice(body.as_bytes());
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_error_heads_get_the_json_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 21:40:00 GMT\r\n\r\n";
        let answer = String::from_utf8(with_json_body(head).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.ends_with("\r\ndate: Sun, 29 Nov 2026 21:40:00 GMT"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "header_fields_too_large");
        for status in ["400 Bad Request", "414 URI Too Long"] {
            let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\ndate: x\r\n\r\n");
            assert!(with_json_body(head.as_bytes()).is_some(), "{status}");
        }
    }

    #[test]
    fn every_other_write_passes_untouched() {
        for bytes in [
            // The services' own answers carry a body.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 60\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            // A head with a body after it, two answers in one write, a body chunk.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            b"feedback_id,rating\r\n\r\n",
            b"",
        ] {
            assert!(with_json_body(bytes).is_none(), "{}", String::from_utf8_lossy(bytes));
        }
    }

    /// Through the wrapper, over a real socket pair, in one write and in a
    /// vectored one: the peer reads the whole replaced answer.
    #[tokio::test]
    async fn the_wrapper_writes_the_replaced_answer_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let expected = with_json_body(head).unwrap();
        for vectored in [false, true] {
            let (a, mut b) = tokio::io::duplex(16);
            let mut wrapped = JsonErrors::new(a);
            let writer = tokio::spawn(async move {
                let n = if vectored {
                    wrapped
                        .write_vectored(&[io::IoSlice::new(&[]), io::IoSlice::new(head)])
                        .await
                        .unwrap()
                } else {
                    wrapped.write(head).await.unwrap()
                };
                assert_eq!(n, head.len(), "the head counts as written");
                wrapped.flush().await.unwrap();
                wrapped.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            assert_eq!(got, expected);
        }
        // Anything else goes through as it is.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut wrapped = JsonErrors::new(a);
        wrapped.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        wrapped.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\n");
    }
}
