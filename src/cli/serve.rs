//! Assembling the long-running modes: `idplane operator` (in a cluster) and
//! `idplane run --manifests DIR` (from files). Both run the same index
//! writer, status writer and API; they differ in where objects come from
//! and where status goes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

use crate::api::starting::Swap;
use crate::api::{ApiState, Authenticator};
use crate::controller::lease::{self, LeaseSettings};
use crate::controller::module_fields::ModuleFields;
use crate::controller::status_writer::{self, StatusSink, WriterSettings, WrittenStatuses};
use crate::http::Routes;
use crate::index::{self, IndexWriter, Referenced, Snapshot};
use crate::runtime::{Context, Stop};
use crate::store::{Database, Store, StoreError};
use crate::telemetry::Metrics;
use crate::validate::Options;

/// First wait between two tries to reach PostgreSQL at start; it doubles
/// up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(15);

/// Opens the store. A PostgreSQL server that cannot be reached (or is
/// still starting) is tried again with backoff, each failure logged and
/// shown by `/readyz`, until it answers or a stop is requested (`None`):
/// no crash loop is needed for idplane to start once the database is up.
/// Everything else (a SQLite file that cannot be opened, a migration that
/// fails) ends the start with its error.
pub async fn connect_store(
    database: &Database,
    max_size: Option<u64>,
    stop: &Stop,
    swap: Option<&Swap>,
) -> anyhow::Result<Option<Store>> {
    let mut wait = FIRST_RETRY;
    loop {
        let error = match Store::connect(database, max_size).await {
            Ok(store) => return Ok(Some(store)),
            Err(StoreError::Open { source, .. })
            | Err(StoreError::Migrate(sqlx::migrate::MigrateError::Execute(source)))
                if crate::store::is_unavailable(&source) =>
            {
                source
            }
            Err(e) => return Err(e).context(format!("database {database}")),
        };
        let message = format!("cannot reach the database {database}: {error}; retrying");
        tracing::warn!(database = %database, error = %error, retry_in = ?wait, "cannot reach the database; /readyz answers 503 until it can");
        if let Some(swap) = swap {
            swap.waiting("store_unavailable", message);
        }
        tokio::select! {
            () = stop.requested.cancelled() => return Ok(None),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(MAX_RETRY);
    }
}

/// The parts both modes share.
pub async fn start_core(options: Options, store: Store, stop: Stop) -> anyhow::Result<Context> {
    let metrics = Arc::new(Metrics::new());
    let (changes, changes_rx) = mpsc::channel(4096);
    let (snap_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    let (ref_tx, referenced) = watch::channel(Referenced::default());
    tokio::spawn(index::snapshot_writer::run(
        IndexWriter::new(options),
        changes_rx,
        snap_tx,
        ref_tx,
        metrics.clone(),
    ));
    Ok(Context {
        changes,
        snapshots,
        referenced,
        metrics,
        module_fields: Arc::new(ModuleFields::default()),
        written: WrittenStatuses::default(),
        store,
        stop,
    })
}

/// Settings of the runtime modules, shared by `run` and `operator`.
#[derive(clap::Args, Clone, Debug)]
pub struct ModuleSettings {
    /// On SIGTERM or SIGINT: how long to finish what is under way (HTTP
    /// requests, SMTP attempts) before exiting. Claimed mail not yet tried
    /// goes back to the queue at once. Keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long = "shutdown-grace", default_value = "20s", value_parser = crate::resources::parse_duration)]
    pub shutdown_grace: Duration,
    /// Cap on the SQLite file, e.g. `900Mi` or `4Gi` (Ki, Mi, Gi, Ti or
    /// bytes; at least 1Mi). None by default: the disk is the limit. New
    /// mail is refused (503 `store_full`) when it would not fit in 9/10 of
    /// it with room kept for what unsent mail will still write; the last
    /// tenth is for status and the system log. Set it below the volume's
    /// size: the WAL file beside it grows by a few MiB.
    #[arg(long = "database-max-size", env = "IDPLANE_DATABASE_MAX_SIZE", value_parser = parse_size)]
    pub database_max_size: Option<u64>,
    /// File holding the password of a PostgreSQL `--database` (a mounted
    /// Secret); trailing newlines are dropped. `IDPLANE_DATABASE_PASSWORD`
    /// may carry it instead.
    #[arg(
        long = "database-password-file",
        env = "IDPLANE_DATABASE_PASSWORD_FILE"
    )]
    pub database_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub http: crate::api::server::HttpSettings,
    #[command(flatten)]
    pub telephony: crate::telephony::TelephonySettings,
    #[command(flatten)]
    pub email: crate::email::EmailSettings,
    /// Where hook calls and org SMTP connections may go.
    #[command(flatten)]
    pub egress: crate::egress::EgressSettings,
}

impl ModuleSettings {
    /// `--database` with its password settings.
    pub fn database(&self, text: &str) -> Result<Database, crate::store::DatabaseError> {
        let password = crate::store::database::Password {
            file: self.database_password_file.clone(),
            value: std::env::var("IDPLANE_DATABASE_PASSWORD")
                .ok()
                .filter(|v| !v.is_empty()),
        };
        Database::parse(text, &password)
    }
}

/// Parses a size as Kubernetes writes one (`512Mi`, `2Gi`), or bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ];
    let (number, unit) = units
        .iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n, *unit)))
        .unwrap_or((text, 1));
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{text:?} is not a size such as 900Mi, 4Gi or a number of bytes"))?;
    if bytes < crate::store::MIN_MAX_SIZE {
        return Err(format!("{text} is below the smallest database size, 1Mi"));
    }
    Ok(bytes)
}

/// Cancels `stop.requested` on the first SIGTERM or SIGINT; a second one
/// ends the process at once.
fn stop_on_signals(stop: &Stop) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let requested = stop.requested.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stop requested: finishing work under way (a second signal exits at once)");
        requested.cancel();
        // 128 + the signal's number, as a shell reports a process it killed.
        let code = tokio::select! {
            _ = term.recv() => 143,
            _ = int.recv() => 130,
        };
        tracing::warn!("second stop signal: exiting without waiting");
        std::process::exit(code);
    });
    Ok(())
}

/// After the grace period: how long flushes still get.
const LAST_FLUSH: Duration = Duration::from_secs(2);

/// Serves until a stop signal (or the server failing), then waits up to
/// `grace` for the server's open requests and the modules' tracked work.
async fn serve_until_stopped(
    stop: &Stop,
    server: tokio::task::JoinHandle<()>,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut server = server;
    // The server also ends once a stop is requested: that is no failure.
    let mut server_ended = false;
    tokio::select! {
        biased;
        () = stop.requested.cancelled() => {}
        joined = &mut server => {
            joined.context("API server task")?;
            if !stop.requested.is_cancelled() {
                anyhow::bail!("the API server stopped");
            }
            server_ended = true;
        }
    }
    stop.tracker.close();
    let drained = async {
        if !server_ended {
            let _ = server.await;
        }
        stop.served.cancel();
        stop.tracker.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            grace = ?grace,
            tasks = stop.tracker.len(),
            "shutdown grace ran out; mail still being sent is retried after its lease"
        );
        // A request still running kept `served` back: what the others left
        // queued (the telephony ledger) gets a short last chance.
        stop.served.cancel();
        let _ = tokio::time::timeout(LAST_FLUSH, stop.tracker.wait()).await;
    } else {
        tracing::info!("stopped cleanly");
    }
    Ok(())
}

/// Starts the runtime modules; returns their routes.
/// Starts the runtime modules; returns the routes each serves.
pub async fn start_modules(
    ctx: &Context,
    settings: &ModuleSettings,
) -> anyhow::Result<Vec<Routes>> {
    // One rule and one resolver for every connection configuration aims.
    let egress =
        Arc::new(crate::egress::Egress::new(&settings.egress).context("--egress-nameserver")?);
    let snapshots = ctx.snapshots.clone();
    let enrollment = crate::enrollment::routes(Arc::new(move |org: &str| {
        // An org known by its other objects but without a policy: every
        // user is uncovered, which the engine refuses (no_default_policy).
        let snapshot = snapshots.borrow().clone();
        let config = snapshot.org(org)?;
        Some(match &config.enrollment {
            Some(engine) => engine.clone(),
            None => Arc::new(crate::enrollment::EnrollmentEngine::new(&[])),
        })
    }));
    let telephony =
        crate::telephony::start(ctx.clone(), settings.telephony.clone(), egress.clone()).await?;
    let email = crate::email::start(ctx.clone(), settings.email.clone(), egress).await?;
    Ok(vec![enrollment, telephony, email])
}

/// The API being served: the starting answers first, the full router
/// once the modules have started.
pub struct Serving {
    pub server: tokio::task::JoinHandle<()>,
    pub swap: Swap,
}

/// Binds the API and serves it until a stop is requested: `full` when it
/// is built, else the starting answers (`/healthz` 200, `/readyz` 503 with
/// the reason) until [`serve_api`] swaps the full router in.
pub async fn bind_api(
    listen: SocketAddr,
    http: &crate::api::server::HttpSettings,
    stop: &Stop,
    full: Option<axum::Router>,
) -> anyhow::Result<Serving> {
    let (app, swap) = crate::api::starting::router(full);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    eprintln!("listening on {bound}");
    // On a stop: no new connections; requests under way are answered.
    let server = tokio::spawn(crate::api::server::serve(
        listener,
        app,
        http.clone(),
        stop.requested.clone(),
    ));
    Ok(Serving { server, swap })
}

/// Binds the API before the store when the store is a server that may be
/// down (PostgreSQL), so that `/healthz` and `/readyz` answer while it is
/// tried again; `None` for a SQLite file, whose API is bound once it is
/// built, as a client that sees the port open expects.
async fn bind_early(
    database: &Database,
    listen: SocketAddr,
    http: &crate::api::server::HttpSettings,
    stop: &Stop,
) -> anyhow::Result<Option<Serving>> {
    match database {
        Database::Postgres(_) => Ok(Some(bind_api(listen, http, stop, None).await?)),
        Database::Sqlite(_) | Database::Memory => Ok(None),
    }
}

/// The store, and the API already bound when the store is PostgreSQL
/// (see [`bind_early`]); `None` when a stop came first.
async fn open_store(
    database: &Database,
    listen: SocketAddr,
    modules: &ModuleSettings,
    stop: &Stop,
) -> anyhow::Result<Option<(Store, Option<Serving>)>> {
    let early = bind_early(database, listen, &modules.http, stop).await?;
    let swap = early.as_ref().map(|e| &e.swap);
    let store = connect_store(database, modules.database_max_size, stop, swap).await?;
    Ok(store.map(|store| (store, early)))
}

/// Serves the full API, with the modules' routes: on the listener bound
/// early, or on one bound now. `status_in_store`: see [`ApiState`].
async fn serve_api(
    ctx: &Context,
    auth: Authenticator,
    status_in_store: bool,
    modules: Vec<Routes>,
    early: Option<Serving>,
    listen: SocketAddr,
    http: &crate::api::server::HttpSettings,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let state = ApiState {
        ctx: ctx.clone(),
        auth,
        status_in_store,
    };
    let full = crate::api::router(state, modules);
    Ok(match early {
        Some(serving) => {
            serving.swap.serve(full);
            serving.server
        }
        None => bind_api(listen, http, &ctx.stop, Some(full)).await?.server,
    })
}

/// Settings of `idplane operator`.
pub struct OperatorSettings {
    pub namespaces: Vec<String>,
    pub listen: SocketAddr,
    pub database: Database,
    pub lease: LeaseSettings,
    pub writer: WriterSettings,
    pub modules: ModuleSettings,
    /// The webhook's certificate managed in a Secret (`--webhook-secret`).
    pub webhook_certificates: crate::controller::webhook::self_managed::SelfManagedSettings,
    pub webhook: crate::controller::webhook::WebhookSettings,
}

/// Starts the admission webhook when a certificate source is given (files
/// that cert-management writes, or `managed`: the Secret idplane keeps
/// itself): it answers from the index's snapshots, on its own port.
async fn start_webhook(
    ctx: &Context,
    client: &kube::Client,
    settings: &OperatorSettings,
    managed: Option<crate::controller::webhook::tls::CertWatch>,
) -> anyhow::Result<()> {
    use crate::controller::webhook::{cert_files, server, tls};
    let cert = match (&settings.webhook.webhook_cert_dir, managed) {
        (None, None) => return Ok(()),
        // Refused by the command line (the `operator` command's
        // `webhook_certificate_source` group).
        (Some(_), Some(_)) => unreachable!("--webhook-cert-dir with --webhook-secret"),
        (None, Some(cert)) => cert,
        (Some(dir), None) => {
            let (slot, cert) = tls::cert_slot();
            let poll = cert_files::watch(dir.clone(), settings.webhook.webhook_cert_poll, slot)
                .context("--webhook-cert-dir")?;
            tokio::spawn(poll);
            cert
        }
    };
    let webhook = server::Webhook {
        snapshots: ctx.snapshots.clone(),
        namespaces: settings.namespaces.clone(),
        client: Some(client.clone()),
        metrics: server::WebhookMetrics::register(&ctx.metrics),
    };
    server::start(settings.webhook.webhook_listen, webhook, cert).await?;
    Ok(())
}

/// Runs the operator until stopped (SIGTERM, SIGINT).
pub async fn operator(settings: OperatorSettings) -> anyhow::Result<()> {
    // First: in a container idplane is PID 1, and the kernel drops a
    // SIGTERM to PID 1 that has no handler. A stop during start-up takes
    // effect once the API is up.
    let stop = Stop::default();
    stop_on_signals(&stop)?;
    let self_managed = settings.webhook_certificates.resolve()?;
    let config = kube::Config::infer()
        .await
        .context("cannot reach a cluster (in-cluster config or KUBECONFIG)")?;
    let client = kube::Client::try_from(config.clone())
        .context("cannot reach a cluster (in-cluster config or KUBECONFIG)")?;
    // The webhook's certificate from a Secret idplane manages itself: every
    // replica keeps it current and serves it from the slot.
    let managed_certificate = self_managed.map(|managed| {
        let (slot, certificate) = crate::controller::webhook::tls::cert_slot();
        tokio::spawn(crate::controller::webhook::self_managed::run(
            client.clone(),
            managed,
            slot,
            stop.requested.clone(),
        ));
        certificate
    });
    let http = &settings.modules.http;
    let Some((store, early)) = open_store(
        &settings.database,
        settings.listen,
        &settings.modules,
        &stop,
    )
    .await?
    else {
        return Ok(());
    };
    let ctx = start_core(Options::default(), store, stop).await?;
    crate::source::kube::watch_resources(
        client.clone(),
        &settings.namespaces,
        ctx.changes.clone(),
        ctx.metrics.clone(),
    );
    tokio::spawn(crate::source::kube::watch_secrets(
        client.clone(),
        ctx.referenced.clone(),
        ctx.changes.clone(),
        ctx.metrics.clone(),
    ));
    let (leader_tx, leader_rx) = watch::channel(false);
    ctx.stop.tracker.spawn(lease::run(
        client.clone(),
        settings.lease.clone(),
        leader_tx,
        ctx.stop.requested.clone(),
    ));
    // The status writer's own client, without kube's retries: when the
    // apiserver sheds load the writer pauses every write, not one request.
    let status_client = {
        let mut config = config;
        config.default_retry = false;
        kube::Client::try_from(config).context("the status writer's client")?
    };
    tokio::spawn(status_writer::run(
        ctx.snapshots.clone(),
        ctx.module_fields.clone(),
        leader_rx,
        StatusSink::kube(status_client, &settings.lease.identity),
        settings.writer.clone(),
        ctx.written.clone(),
        ctx.metrics.clone(),
    ));
    start_webhook(&ctx, &client, &settings, managed_certificate).await?;
    let routes = start_modules(&ctx, &settings.modules).await?;
    let auth = Authenticator::kube(client);
    let server = serve_api(&ctx, auth, false, routes, early, settings.listen, http).await?;
    serve_until_stopped(&ctx.stop, server, settings.modules.shutdown_grace).await
}

/// Settings of `idplane run`.
pub struct RunSettings {
    pub manifests: PathBuf,
    pub options: Options,
    pub listen: SocketAddr,
    pub database: Database,
    pub tokens: Option<PathBuf>,
    pub poll: Duration,
    pub modules: ModuleSettings,
}

/// Loads the token file, or makes a development token bound to every org and
/// writes it (mode 0600) next to the SQLite file (in `.idplane/` with
/// PostgreSQL); the token itself is never logged.
fn standalone_auth(tokens: Option<&Path>, database: &Database) -> anyhow::Result<Authenticator> {
    if let Some(path) = tokens {
        return Ok(Authenticator::Tokens(crate::api::auth::TokenFile::load(
            path,
        )?));
    }
    let dir = match database {
        Database::Sqlite(path) => path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
        Database::Memory => Path::new("."),
        Database::Postgres(_) => Path::new(".idplane"),
    };
    std::fs::create_dir_all(dir)?;
    let path = dir.join("dev-token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 16 => t.trim().to_string(),
        _ => {
            use rand::Rng;
            let t: String = rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(40)
                .map(char::from)
                .collect();
            std::fs::write(&path, &t)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            t
        }
    };
    eprintln!(
        "no --tokens file: API token for every org written to {}",
        path.display()
    );
    Ok(Authenticator::Tokens(crate::api::auth::TokenFile {
        tokens: vec![crate::api::auth::TokenEntry {
            name: "dev".into(),
            token,
            orgs: vec!["*".into()],
        }],
    }))
}

/// Runs from a directory of manifests until stopped (SIGTERM, SIGINT).
pub async fn run(settings: RunSettings) -> anyhow::Result<()> {
    let stop = Stop::default();
    stop_on_signals(&stop)?;
    let auth = standalone_auth(settings.tokens.as_deref(), &settings.database)?;
    let http = &settings.modules.http;
    let Some((store, early)) = open_store(
        &settings.database,
        settings.listen,
        &settings.modules,
        &stop,
    )
    .await?
    else {
        return Ok(());
    };
    let ctx = start_core(settings.options.clone(), store, stop).await?;
    status_writer::preload(&ctx.store, &ctx.written).await?;
    // What the directory held at its last read, for `idplane diff --server`.
    let (loaded, loaded_rx) = watch::channel(Arc::new(Vec::new()));
    tokio::spawn(crate::source::directory::watch_directory(
        settings.manifests.clone(),
        settings.options.clone(),
        ctx.changes.clone(),
        settings.poll,
        loaded,
    ));
    // One writer of status: the only process on a SQLite file; among the
    // processes sharing a PostgreSQL database, the one holding its lock.
    let (leader_tx, leader_rx) = watch::channel(true);
    if let crate::store::Backend::Postgres(pool) = ctx.store.backend() {
        leader_tx.send_replace(false);
        tokio::spawn(crate::store::leader::run(
            pool.clone(),
            leader_tx.clone(),
            ctx.stop.requested.clone(),
        ));
    }
    tokio::spawn(status_writer::run(
        ctx.snapshots.clone(),
        ctx.module_fields.clone(),
        leader_rx,
        StatusSink::Store(ctx.store.clone()),
        WriterSettings::default(),
        ctx.written.clone(),
        ctx.metrics.clone(),
    ));
    let mut routes = start_modules(&ctx, &settings.modules).await?;
    routes.push(crate::api::objects::routes(
        loaded_rx,
        settings.options.default_namespace.clone(),
    ));
    let shared = ctx.store.is_shared();
    let server = serve_api(&ctx, auth, shared, routes, early, settings.listen, http).await?;
    // Keep the leader channel's sender alive for the life of the process.
    let _keep = leader_tx;
    serve_until_stopped(&ctx.stop, server, settings.modules.shutdown_grace).await
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_as_kubernetes_writes_them() {
        assert_eq!(parse_size("960Mi"), Ok(960 << 20));
        assert_eq!(parse_size("4Gi"), Ok(4 << 30));
        assert_eq!(parse_size("2048Ki"), Ok(2 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(
            parse_size("512Ki"),
            Err("512Ki is below the smallest database size, 1Mi".into())
        );
        assert_eq!(
            parse_size("1GB"),
            Err("\"1GB\" is not a size such as 900Mi, 4Gi or a number of bytes".into())
        );
        assert!(parse_size("99999999999Ti").is_err(), "overflow");
    }

    /// `/openapi.json` as `api::router` builds it from the modules' operations.
    #[test]
    fn every_operation_describes_its_answers() {
        let mut operations = crate::api::openapi::operations();
        operations.extend(crate::enrollment::operations());
        operations.extend(crate::telephony::operations());
        operations.extend(crate::email::operations());
        operations.extend(crate::api::objects::operations());
        let doc = crate::api::openapi::document(operations);
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_string()), "{id} twice");
                let responses = op["responses"].as_object().unwrap();
                let ok: Vec<&String> = responses.keys().filter(|s| s.starts_with('2')).collect();
                assert_eq!(ok.len(), 1, "{method} {path}: {ok:?}");
                let schema = &responses[ok[0].as_str()]["content"]["application/json"]["schema"];
                assert_ne!(
                    schema,
                    &serde_json::json!({"type": "object"}),
                    "{method} {path}"
                );
                for status in ["400", "401", "403", "404", "413", "500", "503"] {
                    let codes = &responses[status]["content"]["application/json"]["schema"]["properties"]
                        ["code"]["enum"];
                    assert!(
                        codes.as_array().is_some_and(|c| !c.is_empty()),
                        "{method} {path} {status}"
                    );
                }
                assert_eq!(
                    op["requestBody"].is_object(),
                    responses.contains_key("415"),
                    "{method} {path}"
                );
            }
        }
    }
}
