//! End-to-end: Pods left without credentials against the real kube-apiserver (no node:
//! every Pod stays Pending, which is what the injector watches), with the chart's RBAC
//! (`pods` list/watch, plus delete as `podReport.deleteOwnedPods=true` renders it), the
//! webhook registered by URL and the test standing in for the ReplicaSet controller.
//! `tests/e2e_node.rs` has the same story on a real node, where the replacement runs.
//!
//! Run with `scripts/test.sh`.

mod cluster;
mod common;
mod fixture;
mod workloads;

use std::time::Duration;

use fixture::{Release, SECRET};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use workloads::{events, series, wait_event};

const LABEL: &str = "pullsecret-injector.io/e2e-pods";
const GAUGE: &str = "pullsecret_injector_pods_without_credentials{registry=\"yandex\"}";
const DELETED: &str = "pullsecret_injector_pod_deletions_total{result=\"deleted\"}";

/// A Pod spec running `image` (never scheduled: there is no scheduler).
fn spec(image: &str) -> PodSpec {
    PodSpec {
        automount_service_account_token: Some(false),
        termination_grace_period_seconds: Some(0),
        containers: vec![Container {
            name: "app".into(),
            image: Some(image.into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn pod(name: &str, image: &str, annotations: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(spec(image)),
        ..Default::default()
    }
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn owned_pods_are_replaced_bare_and_opted_out_ones_never_and_deletion_stops_when_the_webhook_misses_replacements()
 {
    let fx = Release::new("pods", LABEL).await;
    fx.iam.set_token("t1.pods-token");
    workloads::grant_pod_deletion(&fx);
    let mut config = fx.config();
    config.pod_report.delete_owned_pods = true;
    let injector = fx.start(config, &[]);
    let webhook = format!("psi-pods-{}", fx.id);
    cluster::register_webhook(
        &fx.client,
        &webhook,
        &injector.url(),
        &fx.certs.ca_pem,
        &fx.selector(),
    )
    .await;
    let probe_ns = fx.namespace("probe", true).await;
    let probe = pod("probe", "cr.yandex/crp/app:1", &[]);
    workloads::wait_admission(&fx.client, &probe_ns, &probe, &[SECRET]).await;
    let client = &fx.client;

    // Created before the namespace opts in: a ReplicaSet's Pod, a bare Pod, an opted-out Pod
    // and one whose image needs no Secret.
    let ns = fx.namespace("a", false).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let rs = workloads::replica_set(client, &ns, "web", spec("cr.yandex/crp/app:1")).await;
    workloads::create_owned_pod(client, &ns, &rs, "web-1").await;
    for p in [
        pod("bare", "registry.yandexcloud.net/crp/app:1", &[]),
        pod(
            "skip",
            "cr.yandex/crp/app:1",
            &[("pullsecret-injector.io/skip", "true")],
        ),
        pod("other", "docker.io/library/busybox:1", &[]),
    ] {
        pods.create(&PostParams::default(), &p).await.unwrap();
    }

    fx.set_label(&ns, true).await;
    fx.wait_for_token(&ns, "t1.pods-token", Duration::from_secs(20))
        .await;
    cluster::poll("web-1 to be deleted", Duration::from_secs(30), || async {
        pods.get_opt("web-1").await.ok()?.is_none().then_some(())
    })
    .await;
    let deleted = wait_event(client, &ns, "web-1", "DeletedForPullSecret").await;
    assert!(
        deleted[0].1.starts_with("deleted so that ReplicaSet/web creates a Pod the webhook gives its Secret (yc-registry-secret)"),
        "{deleted:?}"
    );
    let bare = wait_event(client, &ns, "bare", "MissingPullSecret").await;
    assert_eq!(bare.len(), 1, "{bare:?}");
    assert!(
        bare[0].1.starts_with(
            "image registry.yandexcloud.net/crp/app:1 needs Secret yc-registry-secret (registry yandex), which the Pod does not name"
        ) && bare[0]
            .1
            .contains("not deleted: no controller owns it (a bare Pod is never deleted)"),
        "{bare:?}"
    );
    cluster::poll(
        "the gauge to count the bare Pod",
        Duration::from_secs(20),
        || async { (series(&injector, GAUGE) == 1.0).then_some(()) },
    )
    .await;
    // The ReplicaSet's replacement, while the webhook is called: it gets its Secret.
    let web2 = workloads::create_owned_pod(client, &ns, &rs, "web-2").await;
    assert_eq!(
        web2.spec.unwrap().image_pull_secrets.unwrap()[0].name,
        SECRET
    );

    // The webhook stops being called (as when it is unreachable and fails open). The next
    // replacement lacks the Secret too: it is reported, and no longer deleted.
    cluster::unregister_webhook(client, &webhook).await;
    workloads::wait_admission(client, &probe_ns, &probe, &[]).await;
    workloads::create_owned_pod(client, &ns, &rs, "web-3").await;
    let e = wait_event(client, &ns, "web-3", "MissingPullSecret").await;
    assert!(
        e[0].1.contains("not deleted: a Pod ReplicaSet/web created after one we deleted lacks the Secret too: the webhook did not inject it (is it reachable?)"),
        "{e:?}"
    );
    cluster::poll(
        "the gauge to count web-3",
        Duration::from_secs(20),
        || async { (series(&injector, GAUGE) == 2.0).then_some(()) },
    )
    .await;
    assert!(pods.get_opt("web-3").await.unwrap().is_some());
    assert!(pods.get_opt("bare").await.unwrap().is_some());
    assert_eq!(series(&injector, DELETED), 1.0);
    for quiet in ["skip", "other", "web-2"] {
        assert!(
            events(client, &ns, quiet, "MissingPullSecret")
                .await
                .is_empty(),
            "{quiet} is not reported"
        );
    }

    // `report` lists the same two, as JSON.
    let (code, out, err) = workloads::report(&injector.config, "json").await;
    assert_eq!(code, 2, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bare", "web-3"], "{out}");
    assert_eq!(v["pods"][1]["owner"]["kind"], "ReplicaSet");
    assert_eq!(v["pods"][1]["missing"][0]["registry"], "yandex");
    assert_eq!(v["pods"][0]["owner"], serde_json::Value::Null);
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn without_the_option_nothing_is_deleted_and_the_chart_grants_no_pod_deletion() {
    let fx = Release::new("podsoff", LABEL).await;
    fx.iam.set_token("t1.pods-off");
    let injector = fx.start(fx.config(), &["--no-webhook"]);
    let ns = fx.namespace("a", false).await;
    let rs = workloads::replica_set(&fx.client, &ns, "web", spec("cr.yandex/crp/app:1")).await;
    workloads::create_owned_pod(&fx.client, &ns, &rs, "web-1").await;
    fx.set_label(&ns, true).await;
    let e = wait_event(&fx.client, &ns, "web-1", "MissingPullSecret").await;
    assert!(
        e[0].1
            .contains("not deleted: podReport.deleteOwnedPods is off; imagePullSecrets cannot change on an existing Pod: recreate it"),
        "{e:?}"
    );
    assert_eq!(series(&injector, GAUGE), 1.0);
    // The default RBAC: the injector's ServiceAccount may watch Pods but not delete them.
    let sa = cluster::client_for(&fx.kubeconfig).await;
    let err = Api::<Pod>::namespaced(sa, &ns)
        .delete("web-1", &Default::default())
        .await
        .expect_err("the chart's default RBAC has no pods delete");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );
}
