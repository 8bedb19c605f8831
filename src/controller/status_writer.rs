//! The status writer: one task that turns snapshots into status writes. It
//! writes only what changed, in batches, at a bounded rate, and only while
//! this replica leads (see [`super::lease`]). Transitions become Events.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use serde_json::{Value, json};
use tokio::sync::{RwLock, watch};
use tracing::Instrument;
// Tokio's clock, as the loop's timers use: tests can pause it.
use tokio::time::Instant;

use super::conditions::{desired_status, transition};
use super::module_fields::ModuleFields;
use crate::index::{ObjectView, Snapshot};
use crate::resources::API_VERSION;
use crate::resources::ObjectKey;
use crate::store::{LogEntry, Store};
use crate::telemetry::Metrics;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "idplane";

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
}

/// The API resource to write `key`'s status through: only idplane's kinds
/// have a status it writes.
fn api_resource_of(key: &ObjectKey) -> Result<kube::core::ApiResource, WriteError> {
    key.owned_kind()
        .map(crate::resources::api_resource)
        .ok_or_else(|| WriteError::NotOwned(key.clone()))
}

/// Where statuses and transition events go.
#[derive(Clone)]
pub enum StatusSink {
    /// The status subresource (server-side apply) and `events.k8s.io/v1`.
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

    async fn write(&self, key: &ObjectKey, status: &Value, now: &str) -> Result<(), WriteError> {
        match self {
            Self::Kube { client, .. } => {
                let ar = api_resource_of(key)?;
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &key.namespace, &ar);
                let body = json!({"apiVersion": API_VERSION, "kind": key.kind, "status": status});
                api.patch_status(
                    &key.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(body),
                )
                .await?;
                Ok(())
            }
            Self::Store(store) => Ok(store.save_status(key, status, now).await?),
            #[cfg(test)]
            Self::Recording(sink) => sink.write(key, status),
        }
    }

    async fn event(
        &self,
        key: &ObjectKey,
        view: &ObjectView,
        reason: &str,
        message: &str,
        warning: bool,
        now: &str,
    ) {
        match self {
            Self::Kube { recorder, .. } => {
                let reference = k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some(API_VERSION.into()),
                    kind: Some(key.kind.clone()),
                    name: Some(key.name.clone()),
                    namespace: Some(key.namespace.clone()),
                    uid: view.uid.clone(),
                    ..Default::default()
                };
                let event = KubeEvent {
                    type_: if warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: reason.to_string(),
                    note: Some(message.chars().take(1000).collect()),
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
                    detail: json!({"reason": reason, "message": message, "kind": key.kind, "name": key.name}),
                };
                if let Err(e) = store.log(&entry).await {
                    tracing::warn!(object = %key, error = %e, "cannot log event");
                }
            }
            #[cfg(test)]
            Self::Recording(sink) => sink.event(key, reason),
        }
    }
}

/// Settings of the writer.
#[derive(Clone, Debug)]
pub struct WriterSettings {
    /// Status writes per second at most.
    pub writes_per_second: u32,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// How long to gather changes before writing.
    pub batch_window: Duration,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            writes_per_second: 200,
            concurrency: 8,
            batch_window: Duration::from_millis(50),
        }
    }
}

/// Statuses as last written by this process in run mode, readable by the
/// API (in a cluster the objects carry them).
pub type WrittenStatuses = Arc<RwLock<HashMap<ObjectKey, Value>>>;

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
    let mut last_views: HashMap<ObjectKey, ObjectView> = HashMap::new();
    // What this process last wrote, as a hash (memory stays small).
    let mut written_hash: HashMap<ObjectKey, u64> = HashMap::new();
    let mut pending: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut was_leader = false;
    let mut window_start = Instant::now();
    let mut window_writes: u32 = 0;
    loop {
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            _ = module_fields.changed.notified() => {},
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)), if !pending.is_empty() => {},
        }
        tokio::time::sleep(settings.batch_window).await;
        let is_leader = *leader.borrow();
        metrics.leader.set(i64::from(is_leader));
        if !is_leader {
            was_leader = false;
            continue;
        }
        if !was_leader {
            // Another replica may have written meanwhile: compare everything
            // against what the cluster shows.
            last_views.clear();
            written_hash.clear();
            if !sink.keeps_written() {
                written.write().await.clear();
            }
            was_leader = true;
        }
        let snapshot = snapshots.borrow_and_update().clone();
        if !snapshot.synced {
            continue;
        }
        let dirty_extras = module_fields.take_dirty();
        for (key, view) in snapshot.objects.iter() {
            let before = last_views.get(key);
            if before == Some(view) && !dirty_extras.contains(key) {
                continue;
            }
            pending.insert(key.clone());
        }
        last_views.retain(|k, _| snapshot.objects.contains_key(k));
        written_hash.retain(|k, _| snapshot.objects.contains_key(k));
        written
            .write()
            .await
            .retain(|k, _| snapshot.objects.contains_key(k));
        pending.retain(|k| snapshot.objects.contains_key(k));

        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut batch = Vec::new();
        for key in std::mem::take(&mut pending) {
            let view = &snapshot.objects[&key];
            // In a cluster the object's own status is the record; only run
            // mode (no status on files) needs the full written status.
            let mine = if sink.keeps_written() {
                written.read().await.get(&key).cloned()
            } else {
                None
            };
            let mine_hash = written_hash.get(&key).copied();
            let previous = mine
                .clone()
                .or_else(|| view.observed_status.as_deref().cloned());
            let desired = desired_status(
                &key,
                view,
                module_fields.get(&key).as_ref(),
                previous.as_ref(),
                &now,
            );
            let event = transition(last_views.get(&key), view);
            // The cluster is the truth: skip when it already shows the
            // status, or when we wrote it and nobody changed it since (the
            // echo of our write may still be on its way).
            let observed = view.observed_status.as_deref();
            let observed_agrees = observed == Some(&desired);
            let observed_seen = last_views
                .get(&key)
                .is_some_and(|v| v.observed_status.as_deref() == observed);
            let mine_agrees = mine.as_ref() == Some(&desired)
                || mine_hash == Some(crate::index::snapshot_writer::hash_of(Some(&desired)));
            if observed_agrees || (mine_agrees && (observed.is_none() || observed_seen)) {
                metrics.status_write("unchanged");
                last_views.insert(key.clone(), view.clone());
                continue;
            }
            batch.push((key, view.clone(), desired, event));
        }
        // Rate limit: at most writes_per_second in each one-second window.
        if window_start.elapsed() >= Duration::from_secs(1) {
            window_start = Instant::now();
            window_writes = 0;
        }
        let room = settings.writes_per_second.saturating_sub(window_writes) as usize;
        if batch.len() > room {
            for (key, ..) in batch.drain(room..) {
                pending.insert(key);
            }
        }
        window_writes += batch.len() as u32;
        let results: Vec<_> = futures::stream::iter(batch)
            .map(|(key, view, desired, event)| {
                let sink = sink.clone();
                let now = now.clone();
                // One span per write (and its Event): the object's key.
                let span = tracing::info_span!("status_write", object = %key);
                async move {
                    let result = sink.write(&key, &desired, &now).await;
                    if result.is_ok()
                        && let Some((reason, message, warning)) = &event
                    {
                        sink.event(&key, &view, reason, message, *warning, &now)
                            .await;
                    }
                    (key, view, desired, result)
                }
                .instrument(span)
            })
            .buffer_unordered(settings.concurrency.max(1))
            .collect()
            .await;
        for (key, view, desired, result) in results {
            match result {
                Ok(()) => {
                    metrics.status_write("ok");
                    written_hash.insert(
                        key.clone(),
                        crate::index::snapshot_writer::hash_of(Some(&desired)),
                    );
                    if sink.keeps_written() {
                        written.write().await.insert(key.clone(), desired);
                    }
                    last_views.insert(key, view);
                }
                Err(WriteError::Kube(kube::Error::Api(e))) if e.code == 404 => {
                    // Deleted meanwhile; the watch will tell the index.
                    metrics.status_write("gone");
                }
                Err(e) => {
                    metrics.status_write("error");
                    metrics.error("status_write");
                    tracing::warn!(object = %key, error = %e, "status write failed; will retry");
                    pending.insert(key);
                }
            }
        }
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
    async fn keeps_to_its_rate_and_writes_the_rest_later() {
        let settings = WriterSettings {
            writes_per_second: 2,
            ..WriterSettings::default()
        };
        let mut h = Harness::start(RecordingSink::default(), settings, true);
        let start = Instant::now();
        h.upsert((1..=5).map(|n| policy(n, 1)));
        run_for(10).await;
        let writes = h.sink.writes();
        let mut names = h.sink.names_written();
        names.sort();
        assert_eq!(names, ["p1", "p2", "p3", "p4", "p5"], "each once");
        // At most two in any second.
        for three in writes.windows(3) {
            let apart = three[2].at - three[0].at;
            assert!(apart >= Duration::from_secs(1), "3 writes within {apart:?}");
        }
        // Not slower than the rate: three windows of a second.
        let last = writes.last().unwrap().at - start;
        assert!(
            last < Duration::from_secs(3),
            "the last write after {last:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_retried_and_its_event_follows_the_write() {
        let sink = RecordingSink::default();
        sink.refusals_left.store(1, Ordering::SeqCst);
        let mut h = Harness::start(sink, WriterSettings::default(), true);
        h.upsert([policy(1, 1)]);
        run_for(3).await;
        assert_eq!(h.sink.refusals_left.load(Ordering::SeqCst), 0);
        assert_eq!(h.sink.names_written(), ["p1"]);
        let events = h.sink.events.lock().unwrap().clone();
        assert_eq!(events.len(), 1, "{events:?}");
        let (object, _reason, writes_before) = &events[0];
        assert_eq!((object, *writes_before), (&key(1), 1));
    }
}
