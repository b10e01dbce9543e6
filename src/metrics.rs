//! Every metric the process exports, in one place, with the names of DESIGN.md's contract.
//!
//! Label sets on the admission hot path are fixed and small, so their counters are created
//! once at start-up and kept as handles: counting a review is an atomic add, never a lookup
//! in a locked map.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::credentials::probe::ProbeResult;

/// Prefix of every metric name.
pub const PREFIX: &str = "pullsecret_injector";

/// The outcome of one admission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A patch adding pull Secrets was returned.
    Injected,
    /// A Pod was reviewed and nothing was missing.
    Unchanged,
    /// Not ours to change: opt-out annotation, another kind, or another operation.
    Skipped,
    /// The request or its Pod could not be read (a 400, or a Pod allowed as is).
    Invalid,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Unchanged => "unchanged",
            Self::Skipped => "skipped",
            Self::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Labels of per-registry metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RegistryLabel {
    /// `registries[].name`.
    pub registry: String,
}

/// Labels of refresh counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefreshLabel {
    /// `registries[].name`.
    pub registry: String,
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Labels of the registry probe's metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProbeLabel {
    /// `registries[].name`.
    pub registry: String,
    /// `host[:port]` probed.
    pub host: String,
    /// `accepted`, `refused`, `unreachable` or `error`.
    pub result: &'static str,
}

/// Labels of write counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    /// `created`, `updated`, `unchanged`, `deleted`, `conflict`, `error`.
    pub result: &'static str,
}

/// Handles to every metric, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    admission_injected: Counter,
    admission_unchanged: Counter,
    admission_skipped: Counter,
    admission_invalid: Counter,
    admission_duration: Histogram,
    unparsable_images: Counter,
    /// `credential_expiry_timestamp_seconds{registry}`.
    pub credential_expiry: Family<RegistryLabel, Gauge<f64, AtomicU64>>,
    /// `credential_refresh_total{registry,result}`.
    pub credential_refresh: Family<RefreshLabel, Counter>,
    /// `secret_writes_total{result}`.
    pub secret_writes: Family<ResultLabel, Counter>,
    /// `managed_namespaces`.
    pub managed_namespaces: Gauge,
    /// `foreign_secrets_total`: Secrets with our name but not our label, left alone.
    pub foreign_secrets: Counter,
    /// `serving_certificate_expiry_timestamp_seconds`: `notAfter` of the webhook's certificate.
    pub serving_certificate_expiry: Gauge<f64, AtomicU64>,
    /// `ready`: 1 while `/readyz` answers 200.
    pub ready: Gauge,
    /// `credential_probe_total{registry,host,result}`.
    pub credential_probe: Family<ProbeLabel, Counter>,
    /// `credential_probe_result{registry,host,result}`: 1 for the latest result, 0 for the
    /// others.
    pub credential_probe_result: Family<ProbeLabel, Gauge>,
    /// `pods_without_credentials{registry}`.
    pub pods_without_credentials: Family<RegistryLabel, Gauge>,
    /// `pod_deletions_total{result}`.
    pub pod_deletions: Family<ResultLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let admission: Family<OutcomeLabel, Counter> = Family::default();
        registry.register(
            "admission_requests",
            "Admission reviews answered, by outcome",
            admission.clone(),
        );
        let handle = |o: Outcome| {
            admission
                .get_or_create(&OutcomeLabel {
                    outcome: o.as_str(),
                })
                .clone()
        };
        let admission_injected = handle(Outcome::Injected);
        let admission_unchanged = handle(Outcome::Unchanged);
        let admission_skipped = handle(Outcome::Skipped);
        let admission_invalid = handle(Outcome::Invalid);

        // 50 us .. ~1.6 s in factors of two.
        let admission_duration = Histogram::new(exponential_buckets(50e-6, 2.0, 16));
        registry.register(
            "admission_duration_seconds",
            "Time to answer one admission review, from body received to response encoded",
            admission_duration.clone(),
        );
        let unparsable_images = Counter::default();
        registry.register(
            "unparsable_images",
            "Image references in reviewed Pods that are not valid references (they match no registry)",
            unparsable_images.clone(),
        );
        let credential_expiry = Family::<RegistryLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "credential_expiry_timestamp_seconds",
            "Expiry of the credential in use, Unix seconds (absent for static credentials)",
            credential_expiry.clone(),
        );
        let credential_refresh = Family::<RefreshLabel, Counter>::default();
        registry.register(
            "credential_refresh",
            "Credential fetches, by registry and result",
            credential_refresh.clone(),
        );
        let secret_writes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "secret_writes",
            "Writes of managed Secrets to the API server, by result",
            secret_writes.clone(),
        );
        let managed_namespaces = Gauge::default();
        registry.register(
            "managed_namespaces",
            "Namespaces that currently match the opt-in selector",
            managed_namespaces.clone(),
        );
        let foreign_secrets = Counter::default();
        registry.register(
            "foreign_secrets",
            "Secrets found with a managed name but without the managed-by label (left untouched)",
            foreign_secrets.clone(),
        );
        let serving_certificate_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "serving_certificate_expiry_timestamp_seconds",
            "Expiry (notAfter) of the webhook's serving certificate in use, Unix seconds (0 until one is loaded)",
            serving_certificate_expiry.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while this replica is ready (GET /readyz answers 200): serving certificate loaded, namespaces listed, not shutting down",
            ready.clone(),
        );
        let credential_probe = Family::<ProbeLabel, Counter>::default();
        registry.register(
            "credential_probe",
            "Probes of newly minted credentials against the registry (GET /v2/ and its auth challenge), by registry, host and result",
            credential_probe.clone(),
        );
        let credential_probe_result = Family::<ProbeLabel, Gauge>::default();
        registry.register(
            "credential_probe_result",
            "Result of the latest probe of a registry host: 1 on the series of that result, 0 on the others",
            credential_probe_result.clone(),
        );
        let pods_without_credentials = Family::<RegistryLabel, Gauge>::default();
        registry.register(
            "pods_without_credentials",
            "Pending Pods in opted-in namespaces whose images need this registry's Secret and that do not name it",
            pods_without_credentials.clone(),
        );
        let pod_deletions = Family::<ResultLabel, Counter>::default();
        registry.register(
            "pod_deletions",
            "Deletions of controller-owned Pods left without their Secrets (podReport.deleteOwnedPods), by result",
            pod_deletions.clone(),
        );
        Self {
            registry: Arc::new(registry),
            admission_injected,
            admission_unchanged,
            admission_skipped,
            admission_invalid,
            admission_duration,
            unparsable_images,
            credential_expiry,
            credential_refresh,
            secret_writes,
            managed_namespaces,
            foreign_secrets,
            serving_certificate_expiry,
            ready,
            credential_probe,
            credential_probe_result,
            pods_without_credentials,
            pod_deletions,
        }
    }

    /// Count a probe of `host` and make `result` the latest one.
    pub fn record_probe(&self, registry: &str, host: &str, result: ProbeResult) {
        let label = |r: ProbeResult| ProbeLabel {
            registry: registry.to_string(),
            host: host.to_string(),
            result: r.as_str(),
        };
        self.credential_probe.get_or_create(&label(result)).inc();
        for r in ProbeResult::ALL {
            self.credential_probe_result
                .get_or_create(&label(r))
                .set(i64::from(r == result));
        }
    }

    /// Count one answered review and how long it took.
    pub fn observe_admission(&self, outcome: Outcome, seconds: f64) {
        match outcome {
            Outcome::Injected => &self.admission_injected,
            Outcome::Unchanged => &self.admission_unchanged,
            Outcome::Skipped => &self.admission_skipped,
            Outcome::Invalid => &self.admission_invalid,
        }
        .inc();
        self.admission_duration.observe(seconds);
    }

    /// Count image references that did not parse.
    pub fn count_unparsable_images(&self, n: usize) {
        if n > 0 {
            self.unparsable_images.inc_by(n as u64);
        }
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_metric_names_are_exported() {
        let m = Metrics::new();
        m.observe_admission(Outcome::Injected, 0.0001);
        m.credential_expiry
            .get_or_create(&RegistryLabel {
                registry: "yandex".into(),
            })
            .set(1.0);
        m.credential_refresh
            .get_or_create(&RefreshLabel {
                registry: "yandex".into(),
                result: "success",
            })
            .inc();
        m.secret_writes
            .get_or_create(&ResultLabel { result: "created" })
            .inc();
        m.record_probe("yandex", "cr.yandex", ProbeResult::Accepted);
        m.record_probe("yandex", "cr.yandex", ProbeResult::Refused);
        m.pods_without_credentials
            .get_or_create(&RegistryLabel {
                registry: "yandex".into(),
            })
            .set(2);
        m.pod_deletions
            .get_or_create(&ResultLabel { result: "deleted" })
            .inc();
        let text = m.encode();
        for name in [
            "pullsecret_injector_admission_requests_total{outcome=\"injected\"} 1",
            "pullsecret_injector_admission_requests_total{outcome=\"unchanged\"} 0",
            "pullsecret_injector_admission_requests_total{outcome=\"skipped\"} 0",
            "pullsecret_injector_admission_requests_total{outcome=\"invalid\"} 0",
            "pullsecret_injector_admission_duration_seconds_bucket{le=\"0.00005\"}",
            "pullsecret_injector_admission_duration_seconds_count 1",
            "pullsecret_injector_credential_expiry_timestamp_seconds{registry=\"yandex\"} 1.0",
            "pullsecret_injector_credential_refresh_total{registry=\"yandex\",result=\"success\"} 1",
            "pullsecret_injector_secret_writes_total{result=\"created\"} 1",
            "pullsecret_injector_managed_namespaces 0",
            "pullsecret_injector_credential_probe_total{registry=\"yandex\",host=\"cr.yandex\",result=\"accepted\"} 1",
            "pullsecret_injector_credential_probe_total{registry=\"yandex\",host=\"cr.yandex\",result=\"refused\"} 1",
            "pullsecret_injector_credential_probe_result{registry=\"yandex\",host=\"cr.yandex\",result=\"refused\"} 1",
            "pullsecret_injector_credential_probe_result{registry=\"yandex\",host=\"cr.yandex\",result=\"accepted\"} 0",
            "pullsecret_injector_credential_probe_result{registry=\"yandex\",host=\"cr.yandex\",result=\"unreachable\"} 0",
            "pullsecret_injector_pods_without_credentials{registry=\"yandex\"} 2",
            "pullsecret_injector_pod_deletions_total{result=\"deleted\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
