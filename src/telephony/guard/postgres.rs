//! The abuse guard's shared backing: each admitted send is a row of
//! `telephony_guard_sends` (a key, a time), one per active limit. A send
//! is checked and recorded in one transaction that first takes a
//! transaction-level advisory lock of its org (of its phone when only the
//! phone limit is on): sends of one org take turns across every replica,
//! so two replicas cannot both admit the last send a limit allows. One
//! lock per transaction, so no two can wait on each other.
//!
//! Keys are keyed hashes (the `--otp-hash-key` hasher), never a phone
//! number in clear. The rows are counters, not records: their commit does
//! not wait for the disk flush (`synchronous_commit = off`), so a crash of
//! the database server may forget the last few sends it admitted.

use sqlx::{PgConnection, PgPool};

use super::{AbuseGuard, GuardError, Limit, Recent};
use crate::telephony::code::CodeHasher;

/// The first key of the guard's advisory locks (two-key form, a space of
/// its own): "tg" in ASCII.
const LOCK_CLASS: i32 = 0x7467;

pub(super) struct SharedWindows {
    pool: PgPool,
    hasher: CodeHasher,
}

impl SharedWindows {
    pub(super) fn new(pool: PgPool, hasher: CodeHasher) -> Self {
        Self { pool, hasher }
    }

    fn phone_key(&self, org: &str, phone: &str) -> Vec<u8> {
        self.hasher.hash(&format!("guard/phone/{org}"), phone)
    }

    fn org_key(&self, org: &str) -> Vec<u8> {
        self.hasher.hash("guard/org", org)
    }

    pub(super) async fn admit(
        &self,
        guard: &AbuseGuard,
        org: &str,
        phone: &str,
        now_millis: i64,
    ) -> Result<(), GuardError> {
        let phone_key = guard.phone.on().then(|| self.phone_key(org, phone));
        let org_key = guard.org.on().then(|| self.org_key(org));
        // The org's lock covers each of its phones.
        let Some(lock_key) = org_key.as_ref().or(phone_key.as_ref()) else {
            return Ok(());
        };
        let lock = i32::from_be_bytes([lock_key[0], lock_key[1], lock_key[2], lock_key[3]]);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock($1, $2)",
        )
        .bind(LOCK_CLASS)
        .bind(lock)
        .execute(&mut *tx)
        .await?;
        let phone_recent = match &phone_key {
            Some(key) => Some(recent(&mut tx, key, guard.phone, now_millis).await?),
            None => None,
        };
        let org_recent = match &org_key {
            Some(key) => Some(recent(&mut tx, key, guard.org, now_millis).await?),
            None => None,
        };
        // A refusal rolls back (the transaction is dropped): not counted.
        guard
            .check(phone_recent, org_recent, now_millis)
            .map_err(GuardError::Refused)?;
        let keys: Vec<Vec<u8>> = phone_key.into_iter().chain(org_key).collect();
        sqlx::query(
            "INSERT INTO telephony_guard_sends (key, at) SELECT k, $2 FROM UNNEST($1::bytea[]) AS k",
        )
        .bind(keys)
        .bind(now_millis)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes the sends at or before `horizon` (Unix ms).
    pub(super) async fn purge(&self, horizon: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM telephony_guard_sends WHERE at <= $1")
            .bind(horizon)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// The newest sends of `key` inside `limit`'s window, at most its `max`.
async fn recent(
    conn: &mut PgConnection,
    key: &[u8],
    limit: Limit,
    now_millis: i64,
) -> Result<Recent, sqlx::Error> {
    let (count, oldest): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(at) FROM (
             SELECT at FROM telephony_guard_sends WHERE key = $1 AND at > $2
             ORDER BY at DESC LIMIT $3) AS newest",
    )
    .bind(key)
    .bind(limit.horizon(now_millis))
    .bind(i64::from(limit.max))
    .fetch_one(conn)
    .await?;
    Ok(Recent {
        count: u64::try_from(count).unwrap_or(0),
        oldest_millis: oldest,
    })
}
