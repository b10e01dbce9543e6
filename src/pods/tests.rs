use super::*;
use crate::registry::{HostPattern, RegistryEntry};
use serde_json::json;

fn registries() -> Registries {
    let entry = |name: &str, secret: &str, hosts: &[&str]| {
        RegistryEntry::new(
            name,
            secret,
            hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
        )
    };
    Registries::new(vec![
        entry("yandex", "yc", &["cr.yandex", "registry.yandexcloud.net"]),
        entry("corp", "corp-pull", &["*.corp.example.com"]),
    ])
}

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

fn with_images(images: &[&str], pull_secrets: &[&str]) -> Pod {
    pod(json!({
        "metadata": {"name": "app", "namespace": "demo", "uid": "u1",
                     "creationTimestamp": "2025-06-01T10:00:00Z"},
        "spec": {
            "containers": images.iter().enumerate()
                .map(|(i, im)| json!({"name": format!("c{i}"), "image": im}))
                .collect::<Vec<_>>(),
            "imagePullSecrets": pull_secrets.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
        },
        "status": {"phase": "Pending"}
    }))
}

const OPT_OUT: &str = "pullsecret-injector.io/skip";

#[test]
fn a_pod_without_the_secret_its_image_needs_is_found_with_the_image_and_registry() {
    let f = examine(
        &with_images(&["cr.yandex/crp/app:1"], &[]),
        &registries(),
        OPT_OUT,
    )
    .expect("found");
    assert_eq!(
        f.missing,
        [Missing {
            registry: "yandex".into(),
            secret: "yc".into(),
            images: vec!["cr.yandex/crp/app:1".into()],
        }]
    );
    assert_eq!(
        f.reason,
        "image cr.yandex/crp/app:1 needs Secret yc (registry yandex), which the Pod does not name"
    );
    assert_eq!(
        (f.namespace.as_str(), f.name.as_str(), f.uid.as_str()),
        ("demo", "app", "u1")
    );
    assert_eq!(f.phase, "Pending");
    assert_eq!(f.created.as_deref(), Some("2025-06-01T10:00:00Z"));
    assert_eq!(f.owner, None);
}

#[test]
fn pods_the_webhook_would_leave_alone_are_not_found() {
    let r = registries();
    for p in [
        // Has the Secret already (next to another one).
        with_images(&["cr.yandex/crp/app:1"], &["other", "yc"]),
        // No configured registry.
        with_images(&["docker.io/library/busybox", "ghcr.io/x/y:1"], &[]),
        // Not a reference at all.
        with_images(&["::not an image::"], &[]),
        // No containers.
        pod(json!({"metadata": {"name": "x"}, "spec": {"containers": []}})),
        pod(json!({"metadata": {"name": "x"}})),
    ] {
        assert_eq!(examine(&p, &r, OPT_OUT), None, "{p:?}");
    }
    let mut opted_out = with_images(&["cr.yandex/crp/app:1"], &[]);
    opted_out.metadata.annotations = Some([(OPT_OUT.to_string(), "true".to_string())].into());
    assert_eq!(examine(&opted_out, &r, OPT_OUT), None);
}

#[test]
fn every_missing_secret_is_listed_in_the_webhooks_order_with_all_its_images() {
    let p = pod(json!({
        "metadata": {"name": "app", "namespace": "demo"},
        "spec": {
            "initContainers": [{"name": "i", "image": "a.corp.example.com/init:1"}],
            "containers": [
                {"name": "a", "image": "registry.yandexcloud.net/x/a:1"},
                {"name": "b", "image": "cr.yandex/x/b:1"},
                {"name": "c", "image": "cr.yandex/x/b:1"},
            ],
            "ephemeralContainers": [{"name": "e", "image": "cr.yandex/x/debug:1"}],
            "volumes": [{"name": "v", "image": {"reference": "b.corp.example.com/data:1"}}],
            "imagePullSecrets": [{"name": "unrelated"}],
        }
    }));
    let f = examine(&p, &registries(), OPT_OUT).expect("found");
    assert_eq!(
        f.missing,
        [
            Missing {
                registry: "yandex".into(),
                secret: "yc".into(),
                images: vec![
                    "registry.yandexcloud.net/x/a:1".into(),
                    "cr.yandex/x/b:1".into(),
                    "cr.yandex/x/debug:1".into()
                ],
            },
            Missing {
                registry: "corp".into(),
                secret: "corp-pull".into(),
                images: vec![
                    "a.corp.example.com/init:1".into(),
                    "b.corp.example.com/data:1".into()
                ],
            },
        ]
    );
    assert_eq!(
        f.reason,
        "images registry.yandexcloud.net/x/a:1 and 2 more need Secret yc (registry yandex); \
         images a.corp.example.com/init:1 and 1 more need Secret corp-pull (registry corp), \
         which the Pod does not name"
    );
    // The same set the webhook would add, in its order.
    let view = view(&p);
    let Decision::Inject { secrets, .. } = plan(&view, &registries(), OPT_OUT).decision else {
        panic!("the webhook injects");
    };
    assert_eq!(f.secrets().collect::<Vec<_>>(), secrets);

    // In a namespace that a scoped registry does not select, only the others' Secrets count.
    let unscoped = f
        .clone()
        .within(|r| r == "yandex")
        .expect("yc still missing");
    assert_eq!(unscoped.secrets().collect::<Vec<_>>(), ["yc"]);
    assert_eq!(
        unscoped.reason,
        "images registry.yandexcloud.net/x/a:1 and 2 more need Secret yc (registry yandex), \
         which the Pod does not name"
    );
    assert_eq!(f.clone().within(|_| true), Some(f.clone()));
    assert_eq!(f.within(|_| false), None);
}

fn owned_by(api_version: &str, kind: &str, controller: Option<bool>) -> Finding {
    let mut p = with_images(&["cr.yandex/crp/app:1"], &[]);
    p.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "name": "not-a-controller", "uid": "c0"
        }))
        .unwrap(),
        serde_json::from_value(json!({
            "apiVersion": api_version, "kind": kind, "name": "web-1", "uid": "o1",
            "controller": controller
        }))
        .unwrap(),
    ]);
    examine(&p, &registries(), OPT_OUT).unwrap()
}

#[test]
fn only_controllers_that_recreate_pods_may_have_theirs_deleted() {
    let exists = |_: &str| true;
    for (api_version, kind) in [
        ("apps/v1", "ReplicaSet"),
        ("apps/v1", "StatefulSet"),
        ("apps/v1", "DaemonSet"),
        ("batch/v1", "Job"),
        ("v1", "ReplicationController"),
    ] {
        let f = owned_by(api_version, kind, Some(true));
        let owner = deletion(&f, exists, false).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), (kind, "o1"));
    }
    for (api_version, kind, controller, why) in [
        (
            "apps/v1",
            "ReplicaSet",
            None,
            "no controller owns it (a bare Pod is never deleted)",
        ),
        (
            "apps/v1",
            "ReplicaSet",
            Some(false),
            "no controller owns it (a bare Pod is never deleted)",
        ),
        (
            "example.com/v1",
            "ReplicaSet",
            Some(true),
            "its controller ReplicaSet/web-1 is not one known to recreate its Pods",
        ),
        (
            "apps/v1",
            "Deployment",
            Some(true),
            "its controller Deployment/web-1 is not one known to recreate its Pods",
        ),
        (
            "v1",
            "Node",
            Some(true),
            "its controller Node/web-1 is not one known to recreate its Pods",
        ),
    ] {
        let f = owned_by(api_version, kind, controller);
        assert_eq!(deletion(&f, exists, false).unwrap_err(), why);
    }
    let bare = examine(
        &with_images(&["cr.yandex/crp/app:1"], &[]),
        &registries(),
        OPT_OUT,
    )
    .unwrap();
    assert!(deletion(&bare, exists, false).is_err());
}

#[test]
fn no_deletion_while_the_secret_is_missing_or_replacements_lack_it_too() {
    let f = owned_by("apps/v1", "ReplicaSet", Some(true));
    assert_eq!(
        deletion(&f, |_| false, false).unwrap_err(),
        "Secret yc is not in the namespace yet, so a new Pod would fail the same way"
    );
    assert!(
        deletion(&f, |_| true, true)
            .unwrap_err()
            .contains("the webhook did not inject it")
    );
}

#[test]
fn the_report_prints_a_table_and_json() {
    let f = owned_by("apps/v1", "ReplicaSet", Some(true));
    let mut bare = examine(
        &with_images(&["cr.yandex/crp/app:1"], &[]),
        &registries(),
        OPT_OUT,
    )
    .unwrap();
    bare.name = "a-much-longer-pod-name".into();
    let text = report::table(&[f.clone(), bare]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let reason_at = lines[0].find("REASON").unwrap();
    assert!(lines[0].starts_with("NAMESPACE   POD"), "{text}");
    assert!(lines[1].starts_with("demo        app "), "{text}");
    assert!(lines[1].contains("ReplicaSet/web-1"), "{text}");
    assert!(lines[2].contains("<none>"), "{text}");
    for l in &lines[1..] {
        assert_eq!(&l[reason_at..], f.reason, "{text}");
    }
    let v: serde_json::Value = serde_json::from_str(&report::json(&[f])).unwrap();
    assert_eq!(
        v,
        json!({"pods": [{
            "namespace": "demo", "name": "app", "uid": "u1", "phase": "Pending",
            "created": "2025-06-01T10:00:00Z",
            "owner": {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "o1"},
            "missing": [{"registry": "yandex", "secret": "yc", "images": ["cr.yandex/crp/app:1"]}],
            "reason": "image cr.yandex/crp/app:1 needs Secret yc (registry yandex), which the Pod does not name",
        }]})
    );
    assert_eq!(
        report::json(&[]).replace(char::is_whitespace, ""),
        r#"{"pods":[]}"#
    );
}
