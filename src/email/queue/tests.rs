//! The queue's tests: through [`Queue`] as the delivery logic uses it,
//! on an in-memory store or a file under a cap, and the batch statements'
//! answers read by position.

use super::sqlite::{BatchInput, run_batch};
use super::*;

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

async fn queue() -> Queue {
    let store = crate::store::Store::memory().await.unwrap();
    let (queue, committer) = Queue::new(store.sqlite().unwrap().clone(), None);
    tokio::spawn(committer.run());
    queue
}

#[tokio::test]
async fn idempotency_window() {
    let q = queue().await;
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
    let text: String = sqlx::query_scalar("SELECT content FROM email_messages WHERE id = ?")
        .bind(id)
        .fetch_one(&q.pool)
        .await
        .unwrap();
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
    let (q, committer) = Queue::new(store.sqlite().unwrap().clone(), store.accept_limit());
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
        let (q, committer) = Queue::new(store.sqlite().unwrap().clone(), store.accept_limit());
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
    let (q, committer) = Queue::new(store.sqlite().unwrap().clone(), store.accept_limit());
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
    let (q, committer) = Queue::new(store.sqlite().unwrap().clone(), None);
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

#[tokio::test]
async fn claim_lease_expiry_and_stale_finish() {
    let q = queue().await;
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

#[tokio::test]
async fn a_released_claim_is_due_again_as_before() {
    let q = queue().await;
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

#[tokio::test]
async fn one_batch_keys_finishes_and_claim() {
    let q = queue().await;
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

#[tokio::test]
async fn failed_batch_is_rolled_back_and_the_queue_goes_on() {
    let q = queue().await;
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
#[tokio::test]
async fn an_unreadable_row_is_claimed_with_the_reason_and_stops_nothing() {
    let q = queue().await;
    q.insert(message("m1", None, 0)).await.unwrap();
    q.insert(message("m2", None, 1)).await.unwrap();
    sqlx::query("UPDATE email_messages SET content = '{\"recipients\":[]}' WHERE id = 'm1'")
        .execute(&q.pool)
        .await
        .unwrap();
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
    sqlx::query("UPDATE email_messages SET content = 'not json {' WHERE id = 'm4'")
        .execute(&q.pool)
        .await
        .unwrap();
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

#[tokio::test]
async fn retry_waits_until_due() {
    let q = queue().await;
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

#[tokio::test]
async fn the_latest_test_email_of_each_provider_is_found() {
    let q = queue().await;
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
