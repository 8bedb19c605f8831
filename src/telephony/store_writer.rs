//! The one writer of the telephony tables (and of its entries in the org's
//! system log): issued passcodes, verification attempts, daily execution
//! buckets. Requests queue on a channel; one task commits whatever has
//! queued in a single transaction (group commit, on the store's loop in
//! [`crate::store::group_commit`]), so the synchronous disk flush of SQLite
//! is paid once per batch, not once per send, and never on the send's own
//! path. Because one task applies every change in order, a
//! verification always sees the passcode issued before it, and two
//! verifications of the same code cannot both succeed.

use std::collections::HashMap;
use std::time::Duration;

use chrono::NaiveDate;
use sqlx::sqlite::SqlitePool;
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::oneshot;

use super::code::{Decision, OtpState, StoredOtp, decide};
use super::hook_stats::{ExecutionRecord, HookId, HookNumbers};
use crate::resources::FailureRecord;
use crate::store::group_commit::{self, BatchWriter, Submitter};
use crate::store::{AppendLog, LogEntry};

/// Most requests committed in one transaction. Large, so that a slow disk
/// flush (tens of milliseconds when the disk is busy) still leaves room for
/// tens of thousands of requests per second.
const MAX_BATCH: usize = 8192;

/// Requests waiting for the writer; when full, senders wait (a disk that
/// cannot keep up slows sends down rather than growing memory).
const QUEUE: usize = 64 * 1024;

/// Errors of the store writer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreWriterError {
    #[error("the telephony store failed: {0}")]
    Sql(String),
    #[error("the telephony store is shut down")]
    Closed,
}

impl From<sqlx::Error> for StoreWriterError {
    fn from(e: sqlx::Error) -> Self {
        Self::Sql(e.to_string())
    }
}

/// A passcode that reached the user: only its keyed hash is kept.
#[derive(Clone, Debug)]
pub struct IssuedOtp {
    pub id: String,
    pub org: String,
    pub hook: String,
    pub code_hash: Vec<u8>,
    pub created_at_millis: i64,
    pub expires_at_millis: i64,
    pub max_attempts: u32,
}

/// The constant-time comparison of a candidate code with a stored hash.
pub type Matcher = Box<dyn FnOnce(&[u8]) -> bool + Send>;

enum Op {
    Issue(IssuedOtp),
    Execution(ExecutionRecord),
    Log(LogEntry),
    Verify {
        id: String,
        org: String,
        now_millis: i64,
        matcher: Matcher,
        reply: oneshot::Sender<Result<Option<Decision>, StoreWriterError>>,
    },
    Purge {
        otp_before_millis: i64,
        days_before: NaiveDate,
    },
    Barrier(oneshot::Sender<()>),
}

/// The handle to the writer task.
#[derive(Clone)]
pub struct StoreWriter {
    ops: Submitter<Op>,
}

impl StoreWriter {
    /// Starts the writer on `pool`; `on_error` is called for each failed batch.
    pub fn start(pool: SqlitePool, on_error: impl Fn(&StoreWriterError) + Send + 'static) -> Self {
        let (ops, pending) = group_commit::channel(QUEUE);
        tokio::spawn(pending.run(MAX_BATCH, LedgerWriter { pool, on_error }));
        Self { ops }
    }

    async fn push(&self, op: Op) -> Result<(), StoreWriterError> {
        self.ops
            .send(op)
            .await
            .map_err(|_| StoreWriterError::Closed)
    }

    pub async fn issue(&self, otp: IssuedOtp) -> Result<(), StoreWriterError> {
        self.push(Op::Issue(otp)).await
    }

    pub async fn execution(&self, record: ExecutionRecord) -> Result<(), StoreWriterError> {
        self.push(Op::Execution(record)).await
    }

    pub async fn log(&self, entry: LogEntry) -> Result<(), StoreWriterError> {
        self.push(Op::Log(entry)).await
    }

    /// Decides an attempt on a stored passcode and stores the outcome;
    /// `None` when no passcode has this id in this org.
    pub async fn verify(
        &self,
        id: &str,
        org: &str,
        now_millis: i64,
        matcher: Matcher,
    ) -> Result<Option<Decision>, StoreWriterError> {
        self.ops
            .request(|reply| Op::Verify {
                id: id.to_string(),
                org: org.to_string(),
                now_millis,
                matcher,
                reply,
            })
            .await
            .map_err(|_| StoreWriterError::Closed)?
    }

    /// Deletes passcodes that expired before `otp_before_millis` and daily
    /// buckets older than `days_before`.
    pub async fn purge(
        &self,
        otp_before_millis: i64,
        days_before: NaiveDate,
    ) -> Result<(), StoreWriterError> {
        self.push(Op::Purge {
            otp_before_millis,
            days_before,
        })
        .await
    }

    /// Waits until everything queued before has been committed (or failed).
    pub async fn barrier(&self) {
        let _ = self.ops.request(Op::Barrier).await;
    }
}

type Reply = (
    oneshot::Sender<Result<Option<Decision>, StoreWriterError>>,
    Option<Decision>,
);

/// The writer task's side: commits each batch, and on a failure answers
/// every caller left with the error and calls `on_error`.
struct LedgerWriter<F> {
    pool: SqlitePool,
    on_error: F,
}

impl<F: Fn(&StoreWriterError) + Send + 'static> BatchWriter for LedgerWriter<F> {
    type Op = Op;

    async fn write(&mut self, batch: &mut Vec<Op>) {
        let mut replies: Vec<Reply> = Vec::new();
        let mut barriers = Vec::new();
        let result = commit(&self.pool, batch, &mut replies, &mut barriers).await;
        match result {
            Ok(()) => {
                for (reply, decision) in replies {
                    let _ = reply.send(Ok(decision));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "telephony store_writer: a batch was not stored");
                (self.on_error)(&e);
                for (reply, _) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
                // Verifications not yet reached in the failed batch.
                for op in batch.drain(..) {
                    if let Op::Verify { reply, .. } = op {
                        let _ = reply.send(Err(e.clone()));
                    } else if let Op::Barrier(b) = op {
                        barriers.push(b);
                    }
                }
                // A failing disk should not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

async fn commit(
    pool: &SqlitePool,
    batch: &mut Vec<Op>,
    replies: &mut Vec<Reply>,
    barriers: &mut Vec<oneshot::Sender<()>>,
) -> Result<(), StoreWriterError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut ops = std::mem::take(batch).into_iter();
    let applied = apply_all(&mut tx, &mut ops, replies, barriers).await;
    // What a failure left unapplied goes back, for `run` to answer.
    batch.extend(ops);
    applied?;
    tx.commit().await?;
    Ok(())
}

async fn apply_all(
    tx: &mut Transaction<'_, Sqlite>,
    ops: &mut impl Iterator<Item = Op>,
    replies: &mut Vec<Reply>,
    barriers: &mut Vec<oneshot::Sender<()>>,
) -> Result<(), StoreWriterError> {
    let mut executions = ExecutionSums::default();
    // Rows are inserted many per statement; pending ones are written before
    // anything that reads them (a verification, a purge).
    let mut issued: Vec<IssuedOtp> = Vec::new();
    let mut logged: Vec<LogEntry> = Vec::new();
    for op in ops {
        match op {
            Op::Issue(otp) => issued.push(otp),
            Op::Execution(e) => executions.add(&e),
            Op::Log(entry) => logged.push(entry),
            Op::Verify {
                id,
                org,
                now_millis,
                matcher,
                reply,
            } => {
                let result = match insert_otps(tx, &mut issued).await {
                    Ok(()) => verify(tx, &id, &org, now_millis, matcher).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(decision) => replies.push((reply, decision)),
                    Err(e) => {
                        let _ = reply.send(Err(e.clone()));
                        return Err(e);
                    }
                }
            }
            Op::Purge {
                otp_before_millis,
                days_before,
            } => {
                insert_otps(tx, &mut issued).await?;
                purge(tx, otp_before_millis, days_before).await?
            }
            Op::Barrier(b) => barriers.push(b),
        }
    }
    insert_otps(tx, &mut issued).await?;
    tx.append_log(&logged).await?;
    for (key, sum) in executions.0 {
        record_executions(tx, &key, &sum).await?;
    }
    Ok(())
}

/// Rows per multi-row INSERT (well under SQLite's bound on parameters).
const ROWS_PER_INSERT: usize = 200;

/// The executions of one batch, summed per hook and day: one upsert each.
#[derive(Default)]
struct ExecutionSums(HashMap<(String, String, NaiveDate), ExecutionSum>);

#[derive(Default)]
struct ExecutionSum {
    executions: i64,
    successes: i64,
    failures: i64,
    success_millis: i64,
    last_time: String,
    /// (time, reason) of the batch's last failure.
    last_failure: Option<(String, String)>,
}

impl ExecutionSums {
    fn add(&mut self, e: &ExecutionRecord) {
        let sum = self
            .0
            .entry((e.org.clone(), e.hook.clone(), e.day))
            .or_default();
        sum.executions += 1;
        if e.success {
            sum.successes += 1;
            sum.success_millis += i64::try_from(e.millis).unwrap_or(i64::MAX);
        } else {
            sum.failures += 1;
            sum.last_failure = Some((e.time.clone(), e.failure_reason.clone().unwrap_or_default()));
        }
        if e.time > sum.last_time {
            sum.last_time = e.time.clone();
        }
    }
}

async fn insert_otps(
    tx: &mut Transaction<'_, Sqlite>,
    pending: &mut Vec<IssuedOtp>,
) -> Result<(), StoreWriterError> {
    for chunk in pending.chunks(ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO otp_transactions (id, org, hook, code_hash, created_at, expires_at, attempts, max_attempts, state) ",
        );
        insert.push_values(chunk, |mut row, otp| {
            row.push_bind(&otp.id)
                .push_bind(&otp.org)
                .push_bind(&otp.hook)
                .push_bind(&otp.code_hash)
                .push_bind(otp.created_at_millis)
                .push_bind(otp.expires_at_millis)
                .push_bind(0i64)
                .push_bind(i64::from(otp.max_attempts))
                .push_bind(OtpState::Delivered.as_str());
        });
        insert.build().execute(&mut **tx).await?;
    }
    pending.clear();
    Ok(())
}

async fn record_executions(
    tx: &mut Transaction<'_, Sqlite>,
    (org, hook, day): &(String, String, NaiveDate),
    sum: &ExecutionSum,
) -> Result<(), StoreWriterError> {
    sqlx::query(
        "INSERT INTO telephony_hook_days (org, hook, day, executions, successes, failures, success_millis)
         VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (org, hook, day) DO UPDATE SET
           executions = executions + excluded.executions,
           successes = successes + excluded.successes,
           failures = failures + excluded.failures,
           success_millis = success_millis + excluded.success_millis",
    )
    .bind(org)
    .bind(hook)
    .bind(day.to_string())
    .bind(sum.executions)
    .bind(sum.successes)
    .bind(sum.failures)
    .bind(sum.success_millis)
    .execute(&mut **tx)
    .await?;
    let (failure_time, failure_reason) = match &sum.last_failure {
        Some((time, reason)) => (Some(time.as_str()), Some(reason.as_str())),
        None => (None, None),
    };
    sqlx::query(
        "INSERT INTO telephony_hook_last (org, hook, last_execution_time, last_failure_time, last_failure_reason)
         VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (org, hook) DO UPDATE SET
           last_execution_time = MAX(COALESCE(last_execution_time, ''), excluded.last_execution_time),
           last_failure_time = COALESCE(excluded.last_failure_time, last_failure_time),
           last_failure_reason = COALESCE(excluded.last_failure_reason, last_failure_reason)",
    )
    .bind(org)
    .bind(hook)
    .bind(&sum.last_time)
    .bind(failure_time)
    .bind(failure_reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn verify(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
    org: &str,
    now_millis: i64,
    matcher: Matcher,
) -> Result<Option<Decision>, StoreWriterError> {
    let row = sqlx::query(
        "SELECT code_hash, state, expires_at, attempts, max_attempts FROM otp_transactions WHERE id = ? AND org = ?",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let hash: Vec<u8> = row.get(0);
    let state: String = row.get(1);
    let stored = StoredOtp {
        state: OtpState::parse(&state),
        expires_at_millis: row.get(2),
        attempts: u32::try_from(row.get::<i64, _>(3)).unwrap_or(u32::MAX),
        max_attempts: u32::try_from(row.get::<i64, _>(4)).unwrap_or(0),
    };
    let decision = decide(&stored, now_millis, || matcher(&hash));
    if let Some((state, attempts)) = decision.update {
        sqlx::query("UPDATE otp_transactions SET state = ?, attempts = ? WHERE id = ?")
            .bind(state.as_str())
            .bind(i64::from(attempts))
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(Some(decision))
}

async fn purge(
    tx: &mut Transaction<'_, Sqlite>,
    otp_before_millis: i64,
    days_before: NaiveDate,
) -> Result<(), StoreWriterError> {
    sqlx::query("DELETE FROM otp_transactions WHERE expires_at < ?")
        .bind(otp_before_millis)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM telephony_hook_days WHERE day < ?")
        .bind(days_before.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The stored numbers of every hook, from `since` (a UTC day) on.
pub async fn load_numbers(
    pool: &SqlitePool,
    since: NaiveDate,
) -> Result<HashMap<HookId, HookNumbers>, StoreWriterError> {
    let mut numbers: HashMap<HookId, HookNumbers> = HashMap::new();
    let rows = sqlx::query(
        "SELECT org, hook, day, executions, successes, failures, success_millis
         FROM telephony_hook_days WHERE day >= ?",
    )
    .bind(since.to_string())
    .fetch_all(pool)
    .await?;
    for row in rows {
        let day: String = row.get(2);
        let Ok(day) = day.parse::<NaiveDate>() else {
            continue;
        };
        let n = numbers.entry((row.get(0), row.get(1))).or_default();
        let count = |i: usize| u64::try_from(row.get::<i64, _>(i)).unwrap_or(0);
        n.days.insert(
            day,
            super::hook_stats::DayBucket {
                executions: count(3),
                successes: count(4),
                failures: count(5),
                success_millis: count(6),
            },
        );
    }
    let rows = sqlx::query(
        "SELECT org, hook, last_execution_time, last_failure_time, last_failure_reason FROM telephony_hook_last",
    )
    .fetch_all(pool)
    .await?;
    for row in rows {
        let n = numbers.entry((row.get(0), row.get(1))).or_default();
        n.last_execution = row.get(2);
        let time: Option<String> = row.get(3);
        let reason: Option<String> = row.get(4);
        n.last_failure = time.map(|time| FailureRecord {
            time,
            reason: reason.unwrap_or_default(),
        });
    }
    Ok(numbers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn record(day: &str, success: bool) -> ExecutionRecord {
        ExecutionRecord {
            org: "acme".into(),
            hook: "primary".into(),
            day: day.parse().unwrap(),
            time: format!("{day}T01:02:03Z"),
            success,
            millis: 40,
            failure_reason: (!success).then(|| "http_status: HTTP 500".into()),
        }
    }

    #[tokio::test]
    async fn executions_round_trip_and_verifications_are_ordered() {
        let store = Store::memory().await.unwrap();
        let store_writer = StoreWriter::start(store.sqlite().unwrap().clone(), |_| {});
        store_writer
            .execution(record("2026-01-01", true))
            .await
            .unwrap();
        store_writer
            .execution(record("2026-01-01", false))
            .await
            .unwrap();
        store_writer
            .execution(record("2026-01-02", true))
            .await
            .unwrap();
        let hasher = crate::telephony::code::CodeHasher::new(b"k");
        store_writer
            .issue(IssuedOtp {
                id: "tx1".into(),
                org: "acme".into(),
                hook: "primary".into(),
                code_hash: hasher.hash("tx1", "123456"),
                created_at_millis: 0,
                expires_at_millis: 1_000,
                max_attempts: 5,
            })
            .await
            .unwrap();
        store_writer
            .log(LogEntry {
                org: "acme".into(),
                type_: "telephony.send".into(),
                outcome: "SUCCESS".into(),
                time: "t".into(),
                subject: "TelephonyHook/primary".into(),
                detail: serde_json::json!({"hook": "primary"}),
            })
            .await
            .unwrap();
        let check = |code: &'static str| -> Matcher {
            let h = hasher.clone();
            Box::new(move |stored| h.matches("tx1", code, stored))
        };
        // Issued just before: seen.
        let d = store_writer
            .verify("tx1", "acme", 10, check("000000"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.result, crate::telephony::code::VerifyResult::Invalid);
        assert!(
            store_writer
                .verify("tx1", "other", 10, check("123456"))
                .await
                .unwrap()
                .is_none()
        );
        let d = store_writer
            .verify("tx1", "acme", 10, check("123456"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.result, crate::telephony::code::VerifyResult::Verified);
        let d = store_writer
            .verify("tx1", "acme", 10, check("123456"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.reason, Some("already_used"));

        let numbers = load_numbers(store.sqlite().unwrap(), "2026-01-01".parse().unwrap())
            .await
            .unwrap();
        let n = &numbers[&("acme".to_string(), "primary".to_string())];
        let day1 = n.days[&"2026-01-01".parse().unwrap()];
        assert_eq!(
            (
                day1.executions,
                day1.successes,
                day1.failures,
                day1.success_millis
            ),
            (2, 1, 1, 40)
        );
        assert_eq!(n.last_execution.as_deref(), Some("2026-01-02T01:02:03Z"));
        assert_eq!(
            n.last_failure.as_ref().unwrap().reason,
            "http_status: HTTP 500"
        );
        let events = store
            .events(
                "acme",
                &crate::store::EventFilter {
                    type_: Some("telephony.send"),
                    outcome: None,
                },
                0,
                10,
            )
            .await
            .unwrap();
        assert_eq!(events.len(), 1);

        store_writer
            .purge(2_000, "2026-01-02".parse().unwrap())
            .await
            .unwrap();
        store_writer.barrier().await;
        assert!(
            store_writer
                .verify("tx1", "acme", 10, check("123456"))
                .await
                .unwrap()
                .is_none()
        );
        let numbers = load_numbers(store.sqlite().unwrap(), "2000-01-01".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(
            numbers[&("acme".to_string(), "primary".to_string())]
                .days
                .len(),
            1
        );
    }
}
