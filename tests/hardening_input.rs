//! Hostile and malformed request bodies through the in-process webhook router: every case
//! has a defined HTTP status, a review that parses gets its uid echoed, nothing panics,
//! nothing is slower than linear, and the router keeps serving afterwards.
//!
//! Cases already pinned elsewhere are not repeated here: empty body, not JSON, `[]`,
//! truncated JSON, invalid UTF-8, a v1beta1 review, a review without `request` or `uid`
//! (src/admission.rs unit tests and tests/webhook_router.rs), `object: null`, a missing
//! object and `containers` as a string (src/admission.rs), 9 MiB (tests/webhook_router.rs,
//! and over real TLS in tests/hardening_http.rs).

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use pullsecret_injector::metrics::Metrics;
use serde_json::{Value, json};
use tower::ServiceExt;

const UID: &str = "b6f1c0de-0000-4000-8000-000000000001";

async fn post(router: &Router, body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
    let req = Request::post("/mutate")
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

/// A Pod CREATE review carrying `object`.
fn review(object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "object": object
        }
    })
}

fn pod(image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "a", "image": image}]}})
}

/// The parsed 200 answer; checks the envelope, the uid echo and the patch invariants.
fn answer(status: StatusCode, body: &[u8]) -> Value {
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(body));
    let v: Value = serde_json::from_slice(body).expect("the answer is JSON");
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], UID);
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(
        v["response"].get("patchType").is_some(),
        v["response"].get("patch").is_some(),
        "patchType only with a patch: {v}"
    );
    v
}

fn is_unchanged(v: &Value) -> bool {
    v["response"].get("patch").is_none()
}

fn patch_of(v: &Value) -> Value {
    let b64 = v["response"]["patch"].as_str().expect("a patch");
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

/// The error line of a 400.
fn refused(status: StatusCode, body: &[u8]) -> String {
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(body)
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    text
}

fn counted(metrics: &Metrics, outcome: &str) -> u64 {
    let series = format!("pullsecret_injector_admission_requests_total{{outcome=\"{outcome}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn unknown_fields_at_every_level_are_ignored_and_the_pod_is_still_injected() {
    let (router, _) = common::admission::router();
    let mut v = review(pod("cr.yandex/crp1/app:1"));
    v["futureField"] = json!({"a": [1, 2, {"b": null}]});
    v["request"]["futureField"] = json!("x");
    v["request"]["object"]["futureField"] = json!(true);
    v["request"]["object"]["metadata"]["futureField"] = json!(1.5e300);
    v["request"]["object"]["spec"]["futureField"] = json!([]);
    v["request"]["object"]["spec"]["containers"][0]["futureField"] = json!({});
    let (s, b) = post(&router, serde_json::to_vec(&v).unwrap()).await;
    let out = answer(s, &b);
    assert_eq!(
        patch_of(&out),
        json!([{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "yc-registry-secret"}]}])
    );
}

#[tokio::test]
async fn envelope_fields_of_the_wrong_type_are_400() {
    let (router, metrics) = common::admission::router();
    let base = review(pod("nginx"));
    let cases: Vec<(Value, &str)> = vec![
        (
            {
                let mut v = base.clone();
                v["request"]["uid"] = json!(42);
                v
            },
            "body is not an AdmissionReview: invalid type: integer `42`, expected a string",
        ),
        (
            {
                let mut v = base.clone();
                v["request"]["uid"] = json!("");
                v
            },
            "AdmissionReview request has no uid",
        ),
        (
            {
                let mut v = base.clone();
                v["request"]["uid"] = Value::Null;
                v
            },
            "AdmissionReview request has no uid",
        ),
        (
            {
                let mut v = base.clone();
                v["request"] = Value::Null;
                v
            },
            "AdmissionReview has no request",
        ),
        (
            {
                let mut v = base.clone();
                v["request"] = json!("a string");
                v
            },
            "body is not an AdmissionReview: invalid type: string \"a string\"",
        ),
        (
            {
                let mut v = base.clone();
                v.as_object_mut().unwrap().remove("apiVersion");
                v
            },
            "expected apiVersion admission.k8s.io/v1 kind AdmissionReview, got \"\" \"AdmissionReview\"",
        ),
        (
            {
                let mut v = base.clone();
                v["apiVersion"] = json!("admission.k8s.io/V1");
                v
            },
            "expected apiVersion admission.k8s.io/v1 kind AdmissionReview, got \"admission.k8s.io/V1\"",
        ),
        (
            {
                let mut v = base.clone();
                v["kind"] = json!("admissionreview");
                v
            },
            "expected apiVersion admission.k8s.io/v1 kind AdmissionReview, got \"admission.k8s.io/v1\" \"admissionreview\"",
        ),
        (
            {
                let mut v = base.clone();
                v["request"]["dryRun"] = json!("yes");
                v
            },
            "body is not an AdmissionReview: invalid type: string \"yes\", expected a boolean",
        ),
        (
            {
                let mut v = base.clone();
                v["request"]["resource"] = json!("pods");
                v
            },
            "body is not an AdmissionReview: invalid type: string \"pods\"",
        ),
        (
            json!(42),
            "body is not an AdmissionReview: invalid type: integer `42`",
        ),
        (
            json!(null),
            "body is not an AdmissionReview: invalid type: null",
        ),
        (
            json!("AdmissionReview"),
            "body is not an AdmissionReview: invalid type: string",
        ),
    ];
    let n = cases.len() as u64;
    for (v, want) in cases {
        let (s, b) = post(&router, serde_json::to_vec(&v).unwrap()).await;
        let text = refused(s, &b);
        assert!(text.starts_with(want), "{v}\n got: {text}\nwant: {want}");
    }
    assert_eq!(counted(&metrics, "invalid"), n);
    // Still serving.
    let (s, b) = post(&router, serde_json::to_vec(&base).unwrap()).await;
    assert!(is_unchanged(&answer(s, &b)));
}

#[tokio::test]
async fn objects_that_are_not_pods_are_allowed_unchanged_with_the_uid() {
    let (router, metrics) = common::admission::router();
    let objects = [
        json!("a string"),
        json!(42),
        json!([1, 2]),
        json!(true),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"image": "cr.yandex/crp1/app"}}),
        json!({"spec": []}),
        json!({"spec": {"containers": [{"image": 5}]}}),
        json!({"spec": {"containers": {"image": "cr.yandex/crp1/app"}}}),
        json!({"spec": {"containers": [{"image": "cr.yandex/a"}], "imagePullSecrets": "x"}}),
        json!({"spec": {"containers": [{"image": "cr.yandex/a"}], "imagePullSecrets": [5]}}),
        json!({"spec": {"containers": [{"image": "cr.yandex/a"}], "imagePullSecrets": [{"name": 5}]}}),
        json!({"spec": {"volumes": [{"image": {"reference": 5}}]}}),
        json!({"metadata": {"annotations": {"pullsecret-injector.io/skip": true}},
               "spec": {"containers": [{"image": "cr.yandex/a"}]}}),
        json!({"metadata": "x", "spec": {"containers": [{"image": "cr.yandex/a"}]}}),
        json!({"metadata": {"name": 7}, "spec": {"containers": [{"image": "cr.yandex/a"}]}}),
    ];
    for object in &objects {
        let (s, b) = post(
            &router,
            serde_json::to_vec(&review(object.clone())).unwrap(),
        )
        .await;
        let out = answer(s, &b);
        assert!(is_unchanged(&out), "{object}: {out}");
    }
    // The ConfigMap parses as a Pod with no spec, and `"spec": []` as a spec with every
    // field absent (see the quirk below): unchanged; the rest could not be read.
    assert_eq!(counted(&metrics, "unchanged"), 2);
    assert_eq!(counted(&metrics, "invalid"), objects.len() as u64 - 2);

    // A quirk of serde's derived structs, pinned so that a change is noticed: a struct is
    // also read from an array of its fields in order, so a container written as
    // `["image"]` counts as `{"image": "image"}`. The API server only ever sends the
    // canonical object form, so this shape reaches the webhook only from a hand-made
    // request, and the answer is still a well-formed review for that uid.
    let object = json!({"spec": {"containers": [["cr.yandex/crp1/app"]]}});
    let (s, b) = post(&router, serde_json::to_vec(&review(object)).unwrap()).await;
    assert!(!is_unchanged(&answer(s, &b)));
    // Strings are strings, though: an image written as an array is not read.
    let object = json!({"spec": {"containers": [{"image": ["cr.yandex/crp1/app"]}]}});
    let (s, b) = post(&router, serde_json::to_vec(&review(object)).unwrap()).await;
    assert!(is_unchanged(&answer(s, &b)));
}

#[tokio::test]
async fn duplicate_keys_in_the_envelope_are_400_and_in_the_pod_allow_unchanged() {
    let (router, _) = common::admission::router();
    let pod = r#"{"metadata":{"name":"p"},"spec":{"containers":[{"image":"cr.yandex/crp1/app"}]}}"#;
    let env = |request: &str| {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{request}}}"#
        )
    };
    let req = |extra: &str, object: &str| {
        env(&format!(
            r#"{{"uid":"{UID}","resource":{{"group":"","version":"v1","resource":"pods"}},"operation":"CREATE"{extra},"object":{object}}}"#
        ))
    };
    // The envelope: ambiguous, so refused (Go would take the last value; we do not guess).
    for (body, want) in [
        (req(r#","uid":"other""#, pod), "duplicate field `uid`"),
        (
            req(r#","operation":"UPDATE""#, pod),
            "duplicate field `operation`",
        ),
        (
            req(&format!(r#","object":{pod}"#), pod),
            "duplicate field `object`",
        ),
        (
            format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"{UID}"}}}}"#
            ),
            "duplicate field `apiVersion`",
        ),
    ] {
        let (s, b) = post(&router, body.clone()).await;
        let text = refused(s, &b);
        assert!(text.contains(want), "{body}: {text}");
    }
    // Inside the Pod: a duplicated field the decision reads makes the Pod unreadable, and
    // an unreadable Pod is allowed unchanged (never a patch computed from one of the two).
    for object in [
        r#"{"spec":{"containers":[{"image":"nginx"}]},"spec":{"containers":[{"image":"cr.yandex/crp1/app"}]}}"#,
        r#"{"spec":{"containers":[{"image":"nginx","image":"cr.yandex/crp1/app"}]}}"#,
        r#"{"spec":{"imagePullSecrets":[],"imagePullSecrets":null,"containers":[{"image":"cr.yandex/a"}]}}"#,
        r#"{"metadata":{"name":"a","name":"b"},"spec":{"containers":[{"image":"cr.yandex/a"}]}}"#,
    ] {
        let (s, b) = post(&router, req("", object)).await;
        assert!(is_unchanged(&answer(s, &b)), "{object}");
    }
    // Duplicate keys in a map (annotations) or in a field nobody reads: the last wins, as
    // in Go, and the answer is the normal one.
    let object = r#"{"metadata":{"annotations":{"pullsecret-injector.io/skip":"true","pullsecret-injector.io/skip":"false"}},"status":{},"status":{},"spec":{"containers":[{"image":"cr.yandex/crp1/app"}]}}"#;
    let (s, b) = post(&router, req("", object)).await;
    assert!(!is_unchanged(&answer(s, &b)), "last annotation value wins");
}

/// `[[[…]]]` and `{"a":{"a":…}}`, `depth` levels.
fn nested(depth: usize, array: bool) -> String {
    let (open, close) = if array { ("[", "]") } else { ("{\"a\":", "}") };
    let mut s = String::with_capacity(depth * (open.len() + close.len()) + 1);
    for _ in 0..depth {
        s.push_str(open);
    }
    s.push('1');
    for _ in 0..depth {
        s.push_str(close);
    }
    s
}

#[tokio::test]
async fn nesting_100000_levels_deep_anywhere_is_answered_without_stack_overflow() {
    let (router, _) = common::admission::router();
    const DEPTH: usize = 100_000;
    let uid = format!(r#""uid":"{UID}""#);
    let pod_create =
        r#""resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE""#;
    let env = |request: String, top: &str| {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"{top},"request":{request}}}"#
        )
    };
    for array in [true, false] {
        let deep = nested(DEPTH, array);
        // Skipped (unknown field) at the top, in the request, in the Pod and in its spec:
        // serde_json skips unknown values iteratively, so the review is answered normally.
        let in_top = env(
            format!("{{{uid},{pod_create},\"object\":{{}}}}"),
            &format!(",\"x\":{deep}"),
        );
        let in_request = env(
            format!("{{{uid},\"x\":{deep},{pod_create},\"object\":{{}}}}"),
            "",
        );
        let in_pod = env(
            format!(
                r#"{{{uid},{pod_create},"object":{{"x":{deep},"spec":{{"containers":[{{"image":"cr.yandex/crp1/app"}}]}}}}}}"#
            ),
            "",
        );
        for body in [&in_top, &in_request] {
            let (s, b) = post(&router, body.clone()).await;
            assert!(is_unchanged(&answer(s, &b)));
        }
        let (s, b) = post(&router, in_pod).await;
        assert!(
            !is_unchanged(&answer(s, &b)),
            "injected despite the deep field"
        );

        // As the whole object (a RawValue, also skipped iteratively), then decoded as a
        // Pod: not a Pod, allowed unchanged.
        let as_object = env(format!("{{{uid},{pod_create},\"object\":{deep}}}"), "");
        let (s, b) = post(&router, as_object).await;
        assert!(is_unchanged(&answer(s, &b)));
        // Where the decision reads a typed field: refused at the first wrong type.
        let in_containers = env(
            format!(r#"{{{uid},{pod_create},"object":{{"spec":{{"containers":{deep}}}}}}}"#),
            "",
        );
        let (s, b) = post(&router, in_containers).await;
        assert!(is_unchanged(&answer(s, &b)));
        let in_annotations = env(
            format!(
                r#"{{{uid},{pod_create},"object":{{"metadata":{{"annotations":{{"k":{deep}}}}}}}}}"#
            ),
            "",
        );
        let (s, b) = post(&router, in_annotations).await;
        assert!(is_unchanged(&answer(s, &b)));
        // As the request itself or the uid: not an AdmissionReview.
        let (s, b) = post(&router, env(deep.clone(), "")).await;
        refused(s, &b);
        let (s, b) = post(&router, env(format!("{{\"uid\":{deep}}}"), "")).await;
        refused(s, &b);
        // The bare nesting as the body.
        let (s, b) = post(&router, deep.clone()).await;
        refused(s, &b);
    }
}

#[tokio::test]
async fn nesting_is_also_safe_on_a_small_thread_stack() {
    // The same skips on a 256 KiB stack: no recursion proportional to the depth anywhere.
    let deep = nested(100_000, true);
    let body = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"{UID}","resource":{{"group":"","version":"v1","resource":"pods"}},"operation":"CREATE","object":{{"x":{deep},"spec":{{"containers":[{{"image":"cr.yandex/crp1/app"}}]}}}}}}}}"#
    );
    let (router, _) = common::admission::router();
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(post(&router, body))
        })
        .unwrap();
    let (s, b) = handle.join().expect("no stack overflow");
    assert!(!is_unchanged(&answer(s, &b)));
}

/// Assert `f` takes less than `bound` (debug build, loaded CI machine: generous bounds
/// that still catch quadratic behaviour, which takes minutes at these sizes).
async fn within<T>(bound: Duration, what: &str, f: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    assert!(
        start.elapsed() < bound,
        "{what} took {:?} (bound {bound:?})",
        start.elapsed()
    );
    out
}

#[tokio::test]
async fn huge_strings_are_linear_and_allowed_unchanged() {
    let (router, metrics) = common::admission::router();
    let bound = Duration::from_secs(5);
    // Strings up to what a Pod the API server can store may hold (etcd: 1.5 MiB for the
    // whole object) are decoded. A 1 MiB image from a configured registry is not a valid
    // reference (over 255 characters), so it matches nothing.
    let one_mib = 1024 * 1024;
    for image in [
        format!("cr.yandex/{}", "a".repeat(one_mib)),
        format!("cr.yandex/{}", "a/".repeat(one_mib / 2)),
        format!("cr.yandex/app:{}", "1".repeat(one_mib)),
        format!("cr.yandex/app@sha256:{}", "0".repeat(one_mib)),
        "\u{e9}".repeat(one_mib / 2),
        format!("{}.yandex/app", "x.".repeat(one_mib / 2)),
    ] {
        let body = serde_json::to_vec(&review(pod(&image))).unwrap();
        let (s, b) = within(bound, "a 1 MiB image", post(&router, body)).await;
        assert!(is_unchanged(&answer(s, &b)));
    }
    assert!(
        metrics
            .encode()
            .contains("pullsecret_injector_unparsable_images_total 6"),
        "{}",
        metrics.encode()
    );
    // A 1 MiB annotation value and name: read, injected.
    let mut v = review(pod("cr.yandex/crp1/app"));
    v["request"]["object"]["metadata"]["annotations"] = json!({"big": "v".repeat(one_mib)});
    v["request"]["object"]["metadata"]["name"] = json!("n".repeat(one_mib));
    let (s, b) = within(
        bound,
        "a 1 MiB annotation",
        post(&router, serde_json::to_vec(&v).unwrap()),
    )
    .await;
    let out = answer(s, &b);
    assert_eq!(out["response"]["patchType"], "JSONPatch");
    // Longer strings (5 MiB) would cost more memory to decode than the budget holds
    // (serde's error message for a string in the wrong place quotes it whole): the
    // envelope is read without decoding the Pod, which is allowed unchanged and counted
    // invalid, the uid echoed exactly (even a 5 MiB one).
    let five_mib = 5 * one_mib;
    let invalid_before = counted(&metrics, "invalid");
    let mut annotated = review(pod("cr.yandex/crp1/app"));
    annotated["request"]["object"]["metadata"]["annotations"] =
        json!({"big": "v".repeat(five_mib)});
    let mut long_uid = review(pod("cr.yandex/crp1/app"));
    long_uid["request"]["uid"] = json!("u".repeat(five_mib));
    let mut misplaced = review(pod("x"));
    misplaced["request"]["object"]["spec"]["containers"] = json!("\u{301}".repeat(five_mib / 2));
    for (what, v) in [
        (
            "a 5 MiB image",
            review(pod(&format!("cr.yandex/{}", "a".repeat(five_mib)))),
        ),
        ("a 5 MiB annotation", annotated),
        ("a 5 MiB string where the containers belong", misplaced),
    ] {
        let (s, b) = within(bound, what, post(&router, serde_json::to_vec(&v).unwrap())).await;
        assert!(is_unchanged(&answer(s, &b)), "{what}");
    }
    let (s, b) = within(
        bound,
        "a 5 MiB uid",
        post(&router, serde_json::to_vec(&long_uid).unwrap()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let out: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        out["response"]["uid"].as_str().map(str::len),
        Some(five_mib)
    );
    assert_eq!(counted(&metrics, "invalid"), invalid_before + 4);
}

#[tokio::test]
async fn the_most_images_and_pull_secrets_a_pod_may_list_are_not_quadratic() {
    let (router, metrics) = common::admission::router();
    // 10,000 containers pulling from a configured registry (the most a list may hold;
    // mutate::MAX_ENTRIES) and 10,000 existing pull secrets, none of them ours. Checking
    // each image against each existing entry would be 1e8 comparisons.
    let containers: Vec<Value> = (0..10_000)
        .map(|_| json!({"image": "cr.yandex/a"}))
        .collect();
    let existing: Vec<Value> = (0..10_000).map(|_| json!({"name": "x"})).collect();
    let object = json!({"spec": {"containers": containers.clone(), "imagePullSecrets": existing}});
    let body = serde_json::to_vec(&review(object)).unwrap();
    let (s, b) = within(
        Duration::from_secs(2),
        "10k images x 10k secrets",
        post(&router, body),
    )
    .await;
    let out = answer(s, &b);
    assert_eq!(
        patch_of(&out),
        json!([{"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": "yc-registry-secret"}}])
    );
    // One more entry is more than a Pod may list here: not read, allowed unchanged.
    let mut more = containers;
    more.push(json!({"image": "cr.yandex/a"}));
    let body = serde_json::to_vec(&review(json!({"spec": {"containers": more}}))).unwrap();
    let (s, b) = post(&router, body).await;
    assert!(is_unchanged(&answer(s, &b)));
    assert_eq!(counted(&metrics, "invalid"), 1);
}

#[tokio::test]
async fn invalid_utf8_is_400_where_it_is_read_and_skipped_where_it_is_not() {
    let (router, _) = common::admission::router();
    let body = |uid: &[u8], image: &[u8], ignored: &[u8]| {
        let mut b =
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""#
                .to_vec();
        b.extend_from_slice(uid);
        b.extend_from_slice(br#"","userInfo":{"username":""#);
        b.extend_from_slice(ignored);
        b.extend_from_slice(br#""},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","object":{"spec":{"containers":[{"image":""#);
        b.extend_from_slice(image);
        b.extend_from_slice(br#""}]}}}}"#);
        b
    };
    // In the uid: not a review (400).
    let (s, b) = post(&router, body(b"u\xff", b"cr.yandex/a", b"x")).await;
    let text = refused(s, &b);
    assert!(text.contains("invalid unicode code point"), "{text}");
    // Anywhere in the object: the object is kept as raw JSON text, which must be UTF-8.
    let (s, b) = post(&router, body(UID.as_bytes(), b"cr.yandex/\xff", b"x")).await;
    let text = refused(s, &b);
    assert!(text.contains("invalid unicode code point"), "{text}");
    // In a field the webhook does not read: serde_json skips it without checking UTF-8,
    // and the review is answered on its merits.
    let (s, b) = post(&router, body(UID.as_bytes(), b"cr.yandex/a", b"\xff\xfe")).await;
    assert!(!is_unchanged(&answer(s, &b)));
}
