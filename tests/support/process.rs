//! The idplane binary as a child process of a test, and what every test
//! needs around it: the repository root, bounded waits, a free loopback
//! port, a blocking runtime, a workspace with a token file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::api::http_get;

/// The repository root (tests run there).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Bytes a process printed, as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd` with `input` on its stdin; what it printed and its status.
pub fn output_with_stdin(mut cmd: Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Polls `check` every 200 ms until it returns Some, or panics after
/// `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_every(what, timeout, Duration::from_millis(200), check)
}

/// [`wait_for`], checking every `every`.
pub fn wait_every<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// A port of 127.0.0.1 that nothing listens on (it was free a moment ago).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a future to its end on a runtime of its own (tests are blocking).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A temporary directory with an empty `manifests/` and a `tokens.yaml`
/// granting `token` (named `token_name`) every org; the directory and the
/// path of `manifests/`.
pub fn workspace_with_token(token_name: &str, token: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        tmp.path().join("tokens.yaml"),
        format!("tokens:\n  - {{name: {token_name}, token: {token}, orgs: ['*']}}\n"),
    )
    .unwrap();
    (tmp, manifests)
}

/// A child process (a server a test started), killed and reaped when
/// dropped, however the test ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Killed {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// The egress allowance of the tests whose servers listen on loopback:
/// idplane refuses loopback unless the installation allows it.
pub const ALLOW_LOOPBACK: [&str; 2] = ["--egress-allow", "127.0.0.0/8"];

/// The arguments of [`Idplane::run_manifests`] before its extra flags,
/// for a test that starts `idplane run` itself ([`Idplane::start`]).
pub fn run_args<'a>(manifests: &'a Path, database: &'a Path, tokens: &'a Path) -> Vec<&'a str> {
    vec![
        "run",
        "--manifests",
        manifests.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--database",
        database.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--poll-millis",
        "100",
    ]
}

/// A running idplane process, killed when dropped.
pub struct Idplane {
    pub child: Killed,
    pub addr: String,
    pub log: PathBuf,
}

impl Idplane {
    /// Starts `idplane ARGS`, waits for "listening on ADDR" on stderr.
    pub fn start(args: &[&str], env: &[(&str, &str)], log: &Path) -> Idplane {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idplane"));
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .current_dir(root());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = Killed(cmd.spawn().expect("idplane starts"));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.to_path_buf();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).unwrap();
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(file, "{line}");
                if !sent && let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "idplane did not start listening; log: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            });
        Idplane {
            child,
            addr,
            log: log.to_path_buf(),
        }
    }

    /// `idplane run` on a manifest directory with its own database and
    /// token file, on a free loopback port, re-reading the manifests every
    /// 100 ms, with `extra` flags; returns once it is ready.
    pub fn run_manifests(
        manifests: &Path,
        database: &Path,
        tokens: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Idplane {
        let mut args = run_args(manifests, database, tokens);
        args.extend_from_slice(extra);
        let run = Idplane::start(&args, env, log);
        wait_every(
            "ready",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || (http_get(&run.url("/readyz"), None).0 == 200).then_some(()),
        );
        run
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `timeout` for the
    /// process to exit.
    pub fn stop(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        wait_every(
            "idplane to exit after SIGTERM",
            timeout,
            Duration::from_millis(50),
            || self.child.try_wait().unwrap(),
        )
    }

    /// Waits until `/readyz` answers 200; panics with the log when the
    /// process exits first or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "idplane exited ({status}) before it was ready; log:\n{}",
                    self.log_text()
                );
            }
            let (code, body) = http_get(&self.url("/readyz"), None);
            if code == 200 {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "not ready after {timeout:?}: /readyz {code} {body}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the process wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The value of a metric line (exact name and labels) in /metrics.
    pub fn metric(&self, line_prefix: &str) -> f64 {
        let body = http_get(&self.url("/metrics"), None).1;
        body.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}
