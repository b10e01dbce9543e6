//! Command line: `run`, `check`, `explain`, `version`, and what each does.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::admission::Admission;
use crate::config::Settings;
use crate::credentials::{HttpClient, HttpOptions};
use crate::metrics::Metrics;
use crate::mutate::{Decision, PodView, SkipReason, plan};
use crate::registry::Registries;
use crate::server::{self, AdminState, Health, Limits};
use crate::sync::leader::{self, LeaderConfig, LeaderElector};
use crate::sync::{self, SyncOptions, Syncer};
use crate::tls::CertStore;

/// Kubernetes admission webhook that injects registry-aware imagePullSecrets, and keeps
/// those Secrets fresh.
#[derive(Debug, Parser)]
#[command(name = "pullsecret-injector", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook and the sync task.
    Run(RunArgs),
    /// Validate the config, fetch every registry's credentials once, print their expiry.
    Check(ConfigArg),
    /// Offline: print the JSON patch and the Secrets that would be injected into a Pod.
    Explain(ExplainArgs),
    /// Print the version.
    Version,
}

/// `--config`.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Config file (YAML).
    #[arg(long, env = "PULLSECRET_INJECTOR_CONFIG")]
    pub config: PathBuf,
}

/// `run` flags.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    /// Config file.
    pub config: ConfigArg,
    /// Do not serve the webhook (sync task only).
    #[arg(long)]
    pub no_webhook: bool,
    /// Do not run the sync task (webhook only).
    #[arg(long)]
    pub no_sync: bool,
    /// How often the TLS files are re-read to detect rotation.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, hide = true)]
    pub tls_reload_interval: Duration,
    /// After SIGTERM, keep serving this long while /readyz reports not ready (so that the
    /// Service's endpoints drop this replica before its listener closes), then drain and
    /// exit. A second signal cuts the delay short.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,
    /// How often the credential files are re-read to detect rotation between refreshes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, hide = true)]
    pub credential_file_check_interval: Duration,
}

/// `explain` flags.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    /// Config file.
    pub config: ConfigArg,
    /// Pod manifest (YAML or JSON), or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
}

/// Run a parsed command line.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Check(args) => check(&args.config).await,
        Command::Explain(args) => explain(&args),
        Command::Version => {
            println!("pullsecret-injector {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Settings> {
    Ok(Settings::load(path)?)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = load(&args.config.config)?;
    if args.no_webhook && args.no_sync {
        bail!("--no-webhook and --no-sync together leave nothing to run");
    }
    let metrics = Metrics::new();
    let health = Health::new();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = {
        let stop_rx = stop_rx.clone();
        move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };

    // Everything that can fail on bad input is checked before anything starts serving, so
    // that the process never runs half-configured.
    let sync = if args.no_sync {
        health.set_sync_ready();
        None
    } else {
        Some(
            prepare_sync(
                &settings,
                &metrics,
                &health,
                args.credential_file_check_interval,
            )
            .await?,
        )
    };
    let webhook = if args.no_webhook {
        health.set_tls_loaded();
        None
    } else {
        let store = Arc::new(CertStore::load(
            &settings.tls_cert_file,
            &settings.tls_key_file,
        )?);
        let tls = store.server_config()?;
        let listener = server::bind(settings.webhook_listen, "webhook.listen").await?;
        Some((store, tls, listener))
    };
    let admin_listener = server::bind(settings.admin_listen, "admin.listen").await?;

    let admin = tokio::spawn(server::serve_admin(
        admin_listener,
        server::admin_router(AdminState {
            health: health.clone(),
            metrics: metrics.clone(),
        }),
        stopped(),
    ));
    let webhook = webhook.map(|(store, tls, listener)| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(address = %addr, "webhook listening (HTTPS)");
        }
        health.set_tls_loaded();
        tokio::spawn(store.watch(args.tls_reload_interval, stopped()));
        let admission = Arc::new(Admission::new(
            Registries::new(settings.entries()),
            settings.pod_opt_out_annotation.clone(),
            metrics.clone(),
        ));
        tokio::spawn(server::serve_tls(
            listener,
            tls,
            server::webhook_router(admission),
            Limits::default(),
            stopped(),
        ))
    });
    let sync = sync.map(|prepared| prepared.spawn(stop_rx.clone()));
    tracing::info!(admin = %settings.admin_listen, registries = settings.registries.len(), webhook = !args.no_webhook, sync = !args.no_sync, "pullsecret-injector running");

    shutdown_signal().await;
    health.set_shutting_down();
    if !args.shutdown_delay.is_zero() {
        tracing::info!(delay = %humantime::format_duration(args.shutdown_delay), "shutdown requested: reporting not ready, still serving for the shutdown delay");
        tokio::select! {
            _ = tokio::time::sleep(args.shutdown_delay) => {}
            _ = shutdown_signal() => tracing::info!("second signal: cutting the shutdown delay short"),
        }
    }
    tracing::info!("shutdown requested: reporting not ready, finishing in-flight requests");
    let _ = stop_tx.send(true);
    if let Some(w) = webhook {
        let _ = w.await;
    }
    if let Some(s) = sync {
        for t in s {
            let _ = t.await;
        }
    }
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
}

/// The sync task, built and checked but not started.
struct PreparedSync {
    syncer: Syncer,
    elector: Option<LeaderElector>,
}

impl PreparedSync {
    fn spawn(self, stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let (leading_tx, leading_rx) = tokio::sync::watch::channel(self.elector.is_none());
        if let Some(elector) = self.elector {
            let mut stop = stop.clone();
            tasks.push(tokio::spawn(elector.run(leading_tx, async move {
                let _ = stop.wait_for(|s| *s).await;
            })));
        } else {
            // Keep the sender alive for as long as the syncer runs.
            let mut stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await;
                drop(leading_tx);
            }));
        }
        tasks.push(tokio::spawn(self.syncer.run(leading_rx, stop)));
        tasks
    }
}

async fn prepare_sync(
    settings: &Settings,
    metrics: &Metrics,
    health: &Arc<Health>,
    file_check_interval: Duration,
) -> anyhow::Result<PreparedSync> {
    let http = HttpClient::new(HttpOptions::default())?;
    let registries = sync::registries(settings, &http)?;
    for r in &registries {
        // Read and parse every credential file now (no network): a missing file, a key that
        // does not parse or an empty password stops `run` before it serves anything.
        r.provider
            .validate()
            .await
            .with_context(|| format!("registry {}: {} credentials", r.name, r.provider.kind()))?;
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let identity = leader::default_identity();
    let le = &settings.sync.leader_election;
    let elector = if le.enabled {
        let namespace = if le.lease_namespace.is_empty() {
            own_namespace(&client)
        } else {
            le.lease_namespace.clone()
        };
        tracing::info!(lease = %le.lease_name, namespace = %namespace, identity = %identity, "leader election enabled");
        Some(LeaderElector::new(
            client.clone(),
            LeaderConfig::new(namespace, le.lease_name.clone(), identity.clone()),
        ))
    } else {
        None
    };
    let syncer = Syncer::new(
        client,
        registries,
        SyncOptions {
            selector: settings.namespace_selector.to_string(),
            refresh_interval: settings.sync.refresh_interval,
            max_writes_per_second: settings.sync.max_writes_per_second,
            identity,
            instance: settings.sync.instance.clone(),
            file_check_interval,
        },
        metrics.clone(),
        health.clone(),
    );
    Ok(PreparedSync { syncer, elector })
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the process");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn check(config: &Path) -> anyhow::Result<()> {
    let settings = load(config)?;
    println!("config {}: ok", config.display());
    let http = HttpClient::new(HttpOptions::default())?;
    let registries = sync::registries(&settings, &http)?;
    let mut failed = Vec::new();
    for r in &registries {
        let hosts = r.hosts.join(",");
        match r.provider.fetch().await {
            Ok(c) => {
                let user = c.username().unwrap_or("(docker config file)");
                let expiry = c
                    .expires_at()
                    .map(|t| format!("expires {}", sync::reconcile::rfc3339(t)))
                    .unwrap_or_else(|| "static".to_string());
                println!(
                    "registry {}: ok: hosts {hosts}, secret {}, {} as {user}, {expiry}",
                    r.name,
                    r.secret_name,
                    r.provider.kind()
                );
            }
            Err(e) => {
                println!(
                    "registry {}: FAILED: hosts {hosts}, secret {}, {}: {e}",
                    r.name,
                    r.secret_name,
                    r.provider.kind()
                );
                failed.push(r.name.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "credentials failed for registr{} {}",
            if failed.len() == 1 { "y" } else { "ies" },
            failed.join(", ")
        );
    }
    Ok(())
}

fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let settings = load(&args.config.config)?;
    let (text, source) = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the Pod from standard input")?;
        (s, "standard input".to_string())
    } else {
        let s = std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
        (s, args.file.display().to_string())
    };
    let value = parse_manifest(&text).with_context(|| format!("{source} is not YAML or JSON"))?;
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "Pod" {
        bail!("{source} is not a Pod (kind {kind:?}); explain takes a Pod manifest");
    }
    if let Some(v) = value.get("apiVersion").and_then(Value::as_str)
        && v != "v1"
    {
        bail!("{source} is not a core/v1 Pod (apiVersion {v:?})");
    }
    let pod =
        PodView::from_value(&value).with_context(|| format!("{source} is not a valid Pod"))?;
    let registries = Registries::new(settings.entries());
    let p = plan(&pod, &registries, &settings.pod_opt_out_annotation);
    for image in &p.unparsable_images {
        println!("# image {image:?} is not a valid reference; it matches no registry");
    }
    match p.decision {
        Decision::Skipped(SkipReason::OptOut) => {
            println!(
                "# skipped: the Pod has {}: \"true\"",
                settings.pod_opt_out_annotation
            );
            println!("secrets: []\npatch: []");
        }
        Decision::Unchanged => {
            println!("# unchanged: no image needs a Secret that the Pod does not list already");
            println!("secrets: []\npatch: []");
        }
        Decision::Inject { secrets, patch } => {
            println!("secrets: {}", serde_json::to_string(&secrets)?);
            println!("patch: {}", serde_json::to_string_pretty(&patch)?);
        }
    }
    Ok(())
}

fn parse_manifest(text: &str) -> anyhow::Result<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(v);
    }
    Ok(serde_norway::from_str::<Value>(text)?)
}
