//! The status writer: one task that turns snapshots into status writes,
//! only while this replica leads (see [`super::lease`]). Each object whose
//! status changed joins a queue as soon as a snapshot shows it, and up to
//! `concurrency` writes are in flight at once: the pipeline never waits for
//! a whole batch, so status converges at the apiserver's own speed. A token
//! bucket (a sustained rate with a large burst) caps write storms, and when
//! the apiserver sheds load (429, or any answer with `Retry-After`, as API
//! Priority and Fairness sends) every write pauses for the time it asks, or
//! a doubling backoff. Transitions that deserve it become Events
//! ([`super::events`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http_body_util::BodyExt;
use kube::Client;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use serde_json::{Value, json};
use tokio::sync::{RwLock, mpsc, watch};
use tracing::Instrument;
// Tokio's clock, as the loop's timers use: tests can pause it.
use tokio::time::Instant;

use super::conditions::desired_status;
use super::events::{Notice, Severity, notice};
use super::module_fields::ModuleFields;
use crate::index::{ObjectView, Snapshot};
use crate::resources::API_VERSION;
use crate::resources::ObjectKey;
use crate::store::{LogEntry, Store};
use crate::telemetry::Metrics;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "idplane";

/// The longest pause after the apiserver shed load, whatever it asks.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// The longest wait before writing again an object whose write failed.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Errors writing status.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("apiserver: {0}")]
    Kube(#[from] kube::Error),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Only idplane's kinds have a status idplane writes.
    #[error("{0}: not a kind idplane owns")]
    NotOwned(ObjectKey),
    /// The apiserver sheds load: 429, or an answer with `Retry-After`.
    #[error("the apiserver asks to slow down (HTTP {code}{})", after_text(.retry_after))]
    Throttled {
        code: u16,
        retry_after: Option<Duration>,
    },
}

fn after_text(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {d:?}"))
        .unwrap_or_default()
}

/// The API resource to write `key`'s status through: only idplane's kinds
/// have a status it writes.
fn api_resource_of(key: &ObjectKey) -> Result<kube::core::ApiResource, WriteError> {
    key.owned_kind()
        .map(crate::resources::api_resource)
        .ok_or_else(|| WriteError::NotOwned(key.clone()))
}

/// The body of a JSON merge patch that makes an object's status `desired`:
/// every field of it, and `null` for each top-level field the object shows
/// (`observed`) that `desired` no longer has. Lists (conditions) are
/// replaced whole, as merge patches do.
fn merge_body(desired: &Value, observed: Option<&Value>) -> Value {
    let mut status = desired.clone();
    if let (Some(status), Some(observed)) =
        (status.as_object_mut(), observed.and_then(Value::as_object))
    {
        for field in observed.keys() {
            if !status.contains_key(field) {
                status.insert(field.clone(), Value::Null);
            }
        }
    }
    json!({ "status": status })
}

/// Patches one object's status (a JSON merge patch: for the apiserver the
/// cheapest write, measured in the convergence benchmark), reading the
/// answer itself so that a `Retry-After` header is not lost (kube's typed
/// calls keep only the body).
async fn patch_status(
    client: &Client,
    key: &ObjectKey,
    status: &Value,
    observed: Option<&Value>,
) -> Result<(), WriteError> {
    let ar = api_resource_of(key)?;
    let collection = format!(
        "/apis/{}/namespaces/{}/{}",
        ar.api_version, key.namespace, ar.plural
    );
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let request = kube::core::Request::new(collection)
        .patch_subresource(
            "status",
            &key.name,
            &params,
            &Patch::Merge(merge_body(status, observed)),
        )
        .map_err(kube::Error::BuildRequest)?;
    let response = client.send(request.map(kube::client::Body::from)).await?;
    let code = response.status();
    let header = response
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = response.into_body().collect().await?.to_bytes();
    if code.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&bytes);
    let status = serde_json::from_str::<kube::core::Status>(&text)
        .unwrap_or_else(|_| kube::core::Status::failure(text.trim(), "").with_code(code.as_u16()));
    let retry_after = header.or_else(|| {
        let seconds = status.details.as_ref()?.retry_after_seconds;
        (seconds > 0).then(|| Duration::from_secs(u64::from(seconds)))
    });
    if code == hyper::StatusCode::TOO_MANY_REQUESTS || retry_after.is_some() {
        return Err(WriteError::Throttled {
            code: code.as_u16(),
            retry_after,
        });
    }
    Err(WriteError::Kube(kube::Error::Api(Box::new(status))))
}

/// Where statuses and transition events go.
#[derive(Clone)]
pub enum StatusSink {
    /// The status subresource (a merge patch) and `events.k8s.io/v1`.
    /// The client should not retry by itself (`Config::default_retry`
    /// off): the writer pauses every write when one is throttled.
    Kube {
        client: Client,
        recorder: Box<Recorder>,
    },
    /// The SQLite store and the org's system log (`run --manifests`).
    Store(Store),
    /// Tests: each write and event kept in memory.
    #[cfg(test)]
    Recording(tests::RecordingSink),
}

impl StatusSink {
    pub fn kube(client: Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: "idplane".into(),
            instance: Some(instance.to_string()),
        };
        Self::Kube {
            recorder: Box::new(Recorder::new(client.clone(), reporter)),
            client,
        }
    }

    /// Whether the writer's own record is the only copy of what it wrote
    /// (run mode: files carry no status). In a cluster the objects bring
    /// their status back through the watch.
    fn keeps_written(&self) -> bool {
        match self {
            Self::Kube { .. } => false,
            Self::Store(_) => true,
            #[cfg(test)]
            Self::Recording(sink) => sink.keeps_written,
        }
    }

    async fn write(
        &self,
        key: &ObjectKey,
        view: &ObjectView,
        status: &Value,
        now: &str,
    ) -> Result<(), WriteError> {
        match self {
            Self::Kube { client, .. } => {
                patch_status(client, key, status, view.observed_status.as_deref()).await
            }
            Self::Store(store) => Ok(store.save_status(key, status, now).await?),
            #[cfg(test)]
            Self::Recording(sink) => sink.write(key, status),
        }
    }

    /// Publishes an Event (run mode: a line of the org's system log). An
    /// Event that cannot be published is logged and dropped, never retried.
    async fn event(&self, key: &ObjectKey, uid: Option<String>, notice: &Notice, now: &str) {
        let warning = notice.severity == Severity::Warning;
        match self {
            Self::Kube { recorder, .. } => {
                let reference = k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some(API_VERSION.into()),
                    kind: Some(key.kind.clone()),
                    name: Some(key.name.clone()),
                    namespace: Some(key.namespace.clone()),
                    uid,
                    ..Default::default()
                };
                let event = KubeEvent {
                    type_: if warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: notice.reason.clone(),
                    note: Some(notice.message.chars().take(1000).collect()),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&event, &reference).await {
                    tracing::warn!(object = %key, error = %e, "cannot publish event");
                }
            }
            Self::Store(store) => {
                let entry = LogEntry {
                    org: key.namespace.clone(),
                    type_: "object.transition".into(),
                    outcome: if warning { "WARNING" } else { "INFO" }.into(),
                    time: now.to_string(),
                    subject: format!("{}/{}", key.kind, key.name),
                    detail: json!({"reason": notice.reason, "message": notice.message, "kind": key.kind, "name": key.name}),
                };
                if let Err(e) = store.log(&entry).await {
                    tracing::warn!(object = %key, error = %e, "cannot log event");
                }
            }
            #[cfg(test)]
            Self::Recording(sink) => sink.event(key, &notice.reason),
        }
    }
}

/// Settings of the writer.
#[derive(Clone, Debug)]
pub struct WriterSettings {
    /// Sustained status writes per second (the token bucket's refill).
    pub writes_per_second: u32,
    /// Writes allowed at once above the sustained rate (the bucket's size;
    /// it starts full).
    pub burst: u32,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// How long to gather snapshots before looking at what changed.
    pub batch_window: Duration,
}

impl WriterSettings {
    /// The defaults of `idplane operator` and `run`.
    pub const DEFAULT_WRITES_PER_SECOND: u32 = 200;
    pub const DEFAULT_BURST: u32 = 10_000;
    pub const DEFAULT_CONCURRENCY: usize = 16;
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            writes_per_second: Self::DEFAULT_WRITES_PER_SECOND,
            burst: Self::DEFAULT_BURST,
            concurrency: Self::DEFAULT_CONCURRENCY,
            batch_window: Duration::from_millis(20),
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` kept; full at
/// the start.
#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            rate: f64::from(rate.max(1)),
            burst,
            at: now,
        }
    }

    /// Takes a token, or tells when the next one comes.
    fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// How long every write waits after the apiserver shed load for the
/// `in_a_row`-th time (1 for the first) without a success between: the
/// `Retry-After` it gave, else one second doubling each time; at most
/// [`MAX_PAUSE`].
fn pause_after(retry_after: Option<Duration>, in_a_row: u32) -> Duration {
    let backoff = || Duration::from_secs(1u64 << in_a_row.saturating_sub(1).min(6));
    retry_after.unwrap_or_else(backoff).min(MAX_PAUSE)
}

/// How long to wait before writing again an object whose write failed for
/// the `failures`-th time in a row: one second doubling, at most
/// [`MAX_RETRY`].
fn retry_after_failure(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_RETRY)
}

/// Statuses as last written by this process in run mode, readable by the
/// API (in a cluster the objects carry them).
pub type WrittenStatuses = Arc<RwLock<HashMap<ObjectKey, Value>>>;

/// One org's object views, as a snapshot shares them.
type OrgViews = Arc<BTreeMap<ObjectKey, ObjectView>>;

/// A write that finished.
struct Done {
    key: ObjectKey,
    view: ObjectView,
    desired: Value,
    result: Result<(), WriteError>,
}

/// An Event to publish once its status is written.
struct PendingEvent {
    key: ObjectKey,
    uid: Option<String>,
    notice: Notice,
    now: String,
}

/// Publishes Events one at a time, in the order their statuses landed.
/// Their own task, behind the status writes: under a burst the statuses
/// (what `kubectl wait`, Argo CD and Flux read) are not held up by Events
/// sharing their slots, and the apiserver meets Events one by one instead
/// of up to a slot each. The channel is unbounded: an Event follows a
/// status write, and those are bounded by the token bucket.
async fn publish_events(sink: StatusSink, mut pending: mpsc::UnboundedReceiver<PendingEvent>) {
    while let Some(e) = pending.recv().await {
        let span = tracing::info_span!("event", object = %e.key, reason = %e.notice.reason);
        sink.event(&e.key, e.uid, &e.notice, &e.now)
            .instrument(span)
            .await;
    }
}

/// Where a landed write is told: its count, and its Event.
struct Reports {
    metrics: Arc<Metrics>,
    events: mpsc::UnboundedSender<PendingEvent>,
}

/// Writes one status, then hands its Event, if it has one, to
/// [`publish_events`].
async fn write_one(
    sink: StatusSink,
    key: ObjectKey,
    view: ObjectView,
    desired: Value,
    notice: Option<Notice>,
    now: String,
    reports: Reports,
) -> Done {
    // One span per write: the object's key.
    let span = tracing::info_span!("status_write", object = %key);
    async move {
        let result = sink.write(&key, &view, &desired, &now).await;
        if result.is_ok() {
            reports.metrics.status_write("ok");
            if let Some(notice) = notice {
                // Gone only when the writer itself is.
                let _ = reports.events.send(PendingEvent {
                    key: key.clone(),
                    uid: view.uid.clone(),
                    notice,
                    now,
                });
            }
        }
        Done {
            key,
            view,
            desired,
            result,
        }
    }
    .instrument(span)
    .await
}

/// The writer's state between two turns of its loop.
struct Writer {
    sink: StatusSink,
    /// To [`publish_events`].
    events: mpsc::UnboundedSender<PendingEvent>,
    settings: WriterSettings,
    module_fields: Arc<ModuleFields>,
    written: WrittenStatuses,
    metrics: Arc<Metrics>,
    leading: bool,
    /// Each org's views as last looked at: an org still sharing them is
    /// skipped.
    seen_orgs: HashMap<String, OrgViews>,
    /// Each object's view when its status was last written or found right.
    last_views: HashMap<ObjectKey, ObjectView>,
    /// What this process last wrote, as a hash (memory stays small).
    written_hash: HashMap<ObjectKey, u64>,
    /// Objects to look at, oldest first, each once.
    queue: VecDeque<ObjectKey>,
    queued: HashSet<ObjectKey>,
    /// Objects being written; one changed meanwhile goes to `again`.
    in_flight: HashSet<ObjectKey>,
    again: HashSet<ObjectKey>,
    /// Objects whose write failed: failures in a row, and when to retry.
    failed: HashMap<ObjectKey, (u32, Instant)>,
    bucket: Bucket,
    /// No write starts before this (the apiserver shed load).
    paused_until: Option<Instant>,
    throttled_in_a_row: u32,
}

impl Writer {
    fn enqueue(&mut self, key: ObjectKey) {
        if self.queued.insert(key.clone()) {
            self.queue.push_back(key);
        }
    }

    /// Leading again (or for the first time): another replica may have
    /// written meanwhile, so everything is compared with what the objects
    /// show.
    async fn start_term(&mut self) {
        self.leading = true;
        self.seen_orgs.clear();
        self.last_views.clear();
        self.written_hash.clear();
        if !self.sink.keeps_written() {
            self.written.write().await.clear();
        }
    }

    fn end_term(&mut self) {
        self.leading = false;
        self.queue.clear();
        self.queued.clear();
        self.again.clear();
        self.failed.clear();
    }

    /// Queues every object whose view changed since it was last written or
    /// found right, and those whose runtime module fields changed; forgets
    /// deleted objects.
    async fn scan(&mut self, snapshot: &Snapshot) {
        if !snapshot.synced {
            return;
        }
        let mut gone = Vec::new();
        let mut orgs = HashSet::new();
        for (org, views) in snapshot.objects.orgs() {
            orgs.insert(org.as_str());
            let before = self.seen_orgs.get(org);
            if before.is_some_and(|b| Arc::ptr_eq(b, views)) {
                continue;
            }
            if let Some(before) = before {
                gone.extend(before.keys().filter(|k| !views.contains_key(*k)).cloned());
            }
            for (key, view) in views.iter() {
                if self.last_views.get(key) != Some(view) {
                    self.enqueue(key.clone());
                }
            }
            self.seen_orgs.insert(org.clone(), views.clone());
        }
        let orgs_gone: Vec<String> = self
            .seen_orgs
            .keys()
            .filter(|o| !orgs.contains(o.as_str()))
            .cloned()
            .collect();
        for org in orgs_gone {
            if let Some(views) = self.seen_orgs.remove(&org) {
                gone.extend(views.keys().cloned());
            }
        }
        for key in self.module_fields.take_dirty() {
            if snapshot.objects.contains_key(&key) {
                self.enqueue(key);
            }
        }
        if !gone.is_empty() {
            let mut written = self.written.write().await;
            for key in &gone {
                self.last_views.remove(key);
                self.written_hash.remove(key);
                self.failed.remove(key);
                written.remove(key);
            }
        }
    }

    /// Starts writes from the queue while there is room, no pause and a
    /// token; returns when the next token comes if it ran out.
    async fn dispatch(
        &mut self,
        snapshot: &Snapshot,
        in_flight: &mut FuturesUnordered<futures::future::BoxFuture<'static, Done>>,
    ) -> Option<Instant> {
        let now = Instant::now();
        if self.paused_until.is_some_and(|until| until > now) {
            return None;
        }
        self.paused_until = None;
        let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        while in_flight.len() < self.settings.concurrency.max(1) {
            let key = self.queue.pop_front()?;
            self.queued.remove(&key);
            if self.in_flight.contains(&key) {
                self.again.insert(key);
                continue;
            }
            if self.failed.get(&key).is_some_and(|(_, at)| *at > now) {
                continue; // its retry time puts it back
            }
            let Some(view) = snapshot.objects.get(&key) else {
                continue; // deleted
            };
            // In a cluster the object's own status is the record; only run
            // mode (no status on files) needs the full written status.
            let mine = if self.sink.keeps_written() {
                self.written.read().await.get(&key).cloned()
            } else {
                None
            };
            let previous = mine
                .clone()
                .or_else(|| view.observed_status.as_deref().cloned());
            let desired = desired_status(
                &key,
                view,
                self.module_fields.get(&key).as_ref(),
                previous.as_ref(),
                &stamp,
            );
            // The cluster is the truth: skip when it already shows the
            // status, or when we wrote it and nobody changed it since (the
            // echo of our write may still be on its way).
            let observed = view.observed_status.as_deref();
            let observed_agrees = observed == Some(&desired);
            let observed_seen = self
                .last_views
                .get(&key)
                .is_some_and(|v| v.observed_status.as_deref() == observed);
            let mine_agrees = mine.as_ref() == Some(&desired)
                || self.written_hash.get(&key).copied()
                    == Some(crate::index::snapshot_writer::hash_of(Some(&desired)));
            if observed_agrees || (mine_agrees && (observed.is_none() || observed_seen)) {
                self.metrics.status_write("unchanged");
                self.last_views.insert(key, view.clone());
                continue;
            }
            if let Err(next) = self.bucket.take(now) {
                self.queued.insert(key.clone());
                self.queue.push_front(key);
                return Some(next);
            }
            let notice = notice(previous.as_ref(), &desired);
            self.in_flight.insert(key.clone());
            in_flight.push(Box::pin(write_one(
                self.sink.clone(),
                key,
                view.clone(),
                desired,
                notice,
                stamp.clone(),
                Reports {
                    metrics: self.metrics.clone(),
                    events: self.events.clone(),
                },
            )));
        }
        None
    }

    /// Records a finished write: a success, a deletion, a throttle (every
    /// write pauses) or a failure (this object is retried later).
    async fn finish(&mut self, done: Done) {
        let Done {
            key,
            view,
            desired,
            result,
        } = done;
        self.in_flight.remove(&key);
        if self.again.remove(&key) {
            self.enqueue(key.clone());
        }
        match result {
            Ok(()) => {
                self.throttled_in_a_row = 0;
                self.failed.remove(&key);
                self.written_hash.insert(
                    key.clone(),
                    crate::index::snapshot_writer::hash_of(Some(&desired)),
                );
                if self.sink.keeps_written() {
                    self.written.write().await.insert(key.clone(), desired);
                }
                self.last_views.insert(key, view);
            }
            Err(WriteError::Kube(kube::Error::Api(e))) if e.code == 404 => {
                // Deleted meanwhile; the watch will tell the index.
                self.metrics.status_write("gone");
            }
            Err(WriteError::Throttled { retry_after, .. }) => {
                self.metrics.status_write("throttled");
                self.throttled_in_a_row += 1;
                let pause = pause_after(retry_after, self.throttled_in_a_row);
                let until = Instant::now() + pause;
                if self.paused_until.is_none_or(|p| p < until) {
                    tracing::warn!(object = %key, pause = ?pause, "the apiserver sheds load; status writes pause");
                    self.paused_until = Some(until);
                }
                if self.queued.insert(key.clone()) {
                    self.queue.push_front(key);
                }
            }
            Err(e) => {
                self.metrics.status_write("error");
                self.metrics.error("status_write");
                let failures = self.failed.get(&key).map_or(0, |(n, _)| *n) + 1;
                let wait = retry_after_failure(failures);
                tracing::warn!(object = %key, error = %e, retry_in = ?wait, "status write failed; will retry");
                self.failed
                    .insert(key.clone(), (failures, Instant::now() + wait));
            }
        }
    }

    /// Queues the failed writes whose time has come; returns the next such
    /// time.
    fn release_retries(&mut self, now: Instant) -> Option<Instant> {
        let due: Vec<ObjectKey> = self
            .failed
            .iter()
            .filter(|(k, (_, at))| *at <= now && !self.queued.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.enqueue(key);
        }
        self.failed
            .values()
            .map(|(_, at)| *at)
            .filter(|at| *at > now)
            .min()
    }
}

/// Runs the writer until the snapshot channel closes.
pub async fn run(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    module_fields: Arc<ModuleFields>,
    mut leader: watch::Receiver<bool>,
    sink: StatusSink,
    settings: WriterSettings,
    written: WrittenStatuses,
    metrics: Arc<Metrics>,
) {
    let (events, pending) = mpsc::unbounded_channel();
    tokio::spawn(publish_events(sink.clone(), pending));
    let mut w = Writer {
        bucket: Bucket::new(settings.writes_per_second, settings.burst, Instant::now()),
        events,
        sink,
        settings,
        module_fields: module_fields.clone(),
        written,
        metrics,
        leading: false,
        seen_orgs: HashMap::new(),
        last_views: HashMap::new(),
        written_hash: HashMap::new(),
        queue: VecDeque::new(),
        queued: HashSet::new(),
        in_flight: HashSet::new(),
        again: HashSet::new(),
        failed: HashMap::new(),
        paused_until: None,
        throttled_in_a_row: 0,
    };
    let mut in_flight = FuturesUnordered::new();
    // When to look at the latest snapshot (the batch window after a change).
    let mut scan_at: Option<Instant> = None;
    let mut next_token: Option<Instant> = None;
    let mut next_retry: Option<Instant> = None;
    let leads = *leader.borrow_and_update();
    w.metrics.leader.set(i64::from(leads));
    if leads {
        w.start_term().await;
        scan_at = Some(Instant::now());
    }
    loop {
        let waiting = !w.queue.is_empty();
        let wake = [
            scan_at,
            w.paused_until.filter(|_| waiting),
            next_token.filter(|_| waiting),
            next_retry,
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            r = snapshots.changed() => {
                if r.is_err() {
                    return;
                }
                snapshots.borrow_and_update();
                if w.leading {
                    scan_at.get_or_insert(Instant::now() + w.settings.batch_window);
                }
            }
            () = module_fields.changed.notified() => {
                if w.leading {
                    scan_at.get_or_insert(Instant::now() + w.settings.batch_window);
                }
            }
            r = leader.changed() => {
                if r.is_err() {
                    return;
                }
                let leads = *leader.borrow_and_update();
                w.metrics.leader.set(i64::from(leads));
                if leads && !w.leading {
                    w.start_term().await;
                    scan_at = Some(Instant::now());
                } else if !leads && w.leading {
                    w.end_term();
                    scan_at = None;
                }
            }
            Some(done) = in_flight.next() => w.finish(done).await,
            () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
        }
        if !w.leading {
            continue;
        }
        let now = Instant::now();
        let snapshot = snapshots.borrow().clone();
        if scan_at.is_some_and(|at| at <= now) {
            scan_at = None;
            w.scan(&snapshot).await;
        }
        next_retry = w.release_retries(now);
        next_token = w.dispatch(&snapshot, &mut in_flight).await;
    }
}

/// Loads the statuses a previous run stored (run mode), so transition times
/// survive restarts.
pub async fn preload(
    store: &Store,
    written: &WrittenStatuses,
) -> Result<(), crate::store::StoreError> {
    let loaded = store.load_statuses().await?;
    written.write().await.extend(loaded);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The loop against a [`RecordingSink`] on tokio's paused clock: the
    //! snapshots come from a real [`IndexWriter`], the Lease from a watch
    //! channel the test holds.

    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::index::{Change, IndexWriter};

    #[test]
    fn only_idplanes_kinds_have_a_status_to_write() {
        let secret = ObjectKey {
            kind: "Secret".into(),
            namespace: "acme".into(),
            name: "hook-token".into(),
        };
        let refused = api_resource_of(&secret).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "Secret acme/hook-token: not a kind idplane owns"
        );
        let hook = ObjectKey::new(crate::resources::Kind::TelephonyHook, "acme", "primary");
        assert_eq!(api_resource_of(&hook).unwrap().kind, "TelephonyHook");
    }

    /// One status the sink took, and when (tokio's clock).
    #[derive(Clone, Debug)]
    struct Written {
        key: ObjectKey,
        status: Value,
        at: Instant,
    }

    /// A sink that keeps each write and event in memory, in order; it can
    /// refuse the next writes.
    #[derive(Clone, Default)]
    pub struct RecordingSink {
        /// Behave as run mode's sink (the writer keeps what it wrote)
        /// rather than a cluster's (the objects bring it back).
        pub(super) keeps_written: bool,
        writes: Arc<Mutex<Vec<Written>>>,
        /// Each event: the object, its reason, and how many writes the
        /// sink had taken when it came.
        events: Arc<Mutex<Vec<(ObjectKey, String, usize)>>>,
        refusals_left: Arc<AtomicUsize>,
        /// The next writes answered as the apiserver answers when it sheds
        /// load, with this Retry-After. Not a real 429: the test apiserver's
        /// API Priority and Fairness exempts its admin, and making it shed
        /// load on a shared machine would slow every other test.
        throttles_left: Arc<AtomicUsize>,
        retry_after: Option<Duration>,
    }

    impl RecordingSink {
        pub(super) fn write(&self, key: &ObjectKey, status: &Value) -> Result<(), WriteError> {
            let refuse = self
                .refusals_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refuse {
                return Err(WriteError::Store(crate::store::StoreError::Sql(
                    sqlx::Error::PoolTimedOut,
                )));
            }
            let throttle = self
                .throttles_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if throttle {
                return Err(WriteError::Throttled {
                    code: 429,
                    retry_after: self.retry_after,
                });
            }
            self.writes.lock().unwrap().push(Written {
                key: key.clone(),
                status: status.clone(),
                at: Instant::now(),
            });
            Ok(())
        }

        pub(super) fn event(&self, key: &ObjectKey, reason: &str) {
            let writes = self.writes.lock().unwrap().len();
            let mut events = self.events.lock().unwrap();
            events.push((key.clone(), reason.to_string(), writes));
        }

        /// The writes by time, those of one moment (one batch, written
        /// concurrently) by object.
        fn writes(&self) -> Vec<Written> {
            let mut writes = self.writes.lock().unwrap().clone();
            writes.sort_by(|a, b| (a.at, &a.key).cmp(&(b.at, &b.key)));
            writes
        }

        fn names_written(&self) -> Vec<String> {
            self.writes().into_iter().map(|w| w.key.name).collect()
        }
    }

    /// The name of the n-th policy.
    fn name(n: u32) -> String {
        format!("p{n}")
    }

    fn key(n: u32) -> ObjectKey {
        ObjectKey {
            kind: "EnrollmentPolicy".into(),
            namespace: "acme".into(),
            name: name(n),
        }
    }

    /// The n-th EnrollmentPolicy of org acme (priority n) at `generation`.
    fn policy(n: u32, generation: i64) -> Value {
        json!({
            "apiVersion": API_VERSION, "kind": "EnrollmentPolicy",
            "metadata": {"name": name(n), "namespace": "acme", "generation": generation, "uid": format!("uid-{n}")},
            "spec": {"priority": n, "description": format!("generation {generation}"), "groups": [name(n)],
                     "authenticators": [{"key": "okta_email", "enroll": "REQUIRED"}]}
        })
    }

    /// [`policy`] with another priority.
    fn policy_at(n: u32, generation: i64, priority: u32) -> Value {
        let mut p = policy(n, generation);
        p["spec"]["priority"] = json!(priority);
        p
    }

    /// The writer running against a recording sink, with the index, the
    /// Lease and the runtime modules' fields in the test's hands.
    struct Harness {
        index: IndexWriter,
        /// Each object as last given to the index, by name.
        objects: BTreeMap<String, Value>,
        snapshots: watch::Sender<Arc<Snapshot>>,
        leader: watch::Sender<bool>,
        module_fields: Arc<ModuleFields>,
        sink: RecordingSink,
        written: WrittenStatuses,
        metrics: Arc<Metrics>,
    }

    impl Harness {
        /// The writer with an empty, synced index; the Lease held or not.
        fn start(sink: RecordingSink, settings: WriterSettings, leading: bool) -> Harness {
            Self::start_with(sink, settings, leading, WrittenStatuses::default())
        }

        /// [`Harness::start`] with statuses a previous run wrote.
        fn start_with(
            sink: RecordingSink,
            settings: WriterSettings,
            leading: bool,
            written: WrittenStatuses,
        ) -> Harness {
            let mut index = IndexWriter::new(Default::default());
            index.apply(Change::Synced);
            let (snapshots, snapshots_rx) = watch::channel(Arc::new(index.publish()));
            let (leader, leader_rx) = watch::channel(leading);
            let module_fields = Arc::new(ModuleFields::default());
            let metrics = Arc::new(Metrics::new());
            tokio::spawn(run(
                snapshots_rx,
                module_fields.clone(),
                leader_rx,
                StatusSink::Recording(sink.clone()),
                settings,
                written.clone(),
                metrics.clone(),
            ));
            Harness {
                index,
                objects: BTreeMap::new(),
                snapshots,
                leader,
                module_fields,
                sink,
                written,
                metrics,
            }
        }

        /// Gives the index these objects (a `status` in one is what the
        /// cluster shows of it) and publishes a snapshot.
        fn upsert(&mut self, objects: impl IntoIterator<Item = Value>) {
            for object in objects {
                let name = object["metadata"]["name"].as_str().unwrap().to_string();
                self.index.apply(Change::Upsert(object.clone()));
                self.objects.insert(name, object);
            }
            self.snapshots.send(Arc::new(self.index.publish())).unwrap();
        }

        /// The watch's echo of the writes: each object written to shows the
        /// status last written to it.
        fn echo(&mut self) {
            let mut last = BTreeMap::new();
            for w in self.sink.writes() {
                last.insert(w.key.name, w.status);
            }
            let echoed: Vec<Value> = last
                .into_iter()
                .map(|(name, status)| {
                    let mut object = self.objects[&name].clone();
                    object["status"] = status;
                    object
                })
                .collect();
            self.upsert(echoed);
        }

        fn lead(&self, leading: bool) {
            self.leader.send(leading).unwrap();
        }

        /// The status the writer aims at for an object now, transition
        /// times taken from `previous`.
        fn desired(&self, key: &ObjectKey, previous: Option<&Value>, now: &str) -> Value {
            let snapshot = self.snapshots.borrow().clone();
            let extra = self.module_fields.get(key);
            desired_status(key, &snapshot.objects[key], extra.as_ref(), previous, now)
        }
    }

    /// Lets the writer work for `seconds` of tokio's (paused) clock.
    async fn run_for(seconds: u64) {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn writes_only_while_it_holds_the_lease() {
        let mut h = Harness::start(RecordingSink::default(), WriterSettings::default(), false);
        h.upsert([policy(1, 1), policy(2, 1)]);
        run_for(3).await;
        assert_eq!(h.sink.names_written(), Vec::<String>::new());
        assert_eq!(h.metrics.leader.get(), 0);

        h.lead(true);
        run_for(3).await;
        assert_eq!(h.sink.names_written(), ["p1", "p2"]);
        assert_eq!(h.metrics.leader.get(), 1);
        h.echo();
        run_for(3).await;
        assert_eq!(
            h.sink.names_written(),
            ["p1", "p2"],
            "the echo is no change"
        );

        // The Lease lost: a change waits for the next time this replica leads.
        h.lead(false);
        run_for(1).await;
        h.upsert([policy(1, 2)]);
        run_for(3).await;
        assert_eq!(h.sink.names_written(), ["p1", "p2"]);
        assert_eq!(h.metrics.leader.get(), 0);

        // Leading again, it compares against what the objects show: only
        // the changed one is written.
        h.lead(true);
        run_for(3).await;
        let writes = h.sink.writes();
        assert_eq!(h.sink.names_written(), ["p1", "p2", "p1"]);
        assert_eq!(writes[2].status["observedGeneration"], 2);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_each_changed_objects_desired_status_once() {
        let mut h = Harness::start(RecordingSink::default(), WriterSettings::default(), true);
        h.upsert([policy(1, 1), policy(2, 1), policy(3, 1)]);
        run_for(3).await;
        assert_eq!(h.sink.names_written(), ["p1", "p2", "p3"]);
        for w in h.sink.writes() {
            assert_eq!(w.status["observedGeneration"], 1, "{}", w.status);
            let desired = h.desired(&w.key, Some(&w.status), "never");
            assert_eq!(w.status, desired, "{}", w.key);
        }
        h.echo();
        run_for(3).await;
        // A snapshot that changes none of them writes nothing.
        h.upsert([]);
        run_for(3).await;
        assert_eq!(h.sink.names_written(), ["p1", "p2", "p3"]);

        // A new generation of one: that one, once, as it is now.
        h.upsert([policy(2, 2)]);
        run_for(3).await;
        let writes = h.sink.writes();
        assert_eq!(h.sink.names_written(), ["p1", "p2", "p3", "p2"]);
        assert_eq!(writes[3].status["observedGeneration"], 2);
        assert_eq!(
            writes[3].status,
            h.desired(&key(2), Some(&writes[3].status), "never")
        );
        h.echo();

        // A runtime module's field of another: that one, once, with it.
        h.module_fields
            .set(&key(3), "summary", json!("three rules"));
        run_for(3).await;
        let writes = h.sink.writes();
        assert_eq!(h.sink.names_written(), ["p1", "p2", "p3", "p2", "p3"]);
        assert_eq!(writes[4].status["summary"], "three rules");
        h.echo();
        run_for(3).await;
        assert_eq!(writes.len(), h.sink.writes().len());
    }

    #[tokio::test(start_paused = true)]
    async fn skips_writes_that_would_change_nothing() {
        let mut h = Harness::start(RecordingSink::default(), WriterSettings::default(), true);
        // The objects already show the status the writer would write (a
        // replica before this one wrote it).
        let mut index = IndexWriter::new(Default::default());
        index.apply(Change::Upsert(policy(1, 1)));
        index.apply(Change::Upsert(policy(2, 1)));
        let before = index.publish();
        let shown = |n: u32| {
            let mut object = policy(n, 1);
            object["status"] = desired_status(
                &key(n),
                &before.objects[&key(n)],
                None,
                None,
                "2024-01-01T00:00:00Z",
            );
            object
        };
        h.upsert([shown(1), shown(2)]);
        run_for(3).await;
        assert_eq!(h.sink.names_written(), Vec::<String>::new());

        // Someone edits what p2 shows: the writer puts its status back.
        let mut changed = shown(2);
        changed["status"]["conditions"][0]["message"] = json!("edited by hand");
        h.upsert([changed]);
        run_for(3).await;
        assert_eq!(h.sink.names_written(), ["p2"]);
        assert_eq!(h.sink.writes()[0].status, shown(2)["status"]);
        // The echo of that write changes nothing.
        h.echo();
        run_for(3).await;
        assert_eq!(h.sink.names_written(), ["p2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn in_run_mode_a_status_a_previous_run_wrote_is_not_written_again() {
        let sink = RecordingSink {
            keeps_written: true,
            ..Default::default()
        };
        // What `preload` reads back from the store.
        let mut index = IndexWriter::new(Default::default());
        index.apply(Change::Upsert(policy(1, 1)));
        let before = index.publish();
        let stored = desired_status(
            &key(1),
            &before.objects[&key(1)],
            None,
            None,
            "2024-01-01T00:00:00Z",
        );
        let written = WrittenStatuses::default();
        written.write().await.insert(key(1), stored.clone());
        let mut h = Harness::start_with(sink, WriterSettings::default(), true, written);
        h.upsert([policy(1, 1)]);
        run_for(3).await;
        assert_eq!(h.sink.names_written(), Vec::<String>::new());
        assert_eq!(h.written.read().await.get(&key(1)), Some(&stored));

        // A change is written, and the API's copy follows it.
        h.upsert([policy(1, 2)]);
        run_for(3).await;
        assert_eq!(h.sink.names_written(), ["p1"]);
        let status = h.sink.writes()[0].status.clone();
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(h.written.read().await.get(&key(1)), Some(&status));
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_to_its_token_bucket_and_writes_the_rest_later() {
        let settings = WriterSettings {
            writes_per_second: 2,
            burst: 2,
            ..WriterSettings::default()
        };
        let mut h = Harness::start(RecordingSink::default(), settings, true);
        let start = Instant::now();
        h.upsert((1..=6).map(|n| policy(n, 1)));
        run_for(10).await;
        let writes = h.sink.writes();
        let mut names = h.sink.names_written();
        names.sort();
        assert_eq!(names, ["p1", "p2", "p3", "p4", "p5", "p6"], "each once");
        // The burst at once, then one every half second: the k-th write
        // (from 0) no sooner than (k + 1 - burst) / rate seconds.
        for (k, w) in writes.iter().enumerate() {
            let earliest = Duration::from_millis(500 * (k as u64 + 1).saturating_sub(2));
            assert!(
                w.at - start >= earliest,
                "write {k} after {:?}",
                w.at - start
            );
        }
        // And not slower than the bucket: the last after two seconds, not
        // much more.
        let last = writes.last().unwrap().at - start;
        assert!(
            last < Duration::from_millis(2200),
            "the last after {last:?}"
        );
    }

    #[test]
    fn a_merge_patch_removes_the_fields_the_status_no_longer_has() {
        let desired = json!({"observedGeneration": 2, "conditions": [{"type": "Ready"}]});
        let table = [
            (None, json!({"status": desired})),
            (Some(json!({})), json!({"status": desired})),
            (
                Some(
                    json!({"observedGeneration": 1, "conditions": [], "metrics": {"sent": 1}, "lastTest": {}}),
                ),
                json!({"status": {"observedGeneration": 2, "conditions": [{"type": "Ready"}], "metrics": null, "lastTest": null}}),
            ),
        ];
        for (observed, want) in table {
            assert_eq!(
                merge_body(&desired, observed.as_ref()),
                want,
                "{observed:?}"
            );
        }
    }

    #[test]
    fn the_bucket_gives_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(10, 3, start);
        let ms = |n| start + Duration::from_millis(n);
        // (at, taken, or when the next token comes)
        let table = [
            (0, Ok(())),
            (0, Ok(())),
            (0, Ok(())),
            (0, Err(ms(100))),
            (50, Err(ms(100))),
            (100, Ok(())),
            (100, Err(ms(200))),
            // A long idle time refills up to the burst only.
            (10_000, Ok(())),
            (10_000, Ok(())),
            (10_000, Ok(())),
            (10_000, Err(ms(10_100))),
        ];
        for (i, (at, want)) in table.into_iter().enumerate() {
            let got = bucket.take(ms(at));
            let close = match (&got, &want) {
                (Err(g), Err(w)) => g.max(w).duration_since(*g.min(w)) < Duration::from_micros(10),
                _ => got == want,
            };
            assert!(close, "take {i} at {at} ms: {got:?}, want {want:?}");
        }
    }

    #[test]
    fn pauses_as_the_apiserver_asks_else_doubling() {
        let s = Duration::from_secs;
        let table = [
            (Some(s(3)), 1, s(3)),
            (Some(s(3)), 5, s(3)),
            (Some(s(600)), 1, s(60)),
            (None, 1, s(1)),
            (None, 2, s(2)),
            (None, 3, s(4)),
            (None, 7, s(60)),
            (None, 40, s(60)),
        ];
        for (retry_after, in_a_row, want) in table {
            assert_eq!(
                pause_after(retry_after, in_a_row),
                want,
                "{retry_after:?}, {in_a_row} in a row"
            );
        }
        assert_eq!(retry_after_failure(1), s(1));
        assert_eq!(retry_after_failure(3), s(4));
        assert_eq!(retry_after_failure(30), s(60));
    }

    /// The writer, leading, one write at a time, against a sink that
    /// throttles its first `times` writes with `retry_after`.
    fn throttling(times: usize, retry_after: Option<Duration>) -> Harness {
        let sink = RecordingSink {
            retry_after,
            ..Default::default()
        };
        sink.throttles_left.store(times, Ordering::SeqCst);
        let settings = WriterSettings {
            concurrency: 1,
            ..WriterSettings::default()
        };
        Harness::start(sink, settings, true)
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_write_pauses_every_write_for_its_retry_after() {
        let mut h = throttling(1, Some(Duration::from_secs(5)));
        let start = Instant::now();
        h.upsert((1..=3).map(|n| policy(n, 1)));
        run_for(4).await;
        assert_eq!(
            h.sink.names_written(),
            Vec::<String>::new(),
            "no write before the Retry-After"
        );
        let throttled = r#"idplane_status_writes_total{result="throttled"} 1"#;
        assert!(
            h.metrics.encode().contains(throttled),
            "{}",
            h.metrics.encode()
        );
        run_for(3).await;
        let writes = h.sink.writes();
        assert_eq!(h.sink.names_written(), ["p1", "p2", "p3"]);
        assert!(writes[0].at - start >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_without_retry_after_it_backs_off_doubling() {
        let mut h = throttling(3, None);
        let start = Instant::now();
        h.upsert([policy(1, 1)]);
        run_for(20).await;
        // Paused 1 s, 2 s, then 4 s: written after 7 s.
        let writes = h.sink.writes();
        assert_eq!(h.sink.names_written(), ["p1"]);
        let after = writes[0].at - start;
        assert!(
            after >= Duration::from_secs(7) && after < Duration::from_secs(8),
            "written after {after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_retried_and_its_event_follows_the_write() {
        let sink = RecordingSink::default();
        sink.refusals_left.store(1, Ordering::SeqCst);
        let mut h = Harness::start(sink, WriterSettings::default(), true);
        // p2 takes p1's priority: a Conflict, worth a Warning.
        h.upsert([policy(1, 1), policy_at(2, 1, 1)]);
        run_for(3).await;
        assert_eq!(h.sink.refusals_left.load(Ordering::SeqCst), 0);
        let mut names = h.sink.names_written();
        names.sort();
        assert_eq!(names, ["p1", "p2"]);
        let events = h.sink.events.lock().unwrap().clone();
        assert_eq!(events.len(), 1, "{events:?}");
        let (object, reason, writes_before) = &events[0];
        assert_eq!((object, reason.as_str()), (&key(2), "Conflict"));
        let p2_written = h
            .sink
            .writes()
            .iter()
            .position(|w| w.key == key(2))
            .unwrap();
        assert!(*writes_before > p2_written, "the event before its write");
    }

    #[tokio::test(start_paused = true)]
    async fn events_only_for_transitions_that_deserve_one() {
        let mut h = Harness::start(RecordingSink::default(), WriterSettings::default(), true);
        let events = |h: &Harness| -> Vec<(String, String)> {
            let events = h.sink.events.lock().unwrap();
            events
                .iter()
                .map(|(k, r, _)| (k.name.clone(), r.clone()))
                .collect()
        };
        // New valid objects: noise.
        h.upsert([policy(1, 1), policy(2, 1)]);
        run_for(3).await;
        h.echo();
        run_for(3).await;
        assert_eq!(h.sink.names_written().len(), 2);
        assert_eq!(events(&h), []);

        // p2 takes p1's priority: one Warning, and none for its echo.
        h.upsert([policy_at(2, 2, 1)]);
        run_for(3).await;
        h.echo();
        run_for(3).await;
        let conflict = ("p2".to_string(), "Conflict".to_string());
        assert_eq!(events(&h), std::slice::from_ref(&conflict));

        // A new Lease holder (this replica again, having forgotten what it
        // wrote) repeats no Event for what the objects show.
        h.lead(false);
        run_for(2).await;
        h.lead(true);
        run_for(3).await;
        assert_eq!(events(&h), std::slice::from_ref(&conflict));

        // Fixed: a recovery is noise too.
        h.upsert([policy_at(2, 3, 2)]);
        run_for(3).await;
        assert_eq!(events(&h), [conflict]);
        assert_eq!(h.sink.writes().last().unwrap().key, key(2));
    }
}
