//! The webhook's serving certificate kept by the injector itself (`webhook.managedCertificate`,
//! chart `certificates.mode=injector`): a CA and a serving certificate in a Secret of its own
//! namespace, the CA in the MutatingWebhookConfiguration's `caBundle`, both rotated before
//! they expire.
//!
//! Why: a chart that mints certificates at render time (`genCA`) renders a new CA every time
//! it is rendered without cluster access (`helm template`, Argo CD and other GitOps tools),
//! and every sync then breaks the webhook's TLS until the new files reach the Pods. Here the
//! chart renders no certificate and no `caBundle` at all, identically every time; the
//! injector fills them in and Helm's three-way merge and `kubectl apply` leave a field they
//! never set alone.
//!
//! Who does what. The writer (the Lease holder when the sync task elects one, else every
//! replica) reads the webhook configuration and then the Secret, decides with the pure
//! [`plan::plan`], and writes the Secret (create, or server-side apply carrying the
//! resourceVersion it read) and the `caBundle` (a strategic merge patch carrying the
//! configuration's resourceVersion). Both writes are compare-and-swap, and the reads come in
//! that order, so two writers can never remove each other's new CA: a stale one gets a 409
//! and tries again next pass. Every replica reads the Secret through the API (a GET by name
//! every interval) and serves its pair. Not a mounted volume: the Secret does not exist
//! when the first Pod starts, and the kubelet's Secret volume refresh (a minute or more)
//! would keep every new replica unready that long after the writer wrote it; through the API
//! a replica is ready within one interval. Readiness stays false until a pair is loaded.
//!
//! The order that keeps every review working during a rotation is in [`plan`]: a new CA is
//! published in every `caBundle` next to the old one, and only after the publication delay
//! is a certificate signed by it served. The Secret is owned by the webhook configuration
//! (an owner reference), so removing the configuration (`helm uninstall`) removes it too.

pub mod config;
pub mod pki;
pub mod plan;
pub mod state;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::config::ManagedCertificate;
use self::pki::{CertInfo, Fingerprint, PkiError};
use self::plan::{CaStep, ServingStep};
use self::state::Stored;
use crate::health::{Health, Webhook};
use crate::tls::CertStore;

/// Field manager of every write.
pub const MANAGER: &str = "pullsecret-injector";
/// Label on the TLS Secret: the MutatingWebhookConfiguration it serves. The writer only ever
/// changes a Secret that carries it.
pub const CERTIFICATE_LABEL: &str = "pullsecret-injector.io/webhook-certificate";
/// Annotation on the TLS Secret: when the serving certificate expires (RFC 3339).
pub const EXPIRES_AT_ANNOTATION: &str = "pullsecret-injector.io/expires-at";
/// Annotation on the TLS Secret: when the signing CA expires (RFC 3339).
pub const CA_EXPIRES_AT_ANNOTATION: &str = "pullsecret-injector.io/ca-expires-at";

/// A failed pass.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// The call, naming the object.
        what: String,
        /// kube's error.
        source: kube::Error,
    },
    /// Someone else wrote first; the next pass starts from what they wrote.
    #[error("{0} changed since it was read; trying again")]
    Conflict(String),
    /// Making a certificate failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// No signing CA to issue the serving certificate with (a bug in the plan).
    #[error("no signing CA to issue the serving certificate with")]
    NoSigner,
    /// The Secret exists and is not ours.
    #[error(
        "Secret {0} exists without the label {CERTIFICATE_LABEL}: it is not written to; delete it, or pick another webhook.managedCertificate.secretName"
    )]
    Foreign(String),
}

/// The managed serving certificate of one process: its writer and its reader.
pub struct CertManager {
    secrets: Api<K8sSecret>,
    webhooks: Api<MutatingWebhookConfiguration>,
    /// `namespace/name` of the Secret, for messages.
    secret_ref: String,
    settings: ManagedCertificate,
    store: Arc<CertStore>,
    health: Arc<Health>,
    interval: Duration,
    /// When each CA was first seen in every webhook's `caBundle` (Unix seconds). In memory:
    /// a new writer waits the publication delay again, which is never wrong.
    first_seen: HashMap<Fingerprint, i64>,
    /// The last error logged, so that one that repeats every pass is logged once.
    last_error: Option<String>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("secret", &self.secret_ref)
            .field(
                "webhook_configuration",
                &self.settings.webhook_configuration,
            )
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// A manager of `settings` in `namespace`, serving through `store` and reporting
    /// readiness to `health`, that looks every `interval`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        settings: ManagedCertificate,
        store: Arc<CertStore>,
        health: Arc<Health>,
        interval: Duration,
    ) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), namespace),
            webhooks: Api::all(client),
            secret_ref: format!("{namespace}/{}", settings.secret_name),
            settings,
            store,
            health,
            interval,
            first_seen: HashMap::new(),
            last_error: None,
        }
    }

    /// Run until `stop`: every interval, write (while `leading` says so; `None`: always) or
    /// only read the Secret, and serve its pair.
    pub async fn run(
        mut self,
        mut leading: Option<watch::Receiver<bool>>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        tracing::info!(secret = %self.secret_ref, webhook_configuration = %self.settings.webhook_configuration, "serving certificate managed by the injector");
        loop {
            let writer = leading.as_ref().is_none_or(|l| *l.borrow());
            let result = if writer {
                self.write_pass().await
            } else {
                self.read_pass().await
            };
            match result {
                Ok(()) => {
                    if let Some(previous) = self.last_error.take() {
                        tracing::info!(secret = %self.secret_ref, previous_error = %previous, "serving certificate: calls work again");
                    }
                }
                Err(CertError::Conflict(what)) => {
                    tracing::debug!(
                        what,
                        "serving certificate: a concurrent write; trying again"
                    )
                }
                Err(e) => {
                    let e = e.to_string();
                    if self.last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(secret = %self.secret_ref, error = %e, "serving certificate: pass failed; trying again");
                        self.last_error = Some(e);
                    }
                }
            }
            let changed = async {
                match leading.as_mut() {
                    Some(l) => {
                        if l.changed().await.is_err() {
                            std::future::pending::<()>().await
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.interval) => {}
                () = changed => {}
            }
        }
    }

    /// Every replica: serve what the Secret holds (and make it when there is none).
    async fn read_pass(&mut self) -> Result<(), CertError> {
        match self.get_secret().await? {
            Some(s) => {
                self.serve(&s);
                Ok(())
            }
            // No Secret yet, and the Lease holder does not make it: a leader that keeps its
            // certificate otherwise (a release switching to certificates.mode=injector, whose
            // old Pods hold the Lease until the new ones are ready). Make it here; the create
            // is compare-and-swap like every write, so two replicas never both succeed.
            None => self.write_pass().await,
        }
    }

    /// The writer: read the webhook configuration, then the Secret; decide; write.
    async fn write_pass(&mut self) -> Result<(), CertError> {
        let now = jiff::Timestamp::now().as_second();
        let config = self.get_config().await?;
        let secret = self.get_secret().await?;
        if let Some(s) = &secret
            && !is_ours(s)
        {
            self.serve(s);
            return Err(CertError::Foreign(self.secret_ref.clone()));
        }
        let (stored, problems) = match secret.as_ref().and_then(|s| s.data.as_ref()) {
            Some(data) => Stored::decode(data),
            None => (Stored::default(), Vec::new()),
        };
        if secret.is_some() && !problems.is_empty() {
            tracing::info!(secret = %self.secret_ref, problems = ?problems, "serving certificate Secret: parts that cannot be used are replaced");
        }
        // Without a configuration, or without webhooks in it, nothing calls the webhook:
        // every CA counts as published.
        let published = match &config {
            Some(c) if c.webhooks.as_ref().is_some_and(|w| !w.is_empty()) => published_cas(c),
            _ => stored.fingerprints().into_iter().collect(),
        };
        self.first_seen.retain(|f, _| published.contains(f));
        for f in &published {
            self.first_seen.entry(*f).or_insert(now);
        }
        let first_seen = &self.first_seen;
        let plan = plan::plan(
            now,
            &stored,
            &self.settings.dns_names,
            &self.settings.ip_addresses,
            &self.settings.policy,
            |f| first_seen.get(f).copied(),
        );
        let mut next = stored.clone().without(&plan.drop_cas);
        for f in &plan.drop_cas {
            tracing::info!(secret = %self.secret_ref, ca = %f, "an expired CA leaves the bundle");
        }
        if let CaStep::New(reason) = &plan.ca {
            let ca = pki::new_ca(
                &format!("{} webhook CA {now}", self.settings.webhook_configuration),
                now,
                self.settings.policy.ca_validity,
            )?;
            tracing::info!(secret = %self.secret_ref, ca = %ca.info.fingerprint, not_after = ca.info.not_after, reason, "new CA: published in caBundle before it signs the served certificate");
            next = next.with_new_signer(ca);
        }
        let mut publish_first = false;
        match &plan.serving {
            ServingStep::Keep => {}
            ServingStep::Wait { reason } => {
                tracing::debug!(secret = %self.secret_ref, reason, "serving certificate due; waiting until its CA has been published for the delay")
            }
            ServingStep::Issue {
                reason,
                publish_first: first,
            } => {
                publish_first = *first;
                let (Some(signer), Some((_, key))) =
                    (next.signer_cert().cloned(), next.signer.clone())
                else {
                    // The plan issues a certificate only with a signing CA (kept or new).
                    return Err(CertError::NoSigner);
                };
                let serving = pki::new_serving(
                    &signer,
                    &key,
                    &self.settings.dns_names,
                    &self.settings.ip_addresses,
                    now,
                    self.settings.policy.certificate_validity,
                )?;
                tracing::info!(secret = %self.secret_ref, certificate = %serving.info.fingerprint, ca = %signer.fingerprint, not_after = serving.info.not_after, reason, "new serving certificate");
                next = next.with_serving(serving);
            }
        }
        let owner = config.as_ref().and_then(owner_reference);
        if publish_first && let Some(config) = &config {
            // Nothing usable is served: publish the new CA at once, keeping whatever the
            // configuration trusts now, then write the Secret.
            let mut bundle: Vec<CertInfo> = next.bundle.clone();
            for c in webhook_cas(config) {
                if c.not_after > now && !bundle.iter().any(|b| b.fingerprint == c.fingerprint) {
                    bundle.push(c);
                }
            }
            self.patch_bundle(config, &bundle).await?;
        }
        if plan.changes_secret() || secret.is_none() || owner_missing(&secret, &owner) {
            let written = self.write_secret(secret.as_ref(), &next, owner).await?;
            self.serve(&written);
        } else if let Some(s) = &secret {
            self.serve(s);
        }
        // The configuration trusts exactly the Secret's CAs (re-read when it was just patched,
        // so that the resourceVersion is current).
        let config = if publish_first {
            self.get_config().await?
        } else {
            config
        };
        if let Some(config) = config
            && needs_bundle(&config, &next.fingerprints())
        {
            self.patch_bundle(&config, &next.bundle).await?;
        }
        Ok(())
    }

    /// Serve the Secret's pair (when it changed and is valid); the webhook is ready from the
    /// first pair on.
    fn serve(&self, secret: &K8sSecret) {
        let Some(data) = &secret.data else { return };
        let (Some(crt), Some(key)) = (data.get(state::TLS_CRT), data.get(state::TLS_KEY)) else {
            return;
        };
        let origin = format!("Secret {}", self.secret_ref);
        self.store.install_pem(&crt.0, &key.0, &origin);
        if self.store.is_loaded() {
            self.health.set_webhook(Webhook::Serving);
        }
    }

    async fn get_config(&self) -> Result<Option<MutatingWebhookConfiguration>, CertError> {
        let name = &self.settings.webhook_configuration;
        self.webhooks
            .get_opt(name)
            .await
            .map_err(|source| CertError::Api {
                what: format!("reading MutatingWebhookConfiguration {name}"),
                source,
            })
    }

    async fn get_secret(&self) -> Result<Option<K8sSecret>, CertError> {
        self.secrets
            .get_opt(&self.settings.secret_name)
            .await
            .map_err(|source| CertError::Api {
                what: format!("reading Secret {}", self.secret_ref),
                source,
            })
    }

    /// Create the Secret, or apply `next` over `existing` with its resourceVersion.
    async fn write_secret(
        &self,
        existing: Option<&K8sSecret>,
        next: &Stored,
        owner: Option<OwnerReference>,
    ) -> Result<K8sSecret, CertError> {
        let rfc3339 = |t: i64| {
            jiff::Timestamp::from_second(t)
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        let mut annotations = BTreeMap::new();
        if let Some((c, _)) = &next.serving {
            annotations.insert(EXPIRES_AT_ANNOTATION.to_string(), rfc3339(c.not_after));
        }
        if let Some(c) = next.signer_cert() {
            annotations.insert(CA_EXPIRES_AT_ANNOTATION.to_string(), rfc3339(c.not_after));
        }
        let secret = K8sSecret {
            metadata: ObjectMeta {
                name: Some(self.settings.secret_name.clone()),
                resource_version: existing.and_then(|s| s.metadata.resource_version.clone()),
                labels: Some(BTreeMap::from([
                    (
                        CERTIFICATE_LABEL.to_string(),
                        self.settings.webhook_configuration.clone(),
                    ),
                    (
                        "app.kubernetes.io/component".to_string(),
                        "webhook-certificate".to_string(),
                    ),
                ])),
                annotations: Some(annotations),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(next.encode()),
            ..Default::default()
        };
        let what = |verb: &str| format!("{verb} Secret {}", self.secret_ref);
        let result = match existing {
            None => {
                let pp = PostParams {
                    field_manager: Some(MANAGER.into()),
                    ..Default::default()
                };
                self.secrets.create(&pp, &secret).await
            }
            Some(_) => {
                let mut value = serde_json::to_value(&secret).map_err(|e| CertError::Api {
                    what: what("encoding"),
                    source: kube::Error::SerdeError(e),
                })?;
                value["apiVersion"] = "v1".into();
                value["kind"] = "Secret".into();
                let pp = PatchParams::apply(MANAGER).force();
                self.secrets
                    .patch(&self.settings.secret_name, &pp, &Patch::Apply(value))
                    .await
            }
        };
        match result {
            Ok(s) => {
                tracing::info!(secret = %self.secret_ref, cas = ?next.fingerprints(), serving = ?next.serving.as_ref().map(|(c, _)| c.fingerprint), "serving certificate Secret written");
                Ok(s)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(CertError::Conflict(what("the"))),
            Err(source) => Err(CertError::Api {
                what: what(if existing.is_some() {
                    "updating"
                } else {
                    "creating"
                }),
                source,
            }),
        }
    }

    /// Set every webhook's `caBundle` to `bundle`, if the configuration is still as read.
    async fn patch_bundle(
        &self,
        config: &MutatingWebhookConfiguration,
        bundle: &[CertInfo],
    ) -> Result<(), CertError> {
        let name = &self.settings.webhook_configuration;
        let pem: String = bundle.iter().map(CertInfo::pem).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
        let webhooks: Vec<serde_json::Value> = config
            .webhooks
            .iter()
            .flatten()
            .map(|w| serde_json::json!({"name": w.name, "clientConfig": {"caBundle": b64}}))
            .collect();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": config.metadata.resource_version},
            "webhooks": webhooks,
        });
        let pp = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match self
            .webhooks
            .patch(name, &pp, &Patch::Strategic(patch))
            .await
        {
            Ok(_) => {
                tracing::info!(webhook_configuration = %name, cas = ?bundle.iter().map(|c| c.fingerprint).collect::<Vec<_>>(), "caBundle written");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(CertError::Conflict(format!(
                "MutatingWebhookConfiguration {name}"
            ))),
            Err(source) => Err(CertError::Api {
                what: format!("writing caBundle of MutatingWebhookConfiguration {name}"),
                source,
            }),
        }
    }
}

/// Whether the Secret carries our label (or is absent).
fn is_ours(secret: &K8sSecret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(CERTIFICATE_LABEL))
}

/// The CAs of every webhook's `caBundle`, each once.
fn webhook_cas(config: &MutatingWebhookConfiguration) -> Vec<CertInfo> {
    let mut out: Vec<CertInfo> = Vec::new();
    for w in config.webhooks.iter().flatten() {
        if let Some(b) = &w.client_config.ca_bundle
            && let Ok(certs) = CertInfo::from_pem_bundle(&b.0)
        {
            for c in certs {
                if !out.iter().any(|o| o.fingerprint == c.fingerprint) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// The CAs in every webhook's `caBundle`.
fn published_cas(config: &MutatingWebhookConfiguration) -> HashSet<Fingerprint> {
    config
        .webhooks
        .iter()
        .flatten()
        .map(|w| bundle_of(w).into_iter().collect::<HashSet<_>>())
        .reduce(|acc, s| acc.intersection(&s).copied().collect())
        .unwrap_or_default()
}

fn bundle_of(w: &k8s_openapi::api::admissionregistration::v1::MutatingWebhook) -> Vec<Fingerprint> {
    w.client_config
        .ca_bundle
        .as_ref()
        .and_then(|b| CertInfo::from_pem_bundle(&b.0).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.fingerprint)
        .collect()
}

/// Whether some webhook's `caBundle` is not exactly these CAs.
fn needs_bundle(config: &MutatingWebhookConfiguration, want: &[Fingerprint]) -> bool {
    let want: HashSet<Fingerprint> = want.iter().copied().collect();
    config
        .webhooks
        .iter()
        .flatten()
        .any(|w| bundle_of(w).into_iter().collect::<HashSet<_>>() != want)
}

fn owner_reference(config: &MutatingWebhookConfiguration) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "admissionregistration.k8s.io/v1".into(),
        kind: "MutatingWebhookConfiguration".into(),
        name: config.metadata.name.clone()?,
        uid: config.metadata.uid.clone()?,
        ..Default::default()
    })
}

/// Whether the Secret lacks the owner reference it should have.
fn owner_missing(secret: &Option<K8sSecret>, owner: &Option<OwnerReference>) -> bool {
    match (secret, owner) {
        (Some(s), Some(o)) => !s
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == o.uid),
        _ => false,
    }
}
