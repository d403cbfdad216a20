//! Process-wide counters and latency histograms, rendered in the Prometheus text format by
//! [`render`] (served by `modelfs mount --metrics-addr`).
//!
//! - `modelfs_s3_requests_total{op,result}`, `modelfs_s3_request_seconds{op}` (histogram),
//!   `modelfs_s3_bytes_total`, `modelfs_s3_retries_total`;
//! - `modelfs_cache_{hits,misses,writes,evictions,corrupt,errors}_total{tier}`;
//! - `modelfs_fetch_blocks_total{priority}` (demand vs background: readahead and sweeps);
//! - `modelfs_cache_too_small_loads_total`: loads of a model the disk cache could not hold
//!   beside the files in use (streamed from S3 through memory, nothing stored): grow the
//!   cache when it rises;
//! - `modelfs_fuse_requests_total{op}`, `modelfs_fuse_request_seconds{op}` (histogram);
//! - `modelfs_inodes` (gauge): inodes in memory, over every volume of the process;
//! - `modelfs_warm_bytes_total`, `modelfs_warming_volumes` (gauge): volumes' `warm` files
//!   (the mounter).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::cache::TierStats;

/// Loads of a model the disk cache could not hold.
const TOO_SMALL: &str = "modelfs_cache_too_small_loads_total";

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

/// All metrics of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    s3_requests: Mutex<BTreeMap<(&'static str, &'static str), Arc<AtomicU64>>>,
    s3_latency: Mutex<BTreeMap<&'static str, Arc<Histogram>>>,
    s3_bytes: AtomicU64,
    s3_retries: AtomicU64,
    fetch_blocks: Mutex<BTreeMap<&'static str, Arc<AtomicU64>>>,
    fuse_latency: Mutex<BTreeMap<&'static str, Arc<Histogram>>>,
    tiers: Mutex<Vec<(&'static str, Arc<TierStats>)>>,
    too_small_loads: AtomicU64,
    inodes: AtomicI64,
    warm_bytes: AtomicU64,
    warming: AtomicI64,
}

fn slot<K: Ord + Copy, V: Default>(map: &Mutex<BTreeMap<K, Arc<V>>>, key: K) -> Arc<V> {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .clone()
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    /// Records one S3 request: its operation, outcome and duration.
    pub fn s3_request(&self, op: &'static str, result: &'static str, elapsed: Duration) {
        slot(&self.s3_requests, (op, result)).fetch_add(1, Ordering::Relaxed);
        slot(&self.s3_latency, op).observe(elapsed);
    }

    /// Counts body bytes received from S3.
    pub fn s3_bytes(&self, n: u64) {
        self.s3_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a retried ranged read.
    pub fn s3_retry(&self) {
        self.s3_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a block fetched from S3 for a reader (`demand`) or ahead of one (`background`).
    pub fn fetched_block(&self, priority: &'static str) {
        slot(&self.fetch_blocks, priority).fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a load of a model the disk cache cannot hold (streamed, not stored).
    pub fn cache_too_small_load(&self) {
        self.too_small_loads.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one FUSE request's duration.
    pub fn fuse_request(&self, op: &'static str, elapsed: Duration) {
        slot(&self.fuse_latency, op).observe(elapsed);
    }

    /// Counts bytes of files warmed (downloaded ahead, or found cached).
    pub fn warm_bytes(&self, n: u64) {
        self.warm_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// One volume more (`+1`) or less (`-1`) warming now.
    pub fn warming(&self, delta: i64) {
        self.warming.fetch_add(delta, Ordering::Relaxed);
    }

    /// Counts an inode created.
    pub fn inode_created(&self) {
        self.inodes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an inode freed.
    pub fn inode_dropped(&self) {
        self.inodes.fetch_sub(1, Ordering::Relaxed);
    }

    /// Exports a cache tier's counters under `tier`.
    pub fn register_tier(&self, tier: &'static str, stats: Arc<TierStats>) {
        self.tiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((tier, stats));
    }
}

fn histogram(out: &mut String, name: &str, label: &str, value: &str, h: &Histogram) {
    for (bound, count) in BUCKETS.iter().zip(&h.counts) {
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {}",
            count.load(Ordering::Relaxed)
        );
    }
    let count = h.count.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "{name}_sum{{{label}=\"{value}\"}} {}",
        h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {count}");
}

/// The metrics in the Prometheus text exposition format.
pub fn render() -> String {
    let m = metrics();
    let mut out = String::new();
    out.push_str("# TYPE modelfs_s3_requests_total counter\n");
    for ((op, result), n) in m
        .s3_requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "modelfs_s3_requests_total{{op=\"{op}\",result=\"{result}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    out.push_str("# TYPE modelfs_s3_request_seconds histogram\n");
    for (op, h) in m
        .s3_latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        histogram(&mut out, "modelfs_s3_request_seconds", "op", op, h);
    }
    let _ = writeln!(
        out,
        "# TYPE modelfs_s3_bytes_total counter\nmodelfs_s3_bytes_total {}",
        m.s3_bytes.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE modelfs_s3_retries_total counter\nmodelfs_s3_retries_total {}",
        m.s3_retries.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE modelfs_warm_bytes_total counter\nmodelfs_warm_bytes_total {}\n\
         # TYPE modelfs_warming_volumes gauge\nmodelfs_warming_volumes {}",
        m.warm_bytes.load(Ordering::Relaxed),
        m.warming.load(Ordering::Relaxed)
    );
    out.push_str("# TYPE modelfs_fetch_blocks_total counter\n");
    for (priority, n) in m
        .fetch_blocks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "modelfs_fetch_blocks_total{{priority=\"{priority}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    for (tier, stats) in m.tiers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let s = stats.snapshot();
        for (name, value) in [
            ("hits", s.hits),
            ("misses", s.misses),
            ("writes", s.writes),
            ("evictions", s.evictions),
            ("corrupt", s.corrupt),
            ("errors", s.errors),
        ] {
            let _ = writeln!(out, "modelfs_cache_{name}_total{{tier=\"{tier}\"}} {value}");
        }
    }
    let _ = writeln!(
        out,
        "# TYPE {TOO_SMALL} counter\n{TOO_SMALL} {}",
        m.too_small_loads.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE modelfs_inodes gauge\nmodelfs_inodes {}",
        m.inodes.load(Ordering::Relaxed)
    );
    out.push_str("# TYPE modelfs_fuse_request_seconds histogram\n");
    for (op, h) in m
        .fuse_latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        histogram(&mut out, "modelfs_fuse_request_seconds", "op", op, h);
        let _ = writeln!(
            out,
            "modelfs_fuse_requests_total{{op=\"{op}\"}} {}",
            h.count.load(Ordering::Relaxed)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = metrics();
        m.s3_request("GetObject", "ok", Duration::from_millis(3));
        m.s3_bytes(1024);
        m.fuse_request("read", Duration::from_micros(200));
        let text = render();
        assert!(text.contains("modelfs_s3_requests_total{op=\"GetObject\",result=\"ok\"}"));
        assert!(text.contains("modelfs_s3_request_seconds_bucket{op=\"GetObject\",le=\"0.005\"}"));
        assert!(text.contains("modelfs_fuse_requests_total{op=\"read\"}"));
        assert!(text.contains("modelfs_s3_bytes_total"));
        assert!(text.contains("\nmodelfs_inodes "));
        assert!(text.contains("\nmodelfs_cache_too_small_loads_total "));
    }
}
