//! What the benchmarks share: the tests' helpers (processes killed on
//! drop, free ports, the test tools, the test cluster) and the release
//! binary run as `idplane run --manifests DIR` with a token file.

// Each benchmark uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

// The tests' helpers, defined once for tests and benchmarks alike; each
// benchmark uses part of them.
#[path = "../../tests/support/mod.rs"]
mod tests_support;

#[allow(unused_imports)]
pub use tests_support::admission;
#[allow(unused_imports)]
pub use tests_support::postgres::{OwnServer, fresh_database_on};
#[allow(unused_imports)]
pub use tests_support::{
    Idplane, Killed, free_port, kubeconfig, kubectl_ok, root, test_tool, wait_for,
};

/// The store backends a benchmark measures, in order:
/// IDPLANE_BENCH_BACKENDS (`sqlite,postgres` by default).
pub fn backends() -> Vec<String> {
    std::env::var("IDPLANE_BENCH_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// A PostgreSQL server of the benchmark's own when `backends` has one.
pub fn postgres_for(backends: &[String]) -> Option<OwnServer> {
    backends
        .iter()
        .any(|b| b == "postgres")
        .then(OwnServer::start)
}

/// Writes `tokens.yaml` in `dir` granting `token` every org, starts
/// `idplane run --manifests MANIFESTS --listen 127.0.0.1:0 --tokens …
/// --egress-allow 127.0.0.0/8`
/// with `extra` flags, and returns once it prints the address it listens
/// on: the process and `http://ADDR`.
pub fn run_idplane(dir: &Path, manifests: &Path, token: &str, extra: &[&str]) -> (Killed, String) {
    let tokens = dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!("tokens:\n  - {{name: bench, token: {token}, orgs: ['*']}}\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_idplane"))
        .args(["run", "--manifests"])
        .arg(manifests)
        .args(["--listen", "127.0.0.1:0", "--tokens"])
        .arg(&tokens)
        // The benchmarks' hook services and SMTP servers are on loopback,
        // which idplane connects to only when the installation allows it.
        .args(["--egress-allow", "127.0.0.0/8"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the idplane binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("idplane listens");
    (Killed(child), format!("http://{addr}"))
}

/// Ends a benchmark's report with the machine's load average (the
/// machine is shared: a busy one explains slow figures), prints it and
/// writes it to `bench-results/FILE`.
pub fn write_results(file: &str, mut report: String) {
    use std::fmt::Write as _;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let _ = writeln!(report, "load average during the run: {}", load.join(" "));
    print!("{report}");
    let dir = root().join("bench-results");
    std::fs::create_dir_all(&dir).expect("create bench-results");
    std::fs::write(dir.join(file), report).expect("write the results");
}
