//! Email throughput: N messages accepted through idplane's API and
//! delivered to Postfix's smtp-sink, against lettre sending the same
//! messages straight to smtp-sink with the same pool size, in one run.
//! Reports both throughputs and their ratio (API clients sending as fast as
//! they are answered), the accept latency p99 and the accept-to-delivered
//! p50 under a steady load (messages sent on a fixed schedule) and one
//! message at a time, and writes them to `bench-results/email.txt`.
//!
//! Each measurement runs once per store backend, SQLite and PostgreSQL (a
//! throwaway server on the same machine, fsync on, from
//! scripts/test-postgres.sh), against the same baseline.
//!
//! Run: `cargo bench --bench email` (installs smtp-sink through
//! scripts/test-tools.sh on first use). Backends: IDPLANE_BENCH_BACKENDS
//! (sqlite,postgres). N: IDPLANE_BENCH_EMAILS (30000);
//! the numbers of concurrent API clients: IDPLANE_BENCH_CLIENTS (16,32,48);
//! the steady loads as shares of the baseline: IDPLANE_BENCH_OFFERED
//! (0.25,0.5).
//!
//! A control run sends the highest steady load's schedule to `GET /healthz`
//! (no store, no queue): what the load generator itself adds.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use idplane::email::smtp::transmit;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::client::{AsyncSmtpConnection, Tls};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POOL: u32 = 4;
const PACED: usize = 200;
mod support;
use support::{Killed, OwnServer, free_port, fresh_database_on, root, run_idplane, test_tool};

const TOKEN: &str = "bench-token-0123456789abcdef";

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

fn start_idplane(dir: &Path, smtp_port: u16, database: &str) -> (Killed, String) {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let port = smtp_port.to_string();
    let pool = POOL.to_string();
    run_idplane(
        dir,
        &manifests,
        TOKEN,
        &[
            "--database",
            database,
            // Replicas on PostgreSQL share the passcode key; idplane
            // refuses to start there without one.
            "--otp-hash-key",
            "bench-passcode-key-0123456789abcdefgh",
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

/// An API client of the load generator: one keep-alive HTTP/1.1
/// connection, each request written whole, each response read by its
/// Content-Length (idplane always sends one). reqwest's pool, URL parsing
/// and JSON values cost the load generator about 40 us of CPU per request,
/// which on two shared cores is taken from the server under test.
struct ApiClient {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct Accepted {
    id: String,
}

impl ApiClient {
    async fn connect(base: &str) -> Self {
        let addr = base.strip_prefix("http://").expect("an http:// address");
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Posts message `i`; (accept milliseconds, id).
    async fn send(&mut self, i: usize) -> (f64, String) {
        let t = Instant::now();
        let body = format!(
            r#"{{"to":"user@example.com","subject":"bench {i}","text":"message {i} of the email benchmark"}}"#
        );
        let request = format!(
            "POST /v1/orgs/bench/emails HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await.unwrap();
        let (status, body) = self.response().await;
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
        let id = serde_json::from_slice::<Accepted>(&body).unwrap().id;
        (t.elapsed().as_secs_f64() * 1000.0, id)
    }

    /// Asks `GET /healthz` (no store, no queue); milliseconds.
    async fn probe(&mut self) -> f64 {
        let t = Instant::now();
        self.stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n")
            .await
            .unwrap();
        let (status, body) = self.response().await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        t.elapsed().as_secs_f64() * 1000.0
    }

    /// Reads one response: (status, body).
    async fn response(&mut self) -> (u16, Vec<u8>) {
        self.buf.clear();
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            self.read_more().await;
        };
        let head = std::str::from_utf8(&self.buf[..end]).unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .expect("idplane sends Content-Length");
        while self.buf.len() < end + 4 + length {
            self.read_more().await;
        }
        (status, self.buf[end + 4..end + 4 + length].to_vec())
    }

    async fn read_more(&mut self) {
        let n = self.stream.read_buf(&mut self.buf).await.unwrap();
        assert!(n > 0, "idplane closed the connection");
    }
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
    ApiClient::connect(base).await.send(usize::MAX).await;
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
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(ApiClient::connect(base).await);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_seconds(pid);
    let own_before = cpu_seconds(std::process::id());
    let start = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut c| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut sent = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return sent;
                    }
                    sent.push(c.send(i).await);
                }
            })
        })
        .collect();
    let mut results: Vec<(f64, String)> = Vec::with_capacity(n);
    for t in tasks {
        results.extend(t.await.unwrap());
    }
    wait_delivered(client, base, done + n, Duration::from_millis(5)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_micros = (cpu_seconds(pid) - cpu_before) / n as f64 * 1e6;
    let clients_cpu_micros = (cpu_seconds(std::process::id()) - own_before) / n as f64 * 1e6;
    let ids: Vec<String> = results.iter().map(|r| r.1.clone()).collect();
    let mut accept: Vec<f64> = results.iter().map(|r| r.0).collect();
    accept.sort_by(f64::total_cmp);
    Saturated {
        clients,
        cpu_micros,
        clients_cpu_micros,
        throughput: n as f64 / elapsed,
        accept,
        to_delivered: accept_to_delivered(client, base, ids).await,
    }
}

/// Latency under a steady offered load: `count` messages at `rate` per
/// second on a fixed schedule, over `connections` clients that take the
/// next scheduled message when free. Each accept latency counts from the
/// message's scheduled time, so a slow answer cannot hide the messages
/// that queued behind it. (accept, accept-to-delivered), sorted. With
/// `floor`, the same schedule asks `GET /healthz` instead: the latency the
/// load generator and the machine add on their own (and no deliveries).
async fn offered(
    client: &reqwest::Client,
    base: &str,
    rate: f64,
    count: usize,
    done: usize,
    floor: bool,
) -> (Vec<f64>, Vec<f64>) {
    const CONNECTIONS: usize = 64;
    let (jobs, queue) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut api = ApiClient::connect(base).await;
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            loop {
                let job = queue.lock().await.recv().await;
                let Some((i, scheduled)) = job else {
                    return sent;
                };
                if floor {
                    api.probe().await;
                    sent.push((scheduled.elapsed().as_secs_f64() * 1000.0, String::new()));
                    continue;
                }
                let (_, id) = api.send(i).await;
                sent.push((scheduled.elapsed().as_secs_f64() * 1000.0, id));
            }
        }));
    }
    // The schedule runs on its own thread: tokio's timer wakes on whole
    // milliseconds, which would add up to a millisecond to every latency.
    let schedule = std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..count {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            jobs.send((i, at)).unwrap();
        }
    });
    let mut sent = Vec::with_capacity(count);
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    schedule.join().unwrap();
    if floor {
        let mut answered: Vec<f64> = sent.iter().map(|r| r.0).collect();
        answered.sort_by(f64::total_cmp);
        return (answered, Vec::new());
    }
    wait_delivered(client, base, done + count, Duration::from_millis(5)).await;
    let mut accept: Vec<f64> = sent.iter().map(|r| r.0).collect();
    accept.sort_by(f64::total_cmp);
    let to_delivered =
        accept_to_delivered(client, base, sent.into_iter().map(|r| r.1).collect()).await;
    (accept, to_delivered)
}

/// Latency without a backlog: one client, one message at a time, each
/// after the previous was delivered; (accept, accept-to-delivered).
async fn paced(client: &reqwest::Client, base: &str, done: usize) -> (Vec<f64>, Vec<f64>) {
    let mut api = ApiClient::connect(base).await;
    let mut sent = Vec::new();
    for i in 0..PACED {
        sent.push(api.send(i).await);
        wait_delivered(client, base, done + i + 1, Duration::from_millis(1)).await;
    }
    let mut accept: Vec<f64> = sent.iter().map(|r| r.0).collect();
    accept.sort_by(f64::total_cmp);
    let to_delivered =
        accept_to_delivered(client, base, sent.into_iter().map(|r| r.1).collect()).await;
    (accept, to_delivered)
}

/// What the disk alone gives: `count` flushes of a 4 KiB write (what a
/// commit's WAL append and fsync come to) in `dir`, each timed, sorted in
/// ms. A flush that stalls holds every accept waiting behind it.
fn disk_flushes(dir: &Path, count: usize) -> Vec<f64> {
    use std::io::{Seek, SeekFrom, Write};
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("disk-probe.bin");
    let mut file = std::fs::File::create(&path).unwrap();
    let page = [0x5au8; 4096];
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        file.seek(SeekFrom::Start((i % 256) as u64 * 4096)).unwrap();
        file.write_all(&page).unwrap();
        let start = Instant::now();
        file.sync_data().unwrap();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    times.sort_by(f64::total_cmp);
    times
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
    /// The load generator's (this process's) CPU time per message.
    clients_cpu_micros: f64,
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
                    transmit(&mut conn, &message(i), pipelining, Duration::from_secs(30))
                        .await
                        .unwrap();
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

/// One steady load's lines of the report.
fn steady_report(
    share: f64,
    rate: f64,
    n: usize,
    (accept, to_delivered): &(Vec<f64>, Vec<f64>),
) -> String {
    format!(
        "\n\
         through idplane, a steady {rate:.0} messages/s ({share} of the baseline, on a fixed schedule, {n} messages):\n\
         accept latency p50 / p99:       {:.2} / {:.2} ms (from each message's scheduled time; aim p99 <= 5 ms)\n\
         accept-to-delivered p50 / p99:  {:.0} / {:.0} ms (aim p50 <= 10 ms)\n",
        percentile(accept, 0.5),
        percentile(accept, 0.99),
        percentile(to_delivered, 0.5),
        percentile(to_delivered, 0.99),
    )
}

/// A steady load: its share of the baseline, its rate, and its
/// (accept, accept-to-delivered) latencies.
type Steady = (f64, f64, (Vec<f64>, Vec<f64>));

/// What one backend's run measured.
struct BackendRun {
    runs: Vec<Saturated>,
    steady: Vec<Steady>,
    paced_accept: Vec<f64>,
    unloaded: Vec<f64>,
}

/// The store a backend's idplane runs on: `--database` and its label.
fn database(backend: &str, dir: &Path, postgres: Option<&OwnServer>) -> (String, &'static str) {
    match backend {
        "sqlite" => (
            dir.join("state/idplane.db").display().to_string(),
            "SQLite commit, synchronous=FULL",
        ),
        "postgres" => (
            fresh_database_on(&postgres.expect("a PostgreSQL server").url),
            "PostgreSQL commit on the same machine, fsync on",
        ),
        other => panic!("IDPLANE_BENCH_BACKENDS: unknown backend {other} (sqlite, postgres)"),
    }
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
        .unwrap_or(30_000);
    let shares: Vec<f64> = std::env::var("IDPLANE_BENCH_OFFERED")
        .unwrap_or_else(|_| "0.25,0.5".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let backends = support::backends();
    let sink = test_tool("IDPLANE_SMTP_SINK");
    let (_sink, smtp_port) = start_sink(&sink);
    let dir = tempfile::tempdir().unwrap();
    let postgres = support::postgres_for(&backends);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let transport = rt.block_on(run_lettre_transport(smtp_port, n.min(400)));
    let direct = rt.block_on(run_lettre_connections(smtp_port, n, false));
    let pipelined = rt.block_on(run_lettre_connections(smtp_port, n, true));
    let client = reqwest::Client::new();
    let top = shares.iter().copied().fold(0.0, f64::max);
    let mut measured = Vec::new();
    let mut floor = Vec::new();
    for (b, backend) in backends.iter().enumerate() {
        let (url, label) = database(backend, dir.path(), postgres.as_ref());
        let (idplane, base) = start_idplane(dir.path(), smtp_port, &url);
        let run = rt.block_on(async {
            warm_up(&client, &base).await;
            let mut done = 1;
            let mut runs = Vec::new();
            for &clients in &levels {
                runs.push(saturate(&client, &base, n, clients, done, idplane.0.id()).await);
                done += n;
            }
            let mut steady = Vec::new();
            for &share in &shares {
                let rate = (direct * share).round();
                steady.push((
                    share,
                    rate,
                    offered(&client, &base, rate, n, done, false).await,
                ));
                done += n;
            }
            // The control once, on the first backend's process.
            if b == 0 && top > 0.0 {
                floor = offered(&client, &base, (direct * top).round(), n, done, true)
                    .await
                    .0;
            }
            let (paced_accept, unloaded) = paced(&client, &base, done).await;
            BackendRun {
                runs,
                steady,
                paced_accept,
                unloaded,
            }
        });
        drop(idplane);
        measured.push((backend.clone(), label, run));
    }
    let disk = disk_flushes(&dir.path().join("state"), n);
    let mut report = format!(
        "email benchmark: {n} messages to Postfix smtp-sink on loopback, pool size {POOL}, one run, backends: {}\n\
         command: cargo bench --bench email\n\
         \n\
         direct (no idplane):\n\
         lettre AsyncSmtpTransport:      {transport:.0} messages/s (its pool; content and final dot in two writes meet Nagle + delayed ACK)\n\
         lettre connections, lock-step:  {direct:.0} messages/s ({POOL} connections, MAIL, RCPT, DATA, content each awaited as lettre sends, content in one write; THE BASELINE)\n\
         lettre connections, pipelined:  {pipelined:.0} messages/s ({POOL} connections, MAIL+RCPT+DATA in one write (RFC 2920), as idplane sends)\n",
        backends.join(", ")
    );
    for (backend, label, run) in &measured {
        report.push_str(&format!("\n=== store: {backend} ({label})\n"));
        for r in &run.runs {
            report.push_str(&format!(
                "\n\
                 through idplane, {} API clients at once, each sending when its previous message was accepted (HTTP accept + {label} + queue + pipelined delivery):\n\
                 throughput:                     {:.0} messages/s\n\
                 idplane CPU per message:        {:.0} us (user + system, all its threads)\n\
                 API clients' CPU per message:   {:.0} us (the load generator, on the same cores)\n\
                 ratio to the baseline:          {:.2} (aim >= 0.70)\n\
                 ratio to pipelined direct:      {:.2} (idplane's cost over its own SMTP path)\n\
                 accept latency p50 / p99:       {:.2} / {:.2} ms (the queue of {} clients at full speed)\n\
                 accept-to-delivered p50 / p99:  {:.0} / {:.0} ms (includes the backlog the clients build)\n",
                r.clients,
                r.throughput,
                r.cpu_micros,
                r.clients_cpu_micros,
                r.throughput / direct,
                r.throughput / pipelined,
                percentile(&r.accept, 0.5),
                percentile(&r.accept, 0.99),
                r.clients,
                percentile(&r.to_delivered, 0.5),
                percentile(&r.to_delivered, 0.99),
            ));
        }
        for (share, rate, latencies) in &run.steady {
            report.push_str(&steady_report(*share, *rate, n, latencies));
        }
        report.push_str(&format!(
            "\n\
             latency ({PACED} messages, one client, each after the previous was delivered):\n\
             accept latency p50 / p99:       {:.2} / {:.2} ms (aim p99 <= 5 ms)\n\
             accept-to-delivered p50 / p99:  {:.0} / {:.0} ms (aim p50 <= 10 ms)\n",
            percentile(&run.paced_accept, 0.5),
            percentile(&run.paced_accept, 0.99),
            percentile(&run.unloaded, 0.5),
            percentile(&run.unloaded, 0.99),
        ));
    }
    if !floor.is_empty() {
        report.push_str(&format!(
            "\n\
             the load generator alone: the same schedule ({top} of the baseline) asking GET /healthz (no store, no queue):\n\
             answer latency p50 / p99:       {:.2} / {:.2} ms (what the load generator, HTTP and the machine add to the figures above)\n",
            percentile(&floor, 0.5),
            percentile(&floor, 0.99),
        ));
    }
    report.push_str(&format!(
        "\n\
         the disk alone: {n} flushes (4 KiB write + fdatasync) beside the SQLite store, idplane idle:\n\
         flush latency p50 / p99 / max:  {:.2} / {:.2} / {:.2} ms ({} over 5 ms; every SQLite accept waits for one, synchronous=FULL)\n",
        percentile(&disk, 0.5),
        percentile(&disk, 0.99),
        disk.last().copied().unwrap_or(0.0),
        disk.iter().filter(|&&ms| ms > 5.0).count(),
    ));
    print!("{report}");
    let out = root().join("bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("email.txt"), &report).unwrap();
    eprintln!("wrote {}", out.join("email.txt").display());
}
