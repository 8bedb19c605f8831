//! `idplane diff PATH...`: what applying the manifests would change. The
//! manifests are read and validated as `idplane validate` does (problems
//! first, on stderr, with FILE:LINE:COL); each object of idplane's kinds
//! and each Secret is then compared with its live version and printed as a
//! unified diff (`diff`: the comparison is pure and lives there).
//!
//! Where the live objects come from:
//! - by default the cluster of the kubeconfig (`--kubeconfig`,
//!   `--context`; else KUBECONFIG, `~/.kube/config`, in-cluster), each
//!   object read by kind, namespace and name, and with `--prune` idplane's
//!   kinds listed in the manifests' namespaces;
//! - with `--server URL` a running `idplane run`, through `GET
//!   /v1/orgs/{org}/objects` with `--token`, `--token-file` or
//!   IDPLANE_TOKEN (never printed).
//!
//! Exit status, as `kubectl diff`: 0 when nothing differs, 1 when
//! something does, 2 on errors, validation errors included (printed, and
//! nothing compared); warnings do not change it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use clap::ValueEnum;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use serde_json::Value;

use crate::cli::validate::load;
use crate::diff::{Comparable, Entry, LineKind, Tally};
use crate::resources::{API_VERSION, Kind, ObjectKey};
use crate::source::located::{locate, report_tally};
use crate::validate::{Options, Report};

/// How long one call to the apiserver or to idplane may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Objects read from the apiserver at once.
const READS_IN_FLIGHT: usize = 8;

/// `idplane diff`.
#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// Files, directories (recursive: .yaml, .yml, .json) or - for stdin.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Namespace of objects that name none (default: the kubeconfig
    /// context's namespace; `default` with --server). With --prune and
    /// manifests that hold no object, the namespace looked at.
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    /// Also list the objects of idplane's kinds that are live in the
    /// manifests' namespaces but in none of the manifests, as "would be
    /// deleted" (Secrets are never listed).
    #[arg(long)]
    pub prune: bool,
    /// Colours: auto (when stdout is a terminal and NO_COLOR is not set),
    /// always or never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// The kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then
    /// the in-cluster configuration).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Compare with what a running `idplane run` loaded from its files
    /// (its API, e.g. http://127.0.0.1:8080) instead of the cluster.
    #[arg(long, conflicts_with_all = ["kubeconfig", "context"])]
    pub server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "IDPLANE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the token for --server (trailing newlines dropped);
    /// read instead of --token or IDPLANE_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// When to colour the diff.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Whether to colour: `always`, `never`, or for `auto` a terminal and no
/// (non-empty) NO_COLOR, as no-color.org asks.
pub fn use_color(choice: ColorChoice, terminal: bool, no_color: Option<&str>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && no_color.is_none_or(str::is_empty),
    }
}

/// Where live objects are read.
enum Live {
    Cluster {
        client: kube::Client,
        namespace: String,
        url: String,
    },
    Server {
        url: String,
        token: Option<String>,
        http: reqwest::Client,
    },
}

/// The live objects of one namespace, and the salt their Secrets' values
/// (and the manifests', to compare with them) are digested with.
struct LiveSet {
    salt: Vec<u8>,
    objects: BTreeMap<ObjectKey, Comparable>,
}

impl Live {
    /// Reads the kubeconfig or takes the server; nothing is called yet.
    async fn open(args: &DiffArgs) -> anyhow::Result<Live> {
        if let Some(url) = &args.server {
            let token = match &args.token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading the token file {}", path.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                ),
                None => args.token.clone(),
            };
            let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?;
            return Ok(Live::Server {
                url: url.trim_end_matches('/').to_string(),
                token,
                http,
            });
        }
        use kube::config::{Config, KubeConfigOptions, Kubeconfig};
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = match &args.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(file, &options).await?
            }
            None if args.context.is_some() => Config::from_kubeconfig(&options).await?,
            None => Config::infer()
                .await
                .context("no cluster to compare with (KUBECONFIG, ~/.kube/config or in-cluster); or give --server URL of an `idplane run`")?,
        };
        config.connect_timeout = Some(CALL_TIMEOUT);
        config.read_timeout = Some(CALL_TIMEOUT);
        let namespace = config.default_namespace.clone();
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).context("building the cluster client")?;
        Ok(Live::Cluster {
            client,
            namespace,
            url,
        })
    }

    /// Namespace of objects that name none, when `-n` is not given.
    fn default_namespace(&self) -> &str {
        match self {
            Live::Cluster { namespace, .. } => namespace,
            Live::Server { .. } => "default",
        }
    }

    /// What the summary says was compared with.
    fn label(&self) -> String {
        match self {
            Live::Cluster { url, .. } => format!("the cluster at {url}"),
            Live::Server { url, .. } => format!("the idplane at {url}"),
        }
    }

    /// Refuses a cluster that does not serve idplane's kinds: every object
    /// would look new, and applying them would fail.
    async fn check(&self) -> anyhow::Result<()> {
        let Live::Cluster { client, .. } = self else {
            return Ok(());
        };
        match client.list_api_group_resources(API_VERSION).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => bail!(
                "the cluster does not serve {API_VERSION}: install idplane's CRDs first (kubectl apply --server-side -f crds/, or the Helm chart)"
            ),
            Err(e) => Err(cluster_error(e, "asking the cluster which kinds it serves")),
        }
    }

    /// The live objects of `namespace`: those of `keys`, and with `prune`
    /// every object of idplane's kinds there.
    async fn read(
        &self,
        namespace: &str,
        keys: &[&ObjectKey],
        prune: bool,
    ) -> anyhow::Result<LiveSet> {
        match self {
            Live::Cluster { client, .. } => {
                let salt: [u8; 32] = rand::random();
                // With --prune the lists below bring idplane's objects:
                // only the Secrets need reading one by one.
                let one_by_one = keys
                    .iter()
                    .copied()
                    .filter(|key| !prune || key.owned_kind().is_none());
                let mut values: Vec<Value> = futures::stream::iter(one_by_one)
                    .map(|key| get_object(client, key))
                    .buffered(READS_IN_FLIGHT)
                    .try_filter_map(|v| async move { Ok(v) })
                    .try_collect()
                    .await?;
                if prune {
                    for kind in Kind::ALL {
                        values.extend(list_objects(client, namespace, kind).await?);
                    }
                }
                let objects = values
                    .iter()
                    .map(|v| crate::diff::comparable(v, namespace, &salt))
                    .map(|c| (c.key.clone(), c))
                    .collect();
                Ok(LiveSet {
                    salt: salt.to_vec(),
                    objects,
                })
            }
            Live::Server { url, token, http } => {
                served_objects(http, url, token.as_deref(), namespace).await
            }
        }
    }
}

/// The API resource of a kind `idplane diff` compares (idplane's and Secret).
fn resource(kind: &str) -> ApiResource {
    match Kind::parse(kind) {
        Some(kind) => crate::resources::api_resource(kind),
        None => ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
    }
}

async fn get_object(client: &kube::Client, key: &ObjectKey) -> anyhow::Result<Option<Value>> {
    let resource = resource(&key.kind);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, &resource);
    let object = api
        .get_opt(&key.name)
        .await
        .map_err(|e| cluster_error(e, &format!("reading {key}")))?;
    object.map(|o| live_value(o, &resource)).transpose()
}

async fn list_objects(
    client: &kube::Client,
    namespace: &str,
    kind: Kind,
) -> anyhow::Result<Vec<Value>> {
    let resource = crate::resources::api_resource(kind);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| cluster_error(e, &format!("listing {kind}s in {namespace} (--prune)")))?;
    list.items
        .into_iter()
        .map(|o| live_value(o, &resource))
        .collect()
}

/// A live object as JSON, with its apiVersion and kind (list items may
/// lack them).
fn live_value(object: DynamicObject, resource: &ApiResource) -> anyhow::Result<Value> {
    let mut value = serde_json::to_value(object)?;
    value["apiVersion"] = resource.api_version.clone().into();
    value["kind"] = resource.kind.clone().into();
    Ok(value)
}

/// An apiserver error as a person reads it: what was being done, and for
/// 401 and 403 what is missing.
fn cluster_error(e: kube::Error, what: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 401 => anyhow!(
            "{what}: the cluster refused the kubeconfig's credentials (401): {}",
            s.message
        ),
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "{what}: forbidden (403): {}; idplane diff needs get on the objects the manifests name (their Secrets included) and, with --prune, list on idplane's kinds",
            s.message
        ),
        _ => anyhow::Error::new(e).context(what.to_string()),
    }
}

/// The org's objects from `GET /v1/orgs/{org}/objects` of an `idplane run`.
async fn served_objects(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    org: &str,
) -> anyhow::Result<LiveSet> {
    let endpoint = format!("{url}/v1/orgs/{org}/objects");
    let mut request = http.get(&endpoint);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let said = format!(
        "{}: {}",
        body["code"].as_str().unwrap_or("?"),
        body["message"].as_str().unwrap_or("no message")
    );
    match status {
        200 => {}
        401 => bail!(
            "{url} refused the token ({status} {said}): give a token of its --tokens file with --token, --token-file or IDPLANE_TOKEN"
        ),
        403 => bail!("the token may not read org {org} at {url} ({status} {said})"),
        404 => bail!(
            "{url} does not serve GET /v1/orgs/{{org}}/objects ({status} {said}): --server takes an `idplane run`; to compare with a cluster, leave --server out"
        ),
        _ => bail!("{endpoint} answered {status} {said}"),
    }
    let salt = body["digestSalt"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(|| anyhow!("{endpoint} answered without a digestSalt"))?;
    let objects = body["objects"]
        .as_array()
        .ok_or_else(|| anyhow!("{endpoint} answered without objects"))?
        .iter()
        .map(|v| crate::diff::from_served(v, org))
        .map(|c| (c.key.clone(), c))
        .collect();
    Ok(LiveSet { salt, objects })
}

/// Runs `idplane diff`.
pub async fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let live = Live::open(&args).await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| live.default_namespace().to_string());
    // The same call as `idplane validate`.
    let options = Options {
        default_namespace: namespace.clone(),
        strict: false,
        egress_warnings: true,
    };
    let (documents, report) = load(&args.paths, &options)?;
    for l in locate(&documents, &report) {
        eprintln!("{l}");
    }
    if report.has_errors() {
        eprintln!(
            "{}: nothing compared; fix the manifests first",
            report_tally(&report)
        );
        return Ok(ExitCode::from(2));
    }
    let compared = compared_documents(&report);
    let keys: Vec<&ObjectKey> = compared.iter().map(|&i| &report.checked[i].key).collect();
    let (salts, live_objects) = read_live(&live, &keys, &namespace, args.prune).await?;
    let manifests: Vec<Comparable> = compared
        .iter()
        .map(|&i| {
            let salt = &salts[&report.checked[i].key.namespace];
            crate::diff::comparable(&documents[i].value, &namespace, salt)
        })
        .collect();
    let places: BTreeMap<&ObjectKey, String> = compared
        .iter()
        .map(|&i| {
            let doc = &documents[i];
            let at = doc.position_of("");
            (&report.checked[i].key, format!("{}:{}", doc.file, at.line))
        })
        .collect();

    let entries = crate::diff::compare(&manifests, &live_objects, args.prune);
    let color = use_color(
        args.color,
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
        std::env::var("NO_COLOR").ok().as_deref(),
    );
    print_entries(&entries, &places, color)?;
    let counts = Tally::of(&entries);
    eprintln!("{counts} (compared with {})", live.label());
    Ok(if counts.differs() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The documents compared (idplane's kinds and Secrets), by their index in
/// the report; the others are counted in one line on stderr.
fn compared_documents(report: &Report) -> Vec<usize> {
    let mut compared = Vec::new();
    let mut skipped = BTreeSet::new();
    for (i, checked) in report.checked.iter().enumerate() {
        // Only idplane's kinds and v1 Secrets are typed, and only when valid.
        if checked.typed.is_some() {
            compared.push(i);
        } else {
            skipped.insert(checked.key.kind.as_str());
        }
    }
    if !skipped.is_empty() {
        let kinds: Vec<&str> = skipped.into_iter().collect();
        eprintln!(
            "not compared: {} objects of other kinds ({}); idplane diff compares idplane's kinds and Secrets, kubectl diff the rest",
            report.checked.len() - compared.len(),
            kinds.join(", ")
        );
    }
    compared
}

/// The live objects of the namespaces of `keys` (of `namespace` when there
/// are none), and the salt each namespace's Secrets are digested with.
async fn read_live(
    live: &Live,
    keys: &[&ObjectKey],
    namespace: &str,
    prune: bool,
) -> anyhow::Result<(BTreeMap<String, Vec<u8>>, BTreeMap<ObjectKey, Comparable>)> {
    let mut by_namespace: BTreeMap<&str, Vec<&ObjectKey>> = BTreeMap::new();
    for key in keys {
        by_namespace.entry(&key.namespace).or_default().push(key);
    }
    if by_namespace.is_empty() {
        by_namespace.insert(namespace, Vec::new());
    }
    if prune || keys.iter().any(|k| k.owned_kind().is_some()) {
        live.check().await?;
    }
    let mut salts = BTreeMap::new();
    let mut objects = BTreeMap::new();
    for (ns, keys) in &by_namespace {
        let set = live.read(ns, keys, prune).await?;
        salts.insert(ns.to_string(), set.salt);
        objects.extend(set.objects);
    }
    Ok((salts, objects))
}

/// Prints each entry's diff to stdout; a reader that goes away (`| head`)
/// ends the printing quietly.
fn print_entries(
    entries: &[Entry],
    places: &BTreeMap<&ObjectKey, String>,
    color: bool,
) -> anyhow::Result<()> {
    let mut out = String::new();
    for entry in entries {
        for line in entry.lines(places.get(&entry.key).map(String::as_str)) {
            let paint = match line.kind {
                LineKind::OldHeader | LineKind::NewHeader => "\x1b[1m",
                LineKind::Hunk => "\x1b[36m",
                LineKind::Removed => "\x1b[31m",
                LineKind::Added => "\x1b[32m",
                LineKind::Context => "",
            };
            if color && !paint.is_empty() {
                out.push_str(&format!("{paint}{}\x1b[0m\n", line.text));
            } else {
                out.push_str(&line.text);
                out.push('\n');
            }
        }
    }
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing the diff"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_follows_the_choice_the_terminal_and_no_color() {
        let cases = [
            (ColorChoice::Always, false, Some("1"), true),
            (ColorChoice::Never, true, None, false),
            (ColorChoice::Auto, true, None, true),
            (ColorChoice::Auto, true, Some(""), true),
            (ColorChoice::Auto, true, Some("1"), false),
            (ColorChoice::Auto, false, None, false),
        ];
        for (choice, terminal, no_color, expected) in cases {
            assert_eq!(
                use_color(choice, terminal, no_color),
                expected,
                "{choice:?} terminal={terminal} NO_COLOR={no_color:?}"
            );
        }
    }
}
