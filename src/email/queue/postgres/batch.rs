//! A batch's statements in PostgreSQL, in the batch's transaction: the
//! idempotency keys looked up and released, the new messages inserted
//! with their log entries (and one wake-up for the other replicas), the
//! finishes recorded, attempts whose lease ran out closed as interrupted,
//! and the claims. Rows go in as arrays (`unnest`), one statement per
//! verb and not per row; a verb the batch does not hold costs nothing.

use std::collections::{HashMap, HashSet};

use sqlx::{PgConnection, Row};

use super::notify_dispatchers;
use crate::email::queue::admission::{Admit, admit_inserts};
use crate::email::queue::idempotency::{self, HeldKeys};
use crate::email::queue::ops::{Answers, Batch, Prepared};
use crate::email::queue::{
    Applied, Claimed, Finished, Inserted, LogEntry, Next, QueueError, read_content, without_bodies,
};
use crate::store::AppendLog;

/// The batch's writes, in order: inserts, finishes, then each claim
/// (which so sees the messages just inserted).
pub(super) async fn write(
    conn: &mut PgConnection,
    batch: &Batch,
    admit: &Admit,
) -> Result<Answers, QueueError> {
    let existing = check_keys(conn, &batch.inserts).await?;
    let (mut inserts, admitted) = admit_inserts(&batch.inserts, existing, admit);
    let lost = insert(conn, &admitted).await?;
    if !lost.is_empty() {
        // Keys another replica took first: the answer is its message,
        // also for later uses of the key in this batch.
        for answer in &mut inserts {
            let id = match answer {
                Ok(Inserted::New(id) | Inserted::Existing(id)) => id.clone(),
                Err(_) => continue,
            };
            if let Some(holder) = lost.get(&id) {
                *answer = holder.clone();
            }
        }
    }
    let finishes = finish(conn, &batch.finishes).await?;
    let mut claims = Vec::with_capacity(batch.claims.len());
    for &(now, until, limit) in &batch.claims {
        expire_leases(conn, now).await?;
        claims.push(claim(conn, now, until, limit).await?);
    }
    Ok(Answers {
        used_bytes: 0,
        inserts,
        finishes,
        claims,
    })
}

/// Decides each insert against the idempotency keys stored (within the
/// window, see [`idempotency::decide`]) and those earlier inserts of the
/// batch take; releases keys past the window. `None` for a new message,
/// else the id the key already names.
async fn check_keys(
    conn: &mut PgConnection,
    inserts: &[Prepared],
) -> Result<Vec<Option<String>>, QueueError> {
    let (orgs, keys): (Vec<&str>, Vec<&str>) = inserts
        .iter()
        .filter_map(|p| {
            let m = &p.message;
            m.idempotency_key.as_deref().map(|k| (m.org.as_str(), k))
        })
        .unzip();
    if keys.is_empty() {
        return Ok(vec![None; inserts.len()]);
    }
    let mut held = HeldKeys::new();
    let rows = sqlx::query(
        "SELECT m.org, m.idempotency_key, m.id, m.created_at
         FROM unnest($1::text[], $2::text[]) AS k(org, key)
         JOIN email_messages AS m ON m.org = k.org AND m.idempotency_key = k.key",
    )
    .bind(&orgs)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        held.insert((r.get(0), r.get(1)), (r.get(2), r.get(3)));
    }
    let answers = idempotency::decide(inserts, held);
    if !answers.released.is_empty() {
        sqlx::query("UPDATE email_messages SET idempotency_key = NULL WHERE id = ANY($1)")
            .bind(&answers.released)
            .execute(&mut *conn)
            .await?;
    }
    Ok(answers.existing)
}

/// Inserts the admitted messages and the log entries of those written,
/// and wakes the dispatchers when any was. Returns the answer of each
/// message whose key another replica took between the lookup and the
/// insert (its message), by the id it would have had.
async fn insert(
    conn: &mut PgConnection,
    admitted: &[&Prepared],
) -> Result<HashMap<String, Result<Inserted, QueueError>>, QueueError> {
    if admitted.is_empty() {
        return Ok(HashMap::new());
    }
    let column = |f: fn(&Prepared) -> Option<&str>| -> Vec<Option<&str>> {
        admitted.iter().map(|p| f(p)).collect()
    };
    let nows: Vec<i64> = admitted.iter().map(|p| p.message.now).collect();
    // A key already held (by a commit since the lookup, or one waiting
    // to commit, whose outcome this statement waits for) is not an error
    // that would abort the batch: that row is left out.
    let written: Vec<String> = sqlx::query_scalar(
        "INSERT INTO email_messages (id, org, idempotency_key, state, sender, brand, content,
                                    next_attempt_at, due_at, created_at, updated_at)
         SELECT id, org, key, 'queued', sender, brand, content, now, now, now, now
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::bigint[]) AS m(id, org, key, sender, brand, content, now)
         ON CONFLICT (org, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(column(|p| Some(&p.message.id)))
    .bind(column(|p| Some(&p.message.org)))
    .bind(column(|p| p.message.idempotency_key.as_deref()))
    .bind(column(|p| Some(&p.message.sender)))
    .bind(column(|p| p.message.brand.as_deref()))
    .bind(column(|p| Some(&p.content)))
    .bind(&nows)
    .fetch_all(&mut *conn)
    .await?;
    let written: HashSet<&str> = written.iter().map(String::as_str).collect();
    let logs: Vec<LogEntry> = admitted
        .iter()
        .filter(|p| written.contains(p.message.id.as_str()))
        .filter_map(|p| p.message.log.clone())
        .collect();
    if !logs.is_empty() {
        conn.append_log(&logs).await?;
    }
    if !written.is_empty() {
        notify_dispatchers(conn).await?;
    }
    let lost: Vec<&Prepared> = admitted
        .iter()
        .copied()
        .filter(|p| !written.contains(p.message.id.as_str()))
        .collect();
    if lost.is_empty() {
        return Ok(HashMap::new());
    }
    let (orgs, keys): (Vec<&str>, Vec<&str>) = lost
        .iter()
        .filter_map(|p| {
            let m = &p.message;
            m.idempotency_key.as_deref().map(|k| (m.org.as_str(), k))
        })
        .unzip();
    let holders: HashMap<(String, String), String> = sqlx::query(
        "SELECT m.org, m.idempotency_key, m.id
         FROM unnest($1::text[], $2::text[]) AS k(org, key)
         JOIN email_messages AS m ON m.org = k.org AND m.idempotency_key = k.key",
    )
    .bind(&orgs)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| ((r.get(0), r.get(1)), r.get(2)))
    .collect();
    Ok(lost
        .into_iter()
        .map(|p| {
            let m = &p.message;
            let slot = (m.org.clone(), m.idempotency_key.clone().unwrap_or_default());
            let answer = holders
                .get(&slot)
                .map(|id| Inserted::Existing(id.clone()))
                .ok_or_else(|| {
                    QueueError::Sql(format!(
                        "message {} was not written and no message holds its idempotency key",
                        m.id
                    ))
                });
            (m.id.clone(), answer)
        })
        .collect())
}

/// Records finished attempts; each takes effect (state, delivery event)
/// only while its attempt still holds the message. A message keeps at most
/// four attempt rows, the first three and the latest, and loses its
/// bodies once sent or failed (see `sqlite/batch.rs` for why).
async fn finish(
    conn: &mut PgConnection,
    finishes: &[Finished],
) -> Result<Vec<Applied>, QueueError> {
    if finishes.is_empty() {
        return Ok(Vec::new());
    }
    // One attempt row per (message, attempt): an upsert may not touch a
    // row twice.
    let mut seen = HashSet::new();
    let rows: Vec<&Finished> = finishes
        .iter()
        .filter(|f| seen.insert((f.id.as_str(), f.attempt)))
        .collect();
    let ids: Vec<&str> = rows.iter().map(|f| f.id.as_str()).collect();
    let attempts: Vec<i64> = rows.iter().map(|f| i64::from(f.attempt)).collect();
    let started: Vec<i64> = rows.iter().map(|f| f.started_at).collect();
    let finished_at: Vec<i64> = rows.iter().map(|f| f.finished_at).collect();
    let outcomes: Vec<&str> = rows.iter().map(|f| f.outcome.as_str()).collect();
    let replies: Vec<&str> = rows.iter().map(|f| f.reply.as_str()).collect();
    let providers: Vec<&str> = rows.iter().map(|f| f.provider.as_str()).collect();
    let (states, next_at): (Vec<&str>, Vec<i64>) = rows
        .iter()
        .map(|f| match f.next {
            Next::Sent => ("sent", f.finished_at),
            Next::Failed => ("failed", f.finished_at),
            Next::Retry(at) => ("retrying", at),
        })
        .unzip();
    sqlx::query(
        "DELETE FROM email_attempts AS a USING unnest($1::text[], $2::bigint[]) AS f(id, attempt)
         WHERE f.attempt > 4 AND a.message_id = f.id AND a.number = f.attempt - 1",
    )
    .bind(&ids)
    .bind(&attempts)
    .execute(&mut *conn)
    .await?;
    // A late finish of an attempt closed as interrupted replaces its row
    // with the real reply.
    sqlx::query(
        "INSERT INTO email_attempts (message_id, number, started_at, finished_at, outcome, reply,
                                    provider)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                              $6::text[], $7::text[])
         ON CONFLICT (message_id, number) DO UPDATE SET finished_at = excluded.finished_at,
            outcome = excluded.outcome, reply = excluded.reply, provider = excluded.provider",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&started)
    .bind(&finished_at)
    .bind(&outcomes)
    .bind(&replies)
    .bind(&providers)
    .execute(&mut *conn)
    .await?;
    let applied_rows = sqlx::query(
        "UPDATE email_messages AS m SET state = f.state, next_attempt_at = f.next_at,
                due_at = CASE WHEN f.state = 'retrying' THEN f.next_at END, lease_until = NULL,
                finished_at = CASE WHEN f.state = 'retrying' THEN NULL ELSE f.finished_at END,
                last_reply = f.reply, provider = f.provider, updated_at = f.finished_at
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[],
                     $6::text[], $7::text[])
              AS f(id, attempt, state, next_at, finished_at, reply, provider)
         WHERE m.id = f.id AND m.state = 'sending' AND m.attempts = f.attempt
         RETURNING m.id, m.attempts, CASE WHEN f.state = 'retrying' THEN NULL ELSE m.content END",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&states)
    .bind(&next_at)
    .bind(&finished_at)
    .bind(&replies)
    .bind(&providers)
    .fetch_all(&mut *conn)
    .await?;
    let mut applied = HashSet::new();
    let mut stripped: (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for r in &applied_rows {
        let (id, attempt): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        if let Some(content) = r
            .try_get::<Option<String>, _>(2)?
            .as_deref()
            .and_then(without_bodies)
        {
            stripped.0.push(id.clone());
            stripped.1.push(content);
        }
        applied.insert((id, attempt));
    }
    if !stripped.0.is_empty() {
        sqlx::query(
            "UPDATE email_messages AS m SET content = c.content
             FROM unnest($1::text[], $2::text[]) AS c(id, content) WHERE m.id = c.id",
        )
        .bind(&stripped.0)
        .bind(&stripped.1)
        .execute(&mut *conn)
        .await?;
    }
    let answers: Vec<Applied> = finishes
        .iter()
        .map(|f| applied.contains(&(f.id.clone(), i64::from(f.attempt))))
        .collect();
    // Each applied attempt's event, once (a finish given twice applies once).
    let mut logged = HashSet::new();
    let logs: Vec<LogEntry> = finishes
        .iter()
        .zip(&answers)
        .filter(|(f, applied)| **applied && logged.insert((f.id.as_str(), f.attempt)))
        .filter_map(|(f, _)| f.log.clone())
        .collect();
    if !logs.is_empty() {
        conn.append_log(&logs).await?;
    }
    Ok(answers)
}

/// Closes as interrupted the attempts whose lease ran out by `now` (their
/// replica died) and queues their messages again. Any replica may run it;
/// two at once take disjoint rows.
async fn expire_leases(conn: &mut PgConnection, now: i64) -> Result<(), QueueError> {
    sqlx::query(
        "WITH expired AS (
             UPDATE email_messages AS m SET state = 'queued', interrupted = m.interrupted + 1,
                    next_attempt_at = $1, due_at = $1, lease_until = NULL, updated_at = $1
             FROM (SELECT id FROM email_messages WHERE state = 'sending' AND due_at <= $1
                   FOR UPDATE SKIP LOCKED) AS e
             WHERE m.id = e.id AND m.state = 'sending' AND m.due_at <= $1
             RETURNING m.id, m.attempts, m.attempt_started_at)
         INSERT INTO email_attempts (message_id, number, started_at, finished_at, outcome, reply)
         SELECT id, attempts, COALESCE(attempt_started_at, $1), $1, 'interrupted',
                'the attempt did not finish within its lease (process stopped?); retried'
         FROM expired
         ON CONFLICT (message_id, number) DO UPDATE SET finished_at = excluded.finished_at,
            outcome = excluded.outcome, reply = excluded.reply
         WHERE email_attempts.outcome IS NULL",
    )
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Takes up to `limit` due messages, in due order, for an attempt each,
/// leased until `until`; rows another replica is taking are skipped.
async fn claim(
    conn: &mut PgConnection,
    now: i64,
    until: i64,
    limit: usize,
) -> Result<Vec<Claimed>, QueueError> {
    let rows = sqlx::query(
        "WITH due AS (
             SELECT id, due_at FROM email_messages
             WHERE due_at <= $1 AND state IN ('queued', 'retrying')
             ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         UPDATE email_messages AS m SET state = 'sending', attempts = m.attempts + 1,
                lease_until = $2, due_at = $2, attempt_started_at = $1, updated_at = $1
         FROM due WHERE m.id = due.id AND m.state IN ('queued', 'retrying')
         RETURNING due.due_at, m.id, m.org, m.sender, m.content, m.attempts, m.interrupted,
                   m.created_at",
    )
    .bind(now)
    .bind(until)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for r in rows {
        let due: i64 = r.try_get(0)?;
        let attempts: i64 = r.try_get(5)?;
        let interrupted: i64 = r.try_get(6)?;
        let content: String = r.try_get(4)?;
        let message = Claimed {
            id: r.try_get(1)?,
            org: r.try_get(2)?,
            sender: r.try_get(3)?,
            content: read_content(&content),
            attempt: attempts as u32,
            counted: Claimed::counted_of(attempts, interrupted),
            created_at: r.try_get(7)?,
            started_at: now,
        };
        claimed.push((due, message));
    }
    claimed.sort_by(|(a, x), (b, y)| (a, &x.id).cmp(&(b, &y.id)));
    Ok(claimed.into_iter().map(|(_, m)| m).collect())
}
