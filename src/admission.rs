//! AdmissionReview (admission.k8s.io/v1) in and out.
//!
//! The request is decoded into a borrowed view: the envelope fields we need and the object
//! as a [`PodView`], in one pass over the body (the fast path). Only when that fails (the
//! object is not shaped like a Pod, the body is not UTF-8, or not a review at all) is the
//! body decoded again the careful way: the envelope with the object as raw JSON, decoded as
//! a [`PodView`] only when the request is a Pod CREATE, so that the answer and its reason
//! are exactly those of the careful decoding. The fast path succeeds only where the careful
//! one would give the same envelope and the same Pod, so both give the same answers; it
//! costs 40 % fewer instructions on a 5.5 KB review and half on large ones (the body is
//! scanned once, not twice, and checked for UTF-8 once).
//! The response is written by hand-shaped structs so that `patch` is the documented base64
//! string (kube-core's `with_patch` serialises bytes as a number array, kube-rs issue 1781).
//!
//! Anything that parses as a v1 AdmissionReview with a `uid` gets an answer that echoes the
//! uid and allows the request; a Pod that cannot be read is allowed unchanged (an injector
//! must never be the reason a Pod is refused). Anything else is a [`ReviewError`] (HTTP 400).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::Settings;
use crate::metrics::{Metrics, Outcome};
use crate::mutate::{Decision, PodView, plan};
use crate::registry::Registries;

/// The only review version we speak (the webhook registers `admissionReviewVersions: [v1]`).
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// Audit annotation key; the API server prefixes it with the webhook name.
pub const AUDIT_ANNOTATION: &str = "injected-image-pull-secrets";

/// Longest text taken from a request into a log line or an error message (per value).
/// Without a bound, one review with a 2 MB string where a list belongs made a 2 MB warning
/// (serde's message quotes the unexpected string in full).
pub const MAX_LOGGED_VALUE: usize = 256;

/// `value` as text of at most `max` bytes, control characters escaped (one line, no forged
/// log lines). Longer text is cut at a character boundary and ends with `… (N bytes)`, N
/// being the full length; formatting never holds more than `max` bytes of it.
pub struct Clip<T>(pub T, pub usize);

impl<T: fmt::Display> Clip<T> {
    /// The clipped text as a `String` (for error messages).
    pub fn text(&self) -> String {
        self.to_string()
    }
}

impl<T: fmt::Display> fmt::Display for Clip<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Capped {
            out: String,
            max: usize,
            total: usize,
            cut: bool,
        }
        impl fmt::Write for Capped {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                self.total += s.len();
                if self.cut {
                    return Ok(()); // count the rest, keep nothing more
                }
                for c in s.chars() {
                    let escaped = c.is_control().then(|| c.escape_default());
                    let len = escaped.clone().map_or(c.len_utf8(), |e| e.count());
                    if self.out.len() + len > self.max {
                        self.cut = true;
                        break;
                    }
                    match escaped {
                        Some(e) => self.out.extend(e),
                        None => self.out.push(c),
                    }
                }
                Ok(())
            }
        }
        let mut w = Capped {
            out: String::new(),
            max: self.1,
            total: 0,
            cut: false,
        };
        fmt::write(&mut w, format_args!("{}", self.0))?;
        f.write_str(&w.out)?;
        if w.cut {
            write!(f, "… ({} bytes)", w.total)?;
        }
        Ok(())
    }
}

/// A `Debug` value shown through [`Clip`].
pub struct AsDebug<T>(pub T);

impl<T: fmt::Debug> fmt::Display for AsDebug<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

fn clip<T: fmt::Display>(value: T) -> Clip<T> {
    Clip(value, MAX_LOGGED_VALUE)
}

/// Why a body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    /// Not JSON, or JSON of the wrong shape for an AdmissionReview.
    #[error("body is not an AdmissionReview: {0}")]
    Malformed(String),
    /// Another apiVersion or kind.
    #[error("expected apiVersion {API_VERSION} kind AdmissionReview, got {api_version:?} {kind:?}")]
    WrongType {
        /// What was sent.
        api_version: String,
        /// What was sent.
        kind: String,
    },
    /// No `request` object.
    #[error("AdmissionReview has no request")]
    NoRequest,
    /// No `request.uid` to echo.
    #[error("AdmissionReview request has no uid")]
    NoUid,
}

/// The envelope; `O` is how `request.object` is decoded: [`PodView`] on the fast path, raw
/// JSON on the careful one.
#[derive(Deserialize)]
#[serde(bound(deserialize = "O: Deserialize<'de>"))]
struct ReviewIn<'a, O> {
    #[serde(rename = "apiVersion", borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request: Option<RequestIn<'a, O>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(deserialize = "O: Deserialize<'de>"))]
struct RequestIn<'a, O> {
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource: Option<GroupVersionResource<'a>>,
    #[serde(borrow, default)]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    operation: Option<Cow<'a, str>>,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(default = "none")]
    object: Option<O>,
}

fn none<O>() -> Option<O> {
    None
}

#[derive(Deserialize)]
struct GroupVersionResource<'a> {
    #[serde(borrow, default)]
    group: Cow<'a, str>,
    #[serde(borrow, default)]
    version: Cow<'a, str>,
    #[serde(borrow, default)]
    resource: Cow<'a, str>,
}

/// The envelope read without decoding anything but what is checked (see
/// [`Admission::handle_undecoded`]).
#[derive(Deserialize)]
struct ShallowReview<'a> {
    #[serde(rename = "apiVersion", borrow)]
    api_version: Option<&'a RawValue>,
    #[serde(borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    request: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ShallowRequest<'a> {
    #[serde(borrow)]
    uid: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// A raw JSON value as a string, when it is one.
fn raw_string(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<Text<'_>>(raw.get())
        .ok()
        .map(|t| t.0)
}

/// The uid of a review read shallowly, with the same checks as the full decoding.
fn shallow_uid(body: &[u8]) -> Result<String, ReviewError> {
    let review: ShallowReview<'_> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(clip(e).text()))?;
    let text = |raw: Option<&RawValue>| match raw {
        None => String::new(),
        Some(r) => raw_string(r).map_or_else(|| clip(r.get()).text(), |s| clip(s).text()),
    };
    let (api_version, kind) = (text(review.api_version), text(review.kind));
    if api_version != API_VERSION || kind != "AdmissionReview" {
        return Err(ReviewError::WrongType { api_version, kind });
    }
    let request = review
        .request
        .filter(|r| r.get() != "null")
        .ok_or(ReviewError::NoRequest)?;
    if !request.get().starts_with('{') {
        return Err(ReviewError::Malformed("request is not an object".into()));
    }
    let request: ShallowRequest<'_> =
        serde_json::from_str(request.get()).map_err(|e| ReviewError::Malformed(clip(e).text()))?;
    let uid = request
        .uid
        .filter(|r| r.get() != "null")
        .ok_or(ReviewError::NoUid)?;
    let uid = raw_string(uid)
        .ok_or_else(|| ReviewError::Malformed("request.uid is not a string".into()))?;
    if uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    Ok(uid.into_owned())
}

#[derive(Serialize)]
struct ReviewOut<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_annotations: Option<BTreeMap<&'static str, String>>,
}

/// The answer to one review.
#[derive(Debug)]
pub struct Reviewed {
    /// The AdmissionReview JSON to send with HTTP 200.
    pub body: Vec<u8>,
    /// How the review was decided (also counted in metrics).
    pub outcome: Outcome,
    /// Secret names added (empty unless `outcome` is `Injected`).
    pub secrets: Vec<String>,
}

/// Answers admission reviews; shared by every connection.
///
/// `POST /mutate` answers for the registries without a `namespaceSelector`; `POST
/// /mutate/SCOPE` for the registries of one scope ([`crate::config::Settings::scopes`]). The
/// webhook never sees a namespace's labels, only its name: the API server chooses which
/// entry (and so which path) a Pod goes to, by the namespace selector each entry is
/// registered with, which is the same one the sync task applies.
#[derive(Debug, Clone)]
pub struct Admission {
    registries: Registries,
    scopes: Arc<BTreeMap<String, Registries>>,
    opt_out_annotation: String,
    metrics: Metrics,
}

impl Admission {
    /// A handler for these registries (on `POST /mutate`), without scopes.
    pub fn new(registries: Registries, opt_out_annotation: String, metrics: Metrics) -> Self {
        Self {
            registries,
            scopes: Arc::default(),
            opt_out_annotation,
            metrics,
        }
    }

    /// The handler of a validated config: the unscoped registries on `POST /mutate`, each
    /// scope on `POST /mutate/SCOPE`.
    pub fn from_settings(settings: &Settings, metrics: Metrics) -> Self {
        Self::new(
            Registries::new(settings.unscoped_entries()),
            settings.pod_opt_out_annotation.clone(),
            metrics,
        )
        .with_scopes(
            settings
                .scopes()
                .into_iter()
                .map(|(name, entries)| (name, Registries::new(entries))),
        )
    }

    /// The same handler answering `POST /mutate/NAME` with these registries.
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = (String, Registries)>) -> Self {
        self.scopes = Arc::new(scopes.into_iter().collect());
        self
    }

    /// Review one request body for `POST /mutate`: count it, time it, and log the decision.
    pub fn handle(&self, body: &[u8]) -> Result<Reviewed, ReviewError> {
        self.handle_with(&self.registries, body)
    }

    /// Review one request body for `POST /mutate/SCOPE`. A scope the config does not know
    /// (a webhook registration that does not match the config) injects nothing and is
    /// logged: never a Secret the sync task does not keep.
    pub fn handle_scope(&self, scope: &str, body: &[u8]) -> Result<Reviewed, ReviewError> {
        match self.scopes.get(scope) {
            Some(registries) => self.handle_with(registries, body),
            None => {
                tracing::warn!(
                    scope,
                    known = ?self.scopes.keys().collect::<Vec<_>>(),
                    "webhook called for a scope the config does not have; nothing injected (the MutatingWebhookConfiguration does not match the config)"
                );
                self.handle_with(&Registries::default(), body)
            }
        }
    }

    fn handle_with(&self, registries: &Registries, body: &[u8]) -> Result<Reviewed, ReviewError> {
        self.counted(|| self.review_with(registries, body))
    }

    /// Answer a review without decoding its object: only the envelope is read, with every
    /// value kept as raw JSON text until it is known to be of the right type, so that no
    /// error message can quote a long string. For bodies whose longest string
    /// (`longest` bytes) would cost more memory to decode than the server may spend
    /// (`server::QUOTE_OVERHEAD`): such a string is longer than any object the API server
    /// can store, so the Pod is allowed unchanged, its uid echoed, and counted `invalid`.
    pub fn handle_undecoded(&self, body: &[u8], longest: usize) -> Result<Reviewed, ReviewError> {
        self.counted(|| {
            let uid = shallow_uid(body)?;
            tracing::warn!(
                uid = %clip(&uid),
                longest,
                "review holds a string too long to decode within the memory budget; allowed unchanged without reading the Pod"
            );
            Ok(self.allow(&uid, Outcome::Invalid))
        })
    }

    fn counted(
        &self,
        review: impl FnOnce() -> Result<Reviewed, ReviewError>,
    ) -> Result<Reviewed, ReviewError> {
        let start = Instant::now();
        let result = review();
        let outcome = match &result {
            Ok(r) => r.outcome,
            Err(e) => {
                tracing::debug!(error = %e, "rejected admission request body");
                Outcome::Invalid
            }
        };
        self.metrics
            .observe_admission(outcome, start.elapsed().as_secs_f64());
        result
    }

    /// Review one request body for `POST /mutate` without side effects other than logging.
    pub fn review(&self, body: &[u8]) -> Result<Reviewed, ReviewError> {
        self.review_with(&self.registries, body)
    }

    fn review_with(&self, registries: &Registries, body: &[u8]) -> Result<Reviewed, ReviewError> {
        // Fast path: envelope and Pod in one pass, over a body checked to be UTF-8 once up
        // front (`from_str` then does not check every string it reads again).
        if let Ok(text) = std::str::from_utf8(body)
            && let Ok(review) = serde_json::from_str::<ReviewIn<'_, PodView<'_>>>(text)
        {
            return self.decide(registries, review, Ok);
        }
        // Careful path: the envelope first, the object only if it should be a Pod.
        let mut review: ReviewIn<'_, &RawValue> =
            serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(clip(e).text()))?;
        if let Some(request) = review.request.as_mut() {
            request.object = request.object.filter(|o| o.get() != "null");
        }
        self.decide(registries, review, |object| {
            PodView::from_slice(object.get().as_bytes())
        })
    }

    /// The answer to a decoded envelope; `pod` reads the object (once, for a Pod CREATE).
    fn decide<'a, O>(
        &self,
        registries: &Registries,
        review: ReviewIn<'a, O>,
        pod: impl FnOnce(O) -> Result<PodView<'a>, serde_json::Error>,
    ) -> Result<Reviewed, ReviewError> {
        let api_version = review.api_version.as_deref().unwrap_or_default();
        let kind = review.kind.as_deref().unwrap_or_default();
        if api_version != API_VERSION || kind != "AdmissionReview" {
            return Err(ReviewError::WrongType {
                api_version: clip(api_version).text(),
                kind: clip(kind).text(),
            });
        }
        let request = review.request.ok_or(ReviewError::NoRequest)?;
        let uid = request.uid.as_deref().ok_or(ReviewError::NoUid)?;
        if uid.is_empty() {
            return Err(ReviewError::NoUid);
        }
        let namespace = request.namespace.as_deref().unwrap_or_default();

        let is_pod_create = request
            .resource
            .as_ref()
            .is_some_and(|r| r.group.is_empty() && r.version == "v1" && r.resource == "pods")
            && request
                .sub_resource
                .as_deref()
                .unwrap_or_default()
                .is_empty()
            && request.operation.as_deref() == Some("CREATE");
        if !is_pod_create {
            return Ok(self.allow(uid, Outcome::Skipped));
        }

        // Everything logged below comes from the request: each value is clipped.
        let (log_uid, log_ns) = (clip(uid), clip(namespace));
        let Some(object) = request.object else {
            tracing::warn!(
                uid = %log_uid,
                namespace = %log_ns,
                "Pod CREATE without an object; allowed unchanged"
            );
            return Ok(self.allow(uid, Outcome::Invalid));
        };
        let pod = match pod(object) {
            Ok(pod) => pod,
            Err(e) => {
                tracing::warn!(uid = %log_uid, namespace = %log_ns, error = %clip(&e), "object is not a readable Pod; allowed unchanged");
                return Ok(self.allow(uid, Outcome::Invalid));
            }
        };
        let plan = plan(&pod, registries, &self.opt_out_annotation);
        if !plan.unparsable_images.is_empty() {
            self.metrics
                .count_unparsable_images(plan.unparsable_images.len());
            tracing::debug!(uid = %log_uid, namespace = %log_ns, pod = %clip(pod.display_name()), images = %Clip(AsDebug(&plan.unparsable_images), 4 * MAX_LOGGED_VALUE), "image references that do not parse match no registry");
        }
        let dry_run = request.dry_run.unwrap_or(false);
        match plan.decision {
            Decision::Skipped(reason) => {
                tracing::debug!(uid = %log_uid, namespace = %log_ns, pod = %clip(pod.display_name()), dry_run, ?reason, outcome = "skipped", "admission decision");
                Ok(self.allow(uid, Outcome::Skipped))
            }
            Decision::Unchanged => {
                tracing::debug!(uid = %log_uid, namespace = %log_ns, pod = %clip(pod.display_name()), dry_run, outcome = "unchanged", "admission decision");
                Ok(self.allow(uid, Outcome::Unchanged))
            }
            Decision::Inject { secrets, patch } => {
                tracing::info!(uid = %log_uid, namespace = %log_ns, pod = %clip(pod.display_name()), dry_run, outcome = "injected", secrets = ?secrets, "admission decision");
                // Serialising a Patch of adds with string values cannot fail.
                let patch_json = serde_json::to_vec(&patch).expect("JSON patch serialises");
                let out = ReviewOut {
                    api_version: API_VERSION,
                    kind: "AdmissionReview",
                    response: ResponseOut {
                        uid,
                        allowed: true,
                        patch_type: Some("JSONPatch"),
                        patch: Some(base64::engine::general_purpose::STANDARD.encode(patch_json)),
                        audit_annotations: Some(BTreeMap::from([(
                            AUDIT_ANNOTATION,
                            secrets.join(","),
                        )])),
                    },
                };
                Ok(Reviewed {
                    body: serde_json::to_vec(&out).expect("review serialises"),
                    outcome: Outcome::Injected,
                    secrets,
                })
            }
        }
    }

    fn allow(&self, uid: &str, outcome: Outcome) -> Reviewed {
        let out = ReviewOut {
            api_version: API_VERSION,
            kind: "AdmissionReview",
            response: ResponseOut {
                uid,
                allowed: true,
                patch_type: None,
                patch: None,
                audit_annotations: None,
            },
        };
        Reviewed {
            body: serde_json::to_vec(&out).expect("review serialises"),
            outcome,
            secrets: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{HostPattern, RegistryEntry};
    use serde_json::{Value, json};

    fn admission() -> Admission {
        let entry = RegistryEntry::new(
            "yandex",
            "yc-secret",
            vec![
                HostPattern::parse("cr.yandex").unwrap(),
                HostPattern::parse("registry.yandexcloud.net").unwrap(),
            ],
        );
        Admission::new(
            Registries::new(vec![entry]),
            "pullsecret-injector.io/skip".into(),
            Metrics::new(),
        )
    }

    fn review(request: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
    }

    fn pod_create(image: &str) -> Value {
        review(json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-"},
                       "spec": {"containers": [{"name": "a", "image": image}]}}
        }))
    }

    fn answer(a: &Admission, v: &Value) -> (Value, Outcome) {
        let r = a.handle(&serde_json::to_vec(v).unwrap()).expect("answered");
        (serde_json::from_slice(&r.body).unwrap(), r.outcome)
    }

    #[test]
    fn pod_create_from_private_registry_gets_base64_json_patch() {
        let (out, outcome) = answer(&admission(), &pod_create("cr.yandex/crp1/app:1"));
        assert_eq!(outcome, Outcome::Injected);
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        let resp = &out["response"];
        assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(resp["allowed"], true);
        assert_eq!(resp["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(resp["patch"].as_str().expect("patch is a string"))
            .unwrap();
        let patch: Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(
            patch,
            json!([{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "yc-secret"}]}])
        );
        assert_eq!(resp["auditAnnotations"][AUDIT_ANNOTATION], "yc-secret");
    }

    #[test]
    fn unchanged_pod_gets_no_patch_type() {
        let (out, outcome) = answer(&admission(), &pod_create("nginx"));
        assert_eq!(outcome, Outcome::Unchanged);
        assert_eq!(
            out["response"],
            json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
        );
    }

    #[test]
    fn dry_run_is_answered_the_same_way() {
        let mut v = pod_create("cr.yandex/crp1/app:1");
        v["request"]["dryRun"] = json!(true);
        let (out, outcome) = answer(&admission(), &v);
        assert_eq!(outcome, Outcome::Injected);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn other_operations_and_kinds_are_allowed_unchanged() {
        let a = admission();
        let mut update = pod_create("cr.yandex/crp1/app:1");
        update["request"]["operation"] = json!("UPDATE");
        let mut sub = pod_create("cr.yandex/crp1/app:1");
        sub["request"]["subResource"] = json!("ephemeralcontainers");
        let mut cm = pod_create("cr.yandex/crp1/app:1");
        cm["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "configmaps"});
        let mut apps = pod_create("cr.yandex/crp1/app:1");
        apps["request"]["resource"] = json!({"group": "apps", "version": "v1", "resource": "pods"});
        for v in [update, sub, cm, apps] {
            let (out, outcome) = answer(&a, &v);
            assert_eq!(outcome, Outcome::Skipped, "{v}");
            assert!(out["response"].get("patch").is_none());
            assert_eq!(out["response"]["allowed"], true);
        }
    }

    #[test]
    fn unreadable_pod_is_allowed_unchanged_and_counted_invalid() {
        let a = admission();
        let mut wrong_shape = pod_create("x");
        wrong_shape["request"]["object"]["spec"]["containers"] = json!("a string");
        let mut null = pod_create("x");
        null["request"]["object"] = Value::Null;
        let mut absent = pod_create("x");
        absent["request"].as_object_mut().unwrap().remove("object");
        for v in [wrong_shape, null, absent] {
            let (out, outcome) = answer(&a, &v);
            assert_eq!(outcome, Outcome::Invalid, "{v}");
            assert_eq!(
                out["response"]["uid"],
                "705ab4f5-6393-11e8-b7cc-42010a800002"
            );
            assert_eq!(out["response"]["allowed"], true);
            assert!(out["response"].get("patch").is_none());
        }
    }

    #[test]
    fn bodies_that_are_not_reviews_are_errors() {
        let a = admission();
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "body is not an AdmissionReview"),
            (b"not json", "body is not an AdmissionReview"),
            (b"[1,2]", "body is not an AdmissionReview"),
            (b"{\"apiVersion\":", "body is not an AdmissionReview"),
            (b"\xff\xfe", "body is not an AdmissionReview"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
                "expected apiVersion admission.k8s.io/v1 kind AdmissionReview, got \"admission.k8s.io/v1beta1\"",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#,
                "expected apiVersion",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "AdmissionReview has no request",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
                "AdmissionReview request has no uid",
            ),
        ];
        for (body, want) in cases {
            let e = a.handle(body).unwrap_err().to_string();
            assert!(
                e.starts_with(want),
                "{:?}: {e}",
                String::from_utf8_lossy(body)
            );
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn object_that_is_not_shaped_like_a_pod_is_still_skipped_when_not_a_pod() {
        // The one-pass decoding fails on this object; the careful one must decide.
        let mut cm = pod_create("x");
        cm["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "configmaps"});
        cm["request"]["object"] =
            json!({"kind": "ConfigMap", "spec": {"containers": "not a list"}, "metadata": []});
        let (out, outcome) = answer(&admission(), &cm);
        assert_eq!(outcome, Outcome::Skipped);
        assert_eq!(out["response"]["allowed"], true);
        let mut pod = cm.clone();
        pod["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "pods"});
        assert_eq!(answer(&admission(), &pod).1, Outcome::Invalid);
    }

    #[test]
    fn clip_bounds_text_escapes_control_characters_and_states_the_length() {
        assert_eq!(Clip("short", 10).text(), "short");
        assert_eq!(Clip("exactly10!", 10).text(), "exactly10!");
        assert_eq!(Clip("abcdefghijkl", 10).text(), "abcdefghij… (12 bytes)");
        assert_eq!(Clip("a\nb\u{7}", 20).text(), "a\\nb\\u{7}");
        // A cut never splits a character.
        assert_eq!(Clip("ééééé", 5).text(), "éé… (10 bytes)");
        let big = "x".repeat(2_000_000);
        assert_eq!(
            Clip(&big, MAX_LOGGED_VALUE).text().len(),
            MAX_LOGGED_VALUE + "… (2000000 bytes)".len()
        );
    }

    #[test]
    fn error_reasons_built_from_a_huge_request_stay_short() {
        // The 400 reasons quote the request; tests/log_bounds.rs checks the log lines.
        let huge_kind = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"{}","request":{{"uid":"u"}}}}"#,
            "k".repeat(1_000_000)
        );
        let not_json = format!("{{\"request\": \"{}\" x", "s".repeat(1_000_000));
        for body in [huge_kind, not_json] {
            let e = admission().handle(body.as_bytes()).unwrap_err().to_string();
            assert!(
                e.len() < 3 * MAX_LOGGED_VALUE,
                "{} bytes: {}",
                e.len(),
                &e[..200]
            );
            assert!(e.contains("… (1000"), "{e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn undecoded_reviews_echo_the_uid_and_allow_unchanged_with_the_same_checks() {
        let a = admission();
        for (body, uid) in [
            (
                pod_create("cr.yandex/crp1/app:1"),
                "705ab4f5-6393-11e8-b7cc-42010a800002",
            ),
            (
                {
                    let mut v = pod_create("x");
                    v["request"]["uid"] = json!("a\"b\\c\u{e9}");
                    v["request"]["object"]["spec"]["containers"] = json!("a string");
                    v
                },
                "a\"b\\c\u{e9}",
            ),
        ] {
            let r = a
                .handle_undecoded(&serde_json::to_vec(&body).unwrap(), 1 << 20)
                .unwrap();
            assert_eq!(r.outcome, Outcome::Invalid);
            let out: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(out["response"], json!({"uid": uid, "allowed": true}));
        }
        let cases: Vec<(&[u8], &str)> = vec![
            (b"not json", "body is not an AdmissionReview"),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#, "expected apiVersion admission.k8s.io/v1 kind AdmissionReview, got \"admission.k8s.io/v1beta1\""),
            (br#"{"apiVersion":5,"kind":"AdmissionReview","request":{"uid":"u"}}"#, "expected apiVersion admission.k8s.io/v1 kind AdmissionReview, got \"5\""),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "AdmissionReview has no request"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}"#, "AdmissionReview has no request"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":"xx"}"#, "body is not an AdmissionReview: request is not an object"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#, "AdmissionReview request has no uid"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""}}"#, "AdmissionReview request has no uid"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#, "body is not an AdmissionReview: request.uid is not a string"),
        ];
        for (body, want) in cases {
            let e = a.handle_undecoded(body, 1 << 20).unwrap_err().to_string();
            assert!(
                e.starts_with(want),
                "{}: {e}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn each_path_injects_only_its_scopes_registries() {
        let team_a = RegistryEntry::new(
            "team-a",
            "team-a-pull",
            vec![HostPattern::parse("registry.team-a.example").unwrap()],
        );
        let a = admission().with_scopes([("team-a".to_string(), Registries::new(vec![team_a]))]);
        let pod = |images: &[&str]| {
            let mut v = pod_create(images[0]);
            v["request"]["object"]["spec"]["containers"] = images
                .iter()
                .enumerate()
                .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
                .collect();
            serde_json::to_vec(&v).unwrap()
        };
        let both = pod(&["cr.yandex/crp/app:1", "registry.team-a.example/app:1"]);
        let secrets = |r: Result<Reviewed, ReviewError>| r.expect("answered").secrets;
        assert_eq!(secrets(a.handle(&both)), ["yc-secret"]);
        assert_eq!(secrets(a.handle_scope("team-a", &both)), ["team-a-pull"]);
        let unknown = a.handle_scope("team-b", &both).expect("answered");
        assert_eq!(unknown.outcome, Outcome::Unchanged);
        let out: Value = serde_json::from_slice(&unknown.body).unwrap();
        assert_eq!(
            out["response"],
            json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
        );
        assert!(a.handle_scope("team-a", b"not json").is_err());
    }

    #[test]
    fn uid_with_escapes_is_echoed_exactly() {
        let mut v = pod_create("nginx");
        v["request"]["uid"] = json!("a\"b\\c\u{e9}");
        let (out, _) = answer(&admission(), &v);
        assert_eq!(out["response"]["uid"], "a\"b\\c\u{e9}");
    }
}
