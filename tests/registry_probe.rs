//! `check --probe` against real registries: Debian's docker-registry (distribution 2.8) with
//! htpasswd auth (Basic challenge) and with token auth (Bearer challenge, a token issuer
//! stand-in whose JWTs the registry verifies itself), on 127.0.0.1 with TLS from a test CA
//! that the binary trusts through `SSL_CERT_FILE`, as it would trust a private CA.
//!
//! `#[ignore]`d in a plain `cargo test` (they need the `docker-registry` package, which
//! `scripts/node.sh install` installs); `scripts/test.sh` runs them, and they fail when it
//! is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::iam::TestCa;
use common::registry::{LocalRegistry, TokenIssuer};

/// A config with one registry `local` at `hosts`, `basic` login `robot` / `password`.
fn config(dir: &Path, hosts: &[&str], password: &str) -> PathBuf {
    let password_file = dir.join("password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "registries:\n  - name: local\n    hosts: {}\n    secretName: local-pull\n    credentials:\n      basic: {{ username: robot, passwordFile: {} }}\n",
            serde_json::to_string(hosts).unwrap(),
            password_file.display()
        ),
    )
    .unwrap();
    path
}

/// `check --probe`: (exit code, stdout, stderr), trusting `ca` (if any) as a private CA.
async fn check_probe(config: &Path, ca: Option<&Path>) -> (i32, String, String) {
    let (config, ca) = (config.to_path_buf(), ca.map(Path::to_path_buf));
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullsecret-injector"));
        cmd.args(["check", "--probe", "--config"]).arg(&config);
        match ca {
            Some(ca) => cmd.env("SSL_CERT_FILE", ca),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        let out = cmd.env("RUST_LOG", "debug").output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn assert_no_secret(text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{s:?} leaked into:\n{text}");
    }
}

#[tokio::test]
#[ignore = "needs docker-registry (scripts/node.sh install): run scripts/test.sh"]
async fn check_probe_proves_a_basic_login_and_names_registry_host_and_answer_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate();
    let registry = LocalRegistry::htpasswd(dir.path(), &ca, &[("robot", "right-password-1")]);
    let host = registry.host.clone();

    let good = config(dir.path(), &[&host, "*.example.com"], "right-password-1");
    let (code, out, err) = check_probe(&good, Some(&registry.ca_file)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "registry local: host {host}: accepted: HTTP 200 with Basic auth\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "registry local: host *.example.com: not probed (a glob names no host to ask)"
        ),
        "{out}"
    );
    assert_no_secret(&format!("{out}{err}"), &["right-password-1"]);

    // The registry revokes the login (a wrong or rotated password looks the same).
    registry.accept_only(&[("robot", "another-password")]);
    let (code, out, err) = check_probe(&good, Some(&registry.ca_file)).await;
    assert_eq!(code, 1, "{out}{err}");
    let want = format!(
        "registry local host {host}: refused: HTTP 401 with Basic auth: UNAUTHORIZED: authentication required"
    );
    assert!(err.contains(&format!("error: {want}")), "{err}");
    assert!(
        out.contains(&format!("registry local: host {host}: REFUSED: HTTP 401")),
        "{out}"
    );
    assert_no_secret(
        &format!("{out}{err}"),
        &["right-password-1", "another-password"],
    );
}

#[tokio::test]
#[ignore = "needs docker-registry (scripts/node.sh install): run scripts/test.sh"]
async fn check_probe_follows_a_token_registrys_bearer_flow_and_the_registry_has_the_last_word() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate();
    let issuer = TokenIssuer::start(&[("robot", "token-password-1")]).await;
    let registry = LocalRegistry::token(dir.path(), &ca, &issuer);
    let host = registry.host.clone();
    let realm = issuer.realm();
    let cfg = config(dir.path(), &[&host], "token-password-1");

    let (code, out, err) = check_probe(&cfg, Some(&registry.ca_file)).await;
    assert_eq!(code, 0, "{out}{err}\n{}", registry.log_text());
    assert!(
        out.contains(&format!(
            "registry local: host {host}: accepted: HTTP 200 with a Bearer token from {realm}\n"
        )),
        "{out}"
    );
    assert_eq!(issuer.issued(), 1, "one token, fetched with the login");

    // The token server still issues tokens, but signs them with a key the registry does not
    // trust: the registry refuses them.
    issuer.sign_untrusted(true);
    let (code, out, err) = check_probe(&cfg, Some(&registry.ca_file)).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "registry local host {host}: refused: HTTP 401 with a Bearer token from {realm}: UNAUTHORIZED: authentication required"
        )),
        "{err}"
    );
    issuer.sign_untrusted(false);

    // The account is revoked: the token endpoint refuses the login.
    issuer.accept_only(&[("robot", "rotated")]);
    let (code, out, err) = check_probe(&cfg, Some(&registry.ca_file)).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "registry local host {host}: refused: token endpoint {realm} answered HTTP 401: incorrect username or password"
        )),
        "{err}"
    );
    assert_no_secret(&format!("{out}{err}"), &["token-password-1", "eyJ"]);
}

#[tokio::test]
#[ignore = "needs docker-registry (scripts/node.sh install): run scripts/test.sh"]
async fn a_registry_that_cannot_be_reached_or_trusted_is_unreachable_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate();
    let registry = LocalRegistry::htpasswd(dir.path(), &ca, &[("robot", "pw-123")]);
    let closed = format!("127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let cfg = config(dir.path(), &[&closed], "pw-123");
    let (code, out, err) = check_probe(&cfg, Some(&registry.ca_file)).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "registry local host {closed}: unreachable: requesting https://{closed}/v2/:"
        )),
        "{err}"
    );
    assert!(!err.contains("refused:"), "{err}");

    // A registry whose certificate nothing trusts: no answer to speak of, so unreachable.
    let cfg = config(dir.path(), &[&registry.host], "pw-123");
    let (code, out, err) = check_probe(&cfg, Some(Path::new("/nonexistent-ca.pem"))).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!(
            "registry local: host {}: UNREACHABLE: ",
            registry.host
        )),
        "{out}"
    );
}
