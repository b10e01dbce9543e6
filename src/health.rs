//! What `/healthz` and `/readyz` report: the state of each part of the process.
//!
//! Readiness gates the webhook's traffic (the Service's endpoints), so it depends only on
//! what the webhook and a fresh replica need: the serving certificate loaded, the sync
//! task's first namespace list done, and no shutdown in progress. A credential that cannot
//! be refreshed does not make a replica unready: the webhook needs no credential, and the
//! Secrets keep the last good one; it shows in the body of both endpoints, in the logs, in
//! `credential_refresh_total{result="failure"}` and as a Kubernetes Event. Liveness is
//! the process answering at all: a part that fails ends the process (see `run`), so there
//! is no state in which a live process has a dead part.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// The webhook server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Webhook {
    /// `--no-webhook`.
    Disabled,
    /// Not serving yet (certificate not loaded).
    #[default]
    Starting,
    /// Serving `POST /mutate`.
    Serving,
}

/// The sync task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sync {
    /// `false` with `--no-sync`.
    pub enabled: bool,
    /// The first list of opted-in namespaces is done.
    pub listed: bool,
    /// This replica holds the lease: it refreshes credentials and writes Secrets.
    pub leading: bool,
}

#[derive(Debug)]
struct Parts {
    webhook: Webhook,
    sync: Sync,
    /// Registries whose last credential refresh failed, with the error.
    credential_problems: BTreeMap<String, String>,
    shutting_down: bool,
    /// Set to 1 while ready, 0 otherwise, on every change.
    ready_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl Default for Parts {
    fn default() -> Self {
        Self {
            webhook: Webhook::Starting,
            sync: Sync {
                enabled: true,
                listed: false,
                leading: false,
            },
            credential_problems: BTreeMap::new(),
            shutting_down: false,
            ready_gauge: None,
        }
    }
}

/// The state of every part, shared between the tasks that set it and the admin server.
#[derive(Debug, Default)]
pub struct Health {
    parts: Mutex<Parts>,
}

/// An answer of `/healthz` or `/readyz`: whether it is 200, and a line per part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// 200 when true, 503 otherwise.
    pub ok: bool,
    /// `ok` or the reason, then one line per part.
    pub text: String,
}

impl Health {
    /// New state: webhook starting, sync enabled and listing.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Parts) -> T) -> T {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut parts);
        if let Some(g) = &parts.ready_gauge {
            g.set(i64::from(parts.not_ready_because().is_none()));
        }
        out
    }

    /// Keep `gauge` at 1 while ready and 0 otherwise (the `ready` metric).
    pub fn report_ready_to(&self, gauge: prometheus_client::metrics::gauge::Gauge) {
        self.with(|p| p.ready_gauge = Some(gauge));
    }

    /// Set the webhook's state.
    pub fn set_webhook(&self, state: Webhook) {
        self.with(|p| p.webhook = state);
    }

    /// `--no-sync`: the sync task does not run.
    pub fn disable_sync(&self) {
        self.with(|p| p.sync.enabled = false);
    }

    /// The sync task listed the opted-in namespaces once (a later re-list keeps serving
    /// what it knows, so this is never undone).
    pub fn set_sync_listed(&self) {
        self.with(|p| p.sync.listed = true);
    }

    /// Whether this replica leads (refreshes and writes).
    pub fn set_sync_leading(&self, leading: bool) {
        self.with(|p| p.sync.leading = leading);
    }

    /// The sync task's state.
    pub fn sync(&self) -> Sync {
        self.with(|p| p.sync)
    }

    /// The last refresh of `registry`'s credential failed with `error` (`None`: it worked).
    pub fn set_credential_problem(&self, registry: &str, error: Option<String>) {
        self.with(|p| match error {
            Some(e) => {
                p.credential_problems.insert(registry.to_string(), e);
            }
            None => {
                p.credential_problems.remove(registry);
            }
        });
    }

    /// Shutdown began: report not ready so that traffic moves elsewhere.
    pub fn set_shutting_down(&self) {
        self.with(|p| p.shutting_down = true);
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.with(|p| p.shutting_down)
    }

    /// `/readyz`: ready unless shutting down, the certificate is not loaded, or the
    /// namespaces were never listed.
    pub fn readiness(&self) -> Report {
        self.with(|p| {
            let why = p.not_ready_because();
            Report {
                ok: why.is_none(),
                text: p.describe(why.unwrap_or("ok")),
            }
        })
    }

    /// `/healthz`: the process answers, so every part is running (a part that fails ends
    /// the process); the body says what each does.
    pub fn liveness(&self) -> Report {
        self.with(|p| Report {
            ok: true,
            text: p.describe("ok"),
        })
    }
}

impl Parts {
    fn not_ready_because(&self) -> Option<&'static str> {
        if self.shutting_down {
            Some("shutting down")
        } else if self.webhook == Webhook::Starting {
            Some("TLS certificate not loaded")
        } else if self.sync.enabled && !self.sync.listed {
            Some("sync task has not listed namespaces yet")
        } else {
            None
        }
    }

    fn describe(&self, first: &str) -> String {
        let mut out = format!("{first}\n");
        let webhook = match self.webhook {
            Webhook::Disabled => "disabled (--no-webhook)",
            Webhook::Starting => "starting: TLS certificate not loaded",
            Webhook::Serving => "serving",
        };
        let sync = match self.sync {
            Sync { enabled: false, .. } => "disabled (--no-sync)",
            Sync { listed: false, .. } => "starting: listing opted-in namespaces",
            Sync { leading: false, .. } => {
                "following: another replica holds the lease and writes Secrets"
            }
            Sync { leading: true, .. } => "leading: refreshing credentials and writing Secrets",
        };
        let _ = writeln!(out, "webhook: {webhook}");
        let _ = writeln!(out, "sync: {sync}");
        for (registry, error) in &self.credential_problems {
            let _ = writeln!(
                out,
                "credentials {registry}: refresh failing, Secrets keep the last good credential: {error}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_the_certificate_and_the_first_list_and_ends_on_shutdown() {
        let h = Health::new();
        let r = h.readiness();
        assert!(!r.ok);
        assert!(
            r.text.starts_with("TLS certificate not loaded\n"),
            "{}",
            r.text
        );
        h.set_webhook(Webhook::Serving);
        let r = h.readiness();
        assert!(!r.ok);
        assert!(
            r.text
                .starts_with("sync task has not listed namespaces yet\n")
        );
        h.set_sync_listed();
        assert!(h.readiness().ok);
        assert!(h.readiness().text.contains("sync: following"));
        h.set_sync_leading(true);
        assert!(h.readiness().ok);
        h.set_shutting_down();
        let r = h.readiness();
        assert!(!r.ok && r.text.starts_with("shutting down\n"));
        assert!(h.liveness().ok);
    }

    #[test]
    fn the_ready_gauge_follows_readiness() {
        let h = Health::new();
        let g = prometheus_client::metrics::gauge::Gauge::default();
        g.set(7);
        h.report_ready_to(g.clone());
        assert_eq!(g.get(), 0);
        h.set_webhook(Webhook::Serving);
        h.set_sync_listed();
        assert_eq!(g.get(), 1);
        h.set_shutting_down();
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn credential_problems_are_reported_but_do_not_make_the_replica_unready() {
        let h = Health::new();
        h.set_webhook(Webhook::Disabled);
        h.set_sync_listed();
        h.set_sync_leading(true);
        h.set_credential_problem(
            "yandex",
            Some("reading authorized key file /k: gone".into()),
        );
        let r = h.readiness();
        assert!(r.ok, "{}", r.text);
        assert!(
            r.text.contains("credentials yandex: refresh failing") && r.text.contains("/k: gone"),
            "{}",
            r.text
        );
        assert!(h.liveness().text.contains("credentials yandex"));
        h.set_credential_problem("yandex", None);
        assert!(!h.readiness().text.contains("credentials yandex"));
        assert!(h.readiness().text.contains("webhook: disabled"));
        assert!(h.readiness().text.contains("sync: leading"));
        let off = Health::new();
        off.set_webhook(Webhook::Serving);
        off.disable_sync();
        assert!(off.readiness().ok);
        assert!(off.readiness().text.contains("sync: disabled"));
    }
}
