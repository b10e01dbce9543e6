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

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;

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

/// A cheap-to-clone HTTP(S) client with bounded timeouts; build one and share it.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
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
    /// A client trusting the system roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` when set).
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
        let mut client = Self::with_roots(options, roots)?;
        client.roots_problem = problem.map(Arc::from);
        Ok(client)
    }

    /// A client trusting exactly `roots` (tests; private CAs).
    pub fn with_roots(options: HttpOptions, roots: RootCertStore) -> Result<Self, CredentialError> {
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
            .wrap_connector(http);
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
