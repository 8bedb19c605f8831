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
//! (`sqlite/`, `postgres/`); [`Writer`] and [`WriteConnection`] hand each
//! call to the one in use.

use super::admission::{Admission, Admit};
use super::ops::{Answers, Batch, Op};
use super::{QueueError, postgres, sqlite};
use crate::store::Backend;
use crate::store::group_commit::{BatchWriter, Pending};

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 512;

/// The task that applies writes in batches; the caller spawns [`Self::run`].
pub struct Committer {
    pending: Pending<Op>,
    batches: Batches,
}

/// What the committer keeps between batches: the backend's writer and
/// what it knows of the store's room.
struct Batches {
    writer: Writer,
    admission: Admission,
}

/// The backend's side of the committer.
enum Writer {
    Sqlite(sqlite::SqliteWriter),
    Postgres(postgres::PgWriter),
}

/// A connection taken for one batch, of the backend in use.
enum WriteConnection {
    Sqlite(sqlite::WriteConnection),
    Postgres(postgres::WriteConnection),
}

impl Writer {
    /// Bytes in use and unfinished messages, when the committer starts.
    async fn measure(&self) -> Result<(i64, i64), QueueError> {
        match self {
            Self::Sqlite(w) => w.measure().await,
            Self::Postgres(w) => w.measure().await,
        }
    }

    async fn connection(&mut self) -> Result<WriteConnection, QueueError> {
        Ok(match self {
            Self::Sqlite(w) => WriteConnection::Sqlite(w.connection().await?),
            Self::Postgres(w) => WriteConnection::Postgres(w.connection().await?),
        })
    }

    /// Hands the batch's connection back after a batch that `succeeded`
    /// or not.
    async fn put_back(&mut self, conn: WriteConnection, succeeded: bool) {
        match (self, conn) {
            (Self::Sqlite(w), WriteConnection::Sqlite(c)) => w.put_back(c, succeeded).await,
            (Self::Postgres(w), WriteConnection::Postgres(c)) => w.put_back(c, succeeded).await,
            // A connection of the other backend cannot have been taken.
            _ => {}
        }
    }
}

impl WriteConnection {
    /// The batch in one transaction, new messages written as `admit` says.
    async fn write(&mut self, batch: &Batch, admit: &Admit) -> Result<Answers, QueueError> {
        match self {
            Self::Sqlite(c) => c.write(batch, admit).await,
            Self::Postgres(c) => c.write(batch, admit).await,
        }
    }
}

impl Committer {
    pub(super) fn new(pending: Pending<Op>, backend: Backend, accept_limit: Option<i64>) -> Self {
        let writer = match backend {
            Backend::Sqlite(pool) => Writer::Sqlite(sqlite::SqliteWriter::new(pool)),
            Backend::Postgres(pool) => Writer::Postgres(postgres::PgWriter::new(pool)),
        };
        Self {
            pending,
            batches: Batches {
                writer,
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
        let batch = Batch::take_from(ops);
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
