//! The controller half of idplane: from the index's snapshots to status on
//! the objects (conditions, observedGeneration, runtime numbers), Events on
//! transitions, and the Lease that decides which replica writes.

pub mod conditions;
pub mod events;
pub mod lease;
pub mod module_fields;
pub mod status_writer;
pub mod webhook;
