//! End to end against the real apiserver: `kubectl apply` a Secret and a
//! TelephonyHook pointing at the reference bridge
//! (`examples/telephony-bridge/bridge.py`), run `idplane operator`, send an
//! OTP through the API, see the bridge deliver it, verify it, and see the
//! numbers in `kubectl get telephonyhooks`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(60);

/// The reference bridge, killed when dropped; its stdout lines arrive on `lines`.
struct Bridge {
    _child: Killed,
    url: String,
    lines: mpsc::Receiver<String>,
}

impl Bridge {
    fn start(token: &str) -> Bridge {
        let mut child = Killed(
            Command::new("python3")
                .arg(root().join("examples/telephony-bridge/bridge.py"))
                .env("BRIDGE_PORT", "0")
                .env("BRIDGE_TOKEN", token)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 runs the bridge"),
        );
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the bridge starts");
        let address = first
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {first}"));
        Bridge {
            _child: child,
            url: format!("http://{address}"),
            lines,
        }
    }

    /// The next line printed with an OTP for `phone`.
    fn otp_line(&self, phone: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("the bridge prints the OTP");
            if line.starts_with("OTP ") && line.contains(phone) {
                return line;
            }
        }
    }
}

fn start_operator(ns: &str, tmp: &std::path::Path) -> Idplane {
    Idplane::operator(
        ns,
        &tmp.join("operator.db"),
        &tmp.join("operator.log"),
        &[
            "--identity",
            "telephony-e2e",
            "--lease-seconds",
            "6",
            "--telephony-status-interval",
            "500ms",
            // The bridge listens on loopback.
            ALLOW_LOOPBACK[0],
            ALLOW_LOOPBACK[1],
        ],
        &[("RUST_LOG", "info")],
    )
}

#[test]
fn kubectl_apply_to_a_delivered_otp_and_live_numbers() {
    install_crds();
    let ns = temp_namespace("telephony");
    let tmp = tempfile::tempdir().unwrap();
    let token = "bridge-token-for-e2e";
    let bridge = Bridge::start(token);
    apply_yaml(
        &ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: telephony-bridge\nstringData:\n  token: {token}\n"
        ),
    );
    apply_yaml(
        &ns,
        &format!(
            "apiVersion: idplane.dev/v1alpha1\nkind: TelephonyHook\nmetadata:\n  name: primary\nspec:\n  url: {}\n  allowInsecureHttp: true\n  auth:\n    header: Authorization\n    secretRef: {{name: telephony-bridge, key: token}}\n  timeout: 3s\n  messageTemplate: \"E2E: your code is ${{otpCode}}\"\n",
            bridge.url
        ),
    );
    let op = start_operator(&ns, tmp.path());
    let admin = admin_token();
    wait_for("the hook in the runtime", T, || {
        let (code, body) = http_get(&op.url(&format!("/v1/orgs/{ns}/config")), Some(&admin));
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["config"]["activeHook"] == "primary").then_some(())
    });

    let phone = "+14155550142";
    let body = json!({"phoneNumber": phone, "channel": "sms", "requestType": "enrollment",
        "user": {"id": "00u42", "login": "grace@example.com", "firstName": "Grace", "lastName": "Hopper"}});
    let (status, answer) = http(
        "POST",
        &op.url(&format!("/v1/orgs/{ns}/otp/send")),
        Some(&admin),
        Some(&body),
    );
    assert_eq!(status, 200, "{answer}");
    let receipt: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(receipt["via"], "primary");
    assert_eq!(receipt["provider"], "console");
    assert_eq!(receipt["status"], "SUCCESSFUL");

    // The bridge delivered it: "OTP 123456 -> [sms] +1...: E2E: your code is 123456".
    let line = bridge.otp_line(phone);
    let code = line.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        line.ends_with(&format!("E2E: your code is {code}")),
        "{line}"
    );
    let verify = json!({"transactionId": receipt["transactionId"], "code": code});
    let (status, answer) = http(
        "POST",
        &op.url(&format!("/v1/orgs/{ns}/otp/verify")),
        Some(&admin),
        Some(&verify),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap()["result"],
        "verified"
    );

    // The numbers reach the object's status and kubectl's columns.
    let obj = wait_for("status.metrics.executions >= 1", T, || {
        let obj = get_json(&ns, "telephonyhook/primary")?;
        (obj["status"]["metrics"]["executions"].as_u64()? >= 1).then_some(obj)
    });
    let metrics = &obj["status"]["metrics"];
    assert_eq!(metrics["successes"], 1);
    assert_eq!(metrics["failures"], 0);
    assert_eq!(metrics["windowDays"], 30);
    let table = kubectl_ok(&["get", "telephonyhooks", "-n", &ns]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    let column = |name: &str| {
        row[header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("{table}"))]
    };
    assert!(column("EXECUTIONS").parse::<u64>().unwrap() >= 1, "{table}");
    assert_eq!(column("FAILURES"), "0", "{table}");

    // The send is in the org's system log, with the number masked.
    let (_, events) = http_get(
        &op.url(&format!("/v1/orgs/{ns}/events?type=telephony.send")),
        Some(&admin),
    );
    let events: Value = serde_json::from_str(&events).unwrap();
    let first = &events["events"][0];
    assert_eq!(first["outcome"], "SUCCESS");
    assert_eq!(first["detail"]["phone"], "+1******0142");
    assert!(!events.to_string().contains(&code));
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
}
