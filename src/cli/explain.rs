//! `idplane explain enrollment`: which policy and rule apply to a user and
//! why, authenticator by authenticator, from a directory of manifests or
//! from the cluster (KUBECONFIG), without a running idplane.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::enrollment::{EnrollmentEngine, EvaluationRequest, explain_table};
use crate::validate::{Options, Severity, validate};

#[derive(Subcommand, Debug)]
pub enum ExplainCommand {
    /// Evaluate the org's enrollment policies for one user and print why.
    Enrollment(EnrollmentArgs),
}

#[derive(Args, Debug)]
pub struct EnrollmentArgs {
    /// The org (namespace).
    #[arg(short = 'n', long = "namespace")]
    pub namespace: String,
    /// Read policies from this directory instead of the cluster.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// The user's groups, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Authenticators the user has enrolled, comma-separated (phone_number:sms for a method).
    #[arg(long, value_delimiter = ',')]
    pub enrolled: Vec<String>,
    /// The user's id (rules may exclude users).
    #[arg(long, default_value = "explain-user")]
    pub user_id: String,
    /// Account set-up: enrollment and recovery authenticators are enrolled together.
    #[arg(long)]
    pub first_sign_in: bool,
    /// The user signs in through social auth or inbound federation.
    #[arg(long)]
    pub federated: bool,
    /// Recovery authenticators of the password policy, comma-separated;
    /// `KEY:sso` marks one as SSO-enabled.
    #[arg(long, value_delimiter = ',')]
    pub recovery: Vec<String>,
    /// The app needs a possession factor.
    #[arg(long)]
    pub app_possession: bool,
    /// The app needs one of these authenticators, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub app_authenticators: Vec<String>,
    /// The client's IP address, for rules with network zones.
    #[arg(long)]
    pub ip: Option<String>,
    /// Print the evaluation as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The request the flags describe, in the API's JSON form (so the same
/// parsing and checks apply).
pub fn request_json(a: &EnrollmentArgs) -> Value {
    let enrolled: Vec<Value> = a
        .enrolled
        .iter()
        .filter(|e| !e.is_empty())
        .map(|e| match e.split_once(':') {
            Some((key, method)) => json!({"key": key, "methods": [method]}),
            None => json!(e),
        })
        .collect();
    let recovery: Vec<Value> = a
        .recovery
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| match r.strip_suffix(":sso") {
            Some(key) => json!({"key": key, "ssoEnabled": true}),
            None => json!({"key": r, "ssoEnabled": false}),
        })
        .collect();
    let mut request = json!({
        "user": {"id": a.user_id, "groups": a.groups.iter().filter(|g| !g.is_empty()).collect::<Vec<_>>(),
                 "enrolled": enrolled, "federated": a.federated},
        "firstSignIn": a.first_sign_in,
        "recovery": recovery,
    });
    if a.app_possession || !a.app_authenticators.is_empty() {
        request["app"] =
            json!({"possession": a.app_possession, "authenticators": a.app_authenticators});
    }
    if let Some(ip) = &a.ip {
        request["network"] = json!({"ip": ip});
    }
    request
}

async fn objects_from_cluster(namespace: &str) -> anyhow::Result<Vec<Value>> {
    use kube::api::{Api, ListParams};
    let client = kube::Client::try_default()
        .await
        .context("cannot reach a cluster (KUBECONFIG)")?;
    let api: Api<crate::resources::EnrollmentPolicy> = Api::namespaced(client, namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .context("listing EnrollmentPolicies")?;
    Ok(list
        .items
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
            v["apiVersion"] = json!(crate::resources::API_VERSION);
            v["kind"] = json!(crate::resources::Kind::EnrollmentPolicy.as_str());
            v
        })
        .collect())
}

pub async fn run(command: ExplainCommand) -> anyhow::Result<ExitCode> {
    let ExplainCommand::Enrollment(args) = command;
    let options = Options {
        default_namespace: args.namespace.clone(),
        strict: false,
        ..Options::default()
    };
    let values = match &args.manifests {
        Some(dir) => crate::source::manifest::read_paths(std::slice::from_ref(dir))?
            .into_iter()
            .map(|d| d.value)
            .collect(),
        None => objects_from_cluster(&args.namespace).await?,
    };
    let report = validate(&values, &options);
    for f in report
        .findings
        .iter()
        .filter(|f| f.object.namespace == args.namespace)
    {
        let effect = match f.severity {
            Severity::Error => " (left out)",
            Severity::Warning => "",
        };
        eprintln!("warning: {} {}: {}{effect}", f.object, f.field, f.message);
    }
    let (config, _) = crate::index::build(&report, &crate::index::Secrets::new());
    let policies = config
        .get(&args.namespace)
        .map(|o| o.policies.clone())
        .unwrap_or_default();
    let engine = EnrollmentEngine::new(&policies);
    let request: EvaluationRequest = serde_json::from_value(request_json(&args))
        .context("building the request from the flags")?;
    let evaluation = match engine.evaluate(&request) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&evaluation)?);
    } else {
        print!("{}", explain_table(&evaluation));
    }
    Ok(ExitCode::SUCCESS)
}
