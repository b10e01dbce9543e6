//! `webhook.managedCertificate:` in the config file, its defaults and its validation.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default lifetime of a CA the injector creates.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of a serving certificate the injector issues.
pub const DEFAULT_CERTIFICATE_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default time a new CA stays in `caBundle` before a certificate it signed is served.
pub const DEFAULT_PUBLISH_DELAY: Duration = Duration::from_secs(60);

/// `webhook.managedCertificate:`: the injector keeps its own CA and serving certificate in a
/// Secret and the CA in the MutatingWebhookConfiguration's `caBundle`, and rotates both.
/// `webhook.tlsCertFile` and `tlsKeyFile` are not read then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagedCertificateConfig {
    /// The Secret (type `kubernetes.io/tls`, in the injector's own namespace) holding the
    /// serving pair, the trusted CAs and the signing CA's key.
    pub secret_name: String,
    /// The MutatingWebhookConfiguration whose webhooks' `clientConfig.caBundle` the injector
    /// writes (every webhook in it).
    pub webhook_configuration: String,
    /// DNS names of the serving certificate (the Service's names).
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// IP addresses of the serving certificate (URL mode on an address).
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    /// Lifetime of a CA; a new one is made when less than a third is left.
    #[serde(default = "default_ca_validity", with = "crate::config::duration")]
    pub ca_validity: Duration,
    /// Lifetime of a serving certificate; a new one is issued when less than a third is left.
    #[serde(
        default = "default_certificate_validity",
        with = "crate::config::duration"
    )]
    pub certificate_validity: Duration,
    /// How long a new CA is in every webhook's `caBundle` before a certificate it signed is
    /// served: time for every API server to see the new bundle.
    #[serde(default = "default_publish_delay", with = "crate::config::duration")]
    pub publish_delay: Duration,
}

fn default_ca_validity() -> Duration {
    DEFAULT_CA_VALIDITY
}
fn default_certificate_validity() -> Duration {
    DEFAULT_CERTIFICATE_VALIDITY
}
fn default_publish_delay() -> Duration {
    DEFAULT_PUBLISH_DELAY
}

/// A validated `webhook.managedCertificate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedCertificate {
    /// See [`ManagedCertificateConfig::secret_name`].
    pub secret_name: String,
    /// See [`ManagedCertificateConfig::webhook_configuration`].
    pub webhook_configuration: String,
    /// DNS names, in config order.
    pub dns_names: Vec<String>,
    /// IP addresses, in config order.
    pub ip_addresses: Vec<IpAddr>,
    /// Lifetimes and the publication delay.
    pub policy: Policy,
}

/// Lifetimes and timing of the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Lifetime of a new CA.
    pub ca_validity: Duration,
    /// Lifetime of a new serving certificate.
    pub certificate_validity: Duration,
    /// Time a CA is published before a certificate it signed is served.
    pub publish_delay: Duration,
}

impl ManagedCertificateConfig {
    /// Every problem, each with its field path (`base` is `webhook.managedCertificate`).
    pub fn validate(
        &self,
        base: &str,
        err: &mut impl FnMut(&str, String),
    ) -> Option<ManagedCertificate> {
        let mut problems = 0;
        let mut fail = |path: String, message: String| {
            problems += 1;
            err(&path, message)
        };
        for (field, value) in [
            ("secretName", &self.secret_name),
            ("webhookConfiguration", &self.webhook_configuration),
        ] {
            if crate::labels::validate_dns_subdomain(value).is_err() {
                fail(
                    format!("{base}.{field}"),
                    format!("{value:?} is not a valid object name"),
                );
            }
        }
        // The TLS Secret is labelled with it.
        if crate::labels::validate_dns_subdomain(&self.webhook_configuration).is_ok()
            && crate::labels::validate_label_value(&self.webhook_configuration).is_err()
        {
            fail(
                format!("{base}.webhookConfiguration"),
                format!(
                    "{:?} is too long: the TLS Secret carries it as a label value (at most 63 characters)",
                    self.webhook_configuration
                ),
            );
        }
        if self.dns_names.is_empty() && self.ip_addresses.is_empty() {
            fail(
                format!("{base}.dnsNames"),
                "the certificate needs at least one DNS name or IP address".into(),
            );
        }
        for (i, name) in self.dns_names.iter().enumerate() {
            if crate::labels::validate_dns_subdomain(name).is_err() {
                fail(
                    format!("{base}.dnsNames[{i}]"),
                    format!("{name:?} is not a DNS name"),
                );
            }
        }
        let mut ips = Vec::new();
        for (i, ip) in self.ip_addresses.iter().enumerate() {
            match ip.parse::<IpAddr>() {
                Ok(a) => ips.push(a),
                Err(_) => fail(
                    format!("{base}.ipAddresses[{i}]"),
                    format!("{ip:?} is not an IP address"),
                ),
            }
        }
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        if self.certificate_validity < Duration::from_secs(30) {
            fail(
                format!("{base}.certificateValidity"),
                format!(
                    "{} is too short (minimum 30s)",
                    fmt(self.certificate_validity)
                ),
            );
        }
        // A CA is replaced when a third of its life is left, and must still cover a whole
        // certificate issued just before that: three certificate lifetimes at least.
        if self.ca_validity < self.certificate_validity * 3 {
            fail(
                format!("{base}.caValidity"),
                format!(
                    "{} must be at least three times certificateValidity ({})",
                    fmt(self.ca_validity),
                    fmt(self.certificate_validity)
                ),
            );
        }
        // The new CA is published when a third of the old one's life is left, and its
        // certificates are served only after the delay: the delay must fit well inside.
        if self.publish_delay * 6 > self.certificate_validity {
            fail(
                format!("{base}.publishDelay"),
                format!(
                    "{} is too long for certificateValidity {} (at most a sixth of it)",
                    fmt(self.publish_delay),
                    fmt(self.certificate_validity)
                ),
            );
        }
        (problems == 0).then(|| ManagedCertificate {
            secret_name: self.secret_name.clone(),
            webhook_configuration: self.webhook_configuration.clone(),
            dns_names: self.dns_names.clone(),
            ip_addresses: ips,
            policy: Policy {
                ca_validity: self.ca_validity,
                certificate_validity: self.certificate_validity,
                publish_delay: self.publish_delay,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ManagedCertificateConfig {
        serde_norway::from_str(
            "secretName: psi-webhook-tls\nwebhookConfiguration: psi\ndnsNames: [psi.ns.svc]\n",
        )
        .unwrap()
    }

    fn problems(c: &ManagedCertificateConfig) -> Vec<String> {
        let mut out = Vec::new();
        let r = c.validate("webhook.managedCertificate", &mut |p: &str, m: String| {
            out.push(format!("{p}: {m}"))
        });
        assert_eq!(r.is_some(), out.is_empty());
        out
    }

    #[test]
    fn defaults_are_a_year_a_month_and_a_minute() {
        let c = config();
        assert_eq!(c.ca_validity, Duration::from_secs(365 * 86400));
        assert_eq!(c.certificate_validity, Duration::from_secs(30 * 86400));
        assert_eq!(c.publish_delay, Duration::from_secs(60));
        assert!(problems(&c).is_empty());
    }

    #[test]
    fn bad_values_are_named_with_their_path() {
        let mut c = config();
        c.secret_name = "Bad_Name".into();
        c.dns_names = vec!["ok.svc".into(), "not a name".into()];
        c.ip_addresses = vec!["127.0.0.1".into(), "300.1.1.1".into()];
        c.certificate_validity = Duration::from_secs(3600);
        c.ca_validity = Duration::from_secs(7200);
        c.publish_delay = Duration::from_secs(1200);
        assert_eq!(
            problems(&c),
            [
                "webhook.managedCertificate.secretName: \"Bad_Name\" is not a valid object name",
                "webhook.managedCertificate.dnsNames[1]: \"not a name\" is not a DNS name",
                "webhook.managedCertificate.ipAddresses[1]: \"300.1.1.1\" is not an IP address",
                "webhook.managedCertificate.caValidity: 2h must be at least three times certificateValidity (1h)",
                "webhook.managedCertificate.publishDelay: 20m is too long for certificateValidity 1h (at most a sixth of it)",
            ]
        );
    }

    #[test]
    fn the_webhook_configuration_name_must_fit_a_label_value() {
        let mut c = config();
        let long = format!("psi.{}", "a".repeat(60));
        c.webhook_configuration = long.clone();
        assert_eq!(
            problems(&c),
            [format!(
                "webhook.managedCertificate.webhookConfiguration: {long:?} is too long: the TLS Secret carries it as a label value (at most 63 characters)"
            )]
        );
        c.webhook_configuration = long[1..].to_string();
        assert!(problems(&c).is_empty());
    }

    #[test]
    fn a_certificate_needs_a_name() {
        let mut c = config();
        c.dns_names.clear();
        assert_eq!(
            problems(&c),
            [
                "webhook.managedCertificate.dnsNames: the certificate needs at least one DNS name or IP address"
            ]
        );
        c.ip_addresses = vec!["::1".into()];
        assert!(problems(&c).is_empty());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_norway::from_str::<ManagedCertificateConfig>(
            "secretName: a\nwebhookConfiguration: b\ncaValidty: 1h\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `caValidty`"), "{e}");
    }
}
