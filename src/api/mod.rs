//! The runtime HTTP API (axum): health, readiness, metrics, the OpenAPI
//! document, and `/v1/orgs/{org}/...` for identity services. Every `/v1`
//! call is authenticated and authorized for its org. Handlers read the
//! index's newest snapshot; none calls the apiserver for configuration.

pub mod auth;
pub mod objects;
pub mod openapi;
pub mod server;
pub mod starting;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::controller::conditions::desired_status;
use crate::http::{ApiError, MAX_BODY_BYTES, Routes};
use crate::resources::ObjectKey;
use crate::runtime::Context;
use crate::telemetry::{RequestLabel, RouteLabel};
pub use auth::Authenticator;

/// What the API's own handlers and layers reach: the process's context and
/// how callers are authenticated.
pub struct ApiState {
    pub ctx: Context,
    pub auth: Authenticator,
    /// `run` mode on PostgreSQL: status is stored in the database by
    /// whichever process holds the lock (`store::leader`), so `/status`
    /// reads it there. In a cluster status lives on the objects, and this
    /// process's own view is served without touching the database.
    pub status_in_store: bool,
}

type SharedState = Arc<ApiState>;

impl ApiState {
    /// The newest snapshot.
    fn snapshot(&self) -> Arc<crate::index::Snapshot> {
        self.ctx.snapshot()
    }

    /// Checks the caller for `org`.
    pub async fn authorize(&self, headers: &HeaderMap, org: &str) -> Result<String, ApiError> {
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.auth.authorize(header, org).await
    }
}

/// The router with every route: the API's own and the modules' `routes`,
/// every `/v1/orgs/{org}/…` one behind readiness and authorization, and
/// `/openapi.json` describing them all.
pub fn router(state: ApiState, modules: Vec<Routes>) -> Router {
    let state: SharedState = Arc::new(state);
    let mut operations = openapi::operations();
    // Every `/v1/orgs/{org}/…` route, the modules' included.
    let mut orgs: Router = Router::new()
        .route("/v1/orgs/{org}/config", get(org_config))
        .route("/v1/orgs/{org}/status", get(org_status))
        .route("/v1/orgs/{org}/events", get(org_events))
        .with_state(state.clone());
    for module in modules {
        orgs = orgs.merge(module.router);
        operations.extend(module.operations);
    }
    let document = Json(openapi::document(operations));
    let orgs = orgs
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize_org,
        ))
        // Added last, so it runs first: before the first full sync nothing
        // under an org is answered, not even to check a token.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_synced,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(move || async move { document }))
        .with_state(state.clone())
        .merge(orgs)
        .fallback(|| async {
            ApiError::not_found("not_found", "no such endpoint; see /openapi.json")
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Authorizes each `/v1/orgs/{org}/…` call for its org before the handler
/// runs and before the body is read: in one place, so that no route can
/// leave it out, and a caller without access learns nothing from the
/// validation of its request.
async fn authorize_org(
    State(state): State<SharedState>,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let org = params
        .get("org")
        .ok_or_else(|| ApiError::internal("this route has no {org} to authorize"))?;
    state.authorize(request.headers(), org).await?;
    Ok(next.run(request).await)
}

/// 503 `not_ready` for every `/v1/orgs/{org}/…` call until the first full
/// sync: until then an org's policies may be missing or partial, and an
/// answer built from them could let users in with less than their policy
/// requires. It runs before authorization: `/readyz` tells anyone the same
/// thing, and a token check (a TokenReview in a cluster) is not worth
/// making for a call refused anyway.
async fn require_synced(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !state.snapshot().synced {
        return Err(not_ready());
    }
    Ok(next.run(request).await)
}

/// The answer of `/readyz` and of every org call before the first full sync.
fn not_ready() -> ApiError {
    let mut error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "the first full sync is not done yet",
    );
    error.retry_after = Some(1);
    error
}

async fn count_requests(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let start = std::time::Instant::now();
    // One span per request: what each line logged while serving it is for.
    let span = tracing::info_span!("request", method = %method, route = %route);
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    let seconds = start.elapsed().as_secs_f64();
    let label = RouteLabel { method, route };
    state
        .ctx
        .metrics
        .http_request_duration
        .get_or_create(&label)
        .observe(seconds);
    state
        .ctx
        .metrics
        .http_requests
        .get_or_create(&RequestLabel {
            method: label.method,
            route: label.route,
            code: response.status().as_u16(),
        })
        .inc();
    response
}

async fn readyz(State(state): State<SharedState>) -> Response {
    if state.snapshot().synced {
        (StatusCode::OK, "ready").into_response()
    } else {
        not_ready().into_response()
    }
}

async fn metrics(State(state): State<SharedState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.ctx.metrics.encode(),
    )
        .into_response()
}

async fn org_config(
    State(state): State<SharedState>,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = state.snapshot();
    let config = snapshot
        .org(&org)
        .map(|c| serde_json::to_value(c.as_ref()).unwrap_or(Value::Null))
        .unwrap_or_else(|| json!({}));
    Ok(Json(
        json!({"org": org, "snapshotVersion": snapshot.version, "config": config}),
    ))
}

/// Every object of the org with the status idplane gives it.
async fn org_status(
    State(state): State<SharedState>,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = state.snapshot();
    // Processes sharing a PostgreSQL database in `run` mode: one writes
    // status (see `store::leader`); every one shows what it wrote.
    let stored: HashMap<ObjectKey, Value> = if state.status_in_store {
        state
            .ctx
            .store
            .org_statuses(&org)
            .await
            .map_err(store_error)?
            .into_iter()
            .collect()
    } else {
        HashMap::new()
    };
    let written = state.ctx.written.read().await;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let objects: Vec<Value> = snapshot
        .objects
        .org(&org)
        .map(|(k, view)| {
            let status = stored
                .get(k)
                .or_else(|| written.get(k))
                .cloned()
                .unwrap_or_else(|| {
                    desired_status(
                        k,
                        view,
                        state.ctx.module_fields.get(k).as_ref(),
                        view.observed_status.as_deref(),
                        &now,
                    )
                });
            json!({"kind": k.kind, "name": k.name, "generation": view.generation, "status": status})
        })
        .collect();
    Ok(Json(json!({"org": org, "objects": objects})))
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    #[serde(rename = "type")]
    type_: Option<String>,
    outcome: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

/// Whether `outcome` is written as the log writes outcomes (SUCCESS,
/// FAILURE, WARNING...): a typo then gets a 400, not an empty page.
fn is_outcome(outcome: &str) -> bool {
    (1..=32).contains(&outcome.len())
        && outcome.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

/// The org's system log, oldest first, with cursor pagination; by type
/// and outcome (e.g. `type=email.delivery&outcome=FAILURE`).
async fn org_events(
    State(state): State<SharedState>,
    Path(org): Path<String>,
    Query(q): Query<EventQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 1000",
        ));
    }
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(c) => c.parse::<i64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "after must be a cursor returned as nextCursor",
            )
        })?,
    };
    if let Some(outcome) = q.outcome.as_deref()
        && !is_outcome(outcome)
    {
        return Err(ApiError::bad_request(
            "invalid_outcome",
            "outcome must be an outcome in capitals, such as SUCCESS, FAILURE or WARNING",
        ));
    }
    let filter = crate::store::EventFilter {
        type_: q.type_.as_deref(),
        outcome: q.outcome.as_deref(),
    };
    let events = state
        .ctx
        .store
        .events(&org, &filter, after, limit)
        .await
        .map_err(store_error)?;
    let next = if events.len() as i64 == limit {
        events.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(Json(json!({"events": events, "nextCursor": next})))
}

/// A store error as the API answers it: 503 `store_unavailable` when the
/// database cannot be reached, else 500.
fn store_error(e: crate::store::StoreError) -> ApiError {
    match &e {
        crate::store::StoreError::Sql(source) if crate::store::is_unavailable(source) => {
            ApiError::store_unavailable(format!("the database cannot be reached: {source}"))
        }
        _ => ApiError::internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::module_fields::ModuleFields;
    use crate::controller::status_writer::WrittenStatuses;
    use crate::index::{Referenced, Snapshot};
    use crate::runtime::Stop;
    use crate::store::Store;
    use crate::telemetry::Metrics;
    use tokio::sync::watch;
    use tower::ServiceExt;

    /// A route put under the authorizing layer without an `{org}` is an
    /// error for every caller, never a route that skips authorization.
    #[tokio::test]
    async fn a_route_without_an_org_is_refused_not_left_open() {
        let synced = Snapshot {
            synced: true,
            ..Snapshot::default()
        };
        let (_keep, snapshots) = watch::channel(Arc::new(synced));
        let ctx = Context {
            changes: tokio::sync::mpsc::channel(1).0,
            snapshots,
            referenced: watch::channel(Referenced::default()).1,
            store: Store::memory().await.unwrap(),
            metrics: Arc::new(Metrics::new()),
            module_fields: Arc::new(ModuleFields::default()),
            written: WrittenStatuses::default(),
            stop: Stop::default(),
        };
        let state = ApiState {
            ctx,
            auth: Authenticator::Tokens(auth::TokenFile { tokens: vec![] }),
            status_in_store: false,
        };
        let orgless = Routes {
            router: Router::new().route("/v1/orgless", get(|| async { "open" })),
            operations: Vec::new(),
        };
        let response = router(state, vec![orgless])
            .oneshot(
                axum::http::Request::get("/v1/orgless")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            error,
            json!({"code": "internal", "message": "this route has no {org} to authorize"})
        );
    }
}
