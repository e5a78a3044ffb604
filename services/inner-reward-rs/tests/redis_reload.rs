//! Hot reload against a real redis-server started by the test on a free port.
//! Fails (does not skip) when /usr/bin/redis-server (or REDIS_SERVER_BIN) is missing.

mod common;

use common::{closed_port, feedback, TestServer};
use inner_reward_rs::exploration::stable_hash;
use inner_reward_rs::pb::inner_reward_client::InnerRewardClient;
use inner_reward_rs::pb::{GetConfigRequest, GetConfigResponse, Reward, ScoreActionRequest};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

struct Redis {
    child: Child,
    url: String,
    port: u16,
}

impl Redis {
    fn binary() -> PathBuf {
        let bin = std::env::var_os("REDIS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"));
        assert!(
            bin.exists(),
            "redis-server not found at {} (install it, e.g. `apt-get install redis-server`, or set REDIS_SERVER_BIN)",
            bin.display()
        );
        bin
    }

    async fn start_on(port: u16) -> Self {
        let child = Command::new(Self::binary())
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        let url = format!("redis://127.0.0.1:{port}/0");
        let redis = Self { child, url, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = redis.conn_once().await {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return redis;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn conn_once(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection()
            .await
    }

    /// Writes a document and announces it, as `rewardloop_common.weights_store` does.
    async fn write(&self, segment: &str, version: u64, click: f64, publish: bool) {
        let mut c = self.conn_once().await.expect("redis conn");
        let doc = serde_json::json!({
            "version": version, "segment": segment,
            "weights": {"click": click, "dwell": 0.5, "skip": -0.3, "relevance": 0.8},
            "updated_at_ms": 1_763_888_400_000_i64, "source": "test", "reason": "test"
        });
        let _: () = redis::cmd("SET")
            .arg(format!("rewardloop:weights:{segment}"))
            .arg(doc.to_string())
            .query_async(&mut c)
            .await
            .expect("SET");
        if publish {
            let msg = serde_json::json!({"segment": segment, "version": version});
            let _: i64 = redis::cmd("PUBLISH")
                .arg("rewardloop:weights-updates")
                .arg(msg.to_string())
                .query_async(&mut c)
                .await
                .expect("PUBLISH");
        }
    }

    /// Writes (Some) or deletes (None) an exploration document, then publishes `message` on the
    /// updates channel (when given).
    async fn exploration(
        &self,
        segment: &str,
        doc: Option<serde_json::Value>,
        message: Option<&str>,
    ) {
        let mut c = self.conn_once().await.expect("redis conn");
        let key = format!("rewardloop:exploration:{segment}");
        match doc {
            Some(d) => {
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg(d.to_string())
                    .query_async(&mut c)
                    .await
                    .expect("SET");
            }
            None => {
                let _: i64 = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .expect("DEL");
            }
        }
        if let Some(m) = message {
            let _: i64 = redis::cmd("PUBLISH")
                .arg("rewardloop:weights-updates")
                .arg(m)
                .query_async(&mut c)
                .await
                .expect("PUBLISH");
        }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn config(client: &mut InnerRewardClient<Channel>, segment: &str) -> GetConfigResponse {
    client
        .get_config(GetConfigRequest {
            segment: segment.into(),
        })
        .await
        .expect("get_config")
        .into_inner()
}

/// Polls GetConfig until `pred` holds (or panics after `within`).
async fn wait_for(
    client: &mut InnerRewardClient<Channel>,
    segment: &str,
    within: Duration,
    pred: impl Fn(&GetConfigResponse) -> bool,
) -> GetConfigResponse {
    let deadline = Instant::now() + within;
    loop {
        let c = config(client, segment).await;
        if pred(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met in {within:?}; last {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_at_start_and_hot_reloads_via_pubsub() {
    let redis = Redis::start_on(closed_port()).await;
    redis.write("default", 7, 2.0, false).await;

    // Poll every 60 s: anything faster than that below comes from the initial SCAN or pub/sub.
    let srv = TestServer::start(&redis.url, &["--weights-poll-seconds", "60"]).await;
    let mut client = srv.client().await;

    let c = wait_for(&mut client, "", Duration::from_secs(5), |c| c.version == 7).await;
    assert_eq!(c.source, "test");
    assert_eq!(c.weights.expect("weights").click, 2.0);
    let r = client
        .score_action(ScoreActionRequest {
            feedback: Some(feedback("e-1")),
        })
        .await
        .expect("score")
        .into_inner()
        .reward
        .expect("reward");
    assert_eq!(r.weights_version, 7);
    assert_eq!(r.parts.expect("parts").click, 2.0);

    // Give the subscriber time to subscribe (it also does a full reload when it does).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A newer document, announced: swapped in.
    redis.write("default", 8, 3.0, true).await;
    let c = wait_for(&mut client, "default", Duration::from_secs(5), |c| {
        c.version == 8
    })
    .await;
    assert_eq!(c.weights.expect("weights").click, 3.0);
    assert_eq!(
        srv.metric("rewardloop_inner_weights_version{segment=\"default\"}")
            .await,
        8.0
    );

    // An invalid document (click out of bounds): refused, last good kept, error counted.
    redis.write("default", 9, 99.0, true).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv
        .metric("rewardloop_inner_weights_reload_errors_total")
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "invalid document not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = config(&mut client, "default").await;
    assert_eq!(c.version, 8);
    assert_eq!(c.weights.expect("weights").click, 3.0);

    // A new segment appears; its feedback uses its weights, others keep falling back.
    redis.write("vip", 10, 4.0, true).await;
    let c = wait_for(&mut client, "vip", Duration::from_secs(5), |c| {
        c.segment == "vip"
    })
    .await;
    assert_eq!(c.version, 10);
    let mut f = feedback("e-vip");
    f.segment = "vip".into();
    let r = client
        .score_action(ScoreActionRequest { feedback: Some(f) })
        .await
        .expect("score vip")
        .into_inner()
        .reward
        .expect("reward");
    assert_eq!((r.segment.as_str(), r.weights_version), ("vip", 10));
    assert_eq!(config(&mut client, "other").await.segment, "default");

    srv.stop().await;
    redis.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_on_defaults_while_redis_is_down_and_catches_up() {
    let port = closed_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let srv = TestServer::start(&url, &["--weights-poll-seconds", "1"]).await;
    let mut client = srv.client().await;
    let c = config(&mut client, "").await;
    assert_eq!((c.version, c.source.as_str()), (0, "builtin-default"));

    // Redis comes up later with a document; no announcement: the poll or re-subscribe finds it.
    let redis = Redis::start_on(port).await;
    assert_eq!(redis.port, port);
    redis.write("default", 5, 1.5, false).await;
    let c = wait_for(&mut client, "", Duration::from_secs(10), |c| c.version == 5).await;
    assert_eq!(c.weights.expect("weights").click, 1.5);

    // Redis goes away again: the last good weights stay in use.
    redis.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(config(&mut client, "").await.version, 5);

    srv.stop().await;
}

fn exploration_doc(version: u64, slice: f64) -> serde_json::Value {
    serde_json::json!({
        "version": version, "slice": slice,
        "actions": [
            {"id": 10, "weights": {"click": 4.0, "dwell": 0.5, "skip": -0.3, "relevance": 0.8}},
            {"id": 11, "weights": {"click": 0.5, "dwell": 0.5, "skip": -0.3, "relevance": 0.8}}
        ],
        "updated_at_ms": 1_763_888_400_000_i64, "source": "test"
    })
}

async fn score_user(client: &mut InnerRewardClient<Channel>, user: &str) -> Reward {
    let mut f = feedback(&format!("e-{user}"));
    f.user_id = user.into();
    client
        .score_action(ScoreActionRequest { feedback: Some(f) })
        .await
        .expect("score")
        .into_inner()
        .reward
        .expect("reward")
}

async fn wait_metric(srv: &TestServer, line: &str, pred: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = srv.metric(line).await;
        if pred(v) {
            return;
        }
        assert!(Instant::now() < deadline, "{line} stuck at {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exploration_slice_is_loaded_applied_sticky_and_hot_reloaded() {
    let redis = Redis::start_on(closed_port()).await;
    redis.write("default", 7, 2.0, false).await;
    redis
        .exploration("default", Some(exploration_doc(3, 0.2)), None)
        .await;
    let srv = TestServer::start(&redis.url, &["--weights-poll-seconds", "60"]).await;
    let mut client = srv.client().await;
    wait_for(&mut client, "", Duration::from_secs(5), |c| c.version == 7).await;
    let version_line = "rewardloop_inner_exploration_version{segment=\"default\"}";
    wait_metric(&srv, version_line, |v| v == 3.0).await;

    // Every user: the documented assignment, the action's weights, the behaviour probability.
    let mut explored = 0;
    for i in 0..300 {
        let user = format!("u-{i}");
        let r = score_user(&mut client, &user).await;
        let in_slice = (stable_hash(format!("3:{user}").as_bytes()) as f64) / 2f64.powi(64) < 0.2;
        assert_eq!(r.exploration_version, Some(3), "{user}");
        let click = r.parts.expect("parts").click;
        if in_slice {
            explored += 1;
            let h2 = stable_hash(format!("3:{user}:action").as_bytes());
            let (id, w) = [(10, 4.0), (11, 0.5)][(h2 % 2) as usize];
            assert_eq!(r.explore_action, Some(id), "{user}");
            assert_eq!(click, w, "{user} scored with action {id}'s weights");
            assert!((r.explore_probability.expect("p") - 0.1).abs() < 1e-12);
        } else {
            assert_eq!(r.explore_action, None, "{user}");
            assert_eq!(click, 2.0, "{user} scored with the segment's weights");
            assert!((r.explore_probability.expect("p") - 0.8).abs() < 1e-12);
        }
        // Sticky: the same user gets the same answer again.
        assert_eq!(
            score_user(&mut client, &user).await.explore_action,
            r.explore_action
        );
    }
    assert!(
        (30..=95).contains(&explored),
        "about 20 % of 300 explored: {explored}"
    );
    wait_metric(
        &srv,
        "rewardloop_inner_explored_total{segment=\"default\"}",
        |v| v == f64::from(2 * explored),
    )
    .await;

    // Give the subscriber time to subscribe, then: an invalid document (slice 0.5) announced
    // by a bare segment name is refused; the previous one stays.
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis
        .exploration("default", Some(exploration_doc(4, 0.5)), Some("default"))
        .await;
    wait_metric(&srv, "rewardloop_inner_weights_reload_errors_total", |v| {
        v >= 1.0
    })
    .await;
    assert_eq!(
        score_user(&mut client, "u-1").await.exploration_version,
        Some(3)
    );

    // Slice 0 (version 5, announced as JSON): no exploration, fields unset.
    redis
        .exploration(
            "default",
            Some(exploration_doc(5, 0.0)),
            Some(r#"{"segment": "default", "version": 5}"#),
        )
        .await;
    wait_metric(&srv, version_line, |v| v == 5.0).await;
    let r = score_user(&mut client, "u-1").await;
    assert_eq!(
        (
            r.explore_action,
            r.explore_probability,
            r.exploration_version
        ),
        (None, None, None)
    );
    assert_eq!(r.parts.expect("parts").click, 2.0);

    // Version 6 explores again; then the key is deleted: exploration off.
    redis
        .exploration("default", Some(exploration_doc(6, 0.2)), Some("default"))
        .await;
    wait_metric(&srv, version_line, |v| v == 6.0).await;
    assert_eq!(
        score_user(&mut client, "u-1").await.exploration_version,
        Some(6)
    );
    redis.exploration("default", None, Some("default")).await;
    wait_metric(&srv, version_line, |v| v == 0.0).await;
    assert_eq!(
        score_user(&mut client, "u-1").await.exploration_version,
        None
    );

    srv.stop().await;
    redis.stop().await;
}
