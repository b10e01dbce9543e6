//! The two HTTP servers: the webhook on HTTPS and the admin endpoints on plain HTTP.
//!
//! Both run the same accept loop (`conn`), rather than a convenience wrapper, because the
//! admission path needs control that wrappers hide: TCP_NODELAY on every accepted socket
//! (without it HTTP/2 responses wait on Nagle and delayed ACKs), a cap on connections that
//! sheds the longest-idle one instead of leaving new clients in the backlog, handshake,
//! header, request and idle timeouts for HTTP/1 and HTTP/2 alike, and a graceful drain on
//! shutdown that lets in-flight reviews finish. Request bodies on the webhook share one
//! memory budget (`body`), so that no mix of concurrent requests can take the process past
//! its memory limit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Body as _;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::health::{Health, Report};
use crate::metrics::Metrics;

mod body;
mod conn;

/// Largest request body accepted on `/mutate` by default (larger gets 413).
///
/// What the API server can send: it refuses request bodies over 3 MiB
/// (`MaxRequestBodyBytes` in k8s.io/apiserver/pkg/server/config.go: "1.5MB is the
/// recommended client request size ... the etcd server should accept ... so we allow 2x
/// as the largest request body size to be accepted and decoded in a write request"), and
/// etcd refuses objects over 1.5 MiB (`--max-request-bytes`, 1572864). An AdmissionReview
/// carries the object once for CREATE, and with `oldObject` twice for UPDATE, plus a small
/// envelope (uid, kind, resource, userInfo, options): 2 x 3 MiB + envelope < 8 MiB. Pods
/// created from protobuf (controllers) re-encode as larger JSON, but those come from
/// objects etcd stored (1.5 MiB), which stay well inside the same 8 MiB.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Memory that decoding a review may take beyond its body, in multiples of the body's size,
/// not counting what a long string in the wrong place costs ([`QUOTE_OVERHEAD`]): every
/// body is charged `1 + DECODE_OVERHEAD` times its buffer while it arrives. Decoding
/// borrows strings from the body; what it copies (unescaped strings, image references that
/// do not parse) is at most about the body again (tests/decode_memory.rs measures it).
pub const DECODE_OVERHEAD: usize = 2;

/// Memory that decoding may take per byte of the body's longest string: when a string
/// stands where an object or a list belongs, serde's error message quotes it whole, in
/// Rust's escaped form (up to 3.5 times its UTF-8, for combining marks), built by doubling
/// a buffer whose growth may copy it, next to the unescaped string it quotes. A body is
/// charged this times its longest string before it is decoded. One for which that could
/// never fit the budget is not decoded: its envelope is read without decoding the Pod
/// and the Pod is allowed unchanged (`Admission::handle_undecoded`). With the defaults
/// that takes a string of over 0.66 MiB in an 8 MiB body, over 2 MiB in a small one:
/// longer than anything the API server can store in a Pod (etcd's limit is 1.5 MiB for
/// the whole object, annotations 256 KiB together).
pub const QUOTE_OVERHEAD: usize = 12;

/// Default bound on the bytes charged for all request bodies at once: the largest body
/// with what decoding it takes (`(1 + DECODE_OVERHEAD) x 8 MiB`) and room for ordinary
/// reviews (5-50 KB) next to it.
pub const MAX_BUFFERED_BODY_BYTES: usize = 32 * 1024 * 1024;

/// What decoding `body` may take beyond the body itself, as charged against the budget:
/// [`DECODE_OVERHEAD`] times its length and [`QUOTE_OVERHEAD`] times its longest string.
pub fn decode_charge(body: &[u8]) -> usize {
    DECODE_OVERHEAD * body.len() + QUOTE_OVERHEAD * body::longest_string(body)
}

/// Connection limits of one server (port).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections. At the limit, a new connection closes the one idle the longest;
    /// when none is idle, new clients wait in the listen backlog.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake (webhook only).
    pub handshake_timeout: Duration,
    /// Time for a new connection's first request to start, and (HTTP/1) for a request's
    /// headers once its first byte arrived.
    pub header_read_timeout: Duration,
    /// Time a request gets from its headers to its answer, body included: a client that
    /// stalls its body gets HTTP 408 and the connection is closed.
    pub request_timeout: Duration,
    /// Time a connection may stay open with no request in flight (HTTP/1 keep-alive, HTTP/2
    /// with no open stream).
    pub idle_timeout: Duration,
    /// Interval of HTTP/2 PINGs that detect dead peers; `None` disables them.
    pub http2_keep_alive_interval: Option<Duration>,
    /// Time to wait for a PING's acknowledgement before closing the connection.
    pub http2_keep_alive_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown.
    pub drain_timeout: Duration,
}

impl Limits {
    /// Defaults of the webhook port. The API server keeps webhook connections alive (Go's
    /// idle timeout, 90 s) and uses HTTP/1.1, or HTTP/2 for loopback URLs: the idle timeout
    /// is longer than its own, so that it closes idle connections first and never sends a
    /// review on a connection we are closing.
    pub fn webhook() -> Self {
        Self {
            max_connections: 128,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            http2_keep_alive_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(25),
        }
    }

    /// Defaults of the admin port (kubelet probes open a connection per probe; Prometheus
    /// keeps one).
    pub fn admin() -> Self {
        Self {
            max_connections: 32,
            header_read_timeout: Duration::from_secs(5),
            ..Self::webhook()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::webhook()
    }
}

/// Limits on the webhook's request bodies.
///
/// Each body is charged `1 + DECODE_OVERHEAD` times its buffer against `max_buffered_bytes`:
/// the buffer and what decoding it may take. A request that finds no room waits up to
/// `wait`, then gets 503 with `Retry-After: 1`; with `failurePolicy: Ignore` the API server
/// then admits the Pod unchanged, as for any webhook failure (fail-open, never refused).
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Largest body (413 above).
    pub max_body_bytes: usize,
    /// Budget of all bodies being read and decoded at once.
    pub max_buffered_bytes: usize,
    /// How long a request waits for room in the budget before 503.
    pub wait: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: MAX_BODY_BYTES,
            max_buffered_bytes: MAX_BUFFERED_BODY_BYTES,
            wait: Duration::from_secs(1),
        }
    }
}

/// The webhook's routes (`POST /mutate` and, for registries scoped by namespace,
/// `POST /mutate/SCOPE`), with the default [`BodyLimits`].
pub fn webhook_router(admission: Arc<Admission>) -> Router {
    webhook_router_with(admission, BodyLimits::default())
}

/// The webhook's routes with these body limits; the budget is shared by every connection
/// this router serves.
pub fn webhook_router_with(admission: Arc<Admission>, limits: BodyLimits) -> Router {
    let budget = body::Budget::new(limits.max_buffered_bytes);
    Router::new()
        .route("/mutate", post(mutate))
        .route("/mutate/{scope}", post(mutate_scope))
        .with_state(Arc::new(Webhook {
            admission,
            limits,
            budget,
        }))
}

struct Webhook {
    admission: Arc<Admission>,
    limits: BodyLimits,
    budget: Arc<body::Budget>,
}

/// Bodies at least this large are decoded on the blocking pool, so that a multi-megabyte
/// review does not hold up the connections sharing its worker thread.
const DECODE_ON_BLOCKING_POOL: usize = 256 * 1024;

async fn mutate(State(webhook): State<Arc<Webhook>>, request: Request) -> Response {
    review(webhook, None, request).await
}

async fn mutate_scope(
    State(webhook): State<Arc<Webhook>>,
    Path(scope): Path<String>,
    request: Request,
) -> Response {
    review(webhook, Some(scope), request).await
}

/// 415 for a body that is not JSON, 413/503/408 for one that does not fit the limits, else the
/// review's answer (400 for a body that is not an AdmissionReview).
async fn review(webhook: Arc<Webhook>, scope: Option<String>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
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
    let declared = body.size_hint().exact();
    let received = match body::read(body, declared, &webhook.limits, &webhook.budget).await {
        Ok(read) => read,
        Err(body::BodyError::TooLarge) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body larger than {} bytes\n",
                    webhook.limits.max_body_bytes
                ),
            )
                .into_response();
        }
        Err(body::BodyError::Busy) => {
            tracing::debug!(
                budget = webhook.limits.max_buffered_bytes,
                used = webhook.budget.used(),
                "no room for a request body within the wait; answering 503"
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "too many request bodies in flight; retry\n",
            )
                .into_response();
        }
        Err(body::BodyError::Stalled) => {
            tracing::debug!("a request body stalled while others needed the budget; cut");
            return (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                "request body stalled\n",
            )
                .into_response();
        }
        Err(body::BodyError::Read(e)) => {
            tracing::debug!(error = %e, "reading a request body failed");
            return (StatusCode::BAD_REQUEST, "failed to read the request body\n").into_response();
        }
    };
    let body::Received {
        bytes,
        charge,
        too_costly,
    } = received;
    let bytes_len = bytes.len();
    let admission = webhook.admission.clone();
    let decode = move || match (too_costly, scope) {
        (None, None) => admission.handle(&bytes),
        (None, Some(scope)) => admission.handle_scope(&scope, &bytes),
        (Some(longest), _) => admission.handle_undecoded(&bytes, longest),
    };
    let answer = if bytes_len >= DECODE_ON_BLOCKING_POOL {
        match tokio::task::spawn_blocking(decode).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(error = %e, "decoding a review panicked");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        }
    } else {
        decode()
    };
    drop(charge);
    match answer {
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

/// `router`, answering every HTTP/1.1 request with `Connection: close` once shutdown began.
///
/// kube-apiserver calls a webhook registered by Service over HTTP/1.1 (never h2), keeps the
/// connections alive, and reaches them through the Service's ClusterIP: taking this Pod out of
/// the endpoints moves new connections only, and the old ones keep bringing requests for as
/// long as they stay open. A keep-alive connection the server closes while the client sends a
/// POST on it fails that POST (the client does not retry a non-idempotent request), and with
/// `failurePolicy: Ignore` a Pod is then created without its Secret. So during the shutdown
/// delay each connection is answered once more and then closed by the answer itself, which
/// the client sees before it could reuse it; by the time the listener closes, the client has
/// moved to other replicas. (h2 connections get a GOAWAY from the graceful shutdown instead.)
pub fn closing_connections_on_shutdown(router: Router, health: Arc<Health>) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let health = health.clone();
            async move {
                let http1 = req.version() <= http::Version::HTTP_11;
                let mut response = next.run(req).await;
                if http1 && health.is_shutting_down() {
                    response.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                }
                response
            }
        },
    ))
}

/// Serve `router` over TLS on `listener` until `shutdown` resolves, then drain.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    conn::serve(
        listener,
        conn::Handshake::Tls(TlsAcceptor::from(tls)),
        router,
        limits,
        "webhook",
        shutdown,
    )
    .await;
}

/// Serve the admin router on plain HTTP until `shutdown` resolves, then drain.
pub async fn serve_admin(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    conn::serve(
        listener,
        conn::Handshake::Plain,
        router,
        limits,
        "admin",
        shutdown,
    )
    .await;
    Ok(())
}

/// Bind a TCP listener with a clear error naming the address.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {what} address {addr}: {e}"))
}
