//! Email on a PostgreSQL store through the real binary (`idplane run
//! --manifests … --database postgres://…`) to a real SMTP server
//! (aiosmtpd): accepted, committed, delivered, shown with its attempts and
//! events, and the same through a second process on the same database
//! (as a second replica): a message accepted by one is read on the other
//! and sent once, and an idempotency key holds across both.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::email::*;
use support::{ALLOW_LOOPBACK, Idplane};

const T: Duration = Duration::from_secs(30);

/// `idplane run` on the database at `url`, loopback allowed.
fn start_on(tmp: &Path, manifests: &Path, url: &str, log: &str) -> Idplane {
    let mut flags = ALLOW_LOOPBACK.to_vec();
    flags.extend(support::postgres::OTP_HASH_KEY);
    flags.extend([
        "--smtp-timeout",
        "5s",
        "--email-default-sender",
        "Idplane <noreply@idplane.example>",
    ]);
    Idplane::run_manifests(
        manifests,
        Path::new(url),
        &tmp.join("tokens.yaml"),
        &flags,
        &[("RUST_LOG", "idplane=info")],
        &tmp.join(log),
    )
}

#[test]
fn accepts_and_delivers_on_postgres_through_either_process() {
    let (tmp, manifests) = workspace();
    let server = SmtpServer::start(tmp.path(), "corp", None, ServerOptions::corp());
    write_corp_provider(&manifests, server.port, &fast_retry(3));
    let url = support::postgres::fresh_database();
    let a = start_on(tmp.path(), &manifests, &url, "a.log");
    wait_verified(&a, "acme", "corp", "True");

    let id = send_ok(&a, "acme", "on postgres");
    let sent = wait_final(&a, "acme", &id, T);
    assert_eq!(sent["state"], "sent", "{sent}");
    assert_eq!(sent["provider"], "EmailProvider/corp");
    let attempts = sent["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{sent}");
    assert!(attempts[0]["reply"].as_str().unwrap().starts_with("250"));
    let events = sent["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{sent}");
    assert_eq!(
        (events[0]["type"].as_str(), events[0]["outcome"].as_str()),
        (Some("email.delivery"), Some("SUCCESS"))
    );
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 1);
    assert!(accepted[0].contains(&id), "{accepted:?}");

    // A second process on the same database: what one took, the other
    // shows; what it takes is sent once, by whichever claims it.
    let b = start_on(tmp.path(), &manifests, &url, "b.log");
    assert_eq!(email(&b, "acme", &id)["state"], "sent");
    let ids: Vec<String> = (0..10)
        .map(|i| send_ok(if i % 2 == 0 { &b } else { &a }, "acme", &format!("m{i}")))
        .collect();
    for id in &ids {
        assert_eq!(wait_final(&a, "acme", id, T)["state"], "sent", "{id}");
    }
    let accepted = server.accepted();
    for id in &ids {
        let copies = accepted.iter().filter(|m| m.contains(id.as_str())).count();
        assert_eq!(copies, 1, "{id} reached the server {copies} times");
    }

    // One idempotency key through both: one message.
    let body = json!({"to": ["user@example.com"], "subject": "once", "text": "hello",
        "idempotencyKey": "k-1"});
    let (code, first) = send(&a, "acme", body.clone());
    assert_eq!(code, 202, "{first}");
    let (code, again) = send(&b, "acme", body);
    assert_eq!(code, 202, "{again}");
    assert_eq!(
        (again["id"].clone(), again["duplicate"].clone()),
        (first["id"].clone(), json!(true))
    );
}
