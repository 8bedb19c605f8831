//! Delivery: the dispatcher takes due messages from the queue as soon as a
//! commit or a finished attempt wakes it (or the next due time comes; there
//! is no polling). On a store that several replicas share, each replica's
//! commits of new mail wake every dispatcher (LISTEN/NOTIFY, see
//! `Queue::relay_commits`), and a dispatcher also looks once a second, as a
//! wake-up can be lost. Workers make the attempts through the provider each
//! org has *now* (a worker takes a share of a backlog at once, which goes
//! out chained on one connection), then record the outcomes the retry rule
//! decides, each as soon as it is known.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tracing::Instrument;

use super::message;
use super::queue::{Claimed, Finished, LogEntry, Next, Outcome, Queue, QueueError};
use super::retry::{AttemptResult, Decision, RetryPolicy, decide};
use super::smtp::{Endpoint, SmtpClient};
use super::status_metrics::DeliveryStats;
use crate::index::{OrgConfig, ProviderConfig, Snapshot};
use crate::runtime::Stop;

/// The installation's default provider (flags).
#[derive(Clone, Debug)]
pub struct DefaultProvider {
    pub endpoint: Endpoint,
    pub policy: RetryPolicy,
}

/// Where an org's mail goes now.
#[derive(Clone, Debug)]
pub struct Route {
    pub endpoint: Endpoint,
    pub policy: RetryPolicy,
    pub via: Via,
    /// Why the route cannot be used now (the provider's password Secret
    /// is missing): attempts fail transiently without connecting, so the
    /// mail waits for the Secret under the provider's retry rule.
    pub blocked: Option<String>,
}

/// Which provider an attempt used: the org's (by name) or the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    Custom(String),
    Default,
}

impl Via {
    /// As stored and shown: `EmailProvider/NAME` or `default`.
    pub fn label(&self) -> String {
        match self {
            Self::Custom(n) => format!("EmailProvider/{n}"),
            Self::Default => "default".into(),
        }
    }

    /// The provider label of the Prometheus metrics: `custom` or `default`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Custom(_) => "custom",
            Self::Default => "default",
        }
    }
}

/// The endpoint of an org's provider, credentials as the snapshot has them
/// (none while its password cannot be read: see [`Route::blocked`]).
fn provider_endpoint(p: &ProviderConfig) -> Endpoint {
    Endpoint {
        host: p.host.clone(),
        port: p.port,
        tls: p.tls,
        credentials: p
            .password
            .as_ref()
            .ok()
            .map(|password| (p.username.clone(), password.clone())),
        trusted: false,
    }
}

/// The route through an org's own provider, enabled or not.
pub fn provider_route(p: &ProviderConfig) -> Route {
    Route {
        endpoint: provider_endpoint(p),
        policy: RetryPolicy::of_provider(p),
        via: Via::Custom(p.name.clone()),
        blocked: p
            .password
            .as_ref()
            .err()
            .map(|reason| format!("EmailProvider {} cannot be used: {reason}", p.name)),
    }
}

/// The default-provider rule: the org's EmailProvider while it is enabled
/// (never falling back, even when it fails), else the installation's
/// default provider, else none.
pub fn route(org: Option<&OrgConfig>, default: Option<&DefaultProvider>) -> Option<Route> {
    if let Some(p) = org
        .and_then(|o| o.email_provider.as_ref())
        .filter(|p| p.enabled)
    {
        return Some(provider_route(p));
    }
    default.map(|d| Route {
        endpoint: d.endpoint.clone(),
        policy: d.policy,
        via: Via::Default,
        blocked: None,
    })
}

/// Claimed messages buffered per worker: claims (commits) come in batches
/// while the workers send. At a slow server a message can wait longer
/// than its lease allows; it is then released (see `work`), not tried.
const BUFFER_PER_WORKER: usize = 64;

/// Most claimed messages a worker takes at once from a backlog: those for
/// one provider go out chained on one connection (one round trip each
/// instead of two).
const CHAIN: usize = 8;

/// On a store other replicas share, the longest the dispatcher sleeps
/// without looking at the queue: their wake-ups (NOTIFY) are only hints.
const SHARED_FALLBACK: Duration = Duration::from_secs(1);

/// An attempt made, its outcome not yet stored.
struct AttemptDone {
    message: Claimed,
    finished: Finished,
    via: Via,
}

/// What the delivery tasks share.
pub struct Deliverer {
    pub queue: Queue,
    pub smtp: Arc<SmtpClient>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub default: Option<DefaultProvider>,
    pub stats: Arc<DeliveryStats>,
    /// Notified on every commit that may make work due.
    pub wake: Arc<Notify>,
    pub concurrency: usize,
    pub lease: Duration,
    /// On a stop the dispatcher claims no more, attempts under way finish
    /// and are stored, and claimed messages not yet tried are released.
    pub stop: Stop,
}

pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Deliverer {
    /// Runs the dispatcher until the process ends or stops.
    pub async fn run(self: Arc<Self>) {
        // Before the first full sync no org has its provider yet: an attempt
        // now would fail for want of configuration.
        let mut snapshots = self.snapshots.clone();
        tokio::select! {
            synced = snapshots.wait_for(|s| s.synced) => if synced.is_err() { return },
            () = self.stop.requested.cancelled() => return,
        }
        // Other replicas' new mail wakes this dispatcher too (shared store).
        if self.queue.is_shared() {
            let this = self.clone();
            tokio::spawn(async move {
                this.queue
                    .relay_commits(&this.wake, &this.stop.requested)
                    .await;
            });
        }
        // `concurrency` workers, each with one SMTP attempt at a time, fed
        // through a buffer of as many claimed messages, so that claiming
        // (a commit) overlaps with sending.
        let workers = self.concurrency.max(1);
        let (buffer, claimed_rx) = mpsc::channel::<Claimed>(workers * BUFFER_PER_WORKER);
        let claimed_rx = Arc::new(Mutex::new(claimed_rx));
        // Workers signal here when they have taken half the buffer; new
        // work (an accept, a retry) signals `wake`, which is not needed
        // while the buffer is full.
        let room = Arc::new(Notify::new());
        for _ in 0..workers {
            self.stop
                .tracker
                .spawn(self.clone().work(claimed_rx.clone(), room.clone()));
        }
        // Returning drops `buffer`: the workers release what it still
        // holds, then end.
        let stopping = self.stop.requested.clone();
        loop {
            let free = buffer.capacity();
            if free == 0 || free < buffer.max_capacity() / 2 {
                // Enough is buffered: claim again, in one larger batch, when
                // the workers have taken half of it.
                tokio::select! {
                    () = room.notified() => continue,
                    () = stopping.cancelled() => return,
                }
            }
            if stopping.is_cancelled() {
                return;
            }
            let now = now_millis();
            let claimed = match self.queue.claim(now, now + millis(self.lease), free).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot take emails from the queue; retrying in 1s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = stopping.cancelled() => return,
                    }
                }
            };
            let full = claimed.len() == free;
            for message in claimed {
                // Only this loop sends, and it claimed no more than the room.
                if buffer.try_send(message).is_err() {
                    tracing::warn!("the delivery buffer is full; the message waits for its lease");
                }
            }
            if full {
                continue;
            }
            let next = match self.queue.next_due().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the queue; retrying in 1s");
                    Some(now_millis() + 1000)
                }
            };
            // On a shared store a wake-up from another replica is a hint
            // that can be lost: look at least every SHARED_FALLBACK.
            let fallback = self.queue.is_shared().then_some(SHARED_FALLBACK);
            let until_due = next.map(|at| Duration::from_millis((at - now_millis()).max(0) as u64));
            match until_due.into_iter().chain(fallback).min() {
                Some(wait) => tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    () = stopping.cancelled() => return,
                },
                None => tokio::select! {
                    _ = self.wake.notified() => {}
                    () = stopping.cancelled() => return,
                },
            }
        }
    }

    /// A worker: takes a claimed message (and, while more are waiting than
    /// there are workers, up to [`CHAIN`] in all) and makes the attempts;
    /// each outcome is stored, as soon as it is known, while it goes on.
    /// Once a stop is requested it releases what it takes instead, and
    /// ends when the dispatcher has gone.
    async fn work(
        self: Arc<Self>,
        claimed: Arc<Mutex<mpsc::Receiver<Claimed>>>,
        room: Arc<Notify>,
    ) {
        let workers = self.concurrency.max(1);
        let half_lease = millis(self.lease) / 2;
        let mut taken = Vec::with_capacity(CHAIN);
        loop {
            let (left, stopping) = {
                let mut rx = claimed.lock().await;
                let Some(first) = rx.recv().await else {
                    return;
                };
                taken.push(first);
                // Stopping: everything buffered is taken, to be released.
                // Else a share of a backlog only: with few waiting, the
                // other workers take them.
                let stopping = self.stop.requested.is_cancelled();
                let share = if stopping {
                    usize::MAX
                } else {
                    (rx.len() / workers).min(CHAIN - 1)
                };
                for _ in 0..share {
                    match rx.try_recv() {
                        Ok(m) => taken.push(m),
                        Err(_) => break,
                    }
                }
                (rx.len() * 2 <= rx.max_capacity(), stopping)
            };
            if stopping {
                let released = taken.drain(..).map(|m| (m.id, m.attempt)).collect();
                self.release(released, "stopping").await;
                continue;
            }
            if left {
                // Half the buffer is taken: time for the next claim.
                room.notify_one();
            }
            // Waited past half its lease for a worker (a backlog at a slow
            // server): back to the queue, claim undone, to be claimed again
            // with a lease of its own; not left to its lease, which would
            // record an interrupted attempt and delay it by a whole lease.
            let now = now_millis();
            let (stale, fresh): (Vec<Claimed>, Vec<Claimed>) = taken
                .drain(..)
                .partition(|m| now - m.started_at > half_lease);
            let stale = stale.into_iter().map(|m| (m.id, m.attempt)).collect();
            self.release(
                stale,
                "claimed emails waited past half their lease for a worker",
            )
            .await;
            self.attempt_all(fresh).await;
        }
    }

    /// One attempt for each message, through the provider its org has now;
    /// each outcome is stored as soon as it is known. Messages for the same
    /// provider go out together, chained on one connection when the server
    /// pipelines.
    async fn attempt_all(self: &Arc<Self>, messages: Vec<Claimed>) {
        let snapshot = self.snapshots.borrow().clone();
        let mut slots: Vec<Option<(Claimed, Option<Route>)>> = Vec::with_capacity(messages.len());
        // (endpoint, [(slot, message)]) in the order first seen.
        let mut groups: Vec<(Endpoint, Vec<(usize, lettre::Message)>)> = Vec::new();
        for m in messages {
            let route = route(
                snapshot.org(&m.org).map(|c| c.as_ref()),
                self.default.as_ref(),
            );
            let early = match (&m.content, &route) {
                (Err(reason), _) => Some(AttemptResult::Permanent(reason.clone())),
                (Ok(_), None) => Some(AttemptResult::Transient(
                    "no email provider: the org has no enabled EmailProvider and the installation has no default provider".into(),
                )),
                (Ok(_), Some(Route {
                    blocked: Some(why), ..
                })) => Some(AttemptResult::Transient(format!(
                    "{why} (and never the default provider while it is enabled)"
                ))),
                (Ok(content), Some(r)) => match message::build(&m.id, &m.sender, content) {
                    Err(e) => Some(AttemptResult::Permanent(e)),
                    Ok(msg) => {
                        let slot = slots.len();
                        match groups.iter_mut().find(|(e, _)| *e == r.endpoint) {
                            Some((_, g)) => g.push((slot, msg)),
                            None => groups.push((r.endpoint.clone(), vec![(slot, msg)])),
                        }
                        None
                    }
                },
            };
            match early {
                Some(result) => self.store(self.conclude(m, route, result)),
                None => slots.push(Some((m, route))),
            }
        }
        // No attempt outlives its lease (past it another attempt may start),
        // and none starts with less than a quarter of that time left.
        let limit = self.lease.mul_f64(0.8);
        let margin = millis(limit) / 4;
        for (endpoint, group) in groups {
            let (indexes, built): (Vec<usize>, Vec<lettre::Message>) = group.into_iter().unzip();
            // The group stops at the earliest claim's deadline.
            let claimed_at = indexes
                .iter()
                .filter_map(|&i| slots[i].as_ref().map(|(m, _)| m.started_at))
                .min()
                .unwrap_or_else(now_millis);
            let deadline = claimed_at + millis(limit);
            let left = Duration::from_millis((deadline - now_millis()).max(0) as u64);
            let mut done = |k: usize, result: AttemptResult| {
                if let Some((m, route)) = slots[indexes[k]].take() {
                    self.store(self.conclude(m, route, result));
                }
            };
            let stopping = &self.stop.requested;
            let go_on = || !stopping.is_cancelled() && now_millis() < deadline - margin;
            // One span per SMTP session: the messages chained on it.
            let session = tracing::info_span!(
                "smtp_session",
                host = %endpoint.host,
                port = endpoint.port,
                messages = built.len(),
            );
            let finished = tokio::time::timeout(
                left,
                self.smtp.deliver_all(&endpoint, &built, &go_on, &mut done),
            )
            .instrument(session)
            .await
            .is_ok();
            // Outcomes come in order: the first message without one was
            // under way when the deadline came (it counts); those after it
            // were not begun, nor any when `deliver_all` stopped on its own
            // (a stop, or too little time left): back to the queue.
            let mut pending = indexes.iter().filter_map(|&i| slots[i].take());
            if !finished && let Some((m, route)) = pending.next() {
                let result = AttemptResult::Transient(format!(
                    "the attempt took longer than {:.1}s",
                    limit.as_secs_f64()
                ));
                self.store(self.conclude(m, route, result));
            }
            let untried = pending.map(|(m, _)| (m.id, m.attempt)).collect();
            let why = if stopping.is_cancelled() {
                "stopping"
            } else {
                "too little of their lease was left to begin them"
            };
            self.release(untried, why).await;
        }
    }

    /// Returns claimed messages not tried to the queue (`why`: a stop,
    /// or too little of their lease left), due again at once with their
    /// claim undone, and wakes the dispatcher to claim them again.
    async fn release(&self, claims: Vec<(String, u32)>, why: &str) {
        if claims.is_empty() {
            return;
        }
        match self.queue.release(&claims, now_millis()).await {
            Ok(n) => tracing::info!(
                released = n,
                "{why}: claimed emails not yet tried are queued again"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "{why}: cannot release claimed emails; they are taken up after their lease"
            ),
        }
        self.wake.notify_one();
    }

    /// Stores an outcome in the background, waking the dispatcher when that
    /// changed when it next has work.
    fn store(self: &Arc<Self>, done: AttemptDone) {
        let this = self.clone();
        // One span per attempt: what storing its outcome logs is about it.
        let span = tracing::info_span!(
            "email_attempt",
            org = %done.message.org,
            message_id = %done.message.id,
            attempt = done.message.attempt,
        );
        // Tracked: a stop waits until the outcome is stored.
        self.stop.tracker.spawn(
            async move {
                tracing::debug!(outcome = ?done.finished.outcome, "attempt made");
                if this.record(done).await {
                    this.wake.notify_one();
                }
            }
            .instrument(span),
        );
    }

    /// The outcome to store for one attempt: the retry rule's decision and
    /// the delivery event.
    fn conclude(&self, m: Claimed, route: Option<Route>, result: AttemptResult) -> AttemptDone {
        let policy = route
            .as_ref()
            .map(|r| r.policy)
            .or(self.default.as_ref().map(|d| d.policy))
            .unwrap_or(RetryPolicy {
                max_attempts: 5,
                initial_delay: Duration::from_secs(60),
                multiplier: 4,
                max_delay: Duration::from_secs(3600),
            });
        let via = route
            .as_ref()
            .map(|r| r.via.clone())
            .unwrap_or(Via::Default);
        let provider = route
            .as_ref()
            .map_or_else(|| "none".to_string(), |r| r.via.label());
        let decision = decide(&policy, m.counted, &result, rand::random::<f64>());
        let finished_at = now_millis();
        let (outcome, reply) = match &result {
            AttemptResult::Delivered(r) => (Outcome::Sent, r),
            AttemptResult::Transient(r) => (Outcome::Transient, r),
            AttemptResult::Permanent(r) => (Outcome::Permanent, r),
        };
        let reply = stored_reply(reply);
        let next = match decision {
            Decision::Sent => Next::Sent,
            Decision::Fail => Next::Failed,
            Decision::Retry(after) => Next::Retry(finished_at + millis(after)),
        };
        let event = |outcome: &str| LogEntry {
            org: m.org.clone(),
            type_: "email.delivery".into(),
            outcome: outcome.into(),
            time: rfc3339(finished_at),
            subject: m.id.clone(),
            detail: json!({
                "messageId": m.id,
                "from": m.sender,
                "to": m.content.as_ref().ok().map(|c| &c.to),
                "cc": m.content.as_ref().ok().map(|c| &c.cc),
                "attempts": m.counted,
                "provider": provider,
                "reply": reply,
            }),
        };
        let log = match next {
            Next::Sent => Some(event("SUCCESS")),
            Next::Failed => Some(event("FAILURE")),
            Next::Retry(_) => None,
        };
        let finished = Finished {
            id: m.id.clone(),
            attempt: m.attempt,
            started_at: m.started_at,
            finished_at,
            outcome,
            reply: reply.clone(),
            provider: provider.clone(),
            next,
            log,
        };
        AttemptDone {
            message: m,
            finished,
            via,
        }
    }

    /// Stores an attempt's outcome and counts it; `true` when that changed
    /// when the dispatcher next has work (a retry is scheduled, or the
    /// outcome could not be stored and the message waits for its lease).
    async fn record(&self, done: AttemptDone) -> bool {
        let AttemptDone {
            message: m,
            finished,
            via,
        } = done;
        let (next, outcome, finished_at, reply) = (
            finished.next,
            finished.outcome,
            finished.finished_at,
            finished.reply.clone(),
        );
        let lease_end = m.started_at + millis(self.lease);
        match self.store_outcome(finished, lease_end).await {
            Ok(true) => match next {
                Next::Sent => {
                    self.stats.sent(&m.org, &via, m.created_at, finished_at);
                    false
                }
                Next::Failed => {
                    self.stats.failed(
                        &m.org,
                        &via,
                        outcome == Outcome::Permanent,
                        finished_at,
                        &reply,
                    );
                    false
                }
                Next::Retry(_) => {
                    self.stats.retried(&m.org, &via);
                    true
                }
            },
            Ok(false) => {
                tracing::warn!(
                    message = %m.id,
                    "an attempt finished after its lease ran out; the newer attempt decides"
                );
                false
            }
            Err(e) => {
                tracing::error!(
                    message = %m.id,
                    error = %e,
                    "cannot store the outcome of an attempt; the message is retried after its lease"
                );
                true
            }
        }
    }

    /// Stores an outcome, trying again (100 ms, doubling up to 5 s) while
    /// the store fails and the attempt still holds its lease: an outcome
    /// lost to a store that was locked or full for a moment would have the
    /// message sent again after the lease.
    async fn store_outcome(&self, finished: Finished, lease_end: i64) -> Result<bool, QueueError> {
        let mut pause = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let e = match self.queue.finish(finished.clone()).await {
                Ok(applied) => return Ok(applied),
                Err(e @ QueueError::Closed) => return Err(e),
                Err(e) => e,
            };
            if now_millis() + millis(pause) >= lease_end {
                return Err(e);
            }
            if !warned {
                tracing::warn!(
                    message = %finished.id,
                    error = %e,
                    "cannot store the outcome of an attempt yet; trying again while its lease lasts"
                );
                warned = true;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

/// The most of a server's reply kept with an attempt (and in its event):
/// enough for any real reply's code and reason, and a bound on what each
/// attempt adds to the store, which a store cap must reserve room for.
pub const MAX_STORED_REPLY: usize = 400;

/// `reply`, cut at [`MAX_STORED_REPLY`] bytes (on a character boundary)
/// with a mark that it was cut.
fn stored_reply(reply: &str) -> String {
    if reply.len() <= MAX_STORED_REPLY {
        return reply.to_string();
    }
    let mut end = MAX_STORED_REPLY - 3;
    while !reply.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &reply[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn long_replies_are_cut_for_the_store() {
        assert_eq!(stored_reply("250 2.0.0 Ok"), "250 2.0.0 Ok");
        let long = format!("451 {}", "é".repeat(400));
        let cut = stored_reply(&long);
        assert!(
            cut.len() <= MAX_STORED_REPLY && cut.ends_with("..."),
            "{cut}"
        );
        assert!(long.starts_with(cut.trim_end_matches("...")));
    }
    use crate::resources::TlsMode;

    fn provider(enabled: bool) -> ProviderConfig {
        ProviderConfig {
            name: "corp".into(),
            enabled,
            host: "smtp.corp.example".into(),
            port: 587,
            username: "u".into(),
            password: Ok(Secret::from_secret(b"pw", "1")),
            tls: TlsMode::Starttls,
            max_attempts: 3,
            initial_delay_millis: 200,
            multiplier: 2,
            max_delay_millis: 1000,
        }
    }

    fn default_provider() -> DefaultProvider {
        DefaultProvider {
            endpoint: Endpoint {
                host: "relay.example".into(),
                port: 25,
                tls: TlsMode::None,
                credentials: None,
                trusted: true,
            },
            policy: RetryPolicy {
                max_attempts: 5,
                initial_delay: Duration::from_secs(1),
                multiplier: 2,
                max_delay: Duration::from_secs(10),
            },
        }
    }

    #[test]
    fn default_provider_rule() {
        let enabled = OrgConfig {
            email_provider: Some(provider(true)),
            ..Default::default()
        };
        let disabled = OrgConfig {
            email_provider: Some(provider(false)),
            ..Default::default()
        };
        let none = OrgConfig::default();
        let d = default_provider();
        let cases: [(Option<&OrgConfig>, Option<&DefaultProvider>, Option<Via>); 6] = [
            (Some(&enabled), Some(&d), Some(Via::Custom("corp".into()))),
            (Some(&enabled), None, Some(Via::Custom("corp".into()))),
            (Some(&disabled), Some(&d), Some(Via::Default)),
            (Some(&disabled), None, None),
            (Some(&none), Some(&d), Some(Via::Default)),
            (None, None, None),
        ];
        for (org, default, want) in cases {
            assert_eq!(route(org, default).map(|r| r.via), want);
        }
        let r = route(Some(&enabled), Some(&d)).unwrap();
        assert_eq!(r.policy.max_attempts, 3);
        assert_eq!(r.endpoint.host, "smtp.corp.example");
        assert_eq!(r.blocked, None);

        // Enabled without its password Secret: still the org's route (the
        // mail waits), blocked, with no credentials; disabled: the default.
        let missing = |enabled| OrgConfig {
            email_provider: Some(ProviderConfig {
                password: Err("spec.passwordSecretRef: Secret acme/smtp not found".into()),
                ..provider(enabled)
            }),
            ..Default::default()
        };
        let r = route(Some(&missing(true)), Some(&d)).unwrap();
        assert_eq!(r.via, Via::Custom("corp".into()));
        assert_eq!(
            r.blocked.as_deref(),
            Some(
                "EmailProvider corp cannot be used: spec.passwordSecretRef: Secret acme/smtp not found"
            )
        );
        assert!(r.endpoint.credentials.is_none());
        let r = route(Some(&missing(false)), Some(&d)).unwrap();
        assert_eq!((r.via, r.blocked), (Via::Default, None));
    }
}
