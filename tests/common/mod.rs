//! Shared helpers of the integration tests: the real test cluster (started by
//! `scripts/test-cluster.sh up`, or any cluster named by
//! `IDPLANE_TEST_KUBECONFIG`), kubectl, temporary namespaces, and idplane
//! processes. Every wait is bounded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kubeconfig of the test cluster (`eval "$(scripts/test-cluster.sh up)"`
/// sets IDPLANE_TEST_KUBECONFIG; any other cluster works too); panics with
/// the fix when there is none.
pub fn kubeconfig() -> PathBuf {
    match std::env::var_os("IDPLANE_TEST_KUBECONFIG") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "no test cluster: run `eval \"$(scripts/test-cluster.sh up)\"` \
             (or set IDPLANE_TEST_KUBECONFIG)"
        ),
    }
}

/// kubectl: $KUBECTL (the one scripts/test-cluster.sh built for the
/// cluster's own version), or the PATH's.
pub fn kubectl_path() -> PathBuf {
    std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

pub fn kubectl(args: &[&str]) -> Output {
    Command::new(kubectl_path())
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .current_dir(root())
        .output()
        .expect("kubectl runs")
}

pub fn kubectl_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(kubectl_path())
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs kubectl and panics with its output unless it succeeds.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub fn apply_yaml(namespace: &str, yaml: &str) {
    let out = kubectl_stdin(
        &["apply", "--server-side", "-n", namespace, "-f", "-"],
        yaml,
    );
    assert!(
        out.status.success(),
        "apply failed:\n{}{}\n{yaml}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Installs the CRDs once per test process and waits until Established.
pub fn install_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", "crds/"]);
        for crd in [
            "telephonyhooks",
            "enrollmentpolicies",
            "emailproviders",
            "emaildomains",
        ] {
            kubectl_ok(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{crd}.idplane.dev"),
            ]);
        }
    });
}

/// The minor version of the test cluster's apiserver.
pub fn server_minor() -> u32 {
    let out = kubectl_ok(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["serverVersion"]["minor"]
        .as_str()
        .unwrap_or("0")
        .trim_end_matches('+')
        .parse()
        .unwrap_or(0)
}

/// A path that `scripts/test-tools.sh` prints (`export NAME=PATH`): the
/// script installs the test tools (smtp-sink, dnsmasq, the virtualenv with
/// aiosmtpd, the Helm SDK and schemathesis) on its first run, once per
/// test process.
pub fn test_tool(name: &str) -> PathBuf {
    static ENV: OnceLock<String> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("scripts/test-tools.sh"))
            .output()
            .expect("scripts/test-tools.sh runs");
        assert!(
            out.status.success(),
            "scripts/test-tools.sh failed:\n{}",
            text(&out.stderr)
        );
        text(&out.stdout)
    });
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("export {name}=")))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("scripts/test-tools.sh printed no {name}:\n{env}"))
}

/// The fixtures of `tests/fixtures/invalid/GROUP/`, sorted: each file with
/// its `# expect-field:` and `# expect-message:` header lines.
pub fn invalid_fixtures(group: &str) -> Vec<(PathBuf, String, String)> {
    let dir = root().join("tests/fixtures/invalid").join(group);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let body = std::fs::read_to_string(&path).unwrap();
        let header = |key: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .unwrap_or_else(|| panic!("{} lacks # {key}", path.display()))
                .to_string()
        };
        let (field, message) = (header("expect-field"), header("expect-message"));
        out.push((path, field, message));
    }
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

/// A fresh namespace (org) for one test.
pub fn temp_namespace(prefix: &str) -> String {
    let suffix: u32 = rand_suffix();
    let ns = format!("{prefix}-{suffix:08x}");
    kubectl_ok(&["create", "namespace", &ns]);
    ns
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ (std::process::id() << 16)
}

/// Polls `check` until it returns Some, or panics after `timeout`.
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

/// An object as JSON, or None when it does not exist.
pub fn get_json(namespace: &str, resource: &str) -> Option<serde_json::Value> {
    let out = kubectl(&["get", "-n", namespace, resource, "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// A condition of an object.
pub fn condition(obj: &serde_json::Value, type_: &str) -> Option<serde_json::Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
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
        let mut args = vec![
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
        ];
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

/// A blocking GET; returns (status, body).
pub fn http_get(url: &str, token: Option<&str>) -> (u16, String) {
    http("GET", url, token, None)
}

/// A blocking request with a JSON body; returns (status, body).
pub fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut req = client
            .request(method.parse().unwrap(), url)
            .timeout(Duration::from_secs(30));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    })
}

/// The egress allowance of the tests whose servers listen on loopback:
/// idplane refuses loopback unless the installation allows it.
pub const ALLOW_LOOPBACK: [&str; 2] = ["--egress-allow", "127.0.0.0/8"];
