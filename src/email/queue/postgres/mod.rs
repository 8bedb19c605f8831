//! The queue's SQL that is PostgreSQL's own: the committer's batch and
//! releasing claims. The rules it serves are in the files above this
//! directory (the same as SQLite's); the statements both backends run
//! alike are in `../portable.rs`.
//!
//! - `batch.rs`: a batch's statements, several in one transaction, rows
//!   bound as arrays (`unnest`);
//! - `writer.rs`: the committer's connection and transaction;
//! - `unbatched.rs`: releasing claims at a stop, outside the committer;
//! - `wake.rs`: the LISTEN that hears the other replicas' new mail.
//!
//! Several replicas write one database at once, so each statement that
//! takes work decides in the database, not in a read before it: claims
//! and lease expiry lock their rows `FOR UPDATE SKIP LOCKED` (two replicas
//! never take the same message, nor wait for each other) and re-check the
//! state in the UPDATE; a finish applies only where its attempt still
//! holds the message, under the row's lock; an idempotency key is taken by
//! `INSERT … ON CONFLICT DO NOTHING` against the unique index, the loser
//! reading the winner's message. A batch that inserted mail sends one
//! `NOTIFY idplane_email` inside its transaction, so that every replica's
//! dispatcher hears of it when it commits.

mod batch;
mod unbatched;
mod wake;
mod writer;

pub(super) use unbatched::release;
pub(super) use wake::relay_commits;
pub(super) use writer::{PgWriter, WriteConnection};

/// The channel on which a commit that makes mail due wakes every
/// replica's dispatcher.
pub const WAKE_CHANNEL: &str = "idplane_email";

/// PostgreSQL's SQLSTATE for "disk full".
const DISK_FULL: &str = "53100";

/// Whether `e` is PostgreSQL's disk_full: the server's disk cannot take
/// the batch.
pub(super) fn is_full(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .filter(|d| {
            d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
        })
        .and_then(|d| d.code())
        .is_some_and(|c| c == DISK_FULL)
}

/// Wakes the dispatchers of every replica once the transaction on `conn`
/// commits (nothing if it rolls back).
async fn notify_dispatchers(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(conn)
        .await
        .map(drop)
}
