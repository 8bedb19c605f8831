//! The retry rule, as pure functions: how long to wait before the next
//! attempt, and what to do with a message after an attempt. No I/O, no
//! clock: callers pass the time and the random jitter in.

use std::time::Duration;

use crate::index::ProviderConfig;

/// How failed deliveries are retried (an `EmailProvider`'s `spec.retry`, or
/// the default provider's flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub multiplier: u32,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn of_provider(p: &ProviderConfig) -> Self {
        Self {
            max_attempts: p.max_attempts.max(1),
            initial_delay: Duration::from_millis(p.initial_delay_millis),
            multiplier: p.multiplier.max(1),
            max_delay: Duration::from_millis(p.max_delay_millis),
        }
    }

    /// The wait after the `attempt`-th attempt (1-based) failed transiently,
    /// before jitter: `initialDelay × multiplier^(attempt−1)`, capped at
    /// `maxDelay`.
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        let factor = u64::from(self.multiplier)
            .checked_pow(exponent)
            .unwrap_or(u64::MAX);
        let millis = u64::try_from(self.initial_delay.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(factor);
        Duration::from_millis(millis).min(self.max_delay)
    }

    /// The wait with jitter: never shorter than the rule says, at most 10%
    /// longer. `unit` is a random number in `[0, 1)`.
    pub fn delay_with_jitter(&self, attempt: u32, unit: f64) -> Duration {
        let nominal = self.nominal_delay(attempt);
        nominal + nominal.mul_f64(unit.clamp(0.0, 1.0) * JITTER)
    }
}

/// The largest jitter, as a share of the nominal delay.
pub const JITTER: f64 = 0.1;

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// The server accepted the message (its reply).
    Delivered(String),
    /// Connection error, timeout or 4xx reply: worth another attempt.
    Transient(String),
    /// A 5xx reply: the server will not take it.
    Permanent(String),
}

/// What becomes of a message after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Sent,
    /// Try again after this long.
    Retry(Duration),
    /// Give up; FAILURE.
    Fail,
}

/// Decides after the `attempt`-th counted attempt (1-based).
pub fn decide(policy: &RetryPolicy, attempt: u32, result: &AttemptResult, unit: f64) -> Decision {
    match result {
        AttemptResult::Delivered(_) => Decision::Sent,
        AttemptResult::Permanent(_) => Decision::Fail,
        AttemptResult::Transient(_) if attempt >= policy.max_attempts => Decision::Fail,
        AttemptResult::Transient(_) => Decision::Retry(policy.delay_with_jitter(attempt, unit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: u32, initial_ms: u64, mult: u32, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: max,
            initial_delay: Duration::from_millis(initial_ms),
            multiplier: mult,
            max_delay: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn nominal_delays_grow_and_are_capped() {
        // The example's spec: 1m, 4m, 16m, then capped at 1h.
        let p = policy(5, 60_000, 4, 3_600_000);
        let minutes: Vec<u64> = (1..=5).map(|a| p.nominal_delay(a).as_secs() / 60).collect();
        assert_eq!(minutes, [1, 4, 16, 60, 60]);
        let cases = [
            (policy(3, 200, 2, 10_000), 1, 200),
            (policy(3, 200, 2, 10_000), 2, 400),
            (policy(3, 200, 2, 10_000), 3, 800),
            (policy(3, 200, 1, 10_000), 9, 200),
            (policy(3, 200, 2, 500), 3, 500),
            (policy(50, 1_000, 100, 3_600_000), 50, 3_600_000),
        ];
        for (p, attempt, millis) in cases {
            assert_eq!(
                p.nominal_delay(attempt),
                Duration::from_millis(millis),
                "{p:?} {attempt}"
            );
        }
    }

    #[test]
    fn jitter_never_shortens_and_adds_at_most_a_tenth() {
        let p = policy(5, 1_000, 2, 60_000);
        assert_eq!(p.delay_with_jitter(2, 0.0), Duration::from_millis(2_000));
        assert_eq!(p.delay_with_jitter(2, 0.5), Duration::from_millis(2_100));
        assert!(p.delay_with_jitter(2, 0.999_999) < Duration::from_millis(2_200));
        assert_eq!(p.delay_with_jitter(2, 7.0), Duration::from_millis(2_200));
    }

    #[test]
    fn decisions() {
        let p = policy(3, 200, 2, 10_000);
        let transient = AttemptResult::Transient("451 4.3.0 try later".into());
        let cases = [
            (1, AttemptResult::Delivered("250 ok".into()), Decision::Sent),
            (1, AttemptResult::Permanent("550 no".into()), Decision::Fail),
            (
                1,
                transient.clone(),
                Decision::Retry(Duration::from_millis(200)),
            ),
            (
                2,
                transient.clone(),
                Decision::Retry(Duration::from_millis(400)),
            ),
            (3, transient.clone(), Decision::Fail),
            (4, transient, Decision::Fail),
        ];
        for (attempt, result, want) in cases {
            assert_eq!(
                decide(&p, attempt, &result, 0.0),
                want,
                "{attempt} {result:?}"
            );
        }
    }
}
