//! The abuse guard against SMS pumping: sliding-window limits on sends per
//! phone number (within an org) and per org. State is in memory, per
//! process; time is passed in, so the rules are tested without a clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `max` sends in any `window`; `max == 0` turns the limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

/// Which limit refused a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Phone,
    Org,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Phone => "phone",
            Self::Org => "org",
        }
    }
}

/// A refused send and when the same send would be admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub scope: Scope,
    pub limit: Limit,
    pub retry_after: Duration,
}

impl Refusal {
    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let ms = self.retry_after.as_millis() as u64;
        ms.div_ceil(1000).max(1)
    }
}

/// Recent sends of one key, oldest first; never longer than the limit.
#[derive(Default)]
struct Window(VecDeque<Instant>);

impl Window {
    fn expire(&mut self, now: Instant, limit: Limit) {
        while self
            .0
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= limit.window)
        {
            self.0.pop_front();
        }
    }

    /// `None` when one more send fits, else how long until one does.
    fn wait(&mut self, now: Instant, limit: Limit) -> Option<Duration> {
        self.expire(now, limit);
        if (self.0.len() as u64) < u64::from(limit.max) {
            return None;
        }
        let oldest = *self.0.front()?;
        Some(
            limit
                .window
                .saturating_sub(now.saturating_duration_since(oldest)),
        )
    }

    fn record(&mut self, now: Instant, limit: Limit) {
        self.0.push_back(now);
        while self.0.len() > limit.max as usize {
            self.0.pop_front();
        }
    }
}

#[derive(Default)]
struct State {
    phones: HashMap<(String, String), Window>,
    orgs: HashMap<String, Window>,
    last_sweep: Option<Instant>,
}

/// The limits and their counters.
pub struct AbuseGuard {
    phone: Limit,
    org: Limit,
    state: Mutex<State>,
}

impl AbuseGuard {
    pub fn new(phone: Limit, org: Limit) -> Self {
        Self {
            phone,
            org,
            state: Mutex::new(State::default()),
        }
    }

    /// Admits one send to `phone` for `org` and counts it, or says which
    /// limit refuses it. A refused send is not counted.
    pub fn admit(&self, org: &str, phone: &str, now: Instant) -> Result<(), Refusal> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.sweep(&mut state, now);
        let key = (org.to_string(), phone.to_string());
        if self.phone.max > 0
            && let Some(window) = state.phones.get_mut(&key)
            && let Some(wait) = window.wait(now, self.phone)
        {
            return Err(Refusal {
                scope: Scope::Phone,
                limit: self.phone,
                retry_after: wait,
            });
        }
        if self.org.max > 0
            && let Some(window) = state.orgs.get_mut(org)
            && let Some(wait) = window.wait(now, self.org)
        {
            return Err(Refusal {
                scope: Scope::Org,
                limit: self.org,
                retry_after: wait,
            });
        }
        if self.phone.max > 0 {
            state.phones.entry(key).or_default().record(now, self.phone);
        }
        if self.org.max > 0 {
            state
                .orgs
                .entry(org.to_string())
                .or_default()
                .record(now, self.org);
        }
        Ok(())
    }

    /// Forgets keys with no send inside their window, at most once a
    /// minute, so memory follows recent traffic only.
    fn sweep(&self, state: &mut State, now: Instant) {
        if state
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(60))
        {
            return;
        }
        state.last_sweep = Some(now);
        let (phone, org) = (self.phone, self.org);
        state.phones.retain(|_, w| {
            w.expire(now, phone);
            !w.0.is_empty()
        });
        state.orgs.retain(|_, w| {
            w.expire(now, org);
            !w.0.is_empty()
        });
    }

    /// Keys held in memory (phones, orgs), for tests.
    pub fn tracked(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.phones.len(), state.orgs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: u32, secs: u64) -> Limit {
        Limit {
            max,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn phone_limit_slides() {
        let guard = AbuseGuard::new(limit(2, 600), limit(0, 1));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(guard.admit("acme", "+1555", t0).is_ok());
        assert!(guard.admit("acme", "+1555", t0 + s(100)).is_ok());
        let refused = guard.admit("acme", "+1555", t0 + s(200)).unwrap_err();
        assert_eq!(refused.scope, Scope::Phone);
        assert_eq!(refused.retry_after, s(400));
        assert_eq!(refused.retry_after_secs(), 400);
        // Other numbers and other orgs have their own windows.
        assert!(guard.admit("acme", "+1666", t0 + s(200)).is_ok());
        assert!(guard.admit("globex", "+1555", t0 + s(200)).is_ok());
        // The first send leaves the window at t0+600.
        assert!(guard.admit("acme", "+1555", t0 + s(599)).is_err());
        assert!(guard.admit("acme", "+1555", t0 + s(600)).is_ok());
        assert!(guard.admit("acme", "+1555", t0 + s(650)).is_err());
    }

    #[test]
    fn org_limit_counts_every_number_and_refusals_do_not_count() {
        let guard = AbuseGuard::new(limit(5, 600), limit(3, 3600));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(guard.admit("acme", &format!("+1{i}"), t0).is_ok());
        }
        let refused = guard.admit("acme", "+19", t0).unwrap_err();
        assert_eq!(refused.scope, Scope::Org);
        assert_eq!(refused.retry_after_secs(), 3600);
        assert!(guard.admit("globex", "+19", t0).is_ok());
        // +19 was refused, not counted: after the org window it may send 5.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(guard.admit("acme", "+19", later).is_ok());
        }
    }

    #[test]
    fn sub_second_waits_round_up_and_memory_is_swept() {
        let r = Refusal {
            scope: Scope::Phone,
            limit: limit(1, 1),
            retry_after: Duration::from_millis(1),
        };
        assert_eq!(r.retry_after_secs(), 1);
        let guard = AbuseGuard::new(limit(1, 10), limit(10, 10));
        let t0 = Instant::now();
        for i in 0..5 {
            guard.admit("acme", &format!("+1{i}"), t0).unwrap();
        }
        assert_eq!(guard.tracked(), (5, 1));
        guard
            .admit("acme", "+2", t0 + Duration::from_secs(61))
            .unwrap();
        assert_eq!(guard.tracked(), (1, 1));
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let guard = AbuseGuard::new(limit(0, 600), limit(0, 600));
        let t0 = Instant::now();
        for _ in 0..1000 {
            guard.admit("acme", "+1555", t0).unwrap();
        }
        assert_eq!(guard.tracked(), (0, 0));
    }
}
