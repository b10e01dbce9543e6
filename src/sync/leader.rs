//! Leader election on a `coordination.k8s.io/v1` Lease: exactly one replica's sync task
//! writes Secrets while every replica serves the webhook.
//!
//! The Lease is the one client-go writes, so `kubectl get lease` reads it the usual way;
//! the loop is small because the job is: every `retry_period` read the Lease, decide
//! ([`decide`], pure), and write it back with the `resourceVersion` just read, so the API
//! server serialises candidates (a 409 only means someone else won this round).
//!
//! Time is never read from the Lease. Someone else's lease expires `leaseDurationSeconds`
//! after **we first saw** its current record, on our monotonic clock: nodes' wall clocks
//! may disagree by more than a lease duration, elapsed time on two clocks does not. Our own
//! leadership ends `renew_deadline` after the start of the last round that renewed, whether
//! or not the API server answers; `renew_deadline < lease_duration`, so we stop before
//! anyone else may start. On shutdown `false` is published first, then the Lease is
//! released (empty holder, one second left) so another replica takes over within a retry
//! period instead of a lease duration.
//!
//! RBAC: `get`, `create` and `update` on `leases` in the lease namespace, nothing else.
//! `renewTime` and `acquireTime` are written for people and other tools only.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

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
    /// If the lease cannot be renewed within this long, we stop leading (< `lease_duration`).
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew (< `renew_deadline`).
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// A config with client-go's default timing (15 s lease, 10 s renew deadline, 2 s retry).
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// This replica's identity: `POD_NAME` (downward API) or else the hostname, then `_` and
/// eight random hex digits, so that two processes sharing a name never both lead.
pub fn default_identity() -> String {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let base = env("POD_NAME")
        .or_else(|| env("HOSTNAME"))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "pullsecret-injector".to_string());
    format!("{base}_{:08x}", fastrand::u32(..))
}

/// What one round does, decided from the Lease just read.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    /// Write this spec (create when there is no Lease); `how` says why we may.
    Take { spec: LeaseSpec, how: String },
    /// Someone else holds a valid lease.
    Follow { holder: String },
}

/// client-go's `tryAcquireOrRenew`. `seen_at`: when we first saw the Lease's current spec.
fn decide(
    lease: Option<&LeaseSpec>,
    seen_at: Instant,
    now: Instant,
    wall_now: &MicroTime,
    config: &LeaderConfig,
) -> Decision {
    let held = |old: Option<&LeaseSpec>, acquired: MicroTime, transitions: i32| LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(whole_seconds(config.lease_duration)),
        acquire_time: Some(acquired),
        renew_time: Some(wall_now.clone()),
        lease_transitions: Some(transitions),
        preferred_holder: old.and_then(|o| o.preferred_holder.clone()),
        strategy: old.and_then(|o| o.strategy.clone()),
    };
    let Some(old) = lease else {
        return Decision::Take {
            spec: held(None, wall_now.clone(), 0),
            how: "created the lease".into(),
        };
    };
    let transitions = old.lease_transitions.unwrap_or(0);
    let take_over = |how: String| Decision::Take {
        spec: held(Some(old), wall_now.clone(), transitions.saturating_add(1)),
        how,
    };
    match old.holder_identity.as_deref() {
        Some(holder) if holder == config.identity => Decision::Take {
            spec: held(
                Some(old),
                old.acquire_time.clone().unwrap_or_else(|| wall_now.clone()),
                transitions,
            ),
            how: "the lease already named us".into(),
        },
        None | Some("") => take_over("the lease was released".into()),
        Some(holder) => {
            let duration = old
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map_or(config.lease_duration, Duration::from_secs);
            if now
                .checked_duration_since(seen_at)
                .is_some_and(|d| d >= duration)
            {
                take_over(format!("the lease of {holder} expired"))
            } else {
                Decision::Follow {
                    holder: holder.to_string(),
                }
            }
        }
    }
}

/// The spec that gives the lease up (client-go's release): no holder, one second left.
fn released(old: &LeaseSpec, wall_now: &MicroTime) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(wall_now.clone()),
        renew_time: Some(wall_now.clone()),
        ..old.clone()
    }
}

/// Whole seconds rounded up (others must never wait less than we mean), at least 1.
fn whole_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// The wall clock as a Lease `MicroTime` (k8s-openapi uses jiff 0.2, this crate jiff 1).
fn wall_now() -> MicroTime {
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(jiff::Timestamp::now().as_microsecond())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// `err` in one line: the API server's message for API errors, else the error chain.
fn describe(err: &kube::Error) -> String {
    if let kube::Error::Api(s) = err {
        return format!("{} ({} {})", s.message, s.code, s.reason);
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// What a round ended with.
enum Round {
    /// We hold the lease as of the round's start.
    Holding { how: String },
    /// Someone else holds it.
    Following { holder: String },
    /// Another candidate wrote between our read and our write.
    LostRace,
    /// A call failed (the message names the call and the lease).
    Failed(String),
}

/// Campaigns for one Lease; see [`LeaderElector::run`].
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderConfig,
    /// `namespace/name`, for messages.
    lease: String,
    /// The Lease last read or written, and when we first saw its spec.
    seen: Option<(Lease, Instant)>,
    /// While leading: the start of the last round that renewed.
    renewed_at: Option<Instant>,
    /// The last failure logged, so that one repeating every retry is logged once.
    last_error: Option<String>,
}

impl LeaderElector {
    /// An elector for `config.namespace/config.name` that uses `client`.
    pub fn new(client: kube::Client, config: LeaderConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            lease: format!("{}/{}", config.namespace, config.name),
            config,
            seen: None,
            renewed_at: None,
            last_error: None,
        }
    }

    /// Runs until `shutdown` resolves: tries to acquire or renew every retry period and
    /// publishes on `leading` whether we hold the lease (`false` as soon as we may not).
    /// API errors are logged once and retried, never returned. On shutdown it publishes
    /// `false`, then releases the lease if it is ours.
    pub async fn run(mut self, leading: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let publish = |v: bool| leading.send_if_modified(|l| std::mem::replace(l, v) != v);
        publish(false);
        loop {
            let started = Instant::now();
            self.check_deadline(&publish, started);
            let deadline = self.renewed_at.map(|t| t + self.config.renew_deadline);
            let budget = deadline.map_or(self.config.renew_deadline, |d| {
                d.saturating_duration_since(started)
            });
            let round = tokio::select! {
                biased;
                () = &mut shutdown => break,
                r = tokio::time::timeout(budget, self.round()) => r.unwrap_or_else(|_| {
                    Round::Failed(format!("lease {}: no answer from the API server in time", self.lease))
                }),
            };
            if !matches!(round, Round::Failed(_))
                && let Some(previous) = self.last_error.take()
            {
                info!(lease = %self.lease, identity = %self.config.identity, previous_error = %previous, "leader election: lease calls work again");
            }
            match round {
                Round::Holding { how } => {
                    if self.renewed_at.replace(started).is_none() {
                        info!(lease = %self.lease, identity = %self.config.identity, how, "became leader");
                    }
                    publish(true);
                }
                Round::Following { holder } => {
                    self.lose(&publish, format!("the lease is now held by {holder}"));
                    debug!(lease = %self.lease, holder, "lease held by another replica");
                }
                Round::LostRace => self.lose(&publish, "another replica wrote the lease".into()),
                Round::Failed(e) => {
                    if self.last_error.as_deref() != Some(e.as_str()) {
                        warn!(lease = %self.lease, identity = %self.config.identity, error = %e, "leader election: lease call failed; retrying");
                        self.last_error = Some(e);
                    }
                }
            }
            self.check_deadline(&publish, Instant::now());
            let wake = match self.renewed_at.map(|t| t + self.config.renew_deadline) {
                Some(d) => (started + self.config.retry_period).min(d),
                // Followers spread their polls so that replicas started together do not
                // poll in lockstep.
                None => {
                    started
                        + self
                            .config
                            .retry_period
                            .mul_f64(1.0 + 0.2 * fastrand::f64())
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        publish(false);
        self.renewed_at = None;
        match tokio::time::timeout(self.config.renew_deadline, self.release()).await {
            Ok(Ok(true)) => {
                info!(lease = %self.lease, identity = %self.config.identity, "released lease")
            }
            Ok(Ok(false)) => debug!(lease = %self.lease, "lease not ours at shutdown"),
            Ok(Err(e)) => {
                warn!(lease = %self.lease, error = %e, "could not release the lease; others take over when it expires")
            }
            Err(_) => {
                warn!(lease = %self.lease, "could not release the lease in time; others take over when it expires")
            }
        }
    }

    /// Stop leading when the last renewal is older than the renew deadline.
    fn check_deadline(&mut self, publish: &impl Fn(bool) -> bool, now: Instant) {
        if self
            .renewed_at
            .is_some_and(|t| now >= t + self.config.renew_deadline)
        {
            let why = format!(
                "no renewal within the renew deadline ({:?})",
                self.config.renew_deadline
            );
            self.lose(publish, why);
        }
    }

    fn lose(&mut self, publish: &impl Fn(bool) -> bool, reason: String) {
        if self.renewed_at.take().is_some() {
            publish(false);
            info!(lease = %self.lease, identity = %self.config.identity, reason, "lost leadership");
        }
    }

    /// Read, decide, write. Leaves `seen` at what the API server last said.
    async fn round(&mut self) -> Round {
        let read = match self.api.get_opt(&self.config.name).await {
            Ok(l) => l,
            Err(e) => {
                return Round::Failed(format!("reading lease {}: {}", self.lease, describe(&e)));
            }
        };
        let now = Instant::now();
        self.seen = read.map(|lease| {
            let at = match &self.seen {
                Some((prev, at)) if prev.spec == lease.spec => *at,
                _ => now,
            };
            (lease, at)
        });
        let decision = decide(
            self.seen.as_ref().and_then(|(l, _)| l.spec.as_ref()),
            self.seen.as_ref().map_or(now, |(_, at)| *at),
            now,
            &wall_now(),
            &self.config,
        );
        let (spec, how) = match decision {
            Decision::Follow { holder } => return Round::Following { holder },
            Decision::Take { spec, how } => (spec, how),
        };
        let pp = PostParams::default();
        let written = match &self.seen {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&pp, &lease).await
            }
            Some((seen, _)) => {
                let mut lease = seen.clone();
                lease.spec = Some(spec);
                self.api.replace(&self.config.name, &pp, &lease).await
            }
        };
        match written {
            Ok(lease) => {
                self.seen = Some((lease, Instant::now()));
                Round::Holding { how }
            }
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => Round::LostRace,
            Err(e) => Round::Failed(format!("writing lease {}: {}", self.lease, describe(&e))),
        }
    }

    /// Gives the lease up if the API server says it is ours; `Ok(false)` if it is not.
    async fn release(&self) -> Result<bool, String> {
        let call =
            |what: &str, e: kube::Error| format!("{what} lease {}: {}", self.lease, describe(&e));
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| call("reading", e))?
        else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_ref() else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        lease.spec = Some(released(spec, &wall_now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(call("releasing", e)),
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

    fn held_by(holder: &str, duration: i32, renewed: i64, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(wall(-100)),
            renew_time: Some(wall(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn ours(acquired: i64, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(ME.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(wall(acquired)),
            renew_time: Some(wall(0)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// decide() with the lease's spec first seen `seen_ago` before now.
    fn decide_at(lease: Option<&LeaseSpec>, seen_ago: Duration) -> Decision {
        let now = Instant::now() + Duration::from_secs(3600);
        decide(lease, now - seen_ago, now, &wall(0), &config())
    }

    fn take(spec: LeaseSpec, how: &str) -> Decision {
        Decision::Take {
            spec,
            how: how.into(),
        }
    }

    fn follow(holder: &str) -> Decision {
        Decision::Follow {
            holder: holder.into(),
        }
    }

    #[test]
    fn decide_table() {
        let s = Duration::from_secs;
        let mut no_duration = held_by(OTHER, 1, 0, 0);
        no_duration.lease_duration_seconds = None;
        let mut negative = held_by(OTHER, 1, 0, 0);
        negative.lease_duration_seconds = Some(-5);
        let released_by_other = released(&held_by(OTHER, 15, 0, 5), &wall(0));
        // (name, observed spec, first seen ago, expected)
        let cases: Vec<(&str, Option<LeaseSpec>, Duration, Decision)> = vec![
            (
                "absent_lease_is_created_with_no_transitions",
                None,
                s(0),
                take(ours(0, 0), "created the lease"),
            ),
            (
                "our_lease_is_renewed_keeping_acquire_time_and_transitions",
                Some(held_by(ME, 15, -5, 7)),
                s(5),
                take(ours(-100, 7), "the lease already named us"),
            ),
            (
                "our_lease_is_renewed_even_when_it_looks_expired",
                Some(held_by(ME, 15, -500, 2)),
                s(500),
                take(ours(-100, 2), "the lease already named us"),
            ),
            (
                "valid_lease_of_another_is_followed",
                Some(held_by(OTHER, 15, -1, 3)),
                s(1),
                follow(OTHER),
            ),
            (
                "lease_of_another_is_valid_until_its_full_duration_after_we_saw_it",
                Some(held_by(OTHER, 15, 0, 3)),
                s(15) - Duration::from_millis(1),
                follow(OTHER),
            ),
            (
                "expired_lease_of_another_is_taken_with_one_more_transition",
                Some(held_by(OTHER, 15, -15, 3)),
                s(15),
                take(ours(0, 4), "the lease of pod-b_0000000b expired"),
            ),
            (
                "remote_renew_time_long_ago_does_not_expire_a_lease_we_just_saw_change",
                Some(held_by(OTHER, 15, -3600, 3)),
                s(0),
                follow(OTHER),
            ),
            (
                "remote_renew_time_in_the_future_does_not_keep_a_lease_alive",
                Some(held_by(OTHER, 15, 3600, 3)),
                s(16),
                take(ours(0, 4), "the lease of pod-b_0000000b expired"),
            ),
            (
                "the_holders_own_longer_duration_counts",
                Some(held_by(OTHER, 60, 0, 0)),
                s(30),
                follow(OTHER),
            ),
            (
                "the_holders_own_shorter_duration_counts",
                Some(held_by(OTHER, 2, 0, 0)),
                s(2),
                take(ours(0, 1), "the lease of pod-b_0000000b expired"),
            ),
            (
                "missing_duration_falls_back_to_ours_before",
                Some(no_duration.clone()),
                s(14),
                follow(OTHER),
            ),
            (
                "missing_duration_falls_back_to_ours_after",
                Some(no_duration),
                s(15),
                take(ours(0, 1), "the lease of pod-b_0000000b expired"),
            ),
            (
                "negative_duration_falls_back_to_ours",
                Some(negative),
                s(14),
                follow(OTHER),
            ),
            (
                "released_lease_is_taken_at_once",
                Some(released_by_other),
                s(0),
                take(ours(0, 6), "the lease was released"),
            ),
            (
                "lease_without_holder_counts_as_released",
                Some(LeaseSpec::default()),
                s(0),
                take(ours(0, 1), "the lease was released"),
            ),
        ];
        for (name, lease, ago, want) in cases {
            assert_eq!(decide_at(lease.as_ref(), ago), want, "{name}");
        }
    }

    #[test]
    fn transitions_saturate_and_coordinated_election_fields_are_kept() {
        let mut l = held_by(OTHER, 15, 0, i32::MAX);
        l.strategy = Some("OldestEmulationVersion".into());
        l.preferred_holder = Some("x".into());
        let Decision::Take { spec, .. } = decide_at(Some(&l), Duration::from_secs(15)) else {
            panic!("expected take");
        };
        assert_eq!(spec.lease_transitions, Some(i32::MAX));
        assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
        assert_eq!(spec.preferred_holder.as_deref(), Some("x"));
    }

    #[test]
    fn release_clears_the_holder_and_keeps_transitions() {
        assert_eq!(
            released(&held_by(ME, 15, -1, 4), &wall(0)),
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
    fn lease_duration_seconds_round_up_and_are_at_least_one() {
        for (d, want) in [
            (Duration::from_secs(15), 15),
            (Duration::from_millis(1500), 2),
            (Duration::from_millis(200), 1),
            (Duration::ZERO, 1),
            (Duration::from_secs(u64::MAX), i32::MAX),
        ] {
            assert_eq!(whole_seconds(d), want, "{d:?}");
        }
    }

    #[test]
    fn default_identities_differ_and_end_in_a_random_suffix() {
        let (a, b) = (default_identity(), default_identity());
        assert_ne!(a, b);
        assert!(a.len() > 9 && a.as_bytes()[a.len() - 9] == b'_', "{a}");
    }
}
