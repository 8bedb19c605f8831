//! Enrollment engine throughput: 1,000 policies over 10,000 groups, 100,000
//! users in 1 to 50 groups each, all pseudo-random from a fixed seed.
//! Measures in-process evaluations per second on one thread for a bounded
//! time, prints the results and writes them to bench-results/enrollment.txt.
//!
//! The main figure cycles through all 100,000 users, whose requests (some
//! 150 MB of group names) do not fit in any cache: a pessimistic case, as a
//! server evaluates a request it has just parsed. A second run cycles
//! through 1,000 users to show that case.
//!
//! Run: `cargo bench --bench enrollment` (optionally `-- SECONDS` per run,
//! default 3).

mod support;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use idplane::enrollment::PolicyConfig;
use idplane::enrollment::{EnrollmentEngine, EvaluationRequest};
use idplane::resources::{
    AuthenticatorKey, AuthenticatorSetting, Enrollment, EnrollmentPolicySpec, EnrollmentRule,
    NetworkCondition, NetworkConnection, PeopleCondition, PhoneMethods, RuleConditions, RuleEnroll,
    UserCondition,
};
use serde_json::json;

const POLICIES: usize = 1_000;
const GROUPS: usize = 10_000;
const USERS: usize = 100_000;
const SEED: u64 = 0x1d91_a2e5_0000_2026;

/// SplitMix64: small, deterministic, good enough to spread test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn range(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() % (high - low + 1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn enrollment(&mut self) -> Enrollment {
        match self.next() % 3 {
            0 => Enrollment::Required,
            1 => Enrollment::Optional,
            _ => Enrollment::NotAllowed,
        }
    }
}

fn group(i: usize) -> String {
    format!("grp-{i:05}")
}

fn cidr(rng: &mut Rng) -> String {
    if rng.chance(70) {
        format!("10.{}.0.0/16", rng.range(0, 255))
    } else {
        format!("2001:db8:{:x}::/48", rng.range(0, 255))
    }
}

fn policy(rng: &mut Rng, i: usize, priority: i32, is_default: bool) -> PolicyConfig {
    let groups: Vec<String> = if is_default {
        Vec::new()
    } else {
        (0..rng.range(1, 30))
            .map(|_| group(rng.range(0, GROUPS - 1)))
            .collect()
    };
    let mut authenticators = Vec::new();
    for key in AuthenticatorKey::ALL {
        if !rng.chance(60) {
            continue;
        }
        authenticators.push(if key == AuthenticatorKey::PhoneNumber {
            AuthenticatorSetting {
                key,
                enroll: None,
                methods: Some(PhoneMethods {
                    sms: rng.enrollment(),
                    voice: rng.enrollment(),
                }),
            }
        } else {
            AuthenticatorSetting {
                key,
                enroll: Some(rng.enrollment()),
                methods: None,
            }
        });
    }
    let rules = (0..rng.range(1, 3))
        .map(|r| {
            let exclude = (0..rng.range(0, 20))
                .map(|_| format!("u{}", rng.range(0, USERS - 1)))
                .collect();
            let network = rng.chance(40).then(|| NetworkCondition {
                connection: NetworkConnection::Zone,
                include: (0..rng.range(0, 3)).map(|_| cidr(rng)).collect(),
                exclude: (0..rng.range(1, 3)).map(|_| cidr(rng)).collect(),
            });
            EnrollmentRule {
                name: format!("rule-{r}"),
                enroll: match rng.next() % 3 {
                    0 => RuleEnroll::Login,
                    1 => RuleEnroll::Challenge,
                    _ => RuleEnroll::Never,
                },
                conditions: Some(RuleConditions {
                    people: Some(PeopleCondition {
                        users: UserCondition { exclude },
                    }),
                    network,
                    app: None,
                }),
            }
        })
        .collect();
    let spec = EnrollmentPolicySpec {
        priority,
        description: None,
        active: true,
        is_default,
        groups: groups.clone(),
        authenticators,
        rules,
    };
    PolicyConfig {
        name: format!("policy-{i:04}"),
        priority,
        is_default,
        groups,
        spec,
    }
}

fn policies(rng: &mut Rng) -> Vec<PolicyConfig> {
    let mut priorities: Vec<i32> = (1..POLICIES as i32).collect();
    for i in (1..priorities.len()).rev() {
        priorities.swap(i, rng.range(0, i));
    }
    let mut out: Vec<PolicyConfig> = priorities
        .iter()
        .enumerate()
        .map(|(i, &p)| policy(rng, i, p, false))
        .collect();
    out.push(policy(rng, POLICIES - 1, 1_000_000, true));
    out
}

const KEYS: [&str; 12] = [
    "okta_password",
    "okta_email",
    "phone_number",
    "security_question",
    "webauthn",
    "okta_verify",
    "google_otp",
    "duo",
    "rsa_token",
    "symantec_vip",
    "yubikey_token",
    "external_idp",
];

fn user(rng: &mut Rng, i: usize, group_count: usize) -> EvaluationRequest {
    let groups: Vec<String> = (0..group_count)
        .map(|_| group(rng.range(0, GROUPS - 1)))
        .collect();
    let mut enrolled = vec![json!("okta_password")];
    for key in &KEYS[1..] {
        if rng.chance(25) {
            enrolled.push(if *key == "phone_number" {
                json!({"key": key, "methods": ["sms"]})
            } else {
                json!(key)
            });
        }
    }
    let mut recovery = Vec::new();
    for key in ["okta_email", "phone_number", "security_question"] {
        if rng.chance(30) {
            recovery.push(json!({"key": key, "ssoEnabled": rng.chance(50)}));
        }
    }
    let app = rng.chance(30).then(|| {
        json!({"possession": rng.chance(50),
               "authenticators": if rng.chance(50) { vec![KEYS[rng.range(1, 11)]] } else { vec![] }})
    });
    let network = rng.chance(80).then(|| {
        if rng.chance(70) {
            json!({"ip": format!("10.{}.{}.{}", rng.range(0, 255), rng.range(0, 255), rng.range(1, 254))})
        } else {
            json!({"ip": format!("2001:db8:{:x}::{:x}", rng.range(0, 255), rng.range(1, 0xffff))})
        }
    });
    serde_json::from_value(json!({
        "user": {"id": format!("u{i}"), "groups": groups, "enrolled": enrolled,
                 "federated": rng.chance(5)},
        "firstSignIn": rng.chance(10),
        "recovery": recovery,
        "app": app,
        "network": network,
    }))
    .expect("generated request")
}

struct Run {
    evaluations: u64,
    elapsed: Duration,
    /// CPU time of this thread over the run, when /proc tells it: on a
    /// busy machine the wall clock also counts time spent descheduled.
    cpu: Option<Duration>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.evaluations as f64 / self.elapsed.as_secs_f64()
    }

    fn ns_per_eval(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.evaluations as f64
    }

    fn line(&self, label: &str) -> String {
        let mut line = format!(
            "{label}: {:.0} evals/s, {:.0} ns/eval wall clock ({} evaluations in {:.2} s, one thread)",
            self.per_second(),
            self.ns_per_eval(),
            self.evaluations,
            self.elapsed.as_secs_f64()
        );
        if let Some(cpu) = self.cpu.filter(|c| !c.is_zero()) {
            let _ = write!(
                line,
                "; per CPU second: {:.0} evals/s, {:.0} ns/eval ({:.2} s CPU)",
                self.evaluations as f64 / cpu.as_secs_f64(),
                cpu.as_nanos() as f64 / self.evaluations as f64,
                cpu.as_secs_f64()
            );
        }
        line
    }
}

/// This thread's user + system CPU time, from /proc/thread-self/stat
/// (clock ticks, assumed 100 per second as on Linux by default).
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Evaluates `requests` round-robin until `budget` has passed (checked
/// every 4,096 evaluations).
fn run(engine: &EnrollmentEngine, requests: &[EvaluationRequest], budget: Duration) -> Run {
    let cpu_start = thread_cpu();
    let start = Instant::now();
    let mut evaluations = 0u64;
    let mut i = 0;
    loop {
        for _ in 0..4_096 {
            let evaluation = engine
                .evaluate(black_box(&requests[i]))
                .expect("valid request");
            black_box(evaluation);
            i += 1;
            if i == requests.len() {
                i = 0;
            }
        }
        evaluations += 4_096;
        let elapsed = start.elapsed();
        if elapsed >= budget {
            let cpu = match (cpu_start, thread_cpu()) {
                (Some(a), Some(b)) => b.checked_sub(a),
                _ => None,
            };
            return Run {
                evaluations,
                elapsed,
                cpu,
            };
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn main() {
    let seconds: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3.0_f64)
        .clamp(0.1, 60.0);
    let budget = Duration::from_secs_f64(seconds);
    let mut rng = Rng(SEED);

    let policies = policies(&mut rng);
    let build_start = Instant::now();
    let engine = EnrollmentEngine::new(&policies);
    let build = build_start.elapsed();
    assert!(engine.problems().is_empty(), "{:?}", engine.problems());

    let mixed: Vec<EvaluationRequest> = (0..USERS)
        .map(|i| {
            let count = rng.range(1, 50);
            user(&mut rng, i, count)
        })
        .collect();
    let heavy: Vec<EvaluationRequest> = (0..10_000).map(|i| user(&mut rng, i, 50)).collect();
    let by_group = mixed
        .iter()
        .filter(|r| {
            r.user
                .groups
                .iter()
                .any(|g| engine.policy_for_group(g).is_some())
        })
        .count();

    // Warm caches and the allocator before measuring.
    run(&engine, &mixed, Duration::from_millis(200));
    let mixed_run = run(&engine, &mixed, budget);
    let heavy_run = run(&engine, &heavy, budget);
    // The first 1,000 users again and again: their requests stay in cache,
    // as a request just parsed by the server would be.
    let hot_run = run(&engine, &mixed[..1_000], budget);

    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut out = String::new();
    let _ = writeln!(out, "enrollment engine benchmark (benches/enrollment.rs)");
    let _ = writeln!(out, "date: {}", chrono::Utc::now().to_rfc3339());
    let _ = writeln!(out, "machine: nproc {nproc}, cpu {}", cpu_model());
    let _ = writeln!(
        out,
        "policies: {} (one default), groups: {GROUPS}, users: {USERS} in 1-50 groups ({by_group} matched through a group, the rest the default policy)",
        policies.len()
    );
    let _ = writeln!(out, "engine build: {:.1} ms", build.as_secs_f64() * 1e3);
    let _ = writeln!(out, "{}", mixed_run.line("users in 1-50 groups"));
    let _ = writeln!(out, "{}", heavy_run.line("users in 50 groups"));
    let _ = writeln!(
        out,
        "{}",
        hot_run.line("1,000 users in 1-50 groups, requests in cache")
    );
    support::write_results("enrollment.txt", out);
}
