//! One refresh loop per registry: fetch the credential, publish it to the reconciler, sleep
//! until the policy says it is due (or its files change), retry failures with backoff.
//!
//! The loop is the only caller of the provider, so there is exactly one fetch per registry
//! per refresh whatever the number of namespaces. A failure never publishes a credential:
//! the Secrets keep the last good one, which stays valid until its own expiry. It does
//! publish the registry's [`RefreshStatus`], which the sync task reports (health, Events).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::credentials::{Credential, CredentialError, Fingerprint, Provider};
use crate::metrics::{Metrics, RefreshLabel, RegistryLabel};
use crate::sync::prove::{Prover, Verdict};
use crate::sync::{RegistrySync, policy};

/// How often the credential files are checked for rotation between refreshes (the
/// default of the hidden `run --credential-file-check-interval` flag).
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// How the last refresh of a registry's credential went.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RefreshStatus {
    /// No refresh yet (or not leading).
    #[default]
    NotYet,
    /// The last refresh worked.
    Working,
    /// The last refresh failed with this error (never holds a secret value).
    Failing(String),
}

/// When to refresh.
#[derive(Debug, Clone, Copy)]
pub struct RefreshTiming {
    /// Upper bound on a credential's age.
    pub refresh_interval: Duration,
    /// How often the credential files are checked for rotation between refreshes.
    pub file_check_interval: Duration,
}

/// Refresh `registry`'s credential until `stop` is cancelled, publishing each success on
/// `registry.credential` and each outcome on `registry.status`. With a `prover`, each new
/// credential is proven against the registry first, and one it refuses is published only
/// if it is no worse than what the Secrets hold ([`crate::sync::prove::decide`]).
pub async fn refresh_loop(
    registry: &RegistrySync,
    timing: RefreshTiming,
    metrics: &Metrics,
    prover: Option<&Prover<'_>>,
    stop: &CancellationToken,
) {
    let RefreshTiming {
        refresh_interval,
        file_check_interval,
    } = timing;
    let provider = &registry.provider;
    let mut failures: u32 = 0;
    // A credential from an earlier term of leadership is used until it is due: regaining the
    // lease (e.g. after an API server outage longer than the renew deadline) must not
    // rewrite every namespace's Secret with a token that is merely newer.
    let kept = registry.credential.borrow().clone();
    if let Some(c) = kept {
        let delay = policy::next_refresh(
            Timestamp::now(),
            c.issued_at(),
            c.expires_at(),
            refresh_interval,
            jitter(),
        );
        if delay > policy::MIN_REFRESH_DELAY {
            tracing::info!(
                registry = %registry.name,
                refresh_in = %humantime::format_duration(round_secs(delay)),
                "keeping the credential fetched before; refreshing when it is due"
            );
            if wait(delay, provider, c.fingerprint(), file_check_interval, stop).await {
                return;
            }
        }
    }
    loop {
        // Fingerprint first: a change after this point wakes the wait below.
        let seen = provider.files_fingerprint().await;
        let delay = match provider.fetch().await {
            Ok(credential) => {
                let verdict = match prover {
                    Some(p) => {
                        p.admit(registry, &credential.secret_data(&registry.hosts))
                            .await
                    }
                    None => Verdict::Publish { note: None },
                };
                match verdict {
                    Verdict::Publish { note } => {
                        if let Some(note) = note {
                            tracing::warn!(registry = %registry.name, "writing the credential the registry refuses: {note}");
                        }
                        failures = 0;
                        let delay = policy::next_refresh(
                            Timestamp::now(),
                            credential.issued_at(),
                            credential.expires_at(),
                            refresh_interval,
                            jitter(),
                        );
                        succeeded(registry, credential, metrics);
                        delay
                    }
                    Verdict::Withhold { reason, adopt } => {
                        count(metrics, &registry.name, "success");
                        if let Some(kept) = adopt {
                            adopted(registry, kept, metrics);
                        }
                        let delay = policy::backoff(failures, fastrand::f64());
                        failures = failures.saturating_add(1);
                        withheld(registry, &reason, delay);
                        delay
                    }
                }
            }
            Err(e) => {
                let delay = policy::backoff(failures, fastrand::f64());
                failures = failures.saturating_add(1);
                failed(registry, &e, delay, metrics);
                delay
            }
        };
        if wait(delay, provider, seen, file_check_interval, stop).await {
            return;
        }
    }
}

fn count(metrics: &Metrics, registry: &str, result: &'static str) {
    metrics
        .credential_refresh
        .get_or_create(&RefreshLabel {
            registry: registry.to_string(),
            result,
        })
        .inc();
}

fn set_expiry(metrics: &Metrics, registry: &str, expires_at: Timestamp) {
    metrics
        .credential_expiry
        .get_or_create(&RegistryLabel {
            registry: registry.to_string(),
        })
        .set(expires_at.as_millisecond() as f64 / 1000.0);
}

/// Publish a fresh credential; count and log it.
fn succeeded(registry: &RegistrySync, credential: Credential, metrics: &Metrics) {
    count(metrics, &registry.name, "success");
    if let Some(expires_at) = credential.expires_at() {
        set_expiry(metrics, &registry.name, expires_at);
    }
    tracing::info!(
        registry = %registry.name,
        kind = registry.provider.kind(),
        expires_at = %credential.expires_at().map(|t| t.to_string()).unwrap_or_else(|| "static".into()),
        "credential refreshed"
    );
    registry.credential.send_replace(Some(Arc::new(credential)));
    registry.status.send_if_modified(|s| {
        std::mem::replace(s, RefreshStatus::Working) != RefreshStatus::Working
    });
}

/// Publish the failure (never a credential: the Secrets keep the last good one); count
/// and log it.
fn failed(registry: &RegistrySync, e: &CredentialError, retry_in: Duration, metrics: &Metrics) {
    count(metrics, &registry.name, "failure");
    let last_expiry = registry
        .credential
        .borrow()
        .as_ref()
        .map(|c| c.expires_at());
    let usable = last_expiry.is_some_and(|expiry| policy::is_usable(Timestamp::now(), expiry));
    let kind = registry.provider.kind();
    let status = RefreshStatus::Failing(format!("{kind} credentials: {e}"));
    registry
        .status
        .send_if_modified(|s| std::mem::replace(s, status.clone()) != status);
    tracing::warn!(
        registry = %registry.name,
        kind,
        error = %e,
        retry_in = %humantime::format_duration(round_secs(retry_in)),
        last_good_still_valid = usable,
        "credential refresh failed; Secrets keep the last good credential"
    );
}

/// This process has no credential yet and the one the Secrets hold is better than the new
/// one: publish it, so that namespaces opting in meanwhile get it too (existing Secrets are
/// not rewritten: the data is built the same way).
fn adopted(registry: &RegistrySync, kept: Credential, metrics: &Metrics) {
    if registry.credential.borrow().is_some() {
        return;
    }
    if let Some(expires_at) = kept.expires_at() {
        set_expiry(metrics, &registry.name, expires_at);
    }
    tracing::info!(registry = %registry.name, "using the credential the Secrets hold, which the registry accepts, until a new one is accepted");
    registry.credential.send_replace(Some(Arc::new(kept)));
}

/// A new credential was withheld (the registry refuses it, and accepts the one the
/// Secrets hold): report it like a failed refresh, without touching the credential.
fn withheld(registry: &RegistrySync, reason: &str, retry_in: Duration) {
    let status = RefreshStatus::Failing(reason.to_string());
    registry
        .status
        .send_if_modified(|s| std::mem::replace(s, status.clone()) != status);
    tracing::warn!(
        registry = %registry.name,
        retry_in = %humantime::format_duration(round_secs(retry_in)),
        "new credential withheld: {reason}"
    );
}

/// Sleep `delay`, waking early when the credential files change. Returns true on stop.
async fn wait(
    delay: Duration,
    provider: &Provider,
    seen: Fingerprint,
    file_check_interval: Duration,
    stop: &CancellationToken,
) -> bool {
    let deadline = tokio::time::Instant::now() + delay;
    let watch_files = !provider.files().is_empty();
    loop {
        let next_check = tokio::time::Instant::now() + file_check_interval;
        let wake = if watch_files {
            deadline.min(next_check)
        } else {
            deadline
        };
        tokio::select! {
            () = stop.cancelled() => return true,
            _ = tokio::time::sleep_until(wake) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        if provider.files_fingerprint().await != seen {
            tracing::info!("credential files changed; refreshing now");
            return false;
        }
    }
}

fn jitter() -> f64 {
    (fastrand::f64() * 2.0 - 1.0) * policy::MAX_JITTER
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Basic, CredentialSource};
    use crate::credentials::{HttpClient, HttpOptions, Secret};

    fn basic_registry(dir: &std::path::Path) -> RegistrySync {
        let password_file = dir.join("password");
        std::fs::write(&password_file, "from-the-file\n").unwrap();
        let source = CredentialSource::Basic(Basic {
            username: "robot".into(),
            password_file,
        });
        let http = HttpClient::new(HttpOptions::default()).unwrap();
        RegistrySync::new(
            "r",
            "s",
            vec!["x.io".into()],
            Provider::new(&source, &http).unwrap(),
        )
    }

    /// Run the loop for `for_` (real time: file reads) and return the successful fetches.
    async fn run_for(registry: &RegistrySync, for_: Duration) -> u64 {
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let timing = RefreshTiming {
            refresh_interval: Duration::from_secs(3600),
            file_check_interval: Duration::from_millis(20),
        };
        let stopper = async {
            tokio::time::sleep(for_).await;
            stop.cancel();
        };
        tokio::join!(
            refresh_loop(registry, timing, &metrics, None, &stop),
            stopper
        );
        metrics
            .credential_refresh
            .get_or_create(&RefreshLabel {
                registry: "r".into(),
                result: "success",
            })
            .get()
    }

    #[tokio::test]
    async fn credential_from_an_earlier_term_of_leadership_is_kept_until_it_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let registry = basic_registry(dir.path());
        let earlier = Arc::new(registry.provider.fetch().await.unwrap());
        registry.credential.send_replace(Some(earlier.clone()));
        let fetches = run_for(&registry, Duration::from_millis(200)).await;
        assert_eq!(fetches, 0, "not fetched again");
        assert!(Arc::ptr_eq(
            registry.credential.borrow().as_ref().unwrap(),
            &earlier
        ));
    }

    #[tokio::test]
    async fn credential_from_an_earlier_term_is_refreshed_at_once_when_due_or_its_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let registry = basic_registry(dir.path());
        let files = registry.provider.files_fingerprint().await;
        let two_hours_ago = Timestamp::now() - jiff::SignedDuration::from_hours(2);
        let due = Credential::login("robot", Secret::new("old"), two_hours_ago, None)
            .unwrap()
            .with_fingerprint(files);
        // Fresh, but made from other file content.
        let stale_files =
            Credential::login("robot", Secret::new("old"), Timestamp::now(), None).unwrap();
        for earlier in [due, stale_files] {
            registry.credential.send_replace(Some(Arc::new(earlier)));
            let fetches = run_for(&registry, Duration::from_millis(300)).await;
            assert_eq!(fetches, 1);
            let now = registry.credential.borrow().clone().unwrap();
            assert_eq!(now.password().unwrap().expose(), "from-the-file");
            assert_eq!(*registry.status.borrow(), RefreshStatus::Working);
        }
    }

    #[tokio::test]
    async fn a_failing_refresh_publishes_its_error_and_keeps_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let registry = basic_registry(dir.path());
        let good = Arc::new(registry.provider.fetch().await.unwrap());
        std::fs::remove_file(dir.path().join("password")).unwrap();
        let due =
            Credential::login("robot", Secret::new("old"), Timestamp::UNIX_EPOCH, None).unwrap();
        registry.credential.send_replace(Some(Arc::new(due)));
        registry.credential.send_replace(Some(good.clone()));
        let mut status = registry.status.subscribe();
        let stop = CancellationToken::new();
        let timing = RefreshTiming {
            refresh_interval: Duration::from_secs(10),
            file_check_interval: Duration::from_millis(20),
        };
        // The kept credential's files changed (the file is gone): refreshed at once, fails.
        let metrics = Metrics::new();
        let watcher = async {
            let s = status
                .wait_for(|s| matches!(s, RefreshStatus::Failing(_)))
                .await
                .unwrap()
                .clone();
            stop.cancel();
            s
        };
        let ((), failing) = tokio::join!(
            refresh_loop(&registry, timing, &metrics, None, &stop),
            watcher
        );
        let RefreshStatus::Failing(e) = failing else {
            unreachable!()
        };
        assert!(
            e.starts_with("basic credentials: reading password file"),
            "{e}"
        );
        assert!(Arc::ptr_eq(
            registry.credential.borrow().as_ref().unwrap(),
            &good
        ));
    }
}
