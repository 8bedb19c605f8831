//! Convergence benchmark against the real test cluster (run
//! `eval "$(scripts/test-cluster.sh up)"` first, or set IDPLANE_TEST_KUBECONFIG).
//!
//! 1. Starts the operator (release build) on a fresh namespace set and
//!    records its resident memory while idle.
//! 2. Applies 1,000 mixed objects (hooks, policies, providers, domains) and
//!    times until every one carries its current observedGeneration and its
//!    final Ready condition.
//! 3. In the same run, times 1,000 status patches written by a bare client
//!    loop (server-side apply of status, one after the other) and reports
//!    the ratio.
//! 4. Grows to 10,000 objects and records resident memory again.
//!
//! Results go to bench-results/convergence.txt.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ApiResource;
use kube::{Client, Config};
use serde_json::json;

use idplane::resources::{EmailDomain, EmailProvider, EnrollmentPolicy, TelephonyHook};

mod support;
use support::{Killed, kubeconfig, kubectl_ok};

const NAMESPACES: usize = 20;

async fn client() -> Client {
    let kc = Kubeconfig::read_from(kubeconfig()).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn kinds() -> [(&'static str, ApiResource); 4] {
    [
        ("TelephonyHook", ApiResource::erase::<TelephonyHook>(&())),
        (
            "EnrollmentPolicy",
            ApiResource::erase::<EnrollmentPolicy>(&()),
        ),
        ("EmailProvider", ApiResource::erase::<EmailProvider>(&())),
        ("EmailDomain", ApiResource::erase::<EmailDomain>(&())),
    ]
}

/// Object number `i` of a mixed set: a quarter of each kind.
fn object(i: usize, prefix: &str) -> (usize, String, serde_json::Value) {
    let kind = i % 4;
    let ns = format!("{prefix}-{}", i % NAMESPACES);
    let name = format!("o{i}");
    let spec = match kind {
        0 => json!({"url": format!("https://sms.example.com/{i}"), "active": false,
                     "auth": {"header": "X-Key", "secretRef": {"name": "sms", "key": "token"}}}),
        1 => json!({"priority": i + 1, "groups": [format!("g{i}")],
                     "authenticators": [{"key": "okta_email", "enroll": "REQUIRED"}]}),
        2 => json!({"host": "smtp.example.com", "port": 587, "username": "u",
                     "passwordSecretRef": {"name": "smtp", "key": "password"}}),
        _ => {
            json!({"brand": format!("b{i}"), "domain": "example.com", "userName": "no", "displayName": "N"})
        }
    };
    let (k, _) = &kinds()[kind];
    let body = json!({"apiVersion": "idplane.dev/v1alpha1", "kind": k, "metadata": {"name": name, "namespace": ns}, "spec": spec});
    (kind, ns, body)
}

async fn apply_range(client: &Client, prefix: &str, range: std::ops::Range<usize>) {
    let kinds = kinds();
    futures::stream::iter(range)
        .map(|i| {
            let (kind, ns, body) = object(i, prefix);
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &kinds[kind].1);
            async move {
                let name = body["metadata"]["name"].as_str().unwrap().to_string();
                api.patch(
                    &name,
                    &PatchParams::apply("bench").force(),
                    &Patch::Apply(body),
                )
                .await
                .expect("apply");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// Counts objects whose status is current and has its final Ready condition.
async fn converged(client: &Client, prefix: &str) -> usize {
    let mut n = 0;
    for (ns, (_, ar)) in (0..NAMESPACES).flat_map(|i| {
        kinds()
            .into_iter()
            .map(move |k| (format!("{prefix}-{i}"), k))
    }) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        let list = api.list(&ListParams::default()).await.unwrap();
        for o in list.items {
            let generation = o.metadata.generation;
            let status = &o.data["status"];
            let current = status["observedGeneration"].as_i64() == generation;
            let ready = status["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["observedGeneration"].as_i64() == generation)
            });
            if current && ready {
                n += 1;
            }
        }
    }
    n
}

async fn wait_converged(client: &Client, prefix: &str, want: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let n = converged(client, prefix).await;
        if n >= want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "only {n}/{want} converged after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes; the bench needs a cluster
    }
    let root = env!("CARGO_MANIFEST_DIR");
    std::env::set_current_dir(root).unwrap();
    kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", "crds/"]);
    let client = client().await;
    let run = format!("bench{:x}", std::process::id());
    let namespaces: Vec<String> = (0..NAMESPACES).map(|n| format!("{run}-{n}")).collect();
    for ns in &namespaces {
        kubectl_ok(&["create", "namespace", ns]);
        kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "sms",
            "-n",
            ns,
            "--from-literal=token=t",
        ]);
        kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "smtp",
            "-n",
            ns,
            "--from-literal=password=p",
        ]);
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_idplane"))
        .args([
            "operator",
            "--namespaces",
            &namespaces.join(","),
            "--listen",
            "127.0.0.1:0",
            "--database",
            tmp.path().join("db").to_str().unwrap(),
            "--lease-namespace",
            &namespaces[0],
            "--lease-seconds",
            "6",
        ])
        .env("KUBECONFIG", kubeconfig())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("operator");
    let stderr = operator.stderr.take().unwrap();
    let operator = Killed(operator);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("listening on ") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("operator listening");
    tokio::time::sleep(Duration::from_secs(8)).await; // lease acquired, idle
    let idle_kib = rss_kib(operator.0.id());

    // 1,000 mixed objects: apply and wait for convergence.
    let start = Instant::now();
    apply_range(&client, &run, 0..1000).await;
    let applied = start.elapsed();
    wait_converged(&client, &run, 1000, Duration::from_secs(300)).await;
    let convergence = start.elapsed();

    // The bare loop: 1,000 status patches, one after the other.
    let kinds = kinds();
    let bare_start = Instant::now();
    for i in 0..1000 {
        let (kind, ns, body) = object(i, &run);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &kinds[kind].1);
        let name = body["metadata"]["name"].as_str().unwrap().to_string();
        let status = json!({"apiVersion": "idplane.dev/v1alpha1", "kind": kinds[kind].0,
            "status": {"observedGeneration": 1, "conditions": [{"type": "Bench", "status": "True", "reason": "Bench", "message": "bare loop", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        api.patch_status(
            &name,
            &PatchParams::apply("bench-bare").force(),
            &Patch::Apply(status),
        )
        .await
        .expect("status patch");
    }
    let bare = bare_start.elapsed();

    // Grow to 10,000 objects for the memory reading.
    let big_start = Instant::now();
    apply_range(&client, &run, 1000..10_000).await;
    wait_converged(&client, &run, 10_000, Duration::from_secs(900)).await;
    let big = big_start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded_kib = rss_kib(operator.0.id());
    drop(operator);
    // Leave the cluster as we found it (namespaces stay: no namespace controller).
    for ns in &namespaces {
        kubectl_ok(&[
            "delete",
            "telephonyhooks,enrollmentpolicies,emailproviders,emaildomains",
            "--all",
            "-n",
            ns,
            "--wait=false",
        ]);
    }

    let ratio = convergence.as_secs_f64() / bare.as_secs_f64();
    let server = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let report = format!(
        "# idplane convergence benchmark ({date}, {cores} cores, Kubernetes {server} test apiserver)\n\
         command: cargo bench --bench convergence\n\
         objects: 1000 mixed (hooks, policies, providers, domains) in {NAMESPACES} namespaces\n\
         apply (16 concurrent server-side applies): {applied:.2?}\n\
         convergence (apply start -> every object has current observedGeneration and Ready): {convergence:.2?}\n\
         bare client loop, 1000 sequential status patches: {bare:.2?}\n\
         ratio convergence / bare loop: {ratio:.2} (aim <= 1.5)\n\
         10,000 objects converged in: {big:.2?}\n\
         operator RSS idle: {idle:.1} MB (aim <= 40 MB)\n\
         operator RSS with 10,000 objects: {loaded:.1} MB (aim <= 150 MB)\n",
        date = chrono::Utc::now().format("%Y-%m-%d"),
        cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        idle = idle_kib as f64 / 1024.0,
        loaded = loaded_kib as f64 / 1024.0,
    );
    std::fs::create_dir_all("bench-results").unwrap();
    std::fs::write("bench-results/convergence.txt", &report).unwrap();
    print!("{report}");
}
