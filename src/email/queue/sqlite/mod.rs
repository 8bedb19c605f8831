//! The queue in SQLite: all of the queue's SQL. The rules it serves
//! (batching, admission, idempotency, retries) are in the files above
//! this directory and in `email::retry`; what is here is how SQLite stores
//! them.
//!
//! - `batch.rs`: the batch statements, one statement list that inserts,
//!   finishes and claims together in one round trip;
//! - `writer.rs`: the committer's connection and transaction, the
//!   idempotency-key lookup, the size measurement;
//! - `reads.rs`: the reads, straight from the pool;
//! - `domains.rs`: the brand-domain rows;
//! - `unbatched.rs`: the writes outside the committer (release, purge, a
//!   log entry).
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
mod domains;
mod reads;
mod unbatched;
mod writer;

#[cfg(test)]
pub(super) use batch::{BatchInput, run_batch};
pub(super) use domains::{delete_domain, domains, save_domain};
pub(super) use reads::{events_about, get, last_tests, next_due, pending_by_org, provider_totals};
pub(super) use unbatched::{log, purge_finished, release};
pub(super) use writer::{SqliteWriter, WriteConnection};

/// SQLite's result code for "database or disk is full".
const SQLITE_FULL: &str = "13";

/// SQLITE_FULL (a full disk, or the `--database-max-size` cap) is
/// [`QueueError::Full`]; every other failure is [`QueueError::Sql`].
impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        let full = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == SQLITE_FULL);
        if full {
            return Self::Full(e.to_string());
        }
        Self::Sql(e.to_string())
    }
}

/// Rows as one JSON array, bound as a single parameter and read with
/// `json_each`.
fn rows_json<T: Serialize>(rows: &[T]) -> Result<String, QueueError> {
    serde_json::to_string(rows).map_err(|e| QueueError::Sql(format!("cannot encode rows: {e}")))
}
