//! Telephony through `idplane run` with its store on PostgreSQL (issue 17):
//! a passcode sent through a real hook is committed before the send
//! answers and verified once; the abuse guard counts in the database,
//! without phone numbers in clear; the hook's numbers reach status from the
//! database; and a shared store without `--otp-hash-key` refuses to start.
//! The scenarios with two processes are in `tests/shared_store.rs`.

mod support;

use std::path::Path;
use std::time::Duration;

use support::postgres::fresh_database;
use support::process::{ALLOW_LOOPBACK, Idplane, block_on, wait_for};
use support::telephony::*;

const HASH_KEY: &str = "a-hash-key-of-at-least-32-characters!";

/// `idplane run` on the workspace's manifests with its store at `url`.
fn run_on(ws: &Workspace, url: &str, log: &str, extra: &[&str]) -> Idplane {
    let mut flags = ALLOW_LOOPBACK.to_vec();
    flags.extend_from_slice(extra);
    Idplane::run_manifests(
        &ws.manifests(),
        Path::new(url),
        &ws.path().join("tokens.yaml"),
        &flags,
        &[("RUST_LOG", "info")],
        &ws.path().join(log),
    )
}

/// Runs one query on the database at `url`, with text parameters.
fn query<T>(url: &str, sql: &str, binds: &[&str]) -> Vec<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let mut query = sqlx::query_scalar(sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        query.fetch_all(&mut conn).await.unwrap()
    })
}

#[test]
fn an_otp_is_sent_and_verified_with_the_store_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new();
    let hook = HookServer::start(&rt, successful("sms"));
    ws.write_org("acme", &[HookSpec::active("primary", hook.url())]);
    let url = fresh_database();
    let run = run_on(
        &ws,
        &url,
        "pg.log",
        &[
            "--otp-hash-key",
            HASH_KEY,
            "--otp-phone-limit",
            "2",
            "--telephony-status-interval",
            "250ms",
        ],
    );
    wait_configured(&run, "acme");

    let (status, receipt) = send(&run, "acme", "+14155550100");
    assert_eq!(status, 200, "{receipt}");
    let tx = receipt["transactionId"].as_str().unwrap().to_string();
    let code = hook.seen().last().unwrap().code();
    // Committed before the answer: another replica would find it now.
    let states: Vec<String> = query(
        &url,
        "SELECT state FROM otp_transactions WHERE id = $1",
        &[&tx],
    );
    assert_eq!(states, ["delivered"]);

    let (status, answer) = verify(&run, "acme", &tx, "000000");
    assert_eq!((status, answer["result"].as_str()), (200, Some("invalid")));
    let (status, answer) = verify(&run, "acme", &tx, &code);
    assert_eq!(
        (status, answer["result"].as_str()),
        (200, Some("verified")),
        "{answer}"
    );
    assert_eq!(verify(&run, "acme", &tx, &code).1["reason"], "already_used");
    let attempts: Vec<i64> = query(
        &url,
        "SELECT attempts FROM otp_transactions WHERE id = $1",
        &[&tx],
    );
    assert_eq!(attempts, [2]);

    // The guard counts in the database, the number only as a keyed hash.
    assert_eq!(send(&run, "acme", "+14155550100").0, 200);
    let (status, refused) = send(&run, "acme", "+14155550100");
    assert_eq!(
        (status, refused["code"].as_str()),
        (429, Some("phone_rate_limited")),
        "{refused}"
    );
    let keys: Vec<Vec<u8>> = query(&url, "SELECT key FROM telephony_guard_sends", &[]);
    assert_eq!(
        keys.len(),
        4,
        "two sends, each under the phone and the org limit"
    );
    assert!(
        keys.iter()
            .all(|k| !String::from_utf8_lossy(k).contains("4155550100"))
    );

    // The hook's numbers reach status from the database.
    wait_metrics(&run, "acme", "primary", 2, 0);
}

#[test]
fn a_shared_store_without_otp_hash_key_refuses_to_start() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new();
    let hook = HookServer::start(&rt, successful("sms"));
    ws.write_org("acme", &[HookSpec::active("primary", hook.url())]);
    let url = fresh_database();
    let (manifests, tokens) = (ws.manifests(), ws.path().join("tokens.yaml"));
    let mut args = support::process::run_args(&manifests, Path::new(&url), &tokens);
    args.extend_from_slice(&ALLOW_LOOPBACK);
    let log = ws.path().join("nokey.log");
    let mut run = Idplane::start(&args, &[("RUST_LOG", "info")], &log);
    let status = wait_for("idplane to exit", Duration::from_secs(30), || {
        run.child.0.try_wait().unwrap()
    });
    assert!(!status.success());
    let text = wait_for("the reason in the log", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("--otp-hash-key").then_some(text)
    });
    assert!(text.contains("same on every replica"), "{text}");
    // The database's password is never shown.
    let password = url.split(':').nth(2).unwrap().split('@').next().unwrap();
    assert!(!text.contains(password), "{text}");
}
