//! A real Kafka broker (KRaft, the jars of the native stack) is SIGKILLed and restarted while the
//! scorer is under load, and the scorer itself is shut down while the broker is down; afterwards
//! every event_id the scorer accepted (OK answer) must be in the topic, with each user's events
//! in order of first appearance.
//!
//! Needs `java` and the Kafka jars (`deploy/local/install.sh` puts them in
//! `.run/kafka/<version>/libs`; or set `KAFKA_LIBS_DIR`). Without them the test prints why and
//! passes, unless `REWARDLOOP_REQUIRE_KAFKA=1` (CI with the stack installed) makes it fail.

mod common;

use common::{feedback, TestServer};
use inner_reward_rs::pb::ScoreActionRequest;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "recsys.reward.raw";
const CLUSTER_ID: &str = "cmV3YXJkbG9vcC10ZXN0MQ"; // 16 bytes, base64url

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kafka_libs() -> Option<PathBuf> {
    let has_jar = |d: &Path| {
        std::fs::read_dir(d).ok().is_some_and(|mut it| {
            it.any(|e| {
                e.ok().is_some_and(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("kafka_2.13-") && n.ends_with(".jar")
                })
            })
        })
    };
    if let Ok(d) = std::env::var("KAFKA_LIBS_DIR") {
        return Some(PathBuf::from(d)).filter(|d| has_jar(d));
    }
    let base = repo_root().join(".run/kafka");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(base)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("libs")))
        .filter(|d| has_jar(d))
        .collect();
    dirs.sort();
    dirs.pop()
}

struct Broker {
    libs: PathBuf,
    props: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn java(&self, heap: &str) -> Command {
        let mut c = Command::new("java");
        c.arg(heap)
            .arg("-XX:+UseG1GC")
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                repo_root()
                    .join("deploy/local/kafka/log4j2.properties")
                    .display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()));
        c
    }

    /// Renders the native stack's server.properties template into `dir` and formats storage.
    fn create(libs: PathBuf, dir: &Path) -> Self {
        let port = common::closed_port();
        let mut controller = common::closed_port();
        while controller == port {
            controller = common::closed_port();
        }
        let template = std::fs::read_to_string(
            repo_root().join("deploy/local/kafka/server.properties.template"),
        )
        .expect("server.properties.template");
        let props = dir.join("server.properties");
        std::fs::write(
            &props,
            template
                .replace("${RUN_DIR}", &dir.display().to_string())
                .replace("${KAFKA_PORT}", &port.to_string())
                .replace("${KAFKA_CONTROLLER_PORT}", &controller.to_string()),
        )
        .expect("write props");
        let b = Self {
            libs,
            props,
            log: dir.join("kafka.log"),
            port,
            child: None,
        };
        let st = b
            .java("-Xmx256m")
            .args(["kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c"])
            .arg(&b.props)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run StorageTool");
        assert!(st.success(), "formatting kafka storage failed");
        b
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("kafka log");
        let child = self
            .java("-Xmx512m")
            .arg("kafka.Kafka")
            .arg(&self.props)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start kafka");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "kafka did not listen within 90s; see {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn create_topic(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(TOPIC, 3, TopicReplication::Fixed(1));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let res = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await;
        match res {
            Ok(r) if r.iter().all(|t| t.is_ok()) => return,
            other => {
                assert!(Instant::now() < deadline, "cannot create topic: {other:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Accepted event ids, in acceptance order per user.
type Accepted = Arc<Mutex<Vec<(String, String)>>>;

/// Fires ScoreAction calls from `workers` tasks until `stop` flips; records accepted ids.
fn load(
    srv: &TestServer,
    tag: &'static str,
    accepted: Accepted,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..4)
        .map(|w| {
            let url = format!("http://{}", srv.grpc);
            let accepted = Arc::clone(&accepted);
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut client =
                    inner_reward_rs::pb::inner_reward_client::InnerRewardClient::connect(url)
                        .await
                        .expect("connect");
                let mut refused = 0;
                let mut seq = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seq += 1;
                    let user = format!("u-{tag}-{w}-{}", seq % 5);
                    let id = format!("e-{tag}-{w}-{seq:08}");
                    let mut f = feedback(&id);
                    f.user_id = user.clone();
                    match client
                        .score_action(ScoreActionRequest { feedback: Some(f) })
                        .await
                    {
                        Ok(_) => accepted.lock().expect("lock").push((user, id)),
                        Err(_) => refused += 1,
                    }
                    if seq.is_multiple_of(20) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                refused
            })
        })
        .collect()
}

async fn run_for(
    srv: &TestServer,
    tag: &'static str,
    accepted: &Accepted,
    during: Duration,
    mid: impl FnOnce(),
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = load(srv, tag, Arc::clone(accepted), Arc::clone(&stop));
    tokio::time::sleep(during / 2).await;
    mid();
    tokio::time::sleep(during / 2).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
}

/// Reads the whole topic: event ids per user in partition order.
fn read_topic(bootstrap: &str, want: &HashSet<String>) -> HashMap<String, Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reconcile-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut by_user: HashMap<String, Vec<String>> = HashMap::new();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline && !want.iter().all(|id| seen.contains(id)) {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.expect("consume");
        let v: serde_json::Value =
            serde_json::from_slice(msg.payload().unwrap_or_default()).expect("json record");
        let id = v["event_id"].as_str().unwrap_or_default().to_owned();
        let user = v["user_id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(msg.key(), Some(user.as_bytes()), "key is user_id");
        by_user.entry(user).or_default().push(id.clone());
        seen.insert(id);
    }
    by_user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_accepted_event_survives_broker_kill_and_scorer_restart() {
    let Some(libs) = kafka_libs() else {
        let msg = "kafka jars not found (run deploy/local/install.sh or set KAFKA_LIBS_DIR)";
        assert!(
            std::env::var("REWARDLOOP_REQUIRE_KAFKA").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("SKIPPED: {msg}");
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let spool = tmp.path().join("spool");
    let spool_arg = spool.display().to_string();
    let mut broker = Broker::create(libs, tmp.path());
    broker.start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap).await;
    let accepted: Accepted = Arc::default();
    let redis = format!("redis://127.0.0.1:{}/0", common::closed_port());
    let extra = [
        "--spool-dir",
        spool_arg.as_str(),
        "--kafka-max-in-flight",
        "2000",
    ];

    // 1. broker up, then SIGKILLed mid-load: the scorer keeps answering and spools.
    let srv = TestServer::start_with_kafka(&bootstrap, &redis, &extra).await;
    run_for(&srv, "a", &accepted, Duration::from_secs(3), || ()).await;
    broker.kill();
    run_for(&srv, "b", &accepted, Duration::from_secs(5), || ()).await;
    let spooled = srv.metric("rewardloop_inner_events_spooled_total").await;
    assert!(spooled > 0.0, "events were spooled while kafka was down");
    // 2. the scorer stops while the broker is down: what is not acknowledged stays on disk.
    srv.stop_within(Duration::from_secs(30)).await;
    let left: u64 = std::fs::read_dir(&spool)
        .expect("spool dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(left > 0, "the spool is left for the next start");

    // 3. broker back (same data), a new scorer on the same spool replays it, under new load;
    //    the broker is killed and restarted once more mid-load.
    broker.start();
    let extra_drain = [extra.as_slice(), &["--shutdown-flush-seconds", "60"]].concat();
    let srv = TestServer::start_with_kafka(&bootstrap, &redis, &extra_drain).await;
    run_for(&srv, "c", &accepted, Duration::from_secs(6), || {
        broker.kill()
    })
    .await;
    broker.start();
    run_for(&srv, "d", &accepted, Duration::from_secs(3), || ()).await;
    let replayed = srv.metric("rewardloop_inner_events_replayed_total").await;
    assert!(replayed > 0.0, "the spool was replayed");
    // 4. SIGTERM-equivalent shutdown with the broker up drains queue and spool to Kafka before
    //    the process ends (flush timeout 60 s here).
    let spool_before = srv.metric("rewardloop_inner_spool_records").await;
    eprintln!("at shutdown: {spool_before} records still in the spool");
    srv.stop_within(Duration::from_secs(90)).await;
    let segments = std::fs::read_dir(&spool)
        .expect("spool dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .count();
    assert_eq!(segments, 0, "the spool was drained at shutdown");

    let accepted = accepted.lock().expect("lock").clone();
    let want: HashSet<String> = accepted.iter().map(|(_, id)| id.clone()).collect();
    assert!(want.len() > 1000, "load was generated: {}", want.len());
    let by_user = tokio::task::spawn_blocking({
        let want = want.clone();
        let bootstrap = bootstrap.clone();
        move || read_topic(&bootstrap, &want)
    })
    .await
    .expect("reader");
    let in_topic: HashSet<&String> = by_user.values().flatten().collect();
    let missing: Vec<&String> = want.iter().filter(|id| !in_topic.contains(id)).collect();
    let total: usize = by_user.values().map(Vec::len).sum();
    eprintln!(
        "accepted {} events; topic holds {} records ({} duplicates); missing {}",
        want.len(),
        total,
        total - in_topic.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} accepted events missing from the topic, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // Per user, first appearances follow acceptance order.
    let mut order: HashMap<&str, Vec<&str>> = HashMap::new();
    for (user, id) in &accepted {
        order.entry(user).or_default().push(id);
    }
    for (user, ids) in &by_user {
        let mut firsts = Vec::new();
        let mut seen = HashSet::new();
        for id in ids {
            if seen.insert(id.as_str()) {
                firsts.push(id.as_str());
            }
        }
        let expected: Vec<&str> = order.get(user.as_str()).cloned().unwrap_or_default();
        assert_eq!(firsts, expected, "order of user {user}");
    }
}
