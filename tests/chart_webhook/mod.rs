//! The chart's own MutatingWebhookConfiguration (`templates/webhook.yaml`, matchConditions
//! and objectSelector included), rendered with `helm template` in URL mode and registered on
//! the local API server, so that tests and benchmarks exercise exactly what a user installs.
//! Needs the `cluster` module (helm, kubectl, the control plane's kubeconfig).

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use base64::Engine;

use crate::cluster;

/// The chart's default registries (values and injector config alike), with static
/// credentials read from `PASSWORD_FILE` (replace it with a real path).
pub const YANDEX_REGISTRIES: &str = r#"
registries:
  - name: yandex
    hosts: ["cr.yandex", "registry.yandexcloud.net"]
    secretName: yc-registry-secret
    credentials: { basic: { username: iam, passwordFile: PASSWORD_FILE } }
"#;

/// The injector's config for a values YAML (`registries:`, every other field default): the
/// same text serves as the chart's values and as the binary's config.
pub fn config(values_yaml: &str) -> pullsecret_injector::config::Config {
    pullsecret_injector::config::Config::from_yaml(values_yaml)
        .unwrap_or_else(|e| panic!("config from {values_yaml}: {e}"))
}

/// What to render.
pub struct Render<'a> {
    /// The MutatingWebhookConfiguration's name (`fullnameOverride`).
    pub name: &'a str,
    /// Values YAML (at least `registries:`), as a user's values file.
    pub values_yaml: &'a str,
    /// `webhook.url`.
    pub url: &'a str,
    /// PEM of the CA that signed the webhook's certificate (the caBundle).
    pub ca_pem: &'a [u8],
    /// The namespace opt-in label (`namespaceSelector.key` = `.0`, `.value` = `.1`).
    pub opt_in: (&'a str, &'a str),
    /// More `helm template` arguments (`--set ...`, `--kube-version ...`).
    pub args: &'a [&'a str],
}

/// `helm template --show-only templates/webhook.yaml` of the chart; the rendered YAML or
/// helm's error output.
pub fn render(dir: &Path, r: &Render<'_>) -> Result<String, String> {
    let values = dir.join(format!("values-{}.yaml", r.name));
    std::fs::write(&values, r.values_yaml).expect("writing values file");
    let ca = base64::engine::general_purpose::STANDARD.encode(r.ca_pem);
    let out = Command::new(cluster::helm())
        .args(["template", "psi"])
        .arg(cluster::repo().join("charts/pullsecret-injector"))
        .args(["--namespace", "psi-chart-webhook", "-f"])
        .arg(&values)
        .args(["--show-only", "templates/webhook.yaml"])
        .arg("--set-string")
        .arg(format!("fullnameOverride={}", r.name))
        .arg("--set-string")
        .arg(format!("webhook.url={}", r.url))
        .args(["--set", "certificates.mode=existingSecret"])
        .args(["--set", "certificates.existingSecret.name=unused"])
        .arg("--set-string")
        .arg(format!("certificates.existingSecret.caBundle={ca}"))
        .arg("--set-string")
        .arg(format!("namespaceSelector.key={}", r.opt_in.0))
        .arg("--set-string")
        .arg(format!("namespaceSelector.value={}", r.opt_in.1))
        .args(r.args)
        .output()
        .expect("running helm template");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("helm output is UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Render and `kubectl apply` it; returns the rendered YAML. Panics with helm's or kubectl's
/// message when either refuses.
pub fn register(dir: &Path, r: &Render<'_>) -> String {
    let rendered = render(dir, r).unwrap_or_else(|e| panic!("helm template {}: {e}", r.name));
    cluster::kubectl_apply(rendered.as_bytes());
    rendered
}

/// The image-count bound of the generated `images-from-configured-registries` condition
/// (`... > N`): a Pod with more images is sent to the webhook without looking at them.
pub fn image_bound(rendered: &str) -> Option<usize> {
    rendered.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("+ (has(object.spec.volumes)")?;
        rest.rsplit_once("> ")?.1.trim().parse().ok()
    })
}

/// The regex of the generated condition (the text inside `matches(r'...')`).
pub fn image_regex(rendered: &str) -> Option<&str> {
    let start = rendered.find(".matches(r'")? + ".matches(r'".len();
    let len = rendered[start..].find('\'')?;
    Some(&rendered[start..start + len])
}

/// Reviews the injector has answered so far, every outcome
/// (`pullsecret_injector_admission_requests_total`): whether the API server called it.
pub fn injector_reviews(injector: &cluster::Injector) -> u64 {
    let (_, text) = injector.admin_get("/metrics").expect("injector metrics");
    text.lines()
        .filter(|l| l.starts_with("pullsecret_injector_admission_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}
