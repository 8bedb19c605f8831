//! Brand sender domains against a real DNS server (dnsmasq on loopback):
//! the TXT record to publish is in the status, the domain goes POLLING →
//! VERIFIED once the record is there, and until then the brand's mail goes
//! out from the default sender with a warning event.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::email::*;
use support::{Dns, DnsRecord, Idplane, free_port, status_condition};

const T: Duration = Duration::from_secs(30);

fn domain_status(run: &Idplane) -> Option<Value> {
    object(run, "acme", "EmailDomain", "acme").map(|o| o["status"].clone())
}

#[test]
fn brand_domain_polling_then_verified() {
    let (tmp, manifests) = workspace();
    let server = SmtpServer::start(tmp.path(), "mail", None, ServerOptions::corp());
    write_corp_provider(&manifests, server.port, &fast_retry(3));
    std::fs::write(
        manifests.join("domain.yaml"),
        "apiVersion: idplane.dev/v1alpha1\nkind: EmailDomain\nmetadata:\n  name: acme\n  namespace: acme\nspec:\n  brand: acme\n  domain: acme.example.com\n  userName: noreply\n  displayName: Acme Support\n",
    )
    .unwrap();
    let dns_port = free_port();
    let dns = Dns::start(dns_port, "example.com", &[]);
    let nameserver = format!("127.0.0.1:{dns_port}");
    let run = start_idplane(
        tmp.path(),
        &manifests,
        "run.log",
        &[
            "--dns-nameserver",
            &nameserver,
            "--dns-poll-interval",
            "300ms",
        ],
    );

    // POLLING, with the record to publish.
    let status = wait("POLLING with a record", T, || {
        let s = domain_status(&run)?;
        (s["validationStatus"] == "POLLING" && s["dnsValidationRecords"].is_array()).then_some(s)
    });
    let record = &status["dnsValidationRecords"][0];
    assert_eq!(record["fqdn"], "_idplane.mail.acme.example.com");
    assert_eq!(record["recordType"], "TXT");
    let value = record["verificationValue"].as_str().unwrap().to_string();
    assert!(value.starts_with("idplane-verification="), "{value}");
    // Polling goes on: still POLLING after several lookups of a missing record.
    std::thread::sleep(Duration::from_millis(1000));
    let s = domain_status(&run).unwrap();
    assert_eq!(s["validationStatus"], "POLLING", "{s}");
    let verified = status_condition(&s, "Verified").unwrap();
    assert_eq!(verified["status"], "False");

    // Not verified: the brand's mail goes out from the default sender, with
    // a warning event.
    let (code, body) = send(
        &run,
        "acme",
        json!({"to": "a@example.com", "brand": "acme", "subject": "early", "text": "t"}),
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["from"], "Idplane <noreply@idplane.example>");
    assert!(
        body["warning"]
            .as_str()
            .unwrap()
            .contains("not verified (POLLING)"),
        "{body}"
    );
    let early = body["id"].as_str().unwrap().to_string();
    let warnings = events(&run, "acme", "email.sender");
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        (
            warnings[0]["outcome"].as_str(),
            warnings[0]["subject"].as_str()
        ),
        (Some("WARNING"), Some(early.as_str()))
    );

    // The record is published: VERIFIED.
    drop(dns);
    let _dns = Dns::start(
        dns_port,
        "example.com",
        &[DnsRecord::Txt("_idplane.mail.acme.example.com", &value)],
    );
    let status = wait("VERIFIED", T, || {
        let s = domain_status(&run)?;
        (s["validationStatus"] == "VERIFIED").then_some(s)
    });
    let verified = status_condition(&status, "Verified").unwrap();
    assert_eq!(verified["status"], "True", "{status}");
    let transitions = events(&run, "acme", "email.domain");
    assert_eq!(
        transitions.last().unwrap()["outcome"],
        "VERIFIED",
        "{transitions:?}"
    );

    // Verified: the brand's own sender.
    let (code, body) = send(
        &run,
        "acme",
        json!({"to": "a@example.com", "brand": "acme", "subject": "late", "text": "t"}),
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["from"], "Acme Support <noreply@acme.example.com>");
    assert!(body.get("warning").is_none());
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(wait_final(&run, "acme", &id, T)["state"], "sent");
    assert_eq!(wait_final(&run, "acme", &early, T)["state"], "sent");
    let from_headers: Vec<String> = server
        .records()
        .iter()
        .map(|r| r["from"].as_str().unwrap().to_string())
        .collect();
    assert!(
        from_headers
            .iter()
            .any(|f| f.contains("noreply@acme.example.com")),
        "{from_headers:?}"
    );
    assert!(
        from_headers
            .iter()
            .any(|f| f.contains("noreply@idplane.example")),
        "{from_headers:?}"
    );
}
