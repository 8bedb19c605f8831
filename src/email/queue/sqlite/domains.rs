//! The brand-domain rows in SQLite: each EmailDomain's DNS validation as
//! last checked, kept across restarts.

use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::email::queue::{DomainRow, LogEntry, QueueError};
use crate::store::AppendLog;

/// The brand-domain rows of every org.
pub(crate) async fn domains(pool: &SqlitePool) -> Result<Vec<DomainRow>, QueueError> {
    let rows = sqlx::query(
        "SELECT org, name, domain, record_name, token, status, reason, message, polling_since,
                checked_at, verified_at FROM email_domains",
    )
    .fetch_all(pool)
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
pub(crate) async fn save_domain(
    pool: &SqlitePool,
    row: &DomainRow,
    log: Option<&LogEntry>,
) -> Result<(), QueueError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
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
        tx.append_log(std::slice::from_ref(log)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Forgets the brand-domain rows of objects that are gone.
pub(crate) async fn delete_domain(
    pool: &SqlitePool,
    org: &str,
    name: &str,
) -> Result<(), QueueError> {
    sqlx::query("DELETE FROM email_domains WHERE org = ? AND name = ?")
        .bind(org)
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}
