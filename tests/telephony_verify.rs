//! Verifying OTPs through `idplane run`: right, wrong, expired, reused and
//! locked codes; and the hook metrics surviving a restart (daily buckets in
//! the store).

mod support;

use std::time::Duration;

use serde_json::json;
use support::telephony::*;

#[test]
fn right_wrong_expired_reused_locked() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new();
    let hook = HookServer::start(&rt, successful("sms"));
    ws.write_org("acme", &[HookSpec::active("primary", hook.url())]);
    let run = ws.run("verify.log", &["--otp-lifetime", "3s"]);
    wait_configured(&run, "acme");

    // Right, then reused.
    let (tx, code) = sent(&run, &hook, "acme", "+14155550001");
    let (status, answer) = verify(&run, "acme", &tx, &code);
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({"transactionId": tx, "result": "verified", "attemptsRemaining": 4})
    );
    let (_, answer) = verify(&run, "acme", &tx, &code);
    assert_eq!(
        (answer["result"].as_str(), answer["reason"].as_str()),
        (Some("invalid"), Some("already_used"))
    );

    // Wrong, then right: still accepted within the attempts.
    let (tx, code) = sent(&run, &hook, "acme", "+14155550002");
    let (_, answer) = verify(&run, "acme", &tx, &wrong(&code));
    assert_eq!(
        (
            answer["result"].as_str(),
            answer["attemptsRemaining"].as_u64()
        ),
        (Some("invalid"), Some(4))
    );
    assert_eq!(verify(&run, "acme", &tx, &code).1["result"], "verified");

    // Locked after 5 wrong attempts: then even the right code is refused.
    let (tx, code) = sent(&run, &hook, "acme", "+14155550003");
    let results: Vec<String> = (0..5)
        .map(|_| {
            verify(&run, "acme", &tx, &wrong(&code)).1["result"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        results,
        ["invalid", "invalid", "invalid", "invalid", "locked"]
    );
    assert_eq!(verify(&run, "acme", &tx, &code).1["result"], "locked");

    // Expired: the right code after the lifetime.
    let (tx, code) = sent(&run, &hook, "acme", "+14155550004");
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(verify(&run, "acme", &tx, &code).1["result"], "expired");

    // Unknown transaction, another org, bad bodies.
    let (status, answer) = verify(&run, "acme", "0123456789abcdef0123456789abcdef", "123456");
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("unknown_transaction"))
    );
    let (tx, code) = sent(&run, &hook, "acme", "+14155550005");
    assert_eq!(
        verify(&run, "globex", &tx, &code).0,
        404,
        "a passcode belongs to its org"
    );
    let (status, answer) = post_json(
        &run,
        "/v1/orgs/acme/otp/verify",
        &json!({"transactionId": tx}),
    );
    assert_eq!(status, 400, "{answer}");
    let (status, _) = verify(&run, "acme", &tx, "");
    assert_eq!(status, 400);
    assert_eq!(verify(&run, "acme", &tx, &code).1["result"], "verified");

    assert_eq!(
        run.metric("idplane_otp_verifications_total{org=\"acme\",result=\"locked\"}"),
        2.0
    );
    assert_eq!(
        run.metric("idplane_otp_verifications_total{org=\"acme\",result=\"expired\"}"),
        1.0
    );
}

#[test]
fn metrics_survive_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new();
    let good = HookServer::start(&rt, successful("sms"));
    let bad = HookServer::start(&rt, Behaviour::Answer(503, "{}".into()));
    ws.write_org(
        "acme",
        &[
            HookSpec {
                fallback: Some("backup"),
                ..HookSpec::active("primary", bad.url())
            },
            HookSpec::standby("backup", good.url()),
        ],
    );
    // With a configured hash key, passcodes pending at a restart stay valid.
    let flags = [
        "--telephony-status-interval",
        "250ms",
        "--otp-hash-key",
        "a-hash-key-of-at-least-32-characters!",
    ];
    let run = ws.run("restart1.log", &flags);
    wait_configured(&run, "acme");
    let mut pending = None;
    for i in 0..3 {
        let (status, answer) = send(&run, "acme", &format!("+1415555010{i}"));
        assert_eq!((status, answer["via"].as_str()), (200, Some("fallback")));
        pending = Some((
            answer["transactionId"].as_str().unwrap().to_string(),
            good.seen().last().unwrap().code(),
        ));
    }
    let before = wait_metrics(&run, "acme", "primary", 3, 3);
    wait_metrics(&run, "acme", "backup", 3, 0);
    assert!(
        before["lastFailure"]["reason"]
            .as_str()
            .unwrap()
            .contains("HTTP 503")
    );
    drop(run);

    // A new process on the same database: the numbers are there before any
    // traffic, and new executions add to them.
    let run = ws.run("restart2.log", &flags);
    wait_configured(&run, "acme");
    let after = wait_metrics(&run, "acme", "primary", 3, 3);
    assert_eq!(after["lastFailure"], before["lastFailure"]);
    assert_eq!(after["lastExecutionTime"], before["lastExecutionTime"]);
    let backup = wait_metrics(&run, "acme", "backup", 3, 0);
    assert_eq!(backup["successes"], 3);
    assert_eq!(backup["windowDays"], 30);
    let (tx, code) = pending.unwrap();
    assert_eq!(verify(&run, "acme", &tx, &code).1["result"], "verified");
    let (status, _) = send(&run, "acme", "+14155550199");
    assert_eq!(status, 200);
    wait_metrics(&run, "acme", "primary", 4, 4);
    wait_metrics(&run, "acme", "backup", 4, 0);
    // The events of both processes are in the org's log.
    assert_eq!(wait_events(&run, "acme", "telephony.send", 8).len(), 8);
}

#[test]
fn a_graceful_stop_keeps_every_passcode_sent_before_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new();
    let hook = HookServer::start(&rt, successful("sms"));
    ws.write_org("acme", &[HookSpec::active("primary", hook.url())]);
    let flags = ["--otp-hash-key", "a-hash-key-of-at-least-32-characters!"];
    let mut run = ws.run("stop1.log", &flags);
    wait_configured(&run, "acme");
    let sent: Vec<(String, String)> = (0..20)
        .map(|i| sent(&run, &hook, "acme", &format!("+141555502{i:02}")))
        .collect();
    // Stopped at once: the store writer commits after each send has answered.
    let status = run.stop(Duration::from_secs(30));
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(log.contains("telephony ledger flushed"), "{log}");

    let run = ws.run("stop2.log", &flags);
    wait_configured(&run, "acme");
    for (tx, code) in &sent {
        assert_eq!(verify(&run, "acme", tx, code).1["result"], "verified");
    }
    wait_metrics(&run, "acme", "primary", 20, 0);
    assert_eq!(wait_events(&run, "acme", "telephony.send", 20).len(), 20);
}
