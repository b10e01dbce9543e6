//! End-to-end on a real node: Pods really pull `cr.yandex/...` and `registry.yandexcloud.net/...`
//! from a private registry with the Secret the injector wrote, and reach `Running`.
//!
//! The node (scripts/node.sh: docker-registry with htpasswd auth and TLS, containerd that maps
//! both Yandex hosts to it and nothing else, kubelet as node `local`) runs next to the local
//! control plane; run with `scripts/test.sh`. Each test runs the real binary with the webhook
//! AND the sync task, as the chart's ServiceAccount with exactly the chart's RBAC, registered by
//! URL with a caBundle, minting tokens from the IAM stand-in; the registry accepts exactly the
//! token the stand-in issued (username `iam`).
//!
//! The registry's accepted credentials are global to the node, so the tests here take
//! `node::exclusive()` and run one after the other (each keeps its own release, label value,
//! `sync.instance` and webhook registration, like the other end-to-end tests). Timings go to
//! stderr with a `[node-e2e]` prefix and show up in CI logs.

mod cluster;
mod common;
mod fixture;
mod node;
mod workloads;

use std::time::{Duration, Instant};

use cluster::Injector;
use common::iam::{Mode, TestKey};
use common::wif::{Federation, WifStandIn, allow_anonymous_discovery};
use fixture::{RegistryConfig, Release, SECRET, YANDEX_HOSTS};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use node::{Node, report};

const LABEL: &str = "pullsecret-injector.io/e2e-node";
/// Pull, unpack and start of a 1 MB image on loopback take well under a second; kubelet's
/// image pull back-off adds 10 s, then 20 s, ... after each failure.
const RUNNING: Duration = Duration::from_secs(60);

/// A release of this test plus the node, its webhook registration and its timing.
struct Fixture {
    release: Release,
    node: Node,
    webhook: String,
    started: Instant,
    name: &'static str,
    /// Injectors started so far (each waits for its webhook in a namespace of its own).
    starts: std::sync::atomic::AtomicU32,
    _exclusive: tokio::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Fixture {
    type Target = Release;
    fn deref(&self) -> &Release {
        &self.release
    }
}

impl Fixture {
    async fn new(name: &'static str) -> Self {
        // Fail first, with the reason, when the node is not there.
        let node = Node::from_env();
        let exclusive = node::exclusive().await;
        let started = Instant::now();
        let release = Release::new(name, LABEL).await;
        Self {
            node,
            webhook: format!("psi-node-{}", release.id),
            release,
            started,
            name,
            starts: std::sync::atomic::AtomicU32::new(0),
            _exclusive: exclusive,
        }
    }

    /// Start the injector, webhook and sync task together, as the chart's ServiceAccount, and
    /// register its webhook by URL; returns once the API server calls it.
    async fn start(&self, refresh_interval: &str, registry: RegistryConfig) -> Injector {
        let mut config = self.config();
        config.sync.refresh_interval =
            humantime::parse_duration(refresh_interval).expect("a duration");
        config.registries = vec![registry];
        self.start_config(config, &[]).await
    }

    /// [`Fixture::start`] with a whole config and extra environment variables.
    async fn start_config(&self, config: fixture::Config, env: &[(&str, &str)]) -> Injector {
        let mut all = vec![
            ("KUBECONFIG", self.kubeconfig.to_str().unwrap()),
            ("POD_NAMESPACE", self.release_ns.as_str()),
            ("POD_NAME", "injector"),
        ];
        all.extend_from_slice(env);
        let injector = Injector::start(self.dir.path(), &self.certs, config, &[], &all);
        cluster::register_webhook(
            &self.client,
            &self.webhook,
            &injector.url(),
            &self.certs.ca_pem,
            &self.selector(),
        )
        .await;
        // Wait until a dry-run Pod in a labelled namespace comes back with the Secret.
        let starts = self
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe_ns = self.namespace(&format!("probe{starts}"), true).await;
        let probe = node::pod(&self.node, "probe", &self.node.image("cr.yandex"));
        workloads::wait_admission(&self.client, &probe_ns, &probe, &[SECRET]).await;
        injector
    }

    /// Create a Pod running the test image from `host`; returns the Pod as stored.
    async fn create_pod(&self, ns: &str, name: &str, host: &str) -> Pod {
        let pod = node::pod(&self.node, name, &self.node.image(host));
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("creating pod {ns}/{name}: {e}"))
    }

    async fn running(&self, ns: &str, name: &str) -> Duration {
        node::wait_running(&self.client, &self.node, ns, name, RUNNING).await
    }

    /// Wait until the managed Secret in `ns` holds `password` for cr.yandex.
    async fn wait_for_password(&self, ns: &str, password: &str, timeout: Duration) -> Secret {
        let api = self.secrets(ns);
        cluster::poll(
            &format!(
                "Secret {ns}/{SECRET} with password {:?}",
                password.chars().take(40).collect::<String>()
            ),
            timeout,
            || async {
                let s = api.get_opt(SECRET).await.ok()??;
                (auth(&s, "cr.yandex")?.1 == password).then_some(s)
            },
        )
        .await
    }

    /// The pull succeeded, with the injected Secret and no failed attempt before it.
    async fn assert_pulled_first_time(&self, ns: &str, name: &str) {
        let stored = Api::<Pod>::namespaced(self.client.clone(), ns)
            .get(name)
            .await
            .unwrap();
        assert_eq!(node::pull_secrets(&stored), [SECRET], "{ns}/{name}");
        let image = stored.spec.as_ref().unwrap().containers[0]
            .image
            .clone()
            .unwrap();
        let events = node::events(&self.client, ns, name).await;
        assert!(
            events
                .iter()
                .any(|e| e.contains(&format!("Successfully pulled image \"{image}\""))),
            "{ns}/{name}: no successful pull of {image} in {events:#?}"
        );
        assert_eq!(
            node::failed_pulls(&self.client, ns, name).await,
            0,
            "{ns}/{name}: {events:#?}"
        );
    }

    /// Delete this test's Pods, labelled namespaces or not (their containers exit on SIGTERM),
    /// and the webhook registration; report the test's duration.
    async fn finish(self) {
        let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let prefix = format!("{}-", self.id);
        for ns in namespaces
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .filter(|n| n.starts_with(&prefix))
        {
            let _ = Api::<Pod>::namespaced(self.client.clone(), ns)
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await;
        }
        cluster::unregister_webhook(&self.client, &self.webhook).await;
        report(&format!(
            "{}: test took {:.1?}",
            self.name,
            self.started.elapsed()
        ));
    }
}

/// Username and password for `host` in the Secret (parsed as kubelet does, from `auth`).
fn auth(s: &Secret, host: &str) -> Option<(String, String)> {
    let data = s.data.as_ref()?.get(".dockerconfigjson")?;
    let config = pullsecret_injector::dockerconfig::parse(&data.0).ok()?;
    let e = config.auths.get(host)?;
    Some((e.username.clone(), e.password.clone()))
}

fn failures(injector: &Injector) -> f64 {
    let (_, m) = injector.admin_get("/metrics").expect("metrics");
    cluster::metric(
        &m,
        "pullsecret_injector_credential_refresh_total{registry=\"yandex\",result=\"failure\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test]
#[ignore = "needs the local control plane and node: run scripts/test.sh"]
async fn pods_from_both_yandex_hosts_pull_with_the_injected_secret_and_run() {
    let fx = Fixture::new("hosts").await;
    let token = format!("t1.{}", fx.id);
    fx.node.accept_only(&[("iam", &token)]).await;
    fx.iam.set_token(&token);
    let _injector = fx.start("1h", fx.iam_registry(&YANDEX_HOSTS)).await;

    let t0 = Instant::now();
    let ns = fx.namespace("a", true).await;
    fx.wait_for_password(&ns, &token, Duration::from_secs(20))
        .await;
    let to_secret = t0.elapsed();
    for (name, host) in [("cr", YANDEX_HOSTS[0]), ("cloud", YANDEX_HOSTS[1])] {
        let created = fx.create_pod(&ns, name, host).await;
        assert!(
            created.spec.as_ref().unwrap().image_pull_secrets.is_some(),
            "the webhook injected the Secret into {name}"
        );
    }
    let mut to_running = Duration::ZERO;
    for name in ["cr", "cloud"] {
        to_running = to_running.max(fx.running(&ns, name).await);
    }
    let total = t0.elapsed();
    for name in ["cr", "cloud"] {
        fx.assert_pulled_first_time(&ns, name).await;
    }
    report(&format!(
        "namespace labelled -> Secret {to_secret:.1?}; Pods created -> both Running {to_running:.1?}; \
         labelled -> Running {total:.1?}"
    ));
    fx.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and node: run scripts/test.sh"]
async fn pod_in_an_unlabelled_namespace_gets_no_secret_and_cannot_pull() {
    let fx = Fixture::new("unlabelled").await;
    let token = format!("t1.{}", fx.id);
    fx.node.accept_only(&[("iam", &token)]).await;
    fx.iam.set_token(&token);
    let _injector = fx.start("1h", fx.iam_registry(&YANDEX_HOSTS)).await;

    let ns = fx.namespace("plain", false).await;
    let created = fx.create_pod(&ns, "app", YANDEX_HOSTS[0]).await;
    assert_eq!(node::pull_secrets(&created), Vec::<String>::new());
    let (reason, after) = node::wait_pull_failure(&fx.client, &fx.node, &ns, "app", RUNNING).await;
    let events = node::events(&fx.client, &ns, "app").await;
    assert!(
        events.iter().any(|e| e.contains("401 Unauthorized")),
        "the registry refused the anonymous pull: {events:#?}"
    );
    assert!(
        fx.secrets(&ns).get_opt(SECRET).await.unwrap().is_none(),
        "no Secret in an unlabelled namespace"
    );
    report(&format!("unlabelled namespace: {reason} after {after:.1?}"));
    fx.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and node: run scripts/test.sh"]
async fn after_a_token_rotation_new_pods_pull_with_the_new_token() {
    let fx = Fixture::new("rotate").await;
    let (old, new) = (format!("t1.{}-old", fx.id), format!("t1.{}-new", fx.id));
    // Tokens living 16 s are refreshed after about 8 s (half their life).
    fx.iam.set_lifetime(Duration::from_secs(16));
    fx.iam.set_token(&old);
    fx.node.accept_only(&[("iam", &old)]).await;
    let _injector = fx.start("1h", fx.iam_registry(&YANDEX_HOSTS)).await;
    let ns = fx.namespace("a", true).await;
    fx.wait_for_password(&ns, &old, Duration::from_secs(20))
        .await;
    fx.create_pod(&ns, "before", YANDEX_HOSTS[0]).await;
    fx.running(&ns, "before").await;

    // The stand-in issues a new token and the registry stops accepting the old one.
    fx.iam.set_token(&new);
    fx.node.accept_only(&[("iam", &new)]).await;
    assert_eq!(fx.node.registry_status("iam", &old), 401);
    let t0 = Instant::now();
    fx.wait_for_password(&ns, &new, Duration::from_secs(30))
        .await;
    let refreshed = t0.elapsed();
    fx.create_pod(&ns, "after", YANDEX_HOSTS[1]).await;
    let running = fx.running(&ns, "after").await;
    let failed = node::failed_pulls(&fx.client, &ns, "after").await;
    report(&format!(
        "rotation: registry switched -> Secret refreshed {refreshed:.1?}; new Pod Running {running:.1?} \
         ({failed} failed pulls first)"
    ));
    fx.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and node: run scripts/test.sh"]
async fn pod_created_the_instant_its_namespace_is_labelled_runs() {
    let fx = Fixture::new("instant").await;
    let token = format!("t1.{}", fx.id);
    fx.node.accept_only(&[("iam", &token)]).await;
    fx.iam.set_token(&token);
    let _injector = fx.start("1h", fx.iam_registry(&YANDEX_HOSTS)).await;

    let t0 = Instant::now();
    let ns = fx.namespace("a", true).await;
    let created = fx.create_pod(&ns, "app", YANDEX_HOSTS[0]).await;
    let secret_at_create = fx.secrets(&ns).get_opt(SECRET).await.unwrap().is_some();
    assert_eq!(node::pull_secrets(&created), [SECRET]);
    fx.running(&ns, "app").await;
    let total = t0.elapsed();
    let failed = node::failed_pulls(&fx.client, &ns, "app").await;
    report(&format!(
        "Pod created with the label: labelled -> Running {total:.1?} (Secret there when the Pod \
         was created: {secret_at_create}; failed pulls first: {failed})"
    ));
    fx.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and node: run scripts/test.sh"]
async fn pod_created_before_its_secret_exists_runs_on_kubelets_retry() {
    let fx = Fixture::new("retry").await;
    let token = format!("t1.{}", fx.id);
    fx.node.accept_only(&[("iam", &token)]).await;
    fx.iam.set_token(&token);
    // No credential yet: the namespace is labelled and the Pod created before any Secret can
    // exist; kubelet pulls without it and fails.
    fx.iam.set_mode(Mode::internal());
    let _injector = fx.start("1h", fx.iam_registry(&YANDEX_HOSTS)).await;

    let t0 = Instant::now();
    let ns = fx.namespace("a", true).await;
    let created = fx.create_pod(&ns, "app", YANDEX_HOSTS[0]).await;
    assert_eq!(node::pull_secrets(&created), [SECRET]);
    let (reason, failed_after) =
        node::wait_pull_failure(&fx.client, &fx.node, &ns, "app", RUNNING).await;
    assert!(
        fx.secrets(&ns).get_opt(SECRET).await.unwrap().is_none(),
        "the Secret cannot exist yet"
    );

    fx.iam.set_mode(Mode::Verify);
    let t1 = Instant::now();
    fx.wait_for_password(&ns, &token, Duration::from_secs(60))
        .await;
    let to_secret = t1.elapsed();
    let t2 = Instant::now();
    // kubelet retries after its back-off (10 s, then 20 s, 40 s, ...).
    node::wait_running(&fx.client, &fx.node, &ns, "app", Duration::from_secs(90)).await;
    let to_running = t2.elapsed();
    report(&format!(
        "Pod before its Secret: first pull {reason} after {failed_after:.1?}; IAM back -> Secret \
         {to_secret:.1?}; Secret -> Running {to_running:.1?} (kubelet's retry); labelled -> Running \
         {:.1?}",
        t0.elapsed()
    ));
    fx.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and node: run scripts/test.sh"]
async fn iam_outage_longer_than_a_refresh_interval_does_not_stop_new_pods() {
    let fx = Fixture::new("outage").await;
    let token = format!("t1.{}", fx.id);
    fx.node.accept_only(&[("iam", &token)]).await;
    fx.iam.set_token(&token);
    // The shortest refresh interval; the token itself lives 12 hours.
    let refresh = Duration::from_secs(10);
    let injector = fx.start("10s", fx.iam_registry(&YANDEX_HOSTS)).await;
    let a = fx.namespace("a", true).await;
    fx.wait_for_password(&a, &token, Duration::from_secs(20))
        .await;

    fx.iam.set_mode(Mode::internal());
    let outage = Instant::now();
    // Failed refreshes (the first is due one refresh interval, +-10 %, after the token was
    // fetched; then retries with back-off) and an outage longer than the refresh interval.
    cluster::poll(
        "two failed refreshes and an outage longer than the refresh interval",
        Duration::from_secs(40),
        || async { (failures(&injector) >= 2.0 && outage.elapsed() > refresh).then_some(()) },
    )
    .await;
    let outage_at_create = outage.elapsed();
    let s = fx.secrets(&a).get(SECRET).await.unwrap();
    assert_eq!(auth(&s, "cr.yandex").unwrap().1, token, "Secret kept");
    // A namespace labelled during the outage still gets the token that is still valid.
    let b = fx.namespace("b", true).await;
    fx.wait_for_password(&b, &token, Duration::from_secs(20))
        .await;
    fx.create_pod(&a, "app", YANDEX_HOSTS[0]).await;
    fx.create_pod(&b, "app", YANDEX_HOSTS[1]).await;
    fx.running(&a, "app").await;
    fx.running(&b, "app").await;
    fx.assert_pulled_first_time(&a, "app").await;
    fx.assert_pulled_first_time(&b, "app").await;
    assert!(fx.iam.calls() >= 3, "the stand-in saw the failed refreshes");
    report(&format!(
        "IAM outage: Pods created {outage_at_create:.1?} into the outage (refresh interval \
         {refresh:?}), Running {:.1?} into it ({} failed refreshes)",
        outage.elapsed(),
        failures(&injector)
    ));
    fx.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and node: run scripts/test.sh"]
async fn static_json_key_pulls_as_user_json_key() {
    let fx = Fixture::new("jsonkey").await;
    // A key file with the ids first: bcrypt (the registry's htpasswd) checks only the first
    // 72 bytes of a password, which then hold this key's id and service account id. That the
    // Secret holds the whole file byte for byte is asserted below.
    let key = TestKey::shared(2048);
    let key_text = format!(
        "{{\"id\":{},\"service_account_id\":{},\"created_at\":\"2025-02-11T09:30:12Z\",\"key_algorithm\":\"RSA_2048\",\"public_key\":{},\"private_key\":{}}}",
        serde_json::json!(key.id),
        serde_json::json!(key.service_account_id),
        serde_json::json!(key.public_spki_pem),
        serde_json::json!(format!(
            "PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID <{}>\n{}",
            key.id, key.private_pkcs8_pem
        )),
    );
    assert!(key_text[..72].contains(&key.service_account_id[..15]));
    let key_file = fx.dir.path().join("json-key.json");
    std::fs::write(&key_file, &key_text).unwrap();
    fx.node.accept_only(&[("json_key", &key_text)]).await;
    assert_eq!(fx.node.registry_status("json_key", "{}"), 401);
    let registry = fixture::registry(
        "yandex",
        &["cr.yandex"],
        SECRET,
        fixture::json_key(&key_file),
    );
    let _injector = fx.start("1h", registry).await;

    let ns = fx.namespace("a", true).await;
    let s = fx
        .wait_for_password(&ns, &key_text, Duration::from_secs(20))
        .await;
    assert_eq!(
        auth(&s, "cr.yandex"),
        Some(("json_key".to_string(), key_text.clone()))
    );
    assert!(
        !s.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("pullsecret-injector.io/expires-at"),
        "a static credential has no expiry"
    );
    fx.create_pod(&ns, "app", "cr.yandex").await;
    let running = fx.running(&ns, "app").await;
    fx.assert_pulled_first_time(&ns, "app").await;
    assert_eq!(fx.iam.calls(), 0, "json_key mode never calls IAM");
    report(&format!("yandexJsonKey: Pod Running {running:.1?}"));
    fx.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and node: run scripts/test.sh"]
async fn pods_pull_with_an_iam_token_from_workload_identity_without_any_key() {
    let fx = Fixture::new("wif").await;
    // The federation trusts this cluster: the stand-in verifies the injector's own token
    // with the API server's discovery document and JWKS, and knows the chart's
    // ServiceAccount as the subject linked to the Yandex service account.
    const AUDIENCE: &str = "https://storage.yandexcloud.net/mk8s-oidc/v1/clusters/node-e2e";
    const SA_ID: &str = "ajenodee2ewif0000000";
    let cp = cluster::ControlPlane::shared();
    allow_anonymous_discovery(&fx.client).await;
    let ca = std::fs::read(&cp.ca).expect("the API server's CA");
    let wif = WifStandIn::start(Federation::of_cluster(&cp.server, &ca, AUDIENCE).await).await;
    let chart_sa = fx.service_account().await;
    wif.link(
        SA_ID,
        &format!("system:serviceaccount:{}:{chart_sa}", fx.release_ns),
    );
    // What the chart's projected volume holds: a 10-minute token for the federation.
    let token_file = fx.dir.path().join("wif-token");
    std::fs::write(
        &token_file,
        fx.token_request(&chart_sa, AUDIENCE, 600).await,
    )
    .unwrap();
    let token = format!("t1.{}-wif", fx.id);
    fx.node.accept_only(&[("iam", &token)]).await;
    wif.set_token(&token);
    let registry = fixture::registry(
        "yandex",
        &YANDEX_HOSTS,
        SECRET,
        fixture::workload_identity(SA_ID, &token_file, &wif.endpoint()),
    );
    let _injector = fx.start("1h", registry).await;

    let t0 = Instant::now();
    let ns = fx.namespace("a", true).await;
    fx.wait_for_password(&ns, &token, Duration::from_secs(20))
        .await;
    for (name, host) in [("cr", YANDEX_HOSTS[0]), ("cloud", YANDEX_HOSTS[1])] {
        fx.create_pod(&ns, name, host).await;
    }
    for name in ["cr", "cloud"] {
        fx.running(&ns, name).await;
    }
    let total = t0.elapsed();
    for name in ["cr", "cloud"] {
        fx.assert_pulled_first_time(&ns, name).await;
    }
    assert_eq!(wif.issued(), 1);
    assert_eq!(fx.iam.calls(), 0, "no authorized key anywhere");
    report(&format!(
        "workload identity: namespace labelled -> both Pods Running {total:.1?}"
    ));
    fx.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and node: run scripts/test.sh"]
async fn skopeo_pulls_with_the_synced_secret_and_is_refused_with_a_wrong_token() {
    let fx = Fixture::new("skopeo").await;
    let token = format!("t1.{}", fx.id);
    fx.node.accept_only(&[("iam", &token)]).await;
    fx.iam.set_token(&token);
    // skopeo looks credentials up by the host it talks to: add the registry's own address to
    // the Yandex hosts, so the Secret carries the same entry for it.
    let hosts = [YANDEX_HOSTS[0], YANDEX_HOSTS[1], fx.node.registry.as_str()];
    let _injector = fx.start("1h", fx.iam_registry(&hosts)).await;
    let ns = fx.namespace("a", true).await;
    let s = fx
        .wait_for_password(&ns, &token, Duration::from_secs(20))
        .await;
    for host in hosts {
        assert_eq!(
            auth(&s, host),
            Some(("iam".to_string(), token.clone())),
            "{host}"
        );
    }
    let authfile = fx.dir.path().join("dockerconfig.json");
    std::fs::write(&authfile, &s.data.as_ref().unwrap()[".dockerconfigjson"].0).unwrap();

    let digest = fx
        .node
        .skopeo_inspect(&authfile)
        .unwrap_or_else(|e| panic!("skopeo inspect with the Secret failed: {e}"));
    assert!(digest.starts_with("sha256:"), "{digest}");

    // The registry moves on to another token: the same Secret is refused.
    fx.node
        .accept_only(&[("iam", &format!("t1.{}-other", fx.id))])
        .await;
    let err = fx
        .node
        .skopeo_inspect(&authfile)
        .expect_err("skopeo inspect with a token the registry no longer accepts");
    assert!(
        err.contains("unauthorized") || err.contains("401"),
        "refused for its credentials: {err}"
    );
    report(&format!("skopeo inspect with the Secret: ok ({digest})"));
    fx.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and node: run scripts/test.sh"]
async fn a_token_the_registry_refuses_is_reported_before_any_pod_fails_to_pull() {
    let fx = Fixture::new("probe").await;
    let (good, wrong) = (format!("t1.{}-good", fx.id), format!("t1.{}-wrong", fx.id));
    fx.node.accept_only(&[("iam", &good)]).await;
    fx.iam.set_token(&good);
    // The Secret also carries the registry's own address, and only that one is probed:
    // cr.yandex and registry.yandexcloud.net are names only containerd maps to it.
    let hosts = [YANDEX_HOSTS[0], YANDEX_HOSTS[1], fx.node.registry.as_str()];
    let mut registry = fx.iam_registry(&hosts);
    registry.probe_hosts = Some(vec![fx.node.registry.clone()]);
    let mut config = fx.config();
    config.sync.refresh_interval = Duration::from_secs(10);
    config.registries = vec![registry];
    let ca = fx.node.ca.to_str().unwrap().to_string();
    let series = workloads::series;
    let injector = fx
        .start_config(config, &[("SSL_CERT_FILE", ca.as_str())])
        .await;
    let host = &fx.node.registry;
    let result = |r: &str| {
        format!(
            "pullsecret_injector_credential_probe_result{{registry=\"yandex\",host=\"{host}\",result=\"{r}\"}}"
        )
    };
    let ns = fx.namespace("a", true).await;
    fx.wait_for_password(&ns, &good, Duration::from_secs(20))
        .await;
    cluster::poll(
        "the probe to accept the token",
        Duration::from_secs(20),
        || async { (series(&injector, &result("accepted")) == 1.0).then_some(()) },
    )
    .await;

    // IAM now issues a token the registry does not accept (wrong service account, role
    // revoked...). The next refresh proves it, reports it and keeps the working one.
    fx.iam.set_token(&wrong);
    let t0 = Instant::now();
    cluster::poll(
        "the probe to report the refused token",
        Duration::from_secs(40),
        || async { (series(&injector, &result("refused")) == 1.0).then_some(()) },
    )
    .await;
    let reported_after = t0.elapsed();
    assert_eq!(series(&injector, &result("accepted")), 0.0);
    let log = injector.log_text();
    let refused_line = log
        .lines()
        .find(|l| l.contains("registry REFUSES the new credential"))
        .unwrap_or_else(|| panic!("no log line for the refusal:\n{log}"));
    for part in [
        "registry=yandex",
        &format!("host={host}"),
        "result=refused",
        "HTTP 401 with Basic auth: UNAUTHORIZED: authentication required",
    ] {
        assert!(refused_line.contains(part), "{part} in {refused_line}");
    }
    assert!(log.contains("new credential withheld"), "{log}");
    assert!(!log.contains(&wrong), "the token itself is never logged");
    let s = fx.secrets(&ns).get(SECRET).await.unwrap();
    assert_eq!(
        auth(&s, "cr.yandex").unwrap().1,
        good,
        "the working token is kept"
    );

    // check --probe says the same, naming the registry, the host and the answer.
    let config_file = injector.config.to_str().unwrap().to_string();
    let (code, out, err) = workloads::binary(
        &["check", "--probe", "--config", &config_file],
        &[("SSL_CERT_FILE", &ca)],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "error: registry yandex host {host}: refused: HTTP 401 with Basic auth: UNAUTHORIZED: authentication required"
        )),
        "{err}"
    );
    assert!(!format!("{out}{err}").contains(&wrong));

    // No Pod has failed to pull: a new one still gets the working token and runs.
    fx.create_pod(&ns, "app", YANDEX_HOSTS[0]).await;
    fx.running(&ns, "app").await;
    fx.assert_pulled_first_time(&ns, "app").await;

    // The registry now refuses the token the Secrets hold too: the new one is no worse, so
    // it is written.
    fx.node
        .accept_only(&[("iam", &format!("t1.{}-someone-else", fx.id))])
        .await;
    fx.wait_for_password(&ns, &wrong, Duration::from_secs(60))
        .await;
    assert!(
        injector
            .log_text()
            .contains("writing the credential the registry refuses"),
        "{}",
        injector.log_text()
    );
    report(&format!(
        "probe: a refused token reported {reported_after:.1?} after IAM started issuing it (refresh \
         interval 10 s), the working one kept, a Pod created meanwhile Running"
    ));
    fx.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and node: run scripts/test.sh"]
async fn pod_created_before_its_namespace_opted_in_is_reported_and_replaced_when_a_controller_owns_it()
 {
    let fx = Fixture::new("report").await;
    let token = format!("t1.{}", fx.id);
    fx.node.accept_only(&[("iam", &token)]).await;
    fx.iam.set_token(&token);
    let mut config = fx.config();
    config.registries = vec![fx.iam_registry(&YANDEX_HOSTS)];
    let mut injector = fx.start_config(config.clone(), &[]).await;
    let gauge = "pullsecret_injector_pods_without_credentials{registry=\"yandex\"}";
    let client = &fx.client;

    // Before the namespace opts in: a ReplicaSet's Pod and a bare Pod, neither injected,
    // failing their pulls.
    let ns = fx.namespace("a", false).await;
    let spec = node::pod(&fx.node, "x", &fx.node.image(YANDEX_HOSTS[0])).spec;
    let rs = workloads::replica_set(client, &ns, "web", spec.unwrap()).await;
    let owned = workloads::create_owned_pod(client, &ns, &rs, "web-1").await;
    let bare = fx.create_pod(&ns, "bare", YANDEX_HOSTS[0]).await;
    assert!(node::pull_secrets(&owned).is_empty() && node::pull_secrets(&bare).is_empty());
    node::wait_pull_failure(client, &fx.node, &ns, "bare", RUNNING).await;
    let (code, out, err) = workloads::report(&injector.config, "table").await;
    assert_eq!(
        (code, out),
        (
            0,
            format!(
                "no Pending Pod in the namespaces matching {} lacks a Secret its images need\n",
                fx.selector()
            )
        ),
        "{err}"
    );

    // The namespace opts in: both are found (gauge, one Event each, report).
    let labelled = Instant::now();
    fx.set_label(&ns, true).await;
    cluster::poll(
        "both Pods in the gauge",
        Duration::from_secs(30),
        || async { (workloads::series(&injector, gauge) == 2.0).then_some(()) },
    )
    .await;
    let to_gauge = labelled.elapsed();
    for (pod, why) in [
        ("web-1", "not deleted: podReport.deleteOwnedPods is off"),
        (
            "bare",
            "not deleted: no controller owns it (a bare Pod is never deleted)",
        ),
    ] {
        let e = workloads::wait_event(client, &ns, pod, "MissingPullSecret").await;
        assert_eq!(e.len(), 1, "{e:#?}");
        for part in [
            "image cr.yandex/crp/app:1 needs Secret yc-registry-secret (registry yandex), which the Pod does not name",
            why,
        ] {
            assert!(e[0].1.contains(part), "{part} in {e:?}");
        }
    }
    let (code, out, err) = workloads::report(&injector.config, "table").await;
    assert_eq!(code, 2, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("NAMESPACE") && lines[0].contains("REASON"),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!("{ns}   bare ")) && lines[1].contains("<none>"),
        "{out}"
    );
    assert!(
        lines[2].contains("web-1") && lines[2].contains("ReplicaSet/web"),
        "{out}"
    );

    // Reported once, not on every pass: kubelet retries the bare Pod's pull after its
    // back-off (10 s and more: many passes), and there is still one Event each.
    let failed = node::failed_pulls(client, &ns, "bare").await;
    cluster::poll(
        "kubelet to retry the bare Pod's pull",
        Duration::from_secs(90),
        || async { (node::failed_pulls(client, &ns, "bare").await > failed).then_some(()) },
    )
    .await;
    for pod in ["web-1", "bare"] {
        let e = workloads::events(client, &ns, pod, "MissingPullSecret").await;
        assert!(e.len() == 1 && e[0].0 == 1, "{pod}: {e:#?}");
    }

    // The option on, as `helm upgrade --set podReport.deleteOwnedPods=true` makes it: pods
    // delete in the pods ClusterRole, the config, a new process.
    workloads::grant_pod_deletion(&fx);
    assert_eq!(injector.terminate().code(), Some(0));
    config.pod_report.delete_owned_pods = true;
    let injector = fx.start_config(config, &[]).await;
    let t0 = Instant::now();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    cluster::poll("web-1 to be deleted", Duration::from_secs(30), || async {
        pods.get_opt("web-1").await.ok()?.is_none().then_some(())
    })
    .await;
    let to_deleted = t0.elapsed();
    let deleted = workloads::wait_event(client, &ns, "web-1", "DeletedForPullSecret").await;
    assert!(
        deleted[0].1.contains(
            "deleted so that ReplicaSet/web creates a Pod the webhook gives its Secret (yc-registry-secret)"
        ),
        "{deleted:#?}"
    );
    // Standing in for the ReplicaSet controller: its new Pod gets the Secret and runs.
    let replacement = workloads::create_owned_pod(client, &ns, &rs, "web-2").await;
    assert_eq!(node::pull_secrets(&replacement), [SECRET]);
    let running = fx.running(&ns, "web-2").await;
    fx.assert_pulled_first_time(&ns, "web-2").await;
    cluster::poll(
        "the gauge to count the bare Pod only",
        Duration::from_secs(30),
        || async { (workloads::series(&injector, gauge) == 1.0).then_some(()) },
    )
    .await;
    assert_eq!(
        workloads::series(
            &injector,
            "pullsecret_injector_pod_deletions_total{result=\"deleted\"}"
        ),
        1.0
    );
    // The bare Pod: reported (once by each leader), never deleted.
    let e = cluster::poll(
        "the new leader's Event on the bare Pod",
        Duration::from_secs(30),
        || async {
            let e = workloads::events(client, &ns, "bare", "MissingPullSecret").await;
            (e.len() == 2).then_some(e)
        },
    )
    .await;
    assert!(e.iter().all(|(count, _)| *count == 1), "{e:#?}");
    assert!(
        pods.get_opt("bare").await.unwrap().is_some(),
        "never deleted"
    );
    assert!(
        workloads::events(client, &ns, "bare", "DeletedForPullSecret")
            .await
            .is_empty()
    );
    report(&format!(
        "Pods before the label: labelled -> both in the gauge {to_gauge:.1?}; option on -> owned \
         Pod deleted {to_deleted:.1?} after start; its replacement Running {running:.1?} after \
         creation; the bare Pod kept"
    ));
    fx.finish().await;
}
