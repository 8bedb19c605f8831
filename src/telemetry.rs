//! Prometheus metrics of the process, with conventional names. One
//! [`Metrics`] is shared by every part; `/metrics` encodes its registry.
//! A leaf: callers report plain numbers, so it imports no other module.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub method: String,
    pub route: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    pub route: String,
}

/// Buckets of request durations: 0.25 ms to about 4 s, doubling; fine
/// enough at the low end to watch an accept-latency aim of a few ms.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 15))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub reconciles: Counter,
    pub reconcile_errors: Family<SourceLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub index_objects: Family<KindLabel, Gauge>,
    pub index_orgs: Gauge,
    pub status_writes: Family<ResultLabel, Counter>,
    pub http_requests: Family<RequestLabel, Counter>,
    pub http_request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("idplane");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<SourceLabel, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let index_objects = Family::<KindLabel, Gauge>::default();
        let index_orgs = Gauge::default();
        let status_writes = Family::<ResultLabel, Counter>::default();
        let http_requests = Family::<RequestLabel, Counter>::default();
        let http_request_duration =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                request_histogram,
            );
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Index rebuilds (each applies a batch of changes)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Errors while watching, resolving or writing status, by source",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time to validate and rebuild the index for a batch of changes",
            reconcile_duration.clone(),
        );
        registry.register(
            "index_objects",
            "idplane objects in the index, by kind",
            index_objects.clone(),
        );
        registry.register(
            "index_orgs",
            "Orgs (namespaces) with at least one object",
            index_orgs.clone(),
        );
        registry.register(
            "status_writes",
            "Status writes by result: ok, error, unchanged (skipped), gone (object deleted meanwhile), throttled (the apiserver shed load: every write paused)",
            status_writes.clone(),
        );
        registry.register(
            "http_requests",
            "Runtime API requests",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Runtime API requests from routing to the response, authorization and handler included, by method and route",
            http_request_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the status-writer Lease",
            leader.clone(),
        );
        // Publish the usual series from the start, at zero.
        for result in ["ok", "unchanged", "error", "gone", "throttled"] {
            let _ = status_writes.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        for source in ["watch", "secret_watch", "status_write"] {
            let _ = reconcile_errors.get_or_create(&SourceLabel {
                source: source.into(),
            });
        }
        Self {
            registry: Mutex::new(registry),
            reconciles,
            reconcile_errors,
            reconcile_duration,
            index_objects,
            index_orgs,
            status_writes,
            http_requests,
            http_request_duration,
            leader,
        }
    }

    /// Lets other modules add their own metrics to the registry.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// Records one index rebuild: how long it took, and what the published
    /// snapshot holds (objects per kind, orgs).
    pub fn observe_rebuild(&self, took: Duration, objects_by_kind: &[(&str, usize)], orgs: usize) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        for (kind, n) in objects_by_kind {
            self.index_objects
                .get_or_create(&KindLabel {
                    kind: (*kind).into(),
                })
                .set(*n as i64);
        }
        self.index_orgs.set(orgs as i64);
    }

    pub fn error(&self, source: &str) {
        self.reconcile_errors
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .inc();
    }

    pub fn status_write(&self, result: &str) {
        self.status_writes
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}
