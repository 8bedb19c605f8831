//! What the email tests share: the real SMTP servers they run (aiosmtpd
//! from `tests/support/python/smtp_server.py`, Postfix's smtp-sink), test
//! certificates, provider manifests, `idplane run` for mail, and the email
//! API. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::api::{condition, http_get, http_json, org_events, status_object};
use super::process::{
    ALLOW_LOOPBACK, Idplane, Killed, free_port, wait_every, workspace_with_token,
};
use super::tools::{python_script, tools};

pub const TOKEN: &str = "email-test-token-0123456789abcdef";

/// Polls every 50 ms until `check` gives Some, or panics after `timeout`:
/// the email tests measure retry delays in tenths of a second.
pub fn wait<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_every(what, timeout, Duration::from_millis(50), check)
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a server certificate for 127.0.0.1 and localhost.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn certs(dir: &Path) -> Certs {
    let p = |n: &str| dir.join(n);
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=idplane test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")),
    );
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("server.pem"))
            .arg("-extfile")
            .arg(p("ext.cnf")),
    );
    Certs {
        ca: p("ca.pem"),
        cert: p("server.pem"),
        key: p("server.key"),
    }
}

/// Options of an aiosmtpd server.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// none, starttls or implicit.
    pub tls: &'static str,
    pub auth: Option<(&'static str, &'static str)>,
    pub fail_first: usize,
    pub fail_reply: Option<String>,
    pub delay_ms: u64,
    /// Announce PIPELINING.
    pub pipelining: bool,
    /// Reuse this port (a restart).
    pub port: Option<u16>,
    /// Close a connection idle this long, after this reply when given.
    pub idle: Option<(f64, Option<&'static str>)>,
    /// Answer the N-th EHLO of a connection with this reply.
    pub refuse_ehlo: Option<(u32, &'static str)>,
}

impl ServerOptions {
    /// A plain server with the credentials of [`write_corp_provider`]'s
    /// provider (user `mailer`, password `pw-123`).
    pub fn corp() -> Self {
        Self {
            auth: Some(("mailer", "pw-123")),
            ..Default::default()
        }
    }
}

/// A running aiosmtpd server (`tests/support/python/smtp_server.py`),
/// killed on drop.
pub struct SmtpServer {
    child: Killed,
    pub port: u16,
    pub record: PathBuf,
    /// Its first line, when it is an SMTP reply, is the answer to DATA.
    pub control: PathBuf,
}

impl SmtpServer {
    pub fn start(dir: &Path, name: &str, certs: Option<&Certs>, o: ServerOptions) -> SmtpServer {
        let record = dir.join(format!("{name}.jsonl"));
        let control = dir.join(format!("{name}.control"));
        let mut cmd = Command::new(&tools().python);
        cmd.arg(python_script("smtp_server.py"))
            .arg("--record")
            .arg(&record)
            .arg("--control")
            .arg(&control)
            .arg("--tls")
            .arg(if o.tls.is_empty() { "none" } else { o.tls })
            .arg("--fail-first")
            .arg(o.fail_first.to_string())
            .arg("--delay-ms")
            .arg(o.delay_ms.to_string());
        if let Some(port) = o.port {
            cmd.arg("--port").arg(port.to_string());
        }
        if o.pipelining {
            cmd.arg("--pipelining");
        }
        if let Some((seconds, reply)) = o.idle {
            cmd.arg("--idle-timeout").arg(seconds.to_string());
            if let Some(reply) = reply {
                cmd.arg("--idle-reply").arg(reply);
            }
        }
        if let Some((n, reply)) = o.refuse_ehlo {
            cmd.arg("--refuse-ehlo")
                .arg(n.to_string())
                .arg("--ehlo-reply")
                .arg(reply);
        }
        if let Some(reply) = &o.fail_reply {
            cmd.arg("--fail-reply").arg(reply);
        }
        if let Some((u, p)) = o.auth {
            cmd.arg("--auth").arg(format!("{u}:{p}"));
        }
        if let Some(c) = certs {
            cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = Killed(cmd.spawn().expect("smtp_server.py starts"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("READY ") {
                    let _ = tx.send(port.trim().parse::<u16>().unwrap());
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("smtp_server.py prints READY");
        SmtpServer {
            child,
            port,
            record,
            control,
        }
    }

    /// Sets the reply to DATA (`None`: accept).
    pub fn answer(&self, reply: Option<&str>) {
        std::fs::write(&self.control, reply.unwrap_or("ok")).unwrap();
    }

    /// Every DATA the server saw.
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Message-IDs of the messages it accepted.
    pub fn accepted(&self) -> Vec<String> {
        self.records()
            .into_iter()
            .filter(|r| r["reply"].as_str().is_some_and(|s| s.starts_with("250")))
            .map(|r| r["message_id"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Postfix's smtp-sink on loopback, appending every message to one file.
pub struct SmtpSink {
    child: Killed,
    pub port: u16,
    pub dump: PathBuf,
}

impl SmtpSink {
    pub fn start(dir: &Path) -> SmtpSink {
        let sink_dir = dir.join("sink");
        std::fs::create_dir_all(&sink_dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&sink_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let dump = sink_dir.join("dump");
        let port = free_port();
        let child = Killed(
            Command::new(&tools().smtp_sink)
                .args(["-u", "postfix", "-D"])
                .arg(&dump)
                .args(["-m", "256"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("256")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("smtp-sink starts"),
        );
        wait("smtp-sink listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        SmtpSink { child, port, dump }
    }

    /// Message-IDs of the messages received.
    pub fn message_ids(&self) -> Vec<String> {
        std::fs::read_to_string(&self.dump)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.strip_prefix("Message-ID: ")
                    .or_else(|| l.strip_prefix("Message-Id: "))
            })
            .map(|s| s.trim().to_string())
            .collect()
    }
}

/// An org's EmailProvider `corp` (user `mailer`) for a server on
/// 127.0.0.1, with its password in the Secret `corp-smtp`.
#[derive(Clone)]
pub struct CorpProvider<'a> {
    pub org: &'a str,
    pub port: u16,
    /// none (then with allowInsecure), starttls or implicit.
    pub tls: &'a str,
    pub password: &'a str,
    /// Retry settings as YAML flow, e.g. [`fast_retry`].
    pub retry: String,
}

impl<'a> CorpProvider<'a> {
    /// Without TLS, password `pw-123` (as [`ServerOptions::corp`]), three
    /// attempts with [`fast_retry`].
    pub fn new(org: &'a str, port: u16) -> Self {
        Self {
            org,
            port,
            tls: "none",
            password: "pw-123",
            retry: fast_retry(3),
        }
    }

    /// The Secret and the EmailProvider, as YAML.
    pub fn yaml(&self) -> String {
        let Self {
            org,
            port,
            tls,
            password,
            retry,
        } = self;
        let insecure = if *tls == "none" {
            "\n  allowInsecure: true"
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: corp-smtp\n  namespace: {org}\nstringData:\n  password: {password}\n---\n\
             apiVersion: idplane.dev/v1alpha1\nkind: EmailProvider\nmetadata:\n  name: corp\n  namespace: {org}\nspec:\n  enabled: true\n  host: 127.0.0.1\n  port: {port}\n  username: mailer\n  passwordSecretRef: {{name: corp-smtp, key: password}}\n  tls: {tls}{insecure}\n  retry: {retry}\n"
        )
    }

    /// Writes [`Self::yaml`] to `file`.
    pub fn write(&self, file: &Path) {
        std::fs::write(file, self.yaml()).unwrap();
    }
}

/// Org `acme`'s [`CorpProvider`] without TLS, written to `provider.yaml`;
/// the file's path.
pub fn write_corp_provider(manifests: &Path, port: u16, retry: &str) -> PathBuf {
    let file = manifests.join("provider.yaml");
    CorpProvider {
        retry: retry.to_string(),
        ..CorpProvider::new("acme", port)
    }
    .write(&file);
    file
}

/// Retry settings with short delays, as YAML flow.
pub fn fast_retry(max_attempts: u32) -> String {
    format!("{{maxAttempts: {max_attempts}, initialDelay: 200ms, multiplier: 2, maxDelay: 2s}}")
}

/// A temp dir with `manifests/`, a token file for orgs `*`.
pub fn workspace() -> (tempfile::TempDir, PathBuf) {
    workspace_with_token("email-tests", TOKEN)
}

/// The flags of an installation default provider on loopback without TLS
/// (`port` as text, to borrow from).
pub fn default_provider(port: &str) -> [&str; 7] {
    [
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        port,
        "--smtp-tls",
        "none",
        "--smtp-allow-insecure",
    ]
}

/// Starts `idplane run --manifests` with the given extra flags, loopback
/// allowed (the test servers listen there).
pub fn start_idplane(tmp: &Path, manifests: &Path, log: &str, extra: &[&str]) -> Idplane {
    let mut flags = ALLOW_LOOPBACK.to_vec();
    flags.extend_from_slice(extra);
    start_idplane_strict(tmp, manifests, log, &flags)
}

/// [`start_idplane`] under the default egress rule (nothing allowed).
pub fn start_idplane_strict(tmp: &Path, manifests: &Path, log: &str, extra: &[&str]) -> Idplane {
    let mut flags = Vec::new();
    if !extra.contains(&"--smtp-timeout") {
        flags.extend(["--smtp-timeout", "5s"]);
    }
    if !extra.contains(&"--email-default-sender") {
        flags.extend([
            "--email-default-sender",
            "Idplane <noreply@idplane.example>",
        ]);
    }
    flags.extend(extra);
    Idplane::run_manifests(
        manifests,
        &tmp.join("state/idplane.db"),
        &tmp.join("tokens.yaml"),
        &flags,
        &[("RUST_LOG", "idplane=info")],
        &tmp.join(log),
    )
}

/// `POST /v1/orgs/{org}/emails`; (status, body).
pub fn send(run: &Idplane, org: &str, body: Value) -> (u16, Value) {
    http_json(
        "POST",
        &run.url(&format!("/v1/orgs/{org}/emails")),
        Some(TOKEN),
        Some(&body),
    )
}

/// Sends a simple message and returns its id (asserting 202).
pub fn send_ok(run: &Idplane, org: &str, subject: &str) -> String {
    let (code, body) = send(
        run,
        org,
        json!({"to": ["user@example.com"], "subject": subject, "text": "hello"}),
    );
    assert_eq!(code, 202, "{body}");
    body["id"].as_str().unwrap().to_string()
}

pub fn email(run: &Idplane, org: &str, id: &str) -> Value {
    let (code, text) = http_get(
        &run.url(&format!("/v1/orgs/{org}/emails/{id}")),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Waits until the email reaches a final state and returns it.
pub fn wait_final(run: &Idplane, org: &str, id: &str, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let e = email(run, org, id);
        if e["state"] == "sent" || e["state"] == "failed" {
            return e;
        }
        if start.elapsed() > timeout {
            let log = std::fs::read_to_string(&run.log).unwrap_or_default();
            panic!(
                "timed out after {timeout:?} waiting for email {id} to be sent or failed: {e}\nlog:\n{log}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An object of the org as `/v1/orgs/{org}/status` shows it.
pub fn object(run: &Idplane, org: &str, kind: &str, name: &str) -> Option<Value> {
    status_object(run, TOKEN, org, kind, name)
}

/// Waits for the provider's Verified condition to have `status`.
pub fn wait_verified(run: &Idplane, org: &str, name: &str, status: &str) -> Value {
    wait(
        &format!("{org}/{name} Verified={status}"),
        Duration::from_secs(30),
        || {
            let o = object(run, org, "EmailProvider", name)?;
            let c = condition(&o, "Verified")?;
            (c["status"] == status).then_some(c)
        },
    )
}

/// The org's events of a type.
pub fn events(run: &Idplane, org: &str, type_: &str) -> Vec<Value> {
    org_events(run, TOKEN, org, type_)
}

/// Milliseconds of an RFC 3339 time.
pub fn millis(t: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}
