//! The webhook's certificate is reloaded when its files change the way kubelet changes a
//! mounted Secret (an atomic swap of the `..data` symlink), and a broken pair never replaces
//! a working one. Real TLS handshakes against the real server loop.

mod cluster;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pullsecret_injector::server::{self, Limits};
use pullsecret_injector::tls::{CertStore, Reload};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A kubelet-style Secret volume: `<dir>/tls.crt -> ..data/tls.crt`, `..data -> ..<version>`.
struct SecretVolume {
    dir: PathBuf,
    n: u32,
}

impl SecretVolume {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        symlink("..data/tls.key", dir.join("tls.key")).unwrap();
        Self {
            dir: dir.to_path_buf(),
            n: 0,
        }
    }

    /// Publish new content the way kubelet does: new folder, then rename a new symlink
    /// over `..data`.
    fn publish(&mut self, cert: &[u8], key: &[u8]) {
        self.n += 1;
        let version = format!("..v{}", self.n);
        let d = self.dir.join(&version);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("tls.crt"), cert).unwrap();
        std::fs::write(d.join("tls.key"), key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}

fn generate(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let c = cluster::Certs::generate(dir);
    (
        std::fs::read(c.cert()).unwrap(),
        std::fs::read(c.key()).unwrap(),
        c.ca_pem,
    )
}

/// Handshake with 127.0.0.1 trusting `cas`; returns the leaf certificate the server showed.
async fn served_cert(port: u16, cas: &[&[u8]]) -> Result<Vec<u8>, String> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        for c in CertificateDer::pem_slice_iter(ca) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok(leaf)
}

fn der(pem: &[u8]) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

async fn start(store: &Arc<CertStore>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server::serve_tls(
        listener,
        store.server_config().unwrap(),
        axum::Router::new(),
        Limits::default(),
        std::future::pending(),
    ));
    port
}

#[tokio::test]
async fn symlink_swap_is_picked_up_and_broken_files_keep_the_old_certificate() {
    pullsecret_injector::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let (cert_a, key_a, ca_a) = generate(&tmp.path().join("a"));
    let (cert_b, key_b, ca_b) = generate(&tmp.path().join("b"));
    let mut vol = SecretVolume::new(&tmp.path().join("vol"));
    vol.publish(&cert_a, &key_a);

    let store = Arc::new(CertStore::load(&vol.cert(), &vol.key()).unwrap());
    let port = start(&store).await;
    let cas: &[&[u8]] = &[&ca_a, &ca_b];
    assert_eq!(served_cert(port, cas).await.unwrap(), der(&cert_a));
    assert_eq!(store.reload(), Reload::Unchanged);

    vol.publish(&cert_b, &key_b);
    assert_eq!(store.reload(), Reload::Reloaded);
    assert_eq!(served_cert(port, cas).await.unwrap(), der(&cert_b));

    // A key that does not fit the certificate is refused; B keeps serving.
    vol.publish(&cert_a, &key_b);
    assert_eq!(store.reload(), Reload::Rejected);
    assert_eq!(served_cert(port, cas).await.unwrap(), der(&cert_b));
    // Garbage is refused too, and is not retried while the content stays the same.
    vol.publish(b"not a certificate", b"not a key");
    assert_eq!(store.reload(), Reload::Rejected);
    assert_eq!(store.reload(), Reload::Unchanged);
    assert_eq!(served_cert(port, cas).await.unwrap(), der(&cert_b));

    // Fixing the files recovers.
    vol.publish(&cert_a, &key_a);
    assert_eq!(store.reload(), Reload::Reloaded);
    assert_eq!(served_cert(port, cas).await.unwrap(), der(&cert_a));
}

#[tokio::test]
async fn watch_loop_reloads_on_its_own() {
    pullsecret_injector::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let (cert_a, key_a, ca_a) = generate(&tmp.path().join("a"));
    let (cert_b, key_b, ca_b) = generate(&tmp.path().join("b"));
    let mut vol = SecretVolume::new(&tmp.path().join("vol"));
    vol.publish(&cert_a, &key_a);
    let store = Arc::new(CertStore::load(&vol.cert(), &vol.key()).unwrap());
    let port = start(&store).await;
    tokio::spawn(
        store
            .clone()
            .watch(Duration::from_millis(50), std::future::pending()),
    );
    vol.publish(&cert_b, &key_b);
    let want = der(&cert_b);
    let cas: &[&[u8]] = &[&ca_a, &ca_b];
    cluster::poll(
        "the watch loop to serve the new certificate",
        Duration::from_secs(10),
        || async { (served_cert(port, cas).await.ok()? == want).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn broken_files_at_start_are_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key, _) = generate(&tmp.path().join("a"));
    let dir = tmp.path();
    std::fs::write(dir.join("garbage.pem"), b"hello").unwrap();
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    let e = CertStore::load(&dir.join("missing.pem"), &dir.join("key.pem"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("reading TLS certificate ") && e.contains("missing.pem"),
        "{e}"
    );
    let e = CertStore::load(&dir.join("garbage.pem"), &dir.join("key.pem"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("garbage.pem") && e.contains("no PEM certificate found"),
        "{e}"
    );
    let e = CertStore::load(&dir.join("cert.pem"), &dir.join("garbage.pem"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("garbage.pem") && e.contains("no PEM private key found"),
        "{e}"
    );
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_are_offered() {
    pullsecret_injector::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let c = cluster::Certs::generate(&tmp.path().join("a"));
    let store = Arc::new(CertStore::load(&c.cert(), &c.key()).unwrap());
    let config = store.server_config().unwrap();
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let port = start(&store).await;
    // A TLS 1.2-only client still connects (the API server's Go client may be configured so).
    let mut roots = RootCertStore::empty();
    roots.add(der(&c.ca_pem).into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}
