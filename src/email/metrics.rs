//! The email module's Prometheus metrics: accepted emails, delivery events
//! by outcome and provider kind, attempts by result, the time from accept
//! to delivery, and the emails not yet sent or failed. The numbers each org
//! provider shows in its status are in `status_metrics.rs`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::telemetry::Metrics;

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
pub struct DeliveryMetrics {
    accepted: Counter,
    events: Family<OutcomeLabel, Counter>,
    attempts: Family<AttemptLabel, Counter>,
    delivery_seconds: Histogram,
    pending: Gauge,
}

impl DeliveryMetrics {
    /// Registers the metrics, every label value shown from the start, and
    /// `pending` emails waiting (as the store holds them).
    pub fn register(metrics: &Metrics, pending: u64) -> Self {
        let prom = Self {
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
        prom.pending.set(pending as i64);
        prom
    }

    /// A new email, now waiting.
    pub fn accepted(&self) {
        self.accepted.inc();
        self.pending.inc();
    }

    /// An attempt ended: `sent`, `transient` or `permanent`.
    pub fn attempt(&self, result: &str) {
        self.attempts
            .get_or_create(&AttemptLabel {
                result: result.into(),
            })
            .inc();
    }

    /// An email reached a final state: its delivery event, by `outcome`
    /// (SUCCESS, FAILURE) and `provider` kind (custom, default).
    pub fn finished(&self, provider: &str, outcome: &str) {
        self.pending.dec();
        self.events
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
                provider: provider.into(),
            })
            .inc();
    }

    /// A sent email's time from accept to delivery.
    pub fn delivered_after(&self, seconds: f64) {
        self.delivery_seconds.observe(seconds);
    }
}
