//! Make the webhook's CA and serving certificates (rcgen on ring) and read certificates back
//! (x509-parser): validity, names, which CA signed what, which key fits which certificate.
//!
//! Keys are ECDSA P-256 (what Go's TLS stack and rustls both handle fastest). Every
//! certificate starts a minute in the past, so that an API server whose clock is a little
//! behind does not see a certificate from the future; a serving certificate never outlives
//! its CA.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::credentials::Secret;

/// How far back a new certificate's `notBefore` is set (clock skew between machines).
pub const BACKDATE_SECONDS: i64 = 60;

/// A certificate that could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or the key.
    #[error("{what}: {source}")]
    Generate {
        /// What was being made.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// Not a DER X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    Parse(String),
    /// A PEM text without a certificate, or with a broken block.
    #[error("reading PEM certificates: {0}")]
    Pem(String),
}

/// SHA-256 of a certificate's DER: how certificates are told apart (in logs, its first 8 bytes
/// in hex).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What the rotation needs to know about one certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The DER bytes.
    pub der: Vec<u8>,
    /// SHA-256 of `der`.
    pub fingerprint: Fingerprint,
    /// `notBefore`, Unix seconds.
    pub not_before: i64,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// Basic constraints say CA.
    pub is_ca: bool,
    /// DNS names in the subject alternative names.
    pub dns_names: Vec<String>,
    /// IP addresses in the subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// The DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
}

impl fmt::Debug for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertInfo")
            .field("fingerprint", &self.fingerprint)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("is_ca", &self.is_ca)
            .field("dns_names", &self.dns_names)
            .field("ip_addresses", &self.ip_addresses)
            .finish_non_exhaustive()
    }
}

impl CertInfo {
    /// Read a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (rest, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PkiError::Parse(format!(
                "{} bytes after the certificate",
                rest.len()
            )));
        }
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(n) => {
                        dns_names.push((*n).to_string())
                    }
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            ip_addresses.push(IpAddr::from(a));
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            ip_addresses.push(IpAddr::from(a));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            der: der.to_vec(),
            fingerprint: Fingerprint(Sha256::digest(der).into()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            dns_names,
            ip_addresses,
            spki: cert.public_key().raw.to_vec(),
        })
    }

    /// Every certificate in a PEM text, in order; fails on a broken block or none at all.
    pub fn from_pem_bundle(pem: &[u8]) -> Result<Vec<Self>, PkiError> {
        let ders = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PkiError::Pem(e.to_string()))?;
        if ders.is_empty() {
            return Err(PkiError::Pem("no PEM certificate found".into()));
        }
        ders.iter().map(|d| Self::from_der(d)).collect()
    }

    /// The certificate as a PEM block.
    pub fn pem(&self) -> String {
        pem_block("CERTIFICATE", &self.der)
    }

    /// Whether `issuer`'s key made this certificate's signature.
    pub fn signed_by(&self, issuer: &CertInfo) -> bool {
        let (Ok((_, child)), Ok((_, parent))) = (
            x509_parser::parse_x509_certificate(&self.der),
            x509_parser::parse_x509_certificate(&issuer.der),
        ) else {
            return false;
        };
        child.verify_signature(Some(parent.public_key())).is_ok()
    }

    /// Whether the PEM private key `key_pem` is this certificate's key.
    pub fn fits_key(&self, key_pem: &Secret) -> bool {
        KeyPair::from_pem(key_pem.expose()).is_ok_and(|k| k.subject_public_key_info() == self.spki)
    }

    /// Whether it names exactly these DNS names and addresses (in any order).
    pub fn names_exactly(&self, dns_names: &[String], ip_addresses: &[IpAddr]) -> bool {
        let mut a = self.dns_names.clone();
        let mut b = dns_names.to_vec();
        a.sort();
        a.dedup();
        b.sort();
        b.dedup();
        let mut c = self.ip_addresses.clone();
        let mut d = ip_addresses.to_vec();
        c.sort();
        c.dedup();
        d.sort();
        d.dedup();
        a == b && c == d
    }
}

/// A certificate just made, with its private key.
#[derive(Clone)]
pub struct Issued {
    /// What it is.
    pub info: CertInfo,
    /// Its PKCS#8 PEM private key.
    pub key_pem: Secret,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("info", &self.info)
            .field("key_pem", &self.key_pem)
            .finish()
    }
}

/// A new self-signed CA named `name`, valid from a minute before `now` for `validity`.
pub fn new_ca(name: &str, now: i64, validity: Duration) -> Result<Issued, PkiError> {
    let gen_err = |source| PkiError::Generate {
        what: "making a CA",
        source,
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, now.saturating_add(secs(validity)))?;
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(Issued {
        info: CertInfo::from_der(cert.der())?,
        key_pem: Secret::new(key.serialize_pem()),
    })
}

/// A new serving certificate for these names, signed by `ca` (whose key is `ca_key_pem`),
/// valid from a minute before `now` until `now + validity` or the CA's end, whichever is first.
pub fn new_serving(
    ca: &CertInfo,
    ca_key_pem: &Secret,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
    now: i64,
    validity: Duration,
) -> Result<Issued, PkiError> {
    let gen_err = |source| PkiError::Generate {
        what: "making the serving certificate",
        source,
    };
    let ca_key = KeyPair::from_pem(ca_key_pem.expose()).map_err(gen_err)?;
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca.der.as_slice()), ca_key)
        .map_err(gen_err)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = dns_names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, cn.as_str());
    }
    for n in dns_names {
        let name = n.clone().try_into().map_err(gen_err)?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    for a in ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*a));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let end = now.saturating_add(secs(validity)).min(ca.not_after);
    set_validity(&mut params, now, end)?;
    params.serial_number = Some(random_serial()?);
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    Ok(Issued {
        info: CertInfo::from_der(cert.der())?,
        key_pem: Secret::new(key.serialize_pem()),
    })
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn set_validity(params: &mut CertificateParams, now: i64, end: i64) -> Result<(), PkiError> {
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|e| PkiError::Parse(format!("time {t} out of range: {e}")))
    };
    params.not_before = at(now - BACKDATE_SECONDS)?;
    params.not_after = at(end)?;
    Ok(())
}

/// 16 random bytes, first bit clear (a positive DER integer).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| PkiError::Parse("no randomness for a serial number".into()))?;
    b[0] &= 0x7f;
    b[0] |= 0x01;
    Ok(SerialNumber::from_slice(&b))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_serving_certificate_chains_to_its_ca_and_names_what_was_asked() {
        let ca = new_ca("psi CA", NOW, Duration::from_secs(3600)).unwrap();
        assert!(ca.info.is_ca);
        assert_eq!(ca.info.not_before, NOW - 60);
        assert_eq!(ca.info.not_after, NOW + 3600);
        assert!(ca.info.signed_by(&ca.info));
        assert!(ca.info.fits_key(&ca.key_pem));
        let names = vec!["psi.ns.svc".to_string(), "psi".to_string()];
        let ips = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let leaf = new_serving(
            &ca.info,
            &ca.key_pem,
            &names,
            &ips,
            NOW,
            Duration::from_secs(600),
        )
        .unwrap();
        assert!(!leaf.info.is_ca);
        assert!(leaf.info.signed_by(&ca.info));
        assert!(!ca.info.signed_by(&leaf.info));
        assert!(leaf.info.fits_key(&leaf.key_pem));
        assert!(!leaf.info.fits_key(&ca.key_pem));
        assert_eq!(leaf.info.not_after, NOW + 600);
        assert!(leaf.info.names_exactly(&names, &ips));
        assert!(!leaf.info.names_exactly(&names[..1], &ips));
        let other = new_ca("other", NOW, Duration::from_secs(3600)).unwrap();
        assert!(!leaf.info.signed_by(&other.info));
    }

    #[test]
    fn a_serving_certificate_never_outlives_its_ca() {
        let ca = new_ca("psi CA", NOW, Duration::from_secs(100)).unwrap();
        let leaf = new_serving(
            &ca.info,
            &ca.key_pem,
            &["a.b".into()],
            &[],
            NOW + 50,
            Duration::from_secs(1000),
        )
        .unwrap();
        assert_eq!(leaf.info.not_after, ca.info.not_after);
    }

    #[test]
    fn pem_round_trips_and_serials_differ() {
        let a = new_ca("a", NOW, Duration::from_secs(100)).unwrap();
        let b = new_ca("a", NOW, Duration::from_secs(100)).unwrap();
        assert_ne!(a.info.fingerprint, b.info.fingerprint);
        let bundle = format!("{}{}", a.info.pem(), b.info.pem());
        let back = CertInfo::from_pem_bundle(bundle.as_bytes()).unwrap();
        assert_eq!(back, vec![a.info.clone(), b.info.clone()]);
        assert!(CertInfo::from_pem_bundle(b"").is_err());
        assert!(
            CertInfo::from_pem_bundle(
                b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
            )
            .is_err()
        );
        assert_eq!(format!("{:?}", a.key_pem), "[redacted]");
        assert!(!format!("{a:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn rustls_serves_the_pair_and_verifies_it_against_the_ca() {
        crate::tls::install_crypto_provider();
        let ca = new_ca(
            "psi CA",
            jiff::Timestamp::now().as_second(),
            Duration::from_secs(3600),
        )
        .unwrap();
        let leaf = new_serving(
            &ca.info,
            &ca.key_pem,
            &["psi.ns.svc".into()],
            &["127.0.0.1".parse().unwrap()],
            jiff::Timestamp::now().as_second(),
            Duration::from_secs(600),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.info.der.clone()))
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("psi.ns.svc").unwrap();
        let ip = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let now = rustls_pki_types::UnixTime::now();
        let end = CertificateDer::from(leaf.info.der.clone());
        verifier
            .verify_server_cert(&end, &[], &name, &[], now)
            .unwrap();
        verifier
            .verify_server_cert(&end, &[], &ip, &[], now)
            .unwrap();
        let wrong = rustls_pki_types::ServerName::try_from("other.svc").unwrap();
        assert!(
            verifier
                .verify_server_cert(&end, &[], &wrong, &[], now)
                .is_err()
        );
    }
}
