//! End-to-end: the real kube-apiserver calls the real binary over TLS and stores the Pod.
//!
//! Run with `scripts/test.sh` (starts etcd and kube-apiserver on loopback). Each test has its
//! own injector process, its own webhook registration and its own opt-in label value, so the
//! tests run in parallel without seeing each other.

mod cluster;
mod common;
mod fixture;

use std::path::Path;
use std::time::Duration;

use cluster::{Certs, Injector, pull_secrets};
use k8s_openapi::api::core::v1::{LocalObjectReference, Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::json;

const LABEL: &str = "pullsecret-injector.io/e2e";

struct Fixture {
    client: Client,
    id: String,
    webhook: String,
    injector: Injector,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(name: &str) -> Self {
        let client = cluster::admin_client().await;
        let id = cluster::unique(name);
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = Certs::generate(&dir.path().join("certs"));
        let password = dir.path().join("password");
        std::fs::write(&password, "not-a-real-token\n").unwrap();
        let selector = format!("{LABEL}={id}");
        let mut config = fixture::config(vec![
            fixture::registry(
                "yandex",
                &fixture::YANDEX_HOSTS,
                fixture::SECRET,
                fixture::basic("iam", &password),
            ),
            fixture::registry(
                "corp",
                &["*.corp.example.com"],
                "corp-pull",
                fixture::basic("robot", &password),
            ),
        ]);
        config.namespace_selector = selector.clone();
        // Webhook only, as the chart runs it with sync.enabled=false: no token, no
        // kubeconfig. It needs no API access at all.
        let injector = Injector::start(
            dir.path(),
            &certs,
            config,
            &["--no-sync"],
            &[("KUBECONFIG", "/nonexistent/kubeconfig")],
        );
        let webhook = format!("psi-{id}");
        cluster::register_webhook(&client, &webhook, &injector.url(), &certs.ca_pem, &selector)
            .await;
        Self {
            client,
            id,
            webhook,
            injector,
            _dir: dir,
        }
    }

    /// A namespace that carries the opt-in label; returns once the API server calls the
    /// webhook for it (webhook registrations reach the admission chain asynchronously).
    async fn labelled_namespace(&self, suffix: &str) -> String {
        let ns = format!("{}-{suffix}", self.id);
        cluster::create_namespace(&self.client, &ns, &[(LABEL, &self.id)]).await;
        cluster::until_admitted(
            &self.client,
            &ns,
            &pod("probe", &["cr.yandex/probe/app:1"]),
            &format!("the API server to call the webhook for namespace {ns}"),
            |s| !s.is_empty(),
        )
        .await;
        ns
    }

    async fn create(&self, ns: &str, pod: &Pod) -> Pod {
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), pod)
            .await
            .unwrap_or_else(|e| panic!("creating pod in {ns}: {e}"))
    }

    /// The Pod as stored by the API server.
    async fn stored(&self, ns: &str, name: &str) -> Pod {
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading pod {ns}/{name}: {e}"))
    }

    fn admission_count(&self, outcome: &str) -> u64 {
        let (_, text) = self.injector.admin_get("/metrics").expect("metrics");
        let needle =
            format!("pullsecret_injector_admission_requests_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {needle} in metrics:\n{text}"))
    }

    async fn cleanup(self) {
        cluster::unregister_webhook(&self.client, &self.webhook).await;
    }
}

fn pod(name: &str, images: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": images.iter().enumerate()
                .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
                .collect::<Vec<_>>()
        }
    }))
    .expect("test pod")
}

fn with_pull_secrets(mut p: Pod, names: &[&str]) -> Pod {
    p.spec.as_mut().unwrap().image_pull_secrets = Some(
        names
            .iter()
            .map(|n| LocalObjectReference {
                name: n.to_string(),
            })
            .collect(),
    );
    p
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn pod_from_container_registry_in_labelled_namespace_gets_the_secret() {
    let fx = Fixture::new("cr").await;
    let ns = fx.labelled_namespace("a").await;
    fx.create(&ns, &pod("app", &["cr.yandex/crp123/app:1"]))
        .await;
    let stored = fx.stored(&ns, "app").await;
    assert_eq!(pull_secrets(&stored), ["yc-registry-secret"]);
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn cloud_registry_image_only_in_init_container_is_injected() {
    let fx = Fixture::new("init").await;
    let ns = fx.labelled_namespace("a").await;
    let mut p = pod("app", &["busybox:1.36"]);
    p.spec.as_mut().unwrap().init_containers = Some(vec![
        serde_json::from_value(
            json!({"name": "init", "image": "registry.yandexcloud.net/r1/init:2"}),
        )
        .unwrap(),
    ]);
    fx.create(&ns, &p).await;
    assert_eq!(
        pull_secrets(&fx.stored(&ns, "app").await),
        ["yc-registry-secret"]
    );
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn images_from_two_registries_get_both_secrets_each_once() {
    let fx = Fixture::new("two").await;
    let ns = fx.labelled_namespace("a").await;
    fx.create(
        &ns,
        &pod(
            "app",
            &[
                "cr.yandex/crp1/a:1",
                "git.corp.example.com/b:1",
                "registry.yandexcloud.net/r/c:1",
                "ci.corp.example.com/d@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ],
        ),
    )
    .await;
    assert_eq!(
        pull_secrets(&fx.stored(&ns, "app").await),
        ["yc-registry-secret", "corp-pull"]
    );
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn docker_hub_images_only_leave_the_pod_untouched() {
    let fx = Fixture::new("hub").await;
    let ns = fx.labelled_namespace("a").await;
    let before = fx.admission_count("unchanged");
    fx.create(
        &ns,
        &pod("app", &["nginx:1.27", "docker.io/library/redis:7"]),
    )
    .await;
    assert!(pull_secrets(&fx.stored(&ns, "app").await).is_empty());
    assert_eq!(
        fx.admission_count("unchanged"),
        before + 1,
        "the webhook was called and said unchanged"
    );
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn unlabelled_namespace_is_never_sent_to_the_webhook() {
    let fx = Fixture::new("unlab").await;
    // Make sure the registration is live first, using a labelled namespace.
    let _ = fx.labelled_namespace("on").await;
    let ns = format!("{}-off", fx.id);
    cluster::create_namespace(&fx.client, &ns, &[]).await;
    let total = |fx: &Fixture| {
        ["injected", "unchanged", "skipped", "invalid"]
            .iter()
            .map(|o| fx.admission_count(o))
            .sum::<u64>()
    };
    let before = total(&fx);
    fx.create(&ns, &pod("app", &["cr.yandex/crp1/app:1"])).await;
    assert!(pull_secrets(&fx.stored(&ns, "app").await).is_empty());
    assert_eq!(
        total(&fx),
        before,
        "the API server must not call the webhook for {ns}"
    );
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn existing_pull_secrets_are_kept_and_never_duplicated() {
    let fx = Fixture::new("dup").await;
    let ns = fx.labelled_namespace("a").await;
    fx.create(
        &ns,
        &with_pull_secrets(
            pod("listed", &["cr.yandex/crp1/app:1"]),
            &["yc-registry-secret"],
        ),
    )
    .await;
    assert_eq!(
        pull_secrets(&fx.stored(&ns, "listed").await),
        ["yc-registry-secret"]
    );
    fx.create(
        &ns,
        &with_pull_secrets(pod("other", &["cr.yandex/crp1/app:1"]), &["my-own"]),
    )
    .await;
    assert_eq!(
        pull_secrets(&fx.stored(&ns, "other").await),
        ["my-own", "yc-registry-secret"]
    );
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn opt_out_annotation_leaves_the_pod_untouched() {
    let fx = Fixture::new("optout").await;
    let ns = fx.labelled_namespace("a").await;
    let mut p = pod("app", &["cr.yandex/crp1/app:1"]);
    p.metadata.annotations = Some(
        [(
            "pullsecret-injector.io/skip".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    fx.create(&ns, &p).await;
    assert!(pull_secrets(&fx.stored(&ns, "app").await).is_empty());
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn server_side_dry_run_answer_carries_the_injected_secret() {
    let fx = Fixture::new("dry").await;
    let ns = fx.labelled_namespace("a").await;
    let manifest = fx._dir.path().join("pod.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec(&pod("dry", &["cr.yandex/crp1/app:1"])).unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", cluster::kubeconfig_path())
        .args(["create", "--dry-run=server", "-o", "json", "-n", &ns, "-f"])
        .arg(&manifest)
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answered: Pod = serde_json::from_slice(&out.stdout).expect("kubectl printed a Pod");
    assert_eq!(pull_secrets(&answered), ["yc-registry-secret"]);
    let gone = Api::<Pod>::namespaced(fx.client.clone(), &ns)
        .get_opt("dry")
        .await
        .unwrap();
    assert!(gone.is_none(), "a dry run stores nothing");
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn stopped_webhook_with_failure_policy_ignore_still_admits_the_pod() {
    let mut fx = Fixture::new("down").await;
    let ns = fx.labelled_namespace("a").await;
    let status = fx.injector.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    fx.create(&ns, &pod("app", &["cr.yandex/crp1/app:1"])).await;
    assert!(pull_secrets(&fx.stored(&ns, "app").await).is_empty());
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn service_account_pull_secrets_merged_by_the_api_server_stay() {
    let fx = Fixture::new("sa").await;
    let ns = fx.labelled_namespace("a").await;
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("builder".into()),
            ..Default::default()
        },
        image_pull_secrets: Some(vec![LocalObjectReference {
            name: "from-sa".into(),
        }]),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(fx.client.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .expect("creating ServiceAccount");
    let mut p = pod("app", &["cr.yandex/crp1/app:1"]);
    p.spec.as_mut().unwrap().service_account_name = Some("builder".into());
    fx.create(&ns, &p).await;
    assert_eq!(
        pull_secrets(&fx.stored(&ns, "app").await),
        ["from-sa", "yc-registry-secret"]
    );
    fx.cleanup().await;
}

/// Captures one AdmissionReview exactly as the API server sends it, checks that our handler
/// answers it, and (with `PSI_CAPTURE_FIXTURE=path`) saves it as a fixture.
#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn real_admission_review_from_the_api_server_is_answered() {
    use axum::body::Bytes;
    use std::sync::{Arc, Mutex};

    pullsecret_injector::tls::install_crypto_provider();
    let client = cluster::admin_client().await;
    let id = cluster::unique("capture");
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("certs"));
    let store =
        Arc::new(pullsecret_injector::tls::CertStore::load(&certs.cert(), &certs.key()).unwrap());
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen2 = seen.clone();
    // A recorder that allows everything and keeps the bodies it receives.
    let router = axum::Router::new().route(
        "/mutate",
        axum::routing::post(move |body: Bytes| {
            let seen = seen2.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                seen.lock().unwrap().push(body.to_vec());
                axum::Json(json!({
                    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": {"uid": v["request"]["uid"], "allowed": true}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(pullsecret_injector::server::serve_tls(
        listener,
        store.server_config().unwrap(),
        router,
        Default::default(),
        std::future::pending(),
    ));
    let selector = format!("{LABEL}={id}");
    let webhook = format!("psi-{id}");
    cluster::register_webhook(
        &client,
        &webhook,
        &format!("https://127.0.0.1:{port}/mutate"),
        &certs.ca_pem,
        &selector,
    )
    .await;
    let ns = format!("{id}-a");
    cluster::create_namespace(&client, &ns, &[(LABEL, &id)]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let mut p = pod("captured", &["cr.yandex/crp1/app:1", "nginx:1.27"]);
    p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    cluster::poll(
        "the API server to send a review to the recorder",
        Duration::from_secs(30),
        || async {
            let _ = pods.delete("captured", &Default::default()).await;
            pods.create(&PostParams::default(), &p).await.ok()?;
            (!seen.lock().unwrap().is_empty()).then_some(())
        },
    )
    .await;
    cluster::unregister_webhook(&client, &webhook).await;
    server.abort();

    let body = seen.lock().unwrap().last().cloned().unwrap();
    if let Some(path) = std::env::var_os("PSI_CAPTURE_FIXTURE") {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        std::fs::write(Path::new(&path), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
    let entry = pullsecret_injector::registry::RegistryEntry::new(
        "yandex",
        "yc-registry-secret",
        vec![pullsecret_injector::registry::HostPattern::parse("cr.yandex").unwrap()],
    );
    let admission = pullsecret_injector::admission::Admission::new(
        pullsecret_injector::registry::Registries::new(vec![entry]),
        "pullsecret-injector.io/skip".into(),
        Default::default(),
    );
    let answer = admission
        .handle(&body)
        .expect("our handler answers the real review");
    assert_eq!(answer.secrets, ["yc-registry-secret"]);
}
