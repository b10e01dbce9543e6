//! Leader election on a `coordination.k8s.io/v1` Lease, so that exactly one replica's sync
//! task writes Secrets while every replica serves the webhook.
//!
//! The protocol is client-go's `leaderelection`, so that `kubectl get lease` and other
//! tooling read our Lease the usual way:
//!
//! * Every `retry_period` a candidate reads the Lease and takes it when it is absent
//!   (create), released (empty `holderIdentity`), already its own (renew), or expired.
//!   Every write is a create or a replace carrying the `resourceVersion` just read, so the
//!   API server serialises the candidates: a 409 only means another replica won this round,
//!   and the next read says who.
//! * Someone else's lease expires `leaseDurationSeconds` after **we first observed** its
//!   current record, counted on our monotonic clock. Its `renewTime` is never compared with
//!   our wall clock: nodes' wall clocks may disagree by more than a lease duration, while
//!   the time elapsed on two clocks agrees to a tiny rate error. The cost is that a fresh
//!   replica waits one full lease duration before taking over a lease whose holder died
//!   long ago (as client-go does).
//! * Our own leadership ends `renew_deadline` after the start of the last round that
//!   renewed the lease, also on the monotonic clock, whether or not the API server answers.
//!   Everyone else counts `lease_duration` from a moment after that renewal was written, and
//!   `renew_deadline < lease_duration`, so we stop before anyone may start; the margin
//!   absorbs clock-rate differences and the delay of the sync task noticing `false`.
//! * `false` is published before anything else on loss or shutdown; on shutdown the lease
//!   is then released (empty holder, `leaseDurationSeconds: 1`, like client-go's
//!   `ReleaseOnCancel`) so another replica takes over within one retry period instead of a
//!   lease duration.
//!
//! RBAC: `get`, `create` and `update` on `leases` in the lease namespace, nothing else (one
//! object polled every retry period needs no watch). The decision logic (`decide`,
//! `observe`, `released_spec`) is pure and unit-tested; [`LeaderElector::run`] is the I/O
//! shell, tested end to end in `tests/e2e_leader.rs`.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Default [`LeaderConfig::lease_duration`] (client-go's and kube-controller-manager's).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default [`LeaderConfig::renew_deadline`].
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Default [`LeaderConfig::retry_period`].
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Candidates that are not leading wait `retry_period * (1 + up to this)`, so that replicas
/// started together do not poll in lockstep.
const RETRY_JITTER: f64 = 0.2;

/// Where the lease lives, who we are, and the timing of the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity, unique per process (see [`default_identity`]).
    pub identity: String,
    /// How long others wait, after they last saw the lease change, before taking it over.
    pub lease_duration: Duration,
    /// If the lease cannot be renewed within this long, we stop leading. Must be shorter
    /// than `lease_duration`.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew. Must be shorter than `renew_deadline`.
    pub retry_period: Duration,
}

/// A [`LeaderConfig`] that cannot give a safe election.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaderConfigError {
    /// Namespace, name or identity is empty (an empty identity reads as a released lease).
    #[error("leader election: {0} must not be empty")]
    Empty(&'static str),
    /// The durations are not ordered `lease_duration > renew_deadline > retry_period > 0`.
    #[error(
        "leader election needs leaseDuration > renewDeadline > retryPeriod > 0, got {lease_duration:?}, {renew_deadline:?}, {retry_period:?}"
    )]
    Timing {
        /// The configured lease duration.
        lease_duration: Duration,
        /// The configured renew deadline.
        renew_deadline: Duration,
        /// The configured retry period.
        retry_period: Duration,
    },
}

impl LeaderConfig {
    /// A config with the default timing (15 s lease, 10 s renew deadline, 2 s retry).
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Checks that the names are set and `lease_duration > renew_deadline > retry_period > 0`
    /// (the ordering the safety argument in the module docs depends on).
    pub fn validate(&self) -> Result<(), LeaderConfigError> {
        for (field, value) in [
            ("namespace", &self.namespace),
            ("name", &self.name),
            ("identity", &self.identity),
        ] {
            if value.is_empty() {
                return Err(LeaderConfigError::Empty(field));
            }
        }
        if self.lease_duration > self.renew_deadline
            && self.renew_deadline > self.retry_period
            && self.retry_period > Duration::ZERO
        {
            Ok(())
        } else {
            Err(LeaderConfigError::Timing {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            })
        }
    }

    /// `self` with whatever [`validate`](Self::validate) rejects replaced by a safe value:
    /// the default timing, or a [`default_identity`].
    fn repaired(mut self) -> Self {
        if self.identity.is_empty() {
            self.identity = default_identity();
        }
        if matches!(self.validate(), Err(LeaderConfigError::Timing { .. })) {
            self.lease_duration = DEFAULT_LEASE_DURATION;
            self.renew_deadline = DEFAULT_RENEW_DEADLINE;
            self.retry_period = DEFAULT_RETRY_PERIOD;
        }
        self
    }
}

/// This replica's identity: `POD_NAME` (downward API) or else the hostname, then `_` and
/// eight random hex digits. The suffix keeps two processes apart that share a name (a
/// restarted container, pods on the host network): with equal identities both would lead.
pub fn default_identity() -> String {
    identity(
        non_empty_env("POD_NAME"),
        non_empty_env("HOSTNAME").or_else(|| {
            ["/proc/sys/kernel/hostname", "/etc/hostname"]
                .iter()
                .find_map(|p| std::fs::read_to_string(p).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        }),
        fastrand::u32(..),
    )
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn identity(pod_name: Option<String>, hostname: Option<String>, suffix: u32) -> String {
    let base = pod_name
        .or(hostname)
        .unwrap_or_else(|| "pullsecret-injector".to_string());
    format!("{base}_{suffix:08x}")
}

/// Campaigns for one Lease; see [`LeaderElector::run`].
pub struct LeaderElector {
    client: kube::Client,
    config: LeaderConfig,
}

impl LeaderElector {
    /// An elector for `config.namespace/config.name` that uses `client`.
    pub fn new(client: kube::Client, config: LeaderConfig) -> Self {
        Self { client, config }
    }

    /// Runs until `shutdown` resolves: tries to acquire or renew every `retry_period`;
    /// publishes `true` on `leading` while it holds the lease and `false` as soon as it may
    /// not (lease taken by someone else, no renewal within `renew_deadline`, or shutdown).
    /// On shutdown, if it holds (or may hold) the lease, it releases it so that another
    /// replica takes over at once. API errors are logged and retried, never returned.
    ///
    /// A config that fails [`LeaderConfig::validate`] is logged as an error and run with
    /// the default timing (or a [`default_identity`]) instead.
    pub async fn run(self, leading: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
        if let Err(e) = self.config.validate() {
            error!(error = %e, "invalid leader election config; using defaults for the invalid fields");
        }
        let config = self.config.repaired();
        let mut campaign = Campaign {
            api: Api::namespaced(self.client, &config.namespace),
            lease: format!("{}/{}", config.namespace, config.name),
            config,
            leading: &leading,
            renewed_at: None,
            seen: None,
            unsure: false,
            pending: "reading",
            last_problem: None,
            last_holder: None,
        };
        publish(&leading, false);
        campaign.run(shutdown).await;
    }
}

/// The last Lease read or written, and when its current record was first observed.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    lease: Lease,
    at: Instant,
}

/// Records `lease`, read at `now`, after `prev`. The observation time only moves when the
/// record (the spec) changes: a holder that stops renewing expires one lease duration after
/// we first saw its last renewal. Metadata changes (labels, resourceVersion) do not count.
fn observe(prev: Option<Seen>, lease: Lease, now: Instant) -> Seen {
    match prev {
        Some(prev) if prev.lease.spec == lease.spec => Seen { lease, at: prev.at },
        _ => Seen { lease, at: now },
    }
}

/// What one round does, decided from the observed Lease.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    /// There is no Lease: create it with this spec.
    Create(LeaseSpec),
    /// The Lease is ours: write this spec over the observed one.
    Renew(LeaseSpec),
    /// The Lease is free: write this spec over the observed one.
    Acquire { spec: LeaseSpec, from: Previous },
    /// Someone else holds a valid lease.
    Wait {
        holder: String,
        expires_in: Duration,
    },
}

/// Why a Lease that is not ours may be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Previous {
    /// Its holder released it (empty `holderIdentity`).
    Released,
    /// Its holder (named) did not renew it for a lease duration.
    Expired(String),
}

/// The election rule (client-go's `tryAcquireOrRenew`). `observed` is the Lease just read
/// (`None`: absent), first seen with this spec at `observed_at`; `now` is the monotonic
/// time, `wall_now` the wall-clock time written into `renewTime`/`acquireTime` (for
/// people and other clients; never read back for a decision).
fn decide(
    observed: Option<&Lease>,
    observed_at: Instant,
    now: Instant,
    wall_now: &MicroTime,
    me: &str,
    config: &LeaderConfig,
) -> Action {
    let Some(lease) = observed else {
        return Action::Create(held_spec(None, me, wall_now.clone(), 0, wall_now, config));
    };
    let empty = LeaseSpec::default();
    let old = lease.spec.as_ref().unwrap_or(&empty);
    let transitions = old.lease_transitions.unwrap_or(0);
    match old.holder_identity.as_deref() {
        Some(holder) if holder == me => {
            let acquired = old.acquire_time.clone().unwrap_or_else(|| wall_now.clone());
            Action::Renew(held_spec(
                Some(old),
                me,
                acquired,
                transitions,
                wall_now,
                config,
            ))
        }
        None | Some("") => Action::Acquire {
            spec: held_spec(
                Some(old),
                me,
                wall_now.clone(),
                transitions.saturating_add(1),
                wall_now,
                config,
            ),
            from: Previous::Released,
        },
        Some(holder) => {
            let duration = old
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map_or(config.lease_duration, Duration::from_secs);
            match observed_at.checked_add(duration) {
                Some(expiry) if now >= expiry => Action::Acquire {
                    spec: held_spec(
                        Some(old),
                        me,
                        wall_now.clone(),
                        transitions.saturating_add(1),
                        wall_now,
                        config,
                    ),
                    from: Previous::Expired(holder.to_string()),
                },
                expiry => Action::Wait {
                    holder: holder.to_string(),
                    expires_in: expiry.map_or(Duration::MAX, |e| e - now),
                },
            }
        }
    }
}

/// The spec of a lease held by `me`. Coordinated-election fields of `old` are kept as is.
fn held_spec(
    old: Option<&LeaseSpec>,
    me: &str,
    acquire_time: MicroTime,
    transitions: i32,
    wall_now: &MicroTime,
    config: &LeaderConfig,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration_seconds(config.lease_duration)),
        acquire_time: Some(acquire_time),
        renew_time: Some(wall_now.clone()),
        lease_transitions: Some(transitions),
        preferred_holder: old.and_then(|o| o.preferred_holder.clone()),
        strategy: old.and_then(|o| o.strategy.clone()),
    }
}

/// The spec that gives the lease up (client-go's release): no holder, one second left, the
/// transition count unchanged (the next holder adds one).
fn released_spec(old: Option<&LeaseSpec>, wall_now: &MicroTime) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(wall_now.clone()),
        renew_time: Some(wall_now.clone()),
        lease_transitions: old.and_then(|o| o.lease_transitions),
        preferred_holder: old.and_then(|o| o.preferred_holder.clone()),
        strategy: old.and_then(|o| o.strategy.clone()),
    }
}

/// `leaseDurationSeconds` for a duration: whole seconds rounded up (others must never wait
/// less than we mean), at least 1.
fn duration_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// The wall clock as the Lease's `MicroTime` (k8s-openapi wraps jiff 0.2's `Timestamp`;
/// this crate uses jiff 1, so the value crosses over as microseconds).
fn wall_now() -> MicroTime {
    let micros = jiff::Timestamp::now().as_microsecond();
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(micros)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Publishes `value`, waking receivers only when it changes.
fn publish(tx: &watch::Sender<bool>, value: bool) {
    tx.send_if_modified(|v| std::mem::replace(v, value) != value);
}

/// A failed lease call, worded for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum LeaseError {
    /// The API server answered with an error, or the request failed.
    #[error("{op} lease {lease}: {detail}")]
    Call {
        op: &'static str,
        lease: String,
        detail: String,
    },
    /// No answer in time (renew deadline, or the per-round bound when not leading).
    #[error("{op} lease {lease}: no answer from the API server in time")]
    Timeout { op: &'static str, lease: String },
}

/// `err` in one line: the API server's message for API errors, else the error chain.
fn describe(err: &kube::Error) -> String {
    if let kube::Error::Api(status) = err {
        return format!("{} ({} {})", status.message, status.code, status.reason);
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// How a round that ended with us holding the lease got it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Took {
    Created,
    Renewed,
    Acquired(Previous),
}

/// The result of one round.
#[derive(Debug)]
enum Round {
    /// We hold the lease as of the round's start.
    Holding(Took),
    /// Someone else holds a valid lease.
    Following {
        holder: String,
        expires_in: Duration,
    },
    /// Another candidate wrote between our read and our write (409).
    LostRace,
    /// The round failed; retried after the retry period.
    Failed(LeaseError),
}

/// Why we stop leading.
#[derive(Debug, Clone, Copy)]
enum Loss {
    TakenBy,
    Conflict,
    RenewDeadline,
}

/// The state of [`LeaderElector::run`].
struct Campaign<'a> {
    api: Api<Lease>,
    /// `namespace/name`, for messages.
    lease: String,
    config: LeaderConfig,
    leading: &'a watch::Sender<bool>,
    /// While leading: the start of the last round that renewed the lease.
    renewed_at: Option<Instant>,
    seen: Option<Seen>,
    /// A write was sent whose outcome we do not know (timeout, transport error, cancelled):
    /// the Lease may name us even though `seen` does not.
    unsure: bool,
    /// The call in progress, for timeout messages.
    pending: &'static str,
    /// The last failure logged, so that a failure repeating every retry is logged once.
    last_problem: Option<String>,
    /// The last other holder logged at debug.
    last_holder: Option<String>,
}

impl Campaign<'_> {
    async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let started = Instant::now();
            if self.deadline().is_some_and(|d| started >= d) {
                self.lose(Loss::RenewDeadline, None);
            }
            // While leading, a round may not outlive the renew deadline; otherwise bound it
            // by the same span so that a hung connection cannot stall the campaign.
            let budget = self
                .deadline()
                .map_or(self.config.renew_deadline, |d| d - started);
            let outcome = tokio::select! {
                biased;
                () = &mut shutdown => None,
                r = tokio::time::timeout(budget, self.round()) => Some(r),
            };
            let Some(outcome) = outcome else { break };
            let round = outcome.unwrap_or_else(|_| {
                Round::Failed(LeaseError::Timeout {
                    op: self.pending,
                    lease: self.lease.clone(),
                })
            });
            self.settle(round, started);
            if self.deadline().is_some_and(|d| Instant::now() >= d) {
                self.lose(Loss::RenewDeadline, None);
            }

            let mut wake = started + self.config.retry_period;
            match self.deadline() {
                Some(deadline) => wake = wake.min(deadline),
                None => {
                    wake += self
                        .config
                        .retry_period
                        .mul_f64(RETRY_JITTER * fastrand::f64())
                }
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        self.stop().await;
    }

    /// When our leadership ends unless renewed; `None` when not leading.
    fn deadline(&self) -> Option<Instant> {
        self.renewed_at.map(|t| t + self.config.renew_deadline)
    }

    /// Acts on a round's result: leadership state, `leading`, logs.
    fn settle(&mut self, round: Round, started: Instant) {
        match round {
            Round::Holding(took) => {
                self.recovered();
                self.last_holder = None;
                if self.renewed_at.is_none() {
                    let how = match &took {
                        Took::Created => "created the lease".to_string(),
                        Took::Renewed => "the lease already named us".to_string(),
                        Took::Acquired(Previous::Released) => "the lease was released".to_string(),
                        Took::Acquired(Previous::Expired(h)) => format!("the lease of {h} expired"),
                    };
                    info!(lease = %self.lease, identity = %self.config.identity, how, "became leader");
                }
                self.renewed_at = Some(started);
                publish(self.leading, true);
            }
            Round::Following { holder, expires_in } => {
                self.recovered();
                if self.renewed_at.is_some() {
                    self.lose(Loss::TakenBy, Some(&holder));
                } else if self.last_holder.as_deref() != Some(holder.as_str()) {
                    debug!(lease = %self.lease, identity = %self.config.identity, holder, ?expires_in, "lease held by another replica");
                }
                self.last_holder = Some(holder);
            }
            Round::LostRace => {
                self.recovered();
                debug!(lease = %self.lease, identity = %self.config.identity, "another replica wrote the lease first (409)");
                if self.renewed_at.is_some() {
                    self.lose(Loss::Conflict, None);
                }
            }
            Round::Failed(e) => {
                let text = e.to_string();
                if self.last_problem.as_deref() != Some(text.as_str()) {
                    warn!(lease = %self.lease, identity = %self.config.identity, error = %text, "leader election: lease call failed; retrying");
                    self.last_problem = Some(text);
                }
            }
        }
    }

    fn recovered(&mut self) {
        if let Some(previous) = self.last_problem.take() {
            info!(lease = %self.lease, identity = %self.config.identity, previous_error = %previous, "leader election: lease calls work again");
        }
    }

    fn lose(&mut self, why: Loss, holder: Option<&str>) {
        if self.renewed_at.take().is_none() {
            return;
        }
        publish(self.leading, false);
        let reason = match why {
            Loss::TakenBy => format!("the lease is now held by {}", holder.unwrap_or("?")),
            Loss::Conflict => "another replica wrote the lease".to_string(),
            Loss::RenewDeadline => format!(
                "no renewal within the renew deadline ({:?})",
                self.config.renew_deadline
            ),
        };
        info!(lease = %self.lease, identity = %self.config.identity, reason, "lost leadership");
    }

    /// Read the lease, decide, write. Leaves `seen` at what the API server last said.
    async fn round(&mut self) -> Round {
        self.pending = "reading";
        let lease = match self.api.get_opt(&self.config.name).await {
            Ok(lease) => lease,
            Err(e) => return Round::Failed(self.call_error(&e)),
        };
        // A read tells the truth about the holder, whatever happened to earlier writes.
        self.unsure = false;
        let now = Instant::now();
        self.seen = lease.map(|l| observe(self.seen.take(), l, now));
        let action = decide(
            self.seen.as_ref().map(|s| &s.lease),
            self.seen.as_ref().map_or(now, |s| s.at),
            now,
            &wall_now(),
            &self.config.identity,
            &self.config,
        );
        let (spec, took) = match action {
            Action::Wait { holder, expires_in } => {
                return Round::Following { holder, expires_in };
            }
            Action::Create(spec) => (spec, Took::Created),
            Action::Renew(spec) => (spec, Took::Renewed),
            Action::Acquire { spec, from } => (spec, Took::Acquired(from)),
        };
        let result = match self.seen.as_ref() {
            None => {
                self.pending = "creating";
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.unsure = true;
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(seen) => {
                self.pending = "updating";
                let mut lease = seen.lease.clone();
                lease.spec = Some(spec);
                self.unsure = true;
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(written) => {
                self.unsure = false;
                self.seen = Some(Seen {
                    lease: written,
                    at: Instant::now(),
                });
                Round::Holding(took)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => {
                self.unsure = false;
                Round::LostRace
            }
            Err(e) => {
                // The API server said no: nothing was written. Otherwise we cannot know.
                self.unsure = !matches!(e, kube::Error::Api(_));
                Round::Failed(self.call_error(&e))
            }
        }
    }

    fn call_error(&self, e: &kube::Error) -> LeaseError {
        LeaseError::Call {
            op: self.pending,
            lease: self.lease.clone(),
            detail: describe(e),
        }
    }

    /// Shutdown: publish `false`, then release the lease if it may be ours.
    async fn stop(&mut self) {
        publish(self.leading, false);
        let was_leading = self.renewed_at.take().is_some();
        let named_us = self.seen.as_ref().is_some_and(|s| {
            s.lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.config.identity.as_str())
        });
        if !(was_leading || named_us || self.unsure) {
            return;
        }
        match tokio::time::timeout(self.config.renew_deadline, self.release()).await {
            Ok(Ok(true)) => {
                info!(lease = %self.lease, identity = %self.config.identity, "released lease");
            }
            Ok(Ok(false)) => {
                debug!(lease = %self.lease, identity = %self.config.identity, "lease not ours at shutdown; nothing to release");
            }
            Ok(Err(e)) => {
                warn!(lease = %self.lease, identity = %self.config.identity, error = %e, "could not release the lease; others take over when it expires");
            }
            Err(_) => {
                let e = LeaseError::Timeout {
                    op: self.pending,
                    lease: self.lease.clone(),
                };
                warn!(lease = %self.lease, identity = %self.config.identity, error = %e, "could not release the lease; others take over when it expires");
            }
        }
    }

    /// Gives the lease up if the API server says it is ours; `Ok(false)` if it is not.
    async fn release(&mut self) -> Result<bool, LeaseError> {
        self.pending = "reading";
        let lease = match self.api.get_opt(&self.config.name).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return Ok(false),
            Err(e) => return Err(self.call_error(&e)),
        };
        let old = lease.spec.as_ref();
        if old.and_then(|s| s.holder_identity.as_deref()) != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        let mut released = lease.clone();
        released.spec = Some(released_spec(old, &wall_now()));
        self.pending = "releasing";
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &released)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(self.call_error(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "pod-a_0000000a";
    const OTHER: &str = "pod-b_0000000b";

    fn config() -> LeaderConfig {
        LeaderConfig::new("ns", "lease", ME)
    }

    fn wall(secs: i64) -> MicroTime {
        MicroTime(k8s_openapi::jiff::Timestamp::from_second(1_750_000_000 + secs).unwrap())
    }

    fn lease(spec: Option<LeaseSpec>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("lease".into()),
                namespace: Some("ns".into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            spec,
        }
    }

    fn held_by(holder: &str, duration: i32, renewed: i64, transitions: i32) -> Lease {
        lease(Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(wall(-100)),
            renew_time: Some(wall(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }))
    }

    fn ours(acquired: i64, now: i64, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(ME.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(wall(acquired)),
            renew_time: Some(wall(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// decide() with the lease observed `observed_ago` before now.
    fn decide_at(observed: Option<&Lease>, observed_ago: Duration) -> Action {
        let now = Instant::now() + Duration::from_secs(3600);
        decide(observed, now - observed_ago, now, &wall(0), ME, &config())
    }

    #[test]
    fn absent_lease_is_created_with_us_as_holder_and_no_transitions() {
        assert_eq!(
            decide_at(None, Duration::ZERO),
            Action::Create(ours(0, 0, 0))
        );
    }

    #[test]
    fn our_own_lease_is_renewed_keeping_acquire_time_and_transitions() {
        let l = held_by(ME, 15, -5, 7);
        assert_eq!(
            decide_at(Some(&l), Duration::from_secs(5)),
            Action::Renew(ours(-100, 0, 7))
        );
    }

    #[test]
    fn our_own_lease_is_renewed_even_when_it_looks_expired() {
        let l = held_by(ME, 15, -500, 2);
        assert_eq!(
            decide_at(Some(&l), Duration::from_secs(500)),
            Action::Renew(ours(-100, 0, 2))
        );
    }

    #[test]
    fn valid_lease_of_another_replica_is_waited_for() {
        let l = held_by(OTHER, 15, -1, 3);
        assert_eq!(
            decide_at(Some(&l), Duration::from_secs(1)),
            Action::Wait {
                holder: OTHER.into(),
                expires_in: Duration::from_secs(14)
            }
        );
    }

    #[test]
    fn lease_of_another_replica_is_valid_until_its_full_duration_after_we_saw_it() {
        let l = held_by(OTHER, 15, 0, 3);
        let just_before = Duration::from_secs(15) - Duration::from_millis(1);
        assert_eq!(
            decide_at(Some(&l), just_before),
            Action::Wait {
                holder: OTHER.into(),
                expires_in: Duration::from_millis(1)
            }
        );
    }

    #[test]
    fn expired_lease_of_another_replica_is_acquired_with_one_more_transition() {
        let l = held_by(OTHER, 15, -15, 3);
        assert_eq!(
            decide_at(Some(&l), Duration::from_secs(15)),
            Action::Acquire {
                spec: ours(0, 0, 4),
                from: Previous::Expired(OTHER.into())
            }
        );
    }

    #[test]
    fn remote_renew_time_long_ago_does_not_expire_a_lease_we_just_saw_change() {
        // Its wall clock (or ours) is off by an hour: only our observation time counts.
        let l = held_by(OTHER, 15, -3600, 3);
        assert!(matches!(
            decide_at(Some(&l), Duration::ZERO),
            Action::Wait { .. }
        ));
    }

    #[test]
    fn remote_renew_time_in_the_future_does_not_keep_an_unrenewed_lease_alive() {
        let l = held_by(OTHER, 15, 3600, 3);
        assert!(matches!(
            decide_at(Some(&l), Duration::from_secs(16)),
            Action::Acquire {
                from: Previous::Expired(_),
                ..
            }
        ));
    }

    #[test]
    fn the_holders_own_lease_duration_counts_not_ours() {
        let l = held_by(OTHER, 60, 0, 0);
        assert_eq!(
            decide_at(Some(&l), Duration::from_secs(30)),
            Action::Wait {
                holder: OTHER.into(),
                expires_in: Duration::from_secs(30)
            }
        );
        let short = held_by(OTHER, 2, 0, 0);
        assert!(matches!(
            decide_at(Some(&short), Duration::from_secs(2)),
            Action::Acquire { .. }
        ));
    }

    #[test]
    fn missing_or_nonpositive_lease_duration_falls_back_to_ours() {
        for duration in [None, Some(0), Some(-5)] {
            let mut l = held_by(OTHER, 1, 0, 0);
            l.spec.as_mut().unwrap().lease_duration_seconds = duration;
            assert!(
                matches!(
                    decide_at(Some(&l), Duration::from_secs(14)),
                    Action::Wait { .. }
                ),
                "{duration:?}"
            );
            assert!(
                matches!(
                    decide_at(Some(&l), Duration::from_secs(15)),
                    Action::Acquire { .. }
                ),
                "{duration:?}"
            );
        }
    }

    #[test]
    fn released_lease_is_acquired_at_once() {
        let released = lease(Some(released_spec(
            Some(&held_by(OTHER, 15, 0, 5).spec.unwrap()),
            &wall(0),
        )));
        assert_eq!(
            decide_at(Some(&released), Duration::ZERO),
            Action::Acquire {
                spec: ours(0, 0, 6),
                from: Previous::Released
            }
        );
    }

    #[test]
    fn lease_without_holder_or_spec_counts_as_released() {
        let no_holder = lease(Some(LeaseSpec::default()));
        let no_spec = lease(None);
        for l in [no_holder, no_spec] {
            assert_eq!(
                decide_at(Some(&l), Duration::ZERO),
                Action::Acquire {
                    spec: ours(0, 0, 1),
                    from: Previous::Released
                }
            );
        }
    }

    #[test]
    fn transitions_saturate() {
        let l = held_by(OTHER, 15, 0, i32::MAX);
        let Action::Acquire { spec, .. } = decide_at(Some(&l), Duration::from_secs(15)) else {
            panic!("expected acquire");
        };
        assert_eq!(spec.lease_transitions, Some(i32::MAX));
    }

    #[test]
    fn coordinated_election_fields_are_kept() {
        let mut l = held_by(OTHER, 15, 0, 0);
        let spec = l.spec.as_mut().unwrap();
        spec.strategy = Some("OldestEmulationVersion".into());
        spec.preferred_holder = Some("x".into());
        let Action::Acquire { spec, .. } = decide_at(Some(&l), Duration::from_secs(15)) else {
            panic!("expected acquire");
        };
        assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
        assert_eq!(spec.preferred_holder.as_deref(), Some("x"));
    }

    #[test]
    fn release_clears_the_holder_and_keeps_transitions() {
        let old = held_by(ME, 15, -1, 4).spec.unwrap();
        assert_eq!(
            released_spec(Some(&old), &wall(0)),
            LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: Some(1),
                acquire_time: Some(wall(0)),
                renew_time: Some(wall(0)),
                lease_transitions: Some(4),
                ..LeaseSpec::default()
            }
        );
    }

    #[test]
    fn observation_time_moves_only_when_the_record_changes() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        let first = observe(None, held_by(OTHER, 15, 0, 0), t0);
        assert_eq!(first.at, t0);

        let mut same_spec = held_by(OTHER, 15, 0, 0);
        same_spec.metadata.resource_version = Some("43".into());
        same_spec.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
        let again = observe(Some(first.clone()), same_spec.clone(), t1);
        assert_eq!(again.at, t0, "metadata-only changes do not reset the clock");
        assert_eq!(
            again.lease, same_spec,
            "the newest object is kept for its resourceVersion"
        );

        let renewed = observe(Some(first), held_by(OTHER, 15, 2, 0), t1);
        assert_eq!(renewed.at, t1, "a renewal resets the clock");
    }

    #[test]
    fn lease_duration_seconds_round_up_and_are_at_least_one() {
        let cases = [
            (Duration::from_secs(15), 15),
            (Duration::from_millis(1500), 2),
            (Duration::from_millis(200), 1),
            (Duration::ZERO, 1),
            (Duration::from_secs(u64::MAX), i32::MAX),
        ];
        for (d, want) in cases {
            assert_eq!(duration_seconds(d), want, "{d:?}");
        }
    }

    #[test]
    fn default_config_is_valid_and_matches_client_go() {
        let c = config();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
    }

    #[test]
    fn invalid_configs_are_rejected_and_repaired() {
        let mut c = config();
        c.renew_deadline = c.lease_duration;
        assert!(matches!(
            c.validate(),
            Err(LeaderConfigError::Timing { .. })
        ));
        assert_eq!(c.clone().repaired(), config());

        let mut c = config();
        c.retry_period = Duration::ZERO;
        assert!(c.validate().is_err());

        let mut c = config();
        c.retry_period = c.renew_deadline;
        assert!(c.validate().is_err());

        let c = LeaderConfig::new("ns", "lease", "");
        assert_eq!(c.validate(), Err(LeaderConfigError::Empty("identity")));
        let repaired = c.repaired();
        assert!(!repaired.identity.is_empty());
        assert_eq!(repaired.validate(), Ok(()));

        assert_eq!(
            LeaderConfig::new("", "lease", ME).validate(),
            Err(LeaderConfigError::Empty("namespace"))
        );
        assert_eq!(
            LeaderConfig::new("ns", "", ME).validate(),
            Err(LeaderConfigError::Empty("name"))
        );
    }

    #[test]
    fn identity_prefers_pod_name_then_hostname_and_adds_a_suffix() {
        assert_eq!(
            identity(Some("pod-1".into()), Some("node".into()), 0xab),
            "pod-1_000000ab"
        );
        assert_eq!(identity(None, Some("node".into()), 1), "node_00000001");
        assert_eq!(
            identity(None, None, 0xffff_ffff),
            "pullsecret-injector_ffffffff"
        );
    }

    #[test]
    fn default_identities_differ_between_calls() {
        let (a, b) = (default_identity(), default_identity());
        assert_ne!(a, b);
        assert!(a.len() > 9 && a.as_bytes()[a.len() - 9] == b'_', "{a}");
    }

    #[test]
    fn publish_wakes_receivers_only_on_change() {
        let (tx, mut rx) = watch::channel(false);
        publish(&tx, false);
        assert!(!rx.has_changed().unwrap());
        publish(&tx, true);
        assert!(rx.has_changed().unwrap());
        assert!(*rx.borrow_and_update());
        publish(&tx, true);
        assert!(!rx.has_changed().unwrap());
    }
}
