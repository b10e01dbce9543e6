//! The README's quickstart, executed: the image built from the repository's Dockerfile
//! (scripts/image.sh, BuildKit), pushed to a registry that needs credentials, installed with
//! `helm install` into a whole one-node cluster (scripts/cluster.sh: kube-apiserver,
//! controller-manager, scheduler, kubelet + containerd, kube-proxy, CNI bridge, all inside a
//! network namespace with no route out), the webhook registered by Service and called by the
//! API server through it, the sync task running in the Pods with the chart's RBAC.
//!
//! Run by scripts/test.sh inside the cluster's network namespace (see tests/install/mod.rs).
//! The tests share the cluster and its registry credentials, so each takes `node::exclusive()`
//! and installs and uninstalls its own release. Figures go to stderr with an `[install-e2e]`
//! prefix.

mod cluster;
mod common;
mod install;
mod node;

mod in_cluster {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube::Client;
    use kube::api::{Api, DeleteParams, ListParams, PostParams};
    use tokio::sync::MutexGuard;

    use crate::cluster::{self, poll};
    use crate::common::iam::{IamStandIn, TestKey};
    use crate::install::{self, ClusterEnv, PodLoad, TlsFront, helm, kubectl, report};
    use crate::node::{self, Node};

    const CHART: &str = "charts/pullsecret-injector";
    /// The README's names: release, namespace, Deployment, Service, webhook configuration.
    const RELEASE: &str = "pullsecret-injector";
    const SECRET: &str = "yc-registry-secret";
    const OPT_IN: &str = "pullsecret-injector.io/inject=enabled";
    const IMAGE_REPO: &str = "crp/pullsecret-injector";
    /// Image pull of a few MB from the local registry, start, readiness (2 s delay, 5 s period).
    const ROLLOUT: &str = "180s";

    /// The image, pushed once per test binary; returns its tag.
    async fn pushed_image(env: &ClusterEnv) -> String {
        static TAG: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
        TAG.get_or_init(|| async {
            let digest = install::inspect_image(&env.image_archive)["manifestDigest"]
                .as_str()
                .expect("manifestDigest")
                .to_string();
            // A tag per build: a node never runs a stale image under a reused tag.
            let tag = format!("e2e-{}", &digest["sha256:".len()..][..12]);
            install::push_image(env, &format!("{IMAGE_REPO}:{tag}"));
            report(&format!(
                "pushed the image {digest} as cr.yandex/{IMAGE_REPO}:{tag}"
            ));
            tag
        })
        .await
        .clone()
    }

    /// How the registries of a release get their credentials.
    enum Creds {
        /// The default: IAM tokens minted from an authorized key by the IAM stand-in.
        AuthorizedKey,
        /// `basic` with a static password.
        Basic,
    }

    /// One `helm install` of the chart, as the README does it, and everything it needs;
    /// uninstalled (and its namespaces deleted) when dropped.
    struct Install {
        client: Client,
        env: ClusterEnv,
        dir: tempfile::TempDir,
        /// The release namespace (`pullsecret-injector`, as in the README).
        ns: String,
        tag: String,
        key: &'static TestKey,
        /// The password the registry accepts for the app image (the token or the basic one).
        app_password: String,
        app_user: &'static str,
        iam: Option<(IamStandIn, TlsFront)>,
        namespaces: Vec<String>,
        installed: bool,
        /// A node this test cordoned (uncordoned on drop).
        cordoned: Option<String>,
        _exclusive: MutexGuard<'static, ()>,
    }

    impl Drop for Install {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let pods = install::run(
                    Path::new("kubectl"),
                    &["-n", &self.ns, "get", "pods,events", "-o", "wide"],
                );
                eprintln!(
                    "--- kubectl -n {} get pods,events ---\n{}",
                    self.ns,
                    String::from_utf8_lossy(&pods.stdout)
                );
                let logs = install::run(
                    Path::new("kubectl"),
                    &[
                        "-n",
                        &self.ns,
                        "logs",
                        "-l",
                        "app.kubernetes.io/name=pullsecret-injector",
                        "--tail=40",
                        "--prefix",
                    ],
                );
                eprintln!(
                    "--- injector logs ---\n{}",
                    String::from_utf8_lossy(&logs.stdout)
                );
            }
            if let Some(node) = &self.cordoned {
                let _ = install::run(Path::new("kubectl"), &["uncordon", node]);
            }
            if self.installed {
                let _ = install::run(
                    &cluster::helm(),
                    &[
                        "uninstall",
                        RELEASE,
                        "-n",
                        &self.ns,
                        "--wait",
                        "--timeout",
                        "120s",
                    ],
                );
            }
            for ns in self.namespaces.iter().chain([&self.ns]) {
                let _ = install::run(
                    Path::new("kubectl"),
                    &["delete", "namespace", ns, "--wait=false"],
                );
            }
        }
    }

    impl Install {
        /// Everything before `helm install`: the image in the registry, the registry's users,
        /// the release namespace with the injector's own pull Secret and the credentials.
        async fn prepare(creds: Creds) -> Self {
            let env = ClusterEnv::from_env();
            let node = Node::from_env();
            let exclusive = node::exclusive().await;
            let client = cluster::admin_client().await;
            let tag = pushed_image(&env).await;
            let dir = tempfile::tempdir().expect("tempdir");
            let ns = RELEASE.to_string();
            // A namespace of a previous test may still be terminating.
            poll(
                &format!("namespace {ns} from an earlier test to be gone"),
                Duration::from_secs(120),
                || async {
                    let out = install::run(Path::new("kubectl"), &["get", "namespace", &ns]);
                    (!out.status.success()).then_some(())
                },
            )
            .await;
            let key = TestKey::shared(2048);
            let key_json = key.key_file_json(true);
            let (app_user, app_password) = match creds {
                Creds::AuthorizedKey => ("iam", format!("t1.e2e-{}", cluster::unique("token"))),
                Creds::Basic => ("robot", format!("basic-{}", cluster::unique("pw"))),
            };
            // The registry: the push user, `json_key` with the key file (the injector's own
            // image, as Yandex Container Registry accepts it), and the app's credentials.
            let (push_user, push_pw) = env.push_user();
            node.accept_only(&[
                (push_user, push_pw),
                ("json_key", &key_json),
                (app_user, &app_password),
            ])
            .await;
            let mut me = Self {
                client,
                env,
                dir,
                ns,
                tag,
                key,
                app_password,
                app_user,
                iam: None,
                namespaces: Vec::new(),
                installed: false,
                cordoned: None,
                _exclusive: exclusive,
            };
            // README "Quickstart", step 2, and "Deploy with Helm".
            kubectl(&["create", "namespace", &me.ns]);
            let key_file = key.write_key_file(me.dir.path(), true);
            // The injector's own image comes from a registry that needs credentials, and its
            // namespace is never opted in: a docker-registry Secret the user creates there.
            kubectl(&[
                "-n",
                &me.ns,
                "create",
                "secret",
                "docker-registry",
                "injector-pull",
                "--docker-server=cr.yandex",
                "--docker-username=json_key",
                &format!("--docker-password={key_json}"),
            ]);
            match creds {
                Creds::AuthorizedKey => {
                    kubectl(&[
                        "-n",
                        &me.ns,
                        "create",
                        "secret",
                        "generic",
                        "yc-authorized-key",
                        &format!("--from-file=key.json={}", key_file.display()),
                    ]);
                    me.start_iam().await;
                }
                Creds::Basic => {
                    let password = me.dir.path().join("password");
                    std::fs::write(&password, &me.app_password).expect("writing password");
                    kubectl(&[
                        "-n",
                        &me.ns,
                        "create",
                        "secret",
                        "generic",
                        "corp-registry",
                        &format!("--from-file=password={}", password.display()),
                    ]);
                }
            }
            me
        }

        /// The IAM stand-in (verifying the JWT like the real service) behind TLS on the node's
        /// address, where the Pods reach it; its CA in a ConfigMap the Pods trust.
        async fn start_iam(&mut self) {
            let iam = IamStandIn::start().await;
            iam.register(self.key);
            iam.set_token(&self.app_password);
            let backend = iam
                .endpoint()
                .trim_start_matches("http://")
                .split('/')
                .next()
                .expect("host:port")
                .parse()
                .expect("stand-in address");
            let certs = install::serving_certs(
                &self.dir.path().join("iam-tls"),
                "iam",
                "test",
                &[&self.env.node_ip],
            );
            let front = TlsFront::start(&format!("{}:0", self.env.node_ip), &certs, backend).await;
            kubectl(&[
                "-n",
                &self.ns,
                "create",
                "configmap",
                "iam-ca",
                &format!("--from-file=ca.crt={}", certs.join("ca.crt").display()),
            ]);
            // The audience the Pods' JWTs carry is the endpoint they are configured with.
            iam.set_public_url(&format!("https://{}/iam/v1/tokens", front.addr));
            self.iam = Some((iam, front));
        }

        fn iam_endpoint(&self) -> String {
            let (_, front) = self.iam.as_ref().expect("IAM stand-in started");
            format!("https://{}/iam/v1/tokens", front.addr)
        }

        /// Values: the defaults, except the image, the credentials and (test only) the IAM
        /// endpoint and its CA, since the real one is not reachable here.
        fn values(&self, creds: &Creds, extra: &str) -> PathBuf {
            let registries = match creds {
                Creds::AuthorizedKey => format!(
                    "credentials:\n  existingSecret: yc-authorized-key\n\
                     registries:\n  - name: yandex\n    hosts: [\"cr.yandex\", \"registry.yandexcloud.net\"]\n    secretName: {SECRET}\n    probeHosts: []\n    credentials:\n      yandexAuthorizedKey:\n        file: /creds/key.json\n        endpoint: {endpoint:?}\n\
                     extraEnv: [{{name: SSL_CERT_FILE, value: /iam-ca/ca.crt}}]\n\
                     extraVolumes: [{{name: iam-ca, configMap: {{name: iam-ca}}}}]\n\
                     extraVolumeMounts: [{{name: iam-ca, mountPath: /iam-ca, readOnly: true}}]\n",
                    endpoint = self.iam_endpoint()
                ),
                Creds::Basic => format!(
                    "credentials:\n  existingSecret: corp-registry\n\
                     registries:\n  - name: corp\n    hosts: [\"cr.yandex\"]\n    secretName: {SECRET}\n    probeHosts: []\n    credentials:\n      basic: {{ username: {user}, passwordFile: /creds/password }}\n",
                    user = self.app_user
                ),
            };
            let text = format!(
                "image:\n  repository: cr.yandex/{IMAGE_REPO}\n  tag: {tag:?}\n\
                 imagePullSecrets: [{{name: injector-pull}}]\n{registries}{extra}",
                tag = self.tag
            );
            let path = self
                .dir
                .path()
                .join(format!("values-{}.yaml", fastrand::u32(..)));
            std::fs::write(&path, text).expect("writing values");
            path
        }

        /// `helm install` (README step 3) and `kubectl rollout status`; then waits until the
        /// API server calls the webhook through the Service. Returns the time to Ready.
        async fn install(&mut self, creds: Creds, extra: &str) -> Duration {
            let values = self.values(&creds, extra);
            let t0 = Instant::now();
            helm(&[
                "install",
                RELEASE,
                &cluster::repo().join(CHART).to_string_lossy(),
                "-n",
                &self.ns,
                "-f",
                values.to_str().expect("UTF-8"),
            ]);
            self.installed = true;
            self.rollout();
            let ready = t0.elapsed();
            self.wait_for_webhook().await;
            ready
        }

        fn rollout(&self) {
            kubectl(&[
                "-n",
                &self.ns,
                "rollout",
                "status",
                &format!("deploy/{RELEASE}"),
                &format!("--timeout={ROLLOUT}"),
            ]);
        }

        async fn deployment(&self) -> Deployment {
            Api::<Deployment>::namespaced(self.client.clone(), &self.ns)
                .get(RELEASE)
                .await
                .expect("the chart's Deployment")
        }

        /// The injector's Pods that are not terminating.
        async fn injector_pods(&self) -> Vec<Pod> {
            Api::<Pod>::namespaced(self.client.clone(), &self.ns)
                .list(&ListParams::default().labels("app.kubernetes.io/name=pullsecret-injector"))
                .await
                .expect("listing the injector's Pods")
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect()
        }

        /// A namespace, opted in or not; deleted at the end.
        async fn namespace(&mut self, name: &str, opted_in: bool) -> String {
            let ns = cluster::unique(name);
            let labels: &[(&str, &str)] = if opted_in {
                &[("pullsecret-injector.io/inject", "enabled")]
            } else {
                &[]
            };
            cluster::create_namespace(&self.client, &ns, labels).await;
            self.namespaces.push(ns.clone());
            ns
        }

        /// Until a dry-run Pod in an opted-in namespace comes back with the Secret: the API
        /// server has the webhook registration and reaches a replica through the Service.
        async fn wait_for_webhook(&mut self) {
            let probe = self.namespace("probe", true).await;
            let pods = Api::<Pod>::namespaced(self.client.clone(), &probe);
            let pod = install::gated_pod("probe", "cr.yandex/crp/app:1");
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            poll(
                "the API server to call the webhook through the Service",
                Duration::from_secs(60),
                || async {
                    let p = pods.create(&dry, &pod).await.ok()?;
                    node::pull_secrets(&p)
                        .contains(&SECRET.to_string())
                        .then_some(())
                },
            )
            .await;
        }

        /// Label a new namespace (README step 4) and time its Secret.
        async fn label_and_time_secret(&mut self, name: &str) -> (String, Duration) {
            let ns = self.namespace(name, false).await;
            let secrets = Api::<Secret>::namespaced(self.client.clone(), &ns);
            let t0 = Instant::now();
            kubectl(&["label", "namespace", &ns, OPT_IN]);
            poll(
                &format!("Secret {ns}/{SECRET} after labelling"),
                Duration::from_secs(60),
                || async { secrets.get_opt(SECRET).await.ok()?.map(|_| ()) },
            )
            .await;
            (ns, t0.elapsed())
        }

        /// A Deployment of the app image from cr.yandex with no credentials in its manifest,
        /// rolled out; returns its Pods.
        async fn deploy_app(&self, ns: &str, replicas: u32) -> Vec<Pod> {
            kubectl(&[
                "-n",
                ns,
                "create",
                "deployment",
                "app",
                "--image=cr.yandex/crp/app:1",
                &format!("--replicas={replicas}"),
            ]);
            kubectl(&[
                "-n",
                ns,
                "rollout",
                "status",
                "deploy/app",
                &format!("--timeout={ROLLOUT}"),
            ]);
            Api::<Pod>::namespaced(self.client.clone(), ns)
                .list(&ListParams::default().labels("app=app"))
                .await
                .expect("listing app Pods")
                .items
        }

        /// The Lease holder's Pod name (identity `POD_NAME_<suffix>`), if any.
        async fn leader(&self) -> Option<String> {
            let lease = Api::<Lease>::namespaced(self.client.clone(), &self.ns)
                .get_opt(RELEASE)
                .await
                .ok()??;
            let holder = lease.spec?.holder_identity?;
            let (pod, _) = holder.rsplit_once('_')?;
            (!pod.is_empty()).then(|| pod.to_string())
        }

        fn metric_sum(&self, pod: &str, series: &str) -> f64 {
            let text = kubectl(&[
                "get",
                "--raw",
                &format!(
                    "/api/v1/namespaces/{}/pods/{pod}:8080/proxy/metrics",
                    self.ns
                ),
            ]);
            cluster::metric(&text, series).unwrap_or(0.0)
        }
    }

    fn pod_name(p: &Pod) -> String {
        p.metadata.name.clone().unwrap_or_default()
    }

    fn is_ready(p: &Pod) -> bool {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }

    /// The chart's defaults hold in the running Pods: scheduled by the scheduler, own Pod IPs,
    /// the hardened security context, the image from the private registry.
    fn assert_default_pods(pods: &[Pod], node_ip: &str, image: &str) {
        assert_eq!(
            pods.len(),
            2,
            "2 replicas: {:?}",
            pods.iter().map(pod_name).collect::<Vec<_>>()
        );
        let mut ips = Vec::new();
        for p in pods {
            let spec = p.spec.as_ref().expect("spec");
            let status = p.status.as_ref().expect("status");
            assert!(is_ready(p), "{} is not Ready", pod_name(p));
            assert_eq!(spec.host_network, None, "{}: hostNetwork", pod_name(p));
            assert!(
                spec.node_name.is_some(),
                "{} was not scheduled",
                pod_name(p)
            );
            let ip = status.pod_ip.clone().expect("Pod IP");
            assert!(
                ip.starts_with("10.244.0.") && ip != node_ip,
                "{}: Pod IP {ip}",
                pod_name(p)
            );
            ips.push(ip);
            let c = &spec.containers[0];
            assert_eq!(c.image.as_deref(), Some(image));
            let sc = c.security_context.as_ref().expect("securityContext");
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.run_as_user, Some(65532));
            assert_eq!(
                spec.image_pull_secrets.as_ref().map(|v| v[0].name.clone()),
                Some("injector-pull".to_string()),
                "the injector's own pull Secret"
            );
        }
        ips.dedup();
        assert_eq!(ips.len(), 2, "each replica has its own Pod IP");
    }

    #[tokio::test]
    #[ignore = "needs the cluster of scripts/cluster.sh and the image of scripts/image.sh: run scripts/test.sh"]
    async fn the_image_holds_what_the_chart_relies_on() {
        let env = ClusterEnv::from_env();
        let image = install::inspect_image(&env.image_archive);
        let config = &image["config"]["config"];
        assert_eq!(config["User"], "65532:65532", "USER: {config}");
        assert_eq!(
            config["Entrypoint"],
            serde_json::json!(["/pullsecret-injector"])
        );
        assert_eq!(
            config["Cmd"],
            serde_json::json!(["run", "--config", "/etc/pullsecret-injector/config.yaml"])
        );
        for port in ["8443/tcp", "8080/tcp"] {
            assert!(
                config["ExposedPorts"].get(port).is_some(),
                "EXPOSE {port}: {config}"
            );
        }
        let files = image["files"].as_object().expect("files");
        let file = |p: &str| {
            files
                .get(p)
                .unwrap_or_else(|| panic!("the image has no {p}"))
        };
        let bin = file("/pullsecret-injector");
        assert_eq!(bin["type"], "file");
        assert_eq!(
            bin["mode"].as_u64().map(|m| m & 0o7777),
            Some(0o755),
            "{bin}"
        );
        assert_eq!(
            bin["uid"], 0,
            "the binary belongs to root: 65532 cannot change it"
        );
        let bundle = file("/etc/ssl/certs/ca-certificates.crt");
        assert!(
            bundle["size"].as_u64() > Some(100_000),
            "CA bundle too small: {bundle}"
        );
        file("/etc/passwd");
        // What a glibc Rust binary needs (the Pods running it in the other tests prove it).
        for lib in [
            "ld-linux-x86-64.so.2",
            "libc.so.6",
            "libgcc_s.so.1",
            "libm.so.6",
        ] {
            assert!(
                files.keys().any(|p| p.ends_with(&format!("/{lib}"))),
                "the image lacks {lib}"
            );
        }
        // Nothing the process could write to, but the usual /tmp and the user's home.
        let mut writable: Vec<&String> = files
            .iter()
            .filter(|(_, f)| f["type"] != "symlink")
            .filter(|(_, f)| {
                let mode = f["mode"].as_u64().unwrap_or(0);
                mode & 0o002 != 0 || (f["uid"] == 65532 && mode & 0o200 != 0)
            })
            .map(|(p, _)| p)
            .collect();
        writable.sort();
        assert_eq!(writable, ["/home/nonroot", "/tmp"], "writable paths");
        report(&format!(
            "image {}: USER {}, {} files, /pullsecret-injector {} bytes",
            image["manifestDigest"].as_str().unwrap_or_default(),
            config["User"],
            files.len(),
            bin["size"]
        ));
    }

    #[tokio::test]
    #[ignore = "needs the cluster of scripts/cluster.sh and the image of scripts/image.sh: run scripts/test.sh"]
    async fn quickstart_with_an_authorized_key_runs_a_deployment_from_cr_yandex() {
        let mut i = Install::prepare(Creds::AuthorizedKey).await;
        let ready = i.install(Creds::AuthorizedKey, "").await;
        let image = format!("cr.yandex/{IMAGE_REPO}:{}", i.tag);
        assert_default_pods(&i.injector_pods().await, &i.env.node_ip, &image);
        let dep = i.deployment().await;
        assert_eq!(dep.status.as_ref().and_then(|s| s.ready_replicas), Some(2));
        // Registered by Service (the chart's default), with the self-signed CA.
        let mwc = kubectl(&[
            "get",
            "mutatingwebhookconfiguration",
            RELEASE,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.service.name} {.webhooks[0].clientConfig.url}",
        ]);
        assert_eq!(mwc.trim(), RELEASE, "clientConfig: service, no url");

        let (ns, secret_after) = i.label_and_time_secret("my-app").await;
        let t0 = Instant::now();
        let pods = i.deploy_app(&ns, 2).await;
        let running = t0.elapsed();
        assert_eq!(pods.len(), 2);
        for p in &pods {
            assert!(node::is_running(p), "{} is not Running", pod_name(p));
            assert_eq!(node::pull_secrets(p), [SECRET], "{}", pod_name(p));
        }
        let (iam, _) = i.iam.as_ref().expect("IAM stand-in");
        assert!(
            iam.issued() >= 1,
            "the IAM stand-in issued no token: {:?}",
            iam.rejections()
        );
        assert!(
            iam.rejections().is_empty(),
            "refused JWTs: {:?}",
            iam.rejections()
        );
        // The injector counted the injections it made (both replicas serve).
        let injected: f64 = i
            .injector_pods()
            .await
            .iter()
            .map(|p| {
                i.metric_sum(
                    &pod_name(p),
                    "pullsecret_injector_admission_requests_total{outcome=\"injected\"}",
                )
            })
            .sum();
        assert!(
            injected >= 2.0,
            "admission_requests_total{{injected}} = {injected}"
        );
        report(&format!(
            "quickstart (yandexAuthorizedKey): helm install -> 2 replicas Ready {:.1} s; namespace labelled -> Secret {:.0} ms; \
             Deployment from cr.yandex -> 2 Pods Running {:.1} s; IAM tokens issued {}",
            ready.as_secs_f64(),
            secret_after.as_secs_f64() * 1000.0,
            running.as_secs_f64(),
            iam.issued()
        ));
    }

    #[tokio::test]
    #[ignore = "needs the cluster of scripts/cluster.sh and the image of scripts/image.sh: run scripts/test.sh"]
    async fn quickstart_with_basic_credentials_runs_a_deployment() {
        let mut i = Install::prepare(Creds::Basic).await;
        let ready = i.install(Creds::Basic, "").await;
        let (ns, secret_after) = i.label_and_time_secret("corp-app").await;
        let pods = i.deploy_app(&ns, 1).await;
        assert!(node::is_running(&pods[0]));
        assert_eq!(node::pull_secrets(&pods[0]), [SECRET]);
        let s = Api::<Secret>::namespaced(i.client.clone(), &ns)
            .get(SECRET)
            .await
            .expect("the managed Secret");
        let config = s.data.expect("data")[".dockerconfigjson"].0.clone();
        let config: serde_json::Value = serde_json::from_slice(&config).expect("JSON");
        assert_eq!(config["auths"]["cr.yandex"]["username"], "robot");
        report(&format!(
            "quickstart (basic): 2 replicas Ready {:.1} s; namespace labelled -> Secret {:.0} ms; Pod Running",
            ready.as_secs_f64(),
            secret_after.as_secs_f64() * 1000.0
        ));
    }

    #[tokio::test]
    #[ignore = "needs the cluster of scripts/cluster.sh and the image of scripts/image.sh: run scripts/test.sh"]
    async fn existing_secret_certificate_mode_installs_and_serves() {
        let mut i = Install::prepare(Creds::Basic).await;
        // The user's own kubernetes.io/tls Secret for the Service's names, and its CA.
        let certs = install::serving_certs(&i.dir.path().join("tls"), RELEASE, RELEASE, &[]);
        kubectl(&[
            "-n",
            &i.ns,
            "create",
            "secret",
            "tls",
            "my-webhook-tls",
            &format!("--cert={}", certs.join("tls.crt").display()),
            &format!("--key={}", certs.join("tls.key").display()),
        ]);
        let ca = std::fs::read(certs.join("ca.crt")).expect("ca.crt");
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        // The NetworkPolicy is admitted too (this cluster's bridge CNI does not enforce it:
        // chart-check.sh checks its content).
        i.install(
            Creds::Basic,
            &format!(
                "certificates:\n  mode: existingSecret\n  existingSecret: {{name: my-webhook-tls, caBundle: {ca}}}\nnetworkPolicy: {{enabled: true}}\n"
            ),
        )
        .await;
        let (ns, _) = i.label_and_time_secret("tls-app").await;
        let pods = i.deploy_app(&ns, 1).await;
        assert_eq!(node::pull_secrets(&pods[0]), [SECRET]);
        let bundle = kubectl(&[
            "get",
            "mutatingwebhookconfiguration",
            RELEASE,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ]);
        assert_eq!(bundle.trim(), ca, "caBundle is the user's CA");
        assert!(
            install::run(
                Path::new("kubectl"),
                &["-n", &i.ns, "get", "secret", &format!("{RELEASE}-tls")]
            )
            .status
            .code()
                != Some(0),
            "existingSecret mode must not create its own TLS Secret"
        );
        report(
            "certificates.mode=existingSecret: installed, injection through the Service with the user's certificate",
        );
    }

    #[tokio::test]
    #[ignore = "needs the cluster of scripts/cluster.sh and the image of scripts/image.sh: run scripts/test.sh"]
    async fn helm_upgrade_under_pod_creation_admits_no_pod_without_its_secret() {
        let mut i = Install::prepare(Creds::Basic).await;
        i.install(Creds::Basic, "").await;
        let ns = i.namespace("load", true).await;
        let before: Vec<String> = i.injector_pods().await.iter().map(pod_name).collect();
        let load = PodLoad::start(&i.client, &ns, "cr.yandex/crp/app:1", SECRET, 25);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // A config change: the ConfigMap's checksum rolls the Pods, one at a time.
        let t0 = Instant::now();
        let chart = cluster::repo().join(CHART);
        let upgrade = {
            let ns = i.ns.clone();
            tokio::task::spawn_blocking(move || {
                helm(&[
                    "upgrade",
                    RELEASE,
                    &chart.to_string_lossy(),
                    "-n",
                    &ns,
                    "--reuse-values",
                    "--set",
                    "sync.refreshInterval=30m",
                ]);
                kubectl(&[
                    "-n",
                    &ns,
                    "rollout",
                    "status",
                    &format!("deploy/{RELEASE}"),
                    &format!("--timeout={ROLLOUT}"),
                ]);
            })
        };
        upgrade.await.expect("helm upgrade and rollout");
        let rollout = t0.elapsed();
        // The old Pods are gone (their shutdown delay and drain are over) before we stop.
        let client = i.client.clone();
        let rns = i.ns.clone();
        poll(
            "the old replicas to exit",
            Duration::from_secs(60),
            || async {
                let pods = Api::<Pod>::namespaced(client.clone(), &rns)
                    .list(
                        &ListParams::default().labels("app.kubernetes.io/name=pullsecret-injector"),
                    )
                    .await
                    .ok()?;
                (!pods.items.iter().any(|p| before.contains(&pod_name(p)))).then_some(())
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let count = load.finish().await;
        let after: Vec<String> = i.injector_pods().await.iter().map(pod_name).collect();
        assert!(
            after.iter().all(|p| !before.contains(p)),
            "the upgrade did not replace the Pods: before {before:?}, after {after:?}"
        );
        report(&format!(
            "helm upgrade under load: rollout {:.1} s; {} Pods created at {:.1}/s, {} with {SECRET}, {} without, {} create errors",
            rollout.as_secs_f64(),
            count.created,
            count.rate,
            count.injected,
            count.missing.len(),
            count.errors.len()
        ));
        assert!(
            count.rate >= 20.0,
            "the load ran at {:.1} Pods/s, below 20",
            count.rate
        );
        assert!(count.errors.is_empty(), "create errors: {:?}", count.errors);
        assert!(
            count.missing.is_empty(),
            "{} Pods admitted without {SECRET}: {:?}",
            count.missing.len(),
            count.missing
        );
        let _ = Api::<Pod>::namespaced(i.client.clone(), &ns)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
    }

    #[tokio::test]
    #[ignore = "needs the cluster of scripts/cluster.sh and the image of scripts/image.sh: run scripts/test.sh"]
    async fn deleting_the_leader_pod_hands_the_lease_to_the_other_replica() {
        let mut i = Install::prepare(Creds::Basic).await;
        i.install(Creds::Basic, "").await;
        let leader = poll("a Lease holder", Duration::from_secs(30), || i.leader()).await;
        let other: Vec<String> = i
            .injector_pods()
            .await
            .iter()
            .map(pod_name)
            .filter(|p| *p != leader)
            .collect();
        assert_eq!(other.len(), 1, "one other replica");
        let t0 = Instant::now();
        Api::<Pod>::namespaced(i.client.clone(), &i.ns)
            .delete(&leader, &DeleteParams::default())
            .await
            .expect("deleting the leader Pod");
        let next = poll(
            "another replica to take the Lease",
            Duration::from_secs(60),
            || async { i.leader().await.filter(|p| *p != leader) },
        )
        .await;
        let takeover = t0.elapsed();
        // The old leader released the Lease at SIGTERM: it is still in its shutdown delay
        // (Terminating, still serving the webhook) when another replica holds the Lease.
        let old = Api::<Pod>::namespaced(i.client.clone(), &i.ns)
            .get_opt(&leader)
            .await
            .expect("reading the old leader Pod");
        assert!(
            old.is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
            "the Lease moved only after the old leader {leader} was gone: it did not release it at SIGTERM"
        );
        let live: Vec<String> = i.injector_pods().await.iter().map(pod_name).collect();
        assert!(
            live.contains(&next),
            "the new holder {next} is not a live replica: {live:?}"
        );
        let who = if next == other[0] {
            "the other replica"
        } else {
            "the Deployment's replacement"
        };
        // The new leader syncs: a namespace labelled now gets its Secret.
        let (_, secret_after) = i.label_and_time_secret("after-takeover").await;
        report(&format!(
            "leader Pod deleted -> {who} holds the Lease after {:.1} s (released at SIGTERM; the old Pod still serves for its 5 s shutdown delay); \
             a namespace labelled after that -> Secret {:.0} ms",
            takeover.as_secs_f64(),
            secret_after.as_secs_f64() * 1000.0
        ));
    }

    #[tokio::test]
    #[ignore = "needs the cluster of scripts/cluster.sh and the image of scripts/image.sh: run scripts/test.sh"]
    async fn evicting_the_replicas_respects_the_pod_disruption_budget() {
        let mut i = Install::prepare(Creds::Basic).await;
        i.install(Creds::Basic, "").await;
        let client = i.client.clone();
        let ns = i.ns.clone();
        poll(
            "the PodDisruptionBudget to allow one disruption",
            Duration::from_secs(30),
            || async {
                let out = install::run(
                    Path::new("kubectl"),
                    &[
                        "-n",
                        &ns,
                        "get",
                        "pdb",
                        RELEASE,
                        "-o",
                        "jsonpath={.status.disruptionsAllowed}",
                    ],
                );
                (String::from_utf8_lossy(&out.stdout).trim() == "1").then_some(())
            },
        )
        .await;
        // A node drain: cordoned first, so that the evicted replica's replacement cannot start
        // (one node) and only the other replica serves.
        let node = std::env::var("PSI_TEST_NODE_NAME").expect("PSI_TEST_NODE_NAME");
        i.cordoned = Some(node.clone());
        kubectl(&["cordon", &node]);
        let pods: Vec<String> = i.injector_pods().await.iter().map(pod_name).collect();
        let api = Api::<Pod>::namespaced(client.clone(), &ns);
        // With kubectl (kube-rs's client retries a 429 until the budget allows it).
        let evict = |pod: &str| {
            let body = i.dir.path().join(format!("evict-{pod}.json"));
            std::fs::write(
                &body,
                format!(r#"{{"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {{"name": "{pod}"}}}}"#),
            )
            .expect("writing the Eviction");
            install::run(
                Path::new("kubectl"),
                &[
                    "create",
                    "--raw",
                    &format!("/api/v1/namespaces/{ns}/pods/{pod}/eviction"),
                    "-f",
                    body.to_str().expect("UTF-8"),
                ],
            )
        };
        let first = evict(&pods[0]);
        assert!(
            first.status.success(),
            "evicting {}: {}",
            pods[0],
            String::from_utf8_lossy(&first.stderr)
        );
        let second = evict(&pods[1]);
        let refusal = String::from_utf8_lossy(&second.stderr);
        assert!(
            !second.status.success()
                && refusal.contains("TooManyRequests")
                && refusal.contains("disruption budget"),
            "evicting the second replica while the first is gone: {}{refusal}",
            String::from_utf8_lossy(&second.stdout)
        );
        let serving = api.get(&pods[1]).await.expect("the second replica");
        assert!(
            serving.metadata.deletion_timestamp.is_none() && is_ready(&serving),
            "the second replica must keep serving"
        );
        // Uncordoned, the Deployment's replacement starts. (The scheduler would retry the
        // Pending one only after its unschedulable back-off: replace it now.)
        kubectl(&["uncordon", &node]);
        i.cordoned = None;
        kubectl(&[
            "-n",
            &ns,
            "delete",
            "pods",
            "--field-selector=status.phase=Pending",
            "-l",
            "app.kubernetes.io/name=pullsecret-injector",
        ]);
        i.rollout();
        report(&format!(
            "eviction (node cordoned): {} evicted, {} refused (429, PodDisruptionBudget minAvailable 1)",
            pods[0], pods[1]
        ));
    }

    #[tokio::test]
    #[ignore = "needs the cluster of scripts/cluster.sh and the image of scripts/image.sh: run scripts/test.sh"]
    async fn uninstall_leaves_no_webhook_and_a_reinstall_elects_at_once() {
        let mut i = Install::prepare(Creds::Basic).await;
        i.install(Creds::Basic, "").await;
        let (ns, _) = i.label_and_time_secret("kept").await;
        helm(&[
            "uninstall",
            RELEASE,
            "-n",
            &i.ns,
            "--wait",
            "--timeout",
            "120s",
        ]);
        i.installed = false;
        // Nothing that could stall Pod creation, nothing with cluster-wide rights.
        for (kind, name, namespace) in [
            ("mutatingwebhookconfiguration", RELEASE, None),
            ("clusterrole", RELEASE, None),
            ("clusterrolebinding", RELEASE, None),
            ("deployment", RELEASE, Some(i.ns.as_str())),
            ("service", RELEASE, Some(i.ns.as_str())),
            ("lease", RELEASE, Some(i.ns.as_str())),
            (
                "role",
                &format!("{RELEASE}-leader-election"),
                Some(i.ns.as_str()),
            ),
            ("serviceaccount", RELEASE, Some(i.ns.as_str())),
        ] {
            let mut args = vec!["get", kind, name];
            if let Some(n) = namespace {
                args.extend(["-n", n]);
            }
            let out = install::run(Path::new("kubectl"), &args);
            assert!(!out.status.success(), "helm uninstall left {kind} {name}");
        }
        // Pods still get created in an opted-in namespace, just without injection.
        let pods = Api::<Pod>::namespaced(i.client.clone(), &ns);
        let p = pods
            .create(
                &PostParams::default(),
                &install::gated_pod("after-uninstall", "cr.yandex/crp/app:1"),
            )
            .await
            .expect("creating a Pod after uninstall");
        assert!(
            node::pull_secrets(&p).is_empty(),
            "injected after uninstall"
        );
        // The managed Secrets stay, on purpose (README: Upgrade and uninstall), and the
        // documented selector finds them.
        let left = kubectl(&[
            "get",
            "secret",
            "-A",
            "-l",
            "app.kubernetes.io/managed-by=pullsecret-injector",
            "-o",
            "name",
        ]);
        assert!(
            left.contains(SECRET),
            "the managed Secret in {ns} is gone: {left}"
        );

        // A reinstall right away, the old Pods still in their shutdown delay: the Lease went
        // with the release and the old leader stepped down at SIGTERM, so the new replicas
        // elect at once instead of waiting out the old holder's lease.
        i.install(Creds::Basic, "").await;
        let (_, first_secret) = i.label_and_time_secret("after-reinstall").await;
        let logs = kubectl(&[
            "-n",
            &i.ns,
            "logs",
            "-l",
            "app.kubernetes.io/name=pullsecret-injector",
            "--tail=-1",
        ]);
        let became: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("became leader"))
            .collect();
        assert!(
            !became.is_empty(),
            "no replica became leader after the reinstall:\n{logs}"
        );
        assert!(
            became.iter().all(|l| !l.contains("expired")),
            "after the reinstall a replica waited for an old lease to expire: {became:?}"
        );
        report(&format!(
            "helm uninstall: no webhook, RBAC, Lease or Pods left; managed Secrets kept; immediate reinstall -> \
             Secret in a newly labelled namespace {:.0} ms, leader elected without waiting for a lease",
            first_secret.as_secs_f64() * 1000.0
        ));
    }

    #[tokio::test]
    #[ignore = "needs the cluster of scripts/cluster.sh and the image of scripts/image.sh: run scripts/test.sh"]
    async fn host_network_mode_serves_the_webhook_on_the_nodes_port() {
        let mut i = Install::prepare(Creds::Basic).await;
        // One node: one replica (two would want the same node port); a rolling update then
        // stops the old Pod first.
        i.install(
            Creds::Basic,
            "hostNetwork: {enabled: true}\nreplicaCount: 1\nupdateStrategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 0, maxUnavailable: 1}}\n",
        )
        .await;
        let pods = i.injector_pods().await;
        assert_eq!(pods.len(), 1);
        let spec = pods[0].spec.as_ref().expect("spec");
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(
            pods[0]
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .as_deref(),
            Some(i.env.node_ip.as_str()),
            "a host-network Pod has the node's address"
        );
        let endpoints = kubectl(&[
            "-n",
            &i.ns,
            "get",
            "endpointslices",
            "-l",
            &format!("kubernetes.io/service-name={RELEASE}"),
            "-o",
            "jsonpath={.items[0].endpoints[0].addresses[0]} {.items[0].ports[*].port}",
        ]);
        assert!(
            endpoints.starts_with(&i.env.node_ip)
                && endpoints.contains("10260")
                && endpoints.contains("10261"),
            "the Service's endpoints are the node's ports: {endpoints}"
        );
        let (ns, _) = i.label_and_time_secret("hostnet-app").await;
        let pods = i.deploy_app(&ns, 1).await;
        assert_eq!(node::pull_secrets(&pods[0]), [SECRET]);
        report(&format!(
            "hostNetwork: webhook at {endpoints}, injection through the Service"
        ));
    }
}
