//! The command line as a user meets it: exit codes and messages of the real binary.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const CONFIG: &str = r#"
registries:
  - name: yandex
    hosts: ["cr.yandex", "registry.yandexcloud.net"]
    secretName: yc-registry-secret
    credentials:
      basic: { username: iam, passwordFile: /nonexistent/password }
"#;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pullsecret-injector"));
    c.env_remove("PULLSECRET_INJECTOR_CONFIG")
        .env("RUST_LOG", "warn");
    c
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the binary");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn version_prints_the_crate_version() {
    let (code, out, _) = run(bin().arg("version"), None);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("pullsecret-injector {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn explain_prints_the_patch_and_the_secrets_for_a_yaml_pod() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "config.yaml", CONFIG);
    let pod = write(
        dir.path(),
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: app}\nspec:\n  containers:\n  - name: a\n    image: cr.yandex/crp1/app:1\n  - name: b\n    image: nginx\n",
    );
    let (code, out, err) = run(
        bin()
            .args(["explain", "--config"])
            .arg(&config)
            .arg("-f")
            .arg(&pod),
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("secrets: [\"yc-registry-secret\"]"), "{out}");
    assert!(
        out.contains("\"path\": \"/spec/imagePullSecrets\""),
        "{out}"
    );
}

#[test]
fn explain_reads_standard_input_and_reports_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "config.yaml", CONFIG);
    let pod =
        r#"{"apiVersion":"v1","kind":"Pod","spec":{"containers":[{"name":"a","image":"nginx"}]}}"#;
    let (code, out, err) = run(
        bin()
            .args(["explain", "-f", "-"])
            .env("PULLSECRET_INJECTOR_CONFIG", &config),
        Some(pod),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("# unchanged"), "{out}");
    assert!(out.contains("secrets: []"), "{out}");
}

#[test]
fn explain_refuses_what_is_not_a_pod() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "config.yaml", CONFIG);
    let deploy = write(
        dir.path(),
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\n",
    );
    let (code, _, err) = run(
        bin()
            .args(["explain", "--config"])
            .arg(&config)
            .arg("-f")
            .arg(&deploy),
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("deploy.yaml is not a Pod (kind \"Deployment\")"),
        "{err}"
    );

    let shape = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nspec:\n  containers: a-string\n",
    );
    let (code, _, err) = run(
        bin()
            .args(["explain", "--config"])
            .arg(&config)
            .arg("-f")
            .arg(&shape),
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("bad.yaml is not a valid Pod"), "{err}");

    let (code, _, err) = run(
        bin()
            .args(["explain", "--config"])
            .arg(&config)
            .args(["-f", "/nonexistent/pod.yaml"]),
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("reading /nonexistent/pod.yaml"), "{err}");
}

#[test]
fn invalid_config_exits_1_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "config.yaml",
        &CONFIG.replace("\"cr.yandex\"", "\"[abc]:5000\""),
    );
    for cmd in ["check", "run"] {
        let (code, _, err) = run(bin().args([cmd, "--config"]).arg(&config), None);
        assert_eq!(code, 1, "{cmd}");
        assert!(
            err.contains(&format!("invalid config file {}", config.display())),
            "{cmd}: {err}"
        );
        assert!(
            err.contains(
                "registries[0].hosts[0]: \"[abc]:5000\" is not an auths key kubelet can use"
            ),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn run_without_tls_files_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "config.yaml",
        &format!(
            "webhook: {{ listen: \"127.0.0.1:0\", tlsCertFile: {0}/missing.crt, tlsKeyFile: {0}/missing.key }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\n{CONFIG}",
            dir.path().display()
        ),
    );
    let (code, _, err) = run(
        bin().args(["run", "--no-sync", "--config"]).arg(&config),
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("reading TLS certificate") && err.contains("missing.crt"),
        "{err}"
    );
}

#[test]
fn missing_config_flag_is_a_usage_error() {
    let (code, _, err) = run(bin().arg("check"), None);
    assert_eq!(code, 2);
    assert!(err.contains("--config"), "{err}");
}

#[test]
fn docker_config_keys_must_be_the_registry_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let docker = write(
        dir.path(),
        "dockerconfig.json",
        r#"{"auths":{"https://ghcr.io":{"auth":"dXNlcjpzZWNyZXQ="}}}"#,
    );
    let config = |hosts: &str| {
        write(
            dir.path(),
            "config.yaml",
            &format!(
                "registries:\n  - name: ghcr\n    hosts: {hosts}\n    secretName: ghcr\n    credentials:\n      dockerConfig: {{ file: {} }}\n",
                docker.display()
            ),
        )
    };
    // kubelet reads "https://ghcr.io" as "ghcr.io": the same key.
    let (code, out, err) = run(
        bin().arg("check").arg("--config").arg(config("[ghcr.io]")),
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("registry ghcr: ok"), "{out}");

    // The webhook would inject for ghcr.io/org/ images only; kubelet uses it for all of ghcr.io.
    let (code, out, _) = run(
        bin()
            .arg("check")
            .arg("--config")
            .arg(config("[ghcr.io/org/]")),
        None,
    );
    assert_eq!(code, 1, "{out}");
    for part in [
        "registry ghcr: FAILED",
        &docker.display().to_string(),
        "add the key \"https://ghcr.io\" to hosts",
        "hosts[0] \"ghcr.io/org/\" is not a key of the file",
    ] {
        assert!(out.contains(part), "{part:?} not in {out}");
    }
}
