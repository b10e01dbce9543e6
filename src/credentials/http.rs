//! The one HTTP client the credential providers share.
//!
//! hyper-util's pooled client over hyper-rustls with the ring provider, trust roots from
//! the system store (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured by rustls-native-certs).
//! Plain `http://` is supported because the config allows it for loopback stand-ins and the
//! link-local metadata service; which endpoints may use it is decided by
//! [`crate::config::check_endpoint`], checked again in [`super::Provider::new`].
//!
//! Missing trust roots do not fail construction: a process whose registries only use the
//! metadata service or static files must still run in an image without a CA bundle.
//! Instead every `https://` request then fails with a message saying so.
//!
//! Proxies: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (or their lowercase
//! forms) are honoured with curl's rules (hyper-util's matcher), through an HTTP CONNECT
//! tunnel to an `http://` proxy URL (user and password in it become a Basic
//! `Proxy-Authorization`). Loopback and link-local IP addresses are never proxied: no
//! proxy can reach this machine's loopback or the VM's metadata service (169.254.169.254),
//! and `http://` endpoints, which the config allows only for those, are always direct.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::CredentialError;

/// Largest answer body read from a token endpoint; real answers are well under 4 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Timeouts of the shared client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    /// Bound on establishing the TCP connection.
    pub connect_timeout: Duration,
    /// Bound on the whole exchange: connect, TLS, request, answer headers and body.
    pub request_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Where requests go: straight to the endpoint, or through an HTTP proxy.
#[derive(Clone, Default)]
pub struct Proxy(Option<Arc<Matcher>>);

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The matcher holds proxy credentials: show only whether there is a proxy.
        f.debug_tuple("Proxy").field(&self.0.is_some()).finish()
    }
}

/// The proxy variables, in the order they are looked up.
const PROXY_VARS: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

impl Proxy {
    /// No proxy: every request goes straight to its endpoint.
    pub fn none() -> Self {
        Self(None)
    }

    /// What `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (uppercase first, then
    /// lowercase) say; none when they are unset. Logs which proxy is used, never its
    /// credentials, and warns about a value that is not a usable proxy URL.
    pub fn from_env() -> Self {
        let set: Vec<(&str, String)> = PROXY_VARS
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v)))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        if set.iter().all(|(k, _)| k.eq_ignore_ascii_case("no_proxy")) {
            return Self::none();
        }
        for (name, value) in &set {
            if name.eq_ignore_ascii_case("no_proxy") {
                continue;
            }
            match proxy_url(value) {
                Ok(shown) => {
                    tracing::info!(variable = name, proxy = %shown, "credential requests go through this proxy (except NO_PROXY, loopback and link-local IP addresses)")
                }
                Err(why) => tracing::warn!(
                    variable = name,
                    "{why}; credential requests it would apply to fail"
                ),
            }
        }
        Self(Some(Arc::new(Matcher::from_env())))
    }

    /// A proxy from these values, read as the variables of the same names would be.
    pub fn new(https_proxy: &str, http_proxy: &str, no_proxy: &str) -> Self {
        Self(Some(Arc::new(
            Matcher::builder()
                .https(https_proxy.to_string())
                .http(http_proxy.to_string())
                .no(no_proxy.to_string())
                .build(),
        )))
    }

    /// The proxy for `dst`, if any.
    fn route(&self, dst: &Uri) -> Option<Intercept> {
        let matcher = self.0.as_ref()?;
        if dst.scheme_str() != Some("https") {
            return None; // http:// endpoints are loopback or link-local only
        }
        let host = dst.host()?.trim_start_matches('[').trim_end_matches(']');
        let local = match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_link_local(),
            Ok(IpAddr::V6(ip)) => ip.is_loopback() || ip.is_unicast_link_local(),
            Err(_) => false,
        };
        if local {
            return None;
        }
        matcher.intercept(dst)
    }
}

/// A proxy URL as shown in logs (`scheme://host:port`), or why it cannot be used.
fn proxy_url(value: &str) -> Result<String, String> {
    let with_scheme = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|_| "the proxy is not a URL".to_string())?;
    let host = uri.host().ok_or("the proxy URL has no host")?;
    match uri.scheme_str() {
        Some("http") => Ok(format!("http://{host}:{}", uri.port_u16().unwrap_or(80))),
        Some(other) => Err(format!(
            "the proxy URL's scheme is {other}://; only http:// proxies (HTTP CONNECT) are supported"
        )),
        None => Err("the proxy URL has no scheme".into()),
    }
}

/// Connects to the endpoint, directly or through a CONNECT tunnel.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    proxy: Proxy,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(proxy) = self.proxy.route(&dst) else {
            let connecting = tower::Service::call(&mut self.http, dst);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        let http = self.http.clone();
        Box::pin(async move {
            let uri = proxy.uri();
            let shown = format!(
                "{}://{}",
                uri.scheme_str().unwrap_or("http"),
                uri.authority().map(|a| a.as_str()).unwrap_or("")
            );
            if uri.scheme_str() != Some("http") {
                return Err(format!(
                    "the proxy {shown} is not an http:// URL; only HTTP CONNECT proxies are supported"
                )
                .into());
            }
            let mut tunnel = Tunnel::new(uri.clone(), http);
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            tunnel
                .oneshot(dst)
                .await
                .map_err(|e| format!("through the proxy {shown}: {}", error_chain(&e)).into())
        })
    }
}

/// A cheap-to-clone HTTP(S) client with bounded timeouts; build one and share it.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<Connector>, Full<Bytes>>,
    options: HttpOptions,
    roots: usize,
    roots_problem: Option<Arc<str>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("options", &self.options)
            .field("trust_roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// Status and body of an answer.
#[derive(Clone)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body may hold a token.
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl HttpClient {
    /// A client trusting the system roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` when set), going
    /// through the proxy the environment names ([`Proxy::from_env`]).
    ///
    /// Never fails for want of roots: if none load, a warning is logged and `https://`
    /// requests fail with [`CredentialError::TrustRoots`].
    pub fn new(options: HttpOptions) -> Result<Self, CredentialError> {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
        let mut problem = None;
        if added == 0 {
            let why = if loaded.errors.is_empty() {
                "no certificates found".to_string()
            } else {
                loaded
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let msg = format!(
                "no trust roots loaded from the system store (set SSL_CERT_FILE to a CA bundle): {why}"
            );
            tracing::warn!("{msg}");
            problem = Some(msg);
        } else if !loaded.errors.is_empty() {
            tracing::debug!(
                roots = added,
                errors = loaded.errors.len(),
                "some trust root sources could not be read"
            );
        }
        let mut client = Self::with_roots_and_proxy(options, roots, Proxy::from_env())?;
        client.roots_problem = problem.map(Arc::from);
        Ok(client)
    }

    /// A client trusting exactly `roots` (tests; private CAs), with no proxy.
    pub fn with_roots(options: HttpOptions, roots: RootCertStore) -> Result<Self, CredentialError> {
        Self::with_roots_and_proxy(options, roots, Proxy::none())
    }

    /// A client trusting exactly `roots`, going through `proxy`.
    pub fn with_roots_and_proxy(
        options: HttpOptions,
        roots: RootCertStore,
        proxy: Proxy,
    ) -> Result<Self, CredentialError> {
        let count = roots.len();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| CredentialError::HttpClient(format!("building the TLS client config: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(options.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(Connector { http, proxy });
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Self {
            client,
            options,
            roots: count,
            roots_problem: (count == 0)
                .then(|| Arc::from("no trust roots configured for this client")),
        })
    }

    /// The timeouts in force.
    pub fn options(&self) -> HttpOptions {
        self.options
    }

    /// Number of trusted root certificates (0 means every `https://` request fails).
    pub fn trust_roots(&self) -> usize {
        self.roots
    }

    /// Send `request` and read the whole answer, all within the request timeout.
    /// `endpoint` is the URL as configured, for messages.
    pub(crate) async fn send(
        &self,
        endpoint: &str,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer, CredentialError> {
        self.send_with_headers(endpoint, request)
            .await
            .map(|(answer, _)| answer)
    }

    /// [`HttpClient::send`], also returning the answer's headers (the registry probe reads
    /// `WWW-Authenticate` and `Location`).
    pub(crate) async fn send_with_headers(
        &self,
        endpoint: &str,
        request: Request<Full<Bytes>>,
    ) -> Result<(Answer, HeaderMap), CredentialError> {
        if request.uri().scheme_str() == Some("https")
            && let Some(problem) = &self.roots_problem
        {
            return Err(CredentialError::TrustRoots {
                endpoint: endpoint.to_string(),
                problem: problem.to_string(),
            });
        }
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| CredentialError::Request {
                        endpoint: endpoint.to_string(),
                        problem: error_chain(&e),
                    })?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| CredentialError::Request {
                    endpoint: endpoint.to_string(),
                    problem: format!("reading the answer: {}", error_chain(e.as_ref())),
                })?
                .to_bytes();
            Ok((Answer { status, body }, headers))
        };
        tokio::time::timeout(self.options.request_timeout, exchange)
            .await
            .map_err(|_| CredentialError::Timeout {
                endpoint: endpoint.to_string(),
                timeout: self.options.request_timeout,
            })?
    }
}

/// `error: cause: cause`, skipping causes whose text the previous one already contains.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timeouts_are_bounded() {
        let o = HttpOptions::default();
        assert!(o.connect_timeout <= o.request_timeout);
        assert!(o.request_timeout <= Duration::from_secs(30));
    }

    #[tokio::test]
    async fn https_without_trust_roots_fails_clearly_before_connecting() {
        let client =
            HttpClient::with_roots(HttpOptions::default(), RootCertStore::empty()).unwrap();
        assert_eq!(client.trust_roots(), 0);
        let req = Request::get("https://127.0.0.1:1/x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let e = client.send("https://127.0.0.1:1/x", req).await.unwrap_err();
        assert!(e.to_string().contains("no trust roots"), "{e}");
    }

    #[tokio::test]
    async fn connection_refused_names_the_endpoint() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/token");
        let client =
            HttpClient::with_roots(HttpOptions::default(), RootCertStore::empty()).unwrap();
        let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
        let e = client.send(&url, req).await.unwrap_err().to_string();
        assert!(e.starts_with(&format!("requesting {url}: ")), "{e}");
        assert!(e.to_lowercase().contains("refused"), "{e}");
    }
}
