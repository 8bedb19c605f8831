//! Delivery numbers: Prometheus counters, and each org provider's
//! `status.metrics`, published at most once a second through the status
//! module_fields. The numbers start from what the store holds, so a restart does
//! not reset them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde_json::json;
use tokio::sync::{Notify, watch};

use super::queue::ProviderTotals;
use crate::controller::module_fields::ModuleFields;
use crate::index::Snapshot;
use crate::telemetry::Metrics;
use crate::validate::ObjectKey;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// SUCCESS or FAILURE.
    pub outcome: String,
    /// `custom` (the org's EmailProvider) or `default`.
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabel {
    /// sent, transient or permanent.
    pub result: String,
}

/// The module's Prometheus metrics.
#[derive(Clone)]
struct Prometheus {
    accepted: Counter,
    events: Family<OutcomeLabel, Counter>,
    attempts: Family<AttemptLabel, Counter>,
    delivery_seconds: Histogram,
    pending: Gauge,
}

#[derive(Clone, Debug, Default)]
struct ProviderNumbers {
    sent: u64,
    retried: u64,
    failed: u64,
    delivery_millis: u64,
    last_delivery: Option<i64>,
    last_failure: Option<(i64, String)>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, u64>,
    /// By (org, provider name).
    providers: HashMap<(String, String), ProviderNumbers>,
    dirty: HashSet<String>,
}

/// Counts deliveries; one per process.
pub struct DeliveryStats {
    inner: Mutex<Inner>,
    prom: Prometheus,
    changed: Notify,
}

/// Which provider an attempt used: the org's (by name) or the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    Custom(String),
    Default,
}

impl Via {
    /// As stored and shown: `EmailProvider/NAME` or `default`.
    pub fn label(&self) -> String {
        match self {
            Self::Custom(n) => format!("EmailProvider/{n}"),
            Self::Default => "default".into(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Custom(_) => "custom",
            Self::Default => "default",
        }
    }
}

fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl DeliveryStats {
    /// Registers the metrics and starts from the stored totals.
    pub fn new(
        metrics: &Metrics,
        pending: HashMap<String, u64>,
        totals: Vec<ProviderTotals>,
    ) -> Self {
        let prom = Prometheus {
            accepted: Counter::default(),
            events: Family::default(),
            attempts: Family::default(),
            delivery_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            pending: Gauge::default(),
        };
        metrics.register(
            "email_accepted",
            "Emails accepted through the API (idempotent repeats not counted)",
            prom.accepted.clone(),
        );
        metrics.register(
            "email_delivery_events",
            "Delivery events by outcome (SUCCESS, FAILURE) and provider (custom, default)",
            prom.events.clone(),
        );
        metrics.register(
            "email_attempts",
            "SMTP delivery attempts by result (sent, transient, permanent)",
            prom.attempts.clone(),
        );
        metrics.register(
            "email_delivery_seconds",
            "Time from accept to delivery of sent emails",
            prom.delivery_seconds.clone(),
        );
        metrics.register(
            "email_pending",
            "Emails queued, sending or waiting for a retry",
            prom.pending.clone(),
        );
        for outcome in ["SUCCESS", "FAILURE"] {
            for provider in ["custom", "default"] {
                let _ = prom.events.get_or_create(&OutcomeLabel {
                    outcome: outcome.into(),
                    provider: provider.into(),
                });
            }
        }
        for result in ["sent", "transient", "permanent"] {
            let _ = prom.attempts.get_or_create(&AttemptLabel {
                result: result.into(),
            });
        }
        prom.pending.set(pending.values().sum::<u64>() as i64);
        let mut inner = Inner {
            pending,
            ..Default::default()
        };
        for t in totals {
            let name = t.provider.trim_start_matches("EmailProvider/").to_string();
            inner.dirty.insert(t.org.clone());
            inner.providers.insert(
                (t.org, name),
                ProviderNumbers {
                    sent: t.sent,
                    retried: t.retried,
                    failed: t.failed,
                    delivery_millis: t.delivery_millis,
                    last_delivery: t.last_delivery,
                    last_failure: t.last_failure,
                },
            );
        }
        inner.dirty.extend(inner.pending.keys().cloned());
        Self {
            inner: Mutex::new(inner),
            prom,
            changed: Notify::new(),
        }
    }

    fn update(&self, org: &str, f: impl FnOnce(&mut Inner)) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner);
        inner.dirty.insert(org.to_string());
        drop(inner);
        self.changed.notify_one();
    }

    pub fn accepted(&self, org: &str) {
        self.prom.accepted.inc();
        self.prom.pending.inc();
        self.update(org, |i| *i.pending.entry(org.to_string()).or_default() += 1);
    }

    /// A transient failure that will be retried.
    pub fn retried(&self, org: &str, via: &Via) {
        self.attempt("transient");
        if let Via::Custom(name) = via {
            self.update(org, |i| {
                i.providers
                    .entry((org.to_string(), name.clone()))
                    .or_default()
                    .retried += 1;
            });
        }
    }

    fn attempt(&self, result: &str) {
        self.prom
            .attempts
            .get_or_create(&AttemptLabel {
                result: result.into(),
            })
            .inc();
    }

    fn finished(&self, org: &str, via: &Via, outcome: &str) {
        self.prom.pending.dec();
        self.prom
            .events
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
                provider: via.kind().into(),
            })
            .inc();
        self.update(org, |i| {
            if let Some(n) = i.pending.get_mut(org) {
                *n = n.saturating_sub(1);
            }
        });
    }

    pub fn sent(&self, org: &str, via: &Via, accepted_at: i64, now: i64) {
        self.attempt("sent");
        let took = (now - accepted_at).max(0);
        self.prom.delivery_seconds.observe(took as f64 / 1000.0);
        self.finished(org, via, "SUCCESS");
        if let Via::Custom(name) = via {
            self.update(org, |i| {
                let p = i
                    .providers
                    .entry((org.to_string(), name.clone()))
                    .or_default();
                p.sent += 1;
                p.delivery_millis += took as u64;
                p.last_delivery = Some(now);
            });
        }
    }

    pub fn failed(&self, org: &str, via: &Via, permanent: bool, now: i64, reason: &str) {
        self.attempt(if permanent { "permanent" } else { "transient" });
        self.finished(org, via, "FAILURE");
        if let Via::Custom(name) = via {
            self.update(org, |i| {
                let p = i
                    .providers
                    .entry((org.to_string(), name.clone()))
                    .or_default();
                p.failed += 1;
                p.last_failure = Some((now, reason.to_string()));
            });
        }
    }

    /// The `status.metrics` of an org's provider.
    fn status_metrics(inner: &Inner, org: &str, name: &str) -> serde_json::Value {
        let p = inner
            .providers
            .get(&(org.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_default();
        let mut m = json!({
            "sent": p.sent,
            "retried": p.retried,
            "failed": p.failed,
            "queued": inner.pending.get(org).copied().unwrap_or(0),
            "averageDeliveryMillis": p.delivery_millis.checked_div(p.sent).unwrap_or(0),
        });
        if let Some(t) = p.last_delivery {
            m["lastDeliveryTime"] = json!(rfc3339(t));
        }
        if let Some((t, reason)) = p.last_failure {
            m["lastFailure"] = json!({"time": rfc3339(t), "reason": reason});
        }
        m
    }

    /// Publishes changed numbers into the providers' status, at most once
    /// a second; waits for changes rather than polling.
    pub async fn publish(
        self: Arc<Self>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        module_fields: Arc<ModuleFields>,
    ) {
        loop {
            self.changed.notified().await;
            let snapshot = snapshots.borrow().clone();
            let updates = {
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                let dirty = std::mem::take(&mut inner.dirty);
                let mut updates = Vec::new();
                for org in dirty {
                    let Some(provider) = snapshot.org(&org).and_then(|c| c.email_provider.as_ref())
                    else {
                        continue;
                    };
                    let key = ObjectKey {
                        kind: "EmailProvider".into(),
                        namespace: org.clone(),
                        name: provider.name.clone(),
                    };
                    updates.push((key, Self::status_metrics(&inner, &org, &provider.name)));
                }
                updates
            };
            for (key, value) in updates {
                module_fields.set(&key, "metrics", value);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Marks an org for publication (its provider appeared or changed).
    pub fn touch(&self, org: &str) {
        self.update(org, |_| {});
    }
}
