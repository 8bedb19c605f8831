//! Calls to a running idplane's API, blocking: plain HTTP, JSON answers,
//! an org's objects as `GET /v1/orgs/{org}/status` shows them, their
//! conditions, and the org's events.

use std::time::Duration;

use serde_json::Value;

use super::process::{Idplane, block_on};

/// A blocking GET; returns (status, body).
pub fn http_get(url: &str, token: Option<&str>) -> (u16, String) {
    http("GET", url, token, None)
}

/// A blocking request with a JSON body; returns (status, body), or
/// (0, the error) when no answer came.
pub fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, String) {
    block_on(async {
        let client = reqwest::Client::new();
        let mut req = client
            .request(method.parse().unwrap(), url)
            .timeout(Duration::from_secs(30));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    })
}

/// [`http`], with the answer as JSON (a JSON string when it is not JSON).
pub fn http_json(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let (status, text) = http(method, url, token, body);
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// An object of the org as `GET /v1/orgs/{org}/status` shows it (kind,
/// name, status), or None when the call fails or the object is not there.
pub fn status_object(
    run: &Idplane,
    token: &str,
    org: &str,
    kind: &str,
    name: &str,
) -> Option<Value> {
    let (code, body) = http_get(&run.url(&format!("/v1/orgs/{org}/status")), Some(token));
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

/// A condition of an object (from the API or the apiserver): its
/// `status.conditions` entry of `type_`.
pub fn condition(obj: &Value, type_: &str) -> Option<Value> {
    status_condition(&obj["status"], type_)
}

/// A condition of a status: its `conditions` entry of `type_`.
pub fn status_condition(status: &Value, type_: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// The org's events of a type (`GET /v1/orgs/{org}/events`, up to 1,000).
pub fn org_events(run: &Idplane, token: &str, org: &str, type_: &str) -> Vec<Value> {
    let (code, body) = http_get(
        &run.url(&format!("/v1/orgs/{org}/events?type={type_}&limit=1000")),
        Some(token),
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["events"].as_array().cloned().unwrap_or_default()
}
