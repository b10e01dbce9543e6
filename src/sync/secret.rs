//! The managed Secret as data: its names and labels, the object we want in a namespace
//! ([`Desired`]) and what the watch saw of one ([`Observed`]), compared by digest. Pure;
//! the writes are in `apply`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use kube::core::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::credentials::Credential;

/// Label on every Secret this project manages (and only on those).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`], also the server-side apply field manager.
pub const MANAGER: &str = "pullsecret-injector";
/// Label naming the installation that manages a Secret (`sync.instance`).
pub const INSTANCE_LABEL: &str = "pullsecret-injector.io/instance";
/// Annotation naming the registry entry a Secret belongs to.
pub const REGISTRY_ANNOTATION: &str = "pullsecret-injector.io/registry";
/// Annotation with the credential's expiry (RFC 3339); absent for static credentials.
pub const EXPIRES_AT_ANNOTATION: &str = "pullsecret-injector.io/expires-at";
/// Secret type of pull Secrets.
pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// Data key of pull Secrets.
pub const DATA_KEY: &str = ".dockerconfigjson";

/// What the Secret watch saw of one managed Secret (content as a digest, never the bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
    /// Digest of type, annotations and data: equal digests mean nothing to write.
    pub digest: [u8; 32],
    /// The registry it was written for (`pullsecret-injector.io/registry`).
    pub registry: Option<String>,
    /// Data keys other than [`DATA_KEY`] (someone else added them; their values are never
    /// kept). Server-side apply cannot remove a field another manager owns, so these are
    /// removed by name.
    pub foreign_keys: Vec<String>,
}

impl Observed {
    /// Read what matters from a watched Secret.
    pub fn of(secret: &K8sSecret) -> Self {
        let data = secret.data.as_ref();
        let keys: Vec<&str> = data
            .map(|d| d.keys().map(String::as_str).collect())
            .unwrap_or_default();
        Self {
            uid: secret.metadata.uid.clone().unwrap_or_default(),
            resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
            digest: digest(
                secret.type_.as_deref().unwrap_or_default(),
                secret.metadata.annotations.as_ref(),
                data.and_then(|d| d.get(DATA_KEY)).map(|b| b.0.as_slice()),
                &keys,
            ),
            registry: secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REGISTRY_ANNOTATION))
                .cloned(),
            foreign_keys: keys
                .into_iter()
                .filter(|k| *k != DATA_KEY)
                .map(str::to_string)
                .collect(),
        }
    }
}

/// The Secret one registry should have in one namespace.
#[derive(Clone, PartialEq)]
pub struct Desired {
    /// The object to create or apply.
    pub secret: K8sSecret,
    /// Its digest, comparable with [`Observed::digest`].
    pub digest: [u8; 32],
}

impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desired")
            .field("name", &self.secret.metadata.name)
            .field("namespace", &self.secret.metadata.namespace)
            .finish_non_exhaustive()
    }
}

/// Build the desired Secret for a registry in a namespace.
pub fn desired(
    instance: &str,
    namespace: &str,
    secret_name: &str,
    registry: &str,
    hosts: &[String],
    credential: &Credential,
) -> Desired {
    let data = credential.secret_data(hosts).into_bytes();
    let mut annotations = BTreeMap::from([(REGISTRY_ANNOTATION.to_string(), registry.to_string())]);
    if let Some(expires_at) = credential.expires_at() {
        annotations.insert(EXPIRES_AT_ANNOTATION.to_string(), rfc3339(expires_at));
    }
    let digest = digest(
        DOCKER_CONFIG_JSON,
        Some(&annotations),
        Some(&data),
        &[DATA_KEY],
    );
    let secret = K8sSecret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
                (INSTANCE_LABEL.to_string(), instance.to_string()),
            ])),
            annotations: Some(annotations),
            ..Default::default()
        },
        type_: Some(DOCKER_CONFIG_JSON.to_string()),
        data: Some(BTreeMap::from([(DATA_KEY.to_string(), ByteString(data))])),
        ..Default::default()
    };
    Desired { secret, digest }
}

/// RFC 3339 in UTC with whole seconds (`2026-11-29T20:00:00Z`).
pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Digest of what we own in a Secret. Annotations other than ours are ignored (others may
/// annotate our Secrets); the names of all data keys count, so an extra key is a difference.
fn digest(
    type_: &str,
    annotations: Option<&BTreeMap<String, String>>,
    data: Option<&[u8]>,
    data_keys: &[&str],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(type_.as_bytes());
    h.update([0]);
    for key in [REGISTRY_ANNOTATION, EXPIRES_AT_ANNOTATION] {
        match annotations.and_then(|a| a.get(key)) {
            Some(v) => {
                h.update([1]);
                h.update(v.as_bytes());
            }
            None => h.update([2]),
        }
        h.update([0]);
    }
    h.update((data_keys.len() as u64).to_le_bytes());
    for key in data_keys {
        h.update(key.as_bytes());
        h.update([0]);
    }
    match data {
        Some(d) => {
            h.update([1]);
            h.update(d);
        }
        None => h.update([2]),
    }
    h.finalize().into()
}

/// Whether a Secret carries our managed-by label and this installation's instance label.
pub fn is_managed(secret: &K8sSecret, instance: &str) -> bool {
    let labels = secret.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    label(MANAGED_BY_LABEL) == Some(MANAGER) && label(INSTANCE_LABEL) == Some(instance)
}

/// The label selector of the Secrets one installation manages.
pub fn selector(instance: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGER},{INSTANCE_LABEL}={instance}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::credentials::Secret;

    /// An IAM login issued 2026-11-29T08:00:00Z.
    pub(crate) fn cred(token: &str, expires: Option<&str>) -> Credential {
        Credential::login(
            "iam",
            Secret::new(token),
            "2026-11-29T08:00:00Z".parse().unwrap(),
            expires.map(|e| e.parse().unwrap()),
        )
        .unwrap()
    }

    /// Both Yandex hosts.
    pub(crate) fn hosts() -> Vec<String> {
        vec!["cr.yandex".into(), "registry.yandexcloud.net".into()]
    }

    /// The desired Secret `ns/s` of registry `yandex` for a token.
    fn desired_for(token: &str, expires: Option<&str>) -> Desired {
        desired("psi", "ns", "s", "yandex", &hosts(), &cred(token, expires))
    }

    #[test]
    fn desired_secret_has_contract_type_label_annotations_and_both_hosts() {
        let d = desired(
            "psi",
            "team-a",
            "yc-registry-secret",
            "yandex",
            &hosts(),
            &cred("t1", Some("2026-11-29T20:00:00.123456Z")),
        );
        let s = &d.secret;
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "pullsecret-injector"
        );
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()["pullsecret-injector.io/instance"],
            "psi"
        );
        assert!(is_managed(s, "psi"));
        assert!(!is_managed(s, "another-installation"));
        let a = s.metadata.annotations.as_ref().unwrap();
        assert_eq!(a["pullsecret-injector.io/registry"], "yandex");
        assert_eq!(
            a["pullsecret-injector.io/expires-at"],
            "2026-11-29T20:00:00Z"
        );
        let data = &s.data.as_ref().unwrap()[".dockerconfigjson"].0;
        let parsed = crate::dockerconfig::parse(data).unwrap();
        assert_eq!(
            parsed.auths.keys().collect::<Vec<_>>(),
            ["cr.yandex", "registry.yandexcloud.net"]
        );
        assert_eq!(parsed.auths["cr.yandex"].username, "iam");
    }

    #[test]
    fn observed_digest_equals_desired_digest_for_the_same_secret() {
        let d = desired_for("t1", Some("2026-11-29T20:00:00Z"));
        let mut stored = d.secret.clone();
        stored.metadata.uid = Some("u".into());
        stored.metadata.resource_version = Some("1".into());
        // Others may add annotations of their own; that is not a difference.
        stored.metadata.annotations.as_mut().unwrap().insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
        assert_eq!(Observed::of(&stored).digest, d.digest);
    }

    #[test]
    fn any_change_to_what_we_own_changes_the_digest() {
        let base = desired_for("t1", Some("2026-11-29T20:00:00Z"));
        let other_token = desired_for("t2", Some("2026-11-29T20:00:00Z"));
        let other_expiry = desired_for("t1", Some("2026-11-29T21:00:00Z"));
        let static_ = desired_for("t1", None);
        assert_ne!(base.digest, other_token.digest);
        assert_ne!(base.digest, other_expiry.digest);
        assert_ne!(base.digest, static_.digest);
        let mut edited = base.secret.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("extra".into(), ByteString(b"x".to_vec()));
        let seen = Observed::of(&edited);
        assert_ne!(seen.digest, base.digest);
        assert_eq!(seen.foreign_keys, ["extra"]);
        assert!(Observed::of(&base.secret).foreign_keys.is_empty());
        // A foreign key in place of ours is a difference too, though the count is equal.
        let mut swapped = base.secret.clone();
        let data = swapped.data.as_mut().unwrap();
        let ours = data.remove(DATA_KEY).unwrap();
        data.insert("other".into(), ours);
        assert_ne!(Observed::of(&swapped).digest, base.digest);
        let mut retyped = base.secret.clone();
        retyped.type_ = Some("Opaque".into());
        assert_ne!(Observed::of(&retyped).digest, base.digest);
    }

    #[test]
    fn debug_of_desired_never_shows_the_token() {
        let d = desired_for("super-secret-token", None);
        assert!(!format!("{d:?}").contains("super-secret-token"));
    }
}
