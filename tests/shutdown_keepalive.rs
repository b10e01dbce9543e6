//! The webhook server during its shutdown delay: HTTP/1.1 keep-alive connections (what
//! kube-apiserver uses for a webhook registered by Service) are answered once more, with
//! `Connection: close`, and then closed by the server, so that the client never sends a
//! request on a connection the server is about to close (tests/e2e_install.rs shows what that
//! costs: a Pod admitted without its Secret during `helm upgrade`).

mod cluster;

use std::sync::Arc;
use std::time::Duration;

use pullsecret_injector::admission::Admission;
use pullsecret_injector::health::Health;
use pullsecret_injector::metrics::Metrics;
use pullsecret_injector::registry::{HostPattern, Registries, RegistryEntry};
use pullsecret_injector::server::{self, Limits};
use pullsecret_injector::tls::CertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const FIXTURE: &str = include_str!("fixtures/admission-review-pod-create.json");

async fn start() -> (u16, Vec<u8>, Arc<Health>, tempfile::TempDir) {
    pullsecret_injector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = cluster::Certs::generate(&dir.path().join("certs"));
    let store = Arc::new(CertStore::load(&certs.cert(), &certs.key()).unwrap());
    let entries = vec![RegistryEntry::new(
        "yandex",
        "yc-registry-secret",
        vec![HostPattern::parse("cr.yandex").unwrap()],
    )];
    let admission = Admission::new(
        Registries::new(entries),
        "pullsecret-injector.io/skip".into(),
        Metrics::new(),
    );
    let health = Health::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server::serve_tls(
        listener,
        store.server_config().unwrap(),
        server::closing_connections_on_shutdown(
            server::webhook_router(Arc::new(admission)),
            health.clone(),
        ),
        Limits::default(),
        std::future::pending(),
    ));
    (port, certs.ca_pem, health, dir)
}

async fn connect(port: u16, ca_pem: &[u8], alpn: &[u8]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// One POST /mutate on `s`; the answer's head (status line and headers, lowercased).
async fn review(s: &mut TlsStream<TcpStream>) -> String {
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        FIXTURE.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(FIXTURE.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= len {
                return head.to_ascii_lowercase();
            }
        }
    }
}

#[tokio::test]
async fn keep_alive_connections_are_closed_by_their_next_answer_once_shutdown_began() {
    let (port, ca, health, _dir) = start().await;
    let mut s = connect(port, &ca, b"http/1.1").await;
    let head = review(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        !head.contains("connection: close"),
        "before shutdown: {head}"
    );
    // The same connection is kept alive and serves again.
    let head = review(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    health.set_shutting_down();
    // Still served (the shutdown delay), but this answer closes the connection ...
    let head = review(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("connection: close"),
        "during the shutdown delay: {head}"
    );
    // ... and the server closes it right after.
    let mut rest = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut rest))
        .await
        .expect("the server closes the connection");
    assert!(matches!(n, Ok(0) | Err(_)), "connection still open: {n:?}");

    // New connections are still served during the delay, each closed after its answer.
    let mut s = connect(port, &ca, b"http/1.1").await;
    let head = review(&mut s).await;
    assert!(
        head.starts_with("http/1.1 200") && head.contains("connection: close"),
        "{head}"
    );
}
