//! One refresh loop per registry: fetch the credential, publish it to the reconciler, sleep
//! until the policy says it is due (or its files change), retry failures with backoff.
//!
//! The loop is the only caller of the provider, so there is exactly one fetch per registry
//! per refresh whatever the number of namespaces. A failure never publishes anything: the
//! Secrets keep the last good credential, which stays valid until its own expiry.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

use crate::credentials::{Credential, Fingerprint, Provider};
use crate::metrics::{Metrics, RefreshLabel, RegistryLabel};
use crate::sync::policy;

/// How often the credential files are checked for rotation between refreshes (the
/// default of the hidden `run --credential-file-check-interval` flag).
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The latest good credential of one registry (`None` until the first success).
pub type CredentialRx = watch::Receiver<Option<Arc<Credential>>>;

/// Refresh `provider`'s credential until `stop` turns true, publishing each success on `tx`.
/// The credential files are checked for changes every `file_check_interval`.
pub async fn refresh_loop(
    registry: String,
    provider: Arc<Provider>,
    tx: watch::Sender<Option<Arc<Credential>>>,
    refresh_interval: Duration,
    file_check_interval: Duration,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    // A credential from an earlier term of leadership is used until it is due: regaining the
    // lease (e.g. after an API server outage longer than the renew deadline) must not
    // rewrite every namespace's Secret with a token that is merely newer.
    let kept = tx.borrow().clone();
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
                registry,
                refresh_in = %humantime::format_duration(round_secs(delay)),
                "keeping the credential fetched before; refreshing when it is due"
            );
            if wait(
                delay,
                &provider,
                c.fingerprint(),
                file_check_interval,
                &mut stop,
            )
            .await
            {
                return;
            }
        }
    }
    loop {
        // Fingerprint first: a change after this point wakes the wait below.
        let seen = provider.files_fingerprint().await;
        let delay = match provider.fetch().await {
            Ok(credential) => {
                failures = 0;
                metrics
                    .credential_refresh
                    .get_or_create(&RefreshLabel {
                        registry: registry.clone(),
                        result: "success",
                    })
                    .inc();
                if let Some(expires_at) = credential.expires_at() {
                    metrics
                        .credential_expiry
                        .get_or_create(&RegistryLabel {
                            registry: registry.clone(),
                        })
                        .set(expires_at.as_millisecond() as f64 / 1000.0);
                }
                tracing::info!(
                    registry,
                    kind = provider.kind(),
                    expires_at = %credential.expires_at().map(|t| t.to_string()).unwrap_or_else(|| "static".into()),
                    "credential refreshed"
                );
                let delay = policy::next_refresh(
                    Timestamp::now(),
                    credential.issued_at(),
                    credential.expires_at(),
                    refresh_interval,
                    jitter(),
                );
                tx.send_replace(Some(Arc::new(credential)));
                delay
            }
            Err(e) => {
                metrics
                    .credential_refresh
                    .get_or_create(&RefreshLabel {
                        registry: registry.clone(),
                        result: "failure",
                    })
                    .inc();
                let delay = policy::backoff(failures, fastrand::f64());
                failures = failures.saturating_add(1);
                let last_expiry = tx.borrow().as_ref().map(|c| c.expires_at());
                let usable = match last_expiry {
                    Some(expiry) => policy::is_usable(Timestamp::now(), expiry),
                    None => false,
                };
                tracing::warn!(
                    registry,
                    kind = provider.kind(),
                    error = %e,
                    retry_in = %humantime::format_duration(round_secs(delay)),
                    last_good_still_valid = usable,
                    "credential refresh failed; Secrets keep the last good credential"
                );
                delay
            }
        };
        if wait(delay, &provider, seen, file_check_interval, &mut stop).await {
            return;
        }
    }
}

/// Sleep `delay`, waking early when the credential files change. Returns true on stop.
async fn wait(
    delay: Duration,
    provider: &Provider,
    seen: Fingerprint,
    file_check_interval: Duration,
    stop: &mut watch::Receiver<bool>,
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
            r = stop.wait_for(|s| *s) => { let _ = r; return true; }
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

    fn basic_provider(dir: &std::path::Path) -> Arc<Provider> {
        let password_file = dir.join("password");
        std::fs::write(&password_file, "from-the-file\n").unwrap();
        let source = CredentialSource::Basic(Basic {
            username: "robot".into(),
            password_file,
        });
        let http = HttpClient::new(HttpOptions::default()).unwrap();
        Arc::new(Provider::new(&source, &http).unwrap())
    }

    /// Run the loop for `for_` (real time: file reads) and return the successful fetches.
    async fn run_for(
        provider: Arc<Provider>,
        tx: watch::Sender<Option<Arc<Credential>>>,
        for_: Duration,
    ) -> u64 {
        let metrics = Metrics::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(refresh_loop(
            "r".into(),
            provider,
            tx,
            Duration::from_secs(3600),
            Duration::from_millis(20),
            metrics.clone(),
            stop_rx,
        ));
        tokio::time::sleep(for_).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
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
        let provider = basic_provider(dir.path());
        let earlier = Arc::new(provider.fetch().await.unwrap());
        let (tx, _rx) = watch::channel(Some(earlier.clone()));
        let fetches = run_for(provider, tx.clone(), Duration::from_millis(200)).await;
        assert_eq!(fetches, 0, "not fetched again");
        assert!(Arc::ptr_eq(tx.borrow().as_ref().unwrap(), &earlier));
    }

    #[tokio::test]
    async fn credential_from_an_earlier_term_is_refreshed_at_once_when_due_or_its_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let provider = basic_provider(dir.path());
        let files = provider.files_fingerprint().await;
        let two_hours_ago = Timestamp::now() - jiff::SignedDuration::from_hours(2);
        let due = Credential::login("robot", Secret::new("old"), two_hours_ago, None)
            .unwrap()
            .with_fingerprint(files);
        // Fresh, but made from other file content.
        let stale_files =
            Credential::login("robot", Secret::new("old"), Timestamp::now(), None).unwrap();
        for earlier in [due, stale_files] {
            let (tx, _rx) = watch::channel(Some(Arc::new(earlier)));
            let fetches = run_for(provider.clone(), tx.clone(), Duration::from_millis(300)).await;
            assert_eq!(fetches, 1);
            let now = tx.borrow().clone().unwrap();
            assert_eq!(now.password().unwrap().expose(), "from-the-file");
        }
    }
}
