//! Broken config, credential and TLS files against the real binary: `check` exits 1 with a
//! message that names the file and the problem, never quoting a secret. `run` exits 1 the
//! same way, before it binds a port, for a broken config or TLS file (it never runs
//! half-configured); a broken credential file does not stop it (the webhook needs no
//! credential): it names the file and the problem in its log and keeps serving.
//!
//! `run` here is the full process (webhook and sync). For the config and TLS cases
//! `KUBECONFIG` points at nothing; for the credential cases at an API server address where
//! nothing listens, so the process starts and its sync task retries in the background.
//! `check` reads the config and the credentials only (not the TLS files: it is also the
//! check of a sync-only setup), so the TLS cases run `run`.

mod cluster;
mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::iam::{TestKey, openssl};

/// A value planted in every secret file: it must never show in any output.
const MARKER: &str = "SECRET-MARKER-5f0c";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pullsecret-injector"));
    c.env_remove("PULLSECRET_INJECTOR_CONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

struct Setup {
    dir: tempfile::TempDir,
    certs: cluster::Certs,
    webhook_port: u16,
    admin_port: u16,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = cluster::Certs::generate(&dir.path().join("certs"));
        Self {
            dir,
            certs,
            webhook_port: cluster::free_port(),
            admin_port: cluster::free_port(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// A config with `credentials_yaml` (one source, one line) and the given TLS files. It
    /// probes no host: `cr.yandex` is a real name that nothing here may look up.
    fn config_with(&self, credentials_yaml: &str, cert: &Path, key: &Path) -> PathBuf {
        self.write(
            "config.yaml",
            format!(
                "webhook:\n  listen: \"127.0.0.1:{}\"\n  tlsCertFile: {}\n  tlsKeyFile: {}\nadmin:\n  listen: \"127.0.0.1:{}\"\nsync:\n  leaderElection: {{ enabled: false }}\nregistries:\n  - name: reg\n    hosts: [cr.yandex]\n    secretName: reg-secret\n    probeHosts: []\n    credentials:\n      {credentials_yaml}\n",
                self.webhook_port,
                cert.display(),
                key.display(),
                self.admin_port
            ),
        )
    }

    fn config(&self, credentials_yaml: &str) -> PathBuf {
        self.config_with(credentials_yaml, &self.certs.cert(), &self.certs.key())
    }

    /// A valid password file and its `basic` source line.
    fn good_basic(&self) -> String {
        let p = self.write("password", format!("{MARKER}\n"));
        format!(
            "basic: {{ username: robot, passwordFile: {} }}",
            p.display()
        )
    }

    /// `run` with `args`: exit 1 before either port accepted a connection; returns stderr.
    fn run_refused(&self, config: &Path, args: &[&str]) -> String {
        let mut child = bin()
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(args)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let ports = [self.webhook_port, self.admin_port];
        let status = loop {
            for port in ports {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(20)).is_ok() {
                    let _ = child.kill();
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "run bound port {port} although it must refuse to start:\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "run did not exit within 30s");
            std::thread::sleep(Duration::from_millis(5));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.lines().any(|l| l.starts_with("error: ")),
            "an error line: {stderr}"
        );
        assert_no_secret(&stderr);
        stderr
    }

    /// `run` with a kubeconfig for an API server that is not there: it must bind both
    /// ports, report healthy with the webhook serving, and exit 0 on SIGTERM. Returns
    /// stderr.
    fn run_keeps_serving(&self, config: &Path) -> String {
        let kubeconfig = self.write(
            "kubeconfig",
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{ server: \"https://127.0.0.1:{}\", insecure-skip-tls-verify: true }}\nusers:\n- name: u\n  user: {{ token: t }}\ncontexts:\n- name: c\n  context: {{ cluster: c, user: u, namespace: default }}\ncurrent-context: c\n",
                cluster::free_port()
            ),
        );
        let log = self.path("run.log");
        let mut child = bin()
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("KUBECONFIG", &kubeconfig)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let health = loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "run exited with {status} although it must keep serving:\n{}",
                    stderr()
                );
            }
            let webhook = SocketAddr::from(([127, 0, 0, 1], self.webhook_port));
            if TcpStream::connect_timeout(&webhook, Duration::from_millis(20)).is_ok()
                && let Some(health) = cluster::http_get(self.admin_port, "/healthz")
            {
                break health;
            }
            assert!(
                Instant::now() < deadline,
                "run did not serve within 30s:\n{}",
                stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(health.0, 200, "{health:?}");
        assert!(health.1.contains("webhook: serving"), "{health:?}");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = child.wait().unwrap();
        let stderr = stderr();
        assert_eq!(status.code(), Some(0), "{stderr}");
        assert_no_secret(&stderr);
        stderr
    }

    /// `check`: exit 1; returns stdout and stderr together.
    fn check_refused(&self, config: &Path) -> String {
        let out = bin()
            .arg("check")
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert_no_secret(&all);
        all
    }
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(MARKER), "a secret value leaked:\n{text}");
    assert!(
        !text.contains("PRIVATE KEY-----"),
        "key material leaked:\n{text}"
    );
}

fn assert_names(text: &str, what: &[&str]) {
    for w in what {
        assert!(text.contains(w), "{w:?} not in:\n{text}");
    }
}

#[test]
fn broken_config_files_stop_run_and_check_naming_the_file_and_the_problem() {
    let s = Setup::new();
    let missing = s.path("missing.yaml");
    let dir_as_file = s.dir.path().join("certs");
    let not_yaml = s.write("not-yaml.yaml", "registries: [ {name: a\n  - : ]:\n\t}");
    let binary = s.write("binary.yaml", [0xff, 0xfe, 0x00, 0x01, 0x80]);
    let empty = s.write("empty.yaml", "");
    let unknown = s.write(
        "unknown.yaml",
        "webhook: { listn: \"127.0.0.1:1\" }\nregistries: []\n",
    );
    let unknown_source = s.write(
        "unknown-source.yaml",
        "registries:\n  - name: a\n    hosts: [cr.yandex]\n    secretName: a\n    credentials:\n      vault: { path: x }\n",
    );
    let bad_values = s.write(
        "bad-values.yaml",
        "webhook: { listen: \"nowhere\" }\nsync: { refreshInterval: 1s, maxWritesPerSecond: 0 }\nregistries:\n  - name: a\n    hosts: [\"[abc]:5000\"]\n    secretName: Not_A_Name\n    credentials: {}\n",
    );
    let wrong_type = s.write(
        "wrong-type.yaml",
        "sync: { maxWritesPerSecond: many }\nregistries: []\n",
    );
    // A billion laughs: nine levels of ten aliases each.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        bomb.push_str(&format!(
            "{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    bomb.push_str("registries: *i\n");
    let bomb = s.write("bomb.yaml", bomb);

    let cases: Vec<(&PathBuf, Vec<String>)> = vec![
        (
            &missing,
            vec![format!(
                "reading config file {}: No such file or directory",
                missing.display()
            )],
        ),
        (
            &dir_as_file,
            vec![format!(
                "reading config file {}: Is a directory",
                dir_as_file.display()
            )],
        ),
        (
            &not_yaml,
            vec![format!("parsing config file {}: ", not_yaml.display())],
        ),
        (
            &binary,
            vec![format!(
                "reading config file {}: stream did not contain valid UTF-8",
                binary.display()
            )],
        ),
        (
            &empty,
            vec![format!("parsing config file {}: ", empty.display())],
        ),
        (
            &unknown,
            vec![
                format!("parsing config file {}: ", unknown.display()),
                "unknown field `listn`".into(),
            ],
        ),
        (
            &unknown_source,
            vec![
                format!("parsing config file {}: ", unknown_source.display()),
                "unknown field `vault`".into(),
            ],
        ),
        (
            &bad_values,
            vec![
                format!("invalid config file {}:", bad_values.display()),
                "webhook.listen: ".into(),
                "\"nowhere\"".into(),
                "sync.refreshInterval: 1s is too short (minimum 10s)".into(),
                "sync.maxWritesPerSecond: must be at least 1".into(),
                "registries[0].hosts[0]: \"[abc]:5000\" is not an auths key kubelet can use".into(),
                "registries[0].secretName: \"Not_A_Name\" is not a valid Secret name".into(),
                "registries[0].credentials".into(),
            ],
        ),
        (
            &wrong_type,
            vec![
                format!("parsing config file {}: ", wrong_type.display()),
                "sync.maxWritesPerSecond".into(),
            ],
        ),
        (
            &bomb,
            vec![format!("parsing config file {}: ", bomb.display())],
        ),
    ];
    for (config, want) in cases {
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        let start = Instant::now();
        let err = s.run_refused(config, &[]);
        assert_names(&err, &want);
        assert_names(&s.check_refused(config), &want);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            config.display()
        );
    }
}

/// Key files for the authorized-key and json-key cases: (name, content, problem).
fn broken_key_files() -> Vec<(&'static str, String, &'static str)> {
    let good = TestKey::shared(2048);
    let with_private_key = |pem: &str| {
        good.key_file_json_with_private_key(pem, true)
            .replace(&good.id, &format!("{}-{MARKER}", good.id))
    };
    let ec_pkcs8 = String::from_utf8(openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
        b"",
    ))
    .unwrap();
    let ec_sec1 =
        String::from_utf8(openssl(&["ec", "-outform", "PEM"], ec_pkcs8.as_bytes())).unwrap();
    assert!(ec_sec1.contains("BEGIN EC PRIVATE KEY"), "{ec_sec1}");
    let rsa_1024 = String::from_utf8(openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
        ],
        b"",
    ))
    .unwrap();
    let bad_base64 =
        format!("-----BEGIN PRIVATE KEY-----\n{MARKER}!!!!\n-----END PRIVATE KEY-----\n");
    let no_end = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n",
        &good.private_pkcs8_pem[28..100]
    );
    let full = good.key_file_json(true);
    let without = |field: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&full).unwrap();
        v.as_object_mut().unwrap().remove(field);
        v.to_string()
    };
    vec![
        (
            "not JSON",
            format!("{MARKER} is not json"),
            "not valid JSON",
        ),
        (
            "truncated JSON",
            full[..full.len() / 2].to_string(),
            "not valid JSON",
        ),
        ("a JSON array", "[1]".into(), "not a JSON object"),
        ("no id", without("id"), "missing field \"id\""),
        (
            "no service_account_id",
            without("service_account_id"),
            "missing field \"service_account_id\"",
        ),
        (
            "no private_key",
            without("private_key"),
            "missing field \"private_key\"",
        ),
        (
            "private_key not PEM",
            with_private_key(&format!("not a key {MARKER}")),
            "field \"private_key\": no PEM block",
        ),
        (
            "PEM with bad base64",
            with_private_key(&bad_base64),
            "field \"private_key\": PEM body is not valid base64",
        ),
        (
            "PEM without END",
            with_private_key(&no_end),
            "field \"private_key\": PEM block has no matching END line",
        ),
        (
            "an EC key (PKCS#8)",
            with_private_key(&ec_pkcs8),
            "not an RSA key (key_algorithm \"RSA_2048\"); only RSA keys are supported",
        ),
        (
            "an EC key (SEC1)",
            with_private_key(&ec_sec1),
            "an EC key (key_algorithm \"RSA_2048\"); only RSA keys are supported",
        ),
        (
            "a 1024-bit RSA key",
            with_private_key(&rsa_1024),
            "RSA key smaller than 2048 bits",
        ),
    ]
}

#[test]
fn broken_authorized_key_files_fail_check_and_are_reported_by_run_which_keeps_serving() {
    let s = Setup::new();
    let endpoint = "http://127.0.0.1:9/iam/v1/tokens";
    let mut cases = broken_key_files();
    cases.push(("missing", String::new(), "No such file or directory"));
    for (what, content, problem) in cases {
        let file = s.path("key.json");
        let _ = std::fs::remove_file(&file);
        if what != "missing" {
            std::fs::write(&file, &content).unwrap();
        }
        let config = s.config(&format!(
            "yandexAuthorizedKey: {{ file: {}, endpoint: {endpoint:?} }}",
            file.display()
        ));
        let file = file.display().to_string();
        let err = s.run_keeps_serving(&config);
        assert_names(
            &err,
            &[
                "registry reg: yandexAuthorizedKey credentials: ",
                "authorized key file",
                &file,
                problem,
            ],
        );
        let out = s.check_refused(&config);
        assert_names(&out, &["registry reg: FAILED", &file, problem]);
        eprintln!("{what}: {}", err.lines().last().unwrap());
    }
}

#[test]
fn broken_json_key_files_fail_check_and_are_reported_by_run_which_keeps_serving() {
    let s = Setup::new();
    for (what, content, problem) in broken_key_files().into_iter().take(7) {
        let file = s.write("key.json", &content);
        let config = s.config(&format!("yandexJsonKey: {{ file: {} }}", file.display()));
        let file = file.display().to_string();
        let err = s.run_keeps_serving(&config);
        assert_names(
            &err,
            &[
                "registry reg: yandexJsonKey credentials: ",
                "json key file",
                &file,
                problem,
            ],
        );
        assert_names(
            &s.check_refused(&config),
            &["registry reg: FAILED", &file, problem],
        );
        eprintln!("{what}: {}", err.lines().last().unwrap());
    }
}

#[test]
fn broken_password_and_docker_config_files_fail_check_and_are_reported_by_run() {
    let s = Setup::new();
    let dir = s.dir.path().join("certs");
    let cases: Vec<(String, Option<Vec<u8>>, &str, &str)> = vec![
        (
            "basic".into(),
            None,
            "reading password file",
            "No such file or directory",
        ),
        (
            "basic".into(),
            Some(b"".to_vec()),
            "password file",
            "is empty",
        ),
        (
            "basic".into(),
            Some(b"\n".to_vec()),
            "password file",
            "is empty",
        ),
        (
            "basic".into(),
            Some(b"\xff\xfe".to_vec()),
            "password file",
            "not UTF-8 text",
        ),
        (
            "dockerConfig".into(),
            None,
            "reading docker config file",
            "No such file or directory",
        ),
        (
            "dockerConfig".into(),
            Some(format!("{MARKER} not json").into_bytes()),
            "docker config file",
            "not valid JSON",
        ),
        (
            "dockerConfig".into(),
            Some(format!("{{\"credsStore\":\"{MARKER}\"}}").into_bytes()),
            "docker config file",
            "no \"auths\" object at the top level",
        ),
        (
            "dockerConfig".into(),
            Some(format!("{{\"auths\":{{\"cr.yandex\":{{\"auth\":\"{MARKER}\"}}}}}}").into_bytes()),
            "docker config file",
            "auths entry \"cr.yandex\": field \"auth\" is not valid base64",
        ),
        (
            "dockerConfig".into(),
            Some(br#"{"auths":{"cr.yandex":{}}}"#.to_vec()),
            "docker config file",
            "auths entry \"cr.yandex\" has no credentials",
        ),
    ];
    for (kind, content, what, problem) in cases {
        let file = s.path("secret-file");
        let _ = std::fs::remove_file(&file);
        if let Some(c) = &content {
            std::fs::write(&file, c).unwrap();
        }
        let source = if kind == "basic" {
            format!(
                "basic: {{ username: robot, passwordFile: {} }}",
                file.display()
            )
        } else {
            format!("dockerConfig: {{ file: {} }}", file.display())
        };
        let config = s.config(&source);
        let file = file.display().to_string();
        let err = s.run_keeps_serving(&config);
        assert_names(
            &err,
            &[
                &format!("registry reg: {kind} credentials: "),
                what,
                &file,
                problem,
            ],
        );
        assert_names(
            &s.check_refused(&config),
            &["registry reg: FAILED", what, &file, problem],
        );
    }
    // A directory where a file belongs.
    let config = s.config(&format!(
        "basic: {{ username: robot, passwordFile: {} }}",
        dir.display()
    ));
    let err = s.run_keeps_serving(&config);
    assert_names(
        &err,
        &[
            "reading password file",
            &dir.display().to_string(),
            "Is a directory",
        ],
    );
    // A username kubelet would misread.
    let password = s.write("pw", format!("{MARKER}\n"));
    let config = s.config(&format!(
        "basic: {{ username: \"a:b\", passwordFile: {} }}",
        password.display()
    ));
    let err = s.run_refused(&config, &[]);
    assert_names(
        &err,
        &[
            "registries[0].credentials.basic.username: \"a:b\" must be non-empty and must not contain ':'",
        ],
    );
}

#[test]
fn good_credentials_without_a_kubernetes_api_stop_run_with_a_clear_message() {
    let s = Setup::new();
    let config = s.config(&s.good_basic());
    let err = s.run_refused(&config, &[]);
    assert_names(
        &err,
        &["error: connecting to the Kubernetes API (in-cluster config or KUBECONFIG)"],
    );
    // The same files pass `check`, which needs no Kubernetes API.
    let out = bin()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_no_secret(&format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
}

#[test]
fn broken_tls_files_stop_run_before_it_binds() {
    let s = Setup::new();
    let other = cluster::Certs::generate(&s.path("other"));
    let garbage = s.write("garbage.pem", format!("{MARKER}\n"));
    let empty = s.write("empty.pem", "");
    let ec_key = s.write(
        "ec.key",
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
            b"",
        ),
    );
    let (cert, key) = (s.certs.cert(), s.certs.key());
    let other_key = other.key();
    let missing = s.path("missing.pem");
    let cases: Vec<(&Path, &Path, Vec<String>)> = vec![
        (
            &missing,
            &key,
            vec![format!(
                "reading TLS certificate {}: No such file or directory",
                missing.display()
            )],
        ),
        (
            &cert,
            &missing,
            vec![format!(
                "reading TLS key {}: No such file or directory",
                missing.display()
            )],
        ),
        (
            &garbage,
            &key,
            vec![format!(
                "reading TLS certificate {}: no PEM certificate found",
                garbage.display()
            )],
        ),
        (
            &empty,
            &key,
            vec![format!(
                "reading TLS certificate {}: no PEM certificate found",
                empty.display()
            )],
        ),
        (
            &cert,
            &garbage,
            vec![format!(
                "reading TLS key {}: no PEM private key found",
                garbage.display()
            )],
        ),
        (
            &cert,
            &cert,
            vec![format!(
                "reading TLS key {}: no PEM private key found",
                cert.display()
            )],
        ),
        (
            &key,
            &key,
            vec![format!(
                "reading TLS certificate {}: no PEM certificate found",
                key.display()
            )],
        ),
        (
            &cert,
            &other_key,
            vec![format!(
                "TLS key {} does not fit certificate {}",
                other_key.display(),
                cert.display()
            )],
        ),
        (
            &cert,
            &ec_key,
            vec![format!(
                "TLS key {} does not fit certificate {}",
                ec_key.display(),
                cert.display()
            )],
        ),
    ];
    for (cert, key, want) in cases {
        let config = s.config_with(&s.good_basic(), cert, key);
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        assert_names(&s.run_refused(&config, &["--no-sync"]), &want);
    }
}

#[test]
fn ports_in_use_stop_run_naming_the_address() {
    let s = Setup::new();
    let config = s.config(&s.good_basic());
    // Webhook port taken: refused before the admin port is bound.
    let taken = std::net::TcpListener::bind(("127.0.0.1", s.webhook_port)).unwrap();
    let mut child = bin()
        .args(["run", "--no-sync", "--config"])
        .arg(&config)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let admin = SocketAddr::from(([127, 0, 0, 1], s.admin_port));
        assert!(
            TcpStream::connect_timeout(&admin, Duration::from_millis(20)).is_err(),
            "admin port bound"
        );
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    };
    let err = String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned();
    assert_eq!(status.code(), Some(1), "{err}");
    assert_names(
        &err,
        &[&format!(
            "binding webhook.listen address 127.0.0.1:{}",
            s.webhook_port
        )],
    );
    drop(taken);
    // Admin port taken.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", s.admin_port)).unwrap();
    let out = bin()
        .args(["run", "--no-sync", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_names(
        &err,
        &[&format!(
            "binding admin.listen address 127.0.0.1:{}",
            s.admin_port
        )],
    );
}

#[test]
fn endpoint_with_a_password_in_the_url_is_refused_without_quoting_it() {
    let s = Setup::new();
    let key = TestKey::shared(2048).write_key_file(s.dir.path(), false);
    for source in [
        format!(
            "yandexAuthorizedKey: {{ file: {}, endpoint: \"https://robot:{MARKER}@iam.example.com/iam/v1/tokens\" }}",
            key.display()
        ),
        format!("yandexMetadata: {{ endpoint: \"http://{MARKER}@169.254.169.254/token\" }}"),
    ] {
        let config = s.config(&source);
        let want = [
            "registries[0].credentials.",
            "user info in the URL is not supported",
        ];
        assert_names(&s.run_refused(&config, &[]), &want);
        assert_names(&s.check_refused(&config), &want);
    }
}
