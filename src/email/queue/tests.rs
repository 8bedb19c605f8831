//! The queue's tests: through [`Queue`] as the delivery logic uses it.
//! The rules run on both backends (each such test twice: `…::sqlite` on an
//! in-memory store, `…::postgres` on a fresh PostgreSQL database); the
//! store cap and the batch statements' answers read by position are
//! SQLite's; two queues on one PostgreSQL database stand for two replicas.

use super::sqlite::{BatchInput, run_batch};
use super::*;
use crate::store::{Store, on_pool};

/// Runs the test body `$body` (an `async fn(Queue)`) on each backend, as
/// the tests `$body::sqlite` and `$body::postgres`.
macro_rules! on_both_backends {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test]
            async fn sqlite() {
                let store = crate::store::Store::memory().await.unwrap();
                super::$body(super::queue_on(&store)).await;
            }

            #[tokio::test]
            async fn postgres() {
                let store = crate::store::testing::postgres().await;
                super::$body(super::queue_on(&store)).await;
            }
        }
    )*};
}

on_both_backends!(
    idempotency_window,
    claim_lease_expiry_and_stale_finish,
    a_released_claim_is_due_again_as_before,
    one_batch_keys_finishes_and_claim,
    failed_batch_is_rolled_back_and_the_queue_goes_on,
    an_unreadable_row_is_claimed_with_the_reason_and_stops_nothing,
    retry_waits_until_due,
    the_latest_test_email_of_each_provider_is_found,
    bodies_go_and_attempt_rows_stay_four,
    a_domain_row_is_stored_once_and_each_check_taken_once,
);

/// A queue on `store`, its committer spawned.
fn queue_on(store: &Store) -> Queue {
    let (queue, committer) = Queue::new(store.backend().clone(), None);
    tokio::spawn(committer.run());
    queue
}

/// Runs one statement on the queue's database, as a hand edit would.
async fn edit(q: &Queue, sql: &str) {
    on_pool!(&q.backend, |pool| {
        sqlx::query(sql).execute(pool).await.unwrap();
    });
}

fn message(id: &str, key: Option<&str>, now: i64) -> NewMessage {
    NewMessage {
        id: id.into(),
        org: "acme".into(),
        idempotency_key: key.map(str::to_string),
        sender: "a@example.com".into(),
        brand: None,
        content: Content {
            to: vec!["b@example.com".into()],
            cc: vec![],
            subject: "s".into(),
            text: Some("t".into()),
            html: None,
        },
        now,
        log: None,
    }
}

async fn idempotency_window(q: Queue) {
    let day = IDEMPOTENCY_WINDOW_MILLIS;
    assert_eq!(
        q.insert(message("m1", Some("k"), 0)).await.unwrap(),
        Inserted::New("m1".into())
    );
    assert_eq!(
        q.insert(message("m2", Some("k"), day - 1)).await.unwrap(),
        Inserted::Existing("m1".into())
    );
    assert_eq!(
        q.insert(message("m3", Some("k"), day)).await.unwrap(),
        Inserted::New("m3".into())
    );
    assert_eq!(
        q.insert(message("m4", None, 0)).await.unwrap(),
        Inserted::New("m4".into())
    );
    assert!(q.get("acme", "m2").await.unwrap().is_none());
    assert!(q.get("other", "m1").await.unwrap().is_none());
}

/// A message with a body of `bytes` (random letters: SQLite stores
/// text as it is, so the size on disk follows).
fn big(id: &str, bytes: usize) -> NewMessage {
    use rand::Rng;
    let mut m = message(id, None, 0);
    let body: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(bytes)
        .map(char::from)
        .collect();
    m.content.text = Some(body);
    m
}

fn sent(id: &str, attempt: u32) -> Finished {
    Finished {
        id: id.into(),
        attempt,
        started_at: 10,
        finished_at: 20,
        outcome: Outcome::Sent,
        reply: "250 ok".into(),
        provider: "default".into(),
        next: Next::Sent,
        log: Some(LogEntry {
            org: "acme".into(),
            type_: "email.delivery".into(),
            outcome: "SUCCESS".into(),
            time: "t".into(),
            subject: id.into(),
            detail: serde_json::json!({}),
        }),
    }
}

/// The stored content of a message, as the queue keeps it.
async fn stored_content(q: &Queue, id: &str) -> Value {
    const SQL: &str = "SELECT CAST(content AS TEXT) FROM email_messages WHERE id = $1";
    let text: String = on_pool!(&q.backend, |pool| {
        sqlx::query_scalar(SQL)
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap()
    });
    serde_json::from_str(&text).unwrap()
}

/// Fills a store capped at 1 MiB with messages of `body` bytes, then
/// delivers them all, each after five failed attempts with replies of
/// the longest kept length (an outage's worth of writes), with delivery
/// events as the worker writes them; returns the refusal that ended the
/// filling.
async fn fill_then_deliver(body: usize) -> QueueError {
    let dir = tempfile::tempdir().unwrap();
    let cap = crate::store::MIN_MAX_SIZE;
    let store = crate::store::Store::open(&dir.path().join("q.db"), Some(cap))
        .await
        .unwrap();
    let (q, committer) = Queue::new(store.backend().clone(), store.accept_limit());
    tokio::spawn(committer.run());
    let mut accepted = Vec::new();
    let refusal = loop {
        let id = format!("m{}", accepted.len());
        match q.insert(big(&id, body)).await {
            Ok(Inserted::New(id)) => accepted.push(id),
            Ok(other) => panic!("{other:?}"),
            Err(e) => break e,
        }
        assert!(accepted.len() < 5000, "1 MiB never filled");
    };
    assert!(accepted.len() >= 20, "{} accepted", accepted.len());
    assert!(
        q.get("acme", &format!("m{}", accepted.len()))
            .await
            .unwrap()
            .is_none(),
        "the refused message is not stored"
    );
    // Past the accept limit, the outcomes still go in: every message is
    // claimed, fails five times, is claimed again and sent.
    let reply = format!(
        "451 4.3.0 {}",
        "x".repeat(crate::email::worker::MAX_STORED_REPLY - 10)
    );
    for round in 0..6 {
        let now = round * 100;
        let mut done = 0;
        while done < accepted.len() {
            let claimed = q.claim(now, now + 50, 32).await.unwrap();
            assert!(
                !claimed.is_empty(),
                "round {round}: claims stopped at {done}"
            );
            for c in claimed {
                let mut f = sent(&c.id, c.attempt);
                f.started_at = now;
                f.finished_at = now + 1;
                if round < 5 {
                    (f.outcome, f.reply, f.next) =
                        (Outcome::Transient, reply.clone(), Next::Retry(now + 100));
                    f.log = None;
                } else if let Some(log) = &mut f.log {
                    log.detail = serde_json::json!({
                        "messageId": c.id, "from": "Acme Mail <noreply@acme.example>",
                        "to": ["someone.with.a.long.name@customer.example"], "cc": [],
                        "attempts": 6, "provider": "EmailProvider acme/corp",
                        "reply": "250 2.0.0 Ok: queued as 4B1C2D3E4F",
                    });
                }
                assert!(q.finish(f).await.unwrap(), "round {round}: {}", c.id);
                done += 1;
            }
        }
    }
    for id in &accepted {
        let m = q.get("acme", id).await.unwrap().unwrap();
        let numbers: Vec<u32> = m.attempts.iter().map(|a| a.number).collect();
        assert_eq!(
            (m.state.as_str(), numbers),
            ("sent", vec![1, 2, 3, 6]),
            "{id}"
        );
        assert_eq!(m.content.unwrap().subject, "s", "what GET shows is kept");
        assert_eq!(stored_content(&q, id).await["text"], Value::Null, "{id}");
    }
    assert_eq!(q.events_about("acme", &accepted[0]).await.unwrap().len(), 1);
    // With the mail sent, new mail fits again.
    assert_eq!(
        q.insert(big("again", body)).await.unwrap(),
        Inserted::New("again".into())
    );
    refusal
}

#[tokio::test]
async fn a_full_store_refuses_new_mail_and_still_stores_outcomes() {
    for body in [300, 1500, 16 * 1024] {
        let refusal = fill_then_deliver(body).await;
        let QueueError::Full(reason) = &refusal else {
            panic!("{body}: {refusal:?}");
        };
        assert!(
            reason.contains("new mail is accepted up to 0.9 MiB (9/10 of --database-max-size)"),
            "{body}: {reason}"
        );
    }
}

#[tokio::test]
async fn a_store_reopened_full_refuses_new_mail_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let cap = crate::store::MIN_MAX_SIZE;
    {
        let store = crate::store::Store::open(&path, Some(cap)).await.unwrap();
        let (q, committer) = Queue::new(store.backend().clone(), store.accept_limit());
        let committer = tokio::spawn(committer.run());
        let mut n = 0;
        while q.insert(big(&format!("m{n}"), 4096)).await.is_ok() {
            n += 1;
        }
        drop(q);
        committer.await.unwrap();
        store.sqlite().unwrap().close().await;
    }
    let store = crate::store::Store::open(&path, Some(cap)).await.unwrap();
    let (q, committer) = Queue::new(store.backend().clone(), store.accept_limit());
    tokio::spawn(committer.run());
    let err = q.insert(big("after", 4096)).await.unwrap_err();
    assert!(
        matches!(&err, QueueError::Full(r) if r.contains("unsent messages will still write")),
        "measured at start, not met as SQLITE_FULL: {err:?}"
    );
}

#[tokio::test]
async fn new_mail_that_fills_the_disk_does_not_take_the_batch_outcomes_with_it() {
    // No accept limit: the insert meets SQLite's own SQLITE_FULL, as on
    // a full disk.
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(&dir.path().join("q.db"), Some(1024 * 1024))
        .await
        .unwrap();
    let (q, committer) = Queue::new(store.backend().clone(), None);
    tokio::spawn(committer.run());
    q.insert(message("small", None, 0)).await.unwrap();
    let c = q.claim(0, 1_000, 1).await.unwrap();
    // Both wait in the channel when the committer (on this test's one
    // thread) next runs: one batch.
    let (huge, finish) = tokio::join!(q.insert(big("huge", 2 * 1024 * 1024)), async {
        q.finish(sent("small", c[0].attempt)).await
    });
    let err = huge.unwrap_err();
    assert!(
        matches!(&err, QueueError::Full(r) if r.contains("database or disk is full")),
        "{err:?}"
    );
    assert!(finish.unwrap(), "the finish in the same batch took effect");
    assert_eq!(q.get("acme", "small").await.unwrap().unwrap().state, "sent");
    assert!(q.get("acme", "huge").await.unwrap().is_none());
}

async fn claim_lease_expiry_and_stale_finish(q: Queue) {
    q.insert(message("m1", None, 100)).await.unwrap();
    assert!(
        q.claim(99, 1_000, 10).await.unwrap().is_empty(),
        "not due yet"
    );
    assert_eq!(q.next_due().await.unwrap(), Some(100));
    let first = q.claim(100, 1_000, 10).await.unwrap();
    assert_eq!((first.len(), first[0].attempt, first[0].counted), (1, 1, 1));
    let running = q.get("acme", "m1").await.unwrap().unwrap();
    assert_eq!(running.state, "sending");
    assert_eq!(running.attempts.len(), 1, "the running attempt is shown");
    assert_eq!(
        (
            running.attempts[0].started_at,
            running.attempts[0].outcome.as_deref()
        ),
        (100, None)
    );
    assert!(q.claim(500, 1_500, 10).await.unwrap().is_empty(), "leased");
    assert_eq!(q.next_due().await.unwrap(), Some(1_000));
    // The lease runs out: the attempt is closed as interrupted and the
    // message taken again; the interrupted attempt does not count.
    let second = q.claim(1_000, 2_000, 10).await.unwrap();
    assert_eq!((second[0].attempt, second[0].counted), (2, 1));
    let finished = |attempt, next| Finished {
        id: "m1".into(),
        attempt,
        started_at: 1_000,
        finished_at: 1_100,
        outcome: Outcome::Sent,
        reply: "250 ok".into(),
        provider: "default".into(),
        next,
        log: Some(LogEntry {
            org: "acme".into(),
            type_: "email.delivery".into(),
            outcome: "SUCCESS".into(),
            time: "t".into(),
            subject: "m1".into(),
            detail: serde_json::json!({}),
        }),
    };
    assert!(
        !q.finish(finished(1, Next::Sent)).await.unwrap(),
        "the stale attempt does not decide"
    );
    assert!(q.finish(finished(2, Next::Sent)).await.unwrap());
    let m = q.get("acme", "m1").await.unwrap().unwrap();
    assert_eq!(m.state, "sent");
    let outcomes: Vec<_> = m
        .attempts
        .iter()
        .map(|a| a.outcome.clone().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["sent", "sent"],
        "the late attempt's reply is kept"
    );
    assert_eq!(
        q.events_about("acme", "m1").await.unwrap().len(),
        1,
        "one event"
    );
    assert_eq!(q.pending_by_org().await.unwrap().get("acme"), None);
    assert_eq!(q.next_due().await.unwrap(), None);
}

async fn a_released_claim_is_due_again_as_before(q: Queue) {
    q.insert(message("m1", None, 100)).await.unwrap();
    q.insert(message("m2", None, 100)).await.unwrap();
    assert_eq!(q.claim(200, 10_000, 10).await.unwrap().len(), 2);
    // m2's attempt 7 does not hold it: no release.
    let released = q
        .release(&[("m1".into(), 1), ("m2".into(), 7)], 300)
        .await
        .unwrap();
    assert_eq!(released, 1);
    let m1 = q.get("acme", "m1").await.unwrap().unwrap();
    assert_eq!(m1.state, "queued");
    assert!(m1.attempts.is_empty(), "a release is no attempt");
    assert_eq!(q.get("acme", "m2").await.unwrap().unwrap().state, "sending");
    assert_eq!(q.next_due().await.unwrap(), Some(100), "due as before");
    let again = q.claim(300, 10_000, 10).await.unwrap();
    let taken: Vec<_> = again.iter().map(|c| (c.id.as_str(), c.attempt)).collect();
    assert_eq!(taken, [("m1", 1)]);
    // A message retrying when claimed goes back to retrying.
    let transient = Finished {
        id: "m1".into(),
        attempt: 1,
        started_at: 300,
        finished_at: 310,
        outcome: Outcome::Transient,
        reply: "451 later".into(),
        provider: "default".into(),
        next: Next::Retry(400),
        log: None,
    };
    assert!(q.finish(transient).await.unwrap());
    let second = q.claim(400, 10_000, 10).await.unwrap();
    assert_eq!(second[0].attempt, 2);
    assert_eq!(q.release(&[("m1".into(), 2)], 410).await.unwrap(), 1);
    let m1 = q.get("acme", "m1").await.unwrap().unwrap();
    assert_eq!((m1.state.as_str(), m1.attempts.len()), ("retrying", 1));
    assert_eq!(q.claim(410, 10_000, 10).await.unwrap()[0].attempt, 2);
}

async fn one_batch_keys_finishes_and_claim(q: Queue) {
    // Both inserts reach the committer before it runs: one batch, in
    // which the second use of the key answers with the first id.
    let (a, b, c) = tokio::join!(
        q.insert(message("m1", Some("k"), 0)),
        q.insert(message("m2", Some("k"), 1)),
        q.insert(message("m3", None, 2)),
    );
    assert_eq!(a.unwrap(), Inserted::New("m1".into()));
    assert_eq!(b.unwrap(), Inserted::Existing("m1".into()));
    assert_eq!(c.unwrap(), Inserted::New("m3".into()));
    let claimed = q.claim(10, 1_000, 10).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["m1", "m3"], "due order");
    let done = |id: &str, next| Finished {
        id: id.into(),
        attempt: 1,
        started_at: 10,
        finished_at: 20,
        outcome: Outcome::Sent,
        reply: "250 ok".into(),
        provider: "default".into(),
        next,
        log: None,
    };
    // Two finishes and a claim in one batch: the retried message is not
    // due yet, so the claim takes nothing.
    let (f1, f3, again) = tokio::join!(
        q.finish(done("m1", Next::Sent)),
        q.finish(done("m3", Next::Retry(500))),
        q.claim(30, 1_000, 10),
    );
    assert!(f1.unwrap() && f3.unwrap());
    assert!(again.unwrap().is_empty());
    assert_eq!(q.next_due().await.unwrap(), Some(500));
    assert_eq!(q.get("acme", "m1").await.unwrap().unwrap().state, "sent");
    assert_eq!(
        q.get("acme", "m3").await.unwrap().unwrap().state,
        "retrying"
    );
    assert_eq!(q.pending_by_org().await.unwrap().get("acme"), Some(&1));
}

async fn failed_batch_is_rolled_back_and_the_queue_goes_on(q: Queue) {
    q.insert(message("m1", None, 0)).await.unwrap();
    // One batch (both reach the committer before it runs) with an id
    // that is taken: the batch fails as a whole, m2 included.
    let (m2, again) = tokio::join!(
        q.insert(message("m2", None, 1)),
        q.insert(message("m1", None, 1)),
    );
    assert!(m2.is_err() && again.is_err());
    assert!(q.get("acme", "m2").await.unwrap().is_none());
    // The failed batch's transaction did not stay open: the next batch
    // begins its own and commits.
    assert_eq!(
        q.insert(message("m3", None, 2)).await.unwrap(),
        Inserted::New("m3".into())
    );
    let claimed = q.claim(10, 1_000, 10).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["m1", "m3"]);
}

/// A row whose content this version cannot read (written by another
/// version, or edited by hand) is claimed with the reason instead of
/// failing the batch: before, every claim's batch failed on it, and
/// the accepts and outcomes in those batches with it, for good.
async fn an_unreadable_row_is_claimed_with_the_reason_and_stops_nothing(q: Queue) {
    q.insert(message("m1", None, 0)).await.unwrap();
    q.insert(message("m2", None, 1)).await.unwrap();
    edit(
        &q,
        "UPDATE email_messages SET content = '{\"recipients\":[]}' WHERE id = 'm1'",
    )
    .await;
    // The claim and a new message in one batch.
    let (claimed, m3) = tokio::join!(q.claim(10, 1_000, 10), q.insert(message("m3", None, 2)));
    assert_eq!(m3.unwrap(), Inserted::New("m3".into()));
    let claimed = claimed.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        ["m1", "m2", "m3"],
        "the batch's new message is due too"
    );
    let reason = claimed[0].content.as_ref().unwrap_err();
    assert_eq!(
        reason,
        "the stored message cannot be read: missing field `to` at line 1 column 17"
    );
    assert_eq!(claimed[1].content.as_ref().unwrap().subject, "s");
    let shown = q.get("acme", "m1").await.unwrap().unwrap();
    assert_eq!(shown.state, "sending");
    assert_eq!(shown.content.as_ref().unwrap_err(), reason);

    // Not JSON at all: claimed the same way, and its failure is stored
    // (the finish leaves such content as it is) beside new mail.
    q.insert(message("m4", None, 3)).await.unwrap();
    edit(
        &q,
        "UPDATE email_messages SET content = 'not json {' WHERE id = 'm4'",
    )
    .await;
    let claimed = q.claim(20, 1_000, 10).await.unwrap();
    let m4 = claimed.iter().find(|c| c.id == "m4").unwrap();
    let reason = m4.content.as_ref().unwrap_err();
    assert!(
        reason.starts_with("the stored message cannot be read: expected"),
        "{reason}"
    );
    let failed = Finished {
        id: "m4".into(),
        attempt: 1,
        started_at: 20,
        finished_at: 21,
        outcome: Outcome::Permanent,
        reply: reason.clone(),
        provider: "EmailProvider/corp".into(),
        next: Next::Failed,
        log: None,
    };
    let (finish, m5) = tokio::join!(q.finish(failed), q.insert(message("m5", None, 21)));
    assert!(finish.unwrap(), "the failure is stored");
    assert_eq!(m5.unwrap(), Inserted::New("m5".into()));
    assert_eq!(q.get("acme", "m4").await.unwrap().unwrap().state, "failed");
}

/// The batch's answers are read by position; statements that return
/// other than exactly two rows (a statement edited, one lost) make an
/// error, never a batch answered from the wrong rows.
#[tokio::test]
async fn batch_rows_other_than_two_are_an_error() {
    let store = crate::store::Store::memory().await.unwrap();
    let mut conn = store.sqlite().unwrap().acquire().await.unwrap();
    let input = BatchInput {
        messages: &[],
        finishes: &[],
        claim: None,
    };
    for (sql, rows) in [
        ("SELECT json_array() WHERE json_valid(?1);", 1),
        (
            "SELECT json_array() WHERE json_valid(?1); SELECT json_array(), 0; SELECT json_array();",
            3,
        ),
    ] {
        let e = run_batch(&mut conn, sql, &input).await.err().unwrap();
        assert_eq!(
            e.to_string(),
            QueueError::Sql(format!(
                "the batch statements returned {rows} rows instead of 2"
            ))
            .to_string()
        );
    }
    let two = "SELECT json_array() WHERE json_valid(?1); SELECT json_array(), 4096;";
    let rows = run_batch(&mut conn, two, &input).await.unwrap();
    assert!(rows.applied.is_empty() && rows.claimed.is_empty());
    assert_eq!(rows.used_bytes, 4096);
}

async fn retry_waits_until_due(q: Queue) {
    q.insert(message("m1", None, 0)).await.unwrap();
    q.claim(0, 10_000, 1).await.unwrap();
    let f = Finished {
        id: "m1".into(),
        attempt: 1,
        started_at: 0,
        finished_at: 10,
        outcome: Outcome::Transient,
        reply: "451 later".into(),
        provider: "EmailProvider/corp".into(),
        next: Next::Retry(500),
        log: None,
    };
    assert!(q.finish(f).await.unwrap());
    assert_eq!(q.next_due().await.unwrap(), Some(500));
    assert!(q.claim(499, 10_000, 1).await.unwrap().is_empty());
    let again = q.claim(500, 10_000, 1).await.unwrap();
    assert_eq!((again[0].attempt, again[0].counted), (2, 2));
    let totals = q.provider_totals().await.unwrap();
    assert_eq!(totals[0].retried, 1);

    // The second attempt fails for good: a failure, not a retry (the
    // live count has 1 retried, 1 failed; so must a restart).
    let f = Finished {
        id: "m1".into(),
        attempt: 2,
        started_at: 500,
        finished_at: 520,
        outcome: Outcome::Transient,
        reply: "451 still later".into(),
        provider: "EmailProvider/corp".into(),
        next: Next::Failed,
        log: None,
    };
    assert!(q.finish(f).await.unwrap());
    let t = &q.provider_totals().await.unwrap()[0];
    assert_eq!((t.retried, t.failed, t.sent), (1, 1, 0));
    assert_eq!(t.last_failure, Some((520, "451 still later".into())));
}

async fn the_latest_test_email_of_each_provider_is_found(q: Queue) {
    let test = |org: &str, subject: &str, outcome: &str, time: &str| LogEntry {
        org: org.into(),
        type_: "email.test".into(),
        outcome: outcome.into(),
        time: time.into(),
        subject: subject.into(),
        detail: serde_json::json!({"to": "ops@acme.example", "reply": outcome}),
    };
    for log in [
        test("acme", "EmailProvider/corp", "FAILURE", "t1"),
        test("acme", "EmailProvider/corp", "SUCCESS", "t2"),
        test("acme", "default", "SUCCESS", "t3"),
        test("beta", "EmailProvider/corp", "FAILURE", "t4"),
    ] {
        q.log(&log).await.unwrap();
    }
    let mut found: Vec<(String, String, String, String)> = q
        .last_tests()
        .await
        .unwrap()
        .into_iter()
        .map(|(org, name, log)| (org, name, log.outcome, log.time))
        .collect();
    found.sort();
    let want = [
        ("acme", "corp", "SUCCESS", "t2"),
        ("beta", "corp", "FAILURE", "t4"),
    ];
    let want: Vec<(String, String, String, String)> = want
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(found, want);
}

/// A message tried six times keeps four attempt rows (the first three and
/// the latest), and loses its bodies once sent, not while it retries.
async fn bodies_go_and_attempt_rows_stay_four(q: Queue) {
    q.insert(message("m1", None, 0)).await.unwrap();
    for round in 0..6 {
        let now = round * 100;
        let claimed = q.claim(now, now + 50, 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "round {round}");
        let mut f = sent("m1", claimed[0].attempt);
        (f.started_at, f.finished_at) = (now, now + 1);
        if round < 5 {
            (f.outcome, f.next, f.log) = (Outcome::Transient, Next::Retry(now + 100), None);
        }
        assert!(q.finish(f).await.unwrap(), "round {round}");
        let text = &stored_content(&q, "m1").await["text"];
        assert_eq!(text.is_null(), round == 5, "round {round}: {text}");
    }
    let m = q.get("acme", "m1").await.unwrap().unwrap();
    let numbers: Vec<u32> = m.attempts.iter().map(|a| a.number).collect();
    assert_eq!((m.state.as_str(), numbers), ("sent", vec![1, 2, 3, 6]));
    assert_eq!(m.content.unwrap().subject, "s", "what GET shows is kept");
    assert_eq!(q.events_about("acme", "m1").await.unwrap().len(), 1);
    let totals = q.provider_totals().await.unwrap();
    assert!(totals.is_empty(), "the default provider has no totals");
}

/// Two queues on one PostgreSQL database, as two replicas: each with its
/// own pool and committer.
async fn two_replicas() -> (Queue, Queue) {
    let store = crate::store::testing::postgres().await;
    let Backend::Postgres(pool) = store.backend() else {
        unreachable!("a PostgreSQL store")
    };
    let other = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    (queue_on(&store), {
        let (q, committer) = Queue::new(Backend::Postgres(other), None);
        tokio::spawn(committer.run());
        q
    })
}

/// Claims on `q` at `now` until a claim comes back empty; the ids taken.
async fn claim_all(q: Queue, now: i64) -> Vec<(String, u32)> {
    let mut taken = Vec::new();
    loop {
        let claimed = q.claim(now, now + 10_000, 7).await.unwrap();
        if claimed.is_empty() {
            return taken;
        }
        taken.extend(claimed.into_iter().map(|c| (c.id, c.attempt)));
    }
}

/// Asserts every id of `ids` is among the claims exactly once, each as
/// `attempt`.
fn each_once(a: &[(String, u32)], b: &[(String, u32)], ids: &[String], attempt: u32) {
    let mut all: Vec<&(String, u32)> = a.iter().chain(b).collect();
    all.sort();
    let want: Vec<(String, u32)> = ids.iter().map(|id| (id.clone(), attempt)).collect();
    assert_eq!(all, want.iter().collect::<Vec<_>>());
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both replicas took some ({} and {})",
        a.len(),
        b.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_claim_every_message_exactly_once() {
    let (q1, q2) = two_replicas().await;
    let mut ids: Vec<String> = (0..200).map(|i| format!("m{i:03}")).collect();
    let inserts = ids.iter().map(|id| q1.insert(message(id, None, 0)));
    for r in futures::future::join_all(inserts).await {
        r.unwrap();
    }
    let (a, b) = tokio::join!(
        tokio::spawn(claim_all(q1.clone(), 10)),
        tokio::spawn(claim_all(q2.clone(), 10))
    );
    ids.sort();
    each_once(&a.unwrap(), &b.unwrap(), &ids, 1);

    // Every lease runs out (the replica holding them was killed): both
    // take them over at once; each message once, each attempt closed as
    // interrupted once.
    let (a, b) = tokio::join!(
        tokio::spawn(claim_all(q1.clone(), 20_000)),
        tokio::spawn(claim_all(q2.clone(), 20_000))
    );
    each_once(&a.unwrap(), &b.unwrap(), &ids, 2);
    for id in ids.iter().step_by(37) {
        let m = q2.get("acme", id).await.unwrap().unwrap();
        let attempts: Vec<(u32, Option<&str>)> = m
            .attempts
            .iter()
            .map(|a| (a.number, a.outcome.as_deref()))
            .collect();
        assert_eq!(attempts, [(1, Some("interrupted")), (2, None)], "{id}");
    }
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_by_the_other_replica() {
    let (q1, q2) = two_replicas().await;
    q1.insert(message("m1", None, 0)).await.unwrap();
    let first = q1.claim(100, 1_000, 10).await.unwrap();
    assert_eq!(first[0].attempt, 1);
    assert!(q2.claim(999, 2_000, 10).await.unwrap().is_empty(), "leased");
    let second = q2.claim(1_000, 2_000, 10).await.unwrap();
    assert_eq!((second[0].attempt, second[0].counted), (2, 1));
    // The first replica comes back with its outcome: too late.
    assert!(!q1.finish(sent("m1", 1)).await.unwrap());
    assert!(q2.finish(sent("m1", 2)).await.unwrap());
    let m = q1.get("acme", "m1").await.unwrap().unwrap();
    assert_eq!(m.state, "sent");
    assert_eq!(q1.events_about("acme", "m1").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_sent_to_two_replicas_at_once_is_one_message() {
    let (q1, q2) = two_replicas().await;
    for k in 0..20 {
        let key = format!("k{k}");
        let (a, b) = tokio::join!(
            tokio::spawn({
                let (q, key) = (q1.clone(), key.clone());
                async move { q.insert(message(&format!("a{k}"), Some(&key), 0)).await }
            }),
            tokio::spawn({
                let (q, key) = (q2.clone(), key.clone());
                async move { q.insert(message(&format!("b{k}"), Some(&key), 0)).await }
            })
        );
        let id = |r: Inserted| match r {
            Inserted::New(id) | Inserted::Existing(id) => id,
        };
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        let new = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Inserted::New(_)))
            .count();
        assert_eq!(new, 1, "{key}: {a:?} {b:?}");
        assert_eq!(id(a), id(b), "{key}");
    }
    assert_eq!(q1.pending_by_org().await.unwrap()["acme"], 20);
}

#[tokio::test]
async fn a_commit_with_new_mail_wakes_every_replica() {
    let (q1, q2) = two_replicas().await;
    let Backend::Postgres(pool) = &q1.backend else {
        unreachable!()
    };
    let mut listener = sqlx::postgres::PgListener::connect_with(pool)
        .await
        .unwrap();
    listener.listen(postgres::WAKE_CHANNEL).await.unwrap();
    let wait = std::time::Duration::from_secs(5);
    // A batch without new mail wakes no one.
    q2.claim(0, 100, 10).await.unwrap();
    q2.insert(message("m1", None, 0)).await.unwrap();
    let woken = tokio::time::timeout(wait, listener.recv()).await;
    assert_eq!(woken.unwrap().unwrap().channel(), postgres::WAKE_CHANNEL);
    let again = tokio::time::timeout(std::time::Duration::from_millis(300), listener.recv()).await;
    assert!(again.is_err(), "one notification per batch");
}

/// The first row of a domain is stored once (a second replica's, with
/// another token, takes the stored one); a check is taken by the first
/// that asks since the row was read, and a changed domain keeps its token.
async fn a_domain_row_is_stored_once_and_each_check_taken_once(q: Queue) {
    let row = |token: &str| DomainRow {
        org: "acme".into(),
        name: "brand".into(),
        domain: "acme.example".into(),
        record_name: "_idplane.mail.acme.example".into(),
        token: token.into(),
        status: "POLLING".into(),
        reason: "Polling".into(),
        message: String::new(),
        polling_since: 0,
        checked_at: None,
        verified_at: None,
    };
    let first = q.adopt_domain(&row("t1")).await.unwrap();
    assert_eq!(first, row("t1"));
    assert_eq!(q.adopt_domain(&row("t2")).await.unwrap().token, "t1");
    assert!(q.claim_domain_check(&first, 10).await.unwrap());
    assert!(!q.claim_domain_check(&first, 11).await.unwrap(), "taken");
    let stored = q.domain("acme", "brand").await.unwrap().unwrap();
    assert_eq!(stored.checked_at, Some(10));
    assert!(q.claim_domain_check(&stored, 20).await.unwrap());
    let moved = DomainRow {
        domain: "other.example".into(),
        ..row("t3")
    };
    let adopted = q.adopt_domain(&moved).await.unwrap();
    assert_eq!(
        (adopted.domain.as_str(), adopted.token.as_str()),
        ("other.example", "t1")
    );
    assert_eq!(adopted.checked_at, None, "polling again");
}
