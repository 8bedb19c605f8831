//! The test email ("Send test email"): `POST /v1/orgs/{org}/email-provider/test`
//! and `idplane test-email`, through a real SMTP server; the outcome is
//! reported and written to the provider's `status.lastTest`.

mod support;

use std::time::Duration;

use idplane::cli::test_email::{TestEmailArgs, run as test_email};
use serde_json::json;
use support::email::*;

const T: Duration = Duration::from_secs(30);

fn args(org: &str) -> TestEmailArgs {
    TestEmailArgs {
        namespace: org.into(),
        from: "admin@example.com".into(),
        to: "someone@example.com".into(),
        server: None,
        token: None,
        manifests: None,
        smtp_ca_file: None,
        smtp_timeout: Duration::from_secs(5),
        // The test server listens on loopback.
        egress: idplane::egress::EgressSettings {
            egress_allow: vec!["127.0.0.0/8".parse().unwrap()],
            ..Default::default()
        },
    }
}

fn exit(a: TestEmailArgs) -> String {
    match support::block_on(test_email(a)) {
        Ok(code) => format!("{code:?}"),
        Err(e) => format!("error: {e:#}"),
    }
}

#[test]
fn test_email_through_the_api_and_the_cli() {
    let (tmp, manifests) = workspace();
    let certs = certs(tmp.path());
    let server = SmtpServer::start(
        tmp.path(),
        "tls",
        Some(&certs),
        ServerOptions {
            tls: "starttls",
            ..ServerOptions::corp()
        },
    );
    let file = manifests.join("provider.yaml");
    let provider = CorpProvider {
        tls: "starttls",
        ..CorpProvider::new("acme", server.port)
    };
    provider.write(&file);
    let run = start_idplane(
        tmp.path(),
        &manifests,
        "run.log",
        &["--smtp-ca-file", certs.ca.to_str().unwrap()],
    );
    wait_verified(&run, "acme", "corp", "True");

    let url = run.url("/v1/orgs/acme/email-provider/test");
    let body = json!({"from": "admin@example.com", "to": "someone@example.com"});
    let (code, text) = support::http("POST", &url, Some(TOKEN), Some(&body));
    assert_eq!(code, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["result"], "SUCCESS");
    assert!(
        answer["reply"].as_str().unwrap().starts_with("250"),
        "{answer}"
    );
    let records = server.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["subject"], "idplane test email");
    let last = wait("status.lastTest", T, || {
        let o = object(&run, "acme", "EmailProvider", "corp")?;
        o["status"]["lastTest"]["result"]
            .as_str()?
            .starts_with("SUCCESS")
            .then(|| o["status"]["lastTest"].clone())
    });
    assert_eq!(last["to"], "someone@example.com");

    // The CLI through the running idplane, and from the manifests.
    let mut via_server = args("acme");
    via_server.server = Some(format!("http://{}", run.addr));
    via_server.token = Some(TOKEN.into());
    assert_eq!(exit(via_server.clone()), "ExitCode(unix_exit_status(0))");
    let mut from_files = args("acme");
    from_files.manifests = Some(manifests.clone());
    from_files.smtp_ca_file = Some(certs.ca.clone());
    assert_eq!(exit(from_files.clone()), "ExitCode(unix_exit_status(0))");
    assert_eq!(server.records().len(), 3);
    let no_org = args("nobody");
    let mut no_org_files = no_org.clone();
    no_org_files.manifests = Some(manifests.clone());
    assert!(exit(no_org_files).contains("has no usable EmailProvider"));
    // The provider without its Secret: an error (exit 2), not a refusal.
    let no_secret = tmp.path().join("no-secret");
    std::fs::create_dir(&no_secret).unwrap();
    let both = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        no_secret.join("provider.yaml"),
        both.split_once("---\n").unwrap().1,
    )
    .unwrap();
    let mut no_secret_files = args("acme");
    no_secret_files.manifests = Some(no_secret);
    assert_eq!(
        exit(no_secret_files),
        "error: EmailProvider corp cannot be used: spec.passwordSecretRef: Secret acme/corp-smtp not found"
    );

    // A wrong password: 502 with the step and the server's reply; lastTest
    // says FAILURE; the CLI exits 1.
    CorpProvider {
        password: "bad-pass",
        ..provider
    }
    .write(&file);
    wait_verified(&run, "acme", "corp", "False");
    let (code, text) = support::http("POST", &url, Some(TOKEN), Some(&body));
    assert_eq!(code, 502, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (answer["code"].as_str(), answer["step"].as_str()),
        (Some("smtp_failed"), Some("AuthFailed")),
        "{answer}"
    );
    assert!(
        answer["reply"].as_str().unwrap().contains("535"),
        "{answer}"
    );
    assert!(!text.contains("bad-pass"));
    wait("status.lastTest FAILURE", T, || {
        let o = object(&run, "acme", "EmailProvider", "corp")?;
        o["status"]["lastTest"]["result"]
            .as_str()?
            .starts_with("FAILURE")
            .then_some(())
    });
    assert_eq!(exit(via_server), "ExitCode(unix_exit_status(1))");
    assert_eq!(exit(from_files), "ExitCode(unix_exit_status(1))");
    let tests = events(&run, "acme", "email.test");
    let outcomes: Vec<&str> = tests
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["SUCCESS", "SUCCESS", "FAILURE", "FAILURE"]);

    // status.lastTest survives a restart (restored from the system log).
    let latest = tests.last().unwrap()["time"].clone();
    let last = wait("status.lastTest of the latest test", T, || {
        let o = object(&run, "acme", "EmailProvider", "corp")?;
        let t = &o["status"]["lastTest"];
        (t["time"] == latest).then(|| t.clone())
    });
    assert!(
        last["result"].as_str().unwrap().starts_with("FAILURE"),
        "{last}"
    );
    drop(run);
    let run = start_idplane(
        tmp.path(),
        &manifests,
        "run2.log",
        &["--smtp-ca-file", certs.ca.to_str().unwrap()],
    );
    let restored = wait("status.lastTest after a restart", T, || {
        let o = object(&run, "acme", "EmailProvider", "corp")?;
        let t = &o["status"]["lastTest"];
        (!t.is_null()).then(|| t.clone())
    });
    assert_eq!(restored, last);
}
