//! Where resources come from: a directory of manifests (`run --manifests`,
//! `validate`) or, in a cluster, the apiserver's watches.

pub mod directory;
pub mod kube;
pub mod located;
pub mod manifest;
