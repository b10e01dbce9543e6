//! The mutation decision: from a Pod and the configured registries, the JSON patch that adds
//! the missing `imagePullSecrets`. Pure: no I/O, no clock, no globals.
//!
//! The webhook decodes only what the decision needs ([`PodView`], borrowing from the request
//! bytes) instead of a full `k8s_openapi` Pod: a Pod carries env, probes and volumes that the
//! decision never reads, and decoding them costs more than the rest of the request. Typed Pods
//! (tests, `explain`) go through the same view via [`PodView::from_value`].

use std::borrow::Cow;
use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation};
use jsonptr::PointerBuf;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::registry::Registries;

/// The fields of a Pod that the decision reads. Unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct PodView<'a> {
    /// `metadata`.
    #[serde(default, borrow)]
    pub metadata: MetaView<'a>,
    /// `spec` (absent on a malformed object; then nothing is injected).
    #[serde(default, borrow)]
    pub spec: Option<SpecView<'a>>,
}

/// The part of `metadata` the decision and the logs read.
#[derive(Debug, Default, Deserialize)]
pub struct MetaView<'a> {
    /// `metadata.name` (often empty on CREATE from a controller).
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub name: Option<Cow<'a, str>>,
    /// `metadata.generateName`.
    #[serde(default, borrow, rename = "generateName", deserialize_with = "opt_cow")]
    pub generate_name: Option<Cow<'a, str>>,
    /// `metadata.annotations`.
    #[serde(default, borrow, deserialize_with = "bounded::map")]
    pub annotations: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

/// The part of `spec` the decision reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecView<'a> {
    /// `spec.containers`.
    #[serde(default, borrow, deserialize_with = "bounded::seq")]
    pub containers: Option<Vec<ContainerView<'a>>>,
    /// `spec.initContainers` (sidecars included).
    #[serde(default, borrow, deserialize_with = "bounded::seq")]
    pub init_containers: Option<Vec<ContainerView<'a>>>,
    /// `spec.ephemeralContainers`.
    #[serde(default, borrow, deserialize_with = "bounded::seq")]
    pub ephemeral_containers: Option<Vec<ContainerView<'a>>>,
    /// `spec.volumes` (image volumes carry an image reference).
    #[serde(default, borrow, deserialize_with = "bounded::seq")]
    pub volumes: Option<Vec<VolumeView<'a>>>,
    /// `spec.imagePullSecrets`: `None` when absent or null, `Some(vec![])` for `[]`.
    #[serde(default, borrow, deserialize_with = "bounded::seq")]
    pub image_pull_secrets: Option<Vec<SecretRefView<'a>>>,
}

/// A container's image.
#[derive(Debug, Default, Deserialize)]
pub struct ContainerView<'a> {
    /// `image`.
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub image: Option<Cow<'a, str>>,
}

/// A volume; only image volumes matter.
#[derive(Debug, Default, Deserialize)]
pub struct VolumeView<'a> {
    /// `image` (Kubernetes 1.31+ image volumes).
    #[serde(default, borrow)]
    pub image: Option<ImageVolumeView<'a>>,
}

/// `volumes[].image`.
#[derive(Debug, Default, Deserialize)]
pub struct ImageVolumeView<'a> {
    /// `reference`.
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub reference: Option<Cow<'a, str>>,
}

/// `imagePullSecrets[]` entry.
#[derive(Debug, Default, Deserialize)]
pub struct SecretRefView<'a> {
    /// `name` (optional in the API).
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub name: Option<Cow<'a, str>>,
}

/// `Option<Cow<str>>` that borrows from the input when the string has no escapes (serde's
/// derive borrows a bare `Cow<str>` field only, not one inside an `Option`).
fn opt_cow<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// Decoding with a bound on entries: a list or map of a Pod holds at most [`MAX_ENTRIES`]
/// entries, and annotations borrow from the input. Each entry decodes to a struct of about
/// 24 bytes, so without a bound 8 MiB of `{},{},...` made 64 MiB of `Vec` (more than the
/// chart's whole memory limit with two such requests), and every annotation was two new
/// strings. A Pod over the bound is not readable: it is allowed unchanged and counted.
mod bounded {
    use super::*;
    use serde::de::{Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use std::fmt;
    use std::marker::PhantomData;

    struct Seq<T>(Vec<T>);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Seq<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<T>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
                type Value = Seq<T>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "a list of at most {MAX_ENTRIES} entries")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                    while let Some(item) = seq.next_element()? {
                        if out.len() == MAX_ENTRIES {
                            return Err(A::Error::custom(format_args!(
                                "a list of more than {MAX_ENTRIES} entries"
                            )));
                        }
                        out.push(item);
                    }
                    Ok(Seq(out))
                }
            }
            d.deserialize_seq(V(PhantomData))
        }
    }

    /// `Option<Vec<T>>` of at most [`MAX_ENTRIES`] entries.
    pub(super) fn seq<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(Option::<Seq<T>>::deserialize(d)?.map(|s| s.0))
    }

    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);

    type Annotations<'a> = BTreeMap<Cow<'a, str>, Cow<'a, str>>;

    struct Map<'a>(Annotations<'a>);

    impl<'de: 'a, 'a> Deserialize<'de> for Map<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Map<'a>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "a map of at most {MAX_ENTRIES} string entries")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut out = BTreeMap::new();
                    while let Some((Borrowed(k), Borrowed(v))) = map.next_entry()? {
                        if out.len() == MAX_ENTRIES {
                            return Err(A::Error::custom(format_args!(
                                "a map of more than {MAX_ENTRIES} entries"
                            )));
                        }
                        out.insert(k, v);
                    }
                    Ok(Map(out))
                }
            }
            d.deserialize_map(V(PhantomData))
        }
    }

    /// Annotations: at most [`MAX_ENTRIES`], borrowed from the input where unescaped.
    pub(super) fn map<'de: 'a, 'a, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Annotations<'a>>, D::Error> {
        Ok(Option::<Map<'a>>::deserialize(d)?.map(|m| m.0))
    }
}

/// Most entries decoded in one list (`containers`, `volumes`...) or map (`annotations`) of
/// a Pod; see `bounded`. Far above any real Pod, far below what a hostile body could hold.
pub const MAX_ENTRIES: usize = 10_000;

impl<'a> PodView<'a> {
    /// Decode the view from JSON bytes of a Pod.
    pub fn from_slice(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// A printable identity for logs: the name, else `generateName*`, else `<unnamed>`.
    pub fn display_name(&self) -> String {
        match (&self.metadata.name, &self.metadata.generate_name) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) if !g.is_empty() => format!("{g}*"),
            _ => "<unnamed>".to_string(),
        }
    }

    /// Every image the Pod would pull, in spec order (containers, initContainers,
    /// ephemeralContainers, image volumes).
    pub fn images(&self) -> impl Iterator<Item = &str> {
        let spec = self.spec.as_ref();
        let containers = [
            spec.and_then(|s| s.containers.as_deref()),
            spec.and_then(|s| s.init_containers.as_deref()),
            spec.and_then(|s| s.ephemeral_containers.as_deref()),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|c| c.image.as_deref());
        let volumes = spec
            .and_then(|s| s.volumes.as_deref())
            .into_iter()
            .flatten()
            .filter_map(|v| v.image.as_ref()?.reference.as_deref());
        containers.chain(volumes)
    }
}

impl<'a> PodView<'a> {
    /// Decode the view from a JSON value, borrowing its strings (tests and the CLI).
    pub fn from_value(value: &'a Value) -> Result<Self, serde_json::Error> {
        Self::deserialize(value)
    }
}

/// Why nothing was injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The Pod carries the opt-out annotation set to `"true"`.
    OptOut,
}

/// What the webhook should do with a Pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Left alone on request.
    Skipped(SkipReason),
    /// Nothing to add: no image from a configured registry, or its Secrets are listed already.
    Unchanged,
    /// Add these Secret names (in this order) with this patch.
    Inject {
        /// Secret names added, in the order they are appended.
        secrets: Vec<String>,
        /// RFC 6902 operations.
        patch: Patch,
    },
}

/// The outcome of planning, with the diagnostics the caller logs and counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The decision.
    pub decision: Decision,
    /// Images that did not parse as references (they match nothing).
    pub unparsable_images: Vec<String>,
}

/// Decide what to add to a Pod.
///
/// Keeps existing entries and their order, appends each missing Secret once, in the order
/// of first need (spec order of the images, then registry order). Idempotent: applying the
/// patch and planning again gives [`Decision::Unchanged`].
pub fn plan(pod: &PodView<'_>, registries: &Registries, opt_out_annotation: &str) -> Plan {
    let opted_out = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(opt_out_annotation))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if opted_out {
        return Plan {
            decision: Decision::Skipped(SkipReason::OptOut),
            unparsable_images: Vec::new(),
        };
    }

    let existing = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref());
    let already = |name: &str| {
        existing.is_some_and(|list| list.iter().any(|e| e.name.as_deref() == Some(name)))
    };
    // Collect the needed names first and look each up in the Pod's list once: a Pod within
    // the body limit can carry 10^5 images and 10^5 existing entries, and checking every
    // image against every entry would take minutes.
    let mut needed: Vec<&str> = Vec::new();
    let mut unparsable_images = Vec::new();
    for image in pod.images() {
        match registries.match_image(image) {
            Ok(entries) => {
                for entry in entries {
                    let name = entry.secret_name();
                    if !needed.contains(&name) {
                        needed.push(name);
                    }
                }
            }
            Err(_) => unparsable_images.push(image.to_string()),
        }
    }
    let secrets: Vec<String> = needed
        .into_iter()
        .filter(|name| !already(name))
        .map(str::to_string)
        .collect();

    let decision = if secrets.is_empty() {
        Decision::Unchanged
    } else {
        let patch = patch_for(existing.is_some(), &secrets);
        Decision::Inject { secrets, patch }
    };
    Plan {
        decision,
        unparsable_images,
    }
}

/// `add /spec/imagePullSecrets` with the whole array when the field is absent, else one
/// `add /spec/imagePullSecrets/-` per name (an empty `[]` exists and takes appends).
fn patch_for(field_exists: bool, secrets: &[String]) -> Patch {
    let base = PointerBuf::from_tokens(["spec", "imagePullSecrets"]);
    let ops = if field_exists {
        let append = PointerBuf::from_tokens(["spec", "imagePullSecrets", "-"]);
        secrets
            .iter()
            .map(|name| {
                PatchOperation::Add(AddOperation {
                    path: append.clone(),
                    value: json!({ "name": name }),
                })
            })
            .collect()
    } else {
        vec![PatchOperation::Add(AddOperation {
            path: base,
            value: Value::Array(secrets.iter().map(|n| json!({ "name": n })).collect()),
        })]
    };
    Patch(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{HostPattern, RegistryEntry};
    use k8s_openapi::api::core::v1::Pod;

    const SKIP: &str = "pullsecret-injector.io/skip";

    fn registries() -> Registries {
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
        Registries::new(vec![
            entry(
                "yandex",
                "yc-secret",
                &["cr.yandex", "registry.yandexcloud.net"],
            ),
            entry("corp", "corp-secret", &["*.corp.example.com"]),
            entry("team", "team-secret", &["cr.yandex/crpteam"]),
        ])
    }

    #[test]
    fn lists_and_annotations_are_decoded_up_to_the_bound() {
        let entries = |n: usize, item: &str| vec![item; n].join(",");
        for field in [
            "containers",
            "initContainers",
            "ephemeralContainers",
            "volumes",
            "imagePullSecrets",
        ] {
            let at = format!(
                r#"{{"spec":{{"{field}":[{}]}}}}"#,
                entries(MAX_ENTRIES, "{}")
            );
            assert!(PodView::from_slice(at.as_bytes()).is_ok(), "{field}");
            let over = format!(
                r#"{{"spec":{{"{field}":[{}]}}}}"#,
                entries(MAX_ENTRIES + 1, "{}")
            );
            let e = PodView::from_slice(over.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("a list of more than 10000 entries"),
                "{field}: {e}"
            );
        }
        let annotations = |n: usize| {
            let map: Vec<String> = (0..n).map(|i| format!(r#""k{i}":"v""#)).collect();
            format!(r#"{{"metadata":{{"annotations":{{{}}}}}}}"#, map.join(","))
        };
        let at = annotations(MAX_ENTRIES);
        let view = PodView::from_slice(at.as_bytes()).unwrap();
        let decoded = view.metadata.annotations.unwrap();
        assert_eq!(decoded.len(), MAX_ENTRIES);
        assert!(
            decoded
                .iter()
                .all(|(k, v)| matches!(k, Cow::Borrowed(_)) && matches!(v, Cow::Borrowed(_))),
            "unescaped annotations borrow from the body"
        );
        let e = PodView::from_slice(annotations(MAX_ENTRIES + 1).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("a map of more than 10000 entries"), "{e}");
        // null and absent stay None; escaped strings are unescaped.
        let v = PodView::from_slice(
            br#"{"metadata":{"annotations":{"a\u0062":"c\"d"}},"spec":{"containers":null}}"#,
        )
        .unwrap();
        assert_eq!(v.metadata.annotations.unwrap()["ab"], "c\"d");
        assert!(v.spec.unwrap().containers.is_none());
    }

    fn pod(v: Value) -> Value {
        let mut base = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}
        });
        json_patch::merge(&mut base, &v);
        base
    }

    /// Plan, apply the patch, check the result is still a valid typed Pod, and check
    /// idempotency; returns (secrets added, resulting imagePullSecrets names).
    fn run(v: Value) -> (Decision, Vec<String>) {
        let view = PodView::from_value(&v).expect("view decodes");
        let p = plan(&view, &registries(), SKIP);
        let mut doc = v.clone();
        if let Decision::Inject { patch, .. } = &p.decision {
            json_patch::patch(&mut doc, patch).expect("patch applies");
            let again = plan(&PodView::from_value(&doc).unwrap(), &registries(), SKIP);
            assert_eq!(again.decision, Decision::Unchanged, "not idempotent");
        }
        let typed: Pod = serde_json::from_value(doc).expect("still a Pod");
        let names = typed
            .spec
            .unwrap()
            .image_pull_secrets
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect();
        (p.decision, names)
    }

    fn secrets(d: &Decision) -> Vec<&str> {
        match d {
            Decision::Inject { secrets, .. } => secrets.iter().map(String::as_str).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn pod_from_private_registry_gets_its_secret_as_a_new_array() {
        let v =
            pod(json!({"spec": {"containers": [{"name": "a", "image": "cr.yandex/crp1/app:1"}]}}));
        let (d, names) = run(v);
        assert_eq!(secrets(&d), ["yc-secret"]);
        assert_eq!(names, ["yc-secret"]);
        let Decision::Inject { patch, .. } = d else {
            unreachable!()
        };
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "yc-secret"}]}])
        );
    }

    #[test]
    fn pod_with_only_docker_hub_images_is_unchanged() {
        let v = pod(
            json!({"spec": {"containers": [{"name": "a", "image": "nginx:1"}, {"name": "b", "image": "docker.io/library/redis"}]}}),
        );
        assert_eq!(run(v), (Decision::Unchanged, vec![]));
    }

    #[test]
    fn image_in_init_container_only_is_injected() {
        let v = pod(
            json!({"spec": {"initContainers": [{"name": "i", "image": "registry.yandexcloud.net/r/x:2"}]}}),
        );
        assert_eq!(run(v).1, ["yc-secret"]);
    }

    #[test]
    fn image_in_ephemeral_container_is_injected() {
        let v = pod(
            json!({"spec": {"ephemeralContainers": [{"name": "e", "image": "a.corp.example.com/dbg"}]}}),
        );
        assert_eq!(run(v).1, ["corp-secret"]);
    }

    #[test]
    fn image_volume_reference_is_injected() {
        let v = pod(
            json!({"spec": {"volumes": [{"name": "v", "image": {"reference": "cr.yandex/crp1/data:1"}}]}}),
        );
        assert_eq!(run(v).1, ["yc-secret"]);
    }

    #[test]
    fn images_from_two_registries_get_both_secrets_each_once() {
        let v = pod(json!({"spec": {
            "containers": [
                {"name": "a", "image": "cr.yandex/crp1/app:1"},
                {"name": "b", "image": "x.corp.example.com/b"},
                {"name": "c", "image": "registry.yandexcloud.net/r/c"}
            ],
            "initContainers": [{"name": "i", "image": "y.corp.example.com/i"}]
        }}));
        let (d, names) = run(v);
        assert_eq!(secrets(&d), ["yc-secret", "corp-secret"]);
        assert_eq!(names, ["yc-secret", "corp-secret"]);
    }

    #[test]
    fn image_matching_two_entries_gets_both_secrets() {
        let v =
            pod(json!({"spec": {"containers": [{"name": "a", "image": "cr.yandex/crpteam/app"}]}}));
        assert_eq!(run(v).1, ["yc-secret", "team-secret"]);
    }

    #[test]
    fn pod_already_listing_the_secret_is_unchanged() {
        let v = pod(json!({"spec": {
            "containers": [{"name": "a", "image": "cr.yandex/crp1/app"}],
            "imagePullSecrets": [{"name": "yc-secret"}]
        }}));
        assert_eq!(run(v), (Decision::Unchanged, vec!["yc-secret".to_string()]));
    }

    #[test]
    fn pod_with_existing_pull_secret_gets_only_the_missing_one_appended() {
        let v = pod(json!({"spec": {
            "containers": [{"name": "a", "image": "cr.yandex/crp1/app"}, {"name": "b", "image": "q.corp.example.com/b"}],
            "imagePullSecrets": [{"name": "mine"}, {"name": "yc-secret"}]
        }}));
        let (d, names) = run(v);
        assert_eq!(names, ["mine", "yc-secret", "corp-secret"]);
        let Decision::Inject { patch, .. } = d else {
            unreachable!()
        };
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([{"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": "corp-secret"}}])
        );
    }

    #[test]
    fn empty_pull_secret_list_takes_appends() {
        let v = pod(json!({"spec": {
            "containers": [{"name": "a", "image": "cr.yandex/crp1/app"}],
            "imagePullSecrets": []
        }}));
        let (d, names) = run(v);
        assert_eq!(names, ["yc-secret"]);
        let Decision::Inject { patch, .. } = d else {
            unreachable!()
        };
        assert_eq!(patch.0.len(), 1);
        assert_eq!(
            serde_json::to_value(&patch.0[0]).unwrap()["path"],
            "/spec/imagePullSecrets/-"
        );
    }

    #[test]
    fn null_pull_secret_list_is_treated_as_absent() {
        let mut v =
            pod(json!({"spec": {"containers": [{"name": "a", "image": "cr.yandex/crp1/app"}]}}));
        v["spec"]["imagePullSecrets"] = Value::Null;
        let view = PodView::from_value(&v).unwrap();
        let p = plan(&view, &registries(), SKIP);
        let Decision::Inject { patch, .. } = p.decision else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(&patch.0[0]).unwrap()["path"],
            "/spec/imagePullSecrets"
        );
    }

    #[test]
    fn nameless_existing_entry_is_kept_and_does_not_count() {
        let v = pod(json!({"spec": {
            "containers": [{"name": "a", "image": "cr.yandex/crp1/app"}],
            "imagePullSecrets": [{}]
        }}));
        assert_eq!(run(v).1, ["", "yc-secret"]);
    }

    #[test]
    fn opt_out_annotation_leaves_the_pod_alone() {
        for value in ["true", "True", " true "] {
            let v = pod(json!({
                "metadata": {"annotations": {SKIP: value}},
                "spec": {"containers": [{"name": "a", "image": "cr.yandex/crp1/app"}]}
            }));
            assert_eq!(run(v).0, Decision::Skipped(SkipReason::OptOut), "{value}");
        }
    }

    #[test]
    fn opt_out_annotation_other_than_true_does_not_skip() {
        let v = pod(json!({
            "metadata": {"annotations": {SKIP: "false"}},
            "spec": {"containers": [{"name": "a", "image": "cr.yandex/crp1/app"}]}
        }));
        assert_eq!(run(v).1, ["yc-secret"]);
    }

    #[test]
    fn unparsable_image_never_blocks_and_is_reported() {
        let v = pod(json!({"spec": {"containers": [
            {"name": "a", "image": "cr.yandex/UPPER/app"},
            {"name": "b", "image": "cr.yandex/crp1/ok"}
        ]}}));
        let view = PodView::from_value(&v).unwrap();
        let p = plan(&view, &registries(), SKIP);
        assert_eq!(secrets(&p.decision), ["yc-secret"]);
        assert_eq!(p.unparsable_images, ["cr.yandex/UPPER/app"]);
    }

    #[test]
    fn pod_without_spec_or_images_is_unchanged() {
        for v in [
            json!({"metadata": {"name": "x"}}),
            json!({"spec": {}}),
            json!({"spec": {"containers": [{"name": "a"}]}}),
            json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}),
        ] {
            let view = PodView::from_value(&v).unwrap();
            assert_eq!(
                plan(&view, &registries(), SKIP).decision,
                Decision::Unchanged,
                "{v}"
            );
        }
    }

    #[test]
    fn port_must_match_exactly() {
        let v = pod(
            json!({"spec": {"containers": [{"name": "a", "image": "cr.yandex:443/crp1/app"}]}}),
        );
        assert_eq!(run(v).0, Decision::Unchanged);
    }

    #[test]
    fn view_borrows_from_request_bytes() {
        let bytes = br#"{"metadata":{"generateName":"web-"},"spec":{"containers":[{"image":"cr.yandex/a/b"}]}}"#;
        let view = PodView::from_slice(bytes).unwrap();
        assert_eq!(view.display_name(), "web-*");
        assert!(matches!(
            view.spec.as_ref().unwrap().containers.as_ref().unwrap()[0].image,
            Some(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn pointer_tokens_are_escaped_not_formatted() {
        // A JSON pointer built from tokens: the patch path is exactly the RFC 6901 form.
        let p = patch_for(false, &["a".into()]);
        assert_eq!(
            serde_json::to_value(&p).unwrap()[0]["path"],
            "/spec/imagePullSecrets"
        );
    }
}
