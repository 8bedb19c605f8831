//! Brand sender domains: each EmailDomain gets a verification token, its
//! status shows the TXT record to publish, and idplane looks the record up
//! until it is there (`POLLING` → `VERIFIED`, or `ERROR` with the reason),
//! then checks again daily. Which sender a brand's mail gets is decided by
//! [`DomainBook`] from the outcome. The state machine is pure
//! ([`step`]); lookups and the loop are at the bottom.
//!
//! On a store that several replicas share, each check runs once, on the
//! replica that takes it first (a conditional UPDATE of the row's
//! `checked_at`, [`Queue::claim_domain_check`]); the others take its
//! result from the store every few seconds, so that the Lease holder's
//! status and every replica's choice of sender follow it. A domain's first
//! row (its token) is likewise stored once and shared.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::ResolverOpts;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use serde_json::json;
use tokio::sync::watch;
use tracing::Instrument;

use super::queue::{DomainRow, LogEntry, Queue};
use super::verify::verified_condition;
use super::worker::{now_millis, rfc3339};
use crate::controller::module_fields::ModuleFields;
use crate::index::{DomainConfig, OrgConfig, Snapshot};
use crate::resources::{Kind, ObjectKey};

pub const NOT_STARTED: &str = "NOT_STARTED";
pub const POLLING: &str = "POLLING";
pub const VERIFIED: &str = "VERIFIED";
pub const ERROR: &str = "ERROR";

/// Timing of the DNS checks.
#[derive(Clone, Copy, Debug)]
pub struct DnsTiming {
    /// Between two lookups while not verified.
    pub poll_interval: Duration,
    /// Between two lookups once verified.
    pub recheck_interval: Duration,
    /// A record still missing after this long is an ERROR (polling goes on).
    pub poll_timeout: Duration,
}

/// The TXT record's name: `_idplane.<validationSubdomain>.<domain>`.
pub fn record_name(d: &DomainConfig) -> String {
    format!("_idplane.{}.{}", d.validation_subdomain, d.domain)
}

/// The TXT record's value.
pub fn record_value(token: &str) -> String {
    format!("idplane-verification={token}")
}

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The expected value is among the TXT records.
    Found,
    /// No TXT record at that name (NXDOMAIN or no data).
    Missing,
    /// TXT records, none with the expected value.
    Mismatch(Vec<String>),
    /// The resolver failed (timeout, SERVFAIL...).
    Failed(String),
}

/// Classifies the TXT strings found at the record name.
pub fn classify(values: &[String], token: &str) -> Lookup {
    let want = record_value(token);
    if values.iter().any(|v| v.trim() == want) {
        Lookup::Found
    } else if values.is_empty() {
        Lookup::Missing
    } else {
        Lookup::Mismatch(values.to_vec())
    }
}

/// A new row for a domain (status POLLING).
pub fn new_row(org: &str, d: &DomainConfig, token: String, now: i64) -> DomainRow {
    DomainRow {
        org: org.to_string(),
        name: d.name.clone(),
        domain: d.domain.clone(),
        record_name: record_name(d),
        token,
        status: POLLING.into(),
        reason: "Polling".into(),
        message: format!(
            "waiting for the TXT record {} to hold {}",
            record_name(d),
            "the verification value"
        ),
        polling_since: now,
        checked_at: None,
        verified_at: None,
    }
}

/// The row after a lookup at `now`. Pure.
pub fn step(row: &DomainRow, lookup: &Lookup, now: i64, timing: &DnsTiming) -> DomainRow {
    let mut next = row.clone();
    next.checked_at = Some(now);
    let timed_out = now - row.polling_since
        >= i64::try_from(timing.poll_timeout.as_millis()).unwrap_or(i64::MAX);
    let was_verified = row.status == VERIFIED;
    let set = |next: &mut DomainRow, status: &str, reason: &str, message: String| {
        next.status = status.into();
        next.reason = reason.into();
        next.message = message;
    };
    match lookup {
        Lookup::Found => {
            if !was_verified {
                next.verified_at = Some(now);
            }
            set(
                &mut next,
                VERIFIED,
                "Verified",
                format!(
                    "the TXT record {} holds the verification value",
                    row.record_name
                ),
            );
        }
        Lookup::Failed(e) if was_verified => {
            // A DNS outage does not take a verified sender away.
            next.message = format!("verified; the last recheck failed ({e}) and is tried again");
        }
        Lookup::Failed(e) => {
            let status = if timed_out { ERROR } else { POLLING };
            set(
                &mut next,
                status,
                "DnsLookupFailed",
                format!("looking up {} failed: {e}", row.record_name),
            );
        }
        Lookup::Missing if was_verified => {
            next.polling_since = now;
            set(
                &mut next,
                ERROR,
                "DnsRecordMissing",
                format!(
                    "the TXT record {} is gone; publish it again",
                    row.record_name
                ),
            );
        }
        Lookup::Missing => {
            let (status, reason) = if timed_out {
                (ERROR, "DnsRecordMissing")
            } else {
                (POLLING, "Polling")
            };
            set(
                &mut next,
                status,
                reason,
                format!("no TXT record at {} yet", row.record_name),
            );
        }
        Lookup::Mismatch(values) => {
            if was_verified {
                next.polling_since = now;
            }
            set(
                &mut next,
                ERROR,
                "DnsRecordMismatch",
                format!(
                    "the TXT record {} holds {:?}, not the verification value",
                    row.record_name, values
                ),
            );
        }
    }
    next
}

/// When the row is due for its next lookup.
pub fn next_check(row: &DomainRow, timing: &DnsTiming) -> i64 {
    let Some(checked) = row.checked_at else {
        return row.polling_since;
    };
    let wait = if row.status == VERIFIED {
        timing.recheck_interval
    } else {
        timing.poll_interval
    };
    checked + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)
}

/// Which brand domains are verified, for choosing senders.
#[derive(Default)]
pub struct DomainBook {
    /// (org, EmailDomain name) → (domain, status).
    inner: RwLock<HashMap<(String, String), (String, String)>>,
}

impl DomainBook {
    fn set(&self, row: &DomainRow) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (row.org.clone(), row.name.clone()),
                (row.domain.clone(), row.status.clone()),
            );
    }

    fn remove(&self, org: &str, name: &str) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(org.to_string(), name.to_string()));
    }

    /// The validation status of a domain (NOT_STARTED when unknown).
    pub fn status(&self, org: &str, d: &DomainConfig) -> String {
        match self
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(org.to_string(), d.name.clone()))
        {
            Some((domain, status)) if *domain == d.domain => status.clone(),
            _ => NOT_STARTED.into(),
        }
    }
}

/// The sender of a message, with a warning when a brand's own sender
/// could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderChoice {
    pub sender: String,
    pub warning: Option<String>,
}

/// The brand's verified sender (`displayName <userName@domain>`), else the
/// default sender; `None` when neither is there. Pure.
pub fn choose_sender(
    brand: Option<&str>,
    org: Option<&OrgConfig>,
    status_of: impl Fn(&DomainConfig) -> String,
    default_sender: Option<&str>,
) -> Option<SenderChoice> {
    let warning = match brand {
        None => None,
        Some(b) => match org.and_then(|o| o.email_domains.get(b)) {
            None => Some(format!("brand {b} has no EmailDomain")),
            Some(d) => {
                let status = status_of(d);
                if status == VERIFIED {
                    let address = lettre::Address::new(&d.user_name, &d.domain);
                    if let Ok(address) = address {
                        let mailbox =
                            lettre::message::Mailbox::new(Some(d.display_name.clone()), address);
                        return Some(SenderChoice {
                            sender: mailbox.to_string(),
                            warning: None,
                        });
                    }
                    Some(format!(
                        "brand {b}: {}@{} is not a valid address",
                        d.user_name, d.domain
                    ))
                } else {
                    Some(format!(
                        "brand {b}: the domain {} of EmailDomain {} is not verified ({status})",
                        d.domain, d.name
                    ))
                }
            }
        },
    };
    default_sender.map(|s| SenderChoice {
        sender: s.to_string(),
        warning: warning.map(|w| format!("{w}; sent from the default sender {s}")),
    })
}

/// A resolver for TXT lookups: the given name servers, or the system's.
pub fn resolver(nameservers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, String> {
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.timeout = timeout;
    options.attempts = 1;
    let builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
    } else {
        TokioResolver::builder_with_config(
            crate::egress::name_server_config(nameservers),
            TokioRuntimeProvider::default(),
        )
    };
    builder
        .with_options(options)
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// Looks up the TXT record of a row.
pub async fn lookup(resolver: &TokioResolver, row: &DomainRow) -> Lookup {
    let name = format!("{}.", row.record_name.trim_end_matches('.'));
    match resolver.txt_lookup(name).await {
        Ok(found) => {
            let values: Vec<String> = found
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect();
            classify(&values, &row.token)
        }
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Lookup::Missing,
        Err(e) => Lookup::Failed(e.to_string()),
    }
}

/// On a store that several replicas share, how often a replica takes the
/// rows the others checked (each check runs on one replica only).
const SHARED_RELOAD: Duration = Duration::from_secs(10);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The rows of one org.
fn rows_of<'a>(
    rows: &'a BTreeMap<(String, String), DomainRow>,
    org: &'a str,
) -> impl Iterator<Item = (&'a (String, String), &'a DomainRow)> {
    rows.range((org.to_string(), String::new())..)
        .take_while(move |((o, _), _)| o == org)
}

fn domain_key(org: &str, name: &str) -> ObjectKey {
    ObjectKey::new(Kind::EmailDomain, org, name)
}

fn publish(module_fields: &ModuleFields, row: &DomainRow) {
    let key = domain_key(&row.org, &row.name);
    module_fields.set(&key, "validationStatus", json!(row.status));
    module_fields.set(
        &key,
        "dnsValidationRecords",
        json!([{
            "fqdn": row.record_name,
            "recordType": "TXT",
            "verificationValue": record_value(&row.token),
        }]),
    );
    module_fields.set(
        &key,
        "conditions",
        verified_condition(row.status == VERIFIED, &row.reason, &row.message, None),
    );
}

/// What the domain loop needs.
pub struct DomainWatch {
    pub queue: Queue,
    pub module_fields: Arc<ModuleFields>,
    pub book: Arc<DomainBook>,
    pub resolver: Arc<TokioResolver>,
    pub timing: DnsTiming,
}

impl DomainWatch {
    /// Runs until the snapshot channel closes.
    pub async fn run(self, mut snapshots: watch::Receiver<Arc<Snapshot>>) {
        let mut rows: BTreeMap<(String, String), DomainRow> = match self.queue.domains().await {
            Ok(list) => list
                .into_iter()
                .map(|r| ((r.org.clone(), r.name.clone()), r))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read brand domains; starting over");
                BTreeMap::new()
            }
        };
        for row in rows.values() {
            self.book.set(row);
        }
        let shared = self.queue.is_shared();
        let mut reloaded = now_millis();
        let mut seen = HashMap::new();
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            if snapshot.synced {
                self.reconcile(&snapshot, &mut rows, &mut seen).await;
            }
            let now = now_millis();
            if shared && now - reloaded >= millis(SHARED_RELOAD) {
                self.adopt_stored(&mut rows).await;
                reloaded = now;
            }
            let due: Vec<(String, String)> = rows
                .iter()
                .filter(|(_, r)| next_check(r, &self.timing) <= now)
                .map(|(k, _)| k.clone())
                .collect();
            if !due.is_empty() {
                self.check(&due, &mut rows).await;
                continue;
            }
            let next = rows.values().map(|r| next_check(r, &self.timing)).min();
            let wait = next.map(|at| Duration::from_millis((at - now).max(0) as u64));
            let mut wait = wait.unwrap_or(Duration::from_secs(3600));
            if shared {
                wait = wait.min(SHARED_RELOAD);
            }
            tokio::select! {
                r = snapshots.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Matches the rows with the EmailDomains of the snapshot, looking only
    /// at the orgs whose configuration changed since `seen` (a burst of
    /// creates publishes a snapshot many times a second; going over every
    /// domain each time cost a sixth of the operator's CPU). A row is
    /// published when it is new or its domain is new to this org's last
    /// configuration here; [`Self::check`] and [`Self::adopt`] publish what
    /// they change.
    async fn reconcile(
        &self,
        snapshot: &Snapshot,
        rows: &mut BTreeMap<(String, String), DomainRow>,
        seen: &mut HashMap<String, Arc<OrgConfig>>,
    ) {
        let now = now_millis();
        let mut gone: Vec<(String, String)> = Vec::new();
        let orgs_gone: Vec<String> = seen
            .keys()
            .filter(|org| !snapshot.orgs.contains_key(*org))
            .cloned()
            .collect();
        for org in orgs_gone {
            seen.remove(&org);
            gone.extend(rows_of(rows, &org).map(|(key, _)| key.clone()));
        }
        for (org, config) in &snapshot.orgs {
            let before = seen.insert(org.clone(), config.clone());
            if before.as_ref().is_some_and(|b| Arc::ptr_eq(b, config)) {
                continue;
            }
            let names: HashSet<&str> = config
                .email_domains
                .values()
                .map(|d| d.name.as_str())
                .collect();
            gone.extend(
                rows_of(rows, org)
                    .filter(|((_, name), _)| !names.contains(name.as_str()))
                    .map(|(key, _)| key.clone()),
            );
            // Each domain of the org's last configuration here, by name.
            let known_before: HashMap<&str, &str> = before
                .iter()
                .flat_map(|b| b.email_domains.values())
                .map(|d| (d.name.as_str(), d.domain.as_str()))
                .collect();
            for d in config.email_domains.values() {
                let key = (org.clone(), d.name.clone());
                let fresh = match rows.get(&key) {
                    Some(r) if r.domain == d.domain && r.record_name == record_name(d) => None,
                    // A changed domain keeps its token and starts polling again.
                    Some(r) => Some(new_row(org, d, r.token.clone(), now)),
                    None => Some(new_row(
                        org,
                        d,
                        format!("{:032x}", rand::random::<u128>()),
                        now,
                    )),
                };
                let known = known_before.get(d.name.as_str()) == Some(&d.domain.as_str());
                if let Some(row) = fresh {
                    // Another replica may have stored this domain first:
                    // its row (and token) is the one.
                    let row = match self.queue.adopt_domain(&row).await {
                        Ok(stored) => stored,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot store a brand domain");
                            row
                        }
                    };
                    rows.insert(key.clone(), row);
                } else if known {
                    continue;
                }
                let row = &rows[&key];
                self.book.set(row);
                publish(&self.module_fields, row);
            }
        }
        for (org, name) in gone {
            rows.remove(&(org.clone(), name.clone()));
            self.book.remove(&org, &name);
            if let Err(e) = self.queue.delete_domain(&org, &name).await {
                tracing::warn!(error = %e, "cannot forget a brand domain");
            }
        }
    }

    /// Takes the rows other replicas changed (their checks) from the
    /// store, for the rows this replica has.
    async fn adopt_stored(&self, rows: &mut BTreeMap<(String, String), DomainRow>) {
        let stored = match self.queue.domains().await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the brand domains other replicas checked");
                return;
            }
        };
        for row in stored {
            self.adopt(row, rows);
        }
    }

    /// Takes `stored` in place of this replica's row of the same domain,
    /// when it has one and they differ.
    fn adopt(&self, stored: DomainRow, rows: &mut BTreeMap<(String, String), DomainRow>) {
        let key = (stored.org.clone(), stored.name.clone());
        match rows.get(&key) {
            Some(mine) if *mine != stored && mine.domain == stored.domain => {
                self.book.set(&stored);
                publish(&self.module_fields, &stored);
                rows.insert(key, stored);
            }
            _ => {}
        }
    }

    /// Takes each due check for this replica: those another replica took
    /// first are left to it (their rows as stored are taken instead). When
    /// the store cannot say, the check is made here.
    async fn claim_checks(
        &self,
        due: &[(String, String)],
        rows: &mut BTreeMap<(String, String), DomainRow>,
    ) -> Vec<(String, String)> {
        let now = now_millis();
        let mut mine = Vec::with_capacity(due.len());
        for key in due {
            let seen = rows[key].clone();
            match self.queue.claim_domain_check(&seen, now).await {
                Ok(false) => match self.queue.domain(&key.0, &key.1).await {
                    Ok(Some(stored)) => self.adopt(stored, rows),
                    // Gone, or unreadable now: not due again until the
                    // next interval.
                    _ => {
                        if let Some(row) = rows.get_mut(key) {
                            row.checked_at = Some(now);
                        }
                    }
                },
                Ok(true) => mine.push(key.clone()),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot take a brand-domain check; checking here");
                    mine.push(key.clone());
                }
            }
        }
        mine
    }

    /// Looks up the due rows (concurrently) that this replica takes, and
    /// stores what changed.
    async fn check(
        &self,
        due: &[(String, String)],
        rows: &mut BTreeMap<(String, String), DomainRow>,
    ) {
        let due = self.claim_checks(due, rows).await;
        let lookups = futures::future::join_all(due.iter().map(|k| {
            let row = rows[k].clone();
            let resolver = self.resolver.clone();
            // One span per DNS check, named by its domain.
            let span = tracing::info_span!("dns_check", org = %row.org, domain = %row.domain);
            async move { (row.clone(), lookup(&resolver, &row).await) }.instrument(span)
        }))
        .await;
        let now = now_millis();
        for (before, found) in lookups {
            let after = step(&before, &found, now, &self.timing);
            let log = (after.status != before.status).then(|| LogEntry {
                org: after.org.clone(),
                type_: "email.domain".into(),
                outcome: after.status.clone(),
                time: rfc3339(now),
                subject: format!("EmailDomain/{}", after.name),
                detail: json!({
                    "domain": after.domain, "from": before.status, "to": after.status,
                    "reason": after.reason, "message": after.message,
                }),
            });
            if let Err(e) = self.queue.save_domain(&after, log.as_ref()).await {
                tracing::error!(error = %e, "cannot store a brand domain check");
            }
            self.book.set(&after);
            publish(&self.module_fields, &after);
            rows.insert((after.org.clone(), after.name.clone()), after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> DnsTiming {
        DnsTiming {
            poll_interval: Duration::from_secs(60),
            recheck_interval: Duration::from_secs(86_400),
            poll_timeout: Duration::from_secs(3_600),
        }
    }

    fn domain() -> DomainConfig {
        DomainConfig {
            name: "acme".into(),
            brand: "acme".into(),
            domain: "acme.example.com".into(),
            user_name: "noreply".into(),
            display_name: "Acme".into(),
            validation_subdomain: "mail".into(),
        }
    }

    /// A snapshot of org acme with these domains (name, domain).
    fn snapshot(domains: &[(&str, &str)]) -> Snapshot {
        let mut config = OrgConfig::default();
        for (name, d) in domains {
            config.email_domains.insert(
                name.to_string(),
                DomainConfig {
                    name: name.to_string(),
                    brand: name.to_string(),
                    domain: d.to_string(),
                    ..domain()
                },
            );
        }
        Snapshot {
            synced: true,
            orgs: BTreeMap::from([("acme".to_string(), Arc::new(config))]),
            ..Default::default()
        }
    }

    fn dirty(fields: &ModuleFields) -> Vec<String> {
        fields.take_dirty().into_iter().map(|k| k.name).collect()
    }

    #[tokio::test]
    async fn reconcile_looks_only_at_changed_orgs_and_publishes_only_changed_domains() {
        let store = crate::store::Store::memory().await.unwrap();
        let (queue, committer) = Queue::new(store.backend().clone(), None);
        tokio::spawn(committer.run());
        let watch = DomainWatch {
            queue,
            module_fields: Arc::default(),
            book: Arc::default(),
            resolver: Arc::new(
                resolver(&["127.0.0.1:9".parse().unwrap()], Duration::from_millis(10)).unwrap(),
            ),
            timing: timing(),
        };
        let (mut rows, mut seen) = (BTreeMap::new(), HashMap::new());

        let first = snapshot(&[("a", "a.example.com"), ("b", "b.example.com")]);
        watch.reconcile(&first, &mut rows, &mut seen).await;
        assert_eq!(dirty(&watch.module_fields), ["a", "b"]);
        let a = watch.module_fields.get(&domain_key("acme", "a")).unwrap();
        assert_eq!(a["validationStatus"], "POLLING");
        assert_eq!(
            a["dnsValidationRecords"][0]["fqdn"],
            "_idplane.mail.a.example.com"
        );

        // The same snapshot again, and a new one with the org unchanged.
        watch.reconcile(&first, &mut rows, &mut seen).await;
        let same = Snapshot {
            version: 2,
            ..first.clone()
        };
        watch.reconcile(&same, &mut rows, &mut seen).await;
        assert!(dirty(&watch.module_fields).is_empty());

        // The org changed: a third domain, and b's domain changed; a is
        // published again by no one (its fields stay as they were).
        let second = snapshot(&[
            ("a", "a.example.com"),
            ("b", "b2.example.com"),
            ("c", "c.example.com"),
        ]);
        watch.reconcile(&second, &mut rows, &mut seen).await;
        assert_eq!(dirty(&watch.module_fields), ["b", "c"]);
        let b = watch.module_fields.get(&domain_key("acme", "b")).unwrap();
        assert_eq!(
            b["dnsValidationRecords"][0]["fqdn"],
            "_idplane.mail.b2.example.com"
        );
        assert!(watch.module_fields.get(&domain_key("acme", "a")).is_some());

        // A domain removed, then the whole org.
        watch
            .reconcile(&snapshot(&[("c", "c.example.com")]), &mut rows, &mut seen)
            .await;
        assert_eq!(
            rows.keys().map(|(_, n)| n.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(
            watch.book.status(
                "acme",
                &DomainConfig {
                    name: "a".into(),
                    ..domain()
                }
            ),
            NOT_STARTED
        );
        watch
            .reconcile(
                &Snapshot {
                    synced: true,
                    ..Default::default()
                },
                &mut rows,
                &mut seen,
            )
            .await;
        assert!(rows.is_empty() && seen.is_empty());
        assert!(watch.queue.domains().await.unwrap().is_empty());
    }

    #[test]
    fn record_names_and_values() {
        assert_eq!(record_name(&domain()), "_idplane.mail.acme.example.com");
        assert_eq!(record_value("abc"), "idplane-verification=abc");
        let cases = [
            (vec![], Lookup::Missing),
            (vec!["idplane-verification=t".to_string()], Lookup::Found),
            (
                vec![
                    "v=spf1 -all".to_string(),
                    "idplane-verification=t".to_string(),
                ],
                Lookup::Found,
            ),
            (
                vec!["idplane-verification=x".to_string()],
                Lookup::Mismatch(vec!["idplane-verification=x".into()]),
            ),
        ];
        for (values, want) in cases {
            assert_eq!(classify(&values, "t"), want, "{values:?}");
        }
    }

    #[test]
    fn state_machine() {
        let t = timing();
        let start = new_row("org", &domain(), "t".into(), 0);
        assert_eq!(next_check(&start, &t), 0, "checked at once");
        let failed = Lookup::Failed("timeout".into());
        // (from status, lookup, minutes since polling began) -> to status, reason
        let cases = [
            (POLLING, Lookup::Missing, 1, POLLING, "Polling"),
            (POLLING, Lookup::Missing, 61, ERROR, "DnsRecordMissing"),
            (POLLING, failed.clone(), 1, POLLING, "DnsLookupFailed"),
            (POLLING, failed.clone(), 61, ERROR, "DnsLookupFailed"),
            (POLLING, Lookup::Found, 1, VERIFIED, "Verified"),
            (
                POLLING,
                Lookup::Mismatch(vec!["x".into()]),
                1,
                ERROR,
                "DnsRecordMismatch",
            ),
            (ERROR, Lookup::Found, 100, VERIFIED, "Verified"),
            (VERIFIED, Lookup::Found, 5000, VERIFIED, "Verified"),
            (VERIFIED, failed, 5000, VERIFIED, "Verified"),
            (VERIFIED, Lookup::Missing, 5000, ERROR, "DnsRecordMissing"),
        ];
        for (from, lookup, minutes, to, reason) in cases {
            let mut row = start.clone();
            row.status = from.into();
            row.reason = if from == VERIFIED {
                "Verified".into()
            } else {
                row.reason
            };
            let now = minutes * 60_000;
            let after = step(&row, &lookup, now, &t);
            assert_eq!(
                (after.status.as_str(), after.reason.as_str()),
                (to, reason),
                "{from} {lookup:?}"
            );
            assert_eq!(after.checked_at, Some(now));
            let wait = next_check(&after, &t) - now;
            let want = if to == VERIFIED { 86_400_000 } else { 60_000 };
            assert_eq!(wait, want, "{from} -> {to}");
        }
    }

    #[test]
    fn sender_choice() {
        let org = OrgConfig {
            email_domains: BTreeMap::from([("acme".to_string(), domain())]),
            ..Default::default()
        };
        let verified = |_: &DomainConfig| VERIFIED.to_string();
        let polling = |_: &DomainConfig| POLLING.to_string();
        let fallback = "Idplane <noreply@idplane.example>";
        let default = Some(fallback);
        let brand = choose_sender(Some("acme"), Some(&org), verified, default).unwrap();
        assert_eq!(brand.sender, "Acme <noreply@acme.example.com>");
        assert_eq!(brand.warning, None);
        let unverified = choose_sender(Some("acme"), Some(&org), polling, default).unwrap();
        assert_eq!(unverified.sender, fallback);
        assert!(
            unverified
                .warning
                .unwrap()
                .contains("not verified (POLLING)")
        );
        let unknown = choose_sender(Some("other"), Some(&org), verified, default).unwrap();
        assert!(
            unknown
                .warning
                .unwrap()
                .contains("brand other has no EmailDomain")
        );
        let plain = choose_sender(None, Some(&org), verified, default).unwrap();
        assert_eq!((plain.sender.as_str(), plain.warning), (fallback, None));
        assert_eq!(choose_sender(None, None, verified, None), None);
        assert!(choose_sender(Some("acme"), Some(&org), verified, None).is_some());
    }

    #[test]
    fn book_ignores_rows_of_an_old_domain() {
        let book = DomainBook::default();
        let mut row = new_row("org", &domain(), "t".into(), 0);
        row.status = VERIFIED.into();
        book.set(&row);
        assert_eq!(book.status("org", &domain()), VERIFIED);
        let mut moved = domain();
        moved.domain = "other.example.com".into();
        assert_eq!(book.status("org", &moved), NOT_STARTED);
    }
}
