//! Releasing claims at a stop, in PostgreSQL: outside the committer, a
//! transaction of its own, which wakes the other replicas' dispatchers so
//! that one of them takes the mail at once.

use sqlx::postgres::PgPool;

use super::notify_dispatchers;
use crate::email::queue::QueueError;

/// Undoes the claims of messages not tried (a stop came first): each
/// is due again at once, as it was before, unless its attempt
/// `(id, attempt)` no longer holds it. Returns how many were released.
pub(crate) async fn release(
    pool: &PgPool,
    claims: &[(String, u32)],
    now: i64,
) -> Result<u64, QueueError> {
    if claims.is_empty() {
        return Ok(0);
    }
    let (ids, attempts): (Vec<&str>, Vec<i64>) = claims
        .iter()
        .map(|(id, attempt)| (id.as_str(), i64::from(*attempt)))
        .unzip();
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE email_messages AS m
         SET state = CASE WHEN m.last_reply IS NULL THEN 'queued' ELSE 'retrying' END,
             attempts = m.attempts - 1, due_at = m.next_attempt_at, lease_until = NULL,
             attempt_started_at = NULL, updated_at = $3
         FROM unnest($1::text[], $2::bigint[]) AS r(id, attempt)
         WHERE m.id = r.id AND m.attempts = r.attempt AND m.state = 'sending'",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if done > 0 {
        notify_dispatchers(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(done)
}
