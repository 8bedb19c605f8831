//! Health that tools read, against the real apiserver: the example org
//! (`examples/org`, its SMTP server and DNS records on loopback) becomes
//! Ready for `kubectl wait --for=condition=Ready` on all four kinds, a
//! standby hook included, and Argo CD's health check calls every object
//! Healthy; an invalid object carries `Stalled=True` and makes `kubectl
//! wait` time out, a hook waiting for its Secret is `Reconciling`, and an
//! inactive policy is Ready (Argo CD: Suspended). Each test in its own
//! namespace, with its own `idplane operator`.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::argocd::argocd_health;
use support::email::{ServerOptions, SmtpServer};
use support::*;

const T: Duration = Duration::from_secs(120);
const KINDS: &str = "telephonyhooks,enrollmentpolicies,emailproviders,emaildomains";

fn operator(ns: &str, tmp: &Path, extra: &[&str]) -> Idplane {
    let mut flags = vec!["--lease-seconds", "6"];
    flags.extend_from_slice(&ALLOW_LOOPBACK);
    flags.extend_from_slice(extra);
    Idplane::operator(
        ns,
        &tmp.join("idplane.db"),
        &tmp.join("operator.log"),
        &flags,
        &[("RUST_LOG", "info")],
    )
}

/// `kubectl wait` in the namespace; its output.
fn kubectl_wait(ns: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["wait", "-n", ns];
    all.extend_from_slice(args);
    kubectl(&all)
}

/// Replaces `from` with `to` in an example, which must hold `from`.
fn edited(text: String, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the example no longer holds {from:?}");
    text.replacen(from, to, 1)
}

/// Every idplane object of the namespace, as JSON.
fn objects(ns: &str) -> Vec<Value> {
    let out = kubectl_ok(&["get", "-n", ns, KINDS, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn name(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["kind"].as_str().unwrap(),
        obj["metadata"]["name"].as_str().unwrap()
    )
}

#[test]
fn the_example_org_is_ready_for_kubectl_wait() {
    install_crds();
    let ns = temp_namespace("health");
    let tmp = tempfile::tempdir().unwrap();
    // The example's SMTP server and credentials, on loopback.
    let smtp = SmtpServer::start(
        tmp.path(),
        "corp",
        None,
        ServerOptions {
            auth: Some(("idplane@example.com", "smtp-password-change-me")),
            ..Default::default()
        },
    );
    let dns_port = free_port();
    let dns = Dns::start(dns_port, "example.com", &[]);
    for file in [
        "examples/org/10-secrets.yaml",
        "examples/org/20-telephony-hooks.yaml",
        "examples/org/30-enrollment-policies.yaml",
    ] {
        apply_file(&ns, file);
    }
    let email = std::fs::read_to_string(root().join("examples/org/40-email.yaml")).unwrap();
    let email = edited(email, "host: smtp.example.com", "host: 127.0.0.1");
    let email = edited(email, "port: 587", &format!("port: {}", smtp.port));
    let email = edited(email, "tls: starttls", "tls: none\n  allowInsecure: true");
    apply_yaml(&ns, &email);
    let _op = operator(
        &ns,
        tmp.path(),
        &[
            "--dns-nameserver",
            &dns.address(),
            "--dns-poll-interval",
            "300ms",
            "--smtp-timeout",
            "5s",
        ],
    );

    // Until their TXT records are published the domains are Reconciling,
    // which Argo CD shows as Progressing; they show the records to publish.
    let mut records = Vec::new();
    for domain in ["acme", "widgets"] {
        let obj = wait_for(&format!("emaildomain/{domain} Reconciling"), T, || {
            let obj = get_json(&ns, &format!("emaildomain/{domain}"))?;
            let reconciling = condition(&obj, "Reconciling")?;
            let record = &obj["status"]["dnsValidationRecords"][0];
            (reconciling["status"] == "True" && record.is_object()).then_some(obj)
        });
        assert_eq!(condition(&obj, "Ready").unwrap()["status"], "False");
        assert_eq!(argocd_health(&obj).status, "Progressing", "{obj}");
        let record = &obj["status"]["dnsValidationRecords"][0];
        records.push((
            record["fqdn"].as_str().unwrap().to_string(),
            record["verificationValue"].as_str().unwrap().to_string(),
        ));
    }
    let out = kubectl_wait(
        &ns,
        &["--for=condition=Ready", "--timeout=3s", "emaildomain/acme"],
    );
    assert!(!out.status.success(), "Ready before the DNS record exists");

    drop(dns);
    let txt: Vec<DnsRecord> = records
        .iter()
        .map(|(fqdn, value)| DnsRecord::Txt(fqdn, value))
        .collect();
    let _dns = Dns::start(dns_port, "example.com", &txt);

    let out = kubectl_wait(
        &ns,
        &["--for=condition=Ready", "--timeout=120s", "--all", KINDS],
    );
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert_eq!(said.matches("condition met").count(), 8, "{said}");

    for obj in objects(&ns) {
        let what = name(&obj);
        assert_eq!(
            obj["status"]["observedGeneration"], obj["metadata"]["generation"],
            "{what}"
        );
        for abnormal in ["Reconciling", "Stalled"] {
            assert!(condition(&obj, abnormal).is_none(), "{what}: {obj}");
        }
        assert_eq!(argocd_health(&obj).status, "Healthy", "{what}: {obj}");
    }
    // The standby hook is Ready: it can take over; Active says it is not in service.
    let backup = get_json(&ns, "telephonyhook/backup").unwrap();
    assert_eq!(condition(&backup, "Ready").unwrap()["reason"], "Standby");
    assert_eq!(condition(&backup, "Active").unwrap()["status"], "False");
    let provider = get_json(&ns, "emailprovider/corporate-smtp").unwrap();
    assert_eq!(condition(&provider, "Verified").unwrap()["status"], "True");
}

#[test]
fn an_invalid_object_stalls_and_kubectl_wait_times_out() {
    install_crds();
    let ns = temp_namespace("stalled");
    let tmp = tempfile::tempdir().unwrap();
    let hook = |name: &str, secret: &str, extra: &str| {
        format!(
            "apiVersion: idplane.dev/v1alpha1\nkind: TelephonyHook\nmetadata:\n  name: {name}\nspec:\n  url: https://sms.example.com/{name}\n  auth:\n    header: X-Api-Key\n    secretRef: {{name: {secret}, key: token}}\n{extra}"
        )
    };
    apply_yaml(
        &ns,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sms\nstringData:\n  token: t\n",
    );
    // The schema takes it; the validator does not: its fallback does not exist.
    apply_yaml(
        &ns,
        &hook("lonely", "sms", "  fallback: {hookRef: missing}\n"),
    );
    // A standby whose Secret comes later.
    apply_yaml(&ns, &hook("patient", "later", "  active: false\n"));
    apply_yaml(
        &ns,
        "apiVersion: idplane.dev/v1alpha1\nkind: EnrollmentPolicy\nmetadata:\n  name: draft\nspec:\n  priority: 5\n  active: false\n  groups: [pilots]\n",
    );
    let _op = operator(&ns, tmp.path(), &[]);

    let out = kubectl_wait(
        &ns,
        &[
            "--for=condition=Stalled=True",
            "--timeout=120s",
            "telephonyhook/lonely",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = kubectl_wait(
        &ns,
        &[
            "--for=condition=Ready",
            "--timeout=5s",
            "telephonyhook/lonely",
        ],
    );
    assert!(
        !out.status.success(),
        "kubectl wait took an invalid hook for Ready"
    );
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );
    let lonely = get_json(&ns, "telephonyhook/lonely").unwrap();
    let stalled = condition(&lonely, "Stalled").unwrap();
    assert_eq!(stalled["reason"], "Invalid");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("spec.fallback.hookRef") && message.contains("missing"),
        "{message}"
    );
    assert_eq!(
        stalled["observedGeneration"],
        lonely["metadata"]["generation"]
    );
    let health = argocd_health(&lonely);
    assert_eq!(health.status, "Degraded");
    assert!(
        health.message.starts_with("Invalid: spec.fallback.hookRef"),
        "{health:?}"
    );

    // Waiting for a Secret is work in progress, not a dead end.
    let patient = wait_for("patient Reconciling", T, || {
        let obj = get_json(&ns, "telephonyhook/patient")?;
        (condition(&obj, "Reconciling")?["reason"] == "SecretNotFound").then_some(obj)
    });
    assert!(condition(&patient, "Stalled").is_none());
    assert_eq!(argocd_health(&patient).status, "Progressing");

    // A policy its spec switches off is Ready; Argo CD shows it Suspended.
    let out = kubectl_wait(
        &ns,
        &[
            "--for=condition=Ready",
            "--timeout=120s",
            "enrollmentpolicy/draft",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let draft = get_json(&ns, "enrollmentpolicy/draft").unwrap();
    assert_eq!(condition(&draft, "Ready").unwrap()["reason"], "Deactivated");
    assert_eq!(argocd_health(&draft).status, "Suspended");

    // The user's changes end both: the fallback and the Secret appear.
    apply_yaml(&ns, &hook("missing", "sms", "  active: false\n"));
    apply_yaml(
        &ns,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: later\nstringData:\n  token: t\n",
    );
    let out = kubectl_wait(
        &ns,
        &[
            "--for=condition=Ready",
            "--timeout=120s",
            "telephonyhook/lonely",
            "telephonyhook/patient",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for hook in ["lonely", "patient"] {
        let obj = get_json(&ns, &format!("telephonyhook/{hook}")).unwrap();
        assert!(condition(&obj, "Stalled").is_none(), "{obj}");
        assert!(condition(&obj, "Reconciling").is_none(), "{obj}");
        assert_eq!(argocd_health(&obj).status, "Healthy", "{obj}");
    }
}
