//! Hot reload against a real redis-server started by the test on a free port.
//! Fails (does not skip) when /usr/bin/redis-server (or REDIS_SERVER_BIN) is missing.

mod common;

use common::{closed_port, feedback, TestServer};
use inner_reward_rs::pb::inner_reward_client::InnerRewardClient;
use inner_reward_rs::pb::{GetConfigRequest, GetConfigResponse, ScoreActionRequest};
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
