//! The configuration file: schema, defaults and validation.
//!
//! Parsing is strict (an unknown field is an error, never silently ignored) and validation
//! collects every problem at once, each naming the field path and the bad value, so that a
//! platform engineer fixes a broken file in one round trip.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::labels::LabelSelector;
use crate::registry::{HostPattern, RegistryEntry};
use crate::server::{BodyLimits, Limits};

mod limits;

/// Default Yandex Cloud IAM token endpoint.
pub const DEFAULT_IAM_ENDPOINT: &str = "https://iam.api.cloud.yandex.net/iam/v1/tokens";
/// Default token exchange endpoint of Yandex Cloud workload identity federations.
pub const DEFAULT_WIF_ENDPOINT: &str = "https://auth.yandex.cloud/oauth/token";
/// Where the Helm chart mounts the injector's projected ServiceAccount token for
/// `yandexWorkloadIdentity` (the default `tokenFile`).
pub const DEFAULT_WIF_TOKEN_FILE: &str = "/var/run/secrets/yandex-wif/token";
/// Default Yandex Cloud VM metadata token endpoint.
pub const DEFAULT_METADATA_ENDPOINT: &str =
    "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token";
/// Default namespace opt-in selector.
pub const DEFAULT_NAMESPACE_SELECTOR: &str = "pullsecret-injector.io/inject=enabled";
/// Default Pod opt-out annotation.
pub const DEFAULT_POD_OPT_OUT_ANNOTATION: &str = "pullsecret-injector.io/skip";

/// The whole configuration file, after defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// The HTTPS admission endpoint.
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// The plain-HTTP health and metrics endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Label selector (kubectl syntax) of the namespaces that opt in.
    #[serde(default = "default_namespace_selector")]
    pub namespace_selector: String,
    /// Pod annotation that, set to `"true"`, disables injection for that Pod.
    #[serde(default = "default_pod_opt_out_annotation")]
    pub pod_opt_out_annotation: String,
    /// The secret sync task.
    #[serde(default)]
    pub sync: SyncConfig,
    /// Finding Pods left without the Secrets their images need.
    #[serde(default)]
    pub pod_report: PodReportConfig,
    /// The private registries, in order.
    pub registries: Vec<RegistryConfig>,
}

/// `webhook:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    /// Address the HTTPS server binds.
    #[serde(default = "default_webhook_listen")]
    pub listen: String,
    /// PEM certificate chain; reloaded when its content changes.
    #[serde(default = "default_tls_cert")]
    pub tls_cert_file: PathBuf,
    /// PEM private key; reloaded when its content changes.
    #[serde(default = "default_tls_key")]
    pub tls_key_file: PathBuf,
    /// Open connections; at the limit the longest-idle one is closed to serve a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// TLS handshake bound.
    #[serde(
        default,
        with = "limits::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub handshake_timeout: Option<Duration>,
    /// First request of a connection, and an HTTP/1 request's headers.
    #[serde(
        default,
        with = "limits::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub header_read_timeout: Option<Duration>,
    /// From a request's headers to its answer.
    #[serde(
        default,
        with = "limits::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_timeout: Option<Duration>,
    /// A connection with no request in flight.
    #[serde(
        default,
        with = "limits::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 PING interval; `0s` disables the PINGs.
    #[serde(
        default,
        with = "limits::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub http2_keep_alive_interval: Option<Duration>,
    /// HTTP/2 PING acknowledgement bound.
    #[serde(
        default,
        with = "limits::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub http2_keep_alive_timeout: Option<Duration>,
    /// Largest request body (413 above).
    #[serde(
        default,
        with = "limits::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_request_body_bytes: Option<usize>,
    /// Budget of all request bodies at once (each charged for decoding too).
    #[serde(
        default,
        with = "limits::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_buffered_body_bytes: Option<usize>,
    /// When set, the injector keeps its own CA and serving certificate in a Secret and the
    /// webhook configuration's `caBundle` (the two files above are not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_certificate: Option<crate::certs::config::ManagedCertificateConfig>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            listen: default_webhook_listen(),
            tls_cert_file: default_tls_cert(),
            tls_key_file: default_tls_key(),
            max_connections: None,
            handshake_timeout: None,
            header_read_timeout: None,
            request_timeout: None,
            idle_timeout: None,
            http2_keep_alive_interval: None,
            http2_keep_alive_timeout: None,
            max_request_body_bytes: None,
            max_buffered_body_bytes: None,
            managed_certificate: None,
        }
    }
}

/// `admin:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    /// Address the plain-HTTP admin server binds.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Open connections; at the limit the longest-idle one is closed to serve a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// First request of a connection, and an HTTP/1 request's headers.
    #[serde(
        default,
        with = "limits::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub header_read_timeout: Option<Duration>,
    /// From a request's headers to its answer.
    #[serde(
        default,
        with = "limits::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_timeout: Option<Duration>,
    /// A connection with no request in flight.
    #[serde(
        default,
        with = "limits::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            max_connections: None,
            header_read_timeout: None,
            request_timeout: None,
            idle_timeout: None,
        }
    }
}

/// `sync:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncConfig {
    /// Upper bound on a credential's age before it is refreshed.
    #[serde(default = "default_refresh_interval", with = "duration")]
    pub refresh_interval: Duration,
    /// Rate limit on Secret writes to the API server.
    #[serde(default = "default_max_writes")]
    pub max_writes_per_second: u32,
    /// Leader election among replicas.
    #[serde(default)]
    pub leader_election: LeaderElectionConfig,
    /// Name of this installation, written as the `pullsecret-injector.io/instance` label on
    /// every managed Secret: an installation only ever touches Secrets with its own value, so
    /// two installations in one cluster never fight over each other's Secrets.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Secret names that registries used before and no longer do: this installation's
    /// Secrets under these names are deleted from every namespace. They are watched (and
    /// authorised by RBAC) by name like the configured ones, and never written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_secret_names: Vec<String>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            refresh_interval: default_refresh_interval(),
            max_writes_per_second: default_max_writes(),
            leader_election: LeaderElectionConfig::default(),
            instance: default_instance(),
            retired_secret_names: Vec::new(),
        }
    }
}

/// `podReport:` section: Pods in opted-in namespaces whose images need a Secret the Pod
/// does not name (created before the namespace opted in, or while the webhook was
/// unreachable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodReportConfig {
    /// Watch Pending Pods and report those (metric on every replica, an Event per Pod
    /// from the leader). Needs RBAC `pods` list/watch.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Also delete such a Pod when a ReplicaSet, StatefulSet, DaemonSet, Job or
    /// ReplicationController owns it, so that its controller creates one the webhook
    /// injects into. Never a bare Pod. Needs RBAC `pods` delete.
    #[serde(default)]
    pub delete_owned_pods: bool,
    /// Rate limit on those deletions.
    #[serde(default = "default_max_deletions")]
    pub max_deletions_per_minute: u32,
}

impl Default for PodReportConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            delete_owned_pods: false,
            max_deletions_per_minute: default_max_deletions(),
        }
    }
}

/// `sync.leaderElection:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// Whether replicas elect one writer through a Lease.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Name of the coordination.k8s.io Lease.
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// Namespace of the Lease; empty means the injector's own namespace.
    #[serde(default)]
    pub lease_namespace: String,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_name: default_lease_name(),
            lease_namespace: String::new(),
        }
    }
}

/// One `registries[]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryConfig {
    /// Unique name, used in metrics and the `pullsecret-injector.io/registry` annotation.
    pub name: String,
    /// Host patterns (`host[:port][/path]`, labels may be kubelet-style globs).
    pub hosts: Vec<String>,
    /// Name of the managed Secret in every opted-in namespace.
    pub secret_name: String,
    /// Optional label selector (kubectl syntax): only opted-in namespaces that ALSO match it
    /// get this registry's Secret and injection. Empty: every opted-in namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_selector: String,
    /// Where the credentials come from: every source the file names, in file order
    /// (validation requires exactly one, so that the message can list what was found).
    pub credentials: CredentialSources,
    /// The hosts (entries of `hosts`, as written) at which every new credential is proven
    /// with the registry's own auth flow. Absent: every host that is not a glob; `[]`:
    /// none (for registries the injector cannot reach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_hosts: Option<Vec<String>>,
}

/// The credential source of one registry: one tagged enum from the config file to the
/// provider that fetches it ([`crate::credentials::Provider`]). In YAML it is a map with
/// exactly one key, the source's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CredentialSource {
    /// IAM tokens for a service account linked to a workload identity federation, exchanged
    /// for the injector's own projected ServiceAccount token: no key anywhere.
    YandexWorkloadIdentity(YandexWorkloadIdentity),
    /// IAM tokens minted from a service-account authorized key.
    YandexAuthorizedKey(YandexAuthorizedKey),
    /// IAM tokens from the VM metadata service.
    YandexMetadata(YandexMetadata),
    /// Static `json_key` login with the key file as password (Container Registry only).
    YandexJsonKey(FileSource),
    /// Static username and password file.
    Basic(Basic),
    /// A `.dockerconfigjson` file copied as is.
    DockerConfig(FileSource),
}

/// The config keys of [`CredentialSource`], in the order messages list them.
pub const CREDENTIAL_SOURCES: &[&str] = &[
    "yandexWorkloadIdentity",
    "yandexAuthorizedKey",
    "yandexMetadata",
    "yandexJsonKey",
    "basic",
    "dockerConfig",
];

impl CredentialSource {
    /// The config key of this source, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::YandexWorkloadIdentity(_) => "yandexWorkloadIdentity",
            Self::YandexAuthorizedKey(_) => "yandexAuthorizedKey",
            Self::YandexMetadata(_) => "yandexMetadata",
            Self::YandexJsonKey(_) => "yandexJsonKey",
            Self::Basic(_) => "basic",
            Self::DockerConfig(_) => "dockerConfig",
        }
    }

    /// Check the values a provider cannot work without; `path` is the source's field path
    /// (`registries[0].credentials.basic`). Files are read later, by the provider.
    fn check(&self, path: &str) -> Result<(), FieldError> {
        let field = |name: &str, message: String| FieldError {
            path: format!("{path}.{name}"),
            message,
        };
        let file = |name: &str, file: &Path| {
            if file.as_os_str().is_empty() {
                Err(field(name, "must not be empty".into()))
            } else {
                Ok(())
            }
        };
        match self {
            Self::YandexWorkloadIdentity(w) => {
                check_service_account_id(&w.service_account_id)
                    .map_err(|m| field("serviceAccountId", m))?;
                file("tokenFile", &w.token_file)?;
                check_endpoint(&w.endpoint, false).map_err(|m| field("endpoint", m))
            }
            Self::YandexAuthorizedKey(k) => {
                file("file", &k.file)?;
                check_endpoint(&k.endpoint, false).map_err(|m| field("endpoint", m))
            }
            Self::YandexMetadata(m) => {
                check_endpoint(&m.endpoint, true).map_err(|m| field("endpoint", m))
            }
            Self::YandexJsonKey(f) | Self::DockerConfig(f) => file("file", &f.file),
            Self::Basic(b) => {
                if b.username.is_empty() || b.username.contains(':') {
                    return Err(field(
                        "username",
                        format!(
                            "{:?} must be non-empty and must not contain ':'",
                            b.username
                        ),
                    ));
                }
                file("passwordFile", &b.password_file)
            }
        }
    }
}

/// `registries[].credentials` as written: each key parsed into its [`CredentialSource`].
/// Parsing accepts any number of known keys (an unknown one is an error naming it) so that
/// validation can say "exactly one ... found basic, dockerConfig".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialSources(pub Vec<CredentialSource>);

impl<'de> Deserialize<'de> for CredentialSources {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Sources;
        impl<'de> serde::de::Visitor<'de> for Sources {
            type Value = CredentialSources;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a map with one of {}", CREDENTIAL_SOURCES.join(", "))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut found = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !CREDENTIAL_SOURCES.contains(&key.as_str()) {
                        return Err(serde::de::Error::unknown_field(&key, CREDENTIAL_SOURCES));
                    }
                    // The derived enum reads the key as its tag and the value in place, so
                    // errors inside the value keep the parser's path and position.
                    let entry = OneEntry {
                        key: Some(key),
                        map: &mut map,
                    };
                    found.push(CredentialSource::deserialize(
                        serde::de::value::MapAccessDeserializer::new(entry),
                    )?);
                }
                Ok(CredentialSources(found))
            }
        }
        d.deserialize_map(Sources)
    }
}

impl Serialize for CredentialSources {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for source in &self.0 {
            match source {
                CredentialSource::YandexWorkloadIdentity(v) => {
                    map.serialize_entry(source.kind(), v)
                }
                CredentialSource::YandexAuthorizedKey(v) => map.serialize_entry(source.kind(), v),
                CredentialSource::YandexMetadata(v) => map.serialize_entry(source.kind(), v),
                CredentialSource::YandexJsonKey(v) | CredentialSource::DockerConfig(v) => {
                    map.serialize_entry(source.kind(), v)
                }
                CredentialSource::Basic(v) => map.serialize_entry(source.kind(), v),
            }?;
        }
        map.end()
    }
}

/// The current entry of an outer map, seen as a map of its own with that one entry.
struct OneEntry<'a, A> {
    key: Option<String>,
    map: &'a mut A,
}

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for OneEntry<'_, A> {
    type Error = A::Error;
    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        use serde::de::IntoDeserializer;
        match self.key.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// `credentials.yandexWorkloadIdentity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct YandexWorkloadIdentity {
    /// The Yandex Cloud service account linked to the federation (sent as `audience`).
    pub service_account_id: String,
    /// The injector's own ServiceAccount token (a projected volume with the federation's
    /// audience); read for every exchange, since kubelet rotates it.
    #[serde(default = "default_wif_token_file")]
    pub token_file: PathBuf,
    /// Token exchange endpoint.
    #[serde(default = "default_wif_endpoint")]
    pub endpoint: String,
}

/// `credentials.yandexAuthorizedKey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct YandexAuthorizedKey {
    /// Path of the authorized key JSON (`yc iam key create` output).
    pub file: PathBuf,
    /// IAM token endpoint.
    #[serde(default = "default_iam_endpoint")]
    pub endpoint: String,
}

/// `credentials.yandexMetadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct YandexMetadata {
    /// Metadata token endpoint.
    #[serde(default = "default_metadata_endpoint")]
    pub endpoint: String,
}

/// A credential source that is just a file (`yandexJsonKey`, `dockerConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSource {
    /// Path of the file.
    pub file: PathBuf,
}

/// `credentials.basic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Basic {
    /// Registry username.
    pub username: String,
    /// Path of a file holding the password (trailing newline stripped).
    pub password_file: PathBuf,
}

/// One registry after validation.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Name, secret name and parsed host patterns.
    pub entry: RegistryEntry,
    /// `namespaceSelector`, parsed; `None` when every opted-in namespace gets it.
    pub namespace_selector: Option<LabelSelector>,
    /// Where its credentials come from.
    pub credentials: CredentialSource,
    /// The hosts at which new credentials are proven (`probeHosts`, or every exact host).
    pub probe_hosts: Vec<HostPattern>,
}

/// A configuration that passed validation: addresses parsed, patterns compiled.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Webhook bind address.
    pub webhook_listen: SocketAddr,
    /// Webhook certificate file.
    pub tls_cert_file: PathBuf,
    /// Webhook key file.
    pub tls_key_file: PathBuf,
    /// The certificate the injector keeps itself, instead of the files.
    pub managed_certificate: Option<crate::certs::config::ManagedCertificate>,
    /// Admin bind address.
    pub admin_listen: SocketAddr,
    /// Connection limits of the webhook port.
    pub webhook_limits: Limits,
    /// Request body limits of the webhook.
    pub body_limits: BodyLimits,
    /// Connection limits of the admin port.
    pub admin_limits: Limits,
    /// Opt-in selector, parsed.
    pub namespace_selector: LabelSelector,
    /// Opt-out annotation key.
    pub pod_opt_out_annotation: String,
    /// Sync task settings.
    pub sync: SyncConfig,
    /// Pods left without their Secrets.
    pub pod_report: PodReportConfig,
    /// Registries in config order.
    pub registries: Vec<Registry>,
}

/// One validation problem: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path such as `registries[1].hosts[0]`.
    pub path: String,
    /// What is wrong, quoting the bad value.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for the schema.
    #[error("parsing config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with field path and location).
        message: String,
    },
    /// The file parsed but some values are wrong.
    #[error("invalid config file {path}:\n  {}", join_errors(.errors))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

impl Config {
    /// Parse YAML text; the error message carries the field path and position.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_norway::from_str(text).map_err(|e| e.to_string())
    }

    /// Check every field; returns all problems, each with its path.
    pub fn validate(&self) -> Result<Settings, Vec<FieldError>> {
        let mut errs = Vec::new();
        let (webhook_limits, body_limits) = limits::webhook(&self.webhook, &mut errs);
        let admin_limits = limits::admin(&self.admin, &mut errs);
        let mut err = |path: &str, message: String| {
            errs.push(FieldError {
                path: path.to_string(),
                message,
            })
        };

        let webhook_listen = parse_listen(&self.webhook.listen)
            .map_err(|m| err("webhook.listen", m))
            .ok();
        let admin_listen = parse_listen(&self.admin.listen)
            .map_err(|m| err("admin.listen", m))
            .ok();
        if let (Some(w), Some(a)) = (webhook_listen, admin_listen)
            && w.port() == a.port()
            && w.port() != 0
            && (w.ip() == a.ip() || w.ip().is_unspecified() || a.ip().is_unspecified())
        {
            err(
                "admin.listen",
                format!("{a} uses the same port as webhook.listen {w}"),
            );
        }
        if self.webhook.tls_cert_file.as_os_str().is_empty() {
            err("webhook.tlsCertFile", "must not be empty".into());
        }
        if self.webhook.tls_key_file.as_os_str().is_empty() {
            err("webhook.tlsKeyFile", "must not be empty".into());
        }
        let managed_certificate = self
            .webhook
            .managed_certificate
            .as_ref()
            .and_then(|m| m.validate("webhook.managedCertificate", &mut err));
        let namespace_selector = LabelSelector::parse(&self.namespace_selector)
            .map_err(|e| {
                err(
                    "namespaceSelector",
                    format!("{:?} is not a label selector: {e}", self.namespace_selector),
                )
            })
            .ok();
        if let Err(e) = crate::labels::validate_key(&self.pod_opt_out_annotation) {
            err(
                "podOptOutAnnotation",
                format!(
                    "{:?} is not an annotation key: {e}",
                    self.pod_opt_out_annotation
                ),
            );
        }
        check_sync(&self.sync, &mut err);
        if self.pod_report.max_deletions_per_minute == 0 {
            err(
                "podReport.maxDeletionsPerMinute",
                "must be at least 1".into(),
            );
        }
        if self.registries.is_empty() {
            err("registries", "at least one registry is required".into());
        }
        let registries: Vec<Registry> = self
            .registries
            .iter()
            .enumerate()
            .filter_map(|(i, r)| check_registry(i, r, &self.registries[..i], &mut err))
            .collect();
        check_retired(&self.sync.retired_secret_names, &self.registries, &mut err);

        match (webhook_listen, admin_listen, namespace_selector) {
            (Some(webhook_listen), Some(admin_listen), Some(namespace_selector))
                if errs.is_empty() =>
            {
                Ok(Settings {
                    webhook_listen,
                    tls_cert_file: self.webhook.tls_cert_file.clone(),
                    tls_key_file: self.webhook.tls_key_file.clone(),
                    managed_certificate,
                    admin_listen,
                    webhook_limits,
                    body_limits,
                    admin_limits,
                    namespace_selector,
                    pod_opt_out_annotation: self.pod_opt_out_annotation.clone(),
                    sync: self.sync.clone(),
                    pod_report: self.pod_report.clone(),
                    registries,
                })
            }
            _ => Err(errs),
        }
    }
}

/// The `sync:` section's problems.
fn check_sync(sync: &SyncConfig, err: &mut impl FnMut(&str, String)) {
    if sync.refresh_interval < Duration::from_secs(10) {
        err(
            "sync.refreshInterval",
            format!(
                "{} is too short (minimum 10s)",
                humantime::format_duration(sync.refresh_interval)
            ),
        );
    }
    if sync.max_writes_per_second == 0 {
        err("sync.maxWritesPerSecond", "must be at least 1".into());
    }
    if sync.instance.is_empty() || crate::labels::validate_label_value(&sync.instance).is_err() {
        err(
            "sync.instance",
            format!(
                "{:?} is not a valid label value (1-63 alphanumerics, '-', '_', '.')",
                sync.instance
            ),
        );
    }
    let le = &sync.leader_election;
    if le.enabled && crate::labels::validate_dns_subdomain(&le.lease_name).is_err() {
        err(
            "sync.leaderElection.leaseName",
            format!("{:?} is not a valid object name", le.lease_name),
        );
    }
    if !le.lease_namespace.is_empty()
        && crate::labels::validate_dns_label(&le.lease_namespace).is_err()
    {
        err(
            "sync.leaderElection.leaseNamespace",
            format!("{:?} is not a valid namespace name", le.lease_namespace),
        );
    }
}

/// `sync.retiredSecretNames`: valid Secret names, each once, none still in use by a registry
/// (a name is either written or deleted, never both).
fn check_retired(
    retired: &[String],
    registries: &[RegistryConfig],
    err: &mut impl FnMut(&str, String),
) {
    for (i, name) in retired.iter().enumerate() {
        let p = format!("sync.retiredSecretNames[{i}]");
        if crate::labels::validate_dns_subdomain(name).is_err() {
            err(&p, format!("{name:?} is not a valid Secret name"));
        }
        if retired[..i].contains(name) {
            err(&p, format!("{name:?} is listed twice"));
        }
        if let Some(j) = registries.iter().position(|r| &r.secret_name == name) {
            err(
                &p,
                format!(
                    "{name:?} is registries[{j}].secretName: a retired name is one that no registry uses any more (remove it from one of the two)"
                ),
            );
        }
    }
}

/// One `registries[i]` entry's problems (`earlier`: the entries before it); the validated
/// registry when it has none that stop it.
fn check_registry(
    i: usize,
    r: &RegistryConfig,
    earlier: &[RegistryConfig],
    err: &mut impl FnMut(&str, String),
) -> Option<Registry> {
    let p = format!("registries[{i}]");
    if crate::labels::validate_label_value(&r.name).is_err() || r.name.is_empty() {
        err(
            &format!("{p}.name"),
            format!(
                "{:?} is not a valid name (1-63 characters, alphanumerics, '-', '_', '.')",
                r.name
            ),
        );
    }
    if let Some(j) = earlier.iter().position(|o| o.name == r.name) {
        err(
            &format!("{p}.name"),
            format!("{:?} is already used by registries[{j}]", r.name),
        );
    }
    if crate::labels::validate_dns_subdomain(&r.secret_name).is_err() {
        err(
            &format!("{p}.secretName"),
            format!("{:?} is not a valid Secret name", r.secret_name),
        );
    }
    if let Some(j) = earlier.iter().position(|o| o.secret_name == r.secret_name) {
        err(
            &format!("{p}.secretName"),
            format!("{:?} is already used by registries[{j}]", r.secret_name),
        );
    }
    if r.hosts.is_empty() {
        err(
            &format!("{p}.hosts"),
            "at least one host pattern is required".into(),
        );
    }
    let mut hosts = Vec::new();
    for (k, h) in r.hosts.iter().enumerate() {
        match HostPattern::parse(h) {
            Ok(pat) => {
                if r.hosts[..k].contains(h) {
                    err(&format!("{p}.hosts[{k}]"), format!("{h:?} is listed twice"));
                }
                hosts.push(pat)
            }
            Err(e) => err(&format!("{p}.hosts[{k}]"), e.to_string()),
        }
    }
    let namespace_selector = check_registry_selector(&p, r, err);
    let credentials = validate_credentials(&r.credentials, &format!("{p}.credentials"))
        .map_err(|e| err(&e.path, e.message))
        .ok();
    let probe_hosts = check_probe_hosts(&p, r, &hosts, err);
    match (credentials, namespace_selector) {
        (Some(credentials), Some(namespace_selector)) => Some(Registry {
            entry: RegistryEntry::new(r.name.clone(), r.secret_name.clone(), hosts),
            namespace_selector,
            credentials,
            probe_hosts,
        }),
        _ => None,
    }
}

/// `registries[i].namespaceSelector`, parsed (`Some(None)` when empty); `None` on a problem.
/// A scoped registry's name is also its webhook path (`/mutate/NAME`), whose segments the
/// API server only accepts as DNS subdomains.
fn check_registry_selector(
    p: &str,
    r: &RegistryConfig,
    err: &mut impl FnMut(&str, String),
) -> Option<Option<LabelSelector>> {
    if r.namespace_selector.trim().is_empty() {
        return Some(None);
    }
    let selector = LabelSelector::parse(&r.namespace_selector)
        .map_err(|e| {
            err(
                &format!("{p}.namespaceSelector"),
                format!("{:?} is not a label selector: {e}", r.namespace_selector),
            )
        })
        .ok();
    if !r.name.is_empty() && crate::labels::validate_dns_subdomain(&r.name).is_err() {
        err(
            &format!("{p}.name"),
            format!(
                "{:?}: a registry with a namespaceSelector is served at the webhook path /mutate/NAME, so its name must be lowercase letters, digits, '-' and '.'",
                r.name
            ),
        );
        return None;
    }
    selector.map(Some)
}

/// `registries[i].probeHosts`: entries of `hosts` that name one host (no glob), each once;
/// absent means every such host.
fn check_probe_hosts(
    p: &str,
    r: &RegistryConfig,
    hosts: &[HostPattern],
    err: &mut impl FnMut(&str, String),
) -> Vec<HostPattern> {
    let probeable = |h: &HostPattern| crate::credentials::probe::target(h).is_some();
    let Some(listed) = &r.probe_hosts else {
        return hosts.iter().filter(|h| probeable(h)).cloned().collect();
    };
    let mut out = Vec::new();
    for (k, name) in listed.iter().enumerate() {
        let path = format!("{p}.probeHosts[{k}]");
        match hosts.iter().find(|h| h.auth_key() == name) {
            None => err(
                &path,
                format!("{name:?} is not one of the registry's hosts (write it as in hosts)"),
            ),
            Some(h) if !probeable(h) => err(
                &path,
                format!("{name:?} is a glob: it names no host to probe"),
            ),
            Some(_) if listed[..k].contains(name) => {
                err(&path, format!("{name:?} is listed twice"))
            }
            Some(h) => out.push(h.clone()),
        }
    }
    out
}

impl Settings {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parse and validate YAML text; `path` is used in messages only.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config = Config::from_yaml(text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        config.validate().map_err(|errors| ConfigError::Invalid {
            path: path.to_path_buf(),
            errors,
        })
    }

    /// The registry entries used for matching, in config order.
    pub fn entries(&self) -> Vec<RegistryEntry> {
        self.registries.iter().map(|r| r.entry.clone()).collect()
    }

    /// The registries without a `namespaceSelector`: what `POST /mutate` injects.
    pub fn unscoped_entries(&self) -> Vec<RegistryEntry> {
        self.registries
            .iter()
            .filter(|r| r.namespace_selector.is_none())
            .map(|r| r.entry.clone())
            .collect()
    }

    /// The webhook scopes: for every registry with a `namespaceSelector`, its name and the
    /// entries of every registry with an equal selector, in config order. `POST
    /// /mutate/NAME` injects exactly these: the webhook entry that calls that path is
    /// registered with the same selector (and the opt-in one), so the API server only sends
    /// Pods of namespaces that the sync task also gives these Secrets.
    pub fn scopes(&self) -> Vec<(String, Vec<RegistryEntry>)> {
        self.registries
            .iter()
            .filter_map(|r| {
                let selector = r.namespace_selector.as_ref()?;
                let entries = self
                    .registries
                    .iter()
                    .filter(|o| o.namespace_selector.as_ref() == Some(selector))
                    .map(|o| o.entry.clone())
                    .collect();
                Some((r.entry.name().to_string(), entries))
            })
            .collect()
    }

    /// Whether a namespace with these labels gets registry `r`'s Secret and injection: it
    /// matches the opt-in selector and the registry's own, if any.
    pub fn registry_applies(&self, r: &Registry, labels: &BTreeMap<String, String>) -> bool {
        self.namespace_selector.matches(labels)
            && r.namespace_selector
                .as_ref()
                .is_none_or(|s| s.matches(labels))
    }
}

/// Exactly one source, and its values checked.
fn validate_credentials(
    sources: &CredentialSources,
    path: &str,
) -> Result<CredentialSource, FieldError> {
    let [source] = sources.0.as_slice() else {
        let found: Vec<&str> = sources.0.iter().map(CredentialSource::kind).collect();
        return Err(FieldError {
            path: path.to_string(),
            message: format!(
                "exactly one of {} must be set, found {}",
                CREDENTIAL_SOURCES.join(", "),
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                }
            ),
        });
    };
    source.check(&format!("{path}.{}", source.kind()))?;
    Ok(source.clone())
}

/// A Yandex Cloud service account id: letters and digits only (e.g. `ajeq2v3pl6bu8jqnvvaa`),
/// so that a service account NAME pasted by mistake is caught here.
fn check_service_account_id(id: &str) -> Result<(), String> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a service account id (letters and digits, e.g. \"ajeq2v3pl6bu8jqnvvaa\"; `yc iam service-account get NAME --format json | jq -r .id` prints it)"
        ))
    }
}

/// Endpoints are `https://`; `http://` only to loopback (local stand-ins) and, for the
/// metadata service, to link-local addresses (169.254.169.254 is plain HTTP by design).
pub fn check_endpoint(endpoint: &str, allow_link_local_http: bool) -> Result<(), String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // Not quoted: the user info may be a password, and this message is logged.
        return Err(format!(
            "{}://…@{}: user info in the URL is not supported (it would show in logs and errors); remove the part before '@'",
            uri.scheme_str().unwrap_or_default(),
            uri.host().unwrap_or_default()
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("{endpoint:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let ip = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok();
            let loopback = host == "localhost" || ip.is_some_and(|ip| ip.is_loopback());
            let link_local = matches!(ip, Some(IpAddr::V4(v4)) if v4.is_link_local());
            if loopback || (allow_link_local_http && link_local) {
                Ok(())
            } else if allow_link_local_http {
                Err(format!(
                    "{endpoint:?}: plain http:// is allowed only for loopback and link-local addresses; use https://"
                ))
            } else {
                Err(format!(
                    "{endpoint:?}: plain http:// is allowed only for loopback addresses; use https://"
                ))
            }
        }
        _ => Err(format!("{endpoint:?} must start with https://")),
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an address (expected ip:port, e.g. \"0.0.0.0:8443\")"))
}

pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration (e.g. \"1h\", \"30m\"): {e}"
            ))
        })
    }
}

fn default_webhook_listen() -> String {
    "0.0.0.0:8443".into()
}
fn default_admin_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_tls_cert() -> PathBuf {
    "/tls/tls.crt".into()
}
fn default_tls_key() -> PathBuf {
    "/tls/tls.key".into()
}
fn default_namespace_selector() -> String {
    DEFAULT_NAMESPACE_SELECTOR.into()
}
fn default_pod_opt_out_annotation() -> String {
    DEFAULT_POD_OPT_OUT_ANNOTATION.into()
}
fn default_refresh_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_writes() -> u32 {
    20
}
fn default_instance() -> String {
    "pullsecret-injector".into()
}
fn default_max_deletions() -> u32 {
    6
}

fn default_true() -> bool {
    true
}
fn default_lease_name() -> String {
    "pullsecret-injector".into()
}
fn default_iam_endpoint() -> String {
    DEFAULT_IAM_ENDPOINT.into()
}
fn default_metadata_endpoint() -> String {
    DEFAULT_METADATA_ENDPOINT.into()
}
fn default_wif_endpoint() -> String {
    DEFAULT_WIF_ENDPOINT.into()
}
fn default_wif_token_file() -> PathBuf {
    DEFAULT_WIF_TOKEN_FILE.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
registries:
  - name: yandex
    hosts: ["cr.yandex", "registry.yandexcloud.net"]
    secretName: yc-registry-secret
    credentials:
      yandexAuthorizedKey: { file: /creds/key.json }
"#;

    fn load(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_yaml(text, Path::new("config.yaml"))
    }

    fn invalid(text: &str) -> Vec<String> {
        match load(text) {
            Err(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(ToString::to_string).collect()
            }
            Err(other) => vec![other.to_string()],
            Ok(_) => panic!("config was accepted:\n{text}"),
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let s = load(MINIMAL).expect("valid");
        assert_eq!(s.webhook_listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(s.admin_listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.tls_cert_file, Path::new("/tls/tls.crt"));
        assert_eq!(s.tls_key_file, Path::new("/tls/tls.key"));
        assert_eq!(s.pod_opt_out_annotation, "pullsecret-injector.io/skip");
        assert_eq!(
            s.namespace_selector.to_string(),
            "pullsecret-injector.io/inject=enabled"
        );
        assert_eq!(s.sync.refresh_interval, Duration::from_secs(3600));
        assert_eq!(s.sync.max_writes_per_second, 20);
        assert!(s.sync.leader_election.enabled);
        assert_eq!(s.sync.leader_election.lease_name, "pullsecret-injector");
        assert_eq!(s.sync.leader_election.lease_namespace, "");
        assert_eq!(s.registries.len(), 1);
        assert_eq!(
            s.registries[0].credentials,
            CredentialSource::YandexAuthorizedKey(YandexAuthorizedKey {
                file: "/creds/key.json".into(),
                endpoint: DEFAULT_IAM_ENDPOINT.into()
            })
        );
        assert_eq!(s.pod_report, PodReportConfig::default());
        assert!(s.pod_report.enabled && !s.pod_report.delete_owned_pods);
        assert_eq!(s.pod_report.max_deletions_per_minute, 6);
    }

    #[test]
    fn probe_hosts_default_to_every_exact_host_and_must_name_one() {
        let with = |probe: &str| {
            format!(
                "registries:\n  - name: a\n    hosts: [x.io, \"*.y.io\", \"z.io:5000/p\"]\n    secretName: s\n    credentials: {{ basic: {{ username: u, passwordFile: /p }} }}\n{probe}"
            )
        };
        let probed = |text: &str| -> Vec<String> {
            load(text).unwrap().registries[0]
                .probe_hosts
                .iter()
                .map(|h| h.auth_key().to_string())
                .collect()
        };
        assert_eq!(probed(&with("")), ["x.io", "z.io:5000/p"]);
        assert_eq!(probed(&with("    probeHosts: []\n")), Vec::<String>::new());
        assert_eq!(
            probed(&with("    probeHosts: [\"z.io:5000/p\"]\n")),
            ["z.io:5000/p"]
        );
        assert_eq!(
            invalid(&with(
                "    probeHosts: [other.io, \"*.y.io\", x.io, x.io]\n"
            )),
            [
                "registries[0].probeHosts[0]: \"other.io\" is not one of the registry's hosts (write it as in hosts)",
                "registries[0].probeHosts[1]: \"*.y.io\" is a glob: it names no host to probe",
                "registries[0].probeHosts[3]: \"x.io\" is listed twice",
            ]
        );
        assert_eq!(
            invalid(&format!(
                "podReport: {{ maxDeletionsPerMinute: 0 }}\n{}",
                with("")
            )),
            ["podReport.maxDeletionsPerMinute: must be at least 1"]
        );
    }

    #[test]
    fn full_config_from_design_parses() {
        let text = r#"
webhook:
  listen: "127.0.0.1:9443"
  tlsCertFile: /tls/a.crt
  tlsKeyFile: /tls/a.key
admin:
  listen: "[::1]:9080"
namespaceSelector: "team in (a,b),!legacy"
podOptOutAnnotation: "example.com/skip"
sync:
  refreshInterval: 30m
  maxWritesPerSecond: 5
  leaderElection: { enabled: false, leaseName: x, leaseNamespace: ops }
registries:
  - name: yandex
    hosts: ["cr.yandex", "registry.yandexcloud.net"]
    secretName: yc-registry-secret
    credentials:
      yandexMetadata: {}
  - name: corp
    hosts: ["*.corp.example.com:5000/team"]
    secretName: corp-pull
    credentials:
      basic: { username: robot, passwordFile: /creds/password }
  - name: json
    hosts: ["cr.yandex/crp1"]
    secretName: json-pull
    credentials:
      yandexJsonKey: { file: /creds/key.json }
  - name: copied
    hosts: ["ghcr.io"]
    secretName: ghcr
    credentials:
      dockerConfig: { file: /creds/.dockerconfigjson }
"#;
        let s = load(text).expect("valid");
        assert_eq!(s.sync.refresh_interval, Duration::from_secs(1800));
        assert_eq!(s.sync.max_writes_per_second, 5);
        assert!(!s.sync.leader_election.enabled);
        assert_eq!(s.admin_listen, "[::1]:9080".parse().unwrap());
        assert_eq!(s.registries.len(), 4);
        assert_eq!(
            s.registries[0].credentials,
            CredentialSource::YandexMetadata(YandexMetadata {
                endpoint: DEFAULT_METADATA_ENDPOINT.into()
            })
        );
        assert_eq!(s.registries[1].credentials.kind(), "basic");
    }

    #[test]
    fn bad_host_pattern_names_the_field_and_value() {
        let errs = invalid(
            r#"
registries:
  - name: a
    hosts: ["cr.yandex"]
    secretName: a
    credentials: { basic: { username: u, passwordFile: /p } }
  - name: b
    hosts: ["[abc]:5000"]
    secretName: b
    credentials: { basic: { username: u, passwordFile: /p } }
"#,
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(
                r#"registries[1].hosts[0]: "[abc]:5000" is not an auths key kubelet can use"#
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn duplicate_registry_and_secret_names_are_refused() {
        let errs = invalid(
            r#"
registries:
  - { name: a, hosts: [x.io], secretName: s, credentials: { basic: { username: u, passwordFile: /p } } }
  - { name: a, hosts: [y.io], secretName: s, credentials: { basic: { username: u, passwordFile: /p } } }
"#,
        );
        assert_eq!(
            errs,
            vec![
                r#"registries[1].name: "a" is already used by registries[0]"#,
                r#"registries[1].secretName: "s" is already used by registries[0]"#,
            ]
        );
    }

    #[test]
    fn retired_secret_names_are_checked_against_each_other_and_the_registries() {
        let errs = invalid(
            r#"
sync:
  retiredSecretNames: [old, Bad_Name, old, s]
registries:
  - { name: a, hosts: [x.io], secretName: s, credentials: { basic: { username: u, passwordFile: /p } } }
"#,
        );
        assert_eq!(
            errs,
            vec![
                r#"sync.retiredSecretNames[1]: "Bad_Name" is not a valid Secret name"#,
                r#"sync.retiredSecretNames[2]: "old" is listed twice"#,
                r#"sync.retiredSecretNames[3]: "s" is registries[0].secretName: a retired name is one that no registry uses any more (remove it from one of the two)"#,
            ]
        );
        let ok = load(&format!("sync: {{retiredSecretNames: [old]}}\n{MINIMAL}")).unwrap();
        assert_eq!(ok.sync.retired_secret_names, ["old"]);
        assert!(load(MINIMAL).unwrap().sync.retired_secret_names.is_empty());
    }

    #[test]
    fn unknown_field_is_an_error_with_its_path() {
        let text = MINIMAL.replace("secretName:", "secretNmae:");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("unknown field `secretNmae`"), "{e}");
        assert!(e.contains("registries[0]"), "{e}");
        let e = load(&format!("webhok: {{}}\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `webhok`"), "{e}");
    }

    #[test]
    fn missing_registries_is_an_error() {
        let e = load("webhook: {}\n").unwrap_err().to_string();
        assert!(e.contains("missing field `registries`"), "{e}");
        assert_eq!(
            invalid("registries: []\n"),
            vec!["registries: at least one registry is required"]
        );
    }

    #[test]
    fn two_credential_sources_are_refused() {
        let errs = invalid(
            r#"
registries:
  - name: a
    hosts: [x.io]
    secretName: s
    credentials:
      basic: { username: u, passwordFile: /p }
      dockerConfig: { file: /d }
"#,
        );
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("registries[0].credentials: exactly one of")
                && errs[0].ends_with("found basic, dockerConfig"),
            "{errs:?}"
        );
        let errs =
            invalid("registries: [{ name: a, hosts: [x.io], secretName: s, credentials: {} }]\n");
        assert!(errs[0].ends_with("found none"), "{errs:?}");
    }

    #[test]
    fn a_config_written_back_as_yaml_reads_the_same() {
        let text = MINIMAL.replace(
            "yandexAuthorizedKey: { file: /creds/key.json }",
            "basic: { username: u, passwordFile: /p }\n      dockerConfig: { file: /d }",
        );
        let config = Config::from_yaml(&text).unwrap();
        let again = Config::from_yaml(&serde_norway::to_string(&config).unwrap()).unwrap();
        assert_eq!(format!("{config:?}"), format!("{again:?}"));
        assert_eq!(again.registries[0].credentials.0.len(), 2);
    }

    #[test]
    fn credential_source_is_one_tagged_entry_with_errors_naming_key_and_field() {
        let with = |source: &str| {
            MINIMAL.replace("yandexAuthorizedKey: { file: /creds/key.json }", source)
        };
        let e = load(&with("vault: { path: x }")).unwrap_err().to_string();
        assert!(
            e.contains("unknown field `vault`, expected one of `yandexWorkloadIdentity`, `yandexAuthorizedKey`"),
            "{e}"
        );
        let e = load(&with("basic: { username: u, passwrdFile: /p }"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("registries[0].credentials.basic")
                && e.contains("unknown field `passwrdFile`"),
            "{e}"
        );
        let e = load(&with("yandexJsonKey: {}")).unwrap_err().to_string();
        assert!(e.contains("missing field `file`"), "{e}");
        for (source, kind) in [
            ("yandexMetadata: {}", "yandexMetadata"),
            ("yandexJsonKey: { file: /k }", "yandexJsonKey"),
            ("basic: { username: u, passwordFile: /p }", "basic"),
            ("dockerConfig: { file: /d }", "dockerConfig"),
        ] {
            let s = load(&with(source)).expect(source);
            assert_eq!(s.registries[0].credentials.kind(), kind);
            assert!(CREDENTIAL_SOURCES.contains(&kind));
        }
        assert_eq!(
            invalid(&with("yandexJsonKey: { file: \"\" }")),
            vec!["registries[0].credentials.yandexJsonKey.file: must not be empty"]
        );
    }

    #[test]
    fn workload_identity_gets_the_chart_token_file_and_the_documented_endpoint() {
        let text = MINIMAL.replace(
            "yandexAuthorizedKey: { file: /creds/key.json }",
            "yandexWorkloadIdentity: { serviceAccountId: ajeq2v3pl6bu8jqnvvaa }",
        );
        let s = load(&text).expect("valid");
        assert_eq!(
            s.registries[0].credentials,
            CredentialSource::YandexWorkloadIdentity(YandexWorkloadIdentity {
                service_account_id: "ajeq2v3pl6bu8jqnvvaa".into(),
                token_file: DEFAULT_WIF_TOKEN_FILE.into(),
                endpoint: "https://auth.yandex.cloud/oauth/token".into(),
            })
        );
        assert_eq!(CREDENTIAL_SOURCES[0], "yandexWorkloadIdentity");
        let config = Config::from_yaml(&text).unwrap();
        let again = Config::from_yaml(&serde_norway::to_string(&config).unwrap()).unwrap();
        assert_eq!(
            again.registries[0].credentials,
            config.registries[0].credentials
        );
    }

    #[test]
    fn workload_identity_problems_name_the_field() {
        let with = |source: &str| {
            MINIMAL.replace("yandexAuthorizedKey: { file: /creds/key.json }", source)
        };
        let e = load(&with("yandexWorkloadIdentity: {}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `serviceAccountId`"), "{e}");
        for (source, want) in [
            (
                "yandexWorkloadIdentity: { serviceAccountId: registry-puller }",
                r#"registries[0].credentials.yandexWorkloadIdentity.serviceAccountId: "registry-puller" is not a service account id"#,
            ),
            (
                "yandexWorkloadIdentity: { serviceAccountId: \"\" }",
                r#"registries[0].credentials.yandexWorkloadIdentity.serviceAccountId: "" is not a service account id"#,
            ),
            (
                "yandexWorkloadIdentity: { serviceAccountId: aje1, tokenFile: \"\" }",
                "registries[0].credentials.yandexWorkloadIdentity.tokenFile: must not be empty",
            ),
            (
                "yandexWorkloadIdentity: { serviceAccountId: aje1, endpoint: \"http://auth.yandex.cloud/oauth/token\" }",
                r#"registries[0].credentials.yandexWorkloadIdentity.endpoint: "http://auth.yandex.cloud/oauth/token": plain http:// is allowed only for loopback addresses"#,
            ),
        ] {
            let errs = invalid(&with(source));
            assert!(
                errs.len() == 1 && errs[0].starts_with(want),
                "{source}: {errs:?}"
            );
        }
        assert!(load(&with(
            "yandexWorkloadIdentity: { serviceAccountId: aje1, endpoint: \"http://127.0.0.1:9/oauth/token\" }"
        ))
        .is_ok());
    }

    const SCOPED: &str = r#"
namespaceSelector: "psi/inject=on"
registries:
  - { name: shared, hosts: [cr.yandex], secretName: s0, credentials: { basic: { username: u, passwordFile: /p } } }
  - { name: team-a, hosts: [a.io], secretName: sa, namespaceSelector: "team=a", credentials: { basic: { username: u, passwordFile: /p } } }
  - { name: team-b, hosts: [b.io], secretName: sb, namespaceSelector: "team in (b)", credentials: { basic: { username: u, passwordFile: /p } } }
  - { name: team-a2, hosts: [a2.io], secretName: sa2, namespaceSelector: "team = a", credentials: { basic: { username: u, passwordFile: /p } } }
  - { name: empty, hosts: [e.io], secretName: se, namespaceSelector: "", credentials: { basic: { username: u, passwordFile: /p } } }
"#;

    #[test]
    fn registries_with_equal_selectors_share_a_scope_and_unscoped_ones_go_to_mutate() {
        let s = load(SCOPED).expect("valid");
        let names = |entries: &[RegistryEntry]| -> Vec<String> {
            entries.iter().map(|e| e.name().to_string()).collect()
        };
        assert_eq!(names(&s.unscoped_entries()), ["shared", "empty"]);
        let scopes: Vec<(String, Vec<String>)> = s
            .scopes()
            .into_iter()
            .map(|(scope, entries)| (scope, names(&entries)))
            .collect();
        assert_eq!(
            scopes,
            [
                (
                    "team-a".to_string(),
                    vec!["team-a".to_string(), "team-a2".to_string()]
                ),
                ("team-b".to_string(), vec!["team-b".to_string()]),
                (
                    "team-a2".to_string(),
                    vec!["team-a".to_string(), "team-a2".to_string()]
                ),
            ]
        );
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let applies = |pairs: &[(&str, &str)]| -> Vec<&str> {
            s.registries
                .iter()
                .filter(|r| s.registry_applies(r, &labels(pairs)))
                .map(|r| r.entry.name())
                .collect()
        };
        assert_eq!(
            applies(&[("psi/inject", "on"), ("team", "a")]),
            ["shared", "team-a", "team-a2", "empty"]
        );
        assert_eq!(
            applies(&[("psi/inject", "on"), ("team", "b")]),
            ["shared", "team-b", "empty"]
        );
        assert_eq!(applies(&[("psi/inject", "on")]), ["shared", "empty"]);
        assert_eq!(
            applies(&[("team", "a")]),
            Vec::<&str>::new(),
            "not opted in"
        );
    }

    #[test]
    fn registry_selector_problems_name_the_field() {
        let errs = invalid(&SCOPED.replace("\"team in (b)\"", "\"team in b\""));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(
                r#"registries[2].namespaceSelector: "team in b" is not a label selector"#
            ),
            "{errs:?}"
        );
        let errs = invalid(&SCOPED.replace("name: team-a,", "name: Team_A,"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(r#"registries[1].name: "Team_A": a registry with a namespaceSelector is served at the webhook path /mutate/NAME"#),
            "{errs:?}"
        );
        // Unscoped registries keep the wider name rules.
        assert!(load(&SCOPED.replace("name: shared,", "name: Shared_1,")).is_ok());
    }

    #[test]
    fn plain_http_endpoint_is_only_for_loopback() {
        for (endpoint, ok) in [
            ("https://iam.example.com/t", true),
            ("http://127.0.0.1:9999/t", true),
            ("http://localhost:9999/t", true),
            ("http://[::1]:9999/t", true),
            ("http://iam.api.cloud.yandex.net/iam/v1/tokens", false),
            ("http://169.254.169.254/x", false),
            ("ftp://127.0.0.1/x", false),
            ("not a url", false),
        ] {
            let text = MINIMAL.replace(
                "{ file: /creds/key.json }",
                &format!("{{ file: /k, endpoint: {endpoint:?} }}"),
            );
            let r = load(&text);
            assert_eq!(
                r.is_ok(),
                ok,
                "{endpoint}: {:?}",
                r.err().map(|e| e.to_string())
            );
            if let Err(e) = r {
                let e = e.to_string();
                assert!(
                    e.contains("registries[0].credentials.yandexAuthorizedKey.endpoint"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn metadata_endpoint_may_be_link_local_http() {
        assert!(check_endpoint(DEFAULT_METADATA_ENDPOINT, true).is_ok());
        assert!(check_endpoint("http://10.0.0.1/x", true).is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errs = invalid(
            r#"
webhook: { listen: "8443" }
admin: { listen: "0.0.0.0:x" }
namespaceSelector: "a in b"
sync: { refreshInterval: 1s, maxWritesPerSecond: 0 }
registries:
  - { name: "", hosts: [], secretName: "Bad_Name", credentials: { basic: { username: "a:b", passwordFile: /p } } }
"#,
        );
        let paths: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            vec![
                "webhook.listen",
                "admin.listen",
                "namespaceSelector",
                "sync.refreshInterval",
                "sync.maxWritesPerSecond",
                "registries[0].name",
                "registries[0].secretName",
                "registries[0].hosts",
                "registries[0].credentials.basic.username",
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn bad_duration_names_the_value() {
        let e = load(&format!("sync: {{ refreshInterval: soon }}\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"soon\" is not a duration"), "{e}");
    }

    #[test]
    fn same_port_for_webhook_and_admin_is_refused() {
        let errs = invalid(&format!(
            "webhook: {{ listen: \"0.0.0.0:8443\" }}\nadmin: {{ listen: \"127.0.0.1:8443\" }}\n{MINIMAL}"
        ));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("admin.listen:"), "{errs:?}");
    }

    #[test]
    fn file_that_cannot_be_read_is_named() {
        let e = Settings::load(Path::new("/nonexistent/config.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("reading config file /nonexistent/config.yaml:"),
            "{e}"
        );
    }
}
