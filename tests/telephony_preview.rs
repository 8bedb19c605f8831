//! Previews: `POST /v1/orgs/{org}/telephony-hooks/{name}/preview` and
//! `idplane preview telephony` (from manifests and through a server) build
//! the request with secrets redacted, send it to the hook (active or not),
//! show the answer and its judgement, record `status.lastPreview`, and never
//! leave a valid passcode behind.

mod support;

use std::process::ExitCode;

use clap::Parser;
use idplane::cli::preview::{PreviewArgs, run_to};
use serde_json::{Value, json};
use support::telephony::*;

#[derive(Parser)]
struct PreviewCli {
    #[command(flatten)]
    args: PreviewArgs,
}

/// `idplane preview ARGS`, loopback allowed (the hooks listen there).
fn preview_cli(args: &[&str]) -> (ExitCode, String) {
    let line = std::iter::once("preview")
        .chain(args.iter().copied())
        .chain(support::ALLOW_LOOPBACK);
    let cli = PreviewCli::try_parse_from(line).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let code = support::block_on(run_to(cli.args, &mut out)).unwrap();
    (code, String::from_utf8(out).unwrap())
}

fn setup(rt: &tokio::runtime::Runtime) -> (Workspace, HookServer, HookServer, HookServer) {
    let ws = Workspace::new();
    let active = HookServer::start(rt, successful("active-sms"));
    let backup = HookServer::start(rt, successful("backup-sms"));
    let broken = HookServer::start(rt, Behaviour::Answer(200, action("FAILED", "broken-sms")));
    ws.write_org(
        "acme",
        &[
            HookSpec::active("primary", active.url()),
            HookSpec::standby("backup", backup.url()),
            HookSpec::standby("broken", broken.url()),
        ],
    );
    (ws, active, backup, broken)
}

#[test]
fn preview_over_the_api() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ws, active, backup, broken) = setup(&rt);
    let run = ws.run("preview.log", &[]);
    wait_configured(&run, "acme");
    let path = |hook: &str| format!("/v1/orgs/acme/telephony-hooks/{hook}/preview");

    // An inactive hook: built, shown with secrets redacted, sent, judged.
    let body = json!({"phoneNumber": "+14155550123", "requestType": "password-reset",
        "user": {"id": "u1", "login": "ada@example.com"}});
    let (status, report) = post_json(&run, &path("backup"), &body);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["active"], false);
    assert_eq!(report["sent"], true);
    assert_eq!(report["url"], backup.url());
    let headers = report["headers"].as_array().unwrap();
    let header = |name: &str| headers.iter().find(|h| h["name"] == name).unwrap()["value"].clone();
    assert_eq!(header("Authorization"), "<redacted>");
    assert_eq!(header("X-Tenant"), "<redacted>");
    assert_eq!(header("X-Org"), "acme");
    let text = report.to_string();
    assert!(
        !text.contains(HOOK_TOKEN) && !text.contains("tenant-secret-value"),
        "{text}"
    );
    assert_eq!(
        report["request"]["requestType"],
        "com.okta.user.telephony.password-reset"
    );
    assert_eq!(report["response"]["httpStatus"], 200);
    assert_eq!(
        report["response"]["body"]["commands"][0]["value"][0]["provider"],
        "backup-sms"
    );
    assert_eq!(report["judgement"]["delivered"], true);
    assert_eq!(report["judgement"]["status"], "SUCCESSFUL");
    let sent = backup.seen().pop().unwrap();
    assert_eq!(
        sent.body, report["request"],
        "the hook got exactly the shown request"
    );
    let preview_code = sent.code();
    let last = wait_for_last_preview(&run, "backup", "SUCCESSFUL");
    assert!(last["time"].as_str().unwrap().ends_with('Z'));

    // The preview's code is valid nowhere: no passcode was stored, and it
    // does not verify a real transaction either.
    assert_eq!(ws.valid_passcodes(), 0);
    let (status, receipt) = send(&run, "acme", "+14155550124");
    assert_eq!(status, 200);
    let real = active.seen().pop().unwrap().code();
    if real != preview_code {
        let tx = receipt["transactionId"].as_str().unwrap();
        assert_eq!(
            verify(&run, "acme", tx, &preview_code).1["result"],
            "invalid"
        );
        assert_eq!(verify(&run, "acme", tx, &real).1["result"], "verified");
    }

    // A failing hook: judged FAILED, recorded, no passcode.
    let (status, report) = post_json(&run, &path("broken"), &body);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["judgement"]["delivered"], false);
    assert_eq!(report["judgement"]["reasonCode"], "provider_failed");
    assert_eq!(broken.count(), 1);
    wait_for_last_preview(&run, "broken", "FAILED provider_failed");
    assert_eq!(ws.valid_passcodes(), 0);

    // Only build: nothing sent.
    let (status, report) = post_json(
        &run,
        &path("primary"),
        &json!({"phoneNumber": "+14155550123", "send": false}),
    );
    assert_eq!(status, 200);
    assert_eq!(
        (report["sent"].as_bool(), report["active"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(report.get("judgement").is_none());
    assert_eq!(active.count(), 1, "only the real send");

    // A replaced request is sent as is.
    let custom = json!({"eventType": "com.okta.telephony.provider", "custom": true,
        "data": {"messageProfile": {"phoneNumber": "+14155550125", "otpCode": "424242"}}});
    let (status, report) = post_json(&run, &path("backup"), &json!({"request": custom}));
    assert_eq!(status, 200, "{report}");
    assert_eq!(backup.seen().pop().unwrap().body, custom);

    // Errors.
    let (status, e) = post_json(&run, &path("nope"), &body);
    assert_eq!((status, e["code"].as_str()), (404, Some("unknown_hook")));
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("backup, broken, primary"),
        "{e}"
    );
    let (status, e) = post_json(&run, &path("backup"), &json!({}));
    assert_eq!((status, e["code"].as_str()), (400, Some("invalid_request")));
    let events = wait_events(&run, "acme", "telephony.preview", 3);
    assert_eq!(events[1]["outcome"], "FAILURE");
    assert!(
        !events
            .iter()
            .any(|e| e.to_string().contains("+14155550123")),
        "masked"
    );
    // Previews are not executions: the 30-day numbers count the real send only.
    let m = wait_metrics(&run, "acme", "primary", 1, 0);
    assert_eq!(m["successes"], 1);
    wait_metrics(&run, "acme", "backup", 0, 0);
}

fn wait_for_last_preview(run: &support::Idplane, hook: &str, result: &str) -> Value {
    support::wait_for(
        &format!("lastPreview of {hook}"),
        std::time::Duration::from_secs(10),
        || {
            let last = hook_status(run, "acme", hook)?["lastPreview"].clone();
            last["result"].as_str()?.starts_with(result).then_some(last)
        },
    )
}

#[test]
fn preview_from_the_command_line() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ws, _active, backup, broken) = setup(&rt);
    let manifests = ws.manifests();
    let dir = manifests.to_str().unwrap();

    // From manifests: the request leaves from here.
    let (code, out) = preview_cli(&[
        "telephony",
        "backup",
        "-n",
        "acme",
        "--manifests",
        dir,
        "--request-type",
        "enrollment",
        "--phone",
        "+14155550123",
        "--user-login",
        "ada@example.com",
    ]);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(
        out.starts_with(&format!("POST {}\n", backup.url())),
        "{out}"
    );
    assert!(
        out.contains("Authorization: <redacted>") && out.contains("X-Org: acme"),
        "{out}"
    );
    assert!(
        !out.contains(HOOK_TOKEN) && !out.contains("tenant-secret-value"),
        "{out}"
    );
    assert!(out.contains("com.okta.user.telephony.pre-enrollment"));
    assert!(
        out.contains("HTTP 200") && out.contains("judgement: SUCCESSFUL (provider backup-sms)"),
        "{out}"
    );
    let seen = backup.seen().pop().unwrap();
    assert_eq!(
        seen.headers["authorization"], HOOK_TOKEN,
        "the real secret was sent"
    );
    assert_eq!(seen.body["data"]["userProfile"]["login"], "ada@example.com");

    // A failure is exit status 1.
    let (code, out) = preview_cli(&[
        "telephony",
        "broken",
        "-n",
        "acme",
        "--manifests",
        dir,
        "--phone",
        "+14155550123",
    ]);
    assert_eq!(code, ExitCode::from(1), "{out}");
    assert!(out.contains("judgement: FAILED provider_failed"), "{out}");
    assert_eq!(broken.count(), 1);

    // --dry-run sends nothing; an unknown hook is an error naming the known ones.
    let before = backup.count();
    let (code, _) = preview_cli(&[
        "telephony",
        "backup",
        "-n",
        "acme",
        "--manifests",
        dir,
        "--phone",
        "+14155550123",
        "--dry-run",
    ]);
    assert_eq!((code, backup.count()), (ExitCode::SUCCESS, before));
    let cli = PreviewCli::try_parse_from([
        "preview",
        "telephony",
        "nope",
        "-n",
        "acme",
        "--manifests",
        dir,
        "--phone",
        "+14155550123",
    ])
    .unwrap();
    let err = support::block_on(run_to(cli.args, &mut Vec::new()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("backup"), "{err}");

    // Through a running idplane, with --request FILE: recorded in status.
    let run = ws.run("cli.log", &[]);
    wait_configured(&run, "acme");
    let file = ws.path().join("request.json");
    let custom = json!({"eventType": "com.okta.telephony.provider", "fromFile": true,
        "data": {"messageProfile": {"phoneNumber": "+14155550126", "otpCode": "000000"}}});
    std::fs::write(&file, custom.to_string()).unwrap();
    let server = format!("http://{}", run.addr);
    let (code, out) = preview_cli(&[
        "telephony",
        "backup",
        "-n",
        "acme",
        "--server",
        &server,
        "--token",
        API_TOKEN,
        "--request",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(
        out.contains("\"fromFile\": true") && out.contains("Authorization: <redacted>"),
        "{out}"
    );
    assert_eq!(backup.seen().pop().unwrap().body, custom);
    wait_for_last_preview(&run, "backup", "SUCCESSFUL");

    // --edit: the editor's change is what is sent.
    // SAFETY: no other thread of this test binary reads VISUAL or EDITOR.
    unsafe {
        std::env::remove_var("VISUAL");
        std::env::set_var(
            "EDITOR",
            "sed -i -e s/edit-me@example.com/edited@example.com/",
        );
    }
    let (code, out) = preview_cli(&[
        "telephony",
        "backup",
        "-n",
        "acme",
        "--server",
        &server,
        "--token",
        API_TOKEN,
        "--phone",
        "+14155550127",
        "--user-login",
        "edit-me@example.com",
        "--edit",
    ]);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert_eq!(
        backup.seen().pop().unwrap().body["data"]["userProfile"]["login"],
        "edited@example.com"
    );
    assert_eq!(ws.valid_passcodes(), 0);
}
