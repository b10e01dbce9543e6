//! One watch for every kind the sync task mirrors: list and watch with client-go's
//! backoff, keep a [`Mirror`] equal to what the API server says, and queue the namespace
//! of every entry that changed. What a kind contributes is its key and the value worth
//! keeping ([`Mirrored`]); the rest is the same for namespaces and Secrets.

use std::collections::BTreeMap;
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::queue::WorkQueue;
use super::secret::Observed;
use super::state::{Mirror, NamespaceInfo, SecretKey};

/// A kind the sync task keeps a mirror of.
pub trait Mirrored:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static
{
    /// The mirror's key.
    type Key: Ord + Clone + Debug + Send;
    /// What is kept of an object; a change of it queues the key's namespace.
    type Value: Clone + PartialEq + Send;
    /// For log lines: `namespace`, `managed Secret`.
    const WHAT: &'static str;
    /// The object's key.
    fn key(&self) -> Self::Key;
    /// What is kept of it.
    fn value(&self) -> Self::Value;
    /// The namespace to reconcile when the entry at `key` changes.
    fn namespace(key: &Self::Key) -> &str;
}

impl Mirrored for Namespace {
    type Key = String;
    type Value = NamespaceInfo;
    const WHAT: &'static str = "namespace";
    fn key(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
    fn value(&self) -> NamespaceInfo {
        NamespaceInfo::of(self)
    }
    fn namespace(key: &String) -> &str {
        key
    }
}

impl Mirrored for Secret {
    type Key = SecretKey;
    type Value = Observed;
    const WHAT: &'static str = "managed Secret";
    fn key(&self) -> SecretKey {
        SecretKey::of(self)
    }
    fn value(&self) -> Observed {
        Observed::of(self)
    }
    fn namespace(key: &SecretKey) -> &str {
        &key.namespace
    }
}

/// What happened to the mirror, for the caller's bookkeeping (metrics, readiness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A full list replaced the mirror.
    Listed,
    /// One object was added, changed or removed.
    Object,
}

/// Watch `api` with `config` until `stop` is cancelled, keeping `mirror` equal to the
/// cluster and pushing changed namespaces on `queue`; `changed` runs after every change.
/// Errors are logged (once per distinct message) and retried with backoff; the watch only
/// returns an error if its stream ends, which the caller treats as a failure.
pub async fn watch<K: Mirrored>(
    api: Api<K>,
    config: watcher::Config,
    mirror: &Mirror<K::Key, K::Value>,
    queue: &WorkQueue,
    mut changed: impl FnMut(Change),
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut listing: Option<BTreeMap<K::Key, K::Value>> = None;
    let mut last_error: Option<String> = None;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            e = stream.next() => e,
        };
        let event = match event {
            None => anyhow::bail!("the {} watch ended", K::WHAT),
            Some(Ok(e)) => {
                if last_error.take().is_some() {
                    tracing::info!("{} watch recovered", K::WHAT);
                }
                e
            }
            Some(Err(e)) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(&msg) {
                    tracing::warn!(error = %msg, "{} watch failed; retrying with backoff", K::WHAT);
                    last_error = Some(msg);
                }
                continue;
            }
        };
        match event {
            Event::Init => listing = Some(BTreeMap::new()),
            Event::InitApply(o) => {
                listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(o.key(), o.value());
            }
            Event::InitDone => {
                for key in mirror.replace_all(listing.take().unwrap_or_default()) {
                    tracing::debug!(?key, "{} changed while listing", K::WHAT);
                    queue.push(K::namespace(&key));
                }
                changed(Change::Listed);
            }
            Event::Apply(o) => {
                let key = o.key();
                if mirror.upsert(key.clone(), o.value()) {
                    tracing::debug!(?key, "{} changed", K::WHAT);
                    queue.push(K::namespace(&key));
                    changed(Change::Object);
                }
            }
            Event::Delete(o) => {
                let key = o.key();
                mirror.remove(&key);
                tracing::debug!(?key, "{} gone", K::WHAT);
                queue.push(K::namespace(&key));
                changed(Change::Object);
            }
        }
    }
}
