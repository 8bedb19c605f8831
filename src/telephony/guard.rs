//! The abuse guard against SMS pumping: sliding-window limits on sends per
//! phone number (within an org) and per org. One API ([`AbuseGuard`]),
//! two backings:
//!
//! - **in memory** (SQLite, one process): the recent sends of each key in
//!   a map;
//! - **shared** (PostgreSQL, several replicas): the recent sends in the
//!   `telephony_guard_sends` table, checked and recorded in one transaction
//!   under a lock of the org, so that the limits hold for the sum of every
//!   replica (`guard/postgres.rs`). Phone numbers are stored only as keys
//!   from the `--otp-hash-key` hasher.
//!
//! The rule (which limit refuses, and for how long) is [`Limit::wait`],
//! pure and shared by both. Time is passed in (Unix milliseconds, the
//! same on every replica), so the rules are tested without a clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use super::code::CodeHasher;

mod postgres;

/// At most `max` sends in any `window`; `max == 0` turns the limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

/// The newest sends of one key inside its window, at most the limit's
/// `max` of them: how many, and when the oldest of those was (Unix ms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recent {
    pub count: u64,
    pub oldest_millis: Option<i64>,
}

impl Limit {
    fn on(self) -> bool {
        self.max > 0
    }

    fn window_millis(self) -> i64 {
        i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX)
    }

    /// Sends at or before this time (Unix ms) have left the window at `now`.
    fn horizon(self, now_millis: i64) -> i64 {
        now_millis.saturating_sub(self.window_millis())
    }

    /// `None` when one more send fits, else how long until one does.
    pub fn wait(self, recent: Recent, now_millis: i64) -> Option<Duration> {
        if recent.count < u64::from(self.max) {
            return None;
        }
        let oldest = recent.oldest_millis?;
        let age = u64::try_from(now_millis.saturating_sub(oldest)).unwrap_or(0);
        Some(self.window.saturating_sub(Duration::from_millis(age)))
    }
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

/// Errors of the guard.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("over a limit")]
    Refused(Refusal),
    /// The shared backing could not be read or written: the send is
    /// neither admitted nor counted.
    #[error("the abuse guard's store failed: {0}")]
    Store(#[from] sqlx::Error),
}

/// Recent sends of one key (Unix ms), oldest first; never longer than the limit.
#[derive(Default)]
struct Window(VecDeque<i64>);

impl Window {
    fn expire(&mut self, now_millis: i64, limit: Limit) {
        let horizon = limit.horizon(now_millis);
        while self.0.front().is_some_and(|t| *t <= horizon) {
            self.0.pop_front();
        }
    }

    fn recent(&mut self, now_millis: i64, limit: Limit) -> Recent {
        self.expire(now_millis, limit);
        Recent {
            count: self.0.len() as u64,
            oldest_millis: self.0.front().copied(),
        }
    }

    fn record(&mut self, now_millis: i64, limit: Limit) {
        self.0.push_back(now_millis);
        while self.0.len() > limit.max as usize {
            self.0.pop_front();
        }
    }
}

#[derive(Default)]
struct State {
    phones: HashMap<(String, String), Window>,
    orgs: HashMap<String, Window>,
    last_sweep: Option<i64>,
}

enum Backing {
    Memory(Mutex<State>),
    Shared(postgres::SharedWindows),
}

/// The limits and their counters.
pub struct AbuseGuard {
    phone: Limit,
    org: Limit,
    backing: Backing,
}

impl AbuseGuard {
    /// A guard counting in this process's memory.
    pub fn new(phone: Limit, org: Limit) -> Self {
        Self {
            phone,
            org,
            backing: Backing::Memory(Mutex::new(State::default())),
        }
    }

    /// A guard counting in the PostgreSQL database every replica shares;
    /// keys are made with `hasher` (the same `--otp-hash-key` on every
    /// replica, or each would count apart).
    pub fn shared(phone: Limit, org: Limit, pool: sqlx::PgPool, hasher: CodeHasher) -> Self {
        Self {
            phone,
            org,
            backing: Backing::Shared(postgres::SharedWindows::new(pool, hasher)),
        }
    }

    /// The rule: which limit, if any, refuses one more send, given each
    /// active limit's recent sends. The phone is checked first.
    fn check(
        &self,
        phone: Option<Recent>,
        org: Option<Recent>,
        now_millis: i64,
    ) -> Result<(), Refusal> {
        for (scope, limit, recent) in [
            (Scope::Phone, self.phone, phone),
            (Scope::Org, self.org, org),
        ] {
            if let Some(recent) = recent
                && let Some(wait) = limit.wait(recent, now_millis)
            {
                return Err(Refusal {
                    scope,
                    limit,
                    retry_after: wait,
                });
            }
        }
        Ok(())
    }

    /// Admits one send to `phone` for `org` at `now_millis` (Unix ms) and
    /// counts it, or says which limit refuses it. A refused send is not
    /// counted.
    pub async fn admit(&self, org: &str, phone: &str, now_millis: i64) -> Result<(), GuardError> {
        if !self.phone.on() && !self.org.on() {
            return Ok(());
        }
        match &self.backing {
            Backing::Memory(state) => self
                .admit_in_memory(state, org, phone, now_millis)
                .map_err(GuardError::Refused),
            Backing::Shared(windows) => windows.admit(self, org, phone, now_millis).await,
        }
    }

    fn admit_in_memory(
        &self,
        state: &Mutex<State>,
        org: &str,
        phone: &str,
        now: i64,
    ) -> Result<(), Refusal> {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        self.sweep(&mut state, now);
        let key = (org.to_string(), phone.to_string());
        let (phone_limit, org_limit) = (self.phone, self.org);
        let phone_recent = phone_limit.on().then(|| {
            state
                .phones
                .get_mut(&key)
                .map(|w| w.recent(now, phone_limit))
                .unwrap_or_default()
        });
        let org_recent = org_limit.on().then(|| {
            state
                .orgs
                .get_mut(org)
                .map(|w| w.recent(now, org_limit))
                .unwrap_or_default()
        });
        self.check(phone_recent, org_recent, now)?;
        if phone_limit.on() {
            state
                .phones
                .entry(key)
                .or_default()
                .record(now, phone_limit);
        }
        if org_limit.on() {
            state
                .orgs
                .entry(org.to_string())
                .or_default()
                .record(now, org_limit);
        }
        Ok(())
    }

    /// Forgets keys with no send inside their window, at most once a
    /// minute, so memory follows recent traffic only.
    fn sweep(&self, state: &mut State, now: i64) {
        if state
            .last_sweep
            .is_some_and(|t| now.saturating_sub(t) < 60_000)
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

    /// Deletes the shared backing's sends that have left every window
    /// (the in-memory one sweeps itself); rows deleted.
    pub async fn purge(&self, now_millis: i64) -> Result<u64, GuardError> {
        match &self.backing {
            Backing::Memory(_) => Ok(0),
            Backing::Shared(windows) => {
                let longest = if self.phone.window > self.org.window {
                    self.phone
                } else {
                    self.org
                };
                Ok(windows.purge(longest.horizon(now_millis)).await?)
            }
        }
    }

    /// Keys held in memory (phones, orgs), for tests.
    pub fn tracked(&self) -> (usize, usize) {
        match &self.backing {
            Backing::Memory(state) => {
                let state = state.lock().unwrap_or_else(|e| e.into_inner());
                (state.phones.len(), state.orgs.len())
            }
            Backing::Shared(_) => (0, 0),
        }
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

    const T0: i64 = 1_700_000_000_000;

    fn s(secs: i64) -> i64 {
        T0 + secs * 1000
    }

    fn refused(r: Result<(), GuardError>) -> Refusal {
        match r {
            Err(GuardError::Refused(refusal)) => refusal,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// The sliding phone limit, against either backing.
    async fn phone_limit_slides(guard: &AbuseGuard) {
        assert!(guard.admit("acme", "+1555", s(0)).await.is_ok());
        assert!(guard.admit("acme", "+1555", s(100)).await.is_ok());
        let r = refused(guard.admit("acme", "+1555", s(200)).await);
        assert_eq!(r.scope, Scope::Phone);
        assert_eq!(r.retry_after, Duration::from_secs(400));
        assert_eq!(r.retry_after_secs(), 400);
        // Other numbers and other orgs have their own windows.
        assert!(guard.admit("acme", "+1666", s(200)).await.is_ok());
        assert!(guard.admit("globex", "+1555", s(200)).await.is_ok());
        // The first send leaves the window at t0+600.
        assert!(guard.admit("acme", "+1555", s(599)).await.is_err());
        assert!(guard.admit("acme", "+1555", s(600)).await.is_ok());
        assert!(guard.admit("acme", "+1555", s(650)).await.is_err());
    }

    /// The org limit counts every number; refusals do not count.
    async fn org_limit_counts_every_number(guard: &AbuseGuard) {
        for i in 0..3 {
            assert!(guard.admit("acme", &format!("+1{i}"), s(0)).await.is_ok());
        }
        let r = refused(guard.admit("acme", "+19", s(0)).await);
        assert_eq!(r.scope, Scope::Org);
        assert_eq!(r.retry_after_secs(), 3600);
        assert!(guard.admit("globex", "+19", s(0)).await.is_ok());
        // +19 was refused, not counted: after the org window it may send 5.
        for _ in 0..3 {
            assert!(guard.admit("acme", "+19", s(3600)).await.is_ok());
        }
    }

    #[tokio::test]
    async fn phone_limit_slides_in_memory() {
        phone_limit_slides(&AbuseGuard::new(limit(2, 600), limit(0, 1))).await;
    }

    #[tokio::test]
    async fn org_limit_counts_every_number_in_memory() {
        org_limit_counts_every_number(&AbuseGuard::new(limit(5, 600), limit(3, 3600))).await;
    }

    fn shared(pool: sqlx::PgPool, phone: Limit, org: Limit) -> AbuseGuard {
        AbuseGuard::shared(phone, org, pool, CodeHasher::new(b"a shared key"))
    }

    #[tokio::test]
    async fn phone_limit_slides_on_postgres() {
        let pool = crate::telephony::testing::pg_pool().await;
        phone_limit_slides(&shared(pool, limit(2, 600), limit(0, 1))).await;
    }

    #[tokio::test]
    async fn org_limit_counts_every_number_on_postgres() {
        let pool = crate::telephony::testing::pg_pool().await;
        org_limit_counts_every_number(&shared(pool, limit(5, 600), limit(3, 3600))).await;
    }

    #[tokio::test]
    async fn limits_hold_for_the_sum_of_replicas_and_old_sends_are_purged() {
        let a_pool = crate::telephony::testing::pg_pool().await;
        let b_pool = crate::telephony::testing::replica(&a_pool);
        let (phone, org) = (limit(5, 600), limit(0, 1));
        let a = shared(a_pool.clone(), phone, org);
        let b = shared(b_pool, phone, org);
        // Ten sends at once to one number, half through each replica.
        let sends = (0..10).map(|i| {
            let guard = if i % 2 == 0 { &a } else { &b };
            guard.admit("acme", "+14155550123", s(0))
        });
        let results = futures::future::join_all(sends).await;
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(admitted, 5, "{results:?}");
        assert_eq!(
            refused(b.admit("acme", "+14155550123", s(1)).await).scope,
            Scope::Phone
        );
        // No number in clear in the table.
        let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key FROM telephony_guard_sends")
            .fetch_all(&a_pool)
            .await
            .unwrap();
        assert_eq!(stored.len(), 5);
        assert!(
            stored
                .iter()
                .all(|k| !String::from_utf8_lossy(k).contains("4155550123"))
        );
        assert_eq!(a.purge(s(599)).await.unwrap(), 0);
        assert_eq!(a.purge(s(600)).await.unwrap(), 5);
        assert!(b.admit("acme", "+14155550123", s(600)).await.is_ok());
    }

    #[test]
    fn sub_second_waits_round_up() {
        let r = Refusal {
            scope: Scope::Phone,
            limit: limit(1, 1),
            retry_after: Duration::from_millis(1),
        };
        assert_eq!(r.retry_after_secs(), 1);
    }

    #[tokio::test]
    async fn memory_is_swept() {
        let guard = AbuseGuard::new(limit(1, 10), limit(10, 10));
        for i in 0..5 {
            guard.admit("acme", &format!("+1{i}"), s(0)).await.unwrap();
        }
        assert_eq!(guard.tracked(), (5, 1));
        guard.admit("acme", "+2", s(61)).await.unwrap();
        assert_eq!(guard.tracked(), (1, 1));
    }

    #[tokio::test]
    async fn zero_turns_a_limit_off() {
        let guard = AbuseGuard::new(limit(0, 600), limit(0, 600));
        for _ in 0..1000 {
            guard.admit("acme", "+1555", s(0)).await.unwrap();
        }
        assert_eq!(guard.tracked(), (0, 0));
    }

    #[tokio::test]
    async fn an_unreachable_shared_store_neither_admits_nor_refuses() {
        let guard = shared(
            crate::telephony::testing::unreachable(),
            limit(5, 600),
            limit(0, 1),
        );
        let Err(GuardError::Store(e)) = guard.admit("acme", "+1555", s(0)).await else {
            panic!("admitted without a store");
        };
        assert!(matches!(
            crate::telephony::TelephonyError::from_store(&e),
            crate::telephony::TelephonyError::StoreUnavailable(_)
        ));
    }
}
