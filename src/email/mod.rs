//! Placeholder: the email runtime module is being built (see its issue).

use axum::Router;

use crate::api::SharedState;
use crate::api::openapi::Endpoint;
use crate::runtime::{ModuleContext, StartError};

/// Command-line settings of the email module (flattened into `run` and `operator`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EmailSettings {}

/// Starts the module's background work and returns its routes.
pub async fn start(_ctx: ModuleContext, _settings: EmailSettings) -> Result<Router<SharedState>, StartError> {
    Ok(Router::new())
}

/// The module's endpoints, for `/openapi.json`.
pub fn openapi_endpoints() -> Vec<Endpoint> {
    Vec::new()
}
