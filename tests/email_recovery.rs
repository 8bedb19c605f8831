//! At-least-once: idplane is killed (SIGKILL) with messages queued and in
//! flight; after a restart on the same database every accepted message
//! reaches the server (counted there by Message-ID).

mod common;
mod email_support;

use std::collections::HashSet;
use std::time::Duration;

use email_support::*;

#[test]
fn sigkill_with_messages_queued_and_in_flight_loses_none() {
    let (tmp, manifests) = workspace();
    // A slow server keeps attempts in flight when the process dies.
    let server = SmtpServer::start(
        tmp.path(),
        "slow",
        None,
        ServerOptions {
            auth: Some(("mailer", "pw-123")),
            delay_ms: 400,
            ..Default::default()
        },
    );
    write_corp_provider(&manifests, server.port, &fast_retry(5));
    let flags = ["--email-lease", "3s", "--email-concurrency", "4"];
    let mut run = start_idplane(tmp.path(), &manifests, "run1.log", &flags);
    let total = 40;
    let ids: Vec<String> = (0..total)
        .map(|i| send_ok(&run, "acme", &format!("message {i}")))
        .collect();
    // Some delivered, some in flight, most still queued.
    wait("a first delivery", Duration::from_secs(20), || {
        (!server.accepted().is_empty()).then_some(())
    });
    run.child.kill().unwrap(); // SIGKILL
    run.child.wait().unwrap();
    let delivered_before = server.accepted().len();
    assert!(delivered_before < total, "killed before the queue drained");

    let run = start_idplane(tmp.path(), &manifests, "run2.log", &flags);
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
