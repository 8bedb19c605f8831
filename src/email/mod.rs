//! The email runtime module: identity services hand idplane an email
//! (`POST /v1/orgs/{org}/emails`); idplane commits it to a durable queue,
//! delivers it through the org's EmailProvider (or the installation's
//! default provider) with growing retry delays, and records a SUCCESS or
//! FAILURE delivery event. It also verifies providers, sends test emails and
//! validates brand sender domains in DNS.
//!
//! Submodules: `message` (request checks, MIME), `retry` (the retry rule),
//! `queue` (the durable queue; all SQL), `worker` (dispatch and attempts),
//! `smtp` (lettre), `verify` (the `Verified` condition), `dns` (brand
//! domains), `metrics` (Prometheus), `status_metrics` (each provider's
//! `status.metrics`), `api` (routes). Not here: the index (configuration) and the
//! status writer, which this module feeds through the status module_fields.

pub mod dns;
pub mod message;
pub mod metrics;
mod openapi;
pub use openapi::operations;
pub mod queue;
pub mod retry;
pub mod routes;
pub mod smtp;
pub mod status_metrics;
pub mod verify;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::http::Routes;
use crate::resources::TlsMode;
use crate::resources::{Kind, ObjectKey};
use crate::runtime::{Context, StartError};

use crate::resources::parse_duration;

/// A TLS mode flag: `starttls`, `implicit` or `none`.
pub fn parse_tls(text: &str) -> Result<TlsMode, String> {
    match text {
        "starttls" => Ok(TlsMode::Starttls),
        "implicit" => Ok(TlsMode::Implicit),
        "none" => Ok(TlsMode::None),
        _ => Err(format!("{text:?} is not starttls, implicit or none")),
    }
}

/// Command-line settings of the email module (flattened into `run` and `operator`).
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Email")]
pub struct EmailSettings {
    /// Default provider: SMTP host for orgs without an enabled EmailProvider.
    /// Without it (and without an EmailProvider) an org's emails are refused
    /// with 503.
    #[arg(long = "smtp-host", env = "IDPLANE_SMTP_HOST")]
    pub smtp_host: Option<String>,
    /// Default provider: port.
    #[arg(long = "smtp-port", env = "IDPLANE_SMTP_PORT", default_value_t = 587)]
    pub smtp_port: u16,
    /// Default provider: starttls, implicit or none (none needs --smtp-allow-insecure).
    #[arg(long = "smtp-tls", env = "IDPLANE_SMTP_TLS", default_value = "starttls", value_parser = parse_tls)]
    pub smtp_tls: TlsMode,
    /// Default provider: accept --smtp-tls none (test servers on loopback).
    #[arg(long = "smtp-allow-insecure")]
    pub smtp_allow_insecure: bool,
    /// Default provider: AUTH username (no AUTH without it).
    #[arg(long = "smtp-username", env = "IDPLANE_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// Default provider: file holding the password (else the environment
    /// variable IDPLANE_SMTP_PASSWORD).
    #[arg(long = "smtp-password-file", env = "IDPLANE_SMTP_PASSWORD_FILE")]
    pub smtp_password_file: Option<PathBuf>,
    /// Default provider: attempts in all, the first included.
    #[arg(long = "smtp-max-attempts", default_value_t = 5)]
    pub smtp_max_attempts: u32,
    /// Default provider: wait before the first retry.
    #[arg(long = "smtp-initial-delay", default_value = "1m", value_parser = parse_duration)]
    pub smtp_initial_delay: Duration,
    /// Default provider: growth of the wait from one retry to the next.
    #[arg(long = "smtp-multiplier", default_value_t = 4)]
    pub smtp_multiplier: u32,
    /// Default provider: longest wait between attempts.
    #[arg(long = "smtp-max-delay", default_value = "1h", value_parser = parse_duration)]
    pub smtp_max_delay: Duration,
    /// Sender of mail without a verified brand domain, e.g. "Acme <noreply@acme.example>".
    #[arg(long = "email-default-sender", env = "IDPLANE_EMAIL_DEFAULT_SENDER")]
    pub email_default_sender: Option<String>,
    /// Each SMTP network step (connect, command, reply) at most.
    #[arg(long = "smtp-timeout", default_value = "30s", value_parser = parse_duration)]
    pub smtp_timeout: Duration,
    /// Pooled connections kept per SMTP server.
    #[arg(long = "smtp-pool-size", default_value_t = 4)]
    pub smtp_pool_size: u32,
    /// PEM file of certificate authorities trusted for SMTP besides the public ones.
    #[arg(long = "smtp-ca-file", env = "IDPLANE_SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,
    /// Delivery attempts in flight at once.
    #[arg(long = "email-concurrency", default_value_t = 16)]
    pub email_concurrency: usize,
    /// How long an attempt holds a message: a message whose process died
    /// while sending is taken up again after this (at-least-once).
    #[arg(long = "email-lease", default_value = "2m", value_parser = parse_duration)]
    pub email_lease: Duration,
    /// Sent and failed messages are deleted after this.
    #[arg(long = "email-retention", default_value = "168h", value_parser = parse_duration)]
    pub email_retention: Duration,
    /// DNS servers (IP:PORT, comma-separated) for brand-domain checks; the
    /// system's resolver when empty.
    #[arg(
        long = "dns-nameserver",
        value_delimiter = ',',
        env = "IDPLANE_DNS_NAMESERVER"
    )]
    pub dns_nameservers: Vec<SocketAddr>,
    /// Between two DNS lookups of a domain not yet verified.
    #[arg(long = "dns-poll-interval", default_value = "1m", value_parser = parse_duration)]
    pub dns_poll_interval: Duration,
    /// Between two DNS lookups of a verified domain.
    #[arg(long = "dns-recheck-interval", default_value = "24h", value_parser = parse_duration)]
    pub dns_recheck_interval: Duration,
    /// A record still missing after this long makes the domain ERROR (polling goes on).
    #[arg(long = "dns-poll-timeout", default_value = "72h", value_parser = parse_duration)]
    pub dns_poll_timeout: Duration,
}

fn start_error(message: impl Into<String>) -> StartError {
    StartError {
        module: "email",
        message: message.into(),
    }
}

/// Reads the default provider's settings; `None` without `--smtp-host`.
fn default_provider(s: &EmailSettings) -> Result<Option<worker::DefaultProvider>, StartError> {
    let Some(host) = s.smtp_host.clone().filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    if s.smtp_tls == TlsMode::None && !s.smtp_allow_insecure {
        return Err(start_error(
            "--smtp-tls none sends mail (and any password) in clear text; add --smtp-allow-insecure",
        ));
    }
    let password = match (
        &s.smtp_password_file,
        std::env::var("IDPLANE_SMTP_PASSWORD"),
    ) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| start_error(format!("cannot read {}: {e}", path.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
        (None, Ok(p)) => Some(p),
        (None, Err(_)) => None,
    };
    let credentials = match (&s.smtp_username, password) {
        (Some(user), Some(pw)) => Some((user.clone(), crate::secret::Secret::new(&pw))),
        (Some(_), None) => {
            return Err(start_error(
                "--smtp-username needs a password: --smtp-password-file or IDPLANE_SMTP_PASSWORD",
            ));
        }
        (None, _) => None,
    };
    if s.smtp_initial_delay > s.smtp_max_delay {
        return Err(start_error(
            "--smtp-initial-delay may not be longer than --smtp-max-delay",
        ));
    }
    Ok(Some(worker::DefaultProvider {
        // The installation's own relay: aimed by whoever sets idplane's
        // flags (and its egress rule), never by an org.
        endpoint: smtp::Endpoint {
            host,
            port: s.smtp_port,
            tls: s.smtp_tls,
            credentials,
            trusted: true,
        },
        policy: retry::RetryPolicy {
            max_attempts: s.smtp_max_attempts.max(1),
            initial_delay: s.smtp_initial_delay,
            multiplier: s.smtp_multiplier.max(1),
            max_delay: s.smtp_max_delay,
        },
    }))
}

/// What the routes reach.
pub struct EmailService {
    /// The newest configuration, read per request.
    pub snapshots: tokio::sync::watch::Receiver<Arc<crate::index::Snapshot>>,
    pub queue: queue::Queue,
    pub smtp: Arc<smtp::SmtpClient>,
    pub default: Option<worker::DefaultProvider>,
    pub default_sender: Option<String>,
    pub stats: Arc<status_metrics::DeliveryStats>,
    pub domains: Arc<dns::DomainBook>,
    pub module_fields: Arc<crate::controller::module_fields::ModuleFields>,
    pub wake: Arc<Notify>,
}

/// Starts the module's background work and returns its routes. Every
/// connection to an org's SMTP server goes through `egress`.
pub async fn start(
    ctx: Context,
    settings: EmailSettings,
    egress: Arc<crate::egress::Egress>,
) -> Result<Routes, StartError> {
    let default = default_provider(&settings)?;
    if let Some(sender) = &settings.email_default_sender {
        message::parse_mailbox(sender)
            .map_err(|e| start_error(format!("--email-default-sender: {e}")))?;
    }
    if settings.email_lease < Duration::from_secs(1) {
        return Err(start_error("--email-lease must be at least 1s"));
    }
    let extra_roots = match &settings.smtp_ca_file {
        Some(path) => smtp::load_roots(path).map_err(start_error)?,
        None => Vec::new(),
    };
    let smtp = Arc::new(smtp::SmtpClient::new(smtp::SmtpOptions {
        timeout: settings.smtp_timeout,
        pool_size: settings.smtp_pool_size,
        extra_roots,
        egress,
    }));
    let resolver =
        dns::resolver(&settings.dns_nameservers, Duration::from_secs(5)).map_err(start_error)?;

    let (queue, committer) =
        queue::Queue::new(ctx.store.backend().clone(), ctx.store.accept_limit());
    // The committer runs on its own thread: on the shared runtime each of
    // a batch's awaits waited behind request handlers, and every caller of
    // the batch with it.
    std::thread::Builder::new()
        .name("email-committer".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(committer.run()),
                Err(e) => tracing::error!(error = %e, "cannot start the email committer"),
            }
        })
        .map_err(|e| start_error(format!("cannot start the email committer: {e}")))?;
    let pending = queue
        .pending_by_org()
        .await
        .map_err(|e| start_error(e.to_string()))?;
    let totals = queue
        .provider_totals()
        .await
        .map_err(|e| start_error(e.to_string()))?;
    let stats = Arc::new(status_metrics::DeliveryStats::new(
        &ctx.metrics,
        pending,
        totals,
    ));
    // Each provider's last test email, as its status had it before.
    restore_last_tests(&queue, &ctx.module_fields)
        .await
        .map_err(|e| start_error(e.to_string()))?;
    tokio::spawn(
        stats
            .clone()
            .publish(ctx.snapshots.clone(), ctx.module_fields.clone()),
    );
    if queue.is_shared() {
        tokio::spawn(reload_shared(
            queue.clone(),
            stats.clone(),
            ctx.module_fields.clone(),
        ));
    }

    let wake = Arc::new(Notify::new());
    let deliverer = Arc::new(worker::Deliverer {
        queue: queue.clone(),
        smtp: smtp.clone(),
        snapshots: ctx.snapshots.clone(),
        default: default.clone(),
        stats: stats.clone(),
        wake: wake.clone(),
        concurrency: settings.email_concurrency.max(1),
        lease: settings.email_lease,
        stop: ctx.stop.clone(),
    });
    ctx.stop.tracker.spawn(deliverer.run());
    tokio::spawn(verify::run(
        ctx.snapshots.clone(),
        smtp.clone(),
        default.clone(),
        ctx.module_fields.clone(),
        queue.clone(),
        stats.clone(),
    ));
    let domains = Arc::new(dns::DomainBook::default());
    let watch = dns::DomainWatch {
        queue: queue.clone(),
        module_fields: ctx.module_fields.clone(),
        book: domains.clone(),
        resolver: Arc::new(resolver),
        timing: dns::DnsTiming {
            poll_interval: settings.dns_poll_interval,
            recheck_interval: settings.dns_recheck_interval,
            poll_timeout: settings.dns_poll_timeout,
        },
    };
    tokio::spawn(watch.run(ctx.snapshots.clone()));
    tokio::spawn(purge(queue.clone(), settings.email_retention));

    let service = Arc::new(EmailService {
        snapshots: ctx.snapshots.clone(),
        queue,
        smtp,
        default,
        default_sender: settings.email_default_sender.clone(),
        stats,
        domains,
        module_fields: ctx.module_fields.clone(),
        wake,
    });
    Ok(routes::routes(service))
}

/// How often a replica on a shared store reloads the delivery numbers and
/// the last test emails of every replica.
const SHARED_RELOAD: Duration = Duration::from_secs(5);

/// Sets each provider's `status.lastTest` from its latest test email in
/// the store.
async fn restore_last_tests(
    queue: &queue::Queue,
    module_fields: &crate::controller::module_fields::ModuleFields,
) -> Result<(), queue::QueueError> {
    for (org, name, log) in queue.last_tests().await? {
        let key = ObjectKey::new(Kind::EmailProvider, org, name);
        module_fields.set(&key, "lastTest", routes::last_test_status(&log));
    }
    Ok(())
}

/// On a store that other replicas share: every [`SHARED_RELOAD`], the
/// delivery numbers and the last test emails as the store holds them, so
/// that the status the Lease holder writes counts every replica's mail.
async fn reload_shared(
    queue: queue::Queue,
    stats: Arc<status_metrics::DeliveryStats>,
    module_fields: Arc<crate::controller::module_fields::ModuleFields>,
) {
    loop {
        tokio::time::sleep(SHARED_RELOAD).await;
        let numbers = async {
            Ok::<_, queue::QueueError>((
                queue.pending_by_org().await?,
                queue.provider_totals().await?,
            ))
        };
        let reloaded = match numbers.await {
            Ok((pending, totals)) => {
                stats.reload(pending, totals);
                restore_last_tests(&queue, &module_fields).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = reloaded {
            tracing::warn!(error = %e, "cannot reload the delivery numbers of every replica; status keeps the last ones");
        }
    }
}

/// Deletes finished messages past the retention, hourly.
async fn purge(queue: queue::Queue, retention: Duration) {
    let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        let before = worker::now_millis().saturating_sub(retention);
        match queue.purge_finished(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "purged finished emails"),
            Err(e) => tracing::warn!(error = %e, "cannot purge finished emails"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        email: EmailSettings,
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        // The defaults are the flags' (written once, in the attributes).
        let parsed = Cli::try_parse_from(["x"]).unwrap().email;
        assert_eq!(parsed.smtp_port, 587);
        assert_eq!(parsed.email_lease, Duration::from_secs(120));
        let cli = Cli::try_parse_from([
            "x",
            "--smtp-host",
            "127.0.0.1",
            "--smtp-tls",
            "none",
            "--smtp-allow-insecure",
            "--smtp-initial-delay",
            "200ms",
            "--dns-nameserver",
            "127.0.0.1:5353,127.0.0.2:53",
        ])
        .unwrap()
        .email;
        assert_eq!(cli.smtp_initial_delay, Duration::from_millis(200));
        assert_eq!(cli.dns_nameservers.len(), 2);
        assert!(default_provider(&cli).unwrap().is_some());
        assert!(Cli::try_parse_from(["x", "--smtp-tls", "tls"]).is_err());
        let mut insecure = cli.clone();
        insecure.smtp_allow_insecure = false;
        assert!(
            default_provider(&insecure)
                .unwrap_err()
                .message
                .contains("--smtp-allow-insecure")
        );
    }
}
