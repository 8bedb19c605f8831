//! The OpenAPI document against the running binary: requests with bad input
//! get the answers it documents, and schemathesis (from the test virtualenv,
//! scripts/test-tools.sh) fuzzes every operation with every check and must
//! find nothing.
//!
//! The server is `idplane run` on the example org's manifests (namespace
//! acme), with its active hook pointed at a hook on loopback that delivers
//! (and fails for numbers ending in 9, so that the fallback, a closed port,
//! gives the documented 502). The org's SMTP server is a closed port too:
//! mail is accepted (202) and its delivery retried in the background, and a
//! test email is the documented 502.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// One token for every org: the fuzzer's orgs are mostly acme, and
/// sometimes an org idplane knows nothing of.
const TOKEN: &str = "openapi-fuzz-token-0123456789";

/// The fuzzer's time budget in seconds: the phases repeat until it is
/// spent. With the server's start, the run stays under 2 minutes.
const FUZZ_SECONDS: u64 = 75;

/// Test cases per operation and phase.
const EXAMPLES: u32 = 40;

/// A hook on loopback: Okta's SUCCESSFUL answer, or 500 for a number
/// ending in 9. Runs on its own runtime for the rest of the test process.
fn hook_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().route("/telephony", axum::routing::post(hook));
                let _ = axum::serve(listener, app).await;
            });
        });
        format!("http://{addr}/telephony")
    })
}

async fn hook(body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let phone = request
        .pointer("/data/messageProfile/phoneNumber")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if phone.ends_with('9') {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let answer = json!({"commands": [{"type": "com.okta.telephony.action", "value": [{
        "status": "SUCCESSFUL", "provider": "loopback", "transactionId": "lb-1",
        "transactionMetadata": {"segments": 1}}]}]});
    axum::Json(answer).into_response()
}

/// The example org's manifests and a token file, in a fresh directory.
/// The active hook is [`hook_url`]; its fallback and the org's SMTP server
/// are a closed port on loopback, so that failures come at once and the
/// run needs no DNS.
fn workspace() -> tempfile::TempDir {
    let (tmp, manifests) = workspace_with_token("fuzz", TOKEN);
    let closed = "http://127.0.0.1:1/telephony\n  allowInsecureHttp: true";
    let changes = [
        (
            "20-telephony-hooks.yaml",
            "http://127.0.0.1:8089/telephony",
            hook_url(),
        ),
        (
            "20-telephony-hooks.yaml",
            "https://sms-backup.example.com/okta/telephony",
            closed,
        ),
        ("40-email.yaml", "host: smtp.example.com", "host: 127.0.0.1"),
        ("40-email.yaml", "port: 587", "port: 1"),
    ];
    copy_example_org(&manifests, &changes);
    tmp
}

/// `idplane run` on the workspace with `extra` flags, ready, the acme
/// hooks configured.
fn start(tmp: &Path, extra: &[&str]) -> Idplane {
    let mut args = vec![
        "-n",
        "acme",
        // The test hook is on loopback, which the egress rule refuses
        // unless allowed.
        ALLOW_LOOPBACK[0],
        ALLOW_LOOPBACK[1],
        // A test email to the example's SMTP server fails fast.
        "--smtp-timeout",
        "2s",
    ];
    args.extend_from_slice(extra);
    let run = Idplane::run_manifests(
        &tmp.join("manifests"),
        &tmp.join("state/idplane.db"),
        &tmp.join("tokens.yaml"),
        &args,
        &[("RUST_LOG", "error")],
        &tmp.join("idplane.log"),
    );
    wait_for("acme's active hook", Duration::from_secs(20), || {
        let (code, body) = http_get(&run.url("/v1/orgs/acme/config"), Some(TOKEN));
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["config"]["activeHook"] == "primary").then_some(())
    });
    run
}

fn post(run: &Idplane, path: &str, body: &Value) -> (u16, Value) {
    http_json("POST", &run.url(path), Some(TOKEN), Some(body))
}

fn get(run: &Idplane, path: &str) -> (u16, Value) {
    http_json("GET", &run.url(path), Some(TOKEN), None)
}

/// A raw request: (status, content type, body).
fn raw(
    run: &Idplane,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, String, Value) {
    block_on(async {
        let mut req = reqwest::Client::new()
            .request(method.parse().unwrap(), run.url(path))
            .bearer_auth(TOKEN)
            .body(body.to_string());
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = r.text().await.unwrap();
        (
            status,
            ct,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
}

/// The documented answer `status` of `method path`: its error codes (for
/// an error) and whether it is documented at all.
fn documented(doc: &Value, method: &str, path: &str, status: u16) -> Option<Vec<String>> {
    let answer = &doc["paths"][path][method]["responses"][status.to_string()];
    if answer.is_null() {
        return None;
    }
    let codes = answer["content"]["application/json"]["schema"]["properties"]["code"]["enum"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Some(codes)
}

/// Asserts the answer is an error documented for the operation, with its code.
fn assert_documented(doc: &Value, method: &str, path: &str, answer: (u16, Value), code: &str) {
    let (status, body) = answer;
    let codes = documented(doc, method, path, status)
        .unwrap_or_else(|| panic!("{method} {path}: {status} is not documented: {body}"));
    assert_eq!(body["code"], code, "{method} {path}: {status} {body}");
    assert!(body["message"].is_string(), "{body}");
    assert!(
        codes.iter().any(|c| c == code),
        "{method} {path}: {status} {code} is not among the documented codes {codes:?}"
    );
}

/// The operation's path of a request's path: its org, hook name and email
/// id as parameters, its query left out.
fn operation_path(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let mut out = Vec::new();
    let mut previous = "";
    for segment in path.split('/') {
        out.push(match previous {
            "orgs" => "{org}",
            "telephony-hooks" => "{name}",
            "emails" => "{id}",
            _ => segment,
        });
        previous = segment;
    }
    out.join("/")
}

/// Sends a request that must be refused with `code`, checks its status and
/// code against its operation in `doc`, and returns the answer's body.
fn refused(
    run: &Idplane,
    doc: &Value,
    method: &str,
    path: &str,
    body: Option<&Value>,
    code: &str,
) -> Value {
    let answer = http_json(&method.to_uppercase(), &run.url(path), Some(TOKEN), body);
    let refusal = answer.1.clone();
    assert_documented(doc, method, &operation_path(path), answer, code);
    refusal
}

/// Bad input to each operation gets the documented status and code.
#[test]
fn bad_input_gets_the_documented_answers() {
    let tmp = workspace();
    let run = start(tmp.path(), &[]);
    let doc: Value = serde_json::from_str(&http_get(&run.url("/openapi.json"), None).1).unwrap();
    let org = "/v1/orgs/{org}";

    // Unknown fields are refused in nested objects too.
    let send = json!({"phoneNumber": "+14155550123", "channel": "sms", "requestType": "verification",
        "user": {"id": "u1", "login": "ada@example.com", "nickname": "ada"}});
    let answer = refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/otp/send",
        Some(&send),
        "invalid_request",
    );
    assert!(
        answer["message"].as_str().unwrap().contains("nickname"),
        "{}",
        answer
    );
    let mut send = json!({"phoneNumber": "+14155550123", "channel": "sms", "requestType": "verification",
        "user": {"id": "u1", "login": "ada@example.com"}, "context": {"ip": "203.0.113.7", "colour": 1}});
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/otp/send",
        Some(&send),
        "invalid_request",
    );
    send["context"] = json!({"ip": "203.0.113.7"});
    send["phoneNumber"] = json!("0014155550123");
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/otp/send",
        Some(&send),
        "invalid_phone_number",
    );
    // An object written as an array of its fields (which serde's derive
    // would read in order) is refused, not taken: no passcode is sent.
    let as_array = json!({"phoneNumber": "+14155550123", "channel": "sms", "requestType": "verification",
        "user": ["u1", "ada@example.com"], "context": []});
    let answer = refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/otp/send",
        Some(&as_array),
        "invalid_request",
    );
    assert!(
        answer["message"].as_str().unwrap().contains("an object"),
        "{}",
        answer
    );
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/enrollment/evaluate",
        Some(&json!({"user": ["u", ["admins"]], "network": ["10.20.1.1"]})),
        "invalid_request",
    );
    // A code's limit is in characters, as the message says, not bytes.
    // (12 characters, 36 bytes)
    let verify =
        json!({"transactionId": "ce7d7b58f216807493a17ae68e4a3667", "code": "\u{2026}".repeat(12)});
    let answer = post(&run, "/v1/orgs/acme/otp/verify", &verify);
    assert_ne!(
        answer.1["message"].as_str().unwrap_or_default(),
        "code must be 1 to 32 characters",
        "{}",
        answer.1
    );
    let evaluate = json!({"user": {"id": "u1", "enrolled": [{"key": "phone_number", "methods": ["sms"], "verified": true}]}});
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/enrollment/evaluate",
        Some(&evaluate),
        "invalid_request",
    );
    let preview = json!({"phoneNumber": "+14155550123", "send": false, "user": {"id": "u", "login": "l", "age": 3}});
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/telephony-hooks/primary/preview",
        Some(&preview),
        "invalid_request",
    );

    // Delivered, then verified: the documented 200s.
    send["phoneNumber"] = json!("+14155550123");
    let (code, receipt) = post(&run, "/v1/orgs/acme/otp/send", &send);
    assert_eq!(code, 200, "{receipt}");
    assert!(documented(&doc, "post", &format!("{org}/otp/send"), 200).is_some());
    let tx = receipt["transactionId"].as_str().unwrap();
    assert_eq!(tx.len(), 32, "{receipt}");
    let (code, verdict) = post(
        &run,
        "/v1/orgs/acme/otp/verify",
        &json!({"transactionId": tx, "code": "x"}),
    );
    assert_eq!(
        (code, &verdict["result"]),
        (200, &json!("invalid")),
        "{verdict}"
    );
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/otp/verify",
        Some(&json!({"transactionId": "", "code": "1"})),
        "invalid_request",
    );
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/otp/verify",
        Some(&json!({"transactionId": "f".repeat(32), "code": "1"})),
        "unknown_transaction",
    );
    // Every hook failed: 502 with each attempt.
    send["phoneNumber"] = json!("+14155550129");
    let (code, failed) = post(&run, "/v1/orgs/acme/otp/send", &send);
    assert_eq!(
        failed["attempts"].as_array().map(Vec::len),
        Some(2),
        "{failed}"
    );
    assert_documented(
        &doc,
        "post",
        &format!("{org}/otp/send"),
        (code, failed),
        "delivery_failed",
    );
    // The abuse guard: five sends per number per window, then 429 with Retry-After.
    send["phoneNumber"] = json!("+14155550177");
    for _ in 0..5 {
        assert_eq!(post(&run, "/v1/orgs/acme/otp/send", &send).0, 200);
    }
    let answer = refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/otp/send",
        Some(&send),
        "phone_rate_limited",
    );
    assert!(answer["retryAfterSeconds"].as_u64().is_some(), "{}", answer);

    // Email: 202, not 200; the same idempotency key gives the same id.
    let email =
        json!({"to": "ada@example.com", "subject": "Hello", "text": "Hi", "idempotencyKey": "k-1"});
    let (code, accepted) = post(&run, "/v1/orgs/acme/emails", &email);
    assert_eq!(code, 202, "{accepted}");
    assert!(documented(&doc, "post", &format!("{org}/emails"), 202).is_some());
    assert!(documented(&doc, "post", &format!("{org}/emails"), 200).is_none());
    let (code, again) = post(&run, "/v1/orgs/acme/emails", &email);
    assert_eq!(
        (code, &again["id"], &again["duplicate"]),
        (202, &accepted["id"], &json!(true))
    );
    let (code, shown) = get(
        &run,
        &format!("/v1/orgs/acme/emails/{}", accepted["id"].as_str().unwrap()),
    );
    assert_eq!(code, 200, "{shown}");
    refused(
        &run,
        &doc,
        "get",
        "/v1/orgs/acme/emails/em-nothing",
        None,
        "email_not_found",
    );
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/emails",
        Some(&json!({"to": [], "subject": "s", "text": "t"})),
        "missing_recipient",
    );
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/emails",
        Some(&json!({"to": "a@example.com", "subject": "a\nb", "text": "t"})),
        "invalid_subject",
    );
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/nowhere/emails",
        Some(&json!({"to": "a@example.com", "subject": "s", "text": "t"})),
        "no_email_provider",
    );
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/acme/email-provider/test",
        Some(&json!({"from": "a@example.com", "to": "b@example.com"})),
        "smtp_failed",
    );

    // Events: each query parameter is checked.
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=x", "invalid_request"),
        ("after=x", "invalid_cursor"),
        ("outcome=failure", "invalid_outcome"),
    ] {
        refused(
            &run,
            &doc,
            "get",
            &format!("/v1/orgs/acme/events?{query}"),
            None,
            code,
        );
    }
    // The store writer commits events a moment after the answer.
    let page = wait_for("two telephony.send events", Duration::from_secs(10), || {
        let (code, page) = get(
            &run,
            "/v1/orgs/acme/events?type=telephony.send&outcome=SUCCESS&limit=2",
        );
        (code == 200 && page["events"].as_array().map(Vec::len) == Some(2)).then_some(page)
    });
    let (code, next) = get(
        &run,
        &format!(
            "/v1/orgs/acme/events?type=telephony.send&after={}",
            page["nextCursor"].as_str().unwrap()
        ),
    );
    assert_eq!(code, 200, "{next}");
    assert!(
        next["events"][0]["id"].as_i64() > page["events"][1]["id"].as_i64(),
        "{next}"
    );

    // Enrollment: an org idplane knows nothing of.
    refused(
        &run,
        &doc,
        "post",
        "/v1/orgs/nowhere/enrollment/evaluate",
        Some(&json!({"user": {"id": "u"}})),
        "org_not_found",
    );

    // The server's own refusals are JSON too, and documented.
    let (code, ct, body) = raw(
        &run,
        "POST",
        "/v1/orgs/acme/emails",
        Some("text/plain"),
        "{}",
    );
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_documented(
        &doc,
        "post",
        &format!("{org}/emails"),
        (code, body),
        "unsupported_media_type",
    );
    let (code, ct, body) = raw(
        &run,
        "POST",
        "/v1/orgs/acme/otp/verify",
        Some("application/json"),
        "{\"transactionId\":",
    );
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_documented(
        &doc,
        "post",
        &format!("{org}/otp/verify"),
        (code, body),
        "invalid_json",
    );
    let (code, ct, body) = raw(&run, "DELETE", "/v1/orgs/acme/config", None, "");
    assert_eq!(
        (code, &body["code"]),
        (405, &json!("method_not_allowed")),
        "{ct} {body}"
    );
}

/// What schemathesis may and may not do. Every check is on. Orgs and
/// hook names are mostly the example's (else an org or hook idplane knows
/// nothing of). A 5xx is a failure except the upstream answers the
/// document gives: 502 when every hook failed (a number ending in 9) or
/// the SMTP server refused a test email, 503 for mail to an org without a
/// provider.
const CONFIG: &str = r#"
[auth.openapi.bearer]
bearer = "${IDPLANE_FUZZ_TOKEN}"

[dictionaries.orgs]
values = ["acme"]

[dictionaries.hooks]
values = ["primary", "backup"]

[parameters]
"path.org" = { dictionary = "orgs", probability = 0.8 }
"path.name" = { dictionary = "hooks", probability = 0.8 }

[[operations]]
include-operation-id = ["sendOtp", "testEmailProvider", "acceptEmail"]
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502", "503"]
"#;

/// schemathesis against the running binary, every check, bounded in
/// examples and time; fails with its report when it finds anything.
#[test]
fn schemathesis_finds_nothing() {
    let schemathesis = &tools().schemathesis;
    let tmp = workspace();
    // The abuse guard stays on: at most 300 passcodes in the run (then
    // org_rate_limited), 20 per number (the coverage phase repeats one
    // number; at the default 5 it would mostly meet phone_rate_limited).
    let run = start(
        tmp.path(),
        &["--otp-org-limit", "300", "--otp-phone-limit", "20"],
    );
    let config = tmp.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let examples = EXAMPLES.to_string();
    let seconds = FUZZ_SECONDS.to_string();
    let args = [
        "--config-file",
        config.to_str().unwrap(),
        "run",
        &run.url("/openapi.json"),
        "--checks",
        "all",
        "--max-examples",
        &examples,
        "--max-time",
        &seconds,
        // One worker: Python 3.11's parser is not safe in threads
        // ("AST constructor recursion depth mismatch" from hypothesis).
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--no-color",
    ];
    let started = Instant::now();
    let mut child = Killed(
        Command::new(schemathesis)
            .args(args)
            .env("IDPLANE_FUZZ_TOKEN", TOKEN)
            .current_dir(tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", schemathesis.display())),
    );
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    // The budget, and time to finish the cases under way and report.
    let status = wait_every(
        "schemathesis to finish",
        Duration::from_secs(FUZZ_SECONDS + 60),
        Duration::from_millis(200),
        || child.try_wait().unwrap(),
    );
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let report = reader.join().unwrap();
    eprintln!(
        "schemathesis ran {:.0} s ({} examples per operation and phase, {FUZZ_SECONDS} s budget)",
        started.elapsed().as_secs_f64(),
        EXAMPLES
    );
    if !status.success() {
        let log = std::fs::read_to_string(&run.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(50).collect();
        panic!(
            "schemathesis found problems ({status}); the report gives a curl command for each, and its seed (`{} {} --seed SEED` repeats the run against such a server):\n{report}\n{stderr}\nidplane log (errors, last 50 lines):\n{}",
            schemathesis.display(),
            args.join(" "),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    eprintln!(
        "{}",
        report
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
