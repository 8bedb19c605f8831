//! What the runtime modules (telephony, email, enrollment) receive when they
//! start: the index's snapshots, the store, metrics and the status module_fields.
//! Each module returns the routes it serves under `/v1/orgs/{org}/...`.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::controller::module_fields::ModuleFields;
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
    pub module_fields: Arc<ModuleFields>,
    /// The process's stop: modules stop taking new work when it is
    /// requested and run what must finish first on its tracker.
    pub stop: Stop,
}

/// A graceful stop (SIGTERM): `requested` is cancelled once; `served` once
/// the API has answered its last request (so that what requests left
/// queued can be flushed after it); the process exits when every task on
/// `tracker` has ended or the grace period runs out, whichever comes first.
#[derive(Clone, Default)]
pub struct Stop {
    pub requested: CancellationToken,
    pub served: CancellationToken,
    pub tracker: TaskTracker,
}

/// A module could not start (bad settings, store unavailable...).
#[derive(Debug, thiserror::Error)]
#[error("{module}: {message}")]
pub struct StartError {
    pub module: &'static str,
    pub message: String,
}
