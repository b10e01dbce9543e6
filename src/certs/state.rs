//! What the TLS Secret holds, read and written without I/O.
//!
//! ```text
//! tls.crt   the serving certificate (PEM)
//! tls.key   its private key (PKCS#8 PEM)
//! ca.crt    every CA the webhook configuration must trust, the signing CA first (PEM):
//!           exactly what goes into each webhook's clientConfig.caBundle
//! ca.key    the signing CA's private key (PKCS#8 PEM)
//! ```
//!
//! The type is `kubernetes.io/tls`, so the API server checks `tls.crt`/`tls.key` are present
//! and other tools read the pair the usual way. What cannot be read is dropped with a reason:
//! the plan then replaces it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;

use super::pki::{CertInfo, Fingerprint, Issued};
use crate::credentials::Secret;

/// `tls.crt`.
pub const TLS_CRT: &str = "tls.crt";
/// `tls.key`.
pub const TLS_KEY: &str = "tls.key";
/// `ca.crt`.
pub const CA_CRT: &str = "ca.crt";
/// `ca.key`.
pub const CA_KEY: &str = "ca.key";

/// The Secret's content, as far as it can be used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The CAs of `ca.crt` that parse and are CAs, in order, without duplicates.
    pub bundle: Vec<CertInfo>,
    /// `ca.key`, when it is the key of a CA in `bundle`: that CA's position and the key.
    pub signer: Option<(usize, Secret)>,
    /// `tls.crt` (its first certificate) and `tls.key`, when the key fits.
    pub serving: Option<(CertInfo, Secret)>,
}

impl Stored {
    /// Read the Secret's data; the second value lists what was dropped and why.
    pub fn decode(data: &BTreeMap<String, ByteString>) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let get = |k: &str| data.get(k).map(|b| b.0.as_slice());
        let mut bundle: Vec<CertInfo> = Vec::new();
        match get(CA_CRT).map(CertInfo::from_pem_bundle) {
            None => problems.push(format!("no {CA_CRT}")),
            Some(Err(e)) => problems.push(format!("{CA_CRT}: {e}")),
            Some(Ok(certs)) => {
                for c in certs {
                    if !c.is_ca {
                        problems.push(format!("{CA_CRT}: {} is not a CA", c.fingerprint));
                    } else if !bundle.iter().any(|b| b.fingerprint == c.fingerprint) {
                        bundle.push(c);
                    }
                }
            }
        }
        let signer = match get(CA_KEY).map(|k| Secret::new(String::from_utf8_lossy(k))) {
            None => {
                problems.push(format!("no {CA_KEY}"));
                None
            }
            Some(key) => match bundle.iter().position(|c| c.fits_key(&key)) {
                Some(i) => Some((i, key)),
                None => {
                    problems.push(format!("{CA_KEY} is the key of no CA in {CA_CRT}"));
                    None
                }
            },
        };
        let serving = match (get(TLS_CRT), get(TLS_KEY)) {
            (Some(crt), Some(key)) => match CertInfo::from_pem_bundle(crt) {
                Ok(mut certs) => {
                    let leaf = certs.remove(0);
                    let key = Secret::new(String::from_utf8_lossy(key));
                    if leaf.fits_key(&key) {
                        Some((leaf, key))
                    } else {
                        problems.push(format!("{TLS_KEY} does not fit {TLS_CRT}"));
                        None
                    }
                }
                Err(e) => {
                    problems.push(format!("{TLS_CRT}: {e}"));
                    None
                }
            },
            _ => {
                problems.push(format!("no {TLS_CRT} and {TLS_KEY}"));
                None
            }
        };
        (
            Self {
                bundle,
                signer,
                serving,
            },
            problems,
        )
    }

    /// The Secret's data for this content (absent parts are left out).
    pub fn encode(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            data.insert(k.to_string(), ByteString(v.into_bytes()));
        };
        if !self.bundle.is_empty() {
            put(CA_CRT, self.bundle_pem());
        }
        if let Some((_, key)) = &self.signer {
            put(CA_KEY, key.expose().to_string());
        }
        if let Some((cert, key)) = &self.serving {
            put(TLS_CRT, cert.pem());
            put(TLS_KEY, key.expose().to_string());
        }
        data
    }

    /// The CA bundle as PEM, in order: the `caBundle` of every webhook.
    pub fn bundle_pem(&self) -> String {
        self.bundle.iter().map(CertInfo::pem).collect()
    }

    /// The signing CA.
    pub fn signer_cert(&self) -> Option<&CertInfo> {
        self.signer.as_ref().and_then(|(i, _)| self.bundle.get(*i))
    }

    /// The fingerprints of the bundle, in order.
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        self.bundle.iter().map(|c| c.fingerprint).collect()
    }

    /// Make `ca` the signing CA, first in the bundle.
    pub fn with_new_signer(mut self, ca: Issued) -> Self {
        self.bundle.retain(|c| c.fingerprint != ca.info.fingerprint);
        self.bundle.insert(0, ca.info);
        self.signer = Some((0, ca.key_pem));
        self
    }

    /// Serve `serving` from now on.
    pub fn with_serving(mut self, serving: Issued) -> Self {
        self.serving = Some((serving.info, serving.key_pem));
        self
    }

    /// Drop these CAs from the bundle (never the signer).
    pub fn without(mut self, drop: &[Fingerprint]) -> Self {
        let signer = self.signer_cert().map(|c| c.fingerprint);
        self.bundle
            .retain(|c| Some(c.fingerprint) == signer || !drop.contains(&c.fingerprint));
        if let Some((i, _)) = &mut self.signer {
            *i = self
                .bundle
                .iter()
                .position(|c| Some(c.fingerprint) == signer)
                .unwrap_or(0);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::pki::{new_ca, new_serving};
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn data(pairs: &[(&str, String)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
            .collect()
    }

    #[test]
    fn a_written_state_reads_back_the_same() {
        let old = new_ca("old", NOW, Duration::from_secs(3600)).unwrap();
        let ca = new_ca("new", NOW, Duration::from_secs(3600)).unwrap();
        let leaf = new_serving(
            &ca.info,
            &ca.key_pem,
            &["a.svc".into()],
            &[],
            NOW,
            Duration::from_secs(60),
        )
        .unwrap();
        let s = Stored::default()
            .with_new_signer(old)
            .with_new_signer(ca.clone())
            .with_serving(leaf);
        assert_eq!(s.bundle.len(), 2);
        assert_eq!(s.signer_cert(), Some(&ca.info));
        let (back, problems) = Stored::decode(&s.encode());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(back, s);
    }

    #[test]
    fn what_cannot_be_used_is_dropped_with_a_reason() {
        assert_eq!(
            Stored::decode(&BTreeMap::new()).1,
            ["no ca.crt", "no ca.key", "no tls.crt and tls.key"]
        );
        let ca = new_ca("ca", NOW, Duration::from_secs(3600)).unwrap();
        let other = new_ca("other", NOW, Duration::from_secs(3600)).unwrap();
        let leaf = new_serving(
            &ca.info,
            &ca.key_pem,
            &["a.b".into()],
            &[],
            NOW,
            Duration::from_secs(60),
        )
        .unwrap();
        let (s, problems) = Stored::decode(&data(&[
            (
                CA_CRT,
                format!("{}{}{}", ca.info.pem(), leaf.info.pem(), ca.info.pem()),
            ),
            (CA_KEY, other.key_pem.expose().to_string()),
            (TLS_CRT, leaf.info.pem()),
            (TLS_KEY, ca.key_pem.expose().to_string()),
        ]));
        assert_eq!(s.bundle, vec![ca.info.clone()]);
        assert!(s.signer.is_none() && s.serving.is_none());
        assert_eq!(
            problems,
            [
                format!("ca.crt: {} is not a CA", leaf.info.fingerprint),
                "ca.key is the key of no CA in ca.crt".to_string(),
                "tls.key does not fit tls.crt".to_string(),
            ]
        );
        let (_, problems) = Stored::decode(&data(&[(CA_CRT, "garbage".into())]));
        assert_eq!(
            problems[0],
            "ca.crt: reading PEM certificates: no PEM certificate found"
        );
    }

    #[test]
    fn dropping_cas_keeps_the_signer() {
        let a = new_ca("a", NOW, Duration::from_secs(3600)).unwrap();
        let b = new_ca("b", NOW, Duration::from_secs(3600)).unwrap();
        let s = Stored::default()
            .with_new_signer(a.clone())
            .with_new_signer(b.clone());
        let s = s.without(&[a.info.fingerprint, b.info.fingerprint]);
        assert_eq!(s.fingerprints(), vec![b.info.fingerprint]);
        assert_eq!(s.signer_cert(), Some(&b.info));
        let s = Stored::default().with_new_signer(a.clone());
        let mut s2 = s.clone();
        s2.bundle.insert(0, b.info.clone());
        s2.signer = Some((1, a.key_pem.clone()));
        let s2 = s2.without(&[b.info.fingerprint]);
        assert_eq!(s2.signer_cert(), Some(&a.info));
    }
}
