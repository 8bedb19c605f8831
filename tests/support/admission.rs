//! The admission webhook against the test apiserver: a certificate
//! directory as cert-manager mounts one, `idplane operator` serving the
//! webhook on loopback, and a ValidatingWebhookConfiguration aimed at it
//! that only namespaces carrying the test's own label see (the cluster is
//! shared), deleted when dropped, however the test ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use idplane::controller::webhook::server::{DELETE_WEBHOOK_NAME, PATH, WEBHOOK_NAME};

use super::cluster::{TestWebhook, TestWebhookConfiguration, kubeconfig, kubectl_stdin};
use super::email::certs;
use super::process::{Idplane, free_port, text, wait_for};

/// A directory holding `tls.crt` and `tls.key` for 127.0.0.1, and the CA
/// that signed them.
pub struct CertDir {
    pub dir: PathBuf,
    pub ca: PathBuf,
}

/// Makes a CA and a serving certificate under `parent/name`.
pub fn cert_dir(parent: &Path, name: &str) -> CertDir {
    let work = parent.join(name);
    let dir = work.join("serving");
    std::fs::create_dir_all(&dir).unwrap();
    let made = certs(&work);
    std::fs::copy(&made.cert, dir.join("tls.crt")).unwrap();
    std::fs::copy(&made.key, dir.join("tls.key")).unwrap();
    CertDir { dir, ca: made.ca }
}

/// `idplane operator` watching `namespaces` (its Lease in the first),
/// serving the webhook on `port` with the certificate in `certs`; returns
/// once its API is ready (the index has synced).
pub fn operator_with_webhook(
    namespaces: &[String],
    port: u16,
    certs: &Path,
    tmp: &Path,
    log: &str,
) -> Idplane {
    let list = namespaces.join(",");
    let webhook = format!("127.0.0.1:{port}");
    let database = tmp.join(format!("{log}.db"));
    let args = [
        "operator",
        "--namespaces",
        &list,
        "--listen",
        "127.0.0.1:0",
        "--database",
        database.to_str().unwrap(),
        "--lease-namespace",
        &namespaces[0],
        "--lease-seconds",
        "6",
        "--webhook-listen",
        &webhook,
        "--webhook-cert-dir",
        certs.to_str().unwrap(),
    ];
    let kubeconfig = kubeconfig();
    let mut op = Idplane::start(
        &args,
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("RUST_LOG", "idplane=info"),
        ],
        &tmp.join(format!("{log}.log")),
    );
    op.wait_ready(Duration::from_secs(60));
    op
}

/// A ValidatingWebhookConfiguration of the test's own, as the chart
/// installs it: creates and updates reviewed with `failurePolicy: Fail`,
/// deletes (warnings only) with `Ignore`; aimed at
/// `https://127.0.0.1:PORT` + [`PATH`], trusting the CA in `ca`.
pub fn webhook_configuration(port: u16, ca: &Path) -> TestWebhookConfiguration {
    let run = format!(
        "adm-{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            ^ std::process::id()
    );
    TestWebhookConfiguration::create(
        &run,
        &format!("https://127.0.0.1:{port}{PATH}"),
        Some(&std::fs::read(ca).unwrap()),
        &[
            TestWebhook::reviewing(WEBHOOK_NAME),
            TestWebhook::on_delete(DELETE_WEBHOOK_NAME),
        ],
    )
}

/// Waits until the apiserver calls the webhook for `namespace` (it learns
/// of configurations and namespace labels through its own watches): a
/// server-side dry run of a hook that is its own fallback is refused by
/// idplane, and by nothing else.
pub fn wait_effective(namespace: &str) {
    let probe = "apiVersion: idplane.dev/v1alpha1\nkind: TelephonyHook\nmetadata:\n  name: admission-probe\nspec:\n  active: false\n  url: https://sms.example.com/probe\n  auth: {header: X-Key, secretRef: {name: probe, key: k}}\n  fallback: {hookRef: admission-probe}\n";
    wait_for(
        &format!("the webhook to review objects in {namespace}"),
        Duration::from_secs(60),
        || {
            let out = kubectl_stdin(
                &["create", "--dry-run=server", "-n", namespace, "-f", "-"],
                probe,
            );
            (!out.status.success() && text(&out.stderr).contains("its own fallback")).then_some(())
        },
    );
}

/// The webhook's server on a free port, without a cluster, serving the
/// certificate files in `dir` (looked at every 50 ms) and answering from
/// `snapshot`: its port, the sender of its snapshots, and the metrics it
/// counts reviews in.
pub async fn server_without_cluster(
    dir: &Path,
    snapshot: idplane::index::Snapshot,
) -> (
    u16,
    tokio::sync::watch::Sender<Arc<idplane::index::Snapshot>>,
    Arc<idplane::telemetry::Metrics>,
) {
    use idplane::controller::webhook::{cert_files, server, tls};
    let (slot, cert) = tls::cert_slot();
    let poll = cert_files::watch(dir.to_path_buf(), Duration::from_millis(50), slot).unwrap();
    tokio::spawn(poll);
    let (snapshots_tx, snapshots) = tokio::sync::watch::channel(Arc::new(snapshot));
    let metrics = Arc::new(idplane::telemetry::Metrics::new());
    let webhook = server::Webhook {
        snapshots,
        namespaces: Vec::new(),
        client: None,
        metrics: server::WebhookMetrics::register(&metrics),
    };
    let port = free_port();
    server::start(format!("127.0.0.1:{port}").parse().unwrap(), webhook, cert)
        .await
        .unwrap();
    (port, snapshots_tx, metrics)
}

/// An HTTPS client that trusts only the CA in `ca`.
pub fn client_trusting(ca: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}
