//! Persistence. The embedded default is one SQLite file (WAL journal,
//! `synchronous=FULL`: a committed transaction survives a power cut), opened
//! through sqlx with embedded migrations. The queries are plain SQL that a
//! PostgreSQL backend can mirror; callers see only [`Store`]'s methods.
//!
//! Beside the file itself: `system_log.rs`, each org's system log (the one
//! row type and the one INSERT every module writes it with), and
//! `group_commit.rs`, the loop of the batched writers (the telephony store
//! writer, the email queue's committer).

use std::path::Path;
use std::str::FromStr;

use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::resources::ObjectKey;

pub mod group_commit;
mod system_log;

pub use system_log::{EventFilter, LogEntry, LogEvent, append_log};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
}

/// The database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// The cap on the database file, in bytes, if any.
    max_size: Option<u64>,
}

/// The smallest `--database-max-size`: the schema and a little mail.
pub const MIN_MAX_SIZE: u64 = 1024 * 1024;

/// Room the WAL file beside the database needs: `journal_size_limit`
/// (8 MiB) and as much again for a transaction larger than usual.
const WAL_ROOM: u64 = 16 << 20;

/// Bytes the database file can still reach on its volume, when that is
/// less than `cap`: then the disk fills before the cap, and the room the
/// cap keeps for the outcomes of accepted mail is not there. `size` is the
/// file's size now, `available` the volume's free bytes.
fn short_of_cap(cap: u64, size: u64, available: u64) -> Option<u64> {
    let reachable = (size + available).saturating_sub(WAL_ROOM);
    (reachable < cap).then_some(reachable)
}

impl Store {
    /// Opens (creating if needed) the SQLite file and runs migrations.
    /// With `max_size` (bytes), the file does not grow past it: writes
    /// that would need more space fail as on a full disk (SQLITE_FULL).
    pub async fn open(path: &Path, max_size: Option<u64>) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let display = path.display().to_string();
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{display}"))
            .map_err(|source| StoreError::Open {
                path: display.clone(),
                source,
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Temporary tables (the email queue's batch staging) in memory.
            .pragma("temp_store", "memory")
            // A WAL that one large transaction grew is cut back to 8 MiB
            // when it is next reset, not kept at its largest.
            .pragma("journal_size_limit", "8388608")
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A local file does not drop connections; a ping per acquire
            // only adds a round trip to the connection's thread.
            .test_before_acquire(false)
            // The cap is per connection, in pages of the file's size.
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if let Some(bytes) = max_size {
                        let page: i64 = sqlx::query_scalar("PRAGMA page_size")
                            .fetch_one(&mut *conn)
                            .await?;
                        let pages = bytes / page.max(512) as u64;
                        sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: display,
                source,
            })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        if let Some(cap) = max_size {
            // SQLite raises a cap below the file's size to that size,
            // silently: say so.
            let size: i64 = sqlx::query_scalar(
                "SELECT (SELECT page_count FROM pragma_page_count())
                        * (SELECT page_size FROM pragma_page_size())",
            )
            .fetch_one(&pool)
            .await?;
            let size = u64::try_from(size).unwrap_or(0);
            // Free space changes; a start-up look catches a cap set above
            // the volume (the chart's default with a smaller volume).
            let volume = path.parent().filter(|d| !d.as_os_str().is_empty());
            match rustix::fs::statvfs(volume.unwrap_or(Path::new("."))) {
                Ok(fs) => {
                    let available = fs.f_bavail.saturating_mul(fs.f_frsize);
                    if let Some(reachable) = short_of_cap(cap, size, available) {
                        tracing::warn!(
                            database = %path.display(),
                            cap_mib = cap >> 20,
                            reachable_mib = reachable >> 20,
                            "--database-max-size is more than the volume has room for (its free space and the file, less 16 MiB for the WAL): the disk fills first, and outcomes of accepted mail may then not be stored; lower the cap or grow the volume"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    database = %path.display(),
                    error = %e,
                    "cannot read the volume's free space to check --database-max-size against it"
                ),
            }
            if size > cap {
                tracing::warn!(
                    database = %path.display(),
                    size_mib = size >> 20,
                    cap_mib = cap >> 20,
                    "the database file is already larger than --database-max-size: it cannot grow, and new mail is refused until sent mail and retention free room"
                );
            }
        }
        Ok(Self { pool, max_size })
    }

    /// An in-memory store, for tests and `--database :memory:`.
    pub async fn memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            pool,
            max_size: None,
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The bytes that the email queue's data (with the room it keeps for
    /// unsent mail) may use: 9/10 of the cap, so that status, the system
    /// log and the telephony store writer still have room when new mail has not.
    pub fn accept_limit(&self) -> Option<i64> {
        self.max_size
            .map(|b| i64::try_from(b / 10 * 9).unwrap_or(i64::MAX))
    }

    pub async fn save_status(
        &self,
        key: &ObjectKey,
        status: &Value,
        now: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO object_status (kind, namespace, name, status, updated_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (kind, namespace, name) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
        )
        .bind(&key.kind)
        .bind(&key.namespace)
        .bind(&key.name)
        .bind(status.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn load_statuses(&self) -> Result<Vec<(ObjectKey, Value)>, StoreError> {
        let rows = sqlx::query("SELECT kind, namespace, name, status FROM object_status")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let key = ObjectKey {
                    kind: r.get(0),
                    namespace: r.get(1),
                    name: r.get(2),
                };
                let status: String = r.get(3);
                Ok((key, serde_json::from_str(&status)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_the_volume_cannot_reach_is_found() {
        const MIB: u64 = 1 << 20;
        // 1 GiB volume, chart default 960Mi, empty file: 1008 MiB reachable.
        assert_eq!(short_of_cap(960 * MIB, 0, 1024 * MIB), None);
        // A 512 MiB volume with the same cap.
        assert_eq!(short_of_cap(960 * MIB, 0, 512 * MIB), Some(496 * MIB));
        // The file's own size counts as room: it is the file that grows.
        assert_eq!(short_of_cap(960 * MIB, 600 * MIB, 400 * MIB), None);
        // The WAL's room is kept aside.
        assert_eq!(short_of_cap(960 * MIB, 0, 970 * MIB), Some(954 * MIB));
        assert_eq!(short_of_cap(MIB, 0, 0), Some(0));
    }

    fn entry(org: &str, type_: &str, outcome: &str, detail: Value) -> LogEntry {
        LogEntry {
            org: org.into(),
            type_: type_.into(),
            outcome: outcome.into(),
            time: "t".into(),
            subject: "s".into(),
            detail,
        }
    }

    #[tokio::test]
    async fn status_and_events_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), None).await.unwrap();
        let key = ObjectKey::new(crate::resources::Kind::TelephonyHook, "acme", "a");
        store
            .save_status(&key, &serde_json::json!({"x": 1}), "t")
            .await
            .unwrap();
        store
            .save_status(&key, &serde_json::json!({"x": 2}), "t")
            .await
            .unwrap();
        assert_eq!(
            store.load_statuses().await.unwrap(),
            vec![(key, serde_json::json!({"x": 2}))]
        );
        for i in 0..5 {
            let t = if i % 2 == 0 { "a.b" } else { "c.d" };
            let outcome = if i == 3 { "FAILURE" } else { "SUCCESS" };
            store
                .log(&entry("acme", t, outcome, serde_json::json!({"i": i})))
                .await
                .unwrap();
        }
        let by_type = |t| EventFilter {
            type_: Some(t),
            outcome: None,
        };
        store
            .log(&entry("other", "a.b", "SUCCESS", serde_json::json!({})))
            .await
            .unwrap();
        let page = store.events("acme", &by_type("a.b"), 0, 2).await.unwrap();
        assert_eq!(
            page.iter()
                .map(|e| e.detail["i"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            [0, 2]
        );
        let next = store
            .events("acme", &by_type("a.b"), page[1].id, 2)
            .await
            .unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].detail["i"], 4);
        assert_eq!(
            store
                .events("acme", &EventFilter::default(), 0, 100)
                .await
                .unwrap()
                .len(),
            5
        );
        let failures = EventFilter {
            type_: None,
            outcome: Some("FAILURE"),
        };
        let failed = store.events("acme", &failures, 0, 100).await.unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].detail["i"], 3);
        let none = EventFilter {
            type_: Some("a.b"),
            outcome: Some("FAILURE"),
        };
        assert!(
            store
                .events("acme", &none, 0, 100)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
