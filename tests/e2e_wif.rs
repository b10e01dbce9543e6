//! End-to-end: no key at all. The injector runs as the chart's ServiceAccount and exchanges a
//! token of that same ServiceAccount (TokenRequest with the federation's audience and a
//! short expiry, what the chart's projected volume holds) at a stand-in of the Yandex token
//! exchange, which verifies it against the real kube-apiserver's OIDC discovery document
//! and JWKS (tests/common/wif.rs). Tokens of another ServiceAccount or for another audience
//! are refused, and then nothing is written.
//!
//! Run with `scripts/test.sh`.

mod cluster;
mod common;
mod fixture;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster::Injector;
use common::wif::{Federation, WifStandIn, allow_anonymous_discovery};
use fixture::{Config, Release, SECRET, YANDEX_HOSTS, password, registry, workload_identity};

const LABEL: &str = "pullsecret-injector.io/e2e-wif";
/// The federation's audience: on Yandex Managed Kubernetes, the cluster's issuer URL.
const AUDIENCE: &str = "https://storage.yandexcloud.net/mk8s-oidc/v1/clusters/e2e";
/// The Yandex service account linked to the chart's ServiceAccount.
const SA_ID: &str = "ajee2ewif0000000000a";

/// A release, a stand-in federated with the real API server, and the injector's token file.
struct Fixture {
    release: Release,
    wif: WifStandIn,
    /// `system:serviceaccount:<release namespace>:<chart ServiceAccount>`.
    subject: String,
    chart_sa: String,
    token_file: PathBuf,
}

impl std::ops::Deref for Fixture {
    type Target = Release;
    fn deref(&self) -> &Release {
        &self.release
    }
}

impl Fixture {
    async fn new(name: &str) -> Self {
        let release = Release::new(name, LABEL).await;
        let cp = cluster::ControlPlane::shared();
        allow_anonymous_discovery(&release.client).await;
        let ca = std::fs::read(&cp.ca).expect("the API server's CA");
        let federation = Federation::of_cluster(&cp.server, &ca, AUDIENCE).await;
        assert_eq!(federation.issuer, "https://kubernetes.default.svc");
        let wif = WifStandIn::start(federation).await;
        let chart_sa = release.service_account().await;
        let subject = format!("system:serviceaccount:{}:{chart_sa}", release.release_ns);
        wif.link(SA_ID, &subject);
        let token_file = release.dir.path().join("wif-token");
        Self {
            release,
            wif,
            subject,
            chart_sa,
            token_file,
        }
    }

    /// Write a TokenRequest token of ServiceAccount `sa` for `audience` (10 minutes, like
    /// the chart's projection) into the token file.
    async fn write_token(&self, sa: &str, audience: &str) {
        let token = self.token_request(sa, audience, 600).await;
        std::fs::write(&self.token_file, token).expect("writing the token file");
    }

    /// The sync setup with the Yandex registry on workload identity.
    fn wif_config(&self) -> Config {
        let mut c = self.config();
        c.registries = vec![registry(
            "yandex",
            &YANDEX_HOSTS,
            SECRET,
            workload_identity(SA_ID, &self.token_file, &self.wif.endpoint()),
        )];
        c
    }

    fn start(&self) -> Injector {
        self.release.start(self.wif_config(), &["--no-webhook"])
    }

    /// `pullsecret-injector check` with the workload identity config: exit code and output.
    async fn check(&self) -> (i32, String) {
        let path = self.dir.path().join("check.yaml");
        std::fs::write(&path, serde_norway::to_string(&self.wif_config()).unwrap()).unwrap();
        tokio::task::spawn_blocking(move || run_check(&path))
            .await
            .unwrap()
    }
}

fn run_check(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pullsecret-injector"))
        .args(["check", "--config"])
        .arg(config)
        .env_remove("PULLSECRET_INJECTOR_CONFIG")
        .output()
        .expect("running check");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn failures(i: &Injector) -> f64 {
    let (_, m) = i.admin_get("/metrics").expect("metrics");
    cluster::metric(
        &m,
        "pullsecret_injector_credential_refresh_total{registry=\"yandex\",result=\"failure\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn the_chart_service_accounts_own_token_becomes_an_iam_login_for_both_hosts() {
    let fx = Fixture::new("wif-ok").await;
    fx.write_token(&fx.chart_sa, AUDIENCE).await;
    fx.wif.set_token("t1.wif-e2e-token-1");
    let injector = fx.start();
    let ns = fx.namespace("a", true).await;
    let s = fx
        .wait_for_token(&ns, "t1.wif-e2e-token-1", Duration::from_secs(20))
        .await;
    for host in YANDEX_HOSTS {
        assert_eq!(
            password(&s, host).as_deref(),
            Some("t1.wif-e2e-token-1"),
            "{host}"
        );
    }
    let data = &s.data.as_ref().unwrap()[".dockerconfigjson"].0;
    let config = pullsecret_injector::dockerconfig::parse(data).unwrap();
    assert!(config.auths.values().all(|e| e.username == "iam"));
    let expires: jiff::Timestamp =
        s.metadata.annotations.as_ref().unwrap()["pullsecret-injector.io/expires-at"]
            .parse()
            .unwrap();
    let hours = expires.duration_since(jiff::Timestamp::now()).as_secs_f64() / 3600.0;
    assert!((11.9..=12.01).contains(&hours), "expires in {hours} h");

    // What the stand-in verified: the cluster's signature, issuer, audience and subject.
    let exchanges = fx.wif.exchanges();
    let claims = exchanges[0].outcome.as_ref().expect("issued");
    assert_eq!(claims["iss"], "https://kubernetes.default.svc");
    assert_eq!(claims["sub"], fx.subject.as_str());
    assert_eq!(claims["aud"], serde_json::json!([AUDIENCE]));
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 600, "the short expiry asked for");
    assert_eq!(exchanges[0].form["audience"], SA_ID);
    assert_eq!(fx.wif.issued(), 1, "one exchange per refresh");

    // `check` works with the same token file.
    let (code, out) = fx.check().await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("registry yandex: ok: hosts cr.yandex,registry.yandexcloud.net, secret yc-registry-secret, yandexWorkloadIdentity as iam, expires "),
        "{out}"
    );
    assert!(!out.contains("t1.wif-e2e-token-1"), "{out}");
    assert_eq!(fx.wif.issued(), 2);
    drop(injector);
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn tokens_of_another_service_account_or_audience_are_refused_and_nothing_is_written() {
    let fx = Fixture::new("wif-refused").await;
    fx.write_token(&fx.chart_sa, AUDIENCE).await;
    fx.wif.set_token("t1.wif-good-token");
    let mut injector = fx.start();
    let kept = fx.namespace("kept", true).await;
    fx.wait_for_token(&kept, "t1.wif-good-token", Duration::from_secs(20))
        .await;
    assert_eq!(injector.terminate().code(), Some(0));

    // The `default` ServiceAccount of the same namespace is not linked; the chart's own for
    // the API server's audience is not for the federation.
    let other_sa = format!("system:serviceaccount:{}:default", fx.release_ns);
    let cases = [
        (
            "another ServiceAccount",
            "default",
            AUDIENCE,
            format!(
                "invalid_target: no federated credential links subject {other_sa} to service account {SA_ID}"
            ),
        ),
        (
            "another audience",
            fx.chart_sa.as_str(),
            "https://kubernetes.default.svc",
            format!(
                "invalid_request: subject_token: aud [\"https://kubernetes.default.svc\"] holds none of the federation's audiences [\"{AUDIENCE}\"]"
            ),
        ),
    ];
    fx.wif.set_token("t1.wif-never-issued");
    for (case, sa, audience, refusal) in cases {
        fx.write_token(sa, audience).await;
        let before = fx.wif.exchanges().len();
        let injector = fx.start();
        let fresh = fx.namespace(&format!("fresh-{}", before), true).await;
        cluster::poll(
            &format!("{case}: a counted refusal"),
            Duration::from_secs(20),
            || async { (failures(&injector) >= 1.0).then_some(()) },
        )
        .await;
        let refused = fx.wif.rejections();
        assert!(
            refused.last().is_some_and(|r| r == &refusal),
            "{case}: {refused:?}"
        );
        assert!(
            injector.log_text().contains(&refusal),
            "{case}: the log names the service's error:\n{}",
            injector.log_text()
        );
        assert_eq!(fx.wif.issued(), 1, "{case}: nothing issued");
        // Nothing written: the earlier Secret keeps its token, the new namespace gets none.
        assert_eq!(
            password(&fx.secret(&kept).await.expect("kept"), "cr.yandex").as_deref(),
            Some("t1.wif-good-token"),
            "{case}"
        );
        assert!(fx.secret(&fresh).await.is_none(), "{case}: no Secret");
        let (code, out) = fx.check().await;
        assert_eq!(code, 1, "{case}: {out}");
        assert!(
            out.contains(&refusal),
            "{case}: check names the error: {out}"
        );
        drop(injector);
    }
}
