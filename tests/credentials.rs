//! Credential providers against local stand-ins of the IAM and metadata services, and
//! the static providers against files on disk.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::iam::{IamStandIn, Mode, TestKey};
use common::metadata::{self, MetadataStandIn};
use common::proxy::ConnectProxy;
use common::wif::{TestIssuer, WifStandIn};
use jiff::{SignedDuration, Timestamp};
use pullsecret_injector::config::{
    Basic, CredentialSource, FileSource, YandexAuthorizedKey, YandexMetadata,
    YandexWorkloadIdentity,
};
use pullsecret_injector::credentials::{
    Credential, CredentialData, CredentialError, HttpClient, HttpOptions, Provider, Proxy,
};
use pullsecret_injector::dockerconfig;

fn client_with(request_timeout: Duration) -> HttpClient {
    HttpClient::with_roots(
        HttpOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout,
        },
        rustls::RootCertStore::empty(),
    )
    .expect("client")
}

fn client() -> HttpClient {
    client_with(Duration::from_secs(10))
}

fn key_provider(file: &Path, endpoint: &str) -> Provider {
    key_provider_with(file, endpoint, &client())
}

fn key_provider_with(file: &Path, endpoint: &str, http: &HttpClient) -> Provider {
    Provider::new(
        &CredentialSource::YandexAuthorizedKey(YandexAuthorizedKey {
            file: file.to_path_buf(),
            endpoint: endpoint.to_string(),
        }),
        http,
    )
    .expect("provider")
}

fn metadata_provider(endpoint: &str, http: &HttpClient) -> Provider {
    Provider::new(
        &CredentialSource::YandexMetadata(YandexMetadata {
            endpoint: endpoint.to_string(),
        }),
        http,
    )
    .expect("provider")
}

fn assert_close(at: Timestamp, want: Timestamp, slack_secs: i64) {
    let diff = at.duration_since(want).abs();
    assert!(
        diff <= SignedDuration::from_secs(slack_secs),
        "{at} is not within {slack_secs}s of {want}"
    );
}

/// Mint a token with the shared key of `bits`, with or without the prefix line.
async fn mints_a_token(bits: usize, prefix: bool) {
    let key = TestKey::shared(bits);
    let iam = IamStandIn::start().await;
    iam.register(key);
    let dir = tempfile::tempdir().unwrap();
    let file = key.write_key_file(dir.path(), prefix);
    let provider = key_provider(&file, &iam.endpoint());

    let before = Timestamp::now();
    let cred = provider.fetch().await.expect("token");
    assert_eq!(iam.rejections(), Vec::<String>::new());
    assert_eq!(iam.issued(), 1);
    assert_eq!(cred.username(), Some("iam"));
    assert_eq!(
        cred.password().map(|p| p.expose()),
        Some("t1.stand-in-token-1")
    );
    let expires = cred.expires_at().expect("tokens expire");
    assert_close(expires, before + SignedDuration::from_hours(12), 5);
    assert_close(cred.issued_at(), before, 5);

    let claims = iam.last_claims().expect("claims");
    assert_eq!(claims["iss"], key.service_account_id.as_str());
    // The audience is the endpoint's URL; the stand-in accepts only its own.
    assert_eq!(claims["aud"], iam.endpoint());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );

    // And the Secret data is a login for every host.
    let data = cred.secret_data(&["cr.yandex", "registry.yandexcloud.net"]);
    let parsed = dockerconfig::parse(data.expose()).unwrap();
    assert_eq!(parsed.auths.len(), 2);
    assert_eq!(parsed.auths["cr.yandex"].password, "t1.stand-in-token-1");
}

#[tokio::test]
async fn authorized_key_2048_without_prefix_line_gets_a_token() {
    mints_a_token(2048, false).await;
}

#[tokio::test]
async fn authorized_key_2048_with_prefix_line_gets_a_token() {
    mints_a_token(2048, true).await;
}

#[tokio::test]
async fn authorized_key_4096_without_prefix_line_gets_a_token() {
    mints_a_token(4096, false).await;
}

#[tokio::test]
async fn authorized_key_4096_with_prefix_line_gets_a_token() {
    mints_a_token(4096, true).await;
}

#[tokio::test]
async fn key_in_the_rest_api_layout_gets_a_token() {
    let key = TestKey::shared(2048);
    let iam = IamStandIn::start().await;
    iam.register(key);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.json");
    std::fs::write(&file, key.rest_key_json()).unwrap();
    let cred = key_provider(&file, &iam.endpoint())
        .fetch()
        .await
        .expect("token");
    assert_eq!(iam.issued(), 1);
    assert_eq!(
        cred.password().map(|p| p.expose()),
        Some("t1.stand-in-token-1")
    );
    let claims = iam.last_claims().unwrap();
    assert_eq!(claims["iss"], key.service_account_id.as_str());
}

#[tokio::test]
async fn jwt_for_another_url_of_the_service_is_refused_by_its_audience() {
    // The same stand-in reached as "localhost": a JWT whose audience is not the service's
    // own URL is refused, as the real service refuses one made for another endpoint.
    let key = TestKey::shared(2048);
    let iam = IamStandIn::start().await;
    iam.register(key);
    let dir = tempfile::tempdir().unwrap();
    let other = iam.endpoint().replace("127.0.0.1", "localhost");
    let provider = key_provider(&key.write_key_file(dir.path(), false), &other);
    let err = provider.fetch().await.unwrap_err().to_string();
    assert_eq!(
        iam.rejections(),
        vec![format!("Invalid JWT aud \"{other}\"")]
    );
    assert!(
        err.contains("answered HTTP 401 Unauthorized: Invalid JWT aud"),
        "{err}"
    );
}

#[tokio::test]
async fn each_fetch_mints_again_and_follows_token_rotation() {
    let key = TestKey::shared(2048);
    let iam = IamStandIn::start().await;
    iam.register(key);
    let dir = tempfile::tempdir().unwrap();
    let provider = key_provider(&key.write_key_file(dir.path(), true), &iam.endpoint());

    let first = provider.fetch().await.unwrap();
    iam.set_token("t1.stand-in-token-2");
    iam.set_lifetime(Duration::from_secs(3600));
    let second = provider.fetch().await.unwrap();
    assert_eq!(iam.calls(), 2);
    assert_eq!(first.password().unwrap().expose(), "t1.stand-in-token-1");
    assert_eq!(second.password().unwrap().expose(), "t1.stand-in-token-2");
    assert_close(
        second.expires_at().unwrap(),
        Timestamp::now() + SignedDuration::from_hours(1),
        5,
    );
    // Same token again is fine too (the service may return it).
    let third = provider.fetch().await.unwrap();
    assert_eq!(third.password(), second.password());
}

#[tokio::test]
async fn expires_at_without_fractional_seconds_is_read() {
    let key = TestKey::shared(2048);
    let iam = IamStandIn::start().await;
    iam.register(key);
    iam.set_fractional_seconds(false);
    let dir = tempfile::tempdir().unwrap();
    let provider = key_provider(&key.write_key_file(dir.path(), false), &iam.endpoint());
    let cred = provider.fetch().await.unwrap();
    let expires = cred.expires_at().unwrap();
    assert_eq!(expires.subsec_nanosecond(), 0);
    assert_close(
        expires,
        Timestamp::now() + SignedDuration::from_hours(12),
        5,
    );
}

#[tokio::test]
async fn private_key_not_matching_the_registered_public_key_is_refused_with_code_and_message() {
    let registered = TestKey::shared(2048);
    let other = TestKey::generate(2048);
    let iam = IamStandIn::start().await;
    iam.register(registered);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.json");
    std::fs::write(
        &file,
        registered.key_file_json_with_private_key(&other.private_pkcs8_pem, true),
    )
    .unwrap();
    let provider = key_provider(&file, &iam.endpoint());

    let err = provider.fetch().await.unwrap_err();
    assert_eq!(iam.rejections(), vec!["JWT signature validation failed"]);
    match &err {
        CredentialError::Rejected {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!(status.as_u16(), 401);
            assert_eq!(*code, Some(16));
            assert_eq!(message, "JWT signature validation failed");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "{} answered HTTP 401 Unauthorized: JWT signature validation failed (code 16)",
            iam.endpoint()
        )
    );
    assert!(!err.is_transient());
    no_key_material(&format!("{err} {err:?}"), &other);
}

#[tokio::test]
async fn unknown_key_id_is_refused() {
    let key = TestKey::shared(2048);
    let iam = IamStandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let provider = key_provider(&key.write_key_file(dir.path(), false), &iam.endpoint());
    let err = provider.fetch().await.unwrap_err().to_string();
    assert!(
        err.ends_with(&format!("Key {} not found (code 16)", key.id)),
        "{err}"
    );
}

fn no_key_material(text: &str, key: &TestKey) {
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    // Any line of the base64 body of the private key.
    for line in key
        .private_pkcs8_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
    {
        assert!(!text.contains(line), "{text}");
    }
}

async fn error_for(mode: Mode) -> (IamStandIn, CredentialError) {
    let key = TestKey::shared(2048);
    let iam = IamStandIn::start().await;
    iam.register(key);
    iam.set_mode(mode);
    let dir = tempfile::tempdir().unwrap();
    let provider = key_provider(&key.write_key_file(dir.path(), false), &iam.endpoint());
    let err = provider.fetch().await.unwrap_err();
    (iam, err)
}

#[tokio::test]
async fn rate_limited_answer_gives_status_code_and_message_and_is_transient() {
    let (iam, err) = error_for(Mode::too_many_requests()).await;
    assert_eq!(
        err.to_string(),
        format!(
            "{} answered HTTP 429 Too Many Requests: Quota limit iam.tokens.create exceeded (code 8)",
            iam.endpoint()
        )
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn unauthenticated_answer_gives_status_code_and_message() {
    let (iam, err) = error_for(Mode::unauthenticated()).await;
    assert_eq!(
        err.to_string(),
        format!(
            "{} answered HTTP 401 Unauthorized: The token is invalid (code 16)",
            iam.endpoint()
        )
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn server_error_gives_status_code_and_message_and_is_transient() {
    let (iam, err) = error_for(Mode::internal()).await;
    assert_eq!(
        err.to_string(),
        format!(
            "{} answered HTTP 500 Internal Server Error: Internal error (code 13)",
            iam.endpoint()
        )
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn non_json_error_page_is_quoted_as_a_short_one_line_snippet() {
    let (iam, err) = error_for(Mode::garbage(502)).await;
    assert_eq!(
        err.to_string(),
        format!(
            "{} answered HTTP 502 Bad Gateway: body: <html><body><h1>502 Bad Gateway</h1> <p>nginx</p></body></html>",
            iam.endpoint()
        )
    );
}

#[tokio::test]
async fn garbage_with_status_200_is_an_unusable_body_error() {
    let (iam, err) = error_for(Mode::garbage(200)).await;
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "{} answered HTTP 200 OK with an unusable body: not JSON",
            iam.endpoint()
        )),
        "{text}"
    );
    assert!(
        !text.contains("nginx"),
        "2xx bodies are never quoted: {text}"
    );
}

#[tokio::test]
async fn token_answer_without_expiry_is_refused() {
    let (_, err) = error_for(Mode::Respond {
        status: 200,
        content_type: "application/json",
        body: r#"{"iamToken":"t1.secret-token"}"#.into(),
    })
    .await;
    let text = format!("{err} {err:?}");
    assert!(text.contains("missing field \"expiresAt\""), "{text}");
    assert!(!text.contains("secret-token"), "{text}");
}

#[tokio::test]
async fn already_expired_token_is_refused() {
    let (_, err) = error_for(Mode::Respond {
        status: 200,
        content_type: "application/json",
        body: r#"{"iamToken":"t1.x","expiresAt":"2001-01-01T00:00:00Z"}"#.into(),
    })
    .await;
    assert!(
        err.to_string().contains("not after the request time"),
        "{err}"
    );
}

#[tokio::test]
async fn hanging_service_times_out_within_the_bound() {
    let key = TestKey::shared(2048);
    let iam = IamStandIn::start().await;
    iam.register(key);
    iam.set_mode(Mode::Hang);
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::new(
        &CredentialSource::YandexAuthorizedKey(YandexAuthorizedKey {
            file: key.write_key_file(dir.path(), false),
            endpoint: iam.endpoint(),
        }),
        &client_with(Duration::from_millis(300)),
    )
    .unwrap();
    let start = Instant::now();
    let err = provider.fetch().await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "requesting {}: no complete answer within 300ms",
            iam.endpoint()
        )
    );
    assert!(err.is_transient());
    assert_eq!(iam.calls(), 1);
}

#[tokio::test]
async fn nobody_listening_is_a_transient_request_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}/iam/v1/tokens");
    let key = TestKey::shared(2048);
    let dir = tempfile::tempdir().unwrap();
    let provider = key_provider(&key.write_key_file(dir.path(), false), &endpoint);
    let err = provider.fetch().await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("requesting {endpoint}: ")),
        "{err}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn key_file_problems_name_the_file_and_send_nothing() {
    let iam = IamStandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::shared(2048);
    let missing = dir.path().join("missing.json");
    let file = dir.path().join("key.json");
    let cases: Vec<(Option<String>, PathBuf, String)> = vec![
        (
            None,
            missing.clone(),
            format!("reading authorized key file {}: ", missing.display()),
        ),
        (
            Some("not json".into()),
            file.clone(),
            format!("authorized key file {}: not valid JSON", file.display()),
        ),
        (
            Some(r#"{"id":"a","private_key":"x"}"#.into()),
            file.clone(),
            format!(
                "authorized key file {}: missing field \"service_account_id\"",
                file.display()
            ),
        ),
        (
            Some(
                key.key_file_json(false)
                    .replace("BEGIN PRIVATE KEY", "BEGIN PRIVATE KEZ"),
            ),
            file.clone(),
            format!(
                "authorized key file {}: field \"private_key\": ",
                file.display()
            ),
        ),
    ];
    for (content, path, want) in cases {
        if let Some(content) = &content {
            std::fs::write(&path, content).unwrap();
        }
        let provider = key_provider(&path, &iam.endpoint());
        let err = provider.fetch().await.unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(&want), "got {text:?}, want {want:?}");
        no_key_material(&format!("{text} {err:?}"), key);
    }
    assert_eq!(iam.calls(), 0);
}

#[tokio::test]
async fn rewritten_key_file_changes_the_fingerprint_and_is_used_on_the_next_fetch() {
    let first = TestKey::shared(2048);
    let second = TestKey::shared(4096);
    let iam = IamStandIn::start().await;
    iam.register(first);
    iam.register(second);
    let dir = tempfile::tempdir().unwrap();
    let file = first.write_key_file(dir.path(), false);
    let provider = key_provider(&file, &iam.endpoint());
    assert_eq!(provider.files(), vec![file.clone()]);

    let cred = provider.fetch().await.unwrap();
    assert_eq!(cred.fingerprint(), provider.files_fingerprint().await);

    second.write_key_file(dir.path(), false);
    assert_ne!(cred.fingerprint(), provider.files_fingerprint().await);
    let cred2 = provider.fetch().await.unwrap();
    assert_eq!(cred2.fingerprint(), provider.files_fingerprint().await);
    assert_eq!(
        iam.last_claims().unwrap()["iss"],
        second.service_account_id.as_str()
    );

    std::fs::remove_file(&file).unwrap();
    assert_ne!(cred2.fingerprint(), provider.files_fingerprint().await);
}

#[tokio::test]
async fn debug_output_never_shows_tokens_or_key_material() {
    let key = TestKey::shared(2048);
    let iam = IamStandIn::start().await;
    iam.register(key);
    iam.set_token("t1.very-secret-token");
    let dir = tempfile::tempdir().unwrap();
    let provider = key_provider(&key.write_key_file(dir.path(), true), &iam.endpoint());
    let cred = provider.fetch().await.unwrap();
    let text = format!(
        "{provider:?} {provider:#?} {cred:?} {cred:#?} {:?} {:?}",
        cred.data(),
        cred.secret_data(&["cr.yandex"])
    );
    assert!(!text.contains("very-secret-token"), "{text}");
    no_key_material(&text, key);
    assert!(text.contains("[redacted]"), "{text}");
}

#[tokio::test]
async fn plain_http_endpoint_that_is_not_loopback_is_refused() {
    let e = Provider::new(
        &CredentialSource::YandexAuthorizedKey(YandexAuthorizedKey {
            file: "/k".into(),
            endpoint: "http://iam.api.cloud.yandex.net/iam/v1/tokens".into(),
        }),
        &client(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("invalid endpoint: "), "{e}");
    // The metadata address is link-local plain HTTP by design.
    assert!(
        Provider::new(
            &CredentialSource::YandexMetadata(YandexMetadata {
                endpoint: pullsecret_injector::config::DEFAULT_METADATA_ENDPOINT.into()
            }),
            &client()
        )
        .is_ok()
    );
}

#[tokio::test]
async fn https_endpoint_without_trust_roots_says_so() {
    let key = TestKey::shared(2048);
    let dir = tempfile::tempdir().unwrap();
    let provider = key_provider(
        &key.write_key_file(dir.path(), false),
        "https://127.0.0.1:9/iam/v1/tokens",
    );
    let err = provider.fetch().await.unwrap_err().to_string();
    assert!(err.contains("no trust roots"), "{err}");
}

// ---- HTTPS ----

#[tokio::test]
async fn https_stand_in_is_reached_through_rustls_with_the_given_roots() {
    let key = TestKey::shared(2048);
    let (iam, ca) = IamStandIn::start_tls().await;
    iam.register(key);
    assert!(iam.endpoint().starts_with("https://127.0.0.1:"));
    let dir = tempfile::tempdir().unwrap();
    let http = HttpClient::with_roots(HttpOptions::default(), ca.roots()).unwrap();
    let provider = Provider::new(
        &CredentialSource::YandexAuthorizedKey(YandexAuthorizedKey {
            file: key.write_key_file(dir.path(), false),
            endpoint: iam.endpoint(),
        }),
        &http,
    )
    .unwrap();
    let cred = provider.fetch().await.unwrap();
    assert_eq!(cred.password().unwrap().expose(), "t1.stand-in-token-1");
    // The pooled connection is reused for the next fetch.
    provider.fetch().await.unwrap();
    assert_eq!(iam.issued(), 2);
}

#[tokio::test]
async fn https_stand_in_with_an_untrusted_certificate_is_refused_before_sending() {
    let key = TestKey::shared(2048);
    let (iam, _ca) = IamStandIn::start_tls().await;
    iam.register(key);
    let other = common::iam::TestCa::generate();
    let dir = tempfile::tempdir().unwrap();
    let http = HttpClient::with_roots(HttpOptions::default(), other.roots()).unwrap();
    let provider = Provider::new(
        &CredentialSource::YandexAuthorizedKey(YandexAuthorizedKey {
            file: key.write_key_file(dir.path(), false),
            endpoint: iam.endpoint(),
        }),
        &http,
    )
    .unwrap();
    let err = provider.fetch().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("requesting {}: ", iam.endpoint())),
        "{text}"
    );
    assert!(text.contains("invalid peer certificate"), "{text}");
    assert_eq!(iam.calls(), 0);
}

/// Run the test `name` of this binary again in a child process with `configure` applied
/// to its command (changing the environment of a running test process is unsafe); fails
/// unless that test passes there.
async fn run_in_child(name: &str, configure: impl FnOnce(&mut std::process::Command)) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args([name, "--exact", "--test-threads=1"]);
    configure(&mut child);
    let out = tokio::task::spawn_blocking(move || child.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

const INNER_ENDPOINT: &str = "PULLSECRET_INJECTOR_TEST_INNER_ENDPOINT";
const INNER_KEY: &str = "PULLSECRET_INJECTOR_TEST_INNER_KEY";

/// Runs twice: in the test process it starts an HTTPS stand-in and re-runs itself as a
/// child process with `SSL_CERT_FILE` pointing at the stand-in's CA (changing the
/// environment of a running test process is unsafe); in the child it fetches through
/// `HttpClient::new`, which must trust exactly that file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_cert_file_is_the_trust_root_of_the_default_client() {
    if let (Ok(endpoint), Ok(key_file)) = (std::env::var(INNER_ENDPOINT), std::env::var(INNER_KEY))
    {
        let http = HttpClient::new(HttpOptions::default()).unwrap();
        assert_eq!(http.trust_roots(), 1, "only the CA in SSL_CERT_FILE");
        let provider = key_provider_with(&PathBuf::from(key_file), &endpoint, &http);
        let cred = provider.fetch().await.unwrap();
        assert_eq!(cred.password().unwrap().expose(), "t1.stand-in-token-1");
        return;
    }
    let key = TestKey::shared(2048);
    let (iam, ca) = IamStandIn::start_tls().await;
    iam.register(key);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let key_file = key.write_key_file(dir.path(), false);
    run_in_child(
        "ssl_cert_file_is_the_trust_root_of_the_default_client",
        |child| {
            child
                .env("SSL_CERT_FILE", &ca_file)
                .env_remove("SSL_CERT_DIR")
                .env(INNER_ENDPOINT, iam.endpoint())
                .env(INNER_KEY, &key_file);
        },
    )
    .await;
    assert_eq!(iam.issued(), 1);
}

// ---- proxies ----

fn proxied_client(roots: rustls::RootCertStore, proxy: Proxy) -> HttpClient {
    HttpClient::with_roots_and_proxy(HttpOptions::default(), roots, proxy).unwrap()
}

#[tokio::test]
async fn https_proxy_carries_requests_through_a_connect_tunnel_and_no_proxy_bypasses_it() {
    let key = TestKey::shared(2048);
    let proxy = ConnectProxy::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = key.write_key_file(dir.path(), false);
    // The service known as "localhost" (its certificate names it, the JWT's audience is
    // its URL): reached through the proxy (CONNECT localhost:<port>, TLS end to end inside
    // the tunnel) unless NO_PROXY names it. The proxy tunnels every name to this machine.
    let (local, ca) = IamStandIn::start_tls_named("localhost").await;
    local.register(key);
    for (no_proxy, through) in [
        ("", true),
        ("localhost", false),
        ("example.com, .localhost", false),
        ("example.com", true),
    ] {
        let before = proxy.connects().len();
        let http = proxied_client(ca.roots(), Proxy::new(&proxy.url(), "", no_proxy));
        key_provider_with(&key_file, &local.endpoint(), &http)
            .fetch()
            .await
            .unwrap_or_else(|e| panic!("NO_PROXY={no_proxy:?}: {e}"));
        assert_eq!(
            proxy.connects().len() - before,
            usize::from(through),
            "NO_PROXY={no_proxy:?}: {:?}",
            proxy.connects()
        );
    }
    assert_eq!(local.issued(), 4);
    assert_eq!(
        proxy.connects(),
        vec![format!("localhost:{}", local.addr().port()); 2]
    );
    assert!(proxy.other_requests().is_empty());
}

#[tokio::test]
async fn proxy_credentials_go_in_proxy_authorization_and_nowhere_else() {
    let key = TestKey::shared(2048);
    // user:s3cret-proxy-password
    let expected = "Basic dXNlcjpzM2NyZXQtcHJveHktcGFzc3dvcmQ=";
    let proxy = ConnectProxy::start(Some(expected)).await;
    let (iam, ca) = IamStandIn::start_tls_named("localhost").await;
    iam.register(key);
    let dir = tempfile::tempdir().unwrap();
    let key_file = key.write_key_file(dir.path(), false);
    let with = |password: &str| {
        let url = proxy
            .url()
            .replace("http://", &format!("http://user:{password}@"));
        proxied_client(ca.roots(), Proxy::new(&url, "", ""))
    };
    let http = with("s3cret-proxy-password");
    key_provider_with(&key_file, &iam.endpoint(), &http)
        .fetch()
        .await
        .expect("a token through the proxy with credentials");
    assert_eq!(proxy.auths(), vec![Some(expected.to_string())]);
    // A wrong password: the proxy's 407 is reported, naming the proxy, never the password.
    let http = with("wrong-proxy-password");
    let provider = key_provider_with(&key_file, &iam.endpoint(), &http);
    let err = provider.fetch().await.unwrap_err();
    let text = format!("{err} {err:?} {http:?} {provider:?}");
    assert!(
        err.to_string().contains(&format!(
            "through the proxy {}: tunnel error: proxy authorization required",
            proxy.url()
        )),
        "{err}"
    );
    assert!(err.is_transient(), "a proxy failure is a network failure");
    assert!(
        !text.contains("wrong-proxy-password") && !text.contains("s3cret"),
        "{text}"
    );
    assert_eq!(iam.issued(), 1);
}

#[tokio::test]
async fn loopback_and_link_local_endpoints_are_never_proxied() {
    let key = TestKey::shared(2048);
    // A proxy that would refuse anything: nothing may reach it.
    let proxy = ConnectProxy::start(Some("Basic bm9ib2R5")).await;
    let everything = Proxy::new(&proxy.url(), &proxy.url(), "");
    let dir = tempfile::tempdir().unwrap();
    let key_file = key.write_key_file(dir.path(), false);
    let (https_iam, ca) = IamStandIn::start_tls().await;
    https_iam.register(key);
    let plain_iam = IamStandIn::start().await;
    plain_iam.register(key);
    let md = MetadataStandIn::start().await;
    let http = proxied_client(ca.roots(), everything);
    for endpoint in [https_iam.endpoint(), plain_iam.endpoint()] {
        assert!(endpoint.contains("://127.0.0.1:"), "{endpoint}");
        key_provider_with(&key_file, &endpoint, &http)
            .fetch()
            .await
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    }
    metadata_provider(&md.endpoint(), &http)
        .fetch()
        .await
        .unwrap();
    assert!(proxy.connects().is_empty(), "{:?}", proxy.connects());
    assert!(
        proxy.other_requests().is_empty(),
        "{:?}",
        proxy.other_requests()
    );
}

const PROXY_CHILD_ENDPOINT: &str = "PULLSECRET_INJECTOR_TEST_PROXY_ENDPOINT";
const PROXY_CHILD_KEY: &str = "PULLSECRET_INJECTOR_TEST_PROXY_KEY";

/// Runs in the test process, which starts a stand-in known as "localhost" and a proxy, and
/// re-runs itself as a child process with the proxy variables set (changing the
/// environment of a running test process is unsafe): the child fetches a token through
/// `HttpClient::new`, which reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_variables_are_read_from_the_environment_in_either_case() {
    if let (Ok(endpoint), Ok(key_file)) = (
        std::env::var(PROXY_CHILD_ENDPOINT),
        std::env::var(PROXY_CHILD_KEY),
    ) {
        let http = HttpClient::new(HttpOptions::default()).unwrap();
        let provider = key_provider_with(&PathBuf::from(key_file), &endpoint, &http);
        let cred = provider.fetch().await.unwrap();
        assert_eq!(cred.password().unwrap().expose(), "t1.stand-in-token-1");
        return;
    }
    let key = TestKey::shared(2048);
    let proxy = ConnectProxy::start(None).await;
    let (iam, ca) = IamStandIn::start_tls_named("localhost").await;
    iam.register(key);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let key_file = key.write_key_file(dir.path(), false);
    let url = proxy.url();
    let cases: [(&[(&str, &str)], bool); 5] = [
        (&[("HTTPS_PROXY", &url)], true),
        (&[("https_proxy", &url)], true),
        (&[("HTTPS_PROXY", &url), ("NO_PROXY", "localhost")], false),
        (&[("https_proxy", &url), ("no_proxy", "localhost")], false),
        (&[("ALL_PROXY", &url)], true),
    ];
    for (vars, through) in cases {
        let before = proxy.connects().len();
        run_in_child(
            "proxy_variables_are_read_from_the_environment_in_either_case",
            |child| {
                child
                    .env("SSL_CERT_FILE", &ca_file)
                    .env_remove("SSL_CERT_DIR")
                    .env(PROXY_CHILD_ENDPOINT, iam.endpoint())
                    .env(PROXY_CHILD_KEY, &key_file);
                for name in [
                    "HTTPS_PROXY",
                    "https_proxy",
                    "HTTP_PROXY",
                    "http_proxy",
                    "ALL_PROXY",
                    "all_proxy",
                    "NO_PROXY",
                    "no_proxy",
                    "REQUEST_METHOD",
                ] {
                    child.env_remove(name);
                }
                for (k, v) in vars {
                    child.env(k, v);
                }
            },
        )
        .await;
        assert_eq!(
            proxy.connects().len() - before,
            usize::from(through),
            "{vars:?}: {:?}",
            proxy.connects()
        );
    }
    assert_eq!(iam.issued(), 5);
}

// ---- metadata service ----

#[tokio::test]
async fn metadata_token_is_fetched_with_the_flavor_header() {
    let md = MetadataStandIn::start().await;
    let provider = metadata_provider(&md.endpoint(), &client());
    assert_eq!(provider.kind(), "yandexMetadata");
    assert!(provider.files().is_empty());
    let before = Timestamp::now();
    let cred = provider.fetch().await.unwrap();
    assert_eq!(md.missing_header(), 0);
    assert_eq!(cred.username(), Some("iam"));
    assert_eq!(cred.password().unwrap().expose(), "t1.metadata-token-1");
    assert_close(
        cred.expires_at().unwrap(),
        before + SignedDuration::from_secs(42_000),
        5,
    );
    md.set_token("t1.metadata-token-2");
    md.set_expires_in(600);
    let cred = provider.fetch().await.unwrap();
    assert_eq!(cred.password().unwrap().expose(), "t1.metadata-token-2");
    assert_close(
        cred.expires_at().unwrap(),
        Timestamp::now() + SignedDuration::from_secs(600),
        5,
    );
    assert_eq!(md.calls(), 2);
    assert_eq!(cred.fingerprint(), provider.files_fingerprint().await);
}

#[tokio::test]
async fn metadata_errors_are_clear() {
    let md = MetadataStandIn::start().await;
    let provider = metadata_provider(&md.endpoint(), &client_with(Duration::from_millis(300)));
    md.set_mode(metadata::Mode::Respond {
        status: 404,
        content_type: "text/plain",
        body: "service account not found\n".into(),
    });
    assert_eq!(
        provider.fetch().await.unwrap_err().to_string(),
        format!(
            "{} answered HTTP 404 Not Found: body: service account not found",
            md.endpoint()
        )
    );
    md.set_mode(metadata::Mode::Respond {
        status: 200,
        content_type: "application/json",
        body: r#"{"access_token":"t1.secret"}"#.into(),
    });
    let e = provider.fetch().await.unwrap_err().to_string();
    assert!(e.contains("missing field \"expires_in\""), "{e}");
    assert!(!e.contains("t1.secret"), "{e}");
    md.set_mode(metadata::Mode::Hang);
    let start = Instant::now();
    let e = provider.fetch().await.unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(e.ends_with("no complete answer within 300ms"), "{e}");
}

// ---- workload identity federation ----

const SA_ID: &str = "ajeq2v3pl6bu8jqnvvaa";
const SUBJECT: &str = "system:serviceaccount:psi:pullsecret-injector";
const AUDIENCE: &str = "https://storage.yandexcloud.net/mk8s-oidc/v1/clusters/test";

fn wif_provider(token_file: &Path, endpoint: &str) -> Provider {
    Provider::new(
        &CredentialSource::YandexWorkloadIdentity(YandexWorkloadIdentity {
            service_account_id: SA_ID.into(),
            token_file: token_file.to_path_buf(),
            endpoint: endpoint.into(),
        }),
        &client(),
    )
    .expect("provider")
}

/// An issuer, a stand-in trusting it for AUDIENCE with SUBJECT linked to SA_ID, and a token
/// file holding a good token.
async fn wif_setup() -> (TestIssuer, WifStandIn, tempfile::TempDir, PathBuf) {
    let issuer = TestIssuer::new("https://kubernetes.default.svc");
    let wif = WifStandIn::start(issuer.federation(AUDIENCE)).await;
    wif.link(SA_ID, SUBJECT);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(
        &file,
        issuer.token(SUBJECT, AUDIENCE, 600, serde_json::json!({})),
    )
    .unwrap();
    (issuer, wif, dir, file)
}

#[tokio::test]
async fn workload_identity_sends_the_documented_form_and_gets_an_iam_login() {
    let (_issuer, wif, _dir, file) = wif_setup().await;
    let provider = wif_provider(&file, &wif.endpoint());
    assert_eq!(provider.kind(), "yandexWorkloadIdentity");
    assert!(
        provider.files().is_empty(),
        "kubelet's rotation is no reason to refresh"
    );
    let before = Timestamp::now();
    let cred = provider.fetch().await.expect("token");
    assert_eq!(wif.rejections(), Vec::<String>::new());
    assert_eq!(cred.username(), Some("iam"));
    assert_eq!(cred.password().unwrap().expose(), "t1.wif-stand-in-token-1");
    assert_close(
        cred.expires_at().unwrap(),
        before + SignedDuration::from_hours(12),
        5,
    );
    let [exchange] = &wif.exchanges()[..] else {
        panic!("one exchange: {:?}", wif.exchanges())
    };
    let token = std::fs::read_to_string(&file).unwrap();
    let want: std::collections::BTreeMap<String, String> = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("audience", SA_ID),
        ("subject_token", token.as_str()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:id_token",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(exchange.form, want);
    let data = cred.secret_data(&["cr.yandex", "registry.yandexcloud.net"]);
    let parsed = dockerconfig::parse(data.expose()).unwrap();
    assert_eq!(parsed.auths.len(), 2);
    assert_eq!(parsed.auths["registry.yandexcloud.net"].username, "iam");
}

#[tokio::test]
async fn workload_identity_reads_the_token_file_for_every_exchange() {
    let (issuer, wif, _dir, file) = wif_setup().await;
    let provider = wif_provider(&file, &wif.endpoint());
    provider.fetch().await.expect("first token");
    // kubelet rotates the projected token: the next exchange sends the new one.
    let rotated = issuer.token(SUBJECT, AUDIENCE, 600, serde_json::json!({"jti": "second"}));
    std::fs::write(&file, format!("{rotated}\n")).unwrap();
    wif.set_token("t1.wif-stand-in-token-2");
    let cred = provider.fetch().await.expect("second token");
    assert_eq!(cred.password().unwrap().expose(), "t1.wif-stand-in-token-2");
    let sent: Vec<String> = wif
        .exchanges()
        .iter()
        .map(|e| e.form["subject_token"].clone())
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1], rotated);
    assert_ne!(sent[0], sent[1]);
}

#[tokio::test]
async fn workload_identity_refusals_carry_the_oauth_error_and_description() {
    let (issuer, wif, _dir, file) = wif_setup().await;
    let provider = wif_provider(&file, &wif.endpoint());
    for (token, want) in [
        (
            issuer.token(
                "system:serviceaccount:psi:default",
                AUDIENCE,
                600,
                serde_json::json!({}),
            ),
            "answered HTTP 400 Bad Request: invalid_target: no federated credential links subject system:serviceaccount:psi:default to service account ajeq2v3pl6bu8jqnvvaa",
        ),
        (
            issuer.token(
                SUBJECT,
                "https://kubernetes.default.svc",
                600,
                serde_json::json!({}),
            ),
            "answered HTTP 400 Bad Request: invalid_request: subject_token: aud [\"https://kubernetes.default.svc\"] holds none of the federation's audiences",
        ),
        (
            TestIssuer::new("https://other.example").token(
                SUBJECT,
                AUDIENCE,
                600,
                serde_json::json!({}),
            ),
            "invalid_request: subject_token: iss \"https://other.example\" is not the federation's issuer",
        ),
    ] {
        std::fs::write(&file, &token).unwrap();
        let e = provider.fetch().await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&wif.endpoint()) && text.contains(want),
            "{text}"
        );
        assert!(!e.is_transient(), "{text}");
        assert!(
            !text.contains(&token),
            "the subject token is never quoted: {text}"
        );
    }
    assert_eq!(wif.issued(), 0);
    // A token whose claims were changed after it was signed is refused.
    let mut forged: Vec<String> = issuer
        .token(SUBJECT, AUDIENCE, 600, serde_json::json!({}))
        .split('.')
        .map(str::to_string)
        .collect();
    forged[1] = issuer
        .token(SA_ID, AUDIENCE, 600, serde_json::json!({}))
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    std::fs::write(&file, forged.join(".")).unwrap();
    let e = provider.fetch().await.unwrap_err().to_string();
    assert!(e.contains("signature verification failed"), "{e}");
}

#[tokio::test]
async fn workload_identity_token_file_problems_are_found_before_anything_is_sent() {
    let (issuer, wif, dir, file) = wif_setup().await;
    let provider = wif_provider(&file, &wif.endpoint());
    std::fs::write(
        &file,
        issuer.token(SUBJECT, AUDIENCE, -30, serde_json::json!({})),
    )
    .unwrap();
    let e = provider.fetch().await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "ServiceAccount token file {}: the token expired at",
            file.display()
        )),
        "{e}"
    );
    assert_eq!(provider.validate().await.unwrap_err().to_string(), e);
    let missing = wif_provider(&dir.path().join("absent"), &wif.endpoint());
    let e = missing.fetch().await.unwrap_err().to_string();
    assert!(e.starts_with("reading ServiceAccount token file"), "{e}");
    assert!(wif.exchanges().is_empty(), "nothing was sent");
}

// ---- static sources ----

async fn static_fetch(source: CredentialSource) -> Result<Credential, CredentialError> {
    Provider::new(&source, &client()).unwrap().fetch().await
}

#[tokio::test]
async fn json_key_is_sent_verbatim_as_json_key_password() {
    let key = TestKey::shared(2048);
    let dir = tempfile::tempdir().unwrap();
    let file = key.write_key_file(dir.path(), true);
    let content = std::fs::read_to_string(&file).unwrap();
    let cred = static_fetch(CredentialSource::YandexJsonKey(FileSource {
        file: file.clone(),
    }))
    .await
    .unwrap();
    assert_eq!(cred.username(), Some("json_key"));
    assert_eq!(cred.password().unwrap().expose(), content);
    assert_eq!(cred.expires_at(), None);
    let data = cred.secret_data(&["cr.yandex"]);
    let parsed = dockerconfig::parse(data.expose()).unwrap();
    assert_eq!(parsed.auths["cr.yandex"].username, "json_key");
    assert_eq!(parsed.auths["cr.yandex"].password, content);
    // Debug shows neither the key nor the file.
    no_key_material(&format!("{cred:?} {data:?}"), key);
}

#[tokio::test]
async fn json_key_that_is_not_a_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.json");
    std::fs::write(&file, r#"{"id":"a","service_account_id":"b"}"#).unwrap();
    let e = static_fetch(CredentialSource::YandexJsonKey(FileSource {
        file: file.clone(),
    }))
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        format!(
            "json key file {}: missing field \"private_key\"",
            file.display()
        )
    );
}

#[tokio::test]
async fn json_key_in_the_rest_api_layout_is_refused_with_the_reason() {
    let key = TestKey::shared(2048);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.json");
    std::fs::write(&file, key.rest_key_json()).unwrap();
    let e = static_fetch(CredentialSource::YandexJsonKey(FileSource {
        file: file.clone(),
    }))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!(
            "json key file {}: a key in the IAM REST API layout",
            file.display()
        )),
        "{e}"
    );
    assert!(e.contains("use yandexAuthorizedKey"), "{e}");
    no_key_material(&e, key);
}

#[tokio::test]
async fn basic_password_loses_exactly_one_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    for (content, want) in [
        ("s3cr:et\n", "s3cr:et"),
        ("s3cret\r\n", "s3cret"),
        ("s3cret\n\n", "s3cret\n"),
        ("пароль", "пароль"),
    ] {
        std::fs::write(&file, content).unwrap();
        let cred = static_fetch(CredentialSource::Basic(Basic {
            username: "robot".into(),
            password_file: file.clone(),
        }))
        .await
        .unwrap();
        assert_eq!(cred.username(), Some("robot"));
        assert_eq!(cred.password().unwrap().expose(), want, "{content:?}");
        assert_eq!(cred.expires_at(), None);
    }
}

#[tokio::test]
async fn basic_with_empty_or_missing_password_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    for content in ["", "\n", "\r\n"] {
        std::fs::write(&file, content).unwrap();
        let e = static_fetch(CredentialSource::Basic(Basic {
            username: "robot".into(),
            password_file: file.clone(),
        }))
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(e, format!("password file {}: is empty", file.display()));
    }
    let missing = dir.path().join("nope");
    let e = static_fetch(CredentialSource::Basic(Basic {
        username: "robot".into(),
        password_file: missing.clone(),
    }))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!("reading password file {}: ", missing.display())),
        "{e}"
    );
}

#[tokio::test]
async fn docker_config_is_copied_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(".dockerconfigjson");
    let content =
        "{\n  \"auths\": {\n    \"ghcr.io\": { \"auth\": \"dXNlcjpzZWNyZXQ=\" }\n  }\n}\n";
    std::fs::write(&file, content).unwrap();
    let provider = Provider::new(
        &CredentialSource::DockerConfig(FileSource { file: file.clone() }),
        &client(),
    )
    .unwrap();
    assert_eq!(provider.kind(), "dockerConfig");
    assert_eq!(provider.files(), vec![file.clone()]);
    let cred = provider.fetch().await.unwrap();
    assert!(matches!(cred.data(), CredentialData::DockerConfig(_)));
    assert_eq!(cred.secret_data(&["other.io"]).expose(), content.as_bytes());
    assert_eq!(cred.expires_at(), None);
    assert!(!format!("{cred:?}").contains("dXNlcjpzZWNyZXQ"));
}

#[tokio::test]
async fn docker_config_without_auths_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(".dockerconfigjson");
    std::fs::write(&file, r#"{"credsStore":"desktop"}"#).unwrap();
    let e = static_fetch(CredentialSource::DockerConfig(FileSource {
        file: file.clone(),
    }))
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        format!(
            "docker config file {}: no \"auths\" object at the top level",
            file.display()
        )
    );
}
