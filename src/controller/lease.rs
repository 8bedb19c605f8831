//! Leader election over a `coordination.k8s.io/v1` Lease: every replica
//! serves the runtime from its own index, but only the Lease holder writes
//! status. The holder renews every `duration / 3`; another replica takes
//! over once `renewTime + leaseDurationSeconds` has passed, or at once
//! when the holder stopped gracefully and gave the lease up.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// Whether `holder` may take the lease now (pure).
pub fn may_acquire(spec: &LeaseSpec, identity: &str, now: DateTime<Utc>) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let Some(renewed) = spec.renew_time.as_ref() else {
        return true;
    };
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = DateTime::<Utc>::from_timestamp(
        renewed.0.as_second(),
        renewed.0.subsec_nanosecond() as u32,
    )
    .unwrap_or_default();
    renewed + chrono::Duration::seconds(seconds) < now
}

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Tries once to acquire or renew; returns whether this replica leads.
async fn try_lead(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool, kube::Error> {
    let seconds = i32::try_from(s.duration.as_secs()).unwrap_or(15);
    match api.get_opt(&s.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(s.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(micro_now()),
                    renew_time: Some(micro_now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            if !may_acquire(&spec, &s.identity, Utc::now()) {
                return Ok(false);
            }
            let taking_over = spec.holder_identity.as_deref() != Some(s.identity.as_str());
            let mut new_spec = spec.clone();
            new_spec.holder_identity = Some(s.identity.clone());
            new_spec.lease_duration_seconds = Some(seconds);
            new_spec.renew_time = Some(micro_now());
            if taking_over {
                new_spec.acquire_time = Some(micro_now());
                new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            lease.spec = Some(new_spec);
            // replace carries resourceVersion: a concurrent writer gets 409.
            match api.replace(&s.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Gives the lease up if this replica holds it, so that another replica
/// takes over at its next try instead of after the lease runs out.
async fn release(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&s.name).await? else {
        return Ok(false);
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
        return Ok(false);
    }
    spec.holder_identity = None;
    spec.renew_time = Some(micro_now());
    lease.spec = Some(spec);
    match api.replace(&s.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        // Someone else wrote it meanwhile: it is no longer ours to give.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs the election loop until `stop`, publishing leadership on `leader`;
/// on `stop`, gives the lease up.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let period = settings.duration / 3;
    loop {
        if stop.is_cancelled() {
            leader.send_replace(false);
            match release(&api, &settings).await {
                Ok(true) => tracing::info!(identity = %settings.identity, "lease: released"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "lease: cannot release; it runs out instead"),
            }
            return;
        }
        let leads = match try_lead(&api, &settings).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "lease: cannot reach the apiserver");
                false
            }
        };
        leader.send_if_modified(|current| {
            if *current != leads {
                tracing::info!(identity = %settings.identity, leads, "lease: leadership changed");
                *current = leads;
                true
            } else {
                false
            }
        });
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        let t = k8s_openapi::jiff::Timestamp::now()
            - k8s_openapi::jiff::SignedDuration::from_secs(renewed_secs_ago);
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t)),
            ..Default::default()
        }
    }

    #[test]
    fn takeover_only_after_expiry() {
        assert!(may_acquire(&spec("me", 1), "me", Utc::now()));
        assert!(!may_acquire(&spec("other", 1), "me", Utc::now()));
        assert!(may_acquire(&spec("other", 20), "me", Utc::now()));
        assert!(may_acquire(&LeaseSpec::default(), "me", Utc::now()));
    }
}
