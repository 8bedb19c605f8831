//! PostgreSQL for the shared-store tests: a fresh database per test on the
//! server `scripts/test.sh` starts (its URL in `IDPLANE_TEST_DATABASE_URL`),
//! or a server of the test's own when the test restarts it.

use std::path::PathBuf;
use std::process::Command;

use super::process::block_on;

/// The passcode key of every test replica on PostgreSQL: replicas verify
/// each other's codes, so idplane refuses to start there without one.
pub const OTP_HASH_KEY: [&str; 2] = ["--otp-hash-key", "test-replicas-share-this-key-0123456789"];

/// The variable `scripts/test.sh` sets to its PostgreSQL server's URL.
pub const URL_VAR: &str = "IDPLANE_TEST_DATABASE_URL";

/// The test server's URL; a clear failure without one.
pub fn server_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{URL_VAR} is not set: these tests need a real PostgreSQL. Run them through \
             scripts/test.sh, or: eval \"$(scripts/test-postgres.sh start)\" && export {URL_VAR}=\"$DATABASE_URL\""
        )
    })
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    format!("{base}/{name}")
}

/// `url` without its password, and the password: for `--database` with
/// `--database-password-file` or `IDPLANE_DATABASE_PASSWORD`.
pub fn split_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (credentials, host) = rest.split_once('@').expect("a user in the URL");
    let (user, password) = credentials.split_once(':').expect("a password in the URL");
    (format!("{scheme}://{user}@{host}"), password.to_string())
}

/// The first column of the first row of `sql` run on the database at
/// `url`, as an integer (a count).
pub fn query_i64(url: &str, sql: &str) -> i64 {
    block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("cannot reach the test database");
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    })
}

/// A new, empty database on the server at `url`; its URL.
pub fn fresh_database_on(url: &str) -> String {
    use rand::Rng;
    let name = format!("t_{:016x}", rand::rng().random::<u64>());
    block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("cannot reach the test PostgreSQL server");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
    });
    with_database(url, &name)
}

/// A new, empty database on the test server; its URL (with its password).
pub fn fresh_database() -> String {
    fresh_database_on(&server_url())
}

/// A PostgreSQL server of the test's own, from `scripts/test-postgres.sh`:
/// for tests that stop or restart it. Stopped and removed when dropped.
pub struct OwnServer {
    dir: PathBuf,
    pub url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/test-postgres.sh")
}

impl OwnServer {
    pub fn start() -> Self {
        let out = Command::new(script())
            .arg("start")
            // A port of its own that no other test's server takes: one the
            // kernel just handed out (the script goes up from it if taken).
            .env("PGT_PORT", super::process::free_port().to_string())
            .env_remove("PGT_FSYNC")
            .output()
            .expect("scripts/test-postgres.sh start");
        assert!(
            out.status.success(),
            "scripts/test-postgres.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("no {name} in: {text}"))
                .trim_matches('\'')
                .to_string()
        };
        Self {
            dir: PathBuf::from(var("PGT_DIR")),
            url: var("DATABASE_URL"),
        }
    }

    /// Stops the server (`fast`: clients are disconnected; `immediate`: as
    /// a crash), keeps it down `down_seconds`, and starts it again on the
    /// same port with the same data.
    pub fn restart(&self, mode: &str, down_seconds: u32) {
        let status = Command::new(script())
            .args([
                "restart",
                self.dir.to_str().unwrap(),
                mode,
                &down_seconds.to_string(),
            ])
            .status()
            .expect("scripts/test-postgres.sh restart");
        assert!(status.success(), "restart failed");
    }

    /// Stops the server (`fast` or `immediate`, as [`OwnServer::restart`])
    /// until [`OwnServer::resume`]: its port and data are kept.
    pub fn pause(&self, mode: &str) {
        self.script_ok(&["pause", self.dir.to_str().unwrap(), mode]);
    }

    /// Starts the server [`OwnServer::pause`] stopped.
    pub fn resume(&self) {
        self.script_ok(&["resume", self.dir.to_str().unwrap()]);
    }

    fn script_ok(&self, args: &[&str]) {
        let out = Command::new(script())
            .args(args)
            .output()
            .expect("scripts/test-postgres.sh");
        assert!(
            out.status.success(),
            "scripts/test-postgres.sh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs SQL as the admin over the server's socket; its output (`-At`).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(script())
            .args(["psql", self.dir.to_str().unwrap(), "-At", "-c", sql])
            .output()
            .expect("scripts/test-postgres.sh psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", self.dir.to_str().unwrap()])
            .output();
    }
}
