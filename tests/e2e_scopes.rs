//! End-to-end: registries scoped to the namespaces that may use them. Two teams' registries
//! (each with a `namespaceSelector` on a team label) and one shared registry, with the
//! config AND the MutatingWebhookConfiguration rendered by the Helm chart from the same
//! values (one webhook entry per scope, registered by URL), the binary running as the
//! chart's ServiceAccount, and the real kube-apiserver choosing which entries a Pod goes to.
//! Every namespace gets exactly its own Secrets and exactly those injected; relabelling a
//! namespace moves both.
//!
//! Run with `scripts/test.sh`.

mod cluster;
mod common;
mod fixture;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use cluster::Injector;
use fixture::{Config, CredentialSources, Release, basic};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const LABEL: &str = "pullsecret-injector.io/e2e-scopes";
const TEAM: &str = "e2e-scopes.pullsecret-injector.io/team";
/// One image from each registry.
const IMAGES: [&str; 3] = [
    "cr.yandex/crp/app:1",
    "registry.team-a.example/app:1",
    "registry.team-b.example/app:1",
];
const SHARED: &str = "yc-registry-secret";
const TEAM_A: &str = "team-a-pull";
const TEAM_B: &str = "team-b-pull";

struct Fixture {
    release: Release,
    release_name: String,
    values: std::path::PathBuf,
    webhook: String,
}

impl std::ops::Deref for Fixture {
    type Target = Release;
    fn deref(&self) -> &Release {
        &self.release
    }
}

impl Fixture {
    async fn new() -> Self {
        let release = Release::new("scopes", LABEL).await;
        // The release is named like the fixture's: the chart's sync.instance, which the
        // admission policy requires on every Secret the ServiceAccount writes, matches.
        let release_name = release.id.clone();
        let values = release.dir.path().join("values.yaml");
        let ca = base64::engine::general_purpose::STANDARD.encode(&release.certs.ca_pem);
        std::fs::write(
            &values,
            format!(
                r#"
namespaceSelector: {{ key: {LABEL}, value: "{id}" }}
certificates: {{ mode: existingSecret, existingSecret: {{ name: unused, caBundle: "{ca}" }} }}
credentials: {{ existingSecret: unused }}
registries:
  - name: yandex
    hosts: [cr.yandex]
    secretName: {SHARED}
    probeHosts: []
    credentials: {{ basic: {{ username: iam, passwordFile: /creds/yandex }} }}
  - name: team-a
    hosts: [registry.team-a.example]
    secretName: {TEAM_A}
    probeHosts: []
    namespaceSelector: {{ matchLabels: {{ {TEAM}: a }} }}
    credentials: {{ basic: {{ username: robot-a, passwordFile: /creds/team-a }} }}
  - name: team-b
    hosts: [registry.team-b.example]
    secretName: {TEAM_B}
    probeHosts: []
    namespaceSelector:
      matchExpressions: [{{ key: {TEAM}, operator: In, values: [b] }}]
    credentials: {{ basic: {{ username: robot-b, passwordFile: /creds/team-b }} }}
"#,
                id = release.id,
            ),
        )
        .unwrap();
        Self {
            webhook: format!("{release_name}-pullsecret-injector"),
            release_name,
            values,
            release,
        }
    }

    /// `helm template` of one chart file with this test's values and `extra` --set flags.
    fn render(&self, template: &str, extra: &[&str]) -> Vec<u8> {
        let out = Command::new(cluster::helm())
            .args(["template", &self.release_name])
            .arg(cluster::repo().join("charts/pullsecret-injector"))
            .args([
                "--namespace",
                &self.release_ns,
                "--show-only",
                template,
                "-f",
            ])
            .arg(&self.values)
            .args(extra)
            .output()
            .expect("running helm template");
        assert!(
            out.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The chart's config file, with the password files of this test.
    fn chart_config(&self) -> Config {
        let cm: serde_json::Value =
            serde_norway::from_slice(&self.render("templates/configmap.yaml", &[])).unwrap();
        let text = cm["data"]["config.yaml"].as_str().expect("config.yaml");
        let mut config = Config::from_yaml(text).expect("the chart renders a valid config");
        for r in &mut config.registries {
            let file = self.dir.path().join(format!("password-{}", r.name));
            std::fs::write(&file, format!("password-of-{}\n", r.name)).unwrap();
            let username = match &r.credentials.0[..] {
                [fixture::CredentialSource::Basic(b)] => b.username.clone(),
                other => panic!("unexpected credentials {other:?}"),
            };
            r.credentials = CredentialSources(vec![basic(&username, &file)]);
        }
        config
    }

    /// Register the chart's MutatingWebhookConfiguration, in URL mode at `injector`.
    fn register(&self, injector: &Injector) {
        let mwc = self.render(
            "templates/webhook.yaml",
            &["--set", &format!("webhook.url={}", injector.url())],
        );
        cluster::kubectl_apply(&mwc);
    }

    async fn namespace_with(&self, suffix: &str, labels: &[(&str, &str)]) -> String {
        let ns = format!("{}-{suffix}", self.id);
        cluster::create_namespace(&self.client, &ns, labels).await;
        ns
    }

    async fn set_team(&self, ns: &str, team: Option<&str>) {
        Api::<Namespace>::all(self.client.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {TEAM: team}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("labelling {ns}: {e}"));
    }

    /// The names of this installation's Secrets in `ns`.
    async fn managed(&self, ns: &str) -> BTreeSet<String> {
        let lp = ListParams::default().labels(&format!(
            "app.kubernetes.io/managed-by=pullsecret-injector,pullsecret-injector.io/instance={}",
            self.release_name
        ));
        self.secrets(ns)
            .list(&lp)
            .await
            .expect("listing Secrets")
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect()
    }

    async fn wait_managed(&self, ns: &str, want: &[&str]) {
        let want = set(want);
        cluster::poll(
            &format!("managed Secrets {want:?} in {ns}"),
            Duration::from_secs(20),
            || async { (self.managed(ns).await == want).then_some(()) },
        )
        .await;
    }

    /// Create a Pod with one image of every registry (`dry_run`: only ask); the Secret names
    /// the API server stored.
    async fn injected(&self, ns: &str, name: &str, dry_run: bool) -> BTreeSet<String> {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {
                "automountServiceAccountToken": false,
                "containers": IMAGES.iter().enumerate()
                    .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
                    .collect::<Vec<_>>(),
            }
        }))
        .unwrap();
        let pp = PostParams {
            dry_run,
            ..Default::default()
        };
        let stored = Api::<Pod>::namespaced(self.client.clone(), ns)
            .create(&pp, &pod)
            .await
            .unwrap_or_else(|e| panic!("creating Pod {ns}/{name}: {e}"));
        stored
            .spec
            .and_then(|s| s.image_pull_secrets)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect()
    }

    /// Poll dry-run Pods until the API server's webhooks inject `want` in `ns`.
    async fn wait_injection(&self, ns: &str, want: &[&str]) {
        let want = set(want);
        cluster::poll(
            &format!("injection of {want:?} in {ns}"),
            Duration::from_secs(20),
            || async { (self.injected(ns, "probe", true).await == want).then_some(()) },
        )
        .await;
    }

    /// A real Pod in `ns` gets exactly the Secrets this installation keeps there.
    async fn assert_exactly_its_own(&self, ns: &str, pod: &str, want: &[&str]) {
        let secrets = self.managed(ns).await;
        assert_eq!(secrets, set(want), "Secrets in {ns}");
        let injected = self.injected(ns, pod, false).await;
        assert_eq!(injected, secrets, "Pod {ns}/{pod}: injected vs kept");
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "[e2e-scopes] {line}");
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn each_namespace_gets_exactly_its_teams_secrets_and_injections_and_relabelling_moves_them() {
    let fx = Fixture::new().await;
    let config = fx.chart_config();
    // RBAC and the admission policy for the three Secret names this config uses.
    fx.authorise(&config);
    let injector = fx.start(config, &[]);
    fx.register(&injector);
    let id = fx.id.clone();
    let a = fx.namespace_with("a", &[(LABEL, &id), (TEAM, "a")]).await;
    let b = fx.namespace_with("b", &[(LABEL, &id), (TEAM, "b")]).await;
    let plain = fx.namespace_with("plain", &[(LABEL, &id)]).await;
    let out = fx.namespace_with("out", &[(TEAM, "a")]).await;

    fx.wait_managed(&a, &[SHARED, TEAM_A]).await;
    fx.wait_managed(&b, &[SHARED, TEAM_B]).await;
    fx.wait_managed(&plain, &[SHARED]).await;
    // Registrations reach the API server's admission chain asynchronously.
    fx.wait_injection(&a, &[SHARED, TEAM_A]).await;
    fx.assert_exactly_its_own(&a, "app", &[SHARED, TEAM_A])
        .await;
    fx.assert_exactly_its_own(&b, "app", &[SHARED, TEAM_B])
        .await;
    fx.assert_exactly_its_own(&plain, "app", &[SHARED]).await;
    fx.assert_exactly_its_own(&out, "app", &[]).await;

    // Team a's namespace moves to team b: its Secrets and its injections follow.
    let t0 = Instant::now();
    fx.set_team(&a, Some("b")).await;
    let right_after = fx.injected(&a, "right-after", false).await;
    fx.wait_managed(&a, &[SHARED, TEAM_B]).await;
    let moved = t0.elapsed();
    fx.wait_injection(&a, &[SHARED, TEAM_B]).await;
    let injection = t0.elapsed();
    fx.assert_exactly_its_own(&a, "after-move", &[SHARED, TEAM_B])
        .await;
    report(&format!(
        "relabel a->b: Secrets moved {moved:.1?} and injection {injection:.1?} after the label patch; a Pod created right after the patch got {right_after:?}"
    ));
    assert!(
        right_after == set(&[SHARED, TEAM_A]) || right_after == set(&[SHARED, TEAM_B]),
        "a Pod admitted during the relabel gets the old or the new scope, never a mix: {right_after:?}"
    );

    // No team at all: only the shared registry.
    fx.set_team(&a, None).await;
    fx.wait_managed(&a, &[SHARED]).await;
    fx.wait_injection(&a, &[SHARED]).await;
    fx.assert_exactly_its_own(&a, "no-team", &[SHARED]).await;
    // The other namespaces were never touched.
    fx.assert_exactly_its_own(&b, "still", &[SHARED, TEAM_B])
        .await;
    assert!(fx.managed(&out).await.is_empty());

    cluster::unregister_webhook(&fx.client, &fx.webhook).await;
    drop(injector);
}
