//! Latency guardrail (issue #6): the P99 of the server's own handler latency over a sliding
//! window; above the budget the scorer reports itself *degraded* (metric, log line, `/healthz`
//! body — it keeps answering `SERVING`) and sheds optional work until the P99 is back under
//! 80 % of the budget.
//!
//! The hot path pays one relaxed atomic load and one relaxed `fetch_add` per call: latencies go
//! into a ring of per-second slots of log-linear buckets (8 per octave of µs, ≤ 9 % relative
//! error, upper bounds used, so the estimate errs high). A background task calls
//! [`Guardrail::tick`] with the current time: it rotates the ring (clearing the slot it is about
//! to reuse) and evaluates the window. Tests drive `tick` with their own clock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sub-buckets per power of two.
const SUB: u32 = 8;
/// Octaves of µs covered (2^24 µs ≈ 16.8 s; slower calls land in the last bucket).
const OCTAVES: u32 = 24;
const BUCKETS: usize = (SUB * OCTAVES + SUB) as usize;

/// Bucket of a latency in µs: values < 8 µs exactly, then 8 log-linear buckets per octave.
fn bucket(us: u64) -> usize {
    if us < u64::from(SUB) {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros(); // >= 3
    let shift = octave - 3; // keep the top 4 bits: 1xxx
    let mantissa = (us >> shift) as u32 & (SUB - 1);
    (((octave - 2) * SUB + mantissa) as usize).min(BUCKETS - 1)
}

/// Largest latency (µs) that falls into bucket `i`.
fn upper_us(i: usize) -> u64 {
    let i = i as u32;
    if i < SUB {
        return u64::from(i);
    }
    let octave = i / SUB + 2;
    let mantissa = u64::from(i % SUB);
    let shift = octave - 3;
    ((u64::from(SUB) + mantissa + 1) << shift) - 1
}

struct Slot {
    counts: Box<[AtomicU32]>,
}

impl Slot {
    fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn clear(&self) {
        for c in self.counts.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// What one evaluation found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Estimated P99 of the window (None: fewer samples than the minimum).
    pub p99: Option<Duration>,
    pub samples: u64,
    pub active: bool,
    /// The state flipped in this evaluation.
    pub changed: bool,
}

/// The sliding-window P99 and the degraded flag.
pub struct Guardrail {
    slots: Box<[Slot]>,
    current: AtomicUsize,
    slot_len: Duration,
    budget: Duration,
    min_samples: u64,
    active: AtomicBool,
    /// When the current slot started (only the ticking task takes this lock).
    slot_started: Mutex<Instant>,
}

impl Guardrail {
    /// A window of `window` split into one-second slots (at least 2), a P99 `budget`, and the
    /// fewest samples in the window for a verdict (quiet servers are never called degraded).
    pub fn new(window: Duration, budget: Duration, min_samples: u64, now: Instant) -> Self {
        let slot_len = Duration::from_secs(1);
        let n = (window.as_secs() as usize).max(2);
        Self {
            slots: (0..n).map(|_| Slot::new()).collect(),
            current: AtomicUsize::new(0),
            slot_len,
            budget,
            min_samples: min_samples.max(1),
            active: AtomicBool::new(false),
            slot_started: Mutex::new(now),
        }
    }

    /// The budget the P99 is held to.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Hot path: counts one handler latency.
    #[inline]
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let slot = &self.slots[self.current.load(Ordering::Relaxed) % self.slots.len()];
        slot.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Hot path: true while degraded (optional work is shed).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Rotates the window to `now` and evaluates it. Call about every second.
    pub fn tick(&self, now: Instant) -> Evaluation {
        {
            let mut started = self.slot_started.lock().unwrap_or_else(|e| e.into_inner());
            let mut steps = 0;
            while now.saturating_duration_since(*started) >= self.slot_len {
                *started += self.slot_len;
                steps += 1;
                if steps <= self.slots.len() {
                    // Clear the oldest slot, then make it current.
                    let next = (self.current.load(Ordering::Relaxed) + 1) % self.slots.len();
                    self.slots[next].clear();
                    self.current.store(next, Ordering::Relaxed);
                }
            }
        }
        let mut merged = vec![0u64; BUCKETS];
        for slot in self.slots.iter() {
            for (m, c) in merged.iter_mut().zip(slot.counts.iter()) {
                *m += u64::from(c.load(Ordering::Relaxed));
            }
        }
        let samples: u64 = merged.iter().sum();
        let p99 = (samples >= self.min_samples).then(|| {
            let rank = samples - samples / 100; // the ceil(0.99 n)-th value
            let mut seen = 0;
            let mut us = upper_us(BUCKETS - 1);
            for (i, c) in merged.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    us = upper_us(i);
                    break;
                }
            }
            Duration::from_micros(us)
        });
        let was = self.is_active();
        let active = match p99 {
            None => false,
            Some(p) if was => p.as_secs_f64() > 0.8 * self.budget.as_secs_f64(),
            Some(p) => p > self.budget,
        };
        self.active.store(active, Ordering::Relaxed);
        Evaluation {
            p99,
            samples,
            active,
            changed: active != was,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_their_values() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            100,
            999,
            1000,
            4999,
            5000,
            5001,
            1 << 20,
            u64::MAX,
        ] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            if b < BUCKETS - 1 {
                assert!(
                    upper_us(b) >= us,
                    "{us} -> bucket {b} ends at {}",
                    upper_us(b)
                );
                if b > 0 {
                    assert!(upper_us(b - 1) < us, "{us} belongs in bucket {b}");
                }
                // ≤ 1/8 relative error
                assert!((upper_us(b) - us) as f64 <= us as f64 / 8.0 + 1.0, "{us}");
            }
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn trips_over_budget_recovers_with_hysteresis_and_forgets_old_slots() {
        let t0 = Instant::now();
        let g = Guardrail::new(Duration::from_secs(5), ms(5), 100, t0);
        // Quiet: too few samples for a verdict.
        for _ in 0..50 {
            g.record(ms(50));
        }
        let e = g.tick(t0);
        assert_eq!((e.p99, e.active), (None, false));

        // 50 more slow calls and 900 fast ones: 10 % over budget -> P99 over budget -> degraded.
        for _ in 0..50 {
            g.record(ms(50));
        }
        for _ in 0..900 {
            g.record(Duration::from_micros(200));
        }
        let e = g.tick(t0 + ms(500));
        assert!(e.active && e.changed, "{e:?}");
        assert!(e.p99.expect("p99") >= ms(45), "{e:?}");
        assert!(g.is_active());

        // Next seconds: only fast calls, but the slow ones (2 % of 5000 at second 4) are still in
        // the window.
        for s in 1..5 {
            for _ in 0..1000 {
                g.record(Duration::from_micros(300));
            }
            let e = g.tick(t0 + Duration::from_secs(s));
            assert!(
                e.active,
                "second {s}: slow calls still in the 5 s window: {e:?}"
            );
        }
        // After the window has passed the slow second, the P99 is fast again: recovers.
        for _ in 0..1000 {
            g.record(Duration::from_micros(300));
        }
        let e = g.tick(t0 + Duration::from_secs(5));
        assert!(!e.active && e.changed, "{e:?}");
        assert!(e.p99.expect("p99") < ms(1));

        // Hysteresis: a P99 between 80 % and 100 % of the budget keeps an active guardrail
        // active, and does not trip an inactive one.
        let g = Guardrail::new(Duration::from_secs(5), ms(5), 100, t0);
        for _ in 0..1000 {
            g.record(ms(6));
        }
        assert!(g.tick(t0).active);
        for _ in 0..200_000 {
            g.record(Duration::from_micros(4500)); // the 6 ms calls are now 0.5 %
        }
        let e = g.tick(t0);
        assert!(e.p99.expect("p99") < ms(5), "{e:?}");
        assert!(e.active, "4.5 ms > 80 % of 5 ms: stays active: {e:?}");
        let g2 = Guardrail::new(Duration::from_secs(5), ms(5), 100, t0);
        for _ in 0..1000 {
            g2.record(Duration::from_micros(4500));
        }
        assert!(!g2.tick(t0).active, "4.5 ms < 5 ms: does not trip");
    }

    #[test]
    fn a_long_pause_clears_the_whole_window() {
        let t0 = Instant::now();
        let g = Guardrail::new(Duration::from_secs(3), ms(5), 10, t0);
        for _ in 0..100 {
            g.record(ms(100));
        }
        assert!(g.tick(t0).active);
        let e = g.tick(t0 + Duration::from_secs(3600));
        assert_eq!((e.samples, e.active), (0, false));
    }
}
