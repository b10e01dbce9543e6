//! A stand-in of the Yandex Cloud token exchange of workload identity federations
//! (`POST https://auth.yandex.cloud/oauth/token`, OAuth 2.0 token exchange, RFC 8693), and a
//! test-side issuer for the cases without a control plane.
//!
//! It checks what the real service checks, in the same order a federation is configured:
//! the request (form-encoded; `grant_type` token-exchange, `requested_token_type`
//! access_token, `subject_token_type` id_token, an `audience` and a `subject_token`), then
//! the subject token against the federation (signature RS256 with the JWKS key its `kid`
//! names, `iss` = the federation's issuer, `aud` one of the federation's audiences, `exp` in
//! the future, `nbf`/`iat` not in the future), then the federated credential (`sub` is a
//! subject linked to the service account named in `audience`). With the control plane, the
//! federation is the real kube-apiserver's: its discovery document and JWKS are fetched
//! over HTTPS, anonymously, as an outside relying party does (for every exchange, so a
//! rotated signing key is seen). Refusals are HTTP 400 with the OAuth error shape
//! `{"error","error_description"}`; the codes are RFC 8693's, since the real service's are
//! not documented (docs/PROTOCOLS.md).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jiff::Timestamp;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde_json::{Value, json};

use super::iam::TestKey;

/// The path the real service serves.
pub const TOKEN_PATH: &str = "/oauth/token";
/// `grant_type` the service requires.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `requested_token_type` the service requires.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `subject_token_type` the service requires.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// Leeway for clocks (seconds) on `nbf` and `iat`.
const LEEWAY: i64 = 60;

/// Where the federation's signing keys come from.
#[derive(Clone)]
pub enum Jwks {
    /// The JWKS document at `url`, fetched anonymously over HTTPS for every exchange,
    /// trusting `ca_pem`.
    Url {
        /// The JWKS URL (the discovery document's `jwks_uri`).
        url: String,
        /// PEM of the CA that verifies its server.
        ca_pem: Vec<u8>,
    },
    /// A JWKS document given by the test.
    Static(Value),
}

/// What a workload identity federation is configured with.
#[derive(Clone)]
pub struct Federation {
    /// `issuer`: the only `iss` accepted.
    pub issuer: String,
    /// `audiences`: a token's `aud` must hold one of them.
    pub audiences: Vec<String>,
    /// `jwks-url`.
    pub jwks: Jwks,
}

impl Federation {
    /// The federation of a real cluster: the issuer and JWKS URL from the API server's
    /// discovery document (`GET /.well-known/openid-configuration`, anonymously: the cluster
    /// must allow it, see `allow_anonymous_discovery`), with `audience`.
    pub async fn of_cluster(api_server: &str, ca_pem: &[u8], audience: &str) -> Self {
        let url = format!("{api_server}/.well-known/openid-configuration");
        let discovery = get_json(&url, ca_pem)
            .await
            .unwrap_or_else(|e| panic!("OIDC discovery: {e}"));
        let field = |name: &str| {
            discovery[name]
                .as_str()
                .unwrap_or_else(|| panic!("{url} has no {name:?}: {discovery}"))
                .to_string()
        };
        assert!(
            discovery["id_token_signing_alg_values_supported"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "RS256")),
            "the cluster does not sign with RS256: {discovery}"
        );
        Self {
            issuer: field("issuer"),
            audiences: vec![audience.to_string()],
            jwks: Jwks::Url {
                url: field("jwks_uri"),
                ca_pem: ca_pem.to_vec(),
            },
        }
    }
}

/// Let unauthenticated clients read the API server's OIDC discovery document and JWKS, as
/// an outside relying party (the Yandex federation) must: bind the built-in ClusterRole
/// `system:service-account-issuer-discovery` to `system:unauthenticated` (by default only
/// ServiceAccounts may read them). Idempotent.
pub async fn allow_anonymous_discovery(client: &kube::Client) {
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
    let binding = ClusterRoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some("psi-test-anonymous-oidc-discovery".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "system:service-account-issuer-discovery".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: "system:unauthenticated".into(),
            namespace: None,
        }]),
    };
    match kube::Api::<ClusterRoleBinding>::all(client.clone())
        .create(&Default::default(), &binding)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating the anonymous discovery ClusterRoleBinding: {e}"),
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The form fields (the subject token included).
    pub form: BTreeMap<String, String>,
    /// `Ok(claims)` when a token was issued, `Err("error: description")` when refused.
    pub outcome: Result<Value, String>,
}

struct WifState {
    federation: Federation,
    /// Service account id -> subjects linked to it (federated credentials).
    links: HashMap<String, HashSet<String>>,
    token: String,
    lifetime: Duration,
    exchanges: Vec<Exchange>,
}

/// The token exchange stand-in on `127.0.0.1:<random port>` (plain HTTP, loopback only);
/// stops when dropped.
pub struct WifStandIn {
    server: super::LoopbackServer<WifState>,
}

impl WifStandIn {
    /// Start for `federation`, with no federated credential yet, issuing
    /// `t1.wif-stand-in-token-1` that lives 12 hours.
    pub async fn start(federation: Federation) -> Self {
        let state = WifState {
            federation,
            links: HashMap::new(),
            token: "t1.wif-stand-in-token-1".into(),
            lifetime: Duration::from_secs(12 * 3600),
            exchanges: Vec::new(),
        };
        let server = super::LoopbackServer::start(state, |state| {
            Router::new()
                .route(TOKEN_PATH, post(handle))
                .with_state(state)
        })
        .await;
        Self { server }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WifState> {
        self.server.lock()
    }

    /// `http://127.0.0.1:<port>/oauth/token`.
    pub fn endpoint(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.server.addr)
    }

    /// A federated credential: `subject` may get `service_account_id`'s IAM token.
    pub fn link(&self, service_account_id: &str, subject: &str) {
        self.lock()
            .links
            .entry(service_account_id.to_string())
            .or_default()
            .insert(subject.to_string());
    }

    /// The token the next good request gets.
    pub fn set_token(&self, token: &str) {
        self.lock().token = token.to_string();
    }

    /// The lifetime (`expires_in`) of the tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.lock().lifetime = lifetime;
    }

    /// Every request so far, in order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.lock().exchanges.clone()
    }

    /// Tokens issued.
    pub fn issued(&self) -> usize {
        self.lock()
            .exchanges
            .iter()
            .filter(|e| e.outcome.is_ok())
            .count()
    }

    /// Why requests were refused, in order.
    pub fn rejections(&self) -> Vec<String> {
        self.lock()
            .exchanges
            .iter()
            .filter_map(|e| e.outcome.clone().err())
            .collect()
    }
}

type Refusal = (StatusCode, &'static str, String);

fn refuse(error: &'static str, description: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, error, description.into())
}

async fn handle(
    State(state): State<Arc<Mutex<WifState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let form: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let federation = lock().federation.clone();
    let checked = match check_request(&headers, &form) {
        Ok(()) => verify_subject_token(&federation, &form["subject_token"]).await,
        Err(refusal) => Err(refusal),
    };
    let mut st = lock();
    let checked = checked.and_then(|claims| {
        let sub = claims["sub"].as_str().unwrap_or_default();
        let account = &form["audience"];
        if st.links.get(account).is_some_and(|s| s.contains(sub)) {
            Ok(claims)
        } else {
            Err(refuse(
                "invalid_target",
                format!("no federated credential links subject {sub} to service account {account}"),
            ))
        }
    });
    let (response, outcome) = match checked {
        Ok(claims) => (
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                json!({
                    "access_token": st.token,
                    "token_type": "Bearer",
                    "expires_in": st.lifetime.as_secs(),
                    "issued_token_type": ACCESS_TOKEN_TYPE,
                })
                .to_string(),
            )
                .into_response(),
            Ok(claims),
        ),
        Err((status, error, description)) => (
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                json!({ "error": error, "error_description": description }).to_string(),
            )
                .into_response(),
            Err(format!("{error}: {description}")),
        ),
    };
    st.exchanges.push(Exchange { form, outcome });
    response
}

/// The request itself, before the token is looked at.
fn check_request(headers: &HeaderMap, form: &BTreeMap<String, String>) -> Result<(), Refusal> {
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_encoded {
        return Err(refuse(
            "invalid_request",
            "content type must be application/x-www-form-urlencoded",
        ));
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != GRANT_TYPE {
        return Err(refuse(
            "unsupported_grant_type",
            format!("grant_type {:?} is not supported", field("grant_type")),
        ));
    }
    for (name, want) in [
        ("requested_token_type", ACCESS_TOKEN_TYPE),
        ("subject_token_type", ID_TOKEN_TYPE),
    ] {
        if field(name) != want {
            return Err(refuse(
                "invalid_request",
                format!("{name} must be {want}, got {:?}", field(name)),
            ));
        }
    }
    for name in ["audience", "subject_token"] {
        if field(name).is_empty() {
            return Err(refuse("invalid_request", format!("{name} is missing")));
        }
    }
    Ok(())
}

/// The subject token against the federation; its claims when it is valid.
async fn verify_subject_token(federation: &Federation, token: &str) -> Result<Value, Refusal> {
    let bad = |d: String| refuse("invalid_request", format!("subject_token: {d}"));
    let [h, c, s] = token.split('.').collect::<Vec<_>>()[..] else {
        return Err(bad("not a JWT".into()));
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok();
    let header: Value = decode(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("header is not base64url JSON".into()))?;
    let claims: Value = decode(c)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("claims are not base64url JSON".into()))?;
    let signature = decode(s).ok_or_else(|| bad("signature is not base64url".into()))?;
    if header["alg"] != "RS256" {
        return Err(bad(format!("alg {} is not RS256", header["alg"])));
    }
    let kid = header["kid"]
        .as_str()
        .ok_or_else(|| bad("header has no kid".into()))?;
    let jwks = match &federation.jwks {
        Jwks::Static(v) => v.clone(),
        Jwks::Url { url, ca_pem } => get_json(url, ca_pem).await.map_err(|e| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                e,
            )
        })?,
    };
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .ok_or_else(|| bad(format!("no key {kid} in the federation's JWKS")))?;
    let component = |name: &str| {
        key[name]
            .as_str()
            .and_then(decode)
            .ok_or_else(|| bad(format!("JWKS key {kid} has no {name}")))
    };
    RsaPublicKeyComponents {
        n: component("n")?,
        e: component("e")?,
    }
    .verify(
        &RSA_PKCS1_2048_8192_SHA256,
        format!("{h}.{c}").as_bytes(),
        &signature,
    )
    .map_err(|_| bad("signature verification failed".into()))?;
    if claims["iss"] != federation.issuer.as_str() {
        return Err(bad(format!(
            "iss {} is not the federation's issuer {}",
            claims["iss"], federation.issuer
        )));
    }
    let auds: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !auds
        .iter()
        .any(|a| federation.audiences.iter().any(|f| f == a))
    {
        return Err(bad(format!(
            "aud {} holds none of the federation's audiences {:?}",
            claims["aud"], federation.audiences
        )));
    }
    let now = Timestamp::now().as_second();
    match claims["exp"].as_i64() {
        Some(exp) if exp > now => {}
        Some(_) => return Err(bad("the token has expired".into())),
        None => return Err(bad("no exp".into())),
    }
    for name in ["nbf", "iat"] {
        if claims[name].as_i64().is_some_and(|t| t > now + LEEWAY) {
            return Err(bad(format!("{name} is in the future")));
        }
    }
    if !claims["sub"].is_string() {
        return Err(bad("no sub".into()));
    }
    Ok(claims)
}

/// GET `url` (HTTPS, trusting only `ca_pem`, no credentials) and parse the JSON answer.
async fn get_json(url: &str, ca_pem: &[u8]) -> Result<Value, String> {
    use http_body_util::{BodyExt, Empty};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(|e| format!("CA PEM: {e}"))?)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<Bytes>>(https);
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let response = client
            .get(uri)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {url}: reading: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    })
    .await
    .map_err(|_| format!("GET {url}: no answer within 10s"))??;
    let (status, body) = answer;
    if !status.is_success() {
        return Err(format!(
            "GET {url}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
}

/// A test-side OIDC issuer: RS256 tokens signed with a generated key, and its JWKS. For the
/// provider tests that run without a control plane.
pub struct TestIssuer {
    /// `iss` of its tokens.
    pub issuer: String,
    /// `kid` of its key.
    pub kid: String,
    key_pair: ring::signature::RsaKeyPair,
}

impl TestIssuer {
    /// An issuer named `issuer` with the shared 2048-bit test key.
    pub fn new(issuer: &str) -> Self {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let key = TestKey::shared(2048);
        let der = PrivatePkcs8KeyDer::from_pem_slice(key.private_pkcs8_pem.as_bytes())
            .expect("the test key is PKCS#8 PEM");
        Self {
            issuer: issuer.to_string(),
            kid: "test-issuer-key".into(),
            key_pair: ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                .expect("an RSA key"),
        }
    }

    /// The issuer's JWKS document.
    pub fn jwks(&self) -> Value {
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(self.key_pair.public());
        json!({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.n),
            "e": URL_SAFE_NO_PAD.encode(public.e),
        }]})
    }

    /// A federation trusting this issuer for `audience`.
    pub fn federation(&self, audience: &str) -> Federation {
        Federation {
            issuer: self.issuer.clone(),
            audiences: vec![audience.to_string()],
            jwks: Jwks::Static(self.jwks()),
        }
    }

    /// A token for `sub` and `aud`, valid `lifetime` from now (negative: already expired),
    /// with `extra` claims merged in.
    pub fn token(&self, sub: &str, aud: &str, lifetime: i64, extra: Value) -> String {
        let now = Timestamp::now().as_second();
        let mut claims = json!({
            "iss": self.issuer, "sub": sub, "aud": [aud],
            "iat": now, "nbf": now, "exp": now + lifetime,
        });
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let header = json!({"alg": "RS256", "kid": self.kid});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signed.as_bytes(),
                &mut signature,
            )
            .expect("signing");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}
