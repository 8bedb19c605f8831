//! The batch statements: one statement list, run as one query, that
//! inserts a batch's new messages, records its finished attempts, closes
//! attempts whose lease ran out and claims due messages, together with the
//! system-log entries that go with them, and reads back what took effect.
//! One list rather than one statement per verb: a batch then costs one
//! round trip to SQLite's thread whatever it holds, and the claim sees the
//! messages inserted before it.

use std::collections::HashSet;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{Either, Row, SqliteConnection};

use crate::email::queue::ops::Prepared;
use crate::email::queue::{Claimed, Finished, LogEntry, Next, QueueError, read_content};

/// A message row for the batch statement, its content already serialized
/// (by the caller's task, not the committer's).
#[derive(Serialize)]
pub(crate) struct MessageRow<'a> {
    id: &'a str,
    org: &'a str,
    key: Option<&'a str>,
    sender: &'a str,
    brand: Option<&'a str>,
    content: &'a str,
    now: i64,
    log: Option<&'a LogEntry>,
}

impl<'a> From<&'a Prepared> for MessageRow<'a> {
    fn from(p: &'a Prepared) -> Self {
        let m = &p.message;
        Self {
            id: &m.id,
            org: &m.org,
            key: m.idempotency_key.as_deref(),
            sender: &m.sender,
            brand: m.brand.as_deref(),
            content: &p.content,
            now: m.now,
            log: m.log.as_ref(),
        }
    }
}

/// A finished attempt for the batch statement.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FinishRow<'a> {
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
    log: Option<&'a LogEntry>,
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
            log: f.log.as_ref(),
        }
    }
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
pub(crate) const BATCH_SQL: &str = batch_statements!();

/// The common batch, transaction included: one round trip to SQLite's
/// thread for `BEGIN`, the statements and `COMMIT`, where a transaction
/// begun and committed apart cost two more, each waiting for a thread
/// wake-up on a busy machine (with 16 API clients that was a third of the
/// throughput). A failure leaves the transaction open; the writer then
/// rolls it back.
pub(crate) const BATCH_TX_SQL: &str =
    concat!("BEGIN IMMEDIATE;\n", batch_statements!(), "\nCOMMIT;\n");

/// What one run of [`BATCH_SQL`] returned.
#[derive(Default)]
pub(crate) struct BatchRows {
    pub(crate) applied: HashSet<(String, i64)>,
    pub(crate) claimed: Vec<Claimed>,
    /// Bytes the database's pages in use hold, this batch's writes included.
    pub(crate) used_bytes: i64,
}

/// The parameter of [`BATCH_SQL`].
#[derive(Serialize)]
pub(crate) struct BatchInput<'a> {
    pub(crate) messages: &'a [MessageRow<'a>],
    pub(crate) finishes: &'a [FinishRow<'a>],
    pub(crate) claim: Option<ClaimInput>,
}

/// A claim; `token` marks the rows it takes so that one statement can read
/// them back (another claim in the same millisecond has the same lease
/// end).
#[derive(Serialize)]
pub(crate) struct ClaimInput {
    pub(crate) now: i64,
    pub(crate) until: i64,
    pub(crate) limit: usize,
    pub(crate) token: i64,
}

/// A claimed message as the batch statement aggregates it.
#[derive(Deserialize)]
struct ClaimedRow(String, String, String, String, i64, i64, i64);

/// Runs `sql` (the batch statements, with or without their transaction)
/// over `input` on `conn`: which finishes took effect, the messages
/// claimed, and the bytes in use after the batch.
pub(crate) async fn run_batch(
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
        counted: Claimed::counted_of(attempts, interrupted),
        created_at,
        started_at: now,
    }
}
