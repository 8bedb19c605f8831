//! The module's Prometheus metrics: hook executions and their duration by
//! org, hook and outcome; sends, refusals of the abuse guard,
//! verifications and previews; failed batches of the store writer.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::telemetry::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub org: String,
    pub hook: String,
    /// `success` or `failure`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrgResult {
    pub org: String,
    pub result: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Handles to the registered metrics.
#[derive(Clone)]
pub struct TelephonyMetrics {
    executions: Family<HookLabels, Counter>,
    duration: Family<HookLabels, Histogram, fn() -> Histogram>,
    sends: Family<OrgResult, Counter>,
    refusals: Family<OrgResult, Counter>,
    verifications: Family<OrgResult, Counter>,
    previews: Family<HookLabels, Counter>,
    store_writer_errors: Counter,
}

impl TelephonyMetrics {
    /// Creates the metrics and registers them.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            executions: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            sends: Family::default(),
            refusals: Family::default(),
            verifications: Family::default(),
            previews: Family::default(),
            store_writer_errors: Counter::default(),
        };
        metrics.register(
            "telephony_hook_executions",
            "Telephony hook executions (a retry included) by org, hook and outcome",
            this.executions.clone(),
        );
        metrics.register(
            "telephony_hook_duration_seconds",
            "Duration of telephony hook executions by org, hook and outcome",
            this.duration.clone(),
        );
        metrics.register(
            "otp_sends",
            "OTP send requests by org and result: delivered, failed, refused, invalid",
            this.sends.clone(),
        );
        metrics.register(
            "otp_refusals",
            "OTP sends refused by the abuse guard, by org and reason: phone_rate_limit, org_rate_limit, country_not_allowed",
            this.refusals.clone(),
        );
        metrics.register(
            "otp_verifications",
            "OTP verifications by org and result: verified, invalid, expired, locked, unknown",
            this.verifications.clone(),
        );
        metrics.register(
            "telephony_hook_previews",
            "Preview requests sent to telephony hooks by org, hook and outcome",
            this.previews.clone(),
        );
        // Published under its first name, which dashboards may use.
        metrics.register(
            "telephony_ledger_errors",
            "Batches of telephony records the store failed to commit",
            this.store_writer_errors.clone(),
        );
        this
    }

    fn labels(org: &str, hook: &str, success: bool) -> HookLabels {
        HookLabels {
            org: org.to_string(),
            hook: hook.to_string(),
            outcome: if success { "success" } else { "failure" }.to_string(),
        }
    }

    pub fn execution(&self, org: &str, hook: &str, success: bool, seconds: f64) {
        let labels = Self::labels(org, hook, success);
        self.executions.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }

    pub fn preview(&self, org: &str, hook: &str, success: bool) {
        self.previews
            .get_or_create(&Self::labels(org, hook, success))
            .inc();
    }

    fn count(family: &Family<OrgResult, Counter>, org: &str, result: &str) {
        family
            .get_or_create(&OrgResult {
                org: org.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn send(&self, org: &str, result: &str) {
        Self::count(&self.sends, org, result);
    }

    pub fn refusal(&self, org: &str, reason: &str) {
        Self::count(&self.refusals, org, reason);
        Self::count(&self.sends, org, "refused");
    }

    pub fn verification(&self, org: &str, result: &str) {
        Self::count(&self.verifications, org, result);
    }

    pub fn store_writer_error(&self) {
        self.store_writer_errors.inc();
    }
}
