//! Per-hook execution numbers: daily buckets (UTC days) held in memory and
//! persisted through the [`super::store_writer::StoreWriter`], and the rolling 30-day
//! window that becomes a hook's `status.metrics`. Pure apart from the lock.
//! On a shared store the memory is replaced by the stored totals every few
//! seconds ([`HookStats::replace`]); between reloads this process's own
//! executions are added to it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{Days, NaiveDate};

use crate::resources::{FailureRecord, HookMetrics};

/// Length of the rolling window, in days (today included).
pub const WINDOW_DAYS: u32 = 30;

/// One day of one hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DayBucket {
    pub executions: u64,
    pub successes: u64,
    pub failures: u64,
    /// Sum of the durations of successful executions.
    pub success_millis: u64,
}

/// One execution of one hook, as counted and stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionRecord {
    pub org: String,
    pub hook: String,
    pub day: NaiveDate,
    /// RFC 3339.
    pub time: String,
    pub success: bool,
    pub millis: u64,
    /// Why it failed; `None` on success.
    pub failure_reason: Option<String>,
}

/// Everything known about one hook's executions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HookNumbers {
    pub days: BTreeMap<NaiveDate, DayBucket>,
    pub last_execution: Option<String>,
    pub last_failure: Option<FailureRecord>,
}

fn window_start(today: NaiveDate) -> NaiveDate {
    today
        .checked_sub_days(Days::new(u64::from(WINDOW_DAYS - 1)))
        .unwrap_or(NaiveDate::MIN)
}

impl HookNumbers {
    pub fn record(&mut self, e: &ExecutionRecord) {
        let bucket = self.days.entry(e.day).or_default();
        bucket.executions += 1;
        if e.success {
            bucket.successes += 1;
            bucket.success_millis += e.millis;
        } else {
            bucket.failures += 1;
            self.last_failure = Some(FailureRecord {
                time: e.time.clone(),
                reason: e.failure_reason.clone().unwrap_or_default(),
            });
        }
        if self
            .last_execution
            .as_deref()
            .is_none_or(|t| t <= e.time.as_str())
        {
            self.last_execution = Some(e.time.clone());
        }
        let start = window_start(e.day);
        self.days.retain(|d, _| *d >= start);
    }

    /// The window ending `today`.
    pub fn window(&self, today: NaiveDate) -> HookMetrics {
        let mut sum = DayBucket::default();
        for (_, b) in self.days.range(window_start(today)..=today) {
            sum.executions += b.executions;
            sum.successes += b.successes;
            sum.failures += b.failures;
            sum.success_millis += b.success_millis;
        }
        let average = (sum.success_millis + sum.successes / 2)
            .checked_div(sum.successes)
            .unwrap_or(0);
        HookMetrics {
            window_days: WINDOW_DAYS,
            executions: sum.executions,
            successes: sum.successes,
            failures: sum.failures,
            average_success_millis: average,
            last_execution_time: self.last_execution.clone(),
            last_failure: self.last_failure.clone(),
        }
    }
}

/// (org, hook).
pub type HookId = (String, String);

/// The numbers of every hook that has run.
#[derive(Default)]
pub struct HookStats {
    hooks: Mutex<HashMap<HookId, HookNumbers>>,
}

impl HookStats {
    /// A hook_stats starting from stored numbers.
    pub fn from_stored(stored: HashMap<HookId, HookNumbers>) -> Self {
        Self {
            hooks: Mutex::new(stored),
        }
    }

    /// Replaces every hook's numbers with `stored` (on a shared store,
    /// the totals of every replica, reloaded periodically).
    pub fn replace(&self, stored: HashMap<HookId, HookNumbers>) {
        *self.hooks.lock().unwrap_or_else(|p| p.into_inner()) = stored;
    }

    pub fn record(&self, e: &ExecutionRecord) {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        match hooks.get_mut(&(e.org.clone(), e.hook.clone())) {
            Some(n) => n.record(e),
            None => {
                let mut n = HookNumbers::default();
                n.record(e);
                hooks.insert((e.org.clone(), e.hook.clone()), n);
            }
        }
    }

    /// The window of one hook; zeros for a hook that never ran.
    pub fn metrics(&self, org: &str, hook: &str, today: NaiveDate) -> HookMetrics {
        let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        hooks
            .get(&(org.to_string(), hook.to_string()))
            .map(|n| n.window(today))
            .unwrap_or_else(|| HookNumbers::default().window(today))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: &str) -> NaiveDate {
        d.parse().unwrap()
    }

    fn exec(d: &str, success: bool, millis: u64) -> ExecutionRecord {
        ExecutionRecord {
            org: "acme".into(),
            hook: "primary".into(),
            day: day(d),
            time: format!("{d}T10:00:00Z"),
            success,
            millis,
            failure_reason: (!success).then(|| "timeout: slow".into()),
        }
    }

    #[test]
    fn window_sums_thirty_days_and_averages_successes() {
        let hook_stats = HookStats::default();
        hook_stats.record(&exec("2026-01-01", true, 100));
        hook_stats.record(&exec("2026-01-15", true, 201));
        hook_stats.record(&exec("2026-01-30", false, 3000));
        let m = hook_stats.metrics("acme", "primary", day("2026-01-30"));
        assert_eq!(
            (
                m.window_days,
                m.executions,
                m.successes,
                m.failures,
                m.average_success_millis
            ),
            (30, 3, 2, 1, 151)
        );
        assert_eq!(
            m.last_execution_time.as_deref(),
            Some("2026-01-30T10:00:00Z")
        );
        assert_eq!(m.last_failure.unwrap().reason, "timeout: slow");
        // A day later the first day has left the window.
        let m = hook_stats.metrics("acme", "primary", day("2026-01-31"));
        assert_eq!(
            (m.executions, m.successes, m.average_success_millis),
            (2, 1, 201)
        );
        // Far later: zeros, but the last times stay.
        let m = hook_stats.metrics("acme", "primary", day("2026-06-01"));
        assert_eq!(m.executions, 0);
        assert!(m.last_execution_time.is_some());
    }

    #[test]
    fn unknown_hooks_have_zeros_and_old_days_are_dropped() {
        let hook_stats = HookStats::default();
        let m = hook_stats.metrics("acme", "none", day("2026-01-01"));
        assert_eq!(
            m,
            HookMetrics {
                window_days: 30,
                ..Default::default()
            }
        );
        let mut n = HookNumbers::default();
        n.record(&exec("2026-01-01", true, 1));
        n.record(&exec("2026-03-01", true, 1));
        assert_eq!(n.days.len(), 1);
    }
}
