//! What `--database` names: a SQLite file (the default), `:memory:`, or a
//! PostgreSQL server (`postgres://` or `postgresql://` URL). The password
//! of a PostgreSQL URL may come apart from it, so that no process listing
//! or manifest shows it: from `--database-password-file` (a mounted
//! Secret) or `IDPLANE_DATABASE_PASSWORD`; libpq's `PGPASSWORD` and
//! `~/.pgpass` are read as well.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

/// Errors of `--database` and its password.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The URL itself is not repeated: it may hold a password.
    #[error(
        "--database: not a valid PostgreSQL URL ({reason}); expected postgres://USER@HOST:PORT/DATABASE"
    )]
    Url { reason: String },
    #[error("--database-password-file {path}: {source}")]
    PasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--database-password-file {path} is empty")]
    EmptyPasswordFile { path: String },
    #[error("{0} is set, but --database is a SQLite file: a password applies to PostgreSQL only")]
    PasswordWithoutPostgres(&'static str),
}

/// The database `--database` names. Its `Debug` is its `Display`:
/// `PgConnectOptions`' own would print the password.
#[derive(Clone)]
pub enum Database {
    /// Nothing kept across restarts (tests, trials).
    Memory,
    Sqlite(PathBuf),
    Postgres(Box<PgConnectOptions>),
}

/// Where the password of a PostgreSQL URL comes from, besides the URL.
#[derive(Clone, Debug, Default)]
pub struct Password {
    /// `--database-password-file`: read once at start, trailing newline dropped.
    pub file: Option<PathBuf>,
    /// `IDPLANE_DATABASE_PASSWORD`.
    pub value: Option<String>,
}

impl Database {
    /// Reads `--database` and the password settings; a password file wins
    /// over the variable, which wins over a password in the URL.
    pub fn parse(text: &str, password: &Password) -> Result<Self, DatabaseError> {
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            if password.file.is_some() {
                return Err(DatabaseError::PasswordWithoutPostgres(
                    "--database-password-file",
                ));
            }
            if password.value.is_some() {
                return Err(DatabaseError::PasswordWithoutPostgres(
                    "IDPLANE_DATABASE_PASSWORD",
                ));
            }
            return Ok(if text == ":memory:" {
                Self::Memory
            } else {
                Self::Sqlite(PathBuf::from(text))
            });
        }
        // sqlx's parse errors do not quote the URL.
        let mut options = PgConnectOptions::from_str(text).map_err(|e| DatabaseError::Url {
            reason: e.to_string(),
        })?;
        if let Some(path) = &password.file {
            let read =
                std::fs::read_to_string(path).map_err(|source| DatabaseError::PasswordFile {
                    path: path.display().to_string(),
                    source,
                })?;
            let secret = read.trim_end_matches(['\n', '\r']);
            if secret.is_empty() {
                return Err(DatabaseError::EmptyPasswordFile {
                    path: path.display().to_string(),
                });
            }
            options = options.password(secret);
        } else if let Some(secret) = &password.value {
            options = options.password(secret);
        }
        // Names this process in pg_stat_activity.
        options = options.application_name("idplane");
        Ok(Self::Postgres(Box::new(options)))
    }

    /// The SQLite file, if that is the backend.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(path) => Some(path),
            _ => None,
        }
    }
}

/// For logs and errors: a PostgreSQL database as `postgres://USER@HOST:PORT/DB`,
/// never with its password.
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str(":memory:"),
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(o) => write!(
                f,
                "postgres://{}@{}:{}/{}",
                o.get_username(),
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or("")
            ),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, password: &Password) -> Result<Database, DatabaseError> {
        Database::parse(text, password)
    }

    #[test]
    fn paths_memory_and_urls() {
        let none = Password::default();
        assert!(matches!(parse(":memory:", &none), Ok(Database::Memory)));
        let path = parse("/var/lib/idplane/idplane.db", &none).unwrap();
        assert_eq!(
            path.sqlite_path(),
            Some(Path::new("/var/lib/idplane/idplane.db"))
        );
        let pg = parse("postgresql://idp:hunter2@db.example:6543/state", &none).unwrap();
        let shown = pg.to_string();
        assert_eq!(shown, "postgres://idp@db.example:6543/state");
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn the_password_comes_from_a_file_or_the_variable_and_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret-from-file\n").unwrap();
        let from_file = Password {
            file: Some(file.clone()),
            value: Some("from-variable".into()),
        };
        let pg = parse("postgres://idp@h/db", &from_file).unwrap();
        let Database::Postgres(o) = &pg else {
            panic!("not postgres");
        };
        // sqlx keeps the password private: its Debug form would show it, ours must not.
        assert!(format!("{o:?}").contains("s3cret-from-file"));
        assert!(!format!("{pg:?}").contains("s3cret-from-file"));
        std::fs::write(&file, "\n").unwrap();
        let err = parse("postgres://idp@h/db", &from_file).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let missing = Password {
            file: Some(dir.path().join("nope")),
            value: None,
        };
        let err = parse("postgres://idp@h/db", &missing).unwrap_err();
        assert!(
            err.to_string().starts_with("--database-password-file "),
            "{err}"
        );
        let err = parse("state.db", &from_file).unwrap_err();
        assert!(err.to_string().contains("PostgreSQL only"), "{err}");
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let err = parse("postgres://idp:hunter2@h:notaport/db", &Password::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("--database: not a valid PostgreSQL URL"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }
}
