//! Property tests of `Admission::handle`, the webhook's whole parser and decision, on
//! stable Rust with a bounded number of cases (proptest's default 256 per property;
//! `PROPTEST_CASES` raises it). The cargo-fuzz target in fuzz/ checks the same invariants
//! without a bound, on machines with a nightly toolchain.
//!
//! * Any bytes: `Ok` with a well-formed AdmissionReview, or `Err`; never a panic.
//! * Random JSON, and the captured review with random byte edits: the same, and an `Ok`
//!   echoes the uid the input carried.
//! * Random Pods (images from configured and other registries, unparsable images, existing
//!   pull secrets, opt-out): the patch adds exactly the missing Secrets in order of first
//!   need, applies to the object, and planning the patched object again changes nothing.

use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use pullsecret_injector::admission::Admission;
use pullsecret_injector::metrics::Metrics;
use pullsecret_injector::registry::{HostPattern, Registries, RegistryEntry};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("fixtures/admission-review-pod-create.json");
const SKIP: &str = "pullsecret-injector.io/skip";

fn admission() -> Admission {
    let entry = |name: &str, secret: &str, hosts: &[&str]| {
        RegistryEntry::new(
            name.to_string(),
            secret.to_string(),
            hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
        )
    };
    Admission::new(
        Registries::new(vec![
            entry(
                "yandex",
                "yc-registry-secret",
                &["cr.yandex", "registry.yandexcloud.net"],
            ),
            entry("corp", "corp-secret", &["*.corp.example.com"]),
        ]),
        SKIP.into(),
        Metrics::new(),
    )
}

/// Check an `Ok` answer's shape; returns the decoded patch, if any.
fn well_formed(body: &[u8]) -> Result<(Value, Option<Vec<Value>>), TestCaseError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("answer is not JSON: {e}")))?;
    prop_assert_eq!(&v["apiVersion"], "admission.k8s.io/v1");
    prop_assert_eq!(&v["kind"], "AdmissionReview");
    let resp = &v["response"];
    prop_assert!(
        resp["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "uid: {}",
        resp
    );
    prop_assert_eq!(&resp["allowed"], true);
    let patch = match (resp.get("patchType"), resp.get("patch")) {
        (None, None) => None,
        (Some(t), Some(p)) => {
            prop_assert_eq!(t, "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(p.as_str().expect("patch is a string"))
                .map_err(|e| TestCaseError::fail(format!("patch is not base64: {e}")))?;
            let ops: Vec<Value> = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("patch is not a JSON array: {e}")))?;
            prop_assert!(!ops.is_empty(), "empty patch");
            for op in &ops {
                prop_assert_eq!(&op["op"], "add");
                let path = op["path"].as_str().unwrap_or_default();
                prop_assert!(
                    path == "/spec/imagePullSecrets" || path == "/spec/imagePullSecrets/-",
                    "path {}",
                    path
                );
            }
            Some(ops)
        }
        (t, p) => {
            return Err(TestCaseError::fail(format!(
                "patchType {t:?} without patch {p:?} or the reverse"
            )));
        }
    };
    Ok((resp["uid"].clone(), patch))
}

/// Handle `body`; on `Ok` check the shape and that the uid is the one `body` carries.
fn check(a: &Admission, body: &[u8]) -> Result<Option<Vec<Value>>, TestCaseError> {
    match a.handle(body) {
        Err(e) => {
            let text = e.to_string();
            prop_assert!(!text.contains('\n'), "one line: {}", text);
            Ok(None)
        }
        Ok(reviewed) => {
            let (uid, patch) = well_formed(&reviewed.body)?;
            // serde_json does not check UTF-8 inside values it skips (fields the webhook does
            // not read), so such a body is answered; read it lossily to find its uid.
            let input: Value = serde_json::from_slice(body)
                .or_else(|_| serde_json::from_str(&String::from_utf8_lossy(body)))
                .map_err(|e| TestCaseError::fail(format!("Ok for a body that is not JSON: {e}")))?;
            // serde's derived structs also read an array of their fields in order, so a
            // `request` written as an array has its uid first (the API server never sends
            // that shape; tests/hardening_input.rs pins the same quirk for Pods).
            let want = match &input["request"] {
                Value::Array(fields) => &fields[0],
                request => &request["uid"],
            };
            prop_assert_eq!(&uid, want);
            Ok(patch)
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "admission.k8s.io/v1",
            "AdmissionReview",
            "CREATE",
            "pods",
            "v1",
            "",
            "cr.yandex/crp1/app:1",
            "true",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let key = prop::sample::select(vec![
            "apiVersion",
            "kind",
            "request",
            "uid",
            "resource",
            "group",
            "version",
            "operation",
            "object",
            "subResource",
            "namespace",
            "dryRun",
            "metadata",
            "annotations",
            "spec",
            "containers",
            "initContainers",
            "ephemeralContainers",
            "volumes",
            "image",
            "reference",
            "imagePullSecrets",
            "name",
            "x",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.into(), v)).collect())),
        ]
    })
}

/// A Pod CREATE review envelope around `object`.
fn envelope(uid: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "object": object
        }
    })
}

/// Images with the Secret they need (`None`: no configured registry, or not a reference).
const IMAGES: &[(&str, Option<&str>)] = &[
    ("cr.yandex/crp1/app:1", Some("yc-registry-secret")),
    (
        "registry.yandexcloud.net/r/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        Some("yc-registry-secret"),
    ),
    ("a.corp.example.com/team/app", Some("corp-secret")),
    ("b.corp.example.com:5000/x", None),
    ("a.b.corp.example.com/x", None),
    ("cr.yandex:443/crp1/app", None),
    ("nginx", None),
    ("docker.io/library/redis:7", None),
    ("CR.YANDEX/UPPER/app", None),
    ("cr.yandex/UPPER", None),
    ("", None),
    ("cr.yandex/a b", None),
];

#[derive(Debug, Clone)]
struct PodCase {
    containers: Vec<Option<usize>>,
    init: Vec<Option<usize>>,
    ephemeral: Vec<Option<usize>>,
    volumes: Vec<Option<usize>>,
    /// `None`: no field; `Some(None)`: `null`; else the entries (`None`: no name).
    existing: Option<Option<Vec<Option<&'static str>>>>,
    opt_out: Option<&'static str>,
    /// Random docker-hub-like names (no `.` or `:`, so never a configured host).
    noise: Vec<String>,
}

fn arb_pod() -> impl Strategy<Value = PodCase> {
    let image = prop::option::weighted(0.9, 0..IMAGES.len());
    let names = prop::sample::select(vec![
        Some("yc-registry-secret"),
        Some("corp-secret"),
        Some("mine"),
        Some(""),
        None,
    ]);
    (
        prop::collection::vec(image.clone(), 0..4),
        prop::collection::vec(image.clone(), 0..3),
        prop::collection::vec(image.clone(), 0..2),
        prop::collection::vec(image, 0..3),
        prop::option::of(prop::option::of(prop::collection::vec(names, 0..4))),
        prop::option::weighted(
            0.2,
            prop::sample::select(vec!["true", "True", " true ", "false", "yes"]),
        ),
        prop::collection::vec("[a-z0-9/_-]{0,20}", 0..3),
    )
        .prop_map(
            |(containers, init, ephemeral, volumes, existing, opt_out, noise)| PodCase {
                containers,
                init,
                ephemeral,
                volumes,
                existing,
                opt_out,
                noise,
            },
        )
}

impl PodCase {
    fn object(&self) -> Value {
        let container = |(i, img): (usize, &Option<usize>)| {
            let mut c = json!({"name": format!("c{i}")});
            if let Some(k) = img {
                c["image"] = json!(IMAGES[*k].0);
            }
            c
        };
        let mut containers: Vec<Value> =
            self.containers.iter().enumerate().map(container).collect();
        for (i, n) in self.noise.iter().enumerate() {
            containers.push(json!({"name": format!("n{i}"), "image": n}));
        }
        let mut spec = json!({"containers": containers});
        if !self.init.is_empty() {
            spec["initContainers"] = self.init.iter().enumerate().map(container).collect();
        }
        if !self.ephemeral.is_empty() {
            spec["ephemeralContainers"] =
                self.ephemeral.iter().enumerate().map(container).collect();
        }
        if !self.volumes.is_empty() {
            spec["volumes"] = self
                .volumes
                .iter()
                .enumerate()
                .map(|(i, img)| match img {
                    Some(k) => {
                        json!({"name": format!("v{i}"), "image": {"reference": IMAGES[*k].0}})
                    }
                    None => json!({"name": format!("v{i}"), "emptyDir": {}}),
                })
                .collect();
        }
        match &self.existing {
            None => {}
            Some(None) => spec["imagePullSecrets"] = Value::Null,
            Some(Some(list)) => {
                spec["imagePullSecrets"] = list
                    .iter()
                    .map(|n| match n {
                        Some(n) => json!({"name": n}),
                        None => json!({}),
                    })
                    .collect()
            }
        }
        let mut metadata = json!({"generateName": "web-", "namespace": ""});
        if let Some(v) = self.opt_out {
            metadata["annotations"] = json!({ SKIP: v });
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
    }

    /// The Secret names a correct webhook adds, in order of first need.
    fn expected(&self) -> Vec<&'static str> {
        if self
            .opt_out
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return Vec::new();
        }
        let existing: Vec<&str> = match &self.existing {
            Some(Some(list)) => list.iter().flatten().copied().collect(),
            _ => Vec::new(),
        };
        let mut out = Vec::new();
        for k in self
            .containers
            .iter()
            .chain(&self.init)
            .chain(&self.ephemeral)
            .chain(&self.volumes)
            .flatten()
        {
            if let Some(name) = IMAGES[*k].1
                && !existing.contains(&name)
                && !out.contains(&name)
            {
                out.push(name);
            }
        }
        out
    }
}

fn pull_secret_names(object: &Value) -> Vec<String> {
    object["spec"]["imagePullSecrets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

proptest! {
    // Failures are saved beside this file (an integration test has no lib.rs for proptest
    // to find); the case count is proptest's default (256) unless PROPTEST_CASES is set.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/admission_props.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_get_a_well_formed_answer_or_an_error(
        bytes in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        check(&admission(), &bytes)?;
    }

    #[test]
    fn any_json_gets_a_well_formed_answer_or_an_error(v in arb_json()) {
        let a = admission();
        check(&a, &serde_json::to_vec(&v).unwrap())?;
        // The same value as the request and as the object of an otherwise valid review.
        let as_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": v.clone()});
        check(&a, &serde_json::to_vec(&as_request).unwrap())?;
        let as_object = envelope("u-1", v);
        let body = serde_json::to_vec(&as_object).unwrap();
        prop_assert!(a.handle(&body).is_ok(), "a review with any object is answered");
        check(&a, &body)?;
    }

    #[test]
    fn edited_captured_reviews_get_a_well_formed_answer_or_an_error(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..8)
    ) {
        let mut body = FIXTURE.as_bytes().to_vec();
        for (at, kind, byte) in edits {
            if body.is_empty() {
                break;
            }
            let i = at.index(body.len());
            match kind {
                0 => body[i] = byte,
                1 => body.insert(i, byte),
                2 => { body.remove(i); }
                _ => body.truncate(i),
            }
        }
        check(&admission(), &body)?;
    }

    #[test]
    fn random_pods_get_exactly_the_missing_secrets_and_the_patch_is_idempotent(
        case in arb_pod(),
        uid in "[a-z0-9-]{1,36}",
    ) {
        let a = admission();
        let object = case.object();
        let body = serde_json::to_vec(&envelope(&uid, object.clone())).unwrap();
        let reviewed = a.handle(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (echo, patch) = well_formed(&reviewed.body)?;
        prop_assert_eq!(echo, json!(uid));
        let want = case.expected();
        prop_assert_eq!(&reviewed.secrets, &want);
        let Some(ops) = patch else {
            prop_assert!(want.is_empty(), "no patch, but {:?} are missing", want);
            return Ok(());
        };
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        let mut patched = object.clone();
        json_patch::patch(&mut patched, &patch)
            .map_err(|e| TestCaseError::fail(format!("patch does not apply: {e}")))?;
        // Existing entries stay, in order, and the added names follow, each once.
        let before = pull_secret_names(&object);
        let after = pull_secret_names(&patched);
        prop_assert_eq!(&after[..before.len()], &before[..]);
        prop_assert_eq!(&after[before.len()..], &want[..]);
        // Still a Pod as the API server reads it.
        serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(patched.clone())
            .map_err(|e| TestCaseError::fail(format!("patched object is not a Pod: {e}")))?;
        // Planning again changes nothing (reinvocationPolicy: IfNeeded).
        let again = a
            .handle(&serde_json::to_vec(&envelope(&uid, patched)).unwrap())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (_, patch) = well_formed(&again.body)?;
        prop_assert!(patch.is_none(), "not idempotent: {:?}", patch);
    }
}
