//! TLS for the webhook: rustls with the ring provider only, and certificate hot reload.
//!
//! kubelet updates a mounted Secret by swapping a symlink (`..data`) in the volume, so inotify
//! on the file path misses it and mtime is unreliable. We re-read both files on a timer and
//! compare a hash of their content; when it changes we parse the pair and, only if it is a
//! valid matching pair, swap it in. Broken files leave the old certificate serving and are
//! logged once per distinct content. The server's `ServerConfig` never changes: a resolver
//! hands out the current `CertifiedKey` on each handshake.
//!
//! With a certificate managed by the injector itself ([`crate::certs`]) there are no files:
//! the store starts empty (handshakes fail and readiness is false until a pair arrives) and
//! pairs are handed in as PEM through [`CertStore::install_pem`], with the same rules (same
//! content: nothing happens; a broken pair: the old one keeps serving).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Install ring as the process-wide rustls provider. Call once at start, before any config
/// is built (kube's client builds one too). Repeated calls are harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate or key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading failed.
    #[error("reading TLS {what} {path}: {source}")]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// No usable PEM block.
    #[error("reading TLS {what} {path}: {message}")]
    Pem {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key does not fit the certificate, or is of an unsupported type.
    #[error("TLS key {key} does not fit certificate {cert}: {message}")]
    Pair {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What rustls said.
        message: String,
    },
    /// The rustls configuration could not be built.
    #[error("building TLS config: {0}")]
    Config(String),
}

/// The certificate pair in use, swapped atomically on reload.
pub struct CertStore {
    /// Where pairs come from: the files, or `None` when they are handed in as PEM.
    files: Option<(PathBuf, PathBuf)>,
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// Hash of the content last looked at (good or bad), to log a broken pair only once.
    seen: Mutex<[u8; 32]>,
    /// Set to the serving certificate's `notAfter` (Unix seconds) on every swap.
    expiry: Option<Gauge<f64, AtomicU64>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("files", &self.files)
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

/// Whether a reload changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Same content as before.
    Unchanged,
    /// A new pair is serving.
    Reloaded,
    /// The files changed but are not a valid pair; the old pair keeps serving.
    Rejected,
}

impl CertStore {
    /// Load the pair; fails when the files are missing or broken (the server cannot start).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let (hash, key) = read_pair(cert_path, key_path)?;
        let key = key?;
        tracing::info!(cert = %cert_path.display(), sha256 = %hex(&hash[..8]), "TLS certificate loaded");
        Ok(Self {
            files: Some((cert_path.to_path_buf(), key_path.to_path_buf())),
            current: RwLock::new(Some(Arc::new(key))),
            seen: Mutex::new(hash),
            expiry: None,
        })
    }

    /// A store with no pair yet, filled through [`CertStore::install_pem`]: until then every
    /// handshake fails.
    pub fn empty() -> Self {
        Self {
            files: None,
            current: RwLock::new(None),
            seen: Mutex::new([0; 32]),
            expiry: None,
        }
    }

    /// Publish the serving certificate's expiry (Unix seconds) in `gauge`, now and on every swap.
    pub fn with_expiry_gauge(mut self, gauge: Gauge<f64, AtomicU64>) -> Self {
        if let Some(t) = self.current().and_then(|k| not_after(&k)) {
            gauge.set(t as f64);
        }
        self.expiry = Some(gauge);
        self
    }

    /// Whether a pair is serving.
    pub fn is_loaded(&self) -> bool {
        self.current().is_some()
    }

    /// `notAfter` of the serving certificate in use (Unix seconds).
    pub fn not_after(&self) -> Option<i64> {
        self.current().and_then(|k| not_after(&k))
    }

    /// Re-read the files and swap the pair in when their content changed and is valid.
    /// A store without files never changes here.
    pub fn reload(&self) -> Reload {
        let Some((cert_path, key_path)) = &self.files else {
            return Reload::Unchanged;
        };
        let (hash, parsed) = match read_pair(cert_path, key_path) {
            Ok(r) => r,
            Err(e) => {
                // Unreadable (e.g. mid-swap); try again next tick, keep serving.
                tracing::debug!(error = %e, "TLS files not readable; keeping the current certificate");
                return Reload::Unchanged;
            }
        };
        self.swap(hash, parsed, &cert_path.display().to_string())
    }

    /// Serve this PEM pair (`origin` names where it came from, for logs and errors) when it
    /// differs from the last one handed in and is valid; a broken pair leaves the current
    /// one serving.
    pub fn install_pem(&self, cert_pem: &[u8], key_pem: &[u8], origin: &str) -> Reload {
        let hash = content_hash(cert_pem, key_pem);
        if *self.seen.lock().unwrap_or_else(|p| p.into_inner()) == hash {
            return Reload::Unchanged;
        }
        let cert_path = PathBuf::from(format!("{origin} tls.crt"));
        let key_path = PathBuf::from(format!("{origin} tls.key"));
        let parsed = parse_pair(&cert_path, cert_pem, &key_path, key_pem);
        self.swap(hash, parsed, origin)
    }

    fn swap(&self, hash: [u8; 32], parsed: Parsed, origin: &str) -> Reload {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == hash {
            return Reload::Unchanged;
        }
        *seen = hash;
        match parsed {
            Ok(key) => {
                let expires = not_after(&key);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
                if let (Some(g), Some(t)) = (&self.expiry, expires) {
                    g.set(t as f64);
                }
                tracing::info!(cert = %origin, sha256 = %hex(&hash[..8]), not_after = ?expires, "TLS certificate reloaded");
                Reload::Reloaded
            }
            Err(e) => {
                tracing::warn!(error = %e, "new TLS certificate is not usable; the previous certificate keeps serving");
                Reload::Rejected
            }
        }
    }

    /// Re-check the files every `interval` until `shutdown` resolves.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    let store = self.clone();
                    // File reads are blocking; keep them off the reactor.
                    let _ = tokio::task::spawn_blocking(move || store.reload()).await;
                }
            }
        }
    }

    /// The pair in use, if any.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A rustls server config (TLS 1.3 and 1.2, ALPN h2 and http/1.1) serving this store.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

type Parsed = Result<CertifiedKey, TlsError>;

/// Read both files; the outer error is I/O, the inner one is about their content.
fn read_pair(cert_path: &Path, key_path: &Path) -> Result<([u8; 32], Parsed), TlsError> {
    let cert_pem = std::fs::read(cert_path).map_err(|source| TlsError::Read {
        what: "certificate",
        path: cert_path.to_path_buf(),
        source,
    })?;
    let key_pem = std::fs::read(key_path).map_err(|source| TlsError::Read {
        what: "key",
        path: key_path.to_path_buf(),
        source,
    })?;
    let hash = content_hash(&cert_pem, &key_pem);
    Ok((hash, parse_pair(cert_path, &cert_pem, key_path, &key_pem)))
}

fn content_hash(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert_pem.len() as u64).to_le_bytes());
    h.update(cert_pem);
    h.update(key_pem);
    h.finalize().into()
}

/// `notAfter` of the pair's end-entity certificate, Unix seconds.
fn not_after(key: &CertifiedKey) -> Option<i64> {
    let der = key.end_entity_cert().ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn parse_pair(cert_path: &Path, cert_pem: &[u8], key_path: &Path, key_pem: &[u8]) -> Parsed {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificate",
            path: cert_path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate",
            path: cert_path.to_path_buf(),
            message: "no PEM certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        what: "key",
        path: key_path.to_path_buf(),
        message: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PEM private key found".into(),
            other => other.to_string(),
        },
    })?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| TlsError::Pair {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        message: e.to_string(),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::certs::pki::{new_ca, new_serving};

    fn pair(not_after_in: u64) -> (Vec<u8>, Vec<u8>, i64) {
        let now = jiff::Timestamp::now().as_second();
        let ca = new_ca("ca", now, Duration::from_secs(3600)).unwrap();
        let leaf = new_serving(
            &ca.info,
            &ca.key_pem,
            &["a.svc".into()],
            &[],
            now,
            Duration::from_secs(not_after_in),
        )
        .unwrap();
        (
            leaf.info.pem().into_bytes(),
            leaf.key_pem.expose().as_bytes().to_vec(),
            leaf.info.not_after,
        )
    }

    #[test]
    fn an_empty_store_serves_nothing_until_a_valid_pair_is_handed_in() {
        install_crypto_provider();
        let gauge = Gauge::<f64, AtomicU64>::default();
        let store = CertStore::empty().with_expiry_gauge(gauge.clone());
        assert!(!store.is_loaded() && store.current().is_none());
        assert_eq!(store.reload(), Reload::Unchanged, "no files to re-read");
        assert_eq!(gauge.get(), 0.0);

        let (crt, key, not_after) = pair(600);
        assert_eq!(store.install_pem(&crt, &key, "test"), Reload::Reloaded);
        assert!(store.is_loaded());
        assert_eq!(store.not_after(), Some(not_after));
        assert_eq!(gauge.get(), not_after as f64);
        assert_eq!(store.install_pem(&crt, &key, "test"), Reload::Unchanged);

        // A key that does not fit, then garbage: refused, the pair in use stays.
        let (other_crt, _, _) = pair(300);
        assert_eq!(
            store.install_pem(&other_crt, &key, "test"),
            Reload::Rejected
        );
        assert_eq!(
            store.install_pem(b"junk", b"junk", "test"),
            Reload::Rejected
        );
        assert_eq!(store.not_after(), Some(not_after));

        let (crt2, key2, not_after2) = pair(1200);
        assert_eq!(store.install_pem(&crt2, &key2, "test"), Reload::Reloaded);
        assert_eq!(gauge.get(), not_after2 as f64);
    }
}
