//! The committer's PostgreSQL side: a pooled connection per batch, and the
//! transaction around the batch's statements (`batch.rs`).

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPool;
use sqlx::{Connection, Postgres, Row};

use super::batch;
use crate::email::queue::QueueError;
use crate::email::queue::admission::Admit;
use crate::email::queue::ops::{Answers, Batch};

/// Where the committer's batches run.
pub(crate) struct PgWriter {
    pool: PgPool,
}

/// A connection taken for one batch.
pub(crate) struct WriteConnection(PoolConnection<Postgres>);

impl PgWriter {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Bytes in use (none counted: a PostgreSQL database has no cap of
    /// idplane's) and unfinished messages.
    pub(crate) async fn measure(&self) -> Result<(i64, i64), QueueError> {
        let row = sqlx::query("SELECT count(*) FROM email_messages WHERE due_at IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok((0, row.try_get(0)?))
    }

    /// A connection from the pool; waits at most the pool's short acquire
    /// timeout when the server cannot be reached
    /// ([`QueueError::Unavailable`]).
    pub(crate) async fn connection(&mut self) -> Result<WriteConnection, QueueError> {
        Ok(WriteConnection(self.pool.acquire().await?))
    }

    /// Returns the batch's connection to the pool; after a failure it is
    /// closed, with whatever state the failure left it in.
    pub(crate) async fn put_back(&mut self, conn: WriteConnection, succeeded: bool) {
        if !succeeded {
            let _ = conn.0.close().await;
        }
    }
}

impl WriteConnection {
    /// One transaction for the whole batch, new messages written as
    /// `admit` says; rolled back when it fails.
    pub(crate) async fn write(
        &mut self,
        batch: &Batch,
        admit: &Admit,
    ) -> Result<Answers, QueueError> {
        let mut tx = self.0.begin().await?;
        match batch::write(&mut tx, batch, admit).await {
            Ok(answers) => {
                tx.commit().await?;
                Ok(answers)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}
