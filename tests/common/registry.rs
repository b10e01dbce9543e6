//! Real registries for the probe tests: Debian's `docker-registry` (distribution 2.8) on
//! 127.0.0.1 with TLS from a test CA, with `htpasswd` auth or with `token` auth, and for the
//! latter a token issuer stand-in.
//!
//! With `auth: token` the registry answers `/v2/` with a `Bearer realm=...,service=...`
//! challenge and accepts only JWTs that it verifies itself: signature by a key whose
//! certificate chains (JWT header `x5c`) to its `rootcertbundle`, `iss` its configured
//! issuer, `aud` its service, not expired. The stand-in plays the token server: it checks
//! the Basic login against the accounts it accepts (changeable at runtime, like revoking a
//! robot account) and the requested `service`, and signs ES256 tokens with a key whose
//! certificate the test CA issued. It can also sign with a key the registry does not
//! trust, to show that the registry, not the stand-in, has the last word.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::json;

use super::iam::{TestCa, issue_p256};

/// The `service` of the token registry (the JWT `aud`).
pub const SERVICE: &str = "pullsecret-injector-test-registry";
/// The `issuer` the token registry trusts (the JWT `iss`).
pub const ISSUER: &str = "pullsecret-injector-test-issuer";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// `docker-registry`, or a failure that says where it comes from.
fn registry_binary() -> &'static str {
    let ok = Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "docker-registry not found: Debian package docker-registry (scripts/node.sh install; run scripts/test.sh)"
    );
    "docker-registry"
}

/// A `docker-registry` process on 127.0.0.1; stopped (killed) on drop.
pub struct LocalRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The CA that issued its certificate (PEM file): what `SSL_CERT_FILE` points at.
    pub ca_file: PathBuf,
    log: PathBuf,
    /// For htpasswd registries: the file it re-reads when its mtime changes.
    pub htpasswd: Option<PathBuf>,
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalRegistry {
    /// A registry with `htpasswd` auth accepting exactly `users`.
    pub fn htpasswd(dir: &Path, ca: &TestCa, users: &[(&str, &str)]) -> Self {
        let file = dir.join("htpasswd");
        write_htpasswd(&file, users);
        let auth = format!(
            "  htpasswd:\n    realm: pullsecret-injector-test\n    path: {}\n",
            file.display()
        );
        let mut r = Self::start(dir, ca, &auth);
        r.htpasswd = Some(file);
        r
    }

    /// A registry with `token` auth trusting `issuer`.
    pub fn token(dir: &Path, ca: &TestCa, issuer: &TokenIssuer) -> Self {
        let bundle = dir.join("token-roots.pem");
        std::fs::write(&bundle, &issuer.trusted_ca_pem).unwrap();
        let auth = format!(
            "  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            issuer.realm(),
            bundle.display()
        );
        Self::start(dir, ca, &auth)
    }

    fn start(dir: &Path, ca: &TestCa, auth_yaml: &str) -> Self {
        let bin = registry_binary();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_file = write("ca.crt", &ca.ca_pem);
        let cert = write("tls.crt", &ca.server_cert_pem);
        let key = write("tls.key", &ca.server_key_pem);
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = dir.join("docker-registry.log");
        // The port is picked, released and bound again by the registry: retry on a race.
        for _ in 0..3 {
            let port = free_port();
            let config = write(
                "config.yml",
                &format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: {}\n  tls:\n    certificate: {}\n    key: {}\nauth:\n{auth_yaml}",
                    data.display(),
                    fastrand::u64(..),
                    cert.display(),
                    key.display()
                ),
            );
            let child = Command::new(bin)
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("starting docker-registry");
            let mut r = Self {
                child,
                host: format!("127.0.0.1:{port}"),
                ca_file: ca_file.clone(),
                log: log.clone(),
                htpasswd: None,
            };
            if r.wait_listening(Duration::from_secs(20)) {
                return r;
            }
        }
        panic!(
            "docker-registry did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Poll `GET /v2/` (anonymous) until the registry challenges; false if it exited.
    fn wait_listening(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if self.status(None) == 401 {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry on {} did not answer /v2/ within {timeout:?}:\n{}",
                self.host,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registry's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// HTTP status of `GET /v2/`, with a Basic login if given.
    pub fn status(&self, login: Option<(&str, &str)>) -> u16 {
        v2_status(&self.host, &self.ca_file, login)
    }

    /// htpasswd registries: accept exactly `users` from now on (the registry reloads the
    /// file when its mtime changes); waits until it does.
    pub fn accept_only(&self, users: &[(&str, &str)]) {
        let file = self.htpasswd.as_ref().expect("an htpasswd registry");
        write_htpasswd(file, users);
        for (u, p) in users {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.status(Some((u, p))) != 200 {
                assert!(
                    Instant::now() < deadline,
                    "the registry does not accept {u} after the htpasswd change"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Write an htpasswd file (bcrypt) atomically, with an mtime later than the old one's.
fn write_htpasswd(file: &Path, users: &[(&str, &str)]) {
    let mut text = String::new();
    for (user, password) in users {
        let out = Command::new("htpasswd")
            .args(["-nbB", "-C", "4", user, password])
            .output()
            .expect("running htpasswd (Debian package apache2-utils)");
        assert!(out.status.success(), "htpasswd failed");
        text.push_str(String::from_utf8_lossy(&out.stdout).trim_end());
        text.push('\n');
    }
    let before = std::fs::metadata(file)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(std::time::SystemTime::now().max(before + Duration::from_millis(1)))
        .unwrap();
    drop(f);
    std::fs::rename(&tmp, file).unwrap();
}

/// An ES256 signing key and its certificate chain (leaf first), PEM from openssl.
struct SigningKey {
    pair: EcdsaKeyPair,
    x5c: Vec<String>,
}

impl SigningKey {
    /// A CA and a leaf it signed; returns the key and the CA's PEM.
    fn generate() -> (Self, String) {
        let dir = tempfile::tempdir().unwrap();
        let (ca_crt, key, crt) = issue_p256(dir.path(), "token issuer CA", "token signer", None);
        let pem = |path: &str| std::fs::read(path).unwrap();
        let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(&pem(&key)).expect("PKCS#8 key");
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("a P-256 key");
        let leaf = CertificateDer::from_pem_slice(&pem(&crt)).expect("certificate");
        let key = Self {
            pair,
            x5c: vec![STANDARD.encode(leaf.as_ref())],
        };
        (key, String::from_utf8(pem(&ca_crt)).unwrap())
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": self.x5c});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .expect("signing");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

struct IssuerState {
    accounts: Vec<(String, String)>,
    sign_untrusted: bool,
    issued: usize,
}

/// The token server stand-in (plain HTTP on 127.0.0.1, which the injector accepts for a
/// loopback realm).
pub struct TokenIssuer {
    addr: SocketAddr,
    state: Arc<Mutex<IssuerState>>,
    /// PEM of the CA the registry must trust (`rootcertbundle`).
    pub trusted_ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Keys {
    trusted: SigningKey,
    untrusted: SigningKey,
}

impl TokenIssuer {
    /// Start, accepting `accounts` (username, password).
    pub async fn start(accounts: &[(&str, &str)]) -> Self {
        let (trusted, trusted_ca_pem) = SigningKey::generate();
        let (untrusted, _) = SigningKey::generate();
        let keys = Arc::new(Keys { trusted, untrusted });
        let state = Arc::new(Mutex::new(IssuerState {
            accounts: Vec::new(),
            sign_untrusted: false,
            issued: 0,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/token", get(token))
            .with_state((state.clone(), keys));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let issuer = Self {
            addr,
            state,
            trusted_ca_pem,
            task,
        };
        issuer.accept_only(accounts);
        issuer
    }

    /// The realm URL.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Accept exactly these logins from now on.
    pub fn accept_only(&self, accounts: &[(&str, &str)]) {
        self.state.lock().unwrap().accounts = accounts
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
    }

    /// Sign with a key the registry does not trust (its tokens are refused by the registry).
    pub fn sign_untrusted(&self, on: bool) {
        self.state.lock().unwrap().sign_untrusted = on;
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.state.lock().unwrap().issued
    }
}

type IssuerShared = (Arc<Mutex<IssuerState>>, Arc<Keys>);

async fn token(
    State((state, keys)): State<IssuerShared>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let query: std::collections::HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let refuse = |status: StatusCode, details: &str| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            json!({ "details": details }).to_string(),
        )
            .into_response()
    };
    if query.get("service").map(String::as_str) != Some(SERVICE) {
        return refuse(StatusCode::BAD_REQUEST, "unknown service");
    }
    let login = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((user, password)) = login.as_deref().and_then(|l| l.split_once(':')) else {
        return refuse(StatusCode::UNAUTHORIZED, "authentication required");
    };
    let mut s = state.lock().unwrap();
    if !s.accounts.iter().any(|(u, p)| u == user && p == password) {
        return refuse(StatusCode::UNAUTHORIZED, "incorrect username or password");
    }
    s.issued += 1;
    let now = jiff::Timestamp::now().as_second();
    let claims = json!({
        "iss": ISSUER, "sub": user, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{:x}", fastrand::u64(..)),
        "access": [],
    });
    let key = if s.sign_untrusted {
        &keys.untrusted
    } else {
        &keys.trusted
    };
    let jwt = key.sign(&claims);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"token": jwt, "access_token": jwt, "expires_in": 300}).to_string(),
    )
        .into_response()
}

/// HTTP status of `GET https://HOST/v2/` with curl trusting only `ca_file`, with a Basic login
/// if given; 0 when no answer came within 5 s.
pub fn v2_status(host: &str, ca_file: &Path, login: Option<(&str, &str)>) -> u16 {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ])
    .arg("--cacert")
    .arg(ca_file);
    if let Some((u, p)) = login {
        c.arg("-u").arg(format!("{u}:{p}"));
    }
    let out = c
        .arg(format!("https://{host}/v2/"))
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}
