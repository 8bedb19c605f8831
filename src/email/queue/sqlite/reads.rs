//! The queue's reads in SQLite, straight from the pool: a message with
//! its attempts, the system-log events about it, what is pending, the
//! delivery totals and the last test emails that status starts from, and
//! the next due time the dispatcher sleeps until.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::email::queue::{
    LogEntry, ProviderTotals, QueueError, StoredAttempt, StoredMessage, read_content,
};

/// The earliest time something becomes due: a queued or retrying
/// message, or a lease running out.
pub(crate) async fn next_due(pool: &SqlitePool) -> Result<Option<i64>, QueueError> {
    let row = sqlx::query("SELECT MIN(due_at) FROM email_messages WHERE due_at IS NOT NULL")
        .fetch_one(pool)
        .await?;
    Ok(row.get::<Option<i64>, _>(0))
}

/// One message of an org with its attempts.
pub(crate) async fn get(
    pool: &SqlitePool,
    org: &str,
    id: &str,
) -> Result<Option<StoredMessage>, QueueError> {
    let Some(row) = sqlx::query(
        "SELECT id, org, state, sender, brand, content, attempts, next_attempt_at, created_at,
                finished_at, last_reply, provider, idempotency_key, attempt_started_at
         FROM email_messages WHERE org = ? AND id = ?",
    )
    .bind(org)
    .bind(id)
    .fetch_optional(pool)
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
pub(crate) async fn events_about(
    pool: &SqlitePool,
    org: &str,
    subject: &str,
) -> Result<Vec<Value>, QueueError> {
    let rows = sqlx::query(
        "SELECT id, type, outcome, time, detail FROM system_log
         WHERE org = ? AND subject = ? ORDER BY id",
    )
    .bind(org)
    .bind(subject)
    .fetch_all(pool)
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
pub(crate) async fn pending_by_org(pool: &SqlitePool) -> Result<HashMap<String, u64>, QueueError> {
    let rows = sqlx::query(
        "SELECT org, COUNT(*) FROM email_messages WHERE due_at IS NOT NULL GROUP BY org",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get(0), r.get::<i64, _>(1) as u64))
        .collect())
}

/// Delivery totals by (org, provider) for providers named `EmailProvider/…`.
pub(crate) async fn provider_totals(pool: &SqlitePool) -> Result<Vec<ProviderTotals>, QueueError> {
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
    .fetch_all(pool)
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
    .fetch_all(pool)
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

/// The latest test email of each org provider, from the system log:
/// (org, provider name, its log entry), so that `status.lastTest`
/// survives a restart.
pub(crate) async fn last_tests(
    pool: &SqlitePool,
) -> Result<Vec<(String, String, LogEntry)>, QueueError> {
    let rows = sqlx::query(
        "SELECT org, subject, MAX(id), outcome, time, detail FROM system_log
         WHERE type = 'email.test' AND subject LIKE 'EmailProvider/%' GROUP BY org, subject",
    )
    .fetch_all(pool)
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
