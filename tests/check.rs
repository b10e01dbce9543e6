//! `pullsecret-injector check`: fetch every credential once against the IAM stand-in and
//! report, never printing the secret itself.

mod common;

use std::process::Command;

use common::iam::{IamStandIn, Mode, TestKey};

fn config(dir: &std::path::Path, key: &std::path::Path, endpoint: &str) -> std::path::PathBuf {
    let password = dir.join("password");
    std::fs::write(&password, "s3cret-password\n").unwrap();
    let p = dir.join("config.yaml");
    std::fs::write(
        &p,
        format!(
            "registries:\n  - name: yandex\n    hosts: [cr.yandex, registry.yandexcloud.net]\n    secretName: yc\n    credentials:\n      yandexAuthorizedKey: {{ file: {}, endpoint: {endpoint:?} }}\n  - name: corp\n    hosts: [registry.corp.example.com]\n    secretName: corp\n    credentials:\n      basic: {{ username: robot, passwordFile: {} }}\n",
            key.display(),
            password.display()
        ),
    )
    .unwrap();
    p
}

async fn check(config: &std::path::Path) -> (i32, String, String) {
    let config = config.to_path_buf();
    // Run the blocking child off the runtime that serves the stand-in.
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_pullsecret-injector"))
            .args(["check", "--config"])
            .arg(&config)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn check_prints_one_line_per_registry_with_expiry_and_no_secret() {
    let iam = IamStandIn::start().await;
    let key = TestKey::shared(2048);
    iam.register(key);
    iam.set_token("t1.check-token-value");
    let dir = tempfile::tempdir().unwrap();
    let key_file = key.write_key_file(dir.path(), true);
    let (code, out, err) = check(&config(dir.path(), &key_file, &iam.endpoint())).await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("config ") && lines[0].ends_with(": ok"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("registry yandex: ok: hosts cr.yandex,registry.yandexcloud.net, secret yc, yandexAuthorizedKey as iam, expires 20"),
        "{out}"
    );
    assert!(
        lines[2].contains("registry corp: ok") && lines[2].ends_with("as robot, static"),
        "{out}"
    );
    let all = format!("{out}{err}");
    assert!(
        !all.contains("t1.check-token-value"),
        "token leaked:\n{all}"
    );
    assert!(!all.contains("s3cret-password"), "password leaked:\n{all}");
    assert!(!all.contains("PRIVATE KEY"), "key leaked:\n{all}");
    assert_eq!(iam.issued(), 1);
}

#[tokio::test]
async fn check_exits_1_with_the_services_message() {
    let iam = IamStandIn::start().await;
    let key = TestKey::shared(2048);
    iam.register(key);
    iam.set_mode(Mode::unauthenticated());
    let dir = tempfile::tempdir().unwrap();
    let key_file = key.write_key_file(dir.path(), false);
    let (code, out, err) = check(&config(dir.path(), &key_file, &iam.endpoint())).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("registry yandex: FAILED"), "{out}");
    assert!(out.contains("401"), "the HTTP status is shown: {out}");
    assert!(
        err.contains("credentials failed for registry yandex"),
        "{err}"
    );
}

#[tokio::test]
async fn check_exits_1_naming_a_broken_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.json");
    std::fs::write(&key_file, "{\"id\": \"x\"").unwrap();
    let (code, out, _) = check(&config(dir.path(), &key_file, "http://127.0.0.1:9/t")).await;
    assert_eq!(code, 1);
    assert!(out.contains("registry yandex: FAILED"), "{out}");
    assert!(
        out.contains(&key_file.display().to_string()),
        "names the file: {out}"
    );
    let missing = dir.path().join("missing.json");
    let (code, out, _) = check(&config(dir.path(), &missing, "http://127.0.0.1:9/t")).await;
    assert_eq!(code, 1);
    assert!(out.contains(&missing.display().to_string()), "{out}");
}
