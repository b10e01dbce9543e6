//! Support for end-to-end tests on a real node: the registry, containerd and kubelet that
//! `scripts/node.sh start` runs on loopback next to the control plane (see `scripts/test.sh`).
//!
//! The registry is Debian's `docker-registry` (distribution 2.8) with htpasswd auth. It
//! re-reads its htpasswd file whenever the file's modification time changes, so
//! [`Node::accept_only`] changes the credentials it accepts at runtime by renaming a new file
//! over the old one. Those credentials are global to the node: tests that depend on them take
//! [`exclusive`] for their whole run.
//!
//! Like the control-plane tests these are `#[ignore]`d in a plain `cargo test`; when they run
//! without the node they FAIL with the reason, they never pass silently.

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Event, Pod, PodSpec};
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta};

/// The node's registry accepts one set of credentials at a time; a test that sets them, or
/// relies on them, holds this for its whole run (the node tests run one after the other).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Print a line that shows up in CI logs even when the test passes (`eprintln!` is captured
/// by the test harness; a direct write to stderr is not).
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "[node-e2e] {line}");
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the node tests need the local control plane AND the node \
             (registry, containerd, kubelet): run scripts/test.sh, or `scripts/node.sh start DIR` \
             after `scripts/control-plane.sh start DIR` and `source DIR/env; source DIR/node.env`"
        )
    })
}

/// What `scripts/node.sh start` wrote into `DIR/node.env`.
pub struct Node {
    /// `DIR/node`: logs, configs, state.
    pub dir: PathBuf,
    /// The Node's name (`local`).
    pub name: String,
    /// `127.0.0.1:<port>` of the registry.
    pub registry: String,
    /// A folder holding only the registry's CA as `ca.crt` (skopeo `--cert-dir`).
    pub cert_dir: PathBuf,
    /// The registry's CA file.
    pub ca: PathBuf,
    /// The registry's htpasswd file.
    pub htpasswd: PathBuf,
    /// The image's repository and tag in the registry (`crp/app:1`).
    pub image_path: String,
}

impl Node {
    /// The running node, or a failure that says how to start it.
    pub fn from_env() -> Self {
        let flag = env("PSI_TEST_NODE");
        assert_eq!(
            flag, "1",
            "PSI_TEST_NODE={flag:?}: the node is not running (run scripts/test.sh)"
        );
        let node = Self {
            dir: env("PSI_TEST_NODE_DIR").into(),
            name: env("PSI_TEST_NODE_NAME"),
            registry: env("PSI_TEST_REGISTRY"),
            cert_dir: env("PSI_TEST_REGISTRY_CERT_DIR").into(),
            ca: env("PSI_TEST_REGISTRY_CA").into(),
            htpasswd: env("PSI_TEST_REGISTRY_HTPASSWD").into(),
            image_path: env("PSI_TEST_IMAGE_PATH"),
        };
        assert!(
            node.htpasswd.is_file() && node.ca.is_file(),
            "{} or {} is missing: the node in {} is not running (scripts/node.sh start)",
            node.htpasswd.display(),
            node.ca.display(),
            node.dir.display()
        );
        assert!(
            node.dir.join("kubelet.pid").is_file(),
            "no kubelet.pid in {}: the node is not running (scripts/node.sh start)",
            node.dir.display()
        );
        node
    }

    /// The test image as seen from `host` (`cr.yandex/crp/app:1`).
    pub fn image(&self, host: &str) -> String {
        format!("{host}/{}", self.image_path)
    }

    /// The test image under the registry's own address (`127.0.0.1:<port>/crp/app:1`).
    pub fn direct_image(&self) -> String {
        self.image(&self.registry)
    }

    /// Make the registry accept exactly `users` (username, password) and nobody else, and
    /// wait until it does. bcrypt (the only hash distribution's htpasswd supports) reads at
    /// most 72 bytes of a password, so a longer one is checked on its first 72 bytes.
    pub async fn accept_only(&self, users: &[(&str, &str)]) {
        let mut text = Vec::new();
        for (user, password) in users {
            let pw = &password.as_bytes()[..password.len().min(72)];
            let out = Command::new("htpasswd")
                .args(["-nbB", "-C", "4", user])
                .arg(std::ffi::OsStr::from_bytes(pw))
                .output()
                .expect("running htpasswd (Debian package apache2-utils)");
            assert!(
                out.status.success(),
                "htpasswd for {user}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            text.extend_from_slice(String::from_utf8_lossy(&out.stdout).trim_end().as_bytes());
            text.push(b'\n');
        }
        let before = std::fs::metadata(&self.htpasswd)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let tmp = self.htpasswd.with_extension("new");
        let file = std::fs::File::create(&tmp).expect("creating the new htpasswd");
        (&file).write_all(&text).expect("writing the new htpasswd");
        // The registry reloads when the mtime differs from the one it read: make sure it does
        // even if two writes fall into the same clock tick.
        let mtime = SystemTime::now().max(before + Duration::from_millis(1));
        file.set_modified(mtime)
            .expect("setting the htpasswd mtime");
        drop(file);
        std::fs::rename(&tmp, &self.htpasswd).expect("replacing the htpasswd");
        for (user, password) in users {
            let what = format!("the registry to accept user {user}");
            crate::cluster::poll(&what, Duration::from_secs(10), || async {
                (self.registry_status(user, password) == 200).then_some(())
            })
            .await;
        }
    }

    /// HTTP status of `GET /v2/` on the registry with these credentials.
    pub fn registry_status(&self, user: &str, password: &str) -> u16 {
        crate::common::registry::v2_status(&self.registry, &self.ca, Some((user, password)))
    }

    /// `skopeo inspect --authfile AUTHFILE docker://<registry>/crp/app:1`, verifying TLS with
    /// the test CA: Ok(the image digest) or Err(skopeo's error).
    pub fn skopeo_inspect(&self, authfile: &Path) -> Result<String, String> {
        let out = Command::new("skopeo")
            .arg("inspect")
            .arg("--authfile")
            .arg(authfile)
            .arg("--cert-dir")
            .arg(&self.cert_dir)
            .arg("--tls-verify=true")
            .arg(format!("docker://{}", self.direct_image()))
            .output()
            .expect("running skopeo");
        if out.status.success() {
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("skopeo inspect prints JSON");
            Ok(v["Digest"].as_str().unwrap_or_default().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The last `n` lines of kubelet's log that mention `needle`.
    pub fn kubelet_log(&self, needle: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("kubelet.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A Pod for the node: one container running `image`, `imagePullPolicy: Always` (so every
/// Pod really pulls, whatever the node already has), bound to the node by `nodeName` (there
/// is no scheduler), host network (there is no CNI), no service-account token.
pub fn pod(node: &Node, name: &str, image: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.name.clone()),
            host_network: Some(true),
            dns_policy: Some("Default".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(5),
            containers: vec![Container {
                name: "app".into(),
                image: Some(image.to_string()),
                image_pull_policy: Some("Always".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub use crate::cluster::pull_secrets;

/// `reason: message` of every Event about Pod `ns/name`, oldest first.
pub async fn events(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let list = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut items: Vec<_> = list
        .into_iter()
        .map(|e| {
            let when = e
                .last_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            (
                when,
                format!(
                    "{} (x{}): {}",
                    e.reason.unwrap_or_default(),
                    e.count.unwrap_or(1),
                    e.message.unwrap_or_default()
                ),
            )
        })
        .collect();
    items.sort();
    items.into_iter().map(|(_, e)| e).collect()
}

/// Failed pulls kubelet reported for the Pod (the `Failed` events' count).
pub async fn failed_pulls(client: &Client, ns: &str, name: &str) -> i32 {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("Failed")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("Failed to pull image"))
        })
        .map(|e| e.count.unwrap_or(1))
        .sum()
}

/// The waiting reason of the Pod's first container (`ErrImagePull`, `ImagePullBackOff`, ...).
pub fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

/// Whether the Pod is `Running` with its container started.
pub fn is_running(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status.container_statuses.as_ref().is_some_and(|cs| {
            cs.iter()
                .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
}

/// Poll Pod `ns/name` until `done` says so, at most `timeout`; on timeout, panic with the
/// Pod's status, its Events and kubelet's log lines about it.
pub async fn wait_pod<F>(
    client: &Client,
    node: &Node,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    done: F,
) -> (Pod, Duration)
where
    F: Fn(&Pod) -> bool,
{
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let mut last = None;
    loop {
        if let Ok(p) = api.get(name).await {
            if done(&p) {
                return (p, t0.elapsed());
            }
            last = Some(p);
        }
        if Instant::now() >= deadline {
            let status = last
                .and_then(|p| p.status)
                .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                .unwrap_or_else(|| "(no Pod)".into());
            panic!(
                "timed out after {timeout:?} waiting for Pod {ns}/{name} to be {what}\n\
                 status: {status}\nevents:\n  {}\nkubelet log:\n{}",
                events(client, ns, name).await.join("\n  "),
                node.kubelet_log(name, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the Pod runs; returns how long that took from now.
pub async fn wait_running(
    client: &Client,
    node: &Node,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Duration {
    wait_pod(client, node, ns, name, "Running", timeout, is_running)
        .await
        .1
}

/// Wait until kubelet reports a failed pull (`ErrImagePull` or `ImagePullBackOff`).
pub async fn wait_pull_failure(
    client: &Client,
    node: &Node,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> (String, Duration) {
    let (p, d) = wait_pod(
        client,
        node,
        ns,
        name,
        "ErrImagePull or ImagePullBackOff",
        timeout,
        |p| {
            matches!(
                waiting_reason(p).as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        },
    )
    .await;
    (waiting_reason(&p).unwrap_or_default(), d)
}
