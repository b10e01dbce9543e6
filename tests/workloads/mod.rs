//! Workloads for the tests of Pods left without credentials: a ReplicaSet and the Pods its
//! controller would create (no controller-manager runs next to the test API server, so the
//! tests stand in for it), the Events the injector publishes about a Pod, the extra RBAC of
//! `podReport.deleteOwnedPods`, and the binary run as a user.
//!
//! A test file that uses it says `mod cluster; mod fixture; mod workloads;` (with `common`).

#![allow(dead_code)]

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Event, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

use crate::cluster;
use crate::fixture::Release;

/// Create ReplicaSet `name` in `ns` with one replica of a Pod running `spec`, labelled
/// `app=name`. Nothing creates its Pods: see [`create_owned_pod`].
pub async fn replica_set(client: &Client, ns: &str, name: &str, spec: PodSpec) -> ReplicaSet {
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(spec),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &rs)
        .await
        .unwrap_or_else(|e| panic!("creating ReplicaSet {ns}/{name}: {e}"))
}

/// Create Pod `name` as the ReplicaSet controller would: the template, its labels and an
/// owner reference with `controller: true`. Returns the Pod as stored (after admission).
pub async fn create_owned_pod(client: &Client, ns: &str, rs: &ReplicaSet, name: &str) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .expect("the ReplicaSet has a template");
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: rs.metadata.name.clone().unwrap_or_default(),
                uid: rs.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {ns}/{name}: {e}"))
}

/// The Events with `reason` about Pod `ns/name`: `(count, message)`, oldest first.
pub async fn events(client: &Client, ns: &str, name: &str, reason: &str) -> Vec<(i32, String)> {
    let fields = format!("involvedObject.kind=Pod,involvedObject.name={name},reason={reason}");
    let mut list: Vec<Event> = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&fields))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.sort_by_key(|e| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    list.into_iter()
        .map(|e| {
            // events.k8s.io Events count in `series`; the core view shows it as `count`.
            let count = e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1);
            (count, e.message.unwrap_or_default())
        })
        .collect()
}

/// Wait until Pod `ns/name` has an Event with `reason`; returns them all.
pub async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str) -> Vec<(i32, String)> {
    cluster::poll(
        &format!("a {reason} Event on Pod {ns}/{name}"),
        std::time::Duration::from_secs(30),
        || async {
            let e = events(client, ns, name, reason).await;
            (!e.is_empty()).then_some(e)
        },
    )
    .await
}

/// Add `pods` delete to `release`'s pods ClusterRole, exactly as the chart renders it with
/// `podReport.deleteOwnedPods=true` (what `helm upgrade --set ...` would apply).
pub fn grant_pod_deletion(release: &Release) {
    let rendered = std::process::Command::new(cluster::helm())
        .args(["template", &release.id])
        .arg(cluster::repo().join("charts/pullsecret-injector"))
        .args(["--namespace", &release.release_ns])
        .args(["--show-only", "templates/rbac-pods.yaml"])
        .args(["--set", "credentials.existingSecret=unused"])
        .args(["--set", "podReport.deleteOwnedPods=true"])
        .output()
        .expect("running helm template");
    assert!(
        rendered.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(String::from_utf8_lossy(&rendered.stdout).contains("\"delete\""));
    cluster::kubectl_apply(&rendered.stdout);
}

/// `pullsecret-injector ARGS` with `env` added: (exit code, stdout, stderr).
pub async fn binary(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pullsecret-injector"))
            .args(&args)
            .envs(env)
            .env_remove("PULLSECRET_INJECTOR_CONFIG")
            .output()
            .expect("running pullsecret-injector");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("the child process task")
}

/// `report --config CONFIG -o FORMAT` as the control plane's admin.
pub async fn report(config: &std::path::Path, format: &str) -> (i32, String, String) {
    let admin = cluster::kubeconfig_path();
    binary(
        &[
            "report",
            "--config",
            config.to_str().expect("a UTF-8 path"),
            "-o",
            format,
        ],
        &[("KUBECONFIG", admin.to_str().expect("a UTF-8 path"))],
    )
    .await
}

/// Wait until the API server's admission chain gives `pod`, created with `dryRun` in `ns`,
/// exactly the pull Secrets `want` (`[]`: the webhook is no longer called). Registrations
/// reach the admission chain asynchronously.
pub async fn wait_admission(client: &Client, ns: &str, pod: &Pod, want: &[&str]) {
    cluster::until_admitted(
        client,
        ns,
        pod,
        &format!("the API server to admit a Pod with pull Secrets {want:?}"),
        |s| s == want,
    )
    .await
}

/// A series from the injector's metrics (0 when absent).
pub fn series(injector: &cluster::Injector, name: &str) -> f64 {
    let (_, m) = injector.admin_get("/metrics").expect("metrics");
    cluster::metric(&m, name).unwrap_or(0.0)
}
