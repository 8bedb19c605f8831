//! Enrollment end to end: policies applied with kubectl to the real
//! apiserver, evaluated over the authenticated runtime API; a policy hidden
//! by a higher-priority one is marked Shadowed; the summary is in status.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

#[test]
fn policies_applied_with_kubectl_are_evaluated_over_the_api() {
    install_crds();
    let ns = temp_namespace("enroll");
    let tmp = tempfile::tempdir().unwrap();
    apply_file(&ns, "examples/org/30-enrollment-policies.yaml");
    apply_yaml(
        &ns,
        "apiVersion: idplane.dev/v1alpha1\nkind: EnrollmentPolicy\nmetadata:\n  name: hidden\nspec:\n  priority: 50\n  groups: [admins]\n  authenticators: [{key: duo, enroll: REQUIRED}]\n",
    );
    let op = Idplane::operator(
        &ns,
        &tmp.path().join("db"),
        &tmp.path().join("op.log"),
        &["--lease-seconds", "6"],
        &[],
    );
    // Status: summary and the Shadowed condition.
    let hidden = wait_for("hidden to be Shadowed", Duration::from_secs(60), || {
        let o = get_json(&ns, "enrollmentpolicy/hidden")?;
        (condition(&o, "Shadowed")?["status"] == "True").then_some(o)
    });
    let msg = condition(&hidden, "Shadowed").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("admins"), "{msg}");
    let admins = wait_for("admins status", Duration::from_secs(30), || {
        let o = get_json(&ns, "enrollmentpolicy/admins")?;
        o["status"]["summary"].is_string().then_some(o)
    });
    assert_eq!(
        admins["status"]["summary"],
        "required: email, webauthn; optional: okta verify; not allowed: phone"
    );
    assert_eq!(condition(&admins, "Shadowed").unwrap()["status"], "False");
    assert_eq!(
        condition(&admins, "DefaultPolicy").unwrap()["reason"],
        "DefaultPolicyActive"
    );
    let out = kubectl_ok(&["get", "enrollmentpolicies", "-n", &ns]);
    assert!(
        out.contains("required: email, webauthn"),
        "SUMMARY column:\n{out}"
    );

    // Evaluate over the authenticated API.
    let url = op.url(&format!("/v1/orgs/{ns}/enrollment/evaluate"));
    let request =
        json!({"user": {"id": "u1", "groups": ["staff", "admins"], "enrolled": ["okta_email"]}});
    assert_eq!(http("POST", &url, None, Some(&request)).0, 401);
    let token = "idplane-admin-token";
    let (code, body) = http("POST", &url, Some(token), Some(&request));
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["policy"], "admins");
    assert_eq!(answer["rule"], "everywhere");
    let list = |field: &str| -> Vec<String> {
        answer[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert!(list("required").contains(&"webauthn".to_string()));
    assert!(list("enrollNow").contains(&"webauthn".to_string()));
    assert!(list("notAllowed").contains(&"phone_number".to_string()));
    // A user in no group gets the default policy.
    let (_, body) = http(
        "POST",
        &url,
        Some(token),
        Some(&json!({"user": {"id": "u2"}})),
    );
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["policy"], "everyone");
    // Bad input: a clear 400 naming the field.
    let (code, body) = http(
        "POST",
        &url,
        Some(token),
        Some(&json!({"user": {"id": "u3", "enrolled": ["magic"]}})),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("user.enrolled[0]") && body.contains("magic"),
        "{body}"
    );

    // A namespace idplane does not watch is an org it knows nothing of.
    let elsewhere = op.url("/v1/orgs/not-watched-by-idplane/enrollment/evaluate");
    let (code, body) = http(
        "POST",
        &elsewhere,
        Some(token),
        Some(&json!({"user": {"id": "u2"}})),
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("\"code\":\"org_not_found\""), "{body}");

    // Without its default policy the org's policies warn in their status,
    // and a user no policy lists is refused, not let in with a password.
    kubectl_ok(&["delete", "enrollmentpolicy", "everyone", "-n", &ns]);
    let warned = wait_for(
        "admins DefaultPolicy=False",
        Duration::from_secs(60),
        || {
            let o = get_json(&ns, "enrollmentpolicy/admins")?;
            (condition(&o, "DefaultPolicy")?["status"] == "False").then_some(o)
        },
    );
    let default = condition(&warned, "DefaultPolicy").unwrap();
    assert_eq!(default["reason"], "NoDefaultPolicy");
    assert!(
        default["message"].as_str().unwrap().contains(&format!(
            "org {ns} has EnrollmentPolicies but no default one"
        )),
        "{default}"
    );
    assert_eq!(condition(&warned, "Ready").unwrap()["status"], "True");
    let (code, body) = wait_for(
        "409 for a user no policy lists",
        Duration::from_secs(30),
        || {
            let answer = http(
                "POST",
                &url,
                Some(token),
                Some(&json!({"user": {"id": "u2"}})),
            );
            (answer.0 != 200).then_some(answer)
        },
    );
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("\"code\":\"no_default_policy\""), "{body}");
}
