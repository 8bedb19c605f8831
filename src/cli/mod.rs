//! The `idplane` command line. Parsing and printing live here; every
//! decision is made by the library modules.

pub mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// idplane: a declarative delivery-and-enrollment plane for identity platforms.
#[derive(Parser, Debug)]
#[command(name = "idplane", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats of `validate`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the four CRDs as one multi-document YAML stream.
    Crds {
        /// Write one file per CRD into this directory instead (as committed in crds/).
        #[arg(long)]
        out_dir: Option<PathBuf>,
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
    /// Run from a directory of manifests, without a cluster: load, validate,
    /// build each org's configuration and print it.
    Run {
        /// Directory (or file) of manifests and Secrets.
        #[arg(long)]
        manifests: PathBuf,
        /// Namespace of objects that name none.
        #[arg(short = 'n', long = "namespace", default_value = "default")]
        namespace: String,
    },
}
