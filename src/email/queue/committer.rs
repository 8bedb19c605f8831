//! The committer: the one task that applies the queue's writes (inserts,
//! finishes, claims) in batches, on the store's group-commit loop
//! ([`crate::store::group_commit`]). With `synchronous=FULL` every commit
//! costs a disk flush; batching keeps accepting cheap under load while each
//! caller still hears back only after its own write is durable.
//!
//! A batch is one transaction: when it fails (a full disk, a broken file),
//! it is rolled back and every caller of the batch hears of it (an accept
//! answers 503, a finish is tried again). When new messages meet a full
//! store beside other writes, the batch is written once more without them:
//! new mail must not also stop the outcomes of attempts and the claims that
//! drain the queue (an outcome not stored means the message is sent again
//! after its lease). What a batch writes, and how, is the backend's
//! (`sqlite/`).

use tokio::sync::oneshot;

use super::admission::{Admission, Admit};
use super::sqlite::{SqliteWriter, WriteConnection};
use super::{Applied, Claimed, Finished, Inserted, NewMessage, Next, QueueError};
use crate::store::group_commit::{BatchWriter, Pending};
use sqlx::sqlite::SqlitePool;

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 512;

/// A write waiting for the committer, with its caller's reply slot.
pub(super) enum Op {
    Insert(Box<Prepared>, oneshot::Sender<Result<Inserted, QueueError>>),
    Claim {
        now: i64,
        lease_until: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Claimed>, QueueError>>,
    },
    Finish(Box<Finished>, oneshot::Sender<Result<Applied, QueueError>>),
}

/// An insert with its content serialized by the caller (on the caller's
/// task, not the committer's).
pub(super) struct Prepared {
    pub(super) message: NewMessage,
    pub(super) content: String,
}

/// The task that applies writes in batches; the caller spawns [`Self::run`].
pub struct Committer {
    pending: Pending<Op>,
    batches: Batches,
}

/// What the committer keeps between batches: the backend's writer and
/// what it knows of the store's room.
struct Batches {
    writer: SqliteWriter,
    admission: Admission,
}

impl Committer {
    pub(super) fn new(pending: Pending<Op>, pool: SqlitePool, accept_limit: Option<i64>) -> Self {
        Self {
            pending,
            batches: Batches {
                writer: SqliteWriter::new(pool),
                admission: Admission::new(accept_limit),
            },
        }
    }

    /// Applies writes until every [`super::Queue`] handle is dropped.
    pub async fn run(self) {
        self.pending.run(MAX_BATCH, self.batches).await;
    }
}

impl BatchWriter for Batches {
    type Op = Op;

    async fn write(&mut self, ops: &mut Vec<Op>) {
        let mut batch = Batch::default();
        for op in ops.drain(..) {
            batch.push(op);
        }
        if !self.admission.is_measured() {
            match self.writer.measure().await {
                Ok((used, unfinished)) => self.admission.measured(used, unfinished),
                Err(e) => {
                    tracing::error!(error = %e, "cannot measure the message store; new mail waits")
                }
            }
        }
        let answers = match self.writer.connection().await {
            Ok(mut conn) => {
                let answers = self.write_admitting(&mut conn, &batch).await;
                self.writer.put_back(conn, answers.is_ok()).await;
                answers
            }
            Err(e) => Err(e),
        };
        match &answers {
            Ok(a) => self
                .admission
                .after_batch(a.used_bytes, a.unfinished_change(&batch)),
            Err(e) => {
                tracing::error!(error = %e, operations = batch.len(), "email queue write failed; batch rolled back");
            }
        }
        batch.reply(answers);
    }
}

impl Batches {
    /// The batch, with new messages admitted while they fit under the cap;
    /// on a full store, once more without its new messages (see the
    /// module's comment).
    async fn write_admitting(
        &self,
        conn: &mut WriteConnection,
        batch: &Batch,
    ) -> Result<Answers, QueueError> {
        let e = match conn.write(batch, &self.admission.admit()).await {
            Ok(answers) => return Ok(answers),
            Err(e) => e,
        };
        let others = !batch.finishes.is_empty() || !batch.claims.is_empty();
        if !matches!(e, QueueError::Full(_)) || batch.inserts.is_empty() || !others {
            return Err(e);
        }
        tracing::warn!(error = %e, new = batch.inserts.len(), "new messages do not fit in the store; writing the rest of the batch without them");
        conn.write(batch, &Admit::Refuse(e)).await
    }
}

/// A batch's operations sorted by kind, each with its caller's reply slot.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) inserts: Vec<Prepared>,
    insert_replies: Vec<oneshot::Sender<Result<Inserted, QueueError>>>,
    pub(super) finishes: Vec<Finished>,
    finish_replies: Vec<oneshot::Sender<Result<Applied, QueueError>>>,
    /// (now, lease_until, limit) of each claim.
    pub(super) claims: Vec<(i64, i64, usize)>,
    claim_replies: Vec<oneshot::Sender<Result<Vec<Claimed>, QueueError>>>,
}

/// What a batch's operations answer, in the order of each kind.
pub(super) struct Answers {
    /// Bytes the database's pages in use hold after the batch.
    pub(super) used_bytes: i64,
    pub(super) inserts: Vec<Result<Inserted, QueueError>>,
    pub(super) finishes: Vec<Applied>,
    pub(super) claims: Vec<Vec<Claimed>>,
}

impl Batch {
    fn push(&mut self, op: Op) {
        match op {
            Op::Insert(p, reply) => {
                self.inserts.push(*p);
                self.insert_replies.push(reply);
            }
            Op::Finish(f, reply) => {
                self.finishes.push(*f);
                self.finish_replies.push(reply);
            }
            Op::Claim {
                now,
                lease_until,
                limit,
                reply,
            } => {
                self.claims.push((now, lease_until, limit));
                self.claim_replies.push(reply);
            }
        }
    }

    fn len(&self) -> usize {
        self.inserts.len() + self.finishes.len() + self.claims.len()
    }

    /// Answers every caller; with an error, the batch was rolled back.
    fn reply(self, answers: Result<Answers, QueueError>) {
        match answers {
            Ok(a) => {
                for (s, r) in self.insert_replies.into_iter().zip(a.inserts) {
                    let _ = s.send(r);
                }
                for (s, r) in self.finish_replies.into_iter().zip(a.finishes) {
                    let _ = s.send(Ok(r));
                }
                for (s, r) in self.claim_replies.into_iter().zip(a.claims) {
                    let _ = s.send(Ok(r));
                }
            }
            Err(e) => {
                for s in self.insert_replies {
                    let _ = s.send(Err(e.clone()));
                }
                for s in self.finish_replies {
                    let _ = s.send(Err(e.clone()));
                }
                for s in self.claim_replies {
                    let _ = s.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Answers {
    /// How the batch changed the number of unfinished messages: new ones
    /// in, sent or failed ones out.
    fn unfinished_change(&self, batch: &Batch) -> i64 {
        let new = self
            .inserts
            .iter()
            .filter(|r| matches!(r, Ok(Inserted::New(_))))
            .count();
        let done = batch
            .finishes
            .iter()
            .zip(&self.finishes)
            .filter(|(f, applied)| **applied && !matches!(f.next, Next::Retry(_)))
            .count();
        new as i64 - done as i64
    }
}
