//! The egress rule end to end, with real listeners on loopback and a real
//! DNS server (dnsmasq): under the default rule every address that leads
//! to idplane's own host or the metadata service is refused before any
//! connection, for the hook send, the preview, SMTP verification,
//! delivery and the test email, and the refusal names the rule and the
//! address (never a secret, never what a server said); with loopback
//! allowed explicitly the same listeners are reached, a preview shows no
//! answer that is not JSON, and a URL's userinfo is shown nowhere.
//! `idplane validate` warns about literal addresses the default refuses.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::telephony::{API_TOKEN, HOOK_TOKEN, HookSpec, Workspace, post_json};
use support::{Dns, DnsRecord, condition, email, free_port, http, http_get, telephony, wait_for};

/// What a canary answers: a marker that must never appear in a refusal.
const MARKER: &str = "canary-internal-page-4711";

/// The hosts of the issue, each with what a refusal must name: the
/// address dialled (either of `|`: localhost has two) and the rule.
const TARGETS: [(&str, &str, &str); 10] = [
    ("127.0.0.1", "127.0.0.1", "loopback"),
    ("localhost", "127.0.0.1|::1", "loopback"),
    ("[::1]", "::1", "loopback"),
    ("0.0.0.0", "0.0.0.0", "unspecified"),
    ("2130706433", "127.0.0.1", "loopback"),
    ("0x7f000001", "127.0.0.1", "loopback"),
    ("127.1", "127.0.0.1", "loopback"),
    ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "169.254.169.254", "cloud metadata"),
    ("loop.idplane.test", "127.0.0.1", "loopback"),
];

/// A listener on one port of 127.0.0.1 and of ::1 that counts the
/// connections it accepts and answers each with `reply` (an HTML page, an
/// SMTP greeting) carrying [`MARKER`].
struct Canary {
    port: u16,
    count: Arc<AtomicUsize>,
}

impl Canary {
    fn start(host_v4: &str, reply: &'static str, http: bool) -> Canary {
        for _ in 0..20 {
            let v4 = TcpListener::bind((host_v4, 0)).unwrap();
            let port = v4.local_addr().unwrap().port();
            let Ok(v6) = TcpListener::bind(("::1", port)) else {
                continue;
            };
            let count = Arc::new(AtomicUsize::new(0));
            for listener in [v4, v6] {
                let count = count.clone();
                std::thread::spawn(move || {
                    for socket in listener.incoming().map_while(Result::ok) {
                        count.fetch_add(1, Ordering::SeqCst);
                        std::thread::spawn(move || answer(socket, reply, http));
                    }
                });
            }
            return Canary { port, count };
        }
        panic!("no port free on both 127.0.0.1 and ::1");
    }

    fn connections(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Reads an HTTP request (head and `Content-Length` body) and answers, or
/// greets as an SMTP server and answers the first command.
fn answer(mut socket: std::net::TcpStream, reply: &str, http: bool) {
    let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
    if !http {
        let _ = socket.write_all(reply.as_bytes());
    }
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Ok(n) = socket.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        seen.extend_from_slice(&buf[..n]);
        if !http {
            let _ = socket.write_all(format!("421 {MARKER} closing\r\n").as_bytes());
            return;
        }
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                break;
            }
        }
    }
    let page = format!("<html><body>{MARKER}: {reply}</body></html>");
    let _ = socket.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        )
        .as_bytes(),
    );
}

/// dnsmasq on loopback answering `loop.idplane.test` with 127.0.0.1.
fn dns() -> Dns {
    Dns::start(
        free_port(),
        "idplane.test",
        &[DnsRecord::Address("loop.idplane.test", "127.0.0.1")],
    )
}

/// The org of the n-th target.
fn org(n: usize) -> String {
    format!("org{n}")
}

/// A refusal names the rule and the address, says it is the egress rule,
/// and carries nothing a server said and no secret.
fn assert_refusal(text: &str, address: &str, rule: &str) {
    assert!(text.contains("egress refused"), "{text}");
    assert!(
        address
            .split('|')
            .any(|a| text.contains(&format!("{a} ")) || text.contains(&format!("{a}:"))),
        "no address {address} in: {text}"
    );
    assert!(text.contains(rule), "no rule {rule} in: {text}");
    for secret in [MARKER, HOOK_TOKEN, "tenant-secret-value", "pw-secret-123"] {
        assert!(!text.contains(secret), "{secret} in: {text}");
    }
}

#[test]
fn hook_sends_and_previews_to_refused_addresses_never_connect() {
    let canary = Canary::start("127.0.0.1", "hook", true);
    let dns = dns();
    let ws = Workspace::new();
    for (n, (host, _, _)) in TARGETS.iter().enumerate() {
        let url = format!("http://{host}:{}/telephony", canary.port);
        ws.write_org(&org(n), &[HookSpec::active("primary", url)]);
    }
    // No allowance: the default rule, names resolved by dnsmasq.
    let run = ws.run_strict("strict.log", &["--egress-nameserver", &dns.address()]);
    for n in 0..TARGETS.len() {
        telephony::wait_configured(&run, &org(n));
    }
    for (n, (host, address, rule)) in TARGETS.iter().enumerate() {
        let (status, body) = telephony::send(&run, &org(n), "+14155550123");
        assert_eq!(
            (status, body["code"].as_str()),
            (502, Some("delivery_failed")),
            "{host}: {body}"
        );
        let attempt = &body["attempts"][0];
        assert_eq!(attempt["reasonCode"], "egress_refused", "{host}: {body}");
        assert_eq!(attempt["requests"], 0, "{host}: {body}");
        assert_refusal(attempt["reason"].as_str().unwrap(), address, rule);
        assert_refusal(&body.to_string(), address, rule);

        // The preview: refused the same way, for an inactive hook too.
        let path = format!("/v1/orgs/{}/telephony-hooks/primary/preview", org(n));
        let (status, report) = post_json(&run, &path, &json!({"phoneNumber": "+14155550124"}));
        assert_eq!(status, 200, "{host}: {report}");
        assert_eq!(report["sent"], true);
        assert_eq!(report["judgement"]["reasonCode"], "egress_refused");
        assert_eq!(report["response"]["httpStatus"], Value::Null);
        assert_refusal(
            report["judgement"]["reason"].as_str().unwrap(),
            address,
            rule,
        );
        assert_refusal(&report.to_string(), address, rule);
    }
    // The status names them too: the 30-day numbers and the last preview.
    for (n, (_, address, rule)) in TARGETS.iter().enumerate() {
        let metrics = telephony::wait_metrics(&run, &org(n), "primary", 1, 1);
        assert_refusal(
            metrics["lastFailure"]["reason"].as_str().unwrap(),
            address,
            rule,
        );
        let last = wait_for("lastPreview", Duration::from_secs(10), || {
            let s = telephony::hook_status(&run, &org(n), "primary")?;
            s["lastPreview"]["result"].as_str().map(str::to_string)
        });
        assert_refusal(&last, address, rule);
    }
    assert_eq!(canary.connections(), 0, "nothing reached the canary");
}

#[test]
fn allowed_loopback_is_reached_previews_summarise_and_userinfo_is_hidden() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let canary = Canary::start("127.0.0.1", "hook", true);
    let denied = Canary::start("127.0.0.2", "denied", true);
    let json_hook = telephony::HookServer::start(&rt, telephony::successful("sms"));
    let ws = Workspace::new();
    let page_url = format!(
        "http://preview-user:url-pass-9911@127.0.0.1:{}/telephony",
        canary.port
    );
    ws.write_org(
        "acme",
        &[
            HookSpec::active("json", json_hook.url()),
            HookSpec::standby("page", page_url.clone()),
            HookSpec::standby("v6", format!("http://[::1]:{}/telephony", canary.port)),
            HookSpec::standby(
                "denied",
                format!("http://127.0.0.2:{}/telephony", denied.port),
            ),
        ],
    );
    // 127.0.0.0/8 allowed, but not ::1, and 127.0.0.2 denied.
    let run = ws.run_strict(
        "allowed.log",
        &[
            "--egress-allow",
            "127.0.0.0/8",
            "--egress-deny",
            "127.0.0.2/32",
        ],
    );
    telephony::wait_configured(&run, "acme");
    let preview = |hook: &str| {
        let path = format!("/v1/orgs/acme/telephony-hooks/{hook}/preview");
        post_json(&run, &path, &json!({"phoneNumber": "+14155550123"}))
    };

    // A JSON answer is shown.
    let (status, report) = preview("json");
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["response"]["body"]["commands"][0]["value"][0]["provider"],
        "sms"
    );
    assert_eq!(report["response"]["contentType"], "application/json");

    // A page is reached (allowed) but only summarised; the URL's userinfo
    // is redacted in the preview and in /config.
    let (status, report) = preview("page");
    assert_eq!(status, 200, "{report}");
    assert_eq!(canary.connections(), 1);
    let response = &report["response"];
    assert_eq!(response["httpStatus"], 200);
    assert_eq!(response["body"], Value::Null);
    assert_eq!(response["contentType"], "text/html; charset=utf-8");
    let length = response["length"].as_u64().unwrap();
    assert_eq!(
        response["bodySummary"],
        format!("HTTP 200, text/html; charset=utf-8, {length} bytes: not JSON, not shown")
    );
    assert_eq!(report["judgement"]["reasonCode"], "invalid_response");
    assert_eq!(
        report["url"],
        format!("http://<redacted>@127.0.0.1:{}/telephony", canary.port)
    );
    let text = report.to_string();
    assert!(
        !text.contains(MARKER) && !text.contains("url-pass-9911") && !text.contains("preview-user"),
        "{text}"
    );
    let (code, config) = http_get(&run.url("/v1/orgs/acme/config"), Some(API_TOKEN));
    assert_eq!(code, 200, "{config}");
    assert!(
        config.contains(&format!(
            "http://<redacted>@127.0.0.1:{}/telephony",
            canary.port
        )),
        "{config}"
    );
    assert!(
        !config.contains("url-pass-9911") && !config.contains("preview-user"),
        "{config}"
    );

    // Allowing 127.0.0.0/8 allows neither ::1 nor a denied address.
    let (_, report) = preview("v6");
    assert_eq!(report["judgement"]["reasonCode"], "egress_refused");
    assert_refusal(
        report["judgement"]["reason"].as_str().unwrap(),
        "::1",
        "loopback",
    );
    let (_, report) = preview("denied");
    assert_eq!(report["judgement"]["reasonCode"], "egress_refused");
    assert_refusal(
        report["judgement"]["reason"].as_str().unwrap(),
        "127.0.0.2",
        "in --egress-deny 127.0.0.2/32",
    );
    assert_eq!(denied.connections(), 0);
    assert_eq!(canary.connections(), 1, "::1 was not dialled");

    // The command line, from the manifests: the same rule, the same summary.
    let out = preview_cli(&ws.manifests(), "page", &["--egress-allow", "127.0.0.0/8"]);
    assert!(
        out.starts_with(&format!(
            "POST http://<redacted>@127.0.0.1:{}/telephony\n",
            canary.port
        )),
        "{out}"
    );
    assert!(
        out.contains("HTTP 200\nHTTP 200, text/html; charset=utf-8,")
            && out.contains("bytes: not JSON, not shown"),
        "{out}"
    );
    assert!(
        !out.contains(MARKER) && !out.contains("url-pass-9911"),
        "{out}"
    );
    assert_eq!(canary.connections(), 2);
    let out = preview_cli(&ws.manifests(), "page", &[]);
    assert!(
        out.contains("judgement: FAILED egress_refused: egress refused: 127.0.0.1 is loopback"),
        "{out}"
    );
    assert_eq!(canary.connections(), 2, "the default rule dialled nothing");
}

/// `idplane preview telephony HOOK -n acme --manifests DIR` with `flags`.
fn preview_cli(manifests: &Path, hook: &str, flags: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_idplane"))
        .args(["preview", "telephony", hook, "-n", "acme", "--manifests"])
        .arg(manifests)
        .args(["--phone", "+14155550123"])
        .args(flags)
        .output()
        .unwrap();
    support::text(&out.stdout)
}

/// An org's EmailProvider at `host` (no TLS, one attempt) with its Secret.
fn provider_yaml(org: &str, host: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: smtp\n  namespace: {org}\nstringData:\n  password: pw-secret-123\n---\n\
         apiVersion: idplane.dev/v1alpha1\nkind: EmailProvider\nmetadata:\n  name: corp\n  namespace: {org}\nspec:\n  enabled: true\n  host: \"{host}\"\n  port: {port}\n  username: mailer\n  passwordSecretRef: {{name: smtp, key: password}}\n  tls: none\n  allowInsecure: true\n  retry: {}\n",
        email::fast_retry(1)
    )
}

#[test]
fn smtp_verification_delivery_and_test_email_to_refused_addresses_never_connect() {
    let canary = Canary::start(
        "127.0.0.1",
        "220 canary-internal-page-4711 ESMTP\r\n",
        false,
    );
    let dns = dns();
    let (tmp, manifests) = email::workspace();
    for (n, (host, _, _)) in TARGETS.iter().enumerate() {
        // An SMTP host is a name or a bare address, never in brackets.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        std::fs::write(
            manifests.join(format!("{}.yaml", org(n))),
            provider_yaml(&org(n), host, canary.port),
        )
        .unwrap();
    }
    let run = email::start_idplane_strict(
        tmp.path(),
        &manifests,
        "strict.log",
        &[
            "--egress-nameserver",
            &dns.address(),
            "--smtp-timeout",
            "2s",
        ],
    );
    for (n, (host, address, rule)) in TARGETS.iter().enumerate() {
        // Verification at load: refused, nothing of a server in the status.
        let verified = email::wait_verified(&run, &org(n), "corp", "False");
        assert_eq!(verified["reason"], "EgressRefused", "{host}: {verified}");
        assert_refusal(verified["message"].as_str().unwrap(), address, rule);

        // Delivery: the attempt is refused, with the rule in its reply.
        let id = email::send_ok(&run, &org(n), "refused");
        let failed = email::wait_final(&run, &org(n), &id, Duration::from_secs(30));
        assert_eq!(failed["state"], "failed", "{host}: {failed}");
        assert_refusal(
            failed["attempts"][0]["reply"].as_str().unwrap(),
            address,
            rule,
        );

        // The test email: not sent, no server asked.
        let url = run.url(&format!("/v1/orgs/{}/email-provider/test", org(n)));
        let body = json!({"from": "admin@example.com", "to": "someone@example.com"});
        let (code, text) = http("POST", &url, Some(email::TOKEN), Some(&body));
        assert_eq!(code, 409, "{host}: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (answer["code"].as_str(), answer["step"].as_str()),
            (Some("provider_unusable"), Some("EgressRefused")),
            "{answer}"
        );
        assert_refusal(answer["reply"].as_str().unwrap(), address, rule);
        assert_refusal(&text, address, rule);
    }
    for (n, (_, address, rule)) in TARGETS.iter().enumerate() {
        for type_ in ["email.verify", "email.delivery", "email.test"] {
            let events = email::events(&run, &org(n), type_);
            assert!(!events.is_empty(), "no {type_} event in {}", org(n));
            for event in events {
                assert_eq!(event["outcome"], "FAILURE", "{event}");
                assert_refusal(&event.to_string(), address, rule);
            }
        }
    }
    assert_eq!(canary.connections(), 0, "nothing reached the canary");

    // `idplane test-email --manifests` under the default rule: an error
    // (exit 2) naming the refusal, and no connection either.
    let out = Command::new(env!("CARGO_BIN_EXE_idplane"))
        .args(["test-email", "-n", &org(0), "--from", "a@example.com"])
        .args(["--to", "b@example.com", "--manifests"])
        .arg(&manifests)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_refusal(&support::text(&out.stderr), "127.0.0.1", "loopback");
    assert_eq!(canary.connections(), 0);
}

#[test]
fn the_system_resolver_is_checked_too() {
    // No --egress-nameserver: getaddrinfo (/etc/hosts) resolves localhost.
    let hook_canary = Canary::start("127.0.0.1", "hook", true);
    let smtp_canary = Canary::start("127.0.0.1", "220 canary-internal-page-4711\r\n", false);
    let ws = Workspace::new();
    ws.write_org(
        "acme",
        &[HookSpec::active(
            "primary",
            format!("http://localhost:{}/telephony", hook_canary.port),
        )],
    );
    std::fs::write(
        ws.manifests().join("smtp.yaml"),
        provider_yaml("acme", "localhost", smtp_canary.port),
    )
    .unwrap();
    let run = ws.run_strict("system.log", &[]);
    telephony::wait_configured(&run, "acme");
    let (status, body) = telephony::send(&run, "acme", "+14155550123");
    assert_eq!(status, 502, "{body}");
    let reason = body["attempts"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("(from localhost) is loopback"), "{reason}");
    let verified = wait_for("Verified=False", Duration::from_secs(30), || {
        let (code, text) = http_get(&run.url("/v1/orgs/acme/status"), Some(API_TOKEN));
        let v: Value = serde_json::from_str(&text).ok().filter(|_| code == 200)?;
        let provider = v["objects"]
            .as_array()?
            .iter()
            .find(|o| o["kind"] == "EmailProvider")?
            .clone();
        condition(&provider, "Verified").filter(|c| c["status"] == "False")
    });
    assert_eq!(verified["reason"], "EgressRefused", "{verified}");
    assert!(
        verified["message"]
            .as_str()
            .unwrap()
            .contains("(from localhost) is loopback"),
        "{verified}"
    );
    assert_eq!(hook_canary.connections() + smtp_canary.connections(), 0);
}

#[test]
fn validate_warns_about_literal_addresses_the_default_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::new();
    let hosts = [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "0.0.0.0",
        "2130706433",
        "0x7f000001",
        "127.1",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.0.0.7",
        "hooks.example.com",
    ];
    for (n, host) in hosts.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: idplane.dev/v1alpha1\nkind: TelephonyHook\nmetadata:\n  name: h{n}\n  namespace: ns{n}\nspec:\n  url: http://{host}:8089/telephony\n  allowInsecureHttp: true\n  auth:\n    header: Authorization\n    secretRef: {{name: s, key: k}}\n"
        ));
    }
    for (n, host) in ["127.1", "::1", "smtp.example.com"].iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: idplane.dev/v1alpha1\nkind: EmailProvider\nmetadata:\n  name: p{n}\n  namespace: ns{n}\nspec:\n  host: \"{host}\"\n  port: 587\n  username: u\n  passwordSecretRef: {{name: s, key: k}}\n"
        ));
    }
    let file = dir.path().join("org.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_idplane"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = support::text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "warnings only:\n{stdout}{}",
        support::text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let file_name = file.display().to_string();
    for (n, host) in hosts.iter().enumerate() {
        let found = lines
            .iter()
            .find(|l| l.contains(&format!("TelephonyHook ns{n}/h{n}: spec.url: ")));
        if *host == "hooks.example.com" {
            assert!(found.is_none(), "{stdout}");
            continue;
        }
        let line = found.unwrap_or_else(|| panic!("{host} not flagged:\n{stdout}"));
        // FILE:LINE:COL: warning: KIND NS/NAME: spec.url: message
        let mut parts = line.splitn(4, ':');
        assert_eq!(parts.next(), Some(file_name.as_str()), "{line}");
        let line_no: usize = parts.next().unwrap().parse().unwrap();
        assert!(
            yaml.lines()
                .nth(line_no - 1)
                .unwrap()
                .contains(&format!("url: http://{host}:")),
            "{line} does not point at the url"
        );
        assert!(
            line.contains(": warning: ") && line.contains("egress refused: "),
            "{line}"
        );
    }
    for want in [
        "TelephonyHook ns0/h0: spec.url: egress refused: 127.0.0.1 is loopback",
        "TelephonyHook ns1/h1: spec.url: egress refused: 127.0.0.1 (from localhost) is loopback",
        "TelephonyHook ns4/h4: spec.url: egress refused: 127.0.0.1 is loopback",
        "TelephonyHook ns8/h8: spec.url: egress refused: 169.254.169.254 is cloud metadata",
        "TelephonyHook ns9/h9: spec.url: egress refused: 10.0.0.7 is private, refused by --egress-private deny",
        "EmailProvider ns0/p0: spec.host: egress refused: 127.0.0.1 (from 127.1) is loopback",
        "EmailProvider ns1/p1: spec.host: egress refused: ::1 is loopback",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("p2:"), "{stdout}");
    let json_out = Command::new(env!("CARGO_BIN_EXE_idplane"))
        .args(["validate", "-o", "json"])
        .arg(&file)
        .output()
        .unwrap();
    let findings: Vec<Value> = serde_json::from_slice(&json_out.stdout).unwrap();
    assert!(
        findings.iter().any(|f| f["rule"] == "egress"
            && f["severity"] == "warning"
            && f["field"] == "spec.url"),
        "{findings:?}"
    );
}

/// The flags are there, and a range with bits set past its prefix is
/// refused naming the range meant.
#[test]
fn flags_parse() {
    let out = Command::new(env!("CARGO_BIN_EXE_idplane"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = support::text(&out.stdout);
    for flag in [
        "--egress-private",
        "--egress-allow",
        "--egress-deny",
        "--egress-nameserver",
    ] {
        assert!(help.contains(flag), "{flag} not in:\n{help}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_idplane"))
        .args(["run", "--manifests", ".", "--egress-allow", "10.0.0.1/8"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        support::text(&bad.stderr).contains("the range is 10.0.0.0/8"),
        "{}",
        support::text(&bad.stderr)
    );
}
