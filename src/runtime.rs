//! The one context of a running idplane (`operator` or `run`): the
//! channels into and out of the index, the store, metrics, the status
//! written and the fields the modules add to it, and the process's stop.
//! `cli::serve` fills it once; the sources, the status writer, the runtime
//! modules (telephony, email) and the API server each take what they need
//! from it. Each runtime module's `start` returns the [`Routes`] it serves.
//!
//! [`Routes`]: crate::http::Routes

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::controller::module_fields::ModuleFields;
use crate::controller::status_writer::WrittenStatuses;
use crate::index::{Change, Referenced, Snapshot};
use crate::store::Store;
use crate::telemetry::Metrics;

/// Shared handles of a running idplane.
#[derive(Clone)]
pub struct Context {
    /// Where the sources send changes; the index writer is the only reader.
    pub changes: mpsc::Sender<Change>,
    /// The newest configuration; modules read it, never the apiserver.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The Secrets the objects reference, for the Secret watches.
    pub referenced: watch::Receiver<Referenced>,
    /// Persistence (SQLite by default).
    pub store: Store,
    /// Prometheus registry and shared counters.
    pub metrics: Arc<Metrics>,
    /// Where modules publish status fields (metrics, test results...).
    pub module_fields: Arc<ModuleFields>,
    /// The status last written for each object (`/v1/orgs/{org}/status`).
    pub written: WrittenStatuses,
    /// The process's stop: modules stop taking new work when it is
    /// requested and run what must finish first on its tracker.
    pub stop: Stop,
}

impl Context {
    /// The newest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }
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
