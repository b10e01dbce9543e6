//! Secrets never leak: the real binary at `RUST_LOG=trace` with every kind of credential,
//! and nothing it prints (stdout, stderr) or exports (`/metrics`) contains a token, a
//! password, the private key or the authorized key file, in clear or in base64, nor a
//! signed JWT (a bearer assertion for an hour).
//!
//! `check` runs here without a control plane; the full `run` (webhook and sync against the
//! real API server, Secrets written, a review answered) is an end-to-end test that
//! `scripts/test.sh` runs with the local control plane.

mod cluster;
mod common;
mod fixture;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::iam::{IamStandIn, TestKey};
use common::metadata::MetadataStandIn;

const IAM_TOKEN: &str = "t1.9euelZqLEAKEDIAMTOKENzZ6Xk4-Vx";
const VM_TOKEN: &str = "t1.9euelZqVMTOKENLEAKEDq3mZ6Xk";
const PASSWORD: &str = "p@ss-LEAKED-9f2b";
const DOCKER_PASSWORD: &str = "docker-LEAKED-pw-71c0";

/// Every secret value in the forms it could leak in.
struct Secrets {
    needles: Vec<(String, String)>,
}

impl Secrets {
    fn new(key: &TestKey, key_file_json: &str) -> Self {
        let mut needles = Vec::new();
        let mut add = |what: &str, s: &str| needles.push((what.to_string(), s.to_string()));
        for (what, value) in [
            ("IAM token", IAM_TOKEN),
            ("VM token", VM_TOKEN),
            ("password", PASSWORD),
            ("docker config password", DOCKER_PASSWORD),
        ] {
            add(what, value);
            add(&format!("{what} in base64"), &STANDARD.encode(value));
            for user in ["iam", "robot", "u"] {
                add(
                    &format!("{what} as docker auth of {user}"),
                    &STANDARD.encode(format!("{user}:{value}")),
                );
            }
        }
        // The private key: every line of its PEM body, and its DER in one piece.
        for line in key.private_pkcs8_pem.lines() {
            if !line.starts_with("-----") && line.len() >= 32 {
                add("a line of the private key", line);
            }
        }
        add("PEM private key", "PRIVATE KEY-----");
        let der: String = key
            .private_pkcs8_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        add("the private key's base64 DER", &der[..200]);
        // The key file (the yandexJsonKey password) in base64, and base64 of json_key:<file>.
        add(
            "the key file in base64",
            &STANDARD.encode(key_file_json)[..200],
        );
        add(
            "json_key docker auth",
            &STANDARD.encode(format!("json_key:{key_file_json}"))[..200],
        );
        // Any JWT we sign starts with this header.
        let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"PS256","#);
        add("a signed JWT", &header[..30]);
        Self { needles }
    }

    fn assert_absent(&self, where_: &str, text: &str) {
        for (what, needle) in &self.needles {
            assert!(
                !text.contains(needle.as_str()),
                "{what} leaked in {where_}: {needle:?} found in:\n{}",
                excerpt(text, needle)
            );
        }
    }
}

fn excerpt(text: &str, needle: &str) -> String {
    let i = text.find(needle).unwrap_or(0);
    let start = text[..i]
        .char_indices()
        .rev()
        .nth(300)
        .map_or(0, |(j, _)| j);
    let end = (i + needle.len() + 300).min(text.len());
    let end = (end..=text.len())
        .find(|&j| text.is_char_boundary(j))
        .unwrap_or(text.len());
    text[start..end].to_string()
}

/// Files for every credential source; returns the config and the key file JSON.
fn credential_files(
    dir: &Path,
    key: &TestKey,
    iam_endpoint: &str,
    vm_endpoint: &str,
) -> (fixture::Config, String) {
    let key_file = key.write_key_file(dir, true);
    let key_json = std::fs::read_to_string(&key_file).unwrap();
    let password = dir.join("password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let docker = dir.join("dockerconfig.json");
    std::fs::write(
        &docker,
        format!(r#"{{"auths":{{"registry.example.com":{{"username":"u","password":"{DOCKER_PASSWORD}"}}}}}}"#),
    )
    .unwrap();
    let config = fixture::config(vec![
        fixture::registry(
            "yandex",
            &fixture::YANDEX_HOSTS,
            "leak-yc",
            fixture::authorized_key(&key_file, iam_endpoint),
        ),
        fixture::registry(
            "vm",
            &["vm.example.com"],
            "leak-vm",
            fixture::metadata(vm_endpoint),
        ),
        fixture::registry(
            "jsonkey",
            &["json.example.com"],
            "leak-json",
            fixture::json_key(&key_file),
        ),
        fixture::registry(
            "corp",
            &["corp.example.com"],
            "leak-corp",
            fixture::basic("robot", &password),
        ),
        fixture::registry(
            "docker",
            &["registry.example.com"],
            "leak-docker",
            fixture::docker_config(&docker),
        ),
    ]);
    (config, key_json)
}

#[tokio::test]
async fn check_at_trace_prints_no_secret_for_any_credential_source() {
    let iam = IamStandIn::start().await;
    let key = TestKey::shared(2048);
    iam.register(key);
    iam.set_token(IAM_TOKEN);
    let vm = MetadataStandIn::start().await;
    vm.set_token(VM_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let (registries, key_json) = credential_files(dir.path(), key, &iam.endpoint(), &vm.endpoint());
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, serde_norway::to_string(&registries).unwrap()).unwrap();
    let secrets = Secrets::new(key, &key_json);

    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pullsecret-injector"))
            .args(["--log-format", "json", "check", "--config"])
            .arg(&config)
            .env("RUST_LOG", "trace")
            .env_remove("PULLSECRET_INJECTOR_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": ok")).count(),
        6,
        "{stdout}"
    );
    assert!(
        stderr.lines().count() > 20,
        "trace logging is on (otherwise this proves little):\n{stderr}"
    );
    assert_eq!(iam.issued(), 1);
    secrets.assert_absent("check's stdout", &stdout);
    secrets.assert_absent("check's stderr", &stderr);
}

/// A POST of `body` to the webhook over TLS; the status line.
async fn review(port: u16, ca_pem: &[u8], body: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(
        format!(
            "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn run_at_trace_never_logs_or_exports_a_secret() {
    let client = cluster::admin_client().await;
    let id = cluster::unique("leak");
    let iam = IamStandIn::start().await;
    let key = TestKey::shared(2048);
    iam.register(key);
    iam.set_token(IAM_TOKEN);
    let vm = MetadataStandIn::start().await;
    vm.set_token(VM_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let certs = cluster::Certs::generate(&dir.path().join("certs"));
    let (mut config, key_json) = credential_files(dir.path(), key, &iam.endpoint(), &vm.endpoint());
    let secrets = Secrets::new(key, &key_json);
    let label = "pullsecret-injector.io/e2e-leak";
    config.namespace_selector = format!("{label}={id}");
    config.sync.instance = id.clone();
    config.sync.leader_election.enabled = false;
    let ns = format!("{id}-a");
    cluster::create_namespace(&client, &ns, &[(label, &id)]).await;
    let kubeconfig: PathBuf = cluster::kubeconfig_path();
    let injector = cluster::Injector::start(
        dir.path(),
        &certs,
        config,
        &[],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("RUST_LOG", "trace"),
        ],
    );
    // All five Secrets written with the real values (so the values did pass through).
    let api = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns);
    for (name, needle) in [
        ("leak-yc", IAM_TOKEN),
        ("leak-vm", VM_TOKEN),
        ("leak-json", "PRIVATE KEY"),
        ("leak-corp", PASSWORD),
        ("leak-docker", DOCKER_PASSWORD),
    ] {
        cluster::poll(
            &format!("Secret {ns}/{name}"),
            Duration::from_secs(30),
            || async {
                let s = api.get_opt(name).await.ok()??;
                let data = s.data?.remove(".dockerconfigjson")?.0;
                let text = String::from_utf8(data).ok()?;
                let auths: serde_json::Value = serde_json::from_str(&text).ok()?;
                auths.to_string().contains(needle).then_some(())
            },
        )
        .await;
    }
    // A review that injects, and one that is refused.
    let fixture = include_str!("fixtures/admission-review-pod-create.json");
    assert_eq!(
        review(injector.webhook_port, &certs.ca_pem, fixture).await,
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        review(injector.webhook_port, &certs.ca_pem, "{").await,
        "HTTP/1.1 400 Bad Request"
    );
    let (status, metrics) = injector.admin_get("/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("pullsecret_injector_credential_refresh_total"));
    let log = injector.log_text();
    assert!(log.lines().count() > 50, "trace logging is on:\n{log}");
    secrets.assert_absent("/metrics", &metrics);
    secrets.assert_absent("the injector's stderr at trace", &log);
    let _ = api
        .delete_collection(&Default::default(), &Default::default())
        .await;
    let _ = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .delete(&ns, &Default::default())
        .await;
}
