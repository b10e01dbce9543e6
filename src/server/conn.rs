//! The accept loop and connection lifetimes shared by both ports.
//!
//! Every connection is in a table with what its watchdog needs: requests in flight, since
//! when it is idle, whether a new HTTP/1 request has started to arrive, and whether it
//! speaks HTTP/2 (seen from its first bytes: the client preface). The watchdog closes it
//! when a rule's deadline passes:
//!
//! * before its first request: `header_read_timeout` after the handshake;
//! * idle between requests: `idle_timeout` (HTTP/1 keep-alive, and HTTP/2 with no open
//!   stream; PINGs do not count as activity);
//! * HTTP/1 only: once bytes of a new request arrive, its headers within
//!   `header_read_timeout` (hyper's own header timer is off: it would also bound idle time);
//! * a request from its headers to its answer: `request_timeout` (HTTP 408), in the service.
//!
//! HTTP/2 connections are closed with GOAWAY (clients retry what was not processed), and
//! closed hard when that does not finish within a short grace; HTTP/1 connections with no
//! request in flight are simply closed.
//!
//! At `max_connections`, a new connection evicts the connection that has been idle the
//! longest (no request in flight: keep-alive idle, still in its handshake, or still
//! sending its headers), so that idle or slow clients cannot keep the API server out. Only
//! when every connection has a request in flight (each bounded by `request_timeout`) do new
//! clients wait in the listen backlog.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::Limits;

/// How long an evicted or idle-timed-out HTTP/2 connection gets to finish its GOAWAY
/// exchange before it is closed hard.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Largest HTTP/1 read buffer (request line, headers and body chunks): bounds what a client
/// sending headers slowly can make us hold.
const H1_MAX_BUF: usize = 16 * 1024;

/// HTTP/2 receive windows (per stream and per connection): what a client may send before
/// we read it. A stream waiting for body budget keeps at most this much per connection.
const H2_WINDOW: u32 = 64 * 1024;

/// Concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 100;

/// HTTP/2 send buffer per stream (our answers are a few hundred bytes).
const H2_MAX_SEND_BUF: usize = 64 * 1024;

/// How a connection starts: plain TCP or a TLS handshake first.
#[derive(Clone)]
pub(crate) enum Handshake {
    /// Plain HTTP (the admin port).
    Plain,
    /// TLS (the webhook port).
    Tls(TlsAcceptor),
}

/// Serve `router` on `listener` until `shutdown`, then drain for `limits.drain_timeout`.
/// `name` says which port in logs.
pub(crate) async fn serve(
    listener: TcpListener,
    handshake: Handshake,
    router: Router,
    limits: Limits,
    name: &'static str,
    shutdown: impl Future<Output = ()>,
) {
    let table = Arc::new(Table::new(limits.max_connections.max(1)));
    let builder = Arc::new(builder(&limits));
    let limits = Arc::new(limits);
    // 1 + when the limit was last reported (0: never), to log it at most once a minute.
    let warned = AtomicU64::new(0);
    tokio::pin!(shutdown);
    'accept: loop {
        // Room for one more: a free slot, or an idle connection to evict once accepted.
        loop {
            let changed = table.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if table.has_room() {
                break;
            }
            tokio::select! {
                _ = &mut shutdown => break 'accept,
                _ = changed => {}
            }
        }
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(port = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        // Make room if needed; the idle connection may have become busy since the check,
        // then wait (holding this socket) for the next one to free up.
        loop {
            let changed = table.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if table.live() < table.max {
                break;
            }
            if table.evict_oldest_idle() {
                let now = table.now_ms();
                let last = warned.load(Ordering::Relaxed);
                if last == 0 || now + 1 >= last + 60_000 {
                    warned.store(now + 1, Ordering::Relaxed);
                    tracing::warn!(
                        port = name,
                        max_connections = table.max,
                        "connection limit reached: closing the connections idle the longest to serve new ones (logged at most once a minute)"
                    );
                }
                break;
            }
            tokio::select! {
                _ = &mut shutdown => break 'accept,
                _ = changed => {}
            }
        }
        let conn = table.register();
        tokio::spawn(handle(
            conn,
            table.clone(),
            tcp,
            peer,
            handshake.clone(),
            router.clone(),
            builder.clone(),
            limits.clone(),
        ));
    }
    drop(listener);
    let open = table.len();
    tracing::info!(
        port = name,
        connections = open,
        "stopped accepting; draining in-flight requests"
    );
    table.close_all();
    let drained = async {
        loop {
            let changed = table.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if table.len() == 0 {
                return;
            }
            changed.await;
        }
    };
    if tokio::time::timeout(limits.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            port = name,
            "drain timed out; closing remaining connections"
        );
    }
}

fn builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog bounds header reads; hyper's timer would also cut idle keep-alive.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(H1_MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_WINDOW)
        .initial_connection_window_size(H2_WINDOW)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_send_buf_size(H2_MAX_SEND_BUF)
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout);
    builder
}

/// Milliseconds on the table's clock (0 is the table's creation).
type Ms = u64;

/// One connection's state, shared by its task, its IO, its requests and the table.
#[derive(Debug)]
struct Conn {
    id: u64,
    epoch: Instant,
    in_flight: AtomicUsize,
    served: AtomicBool,
    /// Since when no request is in flight (accept, then end of handshake, then the end of
    /// each request).
    idle_since: AtomicU64,
    /// 1 + when the first byte arrived while idle (HTTP/1: a new request started); 0: none.
    first_byte: AtomicU64,
    /// Protocol from the first bytes: 0 unknown, 1 HTTP/1, 2 HTTP/2.
    protocol: AtomicU64,
    /// Bytes of the HTTP/2 preface matched so far.
    preface: AtomicUsize,
    /// Asked to close (evicted, timed out or draining).
    closing: AtomicBool,
    /// Draining on shutdown (in-flight requests finish) rather than evicted.
    draining: AtomicBool,
    /// Something the watchdog must look at changed.
    wake: Notify,
    /// The table's notifier: a request ended (the connection may be evictable now).
    table_changed: Arc<Notify>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Conn {
    fn now(&self) -> Ms {
        Instant::now().duration_since(self.epoch).as_millis() as Ms
    }

    fn h2(&self) -> bool {
        self.protocol.load(Ordering::Acquire) == 2
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    fn handshake_done(&self) {
        self.idle_since.store(self.now(), Ordering::Release);
        self.wake.notify_one();
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        InFlight(self.clone())
    }

    /// Bytes arrived: learn the protocol, and start the header timer of a new HTTP/1
    /// request.
    fn read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.protocol.load(Ordering::Relaxed) == 0 {
            let seen = self.preface.load(Ordering::Relaxed);
            let n = bytes.len().min(H2_PREFACE.len() - seen);
            if bytes[..n] != H2_PREFACE[seen..seen + n] {
                self.protocol.store(1, Ordering::Release);
            } else if seen + n == H2_PREFACE.len() {
                self.protocol.store(2, Ordering::Release);
            } else {
                self.preface.store(seen + n, Ordering::Relaxed);
            }
        }
        if self.idle()
            && !self.h2()
            && self.first_byte.load(Ordering::Acquire) == 0
            && self
                .first_byte
                .compare_exchange(0, self.now() + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// When the watchdog must act, if nothing changes before; `None` while busy.
    fn deadline(&self, limits: &Limits) -> Option<Ms> {
        if !self.idle() {
            return None;
        }
        let idle_since = self.idle_since.load(Ordering::Acquire);
        if !self.served.load(Ordering::Acquire) {
            return Some(idle_since + ms(limits.header_read_timeout));
        }
        let mut at = idle_since + ms(limits.idle_timeout);
        let first = self.first_byte.load(Ordering::Acquire);
        if first != 0 && !self.h2() {
            at = at.min(first - 1 + ms(limits.header_read_timeout));
        }
        Some(at)
    }

    /// Ask the connection to close; `drain` lets requests in flight finish.
    fn close(&self, drain: bool) {
        if drain {
            self.draining.store(true, Ordering::Release);
        }
        self.closing.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

fn ms(d: Duration) -> Ms {
    d.as_millis().min(u64::MAX as u128) as Ms
}

/// A request in flight on a connection; its end makes the connection idle again.
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        if conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            conn.first_byte.store(0, Ordering::Release);
            conn.idle_since.store(conn.now(), Ordering::Release);
            conn.wake.notify_one();
            conn.table_changed.notify_waiters();
        }
    }
}

/// The open connections of one port.
struct Table {
    max: usize,
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// A connection ended or became idle.
    changed: Arc<Notify>,
}

impl Table {
    fn new(max: usize) -> Self {
        Self {
            max,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            changed: Arc::new(Notify::new()),
        }
    }

    fn now_ms(&self) -> Ms {
        Instant::now().duration_since(self.epoch).as_millis() as Ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Connections not yet asked to close: what the limit counts.
    fn live(&self) -> usize {
        self.lock()
            .values()
            .filter(|c| !c.closing.load(Ordering::Acquire))
            .count()
    }

    /// Below the limit, or an idle connection can be evicted.
    fn has_room(&self) -> bool {
        let conns = self.lock();
        let mut live = 0;
        let mut idle = false;
        for c in conns.values() {
            if !c.closing.load(Ordering::Acquire) {
                live += 1;
                idle |= c.idle();
            }
        }
        live < self.max || idle
    }

    fn register(&self) -> Arc<Conn> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            epoch: self.epoch,
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(self.now_ms()),
            first_byte: AtomicU64::new(0),
            protocol: AtomicU64::new(0),
            preface: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            wake: Notify::new(),
            table_changed: self.changed.clone(),
        });
        self.lock().insert(id, conn.clone());
        conn
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.changed.notify_waiters();
    }

    /// Ask the connection idle the longest to close; false when every one is busy.
    fn evict_oldest_idle(&self) -> bool {
        let conns = self.lock();
        let victim = conns
            .values()
            .filter(|c| !c.closing.load(Ordering::Acquire) && c.idle())
            .min_by_key(|c| (c.idle_since.load(Ordering::Acquire), c.id));
        match victim {
            Some(c) => {
                c.close(false);
                true
            }
            None => false,
        }
    }

    fn close_all(&self) {
        for c in self.lock().values() {
            c.close(true);
        }
    }
}

/// Removes the connection from the table however its task ends.
struct Registered(Arc<Table>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    conn: Arc<Conn>,
    table: Arc<Table>,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: Handshake,
    router: Router,
    builder: Arc<Builder<TokioExecutor>>,
    limits: Arc<Limits>,
) {
    let _registered = Registered(table, conn.id);
    match handshake {
        Handshake::Plain => {
            conn.handshake_done();
            drive(conn, tcp, peer, router, &builder, &limits).await;
        }
        Handshake::Tls(acceptor) => {
            let accepted = tokio::select! {
                r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => r,
                _ = closed(&conn) => {
                    tracing::debug!(%peer, "closing a connection still in its TLS handshake to make room");
                    return;
                }
            };
            let tls = match accepted {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            conn.handshake_done();
            drive(conn, tls, peer, router, &builder, &limits).await;
        }
    }
}

/// Resolves once the connection is asked to close.
async fn closed(conn: &Conn) {
    loop {
        let woken = conn.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if conn.closing.load(Ordering::Acquire) {
            return;
        }
        woken.await;
    }
}

async fn drive<T>(
    conn: Arc<Conn>,
    io: T,
    peer: SocketAddr,
    router: Router,
    builder: &Builder<TokioExecutor>,
    limits: &Limits,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = Tracked {
        inner: io,
        conn: conn.clone(),
    };
    let service = service(router, conn.clone(), limits.request_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut hard_close: Option<Instant> = None;
    loop {
        let woken = conn.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // What to do now, from the state as it is.
        if hard_close.is_none() {
            let timed_out = conn.deadline(limits).is_some_and(|at| at <= conn.now());
            if conn.closing.load(Ordering::Acquire) || timed_out {
                let why = if conn.draining.load(Ordering::Acquire) {
                    "shutting down"
                } else if timed_out {
                    "idle or header timeout"
                } else {
                    "connection limit reached"
                };
                conn.closing.store(true, Ordering::Release);
                conn.table_changed.notify_waiters();
                if conn.idle() && !conn.h2() {
                    tracing::debug!(%peer, reason = why, "closing HTTP/1 connection");
                    return;
                }
                tracing::debug!(%peer, reason = why, h2 = conn.h2(), "closing connection gracefully");
                connection.as_mut().graceful_shutdown();
                let grace = if conn.draining.load(Ordering::Acquire) || !conn.idle() {
                    limits.drain_timeout.max(limits.request_timeout)
                } else {
                    GOAWAY_GRACE
                };
                hard_close = Some(Instant::now() + grace);
            }
        }
        let deadline = match hard_close {
            Some(at) => Some(at),
            None => conn
                .deadline(limits)
                .map(|at| conn.epoch + Duration::from_millis(at)),
        };
        tokio::select! {
            r = connection.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = woken => {}
            _ = sleep_until(deadline) => {
                if hard_close.is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!(%peer, "connection did not close in time; closing it hard");
                    return;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `router` as a hyper service that tracks requests in flight on `conn`, and answers
/// HTTP 408 when a request is not read and answered within `timeout`.
fn service(
    router: Router,
    conn: Arc<Conn>,
    timeout: Duration,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send + 'static,
> + Clone {
    hyper::service::service_fn(move |req| {
        let in_flight = conn.request_started();
        let answer = router.clone().oneshot(req);
        async move {
            let _in_flight = in_flight;
            match tokio::time::timeout(timeout, answer).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!("request not received and answered in time; closing");
                    Ok((
                        StatusCode::REQUEST_TIMEOUT,
                        [(header::CONNECTION, "close")],
                        "request not received in time\n",
                    )
                        .into_response())
                }
            }
        }
    })
}

/// The connection's byte stream, reporting what it reads to the watchdog.
struct Tracked<T> {
    inner: T,
    conn: Arc<Conn>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.conn.read(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
