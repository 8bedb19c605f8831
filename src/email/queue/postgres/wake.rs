//! Hearing the other replicas' commits: a dedicated connection LISTENs on
//! [`WAKE_CHANNEL`] and each notification wakes this replica's dispatcher.
//! A notification is only a hint (one sent while the connection was down
//! is lost), so after any error of the listening connection the dispatcher
//! is woken once more to catch up, and the dispatcher keeps a slow timer
//! of its own.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::WAKE_CHANNEL;

/// How long the listening connection waits for the server before it
/// reports an error (and the dispatcher catches up), and the longest pause
/// between two tries while the server is down.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(2);

/// Wakes `wake` on each commit of new mail by any replica, until
/// `stopping`.
pub(crate) async fn relay_commits(pool: &PgPool, wake: &Notify, stopping: &CancellationToken) {
    // A pool of its own with one connection, held by the listener for good
    // and replaced by it after an error.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(LISTEN_TIMEOUT)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut pause = Duration::from_millis(100);
    let mut failing = false;
    let mut listener = loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&own).await?;
            listener.listen(WAKE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(listener) => break listener,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot listen for other replicas' new mail; trying again (the dispatcher looks every second meanwhile)");
                    failing = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stopping.cancelled() => return,
                }
                pause = (pause * 2).min(LISTEN_TIMEOUT);
            }
        }
    };
    // What was committed before the listener began.
    wake.notify_one();
    loop {
        let heard = tokio::select! {
            heard = listener.try_recv() => heard,
            () = stopping.cancelled() => return,
        };
        match heard {
            Ok(Some(_)) => {
                if failing {
                    tracing::info!("listening for other replicas' new mail again");
                    failing = false;
                }
                wake.notify_one();
            }
            // The connection was lost and is back: commits may have gone
            // unheard meanwhile.
            Ok(None) => wake.notify_one(),
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "lost the connection that listens for other replicas' new mail; reconnecting (the dispatcher looks every second meanwhile)");
                    failing = true;
                }
                wake.notify_one();
                // The next try_recv reconnects and listens again.
                tokio::select! {
                    () = tokio::time::sleep(LISTEN_TIMEOUT) => {}
                    () = stopping.cancelled() => return,
                }
            }
        }
    }
}
