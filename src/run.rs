//! `run`: build every part, start each as a supervised task, stop them all with one signal.
//!
//! This is the one place that knows the process's tasks. Each is a named future that
//! returns only when the shared [`CancellationToken`] is cancelled; one that ends any other
//! way (an error, a panic, or simply returning) ends the process with a non-zero status and
//! a log line naming the task and the cause, so that the kubelet restarts a replica instead
//! of leaving one that says healthy while it injects or refreshes nothing.
//!
//! Everything that can fail on bad input (config, TLS files, ports, the Kubernetes client
//! config) is checked before anything serves. A broken credential file is not such a
//! failure: the webhook needs no credential, so it is logged at start and then reported by
//! the sync task (log, `credential_refresh_total{result="failure"}`, an Event, `/readyz`'s
//! body) while the Secrets keep the last good credential.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::ObjectReference;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::certs::CertManager;
use crate::cli::RunArgs;
use crate::config::Settings;
use crate::credentials::{HttpClient, HttpOptions};
use crate::health::{Health, Webhook};
use crate::metrics::Metrics;
use crate::server::{self, AdminState, BodyLimits, Limits};
use crate::sync::leader::{self, LeaderConfig, LeaderElector};
use crate::sync::pods::PodReport;
use crate::sync::refresh::RefreshTiming;
use crate::sync::{self, SyncOptions, SyncTask};
use crate::tls::CertStore;

/// How long the tasks get to finish after the shutdown signal (the webhook drains for at
/// most 25 s, the lease release is bounded by its renew deadline).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(35);

/// Named tasks that run until one shutdown signal, and end the process if one of them ends
/// before it.
#[derive(Debug)]
pub struct Supervisor {
    stop: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, String>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// No tasks yet.
    pub fn new() -> Self {
        Self {
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// The shutdown signal every task watches.
    pub fn stop(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Start `task` as `name`. It must run until [`Supervisor::stop`] is cancelled.
    pub fn spawn(
        &mut self,
        name: impl Into<String>,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name.into());
    }

    /// Run until `shutdown` resolves (then cancel the signal and wait for every task, at
    /// most `stop_timeout`) or until a task ends first (then stop the others and fail
    /// naming it). Errors, panics and tasks that do not stop in time make it fail too.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
        stop_timeout: Duration,
    ) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        tokio::select! {
            () = shutdown => {}
            Some(ended) = self.tasks.join_next_with_id() => {
                let (name, cause) = self.describe(ended, "ended before shutdown");
                tracing::error!(task = %name, cause = %cause, "a task ended unexpectedly; stopping the process");
                failures.push(format!("task {name} {cause}"));
            }
        }
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + stop_timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(None) => break,
                Ok(Some(Ok((id, Ok(()))))) => {
                    self.names.remove(&id);
                }
                Ok(Some(ended)) => {
                    let (name, cause) = self.describe(ended, "ended");
                    tracing::error!(task = %name, cause = %cause, "a task failed while stopping");
                    failures.push(format!("task {name} {cause}"));
                }
                Err(_) => {
                    let mut left: Vec<&str> = self.names.values().map(String::as_str).collect();
                    left.sort_unstable();
                    tracing::error!(tasks = ?left, "tasks did not stop in time");
                    failures.push(format!(
                        "tasks {} did not stop within {}",
                        left.join(", "),
                        humantime::format_duration(stop_timeout)
                    ));
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        match failures.as_slice() {
            [] => Ok(()),
            [first, ..] => bail!("{first}"),
        }
    }

    /// The task's name and what happened to it, in words.
    fn describe(
        &mut self,
        ended: Result<(Id, anyhow::Result<()>), JoinError>,
        ok_words: &str,
    ) -> (String, String) {
        let (id, cause) = match ended {
            Ok((id, Ok(()))) => (id, ok_words.to_string()),
            Ok((id, Err(e))) => (id, format!("failed: {e:#}")),
            Err(e) => {
                let id = e.id();
                let cause = if e.is_panic() {
                    let payload = e.into_panic();
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".to_string());
                    format!("panicked: {message}")
                } else {
                    "was cancelled".to_string()
                };
                (id, cause)
            }
        };
        let name = self.names.remove(&id).unwrap_or_else(|| format!("{id}"));
        (name, cause)
    }
}

/// SIGTERM and SIGINT, listened for from the start of `run`, so that a signal that
/// arrives while the process is still starting stops it the orderly way.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Resolves when the tasks should stop: after the first SIGTERM/SIGINT and the shutdown
/// delay, which a second signal cuts short. At the first signal readiness turns false and
/// `step_down` is cancelled: the leader election stops and releases the Lease at once, while
/// the webhook keeps serving for the delay.
async fn shutdown_requested(
    mut signals: Signals,
    health: Arc<Health>,
    step_down: CancellationToken,
    delay: Duration,
) {
    signals.next().await;
    health.set_shutting_down();
    step_down.cancel();
    if !delay.is_zero() {
        tracing::info!(delay = %humantime::format_duration(delay), "shutdown requested: reporting not ready, still serving for the shutdown delay");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = signals.next() => tracing::info!("second signal: cutting the shutdown delay short"),
        }
    }
    tracing::info!("shutdown requested: reporting not ready, finishing in-flight requests");
}

/// `pullsecret-injector run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    let settings = Settings::load(&args.config.config)?;
    if args.no_webhook && args.no_sync {
        bail!("--no-webhook and --no-sync together leave nothing to run");
    }
    let metrics = Metrics::new();
    let health = Health::new();
    health.report_ready_to(metrics.ready.clone());
    let mut tasks = Supervisor::new();
    let stop = tasks.stop();
    // Cancelled at the first signal (and with `stop`): the end of this replica's candidacy.
    let step_down = stop.child_token();

    // Everything that can fail on bad input is checked before anything starts serving, so
    // that the process never runs half-configured.
    let managed_certificate = settings
        .managed_certificate
        .clone()
        .filter(|_| !args.no_webhook);
    let client = if !args.no_sync || managed_certificate.is_some() {
        Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?,
        )
    } else {
        None
    };
    let sync = match &client {
        Some(client) if !args.no_sync => {
            Some(prepare_sync(client.clone(), &settings, &metrics, &health, &args).await?)
        }
        _ => {
            health.disable_sync();
            None
        }
    };
    let webhook = if args.no_webhook {
        health.set_webhook(Webhook::Disabled);
        None
    } else {
        Some(PreparedWebhook::bind(&settings, &metrics).await?)
    };
    let admin_listener = server::bind(settings.admin_listen, "admin.listen").await?;

    // A certificate from files is loaded by now; one the injector keeps itself makes the
    // webhook ready when its first pair is loaded.
    if webhook.is_some() && managed_certificate.is_none() {
        health.set_webhook(Webhook::Serving);
    }
    let admin = server::admin_router(AdminState {
        health: health.clone(),
        metrics: metrics.clone(),
    });
    tasks.spawn("admin server", {
        let stop = stop.clone().cancelled_owned();
        let limits = settings.admin_limits.clone();
        async move { Ok(server::serve_admin(admin_listener, admin, limits, stop).await?) }
    });
    let leading = sync.map(|sync| sync.spawn(&mut tasks, step_down.clone()));
    if let Some(webhook) = webhook {
        let admission = Admission::from_settings(&settings, metrics.clone());
        if let (Some(managed), Some(client)) = (managed_certificate, client) {
            let namespace = own_namespace(&client);
            let manager = CertManager::new(
                client,
                &namespace,
                managed,
                webhook.store.clone(),
                health.clone(),
                args.tls_reload_interval,
            );
            let stop = tasks.stop();
            // The Lease holder writes when the sync task elects one; otherwise every replica
            // does (the writes are compare-and-swap, see certs).
            tasks.spawn("serving certificate", manager.run(leading.flatten(), stop));
        }
        webhook.spawn(
            &mut tasks,
            admission,
            health.clone(),
            args.tls_reload_interval,
        );
    }
    tracing::info!(admin = %settings.admin_listen, registries = settings.registries.len(), webhook = !args.no_webhook, sync = !args.no_sync, "pullsecret-injector running");

    let result = tasks
        .run(
            shutdown_requested(signals, health, step_down, args.shutdown_delay),
            STOP_TIMEOUT,
        )
        .await;
    if result.is_ok() {
        tracing::info!("stopped");
    }
    result
}

/// The webhook, its certificate loaded and its port bound, not serving yet.
struct PreparedWebhook {
    store: Arc<CertStore>,
    tls: Arc<rustls::ServerConfig>,
    listener: tokio::net::TcpListener,
    limits: Limits,
    body_limits: BodyLimits,
}

impl PreparedWebhook {
    async fn bind(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Self> {
        let store = match settings.managed_certificate {
            Some(_) => CertStore::empty(),
            None => CertStore::load(&settings.tls_cert_file, &settings.tls_key_file)?,
        };
        let store = Arc::new(store.with_expiry_gauge(metrics.serving_certificate_expiry.clone()));
        let tls = store.server_config()?;
        let listener = server::bind(settings.webhook_listen, "webhook.listen").await?;
        Ok(Self {
            store,
            tls,
            listener,
            limits: settings.webhook_limits.clone(),
            body_limits: settings.body_limits.clone(),
        })
    }

    /// Start the certificate reload and the HTTPS server.
    fn spawn(
        self,
        tasks: &mut Supervisor,
        admission: Admission,
        health: Arc<Health>,
        reload_interval: Duration,
    ) {
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(address = %addr, "webhook listening (HTTPS)");
        }
        let store = self.store;
        let stop = tasks.stop().cancelled_owned();
        tasks.spawn("TLS reload", async move {
            store.watch(reload_interval, stop).await;
            Ok(())
        });
        let router = server::closing_connections_on_shutdown(
            server::webhook_router_with(Arc::new(admission), self.body_limits),
            health,
        );
        let (listener, tls, limits) = (self.listener, self.tls, self.limits);
        let stop = tasks.stop().cancelled_owned();
        tasks.spawn("webhook server", async move {
            server::serve_tls(listener, tls, router, limits, stop).await;
            Ok(())
        });
    }
}

/// The sync task, built and checked but not started.
struct PreparedSync {
    task: Arc<SyncTask>,
    elector: Option<LeaderElector>,
    /// `podReport.enabled`: the Pending Pod watch and its passes.
    pods: Option<Arc<PodReport>>,
}

impl PreparedSync {
    /// Start its parts: the watches, the credential reports, the writer, and the leader
    /// election that gates the writer (without one this replica always leads), and the
    /// Pending Pod report when configured. Returns whether this replica leads, when there is
    /// an election.
    ///
    /// The election ends at `step_down`, the first shutdown signal: the writer stops and the
    /// Lease is released at once, so that another replica takes over while this one still
    /// serves the webhook for the shutdown delay, and before `helm uninstall` has removed the
    /// RBAC the release needs. The task itself then waits for the stop like every other.
    fn spawn(
        self,
        tasks: &mut Supervisor,
        step_down: CancellationToken,
    ) -> Option<tokio::sync::watch::Receiver<bool>> {
        let Self {
            task,
            elector,
            pods,
        } = self;
        let stop = tasks.stop();
        let (leading_tx, leading) = tokio::sync::watch::channel(elector.is_none());
        if let Some(pods) = pods {
            tasks.spawn("Pod watch", pods.clone().watch(stop.clone()));
            tasks.spawn("Pod report", pods.report(leading.clone(), stop.clone()));
        }
        let writer = task
            .clone()
            .write_while_leading(leading.clone(), stop.clone());
        let elected = elector.as_ref().map(|_| leading);
        match elector {
            Some(elector) => {
                let until = step_down.cancelled_owned();
                let stopped = stop.clone().cancelled_owned();
                tasks.spawn("leader election", async move {
                    // The writer ends when every sender is gone: keep one until the stop.
                    let _open = leading_tx.clone();
                    elector.run(leading_tx, until).await;
                    stopped.await;
                    Ok(())
                });
                tasks.spawn("sync writer", writer);
            }
            // Always leading: the sender lives as long as the writer.
            None => tasks.spawn("sync writer", async move {
                let _leading = leading_tx;
                writer.await
            }),
        }
        tasks.spawn(
            "namespace watch",
            task.clone().watch_namespaces(stop.clone()),
        );
        tasks.spawn(
            "managed Secret watch",
            task.clone().watch_secrets(stop.clone()),
        );
        tasks.spawn("credential reports", task.report_credentials(stop));
        elected
    }
}

async fn prepare_sync(
    client: kube::Client,
    settings: &Settings,
    metrics: &Metrics,
    health: &Arc<Health>,
    args: &RunArgs,
) -> anyhow::Result<PreparedSync> {
    let http = HttpClient::new(HttpOptions::default())?;
    let registries = sync::registries(settings, &http)?;
    for r in &registries {
        // Read and parse every credential file now (no network), so that a broken one is
        // named at once. It does not stop the process: the webhook needs no credential,
        // and the sync task keeps the last good Secrets and keeps reporting the problem.
        if let Err(e) = r.provider.validate().await {
            tracing::warn!(
                registry = %r.name,
                "registry {}: {} credentials: {e}; the webhook serves, the sync task keeps existing Secrets and retries",
                r.name,
                r.provider.kind()
            );
        }
    }
    let identity = leader::default_identity();
    let namespace = own_namespace(&client);
    let le = &settings.sync.leader_election;
    let elector = if le.enabled {
        let lease_namespace = if le.lease_namespace.is_empty() {
            namespace.clone()
        } else {
            le.lease_namespace.clone()
        };
        tracing::info!(lease = %le.lease_name, namespace = %lease_namespace, identity = %identity, "leader election enabled");
        Some(LeaderElector::new(
            client.clone(),
            LeaderConfig::new(lease_namespace, le.lease_name.clone(), identity.clone()),
        ))
    } else {
        None
    };
    let report_to = match std::env::var("POD_NAME") {
        Ok(pod) if !pod.is_empty() => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod),
            namespace: Some(namespace),
            ..Default::default()
        },
        _ => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Namespace".into()),
            name: Some(namespace.clone()),
            namespace: Some(namespace),
            ..Default::default()
        },
    };
    let task = SyncTask::new(
        client,
        registries,
        SyncOptions {
            selector: settings.namespace_selector.to_string(),
            timing: RefreshTiming {
                refresh_interval: settings.sync.refresh_interval,
                file_check_interval: args.credential_file_check_interval,
            },
            max_writes_per_second: settings.sync.max_writes_per_second,
            identity,
            instance: settings.sync.instance.clone(),
            retired_secret_names: settings.sync.retired_secret_names.clone(),
            report_to,
        },
        metrics.clone(),
        health.clone(),
    );
    let pods = settings.pod_report.enabled.then(|| {
        PodReport::new(
            task.clone(),
            crate::registry::Registries::new(settings.entries()),
            settings.pod_opt_out_annotation.clone(),
            settings.pod_report.clone(),
        )
    });
    Ok(PreparedSync {
        task,
        elector,
        pods,
    })
}

/// The namespace this process runs in: `POD_NAMESPACE`, the mounted ServiceAccount's
/// namespace, or the kubeconfig's default namespace.
fn own_namespace(client: &kube::Client) -> String {
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        return ns;
    }
    if let Ok(ns) =
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        && !ns.trim().is_empty()
    {
        return ns.trim().to_string();
    }
    client.default_namespace().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that runs until the signal, like every real one.
    fn until_stopped(s: &Supervisor) -> impl Future<Output = anyhow::Result<()>> + use<> {
        let stop = s.stop();
        async move {
            stop.cancelled().await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_task_stops_on_the_one_signal() {
        let mut s = Supervisor::new();
        for name in ["a", "b", "c"] {
            let task = until_stopped(&s);
            s.spawn(name, task);
        }
        s.run(async {}, Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn a_panicking_task_stops_the_others_and_fails_naming_it() {
        let mut s = Supervisor::new();
        let other = until_stopped(&s);
        let stopped = s.stop();
        s.spawn("webhook server", other);
        s.spawn("namespace watch", async {
            tokio::task::yield_now().await;
            panic!("boom at the watch");
        });
        let e = s
            .run(std::future::pending(), Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(e, "task namespace watch panicked: boom at the watch");
        assert!(stopped.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_that_returns_or_fails_early_fails_the_run() {
        let mut s = Supervisor::new();
        s.spawn("sync writer", async { Ok(()) });
        let e = s.run(std::future::pending(), Duration::from_secs(5)).await;
        assert_eq!(
            e.unwrap_err().to_string(),
            "task sync writer ended before shutdown"
        );
        let mut s = Supervisor::new();
        s.spawn("managed Secret watch", async {
            Err(anyhow::anyhow!("the managed Secret watch ended"))
        });
        let e = s.run(std::future::pending(), Duration::from_secs(5)).await;
        assert_eq!(
            e.unwrap_err().to_string(),
            "task managed Secret watch failed: the managed Secret watch ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_the_signal_is_cut_off_and_named() {
        let mut s = Supervisor::new();
        let good = until_stopped(&s);
        s.spawn("admin server", good);
        s.spawn("stuck", std::future::pending());
        let e = s.run(async {}, Duration::from_secs(3)).await;
        assert_eq!(
            e.unwrap_err().to_string(),
            "tasks stuck did not stop within 3s"
        );
    }
}
