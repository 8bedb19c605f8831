//! Sending OTPs through `idplane run` to real hook servers on loopback: the
//! request follows Okta's contract; each way a hook can answer (or not) is
//! judged as the issue says; a failure falls back; a total failure leaves no
//! valid passcode; every execution is an event and counted in the hook's
//! status and in Prometheus; the code appears nowhere but in the hook's
//! request.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::telephony::*;

/// One way a primary hook behaves, and what idplane must make of it.
struct Case {
    org: &'static str,
    behaviour: Option<Behaviour>,
    /// The primary's auth reads the wrong Secret key.
    wrong_secret: bool,
    /// `None`: delivered by the primary with this status.
    failure: Option<&'static str>,
    delivered_status: &'static str,
    /// Requests the primary receives per send.
    requests: usize,
}

fn case(org: &'static str, behaviour: Behaviour, failure: Option<&'static str>) -> Case {
    Case {
        org,
        behaviour: Some(behaviour),
        wrong_secret: false,
        failure,
        delivered_status: "SUCCESSFUL",
        requests: 1,
    }
}

#[test]
fn every_answer_is_judged_with_fallback_events_and_metrics() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new();
    let redirect_target = HookServer::start(&rt, successful("redirected"));
    let cases = vec![
        case("ok", successful("primary-sms"), None),
        Case {
            delivered_status: "PENDING",
            ..case("pending", Behaviour::Answer(200, action("PENDING", "primary-sms")), None)
        },
        case("failed", Behaviour::Answer(200, action("FAILED", "primary-sms")), Some("provider_failed")),
        case(
            "error-object",
            Behaviour::Answer(
                200,
                r#"{"error":{"errorSummary":"No route to carrier","errorCauses":[{"errorSummary":"blocked"}]}}"#.into(),
            ),
            Some("hook_error"),
        ),
        case("malformed", Behaviour::Answer(200, "{\"commands\": [".into()), Some("invalid_response")),
        case("http-500", Behaviour::Answer(500, action("SUCCESSFUL", "x")), Some("http_status")),
        Case {
            wrong_secret: true,
            ..case("wrong-secret", successful("primary-sms"), Some("http_status"))
        },
        case("redirect", Behaviour::Redirect(redirect_target.url()), Some("http_status")),
        Case {
            requests: 2,
            ..case("slow", Behaviour::Slow(Duration::from_millis(1500)), Some("timeout"))
        },
        Case {
            behaviour: None,
            requests: 0,
            ..case("refused", successful("unused"), Some("connection_error"))
        },
        case("huge", Behaviour::Huge { chunked: false }, Some("body_too_large")),
        case("huge-chunked", Behaviour::Huge { chunked: true }, Some("body_too_large")),
    ];

    // Each case is two orgs: `<case>-fb` (with a working fallback) and
    // `<case>-solo` (without one).
    let mut servers = Vec::new();
    let mut backups = Vec::new();
    for c in &cases {
        let (primary_url, server) = match &c.behaviour {
            Some(b) => {
                let s = HookServer::start(&rt, b.clone());
                (s.url(), Some(s))
            }
            None => (refused_url(), None),
        };
        let backup = HookServer::start(&rt, successful("backup-sms"));
        let key = if c.wrong_secret { "bad" } else { "good" };
        ws.write_org(
            &format!("{}-fb", c.org),
            &[
                HookSpec {
                    secret_key: key,
                    fallback: Some("backup"),
                    ..HookSpec::active("primary", primary_url.clone())
                },
                HookSpec::standby("backup", backup.url()),
            ],
        );
        ws.write_org(
            &format!("{}-solo", c.org),
            &[HookSpec {
                secret_key: key,
                ..HookSpec::active("primary", primary_url)
            }],
        );
        servers.push(server);
        backups.push(backup);
    }
    let run = ws.run("send.log", &["--telephony-status-interval", "250ms"]);

    let mut codes_seen = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let fb = format!("{}-fb", c.org);
        let solo = format!("{}-solo", c.org);
        wait_configured(&run, &fb);
        wait_configured(&run, &solo);
        let phone = format!("+1415555{:04}", 1000 + i);
        // Requests idplane sends to the primary: a second one only after a
        // timeout or a connection error.
        let sent: u64 = if matches!(c.failure, Some("timeout" | "connection_error")) {
            2
        } else {
            1
        };

        // With a fallback: always delivered, by the primary or the fallback.
        let before = servers[i].as_ref().map_or(0, HookServer::count);
        let (status, receipt) = send(&run, &fb, &phone);
        assert_eq!(status, 200, "{}: {receipt}", c.org);
        let primary_requests = servers[i].as_ref().map_or(0, HookServer::count) - before;
        assert_eq!(
            primary_requests, c.requests,
            "{}: requests to the primary",
            c.org
        );
        let tx = receipt["transactionId"].as_str().unwrap().to_string();
        assert_eq!(tx.len(), 32);
        assert!(receipt["expiresAt"].as_str().unwrap().ends_with('Z'));
        let delivered_by = match c.failure {
            None => {
                assert_eq!(receipt["via"], "primary", "{}", c.org);
                assert_eq!(receipt["status"], c.delivered_status);
                assert_eq!(receipt["provider"], "primary-sms");
                assert_eq!(receipt["providerTransactionId"], "primary-sms-tx-1");
                assert_eq!(backups[i].count(), 0, "{}: fallback not used", c.org);
                servers[i].as_ref().unwrap().seen().last().unwrap().clone()
            }
            Some(_) => {
                assert_eq!(receipt["via"], "fallback", "{}", c.org);
                assert_eq!(receipt["hook"], "backup");
                assert_eq!(receipt["provider"], "backup-sms");
                assert_eq!(backups[i].count(), 1, "{}: fallback used once", c.org);
                backups[i].seen().last().unwrap().clone()
            }
        };
        let code = delivered_by.code();
        assert_eq!(code.len(), 6);
        codes_seen.push(code.clone());
        if let Some(primary) = &servers[i]
            && c.requests > 0
        {
            // Primary and fallback got the same code.
            assert_eq!(primary.seen().last().unwrap().code(), code, "{}", c.org);
        }
        let expected = if c.failure.is_some() { 2 } else { 1 };
        let logged = wait_events(&run, &fb, "telephony.send", expected);
        match c.failure {
            None => {
                assert_eq!(logged.len(), 1, "{}: {logged:?}", c.org);
                assert_eq!(logged[0]["outcome"], "SUCCESS");
                assert_eq!(logged[0]["detail"]["via"], "primary");
                assert_eq!(logged[0]["detail"]["status"], c.delivered_status);
                wait_metrics(&run, &fb, "primary", 1, 0);
            }
            Some(reason) => {
                assert_eq!(logged.len(), 2, "{}: {logged:?}", c.org);
                let (first, second) = (&logged[0], &logged[1]);
                assert_eq!(first["outcome"], "FAILURE");
                assert_eq!(first["subject"], "TelephonyHook/primary");
                assert_eq!(first["detail"]["hook"], "primary");
                assert_eq!(first["detail"]["via"], "primary");
                assert_eq!(first["detail"]["reasonCode"], reason, "{}: {first}", c.org);
                assert_eq!(first["detail"]["requests"], sent);
                assert!(
                    first["detail"]["reason"]
                        .as_str()
                        .unwrap()
                        .starts_with(reason)
                );
                assert_eq!(second["outcome"], "SUCCESS");
                assert_eq!(second["detail"]["hook"], "backup");
                assert_eq!(second["detail"]["via"], "fallback");
                assert_eq!(second["detail"]["provider"], "backup-sms");
                let m = wait_metrics(&run, &fb, "primary", 1, 1);
                assert!(
                    m["lastFailure"]["reason"]
                        .as_str()
                        .unwrap()
                        .starts_with(reason)
                );
                wait_metrics(&run, &fb, "backup", 1, 0);
            }
        }
        for e in &logged {
            assert_eq!(
                e["detail"]["phone"],
                format!("+1******{}", &phone[8..]),
                "masked"
            );
            assert!(!e.to_string().contains(&code), "no code in events");
            assert!(!e.to_string().contains(&phone), "no phone in events");
        }
        // The delivered code verifies, once.
        assert_eq!(
            verify(&run, &fb, &tx, &code).1["result"],
            "verified",
            "{}",
            c.org
        );
        assert_eq!(verify(&run, &fb, &tx, &code).1["result"], "invalid");

        // Without a fallback: a failure is a 502 naming the attempt, and
        // no valid passcode is left.
        let (status, answer) = send(&run, &solo, &phone);
        let Some(reason) = c.failure else {
            assert_eq!(status, 200, "{}: {answer}", c.org);
            let code = servers[i].as_ref().unwrap().seen().last().unwrap().code();
            let tx = answer["transactionId"].as_str().unwrap();
            assert_eq!(verify(&run, &solo, tx, &code).1["result"], "verified");
            continue;
        };
        assert_eq!(status, 502, "{}: {answer}", c.org);
        assert_eq!(answer["code"], "delivery_failed");
        let attempts = answer["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0]["hook"], "primary");
        assert_eq!(attempts[0]["via"], "primary");
        assert_eq!(attempts[0]["reasonCode"], reason);
        assert_eq!(attempts[0]["requests"], sent);
        let tx = answer["transactionId"].as_str().unwrap();
        let solo_code = servers[i]
            .as_ref()
            .and_then(|s| s.seen().last().map(Seen::code));
        if let Some(code) = &solo_code {
            assert!(
                !answer.to_string().contains(code.as_str()),
                "no code in the 502"
            );
            let (status, body) = verify(&run, &solo, tx, code);
            assert_eq!(
                (status, body["code"].as_str()),
                (404, Some("unknown_transaction")),
                "{}",
                c.org
            );
        }
        let logged = wait_events(&run, &solo, "telephony.send", 1);
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0]["outcome"], "FAILURE");
        wait_metrics(&run, &solo, "primary", 1, 1);
    }

    // A redirect is never followed.
    assert_eq!(redirect_target.count(), 0);
    // Only the passcodes of the delivered sends were stored, and all of them
    // have been used: none is valid.
    assert_eq!(ws.valid_passcodes(), 0);

    // Prometheus: executions and durations by org, hook and outcome.
    let line = |l: &str| run.metric(l);
    assert_eq!(
        line(
            "idplane_telephony_hook_executions_total{org=\"failed-fb\",hook=\"primary\",outcome=\"failure\"}"
        ),
        1.0
    );
    assert_eq!(
        line(
            "idplane_telephony_hook_executions_total{org=\"failed-fb\",hook=\"backup\",outcome=\"success\"}"
        ),
        1.0
    );
    assert_eq!(
        line(
            "idplane_telephony_hook_duration_seconds_count{org=\"ok-fb\",hook=\"primary\",outcome=\"success\"}"
        ),
        1.0
    );
    assert_eq!(
        line("idplane_otp_sends_total{org=\"failed-solo\",result=\"failed\"}"),
        1.0
    );
    assert_eq!(
        line("idplane_otp_sends_total{org=\"ok-solo\",result=\"delivered\"}"),
        1.0
    );
    assert_eq!(
        line("idplane_otp_verifications_total{org=\"ok-fb\",result=\"verified\"}"),
        1.0
    );

    // The code never reached the log.
    drop(run);
    let log = std::fs::read_to_string(ws.path().join("send.log")).unwrap();
    for code in &codes_seen {
        assert!(
            !log.contains(&format!("\"{code}\"")) && !log.contains(&format!("={code}")),
            "code {code} in the log"
        );
    }
    assert!(
        !log.contains("+14155551000"),
        "phone numbers are masked in the log"
    );
    assert!(log.contains("+1******1000"), "{log}");
}

#[test]
fn the_request_follows_oktas_contract() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new();
    let hook = HookServer::start(&rt, successful("contract"));
    ws.write_org("contract", &[HookSpec::active("primary", hook.url())]);
    let run = ws.run(
        "contract.log",
        &["--otp-code-length", "8", "--otp-lifetime", "2m"],
    );
    wait_configured(&run, "contract");
    let (status, receipt) = send(&run, "contract", "+447700900123");
    assert_eq!(status, 200, "{receipt}");
    let seen = hook.seen().pop().unwrap();
    // Headers: the auth secret, the custom ones (literal and from a Secret).
    assert_eq!(seen.headers["authorization"], HOOK_TOKEN);
    assert_eq!(seen.headers["x-org"], "contract");
    assert_eq!(seen.headers["x-tenant"], "tenant-secret-value");
    assert_eq!(seen.headers["content-type"], "application/json");
    let b = &seen.body;
    assert_eq!(b["eventType"], "com.okta.telephony.provider");
    assert_eq!(b["eventTypeVersion"], "1.0");
    assert_eq!(b["cloudEventVersion"], "0.1");
    assert_eq!(b["contentType"], "application/json");
    assert_eq!(b["requestType"], "com.okta.user.telephony.mfa-verification");
    assert_eq!(b["eventId"].as_str().unwrap().len(), 36);
    assert!(b["eventTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(b["source"], "urn:idplane:contract:telephonyhook:primary");
    let request = &b["data"]["context"]["request"];
    assert_eq!(request["id"], "req-1");
    assert_eq!(request["method"], "POST");
    assert_eq!(request["url"]["value"], "/v1/orgs/contract/otp/send");
    assert_eq!(request["ipAddress"], "203.0.113.7");
    let user = &b["data"]["userProfile"];
    assert_eq!(
        (
            &user["firstName"],
            &user["lastName"],
            &user["login"],
            &user["userId"]
        ),
        (
            &Value::from("Ada"),
            &Value::from("Lovelace"),
            &Value::from("ada@example.com"),
            &Value::from("00u1")
        )
    );
    let m = &b["data"]["messageProfile"];
    let code = m["otpCode"].as_str().unwrap();
    assert_eq!(code.len(), 8);
    assert_eq!(m["msgTemplate"], format!("contract: your code is {code}"));
    assert_eq!(m["phoneNumber"], "+447700900123");
    assert_eq!(m["deliveryChannel"], "SMS");
    assert_eq!(m["locale"], "EN-US");
    assert_eq!(m["otpExpires"], receipt["expiresAt"]);
    let expires =
        chrono::DateTime::parse_from_rfc3339(receipt["expiresAt"].as_str().unwrap()).unwrap();
    let left = expires
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!((100..=120).contains(&left), "lifetime 2m: {left}s left");
    assert!(!receipt.to_string().contains(code), "no code in the answer");

    // Voice: CALL and no text.
    let mut body = send_body("+447700900124");
    body["channel"] = "voice".into();
    body["requestType"] = "enrollment".into();
    let (status, _) = post_json(&run, "/v1/orgs/contract/otp/send", &body);
    assert_eq!(status, 200);
    let seen = hook.seen().pop().unwrap();
    assert_eq!(
        seen.body["data"]["messageProfile"]["deliveryChannel"],
        "CALL"
    );
    assert!(
        seen.body["data"]["messageProfile"]
            .get("msgTemplate")
            .is_none()
    );
    assert_eq!(
        seen.body["requestType"],
        "com.okta.user.telephony.pre-enrollment"
    );

    // Refusals name the problem.
    let (status, e) = send(&run, "contract", "0044 7700 900123");
    assert_eq!(
        (status, e["code"].as_str()),
        (400, Some("invalid_phone_number"))
    );
    assert!(e["message"].as_str().unwrap().contains("E.164"));
    let mut bad = send_body("+447700900125");
    bad["channel"] = "fax".into();
    let (status, e) = post_json(&run, "/v1/orgs/contract/otp/send", &bad);
    assert_eq!(status, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("channel"), "{e}");
    let (status, e) = send(&run, "nobody", "+447700900125");
    assert_eq!((status, e["code"].as_str()), (409, Some("no_active_hook")));
    let (status, _) = support::http(
        "POST",
        &run.url("/v1/orgs/contract/otp/send"),
        None,
        Some(&send_body("+447700900125")),
    );
    assert_eq!(status, 401);
    assert!(hook.seen().len() == 2, "refused sends reach no hook");
}

/// With `--log-format json`, the line a send logs carries the spans it ran
/// in: the request (route), the OTP send (org, the transaction id the
/// caller got) and the hook call (hook, via). Neither the phone number nor
/// the code is in any line.
#[test]
fn json_logs_carry_the_send_spans_and_no_phone_or_code() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new();
    let hook = HookServer::start(&rt, successful("logs"));
    ws.write_org("logs", &[HookSpec::active("primary", hook.url())]);
    let mut run = ws.run("logs.log", &["--log-format", "json"]);
    wait_configured(&run, "logs");
    let phone = "+447700900124";
    let (status, receipt) = send(&run, "logs", phone);
    assert_eq!(status, 200, "{receipt}");
    let code = hook.seen().pop().unwrap().code();
    run.stop(Duration::from_secs(10));
    let log = std::fs::read_to_string(ws.path().join("logs.log")).unwrap();
    assert!(!log.contains(phone), "the phone number is logged:\n{log}");
    assert!(!log.contains(&code), "the code is logged:\n{log}");
    let delivered: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "OTP delivered")
        .unwrap_or_else(|| panic!("no JSON line for the delivery:\n{log}"));
    let spans = delivered["spans"].as_array().unwrap();
    let span = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} span in {delivered}"))
    };
    assert_eq!(span("request")["route"], "/v1/orgs/{org}/otp/send");
    assert_eq!(span("otp_send")["org"], "logs");
    assert_eq!(
        span("otp_send")["transaction_id"],
        receipt["transactionId"],
        "{delivered}"
    );
    assert_eq!(span("hook_call")["hook"], "primary");
    assert_eq!(span("hook_call")["via"], "primary");
    assert_eq!(delivered["span"]["name"], "hook_call");
}
