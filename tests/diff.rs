//! `idplane diff` as a user runs it, against the real test apiserver (the
//! example org applied in a fresh namespace) and against a running
//! `idplane run` (`--server --token`): the unified diff of a changed field,
//! an object that would be created, one that would be deleted (`--prune`),
//! a Secret whose value changed (never shown), defaults and server-managed
//! fields left out, validation problems first, and exit statuses 0, 1, 2.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use support::*;

/// The example org's Secret values: none may appear in any output.
const EXAMPLE_VALUES: [&str; 4] = [
    "dev-token-change-me",
    "acme-prod",
    "backup-key-change-me",
    "smtp-password-change-me",
];

/// The new SMTP password of the edited manifests.
const ROTATED: &str = "rotated-smtp-password-42";

/// A status written on a live object: never shown.
const STATUS_MARKER: &str = "status-marker-diff-test";

/// The token of the `idplane run` tests.
const TOKEN: &str = "diff-test-token-0123456789";

/// Deletes the test's namespace when dropped, however the test ends.
struct NamespaceGuard(String);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"]);
    }
}

/// `idplane diff ARGS` from the repository root, with the test cluster's
/// kubeconfig unless `env` says otherwise.
fn diff(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idplane"));
    cmd.arg("diff").args(args).current_dir(root());
    if let Some(kubeconfig) = std::env::var_os("IDPLANE_TEST_KUBECONFIG") {
        cmd.env("KUBECONFIG", kubeconfig);
    }
    cmd.env_remove("NO_COLOR").env_remove("IDPLANE_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("idplane diff runs")
}

/// stdout, stderr and the exit status, for messages.
fn shown(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The example org, copied into `dir` with edits: the primary hook's
/// timeout 3s → 4s, the SMTP password rotated, a third hook added after the
/// backup (the file's last line), the `widgets` EmailDomain (the last
/// document of its file) removed.
fn edited_examples(dir: &Path) {
    let third = "timeout: 5s\n---\napiVersion: idplane.dev/v1alpha1\nkind: TelephonyHook\nmetadata:\n  name: third\nspec:\n  active: false\n  url: https://third.example.com/t\n  auth:\n    header: X-Api-Key\n    secretRef: {name: backup-sms, key: api-key}";
    copy_example_org(
        dir,
        &[
            ("20-telephony-hooks.yaml", "timeout: 3s", "timeout: 4s"),
            ("20-telephony-hooks.yaml", "timeout: 5s", third),
            (
                "10-secrets.yaml",
                "password: smtp-password-change-me",
                &format!("password: {ROTATED}"),
            ),
        ],
    );
    let email = dir.join("40-email.yaml");
    let body = std::fs::read_to_string(&email).unwrap();
    let (kept, widgets) = body.rsplit_once("\n---\n").unwrap();
    assert!(widgets.contains("name: widgets"), "{body}");
    std::fs::write(&email, format!("{kept}\n")).unwrap();
}

/// The blocks of a diff's output, one per object: its `--- ` header line
/// and its changed lines (`-`/`+`, headers left out).
fn blocks(stdout: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("--- ") {
            out.push((line.to_string(), Vec::new()));
        } else if (line.starts_with('-') || line.starts_with('+')) && !line.starts_with("+++ ") {
            out.last_mut().unwrap().1.push(line.to_string());
        }
    }
    out
}

/// The changed lines of the object whose `--- ` header is `header`.
fn changes<'a>(blocks: &'a [(String, Vec<String>)], header: &str) -> &'a [String] {
    &blocks
        .iter()
        .find(|(h, _)| h == header)
        .unwrap_or_else(|| panic!("no {header:?} among {blocks:?}"))
        .1
}

/// No Secret value (as text or base64), no status and no server-managed
/// field in anything `idplane diff` printed.
fn assert_nothing_secret_or_managed(out: &Output) {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    for value in EXAMPLE_VALUES.iter().chain([&ROTATED]) {
        assert!(!all.contains(value), "{value} printed:\n{}", shown(out));
        assert!(
            !all.contains(&b64(value)),
            "{value} (base64) printed:\n{}",
            shown(out)
        );
    }
    for field in [
        STATUS_MARKER,
        "status:",
        "managedFields",
        "resourceVersion",
        "uid:",
        "creationTimestamp",
        "generation",
        "last-applied-configuration",
    ] {
        assert!(!all.contains(field), "{field} printed:\n{}", shown(out));
    }
}

/// What the edited examples must show against the example org applied in
/// `ns`, with `--prune`.
fn assert_edited_diff(out: &Output, ns: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", shown(out));
    let stdout = text(&out.stdout);
    let blocks = blocks(&stdout);
    assert_eq!(
        changes(&blocks, &format!("--- live TelephonyHook {ns}/primary")),
        ["-  timeout: 3s", "+  timeout: 4s"],
        "{stdout}"
    );
    assert!(
        // The file and line follow.
        stdout.contains(&format!("+++ manifest TelephonyHook {ns}/primary (")),
        "{stdout}"
    );
    assert_eq!(
        changes(&blocks, &format!("--- live Secret {ns}/smtp-credentials")),
        [
            "-  password: (value hidden)",
            "+  password: changed (value hidden)"
        ],
        "{stdout}"
    );
    let created = changes(
        &blocks,
        &format!("--- live TelephonyHook {ns}/third (would be created)"),
    );
    assert!(created.iter().all(|l| l.starts_with('+')), "{stdout}");
    assert!(
        created.contains(&"+  url: https://third.example.com/t".to_string()),
        "{stdout}"
    );
    // The defaults the CRD gives, as the apiserver would store them.
    assert!(created.contains(&"+  timeout: 3s".to_string()), "{stdout}");
    let deleted = changes(&blocks, &format!("--- live EmailDomain {ns}/widgets"));
    assert!(deleted.iter().all(|l| l.starts_with('-')), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "+++ manifest EmailDomain {ns}/widgets (would be deleted)\n"
        )),
        "{stdout}"
    );
    assert_eq!(blocks.len(), 4, "only the four objects differ:\n{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("2 changed, 1 would be created, 1 would be deleted, 8 unchanged"),
        "{stderr}"
    );
    // No colour when stdout is not a terminal.
    assert!(!stdout.contains('\x1b'), "{stdout}");
    assert_nothing_secret_or_managed(out);
}

#[test]
fn against_the_cluster() {
    install_crds();
    let ns = temp_namespace("diff");
    let _guard = NamespaceGuard(ns.clone());
    apply_file(&ns, "examples/org/");
    // A status on a live object, as the operator would write it.
    kubectl_ok(&[
        "patch",
        "-n",
        &ns,
        "telephonyhook/primary",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"status":{{"observedGeneration":1,"conditions":[{{"type":"Ready","status":"True","reason":"{STATUS_MARKER}","message":"{STATUS_MARKER}","lastTransitionTime":"2026-01-01T00:00:00Z"}}]}}}}"#
        ),
    ]);
    // The policies name no `active`: the apiserver stored the CRD's default.
    let everyone = get_json(&ns, "enrollmentpolicy/everyone").unwrap();
    assert_eq!(everyone["spec"]["active"], true, "{everyone}");
    let manifest =
        std::fs::read_to_string(root().join("examples/org/30-enrollment-policies.yaml")).unwrap();
    assert!(
        !manifest.contains("active:"),
        "the example must leave `active` to its default"
    );

    // The manifests as applied: nothing differs. The validator's warning
    // comes first and does not change the exit status.
    let out = diff(&["examples/org", "-n", &ns, "--prune"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(text(&out.stdout), "", "{}", shown(&out));
    let stderr = text(&out.stderr);
    let warning = stderr
        .find("examples/org/20-telephony-hooks.yaml:29:3: warning: TelephonyHook")
        .unwrap_or_else(|| panic!("no warning:\n{stderr}"));
    let summary = stderr
        .find("0 changed, 0 would be created, 0 would be deleted, 11 unchanged")
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    assert!(warning < summary, "{stderr}");
    assert_nothing_secret_or_managed(&out);

    // Edited: a changed field, a rotated password, a new hook, a removed domain.
    let tmp = tempfile::tempdir().unwrap();
    edited_examples(tmp.path());
    let dir = tmp.path().to_str().unwrap();
    let out = diff(&[dir, "-n", &ns, "--prune"], &[]);
    assert_edited_diff(&out, &ns);
    // Without --prune, the removed domain is not listed.
    let out = diff(&[dir, "-n", &ns], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(
        !text(&out.stdout).contains("would be deleted"),
        "{}",
        shown(&out)
    );
    assert!(
        text(&out.stderr)
            .contains("2 changed, 1 would be created, 0 would be deleted, 8 unchanged"),
        "{}",
        shown(&out)
    );
    // Colours when asked; NO_COLOR only matters for auto.
    let out = diff(&[dir, "-n", &ns, "--color", "always"], &[("NO_COLOR", "1")]);
    assert!(
        text(&out.stdout)
            .contains("\x1b[31m-  timeout: 3s\x1b[0m\n\x1b[32m+  timeout: 4s\x1b[0m\n"),
        "{}",
        shown(&out)
    );
    // One manifest from stdin: the namespace from -n.
    let hooks = std::fs::read_to_string(tmp.path().join("20-telephony-hooks.yaml")).unwrap();
    let out = diff_stdin(&["-", "-n", &ns], &hooks);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(
        text(&out.stdout).contains(&format!("+++ manifest TelephonyHook {ns}/primary (-:")),
        "{}",
        shown(&out)
    );
}

/// `idplane diff ARGS` with `input` on stdin.
fn diff_stdin(args: &[&str], input: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idplane"));
    cmd.arg("diff")
        .args(args)
        .current_dir(root())
        .env("KUBECONFIG", kubeconfig());
    output_with_stdin(cmd, input)
}

/// Validation errors are printed first, with file and line, and nothing is
/// compared: exit 2, as kubectl diff on a refused object.
#[test]
fn validation_errors_come_first_and_exit_2() {
    install_crds();
    let ns = temp_namespace("diff-invalid");
    let _guard = NamespaceGuard(ns.clone());
    for (path, field, message) in invalid_fixtures("schema").into_iter().take(3) {
        let rel = path.strip_prefix(root()).unwrap().display().to_string();
        let out = diff(&[&rel, "examples/org", "-n", &ns], &[]);
        assert_eq!(out.status.code(), Some(2), "{rel}: {}", shown(&out));
        assert_eq!(text(&out.stdout), "", "{rel}: {}", shown(&out));
        let stderr = text(&out.stderr);
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("{rel}:")) && l.contains(&format!(": {field}: ")))
            .unwrap_or_else(|| panic!("{rel}: no {field} problem:\n{stderr}"));
        assert!(line.contains(&message), "{line}");
        // FILE:LINE:COL
        let mut parts = line.splitn(4, ':');
        parts.next();
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
        assert!(stderr.contains("nothing compared"), "{stderr}");
    }
    // A rule across objects too.
    let out = diff(
        &[
            "tests/fixtures/invalid/cross-object/two-active-hooks.yaml",
            "-n",
            &ns,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
}

/// Errors that are not the manifests': exit 2 with what to do.
#[test]
fn unreachable_live_sides_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-kubeconfig");
    let out = diff(
        &["examples/org", "--kubeconfig", missing.to_str().unwrap()],
        &[],
    );
    assert_fails(&out, "reading the kubeconfig");
    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = diff(
        &["examples/org", "--server", &closed, "--token", TOKEN],
        &[],
    );
    assert_fails(&out, "cannot reach");
    assert!(!text(&out.stderr).contains(TOKEN), "{}", shown(&out));
}

/// Exit 2, nothing on stdout, and stderr `says` what went wrong.
fn assert_fails(out: &Output, says: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", shown(out));
    assert_eq!(text(&out.stdout), "", "{}", shown(out));
    assert!(text(&out.stderr).contains(says), "{}", shown(out));
}

#[test]
fn against_idplane_run() {
    let (tmp, manifests) = workspace_with_token("diff", TOKEN);
    copy_example_org(&manifests, &[]);
    let run = Idplane::run_manifests(
        &manifests,
        &tmp.path().join("state/idplane.db"),
        &tmp.path().join("tokens.yaml"),
        &["-n", "acme"],
        &[],
        &tmp.path().join("idplane.log"),
    );
    let server = run.url("");

    // The endpoint serves digests, never values.
    let (code, body) = http_get(&run.url("/v1/orgs/acme/objects"), Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    for value in EXAMPLE_VALUES {
        assert!(!body.contains(value), "{value} served: {body}");
    }
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["objects"].as_array().unwrap().len(), 11, "{body}");

    let out = diff(
        &[
            "examples/org",
            "-n",
            "acme",
            "--server",
            &server,
            "--token",
            TOKEN,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(text(&out.stdout), "", "{}", shown(&out));
    assert!(
        text(&out.stderr)
            .contains("0 changed, 0 would be created, 0 would be deleted, 11 unchanged"),
        "{}",
        shown(&out)
    );

    let edited = tempfile::tempdir().unwrap();
    edited_examples(edited.path());
    let dir = edited.path().to_str().unwrap();
    let out = diff(
        &[dir, "-n", "acme", "--server", &server, "--prune"],
        &[("IDPLANE_TOKEN", TOKEN)],
    );
    assert_edited_diff(&out, "acme");
    // The token from a file.
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let out = diff(
        &[
            dir,
            "-n",
            "acme",
            "--server",
            &server,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));

    // A wrong token: exit 2, a message that says what to give, no token.
    let wrong = "not-the-token-0123456789";
    let out = diff(
        &[dir, "-n", "acme", "--server", &server, "--token", wrong],
        &[],
    );
    assert_fails(&out, "refused the token (401 unauthorized");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--token-file"), "{stderr}");
    assert!(!stderr.contains(wrong), "{stderr}");
}
