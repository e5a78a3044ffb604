//! CPU pinning for the serving threads and the telemetry threads (Linux `sched_setaffinity`).
//!
//! On a small machine the gRPC runtime and the Kafka side (the telemetry worker, librdkafka's
//! threads) should not take turns on one core: pinning the serving threads to some CPUs and the
//! telemetry thread to others keeps serialization, compression and broker I/O off the cores
//! that answer calls. Threads inherit the affinity of the thread that creates them, so pinning
//! the main thread before the runtime starts covers every runtime thread, and pinning the
//! telemetry thread before it creates the Kafka producer covers librdkafka's threads.

use std::fmt;
use std::str::FromStr;

/// A set of CPU numbers, parsed from a Linux-style list: `0`, `0,2`, `1-3,6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Most CPUs a list may name (the size of the kernel's `cpu_set_t`).
pub const MAX_CPUS: usize = 1024;

impl FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let parse = |v: &str| {
                v.parse::<usize>()
                    .map_err(|_| format!("not a CPU number: {v:?} in {s:?}"))
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi || hi >= MAX_CPUS {
                return Err(format!("bad CPU range {part:?} (CPUs are 0..{MAX_CPUS})"));
            }
            cpus.extend(lo..=hi);
        }
        if cpus.is_empty() {
            return Err("empty CPU list".into());
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(Self(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&names.join(","))
    }
}

/// Pins the calling thread (and the threads it creates from now on) to `cpus`.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpus: &CpuList) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it (numbers < MAX_CPUS, the
    // set's capacity); sched_setaffinity(0, ..) only reads it and affects the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &cpu in &cpus.0 {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Puts the calling thread (and the threads it creates from now on) back on the normal
/// time-sharing scheduler if it runs at a real-time priority: background work such as
/// telemetry must never preempt the serving threads (or a benchmark's load generator) when the
/// server was started with `chrt`. Returns true when the policy was changed.
#[cfg(target_os = "linux")]
pub fn leave_realtime() -> std::io::Result<bool> {
    // SAFETY: sched_getscheduler/sched_setscheduler(0, ..) act on the calling thread only and
    // read the sched_param we pass by reference.
    unsafe {
        let policy = libc::sched_getscheduler(0);
        if policy != libc::SCHED_FIFO && policy != libc::SCHED_RR {
            return Ok(false);
        }
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(true)
}

/// Real-time scheduling is Linux-only here; elsewhere there is nothing to leave.
#[cfg(not(target_os = "linux"))]
pub fn leave_realtime() -> std::io::Result<bool> {
    Ok(false)
}

/// Pinning is Linux-only; elsewhere it is refused.
#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpus: &CpuList) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "CPU pinning needs Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!("0".parse::<CpuList>(), Ok(CpuList(vec![0])));
        assert_eq!("1-3,0, 2".parse::<CpuList>(), Ok(CpuList(vec![0, 1, 2, 3])));
        assert!("".parse::<CpuList>().is_err());
        assert!("3-1".parse::<CpuList>().is_err());
        assert!("x".parse::<CpuList>().is_err());
        assert!("1024".parse::<CpuList>().is_err());
        assert_eq!(CpuList(vec![0, 2]).to_string(), "0,2");
    }

    #[test]
    fn pins_this_thread_to_an_allowed_cpu() {
        // CPU 0 may be outside this process's mask (containers); pin to one we have instead.
        let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpus = CpuList(vec![0]);
        let t = std::thread::spawn(move || {
            pin_current_thread(&cpus)
                .map(|()| std::thread::available_parallelism().map_or(0, |n| n.get()))
        });
        match t.join().expect("thread") {
            Ok(n) => assert_eq!(n, 1, "pinned thread sees one CPU"),
            Err(e) => assert!(allowed > 0, "pinning refused: {e}"),
        }
    }
}
