//! Every new credential is proven against the registry before it is published (see
//! [`crate::credentials::probe`]), and a credential the registry refuses replaces what the
//! Secrets hold only if it is no worse.
//!
//! "No worse" ([`decide`]): a refused credential is written when there is no Secret yet
//! (nothing to protect: a Secret appears, and works as soon as the registry side is fixed),
//! when the credential there expires within the safety margin or has expired, or when the
//! registry refuses that one too at every host where it refuses the new one. It is withheld
//! only when the credential there is still valid and accepted at a host that refuses the
//! new one: then the Secrets keep working until their own expiry while the refresh is
//! retried with backoff and reported (log, Event, `/readyz` body, metrics). `unreachable`
//! and `error` results never withhold anything: a registry the injector cannot reach (a
//! NetworkPolicy, a proxy) must not stop the Secrets from being renewed.
//!
//! "What is there" is the credential this process published last or, after a restart or a
//! change of leader, the one in a Secret of this registry in the cluster (read and probed
//! only when the new one is refused), so that rolling out a wrong key cannot overwrite a
//! working token across every namespace.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use kube::Api;

use crate::credentials::probe::{self, HostProbe, ProbeResult};
use crate::credentials::{Credential, Secret, SecretBytes};
use crate::dockerconfig;
use crate::metrics::Metrics;

use super::RegistrySync;
use super::policy;
use super::secret::{DATA_KEY, EXPIRES_AT_ANNOTATION, REGISTRY_ANNOTATION, is_managed};
use super::state::{SecretState, State};

/// What to do with a new credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Publish it; `note` says why when the registry refused it.
    Publish {
        /// Why a refused credential is written anyway.
        note: Option<String>,
    },
    /// Keep what is there; `reason` says why.
    Withhold {
        /// For logs, the health line and the Event.
        reason: String,
        /// The credential the Secrets hold, read from the cluster, when this process has
        /// none yet (after a restart or a change of leader): published instead, so that
        /// namespaces that opt in meanwhile get it too.
        adopt: Option<Credential>,
    },
}

/// The credential the Secrets hold now, as far as [`decide`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incumbent {
    /// Its expiry (`None`: static).
    pub expires_at: Option<Timestamp>,
    /// Its probes, taken now.
    pub probes: Vec<HostProbe>,
}

/// Decide whether a credential probed as `new` replaces `incumbent` (`None`: no Secret).
pub fn decide(new: &[HostProbe], incumbent: Option<&Incumbent>, now: Timestamp) -> Verdict {
    let refused: Vec<&HostProbe> = new
        .iter()
        .filter(|p| p.probe.result == ProbeResult::Refused)
        .collect();
    if refused.is_empty() {
        return Verdict::Publish { note: None };
    }
    let publish = |why: &str| Verdict::Publish {
        note: Some(why.to_string()),
    };
    let Some(incumbent) = incumbent else {
        return publish(
            "no Secret holds a credential of this registry yet, so nothing better is there",
        );
    };
    if !policy::is_usable(now, incumbent.expires_at) {
        return publish(
            "the credential in the Secrets expires within the safety margin or has expired",
        );
    }
    let better: Vec<String> = refused
        .iter()
        .filter(|new| {
            incumbent
                .probes
                .iter()
                .any(|old| old.host == new.host && old.probe.result == ProbeResult::Accepted)
        })
        .map(|new| format!("{} ({})", new.host, new.probe.answer))
        .collect();
    if better.is_empty() {
        return publish("the registry does not accept the credential in the Secrets either");
    }
    let until = incumbent
        .expires_at
        .map(|t| format!("valid until {}", super::secret::rfc3339(t)))
        .unwrap_or_else(|| "static".into());
    Verdict::Withhold {
        reason: format!(
            "the registry refuses the new credential at {}, but accepts the one in the Secrets ({until}): keeping it",
            better.join(", ")
        ),
        adopt: None,
    }
}

/// Proves new credentials for the refresh loops of one term of leadership.
pub struct Prover<'a> {
    client: kube::Client,
    state: &'a State,
    instance: &'a str,
    metrics: &'a Metrics,
}

impl<'a> Prover<'a> {
    /// Reads incumbent Secrets with `client` (only those labelled with `instance`) in the
    /// namespaces `state` knows; counts probes in `metrics`.
    pub fn new(
        client: kube::Client,
        state: &'a State,
        instance: &'a str,
        metrics: &'a Metrics,
    ) -> Self {
        Self {
            client,
            state,
            instance,
            metrics,
        }
    }

    /// Probe `credential` at the registry's probe hosts (counted and logged) and decide
    /// whether to publish it.
    pub async fn admit(&self, registry: &RegistrySync, data: &SecretBytes) -> Verdict {
        if registry.probe_hosts.is_empty() {
            return Verdict::Publish { note: None };
        }
        let http = registry.provider.http();
        let new = probe::probe_data(http, &registry.probe_hosts, data.expose()).await;
        for p in &new {
            self.metrics
                .record_probe(&registry.name, &p.host, p.probe.result);
            let (registry, host, result, answer) =
                (&registry.name, &p.host, p.probe.result, &p.probe.answer);
            match result {
                ProbeResult::Accepted => {
                    tracing::info!(%registry, %host, %result, %answer, "registry accepts the new credential")
                }
                ProbeResult::Refused => {
                    tracing::warn!(%registry, %host, %result, %answer, "registry REFUSES the new credential")
                }
                ProbeResult::Unreachable | ProbeResult::Error => {
                    tracing::warn!(%registry, %host, %result, %answer, "could not prove the new credential; it is written anyway")
                }
            }
        }
        if new.iter().all(|p| p.probe.result != ProbeResult::Refused) {
            return Verdict::Publish { note: None };
        }
        let there = self.incumbent(registry).await;
        let incumbent = match &there {
            Some((data, expires_at, _)) => Some(Incumbent {
                expires_at: *expires_at,
                probes: probe::probe_data(http, &registry.probe_hosts, data.expose()).await,
            }),
            None => None,
        };
        if let Some(i) = &incumbent {
            for p in &i.probes {
                tracing::info!(registry = %registry.name, host = %p.host, result = %p.probe.result, answer = %p.probe.answer, "probed the credential in the Secrets to compare");
            }
        }
        match decide(&new, incumbent.as_ref(), Timestamp::now()) {
            Verdict::Withhold { reason, .. } => Verdict::Withhold {
                reason,
                adopt: there.and_then(|(_, _, adopt)| adopt),
            },
            publish => publish,
        }
    }

    /// The data and expiry of the credential the Secrets hold: the one published last, or
    /// one of this registry's Secrets in the cluster (then also as a credential to adopt,
    /// when it is one login for every host, as this project writes them).
    async fn incumbent(
        &self,
        registry: &RegistrySync,
    ) -> Option<(SecretBytes, Option<Timestamp>, Option<Credential>)> {
        if let Some(c) = registry.credential.borrow().clone() {
            return Some((c.secret_data(&registry.hosts), c.expires_at(), None));
        }
        let namespace = self.state.namespaces.keys().into_iter().find(|ns| {
            matches!(
                self.state.secrets_in(ns).get(&registry.secret_name),
                Some(SecretState::Ours(_))
            )
        })?;
        let api = Api::<K8sSecret>::namespaced(self.client.clone(), &namespace);
        let secret = match api.get_opt(&registry.secret_name).await {
            Ok(s) => s?,
            Err(e) => {
                tracing::warn!(registry = %registry.name, namespace = %namespace, error = %e, "could not read the Secret to compare the refused credential with");
                return None;
            }
        };
        let annotation = |k: &str| secret.metadata.annotations.as_ref()?.get(k).cloned();
        if !is_managed(&secret, self.instance)
            || annotation(REGISTRY_ANNOTATION).as_deref() != Some(registry.name.as_str())
        {
            return None;
        }
        let data = secret.data.as_ref()?.get(DATA_KEY)?.0.clone();
        // An expiry that does not parse counts as expired (nothing to protect).
        let expires_at =
            annotation(EXPIRES_AT_ANNOTATION).map(|t| t.parse().unwrap_or(Timestamp::UNIX_EPOCH));
        let adopt = one_login(&data, expires_at);
        Some((SecretBytes::new(data), expires_at, adopt))
    }
}

/// The credential of a pull Secret's data that holds one login for every host (what this
/// project writes for token and basic sources), issued now, expiring at `expires_at`.
fn one_login(data: &[u8], expires_at: Option<Timestamp>) -> Option<Credential> {
    let config = dockerconfig::parse(data).ok()?;
    let mut entries = config.auths.values();
    let first = entries.next()?;
    if entries.any(|e| e != first) {
        return None;
    }
    Credential::login(
        first.username.clone(),
        Secret::new(first.password.clone()),
        Timestamp::now(),
        expires_at,
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::probe::Probe;

    fn probes(results: &[(&str, ProbeResult)]) -> Vec<HostProbe> {
        results
            .iter()
            .map(|(host, result)| HostProbe {
                host: host.to_string(),
                probe: Probe {
                    result: *result,
                    answer: format!("answer of {host}"),
                },
            })
            .collect()
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_750_000_000 + secs).unwrap()
    }

    fn incumbent(expires_in: Option<i64>, results: &[(&str, ProbeResult)]) -> Incumbent {
        Incumbent {
            expires_at: expires_in.map(at),
            probes: probes(results),
        }
    }

    use ProbeResult::{Accepted, Error, Refused, Unreachable};

    #[test]
    fn a_credential_nobody_refuses_is_published_whatever_is_there() {
        let now = at(0);
        for new in [
            probes(&[("a", Accepted), ("b", Accepted)]),
            probes(&[("a", Unreachable), ("b", Error)]),
            probes(&[]),
        ] {
            let there = incumbent(Some(3600), &[("a", Accepted), ("b", Accepted)]);
            assert_eq!(
                decide(&new, Some(&there), now),
                Verdict::Publish { note: None }
            );
        }
    }

    #[test]
    fn a_refused_credential_is_withheld_only_where_the_one_there_is_valid_and_accepted() {
        let now = at(0);
        let new = probes(&[("a", Refused), ("b", Accepted)]);
        let cases = [
            // (what is there, withheld)
            (None, false),
            (Some(incumbent(Some(3600), &[("a", Accepted)])), true),
            (Some(incumbent(None, &[("a", Accepted)])), true),
            (Some(incumbent(Some(3600), &[("a", Refused)])), false),
            (Some(incumbent(Some(3600), &[("a", Unreachable)])), false),
            (Some(incumbent(Some(3600), &[("b", Accepted)])), false),
            // Expired, or inside the safety margin: nothing worth keeping.
            (Some(incumbent(Some(-10), &[("a", Accepted)])), false),
            (Some(incumbent(Some(30), &[("a", Accepted)])), false),
        ];
        for (there, withheld) in cases {
            let v = decide(&new, there.as_ref(), now);
            assert_eq!(
                matches!(v, Verdict::Withhold { .. }),
                withheld,
                "{there:?}: {v:?}"
            );
            if let Verdict::Withhold { reason, adopt } = v {
                assert_eq!(adopt, None, "decide adopts nothing");
                assert!(reason.contains("a (answer of a)"), "{reason}");
            }
        }
    }

    #[test]
    fn only_one_login_for_every_host_is_adopted_with_the_secrets_expiry() {
        let expiry = Some(at(3600));
        let data = dockerconfig::build(&["a.io", "b.io:5000"], "iam", "t1.token");
        let c = one_login(&data, expiry).expect("one login");
        assert_eq!(c.username(), Some("iam"));
        assert_eq!(c.password().map(Secret::expose), Some("t1.token"));
        assert_eq!(c.expires_at(), expiry);
        assert_eq!(
            c.secret_data(&["a.io", "b.io:5000"]).expose(),
            data.as_slice()
        );
        let mixed = br#"{"auths":{"a.io":{"username":"u","password":"p"},"b.io":{"username":"u","password":"q"}}}"#;
        assert_eq!(one_login(mixed, expiry), None);
        assert_eq!(one_login(b"{}", expiry), None);
        assert_eq!(one_login(br#"{"auths":{}}"#, expiry), None);
    }

    #[test]
    fn a_refused_credential_written_anyway_says_why() {
        let new = probes(&[("a", Refused)]);
        let Verdict::Publish { note: Some(note) } = decide(&new, None, at(0)) else {
            panic!("published with a note");
        };
        assert!(note.contains("no Secret"), "{note}");
    }
}
