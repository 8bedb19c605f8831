//! How long an admission review takes: 1,000 reviews of a TelephonyHook
//! create, alternately refused (a second active hook) and allowed (a
//! standby), against orgs of 10, 100 and 1,000 objects built by the real
//! index. Two measures: the decision alone (checking the candidate on its
//! own and the cross-object rules over the org, twice: before and after),
//! and the whole round trip over HTTPS (TLS kept alive, JSON both ways),
//! one review at a time. Prints p50, p99 and max, and writes them to
//! bench-results/admission.txt.
//!
//! Run: `cargo bench --bench admission` (optionally `-- REVIEWS`, default
//! 1000).

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use idplane::controller::webhook::review::{Live, Operation, Request, Review};
use idplane::controller::webhook::server::PATH;
use idplane::index::{Change, IndexWriter, Snapshot};
use idplane::validate::{Options, SecretData};
use serde_json::{Value, json};
use support::admission::{cert_dir, client_trusting, server_without_cluster};

const NS: &str = "acme";

fn hook(name: &str, active: bool, created: &str) -> Value {
    json!({
        "apiVersion": "idplane.dev/v1alpha1", "kind": "TelephonyHook",
        "metadata": {"name": name, "namespace": NS, "creationTimestamp": created, "generation": 1},
        "spec": {"url": format!("https://sms.example.com/{name}"), "active": active,
                 "auth": {"header": "X-Key", "secretRef": {"name": "sms", "key": "token"}}},
    })
}

/// An org of `objects` objects as the index publishes it: an active hook
/// and a standby, an EmailProvider, a default policy, and policies of
/// distinct priorities for the rest.
fn org(objects: usize) -> Snapshot {
    let created = "2025-01-01T00:00:00Z";
    let mut writer = IndexWriter::new(Options {
        default_namespace: NS.into(),
        ..Options::default()
    });
    for (name, keys) in [("sms", "token"), ("smtp", "password")] {
        writer.apply(Change::Secret {
            namespace: NS.into(),
            name: name.into(),
            data: Some(SecretData {
                keys: BTreeMap::from([(keys.to_string(), b"value".to_vec())]),
                version: "1".into(),
            }),
        });
    }
    writer.apply(Change::Upsert(hook("primary", true, created)));
    writer.apply(Change::Upsert(hook("standby", false, created)));
    writer.apply(Change::Upsert(json!({
        "apiVersion": "idplane.dev/v1alpha1", "kind": "EmailProvider",
        "metadata": {"name": "corp", "namespace": NS, "creationTimestamp": created, "generation": 1},
        "spec": {"host": "smtp.example.com", "port": 587, "username": "u",
                 "passwordSecretRef": {"name": "smtp", "key": "password"}},
    })));
    for i in 0..objects.saturating_sub(3) {
        let default = i == 0;
        writer.apply(Change::Upsert(json!({
            "apiVersion": "idplane.dev/v1alpha1", "kind": "EnrollmentPolicy",
            "metadata": {"name": format!("policy-{i}"), "namespace": NS, "creationTimestamp": created, "generation": 1},
            "spec": {"priority": i + 1, "default": default,
                     "groups": if default { json!([]) } else { json!([format!("group-{i}")]) }},
        })));
    }
    writer.apply(Change::Synced);
    let snapshot = writer.publish();
    assert_eq!(snapshot.objects.len(), objects.max(3));
    snapshot
}

/// The two candidates: refused, then allowed.
fn candidates() -> [Value; 2] {
    let now = "2025-06-01T00:00:00Z";
    [hook("second", true, now), hook("spare", false, now)]
}

/// Each decision's time: in all, and the part spent checking the
/// candidate on its own (schema, CEL, typed decode).
fn decisions(snapshot: &Snapshot, reviews: usize) -> (Vec<Duration>, Vec<Duration>) {
    let candidates = candidates();
    let none = BTreeMap::new();
    let org = snapshot.sources.get(NS).map(|o| o.as_ref());
    (0..reviews)
        .map(|i| {
            let candidate = &candidates[i % 2];
            let started = Instant::now();
            let review = Review::new(Request {
                operation: Operation::Create,
                kind: "TelephonyHook",
                namespace: NS,
                subresource: None,
                object: Some(candidate),
                old_object: None,
            });
            let own = started.elapsed();
            let _ = review.unseen_secrets(org);
            let decision = review.decide(&Live {
                synced: true,
                watched: true,
                org,
                looked_up: &none,
            });
            let took = started.elapsed();
            assert_eq!(decision.allowed(), i % 2 == 1);
            (took, own)
        })
        .unzip()
}

fn round_trips(snapshot: Snapshot, reviews: usize) -> Vec<Duration> {
    let tmp = tempfile::tempdir().unwrap();
    let certs = cert_dir(tmp.path(), "certs");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (port, _keep, _) = server_without_cluster(&certs.dir, snapshot).await;
        let client = client_trusting(&certs.ca);
        let url = format!("https://127.0.0.1:{port}{PATH}?timeout=5s");
        let bodies: Vec<Vec<u8>> = candidates()
            .into_iter()
            .map(|object| {
                serde_json::to_vec(&json!({
                    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "request": {
                        "uid": "7d5e2c1a-0000-4000-8000-000000000001",
                        "kind": {"group": "idplane.dev", "version": "v1alpha1", "kind": "TelephonyHook"},
                        "resource": {"group": "idplane.dev", "version": "v1alpha1", "resource": "telephonyhooks"},
                        "name": object["metadata"]["name"], "namespace": NS, "operation": "CREATE",
                        "userInfo": {"username": "admin"}, "object": object, "oldObject": null, "dryRun": false,
                    }
                }))
                .unwrap()
            })
            .collect();
        let mut out = Vec::with_capacity(reviews);
        for i in 0..reviews + 20 {
            let started = Instant::now();
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(bodies[i % 2].clone())
                .send()
                .await
                .unwrap();
            let answer: Value = response.json().await.unwrap();
            let took = started.elapsed();
            assert_eq!(answer["response"]["allowed"], json!(i % 2 == 1));
            // The first ones pay for the handshake and warm-up.
            if i >= 20 {
                out.push(took);
            }
        }
        out
    })
}

fn line(what: &str, mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    format!(
        "{what}: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs ({} reviews)",
        us(at(0.50)),
        us(at(0.99)),
        us(*times.last().unwrap()),
        times.len()
    )
}

fn main() {
    let reviews: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000)
        .clamp(10, 1_000_000);
    let mut out = String::new();
    let _ = writeln!(out, "admission review benchmark (benches/admission.rs)");
    let _ = writeln!(out, "date: {}", chrono::Utc::now().to_rfc3339());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(out, "machine: nproc {nproc}");
    for objects in [10, 100, 1000] {
        let snapshot = org(objects);
        let (all, own) = decisions(&snapshot, reviews);
        let _ = writeln!(
            out,
            "{}",
            line(&format!("decision, org of {objects} objects"), all)
        );
        let _ = writeln!(
            out,
            "{}",
            line(
                "  of which the candidate on its own (schema, CEL, decode)",
                own
            )
        );
        let _ = writeln!(
            out,
            "{}",
            line(
                &format!("HTTPS round trip, org of {objects} objects"),
                round_trips(snapshot, reviews)
            )
        );
    }
    support::write_results("admission.txt", out);
}
