//! SMTP through lettre: pooled connections for delivery, and single fresh
//! connections for verification and test emails (connect, TLS, AUTH, QUIT)
//! that say which step failed. Credentials come only from the
//! [`Endpoint`] the caller builds from the newest snapshot; a transport is
//! keyed by the whole endpoint, so a new host or port never runs with
//! credentials that were not read with it. Every connection to an org's
//! server dials only addresses the egress rule admitted (see
//! [`crate::egress`]): the host is resolved and filtered here, and lettre
//! is handed those addresses, never the name.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;

use super::retry::AttemptResult;
use crate::egress::Egress;
use crate::index::SecretValue;
use crate::resources::TlsMode;

/// How to reach an SMTP server, with the credentials to use there.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Username and password; `None` sends no AUTH.
    pub credentials: Option<(String, Secret)>,
    /// The installation's own default provider: aimed by idplane's flags,
    /// which also set the egress rule, not by an org, so not under it.
    pub trusted: bool,
}

impl std::hash::Hash for Endpoint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.host.hash(state);
        self.port.hash(state);
        tls_name(self.tls).hash(state);
        self.credentials.hash(state);
        self.trusted.hash(state);
    }
}

/// A password, compared by value and never printed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Arc<Vec<u8>>);

impl From<&SecretValue> for Secret {
    fn from(v: &SecretValue) -> Self {
        Self(v.0.clone())
    }
}

impl Secret {
    pub fn new(text: &str) -> Self {
        Self(Arc::new(text.as_bytes().to_vec()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} ({}), user {}",
            self.host,
            self.port,
            tls_name(self.tls),
            self.credentials.as_ref().map_or("<none>", |c| c.0.as_str())
        )
    }
}

pub fn tls_name(tls: TlsMode) -> &'static str {
    match tls {
        TlsMode::Starttls => "starttls",
        TlsMode::Implicit => "implicit TLS",
        TlsMode::None => "no TLS",
    }
}

/// Settings shared by every connection.
#[derive(Clone)]
pub struct SmtpOptions {
    /// Each network step (connect, a command, a reply) at most.
    pub timeout: Duration,
    /// Idle connections kept per server.
    pub pool_size: u32,
    /// Certificate authorities trusted besides the public ones.
    pub extra_roots: Vec<Certificate>,
    /// Where connections to org servers may go, and the resolver.
    pub egress: Arc<Egress>,
}

/// Which step of a fresh connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reading the password from its Secret, before any connection.
    Credentials,
    /// The egress rule refused every address of the host: no connection.
    Egress,
    Connect,
    Tls,
    Auth,
    Send,
}

impl Step {
    /// The `Verified` condition's reason for a failure at this step.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Credentials => "SecretNotFound",
            Self::Egress => "EgressRefused",
            Self::Connect => "ConnectionFailed",
            Self::Tls => "TlsFailed",
            Self::Auth => "AuthFailed",
            Self::Send => "SendFailed",
        }
    }
}

/// A failed fresh connection or send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub step: Step,
    pub message: String,
    /// A 5xx reply (as opposed to a transient failure).
    pub permanent: bool,
}

/// Idle connections are not reused after this long (servers drop them).
const MAX_IDLE: Duration = Duration::from_secs(50);

/// Pooled connections by endpoint, and fresh connections.
pub struct SmtpClient {
    options: SmtpOptions,
    idle: Mutex<HashMap<Endpoint, Vec<(Connection, Instant)>>>,
}

/// An open connection and whether its server offers PIPELINING.
pub struct Connection {
    pub inner: AsyncSmtpConnection,
    pub pipelining: bool,
}

/// The message content after DATA: dot-stuffed, ending in `CRLF.CRLF`.
pub fn data_body(message: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(message).ok()?;
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    Some(out)
}

/// Raw command text (the message after DATA, or a pipelined group) that
/// goes out in one write.
struct Raw(String);

impl std::fmt::Display for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether an EHLO reply offers PIPELINING (RFC 2920). lettre's own
/// `ServerInfo` does not record that keyword.
pub fn offers_pipelining(ehlo: &Response) -> bool {
    ehlo.message().skip(1).any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
    })
}

/// MAIL FROM for a message (8BITMIME when its content is not ASCII).
fn mail_command(envelope: &lettre::address::Envelope, bytes: &[u8]) -> Mail {
    let mut params = Vec::new();
    if !bytes.is_ascii() {
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    Mail::new(envelope.from().cloned(), params)
}

/// MAIL and the RCPTs (and DATA, with `data`) as one pipelined group.
fn envelope_group(mail: &Mail, envelope: &lettre::address::Envelope, data: bool) -> String {
    let mut group = mail.to_string();
    for to in envelope.to() {
        group.push_str(&Rcpt::new(to.clone(), Vec::new()).to_string());
    }
    if data {
        group.push_str(&Data.to_string());
    }
    group
}

/// Why an exchange with a server failed.
#[derive(Debug)]
pub enum Failure {
    /// A negative reply, or a broken connection (lettre's error).
    Smtp(lettre::transport::smtp::Error),
    /// No answer within `--smtp-timeout`; the connection is out of step.
    Silent(Duration),
}

impl Failure {
    /// No reply came: the connection cannot be read on.
    fn broken(&self) -> bool {
        match self {
            Self::Smtp(e) => e.status().is_none(),
            Self::Silent(_) => true,
        }
    }

    fn is_permanent(&self) -> bool {
        matches!(self, Self::Smtp(e) if e.is_permanent())
    }

    fn is_silent(&self) -> bool {
        matches!(self, Self::Silent(_))
    }

    /// As the first reply on a pooled connection: the server closed it
    /// while it was idle, silently (the connection broke) or with `421`
    /// (closing the channel, as Postfix says to a connection idle too
    /// long). A server that stays silent is not taken for that.
    fn closed_meanwhile(&self) -> bool {
        match self {
            Self::Smtp(e) => e.status().is_none_or(|code| code.to_string() == "421"),
            Self::Silent(_) => false,
        }
    }
}

/// One network step (a command and its reply, or a reply) within `limit`:
/// lettre bounds only the TCP connect, and a server that accepts and then
/// says nothing would hold the attempt until its lease ran out.
async fn within<T>(
    limit: Duration,
    step: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, step).await {
        Ok(result) => result.map_err(Failure::Smtp),
        Err(_) => Err(Failure::Silent(limit)),
    }
}

/// Ends a connection after a failure: QUIT, within `limit`, to a server
/// that still answers; a silent one is just closed (a QUIT would wait for
/// the very reply that did not come). In the background: the attempt's
/// outcome is known already and must not wait, nor be cut off by its
/// deadline, while the connection closes.
fn close(mut conn: AsyncSmtpConnection, silent: bool, limit: Duration) {
    if silent {
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(limit, conn.abort()).await;
    });
}

/// A message the server did not take: why, and whether the server had
/// answered its first command (MAIL) yet. Only a failure before that can
/// mean a pooled connection was closed meanwhile: after it, the server
/// has begun the transaction, and sending again could deliver twice.
#[derive(Debug)]
pub struct Refused {
    pub failure: Failure,
    pub answered: bool,
    /// A read went unanswered (this failure's, or one after it): the
    /// connection is closed without a QUIT.
    pub silent: bool,
}

impl Refused {
    fn before_mail(failure: Failure) -> Self {
        Self {
            silent: failure.is_silent(),
            failure,
            answered: false,
        }
    }

    fn after_mail(failure: Failure) -> Self {
        Self {
            silent: failure.is_silent(),
            failure,
            answered: true,
        }
    }

    /// A failure at the message's first reply on a pooled connection that
    /// says the server had closed it: send again on a fresh connection, at
    /// once and without counting an attempt.
    fn stale_connection(&self) -> bool {
        !self.answered && self.failure.closed_meanwhile()
    }
}

/// Writes `text` (when given) and reads `count` replies in order, each
/// within `limit`: all are read, so the connection stays in step, and the
/// first negative one decides (with its position). A broken or silent
/// connection ends the reading at once.
async fn replies(
    conn: &mut AsyncSmtpConnection,
    text: Option<String>,
    count: usize,
    limit: Duration,
) -> Result<(), Refused> {
    let first = match text {
        Some(t) => within(limit, conn.command(Raw(t))).await,
        None => within(limit, conn.read_response()).await,
    };
    let mut outcome = first.map(drop).map_err(Refused::before_mail);
    if outcome.as_ref().is_err_and(|r| r.failure.broken()) {
        return outcome;
    }
    for _ in 1..count {
        match within(limit, conn.read_response()).await {
            Err(f) if f.broken() => {
                return Err(match outcome {
                    // The earlier negative reply decides; the silence
                    // decides how the connection ends.
                    Err(mut first) => {
                        first.silent |= f.is_silent();
                        first
                    }
                    Ok(()) => Refused::after_mail(f),
                });
            }
            Err(f) if outcome.is_ok() => outcome = Err(Refused::after_mail(f)),
            _ => {}
        }
    }
    outcome
}

/// Sends one message on an open connection: MAIL, RCPT, DATA and the
/// content. Unlike lettre's `send`, the content and its final dot go out in
/// one write: two writes in a row meet Nagle's algorithm and the server's
/// delayed ACK, 40 ms per message.
///
/// With `pipelining` (the server offered it), MAIL, the RCPTs and, for a
/// single recipient, DATA go out in one write and their replies are read in
/// order: two round trips per message instead of four, which is what a
/// remote provider's latency multiplies. The first negative reply decides,
/// as in lock-step. DATA waits for the RCPT replies when there are several
/// recipients: a server accepts DATA when any recipient was accepted, and
/// the message must not go to only some of them.
pub async fn transmit(
    conn: &mut AsyncSmtpConnection,
    message: &lettre::Message,
    pipelining: bool,
    limit: Duration,
) -> Result<Response, Refused> {
    let bytes = message.formatted();
    let Some(body) = data_body(&bytes) else {
        // Not text (never the case for mail built here): lettre's own
        // send, each of its four steps given the limit.
        return within(limit * 4, conn.send(message.envelope(), &bytes))
            .await
            .map_err(Refused::after_mail);
    };
    let envelope = message.envelope();
    let mail = mail_command(envelope, &bytes);
    if !pipelining {
        within(limit, conn.command(mail))
            .await
            .map_err(Refused::before_mail)?;
        for to in envelope.to() {
            within(limit, conn.command(Rcpt::new(to.clone(), Vec::new())))
                .await
                .map_err(Refused::after_mail)?;
        }
        within(limit, conn.command(Data))
            .await
            .map_err(Refused::after_mail)?;
        return within(limit, conn.command(Raw(body)))
            .await
            .map_err(Refused::after_mail);
    }
    let data_too = envelope.to().len() == 1;
    let group = envelope_group(&mail, envelope, data_too);
    let count = 1 + envelope.to().len() + usize::from(data_too);
    replies(conn, Some(group), count, limit).await?;
    if !data_too {
        within(limit, conn.command(Data))
            .await
            .map_err(Refused::after_mail)?;
    }
    within(limit, conn.command(Raw(body)))
        .await
        .map_err(Refused::after_mail)
}

/// A single-recipient message ready for [`transmit_chain`]: its MAIL, RCPT
/// and DATA as one group, and its content after DATA.
pub struct Chained {
    group: String,
    body: String,
}

/// The message as a link of a chain; `None` when it has several recipients
/// (DATA must then wait for the RCPT replies) or content that is not text.
pub fn chainable(message: &lettre::Message) -> Option<Chained> {
    let envelope = message.envelope();
    if envelope.to().len() != 1 {
        return None;
    }
    let bytes = message.formatted();
    let body = data_body(&bytes)?;
    let group = envelope_group(&mail_command(envelope, &bytes), envelope, true);
    Some(Chained { group, body })
}

/// How a chain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainEnd {
    /// Every message it began got its reply; the connection is in step.
    InStep,
    /// A failure: the connection may be out of step and is closed.
    Failed,
    /// Closed without a QUIT: the server went silent (a QUIT would wait
    /// for a reply as well), or a message's content was held back in the
    /// middle of its transaction (the server would read QUIT as content).
    Cut,
}

/// Sends messages in a row on one connection whose server offers
/// PIPELINING: each message's content goes out in the same write as the
/// next message's MAIL, RCPT and DATA (RFC 2920 lets message content start
/// a group), so a message costs one round trip instead of two. Replies are
/// read in order and each message's outcome is handed to `done` (with its
/// index) as soon as it is known. The chain stops at the first failure:
/// the connection may then be out of step and must be closed, and the
/// messages after it were not tried (the server drops the transaction the
/// next one had begun). Before a message is joined to the chain, `go_on`
/// decides whether to begin it (a stop, or too little of its lease left);
/// when it says no, the chain ends after the message under way. Returns
/// how many messages got an outcome, and how the chain ended.
pub async fn transmit_chain(
    conn: &mut AsyncSmtpConnection,
    chain: &[Chained],
    limit: Duration,
    go_on: &(dyn Fn() -> bool + Sync),
    done: &mut (dyn FnMut(usize, Result<Response, Refused>) + Send),
) -> (usize, ChainEnd) {
    let ending = |e: &Refused| {
        if e.silent {
            ChainEnd::Cut
        } else {
            ChainEnd::Failed
        }
    };
    let Some(first) = chain.first() else {
        return (0, ChainEnd::InStep);
    };
    if let Err(e) = replies(conn, Some(first.group.clone()), 3, limit).await {
        let end = ending(&e);
        done(0, Err(e));
        return (1, end);
    }
    for (k, link) in chain.iter().enumerate() {
        // The next message's MAIL, RCPT and DATA went out with the previous
        // content; its own content waits for one more reply. With too
        // little time left, it is not sent: the transaction is dropped
        // with the connection, and the message was not tried.
        if k > 0 && !go_on() {
            return (k, ChainEnd::Cut);
        }
        let next = chain.get(k + 1).filter(|_| go_on());
        let mut text = String::with_capacity(link.body.len() + next.map_or(0, |n| n.group.len()));
        text.push_str(&link.body);
        if let Some(n) = next {
            text.push_str(&n.group);
        }
        // The first reply after the content is the message's own.
        let reply = within(limit, conn.command(Raw(text)))
            .await
            .map_err(Refused::after_mail);
        if let Err(e) = reply {
            let end = ending(&e);
            done(k, Err(e));
            return (k + 1, end);
        }
        done(k, reply);
        if next.is_none() {
            return (k + 1, ChainEnd::InStep);
        }
        if let Err(e) = replies(conn, None, 3, limit).await {
            let end = ending(&e);
            done(k + 1, Err(e));
            return (k + 2, end);
        }
    }
    (chain.len(), ChainEnd::InStep)
}

/// The reply text of a server response: `250 2.0.0 Ok: queued`.
pub fn reply_text(r: &Response) -> String {
    let lines: Vec<&str> = r.message().collect();
    format!("{} {}", r.code(), lines.join(" "))
        .trim()
        .to_string()
}

/// What an error says, with the server's reply when there is one and never
/// the password.
pub fn describe(f: &Failure, endpoint: &Endpoint) -> String {
    use std::error::Error as _;
    let e = match f {
        Failure::Smtp(e) => e,
        Failure::Silent(limit) => return format!("no answer within {limit:?} (--smtp-timeout)"),
    };
    let mut text = match (e.status(), e.source()) {
        (Some(code), Some(source)) => format!("{code} {source}"),
        (Some(code), None) => code.to_string(),
        _ => {
            let mut t = e.to_string();
            let mut source = e.source().and_then(|s| s.source());
            while let Some(s) = source {
                t.push_str(": ");
                t.push_str(&s.to_string());
                source = s.source();
            }
            t
        }
    };
    if e.is_timeout() && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    redact(&text, endpoint)
}

/// Removes the endpoint's password from a text, should a server echo it.
pub fn redact(text: &str, endpoint: &Endpoint) -> String {
    match &endpoint.credentials {
        Some((_, secret)) if secret.0.len() >= 3 => text.replace(&secret.text(), "<redacted>"),
        _ => text.to_string(),
    }
}

fn classify(e: &Failure, endpoint: &Endpoint) -> AttemptResult {
    let text = describe(e, endpoint);
    if e.is_permanent() {
        AttemptResult::Permanent(text)
    } else {
        AttemptResult::Transient(text)
    }
}

impl SmtpClient {
    pub fn new(options: SmtpOptions) -> Self {
        Self {
            options,
            idle: Mutex::new(HashMap::new()),
        }
    }

    fn tls_parameters(&self, host: &str) -> Result<TlsParameters, String> {
        let mut builder = TlsParameters::builder(host.to_string());
        for cert in &self.options.extra_roots {
            builder = builder.add_root_certificate(cert.clone());
        }
        builder
            .build_rustls()
            .map_err(|e| format!("cannot set up TLS: {e}"))
    }

    /// Drops the pooled connections of endpoints no longer in use.
    pub fn retain(&self, live: &HashSet<Endpoint>) {
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| live.contains(k));
    }

    fn take_idle(&self, endpoint: &Endpoint) -> Option<Connection> {
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.get_mut(endpoint)?;
        list.retain(|(_, since)| since.elapsed() < MAX_IDLE);
        list.pop().map(|(c, _)| c)
    }

    fn give_back(&self, endpoint: &Endpoint, conn: Connection) {
        if conn.inner.has_broken() {
            return;
        }
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(endpoint.clone()).or_default();
        if list.len() < self.options.pool_size.max(1) as usize {
            list.push((conn, Instant::now()));
        }
    }

    /// Delivers one message over a pooled connection (a fresh one when none
    /// is idle, or when a reused one turns out to be closed).
    pub async fn deliver(&self, endpoint: &Endpoint, message: &lettre::Message) -> AttemptResult {
        for reuse in [true, false] {
            let pooled = if reuse {
                self.take_idle(endpoint)
            } else {
                None
            };
            let reused = pooled.is_some();
            if reuse && !reused {
                continue;
            }
            let mut conn = match pooled {
                Some(c) => c,
                None => match self.open(endpoint).await {
                    Ok((c, _)) => c,
                    Err(e) if e.permanent => return AttemptResult::Permanent(e.message),
                    Err(e) => return AttemptResult::Transient(e.message),
                },
            };
            let limit = self.options.timeout;
            match transmit(&mut conn.inner, message, conn.pipelining, limit).await {
                Ok(response) => {
                    self.give_back(endpoint, conn);
                    return AttemptResult::Delivered(reply_text(&response));
                }
                Err(e) => {
                    close(conn.inner, e.silent, limit);
                    if reused && e.stale_connection() {
                        continue;
                    }
                    return classify(&e.failure, endpoint);
                }
            }
        }
        AttemptResult::Transient("no connection".into())
    }

    /// Delivers messages to one endpoint, in order: the single-recipient
    /// ones chained on a pooled pipelining connection (see
    /// [`transmit_chain`]), the others, and those after a failure in a
    /// chain, one at a time through [`Self::deliver`]. Each outcome goes to
    /// `done` with the message's index as soon as it is known. Before each
    /// chain or message, `go_on` decides whether to start it: when it says
    /// no (a stop), the rest get no outcome and are not sent.
    pub async fn deliver_all(
        &self,
        endpoint: &Endpoint,
        messages: &[lettre::Message],
        go_on: &(dyn Fn() -> bool + Sync),
        done: &mut (dyn FnMut(usize, AttemptResult) + Send),
    ) {
        let mut next = 0;
        while next < messages.len() && go_on() {
            let rest = &messages[next..];
            let chained = self
                .deliver_chain(endpoint, rest, go_on, &mut |k, r| done(next + k, r))
                .await;
            if chained == 0 {
                done(next, self.deliver(endpoint, &rest[0]).await);
                next += 1;
            } else {
                next += chained;
            }
        }
    }

    /// The leading single-recipient messages chained on an idle connection
    /// that pipelines; how many got an outcome (up to and including the
    /// first failure). 0 when there are fewer than two such messages, no
    /// such connection, or the pooled connection turns out closed before
    /// its first reply (then [`Self::deliver`] tries again on a fresh one).
    async fn deliver_chain(
        &self,
        endpoint: &Endpoint,
        messages: &[lettre::Message],
        go_on: &(dyn Fn() -> bool + Sync),
        done: &mut (dyn FnMut(usize, AttemptResult) + Send),
    ) -> usize {
        if messages.len() < 2 {
            return 0;
        }
        let Some(mut conn) = self.take_idle(endpoint) else {
            return 0;
        };
        let chain: Vec<Chained> = if conn.pipelining {
            messages.iter().map_while(chainable).collect()
        } else {
            Vec::new()
        };
        if chain.len() < 2 {
            self.give_back(endpoint, conn);
            return 0;
        }
        // A pooled connection the server closed meanwhile fails at its
        // first reply: that first message is left to `deliver`.
        let mut stale = false;
        let limit = self.options.timeout;
        let mut outcome = |k: usize, r: Result<Response, Refused>| match r {
            Ok(response) => done(k, AttemptResult::Delivered(reply_text(&response))),
            Err(e) if k == 0 && e.stale_connection() => stale = true,
            Err(e) => done(k, classify(&e.failure, endpoint)),
        };
        let (count, end) =
            transmit_chain(&mut conn.inner, &chain, limit, go_on, &mut outcome).await;
        match end {
            ChainEnd::InStep => self.give_back(endpoint, conn),
            ChainEnd::Failed => close(conn.inner, false, limit),
            ChainEnd::Cut => close(conn.inner, true, limit),
        }
        if stale { 0 } else { count }
    }

    /// Opens a fresh connection: connect, TLS as configured, AUTH.
    async fn open(&self, endpoint: &Endpoint) -> Result<(Connection, String), StepError> {
        let fail = |step: Step, message: String, permanent: bool| StepError {
            step,
            message: redact(&message, endpoint),
            permanent,
        };
        // A command on the open connection failed: `HOST:PORT: WHAT failed: REASON`.
        let refused = |step: Step, what: &str, e: &Failure| {
            fail(
                step,
                format!(
                    "{}:{}: {what} failed: {}",
                    endpoint.host,
                    endpoint.port,
                    describe(e, endpoint)
                ),
                e.is_permanent(),
            )
        };
        let hello = ClientId::default();
        let implicit = match endpoint.tls {
            TlsMode::Implicit => Some(
                self.tls_parameters(&endpoint.host)
                    .map_err(|m| fail(Step::Tls, m, false))?,
            ),
            _ => None,
        };
        let limit = self.options.timeout;
        let addresses = self.addresses(endpoint, limit).await?;
        // The TCP connect, implicit TLS, the greeting and EHLO, together
        // (lettre bounds only the connect).
        let connect = AsyncSmtpConnection::connect_tokio1(
            addresses.as_slice(),
            Some(limit),
            &hello,
            implicit,
            None,
        );
        let mut conn = within(limit, connect).await.map_err(|e| {
            let step = match &e {
                Failure::Smtp(e) if e.is_tls() => Step::Tls,
                _ => Step::Connect,
            };
            fail(
                step,
                format!(
                    "cannot connect to {}:{}: {}",
                    endpoint.host,
                    endpoint.port,
                    describe(&e, endpoint)
                ),
                e.is_permanent(),
            )
        })?;
        let mut how = tls_name(endpoint.tls).to_string();
        if endpoint.tls == TlsMode::Starttls {
            if !conn.can_starttls() {
                close(conn, false, limit);
                return Err(fail(
                    Step::Tls,
                    format!(
                        "{}:{} does not offer STARTTLS",
                        endpoint.host, endpoint.port
                    ),
                    false,
                ));
            }
            let params = self
                .tls_parameters(&endpoint.host)
                .map_err(|m| fail(Step::Tls, m, false))?;
            if let Err(e) = within(limit, conn.starttls(params, &hello)).await {
                close(conn, e.is_silent(), limit);
                return Err(refused(Step::Tls, "STARTTLS", &e));
            }
            how = "STARTTLS".into();
        }
        // lettre keeps no record of PIPELINING: ask again (EHLO may be
        // repeated; before AUTH, which a repeated EHLO must not follow).
        let pipelining = match within(limit, conn.command(Ehlo::new(hello.clone()))).await {
            Ok(reply) => offers_pipelining(&reply),
            Err(e) => {
                close(conn, e.is_silent(), limit);
                return Err(refused(Step::Connect, "EHLO", &e));
            }
        };
        let mut summary = format!("connected to {}:{} ({how})", endpoint.host, endpoint.port);
        if let Some((user, secret)) = &endpoint.credentials {
            let creds = Credentials::new(user.clone(), secret.text());
            match within(
                limit,
                conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds),
            )
            .await
            {
                Ok(r) => {
                    summary.push_str(&format!(", authenticated as {user}: {}", reply_text(&r)));
                }
                Err(e) => {
                    close(conn, e.is_silent(), limit);
                    return Err(refused(
                        Step::Auth,
                        &format!("authentication as {user}"),
                        &e,
                    ));
                }
            }
        }
        Ok((
            Connection {
                inner: conn,
                pipelining,
            },
            summary,
        ))
    }

    /// The addresses to dial for `endpoint`: those of its host that the
    /// egress rule admits (all of them for the trusted default provider).
    /// A refusal is [`Step::Egress`]; a name that does not resolve, a
    /// connection failure as before.
    async fn addresses(
        &self,
        endpoint: &Endpoint,
        limit: Duration,
    ) -> Result<Vec<std::net::SocketAddr>, StepError> {
        let egress = &self.options.egress;
        let (host, port) = (endpoint.host.as_str(), endpoint.port);
        let found = if endpoint.trusted {
            tokio::time::timeout(limit, egress.lookup(host, port)).await
        } else {
            tokio::time::timeout(limit, egress.resolve(host, port)).await
        };
        let failed = |step: Step, why: String| StepError {
            step,
            message: format!("cannot connect to {host}:{port}: {why}"),
            permanent: false,
        };
        match found {
            Ok(Ok(addresses)) => Ok(addresses),
            Ok(Err(e)) if e.is_refusal() => Err(failed(Step::Egress, e.to_string())),
            Ok(Err(e)) => Err(failed(Step::Connect, e.to_string())),
            Err(_) => Err(failed(
                Step::Connect,
                format!("no address within {limit:?} (--smtp-timeout)"),
            )),
        }
    }

    /// Connects, negotiates TLS, authenticates and quits; the summary on
    /// success.
    pub async fn verify(&self, endpoint: &Endpoint) -> Result<String, StepError> {
        // Every step is bounded by the timeout: no overall cap, which
        // would cut off a slow server that answers each step in time.
        let (conn, summary) = self.open(endpoint).await?;
        close(conn.inner, false, self.options.timeout);
        Ok(summary)
    }

    /// Sends one message over a fresh connection (test emails); the
    /// server's reply to the message. Each step is bounded by the timeout;
    /// no overall cap, which could report as failed a message the server
    /// took (and a user would send again).
    pub async fn send_once(
        &self,
        endpoint: &Endpoint,
        message: &lettre::Message,
    ) -> Result<String, StepError> {
        let (mut conn, _) = self.open(endpoint).await?;
        let limit = self.options.timeout;
        let sent = transmit(&mut conn.inner, message, conn.pipelining, limit).await;
        let silent = sent.as_ref().is_err_and(|e| e.silent);
        close(conn.inner, silent, limit);
        match sent {
            Ok(r) => Ok(reply_text(&r)),
            Err(e) => Err(StepError {
                step: Step::Send,
                message: describe(&e.failure, endpoint),
                permanent: e.failure.is_permanent(),
            }),
        }
    }
}

/// Reads the certificate authorities of a PEM file.
pub fn load_roots(path: &std::path::Path) -> Result<Vec<Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let cert = Certificate::from_pem(&pem)
        .map_err(|e| format!("{} holds no PEM certificate: {e}", path.display()))?;
    Ok(vec![cert])
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        egress: crate::egress::EgressSettings,
    }

    /// The egress rule of these flags.
    fn egress(flags: &[&str]) -> Arc<Egress> {
        let parsed = Flags::try_parse_from(std::iter::once("x").chain(flags.iter().copied()))
            .unwrap()
            .egress;
        Arc::new(Egress::new(&parsed).unwrap())
    }

    /// A listener that greets like an SMTP server and counts connections.
    async fn greeter() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = socket.write_all(b"220 internal-relay ESMTP\r\n").await;
            }
        });
        (port, count)
    }

    /// An org's server on loopback is refused before any connection, and
    /// the refusal names the rule and the address, not the server; the
    /// trusted default provider at the same address is dialled.
    #[tokio::test]
    async fn org_servers_go_through_the_egress_rule() {
        let (port, count) = greeter().await;
        let client = SmtpClient::new(SmtpOptions {
            timeout: Duration::from_millis(500),
            pool_size: 1,
            extra_roots: Vec::new(),
            egress: egress(&[]),
        });
        let mut endpoint = Endpoint {
            host: "2130706433".into(),
            port,
            tls: TlsMode::None,
            credentials: Some(("user".into(), Secret::new("hunter22"))),
            trusted: false,
        };
        let e = client.verify(&endpoint).await.unwrap_err();
        assert_eq!(e.step, Step::Egress);
        assert_eq!(
            e.message,
            format!(
                "cannot connect to 2130706433:{port}: egress refused: 127.0.0.1 (from 2130706433) is loopback, admitted only by --egress-allow"
            )
        );
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0);
        endpoint.trusted = true;
        let e = client.verify(&endpoint).await.unwrap_err();
        assert_ne!(e.step, Step::Egress, "{e:?}");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A server written here only for a failure no real server gives on
    /// demand: it accepts MAIL, refuses the recipient, and then never
    /// answers DATA (nor a QUIT). Lines it read go to `seen`.
    async fn refuses_then_goes_silent() -> (u16, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lines = seen.clone();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (read, mut write) = socket.into_split();
            let mut read = BufReader::new(read);
            write.write_all(b"220 fake ESMTP\r\n").await.unwrap();
            let mut line = String::new();
            while read.read_line(&mut line).await.unwrap_or(0) > 0 {
                let command = line.trim_end().to_ascii_uppercase();
                lines.lock().unwrap().push(command.clone());
                let reply: &[u8] = if command.starts_with("EHLO") {
                    b"250-fake\r\n250 PIPELINING\r\n"
                } else if command.starts_with("MAIL") {
                    b"250 ok\r\n"
                } else if command.starts_with("RCPT") {
                    b"550 5.1.1 no such user\r\n"
                } else {
                    b""
                };
                write.write_all(reply).await.unwrap();
                line.clear();
            }
        });
        (port, seen)
    }

    /// The refusal decides the outcome, the silence after it how the
    /// connection ends: without a QUIT, and without waiting for one.
    #[tokio::test]
    async fn a_refusal_then_silence_closes_without_quit() {
        let (port, seen) = refuses_then_goes_silent().await;
        let client = SmtpClient::new(SmtpOptions {
            timeout: Duration::from_millis(300),
            pool_size: 1,
            extra_roots: Vec::new(),
            egress: egress(&["--egress-allow", "127.0.0.0/8"]),
        });
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port,
            tls: TlsMode::None,
            credentials: None,
            trusted: false,
        };
        let message = lettre::Message::builder()
            .from("a@example.com".parse().unwrap())
            .to("b@example.com".parse().unwrap())
            .subject("s")
            .body(String::from("t"))
            .unwrap();
        let result = client.deliver(&endpoint, &message).await;
        let AttemptResult::Permanent(reply) = &result else {
            panic!("{result:?}");
        };
        assert!(reply.starts_with("550 5.1.1"), "{reply}");
        // Long enough for a QUIT, were one sent, to arrive.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let lines = seen.lock().unwrap().clone();
        assert!(!lines.iter().any(|l| l == "QUIT"), "{lines:?}");
    }

    #[test]
    fn redacts_password_and_debug_hides_it() {
        let endpoint = Endpoint {
            host: "smtp.example.com".into(),
            port: 587,
            tls: TlsMode::Starttls,
            credentials: Some(("user".into(), Secret::new("hunter22"))),
            trusted: false,
        };
        assert_eq!(
            redact("535 bad password hunter22", &endpoint),
            "535 bad password <redacted>"
        );
        let debug = format!("{endpoint:?}");
        assert!(!debug.contains("hunter22"), "{debug}");
        assert!(debug.contains("smtp.example.com:587"));
    }

    #[test]
    fn data_is_dot_stuffed_and_terminated() {
        let cases = [("a\r\nb\r\n", "a\r\nb\r\n.\r\n")];
        assert_eq!(data_body(cases[0].0.as_bytes()).unwrap(), cases[0].1);
        assert_eq!(
            data_body(b".x\r\ny\r\n.\r\nz").unwrap(),
            "..x\r\ny\r\n..\r\nz\r\n.\r\n"
        );
        assert_eq!(data_body(b"no end").unwrap(), "no end\r\n.\r\n");
        assert!(data_body(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn pipelining_is_read_from_the_ehlo_reply() {
        let reply = |lines: &[&str]| {
            Response::new(
                lettre::transport::smtp::response::Code::new(
                    lettre::transport::smtp::response::Severity::PositiveCompletion,
                    lettre::transport::smtp::response::Category::MailSystem,
                    lettre::transport::smtp::response::Detail::Zero,
                ),
                lines.iter().map(|l| l.to_string()).collect(),
            )
        };
        assert!(offers_pipelining(&reply(&[
            "mx.example",
            "SIZE 10",
            "pipelining"
        ])));
        assert!(!offers_pipelining(&reply(&["mx.example", "8BITMIME"])));
        // The first line is the server's name, not a keyword.
        assert!(!offers_pipelining(&reply(&["PIPELINING", "8BITMIME"])));
    }

    #[test]
    fn endpoints_differ_by_password() {
        let a = Endpoint {
            host: "h".into(),
            port: 25,
            tls: TlsMode::None,
            credentials: Some(("u".into(), Secret::new("one"))),
            trusted: false,
        };
        let mut b = a.clone();
        b.credentials = Some(("u".into(), Secret::new("two")));
        assert_ne!(a, b);
    }
}
