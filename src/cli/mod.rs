//! The `idplane` command line. Parsing and printing live here; every
//! decision is made by the library modules.

pub mod diff;
pub mod explain;
pub mod preview;
pub mod serve;
pub mod test_email;
pub mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// idplane: a declarative delivery-and-enrollment plane for identity platforms.
#[derive(Parser, Debug)]
#[command(name = "idplane", version, about)]
pub struct Cli {
    /// Log lines as text, or as JSON objects with the spans they ran in
    /// (for a log collector). The level and targets come from RUST_LOG.
    #[arg(long, global = true, value_enum, env = "IDPLANE_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written (to stderr).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Output formats of `validate`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

// Parsed once per process: the operator's many flags make its variant
// large, and boxing them would only add noise to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the four CRDs as one multi-document YAML stream.
    Crds {
        /// Write one file per CRD into this directory instead (as committed in crds/).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Print the CRD reference in Markdown instead (docs/crd-reference.md).
        #[arg(long, conflicts_with = "out_dir")]
        reference: bool,
    },
    /// Validate manifests offline: schema, CEL rules and the rules that span
    /// objects. Exit status 1 when there is any error.
    Validate {
        /// Files, directories (recursive: .yaml, .yml, .json) or - for stdin.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Objects of idplane's group with a kind it does not serve are errors.
        #[arg(long)]
        strict: bool,
        /// Namespace of objects that name none.
        #[arg(short = 'n', long = "namespace", default_value = "default")]
        namespace: String,
        /// text (FILE:LINE:COL: ...) or json.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Show what applying manifests would change: a unified diff per object
    /// against the cluster (or a running `idplane run`). Exit status 0 when
    /// nothing differs, 1 when something does, 2 on errors.
    Diff(diff::DiffArgs),
    /// Run without a cluster from a directory of manifests and Secrets: the
    /// same validator, index, status and runtime API as the operator,
    /// reloading when a file changes.
    Run {
        /// Directory (or file) of manifests and Secrets.
        #[arg(long)]
        manifests: PathBuf,
        /// Namespace (org) of objects that name none.
        #[arg(short = 'n', long = "namespace", default_value = "default")]
        namespace: String,
        /// Load, validate, print each org's configuration and exit (1 on errors).
        #[arg(long)]
        check: bool,
        /// Address of the runtime API.
        #[arg(long, default_value = "127.0.0.1:8080", env = "IDPLANE_LISTEN")]
        listen: std::net::SocketAddr,
        /// Where runtime state lives: a SQLite file, `:memory:` for none, or
        /// a PostgreSQL URL (`postgres://USER@HOST:PORT/DB`) shared by
        /// several processes; its password from --database-password-file or
        /// IDPLANE_DATABASE_PASSWORD.
        // `hide_env_values`: the URL may hold the password, and `--help`
        // would print the variable's value.
        #[arg(
            long,
            default_value = ".idplane/idplane.db",
            env = "IDPLANE_DATABASE",
            hide_env_values = true
        )]
        database: String,
        /// Token file: `tokens: [{name, token, orgs: [org|*]}]`. Without it a
        /// development token for every org is written next to the database.
        #[arg(long, env = "IDPLANE_TOKENS")]
        tokens: Option<PathBuf>,
        /// How often to look for changed files, in milliseconds.
        #[arg(long, default_value_t = 500)]
        poll_millis: u64,
        #[command(flatten)]
        modules: serve::ModuleSettings,
    },
    /// Preview a hook: build the request it would get, send it, and show the answer and how idplane judges it.
    Preview(preview::PreviewArgs),
    /// Send one test email through the org's provider and print the SMTP outcome.
    TestEmail(test_email::TestEmailArgs),
    /// Explain a runtime decision: which policy and rule apply, and why.
    Explain {
        #[command(subcommand)]
        what: explain::ExplainCommand,
    },
    /// Run the operator in a cluster (in-cluster config or KUBECONFIG).
    // One source of the webhook's certificate: cert-manager's files or the
    // self-managed Secret, refused together before anything starts.
    #[command(group(clap::ArgGroup::new("webhook_certificate_source")
        .args(["webhook_cert_dir", "secret"])
        .multiple(false)))]
    Operator {
        /// Namespaces (orgs) to watch, comma-separated; all when empty.
        #[arg(long, value_delimiter = ',', env = "IDPLANE_NAMESPACES")]
        namespaces: Vec<String>,
        /// Address of the runtime API.
        #[arg(long, default_value = "0.0.0.0:8080", env = "IDPLANE_LISTEN")]
        listen: std::net::SocketAddr,
        /// Where runtime state lives: a SQLite file (one replica), or a
        /// PostgreSQL URL (`postgres://USER@HOST:PORT/DB`) that every
        /// replica shares; its password from --database-password-file or
        /// IDPLANE_DATABASE_PASSWORD.
        #[arg(
            long,
            default_value = "/var/lib/idplane/idplane.db",
            env = "IDPLANE_DATABASE",
            hide_env_values = true
        )]
        database: String,
        /// Namespace of the status-writer Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Name of the status-writer Lease.
        #[arg(long, default_value = "idplane-status-writer")]
        lease_name: String,
        /// This replica's identity in the Lease (default: POD_NAME or host-pid).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Lease duration in seconds: a dead leader is replaced within it.
        #[arg(long, default_value_t = 15)]
        lease_seconds: u64,
        /// Status writes per second, sustained: the refill of a token
        /// bucket that caps a write storm (two controllers fighting over a
        /// status) without slowing a large apply (see --status-write-burst).
        #[arg(long, default_value_t = crate::controller::status_writer::WriterSettings::DEFAULT_WRITES_PER_SECOND)]
        status_writes_per_second: u32,
        /// Status writes allowed at once above the sustained rate: the
        /// bucket's size, full at start and after a quiet time.
        #[arg(long, default_value_t = crate::controller::status_writer::WriterSettings::DEFAULT_BURST)]
        status_write_burst: u32,
        /// Status writes in flight at once. Whatever the rate, idplane never
        /// has more requests open for status; when the apiserver sheds load
        /// (429 or Retry-After, API Priority and Fairness) every write pauses.
        #[arg(long, default_value_t = crate::controller::status_writer::WriterSettings::DEFAULT_CONCURRENCY)]
        status_concurrency: usize,
        #[command(flatten)]
        modules: serve::ModuleSettings,
        // The webhook's certificate managed in a Secret (issue 18).
        #[command(flatten)]
        webhook_certificates: crate::controller::webhook::self_managed::SelfManagedSettings,
        /// The admission webhook (served when a certificate source is given).
        #[command(flatten)]
        webhook: crate::controller::webhook::WebhookSettings,
    },
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn two_sources_of_the_webhook_certificate_are_refused() {
        let err = Cli::try_parse_from([
            "idplane",
            "operator",
            "--webhook-cert-dir",
            "/tls",
            "--webhook-secret",
            "idplane-webhook-tls",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--webhook-secret")
                && err.contains("cannot be used with")
                && err.contains("--webhook-cert-dir"),
            "{err}"
        );
    }
}
