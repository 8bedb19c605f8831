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
