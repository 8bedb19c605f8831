//! Properties of the enrollment engine over generated orgs and sign-ins:
//! the invariants of docs/enrollment.md.

use idplane::enrollment::PolicyConfig;
use idplane::enrollment::{
    Authenticator, EnrolledAuthenticator, EnrollmentEngine, EvaluateError, Evaluation,
    EvaluationRequest,
};
use idplane::resources::{
    AuthenticatorKey, AuthenticatorSetting, Enrollment, EnrollmentPolicySpec, EnrollmentRule,
    NetworkCondition, NetworkConnection, PeopleCondition, PhoneMethods, RuleConditions, RuleEnroll,
    UserCondition,
};
use proptest::prelude::*;
use proptest::sample::subsequence;
use serde_json::json;

const GROUPS: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
const USERS: [&str; 4] = ["u1", "u2", "u3", "svc"];
const CIDRS: [&str; 5] = [
    "10.0.0.0/8",
    "10.20.0.0/16",
    "192.0.2.0/24",
    "2001:db8::/32",
    "2001:db8:20::/48",
];
const IPS: [&str; 6] = [
    "10.1.2.3",
    "10.20.1.1",
    "192.0.2.9",
    "203.0.113.1",
    "2001:db8:20::1",
    "2001:db9::1",
];

fn enrollment() -> impl Strategy<Value = Enrollment> {
    prop_oneof![
        Just(Enrollment::Required),
        Just(Enrollment::Optional),
        Just(Enrollment::NotAllowed),
    ]
}

fn setting(key: AuthenticatorKey) -> impl Strategy<Value = Option<AuthenticatorSetting>> {
    proptest::option::of((enrollment(), enrollment())).prop_map(move |values| {
        values.map(|(a, b)| {
            if key == AuthenticatorKey::PhoneNumber {
                AuthenticatorSetting {
                    key,
                    enroll: None,
                    methods: Some(PhoneMethods { sms: a, voice: b }),
                }
            } else {
                AuthenticatorSetting {
                    key,
                    enroll: Some(a),
                    methods: None,
                }
            }
        })
    })
}

fn authenticators() -> impl Strategy<Value = Vec<AuthenticatorSetting>> {
    AuthenticatorKey::ALL
        .map(setting)
        .prop_map(|all| all.into_iter().flatten().collect())
}

fn rule() -> impl Strategy<Value = EnrollmentRule> {
    (
        prop_oneof![
            Just(RuleEnroll::Login),
            Just(RuleEnroll::Challenge),
            Just(RuleEnroll::Never)
        ],
        subsequence(USERS.to_vec(), 0..=2),
        proptest::option::of((
            subsequence(CIDRS.to_vec(), 0..=2),
            subsequence(CIDRS.to_vec(), 0..=2),
        )),
    )
        .prop_map(|(enroll, exclude, zone)| EnrollmentRule {
            name: format!("{enroll:?}"),
            enroll,
            conditions: Some(RuleConditions {
                people: Some(PeopleCondition {
                    users: UserCondition {
                        exclude: exclude.iter().map(|u| u.to_string()).collect(),
                    },
                }),
                network: zone.map(|(include, exclude)| NetworkCondition {
                    connection: NetworkConnection::Zone,
                    include: include.iter().map(|c| c.to_string()).collect(),
                    exclude: exclude.iter().map(|c| c.to_string()).collect(),
                }),
                app: None,
            }),
        })
}

fn policy(
    name: String,
    priority: i32,
    is_default: bool,
    groups: Vec<&str>,
) -> impl Strategy<Value = PolicyConfig> {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    (authenticators(), proptest::collection::vec(rule(), 0..3)).prop_map(
        move |(authenticators, rules)| {
            let spec = EnrollmentPolicySpec {
                priority,
                description: None,
                active: true,
                is_default,
                groups: if is_default {
                    Vec::new()
                } else {
                    groups.clone()
                },
                authenticators,
                rules,
            };
            PolicyConfig {
                name: name.clone(),
                priority,
                is_default,
                groups: spec.groups.clone(),
                spec,
            }
        },
    )
}

/// Up to five group policies (priorities shuffled) and maybe a default.
fn org() -> impl Strategy<Value = Vec<PolicyConfig>> {
    (
        proptest::collection::vec(subsequence(GROUPS.to_vec(), 1..=3), 0..5),
        any::<bool>(),
    )
        .prop_flat_map(|(group_lists, with_default)| {
            let n = group_lists.len();
            let priorities = Just((1..=n as i32).collect::<Vec<_>>()).prop_shuffle();
            (Just(group_lists), priorities, Just(with_default))
        })
        .prop_flat_map(|(group_lists, priorities, with_default)| {
            let mut all: Vec<BoxedStrategy<PolicyConfig>> = group_lists
                .into_iter()
                .zip(priorities)
                .enumerate()
                .map(|(i, (groups, priority))| {
                    policy(format!("p{i}"), priority, false, groups).boxed()
                })
                .collect();
            if with_default {
                all.push(policy("default".to_string(), 1000, true, Vec::new()).boxed());
            }
            all
        })
}

fn key_strings() -> Vec<String> {
    Authenticator::ALL
        .iter()
        .map(|a| a.as_str().to_string())
        .collect()
}

fn request() -> impl Strategy<Value = EvaluationRequest> {
    let recovery_keys: Vec<&str> = vec![
        "okta_email",
        "phone_number",
        "security_question",
        "okta_verify",
    ];
    (
        proptest::sample::select(USERS.to_vec()),
        subsequence(GROUPS.to_vec(), 0..=5),
        subsequence(key_strings(), 0..=6),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(
            (proptest::sample::select(recovery_keys), any::<bool>()),
            0..3,
        ),
        proptest::option::of((any::<bool>(), subsequence(key_strings(), 0..=3))),
        proptest::option::of(proptest::sample::select(IPS.to_vec())),
    )
        .prop_map(
            |(id, groups, enrolled, federated, first, recovery, app, ip)| {
                serde_json::from_value(json!({
                    "user": {
                        "id": id,
                        "groups": groups.iter().chain(["unlisted"].iter()).collect::<Vec<_>>(),
                        "enrolled": enrolled,
                        "federated": federated,
                    },
                    "firstSignIn": first,
                    "recovery": recovery.iter().map(|(k, sso)| json!({"key": k, "ssoEnabled": sso})).collect::<Vec<_>>(),
                    "app": app.map(|(possession, authenticators)| json!({"possession": possession, "authenticators": authenticators})),
                    "network": ip.map(|ip| json!({"ip": ip})),
                }))
                .expect("generated request")
            },
        )
}

/// The answer, or `None` when the engine refuses because no policy
/// applies (see `no_policy_fails_closed`); any other error is a bug, as the
/// generated requests are valid.
fn evaluate(policies: &[PolicyConfig], request: &EvaluationRequest) -> Option<Evaluation<'static>> {
    match EnrollmentEngine::new(policies).evaluate(request) {
        Ok(e) => Some(e.into_owned()),
        Err(EvaluateError::NoDefaultPolicy) => None,
        Err(e) => panic!("generated requests are valid: {e}"),
    }
}

fn enrolled(request: &EvaluationRequest) -> Vec<Authenticator> {
    request
        .user
        .enrolled
        .iter()
        .map(|e| Authenticator::parse(e.key()).expect("known key"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn nothing_is_in_two_lists(policies in org(), request in request()) {
        let Some(e) = evaluate(&policies, &request) else { return Ok(()) };
        for a in &e.required {
            prop_assert!(!e.not_allowed.contains(a), "{a} required and not allowed");
            prop_assert!(!e.optional.contains(a), "{a} required and optional");
        }
        for a in &e.optional {
            prop_assert!(!e.not_allowed.contains(a), "{a} optional and not allowed");
        }
        prop_assert_eq!(
            e.reasons.len(),
            e.required.len() + e.optional.len() + e.not_allowed.len()
        );
    }

    #[test]
    fn the_password_is_required_unless_federated(policies in org(), request in request()) {
        let Some(e) = evaluate(&policies, &request) else { return Ok(()) };
        let p = Authenticator::OktaPassword;
        if request.user.federated {
            prop_assert!(!e.required.contains(p));
            prop_assert!(!e.optional.contains(p));
            prop_assert!(!e.not_allowed.contains(p));
            prop_assert!(e.reason(p).is_none());
        } else {
            prop_assert_eq!(e.required.first(), Some(p));
        }
    }

    #[test]
    fn the_order_of_groups_does_not_matter(
        policies in org(),
        request in request(),
        shuffled in Just(GROUPS.to_vec()).prop_shuffle(),
    ) {
        let mut reordered = request.clone();
        // Same groups, another order: follow a random permutation of GROUPS.
        reordered.user.groups.sort_by_key(|g| {
            shuffled.iter().position(|s| s == g).unwrap_or(usize::MAX)
        });
        reordered.user.groups.reverse();
        prop_assert_eq!(evaluate(&policies, &request), evaluate(&policies, &reordered));
    }

    #[test]
    fn a_user_in_no_group_gets_the_default_policy(policies in org(), mut request in request()) {
        request.user.groups.clear();
        let default = policies.iter().find(|p| p.is_default).map(|p| p.name.clone());
        let e = evaluate(&policies, &request);
        prop_assert_eq!(e.is_some(), default.is_some(), "an answer exactly when there is a default");
        if let Some(e) = e {
            prop_assert_eq!(e.policy.as_deref(), default.as_deref());
            prop_assert_eq!(e.matched_group, None);
        }
    }

    /// Fail closed: the engine refuses exactly when no active policy lists
    /// one of the user's groups and there is no default policy; it never
    /// answers for such a user, so never with the password alone.
    #[test]
    fn no_policy_fails_closed(policies in org(), request in request()) {
        let covered = policies.iter().any(|p| {
            p.spec.active
                && (p.is_default || p.groups.iter().any(|g| request.user.groups.contains(g)))
        });
        let engine = EnrollmentEngine::new(&policies);
        let result = engine.evaluate(&request);
        if covered {
            prop_assert!(result.is_ok(), "{:?}", result.err());
            prop_assert!(result.unwrap().policy.is_some());
        } else {
            prop_assert_eq!(result.err(), Some(EvaluateError::NoDefaultPolicy));
        }
    }

    /// Rule 5 for every recovery authenticator, SSO-enabled or not: the
    /// email and the security question are required, the phone allowed;
    /// those not SSO-enabled (and not also listed as SSO-enabled) are
    /// marked as not displayed.
    #[test]
    fn recovery_authenticators_are_never_dropped(policies in org(), request in request()) {
        let Some(e) = evaluate(&policies, &request) else { return Ok(()) };
        for r in &request.recovery {
            let a = Authenticator::parse(&r.key).expect("known key");
            match a {
                Authenticator::OktaEmail | Authenticator::SecurityQuestion => {
                    prop_assert!(e.required.contains(a), "recovery {a} not required");
                }
                Authenticator::PhoneNumber => {
                    prop_assert!(e.required.contains(a) || e.optional.contains(a), "recovery phone not allowed");
                }
                _ => {}
            }
            let sso_somewhere = request.recovery.iter().any(|o| o.key == r.key && o.sso_enabled);
            let reason = e.reason(a).expect("every authenticator has a reason");
            prop_assert_eq!(reason.not_displayed, !sso_somewhere, "{}", a);
        }
    }

    #[test]
    fn enroll_now_is_required_and_not_yet_enrolled(policies in org(), request in request()) {
        let Some(e) = evaluate(&policies, &request) else { return Ok(()) };
        let have = enrolled(&request);
        for a in &e.enroll_now {
            prop_assert!(e.required.contains(a), "{a} enrolled now but not required");
            prop_assert!(!have.contains(&a), "{a} enrolled now but already enrolled");
            prop_assert!(!e.auto_enrolled.contains(a), "{a} enrolled now and auto-enrolled");
        }
        if !e.prompt {
            prop_assert!(e.enroll_now.is_empty());
        }
        for a in &e.auto_enrolled {
            prop_assert_eq!(a, Authenticator::OktaEmail);
            prop_assert!(e.required.contains(a) && !have.contains(&a));
        }
        // Every required authenticator is enrolled, auto-enrolled or missing.
        for a in &e.required {
            prop_assert!(
                have.contains(&a) || e.auto_enrolled.contains(a) || e.missing.contains(a),
                "{a} required but neither enrolled nor missing"
            );
        }
    }

    #[test]
    fn not_allowed_never_satisfies_nor_is_offered_to_the_app(
        policies in org(),
        request in request(),
    ) {
        let Some(e) = evaluate(&policies, &request) else { return Ok(()) };
        if let Some(app) = &e.app_requirement {
            for a in app.enroll_one_of.iter().chain(app.satisfied_by) {
                prop_assert!(e.required.contains(a) || e.optional.contains(a), "{a} offered");
            }
        }
    }
}

#[test]
fn enrolled_forms_parse_alike() {
    let plain: EnrolledAuthenticator = serde_json::from_value(json!("phone_number")).unwrap();
    let object: EnrolledAuthenticator =
        serde_json::from_value(json!({"key": "phone_number", "methods": ["voice"]})).unwrap();
    assert_eq!(plain.key(), "phone_number");
    assert_eq!(object.key(), "phone_number");
    assert!(matches!(plain, EnrolledAuthenticator::Key(_)));
    assert!(matches!(object, EnrolledAuthenticator::WithMethods { .. }));
}
