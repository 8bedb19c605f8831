//! Telephony hot path: the same local hook service driven directly and
//! through idplane (`idplane run`, the release binary),
//! with the same load: the same concurrency, the same duration, one run.
//! Reports both throughputs, their ratio, p50/p99 latency and the p99 that
//! idplane adds. Two hook services: one that answers after 20 ms (a
//! provider API's own time, the realistic case) and one that answers at
//! once (idplane's raw overhead, the worst case: on a small machine the
//! client, idplane and the hook share the same cores).
//!
//! The abuse guard is turned off for the run (`--otp-phone-limit 0
//! --otp-org-limit 0`): every request goes to the same number.
//!
//! Each store backend in turn, SQLite then PostgreSQL (a throwaway server
//! on the same machine, fsync on; IDPLANE_BENCH_BACKENDS=sqlite,postgres).
//!
//! Run: `cargo bench --bench telephony` (optionally `-- SECONDS CONCURRENCY`,
//! default 10 s per measurement and 32 in flight). Results are printed and
//! written to bench-results/telephony.txt.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use serde_json::json;

mod support;
use support::{Killed, fresh_database_on, run_idplane};

const TOKEN: &str = "bench-api-token-0123456789";
const HOOK_SECRET: &str = "bench-hook-secret";

/// A hook that answers SUCCESSFUL after `delay`.
async fn hook_server(delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = json!({"commands": [{"type": "com.okta.telephony.action", "value": [
        {"status": "SUCCESSFUL", "provider": "bench", "transactionId": "SM0123456789"}]}]})
    .to_string();
    let app = Router::new().route(
        "/telephony",
        post(
            move |headers: axum::http::HeaderMap, _body: axum::body::Bytes| {
                let answer = answer.clone();
                async move {
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some(HOOK_SECRET)
                    {
                        return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                    }
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    (axum::http::StatusCode::OK, answer)
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/telephony")
}

fn manifests(dir: &Path, hooks: &[(&str, &str)]) {
    let mut yaml = String::new();
    for (org_hook, url) in hooks {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: sms\n  namespace: {org_hook}\nstringData:\n  token: {HOOK_SECRET}\n---\napiVersion: idplane.dev/v1alpha1\nkind: TelephonyHook\nmetadata:\n  name: primary\n  namespace: {org_hook}\nspec:\n  url: {url}\n  allowInsecureHttp: true\n  auth:\n    header: Authorization\n    secretRef: {{name: sms, key: token}}\n  timeout: 5s\n"
        ));
    }
    std::fs::write(dir.join("hooks.yaml"), yaml).unwrap();
}

fn start_idplane(dir: &Path, database: &str) -> (Killed, String) {
    run_idplane(
        dir,
        &dir.join("m"),
        TOKEN,
        &[
            "--database",
            database,
            // Replicas on PostgreSQL share the passcode key; idplane
            // refuses to start there without one.
            "--otp-hash-key",
            "bench-passcode-key-0123456789abcdefgh",
            "--otp-phone-limit",
            "0",
            "--otp-org-limit",
            "0",
        ],
    )
}

/// What one measurement saw.
struct Measured {
    requests: usize,
    errors: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
}

impl Measured {
    fn throughput(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

#[derive(Clone)]
struct Target {
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Arc<Vec<u8>>,
}

/// `concurrency` loops sending `target` back to back for `duration`.
async fn drive(
    client: &reqwest::Client,
    target: &Target,
    concurrency: usize,
    duration: Duration,
) -> Measured {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                let mut request = client.post(&target.url).body(target.body.to_vec());
                for (k, v) in &target.headers {
                    request = request.header(*k, v);
                }
                match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Measured {
        requests: all.len(),
        errors,
        seconds,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

/// CPU seconds (user + system) a process has used, from /proc (Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, stime the 15th, in USER_HZ (100) ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = numbers.first().copied().unwrap_or(10);
    let concurrency = numbers.get(1).copied().unwrap_or(32) as usize;
    let duration = Duration::from_secs(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("m")).unwrap();

    let scenarios = [
        ("provider 20 ms", Duration::from_millis(20)),
        ("provider 0 ms", Duration::ZERO),
    ];
    let urls: Vec<String> = rt.block_on(async {
        let mut urls = Vec::new();
        for (_, delay) in scenarios {
            urls.push(hook_server(delay).await);
        }
        urls
    });
    let orgs = ["bench-20ms", "bench-0ms"];
    manifests(
        &tmp.path().join("m"),
        &[(orgs[0], urls[0].as_str()), (orgs[1], urls[1].as_str())],
    );
    let backends = support::backends();
    let postgres = support::postgres_for(&backends);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // The body a hook gets from idplane, for the direct path.
    let okta_request = json!({
        "eventId": "3c2a7d2e-1c8e-4c9a-9d0e-0f6c1a2b3c4d", "eventTime": "2026-01-01T00:00:00.000Z",
        "eventType": "com.okta.telephony.provider", "eventTypeVersion": "1.0",
        "contentType": "application/json", "cloudEventVersion": "0.1",
        "source": "urn:idplane:bench:telephonyhook:primary",
        "requestType": "com.okta.user.telephony.mfa-verification",
        "data": {"context": {"request": {"id": "r", "method": "POST", "url": {"value": "/v1/orgs/bench/otp/send"}, "ipAddress": "203.0.113.1"}},
            "userProfile": {"firstName": "Bench", "lastName": "User", "login": "bench@example.com", "userId": "00u1"},
            "messageProfile": {"msgTemplate": "Your verification code is 123456", "phoneNumber": "+14155550100",
                "otpExpires": "2026-01-01T00:05:00.000Z", "deliveryChannel": "SMS", "otpCode": "123456", "locale": "EN-US"}}});
    let send = json!({"phoneNumber": "+14155550100", "channel": "sms", "requestType": "verification",
        "user": {"id": "00u1", "login": "bench@example.com", "firstName": "Bench", "lastName": "User"}});

    let mut report = String::new();
    writeln!(
        report,
        "# idplane telephony benchmark (cargo bench --bench telephony)"
    )
    .unwrap();
    writeln!(
        report,
        "# {} cores; {concurrency} requests in flight; {seconds} s per measurement after 1 s of warm-up",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    )
    .unwrap();
    writeln!(report, "# idplane: release binary, `idplane run`, abuse guard off; store: a SQLite file (WAL, synchronous=FULL), then PostgreSQL on the same machine (fsync on), the direct path measured again beside each").unwrap();
    writeln!(report, "# direct = load generator -> hook; idplane = load generator -> POST /v1/orgs/ORG/otp/send -> hook").unwrap();
    writeln!(
        report,
        "{:<10} {:<16} {:<8} {:>10} {:>8} {:>9} {:>9} {:>7}",
        "store", "hook", "path", "req/s", "errors", "p50 ms", "p99 ms", "ratio"
    )
    .unwrap();
    let mut summary = String::new();
    for backend in &backends {
        let database = match backend.as_str() {
            "sqlite" => tmp
                .path()
                .join(format!("bench-{}.db", std::process::id()))
                .display()
                .to_string(),
            "postgres" => fresh_database_on(&postgres.as_ref().expect("a PostgreSQL server").url),
            other => panic!("IDPLANE_BENCH_BACKENDS: unknown backend {other} (sqlite, postgres)"),
        };
        let (idplane, api) = start_idplane(tmp.path(), &database);
        let pid = idplane.0.id();
        for (i, (name, _)) in scenarios.iter().enumerate() {
            let direct = Target {
                url: urls[i].clone(),
                headers: vec![
                    ("authorization", HOOK_SECRET.into()),
                    ("content-type", "application/json".into()),
                ],
                body: Arc::new(okta_request.to_string().into_bytes()),
            };
            let through = Target {
                url: format!("{api}/v1/orgs/{}/otp/send", orgs[i]),
                headers: vec![
                    ("authorization", format!("Bearer {TOKEN}")),
                    ("content-type", "application/json".into()),
                ],
                body: Arc::new(send.to_string().into_bytes()),
            };
            // Wait until idplane serves the org.
            rt.block_on(async {
                let t0 = Instant::now();
                loop {
                    let r = client
                        .post(&through.url)
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .json(&send)
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        break;
                    }
                    assert!(
                        t0.elapsed() < Duration::from_secs(30),
                        "idplane does not serve {}",
                        orgs[i]
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let (d, t, cpu) = rt.block_on(async {
                drive(&client, &direct, concurrency, Duration::from_secs(1)).await;
                let d = drive(&client, &direct, concurrency, duration).await;
                drive(&client, &through, concurrency, Duration::from_secs(1)).await;
                let before = cpu_seconds(pid);
                let t = drive(&client, &through, concurrency, duration).await;
                let cpu = before.zip(cpu_seconds(pid)).map(|(b, a)| a - b);
                (d, t, cpu)
            });
            let ratio = t.throughput() / d.throughput();
            for (path, m, r) in [
                ("direct", &d, String::new()),
                ("idplane", &t, format!("{ratio:.3}")),
            ] {
                writeln!(
                    report,
                    "{:<10} {:<16} {:<8} {:>10.0} {:>8} {:>9.2} {:>9.2} {:>7}",
                    backend,
                    name,
                    path,
                    m.throughput(),
                    m.errors,
                    ms(m.p50),
                    ms(m.p99),
                    r
                )
                .unwrap();
            }
            writeln!(
            summary,
            "{backend}, {name}: throughput ratio {ratio:.3} (aim >= 0.9); added p50 {:.2} ms, added p99 {:.2} ms (aim <= 1 ms)",
            ms(t.p50) - ms(d.p50),
            ms(t.p99) - ms(d.p99)
        )
        .unwrap();
            if let Some(cpu) = cpu {
                writeln!(
                summary,
                "{backend}, {name}: idplane used {:.0} us of CPU per send ({:.2} cores at {:.0} sends/s)",
                cpu * 1e6 / t.requests.max(1) as f64,
                cpu / t.seconds,
                t.throughput()
            )
            .unwrap();
            }
        }
        drop(idplane);
    }
    report.push_str(&summary);
    print!("{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("telephony.txt"), &report).unwrap();
    eprintln!("wrote {}", out.join("telephony.txt").display());
}
