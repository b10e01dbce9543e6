//! Faults, end to end (issue 6): what the sync task and the webhook do when the things they
//! depend on misbehave, on the real kube-apiserver with the real binary.
//!
//! * the IAM service failing in every way it can for a long stretch, and coming back;
//! * the authorized key file replaced by a broken one, and fixed;
//! * the API server killed and restarted under a running sync task (on a control plane of
//!   the test's own, so that the tests running in parallel on the shared one are not hit);
//! * the serving certificate rotated under a load of new TLS connections;
//! * the webhook replaced under a load of Pod creations;
//! * a label flapping and namespaces deleted while their Secrets are written.
//!
//! Run with `scripts/test.sh`. Each test has its own release (RBAC objects), opt-in label
//! value, injector processes and stand-ins; every wait is a bounded poll.

mod cluster;
mod common;
mod fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster::{Certs, Injector, pull_secrets};
use common::iam::{Mode, TestKey};
use fixture::{Release, SECRET};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

const LABEL: &str = "pullsecret-injector.io/e2e-faults";
const EXPIRES_AT: &str = "pullsecret-injector.io/expires-at";

// ---------------------------------------------------------------------------------------
// Control planes

/// etcd and kube-apiserver of this test only (`scripts/control-plane.sh start DIR`), for
/// faults that would break the tests sharing the common one. Stopped when dropped.
struct OwnControlPlane {
    dir: tempfile::TempDir,
    cp: cluster::ControlPlane,
    etcd_url: String,
}

impl OwnControlPlane {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        control_plane_script("start", dir.path());
        let env = std::fs::read_to_string(dir.path().join("env")).expect("DIR/env");
        let get = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(|v| v.trim_matches('\'').to_string())
                .unwrap_or_else(|| panic!("no {name} in {env}"))
        };
        Self {
            cp: cluster::ControlPlane {
                kubeconfig: get("PSI_TEST_KUBECONFIG").into(),
                server: get("PSI_TEST_APISERVER"),
                ca: get("PSI_TEST_CA_FILE").into(),
            },
            etcd_url: get("PSI_TEST_ETCD_URL"),
            dir,
        }
    }

    /// SIGKILL kube-apiserver (a crash: no graceful shutdown), by the pid the script wrote.
    fn kill_apiserver(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("kube-apiserver.pid")).unwrap();
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -KILL {pid}");
    }

    /// Start kube-apiserver again on the same port, certificates and etcd; waits for /readyz.
    fn restart_apiserver(&self) {
        control_plane_script("restart-apiserver", self.dir.path());
    }

    /// Compact etcd up to its current revision (and defragment nothing): every watch that
    /// resumes from an older resourceVersion now gets 410 Gone.
    fn compact_etcd(&self) -> u64 {
        let etcd = |path: &str, body: &str| -> serde_json::Value {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "5", "-X", "POST"])
                .arg(format!("{}{path}", self.etcd_url))
                .args(["-d", body])
                .output()
                .expect("running curl");
            assert!(out.status.success(), "etcd {path}: {out:?}");
            serde_json::from_slice(&out.stdout).expect("etcd answers JSON")
        };
        let range = etcd("/v3/kv/range", r#"{"key":"AA=="}"#);
        let revision: u64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {range}"));
        etcd(
            "/v3/kv/compaction",
            &json!({"revision": revision.to_string(), "physical": true}).to_string(),
        );
        revision
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(cluster::repo().join("scripts/control-plane.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("kube-apiserver.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- last lines of the own kube-apiserver log ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn control_plane_script(command: &str, dir: &Path) {
    let out = Command::new("bash")
        .arg(cluster::repo().join("scripts/control-plane.sh"))
        .arg(command)
        .arg(dir)
        .output()
        .expect("running scripts/control-plane.sh");
    assert!(
        out.status.success(),
        "scripts/control-plane.sh {command} {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sync-only injector of release `fx`, with leader election, and `args`.
fn start(fx: &Release, args: &[&str]) -> Injector {
    let mut all = vec!["--no-webhook"];
    all.extend_from_slice(args);
    fx.start(fx.config(), &all)
}

/// The password the Secret holds for `cr.yandex`.
fn password(s: &Secret) -> Option<String> {
    fixture::password(s, "cr.yandex")
}

fn expires_at(s: &Secret) -> String {
    s.metadata.annotations.as_ref().unwrap()[EXPIRES_AT].clone()
}

fn metrics(i: &Injector) -> String {
    i.admin_get("/metrics").expect("metrics").1
}

fn refresh_failures(i: &Injector) -> f64 {
    cluster::metric(
        &metrics(i),
        "pullsecret_injector_credential_refresh_total{registry=\"yandex\",result=\"failure\"}",
    )
    .unwrap_or(0.0)
}

/// `secret_writes_total` by result.
fn writes(i: &Injector) -> BTreeMap<String, f64> {
    let prefix = "pullsecret_injector_secret_writes_total{result=\"";
    metrics(i)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (result, value) = rest.split_once("\"} ")?;
            Some((result.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// Wait until the write counters moved from `before` by exactly `want` (a write is counted
/// when the API server's answer arrives, so a test may see the object first); returns them.
async fn wait_writes(
    i: &Injector,
    before: &BTreeMap<String, f64>,
    want: &[(&str, f64)],
) -> BTreeMap<String, f64> {
    let want: BTreeMap<String, f64> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    cluster::poll(
        &format!("secret_writes_total to move by {want:?}"),
        Duration::from_secs(10),
        || async {
            let now = writes(i);
            (delta(&now, before) == want).then_some(now)
        },
    )
    .await
}

fn warnings(i: &Injector) -> usize {
    i.log_text()
        .lines()
        .filter(|l| l.contains(" WARN "))
        .count()
}

/// Wait until the write counters and the number of logged warnings have not moved for
/// `quiet`; returns the counters.
async fn settled(i: &Injector, quiet: Duration, timeout: Duration) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + timeout;
    let mut last = (writes(i), warnings(i));
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = (writes(i), warnings(i));
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return last.0;
        }
        assert!(
            Instant::now() < deadline,
            "writes or warnings still growing after {timeout:?}: {last:?}\n{}",
            i.log_text()
        );
    }
}

/// Replace a file atomically (write aside, rename over), as an editor or kubelet would.
fn replace_file(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn iam_failing_every_way_keeps_the_last_good_token_counts_logs_and_recovers_by_itself() {
    let fx = Release::new("iam", LABEL).await;
    // Tokens live 8 s, so a refresh is due after about 4 s and the last good one expires
    // during the outage.
    fx.iam.set_lifetime(Duration::from_secs(8));
    fx.iam.set_token("t1.good");
    let ns = fx.namespace("a", true).await;
    let injector = start(&fx, &[]);
    let good = fx
        .wait_for_token(&ns, "t1.good", Duration::from_secs(20))
        .await;
    let good_expiry = expires_at(&good);
    let writes_before = wait_writes(&injector, &BTreeMap::new(), &[("created", 1.0)]).await;
    let t0 = Instant::now();

    // Each way the service can fail, in a row: counted, logged with what the service said.
    let failures: [(&str, Mode, &str); 5] = [
        (
            "401",
            Mode::unauthenticated(),
            "HTTP 401 Unauthorized: The token is invalid (code 16)",
        ),
        (
            "429",
            Mode::too_many_requests(),
            "HTTP 429 Too Many Requests: Quota limit iam.tokens.create exceeded (code 8)",
        ),
        (
            "502 from a proxy",
            Mode::garbage(502),
            "HTTP 502 Bad Gateway: body: <html><body><h1>502 Bad Gateway</h1>",
        ),
        (
            "200 with HTML",
            Mode::garbage(200),
            "HTTP 200 OK with an unusable body: not JSON",
        ),
        ("no answer", Mode::Hang, "no complete answer within 10s"),
    ];
    for (what, mode, message) in failures {
        let before = refresh_failures(&injector);
        fx.iam.set_mode(mode);
        cluster::poll(
            &format!("a counted and logged refresh failure ({what})"),
            Duration::from_secs(60),
            || async {
                let log = injector.log_text();
                let logged = log.lines().any(|l| {
                    l.contains("credential refresh failed; Secrets keep the last good credential")
                        && l.contains(message)
                });
                (refresh_failures(&injector) > before && logged).then_some(())
            },
        )
        .await;
        let s = fx.secret(&ns).await.expect("the Secret stays");
        assert_eq!(password(&s).as_deref(), Some("t1.good"), "after {what}");
        assert_eq!(expires_at(&s), good_expiry, "after {what}");
    }
    let outage = t0.elapsed();
    let expiry: jiff::Timestamp = good_expiry.parse().unwrap();
    assert!(
        jiff::Timestamp::now() > expiry,
        "the outage ({outage:?}) outlived the last good token"
    );
    // An expired token is still the best there is: kept, not deleted, and nothing written.
    assert_eq!(
        password(&fx.secret(&ns).await.unwrap()).as_deref(),
        Some("t1.good")
    );
    assert_eq!(
        writes(&injector),
        writes_before,
        "no write during the outage"
    );
    let m = metrics(&injector);
    let expiry_metric = cluster::metric(
        &m,
        "pullsecret_injector_credential_expiry_timestamp_seconds{registry=\"yandex\"}",
    )
    .unwrap();
    assert_eq!(
        expiry_metric.floor() as i64,
        expiry.as_second(),
        "the expiry gauge still shows the last good token (alerts fire on it)"
    );

    // The service comes back: the task recovers by itself.
    fx.iam.set_token("t1.recovered");
    fx.iam.set_mode(Mode::Verify);
    let t1 = Instant::now();
    fx.wait_for_token(&ns, "t1.recovered", Duration::from_secs(60))
        .await;
    let recovery = t1.elapsed();
    assert!(injector.log_text().contains("credential refreshed"));
    wait_writes(&injector, &writes_before, &[("updated", 1.0)]).await;
    eprintln!(
        "IAM outage of {outage:?} ({} failures counted), recovered {recovery:?} after the service did",
        refresh_failures(&injector)
    );
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn broken_key_file_keeps_the_last_good_credential_and_fixing_it_recovers() {
    let fx = Release::new("keyfile", LABEL).await;
    fx.iam.set_token("t1.from-the-good-key");
    let ns = fx.namespace("a", true).await;
    let injector = start(&fx, &["--credential-file-check-interval", "200ms"]);
    fx.wait_for_token(&ns, "t1.from-the-good-key", Duration::from_secs(20))
        .await;
    let good = std::fs::read(&fx.key_file).unwrap();
    let writes_before = wait_writes(&injector, &BTreeMap::new(), &[("created", 1.0)]).await;
    let key_path = fx.key_file.display().to_string();

    // Not a key file at all, then one the service refuses (the right ids signed by
    // another key): the change is noticed at once, the failure counted and logged, the
    // Secret untouched.
    let other = TestKey::generate(2048);
    let broken: [(&str, Vec<u8>, &str); 2] = [
        ("truncated JSON", b"{\"id\": \"aje".to_vec(), &key_path),
        (
            "a key the service refuses",
            fx.key
                .key_file_json_with_private_key(&other.private_pkcs8_pem, true)
                .into_bytes(),
            "JWT signature validation failed",
        ),
    ];
    for (what, content, message) in broken {
        let before = refresh_failures(&injector);
        let t = Instant::now();
        replace_file(&fx.key_file, &content);
        cluster::poll(
            &format!("a counted and logged failure with {what}"),
            Duration::from_secs(10),
            || async {
                let logged = injector
                    .log_text()
                    .lines()
                    .any(|l| l.contains("credential refresh failed") && l.contains(message));
                (refresh_failures(&injector) > before && logged).then_some(())
            },
        )
        .await;
        eprintln!("{what}: failure logged {:?} after the change", t.elapsed());
        let s = fx.secret(&ns).await.expect("the Secret stays");
        assert_eq!(password(&s).as_deref(), Some("t1.from-the-good-key"));
    }
    assert_eq!(writes(&injector), writes_before, "nothing written");

    // Fixed: picked up within the file check interval, not after the failure backoff.
    fx.iam.set_token("t1.after-the-fix");
    let t = Instant::now();
    replace_file(&fx.key_file, &good);
    fx.wait_for_token(&ns, "t1.after-the-fix", Duration::from_secs(10))
        .await;
    eprintln!(
        "fixed key file -> new token in the Secret: {:?}",
        t.elapsed()
    );
    wait_writes(&injector, &writes_before, &[("updated", 1.0)]).await;
}

/// Issue 11: a credential file that is broken when the process starts does not stop it. The
/// webhook serves and injects; the sync task writes nothing and reports the problem in the
/// log, the failure counter, a Warning Event about its Pod and the `/readyz` body (which
/// stays 200: the webhook is fine); once the file is fixed the Secret appears, the body
/// clears and a Normal Event says so.
#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn broken_key_file_at_start_keeps_the_webhook_serving_and_is_reported() {
    let fx = Release::new("badstart", LABEL).await;
    fx.iam.set_token("t1.after-the-fix");
    let good = std::fs::read(&fx.key_file).unwrap();
    replace_file(&fx.key_file, b"{\"id\": \"aje");
    let key_path = fx.key_file.display().to_string();
    let injector = fx.start(fx.config(), &["--credential-file-check-interval", "200ms"]);
    let logged = injector.log_text();
    assert!(
        logged.contains("registry yandex: yandexAuthorizedKey credentials: ")
            && logged.contains(&key_path),
        "the broken file is named at start:\n{logged}"
    );
    let webhook = format!("psi-{}", fx.id);
    cluster::register_webhook(
        &fx.client,
        &webhook,
        &injector.url(),
        &fx.certs.ca_pem,
        &fx.selector(),
    )
    .await;
    let ns = fx.namespace("a", true).await;
    cluster::until_admitted(
        &fx.client,
        &ns,
        &pod("probe"),
        "the webhook to inject",
        |s| s == [SECRET],
    )
    .await;

    let (status, body) = cluster::poll(
        "/readyz to report the credential problem",
        Duration::from_secs(20),
        || async {
            let r = injector.admin_get("/readyz")?;
            r.1.contains("credentials yandex: refresh failing")
                .then_some(r)
        },
    )
    .await;
    assert_eq!(
        status, 200,
        "the webhook is fine, so the replica stays ready: {body}"
    );
    assert!(
        body.contains(&key_path) && body.contains("webhook: serving"),
        "{body}"
    );
    assert!(refresh_failures(&injector) >= 1.0);
    assert!(injector.log_text().contains("credential refresh failed"));
    let events =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(fx.client.clone(), &fx.release_ns);
    let event = |reason: &'static str| {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        }
    };
    let failed = cluster::poll(
        "a CredentialRefreshFailed Event",
        Duration::from_secs(20),
        || event("CredentialRefreshFailed"),
    )
    .await;
    let note = failed.note.unwrap_or_default();
    assert!(
        note.contains("registry yandex") && note.contains(&key_path),
        "{note}"
    );
    let regarding = failed.regarding.unwrap_or_default();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Pod"), Some("injector"))
    );
    assert!(
        fx.secret(&ns).await.is_none(),
        "nothing written without a credential"
    );

    replace_file(&fx.key_file, &good);
    fx.wait_for_token(&ns, "t1.after-the-fix", Duration::from_secs(20))
        .await;
    cluster::poll("/readyz to clear", Duration::from_secs(10), || async {
        let (_, body) = injector.admin_get("/readyz")?;
        (!body.contains("credentials yandex")).then_some(())
    })
    .await;
    cluster::poll(
        "a CredentialRefreshed Event",
        Duration::from_secs(20),
        || event("CredentialRefreshed"),
    )
    .await;
    cluster::unregister_webhook(&fx.client, &webhook).await;
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn api_server_restart_with_compacted_etcd_resumes_the_watches_and_converges_without_extra_writes()
 {
    let own = OwnControlPlane::start();
    let fx = Release::on(&own.cp, "restart", LABEL).await;
    let keep = fx.namespace("keep", true).await;
    let unlabel = fx.namespace("unlabel", true).await;
    let label = fx.namespace("label", false).await;
    let repair = fx.namespace("repair", true).await;
    let mut injector = start(&fx, &[]);
    for ns in [&keep, &unlabel, &repair] {
        fx.wait_for_token(ns, "t1.stand-in-token-1", Duration::from_secs(20))
            .await;
    }
    let before = settled(&injector, Duration::from_secs(1), Duration::from_secs(20)).await;
    let kept = fx.secret(&keep).await.unwrap();
    let log_before = injector.log_text().len();

    // Killed, and down for longer than the leader's renew deadline (10 s), with etcd
    // compacted meanwhile so that no watch can resume where it was (410 Gone).
    let t0 = Instant::now();
    own.kill_apiserver();
    let revision = own.compact_etcd();
    tokio::time::sleep(Duration::from_secs(11)).await;
    own.restart_apiserver();
    let down = t0.elapsed();

    // Changes right after the restart, while the watches are still reconnecting.
    fx.set_label(&unlabel, false).await;
    fx.set_label(&label, true).await;
    fx.secrets(&repair)
        .delete(SECRET, &DeleteParams::default())
        .await
        .unwrap();
    // The watches reconnect with kube-runtime's backoff (client-go's: 0.8 s doubling to
    // 30 s), which grew during the outage: convergence may take up to about a minute.
    let t1 = Instant::now();
    fx.wait_gone(&unlabel, SECRET, Duration::from_secs(90))
        .await;
    fx.wait_for_token(&label, "t1.stand-in-token-1", Duration::from_secs(90))
        .await;
    fx.wait_for_token(&repair, "t1.stand-in-token-1", Duration::from_secs(90))
        .await;
    let converged = t1.elapsed();
    let after = settled(&injector, Duration::from_secs(3), Duration::from_secs(30)).await;

    let log = injector.log_text()[log_before..].to_string();
    eprintln!(
        "API server down {down:?} (etcd compacted at revision {revision}); converged {converged:?} after the restart"
    );
    assert!(
        injector.admin_get("/healthz").is_some(),
        "the process survived"
    );
    assert!(log.contains("watch failed; retrying with backoff"), "{log}");
    assert!(
        log.contains("too old resource version") && log.contains("Expired"),
        "a watch resumed from before the compaction got 410 Gone and re-listed:\n{log}"
    );
    assert!(log.contains("lost leadership"), "{log}");
    assert!(
        log.contains("keeping the credential fetched before"),
        "the regained lease reuses the credential:\n{log}"
    );
    assert!(log.contains("namespace watch recovered"), "{log}");
    assert!(log.contains("managed Secret watch recovered"), "{log}");
    let kept_now = fx.secret(&keep).await.unwrap();
    assert_eq!(
        kept_now.metadata.resource_version, kept.metadata.resource_version,
        "the untouched namespace's Secret was not rewritten"
    );
    assert_eq!(
        delta(&after, &before),
        BTreeMap::from([("created".into(), 2.0), ("deleted".into(), 1.0)]),
        "exactly the writes the changes need\n{log}"
    );
    let status = injector.terminate();
    assert!(status.success(), "exits 0 on SIGTERM: {status}");
    drop(own);
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn flapping_label_and_namespaces_deleted_mid_write_settle_without_an_error_loop() {
    let fx = Release::new("flap", LABEL).await;
    let injector = start(&fx, &[]);
    let on = fx.namespace("on", false).await;
    let off = fx.namespace("off", false).await;
    let before = writes(&injector);

    // 21 and 20 toggles in about 2 s: the first ends labelled, the second not.
    let t0 = Instant::now();
    for i in 0..21 {
        fx.set_label(&on, i % 2 == 0).await;
        if i < 20 {
            fx.set_label(&off, i % 2 == 0).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flapped = t0.elapsed();

    // Namespaces deleted at once or shortly after they opt in, so that their Secrets are
    // being created while they terminate. Without a controller-manager they stay
    // Terminating forever: the sync task must treat them as not opted in, delete what it
    // wrote there, and not retry the API server's 403 "being terminated" for ever.
    let namespaces = Api::<Namespace>::all(fx.client.clone());
    let mut doomed = Vec::new();
    for (i, wait_ms) in [0u64, 0, 20, 50, 100, 200, 400, 800]
        .into_iter()
        .enumerate()
    {
        let ns = fx.namespace(&format!("doomed{i}"), true).await;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        namespaces
            .delete(&ns, &DeleteParams::default())
            .await
            .unwrap();
        doomed.push(ns);
    }

    fx.wait_for_token(&on, "t1.stand-in-token-1", Duration::from_secs(30))
        .await;
    fx.wait_gone(&off, SECRET, Duration::from_secs(30)).await;
    for ns in &doomed {
        fx.wait_gone(ns, SECRET, Duration::from_secs(60)).await;
        let n = namespaces.get(ns).await.unwrap();
        assert!(
            n.metadata.deletion_timestamp.is_some(),
            "{ns} is Terminating"
        );
    }
    let after = settled(&injector, Duration::from_secs(3), Duration::from_secs(60)).await;
    // Still settled a little later (no slow error loop behind a backoff either).
    let warnings_then = warnings(&injector);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(writes(&injector), after, "writes stopped");
    assert_eq!(warnings(&injector), warnings_then, "warnings stopped");

    let d = delta(&after, &before);
    let total: f64 = d.values().sum();
    let log = injector.log_text();
    let forbidden = log
        .lines()
        .filter(|l| l.contains("being terminated"))
        .count();
    eprintln!(
        "flapped {flapped:?}; writes {d:?}; 'being terminated' log lines: {forbidden}; warnings: {}",
        warnings(&injector)
    );
    // At most a create and a delete per toggle and per doomed namespace, plus the odd
    // conflict or refused create.
    assert!(total <= 41.0 + 2.0 * 8.0 + 8.0, "{d:?}\n{log}");
    assert!(forbidden <= 8, "no loop on 'being terminated':\n{log}");
    // The final state matches the final labels.
    assert!(fx.secret(&on).await.is_some());
    assert!(fx.secret(&off).await.is_none());
    assert_eq!(
        cluster::metric(
            &metrics(&injector),
            "pullsecret_injector_managed_namespaces"
        ),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------
// The webhook

/// A kubelet-style Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..vN`.
struct SecretVolume {
    dir: PathBuf,
    n: u32,
}

impl SecretVolume {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key")).unwrap();
        Self {
            dir: dir.to_path_buf(),
            n: 0,
        }
    }

    /// New folder, then a new symlink renamed over `..data` (what kubelet does).
    fn publish(&mut self, certs: &Certs) {
        self.n += 1;
        let version = format!("..v{}", self.n);
        let d = self.dir.join(&version);
        std::fs::create_dir(&d).unwrap();
        std::fs::copy(certs.cert(), d.join("tls.crt")).unwrap();
        std::fs::copy(certs.key(), d.join("tls.key")).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// One new TLS connection and one review over HTTP/1.1; returns the served leaf.
async fn review_over_new_connection(
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.write_all(body).await.map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "answer: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        ));
    }
    Ok(leaf)
}

/// Runs without the control plane: only the binary, its files and TLS clients.
#[tokio::test]
async fn certificate_rotation_under_load_fails_no_handshake() {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    pullsecret_injector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pairs: Vec<Certs> = (0..3)
        .map(|i| Certs::generate(&dir.path().join(format!("pair{i}"))))
        .collect();
    let mut volume = SecretVolume::new(&dir.path().join("tls"));
    volume.publish(&pairs[0]);
    let password = dir.path().join("password");
    std::fs::write(&password, "p\n").unwrap();
    let config = fixture::config(vec![fixture::registry(
        "yandex",
        &["cr.yandex"],
        SECRET,
        fixture::basic("iam", &password),
    )]);
    // Served from the Secret volume's symlinks.
    let served = Certs {
        dir: volume.dir.clone(),
        ca_pem: pairs[0].ca_pem.clone(),
    };
    let injector = Injector::start(
        dir.path(),
        &served,
        config,
        &["--no-sync", "--tls-reload-interval", "50ms"],
        &[],
    );
    let webhook_port = injector.webhook_port;
    let mut roots = rustls::RootCertStore::empty();
    for p in &pairs {
        for c in CertificateDer::pem_slice_iter(&p.ca_pem) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Every connection a full handshake: a resumed session would neither show nor need the
    // current certificate.
    tls.resumption = rustls::client::Resumption::disabled();
    let tls = Arc::new(tls);
    let leaf = |c: &Certs| {
        CertificateDer::pem_file_iter(c.cert())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    };
    let leaves: Vec<Vec<u8>> = pairs.iter().map(leaf).collect();
    let body = Arc::new(
        std::fs::read(cluster::repo().join("tests/fixtures/admission-review-pod-create.json"))
            .unwrap(),
    );

    // Four clients opening new connections back to back while the pair changes 12 times.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (tls, body, stop, ok) = (tls.clone(), body.clone(), stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut seen = BTreeSet::new();
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match review_over_new_connection(webhook_port, &tls, &body).await {
                    Ok(leaf) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        seen.insert(leaf);
                    }
                    Err(e) => errors.push(e),
                }
            }
            (errors, seen)
        }));
    }
    let t0 = Instant::now();
    for i in 1..=12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let pair = &pairs[i % pairs.len()];
        volume.publish(pair);
        let want = leaf(pair);
        let served = cluster::poll(
            "the new certificate to be served",
            Duration::from_secs(5),
            || async {
                let l = review_over_new_connection(webhook_port, &tls, &body)
                    .await
                    .ok()?;
                (l == want).then_some(())
            },
        );
        served.await;
    }
    let rotated = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for c in clients {
        let (e, s) = c.await.unwrap();
        errors.extend(e);
        seen.extend(s);
    }
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "12 rotations in {rotated:?}: {ok} connections, {} failed",
        errors.len()
    );
    assert!(errors.is_empty(), "failed connections: {errors:?}");
    assert!(ok >= 12 * 5, "enough load: {ok}");
    assert_eq!(
        seen,
        leaves.into_iter().collect::<BTreeSet<_>>(),
        "the load saw every pair"
    );
    let reloads = injector
        .log_text()
        .matches("TLS certificate reloaded")
        .count();
    assert!(reloads >= 12, "{reloads} reloads logged");
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "cr.yandex/crp1/app:1"}]
        }
    }))
    .unwrap()
}

/// The webhook replaced under load the way a Deployment rollout does it: the new replica
/// becomes ready, the old one gets SIGTERM, reports not ready and keeps serving for its
/// `--shutdown-delay` while the "endpoints" move (here: the registration's URL, switched
/// by a loop in the test that follows `/readyz` like the endpoints controller), then
/// drains and exits.
#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn webhook_replaced_under_load_admits_no_pod_without_its_secret() {
    let client = cluster::admin_client().await;
    let id = cluster::unique("replace");
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("certs"));
    let password = dir.path().join("password");
    std::fs::write(&password, "p\n").unwrap();
    let selector = format!("{LABEL}={id}");
    let mut config = fixture::config(vec![fixture::registry(
        "yandex",
        &["cr.yandex"],
        SECRET,
        fixture::basic("iam", &password),
    )]);
    config.namespace_selector = selector.clone();
    let args = ["--no-sync", "--shutdown-delay", "3s"];
    let old = Injector::start(dir.path(), &certs, config.clone(), &args, &[]);
    let webhook = format!("psi-{id}");
    cluster::register_webhook(&client, &webhook, &old.url(), &certs.ca_pem, &selector).await;
    let ns = format!("{id}-a");
    cluster::create_namespace(&client, &ns, &[(LABEL, &id)]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    cluster::until_admitted(
        &client,
        &ns,
        &pod("probe"),
        "the API server to call the webhook",
        |s| !s.is_empty(),
    )
    .await;

    // 50 Pods a second for 10 s.
    let load = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut creates = Vec::new();
            for i in 0..500 {
                tick.tick().await;
                let pods = pods.clone();
                creates.push(tokio::spawn(async move {
                    let name = format!("p{i}");
                    let created = pods.create(&PostParams::default(), &pod(&name)).await;
                    (name, created.map(|p| pull_secrets(&p)))
                }));
            }
            futures::future::join_all(creates).await
        })
    };

    // The rollout: a new replica, ready; then SIGTERM to the old one. The "endpoints
    // controller" moves the registration to the replica that is ready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let new = {
        let (dir, certs_dir) = (dir.path().to_path_buf(), certs.dir.clone());
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let certs = Certs {
                ca_pem: std::fs::read(certs_dir.join("ca.crt")).unwrap(),
                dir: certs_dir,
            };
            Injector::start(&dir, &certs, config, &args, &[])
        })
        .await
        .unwrap()
    };
    let old_url = old.url();
    let old_admin = old.admin_port;
    let terminated_at = Instant::now();
    let mut old = old;
    let old_exit = tokio::task::spawn_blocking(move || {
        let status = old.terminate();
        (status, old)
    });
    let endpoints = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let switched = cluster::poll(
        "the old replica to report not ready",
        Duration::from_secs(5),
        || async {
            match cluster::http_get(old_admin, "/readyz") {
                Some((200, _)) => None,
                _ => Some(terminated_at.elapsed()),
            }
        },
    )
    .await;
    let mut config = endpoints.get(&webhook).await.unwrap();
    assert_eq!(
        config.webhooks.as_ref().unwrap()[0].client_config.url,
        Some(old_url)
    );
    config.webhooks.as_mut().unwrap()[0].client_config.url = Some(new.url());
    endpoints
        .replace(&webhook, &PostParams::default(), &config)
        .await
        .unwrap();
    let (status, old) = old_exit.await.unwrap();
    let stopped = terminated_at.elapsed();
    assert!(status.success(), "the old replica exits 0: {status}");

    let results = load.await.unwrap();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r.unwrap() {
            (_, Ok(secrets)) if secrets == [SECRET] => {}
            (name, Ok(secrets)) => missing.push((name, secrets)),
            (name, Err(e)) => failed.push((name, e.to_string())),
        }
    }
    let old_log = old.log_text();
    let after_sigterm = old_log
        .split("still serving for the shutdown delay")
        .nth(1)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains("outcome=\"injected\""))
        .count();
    let count = |i: &Injector| {
        cluster::metric(
            &metrics(i),
            "pullsecret_injector_admission_requests_total{outcome=\"injected\"}",
        )
        .unwrap_or(0.0)
    };
    eprintln!(
        "500 Pods in 10 s; old replica not ready {switched:?} after SIGTERM, exited after {stopped:?}, served {after_sigterm} reviews after SIGTERM; new replica served {}",
        count(&new)
    );
    assert!(failed.is_empty(), "Pod creations failed: {failed:?}");
    assert!(
        missing.is_empty(),
        "Pods admitted without their secret: {missing:?}"
    );
    assert!(count(&new) > 0.0, "the new replica took over");
    cluster::unregister_webhook(&client, &webhook).await;
    let _ = Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await;
}
