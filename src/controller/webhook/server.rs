//! The webhook's HTTPS server: `POST` [`PATH`] takes an
//! `admission.k8s.io/v1` AdmissionReview and answers it with
//! [`review`](super::review)'s decision; `GET /healthz` answers `ok`.
//!
//! It reads the index's latest snapshot, never the Lease, so every replica
//! serves it. The only call it makes is for a Secret the candidate
//! references and the index does not hold (idplane reads only referenced
//! Secrets, so a Secret is unknown until an object names it): one `get`,
//! within the review's `timeout`; its key names are kept, its values
//! dropped at once. Each review has a span (`admission_review`) and is
//! counted by kind, operation and outcome.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use k8s_openapi::api::core::v1::Secret;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::response::{Status, StatusCause, StatusDetails};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::Instrument;

use super::review::{Decision, Live, Operation, Request as ReviewRequest, Review, SecretLookup};
use super::tls::{CertWatch, server_config};
use crate::index::Snapshot;
use crate::resources::GROUP;
use crate::telemetry::Metrics;

/// The path the apiserver posts reviews to. It shows in the apiserver's
/// error when the webhook cannot be reached ("failed calling webhook ...:
/// Post \"https://…/validate-or-kubectl-delete-…?timeout=5s\": …"), so it
/// names the way out when idplane cannot be brought back.
pub const PATH: &str = "/validate-or-kubectl-delete-validatingwebhookconfiguration-idplane";

/// The webhook's name in the ValidatingWebhookConfiguration: the
/// apiserver's error names it when idplane does not answer.
pub const WEBHOOK_NAME: &str = "idplane-must-be-running.idplane.dev";

/// The name of the second webhook, for deletes: `failurePolicy: Ignore`
/// (a delete is never refused, so an idplane that is down must not block
/// one, nor a namespace's deletion); it only adds warnings.
pub const DELETE_WEBHOOK_NAME: &str = "delete-warnings.idplane.dev";

/// Largest review accepted: two objects (new and old) of at most 1.5 MiB
/// each in etcd, in JSON, with room to spare.
pub const BODY_LIMIT: usize = 8 << 20;

/// Time a client has for the TLS handshake, and for a request's headers.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The Secret look-ups get the apiserver's `timeout` less this margin, so
/// that the answer arrives before the apiserver gives up.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

/// Look-ups without a `timeout` in the request get this long.
const DEFAULT_LOOKUP_BUDGET: Duration = Duration::from_secs(2);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    kind: String,
    operation: String,
    /// `allowed`, `warned`, `refused`, `starting` or `bad_request`.
    outcome: String,
}

/// The webhook's metrics, registered in the process's registry.
#[derive(Clone)]
pub struct WebhookMetrics {
    reviews: Family<ReviewLabels, Counter>,
    duration: Histogram,
}

impl WebhookMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            reviews: Family::default(),
            // 0.1 ms to about 3 s.
            duration: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
        };
        metrics.register(
            "admission_reviews",
            "Admission reviews by kind, operation and outcome: allowed, warned (allowed with warnings), refused, starting (refused before the index synced), bad_request",
            this.reviews.clone(),
        );
        metrics.register(
            "admission_review_duration_seconds",
            "Time from a review's arrival to its answer, Secret look-ups included",
            this.duration.clone(),
        );
        this
    }

    fn count(&self, kind: &str, operation: &str, outcome: &str) {
        self.reviews
            .get_or_create(&ReviewLabels {
                kind: kind.into(),
                operation: operation.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

/// What the server reads.
#[derive(Clone)]
pub struct Webhook {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The namespaces idplane watches; all when empty.
    pub namespaces: Vec<String>,
    /// For the Secrets the index does not hold; without it they are
    /// warned about as not read.
    pub client: Option<kube::Client>,
    pub metrics: WebhookMetrics,
}

/// The webhook's routes.
pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route(PATH, post(review))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(webhook)
}

/// `?timeout=10s`, as the apiserver sends it.
#[derive(serde::Deserialize)]
struct ReviewQuery {
    timeout: Option<String>,
}

async fn review(
    State(webhook): State<Arc<Webhook>>,
    Query(query): Query<ReviewQuery>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let request: AdmissionRequest<DynamicObject> =
        match serde_json::from_slice::<AdmissionReview<DynamicObject>>(&body)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                r.try_into()
                    .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| e.to_string())
            }) {
            Ok(r) => r,
            Err(e) => {
                webhook.metrics.count("", "", "bad_request");
                return (
                    StatusCode::BAD_REQUEST,
                    format!("not an admission.k8s.io/v1 AdmissionReview: {e}"),
                )
                    .into_response();
            }
        };
    let budget = query
        .timeout
        .as_deref()
        .and_then(|t| crate::resources::parse_duration(t).ok())
        .map_or(DEFAULT_LOOKUP_BUDGET, |t| {
            t.checked_sub(ANSWER_MARGIN).unwrap_or(t / 2)
        });
    let namespace = request.namespace.clone().unwrap_or_default();
    let span = tracing::info_span!(
        "admission_review",
        uid = %request.uid,
        kind = %request.kind.kind,
        namespace = %namespace,
        name = %request.name,
        operation = ?request.operation,
        dry_run = request.dry_run,
        outcome = tracing::field::Empty,
    );
    // The span is entered only while this review runs: the Secret look-up
    // below awaits, and an entered guard would stay on the worker thread.
    async {
        let object = request.object.as_ref().map(|o| as_value(o, &request));
        let old_object = request.old_object.as_ref().map(|o| as_value(o, &request));
        let operation = operation(&request);
        let review = Review::new(ReviewRequest {
            operation,
            kind: &request.kind.kind,
            namespace: &namespace,
            subresource: request.sub_resource.as_deref(),
            object: object.as_ref(),
            old_object: old_object.as_ref(),
        });
        let snapshot = webhook.snapshots.borrow().clone();
        let org = snapshot.sources.get(&namespace).map(|o| o.as_ref());
        let unseen = review.unseen_secrets(org);
        let looked_up = match (&webhook.client, unseen.is_empty()) {
            (Some(client), false) => {
                look_up(client, &namespace, unseen.into_iter().collect(), budget).await
            }
            _ => BTreeMap::new(),
        };
        let decision = review.decide(&Live {
            synced: snapshot.synced,
            watched: webhook.namespaces.is_empty() || webhook.namespaces.contains(&namespace),
            org,
            looked_up: &looked_up,
        });
        let outcome = decision.outcome();
        span.record("outcome", outcome);
        match &decision.refusal {
            Some(r) => tracing::info!(message = %r.message, "admission refused"),
            None => tracing::debug!(warnings = decision.warnings.len(), "admission allowed"),
        }
        webhook
            .metrics
            .count(&request.kind.kind, operation.as_str(), outcome);
        let answer = answer(&request, decision).into_review();
        webhook
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        axum::Json(answer).into_response()
    }
    .instrument(span.clone())
    .await
}

/// The object as the validator reads it, with apiVersion and kind.
fn as_value(object: &DynamicObject, request: &AdmissionRequest<DynamicObject>) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.entry("apiVersion").or_insert_with(|| {
            Value::String(format!("{}/{}", request.kind.group, request.kind.version))
        });
        map.entry("kind")
            .or_insert_with(|| Value::String(request.kind.kind.clone()));
    }
    value
}

fn operation(request: &AdmissionRequest<DynamicObject>) -> Operation {
    use kube::core::admission::Operation as K;
    match request.operation {
        K::Create => Operation::Create,
        K::Update => Operation::Update,
        K::Delete => Operation::Delete,
        K::Connect => Operation::Connect,
    }
}

/// The decision as an AdmissionResponse: a refusal is a `Status` whose
/// causes name each field, which kubectl prints as
/// `The KIND "NAME" is invalid: FIELD: MESSAGE`.
fn answer(request: &AdmissionRequest<DynamicObject>, decision: Decision) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(request);
    if let Some(refusal) = decision.refusal {
        let details = StatusDetails {
            name: request.name.clone(),
            group: GROUP.to_string(),
            kind: request.kind.kind.clone(),
            uid: String::new(),
            causes: refusal
                .causes
                .into_iter()
                .map(|c| StatusCause {
                    reason: "FieldValueInvalid".into(),
                    message: c.message,
                    field: c.field,
                })
                .collect(),
            // While starting: clients that honour Retry-After try again.
            retry_after_seconds: if refusal.code == 503 { 2 } else { 0 },
        };
        response = response.deny(&refusal.message);
        response.result = Status::failure(&refusal.message, refusal.reason)
            .with_code(refusal.code)
            .with_details(details);
    }
    if !decision.warnings.is_empty() {
        response.warnings = Some(decision.warnings);
    }
    response
}

/// Looks the Secrets up at once, within `budget`; only their key names
/// are kept.
async fn look_up(
    client: &kube::Client,
    namespace: &str,
    names: Vec<String>,
    budget: Duration,
) -> BTreeMap<String, SecretLookup> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let lookups = names.iter().map(|name| {
        let api = api.clone();
        async move {
            let result = match tokio::time::timeout(budget, api.get_opt(name)).await {
                Err(_) => SecretLookup::Unreadable("no answer within the review's timeout".into()),
                Ok(Err(kube::Error::Api(status))) => SecretLookup::Unreadable(format!(
                    "{} {}",
                    status.code,
                    status.reason.to_lowercase()
                )),
                Ok(Err(e)) => SecretLookup::Unreadable(format!("apiserver: {e}")),
                Ok(Ok(None)) => SecretLookup::Missing,
                Ok(Ok(Some(secret))) => SecretLookup::Found(
                    secret
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, _)| k.clone())
                        .chain(secret.string_data.iter().flatten().map(|(k, _)| k.clone()))
                        .collect(),
                ),
            };
            (name.clone(), result)
        }
    });
    futures::future::join_all(lookups)
        .await
        .into_iter()
        .collect()
}

/// Binds `listen` and serves the webhook with the certificate in `cert`
/// until the process ends: it keeps answering during a graceful stop, as
/// the apiserver may still send reviews to a replica on its way out.
pub async fn start(
    listen: SocketAddr,
    webhook: Webhook,
    cert: CertWatch,
) -> Result<tokio::task::JoinHandle<()>, WebhookError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: listen,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(listen);
    eprintln!("webhook listening on {bound}");
    let app = router(Arc::new(webhook));
    let tls = TlsAcceptor::from(server_config(cert));
    Ok(tokio::spawn(serve(listener, app, tls)))
}

/// Accepts connections, each in its own task.
pub async fn serve(listener: TcpListener, app: Router, tls: TlsAcceptor) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a webhook connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(READ_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "webhook TLS handshake timed out");
                    return;
                }
            };
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        let response = app.oneshot(request.map(Body::new)).await;
                        Ok::<_, Infallible>(match response {
                            Ok(r) => r,
                            Err(never) => match never {},
                        })
                    }
                });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT);
            // Pings find an apiserver that went away without closing.
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}
