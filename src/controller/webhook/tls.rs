//! The webhook's serving certificate. Whoever obtains it (files that
//! cert-manager writes, or the Secret idplane manages itself) parses it
//! with [`certified_key`] and puts it in a [`CertSlot`]; the TLS server
//! reads the slot at each handshake, so a rotated certificate is served
//! from the next connection on, without a restart.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

/// Errors reading a certificate and its key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate PEM: {0}")]
    Certificate(String),
    #[error("private key PEM: {0}")]
    Key(String),
    #[error("the private key does not fit the certificate or is not supported: {0}")]
    Mismatch(String),
}

/// The certificate currently served; `None` until one is known (handshakes
/// fail until then, and the apiserver reports the webhook as unreachable).
pub type CertSlot = watch::Sender<Option<Arc<CertifiedKey>>>;

/// The reading side of a [`CertSlot`].
pub type CertWatch = watch::Receiver<Option<Arc<CertifiedKey>>>;

/// An empty slot and its reader.
pub fn cert_slot() -> (CertSlot, CertWatch) {
    watch::channel(None)
}

/// Parses a PEM certificate chain (leaf first) and its PEM private key
/// (PKCS#8, PKCS#1 or SEC1), and checks that they belong together.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate("no CERTIFICATE block".into()));
    }
    // The key's error text never includes the key.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    Ok(Arc::new(certified))
}

/// Serves whatever the slot holds at the time of each handshake.
#[derive(Debug)]
struct SlotResolver(CertWatch);

impl ResolvesServerCert for SlotResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().clone()
    }
}

/// A TLS server configuration (HTTP/1.1 and HTTP/2) that serves the
/// certificate in `slot`.
pub fn server_config(slot: CertWatch) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SlotResolver(slot)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
