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

/// How often the credential files are checked for rotation between refreshes.
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The latest good credential of one registry (`None` until the first success).
pub type CredentialRx = watch::Receiver<Option<Arc<Credential>>>;

/// Refresh `provider`'s credential until `stop` turns true, publishing each success on `tx`.
pub async fn refresh_loop(
    registry: String,
    provider: Arc<Provider>,
    tx: watch::Sender<Option<Arc<Credential>>>,
    refresh_interval: Duration,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
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
        if wait(delay, &provider, seen, &mut stop).await {
            return;
        }
    }
}

/// Sleep `delay`, waking early when the credential files change. Returns true on stop.
async fn wait(
    delay: Duration,
    provider: &Provider,
    seen: Fingerprint,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let deadline = tokio::time::Instant::now() + delay;
    let watch_files = !provider.files().is_empty();
    loop {
        let next_check = tokio::time::Instant::now() + FILE_CHECK_INTERVAL;
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
