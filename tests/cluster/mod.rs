//! Support for end-to-end tests against the real local control plane started by
//! `scripts/control-plane.sh` (see `scripts/test.sh`): a kube client, the injector binary
//! as a child process, serving certificates, webhook registration and bounded polls.
//!
//! These tests are `#[ignore]`d so that a plain `cargo test` runs without a control plane;
//! `scripts/test.sh` runs them with `--include-ignored`. When they run and the control plane
//! is not there, they FAIL with the reason: they never pass silently.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use pullsecret_injector::config::Config;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the admin kubeconfig of the local control plane, or a failure that says how to
/// start it.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("PSI_TEST_KUBECONFIG") {
        Some(p) if Path::new(&p).is_file() => PathBuf::from(p),
        Some(p) => panic!(
            "PSI_TEST_KUBECONFIG={} does not exist: the local control plane is not running (run scripts/test.sh)",
            Path::new(&p).display()
        ),
        None => panic!(
            "PSI_TEST_KUBECONFIG is not set: end-to-end tests need the local control plane; run them with scripts/test.sh"
        ),
    }
}

/// Where a control plane is: the shared one (`PSI_TEST_*`) or one a test started itself.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// PEM that verifies the API server.
    pub ca: PathBuf,
}

impl ControlPlane {
    /// The control plane `scripts/test.sh` started for every test.
    pub fn shared() -> Self {
        Self {
            kubeconfig: kubeconfig_path(),
            server: std::env::var("PSI_TEST_APISERVER").expect("PSI_TEST_APISERVER"),
            ca: std::env::var("PSI_TEST_CA_FILE")
                .expect("PSI_TEST_CA_FILE")
                .into(),
        }
    }

    /// An admin client.
    pub async fn admin_client(&self) -> Client {
        client_for(&self.kubeconfig).await
    }

    /// `kubectl` as admin.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// `kubectl apply -f -` as admin.
    pub fn apply(&self, manifests: &[u8]) {
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl apply");
        child.stdin.take().unwrap().write_all(manifests).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An admin client for the local API server.
pub async fn admin_client() -> Client {
    client_for(&kubeconfig_path()).await
}

/// A client with the credentials of the kubeconfig at `path`.
pub async fn client_for(path: &Path) -> Client {
    let kc =
        Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    Client::try_from(config).expect("building kube client")
}

/// A free TCP port on 127.0.0.1 (bound and released; the race is harmless on loopback).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Poll `f` until it returns `Some`, at most `timeout`; panic with `what` on timeout.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// The names in a Pod's `spec.imagePullSecrets`.
pub fn pull_secrets(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref())
        .map(|v| v.iter().map(|r| r.name.clone()).collect())
        .unwrap_or_default()
}

/// Creates `pod` in `ns` as a dry run until the API server's answer (through the webhooks)
/// carries `imagePullSecrets` that `accept` takes: a webhook just registered, a namespace just
/// labelled or a policy just created reaches the admission chain asynchronously. At most 30 s;
/// then panics naming `what`.
pub async fn until_admitted(
    client: &Client,
    ns: &str,
    pod: &Pod,
    what: &str,
    accept: impl Fn(&[String]) -> bool,
) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    poll(what, Duration::from_secs(30), || async {
        let p = pods.create(&dry, pod).await.ok()?;
        accept(&pull_secrets(&p)).then_some(())
    })
    .await
}

/// A CA and a serving certificate for 127.0.0.1 made by `certs/generate.sh`.
pub struct Certs {
    /// Folder holding ca.crt, tls.crt, tls.key.
    pub dir: PathBuf,
    /// PEM of the CA (the webhook's caBundle).
    pub ca_pem: Vec<u8>,
}

impl Certs {
    /// Generate into `dir`.
    pub fn generate(dir: &Path) -> Self {
        let out = Command::new("bash")
            .arg(repo().join("certs/generate.sh"))
            .arg(dir)
            .output()
            .expect("running certs/generate.sh");
        assert!(
            out.status.success(),
            "certs/generate.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_path_buf(),
            ca_pem: std::fs::read(dir.join("ca.crt")).expect("ca.crt"),
        }
    }
    /// `tls.crt`.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    /// `tls.key`.
    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}

/// A TLS client config (ring) trusting the CA in `ca_pem`, offering `alpn`.
pub fn tls_client_config(ca_pem: &[u8], alpn: &[&[u8]]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the defaults")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}

/// The injector binary running as a child process.
pub struct Injector {
    child: Option<Child>,
    /// Webhook HTTPS port on 127.0.0.1.
    pub webhook_port: u16,
    /// Admin HTTP port on 127.0.0.1.
    pub admin_port: u16,
    /// Where its stderr goes.
    pub log: PathBuf,
    /// The config file it runs with.
    pub config: PathBuf,
}

impl Injector {
    /// Write `config` with free listen ports and `certs` as the TLS files into `dir` and
    /// start `pullsecret-injector run` with `args`; waits until `/readyz` is ok.
    pub fn start(
        dir: &Path,
        certs: &Certs,
        mut config: Config,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let webhook_port = free_port();
        let admin_port = free_port();
        config.webhook.listen = format!("127.0.0.1:{webhook_port}");
        config.webhook.tls_cert_file = certs.cert();
        config.webhook.tls_key_file = certs.key();
        config.admin.listen = format!("127.0.0.1:{admin_port}");
        let path = dir.join(format!("config-{webhook_port}.yaml"));
        let yaml = serde_norway::to_string(&config).expect("config as YAML");
        std::fs::write(&path, yaml).expect("writing config");
        Self::start_with_config(dir, &path, webhook_port, admin_port, args, env)
    }

    /// Start with an existing config file whose listen ports are known.
    pub fn start_with_config(
        dir: &Path,
        config: &Path,
        webhook_port: u16,
        admin_port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut me = Self::spawn_with_config(dir, config, webhook_port, admin_port, args, env);
        me.wait_ready(Duration::from_secs(30));
        me
    }

    /// Like [`Injector::start_with_config`], without waiting until it is ready.
    pub fn spawn_with_config(
        dir: &Path,
        config: &Path,
        webhook_port: u16,
        admin_port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = dir.join(format!("injector-{webhook_port}.log"));
        let stderr = std::fs::File::create(&log).expect("creating log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullsecret-injector"));
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info,pullsecret_injector=debug")
            .env_remove("PULLSECRET_INJECTOR_CONFIG")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting pullsecret-injector");
        Self {
            child: Some(child),
            webhook_port,
            admin_port,
            log,
            config: config.to_path_buf(),
        }
    }

    /// Poll `/readyz` until 200; panics with the log on timeout or early exit.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("injector exited early with {status}:\n{}", self.log_text());
            }
            if let Some((200, _)) = http_get(self.admin_port, "/readyz") {
                return;
            }
            if Instant::now() >= deadline {
                panic!("injector not ready after {timeout:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Process id of the running binary.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("injector is running").id()
    }

    /// `https://127.0.0.1:<port>/mutate`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.webhook_port)
    }

    /// The process's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin port.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin_port, path)
    }

    /// Send SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("injector already stopped");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for injector") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "injector did not exit within 40s of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill without a chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "--- last lines of the injector log {} ---",
                self.log.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A minimal HTTP/1.0 GET on 127.0.0.1 (no client dependency needed for the admin port).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// A label map from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Create a namespace with labels and its `default` ServiceAccount (there is no
/// controller-manager to create it, and Pod admission wants it).
pub async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(self::labels(labels)),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<ServiceAccount>::namespaced(client.clone(), name)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount default in {name}: {e}"),
    }
}

/// Register a MutatingWebhookConfiguration that calls `url` for Pod CREATE in namespaces
/// matching `selector`, as the Helm chart does but by URL (never a Service on the test
/// API server: it would resolve to a non-loopback ClusterIP).
pub async fn register_webhook(
    client: &Client,
    name: &str,
    url: &str,
    ca_pem: &[u8],
    selector: &str,
) {
    let selector =
        pullsecret_injector::labels::LabelSelector::parse(selector).expect("test selector parses");
    let mwc = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "pods.pullsecret-injector.io".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                url: Some(url.to_string()),
                ca_bundle: Some(ByteString(ca_pem.to_vec())),
                service: None,
            },
            namespace_selector: Some(selector.to_k8s()),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["".into()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            failure_policy: Some("Ignore".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(5),
            reinvocation_policy: Some("IfNeeded".into()),
            ..Default::default()
        }]),
    };
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    api.create(&PostParams::default(), &mwc)
        .await
        .unwrap_or_else(|e| panic!("registering webhook {name}: {e}"));
}

/// Delete a webhook registration (ignoring "not found").
pub async fn unregister_webhook(client: &Client, name: &str) {
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// A unique, DNS-safe suffix for names in one test run.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{:x}{:x}",
        std::process::id(),
        nanos & 0xffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The Helm binary: `PSI_HELM`, else `helm` on PATH, else the project's cache (installed by
/// `scripts/chart-check.sh`).
pub fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("PSI_HELM") {
        return PathBuf::from(p);
    }
    if Command::new("helm")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return PathBuf::from("helm");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME");
    let p = cache.join("pullsecret-injector/bin/helm");
    assert!(
        p.is_file(),
        "helm not found (PSI_HELM, PATH, {}): run scripts/test.sh, which installs it",
        p.display()
    );
    p
}

/// The names a release's RBAC authorises (the chart's Secret and Lease permissions are by
/// name), as in the config the test runs with.
#[derive(Debug, Clone)]
pub struct ChartNames {
    /// `registries[].secretName`.
    pub secret_names: Vec<String>,
    /// `sync.retiredSecretNames`.
    pub retired: Vec<String>,
    /// `sync.leaderElection.leaseName`.
    pub lease_name: String,
}

impl ChartNames {
    /// The names `config` uses.
    pub fn of(config: &Config) -> Self {
        Self {
            secret_names: config
                .registries
                .iter()
                .map(|r| r.secret_name.clone())
                .collect(),
            retired: config.sync.retired_secret_names.clone(),
            lease_name: config.sync.leader_election.lease_name.clone(),
        }
    }

    /// Chart values that make the chart authorise these names (JSON, which is YAML). The
    /// registries' other fields do not matter for RBAC.
    fn values(&self) -> String {
        let registries: Vec<_> = self
            .secret_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                serde_json::json!({
                    "name": format!("r{i}"),
                    "hosts": ["registry.invalid"],
                    "secretName": name,
                    "credentials": {"basic": {"username": "u", "passwordFile": "/creds/p"}},
                })
            })
            .collect();
        serde_json::json!({
            // Only RBAC is rendered; the credentials Secret is not part of these tests.
            "credentials": {"existingSecret": "unused"},
            "registries": registries,
            "sync": {
                "retiredSecretNames": self.retired,
                "leaderElection": {"leaseName": self.lease_name},
            },
        })
        .to_string()
    }
}

/// Render and apply the chart's ServiceAccount, RBAC and ValidatingAdmissionPolicy for
/// release `release` (also the `sync.instance` the policy requires) in `namespace`,
/// authorising `names`; returns the ServiceAccount's name. Applying again with other names
/// is what `helm upgrade` does to these objects.
pub fn apply_chart_rbac(
    cp: &ControlPlane,
    release: &str,
    namespace: &str,
    names: &ChartNames,
) -> String {
    let values = tempfile::NamedTempFile::new().expect("a temporary values file");
    std::fs::write(values.path(), names.values()).expect("writing chart values");
    let rendered = Command::new(helm())
        .args(["template", release])
        .arg(repo().join("charts/pullsecret-injector"))
        .args(["--namespace", namespace, "-f"])
        .arg(values.path())
        .args([
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/admission-policy.yaml",
            "--show-only",
            "templates/rbac-pods.yaml",
            // What `helm install` discovers on a 1.30+ API server such as the test's.
            "--api-versions",
            "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
        ])
        .output()
        .expect("running helm template");
    assert!(
        rendered.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    cp.apply(&rendered.stdout);
    release_service_account(&rendered.stdout)
}

/// Install the chart's ServiceAccount, RBAC and admission policy (exactly what the chart
/// renders) for release `release` in `namespace` on `cp`, authorising `names`, and return a
/// kubeconfig that authenticates as that ServiceAccount with a TokenRequest token.
pub async fn chart_service_account(
    cp: &ControlPlane,
    client: &Client,
    dir: &Path,
    release: &str,
    namespace: &str,
    names: &ChartNames,
) -> PathBuf {
    create_namespace(client, namespace, &[]).await;
    let sa = apply_chart_rbac(cp, release, namespace, names);
    service_account_kubeconfig(cp, dir, release, namespace, &sa)
}

/// A kubeconfig (written into `dir`, named after `release`) that authenticates to `cp` as
/// ServiceAccount `namespace/sa`, with a TokenRequest token.
pub fn service_account_kubeconfig(
    cp: &ControlPlane,
    dir: &Path,
    release: &str,
    namespace: &str,
    sa: &str,
) -> PathBuf {
    let token = cp
        .kubectl()
        .args(["create", "token", sa, "-n", namespace, "--duration", "2h"])
        .output()
        .expect("running kubectl create token");
    assert!(
        token.status.success(),
        "kubectl create token failed: {}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let path = dir.join(format!("kubeconfig-{release}"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context: {{cluster: local, user: sa, namespace: {namespace}}}\ncurrent-context: sa\n",
            cp.server,
            cp.ca.display()
        ),
    )
    .unwrap();
    path
}

fn release_service_account(rendered: &[u8]) -> String {
    let text = String::from_utf8_lossy(rendered);
    for doc in text.split("\n---") {
        if doc.contains("kind: ServiceAccount") {
            for line in doc.lines() {
                if let Some(name) = line.trim().strip_prefix("name: ") {
                    return name.trim().trim_matches('"').to_string();
                }
            }
        }
    }
    panic!("no ServiceAccount in the rendered chart:\n{text}");
}

/// `kubectl apply -f -` as admin of the shared control plane.
pub fn kubectl_apply(manifests: &[u8]) {
    ControlPlane::shared().apply(manifests);
}

/// A counter or gauge value from OpenMetrics text (`name{labels}` exactly as printed).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
