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
