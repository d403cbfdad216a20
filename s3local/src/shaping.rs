//! [`Shaping`]: make the local endpoint behave like S3 over a network for benchmarks — a
//! first-byte latency per request and a bandwidth cap per GetObject response, optionally an
//! aggregate cap over all responses. Everything is off by default (tests are unaffected);
//! [`Shaping::s3_like`] gives the benchmark defaults.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How the server shapes its responses. `Default` is no shaping at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shaping {
    /// Delay before the first body byte of every GetObject, and before every HeadObject and
    /// ListObjectsV2 answer.
    pub first_byte_latency: Option<Duration>,
    /// Bytes per second one GetObject response may send.
    pub per_response_bytes_per_sec: Option<u64>,
    /// Bytes per second all GetObject responses together may send.
    pub aggregate_bytes_per_sec: Option<u64>,
}

impl Shaping {
    /// First-byte latency of [`Shaping::s3_like`]: 20 ms.
    pub const DEFAULT_FIRST_BYTE_LATENCY: Duration = Duration::from_millis(20);
    /// Per-response cap of [`Shaping::s3_like`]: 90 MiB/s, about what one S3 GET stream gives.
    pub const DEFAULT_PER_RESPONSE_BYTES_PER_SEC: u64 = 90 * 1024 * 1024;

    /// No shaping (the default).
    pub fn off() -> Shaping {
        Shaping::default()
    }

    /// 20 ms first-byte latency and 90 MiB/s per response, no aggregate cap.
    pub fn s3_like() -> Shaping {
        Shaping {
            first_byte_latency: Some(Self::DEFAULT_FIRST_BYTE_LATENCY),
            per_response_bytes_per_sec: Some(Self::DEFAULT_PER_RESPONSE_BYTES_PER_SEC),
            aggregate_bytes_per_sec: None,
        }
    }

    /// True when nothing is shaped.
    pub fn is_off(&self) -> bool {
        *self == Shaping::default()
    }

    /// `20 ms first byte, 90 MiB/s per response, no aggregate cap`.
    pub fn describe(&self) -> String {
        if self.is_off() {
            return "no shaping".to_string();
        }
        let latency = match self.first_byte_latency {
            Some(d) => format!("{} ms first byte", d.as_millis()),
            None => "no first-byte latency".to_string(),
        };
        let mib = |b: u64| format!("{} MiB/s", b as f64 / (1024.0 * 1024.0));
        let per = match self.per_response_bytes_per_sec {
            Some(b) => format!("{} per response", mib(b)),
            None => "no per-response cap".to_string(),
        };
        let agg = match self.aggregate_bytes_per_sec {
            Some(b) => format!("{} aggregate", mib(b)),
            None => "no aggregate cap".to_string(),
        };
        format!("{latency}, {per}, {agg}")
    }
}

/// Shaping state shared by every response of one server.
#[derive(Debug)]
pub(crate) struct Shaper {
    pub config: Shaping,
    /// When the aggregate link is next free (aggregate cap only).
    link_free_at: Mutex<Option<Instant>>,
}

impl Shaper {
    pub fn new(config: Shaping) -> Option<Arc<Shaper>> {
        (!config.is_off()).then(|| {
            Arc::new(Shaper {
                config,
                link_free_at: Mutex::new(None),
            })
        })
    }

    /// Sleeps for the first-byte latency (HEAD, LIST).
    pub async fn request_delay(&self) {
        if let Some(latency) = self.config.first_byte_latency {
            tokio::time::sleep(latency).await;
        }
    }

    /// Reserves `len` bytes on the aggregate link; returns when they may start.
    fn reserve(&self, now: Instant, len: u64) -> Instant {
        let Some(rate) = self.config.aggregate_bytes_per_sec else {
            return now;
        };
        let mut free = self.link_free_at.lock().unwrap_or_else(|e| e.into_inner());
        let start = free.map_or(now, |t| t.max(now));
        *free = Some(start + duration_for(len, rate));
        start
    }
}

fn duration_for(bytes: u64, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64)
}

/// Pacing of one response body.
#[derive(Debug)]
pub(crate) struct Pace {
    shaper: Arc<Shaper>,
    /// When the first byte may go (request time + first-byte latency).
    start: Instant,
    /// Bytes already released.
    sent: u64,
}

impl Pace {
    pub fn new(shaper: Arc<Shaper>) -> Pace {
        let start = Instant::now() + shaper.config.first_byte_latency.unwrap_or_default();
        Pace {
            shaper,
            start,
            sent: 0,
        }
    }

    /// The instant the next `len` bytes may be sent (reserving them on the aggregate link).
    /// Call once per chunk.
    pub fn release(&mut self, len: u64) -> Instant {
        let mut at = self.start;
        if let Some(rate) = self.shaper.config.per_response_bytes_per_sec {
            at += duration_for(self.sent, rate);
        }
        let at = self.shaper.reserve(at.max(Instant::now()), len).max(at);
        self.sent += len;
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_off_and_s3_like_has_the_documented_values() {
        assert!(Shaping::default().is_off());
        let s = Shaping::s3_like();
        assert_eq!(s.first_byte_latency, Some(Duration::from_millis(20)));
        assert_eq!(s.per_response_bytes_per_sec, Some(90 * 1024 * 1024));
        assert_eq!(s.aggregate_bytes_per_sec, None);
        assert!(Shaper::new(Shaping::off()).is_none());
        assert!(s.describe().contains("90 MiB/s per response"));
    }

    #[tokio::test]
    async fn per_response_pacing_spaces_chunks() {
        let shaper = Shaper::new(Shaping {
            first_byte_latency: Some(Duration::from_millis(10)),
            per_response_bytes_per_sec: Some(1000),
            aggregate_bytes_per_sec: None,
        })
        .expect("on");
        let t0 = Instant::now();
        let mut pace = Pace::new(shaper);
        let first = pace.release(100);
        let second = pace.release(100);
        assert!(first >= t0 + Duration::from_millis(10));
        let gap = second - first;
        assert!(gap >= Duration::from_millis(99) && gap <= Duration::from_millis(101));
    }

    #[tokio::test]
    async fn aggregate_cap_serialises_responses() {
        let shaper = Shaper::new(Shaping {
            first_byte_latency: None,
            per_response_bytes_per_sec: None,
            aggregate_bytes_per_sec: Some(1000),
        })
        .expect("on");
        let mut a = Pace::new(Arc::clone(&shaper));
        let mut b = Pace::new(shaper);
        let ta = a.release(500);
        let tb = b.release(500);
        assert!(tb - ta >= Duration::from_millis(499));
    }
}
