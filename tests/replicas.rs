//! Two replicas, one state (issue 17): two `idplane run` processes on one
//! PostgreSQL database serve every call. An OTP sent through one is
//! verified through the other, at most once even when both get the same
//! verify at once; wrong attempts and the abuse guard's limits count on
//! both; the hook's metrics in status are the sum of both. Mail accepted
//! through both is delivered once (a SIGKILLed replica's claims are taken
//! over after their lease, duplicates no more than its attempts cut short),
//! and a PostgreSQL restart mid-burst loses no accepted message and needs
//! no restart of idplane.
//!
//! Needs the real PostgreSQL that `scripts/test.sh` starts
//! (`IDPLANE_TEST_DATABASE_URL`); the restart test starts a server of its own.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::postgres::{OwnServer, fresh_database, fresh_database_on};
use support::{ALLOW_LOOPBACK, Idplane, wait_for};

/// `idplane run` on `manifests` with the database at `url`; ready.
fn replica(dir: &Path, manifests: &Path, url: &str, log: &str, extra: &[&str]) -> Idplane {
    let mut flags = ALLOW_LOOPBACK.to_vec();
    flags.extend(support::postgres::OTP_HASH_KEY);
    flags.extend_from_slice(extra);
    Idplane::run_manifests(
        manifests,
        Path::new(url),
        &dir.join("tokens.yaml"),
        &flags,
        &[("RUST_LOG", "idplane=info")],
        &dir.join(log),
    )
}

mod otp {
    use super::*;
    use support::telephony::*;

    #[test]
    fn an_otp_sent_on_one_replica_is_verified_once_on_either() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let ws = Workspace::new();
        let hook = HookServer::start(&rt, successful("sms"));
        ws.write_org("acme", &[HookSpec::active("primary", hook.url())]);
        let url = fresh_database();
        let limits = ["--otp-phone-limit", "2", "--otp-phone-window", "1m"];
        let a = replica(ws.path(), &ws.manifests(), &url, "a.log", &limits);
        let b = replica(ws.path(), &ws.manifests(), &url, "b.log", &limits);
        wait_configured(&a, "acme");
        wait_configured(&b, "acme");
        let mut sends = (0u64, 0u64);

        // Sent on A, verified on B; reused on A.
        let (tx, code) = sent(&a, &hook, "acme", "+14155550001");
        sends.0 += 1;
        let (status, answer) = verify(&b, "acme", &tx, &code);
        assert_eq!(
            (status, answer["result"].as_str()),
            (200, Some("verified")),
            "{answer}"
        );
        let (_, answer) = verify(&a, "acme", &tx, &code);
        assert_eq!(answer["reason"], "already_used", "{answer}");

        // The same right code on both at the same moment: one `verified`.
        for i in 0..10 {
            let phone = format!("+1415555010{i}");
            let (tx, code) = if i % 2 == 0 {
                sends.0 += 1;
                sent(&a, &hook, "acme", &phone)
            } else {
                sends.1 += 1;
                sent(&b, &hook, "acme", &phone)
            };
            let barrier = Arc::new(Barrier::new(2));
            let results: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = [&a, &b]
                    .into_iter()
                    .map(|run| {
                        let (barrier, tx, code) = (barrier.clone(), &tx, &code);
                        s.spawn(move || {
                            barrier.wait();
                            let (status, answer) = verify(run, "acme", tx, code);
                            assert_eq!(status, 200, "{answer}");
                            answer["result"].as_str().unwrap().to_string()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let verified = results.iter().filter(|r| *r == "verified").count();
            assert_eq!(verified, 1, "exactly one verified: {results:?}");
        }

        // Wrong codes alternating between the replicas lock the passcode
        // after five attempts in all.
        let (tx, code) = sent(&b, &hook, "acme", "+14155550200");
        sends.1 += 1;
        let results: Vec<String> = (0..5)
            .map(|i| {
                let run = if i % 2 == 0 { &a } else { &b };
                verify(run, "acme", &tx, &wrong(&code)).1["result"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            results,
            ["invalid", "invalid", "invalid", "invalid", "locked"]
        );
        assert_eq!(verify(&a, "acme", &tx, &code).1["result"], "locked");

        // The per-phone limit (2 a minute) holds for both together.
        let phone = "+14155550300";
        assert_eq!(send(&a, "acme", phone).0, 200);
        assert_eq!(send(&b, "acme", phone).0, 200);
        sends = (sends.0 + 1, sends.1 + 1);
        for run in [&a, &b] {
            let (status, body) = send(run, "acme", phone);
            assert_eq!(
                (status, body["code"].as_str()),
                (429, Some("phone_rate_limited")),
                "{body}"
            );
        }

        // The hook's executions in status: the sum of both replicas, on both.
        assert!(sends.0 > 0 && sends.1 > 0);
        let total = sends.0 + sends.1;
        for run in [&a, &b] {
            wait_for(
                &format!("executions = {total} in status"),
                Duration::from_secs(30),
                || {
                    let m = hook_status(run, "acme", "primary")?["metrics"].clone();
                    (m["executions"] == total).then_some(())
                },
            );
        }
    }
}

mod email {
    use super::*;
    use support::email::*;

    /// Both replicas deliver to `sink` as the installation's default provider.
    fn flags(port: &str) -> Vec<&str> {
        let mut flags = default_provider(port).to_vec();
        flags.extend([
            "--email-default-sender",
            "Idplane <noreply@idplane.example>",
            "--email-lease",
            "3s",
            "--email-concurrency",
            "4",
        ]);
        flags
    }

    /// Message ids at the server, each as often as it arrived.
    fn received(sink: &SmtpSink) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for m in sink.message_ids() {
            let id = m
                .trim_matches(['<', '>'])
                .split('@')
                .next()
                .unwrap()
                .to_string();
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    /// What a burst saw: the ids answered 202, and how many sends were
    /// answered 503 `store_unavailable` (each then sent again).
    struct Burst {
        ids: Vec<String>,
        store_unavailable: usize,
    }

    /// Sends message `i` for every `i` that `more` admits, in order, from
    /// `clients` threads, spread over the
    /// replicas that are up; refusals (503 `store_unavailable`, a replica
    /// down) are sent again. `on_accepted` hears the count of 202s so far.
    fn burst(
        replicas: &Mutex<Vec<Option<String>>>,
        more: impl Fn(usize) -> bool + Sync,
        clients: usize,
        on_accepted: impl Fn(usize) + Sync,
    ) -> Burst {
        let accepted = Mutex::new(Vec::new());
        let unavailable = std::sync::atomic::AtomicUsize::new(0);
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..clients {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if !more(i) {
                            break;
                        }
                        let deadline = Instant::now() + Duration::from_secs(60);
                        loop {
                            let urls: Vec<String> =
                                replicas.lock().unwrap().iter().flatten().cloned().collect();
                            let url = &urls[i % urls.len()];
                            let body = json!({"to": ["user@example.com"], "subject": format!("m{i}"), "text": "hello"});
                            let (code, answer) = support::http_json(
                                "POST",
                                &format!("{url}/v1/orgs/acme/emails"),
                                Some(TOKEN),
                                Some(&body),
                            );
                            if code == 202 {
                                let mut ids = accepted.lock().unwrap();
                                ids.push(answer["id"].as_str().unwrap().to_string());
                                on_accepted(ids.len());
                                break;
                            }
                            assert!(
                                (code == 503 && answer["code"] == "store_unavailable") || code == 0,
                                "only store_unavailable or a replica down may refuse: {code} {answer}"
                            );
                            if code == 503 {
                                unavailable.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            assert!(Instant::now() < deadline, "not accepted within 60 s: {code} {answer}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                });
            }
        });
        Burst {
            ids: accepted.into_inner().unwrap(),
            store_unavailable: unavailable.into_inner(),
        }
    }

    fn base(run: &Idplane) -> String {
        run.url("")
    }

    /// Every accepted id reached the server; the duplicates, if any.
    fn wait_all_delivered(sink: &SmtpSink, ids: &[String]) -> usize {
        wait_for(
            &format!("{} messages at the server", ids.len()),
            Duration::from_secs(300),
            || {
                let got = received(sink);
                ids.iter().all(|id| got.contains_key(id)).then_some(())
            },
        );
        let got = received(sink);
        got.values().map(|n| n - 1).sum()
    }

    #[test]
    fn five_thousand_emails_through_two_replicas_one_sigkilled_halfway() {
        let (tmp, manifests) = workspace();
        let sink = SmtpSink::start(tmp.path());
        let port = sink.port.to_string();
        let url = fresh_database();
        let a = replica(tmp.path(), &manifests, &url, "a.log", &flags(&port));
        let mut b = replica(tmp.path(), &manifests, &url, "b.log", &flags(&port));
        let replicas = Mutex::new(vec![Some(base(&a)), Some(base(&b))]);
        const TOTAL: usize = 5000;
        let killed = std::sync::atomic::AtomicBool::new(false);
        let b_pid = b.child.id().to_string();
        let ids = burst(
            &replicas,
            |i| i < TOTAL,
            8,
            |accepted| {
                if accepted >= TOTAL / 2 && !killed.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    replicas.lock().unwrap()[1] = None;
                    let kill = std::process::Command::new("kill")
                        .args(["-KILL", &b_pid])
                        .status();
                    assert!(kill.unwrap().success(), "SIGKILL replica B");
                }
            },
        )
        .ids;
        b.child.wait().unwrap();
        assert_eq!(ids.len(), TOTAL);
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), TOTAL, "every accept is a new message");
        // B again, on the same database: it takes part once more.
        let b = replica(tmp.path(), &manifests, &url, "b2.log", &flags(&port));
        let duplicates = wait_all_delivered(&sink, &ids);
        eprintln!("{TOTAL} accepted, all delivered; {duplicates} delivered twice");
        // Duplicates come only from attempts the kill cut short, which show
        // as interrupted attempts: no more than B had in flight.
        if duplicates > 0 {
            let got = received(&sink);
            let interrupted = ids
                .iter()
                .filter(|id| got[*id] > 1)
                .filter(|id| {
                    email(&a, "acme", id)["attempts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|at| at["outcome"] == "interrupted")
                })
                .count();
            assert_eq!(
                interrupted,
                ids.iter().filter(|id| got[*id] > 1).count(),
                "every duplicate is a message whose attempt the kill cut short"
            );
            assert!(
                duplicates <= 4 * 16,
                "{duplicates} duplicates: more than B had in flight"
            );
        }
        // Either replica shows any message and its events.
        let id = &ids[TOTAL - 1];
        assert_eq!(
            wait_final(&a, "acme", id, Duration::from_secs(30))["state"],
            "sent"
        );
        assert_eq!(
            wait_final(&b, "acme", id, Duration::from_secs(30))["state"],
            "sent"
        );
    }

    #[test]
    fn a_postgres_restart_mid_burst_loses_no_accepted_message() {
        let server = OwnServer::start();
        let url = fresh_database_on(&server.url);
        let (tmp, manifests) = workspace();
        let sink = SmtpSink::start(tmp.path());
        let port = sink.port.to_string();
        let a = replica(tmp.path(), &manifests, &url, "a.log", &flags(&port));
        let b = replica(tmp.path(), &manifests, &url, "b.log", &flags(&port));
        let replicas = Mutex::new(vec![Some(base(&a)), Some(base(&b))]);
        // Sending goes on while PostgreSQL stops, stays down 3 s and starts
        // again (in the background): the clients meet 503
        // store_unavailable and send again; idplane is not restarted.
        let restarted = std::sync::atomic::AtomicBool::new(false);
        let seen = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(500));
                server.restart("fast", 3);
                restarted.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            // 300 messages at least, and on until 200 after the restart.
            let after = std::sync::atomic::AtomicUsize::new(usize::MAX);
            burst(
                &replicas,
                |i| {
                    if restarted.load(std::sync::atomic::Ordering::SeqCst) {
                        let first = after
                            .fetch_min(i, std::sync::atomic::Ordering::SeqCst)
                            .min(i);
                        i < 300 || i < first + 200
                    } else {
                        true
                    }
                },
                8,
                |_| {},
            )
        });
        assert!(
            seen.store_unavailable > 0,
            "the outage was seen as 503 store_unavailable"
        );
        let ids = seen.ids;
        assert!(ids.len() >= 300, "{} accepted", ids.len());
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "every accept is a new message");
        wait_all_delivered(&sink, &ids);
        for run in [&a, &b] {
            let (code, _) = support::http_get(&run.url("/readyz"), None);
            assert_eq!(code, 200, "still ready, never restarted");
        }
        let log = std::fs::read_to_string(tmp.path().join("a.log")).unwrap()
            + &std::fs::read_to_string(tmp.path().join("b.log")).unwrap();
        let password = server
            .url
            .split(':')
            .nth(2)
            .unwrap()
            .split('@')
            .next()
            .unwrap();
        assert!(
            !log.contains(password),
            "the database password is never logged"
        );
    }
}
