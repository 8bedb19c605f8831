//! The group-commit loop of the store's batched writers (the telephony
//! store writer, the email queue's committer). Callers queue operations on
//! a bounded channel ([`Submitter`]); one task takes whatever has queued,
//! up to a batch size, and hands it to the writer ([`BatchWriter`]), which
//! applies it in one transaction and answers each caller. With
//! `synchronous=FULL` every commit costs a disk flush: a batch pays it
//! once, and each caller still hears back only after its own write is
//! durable. When every [`Submitter`] is dropped, what is still queued is
//! written before the loop ends.
//!
//! The loop knows nothing of the operations: what a batch writes, how a
//! failure is answered and what is admitted are the writer's.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// The writer has stopped: its loop ended, or it dropped the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the store writer has stopped")]
pub struct Stopped;

/// What one writer does with a batch.
pub trait BatchWriter {
    type Op: Send;

    /// Applies `batch`, in order, and answers its operations' callers. The
    /// loop empties `batch` afterwards.
    fn write(&mut self, batch: &mut Vec<Self::Op>) -> impl Future<Output = ()> + Send;
}

/// The callers' side: queues operations for the writer. When the channel
/// is full, callers wait (a disk that cannot keep up slows callers down
/// rather than growing memory).
pub struct Submitter<Op> {
    ops: mpsc::Sender<Op>,
}

impl<Op> Clone for Submitter<Op> {
    fn clone(&self) -> Self {
        Self {
            ops: self.ops.clone(),
        }
    }
}

impl<Op: Send> Submitter<Op> {
    /// Queues an operation that expects no answer.
    pub async fn send(&self, op: Op) -> Result<(), Stopped> {
        self.ops.send(op).await.map_err(|_| Stopped)
    }

    /// Queues the operation `op` builds around its answer's sender, and
    /// waits for the answer.
    pub async fn request<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<T>) -> Op,
    ) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(op(reply)).await?;
        answer.await.map_err(|_| Stopped)
    }
}

/// The writer's side: the operations waiting.
pub struct Pending<Op> {
    ops: mpsc::Receiver<Op>,
}

/// A channel of at most `capacity` waiting operations.
pub fn channel<Op>(capacity: usize) -> (Submitter<Op>, Pending<Op>) {
    let (tx, rx) = mpsc::channel(capacity);
    (Submitter { ops: tx }, Pending { ops: rx })
}

impl<Op: Send> Pending<Op> {
    /// Hands `writer` whatever has queued, at most `max_batch` operations
    /// at a time, until every [`Submitter`] is dropped and nothing is left.
    pub async fn run<W: BatchWriter<Op = Op>>(mut self, max_batch: usize, mut writer: W) {
        let mut batch = Vec::with_capacity(max_batch);
        while self.ops.recv_many(&mut batch, max_batch).await > 0 {
            writer.write(&mut batch).await;
            batch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each batch it is handed.
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<Vec<u32>>>>);

    impl BatchWriter for Recorder {
        type Op = u32;

        async fn write(&mut self, batch: &mut Vec<u32>) {
            self.0.lock().unwrap().push(batch.clone());
        }
    }

    #[tokio::test]
    async fn what_queued_is_written_in_batches_and_flushed_at_the_end() {
        let (ops, pending) = channel(16);
        for op in 0..5 {
            ops.send(op).await.unwrap();
        }
        drop(ops);
        let seen = std::sync::Arc::default();
        pending.run(2, Recorder(std::sync::Arc::clone(&seen))).await;
        assert_eq!(*seen.lock().unwrap(), [vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[tokio::test]
    async fn a_request_is_stopped_when_its_answer_is_dropped() {
        let (ops, pending) = channel::<oneshot::Sender<()>>(1);
        drop(pending);
        assert_eq!(ops.request(|reply| reply).await, Err(Stopped));
    }
}
