//! Watches in a cluster: idplane's four kinds (in all namespaces, or the
//! ones given), and only the Secrets those objects reference, each through
//! its own watch with a `metadata.name` field selector, so that no other
//! Secret of the cluster is ever read or cached.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::index::{Change, Referenced};
use crate::resources::{API_VERSION, Kind, ObjectKey};

use crate::telemetry::Metrics;
use crate::validate::SecretData;

/// An object as the index wants it: with apiVersion and kind (list items
/// may lack them).
fn to_value(kind: Kind, obj: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(API_VERSION.into()));
        map.insert("kind".into(), Value::String(kind.as_str().into()));
    }
    // Bookkeeping the index never reads; dropping it keeps memory flat.
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    v
}

fn key_of(kind: Kind, obj: &DynamicObject) -> ObjectKey {
    ObjectKey::new(
        kind,
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

/// Starts the watches of idplane's kinds. Sends [`Change::Listed`] once all
/// of them have delivered their first listing.
pub fn watch_resources(
    client: Client,
    namespaces: &[String],
    changes: mpsc::Sender<Change>,
    metrics: Arc<Metrics>,
) -> Vec<JoinHandle<()>> {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let remaining = Arc::new(AtomicUsize::new(scopes.len() * Kind::ALL.len()));
    let mut handles = Vec::new();
    for scope in scopes {
        for kind in Kind::ALL {
            let ar = crate::resources::api_resource(kind);
            let api: Api<DynamicObject> = match &scope {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            let changes = changes.clone();
            let remaining = remaining.clone();
            let metrics = metrics.clone();
            handles.push(tokio::spawn(async move {
                let mut stream = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .boxed();
                let mut known: HashSet<ObjectKey> = HashSet::new();
                let mut listing: HashSet<ObjectKey> = HashSet::new();
                let mut first = true;
                while let Some(event) = stream.next().await {
                    let sent = match event {
                        Ok(Event::Apply(obj)) => {
                            known.insert(key_of(kind, &obj));
                            changes.send(Change::Upsert(to_value(kind, &obj))).await
                        }
                        Ok(Event::InitApply(obj)) => {
                            listing.insert(key_of(kind, &obj));
                            changes.send(Change::Upsert(to_value(kind, &obj))).await
                        }
                        Ok(Event::Delete(obj)) => {
                            let key = key_of(kind, &obj);
                            known.remove(&key);
                            changes.send(Change::Delete(key)).await
                        }
                        Ok(Event::Init) => {
                            listing.clear();
                            Ok(())
                        }
                        Ok(Event::InitDone) => {
                            // Objects deleted while the watch was down.
                            for gone in known.difference(&listing) {
                                if changes.send(Change::Delete(gone.clone())).await.is_err() {
                                    return;
                                }
                            }
                            known = std::mem::take(&mut listing);
                            if first {
                                first = false;
                                if remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                                    let _ = changes.send(Change::Listed).await;
                                }
                            }
                            Ok(())
                        }
                        Err(e) => {
                            metrics.error("watch");
                            tracing::warn!(kind = kind.as_str(), error = %e, "watch error; retrying");
                            Ok(())
                        }
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            }));
        }
    }
    handles
}

fn secret_data(secret: &Secret) -> SecretData {
    let mut keys = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        keys.insert(k.clone(), v.0.clone());
    }
    for (k, v) in secret.string_data.iter().flatten() {
        keys.insert(k.clone(), v.as_bytes().to_vec());
    }
    SecretData {
        keys,
        version: secret.metadata.resource_version.clone().unwrap_or_default(),
    }
}

/// Keeps one watch per referenced Secret, starting and stopping them as
/// references change. Sends [`Change::Synced`] once the objects are listed
/// and every referenced Secret's watch has delivered its first listing.
pub async fn watch_secrets(
    client: Client,
    mut referenced: watch::Receiver<Referenced>,
    changes: mpsc::Sender<Change>,
    metrics: Arc<Metrics>,
) {
    let mut running: BTreeMap<(String, String), JoinHandle<()>> = BTreeMap::new();
    let (listed_tx, mut listed_rx) = mpsc::unbounded_channel::<(String, String)>();
    let mut listed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut synced = false;
    loop {
        let wanted = referenced.borrow_and_update().clone();
        running.retain(|key, handle| {
            let keep = wanted.secrets.contains(key);
            if !keep {
                handle.abort();
            }
            keep
        });
        listed.retain(|k| wanted.secrets.contains(k));
        for key in &wanted.secrets {
            if running.contains_key(key) {
                continue;
            }
            let (ns, name) = key.clone();
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let changes = changes.clone();
            let listed_tx = listed_tx.clone();
            let metrics = metrics.clone();
            running.insert(
                key.clone(),
                tokio::spawn(async move {
                    let mut stream = watcher(api, config).default_backoff().boxed();
                    let mut seen = false;
                    while let Some(event) = stream.next().await {
                        let change = match event {
                            Ok(Event::Apply(s)) | Ok(Event::InitApply(s)) => {
                                seen = true;
                                Some(Some(secret_data(&s)))
                            }
                            Ok(Event::Delete(_)) => Some(None),
                            Ok(Event::Init) => {
                                seen = false;
                                None
                            }
                            Ok(Event::InitDone) => {
                                let _ = listed_tx.send((ns.clone(), name.clone()));
                                (!seen).then_some(None)
                            }
                            Err(e) => {
                                metrics.error("secret_watch");
                                tracing::warn!(namespace = %ns, secret = %name, error = %e, "secret watch error; retrying");
                                None
                            }
                        };
                        if let Some(data) = change {
                            let c = Change::Secret {
                                namespace: ns.clone(),
                                name: name.clone(),
                                data,
                            };
                            if changes.send(c).await.is_err() {
                                return;
                            }
                        }
                    }
                }),
            );
        }
        if !synced && wanted.complete && wanted.secrets.iter().all(|k| listed.contains(k)) {
            synced = true;
            if changes.send(Change::Synced).await.is_err() {
                return;
            }
        }
        tokio::select! {
            r = referenced.changed() => if r.is_err() { return },
            Some(k) = listed_rx.recv() => { listed.insert(k); },
        }
    }
}
