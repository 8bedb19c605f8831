//! The committer's SQLite side: the connection batches run on, the
//! transaction around a batch, the idempotency-key lookup, and the
//! measurement of the store's size in use.
//!
//! Write transactions start with `BEGIN IMMEDIATE`: they take the write
//! lock before reading, so a concurrent writer (the status writer, the
//! system log) makes them wait for the busy timeout instead of failing with
//! "database is locked" when a read would have to become a write.

use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqlitePool;
use sqlx::{Row, Sqlite, SqliteConnection};

use super::batch::{
    BATCH_SQL, BATCH_TX_SQL, BatchInput, ClaimInput, FinishRow, MessageRow, run_batch,
};
use super::rows_json;
use crate::email::queue::QueueError;
use crate::email::queue::admission::{Admit, admit_inserts};
use crate::email::queue::idempotency::{self, HeldKeys};
use crate::email::queue::ops::{Answers, Batch, Prepared};

/// The connection the committer's batches run on.
///
/// Every batch runs on the same connection (unless the pool has only
/// one, which the readers need too): SQLite keeps a connection's page
/// cache across its own transactions, while a different pooled
/// connection per batch started cold and re-read the pages it touched.
pub(crate) struct SqliteWriter {
    pool: SqlitePool,
    /// The connection kept from the last batch.
    held: Option<PoolConnection<Sqlite>>,
    /// Whether to keep a connection between batches.
    keep: bool,
}

/// A connection taken for one batch.
pub(crate) struct WriteConnection(PoolConnection<Sqlite>);

impl SqliteWriter {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        let keep = pool.options().get_max_connections() > 1;
        Self {
            pool,
            held: None,
            keep,
        }
    }

    /// Bytes in use and unfinished messages, when the committer starts.
    pub(crate) async fn measure(&self) -> Result<(i64, i64), QueueError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            used_bytes_sql!(),
            ", (SELECT count(*) FROM email_messages WHERE due_at IS NOT NULL)"
        ))
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// The connection kept from the last batch, or one from the pool.
    pub(crate) async fn connection(&mut self) -> Result<WriteConnection, QueueError> {
        match self.held.take() {
            Some(c) => Ok(WriteConnection(c)),
            None => Ok(WriteConnection(self.pool.acquire().await?)),
        }
    }

    /// Keeps the batch's connection for the next one, after a batch that
    /// `succeeded`.
    pub(crate) async fn put_back(&mut self, conn: WriteConnection, succeeded: bool) {
        if !self.keep {
            // The pool's only connection (an in-memory store, whose data
            // closing it would drop) goes back.
        } else if !succeeded {
            // Whatever state the failure left it in goes with it.
            let _ = conn.0.close().await;
        } else {
            self.held = Some(conn.0);
        }
    }
}

impl WriteConnection {
    /// One transaction for the whole batch, new messages written as
    /// `admit` says; rolled back when it fails. The transaction is begun
    /// and committed as plain statements, not through sqlx's transaction
    /// guard: after SQLite rolled back on its own (SQLITE_FULL at the
    /// commit), the guard's own rollback fails and the connection believed
    /// it was still in a transaction, refusing every later batch.
    pub(crate) async fn write(
        &mut self,
        batch: &Batch,
        admit: &Admit,
    ) -> Result<Answers, QueueError> {
        let conn: &mut SqliteConnection = &mut self.0;
        let answers = if in_one_run(batch) {
            write(conn, batch, BATCH_TX_SQL, admit).await
        } else {
            in_transaction(conn, batch, admit).await
        };
        if answers.is_err() {
            rollback(conn).await;
        }
        answers
    }
}

async fn in_transaction(
    conn: &mut SqliteConnection,
    batch: &Batch,
    admit: &Admit,
) -> Result<Answers, QueueError> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let answers = write(conn, batch, BATCH_SQL, admit).await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(answers)
}

/// Whether the batch is one run of the batch statements: no
/// idempotency key to look up first, at most one claim.
fn in_one_run(batch: &Batch) -> bool {
    batch.claims.len() <= 1
        && batch
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
    conn: &mut SqliteConnection,
    batch: &Batch,
    first_sql: &'static str,
    admit: &Admit,
) -> Result<Answers, QueueError> {
    let existing = check_keys(conn, &batch.inserts).await?;
    let (inserts, admitted) = admit_inserts(&batch.inserts, existing, admit);
    let rows: Vec<MessageRow> = admitted.into_iter().map(MessageRow::from).collect();
    let finish_rows: Vec<FinishRow> = batch.finishes.iter().map(FinishRow::from).collect();
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
            claim: batch.claims.first().map(claim),
        },
    )
    .await?;
    let finishes = batch
        .finishes
        .iter()
        .map(|f| {
            first
                .applied
                .contains(&(f.id.clone(), i64::from(f.attempt)))
        })
        .collect();
    let mut used_bytes = first.used_bytes;
    let mut claims = Vec::with_capacity(batch.claims.len());
    if !batch.claims.is_empty() {
        claims.push(first.claimed);
    }
    for extra in batch.claims.iter().skip(1) {
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

/// Decides each insert against the idempotency keys (stored ones within
/// the window, and earlier ones of the same batch; see
/// [`idempotency::decide`]); `None` for a new message, else the id the key
/// already names. Only batches with keys pay for the lookup.
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
    let mut held = HeldKeys::new();
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
    let answers = idempotency::decide(inserts, held);
    if !answers.released.is_empty() {
        sqlx::query(
            "UPDATE email_messages SET idempotency_key = NULL
             WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(rows_json(&answers.released)?)
        .execute(&mut *conn)
        .await?;
    }
    Ok(answers.existing)
}

/// Ends the transaction a failed batch left open; with none open (SQLite
/// rolls back on its own after some errors, SQLITE_FULL among them) this
/// fails harmlessly.
async fn rollback(conn: &mut SqliteConnection) {
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
}
