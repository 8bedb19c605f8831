//! Email delivery through the real binary (`idplane run --manifests`) to
//! real SMTP servers (aiosmtpd with AUTH, STARTTLS and implicit TLS, and
//! Postfix's smtp-sink): each TLS mode, verification, the retry rule
//! measured from the attempt times, permanent failures, an outage longer
//! than the retries, idempotency, the default-provider rule and 400/503s.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::email::*;
use support::{Idplane, condition, http_get};

const T: Duration = Duration::from_secs(30);

#[test]
fn delivers_with_each_tls_mode_and_verifies() {
    let (tmp, manifests) = workspace();
    let certs = certs(tmp.path());
    let auth = Some(("mailer", "s3cret-pass"));
    let servers: Vec<(&str, SmtpServer)> = ["none", "starttls", "implicit"]
        .into_iter()
        .map(|tls| {
            let o = ServerOptions {
                tls,
                auth,
                ..Default::default()
            };
            (tls, SmtpServer::start(tmp.path(), tls, Some(&certs), o))
        })
        .collect();
    for (tls, server) in &servers {
        let org = format!("org-{tls}");
        CorpProvider {
            tls,
            password: "s3cret-pass",
            ..CorpProvider::new(&org, server.port)
        }
        .write(&manifests.join(format!("{org}.yaml")));
    }
    let run = start_idplane(
        tmp.path(),
        &manifests,
        "run.log",
        &["--smtp-ca-file", certs.ca.to_str().unwrap()],
    );
    for (tls, server) in &servers {
        let org = format!("org-{tls}");
        let verified = wait_verified(&run, &org, "corp", "True");
        assert_eq!(verified["reason"], "Verified", "{verified}");
        assert!(
            verified["message"]
                .as_str()
                .unwrap()
                .contains("authenticated as mailer"),
            "{verified}"
        );

        let id = send_ok(&run, &org, &format!("over {tls}"));
        let sent = wait_final(&run, &org, &id, T);
        assert_eq!(sent["state"], "sent", "{tls}: {sent}");
        assert_eq!(sent["provider"], "EmailProvider/corp");
        let attempts = sent["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1);
        assert!(
            attempts[0]["reply"].as_str().unwrap().starts_with("250"),
            "{sent}"
        );
        let events = sent["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{sent}");
        assert_eq!(
            (events[0]["type"].as_str(), events[0]["outcome"].as_str()),
            (Some("email.delivery"), Some("SUCCESS"))
        );
        let accepted = server.accepted();
        assert_eq!(accepted.len(), 1, "{tls}");
        assert!(
            accepted[0].contains(&id),
            "Message-ID carries the idplane id: {accepted:?}"
        );
        // status.metrics of the provider.
        let metrics = wait("provider metrics", T, || {
            let o = object(&run, &org, "EmailProvider", "corp")?;
            (o["status"]["metrics"]["sent"] == 1).then(|| o["status"]["metrics"].clone())
        });
        assert_eq!(metrics["failed"], 0);
        assert!(metrics["lastDeliveryTime"].is_string(), "{metrics}");
    }
    let log = std::fs::read_to_string(tmp.path().join("run.log")).unwrap();
    assert!(
        !log.contains("s3cret-pass"),
        "the password never appears in the log"
    );
    assert!(
        run.metric("idplane_email_delivery_events_total{outcome=\"SUCCESS\",provider=\"custom\"}")
            >= 3.0
    );
}

#[test]
fn wrong_password_then_fixed_secret_and_new_host() {
    let (tmp, manifests) = workspace();
    let first = SmtpServer::start(
        tmp.path(),
        "first",
        None,
        ServerOptions {
            auth: Some(("mailer", "right-pass")),
            ..Default::default()
        },
    );
    let second = SmtpServer::start(
        tmp.path(),
        "second",
        None,
        ServerOptions {
            auth: Some(("mailer", "second-pass")),
            ..Default::default()
        },
    );
    let file = manifests.join("provider.yaml");
    let write = |port: u16, password: &str| {
        CorpProvider {
            password,
            ..CorpProvider::new("acme", port)
        }
        .write(&file);
    };
    write(first.port, "wrong-pass");
    let run = start_idplane(tmp.path(), &manifests, "run.log", &[]);
    let failed = wait_verified(&run, "acme", "corp", "False");
    assert_eq!(failed["reason"], "AuthFailed", "{failed}");
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.contains("535"),
        "the server's reply is shown: {message}"
    );
    assert!(
        !message.contains("wrong-pass"),
        "never the password: {message}"
    );
    let verify_events = events(&run, "acme", "email.verify");
    assert_eq!(verify_events.last().unwrap()["outcome"], "FAILURE");

    // The Secret is fixed: verified again, now True.
    write(first.port, "right-pass");
    wait_verified(&run, "acme", "corp", "True");

    // A new host/port with the old password: verified against the new
    // server with what the Secret holds, and refused there.
    write(second.port, "right-pass");
    let refused = wait("verification against the second server", T, || {
        let c = wait_verified(&run, "acme", "corp", "False");
        c["message"]
            .as_str()
            .unwrap()
            .contains(&second.port.to_string())
            .then_some(c)
    });
    assert_eq!(refused["reason"], "AuthFailed");
    write(second.port, "second-pass");
    let ok = wait_verified(&run, "acme", "corp", "True");
    assert!(
        ok["message"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{}", second.port)),
        "{ok}"
    );
    let id = send_ok(&run, "acme", "after the move");
    assert_eq!(wait_final(&run, "acme", &id, T)["state"], "sent");
    assert_eq!(second.accepted().len(), 1);
}

#[test]
fn transient_failures_then_success_honour_the_delays() {
    let (tmp, manifests) = workspace();
    let server = SmtpServer::start(
        tmp.path(),
        "flaky",
        None,
        ServerOptions {
            fail_first: 2,
            fail_reply: Some("451 4.3.0 Try again later".into()),
            ..ServerOptions::corp()
        },
    );
    write_corp_provider(&manifests, server.port, &fast_retry(5));
    let run = start_idplane(tmp.path(), &manifests, "run.log", &[]);
    wait_verified(&run, "acme", "corp", "True");
    let id = send_ok(&run, "acme", "flaky");
    let sent = wait_final(&run, "acme", &id, T);
    assert_eq!(sent["state"], "sent", "{sent}");
    let attempts = sent["attempts"].as_array().unwrap();
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["transient", "transient", "sent"]);
    assert!(
        attempts[0]["reply"].as_str().unwrap().starts_with("451"),
        "{sent}"
    );
    // initialDelay 200ms × 2^(n−1): 200ms then 400ms, never earlier, at
    // most 10% jitter later (plus scheduling slack).
    for (n, nominal) in [(1usize, 200i64), (2, 400)] {
        let gap = millis(&attempts[n]["startedAt"]) - millis(&attempts[n - 1]["finishedAt"]);
        assert!(
            gap >= nominal,
            "retry {n} came after {gap}ms, before {nominal}ms"
        );
        assert!(
            gap <= nominal * 11 / 10 + 250,
            "retry {n} came after {gap}ms, nominal {nominal}ms"
        );
    }
    assert_eq!(server.records().len(), 3);
    let metrics = wait("metrics", T, || {
        let o = object(&run, "acme", "EmailProvider", "corp")?;
        (o["status"]["metrics"]["sent"] == 1).then(|| o["status"]["metrics"].clone())
    });
    assert_eq!(metrics["retried"], 2, "{metrics}");
    let events = sent["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "one SUCCESS event: {events:?}");
}

#[test]
fn permanent_failure_and_outage_longer_than_the_retries() {
    let (tmp, manifests) = workspace();
    let server = SmtpServer::start(tmp.path(), "failing", None, ServerOptions::corp());
    write_corp_provider(&manifests, server.port, &fast_retry(3));
    let run = start_idplane(tmp.path(), &manifests, "run.log", &default_provider("9"));
    wait_verified(&run, "acme", "corp", "True");

    // 5xx: failed at once, one attempt, one FAILURE event with the reply.
    server.answer(Some("550 5.1.1 No such user here"));
    let id = send_ok(&run, "acme", "permanent");
    let failed = wait_final(&run, "acme", &id, T);
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["attempts"].as_array().unwrap().len(), 1, "{failed}");
    let ev = failed["events"].as_array().unwrap();
    assert_eq!(ev.len(), 1, "{failed}");
    assert_eq!(ev[0]["outcome"], "FAILURE");
    assert!(
        ev[0]["detail"]["reply"]
            .as_str()
            .unwrap()
            .starts_with("550 5.1.1"),
        "{ev:?}"
    );

    // An outage (421 on every attempt) longer than the retries: FAILURE
    // after exactly maxAttempts (3), counted at the server too; never the
    // default provider while the org's provider is enabled.
    let before = server.records().len();
    server.answer(Some("421 4.3.2 Service not available"));
    let id = send_ok(&run, "acme", "outage");
    let failed = wait_final(&run, "acme", &id, T);
    assert_eq!(failed["state"], "failed");
    let attempts = failed["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{failed}");
    assert!(
        attempts
            .iter()
            .all(|a| a["provider"] == "EmailProvider/corp"),
        "{failed}"
    );
    assert_eq!(server.records().len() - before, 3);
    let ev = failed["events"].as_array().unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["detail"]["attempts"], 3);
    assert!(
        ev[0]["detail"]["reply"]
            .as_str()
            .unwrap()
            .starts_with("421"),
        "{ev:?}"
    );
    let all = events(&run, "acme", "email.delivery");
    assert_eq!(all.iter().filter(|e| e["outcome"] == "FAILURE").count(), 2);
    // The org's failed mail, asked for by outcome.
    let (code, body) = http_get(
        &run.url("/v1/orgs/acme/events?type=email.delivery&outcome=FAILURE"),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    let failures: Value = serde_json::from_str(&body).unwrap();
    let failures = failures["events"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{body}");
    assert!(failures.iter().all(|e| e["outcome"] == "FAILURE"), "{body}");
    let metrics = wait("metrics", T, || {
        let o = object(&run, "acme", "EmailProvider", "corp")?;
        (o["status"]["metrics"]["failed"] == 2).then(|| o["status"]["metrics"].clone())
    });
    assert!(
        metrics["lastFailure"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("421"),
        "{metrics}"
    );
    assert_eq!(
        (&metrics["sent"], &metrics["retried"]),
        (&json!(0), &json!(2)),
        "the outage's first two attempts were retried, its third failed: {metrics}"
    );

    // A restart rebuilds the same numbers from the store.
    drop(run);
    let run = start_idplane(tmp.path(), &manifests, "run2.log", &[]);
    let again = wait("metrics after a restart", T, || {
        let o = object(&run, "acme", "EmailProvider", "corp")?;
        let m = &o["status"]["metrics"];
        m.get("failed").is_some().then(|| m.clone())
    });
    for field in ["sent", "retried", "failed", "lastFailure"] {
        assert_eq!(
            again[field], metrics[field],
            "{field}: {again} vs {metrics}"
        );
    }
}

#[test]
fn idempotency_validation_and_the_default_provider_rule() {
    let (tmp, manifests) = workspace();
    let sink = SmtpSink::start(tmp.path());
    let custom = SmtpServer::start(tmp.path(), "custom", None, ServerOptions::corp());
    let file = write_corp_provider(&manifests, custom.port, &fast_retry(3));
    // No default provider yet: an org without an EmailProvider gets 503.
    let run = start_idplane(
        tmp.path(),
        &manifests,
        "run1.log",
        &[
            "--email-default-sender",
            "Idplane <noreply@idplane.example>",
        ],
    );
    let (code, body) = send(
        &run,
        "other",
        json!({"to": "a@example.com", "subject": "s", "text": "t"}),
    );
    assert_eq!(
        (code, body["code"].as_str()),
        (503, Some("no_email_provider")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("--smtp-host"),
        "{body}"
    );

    // Clear 400s.
    let cases = [
        (
            json!({"to": "not an address", "subject": "s", "text": "t"}),
            "invalid_address",
        ),
        (
            json!({"to": [], "subject": "s", "text": "t"}),
            "missing_recipient",
        ),
        (
            json!({"to": "a@example.com", "subject": "s"}),
            "missing_content",
        ),
        (
            json!({"to": "a@example.com", "subject": "s", "text": "x".repeat(200 * 1024)}),
            "content_too_large",
        ),
        (
            json!({"to": "a@example.com", "subject": "s", "text": "t", "bcc": "x@y.z"}),
            "invalid_request",
        ),
    ];
    for (body, code) in cases {
        let (status, answer) = send(&run, "acme", body);
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some(code)),
            "{answer}"
        );
    }
    // A recipient of the wrong type is named, with the field.
    let (status, answer) = send(
        &run,
        "acme",
        json!({"to": ["a@example.com", 5], "text": "t"}),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains(
            "to: must be an address or a list of addresses; [1] is a number, not an address"
        ),
        "{answer}"
    );

    // The same idempotency key returns the same id and sends once.
    let body = json!({"to": "a@example.com", "subject": "once", "text": "t", "idempotencyKey": "order-42"});
    let (c1, first) = send(&run, "acme", body.clone());
    let (c2, second) = send(&run, "acme", body);
    assert_eq!((c1, c2), (202, 202), "{first} {second}");
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["duplicate"], true);
    let id = first["id"].as_str().unwrap();
    assert_eq!(wait_final(&run, "acme", id, T)["state"], "sent");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(custom.accepted().len(), 1, "sent once");
    assert_eq!(email(&run, "acme", id)["idempotencyKey"], "order-42");
    drop(run);

    // With a default provider (smtp-sink): orgs without an EmailProvider use
    // it; disabling the org's provider sends later mail, queued included,
    // through the default.
    let port = sink.port.to_string();
    let run = start_idplane(
        tmp.path(),
        &manifests,
        "run2.log",
        &[
            &default_provider(&port)[..],
            &[
                "--email-default-sender",
                "Idplane <noreply@idplane.example>",
            ],
        ]
        .concat(),
    );
    let id = send_ok(&run, "other", "via default");
    let sent = wait_final(&run, "other", &id, T);
    assert_eq!(
        (sent["state"].as_str(), sent["provider"].as_str()),
        (Some("sent"), Some("default")),
        "{sent}"
    );
    assert!(wait("smtp-sink got it", T, || sink
        .message_ids()
        .iter()
        .any(|m| m.contains(&id))
        .then_some(true)));

    // A message stuck in retries at the custom provider moves to the
    // default provider once the org's provider is disabled.
    custom.answer(Some("451 4.3.0 Try again later"));
    write_corp_provider(
        &manifests,
        custom.port,
        "{maxAttempts: 10, initialDelay: 1s, multiplier: 1, maxDelay: 1s}",
    );
    wait("new retry policy in use", T, || {
        let (_, body) = http_get(&run.url("/v1/orgs/acme/config"), Some(TOKEN));
        body.contains("\"maxAttempts\":10").then_some(())
    });
    let id = send_ok(&run, "acme", "moves to default");
    wait("a transient attempt at the custom provider", T, || {
        (email(&run, "acme", &id)["state"] == "retrying").then_some(())
    });
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("enabled: true", "enabled: false"),
    )
    .unwrap();
    let sent = wait_final(&run, "acme", &id, T);
    assert_eq!(
        (sent["state"].as_str(), sent["provider"].as_str()),
        (Some("sent"), Some("default")),
        "{sent}"
    );
    let providers: Vec<&str> = sent["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers.first(), Some(&"EmailProvider/corp"));
    assert_eq!(providers.last(), Some(&"default"));
}

/// A server that offers PIPELINING gets MAIL, RCPT and DATA in one write
/// (the server sees the commands queued behind MAIL), and idplane still
/// reads every reply in order: a refused recipient fails the message with
/// the RCPT reply (5xx at once, 4xx retried), a message with one refused
/// recipient out of two goes to nobody, and the connection keeps working.
#[test]
fn pipelined_commands_and_refused_recipients() {
    let (tmp, manifests) = workspace();
    let server = SmtpServer::start(
        tmp.path(),
        "pipelining",
        None,
        ServerOptions {
            pipelining: true,
            ..ServerOptions::corp()
        },
    );
    write_corp_provider(&manifests, server.port, &fast_retry(2));
    let run = start_idplane(tmp.path(), &manifests, "run.log", &[]);
    wait_verified(&run, "acme", "corp", "True");
    let send_to = |to: serde_json::Value, subject: &str| {
        let (code, body) = send(
            &run,
            "acme",
            json!({"to": to, "subject": subject, "text": "hello"}),
        );
        assert_eq!(code, 202, "{body}");
        body["id"].as_str().unwrap().to_string()
    };

    let first = send_to(json!("user@example.com"), "first");
    assert_eq!(wait_final(&run, "acme", &first, T)["state"], "sent");
    let records = server.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["pipelined"], true, "{records:?}");

    let refused = send_to(json!("reject-me@example.com"), "refused");
    let failed = wait_final(&run, "acme", &refused, T);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["attempts"].as_array().unwrap().len(), 1, "{failed}");
    assert!(
        failed["lastReply"].as_str().unwrap().starts_with("550"),
        "{failed}"
    );

    let busy = send_to(json!("later@example.com"), "busy");
    let failed = wait_final(&run, "acme", &busy, T);
    assert_eq!(failed["attempts"].as_array().unwrap().len(), 2, "{failed}");
    assert!(
        failed["lastReply"].as_str().unwrap().starts_with("450"),
        "{failed}"
    );

    let mixed = send_to(
        json!(["user@example.com", "reject-too@example.com"]),
        "mixed",
    );
    let failed = wait_final(&run, "acme", &mixed, T);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["lastReply"].as_str().unwrap().starts_with("550"),
        "{failed}"
    );

    let last = send_to(json!("user@example.com"), "last");
    assert_eq!(wait_final(&run, "acme", &last, T)["state"], "sent");
    let subjects: Vec<String> = server
        .records()
        .iter()
        .map(|r| r["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        subjects,
        ["first", "last"],
        "only the two good messages arrived"
    );
}

/// An aiosmtpd server that announces PIPELINING and takes 300 ms over each
/// message, org `acme`'s provider `corp` on it (`max_attempts`, short
/// delays), and idplane with one delivery worker and `extra` flags.
fn one_worker_and_a_slow_pipelining_server(
    max_attempts: u32,
    extra: &[&str],
) -> (tempfile::TempDir, SmtpServer, Idplane) {
    let (tmp, manifests) = workspace();
    let server = SmtpServer::start(
        tmp.path(),
        "slow-pipelining",
        None,
        ServerOptions {
            pipelining: true,
            delay_ms: 300,
            ..ServerOptions::corp()
        },
    );
    write_corp_provider(&manifests, server.port, &fast_retry(max_attempts));
    let mut flags = vec!["--email-concurrency", "1"];
    flags.extend_from_slice(extra);
    let run = start_idplane(tmp.path(), &manifests, "run.log", &flags);
    wait_verified(&run, "acme", "corp", "True");
    (tmp, server, run)
}

/// A backlog goes out chained on one pipelining connection: each message's
/// content in the same write as the next message's MAIL, RCPT and DATA
/// (the server finds the next MAIL behind the content). A recipient refused
/// in the middle of a chain fails that message alone, at once; every other
/// message arrives exactly once, in one attempt.
#[test]
fn backlog_is_chained_and_a_refusal_ends_only_its_message() {
    // The slow first message lets the others queue up behind it.
    let (_tmp, server, run) = one_worker_and_a_slow_pipelining_server(2, &[]);
    let ids: Vec<(String, String)> = (0..10)
        .map(|i| {
            let to = if i == 4 {
                "reject-me@example.com"
            } else {
                "user@example.com"
            };
            let subject = format!("chain {i}");
            let (code, body) = send(
                &run,
                "acme",
                json!({"to": to, "subject": subject, "text": "hello"}),
            );
            assert_eq!(code, 202, "{body}");
            (subject, body["id"].as_str().unwrap().to_string())
        })
        .collect();
    for (i, (subject, id)) in ids.iter().enumerate() {
        let e = wait_final(&run, "acme", id, T);
        assert_eq!(e["attempts"].as_array().unwrap().len(), 1, "{e}");
        if i == 4 {
            assert_eq!(e["state"], "failed", "{e}");
            assert!(e["lastReply"].as_str().unwrap().starts_with("550"), "{e}");
        } else {
            assert_eq!(e["state"], "sent", "{subject}: {e}");
        }
    }
    let records = server.records();
    let mut subjects: Vec<String> = records
        .iter()
        .map(|r| r["subject"].as_str().unwrap().to_string())
        .collect();
    subjects.sort();
    let mut expected: Vec<String> = (0..10)
        .filter(|&i| i != 4)
        .map(|i| format!("chain {i}"))
        .collect();
    expected.sort();
    assert_eq!(subjects, expected, "each good message exactly once");
    let chained = records.iter().filter(|r| r["chained"] == true).count();
    assert!(chained >= 4, "{chained} chained: {records:?}");
}

/// A chain never outlives the lease of its messages: no attempt runs past
/// 0.8 of the lease (here 1 s) from its claim, so none runs while the
/// dispatcher may hand the message to another. A chain ends early instead,
/// before a message would begin with under a quarter of that time left,
/// and gives the rest back to the queue (claim undone, nothing counted);
/// a message still under way at the deadline would get a transient
/// failure. Every message arrives.
#[test]
fn a_chain_stops_at_the_lease_deadline() {
    let (_tmp, server, run) = one_worker_and_a_slow_pipelining_server(10, &["--email-lease", "1s"]);
    let ids: Vec<String> = (0..8)
        .map(|i| send_ok(&run, "acme", &format!("slow {i}")))
        .collect();
    for id in &ids {
        let e = wait_final(&run, "acme", id, T);
        assert_eq!(e["state"], "sent", "{e}");
        for a in e["attempts"].as_array().unwrap() {
            let t = |k: &str| chrono::DateTime::parse_from_rfc3339(a[k].as_str().unwrap()).unwrap();
            let ms = (t("finishedAt") - t("startedAt")).num_milliseconds();
            assert!(
                ms < 1000,
                "an attempt ran {ms} ms from its claim, past its lease: {e}"
            );
        }
    }
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(
        log.contains("too little of their lease was left to begin them"),
        "the chain gave back what it could not finish in time: {log}"
    );
    let subjects: std::collections::HashSet<String> = server
        .records()
        .iter()
        .map(|r| r["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subjects.len(), 8, "every message arrived: {subjects:?}");
}

/// A pooled connection that the server closed while it was idle is
/// replaced at once: the message goes out on a fresh connection in its
/// first attempt, whether the server closed silently (aiosmtpd) or said
/// `421` first (Postfix), with and without pipelining, and whether the
/// message was sent alone or at the head of a chain.
#[test]
fn a_pooled_connection_the_server_closed_is_replaced_at_once() {
    let postfix = Some("421 4.4.2 idle: Error: timeout exceeded");
    for (pipelining, idle_reply) in [(true, None), (true, postfix), (false, postfix)] {
        let (tmp, manifests) = workspace();
        let server = SmtpServer::start(
            tmp.path(),
            "idle-close",
            None,
            ServerOptions {
                pipelining,
                idle: Some((1.0, idle_reply)),
                ..ServerOptions::corp()
            },
        );
        // The installation's default provider, slow, keeps the one worker
        // busy while a backlog for acme builds up.
        let slow = SmtpServer::start(
            tmp.path(),
            "slow-default",
            None,
            ServerOptions {
                delay_ms: 1500,
                ..Default::default()
            },
        );
        write_corp_provider(&manifests, server.port, &fast_retry(3));
        let slow_port = slow.port.to_string();
        let run = start_idplane(
            tmp.path(),
            &manifests,
            "run.log",
            &[
                &["--email-concurrency", "1"],
                &default_provider(&slow_port)[..],
            ]
            .concat(),
        );
        wait_verified(&run, "acme", "corp", "True");
        let case = format!(
            "{}, pipelining {pipelining}",
            idle_reply.unwrap_or("closed silently")
        );

        // Alone: the connection of the first message is pooled, closed by
        // the server, and the second message finds it closed.
        let first = send_ok(&run, "acme", "first");
        assert_eq!(wait_final(&run, "acme", &first, T)["state"], "sent");
        std::thread::sleep(Duration::from_millis(1800));
        let alone = send_ok(&run, "acme", "alone");
        let e = wait_final(&run, "acme", &alone, T);
        assert_eq!(e["state"], "sent", "{case}: {e}");
        assert_eq!(e["attempts"].as_array().unwrap().len(), 1, "{case}: {e}");

        if !pipelining {
            continue;
        }
        // At the head of a chain: the worker is busy with the slow default
        // provider while six messages for acme queue up, and acme's pooled
        // connection is closed by then.
        std::thread::sleep(Duration::from_millis(1800));
        let (code, body) = send(
            &run,
            "other",
            json!({"to": "user@example.com", "subject": "slow", "text": "hello"}),
        );
        assert_eq!(code, 202, "{body}");
        std::thread::sleep(Duration::from_millis(200));
        let backlog: Vec<String> = (0..6)
            .map(|i| send_ok(&run, "acme", &format!("backlog {i}")))
            .collect();
        for id in &backlog {
            let e = wait_final(&run, "acme", id, T);
            assert_eq!(e["state"], "sent", "{case}: {e}");
            assert_eq!(e["attempts"].as_array().unwrap().len(), 1, "{case}: {e}");
        }
        let records = server.records();
        let subjects: Vec<&str> = records
            .iter()
            .filter_map(|r| r["subject"].as_str())
            .filter(|s| s.starts_with("backlog"))
            .collect();
        assert_eq!(subjects.len(), 6, "{case}: each once: {subjects:?}");
        let chained = records.iter().filter(|r| r["chained"] == true).count();
        assert!(chained >= 2, "{case}: the backlog was chained: {records:?}");
    }
}

#[test]
fn a_server_that_refuses_the_repeated_ehlo_is_named_in_verification_and_failure() {
    let (tmp, manifests) = workspace();
    // idplane repeats EHLO after lettre's (lettre keeps no record of
    // PIPELINING); this server refuses the second one.
    let server = SmtpServer::start(
        tmp.path(),
        "one-ehlo",
        None,
        ServerOptions {
            refuse_ehlo: Some((2, "554 5.7.0 One EHLO per connection")),
            ..ServerOptions::corp()
        },
    );
    write_corp_provider(&manifests, server.port, &fast_retry(3));
    let run = start_idplane(tmp.path(), &manifests, "run.log", &[]);
    let verified = wait_verified(&run, "acme", "corp", "False");
    let expected = format!(
        "127.0.0.1:{}: EHLO failed: 554 5.7.0 One EHLO per connection",
        server.port
    );
    assert_eq!(verified["message"], expected.as_str(), "{verified}");
    // A 5xx: the message fails at once, permanently, with the server's
    // reply, and the org's provider is never bypassed.
    let id = send_ok(&run, "acme", "refused at EHLO");
    let failed = wait_final(&run, "acme", &id, T);
    assert_eq!(failed["state"], "failed", "{failed}");
    let attempts = failed["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{failed}");
    assert_eq!(attempts[0]["outcome"], "permanent", "{failed}");
    assert_eq!(attempts[0]["reply"], expected.as_str(), "{failed}");
    assert_eq!(attempts[0]["provider"], "EmailProvider/corp");
    assert!(server.records().is_empty(), "no DATA reached the server");
}

/// An enabled EmailProvider whose password Secret goes missing keeps the
/// org's mail: it is accepted, waits (`retrying`, the reply naming the
/// Secret) and is never handed to the default provider; `Verified` turns
/// False with SecretNotFound. Once the Secret is back, the waiting mail
/// goes out through the org's provider.
#[test]
fn a_missing_secret_holds_the_mail_and_never_falls_back_to_the_default() {
    let (tmp, manifests) = workspace();
    let custom = SmtpServer::start(tmp.path(), "custom", None, ServerOptions::corp());
    let default = SmtpServer::start(tmp.path(), "default", None, ServerOptions::default());
    let both = CorpProvider {
        retry: fast_retry(50),
        ..CorpProvider::new("acme", custom.port)
    }
    .yaml();
    let (secret, provider) = both.split_once("---\n").unwrap();
    let secret_file = manifests.join("secret.yaml");
    std::fs::write(&secret_file, secret).unwrap();
    std::fs::write(manifests.join("provider.yaml"), provider).unwrap();
    let port = default.port.to_string();
    let run = start_idplane(tmp.path(), &manifests, "run.log", &default_provider(&port));
    wait_verified(&run, "acme", "corp", "True");
    let first = send_ok(&run, "acme", "with the Secret");
    assert_eq!(wait_final(&run, "acme", &first, T)["state"], "sent");

    std::fs::remove_file(&secret_file).unwrap();
    let verified = wait_verified(&run, "acme", "corp", "False");
    assert_eq!(verified["reason"], "SecretNotFound", "{verified}");
    let why = "EmailProvider corp cannot be used: spec.passwordSecretRef: Secret acme/corp-smtp not found";
    assert_eq!(verified["message"], why, "{verified}");
    let ready = condition(
        &object(&run, "acme", "EmailProvider", "corp").unwrap(),
        "Ready",
    )
    .unwrap();
    assert_eq!(ready["reason"], "SecretNotFound", "{ready}");

    // The test email says so without asking any server.
    let (code, text) = support::http(
        "POST",
        &run.url("/v1/orgs/acme/email-provider/test"),
        Some(TOKEN),
        Some(&json!({"from": "admin@example.com", "to": "someone@example.com"})),
    );
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (code, answer["code"].as_str(), answer["step"].as_str()),
        (409, Some("provider_unusable"), Some("SecretNotFound")),
        "{answer}"
    );

    let waiting = send_ok(&run, "acme", "without the Secret");
    let e = wait("attempts that wait for the Secret", T, || {
        let e = email(&run, "acme", &waiting);
        (e["attempts"].as_array().unwrap().len() >= 2).then_some(e)
    });
    assert!(e["state"] == "retrying" || e["state"] == "sending", "{e}");
    let done = e["attempts"].as_array().unwrap().iter();
    for a in done.filter(|a| a["outcome"] != "running") {
        assert_eq!(a["outcome"], "transient", "{e}");
        assert_eq!(a["provider"], "EmailProvider/corp", "{e}");
        assert!(a["reply"].as_str().unwrap().starts_with(why), "{e}");
    }

    std::fs::write(&secret_file, secret).unwrap();
    let sent = wait_final(&run, "acme", &waiting, T);
    assert_eq!(
        (sent["state"].as_str(), sent["provider"].as_str()),
        (Some("sent"), Some("EmailProvider/corp")),
        "{sent}"
    );
    assert_eq!(custom.accepted().len(), 2);
    assert!(
        default.records().is_empty(),
        "the default provider got none"
    );
}

/// `--smtp-timeout` bounds every step, not only the TCP connect: a server
/// that never sends its greeting, and one that takes 3 s to answer the
/// content, each end the attempt after the timeout (1 s here) with a
/// reply that says so, instead of holding a worker until the lease (60 s).
#[test]
fn the_smtp_timeout_bounds_the_greeting_and_every_reply() {
    let (tmp, manifests) = workspace();
    // Accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming() {
            held.push(c);
        }
    });
    let slow = SmtpServer::start(
        tmp.path(),
        "slow-data",
        None,
        ServerOptions {
            delay_ms: 3000,
            ..ServerOptions::corp()
        },
    );
    let duration = |a: &Value| {
        let t = |k: &str| chrono::DateTime::parse_from_rfc3339(a[k].as_str().unwrap()).unwrap();
        (t("finishedAt") - t("startedAt")).num_milliseconds()
    };
    for (port, subject, reply) in [
        (
            silent_port,
            "to a silent server",
            format!(
                "cannot connect to 127.0.0.1:{silent_port}: no answer within 1s (--smtp-timeout)"
            ),
        ),
        (
            slow.port,
            "to a slow server",
            "no answer within 1s (--smtp-timeout)".to_string(),
        ),
    ] {
        write_corp_provider(&manifests, port, &fast_retry(2));
        let log = format!("{port}.log");
        let run = start_idplane(
            tmp.path(),
            &manifests,
            &log,
            &["--smtp-timeout", "1s", "--email-lease", "60s"],
        );
        let id = send_ok(&run, "acme", subject);
        let failed = wait_final(&run, "acme", &id, T);
        assert_eq!(failed["state"], "failed", "{failed}");
        let attempts = failed["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{failed}");
        for a in attempts {
            assert_eq!(a["reply"].as_str(), Some(reply.as_str()), "{failed}");
            assert!(duration(a) < 2900, "{} ms: {failed}", duration(a));
        }
    }
}

/// A pooled connection is replaced without counting an attempt only when
/// its first reply (to MAIL) says the server had closed it; a `421` to the
/// content is the server's answer to the message and counts, so the server
/// sees exactly `maxAttempts` transactions.
#[test]
fn a_421_after_mail_on_a_pooled_connection_counts_and_is_not_resent_at_once() {
    let (tmp, manifests) = workspace();
    let server = SmtpServer::start(tmp.path(), "closing", None, ServerOptions::corp());
    write_corp_provider(&manifests, server.port, &fast_retry(3));
    let run = start_idplane(tmp.path(), &manifests, "run.log", &[]);
    wait_verified(&run, "acme", "corp", "True");
    // A first message leaves its connection in the pool.
    let first = send_ok(&run, "acme", "pools a connection");
    assert_eq!(wait_final(&run, "acme", &first, T)["state"], "sent");
    server.answer(Some("421 4.3.2 Service shutting down"));
    let id = send_ok(&run, "acme", "meets 421 at DATA");
    let failed = wait_final(&run, "acme", &id, T);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["attempts"].as_array().unwrap().len(), 3, "{failed}");
    let seen = server
        .records()
        .iter()
        .filter(|r| r["message_id"].as_str().unwrap_or_default().contains(&id))
        .count();
    assert_eq!(seen, 3, "one transaction per counted attempt");
}

/// A backlog at a slow server (1 s a message, two workers, a 6 s lease),
/// with and without PIPELINING (then messages go out chained): the
/// queue's own waiting never counts against a message. What waited past
/// half its lease for a worker, or would begin (alone or as the next link
/// of a chain) with less than a quarter of the attempt time left, goes
/// back to the queue with its claim undone and is claimed again; before,
/// such messages got an `interrupted` attempt and waited a whole lease,
/// or a counted transient failure ("the attempt took longer than 4.8s")
/// and a retry delay.
#[test]
fn a_backlog_at_a_slow_server_costs_no_attempts() {
    for pipelining in [false, true] {
        let (tmp, manifests) = workspace();
        let server = SmtpServer::start(
            tmp.path(),
            "slow",
            None,
            ServerOptions {
                delay_ms: 1000,
                pipelining,
                ..ServerOptions::corp()
            },
        );
        let slow_retry = "{maxAttempts: 3, initialDelay: 60s, multiplier: 2, maxDelay: 5m}";
        write_corp_provider(&manifests, server.port, slow_retry);
        let run = start_idplane(
            tmp.path(),
            &manifests,
            "run.log",
            &["--email-concurrency", "2", "--email-lease", "6s"],
        );
        wait_verified(&run, "acme", "corp", "True");
        let ids: Vec<String> = (0..20)
            .map(|i| send_ok(&run, "acme", &format!("backlog {i}")))
            .collect();
        for id in &ids {
            let e = wait_final(&run, "acme", id, Duration::from_secs(60));
            assert_eq!(e["state"], "sent", "pipelining {pipelining}: {e}");
            assert_eq!(
                e["attempts"].as_array().unwrap().len(),
                1,
                "pipelining {pipelining}: {e}"
            );
        }
        let mut subjects: Vec<String> = server
            .records()
            .iter()
            .map(|r| r["subject"].as_str().unwrap().to_string())
            .collect();
        subjects.sort();
        subjects.dedup();
        assert_eq!(subjects.len(), 20, "each once: {subjects:?}");
        assert_eq!(server.records().len(), 20, "none twice");
        let log = std::fs::read_to_string(&run.log).unwrap();
        assert!(
            log.contains("claimed emails not yet tried are queued again"),
            "the backlog was given back to the queue: {log}"
        );
    }
}

/// With `--log-format json` and `RUST_LOG=idplane=debug`, the line an
/// attempt logs carries its `email_attempt` span (org, message id, attempt)
/// inside the `smtp_session` span (host, port); the recipient and the body
/// are in no line.
#[test]
fn json_logs_carry_the_attempt_spans() {
    let (tmp, manifests) = workspace();
    let server = SmtpServer::start(tmp.path(), "none", None, ServerOptions::corp());
    CorpProvider::new("spans", server.port).write(&manifests.join("spans.yaml"));
    let mut flags = support::ALLOW_LOOPBACK.to_vec();
    flags.extend([
        "--log-format",
        "json",
        "--email-default-sender",
        "Idplane <noreply@idplane.example>",
    ]);
    let mut run = Idplane::run_manifests(
        &manifests,
        &tmp.path().join("state/idplane.db"),
        &tmp.path().join("tokens.yaml"),
        &flags,
        &[("RUST_LOG", "idplane=debug")],
        &tmp.path().join("run.log"),
    );
    wait_verified(&run, "spans", "corp", "True");
    let id = send_ok(&run, "spans", "span check");
    let sent = wait_final(&run, "spans", &id, Duration::from_secs(20));
    assert_eq!(sent["state"], "sent", "{sent}");
    run.stop(Duration::from_secs(10));
    let log = std::fs::read_to_string(tmp.path().join("run.log")).unwrap();
    let attempt: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "attempt made" && l["span"]["message_id"] == id)
        .unwrap_or_else(|| panic!("no JSON line for the attempt of {id}:\n{log}"));
    assert_eq!(attempt["span"]["name"], "email_attempt", "{attempt}");
    assert_eq!(attempt["span"]["org"], "spans", "{attempt}");
    assert_eq!(attempt["span"]["attempt"], 1, "{attempt}");
    let session = attempt["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "smtp_session")
        .unwrap_or_else(|| panic!("no smtp_session span in {attempt}"));
    assert_eq!(session["host"], "127.0.0.1", "{attempt}");
    assert_eq!(session["port"], server.port, "{attempt}");
    // send_ok's recipient and body.
    assert!(
        !log.contains("user@example.com"),
        "the recipient is logged:\n{log}"
    );
    assert!(!log.contains("hello"), "the body is logged:\n{log}");
}
