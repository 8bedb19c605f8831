//! Against the real test cluster: the CRDs install server-side and become
//! Established, the examples apply with server-side apply, the invalid
//! fixtures are refused by the apiserver itself (schema and CEL rules) with
//! the field named, `kubectl explain` reads the descriptions, and
//! `kubectl get` shows the printer columns. scripts/test.sh runs this file
//! against the newest and the oldest supported Kubernetes.

mod support;

use support::*;

#[test]
fn crds_install_and_become_established() {
    install_crds();
    let out = kubectl_ok(&["get", "crd", "-o", "name"]);
    for crd in [
        "telephonyhooks",
        "enrollmentpolicies",
        "emailproviders",
        "emaildomains",
    ] {
        assert!(out.contains(&format!("{crd}.idplane.dev")), "{out}");
    }
    let out = kubectl_ok(&["api-resources", "--api-group=idplane.dev", "-o", "wide"]);
    for short in ["th", "ep", "smtp", "edom"] {
        assert!(out.contains(short), "short name {short} missing:\n{out}");
    }
    assert!(out.contains("idplane"), "category missing:\n{out}");
}

fn yaml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn every_example_applies_server_side() {
    install_crds();
    let ns = temp_namespace("examples");
    let mut files = Vec::new();
    yaml_files(&root().join("examples"), &mut files);
    files.sort();
    assert!(files.len() >= 4);
    for f in &files {
        let out = kubectl(&[
            "apply",
            "--server-side",
            "-n",
            &ns,
            "-f",
            f.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}: {}{}",
            f.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let got = kubectl_ok(&["get", "idplane", "-n", &ns, "-o", "name"]);
    assert_eq!(
        got.lines().count(),
        8,
        "2 hooks, 3 policies, 1 provider, 2 domains:\n{got}"
    );
}

/// `kubectl apply --server-side` of one fixture in `ns`: its stderr, after
/// checking that the apiserver refused it. `--validate=strict` asks the
/// apiserver itself to refuse unknown fields (fieldValidation=Strict).
fn refused_by_the_apiserver(ns: &str, path: &std::path::Path) -> String {
    let out = kubectl(&[
        "apply",
        "--server-side",
        "--validate=strict",
        "-n",
        ns,
        "-f",
        path.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "{} was accepted:\n{}",
        path.display(),
        text(&out.stdout)
    );
    text(&out.stderr)
}

#[test]
fn invalid_schema_fixtures_are_refused_naming_the_field() {
    install_crds();
    let ns = temp_namespace("invalid");
    let fixtures = invalid_fixtures("schema");
    for (path, field, _) in &fixtures {
        let err = refused_by_the_apiserver(&ns, path);
        let leaf = field.rsplit('.').next().unwrap();
        let leaf = leaf.split('[').next().unwrap();
        assert!(
            err.contains(leaf),
            "{}: the error does not name {field}:\n{err}",
            path.display()
        );
    }
    assert!(fixtures.len() >= 10);
}

/// Every CEL rule of the CRDs compiles on this apiserver and is enforced by
/// it: each fixture of `rules/` is refused with the rule's own message, at
/// the field that `idplane validate` names (tests/validate_cli.rs checks
/// the same fixtures, field and message against idplane).
#[test]
fn invalid_rule_fixtures_are_refused_by_the_apiserver_with_the_rule_message() {
    install_crds();
    let ns = temp_namespace("cel");
    let fixtures = invalid_fixtures("rules");
    for (path, field, message) in &fixtures {
        let err = refused_by_the_apiserver(&ns, path);
        assert!(
            err.contains(&format!("{field}: ")) && err.contains(message.as_str()),
            "{}: the apiserver's error does not say {message:?} at {field}:\n{err}",
            path.display()
        );
    }
    assert!(fixtures.len() >= 10);
}

#[test]
fn kubectl_explain_reads_the_descriptions() {
    install_crds();
    let out = wait_for(
        "kubectl explain to see the CRD",
        std::time::Duration::from_secs(60),
        || {
            let o = kubectl(&["explain", "telephonyhook.spec.auth"]);
            o.status.success().then(|| text(&o.stdout))
        },
    );
    assert!(out.contains("authentication field"), "{out}");
    assert!(out.contains("secretRef"), "{out}");
    let out = kubectl_ok(&["explain", "emailprovider.spec.port"]);
    assert!(out.contains("TCP port of the SMTP server"), "{out}");
}

#[test]
fn kubectl_get_shows_the_printer_columns() {
    install_crds();
    let ns = temp_namespace("columns");
    apply_file(&ns, "examples/org/20-telephony-hooks.yaml");
    let out = kubectl_ok(&["get", "telephonyhooks", "-n", &ns]);
    let header = out.lines().next().unwrap();
    for col in [
        "NAME",
        "ACTIVE",
        "READY",
        "EXECUTIONS",
        "FAILURES",
        "AVG-MS",
        "AGE",
    ] {
        assert!(header.contains(col), "{col} missing: {header}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("primary") && l.contains("true")),
        "{out}"
    );
    let out = apply_file(&ns, "examples/org/40-email.yaml");
    assert!(out.contains("emailprovider"));
    let header = kubectl_ok(&["get", "emailproviders", "-n", &ns]);
    for col in [
        "ENABLED", "HOST", "PORT", "VERIFIED", "READY", "SENT", "FAILED",
    ] {
        assert!(header.contains(col), "{col} missing: {header}");
    }
}
