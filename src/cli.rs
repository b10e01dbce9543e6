//! Command line: `run` (see [`crate::run`]), `check`, `explain`, `report`, `version`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::config::Settings;
use crate::credentials::probe::{self, ProbeResult};
use crate::credentials::{Credential, HttpClient, HttpOptions};
use crate::mutate::{Decision, PodView, SkipReason, plan};
use crate::registry::{HostPattern, Registries};
use crate::sync;

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
    /// Validate the config, fetch every registry's credentials once, print their expiry;
    /// with --probe, prove each against the registry.
    Check(CheckArgs),
    /// Offline: print the JSON patch and the Secrets that would be injected into a Pod.
    Explain(ExplainArgs),
    /// List the Pods in opted-in namespaces that lack a Secret their images need (exit 0:
    /// none, 2: some, 1: error).
    Report(ReportArgs),
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

/// `check` flags.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    /// Config file.
    pub config: ConfigArg,
    /// Also prove each credential against each registry host with the registry's own auth
    /// flow (`GET /v2/`, its Basic or Bearer challenge); exit 1 unless every probed host
    /// accepts it.
    #[arg(long)]
    pub probe: bool,
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

/// `report` flags.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    /// Config file.
    pub config: ConfigArg,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,
}

/// `report -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// An aligned table with a header.
    Table,
    /// `{"pods": [...]}`.
    Json,
}

/// Exit status of `report` when it lists Pods.
pub const REPORT_FOUND: u8 = 2;

/// `explain` flags.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    /// Config file.
    pub config: ConfigArg,
    /// Pod manifest (YAML or JSON), or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Labels of the Pod's namespace (`key=value,key2=value2`, `""` for none): only the
    /// registries that namespace gets are considered (the opt-in `namespaceSelector` and
    /// each registry's own). Without it, every registry is considered.
    #[arg(long, value_name = "LABELS")]
    pub namespace_labels: Option<String>,
}

/// `key=value,key2=value2` (empty: no labels).
fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        crate::labels::validate_key(key)
            .with_context(|| format!("--namespace-labels: {key:?} is not a label key"))?;
        crate::labels::validate_label_value(value)
            .with_context(|| format!("--namespace-labels: {value:?} is not a label value"))?;
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

/// Run a parsed command line; the exit status on success (`report` tells with it whether
/// it found Pods).
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => crate::run::run(args).await,
        Command::Check(args) => check(&args.config.config, args.probe).await,
        Command::Explain(args) => explain(&args),
        Command::Report(args) => return report(&args).await,
        Command::Version => {
            println!("pullsecret-injector {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
    .map(|()| ExitCode::SUCCESS)
}

async fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let settings = load(&args.config.config)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let found = crate::pods::report::collect(&client, &settings)
        .await
        .context("listing the opted-in namespaces and their Pending Pods")?;
    match args.output {
        ReportFormat::Json => println!("{}", crate::pods::report::json(&found)),
        ReportFormat::Table if found.is_empty() => println!(
            "no Pending Pod in the namespaces matching {} lacks a Secret its images need",
            settings.namespace_selector
        ),
        ReportFormat::Table => print!("{}", crate::pods::report::table(&found)),
    }
    Ok(if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(REPORT_FOUND)
    })
}

fn load(path: &Path) -> anyhow::Result<Settings> {
    Ok(Settings::load(path)?)
}

async fn check(config: &Path, probe: bool) -> anyhow::Result<()> {
    let settings = load(config)?;
    println!("config {}: ok", config.display());
    let http = HttpClient::new(HttpOptions::default())?;
    let registries = sync::registries(&settings, &http)?;
    let mut failed = Vec::new();
    let mut refused = Vec::new();
    for r in &registries {
        let mut hosts = r.hosts.join(",");
        if let Some(selector) = &r.namespace_selector {
            hosts.push_str(&format!(" (namespaces {selector})"));
        }
        match r.provider.fetch().await {
            Ok(c) => {
                let user = c.username().unwrap_or("(docker config file)");
                let expiry = c
                    .expires_at()
                    .map(|t| format!("expires {}", sync::secret::rfc3339(t)))
                    .unwrap_or_else(|| "static".to_string());
                println!(
                    "registry {}: ok: hosts {hosts}, secret {}, {} as {user}, {expiry}",
                    r.name,
                    r.secret_name,
                    r.provider.kind()
                );
                if probe {
                    refused.extend(check_probe(r, &c, &http).await);
                }
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
    if !refused.is_empty() {
        bail!("{}", refused.join("; "));
    }
    Ok(())
}

/// Probe `credential` at the registry's probe hosts, printing a line per host; returns a
/// line per host that did not accept it.
async fn check_probe(
    r: &sync::RegistrySync,
    credential: &Credential,
    http: &HttpClient,
) -> Vec<String> {
    let mut problems = Vec::new();
    let data = credential.secret_data(&r.hosts);
    for host in &r.hosts {
        let probed = HostPattern::parse(host)
            .ok()
            .is_some_and(|h| r.probe_hosts.contains(&h));
        if !probed {
            let why = match HostPattern::parse(host).ok().as_ref().map(probe::target) {
                Some(None) => "a glob names no host to ask",
                _ => "not in probeHosts",
            };
            println!("registry {}: host {host}: not probed ({why})", r.name);
        }
    }
    for p in probe::probe_data(http, &r.probe_hosts, data.expose()).await {
        let result = p.probe.result;
        let word = if result == ProbeResult::Accepted {
            result.as_str().to_string()
        } else {
            result.as_str().to_uppercase()
        };
        println!(
            "registry {}: host {}: {word}: {}",
            r.name, p.host, p.probe.answer
        );
        if result != ProbeResult::Accepted {
            problems.push(format!(
                "registry {} host {}: {result}: {}",
                r.name, p.host, p.probe.answer
            ));
        }
    }
    problems
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
    let registries = match args
        .namespace_labels
        .as_deref()
        .map(parse_labels)
        .transpose()?
    {
        None => Registries::new(settings.entries()),
        Some(labels) if !settings.namespace_selector.matches(&labels) => {
            println!(
                "# the namespace is not opted in (namespaceSelector {}): the webhook is not called",
                settings.namespace_selector
            );
            println!("secrets: []\npatch: []");
            return Ok(());
        }
        Some(labels) => Registries::new(
            settings
                .registries
                .iter()
                .filter(|r| settings.registry_applies(r, &labels))
                .map(|r| r.entry.clone())
                .collect(),
        ),
    };
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
