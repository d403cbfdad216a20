//! Process-wide counters and latency histograms on `prometheus-client`, rendered in the
//! Prometheus text format (version 0.0.4) by [`render`] (served by `modelfs mount
//! --metrics-addr` with [`CONTENT_TYPE`]).
//!
//! - `modelfs_s3_requests_total{op,result}`, `modelfs_s3_request_seconds{op}` (histogram),
//!   `modelfs_s3_bytes_total`, `modelfs_s3_retries_total`, `modelfs_s3_throttled_total`
//!   (throttling answers, every attempt: sweeps then ask for larger spans);
//! - `modelfs_cache_{hits,misses,writes,evictions,corrupt,errors,checksum_mismatch}_total{tier}`;
//! - `modelfs_fetch_blocks_total{priority}` (demand vs background: readahead and sweeps);
//! - `modelfs_cache_too_small_loads_total`: loads of a model the disk cache could not hold
//!   beside the files in use (streamed from S3 through memory, nothing stored): grow the
//!   cache when it rises;
//! - `modelfs_fuse_requests_total{op}`, `modelfs_fuse_request_seconds{op}` (histogram);
//! - `modelfs_inodes` (gauge): inodes in memory, over every volume of the process;
//! - `modelfs_warm_bytes_total`, `modelfs_warming_volumes` (gauge): volumes' `warm` files
//!   (the mounter);
//! - `modelfs_warm_read_ahead_bytes_total`: bytes read ahead into the page cache for
//!   passthrough opens.
//!
//! Every name and help text is written once: in `Metrics::new`, and in `TIER_COUNTERS` for the
//! cache tiers. Counters are named without their `_total` suffix: the encoder appends it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cache::{TierSnapshot, TierStats};

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct S3RequestLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabels {
    priority: &'static str,
}

/// All metrics of the process, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    s3_requests: Family<S3RequestLabels, Counter>,
    s3_latency: LatencyFamily<OpLabels>,
    s3_bytes: Counter,
    s3_retries: Counter,
    s3_throttled: Counter,
    fetch_blocks: Family<PriorityLabels, Counter>,
    fuse_requests: Family<OpLabels, Counter>,
    fuse_latency: LatencyFamily<OpLabels>,
    tiers: Arc<TierCollector>,
    too_small_loads: Counter,
    inodes: Gauge,
    warm_bytes: Counter,
    warming: Gauge,
    warm_read_ahead_bytes: Counter,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The process's metrics in the Prometheus text exposition format (see [`CONTENT_TYPE`]).
pub fn render() -> String {
    metrics().render()
}

impl Metrics {
    /// Every metric, registered under its name and help text.
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            s3_requests: Family::default(),
            s3_latency: Family::new_with_constructor(latency_histogram),
            s3_bytes: Counter::default(),
            s3_retries: Counter::default(),
            s3_throttled: Counter::default(),
            fetch_blocks: Family::default(),
            fuse_requests: Family::default(),
            fuse_latency: Family::new_with_constructor(latency_histogram),
            tiers: Arc::default(),
            too_small_loads: Counter::default(),
            inodes: Gauge::default(),
            warm_bytes: Counter::default(),
            warming: Gauge::default(),
            warm_read_ahead_bytes: Counter::default(),
        };
        let registry = &mut m.registry;
        registry.register(
            "modelfs_s3_requests",
            "S3 requests by operation and outcome",
            m.s3_requests.clone(),
        );
        registry.register(
            "modelfs_s3_request_seconds",
            "Duration of S3 requests by operation",
            m.s3_latency.clone(),
        );
        registry.register(
            "modelfs_s3_bytes",
            "Body bytes received from S3",
            m.s3_bytes.clone(),
        );
        registry.register(
            "modelfs_s3_retries",
            "Ranged reads retried",
            m.s3_retries.clone(),
        );
        registry.register(
            "modelfs_s3_throttled",
            "Throttling answers from S3 (503, 429), every attempt counted",
            m.s3_throttled.clone(),
        );
        registry.register(
            "modelfs_fetch_blocks",
            "Blocks fetched from S3 for a reader (demand) or ahead of one (background)",
            m.fetch_blocks.clone(),
        );
        registry.register(
            "modelfs_cache_too_small_loads",
            "Loads of a model the disk cache could not hold beside the files in use \
             (streamed, not stored)",
            m.too_small_loads.clone(),
        );
        registry.register(
            "modelfs_fuse_requests",
            "FUSE requests by operation",
            m.fuse_requests.clone(),
        );
        registry.register(
            "modelfs_fuse_request_seconds",
            "Duration of FUSE requests by operation",
            m.fuse_latency.clone(),
        );
        registry.register(
            "modelfs_inodes",
            "Inodes in memory, over every volume of the process",
            m.inodes.clone(),
        );
        registry.register(
            "modelfs_warm_bytes",
            "Bytes of files warmed (downloaded ahead, or found cached)",
            m.warm_bytes.clone(),
        );
        registry.register(
            "modelfs_warming_volumes",
            "Volumes warming now",
            m.warming.clone(),
        );
        registry.register(
            "modelfs_warm_read_ahead_bytes",
            "Bytes read ahead into the page cache for passthrough opens",
            m.warm_read_ahead_bytes.clone(),
        );
        registry.register_collector(Box::new(m.tiers.clone()));
        m
    }

    /// These metrics in the Prometheus text exposition format.
    fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!("rendering metrics: {e}");
        }
        out
    }

    /// Records one S3 request: its operation, outcome and duration.
    pub fn s3_request(&self, op: &'static str, result: &'static str, elapsed: Duration) {
        self.s3_requests
            .get_or_create(&S3RequestLabels { op, result })
            .inc();
        self.s3_latency
            .get_or_create(&OpLabels { op })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts body bytes received from S3.
    pub fn s3_bytes(&self, n: u64) {
        self.s3_bytes.inc_by(n);
    }

    /// Counts a retried ranged read.
    pub fn s3_retry(&self) {
        self.s3_retries.inc();
    }

    /// Counts a throttling answer from S3.
    pub fn s3_throttled(&self) {
        self.s3_throttled.inc();
    }

    /// Counts a block fetched from S3 for a reader (`demand`) or ahead of one (`background`).
    pub fn fetched_block(&self, priority: &'static str) {
        self.fetch_blocks
            .get_or_create(&PriorityLabels { priority })
            .inc();
    }

    /// Counts a load of a model the disk cache cannot hold (streamed, not stored).
    pub fn cache_too_small_load(&self) {
        self.too_small_loads.inc();
    }

    /// Records one FUSE request's duration.
    pub fn fuse_request(&self, op: &'static str, elapsed: Duration) {
        let labels = OpLabels { op };
        self.fuse_requests.get_or_create(&labels).inc();
        self.fuse_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts bytes of files warmed (downloaded ahead, or found cached).
    pub fn warm_bytes(&self, n: u64) {
        self.warm_bytes.inc_by(n);
    }

    /// Counts bytes read ahead into the page cache for a passthrough open.
    pub fn warm_read_ahead_bytes(&self, n: u64) {
        self.warm_read_ahead_bytes.inc_by(n);
    }

    /// One volume more (`+1`) or less (`-1`) warming now.
    pub fn warming(&self, delta: i64) {
        self.warming.inc_by(delta);
    }

    /// Counts an inode created.
    pub fn inode_created(&self) {
        self.inodes.inc();
    }

    /// Counts an inode freed.
    pub fn inode_dropped(&self) {
        self.inodes.dec();
    }

    /// Exports a cache tier's counters under `tier`.
    pub fn register_tier(&self, tier: &'static str, stats: Arc<TierStats>) {
        self.tiers.register(tier, stats);
    }
}

/// One counter of [`TierSnapshot`], exported per tier.
struct TierCounter {
    /// Without `_total`, as for registered counters.
    name: &'static str,
    /// With its full stop, which the registry adds to the help of registered metrics.
    help: &'static str,
    value: fn(&TierSnapshot) -> u64,
}

const TIER_COUNTERS: [TierCounter; 7] = [
    TierCounter {
        name: "modelfs_cache_hits",
        help: "Blocks served from the tier.",
        value: |s| s.hits,
    },
    TierCounter {
        name: "modelfs_cache_misses",
        help: "Blocks asked of the tier and not found.",
        value: |s| s.misses,
    },
    TierCounter {
        name: "modelfs_cache_writes",
        help: "Blocks stored in the tier.",
        value: |s| s.writes,
    },
    TierCounter {
        name: "modelfs_cache_evictions",
        help: "Entries (disk) or blocks (memory) evicted from the tier.",
        value: |s| s.evictions,
    },
    TierCounter {
        name: "modelfs_cache_corrupt",
        help: "Blocks found damaged (bad checksum) and dropped.",
        value: |s| s.corrupt,
    },
    TierCounter {
        name: "modelfs_cache_errors",
        help: "Failed or skipped disk operations, served from S3 instead.",
        value: |s| s.errors,
    },
    TierCounter {
        name: "modelfs_cache_checksum_mismatch",
        help: "Complete entries whose content did not match S3's full-object checksum, \
               dropped and fetched again.",
        value: |s| s.checksum_mismatch,
    },
];

/// Exports the cache tiers' own counters ([`TierStats`]), read at each scrape, so each event
/// is counted in one place only.
#[derive(Debug, Default)]
struct TierCollector {
    tiers: Mutex<Vec<(&'static str, Arc<TierStats>)>>,
}

impl TierCollector {
    fn register(&self, tier: &'static str, stats: Arc<TierStats>) {
        self.tiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((tier, stats));
    }

    /// The counters of each tier name, one snapshot per tier registered under it.
    fn snapshots(&self) -> BTreeMap<&'static str, Vec<TierSnapshot>> {
        let mut snapshots = BTreeMap::<&'static str, Vec<TierSnapshot>>::new();
        for (tier, stats) in self.tiers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            snapshots.entry(tier).or_default().push(stats.snapshot());
        }
        snapshots
    }
}

impl Collector for TierCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tiers = self.snapshots();
        // Like the registry's empty families: no description without a series.
        if tiers.is_empty() {
            return Ok(());
        }
        for TierCounter { name, help, value } in TIER_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (tier, snapshots) in &tiers {
                // Tiers registered under one name (tests, several readers in one process) add
                // up: a series may appear only once.
                let total: u64 = snapshots.iter().map(value).sum();
                let labels = [("tier", *tier)];
                ConstCounter::new(total).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `series` followed by a space.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        m.s3_request("GetObject", "ok", Duration::from_millis(3));
        m.s3_request("GetObject", "ok", Duration::from_millis(3));
        m.s3_request("GetObject", "not_found", Duration::from_millis(3));
        m.s3_bytes(1024);
        m.s3_retry();
        m.s3_throttled();
        m.fetched_block("demand");
        m.cache_too_small_load();
        m.fuse_request("read", Duration::from_micros(200));
        m.warm_bytes(7);
        m.warm_read_ahead_bytes(9);
        m.warming(1);
        m.inode_created();
        m.inode_created();
        m.inode_dropped();
        let text = m.render();
        let expect = [
            (
                "modelfs_s3_requests_total{op=\"GetObject\",result=\"ok\"}",
                2.0,
            ),
            (
                "modelfs_s3_requests_total{op=\"GetObject\",result=\"not_found\"}",
                1.0,
            ),
            ("modelfs_s3_request_seconds_count{op=\"GetObject\"}", 3.0),
            ("modelfs_s3_bytes_total", 1024.0),
            ("modelfs_s3_retries_total", 1.0),
            ("modelfs_s3_throttled_total", 1.0),
            ("modelfs_fetch_blocks_total{priority=\"demand\"}", 1.0),
            ("modelfs_cache_too_small_loads_total", 1.0),
            ("modelfs_fuse_requests_total{op=\"read\"}", 1.0),
            ("modelfs_fuse_request_seconds_count{op=\"read\"}", 1.0),
            ("modelfs_warm_bytes_total", 7.0),
            ("modelfs_warm_read_ahead_bytes_total", 9.0),
            ("modelfs_warming_volumes", 1.0),
            ("modelfs_inodes", 1.0),
        ];
        for (series, want) in expect {
            assert_eq!(value(&text, series), Some(want), "{series} in:\n{text}");
        }
        let sum = value(&text, "modelfs_s3_request_seconds_sum{op=\"GetObject\"}");
        assert!(sum.is_some_and(|s| (s - 0.009).abs() < 1e-9), "{text}");
    }

    #[test]
    fn histograms_have_every_bucket_and_count_cumulatively() {
        let m = Metrics::new();
        m.fuse_request("lookup", Duration::from_millis(3));
        let text = m.render();
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("modelfs_fuse_request_seconds_bucket{op=\"lookup\","))
            .collect();
        assert_eq!(buckets.len(), BUCKETS.len() + 1, "{text}");
        let bucket = |le: &str| {
            value(
                &text,
                &format!("modelfs_fuse_request_seconds_bucket{{op=\"lookup\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.0025"), Some(0.0), "{text}");
        assert_eq!(bucket("0.005"), Some(1.0), "{text}");
        assert_eq!(bucket("5"), Some(1.0), "{text}");
        assert_eq!(bucket("+Inf"), Some(1.0), "{text}");
    }

    #[test]
    fn tier_counters_are_read_live_from_the_tiers() {
        let m = Metrics::new();
        let disk = Arc::new(TierStats::default());
        m.register_tier("disk", disk.clone());
        TierStats::bump(&disk.writes);
        assert_eq!(
            value(&m.render(), "modelfs_cache_writes_total{tier=\"disk\"}"),
            Some(1.0)
        );
        TierStats::bump(&disk.writes);
        TierStats::bump(&disk.hits);
        let text = m.render();
        assert_eq!(
            value(&text, "modelfs_cache_writes_total{tier=\"disk\"}"),
            Some(2.0)
        );
        assert_eq!(
            value(&text, "modelfs_cache_hits_total{tier=\"disk\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "modelfs_cache_errors_total{tier=\"disk\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn tiers_registered_under_one_name_add_up_in_one_series() {
        let m = Metrics::new();
        let (a, b) = (
            Arc::new(TierStats::default()),
            Arc::new(TierStats::default()),
        );
        m.register_tier("memory", a.clone());
        m.register_tier("memory", b.clone());
        TierStats::bump(&a.misses);
        TierStats::bump(&b.misses);
        let text = m.render();
        let series = "modelfs_cache_misses_total{tier=\"memory\"}";
        assert_eq!(text.matches(series).count(), 1, "{text}");
        assert_eq!(value(&text, series), Some(2.0), "{text}");
    }

    /// The names as scraped: dashboards, alerts and tests depend on them.
    #[test]
    fn every_family_keeps_its_scraped_name_and_type() {
        let m = Metrics::new();
        m.register_tier("disk", Arc::new(TierStats::default()));
        // A family shows once it has a series.
        m.s3_request("HeadObject", "ok", Duration::ZERO);
        m.fetched_block("background");
        m.fuse_request("open", Duration::ZERO);
        let text = m.render();
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let want = [
            "modelfs_s3_requests_total counter",
            "modelfs_s3_request_seconds histogram",
            "modelfs_s3_bytes_total counter",
            "modelfs_s3_retries_total counter",
            "modelfs_s3_throttled_total counter",
            "modelfs_fetch_blocks_total counter",
            "modelfs_cache_too_small_loads_total counter",
            "modelfs_fuse_requests_total counter",
            "modelfs_fuse_request_seconds histogram",
            "modelfs_inodes gauge",
            "modelfs_warm_bytes_total counter",
            "modelfs_warming_volumes gauge",
            "modelfs_warm_read_ahead_bytes_total counter",
            "modelfs_cache_hits_total counter",
            "modelfs_cache_misses_total counter",
            "modelfs_cache_writes_total counter",
            "modelfs_cache_evictions_total counter",
            "modelfs_cache_corrupt_total counter",
            "modelfs_cache_errors_total counter",
            "modelfs_cache_checksum_mismatch_total counter",
        ];
        let mut sorted_types = types.clone();
        sorted_types.sort_unstable();
        let mut sorted_want = want.to_vec();
        sorted_want.sort_unstable();
        assert_eq!(sorted_types, sorted_want, "{text}");
        assert!(
            !text.contains("# EOF"),
            "Prometheus 0.0.4 text has no EOF marker"
        );
    }

    #[test]
    fn the_process_registry_renders() {
        metrics().s3_bytes(1);
        assert!(value(&render(), "modelfs_s3_bytes_total").is_some_and(|v| v >= 1.0));
    }
}
