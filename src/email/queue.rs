//! The durable delivery queue. All of the module's SQL is here: the
//! delivery logic (`worker`, `retry`) sees only the operations below, so a
//! PostgreSQL backend implements the same operations (insert, claim,
//! finish, reads) without touching it.
//!
//! Write transactions start with `BEGIN IMMEDIATE`: they take the write
//! lock before reading, so a concurrent writer (the status writer, the
//! system log) makes them wait for the busy timeout instead of failing with
//! "database is locked" when a read would have to become a write.
//!
//! Writes go through one [`Committer`] task that applies whatever is waiting
//! in one transaction (group commit): with `synchronous=FULL` every commit
//! costs a disk flush, and batching keeps accepting cheap under load while
//! each caller still hears back only after its own write is durable. A
//! batch is one run of one multi-statement query (`BATCH_TX_SQL`:
//! `BEGIN`, the statements, `COMMIT`) over the batch as JSON, so a batch of
//! 300 costs about as many statements as a batch of one, and one round trip
//! to the connection's thread: those round trips, not the disk, were what
//! limited throughput.
//!
//! An attempt's row is written when it ends (or when its lease runs out);
//! while a message is `sending`, the running attempt is read from the
//! message row.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Either;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqlitePool;
use sqlx::{Connection, Row, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::message::Content;

/// Idempotency keys are honoured this long.
pub const IDEMPOTENCY_WINDOW_MILLIS: i64 = 24 * 3600 * 1000;

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 512;

/// Bytes of room a message needs beyond its content and recipients, under
/// a store cap: its row's other fields and index entries, and what
/// delivering it will still write: the claim's fields, at most four
/// attempt rows (see `batch_statements`) with replies of at most
/// [`super::worker::MAX_STORED_REPLY`] bytes, the delivery event. Kept for
/// every unfinished message, so that a full store can still record how its
/// mail went, however small the mail and however often it fails.
const ROOM_PER_MESSAGE: i64 = 4096;

/// Errors of the queue.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("the message store failed: {0}")]
    Sql(String),
    #[error("the message store is shutting down")]
    Closed,
    /// SQLite's SQLITE_FULL (a full disk, or the `--database-max-size`
    /// cap), or the accept limit below that cap: a new message is refused
    /// while the queue's own outcomes can still be written.
    #[error("the message store is full: {0}")]
    Full(String),
}

/// SQLite's result code for "database or disk is full".
const SQLITE_FULL: &str = "13";

impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        let full = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == SQLITE_FULL);
        if full {
            return Self::Full(e.to_string());
        }
        Self::Sql(e.to_string())
    }
}

/// An entry for the org's system log, written in the same transaction as
/// the state change it reports.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    pub org: String,
    pub type_: String,
    pub outcome: String,
    pub time: String,
    pub subject: String,
    pub detail: Value,
}

/// A message to enqueue.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub id: String,
    pub org: String,
    pub idempotency_key: Option<String>,
    pub sender: String,
    pub brand: Option<String>,
    pub content: Content,
    pub now: i64,
    /// Logged with the message (the sender warning of an unverified brand).
    pub log: Option<LogEntry>,
}

/// What an insert did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    New(String),
    /// The idempotency key was used within the window: the earlier message.
    Existing(String),
}

/// A message's stored content, or why it cannot be read (a row written
/// by another version of idplane, or damaged by hand). One such row must
/// not stop the queue: its attempt fails at once and GET still shows the
/// rest of the message.
pub type StoredContent = Result<Content, String>;

fn read_content(stored: &str) -> StoredContent {
    serde_json::from_str(stored).map_err(|e| format!("the stored message cannot be read: {e}"))
}

/// A message taken for one delivery attempt.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: String,
    pub org: String,
    pub sender: String,
    pub content: StoredContent,
    /// Number of this attempt among all started.
    pub attempt: u32,
    /// Attempts that count against `maxAttempts`, this one included.
    pub counted: u32,
    pub created_at: i64,
    pub started_at: i64,
}

/// How an attempt ended, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Sent,
    Transient,
    Permanent,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Transient => "transient",
            Self::Permanent => "permanent",
        }
    }
}

/// The message's state after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Sent,
    /// Retry at this time (Unix millis).
    Retry(i64),
    Failed,
}

/// The end of an attempt.
#[derive(Clone, Debug)]
pub struct Finished {
    pub id: String,
    pub attempt: u32,
    pub started_at: i64,
    pub finished_at: i64,
    pub outcome: Outcome,
    pub reply: String,
    pub provider: String,
    pub next: Next,
    /// The SUCCESS or FAILURE delivery event of a final state.
    pub log: Option<LogEntry>,
}

/// Whether a finish took effect: `false` when the attempt had lost its lease
/// and another attempt owns the message now.
pub type Applied = bool;

enum Op {
    Insert(Box<Prepared>, oneshot::Sender<Result<Inserted, QueueError>>),
    Claim {
        now: i64,
        lease_until: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Claimed>, QueueError>>,
    },
    Finish(Box<Finished>, oneshot::Sender<Result<Applied, QueueError>>),
}

/// The handle to the queue: writes through the committer, reads straight
/// from the pool.
#[derive(Clone)]
pub struct Queue {
    ops: mpsc::Sender<Op>,
    pool: SqlitePool,
}

/// The task that applies writes in batches.
pub struct Committer {
    ops: mpsc::Receiver<Op>,
    pool: SqlitePool,
    /// New messages are refused once the database's pages in use, with
    /// the room kept for unfinished mail, would pass this many bytes (see
    /// [`crate::store::Store::accept_limit`]).
    accept_limit: Option<i64>,
    /// Bytes in use after the last batch.
    used_bytes: i64,
    /// Messages not yet sent or failed: each keeps [`ROOM_PER_MESSAGE`]
    /// for what it will still write.
    unfinished: i64,
    /// Whether `used_bytes` and `unfinished` are known; under a cap, new
    /// mail waits until they are.
    measured: bool,
}

impl Queue {
    /// A queue over `pool` and its committer, which the caller spawns;
    /// with `accept_limit`, new messages are refused once the database's
    /// pages in use hold that many bytes.
    pub fn new(pool: SqlitePool, accept_limit: Option<i64>) -> (Self, Committer) {
        let (tx, rx) = mpsc::channel(8192);
        (
            Self {
                ops: tx,
                pool: pool.clone(),
            },
            Committer {
                ops: rx,
                pool,
                accept_limit,
                used_bytes: 0,
                unfinished: 0,
                measured: accept_limit.is_none(),
            },
        )
    }

    pub async fn insert(&self, message: NewMessage) -> Result<Inserted, QueueError> {
        let content = serde_json::to_string(&message.content)
            .map_err(|e| QueueError::Sql(format!("cannot encode the message: {e}")))?;
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Insert(Box::new(Prepared { message, content }), tx))
            .await
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Takes up to `limit` due messages (and those whose lease ran out) for
    /// an attempt each, leased until `lease_until`.
    pub async fn claim(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<Claimed>, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Claim {
                now,
                lease_until,
                limit,
                reply: tx,
            })
            .await
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    pub async fn finish(&self, finished: Finished) -> Result<Applied, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Finish(Box::new(finished), tx))
            .await
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Undoes the claims of messages not tried (a stop came first): each
    /// is due again at once, as it was before, unless its attempt
    /// `(id, attempt)` no longer holds it. Returns how many were released.
    /// Written on a connection of its own: it waits for the committer's
    /// transaction, which is fine when stopping.
    pub async fn release(&self, claims: &[(String, u32)], now: i64) -> Result<u64, QueueError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(
            "UPDATE email_messages
             SET state = CASE WHEN last_reply IS NULL THEN 'queued' ELSE 'retrying' END,
                 attempts = attempts - 1, due_at = next_attempt_at, lease_until = NULL,
                 attempt_started_at = NULL, claim_token = NULL, updated_at = ?2
             FROM (SELECT value->>0 AS id, value->>1 AS attempt FROM json_each(?1)) AS r
             WHERE email_messages.id = r.id AND email_messages.attempts = r.attempt
               AND email_messages.state = 'sending'",
        )
        .bind(rows_json(claims)?)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done)
    }

    /// The earliest time something becomes due: a queued or retrying
    /// message, or a lease running out.
    pub async fn next_due(&self) -> Result<Option<i64>, QueueError> {
        let row = sqlx::query("SELECT MIN(due_at) FROM email_messages WHERE due_at IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Option<i64>, _>(0))
    }

    /// One message of an org with its attempts.
    pub async fn get(&self, org: &str, id: &str) -> Result<Option<StoredMessage>, QueueError> {
        let Some(row) = sqlx::query(
            "SELECT id, org, state, sender, brand, content, attempts, next_attempt_at, created_at,
                    finished_at, last_reply, provider, idempotency_key, attempt_started_at
             FROM email_messages WHERE org = ? AND id = ?",
        )
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let content = read_content(row.get(5));
        let mut attempts: Vec<StoredAttempt> = sqlx::query(
            "SELECT number, started_at, finished_at, outcome, reply, provider
             FROM email_attempts WHERE message_id = ? ORDER BY number",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| StoredAttempt {
            number: r.get::<i64, _>(0) as u32,
            started_at: r.get(1),
            finished_at: r.get(2),
            outcome: r.get(3),
            reply: r.get(4),
            provider: r.get(5),
        })
        .collect();
        let attempt_count = row.get::<i64, _>(6) as u32;
        let state: String = row.get(2);
        if state == "sending" && attempts.last().map(|a| a.number) != Some(attempt_count) {
            attempts.push(StoredAttempt {
                number: attempt_count,
                started_at: row.get::<Option<i64>, _>(13).unwrap_or_default(),
                finished_at: None,
                outcome: None,
                reply: None,
                provider: None,
            });
        }
        Ok(Some(StoredMessage {
            id: row.get(0),
            org: row.get(1),
            state,
            sender: row.get(3),
            brand: row.get(4),
            content,
            attempt_count,
            next_attempt_at: row.get(7),
            created_at: row.get(8),
            finished_at: row.get(9),
            last_reply: row.get(10),
            provider: row.get(11),
            idempotency_key: row.get(12),
            attempts,
        }))
    }

    /// The system-log events about one subject (a message id).
    pub async fn events_about(&self, org: &str, subject: &str) -> Result<Vec<Value>, QueueError> {
        let rows = sqlx::query(
            "SELECT id, type, outcome, time, detail FROM system_log
             WHERE org = ? AND subject = ? ORDER BY id",
        )
        .bind(org)
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let detail: String = r.get(4);
                serde_json::json!({
                    "id": r.get::<i64, _>(0),
                    "type": r.get::<String, _>(1),
                    "outcome": r.get::<String, _>(2),
                    "time": r.get::<String, _>(3),
                    "subject": subject,
                    "detail": serde_json::from_str::<Value>(&detail).unwrap_or(Value::Null),
                })
            })
            .collect())
    }

    /// Messages not yet sent or failed, by org.
    pub async fn pending_by_org(&self) -> Result<HashMap<String, u64>, QueueError> {
        let rows = sqlx::query(
            "SELECT org, COUNT(*) FROM email_messages WHERE due_at IS NOT NULL GROUP BY org",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get::<i64, _>(1) as u64))
            .collect())
    }

    /// Delivery totals by (org, provider) for providers named `EmailProvider/…`.
    pub async fn provider_totals(&self) -> Result<Vec<ProviderTotals>, QueueError> {
        // Retried, as the live count has it: each counted attempt that
        // failed transiently and was followed by another. Counted from the
        // message row (a message keeps only four attempt rows): all its
        // counted attempts but the last once it is sent, failed or being
        // tried again, all of them while it waits for a retry. Attributed
        // to the provider of its last attempt.
        let rows = sqlx::query(
            "SELECT org, provider,
                    SUM(state = 'sent'), SUM(state = 'failed'),
                    SUM(CASE WHEN state = 'sent' THEN finished_at - created_at ELSE 0 END),
                    MAX(CASE WHEN state = 'sent' THEN finished_at END),
                    SUM(MAX(attempts - interrupted - (state IN ('sent', 'failed', 'sending')), 0))
             FROM email_messages WHERE provider LIKE 'EmailProvider/%' GROUP BY org, provider",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<ProviderTotals> = rows
            .into_iter()
            .map(|r| ProviderTotals {
                org: r.get(0),
                provider: r.get(1),
                sent: r.get::<Option<i64>, _>(2).unwrap_or(0) as u64,
                failed: r.get::<Option<i64>, _>(3).unwrap_or(0) as u64,
                delivery_millis: r.get::<Option<i64>, _>(4).unwrap_or(0) as u64,
                last_delivery: r.get(5),
                retried: r.get::<Option<i64>, _>(6).unwrap_or(0) as u64,
                last_failure: None,
            })
            .collect();
        // The latest failure of each provider, with its reply (SQLite takes
        // the bare columns from the row of the MAX).
        let failures = sqlx::query(
            "SELECT org, provider, MAX(finished_at), last_reply FROM email_messages
             WHERE state = 'failed' AND provider LIKE 'EmailProvider/%' GROUP BY org, provider",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in failures {
            let (org, provider): (String, String) = (r.get(0), r.get(1));
            let failure = r
                .get::<Option<i64>, _>(2)
                .map(|t| (t, r.get::<Option<String>, _>(3).unwrap_or_default()));
            if let Some(t) = out
                .iter_mut()
                .find(|t| t.org == org && t.provider == provider)
            {
                t.last_failure = failure;
            }
        }
        Ok(out)
    }

    /// Deletes sent and failed messages (and their attempts) finished before `before`.
    pub async fn purge_finished(&self, before: i64) -> Result<u64, QueueError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "DELETE FROM email_attempts WHERE message_id IN (
                SELECT id FROM email_messages WHERE state IN ('sent', 'failed') AND finished_at < ?)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(
            "DELETE FROM email_messages WHERE state IN ('sent', 'failed') AND finished_at < ?",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// The brand-domain rows of every org.
    pub async fn domains(&self) -> Result<Vec<DomainRow>, QueueError> {
        let rows = sqlx::query(
            "SELECT org, name, domain, record_name, token, status, reason, message, polling_since,
                    checked_at, verified_at FROM email_domains",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| DomainRow {
                org: r.get(0),
                name: r.get(1),
                domain: r.get(2),
                record_name: r.get(3),
                token: r.get(4),
                status: r.get(5),
                reason: r.get(6),
                message: r.get(7),
                polling_since: r.get(8),
                checked_at: r.get(9),
                verified_at: r.get(10),
            })
            .collect())
    }

    /// Stores a brand-domain row (and, in the same transaction, a log entry).
    pub async fn save_domain(
        &self,
        row: &DomainRow,
        log: Option<&LogEntry>,
    ) -> Result<(), QueueError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO email_domains (org, name, domain, record_name, token, status, reason, message,
                                        polling_since, checked_at, verified_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (org, name) DO UPDATE SET domain = excluded.domain,
                record_name = excluded.record_name, token = excluded.token, status = excluded.status,
                reason = excluded.reason, message = excluded.message,
                polling_since = excluded.polling_since, checked_at = excluded.checked_at,
                verified_at = excluded.verified_at",
        )
        .bind(&row.org)
        .bind(&row.name)
        .bind(&row.domain)
        .bind(&row.record_name)
        .bind(&row.token)
        .bind(&row.status)
        .bind(&row.reason)
        .bind(&row.message)
        .bind(row.polling_since)
        .bind(row.checked_at)
        .bind(row.verified_at)
        .execute(&mut *tx)
        .await?;
        if let Some(log) = log {
            insert_log(&mut tx, log).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets the brand-domain rows of objects that are gone.
    pub async fn delete_domain(&self, org: &str, name: &str) -> Result<(), QueueError> {
        sqlx::query("DELETE FROM email_domains WHERE org = ? AND name = ?")
            .bind(org)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Appends one entry to the org's system log.
    pub async fn log(&self, log: &LogEntry) -> Result<(), QueueError> {
        let mut conn = self.pool.acquire().await?;
        insert_log(&mut conn, log).await
    }

    /// The latest test email of each org provider, from the system log:
    /// (org, provider name, its log entry), so that `status.lastTest`
    /// survives a restart.
    pub async fn last_tests(&self) -> Result<Vec<(String, String, LogEntry)>, QueueError> {
        let rows = sqlx::query(
            "SELECT org, subject, MAX(id), outcome, time, detail FROM system_log
             WHERE type = 'email.test' AND subject LIKE 'EmailProvider/%' GROUP BY org, subject",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (org, subject): (String, String) = (r.get(0), r.get(1));
            let detail: String = r.get(5);
            let entry = LogEntry {
                org: org.clone(),
                type_: "email.test".into(),
                outcome: r.get(3),
                time: r.get(4),
                subject: subject.clone(),
                detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
            };
            let name = subject.trim_start_matches("EmailProvider/").to_string();
            out.push((org, name, entry));
        }
        Ok(out)
    }
}

/// A stored attempt.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAttempt {
    pub number: u32,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<String>,
    pub reply: Option<String>,
    pub provider: Option<String>,
}

/// A stored message.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub id: String,
    pub org: String,
    pub state: String,
    pub sender: String,
    pub brand: Option<String>,
    pub content: StoredContent,
    pub attempt_count: u32,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub last_reply: Option<String>,
    pub provider: Option<String>,
    pub idempotency_key: Option<String>,
    pub attempts: Vec<StoredAttempt>,
}

/// Delivery totals of one provider, read at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderTotals {
    pub org: String,
    pub provider: String,
    pub sent: u64,
    pub failed: u64,
    pub retried: u64,
    pub delivery_millis: u64,
    pub last_delivery: Option<i64>,
    /// When the latest failed message failed, and its last reply.
    pub last_failure: Option<(i64, String)>,
}

/// A brand domain's stored validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRow {
    pub org: String,
    pub name: String,
    pub domain: String,
    pub record_name: String,
    pub token: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub polling_since: i64,
    pub checked_at: Option<i64>,
    pub verified_at: Option<i64>,
}

async fn insert_log(conn: &mut SqliteConnection, log: &LogEntry) -> Result<(), QueueError> {
    // The same row `Store::log_event` writes, inside the caller's transaction.
    sqlx::query(
        "INSERT INTO system_log (org, type, outcome, time, subject, detail) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&log.org)
    .bind(&log.type_)
    .bind(&log.outcome)
    .bind(&log.time)
    .bind(&log.subject)
    .bind(log.detail.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// A message row for the batch statement, its content already serialized
/// (by the caller's task, not the committer's).
#[derive(Serialize)]
struct MessageRow<'a> {
    id: &'a str,
    org: &'a str,
    key: Option<&'a str>,
    sender: &'a str,
    brand: Option<&'a str>,
    content: &'a str,
    now: i64,
    log: Option<LogRow<'a>>,
}

/// A system-log row inside a message or finish row.
#[derive(Serialize)]
struct LogRow<'a> {
    org: &'a str,
    #[serde(rename = "type")]
    type_: &'a str,
    outcome: &'a str,
    time: &'a str,
    subject: &'a str,
    detail: String,
}

impl<'a> From<&'a LogEntry> for LogRow<'a> {
    fn from(l: &'a LogEntry) -> Self {
        Self {
            org: &l.org,
            type_: &l.type_,
            outcome: &l.outcome,
            time: &l.time,
            subject: &l.subject,
            detail: l.detail.to_string(),
        }
    }
}

/// A finished attempt for the batch statement.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FinishRow<'a> {
    id: &'a str,
    attempt: u32,
    started_at: i64,
    finished_at: i64,
    outcome: &'static str,
    reply: &'a str,
    provider: &'a str,
    state: &'static str,
    /// The retry's time, or the finish time of a final state.
    next_at: i64,
    log: Option<LogRow<'a>>,
}

impl<'a> From<&'a Finished> for FinishRow<'a> {
    fn from(f: &'a Finished) -> Self {
        let (state, next_at) = match f.next {
            Next::Sent => ("sent", f.finished_at),
            Next::Failed => ("failed", f.finished_at),
            Next::Retry(at) => ("retrying", at),
        };
        Self {
            id: &f.id,
            attempt: f.attempt,
            started_at: f.started_at,
            finished_at: f.finished_at,
            outcome: f.outcome.as_str(),
            reply: &f.reply,
            provider: &f.provider,
            state,
            next_at,
            log: f.log.as_ref().map(LogRow::from),
        }
    }
}

/// Rows as one JSON array, bound as a single parameter and read with
/// `json_each`.
fn rows_json<T: Serialize>(rows: &[T]) -> Result<String, QueueError> {
    serde_json::to_string(rows).map_err(|e| QueueError::Sql(format!("cannot encode rows: {e}")))
}

/// The bytes the database's pages in use hold (its pages less the free
/// ones), as an SQL expression.
macro_rules! used_bytes_sql {
    () => {
        "((SELECT page_count FROM pragma_page_count())
          - (SELECT freelist_count FROM pragma_freelist_count()))
         * (SELECT page_size FROM pragma_page_size())"
    };
}

/// A whole batch in one round trip to SQLite's thread: the statements
/// below over one JSON parameter, [`BatchInput`]: `messages` to insert,
/// `finishes` of attempts, and an optional `claim` (without one, nothing is
/// claimed). Two statements return a row, each one JSON array: first the
/// finishes that will take effect, then the claimed messages (beside them
/// the bytes the database's pages in use hold). (One parameter, because sqlx numbers the parameters of later statements
/// wrongly when one skips a number.)
///
/// A finish takes effect only while its attempt still holds the message
/// (`sending`, same attempt number); its delivery event is written, and
/// it is reported as applied, by the statements before the update, under
/// the same condition, so that event, answer and state change go
/// together. `+state` keeps the planner on the primary key (one lookup per
/// row) rather than scanning the `sending` rows. A message that is sent
/// or failed keeps its addresses and subject (what `GET` shows) but not
/// its bodies: mail from an identity platform carries reset links and
/// passcodes, which should not outlive their delivery by the retention
/// period, and the space goes to new mail. A message keeps at most four
/// attempt rows, the first three and the latest (a finish of attempt 5 or
/// later replaces the row of the one before): one that fails for days
/// (interrupted attempts do not count against `maxAttempts`) must not grow
/// without bound, least of all in a full store.
/// Attempts whose lease ran out (their process died) are closed as
/// interrupted and their messages queued again before the claim; a late
/// finish of such an attempt later replaces its row with the real reply.
///
/// The JSON is read once: the messages and the finishes are first copied
/// into the connection's temporary tables `batch_messages` and
/// `batch_finishes` (each row taken out as binary JSON in a materialized
/// CTE: reading fields straight from `json_each`'s `value` turned the whole
/// row into text and parsed it again for every field). The statements
/// after them are plain SQL over those tables.
macro_rules! batch_statements {
    () => {
        concat!(
            "
CREATE TEMP TABLE IF NOT EXISTS batch_messages (id, org, key, sender, brand, content, now,
    log_org, log_type, log_outcome, log_time, log_subject, log_detail);

CREATE TEMP TABLE IF NOT EXISTS batch_finishes (id, attempt, started_at, finished_at, outcome,
    reply, provider, state, next_at,
    log_org, log_type, log_outcome, log_time, log_subject, log_detail);

DELETE FROM temp.batch_messages;

DELETE FROM temp.batch_finishes;

WITH m(v) AS MATERIALIZED (SELECT jsonb(value) FROM json_each(?1, '$.messages'))
INSERT INTO temp.batch_messages
SELECT v->>'id', v->>'org', v->>'key', v->>'sender', v->>'brand', v->>'content', v->>'now',
       v->>'$.log.org', v->>'$.log.type', v->>'$.log.outcome', v->>'$.log.time',
       v->>'$.log.subject', v->>'$.log.detail'
FROM m;

WITH f(v) AS MATERIALIZED (SELECT jsonb(value) FROM json_each(?1, '$.finishes'))
INSERT INTO temp.batch_finishes
SELECT v->>'id', v->>'attempt', v->>'startedAt', v->>'finishedAt', v->>'outcome', v->>'reply',
       v->>'provider', v->>'state', v->>'nextAt',
       v->>'$.log.org', v->>'$.log.type', v->>'$.log.outcome', v->>'$.log.time',
       v->>'$.log.subject', v->>'$.log.detail'
FROM f;

INSERT INTO email_messages (id, org, idempotency_key, state, sender, brand, content,
                            next_attempt_at, due_at, created_at, updated_at)
SELECT id, org, key, 'queued', sender, brand, content, now, now, now, now
FROM temp.batch_messages;

INSERT INTO system_log (org, type, outcome, time, subject, detail)
SELECT log_org, log_type, log_outcome, log_time, log_subject, log_detail
FROM temp.batch_messages WHERE log_org IS NOT NULL;

DELETE FROM email_attempts
WHERE (message_id, number) IN (SELECT id, attempt - 1 FROM temp.batch_finishes WHERE attempt > 4);

INSERT INTO email_attempts (message_id, number, started_at, finished_at, outcome, reply, provider)
SELECT id, attempt, started_at, finished_at, outcome, reply, provider
FROM temp.batch_finishes WHERE true
ON CONFLICT (message_id, number) DO UPDATE SET finished_at = excluded.finished_at,
   outcome = excluded.outcome, reply = excluded.reply, provider = excluded.provider;

INSERT INTO system_log (org, type, outcome, time, subject, detail)
SELECT f.log_org, f.log_type, f.log_outcome, f.log_time, f.log_subject, f.log_detail
FROM temp.batch_finishes AS f CROSS JOIN email_messages AS m
WHERE m.id = f.id AND +m.state = 'sending' AND m.attempts = f.attempt
  AND f.log_org IS NOT NULL;

SELECT json_group_array(json_array(m.id, m.attempts))
FROM temp.batch_finishes AS f CROSS JOIN email_messages AS m
WHERE m.id = f.id AND +m.state = 'sending' AND m.attempts = f.attempt;

UPDATE email_messages SET state = f.state, next_attempt_at = f.next_at,
       due_at = CASE f.state WHEN 'retrying' THEN f.next_at END, lease_until = NULL,
       content = CASE WHEN f.state = 'retrying' OR NOT json_valid(content) THEN content
                 ELSE json_remove(content, '$.text', '$.html') END,
       finished_at = CASE f.state WHEN 'retrying' THEN NULL ELSE f.finished_at END,
       last_reply = f.reply, provider = f.provider, updated_at = f.finished_at
FROM temp.batch_finishes AS f
WHERE email_messages.id = f.id AND +email_messages.state = 'sending'
  AND email_messages.attempts = f.attempt;

INSERT INTO email_attempts (message_id, number, started_at, finished_at, outcome, reply)
SELECT id, attempts, COALESCE(attempt_started_at, ?1->>'$.claim.now'), ?1->>'$.claim.now',
       'interrupted', 'the attempt did not finish within its lease (process stopped?); retried'
FROM email_messages WHERE due_at <= ?1->>'$.claim.now' AND state = 'sending'
ON CONFLICT (message_id, number) DO UPDATE SET finished_at = excluded.finished_at,
   outcome = excluded.outcome, reply = excluded.reply
WHERE email_attempts.outcome IS NULL;

UPDATE email_messages SET state = 'queued', interrupted = interrupted + 1,
       next_attempt_at = ?1->>'$.claim.now', due_at = ?1->>'$.claim.now', lease_until = NULL,
       updated_at = ?1->>'$.claim.now'
WHERE due_at <= ?1->>'$.claim.now' AND state = 'sending';

UPDATE email_messages SET state = 'sending', attempts = attempts + 1,
       lease_until = ?1->>'$.claim.until', due_at = ?1->>'$.claim.until',
       attempt_started_at = ?1->>'$.claim.now', updated_at = ?1->>'$.claim.now',
       claim_token = ?1->>'$.claim.token'
WHERE id IN (SELECT id FROM email_messages
             WHERE due_at <= ?1->>'$.claim.now' AND state IN ('queued', 'retrying')
             ORDER BY due_at LIMIT COALESCE(?1->>'$.claim.limit', 0));

SELECT json_group_array(json_array(id, org, sender, content, attempts, interrupted, created_at)),
       ",
            used_bytes_sql!(),
            "
FROM email_messages
WHERE due_at = ?1->>'$.claim.until' AND claim_token = ?1->>'$.claim.token' AND state = 'sending';
"
        )
    };
}

/// The batch statements, in a transaction begun apart: for the batches
/// that also look up idempotency keys or make a second claim.
const BATCH_SQL: &str = batch_statements!();

/// The common batch, transaction included: one round trip to SQLite's
/// thread for `BEGIN`, the statements and `COMMIT`, where a transaction
/// begun and committed apart cost two more, each waiting for a thread
/// wake-up on a busy machine (with 16 API clients that was a third of the
/// throughput). A failure leaves the transaction open; the committer then
/// rolls it back.
const BATCH_TX_SQL: &str = concat!("BEGIN IMMEDIATE;\n", batch_statements!(), "\nCOMMIT;\n");

/// What one run of [`BATCH_SQL`] returned.
#[derive(Default)]
struct BatchRows {
    applied: HashSet<(String, i64)>,
    claimed: Vec<Claimed>,
    /// Bytes the database's pages in use hold, this batch's writes included.
    used_bytes: i64,
}

/// The parameter of [`BATCH_SQL`].
#[derive(Serialize)]
struct BatchInput<'a> {
    messages: &'a [MessageRow<'a>],
    finishes: &'a [FinishRow<'a>],
    claim: Option<ClaimInput>,
}

/// A claim; `token` marks the rows it takes so that one statement can read
/// them back (another claim in the same millisecond has the same lease
/// end).
#[derive(Serialize)]
struct ClaimInput {
    now: i64,
    until: i64,
    limit: usize,
    token: i64,
}

/// A claimed message as the batch statement aggregates it.
#[derive(Deserialize)]
struct ClaimedRow(String, String, String, String, i64, i64, i64);

async fn run_batch(
    conn: &mut SqliteConnection,
    sql: &'static str,
    input: &BatchInput<'_>,
) -> Result<BatchRows, QueueError> {
    let json = serde_json::to_string(input)
        .map_err(|e| QueueError::Sql(format!("cannot encode the batch: {e}")))?;
    let now = input.claim.as_ref().map_or(0, |c| c.now);
    // Several statements in one prepared query: sqlx 0.8 runs them for
    // SQLite (and deprecates it in favour of `raw_sql`, which takes no
    // parameters). One run costs one round trip to the connection's thread
    // instead of one per statement; on a busy machine each round trip waited for a
    // thread wake-up, and the batch's callers with it. For the same reason
    // the rows read back come aggregated, one JSON array per statement:
    // sqlx hands every row over between threads on its own.
    #[allow(deprecated)]
    let mut results = sqlx::query(sql).bind(json).fetch_many(&mut *conn);
    let mut out = BatchRows::default();
    let mut rows = 0;
    while let Some(item) = results.try_next().await? {
        let Either::Right(row) = item else {
            continue;
        };
        let array: String = row.try_get(0)?;
        let bad = |e: serde_json::Error| QueueError::Sql(format!("unreadable batch result: {e}"));
        match rows {
            0 => {
                let applied: Vec<(String, i64)> = serde_json::from_str(&array).map_err(bad)?;
                out.applied.extend(applied);
            }
            1 => {
                let claimed_rows: Vec<ClaimedRow> = serde_json::from_str(&array).map_err(bad)?;
                out.claimed
                    .extend(claimed_rows.into_iter().map(|r| claimed(r, now)));
                out.used_bytes = row.try_get(1)?;
            }
            _ => {}
        }
        rows += 1;
    }
    if rows != 2 {
        return Err(QueueError::Sql(format!(
            "the batch statements returned {rows} rows instead of 2"
        )));
    }
    Ok(out)
}

fn claimed(r: ClaimedRow, now: i64) -> Claimed {
    let ClaimedRow(id, org, sender, content, attempts, interrupted, created_at) = r;
    Claimed {
        id,
        org,
        sender,
        content: read_content(&content),
        attempt: attempts as u32,
        counted: (attempts - interrupted).max(1) as u32,
        created_at,
        started_at: now,
    }
}

/// Decides each insert against the idempotency keys (stored ones within
/// the window, and earlier ones of the same batch); `None` for a new
/// message, else the id the key already names. Only batches with keys pay
/// for the lookup.
async fn check_keys(
    conn: &mut SqliteConnection,
    inserts: &[Prepared],
) -> Result<Vec<Option<String>>, QueueError> {
    #[derive(Serialize)]
    struct KeyRow<'a> {
        org: &'a str,
        key: &'a str,
    }
    let keys: Vec<KeyRow> = inserts
        .iter()
        .filter_map(|p| {
            p.message.idempotency_key.as_deref().map(|key| KeyRow {
                org: &p.message.org,
                key,
            })
        })
        .collect();
    if keys.is_empty() {
        return Ok(vec![None; inserts.len()]);
    }
    // (org, key) → (id, created_at) of the message holding the key.
    let mut held: HashMap<(String, String), (String, i64)> = HashMap::new();
    // CROSS JOIN keeps json_each outside: one index lookup per key.
    let rows = sqlx::query(
        "SELECT m.org, m.idempotency_key, m.id, m.created_at
         FROM json_each(?) AS k CROSS JOIN email_messages AS m
         WHERE m.org = k.value->>'org' AND m.idempotency_key = k.value->>'key'
           AND m.idempotency_key IS NOT NULL",
    )
    .bind(rows_json(&keys)?)
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        held.insert((r.get(0), r.get(1)), (r.get(2), r.get(3)));
    }
    let mut answers = Vec::with_capacity(inserts.len());
    let mut released = Vec::new();
    for p in inserts {
        let m = &p.message;
        let Some(key) = &m.idempotency_key else {
            answers.push(None);
            continue;
        };
        let slot = (m.org.clone(), key.clone());
        match held.get(&slot) {
            Some((id, created)) if m.now - created < IDEMPOTENCY_WINDOW_MILLIS => {
                answers.push(Some(id.clone()));
                continue;
            }
            // Older than the window: the key is free again.
            Some((id, _)) => released.push(id.clone()),
            None => {}
        }
        held.insert(slot, (m.id.clone(), m.now));
        answers.push(None);
    }
    if !released.is_empty() {
        sqlx::query(
            "UPDATE email_messages SET idempotency_key = NULL
             WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(rows_json(&released)?)
        .execute(&mut *conn)
        .await?;
    }
    Ok(answers)
}

/// An insert with its content serialized by the caller.
struct Prepared {
    message: NewMessage,
    content: String,
}

/// A batch's operations sorted by kind, each with its caller's reply slot.
#[derive(Default)]
struct Batch {
    inserts: Vec<Prepared>,
    insert_replies: Vec<oneshot::Sender<Result<Inserted, QueueError>>>,
    finishes: Vec<Finished>,
    finish_replies: Vec<oneshot::Sender<Result<Applied, QueueError>>>,
    claims: Vec<(i64, i64, usize)>,
    claim_replies: Vec<oneshot::Sender<Result<Vec<Claimed>, QueueError>>>,
}

/// What a batch's operations answer, in the order of each kind.
struct Answers {
    /// Bytes the database's pages in use hold after the batch.
    used_bytes: i64,
    inserts: Vec<Result<Inserted, QueueError>>,
    finishes: Vec<Applied>,
    claims: Vec<Vec<Claimed>>,
}

impl Batch {
    fn push(&mut self, op: Op) {
        match op {
            Op::Insert(p, reply) => {
                self.inserts.push(*p);
                self.insert_replies.push(reply);
            }
            Op::Finish(f, reply) => {
                self.finishes.push(*f);
                self.finish_replies.push(reply);
            }
            Op::Claim {
                now,
                lease_until,
                limit,
                reply,
            } => {
                self.claims.push((now, lease_until, limit));
                self.claim_replies.push(reply);
            }
        }
    }

    fn len(&self) -> usize {
        self.inserts.len() + self.finishes.len() + self.claims.len()
    }

    /// Whether the batch is one run of the batch statements: no
    /// idempotency key to look up first, at most one claim.
    fn in_one_run(&self) -> bool {
        self.claims.len() <= 1
            && self
                .inserts
                .iter()
                .all(|p| p.message.idempotency_key.is_none())
    }

    /// The batch's writes: inserts, finishes, then the claim (which so sees
    /// the messages just inserted), in one statement run; a second claim in
    /// the same batch (rare: one dispatcher claims) runs on its own. New
    /// messages are written as `admit` says; a key already stored still
    /// answers its message.
    async fn write(
        &self,
        conn: &mut SqliteConnection,
        first_sql: &'static str,
        admit: &Admit,
    ) -> Result<Answers, QueueError> {
        let existing = check_keys(conn, &self.inserts).await?;
        let mut inserts = Vec::with_capacity(self.inserts.len());
        let mut rows = Vec::with_capacity(self.inserts.len());
        let mut room = match admit {
            Admit::Within { room, .. } => *room,
            _ => i64::MAX,
        };
        // Refused messages of this batch, with why.
        let mut refused: HashMap<String, QueueError> = HashMap::new();
        for (p, existing) in self.inserts.iter().zip(existing) {
            let m = &p.message;
            if let Some(id) = existing {
                // A key an earlier refused message of this batch took
                // names nothing stored.
                inserts.push(match refused.get(&id) {
                    Some(e) => Err(e.clone()),
                    None => Ok(Inserted::Existing(id)),
                });
                continue;
            }
            let refusal = match admit {
                Admit::All => None,
                Admit::Refuse(e) => Some(e),
                Admit::Within { full, .. } if footprint(p) > room => Some(full),
                Admit::Within { .. } => {
                    room -= footprint(p);
                    None
                }
            };
            if let Some(e) = refusal {
                refused.insert(m.id.clone(), e.clone());
                inserts.push(Err(e.clone()));
                continue;
            }
            rows.push(MessageRow {
                id: &m.id,
                org: &m.org,
                key: m.idempotency_key.as_deref(),
                sender: &m.sender,
                brand: m.brand.as_deref(),
                content: &p.content,
                now: m.now,
                log: m.log.as_ref().map(LogRow::from),
            });
            inserts.push(Ok(Inserted::New(m.id.clone())));
        }
        let finish_rows: Vec<FinishRow> = self.finishes.iter().map(FinishRow::from).collect();
        let claim = |&(now, until, limit): &(i64, i64, usize)| ClaimInput {
            now,
            until,
            limit,
            token: rand::random::<i64>(),
        };
        let first = run_batch(
            conn,
            first_sql,
            &BatchInput {
                messages: &rows,
                finishes: &finish_rows,
                claim: self.claims.first().map(claim),
            },
        )
        .await?;
        let finishes = self
            .finishes
            .iter()
            .map(|f| {
                first
                    .applied
                    .contains(&(f.id.clone(), i64::from(f.attempt)))
            })
            .collect();
        let mut used_bytes = first.used_bytes;
        let mut claims = Vec::with_capacity(self.claims.len());
        if !self.claims.is_empty() {
            claims.push(first.claimed);
        }
        for extra in self.claims.iter().skip(1) {
            let input = BatchInput {
                messages: &[],
                finishes: &[],
                claim: Some(claim(extra)),
            };
            let more = run_batch(conn, BATCH_SQL, &input).await?;
            used_bytes = more.used_bytes;
            claims.push(more.claimed);
        }
        Ok(Answers {
            used_bytes,
            inserts,
            finishes,
            claims,
        })
    }

    /// Answers every caller; with an error, the batch was rolled back.
    fn reply(self, answers: Result<Answers, QueueError>) {
        match answers {
            Ok(a) => {
                for (s, r) in self.insert_replies.into_iter().zip(a.inserts) {
                    let _ = s.send(r);
                }
                for (s, r) in self.finish_replies.into_iter().zip(a.finishes) {
                    let _ = s.send(Ok(r));
                }
                for (s, r) in self.claim_replies.into_iter().zip(a.claims) {
                    let _ = s.send(Ok(r));
                }
            }
            Err(e) => {
                for s in self.insert_replies {
                    let _ = s.send(Err(e.clone()));
                }
                for s in self.finish_replies {
                    let _ = s.send(Err(e.clone()));
                }
                for s in self.claim_replies {
                    let _ = s.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Which new messages a batch writes.
enum Admit {
    /// All of them (no cap).
    All,
    /// Those whose [`footprint`] fits in `room` bytes, in order; the rest
    /// are answered with `full`.
    Within { room: i64, full: QueueError },
    /// None: each is answered with this error.
    Refuse(QueueError),
}

/// The room a new message takes under a cap: its content, its recipients
/// once more (its delivery event lists them), and [`ROOM_PER_MESSAGE`].
fn footprint(p: &Prepared) -> i64 {
    let c = &p.message.content;
    let recipients: usize = c.to.iter().chain(&c.cc).map(|a| a.len() + 3).sum();
    i64::try_from(p.content.len() + recipients).unwrap_or(i64::MAX) + ROOM_PER_MESSAGE
}

impl Committer {
    /// Applies writes until every [`Queue`] handle is dropped.
    ///
    /// Every batch runs on the same connection (unless the pool has only
    /// one, which the readers need too): SQLite keeps a connection's page
    /// cache across its own transactions, while a different pooled
    /// connection per batch started cold and re-read the pages it touched.
    pub async fn run(mut self) {
        let keep = self.pool.options().get_max_connections() > 1;
        let mut held: Option<PoolConnection<Sqlite>> = None;
        let mut ops = Vec::with_capacity(MAX_BATCH);
        while self.ops.recv_many(&mut ops, MAX_BATCH).await > 0 {
            let mut batch = Batch::default();
            for op in ops.drain(..) {
                batch.push(op);
            }
            if !self.measured {
                match measure(&self.pool).await {
                    Ok((used, unfinished)) => {
                        (self.used_bytes, self.unfinished) = (used, unfinished);
                        self.measured = true;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot measure the message store; new mail waits")
                    }
                }
            }
            let conn = match held.take() {
                Some(c) => Ok(c),
                None => self.pool.acquire().await.map_err(QueueError::from),
            };
            let answers = match conn {
                Ok(mut conn) => {
                    let answers = self.apply(&mut conn, &batch).await;
                    if !keep {
                        // The pool's only connection (an in-memory store,
                        // whose data closing it would drop) goes back.
                    } else if answers.is_err() {
                        // Whatever state the failure left it in goes with it.
                        let _ = conn.close().await;
                    } else {
                        held = Some(conn);
                    }
                    answers
                }
                Err(e) => Err(e),
            };
            match &answers {
                Ok(a) => {
                    self.used_bytes = a.used_bytes;
                    self.unfinished += a.unfinished_change(&batch);
                }
                Err(e) => {
                    tracing::error!(error = %e, operations = batch.len(), "email queue write failed; batch rolled back");
                }
            }
            batch.reply(answers);
        }
    }

    /// The batch, with new messages admitted while they fit under the cap.
    /// When new messages meet a full disk (or the cap) beside other writes,
    /// the batch is written once more without them: new mail must not also
    /// stop the outcomes of attempts and the claims that drain the queue
    /// (an outcome not stored means the message is sent again after its
    /// lease).
    async fn apply(
        &self,
        conn: &mut SqliteConnection,
        batch: &Batch,
    ) -> Result<Answers, QueueError> {
        let e = match apply(conn, batch, &self.admission()).await {
            Ok(answers) => return Ok(answers),
            Err(e) => e,
        };
        rollback(conn).await;
        let others = !batch.finishes.is_empty() || !batch.claims.is_empty();
        if !matches!(e, QueueError::Full(_)) || batch.inserts.is_empty() || !others {
            return Err(e);
        }
        tracing::warn!(error = %e, new = batch.inserts.len(), "new messages do not fit in the store; writing the rest of the batch without them");
        let answers = apply(conn, batch, &Admit::Refuse(e)).await;
        if answers.is_err() {
            rollback(conn).await;
        }
        answers
    }

    /// Which new messages the next batch may write: all without a cap;
    /// under one, none until the store is measured, then those that fit.
    fn admission(&self) -> Admit {
        let Some(limit) = self.accept_limit else {
            return Admit::All;
        };
        if !self.measured {
            return Admit::Refuse(QueueError::Full(
                "its size could not be measured yet".into(),
            ));
        }
        Admit::Within {
            room: limit - self.used_bytes - self.unfinished * ROOM_PER_MESSAGE,
            full: QueueError::Full(format!(
                "{} MiB in use, and room kept for what {} unsent messages will still write; new mail is accepted up to {} MiB (9/10 of --database-max-size)",
                mib(self.used_bytes),
                self.unfinished,
                mib(limit)
            )),
        }
    }
}

impl Answers {
    /// How the batch changed the number of unfinished messages: new ones
    /// in, sent or failed ones out.
    fn unfinished_change(&self, batch: &Batch) -> i64 {
        let new = self
            .inserts
            .iter()
            .filter(|r| matches!(r, Ok(Inserted::New(_))))
            .count();
        let done = batch
            .finishes
            .iter()
            .zip(&self.finishes)
            .filter(|(f, applied)| **applied && !matches!(f.next, Next::Retry(_)))
            .count();
        new as i64 - done as i64
    }
}

/// Bytes in use and unfinished messages, when the committer starts.
async fn measure(pool: &SqlitePool) -> Result<(i64, i64), QueueError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        used_bytes_sql!(),
        ", (SELECT count(*) FROM email_messages WHERE due_at IS NOT NULL)"
    ))
    .fetch_one(pool)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

fn mib(bytes: i64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// Ends the transaction a failed batch left open; with none open (SQLite
/// rolls back on its own after some errors, SQLITE_FULL among them) this
/// fails harmlessly.
async fn rollback(conn: &mut SqliteConnection) {
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
}

/// One transaction for the whole batch. A failure (a full disk, a broken
/// file) rolls it back and every caller of the batch hears of it: an accept
/// answers 503, a finish is tried again. The transaction is begun and
/// committed as plain statements, not through sqlx's transaction guard:
/// after SQLite rolled back on its own (SQLITE_FULL at the commit), the
/// guard's own rollback fails and the connection believed it was still in
/// a transaction, refusing every later batch.
async fn apply(
    conn: &mut SqliteConnection,
    batch: &Batch,
    admit: &Admit,
) -> Result<Answers, QueueError> {
    if batch.in_one_run() {
        return batch.write(conn, BATCH_TX_SQL, admit).await;
    }
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let answers = batch.write(conn, BATCH_SQL, admit).await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, key: Option<&str>, now: i64) -> NewMessage {
        NewMessage {
            id: id.into(),
            org: "acme".into(),
            idempotency_key: key.map(str::to_string),
            sender: "a@example.com".into(),
            brand: None,
            content: Content {
                to: vec!["b@example.com".into()],
                cc: vec![],
                subject: "s".into(),
                text: Some("t".into()),
                html: None,
            },
            now,
            log: None,
        }
    }

    async fn queue() -> Queue {
        let store = crate::store::Store::memory().await.unwrap();
        let (queue, committer) = Queue::new(store.pool().clone(), None);
        tokio::spawn(committer.run());
        queue
    }

    #[tokio::test]
    async fn idempotency_window() {
        let q = queue().await;
        let day = IDEMPOTENCY_WINDOW_MILLIS;
        assert_eq!(
            q.insert(message("m1", Some("k"), 0)).await.unwrap(),
            Inserted::New("m1".into())
        );
        assert_eq!(
            q.insert(message("m2", Some("k"), day - 1)).await.unwrap(),
            Inserted::Existing("m1".into())
        );
        assert_eq!(
            q.insert(message("m3", Some("k"), day)).await.unwrap(),
            Inserted::New("m3".into())
        );
        assert_eq!(
            q.insert(message("m4", None, 0)).await.unwrap(),
            Inserted::New("m4".into())
        );
        assert!(q.get("acme", "m2").await.unwrap().is_none());
        assert!(q.get("other", "m1").await.unwrap().is_none());
    }

    /// A message with a body of `bytes` (random letters: SQLite stores
    /// text as it is, so the size on disk follows).
    fn big(id: &str, bytes: usize) -> NewMessage {
        use rand::Rng;
        let mut m = message(id, None, 0);
        let body: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(bytes)
            .map(char::from)
            .collect();
        m.content.text = Some(body);
        m
    }

    fn sent(id: &str, attempt: u32) -> Finished {
        Finished {
            id: id.into(),
            attempt,
            started_at: 10,
            finished_at: 20,
            outcome: Outcome::Sent,
            reply: "250 ok".into(),
            provider: "default".into(),
            next: Next::Sent,
            log: Some(LogEntry {
                org: "acme".into(),
                type_: "email.delivery".into(),
                outcome: "SUCCESS".into(),
                time: "t".into(),
                subject: id.into(),
                detail: serde_json::json!({}),
            }),
        }
    }

    /// The stored content of a message, as the queue keeps it.
    async fn stored_content(q: &Queue, id: &str) -> Value {
        let text: String = sqlx::query_scalar("SELECT content FROM email_messages WHERE id = ?")
            .bind(id)
            .fetch_one(&q.pool)
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Fills a store capped at 1 MiB with messages of `body` bytes, then
    /// delivers them all, each after five failed attempts with replies of
    /// the longest kept length (an outage's worth of writes), with delivery
    /// events as the worker writes them; returns the refusal that ended the
    /// filling.
    async fn fill_then_deliver(body: usize) -> QueueError {
        let dir = tempfile::tempdir().unwrap();
        let cap = crate::store::MIN_MAX_SIZE;
        let store = crate::store::Store::open(&dir.path().join("q.db"), Some(cap))
            .await
            .unwrap();
        let (q, committer) = Queue::new(store.pool().clone(), store.accept_limit());
        tokio::spawn(committer.run());
        let mut accepted = Vec::new();
        let refusal = loop {
            let id = format!("m{}", accepted.len());
            match q.insert(big(&id, body)).await {
                Ok(Inserted::New(id)) => accepted.push(id),
                Ok(other) => panic!("{other:?}"),
                Err(e) => break e,
            }
            assert!(accepted.len() < 5000, "1 MiB never filled");
        };
        assert!(accepted.len() >= 20, "{} accepted", accepted.len());
        assert!(
            q.get("acme", &format!("m{}", accepted.len()))
                .await
                .unwrap()
                .is_none(),
            "the refused message is not stored"
        );
        // Past the accept limit, the outcomes still go in: every message is
        // claimed, fails five times, is claimed again and sent.
        let reply = format!(
            "451 4.3.0 {}",
            "x".repeat(crate::email::worker::MAX_STORED_REPLY - 10)
        );
        for round in 0..6 {
            let now = round * 100;
            let mut done = 0;
            while done < accepted.len() {
                let claimed = q.claim(now, now + 50, 32).await.unwrap();
                assert!(
                    !claimed.is_empty(),
                    "round {round}: claims stopped at {done}"
                );
                for c in claimed {
                    let mut f = sent(&c.id, c.attempt);
                    f.started_at = now;
                    f.finished_at = now + 1;
                    if round < 5 {
                        (f.outcome, f.reply, f.next) =
                            (Outcome::Transient, reply.clone(), Next::Retry(now + 100));
                        f.log = None;
                    } else if let Some(log) = &mut f.log {
                        log.detail = serde_json::json!({
                            "messageId": c.id, "from": "Acme Mail <noreply@acme.example>",
                            "to": ["someone.with.a.long.name@customer.example"], "cc": [],
                            "attempts": 6, "provider": "EmailProvider acme/corp",
                            "reply": "250 2.0.0 Ok: queued as 4B1C2D3E4F",
                        });
                    }
                    assert!(q.finish(f).await.unwrap(), "round {round}: {}", c.id);
                    done += 1;
                }
            }
        }
        for id in &accepted {
            let m = q.get("acme", id).await.unwrap().unwrap();
            let numbers: Vec<u32> = m.attempts.iter().map(|a| a.number).collect();
            assert_eq!(
                (m.state.as_str(), numbers),
                ("sent", vec![1, 2, 3, 6]),
                "{id}"
            );
            assert_eq!(m.content.unwrap().subject, "s", "what GET shows is kept");
            assert_eq!(stored_content(&q, id).await["text"], Value::Null, "{id}");
        }
        assert_eq!(q.events_about("acme", &accepted[0]).await.unwrap().len(), 1);
        // With the mail sent, new mail fits again.
        assert_eq!(
            q.insert(big("again", body)).await.unwrap(),
            Inserted::New("again".into())
        );
        refusal
    }

    #[tokio::test]
    async fn a_full_store_refuses_new_mail_and_still_stores_outcomes() {
        for body in [300, 1500, 16 * 1024] {
            let refusal = fill_then_deliver(body).await;
            let QueueError::Full(reason) = &refusal else {
                panic!("{body}: {refusal:?}");
            };
            assert!(
                reason.contains("new mail is accepted up to 0.9 MiB (9/10 of --database-max-size)"),
                "{body}: {reason}"
            );
        }
    }

    #[tokio::test]
    async fn a_store_reopened_full_refuses_new_mail_before_any_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let cap = crate::store::MIN_MAX_SIZE;
        {
            let store = crate::store::Store::open(&path, Some(cap)).await.unwrap();
            let (q, committer) = Queue::new(store.pool().clone(), store.accept_limit());
            let committer = tokio::spawn(committer.run());
            let mut n = 0;
            while q.insert(big(&format!("m{n}"), 4096)).await.is_ok() {
                n += 1;
            }
            drop(q);
            committer.await.unwrap();
            store.pool().close().await;
        }
        let store = crate::store::Store::open(&path, Some(cap)).await.unwrap();
        let (q, committer) = Queue::new(store.pool().clone(), store.accept_limit());
        tokio::spawn(committer.run());
        let err = q.insert(big("after", 4096)).await.unwrap_err();
        assert!(
            matches!(&err, QueueError::Full(r) if r.contains("unsent messages will still write")),
            "measured at start, not met as SQLITE_FULL: {err:?}"
        );
    }

    #[tokio::test]
    async fn new_mail_that_fills_the_disk_does_not_take_the_batch_outcomes_with_it() {
        // No accept limit: the insert meets SQLite's own SQLITE_FULL, as on
        // a full disk.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("q.db"), Some(1024 * 1024))
            .await
            .unwrap();
        let (q, committer) = Queue::new(store.pool().clone(), None);
        tokio::spawn(committer.run());
        q.insert(message("small", None, 0)).await.unwrap();
        let c = q.claim(0, 1_000, 1).await.unwrap();
        // Both wait in the channel when the committer (on this test's one
        // thread) next runs: one batch.
        let (huge, finish) = tokio::join!(q.insert(big("huge", 2 * 1024 * 1024)), async {
            q.finish(sent("small", c[0].attempt)).await
        });
        let err = huge.unwrap_err();
        assert!(
            matches!(&err, QueueError::Full(r) if r.contains("database or disk is full")),
            "{err:?}"
        );
        assert!(finish.unwrap(), "the finish in the same batch took effect");
        assert_eq!(q.get("acme", "small").await.unwrap().unwrap().state, "sent");
        assert!(q.get("acme", "huge").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn claim_lease_expiry_and_stale_finish() {
        let q = queue().await;
        q.insert(message("m1", None, 100)).await.unwrap();
        assert!(
            q.claim(99, 1_000, 10).await.unwrap().is_empty(),
            "not due yet"
        );
        assert_eq!(q.next_due().await.unwrap(), Some(100));
        let first = q.claim(100, 1_000, 10).await.unwrap();
        assert_eq!((first.len(), first[0].attempt, first[0].counted), (1, 1, 1));
        let running = q.get("acme", "m1").await.unwrap().unwrap();
        assert_eq!(running.state, "sending");
        assert_eq!(running.attempts.len(), 1, "the running attempt is shown");
        assert_eq!(
            (
                running.attempts[0].started_at,
                running.attempts[0].outcome.as_deref()
            ),
            (100, None)
        );
        assert!(q.claim(500, 1_500, 10).await.unwrap().is_empty(), "leased");
        assert_eq!(q.next_due().await.unwrap(), Some(1_000));
        // The lease runs out: the attempt is closed as interrupted and the
        // message taken again; the interrupted attempt does not count.
        let second = q.claim(1_000, 2_000, 10).await.unwrap();
        assert_eq!((second[0].attempt, second[0].counted), (2, 1));
        let finished = |attempt, next| Finished {
            id: "m1".into(),
            attempt,
            started_at: 1_000,
            finished_at: 1_100,
            outcome: Outcome::Sent,
            reply: "250 ok".into(),
            provider: "default".into(),
            next,
            log: Some(LogEntry {
                org: "acme".into(),
                type_: "email.delivery".into(),
                outcome: "SUCCESS".into(),
                time: "t".into(),
                subject: "m1".into(),
                detail: serde_json::json!({}),
            }),
        };
        assert!(
            !q.finish(finished(1, Next::Sent)).await.unwrap(),
            "the stale attempt does not decide"
        );
        assert!(q.finish(finished(2, Next::Sent)).await.unwrap());
        let m = q.get("acme", "m1").await.unwrap().unwrap();
        assert_eq!(m.state, "sent");
        let outcomes: Vec<_> = m
            .attempts
            .iter()
            .map(|a| a.outcome.clone().unwrap())
            .collect();
        assert_eq!(
            outcomes,
            ["sent", "sent"],
            "the late attempt's reply is kept"
        );
        assert_eq!(
            q.events_about("acme", "m1").await.unwrap().len(),
            1,
            "one event"
        );
        assert_eq!(q.pending_by_org().await.unwrap().get("acme"), None);
        assert_eq!(q.next_due().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_released_claim_is_due_again_as_before() {
        let q = queue().await;
        q.insert(message("m1", None, 100)).await.unwrap();
        q.insert(message("m2", None, 100)).await.unwrap();
        assert_eq!(q.claim(200, 10_000, 10).await.unwrap().len(), 2);
        // m2's attempt 7 does not hold it: no release.
        let released = q
            .release(&[("m1".into(), 1), ("m2".into(), 7)], 300)
            .await
            .unwrap();
        assert_eq!(released, 1);
        let m1 = q.get("acme", "m1").await.unwrap().unwrap();
        assert_eq!(m1.state, "queued");
        assert!(m1.attempts.is_empty(), "a release is no attempt");
        assert_eq!(q.get("acme", "m2").await.unwrap().unwrap().state, "sending");
        assert_eq!(q.next_due().await.unwrap(), Some(100), "due as before");
        let again = q.claim(300, 10_000, 10).await.unwrap();
        let taken: Vec<_> = again.iter().map(|c| (c.id.as_str(), c.attempt)).collect();
        assert_eq!(taken, [("m1", 1)]);
        // A message retrying when claimed goes back to retrying.
        let transient = Finished {
            id: "m1".into(),
            attempt: 1,
            started_at: 300,
            finished_at: 310,
            outcome: Outcome::Transient,
            reply: "451 later".into(),
            provider: "default".into(),
            next: Next::Retry(400),
            log: None,
        };
        assert!(q.finish(transient).await.unwrap());
        let second = q.claim(400, 10_000, 10).await.unwrap();
        assert_eq!(second[0].attempt, 2);
        assert_eq!(q.release(&[("m1".into(), 2)], 410).await.unwrap(), 1);
        let m1 = q.get("acme", "m1").await.unwrap().unwrap();
        assert_eq!((m1.state.as_str(), m1.attempts.len()), ("retrying", 1));
        assert_eq!(q.claim(410, 10_000, 10).await.unwrap()[0].attempt, 2);
    }

    #[tokio::test]
    async fn one_batch_keys_finishes_and_claim() {
        let q = queue().await;
        // Both inserts reach the committer before it runs: one batch, in
        // which the second use of the key answers with the first id.
        let (a, b, c) = tokio::join!(
            q.insert(message("m1", Some("k"), 0)),
            q.insert(message("m2", Some("k"), 1)),
            q.insert(message("m3", None, 2)),
        );
        assert_eq!(a.unwrap(), Inserted::New("m1".into()));
        assert_eq!(b.unwrap(), Inserted::Existing("m1".into()));
        assert_eq!(c.unwrap(), Inserted::New("m3".into()));
        let claimed = q.claim(10, 1_000, 10).await.unwrap();
        let ids: Vec<&str> = claimed.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["m1", "m3"], "due order");
        let done = |id: &str, next| Finished {
            id: id.into(),
            attempt: 1,
            started_at: 10,
            finished_at: 20,
            outcome: Outcome::Sent,
            reply: "250 ok".into(),
            provider: "default".into(),
            next,
            log: None,
        };
        // Two finishes and a claim in one batch: the retried message is not
        // due yet, so the claim takes nothing.
        let (f1, f3, again) = tokio::join!(
            q.finish(done("m1", Next::Sent)),
            q.finish(done("m3", Next::Retry(500))),
            q.claim(30, 1_000, 10),
        );
        assert!(f1.unwrap() && f3.unwrap());
        assert!(again.unwrap().is_empty());
        assert_eq!(q.next_due().await.unwrap(), Some(500));
        assert_eq!(q.get("acme", "m1").await.unwrap().unwrap().state, "sent");
        assert_eq!(
            q.get("acme", "m3").await.unwrap().unwrap().state,
            "retrying"
        );
        assert_eq!(q.pending_by_org().await.unwrap().get("acme"), Some(&1));
    }

    #[tokio::test]
    async fn failed_batch_is_rolled_back_and_the_queue_goes_on() {
        let q = queue().await;
        q.insert(message("m1", None, 0)).await.unwrap();
        // One batch (both reach the committer before it runs) with an id
        // that is taken: the batch fails as a whole, m2 included.
        let (m2, again) = tokio::join!(
            q.insert(message("m2", None, 1)),
            q.insert(message("m1", None, 1)),
        );
        assert!(m2.is_err() && again.is_err());
        assert!(q.get("acme", "m2").await.unwrap().is_none());
        // The failed batch's transaction did not stay open: the next batch
        // begins its own and commits.
        assert_eq!(
            q.insert(message("m3", None, 2)).await.unwrap(),
            Inserted::New("m3".into())
        );
        let claimed = q.claim(10, 1_000, 10).await.unwrap();
        let ids: Vec<&str> = claimed.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["m1", "m3"]);
    }

    /// A row whose content this version cannot read (written by another
    /// version, or edited by hand) is claimed with the reason instead of
    /// failing the batch: before, every claim's batch failed on it, and
    /// the accepts and outcomes in those batches with it, for good.
    #[tokio::test]
    async fn an_unreadable_row_is_claimed_with_the_reason_and_stops_nothing() {
        let q = queue().await;
        q.insert(message("m1", None, 0)).await.unwrap();
        q.insert(message("m2", None, 1)).await.unwrap();
        sqlx::query("UPDATE email_messages SET content = '{\"recipients\":[]}' WHERE id = 'm1'")
            .execute(&q.pool)
            .await
            .unwrap();
        // The claim and a new message in one batch.
        let (claimed, m3) = tokio::join!(q.claim(10, 1_000, 10), q.insert(message("m3", None, 2)));
        assert_eq!(m3.unwrap(), Inserted::New("m3".into()));
        let claimed = claimed.unwrap();
        let ids: Vec<&str> = claimed.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            ["m1", "m2", "m3"],
            "the batch's new message is due too"
        );
        let reason = claimed[0].content.as_ref().unwrap_err();
        assert_eq!(
            reason,
            "the stored message cannot be read: missing field `to` at line 1 column 17"
        );
        assert_eq!(claimed[1].content.as_ref().unwrap().subject, "s");
        let shown = q.get("acme", "m1").await.unwrap().unwrap();
        assert_eq!(shown.state, "sending");
        assert_eq!(shown.content.as_ref().unwrap_err(), reason);

        // Not JSON at all: claimed the same way, and its failure is stored
        // (the finish leaves such content as it is) beside new mail.
        q.insert(message("m4", None, 3)).await.unwrap();
        sqlx::query("UPDATE email_messages SET content = 'not json {' WHERE id = 'm4'")
            .execute(&q.pool)
            .await
            .unwrap();
        let claimed = q.claim(20, 1_000, 10).await.unwrap();
        let m4 = claimed.iter().find(|c| c.id == "m4").unwrap();
        let reason = m4.content.as_ref().unwrap_err();
        assert!(
            reason.starts_with("the stored message cannot be read: expected"),
            "{reason}"
        );
        let failed = Finished {
            id: "m4".into(),
            attempt: 1,
            started_at: 20,
            finished_at: 21,
            outcome: Outcome::Permanent,
            reply: reason.clone(),
            provider: "EmailProvider/corp".into(),
            next: Next::Failed,
            log: None,
        };
        let (finish, m5) = tokio::join!(q.finish(failed), q.insert(message("m5", None, 21)));
        assert!(finish.unwrap(), "the failure is stored");
        assert_eq!(m5.unwrap(), Inserted::New("m5".into()));
        assert_eq!(q.get("acme", "m4").await.unwrap().unwrap().state, "failed");
    }

    /// The batch's answers are read by position; statements that return
    /// other than exactly two rows (a statement edited, one lost) make an
    /// error, never a batch answered from the wrong rows.
    #[tokio::test]
    async fn batch_rows_other_than_two_are_an_error() {
        let store = crate::store::Store::memory().await.unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        let input = BatchInput {
            messages: &[],
            finishes: &[],
            claim: None,
        };
        for (sql, rows) in [
            ("SELECT json_array() WHERE json_valid(?1);", 1),
            (
                "SELECT json_array() WHERE json_valid(?1); SELECT json_array(), 0; SELECT json_array();",
                3,
            ),
        ] {
            let e = run_batch(&mut conn, sql, &input).await.err().unwrap();
            assert_eq!(
                e.to_string(),
                QueueError::Sql(format!(
                    "the batch statements returned {rows} rows instead of 2"
                ))
                .to_string()
            );
        }
        let two = "SELECT json_array() WHERE json_valid(?1); SELECT json_array(), 4096;";
        let rows = run_batch(&mut conn, two, &input).await.unwrap();
        assert!(rows.applied.is_empty() && rows.claimed.is_empty());
        assert_eq!(rows.used_bytes, 4096);
    }

    #[tokio::test]
    async fn retry_waits_until_due() {
        let q = queue().await;
        q.insert(message("m1", None, 0)).await.unwrap();
        q.claim(0, 10_000, 1).await.unwrap();
        let f = Finished {
            id: "m1".into(),
            attempt: 1,
            started_at: 0,
            finished_at: 10,
            outcome: Outcome::Transient,
            reply: "451 later".into(),
            provider: "EmailProvider/corp".into(),
            next: Next::Retry(500),
            log: None,
        };
        assert!(q.finish(f).await.unwrap());
        assert_eq!(q.next_due().await.unwrap(), Some(500));
        assert!(q.claim(499, 10_000, 1).await.unwrap().is_empty());
        let again = q.claim(500, 10_000, 1).await.unwrap();
        assert_eq!((again[0].attempt, again[0].counted), (2, 2));
        let totals = q.provider_totals().await.unwrap();
        assert_eq!(totals[0].retried, 1);

        // The second attempt fails for good: a failure, not a retry (the
        // live count has 1 retried, 1 failed; so must a restart).
        let f = Finished {
            id: "m1".into(),
            attempt: 2,
            started_at: 500,
            finished_at: 520,
            outcome: Outcome::Transient,
            reply: "451 still later".into(),
            provider: "EmailProvider/corp".into(),
            next: Next::Failed,
            log: None,
        };
        assert!(q.finish(f).await.unwrap());
        let t = &q.provider_totals().await.unwrap()[0];
        assert_eq!((t.retried, t.failed, t.sent), (1, 1, 0));
        assert_eq!(t.last_failure, Some((520, "451 still later".into())));
    }

    #[tokio::test]
    async fn the_latest_test_email_of_each_provider_is_found() {
        let q = queue().await;
        let test = |org: &str, subject: &str, outcome: &str, time: &str| LogEntry {
            org: org.into(),
            type_: "email.test".into(),
            outcome: outcome.into(),
            time: time.into(),
            subject: subject.into(),
            detail: serde_json::json!({"to": "ops@acme.example", "reply": outcome}),
        };
        for log in [
            test("acme", "EmailProvider/corp", "FAILURE", "t1"),
            test("acme", "EmailProvider/corp", "SUCCESS", "t2"),
            test("acme", "default", "SUCCESS", "t3"),
            test("beta", "EmailProvider/corp", "FAILURE", "t4"),
        ] {
            q.log(&log).await.unwrap();
        }
        let mut found: Vec<(String, String, String, String)> = q
            .last_tests()
            .await
            .unwrap()
            .into_iter()
            .map(|(org, name, log)| (org, name, log.outcome, log.time))
            .collect();
        found.sort();
        let want = [
            ("acme", "corp", "SUCCESS", "t2"),
            ("beta", "corp", "FAILURE", "t4"),
        ];
        let want: Vec<(String, String, String, String)> = want
            .iter()
            .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
            .collect();
        assert_eq!(found, want);
    }
}
