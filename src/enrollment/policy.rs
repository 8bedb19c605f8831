//! [`PolicyConfig`]: an EnrollmentPolicy in the form the engine evaluates.
//! The index makes one from each accepted policy of an org; tests and
//! benchmarks make them directly.

use serde::Serialize;

use crate::resources::EnrollmentPolicySpec;

/// An enrollment policy, as evaluated.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyConfig {
    pub name: String,
    pub priority: i32,
    pub is_default: bool,
    pub groups: Vec<String>,
    pub spec: EnrollmentPolicySpec,
}
