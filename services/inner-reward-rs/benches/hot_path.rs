//! Criterion micro-benchmarks of the scorer's hot path: the reward formula, whole-request
//! validation, and the telemetry hand-off (the lock-free ring the handlers push into, compared
//! with the bounded tokio mpsc it replaced). `cargo bench --bench hot_path`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use inner_reward_rs::metrics::Metrics;
use inner_reward_rs::pb::Feedback;
use inner_reward_rs::scoring::{self, Signals, Weights};
use inner_reward_rs::telemetry::{RewardRecord, TelemetryQueue};
use inner_reward_rs::test_support;
use std::hint::black_box;
use std::sync::Arc;

/// The shared valid feedback, varied per `i` (ids, signals) so slates are not one value.
fn feedback(i: u32) -> Feedback {
    let mut f = test_support::feedback(&format!("e-{i}"));
    f.user_id = format!("u-{}", i % 100);
    f.item_id = format!("i-{i}");
    f.position = i % 100;
    f.clicked = i.is_multiple_of(3);
    f.dwell_seconds = f64::from(i % 60);
    f.skipped = i.is_multiple_of(5);
    f
}

fn record(i: u32) -> RewardRecord {
    let f = feedback(i);
    let s = scoring::score(Signals::from(&f), &Weights::BUILTIN);
    RewardRecord::new(f, "default".into(), &s, 1, None)
}

fn bench_scoring(c: &mut Criterion) {
    let mut g = c.benchmark_group("scoring");
    g.throughput(Throughput::Elements(1));
    let f = feedback(7);
    g.bench_function("score", |b| {
        b.iter(|| scoring::score(Signals::from(black_box(&f)), black_box(&Weights::BUILTIN)))
    });
    g.bench_function("validate_feedback", |b| {
        b.iter(|| scoring::validate_feedback("feedback", black_box(&f)))
    });
    let slate: Vec<Feedback> = (0..100).map(feedback).collect();
    g.throughput(Throughput::Elements(100));
    g.bench_function("validate_and_score_slate_100", |b| {
        b.iter(|| {
            let _ = scoring::validate_slate(black_box(&slate), 1000);
            slate
                .iter()
                .map(|f| scoring::score(Signals::from(f), &Weights::BUILTIN).value)
                .sum::<f64>()
        })
    });
    g.finish();
}

fn bench_handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("telemetry_handoff");
    g.throughput(Throughput::Elements(1));
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (q, rx) = TelemetryQueue::new(1 << 16, Arc::clone(&metrics));
    let mut out = Vec::with_capacity(1024);
    // Producer side only, as a handler sees it; the ring is emptied between batches.
    g.bench_function("ring_reserve_push", |b| {
        b.iter_batched(
            || {
                out.clear();
                rx.pop_batch(1 << 16, &mut out);
                record(1)
            },
            |r| q.enqueue(r),
            BatchSize::SmallInput,
        )
    });
    let (tx, mut mrx) = tokio::sync::mpsc::channel::<RewardRecord>(1 << 16);
    g.bench_function("tokio_mpsc_try_send", |b| {
        b.iter_batched(
            || {
                while mrx.try_recv().is_ok() {}
                record(1)
            },
            |r| tx.try_send(r).is_ok(),
            BatchSize::SmallInput,
        )
    });
    // Round trip: push then pop (the worker's side) on one thread.
    g.bench_function("ring_push_pop", |b| {
        b.iter_batched(
            || record(1),
            |r| {
                let _ = q.enqueue(r);
                out.clear();
                rx.pop_batch(1, &mut out)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("tokio_mpsc_push_pop", |b| {
        b.iter_batched(
            || record(1),
            |r| {
                let _ = tx.try_send(r);
                mrx.try_recv().is_ok()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_serialize(c: &mut Criterion) {
    let mut g = c.benchmark_group("telemetry_worker");
    g.throughput(Throughput::Elements(1));
    let r = record(3);
    g.bench_function("serialize_record_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&r)).map(|v| v.len()))
    });
    // What the worker does: serde_json into one reused buffer (no allocation per record).
    let mut buf = Vec::with_capacity(1024);
    g.bench_function("serialize_record_json_reused_buffer", |b| {
        b.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, black_box(&r)).map(|()| buf.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_scoring, bench_handoff, bench_serialize);
criterion_main!(benches);
