//! `rewardloop-loadgen`: open-loop gRPC load generator for the InnerReward service.
//!
//! Requests are issued on a fixed schedule (request i is due at start + i/rate) whatever the
//! server does, and each latency is measured from the request's *due* time, not from when it was
//! actually sent, so a stalled server cannot hide its stall (no coordinated omission). Latencies
//! go into an HDR histogram with 1 µs resolution. Warm-up requests are sent but not recorded.
//!
//! Written in Rust with tonic (instead of ghz or Locust) so that the generator costs little CPU
//! per request on a 2-core machine, uses the same HTTP/2 stack as the server, and builds from the
//! repository with no extra tools. Prints one JSON line with the results.

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use inner_reward_rs::pb::inner_reward_client::InnerRewardClient;
use inner_reward_rs::pb::{Feedback, ScoreActionRequest, ScoreSlateRequest};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Method {
    Action,
    Slate,
}

/// Open-loop gRPC load generator for rewardloop.v1.InnerReward (prints one JSON line).
#[derive(Debug, Parser)]
#[command(name = "rewardloop-loadgen")]
struct Args {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    url: String,
    /// Calls per second offered (fixed schedule).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Warm-up seconds (sent, not recorded).
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// HTTP/2 connections (calls are spread round-robin).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// `action` (ScoreAction) or `slate` (ScoreSlate).
    #[arg(long, value_enum, default_value = "action")]
    method: Method,
    /// Feedbacks per ScoreSlate call.
    #[arg(long, default_value_t = 100)]
    slate_size: usize,
    /// Calls still outstanding above this are counted as `dropped` and not sent (protects the
    /// generator when the server stalls; a dropped call also counts as a 10 s latency).
    #[arg(long, default_value_t = 50_000)]
    max_outstanding: u64,
    /// Label printed with the results.
    #[arg(long, default_value = "run")]
    label: String,
    /// When set, the sum of the high watermarks of this Kafka topic is read at the start and at
    /// the end of the measured window: events that actually landed in the topic per second.
    #[arg(long)]
    kafka_bootstrap: Option<String>,
    #[arg(long, default_value = "recsys.reward.raw")]
    kafka_topic: String,
}

fn feedback(run: u64, i: u64, pos: u32) -> Feedback {
    Feedback {
        event_id: format!("lg-{run}-{i}-{pos}"),
        request_id: format!("r-{i}"),
        user_id: format!("u-{}", i % 10_000),
        session_id: format!("s-{}", i % 10_000),
        item_id: format!("i-{}", (i * 7 + u64::from(pos)) % 100_000),
        position: pos,
        event_time_ms: 1_763_888_400_000 + i64::try_from(i).unwrap_or(0),
        clicked: i.is_multiple_of(3),
        dwell_seconds: (i % 60) as f64,
        skipped: i.is_multiple_of(5),
        predicted_relevance: 0.5,
        behavior_propensity: 0.2,
        segment: String::new(),
    }
}

fn topic_total(bootstrap: &str, topic: &str) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
    let parts = md.topics().first()?.partitions().len();
    let mut sum = 0;
    for p in 0..parts {
        let (_, high) = c
            .fetch_watermarks(topic, i32::try_from(p).ok()?, Duration::from_secs(5))
            .ok()?;
        sum += high;
    }
    Some(sum)
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    outstanding: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut channels: Vec<InnerRewardClient<Channel>> = Vec::new();
    for _ in 0..args.connections.max(1) {
        let ch = Endpoint::from_shared(args.url.clone())?
            .tcp_nodelay(true)
            .connect()
            .await?;
        channels.push(InnerRewardClient::new(ch));
    }
    let run = std::process::id() as u64 * 1_000_000
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            % 1_000_000);
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let counts = Arc::new(Counts::default());
    let rate = args.rate.max(1) as f64;
    let warm_n = (rate * args.warmup as f64) as u64;
    let total_n = warm_n + (rate * args.duration as f64) as u64;
    let start = Instant::now();
    let mut topic_start = None;
    let mut measure_start = None;
    let mut next = 0u64;
    let mut tick = tokio::time::interval(Duration::from_micros(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let slate = matches!(args.method, Method::Slate);
    while next < total_n {
        tick.tick().await;
        let elapsed = start.elapsed().as_secs_f64();
        let due_until = ((elapsed * rate) as u64).min(total_n);
        while next < due_until {
            let i = next;
            next += 1;
            if i == warm_n {
                measure_start = Some(Instant::now());
                if let Some(b) = &args.kafka_bootstrap {
                    let (b, t) = (b.clone(), args.kafka_topic.clone());
                    topic_start = tokio::task::spawn_blocking(move || topic_total(&b, &t)).await?;
                }
            }
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let record = i >= warm_n;
            if counts.outstanding.load(Ordering::Relaxed) >= args.max_outstanding {
                if record {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                    let _ = hist.lock().map(|mut h| h.saturating_record(10_000_000));
                }
                continue;
            }
            counts.outstanding.fetch_add(1, Ordering::Relaxed);
            let mut client = channels[(i as usize) % channels.len()].clone();
            let (hist, counts) = (Arc::clone(&hist), Arc::clone(&counts));
            let size = args.slate_size;
            tokio::spawn(async move {
                let ok = if slate {
                    let feedbacks = (0..size)
                        .map(|p| feedback(run, i, u32::try_from(p).unwrap_or(0)))
                        .collect();
                    client
                        .score_slate(ScoreSlateRequest { feedbacks })
                        .await
                        .is_ok()
                } else {
                    client
                        .score_action(ScoreActionRequest {
                            feedback: Some(feedback(run, i, 0)),
                        })
                        .await
                        .is_ok()
                };
                let us = due.elapsed().as_micros() as u64;
                counts.outstanding.fetch_sub(1, Ordering::Relaxed);
                if record {
                    if ok {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = hist.lock().map(|mut h| h.saturating_record(us.max(1)));
                }
            });
        }
    }
    // Wait (bounded) for the last calls.
    let wait_until = Instant::now() + Duration::from_secs(10);
    while counts.outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let window = measure_start.map_or(0.0, |m| m.elapsed().as_secs_f64());
    let topic_rate = match (&args.kafka_bootstrap, topic_start) {
        (Some(b), Some(first)) => {
            let (b, t) = (b.clone(), args.kafka_topic.clone());
            let last = tokio::task::spawn_blocking(move || topic_total(&b, &t)).await?;
            last.map(|l| (l - first) as f64 / window.max(1e-9))
        }
        _ => None,
    };
    let h = hist.lock().map_err(|_| "histogram lock")?;
    let ok = counts.ok.load(Ordering::Relaxed);
    let per_call = if slate { args.slate_size as f64 } else { 1.0 };
    println!(
        "{}",
        serde_json::json!({
            "label": args.label,
            "method": format!("{:?}", args.method).to_lowercase(),
            "offered_rps": args.rate,
            "achieved_rps": (ok as f64 / window.max(1e-9)).round(),
            "events_per_s": (ok as f64 * per_call / window.max(1e-9)).round(),
            "ok": ok,
            "errors": counts.errors.load(Ordering::Relaxed),
            "dropped": counts.dropped.load(Ordering::Relaxed),
            "p50_us": h.value_at_quantile(0.50),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "window_s": (window * 100.0).round() / 100.0,
            "kafka_topic_events_per_s": topic_rate.map(f64::round),
        })
    );
    Ok(())
}
