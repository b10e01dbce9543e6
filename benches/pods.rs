//! Pod creation through the real API server: what a user feels when the injector is
//! installed (`scripts/bench-pods.sh`; BENCHMARKS.md "Pod creation through the API server").
//!
//! One run: etcd + kube-apiserver on loopback (started by the script), the release binary
//! beside them, every webhook registered by URL with the chart's own rendering
//! (`templates/webhook.yaml`, matchConditions included). Scenarios, each in its own namespace:
//!
//! * `none`: no webhook selects the namespace;
//! * `noop`: Pods from Docker Hub; the injector is called and has nothing to add (the chart
//!   rendered with `webhook.matchConditions.generated=false`, so the call happens);
//! * `filtered`: the same Pods with the chart's default matchConditions: the API server skips
//!   the call;
//! * `inject`: the same Pods from `cr.yandex`; the injector adds the Secret;
//! * `peer`: a peer webhook binary given with `--peer PATH` (kube-rs's example admission
//!   controller, which adds one label), behind the same chart rendering without the
//!   generated conditions, for the `inject` Pods.
//!
//! In turns: every round runs every scenario once (the order rotates between rounds), so
//! that the shared machine's drift spreads over all of them; the table shows medians of the
//! rounds, and ratios to `none` taken within each round. The client sends pre-serialised
//! create bodies (`generateName`) with N requests in flight over keep-alive connections:
//! one HTTP/2 connection as client-go uses, or with `--http1` one HTTP/1.1 connection per
//! request in flight; a fixed number of creates per scenario and round. Every answer must be
//! 201 with what the scenario says (the Secret, the peer's label, or neither), and the
//! injector's request counter must grow by exactly the Pods sent to it; any error exits 1,
//! timings never do. The Pods stay until the end (no kubelet runs them): deleting them
//! between scenarios would put the API server's and etcd's work for the deletions into the
//! next scenario's window; the rotation spreads the slow growth of the store instead.

#[path = "../tests/chart_webhook/mod.rs"]
mod chart_webhook;
#[path = "../tests/cluster/mod.rs"]
mod cluster;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chart_webhook::Render;
use cluster::{Certs, Injector};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const LABEL: &str = "pullsecret-injector.io/bench-pods";
const SECRET: &str = "yc-registry-secret";
/// Images of the `inject` Pods and of the others: the same length, so that every scenario
/// sends the same number of bytes.
const MATCHING_HOST: &str = "cr.yandex";
const OTHER_HOST: &str = "docker.io";

struct Args {
    pods: usize,
    rounds: usize,
    warmup: usize,
    concurrency: usize,
    http1: bool,
    peer: Option<PathBuf>,
    peer_ip: String,
    smoke: bool,
}

const USAGE: &str = "usage: pods [--pods N] [--rounds R] [--warmup N] [--concurrency C] [--http1] [--peer PATH] [--peer-ip IP] [--smoke]
  --pods N         creates per scenario and round (default 400)
  --rounds R       rounds; every round runs every scenario once (default 5)
  --warmup N       untimed creates per scenario before the rounds (default 100)
  --concurrency C  creates in flight (default 1)
  --http1          HTTP/1.1 keep-alive connections (one per create in flight) instead of HTTP/2
  --peer PATH      a peer webhook binary (also PSI_BENCH_PEER), run as kube-rs's example
                   admission controller expects: in a directory holding
                   admission-controller-tls.crt/.key, ADMISSION_PRIVATE_IP=IP, port 8443
  --peer-ip IP     loopback address for the peer (default 127.0.0.1; its certificate names it)
  --smoke          1 round of 20 creates, no warm-up: fails on errors only (CI)";

fn parse_args() -> Args {
    let mut a = Args {
        pods: 400,
        rounds: 5,
        warmup: 100,
        concurrency: 1,
        http1: false,
        peer: std::env::var_os("PSI_BENCH_PEER")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        peer_ip: "127.0.0.1".into(),
        smoke: false,
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| -> usize {
        v.and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| panic!("{flag} needs a positive number\n{USAGE}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {}
            "--pods" => a.pods = number(it.next(), "--pods"),
            "--rounds" => a.rounds = number(it.next(), "--rounds"),
            "--warmup" => a.warmup = it.next().and_then(|v| v.parse().ok()).expect(USAGE),
            "--concurrency" => a.concurrency = number(it.next(), "--concurrency"),
            "--http1" => a.http1 = true,
            "--peer" => a.peer = Some(PathBuf::from(it.next().expect(USAGE))),
            "--peer-ip" => a.peer_ip = it.next().expect(USAGE),
            "--smoke" => a.smoke = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => panic!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.smoke {
        a.pods = 20;
        a.rounds = 1;
        a.warmup = 0;
    }
    if let Some(p) = &a.peer {
        assert!(p.is_file(), "--peer {}: no such file", p.display());
    }
    a
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    None,
    Noop,
    Filtered,
    Inject,
    Peer,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::Noop => "noop",
            Scenario::Filtered => "filtered",
            Scenario::Inject => "inject",
            Scenario::Peer => "peer",
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Scenario::None => "(a) no webhook",
            Scenario::Noop => "(b) injector called, nothing to add (matchConditions off)",
            Scenario::Filtered => "(c) same Pods, chart's matchConditions on (call skipped)",
            Scenario::Inject => "(d) injector injecting (chart's matchConditions on)",
            Scenario::Peer => "(e) peer webhook adding one label",
        }
    }
    fn host(self) -> &'static str {
        match self {
            Scenario::Noop | Scenario::Filtered => OTHER_HOST,
            _ => MATCHING_HOST,
        }
    }
    /// Whether the injector is called for each Pod.
    fn calls_injector(self) -> bool {
        matches!(self, Scenario::Noop | Scenario::Inject)
    }
}

/// A Deployment-like Pod as a controller sends it: two containers and an initContainer with
/// env, probes, ports and resources, a ConfigMap volume; images on `host`.
fn pod_body(host: &str) -> Value {
    let image = |name: &str, tag: &str| format!("{host}/crp9a8b7c6d5e4f3g2h1/shop/{name}:{tag}");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "checkout-7d9f8b6c5d-",
            "labels": {
                "app.kubernetes.io/name": "checkout",
                "app.kubernetes.io/part-of": "shop",
                "pod-template-hash": "7d9f8b6c5d"
            },
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "kubectl.kubernetes.io/default-container": "app"
            }
        },
        "spec": {
            "initContainers": [{
                "name": "migrate",
                "image": image("migrate", "2.14.1"),
                "command": ["/migrate", "up"],
                "env": [
                    {"name": "DB_HOST", "value": "postgres.shop.svc.cluster.local"},
                    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "checkout-db", "key": "password"}}}
                ]
            }],
            "containers": [
                {
                    "name": "app",
                    "image": image("checkout", "2.14.1"),
                    "ports": [
                        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
                    ],
                    "env": [
                        {"name": "LOG_LEVEL", "value": "info"},
                        {"name": "DB_HOST", "value": "postgres.shop.svc.cluster.local"},
                        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "checkout-db", "key": "password"}}},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                    ],
                    "resources": {
                        "limits": {"cpu": "1", "memory": "512Mi"},
                        "requests": {"cpu": "250m", "memory": "256Mi"}
                    },
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/checkout", "readOnly": true}],
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 10, "periodSeconds": 10},
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5}
                },
                {
                    "name": "envoy",
                    "image": image("envoy", "v1.31.2"),
                    "args": ["--config-path", "/etc/envoy/envoy.yaml", "--log-level", "warn"],
                    "ports": [{"name": "proxy", "containerPort": 15001, "protocol": "TCP"}],
                    "resources": {
                        "limits": {"cpu": "500m", "memory": "128Mi"},
                        "requests": {"cpu": "50m", "memory": "64Mi"}
                    }
                }
            ],
            "volumes": [{"name": "config", "configMap": {"name": "checkout"}}],
            "terminationGracePeriodSeconds": 30
        }
    })
}

/// What every response of a scenario must (not) contain.
#[derive(Clone)]
struct Expect {
    must: Vec<Vec<u8>>,
    must_not: Vec<Vec<u8>>,
}

impl Expect {
    fn check(&self, body: &[u8]) -> Result<(), String> {
        for m in &self.must {
            if find(body, m).is_none() {
                return Err(format!("no {}", String::from_utf8_lossy(m)));
            }
        }
        for m in &self.must_not {
            if find(body, m).is_some() {
                return Err(format!("unexpected {}", String::from_utf8_lossy(m)));
            }
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The load client: pre-serialised creates over keep-alive connections to the API server.
struct Client2 {
    /// One per create in flight (HTTP/1.1), or clones of one connection's sender (HTTP/2).
    senders: Vec<Sender>,
    authority: String,
    token: String,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

async fn connect(addr: &str, connector: &TlsConnector, http1: bool) -> Sender {
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to the API server at {addr}: {e}"));
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    let ip: std::net::IpAddr = addr
        .rsplit_once(':')
        .and_then(|(h, _)| h.parse().ok())
        .expect("API server address is IP:PORT");
    let tls = connector
        .connect(ServerName::IpAddress(ip.into()), tcp)
        .await
        .expect("TLS handshake with the API server");
    let io = TokioIo::new(tls);
    if http1 {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        Sender::H1(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        Sender::H2(sender)
    }
}

impl Client2 {
    async fn new(concurrency: usize, http1: bool) -> Self {
        let server = std::env::var("PSI_TEST_APISERVER").expect("PSI_TEST_APISERVER");
        let authority = server
            .strip_prefix("https://")
            .expect("PSI_TEST_APISERVER is https://IP:PORT")
            .trim_end_matches('/')
            .to_string();
        let token = std::env::var("PSI_TEST_ADMIN_TOKEN").expect("PSI_TEST_ADMIN_TOKEN");
        let ca = std::env::var("PSI_TEST_CA_FILE").expect("PSI_TEST_CA_FILE");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca).expect("reading the API server's CA") {
            roots.add(cert.expect("CA PEM")).expect("adding the CA");
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![if http1 {
            b"http/1.1".to_vec()
        } else {
            b"h2".to_vec()
        }];
        let connector = TlsConnector::from(Arc::new(config));
        let mut senders = Vec::new();
        if http1 {
            for _ in 0..concurrency {
                senders.push(connect(&authority, &connector, true).await);
            }
        } else {
            let Sender::H2(s) = connect(&authority, &connector, false).await else {
                unreachable!("HTTP/2 connect returns an HTTP/2 sender")
            };
            senders = (0..concurrency).map(|_| Sender::H2(s.clone())).collect();
        }
        Self {
            senders,
            authority,
            token,
        }
    }

    fn request(&self, ns: &str, body: &Bytes, h2: bool) -> http::Request<Full<Bytes>> {
        let path = format!("/api/v1/namespaces/{ns}/pods");
        let uri = if h2 {
            format!("https://{}{path}", self.authority)
        } else {
            path
        };
        http::Request::post(uri)
            .header(http::header::HOST, &self.authority)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "pullsecret-injector-bench-pods")
            .body(Full::new(body.clone()))
            .expect("create request")
    }

    /// `total` creates of `body` in `ns`, `senders.len()` in flight; latencies of each create
    /// (request sent -> whole response read) and the wall time of the batch.
    async fn run(
        &mut self,
        ns: &str,
        body: &Bytes,
        total: usize,
        expect: &Expect,
    ) -> (Vec<Duration>, Duration) {
        let next = Arc::new(AtomicUsize::new(0));
        let senders = std::mem::take(&mut self.senders);
        let start = Instant::now();
        let tasks: Vec<_> = senders
            .into_iter()
            .map(|mut sender| {
                let next = next.clone();
                let h2 = matches!(sender, Sender::H2(_));
                let req = self.request(ns, body, h2);
                let expect = expect.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(total);
                    while next.fetch_add(1, Ordering::Relaxed) < total {
                        let (parts, b) = req.clone().into_parts();
                        let r = http::Request::from_parts(parts, b);
                        let t0 = Instant::now();
                        let resp = sender.send(r).await.unwrap_or_else(|e| {
                            eprintln!("bench-pods: create failed: {e}");
                            std::process::exit(1)
                        });
                        let status = resp.status();
                        let bytes = resp
                            .into_body()
                            .collect()
                            .await
                            .unwrap_or_else(|e| {
                                eprintln!("bench-pods: reading a create response: {e}");
                                std::process::exit(1)
                            })
                            .to_bytes();
                        lat.push(t0.elapsed());
                        if status != http::StatusCode::CREATED {
                            eprintln!(
                                "bench-pods: create answered {status}: {}",
                                String::from_utf8_lossy(&bytes)
                            );
                            std::process::exit(1);
                        }
                        if let Err(e) = expect.check(&bytes) {
                            eprintln!(
                                "bench-pods: wrong Pod stored ({e}): {}",
                                String::from_utf8_lossy(&bytes)
                            );
                            std::process::exit(1);
                        }
                    }
                    (sender, lat)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(total);
        for t in tasks {
            let (sender, lat) = t.await.expect("load task");
            self.senders.push(sender);
            all.extend(lat);
        }
        (all, start.elapsed())
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the command.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn pid_file(name: &str) -> Option<u32> {
    let dir = std::env::var_os("PSI_TEST_DIR")?;
    std::fs::read_to_string(Path::new(&dir).join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The peer webhook, run as kube-rs's example admission controller expects.
struct Peer {
    child: Child,
    log: PathBuf,
}

impl Peer {
    fn start(binary: &Path, dir: &Path, ip: &str) -> (Self, Certs) {
        let addr = format!("{ip}:8443");
        if TcpListener::bind(&addr).is_err() {
            panic!(
                "{addr} is in use: the peer listens on port 8443 of --peer-ip (choose another loopback address)"
            );
        }
        let out = Command::new("bash")
            .arg(cluster::repo().join("certs/generate.sh"))
            .arg(dir)
            .args(["--ip", ip])
            .output()
            .expect("running certs/generate.sh");
        assert!(
            out.status.success(),
            "certs/generate.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::copy(
            dir.join("tls.crt"),
            dir.join("admission-controller-tls.crt"),
        )
        .unwrap();
        std::fs::copy(
            dir.join("tls.key"),
            dir.join("admission-controller-tls.key"),
        )
        .unwrap();
        let certs = Certs {
            dir: dir.to_path_buf(),
            ca_pem: std::fs::read(dir.join("ca.crt")).expect("ca.crt"),
        };
        let log = dir.join("peer.log");
        let child = Command::new(binary)
            .current_dir(dir)
            .env("ADMISSION_PRIVATE_IP", ip)
            // Both webhooks log one line per request at info, as they do by default.
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&log).expect("peer log"))
            .stderr(std::fs::File::create(dir.join("peer.err")).expect("peer log"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting the peer {}: {e}", binary.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the peer does not listen on {addr} after 30 s (log: {})",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (Self { child, log }, certs)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per round and scenario.
#[derive(Clone, Copy, Default)]
struct Row {
    pods_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    apiserver_ms: f64,
    etcd_ms: f64,
    webhook_ms: f64,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

async fn delete_pods(client: &Client, ns: &str) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    api.delete_collection(
        &DeleteParams::default().grace_period(0),
        &ListParams::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("deleting the Pods of {ns}: {e}"));
    cluster::poll(
        &format!("the Pods of {ns} to be gone"),
        Duration::from_secs(60),
        || async {
            let left = api.list(&ListParams::default().limit(1)).await.ok()?;
            left.items.is_empty().then_some(())
        },
    )
    .await;
}

struct Setup {
    scenario: Scenario,
    ns: String,
    body: Bytes,
    expect: Expect,
    /// The process answering this scenario's webhook calls, for its CPU time.
    webhook_pid: Option<u32>,
}

#[tokio::main]
async fn main() {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("installing the ring crypto provider");
    let args = parse_args();
    let admin = cluster::admin_client().await;
    let version = admin.apiserver_version().await.expect("API server version");
    let dir = tempfile::tempdir().expect("tempdir");
    let id = cluster::unique("bench-pods");

    // The injector, release build, as the chart runs it (info logs in JSON, webhook only).
    let certs = Certs::generate(&dir.path().join("certs"));
    let password = dir.path().join("password");
    std::fs::write(&password, "not-a-real-token\n").unwrap();
    let registries =
        chart_webhook::YANDEX_REGISTRIES.replace("PASSWORD_FILE", &password.display().to_string());
    let injector = Injector::start(
        dir.path(),
        &certs,
        chart_webhook::config(&registries),
        &["--no-sync", "--log-format", "json"],
        &[("RUST_LOG", "info")],
    );
    let injector_pid = Some(injector.pid());
    let peer = args.peer.as_ref().map(|p| {
        let pdir = dir.path().join("peer");
        std::fs::create_dir_all(&pdir).unwrap();
        Peer::start(p, &pdir, &args.peer_ip)
    });

    let mut scenarios = vec![
        Scenario::None,
        Scenario::Noop,
        Scenario::Filtered,
        Scenario::Inject,
    ];
    if peer.is_some() {
        scenarios.push(Scenario::Peer);
    }
    let injector_url = injector.url();
    let peer_url = format!("https://{}:8443/mutate", args.peer_ip);
    let mut webhooks = Vec::new();
    let mut setups = Vec::new();
    for &s in &scenarios {
        let ns = format!("{id}-{}", s.name());
        let value = ns.clone();
        cluster::create_namespace(&admin, &ns, &[(LABEL, &value)]).await;
        let off: &[&str] = &["--set", "webhook.matchConditions.generated=false"];
        let (url, ca, extra, pid) = match s {
            Scenario::None => (None, &certs.ca_pem, &[][..], None),
            Scenario::Noop => (
                Some(injector_url.as_str()),
                &certs.ca_pem,
                off,
                injector_pid,
            ),
            Scenario::Filtered | Scenario::Inject => (
                Some(injector_url.as_str()),
                &certs.ca_pem,
                &[][..],
                injector_pid,
            ),
            Scenario::Peer => {
                let (p, pc) = peer.as_ref().expect("peer");
                (Some(peer_url.as_str()), &pc.ca_pem, off, Some(p.child.id()))
            }
        };
        if let Some(url) = url {
            chart_webhook::register(
                dir.path(),
                &Render {
                    name: &ns,
                    values_yaml: &registries,
                    url,
                    ca_pem: ca,
                    opt_in: (LABEL, &value),
                    args: extra,
                },
            );
            webhooks.push(ns.clone());
        }
        let body = serde_json::to_vec(&pod_body(s.host())).expect("pod body");
        setups.push(Setup {
            scenario: s,
            ns,
            body: Bytes::from(body),
            expect: Expect {
                must: vec![],
                must_not: vec![],
            },
            webhook_pid: pid,
        });
    }

    // Wait for every registration to take effect, learn what the peer adds, and set what
    // every response must show.
    let secret = format!(r#""imagePullSecrets":[{{"name":"{SECRET}"}}]"#).into_bytes();
    for s in &mut setups {
        let api = Api::<Pod>::namespaced(admin.clone(), &s.ns);
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let probe: Pod = serde_json::from_slice(&match s.scenario {
            // A matching Pod proves the filtered registration is active.
            Scenario::Filtered => serde_json::to_vec(&pod_body(MATCHING_HOST)).unwrap(),
            _ => s.body.to_vec(),
        })
        .unwrap();
        let sent_labels = probe.metadata.labels.clone().unwrap_or_default();
        let calls = || chart_webhook::injector_reviews(&injector);
        match s.scenario {
            Scenario::None => {}
            Scenario::Noop => {
                let before = calls();
                cluster::poll(
                    "the noop webhook to be called",
                    Duration::from_secs(30),
                    || async {
                        api.create(&dry, &probe).await.ok()?;
                        (calls() > before).then_some(())
                    },
                )
                .await;
            }
            Scenario::Filtered | Scenario::Inject => {
                cluster::poll(
                    &format!("the {} webhook to inject", s.scenario.name()),
                    Duration::from_secs(30),
                    || async {
                        let p = api.create(&dry, &probe).await.ok()?;
                        p.spec?
                            .image_pull_secrets
                            .is_some_and(|v| !v.is_empty())
                            .then_some(())
                    },
                )
                .await;
            }
            Scenario::Peer => {
                let added = cluster::poll(
                    "the peer webhook to add a label",
                    Duration::from_secs(30),
                    || async {
                        let p = api.create(&dry, &probe).await.ok()?;
                        let labels = p.metadata.labels.unwrap_or_default();
                        let added: Vec<_> = labels
                            .into_iter()
                            .filter(|(k, _)| !sent_labels.contains_key(k))
                            .collect();
                        (!added.is_empty()).then_some(added)
                    },
                )
                .await;
                eprintln!("bench-pods: the peer adds labels {added:?}");
                for (k, v) in added {
                    s.expect
                        .must
                        .push(format!("{}:{}", json!(k), json!(v)).into_bytes());
                }
            }
        }
        if s.scenario == Scenario::Inject {
            s.expect.must.push(secret.clone());
        } else {
            s.expect.must_not.push(b"imagePullSecrets".to_vec());
        }
    }

    let mut client = Client2::new(args.concurrency, args.http1).await;
    let apiserver_pid = pid_file("kube-apiserver.pid");
    let etcd_pid = pid_file("etcd.pid");
    let protocol = if args.http1 { "HTTP/1.1" } else { "HTTP/2" };
    let load_before = load_average();
    eprintln!(
        "bench-pods: kube-apiserver {}, {} cores, load average {load_before}; {protocol}, {} in flight, {} creates x {} scenarios x {} rounds (+{} warm-up)",
        version.git_version,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.concurrency,
        args.pods,
        setups.len(),
        args.rounds,
        args.warmup
    );

    if args.warmup > 0 {
        for s in &setups {
            client.run(&s.ns, &s.body, args.warmup, &s.expect).await;
        }
    }

    let mut rows: Vec<Vec<Row>> = vec![Vec::new(); setups.len()];
    for round in 0..args.rounds {
        for k in 0..setups.len() {
            let i = (round + k) % setups.len();
            let s = &setups[i];
            let calls_before = chart_webhook::injector_reviews(&injector);
            let cpu = |pid: Option<u32>| pid.map(cpu_seconds).unwrap_or(0.0);
            let (a0, e0, w0) = (cpu(apiserver_pid), cpu(etcd_pid), cpu(s.webhook_pid));
            let (mut lat, wall) = client.run(&s.ns, &s.body, args.pods, &s.expect).await;
            let (a1, e1, w1) = (cpu(apiserver_pid), cpu(etcd_pid), cpu(s.webhook_pid));
            let calls = chart_webhook::injector_reviews(&injector) - calls_before;
            let want = if s.scenario.calls_injector() {
                args.pods as u64
            } else {
                0
            };
            if calls != want {
                eprintln!(
                    "bench-pods: {}: the injector answered {calls} reviews for {} Pods, expected {want}",
                    s.scenario.name(),
                    args.pods
                );
                std::process::exit(1);
            }
            lat.sort();
            let per_pod = |d: f64| d * 1e3 / args.pods as f64;
            let row = Row {
                pods_per_s: args.pods as f64 / wall.as_secs_f64(),
                p50_ms: pct(&lat, 0.50),
                p99_ms: pct(&lat, 0.99),
                apiserver_ms: per_pod(a1 - a0),
                etcd_ms: per_pod(e1 - e0),
                webhook_ms: per_pod(w1 - w0),
            };
            eprintln!(
                "bench-pods: round {} {:<8} {:>7.1} Pods/s  p50 {:.2} ms  p99 {:.2} ms  CPU/Pod: kube-apiserver {:.2} ms, etcd {:.2} ms, webhook {:.2} ms  (load {})",
                round + 1,
                s.scenario.name(),
                row.pods_per_s,
                row.p50_ms,
                row.p99_ms,
                row.apiserver_ms,
                row.etcd_ms,
                row.webhook_ms,
                load_average()
            );
            rows[i].push(row);
        }
    }

    println!(
        "\nkube-apiserver {} on loopback, {} cores; load average {} before, {} after; {protocol}, {} create(s) in flight; {} creates per scenario and round, {} rounds (medians; ratios to `none` per round)\n",
        version.git_version,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load_before,
        load_average(),
        args.concurrency,
        args.pods,
        args.rounds
    );
    println!(
        "| scenario | Pods/s | p50 ms | p99 ms | Pods/s vs none | p50 vs none | kube-apiserver CPU ms/Pod | etcd CPU ms/Pod | webhook CPU ms/Pod |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let base = &rows[0];
    for (s, r) in setups.iter().zip(&rows) {
        let m = |f: fn(&Row) -> f64| median(r.iter().map(f).collect());
        let ratio =
            |f: fn(&Row) -> f64| median(r.iter().zip(base).map(|(x, b)| f(x) / f(b)).collect());
        let webhook = if s.webhook_pid.is_some() {
            format!("{:.3}", m(|r| r.webhook_ms))
        } else {
            "-".into()
        };
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {webhook} |",
            s.scenario.describe(),
            m(|r| r.pods_per_s),
            m(|r| r.p50_ms),
            m(|r| r.p99_ms),
            ratio(|r| r.pods_per_s),
            ratio(|r| r.p50_ms),
            m(|r| r.apiserver_ms),
            m(|r| r.etcd_ms),
        );
    }
    if let Some((p, _)) = &peer {
        eprintln!("bench-pods: peer log {}", p.log.display());
    }

    for w in &webhooks {
        cluster::unregister_webhook(&admin, w).await;
    }
    for s in &setups {
        delete_pods(&admin, &s.ns).await;
    }
    drop(injector);
    drop(peer);
}
