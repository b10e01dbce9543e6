//! Pods left without credentials, found while the injector runs ([`crate::pods`] decides
//! what such a Pod is).
//!
//! Scale and privilege: one cluster-wide watch of Pending Pods only
//! (`fieldSelector=status.phase=Pending`, served from the API server's watch cache), which
//! keeps nothing but the few Pods that lack a Secret (a small [`Finding`] each, whatever
//! their namespace: a namespace that opts in later is then reported at once). Running Pods
//! never reach it, so its cost follows the number of Pending Pods, not the size of the
//! cluster; per-namespace watches would cost one connection per opted-in namespace, and
//! periodic lists would see a Pod only at the next period. It needs `pods` list/watch (and
//! `delete` only with `podReport.deleteOwnedPods`).
//!
//! Every replica runs the watch and exports `pods_without_credentials` (the gauge is there
//! even while no replica leads, and a new leader has nothing to catch up); only the leader
//! publishes the Event on each Pod (once per Pod and leader: a new leader reports the Pods
//! still there once more) and deletes Pods when that is enabled. A deletion needs a
//! controller that recreates Pods, the Secrets already in the namespace, a free slot of the
//! rate limit, and no sign that the webhook missed the Pod that replaced an earlier one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch as channel;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::PodReportConfig;
use crate::metrics::{RegistryLabel, ResultLabel};
use crate::pods::{Finding, deletion, examine};
use crate::registry::Registries;

use super::SyncTask;
use super::state::SecretState;

/// How often the findings are compared with the opted-in namespaces (gauge, Events,
/// deletions).
pub const PASS_INTERVAL: Duration = Duration::from_secs(2);

/// How long the Pods of a controller stay known after we deleted one of them, to tell its
/// replacement from the Pods that were there before.
const DELETED_MEMORY: Duration = Duration::from_secs(3600);

/// Where a Pod is.
type PodKey = (String, String);

/// What the leader did about one Pod.
#[derive(Debug, Default)]
struct Handled {
    /// The Event went out.
    reported: bool,
    /// It was deleted (or found gone when we tried).
    deleted: bool,
}

/// A deletion we made: the Pods of that controller we knew then.
#[derive(Debug)]
struct Deleted {
    known: HashSet<String>,
    at: Instant,
}

/// What the leader remembers between passes.
#[derive(Debug, Default)]
struct Memory {
    handled: HashMap<String, Handled>,
    /// By controller uid.
    deleted: HashMap<String, Deleted>,
}

/// The Pod watch and the passes over its findings.
pub struct PodReport {
    task: Arc<SyncTask>,
    registries: Registries,
    opt_out_annotation: String,
    config: PodReportConfig,
    /// Pending Pods that lack a Secret, in every namespace.
    found: Mutex<BTreeMap<PodKey, Finding>>,
    memory: Mutex<Memory>,
    limiter: Mutex<TokenBucket>,
}

impl std::fmt::Debug for PodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodReport")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PodReport {
    /// Reports for `task`'s namespaces, deciding as the webhook does with `registries`
    /// and `opt_out_annotation`.
    pub fn new(
        task: Arc<SyncTask>,
        registries: Registries,
        opt_out_annotation: String,
        config: PodReportConfig,
    ) -> Arc<Self> {
        let limiter = TokenBucket::per_minute(config.max_deletions_per_minute, Instant::now());
        Arc::new(Self {
            task,
            registries,
            opt_out_annotation,
            config,
            found: Mutex::default(),
            memory: Mutex::default(),
            limiter: Mutex::new(limiter),
        })
    }

    fn found(&self) -> std::sync::MutexGuard<'_, BTreeMap<PodKey, Finding>> {
        self.found.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn examine(&self, pod: &Pod) -> Option<Finding> {
        examine(pod, &self.registries, &self.opt_out_annotation)
    }

    /// Watch the Pending Pods of the cluster until `stop`, keeping those that lack a
    /// Secret. Errors (a missing RBAC rule included) are logged once per message and
    /// retried with backoff; the watch never ends the process for them.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        let api = Api::<Pod>::all(self.task.client.clone());
        let config = watcher::Config::default().fields("status.phase=Pending");
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        let mut listing: Option<BTreeMap<PodKey, Finding>> = None;
        let mut last_error: Option<String> = None;
        let key = |p: &Pod| {
            (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            )
        };
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                e = stream.next() => e,
            };
            let event = match event {
                None => anyhow::bail!("the Pending Pod watch ended"),
                Some(Ok(e)) => {
                    if last_error.take().is_some() {
                        tracing::info!("Pending Pod watch recovered");
                    }
                    e
                }
                Some(Err(e)) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(&msg) {
                        tracing::warn!(error = %msg, "Pending Pod watch failed (podReport needs RBAC pods list/watch); retrying with backoff");
                        last_error = Some(msg);
                    }
                    continue;
                }
            };
            match event {
                Event::Init => listing = Some(BTreeMap::new()),
                Event::InitApply(p) => {
                    if let Some(f) = self.examine(&p) {
                        listing.get_or_insert_with(BTreeMap::new).insert(key(&p), f);
                    }
                }
                Event::InitDone => {
                    *self.found() = listing.take().unwrap_or_default();
                    tracing::debug!(found = self.found().len(), "Pending Pods listed");
                }
                Event::Apply(p) => match self.examine(&p) {
                    Some(f) => drop(self.found().insert(key(&p), f)),
                    None => drop(self.found().remove(&key(&p))),
                },
                // Deleted, or no longer Pending.
                Event::Delete(p) => drop(self.found().remove(&key(&p))),
            }
        }
    }

    /// Every [`PASS_INTERVAL`] until `stop`: set the gauge and, while `leading`, report
    /// and (if enabled) delete.
    pub async fn report(
        self: Arc<Self>,
        leading: channel::Receiver<bool>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let recorder = self.task.recorder();
        let mut tick = tokio::time::interval(PASS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let in_scope = self.in_scope();
            self.set_gauge(&in_scope);
            if *leading.borrow() {
                self.act(&in_scope, &recorder).await;
            }
        }
    }

    /// The findings in namespaces that opt in now (and are not being deleted), each with
    /// the Secrets of the registries that namespace gets (a scoped registry's selector).
    fn in_scope(&self) -> Vec<Finding> {
        let namespaces = &self.task.state.namespaces;
        self.found()
            .values()
            .filter_map(|f| {
                let ns = namespaces.get(&f.namespace).filter(|ns| !ns.terminating)?;
                f.clone().within(|registry| {
                    self.task.registries.iter().any(|r| {
                        r.name == registry
                            && r.namespace_selector
                                .as_ref()
                                .is_none_or(|s| s.matches(&ns.labels))
                    })
                })
            })
            .collect()
    }

    fn set_gauge(&self, in_scope: &[Finding]) {
        for entry in self.registries.entries() {
            let n = in_scope
                .iter()
                .filter(|f| f.missing.iter().any(|m| m.registry == entry.name()))
                .count();
            self.task
                .metrics
                .pods_without_credentials
                .get_or_create(&RegistryLabel {
                    registry: entry.name().to_string(),
                })
                .set(n as i64);
        }
    }

    /// The leader's part: an Event per new Pod, deletions when enabled.
    async fn act(&self, in_scope: &[Finding], recorder: &Recorder) {
        let all_uids: HashSet<String> = self.found().values().map(|f| f.uid.clone()).collect();
        {
            let mut memory = self.memory();
            memory.handled.retain(|uid, _| all_uids.contains(uid));
            memory
                .deleted
                .retain(|_, d| d.at.elapsed() < DELETED_MEMORY);
        }
        for f in in_scope {
            let (reported, deleted) = {
                let mut memory = self.memory();
                let h = memory.handled.entry(f.uid.clone()).or_default();
                (h.reported, h.deleted)
            };
            if deleted {
                continue;
            }
            let decision = if self.config.delete_owned_pods {
                self.may_delete(f)
            } else {
                Err(Self::why_kept(f))
            };
            if !reported {
                self.publish_found(f, &decision, recorder).await;
                self.memory()
                    .handled
                    .entry(f.uid.clone())
                    .or_default()
                    .reported = true;
            }
            if decision.is_ok() && self.take_slot() {
                self.delete(f, &all_uids, recorder).await;
            }
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_slot(&self) -> bool {
        self.limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(Instant::now())
    }

    /// Why `f` is not deleted with `podReport.deleteOwnedPods` off: a Pod no controller
    /// would recreate is never deleted anyway, and says so.
    fn why_kept(f: &Finding) -> String {
        match &f.owner {
            Some(o) if o.recreates_pods() => "podReport.deleteOwnedPods is off".to_string(),
            Some(o) => format!(
                "its controller {}/{} is not one known to recreate its Pods",
                o.kind, o.name
            ),
            None => "no controller owns it (a bare Pod is never deleted)".to_string(),
        }
    }

    /// Whether `f` may be deleted now: `Ok` with a description of its controller.
    fn may_delete(&self, f: &Finding) -> Result<String, String> {
        let secrets = self.task.state.secrets_in(&f.namespace);
        let exists = |name: &str| matches!(secrets.get(name), Some(SecretState::Ours(_)));
        let replacement_lacks_too = f.owner.as_ref().is_some_and(|o| {
            self.memory()
                .deleted
                .get(&o.uid)
                .is_some_and(|d| !d.known.contains(&f.uid))
        });
        deletion(f, exists, replacement_lacks_too).map(|o| format!("{}/{}", o.kind, o.name))
    }

    async fn publish_found(
        &self,
        f: &Finding,
        decision: &Result<String, String>,
        recorder: &Recorder,
    ) {
        let next = match decision {
            Ok(owner) => format!("deleting it so that {owner} creates a Pod with the Secret"),
            Err(why) => format!(
                "not deleted: {why}; imagePullSecrets cannot change on an existing Pod: recreate it"
            ),
        };
        tracing::warn!(namespace = %f.namespace, pod = %f.name, reason = %f.reason, "Pod left without credentials; {next}");
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "MissingPullSecret".into(),
            note: Some(clip(&format!(
                "{}: created before its namespace opted in or while the webhook was unreachable; {next}",
                f.reason
            ))),
            action: "ReportPod".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &pod_ref(f)).await {
            tracing::warn!(namespace = %f.namespace, pod = %f.name, error = %e, "could not publish Event");
        }
    }

    async fn delete(&self, f: &Finding, all_uids: &HashSet<String>, recorder: &Recorder) {
        let api = Api::<Pod>::namespaced(self.task.client.clone(), &f.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(f.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let owner = f
            .owner
            .as_ref()
            .map(|o| (format!("{}/{}", o.kind, o.name), o.uid.clone()));
        let result = match api.delete(&f.name, &params).await {
            Ok(_) => "deleted",
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => "gone",
            Err(e) => {
                tracing::warn!(namespace = %f.namespace, pod = %f.name, error = %e, "could not delete the Pod left without credentials (podReport.deleteOwnedPods needs RBAC pods delete); retrying");
                "error"
            }
        };
        self.task
            .metrics
            .pod_deletions
            .get_or_create(&ResultLabel { result })
            .inc();
        if result == "error" {
            return;
        }
        {
            let mut memory = self.memory();
            memory.handled.entry(f.uid.clone()).or_default().deleted = true;
            if let Some((_, uid)) = &owner {
                memory.deleted.insert(
                    uid.clone(),
                    Deleted {
                        known: all_uids.clone(),
                        at: Instant::now(),
                    },
                );
            }
        }
        if result == "deleted" {
            let owner = owner.map(|(o, _)| o).unwrap_or_default();
            tracing::info!(namespace = %f.namespace, pod = %f.name, %owner, "deleted the Pod left without credentials so that its controller recreates it");
            let event = KubeEvent {
                type_: EventType::Normal,
                reason: "DeletedForPullSecret".into(),
                note: Some(clip(&format!(
                    "deleted so that {owner} creates a Pod the webhook gives its Secret ({})",
                    f.secrets().collect::<Vec<_>>().join(", ")
                ))),
                action: "DeletePod".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &pod_ref(f)).await {
                tracing::warn!(namespace = %f.namespace, pod = %f.name, error = %e, "could not publish Event");
            }
        }
    }
}

fn pod_ref(f: &Finding) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(f.name.clone()),
        namespace: Some(f.namespace.clone()),
        uid: Some(f.uid.clone()),
        ..Default::default()
    }
}

/// Event notes are at most 1 kB.
fn clip(note: &str) -> String {
    const MAX: usize = 1000;
    if note.len() <= MAX {
        return note.to_string();
    }
    let mut end = MAX - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

/// A token bucket of `capacity` slots refilled at `capacity` per minute, taken without
/// waiting (a Pod that finds it empty waits for a later pass).
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn per_minute(rate: u32, now: Instant) -> Self {
        let capacity = f64::from(rate.max(1));
        Self {
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.capacity / 60.0).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_come_in_a_burst_of_the_rate_then_one_per_slot() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(3, t0);
        assert!((0..3).all(|_| b.take(t0)), "a burst of 3");
        assert!(!b.take(t0), "then empty");
        assert!(!b.take(t0 + Duration::from_secs(19)));
        assert!(b.take(t0 + Duration::from_secs(20)), "one slot every 20 s");
        assert!(!b.take(t0 + Duration::from_secs(21)));
        // Idle for long: never more than the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
    }

    #[test]
    fn event_notes_are_clipped_to_1kb_on_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(800);
        let c = clip(&long);
        assert!(c.len() <= 1000 && c.ends_with("..."), "{}", c.len());
    }
}
