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
//! each caller still hears back only after its own write is durable.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use sqlx::sqlite::SqlitePool;
use sqlx::{Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::message::Content;

/// Idempotency keys are honoured this long.
pub const IDEMPOTENCY_WINDOW_MILLIS: i64 = 24 * 3600 * 1000;

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 512;

/// Errors of the queue.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("the message store failed: {0}")]
    Sql(String),
    #[error("stored message {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("the message store is shutting down")]
    Closed,
}

impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
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

/// A message taken for one delivery attempt.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: String,
    pub org: String,
    pub sender: String,
    pub content: Content,
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
    Insert(NewMessage, oneshot::Sender<Result<Inserted, QueueError>>),
    Claim {
        now: i64,
        lease_until: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Claimed>, QueueError>>,
    },
    Finish(Finished, oneshot::Sender<Result<Applied, QueueError>>),
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
}

impl Queue {
    /// A queue over `pool` and its committer, which the caller spawns.
    pub fn new(pool: SqlitePool) -> (Self, Committer) {
        let (tx, rx) = mpsc::channel(8192);
        (
            Self {
                ops: tx,
                pool: pool.clone(),
            },
            Committer { ops: rx, pool },
        )
    }

    pub async fn insert(&self, message: NewMessage) -> Result<Inserted, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Insert(message, tx))
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
            .send(Op::Finish(finished, tx))
            .await
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// The earliest time something becomes due: a queued or retrying
    /// message, or a lease running out.
    pub async fn next_due(&self) -> Result<Option<i64>, QueueError> {
        let row = sqlx::query(
            "SELECT MIN(t) FROM (
                SELECT MIN(next_attempt_at) AS t FROM email_messages WHERE state IN ('queued', 'retrying')
                UNION ALL
                SELECT MIN(lease_until) AS t FROM email_messages WHERE state = 'sending')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<Option<i64>, _>(0))
    }

    /// One message of an org with its attempts.
    pub async fn get(&self, org: &str, id: &str) -> Result<Option<StoredMessage>, QueueError> {
        let Some(row) = sqlx::query(
            "SELECT id, org, state, sender, brand, content, attempts, next_attempt_at, created_at,
                    finished_at, last_reply, provider, idempotency_key
             FROM email_messages WHERE org = ? AND id = ?",
        )
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let content: String = row.get(5);
        let content = serde_json::from_str(&content).map_err(|e| QueueError::Corrupt {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        let attempts = sqlx::query(
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
        Ok(Some(StoredMessage {
            id: row.get(0),
            org: row.get(1),
            state: row.get(2),
            sender: row.get(3),
            brand: row.get(4),
            content,
            attempt_count: row.get::<i64, _>(6) as u32,
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
            "SELECT org, COUNT(*) FROM email_messages
             WHERE state IN ('queued', 'sending', 'retrying') GROUP BY org",
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
        let rows = sqlx::query(
            "SELECT org, provider,
                    SUM(state = 'sent'), SUM(state = 'failed'),
                    SUM(CASE WHEN state = 'sent' THEN finished_at - created_at ELSE 0 END),
                    MAX(CASE WHEN state = 'sent' THEN finished_at END)
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
                retried: 0,
            })
            .collect();
        let retried = sqlx::query(
            "SELECT m.org, a.provider, COUNT(*) FROM email_attempts a
             JOIN email_messages m ON m.id = a.message_id
             WHERE a.outcome = 'transient' AND a.provider LIKE 'EmailProvider/%'
             GROUP BY m.org, a.provider",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in retried {
            let (org, provider): (String, String) = (r.get(0), r.get(1));
            let n = r.get::<i64, _>(2) as u64;
            match out
                .iter_mut()
                .find(|t| t.org == org && t.provider == provider)
            {
                Some(t) => t.retried = n,
                None => out.push(ProviderTotals {
                    org,
                    provider,
                    retried: n,
                    ..Default::default()
                }),
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
    pub content: Content,
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

async fn insert(conn: &mut SqliteConnection, m: &NewMessage) -> Result<Inserted, QueueError> {
    if let Some(key) = &m.idempotency_key {
        let existing = sqlx::query(
            "SELECT id, created_at FROM email_messages WHERE org = ? AND idempotency_key = ?",
        )
        .bind(&m.org)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = existing {
            let id: String = row.get(0);
            let created: i64 = row.get(1);
            if m.now - created < IDEMPOTENCY_WINDOW_MILLIS {
                return Ok(Inserted::Existing(id));
            }
            // Older than the window: the key is free again.
            sqlx::query("UPDATE email_messages SET idempotency_key = NULL WHERE id = ?")
                .bind(&id)
                .execute(&mut *conn)
                .await?;
        }
    }
    let content = serde_json::to_string(&m.content).map_err(|e| QueueError::Corrupt {
        id: m.id.clone(),
        reason: e.to_string(),
    })?;
    sqlx::query(
        "INSERT INTO email_messages (id, org, idempotency_key, state, sender, brand, content,
                                     next_attempt_at, created_at, updated_at)
         VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
    )
    .bind(&m.id)
    .bind(&m.org)
    .bind(&m.idempotency_key)
    .bind(&m.sender)
    .bind(&m.brand)
    .bind(content)
    .bind(m.now)
    .bind(m.now)
    .bind(m.now)
    .execute(&mut *conn)
    .await?;
    if let Some(log) = &m.log {
        insert_log(conn, log).await?;
    }
    Ok(Inserted::New(m.id.clone()))
}

async fn claim(
    conn: &mut SqliteConnection,
    now: i64,
    lease_until: i64,
    limit: usize,
) -> Result<Vec<Claimed>, QueueError> {
    // Attempts whose process died: close them, queue the message again.
    let expired: Vec<String> = sqlx::query(
        "UPDATE email_messages SET state = 'queued', interrupted = interrupted + 1,
                next_attempt_at = ?, lease_until = NULL, updated_at = ?
         WHERE state = 'sending' AND lease_until <= ? RETURNING id",
    )
    .bind(now)
    .bind(now)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| r.get(0))
    .collect();
    for id in &expired {
        sqlx::query(
            "UPDATE email_attempts SET outcome = 'interrupted', finished_at = ?,
                    reply = 'the attempt did not finish within its lease (process stopped?); retried'
             WHERE message_id = ? AND outcome IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    let rows = sqlx::query(
        "UPDATE email_messages SET state = 'sending', attempts = attempts + 1, lease_until = ?,
                updated_at = ?
         WHERE id IN (SELECT id FROM email_messages
                      WHERE state IN ('queued', 'retrying') AND next_attempt_at <= ?
                      ORDER BY next_attempt_at LIMIT ?)
         RETURNING id, org, sender, content, attempts, interrupted, created_at",
    )
    .bind(lease_until)
    .bind(now)
    .bind(now)
    .bind(limit as i64)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.get(0);
        let attempts: i64 = r.get(4);
        let interrupted: i64 = r.get(5);
        sqlx::query(
            "INSERT OR REPLACE INTO email_attempts (message_id, number, started_at) VALUES (?, ?, ?)",
        )
        .bind(&id)
        .bind(attempts)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let content: String = r.get(3);
        let content = serde_json::from_str(&content).map_err(|e| QueueError::Corrupt {
            id: id.clone(),
            reason: e.to_string(),
        })?;
        out.push(Claimed {
            id,
            org: r.get(1),
            sender: r.get(2),
            content,
            attempt: attempts as u32,
            counted: (attempts - interrupted).max(1) as u32,
            created_at: r.get(6),
            started_at: now,
        });
    }
    Ok(out)
}

async fn finish(conn: &mut SqliteConnection, f: &Finished) -> Result<Applied, QueueError> {
    sqlx::query(
        "UPDATE email_attempts SET finished_at = ?, outcome = ?, reply = ?, provider = ?
         WHERE message_id = ? AND number = ?",
    )
    .bind(f.finished_at)
    .bind(f.outcome.as_str())
    .bind(&f.reply)
    .bind(&f.provider)
    .bind(&f.id)
    .bind(i64::from(f.attempt))
    .execute(&mut *conn)
    .await?;
    let (state, next_at, finished_at) = match f.next {
        Next::Sent => ("sent", f.finished_at, Some(f.finished_at)),
        Next::Failed => ("failed", f.finished_at, Some(f.finished_at)),
        Next::Retry(at) => ("retrying", at, None),
    };
    let applied = sqlx::query(
        "UPDATE email_messages SET state = ?, next_attempt_at = ?, lease_until = NULL,
                finished_at = ?, last_reply = ?, provider = ?, updated_at = ?
         WHERE id = ? AND state = 'sending' AND attempts = ?",
    )
    .bind(state)
    .bind(next_at)
    .bind(finished_at)
    .bind(&f.reply)
    .bind(&f.provider)
    .bind(f.finished_at)
    .bind(&f.id)
    .bind(i64::from(f.attempt))
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if applied && let Some(log) = &f.log {
        insert_log(conn, log).await?;
    }
    Ok(applied)
}

enum Reply {
    Insert(
        oneshot::Sender<Result<Inserted, QueueError>>,
        Result<Inserted, QueueError>,
    ),
    Claim(
        oneshot::Sender<Result<Vec<Claimed>, QueueError>>,
        Result<Vec<Claimed>, QueueError>,
    ),
    Finish(
        oneshot::Sender<Result<Applied, QueueError>>,
        Result<Applied, QueueError>,
    ),
}

impl Reply {
    fn is_err(&self) -> bool {
        match self {
            Self::Insert(_, r) => r.is_err(),
            Self::Claim(_, r) => r.is_err(),
            Self::Finish(_, r) => r.is_err(),
        }
    }

    /// Answers the caller; with `failed`, the batch was rolled back.
    fn send(self, failed: Option<&QueueError>) {
        match (self, failed) {
            (Self::Insert(s, _), Some(e)) => drop(s.send(Err(e.clone()))),
            (Self::Insert(s, r), None) => drop(s.send(r)),
            (Self::Claim(s, _), Some(e)) => drop(s.send(Err(e.clone()))),
            (Self::Claim(s, r), None) => drop(s.send(r)),
            (Self::Finish(s, _), Some(e)) => drop(s.send(Err(e.clone()))),
            (Self::Finish(s, r), None) => drop(s.send(r)),
        }
    }
}

impl Committer {
    /// Applies writes until every [`Queue`] handle is dropped.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while self.ops.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.apply(std::mem::take(&mut batch)).await;
        }
    }

    /// One transaction for the whole batch. A failure (a full disk, a broken
    /// file) rolls it back and every caller of the batch hears of it: an
    /// accept answers 503, a finish is redone after the lease.
    async fn apply(&self, ops: Vec<Op>) {
        let mut replies = Vec::with_capacity(ops.len());
        let mut failure: Option<QueueError> = None;
        match self.pool.begin_with("BEGIN IMMEDIATE").await {
            Err(e) => failure = Some(e.into()),
            Ok(mut tx) => {
                for op in ops {
                    let reply = if failure.is_some() {
                        // Rolled back anyway: do not run it.
                        match op {
                            Op::Insert(_, s) => Reply::Insert(s, Err(QueueError::Closed)),
                            Op::Claim { reply, .. } => Reply::Claim(reply, Err(QueueError::Closed)),
                            Op::Finish(_, s) => Reply::Finish(s, Err(QueueError::Closed)),
                        }
                    } else {
                        match op {
                            Op::Insert(m, s) => Reply::Insert(s, insert(&mut tx, &m).await),
                            Op::Claim {
                                now,
                                lease_until,
                                limit,
                                reply,
                            } => Reply::Claim(reply, claim(&mut tx, now, lease_until, limit).await),
                            Op::Finish(f, s) => Reply::Finish(s, finish(&mut tx, &f).await),
                        }
                    };
                    if reply.is_err() && failure.is_none() {
                        failure = Some(match &reply {
                            Reply::Insert(_, Err(e))
                            | Reply::Claim(_, Err(e))
                            | Reply::Finish(_, Err(e)) => e.clone(),
                            _ => QueueError::Closed,
                        });
                    }
                    replies.push(reply);
                }
                if failure.is_none()
                    && let Err(e) = tx.commit().await
                {
                    failure = Some(e.into());
                }
            }
        }
        if let Some(e) = &failure {
            tracing::error!(error = %e, operations = replies.len(), "email queue write failed; batch rolled back");
        }
        for r in replies {
            r.send(failure.as_ref());
        }
    }
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
        let (queue, committer) = Queue::new(store.pool().clone());
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
        assert!(q.claim(500, 1_500, 10).await.unwrap().is_empty(), "leased");
        assert_eq!(q.next_due().await.unwrap(), Some(1_000));
        // The lease runs out: the attempt is closed as interrupted and the
        // message taken again; the interrupted attempt does not count.
        let second = q.claim(1_000, 2_000, 10).await.unwrap();
        assert_eq!((second[0].attempt, second[0].counted), (2, 1));
        let finished = |attempt, next| Finished {
            id: "m1".into(),
            attempt,
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
    async fn retry_waits_until_due() {
        let q = queue().await;
        q.insert(message("m1", None, 0)).await.unwrap();
        q.claim(0, 10_000, 1).await.unwrap();
        let f = Finished {
            id: "m1".into(),
            attempt: 1,
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
    }
}
