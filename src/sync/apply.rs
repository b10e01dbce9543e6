//! Carry out the steps of a plan against the API server, careful about what is not ours.
//!
//! A Secret is created with a plain POST, which fails on an existing object instead of
//! merging into it, so a same-named Secret without our labels is never touched (it comes
//! back as [`Outcome::Foreign`]). Our own Secrets are updated by server-side apply (field
//! manager `pullsecret-injector`) carrying the resourceVersion we observed, so a concurrent
//! change becomes a conflict and a retry rather than a blind overwrite; deletes carry the
//! observed uid and resourceVersion as preconditions.

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
            Step::Delete { name, observed } => delete(&api, name, observed).await,
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
    let mut secret = desired.secret.clone();
    secret.metadata.resource_version = Some(observed.resource_version.clone());
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": secret.metadata,
        "type": secret.type_,
        "data": secret.data,
    });
    let name = desired.secret.metadata.name.as_deref().unwrap_or_default();
    let params = PatchParams::apply(MANAGER).force();
    match api.patch(name, &params, &Patch::Apply(body)).await {
        Ok(s) => Ok(Outcome::Updated(Observed::of(&s))),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(Outcome::Conflict(None)),
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
