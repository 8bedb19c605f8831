//! The queue's SQL that is SQLite's own. The rules it serves (batching,
//! admission, idempotency, retries) are in the files above this directory
//! and in `email::retry`; the statements both backends run alike are in
//! `../portable.rs`; what is here is how SQLite writes the queue.
//!
//! - `batch.rs`: the batch statements, one statement list that inserts,
//!   finishes and claims together in one round trip;
//! - `writer.rs`: the committer's connection and transaction, the
//!   idempotency-key lookup, the size measurement;
//! - `unbatched.rs`: releasing claims at a stop, outside the committer.
//!
//! A batch is one run of one multi-statement query (`BEGIN`, the
//! statements, `COMMIT`) over the batch as JSON, so a batch of 300 costs
//! about as many statements as a batch of one, and one round trip to the
//! connection's thread: those round trips, not the disk, were what limited
//! throughput.

use serde::Serialize;

use super::QueueError;

/// The bytes the database's pages in use hold (its pages less the free
/// ones), as an SQL expression.
macro_rules! used_bytes_sql {
    () => {
        "((SELECT page_count FROM pragma_page_count())
          - (SELECT freelist_count FROM pragma_freelist_count()))
         * (SELECT page_size FROM pragma_page_size())"
    };
}

mod batch;
mod unbatched;
mod writer;

#[cfg(test)]
pub(super) use batch::{BatchInput, run_batch};
pub(super) use unbatched::release;
pub(super) use writer::{SqliteWriter, WriteConnection};

/// SQLite's result code for "database or disk is full".
const SQLITE_FULL: &str = "13";

/// Whether `e` is SQLITE_FULL (a full disk, or the `--database-max-size`
/// cap).
pub(super) fn is_full(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .filter(|d| d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some())
        .and_then(|d| d.code())
        .is_some_and(|c| c == SQLITE_FULL)
}

/// Rows as one JSON array, bound as a single parameter and read with
/// `json_each`.
fn rows_json<T: Serialize>(rows: &[T]) -> Result<String, QueueError> {
    serde_json::to_string(rows).map_err(|e| QueueError::Sql(format!("cannot encode rows: {e}")))
}
