//! At-least-once: idplane is killed (SIGKILL) with messages queued and in
//! flight; after a restart on the same database every accepted message
//! reaches the server (counted there by Message-ID). And a graceful stop
//! (SIGTERM) finishes the attempts under way and queues the claimed rest
//! again, so that nothing waits for a lease and nothing is sent twice.
//! And a full store refuses new mail with a clear 503 while the mail it
//! accepted is still tried, recorded and delivered.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use support::email::*;
use support::{Idplane, http_get, tools};

/// Messages accepted but not yet delivered when a test stops idplane.
const TOTAL: usize = 40;

/// idplane with four delivery workers and `lease`.
fn start(tmp: &std::path::Path, manifests: &std::path::Path, log: &str, lease: &str) -> Idplane {
    let flags = ["--email-lease", lease, "--email-concurrency", "4"];
    start_idplane(tmp, manifests, log, &flags)
}

/// A slow server (400 ms a reply, so attempts are in flight at any time),
/// idplane delivering to it with four workers and `lease`, and [`TOTAL`]
/// messages accepted, the first of them delivered.
fn delivering(
    tmp: &std::path::Path,
    manifests: &std::path::Path,
    lease: &str,
) -> (SmtpServer, Idplane, Vec<String>) {
    let server = SmtpServer::start(
        tmp,
        "slow",
        None,
        ServerOptions {
            delay_ms: 400,
            ..ServerOptions::corp()
        },
    );
    write_corp_provider(manifests, server.port, &fast_retry(5));
    let run = start(tmp, manifests, "run1.log", lease);
    let ids: Vec<String> = (0..TOTAL)
        .map(|i| send_ok(&run, "acme", &format!("message {i}")))
        .collect();
    wait("a first delivery", Duration::from_secs(20), || {
        (!server.accepted().is_empty()).then_some(())
    });
    (server, run, ids)
}

#[test]
fn sigkill_with_messages_queued_and_in_flight_loses_none() {
    let (tmp, manifests) = workspace();
    // Some delivered, some in flight, most still queued.
    let (server, mut run, ids) = delivering(tmp.path(), &manifests, "3s");
    let total = TOTAL;
    run.child.kill().unwrap(); // SIGKILL
    run.child.wait().unwrap();
    let delivered_before = server.accepted().len();
    assert!(delivered_before < total, "killed before the queue drained");

    let run = start(tmp.path(), &manifests, "run2.log", "3s");
    for id in &ids {
        let e = wait_final(&run, "acme", id, Duration::from_secs(60));
        assert_eq!(e["state"], "sent", "{e}");
    }
    let at_server: HashSet<String> = server
        .accepted()
        .into_iter()
        .map(|m| {
            m.trim_matches(['<', '>'])
                .split('@')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    for id in &ids {
        assert!(at_server.contains(id), "{id} never reached the server");
    }
    // At-least-once: an attempt cut short may have been delivered twice; it
    // shows as an interrupted attempt.
    let received = server.accepted().len();
    assert!(received >= total, "{received} < {total}");
    let interrupted: usize = ids
        .iter()
        .map(|id| {
            email(&run, "acme", id)["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["outcome"] == "interrupted")
                .count()
        })
        .sum();
    assert!(
        interrupted >= 1,
        "attempts in flight at the kill are retried after the lease"
    );
    assert!(
        received - total <= interrupted,
        "duplicates only from interrupted attempts"
    );
    let events = events(&run, "acme", "email.delivery");
    assert_eq!(events.len(), total, "one SUCCESS event per message");
}

#[test]
fn sigterm_finishes_attempts_under_way_and_queues_the_rest_again() {
    let (tmp, manifests) = workspace();
    // A lease far longer than the waits below: a message the stop left
    // leased would still be `sending` when they give up.
    let (server, mut run, ids) = delivering(tmp.path(), &manifests, "180s");
    let total = TOTAL;
    // Four attempts are always under way now (each reply takes 400 ms),
    // and each worker holds a chain of up to 8 claimed messages that this
    // server, which does not pipeline, gets one after another.
    let before = server.accepted().len();
    let status = run.stop(Duration::from_secs(30));
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let after = server.accepted().len();
    assert!(
        after > before,
        "attempts under way at the stop were finished: {before} delivered before, {after} after"
    );
    // No message begun after the stop: at most the one under way per
    // worker, and one a worker began in the instant between counting and
    // the signal.
    assert!(
        after - before <= 2 * 4,
        "{} delivered after the stop: the workers went on with their chains",
        after - before
    );
    assert!(after < total, "stopped before the queue drained");
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(
        log.contains("claimed emails not yet tried are queued again"),
        "{log}"
    );
    assert!(log.contains("stopped cleanly"), "{log}");

    let run = start(tmp.path(), &manifests, "run2.log", "180s");
    for id in &ids {
        let e = wait_final(&run, "acme", id, Duration::from_secs(60));
        assert_eq!(e["state"], "sent", "{e}");
        let attempts = e["attempts"].as_array().unwrap();
        assert_eq!(
            attempts.len(),
            1,
            "one attempt each: none cut short, a released claim is no attempt: {e}"
        );
        assert_eq!(attempts[0]["outcome"], "sent", "{e}");
    }
    let mut at_server = server.accepted();
    assert_eq!(at_server.len(), total, "every message exactly once");
    at_server.sort();
    at_server.dedup();
    assert_eq!(at_server.len(), total, "no message twice");
    assert_eq!(events(&run, "acme", "email.delivery").len(), total);
}

/// A message whose text is `kib` KiB of digits (never deduplicated or
/// compressed by SQLite).
fn big_message(i: usize, kib: usize) -> serde_json::Value {
    let text: String = (0..kib * 1024)
        .map(|n| char::from(b'0' + ((n * 7 + i) % 10) as u8))
        .collect();
    json!({"to": ["user@example.com"], "subject": format!("big {i}"), "text": text})
}

#[test]
fn a_full_store_refuses_new_mail_and_delivers_what_it_accepted() {
    let (tmp, manifests) = workspace();
    // The server answers 451 until told otherwise: the accepted mail waits
    // for retries, filling the store.
    let server = SmtpServer::start(tmp.path(), "later", None, ServerOptions::corp());
    server.answer(Some("451 4.3.0 mailbox busy, try later"));
    write_corp_provider(&manifests, server.port, &fast_retry(50));
    let run = start_idplane(
        tmp.path(),
        &manifests,
        "run1.log",
        &["--database-max-size", "1Mi"],
    );
    wait_verified(&run, "acme", "corp", "True");
    let mut ids = Vec::new();
    let refused = loop {
        let (code, body) = send(&run, "acme", big_message(ids.len(), 16));
        if code != 202 {
            break (code, body);
        }
        ids.push(body["id"].as_str().unwrap().to_string());
        assert!(ids.len() < 100, "1 MiB never filled");
    };
    let (code, body) = refused;
    assert_eq!(
        (code, body["code"].as_str()),
        (503, Some("store_full")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("the email was not accepted: the message store is full: ")
            && message.ends_with(&format!(
                "MiB in use, and room kept for what {} unsent messages will still write; new mail is accepted up to 0.9 MiB (9/10 of --database-max-size)",
                ids.len()
            )),
        "{message}"
    );
    assert!(
        ids.len() >= 20,
        "only {} accepted before the store was full",
        ids.len()
    );
    // While no new mail fits, the retries of the accepted mail are still
    // recorded, each with the server's reply.
    wait(
        "three attempts of the first message",
        Duration::from_secs(20),
        || {
            let e = email(&run, "acme", &ids[0]);
            let attempts = e["attempts"].as_array().unwrap().clone();
            (attempts.len() >= 3).then_some(attempts)
        },
    )
    .iter()
    .filter(|a| a["outcome"] != "running")
    .for_each(|a| {
        assert_eq!(a["reply"], "451 4.3.0 mailbox busy, try later", "{a}");
    });
    let (code, body) = send(&run, "acme", big_message(1000, 16));
    assert_eq!(
        (code, body["code"].as_str()),
        (503, Some("store_full")),
        "still full: {body}"
    );

    server.answer(None);
    for id in &ids {
        let e = wait_final(&run, "acme", id, Duration::from_secs(60));
        assert_eq!(e["state"], "sent", "{e}");
    }
    let mut at_server = server.accepted();
    assert_eq!(
        at_server.len(),
        ids.len(),
        "every accepted message exactly once"
    );
    at_server.sort();
    at_server.dedup();
    assert_eq!(at_server.len(), ids.len(), "no message twice");
    // Sent mail keeps no bodies: the space is new mail's again.
    let (code, body) = send(&run, "acme", big_message(2000, 16));
    assert_eq!(code, 202, "{body}");
    let e = wait_final(
        &run,
        "acme",
        body["id"].as_str().unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(e["state"], "sent", "{e}");
}

/// Another process (Python's sqlite3, as a backup or an operator's shell
/// would) holds the database's write lock for 13 s, over idplane's 5 s
/// busy timeout, while an attempt is under way: an accept meanwhile gets a
/// 503 after 5 s, the attempt's outcome (queued behind it) fails after 5 s
/// more, and is stored once the lock is gone, not left for the lease
/// (which would send the message again).
#[test]
fn an_outcome_the_locked_store_refused_is_stored_once_the_lock_is_gone() {
    use std::io::BufRead;
    let (tmp, manifests) = workspace();
    // Each reply takes 0.4 s: the attempt is under way when the lock comes.
    let server = SmtpServer::start(
        tmp.path(),
        "slow",
        None,
        ServerOptions {
            delay_ms: 400,
            ..ServerOptions::corp()
        },
    );
    write_corp_provider(&manifests, server.port, &fast_retry(5));
    let run = start_idplane(
        tmp.path(),
        &manifests,
        "run1.log",
        &["--email-lease", "120s"],
    );
    wait_verified(&run, "acme", "corp", "True");
    let id = send_ok(&run, "acme", "under a lock");
    wait("the attempt under way", Duration::from_secs(10), || {
        (email(&run, "acme", &id)["state"] == "sending").then_some(())
    });
    let database = tmp.path().join("state/idplane.db");
    let mut locker = std::process::Command::new(&tools().python)
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(13)\n\
             c.execute('ROLLBACK')\n",
        ])
        .arg(&database)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(locker.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    // New mail meanwhile: a clear 503 once the busy timeout is over.
    let (code, body) = send(
        &run,
        "acme",
        json!({"to": ["user@example.com"], "subject": "while locked", "text": "hello"}),
    );
    assert_eq!(
        (code, body["code"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("database is locked"),
        "{body}"
    );
    assert!(locker.wait().unwrap().success());
    let e = wait_final(&run, "acme", &id, Duration::from_secs(30));
    assert_eq!(e["state"], "sent", "{e}");
    let attempts = e["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "stored, not retried after the lease: {e}"
    );
    assert_eq!(server.accepted().len(), 1, "sent once");
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(
        log.contains(
            "cannot store the outcome of an attempt yet; trying again while its lease lasts"
        ),
        "the outcome met the lock: {log}"
    );
}

/// A queued message whose stored content this version cannot read (here
/// rewritten by Python's sqlite3, as a row from another version of
/// idplane would look) fails alone: its attempt ends `failed` with the
/// reason and a FAILURE event, nothing is sent for it, and the mail beside
/// it and after it is delivered. Before, the claim that met it failed its
/// whole batch, and every later one: nothing was delivered any more.
#[test]
fn a_stored_message_this_version_cannot_read_fails_alone() {
    let (tmp, manifests) = workspace();
    let server = SmtpServer::start(tmp.path(), "later", None, ServerOptions::corp());
    server.answer(Some("451 4.3.0 mailbox busy, try later"));
    let slow_retry = "{maxAttempts: 5, initialDelay: 60s, multiplier: 2, maxDelay: 5m}";
    write_corp_provider(&manifests, server.port, slow_retry);
    let run = start_idplane(tmp.path(), &manifests, "run1.log", &[]);
    wait_verified(&run, "acme", "corp", "True");
    let unreadable = send_ok(&run, "acme", "stored by another version");
    let beside = send_ok(&run, "acme", "beside it");
    for id in [&unreadable, &beside] {
        wait("a first attempt refused", Duration::from_secs(20), || {
            (email(&run, "acme", id)["state"] == "retrying").then_some(())
        });
    }
    server.answer(None);
    // Both due now, one of them in a shape this version does not know.
    let database = tmp.path().join("state/idplane.db");
    let status = std::process::Command::new(&tools().python)
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=30)\n\
             c.execute(\"UPDATE email_messages SET content = 'recipients: [] (not JSON)' WHERE id = ?\", (sys.argv[2],))\n\
             c.execute('UPDATE email_messages SET next_attempt_at = 0, due_at = 0 WHERE id IN (?, ?)', (sys.argv[2], sys.argv[3]))\n\
             c.commit()\n",
        ])
        .arg(&database)
        .args([&unreadable, &beside])
        .status()
        .unwrap();
    assert!(status.success());
    // New mail wakes the queue, which takes all three.
    let after = send_ok(&run, "acme", "after it");

    let failed = wait_final(&run, "acme", &unreadable, Duration::from_secs(20));
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["subject"], serde_json::Value::Null, "{failed}");
    // The same reason on GET, in the attempt and in the event; the failure
    // is stored although the content is not even JSON.
    let why = "the stored message cannot be read: expected value at line 1 column 1";
    let attempts = failed["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{failed}");
    assert_eq!(attempts[1]["outcome"], "permanent", "{failed}");
    let ev = failed["events"].as_array().unwrap();
    assert_eq!(ev.len(), 1, "{failed}");
    assert_eq!(ev[0]["outcome"], "FAILURE", "{failed}");
    for reason in [
        &failed["contentError"],
        &attempts[1]["reply"],
        &ev[0]["detail"]["reply"],
    ] {
        assert!(reason.as_str().unwrap().starts_with(why), "{failed}");
    }

    for id in [&beside, &after] {
        let e = wait_final(&run, "acme", id, Duration::from_secs(20));
        assert_eq!(e["state"], "sent", "{e}");
    }
    let sent = server.accepted();
    assert_eq!(
        sent.len(),
        2,
        "nothing sent for the unreadable one: {sent:?}"
    );
    for id in [&beside, &after] {
        assert!(
            sent.iter().any(|m| m.contains(id.as_str())),
            "{id}: {sent:?}"
        );
    }
}

/// A cap above what the volume can hold is reported at start: the disk
/// would fill before it, and the room the cap keeps for outcomes would not
/// be there. No test machine has 15 TiB free; a 1 MiB cap is well within.
#[test]
fn a_cap_larger_than_the_volume_is_reported_at_start() {
    let (tmp, manifests) = workspace();
    let warning = "--database-max-size is more than the volume has room for";
    for (cap, warned) in [("15Ti", true), ("1Mi", false)] {
        let log = format!("{cap}.log");
        let run = start_idplane(tmp.path(), &manifests, &log, &["--database-max-size", cap]);
        wait("the runtime", Duration::from_secs(20), || {
            http_get(&run.url("/healthz"), None)
                .0
                .eq(&200)
                .then_some(())
        });
        let text = std::fs::read_to_string(&run.log).unwrap();
        assert_eq!(text.contains(warning), warned, "{cap}: {text}");
        // Plain text (no colour codes outside a terminal), with the numbers.
        if warned {
            assert!(text.contains(" cap_mib=15728640 reachable_mib="), "{text}");
        }
    }
}
