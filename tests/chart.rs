//! The Helm chart (`charts/idplane`), with Helm 4 itself as the reference:
//! its Go SDK (helm-python-sdk, driven by tests/support/python/helm.py in
//! the virtualenv of scripts/test-tools.sh) lints the chart, renders it for the
//! object-by-object checks and for `kubectl apply --dry-run=server` against
//! the real test apiserver (which validates every object against the
//! cluster's own schemas), and installs, upgrades and uninstalls a release
//! there.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use support::*;

/// `tests/support/python/helm.py ARGS`, in the virtualenv with
/// helm-python-sdk.
fn helm(args: &[&str]) -> Output {
    Command::new(&tools().python)
        .arg(python_script("helm.py"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the virtualenv's python runs")
}

/// `helm.py ARGS`, which must succeed: its JSON answer.
fn helm_json(args: &[&str]) -> Value {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm.py {args:?} failed:\n{}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn chart() -> String {
    root().join("charts/idplane").to_str().unwrap().to_string()
}

/// `values` in a file of `dir`, for Helm to merge over values.yaml.
fn values_file(dir: &Path, name: &str, values: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, values.to_string()).unwrap();
    path.to_str().unwrap().to_string()
}

/// The YAML documents of a stream, empty ones left out.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The chart rendered by Helm with its values.yaml plus `overrides`: the
/// text and the objects.
fn render(overrides: Value) -> (String, Vec<Value>) {
    try_render(overrides).unwrap_or_else(|e| panic!("rendering failed: {e}"))
}

/// The chart rendered, or Helm's error (a template's `fail`).
fn try_render(overrides: Value) -> Result<(String, Vec<Value>), String> {
    let tmp = tempfile::tempdir().unwrap();
    let values = values_file(tmp.path(), "values.json", &overrides);
    let out = helm(&["render", &chart(), &values, "rel", "idplane-system"]);
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    let yaml = text(&out.stdout);
    let objects = documents(&yaml);
    Ok((yaml, objects))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {objects:#?}"))
}

/// The idplane container of a StatefulSet or a Deployment, rendered or
/// stored.
fn pod_container(set: &Value) -> &Value {
    &set["spec"]["template"]["spec"]["containers"][0]
}

fn container_args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The container's variable `name`, if it has it.
fn variable<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

/// The container's `IDPLANE_SMTP_PASSWORD` variable.
fn password_variable(container: &Value) -> &Value {
    variable(container, "IDPLANE_SMTP_PASSWORD").expect("the password's variable")
}

fn container(objects: &[Value]) -> &Value {
    pod_container(find(objects, "StatefulSet", "rel"))
}

fn args(objects: &[Value]) -> Vec<String> {
    container_args(container(objects))
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
    assert!(
        args.contains(&"--egress-private=deny".to_string()),
        "private destinations refused by default: {args:?}"
    );
    assert!(!args.iter().any(|a| a.starts_with("--smtp-")), "{args:?}");
    flags_parse(&args);
    assert_eq!(
        find(&objects, "Service", "rel-pods")["spec"]["clusterIP"],
        "None"
    );
    assert_eq!(set["spec"]["serviceName"], "rel-pods");
    // The SQLite store: no Deployment and no disruption budget (they come
    // with database.postgres), no database or OTP key from a Secret.
    for kind in ["Deployment", "PodDisruptionBudget"] {
        assert!(objects.iter().all(|o| o["kind"] != kind), "a {kind}");
    }
    for name in [
        "IDPLANE_DATABASE",
        "IDPLANE_DATABASE_PASSWORD",
        "IDPLANE_OTP_HASH_KEY",
    ] {
        assert!(variable(container(&objects), name).is_none(), "{name}");
    }
    dry_run(&yaml);
}

/// Values that put the state on PostgreSQL: the URL and the password from
/// Secrets, and the OTP hash key every replica shares.
fn postgres_values() -> Value {
    json!({
        "database": {"postgres": {
            "urlSecret": {"name": "idplane-db", "key": "url"},
            "passwordSecret": {"name": "idplane-db-password", "key": "pw"},
        }},
        "otp": {"hashKeySecret": {"name": "idplane-otp", "key": "hash-key"}},
    })
}

/// The Deployment's idplane container.
fn deployment_container(objects: &[Value]) -> &Value {
    pod_container(find(objects, "Deployment", "rel"))
}

/// A variable's Secret reference: `{name, key}`.
fn secret_ref(container: &Value, name: &str) -> Value {
    let variable = variable(container, name).unwrap_or_else(|| panic!("no {name}"));
    assert!(
        variable.get("value").is_none(),
        "{name} in clear: {variable}"
    );
    variable["valueFrom"]["secretKeyRef"].clone()
}

#[test]
fn postgres_values_give_a_deployment_of_two_spread_replicas_with_no_volume() {
    let (yaml, objects) = render(postgres_values());
    for kind in ["StatefulSet", "PersistentVolumeClaim"] {
        assert!(objects.iter().all(|o| o["kind"] != kind), "a {kind}");
    }
    assert!(
        objects.iter().all(|o| o["metadata"]["name"] != "rel-pods"),
        "the headless Service is the StatefulSet's"
    );
    let deployment = find(&objects, "Deployment", "rel");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
        "a rollout keeps every replica serving until its successor is ready"
    );
    let selector =
        json!({"app.kubernetes.io/name": "idplane", "app.kubernetes.io/instance": "rel"});
    assert_eq!(spec["selector"]["matchLabels"], selector);
    let pod = &spec["template"]["spec"];
    assert!(pod.get("volumes").is_none(), "{pod:#}");
    assert!(pod["securityContext"].get("fsGroup").is_none());
    assert_eq!(pod["terminationGracePeriodSeconds"], 35);
    let spread = pod["topologySpreadConstraints"].as_array().unwrap();
    let by_key = |key: &str| {
        spread
            .iter()
            .find(|c| c["topologyKey"] == key)
            .unwrap_or_else(|| panic!("no spread over {key}: {spread:#?}"))
    };
    let hosts = by_key("kubernetes.io/hostname");
    assert_eq!(hosts["whenUnsatisfiable"], "DoNotSchedule");
    assert_eq!(hosts["maxSkew"], 1);
    assert_eq!(hosts["labelSelector"]["matchLabels"], selector);
    assert_eq!(
        by_key("topology.kubernetes.io/zone")["whenUnsatisfiable"],
        "ScheduleAnyway"
    );
    let budget = find(&objects, "PodDisruptionBudget", "rel");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(budget["spec"]["selector"]["matchLabels"], selector);

    let container = deployment_container(&objects);
    assert!(container.get("volumeMounts").is_none(), "{container:#}");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        secret_ref(container, "IDPLANE_DATABASE"),
        json!({"name": "idplane-db", "key": "url"})
    );
    assert_eq!(
        secret_ref(container, "IDPLANE_DATABASE_PASSWORD"),
        json!({"name": "idplane-db-password", "key": "pw"})
    );
    assert_eq!(
        secret_ref(container, "IDPLANE_OTP_HASH_KEY"),
        json!({"name": "idplane-otp", "key": "hash-key"}),
        "one key for every replica"
    );
    let args = container_args(container);
    assert!(
        !args.iter().any(|a| a.starts_with("--database")),
        "the database from the Secret alone; no SQLite cap: {args:?}"
    );
    assert!(args.contains(&"--lease-name=rel-status-writer".to_string()));
    flags_parse(&args);
    // Without a password Secret (the URL carries it), and replicas and
    // spread as given; 0 replicas is a count, not "unset".
    let mut values = postgres_values();
    values["database"]["postgres"]["passwordSecret"]["name"] = json!("");
    values["database"]["postgres"]["spread"] = json!({"hostname": "ScheduleAnyway", "zone": ""});
    values["replicas"] = json!(0);
    let (_, objects) = render(values);
    let deployment = find(&objects, "Deployment", "rel");
    assert_eq!(deployment["spec"]["replicas"], 0);
    let spread = &deployment["spec"]["template"]["spec"]["topologySpreadConstraints"];
    assert_eq!(spread.as_array().unwrap().len(), 1, "{spread:#}");
    assert_eq!(spread[0]["whenUnsatisfiable"], "ScheduleAnyway");
    assert!(variable(deployment_container(&objects), "IDPLANE_DATABASE_PASSWORD").is_none());
    dry_run(&yaml);
}

#[test]
fn an_otp_hash_key_secret_reaches_the_statefulset_too() {
    let (_, objects) = render(json!({"otp": {"hashKeySecret": {"name": "idplane-otp"}}}));
    assert_eq!(
        secret_ref(container(&objects), "IDPLANE_OTP_HASH_KEY"),
        json!({"name": "idplane-otp", "key": "hash-key"})
    );
    assert!(variable(container(&objects), "IDPLANE_DATABASE").is_none());
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
    let password = password_variable(container(&objects));
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

#[test]
fn postgres_values_idplane_could_not_run_with_fail_the_install_with_the_reason() {
    let refused = |change: &dyn Fn(&mut Value), reason: &str| {
        let mut values = postgres_values();
        change(&mut values);
        let error = try_render(values.clone()).expect_err(reason);
        assert!(error.contains(reason), "{values}: {error}");
    };
    refused(
        &|v| v["otp"]["hashKeySecret"]["name"] = json!(""),
        "database.postgres needs otp.hashKeySecret.name: every replica must hash passcodes with the same key",
    );
    refused(
        &|v| v["database"]["postgres"]["urlSecret"]["name"] = json!(""),
        "database.postgres.passwordSecret needs database.postgres.urlSecret.name",
    );
    refused(
        &|v| v["database"]["postgres"]["urlSecret"]["key"] = json!(""),
        "database.postgres.urlSecret.key is empty",
    );
    refused(
        &|v| v["database"]["postgres"]["spread"]["zone"] = json!("Always"),
        "database.postgres.spread.zone is DoNotSchedule, ScheduleAnyway or empty",
    );
    // idplane refuses --database-max-size on PostgreSQL; a --database in
    // extraArgs would win over the Secret's URL.
    for arg in ["--database-max-size=1Gi", "--database=/tmp/x.db"] {
        refused(
            &|v| v["extraArgs"] = json!([arg]),
            "with database.postgres: the database comes from database.postgres",
        );
    }
    // persistence is SQLite's: its defaults (a cap of 850Mi) do not reach
    // the Deployment, whatever they are.
    let mut values = postgres_values();
    values["persistence"] = json!({"enabled": true, "databaseMaxSize": "2Gi"});
    let (_, objects) = render(values);
    let args = container_args(deployment_container(&objects));
    assert!(
        !args.iter().any(|a| a.starts_with("--database")),
        "{args:?}"
    );
}

#[test]
fn helm_lint_finds_no_problem_with_the_default_email_or_postgres_values() {
    let tmp = tempfile::tempdir().unwrap();
    let email = json!({"email": {
        "defaultSender": "Acme Mail <noreply@acme.example>",
        "defaultProvider": {
            "host": "smtp.acme.example",
            "username": "mailer",
            "passwordSecret": {"name": "smtp-relay", "key": "pw"},
        },
    }});
    for (name, values) in [
        ("defaults.json", json!({})),
        ("email.json", email),
        ("postgres.json", postgres_values()),
    ] {
        let report = helm_json(&["lint", &chart(), &values_file(tmp.path(), name, &values)]);
        assert_eq!(report["total_charts_linted"], 1, "{report:#}");
        assert_eq!(report["errors"], json!([]), "{report:#}");
        // Severity 1 is information ("icon is recommended"); 2 a warning, 3 an error.
        let problems: Vec<&Value> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_u64().unwrap() >= 2)
            .collect();
        assert!(problems.is_empty(), "{name}: {problems:#?}");
    }
}

/// A release installed by the test. However the test ends, it is
/// uninstalled, Helm's share of the CRDs' fields given up and the
/// namespace deleted, so that nothing of it is left in the cluster.
struct Release {
    name: String,
    namespace: String,
    kubeconfig: String,
    /// The kubeconfig and the values files.
    dir: tempfile::TempDir,
}

impl Release {
    /// A fresh namespace, and a release name of its own: the
    /// ClusterRole(Binding)s are named after the release.
    fn new() -> Release {
        let namespace = temp_namespace("helm");
        let name = namespace.replacen("helm-", "idplane-", 1);
        // Helm reads the cluster that kubectl is given, as one
        // self-contained file.
        let dir = tempfile::tempdir().unwrap();
        let config = kubectl_ok(&["config", "view", "--raw", "--minify", "--flatten"]);
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, config).unwrap();
        Release {
            name,
            namespace,
            kubeconfig: kubeconfig.to_str().unwrap().to_string(),
            dir,
        }
    }

    /// `helm.py ACTION [CHART VALUES] RELEASE --kubeconfig .. --namespace ..`.
    fn helm(&self, action: &str, chart_and_values: &[&str]) -> Output {
        let mut args = vec![action];
        args.extend_from_slice(chart_and_values);
        args.extend_from_slice(&[
            &self.name,
            "--kubeconfig",
            &self.kubeconfig,
            "--namespace",
            &self.namespace,
        ]);
        helm(&args)
    }

    /// Installs or upgrades (`action`) the chart with `values`: the release.
    /// Its webhook selects only namespaces labelled for this test (none:
    /// the release's own is left out), so that the shared cluster's other
    /// tests never call a webhook that no pod serves here.
    fn deploy(&self, action: &str, values: &Value) -> Value {
        let mut values = values.clone();
        values["webhook"]["namespaceSelector"]["matchLabels"][TestWebhookConfiguration::LABEL] =
            json!(self.namespace);
        let values = values_file(self.dir.path(), &format!("{action}.json"), &values);
        let out = self.helm(action, &[&chart(), &values]);
        assert!(
            out.status.success(),
            "helm {action} failed:\n{}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Helm's status of the release, or None when Helm has none.
    fn status(&self) -> Option<Value> {
        let out = self.helm("status", &[]);
        if out.status.success() {
            return Some(serde_json::from_slice(&out.stdout).unwrap());
        }
        let error = text(&out.stderr);
        assert!(error.contains("not found"), "helm status failed:\n{error}");
        None
    }

    /// An object of the release as the apiserver stores it.
    fn stored(&self, kind: &str, name: &str) -> Option<Value> {
        get_json(&self.namespace, &format!("{}/{name}", kind.to_lowercase()))
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.helm("uninstall", &[]);
        let _ = give_up_helm_crd_fields();
        let _ = kubectl(&["delete", "namespace", &self.namespace, "--wait=false"]);
    }
}

/// The objects Helm applied for a release, from its own record.
fn manifest_objects(release: &Value) -> Vec<Value> {
    let manifest = release["manifest"].as_str();
    documents(manifest.expect("the release's manifest"))
}

/// The CRDs of the chart's crds/ directory: their names.
fn chart_crds() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root().join("charts/idplane/crds")).unwrap() {
        let yaml = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for crd in documents(&yaml) {
            names.push(crd["metadata"]["name"].as_str().unwrap().to_string());
        }
    }
    assert!(!names.is_empty(), "the chart has CRDs");
    names
}

/// The field manager of Helm 4's server-side apply: the program's name
/// (its os.Args[0]), here the virtualenv's python.
const HELM_FIELD_MANAGER: &str = "python";

/// Whether Helm's field manager owns fields of each of the chart's CRDs.
fn helm_owns_crd_fields() -> Vec<(String, bool)> {
    chart_crds()
        .into_iter()
        .map(|crd| {
            let out = kubectl_ok(&[
                "get",
                &format!("crd/{crd}"),
                "-o",
                "json",
                "--show-managed-fields",
            ]);
            let obj: Value = serde_json::from_str(&out).unwrap();
            let owns = obj["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["manager"] == HELM_FIELD_MANAGER);
            (crd, owns)
        })
        .collect()
}

/// Gives Helm's share of the CRDs' fields up: kubectl's errors, if any.
/// Helm 4 server-side applies the chart's crds/ at every install, to
/// existing CRDs too (without force), and so co-owns every field with the
/// other tests' `kubectl apply --server-side`: a field that a later crds/
/// drops would stay, kept by Helm's share. Applying nothing under Helm's
/// field manager leaves kubectl the only owner; no field changes, as
/// kubectl applied the same files (tests/crds_sync.rs) first.
fn give_up_helm_crd_fields() -> Vec<String> {
    let mut errors = Vec::new();
    for crd in chart_crds() {
        let nothing = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": crd},
        });
        let out = kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager",
                HELM_FIELD_MANAGER,
                "-f",
                "-",
            ],
            &nothing.to_string(),
        );
        if !out.status.success() {
            errors.push(format!("{crd}: {}", text(&out.stderr)));
        }
    }
    errors
}

fn assert_crds_established() {
    for crd in chart_crds() {
        wait_for(
            &format!("CRD {crd} Established"),
            Duration::from_secs(60),
            || {
                let obj = get_json("default", &format!("crd/{crd}"))?;
                (condition(&obj, "Established")?["status"] == "True").then_some(())
            },
        );
    }
}

#[test]
fn helm_installs_upgrades_and_uninstalls_a_release_on_the_real_apiserver() {
    let release = Release::new();
    let (name, ns) = (release.name.as_str(), release.namespace.as_str());
    kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "smtp-relay",
        "-n",
        ns,
        "--from-literal=pw=not-used",
    ]);
    let mut values = json!({"email": {"defaultProvider": {
        "host": "smtp.acme.example",
        "username": "mailer",
        "passwordSecret": {"name": "smtp-relay", "key": "pw"},
    }}});

    // The CRDs as the other tests apply them, so that Helm's own apply of
    // the same files (it applies existing CRDs too) meets no conflict
    // whatever CRDs a cluster that keeps its state had.
    install_crds();

    // Install: the chart's CRDs, then every object of the templates.
    let installed = release.deploy("install", &values);
    assert_eq!(installed["status"], "deployed", "{installed:#}");
    assert_eq!(installed["revision"], 1);
    assert_eq!(installed["namespace"], ns);
    assert_crds_established();
    for (crd, owns) in helm_owns_crd_fields() {
        assert!(
            owns,
            "Helm did not apply CRD {crd} (field manager {HELM_FIELD_MANAGER})"
        );
    }
    assert_eq!(give_up_helm_crd_fields(), Vec::<String>::new());
    assert_crds_established();
    let objects = manifest_objects(&installed);
    let kinds: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| {
            let name = o["metadata"]["name"].as_str().unwrap();
            (o["kind"].as_str().unwrap(), name)
        })
        .collect();
    let pods = format!("{name}-pods");
    let delegator = format!("{name}-auth-delegator");
    let (webhook, certificate, configuration) = (
        format!("{name}-webhook"),
        format!("{name}-webhook-certificate"),
        format!("{name}-webhook-configuration"),
    );
    for want in [
        ("ServiceAccount", name),
        ("ClusterRole", name),
        ("ClusterRoleBinding", name),
        ("ClusterRoleBinding", delegator.as_str()),
        ("StatefulSet", name),
        ("Service", name),
        ("Service", pods.as_str()),
        ("ValidatingWebhookConfiguration", name),
        ("Service", webhook.as_str()),
        ("Role", certificate.as_str()),
        ("RoleBinding", certificate.as_str()),
        ("ClusterRole", configuration.as_str()),
        ("ClusterRoleBinding", configuration.as_str()),
    ] {
        assert!(
            kinds.contains(&want),
            "{want:?} not in the release: {kinds:?}"
        );
    }
    for object in &objects {
        let (kind, object_name) = (
            object["kind"].as_str().unwrap(),
            object["metadata"]["name"].as_str().unwrap(),
        );
        let stored = release
            .stored(kind, object_name)
            .unwrap_or_else(|| panic!("the apiserver has no {kind} {object_name}"));
        let meta = &stored["metadata"];
        assert_eq!(
            meta["labels"]["app.kubernetes.io/managed-by"], "Helm",
            "{kind} {object_name}"
        );
        assert_eq!(meta["annotations"]["meta.helm.sh/release-name"], name);
        assert_eq!(meta["annotations"]["meta.helm.sh/release-namespace"], ns);
        if [
            "ServiceAccount",
            "StatefulSet",
            "Service",
            "Role",
            "RoleBinding",
        ]
        .contains(&kind)
        {
            assert_eq!(meta["namespace"], ns, "{kind} {object_name}");
        }
        let args = |o: &Value| o["spec"]["template"]["spec"]["containers"][0]["args"].clone();
        assert_eq!(args(&stored), args(object), "{kind} {object_name}: args");
        // RBAC as the templates wrote it; the subjects in the release's namespace.
        for field in ["rules", "roleRef", "subjects"] {
            assert_eq!(
                stored[field], object[field],
                "{kind} {object_name}: {field}"
            );
        }
    }
    let role = release.stored("ClusterRole", name).unwrap();
    assert!(
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["apiGroups"] == json!(["idplane.dev"])
                && r["resources"][0] == "telephonyhooks"),
        "{role:#}"
    );
    let binding = release.stored("ClusterRoleBinding", name).unwrap();
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}])
    );
    assert_eq!(
        release.stored("ClusterRoleBinding", &delegator).unwrap()["roleRef"]["name"],
        "system:auth-delegator"
    );
    assert_eq!(
        release.stored("Service", &pods).unwrap()["spec"]["clusterIP"],
        "None"
    );
    let service = release.stored("Service", name).unwrap();
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let set = release.stored("StatefulSet", name).unwrap();
    assert_eq!(set["spec"]["replicas"], 1);
    assert_eq!(set["spec"]["serviceName"], pods);
    let pod = &set["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], name);
    let args = container_args(pod_container(&set));
    for want in [
        "operator".to_string(),
        format!("--lease-name={name}-status-writer"),
        "--smtp-host=smtp.acme.example".to_string(),
        "--smtp-username=mailer".to_string(),
    ] {
        assert!(args.contains(&want), "{want} not in {args:?}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--email-")), "{args:?}");
    let password = password_variable(pod_container(&set));
    assert_eq!(
        password["valueFrom"]["secretKeyRef"],
        json!({"name": "smtp-relay", "key": "pw"})
    );
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "state"
    );

    // Upgrade: the changed values reach the stored StatefulSet.
    values["replicas"] = json!(2);
    values["email"]["defaultSender"] = json!("Acme Mail <noreply@acme.example>");
    values["extraArgs"] = json!(["--email-concurrency=32"]);
    let upgraded = release.deploy("upgrade", &values);
    assert_eq!(upgraded["status"], "deployed", "{upgraded:#}");
    assert_eq!(upgraded["revision"], 2);
    let set = release.stored("StatefulSet", name).unwrap();
    assert_eq!(set["spec"]["replicas"], 2);
    let args = container_args(pod_container(&set));
    for want in [
        "--email-default-sender=Acme Mail <noreply@acme.example>",
        "--email-concurrency=32",
        "--smtp-host=smtp.acme.example",
    ] {
        assert!(args.contains(&want.to_string()), "{want} not in {args:?}");
    }
    let status = release.status().expect("the release");
    assert_eq!(status["revision"], 2);
    assert_eq!(status["status"], "deployed");

    // Uninstall: the release and every object of it go, cluster-scoped
    // RBAC too; Helm keeps the CRDs, and the Secret it did not create.
    let out = release.helm("uninstall", &[]);
    assert!(
        out.status.success(),
        "helm uninstall failed:\n{}",
        text(&out.stderr)
    );
    for object in manifest_objects(&upgraded) {
        let (kind, object_name) = (
            object["kind"].as_str().unwrap(),
            object["metadata"]["name"].as_str().unwrap(),
        );
        wait_for(
            &format!("{kind} {object_name} to be deleted"),
            Duration::from_secs(30),
            || release.stored(kind, object_name).is_none().then_some(()),
        );
    }
    assert_eq!(release.status(), None, "the release is still there");
    let history = kubectl_ok(&[
        "get",
        "secrets",
        "-n",
        ns,
        "-l",
        &format!("owner=helm,name={name}"),
        "-o",
        "name",
    ]);
    assert_eq!(history.trim(), "", "Helm's release records are left");
    assert!(release.stored("Secret", "smtp-relay").is_some());
    assert_crds_established();
}

#[test]
fn helm_upgrades_a_sqlite_release_to_postgres_and_scales_it_on_the_real_apiserver() {
    let release = Release::new();
    let (name, ns) = (release.name.as_str(), release.namespace.as_str());
    for (secret, literal) in [
        (
            "idplane-db",
            "url=postgres://idplane@db.example:5432/idplane",
        ),
        ("idplane-db-password", "pw=not-used"),
        (
            "idplane-otp",
            "hash-key=not-used-not-used-not-used-not-used",
        ),
    ] {
        let literal = format!("--from-literal={literal}");
        kubectl_ok(&["create", "secret", "generic", secret, "-n", ns, &literal]);
    }
    install_crds();

    // Revision 1: the default, SQLite in a StatefulSet.
    let installed = release.deploy("install", &json!({}));
    assert_eq!(installed["revision"], 1, "{installed:#}");
    assert!(release.stored("StatefulSet", name).is_some());
    assert!(release.stored("Deployment", name).is_none());

    // Revision 2: PostgreSQL. The StatefulSet and its headless Service go,
    // a Deployment and its disruption budget come; the Service stays.
    let upgraded = release.deploy("upgrade", &postgres_values());
    assert_eq!(upgraded["status"], "deployed", "{upgraded:#}");
    assert_eq!(upgraded["revision"], 2);
    let pods = format!("{name}-pods");
    for (kind, object) in [("StatefulSet", name), ("Service", pods.as_str())] {
        wait_for(
            &format!("{kind} {object} to be deleted"),
            Duration::from_secs(30),
            || release.stored(kind, object).is_none().then_some(()),
        );
    }
    let deployment = release.stored("Deployment", name).expect("the Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"],
        json!({"maxUnavailable": 0, "maxSurge": 1})
    );
    let container = pod_container(&deployment);
    assert_eq!(
        secret_ref(container, "IDPLANE_DATABASE"),
        json!({"name": "idplane-db", "key": "url"})
    );
    assert_eq!(
        secret_ref(container, "IDPLANE_OTP_HASH_KEY"),
        json!({"name": "idplane-otp", "key": "hash-key"})
    );
    let spread = &deployment["spec"]["template"]["spec"]["topologySpreadConstraints"];
    assert_eq!(spread.as_array().map(Vec::len), Some(2), "{spread:#}");
    let budget = release
        .stored("PodDisruptionBudget", name)
        .expect("the PodDisruptionBudget");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert!(release.stored("Service", name).is_some());

    // Revision 3: scaled out.
    let mut values = postgres_values();
    values["replicas"] = json!(3);
    let scaled = release.deploy("upgrade", &values);
    assert_eq!(scaled["revision"], 3, "{scaled:#}");
    let deployment = release.stored("Deployment", name).unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    let status = release.status().expect("the release");
    assert_eq!(status["status"], "deployed");
}

// The admission webhook and its certificate (issue 18).

/// The rendered objects of `kind`.
fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The apiserver accepts every object but cert-manager's (its CRDs are
/// not installed in the test cluster): server-side dry run.
fn dry_run_without_cert_manager(objects: &[Value]) {
    let items: Vec<&Value> = objects
        .iter()
        .filter(|o| o["apiVersion"] != "cert-manager.io/v1")
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    dry_run(&list.to_string());
}

/// The webhooks of the release's configuration: the one that checks
/// creates and updates, and the one that only warns on deletes.
fn webhooks(objects: &[Value]) -> (&Value, &Value) {
    let configuration = find(objects, "ValidatingWebhookConfiguration", "rel");
    let webhooks = configuration["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 2, "{configuration:#}");
    (&webhooks[0], &webhooks[1])
}

/// The webhook that checks creates and updates.
fn the_webhook(objects: &[Value]) -> &Value {
    webhooks(objects).0
}

#[test]
fn the_webhook_is_installed_with_its_own_service_and_a_self_managed_certificate() {
    let (yaml, objects) = render(json!({}));
    let webhook = the_webhook(&objects);
    // The apiserver prints the name and the path when idplane is down:
    // they are the recovery hint (docs/admission.md).
    assert_eq!(webhook["name"], "idplane-must-be-running.idplane.dev");
    assert_eq!(webhook["failurePolicy"], "Fail");
    let (_, deletes) = webhooks(&objects);
    assert_eq!(deletes["name"], "delete-warnings.idplane.dev");
    assert_eq!(
        deletes["failurePolicy"], "Ignore",
        "a down idplane never blocks a delete"
    );
    assert_eq!(deletes["rules"][0]["operations"], json!(["DELETE"]));
    assert_eq!(deletes["namespaceSelector"], webhook["namespaceSelector"]);
    assert_eq!(deletes["clientConfig"], webhook["clientConfig"]);
    assert_eq!(
        webhook["sideEffects"], "None",
        "kubectl diff and --dry-run=server"
    );
    assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(webhook["timeoutSeconds"], 5);
    assert_eq!(
        webhook["rules"][0]["resources"],
        json!([
            "telephonyhooks",
            "enrollmentpolicies",
            "emailproviders",
            "emaildomains"
        ])
    );
    assert_eq!(webhook["rules"][0]["apiGroups"], json!(["idplane.dev"]));
    assert_eq!(
        webhook["rules"][0]["operations"],
        json!(["CREATE", "UPDATE"])
    );
    assert_eq!(
        webhook["namespaceSelector"],
        json!({"matchExpressions": [{
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["idplane-system"],
        }]}),
        "idplane's own namespace left out"
    );
    assert_eq!(
        webhook["clientConfig"],
        json!({"service": {"name": "rel-webhook", "namespace": "idplane-system", "path": "/validate-or-kubectl-delete-validatingwebhookconfiguration-idplane", "port": 443}}),
        "no caBundle: idplane writes it, and Helm leaves it alone"
    );
    let configuration = find(&objects, "ValidatingWebhookConfiguration", "rel");
    assert!(configuration["metadata"].get("annotations").is_none());
    let service = find(&objects, "Service", "rel-webhook");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "webhook", "port": 443, "targetPort": "webhook"}])
    );
    assert_eq!(
        service["spec"]["selector"],
        find(&objects, "Service", "rel")["spec"]["selector"]
    );
    let ports = &container(&objects)["ports"];
    assert!(
        ports
            .as_array()
            .unwrap()
            .contains(&json!({"name": "webhook", "containerPort": 9443})),
        "{ports}"
    );
    let args = args(&objects);
    for want in [
        "--webhook-listen=0.0.0.0:9443",
        "--webhook-secret=rel-webhook-tls",
        "--webhook-service=rel-webhook",
        "--webhook-configuration=rel",
    ] {
        assert!(args.contains(&want.to_string()), "{want} not in {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--webhook-cert-dir")),
        "{args:?}"
    );
    flags_parse(&args);
    // RBAC for the one Secret (create cannot name it) and the one
    // configuration.
    let role = find(&objects, "Role", "rel-webhook-certificate");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["rel-webhook-tls"], "verbs": ["get", "list", "watch", "update"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        ])
    );
    let binding = find(&objects, "RoleBinding", "rel-webhook-certificate");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "rel", "namespace": "idplane-system"}])
    );
    let cluster_role = find(&objects, "ClusterRole", "rel-webhook-configuration");
    assert_eq!(
        cluster_role["rules"],
        json!([{
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations"],
            "resourceNames": ["rel"],
            "verbs": ["get", "list", "watch", "patch"],
        }])
    );
    find(&objects, "ClusterRoleBinding", "rel-webhook-configuration");
    assert!(
        objects
            .iter()
            .all(|o| o["apiVersion"] != "cert-manager.io/v1"),
        "no cert-manager object without webhook.certManager"
    );
    dry_run(&yaml);

    // The Deployment (PostgreSQL) runs the same webhook.
    let (_, objects) = render(postgres_values());
    let args = container_args(deployment_container(&objects));
    assert!(args.contains(&"--webhook-secret=rel-webhook-tls".to_string()));
    the_webhook(&objects);
}

#[test]
fn webhook_values_exclude_namespaces_select_more_or_turn_it_off() {
    let (yaml, objects) = render(json!({"webhook": {
        "timeoutSeconds": 10,
        "excludeNamespaces": ["kube-system", "idplane-system"],
        "namespaceSelector": {
            "matchLabels": {"idplane.dev/webhook": "enabled"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["sandbox"]}],
        },
    }}));
    let webhook = the_webhook(&objects);
    assert_eq!(webhook["timeoutSeconds"], 10);
    assert_eq!(
        webhook["namespaceSelector"],
        json!({
            "matchLabels": {"idplane.dev/webhook": "enabled"},
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["idplane-system", "kube-system"]},
                {"key": "tier", "operator": "NotIn", "values": ["sandbox"]},
            ],
        })
    );
    dry_run(&yaml);

    let (yaml, objects) = render(json!({"webhook": {"enabled": false}}));
    for kind in ["ValidatingWebhookConfiguration", "Role", "RoleBinding"] {
        assert!(of_kind(&objects, kind).is_empty(), "a {kind}");
    }
    assert!(
        objects
            .iter()
            .all(|o| o["metadata"]["name"] != "rel-webhook")
    );
    let args = args(&objects);
    assert!(!args.iter().any(|a| a.starts_with("--webhook")), "{args:?}");
    let ports = container(&objects)["ports"].as_array().unwrap().clone();
    assert_eq!(ports, [json!({"name": "http", "containerPort": 8080})]);
    flags_parse(&args);
    dry_run(&yaml);
}

#[test]
fn with_cert_manager_a_certificate_is_mounted_and_its_ca_injected() {
    // cert-manager's CRDs are not in the test cluster: its objects are
    // checked as rendered; the others go to the apiserver's dry run.
    let (_, objects) = render(json!({"webhook": {"certManager": {"enabled": true}}}));
    let configuration = find(&objects, "ValidatingWebhookConfiguration", "rel");
    assert_eq!(
        configuration["metadata"]["annotations"],
        json!({"cert-manager.io/inject-ca-from": "idplane-system/rel-webhook"})
    );
    assert!(
        the_webhook(&objects)["clientConfig"]
            .get("caBundle")
            .is_none()
    );
    let certificate = find(&objects, "Certificate", "rel-webhook");
    assert_eq!(certificate["spec"]["secretName"], "rel-webhook-tls");
    assert_eq!(
        certificate["spec"]["dnsNames"],
        json!([
            "rel-webhook",
            "rel-webhook.idplane-system",
            "rel-webhook.idplane-system.svc",
            "rel-webhook.idplane-system.svc.cluster.local",
        ])
    );
    assert_eq!(certificate["spec"]["duration"], "2160h");
    assert_eq!(certificate["spec"]["renewBefore"], "720h");
    assert_eq!(
        certificate["spec"]["privateKey"]["rotationPolicy"],
        "Always"
    );
    // Without issuerRef: a CA of the release's own signs it.
    assert_eq!(
        certificate["spec"]["issuerRef"],
        json!({"name": "rel-webhook-ca", "kind": "Issuer", "group": "cert-manager.io"})
    );
    let ca = find(&objects, "Certificate", "rel-webhook-ca");
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(
        ca["spec"]["issuerRef"],
        json!({"name": "rel-webhook-selfsigned", "kind": "Issuer", "group": "cert-manager.io"})
    );
    assert_eq!(
        find(&objects, "Issuer", "rel-webhook-selfsigned")["spec"],
        json!({"selfSigned": {}})
    );
    assert_eq!(
        find(&objects, "Issuer", "rel-webhook-ca")["spec"],
        json!({"ca": {"secretName": "rel-webhook-ca"}})
    );
    // The pod mounts the Secret and reads it from the directory; idplane
    // writes nothing itself, so no RBAC for Secrets or the configuration.
    let args = args(&objects);
    assert!(args.contains(&"--webhook-cert-dir=/etc/idplane/webhook-tls".to_string()));
    assert!(args.contains(&"--webhook-listen=0.0.0.0:9443".to_string()));
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--webhook-secret") || a.starts_with("--webhook-configuration")),
        "{args:?}"
    );
    flags_parse(&args);
    assert!(
        container(&objects)["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "webhook-tls", "mountPath": "/etc/idplane/webhook-tls", "readOnly": true}))
    );
    let set = find(&objects, "StatefulSet", "rel");
    assert_eq!(
        set["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "webhook-tls", "secret": {"secretName": "rel-webhook-tls"}}])
    );
    for kind in ["Role", "RoleBinding"] {
        assert!(of_kind(&objects, kind).is_empty(), "a {kind}");
    }
    assert!(
        objects
            .iter()
            .all(|o| o["metadata"]["name"] != "rel-webhook-configuration")
    );
    dry_run_without_cert_manager(&objects);

    // An issuer of the user's: no Issuer of the chart; on PostgreSQL the
    // Deployment mounts the Secret, without persistence an emptyDir too.
    let mut values = postgres_values();
    values["webhook"] = json!({"certManager": {
        "enabled": true,
        "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
        "duration": "720h",
        "renewBefore": "240h",
    }});
    let (_, objects) = render(values);
    assert!(of_kind(&objects, "Issuer").is_empty());
    let certificate = find(&objects, "Certificate", "rel-webhook");
    assert_eq!(
        certificate["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    assert_eq!(certificate["spec"]["duration"], "720h");
    assert_eq!(of_kind(&objects, "Certificate").len(), 1);
    let deployment = find(&objects, "Deployment", "rel");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "webhook-tls", "secret": {"secretName": "rel-webhook-tls"}}])
    );
    dry_run_without_cert_manager(&objects);
    let (_, objects) = render(json!({
        "webhook": {"certManager": {"enabled": true}},
        "persistence": {"enabled": false},
    }));
    let volumes = &find(&objects, "StatefulSet", "rel")["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        volumes,
        &json!([
            {"name": "state", "emptyDir": {}},
            {"name": "webhook-tls", "secret": {"secretName": "rel-webhook-tls"}},
        ])
    );
}

/// `idplane operator` as the release's ServiceAccount (a real token),
/// with the webhook flags of the stored StatefulSet: the chart's RBAC
/// must let it create its Secret, watch it, and write the caBundle of the
/// release's webhook configuration.
#[test]
fn the_charts_rbac_lets_idplane_manage_its_webhook_certificate() {
    let release = Release::new();
    let (name, ns) = (release.name.as_str(), release.namespace.as_str());
    install_crds();
    let installed = release.deploy("install", &json!({}));
    assert_eq!(installed["status"], "deployed", "{installed:#}");
    let set = release.stored("StatefulSet", name).unwrap();
    let mut args: Vec<String> = container_args(pod_container(&set))
        .into_iter()
        .filter(|a| a.starts_with("--webhook-") && !a.starts_with("--webhook-listen"))
        .collect();
    assert_eq!(args.len(), 3, "{args:?}");
    args.push(format!("--webhook-listen=127.0.0.1:{}", free_port()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kubeconfig = serviceaccount_kubeconfig(ns, name, release.dir.path());
    let idplane = Idplane::operator(
        ns,
        &release.dir.path().join("idplane.db"),
        &release.dir.path().join("idplane.log"),
        &args,
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("POD_NAMESPACE", ns),
            ("RUST_LOG", "idplane=info"),
        ],
    );
    let secret = format!("{name}-webhook-tls");
    let ca = wait_for(
        "the Secret, created as the ServiceAccount",
        Duration::from_secs(60),
        || {
            let stored = release.stored("Secret", &secret)?;
            stored["data"]["ca.crt"].as_str().map(str::to_string)
        },
    );
    wait_for(
        "the caBundle, written as the ServiceAccount",
        Duration::from_secs(60),
        || {
            let configuration = release.stored("ValidatingWebhookConfiguration", name)?;
            (configuration["webhooks"][0]["clientConfig"]["caBundle"] == ca.as_str()).then_some(())
        },
    );
    let log = idplane.log_text();
    assert!(!log.contains("forbidden"), "{log}");
    drop(idplane);
    // Helm upgrades leave idplane's caBundle be: the chart renders none.
    let upgraded = release.deploy("upgrade", &json!({"webhook": {"timeoutSeconds": 7}}));
    assert_eq!(upgraded["status"], "deployed", "{upgraded:#}");
    let configuration = release
        .stored("ValidatingWebhookConfiguration", name)
        .unwrap();
    assert_eq!(configuration["webhooks"][0]["timeoutSeconds"], 7);
    assert_eq!(
        configuration["webhooks"][0]["clientConfig"]["caBundle"],
        ca.as_str()
    );
}
