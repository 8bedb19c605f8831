//! The validating admission webhook: the apiserver asks it about every
//! create and update of idplane's four kinds, and it answers with the one
//! validator and the cross-object rules checked against the live index.

pub mod certificate;
pub mod self_managed;
pub mod tls;
