//! The webhook router in process: a real AdmissionReview captured from kube-apiserver
//! v1.37 (tests/fixtures), and the HTTP answers to bodies and requests that are not reviews.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const FIXTURE: &str = include_str!("fixtures/admission-review-pod-create.json");

async fn send(
    router: &Router,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = router
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, bytes)
}

async fn post(router: &Router, body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
    send(
        router,
        Method::POST,
        "/mutate",
        Some("application/json"),
        body,
    )
    .await
}

#[tokio::test]
async fn captured_review_from_the_api_server_gets_the_documented_patch() {
    let (router, metrics) = common::admission::router();
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let (status, body) = post(&router, FIXTURE).await;
    assert_eq!(status, StatusCode::OK);
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["uid"], fixture["request"]["uid"]);
    assert_eq!(out["response"]["allowed"], true);
    assert_eq!(out["response"]["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(out["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    // Apply to the object the API server sent and read the result back as a typed Pod.
    let mut object = fixture["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(object).unwrap();
    let names: Vec<String> = pod
        .spec
        .unwrap()
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["yc-registry-secret"]);
    assert!(
        metrics
            .encode()
            .contains("pullsecret_injector_admission_requests_total{outcome=\"injected\"} 1")
    );
}

#[tokio::test]
async fn not_a_review_is_400_with_one_line_and_the_server_keeps_serving() {
    let (router, metrics) = common::admission::router();
    for body in [
        &b""[..],
        b"not json",
        b"[]",
        b"{\"apiVersion\":\"admission.k8s.io/v1\"",
        b"\xff\xfe\xfd",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    ] {
        let (status, text) = post(&router, body.to_vec()).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{:?}",
            String::from_utf8_lossy(body)
        );
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    }
    let (status, _) = post(&router, FIXTURE).await;
    assert_eq!(status, StatusCode::OK, "still serving after bad input");
    assert!(
        metrics
            .encode()
            .contains("pullsecret_injector_admission_requests_total{outcome=\"invalid\"} 6")
    );
}

#[tokio::test]
async fn body_over_8_mib_is_413() {
    let (router, _) = common::admission::router();
    let mut big = serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1"})).unwrap();
    big.resize(9 * 1024 * 1024, b' ');
    let (status, _) = post(&router, big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Just under the limit is read (and answered on its merits).
    let mut fixture = FIXTURE.as_bytes().to_vec();
    fixture.resize(8 * 1024 * 1024 - 1, b' ');
    let (status, _) = post(&router, fixture).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_method_path_and_content_type_are_refused() {
    let (router, _) = common::admission::router();
    let (s, _) = send(&router, Method::GET, "/mutate", None, Body::empty()).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = send(
        &router,
        Method::POST,
        "/validate",
        Some("application/json"),
        FIXTURE,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = send(
        &router,
        Method::POST,
        "/mutate",
        Some("text/plain"),
        FIXTURE,
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, _) = send(
        &router,
        Method::POST,
        "/mutate",
        Some("application/json; charset=utf-8"),
        FIXTURE,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(&router, Method::POST, "/mutate", None, FIXTURE).await;
    assert_eq!(s, StatusCode::OK, "no content type is accepted");
}
