//! The enrollment engine against every numbered rule of the product
//! document and its corner cases, table-driven: each case is an org (a set
//! of policies), a request as JSON, and the fields of the answer it must
//! have. Also: request errors, shadowed policies, the explain table, and
//! the examples of docs/enrollment.md (which must be what the engine says).

use idplane::enrollment::PolicyConfig;
use idplane::enrollment::{
    Authenticator, EnrollmentEngine, EvaluateError, Evaluation, EvaluationRequest, explain_table,
    shadowed,
};
use idplane::resources::EnrollmentPolicy;
use serde::Deserialize;
use serde_json::{Value, json};

/// Parses a multi-document stream of EnrollmentPolicy manifests. Inactive
/// ones are kept: the engine must leave them out itself.
fn org(yaml: &str) -> Vec<PolicyConfig> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| {
            let p = EnrollmentPolicy::deserialize(doc).expect("policy manifest");
            PolicyConfig {
                name: p.metadata.name.clone().expect("name"),
                priority: p.spec.priority,
                is_default: p.spec.is_default,
                groups: p.spec.groups.clone(),
                spec: p.spec,
            }
        })
        .collect()
}

/// admins (1), contractors (2), everyone (100, default).
const EXAMPLE: &str = r#"
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: admins}
spec:
  priority: 1
  groups: [admins, security-team]
  authenticators:
    - {key: okta_email, enroll: REQUIRED}
    - {key: webauthn, enroll: REQUIRED}
    - {key: okta_verify, enroll: OPTIONAL}
    - {key: phone_number, methods: {sms: NOT_ALLOWED, voice: NOT_ALLOWED}}
  rules:
    - {name: everywhere, enroll: LOGIN}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: contractors}
spec:
  priority: 2
  groups: [contractors]
  authenticators:
    - {key: okta_email, enroll: OPTIONAL}
    - {key: phone_number, methods: {sms: REQUIRED, voice: NOT_ALLOWED}}
    - {key: security_question, enroll: NOT_ALLOWED}
  rules:
    - name: not-from-the-office
      enroll: CHALLENGE
      conditions:
        people: {users: {exclude: [svc-build-bot]}}
        network: {connection: ZONE, exclude: [10.20.0.0/16, "2001:db8:20::/48"]}
    - {name: office, enroll: NEVER}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: everyone}
spec:
  priority: 100
  default: true
  authenticators:
    - {key: okta_email, enroll: REQUIRED}
    - {key: phone_number, methods: {sms: OPTIONAL, voice: OPTIONAL}}
    - {key: webauthn, enroll: OPTIONAL}
  rules:
    - {name: default, enroll: LOGIN}
"#;

/// The example org plus an inactive policy that would otherwise win.
fn with_inactive() -> String {
    format!(
        "{EXAMPLE}---\n{}",
        r#"
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: retired}
spec:
  priority: 0
  active: false
  groups: [admins, contractors, sales]
  authenticators:
    - {key: duo, enroll: REQUIRED}
"#
    )
}

/// Network zones: include and exclude, IPv4 and IPv6.
const ZONES: &str = r#"
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: zones}
spec:
  priority: 1
  default: true
  authenticators:
    - {key: okta_email, enroll: REQUIRED}
    - {key: webauthn, enroll: REQUIRED}
  rules:
    - name: corporate
      enroll: LOGIN
      conditions:
        network:
          connection: ZONE
          include: [10.0.0.0/8, "2001:db8::/32"]
          exclude: [10.20.0.0/16, "2001:db8:20::/48"]
    - {name: elsewhere, enroll: NEVER}
"#;

/// Odd shapes: no rules, a rule that matches nobody, CHALLENGE, an app
/// condition the schema would refuse.
const SHAPES: &str = r#"
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: no-rules}
spec:
  priority: 1
  groups: [no-rules]
  authenticators:
    - {key: webauthn, enroll: REQUIRED}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: only-bob-excluded}
spec:
  priority: 2
  groups: [bob-excluded]
  authenticators:
    - {key: webauthn, enroll: REQUIRED}
  rules:
    - name: all-but-bob
      enroll: LOGIN
      conditions: {people: {users: {exclude: [bob]}}}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: challenge}
spec:
  priority: 3
  groups: [challenge]
  authenticators:
    - {key: webauthn, enroll: REQUIRED}
  rules:
    - {name: at-challenge, enroll: CHALLENGE}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: login}
spec:
  priority: 4
  groups: [login]
  authenticators:
    - {key: webauthn, enroll: REQUIRED}
  rules:
    - {name: at-login, enroll: LOGIN}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: app-condition}
spec:
  priority: 5
  groups: [app-condition]
  authenticators:
    - {key: webauthn, enroll: REQUIRED}
  rules:
    - name: only-for-some-app
      enroll: LOGIN
      conditions: {app: {include: [payroll]}}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: locked-down}
spec:
  priority: 6
  groups: [locked-down]
  authenticators:
    - {key: okta_email, enroll: NOT_ALLOWED}
    - {key: phone_number, methods: {sms: NOT_ALLOWED, voice: NOT_ALLOWED}}
    - {key: security_question, enroll: NOT_ALLOWED}
    - {key: okta_verify, enroll: NOT_ALLOWED}
    - {key: duo, enroll: NOT_ALLOWED}
    - {key: webauthn, enroll: OPTIONAL}
  rules:
    - {name: always, enroll: LOGIN}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: phone-variants}
spec:
  priority: 7
  groups: [voice-optional]
  authenticators:
    - {key: phone_number, methods: {sms: NOT_ALLOWED, voice: OPTIONAL}}
  rules:
    - {name: always, enroll: LOGIN}
"#;

/// No default policy.
const NO_DEFAULT: &str = r#"
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: admins}
spec:
  priority: 1
  groups: [admins]
  authenticators:
    - {key: okta_email, enroll: REQUIRED}
  rules:
    - {name: everywhere, enroll: LOGIN}
"#;

struct Case {
    name: &'static str,
    org: String,
    request: Value,
    /// Fields the answer must have. Objects match as subsets, arrays
    /// element by element (same length, same order), scalars exactly. `reason:KEY` matches the reason of one
    /// authenticator (or `null`: no reason for it).
    expect: Value,
}

fn case(name: &'static str, org: &str, request: Value, expect: Value) -> Case {
    Case {
        name,
        org: org.to_string(),
        request,
        expect,
    }
}

/// A request for a user with a password and an email.
fn user(id: &str, groups: &[&str]) -> Value {
    json!({"user": {"id": id, "groups": groups, "enrolled": ["okta_password", "okta_email"]}})
}

fn with(mut base: Value, patch: Value) -> Value {
    merge(&mut base, patch);
    base
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

fn subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| subset(v, av))),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(ev, av)| subset(ev, av))
        }
        _ => expected == actual,
    }
}

fn evaluate(org_yaml: &str, request: &Value) -> Evaluation<'static> {
    let engine = EnrollmentEngine::new(&org(org_yaml));
    let request: EvaluationRequest =
        serde_json::from_value(request.clone()).expect("request deserializes");
    engine
        .evaluate(&request)
        .expect("request evaluates")
        .into_owned()
}

fn check(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let answer = serde_json::to_value(evaluate(&c.org, &c.request)).unwrap();
        for (key, want) in c.expect.as_object().expect("expect is an object") {
            let got = match key.strip_prefix("reason:") {
                Some(a) => answer["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["authenticator"] == *a)
                    .cloned()
                    .unwrap_or(Value::Null),
                None => answer.get(key).cloned().unwrap_or(Value::Null),
            };
            if !subset(want, &got) {
                failures.push(format!(
                    "{}: {key}: want {want}, got {got}\n  answer: {answer}",
                    c.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn rule_1_policy_and_rule_selection() {
    let e = EXAMPLE;
    check(vec![
        case(
            "lowest priority number wins",
            e,
            user("ann", &["contractors", "admins"]),
            json!({"policy": "admins", "priority": 1, "matchedGroup": "admins", "rule": "everywhere",
                   "ruleEnroll": "LOGIN", "prompt": true,
                   "policyReason": "the first active policy in priority order that lists one of the user's groups"}),
        ),
        case(
            "any listed group of the policy counts",
            e,
            user("ann", &["security-team", "contractors"]),
            json!({"policy": "admins", "matchedGroup": "security-team"}),
        ),
        case(
            "default policy when no policy lists the user's groups",
            e,
            user("sam", &["sales", "marketing"]),
            json!({"policy": "everyone", "priority": 100, "matchedGroup": null, "rule": "default",
                   "policyReason": "the default policy: no active policy lists any of the user's groups"}),
        ),
        case(
            "user in no group gets the default policy",
            e,
            user("nobody", &[]),
            json!({"policy": "everyone", "matchedGroup": null,
                   "policyReason": "the default policy: the user is in no group"}),
        ),
        case(
            "inactive policy is ignored even if given to the engine",
            &with_inactive(),
            user("ann", &["admins"]),
            json!({"policy": "admins", "reason:duo": {"decision": "NOT_ALLOWED"}}),
        ),
        case(
            "inactive policy is ignored: default for its groups",
            &with_inactive(),
            user("sam", &["sales"]),
            json!({"policy": "everyone"}),
        ),
        case(
            "rule not excluded, outside the office zone: CHALLENGE prompts",
            e,
            with(
                user("carl", &["contractors"]),
                json!({"network": {"ip": "203.0.113.5"}}),
            ),
            json!({"policy": "contractors", "rule": "not-from-the-office", "ruleEnroll": "CHALLENGE",
                   "prompt": true, "enrollNow": ["phone_number"]}),
        ),
        case(
            "user excluded by id falls to the next rule",
            e,
            with(
                user("svc-build-bot", &["contractors"]),
                json!({"network": {"ip": "203.0.113.5"}}),
            ),
            json!({"rule": "office", "ruleEnroll": "NEVER", "prompt": false, "enrollNow": []}),
        ),
        case(
            "ZONE exclude, IPv4 inside the excluded block",
            e,
            with(
                user("carl", &["contractors"]),
                json!({"network": {"ip": "10.20.3.4"}}),
            ),
            json!({"rule": "office", "prompt": false}),
        ),
        case(
            "ZONE exclude, IPv4 just outside the excluded block",
            e,
            with(
                user("carl", &["contractors"]),
                json!({"network": {"ip": "10.21.0.1"}}),
            ),
            json!({"rule": "not-from-the-office"}),
        ),
        case(
            "ZONE exclude, IPv6 inside the excluded block",
            e,
            with(
                user("carl", &["contractors"]),
                json!({"network": {"ip": "2001:db8:20::7"}}),
            ),
            json!({"rule": "office"}),
        ),
        case(
            "ZONE exclude, IPv6 outside the excluded block",
            e,
            with(
                user("carl", &["contractors"]),
                json!({"network": {"ip": "2001:db8:21::7"}}),
            ),
            json!({"rule": "not-from-the-office"}),
        ),
        case(
            "IPv4-mapped IPv6 address is the IPv4 address",
            e,
            with(
                user("carl", &["contractors"]),
                json!({"network": {"ip": "::ffff:10.20.1.1"}}),
            ),
            json!({"rule": "office"}),
        ),
        case(
            "no client IP: a ZONE rule does not match",
            e,
            user("carl", &["contractors"]),
            json!({"rule": "office", "prompt": false,
                   "notes": ["the rule never prompts: missing required authenticators are listed, not enrolled now",
                             "no client IP given: rules with a network zone were skipped as not matching"]}),
        ),
        case(
            "ZONE include IPv4 hit",
            ZONES,
            with(user("u", &[]), json!({"network": {"ip": "10.1.2.3"}})),
            json!({"rule": "corporate", "prompt": true}),
        ),
        case(
            "ZONE include IPv4 hit but excluded",
            ZONES,
            with(user("u", &[]), json!({"network": {"ip": "10.20.2.3"}})),
            json!({"rule": "elsewhere", "prompt": false}),
        ),
        case(
            "ZONE include IPv4 miss",
            ZONES,
            with(user("u", &[]), json!({"network": {"ip": "192.0.2.1"}})),
            json!({"rule": "elsewhere"}),
        ),
        case(
            "ZONE include IPv6 hit",
            ZONES,
            with(user("u", &[]), json!({"network": {"ip": "2001:db8:1::1"}})),
            json!({"rule": "corporate"}),
        ),
        case(
            "ZONE include IPv6 hit but excluded",
            ZONES,
            with(
                user("u", &[]),
                json!({"network": {"ip": "2001:db8:20:1::1"}}),
            ),
            json!({"rule": "elsewhere"}),
        ),
        case(
            "ZONE include IPv6 miss",
            ZONES,
            with(user("u", &[]), json!({"network": {"ip": "2001:db9::1"}})),
            json!({"rule": "elsewhere"}),
        ),
        case(
            "NEVER: required still listed, nothing enrolled now",
            ZONES,
            with(user("u", &[]), json!({"network": {"ip": "192.0.2.1"}})),
            json!({"required": ["okta_password", "okta_email", "webauthn"], "missing": ["webauthn"],
                   "enrollNow": [], "prompt": false}),
        ),
        case(
            "CHALLENGE prompts exactly as LOGIN (challenge)",
            SHAPES,
            user("u", &["challenge"]),
            json!({"ruleEnroll": "CHALLENGE", "prompt": true, "enrollNow": ["webauthn"]}),
        ),
        case(
            "CHALLENGE prompts exactly as LOGIN (login)",
            SHAPES,
            user("u", &["login"]),
            json!({"ruleEnroll": "LOGIN", "prompt": true, "enrollNow": ["webauthn"]}),
        ),
        case(
            "a policy with no rules prompts as LOGIN",
            SHAPES,
            user("u", &["no-rules"]),
            json!({"policy": "no-rules", "rule": null, "ruleEnroll": null, "prompt": true,
                   "enrollNow": ["webauthn"],
                   "ruleReason": "the policy has no rules: it prompts as a LOGIN rule would"}),
        ),
        case(
            "rules, none matching: no prompt",
            SHAPES,
            user("bob", &["bob-excluded"]),
            json!({"policy": "only-bob-excluded", "rule": null, "prompt": false, "enrollNow": [],
                   "missing": ["webauthn"]}),
        ),
    ]);
}

/// No policy lists the user's groups and the org has no (active) default
/// policy: the engine refuses, naming the missing default policy; it never
/// answers with the password alone, whoever the user and whatever the
/// request.
#[test]
fn no_policy_for_the_user_is_refused_not_answered_with_the_password() {
    let inactive_default = format!(
        "{NO_DEFAULT}---\n{}",
        r#"
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: everyone}
spec:
  priority: 100
  default: true
  active: false
  authenticators:
    - {key: okta_email, enroll: REQUIRED}
"#
    );
    let orgs = [
        ("policies, no default", org(NO_DEFAULT)),
        ("an inactive default", org(&inactive_default)),
        ("no policy at all", Vec::new()),
    ];
    let requests = [
        ("a group no policy lists", user("sam", &["sales"])),
        ("no group", json!({"user": {"id": "sam"}})),
        (
            "federated",
            json!({"user": {"id": "fed", "groups": ["x"], "federated": true}}),
        ),
        (
            "first sign-in with recovery, nothing enrolled",
            json!({"user": {"id": "sam"}, "firstSignIn": true,
                   "recovery": [{"key": "phone_number", "ssoEnabled": true}]}),
        ),
        (
            "an app that needs a possession factor",
            json!({"user": {"id": "sam", "groups": ["sales"]}, "app": {"possession": true}}),
        ),
    ];
    for (org_name, policies) in &orgs {
        let engine = EnrollmentEngine::new(policies);
        for (request_name, request) in &requests {
            let request: EvaluationRequest = serde_json::from_value(request.clone()).unwrap();
            let err = engine
                .evaluate(&request)
                .expect_err(&format!("{org_name}, {request_name}: must be refused"));
            assert_eq!(
                err,
                EvaluateError::NoDefaultPolicy,
                "{org_name}, {request_name}"
            );
            assert_eq!(
                err.to_string(),
                "user.groups: no active EnrollmentPolicy lists any of the user's groups and the org has no default EnrollmentPolicy (spec.default: true); refused rather than answered with the password alone"
            );
        }
    }
    // A covered user of the same org still gets an answer; a malformed
    // request is reported as such before the missing default policy.
    let engine = EnrollmentEngine::new(&org(NO_DEFAULT));
    let covered: EvaluationRequest = serde_json::from_value(user("ann", &["admins"])).unwrap();
    assert_eq!(
        engine.evaluate(&covered).unwrap().policy.as_deref(),
        Some("admins")
    );
    let malformed: EvaluationRequest =
        serde_json::from_value(json!({"user": {"id": "", "groups": ["sales"]}})).unwrap();
    assert_eq!(
        engine.evaluate(&malformed).unwrap_err(),
        EvaluateError::EmptyUserId
    );
}

#[test]
fn rule_2_password() {
    let e = EXAMPLE;
    check(vec![
        case(
            "always required",
            e,
            user("ann", &["admins"]),
            json!({"required": ["okta_password", "okta_email", "webauthn"],
                   "reason:okta_password": {"decision": "REQUIRED", "rule": "rule-2-password"}}),
        ),
        case(
            "enrolled now when missing",
            e,
            json!({"user": {"id": "new", "groups": ["admins"]}}),
            json!({"enrollNow": ["okta_password", "webauthn"], "autoEnrolled": ["okta_email"]}),
        ),
        case(
            "federated user: no password anywhere",
            e,
            json!({"user": {"id": "fed", "groups": ["admins"], "federated": true, "enrolled": ["okta_email"]}}),
            json!({"required": ["okta_email", "webauthn"], "enrollNow": ["webauthn"],
                   "reason:okta_password": null,
                   "notes": ["federated sign-in (social auth or inbound federation): the password is not used (rule 2)"]}),
        ),
    ]);
}

#[test]
fn rule_3_email() {
    check(vec![
        case(
            "OPTIONAL email is required and auto-enrolled, never enrolled by hand",
            EXAMPLE,
            with(
                json!({"user": {"id": "c", "groups": ["contractors"], "enrolled": ["okta_password"]}}),
                json!({"network": {"ip": "203.0.113.5"}}),
            ),
            json!({"required": ["okta_password", "okta_email", "phone_number"],
                   "autoEnrolled": ["okta_email"], "enrollNow": ["phone_number"],
                   "missing": ["phone_number"],
                   "reason:okta_email": {"decision": "REQUIRED", "rule": "rule-3-email",
                       "message": "OPTIONAL in the policy counts as REQUIRED for the email; enrolled automatically, never by hand"}}),
        ),
        case(
            "REQUIRED email already enrolled: nothing to auto-enroll",
            EXAMPLE,
            user("ann", &["admins"]),
            json!({"autoEnrolled": [], "reason:okta_email": {"decision": "REQUIRED", "rule": "rule-3-email"}}),
        ),
        case(
            "auto-enrolled even when the rule never prompts",
            ZONES,
            json!({"user": {"id": "u", "enrolled": ["okta_password"]}}),
            json!({"prompt": false, "autoEnrolled": ["okta_email"], "enrollNow": []}),
        ),
        case(
            "NOT_ALLOWED email stays not allowed",
            SHAPES,
            user("u", &["locked-down"]),
            json!({"notAllowed": ["okta_email", "phone_number", "security_question", "okta_verify",
                                  "google_otp", "duo", "rsa_token", "symantec_vip", "yubikey_token",
                                  "external_idp"],
                   "autoEnrolled": [],
                   "reason:okta_email": {"decision": "NOT_ALLOWED", "rule": "rule-1-policy"}}),
        ),
        case(
            "unlisted email is not allowed",
            SHAPES,
            json!({"user": {"id": "u", "groups": ["login"]}}),
            json!({"autoEnrolled": [], "reason:okta_email": {"decision": "NOT_ALLOWED",
                   "message": "the policy does not list it, so it is not allowed"}}),
        ),
    ]);
}

#[test]
fn rule_4_phone() {
    check(vec![
        case(
            "SMS REQUIRED + voice NOT_ALLOWED: phone required, enrolled by SMS or voice",
            EXAMPLE,
            with(
                user("c", &["contractors"]),
                json!({"network": {"ip": "203.0.113.5"}}),
            ),
            json!({"required": ["okta_password", "okta_email", "phone_number"],
                   "phoneMethods": ["sms", "voice"], "enrollNow": ["phone_number"],
                   "reason:phone_number": {"decision": "REQUIRED", "rule": "rule-4-phone",
                       "message": "SMS REQUIRED, voice NOT_ALLOWED: the stronger applies, so the phone is required; it may be enrolled and verified by SMS or voice"}}),
        ),
        case(
            "a phone enrolled by voice counts as enrolled",
            EXAMPLE,
            json!({"user": {"id": "c", "groups": ["contractors"],
                            "enrolled": ["okta_password", {"key": "phone_number", "methods": ["voice"]}]},
                   "network": {"ip": "203.0.113.5"}}),
            json!({"missing": [], "enrollNow": [], "autoEnrolled": ["okta_email"]}),
        ),
        case(
            "a phone object without methods counts as enrolled",
            EXAMPLE,
            json!({"user": {"id": "c", "groups": ["contractors"],
                            "enrolled": ["okta_password", {"key": "phone_number"}]},
                   "network": {"ip": "203.0.113.5"}}),
            json!({"missing": []}),
        ),
        case(
            "SMS NOT_ALLOWED + voice OPTIONAL: phone optional",
            SHAPES,
            user("u", &["voice-optional"]),
            json!({"optional": ["phone_number"], "phoneMethods": ["sms", "voice"]}),
        ),
        case(
            "both NOT_ALLOWED: phone not allowed, no methods",
            EXAMPLE,
            user("ann", &["admins"]),
            json!({"phoneMethods": [], "reason:phone_number": {"decision": "NOT_ALLOWED", "rule": "rule-4-phone"}}),
        ),
    ]);
}

#[test]
fn rule_5_recovery() {
    check(vec![
        // The seed's first bullet: a recovery authenticator that is not
        // SSO-enabled is not displayed by the enrollment policy, but the
        // user still enrolls the email and the security question, and the
        // phone is optional.
        case(
            "recovery security question not SSO-enabled: required, not displayed",
            EXAMPLE,
            with(
                user("c", &["contractors"]),
                json!({"network": {"ip": "203.0.113.5"},
                       "recovery": [{"key": "security_question", "ssoEnabled": false}]}),
            ),
            json!({"required": ["okta_password", "okta_email", "phone_number", "security_question"],
                   "missing": ["phone_number", "security_question"],
                   "enrollNow": ["phone_number", "security_question"],
                   "reason:security_question": {"decision": "REQUIRED", "rule": "rule-5-recovery",
                       "notDisplayed": true,
                       "message": "the password policy recovers with it, so it is required whatever the enrollment policy says; it is not SSO-enabled, so the enrollment policy does not display it"},
                   "notes": ["recovery security_question is not SSO-enabled: the enrollment policy does not display it, but it stays in the answer (rule 5)"]}),
        ),
        case(
            "recovery email not SSO-enabled: required and auto-enrolled, not displayed",
            SHAPES,
            json!({"user": {"id": "u", "groups": ["locked-down"], "enrolled": ["okta_password"]},
                   "recovery": [{"key": "okta_email", "ssoEnabled": false}]}),
            json!({"required": ["okta_password", "okta_email"], "autoEnrolled": ["okta_email"],
                   "enrollNow": [],
                   "reason:okta_email": {"decision": "REQUIRED", "rule": "rule-5-recovery",
                       "notDisplayed": true},
                   "notes": ["recovery okta_email is not SSO-enabled: the enrollment policy does not display it, but it stays in the answer (rule 5)"]}),
        ),
        case(
            "recovery phone not SSO-enabled: optional, not displayed",
            EXAMPLE,
            with(
                user("ann", &["admins"]),
                json!({"recovery": [{"key": "phone_number", "ssoEnabled": false}]}),
            ),
            json!({"optional": ["phone_number", "okta_verify"], "enrollNow": ["webauthn"],
                   "phoneMethods": ["sms", "voice"],
                   "reason:phone_number": {"decision": "OPTIONAL", "rule": "rule-5-recovery",
                       "notDisplayed": true,
                       "message": "the password policy recovers with the phone, so the phone is at least optional; it is not SSO-enabled, so the enrollment policy does not display it"},
                   "notes": ["recovery phone_number is not SSO-enabled: the enrollment policy does not display it, but it stays in the answer (rule 5)"]}),
        ),
        case(
            "recovery without ssoEnabled counts as not SSO-enabled",
            EXAMPLE,
            with(
                user("c", &["contractors"]),
                json!({"recovery": [{"key": "security_question"}]}),
            ),
            json!({"reason:security_question": {"decision": "REQUIRED", "notDisplayed": true}}),
        ),
        case(
            "not displayed, decided by another rule: the reason says so too",
            EXAMPLE,
            with(
                user("ann", &["admins"]),
                json!({"recovery": [{"key": "okta_email"}, {"key": "okta_verify"}]}),
            ),
            json!({"reason:okta_email": {"decision": "REQUIRED", "rule": "rule-3-email", "notDisplayed": true,
                       "message": "REQUIRED in the policy; the email is enrolled automatically, never by hand; a recovery authenticator that is not SSO-enabled: the enrollment policy does not display it"},
                   "reason:okta_verify": {"decision": "OPTIONAL", "rule": "rule-1-policy", "notDisplayed": true},
                   "notes": ["recovery okta_email is not SSO-enabled: the enrollment policy does not display it, but it stays in the answer (rule 5)",
                             "recovery okta_verify is not SSO-enabled: the enrollment policy does not display it, but it stays in the answer (rule 5)"]}),
        ),
        case(
            "SSO-enabled recovery is displayed: no notDisplayed in its reason",
            EXAMPLE,
            with(
                user("ann", &["admins"]),
                json!({"recovery": [{"key": "security_question", "ssoEnabled": true}]}),
            ),
            json!({"reason:security_question": {"decision": "REQUIRED", "rule": "rule-5-recovery",
                       "message": "the password policy recovers with it (SSO-enabled), so it is required whatever the enrollment policy says"},
                   "notes": []}),
        ),
        case(
            "recovery security question overrides NOT_ALLOWED",
            EXAMPLE,
            with(
                user("c", &["contractors"]),
                json!({"network": {"ip": "203.0.113.5"},
                       "recovery": [{"key": "security_question", "ssoEnabled": true}]}),
            ),
            json!({"required": ["okta_password", "okta_email", "phone_number", "security_question"],
                   "enrollNow": ["phone_number", "security_question"],
                   "reason:security_question": {"decision": "REQUIRED", "rule": "rule-5-recovery"}}),
        ),
        case(
            "recovery email overrides NOT_ALLOWED and is auto-enrolled",
            SHAPES,
            json!({"user": {"id": "u", "groups": ["locked-down"], "enrolled": ["okta_password"]},
                   "recovery": [{"key": "okta_email", "ssoEnabled": true}]}),
            json!({"required": ["okta_password", "okta_email"], "autoEnrolled": ["okta_email"],
                   "enrollNow": [],
                   "reason:okta_email": {"decision": "REQUIRED", "rule": "rule-5-recovery"}}),
        ),
        case(
            "recovery phone lifts NOT_ALLOWED to optional at a later sign-in",
            EXAMPLE,
            with(
                user("ann", &["admins"]),
                json!({"recovery": [{"key": "phone_number", "ssoEnabled": true}]}),
            ),
            json!({"optional": ["phone_number", "okta_verify"], "enrollNow": ["webauthn"],
                   "phoneMethods": ["sms", "voice"],
                   "reason:phone_number": {"decision": "OPTIONAL", "rule": "rule-5-recovery"}}),
        ),
        case(
            "recovery phone does not downgrade a REQUIRED phone",
            EXAMPLE,
            with(
                user("c", &["contractors"]),
                json!({"network": {"ip": "203.0.113.5"},
                       "recovery": [{"key": "phone_number", "ssoEnabled": true}]}),
            ),
            json!({"reason:phone_number": {"decision": "REQUIRED", "rule": "rule-4-phone"}}),
        ),
        case(
            "an SSO-enabled entry wins over a duplicate that is not",
            EXAMPLE,
            with(
                user("ann", &["admins"]),
                json!({"recovery": [{"key": "phone_number"}, {"key": "phone_number", "ssoEnabled": true}]}),
            ),
            json!({"reason:phone_number": {"decision": "OPTIONAL"},
                   "notes": ["not the first sign-in: the recovery's other authenticators are not added to the enrollment policy's (rule 6)"]}),
        ),
    ]);
}

#[test]
fn rule_6_first_sign_in() {
    let recovery = json!([{"key": "phone_number", "ssoEnabled": true},
                          {"key": "okta_verify", "ssoEnabled": true}]);
    check(vec![
        case(
            "first sign-in: union of the policy's and the recovery's authenticators",
            EXAMPLE,
            json!({"user": {"id": "new", "groups": ["admins"]}, "firstSignIn": true,
                   "recovery": recovery}),
            json!({"required": ["okta_password", "okta_email", "phone_number", "webauthn", "okta_verify"],
                   "enrollNow": ["okta_password", "phone_number", "webauthn", "okta_verify"],
                   "autoEnrolled": ["okta_email"], "optional": [],
                   "reason:phone_number": {"rule": "rule-6-first-sign-in"},
                   "reason:okta_verify": {"rule": "rule-6-first-sign-in"}}),
        ),
        case(
            "later sign-in: evaluated separately, no pooling",
            EXAMPLE,
            json!({"user": {"id": "new", "groups": ["admins"]}, "firstSignIn": false,
                   "recovery": recovery}),
            json!({"required": ["okta_password", "okta_email", "webauthn"],
                   "optional": ["phone_number", "okta_verify"],
                   "enrollNow": ["okta_password", "webauthn"],
                   "notes": ["not the first sign-in: the recovery's other authenticators are not added to the enrollment policy's (rule 6)"]}),
        ),
        case(
            "first sign-in: NOT_ALLOWED recovery authenticators stay out (other than rule 5's)",
            SHAPES,
            json!({"user": {"id": "u", "groups": ["locked-down"], "enrolled": ["okta_password"]},
                   "firstSignIn": true, "recovery": recovery}),
            json!({"required": ["okta_password", "phone_number"], "enrollNow": ["phone_number"],
                   "reason:okta_verify": {"decision": "NOT_ALLOWED"},
                   "notes": ["recovery okta_verify is NOT_ALLOWED by the enrollment policy: not enrolled at first sign-in (rule 6)"]}),
        ),
        case(
            "first sign-in: recovery not SSO-enabled is not pooled",
            EXAMPLE,
            json!({"user": {"id": "new", "groups": ["admins"]}, "firstSignIn": true,
                   "recovery": [{"key": "okta_verify", "ssoEnabled": false}]}),
            json!({"optional": ["okta_verify"],
                   "reason:okta_verify": {"rule": "rule-1-policy", "notDisplayed": true}}),
        ),
        case(
            "first sign-in: a recovery phone not SSO-enabled stays optional (rule 5 only)",
            EXAMPLE,
            json!({"user": {"id": "new", "groups": ["admins"]}, "firstSignIn": true,
                   "recovery": [{"key": "phone_number", "ssoEnabled": false},
                                {"key": "security_question", "ssoEnabled": false}]}),
            json!({"required": ["okta_password", "okta_email", "security_question", "webauthn"],
                   "optional": ["phone_number", "okta_verify"],
                   "enrollNow": ["okta_password", "security_question", "webauthn"],
                   "reason:phone_number": {"decision": "OPTIONAL", "rule": "rule-5-recovery"}}),
        ),
        case(
            "first sign-in: the policy's optional authenticators stay optional",
            EXAMPLE,
            json!({"user": {"id": "new", "groups": []}, "firstSignIn": true}),
            json!({"optional": ["phone_number", "webauthn"], "enrollNow": ["okta_password"]}),
        ),
    ]);
}

#[test]
fn rule_7_app_needs() {
    check(vec![
        case(
            "possession factor only optional phone and webauthn satisfy: enroll one of them",
            EXAMPLE,
            with(user("sam", &[]), json!({"app": {"possession": true}})),
            json!({"required": ["okta_password", "okta_email"], "enrollNow": [],
                   "appRequirement": {"satisfied": false, "satisfiedBy": null,
                                      "enrollOneOf": ["phone_number", "webauthn"],
                                      "message": "the app needs one of these allowed authenticators, which the user has not enrolled"}}),
        ),
        case(
            "possession factor with a single allowed candidate: it becomes required",
            SHAPES,
            with(
                user("u", &["locked-down"]),
                json!({"app": {"possession": true}}),
            ),
            json!({"required": ["okta_password", "webauthn"], "enrollNow": ["webauthn"],
                   "reason:webauthn": {"decision": "REQUIRED", "rule": "rule-7-app"},
                   "appRequirement": {"satisfied": false, "enrollOneOf": ["webauthn"]}}),
        ),
        case(
            "possession factor already enrolled",
            EXAMPLE,
            json!({"user": {"id": "sam", "enrolled": ["okta_password", "okta_email",
                                                     {"key": "phone_number", "methods": ["sms"]}]},
                   "app": {"possession": true}}),
            json!({"appRequirement": {"satisfied": true, "satisfiedBy": "phone_number", "enrollOneOf": []}}),
        ),
        case(
            "an enrolled but NOT_ALLOWED authenticator never satisfies the app",
            EXAMPLE,
            json!({"user": {"id": "ann", "groups": ["admins"],
                            "enrolled": ["okta_password", "okta_email", "phone_number"]},
                   "app": {"possession": true}}),
            json!({"enrollNow": ["webauthn"],
                   "appRequirement": {"satisfied": false, "enrollOneOf": ["webauthn"],
                       "message": "satisfied once the user enrolls a required authenticator listed here, which the app accepts"}}),
        ),
        case(
            "app needs a specific unenrolled authenticator",
            EXAMPLE,
            with(
                user("ann", &["admins"]),
                json!({"app": {"authenticators": ["okta_verify"]}}),
            ),
            json!({"required": ["okta_password", "okta_email", "webauthn", "okta_verify"],
                   "enrollNow": ["webauthn", "okta_verify"],
                   "reason:okta_verify": {"decision": "REQUIRED", "rule": "rule-7-app"},
                   "appRequirement": {"satisfied": false, "enrollOneOf": ["okta_verify"]}}),
        ),
        case(
            "NOT_ALLOWED is never offered to the app",
            SHAPES,
            with(
                user("u", &["locked-down"]),
                json!({"app": {"authenticators": ["duo", "okta_verify"]}}),
            ),
            json!({"required": ["okta_password"], "enrollNow": [],
                   "appRequirement": {"satisfied": false, "enrollOneOf": [],
                       "message": "no allowed authenticator satisfies the app: the user cannot meet its needs under this policy"}}),
        ),
        case(
            "NOT_ALLOWED filtered out of several candidates",
            SHAPES,
            with(
                user("u", &["locked-down"]),
                json!({"app": {"authenticators": ["duo", "webauthn"]}}),
            ),
            json!({"appRequirement": {"enrollOneOf": ["webauthn"]}, "enrollNow": ["webauthn"]}),
        ),
        case(
            "the auto-enrolled email satisfies an app that accepts email",
            EXAMPLE,
            json!({"user": {"id": "sam", "enrolled": ["okta_password"]},
                   "app": {"authenticators": ["okta_email"]}}),
            json!({"appRequirement": {"satisfied": true, "satisfiedBy": "okta_email"}}),
        ),
        case(
            "an app that asks for nothing in particular",
            EXAMPLE,
            with(
                user("sam", &[]),
                json!({"app": {"possession": false, "authenticators": []}}),
            ),
            json!({"appRequirement": {"satisfied": true, "satisfiedBy": null,
                                      "message": "the app asks for no particular authenticator"}}),
        ),
        case(
            "under NEVER the app's candidate is listed but not enrolled now",
            ZONES,
            with(
                user("u", &[]),
                json!({"network": {"ip": "192.0.2.1"},
                                        "app": {"authenticators": ["webauthn"]}}),
            ),
            json!({"prompt": false, "enrollNow": [], "missing": ["webauthn"],
                   "appRequirement": {"satisfied": false, "enrollOneOf": ["webauthn"]}}),
        ),
        case(
            "federated user: the password never satisfies the app",
            EXAMPLE,
            json!({"user": {"id": "f", "federated": true, "enrolled": ["okta_password", "okta_email"]},
                   "app": {"authenticators": ["okta_password"]}}),
            json!({"appRequirement": {"satisfied": false, "enrollOneOf": []}}),
        ),
    ]);
}

#[test]
fn rule_8_app_conditions_do_not_limit_the_policy() {
    check(vec![
        case(
            "an app condition that slipped through does not restrict the rule",
            SHAPES,
            user("u", &["app-condition"]),
            json!({"rule": "only-for-some-app", "prompt": true, "enrollNow": ["webauthn"]}),
        ),
        case(
            "the policy applies whatever the app",
            SHAPES,
            with(
                user("u", &["app-condition"]),
                json!({"app": {"authenticators": ["webauthn"]}}),
            ),
            json!({"rule": "only-for-some-app", "prompt": true}),
        ),
    ]);
}

#[test]
fn bad_requests_are_refused_naming_the_field() {
    let engine = EnrollmentEngine::new(&org(EXAMPLE));
    let cases: &[(&str, Value, &str)] = &[
        (
            "unknown plain key",
            json!({"user": {"id": "u", "enrolled": ["okta_password", "okta_email", "foo"]}}),
            r#"user.enrolled[2]: unknown authenticator key "foo""#,
        ),
        (
            "unknown key in object form",
            json!({"user": {"id": "u", "enrolled": [{"key": "bar", "methods": []}]}}),
            r#"user.enrolled[0].key: unknown authenticator key "bar""#,
        ),
        (
            "unknown phone method",
            json!({"user": {"id": "u", "enrolled": [{"key": "phone_number", "methods": ["sms", "fax"]}]}}),
            r#"user.enrolled[0].methods[1]: unknown phone method "fax"; use sms or voice"#,
        ),
        (
            "methods on another key",
            json!({"user": {"id": "u", "enrolled": [{"key": "okta_email", "methods": ["sms"]}]}}),
            "user.enrolled[0].methods: only phone_number takes methods, not okta_email",
        ),
        (
            "unknown recovery key",
            json!({"user": {"id": "u"}, "recovery": [{"key": "okta_email"}, {"key": "pigeon", "ssoEnabled": true}]}),
            r#"recovery[1].key: unknown authenticator key "pigeon""#,
        ),
        (
            "password as recovery",
            json!({"user": {"id": "u"}, "recovery": [{"key": "okta_password", "ssoEnabled": true}]}),
            "recovery[0].key: okta_password is not a recovery authenticator",
        ),
        (
            "unknown app key",
            json!({"user": {"id": "u"}, "app": {"authenticators": ["webauthn", "retina"]}}),
            r#"app.authenticators[1]: unknown authenticator key "retina""#,
        ),
        (
            "unparsable IP",
            json!({"user": {"id": "u"}, "network": {"ip": "10.0.0.300"}}),
            r#"network.ip: "10.0.0.300" is not an IP address"#,
        ),
        (
            "IP with a port",
            json!({"user": {"id": "u"}, "network": {"ip": "10.0.0.1:443"}}),
            r#"network.ip: "10.0.0.1:443" is not an IP address"#,
        ),
        (
            "empty user id",
            json!({"user": {"id": ""}}),
            "user.id: must not be empty",
        ),
    ];
    for (name, request, message) in cases {
        let request: EvaluationRequest = serde_json::from_value(request.clone()).unwrap();
        let err = engine.evaluate(&request).expect_err(name);
        assert_eq!(err.to_string(), *message, "{name}");
    }
    // Misspelled fields are refused when the body is read, not ignored.
    let typo = serde_json::from_value::<EvaluationRequest>(
        json!({"user": {"id": "u"}, "firstSignin": true}),
    );
    let message = typo.expect_err("unknown field").to_string();
    assert!(
        message.starts_with("unknown field `firstSignin`"),
        "{message}"
    );
}

#[test]
fn shadowed_policies() {
    let base = r#"
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: admins}
spec: {priority: 1, groups: [admins, ops]}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: staff}
spec: {priority: 3, groups: [staff]}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: ops-and-staff}
spec: {priority: 5, groups: [staff, ops]}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: admins-again}
spec: {priority: 7, groups: [admins]}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: partly-new}
spec: {priority: 8, groups: [admins, interns]}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: retired}
spec: {priority: 0, active: false, groups: [interns]}
---
apiVersion: idplane.dev/v1alpha1
kind: EnrollmentPolicy
metadata: {name: everyone}
spec: {priority: 100, default: true}
"#;
    let got = shadowed(&org(base));
    let summary: Vec<(&str, Vec<&str>, &str)> = got
        .iter()
        .map(|s| {
            (
                s.policy.as_str(),
                s.hidden_by.iter().map(String::as_str).collect(),
                s.message.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "ops-and-staff",
                vec!["admins", "staff"],
                "never applies: every group it lists is matched first by admins (priority 1), staff (priority 3)"
            ),
            (
                "admins-again",
                vec!["admins"],
                "never applies: every group it lists is matched first by admins (priority 1)"
            ),
        ]
    );
    // Engine agrees: nobody gets a shadowed policy.
    let engine = EnrollmentEngine::new(&org(base));
    for groups in [vec!["staff", "ops"], vec!["admins"], vec!["interns"]] {
        let request: EvaluationRequest =
            serde_json::from_value(json!({"user": {"id": "u", "groups": groups}})).unwrap();
        let policy = engine.evaluate(&request).unwrap().policy.unwrap();
        assert!(
            !got.iter().any(|s| s.policy == policy),
            "{groups:?} got {policy}"
        );
    }
    assert!(shadowed(&org(EXAMPLE)).is_empty());
}

#[test]
fn explain_table_shows_every_decision() {
    let evaluation = evaluate(
        EXAMPLE,
        &json!({"user": {"id": "c", "groups": ["contractors"], "enrolled": ["okta_password"]},
                "network": {"ip": "10.20.0.9"}}),
    );
    let table = explain_table(&evaluation);
    let expected = "\
policy: contractors (priority 2, through group contractors): the first active policy in priority order that lists one of the user's groups
rule: office (NEVER, does not prompt): the first rule of the policy whose conditions match
authenticator     | decision    | enroll now        | why
------------------+-------------+-------------------+----
okta_password     | REQUIRED    | -                 | rule-2-password: always required unless the user signs in through social auth or inbound federation
okta_email        | REQUIRED    | auto              | rule-3-email: OPTIONAL in the policy counts as REQUIRED for the email; enrolled automatically, never by hand
phone_number      | REQUIRED    | no (not prompted) | rule-4-phone: SMS REQUIRED, voice NOT_ALLOWED: the stronger applies, so the phone is required; it may be enrolled and verified by SMS or voice
security_question | NOT_ALLOWED | -                 | rule-1-policy: the policy does not allow it
webauthn          | NOT_ALLOWED | -                 | rule-1-policy: the policy does not list it, so it is not allowed
okta_verify       | NOT_ALLOWED | -                 | rule-1-policy: the policy does not list it, so it is not allowed
google_otp        | NOT_ALLOWED | -                 | rule-1-policy: the policy does not list it, so it is not allowed
duo               | NOT_ALLOWED | -                 | rule-1-policy: the policy does not list it, so it is not allowed
rsa_token         | NOT_ALLOWED | -                 | rule-1-policy: the policy does not list it, so it is not allowed
symantec_vip      | NOT_ALLOWED | -                 | rule-1-policy: the policy does not list it, so it is not allowed
yubikey_token     | NOT_ALLOWED | -                 | rule-1-policy: the policy does not list it, so it is not allowed
external_idp      | NOT_ALLOWED | -                 | rule-1-policy: the policy does not list it, so it is not allowed
phone methods: sms, voice
note: the rule never prompts: missing required authenticators are listed, not enrolled now
";
    assert_eq!(table, expected, "\n{table}");

    // A recovery authenticator the policy does not display: its row and a
    // note say so.
    let hidden = evaluate(
        NO_DEFAULT,
        &json!({"user": {"id": "a", "groups": ["admins"], "enrolled": ["okta_password", "okta_email"]},
                "recovery": [{"key": "security_question"}]}),
    );
    let table = explain_table(&hidden);
    assert!(
        table.contains("security_question | REQUIRED    | yes        | rule-5-recovery: the password policy recovers with it, so it is required whatever the enrollment policy says; it is not SSO-enabled, so the enrollment policy does not display it\n"),
        "\n{table}"
    );
    assert!(
        table.ends_with("note: recovery security_question is not SSO-enabled: the enrollment policy does not display it, but it stays in the answer (rule 5)\n"),
        "\n{table}"
    );
}

/// The fields of an `Evaluation` in the order it serializes them.
const ANSWER_FIELDS: [&str; 18] = [
    "policy",
    "priority",
    "matchedGroup",
    "policyReason",
    "rule",
    "ruleEnroll",
    "ruleReason",
    "prompt",
    "required",
    "optional",
    "notAllowed",
    "missing",
    "enrollNow",
    "autoEnrolled",
    "phoneMethods",
    "appRequirement",
    "reasons",
    "notes",
];

/// An answer as the docs show it: one field a line, in the struct's order,
/// one reason or note a line.
fn render_answer(answer: &Value) -> String {
    let map = answer.as_object().expect("answer object");
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| {
        ANSWER_FIELDS
            .iter()
            .position(|f| f == k)
            .unwrap_or(usize::MAX)
    });
    let lines: Vec<String> = keys
        .iter()
        .map(|k| match &map[*k] {
            Value::Array(items) if k.as_str() == "reasons" || k.as_str() == "notes" => {
                if items.is_empty() {
                    format!("  \"{k}\": []")
                } else {
                    let inner: Vec<String> = items.iter().map(|i| format!("    {i}")).collect();
                    format!("  \"{k}\": [\n{}\n  ]", inner.join(",\n"))
                }
            }
            v => format!("  \"{k}\": {v}"),
        })
        .collect();
    format!("{{\n{}\n}}\n", lines.join(",\n"))
}

/// The answers in docs/enrollment.md are what the engine says. Each
/// example is a `json` block after `<!-- request -->` and one after
/// `<!-- answer -->`; the policies are the `yaml` block after
/// `<!-- policies -->`. An answer may leave fields out (for brevity); the
/// fields it shows must match. Run with `IDPLANE_BLESS_DOCS=1` to rewrite
/// the answers from the engine (keeping only the fields they show).
#[test]
fn documented_examples_are_what_the_engine_answers() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/enrollment.md");
    let doc = std::fs::read_to_string(path).expect("docs/enrollment.md");
    let block = |after: usize, lang: &str| -> (usize, usize) {
        let fence = format!("```{lang}\n");
        let start = doc[after..].find(&fence).expect("fenced block") + after + fence.len();
        let end = doc[start..].find("```").expect("closing fence") + start;
        (start, end)
    };
    let marker = doc.find("<!-- policies -->").expect("policies marker");
    let (ps, pe) = block(marker, "yaml");
    let engine = EnrollmentEngine::new(&org(&doc[ps..pe]));
    let bless = std::env::var_os("IDPLANE_BLESS_DOCS").is_some();
    let mut rewritten = String::new();
    let mut copied = 0;
    let mut examples = 0;
    let mut failures = Vec::new();
    let mut at = 0;
    while let Some(found) = doc[at..].find("<!-- request -->") {
        let (rs, re) = block(at + found, "json");
        let answer_marker = doc[re..].find("<!-- answer -->").expect("answer marker") + re;
        let (as_, ae) = block(answer_marker, "json");
        let request: EvaluationRequest =
            serde_json::from_str(&doc[rs..re]).expect("documented request");
        let shown: Value = serde_json::from_str(&doc[as_..ae]).expect("documented answer");
        let actual = serde_json::to_value(engine.evaluate(&request).expect("evaluates")).unwrap();
        let mut kept = serde_json::Map::new();
        for key in shown.as_object().expect("answer object").keys() {
            kept.insert(key.clone(), actual.get(key).cloned().unwrap_or(Value::Null));
        }
        let kept = Value::Object(kept);
        if kept != shown {
            failures.push(format!(
                "example {}: documented {shown}\n  engine says {kept}",
                examples + 1
            ));
        }
        rewritten.push_str(&doc[copied..as_]);
        rewritten.push_str(&render_answer(&kept));
        copied = ae;
        at = ae;
        examples += 1;
    }
    rewritten.push_str(&doc[copied..]);
    assert!(examples >= 7, "only {examples} examples in the docs");
    if bless {
        std::fs::write(path, rewritten).unwrap();
        return;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lists_are_in_okta_order_with_the_password_first() {
    let evaluation = evaluate(
        SHAPES,
        &json!({"user": {"id": "u", "groups": ["locked-down"]}, "firstSignIn": true,
                "recovery": [{"key": "security_question", "ssoEnabled": true}]}),
    );
    let answer = serde_json::to_value(&evaluation).unwrap();
    let order: Vec<&str> = Authenticator::ALL.iter().map(|a| a.as_str()).collect();
    let mut seen = Vec::new();
    for list in ["required", "optional", "notAllowed"] {
        let keys: Vec<&str> = answer[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| order.iter().position(|o| o == k).unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{list}: {keys:?}"
        );
        seen.extend(keys);
    }
    seen.sort_unstable();
    let mut all = order.clone();
    all.sort_unstable();
    assert_eq!(seen, all, "every authenticator in exactly one list");
    assert_eq!(answer["required"][0], "okta_password");
    assert_eq!(
        answer["required"],
        json!(["okta_password", "security_question"])
    );
}
