//! The validating admission webhook: the apiserver asks it about every
//! create, update and delete of idplane's four kinds, and it answers with
//! the one validator and the cross-object rules checked against the live
//! index. [`review`] decides (pure); [`server`] serves HTTPS; the
//! certificate comes into a [`tls::CertSlot`] from files ([`cert_files`])
//! or from the Secret idplane manages itself.

pub mod cert_files;
pub mod certificate;
pub mod review;
pub mod self_managed;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `idplane operator`'s webhook flags. The webhook runs when a certificate
/// source is given.
#[derive(clap::Args, Clone, Debug)]
pub struct WebhookSettings {
    /// Address of the admission webhook's HTTPS server.
    #[arg(
        long = "webhook-listen",
        env = "IDPLANE_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    pub webhook_listen: SocketAddr,
    /// Serve the webhook with the certificate in this directory: tls.crt
    /// (chain, leaf first) and tls.key, as a cert-manager Secret is
    /// mounted. Re-read when they change; a bad new pair is logged and the
    /// old one kept.
    #[arg(long = "webhook-cert-dir", env = "IDPLANE_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// How often the certificate files are looked at.
    #[arg(long = "webhook-cert-poll", default_value = "10s", value_parser = crate::resources::parse_duration, hide = true)]
    pub webhook_cert_poll: Duration,
}
