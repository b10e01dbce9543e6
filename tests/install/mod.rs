//! Support for `tests/e2e_install.rs`: the Helm chart installed, as a user would, into the
//! whole cluster that `scripts/cluster.sh up` runs in its own network namespace, with the
//! image built from the repository's Dockerfile by `scripts/image.sh`.
//!
//! The test process itself runs INSIDE that namespace (`scripts/cluster.sh exec DIR cargo
//! test ...`, as `scripts/test.sh` does): it reaches the API server, the registry and the
//! Pods at the cluster's own addresses, and the IAM stand-in it starts listens on the node's
//! address, where the injector's Pods reach it. Like the other end-to-end tests these are
//! `#[ignore]`d in a plain `cargo test` and FAIL, with the reason, when the cluster is not there.

#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodSchedulingGate, PodSpec};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// Print a line that shows up in CI logs even when the test passes.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "[install-e2e] {line}");
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the install tests need the whole cluster of scripts/cluster.sh and \
             must run inside its network namespace, with the image built by scripts/image.sh: run \
             scripts/test.sh (or: scripts/cluster.sh up DIR; scripts/image.sh build IMG.tar; \
             PSI_IMAGE_ARCHIVE=IMG.tar scripts/cluster.sh exec DIR cargo test --test e2e_install -- --include-ignored)"
        )
    })
}

/// What `scripts/cluster.sh up` wrote into `DIR/env`, plus the image archive.
pub struct ClusterEnv {
    /// The node's address on the cluster bridge (the IAM stand-in listens there).
    pub node_ip: String,
    /// `user:password` that may push to the cluster's registry.
    pub push_creds: String,
    /// The OCI archive `scripts/image.sh build` wrote.
    pub image_archive: PathBuf,
    /// The network namespace this process must be in.
    pub netns: PathBuf,
}

impl ClusterEnv {
    /// The cluster, or a failure that says how to get one. Checks that this process runs in
    /// the cluster's network namespace.
    pub fn from_env() -> Self {
        assert_eq!(
            env("PSI_CLUSTER"),
            "1",
            "PSI_CLUSTER is not 1: not a cluster env"
        );
        let netns = PathBuf::from(env("PSI_CLUSTER_NETNS"));
        let mine = std::fs::metadata("/proc/self/ns/net").map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        });
        let theirs = std::fs::metadata(&netns).map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        });
        assert!(
            mine.is_ok() && mine.ok().map(|m| m.1) == theirs.ok().map(|t| t.1),
            "this test process is not in the cluster's network namespace {}: run it with \
             scripts/cluster.sh exec DIR cargo test ...",
            netns.display()
        );
        let image_archive = PathBuf::from(env("PSI_IMAGE_ARCHIVE"));
        assert!(
            image_archive.is_file(),
            "PSI_IMAGE_ARCHIVE={} does not exist: build it with scripts/image.sh build",
            image_archive.display()
        );
        Self {
            node_ip: env("PSI_CLUSTER_NODE_IP"),
            push_creds: env("PSI_CLUSTER_PUSH_CREDS"),
            image_archive,
            netns,
        }
    }

    /// `(user, password)` of the push user.
    pub fn push_user(&self) -> (&str, &str) {
        self.push_creds
            .split_once(':')
            .expect("PSI_CLUSTER_PUSH_CREDS is user:password")
    }
}

/// Run `program args...`; returns its output (never panics on a non-zero exit).
pub fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

/// Run and require success; returns stdout. The failure names the command and its stderr.
pub fn run_ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n{}{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl ARGS` as admin (KUBECONFIG from the cluster env); returns stdout.
pub fn kubectl(args: &[&str]) -> String {
    run_ok(Path::new("kubectl"), args)
}

/// `helm ARGS` (the project's helm, `PSI_HELM`); returns stdout.
pub fn helm(args: &[&str]) -> String {
    run_ok(&crate::cluster::helm(), args)
}

/// `scripts/image.sh inspect ARCHIVE` as JSON: `config`, `files`, `manifestDigest`.
pub fn inspect_image(archive: &Path) -> serde_json::Value {
    let out = run_ok(
        &crate::cluster::repo().join("scripts/image.sh"),
        &["inspect", archive.to_str().expect("UTF-8 path")],
    );
    serde_json::from_str(&out).expect("scripts/image.sh inspect prints JSON")
}

/// Copy the image archive into the cluster's registry as `repo:tag` (what the node pulls as
/// `cr.yandex/repo:tag`).
pub fn push_image(env: &ClusterEnv, repo_tag: &str) {
    let registry = std::env::var("PSI_TEST_REGISTRY").expect("PSI_TEST_REGISTRY");
    let cert_dir = std::env::var("PSI_TEST_REGISTRY_CERT_DIR").expect("PSI_TEST_REGISTRY_CERT_DIR");
    run_ok(
        Path::new("skopeo"),
        &[
            "copy",
            "-q",
            "--dest-cert-dir",
            &cert_dir,
            "--dest-creds",
            &env.push_creds,
            &format!("oci-archive:{}", env.image_archive.display()),
            &format!("docker://{registry}/{repo_tag}"),
        ],
    );
}

/// A CA and a serving certificate for `ips` (certs/generate.sh), in `dir`.
pub fn serving_certs(dir: &Path, service: &str, namespace: &str, ips: &[&str]) -> PathBuf {
    let mut args = vec![
        dir.to_str().expect("UTF-8 path").to_string(),
        "--service".into(),
        service.into(),
        "--namespace".into(),
        namespace.into(),
    ];
    for ip in ips {
        args.extend(["--ip".to_string(), ip.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&crate::cluster::repo().join("certs/generate.sh"), &args);
    dir.to_path_buf()
}

/// TLS in front of a plain-HTTP server: accepts TLS (HTTP/1.1 by ALPN) on `listen` with the
/// certificate in `certs` and forwards the bytes to `backend`. The IAM stand-in listens on
/// loopback in plain HTTP, and the injector accepts only `https://` for an address that is not
/// loopback: this is what the Pods call, as they would call the real service's TLS endpoint.
pub struct TlsFront {
    /// The address it accepts on.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    /// Start on `listen` (port 0 = any).
    pub async fn start(listen: &str, certs: &Path, backend: SocketAddr) -> Self {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(certs.join("tls.crt"))
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .expect("tls.crt");
        let key = PrivateKeyDer::from_pem_file(certs.join("tls.key")).expect("tls.key");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the defaults")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key match");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("binding {listen}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self { addr, task }
    }
}

/// A Pod that the scheduler holds back (a scheduling gate nobody removes): created and
/// admitted like any other, never run. Creating hundreds of them loads the API server and
/// the webhook only, not the node.
pub fn gated_pod(name: &str, image: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            scheduling_gates: Some(vec![PodSchedulingGate {
                name: "pullsecret-injector.io/e2e-hold".into(),
            }]),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "app".into(),
                image: Some(image.to_string()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a [`PodLoad`] saw.
#[derive(Debug, Default, Clone)]
pub struct LoadCount {
    /// Pods the API server created.
    pub created: usize,
    /// ... of which carry the expected Secret.
    pub injected: usize,
    /// Names of created Pods without it.
    pub missing: Vec<String>,
    /// Create calls that failed, with the error.
    pub errors: Vec<String>,
    /// The rate actually achieved (created / elapsed).
    pub rate: f64,
}

/// Creates gated Pods in `namespace` at `per_second` until stopped, each in its own task
/// (a slow call does not slow the schedule), and checks every created Pod for `secret`.
pub struct PodLoad {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<LoadCount>,
}

impl PodLoad {
    /// Start creating.
    pub fn start(
        client: &Client,
        namespace: &str,
        image: &str,
        secret: &str,
        per_second: u32,
    ) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let api = Api::<Pod>::namespaced(client.clone(), namespace);
        let image = image.to_string();
        let secret = secret.to_string();
        let period = Duration::from_secs(1) / per_second;
        let task = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut calls = tokio::task::JoinSet::new();
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                n += 1;
                let api = api.clone();
                let pod = gated_pod(&format!("load-{n}"), &image);
                calls.spawn(async move { api.create(&PostParams::default(), &pod).await });
            }
            let elapsed = t0.elapsed();
            let mut count = LoadCount::default();
            while let Some(done) = calls.join_next().await {
                match done.expect("create task") {
                    Ok(p) => {
                        count.created += 1;
                        if crate::node::pull_secrets(&p).contains(&secret) {
                            count.injected += 1;
                        } else {
                            count.missing.push(p.metadata.name.unwrap_or_default());
                        }
                    }
                    Err(e) => count.errors.push(e.to_string()),
                }
            }
            count.rate = count.created as f64 / elapsed.as_secs_f64();
            count
        });
        Self { stop, task }
    }

    /// Stop creating, wait for the calls in flight, and count.
    pub async fn finish(self) -> LoadCount {
        let _ = self.stop.send(true);
        self.task.await.expect("load task")
    }
}
