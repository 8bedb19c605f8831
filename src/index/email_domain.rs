//! An EmailDomain in the runtime: [`DomainConfig`], a brand's sender, and
//! the domain's [`ObjectState`]. Whether the domain is verified in DNS is
//! the email module's business, not the index's.

use serde::Serialize;

use super::ObjectState;
use crate::resources::{EmailDomain, reason};

/// A brand's sender.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainConfig {
    pub name: String,
    pub brand: String,
    pub domain: String,
    pub user_name: String,
    pub display_name: String,
    pub validation_subdomain: String,
}

/// The domain's runtime form and its state.
pub(super) fn from_resource(d: &EmailDomain) -> (DomainConfig, ObjectState) {
    let config = DomainConfig {
        name: d.metadata.name.clone().unwrap_or_default(),
        brand: d.spec.brand.clone(),
        domain: d.spec.domain.clone(),
        user_name: d.spec.user_name.clone(),
        display_name: d.spec.display_name.clone(),
        validation_subdomain: d.spec.validation_subdomain.clone(),
    };
    let state = ObjectState::new(
        true,
        true,
        None,
        reason::READY,
        "sender for its brand once the domain is verified",
    );
    (config, state)
}
