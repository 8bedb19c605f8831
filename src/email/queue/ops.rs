//! The committer's operations: a write waiting with its caller's reply
//! slot ([`Op`]), a batch of them sorted by kind ([`Batch`]), and what a
//! batch answers ([`Answers`]). Plain data, shared by the committer, the
//! rules and the backend.

use tokio::sync::oneshot;

use super::{Applied, Claimed, Finished, Inserted, NewMessage, Next, QueueError};

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
    /// The batch of `ops`, which it empties.
    pub(super) fn take_from(ops: &mut Vec<Op>) -> Self {
        let mut batch = Self::default();
        for op in ops.drain(..) {
            batch.push(op);
        }
        batch
    }

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

    pub(super) fn len(&self) -> usize {
        self.inserts.len() + self.finishes.len() + self.claims.len()
    }

    /// Answers every caller; with an error, the batch was rolled back.
    pub(super) fn reply(self, answers: Result<Answers, QueueError>) {
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
    pub(super) fn unfinished_change(&self, batch: &Batch) -> i64 {
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
