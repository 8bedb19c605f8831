//! `idplane test-email -n ORG --from ADDR --to ADDR`: sends one message
//! synchronously through the org's email provider and prints the SMTP
//! outcome, like Okta's "Send test email".
//!
//! Two ways to find the provider:
//! - `--server URL --token T` (or IDPLANE_SERVER / IDPLANE_TOKEN): asks a
//!   running idplane (`POST /v1/orgs/{org}/email-provider/test`), which
//!   also writes the result to the provider's `status.lastTest`;
//! - `--manifests DIR`: reads the org's EmailProvider and its Secret from
//!   files and connects from this machine (no status is written).
//!
//! With `--manifests` the connection goes through the same egress rule as
//! `idplane run` (the `--egress-*` flags); a running idplane applies its
//! own.
//!
//! Exit status: 0 when the server accepted the message, 1 when it did not,
//! 2 on any other error (bad flags, unreadable files, no provider, an
//! address the egress rule refuses).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::email::message;
use crate::email::routes::send_test;
use crate::email::smtp::{SmtpClient, SmtpOptions, Step, load_roots};
use crate::email::worker::provider_route;
use crate::resources::Kind;
use crate::resources::parse_duration;
use crate::validate::Options;

/// Arguments of `idplane test-email`.
#[derive(clap::Args, Debug, Clone)]
pub struct TestEmailArgs {
    /// The org (namespace) whose provider to test.
    #[arg(short = 'n', long = "namespace")]
    pub namespace: String,
    /// Sender address.
    #[arg(long)]
    pub from: String,
    /// Recipient address.
    #[arg(long)]
    pub to: String,
    /// URL of a running idplane (for example http://127.0.0.1:8080).
    #[arg(long, env = "IDPLANE_SERVER", conflicts_with = "manifests")]
    pub server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "IDPLANE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Directory (or file) of manifests and Secrets holding the org's EmailProvider.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// With --manifests: PEM file of certificate authorities trusted besides the public ones.
    #[arg(long = "smtp-ca-file")]
    pub smtp_ca_file: Option<PathBuf>,
    /// With --manifests: each SMTP network step at most.
    #[arg(long = "smtp-timeout", default_value = "30s", value_parser = parse_duration)]
    pub smtp_timeout: Duration,
    /// With --manifests: where the connection may go.
    #[command(flatten)]
    pub egress: crate::egress::EgressSettings,
}

/// Runs `idplane test-email`.
pub async fn run(args: TestEmailArgs) -> anyhow::Result<ExitCode> {
    message::parse_mailbox(&args.from).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    message::parse_mailbox(&args.to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    match (&args.server, &args.manifests) {
        (Some(server), _) => through_server(&args, server).await,
        (None, Some(dir)) => from_manifests(&args, dir).await,
        (None, None) => bail!("give --server URL (a running idplane) or --manifests DIR"),
    }
}

async fn through_server(args: &TestEmailArgs, server: &str) -> anyhow::Result<ExitCode> {
    let url = format!(
        "{}/v1/orgs/{}/email-provider/test",
        server.trim_end_matches('/'),
        args.namespace
    );
    let mut request = reqwest::Client::new()
        .post(&url)
        .timeout(Duration::from_secs(300))
        .json(&serde_json::json!({"from": args.from, "to": args.to}));
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("{url} answered {status} without JSON"))?;
    let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
    if status.is_success() {
        println!("SUCCESS via {}: {}", field("provider"), field("reply"));
        return Ok(ExitCode::SUCCESS);
    }
    if field("code") == "smtp_failed" {
        println!(
            "FAILURE via {} ({}): {}",
            field("provider"),
            field("step"),
            field("reply")
        );
        return Ok(ExitCode::from(1));
    }
    bail!(
        "{url} answered {status}: {}: {}",
        field("code"),
        field("message")
    )
}

async fn from_manifests(args: &TestEmailArgs, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let options = Options {
        default_namespace: args.namespace.clone(),
        strict: false,
        ..Options::default()
    };
    let (_, report) = crate::cli::validate::load(&[dir.to_path_buf()], &options)?;
    let secrets = crate::index::secrets_from(&report.checked);
    let (config, states) = crate::index::build(&report, &secrets);
    let Some(provider) = config
        .get(&args.namespace)
        .and_then(|o| o.email_provider.as_ref())
    else {
        let why = states
            .iter()
            .find(|(k, _)| k.is(Kind::EmailProvider) && k.namespace == args.namespace)
            .map(|(k, s)| format!(": {k}: {}", s.message))
            .unwrap_or_default();
        bail!(
            "org {} has no usable EmailProvider in {}{why}",
            args.namespace,
            dir.display()
        );
    };
    let extra_roots = match &args.smtp_ca_file {
        Some(path) => load_roots(path).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let smtp = SmtpClient::new(SmtpOptions {
        timeout: args.smtp_timeout,
        pool_size: 1,
        extra_roots,
        egress: std::sync::Arc::new(crate::egress::Egress::new(&args.egress)?),
    });
    let route = provider_route(provider);
    // Not the server's answer: exit 2, as for the other configuration errors.
    if let Some(why) = &route.blocked {
        bail!("{why}");
    }
    match send_test(&smtp, &route, &args.namespace, &args.from, &args.to).await {
        Ok(reply) => {
            println!("SUCCESS via {}: {reply}", route.via.label());
            Ok(ExitCode::SUCCESS)
        }
        // No server was asked: exit 2, as for the missing Secret.
        Err(e) if e.step == Step::Egress => bail!("{}", e.message),
        Err(e) => {
            println!(
                "FAILURE via {} ({}): {}",
                route.via.label(),
                e.step.reason(),
                e.message
            );
            Ok(ExitCode::from(1))
        }
    }
}
