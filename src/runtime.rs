//! What the runtime modules (telephony, email, enrollment) receive when they
//! start: the index's snapshots, the store, metrics and the status extras.
//! Each module returns the routes it serves under `/v1/orgs/{org}/...`.

use std::sync::Arc;

use tokio::sync::watch;

use crate::controller::extras::StatusExtras;
use crate::index::Snapshot;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Shared handles for a runtime module.
#[derive(Clone)]
pub struct ModuleContext {
    /// The newest configuration; modules read it, never the apiserver.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Persistence (SQLite by default).
    pub store: Store,
    /// Prometheus registry and shared counters.
    pub metrics: Arc<Metrics>,
    /// Where modules publish status fields (metrics, test results...).
    pub extras: Arc<StatusExtras>,
}

/// A module could not start (bad settings, store unavailable...).
#[derive(Debug, thiserror::Error)]
#[error("{module}: {message}")]
pub struct StartError {
    pub module: &'static str,
    pub message: String,
}
