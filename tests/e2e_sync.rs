//! End-to-end: the sync task against the real kube-apiserver, running as the chart's
//! ServiceAccount with exactly the chart's RBAC (TokenRequest token), minting tokens from a
//! local IAM stand-in that verifies the JWT like the real service.
//!
//! Run with `scripts/test.sh`. Each test has its own release (RBAC objects), its own opt-in
//! label value and its own injector processes.

mod cluster;
mod common;
mod fixture;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cluster::Injector;
use common::iam::Mode;
use fixture::{Release, SECRET, password};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

const LABEL: &str = "pullsecret-injector.io/e2e-sync";

/// A sync-only injector of release `fx`.
fn start(fx: &Release) -> Injector {
    fx.start(fx.config(), &["--no-webhook"])
}

/// The label selector of the Secrets release `fx` manages.
fn managed_selector(fx: &Release) -> String {
    format!(
        "app.kubernetes.io/managed-by=pullsecret-injector,pullsecret-injector.io/instance={}",
        fx.id
    )
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
    let fx = Release::new("label", LABEL).await;
    fx.iam.set_token("t1.first-token");
    let injector = start(&fx);
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
    // The JWT the stand-in verified came from the key file, addressed to the configured
    // endpoint (the documented https://iam.api.cloud.yandex.net/iam/v1/tokens by default).
    let claims = fx.iam.last_claims().expect("a verified JWT");
    assert_eq!(claims["aud"], fx.iam.endpoint().as_str());
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
        .list(&ListParams::default().labels(&managed_selector(&fx)))
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
    let fx = Release::new("rotate", LABEL).await;
    // Short-lived tokens: the refresh is due at half their life (3 s here).
    fx.iam.set_lifetime(Duration::from_secs(6));
    fx.iam.set_token("t1.before");
    let a = fx.namespace("a", true).await;
    let b = fx.namespace("b", true).await;
    let injector = start(&fx);
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
    let fx = Release::new("unlabel", LABEL).await;
    let _injector = start(&fx);
    let ns = fx.namespace("a", true).await;
    fx.wait_for_token(&ns, "t1.stand-in-token-1", Duration::from_secs(20))
        .await;
    fx.secrets(&ns)
        .create(&PostParams::default(), &foreign_secret("someone-elses"))
        .await
        .unwrap();
    fx.set_label(&ns, false).await;
    fx.wait_gone(&ns, SECRET, Duration::from_secs(20)).await;
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
    let fx = Release::new("repair", LABEL).await;
    let injector = start(&fx);
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
    let fx = Release::new("scale", LABEL).await;
    let injector = start(&fx);
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
            .list(&ListParams::default().labels(&managed_selector(&fx)))
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
    let fx = Release::new("leader", LABEL).await;
    let mut first = start(&fx);
    let ns = fx.namespace("a", true).await;
    fx.wait_for_token(&ns, "t1.stand-in-token-1", Duration::from_secs(20))
        .await;
    let second = start(&fx);
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

/// Wait until Secret `name` exists in `ns`.
async fn wait_present(fx: &Release, ns: &str, name: &str) -> Secret {
    let api = fx.secrets(ns);
    cluster::poll(
        &format!("Secret {ns}/{name}"),
        Duration::from_secs(20),
        || async { api.get_opt(name).await.ok()? },
    )
    .await
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn secrets_of_a_renamed_or_removed_registry_are_deleted_everywhere_and_only_ours() {
    let fx = Release::new("orphans", LABEL).await;
    let password_file = fx.dir.path().join("corp-password");
    std::fs::write(&password_file, "robot-password\n").unwrap();
    let mut before = fx.config();
    before.registries[0].secret_name = "psi-yc-old".into();
    before.registries.push(fixture::registry(
        "corp",
        &["registry.corp.example.com"],
        "psi-corp",
        fixture::basic("robot", &password_file),
    ));
    fx.authorise(&before);
    let a = fx.namespace("a", true).await;
    let b = fx.namespace("b", true).await;
    let mut injector = fx.start(before, &["--no-webhook"]);
    for ns in [&a, &b] {
        for name in ["psi-yc-old", "psi-corp"] {
            wait_present(&fx, ns, name).await;
        }
    }
    // The same names, not ours: someone's own Secret and another installation's.
    let c = fx.namespace("c", false).await;
    let pp = PostParams::default();
    let theirs = fx
        .secrets(&c)
        .create(&pp, &foreign_secret("psi-yc-old"))
        .await
        .unwrap();
    let mut other_installation = foreign_secret("psi-corp");
    other_installation.metadata.labels = Some(cluster::labels(&[
        ("app.kubernetes.io/managed-by", "pullsecret-injector"),
        ("pullsecret-injector.io/instance", "another-installation"),
    ]));
    let other_installation = fx
        .secrets(&c)
        .create(&pp, &other_installation)
        .await
        .unwrap();
    injector.terminate();

    // While it is down, b opts out. Then the Yandex Secret is renamed and the corp registry
    // removed: both old names are retired (what `helm upgrade` renders).
    fx.set_label(&b, false).await;
    let mut after = fx.config();
    after.registries[0].secret_name = "psi-yc-new".into();
    after.sync.retired_secret_names = vec!["psi-yc-old".into(), "psi-corp".into()];
    fx.authorise(&after);
    let injector = fx.start(after, &["--no-webhook"]);
    wait_present(&fx, &a, "psi-yc-new").await;
    for ns in [&a, &b] {
        for name in ["psi-yc-old", "psi-corp"] {
            fx.wait_gone(ns, name, Duration::from_secs(20)).await;
        }
    }
    cluster::poll("4 deletions counted", Duration::from_secs(10), || async {
        let m = metrics(&injector);
        let deleted = cluster::metric(
            &m,
            "pullsecret_injector_secret_writes_total{result=\"deleted\"}",
        )?;
        (deleted == 4.0).then_some(())
    })
    .await;
    assert!(
        fx.secrets(&b)
            .get_opt("psi-yc-new")
            .await
            .unwrap()
            .is_none(),
        "b no longer opts in"
    );
    // Without both of our labels, a Secret is never touched, whatever its name.
    for before in [&theirs, &other_installation] {
        let now = fx
            .secrets(&c)
            .get(before.metadata.name.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(
            now.metadata.resource_version, before.metadata.resource_version,
            "{:?} was changed",
            now.metadata.name
        );
    }
    assert!(
        injector
            .log_text()
            .contains("no configured registry uses this Secret name any more"),
        "the deletions say why"
    );
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn a_data_key_someone_else_added_to_a_managed_secret_is_removed() {
    let fx = Release::new("extrakey", LABEL).await;
    let injector = start(&fx);
    let ns = fx.namespace("a", true).await;
    fx.wait_for_token(&ns, "t1.stand-in-token-1", Duration::from_secs(20))
        .await;
    // Server-side apply alone would never remove it: "someone-else" owns the field.
    fx.secrets(&ns)
        .patch(
            SECRET,
            &PatchParams {
                field_manager: Some("someone-else".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"data": {"extra": "eA=="}})),
        )
        .await
        .unwrap();
    let api = fx.secrets(&ns);
    let s = cluster::poll(
        "the extra data key to be removed",
        Duration::from_secs(20),
        || async {
            let s = api.get(SECRET).await.ok()?;
            let keys: Vec<String> = s.data.as_ref()?.keys().cloned().collect();
            (keys == [".dockerconfigjson"]).then_some(s)
        },
    )
    .await;
    assert_eq!(
        password(&s, "cr.yandex").as_deref(),
        Some("t1.stand-in-token-1")
    );
    let managers: Vec<String> = s
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    assert!(
        !managers.iter().any(|m| m == "someone-else"),
        "someone-else still owns a field: {managers:?}"
    );
    assert!(
        injector
            .log_text()
            .contains("removed data keys that someone else added"),
        "the removal is logged"
    );
}
