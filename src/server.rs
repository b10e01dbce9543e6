//! The two HTTP servers: the webhook on HTTPS and the admin endpoints on plain HTTP.
//!
//! The webhook runs its own accept loop (rather than a convenience wrapper) because the
//! admission path needs control that wrappers hide: TCP_NODELAY on every accepted socket
//! (without it HTTP/2 responses wait on Nagle and delayed ACKs), a bound on concurrent
//! connections and on the TLS handshake and header read times, and a graceful drain on
//! shutdown that lets in-flight reviews finish.
//!
//! hyper's HTTP/1 header read timeout does not cover a client that completes the TLS
//! handshake and then sends nothing (hyper-util's HTTP version detection waits first), nor
//! an HTTP/2 client that never opens a stream, nor a request body that stalls. So a
//! connection whose first request has not started within the header read timeout is closed,
//! and every request gets a bound from its headers to its answer (HTTP 408 after it).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::admission::Admission;
use crate::health::{Health, Report};
use crate::metrics::Metrics;

/// Largest request body accepted on `/mutate` (larger gets 413).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Limits of the webhook server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent connections; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to receive a request's headers (HTTP/1), and for a new connection's
    /// first request to start (HTTP/1 and HTTP/2).
    pub header_read_timeout: Duration,
    /// Time a request gets from its headers to its answer, body included: a client that
    /// stalls its body gets HTTP 408 and the connection is closed.
    pub request_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(25),
        }
    }
}

/// The webhook's routes: `POST /mutate` and, for registries scoped by namespace,
/// `POST /mutate/SCOPE`.
pub fn webhook_router(admission: Arc<Admission>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/mutate/{scope}", post(mutate_scope))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(admission)
}

async fn mutate(
    State(admission): State<Arc<Admission>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer_review(&headers, || admission.handle(&body))
}

async fn mutate_scope(
    State(admission): State<Arc<Admission>>,
    Path(scope): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer_review(&headers, || admission.handle_scope(&scope, &body))
}

/// 415 for a body that is not JSON, else the review's answer (400 for a body that is not
/// an AdmissionReview).
fn answer_review(
    headers: &HeaderMap,
    review: impl FnOnce() -> Result<crate::admission::Reviewed, crate::admission::ReviewError>,
) -> Response {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let json = ct
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content type must be application/json\n",
            )
                .into_response();
        }
    }
    match review() {
        Ok(reviewed) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            reviewed.body,
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// State of the admin endpoints.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Readiness inputs.
    pub health: Arc<Health>,
    /// Metrics to export.
    pub metrics: Metrics,
}

/// The admin routes: `GET /healthz`, `/readyz`, `/metrics`.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State(s): State<AdminState>| async move { answer(s.health.liveness()) }),
        )
        .route(
            "/readyz",
            get(|State(s): State<AdminState>| async move { answer(s.health.readiness()) }),
        )
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.encode(),
                )
            }),
        )
        .with_state(state)
}

fn answer(report: Report) -> (StatusCode, String) {
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, report.text)
}

/// Serve `router` over TLS on `listener` until `shutdown` resolves, then drain.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let started = Arc::new(AtomicBool::new(false));
        let service = bounded_service(router.clone(), limits.request_timeout, started.clone());
        let watcher = graceful.watcher();
        let handshake_timeout = limits.handshake_timeout;
        let first_request_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
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
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(tls), service));
            let silent = async {
                tokio::time::sleep(first_request_timeout).await;
                if started.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                _ = silent => tracing::debug!(%peer, "no request after the TLS handshake; closing"),
            }
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "webhook stopped accepting; draining in-flight requests"
    );
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
}

/// `router` as a hyper service that records that a request started, and answers HTTP 408
/// when a request is not read and answered within `timeout`.
fn bounded_service(
    router: Router,
    timeout: Duration,
    started: Arc<AtomicBool>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send + 'static,
> + Clone {
    hyper::service::service_fn(move |req| {
        started.store(true, Ordering::Relaxed);
        let answer = router.clone().oneshot(req);
        async move {
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

/// Serve the admin router on plain HTTP until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Bind a TCP listener with a clear error naming the address.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {what} address {addr}: {e}"))
}
