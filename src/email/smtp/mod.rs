//! SMTP through lettre. Credentials come only from the [`Endpoint`] the
//! caller builds from the newest snapshot, and every connection to an org's
//! server goes through the egress rule.
//!
//! - `endpoint.rs`: where a server is, with its password ([`Endpoint`],
//!   [`redact`]);
//! - `failure.rs`: what went wrong and whether it is worth another attempt
//!   ([`Step`], [`StepError`], [`Failure`], [`describe`]);
//! - `protocol.rs`: the wire protocol on an open connection, pipelined and
//!   chained ([`transmit`], [`transmit_chain`]);
//! - `client.rs`: the pooled client that delivers, verifies and sends test
//!   emails ([`SmtpClient`]).

mod client;
mod endpoint;
mod failure;
mod protocol;

pub use client::{Connection, SmtpClient, SmtpOptions, load_roots};
pub use endpoint::{Endpoint, redact, tls_name};
pub use failure::{Failure, Step, StepError, describe};
pub use protocol::{
    ChainEnd, Chained, Refused, chainable, data_body, offers_pipelining, reply_text, transmit,
    transmit_chain,
};
