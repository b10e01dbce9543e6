//! The admission handler the router-level tests run: one registry (`yandex`, both Yandex
//! hosts, Secret `yc-registry-secret`) and the default opt-out annotation.

use std::sync::Arc;

use axum::Router;
use pullsecret_injector::admission::Admission;
use pullsecret_injector::metrics::Metrics;
use pullsecret_injector::registry::{HostPattern, Registries, RegistryEntry};
use pullsecret_injector::server::webhook_router;

/// The test registry set.
pub fn registries() -> Registries {
    Registries::new(vec![RegistryEntry::new(
        "yandex",
        "yc-registry-secret",
        vec![
            HostPattern::parse("cr.yandex").unwrap(),
            HostPattern::parse("registry.yandexcloud.net").unwrap(),
        ],
    )])
}

/// The handler, counting into `metrics`.
pub fn admission(metrics: &Metrics) -> Arc<Admission> {
    Arc::new(Admission::new(
        registries(),
        "pullsecret-injector.io/skip".into(),
        metrics.clone(),
    ))
}

/// The webhook router and its metrics.
pub fn router() -> (Router, Metrics) {
    let metrics = Metrics::new();
    (webhook_router(admission(&metrics)), metrics)
}
