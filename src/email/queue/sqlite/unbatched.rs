//! Releasing claims at a stop, in SQLite: outside the committer, a
//! transaction of its own on a pooled connection, waiting for the
//! committer's batch when one is open.

use sqlx::Connection;
use sqlx::sqlite::SqlitePool;

use super::rows_json;
use crate::email::queue::QueueError;

/// Undoes the claims of messages not tried (a stop came first): each
/// is due again at once, as it was before, unless its attempt
/// `(id, attempt)` no longer holds it. Returns how many were released.
/// Written on a connection of its own: it waits for the committer's
/// transaction, which is fine when stopping.
pub(crate) async fn release(
    pool: &SqlitePool,
    claims: &[(String, u32)],
    now: i64,
) -> Result<u64, QueueError> {
    if claims.is_empty() {
        return Ok(0);
    }
    let mut conn = pool.acquire().await?;
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
