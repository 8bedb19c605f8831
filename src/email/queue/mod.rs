//! The durable delivery queue: the operations the delivery logic
//! (`worker`, `retry`) and the API see, and the types they exchange. None
//! of them says how the queue is stored.
//!
//! - here: [`Queue`], the handle: writes go through the committer, reads
//!   straight to the store; each call goes to the backend in use;
//! - `committer.rs`: the one task that applies the writes in batches
//!   (group commit), and writes a batch once more without its new mail when
//!   the store is full; `ops.rs`: the operations it takes and what a batch
//!   answers;
//! - `admission.rs`: which new messages a batch may write under the store
//!   cap (`--database-max-size`, SQLite only), and the room kept for
//!   unfinished mail;
//! - `idempotency.rs`: the window of an idempotency key;
//! - `portable.rs`: the statements both backends run as they are (the
//!   reads, the brand-domain rows, the purge, a log entry);
//! - `sqlite/`: what is SQLite's own: the batch statements (one statement
//!   list that inserts, finishes and claims together), the writer's
//!   connection and transaction, the page counts that measure the store,
//!   releasing claims;
//! - `postgres/`: what is PostgreSQL's own: the batch as several
//!   statements in one transaction, claims that skip the rows another
//!   replica is taking, the NOTIFY that wakes the other replicas and the
//!   LISTEN that hears them, releasing claims;
//! - `tests.rs`: the queue's tests, through [`Queue`] as the delivery logic
//!   uses it, on both backends.
//!
//! On PostgreSQL several replicas share the queue: any of them accepts,
//! claims, finishes and reads any message; the rules below hold across
//! them because each is decided in the database, under the rows' locks.
//!
//! What every backend keeps to, because it is decided inside the batch's
//! statements, not around them:
//!
//! - a claim leases a message to one attempt until `lease_until`; an
//!   attempt whose lease ran out is closed as interrupted before the next
//!   claim, and its message is taken again; interrupted attempts do not
//!   count against `maxAttempts` ([`Claimed::counted`]);
//! - a finish takes effect only while its attempt still holds the message,
//!   and its delivery event is written only then ([`Applied`]);
//! - a message keeps at most four attempt rows (the first three and the
//!   latest), and loses its bodies once sent or failed.
//!
//! An attempt's row is written when it ends (or when its lease runs out);
//! while a message is `sending`, the running attempt is read from the
//! message row.

mod admission;
mod committer;
mod idempotency;
mod ops;
mod portable;
mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::message::Content;
use crate::store::Backend;
use crate::store::group_commit::{self, Submitter};
use ops::{Op, Prepared};

/// The system-log entry a write carries, written in the same transaction
/// as the state change it reports.
pub use crate::store::LogEntry;
pub use committer::Committer;
pub use idempotency::IDEMPOTENCY_WINDOW_MILLIS;

/// Writes waiting for the committer; when full, callers wait.
const WAITING_WRITES: usize = 8192;

/// Errors of the queue.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("the message store failed: {0}")]
    Sql(String),
    /// The database cannot be reached now ([`crate::store::is_unavailable`]):
    /// nothing was written; the caller tries again later.
    #[error("the message store cannot be reached: {0}")]
    Unavailable(String),
    #[error("the message store is shutting down")]
    Closed,
    /// SQLite's SQLITE_FULL (a full disk, or the `--database-max-size`
    /// cap), or the accept limit below that cap: a new message is refused
    /// while the queue's own outcomes can still be written.
    #[error("the message store is full: {0}")]
    Full(String),
}

/// A database that cannot be reached is [`QueueError::Unavailable`], a
/// full one (SQLite's SQLITE_FULL, PostgreSQL's disk_full)
/// [`QueueError::Full`]; every other failure is [`QueueError::Sql`].
impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        if crate::store::is_unavailable(&e) {
            return Self::Unavailable(e.to_string());
        }
        if sqlite::is_full(&e) || postgres::is_full(&e) {
            return Self::Full(e.to_string());
        }
        Self::Sql(e.to_string())
    }
}

/// A message to enqueue.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub id: String,
    pub org: String,
    pub idempotency_key: Option<String>,
    pub sender: String,
    pub brand: Option<String>,
    pub content: Content,
    pub now: i64,
    /// Logged with the message (the sender warning of an unverified brand).
    pub log: Option<LogEntry>,
}

/// What an insert did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    New(String),
    /// The idempotency key was used within the window: the earlier message.
    Existing(String),
}

/// A message's stored content, or why it cannot be read (a row written
/// by another version of idplane, or damaged by hand). One such row must
/// not stop the queue: its attempt fails at once and GET still shows the
/// rest of the message.
pub type StoredContent = Result<Content, String>;

fn read_content(stored: &str) -> StoredContent {
    serde_json::from_str(stored).map_err(|e| format!("the stored message cannot be read: {e}"))
}

/// A sent or failed message's stored content without its bodies (`text`,
/// `html`): mail from an identity platform carries reset links and
/// passcodes, which should not outlive their delivery by the retention
/// period. `None` when the content is not a JSON object (a damaged row
/// keeps what it has).
fn without_bodies(stored: &str) -> Option<String> {
    let mut content: serde_json::Map<String, Value> = serde_json::from_str(stored).ok()?;
    content.remove("text");
    content.remove("html");
    serde_json::to_string(&content).ok()
}

/// A message taken for one delivery attempt.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: String,
    pub org: String,
    pub sender: String,
    pub content: StoredContent,
    /// Number of this attempt among all started.
    pub attempt: u32,
    /// Attempts that count against `maxAttempts`, this one included.
    pub counted: u32,
    pub created_at: i64,
    pub started_at: i64,
}

impl Claimed {
    /// Attempts that count against `maxAttempts` of a message claimed with
    /// `attempts` started (this one included), `interrupted` of them cut
    /// short by a lease that ran out.
    fn counted_of(attempts: i64, interrupted: i64) -> u32 {
        (attempts - interrupted).max(1) as u32
    }
}

/// How an attempt ended, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Sent,
    Transient,
    Permanent,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Transient => "transient",
            Self::Permanent => "permanent",
        }
    }
}

/// The message's state after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Sent,
    /// Retry at this time (Unix millis).
    Retry(i64),
    Failed,
}

/// The end of an attempt.
#[derive(Clone, Debug)]
pub struct Finished {
    pub id: String,
    pub attempt: u32,
    pub started_at: i64,
    pub finished_at: i64,
    pub outcome: Outcome,
    pub reply: String,
    pub provider: String,
    pub next: Next,
    /// The SUCCESS or FAILURE delivery event of a final state.
    pub log: Option<LogEntry>,
}

/// Whether a finish took effect: `false` when the attempt had lost its lease
/// and another attempt owns the message now.
pub type Applied = bool;

/// The handle to the queue: writes through the committer, reads straight
/// from the pool.
#[derive(Clone)]
pub struct Queue {
    ops: Submitter<Op>,
    backend: Backend,
}

/// Runs `$f` of the backend's own SQL (`sqlite::$f` or `postgres::$f`)
/// with the pool first: for the few statements that differ by backend.
macro_rules! per_backend {
    ($backend:expr, $f:ident($($arg:expr),*)) => {
        match $backend {
            Backend::Sqlite(pool) => sqlite::$f(pool, $($arg),*).await,
            Backend::Postgres(pool) => postgres::$f(pool, $($arg),*).await,
        }
    };
}

impl Queue {
    /// A queue on `backend` and its committer, which the caller spawns;
    /// with `accept_limit` (SQLite), new messages are refused once the
    /// database's pages in use hold that many bytes.
    pub fn new(backend: Backend, accept_limit: Option<i64>) -> (Self, Committer) {
        let (ops, pending) = group_commit::channel(WAITING_WRITES);
        let committer = Committer::new(pending, backend.clone(), accept_limit);
        (Self { ops, backend }, committer)
    }

    /// Whether other replicas share this queue (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Wakes `wake` whenever any replica commits new mail, until
    /// `stopping`: on PostgreSQL through LISTEN (see `postgres/wake.rs`);
    /// on SQLite, where this process is the only writer and wakes its
    /// dispatcher itself, it returns at once.
    pub async fn relay_commits(&self, wake: &Notify, stopping: &CancellationToken) {
        if let Backend::Postgres(pool) = &self.backend {
            postgres::relay_commits(pool, wake, stopping).await;
        }
    }

    pub async fn insert(&self, message: NewMessage) -> Result<Inserted, QueueError> {
        let content = serde_json::to_string(&message.content)
            .map_err(|e| QueueError::Sql(format!("cannot encode the message: {e}")))?;
        let prepared = Box::new(Prepared { message, content });
        self.ops
            .request(|reply| Op::Insert(prepared, reply))
            .await
            .map_err(|_| QueueError::Closed)?
    }

    /// Takes up to `limit` due messages (and those whose lease ran out) for
    /// an attempt each, leased until `lease_until`.
    pub async fn claim(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<Claimed>, QueueError> {
        self.ops
            .request(|reply| Op::Claim {
                now,
                lease_until,
                limit,
                reply,
            })
            .await
            .map_err(|_| QueueError::Closed)?
    }

    pub async fn finish(&self, finished: Finished) -> Result<Applied, QueueError> {
        self.ops
            .request(|reply| Op::Finish(Box::new(finished), reply))
            .await
            .map_err(|_| QueueError::Closed)?
    }

    /// Undoes the claims of messages not tried (a stop came first): each
    /// is due again at once, as it was before, unless its attempt
    /// `(id, attempt)` no longer holds it. Returns how many were released.
    /// Written on a connection of its own: it waits for the committer's
    /// transaction, which is fine when stopping.
    pub async fn release(&self, claims: &[(String, u32)], now: i64) -> Result<u64, QueueError> {
        per_backend!(&self.backend, release(claims, now))
    }

    /// The earliest time something becomes due: a queued or retrying
    /// message, or a lease running out.
    pub async fn next_due(&self) -> Result<Option<i64>, QueueError> {
        portable::next_due(&self.backend).await
    }

    /// One message of an org with its attempts.
    pub async fn get(&self, org: &str, id: &str) -> Result<Option<StoredMessage>, QueueError> {
        portable::get(&self.backend, org, id).await
    }

    /// The system-log events about one subject (a message id).
    pub async fn events_about(&self, org: &str, subject: &str) -> Result<Vec<Value>, QueueError> {
        portable::events_about(&self.backend, org, subject).await
    }

    /// Messages not yet sent or failed, by org.
    pub async fn pending_by_org(&self) -> Result<HashMap<String, u64>, QueueError> {
        portable::pending_by_org(&self.backend).await
    }

    /// Delivery totals by (org, provider) for providers named `EmailProvider/…`.
    pub async fn provider_totals(&self) -> Result<Vec<ProviderTotals>, QueueError> {
        portable::provider_totals(&self.backend).await
    }

    /// Deletes sent and failed messages (and their attempts) finished before `before`.
    pub async fn purge_finished(&self, before: i64) -> Result<u64, QueueError> {
        portable::purge_finished(&self.backend, before).await
    }

    /// The brand-domain rows of every org.
    pub async fn domains(&self) -> Result<Vec<DomainRow>, QueueError> {
        portable::domains(&self.backend).await
    }

    /// One brand-domain row, as stored.
    pub async fn domain(&self, org: &str, name: &str) -> Result<Option<DomainRow>, QueueError> {
        portable::domain(&self.backend, org, name).await
    }

    /// Stores a domain's new row unless another replica stored one for the
    /// same domain first; the row as stored (see `portable::adopt_domain`).
    pub async fn adopt_domain(&self, row: &DomainRow) -> Result<DomainRow, QueueError> {
        portable::adopt_domain(&self.backend, row).await
    }

    /// Takes a domain's due DNS check for this replica: `false` when another
    /// replica took it since `seen` was read.
    pub async fn claim_domain_check(&self, seen: &DomainRow, now: i64) -> Result<bool, QueueError> {
        portable::claim_domain_check(&self.backend, seen, now).await
    }

    /// Stores a brand-domain row (and, in the same transaction, a log entry).
    pub async fn save_domain(
        &self,
        row: &DomainRow,
        log: Option<&LogEntry>,
    ) -> Result<(), QueueError> {
        portable::save_domain(&self.backend, row, log).await
    }

    /// Forgets the brand-domain rows of objects that are gone.
    pub async fn delete_domain(&self, org: &str, name: &str) -> Result<(), QueueError> {
        portable::delete_domain(&self.backend, org, name).await
    }

    /// Appends one entry to the org's system log.
    pub async fn log(&self, log: &LogEntry) -> Result<(), QueueError> {
        portable::log(&self.backend, log).await
    }

    /// The latest test email of each org provider, from the system log:
    /// (org, provider name, its log entry), so that `status.lastTest`
    /// survives a restart.
    pub async fn last_tests(&self) -> Result<Vec<(String, String, LogEntry)>, QueueError> {
        portable::last_tests(&self.backend).await
    }
}

/// A stored attempt.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAttempt {
    pub number: u32,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<String>,
    pub reply: Option<String>,
    pub provider: Option<String>,
}

/// A stored message.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub id: String,
    pub org: String,
    pub state: String,
    pub sender: String,
    pub brand: Option<String>,
    pub content: StoredContent,
    pub attempt_count: u32,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub last_reply: Option<String>,
    pub provider: Option<String>,
    pub idempotency_key: Option<String>,
    pub attempts: Vec<StoredAttempt>,
}

/// Delivery totals of one provider, read at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderTotals {
    pub org: String,
    pub provider: String,
    pub sent: u64,
    pub failed: u64,
    pub retried: u64,
    pub delivery_millis: u64,
    pub last_delivery: Option<i64>,
    /// When the latest failed message failed, and its last reply.
    pub last_failure: Option<(i64, String)>,
}

/// A brand domain's stored validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRow {
    pub org: String,
    pub name: String,
    pub domain: String,
    pub record_name: String,
    pub token: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub polling_since: i64,
    pub checked_at: Option<i64>,
    pub verified_at: Option<i64>,
}
