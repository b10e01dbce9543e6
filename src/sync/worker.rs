//! The worker: takes a namespace off the queue, plans it, carries the steps out under the
//! write rate limit, and records what happened (state, metrics, logs). One worker per term
//! of leadership, so writes are serial and never race each other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ResultLabel};

use super::RegistrySync;
use super::apply::{Applier, Outcome};
use super::plan::{NamespaceView, RegistryView, Step, plan};
use super::state::{SecretKey, State};

/// How a reconcile ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reconciled {
    /// Every step is done.
    Done,
    /// A write ran into a concurrent change: retry soon.
    Retry,
}

/// Writes one namespace at a time until its term ends.
pub struct Worker<'a> {
    /// What the watches know.
    pub state: &'a State,
    /// The registries and their current credentials.
    pub registries: &'a [RegistrySync],
    /// `sync.instance`.
    pub instance: &'a str,
    /// The I/O.
    pub applier: Applier,
    /// Write rate limit.
    pub limiter: Limiter,
    /// Counters.
    pub metrics: &'a Metrics,
}

impl Worker<'_> {
    /// Reconcile queued namespaces until `stop` is cancelled (in the middle of a
    /// reconcile too: a term of leadership ends at once).
    pub async fn run(self, stop: CancellationToken) {
        let mut attempts: HashMap<String, u32> = HashMap::new();
        loop {
            let ns = tokio::select! {
                () = stop.cancelled() => return,
                ns = self.state.queue.pop() => ns,
            };
            let result = tokio::select! {
                () = stop.cancelled() => return,
                r = self.reconcile(&ns) => r,
            };
            match result {
                Ok(Reconciled::Done) => {
                    attempts.remove(&ns);
                }
                Ok(Reconciled::Retry) | Err(_) => {
                    let n = attempts.entry(ns.clone()).or_insert(0);
                    *n = n.saturating_add(1);
                    self.state
                        .queue
                        .push_after(&ns, requeue_delay(*n, fastrand::f64()));
                }
            }
        }
    }

    async fn reconcile(&self, ns: &str) -> Result<Reconciled, kube::Error> {
        let info = self.state.namespaces.get(&ns.to_string());
        let secrets = self.state.secrets_in(ns);
        let credentials: Vec<_> = self
            .registries
            .iter()
            .map(|r| (r, r.credential.borrow().clone()))
            .collect();
        let registries: Vec<RegistryView<'_>> = credentials
            .iter()
            .map(|(r, c)| RegistryView {
                name: &r.name,
                secret_name: &r.secret_name,
                hosts: &r.hosts,
                namespace_selector: r.namespace_selector.as_ref(),
                credential: c.as_deref(),
            })
            .collect();
        let steps = plan(&NamespaceView {
            instance: self.instance,
            name: ns,
            info: info.as_ref(),
            registries: &registries,
            secrets: &secrets,
        });
        let mut reconciled = Reconciled::Done;
        for step in &steps {
            if !matches!(step, Step::ReportForeign { .. }) {
                self.limiter.acquire().await;
            }
            let outcome = match self.applier.apply(ns, step).await {
                Ok(o) => o,
                Err(e) => {
                    self.count("error");
                    tracing::warn!(namespace = ns, secret = step_secret(step), error = %e, "writing managed Secret failed; will retry");
                    return Err(e);
                }
            };
            if self.record(ns, step, outcome) == Reconciled::Retry {
                reconciled = Reconciled::Retry;
            }
        }
        Ok(reconciled)
    }

    /// Count, log and remember what a step did.
    fn record(&self, ns: &str, step: &Step, outcome: Outcome) -> Reconciled {
        if let Some(result) = outcome.write_result() {
            self.count(result);
        }
        let name = step_secret(step);
        let key = SecretKey::new(ns, name);
        match outcome {
            Outcome::Created(o) | Outcome::Updated(o) => {
                let result = if matches!(step, Step::Create(_)) {
                    "created"
                } else {
                    "updated"
                };
                tracing::info!(
                    namespace = ns,
                    secret = name,
                    registry = o.registry.as_deref().unwrap_or_default(),
                    result,
                    "managed Secret written"
                );
                self.state.wrote(key, planned_from(step), Some(o));
            }
            Outcome::Deleted => {
                let reason = match step {
                    Step::Delete { reason, .. } => reason.as_str(),
                    _ => "",
                };
                tracing::info!(
                    namespace = ns,
                    secret = name,
                    reason,
                    "managed Secret deleted"
                );
                self.state.wrote(key, planned_from(step), None);
            }
            Outcome::AlreadyGone => {
                self.state.set_secret(key, None);
            }
            Outcome::Conflict(now) => {
                if let Some(o) = now {
                    self.state.set_secret(key, Some(o));
                }
                return Reconciled::Retry;
            }
            Outcome::Foreign => {
                self.metrics.foreign_secrets.inc();
                if self.state.found_foreign(key) {
                    // The next plan reports it.
                    self.state.queue.push(ns);
                }
            }
            Outcome::Reported => self.state.reported_foreign(key),
        }
        Reconciled::Done
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .secret_writes
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

/// The version of the Secret a step was planned from (`None`: it was absent).
fn planned_from(step: &Step) -> Option<&str> {
    match step {
        Step::Update { observed, .. } | Step::Delete { observed, .. } => {
            Some(&observed.resource_version)
        }
        Step::Create(_) | Step::ReportForeign { .. } => None,
    }
}

fn step_secret(step: &Step) -> &str {
    match step {
        Step::Create(d) | Step::Update { desired: d, .. } => {
            d.secret.metadata.name.as_deref().unwrap_or_default()
        }
        Step::Delete { name, .. } => name,
        Step::ReportForeign { secret_name, .. } => secret_name,
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

/// A token bucket: `rate` writes per second with bursts of up to `rate`.
#[derive(Debug)]
pub struct Limiter {
    interval: Duration,
    burst: u32,
    next: Mutex<tokio::time::Instant>,
}

impl Limiter {
    /// `rate` writes per second (at least 1).
    pub fn new(rate: u32) -> Self {
        let rate = rate.max(1);
        Self {
            interval: Duration::from_secs(1) / rate,
            burst: rate,
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Wait for the next write slot.
    pub async fn acquire(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
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
