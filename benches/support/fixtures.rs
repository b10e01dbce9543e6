//! AdmissionReview bodies for the benchmarks, shared by `benches/admission.rs` and
//! `benches/loadgen.rs` (included with `#[path]`; a file in a subfolder of `benches/` is not
//! a bench target of its own).
//!
//! The base is `benches/fixtures/admission-review-pod-create-5k.json`: the review captured
//! from kube-apiserver v1.37.2 (`tests/fixtures/admission-review-pod-create.json`), grown
//! into a typical Deployment Pod (2 containers + 1 initContainer with env, probes, volume
//! mounts, resources; images from `cr.yandex`, `registry.yandexcloud.net` and Docker Hub)
//! and written compact, as the API server sends it. Larger bodies are that review with
//! more env vars on the first container, generated deterministically: same size in, same
//! bytes out.

#![allow(dead_code)]

use serde_json::{Value, json};

/// The ~5.5 KB review, as committed.
pub const BASE: &str = include_str!("../fixtures/admission-review-pod-create-5k.json");

/// The registries config the benchmarks run with: the Yandex hosts of `examples/yandex.yaml`
/// (static credentials: the webhook never reads them) plus a second registry that no image
/// of the fixtures matches, so that matching tries more than one entry.
pub const REGISTRIES_YAML: &str = r#"registries:
  - name: yandex
    hosts: ["cr.yandex", "registry.yandexcloud.net"]
    secretName: yc-registry-secret
    probeHosts: []
    credentials:
      basic: { username: iam, passwordFile: PASSWORD_FILE }
  - name: corp
    hosts: ["*.corp.example.com"]
    secretName: corp-registry-secret
    probeHosts: []
    credentials:
      basic: { username: robot, passwordFile: PASSWORD_FILE }
"#;

/// The same registries as [`REGISTRIES_YAML`], built directly.
pub fn registries() -> pullsecret_injector::registry::Registries {
    use pullsecret_injector::registry::{HostPattern, Registries, RegistryEntry};
    let entry = |name: &str, secret: &str, hosts: &[&str]| {
        RegistryEntry::new(
            name.to_string(),
            secret.to_string(),
            hosts
                .iter()
                .map(|h| HostPattern::parse(h).expect("benchmark host pattern"))
                .collect(),
        )
    };
    Registries::new(vec![
        entry(
            "yandex",
            "yc-registry-secret",
            &["cr.yandex", "registry.yandexcloud.net"],
        ),
        entry("corp", "corp-registry-secret", &["*.corp.example.com"]),
    ])
}

/// The base review with env vars added to the first container until the compact JSON is
/// at least `size` bytes (the base itself when it is already that large).
pub fn review_of_size(size: usize) -> Vec<u8> {
    let base = BASE.trim_end().as_bytes();
    if size <= base.len() {
        return base.to_vec();
    }
    let mut review: Value = serde_json::from_slice(base).expect("base fixture is JSON");
    let env = review["request"]["object"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .expect("first container has env");
    // Each entry is 100 bytes in compact JSON: {"name":"BENCH_VAR_000000","value":"<64 chars>"},
    let mut missing = size - base.len();
    let mut i = 0usize;
    while missing > 0 {
        let value: String = (0..64)
            .map(|j| char::from(b'a' + ((i * 7 + j * 13) % 26) as u8))
            .collect();
        env.push(json!({"name": format!("BENCH_VAR_{i:06}"), "value": value}));
        missing = missing.saturating_sub(100);
        i += 1;
    }
    serde_json::to_vec(&review).expect("review serialises")
}

/// The fixtures of the load benchmark: (label, body).
pub fn load_fixtures() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("5.5 KB", review_of_size(0)),
        ("64 KB", review_of_size(64 * 1024)),
        ("1 MiB", review_of_size(1024 * 1024)),
    ]
}

/// Human-readable size.
pub fn human(bytes: usize) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
    } else if bytes >= 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}
