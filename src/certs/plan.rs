//! The rotation's decisions, as a pure function of time, the Secret and what the webhook
//! configuration trusts.
//!
//! The one rule: a serving certificate is served only once its CA has been in every
//! webhook's `caBundle` for the publication delay, so that every API server trusts it before
//! it sees it. So a CA is replaced in two steps: the new CA joins the bundle (the old one
//! stays, and so does the certificate it signed), and only after the delay is a certificate
//! signed by the new CA issued. The old CA leaves the bundle when it expires: the
//! certificates it signed expire no later, and every replica has moved on long before
//! (certificates are renewed with a third of their life left). The exception is a Secret
//! with no usable serving certificate at all (first start, or everything expired): nothing
//! can get worse, so a certificate is issued at once and its CA published first.

use std::time::Duration;

use super::config::Policy;
use super::pki::{CertInfo, Fingerprint};
use super::state::Stored;

/// What to do about the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaStep {
    /// The signing CA stays.
    Keep,
    /// Make a new signing CA, for this reason.
    New(String),
}

/// What to do about the serving certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingStep {
    /// It stays.
    Keep,
    /// Issue a new one now, signed by the (possibly new) signing CA.
    Issue {
        /// Why.
        reason: String,
        /// Its CA is not published yet: add it to every webhook's `caBundle` before the
        /// Secret is written (only when there is no usable certificate at all).
        publish_first: bool,
    },
    /// A new one is due, but its CA has not been published for the delay yet.
    Wait {
        /// Why a new one is due.
        reason: String,
    },
}

/// The decisions of one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The CA.
    pub ca: CaStep,
    /// The serving certificate.
    pub serving: ServingStep,
    /// Expired CAs that leave the bundle.
    pub drop_cas: Vec<Fingerprint>,
}

impl Plan {
    /// Whether the Secret changes.
    pub fn changes_secret(&self) -> bool {
        self.ca != CaStep::Keep
            || matches!(self.serving, ServingStep::Issue { .. })
            || !self.drop_cas.is_empty()
    }
}

/// Decide, at `now` (Unix seconds), what to do with `stored` for a certificate naming
/// `dns_names` and `ip_addresses`; `published_since(ca)` says since when (Unix seconds) a CA
/// has been in every webhook's `caBundle`, `None` if it is not.
pub fn plan(
    now: i64,
    stored: &Stored,
    dns_names: &[String],
    ip_addresses: &[std::net::IpAddr],
    policy: &Policy,
    published_since: impl Fn(&Fingerprint) -> Option<i64>,
) -> Plan {
    let third = |d: Duration| i64::try_from(d.as_secs() / 3).unwrap_or(i64::MAX);
    let signer = stored.signer_cert();
    let ca = match signer {
        None if stored.signer.is_none() && stored.bundle.is_empty() => {
            CaStep::New("there is no CA yet".into())
        }
        None => CaStep::New("the CA key fits no CA in the Secret".into()),
        Some(c) if c.not_after <= now => CaStep::New("the CA expired".into()),
        Some(c) if c.not_after - now < third(policy.ca_validity) => {
            CaStep::New("less than a third of the CA's lifetime is left".into())
        }
        Some(_) => CaStep::Keep,
    };
    let drop_cas: Vec<Fingerprint> = stored
        .bundle
        .iter()
        .filter(|c| c.not_after <= now)
        .map(|c| c.fingerprint)
        .collect();
    let trusted: Vec<&CertInfo> = stored.bundle.iter().filter(|c| c.not_after > now).collect();

    let serving = stored.serving.as_ref().map(|(c, _)| c);
    let usable = serving.is_some_and(|c| {
        c.not_after > now && c.not_before <= now && trusted.iter().any(|ca| c.signed_by(ca))
    });
    let due = match serving {
        None => Some("there is no serving certificate yet".to_string()),
        Some(_) if !usable => {
            Some("the serving certificate expired or no trusted CA signed it".to_string())
        }
        Some(c) if c.not_after - now < third(policy.certificate_validity) => {
            Some("less than a third of the serving certificate's lifetime is left".to_string())
        }
        Some(c) if !c.names_exactly(dns_names, ip_addresses) => {
            Some("the serving certificate's names differ from the configured ones".to_string())
        }
        Some(c) => match (&ca, signer) {
            (CaStep::Keep, Some(s)) if c.signed_by(s) => None,
            _ => Some("the serving certificate is signed by an older CA".to_string()),
        },
    };
    let serving = match due {
        None => ServingStep::Keep,
        Some(reason) => {
            let signer_ready = match (&ca, signer) {
                (CaStep::Keep, Some(s)) => published_since(&s.fingerprint).is_some_and(|t| {
                    now.saturating_sub(t)
                        >= i64::try_from(policy.publish_delay.as_secs()).unwrap_or(i64::MAX)
                }),
                _ => false,
            };
            if signer_ready {
                ServingStep::Issue {
                    reason,
                    publish_first: false,
                }
            } else if !usable {
                ServingStep::Issue {
                    reason,
                    publish_first: true,
                }
            } else {
                ServingStep::Wait { reason }
            }
        }
    };
    Plan {
        ca,
        serving,
        drop_cas,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::IpAddr;

    use super::super::pki::{Issued, new_ca, new_serving};
    use super::*;

    const T0: i64 = 1_800_000_000;
    const DAY: u64 = 86400;

    fn policy() -> Policy {
        Policy {
            ca_validity: Duration::from_secs(90 * DAY),
            certificate_validity: Duration::from_secs(9 * DAY),
            publish_delay: Duration::from_secs(60),
        }
    }

    fn names() -> Vec<String> {
        vec!["psi.ns.svc".into()]
    }

    fn ca_at(t: i64) -> Issued {
        new_ca("ca", t, policy().ca_validity).unwrap()
    }

    fn serving(ca: &Issued, t: i64) -> Issued {
        new_serving(
            &ca.info,
            &ca.key_pem,
            &names(),
            &[],
            t,
            policy().certificate_validity,
        )
        .unwrap()
    }

    fn run(now: i64, s: &Stored, published: &HashMap<Fingerprint, i64>) -> Plan {
        plan(now, s, &names(), &[], &policy(), |f| {
            published.get(f).copied()
        })
    }

    fn days(n: i64) -> i64 {
        n * DAY as i64
    }

    #[test]
    fn an_empty_secret_gets_a_ca_and_a_certificate_at_once_ca_published_first() {
        let p = run(T0, &Stored::default(), &HashMap::new());
        assert_eq!(p.ca, CaStep::New("there is no CA yet".into()));
        assert_eq!(
            p.serving,
            ServingStep::Issue {
                reason: "there is no serving certificate yet".into(),
                publish_first: true
            }
        );
        assert!(p.changes_secret());
    }

    #[test]
    fn a_fresh_state_stays_as_it_is() {
        let ca = ca_at(T0);
        let s = Stored::default()
            .with_new_signer(ca.clone())
            .with_serving(serving(&ca, T0));
        let published = HashMap::from([(ca.info.fingerprint, T0)]);
        let p = run(T0 + days(1), &s, &published);
        assert_eq!(
            p,
            Plan {
                ca: CaStep::Keep,
                serving: ServingStep::Keep,
                drop_cas: vec![]
            }
        );
        assert!(!p.changes_secret());
    }

    #[test]
    fn a_certificate_with_a_third_left_is_renewed_by_a_published_ca() {
        let ca = ca_at(T0);
        let s = Stored::default()
            .with_new_signer(ca.clone())
            .with_serving(serving(&ca, T0));
        let published = HashMap::from([(ca.info.fingerprint, T0)]);
        // 9-day certificates: renewed after 6 days.
        assert_eq!(
            run(T0 + days(6) - 10, &s, &published).serving,
            ServingStep::Keep
        );
        assert_eq!(
            run(T0 + days(6) + 10, &s, &published).serving,
            ServingStep::Issue {
                reason: "less than a third of the serving certificate's lifetime is left".into(),
                publish_first: false
            }
        );
    }

    #[test]
    fn a_new_ca_is_published_for_the_delay_before_it_signs_the_served_certificate() {
        let old = ca_at(T0);
        let t = T0 + days(61); // under a third of 90 days left
        let leaf = serving(&old, t - days(1));
        let s = Stored::default()
            .with_new_signer(old.clone())
            .with_serving(leaf);
        let mut published = HashMap::from([(old.info.fingerprint, T0)]);
        let p = run(t, &s, &published);
        assert_eq!(
            p.ca,
            CaStep::New("less than a third of the CA's lifetime is left".into())
        );
        // The certificate in use still works: it stays until the new CA is published.
        assert_eq!(
            p.serving,
            ServingStep::Wait {
                reason: "the serving certificate is signed by an older CA".into()
            }
        );
        let new = ca_at(t);
        let s = s.with_new_signer(new.clone());
        assert_eq!(s.bundle.len(), 2, "the old CA stays trusted");
        let wait = ServingStep::Wait {
            reason: "the serving certificate is signed by an older CA".into(),
        };
        assert_eq!(run(t + 5, &s, &published).serving, wait, "not published");
        published.insert(new.info.fingerprint, t + 10);
        assert_eq!(run(t + 69, &s, &published).serving, wait, "published 59 s");
        let p = run(t + 70, &s, &published);
        assert_eq!(p.ca, CaStep::Keep);
        assert_eq!(
            p.serving,
            ServingStep::Issue {
                reason: "the serving certificate is signed by an older CA".into(),
                publish_first: false
            }
        );
        let s = s.with_serving(serving(&new, t + 70));
        let p = run(t + 80, &s, &published);
        assert_eq!(p.serving, ServingStep::Keep);
        assert!(p.drop_cas.is_empty(), "the old CA stays until it expires");
        let p = run(T0 + days(90), &s, &published);
        assert_eq!(p.drop_cas, vec![old.info.fingerprint]);
        assert_eq!(p.ca, CaStep::Keep);
        assert_eq!(s.without(&p.drop_cas).bundle, vec![new.info.clone()]);
    }

    #[test]
    fn an_expired_or_foreign_certificate_is_replaced_at_once() {
        let ca = ca_at(T0);
        let leaf = serving(&ca, T0);
        let s = Stored::default()
            .with_new_signer(ca.clone())
            .with_serving(leaf);
        let p = run(T0 + days(10), &s, &HashMap::new());
        assert_eq!(
            p.serving,
            ServingStep::Issue {
                reason: "the serving certificate expired or no trusted CA signed it".into(),
                publish_first: true
            }
        );
        let stranger = ca_at(T0);
        let s = Stored::default()
            .with_new_signer(ca.clone())
            .with_serving(serving(&stranger, T0));
        let published = HashMap::from([(ca.info.fingerprint, T0 - 100)]);
        assert_eq!(
            run(T0, &s, &published).serving,
            ServingStep::Issue {
                reason: "the serving certificate expired or no trusted CA signed it".into(),
                publish_first: false
            }
        );
    }

    #[test]
    fn changed_names_get_a_new_certificate_once_the_ca_is_published() {
        let ca = ca_at(T0);
        let leaf = serving(&ca, T0);
        let s = Stored::default()
            .with_new_signer(ca.clone())
            .with_serving(leaf);
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let published = HashMap::from([(ca.info.fingerprint, T0)]);
        let p = plan(T0 + 100, &s, &names(), &ips, &policy(), |f| {
            published.get(f).copied()
        });
        assert_eq!(
            p.serving,
            ServingStep::Issue {
                reason: "the serving certificate's names differ from the configured ones".into(),
                publish_first: false
            }
        );
    }

    #[test]
    fn a_ca_key_that_fits_nothing_or_an_expired_ca_means_a_new_ca() {
        let ca = ca_at(T0);
        let mut s = Stored::default().with_new_signer(ca.clone());
        s.signer = None;
        assert_eq!(
            run(T0, &s, &HashMap::new()).ca,
            CaStep::New("the CA key fits no CA in the Secret".into())
        );
        let s = Stored::default().with_new_signer(ca);
        assert_eq!(
            run(T0 + days(91), &s, &HashMap::new()).ca,
            CaStep::New("the CA expired".into())
        );
    }
}
