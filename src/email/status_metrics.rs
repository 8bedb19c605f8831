//! Each org provider's `status.metrics` (sent, retried, failed, queued,
//! average delivery time, the last delivery and failure), published at
//! most once a second through the status module fields. The numbers start
//! from what the store holds, so a restart does not reset them; on a
//! store that several replicas share they are reloaded from it every few
//! seconds ([`DeliveryStats::reload`]), so that they are the totals of
//! every replica, not of the one that holds the Lease and writes status.
//! [`DeliveryStats`] is what the workers and the API report to: it keeps
//! these numbers and feeds the Prometheus metrics (`metrics.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, watch};

use super::metrics::DeliveryMetrics;
use super::queue::ProviderTotals;
use super::worker::Via;
use crate::controller::module_fields::ModuleFields;
use crate::index::Snapshot;
use crate::resources::{Kind, ObjectKey};
use crate::telemetry::Metrics;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// The delivery numbers of every org provider; one per process.
pub struct DeliveryStats {
    inner: Mutex<Inner>,
    prom: DeliveryMetrics,
    changed: Notify,
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
        let prom = DeliveryMetrics::register(metrics, pending.values().sum::<u64>());
        let this = Self {
            inner: Mutex::new(Inner::default()),
            prom,
            changed: Notify::new(),
        };
        this.reload(pending, totals);
        this
    }

    /// Takes the numbers the store holds (pending by org, each provider's
    /// totals) in place of those counted so far: at start, and on a store
    /// that other replicas share, periodically, so that status shows the
    /// totals of every replica. Orgs whose numbers changed are published.
    pub fn reload(&self, pending: HashMap<String, u64>, totals: Vec<ProviderTotals>) {
        let providers: HashMap<(String, String), ProviderNumbers> = totals
            .into_iter()
            .map(|t| {
                let name = t.provider.trim_start_matches("EmailProvider/").to_string();
                let numbers = ProviderNumbers {
                    sent: t.sent,
                    retried: t.retried,
                    failed: t.failed,
                    delivery_millis: t.delivery_millis,
                    last_delivery: t.last_delivery,
                    last_failure: t.last_failure,
                };
                ((t.org, name), numbers)
            })
            .collect();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let changed: HashSet<String> = (inner.pending.keys().chain(pending.keys()))
            .filter(|org| inner.pending.get(*org) != pending.get(*org))
            .cloned()
            .chain(
                (inner.providers.keys().chain(providers.keys()))
                    .filter(|key| inner.providers.get(*key) != providers.get(*key))
                    .map(|(org, _)| org.clone()),
            )
            .collect();
        inner.pending = pending;
        inner.providers = providers;
        let any = !changed.is_empty();
        inner.dirty.extend(changed);
        drop(inner);
        if any {
            self.changed.notify_one();
        }
    }

    fn update(&self, org: &str, f: impl FnOnce(&mut Inner)) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner);
        inner.dirty.insert(org.to_string());
        drop(inner);
        self.changed.notify_one();
    }

    /// Updates the numbers of the org's own provider, when `via` is it
    /// (the default provider has no status of its own).
    fn update_provider(&self, org: &str, via: &Via, f: impl FnOnce(&mut ProviderNumbers)) {
        if let Via::Custom(name) = via {
            self.update(org, |i| {
                f(i.providers
                    .entry((org.to_string(), name.clone()))
                    .or_default())
            });
        }
    }

    pub fn accepted(&self, org: &str) {
        self.prom.accepted();
        self.update(org, |i| *i.pending.entry(org.to_string()).or_default() += 1);
    }

    /// A transient failure that will be retried.
    pub fn retried(&self, org: &str, via: &Via) {
        self.prom.attempt("transient");
        self.update_provider(org, via, |p| p.retried += 1);
    }

    fn finished(&self, org: &str, via: &Via, outcome: &str) {
        self.prom.finished(via.kind(), outcome);
        self.update(org, |i| {
            if let Some(n) = i.pending.get_mut(org) {
                *n = n.saturating_sub(1);
            }
        });
    }

    pub fn sent(&self, org: &str, via: &Via, accepted_at: i64, now: i64) {
        self.prom.attempt("sent");
        let took = (now - accepted_at).max(0);
        self.prom.delivered_after(took as f64 / 1000.0);
        self.finished(org, via, "SUCCESS");
        self.update_provider(org, via, |p| {
            p.sent += 1;
            p.delivery_millis += took as u64;
            p.last_delivery = Some(now);
        });
    }

    pub fn failed(&self, org: &str, via: &Via, permanent: bool, now: i64, reason: &str) {
        self.prom
            .attempt(if permanent { "permanent" } else { "transient" });
        self.finished(org, via, "FAILURE");
        self.update_provider(org, via, |p| {
            p.failed += 1;
            p.last_failure = Some((now, reason.to_string()));
        });
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
                    let key =
                        ObjectKey::new(Kind::EmailProvider, org.clone(), provider.name.clone());
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
