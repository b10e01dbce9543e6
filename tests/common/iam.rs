//! A Yandex Cloud IAM token service stand-in and authorized-key test helpers.
//!
//! The stand-in checks a JWT the way the real service does: PS256 signature with the
//! registered public key of `kid`, `iss` = that key's service account, `aud` = the
//! service's own URL (the real one's is `https://iam.api.cloud.yandex.net/iam/v1/tokens`;
//! the stand-in's is [`IamStandIn::endpoint`]), `exp - iat <= 3600`, not expired, `iat` not
//! in the future. It answers
//! `{"iamToken","expiresAt"}` with a token tests can change at runtime, counts calls, and
//! can be switched to errors in the real shape (`{"code","message","details"}`), garbage,
//! or hanging. Keys are generated at test time with the `openssl` CLI.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jiff::Timestamp;
use ring::signature::{RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};
use serde_json::{Value, json};

/// The path the stand-in serves, as the real one.
pub const IAM_PATH: &str = "/iam/v1/tokens";

// The one test-key generator, shared with the library's unit tests.
#[path = "../../src/credentials/test_keys.rs"]
mod rsa_keys;

/// Run the `openssl` CLI with `stdin`, returning stdout; panics with stderr on failure.
pub(crate) use rsa_keys::openssl;

fn yc_id(prefix: &str) -> String {
    let mut id = prefix.to_string();
    for _ in 0..17 {
        id.push(fastrand::alphanumeric().to_ascii_lowercase());
    }
    id
}

/// A service-account authorized key, generated fresh.
#[derive(Clone)]
pub struct TestKey {
    /// Key id (`id`, the JWT `kid`).
    pub id: String,
    /// Service account id (`service_account_id`, the JWT `iss`).
    pub service_account_id: String,
    /// Modulus size.
    pub bits: usize,
    /// `-----BEGIN PRIVATE KEY-----` PEM.
    pub private_pkcs8_pem: String,
    /// DER `RSAPublicKey`, what ring verifies with.
    pub public_pkcs1_der: Vec<u8>,
    /// `-----BEGIN PUBLIC KEY-----` PEM, as in the key file's `public_key`.
    pub public_spki_pem: String,
}

impl TestKey {
    /// A fresh RSA key with fresh ids.
    pub fn generate(bits: usize) -> Self {
        let key = rsa_keys::TestKey::rsa(bits);
        Self {
            id: yc_id("aje"),
            service_account_id: yc_id("ajs"),
            bits,
            private_pkcs8_pem: key.private_pkcs8_pem,
            public_pkcs1_der: key.public_pkcs1_der,
            public_spki_pem: key.public_spki_pem,
        }
    }

    /// One key per size shared by the whole test binary (RSA generation is slow).
    pub fn shared(bits: usize) -> &'static Self {
        static K2048: OnceLock<TestKey> = OnceLock::new();
        static K4096: OnceLock<TestKey> = OnceLock::new();
        match bits {
            2048 => K2048.get_or_init(|| Self::generate(2048)),
            4096 => K4096.get_or_init(|| Self::generate(4096)),
            _ => panic!("no shared {bits}-bit key; use TestKey::generate"),
        }
    }

    /// The key as the IAM REST API `Key.Create` answers it (`key` object, `privateKey`).
    pub fn rest_key_json(&self) -> String {
        serde_json::to_string_pretty(&json!({
            "key": {
                "id": self.id,
                "serviceAccountId": self.service_account_id,
                "createdAt": "2025-02-11T09:30:12.071263817Z",
                "description": "",
                "keyAlgorithm": format!("RSA_{}", self.bits),
                "publicKey": self.public_spki_pem,
            },
            "privateKey": self.private_pkcs8_pem,
        }))
        .expect("JSON")
    }

    /// The key file JSON as `yc iam key create` writes it, optionally with the
    /// `PLEASE DO NOT REMOVE THIS LINE!` line before the PEM.
    pub fn key_file_json(&self, prefix: bool) -> String {
        self.key_file_json_with_private_key(&self.private_pkcs8_pem, prefix)
    }

    /// The key file JSON with this key's ids but another private key (a mismatch the
    /// service must reject).
    pub fn key_file_json_with_private_key(&self, private_pem: &str, prefix: bool) -> String {
        let key = rsa_keys::TestKey {
            bits: self.bits,
            private_pkcs8_pem: private_pem.to_string(),
            private_pkcs1_pem: String::new(),
            public_pkcs1_der: self.public_pkcs1_der.clone(),
            public_spki_pem: self.public_spki_pem.clone(),
        };
        rsa_keys::key_file_json(&key, &self.id, &self.service_account_id, prefix)
    }

    /// Write the key file into `dir` as `key.json`; returns its path.
    pub fn write_key_file(&self, dir: &Path, prefix: bool) -> PathBuf {
        let path = dir.join("key.json");
        std::fs::write(&path, self.key_file_json(prefix)).expect("writing the key file");
        path
    }
}

/// What the stand-in answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Verify the JWT and answer a token (401 in the real shape when it is invalid).
    Verify,
    /// Answer this status and body whatever the request.
    Respond {
        /// HTTP status.
        status: u16,
        /// Content type of the body.
        content_type: &'static str,
        /// The body.
        body: String,
    },
    /// Never answer.
    Hang,
}

impl Mode {
    /// An error in the real service's JSON shape.
    pub fn error(status: u16, code: i64, message: &str) -> Self {
        Self::Respond {
            status,
            content_type: "application/json",
            body: json!({ "code": code, "message": message, "details": [] }).to_string(),
        }
    }

    /// 401 UNAUTHENTICATED (gRPC code 16).
    pub fn unauthenticated() -> Self {
        Self::error(401, 16, "The token is invalid")
    }

    /// 429 RESOURCE_EXHAUSTED (gRPC code 8).
    pub fn too_many_requests() -> Self {
        Self::error(429, 8, "Quota limit iam.tokens.create exceeded")
    }

    /// 500 INTERNAL (gRPC code 13).
    pub fn internal() -> Self {
        Self::error(500, 13, "Internal error")
    }

    /// A body that is not JSON, with the given status.
    pub fn garbage(status: u16) -> Self {
        Self::Respond {
            status,
            content_type: "text/html",
            body: "<html><body><h1>502 Bad Gateway</h1>\n<p>nginx</p></body></html>".into(),
        }
    }
}

struct RegisteredKey {
    service_account_id: String,
    public_pkcs1_der: Vec<u8>,
}

struct IamState {
    /// The service's own URL: the audience a JWT must carry.
    url: String,
    keys: HashMap<String, RegisteredKey>,
    token: String,
    lifetime: Duration,
    fractional_seconds: bool,
    mode: Mode,
    calls: usize,
    issued: usize,
    rejections: Vec<String>,
    last_claims: Option<Value>,
}

/// The IAM token service stand-in on `127.0.0.1:<random port>`; stops when dropped.
pub struct IamStandIn {
    addr: SocketAddr,
    tls: bool,
    host: String,
    state: Arc<Mutex<IamState>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for IamStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl IamStandIn {
    /// Start on a free loopback port (plain HTTP), in [`Mode::Verify`], with token
    /// `t1.stand-in-token-1` living 12 hours.
    pub async fn start() -> Self {
        Self::start_with(None, "127.0.0.1").await
    }

    /// The same over HTTPS (h2 and HTTP/1.1 by ALPN) with a certificate for `127.0.0.1`
    /// and `localhost` issued by a fresh test CA; returns the CA to trust.
    pub async fn start_tls() -> (Self, TestCa) {
        let ca = TestCa::generate();
        (
            Self::start_with(Some(ca.server_config()), "127.0.0.1").await,
            ca,
        )
    }

    /// Over HTTPS, known by the name `host` (its certificate names it, and its URL, the
    /// audience it checks, is `https://<host>:<port>/iam/v1/tokens`): for clients that
    /// reach it by a name, e.g. through a proxy. It still listens on 127.0.0.1 only.
    pub async fn start_tls_named(host: &str) -> (Self, TestCa) {
        let ca = TestCa::generate_for(&[host]);
        (Self::start_with(Some(ca.server_config()), host).await, ca)
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>, host: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let addr = listener.local_addr().expect("local address");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(Mutex::new(IamState {
            url: format!("{scheme}://{host}:{}{IAM_PATH}", addr.port()),
            keys: HashMap::new(),
            token: "t1.stand-in-token-1".into(),
            lifetime: Duration::from_secs(12 * 3600),
            fractional_seconds: true,
            mode: Mode::Verify,
            calls: 0,
            issued: 0,
            rejections: Vec::new(),
            last_claims: None,
        }));
        let app = Router::new()
            .route(IAM_PATH, post(handle))
            .with_state(state.clone());
        let tls_on = tls.is_some();
        let server = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
            Some(config) => tokio::spawn(serve_tls(listener, app, config)),
        };
        Self {
            addr,
            tls: tls_on,
            host: host.to_string(),
            state,
            server,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its URL, `http://127.0.0.1:<port>/iam/v1/tokens` (`https://` when started with
    /// TLS, and the name given to [`IamStandIn::start_tls_named`] instead of the address):
    /// the audience its JWTs must carry.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}{IAM_PATH}", self.host, self.addr.port())
    }

    /// Behind a front (a TLS terminator on another address), the URL clients use and so the
    /// audience its JWTs must carry from now on, as the real service checks its public URL.
    pub fn set_public_url(&self, url: &str) {
        self.lock().url = url.to_string();
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Trust `key`'s public half for its key id and service account.
    pub fn register(&self, key: &TestKey) {
        self.lock().keys.insert(
            key.id.clone(),
            RegisteredKey {
                service_account_id: key.service_account_id.clone(),
                public_pkcs1_der: key.public_pkcs1_der.clone(),
            },
        );
    }

    /// The token the next good request gets.
    pub fn set_token(&self, token: &str) {
        self.lock().token = token.to_string();
    }

    /// The lifetime of the tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.lock().lifetime = lifetime;
    }

    /// Whether `expiresAt` carries fractional seconds (the real service's do).
    pub fn set_fractional_seconds(&self, on: bool) {
        self.lock().fractional_seconds = on;
    }

    /// Switch what the stand-in answers.
    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    /// Requests received.
    pub fn calls(&self) -> usize {
        self.lock().calls
    }

    /// Tokens issued (valid JWTs).
    pub fn issued(&self) -> usize {
        self.lock().issued
    }

    /// Why JWTs were refused, in order.
    pub fn rejections(&self) -> Vec<String> {
        self.lock().rejections.clone()
    }

    /// Claims of the last JWT that verified.
    pub fn last_claims(&self) -> Option<Value> {
        self.lock().last_claims.clone()
    }
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

/// A CA and a leaf it signed, made in `dir` with the `openssl` CLI (P-256 keys, valid one day);
/// `ext` is the leaf's extensions (an openssl `-extfile`). Returns the paths of the CA
/// certificate, the leaf's PKCS#8 key and the leaf certificate, all PEM.
pub(crate) fn issue_p256(
    dir: &Path,
    ca_cn: &str,
    leaf_cn: &str,
    ext: Option<&str>,
) -> (String, String, String) {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let (ca_key, ca_crt, key, csr, crt) = (
        p("ca.key"),
        p("ca.crt"),
        p("leaf.key"),
        p("leaf.csr"),
        p("leaf.crt"),
    );
    let (ca_subj, leaf_subj) = (format!("/CN={ca_cn}"), format!("/CN={leaf_cn}"));
    let mut args = vec!["req", "-x509", "-days", "1", "-subj", &ca_subj];
    args.extend(ec);
    args.extend(["-keyout", &ca_key, "-out", &ca_crt]);
    openssl(&args, b"");
    let mut args = vec!["req", "-subj", &leaf_subj];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr]);
    openssl(&args, b"");
    let ext_file = p("leaf.ext");
    let mut args = vec![
        "x509",
        "-req",
        "-days",
        "1",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &crt,
    ];
    if let Some(ext) = ext {
        std::fs::write(&ext_file, ext).expect("writing the extensions file");
        args.extend(["-extfile", &ext_file]);
    }
    openssl(&args, b"");
    (ca_crt, key, crt)
}

/// A throwaway CA and a server certificate it issued for `127.0.0.1` and `localhost`.
pub struct TestCa {
    /// The CA certificate, PEM (what `SSL_CERT_FILE` would point at).
    pub ca_pem: String,
    /// The server certificate, PEM.
    pub server_cert_pem: String,
    /// The server key, PKCS#8 PEM.
    pub server_key_pem: String,
}

impl TestCa {
    /// Generate with the `openssl` CLI (P-256 keys, valid one day).
    pub fn generate() -> Self {
        Self::generate_for(&[])
    }

    /// The same, the server certificate also naming `names` (DNS).
    pub fn generate_for(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra: String = names.iter().map(|n| format!(",DNS:{n}")).collect();
        let ext = format!(
            "subjectAltName=IP:127.0.0.1,DNS:localhost{extra}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        );
        let (ca_crt, key, crt) = issue_p256(
            dir.path(),
            "pullsecret-injector test CA",
            "localhost",
            Some(&ext),
        );
        let read = |path: &str| std::fs::read_to_string(path).expect("reading generated PEM");
        Self {
            ca_pem: read(&ca_crt),
            server_cert_pem: read(&crt),
            server_key_pem: read(&key),
        }
    }

    /// Roots trusting only this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        roots
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("server certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).expect("key PEM");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the defaults")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate and key match");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

fn respond(status: u16, content_type: &'static str, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

async fn handle(
    State(state): State<Arc<Mutex<IamState>>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let mode = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.calls += 1;
        st.mode.clone()
    };
    match mode {
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            respond(504, "text/plain", String::new())
        }
        Mode::Respond {
            status,
            content_type,
            body,
        } => respond(status, content_type, body),
        Mode::Verify => {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            let json_content = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            let checked = if json_content {
                verify(&st.keys, &body, &st.url)
            } else {
                Err((400, 3, "content-type must be application/json".to_string()))
            };
            match checked {
                Ok(claims) => {
                    st.issued += 1;
                    st.last_claims = Some(claims);
                    let expires = Timestamp::now()
                        + jiff::SignedDuration::try_from(st.lifetime).expect("short lifetime");
                    let expires = if st.fractional_seconds {
                        expires.to_string()
                    } else {
                        Timestamp::from_second(expires.as_second())
                            .expect("in range")
                            .to_string()
                    };
                    respond(
                        200,
                        "application/json",
                        json!({ "iamToken": st.token, "expiresAt": expires }).to_string(),
                    )
                }
                Err((status, code, message)) => {
                    st.rejections.push(message.clone());
                    respond(
                        status,
                        "application/json",
                        json!({ "code": code, "message": message, "details": [] }).to_string(),
                    )
                }
            }
        }
    }
}

type Refusal = (u16, i64, String);

fn unauth(message: impl Into<String>) -> Refusal {
    (401, 16, message.into())
}

fn verify(
    keys: &HashMap<String, RegisteredKey>,
    body: &[u8],
    own_url: &str,
) -> Result<Value, Refusal> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| (400, 3, format!("Request body is not JSON: {e}")))?;
    let jwt =
        request
            .get("jwt")
            .and_then(Value::as_str)
            .ok_or((400, 3, "Missing jwt".to_string()))?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, s] = parts[..] else {
        return Err(unauth("JWT must have three parts"));
    };
    let decode = |part: &str, what: &str| -> Result<Vec<u8>, Refusal> {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| unauth(format!("JWT {what} is not base64url without padding")))
    };
    let header: Value = serde_json::from_slice(&decode(h, "header")?)
        .map_err(|_| unauth("JWT header is not JSON"))?;
    let claims: Value = serde_json::from_slice(&decode(c, "claims")?)
        .map_err(|_| unauth("JWT claims are not JSON"))?;
    let signature = decode(s, "signature")?;
    if header["typ"] != "JWT" {
        return Err(unauth("JWT typ must be JWT"));
    }
    if header["alg"] != "PS256" {
        return Err(unauth(format!("Unsupported JWT alg {}", header["alg"])));
    }
    let kid = header["kid"]
        .as_str()
        .ok_or_else(|| unauth("JWT has no kid"))?;
    let key = keys
        .get(kid)
        .ok_or_else(|| unauth(format!("Key {kid} not found")))?;
    UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, &key.public_pkcs1_der)
        .verify(format!("{h}.{c}").as_bytes(), &signature)
        .map_err(|_| unauth("JWT signature validation failed"))?;
    if claims["iss"] != key.service_account_id.as_str() {
        return Err(unauth("JWT iss does not match the key's service account"));
    }
    // The real service takes only its own URL as the audience.
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == own_url,
        Value::Array(a) => a.iter().any(|v| v == own_url),
        _ => false,
    };
    if !aud_ok {
        return Err(unauth(format!("Invalid JWT aud {}", claims["aud"])));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err(unauth("JWT iat and exp must be numbers"));
    };
    let now = Timestamp::now().as_second();
    if exp - iat > 3600 {
        return Err(unauth("JWT lifetime exceeds 1 hour"));
    }
    if exp <= now {
        return Err(unauth("JWT has expired"));
    }
    if iat > now + 5 {
        return Err(unauth("JWT iat is in the future"));
    }
    Ok(claims)
}
