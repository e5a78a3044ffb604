//! Shared helpers for the in-process server tests.
#![allow(dead_code)]

use clap::Parser;
use inner_reward_rs::app::App;
use inner_reward_rs::config::Config;
use inner_reward_rs::pb::inner_reward_client::InnerRewardClient;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A port nothing listens on (bound then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub struct TestServer {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), inner_reward_rs::app::AppError>>>,
}

impl TestServer {
    /// Starts the real server on 127.0.0.1:0; Kafka always points at a closed port.
    pub async fn start(redis_url: &str, extra: &[&str]) -> Self {
        let kafka = format!("127.0.0.1:{}", closed_port());
        Self::start_with_kafka(&kafka, redis_url, extra).await
    }

    /// Starts the real server on 127.0.0.1:0 with the given Kafka bootstrap servers.
    pub async fn start_with_kafka(kafka: &str, redis_url: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "inner-reward-rs",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--kafka-bootstrap-servers",
            kafka,
            "--redis-url",
            redis_url,
        ];
        if !extra.contains(&"--shutdown-flush-seconds") {
            args.extend_from_slice(&["--shutdown-flush-seconds", "1"]);
        }
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).expect("config");
        let app = App::bind(config).await.expect("bind");
        let (grpc, metrics) = (app.grpc_addr(), app.metrics_addr());
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        Self {
            grpc,
            metrics,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub async fn client(&self) -> InnerRewardClient<Channel> {
        let url = format!("http://{}", self.grpc);
        for _ in 0..50 {
            if let Ok(c) = InnerRewardClient::connect(url.clone()).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot connect to {url}");
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// GET `path` on the metrics port; returns (status line, body).
    pub async fn http_get(&self, path: &str) -> (String, String) {
        let mut s = tokio::net::TcpStream::connect(self.metrics)
            .await
            .expect("connect metrics");
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let status = out.lines().next().unwrap_or_default().to_owned();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// Value of an unlabelled metric line, or of the first line starting with `prefix`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.http_get("/metrics").await;
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    /// Sends the shutdown signal and waits (bounded) for a clean exit.
    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(15)).await;
    }

    /// Sends the shutdown signal and waits at most `limit` for a clean exit.
    pub async fn stop_within(mut self, limit: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let handle = self.handle.take().expect("running");
        let result = tokio::time::timeout(limit, handle)
            .await
            .expect("server stops in time")
            .expect("server task");
        result.expect("server exits cleanly");
    }
}

pub use inner_reward_rs::test_support::feedback;
