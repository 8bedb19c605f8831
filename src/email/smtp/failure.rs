//! What went wrong with an SMTP server, in words a user can act on: the
//! step of a fresh connection that failed ([`Step`], [`StepError`]), the
//! failure of an exchange ([`Failure`]: a negative reply, a broken
//! connection, or silence), the text of an error without the password, and
//! whether an attempt's failure is worth another attempt.

use std::time::Duration;

use super::endpoint::{Endpoint, redact};
use crate::email::retry::AttemptResult;

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
    pub(super) fn broken(&self) -> bool {
        match self {
            Self::Smtp(e) => e.status().is_none(),
            Self::Silent(_) => true,
        }
    }

    pub(super) fn is_permanent(&self) -> bool {
        matches!(self, Self::Smtp(e) if e.is_permanent())
    }

    pub(super) fn is_silent(&self) -> bool {
        matches!(self, Self::Silent(_))
    }

    /// As the first reply on a pooled connection: the server closed it
    /// while it was idle, silently (the connection broke) or with `421`
    /// (closing the channel, as Postfix says to a connection idle too
    /// long). A server that stays silent is not taken for that.
    pub(super) fn closed_meanwhile(&self) -> bool {
        match self {
            Self::Smtp(e) => e.status().is_none_or(|code| code.to_string() == "421"),
            Self::Silent(_) => false,
        }
    }
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

/// An attempt's result from a failed exchange: permanent for a 5xx
/// reply, else worth another attempt.
pub(super) fn classify(e: &Failure, endpoint: &Endpoint) -> AttemptResult {
    let text = describe(e, endpoint);
    if e.is_permanent() {
        AttemptResult::Permanent(text)
    } else {
        AttemptResult::Transient(text)
    }
}
