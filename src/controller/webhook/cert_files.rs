//! The webhook's certificate from files: `tls.crt` and `tls.key` in one
//! directory, which is how a cert-manager Secret (or any `kubernetes.io/tls`
//! Secret) is mounted. Read at start and re-read on a poll; a pair that
//! changed is parsed and put in the [`CertSlot`], so the next handshake
//! serves it. A bad new pair (unreadable, or a key that does not fit, as
//! when the files are caught between two writes) is logged and the old one
//! kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tls::{CertSlot, TlsError, certified_key};

/// The certificate chain, leaf first (PEM).
pub const CERT_FILE: &str = "tls.crt";
/// Its private key (PEM).
pub const KEY_FILE: &str = "tls.key";

/// Why the files could not be served.
#[derive(Debug, thiserror::Error)]
pub enum CertFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: {source}")]
    Tls { dir: PathBuf, source: TlsError },
}

/// The two files' contents, as read.
#[derive(Clone, PartialEq, Eq)]
struct Pair {
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read(dir: &Path) -> Result<Pair, CertFileError> {
    let file = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| CertFileError::Read { path, source })
    };
    Ok(Pair {
        cert: file(CERT_FILE)?,
        key: file(KEY_FILE)?,
    })
}

/// Reads and parses the pair once, and serves it when it differs from
/// `current`; returns what is served now.
fn refresh(dir: &Path, current: Option<&Pair>, slot: &CertSlot) -> Result<Pair, CertFileError> {
    let pair = read(dir)?;
    if current == Some(&pair) {
        return Ok(pair);
    }
    let key = certified_key(&pair.cert, &pair.key).map_err(|source| CertFileError::Tls {
        dir: dir.to_path_buf(),
        source,
    })?;
    slot.send_replace(Some(key));
    tracing::info!(dir = %dir.display(), "webhook certificate loaded");
    Ok(pair)
}

/// Reads the pair now and serves it; `Err` when it cannot be served (a
/// start with a certificate directory and no usable pair fails with the
/// reason). Then keeps `slot` filled from `dir`: the returned future looks
/// every `every`, until nothing reads the slot any more.
pub fn watch(
    dir: PathBuf,
    every: Duration,
    slot: CertSlot,
) -> Result<impl Future<Output = ()>, CertFileError> {
    let first = refresh(&dir, None, &slot)?;
    Ok(poll(dir, every, slot, first))
}

/// Logs an error once until it changes or goes away.
async fn poll(dir: PathBuf, every: Duration, slot: CertSlot, first: Pair) {
    let mut current = first;
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(every).await;
        if slot.is_closed() {
            return;
        }
        match refresh(&dir, Some(&current), &slot) {
            Ok(pair) => {
                current = pair;
                last_error = None;
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::warn!(error = %text, "the webhook certificate files cannot be used; still serving the previous pair");
                    last_error = Some(text);
                }
            }
        }
    }
}
