//! Enrollment evaluations per second over HTTP: `idplane run` (release)
//! with 1,000 policies over 10,000 groups, driven by 32 concurrent clients
//! for 5 seconds with users in 1-50 groups. Results go to
//! bench-results/enrollment-http.txt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;
use support::run_idplane;

const TOKEN: &str = "bench-token-0123456789abcdef";

/// A small deterministic generator (xorshift), so runs are comparable.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    let mut yaml = String::new();
    for p in 0..1000 {
        let groups: Vec<String> = (0..10).map(|g| format!("g{}", p * 10 + g)).collect();
        yaml.push_str(&format!(
            "---\napiVersion: idplane.dev/v1alpha1\nkind: EnrollmentPolicy\nmetadata: {{name: p{p}}}\nspec:\n  priority: {}\n  groups: [{}]\n  authenticators: [{{key: okta_email, enroll: REQUIRED}}, {{key: webauthn, enroll: OPTIONAL}}]\n  rules: [{{name: r, enroll: LOGIN}}]\n",
            p + 1,
            groups.join(", ")
        ));
    }
    yaml.push_str("---\napiVersion: idplane.dev/v1alpha1\nkind: EnrollmentPolicy\nmetadata: {name: everyone}\nspec:\n  priority: 5000\n  default: true\n  authenticators: [{key: okta_email, enroll: REQUIRED}]\n");
    std::fs::write(dir.join("policies.yaml"), yaml).unwrap();
    let (idplane, base) = run_idplane(
        tmp.path(),
        &dir,
        TOKEN,
        &["-n", "bench", "--database", ":memory:"],
    );
    let url = format!("{base}/v1/orgs/bench/enrollment/evaluate");
    let client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for worker in 0..32u64 {
        let (client, url, done, failed) =
            (client.clone(), url.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut state = 0x9E37_79B9_7F4A_7C15 ^ (worker + 1);
            while Instant::now() < deadline {
                let n = 1 + next(&mut state) % 50;
                let groups: Vec<String> = (0..n).map(|_| format!("g{}", next(&mut state) % 10_000)).collect();
                let body = serde_json::json!({"user": {"id": "u", "groups": groups, "enrolled": ["okta_email"]}});
                match client.post(&url).bearer_auth(TOKEN).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(idplane);
    let n = done.load(Ordering::Relaxed);
    let report = format!(
        "enrollment over HTTP (cargo bench --bench enrollment_http)\n\
         policies: 1000 + default, groups: 10000, users in 1-50 groups, 32 concurrent clients, 5 s, load generator on the same 2 cores\n\
         evaluations: {n} ({:.0}/s), failures: {}\n",
        n as f64 / 5.0,
        failed.load(Ordering::Relaxed)
    );
    std::fs::create_dir_all("bench-results").unwrap();
    std::fs::write("bench-results/enrollment-http.txt", &report).unwrap();
    print!("{report}");
}
