//! The enrollment route, `POST /v1/orgs/{org}/enrollment/evaluate`, and its
//! description. The handler finds the org's engine through [`Engines`], so
//! that this module knows nothing of where engines are kept (the index
//! builds them with each snapshot).

use std::sync::Arc;

use axum::extract::{FromRequest, Path, Request};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::Value;

use super::{EnrollmentEngine, EvaluateError, EvaluationRequest};
use crate::http::{ApiError, JsonBody, Routes};

/// An org's engine, or `None` for an org idplane knows no object in.
pub type Engines = Arc<dyn Fn(&str) -> Option<Arc<EnrollmentEngine>> + Send + Sync>;

/// The module's route and its description.
pub fn routes(engines: Engines) -> Routes {
    Routes {
        router: Router::new()
            .route("/v1/orgs/{org}/enrollment/evaluate", post(evaluate))
            .layer(Extension(engines)),
        operations: super::openapi::operations(),
    }
}

/// Which authenticators a user must, may or may not enroll at this sign-in.
/// The org is checked before the body is read, so that a typo in the org is
/// reported as such whatever the body.
async fn evaluate(
    Extension(engines): Extension<Engines>,
    Path(org): Path<String>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let engine = engines(&org).ok_or_else(|| org_not_found(&org))?;
    let JsonBody(request) = JsonBody::<EvaluationRequest>::from_request(request, &()).await?;
    let evaluation = engine
        .evaluate(&request)
        .map_err(|e| evaluate_error(&org, &e))?;
    serde_json::to_value(&evaluation)
        .map(Json)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// 404 for an org idplane knows no object of: a typo in the org, or an org
/// whose objects have not arrived, must not get an answer as if it had no
/// policy.
fn org_not_found(org: &str) -> ApiError {
    ApiError::not_found(
        "org_not_found",
        format!(
            "org {org}: idplane knows no object in this org (namespace); check the org in the path"
        ),
    )
}

/// The API answer for an enrollment the engine refuses. The request is
/// fine when no policy covers the user: 409, for the org's configuration
/// (its state) is what is missing, not something in the request, and
/// retrying does not help until a default policy is added.
fn evaluate_error(org: &str, e: &EvaluateError) -> ApiError {
    match e {
        EvaluateError::NoDefaultPolicy => ApiError::new(
            StatusCode::CONFLICT,
            "no_default_policy",
            format!("org {org}: {e}"),
        ),
        _ => ApiError::bad_request("invalid_request", e.to_string()),
    }
}
