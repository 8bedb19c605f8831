//! What the telephony tests share: real hook servers on loopback (each
//! answering one way: success, PENDING, FAILED, an error object, malformed
//! JSON, 500, a redirect, slow, a huge body), org manifests pointing at
//! them, `idplane run` with a token file, and the telephony API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::api::{http_get, http_json, org_events, status_object};
use super::process::{
    ALLOW_LOOPBACK, Idplane, block_on, free_port, wait_for, workspace_with_token,
};

/// The secret every test hook expects in `Authorization`.
pub const HOOK_TOKEN: &str = "hook-token-0123";
/// The API token of the tests (all orgs).
pub const API_TOKEN: &str = "telephony-test-token-0123456789";

/// How a test hook answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// A status and a body, as is.
    Answer(u16, String),
    /// 302 to another URL.
    Redirect(String),
    /// Waits, then answers SUCCESSFUL.
    Slow(Duration),
    /// A body over 256 KB, with Content-Length or chunked.
    Huge { chunked: bool },
}

/// Okta's answer with one action.
pub fn action(status: &str, provider: &str) -> String {
    json!({"commands": [{"type": "com.okta.telephony.action", "value": [
        {"status": status, "provider": provider, "transactionId": format!("{provider}-tx-1"),
         "transactionMetadata": {"segments": 1}}]}]})
    .to_string()
}

pub fn successful(provider: &str) -> Behaviour {
    Behaviour::Answer(200, action("SUCCESSFUL", provider))
}

/// One request a test hook received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

impl Seen {
    pub fn code(&self) -> String {
        self.body["data"]["messageProfile"]["otpCode"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

struct Shared {
    behaviour: Behaviour,
    seen: Mutex<Vec<Seen>>,
}

/// A running test hook.
#[derive(Clone)]
pub struct HookServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl HookServer {
    pub fn start(rt: &tokio::runtime::Runtime, behaviour: Behaviour) -> Self {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            behaviour,
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/telephony", post(handle))
            .with_state(shared.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/telephony", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let seen = Seen {
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    shared.seen.lock().unwrap().push(seen);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(HOOK_TOKEN) {
        let error = json!({"error": {"errorSummary": "Unauthorized", "errorCauses": [{"errorSummary": "bad token"}]}});
        return (StatusCode::UNAUTHORIZED, error.to_string()).into_response();
    }
    match &shared.behaviour {
        Behaviour::Answer(status, body) => (
            StatusCode::from_u16(*status).unwrap(),
            [("content-type", "application/json")],
            body.clone(),
        )
            .into_response(),
        Behaviour::Redirect(to) => (StatusCode::FOUND, [("location", to.as_str())]).into_response(),
        Behaviour::Slow(wait) => {
            tokio::time::sleep(*wait).await;
            action("SUCCESSFUL", "slow").into_response()
        }
        Behaviour::Huge { chunked } => {
            let pad = "x".repeat(300 * 1024);
            let body = format!(
                "{{\"commands\":[{{\"type\":\"com.okta.telephony.action\",\"value\":[{{\"status\":\"SUCCESSFUL\"}}]}}],\"pad\":\"{pad}\"}}"
            );
            if *chunked {
                let chunks: Vec<Result<Bytes, std::io::Error>> = body
                    .into_bytes()
                    .chunks(16 * 1024)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                Response::new(Body::from_stream(futures::stream::iter(chunks)))
            } else {
                body.into_response()
            }
        }
    }
}

/// A closed port on loopback: connecting is refused.
pub fn refused_url() -> String {
    format!("http://127.0.0.1:{}/telephony", free_port())
}

/// One hook of an org's manifests.
pub struct HookSpec<'a> {
    pub name: &'a str,
    pub url: String,
    pub active: bool,
    /// The Secret key the auth header reads: `good` or `bad`.
    pub secret_key: &'a str,
    pub timeout: &'a str,
    pub fallback: Option<&'a str>,
}

impl<'a> HookSpec<'a> {
    pub fn active(name: &'a str, url: String) -> Self {
        Self {
            name,
            url,
            active: true,
            secret_key: "good",
            timeout: "400ms",
            fallback: None,
        }
    }

    pub fn standby(name: &'a str, url: String) -> Self {
        Self {
            active: false,
            ..Self::active(name, url)
        }
    }
}

/// An org's Secret and hooks as YAML.
pub fn org_yaml(org: &str, hooks: &[HookSpec]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sms\n  namespace: {org}\nstringData:\n  good: {HOOK_TOKEN}\n  bad: wrong-token\n  tenant: tenant-secret-value\n"
    );
    for h in hooks {
        out.push_str(&format!(
            "---\napiVersion: idplane.dev/v1alpha1\nkind: TelephonyHook\nmetadata:\n  name: {}\n  namespace: {org}\nspec:\n  active: {}\n  url: {}\n  allowInsecureHttp: true\n  auth:\n    header: Authorization\n    secretRef: {{name: sms, key: {}}}\n  headers:\n    - name: X-Org\n      value: {org}\n    - name: X-Tenant\n      valueFrom:\n        secretKeyRef: {{name: sms, key: tenant}}\n  timeout: {}\n  messageTemplate: \"{org}: your code is ${{otpCode}}\"\n",
            h.name, h.active, h.url, h.secret_key, h.timeout
        ));
        if let Some(f) = h.fallback {
            out.push_str(&format!("  fallback:\n    hookRef: {f}\n"));
        }
    }
    out
}

/// A directory for manifests, the token file and the database.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        let (dir, _manifests) = workspace_with_token("tests", API_TOKEN);
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn manifests(&self) -> PathBuf {
        self.path().join("manifests")
    }

    pub fn database(&self) -> PathBuf {
        self.path().join("state/idplane.db")
    }

    pub fn write_org(&self, org: &str, hooks: &[HookSpec]) {
        std::fs::write(
            self.manifests().join(format!("{org}.yaml")),
            org_yaml(org, hooks),
        )
        .unwrap();
    }

    /// `idplane run` on these manifests with extra flags, loopback allowed
    /// (the hooks listen there); waits until ready.
    pub fn run(&self, log: &str, extra: &[&str]) -> Idplane {
        let mut flags = ALLOW_LOOPBACK.to_vec();
        flags.extend_from_slice(extra);
        self.run_strict(log, &flags)
    }

    /// `idplane run` with only `extra`: the default egress rule.
    pub fn run_strict(&self, log: &str, extra: &[&str]) -> Idplane {
        Idplane::run_manifests(
            &self.manifests(),
            &self.database(),
            &self.path().join("tokens.yaml"),
            extra,
            &[("RUST_LOG", "info")],
            &self.path().join(log),
        )
    }

    /// Passcodes stored as delivered and not yet used or locked.
    pub fn valid_passcodes(&self) -> i64 {
        let url = format!("sqlite://{}?mode=ro", self.database().display());
        block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let now = chrono::Utc::now().timestamp_millis();
            let (n,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM otp_transactions WHERE state = 'delivered' AND expires_at > ?",
            )
            .bind(now)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            n
        })
    }
}

/// A send request body.
pub fn send_body(phone: &str) -> Value {
    json!({
        "phoneNumber": phone,
        "channel": "sms",
        "requestType": "verification",
        "user": {"id": "00u1", "login": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace"},
        "locale": "EN-US",
        "context": {"ip": "203.0.113.7", "requestId": "req-1"}
    })
}

/// POST a JSON body with the test token; (status, JSON answer).
pub fn post_json(run: &Idplane, path: &str, body: &Value) -> (u16, Value) {
    http_json("POST", &run.url(path), Some(API_TOKEN), Some(body))
}

pub fn send(run: &Idplane, org: &str, phone: &str) -> (u16, Value) {
    post_json(run, &format!("/v1/orgs/{org}/otp/send"), &send_body(phone))
}

pub fn verify(run: &Idplane, org: &str, transaction: &str, code: &str) -> (u16, Value) {
    post_json(
        run,
        &format!("/v1/orgs/{org}/otp/verify"),
        &json!({"transactionId": transaction, "code": code}),
    )
}

/// The org's events of a type.
pub fn events(run: &Idplane, org: &str, type_: &str) -> Vec<Value> {
    org_events(run, API_TOKEN, org, type_)
}

/// Waits until the org has `n` events of `type_` (the store writer commits them
/// a few milliseconds after the answer).
pub fn wait_events(run: &Idplane, org: &str, type_: &str, n: usize) -> Vec<Value> {
    wait_for(
        &format!("{n} {type_} events in {org}"),
        Duration::from_secs(10),
        || {
            let e = events(run, org, type_);
            (e.len() >= n).then_some(e)
        },
    )
}

/// A hook's status as `GET /v1/orgs/{org}/status` shows it.
pub fn hook_status(run: &Idplane, org: &str, hook: &str) -> Option<Value> {
    status_object(run, API_TOKEN, org, "TelephonyHook", hook).map(|o| o["status"].clone())
}

/// Waits until the hook's status.metrics shows `executions` and `failures`.
pub fn wait_metrics(run: &Idplane, org: &str, hook: &str, executions: u64, failures: u64) -> Value {
    wait_for(
        &format!("{org}/{hook} metrics executions={executions} failures={failures}"),
        Duration::from_secs(15),
        || {
            let m = hook_status(run, org, hook)?["metrics"].clone();
            (m["executions"] == executions && m["failures"] == failures).then_some(m)
        },
    )
}

/// Waits until the org's hooks are in the runtime configuration.
pub fn wait_configured(run: &Idplane, org: &str) {
    wait_for(
        &format!("{org} configured"),
        Duration::from_secs(20),
        || {
            let (code, body) =
                http_get(&run.url(&format!("/v1/orgs/{org}/config")), Some(API_TOKEN));
            (code == 200
                && serde_json::from_str::<Value>(&body).ok()?["config"]["activeHook"].is_string())
            .then_some(())
        },
    );
}

/// Sends an OTP to `phone` through `run` (200 asserted); the transaction
/// id and the code the hook received for that phone.
pub fn sent(run: &Idplane, hook: &HookServer, org: &str, phone: &str) -> (String, String) {
    let (status, receipt) = send(run, org, phone);
    assert_eq!(status, 200, "{receipt}");
    let code = hook
        .seen()
        .into_iter()
        .rev()
        .find(|s| s.body["data"]["messageProfile"]["phoneNumber"] == phone)
        .expect("the hook got the send")
        .code();
    (receipt["transactionId"].as_str().unwrap().to_string(), code)
}

/// A wrong code of the same length as `code`.
pub fn wrong(code: &str) -> String {
    code.chars()
        .map(|c| {
            if c == '9' {
                '0'
            } else {
                char::from(c as u8 + 1)
            }
        })
        .collect()
}
