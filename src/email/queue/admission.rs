//! Which new messages a batch may write when the store has a cap
//! (`--database-max-size`): new mail is accepted while the bytes in use,
//! with room kept for what every unfinished message will still write, stay
//! under the accept limit ([`crate::store::Store::accept_limit`]). A full
//! store so still records how the mail it took went. The numbers come
//! from the backend (its size in use, measured once at start and after
//! each batch); the rule is here.

use std::collections::HashMap;

use super::ops::Prepared;
use super::{Inserted, QueueError};

/// Bytes of room a message needs beyond its content and recipients, under
/// a store cap: its row's other fields and index entries, and what
/// delivering it will still write: the claim's fields, at most four
/// attempt rows (see the batch statements) with replies of at most
/// [`crate::email::worker::MAX_STORED_REPLY`] bytes, the delivery event.
/// Kept for every unfinished message, so that a full store can still
/// record how its mail went, however small the mail and however often it
/// fails.
pub(super) const ROOM_PER_MESSAGE: i64 = 4096;

/// Which new messages a batch writes.
pub(super) enum Admit {
    /// All of them (no cap).
    All,
    /// Those whose [`footprint`] fits in `room` bytes, in order; the rest
    /// are answered with `full`.
    Within { room: i64, full: QueueError },
    /// None: each is answered with this error.
    Refuse(QueueError),
}

/// What the committer knows of the store's room, batch after batch.
pub(super) struct Admission {
    /// New messages are refused once the database's pages in use, with
    /// the room kept for unfinished mail, would pass this many bytes (see
    /// [`crate::store::Store::accept_limit`]).
    accept_limit: Option<i64>,
    /// Bytes in use after the last batch.
    used_bytes: i64,
    /// Messages not yet sent or failed: each keeps [`ROOM_PER_MESSAGE`]
    /// for what it will still write.
    unfinished: i64,
    /// Whether `used_bytes` and `unfinished` are known; under a cap, new
    /// mail waits until they are.
    measured: bool,
}

impl Admission {
    pub(super) fn new(accept_limit: Option<i64>) -> Self {
        Self {
            accept_limit,
            used_bytes: 0,
            unfinished: 0,
            measured: accept_limit.is_none(),
        }
    }

    pub(super) fn is_measured(&self) -> bool {
        self.measured
    }

    /// The store as measured: bytes in use and unfinished messages.
    pub(super) fn measured(&mut self, used_bytes: i64, unfinished: i64) {
        (self.used_bytes, self.unfinished) = (used_bytes, unfinished);
        self.measured = true;
    }

    /// After a batch: the bytes in use, and how the batch changed the
    /// number of unfinished messages.
    pub(super) fn after_batch(&mut self, used_bytes: i64, unfinished_change: i64) {
        self.used_bytes = used_bytes;
        self.unfinished += unfinished_change;
    }

    /// Which new messages the next batch may write: all without a cap;
    /// under one, none until the store is measured, then those that fit.
    pub(super) fn admit(&self) -> Admit {
        let Some(limit) = self.accept_limit else {
            return Admit::All;
        };
        if !self.measured {
            return Admit::Refuse(QueueError::Full(
                "its size could not be measured yet".into(),
            ));
        }
        Admit::Within {
            room: limit - self.used_bytes - self.unfinished * ROOM_PER_MESSAGE,
            full: QueueError::Full(format!(
                "{} MiB in use, and room kept for what {} unsent messages will still write; new mail is accepted up to {} MiB (9/10 of --database-max-size)",
                mib(self.used_bytes),
                self.unfinished,
                mib(limit)
            )),
        }
    }
}

/// Decides a batch's new messages in order, as `admit` says: the answer of
/// each, and the messages to write. `existing` is what the idempotency
/// keys say (see [`super::idempotency`]): a key already stored answers its
/// message, and a key that an earlier refused message of this batch took
/// names nothing stored, so it is refused alike.
pub(super) fn admit_inserts<'a>(
    inserts: &'a [Prepared],
    existing: Vec<Option<String>>,
    admit: &Admit,
) -> (Vec<Result<Inserted, QueueError>>, Vec<&'a Prepared>) {
    let mut answers = Vec::with_capacity(inserts.len());
    let mut written = Vec::with_capacity(inserts.len());
    let mut room = match admit {
        Admit::Within { room, .. } => *room,
        _ => i64::MAX,
    };
    // Refused messages of this batch, with why.
    let mut refused: HashMap<String, QueueError> = HashMap::new();
    for (p, existing) in inserts.iter().zip(existing) {
        if let Some(id) = existing {
            answers.push(match refused.get(&id) {
                Some(e) => Err(e.clone()),
                None => Ok(Inserted::Existing(id)),
            });
            continue;
        }
        let refusal = match admit {
            Admit::All => None,
            Admit::Refuse(e) => Some(e),
            Admit::Within { full, .. } if footprint(p) > room => Some(full),
            Admit::Within { .. } => {
                room -= footprint(p);
                None
            }
        };
        if let Some(e) = refusal {
            refused.insert(p.message.id.clone(), e.clone());
            answers.push(Err(e.clone()));
            continue;
        }
        written.push(p);
        answers.push(Ok(Inserted::New(p.message.id.clone())));
    }
    (answers, written)
}

/// The room a new message takes under a cap: its content, its recipients
/// once more (its delivery event lists them), and [`ROOM_PER_MESSAGE`].
fn footprint(p: &Prepared) -> i64 {
    let c = &p.message.content;
    let recipients: usize = c.to.iter().chain(&c.cc).map(|a| a.len() + 3).sum();
    i64::try_from(p.content.len() + recipients).unwrap_or(i64::MAX) + ROOM_PER_MESSAGE
}

fn mib(bytes: i64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}
