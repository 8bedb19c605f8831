//! The admission webhook, called by the real apiserver (a `url` client
//! configuration on loopback, certificates from openssl): each
//! cross-object fixture refused by `kubectl apply` with idplane's message;
//! valid applies, warnings, `--dry-run=server` and `kubectl diff` with the
//! webhook on; deletes warned about, never blocked; an idplane that is
//! down blocks applies with a message that says how to recover. Without a
//! cluster: the certificate files reloaded, a bad pair not served, and the
//! review's answer while the index has not synced.

mod support;

use std::sync::Arc;
use std::time::Duration;

use idplane::controller::webhook::server::{PATH, WEBHOOK_NAME};
use serde_json::{Value, json};
use support::admission::{
    cert_dir, client_trusting, operator_with_webhook, server_without_cluster, wait_effective,
    webhook_configuration,
};
use support::*;

const T: Duration = Duration::from_secs(60);

/// The documents of a multi-document YAML file.
fn documents(yaml: &str) -> Vec<String> {
    yaml.split("\n---\n")
        .map(str::to_string)
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .collect()
}

/// kind/name of a document, as kubectl names it.
fn resource(doc: &str) -> String {
    let v: Value = serde_yaml::from_str(doc).unwrap();
    format!(
        "{}/{}",
        v["kind"].as_str().unwrap().to_lowercase(),
        v["metadata"]["name"].as_str().unwrap()
    )
}

/// Waits until idplane's status describes the object's current
/// generation: the index holds it. Other kinds (Secrets) are not waited on.
fn wait_indexed(ns: &str, doc: &str) {
    let v: Value = serde_yaml::from_str(doc).unwrap();
    if v["apiVersion"] != "idplane.dev/v1alpha1" {
        return;
    }
    let resource = resource(doc);
    wait_for(&format!("idplane's status on {ns} {resource}"), T, || {
        let obj = get_json(ns, &resource)?;
        let generation = obj["metadata"]["generation"].as_i64()?;
        (obj["status"]["observedGeneration"].as_i64() == Some(generation)).then_some(())
    });
}

fn apply(ns: &str, yaml: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["apply", "-n", ns, "-f", "-"];
    args.extend_from_slice(extra);
    let out = kubectl_stdin(&args, yaml);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Every fixture but its last document is created before the webhook sees
/// the namespace (a fallback cycle cannot be built otherwise: its first
/// hook names one that does not exist yet); the last document is then
/// applied with the webhook on, and refused with the fixture's field and
/// message. `duplicate-object.yaml` is the exception: the apiserver sees
/// the second definition as an update of the first, which is sound, so
/// only `idplane validate` can report the duplicate.
#[test]
fn each_cross_object_fixture_is_refused_by_kubectl_apply() {
    install_crds();
    let fixtures = invalid_fixtures("cross-object");
    let namespaces: Vec<String> = fixtures
        .iter()
        .map(|_| temp_namespace("admission-fixture"))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let certs = cert_dir(tmp.path(), "certs");
    let port = free_port();
    let _op = operator_with_webhook(&namespaces, port, &certs.dir, tmp.path(), "operator");
    let webhook = webhook_configuration(port, &certs.ca);

    let mut last = Vec::new();
    for ((path, _, _), ns) in fixtures.iter().zip(&namespaces) {
        let mut docs = documents(&std::fs::read_to_string(path).unwrap());
        let refused = docs.pop().unwrap();
        for doc in &docs {
            let (ok, _, err) = apply(ns, doc, &[]);
            assert!(ok, "{}: setting up: {err}", path.display());
            wait_indexed(ns, doc);
        }
        last.push(refused);
    }
    for ns in &namespaces {
        webhook.select(ns);
    }
    for ns in &namespaces {
        wait_effective(ns);
    }
    for (((path, field, message), ns), doc) in fixtures.iter().zip(&namespaces).zip(&last) {
        let name = path.file_name().unwrap().to_string_lossy();
        let existed = get_json(ns, &resource(doc));
        let (ok, out, err) = apply(ns, doc, &[]);
        if name == "duplicate-object.yaml" {
            assert!(ok, "{name}: an update of the object is sound: {err}");
            continue;
        }
        assert!(!ok, "{name}: admitted:\n{out}{err}");
        assert!(
            err.contains(&format!("{field}: ")) && err.contains(message.as_str()),
            "{name}: expected {field}: ...{message}... in:\n{err}"
        );
        assert!(
            err.contains("is invalid"),
            "{name}: kubectl names the object: {err}"
        );
        assert_eq!(
            get_json(ns, &resource(doc)).is_some(),
            existed.is_some(),
            "{name}: a refused create creates nothing"
        );
    }
}

fn secret(name: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  {key}: s3cr3t-value\n"
    )
}

fn hook(name: &str, active: bool, secret: &str) -> String {
    format!(
        "apiVersion: idplane.dev/v1alpha1\nkind: TelephonyHook\nmetadata:\n  name: {name}\nspec:\n  active: {active}\n  url: https://sms.example.com/{name}\n  auth:\n    header: X-Api-Key\n    secretRef: {{name: {secret}, key: token}}\n"
    )
}

const DEFAULT_POLICY: &str = "apiVersion: idplane.dev/v1alpha1\nkind: EnrollmentPolicy\nmetadata:\n  name: everyone\nspec:\n  priority: 100\n  default: true\n";

/// A fresh namespace under the webhook of an `idplane operator` of the
/// test's own, the webhook already reviewing it.
struct WebhookOn {
    ns: String,
    tmp: tempfile::TempDir,
    certs: support::admission::CertDir,
    port: u16,
    op: Idplane,
    /// Dropped last: the configuration goes when the test ends.
    _webhook: TestWebhookConfiguration,
}

fn webhook_on(prefix: &str) -> WebhookOn {
    install_crds();
    let ns = temp_namespace(prefix);
    let tmp = tempfile::tempdir().unwrap();
    let certs = cert_dir(tmp.path(), "certs");
    let port = free_port();
    let op = operator_with_webhook(
        std::slice::from_ref(&ns),
        port,
        &certs.dir,
        tmp.path(),
        "first",
    );
    let webhook = webhook_configuration(port, &certs.ca);
    webhook.select(&ns);
    wait_effective(&ns);
    WebhookOn {
        ns,
        tmp,
        certs,
        port,
        op,
        _webhook: webhook,
    }
}

#[test]
fn applies_dry_runs_diffs_and_deletes_with_the_webhook_on() {
    let WebhookOn {
        ns, op, _webhook, ..
    } = webhook_on("admission");

    // A valid apply passes without a warning: the Secret, applied first,
    // is looked up although no object referenced it before.
    let valid = [
        secret("sms", "token"),
        hook("primary", true, "sms"),
        DEFAULT_POLICY.into(),
    ]
    .join("---\n");
    let (ok, out, err) = apply(&ns, &valid, &[]);
    assert!(ok, "{out}{err}");
    assert!(!err.contains("Warning"), "{err}");
    assert!(!err.contains("s3cr3t-value") && !out.contains("s3cr3t-value"));

    // A Secret that is not there yet: admitted, with a warning.
    let (ok, _, err) = apply(&ns, &hook("standby", false, "later"), &[]);
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!(
            "Warning: spec.auth.secretRef: Secret {ns}/later does not exist (yet)"
        )),
        "{err}"
    );

    // A server-side dry run is refused the same way and creates nothing;
    // a valid one passes and creates nothing either.
    let second = hook("second", true, "sms");
    let (ok, _, err) = apply(&ns, &second, &["--dry-run=server"]);
    assert!(!ok);
    assert!(
        err.contains("spec.active: only one TelephonyHook may be active")
            && err.contains("active hook primary wins")
            && err.contains("first set spec.active: false on TelephonyHook primary"),
        "{err}"
    );
    let (ok, out, err) = apply(&ns, &hook("spare", false, "sms"), &["--dry-run=server"]);
    assert!(ok && out.contains("(server dry run)"), "{out}{err}");
    assert!(get_json(&ns, "telephonyhook/second").is_none());
    assert!(get_json(&ns, "telephonyhook/spare").is_none());

    // kubectl diff with the webhook on: 0 when nothing would change, 1
    // when something would, above 1 (with idplane's reason) when the
    // change would be refused.
    wait_indexed(&ns, &hook("primary", true, "sms"));
    let diff = |yaml: &str| {
        let out = kubectl_stdin(&["diff", "-n", &ns, "-f", "-"], yaml);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = diff(&valid);
    assert_eq!(code, Some(0), "{out}{err}");
    let moved = hook("primary", true, "sms").replace("/primary", "/moved");
    let (code, out, err) = diff(&moved);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("+  url: https://sms.example.com/moved"),
        "{out}"
    );
    let (code, out, err) = diff(&second);
    assert!(code.unwrap_or(0) > 1, "{code:?} {out}{err}");
    assert!(
        err.contains("only one TelephonyHook may be active"),
        "{err}"
    );

    // An update that breaks a rule is refused; the live object is kept.
    let (ok, _, err) = apply(&ns, &hook("standby", true, "later"), &[]);
    assert!(!ok && err.contains("active hook primary wins"), "{err}");
    let standby = get_json(&ns, "telephonyhook/standby").unwrap();
    assert_eq!(standby["spec"]["active"], json!(false));

    // A delete that leaves the org without its active hook is allowed,
    // with a warning.
    let out = kubectl(&["delete", "-n", &ns, "telephonyhook/primary"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!(
            "Warning: after this change org {ns} has no active TelephonyHook (it was primary)"
        )),
        "{}",
        text(&out.stderr)
    );

    let refused = op.metric(
        "idplane_admission_reviews_total{kind=\"TelephonyHook\",operation=\"CREATE\",outcome=\"refused\"}",
    );
    assert!(refused >= 2.0, "refused creates counted: {refused}");
    let warned = op.metric(
        "idplane_admission_reviews_total{kind=\"TelephonyHook\",operation=\"DELETE\",outcome=\"warned\"}",
    );
    assert!(warned >= 1.0, "warned deletes counted: {warned}");
    assert!(!op.log_text().contains("s3cr3t-value"));
}

#[test]
fn a_stopped_idplane_blocks_applies_with_a_message_that_says_how_to_recover() {
    let WebhookOn {
        ns,
        tmp,
        certs,
        port,
        mut op,
        _webhook,
    } = webhook_on("admission-down");
    let (ok, _, err) = apply(&ns, &hook("primary", true, "sms"), &[]);
    assert!(ok, "{err}");

    assert!(op.stop(T).success());
    let (ok, _, err) = apply(&ns, &hook("standby", false, "sms"), &[]);
    assert!(!ok);
    // The apiserver writes this message; idplane chose the webhook's name
    // and path so that it says what to do.
    for part in [
        format!("failed calling webhook \"{WEBHOOK_NAME}\""),
        format!("https://127.0.0.1:{port}{PATH}?timeout=5s"),
        "connection refused".to_string(),
    ] {
        assert!(err.contains(&part), "{part} not in:\n{err}");
    }
    assert!(
        err.contains("idplane-must-be-running")
            && err.contains("kubectl-delete-validatingwebhookconfiguration"),
        "{err}"
    );

    // Deletes are not blocked (their webhook only warns, and is ignored
    // when it cannot be reached).
    let out = kubectl(&["delete", "-n", &ns, "telephonyhook/primary"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // idplane back: applies pass again.
    let _op = operator_with_webhook(
        std::slice::from_ref(&ns),
        port,
        &certs.dir,
        tmp.path(),
        "second",
    );
    let (ok, _, err) = apply(&ns, &hook("standby", false, "sms"), &[]);
    assert!(ok, "{err}");
}

#[test]
fn certificate_files_are_reloaded_and_a_pair_that_does_not_fit_is_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let a = cert_dir(tmp.path(), "a");
    let b = cert_dir(tmp.path(), "b");
    let serving = tmp.path().join("serving");
    std::fs::create_dir(&serving).unwrap();
    let put = |from: &std::path::Path, file: &str| {
        std::fs::copy(from.join(file), serving.join(file)).unwrap();
    };
    put(&a.dir, "tls.crt");
    put(&a.dir, "tls.key");
    block_on(async {
        let (port, _keep, _) = server_without_cluster(&serving, Default::default()).await;
        let url = format!("https://127.0.0.1:{port}/healthz");
        let works = |ca: &std::path::Path| {
            let client = client_trusting(ca);
            let url = url.clone();
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        };
        assert!(works(&a.ca).await, "serves pair a");

        // b's certificate with a's key (files caught mid-rotation): a stays.
        put(&b.dir, "tls.crt");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(works(&a.ca).await, "still serves pair a");
        assert!(!works(&b.ca).await);

        put(&b.dir, "tls.key");
        let deadline = tokio::time::Instant::now() + T;
        while !works(&b.ca).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "pair b not served after {T:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!works(&a.ca).await, "pair a is no longer served");
    });
}

/// The apiserver's side of a review, on the wire: a 503 refusal while the
/// index has not synced (with Retry-After details), an allowed answer
/// with its uid once it has, and 400 for what is not an AdmissionReview.
#[test]
fn reviews_on_the_wire_fail_closed_until_the_index_has_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = cert_dir(tmp.path(), "certs");
    block_on(async {
        let (port, snapshots, _) = server_without_cluster(&certs.dir, Default::default()).await;
        let client = client_trusting(&certs.ca);
        let url = format!("https://127.0.0.1:{port}{PATH}?timeout=5s");
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "7d5e2c1a-0000-4000-8000-000000000001",
                "kind": {"group": "idplane.dev", "version": "v1alpha1", "kind": "TelephonyHook"},
                "resource": {"group": "idplane.dev", "version": "v1alpha1", "resource": "telephonyhooks"},
                "name": "primary", "namespace": "acme", "operation": "CREATE",
                "userInfo": {"username": "admin"},
                "object": serde_yaml::from_str::<Value>(&hook("primary", true, "sms")).unwrap(),
                "oldObject": null, "dryRun": false,
            }
        });
        let post = || async {
            let r = client.post(&url).json(&review).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        };
        let answer = post().await;
        let response = &answer["response"];
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(response["uid"], "7d5e2c1a-0000-4000-8000-000000000001");
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 503);
        assert_eq!(response["status"]["details"]["retryAfterSeconds"], 2);
        assert!(
            response["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with("idplane is starting"),
            "{response}"
        );

        snapshots.send_replace(Arc::new(idplane::index::Snapshot {
            synced: true,
            ..Default::default()
        }));
        let response = post().await["response"].clone();
        assert_eq!(response["allowed"], true, "{response}");
        assert!(
            response["warnings"][0]
                .as_str()
                .unwrap()
                .contains("idplane has not read Secret acme/sms"),
            "{response}"
        );

        let r = client.post(&url).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 400);
    });
}

/// While idplane is starting, a write is refused with 503 and a
/// Retry-After, which kubectl honours by itself: the apply passes once the
/// index has synced, without the user doing anything.
#[test]
fn an_apply_while_idplane_starts_is_retried_by_kubectl_until_it_passes() {
    install_crds();
    let ns = temp_namespace("admission-starting");
    let tmp = tempfile::tempdir().unwrap();
    let certs = cert_dir(tmp.path(), "certs");
    let synced = || {
        Arc::new(idplane::index::Snapshot {
            synced: true,
            ..Default::default()
        })
    };
    block_on(async {
        let (port, snapshots, metrics) =
            server_without_cluster(&certs.dir, (*synced()).clone()).await;
        let webhook = webhook_configuration(port, &certs.ca);
        webhook.select(&ns);
        let probe_ns = ns.clone();
        tokio::task::spawn_blocking(move || wait_effective(&probe_ns))
            .await
            .unwrap();

        snapshots.send_replace(Arc::new(idplane::index::Snapshot::default()));
        let apply_ns = ns.clone();
        let applied = tokio::task::spawn_blocking(move || {
            apply(&apply_ns, &hook("primary", true, "sms"), &[])
        });
        let refused_while_starting = || {
            metrics.encode().lines().any(|l| {
                l.starts_with("idplane_admission_reviews_total{")
                    && l.contains("outcome=\"starting\"")
                    && !l.ends_with(" 0")
            })
        };
        let deadline = tokio::time::Instant::now() + T;
        while !refused_while_starting() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no review while starting"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        snapshots.send_replace(synced());
        let (ok, out, err) = applied.await.unwrap();
        assert!(ok, "{out}{err}");
    });
    assert!(get_json(&ns, "telephonyhook/primary").is_some());
}
