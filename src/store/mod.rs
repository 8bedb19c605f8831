//! Persistence, on one of two backends:
//!
//! - **SQLite** (the default, and `run` mode): one file (WAL journal,
//!   `synchronous=FULL`: a committed transaction survives a power cut)
//!   that belongs to one process;
//! - **PostgreSQL** (`--database postgres://…`): shared by every replica,
//!   so that each one serves every call.
//!
//! [`Backend`] holds the pool of either; [`on_pool!`] runs one piece of
//! code (the same SQL, written with `$1…` placeholders that both accept)
//! against whichever it is. Where the SQL differs, a module has a file per
//! backend. Migrations are in `migrations/sqlite` and `migrations/postgres`.
//!
//! Beside this file: `database.rs`, what `--database` names and how to
//! reach it; `system_log.rs`, each org's system log (the one row type and
//! the one INSERT every module writes it with); `group_commit.rs`, the loop
//! of the batched writers (the telephony store writer, the email queue's
//! committer); `leader.rs`, the advisory lock that elects one writer of
//! status among the processes sharing a PostgreSQL database in `run` mode.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row};

use crate::resources::ObjectKey;

pub mod database;
pub mod group_commit;
pub mod leader;
mod system_log;

pub use database::{Database, DatabaseError};
pub use system_log::{AppendLog, EventFilter, LogEntry, LogEvent};

/// Runs `$body` with `$pool` bound to the store's pool, whichever backend
/// it is: one piece of SQL and Rust, compiled once per backend.
macro_rules! on_pool {
    ($backend:expr, |$pool:ident| $body:expr) => {
        match $backend {
            $crate::store::Backend::Sqlite($pool) => $body,
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {database}: {source}")]
    Open {
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("--database-max-size caps a SQLite file; a PostgreSQL database is sized by its server")]
    MaxSizeOnPostgres,
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
}

/// Whether a database error means "the database cannot be reached now"
/// (connection refused or lost, pool timed out, server shutting down or
/// starting, too many connections), as opposed to a statement it refused.
/// Calls that meet it answer 503 `store_unavailable` and are tried again by
/// their caller; idplane reconnects by itself.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // 08: connection exception; 57P01-57P03: admin shutdown, crash
            // shutdown, cannot connect now; 53300: too many connections.
            c.starts_with("08") || c.starts_with("57P") || c == "53300"
        }),
        _ => false,
    }
}

/// The pool of the backend in use.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The database.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// The cap on the database file, in bytes, if any (SQLite only).
    max_size: Option<u64>,
}

/// The smallest `--database-max-size`: the schema and a little mail.
pub const MIN_MAX_SIZE: u64 = 1024 * 1024;

/// Room the WAL file beside the database needs: `journal_size_limit`
/// (8 MiB) and as much again for a transaction larger than usual.
const WAL_ROOM: u64 = 16 << 20;

/// How long a call waits for a PostgreSQL connection before it answers
/// 503 `store_unavailable`: short, so that callers hear of an outage at
/// once rather than after sqlx's default of 30 s.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the first connection at start may take (the TCP connect, TLS
/// and authentication) before the start is tried again.
const PG_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per replica to PostgreSQL: the two batched writers hold one
/// each while they commit, reads and the listener take the rest.
const PG_CONNECTIONS: u32 = 16;

/// Bytes the database file can still reach on its volume, when that is
/// less than `cap`: then the disk fills before the cap, and the room the
/// cap keeps for the outcomes of accepted mail is not there. `size` is the
/// file's size now, `available` the volume's free bytes.
fn short_of_cap(cap: u64, size: u64, available: u64) -> Option<u64> {
    let reachable = (size + available).saturating_sub(WAL_ROOM);
    (reachable < cap).then_some(reachable)
}

impl Store {
    /// Opens the database that `--database` names and brings its schema
    /// up to date. PostgreSQL: fails when the server cannot be reached (the
    /// caller tries again, see `cli::serve`); several replicas migrating
    /// at once take turns on the migrator's advisory lock.
    pub async fn connect(database: &Database, max_size: Option<u64>) -> Result<Self, StoreError> {
        match database {
            Database::Memory => Self::memory().await,
            Database::Sqlite(path) => Self::open(path, max_size).await,
            Database::Postgres(options) => {
                if max_size.is_some() {
                    return Err(StoreError::MaxSizeOnPostgres);
                }
                Self::open_postgres(options, &database.to_string()).await
            }
        }
    }

    async fn open_postgres(options: &PgConnectOptions, shown: &str) -> Result<Self, StoreError> {
        let open = |source| StoreError::Open {
            database: shown.to_string(),
            source,
        };
        // One connection of its own, not a pool: a pool retries a refused
        // connection until its timeout and then says only that it timed
        // out, where this says why (refused, unknown host, password
        // authentication failed, …) for the log and `/readyz`. The
        // migrator holds a session-level advisory lock that it does not
        // release when a migration fails: closed whatever the outcome,
        // the lock goes with the connection.
        let mut migrating =
            tokio::time::timeout(PG_START_TIMEOUT, PgConnection::connect_with(options))
                .await
                .unwrap_or_else(|_| {
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {} s", PG_START_TIMEOUT.as_secs()),
                    )))
                })
                .map_err(open)?;
        let migrated = sqlx::migrate!("./migrations/postgres")
            .run(&mut migrating)
            .await;
        let _ = migrating.close().await;
        migrated?;
        let pool = PgPoolOptions::new()
            .max_connections(PG_CONNECTIONS)
            .acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(open)?;
        Ok(Self {
            backend: Backend::Postgres(pool),
            max_size: None,
        })
    }

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
                database: display.clone(),
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
                database: display,
                source,
            })?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
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
        Ok(Self {
            backend: Backend::Sqlite(pool),
            max_size,
        })
    }

    /// An in-memory store, for tests and `--database :memory:`.
    pub async fn memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self {
            backend: Backend::Sqlite(pool),
            max_size: None,
        })
    }

    /// The pool of the backend in use.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The SQLite pool; `None` on PostgreSQL. For tests of what only
    /// SQLite has (the file's size cap, a locked file).
    #[cfg(test)]
    pub fn sqlite(&self) -> Option<&SqlitePool> {
        match &self.backend {
            Backend::Sqlite(pool) => Some(pool),
            Backend::Postgres(_) => None,
        }
    }

    /// Whether other processes may share this database (PostgreSQL):
    /// then what one replica counts or holds in memory is not the whole.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
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
        on_pool!(&self.backend, |pool| {
            sqlx::query(
                "INSERT INTO object_status (kind, namespace, name, status, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (kind, namespace, name) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
            )
            .bind(&key.kind)
            .bind(&key.namespace)
            .bind(&key.name)
            .bind(status.to_string())
            .bind(now)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// Every stored status (`run` mode's status of each object).
    pub async fn load_statuses(&self) -> Result<Vec<(ObjectKey, Value)>, StoreError> {
        self.statuses(None).await
    }

    /// The stored statuses of one org's objects.
    pub async fn org_statuses(&self, org: &str) -> Result<Vec<(ObjectKey, Value)>, StoreError> {
        self.statuses(Some(org)).await
    }

    async fn statuses(&self, org: Option<&str>) -> Result<Vec<(ObjectKey, Value)>, StoreError> {
        const SQL: &str = "SELECT kind, namespace, name, status FROM object_status
                           WHERE CAST($1 AS TEXT) IS NULL OR namespace = $1";
        let rows: Vec<(String, String, String, String)> = on_pool!(&self.backend, |pool| {
            sqlx::query(SQL)
                .bind(org)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect()
        });
        rows.into_iter()
            .map(|(kind, namespace, name, status)| {
                let key = ObjectKey {
                    kind,
                    namespace,
                    name,
                };
                Ok((key, serde_json::from_str(&status)?))
            })
            .collect()
    }
}

/// Stores for unit tests on a real PostgreSQL: a fresh database each, on
/// the server `scripts/test.sh` starts (`IDPLANE_TEST_DATABASE_URL`).
#[cfg(test)]
pub mod testing {
    use super::*;

    /// A store on a new, empty PostgreSQL database; fails the test, saying
    /// how to get a server, when there is none.
    pub async fn postgres() -> Store {
        use rand::Rng;
        use sqlx::Connection;
        let url = std::env::var("IDPLANE_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!(
                "IDPLANE_TEST_DATABASE_URL is not set: this test needs a real PostgreSQL. Run it through \
                 scripts/test.sh, or: eval \"$(scripts/test-postgres.sh start)\" && export IDPLANE_TEST_DATABASE_URL=\"$DATABASE_URL\""
            )
        });
        let name = format!("u_{:016x}", rand::rng().random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
        let database =
            Database::parse(&format!("{base}/{name}"), &database::Password::default()).unwrap();
        Store::connect(&database, None).await.unwrap()
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
    async fn status_and_events_round_trip_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), None).await.unwrap();
        status_and_events_round_trip(store).await;
    }

    #[tokio::test]
    async fn status_and_events_round_trip_on_postgres() {
        status_and_events_round_trip(testing::postgres().await).await;
    }

    #[tokio::test]
    async fn an_unreachable_postgres_is_unavailable_not_a_failure() {
        // Nothing listens on port 1: connection refused.
        let database = Database::parse(
            "postgres://idplane@127.0.0.1:1/idplane",
            &database::Password::default(),
        )
        .unwrap();
        let Err(StoreError::Open { source, .. }) = Store::connect(&database, None).await else {
            panic!("connected to nothing");
        };
        assert!(is_unavailable(&source), "{source}");
        let capped = Store::connect(&database, Some(MIN_MAX_SIZE)).await;
        let Err(e @ StoreError::MaxSizeOnPostgres) = capped else {
            panic!("a size cap on PostgreSQL was accepted");
        };
        assert_eq!(
            e.to_string(),
            "--database-max-size caps a SQLite file; a PostgreSQL database is sized by its server"
        );
    }

    /// Two replicas' transactions commit out of id order: a reader paging
    /// by id must not pass the earlier id before its transaction commits.
    #[tokio::test]
    async fn postgres_events_never_skip_a_row_that_commits_late() {
        let store = testing::postgres().await;
        let Backend::Postgres(pool) = store.backend() else {
            unreachable!()
        };
        let mut slow = pool.begin().await.unwrap();
        let first = slow
            .append_log(&[entry("acme", "a.b", "SUCCESS", serde_json::json!({"i": 1}))])
            .await
            .unwrap();
        let second = store
            .log(&entry(
                "acme",
                "a.b",
                "SUCCESS",
                serde_json::json!({"i": 2}),
            ))
            .await
            .unwrap();
        assert!(first < second);
        let all = EventFilter::default();
        assert!(
            store.events("acme", &all, 0, 10).await.unwrap().is_empty(),
            "the committed later row waits for the open earlier one"
        );
        slow.commit().await.unwrap();
        let ids: Vec<i64> = store
            .events("acme", &all, 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, [first, second]);
    }

    async fn status_and_events_round_trip(store: Store) {
        let key = ObjectKey::new(crate::resources::Kind::TelephonyHook, "acme", "a");
        store
            .save_status(&key, &serde_json::json!({"x": 1}), "t")
            .await
            .unwrap();
        store
            .save_status(&key, &serde_json::json!({"x": 2}), "t")
            .await
            .unwrap();
        let other = ObjectKey::new(crate::resources::Kind::TelephonyHook, "other", "a");
        store
            .save_status(&other, &serde_json::json!({"y": 1}), "t")
            .await
            .unwrap();
        assert_eq!(store.load_statuses().await.unwrap().len(), 2);
        assert_eq!(
            store.org_statuses("acme").await.unwrap(),
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
