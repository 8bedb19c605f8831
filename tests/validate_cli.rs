//! `idplane validate` as a user runs it: the example org passes, every
//! invalid fixture fails with its file, line, column, field and reason.

mod support;

use std::process::{Command, Output, Stdio};

use support::{invalid_fixtures, root, text};

fn idplane() -> Command {
    Command::new(env!("CARGO_BIN_EXE_idplane"))
}

fn run(args: &[&str]) -> Output {
    idplane().args(args).current_dir(root()).output().unwrap()
}

/// The invalid fixtures with what each must report (from its header).

#[test]
fn the_example_org_is_valid() {
    let out = run(&["validate", "examples/"]);
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The one finding: the example hook is the local reference bridge on
    // loopback, which the default egress rule refuses (a warning, and the
    // reason `idplane run` needs --egress-allow to reach it).
    let stdout = text(&out.stdout);
    let findings: Vec<&str> = stdout.lines().collect();
    assert_eq!(findings.len(), 1, "{stdout}");
    assert!(
        findings[0].starts_with("examples/org/20-telephony-hooks.yaml:")
            && findings[0].contains("warning: TelephonyHook default/primary: spec.url: egress refused: 127.0.0.1 is loopback"),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("0 problems"));
}

fn check_invalid(group: &str) {
    for (path, field, message) in invalid_fixtures(group) {
        let rel = path.strip_prefix(root()).unwrap().display().to_string();
        let out = run(&["validate", &rel]);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{rel} must fail:\n{stdout}{}",
            text(&out.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!(": {field}: ")) && l.contains(&message))
            .unwrap_or_else(|| {
                panic!("{rel}: no finding for {field} saying {message:?} in:\n{stdout}")
            });
        // FILE:LINE:COL: KIND NAMESPACE/NAME: FIELD: message
        let mut parts = line.splitn(4, ':');
        assert_eq!(parts.next(), Some(rel.as_str()), "{line}");
        let line_no: usize = parts.next().unwrap().parse().unwrap();
        let col: usize = parts.next().unwrap().parse().unwrap();
        let body = std::fs::read_to_string(&path).unwrap();
        let target = body
            .lines()
            .nth(line_no - 1)
            .unwrap_or_else(|| panic!("{line}: no such line"));
        assert!(
            col >= 1 && col <= target.len() + 1,
            "{line}: column out of range"
        );
        // The line pointed at names the field (or its list item, or, for a
        // missing field, the object that lacks it).
        let last = field.rsplit('.').next().unwrap();
        let key = last.split('[').next().unwrap();
        assert!(
            target.contains(key)
                || target.trim_start().starts_with('-')
                || target.starts_with("spec:")
                || message == "required",
            "{line}: line {line_no} ({target:?}) does not point at {field}"
        );
    }
}

#[test]
fn schema_violations_name_file_line_and_field() {
    check_invalid("schema");
}

#[test]
fn cel_rule_violations_name_file_line_and_field() {
    check_invalid("rules");
}

#[test]
fn cross_object_violations_name_file_line_and_field() {
    check_invalid("cross-object");
}

#[test]
fn json_output_carries_the_same_findings() {
    let out = run(&[
        "validate",
        "-o",
        "json",
        "tests/fixtures/invalid/schema/provider-port-string.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &findings[0];
    assert_eq!(f["field"], "spec.port");
    assert_eq!(
        f["file"],
        "tests/fixtures/invalid/schema/provider-port-string.yaml"
    );
    assert_eq!(f["line"], 10);
    assert_eq!(f["object"]["kind"], "EmailProvider");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["rule"], "invalid");
}

#[test]
fn reads_stdin_and_skips_foreign_kinds() {
    let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: \"x\"}\n---\n\
        apiVersion: idplane.dev/v1alpha1\nkind: EmailDomain\nmetadata: {name: d, namespace: acme}\n\
        spec: {brand: b, domain: example.com, userName: no, displayName: N}\n";
    let mut child = idplane()
        .args(["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("1 objects checked, 0 problems"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn strict_refuses_unknown_kinds_of_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.yml");
    std::fs::write(
        &file,
        "apiVersion: idplane.dev/v1alpha1\nkind: SmsProvider\nmetadata: {name: x}\nspec: {}\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    assert!(
        run(&["validate", f]).status.success(),
        "unknown kinds are skipped without --strict"
    );
    let out = run(&["validate", "--strict", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout)
            .contains(":2:1: SmsProvider default/x: kind: idplane does not serve kind SmsProvider"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_wrong_version_of_a_known_kind_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.yaml");
    std::fs::write(
        &file,
        "apiVersion: idplane.dev/v1\nkind: EmailDomain\nmetadata: {name: x}\nspec: {}\n",
    )
    .unwrap();
    let out = run(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout)
            .contains("apiVersion: idplane serves EmailDomain only as idplane.dev/v1alpha1")
    );
}

#[test]
fn syntax_errors_and_missing_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, "kind: [unclosed\n").unwrap();
    let out = run(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("broken.yaml:"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["validate", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("does/not/exist.yaml: cannot read"));
}

#[test]
fn run_manifests_prints_the_org_configuration_without_secrets() {
    let out = run(&["run", "--check", "--manifests", "examples/", "-n", "acme"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("activeHook: primary"), "{stdout}");
    assert!(
        !stdout.contains("dev-token-change-me") && !stdout.contains("smtp-password-change-me"),
        "secret leaked:\n{stdout}"
    );
    assert!(
        stdout.contains("<redacted; Secret version manifest>"),
        "{stdout}"
    );
}

/// Issue 15: an org with policies but no active default policy is a
/// warning (users in none of their groups get an error at sign-in), not an
/// error: exit 0, once per org, on the first policy or on the inactive
/// default.
#[test]
fn an_org_without_a_default_policy_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(
        &file,
        "apiVersion: idplane.dev/v1alpha1\nkind: EnrollmentPolicy\nmetadata: {name: admins, namespace: acme}\n\
         spec: {priority: 1, groups: [admins]}\n---\n\
         apiVersion: idplane.dev/v1alpha1\nkind: EnrollmentPolicy\nmetadata: {name: staff, namespace: acme}\n\
         spec: {priority: 2, groups: [staff]}\n---\n\
         apiVersion: idplane.dev/v1alpha1\nkind: EnrollmentPolicy\nmetadata: {name: admins, namespace: beta}\n\
         spec: {priority: 1, groups: [admins]}\n---\n\
         apiVersion: idplane.dev/v1alpha1\nkind: EnrollmentPolicy\nmetadata: {name: everyone, namespace: beta}\n\
         spec: {priority: 9, default: true, active: false}\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = run(&["validate", f]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "a warning does not fail:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{f}:4:1: warning: EnrollmentPolicy acme/admins: spec.default: org acme has EnrollmentPolicies but no default one (spec.default: true): a user in none of the groups its active policies list gets the error no_default_policy at sign-in, not an answer; add a default policy"
            ),
            format!(
                "{f}:19:36: warning: EnrollmentPolicy beta/everyone: spec.active: the default EnrollmentPolicy everyone of org beta is not active (spec.active: false), so the org has no default policy: a user in none of the groups its active policies list gets the error no_default_policy at sign-in, not an answer; activate it"
            ),
        ],
        "\n{stdout}"
    );
    assert!(
        text(&out.stderr).contains("4 objects checked, 0 problems, 2 warnings"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["validate", "-o", "json", f]);
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(findings[0]["severity"], "warning");
    assert_eq!(findings[0]["rule"], "noDefaultPolicy");
    assert_eq!(findings[0]["field"], "spec.default");
}

/// A log format idplane does not write is refused before anything runs,
/// naming the flag and the formats it takes.
#[test]
fn an_unknown_log_format_is_refused_with_the_flag_and_its_values() {
    let out = run(&["--log-format", "xml", "validate", "examples/"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("'--log-format <LOG_FORMAT>'"), "{stderr}");
    assert!(stderr.contains("[possible values: text, json]"), "{stderr}");
}
