//! The telephony runtime module: one-time passcodes by SMS or voice call,
//! delivered through the org's active `TelephonyHook` with Okta's telephony
//! inline hook contract, with fallback, verification, an abuse guard,
//! previews, events and per-hook 30-day metrics in the hook's status.
//!
//! It owns its routes (`/v1/orgs/{org}/otp/...`,
//! `/v1/orgs/{org}/telephony-hooks/{name}/preview`), its tables (see
//! `migrations/0002_telephony.sql`, written only by [`ledger`]) and the
//! `metrics` and `lastPreview` fields of hook status. It does not read the
//! apiserver (hooks come from the index's snapshots), does not validate
//! hooks (the validator does) and does not write status itself (the status
//! writer merges what it publishes). See `docs/telephony.md`.

pub mod caller;
pub mod code;
pub mod contract;
pub mod guard;
pub mod hook_stats;
pub mod metrics;
pub mod phone;
pub mod preview;
mod routes;
pub mod sender;
pub mod store_writer;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use chrono::{Days, Utc};
use serde_json::json;
use tokio::sync::watch;

use crate::api::SharedState;
use crate::api::openapi::{Endpoint, Operation, e164, nullable, time};
use crate::controller::module_fields::ModuleFields;
use crate::index::Snapshot;
use crate::runtime::{ModuleContext, StartError};
use crate::secret::Secret;
use crate::validate::ObjectKey;

pub use caller::HookCaller;
pub use guard::{AbuseGuard, Limit};
pub use hook_stats::{HookTally, WINDOW_DAYS};
pub use phone::{CountryAllowList, PhoneNumber};
pub use sender::{OtpPolicy, OtpSender, SendReceipt, SendRequest, VerifyAnswer, VerifyRequest};

fn duration(text: &str) -> Result<Duration, String> {
    crate::resources::parse_duration_millis(text)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("\"{text}\" is not a duration (for example 500ms, 10m, 1h)"))
}

/// Command-line settings of the telephony module (flattened into `run` and `operator`).
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Telephony (OTP by SMS and voice)")]
pub struct TelephonySettings {
    /// Digits in a one-time passcode.
    #[arg(long = "otp-code-length", default_value_t = 6, value_parser = clap::value_parser!(u8).range(4..=10))]
    pub otp_code_length: u8,
    /// How long a passcode stays valid.
    #[arg(long = "otp-lifetime", default_value = "5m", value_parser = duration)]
    pub otp_lifetime: Duration,
    /// Wrong codes before a passcode is locked.
    #[arg(long = "otp-max-attempts", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub otp_max_attempts: u32,
    /// Key of the HMAC that stores codes (at least 32 characters). Without
    /// it a random key is drawn at start, and passcodes pending at a
    /// restart can no longer be verified.
    #[arg(
        long = "otp-hash-key",
        env = "IDPLANE_OTP_HASH_KEY",
        hide_env_values = true
    )]
    pub otp_hash_key: Option<Secret>,
    /// Sends to one phone number (per org) per --otp-phone-window; 0: no limit.
    #[arg(long = "otp-phone-limit", default_value_t = 5)]
    pub otp_phone_limit: u32,
    /// The sliding window of --otp-phone-limit.
    #[arg(long = "otp-phone-window", default_value = "10m", value_parser = duration)]
    pub otp_phone_window: Duration,
    /// Sends per org per --otp-org-window; 0: no limit.
    #[arg(long = "otp-org-limit", default_value_t = 1000)]
    pub otp_org_limit: u32,
    /// The sliding window of --otp-org-limit.
    #[arg(long = "otp-org-window", default_value = "1h", value_parser = duration)]
    pub otp_org_window: Duration,
    /// Country calling codes each org may send to, e.g.
    /// `acme=+1,+44;globex=+33;*=+1` (`*`: every org not listed). Orgs
    /// without an entry may send anywhere.
    #[arg(
        long = "otp-allowed-country-codes",
        env = "IDPLANE_OTP_ALLOWED_COUNTRY_CODES",
        default_value = ""
    )]
    pub otp_allowed_country_codes: CountryAllowList,
    /// How often hook metrics are published into status.
    #[arg(long = "telephony-status-interval", default_value = "2s", value_parser = duration)]
    pub telephony_status_interval: Duration,
}

impl Default for TelephonySettings {
    fn default() -> Self {
        Self {
            otp_code_length: 6,
            otp_lifetime: Duration::from_secs(300),
            otp_max_attempts: 5,
            otp_hash_key: None,
            otp_phone_limit: 5,
            otp_phone_window: Duration::from_secs(600),
            otp_org_limit: 1000,
            otp_org_window: Duration::from_secs(3600),
            otp_allowed_country_codes: CountryAllowList::default(),
            telephony_status_interval: Duration::from_secs(2),
        }
    }
}

/// Errors of the module's operations; each becomes an API error with a
/// stable code (see `routes`).
#[derive(Debug, thiserror::Error)]
pub enum TelephonyError {
    #[error(transparent)]
    InvalidPhone(#[from] phone::PhoneError),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("org {0} has no active TelephonyHook that is ready")]
    NoActiveHook(String),
    #[error("org {org} has no usable TelephonyHook named {name}{}", known_list(.known))]
    UnknownHook {
        org: String,
        name: String,
        known: Vec<String>,
    },
    #[error("org {org} may send only to numbers with country calling codes {}", .allowed.join(", "))]
    CountryNotAllowed { org: String, allowed: Vec<String> },
    #[error("too many passcodes {}: at most {} per {} s; retry in {} s",
        match .0.scope { guard::Scope::Phone => "for this phone number", guard::Scope::Org => "for this org" },
        .0.limit.max, .0.limit.window.as_secs(), .0.retry_after_secs())]
    RateLimited(guard::Refusal),
    #[error("no hook delivered the passcode; it is not valid")]
    DeliveryFailed {
        transaction_id: String,
        attempts: Vec<sender::FailedAttempt>,
    },
    #[error(
        "no passcode with this transactionId in this org (never delivered, or expired more than a day ago)"
    )]
    UnknownTransaction,
    #[error("{0}")]
    Store(String),
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (known: {})", known.join(", "))
    }
}

/// Starts the module's background work and returns its routes. Every
/// hook call and preview goes through `egress`.
pub async fn start(
    ctx: ModuleContext,
    settings: TelephonySettings,
    egress: Arc<crate::egress::Egress>,
) -> Result<Router<SharedState>, StartError> {
    let sender = Arc::new(build(&ctx, &settings, egress).await?);
    tokio::spawn(publish_metrics(
        ctx.snapshots.clone(),
        sender.tally.clone(),
        ctx.module_fields.clone(),
        settings
            .telephony_status_interval
            .max(Duration::from_millis(100)),
    ));
    tokio::spawn(purge(sender.ledger.clone()));
    // The ledger commits passcodes and executions after the send has
    // answered: on a stop, what the last requests queued is committed
    // before the process exits.
    let ledger = sender.ledger.clone();
    let served = ctx.stop.served.clone();
    ctx.stop.tracker.spawn(async move {
        served.cancelled().await;
        ledger.barrier().await;
        tracing::info!("stopping: telephony ledger flushed");
    });
    Ok(routes::router(sender))
}

fn start_error(message: impl Into<String>) -> StartError {
    StartError {
        module: "telephony",
        message: message.into(),
    }
}

/// The service, its stored numbers loaded, its ledger running.
pub async fn build(
    ctx: &ModuleContext,
    settings: &TelephonySettings,
    egress: Arc<crate::egress::Egress>,
) -> Result<OtpSender, StartError> {
    let hasher = match &settings.otp_hash_key {
        Some(key) if key.len() < 32 => {
            return Err(start_error(
                "--otp-hash-key (IDPLANE_OTP_HASH_KEY) must be at least 32 characters",
            ));
        }
        Some(key) => code::CodeHasher::new(key.as_bytes()),
        None => code::CodeHasher::random(),
    };
    let caller = HookCaller::new(egress).map_err(|e| start_error(e.to_string()))?;
    let since = Utc::now()
        .date_naive()
        .checked_sub_days(Days::new(u64::from(WINDOW_DAYS)))
        .unwrap_or_default();
    let stored = store_writer::load_numbers(ctx.store.pool(), since)
        .await
        .map_err(|e| start_error(format!("cannot load hook metrics: {e}")))?;
    let instruments = metrics::Instruments::register(&ctx.metrics);
    let on_error = {
        let instruments = instruments.clone();
        move |_: &store_writer::LedgerError| instruments.ledger_error()
    };
    Ok(OtpSender {
        snapshots: ctx.snapshots.clone(),
        caller,
        hasher,
        policy: OtpPolicy {
            code_length: usize::from(settings.otp_code_length),
            lifetime: settings.otp_lifetime,
            max_attempts: settings.otp_max_attempts,
        },
        guard: AbuseGuard::new(
            Limit {
                max: settings.otp_phone_limit,
                window: settings.otp_phone_window,
            },
            Limit {
                max: settings.otp_org_limit,
                window: settings.otp_org_window,
            },
        ),
        countries: settings.otp_allowed_country_codes.clone(),
        ledger: store_writer::Ledger::start(ctx.store.pool().clone(), on_error),
        tally: Arc::new(HookTally::from_stored(stored)),
        instruments,
        module_fields: ctx.module_fields.clone(),
    })
}

/// Publishes every hook's 30-day numbers into its status: at start, when
/// the snapshot changes, and every `interval` (unchanged values are not
/// published again, so an idle hook causes no status write).
async fn publish_metrics(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    tally: Arc<HookTally>,
    module_fields: Arc<ModuleFields>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let today = Utc::now().date_naive();
        for (org, config) in &snapshot.orgs {
            for hook in config.hooks.keys() {
                let metrics = tally.metrics(org, hook, today);
                let key = ObjectKey {
                    kind: "TelephonyHook".into(),
                    namespace: org.clone(),
                    name: hook.clone(),
                };
                module_fields.set(&key, "metrics", json!(metrics));
            }
        }
        tokio::select! {
            _ = ticker.tick() => {}
            changed = snapshots.changed() => if changed.is_err() { return },
        }
    }
}

/// Forgets passcodes a day after they expire and buckets past the window.
async fn purge(ledger: store_writer::Ledger) {
    let mut ticker = tokio::time::interval(Duration::from_secs(600));
    loop {
        ticker.tick().await;
        let now = Utc::now();
        let days_before = now
            .date_naive()
            .checked_sub_days(Days::new(u64::from(WINDOW_DAYS)))
            .unwrap_or_default();
        let before = (now - chrono::Duration::days(1)).timestamp_millis();
        if ledger.purge(before, days_before).await.is_err() {
            return;
        }
    }
}

/// The module's operations, for `/openapi.json`: each route of the
/// module's table, described with every answer it gives.
pub fn openapi_endpoints() -> Vec<Operation> {
    routes::endpoints()
        .iter()
        .map(|route| match route.path {
            "/v1/orgs/{org}/otp/send" => otp_send_operation(route),
            "/v1/orgs/{org}/otp/verify" => otp_verify_operation(route),
            "/v1/orgs/{org}/telephony-hooks/{name}/preview" => preview_operation(route),
            _ => Operation::from_endpoint(route, "undescribedTelephonyRoute"),
        })
        .collect()
}

const REQUEST_TYPES: [&str; 4] = [
    "enrollment",
    "verification",
    "account-unlock",
    "password-reset",
];

/// `user` of a send or preview body. The caller's strings are passed to
/// the hook as they are.
fn openapi_user(non_empty: bool) -> serde_json::Value {
    let id = if non_empty {
        json!({"type": "string", "minLength": 1})
    } else {
        json!({"type": "string"})
    };
    json!({"type": "object", "required": ["id", "login"], "additionalProperties": false, "properties": {
        "id": id.clone(), "login": id,
        "firstName": {"type": "string"}, "lastName": {"type": "string"}}})
}

fn openapi_context() -> serde_json::Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "ip": nullable(json!({"type": "string", "description": "The end user's IP address, passed to the hook"})),
        "requestId": nullable(json!({"type": "string", "description": "The caller's request id, passed to the hook"}))}})
}

/// A send's over-limit and refused-country answers (send and preview).
fn openapi_guard(op: Operation) -> Operation {
    op.error_with(
        403,
        "country_not_allowed: the number's country calling code is not in the org's --otp-allowed-country-codes",
        &["country_not_allowed"],
        json!({"allowedCountryCodes": {"type": "array", "items": {"type": "string", "pattern": "^\\+[1-9][0-9]{0,2}$"}}}),
    )
    .error_with(
        429,
        "Over the abuse guard's limits: sends per phone number per --otp-phone-window (phone_rate_limited), per org per --otp-org-window (org_rate_limited)",
        &["phone_rate_limited", "org_rate_limited"],
        json!({"retryAfterSeconds": {"type": "integer", "minimum": 0}}),
    )
    .retry_after(429, true)
}

fn otp_send_operation(route: &Endpoint) -> Operation {
    let body = json!({"type": "object", "required": ["phoneNumber", "channel", "requestType", "user"],
        "additionalProperties": false,
        "properties": {
            "phoneNumber": e164(),
            "channel": {"type": "string", "enum": ["sms", "voice"]},
            "requestType": {"type": "string", "enum": REQUEST_TYPES},
            "user": openapi_user(true),
            "locale": nullable(json!({"type": "string", "description": "Passed to the hook; EN-US when absent"})),
            "context": openapi_context()}});
    let attempt = json!({"type": "object",
        "required": ["hook", "via", "reasonCode", "reason", "requests", "durationMillis"], "properties": {
            "hook": {"type": "string"},
            "via": {"type": "string", "enum": ["primary", "fallback"]},
            "reasonCode": {"type": "string", "enum": ["timeout", "connection_error", "http_status", "invalid_response",
                "missing_command", "provider_failed", "hook_error", "body_too_large", "invalid_config", "egress_refused"]},
            "reason": {"type": "string"},
            "requests": {"type": "integer", "minimum": 0, "maximum": 2},
            "durationMillis": {"type": "integer", "minimum": 0}}});
    let op = Operation::from_endpoint(route, "sendOtp")
        .description("The org's active TelephonyHook is called with Okta's telephony inline hook contract; when it does not deliver, its fallback. Only a delivered passcode is stored (and can be verified).")
        .body(body)
        .answer(200, "Delivered (or accepted for delivery, PENDING) by a hook", json!({"type": "object",
            "required": ["transactionId", "status", "provider", "providerTransactionId", "via", "hook", "expiresAt"],
            "properties": {
                "transactionId": {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "The passcode's id, for verify"},
                "status": {"type": "string", "enum": ["SUCCESSFUL", "PENDING"]},
                "provider": nullable(json!({"type": "string"})),
                "providerTransactionId": nullable(json!({"type": "string"})),
                "via": {"type": "string", "enum": ["primary", "fallback"]},
                "hook": {"type": "string", "description": "The hook that delivered"},
                "expiresAt": time()}}))
        .link(200, "VerifyThePasscode", json!({
            "operationId": "verifyOtp",
            "parameters": {"path.org": "$request.path.org"},
            "requestBody": {"transactionId": "$response.body#/transactionId", "code": "000000"},
        }))
        .error(400, "phoneNumber is not E.164 (invalid_phone_number), user.id or user.login is empty (invalid_request)", &["invalid_phone_number", "invalid_request"])
        .error(409, "The org has no active TelephonyHook that is ready", &["no_active_hook"])
        .error_with(
            502,
            "No hook delivered (the active one, then its fallback); the passcode is not valid. attempts lists each hook's failure",
            &["delivery_failed"],
            json!({"transactionId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "attempts": {"type": "array", "minItems": 1, "maxItems": 2, "items": attempt}}),
        );
    openapi_guard(op)
}

fn otp_verify_operation(route: &Endpoint) -> Operation {
    Operation::from_endpoint(route, "verifyOtp")
        .body(json!({"type": "object", "required": ["transactionId", "code"], "additionalProperties": false,
            "properties": {
                "transactionId": {"type": "string", "pattern": "^[0-9a-f]{32}$",
                    "description": "The transactionId a send answered (the server takes 1 to 128 characters and answers 404 for one it did not issue)"},
                "code": {"type": "string", "minLength": 1, "maxLength": 32,
                    "description": "The passcode the user typed; a wrong one costs an attempt"}}}))
        .answer(200, "The verdict: verified, or why not", json!({"type": "object",
            "required": ["transactionId", "result", "attemptsRemaining"], "properties": {
                "transactionId": {"type": "string"},
                "result": {"type": "string", "enum": ["verified", "invalid", "expired", "locked"]},
                "reason": {"type": "string", "enum": ["already_used", "too_many_attempts", "wrong_code"]},
                "attemptsRemaining": {"type": "integer", "minimum": 0}}}))
        .error(400, "transactionId is not 1 to 128 characters, or code not 1 to 32", &["invalid_request"])
        .error(404, "No passcode with this transactionId in this org (never delivered, or expired more than a day ago)", &["unknown_transaction"])
}

fn preview_operation(route: &Endpoint) -> Operation {
    use serde_json::Value;
    let request = json!({"type": "object",
        "description": "The whole body to send instead of the built one; when it is sent it must carry data.messageProfile.phoneNumber"});
    let sendable = json!({"type": "object", "required": ["data"], "properties": {
        "data": {"type": "object", "required": ["messageProfile"], "properties": {
            "messageProfile": {"type": "object", "required": ["phoneNumber"], "properties": {"phoneNumber": e164()}}}}}});
    let body = json!({"type": "object",
    "description": "Fields besides these are ignored. Either phoneNumber (the request is built as a send builds it) or request (sent as it is); with request, phoneNumber is not used.",
    "properties": {
        "phoneNumber": nullable(json!({"type": "string", "description": "E.164; required unless request is given"})),
        "channel": {"type": "string", "enum": ["sms", "voice"], "default": "sms"},
        "requestType": {"type": "string", "enum": REQUEST_TYPES, "default": "verification"},
        "user": openapi_user(false),
        "locale": nullable(json!({"type": "string"})),
        "context": openapi_context(),
        "request": nullable(request),
        "send": {"type": "boolean", "default": true, "description": "false: only build and show the request"}},
    "anyOf": [
        {"required": ["phoneNumber"], "properties": {"phoneNumber": e164(), "request": {"nullable": true, "enum": [Value::Null]}}},
        {"required": ["request"], "properties": {"request": sendable, "send": {"type": "boolean", "enum": [true]}}},
        {"required": ["request", "send"], "properties": {"request": {"type": "object"}, "send": {"type": "boolean", "enum": [false]}}},
    ]});
    let shown = json!({"type": "object", "required": ["httpStatus", "contentType", "body"], "properties": {
        "httpStatus": nullable(json!({"type": "integer", "minimum": 100, "maximum": 599})),
        "contentType": nullable(json!({"type": "string", "maxLength": 100})),
        "body": {"description": "The hook's answer when it is JSON, else null"},
        "length": {"type": "integer", "minimum": 0},
        "bodySummary": {"type": "string", "description": "An answer that is not JSON: status, content type and length"}}});
    let judgement = json!({"type": "object", "required": ["delivered", "status", "provider"], "properties": {
        "delivered": {"type": "boolean"},
        "status": {"type": "string", "enum": ["SUCCESSFUL", "PENDING", "FAILED"]},
        "provider": nullable(json!({"type": "string"})),
        "providerTransactionId": nullable(json!({"type": "string"})),
        "reasonCode": {"type": "string"},
        "reason": {"type": "string"}}});
    let op = Operation::from_endpoint(route, "previewTelephonyHook")
        .description("Builds the request a send would make to this hook (active or not), shows it with its secrets redacted and, unless send is false, sends it and shows the answer with idplane's judgement. A hook that does not deliver is still a 200 (judgement.delivered false). The preview's code is never stored.")
        .body(body)
        .answer(200, "The request, and when sent the answer and its judgement", json!({"type": "object",
            "required": ["org", "hook", "active", "method", "url", "headers", "request", "sent", "note"], "properties": {
                "org": {"type": "string"},
                "hook": {"type": "string"},
                "active": {"type": "boolean"},
                "method": {"type": "string", "enum": ["POST"]},
                "url": {"type": "string", "description": "The hook's URL, userinfo redacted"},
                "headers": {"type": "array", "items": {"type": "object", "required": ["name", "value"], "properties": {
                    "name": {"type": "string"}, "value": {"type": "string"}}}},
                "request": {"type": "object"},
                "sent": {"type": "boolean"},
                "note": {"type": "string"},
                "response": shown,
                "judgement": judgement,
                "attempts": {"type": "integer", "minimum": 0, "maximum": 2},
                "durationMillis": {"type": "integer", "minimum": 0},
                "summary": {"type": "string"}}}))
        .error(400, "Neither phoneNumber nor request, a phoneNumber that is not E.164 (invalid_phone_number), a request that is not an object or has no data.messageProfile.phoneNumber (invalid_request)", &["invalid_request", "invalid_phone_number"])
        .error(404, "The org has no usable TelephonyHook of this name", &["unknown_hook"]);
    openapi_guard(op)
}
