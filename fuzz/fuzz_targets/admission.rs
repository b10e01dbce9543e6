//! Any bytes as a `/mutate` body: `Admission::handle` answers with a well-formed
//! AdmissionReview that echoes the uid, or an error; it never panics. The invariants are
//! those of tests/admission_props.rs. Seed the corpus with the captured review:
//! `mkdir -p corpus/admission && cp ../tests/fixtures/*.json corpus/admission/`.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use pullsecret_injector::admission::Admission;
use pullsecret_injector::metrics::Metrics;
use pullsecret_injector::registry::{HostPattern, Registries, RegistryEntry};
use serde_json::Value;

fn admission() -> &'static Admission {
    static A: OnceLock<Admission> = OnceLock::new();
    A.get_or_init(|| {
        let hosts = ["cr.yandex", "registry.yandexcloud.net", "*.corp.example.com"]
            .iter()
            .map(|h| HostPattern::parse(h).expect("valid pattern"))
            .collect();
        Admission::new(
            Registries::new(vec![RegistryEntry::new("yandex", "yc-secret", hosts)]),
            "pullsecret-injector.io/skip".into(),
            Metrics::new(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(reviewed) = admission().handle(data) else {
        return;
    };
    let out: Value = serde_json::from_slice(&reviewed.body).expect("answer is JSON");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    let resp = &out["response"];
    assert_eq!(resp["allowed"], true);
    assert!(resp["uid"].as_str().is_some_and(|u| !u.is_empty()));
    // Skipped values are not checked for UTF-8 by serde_json; read the input lossily.
    let input: Value = serde_json::from_slice(data)
        .or_else(|_| serde_json::from_str(&String::from_utf8_lossy(data)))
        .expect("an answered body is JSON");
    let want = match &input["request"] {
        Value::Array(fields) => fields[0].clone(),
        request => request["uid"].clone(),
    };
    assert_eq!(resp["uid"], want);
    assert_eq!(resp.get("patchType").is_some(), resp.get("patch").is_some());
    if let Some(patch) = resp.get("patch") {
        assert_eq!(resp["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch.as_str().expect("patch is a string"))
            .expect("patch is base64");
        let ops: Vec<Value> = serde_json::from_slice(&bytes).expect("patch is a JSON array");
        assert!(!ops.is_empty());
    }
});
