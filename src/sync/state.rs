//! What every replica knows of the cluster, fed by the watches, read by the worker.
//!
//! Mirrors of the opted-in namespaces and of our Secrets (one mirror per watched Secret name,
//! each fed by its own watch: RBAC authorises Secret reads by name only), the Secrets we
//! found to be foreign (learned from refused creates: the label-filtered watches never see
//! them), and the work queue. Every change pushes the namespace it concerns; nothing else
//! decides anything here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;

use super::queue::WorkQueue;
use super::secret::Observed;

/// A namespace that matches the top-level selector, as far as the sync task cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceInfo {
    /// Its labels (for per-registry selectors).
    pub labels: BTreeMap<String, String>,
    /// It has a deletion timestamp: Secrets can no longer be created in it.
    pub terminating: bool,
}

impl NamespaceInfo {
    /// Read what matters from a watched Namespace.
    pub fn of(ns: &Namespace) -> Self {
        Self {
            labels: ns.labels().clone(),
            terminating: ns.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// Where a Secret is: namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl SecretKey {
    /// The key of `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key of a watched Secret.
    pub fn of(secret: &Secret) -> Self {
        Self::new(&secret.namespace().unwrap_or_default(), &secret.name_any())
    }
}

/// What the sync task knows of one Secret name in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretState {
    /// Ours, as last observed (watch or our own write).
    Ours(Observed),
    /// Someone else's (a create was refused and the object lacks our labels).
    Foreign {
        /// Whether it was reported (log line and Event) already.
        reported: bool,
    },
}

/// A map kept equal to what a watch reports.
#[derive(Debug)]
pub struct Mirror<K, V> {
    map: Mutex<BTreeMap<K, V>>,
}

impl<K, V> Default for Mirror<K, V> {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> Mirror<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<K, V>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace everything (a fresh list); returns the keys whose value changed, appeared or
    /// disappeared.
    pub fn replace_all(&self, new: BTreeMap<K, V>) -> Vec<K> {
        let old = std::mem::replace(&mut *self.lock(), new.clone());
        let mut changed: Vec<K> = old
            .iter()
            .filter(|(k, v)| new.get(k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        changed.extend(new.keys().filter(|k| !old.contains_key(k)).cloned());
        changed
    }

    /// Insert or replace; returns whether the value changed.
    pub fn upsert(&self, key: K, value: V) -> bool {
        self.lock().insert(key, value.clone()).as_ref() != Some(&value)
    }

    /// Set `key` to `value` (remove it for `None`) only if `current` holds for what is there
    /// now; returns whether it did.
    pub fn set_if(
        &self,
        key: K,
        current: impl FnOnce(Option<&V>) -> bool,
        value: Option<V>,
    ) -> bool {
        let mut map = self.lock();
        if !current(map.get(&key)) {
            return false;
        }
        match value {
            Some(v) => {
                map.insert(key, v);
            }
            None => {
                map.remove(&key);
            }
        }
        true
    }

    /// Remove; returns whether it was there.
    pub fn remove(&self, key: &K) -> bool {
        self.lock().remove(key).is_some()
    }

    /// The value at `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        self.lock().get(key).cloned()
    }

    /// Every key.
    pub fn keys(&self) -> Vec<K> {
        self.lock().keys().cloned().collect()
    }

    /// How many entries satisfy `f`.
    pub fn count(&self, f: impl Fn(&V) -> bool) -> usize {
        self.lock().values().filter(|v| f(v)).count()
    }
}

/// Everything the watches feed and the worker reads.
#[derive(Debug, Default)]
pub struct State {
    /// Namespaces matching the opt-in selector (terminating ones included, marked).
    pub namespaces: Mirror<String, NamespaceInfo>,
    /// Our Secrets, one mirror per watched name (configured and retired).
    secrets: BTreeMap<String, Mirror<SecretKey, Observed>>,
    /// Secrets with a managed name that are not ours.
    foreign: Mutex<HashMap<SecretKey, bool>>,
    /// Namespaces to reconcile.
    pub queue: WorkQueue,
}

impl State {
    /// A state that mirrors our Secrets under these names (each watched on its own).
    pub fn new(secret_names: impl IntoIterator<Item = String>) -> Self {
        Self {
            secrets: secret_names
                .into_iter()
                .map(|n| (n, Mirror::default()))
                .collect(),
            ..Self::default()
        }
    }

    /// The watched Secret names and their mirrors, by name.
    pub fn secret_mirrors(&self) -> impl Iterator<Item = (&str, &Mirror<SecretKey, Observed>)> {
        self.secrets.iter().map(|(n, m)| (n.as_str(), m))
    }

    /// Our Secret at `key`, as last observed.
    pub fn secret(&self, key: &SecretKey) -> Option<Observed> {
        self.secrets.get(&key.name)?.get(key)
    }

    /// Record what we now know of our Secret at `key` (`None`: it is gone). Names that
    /// are not watched are never ours to remember.
    pub fn set_secret(&self, key: SecretKey, observed: Option<Observed>) {
        let Some(mirror) = self.secrets.get(&key.name) else {
            return;
        };
        match observed {
            Some(o) => {
                mirror.upsert(key, o);
            }
            None => {
                mirror.remove(&key);
            }
        }
    }

    /// What is known of every watched name in `namespace`: our Secrets, then the foreign
    /// ones we ran into.
    pub fn secrets_in(&self, namespace: &str) -> BTreeMap<String, SecretState> {
        let mut out: BTreeMap<String, SecretState> = self
            .secrets
            .iter()
            .filter_map(|(name, m)| {
                let o = m.get(&SecretKey::new(namespace, name))?;
                Some((name.clone(), SecretState::Ours(o)))
            })
            .collect();
        for (key, reported) in self.foreign().iter() {
            if key.namespace == namespace {
                out.entry(key.name.clone()).or_insert(SecretState::Foreign {
                    reported: *reported,
                });
            }
        }
        out
    }

    fn foreign(&self) -> std::sync::MutexGuard<'_, HashMap<SecretKey, bool>> {
        self.foreign.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A create was refused because `key` exists without our labels. Returns true the first
    /// time (it still needs reporting).
    pub fn found_foreign(&self, key: SecretKey) -> bool {
        let mut f = self.foreign();
        let new = !f.contains_key(&key);
        f.entry(key).or_insert(false);
        new
    }

    /// The foreign Secret at `key` was reported.
    pub fn reported_foreign(&self, key: SecretKey) {
        self.foreign().insert(key, true);
    }

    /// We wrote our own Secret at `key`: it is not foreign (any more), and it is now `now`
    /// (`None`: deleted). The write was planned from the version `planned` (`None`: it was
    /// absent). The answer to a write can be older than an event the watch has delivered
    /// meanwhile (someone changed the Secret right after our write), so the mirror takes it
    /// only while it still holds what the write was planned from; otherwise the watch's
    /// newer news stands.
    pub fn wrote(&self, key: SecretKey, planned: Option<&str>, now: Option<Observed>) {
        self.foreign().remove(&key);
        if let Some(mirror) = self.secrets.get(&key.name) {
            mirror.set_if(
                key,
                |current| current.map(|o| o.resource_version.as_str()) == planned,
                now,
            );
        }
    }

    /// Queue every namespace we know of: matching ones and those holding our Secrets
    /// (under configured or retired names).
    pub fn queue_everything(&self) {
        for ns in self.namespaces.keys() {
            self.queue.push(&ns);
        }
        for mirror in self.secrets.values() {
            for key in mirror.keys() {
                self.queue.push(&key.namespace);
            }
        }
    }

    /// Queue every matching namespace (a credential changed).
    pub fn queue_matching(&self) {
        for ns in self.namespaces.keys() {
            self.queue.push(&ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(uid: &str) -> Observed {
        Observed {
            uid: uid.into(),
            resource_version: "1".into(),
            digest: [0; 32],
            registry: None,
            foreign_keys: Vec::new(),
        }
    }

    #[test]
    fn mirror_reports_what_a_fresh_list_changed() {
        let m: Mirror<String, u32> = Mirror::default();
        assert!(m.upsert("a".into(), 1));
        assert!(!m.upsert("a".into(), 1), "same value: no change");
        assert!(m.upsert("b".into(), 2));
        let mut changed = m.replace_all(BTreeMap::from([("a".into(), 1), ("c".into(), 3)]));
        changed.sort();
        assert_eq!(changed, ["b", "c"]);
        assert!(m.remove(&"a".to_string()));
        assert!(!m.remove(&"a".to_string()));
    }

    #[test]
    fn secrets_of_a_namespace_are_ours_first_then_foreign_ones() {
        let s = State::new(["x", "y", "z"].map(String::from));
        s.set_secret(SecretKey::new("a", "x"), Some(observed("1")));
        s.set_secret(SecretKey::new("ab", "x"), Some(observed("2")));
        s.set_secret(SecretKey::new("a", "y"), Some(observed("3")));
        // Not a watched name: never ours.
        s.set_secret(SecretKey::new("a", "w"), Some(observed("5")));
        assert_eq!(s.secret(&SecretKey::new("a", "w")), None);
        assert!(s.found_foreign(SecretKey::new("a", "z")));
        assert!(!s.found_foreign(SecretKey::new("a", "z")));
        let got = s.secrets_in("a");
        assert_eq!(got.keys().collect::<Vec<_>>(), ["x", "y", "z"]);
        assert_eq!(got["z"], SecretState::Foreign { reported: false });
        s.reported_foreign(SecretKey::new("a", "z"));
        assert_eq!(
            s.secrets_in("a")["z"],
            SecretState::Foreign { reported: true }
        );
        s.wrote(SecretKey::new("a", "z"), None, Some(observed("4")));
        assert_eq!(s.secrets_in("a")["z"], SecretState::Ours(observed("4")));
        assert!(s.secrets_in("b").is_empty());
        s.set_secret(SecretKey::new("a", "x"), None);
        assert_eq!(s.secrets_in("a").keys().collect::<Vec<_>>(), ["y", "z"]);
    }

    fn at(uid: &str, resource_version: &str) -> Observed {
        Observed {
            resource_version: resource_version.into(),
            ..observed(uid)
        }
    }

    #[test]
    fn a_write_answer_never_replaces_newer_news_from_the_watch() {
        let s = State::new(["x".to_string()]);
        let key = SecretKey::new("a", "x");
        // Created while the watch had nothing: taken.
        s.wrote(key.clone(), None, Some(at("u", "5")));
        assert_eq!(s.secret(&key), Some(at("u", "5")));
        // The watch reports someone's change (7) before our update's answer (6) arrives.
        s.set_secret(key.clone(), Some(at("u", "7")));
        s.wrote(key.clone(), Some("5"), Some(at("u", "6")));
        assert_eq!(
            s.secret(&key),
            Some(at("u", "7")),
            "the watch's news stands"
        );
        // Planned from what the mirror holds: taken.
        s.wrote(key.clone(), Some("7"), Some(at("u", "8")));
        assert_eq!(s.secret(&key), Some(at("u", "8")));
        // A create whose answer comes after the watch already reported the object.
        let other = SecretKey::new("b", "x");
        s.set_secret(other.clone(), Some(at("v", "10")));
        s.wrote(other.clone(), None, Some(at("v", "9")));
        assert_eq!(s.secret(&other), Some(at("v", "10")));
        // Deleted: gone, unless the watch already knows a newer object.
        s.wrote(key.clone(), Some("8"), None);
        assert_eq!(s.secret(&key), None);
        s.wrote(other.clone(), Some("9"), None);
        assert_eq!(s.secret(&other), Some(at("v", "10")));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_everything_covers_every_watched_name() {
        let s = State::new(["current", "retired"].map(String::from));
        s.namespaces
            .upsert("opted-in".into(), NamespaceInfo::default());
        s.set_secret(SecretKey::new("left", "retired"), Some(observed("1")));
        s.set_secret(SecretKey::new("opted-out", "current"), Some(observed("2")));
        s.queue_everything();
        let mut queued = Vec::new();
        while let Ok(ns) =
            tokio::time::timeout(std::time::Duration::from_millis(1), s.queue.pop()).await
        {
            queued.push(ns);
        }
        queued.sort();
        assert_eq!(queued, ["left", "opted-in", "opted-out"]);
    }
}
