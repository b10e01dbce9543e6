//! End-to-end: leader election (`sync::leader`) against the real kube-apiserver.
//!
//! Run with `scripts/test.sh` (starts etcd and kube-apiserver on loopback). Every test has
//! its own namespace and Lease, and short timings (lease 3 s, renew deadline 2 s, retry
//! 200 ms) so that each takes a few seconds. Waiting is done with bounded polls; the only
//! fixed windows are *assertion* windows ("nobody leads during the first 1.5 s"), sampled
//! every few milliseconds.
//!
//! Each test captures the library's logs (a thread-local subscriber; `#[tokio::test]` runs
//! every task on the test's thread) to check the log contract, and prints them if it fails.

mod cluster;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use pullsecret_injector::sync::leader::{LeaderConfig, LeaderElector};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(200);
/// How often assertion windows sample the candidates.
const SAMPLE: Duration = Duration::from_millis(5);

/// Logs of one test, printed if the test fails.
struct Logs {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = LogWriter(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("pullsecret_injector=debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        Self {
            buf,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Lines at `level` (`WARN`, `INFO`, ...) that contain `needle`.
    fn lines(&self, level: &str, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(&format!(" {level} ")) && l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- leader election logs ---\n{}", self.text());
        }
    }
}

/// One replica: an elector task and its `leading` channel.
struct Candidate {
    identity: String,
    leading: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Candidate {
    fn start(client: &Client, namespace: &str, lease: &str, identity: &str) -> Self {
        let mut config = LeaderConfig::new(namespace, lease, identity);
        config.lease_duration = LEASE;
        config.renew_deadline = RENEW;
        config.retry_period = RETRY;
        let (tx, leading) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            LeaderElector::new(client.clone(), config).run(tx, async move {
                let _ = stopped.await;
            }),
        );
        Self {
            identity: identity.to_string(),
            leading,
            stop: Some(stop),
            task,
        }
    }

    fn leads(&self) -> bool {
        *self.leading.borrow()
    }

    /// Resolve the shutdown future and wait (bounded) for `run` to return.
    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(RENEW + Duration::from_secs(5), &mut self.task)
            .await
            .expect("run() returns after shutdown")
            .expect("run() does not panic");
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sample `check` every few milliseconds for `window`; it must hold every time.
async fn throughout(window: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert!(check(), "{what}");
        tokio::time::sleep(SAMPLE).await;
    }
}

/// Poll `check` every few milliseconds until it holds, at most `timeout`; returns how long
/// it took. Fine-grained (unlike `cluster::poll`) because the tests measure takeover times.
async fn until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(SAMPLE).await;
    }
}

async fn get_lease(client: &Client, namespace: &str, name: &str) -> Lease {
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("reading lease {namespace}/{name}: {e}"))
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

/// A Lease time in microseconds since the epoch.
fn micro(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>) -> i64 {
    t.expect("lease time set").0.as_microsecond()
}

fn transitions(lease: &Lease) -> Option<i32> {
    lease.spec.as_ref()?.lease_transitions
}

/// A namespace and a Lease name for one test, plus an admin client.
async fn setup(name: &str) -> (Client, String, String) {
    let client = cluster::admin_client().await;
    let namespace = cluster::unique(name);
    cluster::create_namespace(&client, &namespace, &[]).await;
    (client, namespace, "psi-leader".to_string())
}

/// Start `a`, wait until it leads, then start `b` and check for a while that `b` follows.
async fn leader_and_follower(
    client: &Client,
    namespace: &str,
    lease: &str,
) -> (Candidate, Candidate) {
    let a = Candidate::start(client, namespace, lease, "replica-a");
    until(LEASE, "replica-a to lead an absent lease", || a.leads()).await;
    let b = Candidate::start(client, namespace, lease, "replica-b");
    throughout(
        4 * RETRY,
        "replica-b follows while replica-a renews",
        || a.leads() && !b.leads(),
    )
    .await;
    (a, b)
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn two_candidates_one_leads_quickly_and_never_both() {
    let logs = Logs::capture();
    let (client, namespace, lease) = setup("leader-two").await;
    let a = Candidate::start(&client, &namespace, &lease, "replica-a");
    let b = Candidate::start(&client, &namespace, &lease, "replica-b");

    let elected = until(LEASE, "one of the two to lead", || a.leads() || b.leads()).await;
    println!("two_candidates: first leader after {elected:?}");
    assert!(elected < Duration::from_secs(1), "took {elected:?}");

    let leader = if a.leads() { &a } else { &b };
    let first = get_lease(&client, &namespace, &lease).await;
    assert_eq!(holder(&first), Some(leader.identity.as_str()));
    let spec = first.spec.as_ref().expect("lease spec");
    assert_eq!(spec.lease_duration_seconds, Some(3));
    assert_eq!(transitions(&first), Some(0), "created, never changed hands");
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());

    // Longer than a lease duration: the leader renews, the other never takes over.
    let leader_is_a = a.leads();
    throughout(
        LEASE + Duration::from_secs(1),
        "exactly the same one leads",
        || a.leads() != b.leads() && a.leads() == leader_is_a,
    )
    .await;
    let later = get_lease(&client, &namespace, &lease).await;
    assert_eq!(holder(&later), Some(leader.identity.as_str()));
    assert_eq!(transitions(&later), Some(0));
    assert_ne!(
        later.spec.as_ref().and_then(|s| s.renew_time.clone()),
        spec.renew_time,
        "renewTime advances"
    );
    assert_eq!(
        later.spec.as_ref().and_then(|s| s.acquire_time.clone()),
        spec.acquire_time,
        "acquireTime stays"
    );
    let became = logs.lines("INFO", "became leader");
    assert_eq!(became.len(), 1, "{became:?}");
    assert!(became[0].contains(&leader.identity) && became[0].contains(&lease));
    assert!(
        logs.lines("WARN", "").is_empty(),
        "no warnings:\n{}",
        logs.text()
    );
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn released_lease_is_taken_over_within_about_one_retry_period() {
    let logs = Logs::capture();
    let (client, namespace, lease) = setup("leader-release").await;
    let (mut a, b) = leader_and_follower(&client, &namespace, &lease).await;

    let stopped = Instant::now();
    a.shut_down().await;
    assert!(!a.leads(), "false is published on shutdown");
    until(LEASE, "replica-b to take over the released lease", || {
        assert!(!(a.leads() && b.leads()), "both lead");
        b.leads()
    })
    .await;
    let takeover = stopped.elapsed();
    println!("release: replica-b leads {takeover:?} after replica-a was told to stop");
    assert!(
        takeover < LEASE / 3,
        "takeover after release took {takeover:?}, expected about one retry period ({RETRY:?})"
    );

    let l = get_lease(&client, &namespace, &lease).await;
    assert_eq!(holder(&l), Some("replica-b"));
    assert_eq!(transitions(&l), Some(1));
    assert_eq!(
        logs.lines("INFO", "released lease").len(),
        1,
        "{}",
        logs.text()
    );
    assert!(
        logs.lines("INFO", "became leader")
            .iter()
            .any(|l| l.contains("replica-b") && l.contains("released"))
    );
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn crashed_leader_is_replaced_after_the_lease_duration_and_not_before() {
    let logs = Logs::capture();
    let (client, namespace, lease) = setup("leader-crash").await;
    let (a, b) = leader_and_follower(&client, &namespace, &lease).await;

    // A crash: no release, no `false`; the lease still names replica-a.
    a.task.abort();
    let crashed = Instant::now();
    throughout(
        LEASE / 2,
        "nobody takes over during the first half lease duration",
        || !b.leads(),
    )
    .await;
    // Any write replica-a had in flight has landed by now: this is its last renewal.
    let last = get_lease(&client, &namespace, &lease).await;
    assert_eq!(holder(&last), Some("replica-a"), "nobody took over yet");
    until(
        LEASE * 2,
        "replica-b to take over the expired lease",
        || b.leads(),
    )
    .await;
    let takeover = crashed.elapsed();

    let l = get_lease(&client, &namespace, &lease).await;
    // Both times were written by this host's wall clock: replica-b took over at least a
    // lease duration after the last renewal it saw.
    let gap = micro(l.spec.as_ref().and_then(|s| s.acquire_time.as_ref()))
        - micro(last.spec.as_ref().and_then(|s| s.renew_time.as_ref()));
    println!(
        "crash: replica-b leads {takeover:?} after replica-a was aborted, acquireTime {:?} after replica-a's last renewTime (lease {LEASE:?})",
        Duration::from_micros(gap.max(0).unsigned_abs())
    );
    assert!(
        gap >= i64::try_from(LEASE.as_micros()).unwrap() - 10_000,
        "took over {gap} µs after the last renewal, before the lease expired"
    );
    assert!(
        takeover < LEASE + RENEW,
        "took over only after {takeover:?}"
    );
    assert_eq!(holder(&l), Some("replica-b"));
    assert_eq!(transitions(&l), Some(1));
    assert!(
        logs.lines("INFO", "became leader")
            .iter()
            .any(|l| l.contains("replica-b") && l.contains("replica-a expired")),
        "{}",
        logs.text()
    );
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn missing_namespace_is_retried_quietly_until_it_exists() {
    let logs = Logs::capture();
    let client = cluster::admin_client().await;
    let namespace = cluster::unique("leader-nons");
    let lease = "psi-leader";
    let mut a = Candidate::start(&client, &namespace, lease, "replica-a");

    throughout(LEASE / 2, "no leadership without the namespace", || {
        !a.leads() && !a.task.is_finished()
    })
    .await;
    let warnings = logs.lines("WARN", &namespace);
    assert_eq!(
        warnings.len(),
        1,
        "one warning, not one per retry:\n{}",
        logs.text()
    );
    assert!(warnings[0].contains("not found"), "{}", warnings[0]);

    // Still retrying: it leads as soon as the namespace exists.
    cluster::create_namespace(&client, &namespace, &[]).await;
    let took = until(LEASE, "replica-a to lead once the namespace exists", || {
        a.leads()
    })
    .await;
    println!("missing namespace: leads {took:?} after the namespace was created");
    assert_eq!(logs.lines("INFO", "lease calls work again").len(), 1);
    a.shut_down().await;
    let l = get_lease(&client, &namespace, lease).await;
    assert_eq!(holder(&l), Some(""), "released on shutdown");
}

/// A client that authenticates as ServiceAccount `name` in `namespace` (TokenRequest).
async fn service_account_client(admin: &Client, namespace: &str, name: &str) -> Client {
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    let sas = Api::<ServiceAccount>::namespaced(admin.clone(), namespace);
    sas.create(&PostParams::default(), &sa)
        .await
        .unwrap_or_else(|e| panic!("creating ServiceAccount {name}: {e}"));
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {name}: {e}"))
        .status
        .expect("TokenRequest status")
        .token;
    let path = cluster::kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).expect("admin kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("admin kubeconfig");
    config.auth_info = AuthInfo {
        token: Some(token.into()),
        ..AuthInfo::default()
    };
    Client::try_from(config).expect("building kube client")
}

/// Exactly the RBAC the module documents: get, create, update on leases in the namespace.
async fn grant_lease_rbac(admin: &Client, namespace: &str, sa: &str) {
    let role = Role {
        metadata: ObjectMeta {
            name: Some("leader-election".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            verbs: vec!["get".into(), "create".into(), "update".into()],
            ..PolicyRule::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("leader-election".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "leader-election".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa.into(),
            namespace: Some(namespace.into()),
            ..Subject::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &role)
        .await
        .expect("creating Role");
    Api::<RoleBinding>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .expect("creating RoleBinding");
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn identity_without_rbac_retries_quietly_and_leads_with_exactly_get_create_update() {
    let logs = Logs::capture();
    let (admin, namespace, lease) = setup("leader-rbac").await;
    let client = service_account_client(&admin, &namespace, "elector").await;
    let mut a = Candidate::start(&client, &namespace, &lease, "replica-a");

    throughout(LEASE / 2, "no leadership without RBAC", || {
        !a.leads() && !a.task.is_finished()
    })
    .await;
    let warnings = logs.lines("WARN", "");
    assert_eq!(
        warnings.len(),
        1,
        "one warning, not one per retry:\n{}",
        logs.text()
    );
    assert!(warnings[0].contains("forbidden"), "{}", warnings[0]);

    grant_lease_rbac(&admin, &namespace, "elector").await;
    let took = until(LEASE * 2, "replica-a to lead once RBAC allows it", || {
        a.leads()
    })
    .await;
    println!("rbac: leads {took:?} after the Role was bound");
    // Renewals (get + update) keep working for longer than a lease duration.
    throughout(
        LEASE + Duration::from_millis(500),
        "replica-a keeps leading",
        || a.leads(),
    )
    .await;
    a.shut_down().await;
    let l = get_lease(&admin, &namespace, &lease).await;
    assert_eq!(holder(&l), Some(""), "released with get + update only");
    assert_eq!(logs.lines("WARN", "").len(), 1, "{}", logs.text());
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn leader_stops_at_once_when_another_holder_appears_and_waits_out_its_lease() {
    let logs = Logs::capture();
    let (client, namespace, lease) = setup("leader-intruder").await;
    let a = Candidate::start(&client, &namespace, &lease, "replica-a");
    until(LEASE, "replica-a to lead", || a.leads()).await;

    // Someone else (a replica with skewed judgement, a human) writes itself in.
    let leases = Api::<Lease>::namespaced(client.clone(), &namespace);
    let mut l = get_lease(&client, &namespace, &lease).await;
    let spec = l.spec.as_mut().expect("lease spec");
    spec.holder_identity = Some("intruder".into());
    spec.lease_transitions = Some(1);
    let overwritten = loop {
        // Taken before the request: replica-a cannot see the new record earlier than this.
        let sent = Instant::now();
        match leases.replace(&lease, &PostParams::default(), &l).await {
            Ok(_) => break sent,
            // replica-a renewed in between: take its newer version and try again.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let holder = l.spec.take();
                l = get_lease(&client, &namespace, &lease).await;
                l.spec = holder;
            }
            Err(e) => panic!("overwriting the lease: {e}"),
        }
    };
    let lost = until(LEASE, "replica-a to notice", || !a.leads()).await;
    println!("intruder: replica-a stopped leading {lost:?} after the lease was overwritten");
    assert!(lost < 3 * RETRY, "noticed only after {lost:?}");
    let lost_lines = logs.lines("INFO", "lost leadership");
    assert_eq!(lost_lines.len(), 1, "{}", logs.text());
    assert!(lost_lines[0].contains("intruder"), "{}", lost_lines[0]);

    // The intruder never renews: its lease expires a lease duration after replica-a saw it.
    throughout(
        LEASE / 2,
        "replica-a waits for the intruder's lease",
        || !a.leads(),
    )
    .await;
    until(
        LEASE * 2,
        "replica-a to take the expired lease back",
        || a.leads(),
    )
    .await;
    let back = overwritten.elapsed();
    println!("intruder: replica-a leads again {back:?} after the overwrite");
    assert!(back >= LEASE, "took the lease back after only {back:?}");
    assert_eq!(
        transitions(&get_lease(&client, &namespace, &lease).await),
        Some(2)
    );
}

#[tokio::test]
#[ignore = "needs the local control plane: run scripts/test.sh"]
async fn leader_that_cannot_renew_stops_within_the_renew_deadline() {
    let logs = Logs::capture();
    let (admin, namespace, lease) = setup("leader-deadline").await;
    let client = service_account_client(&admin, &namespace, "elector").await;
    grant_lease_rbac(&admin, &namespace, "elector").await;
    let a = Candidate::start(&client, &namespace, &lease, "replica-a");
    until(LEASE * 2, "replica-a to lead", || a.leads()).await;

    // Revoke its access: every renewal from now on fails.
    Api::<RoleBinding>::namespaced(admin.clone(), &namespace)
        .delete("leader-election", &Default::default())
        .await
        .expect("deleting the RoleBinding");
    let revoked = Instant::now();
    until(RENEW * 2, "replica-a to stop leading", || !a.leads()).await;
    let lost_at = jiff::Timestamp::now();
    let lost = revoked.elapsed();

    // Measured against the last renewTime it wrote (same host, same wall clock): it stopped
    // about renew_deadline after that, i.e. before anyone else could count the lease expired.
    let renewed = get_lease(&admin, &namespace, &lease)
        .await
        .spec
        .and_then(|s| s.renew_time)
        .expect("renewTime");
    let since_renewal = lost_at.duration_since(
        jiff::Timestamp::from_microsecond(renewed.0.as_microsecond()).expect("renewTime"),
    );
    println!(
        "renew deadline: replica-a stopped leading {lost:?} after losing access, {since_renewal:#} after its last renewTime"
    );
    assert!(
        since_renewal < jiff::SignedDuration::try_from(LEASE).unwrap(),
        "still leading {since_renewal:#} after its last renewal (lease {LEASE:?})"
    );
    assert!(
        since_renewal >= jiff::SignedDuration::try_from(RENEW / 2).unwrap(),
        "gave up after only {since_renewal:#}"
    );
    let lost_lines = logs.lines("INFO", "lost leadership");
    assert_eq!(lost_lines.len(), 1, "{}", logs.text());
    assert!(
        lost_lines[0].contains("renew deadline"),
        "{}",
        lost_lines[0]
    );
    let warnings = logs.lines("WARN", "");
    assert_eq!(
        warnings.len(),
        1,
        "one warning, not one per retry:\n{}",
        logs.text()
    );
    assert!(warnings[0].contains("forbidden"), "{}", warnings[0]);
}
