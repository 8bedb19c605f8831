//! The module's HTTP routes and their OpenAPI entries. Handlers (called
//! once the API has authorized the caller for the org) hand the body to
//! [`OtpSender`] and turn its errors into API errors with stable codes.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use super::TelephonyError;
use super::sender::{
    OtpSender, PreviewRequest, SendReceipt, SendRequest, VerifyAnswer, VerifyRequest,
};
use crate::http::{ApiError, Endpoint, JsonBody, Routes};

/// The module's routes and their descriptions.
pub(super) fn routes(sender: Arc<OtpSender>) -> Routes {
    Routes {
        router: router(sender),
        operations: super::openapi::operations(),
    }
}

fn router(sender: Arc<OtpSender>) -> Router {
    Router::new()
        .route("/v1/orgs/{org}/otp/send", post(send))
        .route("/v1/orgs/{org}/otp/verify", post(verify))
        .route(
            "/v1/orgs/{org}/telephony-hooks/{name}/preview",
            post(preview),
        )
        .layer(Extension(sender))
}

/// `Retry-After` of a 503 `store_unavailable`: a user is waiting for the
/// passcode, and a replica reconnects within seconds.
const STORE_RETRY_AFTER_SECS: u64 = 2;

impl From<TelephonyError> for ApiError {
    fn from(e: TelephonyError) -> Self {
        let message = e.to_string();
        match e {
            TelephonyError::InvalidPhone(_) => {
                ApiError::bad_request("invalid_phone_number", message)
            }
            TelephonyError::InvalidRequest(_) => ApiError::bad_request("invalid_request", message),
            TelephonyError::NoActiveHook(_) => {
                ApiError::new(StatusCode::CONFLICT, "no_active_hook", message)
            }
            TelephonyError::UnknownHook { .. } => ApiError::not_found("unknown_hook", message),
            TelephonyError::CountryNotAllowed { allowed, .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "country_not_allowed", message)
                    .with_details(json!({"allowedCountryCodes": allowed}))
            }
            TelephonyError::RateLimited(refusal) => {
                let code = match refusal.scope {
                    super::guard::Scope::Phone => "phone_rate_limited",
                    super::guard::Scope::Org => "org_rate_limited",
                };
                let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message);
                error.retry_after = Some(refusal.retry_after_secs());
                error.with_details(json!({"retryAfterSeconds": refusal.retry_after_secs()}))
            }
            TelephonyError::DeliveryFailed {
                transaction_id,
                attempts,
            } => ApiError::new(StatusCode::BAD_GATEWAY, "delivery_failed", message)
                .with_details(json!({"transactionId": transaction_id, "attempts": attempts})),
            TelephonyError::UnknownTransaction => {
                ApiError::not_found("unknown_transaction", message)
            }
            TelephonyError::StoreUnavailable(_) => {
                let mut error = ApiError::store_unavailable(message);
                error.retry_after = Some(STORE_RETRY_AFTER_SECS);
                error
            }
            TelephonyError::Store(_) => ApiError::internal(message),
        }
    }
}

async fn send(
    Extension(sender): Extension<Arc<OtpSender>>,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<SendRequest>,
) -> Result<Json<SendReceipt>, ApiError> {
    Ok(Json(sender.send(&org, body).await?))
}

async fn verify(
    Extension(sender): Extension<Arc<OtpSender>>,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<VerifyRequest>,
) -> Result<Json<VerifyAnswer>, ApiError> {
    Ok(Json(sender.verify(&org, body).await?))
}

async fn preview(
    Extension(sender): Extension<Arc<OtpSender>>,
    Path((org, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<PreviewRequest>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(sender.preview(&org, &name, body).await?))
}

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: "post",
            path: "/v1/orgs/{org}/otp/send",
            summary: "Send a one-time passcode by SMS or voice through the org's active TelephonyHook (fallback on failure); 429 with Retry-After over a limit, 502 when every hook failed",
        },
        Endpoint {
            method: "post",
            path: "/v1/orgs/{org}/otp/verify",
            summary: "Verify a passcode: verified, invalid, expired or locked",
        },
        Endpoint {
            method: "post",
            path: "/v1/orgs/{org}/telephony-hooks/{name}/preview",
            summary: "Build, show (secrets redacted) and send a preview request to a hook, active or not; its code is never valid",
        },
    ]
}
