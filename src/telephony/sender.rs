//! [`OtpSender`]: the send, verify and preview operations behind the API.
//! A send checks the number and the abuse guard, makes a code, executes the
//! org's active hook and, when it fails, its fallback; every execution is
//! counted, logged as an event and tallied for the hook's status.
//!
//! The code (its keyed hash) is stored while the hooks are called, and the
//! send answers once both are done: a `200` means the passcode is
//! committed, so that any replica sharing the store can verify it at once,
//! and the answer waits for the longer of the two rather than their sum.
//! When no hook delivered, the row is deleted before the `502`: the code
//! that went out is valid nowhere. When the store fails, the send answers
//! `503 store_unavailable` (or 500) without a transaction id, whatever the
//! hook did.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use tracing::Instrument;

use super::TelephonyError;
use super::caller::{Exchange, HookCaller};
use super::code::{CodeHasher, OtpCode, VerifyResult, random_id, random_uuid};
use super::contract::{
    CallerContext, Channel, DeliveryStatus, HookRequest, RequestParts, RequestType, UserInfo,
    Verdict,
};
use super::guard::{AbuseGuard, GuardError, Scope};
use super::hook_stats::{ExecutionRecord, HookStats};
use super::metrics::TelephonyMetrics;
use super::phone::{CountryAllowList, PhoneNumber};
use super::preview::{self, DEFAULT_LOCALE, PreviewInput, rfc3339_millis};
use super::store_writer::{IssuedOtp, StoreWriter};
use crate::controller::module_fields::ModuleFields;
use crate::index::{HookConfig, Snapshot};
use crate::resources::{Kind, ObjectKey};
use crate::store::LogEntry;

/// How passcodes are made and checked.
#[derive(Clone, Copy, Debug)]
pub struct OtpPolicy {
    pub code_length: usize,
    pub lifetime: Duration,
    pub max_attempts: u32,
}

/// The body of `POST /v1/orgs/{org}/otp/send`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendRequest {
    /// E.164.
    pub phone_number: String,
    pub channel: Channel,
    pub request_type: RequestType,
    #[serde(deserialize_with = "crate::http::wire::object")]
    pub user: UserInfo,
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default, deserialize_with = "crate::http::wire::object")]
    pub context: CallerContext,
}

/// Whether the active hook or its fallback delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Primary,
    Fallback,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Fallback => "fallback",
        }
    }
}

/// The answer to a delivered send.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendReceipt {
    pub transaction_id: String,
    pub status: DeliveryStatus,
    pub provider: Option<String>,
    pub provider_transaction_id: Option<String>,
    pub via: Via,
    /// The hook that delivered.
    pub hook: String,
    pub expires_at: String,
}

/// One failed execution, as the 502 lists it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedAttempt {
    pub hook: String,
    pub via: Via,
    pub reason_code: &'static str,
    pub reason: String,
    /// Requests sent to this hook (2 after a retried timeout or connection error).
    pub requests: u32,
    pub duration_millis: u64,
}

/// The body of `POST /v1/orgs/{org}/otp/verify`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyRequest {
    pub transaction_id: String,
    pub code: String,
}

/// The answer to a verification.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyAnswer {
    pub transaction_id: String,
    pub result: VerifyResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub attempts_remaining: u32,
}

/// The body of `POST /v1/orgs/{org}/telephony-hooks/{name}/preview`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewRequest {
    #[serde(flatten)]
    pub input: PreviewInput,
    /// Send this request instead of the built one.
    #[serde(default)]
    pub request: Option<Value>,
    /// `false`: only build and show the request.
    #[serde(default = "yes")]
    pub send: bool,
}

fn yes() -> bool {
    true
}

/// The service behind the module's routes.
pub struct OtpSender {
    pub(super) snapshots: watch::Receiver<Arc<Snapshot>>,
    pub(super) caller: HookCaller,
    pub(super) hasher: CodeHasher,
    pub(super) policy: OtpPolicy,
    pub(super) guard: AbuseGuard,
    pub(super) countries: CountryAllowList,
    pub(super) store_writer: StoreWriter,
    pub(super) hook_stats: Arc<HookStats>,
    pub(super) metrics: TelephonyMetrics,
    pub(super) module_fields: Arc<ModuleFields>,
}

/// What a send's executions share, for events and logs.
struct SendContext<'a> {
    org: &'a str,
    transaction_id: &'a str,
    phone: &'a PhoneNumber,
    channel: Channel,
    request_type: RequestType,
    code: &'a OtpCode,
}

/// Hides the code in text that came back from a hook.
fn scrub(text: &str, code: &str) -> String {
    if code.is_empty() {
        text.to_string()
    } else {
        text.replace(code, "<code>")
    }
}

fn hook_key(org: &str, hook: &str) -> ObjectKey {
    ObjectKey::new(Kind::TelephonyHook, org, hook)
}

impl OtpSender {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Refuses numbers outside the org's allow-list and sends over a limit.
    async fn admit(&self, org: &str, phone: &PhoneNumber) -> Result<(), TelephonyError> {
        if !self.countries.allows(org, phone) {
            self.metrics.refusal(org, "country_not_allowed");
            return Err(TelephonyError::CountryNotAllowed {
                org: org.to_string(),
                allowed: self.countries.codes(org).unwrap_or_default().to_vec(),
            });
        }
        let now = Utc::now().timestamp_millis();
        match self.guard.admit(org, phone.as_str(), now).await {
            Ok(()) => Ok(()),
            Err(GuardError::Refused(refusal)) => {
                let reason = match refusal.scope {
                    Scope::Phone => "phone_rate_limit",
                    Scope::Org => "org_rate_limit",
                };
                self.metrics.refusal(org, reason);
                Err(TelephonyError::RateLimited(refusal))
            }
            Err(GuardError::Store(e)) => {
                self.metrics.refusal(org, "store_error");
                Err(TelephonyError::from_store(&e))
            }
        }
    }

    /// Sends a passcode through the org's active hook, then its fallback.
    /// Its span names the org and, once drawn, the transaction id; each
    /// hook call has a span of its own (hook, via). Never the phone or the
    /// code.
    #[tracing::instrument(name = "otp_send", skip_all, fields(org = org, transaction_id = tracing::field::Empty))]
    pub async fn send(&self, org: &str, req: SendRequest) -> Result<SendReceipt, TelephonyError> {
        let phone = match PhoneNumber::parse(&req.phone_number) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.send(org, "invalid");
                return Err(TelephonyError::InvalidPhone(e));
            }
        };
        if req.user.id.is_empty() || req.user.login.is_empty() {
            self.metrics.send(org, "invalid");
            return Err(TelephonyError::InvalidRequest(
                "user.id and user.login must not be empty".into(),
            ));
        }
        let snapshot = self.snapshot();
        let Some((org_config, active)) = snapshot.org(org).and_then(|c| {
            let name = c.active_hook.as_ref()?;
            Some((c, c.hooks.get(name)?))
        }) else {
            self.metrics.send(org, "no_active_hook");
            return Err(TelephonyError::NoActiveHook(org.to_string()));
        };
        self.admit(org, &phone).await?;

        let code = OtpCode::generate(self.policy.code_length);
        let transaction_id = random_id();
        tracing::Span::current().record("transaction_id", transaction_id.as_str());
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(self.policy.lifetime).unwrap_or_default();
        let expires_at = rfc3339_millis(expires);
        let ctx = SendContext {
            org,
            transaction_id: &transaction_id,
            phone: &phone,
            channel: req.channel,
            request_type: req.request_type,
            code: &code,
        };
        let fallback = active
            .fallback
            .as_ref()
            .and_then(|name| org_config.hooks.get(name))
            .filter(|f| f.name != active.name);
        let chain =
            std::iter::once((active, Via::Primary)).chain(fallback.map(|f| (f, Via::Fallback)));
        let url_path = format!("/v1/orgs/{org}/otp/send");
        let issued = IssuedOtp {
            id: transaction_id.clone(),
            org: org.to_string(),
            hook: active.name.clone(),
            code_hash: self.hasher.hash(&transaction_id, code.expose()),
            created_at_millis: now.timestamp_millis(),
            expires_at_millis: expires.timestamp_millis(),
            max_attempts: self.policy.max_attempts,
        };
        let stored = self.store_writer.issue(issued);
        let delivery = async {
            let mut failures = Vec::new();
            for (hook, via) in chain {
                let event_id = random_uuid();
                let event_time = rfc3339_millis(Utc::now());
                let source = preview::source(org, &hook.name);
                let body = HookRequest::new(&RequestParts {
                    event_id: &event_id,
                    event_time: &event_time,
                    source: &source,
                    url_path: &url_path,
                    request_type: req.request_type,
                    channel: req.channel,
                    phone_number: phone.as_str(),
                    code: code.expose(),
                    otp_expires: &expires_at,
                    message_template: &hook.message_template,
                    locale: req.locale.as_deref().unwrap_or(DEFAULT_LOCALE),
                    user: &req.user,
                    context: &req.context,
                })
                .to_bytes();
                let span = tracing::info_span!("hook_call", hook = %hook.name, via = via.as_str());
                let exchange = async {
                    let exchange = self.caller.call(hook, body, false).await;
                    self.executed(&ctx, hook, via, &exchange).await;
                    exchange
                }
                .instrument(span)
                .await;
                match exchange.verdict {
                    Verdict::Delivered(d) => {
                        return Ok(SendReceipt {
                            transaction_id: transaction_id.clone(),
                            status: d.status,
                            provider: d.provider.map(|p| scrub(&p, code.expose())),
                            provider_transaction_id: d.provider_transaction_id,
                            via,
                            hook: hook.name.clone(),
                            expires_at: expires_at.clone(),
                        });
                    }
                    Verdict::Failed(f) => failures.push(FailedAttempt {
                        hook: hook.name.clone(),
                        via,
                        reason_code: f.kind.code(),
                        reason: scrub(&f.reason(), code.expose()),
                        requests: exchange.attempts,
                        duration_millis: exchange.took.as_millis() as u64,
                    }),
                }
            }
            Err(failures)
        };
        let (stored, delivery) = tokio::join!(stored, delivery);
        if let Err(e) = stored {
            // Whatever the hook did, no replica can verify this code: the
            // caller hears of it, without the transaction id.
            self.metrics.send(org, "store_error");
            return Err(e.into());
        }
        match delivery {
            Ok(receipt) => {
                if receipt.via == Via::Fallback {
                    // Informational (verification does not read it).
                    let _ = self
                        .store_writer
                        .delivered_by(&transaction_id, &receipt.hook)
                        .await;
                }
                self.metrics.send(org, "delivered");
                Ok(receipt)
            }
            Err(attempts) => {
                // The code that went out must be valid nowhere before the
                // 502 names its transaction.
                if let Err(e) = self.store_writer.withdraw(&transaction_id).await {
                    self.metrics.send(org, "store_error");
                    return Err(e.into());
                }
                self.metrics.send(org, "failed");
                Err(TelephonyError::DeliveryFailed {
                    transaction_id,
                    attempts,
                })
            }
        }
    }

    /// Counts, tallies and logs one execution.
    async fn executed(&self, ctx: &SendContext<'_>, hook: &HookConfig, via: Via, ex: &Exchange) {
        let now = Utc::now();
        let time = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let millis = ex.took.as_millis() as u64;
        let code = ctx.code.expose();
        let (success, status, reason_code, reason, provider_tx) = match &ex.verdict {
            Verdict::Delivered(d) => (
                true,
                d.status.as_str(),
                None,
                None,
                d.provider_transaction_id.clone(),
            ),
            Verdict::Failed(f) => (
                false,
                "FAILED",
                Some(f.kind.code()),
                Some(scrub(&f.reason(), code)),
                None,
            ),
        };
        let provider = ex.verdict.provider().map(|p| scrub(p, code));
        let record = ExecutionRecord {
            org: ctx.org.to_string(),
            hook: hook.name.clone(),
            day: now.date_naive(),
            time: time.clone(),
            success,
            millis,
            failure_reason: reason.clone(),
        };
        self.hook_stats.record(&record);
        self.metrics
            .execution(ctx.org, &hook.name, success, ex.took.as_secs_f64());
        let masked = ctx.phone.masked();
        if success {
            tracing::info!(org = ctx.org, hook = %hook.name, via = via.as_str(), phone = %masked,
                millis, status, "OTP delivered");
        } else {
            tracing::warn!(org = ctx.org, hook = %hook.name, via = via.as_str(), phone = %masked,
                millis, reason = reason.as_deref().unwrap_or_default(), "OTP not delivered");
        }
        let detail = json!({
            "transactionId": ctx.transaction_id,
            "hook": hook.name,
            "via": via.as_str(),
            "provider": provider,
            "status": status,
            "providerTransactionId": provider_tx,
            "durationMillis": millis,
            "requests": ex.attempts,
            "httpStatus": ex.http_status,
            "reasonCode": reason_code,
            "reason": reason,
            "phone": masked,
            "channel": ctx.channel.as_str(),
            "requestType": ctx.request_type.as_str(),
        });
        let entry = LogEntry {
            org: ctx.org.to_string(),
            type_: "telephony.send".into(),
            outcome: if success { "SUCCESS" } else { "FAILURE" }.into(),
            time: rfc3339_millis(now),
            subject: format!("TelephonyHook/{}", hook.name),
            detail,
        };
        // The store writer only fails when shut down; numbers are in memory anyway.
        let _ = self.store_writer.execution(record).await;
        let _ = self.store_writer.log(entry).await;
    }

    /// Checks a code against a delivered passcode.
    #[tracing::instrument(name = "otp_verify", skip_all, fields(org = org, transaction_id = tracing::field::Empty))]
    pub async fn verify(
        &self,
        org: &str,
        req: VerifyRequest,
    ) -> Result<VerifyAnswer, TelephonyError> {
        if req.transaction_id.is_empty() || req.transaction_id.chars().count() > 128 {
            return Err(TelephonyError::InvalidRequest(
                "transactionId must be 1 to 128 characters".into(),
            ));
        }
        if req.code.is_empty() || req.code.chars().count() > 32 {
            return Err(TelephonyError::InvalidRequest(
                "code must be 1 to 32 characters".into(),
            ));
        }
        tracing::Span::current().record("transaction_id", req.transaction_id.as_str());
        let hasher = self.hasher.clone();
        let id = req.transaction_id.clone();
        let code = req.code;
        let matcher = Box::new(move |stored: &[u8]| hasher.matches(&id, &code, stored));
        let decision = self
            .store_writer
            .verify(
                &req.transaction_id,
                org,
                Utc::now().timestamp_millis(),
                matcher,
            )
            .await?;
        let Some(d) = decision else {
            self.metrics.verification(org, "unknown");
            return Err(TelephonyError::UnknownTransaction);
        };
        let result = serde_json::to_value(d.result)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        self.metrics.verification(org, &result);
        Ok(VerifyAnswer {
            transaction_id: req.transaction_id,
            result: d.result,
            reason: d.reason,
            attempts_remaining: d.attempts_remaining,
        })
    }

    /// Builds, shows and (unless `send: false`) sends a preview to `name`.
    #[tracing::instrument(name = "otp_preview", skip_all, fields(org = org, hook = name))]
    pub async fn preview(
        &self,
        org: &str,
        name: &str,
        req: PreviewRequest,
    ) -> Result<Value, TelephonyError> {
        let snapshot = self.snapshot();
        let org_config = snapshot.org(org);
        let Some(hook) = org_config.and_then(|c| c.hooks.get(name)) else {
            let known: Vec<String> = org_config
                .map(|c| c.hooks.keys().cloned().collect())
                .unwrap_or_default();
            return Err(TelephonyError::UnknownHook {
                org: org.to_string(),
                name: name.to_string(),
                known,
            });
        };
        let active = org_config.and_then(|c| c.active_hook.as_deref()) == Some(name);
        let request = match req.request {
            Some(r) if r.is_object() => r,
            Some(_) => {
                return Err(TelephonyError::InvalidRequest(
                    "request must be a JSON object (the whole body sent to the hook)".into(),
                ));
            }
            None => {
                let Some(phone) = req.input.phone_number.as_deref() else {
                    return Err(TelephonyError::InvalidRequest(
                        "phoneNumber is required unless request is given".into(),
                    ));
                };
                let phone = PhoneNumber::parse(phone).map_err(TelephonyError::InvalidPhone)?;
                preview::build_request(
                    org,
                    hook,
                    &req.input,
                    phone.as_str(),
                    self.policy.lifetime,
                    self.policy.code_length,
                )
            }
        };
        let headers: Vec<Value> = preview::redacted_headers(hook)
            .into_iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        let mut report = json!({
            "org": org,
            "hook": name,
            "active": active,
            "method": "POST",
            "url": crate::egress::redact_userinfo(&hook.url),
            "headers": headers,
            "request": request,
            "sent": false,
            "note": "a preview's code is never stored and never valid for verification",
        });
        if !req.send {
            return Ok(report);
        }
        // A preview reaches a real phone: the same guard applies.
        let phone = preview::phone_of(&request).ok_or_else(|| {
            TelephonyError::InvalidRequest("request has no data.messageProfile.phoneNumber".into())
        })?;
        let phone = PhoneNumber::parse(phone).map_err(TelephonyError::InvalidPhone)?;
        self.admit(org, &phone).await?;
        let outcome = preview::send(&self.caller, hook, &request).await;
        let success = matches!(outcome.exchange.verdict, Verdict::Delivered(_));
        self.metrics.preview(org, name, success);
        let now = Utc::now();
        let summary = outcome.summary();
        self.module_fields.set(
            &hook_key(org, name),
            "lastPreview",
            json!({"time": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "result": summary}),
        );
        let _ = self
            .store_writer
            .log(LogEntry {
                org: org.to_string(),
                type_: "telephony.preview".into(),
                outcome: if success { "SUCCESS" } else { "FAILURE" }.into(),
                time: rfc3339_millis(now),
                subject: format!("TelephonyHook/{name}"),
                detail: json!({
                    "hook": name,
                    "result": summary,
                    "phone": phone.masked(),
                    "durationMillis": outcome.exchange.took.as_millis() as u64,
                }),
            })
            .await;
        report["sent"] = json!(true);
        if let (Some(map), Value::Object(extra)) = (report.as_object_mut(), outcome.to_json()) {
            map.extend(extra);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_hides_the_code() {
        assert_eq!(
            scrub("bad code 123456 for +1", "123456"),
            "bad code <code> for +1"
        );
        assert_eq!(scrub("nothing", ""), "nothing");
    }

    #[test]
    fn send_request_parses_and_refuses_unknown_fields() {
        let ok: SendRequest = serde_json::from_value(json!({
            "phoneNumber": "+14155550123", "channel": "voice", "requestType": "account-unlock",
            "user": {"id": "u1", "login": "a@b.c"}
        }))
        .unwrap();
        assert_eq!(ok.channel, Channel::Voice);
        assert_eq!(ok.request_type, RequestType::AccountUnlock);
        for bad in [
            json!({"phoneNumber": "+1", "channel": "fax", "requestType": "enrollment", "user": {"id": "u", "login": "l"}}),
            json!({"phoneNumber": "+1", "channel": "sms", "requestType": "signup", "user": {"id": "u", "login": "l"}}),
            json!({"phoneNumber": "+1", "channel": "sms", "requestType": "enrollment", "user": {"id": "u"}}),
            json!({"phoneNumber": "+1", "channel": "sms", "requestType": "enrollment", "user": {"id": "u", "login": "l"}, "extra": 1}),
        ] {
            assert!(
                serde_json::from_value::<SendRequest>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let p: PreviewRequest =
            serde_json::from_value(json!({"phoneNumber": "+14155550123"})).unwrap();
        assert!(p.send && p.request.is_none());
        assert_eq!(p.input.request_type, RequestType::Verification);
    }
}
