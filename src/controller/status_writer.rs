//! The status writer: one task that turns snapshots into status writes. It
//! writes only what changed, in batches, at a bounded rate, and only while
//! this replica leads (see [`super::lease`]). Transitions become Events.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use serde_json::{Value, json};
use tokio::sync::{RwLock, watch};

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

    async fn write(&self, key: &ObjectKey, status: &Value, now: &str) -> Result<(), WriteError> {
        match self {
            Self::Kube { client, .. } => {
                let kind = key
                    .owned_kind()
                    .ok_or_else(|| WriteError::NotOwned(key.clone()))?;
                let ar = crate::resources::api_resource(kind);
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
            if matches!(sink, StatusSink::Kube { .. }) {
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
            let mine = match &sink {
                StatusSink::Store(_) => written.read().await.get(&key).cloned(),
                StatusSink::Kube { .. } => None,
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
                    if matches!(sink, StatusSink::Store(_)) {
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
