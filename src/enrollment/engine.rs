//! [`EnrollmentEngine`]: one org's active policies compiled for evaluation
//! (a group index, each policy's effective authenticator table, parsed
//! CIDRs), and the evaluation of one sign-in against them.

use std::borrow::Cow;
use std::net::IpAddr;

use foldhash::HashSet;

use super::EvaluateError;
use super::authenticator::{Authenticator, Authenticators, COUNT, PhoneMethod};
use super::evaluation::{AppOutcome, Evaluation, Reason, RuleId};
use super::group_index::GroupIndex;
use super::network::Cidr;
use super::policy::PolicyConfig;
use super::request::{CheckedRequest, EvaluationRequest};
use crate::resources::{
    AuthenticatorKey, AuthenticatorSetting, Enrollment, EnrollmentRule, NetworkConnection,
    RuleEnroll,
};

/// One org's enrollment policies, ready to evaluate sign-ins. Build it when
/// the configuration changes; evaluating is pure and does not scan the
/// policies.
#[derive(Clone, Debug)]
pub struct EnrollmentEngine {
    /// Active policies in evaluation order: by priority, then name, the
    /// default policies last.
    policies: Vec<CompiledPolicy>,
    /// Position in `policies` of the default policy in use.
    default: Option<usize>,
    /// Group name to the position of the first non-default policy listing
    /// it. Only the first can ever apply through that group, so the later
    /// candidates are not kept.
    groups: GroupIndex,
    problems: Vec<String>,
}

/// What one policy decides before the sign-in is known: rules 1, 3 and 4.
#[derive(Clone, Debug)]
struct CompiledPolicy {
    name: String,
    priority: i32,
    /// Every configurable authenticator's decision; the password is not
    /// in it.
    table: Table,
    rules: Vec<CompiledRule>,
}

#[derive(Clone, Debug)]
struct CompiledRule {
    name: String,
    enroll: RuleEnroll,
    excluded: HashSet<Box<str>>,
    /// `None`: any network (no condition, or ANYWHERE).
    zone: Option<Zone>,
}

#[derive(Clone, Debug)]
struct Zone {
    include: Vec<Cidr>,
    exclude: Vec<Cidr>,
    /// A CIDR did not parse: the rule never matches.
    broken: bool,
}

/// Which rule decides, and why.
enum RuleChoice {
    Matched(usize),
    NoRules,
    NoneMatched,
}

mod message {
    pub const POLICY_BY_GROUP: &str =
        "the first active policy in priority order that lists one of the user's groups";
    pub const POLICY_DEFAULT: &str =
        "the default policy: no active policy lists any of the user's groups";
    pub const POLICY_DEFAULT_NO_GROUPS: &str = "the default policy: the user is in no group";
    pub const RULE_MATCHED: &str = "the first rule of the policy whose conditions match";
    pub const RULE_NONE: &str = "the policy has no rules: it prompts as a LOGIN rule would";
    pub const RULE_NO_MATCH: &str =
        "no rule of the policy matches this user and network: the user is not prompted";
    pub const REQUIRED: &str = "the policy requires it";
    pub const OPTIONAL: &str = "the policy allows it; the user may skip it";
    pub const NOT_ALLOWED: &str = "the policy does not allow it";
    pub const UNLISTED: &str = "the policy does not list it, so it is not allowed";
    pub const NO_VALUE: &str = "the policy lists it without an enroll value: not allowed";
    pub const PASSWORD: &str =
        "always required unless the user signs in through social auth or inbound federation";
    pub const EMAIL_REQUIRED: &str =
        "REQUIRED in the policy; the email is enrolled automatically, never by hand";
    pub const EMAIL_OPTIONAL: &str = "OPTIONAL in the policy counts as REQUIRED for the email; enrolled automatically, never by hand";
    pub const RECOVERY_REQUIRED: &str = "the password policy recovers with it (SSO-enabled), so it is required whatever the enrollment policy says";
    pub const RECOVERY_PHONE: &str = "the password policy recovers with the phone (SSO-enabled), so the phone is at least optional";
    pub const RECOVERY_REQUIRED_HIDDEN: &str = "the password policy recovers with it, so it is required whatever the enrollment policy says; it is not SSO-enabled, so the enrollment policy does not display it";
    pub const RECOVERY_PHONE_HIDDEN: &str = "the password policy recovers with the phone, so the phone is at least optional; it is not SSO-enabled, so the enrollment policy does not display it";
    /// Appended to another rule's reason for a recovery authenticator that
    /// is not SSO-enabled.
    pub const NOT_DISPLAYED: &str = "a recovery authenticator that is not SSO-enabled: the enrollment policy does not display it";
    pub const FIRST_SIGN_IN: &str = "first sign-in: the user enrolls the enrollment policy's and the recovery's authenticators together";
    pub const APP_ONLY_CANDIDATE: &str =
        "the app needs it: the only allowed authenticator that satisfies the app";
    pub const APP_NOTHING: &str = "the app asks for no particular authenticator";
    pub const APP_SATISFIED: &str = "the user has an allowed authenticator the app accepts";
    pub const APP_BY_REQUIRED: &str = "satisfied once the user enrolls a required authenticator listed here, which the app accepts";
    pub const APP_ONE: &str = "the app needs the authenticator listed, which the user has not enrolled: it is now required";
    pub const APP_ONE_OF: &str =
        "the app needs one of these allowed authenticators, which the user has not enrolled";
    pub const APP_UNMET: &str = "no allowed authenticator satisfies the app: the user cannot meet its needs under this policy";
    pub const NOTE_FEDERATED: &str =
        "federated sign-in (social auth or inbound federation): the password is not used (rule 2)";
    pub const NOTE_NO_IP: &str =
        "no client IP given: rules with a network zone were skipped as not matching";
    pub const NOTE_NEVER: &str =
        "the rule never prompts: missing required authenticators are listed, not enrolled now";
    pub const NOTE_LATER_SIGN_IN: &str = "not the first sign-in: the recovery's other authenticators are not added to the enrollment policy's (rule 6)";
}

/// The phone's message for its SMS and voice values (rule 4).
fn phone_message(sms: Enrollment, voice: Enrollment) -> &'static str {
    use Enrollment::{NotAllowed as N, Optional as O, Required as R};
    macro_rules! allowed {
        ($s:literal, $v:literal, $what:literal) => {
            concat!(
                "SMS ",
                $s,
                ", voice ",
                $v,
                ": the stronger applies, so the phone is ",
                $what,
                "; it may be enrolled and verified by SMS or voice"
            )
        };
    }
    match (sms, voice) {
        (R, R) => allowed!("REQUIRED", "REQUIRED", "required"),
        (R, O) => allowed!("REQUIRED", "OPTIONAL", "required"),
        (R, N) => allowed!("REQUIRED", "NOT_ALLOWED", "required"),
        (O, R) => allowed!("OPTIONAL", "REQUIRED", "required"),
        (N, R) => allowed!("NOT_ALLOWED", "REQUIRED", "required"),
        (O, O) => allowed!("OPTIONAL", "OPTIONAL", "optional"),
        (O, N) => allowed!("OPTIONAL", "NOT_ALLOWED", "optional"),
        (N, O) => allowed!("NOT_ALLOWED", "OPTIONAL", "optional"),
        (N, N) => "SMS NOT_ALLOWED, voice NOT_ALLOWED: the phone is not allowed",
    }
}

/// REQUIRED > OPTIONAL > NOT_ALLOWED.
fn strength(e: Enrollment) -> u8 {
    match e {
        Enrollment::Required => 2,
        Enrollment::Optional => 1,
        Enrollment::NotAllowed => 0,
    }
}

fn stronger(a: Enrollment, b: Enrollment) -> Enrollment {
    if strength(b) > strength(a) { b } else { a }
}

fn enrollment_message(e: Enrollment) -> &'static str {
    match e {
        Enrollment::Required => message::REQUIRED,
        Enrollment::Optional => message::OPTIONAL,
        Enrollment::NotAllowed => message::NOT_ALLOWED,
    }
}

/// Rules 1, 3 and 4 for one configured key.
fn setting_decision(
    key: AuthenticatorKey,
    setting: Option<&AuthenticatorSetting>,
) -> (Enrollment, RuleId, &'static str) {
    let Some(setting) = setting else {
        return (Enrollment::NotAllowed, RuleId::Policy, message::UNLISTED);
    };
    match key {
        AuthenticatorKey::PhoneNumber => {
            let (sms, voice) = match (&setting.methods, setting.enroll) {
                (Some(m), _) => (m.sms, m.voice),
                (None, Some(e)) => (e, e),
                (None, None) => {
                    return (Enrollment::NotAllowed, RuleId::Policy, message::NO_VALUE);
                }
            };
            (
                stronger(sms, voice),
                RuleId::Phone,
                phone_message(sms, voice),
            )
        }
        AuthenticatorKey::OktaEmail => match setting.enroll {
            Some(Enrollment::Required) => {
                (Enrollment::Required, RuleId::Email, message::EMAIL_REQUIRED)
            }
            Some(Enrollment::Optional) => {
                (Enrollment::Required, RuleId::Email, message::EMAIL_OPTIONAL)
            }
            Some(Enrollment::NotAllowed) => {
                (Enrollment::NotAllowed, RuleId::Policy, message::NOT_ALLOWED)
            }
            None => (Enrollment::NotAllowed, RuleId::Policy, message::NO_VALUE),
        },
        _ => match setting.enroll {
            Some(e) => (e, RuleId::Policy, enrollment_message(e)),
            None => (Enrollment::NotAllowed, RuleId::Policy, message::NO_VALUE),
        },
    }
}

fn compile_cidrs(
    list: &[String],
    field: &str,
    context: &str,
    problems: &mut Vec<String>,
) -> (Vec<Cidr>, bool) {
    let mut broken = false;
    let mut out = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        match Cidr::parse(text) {
            Some(c) => out.push(c),
            None => {
                broken = true;
                problems.push(format!(
                    "{context}: network.{field}[{i}]: {text:?} is not a CIDR such as 10.0.0.0/8; the rule never matches"
                ));
            }
        }
    }
    (out, broken)
}

fn compile_rule(rule: &EnrollmentRule, policy: &str, problems: &mut Vec<String>) -> CompiledRule {
    let context = format!("policy {policy}, rule {}", rule.name);
    let conditions = rule.conditions.as_ref();
    let excluded = conditions
        .and_then(|c| c.people.as_ref())
        .map(|p| p.users.exclude.iter().map(|u| u.as_str().into()).collect())
        .unwrap_or_default();
    let zone = conditions
        .and_then(|c| c.network.as_ref())
        .filter(|n| n.connection == NetworkConnection::Zone)
        .map(|n| {
            let (include, bad_include) = compile_cidrs(&n.include, "include", &context, problems);
            let (exclude, bad_exclude) = compile_cidrs(&n.exclude, "exclude", &context, problems);
            Zone {
                include,
                exclude,
                broken: bad_include || bad_exclude,
            }
        });
    CompiledRule {
        name: rule.name.clone(),
        enroll: rule.enroll,
        excluded,
        zone,
    }
}

fn compile_policy(p: &PolicyConfig, problems: &mut Vec<String>) -> CompiledPolicy {
    let mut table = Table::EMPTY;
    for key in AuthenticatorKey::ALL {
        let mut settings = p.spec.authenticators.iter().filter(|s| s.key == key);
        let first = settings.next();
        if settings.next().is_some() {
            problems.push(format!(
                "policy {}: {} is listed more than once; the first setting is used",
                p.name,
                key.as_str()
            ));
        }
        let (decision, rule, text) = setting_decision(key, first);
        table.set(Authenticator::from(key), decision, rule, text);
    }
    CompiledPolicy {
        name: p.name.clone(),
        priority: p.priority,
        table,
        rules: p
            .spec
            .rules
            .iter()
            .map(|r| compile_rule(r, &p.name, problems))
            .collect(),
    }
}

impl CompiledRule {
    /// Whether the rule's conditions hold. `no_ip` is set when a zone rule
    /// is skipped for want of a client address.
    fn matches(&self, user_id: &str, ip: Option<IpAddr>, no_ip: &mut bool) -> bool {
        if !self.excluded.is_empty() && self.excluded.contains(user_id) {
            return false;
        }
        let Some(zone) = &self.zone else {
            return true;
        };
        if zone.broken {
            return false;
        }
        let Some(ip) = ip else {
            *no_ip = true;
            return false;
        };
        (zone.include.is_empty() || zone.include.iter().any(|c| c.contains(ip)))
            && !zone.exclude.iter().any(|c| c.contains(ip))
    }
}

impl CompiledPolicy {
    fn choose_rule(&self, user_id: &str, ip: Option<IpAddr>, no_ip: &mut bool) -> RuleChoice {
        if self.rules.is_empty() {
            return RuleChoice::NoRules;
        }
        match self
            .rules
            .iter()
            .position(|r| r.matches(user_id, ip, no_ip))
        {
            Some(i) => RuleChoice::Matched(i),
            None => RuleChoice::NoneMatched,
        }
    }
}

/// One decision (or none) and its reason per authenticator: a policy's
/// own table, then the one built for a sign-in.
#[derive(Clone, Copy, Debug)]
struct Table {
    required: Authenticators,
    optional: Authenticators,
    not_allowed: Authenticators,
    /// Indexed by [`Authenticator::index`]; meaningful for listed ones.
    why: [(RuleId, &'static str); COUNT],
}

impl Table {
    const EMPTY: Table = Table {
        required: Authenticators::EMPTY,
        optional: Authenticators::EMPTY,
        not_allowed: Authenticators::EMPTY,
        why: [(RuleId::Policy, message::UNLISTED); COUNT],
    };

    fn set(&mut self, a: Authenticator, e: Enrollment, rule: RuleId, text: &'static str) {
        self.required.remove(a);
        self.optional.remove(a);
        self.not_allowed.remove(a);
        match e {
            Enrollment::Required => self.required.insert(a),
            Enrollment::Optional => self.optional.insert(a),
            Enrollment::NotAllowed => self.not_allowed.insert(a),
        }
        self.why[a.index()] = (rule, text);
    }

    fn get(&self, a: Authenticator) -> Option<Enrollment> {
        if self.required.contains(a) {
            Some(Enrollment::Required)
        } else if self.optional.contains(a) {
            Some(Enrollment::Optional)
        } else if self.not_allowed.contains(a) {
            Some(Enrollment::NotAllowed)
        } else {
            None
        }
    }

    fn allowed(&self) -> Authenticators {
        self.required.or(self.optional)
    }
}

impl EnrollmentEngine {
    /// Compiles an org's policies. Policies with `spec.active: false` are
    /// left out (the index already leaves them out); the order is the
    /// index's: priority, then name, the default policy last. Problems that
    /// validation would have refused (an unparsable CIDR, a key listed twice,
    /// a second default policy) do not stop the build: see
    /// [`EnrollmentEngine::problems`].
    pub fn new(policies: &[PolicyConfig]) -> EnrollmentEngine {
        let mut active: Vec<&PolicyConfig> = policies.iter().filter(|p| p.spec.active).collect();
        active.sort_by(|a, b| {
            (a.is_default, a.priority, &a.name).cmp(&(b.is_default, b.priority, &b.name))
        });
        let mut problems = Vec::new();
        let mut groups = GroupIndex::default();
        let mut default = None;
        let mut compiled = Vec::with_capacity(active.len());
        for (position, p) in active.iter().enumerate() {
            compiled.push(compile_policy(p, &mut problems));
            if p.is_default {
                match default {
                    None => default = Some(position),
                    Some(_) => problems.push(format!(
                        "policy {}: a second default policy; it never applies",
                        p.name
                    )),
                }
                continue;
            }
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            for g in &p.groups {
                groups.insert_first(g, position);
            }
        }
        EnrollmentEngine {
            policies: compiled,
            default,
            groups,
            problems,
        }
    }

    /// What the build found that validation should have refused.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The policy that applies to members of `group` (before the default
    /// policy), if any.
    pub fn policy_for_group(&self, group: &str) -> Option<&str> {
        self.groups
            .get(group)
            .map(|i| self.policies[i as usize].name.as_str())
    }

    /// The policy that applies to a user in `groups` (any order), and
    /// through which group (the smallest name on a tie).
    fn select<'r>(&self, groups: &'r [String]) -> Option<(usize, Option<&'r str>)> {
        let mut best: Option<(u32, &str)> = None;
        for g in groups {
            if let Some(position) = self.groups.get(g) {
                match best {
                    Some((p, name)) if p < position || (p == position && name <= g.as_str()) => {}
                    _ => best = Some((position, g.as_str())),
                }
            }
        }
        match best {
            Some((position, group)) => Some((position as usize, Some(group))),
            None => self.default.map(|d| (d, None)),
        }
    }

    /// Decides one sign-in. The answer borrows the policy and rule names
    /// from the engine and the matched group from the request.
    ///
    /// # Errors
    ///
    /// A malformed request (an unknown authenticator key or phone method,
    /// methods on a key other than the phone, the password as a recovery
    /// authenticator, an unparsable client IP, an empty user id), with a
    /// message naming the field; and [`EvaluateError::NoDefaultPolicy`] when
    /// no policy applies to the user: without a policy there is nothing to
    /// decide with, and answering "the password alone" would let the user in
    /// without the MFA the org meant to require.
    pub fn evaluate<'a>(
        &'a self,
        request: &'a EvaluationRequest,
    ) -> Result<Evaluation<'a>, EvaluateError> {
        let checked = request.check()?;
        let (position, group) = self
            .select(&request.user.groups)
            .ok_or(EvaluateError::NoDefaultPolicy)?;
        let policy = &self.policies[position];
        let mut notes: Vec<Cow<'static, str>> = Vec::new();
        let federated = request.user.federated;
        if federated {
            notes.push(message::NOTE_FEDERATED.into());
        }
        let policy_reason = if group.is_some() {
            message::POLICY_BY_GROUP
        } else if request.user.groups.is_empty() {
            message::POLICY_DEFAULT_NO_GROUPS
        } else {
            message::POLICY_DEFAULT
        };
        let mut evaluation = Evaluation {
            policy: Some(Cow::Borrowed(&policy.name)),
            priority: Some(policy.priority),
            matched_group: group.map(Cow::Borrowed),
            policy_reason: policy_reason.into(),
            rule: None,
            rule_enroll: None,
            rule_reason: message::RULE_NO_MATCH.into(),
            prompt: false,
            required: Authenticators::EMPTY,
            optional: Authenticators::EMPTY,
            not_allowed: Authenticators::EMPTY,
            missing: Authenticators::EMPTY,
            enroll_now: Authenticators::EMPTY,
            auto_enrolled: Authenticators::EMPTY,
            phone_methods: Cow::Borrowed(&[]),
            app_requirement: None,
            reasons: Vec::new(),
            notes: Vec::new(),
        };
        let mut no_ip = false;
        match policy.choose_rule(&request.user.id, checked.ip, &mut no_ip) {
            RuleChoice::Matched(i) => {
                let rule = &policy.rules[i];
                evaluation.rule = Some(Cow::Borrowed(&rule.name));
                evaluation.rule_enroll = Some(rule.enroll);
                evaluation.rule_reason = message::RULE_MATCHED.into();
                evaluation.prompt = rule.enroll.prompts();
                if !evaluation.prompt {
                    notes.push(message::NOTE_NEVER.into());
                }
            }
            RuleChoice::NoRules => {
                evaluation.rule_reason = message::RULE_NONE.into();
                evaluation.prompt = true;
            }
            RuleChoice::NoneMatched => {}
        }
        if no_ip {
            notes.push(message::NOTE_NO_IP.into());
        }
        let mut table = policy.table;
        apply_recovery(&mut table, &checked, request.first_sign_in, &mut notes);
        if !federated {
            table.set(
                Authenticator::OktaPassword,
                Enrollment::Required,
                RuleId::Password,
                message::PASSWORD,
            );
        }
        let email = Authenticators::of(&[Authenticator::OktaEmail]);
        let auto = |table: &Table| table.required.and(email).minus(checked.enrolled);
        if let Some((possession, accepted)) = checked.app {
            let have = checked.enrolled.or(auto(&table));
            evaluation.app_requirement = Some(apply_app(&mut table, have, possession, accepted));
        }
        evaluation.required = table.required;
        evaluation.optional = table.optional;
        evaluation.not_allowed = table.not_allowed;
        evaluation.missing = table.required.minus(checked.enrolled).minus(email);
        if evaluation.prompt {
            evaluation.enroll_now = evaluation.missing;
        }
        evaluation.auto_enrolled = auto(&table);
        if table.allowed().contains(Authenticator::PhoneNumber) {
            evaluation.phone_methods = Cow::Borrowed(&[PhoneMethod::Sms, PhoneMethod::Voice]);
        }
        let listed = table.required.or(table.optional).or(table.not_allowed);
        evaluation.reasons = listed
            .iter()
            .map(|a| {
                let (rule, text) = table.why[a.index()];
                let not_displayed = checked.recovery_hidden.contains(a);
                // Rule 5's own messages for these already say so.
                let message = if not_displayed && rule != RuleId::Recovery {
                    Cow::Owned(format!("{text}; {}", message::NOT_DISPLAYED))
                } else {
                    Cow::Borrowed(text)
                };
                Reason {
                    authenticator: a,
                    decision: table.get(a).unwrap_or(Enrollment::NotAllowed),
                    rule,
                    message,
                    not_displayed,
                }
            })
            .collect();
        evaluation.notes = notes;
        Ok(evaluation)
    }
}

/// Rules 5 and 6: the password policy's recovery authenticators. Rule 5
/// holds for every recovery authenticator: one that is not SSO-enabled is
/// only not *displayed* by the enrollment policy (a note says so), the user
/// still enrolls it. Rule 6 pools only the SSO-enabled ones, the ones the
/// enrollment policy displays.
fn apply_recovery(
    table: &mut Table,
    checked: &CheckedRequest,
    first_sign_in: bool,
    notes: &mut Vec<Cow<'static, str>>,
) {
    for a in checked.recovery_hidden {
        notes.push(
            format!("recovery {a} is not SSO-enabled: the enrollment policy does not display it, but it stays in the answer (rule 5)").into(),
        );
    }
    for a in checked.recovery.or(checked.recovery_hidden) {
        let hidden = checked.recovery_hidden.contains(a);
        match a {
            Authenticator::OktaEmail | Authenticator::SecurityQuestion
                if !table.required.contains(a) =>
            {
                let text = if hidden {
                    message::RECOVERY_REQUIRED_HIDDEN
                } else {
                    message::RECOVERY_REQUIRED
                };
                table.set(a, Enrollment::Required, RuleId::Recovery, text);
            }
            Authenticator::PhoneNumber if table.not_allowed.contains(a) => {
                let text = if hidden {
                    message::RECOVERY_PHONE_HIDDEN
                } else {
                    message::RECOVERY_PHONE
                };
                table.set(a, Enrollment::Optional, RuleId::Recovery, text);
            }
            _ => {}
        }
    }
    let others = checked.recovery.minus(Authenticators::of(&[
        Authenticator::OktaEmail,
        Authenticator::SecurityQuestion,
    ]));
    if !first_sign_in {
        // Say so only where the first sign-in would have added something.
        if !others.and(table.optional).is_empty() {
            notes.push(message::NOTE_LATER_SIGN_IN.into());
        }
        return;
    }
    for a in others.and(table.optional) {
        table.set(
            a,
            Enrollment::Required,
            RuleId::FirstSignIn,
            message::FIRST_SIGN_IN,
        );
    }
    for a in others.and(table.not_allowed) {
        notes.push(
            format!(
                "recovery {a} is NOT_ALLOWED by the enrollment policy: not enrolled at first sign-in (rule 6)"
            )
            .into(),
        );
    }
}

/// Rule 7: what the app needs. `have` is what the user has enrolled or is
/// auto-enrolled in. May make the only allowed candidate required.
fn apply_app(
    table: &mut Table,
    have: Authenticators,
    possession: bool,
    accepted: Authenticators,
) -> AppOutcome {
    if !possession && accepted.is_empty() {
        return AppOutcome {
            satisfied: true,
            satisfied_by: None,
            enroll_one_of: Authenticators::EMPTY,
            message: message::APP_NOTHING.into(),
        };
    }
    let mut accepted = if accepted.is_empty() {
        Authenticators::of(&Authenticator::ALL)
    } else {
        accepted
    };
    if possession {
        accepted = accepted.and(Authenticators::of(&Authenticator::POSSESSION));
    }
    let candidates = table.allowed().and(accepted);
    if let Some(a) = have.and(candidates).first() {
        return AppOutcome {
            satisfied: true,
            satisfied_by: Some(a),
            enroll_one_of: Authenticators::EMPTY,
            message: message::APP_SATISFIED.into(),
        };
    }
    let (one_of, text) = if !candidates.and(table.required).is_empty() {
        (candidates.and(table.required), message::APP_BY_REQUIRED)
    } else if candidates.len() == 1 {
        if let Some(a) = candidates.first() {
            table.set(
                a,
                Enrollment::Required,
                RuleId::App,
                message::APP_ONLY_CANDIDATE,
            );
        }
        (candidates, message::APP_ONE)
    } else if candidates.is_empty() {
        (candidates, message::APP_UNMET)
    } else {
        (candidates, message::APP_ONE_OF)
    };
    AppOutcome {
        satisfied: false,
        satisfied_by: None,
        enroll_one_of: one_of,
        message: text.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::EnrollmentPolicySpec;

    fn policy(name: &str, priority: i32, groups: &[&str], is_default: bool) -> PolicyConfig {
        let spec = EnrollmentPolicySpec {
            priority,
            description: None,
            active: true,
            is_default,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            authenticators: Vec::new(),
            rules: Vec::new(),
        };
        PolicyConfig {
            name: name.to_string(),
            priority,
            is_default,
            groups: spec.groups.clone(),
            spec,
        }
    }

    fn groups(list: &[&str]) -> Vec<String> {
        list.iter().map(|g| g.to_string()).collect()
    }

    #[test]
    fn group_index_keeps_the_first_policy_per_group() {
        let mut inactive = policy("inactive", 1, &["staff", "ops"], false);
        inactive.spec.active = false;
        // Given out of order on purpose: the engine sorts.
        let engine = EnrollmentEngine::new(&[
            policy("everyone", 100, &[], true),
            policy("staff-late", 5, &["staff", "ops"], false),
            inactive,
            policy("admins", 2, &["admins", "staff"], false),
        ]);
        let cases: &[(&str, Option<&str>)] = &[
            ("staff", Some("admins")),
            ("admins", Some("admins")),
            ("ops", Some("staff-late")),
            ("nobody", None),
            ("", None),
        ];
        for (group, expected) in cases {
            assert_eq!(engine.policy_for_group(group), *expected, "group {group:?}");
        }
        assert!(engine.problems().is_empty(), "{:?}", engine.problems());
    }

    #[test]
    fn selection_takes_the_lowest_priority_whatever_the_group_order() {
        let engine = EnrollmentEngine::new(&[
            policy("a", 1, &["g1", "g2"], false),
            policy("b", 2, &["g3"], false),
            policy("everyone", 9, &[], true),
        ]);
        // (user's groups, (policy, matched group) or none)
        type Case<'a> = (&'a [&'a str], Option<(&'a str, Option<&'a str>)>);
        let cases: &[Case] = &[
            (&["g3", "g2"], Some(("a", Some("g2")))),
            (&["g2", "g3"], Some(("a", Some("g2")))),
            (&["g2", "g1"], Some(("a", Some("g1")))),
            (&["g1", "g2"], Some(("a", Some("g1")))),
            (&["g3"], Some(("b", Some("g3")))),
            (&["x", "y"], Some(("everyone", None))),
            (&[], Some(("everyone", None))),
        ];
        for (user_groups, expected) in cases {
            let user_groups = groups(user_groups);
            let got = engine
                .select(&user_groups)
                .map(|(i, g)| (engine.policies[i].name.as_str(), g));
            assert_eq!(got, *expected, "groups {user_groups:?}");
        }
        let no_default = EnrollmentEngine::new(&[policy("a", 1, &["g1"], false)]);
        assert_eq!(no_default.select(&groups(&["g2"])).map(|(i, _)| i), None);
    }

    #[test]
    fn build_problems_are_reported_not_fatal() {
        let mut zoned = policy("zoned", 1, &["g"], false);
        zoned.spec.rules = serde_yaml::from_str(
            "- name: office\n  enroll: NEVER\n  conditions:\n    network:\n      connection: ZONE\n      include: [10.0.0.0/33]\n",
        )
        .unwrap();
        let engine = EnrollmentEngine::new(&[
            zoned,
            policy("d1", 50, &[], true),
            policy("d2", 60, &[], true),
        ]);
        assert_eq!(
            engine.problems(),
            [
                "policy zoned, rule office: network.include[0]: \"10.0.0.0/33\" is not a CIDR such as 10.0.0.0/8; the rule never matches",
                "policy d2: a second default policy; it never applies",
            ]
        );
        let mut no_ip = false;
        let rule = &engine.policies[0].rules[0];
        let ip = super::super::client_address("10.0.0.1");
        assert!(!rule.matches("u", ip, &mut no_ip));
        assert_eq!(engine.default, Some(1));
    }
}
