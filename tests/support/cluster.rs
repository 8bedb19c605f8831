//! The test apiserver (started by `scripts/test-cluster.sh up`, or any
//! cluster named by `IDPLANE_TEST_KUBECONFIG`): kubectl, the CRDs,
//! temporary namespaces, objects as JSON, and `idplane operator` against it.
//! Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use super::process::{Idplane, output_with_stdin, root, text};

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

/// The bearer token of the test cluster's admin (`scripts/test-cluster.sh`
/// writes it into the apiserver's token file).
pub fn admin_token() -> String {
    std::env::var("IDPLANE_TEST_ADMIN_TOKEN").unwrap_or_else(|_| "idplane-admin-token".into())
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
    let mut cmd = Command::new(kubectl_path());
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig())
        .current_dir(root());
    output_with_stdin(cmd, input)
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

/// Applies YAML (server-side) in a namespace; panics unless it succeeds.
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

/// Applies a file of the repository (server-side) in a namespace; panics
/// unless it succeeds. kubectl's output.
pub fn apply_file(namespace: &str, path: &str) -> String {
    kubectl_ok(&["apply", "--server-side", "-n", namespace, "-f", path])
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

/// An object as JSON, or None when it does not exist.
pub fn get_json(namespace: &str, resource: &str) -> Option<serde_json::Value> {
    let out = kubectl(&["get", "-n", namespace, resource, "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

impl Idplane {
    /// `idplane operator` against the test cluster, watching `namespaces`
    /// and holding its Lease there, on a free loopback port, with its own
    /// database and `extra` flags; `env` beside KUBECONFIG. Returns once it
    /// listens.
    pub fn operator(
        namespaces: &str,
        database: &Path,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Idplane {
        let mut args = vec![
            "operator",
            "--namespaces",
            namespaces,
            "--listen",
            "127.0.0.1:0",
            "--database",
            database.to_str().unwrap(),
            "--lease-namespace",
            namespaces,
        ];
        args.extend_from_slice(extra);
        let kubeconfig = kubeconfig();
        let mut vars = vec![("KUBECONFIG", kubeconfig.to_str().unwrap())];
        vars.extend_from_slice(env);
        Idplane::start(&args, &vars, log)
    }
}

/// One webhook of a [`TestWebhookConfiguration`]: its name, the
/// operations it reviews and its `failurePolicy`.
pub struct TestWebhook<'a> {
    pub name: &'a str,
    pub operations: &'a [&'a str],
    pub failure_policy: &'a str,
}

impl<'a> TestWebhook<'a> {
    /// Reviews creates and updates, failing closed (the chart's first).
    pub fn reviewing(name: &'a str) -> Self {
        TestWebhook {
            name,
            operations: &["CREATE", "UPDATE"],
            failure_policy: "Fail",
        }
    }

    /// Warns on deletes, ignored when down (the chart's second).
    pub fn on_delete(name: &'a str) -> Self {
        TestWebhook {
            name,
            operations: &["DELETE"],
            failure_policy: "Ignore",
        }
    }
}

/// A ValidatingWebhookConfiguration of one test: its webhooks call `url`
/// (on loopback) about idplane's four kinds, for the objects of the
/// namespaces [`TestWebhookConfiguration::select`]ed alone (a label value
/// of the test's own). The shared cluster's other namespaces never meet
/// it; it is deleted when dropped, however the test ends.
pub struct TestWebhookConfiguration {
    pub name: String,
    /// The value of [`TestWebhookConfiguration::LABEL`] that selects the
    /// test's namespaces.
    pub selector: String,
}

impl TestWebhookConfiguration {
    /// The label that selects the test's namespaces.
    pub const LABEL: &'static str = "idplane.dev/test-webhook";

    /// Creates the configuration; its `caBundle` is `ca` (PEM), empty
    /// when `None` (for idplane to fill in).
    pub fn create(
        selector: &str,
        url: &str,
        ca: Option<&[u8]>,
        webhooks: &[TestWebhook],
    ) -> TestWebhookConfiguration {
        let guard = TestWebhookConfiguration {
            name: format!("idplane-test-{selector}"),
            selector: selector.to_string(),
        };
        let mut client_config = serde_json::json!({"url": url});
        if let Some(ca) = ca {
            use base64::Engine;
            client_config["caBundle"] = base64::engine::general_purpose::STANDARD.encode(ca).into();
        }
        let webhooks: Vec<serde_json::Value> = webhooks
            .iter()
            .map(|webhook| {
                serde_json::json!({
                    "name": webhook.name,
                    "clientConfig": client_config,
                    "rules": [{
                        "apiGroups": ["idplane.dev"],
                        "apiVersions": ["*"],
                        "operations": webhook.operations,
                        "resources": ["telephonyhooks", "enrollmentpolicies", "emailproviders", "emaildomains"],
                        "scope": "Namespaced",
                    }],
                    "failurePolicy": webhook.failure_policy,
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                    "namespaceSelector": {"matchLabels": {Self::LABEL: selector}},
                })
            })
            .collect();
        let object = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": guard.name},
            "webhooks": webhooks,
        });
        let out = kubectl_stdin(&["create", "-f", "-"], &object.to_string());
        assert!(
            out.status.success(),
            "creating {}: {}",
            guard.name,
            text(&out.stderr)
        );
        guard
    }

    /// Puts `namespace` under the webhooks.
    pub fn select(&self, namespace: &str) {
        kubectl_ok(&[
            "label",
            "namespace",
            namespace,
            &format!("{}={}", Self::LABEL, self.selector),
            "--overwrite",
        ]);
    }

    /// The configuration as stored.
    pub fn get(&self) -> serde_json::Value {
        get_json(
            "default",
            &format!("validatingwebhookconfiguration/{}", self.name),
        )
        .expect("the webhook configuration")
    }
}

impl Drop for TestWebhookConfiguration {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "delete",
            "validatingwebhookconfiguration",
            &self.name,
            "--ignore-not-found",
        ]);
    }
}

/// A real token for a ServiceAccount, from the TokenRequest API (valid an
/// hour).
pub fn serviceaccount_token(namespace: &str, serviceaccount: &str) -> String {
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    });
    let out = kubectl_stdin(
        &[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{serviceaccount}/token"),
            "-f",
            "-",
        ],
        &body.to_string(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["status"]["token"].as_str().unwrap().to_string()
}

/// A kubeconfig file in `dir` for the test cluster as the ServiceAccount:
/// a process given it has exactly the RBAC the account is granted.
pub fn serviceaccount_kubeconfig(namespace: &str, serviceaccount: &str, dir: &Path) -> PathBuf {
    let config = kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ]);
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["users"][0]["user"] =
        serde_json::json!({"token": serviceaccount_token(namespace, serviceaccount)});
    let path = dir.join(format!("kubeconfig-{serviceaccount}"));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}
