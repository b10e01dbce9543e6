//! The work queue: namespaces to reconcile, each at most once, some of them due later.
//!
//! Events only ever push a namespace name; the worker pops one, reconciles it, and pushes
//! it back with a delay when it must be retried. A namespace that is queued and due later
//! is moved to "now" when something pushes it again, so that a new event is never held back
//! by an earlier retry's backoff.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct Queued {
    /// Due now, in order.
    ready: VecDeque<String>,
    /// Every name in `ready`.
    in_ready: HashSet<String>,
    /// Names due later, by when.
    later: BTreeSet<(Instant, String)>,
    /// When each name in `later` is due.
    due: HashMap<String, Instant>,
}

/// A FIFO of namespace names, each at most once, with delayed retries.
#[derive(Debug, Default)]
pub struct WorkQueue {
    queued: Mutex<Queued>,
    notify: Notify,
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `namespace` now (a no-op when it is already due now).
    pub fn push(&self, namespace: &str) {
        let mut q = self.lock();
        if let Some(at) = q.due.remove(namespace) {
            q.later.remove(&(at, namespace.to_string()));
        }
        if q.in_ready.insert(namespace.to_string()) {
            q.ready.push_back(namespace.to_string());
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Queue `namespace` after `delay`, unless it is queued already (then the earlier wins).
    pub fn push_after(&self, namespace: &str, delay: Duration) {
        let at = Instant::now() + delay;
        let mut q = self.lock();
        if q.in_ready.contains(namespace) {
            return;
        }
        match q.due.get(namespace) {
            Some(existing) if *existing <= at => {}
            _ => {
                if let Some(old) = q.due.insert(namespace.to_string(), at) {
                    q.later.remove(&(old, namespace.to_string()));
                }
                q.later.insert((at, namespace.to_string()));
                drop(q);
                self.notify.notify_one();
            }
        }
    }

    /// The next namespace that is due, waiting as long as it takes.
    pub async fn pop(&self) -> String {
        loop {
            let wake = {
                let mut q = self.lock();
                let now = Instant::now();
                while let Some((at, ns)) = q.later.first().cloned() {
                    if at > now {
                        break;
                    }
                    q.later.pop_first();
                    q.due.remove(&ns);
                    if q.in_ready.insert(ns.clone()) {
                        q.ready.push_back(ns);
                    }
                }
                if let Some(ns) = q.ready.pop_front() {
                    q.in_ready.remove(&ns);
                    return ns;
                }
                q.later.first().map(|(at, _)| *at)
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = self.notify.notified() => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pop_now(q: &WorkQueue) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(1), q.pop())
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn queue_holds_each_namespace_once_in_order() {
        let q = WorkQueue::default();
        q.push("a");
        q.push("b");
        q.push("a");
        assert_eq!(q.pop().await, "a");
        q.push("a");
        assert_eq!(q.pop().await, "b");
        assert_eq!(q.pop().await, "a");
        assert_eq!(pop_now(&q).await, None, "queue is empty");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_namespace_comes_out_when_due_and_a_push_brings_it_forward() {
        let q = WorkQueue::default();
        let start = Instant::now();
        q.push_after("late", Duration::from_secs(5));
        q.push_after("later", Duration::from_secs(10));
        assert_eq!(pop_now(&q).await, None);
        assert_eq!(q.pop().await, "late");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        q.push("later");
        assert_eq!(pop_now(&q).await.as_deref(), Some("later"));
        assert_eq!(pop_now(&q).await, None, "not twice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_never_delays_a_namespace_that_is_due_now_or_sooner() {
        let q = WorkQueue::default();
        q.push("a");
        q.push_after("a", Duration::from_secs(5));
        assert_eq!(pop_now(&q).await.as_deref(), Some("a"));
        assert_eq!(pop_now(&q).await, None);
        let start = Instant::now();
        q.push_after("b", Duration::from_secs(1));
        q.push_after("b", Duration::from_secs(9));
        assert_eq!(q.pop().await, "b");
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
