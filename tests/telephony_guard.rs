//! The abuse guard through `idplane run`: per-phone and per-org limits
//! answer 429 with Retry-After, the per-org allow-list of country calling
//! codes refuses other numbers, refused sends reach no hook, and both are
//! counted in metrics.

mod support;

use support::telephony::*;

#[test]
fn limits_and_country_allow_list() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new();
    let hook = HookServer::start(&rt, successful("sms"));
    ws.write_org("acme", &[HookSpec::active("primary", hook.url())]);
    ws.write_org("globex", &[HookSpec::active("primary", hook.url())]);
    let run = ws.run(
        "guard.log",
        &[
            "--otp-phone-limit",
            "2",
            "--otp-phone-window",
            "1m",
            "--otp-org-limit",
            "4",
            "--otp-org-window",
            "1h",
            "--otp-allowed-country-codes",
            "acme=+1,+44",
        ],
    );
    wait_configured(&run, "acme");
    wait_configured(&run, "globex");

    // Per phone number: the third send within the window is refused.
    assert_eq!(send(&run, "acme", "+14155550100").0, 200);
    assert_eq!(send(&run, "acme", "+14155550100").0, 200);
    let (status, body, retry_after) = send_with_retry_after(&run, "acme", "+14155550100");
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("phone_rate_limited")),
        "{body}"
    );
    let retry: u64 = retry_after.unwrap().parse().unwrap();
    assert!((55..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(body["retryAfterSeconds"], retry);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("at most 2 per 60 s"),
        "{body}"
    );

    // The allow-list: +33 is not for acme; the refusal costs no quota.
    let (status, body) = send(&run, "acme", "+33612345678");
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("country_not_allowed")),
        "{body}"
    );
    assert_eq!(
        body["allowedCountryCodes"],
        serde_json::json!(["+1", "+44"])
    );
    assert!(body["message"].as_str().unwrap().contains("+1, +44"));
    // Other orgs are not limited by acme's list.
    assert_eq!(send(&run, "globex", "+33612345678").0, 200);

    // Per org: 4 per hour in all, whatever the number.
    assert_eq!(send(&run, "acme", "+447700900100").0, 200);
    assert_eq!(send(&run, "acme", "+14155550101").0, 200);
    let (status, body, retry_after) = send_with_retry_after(&run, "acme", "+14155550102");
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("org_rate_limited")),
        "{body}"
    );
    let retry: u64 = retry_after.unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&retry), "Retry-After {retry}");

    // Refused sends reached no hook: 4 for acme, 1 for globex.
    assert_eq!(hook.count(), 5);
    let m = |reason: &str| {
        run.metric(&format!(
            "idplane_otp_refusals_total{{org=\"acme\",result=\"{reason}\"}}"
        ))
    };
    assert_eq!(m("phone_rate_limit"), 1.0);
    assert_eq!(m("org_rate_limit"), 1.0);
    assert_eq!(m("country_not_allowed"), 1.0);
    assert_eq!(
        run.metric("idplane_otp_sends_total{org=\"acme\",result=\"refused\"}"),
        3.0
    );
}

fn send_with_retry_after(
    run: &support::Idplane,
    org: &str,
    phone: &str,
) -> (u16, serde_json::Value, Option<String>) {
    support::block_on(async {
        let r = reqwest::Client::new()
            .post(run.url(&format!("/v1/orgs/{org}/otp/send")))
            .bearer_auth(API_TOKEN)
            .json(&send_body(phone))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, r.json().await.unwrap(), retry)
    })
}
