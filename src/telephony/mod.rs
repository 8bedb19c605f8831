//! The telephony runtime module: one-time passcodes by SMS or voice call,
//! delivered through the org's active `TelephonyHook` with Okta's telephony
//! inline hook contract, with fallback, verification, an abuse guard,
//! previews, events and per-hook 30-day metrics in the hook's status.
//!
//! It owns its routes (`/v1/orgs/{org}/otp/...`,
//! `/v1/orgs/{org}/telephony-hooks/{name}/preview`), its tables (see
//! `migrations/sqlite/0002_telephony.sql`, `migrations/postgres/0001_init.sql`;
//! written only by [`store_writer`], but for the abuse guard's
//! `telephony_guard_sends` in `migrations/postgres/0003_telephony_guard.sql`)
//! and the `metrics` and `lastPreview` fields of hook status. It does not
//! read the apiserver (hooks come from the index's snapshots), does not
//! validate hooks (the validator does) and does not write status itself
//! (the status writer merges what it publishes). See `docs/telephony.md`.
//!
//! On a shared store (PostgreSQL) every replica serves every call: a
//! passcode sent through one is verified through any other, the abuse
//! guard counts in the database, and the numbers published into status
//! are reloaded from the database every few seconds, so that they are the
//! totals of every replica whichever one holds the Lease. Replicas must
//! share `--otp-hash-key`: on a shared store idplane refuses to start
//! without it.

pub mod caller;
pub mod code;
pub mod contract;
pub mod guard;
pub mod hook_stats;
pub mod metrics;
mod openapi;
pub mod phone;
pub mod preview;
mod routes;

pub use openapi::operations;
pub mod sender;
pub mod store_writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use serde_json::json;
use tokio::sync::watch;

use crate::controller::module_fields::ModuleFields;
use crate::http::Routes;
use crate::index::Snapshot;
use crate::resources::{Kind, ObjectKey};
use crate::runtime::{Context, StartError};
use crate::secret::Secret;
use crate::store::Backend;

pub use caller::HookCaller;
pub use guard::{AbuseGuard, Limit};
pub use hook_stats::{HookStats, WINDOW_DAYS};
pub use phone::{CountryAllowList, PhoneNumber};
pub use sender::{OtpPolicy, OtpSender, SendReceipt, SendRequest, VerifyAnswer, VerifyRequest};

/// Command-line settings of the telephony module (flattened into `run` and `operator`).
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Telephony (OTP by SMS and voice)")]
pub struct TelephonySettings {
    /// Digits in a one-time passcode.
    #[arg(long = "otp-code-length", default_value_t = 6, value_parser = clap::value_parser!(u8).range(4..=10))]
    pub otp_code_length: u8,
    /// How long a passcode stays valid.
    #[arg(long = "otp-lifetime", default_value = "5m", value_parser = crate::resources::parse_duration)]
    pub otp_lifetime: Duration,
    /// Wrong codes before a passcode is locked.
    #[arg(long = "otp-max-attempts", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub otp_max_attempts: u32,
    /// Key of the HMAC that stores codes (at least 32 characters). Without
    /// it a random key is drawn at start, and passcodes pending at a
    /// restart can no longer be verified. Required, the same on every
    /// replica, with a PostgreSQL --database.
    #[arg(
        long = "otp-hash-key",
        env = "IDPLANE_OTP_HASH_KEY",
        hide_env_values = true
    )]
    pub otp_hash_key: Option<Secret>,
    /// Sends to one phone number (per org) per --otp-phone-window; 0: no limit.
    #[arg(long = "otp-phone-limit", default_value_t = 5)]
    pub otp_phone_limit: u32,
    /// The sliding window of --otp-phone-limit.
    #[arg(long = "otp-phone-window", default_value = "10m", value_parser = crate::resources::parse_duration)]
    pub otp_phone_window: Duration,
    /// Sends per org per --otp-org-window; 0: no limit.
    #[arg(long = "otp-org-limit", default_value_t = 1000)]
    pub otp_org_limit: u32,
    /// The sliding window of --otp-org-limit.
    #[arg(long = "otp-org-window", default_value = "1h", value_parser = crate::resources::parse_duration)]
    pub otp_org_window: Duration,
    /// Country calling codes each org may send to, e.g.
    /// `acme=+1,+44;globex=+33;*=+1` (`*`: every org not listed). Orgs
    /// without an entry may send anywhere.
    #[arg(
        long = "otp-allowed-country-codes",
        env = "IDPLANE_OTP_ALLOWED_COUNTRY_CODES",
        default_value = ""
    )]
    pub otp_allowed_country_codes: CountryAllowList,
    /// How often hook metrics are published into status.
    #[arg(long = "telephony-status-interval", default_value = "2s", value_parser = crate::resources::parse_duration)]
    pub telephony_status_interval: Duration,
}

/// Errors of the module's operations; each becomes an API error with a
/// stable code (see `routes`).
#[derive(Debug, thiserror::Error)]
pub enum TelephonyError {
    #[error(transparent)]
    InvalidPhone(#[from] phone::PhoneError),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("org {0} has no active TelephonyHook that is ready")]
    NoActiveHook(String),
    #[error("org {org} has no usable TelephonyHook named {name}{}", known_list(.known))]
    UnknownHook {
        org: String,
        name: String,
        known: Vec<String>,
    },
    #[error("org {org} may send only to numbers with country calling codes {}", .allowed.join(", "))]
    CountryNotAllowed { org: String, allowed: Vec<String> },
    #[error("too many passcodes {}: at most {} per {} s; retry in {} s",
        match .0.scope { guard::Scope::Phone => "for this phone number", guard::Scope::Org => "for this org" },
        .0.limit.max, .0.limit.window.as_secs(), .0.retry_after_secs())]
    RateLimited(guard::Refusal),
    #[error("no hook delivered the passcode; it is not valid")]
    DeliveryFailed {
        transaction_id: String,
        attempts: Vec<sender::FailedAttempt>,
    },
    #[error(
        "no passcode with this transactionId in this org (never delivered, or expired more than a day ago)"
    )]
    UnknownTransaction,
    /// The store cannot be reached now: nothing was recorded (503).
    #[error("the telephony store is unavailable; try again: {0}")]
    StoreUnavailable(String),
    #[error("{0}")]
    Store(String),
}

impl TelephonyError {
    /// A database error of the module's direct reads and writes (the
    /// abuse guard's).
    pub(crate) fn from_store(e: &sqlx::Error) -> Self {
        store_writer::StoreWriterError::from_ref(e).into()
    }
}

impl From<store_writer::StoreWriterError> for TelephonyError {
    fn from(e: store_writer::StoreWriterError) -> Self {
        if e.is_unavailable() {
            Self::StoreUnavailable(e.to_string())
        } else {
            Self::Store(e.to_string())
        }
    }
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (known: {})", known.join(", "))
    }
}

/// How often, on a shared store, the numbers in status are reloaded from
/// the database (the totals of every replica).
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Starts the module's background work and returns its routes. Every
/// hook call and preview goes through `egress`.
pub async fn start(
    ctx: Context,
    settings: TelephonySettings,
    egress: Arc<crate::egress::Egress>,
) -> Result<Routes, StartError> {
    let sender = Arc::new(build(&ctx, &settings, egress).await?);
    tokio::spawn(publish_metrics(
        ctx.snapshots.clone(),
        sender.hook_stats.clone(),
        ctx.module_fields.clone(),
        settings
            .telephony_status_interval
            .max(Duration::from_millis(100)),
        ctx.store.is_shared().then(|| ctx.store.backend().clone()),
    ));
    tokio::spawn(purge(sender.clone()));
    // The store writer commits passcodes and executions after the send has
    // answered: on a stop, what the last requests queued is committed
    // before the process exits.
    let store_writer = sender.store_writer.clone();
    let served = ctx.stop.served.clone();
    ctx.stop.tracker.spawn(async move {
        served.cancelled().await;
        store_writer.barrier().await;
        // The line operators and tests look for keeps its first wording.
        tracing::info!("stopping: telephony ledger flushed");
    });
    Ok(routes::routes(sender))
}

fn start_error(message: impl Into<String>) -> StartError {
    StartError {
        module: "telephony",
        message: message.into(),
    }
}

/// The service, its stored numbers loaded, its store writer running.
pub async fn build(
    ctx: &Context,
    settings: &TelephonySettings,
    egress: Arc<crate::egress::Egress>,
) -> Result<OtpSender, StartError> {
    let hasher = match &settings.otp_hash_key {
        Some(key) if key.len() < 32 => {
            return Err(start_error(
                "--otp-hash-key (IDPLANE_OTP_HASH_KEY) must be at least 32 characters",
            ));
        }
        Some(key) => code::CodeHasher::new(key.as_bytes()),
        None if ctx.store.is_shared() => {
            return Err(start_error(
                "a shared store (PostgreSQL --database) needs --otp-hash-key (IDPLANE_OTP_HASH_KEY), the same on every replica: without it each replica draws a key of its own, and neither a passcode sent through one replica nor the abuse guard's counts would be recognised by another",
            ));
        }
        None => code::CodeHasher::random(),
    };
    let caller = HookCaller::new(egress).map_err(|e| start_error(e.to_string()))?;
    let since = window_since();
    let backend = ctx.store.backend();
    let stored = store_writer::load_numbers(backend, since)
        .await
        .map_err(|e| start_error(format!("cannot load hook metrics: {e}")))?;
    let phone_limit = Limit {
        max: settings.otp_phone_limit,
        window: settings.otp_phone_window,
    };
    let org_limit = Limit {
        max: settings.otp_org_limit,
        window: settings.otp_org_window,
    };
    let guard = match backend {
        Backend::Postgres(pool) => {
            AbuseGuard::shared(phone_limit, org_limit, pool.clone(), hasher.clone())
        }
        Backend::Sqlite(_) => AbuseGuard::new(phone_limit, org_limit),
    };
    let metrics = metrics::TelephonyMetrics::register(&ctx.metrics);
    let on_error = {
        let metrics = metrics.clone();
        move |_: &store_writer::StoreWriterError| metrics.store_writer_error()
    };
    Ok(OtpSender {
        snapshots: ctx.snapshots.clone(),
        caller,
        hasher,
        policy: OtpPolicy {
            code_length: usize::from(settings.otp_code_length),
            lifetime: settings.otp_lifetime,
            max_attempts: settings.otp_max_attempts,
        },
        guard,
        countries: settings.otp_allowed_country_codes.clone(),
        store_writer: store_writer::StoreWriter::start(backend.clone(), on_error),
        hook_stats: Arc::new(HookStats::from_stored(stored)),
        metrics,
        module_fields: ctx.module_fields.clone(),
    })
}

/// Publishes every hook's 30-day numbers into its status: at start, when
/// the snapshot changes, and every `interval` (unchanged values are not
/// published again, so an idle hook causes no status write). On a shared
/// store (`shared`), the numbers and each hook's `lastPreview` are
/// reloaded from the database every [`RELOAD_EVERY`]: what every replica
/// counted, not only this one.
async fn publish_metrics(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    hook_stats: Arc<HookStats>,
    module_fields: Arc<ModuleFields>,
    interval: Duration,
    shared: Option<Backend>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reloaded: Option<Instant> = None;
    // The orgs as last published, and whether every hook is due.
    let mut seen: std::collections::BTreeMap<String, Arc<crate::index::OrgConfig>> =
        Default::default();
    let mut all = true;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if let Some(backend) = &shared
            && reloaded.is_none_or(|t| t.elapsed() >= RELOAD_EVERY)
        {
            reloaded = Some(Instant::now());
            reload(backend, &snapshot, &hook_stats, &module_fields).await;
            all = true;
        }
        let today = Utc::now().date_naive();
        for (org, config) in &snapshot.orgs {
            // A new snapshot brings new hooks only in the orgs it rebuilt;
            // the numbers move on the ticks.
            if !all && seen.get(org).is_some_and(|s| Arc::ptr_eq(s, config)) {
                continue;
            }
            for hook in config.hooks.keys() {
                let metrics = hook_stats.metrics(org, hook, today);
                let key = ObjectKey::new(Kind::TelephonyHook, org.clone(), hook.clone());
                module_fields.set(&key, "metrics", json!(metrics));
            }
        }
        seen = snapshot.orgs.clone();
        all = tokio::select! {
            _ = ticker.tick() => true,
            changed = snapshots.changed() => if changed.is_err() { return } else { false },
        };
    }
}

/// Replaces the numbers counted in memory with the stored totals, and
/// publishes the newest preview of each hook. A store that cannot be read
/// leaves both as they were until the next reload.
async fn reload(
    backend: &Backend,
    snapshot: &Snapshot,
    hook_stats: &HookStats,
    module_fields: &ModuleFields,
) {
    match store_writer::load_numbers(backend, window_since()).await {
        Ok(numbers) => hook_stats.replace(numbers),
        Err(e) => {
            tracing::warn!(error = %e, "cannot reload the hooks' numbers from the shared store")
        }
    }
    for (org, config) in &snapshot.orgs {
        for hook in config.hooks.keys() {
            match store_writer::last_preview(backend, org, hook).await {
                Ok(Some((time, detail))) => {
                    let time = chrono::DateTime::parse_from_rfc3339(&time)
                        .map(|t| {
                            t.with_timezone(&Utc)
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        })
                        .unwrap_or(time);
                    let key = ObjectKey::new(Kind::TelephonyHook, org.clone(), hook.clone());
                    module_fields.set(
                        &key,
                        "lastPreview",
                        json!({"time": time, "result": detail["result"]}),
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the hooks' last previews from the shared store");
                    return;
                }
            }
        }
    }
}

/// The first UTC day of the numbers kept.
fn window_since() -> chrono::NaiveDate {
    Utc::now()
        .date_naive()
        .checked_sub_days(Days::new(u64::from(WINDOW_DAYS)))
        .unwrap_or_default()
}

/// Forgets passcodes a day after they expire, buckets past the window and
/// the abuse guard's sends past their windows (on a shared store every
/// replica does it; it is idempotent).
async fn purge(sender: Arc<OtpSender>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(600));
    loop {
        ticker.tick().await;
        let now = Utc::now();
        let days_before = now
            .date_naive()
            .checked_sub_days(Days::new(u64::from(WINDOW_DAYS)))
            .unwrap_or_default();
        let before = (now - chrono::Duration::days(1)).timestamp_millis();
        if sender
            .store_writer
            .purge(before, days_before)
            .await
            .is_err()
        {
            return;
        }
        if let Err(e) = sender.guard.purge(now.timestamp_millis()).await {
            tracing::warn!(error = %e, "cannot purge the abuse guard's old sends");
        }
    }
}

/// Pools for the PostgreSQL unit tests of the module.
#[cfg(test)]
pub(crate) mod testing {
    use sqlx::PgPool;
    use sqlx::postgres::PgPoolOptions;

    use crate::store::Backend;

    /// The pool of a new, empty PostgreSQL store (see `store::testing`).
    pub async fn pg_pool() -> PgPool {
        match crate::store::testing::postgres().await.backend() {
            Backend::Postgres(pool) => pool.clone(),
            Backend::Sqlite(_) => unreachable!("store::testing::postgres is PostgreSQL"),
        }
    }

    /// A pool on a server that does not answer (nothing listens on port 1).
    pub fn unreachable() -> PgPool {
        PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(500))
            .connect_lazy("postgres://idplane@127.0.0.1:1/idplane")
            .unwrap()
    }

    /// Another pool on the same database: a second replica.
    pub fn replica(pool: &PgPool) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect_lazy_with((*pool.connect_options()).clone())
    }
}
