//! End-to-end: the serving certificate the injector keeps itself (`certificates.mode=injector`,
//! the chart's default) against the real kube-apiserver, with the chart installed by Helm and
//! the binary running beside the API server as the chart's ServiceAccount (webhook registered
//! by URL, `caBundle` written by the injector).
//!
//! * GitOps: two renders are byte-identical; `kubectl apply` of the render (client-side, twice,
//!   and server-side as another field manager), `helm upgrade`, and a `caBundle` wiped by hand
//!   never leave the webhook without a working `caBundle`, and Pods keep getting their Secret.
//! * Least privilege: the injector's token may not point the webhook elsewhere (the chart's
//!   ValidatingAdmissionPolicy) nor read another webhook configuration; a foreign Secret with
//!   the TLS Secret's name is left alone and the replica stays unready until it is gone.
//! * Rotation under load: with lifetimes of seconds, several serving certificates and a CA
//!   rotation happen while Pods are created at more than 20 per second through the API
//!   server, which calls two replicas; no review fails open, every Pod gets its Secret, and
//!   every fresh TLS handshake verifies against the `caBundle` in force.

mod cluster;
mod common;
mod fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use sha2::{Digest, Sha256};

use cluster::{ControlPlane, Injector};
use fixture::{Config, SECRET};

const LABEL: &str = "certs.pullsecret-injector.io/e2e";
const WEBHOOK: &str = "pods.pullsecret-injector.io";
const REPLICA_B: &str = "replica-b.pods.pullsecret-injector.io";

/// The tests read the API server's per-webhook counters: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One Helm release of the chart in injector mode, registered by URL on 127.0.0.1.
struct Install {
    cp: ControlPlane,
    client: Client,
    id: String,
    fullname: String,
    ns: String,
    dir: tempfile::TempDir,
    /// Webhook port of replica A (the chart's `webhook.url`).
    port: u16,
    values: Vec<String>,
    kubeconfig: Option<PathBuf>,
}

impl Install {
    async fn new(name: &str, extra: &[&str]) -> Self {
        let cp = ControlPlane::shared();
        let client = cp.admin_client().await;
        let id = cluster::unique(name);
        let ns = format!("{id}-sys");
        cluster::create_namespace(&client, &ns, &[]).await;
        let port = cluster::free_port();
        let mut values: Vec<String> = [
            "credentials.existingSecret=unused".to_string(),
            format!("webhook.url=https://127.0.0.1:{port}/mutate"),
            "certificates.extraIpAddresses={127.0.0.1}".into(),
            format!("namespaceSelector.key={LABEL}"),
            format!("namespaceSelector.value={id}"),
            "rbac.admissionPolicy=true".into(),
        ]
        .into();
        values.extend(extra.iter().map(|s| s.to_string()));
        Self {
            fullname: format!("{id}-pullsecret-injector"),
            cp,
            client,
            id,
            ns,
            dir: tempfile::tempdir().unwrap(),
            port,
            values,
            kubeconfig: None,
        }
    }

    fn helm(&self, args: &[&str], more: &[String]) -> Output {
        let home = self.dir.path().join("helm");
        let mut cmd = Command::new(cluster::helm());
        cmd.args(args)
            .arg(cluster::repo().join("charts/pullsecret-injector"))
            .args(["--namespace", &self.ns])
            .env("KUBECONFIG", &self.cp.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        for v in self.values.iter().chain(more) {
            cmd.args(["--set", v]);
        }
        let out = cmd.output().expect("running helm");
        assert!(
            out.status.success(),
            "helm {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `helm uninstall`.
    fn uninstall(&self) {
        let out = Command::new(cluster::helm())
            .args(["uninstall", &self.id, "--namespace", &self.ns])
            .env("KUBECONFIG", &self.cp.kubeconfig)
            .output()
            .expect("running helm");
        assert!(
            out.status.success(),
            "helm uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `helm template`, as a GitOps tool renders the chart.
    fn render(&self) -> Vec<u8> {
        self.helm(&["template", &self.id], &[]).stdout
    }

    /// `helm install`, then a token of the chart's ServiceAccount.
    fn install(&mut self) {
        self.helm(&["install", &self.id], &[]);
        self.kubeconfig = Some(cluster::service_account_kubeconfig(
            &self.cp,
            self.dir.path(),
            &self.id,
            &self.ns,
            &self.fullname,
        ));
    }

    /// The injector with the chart's config (from the installed ConfigMap) on these ports,
    /// as the chart's ServiceAccount, named `pod`; not waiting until it is ready.
    async fn spawn(&self, pod: &str, webhook_port: u16, args: &[&str]) -> Injector {
        let cm: k8s_openapi::api::core::v1::ConfigMap =
            Api::namespaced(self.client.clone(), &self.ns)
                .get(&self.fullname)
                .await
                .expect("the chart's ConfigMap");
        let text = &cm.data.as_ref().unwrap()["config.yaml"];
        let mut config = Config::from_yaml(text).expect("the chart's config parses");
        assert!(
            config.webhook.managed_certificate.is_some(),
            "injector mode renders webhook.managedCertificate:\n{text}"
        );
        let admin_port = cluster::free_port();
        config.webhook.listen = format!("127.0.0.1:{webhook_port}");
        config.admin.listen = format!("127.0.0.1:{admin_port}");
        let path = self.dir.path().join(format!("config-{pod}.yaml"));
        std::fs::write(&path, serde_norway::to_string(&config).unwrap()).unwrap();
        let kubeconfig = self
            .kubeconfig
            .as_ref()
            .expect("installed")
            .to_str()
            .unwrap();
        Injector::spawn_with_config(
            self.dir.path(),
            &path,
            webhook_port,
            admin_port,
            args,
            &[
                ("KUBECONFIG", kubeconfig),
                ("POD_NAMESPACE", &self.ns),
                ("POD_NAME", pod),
            ],
        )
    }

    fn webhooks(&self) -> Api<MutatingWebhookConfiguration> {
        Api::all(self.client.clone())
    }

    async fn tls_secret(&self) -> Option<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .get_opt(&format!("{}-webhook-tls", self.fullname))
            .await
            .unwrap()
    }

    /// `caBundle` of every webhook entry, by name.
    async fn bundles(&self) -> BTreeMap<String, Vec<u8>> {
        self.webhooks()
            .get(&self.fullname)
            .await
            .unwrap()
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| {
                (
                    w.name,
                    w.client_config.ca_bundle.map(|b| b.0).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Wait until every webhook's `caBundle` is the TLS Secret's `ca.crt`; returns it.
    async fn wait_bundle_published(&self, what: &str) -> Vec<u8> {
        cluster::poll(what, Duration::from_secs(20), || async {
            let ca = self.tls_secret().await?.data?.get("ca.crt")?.0.clone();
            let bundles = self.bundles().await;
            bundles.values().all(|b| *b == ca).then_some(ca)
        })
        .await
    }

    /// An opted-in namespace.
    async fn app_namespace(&self, suffix: &str) -> String {
        let ns = format!("{}-{suffix}", self.id);
        cluster::create_namespace(&self.client, &ns, &[(LABEL, &self.id)]).await;
        ns
    }

    /// `kubectl patch --type=json` of the webhook configuration, as admin.
    fn patch_webhooks(&self, patch: serde_json::Value) {
        let out = self.kubectl(
            &[
                "patch",
                "mutatingwebhookconfiguration",
                &self.fullname,
                "--type=json",
                "-p",
                &patch.to_string(),
            ],
            None,
        );
        assert!(
            out.status.success(),
            "kubectl patch {patch}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::io::Write;
        let mut child = self
            .cp
            .kubectl()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or_default())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

/// Create a Pod from `cr.yandex` in `ns`; the names of its pull Secrets.
async fn create_pod(client: &Client, ns: &str, name: &str) -> Result<Vec<String>, kube::Error> {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "cr.yandex/crp/app:1"}]}
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await?;
    Ok(secret_names(&pod))
}

fn secret_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// The API server's own counters for webhook `name`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    fail_open: f64,
    rejected: f64,
    ok: f64,
}

async fn apiserver_counts(client: &Client, name: &str) -> Counts {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.expect("GET /metrics");
    let rejected: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_admission_webhook_rejection_count{")
                && l.contains(&format!("name=\"{name}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Counts {
        fail_open: cluster::metric(
            &text,
            &format!("apiserver_admission_webhook_fail_open_count{{name=\"{name}\",type=\"admit\"}}"),
        )
        .unwrap_or(0.0),
        rejected,
        ok: cluster::metric(
            &text,
            &format!("apiserver_admission_webhook_request_total{{code=\"200\",name=\"{name}\",operation=\"CREATE\",rejected=\"false\",type=\"admit\"}}"),
        )
        .unwrap_or(0.0),
    }
}

/// A fresh TLS handshake with 127.0.0.1:`port` that trusts exactly `ca_bundle` (what an API
/// server does with a new connection); the served certificate's SHA-256.
async fn handshake(port: u16, ca_bundle: &[u8]) -> Result<[u8; 32], String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_bundle) {
        roots
            .add(c.map_err(|e| format!("caBundle: {e}"))?)
            .map_err(|e| format!("caBundle: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?;
    Ok(Sha256::digest(leaf).into())
}

fn bundle_fingerprints(pem: &[u8]) -> BTreeSet<[u8; 32]> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|c| Sha256::digest(&c).into())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the local control plane (scripts/test.sh)"]
async fn gitops_renders_apply_and_upgrades_keep_the_injected_ca_bundle_and_pods_their_secret() {
    let _serial = SERIAL.lock().await;
    let mut inst = Install::new("crt", &[]).await;

    // Render twice: byte-identical, with no certificate and no caBundle in it.
    let render = inst.render();
    assert_eq!(render, inst.render(), "two helm template renders differ");
    let text = String::from_utf8_lossy(&render);
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("caBundle:"))
            && !text.contains("BEGIN CERTIFICATE"),
        "injector mode renders certificate material:\n{text}"
    );
    inst.install();
    let tls_name = format!("{}-webhook-tls", inst.fullname);

    // A foreign Secret with the TLS Secret's name: left alone, and the replica stays unready.
    let secrets = Api::<Secret>::namespaced(inst.client.clone(), &inst.ns);
    let foreign: Secret = serde_json::from_value(
        json!({"metadata": {"name": tls_name}, "stringData": {"owner": "someone else"}}),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let mut a = inst
        .spawn("injector-a", inst.port, &["--tls-reload-interval=300ms"])
        .await;
    cluster::poll(
        "the injector to report the foreign TLS Secret",
        Duration::from_secs(20),
        || async {
            a.log_text()
                .contains("exists without the label pullsecret-injector.io/webhook-certificate")
                .then_some(())
        },
    )
    .await;
    let (code, body) = a.admin_get("/readyz").expect("/readyz answers");
    assert_eq!(code, 503, "ready without a serving certificate: {body}");
    assert!(body.starts_with("TLS certificate not loaded\n"), "{body}");
    let kept = secrets.get(&tls_name).await.unwrap();
    assert_eq!(
        kept.data.unwrap()["owner"].0,
        b"someone else",
        "the foreign Secret was changed"
    );
    secrets
        .delete(&tls_name, &Default::default())
        .await
        .unwrap();
    a.wait_ready(Duration::from_secs(20));

    // The injector wrote its Secret (owned by the webhook configuration) and the caBundle.
    let ca = inst
        .wait_bundle_published("the caBundle of the injector's CA")
        .await;
    let secret = inst.tls_secret().await.expect("the TLS Secret");
    let mwc = inst.webhooks().get(&inst.fullname).await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|o| o.kind == "MutatingWebhookConfiguration"
                && Some(&o.uid) == mwc.metadata.uid.as_ref()),
        "the TLS Secret is not owned by the webhook configuration: {owners:?}"
    );
    let data = secret.data.unwrap();
    for k in ["tls.crt", "tls.key", "ca.crt", "ca.key"] {
        assert!(data.contains_key(k), "the TLS Secret lacks {k}");
    }
    let served = handshake(inst.port, &ca)
        .await
        .expect("TLS with the caBundle");
    let tls_crt = CertificateDer::from_pem_slice(&data["tls.crt"].0).unwrap();
    assert_eq!(served, <[u8; 32]>::from(Sha256::digest(&tls_crt)));

    // A webhook-only replica (no Lease: it writes too, compare-and-swap) serves the same
    // certificate and leaves the Secret as it is.
    let b_port = cluster::free_port();
    let mut b = inst
        .spawn(
            "injector-b",
            b_port,
            &["--tls-reload-interval=300ms", "--no-sync"],
        )
        .await;
    b.wait_ready(Duration::from_secs(20));
    assert_eq!(handshake(b_port, &ca).await.expect("TLS to B"), served);
    let unchanged = inst.tls_secret().await.unwrap().metadata.resource_version;
    assert_eq!(
        unchanged, secret.metadata.resource_version,
        "a second writer rewrote a Secret that needed nothing"
    );

    let app = inst.app_namespace("app").await;
    let before = apiserver_counts(&inst.client, WEBHOOK).await;
    let mut n = 0;
    let mut pod_gets_its_secret = |step: &'static str| {
        n += 1;
        let (client, app, name) = (inst.client.clone(), app.clone(), format!("p{n}"));
        async move {
            let got = create_pod(&client, &app, &name).await.unwrap();
            assert_eq!(got, [SECRET], "after {step}: Pod {name} was not injected");
        }
    };
    pod_gets_its_secret("install").await;

    // GitOps: apply the render as Argo CD would, client-side twice, then server-side taking
    // every field it sets (caBundle is not one of them).
    for args in [
        &["apply", "-f", "-"][..],
        &["apply", "-f", "-"][..],
        &[
            "apply",
            "--server-side",
            "--field-manager=argocd-controller",
            "--force-conflicts",
            "-f",
            "-",
        ][..],
    ] {
        let out = inst.kubectl(args, Some(&render));
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            inst.bundles().await[WEBHOOK],
            ca,
            "kubectl {args:?} changed the caBundle"
        );
        pod_gets_its_secret("kubectl apply").await;
    }

    // helm upgrade that changes the webhook keeps the injected caBundle.
    inst.helm(
        &["upgrade", &inst.id],
        &["webhook.timeoutSeconds=7".to_string()],
    );
    let mwc = inst.webhooks().get(&inst.fullname).await.unwrap();
    let w = &mwc.webhooks.as_ref().unwrap()[0];
    assert_eq!(w.timeout_seconds, Some(7), "helm upgrade did not apply");
    assert_eq!(
        w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
        Some(ca.clone()),
        "helm upgrade wiped or changed the caBundle"
    );
    pod_gets_its_secret("helm upgrade").await;

    // A caBundle wiped by hand (kubectl replace, a tool that renders a placeholder) comes back.
    inst.patch_webhooks(json!([{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}]));
    let restored = inst
        .wait_bundle_published("the wiped caBundle to be restored")
        .await;
    assert_eq!(restored, ca, "a wiped caBundle came back with another CA");
    pod_gets_its_secret("caBundle restored").await;
    let after = apiserver_counts(&inst.client, WEBHOOK).await;
    assert_eq!(
        (after.fail_open, after.rejected),
        (before.fail_open, before.rejected),
        "the API server failed open or refused while the webhook was up"
    );
    assert!(after.ok >= before.ok + 6.0, "{before:?} -> {after:?}");

    // Least privilege, as the injector's own token.
    let sa = cluster::client_for(inst.kubeconfig.as_ref().unwrap()).await;
    let as_sa = Api::<MutatingWebhookConfiguration>::all(sa.clone());
    let e = as_sa
        .patch(
            &inst.fullname,
            &PatchParams::default(),
            &Patch::Strategic(json!({"webhooks": [{"name": WEBHOOK,
                "clientConfig": {"url": "https://127.0.0.1:1/elsewhere"}}]})),
        )
        .await
        .expect_err("the injector's token redirected its webhook");
    assert!(
        e.to_string()
            .contains("pullsecret-injector may only change the caBundle of its webhooks"),
        "{e}"
    );
    let e = Api::<MutatingWebhookConfiguration>::all(sa)
        .get("some-other-webhook")
        .await
        .expect_err("the injector's token read another webhook configuration");
    assert!(e.to_string().contains("forbidden"), "{e}");

    assert!(b.terminate().success());
    assert!(a.terminate().success());
    inst.uninstall();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
#[ignore = "needs the local control plane (scripts/test.sh)"]
async fn a_forced_rotation_under_load_fails_no_review() {
    let _serial = SERIAL.lock().await;
    // Lifetimes of seconds: a new serving certificate about every 20 s, a new CA every 60 s,
    // the old CA out of caBundle 90 s after it was made.
    let mut inst = Install::new(
        "rot",
        &[
            "certificates.injector.caValidity=90s",
            "certificates.injector.certificateValidity=30s",
            "certificates.injector.publishDelay=2s",
        ],
    )
    .await;
    inst.install();
    // The API server calls both replicas: a second webhook entry for replica B.
    let b_port = cluster::free_port();
    inst.patch_webhooks(json!([{"op": "add", "path": "/webhooks/-", "value": {
                "name": REPLICA_B, "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Ignore", "timeoutSeconds": 5, "reinvocationPolicy": "IfNeeded",
                "clientConfig": {"url": format!("https://127.0.0.1:{b_port}/mutate")},
                "namespaceSelector": {"matchLabels": {LABEL: inst.id}},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["pods"], "scope": "Namespaced"}]}}]));
    let args = ["--tls-reload-interval=250ms"];
    let mut a = inst.spawn("injector-a", inst.port, &args).await;
    a.wait_ready(Duration::from_secs(30));
    let mut b = inst.spawn("injector-b", b_port, &args).await;
    b.wait_ready(Duration::from_secs(30));
    inst.wait_bundle_published("both webhooks' caBundle").await;
    let app = inst.app_namespace("load").await;
    let base_a = apiserver_counts(&inst.client, WEBHOOK).await;
    let base_b = apiserver_counts(&inst.client, REPLICA_B).await;

    let run_for = Duration::from_secs(110);
    let stop = tokio_util::sync::CancellationToken::new();
    // Fresh handshakes with each replica, trusting what its webhook entry trusts right now.
    let prober = {
        let (inst_client, fullname, stop) =
            (inst.client.clone(), inst.fullname.clone(), stop.clone());
        let ports = [(WEBHOOK, inst.port), (REPLICA_B, b_port)];
        tokio::spawn(async move {
            let api = Api::<MutatingWebhookConfiguration>::all(inst_client);
            let mut leaves: BTreeMap<&str, BTreeSet<[u8; 32]>> = BTreeMap::new();
            let mut cas = BTreeSet::new();
            let mut sizes = Vec::new();
            let (mut probes, mut failures) = (0u32, Vec::new());
            while !stop.is_cancelled() {
                let mwc = api
                    .get(&fullname)
                    .await
                    .expect("reading the webhook configuration");
                for (name, port) in ports {
                    let bundle = mwc
                        .webhooks
                        .iter()
                        .flatten()
                        .find(|w| w.name == name)
                        .and_then(|w| w.client_config.ca_bundle.clone())
                        .map(|b| b.0)
                        .unwrap_or_default();
                    let fps = bundle_fingerprints(&bundle);
                    if sizes.last() != Some(&fps.len()) {
                        sizes.push(fps.len());
                    }
                    cas.extend(fps);
                    probes += 1;
                    match handshake(port, &bundle).await {
                        Ok(leaf) => {
                            leaves.entry(name).or_default().insert(leaf);
                        }
                        Err(e) => failures.push(format!("{name}: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (leaves, cas, sizes, probes, failures)
        })
    };
    // 25 Pods a second through the API server, each reviewed by both replicas.
    let created = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut creates = tokio::task::JoinSet::new();
    let mut i = 0u32;
    while started.elapsed() < run_for {
        tick.tick().await;
        i += 1;
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (client, app, created) = (inst.client.clone(), app.clone(), created.clone());
        creates.spawn(async move {
            let r = create_pod(&client, &app, &format!("load-{i}")).await;
            drop(permit);
            created.fetch_add(1, Ordering::Relaxed);
            r.map(|_| ()).map_err(|e| format!("load-{i}: {e}"))
        });
    }
    let mut create_errors = Vec::new();
    while let Some(r) = creates.join_next().await {
        if let Err(e) = r.expect("create task") {
            create_errors.push(e);
        }
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let (leaves, cas, sizes, probes, failures) = prober.await.unwrap();
    let n = created.load(Ordering::Relaxed);
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "rotation under load: {n} Pods in {elapsed:.1?} ({rate:.1}/s); {probes} handshakes; serving certificates seen A {} B {}; CAs seen {}; caBundle sizes {sizes:?}",
        leaves.get(WEBHOOK).map_or(0, BTreeSet::len),
        leaves.get(REPLICA_B).map_or(0, BTreeSet::len),
        cas.len()
    );
    assert!(
        create_errors.is_empty(),
        "Pod creations failed: {create_errors:?}"
    );

    // Every Pod got its Secret, and the API server never failed open or refused.
    let pods = Api::<Pod>::namespaced(inst.client.clone(), &app)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(pods.items.len() as u64, n);
    let missing: Vec<String> = pods
        .items
        .iter()
        .filter(|p| secret_names(p) != [SECRET])
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {n} Pods lack their Secret: {missing:?}",
        missing.len()
    );
    for (name, base) in [(WEBHOOK, base_a), (REPLICA_B, base_b)] {
        let now = apiserver_counts(&inst.client, name).await;
        assert_eq!(
            now.fail_open, base.fail_open,
            "webhook {name} failed open during the rotation"
        );
        assert_eq!(
            now.rejected, base.rejected,
            "webhook {name} refused reviews"
        );
        assert!(
            now.ok - base.ok >= n as f64,
            "webhook {name}: {} successful calls for {n} Pods",
            now.ok - base.ok
        );
    }
    assert!(failures.is_empty(), "handshakes failed: {failures:?}");
    // The rotation did happen: several serving certificates on both replicas, a second CA
    // published next to the first, and the expired first one removed again.
    for name in [WEBHOOK, REPLICA_B] {
        let seen = leaves.get(name).map_or(0, BTreeSet::len);
        assert!(seen >= 4, "replica {name} served {seen} certificates");
    }
    assert!(cas.len() >= 2, "no CA rotation: {} CAs seen", cas.len());
    let grew = sizes.iter().position(|&s| s >= 2);
    assert!(
        grew.is_some_and(|i| sizes[i..].contains(&1)),
        "the caBundle never held two CAs and then one again: {sizes:?}"
    );
    assert!(b.terminate().success());
    assert!(a.terminate().success());
    inst.uninstall();
}
