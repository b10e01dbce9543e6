//! Sync scale benchmark against the real local API server (`scripts/bench-sync.sh` starts it
//! and runs this with `cargo bench --bench sync`; see BENCHMARKS.md).
//!
//! For each scenario (namespaces x `sync.maxWritesPerSecond`) it starts the release binary
//! sync-only, as the chart's ServiceAccount with the chart's RBAC, against the IAM stand-in
//! of the end-to-end tests, then:
//! 1. creates N labelled namespaces at once and measures the time until every one holds its
//!    Secret (a watch on the managed Secrets records when each one appears);
//! 2. lets the first token reach half its lifetime (it is issued short-lived; the next one is
//!    long-lived) and measures the roll: from the IAM call to the last namespace holding the
//!    new token;
//! 3. creates 20 more labelled namespaces one after another and measures, for each, the time
//!    from its creation to its Secret (steady state, with N namespaces already managed);
//! 4. reports IAM calls (the stand-in's counter), Secret writes (the injector's
//!    `pullsecret_injector_secret_writes_total`) and the injector's RSS (/proc).

#[path = "../tests/cluster/mod.rs"]
mod cluster;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fixture/mod.rs"]
mod fixture;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Certs, Injector};
use common::iam::{IamStandIn, TestKey};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

const LABEL: &str = "pullsecret-injector.io/bench-sync";
const SECRET: &str = "yc-registry-secret";
const FIRST_TOKEN: &str = "t1.bench-first";
const SECOND_TOKEN: &str = "t1.bench-rolled";
const NEW_NAMESPACES: usize = 20;

struct Scenario {
    namespaces: usize,
    writes_per_second: u32,
}

fn parse_args() -> Vec<Scenario> {
    let mut sizes = vec![100usize, 1000];
    let mut rates = vec![20u32, 200];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => {}
            "--namespaces" => {
                sizes = it
                    .next()
                    .expect("--namespaces LIST")
                    .split(',')
                    .map(|s| s.parse().expect("a number"))
                    .collect()
            }
            "--write-rates" => {
                rates = it
                    .next()
                    .expect("--write-rates LIST")
                    .split(',')
                    .map(|s| s.parse().expect("a number"))
                    .collect()
            }
            "-h" | "--help" => {
                println!("usage: sync [--namespaces 100,1000] [--write-rates 20,200]");
                std::process::exit(0)
            }
            other => panic!("unknown argument {other:?} (see --help)"),
        }
    }
    let mut out = Vec::new();
    for &rate in &rates {
        for &n in &sizes {
            out.push(Scenario {
                namespaces: n,
                writes_per_second: rate,
            });
        }
    }
    out
}

/// When each namespace's managed Secret first held each token, from a watch.
#[derive(Default)]
struct Seen {
    by_namespace: HashMap<String, Vec<(String, Instant)>>,
}

impl Seen {
    fn first_with(&self, ns: &str, token: &str) -> Option<Instant> {
        self.by_namespace
            .get(ns)?
            .iter()
            .find(|(t, _)| t == token)
            .map(|(_, at)| *at)
    }
    fn count_with(&self, prefix: &str, token: &str) -> usize {
        self.by_namespace
            .iter()
            .filter(|(ns, v)| ns.starts_with(prefix) && v.iter().any(|(t, _)| t == token))
            .count()
    }
}

fn password(s: &Secret) -> Option<String> {
    let data = s.data.as_ref()?.get(".dockerconfigjson")?;
    let config = pullsecret_injector::dockerconfig::parse(&data.0).ok()?;
    Some(config.auths.get("cr.yandex")?.password.clone())
}

fn watch_secrets(
    client: Client,
    selector: String,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api = Api::<Secret>::all(client);
        let stream = watcher(api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let Ok(secret) = item else { continue };
            if secret.metadata.name.as_deref() != Some(SECRET) {
                continue;
            }
            let (Some(ns), Some(token)) = (secret.metadata.namespace.clone(), password(&secret))
            else {
                continue;
            };
            let now = Instant::now();
            let mut seen = seen.lock().expect("seen lock");
            let v = seen.by_namespace.entry(ns).or_default();
            if v.last().is_none_or(|(t, _)| *t != token) {
                v.push((token, now));
            }
        }
    })
}

/// The injector's pid: the process whose command line names its config file.
fn pid_of(config: &Path) -> u32 {
    let needle = config.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline"))
            && cmd.split(|&b| b == 0).any(|arg| arg == needle)
        {
            return pid;
        }
    }
    panic!("no process runs with {}", config.display())
}

fn status_mib(pid: u32, field: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("injector status");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn metric(i: &Injector, series: &str) -> f64 {
    let text = i.admin_get("/metrics").expect("metrics").1;
    cluster::metric(&text, series).unwrap_or(0.0)
}

async fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn create_namespaces(client: &Client, names: &[String], label: &str) {
    let api = Api::<Namespace>::all(client.clone());
    let creates = names.iter().map(|name| {
        let api = api.clone();
        async move {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([(LABEL.to_string(), label.to_string())])),
                    ..Default::default()
                },
                ..Default::default()
            };
            api.create(&PostParams::default(), &ns)
                .await
                .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        }
    });
    // At most 50 creates in flight.
    futures::stream::iter(creates)
        .buffer_unordered(50)
        .collect::<Vec<()>>()
        .await;
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

struct Report {
    namespaces: usize,
    rate: u32,
    create_s: f64,
    converge_s: f64,
    roll_s: f64,
    refresh_after_s: f64,
    iam_calls: usize,
    refreshes: f64,
    created: f64,
    updated: f64,
    new_ns_ms: Vec<f64>,
    rss_idle: f64,
    rss_converged: f64,
    rss_rolled: f64,
    hwm: f64,
}

async fn run(
    s: &Scenario,
    client: &Client,
    dir: &Path,
    certs: &Certs,
    key_file: &Path,
    key: &TestKey,
) -> Report {
    let id = cluster::unique(&format!("b{}w{}", s.namespaces, s.writes_per_second));
    let release_ns = format!("{id}-sys");
    let lease = format!("lease-{id}");
    // Release `id`: the chart's sync.instance is the config's (its admission policy checks it).
    let kubeconfig = cluster::chart_service_account(
        &cluster::ControlPlane::shared(),
        client,
        dir,
        &id,
        &release_ns,
        &cluster::ChartNames {
            secret_names: vec![SECRET.into()],
            retired: Vec::new(),
            lease_name: lease.clone(),
        },
    )
    .await;
    let iam = IamStandIn::start().await;
    iam.register(key);
    // The first token lives 2 R: it is refreshed at R (half its life, +-10 % jitter), after
    // the initial convergence is surely over; the next one lives 12 h (one roll only).
    let bound = s.namespaces as f64 / f64::from(s.writes_per_second);
    let r = (bound * 1.5 + 20.0).max(60.0);
    iam.set_lifetime(Duration::from_secs_f64(2.0 * r));
    iam.set_token(FIRST_TOKEN);

    let selector = format!("{LABEL}={id}");
    let mut config = fixture::config(vec![fixture::registry(
        "yandex",
        &fixture::YANDEX_HOSTS,
        SECRET,
        fixture::authorized_key(key_file, &iam.endpoint()),
    )]);
    config.namespace_selector = selector;
    config.sync.max_writes_per_second = s.writes_per_second;
    config.sync.instance = id.clone();
    config.sync.leader_election.lease_name = lease;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watch = watch_secrets(
        client.clone(),
        format!(
            "app.kubernetes.io/managed-by=pullsecret-injector,pullsecret-injector.io/instance={id}"
        ),
        seen.clone(),
    );
    let injector = Injector::start(
        dir,
        certs,
        config,
        &["--no-webhook"],
        &[
            ("KUBECONFIG", kubeconfig.to_str().expect("UTF-8 path")),
            ("POD_NAMESPACE", &release_ns),
            ("POD_NAME", "injector"),
            ("RUST_LOG", "info"),
        ],
    );
    let pid = pid_of(&injector.config);
    let rss_idle = status_mib(pid, "VmRSS:");
    wait_until("the first IAM call", Duration::from_secs(30), || {
        iam.calls() >= 1
    })
    .await;
    iam.set_lifetime(Duration::from_secs(12 * 3600));
    iam.set_token(SECOND_TOKEN);
    let first_call = Instant::now();

    // 1. N namespaces at once.
    let prefix = format!("{id}-n");
    let names: Vec<String> = (0..s.namespaces).map(|i| format!("{prefix}{i}")).collect();
    let t0 = Instant::now();
    create_namespaces(client, &names, &id).await;
    let create_s = t0.elapsed().as_secs_f64();
    let n = s.namespaces;
    wait_until(
        &format!("{n} Secrets with the first token"),
        Duration::from_secs_f64(bound * 3.0 + 60.0),
        || seen.lock().expect("seen").count_with(&prefix, FIRST_TOKEN) == n,
    )
    .await;
    let converge_s = {
        let seen = seen.lock().expect("seen");
        names
            .iter()
            .filter_map(|ns| seen.first_with(ns, FIRST_TOKEN))
            .max()
            .expect("n > 0")
            .duration_since(t0)
            .as_secs_f64()
    };
    let rss_converged = status_mib(pid, "VmRSS:");
    eprintln!(
        "sync bench: {n} namespaces at {} writes/s: created in {create_s:.1} s, converged in {converge_s:.1} s",
        s.writes_per_second
    );
    let calls_before_roll = iam.calls();

    // 2. The roll.
    wait_until(
        "the refresh IAM call",
        Duration::from_secs_f64(r * 1.2 + 30.0),
        || iam.calls() > calls_before_roll,
    )
    .await;
    let refresh_at = Instant::now();
    let refresh_after_s = refresh_at.duration_since(first_call).as_secs_f64();
    wait_until(
        &format!("{n} Secrets with the rolled token"),
        Duration::from_secs_f64(bound * 3.0 + 60.0),
        || seen.lock().expect("seen").count_with(&prefix, SECOND_TOKEN) == n,
    )
    .await;
    let roll_s = {
        let seen = seen.lock().expect("seen");
        names
            .iter()
            .filter_map(|ns| seen.first_with(ns, SECOND_TOKEN))
            .max()
            .expect("n > 0")
            .saturating_duration_since(refresh_at)
            .as_secs_f64()
    };
    let rss_rolled = status_mib(pid, "VmRSS:");
    eprintln!(
        "sync bench: rolled in {roll_s:.1} s (refresh {refresh_after_s:.0} s after the first token)"
    );

    // 3. New namespaces one at a time, with N already managed.
    let mut new_ns_ms = Vec::new();
    for i in 0..NEW_NAMESPACES {
        let name = format!("{id}-late{i}");
        let t = Instant::now();
        create_namespaces(client, std::slice::from_ref(&name), &id).await;
        wait_until(
            &format!("Secret in {name}"),
            Duration::from_secs(30),
            || {
                seen.lock()
                    .expect("seen")
                    .first_with(&name, SECOND_TOKEN)
                    .is_some()
            },
        )
        .await;
        let at = seen
            .lock()
            .expect("seen")
            .first_with(&name, SECOND_TOKEN)
            .expect("seen");
        new_ns_ms.push(at.duration_since(t).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    new_ns_ms.sort_by(f64::total_cmp);

    let refreshes = metric(
        &injector,
        "pullsecret_injector_credential_refresh_total{registry=\"yandex\",result=\"success\"}",
    );
    let created = metric(
        &injector,
        "pullsecret_injector_secret_writes_total{result=\"created\"}",
    );
    let updated = metric(
        &injector,
        "pullsecret_injector_secret_writes_total{result=\"updated\"}",
    );
    let hwm = status_mib(pid, "VmHWM:");
    let iam_calls = iam.calls();
    drop(injector);
    watch.abort();
    Report {
        namespaces: n,
        rate: s.writes_per_second,
        create_s,
        converge_s,
        roll_s,
        refresh_after_s,
        iam_calls,
        refreshes,
        created,
        updated,
        new_ns_ms,
        rss_idle,
        rss_converged,
        rss_rolled,
        hwm,
    }
}

fn main() {
    let scenarios = parse_args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let client = cluster::admin_client().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = Certs::generate(&dir.path().join("certs"));
        let key = TestKey::shared(2048);
        let key_file = key.write_key_file(dir.path(), true);
        let mut reports = Vec::new();
        for s in &scenarios {
            reports.push(run(s, &client, dir.path(), &certs, &key_file, key).await);
        }
        println!();
        println!("| namespaces | maxWritesPerSecond | bound N/rate s | all Secrets s | roll s | new ns -> Secret p50 / p99 / max ms | IAM calls (refreshes) | writes created / updated | RSS idle / converged / rolled / peak MiB |");
        println!("|---:|---:|---:|---:|---:|---|---|---|---|");
        for r in &reports {
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} / {:.0} / {:.0} | {} ({}) | {} / {} | {:.1} / {:.1} / {:.1} / {:.1} |",
                r.namespaces,
                r.rate,
                r.namespaces as f64 / f64::from(r.rate),
                r.converge_s,
                r.roll_s,
                pct(&r.new_ns_ms, 50.0),
                pct(&r.new_ns_ms, 99.0),
                pct(&r.new_ns_ms, 100.0),
                r.iam_calls,
                r.refreshes,
                r.created,
                r.updated,
                r.rss_idle,
                r.rss_converged,
                r.rss_rolled,
                r.hwm,
            );
        }
        println!();
        for r in &reports {
            println!(
                "{} namespaces at {}/s: {:.1} s to create them; refresh {:.0} s after the first token; {} late namespaces measured one by one.",
                r.namespaces, r.rate, r.create_s, r.refresh_after_s, r.new_ns_ms.len()
            );
        }
        let bad: Vec<_> = reports
            .iter()
            .filter(|r| r.iam_calls != 2 || r.created as usize != r.namespaces + NEW_NAMESPACES || r.updated as usize != r.namespaces)
            .collect();
        for r in &bad {
            println!(
                "UNEXPECTED: {} namespaces: {} IAM calls (want 2: first token + one refresh), {} created (want {}), {} updated (want {})",
                r.namespaces, r.iam_calls, r.created, r.namespaces + NEW_NAMESPACES, r.updated, r.namespaces
            );
        }
        if !bad.is_empty() {
            std::process::exit(1);
        }
    });
}
