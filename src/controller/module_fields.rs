//! Status fields published by the runtime (hook metrics, mail metrics, test
//! results, policy summaries, domain validation). The status writer merges
//! them into each object's status; whoever owns a field sets it here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::resources::ObjectKey;

/// Extra status fields by object, with the set of objects changed since the
/// writer last looked.
#[derive(Default)]
pub struct ModuleFields {
    inner: Mutex<Inner>,
    pub changed: Notify,
}

#[derive(Default)]
struct Inner {
    fields: HashMap<ObjectKey, Map<String, Value>>,
    dirty: BTreeSet<ObjectKey>,
}

impl ModuleFields {
    /// Sets one top-level status field of an object (`metrics`, `lastTest`...).
    /// Setting the same value again changes nothing.
    pub fn set(&self, key: &ObjectKey, field: &str, value: Value) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Modules set every field again at each snapshot: the same value
        // costs a lookup, not a copy of the key.
        if inner
            .fields
            .get(key)
            .is_some_and(|map| map.get(field) == Some(&value))
        {
            return;
        }
        let map = inner.fields.entry(key.clone()).or_default();
        map.insert(field.to_string(), value);
        inner.dirty.insert(key.clone());
        drop(inner);
        self.changed.notify_one();
    }

    /// The extra fields of an object.
    pub fn get(&self, key: &ObjectKey) -> Option<Map<String, Value>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.fields.get(key).cloned()
    }

    /// Objects whose module_fields changed since the last call.
    pub fn take_dirty(&self) -> BTreeSet<ObjectKey> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut inner.dirty)
    }
}
