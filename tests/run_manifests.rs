//! `idplane run --manifests DIR`: the same validator, index and API without a
//! cluster; reloads on file changes, keeps the last valid version of an
//! object, persists status in SQLite, and checks tokens from a file.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const ACME: &str = "acme-token-0123456789abcdef";
const OTHER: &str = "other-token-0123456789abcdef";

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    for f in [
        "10-secrets.yaml",
        "20-telephony-hooks.yaml",
        "30-enrollment-policies.yaml",
        "40-email.yaml",
    ] {
        std::fs::copy(root().join("examples/org").join(f), manifests.join(f)).unwrap();
    }
    std::fs::write(
        tmp.path().join("tokens.yaml"),
        format!("tokens:\n  - {{name: acme-idp, token: {ACME}, orgs: [acme]}}\n  - {{name: other-idp, token: {OTHER}, orgs: [other]}}\n"),
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

fn object(run: &Idplane, kind: &str, name: &str) -> Option<Value> {
    let (code, body) = http_get(&run.url("/v1/orgs/acme/status"), Some(ACME));
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["objects"]
        .as_array()?
        .iter()
        .find(|o| o["kind"] == kind && o["name"] == name)
        .cloned()
}

fn cond(obj: &Value, type_: &str) -> Value {
    obj["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap()
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
    let first_transition = cond(&primary, "Ready")["lastTransitionTime"].clone();

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
    assert_eq!(
        cond(&bad, "Ready")["status"],
        "True",
        "the last valid version serves"
    );
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
    wait_for("valid again", Duration::from_secs(20), || {
        object(&run, "TelephonyHook", "primary").filter(|o| cond(o, "Accepted")["status"] == "True")
    });
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
    for (path, item) in document["paths"].as_object().unwrap() {
        let Some(rest) = path.strip_prefix("/v1/orgs/{org}") else {
            continue;
        };
        let url = run.url(&format!(
            "/v1/orgs/acme{}",
            rest.replace("{id}", "em-1").replace("{name}", "primary")
        ));
        for method in item.as_object().unwrap().keys() {
            let body = (method != "get").then_some(&wrong_shape);
            let (code, text) = http(&method.to_uppercase(), &url, None, body);
            assert_eq!(code, 401, "{method} {url} without a token: {text}");
            assert!(
                text.contains("\"code\":\"unauthorized\""),
                "{method} {url}: {text}"
            );
            let (code, text) = http(&method.to_uppercase(), &url, Some(OTHER), body);
            assert_eq!(code, 403, "{method} {url} with another org's token: {text}");
            checked += 1;
        }
    }
    // config, status, events, enrollment, OTP send/verify/preview, emails,
    // an email, the test email.
    assert!(
        checked >= 10,
        "only {checked} routes under /v1/orgs/{{org}}"
    );
}
