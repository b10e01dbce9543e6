//! Pods left without credentials: Pods whose images need a configured registry's Secret
//! that the Pod does not name, typically created before their namespace opted in or while
//! the webhook was unreachable (`failurePolicy: Ignore` admits them unchanged), and since
//! `imagePullSecrets` cannot change on an existing Pod, stuck in `ImagePullBackOff` until
//! someone recreates them.
//!
//! The decision is the webhook's own: [`examine`] runs [`crate::mutate::plan`] on the Pod
//! with the same registries and opt-out annotation, so a Pod is reported exactly when the
//! webhook would have injected something into it (and an opted-out Pod never is). Pure: the
//! watch and the Events are in [`crate::sync::pods`], the `report` command in [`report`].

pub mod report;

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use crate::mutate::{
    ContainerView, Decision, ImageVolumeView, MetaView, PodView, SecretRefView, SpecView,
    VolumeView, plan,
};
use crate::registry::Registries;

/// Controllers that create a new Pod when one of theirs is deleted, by API group and kind.
/// A Pod owned by anything else (or nothing) is never deleted.
pub const RECREATING_CONTROLLERS: &[(&str, &str)] = &[
    ("apps", "ReplicaSet"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("batch", "Job"),
    ("", "ReplicationController"),
];

/// The Pod's controller (its owner reference with `controller: true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// `apiVersion`, e.g. `apps/v1`.
    pub api_version: String,
    /// `kind`, e.g. `ReplicaSet`.
    pub kind: String,
    /// `name`.
    pub name: String,
    /// `uid`.
    pub uid: String,
}

impl Owner {
    /// Whether this controller creates a new Pod when one of its Pods is deleted.
    pub fn recreates_pods(&self) -> bool {
        let group = self
            .api_version
            .rsplit_once('/')
            .map_or("", |(group, _version)| group);
        RECREATING_CONTROLLERS
            .iter()
            .any(|(g, k)| *g == group && *k == self.kind)
    }
}

/// One Secret a Pod lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// `registries[].name`.
    pub registry: String,
    /// `registries[].secretName`.
    pub secret: String,
    /// The Pod's images that need it, in spec order.
    pub images: Vec<String>,
}

/// A Pod left without credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `status.phase` (`Pending` while its images cannot be pulled).
    pub phase: String,
    /// `metadata.creationTimestamp` (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Its controller, if any.
    pub owner: Option<Owner>,
    /// The Secrets it lacks, in the order the webhook would add them.
    pub missing: Vec<Missing>,
    /// [`Finding::reason`], for `-o json` readers.
    pub reason: String,
}

impl Finding {
    /// Why the Pod is reported, in one line: each missing Secret with the image that
    /// needs it.
    fn describe(missing: &[Missing]) -> String {
        let parts: Vec<String> = missing
            .iter()
            .map(|m| {
                let images = match m.images.as_slice() {
                    [one] => format!("image {one}"),
                    [first, rest @ ..] => format!("images {first} and {} more", rest.len()),
                    [] => "its images".to_string(),
                };
                format!(
                    "{images} need{} Secret {} (registry {})",
                    if m.images.len() == 1 { "s" } else { "" },
                    m.secret,
                    m.registry
                )
            })
            .collect();
        format!("{}, which the Pod does not name", parts.join("; "))
    }

    /// The missing Secret names.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.missing.iter().map(|m| m.secret.as_str())
    }

    /// The finding with only the Secrets of registries `wanted` in its namespace (a
    /// registry scoped by `namespaceSelector` is not injected elsewhere: its webhook entry
    /// is not called there); `None` when nothing is left.
    pub fn within(mut self, wanted: impl Fn(&str) -> bool) -> Option<Self> {
        let before = self.missing.len();
        self.missing.retain(|m| wanted(&m.registry));
        if self.missing.is_empty() {
            return None;
        }
        if self.missing.len() != before {
            self.reason = Self::describe(&self.missing);
        }
        Some(self)
    }
}

/// Whether `pod` lacks a Secret the webhook would add, and which: `None` for a Pod the
/// webhook would leave unchanged (or skip on its opt-out annotation).
pub fn examine(pod: &Pod, registries: &Registries, opt_out_annotation: &str) -> Option<Finding> {
    let view = view(pod);
    let Decision::Inject { secrets, .. } = plan(&view, registries, opt_out_annotation).decision
    else {
        return None;
    };
    let mut missing: Vec<Missing> = Vec::new();
    for image in view.images() {
        let Ok(entries) = registries.match_image(image) else {
            continue;
        };
        for entry in entries.filter(|e| secrets.iter().any(|s| s == e.secret_name())) {
            let m = match missing.iter_mut().find(|m| m.registry == entry.name()) {
                Some(m) => m,
                None => {
                    missing.push(Missing {
                        registry: entry.name().to_string(),
                        secret: entry.secret_name().to_string(),
                        images: Vec::new(),
                    });
                    missing.last_mut()?
                }
            };
            if !m.images.iter().any(|i| i == image) {
                m.images.push(image.to_string());
            }
        }
    }
    // The webhook's order: first need of each Secret.
    missing.sort_by_key(|m| secrets.iter().position(|s| *s == m.secret));
    let meta = &pod.metadata;
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| Owner {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            name: o.name.clone(),
            uid: o.uid.clone(),
        });
    Some(Finding {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        phase: pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default(),
        created: meta.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        owner,
        reason: Finding::describe(&missing),
        missing,
    })
}

/// Whether the Pod of `f` may be deleted so that its controller creates one that the
/// webhook injects into: `Ok` with the controller, or why not. `secret_exists` says
/// whether a Secret is in the Pod's namespace (a replacement without it would fail the
/// same way); `replacement_lacks_too` whether a Pod of the same controller created after
/// one we deleted lacks its Secrets as well (the webhook did not inject: deleting more
/// would only churn).
pub fn deletion(
    f: &Finding,
    secret_exists: impl Fn(&str) -> bool,
    replacement_lacks_too: bool,
) -> Result<&Owner, String> {
    let Some(owner) = &f.owner else {
        return Err("no controller owns it (a bare Pod is never deleted)".into());
    };
    if !owner.recreates_pods() {
        return Err(format!(
            "its controller {}/{} is not one known to recreate its Pods",
            owner.kind, owner.name
        ));
    }
    if let Some(s) = f.secrets().find(|s| !secret_exists(s)) {
        return Err(format!(
            "Secret {s} is not in the namespace yet, so a new Pod would fail the same way"
        ));
    }
    if replacement_lacks_too {
        return Err(format!(
            "a Pod {}/{} created after one we deleted lacks the Secret too: the webhook did not inject it (is it reachable?)",
            owner.kind, owner.name
        ));
    }
    Ok(owner)
}

/// The webhook's view of a typed Pod, borrowing its strings.
fn view(pod: &Pod) -> PodView<'_> {
    fn b(s: &Option<String>) -> Option<Cow<'_, str>> {
        s.as_deref().map(Cow::Borrowed)
    }
    let spec = pod.spec.as_ref().map(|s| SpecView {
        containers: Some(
            s.containers
                .iter()
                .map(|c| ContainerView { image: b(&c.image) })
                .collect(),
        ),
        init_containers: s.init_containers.as_ref().map(|cs| {
            cs.iter()
                .map(|c| ContainerView { image: b(&c.image) })
                .collect()
        }),
        ephemeral_containers: s.ephemeral_containers.as_ref().map(|cs| {
            cs.iter()
                .map(|c| ContainerView { image: b(&c.image) })
                .collect()
        }),
        volumes: s.volumes.as_ref().map(|vs| {
            vs.iter()
                .map(|v| VolumeView {
                    image: v.image.as_ref().map(|i| ImageVolumeView {
                        reference: b(&i.reference),
                    }),
                })
                .collect()
        }),
        image_pull_secrets: s.image_pull_secrets.as_ref().map(|list| {
            list.iter()
                .map(|r| SecretRefView {
                    name: Some(Cow::Borrowed(r.name.as_str())),
                })
                .collect()
        }),
    });
    PodView {
        metadata: MetaView {
            name: b(&pod.metadata.name),
            generate_name: b(&pod.metadata.generate_name),
            annotations: pod.metadata.annotations.as_ref().map(|a| {
                a.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
                    .collect::<BTreeMap<_, _>>()
            }),
        },
        spec,
    }
}

#[cfg(test)]
mod tests;
