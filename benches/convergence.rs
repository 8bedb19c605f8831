//! How fast `idplane operator`, with its default settings, gives freshly
//! created objects their status, against the floor of the same apiserver
//! in the same run. Needs the test cluster (`eval "$(scripts/test-cluster.sh
//! env)"`, or IDPLANE_TEST_KUBECONFIG).
//!
//! For each size (1,000 and 5,000 mixed objects in 10 namespaces;
//! IDPLANE_BENCH_SIZES=1000,5000) and each repetition (3;
//! IDPLANE_BENCH_REPETITIONS), the floor and the operator alternate which
//! goes first, each on fresh namespaces:
//! - floor: 16 concurrent creates, then 16 concurrent status patches, one
//!   per object (a JSON merge patch of the status idplane's library computes
//!   for it); the sum of the two phases.
//! - operator: a fresh `idplane operator` (release build, default
//!   settings), idle and holding its Lease; the same 16 concurrent creates;
//!   from the first create until the last object shows its final `Ready`
//!   (the one the library computes; `Accepted` for an EmailDomain, whose
//!   `Ready` follows its DNS lookups) for its current generation, with
//!   `status.observedGeneration`, as seen through a watch.
//!
//! The same watch (one per kind, by label) is open during both, so both
//! carry its load. Also read: the operator's status writes and Events per
//! object, its CPU time, and its resident memory idle and after the largest
//! size. Results go to bench-results/convergence.txt.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Config};
use serde_json::{Value, json};

use idplane::controller::conditions::desired_status;
use idplane::index::{Change, IndexWriter};
use idplane::resources::{Kind, ObjectKey, api_resource};
use idplane::validate::SecretData;

mod support;
use support::{Idplane, kubeconfig, kubectl_ok};

/// Namespaces (orgs) of each measurement.
const NAMESPACES: usize = 10;
/// Requests in flight for every client: the benchmark's and the operator's.
const CONCURRENCY: usize = 16;
/// The label that marks one measurement's objects (for the watch).
const LABEL: &str = "idplane.dev/bench";
/// Longest wait for one measurement.
const LIMIT: Duration = Duration::from_secs(900);

async fn client() -> Client {
    let kc = Kubeconfig::read_from(kubeconfig()).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// One measurement's objects: `size` mixed objects in its own namespaces.
struct Set {
    id: String,
    namespaces: Vec<String>,
    size: usize,
}

impl Set {
    /// Object number `i`: a quarter of each kind, spread over the namespaces.
    fn object(&self, i: usize) -> (Kind, String, Value) {
        let kind = Kind::ALL[i % 4];
        let ns = self.namespaces[i % NAMESPACES].clone();
        let spec = match kind {
            Kind::TelephonyHook => {
                json!({"url": format!("https://sms.example.com/{i}"), "active": false,
                       "auth": {"header": "X-Key", "secretRef": {"name": "sms", "key": "token"}}})
            }
            Kind::EnrollmentPolicy => json!({"priority": i + 1, "groups": [format!("g{i}")],
                     "authenticators": [{"key": "okta_email", "enroll": "REQUIRED"}]}),
            Kind::EmailProvider => json!({"host": "smtp.example.com", "port": 587, "username": "u",
                     "passwordSecretRef": {"name": "smtp", "key": "password"}}),
            Kind::EmailDomain => {
                json!({"brand": format!("b{i}"), "domain": "example.com", "userName": "no", "displayName": "N"})
            }
        };
        let body = json!({"apiVersion": "idplane.dev/v1alpha1", "kind": kind.as_str(),
            "metadata": {"name": format!("o{i}"), "namespace": ns, "labels": {LABEL: self.id}},
            "spec": spec});
        (kind, ns, body)
    }

    /// Creates the namespaces and the Secrets the objects reference.
    fn prepare(&self) {
        for ns in &self.namespaces {
            kubectl_ok(&["create", "namespace", ns]);
            for (name, key, value) in [("sms", "token", "t"), ("smtp", "password", "p")] {
                kubectl_ok(&[
                    "create",
                    "secret",
                    "generic",
                    name,
                    "-n",
                    ns,
                    &format!("--from-literal={key}={value}"),
                ]);
            }
        }
    }

    /// The Secrets of [`Set::prepare`], as the index takes them.
    fn secrets(&self) -> Vec<Change> {
        let mut out = Vec::new();
        for ns in &self.namespaces {
            for (name, key, value) in [("sms", "token", "t"), ("smtp", "password", "p")] {
                out.push(Change::Secret {
                    namespace: ns.clone(),
                    name: name.into(),
                    data: Some(SecretData {
                        keys: BTreeMap::from([(key.to_string(), value.as_bytes().to_vec())]),
                        version: "1".into(),
                    }),
                });
            }
        }
        out
    }

    /// Deletes the objects and their Events (namespaces stay: the test
    /// cluster has no namespace controller).
    async fn clean(&self, client: &Client) {
        let labels = ListParams::default().labels(&format!("{LABEL}={}", self.id));
        for ns in &self.namespaces {
            for kind in Kind::ALL {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), ns, &api_resource(kind));
                api.delete_collection(&DeleteParams::default(), &labels)
                    .await
                    .expect("delete objects");
            }
            let events: Api<k8s_openapi::api::events::v1::Event> =
                Api::namespaced(client.clone(), ns);
            events
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await
                .expect("delete events");
        }
    }
}

/// Creates every object of the set, 16 at a time; how long it took and the
/// objects as the apiserver returned them.
async fn create(client: &Client, set: &Set) -> (Duration, Vec<Value>) {
    let start = Instant::now();
    let created = futures::stream::iter(0..set.size)
        .map(|i| {
            let (kind, ns, body) = set.object(i);
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &ns, &api_resource(kind));
            async move {
                let object: DynamicObject = serde_json::from_value(body).unwrap();
                let created = api
                    .create(&PostParams::default(), &object)
                    .await
                    .expect("create");
                let mut value = serde_json::to_value(created).unwrap();
                value["apiVersion"] = json!("idplane.dev/v1alpha1");
                value["kind"] = json!(kind.as_str());
                value
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    (start.elapsed(), created)
}

/// The status idplane writes for each created object, from its own index
/// and conditions (no runtime module fields).
fn expected_statuses(set: &Set, created: &[Value]) -> HashMap<ObjectKey, Value> {
    let mut index = IndexWriter::new(Default::default());
    for change in set.secrets() {
        index.apply(change);
    }
    for object in created {
        index.apply(Change::Upsert(object.clone()));
    }
    index.apply(Change::Synced);
    let snapshot = index.publish();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    snapshot
        .objects
        .iter()
        .map(|(key, view)| (key.clone(), desired_status(key, view, None, None, &now)))
        .collect()
}

/// The floor's second phase: one JSON merge patch of each status, 16 at a
/// time.
async fn patch_statuses(client: &Client, statuses: &HashMap<ObjectKey, Value>) -> Duration {
    let start = Instant::now();
    futures::stream::iter(statuses)
        .map(|(key, status)| {
            let kind = key.owned_kind().unwrap();
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &key.namespace, &api_resource(kind));
            let body = json!({"status": status});
            async move {
                api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(body))
                    .await
                    .expect("status patch");
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    start.elapsed()
}

/// What the watch last saw of an object: its Ready condition when it is
/// for the current generation (and `status.observedGeneration` too), and
/// when that last changed.
#[derive(Clone, Debug)]
struct Seen {
    ready: Option<Value>,
    since: Instant,
}

/// The condition that says an object's status was written for its spec:
/// `Ready`, except for an EmailDomain, whose `Ready` then follows the
/// runtime's DNS lookups (answered at once here, or not at all, depending
/// on the machine's resolver): work of its own that the floor does not do,
/// so its `Accepted` is watched instead.
fn tracked_condition(kind: Kind) -> &'static str {
    match kind {
        Kind::EmailDomain => "Accepted",
        _ => "Ready",
    }
}

/// The tracked condition without its transition time, when the status is
/// for the current generation.
fn current_ready(kind: Kind, object: &Value) -> Option<Value> {
    let generation = object["metadata"]["generation"].as_i64()?;
    let status = &object["status"];
    if status["observedGeneration"].as_i64() != Some(generation) {
        return None;
    }
    let ready = status["conditions"].as_array()?.iter().find(|c| {
        c["type"] == tracked_condition(kind) && c["observedGeneration"].as_i64() == Some(generation)
    })?;
    Some(json!([ready["status"], ready["reason"], ready["message"]]))
}

/// One watch per kind on a measurement's objects (by label), recording what
/// each object last showed.
struct Observer {
    seen: Arc<Mutex<HashMap<ObjectKey, Seen>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Observer {
    /// Starts the watches; returns once each has listed.
    async fn start(client: &Client, set: &Set) -> Observer {
        let seen: Arc<Mutex<HashMap<ObjectKey, Seen>>> = Arc::default();
        let (listed_tx, mut listed_rx) = tokio::sync::mpsc::channel(4);
        let mut tasks = Vec::new();
        for kind in Kind::ALL {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(kind));
            let config = watcher::Config::default().labels(&format!("{LABEL}={}", set.id));
            let seen = seen.clone();
            let listed = listed_tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut stream = watcher(api, config).boxed();
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => {
                            let key = ObjectKey::new(
                                kind,
                                o.metadata.namespace.clone().unwrap_or_default(),
                                o.metadata.name.clone().unwrap_or_default(),
                            );
                            let ready = current_ready(kind, &serde_json::to_value(&o).unwrap());
                            let mut seen = seen.lock().unwrap();
                            let changed = seen.get(&key).is_none_or(|s| s.ready != ready);
                            if changed {
                                let since = Instant::now();
                                seen.insert(key, Seen { ready, since });
                            }
                        }
                        Ok(Event::InitDone) => {
                            let _ = listed.send(()).await;
                        }
                        Ok(_) => {}
                        Err(e) => eprintln!("bench watch: {e}"),
                    }
                }
            }));
        }
        for _ in Kind::ALL {
            listed_rx.recv().await.expect("the watch lists");
        }
        Observer { seen, tasks }
    }

    /// Waits until every object shows its expected Ready; returns when the
    /// last one reached it.
    async fn converged(&self, expected: &HashMap<ObjectKey, Value>) -> Instant {
        let want: HashMap<&ObjectKey, Option<Value>> = expected
            .iter()
            .map(|(k, status)| {
                let object = json!({"metadata": {"generation": status["observedGeneration"]}, "status": status});
                (k, current_ready(k.owned_kind().expect("one of idplane's kinds"), &object))
            })
            .collect();
        let start = Instant::now();
        loop {
            let (done, last) = {
                let seen = self.seen.lock().unwrap();
                let mut last = None;
                let mut done = 0;
                for (key, ready) in &want {
                    if let Some(s) = seen.get(*key).filter(|s| &s.ready == ready) {
                        done += 1;
                        last = last.max(Some(s.since));
                    }
                }
                (done, last)
            };
            if done == want.len() {
                return last.unwrap_or_else(Instant::now);
            }
            assert!(
                start.elapsed() < LIMIT,
                "only {done}/{} converged after {LIMIT:?}",
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One floor measurement.
struct Floor {
    create: Duration,
    patch: Duration,
}

impl Floor {
    fn total(&self) -> Duration {
        self.create + self.patch
    }
}

/// One operator measurement.
struct Converged {
    create: Duration,
    total: Duration,
    writes: f64,
    unchanged: f64,
    events: usize,
    cpu: f64,
    rss_idle_kib: u64,
    rss_kib: u64,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): utime is the 14th
    // field of the line, stime the 15th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

struct Bench {
    rt: tokio::runtime::Runtime,
    client: Client,
    run: String,
    sets: usize,
    tmp: tempfile::TempDir,
}

impl Bench {
    /// A fresh set of namespaces with their Secrets.
    fn set(&mut self, size: usize) -> Set {
        self.sets += 1;
        let id = format!("{}-{}", self.run, self.sets);
        let set = Set {
            namespaces: (0..NAMESPACES).map(|n| format!("{id}-{n}")).collect(),
            id,
            size,
        };
        set.prepare();
        set
    }

    fn floor(&mut self, size: usize) -> Floor {
        let set = self.set(size);
        let client = self.client.clone();
        self.rt.block_on(async {
            let observer = Observer::start(&client, &set).await;
            let (create_time, created) = create(&client, &set).await;
            let statuses = expected_statuses(&set, &created);
            let patch = patch_statuses(&client, &statuses).await;
            observer.converged(&statuses).await;
            drop(observer);
            set.clean(&client).await;
            Floor {
                create: create_time,
                patch,
            }
        })
    }

    fn operator(&mut self, size: usize) -> Converged {
        let set = self.set(size);
        let db = self.tmp.path().join(format!("{}.db", set.id));
        let log = self.tmp.path().join(format!("{}.log", set.id));
        let mut op = Idplane::start(
            &[
                "operator",
                "--namespaces",
                &set.namespaces.join(","),
                "--listen",
                "127.0.0.1:0",
                "--database",
                db.to_str().unwrap(),
                "--lease-namespace",
                &set.namespaces[0],
            ],
            &[("KUBECONFIG", kubeconfig().to_str().unwrap())],
            &log,
        );
        op.wait_ready(Duration::from_secs(60));
        support::wait_for("the operator to lead", Duration::from_secs(60), || {
            (op.metric("idplane_leader") == 1.0).then_some(())
        });
        let pid = op.child.id();
        let rss_idle_kib = rss_kib(pid);
        let cpu_before = cpu_seconds(pid);
        let client = self.client.clone();
        let (create_time, total) = self.rt.block_on(async {
            let observer = Observer::start(&client, &set).await;
            let start = Instant::now();
            let (create_time, created) = create(&client, &set).await;
            let statuses = expected_statuses(&set, &created);
            let last = observer.converged(&statuses).await;
            (create_time, last - start)
        });
        let cpu = cpu_seconds(pid) - cpu_before;
        let rss_kib = rss_kib(pid);
        let writes = op.metric("idplane_status_writes_total{result=\"ok\"}");
        let unchanged = op.metric("idplane_status_writes_total{result=\"unchanged\"}");
        drop(op);
        let events = self.rt.block_on(async {
            let mut n = 0;
            for ns in &set.namespaces {
                let api: Api<k8s_openapi::api::events::v1::Event> =
                    Api::namespaced(client.clone(), ns);
                n += api.list(&ListParams::default()).await.unwrap().items.len();
            }
            set.clean(&client).await;
            n
        });
        Converged {
            create: create_time,
            total,
            writes,
            unchanged,
            events,
            cpu,
            rss_idle_kib,
            rss_kib,
        }
    }
}

/// The middle value (the lower middle of an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(sorted.len() - 1) / 2]
}

fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}–{max:.2}")
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes; the bench needs a cluster
    }
    let root = env!("CARGO_MANIFEST_DIR");
    std::env::set_current_dir(root).unwrap();
    let sizes = env_list("IDPLANE_BENCH_SIZES", "1000,5000");
    let repetitions = env_list("IDPLANE_BENCH_REPETITIONS", "3")
        .first()
        .copied()
        .unwrap_or(3)
        .max(1);
    kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", "crds/"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(client());
    let server = rt
        .block_on(client.apiserver_version())
        .map(|v| v.git_version)
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let mut bench = Bench {
        rt,
        client,
        run: format!("conv{:x}", std::process::id()),
        sets: 0,
        tmp: tempfile::tempdir().unwrap(),
    };

    let mut rows = String::new();
    let mut summary = String::new();
    let mut memory = String::new();
    for &size in &sizes {
        let mut floors = Vec::new();
        let mut operators = Vec::new();
        for rep in 0..repetitions {
            // Alternate which goes first, so that a drift of the machine's
            // load does not favour one.
            let (floor, operator) = if rep % 2 == 0 {
                let f = bench.floor(size);
                (f, bench.operator(size))
            } else {
                let o = bench.operator(size);
                (bench.floor(size), o)
            };
            let ratio = operator.total.as_secs_f64() / floor.total().as_secs_f64();
            let row = format!(
                "{size:>7} {rep:>4} {:>8.2} {:>7.2} {:>6.2} {:>9.2} {:>7.2} {ratio:>6.2} {:>10.2} {:>10.3} {:>6.1}\n",
                floor.total().as_secs_f64(),
                floor.create.as_secs_f64(),
                floor.patch.as_secs_f64(),
                operator.total.as_secs_f64(),
                operator.create.as_secs_f64(),
                operator.writes / size as f64,
                operator.events as f64 / size as f64,
                operator.cpu,
                rep = rep + 1,
            );
            print!("{row}");
            rows.push_str(&row);
            memory = format!(
                "operator RSS idle: {:.1} MB; after converging {size} objects: {:.1} MB ({} unchanged skips)\n",
                operator.rss_idle_kib as f64 / 1024.0,
                operator.rss_kib as f64 / 1024.0,
                operator.unchanged,
            );
            floors.push(floor.total().as_secs_f64());
            operators.push(operator.total.as_secs_f64());
        }
        let ratios: Vec<f64> = operators.iter().zip(&floors).map(|(o, f)| o / f).collect();
        summary.push_str(&format!(
            "{size} objects: ratio of medians {:.2} (aim <= 1.2); per repetition {}; floor {:.2} s ({} s), operator {:.2} s ({} s)\n",
            median(&operators) / median(&floors),
            spread(&ratios),
            median(&floors),
            spread(&floors),
            median(&operators),
            spread(&operators),
        ));
    }

    let report = format!(
        "# idplane convergence benchmark ({date}, {cores} cores, Kubernetes {server} test apiserver)\n\
         command: cargo bench --bench convergence\n\
         objects: a quarter each of TelephonyHook, EnrollmentPolicy, EmailProvider, EmailDomain in {NAMESPACES} namespaces; every client {CONCURRENCY} requests in flight\n\
         floor: creates, then one JSON merge patch of /status per object (the status idplane's library computes)\n\
         operator: idplane operator with its default settings, from the first create until every object shows its final Ready (Accepted for an EmailDomain, whose Ready follows DNS lookups) for its generation (through a watch)\n\
         {repetitions} repetitions, floor and operator alternating first; seconds\n\
         objects  rep    floor  create  patch  operator  create  ratio writes/obj events/obj  cpu s\n\
         {rows}{summary}{memory}",
        date = chrono::Utc::now().format("%Y-%m-%d"),
        cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    std::fs::create_dir_all("bench-results").unwrap();
    std::fs::write("bench-results/convergence.txt", &report).unwrap();
    print!("{report}");
}
