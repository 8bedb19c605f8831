//! An EnrollmentPolicy in the runtime: the [`PolicyConfig`] the enrollment
//! engine evaluates (active policies only), and the policy's
//! [`ObjectState`] with its one-line `summary`. The order of an org's
//! policies, its default policy and shadowed policies are decided across
//! policies by [`super::build`].

use super::ObjectState;
use crate::enrollment::PolicyConfig;
use crate::resources::{
    AuthenticatorKey, Enrollment, EnrollmentPolicy, EnrollmentPolicySpec, reason,
};

/// The policy's runtime form (none while inactive) and its state.
pub(super) fn from_resource(policy: &EnrollmentPolicy) -> (Option<PolicyConfig>, ObjectState) {
    let (config, mut state) = if policy.spec.active {
        let config = PolicyConfig {
            name: policy.metadata.name.clone().unwrap_or_default(),
            priority: policy.spec.priority,
            is_default: policy.spec.is_default,
            groups: policy.spec.groups.clone(),
            spec: policy.spec.clone(),
        };
        let state = ObjectState::new(
            true,
            true,
            None,
            reason::READY,
            "evaluated for the org's users",
        );
        (Some(config), state)
    } else {
        let state = ObjectState::new(
            true,
            false,
            None,
            reason::DEACTIVATED,
            "active: false; not evaluated",
        );
        (None, state)
    };
    state.extra.insert(
        "summary".into(),
        serde_json::Value::String(policy_summary(&policy.spec)),
    );
    (config, state)
}

/// The one-line summary of a policy, e.g. `required: email, phone; optional: webauthn`.
/// It states the effect, so an optional email reads as required (the email
/// authenticator is always enrolled automatically).
pub fn policy_summary(spec: &EnrollmentPolicySpec) -> String {
    let mut groups: [Vec<&str>; 3] = Default::default();
    for a in &spec.authenticators {
        let value = match (&a.enroll, &a.methods) {
            (Some(e), _) => *e,
            (None, Some(m)) => match (m.sms, m.voice) {
                (Enrollment::Required, _) | (_, Enrollment::Required) => Enrollment::Required,
                (Enrollment::Optional, _) | (_, Enrollment::Optional) => Enrollment::Optional,
                _ => Enrollment::NotAllowed,
            },
            (None, None) => continue,
        };
        // Email set to optional is required in effect (enrolled automatically).
        let value = if a.key == AuthenticatorKey::OktaEmail && value == Enrollment::Optional {
            Enrollment::Required
        } else {
            value
        };
        let slot = match value {
            Enrollment::Required => 0,
            Enrollment::Optional => 1,
            Enrollment::NotAllowed => 2,
        };
        groups[slot].push(a.key.short_name());
    }
    let parts: Vec<String> = ["required", "optional", "not allowed"]
        .iter()
        .zip(groups.iter())
        .filter(|(_, names)| !names.is_empty())
        .map(|(label, names)| format!("{label}: {}", names.join(", ")))
        .collect();
    if parts.is_empty() {
        "no authenticators (password only)".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::policy_summary;
    use crate::resources::EnrollmentPolicySpec;

    #[test]
    fn summary_groups_authenticators_by_value() {
        let spec: EnrollmentPolicySpec = serde_yaml::from_str(
            "priority: 1\ngroups: [a]\nauthenticators:\n- {key: okta_email, enroll: REQUIRED}\n\
             - {key: phone_number, methods: {sms: REQUIRED, voice: NOT_ALLOWED}}\n- {key: webauthn, enroll: OPTIONAL}\n\
             - {key: duo, enroll: NOT_ALLOWED}\n",
        )
        .unwrap();
        assert_eq!(
            policy_summary(&spec),
            "required: email, phone; optional: webauthn; not allowed: duo"
        );
    }
}
