//! The one writer of the telephony tables (and of its entries in the org's
//! system log): issued passcodes, verification attempts, daily execution
//! buckets. Requests queue on a channel; one task commits whatever has
//! queued in a single transaction (group commit, on the store's loop in
//! [`crate::store::group_commit`]), so the commit (a disk flush on either
//! backend) is paid once per batch, not once per send.
//!
//! Both backends run the same Rust: the batching, [`decide`], the sums of
//! executions. Only the statements differ ([`Ledger`], one implementation
//! per connection type, the same SQL but for how a verification locks the
//! passcode it reads) and how a batch begins (SQLite `BEGIN IMMEDIATE`:
//! the file's one writer; PostgreSQL: a plain transaction, rows locked as
//! they are read).
//!
//! A verification reads its passcode with `SELECT … FOR UPDATE` on
//! PostgreSQL: when replicas verify the same passcode at the same moment,
//! the second waits for the first's commit and then sees its outcome, so
//! a code is verified at most once and every replica's attempts count
//! toward the lockout. Within one process the single task orders every
//! change: a verification sees the passcodes issued before it.
//!
//! An issued passcode is answered once committed ([`StoreWriter::issue`]);
//! executions and log entries are not waited for (counters and events,
//! flushed at a graceful stop by [`StoreWriter::barrier`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use chrono::NaiveDate;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::oneshot;

use super::code::{Decision, OtpState, StoredOtp, decide};
use super::hook_stats::{ExecutionRecord, HookId, HookNumbers};
use crate::resources::FailureRecord;
use crate::store::group_commit::{self, BatchWriter, Submitter};
use crate::store::{AppendLog, Backend, LogEntry, on_pool};

/// Most requests committed in one transaction. Large, so that a slow disk
/// flush (tens of milliseconds when the disk is busy) still leaves room for
/// tens of thousands of requests per second.
const MAX_BATCH: usize = 8192;

/// Requests waiting for the writer; when full, senders wait (a disk that
/// cannot keep up slows sends down rather than growing memory).
const QUEUE: usize = 64 * 1024;

/// Tries of a batch that PostgreSQL aborted as a deadlock with another
/// replica's batch (each verification holds its passcode's row lock until
/// its batch commits).
const TRIES: u32 = 3;

/// Errors of the store writer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreWriterError {
    /// The database cannot be reached now (see `store::is_unavailable`).
    #[error("the telephony store is unavailable: {0}")]
    Unavailable(String),
    #[error("the telephony store failed: {0}")]
    Sql(String),
    #[error("the telephony store is shut down")]
    Closed,
}

impl StoreWriterError {
    /// Whether trying again later (or on another replica) may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Closed)
    }
}

impl From<sqlx::Error> for StoreWriterError {
    fn from(e: sqlx::Error) -> Self {
        Self::from_ref(&e)
    }
}

impl StoreWriterError {
    pub(crate) fn from_ref(e: &sqlx::Error) -> Self {
        if crate::store::is_unavailable(e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Sql(e.to_string())
        }
    }
}

/// A passcode sent to a hook: only its keyed hash is kept.
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
/// `Fn`: a batch that must be tried again compares again.
pub type Matcher = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

type Done = oneshot::Sender<Result<(), StoreWriterError>>;

enum Op {
    Issue {
        otp: IssuedOtp,
        reply: Done,
    },
    /// A passcode no hook delivered: deleted, so it is valid nowhere.
    Withdraw {
        id: String,
        reply: Done,
    },
    /// The fallback delivered the passcode issued for the active hook.
    DeliveredBy {
        id: String,
        hook: String,
    },
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
    /// Starts the writer on the store's pool; `on_error` is called for each
    /// failed batch.
    pub fn start(backend: Backend, on_error: impl Fn(&StoreWriterError) + Send + 'static) -> Self {
        let (ops, pending) = group_commit::channel(QUEUE);
        tokio::spawn(pending.run(MAX_BATCH, LedgerWriter { backend, on_error }));
        Self { ops }
    }

    async fn push(&self, op: Op) -> Result<(), StoreWriterError> {
        self.ops
            .send(op)
            .await
            .map_err(|_| StoreWriterError::Closed)
    }

    async fn done(&self, op: impl FnOnce(Done) -> Op) -> Result<(), StoreWriterError> {
        self.ops
            .request(op)
            .await
            .map_err(|_| StoreWriterError::Closed)?
    }

    /// Stores a passcode as delivered; returns once it is committed, so
    /// that every replica can verify it as soon as the send answers.
    pub async fn issue(&self, otp: IssuedOtp) -> Result<(), StoreWriterError> {
        self.done(|reply| Op::Issue { otp, reply }).await
    }

    /// Deletes an issued passcode that no hook delivered; returns once
    /// committed.
    pub async fn withdraw(&self, id: &str) -> Result<(), StoreWriterError> {
        let id = id.to_string();
        self.done(|reply| Op::Withdraw { id, reply }).await
    }

    /// Records that `hook` (the fallback) delivered passcode `id`.
    pub async fn delivered_by(&self, id: &str, hook: &str) -> Result<(), StoreWriterError> {
        self.push(Op::DeliveredBy {
            id: id.to_string(),
            hook: hook.to_string(),
        })
        .await
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
    /// buckets before `days_before`.
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

/// The writer task's side: commits each batch, and answers every caller
/// with its outcome; on a failure it calls `on_error`.
struct LedgerWriter<F> {
    backend: Backend,
    on_error: F,
}

/// PostgreSQL aborted the transaction to break a deadlock, or a
/// serialization failure: the same batch may succeed when tried again.
fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

impl<F: Fn(&StoreWriterError) + Send + 'static> BatchWriter for LedgerWriter<F> {
    type Op = Op;

    async fn write(&mut self, batch: &mut Vec<Op>) {
        let mut tries = 0;
        let result = loop {
            tries += 1;
            match commit(&self.backend, batch).await {
                Err(e) if tries < TRIES && is_retryable(&e) => {
                    tracing::debug!(error = %e, "telephony store_writer: a batch met another replica's; trying again");
                }
                other => break other.map_err(StoreWriterError::from),
            }
        };
        let failed = result.as_ref().err().cloned();
        if let Some(e) = &failed {
            tracing::error!(error = %e, "telephony store_writer: a batch was not stored");
            (self.on_error)(e);
        }
        let mut decisions = result.unwrap_or_default().into_iter();
        let outcome = || failed.clone().map_or(Ok(()), Err);
        for op in batch.drain(..) {
            match op {
                Op::Issue { reply, .. } | Op::Withdraw { reply, .. } => {
                    let _ = reply.send(outcome());
                }
                Op::Verify { reply, .. } => {
                    let _ = reply.send(outcome().map(|()| decisions.next().flatten()));
                }
                Op::Barrier(b) => {
                    let _ = b.send(());
                }
                Op::DeliveredBy { .. } | Op::Execution(_) | Op::Log(_) | Op::Purge { .. } => {}
            }
        }
        if failed.is_some() {
            // A failing store should not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Applies `batch` in one transaction; the decision of each verification,
/// in order.
async fn commit(backend: &Backend, batch: &[Op]) -> Result<Vec<Option<Decision>>, sqlx::Error> {
    match backend {
        Backend::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let decisions = apply(&mut *tx, batch).await?;
            tx.commit().await?;
            Ok(decisions)
        }
        Backend::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let decisions = apply(&mut *tx, batch).await?;
            tx.commit().await?;
            Ok(decisions)
        }
    }
}

async fn apply<C: Ledger + AppendLog + Send>(
    conn: &mut C,
    batch: &[Op],
) -> Result<Vec<Option<Decision>>, sqlx::Error> {
    let mut decisions = Vec::new();
    let mut executions = ExecutionSums::default();
    // Rows are inserted many per statement; pending ones are written before
    // anything that reads or changes them.
    let mut issued: Vec<&IssuedOtp> = Vec::new();
    let mut logged: Vec<LogEntry> = Vec::new();
    for op in batch {
        match op {
            Op::Issue { otp, .. } => issued.push(otp),
            Op::Execution(e) => executions.add(e),
            Op::Log(entry) => logged.push(entry.clone()),
            Op::Withdraw { id, .. } => {
                flush_issued(conn, &mut issued).await?;
                conn.delete_otp(id).await?;
            }
            Op::DeliveredBy { id, hook } => {
                flush_issued(conn, &mut issued).await?;
                conn.set_hook(id, hook).await?;
            }
            Op::Verify {
                id,
                org,
                now_millis,
                matcher,
                ..
            } => {
                flush_issued(conn, &mut issued).await?;
                decisions.push(verify(conn, id, org, *now_millis, matcher).await?);
            }
            Op::Purge {
                otp_before_millis,
                days_before,
            } => {
                flush_issued(conn, &mut issued).await?;
                conn.purge(*otp_before_millis, *days_before).await?;
            }
            Op::Barrier(_) => {}
        }
    }
    flush_issued(conn, &mut issued).await?;
    conn.append_log(&logged).await?;
    // In key order: replicas lock the same rows in the same order.
    for (key, sum) in &executions.0 {
        conn.add_executions(key, sum).await?;
    }
    Ok(decisions)
}

async fn flush_issued<C: Ledger + Send>(
    conn: &mut C,
    issued: &mut Vec<&IssuedOtp>,
) -> Result<(), sqlx::Error> {
    for chunk in issued.chunks(ROWS_PER_INSERT) {
        conn.insert_otps(chunk).await?;
    }
    issued.clear();
    Ok(())
}

async fn verify<C: Ledger + Send>(
    conn: &mut C,
    id: &str,
    org: &str,
    now_millis: i64,
    matcher: &Matcher,
) -> Result<Option<Decision>, sqlx::Error> {
    let Some((hash, stored)) = conn.read_otp(id, org).await? else {
        return Ok(None);
    };
    let decision = decide(&stored, now_millis, || matcher(&hash));
    if let Some((state, attempts)) = decision.update {
        conn.update_otp(id, state, attempts).await?;
    }
    Ok(Some(decision))
}

/// Rows per multi-row INSERT (well under SQLite's bound on parameters).
const ROWS_PER_INSERT: usize = 200;

/// The executions of one batch, summed per hook and day: one upsert each.
#[derive(Default)]
struct ExecutionSums(BTreeMap<(String, String, NaiveDate), ExecutionSum>);

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

/// The statements of the telephony tables, on a connection of either
/// backend (inside the batch's transaction).
trait Ledger {
    fn insert_otps(
        &mut self,
        otps: &[&IssuedOtp],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    fn delete_otp(&mut self, id: &str) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    fn set_hook(
        &mut self,
        id: &str,
        hook: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// The passcode's hash and state, locked until the transaction ends
    /// where the backend locks rows.
    fn read_otp(
        &mut self,
        id: &str,
        org: &str,
    ) -> impl Future<Output = Result<Option<(Vec<u8>, StoredOtp)>, sqlx::Error>> + Send;
    fn update_otp(
        &mut self,
        id: &str,
        state: OtpState,
        attempts: u32,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    fn add_executions(
        &mut self,
        key: &(String, String, NaiveDate),
        sum: &ExecutionSum,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    fn purge(
        &mut self,
        otp_before_millis: i64,
        days_before: NaiveDate,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// [`Ledger`] for the connection type `$conn` of database `$db`; `$lock`
/// ends the verification's read (`FOR UPDATE` where rows can be locked).
macro_rules! ledger_impl {
    ($conn:ty, $db:ty, $lock:literal) => {
        impl Ledger for $conn {
            async fn insert_otps(&mut self, otps: &[&IssuedOtp]) -> Result<(), sqlx::Error> {
                let mut insert = QueryBuilder::<$db>::new(
                    "INSERT INTO otp_transactions (id, org, hook, code_hash, created_at, expires_at, attempts, max_attempts, state) ",
                );
                insert.push_values(otps, |mut row, otp| {
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
                insert.build().execute(&mut *self).await.map(drop)
            }

            async fn delete_otp(&mut self, id: &str) -> Result<(), sqlx::Error> {
                sqlx::query("DELETE FROM otp_transactions WHERE id = $1")
                    .bind(id)
                    .execute(&mut *self)
                    .await
                    .map(drop)
            }

            async fn set_hook(&mut self, id: &str, hook: &str) -> Result<(), sqlx::Error> {
                sqlx::query("UPDATE otp_transactions SET hook = $2 WHERE id = $1")
                    .bind(id)
                    .bind(hook)
                    .execute(&mut *self)
                    .await
                    .map(drop)
            }

            async fn read_otp(
                &mut self,
                id: &str,
                org: &str,
            ) -> Result<Option<(Vec<u8>, StoredOtp)>, sqlx::Error> {
                let row = sqlx::query(concat!(
                    "SELECT code_hash, state, expires_at, attempts, max_attempts FROM otp_transactions WHERE id = $1 AND org = $2",
                    $lock
                ))
                .bind(id)
                .bind(org)
                .fetch_optional(&mut *self)
                .await?;
                Ok(row.map(|row| {
                    let state: String = row.get(1);
                    let stored = StoredOtp {
                        state: OtpState::parse(&state),
                        expires_at_millis: row.get(2),
                        attempts: u32::try_from(row.get::<i64, _>(3)).unwrap_or(u32::MAX),
                        max_attempts: u32::try_from(row.get::<i64, _>(4)).unwrap_or(0),
                    };
                    (row.get(0), stored)
                }))
            }

            async fn update_otp(
                &mut self,
                id: &str,
                state: OtpState,
                attempts: u32,
            ) -> Result<(), sqlx::Error> {
                sqlx::query("UPDATE otp_transactions SET state = $1, attempts = $2 WHERE id = $3")
                    .bind(state.as_str())
                    .bind(i64::from(attempts))
                    .bind(id)
                    .execute(&mut *self)
                    .await
                    .map(drop)
            }

            async fn add_executions(
                &mut self,
                (org, hook, day): &(String, String, NaiveDate),
                sum: &ExecutionSum,
            ) -> Result<(), sqlx::Error> {
                // The existing row is named by its table: PostgreSQL finds a
                // bare column name ambiguous beside `excluded`.
                sqlx::query(
                    "INSERT INTO telephony_hook_days (org, hook, day, executions, successes, failures, success_millis)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (org, hook, day) DO UPDATE SET
                       executions = telephony_hook_days.executions + excluded.executions,
                       successes = telephony_hook_days.successes + excluded.successes,
                       failures = telephony_hook_days.failures + excluded.failures,
                       success_millis = telephony_hook_days.success_millis + excluded.success_millis",
                )
                .bind(org)
                .bind(hook)
                .bind(day.to_string())
                .bind(sum.executions)
                .bind(sum.successes)
                .bind(sum.failures)
                .bind(sum.success_millis)
                .execute(&mut *self)
                .await?;
                let (failure_time, failure_reason) = match &sum.last_failure {
                    Some((time, reason)) => (Some(time.as_str()), Some(reason.as_str())),
                    None => (None, None),
                };
                // A replica's batch may commit after a later one's: the
                // newest time wins, whichever commits last.
                sqlx::query(
                    "INSERT INTO telephony_hook_last (org, hook, last_execution_time, last_failure_time, last_failure_reason)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (org, hook) DO UPDATE SET
                       last_execution_time = CASE
                         WHEN excluded.last_execution_time > COALESCE(telephony_hook_last.last_execution_time, '')
                         THEN excluded.last_execution_time ELSE telephony_hook_last.last_execution_time END,
                       last_failure_reason = CASE
                         WHEN excluded.last_failure_time > COALESCE(telephony_hook_last.last_failure_time, '')
                         THEN excluded.last_failure_reason ELSE telephony_hook_last.last_failure_reason END,
                       last_failure_time = CASE
                         WHEN excluded.last_failure_time > COALESCE(telephony_hook_last.last_failure_time, '')
                         THEN excluded.last_failure_time ELSE telephony_hook_last.last_failure_time END",
                )
                .bind(org)
                .bind(hook)
                .bind(&sum.last_time)
                .bind(failure_time)
                .bind(failure_reason)
                .execute(&mut *self)
                .await
                .map(drop)
            }

            async fn purge(
                &mut self,
                otp_before_millis: i64,
                days_before: NaiveDate,
            ) -> Result<(), sqlx::Error> {
                sqlx::query("DELETE FROM otp_transactions WHERE expires_at < $1")
                    .bind(otp_before_millis)
                    .execute(&mut *self)
                    .await?;
                sqlx::query("DELETE FROM telephony_hook_days WHERE day < $1")
                    .bind(days_before.to_string())
                    .execute(&mut *self)
                    .await
                    .map(drop)
            }
        }
    };
}
ledger_impl!(SqliteConnection, Sqlite, "");
ledger_impl!(PgConnection, Postgres, " FOR UPDATE");

/// The stored numbers of every hook, from `since` (a UTC day) on: at
/// start, and on a shared store every few seconds (the totals of every
/// replica).
pub async fn load_numbers(
    backend: &Backend,
    since: NaiveDate,
) -> Result<HashMap<HookId, HookNumbers>, StoreWriterError> {
    type DayRow = (String, String, String, i64, i64, i64, i64);
    type LastRow = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let (days, lasts): (Vec<DayRow>, Vec<LastRow>) = on_pool!(backend, |pool| {
        let days = sqlx::query_as(
            "SELECT org, hook, day, executions, successes, failures, success_millis
             FROM telephony_hook_days WHERE day >= $1",
        )
        .bind(since.to_string())
        .fetch_all(pool)
        .await?;
        let lasts = sqlx::query_as(
            "SELECT org, hook, last_execution_time, last_failure_time, last_failure_reason FROM telephony_hook_last",
        )
        .fetch_all(pool)
        .await?;
        (days, lasts)
    });
    let mut numbers: HashMap<HookId, HookNumbers> = HashMap::new();
    for (org, hook, day, executions, successes, failures, success_millis) in days {
        let Ok(day) = day.parse::<NaiveDate>() else {
            continue;
        };
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        numbers.entry((org, hook)).or_default().days.insert(
            day,
            super::hook_stats::DayBucket {
                executions: count(executions),
                successes: count(successes),
                failures: count(failures),
                success_millis: count(success_millis),
            },
        );
    }
    for (org, hook, last_execution, failure_time, failure_reason) in lasts {
        let n = numbers.entry((org, hook)).or_default();
        n.last_execution = last_execution;
        n.last_failure = failure_time.map(|time| FailureRecord {
            time,
            reason: failure_reason.unwrap_or_default(),
        });
    }
    Ok(numbers)
}

/// The newest preview of a hook in the org's system log, by any replica:
/// its time (RFC 3339) and its `detail`.
pub async fn last_preview(
    backend: &Backend,
    org: &str,
    hook: &str,
) -> Result<Option<(String, serde_json::Value)>, StoreWriterError> {
    let subject = format!("TelephonyHook/{hook}");
    let row: Option<(String, String)> = on_pool!(backend, |pool| {
        sqlx::query_as(
            "SELECT time, detail FROM system_log
             WHERE org = $1 AND subject = $2 AND type = 'telephony.preview'
             ORDER BY id DESC LIMIT 1",
        )
        .bind(org)
        .bind(&subject)
        .fetch_optional(pool)
        .await?
    });
    Ok(row.and_then(|(time, detail)| Some((time, serde_json::from_str(&detail).ok()?))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::telephony::code::{CodeHasher, VerifyResult};
    use crate::telephony::testing;

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

    fn hasher() -> CodeHasher {
        CodeHasher::new(b"a key every replica shares")
    }

    fn issued(id: &str, code: &str) -> IssuedOtp {
        IssuedOtp {
            id: id.into(),
            org: "acme".into(),
            hook: "primary".into(),
            code_hash: hasher().hash(id, code),
            created_at_millis: 0,
            expires_at_millis: 1_000,
            max_attempts: 5,
        }
    }

    fn check(id: &'static str, code: &'static str) -> Matcher {
        let h = hasher();
        Box::new(move |stored| h.matches(id, code, stored))
    }

    async fn result(writer: &StoreWriter, id: &'static str, code: &'static str) -> Decision {
        writer
            .verify(id, "acme", 10, check(id, code))
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn executions_round_trip_and_verifications_are_ordered_on_sqlite() {
        let store = Store::memory().await.unwrap();
        executions_round_trip_and_verifications_are_ordered(store).await;
    }

    #[tokio::test]
    async fn executions_round_trip_and_verifications_are_ordered_on_postgres() {
        executions_round_trip_and_verifications_are_ordered(
            crate::store::testing::postgres().await,
        )
        .await;
    }

    async fn executions_round_trip_and_verifications_are_ordered(store: Store) {
        let store_writer = StoreWriter::start(store.backend().clone(), |_| {});
        for (day, success) in [
            ("2026-01-01", true),
            ("2026-01-01", false),
            ("2026-01-02", true),
        ] {
            store_writer.execution(record(day, success)).await.unwrap();
        }
        store_writer.issue(issued("tx1", "123456")).await.unwrap();
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
        assert_eq!(
            result(&store_writer, "tx1", "000000").await.result,
            VerifyResult::Invalid
        );
        assert!(
            store_writer
                .verify("tx1", "other", 10, check("tx1", "123456"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            result(&store_writer, "tx1", "123456").await.result,
            VerifyResult::Verified
        );
        assert_eq!(
            result(&store_writer, "tx1", "123456").await.reason,
            Some("already_used")
        );
        // A withdrawn passcode is valid nowhere.
        store_writer.issue(issued("tx2", "654321")).await.unwrap();
        store_writer.delivered_by("tx2", "backup").await.unwrap();
        store_writer.withdraw("tx2").await.unwrap();
        assert!(
            store_writer
                .verify("tx2", "acme", 10, check("tx2", "654321"))
                .await
                .unwrap()
                .is_none()
        );

        let numbers = load_numbers(store.backend(), "2026-01-01".parse().unwrap())
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
        // A later batch with an older execution keeps the newest times.
        store_writer
            .execution(record("2026-01-01", true))
            .await
            .unwrap();
        store_writer.barrier().await;
        let numbers = load_numbers(store.backend(), "2026-01-01".parse().unwrap())
            .await
            .unwrap();
        let n = &numbers[&("acme".to_string(), "primary".to_string())];
        assert_eq!(n.last_execution.as_deref(), Some("2026-01-02T01:02:03Z"));
        assert_eq!(n.days[&"2026-01-01".parse().unwrap()].executions, 3);
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
                .verify("tx1", "acme", 10, check("tx1", "123456"))
                .await
                .unwrap()
                .is_none()
        );
        let numbers = load_numbers(store.backend(), "2000-01-01".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(
            numbers[&("acme".to_string(), "primary".to_string())]
                .days
                .len(),
            1
        );
    }

    /// Two writers on one database, each on its own pool: two replicas.
    async fn two_replicas() -> (StoreWriter, StoreWriter) {
        let a = testing::pg_pool().await;
        let b = testing::replica(&a);
        (
            StoreWriter::start(Backend::Postgres(a), |_| {}),
            StoreWriter::start(Backend::Postgres(b), |_| {}),
        )
    }

    #[tokio::test]
    async fn a_passcode_issued_on_one_replica_is_verified_on_another() {
        let (a, b) = two_replicas().await;
        a.issue(issued("tx1", "123456")).await.unwrap();
        assert_eq!(
            result(&b, "tx1", "123456").await.result,
            VerifyResult::Verified
        );
        assert_eq!(
            result(&a, "tx1", "123456").await.reason,
            Some("already_used")
        );
    }

    #[tokio::test]
    async fn the_same_code_verified_at_once_on_two_replicas_is_verified_once() {
        let (a, b) = two_replicas().await;
        for round in 0..20 {
            let id: &'static str = Box::leak(format!("tx{round}").into_boxed_str());
            a.issue(issued(id, "123456")).await.unwrap();
            let (x, y) = tokio::join!(result(&a, id, "123456"), result(&b, id, "123456"));
            let verified = [&x, &y]
                .iter()
                .filter(|d| d.result == VerifyResult::Verified)
                .count();
            assert_eq!(verified, 1, "round {round}: {x:?} {y:?}");
            let other = if x.result == VerifyResult::Verified {
                &y
            } else {
                &x
            };
            assert_eq!(other.reason, Some("already_used"));
        }
    }

    #[tokio::test]
    async fn wrong_codes_on_both_replicas_count_toward_one_lockout() {
        let (a, b) = two_replicas().await;
        a.issue(issued("tx1", "123456")).await.unwrap();
        // Five attempts allowed: four wrong ones, alternating.
        for (i, writer) in [&a, &b, &a, &b].into_iter().enumerate() {
            let d = result(writer, "tx1", "000000").await;
            assert_eq!(
                (d.result, d.attempts_remaining),
                (VerifyResult::Invalid, 4 - i as u32)
            );
        }
        let d = result(&a, "tx1", "000000").await;
        assert_eq!(
            (d.result, d.reason),
            (VerifyResult::Locked, Some("too_many_attempts"))
        );
        // Locked everywhere, even with the right code.
        assert_eq!(
            result(&b, "tx1", "123456").await.result,
            VerifyResult::Locked
        );
    }

    #[tokio::test]
    async fn an_unreachable_database_is_unavailable_and_nothing_is_answered_as_done() {
        let writer = StoreWriter::start(Backend::Postgres(testing::unreachable()), |_| {});
        let issued = writer.issue(issued("tx1", "123456")).await;
        assert!(
            issued.as_ref().is_err_and(|e| e.is_unavailable()),
            "{issued:?}"
        );
        let verified = writer
            .verify("tx1", "acme", 10, check("tx1", "123456"))
            .await;
        assert!(
            verified.as_ref().is_err_and(|e| e.is_unavailable()),
            "{verified:?}"
        );
        let api = crate::http::ApiError::from(crate::telephony::TelephonyError::from(
            verified.unwrap_err(),
        ));
        assert_eq!(
            (api.status.as_u16(), api.code, api.retry_after),
            (503, "store_unavailable", Some(2))
        );
    }
}
