//! The window of an idempotency key: within it, a second message with the
//! same org and key answers with the first message instead of being
//! queued; after it, the key is free again. The backend looks up the keys
//! a batch uses and forgets the released ones; the decision is here.

use std::collections::HashMap;

use super::ops::Prepared;

/// Idempotency keys are honoured this long.
pub const IDEMPOTENCY_WINDOW_MILLIS: i64 = 24 * 3600 * 1000;

/// (org, key) → (id, created_at) of the message holding the key.
pub(super) type HeldKeys = HashMap<(String, String), (String, i64)>;

/// What the keys decide for a batch's new messages.
pub(super) struct KeyAnswers {
    /// For each insert, in order: `None` for a new message, else the id
    /// the key already names.
    pub(super) existing: Vec<Option<String>>,
    /// Messages whose key is older than the window: the key is taken off
    /// them, free for the new message.
    pub(super) released: Vec<String>,
}

/// Decides each insert against the keys `held` in the store and those
/// earlier inserts of the same batch take.
pub(super) fn decide(inserts: &[Prepared], mut held: HeldKeys) -> KeyAnswers {
    let mut existing = Vec::with_capacity(inserts.len());
    let mut released = Vec::new();
    for p in inserts {
        let m = &p.message;
        let Some(key) = &m.idempotency_key else {
            existing.push(None);
            continue;
        };
        let slot = (m.org.clone(), key.clone());
        match held.get(&slot) {
            Some((id, created)) if m.now - created < IDEMPOTENCY_WINDOW_MILLIS => {
                existing.push(Some(id.clone()));
                continue;
            }
            // Older than the window: the key is free again.
            Some((id, _)) => released.push(id.clone()),
            None => {}
        }
        held.insert(slot, (m.id.clone(), m.now));
        existing.push(None);
    }
    KeyAnswers { existing, released }
}
