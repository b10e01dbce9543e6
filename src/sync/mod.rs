//! The sync task: fresh pull Secrets in exactly the namespaces that opt in.
//!
//! Strategy. Two label-filtered watches feed in-memory state on every replica: the
//! namespaces matching the opt-in selector, and the Secrets carrying our managed-by label
//! (so nothing else is cached: never a cluster-wide cache of all Secrets). Every event only
//! queues the namespace it concerns; one worker takes namespaces off a de-duplicating queue
//! and compares desired with observed Secrets by digest, writing only on a difference, under
//! a rate limit. Credentials come from one refresh loop per registry (one fetch per refresh,
//! whatever the number of namespaces); a new credential queues every matching namespace.
//!
//! Only the leader (see the Lease in `leader`) runs the refresh loops and the worker; the
//! others keep their watches warm so that a takeover starts writing at once.

pub mod leader;
pub mod policy;
pub mod reconcile;
pub mod refresh;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret as K8sSecret};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, watch};

use crate::config::Settings;
use crate::credentials::{Credential, CredentialError, HttpClient, Provider};
use crate::metrics::{Metrics, ResultLabel};
use crate::server::Health;
use reconcile::{MANAGED_BY_LABEL, MANAGER, Observed, WriteResult};
use refresh::CredentialRx;

/// One registry as the sync task sees it.
#[derive(Debug, Clone)]
pub struct RegistrySync {
    /// `registries[].name`.
    pub name: String,
    /// `registries[].secretName`.
    pub secret_name: String,
    /// `auths` keys: the host patterns as written.
    pub hosts: Vec<String>,
    /// Where its credential comes from.
    pub provider: Arc<Provider>,
}

/// Build the per-registry providers from validated settings (no network I/O).
pub fn registries(
    settings: &Settings,
    http: &HttpClient,
) -> Result<Vec<RegistrySync>, CredentialError> {
    settings
        .registries
        .iter()
        .map(|r| {
            Ok(RegistrySync {
                name: r.entry.name().to_string(),
                secret_name: r.entry.secret_name().to_string(),
                hosts: r
                    .entry
                    .hosts()
                    .iter()
                    .map(|h| h.auth_key().to_string())
                    .collect(),
                provider: Arc::new(Provider::new(&r.credentials, http)?),
            })
        })
        .collect()
}

/// Settings of the sync task.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Namespace selector, kubectl syntax (sent to the API server as is).
    pub selector: String,
    /// Upper bound on a credential's age.
    pub refresh_interval: Duration,
    /// Write rate limit.
    pub max_writes_per_second: u32,
    /// Reporting instance for Events (the pod name).
    pub identity: String,
    /// `sync.instance`: the installation's label value on its Secrets.
    pub instance: String,
    /// How often credential files are checked for rotation between refreshes
    /// ([`refresh::FILE_CHECK_INTERVAL`] unless a test shortens it).
    pub file_check_interval: Duration,
}

/// The sync task.
pub struct Syncer {
    client: Client,
    registries: Vec<RegistrySync>,
    options: SyncOptions,
    metrics: Metrics,
    health: Arc<Health>,
    shared: Arc<Shared>,
    /// The latest good credential of each registry (same order as `registries`). Kept
    /// across terms of leadership, so that a regained lease reuses what is not due yet.
    credentials: Vec<watch::Sender<Option<Arc<Credential>>>>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("registries", &self.registries)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    /// Namespaces that match the selector and are not being deleted.
    namespaces: Mutex<HashSet<String>>,
    /// Managed Secrets by (namespace, name).
    observed: Mutex<HashMap<(String, String), Observed>>,
    queue: Queue,
}

/// A FIFO of namespaces in which each namespace is at most once.
#[derive(Default)]
struct Queue {
    inner: Mutex<(VecDeque<String>, HashSet<String>)>,
    notify: Notify,
}

impl Queue {
    fn push(&self, ns: String) {
        let mut q = lock(&self.inner);
        if q.1.insert(ns.clone()) {
            q.0.push_back(ns);
            drop(q);
            self.notify.notify_one();
        }
    }

    async fn pop(&self) -> String {
        loop {
            {
                let mut q = lock(&self.inner);
                if let Some(ns) = q.0.pop_front() {
                    q.1.remove(&ns);
                    return ns;
                }
            }
            self.notify.notified().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Syncer {
    /// A sync task for these registries.
    pub fn new(
        client: Client,
        registries: Vec<RegistrySync>,
        options: SyncOptions,
        metrics: Metrics,
        health: Arc<Health>,
    ) -> Self {
        let credentials = registries.iter().map(|_| watch::channel(None).0).collect();
        Self {
            client,
            registries,
            options,
            metrics,
            health,
            shared: Arc::default(),
            credentials,
        }
    }

    /// Run until `stop` turns true. Writes only while `leading` is true.
    pub async fn run(self, mut leading: watch::Receiver<bool>, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let ns_watch = tokio::spawn(this.clone().watch_namespaces());
        let secret_watch = tokio::spawn(this.clone().watch_secrets());
        loop {
            tokio::select! {
                r = stop.wait_for(|s| *s) => { let _ = r; break; }
                r = leading.wait_for(|l| *l) => { if r.is_err() { break; } }
            }
            if *stop.borrow() {
                break;
            }
            tracing::info!("leading: refreshing credentials and writing Secrets");
            let (lead_tx, lead_rx) = watch::channel(false);
            let tasks = this.clone().lead(lead_rx);
            tokio::select! {
                r = stop.wait_for(|s| *s) => { let _ = r; }
                r = leading.wait_for(|l| !*l) => { let _ = r; tracing::info!("no longer leading: stopped writing"); }
            }
            let _ = lead_tx.send(true);
            for t in tasks {
                let _ = t.await;
            }
            if *stop.borrow() {
                break;
            }
        }
        ns_watch.abort();
        secret_watch.abort();
    }

    /// Start the leader's work: one refresh loop per registry, a watcher of each
    /// credential, and the worker. All end when `stop` turns true.
    fn lead(self: Arc<Self>, stop: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let mut creds = Vec::new();
        for (r, tx) in self.registries.iter().zip(&self.credentials) {
            let rx = tx.subscribe();
            tasks.push(tokio::spawn(refresh::refresh_loop(
                r.name.clone(),
                r.provider.clone(),
                tx.clone(),
                self.options.refresh_interval,
                self.options.file_check_interval,
                self.metrics.clone(),
                stop.clone(),
            )));
            // A new credential concerns every matching namespace.
            let mut changed = rx.clone();
            let shared = self.shared.clone();
            let mut stop2 = stop.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = changed.changed() => if r.is_err() { return },
                        r = stop2.wait_for(|s| *s) => { let _ = r; return },
                    }
                    let all: Vec<String> = lock(&shared.namespaces).iter().cloned().collect();
                    for ns in all {
                        shared.queue.push(ns);
                    }
                }
            }));
            creds.push(rx);
        }
        // Whatever we know now may need work (e.g. our Secrets in namespaces that stopped
        // matching while no one was leading).
        self.enqueue_everything();
        tasks.push(tokio::spawn(self.worker(creds, stop)));
        tasks
    }

    fn enqueue_everything(&self) {
        let mut all: HashSet<String> = lock(&self.shared.namespaces).iter().cloned().collect();
        all.extend(lock(&self.shared.observed).keys().map(|(ns, _)| ns.clone()));
        for ns in all {
            self.shared.queue.push(ns);
        }
    }

    async fn watch_namespaces(self: Arc<Self>) {
        let api = Api::<Namespace>::all(self.client.clone());
        let config = watcher::Config::default().labels(&self.options.selector);
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        let mut init: Option<HashSet<String>> = None;
        let mut last_error: Option<String> = None;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => {
                    if last_error.take().is_some() {
                        tracing::info!("namespace watch recovered");
                    }
                    e
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(&msg) {
                        tracing::warn!(error = %msg, "namespace watch failed; retrying with backoff");
                        last_error = Some(msg);
                    }
                    continue;
                }
            };
            let active = |ns: &Namespace| ns.metadata.deletion_timestamp.is_none();
            match event {
                Event::Init => init = Some(HashSet::new()),
                Event::InitApply(ns) => {
                    if active(&ns) {
                        init.get_or_insert_with(HashSet::new).insert(ns.name_any());
                    }
                }
                Event::InitDone => {
                    let new = init.take().unwrap_or_default();
                    let old = std::mem::replace(&mut *lock(&self.shared.namespaces), new.clone());
                    self.metrics.managed_namespaces.set(new.len() as i64);
                    for ns in old.union(&new) {
                        self.shared.queue.push(ns.clone());
                    }
                    self.health.set_sync_ready();
                    tracing::info!(namespaces = new.len(), selector = %self.options.selector, "namespaces listed");
                }
                Event::Apply(ns) => {
                    let name = ns.name_any();
                    let len = {
                        let mut set = lock(&self.shared.namespaces);
                        if active(&ns) {
                            if set.insert(name.clone()) {
                                tracing::info!(namespace = %name, "namespace opted in");
                            }
                        } else if set.remove(&name) {
                            tracing::info!(namespace = %name, "namespace is being deleted");
                        }
                        set.len()
                    };
                    self.metrics.managed_namespaces.set(len as i64);
                    self.shared.queue.push(name);
                }
                Event::Delete(ns) => {
                    let name = ns.name_any();
                    let len = {
                        let mut set = lock(&self.shared.namespaces);
                        set.remove(&name);
                        set.len()
                    };
                    tracing::info!(namespace = %name, "namespace no longer opted in");
                    self.metrics.managed_namespaces.set(len as i64);
                    self.shared.queue.push(name);
                }
            }
        }
    }

    async fn watch_secrets(self: Arc<Self>) {
        let api = Api::<K8sSecret>::all(self.client.clone());
        let selector = reconcile::selector(&self.options.instance);
        let config = watcher::Config::default().labels(&selector);
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        let mut init: Option<HashMap<(String, String), Observed>> = None;
        let mut last_error: Option<String> = None;
        let key = |s: &K8sSecret| (s.namespace().unwrap_or_default(), s.name_any());
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => {
                    if last_error.take().is_some() {
                        tracing::info!("managed Secret watch recovered");
                    }
                    e
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(&msg) {
                        tracing::warn!(error = %msg, "managed Secret watch failed; retrying with backoff");
                        last_error = Some(msg);
                    }
                    continue;
                }
            };
            match event {
                Event::Init => init = Some(HashMap::new()),
                Event::InitApply(s) => {
                    init.get_or_insert_with(HashMap::new)
                        .insert(key(&s), Observed::of(&s));
                }
                Event::InitDone => {
                    let new = init.take().unwrap_or_default();
                    let old = std::mem::replace(&mut *lock(&self.shared.observed), new.clone());
                    let touched: HashSet<String> = old
                        .keys()
                        .chain(new.keys())
                        .map(|(ns, _)| ns.clone())
                        .collect();
                    for ns in touched {
                        self.shared.queue.push(ns);
                    }
                }
                Event::Apply(s) => {
                    let k = key(&s);
                    let changed = lock(&self.shared.observed).insert(k.clone(), Observed::of(&s))
                        != Some(Observed::of(&s));
                    if changed {
                        self.shared.queue.push(k.0);
                    }
                }
                Event::Delete(s) => {
                    let k = key(&s);
                    lock(&self.shared.observed).remove(&k);
                    self.shared.queue.push(k.0);
                }
            }
        }
    }

    async fn worker(self: Arc<Self>, creds: Vec<CredentialRx>, mut stop: watch::Receiver<bool>) {
        let limiter = Limiter::new(self.options.max_writes_per_second);
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(self.options.identity.clone()),
            },
        );
        let mut attempts: HashMap<String, u32> = HashMap::new();
        let mut reported_foreign: HashSet<(String, String)> = HashSet::new();
        loop {
            let ns = tokio::select! {
                r = stop.wait_for(|s| *s) => { let _ = r; return; }
                ns = self.shared.queue.pop() => ns,
            };
            match self
                .reconcile(&ns, &creds, &limiter, &recorder, &mut reported_foreign)
                .await
            {
                Ok(true) => {
                    attempts.remove(&ns);
                }
                Ok(false) | Err(_) => {
                    let n = attempts.entry(ns.clone()).or_insert(0);
                    *n = n.saturating_add(1);
                    let delay = requeue_delay(*n, fastrand::f64());
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        shared.queue.push(ns);
                    });
                }
            }
        }
    }

    /// Reconcile one namespace. `Ok(true)`: done; `Ok(false)`: retry soon (conflict).
    async fn reconcile(
        &self,
        ns: &str,
        creds: &[CredentialRx],
        limiter: &Limiter,
        recorder: &Recorder,
        reported_foreign: &mut HashSet<(String, String)>,
    ) -> Result<bool, kube::Error> {
        let matching = lock(&self.shared.namespaces).contains(ns);
        let api = Api::<K8sSecret>::namespaced(self.client.clone(), ns);
        let mut done = true;
        for (r, cred) in self.registries.iter().zip(creds) {
            let key = (ns.to_string(), r.secret_name.clone());
            let observed = lock(&self.shared.observed).get(&key).cloned();
            let written = if !matching {
                let Some(o) = observed else { continue };
                limiter.acquire().await;
                reconcile::delete(&api, &r.secret_name, &o).await
            } else {
                let Some(credential) = cred.borrow().clone() else {
                    continue;
                };
                let desired = reconcile::desired(
                    &self.options.instance,
                    ns,
                    &r.secret_name,
                    &r.name,
                    &r.hosts,
                    &credential,
                );
                match &observed {
                    Some(o) if o.digest == desired.digest => continue,
                    Some(o) => {
                        limiter.acquire().await;
                        reconcile::update(&api, &desired, o).await
                    }
                    None => {
                        limiter.acquire().await;
                        reconcile::create(&api, &desired).await
                    }
                }
            };
            let (result, now) = match written {
                Ok(w) => w,
                Err(e) => {
                    self.count(WriteResultLabel::Error);
                    tracing::warn!(namespace = ns, secret = %r.secret_name, error = %e, "writing managed Secret failed; will retry");
                    return Err(e);
                }
            };
            self.count(WriteResultLabel::Result(result));
            match result {
                WriteResult::Created | WriteResult::Updated => {
                    tracing::info!(namespace = ns, secret = %r.secret_name, registry = %r.name, result = result.as_str(), "managed Secret written");
                    if let Some(o) = now {
                        lock(&self.shared.observed).insert(key, o);
                    }
                }
                WriteResult::Deleted => {
                    tracing::info!(namespace = ns, secret = %r.secret_name, "managed Secret deleted: namespace no longer opted in");
                    lock(&self.shared.observed).remove(&key);
                }
                WriteResult::Unchanged => {
                    lock(&self.shared.observed).remove(&key);
                }
                WriteResult::Conflict => {
                    if let Some(o) = now {
                        lock(&self.shared.observed).insert(key, o);
                    }
                    done = false;
                }
                WriteResult::Foreign => {
                    self.metrics.foreign_secrets.inc();
                    if reported_foreign.insert(key) {
                        tracing::warn!(namespace = ns, secret = %r.secret_name, "a Secret with this name exists without the label {MANAGED_BY_LABEL}={MANAGER}; leaving it untouched");
                        let event = KubeEvent {
                            type_: EventType::Warning,
                            reason: "ForeignSecret".into(),
                            note: Some(format!(
                                "Secret {} exists but is not managed by pullsecret-injector (no label {MANAGED_BY_LABEL}={MANAGER}); it is left untouched, so Pods get whatever it holds. Delete or rename it to let pullsecret-injector manage registry {}.",
                                r.secret_name, r.name
                            )),
                            action: "WriteSecret".into(),
                            secondary: None,
                        };
                        let reference = ObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Namespace".into()),
                            name: Some(ns.to_string()),
                            namespace: Some(ns.to_string()),
                            ..Default::default()
                        };
                        if let Err(e) = recorder.publish(&event, &reference).await {
                            tracing::warn!(namespace = ns, error = %e, "could not publish Event");
                        }
                    }
                }
            }
        }
        Ok(done)
    }

    fn count(&self, r: WriteResultLabel) {
        let result = match r {
            WriteResultLabel::Result(r) => r.as_str(),
            WriteResultLabel::Error => "error",
        };
        self.metrics
            .secret_writes
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

/// Delay before namespace retry number `attempt` (1 for the first): 100 ms doubling up to
/// 30 s, with full jitter in its upper half so that conflicts on many namespaces spread out.
/// Shorter than the credential backoff: a conflict usually clears as soon as the watch
/// catches up.
fn requeue_delay(attempt: u32, random: f64) -> Duration {
    let cap = Duration::from_millis(100)
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
        .min(Duration::from_secs(30));
    cap.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0))
}

enum WriteResultLabel {
    Result(WriteResult),
    Error,
}

/// A token bucket: `rate` writes per second with bursts of up to `rate`.
struct Limiter {
    interval: Duration,
    burst: u32,
    next: Mutex<tokio::time::Instant>,
}

impl Limiter {
    fn new(rate: u32) -> Self {
        let rate = rate.max(1);
        Self {
            interval: Duration::from_secs(1) / rate,
            burst: rate,
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn acquire(&self) {
        let at = {
            let mut next = lock(&self.next);
            let now = tokio::time::Instant::now();
            let earliest = now
                .checked_sub(self.interval * (self.burst - 1))
                .unwrap_or(now);
            let at = (*next).max(earliest);
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_holds_each_namespace_once_in_order() {
        let q = Queue::default();
        q.push("a".into());
        q.push("b".into());
        q.push("a".into());
        assert_eq!(q.pop().await, "a");
        q.push("a".into());
        assert_eq!(q.pop().await, "b");
        assert_eq!(q.pop().await, "a");
        let popped = tokio::time::timeout(Duration::from_millis(20), q.pop()).await;
        assert!(popped.is_err(), "queue is empty");
    }

    #[test]
    fn requeue_delay_doubles_from_100ms_to_30s_with_jitter() {
        assert_eq!(requeue_delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(requeue_delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(requeue_delay(4, 1.0), Duration::from_millis(800));
        assert_eq!(requeue_delay(20, 1.0), Duration::from_secs(30));
        assert_eq!(requeue_delay(u32::MAX, 1.0), Duration::from_secs(30));
        assert_eq!(requeue_delay(0, 1.0), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_allows_a_burst_then_paces_writes() {
        let l = Limiter::new(10);
        tokio::time::advance(Duration::from_secs(5)).await;
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            l.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(1), "burst of 10");
        for _ in 0..10 {
            l.acquire().await;
        }
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(990) && e <= Duration::from_millis(1010),
            "10 more at 10/s take 1s, took {e:?}"
        );
    }
}
