//! The SMTP wire protocol on an open connection: a message's MAIL, RCPT,
//! DATA and content, pipelined when the server offers it, and messages
//! chained on one connection (each one's content in the same write as the
//! next one's envelope). Every step is bounded by the timeout; replies are
//! read in order so the connection stays in step, and a connection that
//! may be out of step is closed.

use std::time::Duration;

use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;

use super::failure::Failure;

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

/// One network step (a command and its reply, or a reply) within `limit`:
/// lettre bounds only the TCP connect, and a server that accepts and then
/// says nothing would hold the attempt until its lease ran out.
pub(super) async fn within<T>(
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
pub(super) fn close(mut conn: AsyncSmtpConnection, silent: bool, limit: Duration) {
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
    pub(super) fn stale_connection(&self) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
