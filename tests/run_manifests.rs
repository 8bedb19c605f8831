//! `idplane run --manifests DIR`: the same validator, index and API without a
//! cluster; reloads on file changes, keeps the last valid version of an
//! object, persists status in SQLite, and checks tokens from a file.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const ACME: &str = "acme-token-0123456789abcdef";
const OTHER: &str = "other-token-0123456789abcdef";
/// May call every org: what a caller with a typo in the org holds.
const ALL: &str = "all-orgs-token-0123456789abcdef";

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    copy_example_org(&manifests, &[]);
    std::fs::write(
        tmp.path().join("tokens.yaml"),
        format!("tokens:\n  - {{name: acme-idp, token: {ACME}, orgs: [acme]}}\n  - {{name: other-idp, token: {OTHER}, orgs: [other]}}\n  - {{name: all-idp, token: {ALL}, orgs: [\"*\"]}}\n"),
    )
    .unwrap();
    (tmp, manifests)
}

/// `idplane run` on the org's manifests (namespace acme only); waits
/// until ready.
fn start(tmp: &std::path::Path, manifests: &std::path::Path, log: &str) -> Idplane {
    Idplane::run_manifests(
        manifests,
        &tmp.join("state/idplane.db"),
        &tmp.join("tokens.yaml"),
        &["-n", "acme"],
        &[],
        &tmp.join(log),
    )
}

/// Every `/v1/orgs/{org}/…` operation of the OpenAPI document, as
/// (METHOD, URL) for org acme and objects that exist in the examples.
fn org_routes(run: &Idplane, document: &Value) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        let Some(rest) = path.strip_prefix("/v1/orgs/{org}") else {
            continue;
        };
        let url = run.url(&format!(
            "/v1/orgs/acme{}",
            rest.replace("{id}", "em-1").replace("{name}", "primary")
        ));
        for method in item.as_object().unwrap().keys() {
            routes.push((method.to_uppercase(), url.clone()));
        }
    }
    routes
}

/// An object of org acme as its status endpoint shows it.
fn object(run: &Idplane, kind: &str, name: &str) -> Option<Value> {
    status_object(run, ACME, "acme", kind, name)
}

/// A condition the object has.
fn cond(obj: &Value, type_: &str) -> Value {
    condition(obj, type_).unwrap()
}

#[test]
fn reloads_keeps_last_good_and_persists_status() {
    let (tmp, manifests) = setup();
    let run = start(tmp.path(), &manifests, "run1.log");
    let primary = wait_for("primary Ready", Duration::from_secs(30), || {
        object(&run, "TelephonyHook", "primary").filter(|o| cond(o, "Ready")["status"] == "True")
    });
    assert_eq!(primary["generation"], 1);
    assert_eq!(
        cond(&primary, "Active")["reason"],
        "InsecureHttp",
        "status says the hook runs over http://"
    );

    // Tokens from the file, bound to orgs.
    assert_eq!(http_get(&run.url("/v1/orgs/acme/config"), None).0, 401);
    assert_eq!(
        http_get(
            &run.url("/v1/orgs/acme/config"),
            Some("wrong-token-xxxxxxxxxxxx")
        )
        .0,
        401
    );
    assert_eq!(
        http_get(&run.url("/v1/orgs/acme/config"), Some(OTHER)).0,
        403
    );

    // A file change is picked up: a new generation, the new timeout in use.
    let path = manifests.join("20-telephony-hooks.yaml");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, original.replacen("timeout: 3s", "timeout: 4s", 1)).unwrap();
    wait_for("generation 2", Duration::from_secs(20), || {
        object(&run, "TelephonyHook", "primary")
            .filter(|o| o["generation"] == 2 && o["status"]["observedGeneration"] == 2)
    });
    let config = || -> Value {
        let (_, body) = http_get(&run.url("/v1/orgs/acme/config"), Some(ACME));
        serde_json::from_str(&body).unwrap()
    };
    assert_eq!(
        config()["config"]["hooks"]["primary"]["timeoutMillis"],
        4000
    );

    // An invalid change: reported with the field, the last valid version stays.
    std::fs::write(&path, original.replacen("timeout: 3s", "timeout: 11s", 1)).unwrap();
    let bad = wait_for("Accepted=False", Duration::from_secs(20), || {
        object(&run, "TelephonyHook", "primary")
            .filter(|o| cond(o, "Accepted")["status"] == "False")
    });
    assert!(
        cond(&bad, "Accepted")["message"]
            .as_str()
            .unwrap()
            .contains("spec.timeout")
    );
    // Ready is False (the current generation is not in effect, as kubectl
    // wait must see), Stalled says why, and the last valid version serves.
    assert_eq!(
        (
            cond(&bad, "Ready")["status"].as_str(),
            cond(&bad, "Ready")["reason"].as_str()
        ),
        (Some("False"), Some("LastValidVersionInUse")),
    );
    assert_eq!(cond(&bad, "Stalled")["reason"], "Invalid");
    assert_eq!(
        config()["config"]["hooks"]["primary"]["timeoutMillis"],
        4000
    );
    let log = wait_for(
        "the problem printed with file and line",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(tmp.path().join("run1.log")).unwrap();
            log.contains("20-telephony-hooks.yaml:").then_some(log)
        },
    );
    assert!(
        log.contains("spec.timeout: timeout must be more than 0s and at most 10s"),
        "{log}"
    );
    // Secrets never appear in the config or the log.
    let body = config().to_string();
    assert!(!body.contains("dev-token-change-me") && !log.contains("dev-token-change-me"));

    // Status survives a restart: transition times are kept.
    std::fs::write(&path, &original).unwrap();
    let valid = wait_for("valid again", Duration::from_secs(20), || {
        object(&run, "TelephonyHook", "primary").filter(|o| cond(o, "Ready")["status"] == "True")
    });
    let first_transition = cond(&valid, "Ready")["lastTransitionTime"].clone();
    drop(run);
    let run = start(tmp.path(), &manifests, "run2.log");
    let again = wait_for("primary after restart", Duration::from_secs(30), || {
        object(&run, "TelephonyHook", "primary")
    });
    assert_eq!(
        cond(&again, "Ready")["lastTransitionTime"],
        first_transition
    );
}

#[test]
fn api_errors_name_what_is_wrong() {
    let (tmp, manifests) = setup();
    let run = start(tmp.path(), &manifests, "errors.log");
    let (code, body) = http_get(&run.url("/v1/orgs/acme/events?limit=0"), Some(ACME));
    assert_eq!(code, 400, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["code"], "invalid_limit");
    assert_eq!(e["message"], "limit must be between 1 and 1000");
    let (code, body) = http_get(&run.url("/v1/orgs/acme/events?after=abc"), Some(ACME));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"code\":\"invalid_cursor\""), "{body}");
    let (code, body) = http_get(&run.url("/v1/orgs/acme/events?outcome=failure"), Some(ACME));
    assert_eq!(code, 400, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["code"], "invalid_outcome");
    assert_eq!(
        e["message"],
        "outcome must be an outcome in capitals, such as SUCCESS, FAILURE or WARNING"
    );
    // A body that is not JSON, and one that is JSON of the wrong shape.
    let url = run.url("/v1/orgs/acme/enrollment/evaluate");
    let (code, body) = http(
        "POST",
        &url,
        Some(ACME),
        Some(&serde_json::json!({"user": {"id": "u", "colour": 1}})),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("\"code\":\"invalid_request\"") && body.contains("colour"),
        "{body}"
    );
    let (code, body) = http_get(&run.url("/v1/orgs/acme/nothing-here"), Some(ACME));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("\"code\":\"not_found\""), "{body}");
    // Each request is timed by route: the three event listings above.
    let events = r#"{method="GET",route="/v1/orgs/{org}/events"}"#;
    assert_eq!(
        run.metric(&format!(
            "idplane_http_request_duration_seconds_count{events} "
        )),
        3.0
    );
    assert!(
        run.metric(&format!(
            "idplane_http_request_duration_seconds_sum{events} "
        )) > 0.0
    );
}

/// Every `/v1/orgs/{org}/…` route of the OpenAPI document refuses a caller
/// without a token (401) or with another org's token (403), and does so
/// before it looks at the request: a body of the wrong shape still gets
/// 401/403, not a validation error.
#[test]
fn every_org_route_is_authorized_before_the_request_is_read() {
    let (tmp, manifests) = setup();
    let run = start(tmp.path(), &manifests, "routes.log");
    let (code, body) = http_get(&run.url("/openapi.json"), None);
    assert_eq!(code, 200, "{body}");
    let document: Value = serde_json::from_str(&body).unwrap();
    let wrong_shape = serde_json::json!({"unexpected": [1, 2, 3]});
    let mut checked = 0;
    for (method, url) in org_routes(&run, &document) {
        let body = (method != "GET").then_some(&wrong_shape);
        let (code, text) = http(&method, &url, None, body);
        assert_eq!(code, 401, "{method} {url} without a token: {text}");
        assert!(
            text.contains("\"code\":\"unauthorized\""),
            "{method} {url}: {text}"
        );
        let (code, text) = http(&method, &url, Some(OTHER), body);
        assert_eq!(code, 403, "{method} {url} with another org's token: {text}");
        checked += 1;
    }
    // config, status, events, enrollment, OTP send/verify/preview, emails,
    // an email, the test email.
    assert!(
        checked >= 10,
        "only {checked} routes under /v1/orgs/{{org}}"
    );
}

/// Two more orgs next to acme: `nodefault`, whose only policy lists
/// `admins` and which has no default policy, and `hookonly`, known by a
/// telephony hook alone.
const OTHER_ORGS: &str = r#"
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: admins, namespace: nodefault}
spec:
  priority: 1
  groups: [admins]
  authenticators:
    - {key: okta_email, enroll: REQUIRED}
    - {key: webauthn, enroll: REQUIRED}
  rules:
    - {name: everywhere, enroll: LOGIN}
---
apiVersion: v1
kind: Secret
metadata: {name: hook, namespace: hookonly}
stringData: {token: hook-token-0123456789}
---
apiVersion: idplane.dev/v1alpha1
kind: TelephonyHook
metadata: {name: sms, namespace: hookonly}
spec:
  active: false
  url: https://sms.example.com/okta/telephony
  auth: {header: Authorization, secretRef: {name: hook, key: token}}
"#;

fn post(run: &Idplane, org: &str, token: &str, body: &Value) -> (u16, Value) {
    let url = run.url(&format!("/v1/orgs/{org}/enrollment/evaluate"));
    http_json("POST", &url, Some(token), Some(body))
}

/// Issue 15: enrollment fails closed. An org idplane knows nothing of is
/// 404 `org_not_found` (whatever the body); a user no policy covers, in an
/// org without a default policy, is 409 `no_default_policy` naming the
/// missing default; never 200 with the password alone. The status of the
/// org's policies warns.
#[test]
fn enrollment_fails_closed_for_unknown_orgs_and_uncovered_users() {
    let (tmp, manifests) = setup();
    std::fs::write(manifests.join("50-other-orgs.yaml"), OTHER_ORGS).unwrap();
    let run = start(tmp.path(), &manifests, "closed.log");
    let request =
        serde_json::json!({"user": {"id": "u1", "groups": ["admins"]}, "firstSignIn": true});

    // The issue's own call, and a body of the wrong shape: the org first.
    for body in [&request, &serde_json::json!({"unexpected": true})] {
        let (code, answer) = post(&run, "no-such-org", ALL, body);
        assert_eq!(code, 404, "{answer}");
        assert_eq!(answer["code"], "org_not_found", "{answer}");
        assert_eq!(
            answer["message"],
            "org no-such-org: idplane knows no object in this org (namespace); check the org in the path"
        );
    }

    // A configured org answers as before.
    let (code, answer) = post(&run, "acme", ALL, &request);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["policy"], "admins");

    // Policies but no default: a covered user is answered, an uncovered
    // one (another group, no group, federated) is refused.
    let (code, answer) = post(&run, "nodefault", ALL, &request);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["required"],
        serde_json::json!(["okta_password", "okta_email", "webauthn"])
    );
    let uncovered = [
        serde_json::json!({"user": {"id": "u2", "groups": ["sales"]}, "firstSignIn": true}),
        serde_json::json!({"user": {"id": "u3"}}),
        serde_json::json!({"user": {"id": "u4", "groups": ["sales"], "federated": true}}),
    ];
    let refusal = "org nodefault: user.groups: no active EnrollmentPolicy lists any of the user's groups and the org has no default EnrollmentPolicy (spec.default: true); refused rather than answered with the password alone";
    for body in &uncovered {
        let (code, answer) = post(&run, "nodefault", ALL, body);
        assert_eq!(code, 409, "{body}: {answer}");
        assert_eq!(answer["code"], "no_default_policy", "{answer}");
        assert_eq!(answer["message"], refusal);
    }
    // An org known by a telephony hook alone has no policy for anyone.
    let (code, answer) = post(&run, "hookonly", ALL, &request);
    assert_eq!(code, 409, "{answer}");
    assert_eq!(answer["code"], "no_default_policy", "{answer}");

    // Status: every policy of nodefault says the org has no default policy
    // (Ready stays True); acme's policies name their default.
    let (code, body) = http_get(&run.url("/v1/orgs/nodefault/status"), Some(ALL));
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    let admins = &status["objects"][0];
    assert_eq!(admins["name"], "admins", "{status}");
    assert_eq!(cond(admins, "Ready")["status"], "True");
    let default = cond(admins, "DefaultPolicy");
    assert_eq!(default["status"], "False", "{default}");
    assert_eq!(default["reason"], "NoDefaultPolicy");
    assert_eq!(
        default["message"],
        "org nodefault has EnrollmentPolicies but no default one (spec.default: true): a user in none of the groups its active policies list gets the error no_default_policy at sign-in, not an answer; add a default policy"
    );
    for name in ["admins", "contractors", "everyone"] {
        let policy = object(&run, "EnrollmentPolicy", name).unwrap();
        let default = cond(&policy, "DefaultPolicy");
        assert_eq!(default["status"], "True", "{name}: {default}");
        assert_eq!(default["reason"], "DefaultPolicyActive");
        assert_eq!(
            default["message"],
            "users in none of the groups the org's policies list get the default policy everyone"
        );
    }
    // The warning is printed at load, with file and line; the policy is used.
    let log = std::fs::read_to_string(tmp.path().join("closed.log")).unwrap();
    assert!(
        log.contains("50-other-orgs.yaml:") && log.contains(": warning: EnrollmentPolicy nodefault/admins: spec.default: org nodefault has EnrollmentPolicies but no default one"),
        "{log}"
    );
    // A warning is not a problem: every object is accepted.
    assert!(
        log.contains("objects and Secrets accepted, 0 problems, "),
        "{log}"
    );
}

/// Issue 15: before the first full sync (`/readyz` 503: here a manifest
/// that cannot be parsed, so nothing is loaded), every `/v1/orgs/{org}/…`
/// route of the OpenAPI document answers 503 `not_ready`, with a token or
/// without (the check comes before authorization); once the file is fixed
/// the same calls are answered.
#[test]
fn every_org_route_is_not_ready_before_the_first_full_sync() {
    let (tmp, manifests) = setup();
    let broken = manifests.join("60-broken.yaml");
    std::fs::write(&broken, "kind: [unclosed\n").unwrap();
    let (database, tokens) = (
        tmp.path().join("state/idplane.db"),
        tmp.path().join("tokens.yaml"),
    );
    let mut args = run_args(&manifests, &database, &tokens);
    args.extend(["-n", "acme"]);
    let run = Idplane::start(&args, &[], &tmp.path().join("not-ready.log"));
    // Give the (failed) first load time to happen: still not ready.
    wait_for("the load to fail", Duration::from_secs(20), || {
        let log = std::fs::read_to_string(tmp.path().join("not-ready.log")).unwrap();
        log.contains("60-broken.yaml").then_some(())
    });
    let (code, body) = http_get(&run.url("/readyz"), None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"code\":\"not_ready\""), "{body}");

    let (code, body) = http_get(&run.url("/openapi.json"), None);
    assert_eq!(code, 200, "{body}");
    let document: Value = serde_json::from_str(&body).unwrap();
    let evaluate =
        serde_json::json!({"user": {"id": "u1", "groups": ["admins"]}, "firstSignIn": true});
    let urls = org_routes(&run, &document);
    assert!(
        urls.len() >= 10,
        "only {} routes under /v1/orgs/{{org}}",
        urls.len()
    );
    for (method, url) in &urls {
        let body = (method != "GET").then_some(&evaluate);
        for token in [Some(ACME), None] {
            let (code, text) = http(method, url, token, body);
            assert_eq!(
                code,
                503,
                "{method} {url} (token: {}): {text}",
                token.is_some()
            );
            let e: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(e["code"], "not_ready", "{method} {url}: {text}");
            assert_eq!(e["message"], "the first full sync is not done yet");
        }
    }
    // Unknown orgs too: not ready says nothing about which orgs exist.
    let (code, text) = http(
        "POST",
        &run.url("/v1/orgs/no-such-org/enrollment/evaluate"),
        Some(ALL),
        Some(&evaluate),
    );
    assert_eq!(code, 503, "{text}");

    // Fixed: the first full sync happens and the same call is answered.
    std::fs::remove_file(&broken).unwrap();
    wait_every(
        "ready",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || (http_get(&run.url("/readyz"), None).0 == 200).then_some(()),
    );
    let (code, answer) = post(&run, "acme", ACME, &evaluate);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["policy"], "admins");
}
