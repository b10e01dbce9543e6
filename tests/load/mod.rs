//! Support for the flood tests against the real binary (`tests/hardening_connections.rs`,
//! `tests/hardening_memory.rs`): the binary with a config, what /proc says about it, a TLS
//! client, and the file-descriptor limit these tests need.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::cluster;

/// A Pod CREATE review as the API server sends it.
pub const FIXTURE: &str = include_str!("../fixtures/admission-review-pod-create.json");

/// Raise this process's soft RLIMIT_NOFILE to `need` (children inherit it). Fails with the
/// limits when the hard limit is lower: the test cannot run as asked, and must not skip.
pub fn raise_fd_limit(need: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    eprintln!("file descriptors: soft limit {soft}, hard limit {hard}, this test needs {need}");
    if soft >= need {
        return;
    }
    assert!(
        hard >= need,
        "this test opens {need} sockets but the hard limit on open files (ulimit -Hn) is {hard}; raise it"
    );
    limit.current = Some(need);
    setrlimit(Resource::Nofile, limit).expect("raising the soft limit on open files");
}

/// The binary serving both ports with `webhook_yaml` and `admin_yaml` added to its config
/// sections (`--no-sync`: these tests are about the servers).
pub struct Binary {
    pub injector: cluster::Injector,
    pub certs: cluster::Certs,
    pub ca_pem: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl Binary {
    pub fn start(webhook_yaml: &str, admin_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = cluster::Certs::generate(&dir.path().join("certs"));
        let password = dir.path().join("password");
        std::fs::write(&password, "not-a-real-password\n").unwrap();
        let (webhook_port, admin_port) = (cluster::free_port(), cluster::free_port());
        let indent = |yaml: &str| yaml.lines().map(|l| format!("  {l}\n")).collect::<String>();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "webhook:\n  listen: \"127.0.0.1:{webhook_port}\"\n  tlsCertFile: {}\n  tlsKeyFile: {}\n{}admin:\n  listen: \"127.0.0.1:{admin_port}\"\n{}registries:\n  - name: yandex\n    hosts: [cr.yandex, registry.yandexcloud.net]\n    secretName: yc-registry-secret\n    probeHosts: []\n    credentials:\n      basic: {{ username: robot, passwordFile: {} }}\n",
                certs.cert().display(),
                certs.key().display(),
                indent(webhook_yaml),
                indent(admin_yaml),
                password.display()
            ),
        )
        .unwrap();
        let injector = cluster::Injector::start_with_config(
            dir.path(),
            &config,
            webhook_port,
            admin_port,
            &["--no-sync"],
            // What the chart runs with: info, so that a flood is not also a flood of logs.
            &[("RUST_LOG", "info")],
        );
        let ca_pem = certs.ca_pem.clone();
        Self {
            injector,
            certs,
            ca_pem,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.injector.pid()
    }

    pub fn webhook_port(&self) -> u16 {
        self.injector.webhook_port
    }

    pub fn admin_port(&self) -> u16 {
        self.injector.admin_port
    }

    /// A TLS client config trusting the binary's CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        cluster::tls_client_config(&self.ca_pem, &[alpn])
    }

    /// A TLS connection to the webhook port.
    pub async fn tls(
        &self,
        config: &Arc<rustls::ClientConfig>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(("127.0.0.1", self.webhook_port())).await?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(config.clone())
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
    }

    /// One review on a new connection, as the API server opens one: connect, TLS, POST,
    /// the whole answer. Returns the status and how long all of it took.
    pub async fn timed_review(&self, h2: bool) -> (u16, Duration) {
        let config = self.client_config(if h2 { b"h2" } else { b"http/1.1" });
        let start = Instant::now();
        let tls = self.tls(&config).await.expect("TLS handshake");
        let req = http::Request::post(format!("https://127.0.0.1:{}/mutate", self.webhook_port()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(FIXTURE.as_bytes())))
            .unwrap();
        let io = hyper_util::rt::TokioIo::new(tls);
        let (resp, conn) = if h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            (send.send_request(req).await.unwrap(), conn)
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            (send.send_request(req).await.unwrap(), conn)
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        conn.abort();
        let resp = (parts.status, body);
        let took = start.elapsed();
        let (status, body) = resp;
        if status == 200 {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["response"]["patchType"], "JSONPatch", "{v}");
        }
        (status.as_u16(), took)
    }

    /// `GET path` on the admin port on a new connection: status and time taken.
    pub async fn timed_admin_get(&self, path: &str) -> (u16, Duration) {
        let start = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", self.admin_port()))
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .expect("an admin answer within 10 s")
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, start.elapsed())
    }

    /// Resident memory now and at its peak (VmRSS, VmHWM), in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        memory_kib(self.pid())
    }

    /// Open sockets of the process (listeners included).
    pub fn sockets(&self) -> usize {
        sockets(self.pid())
    }
}

/// VmRSS and VmHWM of `pid` in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Sockets among the open file descriptors of `pid`.
pub fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading /proc fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("socket:"))
        .count()
}

/// The container memory limit in the chart's values (`resources.limits.memory`), in bytes.
pub fn chart_memory_limit() -> u64 {
    let values =
        std::fs::read_to_string(cluster::repo().join("charts/pullsecret-injector/values.yaml"))
            .expect("reading the chart's values.yaml");
    let v: serde_json::Value = serde_norway::from_str(&values).expect("values.yaml is YAML");
    let text = v["resources"]["limits"]["memory"]
        .as_str()
        .expect("resources.limits.memory in values.yaml");
    let (n, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = n.parse().expect("a number");
    n * match unit {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "" => 1,
        other => panic!("unit {other:?} of resources.limits.memory"),
    }
}

/// The median of `samples` (sorted in place).
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Bounded poll on a plain condition; panics with `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
