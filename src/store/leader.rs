//! Which of the processes sharing one PostgreSQL database writes status in
//! `run` mode (in a cluster the Lease decides; see
//! `controller::lease`): the one holding a session-level advisory lock.
//! PostgreSQL releases the lock when its connection ends, so a process that
//! dies (even SIGKILLed) gives it up at once; a process that loses its
//! connection stops writing until it holds the lock again.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The advisory lock's key: "idplane" in ASCII.
const LOCK_KEY: i64 = 0x0069_6470_6c61_6e65;

/// How often the holder checks its connection, and others try again.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Holds `leader` true while this process holds the lock, until `stop`.
pub async fn run(pool: PgPool, leader: watch::Sender<bool>, stop: CancellationToken) {
    loop {
        let held = tokio::select! {
            () = stop.cancelled() => None,
            held = try_lock(&pool) => Some(held),
        };
        let Some(held) = held else { break };
        match held {
            Ok(Some(mut conn)) => {
                tracing::info!("holding the status writer's lock in the database: writing status");
                leader.send_replace(true);
                let stopped = hold(&mut conn, &stop).await;
                leader.send_replace(false);
                if stopped {
                    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(LOCK_KEY)
                        .execute(&mut *conn)
                        .await;
                    break;
                }
                // The connection failed: it must not go back to the pool
                // (a later acquire would find the lock's session gone).
                drop(conn.detach());
                tracing::warn!("lost the status writer's lock in the database; trying again");
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot try the status writer's lock"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
    leader.send_replace(false);
}

async fn try_lock(pool: &PgPool) -> Result<Option<PoolConnection<Postgres>>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    Ok(locked.then_some(conn))
}

/// Keeps the lock's connection until it fails (false) or `stop` (true).
async fn hold(conn: &mut PoolConnection<Postgres>, stop: &CancellationToken) -> bool {
    loop {
        tokio::select! {
            () = stop.cancelled() => return true,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let alive = tokio::time::timeout(CHECK_EVERY, sqlx::query("SELECT 1").execute(&mut **conn))
            .await
            .is_ok_and(|r| r.is_ok());
        if !alive {
            return false;
        }
    }
}
