//! Email throughput: N messages accepted through idplane's API and
//! delivered to Postfix's smtp-sink, against lettre sending the same
//! messages straight to smtp-sink with the same pool size, in one run.
//! Reports both throughputs, their ratio, the accept latency p99 and the
//! accept-to-delivered p50, and writes them to `bench-results/email.txt`.
//!
//! Run: `cargo bench --bench email` (installs smtp-sink through
//! scripts/test-tools.sh on first use). N: IDPLANE_BENCH_EMAILS (10000);
//! the numbers of concurrent API clients: IDPLANE_BENCH_CLIENTS (16,32,48).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use idplane::email::smtp::transmit;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::client::{AsyncSmtpConnection, Tls};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};

const POOL: u32 = 4;
const PACED: usize = 200;
mod support;
use support::{Killed, run_idplane};

const TOKEN: &str = "bench-token-0123456789abcdef";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn smtp_sink_path() -> PathBuf {
    let out = Command::new("bash")
        .arg(root().join("scripts/test-tools.sh"))
        .output()
        .expect("scripts/test-tools.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("export IDPLANE_SMTP_SINK="))
        .map(PathBuf::from)
        .expect("test-tools.sh names smtp-sink")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_sink(sink: &Path) -> (Killed, u16) {
    let port = free_port();
    let child = Command::new(sink)
        .args(["-u", "postfix", "-m", "256"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("256")
        .stdout(Stdio::null())
        .spawn()
        .expect("smtp-sink starts");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "smtp-sink did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Killed(child), port)
}

fn start_idplane(dir: &Path, smtp_port: u16) -> (Killed, String) {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let port = smtp_port.to_string();
    let pool = POOL.to_string();
    let database = dir.join("state/idplane.db");
    run_idplane(
        dir,
        &manifests,
        TOKEN,
        &[
            "--database",
            database.to_str().unwrap(),
            "--smtp-host",
            "127.0.0.1",
            "--smtp-port",
            &port,
            "--smtp-tls",
            "none",
            "--smtp-allow-insecure",
            "--smtp-pool-size",
            &pool,
            "--email-concurrency",
            &pool,
            "--email-default-sender",
            "Bench <bench@idplane.example>",
        ],
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn message(i: usize) -> Message {
    Message::builder()
        .from("Bench <bench@idplane.example>".parse().unwrap())
        .to("user@example.com".parse().unwrap())
        .subject(format!("bench {i}"))
        .body(format!("message {i} of the email benchmark"))
        .unwrap()
}

async fn delivered(client: &reqwest::Client, base: &str) -> f64 {
    let body = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find(|l| {
            l.starts_with(
                "idplane_email_delivery_events_total{outcome=\"SUCCESS\",provider=\"default\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Posts message `i`; (accept milliseconds, id).
async fn send(client: &reqwest::Client, base: &str, i: usize) -> (f64, String) {
    let t = Instant::now();
    let r = client
        .post(format!("{base}/v1/orgs/bench/emails"))
        .bearer_auth(TOKEN)
        .json(&json!({"to": "user@example.com", "subject": format!("bench {i}"), "text": format!("message {i} of the email benchmark")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    (t.elapsed().as_secs_f64() * 1000.0, id)
}

/// Waits until idplane has delivered `count` messages in all.
async fn wait_delivered(client: &reqwest::Client, base: &str, count: usize, pause: Duration) {
    let start = Instant::now();
    while delivered(client, base).await < count as f64 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "idplane did not deliver everything"
        );
        tokio::time::sleep(pause).await;
    }
}

/// Waits for readiness and sends one message end to end (warm-up).
async fn warm_up(client: &reqwest::Client, base: &str) {
    let start = Instant::now();
    while client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "idplane not ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send(client, base, usize::MAX).await;
    wait_delivered(client, base, 1, Duration::from_millis(5)).await;
}

/// `n` messages from `clients` concurrent API clients, until all are
/// delivered; `done` messages were delivered before.
async fn saturate(
    client: &reqwest::Client,
    base: &str,
    n: usize,
    clients: usize,
    done: usize,
    pid: u32,
) -> Saturated {
    let cpu_before = cpu_seconds(pid);
    let start = Instant::now();
    let results: Vec<(f64, String)> = futures::stream::iter(0..n)
        .map(|i| send(client, base, i))
        .buffer_unordered(clients)
        .collect()
        .await;
    wait_delivered(client, base, done + n, Duration::from_millis(5)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_micros = (cpu_seconds(pid) - cpu_before) / n as f64 * 1e6;
    let ids: Vec<String> = results.iter().map(|r| r.1.clone()).collect();
    let mut accept: Vec<f64> = results.iter().map(|r| r.0).collect();
    accept.sort_by(f64::total_cmp);
    Saturated {
        clients,
        cpu_micros,
        throughput: n as f64 / elapsed,
        accept,
        to_delivered: accept_to_delivered(client, base, ids).await,
    }
}

/// Latency without a backlog: one client, one message at a time, each
/// after the previous was delivered; (accept, accept-to-delivered).
async fn paced(client: &reqwest::Client, base: &str, done: usize) -> (Vec<f64>, Vec<f64>) {
    let mut sent = Vec::new();
    for i in 0..PACED {
        sent.push(send(client, base, i).await);
        wait_delivered(client, base, done + i + 1, Duration::from_millis(1)).await;
    }
    let mut accept: Vec<f64> = sent.iter().map(|r| r.0).collect();
    accept.sort_by(f64::total_cmp);
    let to_delivered =
        accept_to_delivered(client, base, sent.into_iter().map(|r| r.1).collect()).await;
    (accept, to_delivered)
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

struct Saturated {
    clients: usize,
    /// idplane's CPU time per message, microseconds.
    cpu_micros: f64,
    throughput: f64,
    accept: Vec<f64>,
    to_delivered: Vec<f64>,
}

/// Sorted milliseconds from accept to delivery of each message, from the API.
async fn accept_to_delivered(client: &reqwest::Client, base: &str, ids: Vec<String>) -> Vec<f64> {
    let mut to_delivered = Vec::with_capacity(ids.len());
    let details: Vec<Value> = futures::stream::iter(ids)
        .map(|id| {
            let client = client.clone();
            let url = format!("{base}/v1/orgs/bench/emails/{id}");
            async move {
                client
                    .get(url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for d in details {
        assert_eq!(d["state"], "sent", "{d}");
        let t = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(d[k].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        };
        to_delivered.push((t("finishedAt") - t("createdAt")) as f64);
    }
    to_delivered.sort_by(f64::total_cmp);
    to_delivered
}

/// lettre's pooled `AsyncSmtpTransport`, as it comes.
async fn run_lettre_transport(port: u16, n: usize) -> f64 {
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::None)
        .pool_config(PoolConfig::new().max_size(POOL))
        .build();
    transport.send(message(usize::MAX)).await.unwrap();
    let start = Instant::now();
    let sent: Vec<bool> = futures::stream::iter(0..n)
        .map(|i| {
            let t = transport.clone();
            async move { t.send(message(i)).await.is_ok() }
        })
        .buffer_unordered(POOL as usize)
        .collect()
        .await;
    let elapsed = start.elapsed().as_secs_f64();
    assert!(sent.iter().all(|ok| *ok), "direct sends failed");
    n as f64 / elapsed
}

/// lettre connections, one per pool slot, each sending its share in turn
/// with the content in one write: the SMTP cost alone. Lock-step (MAIL,
/// RCPT, DATA, content: four round trips) as lettre sends; with
/// `pipelining`, as idplane sends to a server that offers it.
async fn run_lettre_connections(port: u16, n: usize, pipelining: bool) -> f64 {
    let start = Instant::now();
    let per = n.div_ceil(POOL as usize);
    let tasks: Vec<_> = (0..POOL as usize)
        .map(|k| {
            tokio::spawn(async move {
                let mut conn = AsyncSmtpConnection::connect_tokio1(
                    ("127.0.0.1", port),
                    Some(Duration::from_secs(10)),
                    &ClientId::default(),
                    None,
                    None,
                )
                .await
                .unwrap();
                for i in (k * per)..((k + 1) * per).min(n) {
                    transmit(&mut conn, &message(i), pipelining).await.unwrap();
                }
                let _ = conn.quit().await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let levels: Vec<usize> = std::env::var("IDPLANE_BENCH_CLIENTS")
        .unwrap_or_else(|_| "16,32,48".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let n: usize = std::env::var("IDPLANE_BENCH_EMAILS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let sink = smtp_sink_path();
    let (_sink, smtp_port) = start_sink(&sink);
    let dir = tempfile::tempdir().unwrap();
    let (idplane, base) = start_idplane(dir.path(), smtp_port);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let transport = rt.block_on(run_lettre_transport(smtp_port, n.min(400)));
    let direct = rt.block_on(run_lettre_connections(smtp_port, n, false));
    let pipelined = rt.block_on(run_lettre_connections(smtp_port, n, true));
    let client = reqwest::Client::new();
    let (runs, (paced_accept, unloaded)) = rt.block_on(async {
        warm_up(&client, &base).await;
        let mut done = 1;
        let mut runs = Vec::new();
        for &clients in &levels {
            runs.push(saturate(&client, &base, n, clients, done, idplane.0.id()).await);
            done += n;
        }
        (runs, paced(&client, &base, done).await)
    });
    let mut report = format!(
        "email benchmark: {n} messages to Postfix smtp-sink on loopback, pool size {POOL}, one run\n\
         command: cargo bench --bench email\n\
         \n\
         direct (no idplane):\n\
         lettre AsyncSmtpTransport:      {transport:.0} messages/s (its pool; content and final dot in two writes meet Nagle + delayed ACK)\n\
         lettre connections, lock-step:  {direct:.0} messages/s ({POOL} connections, MAIL, RCPT, DATA, content each awaited as lettre sends, content in one write; THE BASELINE)\n\
         lettre connections, pipelined:  {pipelined:.0} messages/s ({POOL} connections, MAIL+RCPT+DATA in one write (RFC 2920), as idplane sends)\n"
    );
    for r in &runs {
        report.push_str(&format!(
            "\n\
             through idplane, {} API clients at once (HTTP accept + SQLite commit, synchronous=FULL + queue + pipelined delivery):\n\
             throughput:                     {:.0} messages/s\n\
             idplane CPU per message:        {:.0} us (user + system, all its threads)\n\
             ratio to the baseline:          {:.2} (aim >= 0.70)\n\
             ratio to pipelined direct:      {:.2} (idplane's cost over its own SMTP path)\n\
             accept latency p50 / p99:       {:.2} / {:.2} ms (aim p99 <= 5 ms)\n\
             accept-to-delivered p50 / p99:  {:.0} / {:.0} ms (aim p50 <= 10 ms; includes the backlog the clients build)\n",
            r.clients,
            r.throughput,
            r.cpu_micros,
            r.throughput / direct,
            r.throughput / pipelined,
            percentile(&r.accept, 0.5),
            percentile(&r.accept, 0.99),
            percentile(&r.to_delivered, 0.5),
            percentile(&r.to_delivered, 0.99),
        ));
    }
    report.push_str(&format!(
        "\n\
         latency ({PACED} messages, one client, each after the previous was delivered):\n\
         accept latency p50 / p99:       {:.2} / {:.2} ms (aim p99 <= 5 ms)\n\
         accept-to-delivered p50 / p99:  {:.0} / {:.0} ms (aim p50 <= 10 ms)\n",
        percentile(&paced_accept, 0.5),
        percentile(&paced_accept, 0.99),
        percentile(&unloaded, 0.5),
        percentile(&unloaded, 0.99),
    ));
    print!("{report}");
    let out = root().join("bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("email.txt"), &report).unwrap();
    eprintln!("wrote {}", out.join("email.txt").display());
}
