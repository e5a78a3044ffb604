//! `rewardloop-loadgen`: open-loop gRPC load generator for the InnerReward service.
//!
//! Requests are issued on a fixed schedule (request i is due at start + i/rate) whatever the
//! server does, and each latency is measured from the request's *due* time, not from when it was
//! actually sent, so a stalled server cannot hide its stall (no coordinated omission). Latencies
//! go into an HDR histogram with 1 µs resolution. Warm-up requests are sent but not recorded.
//!
//! Built for a 2-core machine, where the generator must cost far less per call than the server:
//! * gRPC over raw HTTP/2 (the `h2` crate, as under tonic): the request is encoded once into a
//!   gRPC frame, the response's `grpc-status` is checked, its body is not decoded. The tonic
//!   client (tower buffer + hyper dispatch task + codec) cost ~50-70 µs of CPU per call on this
//!   VM, so one generator core topped out below 20 000 calls/s while the empty server needed ~15;
//! * one thread runs every call: a `current_thread` tokio runtime, calls polled from one
//!   `FuturesUnordered` (no task spawn per call, no channel per call, the histogram owned by that
//!   task: no lock);
//! * pacing by a periodic `timerfd` (default every 100 µs, `--tick-us`) in the runtime's own
//!   epoll set: tokio's timer has 1 ms resolution, which would send in bursts and add up to 1 ms
//!   to every measured latency, and a separate pacer thread costs two context switches per tick
//!   (measured: ~15 % of the generator's CPU at a 50 µs tick on this VM);
//! * the generator's own lateness (actual send time − due time) is recorded separately and
//!   printed (`send_lag_p99_us`), so its share of a latency is visible.
//!
//! Also measures hot-reload latency (`--method reload`): publishes new weights versions to Redis
//! the way `rewardloop_common.weights_store` does and polls `GetConfig` until the scorer reports
//! each one. Prints one JSON line with the results.

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::client::SendRequest;
use hdrhistogram::Histogram;
use inner_reward_rs::pb::inner_reward_client::InnerRewardClient;
use inner_reward_rs::pb::{Feedback, GetConfigRequest, ScoreActionRequest, ScoreSlateRequest};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Method {
    Action,
    Slate,
    /// Hot-reload latency: Redis write + PUBLISH -> version visible in GetConfig.
    Reload,
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
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// `action` (ScoreAction), `slate` (ScoreSlate) or `reload` (hot-reload latency).
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
    /// Pacing tick in µs: due calls are sent at most this late (see `send_lag_*` in the output).
    #[arg(long, default_value_t = 100)]
    tick_us: u64,
    /// `--method reload`: the Redis holding the scorer's weights.
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    redis_url: String,
    /// `--method reload`: versions to publish (one at a time).
    #[arg(long, default_value_t = 200)]
    reloads: u32,
    /// `--method reload`: segment to write (use a throw-away one on a shared Redis).
    #[arg(long, default_value = "bench-reload")]
    segment: String,
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

/// A periodic Linux `timerfd` registered with the runtime's epoll: it wakes the (single) runtime
/// thread every tick without a second thread, and costs nothing extra while the thread is busy.
struct Ticker {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl Ticker {
    fn new(every: Duration) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: timerfd_create returns a new fd (or -1) that we own from here on;
        // timerfd_settime reads the itimerspec we pass by reference; registering it with the
        // runtime is sound because the AsyncFd owns it until it is dropped.
        let fd = unsafe {
            let raw = libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            );
            if raw < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: i64::from(every.subsec_nanos().max(1000)),
            };
            let spec = libc::itimerspec {
                it_interval: ts,
                it_value: ts,
            };
            if libc::timerfd_settime(raw, 0, &spec, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // `fd` stays owned by the AsyncFd (never replaced or closed while registered).
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)?
        };
        Ok(Self { fd })
    }

    /// Waits for the next expiry (returns at once if one passed since the last call).
    async fn tick(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into a u64 we own, from the fd we own.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut expirations as *mut u64).cast(),
                    8,
                )
            };
            if n == 8 {
                return Ok(());
            }
            guard.clear_ready();
        }
    }
}

fn histogram() -> Result<Histogram<u64>, Box<dyn std::error::Error>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // One thread runs all calls (see the module docs); the pacer is the only other thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = if args.method == Method::Reload {
        rt.block_on(reload(&args))?
    } else {
        rt.block_on(load(&args))?
    };
    println!("{result}");
    Ok(())
}

/// One gRPC unary call over a raw HTTP/2 stream: `body` is the length-prefixed request
/// message; the response is read to the end (data released for flow control) and its
/// `grpc-status` checked, but not decoded.
async fn unary(client: SendRequest<Bytes>, uri: http::Uri, body: Bytes) -> Result<(), String> {
    let mut client = client.ready().await.map_err(|e| e.to_string())?;
    let request = http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, mut stream) = client
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    stream.send_data(body, true).map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP {}", response.status()));
    }
    let status_of = |h: &http::HeaderMap| {
        h.get("grpc-status").map(|v| {
            (
                v.as_bytes() == b"0",
                h.get("grpc-message")
                    .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned()),
            )
        })
    };
    // Trailers-only response (errors): the status is in the headers.
    if let Some((ok, message)) = status_of(response.headers()) {
        return if ok {
            Ok(())
        } else {
            Err(message.unwrap_or_default())
        };
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    match body.trailers().await.map_err(|e| e.to_string())? {
        Some(t) => match status_of(&t) {
            Some((true, _)) => Ok(()),
            Some((false, message)) => Err(message.unwrap_or_default()),
            None => Err("no grpc-status".into()),
        },
        None => Err("no trailers".into()),
    }
}

/// The gRPC wire frame of one message: flag 0 (uncompressed), u32 big-endian length, bytes.
fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    // Cannot fail: the buffer grows as needed.
    let _ = message.encode(&mut buf);
    Bytes::from(buf)
}

async fn load(args: &Args) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let base: http::Uri = args.url.parse()?;
    let authority = base.authority().ok_or("--url needs host:port")?.clone();
    let method = if args.method == Method::Slate {
        "ScoreSlate"
    } else {
        "ScoreAction"
    };
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(format!("/rewardloop.v1.InnerReward/{method}"))
        .build()?;
    let mut channels: Vec<SendRequest<Bytes>> = Vec::new();
    for _ in 0..args.connections.max(1) {
        let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
        tcp.set_nodelay(true)?;
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .handshake::<_, Bytes>(tcp)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("connection ended: {e}");
            }
        });
        channels.push(client);
    }
    let run = u64::from(std::process::id()) * 1_000_000
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            % 1_000_000);
    let mut hist = histogram()?;
    let mut lag = histogram()?;
    let (mut ok, mut errors, mut dropped) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let rate = args.rate.max(1) as f64;
    let warm_n = (rate * args.warmup as f64) as u64;
    let total_n = warm_n + (rate * args.duration as f64) as u64;
    let slate = args.method == Method::Slate;
    let size = args.slate_size;

    let ticker = Ticker::new(Duration::from_micros(args.tick_us.clamp(10, 999_999)))?;
    let start = Instant::now();
    let mut topic_start = None;
    let mut measure_start = None;
    let mut next = 0u64;
    let mut calls = FuturesUnordered::new();
    let mut drain_deadline = None::<Instant>;
    loop {
        // Send everything due (several may have come due since the last look).
        let due_now = ((start.elapsed().as_secs_f64() * rate) as u64).min(total_n);
        while next < due_now {
            let i = next;
            next += 1;
            if i == warm_n {
                measure_start = Some(Instant::now());
                if let Some(b) = &args.kafka_bootstrap {
                    // Not awaited here: a slow broker must not stall the schedule.
                    let (b, t) = (b.clone(), args.kafka_topic.clone());
                    topic_start = Some(tokio::task::spawn_blocking(move || topic_total(&b, &t)));
                }
            }
            let due_at = start + Duration::from_secs_f64(i as f64 / rate);
            let record = i >= warm_n;
            if calls.len() as u64 >= args.max_outstanding {
                if record {
                    dropped += 1;
                    hist.saturating_record(10_000_000);
                }
                continue;
            }
            if record {
                lag.saturating_record(due_at.elapsed().as_micros() as u64);
            }
            let client = channels[(i as usize) % channels.len()].clone();
            let body = if slate {
                let feedbacks = (0..size)
                    .map(|p| feedback(run, i, u32::try_from(p).unwrap_or(0)))
                    .collect();
                grpc_frame(&ScoreSlateRequest { feedbacks })
            } else {
                grpc_frame(&ScoreActionRequest {
                    feedback: Some(feedback(run, i, 0)),
                })
            };
            let uri = uri.clone();
            calls.push(async move {
                let result = unary(client, uri, body).await;
                (result, record, due_at.elapsed().as_micros() as u64)
            });
        }
        if next >= total_n && calls.is_empty() {
            break;
        }
        if next >= total_n && drain_deadline.is_none() {
            // Wait (bounded) for the last calls.
            drain_deadline = Some(Instant::now() + Duration::from_secs(10));
        }
        let deadline = drain_deadline;
        tokio::select! {
            t = ticker.tick(), if next < total_n => t?,
            done = calls.next(), if !calls.is_empty() => {
                if let Some((result, record, us)) = done {
                    if record {
                        match result {
                            Ok(()) => ok += 1,
                            Err(message) => {
                                errors += 1;
                                if first_error.is_none() {
                                    first_error = Some(message);
                                }
                            }
                        }
                        hist.saturating_record(us.max(1));
                    }
                }
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()).await },
                if deadline.is_some() => break,
        }
    }
    let window = measure_start.map_or(0.0, |m| m.elapsed().as_secs_f64());
    let topic_start = match topic_start {
        Some(handle) => handle.await?,
        None => None,
    };
    let topic_rate = match (&args.kafka_bootstrap, topic_start) {
        (Some(b), Some(first)) => {
            let (b, t) = (b.clone(), args.kafka_topic.clone());
            let last = tokio::task::spawn_blocking(move || topic_total(&b, &t)).await?;
            last.map(|l| (l - first) as f64 / window.max(1e-9))
        }
        _ => None,
    };
    let per_call = if slate { args.slate_size as f64 } else { 1.0 };
    Ok(serde_json::json!({
        "label": args.label,
        "method": format!("{:?}", args.method).to_lowercase(),
        "offered_rps": args.rate,
        "achieved_rps": (ok as f64 / window.max(1e-9)).round(),
        "events_per_s": (ok as f64 * per_call / window.max(1e-9)).round(),
        "ok": ok,
        "errors": errors,
        "dropped": dropped,
        "first_error": first_error,
        "p50_us": hist.value_at_quantile(0.50),
        "p99_us": hist.value_at_quantile(0.99),
        "p999_us": hist.value_at_quantile(0.999),
        "max_us": hist.max(),
        "send_lag_p50_us": lag.value_at_quantile(0.50),
        "send_lag_p99_us": lag.value_at_quantile(0.99),
        "window_s": (window * 100.0).round() / 100.0,
        "kafka_topic_events_per_s": topic_rate.map(f64::round),
    }))
}

/// Hot-reload latency: for each new version, SET the document + PUBLISH the announcement (as
/// `rewardloop_common.weights_store` does, minus history) and poll GetConfig until the scorer
/// reports that version. Latency = publish -> first GetConfig answer with the new version
/// (polled back to back, so the polling adds at most one GetConfig round trip).
async fn reload(args: &Args) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let mut client = InnerRewardClient::connect(args.url.clone()).await?;
    let mut redis = redis::Client::open(args.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let key = format!("rewardloop:weights:{}", args.segment);
    // Start above anything already there, so every version is newer.
    let held = client
        .get_config(GetConfigRequest {
            segment: args.segment.clone(),
        })
        .await?
        .into_inner();
    let base = if held.segment == args.segment {
        held.version
    } else {
        0
    };
    let mut hist = histogram()?;
    let mut timeouts = 0u32;
    for n in 1..=u64::from(args.reloads) {
        let version = base + n;
        let doc = serde_json::json!({
            "version": version, "segment": args.segment,
            "weights": {"click": 1.0 + (n % 10) as f64 / 10.0, "dwell": 0.5, "skip": -0.3, "relevance": 0.8},
            "updated_at_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64,
            "source": "bench-reload", "reason": "hot-reload latency benchmark"
        });
        let msg = serde_json::json!({"segment": args.segment, "version": version});
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(doc.to_string())
            .ignore()
            .cmd("PUBLISH")
            .arg("rewardloop:weights-updates")
            .arg(msg.to_string())
            .ignore()
            .query_async(&mut redis)
            .await?;
        let published = Instant::now();
        let deadline = published + Duration::from_secs(5);
        loop {
            let c = client
                .get_config(GetConfigRequest {
                    segment: args.segment.clone(),
                })
                .await?
                .into_inner();
            if c.segment == args.segment && c.version >= version {
                hist.saturating_record(published.elapsed().as_micros() as u64);
                break;
            }
            if Instant::now() > deadline {
                timeouts += 1;
                hist.saturating_record(5_000_000);
                break;
            }
        }
        // Space the versions out a little, as real pushes are (the outer loop pushes per batch).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut redis).await?;
    Ok(serde_json::json!({
        "label": args.label,
        "method": "reload",
        "reloads": args.reloads,
        "timeouts": timeouts,
        "p50_us": hist.value_at_quantile(0.50),
        "p99_us": hist.value_at_quantile(0.99),
        "max_us": hist.max(),
    }))
}
