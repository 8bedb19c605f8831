//! The operator against the real test cluster: status with conditions and
//! observedGeneration, field-level messages, conflicts and fail-over, Secret
//! rotation, no rewrite of unchanged status, the Lease hand-over between two
//! processes, and 401/403 with real ServiceAccount tokens.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(60);

fn start_operator(ns: &str, identity: &str, tmp: &std::path::Path) -> Idplane {
    start_operator_leasing(ns, identity, tmp, "6")
}

fn start_operator_leasing(
    ns: &str,
    identity: &str,
    tmp: &std::path::Path,
    lease_seconds: &str,
) -> Idplane {
    Idplane::operator(
        ns,
        &tmp.join(format!("{identity}.db")),
        &tmp.join(format!("{identity}.log")),
        &[
            "--identity",
            identity,
            "--lease-seconds",
            lease_seconds,
            // The providers' SMTP server listens there.
            ALLOW_LOOPBACK[0],
            ALLOW_LOOPBACK[1],
        ],
        &[("RUST_LOG", "info")],
    )
}

fn secret(name: &str, key: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  {key}: {value}\n"
    )
}

fn hook(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: idplane.dev/v1alpha1\nkind: TelephonyHook\nmetadata:\n  name: {name}\nspec:\n  url: https://sms.example.com/{name}\n  auth:\n    header: X-Api-Key\n    secretRef: {{name: sms, key: token}}\n{extra}"
    )
}

/// A provider of the SMTP server on loopback `port` (user `u`, password in
/// the Secret `smtp`): Ready once idplane has verified it.
fn provider(name: &str, port: u16) -> String {
    format!(
        "apiVersion: idplane.dev/v1alpha1\nkind: EmailProvider\nmetadata:\n  name: {name}\nspec:\n  enabled: true\n  host: 127.0.0.1\n  port: {port}\n  username: u\n  passwordSecretRef: {{name: smtp, key: password}}\n  tls: none\n  allowInsecure: true\n"
    )
}

/// Waits until the object's condition has `status` (and `reason`, if given)
/// for the object's current generation; returns the object.
fn wait_condition(
    ns: &str,
    resource: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> Value {
    wait_for(
        &format!("{resource} {type_}={status} {reason:?}"),
        T,
        || {
            let obj = get_json(ns, resource)?;
            let c = condition(&obj, type_)?;
            let generation = obj["metadata"]["generation"].as_i64()?;
            let current = c["observedGeneration"].as_i64() == Some(generation)
                && obj["status"]["observedGeneration"].as_i64() == Some(generation);
            let ok = c["status"] == status && reason.is_none_or(|r| c["reason"] == r);
            (current && ok).then_some(obj)
        },
    )
}

#[test]
fn status_conflicts_failover_and_secret_rotation() {
    install_crds();
    let ns = temp_namespace("operator");
    let tmp = tempfile::tempdir().unwrap();
    apply_yaml(&ns, &secret("sms", "token", "first-token"));
    apply_yaml(&ns, &hook("alpha", ""));
    let op = start_operator(&ns, "solo", tmp.path());

    // A valid object becomes Ready for its current generation.
    let obj = wait_condition(&ns, "telephonyhook/alpha", "Ready", "True", Some("Ready"));
    assert_eq!(condition(&obj, "Active").unwrap()["status"], "True");
    assert_eq!(condition(&obj, "Accepted").unwrap()["reason"], "Valid");
    let out = kubectl_ok(&["get", "telephonyhooks", "-n", &ns]);
    assert!(
        out.lines().nth(1).unwrap().contains("True"),
        "READY column:\n{out}"
    );

    // An invalid change never reaches the operator: the apiserver refuses
    // it with the CRD's CEL rule, and the accepted version stays Ready at
    // its generation. (The operator's own Accepted=False path, for objects
    // stored before a rule existed, is tested in run mode.)
    let generation = obj["metadata"]["generation"].clone();
    let out = kubectl_stdin(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        &hook("alpha", "  timeout: 11s\n"),
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "the apiserver took timeout: 11s");
    assert!(
        err.contains("spec.timeout") && err.contains("at most 10s"),
        "{err}"
    );
    let obj = get_json(&ns, "telephonyhook/alpha").unwrap();
    assert_eq!(obj["metadata"]["generation"], generation);
    assert_eq!(condition(&obj, "Ready").unwrap()["status"], "True");

    // Two active hooks: the oldest wins, the other reports the conflict.
    std::thread::sleep(Duration::from_millis(1100)); // distinct creationTimestamps
    apply_yaml(&ns, &hook("beta", ""));
    let obj = wait_condition(
        &ns,
        "telephonyhook/beta",
        "Active",
        "False",
        Some("Conflict"),
    );
    let msg = condition(&obj, "Active").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("alpha"), "names the winner: {msg}");
    // Deactivating the winner hands over at once.
    apply_yaml(&ns, &hook("alpha", "  active: false\n"));
    wait_condition(&ns, "telephonyhook/beta", "Active", "True", None);
    let obj = wait_condition(
        &ns,
        "telephonyhook/alpha",
        "Active",
        "False",
        Some("Deactivated"),
    );
    assert!(
        condition(&obj, "Active").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("active: false")
    );
    // Re-activate alpha (oldest): it wins again; deleting it fails over.
    apply_yaml(&ns, &hook("alpha", "  active: true\n"));
    wait_condition(
        &ns,
        "telephonyhook/beta",
        "Active",
        "False",
        Some("Conflict"),
    );
    kubectl_ok(&["delete", "-n", &ns, "telephonyhook/alpha"]);
    wait_condition(&ns, "telephonyhook/beta", "Active", "True", None);

    // One provider per org, with fail-over.
    let smtp = support::email::SmtpServer::start(
        tmp.path(),
        "smtp",
        None,
        support::email::ServerOptions {
            auth: Some(("u", "pw")),
            ..Default::default()
        },
    );
    apply_yaml(&ns, &secret("smtp", "password", "pw"));
    apply_yaml(&ns, &provider("first", smtp.port));
    wait_condition(&ns, "emailprovider/first", "Ready", "True", None);
    std::thread::sleep(Duration::from_millis(1100));
    apply_yaml(&ns, &provider("second", smtp.port));
    let obj = wait_condition(
        &ns,
        "emailprovider/second",
        "Ready",
        "False",
        Some("Conflict"),
    );
    assert!(
        condition(&obj, "Ready").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("first")
    );
    kubectl_ok(&["delete", "-n", &ns, "emailprovider/first"]);
    wait_condition(&ns, "emailprovider/second", "Ready", "True", None);

    // Events were recorded for the transitions.
    let events = kubectl_ok(&["get", "events.v1.events.k8s.io", "-n", &ns, "-o", "json"]);
    let events: Value = serde_json::from_str(&events).unwrap();
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for r in ["Activated", "Conflict", "Deactivated"] {
        assert!(reasons.contains(&r), "no {r} event in {reasons:?}");
    }

    // A missing Secret key: Ready=False SecretNotFound naming it, not its content.
    apply_yaml(&ns, &secret("sms", "other", "x"));
    kubectl_ok(&[
        "patch",
        "secret",
        "sms",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/data/token"}]"#,
    ]);
    let obj = wait_condition(
        &ns,
        "telephonyhook/beta",
        "Ready",
        "False",
        Some("SecretNotFound"),
    );
    let msg = condition(&obj, "Ready").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("sms") && msg.contains("token"), "{msg}");
    assert!(!msg.contains("first-token"));

    // A rotated Secret reaches the runtime without a restart.
    let admin = admin_token();
    let before = config_secret_version(&op, &ns, &admin);
    apply_yaml(&ns, &secret("sms", "token", "rotated-token"));
    wait_condition(&ns, "telephonyhook/beta", "Ready", "True", None);
    let after = wait_for(
        "the rotated Secret in the runtime",
        Duration::from_secs(20),
        || {
            let v = config_secret_version(&op, &ns, &admin);
            (v != before && !v.is_empty()).then_some(v)
        },
    );
    let rv = kubectl_ok(&[
        "get",
        "secret",
        "sms",
        "-n",
        &ns,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    assert!(
        after.contains(&rv),
        "{after} should name resourceVersion {rv}"
    );
    let (_, config) = http_get(&op.url(&format!("/v1/orgs/{ns}/config")), Some(&admin));
    assert!(
        !config.contains("rotated-token") && !config.contains("first-token"),
        "{config}"
    );
}

/// The Secret version the runtime uses for the active hook's auth secret.
fn config_secret_version(op: &Idplane, ns: &str, token: &str) -> String {
    let (code, body) = http_get(&op.url(&format!("/v1/orgs/{ns}/config")), Some(token));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["config"]["hooks"]["beta"]["authSecret"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn unchanged_status_is_not_written_again() {
    install_crds();
    let ns = temp_namespace("nowrite");
    let tmp = tempfile::tempdir().unwrap();
    apply_yaml(&ns, &secret("sms", "token", "t"));
    apply_yaml(&ns, &hook("quiet", ""));
    let op = start_operator(&ns, "quiet", tmp.path());
    wait_condition(&ns, "telephonyhook/quiet", "Ready", "True", None);
    let writes = || op.metric("idplane_status_writes_total{result=\"ok\"}");
    std::thread::sleep(Duration::from_secs(2));
    let settled = writes();
    assert!(settled >= 1.0);
    // Changes that do not affect the status: a label, a status-less touch.
    kubectl_ok(&["label", "-n", &ns, "telephonyhook/quiet", "team=sms"]);
    kubectl_ok(&["annotate", "-n", &ns, "telephonyhook/quiet", "note=hello"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        writes(),
        settled,
        "status was rewritten although nothing changed"
    );
    // A status someone else overwrote is repaired.
    let mut obj = get_json(&ns, "telephonyhook/quiet").unwrap();
    obj["status"] = json!({"conditions": [{"type": "Ready", "status": "False", "reason": "Tampered",
        "message": "written by hand", "lastTransitionTime": "2020-01-01T00:00:00Z"}]});
    let out = kubectl_stdin(
        &[
            "replace",
            "--raw",
            &format!("/apis/idplane.dev/v1alpha1/namespaces/{ns}/telephonyhooks/quiet/status"),
            "-f",
            "-",
        ],
        &obj.to_string(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_condition(&ns, "telephonyhook/quiet", "Ready", "True", Some("Ready"));
    // The repair is visible before the writer has counted its answer.
    let repaired = wait_for("the repair counted", T, || {
        let n = writes();
        (n > settled).then_some(n)
    });
    // A real change is written.
    apply_yaml(&ns, &hook("quiet", "  timeout: 5s\n"));
    wait_condition(&ns, "telephonyhook/quiet", "Ready", "True", None);
    assert!(writes() > repaired);
}

#[test]
fn lease_hands_status_writing_to_the_other_replica() {
    install_crds();
    let ns = temp_namespace("lease");
    let tmp = tempfile::tempdir().unwrap();
    apply_yaml(&ns, &secret("sms", "token", "t"));
    let mut a = start_operator(&ns, "replica-a", tmp.path());
    wait_for("replica-a to lead", T, || {
        (a.metric("idplane_leader") == 1.0).then_some(())
    });
    let b = start_operator(&ns, "replica-b", tmp.path());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(b.metric("idplane_leader"), 0.0, "only one leader");
    // Both serve the runtime from their own index.
    apply_yaml(&ns, &hook("h1", ""));
    wait_condition(&ns, "telephonyhook/h1", "Ready", "True", None);
    for op in [&a, &b] {
        wait_for("both replicas to index h1", T, || {
            let (c, body) = http_get(
                &op.url(&format!("/v1/orgs/{ns}/config")),
                Some(&admin_token()),
            );
            (c == 200 && body.contains("\"activeHook\":\"h1\"")).then_some(())
        });
    }
    // Kill the leader: the other takes over within the lease duration.
    a.child.kill().unwrap();
    let killed = std::time::Instant::now();
    wait_for("replica-b to lead", Duration::from_secs(30), || {
        (b.metric("idplane_leader") == 1.0).then_some(())
    });
    assert!(
        killed.elapsed() < Duration::from_secs(6 + 2 + 3),
        "took {:?}",
        killed.elapsed()
    );
    let lease = get_json(&ns, "lease/idplane-status-writer").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    // And writes status.
    std::thread::sleep(Duration::from_millis(1100));
    apply_yaml(&ns, &hook("h2", ""));
    let obj = wait_condition(&ns, "telephonyhook/h2", "Active", "False", Some("Conflict"));
    assert!(
        condition(&obj, "Active").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("h1")
    );
}

#[test]
fn a_leader_stopped_with_sigterm_gives_the_lease_up() {
    install_crds();
    let ns = temp_namespace("release");
    let tmp = tempfile::tempdir().unwrap();
    // A 30 s lease: the other replica (trying every 10 s) could take it
    // within the wait below only if it was given up.
    let mut a = start_operator_leasing(&ns, "replica-a", tmp.path(), "30");
    wait_for("replica-a to lead", T, || {
        (a.metric("idplane_leader") == 1.0).then_some(())
    });
    let b = start_operator_leasing(&ns, "replica-b", tmp.path(), "30");
    let status = a.stop(Duration::from_secs(30));
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(
        status.success(),
        "exit status after SIGTERM: {status:?}\n{log}"
    );
    let lease = get_json(&ns, "lease/idplane-status-writer").unwrap();
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or("");
    assert_ne!(holder, "replica-a", "{lease}");
    assert!(log.contains("lease: released"), "{log}");
    wait_for("replica-b to lead", Duration::from_secs(20), || {
        (b.metric("idplane_leader") == 1.0).then_some(())
    });
}

#[test]
fn runtime_api_checks_real_serviceaccount_tokens() {
    install_crds();
    let ns = temp_namespace("authz");
    let other = temp_namespace("authz-other");
    let tmp = tempfile::tempdir().unwrap();
    for sa in ["allowed", "denied"] {
        kubectl_ok(&["create", "serviceaccount", sa, "-n", &ns]);
    }
    kubectl_ok(&[
        "apply",
        "-n",
        &ns,
        "-f",
        "examples/rbac/runtime-caller.yaml",
    ]);
    kubectl_ok(&[
        "create",
        "rolebinding",
        "allowed-caller",
        "-n",
        &ns,
        "--role=idplane-runtime-caller",
        &format!("--serviceaccount={ns}:allowed"),
    ]);
    let op = start_operator(&format!("{ns},{other}"), "authz", tmp.path());
    wait_for("ready", T, || {
        (http_get(&op.url("/readyz"), None).0 == 200).then_some(())
    });
    let allowed = sa_token(&ns, "allowed");
    let denied = sa_token(&ns, "denied");
    let url = op.url(&format!("/v1/orgs/{ns}/config"));
    let (code, body) = http_get(&url, None);
    assert_eq!(code, 401, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["code"], "unauthorized");
    assert_eq!(http_get(&url, Some("not-a-real-token")).0, 401);
    let (code, body) = http_get(&url, Some(&denied));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("forbidden") && body.contains(&ns), "{body}");
    let (code, body) = http_get(&url, Some(&allowed));
    assert_eq!(code, 200, "{body}");
    // The Role binds the caller to its own org only.
    let (code, _) = http_get(&op.url(&format!("/v1/orgs/{other}/config")), Some(&allowed));
    assert_eq!(code, 403);
    // Errors are JSON with a code; unknown endpoints too.
    let (code, body) = http_get(&op.url("/v1/nothing"), Some(&allowed));
    assert_eq!(code, 404);
    assert!(body.contains("\"code\""));
    let (code, body) = http_get(&op.url("/openapi.json"), None);
    assert_eq!(code, 200);
    assert!(body.contains("/v1/orgs/{org}/config"));
    let metrics = http_get(&op.url("/metrics"), None).1;
    for name in [
        "idplane_reconciles_total",
        "idplane_reconcile_duration_seconds",
        "idplane_index_objects",
        "idplane_status_writes_total",
        "idplane_http_requests_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

/// A real token for a ServiceAccount, from the TokenRequest API.
fn sa_token(ns: &str, sa: &str) -> String {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}});
    let out = kubectl_stdin(
        &[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
            "-f",
            "-",
        ],
        &body.to_string(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["status"]["token"].as_str().unwrap().to_string()
}
