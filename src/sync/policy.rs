//! When to refresh a credential, how long to wait after a failure, and whether the last
//! good credential may stay in the Secrets.
//!
//! Pure: the clock and the random numbers come in as arguments, so every rule is a table
//! test. Wall-clock [`Timestamp`]s are used because credential expiry comes from
//! services as wall-clock time; the caller turns the returned delay into a timer.
//!
//! The rules (PROTOCOLS.md): an IAM token lives up to 12 hours and Yandex recommends a new
//! one about every hour, so a credential is refreshed when its age reaches the configured
//! refresh interval or when half of its lifetime is gone, whichever comes first, each
//! replica and registry spread by ±10 % jitter. A failed refresh is retried with
//! exponential backoff and full jitter, and never replaces a Secret that still works.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Largest jitter fraction either way (±10 %).
pub const MAX_JITTER: f64 = 0.1;
/// First retry delay after a failure.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Largest retry delay after repeated failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A credential this close to its expiry no longer counts as usable.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(60);
/// Shortest delay [`next_refresh`] returns, so that a credential that is already due
/// (clock skew, a service handing out a nearly expired token) cannot spin the loop.
pub const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);

/// Delay from `now` until the credential obtained at `issued_at` should be refreshed.
///
/// Due at `issued_at + min(refresh_interval, lifetime / 2)` where
/// `lifetime = expires_at - issued_at`; a static credential (`expires_at` = `None`) is due
/// at `issued_at + refresh_interval` (to pick up rotated files). The offset from
/// `issued_at` is scaled by `1 + jitter`, `jitter` in `[-0.1, 0.1]` (clamped; NaN counts
/// as 0), then the result is at least [`MIN_REFRESH_DELAY`].
pub fn next_refresh(
    now: Timestamp,
    issued_at: Timestamp,
    expires_at: Option<Timestamp>,
    refresh_interval: Duration,
    jitter: f64,
) -> Duration {
    let interval = SignedDuration::try_from(refresh_interval).unwrap_or(SignedDuration::MAX);
    let offset = match expires_at {
        Some(expires_at) => {
            let half_life = expires_at.duration_since(issued_at) / 2;
            interval.min(half_life.max(SignedDuration::ZERO))
        }
        None => interval,
    };
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(-MAX_JITTER, MAX_JITTER)
    };
    let offset = SignedDuration::try_from_secs_f64(offset.as_secs_f64() * (1.0 + jitter))
        .unwrap_or(SignedDuration::MAX);
    // issued_at + offset - now, without overflowing on extreme timestamps.
    let since_issue = now.duration_since(issued_at);
    let delay = offset
        .checked_sub(since_issue)
        .unwrap_or(SignedDuration::MAX);
    Duration::try_from(delay)
        .unwrap_or(Duration::ZERO)
        .max(MIN_REFRESH_DELAY)
}

/// Delay before retry number `attempt` (0 for the first retry after a success) after a
/// failed refresh: uniform in `[1 s, min(5 min, 1 s * 2^attempt)]` ("full jitter" above
/// the floor). `random` is a uniform sample from `[0, 1)`; out-of-range values are clamped.
pub fn backoff(attempt: u32, random: f64) -> Duration {
    let min = MIN_BACKOFF.as_secs_f64();
    let cap = if attempt >= 63 {
        MAX_BACKOFF.as_secs_f64()
    } else {
        (min * (1u64 << attempt) as f64).min(MAX_BACKOFF.as_secs_f64())
    };
    let random = if random.is_nan() {
        0.0
    } else {
        random.clamp(0.0, 1.0)
    };
    Duration::from_secs_f64(min + random * (cap - min))
}

/// Whether a credential that expires at `expires_at` still works at `now` with
/// [`SAFETY_MARGIN`] to spare. Static credentials (`None`) always do. A Secret holding a
/// usable credential must not be replaced after a failed refresh.
pub fn is_usable(now: Timestamp, expires_at: Option<Timestamp>) -> bool {
    match expires_at {
        None => true,
        Some(expires_at) => {
            let margin = SignedDuration::try_from(SAFETY_MARGIN).unwrap_or(SignedDuration::ZERO);
            expires_at.duration_since(now) > margin
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;
    const HOUR: u64 = 3600;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_750_000_000 + secs).unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn next_refresh_table() {
        // (name, now, issued_at, expires_at, refresh_interval, jitter, expected delay)
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, i64, i64, Option<i64>, u64, f64, Duration)] = &[
            (
                "twelve_hour_token_fresh_refreshes_at_the_interval",
                0,
                0,
                Some(12 * 3600),
                HOUR,
                0.0,
                secs(HOUR),
            ),
            (
                "twelve_hour_token_half_an_hour_old_waits_the_rest_of_the_interval",
                1800,
                0,
                Some(12 * 3600),
                HOUR,
                0.0,
                secs(1800),
            ),
            (
                "one_hour_token_refreshes_at_half_life_before_the_interval",
                0,
                0,
                Some(3600),
                HOUR,
                0.0,
                secs(1800),
            ),
            (
                "short_interval_wins_over_half_life",
                0,
                0,
                Some(12 * 3600),
                10 * MIN,
                0.0,
                secs(600),
            ),
            (
                "half_life_equal_to_interval_gives_either",
                0,
                0,
                Some(2 * 3600),
                HOUR,
                0.0,
                secs(HOUR),
            ),
            (
                "static_credential_is_rechecked_at_the_interval",
                0,
                0,
                None,
                HOUR,
                0.0,
                secs(HOUR),
            ),
            (
                "static_credential_partly_aged_waits_the_remainder",
                2400,
                0,
                None,
                HOUR,
                0.0,
                secs(1200),
            ),
            (
                "positive_jitter_stretches_by_ten_percent",
                0,
                0,
                Some(12 * 3600),
                HOUR,
                0.1,
                secs(3960),
            ),
            (
                "negative_jitter_shrinks_by_ten_percent",
                0,
                0,
                Some(12 * 3600),
                HOUR,
                -0.1,
                secs(3240),
            ),
            (
                "jitter_applies_to_half_life_too",
                0,
                0,
                Some(3600),
                HOUR,
                -0.1,
                secs(1620),
            ),
            (
                "jitter_beyond_ten_percent_is_clamped",
                0,
                0,
                None,
                HOUR,
                5.0,
                secs(3960),
            ),
            (
                "negative_jitter_beyond_ten_percent_is_clamped",
                0,
                0,
                None,
                HOUR,
                -0.9,
                secs(3240),
            ),
            (
                "nan_jitter_counts_as_none",
                0,
                0,
                None,
                HOUR,
                f64::NAN,
                secs(HOUR),
            ),
            (
                "overdue_credential_refreshes_after_the_minimum_delay",
                2 * 3600,
                0,
                Some(12 * 3600),
                HOUR,
                0.0,
                MIN_REFRESH_DELAY,
            ),
            (
                "credential_past_half_life_refreshes_after_the_minimum_delay",
                1900,
                0,
                Some(3600),
                10 * HOUR,
                0.0,
                MIN_REFRESH_DELAY,
            ),
            (
                "expired_credential_refreshes_after_the_minimum_delay",
                5000,
                0,
                Some(3600),
                HOUR,
                0.0,
                MIN_REFRESH_DELAY,
            ),
            (
                "expiry_before_issue_refreshes_after_the_minimum_delay",
                0,
                0,
                Some(-10),
                HOUR,
                0.0,
                MIN_REFRESH_DELAY,
            ),
            (
                "clock_behind_issue_time_adds_the_difference",
                -100,
                0,
                None,
                HOUR,
                0.0,
                secs(HOUR + 100),
            ),
            (
                "two_minute_token_refreshes_after_one_minute",
                0,
                0,
                Some(120),
                HOUR,
                0.0,
                secs(60),
            ),
            (
                "metadata_token_with_little_left_refreshes_at_its_half_life",
                10,
                0,
                Some(300),
                HOUR,
                0.0,
                secs(140),
            ),
        ];
        for (name, now, issued, expires, interval, jitter, want) in cases {
            let got = next_refresh(
                t(*now),
                t(*issued),
                expires.map(t),
                secs(*interval),
                *jitter,
            );
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn next_refresh_never_ends_after_the_safety_deadline_of_long_lived_tokens() {
        // For any token living more than 2 * SAFETY_MARGIN / 0.9, the latest refresh
        // (half-life, +10 %) leaves at least the margin.
        for lifetime in [300i64, 3600, 12 * 3600, 7 * 24 * 3600] {
            for jitter in [-0.1, 0.0, 0.1] {
                let delay = next_refresh(t(0), t(0), Some(t(lifetime)), secs(100 * HOUR), jitter);
                let at = t(0) + SignedDuration::try_from(delay).unwrap();
                assert!(is_usable(at, Some(t(lifetime))), "{lifetime} {jitter}");
            }
        }
    }

    #[test]
    fn next_refresh_survives_extreme_inputs() {
        let huge = Duration::from_secs(u64::MAX);
        assert!(next_refresh(Timestamp::MIN, Timestamp::MAX, None, huge, 0.1) >= MIN_REFRESH_DELAY);
        assert_eq!(
            next_refresh(
                Timestamp::MAX,
                Timestamp::MIN,
                Some(Timestamp::MAX),
                huge,
                0.1
            ),
            MIN_REFRESH_DELAY
        );
        assert_eq!(
            next_refresh(t(0), t(0), None, Duration::ZERO, 0.0),
            MIN_REFRESH_DELAY
        );
    }

    #[test]
    fn backoff_table() {
        // (name, attempt, random, expected)
        let cases: &[(&str, u32, f64, Duration)] = &[
            ("first_retry_is_one_second", 0, 0.0, secs(1)),
            ("first_retry_ignores_random", 0, 0.99, secs(1)),
            ("second_retry_low_end_is_the_floor", 1, 0.0, secs(1)),
            ("second_retry_half_way", 1, 0.5, Duration::from_millis(1500)),
            ("doubling_caps_grow_low", 3, 0.0, secs(1)),
            ("doubling_caps_grow_high", 3, 1.0, secs(8)),
            ("eighth_retry_spans_to_256_s", 8, 1.0, secs(256)),
            ("ninth_retry_is_capped_at_five_minutes", 9, 1.0, secs(300)),
            ("huge_attempt_stays_capped", 1000, 1.0, secs(300)),
            (
                "attempt_63_does_not_overflow",
                63,
                0.5,
                Duration::from_millis(150_500),
            ),
            ("attempt_62_does_not_overflow", 62, 1.0, secs(300)),
            ("random_above_one_is_clamped", 4, 7.0, secs(16)),
            ("negative_random_is_clamped", 4, -1.0, secs(1)),
            ("nan_random_is_the_floor", 4, f64::NAN, secs(1)),
        ];
        for (name, attempt, random, want) in cases {
            assert_eq!(backoff(*attempt, *random), *want, "{name}");
        }
    }

    #[test]
    fn backoff_stays_within_bounds_and_grows_with_attempts() {
        let mut prev_cap = Duration::ZERO;
        for attempt in 0..40 {
            let cap = backoff(attempt, 1.0);
            assert!(cap >= prev_cap, "{attempt}");
            prev_cap = cap;
            for i in 0..20 {
                let d = backoff(attempt, f64::from(i) / 20.0);
                assert!((MIN_BACKOFF..=MAX_BACKOFF).contains(&d), "{attempt} {d:?}");
            }
        }
    }

    #[test]
    fn is_usable_table() {
        // (name, now, expires_at, usable)
        let cases: &[(&str, i64, Option<i64>, bool)] = &[
            ("static_credential_is_always_usable", 0, None, true),
            ("fresh_token_is_usable", 0, Some(12 * 3600), true),
            ("token_with_two_minutes_left_is_usable", 0, Some(120), true),
            ("token_just_past_the_margin_is_usable", 0, Some(61), true),
            ("token_exactly_at_the_margin_is_not", 0, Some(60), false),
            ("token_inside_the_margin_is_not", 0, Some(30), false),
            ("expired_token_is_not", 100, Some(50), false),
            ("token_expiring_now_is_not", 50, Some(50), false),
        ];
        for (name, now, expires, want) in cases {
            assert_eq!(is_usable(t(*now), expires.map(t)), *want, "{name}");
        }
    }
}
