//! Starting on PostgreSQL (issue 17), against a real server: a database
//! that is down at start (idplane stays alive, `/readyz` says why, and it
//! becomes ready by itself once the server is up), the password apart from
//! the URL and a wrong one (never shown), two processes migrating one fresh
//! database at once, and the one writer of status among `idplane run`
//! processes (the advisory lock), taken over when its holder is SIGKILLed.
//!
//! Each test has its own database on the server `scripts/test.sh` starts
//! (`IDPLANE_TEST_DATABASE_URL`), or a server of its own when it stops it.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::postgres::{OwnServer, fresh_database, query_i64, split_password};
use support::*;

const TOKEN: &str = "shared-store-token-0123456789";

/// The status writes this process made (`idplane_status_writes_total`).
const WRITES_OK: &str = "idplane_status_writes_total{result=\"ok\"}";

/// A manifest directory and a token file for `idplane run`.
struct Workspace {
    dir: tempfile::TempDir,
    manifests: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let (dir, manifests) = workspace_with_token("shared", TOKEN);
        Workspace { dir, manifests }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `idplane run` on `database` (a URL) with `extra` flags and `env`
    /// and the passcode key every replica on PostgreSQL needs, logging at
    /// info (the default is warnings), once it listens (it may not be
    /// ready: see [`Idplane::wait_ready`]).
    fn start(&self, database: &str, extra: &[&str], env: &[(&str, &str)], log: &str) -> Idplane {
        let tokens = self.path("tokens.yaml");
        let mut args = run_args(&self.manifests, Path::new(database), &tokens);
        args.extend(support::postgres::OTP_HASH_KEY);
        args.extend_from_slice(extra);
        let mut env = env.to_vec();
        env.push(("RUST_LOG", "idplane=info"));
        Idplane::start(&args, &env, &self.path(log))
    }

    /// Adds an EnrollmentPolicy `name` of the org acme, for the group
    /// `name`, at `priority` (unique in the org).
    fn policy(&self, name: &str, priority: u32) {
        let yaml = format!(
            "apiVersion: idplane.dev/v1alpha1\nkind: EnrollmentPolicy\n\
             metadata: {{name: {name}, namespace: acme}}\n\
             spec:\n  priority: {priority}\n  groups: [{name}]\n\
             \x20 authenticators:\n    - {{key: okta_email, enroll: REQUIRED}}\n\
             \x20 rules:\n    - {{name: everywhere, enroll: LOGIN}}\n"
        );
        std::fs::write(self.manifests.join(format!("{name}.yaml")), yaml).unwrap();
    }
}

/// How long a start may take on a busy 2-core machine.
const READY: Duration = Duration::from_secs(60);

#[test]
fn a_database_down_at_start_leaves_idplane_alive_and_unready_until_it_is_up() {
    let server = OwnServer::start();
    let (shown, password) = split_password(&server.url);
    server.pause("fast");
    let ws = Workspace::new();
    // The password in the URL itself: the one place it could leak from.
    let mut run = ws.start(&server.url, &[], &[], "down.log");

    assert_eq!(http_get(&run.url("/healthz"), None).0, 200, "alive");
    let answer = wait_for("/readyz to say store_unavailable", READY, || {
        let (code, answer) = http_json("GET", &run.url("/readyz"), None, None);
        (code == 503 && answer["code"] == "store_unavailable").then_some(answer)
    });
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("cannot reach the database {shown}: ")),
        "the database named, without its password: {message}"
    );
    assert!(
        message.to_lowercase().contains("connection refused"),
        "{message}"
    );
    assert!(!message.contains(&password), "{message}");
    let config = run.url("/v1/orgs/acme/config");
    let (code, answer) = http_json("GET", &config, Some(TOKEN), None);
    assert_eq!(
        (code, answer["code"].as_str()),
        (503, Some("store_unavailable")),
        "{answer}"
    );

    // Tried again with backoff (0.5 s, 1 s, 2 s, …), each try logged with
    // why, and the process keeps running.
    wait_for("three tries in the log", READY, || {
        let log = run.log_text();
        (log.matches("cannot reach the database").count() >= 3).then_some(())
    });
    assert!(run.child.try_wait().unwrap().is_none(), "idplane exited");
    let log = run.log_text();
    assert!(log.contains(&shown), "{log}");
    assert!(log.to_lowercase().contains("connection refused"), "{log}");

    // The server comes up: ready without a restart (the backoff is at most
    // 15 s between tries).
    server.resume();
    let up = Instant::now();
    run.wait_ready(READY);
    eprintln!("ready {:?} after the server came up", up.elapsed());
    let log = run.log_text();
    assert_eq!(log.matches("listening on").count(), 1, "one start: {log}");
    assert!(!log.contains(&password), "the password in the log: {log}");
    let (code, body) = http_get(&config, Some(TOKEN));
    assert_eq!(code, 200, "{body}");
}

#[test]
fn the_password_comes_from_a_file_or_the_variable_apart_from_the_url() {
    let url = fresh_database();
    let (bare, password) = split_password(&url);
    let ws = Workspace::new();
    let file = ws.path("database-password");
    // As a mounted Secret often has it: with a trailing newline.
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let file = file.to_str().unwrap();
    let mut from_file = ws.start(
        &bare,
        &["--database-password-file", file],
        &[],
        "password-file.log",
    );
    let mut from_variable = ws.start(
        &bare,
        &[],
        &[("IDPLANE_DATABASE_PASSWORD", &password)],
        "password-variable.log",
    );
    for run in [&mut from_file, &mut from_variable] {
        run.wait_ready(READY);
        let log = run.log_text();
        assert!(!log.contains(&password), "the password in the log: {log}");
    }
}

#[test]
fn a_wrong_password_ends_the_start_with_a_clear_error_that_never_shows_it() {
    let url = fresh_database();
    let (bare, right) = split_password(&url);
    let wrong = "wrong-password-4a7b9c1d";
    let ws = Workspace::new();
    let file = ws.path("database-password");
    std::fs::write(&file, wrong).unwrap();
    let file = file.to_str().unwrap();
    let in_url = bare.replacen("://idplane@", &format!("://idplane:{wrong}@"), 1);
    // Where the wrong password comes from: (case, --database, flags, env).
    type Case<'a> = (&'a str, &'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: [Case; 3] = [
        (
            "file",
            &bare,
            vec!["--database-password-file", file],
            vec![],
        ),
        (
            "variable",
            &bare,
            vec![],
            vec![("IDPLANE_DATABASE_PASSWORD", wrong)],
        ),
        ("url", &in_url, vec![], vec![]),
    ];
    for (case, database, extra, env) in cases {
        let mut run = ws.start(database, &extra, &env, &format!("wrong-{case}.log"));
        let status = wait_for(&format!("idplane to exit ({case})"), READY, || {
            run.child.try_wait().unwrap()
        });
        assert!(!status.success(), "{case}: {status}");
        let log = run.log_text();
        assert!(
            log.contains("password authentication failed for user \"idplane\""),
            "{case}: {log}"
        );
        assert!(log.contains(&bare), "{case}: the database named: {log}");
        assert!(!log.contains(wrong), "{case}: the password shown: {log}");
        assert!(!log.contains(&right), "{case}: the password shown: {log}");
    }
}

#[test]
fn help_never_shows_the_database_url_from_the_environment() {
    let url = "postgres://idplane:help-password-93c1@db.example:5432/idplane";
    for mode in ["run", "operator"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_idplane"))
            .args([mode, "--help"])
            .env("IDPLANE_DATABASE", url)
            .output()
            .unwrap();
        let help = text(&out.stdout);
        assert!(help.contains("IDPLANE_DATABASE"), "{mode}: {help}");
        assert!(!help.contains("help-password-93c1"), "{mode}: {help}");
    }
}

#[test]
fn two_processes_migrating_one_fresh_database_at_once_both_start() {
    let url = fresh_database();
    let ws = Workspace::new();
    // Both started at the same moment: each migrates as soon as it listens.
    let mut runs: Vec<Idplane> = std::thread::scope(|scope| {
        let starts: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|n| {
                let (ws, url) = (&ws, &url);
                scope.spawn(move || ws.start(url, &[], &[], &format!("migrate-{n}.log")))
            })
            .collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    for run in &mut runs {
        run.wait_ready(READY);
    }
    let files = std::fs::read_dir(root().join("migrations/postgres"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count();
    let applied = query_i64(&url, "SELECT count(*) FROM _sqlx_migrations WHERE success");
    assert_eq!(applied, files as i64, "each migration applied once");
}

#[test]
fn in_run_mode_one_process_writes_status_and_the_other_takes_over_when_it_is_killed() {
    let url = fresh_database();
    let ws = Workspace::new();
    ws.policy("first", 1);
    let mut a = ws.start(&url, &[], &[], "leader-a.log");
    let mut b = ws.start(&url, &[], &[], "leader-b.log");
    a.wait_ready(READY);
    b.wait_ready(READY);
    let rows = |name: &str| {
        query_i64(
            &url,
            &format!(
                "SELECT count(*) FROM object_status WHERE namespace = 'acme' AND name = '{name}'"
            ),
        )
    };

    // Exactly one holds the lock, and only it writes status.
    let a_leads = wait_for("one leader", READY, || {
        match (a.metric("idplane_leader"), b.metric("idplane_leader")) {
            (1.0, 0.0) => Some(true),
            (0.0, 1.0) => Some(false),
            _ => None,
        }
    });
    let (mut leader, follower) = if a_leads { (a, b) } else { (b, a) };
    wait_for("first's status in the database", READY, || {
        (rows("first") == 1).then_some(())
    });
    ws.policy("second", 2);
    wait_for("second's status in the database", READY, || {
        (rows("second") == 1).then_some(())
    });
    assert!(leader.metric(WRITES_OK) >= 2.0, "the leader wrote");
    assert_eq!(follower.metric(WRITES_OK), 0.0, "the follower wrote");
    assert_eq!(follower.metric("idplane_leader"), 0.0);

    // SIGKILL: PostgreSQL drops the lock with the dead process's
    // connection, and the other process takes it within a few seconds
    // (it tries every 2 s).
    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    let killed = Instant::now();
    wait_for(
        "the other process to take over",
        Duration::from_secs(10),
        || (follower.metric("idplane_leader") == 1.0).then_some(()),
    );
    eprintln!("taken over {:?} after the SIGKILL", killed.elapsed());
    ws.policy("third", 3);
    wait_for("third's status in the database", READY, || {
        (rows("third") == 1).then_some(())
    });
    assert!(follower.metric(WRITES_OK) >= 1.0, "the new leader wrote");
    assert!(
        follower
            .log_text()
            .contains("holding the status writer's lock"),
        "{}",
        follower.log_text()
    );
}
