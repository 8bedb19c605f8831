//! `GET /v1/orgs/{org}/objects`, served by `idplane run` only: the org's
//! objects as it loaded them from its files (idplane's kinds and v1
//! Secrets), the live side of `idplane diff --server`. A Secret's values
//! never leave the process: each is replaced by its HMAC-SHA256 under a
//! random salt made for the answer (`diff::digest`), which `idplane diff`
//! computes again from the manifest's value to tell a changed value from a
//! kept one. Behind the same readiness and per-org authorization as every
//! `/v1/orgs/{org}/…` route (`api::router` puts it there).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::http::{Operation, Routes};

/// Every document `idplane run` read at its last successful load of the
/// manifest directory, as read (Secret values included: they stay here).
pub type Loaded = watch::Receiver<Arc<Vec<Value>>>;

struct ObjectsState {
    loaded: Loaded,
    /// `idplane run -n`: the namespace of documents that name none.
    default_namespace: String,
}

/// The route and its description.
pub fn routes(loaded: Loaded, default_namespace: String) -> Routes {
    let state = Arc::new(ObjectsState {
        loaded,
        default_namespace,
    });
    Routes {
        router: Router::new()
            .route("/v1/orgs/{org}/objects", get(org_objects))
            .with_state(state),
        operations: operations(),
    }
}

async fn org_objects(
    State(state): State<Arc<ObjectsState>>,
    Path(org): Path<String>,
) -> Json<Value> {
    let loaded = state.loaded.borrow().clone();
    let salt: [u8; 32] = rand::random();
    let objects = crate::diff::served(&loaded, &org, &state.default_namespace, &salt);
    Json(json!({
        "org": org,
        "objects": objects,
        "digestSalt": base64::engine::general_purpose::STANDARD.encode(salt),
    }))
}

/// The description of the route, for `/openapi.json`.
pub fn operations() -> Vec<Operation> {
    vec![
        Operation::get(
            "/v1/orgs/{org}/objects",
            "listOrgObjects",
            "The org's objects as `idplane run` loaded them from its files, Secret values as digests",
        )
        .description("Served by `idplane run` only (the operator's objects are the cluster's): what `idplane diff --server` compares manifests with. idplane's kinds and v1 Secrets, each with its namespace and without server-managed fields. A Secret's `data` maps each key to the hex HMAC-SHA256 of its value keyed with the answer's `digestSalt` (decoded from base64), a new random salt per answer; values are never served.")
        .answer(
            200,
            "The org's objects (none for an org idplane knows nothing of)",
            json!({"type": "object", "required": ["org", "objects", "digestSalt"], "properties": {
                "org": {"type": "string"},
                "objects": {"type": "array", "items": {"type": "object", "required": ["apiVersion", "kind", "metadata"], "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object", "required": ["namespace"], "properties": {
                        "name": {"type": "string"},
                        "namespace": {"type": "string"},
                    }},
                }}},
                "digestSalt": {"type": "string", "pattern": "^[A-Za-z0-9+/]{43}=$",
                    "description": "32 random bytes, base64: the HMAC key of this answer's Secret digests"},
            }}),
        ),
    ]
}
