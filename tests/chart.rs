//! The Helm chart (`charts/idplane`): rendered with Go's text/template, the
//! engine Helm uses (tests/support/render_chart.go, as Helm is not
//! packaged for Debian), then checked object by object and sent to the
//! real test apiserver with `kubectl apply --dry-run=server`, which
//! validates every object against the cluster's own schemas.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde::Deserialize;
use serde_json::{Value, json};

/// `go`, from IDPLANE_GO or PATH (scripts/test-tools.sh installs Debian's
/// golang-go).
fn go() -> PathBuf {
    std::env::var_os("IDPLANE_GO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("go"))
}

/// Merges `over` into `base` the way Helm merges `--values` into the
/// chart's defaults: maps key by key, anything else replaced.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The chart rendered with its values.yaml plus `overrides`: the text and
/// the objects.
fn render(overrides: Value) -> (String, Vec<Value>) {
    try_render(overrides).unwrap_or_else(|e| panic!("rendering failed: {e}"))
}

/// The chart rendered, or the renderer's error (a template's `fail`).
fn try_render(overrides: Value) -> Result<(String, Vec<Value>), String> {
    let chart = root().join("charts/idplane");
    let defaults = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    let mut values: Value = serde_yaml::from_str(&defaults).unwrap();
    merge(&mut values, &overrides);
    let tmp = tempfile::tempdir().unwrap();
    let values_path = tmp.path().join("values.json");
    std::fs::write(&values_path, values.to_string()).unwrap();
    let out = Command::new(go())
        .arg("run")
        .arg(root().join("tests/support/render_chart.go"))
        .arg(&chart)
        .arg(&values_path)
        .args(["rel", "idplane-system"])
        .env("GO111MODULE", "off")
        .env("GOCACHE", std::env::temp_dir().join("idplane-go-cache"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); run scripts/test-tools.sh",
                go().display()
            )
        });
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    let yaml = text(&out.stdout);
    let objects = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    Ok((yaml, objects))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {objects:#?}"))
}

fn container(objects: &[Value]) -> &Value {
    &find(objects, "StatefulSet", "rel")["spec"]["template"]["spec"]["containers"][0]
}

fn args(objects: &[Value]) -> Vec<String> {
    container(objects)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The real apiserver accepts every object (server-side dry run).
fn dry_run(yaml: &str) {
    let ns = temp_namespace("chart");
    let out = kubectl_stdin(&["apply", "--dry-run=server", "-n", &ns, "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "the apiserver refused the chart:\n{}{}\n{yaml}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// idplane's own command line takes the container's arguments: every
/// flag exists and every value parses.
fn flags_parse(args: &[String]) {
    use clap::Parser;
    let line = std::iter::once("idplane").chain(args.iter().map(String::as_str));
    if let Err(e) = idplane::cli::Cli::try_parse_from(line) {
        panic!("idplane refuses the chart's arguments {args:?}: {e}");
    }
}

#[test]
fn default_values_give_one_persistent_replica_that_stops_gracefully() {
    let (yaml, objects) = render(json!({}));
    let set = find(&objects, "StatefulSet", "rel");
    assert_eq!(set["spec"]["replicas"], 1);
    let claims = set["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert_eq!(claims[0]["metadata"]["name"], "state");
    assert_eq!(claims[0]["spec"]["resources"]["requests"]["storage"], "1Gi");
    assert!(claims[0]["spec"].get("storageClassName").is_none());
    let pod = &set["spec"]["template"]["spec"];
    assert!(pod.get("volumes").is_none(), "the claim, not an emptyDir");
    assert_eq!(pod["terminationGracePeriodSeconds"], 35);
    assert_eq!(
        container(&objects)["lifecycle"]["preStop"]["exec"]["command"],
        json!(["sleep", "5"])
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["fsGroup"], 65532,
        "the state volume is writable"
    );
    assert_eq!(
        container(&objects)["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    let args = args(&objects);
    assert!(
        args.contains(&"--shutdown-grace=20s".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--database-max-size=850Mi".to_string()),
        "the file stays below the 1Gi volume: {args:?}"
    );
    assert!(args.contains(&"--lease-name=rel-status-writer".to_string()));
    assert!(!args.iter().any(|a| a.starts_with("--smtp-")), "{args:?}");
    flags_parse(&args);
    assert_eq!(
        find(&objects, "Service", "rel-pods")["spec"]["clusterIP"],
        "None"
    );
    assert_eq!(set["spec"]["serviceName"], "rel-pods");
    dry_run(&yaml);
}

#[test]
fn email_values_configure_the_default_provider_with_the_password_from_a_secret() {
    let (yaml, objects) = render(json!({
        "replicas": 2,
        "namespaces": ["acme", "globex"],
        "shutdownGraceSeconds": 45,
        "preStopSeconds": 0,
        "persistence": {"enabled": false, "databaseMaxSize": ""},
        "email": {
            "defaultSender": "Acme Mail <noreply@acme.example>",
            "defaultProvider": {
                "host": "smtp.acme.example",
                "port": 465,
                "tls": "implicit",
                "username": "mailer",
                "passwordSecret": {"name": "smtp-relay", "key": "pw"},
                "maxAttempts": 3,
                "initialDelay": "30s",
            },
        },
        "extraArgs": ["--email-concurrency=32"],
    }));
    let args = args(&objects);
    for want in [
        "--smtp-host=smtp.acme.example",
        "--smtp-port=465",
        "--smtp-tls=implicit",
        "--smtp-username=mailer",
        "--smtp-max-attempts=3",
        "--smtp-initial-delay=30s",
        "--smtp-multiplier=4",
        "--smtp-max-delay=1h",
        "--email-default-sender=Acme Mail <noreply@acme.example>",
        "--namespaces=acme,globex",
        "--shutdown-grace=45s",
        "--email-concurrency=32",
    ] {
        assert!(args.contains(&want.to_string()), "{want} not in {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--database-max-size")),
        "no cap when the value is empty: {args:?}"
    );
    flags_parse(&args);
    let env = container(&objects)["env"].as_array().unwrap();
    let password = env
        .iter()
        .find(|e| e["name"] == "IDPLANE_SMTP_PASSWORD")
        .expect("the password's variable");
    assert_eq!(
        password["valueFrom"]["secretKeyRef"],
        json!({"name": "smtp-relay", "key": "pw"})
    );
    let set = find(&objects, "StatefulSet", "rel");
    assert_eq!(set["spec"]["replicas"], 2);
    assert!(set["spec"].get("volumeClaimTemplates").is_none());
    let pod = &set["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0], json!({"name": "state", "emptyDir": {}}));
    assert_eq!(pod["terminationGracePeriodSeconds"], 55);
    assert!(container(&objects).get("lifecycle").is_none());
    dry_run(&yaml);
}

#[test]
fn a_default_provider_without_a_password_secret_sends_no_password_variable() {
    let (_, objects) = render(json!({
        "email": {"defaultProvider": {
            "host": "relay.internal", "port": 25, "tls": "none", "allowInsecure": true,
        }},
        "status": {"writesPerSecond": 1_000_000},
        "persistence": {"storageClass": "fast"},
    }));
    let args = args(&objects);
    assert!(args.contains(&"--smtp-host=relay.internal".to_string()));
    assert!(args.contains(&"--smtp-allow-insecure".to_string()));
    assert!(
        args.contains(&"--status-writes-per-second=1000000".to_string()),
        "a large number as an integer, not 1e+06: {args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--smtp-username")),
        "{args:?}"
    );
    flags_parse(&args);
    let env = container(&objects)["env"].as_array().unwrap();
    assert!(env.iter().all(|e| e["name"] != "IDPLANE_SMTP_PASSWORD"));
    let set = find(&objects, "StatefulSet", "rel");
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "fast"
    );
}

#[test]
fn values_idplane_would_refuse_at_start_fail_the_install_with_the_reason() {
    let no_secret = try_render(json!({
        "email": {"defaultProvider": {"host": "smtp.acme.example", "username": "mailer"}},
    }))
    .unwrap_err();
    assert!(
        no_secret.contains(
            "email.defaultProvider.username needs email.defaultProvider.passwordSecret.name"
        ),
        "{no_secret}"
    );
    let clear_text = try_render(json!({
        "email": {"defaultProvider": {"host": "relay.internal", "tls": "none"}},
    }))
    .unwrap_err();
    assert!(
        clear_text.contains("set email.defaultProvider.allowInsecure: true"),
        "{clear_text}"
    );
    // Without a host there is no default provider, and nothing to refuse.
    assert!(try_render(json!({"email": {"defaultProvider": {"username": "mailer"}}})).is_ok());
}
