//! The webhook's TLS with no manual step (`--webhook-secret`): every
//! replica watches one Secret in its namespace; when it is missing, or
//! its certificates are due, a replica issues new ones
//! (`certificate.rs`) and writes them with a resourceVersion
//! precondition, so that concurrent replicas converge on one Secret (the
//! loser of a race reads the winner's). Each replica serves what the
//! Secret holds (its [`CertSlot`]) and writes its CA bundle into the
//! `caBundle` of every webhook of the ValidatingWebhookConfiguration
//! (`--webhook-configuration`), under a field manager of its own.
//!
//! The decision of what to do is [`certificate::decide`]; this module
//! only reads, writes and waits. Private keys go to the Secret and the
//! slot, never to a log line or an error.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::certificate::{
    self, Action, Bundle, CA_CRT, CA_KEY, Held, Material, Names, Observed, TLS_CRT, TLS_KEY,
    Validity,
};
use super::tls::{CertSlot, certified_key};

/// The field manager of idplane's writes to the Secret and to the
/// webhook configuration's `caBundle`s.
pub const FIELD_MANAGER: &str = "idplane-webhook-certificates";

/// A replica's settings for a self-managed certificate.
#[derive(clap::Args, Clone, Debug)]
pub struct SelfManagedSettings {
    /// Manage the webhook's TLS in this Secret (in --webhook-namespace): a
    /// CA and a serving certificate, created when missing and rotated
    /// before they expire. Every replica serves what the Secret holds.
    // One source of the certificate: refused with cert-manager's files at
    // parse time by the `operator` command's group (not here, so this block
    // parses on its own).
    #[arg(long = "webhook-secret")]
    pub secret: Option<String>,
    /// Namespace of that Secret and of the webhook's Service (the
    /// operator's own).
    #[arg(
        long = "webhook-namespace",
        env = "POD_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// The Service in front of the webhook: the serving certificate is for
    /// NAME, NAME.NS, NAME.NS.svc and NAME.NS.svc.cluster.local.
    #[arg(long = "webhook-service", requires = "secret")]
    pub service: Option<String>,
    /// More names for the serving certificate, DNS names or IP addresses
    /// (comma-separated, or the flag repeated).
    #[arg(long = "webhook-dns-name", value_delimiter = ',', requires = "secret")]
    pub dns_names: Vec<String>,
    /// The ValidatingWebhookConfiguration whose webhooks get the CA bundle
    /// in `clientConfig.caBundle` (written only when it differs).
    #[arg(long = "webhook-configuration", requires = "secret")]
    pub configuration: Option<String>,
    /// Validity of a new CA; it is renewed when a third is left.
    #[arg(long = "webhook-ca-validity", hide = true, default_value = "43800h", value_parser = crate::resources::parse_duration)]
    pub ca_validity: Duration,
    /// Validity of a new serving certificate; it is renewed when a third
    /// is left. At most a third of the CA's.
    #[arg(long = "webhook-serving-validity", hide = true, default_value = "2160h", value_parser = crate::resources::parse_duration)]
    pub serving_validity: Duration,
}

/// Errors of the self-managed certificate.
#[derive(Debug, thiserror::Error)]
pub enum SelfManagedError {
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Certificate(#[from] certificate::CertificateError),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// What one replica manages: resolved from [`SelfManagedSettings`].
#[derive(Clone, Debug)]
pub struct SelfManaged {
    pub secret: String,
    pub namespace: String,
    /// The serving certificate's names, as given.
    pub names: Vec<String>,
    wanted: Names,
    pub configuration: Option<String>,
    pub validity: Validity,
    /// How long a new CA must have been trusted before the serving
    /// certificate moves to it.
    settle: Duration,
}

impl SelfManagedSettings {
    /// What to manage; None without `--webhook-secret`.
    pub fn resolve(&self) -> Result<Option<SelfManaged>, SelfManagedError> {
        let Some(secret) = self.secret.clone().filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let mut names = Vec::new();
        if let Some(service) = self.service.as_deref().filter(|s| !s.is_empty()) {
            names.extend(certificate::service_names(service, &self.namespace));
        }
        names.extend(self.dns_names.iter().filter(|n| !n.is_empty()).cloned());
        if names.is_empty() {
            return Err(SelfManagedError::Settings(
                "--webhook-secret needs --webhook-service (or --webhook-dns-name): the names the serving certificate is for".into(),
            ));
        }
        let (_, wanted) = certificate::names(&names)?;
        let validity = Validity {
            ca: self.ca_validity,
            serving: self.serving_validity,
        };
        if validity.serving.is_zero() || validity.serving > validity.ca / 3 {
            return Err(SelfManagedError::Settings(format!(
                "--webhook-serving-validity ({:?}) must be more than zero and at most a third of --webhook-ca-validity ({:?}), so that each serving certificate is issued well within its CA's life",
                validity.serving, validity.ca
            )));
        }
        Ok(Some(SelfManaged {
            secret,
            namespace: self.namespace.clone(),
            names,
            wanted,
            configuration: self.configuration.clone().filter(|c| !c.is_empty()),
            validity,
            settle: (validity.serving / 10).min(Duration::from_secs(30)),
        }))
    }
}

/// First wait after a failed read or write; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// After a write: how long to wait for the watch to bring it back before
/// deciding again anyway.
const AFTER_WRITE: Duration = Duration::from_secs(10);
/// The longest sleep between two decisions (a clock that jumps is
/// noticed within it).
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// The latest state of one named object: None until its watch has listed
/// it, then whether it exists.
type Latest<K> = watch::Receiver<Option<Option<K>>>;

/// Keeps the certificate of `managed` current, and `slot` serving it,
/// until `stop`.
pub async fn run(client: Client, managed: SelfManaged, slot: CertSlot, stop: CancellationToken) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &managed.namespace);
    let configurations: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let mut secret = watch_named(secrets.clone(), &managed.secret, stop.clone());
    let mut configuration = managed
        .configuration
        .as_deref()
        .map(|name| watch_named(configurations.clone(), name, stop.clone()));
    let mut trust: Option<(Vec<u8>, OffsetDateTime)> = None;
    let mut served: Option<(String, String)> = None;
    let mut retry = FIRST_RETRY;
    let mut missing_reported = false;
    tracing::info!(
        secret = %managed.secret,
        namespace = %managed.namespace,
        names = ?managed.names,
        configuration = ?managed.configuration,
        "webhook certificate: self-managed"
    );
    loop {
        // Both watches listed first: deciding on a Secret not yet read
        // would create one that exists.
        // `live`: None without a configuration to write to, else whether
        // it exists.
        let current = secret.borrow_and_update().clone();
        let live = match configuration.as_mut() {
            None => Some(None),
            Some(c) => c.borrow_and_update().clone().map(Some),
        };
        let (Some(current), Some(live)) = (current, live) else {
            if !changed(&mut secret, configuration.as_mut(), None, &stop).await {
                return;
            }
            continue;
        };
        let held = current.as_ref().map(|s| Held::parse(material(s)));
        if let Some(held) = &held {
            serve(held, &slot, &mut served);
        }
        let bundle = match &live {
            None => Bundle::NotConfigured,
            Some(None) => Bundle::Missing,
            Some(Some(vwc)) => bundle_state(vwc, held.as_ref()),
        };
        if bundle == Bundle::Missing && !missing_reported {
            tracing::warn!(
                configuration = ?managed.configuration,
                "webhook certificate: the ValidatingWebhookConfiguration does not exist; its caBundle is written once it does"
            );
        }
        missing_reported = bundle == Bundle::Missing;
        let now = OffsetDateTime::now_utc();
        let ca = held
            .as_ref()
            .and_then(|h| h.signing_ca_der())
            .map(<[u8]>::to_vec);
        trust = match (ca, bundle) {
            (Some(ca), Bundle::Current | Bundle::NotConfigured) => match trust {
                Some((der, since)) if der == ca => Some((der, since)),
                _ => Some((ca, now)),
            },
            _ => None,
        };
        let observed = Observed {
            secret: held.as_ref().map(|h| h.summary(&managed.wanted)),
            bundle,
            trusted_since: trust.as_ref().map(|(_, since)| *since),
        };
        let decision = certificate::decide(now, &observed, managed.settle);
        let wait = match decision.action {
            Action::Wait { until } => {
                retry = FIRST_RETRY;
                let left = (until - now).max(time::Duration::ZERO);
                Duration::try_from(left)
                    .unwrap_or(LONGEST_WAIT)
                    .min(LONGEST_WAIT)
            }
            action => {
                tracing::info!(secret = %managed.secret, reason = decision.reason, "webhook certificate: {action:?}");
                let seen = Seen {
                    secret: current,
                    held,
                    configuration: live.flatten(),
                };
                match act(action, &managed, &secrets, &configurations, &seen).await {
                    Ok(()) => {
                        retry = FIRST_RETRY;
                        AFTER_WRITE
                    }
                    Err(e) => {
                        tracing::warn!(secret = %managed.secret, error = %e, retry_in = ?retry, "webhook certificate: {action:?} failed");
                        let wait = retry;
                        retry = (retry * 2).min(MAX_RETRY);
                        wait
                    }
                }
            }
        };
        if !changed(&mut secret, configuration.as_mut(), Some(wait), &stop).await {
            return;
        }
    }
}

/// Waits for a change of either watched object, or `wait` (None:
/// forever); false once `stop` is cancelled.
async fn changed(
    secret: &mut Latest<Secret>,
    configuration: Option<&mut Latest<ValidatingWebhookConfiguration>>,
    wait: Option<Duration>,
    stop: &CancellationToken,
) -> bool {
    let configuration = async {
        match configuration {
            Some(c) => c.changed().await,
            None => std::future::pending().await,
        }
    };
    let timer = async {
        match wait {
            Some(wait) => tokio::time::sleep(wait).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = stop.cancelled() => false,
        r = secret.changed() => r.is_ok(),
        r = configuration => r.is_ok(),
        () = timer => true,
    }
}

/// What one round read: the Secret (and its certificates), the
/// webhook configuration.
struct Seen {
    secret: Option<Secret>,
    held: Option<Held>,
    configuration: Option<ValidatingWebhookConfiguration>,
}

/// Does `action`: writes the Secret (created, or replaced with the
/// resourceVersion read: a concurrent writer makes it fail with 409, and
/// the next decision reads theirs), or the configuration's bundles.
async fn act(
    action: Action,
    managed: &SelfManaged,
    secrets: &Api<Secret>,
    configurations: &Api<ValidatingWebhookConfiguration>,
    seen: &Seen,
) -> Result<(), SelfManagedError> {
    let now = OffsetDateTime::now_utc();
    let signing = || {
        seen.held
            .as_ref()
            .ok_or(certificate::CertificateError::NoSigningCa)
    };
    let renewed = match action {
        Action::Wait { .. } => return Ok(()),
        Action::PatchBundle => {
            return match (&seen.configuration, &seen.held) {
                (Some(vwc), Some(held)) => {
                    patch_bundle(configurations, vwc, &held.material().ca_crt).await
                }
                _ => Ok(()),
            };
        }
        Action::Create => certificate::create(now, managed.validity, &managed.names)?,
        Action::RenewCa => certificate::renew_ca(signing()?, now, managed.validity)?,
        Action::RenewServing => {
            certificate::renew_serving(signing()?, now, managed.validity, &managed.names)?
        }
    };
    write_secret(secrets, managed, seen.secret.as_ref(), &renewed).await
}

/// Creates the Secret, or replaces its four keys (other keys, labels and
/// annotations kept) on the resourceVersion it was read at.
async fn write_secret(
    secrets: &Api<Secret>,
    managed: &SelfManaged,
    current: Option<&Secret>,
    material: &Material,
) -> Result<(), SelfManagedError> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let kube = |what: &str| {
        let what = format!("{what} Secret {}/{}", managed.namespace, managed.secret);
        move |source| SelfManagedError::Kube { what, source }
    };
    let mut secret = current.cloned().unwrap_or_else(|| Secret {
        metadata: ObjectMeta {
            name: Some(managed.secret.clone()),
            namespace: Some(managed.namespace.clone()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".into(), "idplane".into()),
                (
                    "app.kubernetes.io/component".into(),
                    "webhook-certificate".into(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        ..Secret::default()
    });
    secret.metadata.managed_fields = None;
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (CA_CRT, &material.ca_crt),
        (CA_KEY, &material.ca_key),
        (TLS_CRT, &material.tls_crt),
        (TLS_KEY, &material.tls_key),
    ] {
        data.insert(key.into(), ByteString(value.clone().into_bytes()));
    }
    let written = match current {
        None => secrets.create(&params, &secret).await,
        Some(_) => secrets.replace(&managed.secret, &params, &secret).await,
    };
    match written {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::info!(secret = %managed.secret, "webhook certificate: another replica wrote the Secret first; using theirs");
            Ok(())
        }
        Err(e) => Err(kube(if current.is_some() {
            "replacing"
        } else {
            "creating"
        })(e)),
    }
}

/// The webhooks of `vwc` whose `caBundle` is not `ca_crt`.
fn stale_webhooks<'a>(vwc: &'a ValidatingWebhookConfiguration, ca_crt: &str) -> Vec<&'a str> {
    vwc.webhooks
        .iter()
        .flatten()
        .filter(|w| {
            w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_crt.as_bytes())
        })
        .map(|w| w.name.as_str())
        .collect()
}

fn bundle_state(vwc: &ValidatingWebhookConfiguration, held: Option<&Held>) -> Bundle {
    let ca_crt = held.map_or("", |h| h.material().ca_crt.as_str());
    if stale_webhooks(vwc, ca_crt).is_empty() {
        Bundle::Current
    } else {
        Bundle::Stale
    }
}

/// Writes `ca_crt` into the `caBundle` of each webhook that lacks it: a
/// strategic merge patch keyed by the webhooks' names, so that only
/// `caBundle` is idplane's (an Update under [`FIELD_MANAGER`]). Helm or
/// Argo CD applying the configuration without `caBundle` leave it be, and
/// may rename or drop webhooks freely.
async fn patch_bundle(
    configurations: &Api<ValidatingWebhookConfiguration>,
    vwc: &ValidatingWebhookConfiguration,
    ca_crt: &str,
) -> Result<(), SelfManagedError> {
    use base64::Engine as _;
    let name = vwc.metadata.name.clone().unwrap_or_default();
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_crt);
    let webhooks: Vec<serde_json::Value> = stale_webhooks(vwc, ca_crt)
        .into_iter()
        .map(|w| serde_json::json!({"name": w, "clientConfig": {"caBundle": bundle}}))
        .collect();
    let patch = serde_json::json!({"webhooks": webhooks});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    configurations
        .patch(&name, &params, &Patch::Strategic(patch))
        .await
        .map(|_| ())
        .map_err(|source| SelfManagedError::Kube {
            what: format!("patching the caBundle of ValidatingWebhookConfiguration {name}"),
            source,
        })
}

/// The Secret's four PEM texts (absent keys empty).
fn material(secret: &Secret) -> Material {
    let text = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    Material {
        ca_crt: text(CA_CRT),
        ca_key: text(CA_KEY),
        tls_crt: text(TLS_CRT),
        tls_key: text(TLS_KEY),
    }
}

/// Puts the Secret's serving pair in the slot when it changed and is
/// usable; an unusable pair leaves the slot as it was (it is about to be
/// renewed).
fn serve(held: &Held, slot: &CertSlot, served: &mut Option<(String, String)>) {
    let m = held.material();
    if served
        .as_ref()
        .is_some_and(|(crt, key)| crt == &m.tls_crt && key == &m.tls_key)
    {
        return;
    }
    match certified_key(m.tls_crt.as_bytes(), m.tls_key.as_bytes()) {
        Ok(key) => {
            slot.send_replace(Some(key));
            *served = Some((m.tls_crt.clone(), m.tls_key.clone()));
            tracing::info!(
                serial = %held.serving_serial().unwrap_or_default(),
                "webhook certificate: serving the Secret's certificate"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhook certificate: the Secret's tls.crt and tls.key are not usable; renewing");
        }
    }
}

/// Watches one object by name (a field selector, which RBAC grants by
/// resource name) until `stop`: the latest state, None until listed.
fn watch_named<K>(api: Api<K>, name: &str, stop: CancellationToken) -> Latest<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (tx, rx) = watch::channel(None);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let name = name.to_string();
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        let mut listed: Option<K> = None;
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = stream.next() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            match event {
                Ok(Event::Init) => listed = None,
                Ok(Event::InitApply(obj)) => listed = Some(obj),
                Ok(Event::InitDone) => {
                    tx.send_replace(Some(listed.take()));
                }
                Ok(Event::Apply(obj)) => {
                    tx.send_replace(Some(Some(obj)));
                }
                Ok(Event::Delete(_)) => {
                    tx.send_replace(Some(None));
                }
                Err(e) => {
                    tracing::warn!(object = %name, error = %e, "webhook certificate: watch error; retrying");
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        settings: SelfManagedSettings,
    }

    fn resolve(args: &[&str]) -> Result<Option<SelfManaged>, String> {
        let flags = Flags::try_parse_from(std::iter::once("idplane").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        flags.settings.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn settings() {
        assert!(
            resolve(&[]).unwrap().is_none(),
            "off without --webhook-secret"
        );
        let managed = resolve(&[
            "--webhook-secret=idplane-webhook-tls",
            "--webhook-namespace=ops",
            "--webhook-service=idplane-webhook",
            "--webhook-dns-name=127.0.0.1,webhook.example",
            "--webhook-configuration=idplane",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            managed.names,
            [
                "idplane-webhook",
                "idplane-webhook.ops",
                "idplane-webhook.ops.svc",
                "idplane-webhook.ops.svc.cluster.local",
                "127.0.0.1",
                "webhook.example"
            ]
        );
        assert_eq!(managed.configuration.as_deref(), Some("idplane"));
        assert_eq!(managed.validity.ca, Duration::from_secs(43_800 * 3600));
        assert_eq!(managed.validity.serving, Duration::from_secs(2160 * 3600));
        assert_eq!(managed.settle, Duration::from_secs(30));
        let short = resolve(&[
            "--webhook-secret=s",
            "--webhook-dns-name=127.0.0.1",
            "--webhook-ca-validity=3m",
            "--webhook-serving-validity=1m",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(short.settle, Duration::from_secs(6));
        for (args, error) in [
            (
                &["--webhook-secret=s"][..],
                "--webhook-secret needs --webhook-service",
            ),
            (
                &[
                    "--webhook-secret=s",
                    "--webhook-service=w",
                    "--webhook-serving-validity=20000h",
                ][..],
                "at most a third of --webhook-ca-validity",
            ),
            (
                &["--webhook-secret=s", "--webhook-dns-name=bad_name"][..],
                "is neither a DNS name nor an IP address",
            ),
            (&["--webhook-service=w"][..], "--webhook-secret"),
        ] {
            let e = resolve(args).unwrap_err();
            assert!(e.contains(error), "{args:?}: {e}");
        }
    }

    fn configuration(bundles: &[Option<&str>]) -> ValidatingWebhookConfiguration {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "idplane"},
            "webhooks": bundles.iter().enumerate().map(|(i, b)| {
                let mut config = serde_json::json!({"url": "https://127.0.0.1:9443/validate"});
                if let Some(b) = b {
                    use base64::Engine as _;
                    config["caBundle"] = base64::engine::general_purpose::STANDARD.encode(b).into();
                }
                serde_json::json!({
                    "name": format!("w{i}.idplane.dev"),
                    "clientConfig": config,
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                })
            }).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn only_webhooks_without_the_bundle_are_stale() {
        let ca = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        let vwc = configuration(&[Some(ca), None, Some("other")]);
        assert_eq!(
            stale_webhooks(&vwc, ca),
            ["w1.idplane.dev", "w2.idplane.dev"]
        );
        assert!(stale_webhooks(&configuration(&[Some(ca)]), ca).is_empty());
        assert!(stale_webhooks(&configuration(&[]), ca).is_empty());
    }
}
