//! `idplane preview telephony HOOK`: Okta's "Preview" tab on the command
//! line. It builds the exact request the hook would get, prints it with the
//! secrets redacted, lets `--edit` open it in `$EDITOR` (or `--request
//! FILE` replace it), sends it to the hook (active or not) and prints the
//! answer and how idplane judges it.
//!
//! Where the hook's configuration comes from:
//! - `--manifests DIR`: the manifests and Secrets in DIR (as `idplane run`
//!   reads them); the request leaves from this machine. Nothing is recorded.
//! - otherwise `--server URL --token TOKEN` (or `IDPLANE_SERVER`,
//!   `IDPLANE_TOKEN`): a running idplane builds and sends the request
//!   through `POST /v1/orgs/{org}/telephony-hooks/{name}/preview`, which
//!   also records the result in the hook's `status.lastPreview`.
//!
//! Exit status: 0 when the hook delivered, 1 when idplane judges the answer
//! a failure, 2 when the preview could not be made.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::index::HookConfig;
use crate::resources::{Kind, ObjectKey};
use crate::telephony::contract::{Channel, RequestType, UserInfo};
use crate::telephony::preview::{self, PreviewInput};
use crate::telephony::{HookCaller, PhoneNumber};
use crate::validate::Options;

/// `idplane preview ...`.
#[derive(clap::Args, Debug)]
pub struct PreviewArgs {
    #[command(subcommand)]
    pub target: PreviewTarget,
}

/// What to preview.
#[derive(clap::Subcommand, Debug)]
pub enum PreviewTarget {
    /// Build the request a TelephonyHook would get, send it to the hook
    /// (active or not) and show its answer and how idplane judges it.
    Telephony(TelephonyPreview),
}

fn request_type(text: &str) -> Result<RequestType, String> {
    serde_json::from_value(json!(text))
        .map_err(|_| "one of enrollment, verification, account-unlock, password-reset".to_string())
}

fn channel(text: &str) -> Result<Channel, String> {
    serde_json::from_value(json!(text)).map_err(|_| "sms or voice".to_string())
}

/// `idplane preview telephony`.
#[derive(clap::Args, Debug)]
pub struct TelephonyPreview {
    /// The TelephonyHook to preview.
    pub hook: String,
    /// The org (namespace) of the hook.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    /// enrollment, verification, account-unlock or password-reset.
    #[arg(long, value_parser = request_type, default_value = "verification")]
    pub request_type: RequestType,
    /// The phone number (E.164) the hook delivers to. Required unless
    /// --request gives the whole request.
    #[arg(long)]
    pub phone: Option<String>,
    /// sms or voice.
    #[arg(long, value_parser = channel, default_value = "sms")]
    pub channel: Channel,
    /// The user's login (data.userProfile.login).
    #[arg(long, default_value = "preview.user@example.com")]
    pub user_login: String,
    #[arg(long, default_value = "preview-user")]
    pub user_id: String,
    #[arg(long, default_value = "Preview")]
    pub first_name: String,
    #[arg(long, default_value = "User")]
    pub last_name: String,
    #[arg(long)]
    pub locale: Option<String>,
    /// Open the request in $VISUAL or $EDITOR before sending it.
    #[arg(long)]
    pub edit: bool,
    /// Send the JSON in FILE instead of the built request.
    #[arg(long, value_name = "FILE")]
    pub request: Option<PathBuf>,
    /// Print the request only; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Read the hook from this directory of manifests and Secrets.
    #[arg(long, conflicts_with = "server")]
    pub manifests: Option<PathBuf>,
    /// A running idplane's API (used without --manifests).
    #[arg(long, env = "IDPLANE_SERVER")]
    pub server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "IDPLANE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --manifests: where the request may go (the same rule as
    /// `idplane run`; a running idplane applies its own).
    #[command(flatten)]
    pub egress: crate::egress::EgressSettings,
}

/// Runs `idplane preview`, printing to stdout.
pub async fn run(args: PreviewArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    run_to(args, &mut out).await
}

/// Runs `idplane preview`, printing to `out`.
pub async fn run_to(args: PreviewArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match args.target {
        PreviewTarget::Telephony(t) => telephony(t, out).await,
    }
}

/// Where the request is built and sent.
enum Origin {
    Local(Box<HookConfig>),
    Server {
        endpoint: String,
        token: String,
        client: reqwest::Client,
    },
}

impl TelephonyPreview {
    fn input(&self) -> PreviewInput {
        PreviewInput {
            phone_number: self.phone.clone(),
            channel: self.channel,
            request_type: self.request_type,
            user: UserInfo {
                id: self.user_id.clone(),
                login: self.user_login.clone(),
                first_name: self.first_name.clone(),
                last_name: self.last_name.clone(),
            },
            locale: self.locale.clone(),
            context: Default::default(),
        }
    }
}

async fn telephony(args: TelephonyPreview, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    if args.phone.is_none() && args.request.is_none() {
        bail!("give --phone (or --request FILE with the whole request)");
    }
    if let Some(phone) = &args.phone {
        PhoneNumber::parse(phone).with_context(|| format!("--phone {phone}"))?;
    }
    let replacement = match &args.request {
        Some(path) => Some(read_json(path)?),
        None => None,
    };
    let origin = origin(&args)?;
    // The request and how it is sent, built where the hook is known.
    let (url, headers, mut request) = match &origin {
        Origin::Local(hook) => {
            let request = match &replacement {
                Some(r) => r.clone(),
                None => preview::build_request(
                    &args.namespace,
                    hook,
                    &args.input(),
                    args.phone.as_deref().unwrap_or_default(),
                    std::time::Duration::from_secs(300),
                    6,
                ),
            };
            (
                crate::egress::redact_userinfo(&hook.url).into_owned(),
                preview::redacted_headers(hook),
                request,
            )
        }
        Origin::Server { .. } => {
            let mut body = serde_json::to_value(args.input())?;
            body["send"] = json!(false);
            if let Some(r) = &replacement {
                body["request"] = r.clone();
            }
            let built = call(&origin, &body).await?;
            let headers = built["headers"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|h| {
                            (
                                h["name"].as_str().unwrap_or_default().to_string(),
                                h["value"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (
                built["url"].as_str().unwrap_or_default().to_string(),
                headers,
                built["request"].clone(),
            )
        }
    };
    if args.edit {
        request = edit(&request)?;
    }
    writeln!(out, "POST {url}")?;
    for (name, value) in &headers {
        writeln!(out, "{name}: {value}")?;
    }
    writeln!(out)?;
    writeln!(out, "{}", serde_json::to_string_pretty(&request)?)?;
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let report = match &origin {
        Origin::Local(hook) => {
            let egress = crate::egress::Egress::new(&args.egress)?;
            let caller = HookCaller::new(std::sync::Arc::new(egress))?;
            preview::send(&caller, hook, &request).await.to_json()
        }
        Origin::Server { .. } => {
            let mut body = serde_json::to_value(args.input())?;
            body["request"] = request;
            call(&origin, &body).await?
        }
    };
    writeln!(out)?;
    match report["response"]["httpStatus"].as_u64() {
        Some(status) => writeln!(out, "HTTP {status}")?,
        None => writeln!(out, "no HTTP answer")?,
    }
    match &report["response"]["body"] {
        // Not JSON: what it was, not what it said.
        Value::Null => {
            if let Some(summary) = report["response"]["bodySummary"].as_str() {
                writeln!(out, "{summary}")?;
            }
        }
        Value::String(text) => writeln!(out, "{text}")?,
        body => writeln!(out, "{}", serde_json::to_string_pretty(body)?)?,
    }
    writeln!(out)?;
    writeln!(
        out,
        "judgement: {}",
        report["summary"].as_str().unwrap_or_default()
    )?;
    let delivered = report["judgement"]["delivered"].as_bool() == Some(true);
    Ok(if delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn origin(args: &TelephonyPreview) -> anyhow::Result<Origin> {
    if let Some(dir) = &args.manifests {
        return Ok(Origin::Local(Box::new(local_hook(
            dir,
            &args.namespace,
            &args.hook,
        )?)));
    }
    let Some(server) = &args.server else {
        bail!(
            "give --manifests DIR, or --server URL and --token TOKEN (IDPLANE_SERVER, IDPLANE_TOKEN)"
        );
    };
    let Some(token) = &args.token else {
        bail!("--server needs --token (or IDPLANE_TOKEN)");
    };
    Ok(Origin::Server {
        endpoint: format!(
            "{}/v1/orgs/{}/telephony-hooks/{}/preview",
            server.trim_end_matches('/'),
            args.namespace,
            args.hook
        ),
        token: token.clone(),
        client: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?,
    })
}

/// The hook as `idplane run` would configure it from `dir`.
fn local_hook(dir: &Path, namespace: &str, name: &str) -> anyhow::Result<HookConfig> {
    let options = Options {
        default_namespace: namespace.to_string(),
        strict: false,
        ..Options::default()
    };
    let (_, report) = super::validate::load(&[dir.to_path_buf()], &options)?;
    let secrets = crate::index::secrets_from(&report.checked);
    let (config, states) = crate::index::build(&report, &secrets);
    if let Some(hook) = config.get(namespace).and_then(|o| o.hooks.get(name)) {
        return Ok(hook.clone());
    }
    let key = ObjectKey::new(Kind::TelephonyHook, namespace, name);
    match states.get(&key) {
        Some(state) => bail!(
            "TelephonyHook {namespace}/{name} cannot be used: {}",
            state.message
        ),
        None => {
            let known: Vec<&String> = config
                .get(namespace)
                .map(|o| o.hooks.keys().collect())
                .unwrap_or_default();
            bail!(
                "no TelephonyHook {namespace}/{name} in {} (hooks of {namespace}: {known:?})",
                dir.display()
            )
        }
    }
}

async fn call(origin: &Origin, body: &Value) -> anyhow::Result<Value> {
    let Origin::Server {
        endpoint,
        token,
        client,
    } = origin
    else {
        unreachable!("only the server origin calls the API")
    };
    let response = client
        .post(endpoint)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .with_context(|| format!("calling {endpoint}"))?;
    let status = response.status();
    let answer: Value = response
        .json()
        .await
        .with_context(|| format!("reading the answer of {endpoint}"))?;
    if !status.is_success() {
        bail!(
            "{endpoint} answered {status}: {}",
            answer["message"].as_str().unwrap_or_default()
        );
    }
    Ok(answer)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if !value.is_object() {
        bail!("{} must hold a JSON object", path.display());
    }
    Ok(value)
}

/// Opens the request in the user's editor and reads it back.
fn edit(request: &Value) -> anyhow::Result<Value> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let path = std::env::temp_dir().join(format!(
        "idplane-preview-{}.json",
        crate::telephony::code::random_id()
    ));
    std::fs::write(&path, serde_json::to_string_pretty(request)?)?;
    let edited = run_editor(&editor, &path);
    let _ = std::fs::remove_file(&path);
    edited
}

fn run_editor(editor: &str, path: &Path) -> anyhow::Result<Value> {
    // Like git: the editor setting may carry arguments.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("editor")
        .arg(path)
        .status()
        .with_context(|| format!("running {editor}"))?;
    if !status.success() {
        bail!("{editor} exited with {status}; nothing sent");
    }
    read_json(path)
}
