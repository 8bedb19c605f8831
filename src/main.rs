//! The `idplane` binary: parses the command line and hands off to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use idplane::cli::validate::load;
use idplane::cli::{Cli, Command, LogFormat, OutputFormat};
use idplane::source::located::{locate, report_tally};
use idplane::validate::Options;

/// jemalloc returns memory to the system under the churn of many watch
/// events far better than glibc's allocator with many threads.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The long-running modes log warnings (a database out of reach, a
    // failing batch) unless RUST_LOG says otherwise; one-shot commands
    // print their own results and log errors only.
    let serving = matches!(cli.command, Command::Run { .. } | Command::Operator { .. });
    init_logs(cli.log_format, if serving { "warn" } else { "error" });
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr, filtered by RUST_LOG (`default` without it). JSON
/// lines carry the current span and the spans around it, so that each line
/// says which unit of work (an OTP send, an email attempt, an index
/// batch...) it belongs to.
fn init_logs(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        // Colour codes only on a terminal, never in a pod's log or a file.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crds {
            reference: true, ..
        } => {
            print!("{}", idplane::resources::reference::markdown());
            Ok(ExitCode::SUCCESS)
        }
        Command::Crds { out_dir: None, .. } => {
            print!("{}", idplane::resources::crds_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Crds {
            out_dir: Some(dir), ..
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in idplane::resources::all_crds() {
                let path = dir.join(idplane::resources::crd_file_name(&crd));
                std::fs::write(&path, idplane::resources::crd_yaml(&crd)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            paths,
            strict,
            namespace,
            output,
        } => {
            let options = Options {
                default_namespace: namespace,
                strict,
                egress_warnings: true,
            };
            let (documents, report) = load(&paths, &options)?;
            let located = locate(&documents, &report);
            match output {
                OutputFormat::Text => {
                    for l in &located {
                        println!("{l}");
                    }
                    let checked = report
                        .checked
                        .iter()
                        .filter(|c| c.typed.is_some() || c.key.owned_kind().is_some())
                        .count();
                    eprintln!("{checked} objects checked, {}", report_tally(&report));
                }
                OutputFormat::Json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&located).context("encoding findings")?
                    );
                }
            }
            Ok(if report.has_errors() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Run {
            manifests,
            namespace,
            check,
            listen,
            database,
            tokens,
            poll_millis,
            modules,
        } => {
            let options = Options {
                default_namespace: namespace,
                strict: false,
                ..Options::default()
            };
            if check {
                return check_manifests(&manifests, &options);
            }
            let database = modules.database(&database)?;
            let settings = idplane::cli::serve::RunSettings {
                manifests,
                options,
                listen,
                database,
                tokens,
                poll: std::time::Duration::from_millis(poll_millis.max(50)),
                modules,
            };
            serve(idplane::cli::serve::run(settings))
        }
        Command::Diff(args) => tokio_runtime()?.block_on(idplane::cli::diff::run(args)),
        Command::Preview(args) => tokio_runtime()?.block_on(idplane::cli::preview::run(args)),
        Command::TestEmail(args) => tokio_runtime()?.block_on(idplane::cli::test_email::run(args)),
        Command::Explain { what } => tokio_runtime()?.block_on(idplane::cli::explain::run(what)),
        Command::Operator {
            namespaces,
            listen,
            database,
            lease_namespace,
            lease_name,
            identity,
            lease_seconds,
            status_writes_per_second,
            status_write_burst,
            status_concurrency,
            modules,
            webhook_certificates,
            webhook,
        } => {
            let identity = identity.unwrap_or_else(|| {
                let host =
                    std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "idplane".into());
                format!("{}-{}", host.trim(), std::process::id())
            });
            let database = modules.database(&database)?;
            let settings = idplane::cli::serve::OperatorSettings {
                namespaces: namespaces.into_iter().filter(|n| !n.is_empty()).collect(),
                listen,
                database,
                lease: idplane::controller::lease::LeaseSettings {
                    namespace: lease_namespace,
                    name: lease_name,
                    identity,
                    duration: std::time::Duration::from_secs(lease_seconds.max(3)),
                },
                writer: idplane::controller::status_writer::WriterSettings {
                    writes_per_second: status_writes_per_second.max(1),
                    burst: status_write_burst.max(1),
                    concurrency: status_concurrency.max(1),
                    ..Default::default()
                },
                modules,
                webhook_certificates,
                webhook,
            };
            serve(idplane::cli::serve::operator(settings))
        }
    }
}

/// Runs a long-running mode. Once it returns (stopped), the runtime gets
/// one second for tasks still running: dropping it would wait for every
/// blocking task, such as a DNS lookup of the system resolver, past the
/// grace period the pod was given.
fn serve(mode: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<ExitCode> {
    let runtime = tokio_runtime()?;
    let result = runtime.block_on(mode);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result.map(|()| ExitCode::SUCCESS)
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `run --check`: load, validate, print each org's configuration, exit.
fn check_manifests(manifests: &std::path::Path, options: &Options) -> anyhow::Result<ExitCode> {
    let (documents, report) = load(&[manifests.to_path_buf()], options)?;
    for l in locate(&documents, &report) {
        eprintln!("{l}");
    }
    let secrets = idplane::index::secrets_from(&report.checked);
    let (config, states) = idplane::index::build(&report, &secrets);
    let objects: Vec<serde_json::Value> = states
        .iter()
        .map(|(k, v)| serde_json::json!({"object": k.to_string(), "state": v}))
        .collect();
    let out = serde_json::json!({ "orgs": config, "objects": objects });
    println!("{}", serde_yaml::to_string(&out)?);
    Ok(if report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
