//! Placeholder: the telephony runtime module is being built (see its issue).

use axum::Router;

use crate::api::SharedState;
use crate::api::openapi::Endpoint;
use crate::runtime::{ModuleContext, StartError};

/// Command-line settings of the telephony module (flattened into `run` and `operator`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TelephonySettings {}

/// Starts the module's background work and returns its routes.
pub async fn start(_ctx: ModuleContext, _settings: TelephonySettings) -> Result<Router<SharedState>, StartError> {
    Ok(Router::new())
}

/// The module's endpoints, for `/openapi.json`.
pub fn openapi_endpoints() -> Vec<Endpoint> {
    Vec::new()
}
