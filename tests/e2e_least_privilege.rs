//! End-to-end: what the chart's ServiceAccount can and cannot do to Secrets, against the
//! real kube-apiserver with exactly the chart's rendered RBAC and ValidatingAdmissionPolicy
//! (the README's trust model). Every request here is made as that ServiceAccount, with its
//! TokenRequest token; the admin only sets the scene.
//!
//! Run with `scripts/test.sh`.

mod cluster;
mod common;
mod fixture;

use std::collections::BTreeMap;

use fixture::{Release, SECRET};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchParams,
};
use serde_json::json;

const LABEL: &str = "pullsecret-injector.io/e2e-least-privilege";

/// A Secret named `name` of type `type_` with `labels`.
fn secret(name: &str, type_: &str, labels: &[(&str, &str)]) -> Secret {
    let data = if type_ == "kubernetes.io/dockerconfigjson" {
        (".dockerconfigjson", br#"{"auths":{}}"#.to_vec())
    } else {
        ("k", b"v".to_vec())
    };
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(cluster::labels(labels)),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(BTreeMap::from([(data.0.to_string(), ByteString(data.1))])),
        ..Default::default()
    }
}

/// The labels of release `fx`'s Secrets.
fn ours(fx: &Release) -> [(&'static str, &str); 2] {
    [
        ("app.kubernetes.io/managed-by", "pullsecret-injector"),
        ("pullsecret-injector.io/instance", &fx.id),
    ]
}

/// The API server's status code and message of a refused request (panics on success).
fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(e)) => (e.code, e.message),
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// Assert that `r` is RBAC's 403 (not the admission policy's).
fn forbidden_by_rbac<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) {
    let (code, message) = refused(what, r);
    assert_eq!(code, 403, "{what}: {message}");
    assert!(
        message.contains("cannot"),
        "{what}: not an RBAC refusal: {message}"
    );
}

/// Assert that `r` is the admission policy's refusal with `words` in its message.
fn forbidden_by_policy<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>, words: &str) {
    let (code, message) = refused(what, r);
    assert_eq!(code, 403, "{what}: {message}");
    assert!(
        message.contains("ValidatingAdmissionPolicy") && message.contains(words),
        "{what}: want the policy's {words:?}, got: {message}"
    );
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn service_account_reaches_secrets_by_configured_name_only() {
    let fx = Release::new("rbac", LABEL).await;
    let sa = cluster::client_for(&fx.kubeconfig).await;
    let ns = fx.namespace("a", true).await;
    let admin = fx.secrets(&ns);
    let pp = PostParams::default();
    admin
        .create(&pp, &secret("app-db-password", "Opaque", &[]))
        .await
        .unwrap();
    admin
        .create(
            &pp,
            &secret(SECRET, "kubernetes.io/dockerconfigjson", &ours(&fx)),
        )
        .await
        .unwrap();
    let as_sa = Api::<Secret>::namespaced(sa.clone(), &ns);
    let all_as_sa = Api::<Secret>::all(sa.clone());

    // Any other name: no read, no list, no watch, no patch, no delete.
    forbidden_by_rbac("get another name", as_sa.get("app-db-password").await);
    forbidden_by_rbac(
        "list a namespace's Secrets",
        as_sa.list(&ListParams::default()).await,
    );
    forbidden_by_rbac(
        "list every Secret",
        all_as_sa.list(&ListParams::default()).await,
    );
    forbidden_by_rbac(
        "list every Secret with our labels (RBAC cannot select by label)",
        all_as_sa
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=pullsecret-injector"))
            .await,
    );
    forbidden_by_rbac(
        "list another name",
        all_as_sa
            .list(&ListParams::default().fields("metadata.name=app-db-password"))
            .await,
    );
    forbidden_by_rbac(
        "watch every Secret",
        all_as_sa
            .watch(&WatchParams::default(), "0")
            .await
            .map(|_| "a watch stream"),
    );
    forbidden_by_rbac(
        "patch another name",
        as_sa
            .patch(
                "app-db-password",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await,
    );
    forbidden_by_rbac(
        "delete another name",
        as_sa
            .delete("app-db-password", &DeleteParams::default())
            .await,
    );
    forbidden_by_rbac(
        "delete every Secret of a namespace",
        as_sa
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await,
    );
    // No update, not even under the configured name (the code never uses it).
    let mut mine = admin.get(SECRET).await.unwrap();
    mine.metadata.managed_fields = None;
    forbidden_by_rbac(
        "update the configured name",
        as_sa.replace(SECRET, &pp, &mine).await,
    );

    // The configured name: read, listed and watched by field selector, across namespaces.
    as_sa.get(SECRET).await.expect("get of the configured name");
    let listed = all_as_sa
        .list(&ListParams::default().fields(&format!("metadata.name={SECRET}")))
        .await
        .expect("a list selecting the configured name");
    assert!(
        listed
            .items
            .iter()
            .any(|s| s.metadata.namespace.as_deref() == Some(&ns))
    );
    if let Err(e) = all_as_sa
        .watch(
            &WatchParams::default().fields(&format!("metadata.name={SECRET}")),
            "0",
        )
        .await
    {
        panic!("a watch selecting the configured name: {e}");
    }
    assert!(
        fx.secrets(&ns)
            .get_opt("app-db-password")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn admission_policy_lets_the_service_account_write_only_its_own_pull_secrets() {
    let fx = Release::new("policy", LABEL).await;
    let sa = cluster::client_for(&fx.kubeconfig).await;
    let ns = fx.namespace("a", true).await;
    let as_sa = Api::<Secret>::namespaced(sa.clone(), &ns);
    let pp = PostParams::default();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let pull = "kubernetes.io/dockerconfigjson";

    // The policy reaches the admission chain asynchronously: wait until it refuses.
    cluster::poll(
        "the admission policy to refuse an Opaque Secret",
        std::time::Duration::from_secs(20),
        || async {
            match as_sa
                .create(&dry, &secret(SECRET, "Opaque", &ours(&fx)))
                .await
            {
                Err(kube::Error::Api(e)) if e.message.contains("ValidatingAdmissionPolicy") => {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;

    // Create (RBAC allows any name in any namespace): only pull Secrets, with our labels,
    // under the configured names.
    forbidden_by_policy(
        "create an Opaque Secret",
        as_sa
            .create(&pp, &secret(SECRET, "Opaque", &ours(&fx)))
            .await,
        "may only write Secrets of type kubernetes.io/dockerconfigjson",
    );
    // Without the policy this is the way to any ServiceAccount's token: the token controller
    // fills a service-account-token Secret created under a name the injector may read.
    let mut token_secret = secret(SECRET, "kubernetes.io/service-account-token", &ours(&fx));
    token_secret.data = None;
    token_secret.metadata.annotations = Some(BTreeMap::from([(
        "kubernetes.io/service-account.name".to_string(),
        "default".to_string(),
    )]));
    forbidden_by_policy(
        "create a service-account-token Secret under the configured name",
        as_sa.create(&pp, &token_secret).await,
        "may only write Secrets of type kubernetes.io/dockerconfigjson",
    );
    forbidden_by_policy(
        "create a pull Secret under another name",
        as_sa
            .create(&pp, &secret("not-configured", pull, &ours(&fx)))
            .await,
        &format!("may only write Secrets named {SECRET}"),
    );
    forbidden_by_policy(
        "create a pull Secret without labels",
        as_sa.create(&pp, &secret(SECRET, pull, &[])).await,
        "may only write Secrets labelled",
    );
    forbidden_by_policy(
        "create a pull Secret with another installation's label",
        as_sa
            .create(
                &pp,
                &secret(
                    SECRET,
                    pull,
                    &[
                        ("app.kubernetes.io/managed-by", "pullsecret-injector"),
                        ("pullsecret-injector.io/instance", "someone-else"),
                    ],
                ),
            )
            .await,
        "may only write Secrets labelled",
    );
    // Its own Secret passes (as every write of the sync suite does).
    as_sa
        .create(&pp, &secret(SECRET, pull, &ours(&fx)))
        .await
        .expect("creating its own pull Secret");
    // ... and can be changed, but not stripped of its labels.
    as_sa
        .patch(
            SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}})),
        )
        .await
        .expect("patching its own pull Secret");
    forbidden_by_policy(
        "patch away its own labels",
        as_sa
            .patch(
                SECRET,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"pullsecret-injector.io/instance": null}}}),
                ),
            )
            .await,
        "may only write Secrets labelled",
    );

    // A same-named pull Secret that is not ours (RBAC allows patch and delete by name):
    // neither taken over nor deleted.
    let other = fx.namespace("b", false).await;
    fx.secrets(&other)
        .create(&pp, &secret(SECRET, pull, &[]))
        .await
        .unwrap();
    let as_sa_other = Api::<Secret>::namespaced(sa.clone(), &other);
    forbidden_by_policy(
        "take over a foreign Secret by adding our labels",
        as_sa_other
            .patch(
                SECRET,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {
                    "app.kubernetes.io/managed-by": "pullsecret-injector",
                    "pullsecret-injector.io/instance": fx.id,
                }}})),
            )
            .await,
        "may only change or delete Secrets labelled",
    );
    forbidden_by_policy(
        "delete a foreign Secret",
        as_sa_other.delete(SECRET, &DeleteParams::default()).await,
        "may only change or delete Secrets labelled",
    );
    let still = fx.secrets(&other).get(SECRET).await.unwrap();
    assert!(still.metadata.labels.unwrap_or_default().is_empty());
    // Its own Secret it may delete.
    as_sa
        .delete(SECRET, &DeleteParams::default())
        .await
        .expect("deleting its own pull Secret");
}
