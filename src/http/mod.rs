//! The HTTP pieces every module that serves the runtime API shares: the
//! error answer ([`ApiError`]), JSON bodies ([`JsonBody`], [`wire`]), the
//! description of an operation ([`Operation`]) and what a module hands the
//! API server: its [`Routes`]. A leaf: it imports nothing else of idplane,
//! so that the modules and the API server both build on it.

pub mod error;
pub mod operation;
pub mod wire;

pub use error::{ApiError, JsonBody};
pub use operation::{Endpoint, Operation};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What a module serves under `/v1/orgs/{org}/…`: its router (its own
/// state already given) and the description of each of its operations.
/// The API server puts the routes behind its readiness and authorization
/// layers and the operations into `/openapi.json`.
pub struct Routes {
    pub router: axum::Router,
    pub operations: Vec<Operation>,
}
