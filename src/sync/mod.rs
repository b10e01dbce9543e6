//! The sync task: fresh pull Secrets in exactly the namespaces that opt in.
//!
//! Data flows one way, in small parts:
//!
//! * [`watch`]: one generic watch feeds the mirrors in [`state`] on every replica: the
//!   namespaces matching the opt-in selector, and our Secrets, watched cluster-wide but by
//!   name (one watch per configured or retired `secretName`, with a `metadata.name` field
//!   selector, so that RBAC can authorise Secret reads by `resourceNames`) and by our
//!   labels: never a cache of other Secrets. Every change queues its namespace on the
//!   [`queue`].
//! * [`refresh`]: one loop per registry fetches its credential (one fetch per refresh,
//!   whatever the number of namespaces) and publishes it; a new credential queues every
//!   matching namespace.
//! * [`worker`]: takes a namespace off the queue and asks [`plan`] (pure) for the steps;
//!   [`apply`] carries them out under a rate limit; the outcomes go back into the state.
//!
//! Only the leader (the Lease in [`leader`]) runs the refresh loops and the worker; the
//! others keep their watches warm so that a takeover starts writing at once. The parts are
//! futures that `run` starts and supervises; none of them spawns a task of its own.

pub mod apply;
pub mod leader;
pub mod plan;
pub mod pods;
pub mod policy;
pub mod prove;
pub mod queue;
pub mod refresh;
pub mod secret;
pub mod state;
pub mod watch;
pub mod worker;

use std::sync::Arc;

use futures::future::{join_all, try_join_all};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret as K8sSecret};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::credentials::{Credential, CredentialError, HttpClient, Provider};
use crate::health::Health;
use crate::labels::LabelSelector;
use crate::metrics::Metrics;
use crate::registry::HostPattern;
use refresh::{RefreshStatus, RefreshTiming};
use secret::MANAGER;
use state::State;
use worker::{Limiter, Worker};

/// One registry as the sync task sees it, with its latest credential.
#[derive(Debug)]
pub struct RegistrySync {
    /// `registries[].name`.
    pub name: String,
    /// `registries[].secretName`.
    pub secret_name: String,
    /// `auths` keys: the host patterns as written.
    pub hosts: Vec<String>,
    /// `registries[].namespaceSelector`: only matching namespaces get the Secret.
    pub namespace_selector: Option<LabelSelector>,
    /// Where its credential comes from.
    pub provider: Provider,
    /// The hosts at which each new credential is proven (`probeHosts`).
    pub probe_hosts: Vec<HostPattern>,
    /// The latest good credential (`None` until the first success). Kept across terms of
    /// leadership, so that a regained lease reuses what is not due yet.
    pub credential: channel::Sender<Option<Arc<Credential>>>,
    /// How the last refresh went.
    pub status: channel::Sender<RefreshStatus>,
}

impl RegistrySync {
    /// A registry with no credential yet.
    pub fn new(name: &str, secret_name: &str, hosts: Vec<String>, provider: Provider) -> Self {
        Self {
            name: name.to_string(),
            secret_name: secret_name.to_string(),
            hosts,
            namespace_selector: None,
            provider,
            probe_hosts: Vec::new(),
            credential: channel::Sender::new(None),
            status: channel::Sender::new(RefreshStatus::NotYet),
        }
    }

    /// The same registry, proving each new credential at `hosts`.
    pub fn with_probe_hosts(mut self, hosts: Vec<HostPattern>) -> Self {
        self.probe_hosts = hosts;
        self
    }
}

impl RegistrySync {
    /// The same registry, kept only in namespaces that also match `selector`.
    pub fn with_namespace_selector(mut self, selector: Option<LabelSelector>) -> Self {
        self.namespace_selector = selector;
        self
    }
}

/// Build the per-registry providers from validated settings (no network I/O).
pub fn registries(
    settings: &Settings,
    http: &HttpClient,
) -> Result<Vec<RegistrySync>, CredentialError> {
    settings
        .registries
        .iter()
        .map(|r| {
            let hosts = r.entry.hosts().iter().map(|h| h.auth_key().to_string());
            Ok(RegistrySync::new(
                r.entry.name(),
                r.entry.secret_name(),
                hosts.collect(),
                Provider::new(&r.credentials, http)?.for_hosts(r.entry.hosts()),
            )
            .with_namespace_selector(r.namespace_selector.clone())
            .with_probe_hosts(r.probe_hosts.clone()))
        })
        .collect()
}

/// Settings of the sync task.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Namespace selector, kubectl syntax (sent to the API server as is).
    pub selector: String,
    /// When to refresh credentials.
    pub timing: RefreshTiming,
    /// Write rate limit.
    pub max_writes_per_second: u32,
    /// Reporting instance for Events (the pod name).
    pub identity: String,
    /// `sync.instance`: the installation's label value on its Secrets.
    pub instance: String,
    /// `sync.retiredSecretNames`: names whose Secrets of ours are deleted everywhere.
    pub retired_secret_names: Vec<String>,
    /// What credential Events are about: this replica's Pod (or its namespace).
    pub report_to: ObjectReference,
}

/// The sync task: its parts are the `async fn`s below, each run as one supervised task.
pub struct SyncTask {
    client: Client,
    registries: Vec<RegistrySync>,
    options: SyncOptions,
    metrics: Metrics,
    health: Arc<Health>,
    state: State,
    /// How many of the mirrors (the namespaces' and each Secret name's) have been listed
    /// once: the writer acts only when all of them have, never on a partial picture (a
    /// managed Secret seen before its namespace would look like one to delete).
    listed: channel::Sender<usize>,
}

impl std::fmt::Debug for SyncTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncTask")
            .field("registries", &self.registries)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SyncTask {
    /// A sync task for these registries.
    pub fn new(
        client: Client,
        registries: Vec<RegistrySync>,
        options: SyncOptions,
        metrics: Metrics,
        health: Arc<Health>,
    ) -> Arc<Self> {
        let names = registries
            .iter()
            .map(|r| r.secret_name.clone())
            .chain(options.retired_secret_names.iter().cloned());
        let state = State::new(names);
        Arc::new(Self {
            client,
            registries,
            options,
            metrics,
            health,
            state,
            listed: channel::Sender::new(0),
        })
    }

    /// One more mirror has been listed for the first time.
    fn mirror_listed(&self) {
        self.listed.send_modify(|n| *n += 1);
    }

    /// Wait until every mirror has been listed once; `false` when `term` ends first.
    async fn wait_listed(&self, term: &CancellationToken) -> bool {
        let all = 1 + self.state.secret_mirrors().count();
        let mut listed = self.listed.subscribe();
        tokio::select! {
            () = term.cancelled() => false,
            r = listed.wait_for(|n| *n >= all) => r.is_ok(),
        }
    }

    fn recorder(&self) -> Recorder {
        Recorder::new(
            self.client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(self.options.identity.clone()),
            },
        )
    }

    /// Mirror the namespaces that match the selector until `stop`.
    pub async fn watch_namespaces(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        let config = watcher::Config::default().labels(&self.options.selector);
        let api = Api::<Namespace>::all(self.client.clone());
        let mut listed_once = false;
        let changed = |change: watch::Change| {
            let active = self.state.namespaces.count(|ns| !ns.terminating);
            self.metrics.managed_namespaces.set(active as i64);
            if change == watch::Change::Listed && !listed_once {
                listed_once = true;
                self.mirror_listed();
                self.health.set_sync_listed();
                tracing::info!(namespaces = active, selector = %self.options.selector, "namespaces listed");
            }
        };
        watch::watch(
            api,
            config,
            &self.state.namespaces,
            &self.state.queue,
            changed,
            &stop,
        )
        .await
    }

    /// Mirror the Secrets this installation manages until `stop`: one watch per watched
    /// name, across all namespaces, each selecting that name and our labels.
    pub async fn watch_secrets(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        let labels = secret::selector(&self.options.instance);
        let api = Api::<K8sSecret>::all(self.client.clone());
        let watches = self.state.secret_mirrors().map(|(name, mirror)| {
            let config = watcher::Config::default()
                .fields(&format!("metadata.name={name}"))
                .labels(&labels);
            let mut listed_once = false;
            let this = &self;
            watch::watch(
                api.clone(),
                config,
                mirror,
                &self.state.queue,
                move |change| {
                    if change == watch::Change::Listed && !listed_once {
                        listed_once = true;
                        this.mirror_listed();
                    }
                },
                &stop,
            )
        });
        try_join_all(watches).await.map(drop)
    }

    /// While `leading` is true: refresh credentials and write Secrets. Until `stop`.
    pub async fn write_while_leading(
        self: Arc<Self>,
        mut leading: channel::Receiver<bool>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                r = leading.wait_for(|l| *l) => if r.is_err() { return Ok(()) },
            }
            tracing::info!("leading: refreshing credentials and writing Secrets");
            self.health.set_sync_leading(true);
            let term = stop.child_token();
            let end_of_term = async {
                tokio::select! {
                    () = term.cancelled() => {}
                    _ = leading.wait_for(|l| !*l) => {
                        tracing::info!("no longer leading: stopped writing");
                    }
                }
                term.cancel();
            };
            tokio::join!(self.lead(&term), end_of_term);
            self.health.set_sync_leading(false);
            // Only the leader probes: a former leader's last results would go stale (and
            // keep an alert firing) while the new one exports its own.
            self.metrics.credential_probe_result.clear();
        }
    }

    /// One term of leadership: refresh loops, credential watchers and the worker, until
    /// `term` is cancelled.
    async fn lead(&self, term: &CancellationToken) {
        let timing = self.options.timing;
        let prover = prove::Prover::new(
            self.client.clone(),
            &self.state,
            &self.options.instance,
            &self.metrics,
        );
        let refreshers = self
            .registries
            .iter()
            .map(|r| refresh::refresh_loop(r, timing, &self.metrics, Some(&prover), term));
        // A new credential concerns every matching namespace.
        let notifiers = self.registries.iter().map(|r| async move {
            let mut changed = r.credential.subscribe();
            loop {
                tokio::select! {
                    () = term.cancelled() => return,
                    c = changed.changed() => if c.is_err() { return },
                }
                self.state.queue_matching();
            }
        });
        let worker = Worker {
            state: &self.state,
            registries: &self.registries,
            instance: &self.options.instance,
            applier: apply::Applier::new(
                self.client.clone(),
                self.options.instance.clone(),
                self.recorder(),
            ),
            limiter: Limiter::new(self.options.max_writes_per_second),
            metrics: &self.metrics,
        };
        let work = async {
            if !self.wait_listed(term).await {
                return;
            }
            // Whatever we know now may need work (e.g. our Secrets in namespaces that
            // stopped matching while no one was leading).
            self.state.queue_everything();
            worker.run(term.clone()).await;
        };
        tokio::join!(join_all(refreshers), join_all(notifiers), work);
    }

    /// Report every change of a registry's refresh status: health (the admin endpoints) and
    /// a Kubernetes Event about this replica. Until `stop`.
    pub async fn report_credentials(
        self: Arc<Self>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let recorder = self.recorder();
        let reports = self.registries.iter().map(|r| async {
            let mut status = r.status.subscribe();
            let mut failing = false;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    c = status.changed() => if c.is_err() { return },
                }
                let now = status.borrow_and_update().clone();
                let event = match now {
                    RefreshStatus::NotYet => continue,
                    RefreshStatus::Working => {
                        self.health.set_credential_problem(&r.name, None);
                        if !std::mem::replace(&mut failing, false) {
                            continue;
                        }
                        KubeEvent {
                            type_: EventType::Normal,
                            reason: "CredentialRefreshed".into(),
                            note: Some(format!("registry {}: credential refresh works again", r.name)),
                            action: "RefreshCredential".into(),
                            secondary: None,
                        }
                    }
                    RefreshStatus::Failing(error) => {
                        failing = true;
                        self.health.set_credential_problem(&r.name, Some(error.clone()));
                        KubeEvent {
                            type_: EventType::Warning,
                            reason: "CredentialRefreshFailed".into(),
                            note: Some(format!(
                                "registry {}: {error}; Secrets keep the last good credential, retrying with backoff",
                                r.name
                            )),
                            action: "RefreshCredential".into(),
                            secondary: None,
                        }
                    }
                };
                if let Err(e) = recorder.publish(&event, &self.options.report_to).await {
                    tracing::warn!(registry = %r.name, error = %e, "could not publish Event");
                }
            }
        });
        join_all(reports).await;
        Ok(())
    }
}
