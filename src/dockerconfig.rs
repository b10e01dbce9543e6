//! Build and parse `.dockerconfigjson`, the data of a `kubernetes.io/dockerconfigjson` Secret.
//!
//! Building is deterministic (hosts sorted, fields in a fixed order, compact JSON) so that
//! the sync task can skip a write by comparing bytes. Parsing follows kubelet: only `auths`
//! is read (kubelet runs no credential helpers), and `auth`, when present, wins over
//! `username`/`password` and is split at the first `:`.
//!
//! Error messages never quote a value from the file: they name the host key and the field.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Serialize;
use serde_json::Value;

/// Standard alphabet; padding optional when decoding (some tools strip it), always
/// written when encoding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One `auths` entry: the login kubelet uses for one host key.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthEntry {
    /// Registry username (never contains `:` when it came from an `auth` field).
    pub username: String,
    /// Registry password or token.
    pub password: String,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthEntry")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl AuthEntry {
    /// `base64(username:password)`, standard alphabet with padding, as kubelet reads it.
    pub fn auth(&self) -> String {
        STANDARD.encode(format!("{}:{}", self.username, self.password))
    }
}

/// A docker config reduced to what kubelet reads: the `auths` map by host key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    /// Entries keyed by the host key exactly as written (scheme, port, path kept).
    pub auths: BTreeMap<String, AuthEntry>,
}

/// Why bytes are not a usable `.dockerconfigjson`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerConfigError {
    /// Not JSON at all.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but without an `auths` object at the top level.
    #[error("no \"auths\" object at the top level")]
    NoAuths,
    /// An `auths` value that is not an object.
    #[error("auths entry {host:?} is not an object")]
    EntryNotObject {
        /// The host key.
        host: String,
    },
    /// A field that should be a string is something else.
    #[error("auths entry {host:?}: field {field:?} is not a string")]
    NotString {
        /// The host key.
        host: String,
        /// The field name.
        field: &'static str,
    },
    /// `auth` does not decode as base64.
    #[error("auths entry {host:?}: field \"auth\" is not valid base64")]
    AuthNotBase64 {
        /// The host key.
        host: String,
    },
    /// `auth` decodes to bytes that are not UTF-8.
    #[error("auths entry {host:?}: field \"auth\" does not decode to UTF-8 text")]
    AuthNotUtf8 {
        /// The host key.
        host: String,
    },
    /// `auth` decodes to text without the `:` separator.
    #[error("auths entry {host:?}: field \"auth\" has no ':' between username and password")]
    AuthNoColon {
        /// The host key.
        host: String,
    },
    /// Neither `auth` nor `username` and `password`.
    #[error(
        "auths entry {host:?} has no credentials: it needs \"auth\" or \"username\" and \"password\" (kubelet runs no credential helpers)"
    )]
    NoCredentials {
        /// The host key.
        host: String,
    },
}

#[derive(Serialize)]
struct OutConfig<'a> {
    auths: BTreeMap<&'a str, OutEntry<'a>>,
}

// Field order is the serialisation order: keep it sorted.
#[derive(Serialize)]
struct OutEntry<'a> {
    auth: String,
    password: &'a str,
    username: &'a str,
}

impl DockerConfig {
    /// The same login for every host key (duplicates collapse).
    pub fn single<S: AsRef<str>>(hosts: &[S], username: &str, password: &str) -> Self {
        let entry = AuthEntry {
            username: username.to_string(),
            password: password.to_string(),
        };
        Self {
            auths: hosts
                .iter()
                .map(|h| (h.as_ref().to_string(), entry.clone()))
                .collect(),
        }
    }

    /// Compact JSON with sorted keys: equal configs give equal bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let out = OutConfig {
            auths: self
                .auths
                .iter()
                .map(|(host, e)| {
                    (
                        host.as_str(),
                        OutEntry {
                            auth: e.auth(),
                            password: &e.password,
                            username: &e.username,
                        },
                    )
                })
                .collect(),
        };
        serde_json::to_vec(&out).expect("a map of strings always serialises to JSON")
    }
}

/// The `.dockerconfigjson` bytes giving `username`/`password` for every host key.
///
/// `username` must not contain `:` (kubelet splits `auth` at the first one); the
/// credential types guarantee that.
pub fn build<S: AsRef<str>>(hosts: &[S], username: &str, password: &str) -> Vec<u8> {
    DockerConfig::single(hosts, username, password).to_vec()
}

/// Parse a `.dockerconfigjson` (or a `~/.docker/config.json`) the way kubelet reads it.
///
/// Other top-level fields (`credsStore`, `credHelpers`, `HttpHeaders`...) and other entry
/// fields (`email`, `identitytoken`) are ignored. Every `auths` entry must carry
/// credentials.
pub fn parse(bytes: &[u8]) -> Result<DockerConfig, DockerConfigError> {
    // Through `Value` so that no serde message can quote a (secret) value.
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| DockerConfigError::NotJson(e.to_string()))?;
    let auths = value
        .get("auths")
        .and_then(Value::as_object)
        .ok_or(DockerConfigError::NoAuths)?;
    let mut out = DockerConfig::default();
    for (host, entry) in auths {
        let entry = entry
            .as_object()
            .ok_or_else(|| DockerConfigError::EntryNotObject { host: host.clone() })?;
        let field = |field: &'static str| -> Result<Option<&str>, DockerConfigError> {
            match entry.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(DockerConfigError::NotString {
                    host: host.clone(),
                    field,
                }),
            }
        };
        let auth = field("auth")?.filter(|a| !a.is_empty());
        let username = field("username")?;
        let password = field("password")?;
        let parsed = match (auth, username, password) {
            (Some(auth), _, _) => split_auth(host, auth)?,
            (None, Some(username), Some(password)) if !username.is_empty() => AuthEntry {
                username: username.to_string(),
                password: password.to_string(),
            },
            _ => return Err(DockerConfigError::NoCredentials { host: host.clone() }),
        };
        out.auths.insert(host.clone(), parsed);
    }
    Ok(out)
}

fn split_auth(host: &str, auth: &str) -> Result<AuthEntry, DockerConfigError> {
    let host = || host.to_string();
    let decoded = LENIENT
        .decode(auth.trim())
        .map_err(|_| DockerConfigError::AuthNotBase64 { host: host() })?;
    let text =
        String::from_utf8(decoded).map_err(|_| DockerConfigError::AuthNotUtf8 { host: host() })?;
    let (username, password) = text
        .split_once(':')
        .ok_or_else(|| DockerConfigError::AuthNoColon { host: host() })?;
    Ok(AuthEntry {
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(u: &str, p: &str) -> AuthEntry {
        AuthEntry {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn build_writes_username_password_and_padded_auth_for_every_host() {
        let bytes = build(&["registry.yandexcloud.net", "cr.yandex"], "iam", "t1.abc");
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"auths":{"cr.yandex":{"auth":"aWFtOnQxLmFiYw==","password":"t1.abc","username":"iam"},"registry.yandexcloud.net":{"auth":"aWFtOnQxLmFiYw==","password":"t1.abc","username":"iam"}}}"#
        );
    }

    #[test]
    fn build_is_deterministic_whatever_the_host_order() {
        let a = build(&["b.io", "a.io", "c.io:5000/x"], "u", "p");
        let b = build(&["c.io:5000/x", "a.io", "b.io"], "u", "p");
        assert_eq!(a, b);
        assert_eq!(a, build(&["c.io:5000/x", "a.io", "b.io"], "u", "p"));
    }

    #[test]
    fn auth_is_standard_base64_of_username_colon_password() {
        assert_eq!(entry("json_key", "{}").auth(), "anNvbl9rZXk6e30=");
        assert_eq!(entry("a", "b").auth(), "YTpi");
        // Standard alphabet, not URL-safe: bytes 0xfb 0xff encode with '+' and '/'.
        assert_eq!(entry("u", "\u{fbff}").auth(), "dTrvr78=");
        assert_eq!(entry("u", "??>").auth(), "dTo/Pz4=");
    }

    #[test]
    fn password_with_colons_survives_the_round_trip() {
        let bytes = build(&["x.io"], "robot", "a:b::c:");
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.auths["x.io"], entry("robot", "a:b::c:"));
    }

    #[test]
    fn unicode_username_and_password_survive_the_round_trip() {
        let bytes = build(&["реестр.example"], "пользователь", "пароль🔑\"\\\n");
        let parsed = parse(&bytes).unwrap();
        assert_eq!(
            parsed.auths["реестр.example"],
            entry("пользователь", "пароль🔑\"\\\n")
        );
    }

    #[test]
    fn entry_with_only_auth_is_split_at_the_first_colon() {
        let cfg = parse(br#"{"auths":{"x.io":{"auth":"dXNlcjpwYTpzcw=="}}}"#).unwrap();
        assert_eq!(cfg.auths["x.io"], entry("user", "pa:ss"));
    }

    #[test]
    fn auth_wins_over_username_and_password_like_kubelet() {
        let cfg = parse(
            br#"{"auths":{"x.io":{"username":"other","password":"nope","auth":"dXNlcjpwYXNz"}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.auths["x.io"], entry("user", "pass"));
    }

    #[test]
    fn auth_without_padding_is_accepted() {
        let cfg = parse(br#"{"auths":{"x.io":{"auth":"dXNlcjpwYXNzMQ"}}}"#).unwrap();
        assert_eq!(cfg.auths["x.io"], entry("user", "pass1"));
    }

    #[test]
    fn entry_with_only_username_and_password_is_read() {
        let cfg = parse(br#"{"auths":{"x.io":{"username":"u","password":"p"}}}"#).unwrap();
        assert_eq!(cfg.auths["x.io"], entry("u", "p"));
    }

    #[test]
    fn docker_login_config_file_with_tabs_and_scheme_keys_parses() {
        // As written by `docker login` (tab-indented, legacy Docker Hub key).
        let text = "{\n\t\"auths\": {\n\t\t\"https://index.docker.io/v1/\": {\n\t\t\t\"auth\": \"ZG9ja2VydXNlcjpzM2NyM3Q=\"\n\t\t},\n\t\t\"cr.yandex\": {\n\t\t\t\"auth\": \"aWFtOnQxLjlldWVsWnFFdGVyLnRva2Vu\"\n\t\t}\n\t},\n\t\"HttpHeaders\": {\n\t\t\"User-Agent\": \"Docker-Client/24.0.7 (linux)\"\n\t}\n}";
        let cfg = parse(text.as_bytes()).unwrap();
        assert_eq!(
            cfg.auths["https://index.docker.io/v1/"],
            entry("dockeruser", "s3cr3t")
        );
        assert_eq!(cfg.auths["cr.yandex"], entry("iam", "t1.9euelZqEter.token"));
    }

    #[test]
    fn kubectl_create_secret_docker_registry_output_parses() {
        // `kubectl create secret docker-registry --docker-server=cr.yandex
        //  --docker-username=json_key --docker-password="$(cat key.json)" --docker-email=a@b`
        let text = r#"{"auths":{"cr.yandex":{"username":"json_key","password":"{\n   \"id\": \"aje\"\n}","email":"a@b","auth":"anNvbl9rZXk6ewogICAiaWQiOiAiYWplIgp9"}}}"#;
        let cfg = parse(text.as_bytes()).unwrap();
        assert_eq!(
            cfg.auths["cr.yandex"],
            entry("json_key", "{\n   \"id\": \"aje\"\n}")
        );
    }

    #[test]
    fn podman_auth_json_with_identity_token_fields_parses() {
        let text = r#"{
            "auths": {
                "quay.io": { "auth": "cm9ib3QrY2k6VE9LRU4=", "identitytoken": "" },
                "localhost:5000": { "auth": "YWRtaW46YWRtaW4=" }
            }
        }"#;
        let cfg = parse(text.as_bytes()).unwrap();
        assert_eq!(cfg.auths.len(), 2);
        assert_eq!(cfg.auths["quay.io"], entry("robot+ci", "TOKEN"));
        assert_eq!(cfg.auths["localhost:5000"], entry("admin", "admin"));
    }

    #[test]
    fn config_relying_on_a_credential_store_is_refused_with_the_host() {
        let text = r#"{"auths":{"ghcr.io":{}},"credsStore":"desktop"}"#;
        let e = parse(text.as_bytes()).unwrap_err();
        assert_eq!(
            e,
            DockerConfigError::NoCredentials {
                host: "ghcr.io".into()
            }
        );
        assert!(e.to_string().contains("credential helpers"), "{e}");
    }

    #[test]
    fn empty_auths_object_is_a_valid_config() {
        assert_eq!(parse(br#"{"auths":{}}"#).unwrap(), DockerConfig::default());
    }

    #[test]
    fn malformed_configs_give_clear_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not valid JSON"),
            (b"{", "not valid JSON"),
            (b"[]", r#"no "auths" object"#),
            (br#"{"x.io":{"auth":"YTpi"}}"#, r#"no "auths" object"#),
            (br#"{"auths":[]}"#, r#"no "auths" object"#),
            (
                br#"{"auths":{"x.io":"YTpi"}}"#,
                r#"auths entry "x.io" is not an object"#,
            ),
            (
                br#"{"auths":{"x.io":{"auth":5}}}"#,
                r#"auths entry "x.io": field "auth" is not a string"#,
            ),
            (
                br#"{"auths":{"x.io":{"auth":"%%%"}}}"#,
                r#"auths entry "x.io": field "auth" is not valid base64"#,
            ),
            (
                br#"{"auths":{"x.io":{"auth":"/w=="}}}"#,
                r#"auths entry "x.io": field "auth" does not decode to UTF-8 text"#,
            ),
            (
                br#"{"auths":{"x.io":{"auth":"dXNlcg=="}}}"#,
                r#"auths entry "x.io": field "auth" has no ':'"#,
            ),
            (
                br#"{"auths":{"x.io":{"username":"u"}}}"#,
                r#"auths entry "x.io" has no credentials"#,
            ),
            (
                br#"{"auths":{"x.io":{"password":"p"}}}"#,
                r#"auths entry "x.io" has no credentials"#,
            ),
            (
                br#"{"auths":{"x.io":{"username":"","password":"p"}}}"#,
                r#"auths entry "x.io" has no credentials"#,
            ),
        ];
        for (input, want) in cases {
            let e = parse(input).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "{:?}: got {e:?}, want {want:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn errors_never_quote_the_secret_values() {
        for input in [
            br#"{"auths":{"x.io":{"auth":"c2VjcmV0LXZhbHVl"}}}"#.as_slice(),
            br#"{"auths":{"x.io":{"auth":"secret-value"}}}"#,
            br#"{"auths":{"x.io":{"password":"secret-value"}}}"#,
            br#"{"auths":{"x.io":{"username":"u","password":["secret-value"]}}}"#,
            br#"{"auths":{"x.io":"secret-value"}}"#,
            br#"{"auths":"secret-value"}"#,
            br#"{"auths":{"x.io":{"auth":"secret-value"}} secret-value"#,
        ] {
            let e = parse(input).unwrap_err();
            assert!(!e.to_string().contains("secret"), "{e}");
            assert!(!format!("{e:?}").contains("secret"), "{e:?}");
        }
    }

    #[test]
    fn debug_of_an_entry_hides_the_password() {
        let d = format!("{:?}", entry("robot", "hunter2"));
        assert!(d.contains("robot") && !d.contains("hunter2"), "{d}");
    }

    proptest! {
        #[test]
        fn any_login_round_trips(
            hosts in proptest::collection::btree_set("\\PC{1,20}", 0..4),
            username in "[^:]{1,20}",
            password in "\\PC{0,40}",
        ) {
            let hosts: Vec<String> = hosts.into_iter().collect();
            let bytes = build(&hosts, &username, &password);
            let parsed = parse(&bytes).unwrap();
            prop_assert_eq!(parsed.auths.len(), hosts.len());
            for h in &hosts {
                prop_assert_eq!(&parsed.auths[h], &entry(&username, &password));
            }
            prop_assert_eq!(parsed.to_vec(), bytes);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }
    }
}
