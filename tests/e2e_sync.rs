//! End-to-end: the sync task against the real kube-apiserver, running as the chart's
//! ServiceAccount with exactly the chart's RBAC (TokenRequest token), minting tokens from a
//! local IAM stand-in that verifies the JWT like the real service.
//!
//! Run with `scripts/test.sh`. Each test has its own release (RBAC objects), its own opt-in
//! label value and its own injector processes.

mod cluster;
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::{Certs, Injector};
use common::iam::{IamStandIn, Mode, TestKey};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

const LABEL: &str = "pullsecret-injector.io/e2e-sync";
const SECRET: &str = "yc-registry-secret";

struct Fixture {
    client: Client,
    id: String,
    dir: tempfile::TempDir,
    certs: Certs,
    kubeconfig: PathBuf,
    release_ns: String,
    iam: IamStandIn,
    key_file: PathBuf,
}

impl Fixture {
    async fn new(name: &str) -> Self {
        let client = cluster::admin_client().await;
        let id = cluster::unique(name);
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::generate(&dir.path().join("certs"));
        let release_ns = format!("{id}-sys");
        let kubeconfig =
            cluster::chart_service_account(&client, dir.path(), &format!("r{id}"), &release_ns)
                .await;
        let iam = IamStandIn::start().await;
        let key = TestKey::shared(2048);
        iam.register(key);
        let key_file = key.write_key_file(dir.path(), true);
        Self {
            client,
            id,
            dir,
            certs,
            kubeconfig,
            release_ns,
            iam,
            key_file,
        }
    }

    fn managed_selector(&self) -> String {
        format!(
            "app.kubernetes.io/managed-by=pullsecret-injector,pullsecret-injector.io/instance={}",
            self.id
        )
    }

    fn selector(&self) -> String {
        format!("{LABEL}={}", self.id)
    }

    /// Start a sync-only injector as the chart's ServiceAccount.
    fn start(&self, extra_sync: &str) -> Injector {
        let registries = format!(
            "sync:\n  refreshInterval: 1h\n  maxWritesPerSecond: 50\n  instance: {id}\n  leaderElection: {{ leaseName: lease-{id} }}\n{extra_sync}registries:\n  - name: yandex\n    hosts: [\"cr.yandex\", \"registry.yandexcloud.net\"]\n    secretName: {SECRET}\n    credentials:\n      yandexAuthorizedKey: {{ file: {key}, endpoint: {endpoint:?} }}\n",
            id = self.id,
            key = self.key_file.display(),
            endpoint = self.iam.endpoint(),
        );
        Injector::start(
            self.dir.path(),
            &self.certs,
            &self.selector(),
            &registries,
            &["--no-webhook"],
            &[
                ("KUBECONFIG", self.kubeconfig.to_str().unwrap()),
                ("POD_NAMESPACE", &self.release_ns),
                ("POD_NAME", "injector"),
            ],
        )
    }

    async fn namespace(&self, suffix: &str, labelled: bool) -> String {
        let ns = format!("{}-{suffix}", self.id);
        let labels: &[(&str, &str)] = if labelled { &[(LABEL, &self.id)] } else { &[] };
        cluster::create_namespace(&self.client, &ns, labels).await;
        ns
    }

    async fn set_label(&self, ns: &str, on: bool) {
        let value = if on {
            json!(self.id)
        } else {
            serde_json::Value::Null
        };
        Api::<Namespace>::all(self.client.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {LABEL: value}}})),
            )
            .await
            .unwrap();
    }

    fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Wait until the managed Secret in `ns` holds `token`; returns it.
    async fn wait_for_token(&self, ns: &str, token: &str, timeout: Duration) -> Secret {
        let api = self.secrets(ns);
        cluster::poll(
            &format!("Secret {ns}/{SECRET} with token {token:?}"),
            timeout,
            || async {
                let s = api.get_opt(SECRET).await.ok()??;
                (password(&s, "cr.yandex").as_deref() == Some(token)).then_some(s)
            },
        )
        .await
    }

    async fn wait_gone(&self, ns: &str, name: &str) {
        let api = self.secrets(ns);
        cluster::poll(
            &format!("Secret {ns}/{name} to be deleted"),
            Duration::from_secs(20),
            || async { api.get_opt(name).await.ok()?.is_none().then_some(()) },
        )
        .await;
    }
}

/// The password the Secret holds for `host` (parsed like kubelet, from `auth`).
fn password(s: &Secret, host: &str) -> Option<String> {
    let data = s.data.as_ref()?.get(".dockerconfigjson")?;
    let config = pullsecret_injector::dockerconfig::parse(&data.0).ok()?;
    Some(config.auths.get(host)?.password.clone())
}

fn metrics(i: &Injector) -> String {
    i.admin_get("/metrics").expect("metrics").1
}

fn foreign_secret(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn labelled_namespace_gets_a_pull_secret_with_the_iam_token_for_both_hosts() {
    let fx = Fixture::new("label").await;
    fx.iam.set_token("t1.first-token");
    let injector = fx.start("");
    let ns = fx.namespace("a", false).await;
    let t0 = Instant::now();
    fx.set_label(&ns, true).await;
    let s = fx
        .wait_for_token(&ns, "t1.first-token", Duration::from_secs(20))
        .await;
    let elapsed = t0.elapsed();
    eprintln!("label -> Secret: {elapsed:?}");
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    let labels = s.metadata.labels.clone().unwrap();
    assert_eq!(
        labels["app.kubernetes.io/managed-by"],
        "pullsecret-injector"
    );
    let annotations = s.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["pullsecret-injector.io/registry"], "yandex");
    let expires: jiff::Timestamp = annotations["pullsecret-injector.io/expires-at"]
        .parse()
        .expect("expires-at is RFC 3339");
    let in_hours = expires.duration_since(jiff::Timestamp::now()).as_secs_f64() / 3600.0;
    assert!((11.0..=12.1).contains(&in_hours), "expires in {in_hours} h");
    let config =
        pullsecret_injector::dockerconfig::parse(&s.data.as_ref().unwrap()[".dockerconfigjson"].0)
            .unwrap();
    for host in ["cr.yandex", "registry.yandexcloud.net"] {
        assert_eq!(config.auths[host].username, "iam", "{host}");
        assert_eq!(config.auths[host].password, "t1.first-token", "{host}");
    }
    // The JWT the stand-in verified came from the key file.
    let claims = fx.iam.last_claims().expect("a verified JWT");
    assert_eq!(
        claims["aud"],
        "https://iam.api.cloud.yandex.net/iam/v1/tokens"
    );
    let m = metrics(&injector);
    assert_eq!(
        cluster::metric(&m, "pullsecret_injector_managed_namespaces"),
        Some(1.0),
        "{m}"
    );
    assert!(
        m.contains("pullsecret_injector_credential_expiry_timestamp_seconds{registry=\"yandex\"}")
    );
    // The unlabelled namespace of another test never gets anything, and nothing is written
    // outside the opted-in namespace.
    let all = Api::<Secret>::all(fx.client.clone())
        .list(&ListParams::default().labels(&fx.managed_selector()))
        .await
        .unwrap();
    let ours: Vec<_> = all
        .items
        .iter()
        .filter(|s| {
            s.metadata
                .namespace
                .as_deref()
                .unwrap_or("")
                .starts_with(&fx.id)
        })
        .collect();
    assert_eq!(ours.len(), 1);
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn new_token_reaches_every_namespace_and_failures_keep_the_last_good_one() {
    let fx = Fixture::new("rotate").await;
    // Short-lived tokens: the refresh is due at half their life (3 s here).
    fx.iam.set_lifetime(Duration::from_secs(6));
    fx.iam.set_token("t1.before");
    let a = fx.namespace("a", true).await;
    let b = fx.namespace("b", true).await;
    let injector = fx.start("");
    fx.wait_for_token(&a, "t1.before", Duration::from_secs(20))
        .await;
    fx.wait_for_token(&b, "t1.before", Duration::from_secs(20))
        .await;

    fx.iam.set_token("t1.after");
    fx.wait_for_token(&a, "t1.after", Duration::from_secs(20))
        .await;
    fx.wait_for_token(&b, "t1.after", Duration::from_secs(20))
        .await;

    // The service fails: the Secrets stay as they were, failures are counted.
    fx.iam.set_mode(Mode::internal());
    let failures = |m: &str| {
        cluster::metric(
            m,
            "pullsecret_injector_credential_refresh_total{registry=\"yandex\",result=\"failure\"}",
        )
        .unwrap_or(0.0)
    };
    cluster::poll(
        "a counted refresh failure",
        Duration::from_secs(20),
        || async { (failures(&metrics(&injector)) >= 2.0).then_some(()) },
    )
    .await;
    for ns in [&a, &b] {
        let s = fx.secrets(ns).get(SECRET).await.unwrap();
        assert_eq!(password(&s, "cr.yandex").as_deref(), Some("t1.after"));
    }
    assert!(
        injector.log_text().contains("credential refresh failed"),
        "the failure is logged"
    );

    // Recovery rewrites them.
    fx.iam.set_token("t1.recovered");
    fx.iam.set_mode(Mode::Verify);
    fx.wait_for_token(&a, "t1.recovered", Duration::from_secs(30))
        .await;
    fx.wait_for_token(&b, "t1.recovered", Duration::from_secs(30))
        .await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn removing_the_label_deletes_only_our_secrets() {
    let fx = Fixture::new("unlabel").await;
    let _injector = fx.start("");
    let ns = fx.namespace("a", true).await;
    fx.wait_for_token(&ns, "t1.stand-in-token-1", Duration::from_secs(20))
        .await;
    fx.secrets(&ns)
        .create(&PostParams::default(), &foreign_secret("someone-elses"))
        .await
        .unwrap();
    fx.set_label(&ns, false).await;
    fx.wait_gone(&ns, SECRET).await;
    assert!(
        fx.secrets(&ns)
            .get_opt("someone-elses")
            .await
            .unwrap()
            .is_some(),
        "a Secret that is not ours stays"
    );
    // Labelled again: back.
    fx.set_label(&ns, true).await;
    fx.wait_for_token(&ns, "t1.stand-in-token-1", Duration::from_secs(20))
        .await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn deleted_or_edited_managed_secret_is_repaired_and_a_foreign_one_is_left_alone() {
    let fx = Fixture::new("repair").await;
    let injector = fx.start("");
    let ns = fx.namespace("a", true).await;
    fx.wait_for_token(&ns, "t1.stand-in-token-1", Duration::from_secs(20))
        .await;
    // Deleted by hand: recreated.
    fx.secrets(&ns)
        .delete(SECRET, &DeleteParams::default())
        .await
        .unwrap();
    fx.wait_for_token(&ns, "t1.stand-in-token-1", Duration::from_secs(20))
        .await;
    // Edited by hand: repaired.
    fx.secrets(&ns)
        .patch(
            SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {".dockerconfigjson": "e30="}})),
        )
        .await
        .unwrap();
    fx.wait_for_token(&ns, "t1.stand-in-token-1", Duration::from_secs(20))
        .await;

    // A foreign Secret with our name in a namespace that opts in later: untouched, counted,
    // and reported as an Event.
    let other = fx.namespace("b", false).await;
    fx.secrets(&other)
        .create(&PostParams::default(), &foreign_secret(SECRET))
        .await
        .unwrap();
    fx.set_label(&other, true).await;
    cluster::poll(
        "the foreign Secret to be counted",
        Duration::from_secs(20),
        || async {
            let m = metrics(&injector);
            (cluster::metric(&m, "pullsecret_injector_foreign_secrets_total")? >= 1.0).then_some(())
        },
    )
    .await;
    let s = fx.secrets(&other).get(SECRET).await.unwrap();
    assert!(
        s.metadata.labels.is_none(),
        "still unlabelled: {:?}",
        s.metadata
    );
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(fx.client.clone(), &other);
    let event = cluster::poll(
        "a ForeignSecret Event in the namespace",
        Duration::from_secs(20),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("ForeignSecret"))
        },
    )
    .await;
    assert!(event.note.unwrap_or_default().contains(SECRET));
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn two_hundred_namespaces_converge_with_one_iam_call() {
    let fx = Fixture::new("scale").await;
    let injector = fx.start("");
    let calls_before = fx.iam.calls();
    let names: Vec<String> = (0..200).map(|i| format!("{}-n{i}", fx.id)).collect();
    let t0 = Instant::now();
    let client = fx.client.clone();
    futures::future::join_all(names.iter().map(|ns| {
        let client = client.clone();
        let id = fx.id.clone();
        async move {
            let n = Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    labels: Some(BTreeMap::from([(LABEL.to_string(), id)])),
                    ..Default::default()
                },
                ..Default::default()
            };
            Api::<Namespace>::all(client)
                .create(&PostParams::default(), &n)
                .await
                .unwrap();
        }
    }))
    .await;
    let all = Api::<Secret>::all(fx.client.clone());
    cluster::poll("200 managed Secrets", Duration::from_secs(60), || async {
        let list = all
            .list(&ListParams::default().labels(&fx.managed_selector()))
            .await
            .ok()?;
        let n = list
            .items
            .iter()
            .filter(|s| {
                s.metadata
                    .namespace
                    .as_deref()
                    .unwrap_or("")
                    .starts_with(&fx.id)
            })
            .count();
        (n == 200).then_some(())
    })
    .await;
    let elapsed = t0.elapsed();
    let m = metrics(&injector);
    let created = cluster::metric(
        &m,
        "pullsecret_injector_secret_writes_total{result=\"created\"}",
    );
    let calls = fx.iam.calls() - calls_before;
    eprintln!(
        "200 namespaces: converged in {elapsed:?}, writes created={created:?}, IAM calls={calls}"
    );
    assert_eq!(calls, 1, "one IAM call for all namespaces");
    assert_eq!(created, Some(200.0), "one write per namespace:\n{m}");
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn two_replicas_elect_one_writer_and_the_survivor_takes_over() {
    let fx = Fixture::new("leader").await;
    let mut first = fx.start("");
    let ns = fx.namespace("a", true).await;
    fx.wait_for_token(&ns, "t1.stand-in-token-1", Duration::from_secs(20))
        .await;
    let second = fx.start("");
    // Only one of them refreshes credentials and writes.
    let refreshes = |i: &Injector| {
        cluster::metric(
            &metrics(i),
            "pullsecret_injector_credential_refresh_total{registry=\"yandex\",result=\"success\"}",
        )
        .unwrap_or(0.0)
    };
    assert_eq!(refreshes(&first), 1.0);
    assert_eq!(refreshes(&second), 0.0, "the second replica does not lead");

    // The leader stops (releasing the lease); the other takes over and converges.
    fx.iam.set_token("t1.after-takeover");
    let t0 = Instant::now();
    let status = first.terminate();
    assert!(status.success(), "leader exits 0 on SIGTERM: {status}");
    fx.wait_for_token(&ns, "t1.after-takeover", Duration::from_secs(30))
        .await;
    eprintln!("takeover after SIGTERM: {:?}", t0.elapsed());
    assert_eq!(refreshes(&second), 1.0);
    let _ = Path::new(".");
}
