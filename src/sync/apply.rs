//! Carry out the steps of a plan against the API server, careful about what is not ours.
//!
//! A Secret is created with a plain POST, which fails on an existing object instead of
//! merging into it, so a same-named Secret without our labels is never touched (it comes
//! back as [`Outcome::Foreign`]). Our own Secrets are updated by server-side apply (field
//! manager `pullsecret-injector`) carrying the resourceVersion we observed, so a concurrent
//! change becomes a conflict and a retry rather than a blind overwrite; deletes carry the
//! observed uid and resourceVersion as preconditions.
//!
//! Server-side apply never removes a field that another manager owns, so a data key that
//! someone added to our Secret would survive every apply. Such keys are removed by name
//! with a JSON patch that first tests the observed uid and resourceVersion, so it only ever
//! applies to the object we looked at.

use json_patch::{PatchOperation, RemoveOperation, TestOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{ObjectReference, Secret as K8sSecret};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};

use super::plan::Step;
use super::secret::{Desired, MANAGED_BY_LABEL, MANAGER, Observed, is_managed};

/// What carrying out one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new Secret was created; this is what it now is.
    Created(Observed),
    /// Our Secret was updated; this is what it now is.
    Updated(Observed),
    /// Our Secret was deleted.
    Deleted,
    /// The Secret to delete was gone already.
    AlreadyGone,
    /// A Secret with our name but not our labels is there; left alone.
    Foreign,
    /// Someone changed the object since we observed it (what it is now, when known):
    /// retry once the watch has caught up.
    Conflict(Option<Observed>),
    /// The foreign Secret was reported (logged, and an Event published or tried).
    Reported,
}

impl Outcome {
    /// The `secret_writes_total{result}` label, for outcomes of writes.
    pub fn write_result(&self) -> Option<&'static str> {
        Some(match self {
            Self::Created(_) => "created",
            Self::Updated(_) => "updated",
            Self::Deleted => "deleted",
            Self::AlreadyGone => "unchanged",
            Self::Foreign => "foreign",
            Self::Conflict(_) => "conflict",
            Self::Reported => return None,
        })
    }
}

/// The I/O of the worker: Secret writes and Events.
pub struct Applier {
    client: Client,
    instance: String,
    events: Recorder,
}

impl Applier {
    /// Writes as `client`; only ever touches Secrets labelled with `instance`; publishes
    /// Events through `events`.
    pub fn new(client: Client, instance: String, events: Recorder) -> Self {
        Self {
            client,
            instance,
            events,
        }
    }

    /// Carry out `step` in `namespace`.
    pub async fn apply(&self, namespace: &str, step: &Step) -> Result<Outcome, kube::Error> {
        let api = Api::<K8sSecret>::namespaced(self.client.clone(), namespace);
        match step {
            Step::Create(desired) => self.create(&api, desired).await,
            Step::Update { desired, observed } => update(&api, desired, observed).await,
            Step::Delete { name, observed, .. } => delete(&api, name, observed).await,
            Step::ReportForeign {
                secret_name,
                registry,
            } => {
                self.report_foreign(namespace, secret_name, registry).await;
                Ok(Outcome::Reported)
            }
        }
    }

    async fn create(
        &self,
        api: &Api<K8sSecret>,
        desired: &Desired,
    ) -> Result<Outcome, kube::Error> {
        let pp = PostParams {
            field_manager: Some(MANAGER.to_string()),
            ..Default::default()
        };
        match api.create(&pp, &desired.secret).await {
            Ok(s) => Ok(Outcome::Created(Observed::of(&s))),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Something is there. Ours (the watch has not caught up) or foreign?
                let name = desired.secret.metadata.name.as_deref().unwrap_or_default();
                Ok(match api.get_opt(name).await? {
                    Some(existing) if is_managed(&existing, &self.instance) => {
                        Outcome::Conflict(Some(Observed::of(&existing)))
                    }
                    Some(_) => Outcome::Foreign,
                    None => Outcome::Conflict(None),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn report_foreign(&self, namespace: &str, secret_name: &str, registry: &str) {
        tracing::warn!(
            namespace,
            secret = secret_name,
            "a Secret with this name exists without the label {MANAGED_BY_LABEL}={MANAGER}; leaving it untouched"
        );
        let event = Event {
            type_: EventType::Warning,
            reason: "ForeignSecret".into(),
            note: Some(format!(
                "Secret {secret_name} exists but is not managed by pullsecret-injector (no label {MANAGED_BY_LABEL}={MANAGER}); it is left untouched, so Pods get whatever it holds. Delete or rename it to let pullsecret-injector manage registry {registry}."
            )),
            action: "WriteSecret".into(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Namespace".into()),
            name: Some(namespace.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        };
        if let Err(e) = self.events.publish(&event, &reference).await {
            tracing::warn!(namespace, error = %e, "could not publish Event");
        }
    }
}

async fn update(
    api: &Api<K8sSecret>,
    desired: &Desired,
    observed: &Observed,
) -> Result<Outcome, kube::Error> {
    let name = desired.secret.metadata.name.as_deref().unwrap_or_default();
    let cleaned;
    let observed = if observed.foreign_keys.is_empty() {
        observed
    } else {
        match remove_foreign_keys(api, name, observed).await? {
            Some(o) => {
                cleaned = o;
                &cleaned
            }
            None => return Ok(Outcome::Conflict(None)),
        }
    };
    if observed.digest == desired.digest {
        return Ok(Outcome::Updated(observed.clone()));
    }
    let mut secret = desired.secret.clone();
    secret.metadata.resource_version = Some(observed.resource_version.clone());
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": secret.metadata,
        "type": secret.type_,
        "data": secret.data,
    });
    let params = PatchParams::apply(MANAGER).force();
    match api.patch(name, &params, &Patch::Apply(body)).await {
        Ok(s) => Ok(Outcome::Updated(Observed::of(&s))),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(Outcome::Conflict(None)),
        Err(e) => Err(e),
    }
}

/// The JSON patch that removes `observed`'s foreign data keys, valid only while the object
/// is still the one observed (same uid and resourceVersion).
fn foreign_keys_patch(observed: &Observed) -> json_patch::Patch {
    let test = |field: &str, value: &str| {
        PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["metadata", field]),
            value: value.into(),
        })
    };
    let mut ops = vec![
        test("uid", &observed.uid),
        test("resourceVersion", &observed.resource_version),
    ];
    ops.extend(observed.foreign_keys.iter().map(|key| {
        PatchOperation::Remove(RemoveOperation {
            path: PointerBuf::from_tokens(["data", key.as_str()]),
        })
    }));
    json_patch::Patch(ops)
}

/// Remove the data keys someone else added to our Secret; `None` when the object changed
/// since it was observed (the watch will tell us what it is now).
async fn remove_foreign_keys(
    api: &Api<K8sSecret>,
    name: &str,
    observed: &Observed,
) -> Result<Option<Observed>, kube::Error> {
    let params = PatchParams {
        field_manager: Some(MANAGER.to_string()),
        ..Default::default()
    };
    let patch = Patch::Json::<()>(foreign_keys_patch(observed));
    match api.patch(name, &params, &patch).await {
        Ok(s) => {
            tracing::info!(
                secret = name,
                namespace = s.metadata.namespace.as_deref().unwrap_or_default(),
                keys = ?observed.foreign_keys,
                "removed data keys that someone else added to a managed Secret"
            );
            Ok(Some(Observed::of(&s)))
        }
        // A failed test (422), a newer object (409) or none at all (404).
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => {
            tracing::debug!(secret = name, error = %e, "managed Secret changed before its foreign keys could be removed; retrying");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn delete(
    api: &Api<K8sSecret>,
    name: &str,
    observed: &Observed,
) -> Result<Outcome, kube::Error> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(observed.uid.clone()),
            resource_version: Some(observed.resource_version.clone()),
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(Outcome::Deleted),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Outcome::AlreadyGone),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Conflict(None)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_keys_are_removed_only_from_the_observed_object() {
        let observed = Observed {
            uid: "u-1".into(),
            resource_version: "42".into(),
            digest: [0; 32],
            registry: None,
            foreign_keys: vec!["extra".into(), "a~b".into()],
        };
        assert_eq!(
            serde_json::to_value(foreign_keys_patch(&observed)).unwrap(),
            serde_json::json!([
                {"op": "test", "path": "/metadata/uid", "value": "u-1"},
                {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
                {"op": "remove", "path": "/data/extra"},
                {"op": "remove", "path": "/data/a~0b"},
            ])
        );
    }
}
