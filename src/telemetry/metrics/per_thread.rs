//! The per-request series (`ssogate_requests_total` and the two latency
//! histograms), counted per serving thread.
//!
//! Every forwarded request bumps one counter and records one or two
//! latencies. Kept in one shared atomic each (as the Prometheus exporter's
//! own storage keeps them), every serving thread would write the same cache
//! lines and pull them from the other cores on each request. Here each
//! thread writes a shard of its own (aligned to keep shards off each
//! other's cache lines, a relaxed add each, uncontended), and a scrape adds
//! the shards up. Fixed buckets, so memory does not grow between scrapes.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use super::{BUCKETS, OUTCOMES};

/// Shards per counter set; threads beyond this many share one (still exact).
const SHARDS: usize = 16;

/// `BUCKETS` in nanoseconds.
const BOUNDS_NS: [u64; BUCKETS.len()] = {
    let mut ns = [0u64; BUCKETS.len()];
    let mut i = 0;
    while i < BUCKETS.len() {
        // Rounded: the bounds are whole nanoseconds, their f64 products not always.
        ns[i] = (BUCKETS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    ns
};

thread_local! {
    /// This thread's shard index, drawn on first use.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Relaxed) % SHARDS);
        }
        s.get()
    })
}

#[derive(Default)]
struct Histogram {
    /// Samples per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }
}

#[derive(Default)]
#[repr(align(128))]
struct Shard {
    outcomes: [AtomicU64; OUTCOMES.len()],
    gate: Histogram,
    upstream: Histogram,
}

/// The request series of one gate.
pub struct PerThread {
    shards: Box<[Shard; SHARDS]>,
}

impl Default for PerThread {
    fn default() -> Self {
        Self {
            shards: Box::new(std::array::from_fn(|_| Shard::default())),
        }
    }
}

impl PerThread {
    pub fn record(&self, outcome: usize, gate: Duration, upstream: Option<Duration>) {
        let shard = &self.shards[shard_index()];
        if let Some(c) = shard.outcomes.get(outcome) {
            c.fetch_add(1, Relaxed);
        }
        shard.gate.record(gate);
        if let Some(u) = upstream {
            shard.upstream.record(u);
        }
    }

    /// Appends the series in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let sum = |f: &dyn Fn(&Shard) -> &AtomicU64| -> u64 {
            self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
        };
        out.push_str("# TYPE ssogate_requests_total counter\n");
        for (i, name) in OUTCOMES.iter().enumerate() {
            let n = sum(&|s| &s.outcomes[i]);
            let _ = writeln!(out, "ssogate_requests_total{{outcome=\"{name}\"}} {n}");
        }
        out.push('\n');
        for (series, pick) in [
            (
                "ssogate_gate_duration_seconds",
                (|s: &Shard| &s.gate) as fn(&Shard) -> &Histogram,
            ),
            ("ssogate_upstream_duration_seconds", |s: &Shard| &s.upstream),
        ] {
            let _ = writeln!(out, "# TYPE {series} histogram");
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += sum(&|s| &pick(s).buckets[i]);
                let _ = writeln!(out, "{series}_bucket{{le=\"{bound}\"}} {cumulative}");
            }
            cumulative += sum(&|s| &pick(s).buckets[BUCKETS.len()]);
            let _ = writeln!(out, "{series}_bucket{{le=\"+Inf\"}} {cumulative}");
            let seconds = sum(&|s| &pick(s).sum_ns) as f64 / 1e9;
            let _ = writeln!(out, "{series}_sum {seconds}");
            let _ = writeln!(out, "{series}_count {cumulative}");
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(p: &PerThread) -> String {
        let mut out = String::new();
        p.render(&mut out);
        out
    }

    #[test]
    fn samples_land_in_their_bucket_and_every_thread_counts() {
        let p = std::sync::Arc::new(PerThread::default());
        p.record(
            0,
            Duration::from_micros(100),
            Some(Duration::from_millis(3)),
        );
        p.record(0, Duration::from_nanos(100_001), None);
        p.record(4, Duration::from_secs(11), None);
        let others: Vec<_> = (0..3)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || p.record(2, Duration::from_micros(300), None))
            })
            .collect();
        others.into_iter().for_each(|t| t.join().unwrap());
        let text = rendered(&p);
        for want in [
            "ssogate_requests_total{outcome=\"forwarded\"} 2\n",
            "ssogate_requests_total{outcome=\"rejected\"} 3\n",
            "ssogate_requests_total{outcome=\"sso\"} 1\n",
            "ssogate_requests_total{outcome=\"error\"} 0\n",
            // 100 µs is on the first bound, and the first bucket holds it.
            "ssogate_gate_duration_seconds_bucket{le=\"0.0001\"} 1\n",
            "ssogate_gate_duration_seconds_bucket{le=\"0.00025\"} 2\n",
            "ssogate_gate_duration_seconds_bucket{le=\"0.0005\"} 5\n",
            "ssogate_gate_duration_seconds_bucket{le=\"10\"} 5\n",
            "ssogate_gate_duration_seconds_bucket{le=\"+Inf\"} 6\n",
            "ssogate_gate_duration_seconds_count 6\n",
            "ssogate_upstream_duration_seconds_bucket{le=\"0.0025\"} 0\n",
            "ssogate_upstream_duration_seconds_bucket{le=\"0.005\"} 1\n",
            "ssogate_upstream_duration_seconds_sum 0.003\n",
            "ssogate_upstream_duration_seconds_count 1\n",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("ssogate_gate_duration_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 11.001_100_001).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn the_bounds_are_the_buckets_in_whole_nanoseconds() {
        assert_eq!(BOUNDS_NS[0], 100_000);
        assert_eq!(BOUNDS_NS[1], 250_000);
        assert_eq!(BOUNDS_NS[BUCKETS.len() - 1], 10_000_000_000);
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }
}
