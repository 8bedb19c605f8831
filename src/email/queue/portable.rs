//! The queue's statements that both backends run as they are: written
//! once, with `$1…` placeholders, and run on whichever pool the store has
//! ([`on_pool!`]). The reads (a message with its attempts, its events,
//! what is pending, the delivery totals, the last test emails, the next
//! due time), the brand-domain rows, the retention purge and a log entry
//! of its own. What differs by backend (the committer's batch, releasing
//! claims) is in `sqlite/` and `postgres/`.
//!
//! Portable SQL: no scalar `MAX(a, b)`, no `SUM` of a boolean, no bare
//! columns beside an aggregate; sums are cast to BIGINT (PostgreSQL's
//! `SUM(bigint)` is NUMERIC); the content is read as text.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::Row;

use super::read_content;
use super::{DomainRow, LogEntry, ProviderTotals, QueueError, StoredAttempt, StoredMessage};
use crate::store::{AppendLog, Backend, on_pool};

/// How a write transaction begins: SQLite takes its write lock at once
/// (`IMMEDIATE`), so that a concurrent writer makes it wait for the busy
/// timeout instead of failing when a read would have to become a write;
/// PostgreSQL locks the rows it writes.
fn begin_write(backend: &Backend) -> &'static str {
    match backend {
        Backend::Sqlite(_) => "BEGIN IMMEDIATE",
        Backend::Postgres(_) => "BEGIN",
    }
}

/// The earliest time something becomes due: a queued or retrying
/// message, or a lease running out.
pub(super) async fn next_due(backend: &Backend) -> Result<Option<i64>, QueueError> {
    const SQL: &str = "SELECT MIN(due_at) FROM email_messages WHERE due_at IS NOT NULL";
    Ok(on_pool!(backend, |pool| {
        sqlx::query(SQL)
            .fetch_one(pool)
            .await?
            .try_get::<Option<i64>, _>(0)?
    }))
}

/// One message of an org with its attempts.
pub(super) async fn get(
    backend: &Backend,
    org: &str,
    id: &str,
) -> Result<Option<StoredMessage>, QueueError> {
    const MESSAGE: &str = "SELECT id, org, state, sender, brand, CAST(content AS TEXT), attempts,
            next_attempt_at, created_at, finished_at, last_reply, provider, idempotency_key,
            attempt_started_at
         FROM email_messages WHERE org = $1 AND id = $2";
    const ATTEMPTS: &str = "SELECT number, started_at, finished_at, outcome, reply, provider
         FROM email_attempts WHERE message_id = $1 ORDER BY number";
    on_pool!(backend, |pool| {
        let Some(row) = sqlx::query(MESSAGE)
            .bind(org)
            .bind(id)
            .fetch_optional(pool)
            .await?
        else {
            return Ok(None);
        };
        let mut attempts: Vec<StoredAttempt> = sqlx::query(ATTEMPTS)
            .bind(id)
            .fetch_all(pool)
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
            content: read_content(row.get(5)),
            attempt_count,
            next_attempt_at: row.get(7),
            created_at: row.get(8),
            finished_at: row.get(9),
            last_reply: row.get(10),
            provider: row.get(11),
            idempotency_key: row.get(12),
            attempts,
        }))
    })
}

/// The system-log events about one subject (a message id).
pub(super) async fn events_about(
    backend: &Backend,
    org: &str,
    subject: &str,
) -> Result<Vec<Value>, QueueError> {
    const SQL: &str = "SELECT id, type, outcome, time, detail FROM system_log
         WHERE org = $1 AND subject = $2 ORDER BY id";
    type EventRow = (i64, String, String, String, String);
    let rows: Vec<EventRow> = on_pool!(backend, |pool| {
        sqlx::query(SQL)
            .bind(org)
            .bind(subject)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    });
    Ok(rows
        .into_iter()
        .map(|(id, type_, outcome, time, detail)| {
            serde_json::json!({
                "id": id,
                "type": type_,
                "outcome": outcome,
                "time": time,
                "subject": subject,
                "detail": serde_json::from_str::<Value>(&detail).unwrap_or(Value::Null),
            })
        })
        .collect())
}

/// Messages not yet sent or failed, by org.
pub(super) async fn pending_by_org(backend: &Backend) -> Result<HashMap<String, u64>, QueueError> {
    const SQL: &str =
        "SELECT org, COUNT(*) FROM email_messages WHERE due_at IS NOT NULL GROUP BY org";
    Ok(on_pool!(backend, |pool| {
        sqlx::query(SQL)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<i64, _>(1) as u64))
            .collect()
    }))
}

/// Delivery totals by (org, provider) for providers named `EmailProvider/…`.
///
/// Retried, as the live count has it: each counted attempt that failed
/// transiently and was followed by another. Counted from the message row
/// (a message keeps only four attempt rows): all its counted attempts but
/// the last once it is sent, failed or being tried again, all of them
/// while it waits for a retry. Attributed to the provider of its last
/// attempt.
pub(super) async fn provider_totals(backend: &Backend) -> Result<Vec<ProviderTotals>, QueueError> {
    const TOTALS: &str = "SELECT org, provider,
            COUNT(CASE WHEN state = 'sent' THEN 1 END),
            COUNT(CASE WHEN state = 'failed' THEN 1 END),
            CAST(SUM(CASE WHEN state = 'sent' THEN finished_at - created_at ELSE 0 END) AS BIGINT),
            MAX(CASE WHEN state = 'sent' THEN finished_at END),
            CAST(SUM(CASE WHEN counted > last THEN counted - last ELSE 0 END) AS BIGINT)
         FROM (SELECT org, provider, state, finished_at, created_at,
                      attempts - interrupted AS counted,
                      CASE WHEN state IN ('sent', 'failed', 'sending') THEN 1 ELSE 0 END AS last
               FROM email_messages WHERE provider LIKE 'EmailProvider/%') AS m
         GROUP BY org, provider";
    // The latest failure of each provider, with its reply.
    const FAILURES: &str = "SELECT org, provider, finished_at, last_reply FROM (
            SELECT org, provider, finished_at, last_reply,
                   ROW_NUMBER() OVER (PARTITION BY org, provider ORDER BY finished_at DESC) AS n
            FROM email_messages WHERE state = 'failed' AND provider LIKE 'EmailProvider/%') AS f
         WHERE n = 1";
    type Failure = (String, String, Option<i64>, Option<String>);
    let (mut out, failures): (Vec<ProviderTotals>, Vec<Failure>) = on_pool!(backend, |pool| {
        let totals = sqlx::query(TOTALS)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| ProviderTotals {
                org: r.get(0),
                provider: r.get(1),
                sent: r.get::<i64, _>(2) as u64,
                failed: r.get::<i64, _>(3) as u64,
                delivery_millis: r.get::<Option<i64>, _>(4).unwrap_or(0) as u64,
                last_delivery: r.get(5),
                retried: r.get::<Option<i64>, _>(6).unwrap_or(0) as u64,
                last_failure: None,
            })
            .collect();
        let failures = sqlx::query(FAILURES)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        (totals, failures)
    });
    for (org, provider, at, reply) in failures {
        if let Some(t) = out
            .iter_mut()
            .find(|t| t.org == org && t.provider == provider)
        {
            t.last_failure = at.map(|t| (t, reply.unwrap_or_default()));
        }
    }
    Ok(out)
}

/// The latest test email of each org provider, from the system log:
/// (org, provider name, its log entry), so that `status.lastTest`
/// survives a restart.
pub(super) async fn last_tests(
    backend: &Backend,
) -> Result<Vec<(String, String, LogEntry)>, QueueError> {
    const SQL: &str = "SELECT org, subject, outcome, time, detail FROM system_log
         WHERE id IN (SELECT MAX(id) FROM system_log
                      WHERE type = 'email.test' AND subject LIKE 'EmailProvider/%'
                      GROUP BY org, subject)";
    type TestRow = (String, String, String, String, String);
    let rows: Vec<TestRow> = on_pool!(backend, |pool| {
        sqlx::query(SQL)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    });
    Ok(rows
        .into_iter()
        .map(|(org, subject, outcome, time, detail)| {
            let name = subject.trim_start_matches("EmailProvider/").to_string();
            let entry = LogEntry {
                org: org.clone(),
                type_: "email.test".into(),
                outcome,
                time,
                subject,
                detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
            };
            (org, name, entry)
        })
        .collect())
}

/// Deletes sent and failed messages (and their attempts) finished before `before`.
pub(super) async fn purge_finished(backend: &Backend, before: i64) -> Result<u64, QueueError> {
    const ATTEMPTS: &str = "DELETE FROM email_attempts WHERE message_id IN (
            SELECT id FROM email_messages WHERE state IN ('sent', 'failed') AND finished_at < $1)";
    const MESSAGES: &str =
        "DELETE FROM email_messages WHERE state IN ('sent', 'failed') AND finished_at < $1";
    let begin = begin_write(backend);
    Ok(on_pool!(backend, |pool| {
        let mut tx = pool.begin_with(begin).await?;
        sqlx::query(ATTEMPTS).bind(before).execute(&mut *tx).await?;
        let n = sqlx::query(MESSAGES)
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        n
    }))
}

/// Appends one entry to the org's system log.
pub(super) async fn log(backend: &Backend, log: &LogEntry) -> Result<(), QueueError> {
    let entries = std::slice::from_ref(log);
    on_pool!(backend, |pool| {
        pool.acquire().await?.append_log(entries).await?;
    });
    Ok(())
}

/// A domain row's eleven columns, in the order of [`DOMAIN_COLUMNS`], bound
/// as `$1`…`$11` (one list for every statement that writes a row).
macro_rules! bind_domain {
    ($query:expr, $row:expr) => {
        $query
            .bind(&$row.org)
            .bind(&$row.name)
            .bind(&$row.domain)
            .bind(&$row.record_name)
            .bind(&$row.token)
            .bind(&$row.status)
            .bind(&$row.reason)
            .bind(&$row.message)
            .bind($row.polling_since)
            .bind($row.checked_at)
            .bind($row.verified_at)
    };
}

const DOMAIN_COLUMNS: &str = "org, name, domain, record_name, token, status, reason, message,
    polling_since, checked_at, verified_at";

/// A brand-domain row as read by `SELECT {DOMAIN_COLUMNS}`.
fn domain_row<R: Row>(r: &R) -> DomainRow
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    DomainRow {
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
    }
}

/// The brand-domain rows of every org.
pub(super) async fn domains(backend: &Backend) -> Result<Vec<DomainRow>, QueueError> {
    let sql = format!("SELECT {DOMAIN_COLUMNS} FROM email_domains");
    Ok(on_pool!(backend, |pool| {
        sqlx::query(&sql)
            .fetch_all(pool)
            .await?
            .iter()
            .map(domain_row)
            .collect()
    }))
}

/// One brand-domain row.
pub(super) async fn domain(
    backend: &Backend,
    org: &str,
    name: &str,
) -> Result<Option<DomainRow>, QueueError> {
    let sql = format!("SELECT {DOMAIN_COLUMNS} FROM email_domains WHERE org = $1 AND name = $2");
    Ok(on_pool!(backend, |pool| {
        sqlx::query(&sql)
            .bind(org)
            .bind(name)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(domain_row)
    }))
}

/// Stores `row`, a domain's first row, unless the store has a row of the
/// same domain and record already (another replica wrote it first); a
/// changed domain keeps its stored token. Returns the row as stored, which
/// every replica then shares.
pub(super) async fn adopt_domain(
    backend: &Backend,
    row: &DomainRow,
) -> Result<DomainRow, QueueError> {
    const SQL: &str = "INSERT INTO email_domains (org, name, domain, record_name, token, status,
            reason, message, polling_since, checked_at, verified_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (org, name) DO UPDATE SET domain = excluded.domain,
            record_name = excluded.record_name, status = excluded.status,
            reason = excluded.reason, message = excluded.message,
            polling_since = excluded.polling_since, checked_at = excluded.checked_at,
            verified_at = excluded.verified_at
         WHERE email_domains.domain <> excluded.domain
            OR email_domains.record_name <> excluded.record_name";
    let read = format!("SELECT {DOMAIN_COLUMNS} FROM email_domains WHERE org = $1 AND name = $2");
    let begin = begin_write(backend);
    Ok(on_pool!(backend, |pool| {
        let mut tx = pool.begin_with(begin).await?;
        bind_domain!(sqlx::query(SQL), row)
            .execute(&mut *tx)
            .await?;
        let stored = sqlx::query(&read)
            .bind(&row.org)
            .bind(&row.name)
            .fetch_one(&mut *tx)
            .await?;
        let stored = domain_row(&stored);
        tx.commit().await?;
        stored
    }))
}

/// Takes the next DNS check of a domain for this replica: marks it checked
/// at `now` if it is still as `seen` (last checked then). `false` when
/// another replica took it first, so that each check runs once.
pub(super) async fn claim_domain_check(
    backend: &Backend,
    seen: &DomainRow,
    now: i64,
) -> Result<bool, QueueError> {
    const SQL: &str = "UPDATE email_domains SET checked_at = $4
         WHERE org = $1 AND name = $2 AND COALESCE(checked_at, -1) = COALESCE(CAST($3 AS BIGINT), -1)";
    Ok(on_pool!(backend, |pool| {
        sqlx::query(SQL)
            .bind(&seen.org)
            .bind(&seen.name)
            .bind(seen.checked_at)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
            == 1
    }))
}

/// Stores a brand-domain row (and, in the same transaction, a log entry).
pub(super) async fn save_domain(
    backend: &Backend,
    row: &DomainRow,
    log: Option<&LogEntry>,
) -> Result<(), QueueError> {
    const SQL: &str = "INSERT INTO email_domains (org, name, domain, record_name, token, status,
            reason, message, polling_since, checked_at, verified_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (org, name) DO UPDATE SET domain = excluded.domain,
            record_name = excluded.record_name, token = excluded.token, status = excluded.status,
            reason = excluded.reason, message = excluded.message,
            polling_since = excluded.polling_since, checked_at = excluded.checked_at,
            verified_at = excluded.verified_at";
    let begin = begin_write(backend);
    let logs = log.map(std::slice::from_ref).unwrap_or_default();
    on_pool!(backend, |pool| {
        let mut tx = pool.begin_with(begin).await?;
        bind_domain!(sqlx::query(SQL), row)
            .execute(&mut *tx)
            .await?;
        if !logs.is_empty() {
            tx.append_log(logs).await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

/// Forgets the brand-domain rows of objects that are gone.
pub(super) async fn delete_domain(
    backend: &Backend,
    org: &str,
    name: &str,
) -> Result<(), QueueError> {
    const SQL: &str = "DELETE FROM email_domains WHERE org = $1 AND name = $2";
    on_pool!(backend, |pool| {
        sqlx::query(SQL).bind(org).bind(name).execute(pool).await?;
    });
    Ok(())
}
