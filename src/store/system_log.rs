//! Each org's system log: the one row type written ([`LogEntry`]), the one
//! INSERT that writes it ([`AppendLog`], inside whatever transaction the
//! caller has open), and the reads behind `/v1/orgs/{org}/events`. The
//! email queue's batch statements write the delivery events of a batch in
//! the same round trip as the state changes they report, from the same
//! [`LogEntry`] serialized into the batch.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::future::Future;

use sqlx::{PgConnection, Postgres, QueryBuilder, Row, Sqlite, SqliteConnection};

use super::{Store, StoreError, on_pool};

/// An entry to append to an org's system log.
///
/// Serializes as the row is stored (`type`; `detail` as JSON text): the
/// email queue's batch statements read it in that form.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogEntry {
    pub org: String,
    #[serde(rename = "type")]
    pub type_: String,
    /// SUCCESS, FAILURE, WARNING or INFO.
    pub outcome: String,
    pub time: String,
    /// What the event is about, e.g. `TelephonyHook/primary` or a message id.
    pub subject: String,
    #[serde(serialize_with = "json_text")]
    pub detail: Value,
}

fn json_text<S: serde::Serializer>(detail: &Value, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&detail.to_string())
}

/// One entry of an org's system log, as read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEvent {
    pub id: i64,
    #[serde(rename = "type")]
    pub type_: String,
    pub outcome: String,
    pub time: String,
    /// What the event is about, e.g. `TelephonyHook/primary` or a message id.
    pub subject: String,
    pub detail: Value,
}

/// Which entries of the system log to read; `None` matches any.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventFilter<'a> {
    pub type_: Option<&'a str>,
    pub outcome: Option<&'a str>,
}

/// Rows per multi-row INSERT (well under SQLite's bound on parameters).
const ROWS_PER_INSERT: usize = 200;

/// Appends entries to the system log on a connection of either backend,
/// inside the caller's transaction when one is open (so that an entry
/// costs no commit of its own and goes with the change it reports).
pub trait AppendLog {
    /// Returns the id of the last entry written (0 for none).
    fn append_log(
        &mut self,
        entries: &[LogEntry],
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
}

/// The one INSERT, for the connection type `$conn` of database `$db`.
macro_rules! append_log_impl {
    ($conn:ty, $db:ty) => {
        impl AppendLog for $conn {
            async fn append_log(&mut self, entries: &[LogEntry]) -> Result<i64, sqlx::Error> {
                let mut last = 0;
                for chunk in entries.chunks(ROWS_PER_INSERT) {
                    let mut insert = QueryBuilder::<$db>::new(
                        "INSERT INTO system_log (org, type, outcome, time, subject, detail) ",
                    );
                    insert.push_values(chunk, |mut row, entry| {
                        row.push_bind(&entry.org)
                            .push_bind(&entry.type_)
                            .push_bind(&entry.outcome)
                            .push_bind(&entry.time)
                            .push_bind(&entry.subject)
                            .push_bind(entry.detail.to_string());
                    });
                    insert.push(" RETURNING id");
                    let ids: Vec<i64> = insert.build_query_scalar().fetch_all(&mut *self).await?;
                    last = ids.into_iter().max().unwrap_or(last);
                }
                Ok(last)
            }
        }
    };
}
append_log_impl!(SqliteConnection, Sqlite);
append_log_impl!(PgConnection, Postgres);

impl Store {
    /// Appends an entry to an org's system log; its id.
    pub async fn log(&self, entry: &LogEntry) -> Result<i64, StoreError> {
        let entries = std::slice::from_ref(entry);
        Ok(on_pool!(&self.backend, |pool| {
            pool.acquire().await?.append_log(entries).await
        })?)
    }

    /// Events of an org, oldest first, after the cursor `after` (an event
    /// id), optionally of one type; at most `limit`.
    pub async fn events(
        &self,
        org: &str,
        filter: &EventFilter<'_>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<LogEvent>, StoreError> {
        // `CAST($3 AS TEXT)`: PostgreSQL cannot infer the type of a
        // parameter only compared with NULL (both backends read CAST).
        macro_rules! events_sql {
            ($committed:literal) => {
                concat!(
                    "SELECT id, type, outcome, time, subject, detail FROM system_log
                     WHERE org = $1 AND id > $2 AND (CAST($3 AS TEXT) IS NULL OR type = $3)
                       AND (CAST($4 AS TEXT) IS NULL OR outcome = $4)",
                    $committed,
                    " ORDER BY id LIMIT $5"
                )
            };
        }
        // PostgreSQL: only rows no open transaction can still precede (see
        // the `tx` column in migrations/postgres): a page never skips an
        // event that commits after it was read. SQLite has one writer.
        let sql = match &self.backend {
            super::Backend::Sqlite(_) => events_sql!(""),
            super::Backend::Postgres(_) => {
                events_sql!(" AND tx < pg_snapshot_xmin(pg_current_snapshot())")
            }
        };
        type EventRow = (i64, String, String, String, String, String);
        let rows: Vec<EventRow> = on_pool!(&self.backend, |pool| {
            sqlx::query(sql)
                .bind(org)
                .bind(after)
                .bind(filter.type_)
                .bind(filter.outcome)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
                .collect()
        });
        rows.into_iter()
            .map(|(id, type_, outcome, time, subject, detail)| {
                Ok(LogEvent {
                    id,
                    type_,
                    outcome,
                    time,
                    subject,
                    detail: serde_json::from_str(&detail)?,
                })
            })
            .collect()
    }
}
