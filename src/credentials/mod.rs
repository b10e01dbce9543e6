//! Credential providers: where each registry's docker login comes from.
//!
//! A [`Provider`] is built once per registry from its [`CredentialSource`] and asked for a
//! fresh [`Credential`] by the sync task, once per refresh, whatever the number of
//! namespaces. Files are re-read on every fetch because mounted Secrets rotate under a
//! running process (kubelet swaps a symlink); each credential carries a keyed
//! [`Fingerprint`] of the files it was built from, so the sync task can compare it with
//! [`Provider::files_fingerprint`] on a timer and refresh early when a file changed.
//!
//! Secret values live in [`Secret`]/[`SecretBytes`], whose `Debug` and `Display` print
//! `[redacted]`; error messages name files, endpoints, fields and HTTP statuses, never a
//! value read from a credential file or a token answer.

mod http;
pub mod probe;
mod secret;
mod static_;
mod yandex_key;
mod yandex_metadata;
mod yandex_wif;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use ::http::{StatusCode, Uri};
use jiff::Timestamp;
use ring::hmac;
use tokio::io::AsyncReadExt;

use crate::config::{CredentialSource, check_endpoint};
use crate::dockerconfig;
use crate::registry::HostPattern;

pub use self::http::{HttpClient, HttpOptions, MAX_BODY_BYTES, Proxy};
pub use self::secret::{Secret, SecretBytes};
pub use self::yandex_key::{IAM_AUDIENCE, JWT_LIFETIME};
pub use self::yandex_wif::{GRANT_TYPE, REQUESTED_TOKEN_TYPE, SUBJECT_TOKEN_TYPE};

/// Largest credential file read (key files and passwords are a few KiB at most).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Username of an IAM-token login (Container Registry and Cloud Registry).
pub const IAM_USERNAME: &str = "iam";
/// Username of a login whose password is a whole authorized key file (Container Registry).
pub const JSON_KEY_USERNAME: &str = "json_key";

/// Why a credential could not be obtained. Messages name the file or endpoint and the
/// problem, never a secret value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A credential file could not be read.
    #[error("reading {what} {path}: {source}")]
    ReadFile {
        /// Which file, e.g. `authorized key file`.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A credential file was read but its content is unusable.
    #[error("{what} {path}: {problem}")]
    BadFile {
        /// Which file, e.g. `authorized key file`.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The endpoint is not an acceptable URL.
    #[error("invalid endpoint: {problem}")]
    InvalidEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with it (quotes the endpoint).
        problem: String,
    },
    /// The shared HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    HttpClient(String),
    /// No HTTPS request is possible for want of trust roots.
    #[error("requesting {endpoint}: {problem}")]
    TrustRoots {
        /// The endpoint.
        endpoint: String,
        /// What is missing.
        problem: String,
    },
    /// The request failed before an answer arrived (DNS, connect, TLS, reset).
    #[error("requesting {endpoint}: {problem}")]
    Request {
        /// The endpoint.
        endpoint: String,
        /// The transport error chain.
        problem: String,
    },
    /// No complete answer within the request timeout.
    #[error("requesting {endpoint}: no complete answer within {}", humantime::format_duration(*.timeout))]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The bound that was exceeded.
        timeout: Duration,
    },
    /// The service answered with a non-2xx status.
    #[error("{endpoint} answered HTTP {status}: {message}{}", code.map(|c| format!(" (code {c})")).unwrap_or_default())]
    Rejected {
        /// The endpoint.
        endpoint: String,
        /// The HTTP status.
        status: StatusCode,
        /// The service's error `code` (gRPC code for Yandex Cloud), when it sent JSON.
        code: Option<i64>,
        /// The service's error `message`, or a short sanitized snippet of the body.
        message: String,
    },
    /// A 2xx answer that is not the expected token document.
    #[error("{endpoint} answered HTTP {status} with an unusable body: {problem}")]
    BadAnswer {
        /// The endpoint.
        endpoint: String,
        /// The HTTP status.
        status: StatusCode,
        /// What is wrong (never quotes the body).
        problem: String,
    },
    /// The JWT could not be signed.
    #[error("signing the JWT with the key from {path}: {problem}")]
    Sign {
        /// The key file.
        path: PathBuf,
        /// What failed.
        problem: String,
    },
    /// A username kubelet could not use.
    #[error("invalid username {username:?}: {problem}")]
    InvalidUsername {
        /// The username.
        username: String,
        /// What is wrong.
        problem: &'static str,
    },
}

impl CredentialError {
    /// Whether trying again later may help without anyone changing a file or the config
    /// (network trouble, timeouts, HTTP 429 and 5xx). Permanent errors still get retried
    /// with backoff by the sync task; this only picks the log level and wording.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Request { .. } | Self::Timeout { .. } => true,
            Self::Rejected { status, .. } | Self::BadAnswer { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            _ => false,
        }
    }
}

/// What a credential writes into the pull Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialData {
    /// One login written for every host key of the registry.
    Login {
        /// Username (`iam`, `json_key` or the configured one); never contains `:`.
        username: String,
        /// Password or token.
        password: Secret,
    },
    /// A whole `.dockerconfigjson`, copied as is (it parsed as one with `auths`).
    DockerConfig(SecretBytes),
}

/// A credential obtained by a [`Provider`]. `Debug` never shows the secret part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    data: CredentialData,
    issued_at: Timestamp,
    expires_at: Option<Timestamp>,
    fingerprint: Fingerprint,
}

impl Credential {
    /// A username/password login. The username must be non-empty and free of `:`
    /// (kubelet splits `auth` at the first one).
    pub fn login(
        username: impl Into<String>,
        password: Secret,
        issued_at: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Result<Self, CredentialError> {
        let username = username.into();
        let problem = if username.is_empty() {
            Some("must not be empty")
        } else if username.contains(':') {
            Some("must not contain ':'")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(CredentialError::InvalidUsername { username, problem });
        }
        Ok(Self {
            data: CredentialData::Login { username, password },
            issued_at,
            expires_at,
            fingerprint: Fingerprint::of_files([]),
        })
    }

    /// A whole `.dockerconfigjson` used as is; it must parse as one with `auths`.
    pub fn docker_config(
        bytes: Vec<u8>,
        issued_at: Timestamp,
    ) -> Result<Self, dockerconfig::DockerConfigError> {
        dockerconfig::parse(&bytes)?;
        Ok(Self {
            data: CredentialData::DockerConfig(SecretBytes::new(bytes)),
            issued_at,
            expires_at: None,
            fingerprint: Fingerprint::of_files([]),
        })
    }

    /// The same credential, recording the fingerprint of the files it came from.
    pub fn with_fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = fingerprint;
        self
    }

    /// What goes into the Secret.
    pub fn data(&self) -> &CredentialData {
        &self.data
    }

    /// The login's username; `None` for a copied docker config.
    pub fn username(&self) -> Option<&str> {
        match &self.data {
            CredentialData::Login { username, .. } => Some(username),
            CredentialData::DockerConfig(_) => None,
        }
    }

    /// The login's password; `None` for a copied docker config.
    pub fn password(&self) -> Option<&Secret> {
        match &self.data {
            CredentialData::Login { password, .. } => Some(password),
            CredentialData::DockerConfig(_) => None,
        }
    }

    /// When it was obtained (when the request was sent, for tokens).
    pub fn issued_at(&self) -> Timestamp {
        self.issued_at
    }

    /// When it stops working; `None` for static credentials.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.expires_at
    }

    /// Keyed fingerprint of the files it was built from (see [`Provider::files_fingerprint`]).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The `.dockerconfigjson` data of the registry's pull Secret, for the given `auths`
    /// keys (the registry's host patterns). Deterministic: equal inputs give equal bytes.
    /// A copied docker config ignores `hosts` and is returned byte for byte.
    pub fn secret_data<S: AsRef<str>>(&self, hosts: &[S]) -> SecretBytes {
        match &self.data {
            CredentialData::Login { username, password } => {
                SecretBytes::new(dockerconfig::build(hosts, username, password.expose()))
            }
            CredentialData::DockerConfig(bytes) => bytes.clone(),
        }
    }
}

/// A keyed digest (HMAC-SHA-256 under a per-process random key) of a set of files' paths
/// and contents. Equal within one process when the files are unchanged; useless outside
/// it, so printing one cannot help anyone guess a password file's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl Fingerprint {
    /// Digest of `(path, content or read error)` pairs, in order. A missing file digests
    /// differently from an empty one.
    pub fn of_files<'a>(
        files: impl IntoIterator<Item = (&'a Path, Result<&'a [u8], io::ErrorKind>)>,
    ) -> Self {
        let mut ctx = hmac::Context::with_key(fingerprint_key());
        for (path, content) in files {
            let path = path.as_os_str().as_encoded_bytes();
            ctx.update(&(path.len() as u64).to_be_bytes());
            ctx.update(path);
            match content {
                Ok(bytes) => {
                    ctx.update(&[1]);
                    ctx.update(&(bytes.len() as u64).to_be_bytes());
                    ctx.update(bytes);
                }
                Err(kind) => {
                    ctx.update(&[0]);
                    ctx.update(kind.to_string().as_bytes());
                }
            }
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Self(out)
    }
}

fn fingerprint_key() -> &'static hmac::Key {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut bytes = [0u8; 32];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            // Only change detection depends on it; any per-process key will do.
            for chunk in bytes.chunks_mut(8) {
                chunk.copy_from_slice(&fastrand::u64(..).to_ne_bytes());
            }
        }
        hmac::Key::new(hmac::HMAC_SHA256, &bytes)
    })
}

/// Fetches one registry's credential from its configured source. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Provider {
    source: CredentialSource,
    http: HttpClient,
    /// The registry's hosts, which a `dockerConfig` file's `auths` keys must be (when given).
    hosts: Option<Vec<HostPattern>>,
}

impl Provider {
    /// A provider for `source`, sending its requests (if any) through `http`.
    /// Fails only on an endpoint [`check_endpoint`] refuses; files are read by `fetch`.
    pub fn new(source: &CredentialSource, http: &HttpClient) -> Result<Self, CredentialError> {
        match source {
            CredentialSource::YandexWorkloadIdentity(w) => drop(endpoint_uri(&w.endpoint, false)?),
            CredentialSource::YandexAuthorizedKey(k) => drop(endpoint_uri(&k.endpoint, false)?),
            CredentialSource::YandexMetadata(m) => drop(endpoint_uri(&m.endpoint, true)?),
            CredentialSource::YandexJsonKey(_)
            | CredentialSource::Basic(_)
            | CredentialSource::DockerConfig(_) => {}
        }
        Ok(Self {
            source: source.clone(),
            http: http.clone(),
            hosts: None,
        })
    }

    /// The same provider for a registry with these host patterns. A `dockerConfig` file's
    /// `auths` keys must then be those hosts as kubelet reads them
    /// ([`crate::registry::check_auths_keys`]), or reading it fails; other sources write the
    /// hosts as the keys and are unaffected.
    pub fn for_hosts(mut self, registry_hosts: &[HostPattern]) -> Self {
        self.hosts = Some(registry_hosts.to_vec());
        self
    }

    /// The HTTP client its requests go through (shared with the registry probe).
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// The config key of the source (`yandexAuthorizedKey`, `basic`...).
    pub fn kind(&self) -> &'static str {
        self.source.kind()
    }

    /// The files `fetch` reads, to watch for rotation. Not the workload identity token:
    /// kubelet rotates it long before it expires, and the IAM token it was exchanged for
    /// stays valid, so its rotation is no reason to refresh (it is read for every exchange).
    pub fn files(&self) -> Vec<PathBuf> {
        match &self.source {
            CredentialSource::YandexWorkloadIdentity(_) => Vec::new(),
            CredentialSource::YandexAuthorizedKey(k) => vec![k.file.clone()],
            CredentialSource::YandexJsonKey(f) | CredentialSource::DockerConfig(f) => {
                vec![f.file.clone()]
            }
            CredentialSource::Basic(b) => vec![b.password_file.clone()],
            CredentialSource::YandexMetadata(_) => Vec::new(),
        }
    }

    /// Read and parse the source's files as [`Provider::fetch`] would, without any network
    /// I/O: a missing or unreadable file, a key file that is not JSON or holds no usable RSA
    /// key, a ServiceAccount token file that holds no unexpired JWT, an empty password, a
    /// docker config without `auths`. `run` calls it at start to
    /// report a broken file at once (it keeps serving the webhook), and `check` through
    /// `fetch`. Sources without files (`yandexMetadata`) always pass.
    pub async fn validate(&self) -> Result<(), CredentialError> {
        match &self.source {
            CredentialSource::YandexWorkloadIdentity(w) => {
                yandex_wif::validate(&w.token_file).await
            }
            CredentialSource::YandexAuthorizedKey(k) => yandex_key::validate(&k.file).await,
            CredentialSource::YandexMetadata(_) => Ok(()),
            CredentialSource::YandexJsonKey(_)
            | CredentialSource::Basic(_)
            | CredentialSource::DockerConfig(_) => self.fetch().await.map(drop),
        }
    }

    /// Fingerprint of the current content of [`Provider::files`]. When it differs from
    /// the last credential's [`Credential::fingerprint`], a file changed: fetch again.
    pub async fn files_fingerprint(&self) -> Fingerprint {
        let files = self.files();
        let mut contents = Vec::with_capacity(files.len());
        for f in &files {
            contents.push(read_limited(f).await.map_err(|e| e.kind()));
        }
        Fingerprint::of_files(
            files
                .iter()
                .zip(&contents)
                .map(|(f, c)| (f.as_path(), c.as_deref().map_err(|k| *k))),
        )
    }

    /// Obtain a fresh credential: mint or fetch a token, or re-read the static files.
    /// Network requests are bounded by the client's [`HttpOptions`].
    pub async fn fetch(&self) -> Result<Credential, CredentialError> {
        match &self.source {
            CredentialSource::YandexWorkloadIdentity(w) => {
                let uri = endpoint_uri(&w.endpoint, false)?;
                yandex_wif::fetch(&self.http, w, &uri).await
            }
            CredentialSource::YandexAuthorizedKey(k) => {
                let uri = endpoint_uri(&k.endpoint, false)?;
                yandex_key::fetch(&self.http, &k.file, &k.endpoint, &uri).await
            }
            CredentialSource::YandexMetadata(m) => {
                let uri = endpoint_uri(&m.endpoint, true)?;
                yandex_metadata::fetch(&self.http, &m.endpoint, &uri).await
            }
            CredentialSource::YandexJsonKey(f) => static_::json_key(&f.file).await,
            CredentialSource::Basic(b) => static_::basic(&b.username, &b.password_file).await,
            CredentialSource::DockerConfig(f) => {
                static_::docker_config(&f.file, self.hosts.as_deref()).await
            }
        }
    }
}

fn endpoint_uri(endpoint: &str, allow_link_local_http: bool) -> Result<Uri, CredentialError> {
    let invalid = |problem: String| CredentialError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        problem,
    };
    check_endpoint(endpoint, allow_link_local_http).map_err(invalid)?;
    endpoint
        .parse::<Uri>()
        .map_err(|e| invalid(format!("{endpoint:?} is not a URL: {e}")))
}

async fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let file = tokio::fs::File::open(path).await?;
    let mut buf = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf).await?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    Ok(buf)
}

/// Read a credential file, with errors naming it as `what`.
async fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, CredentialError> {
    read_limited(path)
        .await
        .map_err(|source| CredentialError::ReadFile {
            what,
            path: path.to_path_buf(),
            source,
        })
}

fn bad_file(what: &'static str, path: &Path, problem: impl Into<String>) -> CredentialError {
    CredentialError::BadFile {
        what,
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn fingerprint_of(path: &Path, content: &[u8]) -> Fingerprint {
    Fingerprint::of_files([(path, Ok(content))])
}

fn user_agent() -> &'static str {
    concat!("pullsecret-injector/", env!("CARGO_PKG_VERSION"))
}

/// A POST of `body` (of `content_type`) to a token endpoint, asking for JSON.
fn token_post(
    endpoint: &str,
    uri: &Uri,
    content_type: &'static str,
    body: String,
) -> Result<::http::Request<http_body_util::Full<bytes::Bytes>>, CredentialError> {
    ::http::Request::post(uri.clone())
        .header(::http::header::CONTENT_TYPE, content_type)
        .header(::http::header::ACCEPT, "application/json")
        .header(::http::header::USER_AGENT, user_agent())
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| CredentialError::Request {
            endpoint: endpoint.to_string(),
            problem: format!("building the request: {e}"),
        })
}

/// A token service's answer: 2xx with a JSON object carrying a non-empty string `field`.
/// Returns the parsed JSON (for the expiry fields, which differ per service) and the token;
/// a non-2xx answer is the service's own error ([`rejection`]).
fn json_token_answer(
    endpoint: &str,
    answer: &http::Answer,
    field: &str,
) -> Result<(serde_json::Value, Secret), CredentialError> {
    if !answer.status.is_success() {
        return Err(rejection(endpoint, answer));
    }
    let bad = |problem: String| bad_answer(endpoint, answer, problem);
    let value: serde_json::Value = serde_json::from_slice(&answer.body).map_err(|e| {
        bad(format!(
            "not JSON ({}, {} bytes)",
            json_error_kind(&e),
            answer.body.len()
        ))
    })?;
    let token = match value.get(field) {
        Some(serde_json::Value::String(t)) if !t.is_empty() => Secret::new(t.clone()),
        Some(serde_json::Value::String(_)) => {
            return Err(bad(format!("field {field:?} is empty")));
        }
        Some(_) => return Err(bad(format!("field {field:?} is not a string"))),
        None => return Err(bad(format!("missing field {field:?}"))),
    };
    Ok((value, token))
}

/// A 2xx answer that does not say what it should.
fn bad_answer(endpoint: &str, answer: &http::Answer, problem: String) -> CredentialError {
    CredentialError::BadAnswer {
        endpoint: endpoint.to_string(),
        status: answer.status,
        problem,
    }
}

/// The error for a non-2xx answer: the service's JSON `code` and `message` (Yandex Cloud
/// and gRPC-gateway shape), or OAuth's `error` and `error_description`, else a short
/// one-line snippet of the body.
fn rejection(endpoint: &str, answer: &http::Answer) -> CredentialError {
    let json: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
    let text = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get(name))
            .and_then(serde_json::Value::as_str)
    };
    let (code, message) = match (text("message"), text("error")) {
        (Some(m), _) => (
            json.as_ref()
                .and_then(|v| v.get("code"))
                .and_then(serde_json::Value::as_i64),
            one_line(m, 300),
        ),
        // OAuth 2.0 (RFC 6749 section 5.2, RFC 8693): {"error","error_description"}.
        (None, Some(error)) => {
            let text = match text("error_description") {
                Some(d) if !d.trim().is_empty() => format!("{error}: {d}"),
                _ => error.to_string(),
            };
            (None, one_line(&text, 300))
        }
        (None, None) => {
            let text = one_line(&String::from_utf8_lossy(&answer.body), 200);
            if text.is_empty() {
                (None, "empty body".to_string())
            } else {
                (None, format!("body: {text}"))
            }
        }
    };
    CredentialError::Rejected {
        endpoint: endpoint.to_string(),
        status: answer.status,
        code,
        message,
    }
}

/// Where a JSON syntax error is, without serde's text (which may quote input).
fn json_error_kind(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => "truncated".to_string(),
        _ => format!("error at line {} column {}", e.line(), e.column()),
    }
}

/// Replace control characters, collapse whitespace and cut to `max` characters, so that a
/// service's text can go into a one-line message.
fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = true;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        if count == max {
            out.push('…');
            return out.trim_end().to_string();
        }
        last_space = c == ' ';
        out.push(c);
        count += 1;
    }
    out.trim_end().to_string()
}

#[cfg(test)]
pub(crate) mod test_keys;

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn login_renders_the_same_login_for_every_host() {
        let c = Credential::login(
            "iam",
            Secret::new("t1.token"),
            ts("2025-01-01T00:00:00Z"),
            Some(ts("2025-01-01T12:00:00Z")),
        )
        .unwrap();
        let data = c.secret_data(&["cr.yandex", "registry.yandexcloud.net"]);
        let parsed = dockerconfig::parse(data.expose()).unwrap();
        assert_eq!(parsed.auths.len(), 2);
        for e in parsed.auths.values() {
            assert_eq!(
                (e.username.as_str(), e.password.as_str()),
                ("iam", "t1.token")
            );
        }
        assert_eq!(c.username(), Some("iam"));
        assert_eq!(c.password().map(Secret::expose), Some("t1.token"));
    }

    #[test]
    fn docker_config_is_copied_byte_for_byte_and_must_have_auths() {
        let bytes = b"{ \"auths\": {\"x.io\": {\"auth\": \"YTpi\"}} }\n".to_vec();
        let c = Credential::docker_config(bytes.clone(), Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(c.secret_data(&["ignored"]).expose(), bytes.as_slice());
        assert_eq!(c.expires_at(), None);
        assert_eq!(c.username(), None);
        assert!(Credential::docker_config(b"{}".to_vec(), Timestamp::UNIX_EPOCH).is_err());
    }

    #[test]
    fn usernames_kubelet_would_misread_are_refused() {
        for bad in ["", "a:b"] {
            let e = Credential::login(bad, Secret::new("p"), Timestamp::UNIX_EPOCH, None)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("invalid username"), "{e}");
            assert!(!e.contains("\"p\""), "{e}");
        }
    }

    #[test]
    fn debug_of_credentials_never_shows_the_secret() {
        let c = Credential::login(
            "iam",
            Secret::new("t1.supersecret"),
            Timestamp::UNIX_EPOCH,
            None,
        )
        .unwrap();
        let d = format!("{c:?} {c:#?}");
        assert!(!d.contains("supersecret"), "{d}");
        assert!(d.contains("iam"), "{d}");
        let c = Credential::docker_config(
            br#"{"auths":{"x.io":{"username":"u","password":"supersecret"}}}"#.to_vec(),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        let d = format!("{c:?} {c:#?} {:?}", c.secret_data(&["x"]));
        assert!(!d.contains("supersecret"), "{d}");
    }

    #[test]
    fn fingerprint_changes_with_content_path_and_presence() {
        let p = Path::new("/a");
        let a = Fingerprint::of_files([(p, Ok(b"x".as_slice()))]);
        assert_eq!(a, Fingerprint::of_files([(p, Ok(b"x".as_slice()))]));
        assert_ne!(a, Fingerprint::of_files([(p, Ok(b"y".as_slice()))]));
        assert_ne!(
            a,
            Fingerprint::of_files([(Path::new("/b"), Ok(b"x".as_slice()))])
        );
        assert_ne!(
            Fingerprint::of_files([(p, Ok(b"".as_slice()))]),
            Fingerprint::of_files([(p, Err(io::ErrorKind::NotFound))])
        );
        // Length prefixes keep ("ab","c") apart from ("a","bc").
        assert_ne!(
            Fingerprint::of_files([(Path::new("ab"), Ok(b"c".as_slice()))]),
            Fingerprint::of_files([(Path::new("a"), Ok(b"bc".as_slice()))])
        );
        assert!(format!("{a:?}").starts_with("Fingerprint("));
    }

    #[test]
    fn one_line_sanitizes_and_truncates() {
        assert_eq!(one_line("a\n\tb\r\n  c\u{7}", 100), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("", 3), "");
        assert_eq!(one_line("  <html>\n</html>  ", 100), "<html> </html>");
    }

    #[test]
    fn transient_errors_are_network_429_and_5xx() {
        let rejected = |s: u16| CredentialError::Rejected {
            endpoint: "e".into(),
            status: StatusCode::from_u16(s).unwrap(),
            code: None,
            message: String::new(),
        };
        assert!(rejected(429).is_transient());
        assert!(rejected(503).is_transient());
        assert!(!rejected(401).is_transient());
        assert!(
            CredentialError::Timeout {
                endpoint: "e".into(),
                timeout: Duration::from_secs(1)
            }
            .is_transient()
        );
        assert!(
            !CredentialError::BadFile {
                what: "f",
                path: "/p".into(),
                problem: String::new()
            }
            .is_transient()
        );
    }
}
