//! What the integration tests share, each helper defined once. A test file
//! takes it with `mod support;` and uses what it needs:
//!
//! - [`process`]: the idplane binary as a child process, waits (each
//!   bounded), a free port, a blocking runtime.
//! - [`api`]: calls to a running idplane: HTTP, the status of an org's
//!   objects and their conditions, the org's events.
//! - [`cluster`]: the test apiserver: kubectl, CRDs, temporary namespaces,
//!   `idplane operator`.
//! - [`tools`]: the tools `scripts/test-tools.sh` installs, dnsmasq, and
//!   the Python scripts in `tests/support/python/` (the Helm driver and the
//!   SMTP test server).
//! - [`fixtures`]: the invalid manifests under `tests/fixtures/invalid`.
//! - [`argocd`]: idplane's Argo CD health check, run as Argo CD runs it.
//! - [`postgres`]: a fresh PostgreSQL database per test, or a server of
//!   the test's own to restart.
//! - [`admission`]: the admission webhook's certificate directory, an
//!   operator serving it, and a ValidatingWebhookConfiguration of the
//!   test's own (used by its module path).
//! - [`email`] and [`telephony`]: the servers, manifests and API calls of
//!   the email and telephony tests.
//!
//! The general helpers are re-exported here (`use support::*`); the email
//! and telephony ones are used by their module path, as their names
//! (`send`, `events`, …) mean something different in each.

// Each test file uses part of the tree: the rest is unused there.
#![allow(dead_code)]

pub mod admission;
pub mod api;
pub mod argocd;
pub mod cluster;
pub mod email;
pub mod fixtures;
pub mod postgres;
pub mod process;
pub mod telephony;
pub mod tools;

#[allow(unused_imports)]
pub use {api::*, cluster::*, fixtures::*, process::*, tools::*};
