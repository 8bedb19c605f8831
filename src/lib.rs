//! idplane: a declarative delivery-and-enrollment plane for identity
//! platforms. Custom resources describe telephony hooks, enrollment policies
//! and email providers; idplane validates them, builds a per-org runtime
//! configuration and serves the runtime API.
#![forbid(unsafe_code)]
// kube's `printcolumn(...)` repeats `type_ =` by design; the lint misreads it.
#![allow(clippy::duplicated_attributes)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod diff;
pub mod egress;
pub mod email;
pub mod enrollment;
pub mod http;
pub mod index;
pub mod resources;
pub mod runtime;
pub mod secret;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod telephony;
pub mod validate;
